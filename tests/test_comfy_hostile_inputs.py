"""Hostile input found against a real server (issue 27), ComfyUI side: a replaced SAE file, the
concepts route under any body, Erase Concepts' text, and Train SAE from Prompts interrupted, out
of disk and saving over a name in another folder. In-process against the real ComfyUI modules and
the MiniCanvas demo model (a few seconds to load)."""
import logging
import os
import threading

import pytest
import torch
from test_core_hostile_inputs import big_index, sparse_sae
from test_demo_model_comfy import demo  # noqa: F401 - the fixture: the demo model, loaded once per module
from test_sae_cache_and_route import off_the_loop, serve, serve_async

pytestmark = [pytest.mark.comfy, pytest.mark.usefixtures("one_torch_thread")]

HOOK, WIDTH = "output_blocks.3.1", 64  # a block of the demo model


@pytest.fixture()
def folders(pack, tmp_path, monkeypatch):
    """models/sae and output in a temporary ComfyUI base folder; the pack's caches empty."""
    from saemnesia_pack.nodes import sae_folder

    import folder_paths
    models = tmp_path / "models"
    (models / "sae").mkdir(parents=True)
    monkeypatch.setattr(folder_paths, "models_dir", str(models))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae", ([str(models / "sae")], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    folder_paths.filename_list_cache.clear()
    sae_folder._cache.clear()
    sae_folder._plans.clear()
    yield models / "sae"
    folder_paths.filename_list_cache.clear()
    sae_folder._cache.clear()
    sae_folder._plans.clear()


def save(path, names=("cat",), n_latents=256, index=None):
    from saemnesia_core import SAEInfo, TopKSAE, save_sae
    from saemnesia_core.concepts import Concept, ConceptIndex, Selection
    sae = TopKSAE(WIDTH, n_latents, 4)
    sae.reset_parameters(torch.Generator().manual_seed(0))
    sae.requires_grad_(False)
    sel = [Selection([1], [1.0], [1.0], [0.0])]
    index = index or ConceptIndex(timesteps=[500.0], concepts={n: Concept(n, "object", None, sel) for n in names})
    save_sae(str(path), sae, SAEInfo(HOOK, "minicanvas", index, {}))
    return path


# --- a replaced file is read again, by Load SAE and by the picker ----------------------------------
def test_a_file_replaced_with_its_old_time_and_size_is_read_again(folders):
    from saemnesia_pack.nodes.load_sae import LoadSAE
    path = save(folders / "s.safetensors", ["cat"])
    first = LoadSAE.fingerprint_inputs("s.safetensors")
    assert LoadSAE.execute("s.safetensors").args[0].index.names() == ["cat"]
    assert serve("GET", "/saemnesia/concepts?sae=s.safetensors")[1]["concepts"][0]["name"] == "cat"
    st = os.stat(path)
    save(path, ["dog"])  # what cp -p or rsync -a leave: new content, the old time and size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.path.getsize(path) == st.st_size
    # ComfyUI runs Load SAE again (and the graph after it), which loads the new file
    assert LoadSAE.fingerprint_inputs("s.safetensors") != first
    assert LoadSAE.execute("s.safetensors").args[0].index.names() == ["dog"]
    assert serve("GET", "/saemnesia/concepts?sae=s.safetensors")[1]["concepts"][0]["name"] == "dog"
    again = LoadSAE.fingerprint_inputs("s.safetensors")
    os.utime(path)  # a touch: nothing to run again
    assert LoadSAE.fingerprint_inputs("s.safetensors") == again
    assert LoadSAE.fingerprint_inputs("../gone.safetensors") == "../gone.safetensors"  # the node says why when it runs


