"""Every model family the pack knows, in the real ComfyUI with the stock sampler, on shrunken
random-weight models built from ComfyUI's own config classes (tools/comfy_env.tiny_model):
SDXL, SD3, Flux, Chroma, Lumina 2, Qwen-Image, HunyuanDiT and AuraFlow. One or two sampling
steps on 16 px latents: seconds each."""
import pytest
import torch

pytestmark = [pytest.mark.comfy, pytest.mark.usefixtures("one_torch_thread")]

FAMILIES = ["sdxl", "sd3", "flux", "chroma", "lumina2", "qwenimage", "hunyuandit", "auraflow"]
STEPS = 2
# blocks of each kind per family: (hook point, channels, grid side of its activations; 0 = text tokens).
# A 16 px latent is an 8 x 8 grid of 2 x 2 patches on every DiT; SDXL's blocks see 4 x 4 maps.
BLOCKS = {
    "sdxl": [("output_blocks.1.1", 128, 4), ("input_blocks.8.1:update", 128, 4)],
    "sd3": [("joint_blocks.0", 128, 8), ("joint_blocks.0:txt", 128, 0)],
    "flux": [("double_blocks.1", 64, 8), ("double_blocks.0", 64, 8), ("double_blocks.0:txt", 64, 0), ("single_blocks.1", 64, 8),
             ("double_blocks.1:update", 64, 8), ("single_blocks.0:txt:update", 64, 0)],
    "chroma": [("double_blocks.1", 64, 8), ("single_blocks.0:txt", 64, 0), ("single_blocks.1:update", 64, 8)],
    "lumina2": [("layers.1", 64, 8), ("layers.0:txt", 64, 0), ("layers.1:update", 64, 8)],
    "qwenimage": [("transformer_blocks.1", 64, 8), ("transformer_blocks.0:txt", 64, 0),
                  ("transformer_blocks.1:update", 64, 8)],
    "hunyuandit": [("blocks.1", 64, 8), ("blocks.0:update", 64, 8)],
    "auraflow": [("double_layers.0", 64, 8), ("double_layers.0:txt", 64, 0), ("single_layers.0:update", 64, 8)],
}
# what each family's blocks return, read off ComfyUI's code (comfy/ldm/*): a pair (and which item
# is the image), one sequence of text then image tokens (and how many text tokens lead), or image tokens
LAYOUT = {
    "double_blocks": ("pair", 0), "joint_blocks": ("pair", 1), "transformer_blocks": ("pair", 1),
    "double_layers": ("pair", 1), "single_blocks": ("joint", 12), "layers": ("joint", 12),
    "single_layers": ("joint", 8 + 12), "blocks": ("image", 0),  # AuraFlow: 8 register tokens before the text
}

@pytest.fixture(scope="module")
def tiny(comfy, pack):
    """(MODEL, cond, neg) per family, built once."""
    from tools import comfy_env
    built = {}

    def get(family):
        if family not in built:
            built[family] = (comfy_env.tiny_model(family), comfy_env.tiny_cond(family, seed=1),
                             comfy_env.tiny_cond(family, seed=2))
        return built[family]
    return get


def latent(family):
    from tools import comfy_env
    return comfy_env.tiny_latent(family)


def sample(model, cond, neg, family, seed=0, steps=STEPS):
    import comfy.sample
    lat = latent(family)
    noise = comfy.sample.prepare_noise(lat, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, 3.0, "euler", "simple", cond, neg, lat, seed=seed,
                                   disable_pbar=True)


def capture(model, cond, neg, family, hook, cond_only=False):
    """What a capture patch hands its sink at every step (kept as handed: it must be a copy)."""
    from saemnesia_pack.nodes import model_patch
    got = []
    probe = model_patch.capture_patch(model, hook, lambda h, info: got.append((h, info)), cond_only=cond_only)
    sample(probe, cond, neg, family)
    return got


