"""scripts/convert_published_sae.py on files built in each published layout with random weights
(Surkov et al.'s SDXL SAEs, antoniomari/SAE_flux_18): the pickles are read as plain tensors only,
and the converted SAE encodes as the published one does."""
import json
import os
import pickle
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import convert_published_sae as convert  # noqa: E402


def write_published(folder, d=32, n=80, k=10, wrap=True, mean=True, seed=0):
    """A folder in the published layout: config.json, state_dict.pth ({"state_dict": ...} or bare),
    mean.pt; returns the weights."""
    g = torch.Generator().manual_seed(seed)
    state = {"encoder.weight": torch.randn(n, d, generator=g), "decoder.weight": torch.randn(d, n, generator=g),
             "pre_bias": torch.randn(d, generator=g), "latent_bias": torch.randn(n, generator=g),
             "stats_last_nonzero": torch.zeros(n, dtype=torch.long)}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump({"n_dirs_local": n, "d_model": d, "k": k, "auxk": 256, "dead_steps_threshold": 2000}, f)
    torch.save({"state_dict": state} if wrap else state, os.path.join(folder, "state_dict.pth"))
    if mean:
        torch.save(torch.rand(n, generator=g), os.path.join(folder, "mean.pt"))
    return state


def published_encode(state, k, x):
    """The published SAEs' encode: top-k of the pre-activations, then ReLU."""
    pre = (x - state["pre_bias"]) @ state["encoder.weight"].T + state["latent_bias"]
    vals, inds = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, inds, vals.relu())


def test_surkov_sdxl_layout_converts_and_encodes_the_same(tmp_path):
    from saemnesia_core import load_sae
    folder = tmp_path / "unet.down_blocks.2.attentions.1_k10_hidden80_auxk256_bs4096_lr0.0001" / "final"
    state = write_published(str(folder))
    out = str(tmp_path / "sdxl_down_2_1.safetensors")
    convert.main([str(folder.parent), out])  # the block folder; its final/ holds the files
    loaded = load_sae(out)
    assert loaded.info.hook_point == "down_blocks.2.attentions.1:update" and loaded.info.model_family == "sdxl"
    assert (loaded.sae.d_in, loaded.sae.n_latents, loaded.sae.k) == (32, 80, 10)
    x = torch.randn(50, 32)
    assert torch.allclose(_dense(loaded.sae, x), published_encode(state, 10, x), atol=1e-5)
    means = torch.load(str(folder / "mean.pt"), weights_only=True)
    assert torch.allclose(torch.tensor(loaded.info.training["latent_means"]), means, rtol=1e-4)
    assert loaded.info.training["activation"] == "block update (output minus input)"


def _dense(sae, x):
    """The converted SAE's code as a dense [tokens, latents] tensor."""
    enc = sae.encode(x)
    return torch.zeros(x.shape[0], sae.n_latents).scatter_(-1, enc.indices, enc.values)


def test_flux_18_layout_converts(tmp_path):
    from saemnesia_core import load_sae
    folder = tmp_path / "SAE_flux_18"
    state = write_published(str(folder), d=48, n=96, k=8, wrap=False)
    out = str(tmp_path / "flux_18.safetensors")
    convert.main([str(folder), out, "--family", "flux"])
    loaded = load_sae(out)
    assert loaded.info.hook_point == "transformer_blocks.18:update" and loaded.info.model_family == "flux"
    x = torch.randn(20, 48)
    assert torch.allclose(_dense(loaded.sae, x), published_encode(state, 8, x), atol=1e-5)


class _Payload:
    """Stands for an object a hostile pickle would rebuild (and run code while doing so)."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_pickles_that_need_code_and_bad_layouts_are_refused(tmp_path, capsys):
    folder = tmp_path / "unet.mid_block.attentions.0_k10"
    write_published(str(folder))
    with open(folder / "state_dict.pth", "wb") as f:
        pickle.dump({"state_dict": _Payload()}, f, protocol=2)
    with pytest.raises(SystemExit) as e:
        convert.main([str(folder), str(tmp_path / "x.safetensors")])
    assert "only pickles of tensors" in str(e.value).lower()
    assert "this ran while loading" not in capsys.readouterr().out
    write_published(str(folder), d=16)
    with open(folder / "config.json", "w", encoding="utf-8") as f:
        json.dump({"n_dirs_local": 80, "d_model": 32, "k": 10}, f)  # the weights are 16 wide
    with pytest.raises(SystemExit, match=r"encoder.weight is \(80, 16\), expected \(80, 32\)"):
        convert.main([str(folder), str(tmp_path / "x.safetensors")])
    nameless = tmp_path / "my_sae"
    write_published(str(nameless))
    with pytest.raises(SystemExit, match="--hook-point"):
        convert.main([str(nameless), str(tmp_path / "x.safetensors")])
    assert not (tmp_path / "x.safetensors").exists()
