"""The four nodes called as ComfyUI calls them, on the SD1.5-shaped random checkpoint."""
import os

import pytest
import torch
from test_comfy_integration import LATENT, make_loaded

pytestmark = pytest.mark.comfy


@pytest.fixture()
def sae_dir(pack, tmp_path, monkeypatch):
    from saemnesia_pack.nodes import sae_folder

    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae", ([str(tmp_path / "sae")], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    os.makedirs(tmp_path / "sae")
    folder_paths.filename_list_cache.clear()
    yield tmp_path / "sae"
    folder_paths.filename_list_cache.clear()
    sae_folder._cache.clear()


def test_sae_folder_is_registered_keeping_configured_paths(pack):
    import folder_paths
    paths, exts = folder_paths.folder_names_and_paths["sae"]
    assert os.path.join(folder_paths.models_dir, "sae") in paths and ".safetensors" in exts
    from saemnesia_pack.nodes import sae_folder
    folder_paths.folder_names_and_paths["sae"] = (["/somewhere/else"], {".safetensors"})
    sae_folder.register()
    assert folder_paths.folder_names_and_paths["sae"][0][0] == "/somewhere/else"
    assert os.path.join(folder_paths.models_dir, "sae") in folder_paths.folder_names_and_paths["sae"][0]


def test_the_packs_own_sae_folder_comes_after_the_users_and_its_files_load(pack, tmp_path, monkeypatch):
    """The SAEs shipped in the pack's models/sae are listed and load; the user's folders come
    first (a user's file of the same name wins) and new SAEs are saved in the user's folder."""
    from saemnesia_pack.nodes import sae_folder
    from saemnesia_pack.nodes.load_sae import LoadSAE

    import folder_paths

    from saemnesia_core import LoadedSAE, SAEInfo, TopKSAE, save_sae
    from saemnesia_core.concepts import ConceptIndex
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert sae_folder.PACK_FOLDER == os.path.join(repo, "models", "sae")
    assert folder_paths.folder_names_and_paths["sae"][0][-1] == sae_folder.PACK_FOLDER  # registered at import

    shipped, user = tmp_path / "pack_models_sae", tmp_path / "user_sae"
    os.makedirs(shipped)
    os.makedirs(user)
    monkeypatch.setattr(sae_folder, "PACK_FOLDER", str(shipped))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae", ([str(user)], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    sae_folder._cache.clear()
    try:
        sae_folder.register()
        paths = folder_paths.folder_names_and_paths["sae"][0]
        assert paths[0] == str(user) and paths[-1] == str(shipped)
        assert os.path.join(folder_paths.models_dir, "sae") in paths[1:-1]
        sae_folder.register()  # registering again keeps one copy, still last
        assert folder_paths.folder_names_and_paths["sae"][0].count(str(shipped)) == 1

        sae = TopKSAE(8, 16, 2)
        sae.requires_grad_(False)
        save_sae(str(shipped / "shipped.safetensors"), sae, SAEInfo("output_blocks.1.1", "minicanvas", ConceptIndex(), {}))
        assert "shipped.safetensors" in LoadSAE.define_schema().inputs[0].options
        loaded = LoadSAE.execute("shipped.safetensors").args[0]
        assert isinstance(loaded, LoadedSAE) and loaded.info.hook_point == "output_blocks.1.1"
        assert torch.equal(loaded.sae.W_enc, sae.W_enc)
        # a user's file of the same name wins; new SAEs go to the user's folder, not the pack's
        save_sae(str(user / "shipped.safetensors"), TopKSAE(8, 32, 2), SAEInfo("output_blocks.3.1", "x", ConceptIndex(), {}))
        assert LoadSAE.execute("shipped.safetensors").args[0].info.hook_point == "output_blocks.3.1"
        assert os.path.dirname(sae_folder.output_path("new_one", False)) == str(user)
    finally:
        folder_paths.filename_list_cache.clear()
        sae_folder._cache.clear()


def test_load_sae_node_lists_and_loads_and_refuses_escapes(env, block_outputs, sae_dir):
    from saemnesia_pack.nodes.load_sae import LoadSAE

    from saemnesia_core import SAEError, SAEFileError, save_sae
    loaded = make_loaded(block_outputs)
    save_sae(str(sae_dir / "thing.safetensors"), loaded.sae, loaded.info)
    (sae_dir / "broken.safetensors").write_bytes(b"\x00" * 20)
    schema = LoadSAE.define_schema()
    assert set(schema.inputs[0].options) == {"thing.safetensors", "broken.safetensors"}
    out = LoadSAE.execute("thing.safetensors")
    assert torch.equal(out.args[0].sae.W_dec, loaded.sae.W_dec)
    assert "output_blocks.5.1" in out.args[1] and "thing" in out.args[1]
    with pytest.raises(SAEFileError, match="broken.safetensors"):
        LoadSAE.execute("broken.safetensors")
    for bad in ("../thing.safetensors", "/etc/passwd", "sub/../../x.safetensors"):
        with pytest.raises(SAEError, match="not a file name inside"):
            LoadSAE.execute(bad)
    with pytest.raises(SAEError, match="not found"):
        LoadSAE.execute("missing.safetensors")