def firing_sae(d_in, fire=True, seed=0, hook="", family="", n_latents=64, k=4, training=None):
    """A random SAE whose concept 'thing' is latent 3: it fires at every position (a large encoder
    bias), or nowhere (a large negative one)."""
    from saemnesia_core import LoadedSAE, SAEInfo, TopKSAE
    from saemnesia_core.concepts import Concept, ConceptIndex, Selection
    sae = TopKSAE(d_in, n_latents, k)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_enc[3] = 50.0 if fire else -1e4
    sae.requires_grad_(False)
    sel = [Selection([3], [1.0], [50.0], [0.0])]
    index = ConceptIndex(timesteps=[500.0], default_mode="neuron", default_multiplier=-2.0,
                         concepts={"thing": Concept("thing", "object", 3, sel)})
    return LoadedSAE(sae, SAEInfo(hook, family, index, training or {}))


def erase(model, loaded, mode="neuron", multiplier=-2.0, strength=1.0):
    from saemnesia_pack.nodes.erase_concepts import EraseConcepts
    return EraseConcepts.execute(model, loaded, "thing", mode, strength, multiplier, "both", 0.0, 1.0).args[0]


# --- the family table ---------------------------------------------------------------------


@pytest.mark.parametrize("family, name, default", [
    ("sdxl", "SDXL", "input_blocks.8.1:update"), ("sd3", "SD3 / SD3.5", "joint_blocks.1"),
    ("flux", "Flux", "double_blocks.1"), ("chroma", "Chroma", "double_blocks.1"), ("lumina2", "Lumina 2", "layers.1"),
    ("qwenimage", "Qwen-Image", "transformer_blocks.1"), ("hunyuandit", "HunyuanDiT", "blocks.1"),
    ("auraflow", "AuraFlow", "single_layers.0")])
def test_each_family_is_known_with_its_blocks_and_default(tiny, family, name, default):
    from saemnesia_pack.nodes import model_patch
    model = tiny(family)[0]
    assert model_patch.family_of(model).name == name
    assert model_patch.default_hook(model) == default
    blocks = model_patch.transformer_blocks(model)
    assert default.split(":")[0] in blocks
    for hook, width, _ in BLOCKS[family]:
        assert model_patch.hook_width(model, hook) == width
    with pytest.raises(Exception) as e:
        model_patch.parse_hook(model, "output_blocks.40.1")
    assert blocks[0] in str(e.value) and name in str(e.value)  # the message lists this model's own blocks


def test_sdxl_blocks_in_diffusers_names_and_published_blocks(tiny):
    """Surkov et al.'s SDXL blocks, named as diffusers names them, are ComfyUI's blocks (mapped by
    comfy.utils.unet_to_diffusers), output or update."""
    from saemnesia_pack.nodes import model_patch
    model = tiny("sdxl")[0]
    want = {"down_blocks.2.attentions.1": "input_blocks.8.1", "mid_block.attentions.0": "middle_block.1",
            "up_blocks.0.attentions.0": "output_blocks.0.1", "up_blocks.0.attentions.1": "output_blocks.1.1"}
    for diffusers, ldm in want.items():
        assert model_patch.resolve_hooks(model, [diffusers, diffusers + ":update"]) == [ldm, ldm + ":update"]
    flux = tiny("flux")[0]
    assert model_patch.resolve_hooks(flux, ["transformer_blocks.1", "single_transformer_blocks.0"]) == \
        ["double_blocks.1", "single_blocks.0"]


def test_an_unknown_family_is_named_with_the_supported_ones(comfy, pack):
    from types import SimpleNamespace

    from saemnesia_pack.nodes import model_patch

    import comfy.supported_models

    from saemnesia_core import IncompatibleSAEError
    config = comfy.supported_models.GenmoMochi({"image_model": "mochi_preview"})
    model = SimpleNamespace(model=SimpleNamespace(model_config=config),
                            get_model_object=lambda name: torch.nn.Linear(1, 1))
    with pytest.raises(IncompatibleSAEError) as e:
        model_patch.family_of(model)
    text = str(e.value)
    assert "GenmoMochi" in text and "mochi_preview" in text
    for name in ("SDXL", "SD3", "Flux", "Lumina 2", "Qwen-Image", "HunyuanDiT", "AuraFlow"):
        assert name in text


