import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from saemnesia_core import SAEFileError, SAEInfo, TopKSAE, load_sae, save_sae
from saemnesia_core.checkpoint import diffusers_to_ldm, load_sparsify_folder
from saemnesia_core.concepts import Concept, ConceptIndex, Selection
from saemnesia_core.sae import geometric_median


def make_sae(d=16, n=64, k=4, seed=0):
    sae = TopKSAE(d, n, k)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed + 1))
        sae.b_dec.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed + 2))
    sae.requires_grad_(False)
    return sae


def dense(sae, code):
    """The sparse code as a dense [tokens, n_latents] matrix (the reference the sparse paths must match)."""
    return code.values.new_zeros(code.values.shape[0], sae.n_latents).scatter_(1, code.indices, code.values)


def test_topk_keeps_exactly_k_and_sparse_decode_matches_dense():
    sae = make_sae()
    x = torch.randn(50, 16)
    code = sae.encode(x)
    assert code.indices.shape == (50, 4)
    z = dense(sae, code)
    assert ((z > 0).sum(1) <= 4).all()
    # the kept values are the k largest pre-activations
    top = sae.pre_activations(x).topk(4, dim=-1).values
    assert torch.allclose(code.values.sort(-1).values, top.sort(-1).values)
    assert torch.allclose(sae.decode(code), z @ sae.W_dec + sae.b_dec, atol=1e-5)


def test_latent_activations_agree_with_dense_code():
    sae = make_sae()
    x = torch.randn(40, 16)
    z = dense(sae, sae.encode(x))
    lat = torch.tensor([3, 7, 11])
    assert torch.allclose(sae.latent_activations(x, lat), z[:, lat])


def test_decoder_renormalisation_and_parallel_grad_removal():
    sae = make_sae()
    with torch.no_grad():
        sae.W_dec.mul_(3)
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_decoder_grad()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-5


def test_geometric_median_ignores_outliers_unlike_mean():
    pts = torch.cat([torch.randn(100, 3) * 0.1, torch.full((5, 3), 100.0)])
    assert geometric_median(pts).norm() < 1.0 < pts.mean(0).norm()


def _index():
    sel = [Selection([1, 2], [0.5, 0.2], [3.0, 1.0], [0.5, 0.4]), Selection([5], [0.9], [2.0], [0.1])]
    return ConceptIndex(timesteps=[800.0, 200.0], concepts={
        "Cat": Concept("Cat", "object", None, sel), "Ink": Concept("Ink", "style", 9, sel, multiplier=-2.0)})


def test_save_load_roundtrip_keeps_weights_and_index(tmp_path):
    sae = make_sae()
    path = str(tmp_path / "a.safetensors")
    save_sae(path, sae, SAEInfo("output_blocks.5.1", "sd1", _index(), {"fvu": 0.2}))
    loaded = load_sae(path)
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(loaded.sae, n), getattr(sae, n))
    assert loaded.sae.k == 4 and loaded.info.hook_point == "output_blocks.5.1"
    assert loaded.info.training == {"fvu": 0.2}
    assert loaded.index.to_json() == _index().to_json()
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path))  # atomic write left no temp file


def test_concept_lookup_is_case_insensitive_and_unknown_lists_known():
    idx = _index()
    assert idx.get("cat").name == "Cat" and idx.get(" INK ").latent == 9
    with pytest.raises(KeyError) as e:
        idx.get("dog")
    assert "Cat" in str(e.value) and "Ink" in str(e.value) and "dog" in str(e.value)