# --- the concepts route: the header only, and JSON for every body ---------------------------------
def test_the_picker_reads_only_the_concept_index(folders, monkeypatch):
    from saemnesia_pack.nodes import sae_folder

    from saemnesia_core import checkpoint
    save(folders / "s.safetensors", ["cat", "dog"])
    monkeypatch.setattr(checkpoint, "_load_tensors", lambda *a: pytest.fail("the picker read the weights"))
    status, body = serve("GET", "/saemnesia/concepts?sae=s.safetensors")
    assert status == 200 and [c["name"] for c in body["concepts"]] == ["cat", "dog"] and body["n_latents"] == 256
    assert len(sae_folder._cache) == 0  # nothing loaded for the picker

    sparse_sae(folders / "sparse.safetensors", 1 << 17, 1 << 11)  # 1 GiB of bf16 declared, kB on disk
    status, body = serve("GET", "/saemnesia/concepts?sae=sparse.safetensors")
    assert status == 400 and "2.0 GiB" in body["error"] and "up to 1 GiB" in body["error"]


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("body, status, words", [
    (nested(100_000), 400, "nested too deeply"),
    (b'{"objects": ' + nested(100_000) + b"}", 400, "nested too deeply"),
    (b'{"objects": "c\\ud800t"}', 400, "lone surrogate"),
    (b'{"labelled_prompts": "\\udfff: a cat"}', 400, "lone surrogate"),
    (b'{"styles": 1e999999}', 400, "must be text"),
    (b"\xff\xfe\x00garbage", 400, "not JSON"),
    (b"", 400, "not JSON"),
    (b"null", 400, "JSON object"),
    (b'{"objects": "' + b"x" * 200_000 + b'"}', 400, "the limit is 100,000"),
    (b'{"labelled_prompts": ":\\n:"}', 200, ""),  # the preview skips lines training refuses
])
def test_every_body_gets_a_json_answer(pack, body, status, words):
    got, answer = serve("POST", "/saemnesia/concepts", data=body, headers={"Content-Type": "application/json"})
    assert got == status and words in answer.get("error", ""), answer


def test_a_large_body_is_refused_before_it_is_read(pack):
    from saemnesia_pack.nodes.routes import MAX_BODY_BYTES
    big = b'{"objects": "' + b"x" * (10 << 20) + b'"}'  # 10 MB
    status, answer = serve("POST", "/saemnesia/concepts", data=big)
    assert status == 413 and f"larger than {MAX_BODY_BYTES:,} bytes" in answer["error"]

    async def chunks():  # no Content-Length: refused once the bytes read pass the limit
        for _ in range(12):
            yield b"x" * (1 << 20)
    status, answer = serve("POST", "/saemnesia/concepts", data=chunks())
    assert status == 413


def test_bodies_are_parsed_off_the_event_loop(pack, monkeypatch):
    from saemnesia_pack.nodes import routes
    (status, body), thread = off_the_loop(monkeypatch, routes, "planned_from_body",
                                          lambda: serve_async("POST", "/saemnesia/concepts", data=b'{"objects": "cat"}'))
    assert status == 200 and body["concepts"][0]["name"] == "cat"
    assert thread is not threading.main_thread()


@pytest.mark.parametrize("query", ["sae=..%2Fx", "sae=%00", "sae=%ED%A0%80", "sae=" + "a" * 4000, "", "sae=nope.safetensors"])
def test_hostile_names_get_a_short_json_error(folders, query):
    status, body = serve("GET", f"/saemnesia/concepts?{query}")
    assert status == 400 and len(body["error"]) < 400, body


# --- Erase Concepts' text on the demo model ---------------------------------------------------------
@pytest.fixture(scope="module")
def big_sae(pack, tmp_path_factory):
    """An SAE of the demo's block with 5,000 concepts, as the issue's tester made one."""
    from saemnesia_core import load_sae
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    return load_sae(str(save(path, n_latents=5000, index=big_index(5000))))


def erase(demo, sae, concepts):  # noqa: F811 - demo is the fixture
    from saemnesia_pack.nodes.erase_concepts import EraseConcepts
    return EraseConcepts.execute(demo["model"], sae, concepts, "ablate", 1.0, -3.0, "both", 0.0, 1.0)