# --- blocks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_block_activations_are_the_blocks_own_on_the_latent_grid(tiny, family):
    """What a patch hands an SAE is exactly what the block computes: image tokens folded back to
    the latent's grid ([B, C, h, w], as on a UNet), text tokens as [B, T, C], updates as output
    minus input, compared with forward hooks on the same modules."""
    model, cond, neg = tiny(family)
    dm = model.model.diffusion_model
    for hook, width, side in BLOCKS[family]:
        block = hook.split(":")[0]
        module = dm.get_submodule(block)
        seen, inputs = [], []
        # inputs copied before the block runs: several blocks add to their input in place
        handles = [module.register_forward_pre_hook(lambda m, a, kw: inputs.append(_cloned((a, kw))), with_kwargs=True),
                   module.register_forward_hook(lambda m, a, kw, out: seen.append(_cloned(out)), with_kwargs=True)]
        try:
            got = capture(model, cond, neg, family, hook)
        finally:
            for handle in handles:
                handle.remove()
        assert len(got) == len(seen) == STEPS, hook
        for (h, _), (args, kwargs), out in zip(got, inputs, seen):
            assert h.shape[1 if side else 2] == width, hook
            if side:
                assert h.shape[-2:] == (side, side), hook
            ref = _reference(family, hook, args, kwargs, out, side)
            assert torch.equal(h, ref), hook


def _cloned(value):
    """A copy of a block's inputs and outputs: the next blocks update some of them in place."""
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_cloned(v) for v in value)
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    return value


def _input_stream(family, hook, args, kwargs):
    """The block's input stream the hook reads, by each family's call (comfy/ldm/*)."""
    text = ":txt" in hook
    if family in ("flux", "chroma") and hook.startswith("double"):
        return kwargs["txt" if text else "img"]
    if family == "qwenimage":
        return kwargs["encoder_hidden_states" if text else "hidden_states"]
    if hook.split(".")[0] in ("joint_blocks", "double_layers"):  # called as (txt, img)
        return args[0] if text else args[1]
    return args[0]


def _reference(family, hook, args, kwargs, out, side):
    """The hook's activations, computed from the block's inputs and outputs by hand."""
    if family == "sdxl":
        return out - args[0] if hook.endswith(":update") else out
    text = ":txt" in hook
    kind, at = LAYOUT[hook.split(".")[0]]
    if kind == "pair":
        stream = out[at] if not text else out[1 - at]
    elif kind == "joint":
        stream = out[:, :at] if text else out[:, at:]
    else:
        stream = out
    if hook.endswith(":update"):  # minus the same stream of the block's input
        inp = _input_stream(family, hook, args, kwargs)
        if kind == "joint":
            inp = inp[:, :at] if text else inp[:, at:]
        stream = stream - inp
    if text:
        return stream
    tokens = stream[:, :side * side]
    return tokens.reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_erase_changes_the_picture_only_where_the_concept_fires(tiny, family):
    model, cond, neg = tiny(family)
    base = sample(model, cond, neg, family)
    for hook, width, _ in BLOCKS[family]:
        silent = sample(erase(model, firing_sae(width, fire=False, hook=hook, family=family)), cond, neg, family)
        assert torch.equal(silent, base), hook  # the latent never fires: bit-identical picture
        erased = sample(erase(model, firing_sae(width, hook=hook, family=family)), cond, neg, family)
        assert (erased - base).abs().max() > 1e-3, hook
    assert torch.equal(sample(model, cond, neg, family), base)  # the unpatched MODEL is untouched


@pytest.mark.parametrize("family", FAMILIES)
def test_per_replace_runs_on_dit_grids(tiny, family):
    """PER's donors are other positions of the same picture: on a DiT, positions of the folded grid."""
    model, cond, neg = tiny(family)
    hook, width, _ = BLOCKS[family][0]
    loaded = firing_sae(width, hook=hook, family=family)
    base = sample(model, cond, neg, family)
    assert (sample(erase(model, loaded, mode="replace"), cond, neg, family) - base).abs().max() > 1e-3


