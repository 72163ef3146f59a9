"""The pack inside the real ComfyUI, on an SD1.5-shaped checkpoint with random weights."""

import pytest
import torch

pytestmark = pytest.mark.comfy

LATENT = (1, 4, 8, 8)  # 64 px: output_blocks.4.1/5.1 are 2x2 maps of 1280 channels
STEPS = 3


def sample(env, model, seed=0, steps=STEPS):
    import comfy.sample
    lat = torch.zeros(LATENT)
    noise = comfy.sample.prepare_noise(lat, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, 6.0, "euler", "normal", env["cond"], env["neg"], lat,
                                   seed=seed, disable_pbar=True)


def capture(env, model, hook, cond_only=False):
    got = []
    probe = env["mp"].capture_patch(model, hook, lambda h, info: got.append((h.clone(), info)), cond_only=cond_only)
    sample(env, probe)
    return got


def make_loaded(block_outputs, hook="output_blocks.5.1", n_latents=2560, k=16, threshold=0.0, seed=0):
    """A random SAE whose concept 'thing' is the latent that fires most on this block."""
    from saemnesia_core import LoadedSAE, SAEInfo, TopKSAE
    from saemnesia_core.concepts import Concept, ConceptIndex, Selection
    xs = torch.cat([h.permute(0, 2, 3, 1).reshape(-1, 1280) for h, _ in block_outputs[hook]]).float()
    sae = TopKSAE(1280, n_latents, k)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_dec.copy_(xs.mean(0))
        sae.W_enc.mul_(xs.std())
    sae.requires_grad_(False)
    counts = torch.bincount(sae.encode(xs).indices.flatten(), minlength=n_latents)
    top = int(counts.argmax())
    mean = float(sae.latent_activations(xs, torch.tensor([top])).mean())
    ts = sorted({round(info["timestep"], 3) for _, info in block_outputs[hook]}, reverse=True)
    sel = [Selection([top], [1.0], [mean], [threshold]) for _ in ts]
    index = ConceptIndex(timesteps=ts, default_mode="ablate", default_multiplier=-5.0,
                         concepts={"thing": Concept("thing", "object", top, sel)})
    return LoadedSAE(sae, SAEInfo(hook, "sd1", index, {}))


def erase(env, loaded, concepts="thing", mode="ablate", strength=1.0, apply_to="both", start=0.0, end=1.0, model=None):
    from saemnesia_pack.nodes.erase_concepts import EraseConcepts
    out = EraseConcepts.execute(model or env["model"], loaded, concepts, mode, strength, 0.0, apply_to, start, end)
    return out.args[0]


@pytest.fixture(scope="module")
def base_sample(env):
    return sample(env, env["model"])


def test_patch_sees_exactly_what_a_forward_hook_sees(env):
    """output_blocks.5.1 sits before an Upsample, where no built-in block patch reaches."""
    module = env["model"].model.diffusion_model.output_blocks[5][1]
    hooked = []
    handle = module.register_forward_hook(lambda m, a, out: hooked.append(out.clone()))
    try:
        patched = capture(env, env["model"], "output_blocks.5.1")
    finally:
        handle.remove()
    assert len(hooked) == len(patched) == STEPS
    for a, (b, info) in zip(hooked, patched):
        assert torch.equal(a, b)
    assert [info["step"] for _, info in patched] == list(range(STEPS))  # index of sigma in the schedule
    ts = [info["timestep"] for _, info in patched]
    assert ts == sorted(ts, reverse=True) and ts[0] > 900


def test_no_concept_leaves_the_sample_unchanged(env, block_outputs, base_sample):
    loaded = make_loaded(block_outputs)
    assert erase(env, loaded, concepts=" ") is env["model"]  # nothing selected: the MODEL passes through
    never = make_loaded(block_outputs, threshold=1e9)  # patch active, latent never above threshold
    patched = erase(env, never)
    assert patched is not env["model"]
    assert torch.allclose(sample(env, patched), base_sample, atol=1e-5)


@pytest.mark.parametrize("mode", ["ablate", "neuron", "replace"])
def test_erasing_changes_the_sample_and_leaves_the_input_model_alone(env, block_outputs, base_sample, mode):
    loaded = make_loaded(block_outputs)
    erased = sample(env, erase(env, loaded, mode=mode))
    assert (erased - base_sample).abs().max() > 1e-3
    again = sample(env, env["model"])
    assert torch.allclose(again, base_sample, atol=1e-6)  # the original MODEL is unaffected


def test_two_erase_nodes_stack(env, block_outputs):
    a = make_loaded(block_outputs, hook="output_blocks.4.1", seed=1)
    patched_a = erase(env, a)
    # b's concept latent is picked where it fires in the model that a already edits
    b = make_loaded({"output_blocks.5.1": capture(env, patched_a, "output_blocks.5.1")}, seed=2)
    only_a = sample(env, patched_a)
    both = sample(env, erase(env, b, model=erase(env, a)))
    assert (both - only_a).abs().max() > 1e-3
    # two erasers on the same block chain too: the second wraps the first
    patched_b = erase(env, b)
    seen_b = capture(env, patched_b, "output_blocks.5.1")
    c = make_loaded({"output_blocks.5.1": seen_b}, seed=3)
    chained = capture(env, erase(env, c, model=patched_b), "output_blocks.5.1")
    assert any(not torch.equal(x, y) for (x, _), (y, _) in zip(chained, seen_b))