def test_erase_bounds_its_text_and_its_messages(demo, big_sae):  # noqa: F811
    from saemnesia_core import SAEError
    from saemnesia_core.prompts import MAX_ERASE_ENTRIES
    names = ", ".join(f"concept {i}" for i in range(600))
    with pytest.raises(SAEError, match=f"names 600 different concepts; Erase Concepts takes at most {MAX_ERASE_ENTRIES}"):
        erase(demo, big_sae, names)
    with pytest.raises(SAEError) as e:
        erase(demo, big_sae, "star, " * 170_000)  # 1 MB
    assert len(str(e.value)) < 300
    with pytest.raises(SAEError) as e:
        erase(demo, big_sae, "x" * 15_000)  # one long unknown name, within the length limit
    assert len(str(e.value)) < 400 and "(15,000 characters)" in str(e.value)
    with pytest.raises(SAEError) as e:
        erase(demo, big_sae, "concept 1, no such thing")
    assert len(str(e.value)) < 400 and "knows 5,000 concepts" in str(e.value)
    patched = erase(demo, big_sae, ", ".join(["concept 7"] * 3000)).args[0]  # repeats count once
    assert patched is not demo["model"]


def test_erase_stops_when_interrupted(demo, big_sae):  # noqa: F811
    import comfy.model_management as mm
    names = ", ".join(f"concept {i}" for i in range(0, 5000, 10))
    mm.interrupt_current_processing(True)  # what /interrupt does
    try:
        with pytest.raises(mm.InterruptProcessingException):
            erase(demo, big_sae, names)
        assert not mm.processing_interrupted()  # taken by the node: the next prompt runs
    finally:
        mm.interrupt_current_processing(False)


# --- Train SAE from Prompts ------------------------------------------------------------------------
TRAIN = dict(objects="circle, heart", styles="stripes", templates="a {object} in {style} style", labelled_prompts="",
             hook_point=HOOK, steps=2, cfg=4.0, sampler_name="ddim", scheduler="ddim_uniform", seeds_per_prompt=1,
             seed=0, expansion=1, k=8, train_steps=30, batch_size=16, learning_rate=1e-3, supervised=True)


def train(demo, name, overwrite=False, **kw):  # noqa: F811
    from saemnesia_pack.nodes.train_sae import TrainSAEFromPrompts
    with torch.inference_mode():  # as ComfyUI runs a prompt
        return TrainSAEFromPrompts.execute(demo["model"], demo["clip"], {"samples": torch.zeros(1, 3, 32, 32)}, name,
                                           overwrite=overwrite, **{**TRAIN, **kw})


@pytest.fixture()
def interrupt_after(monkeypatch):
    """interrupt_after(n): /interrupt after the node's progress bar has moved n times, acted on as the
    server's own progress hook acts (comfy/main.py: throw_exception_if_processing_interrupted)."""
    import comfy.model_management as mm
    import comfy.utils
    calls = {"n": 0, "at": None}

    def hook(value, total, preview, node_id=None):
        calls["n"] += 1
        if calls["n"] == calls["at"]:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", hook)
    yield lambda n: calls.update(at=n, n=0)
    mm.interrupt_current_processing(False)


def test_an_interrupted_collection_leaves_nothing_and_says_so(demo, folders, interrupt_after, caplog):  # noqa: F811
    import comfy.model_management as mm
    caplog.set_level(logging.INFO, "saemnesia")
    interrupt_after(1)  # after the first of two prompts
    with pytest.raises(mm.InterruptProcessingException):
        train(demo, "stopped")
    runs = folders.parent.parent / "output" / "saemnesia_runs"
    assert not runs.exists() or list(runs.iterdir()) == []  # the partial activations are gone
    assert "partial activations were removed from output/saemnesia_runs/stopped-" in caplog.text


def test_an_interrupted_training_names_its_folder_and_how_to_clear_it(demo, folders, interrupt_after, caplog):  # noqa: F811
    import comfy.model_management as mm
    caplog.set_level(logging.INFO, "saemnesia")
    interrupt_after(6)  # two prompts collected, then a few training steps
    with pytest.raises(mm.InterruptProcessingException):
        train(demo, "paused")
    (run,) = (folders.parent.parent / "output" / "saemnesia_runs").glob("paused-*")
    assert (run / "train" / "checkpoint.safetensors").exists()
    assert f"is kept in output/saemnesia_runs/{run.name}; delete that folder to free the space" in caplog.text
    assert str(run) not in caplog.text  # as the user finds it, not a server path