def test_inspect_neuron_makes_a_heatmap_and_a_summary(env, block_outputs):
    from saemnesia_pack.nodes.inspect_neuron import InspectNeuron

    import comfy.sample

    from saemnesia_core import SAEError
    from saemnesia_core.heatmap import colorize
    loaded = make_loaded(block_outputs)
    top = loaded.index.get("thing").latent
    lat = {"samples": torch.randn(LATENT)}
    run = InspectNeuron.execute
    out = run(env["model"], loaded, env["vae"], env["cond"], "neuron", "", top, 1, 3, "normal", 0, latent=lat)
    heat, text = out.args
    # the 64 px picture is enlarged 4x to 256 px (nearest) and a colour scale sits below it
    assert heat.shape[0] == 1 and heat.shape[2] == 256 and heat.shape[1] > 256 and heat.shape[3] == 3
    assert 0 <= float(heat.min()) and float(heat.max()) <= 1
    bar = heat[0, 256:].reshape(-1, 3)
    for end in (colorize(torch.tensor(0.0)), colorize(torch.tensor(1.0))):  # both ends of the scale are drawn
        assert (bar - end).abs().max(-1).values.min() < 0.02
    # the summary speaks the widgets' language and explains its numbers
    assert f"Latent {top} at step 1 of 3" in text and "thing" in text and "timestep" not in text
    image = env["vae"].decode(lat["samples"])
    out2 = run(env["model"], loaded, env["vae"], env["cond"], "concept", "THING", 0, 1, 3, "normal", 0, image=image)
    assert out2.args[1].startswith("Concept 'thing' (object) at step 1 of 3") and out2.args[0].shape == heat.shape
    assert out2.ui.as_dict()["images"]  # the heatmap is shown on the node
    # a map where the neuron is silent shows the picture, not a heatmap
    silent = run(env["model"], loaded, env["vae"], env["cond"], "neuron", "", (top + 1) % 2560, 1, 3, "normal",
                 0, image=image).args[0]
    assert not torch.allclose(silent[:, :256], out2.args[0][:, :256])
    with pytest.raises(SAEError, match="step 5"):
        run(env["model"], loaded, env["vae"], env["cond"], "neuron", "", top, 5, 3, "normal", 0, latent=lat)
    with pytest.raises(SAEError, match="0..2559"):
        run(env["model"], loaded, env["vae"], env["cond"], "neuron", "", 99999, 1, 3, "normal", 0, latent=lat)
    with pytest.raises(SAEError, match="no concept is named"):
        run(env["model"], loaded, env["vae"], env["cond"], "concept", " ", 0, 1, 3, "normal", 0, latent=lat)
    with pytest.raises(SAEError, match="Connect"):
        run(env["model"], loaded, env["vae"], env["cond"], "neuron", "", top, 1, 3, "normal", 0)
    del comfy


def test_every_input_and_output_says_what_it_is(pack):
    """Hovering any socket or widget tells an artist what it does (the frontend shows these tooltips)."""
    from saemnesia_pack.nodes import NODES
    from saemnesia_pack.nodes.demo import DEMO_NODES
    missing = []
    for node in [*NODES, *DEMO_NODES]:
        s = node.define_schema()
        missing += [f"{s.node_id}.{i.id}" for i in s.inputs if not (i.tooltip or "").strip()]
        missing += [f"{s.node_id} output {o.display_name or o.io_type}" for o in s.outputs if not (o.tooltip or "").strip()]
        for i in s.inputs:  # a multiline box shows no label: its placeholder names it while it is empty
            if getattr(i, "multiline", False):
                assert (i.placeholder or "").lower().startswith(i.id.replace("_", " ")), f"{s.node_id}.{i.id}"
    assert not missing, missing


TRAIN_ARGS = dict(objects="cat, dog", styles="ink", templates="a {object} in {style} style", labelled_prompts="",
                  hook_point="auto", steps=3, cfg=5.0, sampler_name="euler", scheduler="normal", seeds_per_prompt=1,
                  seed=0, expansion=1, k=8, train_steps=30, batch_size=32, learning_rate=1e-3, supervised=True)


def train(env, name, overwrite=False, **kw):
    from saemnesia_pack.nodes.train_sae import TrainSAEFromPrompts
    lat = {"samples": torch.zeros(1, 4, 16, 16)}
    return TrainSAEFromPrompts.execute(env["model"], env["clip"], lat, name, overwrite=overwrite, **{**TRAIN_ARGS, **kw})