def test_timestep_bucket_is_nearest():
    idx = ConceptIndex(timesteps=[999.0, 500.0, 10.0])
    assert [idx.bucket(t) for t in (1200, 999, 760, 740, 500, 200, 0)] == [0, 0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("damage", ["truncate", "pickle", "header", "empty", "nan", "no_meta", "version", "bad_index"])
def test_broken_files_give_clear_errors(tmp_path, damage):
    sae = make_sae()
    path = str(tmp_path / "s.safetensors")
    save_sae(path, sae, SAEInfo("output_blocks.4.1", "sd1", _index(), {}))
    raw = open(path, "rb").read()
    if damage == "truncate":
        open(path, "wb").write(raw[: len(raw) // 2])
    elif damage == "pickle":
        torch.save({"W_dec": torch.zeros(2)}, path)  # a torch pickle renamed .safetensors
    elif damage == "header":
        open(path, "wb").write(raw[:8] + b"{not json" + raw[17:])
    elif damage == "empty":
        open(path, "wb").write(b"")
    elif damage == "nan":
        t = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        t["W_dec"][0, 0] = float("nan")
        rec = {"format_version": 1, "hook_point": "output_blocks.4.1", "k": 4}
        save_file(t, path, metadata={"format": "saemnesia-sae", "saemnesia": json.dumps(rec)})
    elif damage == "no_meta":
        save_file({"x": torch.zeros(3)}, path)
    elif damage == "version":
        t = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        save_file(t, path, metadata={"format": "saemnesia-sae", "saemnesia": json.dumps({"format_version": 99})})
    elif damage == "bad_index":
        bad = _index()
        bad.concepts["Cat"].selections[0].latents = [1000, 1]
        save_sae(path, sae, SAEInfo("output_blocks.4.1", "sd1", bad, {}))
    with pytest.raises(SAEFileError) as e:
        load_sae(path)
    msg = str(e.value)
    assert "s.safetensors" in msg or "latent" in msg
    expected = {"truncate": "truncated", "pickle": "pickle", "header": "corrupt", "empty": "empty",
                "nan": "NaN", "no_meta": "not an SAEmnesia SAE", "version": "Update", "bad_index": "only 64 latents"}
    assert expected[damage] in msg


def test_non_safetensors_extension_refused(tmp_path):
    p = tmp_path / "model.pt"
    torch.save({"a": 1}, str(p))
    with pytest.raises(SAEFileError, match="never pickle"):
        load_sae(str(p))


def test_sparsify_folder_is_loaded_with_hook_name_mapped(tmp_path):
    sae = make_sae(d=16, n=64, k=4)
    folder = tmp_path / "unet.up_blocks.1.attentions.2"
    folder.mkdir()
    save_file({"encoder.weight": sae.W_enc.detach().clone(), "encoder.bias": sae.b_enc.detach().clone(),
               "W_dec": sae.W_dec.detach().clone(), "b_dec": sae.b_dec.detach().clone()}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"expansion_factor": 4, "normalize_decoder": True, "num_latents": 0,
                                                 "k": 4, "multi_topk": False, "d_in": 16}))
    for p in (str(folder), str(folder / "sae.safetensors")):
        loaded = load_sae(p)
        assert loaded.info.hook_point == "output_blocks.5.1"
        assert torch.equal(loaded.sae.W_enc, sae.W_enc) and loaded.sae.k == 4
    x = torch.randn(5, 16)
    assert torch.allclose(load_sparsify_folder(str(folder)).sae(x), sae(x))


def test_diffusers_names_map_to_ldm_blocks():
    assert diffusers_to_ldm("unet.up_blocks.1.attentions.1") == "output_blocks.4.1"
    assert diffusers_to_ldm("up_blocks.1.attentions.2") == "output_blocks.5.1"
    assert diffusers_to_ldm("up_blocks.3.attentions.0") == "output_blocks.9.1"
    assert diffusers_to_ldm("down_blocks.0.attentions.1") == "input_blocks.2.1"
    assert diffusers_to_ldm("down_blocks.2.attentions.0") == "input_blocks.7.1"
    assert diffusers_to_ldm("mid_block.attentions.0") == "middle_block.1"
    assert diffusers_to_ldm("output_blocks.4.1") == "output_blocks.4.1"
    with pytest.raises(SAEFileError):
        diffusers_to_ldm("up_blocks.1.resnets.0")


def test_header_length_lie_is_caught(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", 10 ** 7) + b"{}")
    with pytest.raises(SAEFileError, match="truncated"):
        load_sae(str(p))


def test_reserved_latents_skip_the_topk_and_survive_save_load(tmp_path):
    sae = make_sae(d=16, n=64, k=4, seed=3)
    x = torch.randn(50, 16)
    pre = sae.pre_activations(x)
    # the latent ranked last on most tokens: outside the top 4 almost everywhere
    weak = int(pre.mean(0).argmin())
    assert (sae.latent_activations(x, torch.tensor([weak]))[:, 0] == 0).float().mean() > 0.8
    sae.set_reserved([weak])
    got = sae.latent_activations(x, torch.tensor([weak]))[:, 0]
    assert torch.allclose(got, pre[:, weak])  # decoded wherever positive
    code = sae.encode(x)
    assert code.indices.shape[1] == 5 and (code.indices[:, :4] != weak).all()  # still k others
    path = str(tmp_path / "r.safetensors")
    save_sae(path, sae, SAEInfo("output_blocks.1.1"))
    assert load_sae(path).sae.reserved.tolist() == [weak]
    with pytest.raises(ValueError):
        sae.set_reserved([64])