def test_a_full_disk_names_the_folder_keeps_the_old_file_and_the_run_resumes(demo, folders, monkeypatch):  # noqa: F811
    from safetensors import SafetensorError

    from saemnesia_core import SAEError, fileio, load_sae
    old = save(folders / "mine.safetensors", ["cat"])
    kept = old.read_bytes()
    real = fileio.save_file

    def full_in_models(tensors, path, metadata=None):
        if os.path.dirname(path) == str(folders):  # the disk of models/sae is full, not that of output/
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, metadata=metadata)
    monkeypatch.setattr(fileio, "save_file", full_in_models)
    with pytest.raises(SAEError) as e:
        train(demo, "mine", overwrite=True)
    msg = str(e.value)
    assert msg.startswith("Could not save mine.safetensors in models/sae: the disk is full. Free space on that disk"), msg
    assert "The trained SAE is kept in output/saemnesia_runs/mine-" in msg and str(folders) not in msg
    assert old.read_bytes() == kept and sorted(os.listdir(folders)) == ["mine.safetensors"]  # nothing lost, no partial file
    monkeypatch.setattr(fileio, "save_file", real)
    _, report = train(demo, "mine", overwrite=True).args  # space freed: saved without training again
    assert "(resumed)" in report and load_sae(str(old)).index.names("object") == ["circle", "heart"]


def test_overwrite_writes_where_the_existing_sae_is(demo, folders, tmp_path, monkeypatch):  # noqa: F811
    import folder_paths

    from saemnesia_core import load_sae
    later = tmp_path / "shared_sae"
    later.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae", ([str(folders), str(later)], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    save(later / "shared.safetensors", ["cat"])
    train(demo, "shared", overwrite=True, train_steps=5)
    assert not (folders / "shared.safetensors").exists()  # no new copy that would shadow... or be shadowed
    assert load_sae(str(later / "shared.safetensors")).index.names("object") == ["circle", "heart"]


@pytest.mark.parametrize("kw, words", [
    ({"name": "CON"}, "CON is a device name on Windows"),
    ({"name": "nul.safetensors"}, "NUL is a device name"),
    ({"name": "com1.backup"}, "COM1 is a device name"),
    ({"name": "Lpt9 "}, "LPT9 is a device name"),
    ({"labelled_prompts": ":\n:", "objects": "", "styles": ""}, "a ':' without a label"),
    ({"objects": "circle, st\u202eelcric"}, "RIGHT-TO-LEFT OVERRIDE"),
    ({"styles": "str\u0456pes, stripes"}, "mixes Cyrillic and Latin"),
    ({"objects": "circle, \ud800"}, "lone surrogate"),
    ({"hook_point": "x" * 200_000}, "the limit is 100,000"),
    ({"seeds_per_prompt": 64, "steps": 200, "objects": ", ".join(f"o{i}" for i in range(80))},
     "80 prompts x 64 seeds x 200 steps = 1,024,000 model steps to sample; Train SAE from Prompts samples at most 1,000,000"),
])
def test_bad_train_inputs_are_refused_before_any_sampling(demo, folders, kw, words):  # noqa: F811
    from saemnesia_core import SAEError
    kw = {"name": "fine", **kw}
    with pytest.raises(SAEError, match=words.replace("(", r"\(")) as e:
        train(demo, **kw)
    assert len(str(e.value)) < 700
    assert not (folders.parent.parent / "output" / "saemnesia_runs").exists()


def test_device_names_are_refused_as_sae_names_in_any_case_and_with_any_extension(folders):
    from saemnesia_pack.nodes import sae_folder

    from saemnesia_core import SAEError
    for name in ("CON", "prn", "Aux.safetensors", "nul.tar", "COM1", "com9", "LPT1", "lpt5.x"):
        with pytest.raises(SAEError, match="device name on Windows"):
            sae_folder.output_path(name, overwrite=True)
    for name in ("CONSOLE", "com10", "lpt", "nullable", "my con"):
        assert sae_folder.output_path(name, overwrite=False).endswith(f"{name}.safetensors")