def test_train_node_trains_saves_resumes_and_refuses_overwrite(env, sae_dir, monkeypatch):
    import comfy.model_management as mm

    from saemnesia_core import SAEError, load_sae
    # cancel in the middle of training: the run keeps its last checkpoint
    calls = {"n": 0}
    real = mm.processing_interrupted

    def interrupt_later():
        calls["n"] += 1
        return calls["n"] > 12
    monkeypatch.setattr(mm, "processing_interrupted", interrupt_later)
    with pytest.raises(mm.InterruptProcessingException):
        train(env, "mine")
    (run,) = (sae_dir.parent / "output" / "saemnesia_runs").glob("mine-*")  # keyed by name + settings
    assert (run / "train" / "checkpoint.safetensors").exists() and not (sae_dir / "mine.safetensors").exists()
    monkeypatch.setattr(mm, "processing_interrupted", real)

    out = train(env, "mine")
    loaded, report = out.args
    assert (sae_dir / "mine.safetensors").exists() and "(resumed)" in report
    again = load_sae(str(sae_dir / "mine.safetensors"))
    assert again.info.hook_point == "output_blocks.4.1" and again.sae.n_latents == 1280 and again.sae.k == 8
    assert set(again.index.names("object")) == {"cat", "dog"} and again.index.names("style") == ["ink"]
    assert again.index.supervised and len(again.index.timesteps) == 3
    assert again.info.training["stored_tokens"] == 2 * 3 * 16  # prompts x steps x positions (cond half only)
    with pytest.raises(SAEError, match="already exists"):
        train(env, "mine")
    for bad in ("../escape", "a/b", ""):
        with pytest.raises(SAEError, match="not a valid SAE name"):
            train(env, bad)
    with pytest.raises(SAEError, match="empty"):
        train(env, "other", objects="", styles="", labelled_prompts="")
    with pytest.raises(SAEError, match="no transformer block"):
        train(env, "other", hook_point="output_blocks.40.1")


def test_a_cancelled_run_survives_a_run_with_other_settings_and_still_resumes(env, sae_dir, monkeypatch):
    """Issue 13: the work folder was keyed by name only and a same-name run with other settings
    deleted the cancelled run's checkpoint. Now each settings get their own folder."""
    import comfy.model_management as mm
    real = mm.processing_interrupted
    calls = {"n": 0}

    def interrupt_later():
        calls["n"] += 1
        return calls["n"] > 12
    monkeypatch.setattr(mm, "processing_interrupted", interrupt_later)
    quick = dict(steps=1)  # one sampling step per prompt: what is tested is the work folder
    with pytest.raises(mm.InterruptProcessingException):
        train(env, "twin", **quick)
    runs = sae_dir.parent / "output" / "saemnesia_runs"
    (first,) = runs.glob("twin-*")
    ckpt = first / "train" / "checkpoint.safetensors"
    kept = ckpt.read_bytes()
    monkeypatch.setattr(mm, "processing_interrupted", real)

    # same name, other settings (k): a fresh run in its own folder; the cancelled one is untouched
    _, report = train(env, "twin", k=4, **quick).args
    assert "(resumed)" not in report and len(list(runs.glob("twin-*"))) == 2
    assert ckpt.read_bytes() == kept
    # the original settings still resume the cancelled run
    _, report = train(env, "twin", overwrite=True, **quick).args
    assert "(resumed)" in report
    assert "Saved twin.safetensors in " in report and str(sae_dir) not in report  # no server path


def test_overwrite_off_checks_every_folder_load_sae_lists(pack, env, sae_dir, tmp_path, monkeypatch):
    """Training a name that exists in any listed sae folder is refused while overwrite is off,
    and the names of the SAEs shipped in the pack's models/sae are never taken."""
    from saemnesia_pack.nodes import sae_folder

    import folder_paths

    from saemnesia_core import SAEError, SAEInfo, TopKSAE, save_sae
    from saemnesia_core.concepts import ConceptIndex
    shipped, extra = tmp_path / "pack_sae", tmp_path / "extra_sae"
    shipped.mkdir()
    extra.mkdir()
    monkeypatch.setattr(sae_folder, "PACK_FOLDER", str(shipped))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae",
                        ([str(sae_dir), str(extra), str(shipped)], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    sae = TopKSAE(8, 16, 2)
    sae.requires_grad_(False)
    for folder, name in ((shipped, "minicanvas_objects_saemnesia"), (extra, "shared")):
        save_sae(str(folder / f"{name}.safetensors"), sae, SAEInfo("output_blocks.1.1", "x", ConceptIndex(), {}))
        assert f"{name}.safetensors" in sae_folder.list_saes()
    with pytest.raises(SAEError, match="shipped with the pack"):
        train(env, "minicanvas_objects_saemnesia")
    with pytest.raises(SAEError, match="shipped with the pack"):
        train(env, "minicanvas_objects_saemnesia", overwrite=True)
    with pytest.raises(SAEError, match="already exists in an sae folder from extra_model_paths.yaml") as e:
        train(env, "shared")
    assert str(extra) not in str(e.value)
    assert not (sae_dir / "minicanvas_objects_saemnesia.safetensors").exists()
    assert not (sae_dir / "shared.safetensors").exists()
    # nothing was sampled: the name is checked first
    assert not (sae_dir.parent / "output" / "saemnesia_runs").exists()