# --- text states --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_text_sae_edits_the_text_states_every_family_reads(tiny, family):
    from saemnesia_pack.nodes import model_patch

    from saemnesia_core.checkpoint import CONTEXT
    model, cond, neg = tiny(family)
    width = model_patch.context_width(model)
    dm = model.model.diffusion_model
    seen = []
    handle = dm.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("context", a[2] if len(a) > 2 else None)),
                                          with_kwargs=True)
    try:
        base = sample(model, cond, neg, family)
        plain = list(seen)
        seen.clear()
        silent = sample(erase(model, firing_sae(width, fire=False, hook=CONTEXT, family=family)), cond, neg, family)
        assert torch.equal(silent, base) and all(torch.equal(a, b) for a, b in zip(seen, plain))
        seen.clear()
        erased = sample(erase(model, firing_sae(width, hook=CONTEXT, family=family)), cond, neg, family)
    finally:
        handle.remove()
    assert not torch.equal(seen[0], plain[0])  # the diffusion model read edited text states
    assert (erased - base).abs().max() > 1e-3
    assert torch.equal(sample(model, cond, neg, family), base)


@pytest.mark.parametrize("family, pooled_at", [("sdxl", 64), ("sd3", 96), ("flux", 32)])
def test_pooled_vector_moves_away_from_the_erased_concept(tiny, family, pooled_at):
    """SDXL's y (CLIP-G pooled, then size embeddings), SD3's and Flux's pooled CLIP: where the
    concept is in the prompt, the pooled part moves by the SAE's recorded shift; the rest of y and
    prompts without the concept stay."""
    from saemnesia_pack.nodes import model_patch

    from saemnesia_core.checkpoint import CONTEXT
    model, cond, neg = tiny(family)
    shift = torch.linspace(-1, 1, pooled_at)
    training = {"pooled": {"width": pooled_at, "concepts": {"thing": shift.tolist()}}}
    width = model_patch.context_width(model)
    dm = model.model.diffusion_model
    ys = []
    handle = dm.register_forward_pre_hook(lambda m, a, kw: ys.append(kw["y"].clone()), with_kwargs=True)
    try:
        sample(model, cond, neg, family, steps=1)
        sample(erase(model, firing_sae(width, hook=CONTEXT, family=family, training=training), strength=0.5),
               cond, neg, family, steps=1)
        sample(erase(model, firing_sae(width, fire=False, hook=CONTEXT, family=family, training=training)),
               cond, neg, family, steps=1)
    finally:
        handle.remove()
    plain, moved, kept = ys
    assert torch.allclose(moved[:, :pooled_at] - plain[:, :pooled_at], 0.5 * shift.expand(plain.shape[0], -1), atol=1e-5)
    assert torch.equal(moved[:, pooled_at:], plain[:, pooled_at:])  # SDXL's size embeddings stay
    assert torch.equal(kept, plain)  # the concept is not in the prompt: the pooled vector stays


def test_a_text_sae_of_another_family_is_refused(tiny):
    from saemnesia_pack.nodes import model_patch

    from saemnesia_core import IncompatibleSAEError
    from saemnesia_core.checkpoint import CONTEXT
    sdxl, flux, sd3 = tiny("sdxl")[0], tiny("flux")[0], tiny("sd3")[0]
    from_sdxl = firing_sae(96, hook=CONTEXT, family="sdxl")
    with pytest.raises(IncompatibleSAEError) as e:
        erase(flux, from_sdxl)
    assert "SDXL" in str(e.value) and "Flux" in str(e.value) and "CLIP-L + CLIP-G" in str(e.value)
    # SD3 and Flux both read 4096-wide T5 states at full size: the width alone cannot tell them apart
    from_flux = firing_sae(model_patch.context_width(sd3), hook=CONTEXT, family="flux")
    with pytest.raises(IncompatibleSAEError, match="T5-XXL.*SD3"):
        erase(sd3, from_flux)
    recorded = firing_sae(96, hook=CONTEXT, family="custom", training={"text": {"encoders": "T5-XXL"}})
    with pytest.raises(IncompatibleSAEError, match="T5-XXL"):
        erase(sdxl, recorded)
    block = firing_sae(64, hook="double_blocks.1", family="flux")
    with pytest.raises(IncompatibleSAEError, match="no transformer block 'double_blocks.1'.*input_blocks.4.1"):
        erase(sdxl, block)


# --- Inspect -----------------------------------------------------------------------------------