def test_cond_only_edits_only_the_positive_half(env, block_outputs):
    loaded = make_loaded(block_outputs)
    plain = capture(env, env["model"], "output_blocks.5.1")
    edited = capture(env, erase(env, loaded, apply_to="cond only"), "output_blocks.5.1")
    flags = plain[0][1]["transformer_options"]["cond_or_uncond"]
    assert sorted(flags) == [0, 1]
    c, u = flags.index(0), flags.index(1)
    assert torch.equal(edited[0][0][u], plain[0][0][u])
    assert not torch.equal(edited[0][0][c], plain[0][0][c])


def test_window_limits_the_edit_to_its_steps(env, block_outputs):
    loaded = make_loaded(block_outputs)
    ms = env["model"].get_model_object("model_sampling")
    calls = []
    patched = env["mp"].erase_patch(env["model"], loaded, lambda member: lambda h, t, rows: calls.append(t) or h,
                                    cond_only=False, start_percent=0.3, end_percent=1.0)
    seen = capture(env, patched, "output_blocks.5.1")
    inside = [info["timestep"] for _, info in seen if info["sigma"] <= ms.percent_to_sigma(0.3)]
    assert calls == inside and 0 < len(calls) < len(seen)  # the first (noisiest) step is outside


def test_erasers_are_model_patches_that_follow_to_calls_and_survive_clone(env, block_outputs):
    import copy

    from saemnesia_core import ConceptEraser
    loaded = make_loaded(block_outputs)
    eraser = ConceptEraser(loaded.sae, loaded.index, ["thing"])
    patched = env["mp"].erase_patch(env["model"], loaded, lambda member: eraser, cond_only=False,
                                    start_percent=0.0, end_percent=1.0)
    [patch] = patched.model_options["transformer_options"]["patches"][env["mp"].SAE_PATCH_KEY]
    assert patch.eraser is eraser
    assert patch.to(torch.float64) is patch  # ComfyUI calls .to(dtype) and .to(device) on model patches
    assert eraser.place().W_dec.dtype == torch.float64
    patched.model_patches_to(torch.float32)
    assert eraser.place().W_dec.dtype == torch.float32
    assert copy.deepcopy({"p": [patch]})["p"][0] is patch  # ModelPatcher.clone deep-copies model_options
    [again] = patched.clone().model_options["transformer_options"]["patches"][env["mp"].SAE_PATCH_KEY]
    assert again is patch


def test_saved_and_reloaded_sae_gives_the_same_output(env, block_outputs, tmp_path):
    from saemnesia_core import load_sae, save_sae
    loaded = make_loaded(block_outputs)
    path = str(tmp_path / "thing.safetensors")
    save_sae(path, loaded.sae, loaded.info)
    again = load_sae(path)
    assert torch.equal(sample(env, erase(env, loaded)), sample(env, erase(env, again)))


def test_incompatible_sae_is_refused_with_both_sizes(env, block_outputs):
    from saemnesia_core import IncompatibleSAEError, LoadedSAE, SAEInfo, TopKSAE
    narrow = LoadedSAE(TopKSAE(640, 1280, 8), SAEInfo("output_blocks.5.1", "sdxl"))
    with pytest.raises(IncompatibleSAEError) as e:
        erase(env, narrow, concepts="neuron:1")
    assert "640" in str(e.value) and "1280" in str(e.value)
    missing = LoadedSAE(TopKSAE(1280, 1280, 8), SAEInfo("output_blocks.20.1", "sd1"))
    with pytest.raises(IncompatibleSAEError) as e:
        erase(env, missing, concepts="neuron:1")
    assert "output_blocks.20.1" in str(e.value) and "output_blocks.5.1" in str(e.value)


def test_unknown_concept_lists_the_known_ones(env, block_outputs):
    with pytest.raises(KeyError) as e:
        erase(env, make_loaded(block_outputs), concepts="dog")
    assert "thing" in str(e.value)


def test_multiplier_zero_is_reachable_and_old_graphs_keep_their_meaning(env, block_outputs, base_sample):
    from saemnesia_pack.nodes.erase_concepts import EraseConcepts, chosen_multiplier
    assert chosen_multiplier(0.0, None) is None and chosen_multiplier(-2.0, None) == -2.0  # saved before the switch
    assert chosen_multiplier(0.0, False) == 0.0 and chosen_multiplier(0.0, True) is None
    assert chosen_multiplier(-2.0, True) == -2.0 and chosen_multiplier(-2.0, False) == -2.0  # custom values stay
    loaded = make_loaded(block_outputs)

    def erased(**kw):
        out = EraseConcepts.execute(env["model"], loaded, "thing", "ablate", 1.0, 0.0, "both", 0.0, 1.0, **kw)
        return sample(env, out.args[0])

    by_default = erased()
    assert torch.equal(erased(zero_uses_sae_value=True), by_default)
    zero = erased(zero_uses_sae_value=False)  # the latent switched off, not the SAE's -5
    assert not torch.equal(zero, by_default) and not torch.equal(zero, base_sample)