class PatchVAE:
    """A stand-in VAE: each latent pixel becomes an 8 x 8 block of its first three channels. What is
    tested is where the heatmap lands, not the VAE (ComfyUI's have no shrinkable size)."""

    def decode(self, samples):
        return torch.sigmoid(samples[:, :3]).repeat_interleave(8, -1).repeat_interleave(8, -2).movedim(1, -1)


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux", "lumina2"])
def test_inspect_draws_the_heatmap_on_the_image_grid(tiny, family, monkeypatch):
    from saemnesia_pack.nodes import inspect_neuron

    from saemnesia_core import SAEError
    model, cond, _ = tiny(family)
    hook, width, side = BLOCKS[family][0]
    maps = []
    real = inspect_neuron.activation_map
    monkeypatch.setattr(inspect_neuron, "activation_map",
                        lambda *a: (lambda out: maps.append(out[0]) or out)(real(*a)))
    run = inspect_neuron.InspectNeuron.execute
    lat = {"samples": torch.randn(latent(family).shape, generator=torch.Generator().manual_seed(0))}
    heat, text = run(model, firing_sae(width, hook=hook, family=family), PatchVAE(), cond, "concept", "thing", 0,
                     1, 2, "simple", 0, latent=lat).args
    assert maps[0].shape == (1, side, side) and bool((maps[0] > 0).all())  # the latent fires at every grid cell
    assert heat.shape[1:3][1] == 256 and "thing" in text  # the 128 px picture, enlarged to 256 px, scale below
    plain = run(model, firing_sae(width, fire=False, hook=hook, family=family), PatchVAE(), cond, "concept", "thing",
                0, 1, 2, "simple", 0, latent=lat).args[0]
    assert not torch.equal(heat[:, :256], plain[:, :256])  # a silent latent shows the bare picture
    if family != "sdxl":
        text_hook = next(h for h, _, s in BLOCKS[family] if not s)
        with pytest.raises(SAEError, match="text stream"):
            run(model, firing_sae(width, hook=text_hook, family=family), PatchVAE(), cond, "neuron", "", 3, 1, 2,
                "simple", 0, latent=lat)


# --- Train SAE from Prompts -------------------------------------------------------------------


@pytest.fixture()
def sae_dir(pack, tmp_path, monkeypatch):
    from saemnesia_pack.nodes import sae_folder

    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae", ([str(tmp_path / "sae")], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    (tmp_path / "sae").mkdir()
    folder_paths.filename_list_cache.clear()
    yield tmp_path / "sae"
    folder_paths.filename_list_cache.clear()
    sae_folder._cache.clear()


def train(model, clip, family, name, hook_point):
    from saemnesia_pack.nodes.train_sae import TrainSAEFromPrompts
    with torch.inference_mode():  # as ComfyUI runs a prompt
        return TrainSAEFromPrompts.execute(
            model, clip, {"samples": latent(family)}, name, objects="cat, dog", styles="ink",
            templates="a {object} in {style} style\n{object}, {style}", labelled_prompts="", hook_point=hook_point,
            steps=1, cfg=3.0, sampler_name="euler", scheduler="simple", seeds_per_prompt=1, seed=0, expansion=1, k=4,
            train_steps=20, batch_size=32, learning_rate=1e-3, supervised=True, overwrite=False).args


@pytest.mark.parametrize("family, default, text", [
    ("sdxl", "input_blocks.8.1:update", {"family": "SDXL", "encoders": "CLIP-L + CLIP-G", "width": 96, "pooled_width": 64}),
    ("flux", "double_blocks.1", {"family": "Flux", "encoders": "T5-XXL", "width": 48, "pooled_width": 32})])
def test_train_text_and_block_saes_through_the_familys_own_encoders(tiny, sae_dir, family, default, text):
    """Train SAE from Prompts on the family's default block and its text states, encoded by its own
    (shrunken) text encoders: the file records the block, the text it trained on and the pooled
    shifts; Erase with it changes the picture; on another family it is refused."""
    from saemnesia_core import IncompatibleSAEError, load_sae
    from saemnesia_core.checkpoint import CONTEXT
    from tools import comfy_env
    model = tiny(family)[0]
    clip = comfy_env.tiny_clip(family)
    loaded, report = train(model, clip, family, f"{family}_pair", f"auto, {CONTEXT}")
    on_disk = load_sae(str(sae_dir / f"{family}_pair.safetensors"))
    assert on_disk.hook_points == [default, CONTEXT] and "context: FVU" in report
    members = on_disk.info.training["members"]
    assert members[CONTEXT]["text"] == text
    # every token of the 4 prompts, by the family's encoders (Flux: T5's 256), and the empty prompt's
    tokens = 256 if family == "flux" else 77
    assert members[CONTEXT]["stored_tokens"] == (4 + 1) * tokens
    # 'ink' is in every prompt: there is no prompt without it to move towards, so it has no shift
    assert set(members[CONTEXT]["pooled"]["concepts"]) == {"cat", "dog"}
    assert len(members[CONTEXT]["pooled"]["concepts"]["cat"]) == text["pooled_width"]
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a cat in ink style"))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    base = sample(model, cond, neg, family)
    erased = sample(erase_named(model, on_disk, "cat"), cond, neg, family)
    assert (erased - base).abs().max() > 1e-4
    other = tiny("sd3" if family == "flux" else "flux")[0]
    with pytest.raises(IncompatibleSAEError, match=f"made for {text['family']} models, and this is a"):
        erase_named(other, on_disk, "cat")
    text_only = type(on_disk)(on_disk.blocks[1].sae, on_disk.blocks[1].info)
    with pytest.raises(IncompatibleSAEError, match=text["encoders"].replace("+", r"\+")):
        erase_named(other, text_only, "cat")


def test_train_a_block_sae_on_sd3_through_its_clip_encoders(tiny, sae_dir):
    """SD3's prompts through its own CLIP-L + CLIP-G (padded to T5's 4096, as ComfyUI does); the
    block SAE on the default joint block, image stream."""
    from saemnesia_core import load_sae
    from tools import comfy_env
    model, clip = tiny("sd3")[0], comfy_env.tiny_clip("sd3")
    train(model, clip, "sd3", "sd3_block", "auto")
    loaded = load_sae(str(sae_dir / "sd3_block.safetensors"))
    assert loaded.info.hook_point == "joint_blocks.1" and loaded.sae.d_in == 128 and loaded.info.model_family == "sd3"
    assert loaded.info.training["stored_tokens"] == 4 * 1 * 64  # prompts x steps x the 8 x 8 grid (cond half)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a dog in ink style"))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    base = sample(model, cond, neg, "sd3")
    assert (sample(erase_named(model, loaded, "dog"), cond, neg, "sd3") - base).abs().max() > 1e-4


def erase_named(model, loaded, concepts):
    from saemnesia_pack.nodes.erase_concepts import EraseConcepts
    return EraseConcepts.execute(model, loaded, concepts, "neuron", 1.0, -3.0, "both", 0.0, 1.0).args[0]


# --- published layouts ------------------------------------------------------------------------


@pytest.mark.parametrize("family, folder, hook, width", [
    ("sdxl", "unet.up_blocks.0.attentions.1_k10_hidden5120_auxk256_bs4096_lr0.0001", None, 128),
    ("flux", "SAE_flux_18", "transformer_blocks.1:update", 64)])
def test_converted_published_saes_erase_on_their_family(tiny, tmp_path, family, folder, hook, width):
    """An SAE in Surkov et al.'s SDXL layout (named by its diffusers block, on the block update) and
    one in SAE_flux_18's layout (here on this tiny Flux's last double block), converted by
    scripts/convert_published_sae.py: Erase finds their blocks through ComfyUI's own names."""
    import sys

    from test_convert_published_sae import write_published

    from saemnesia_core import load_sae
    from tools.comfy_env import REPO
    sys.path.insert(0, f"{REPO}/scripts")
    import convert_published_sae
    write_published(str(tmp_path / folder / "final"), d=width, n=96, k=10)
    out = str(tmp_path / f"{family}.safetensors")
    convert_published_sae.main([str(tmp_path / folder), out, "--family", family] + (["--hook-point", hook] if hook else []))
    loaded = load_sae(out)
    model, cond, neg = tiny(family)
    base = sample(model, cond, neg, family)
    with torch.no_grad():
        loaded.sae.b_enc[5] = 100.0  # a latent that fires everywhere, so the edit must act
    patched = erase_named(model, loaded, "neuron:5")
    expected = "output_blocks.1.1" if family == "sdxl" else "double_blocks.1"
    assert f"diffusion_model.{expected}.forward" in patched.object_patches
    assert (sample(patched, cond, neg, family) - base).abs().max() > 1e-4
