"""End to end: every shipped workflow's API twin (example_workflows/api/) runs unmodified on the real
ComfyUI server over HTTP and produces its images.

The MiniCanvas workflows load the SAEs shipped in the pack's models/sae; a test whose SAE file
is not there skips and names it. To try candidate SAEs before they are committed, point
SAEMNESIA_CANDIDATE_SAES at a folder holding files of the shipped names: they are then put in
the test server's own models/sae instead.

The SD 1.5 workflow runs on the random SD1.5-shaped checkpoint (linked under the checkpoint
name the workflow picks) with a small random SAeUron-layout SAE written under the SAE name it
picks; its graph runs as shipped except for the picture size and step count (CPU time).
"""
import os

import numpy as np
import pytest

from tools import workflows as wf

pytestmark = pytest.mark.e2e

@pytest.fixture()
def server(comfy_server):
    return comfy_server  # one server for the session (tests/conftest.py)


def require_saes(api: dict):
    """Skip, naming the files, when a Load SAE node's file is neither shipped nor a candidate."""
    missing = wf.missing_saes(api)
    if missing:
        pytest.skip(f"shipped SAE missing from models/sae/: {', '.join(missing)}")


def run(server, name: str, timeout: float = 900, override=None) -> tuple[dict, dict, dict]:
    """Queue the twin as shipped (override(api) may change values, never the graph):
    (api graph, history entry, {Save Image title: [HxWx3 uint8]})."""
    from PIL import Image
    _, api = wf.load(name)
    if override:
        shape = {nid: (n["class_type"], sorted(n["inputs"])) for nid, n in api.items()}
        override(api)
        assert {nid: (n["class_type"], sorted(n["inputs"])) for nid, n in api.items()} == shape, "only values may change"
    entry = server.run(api, timeout=timeout)
    images = {}
    for nid, out in entry["outputs"].items():
        if api[nid]["class_type"] != "SaveImage":
            continue
        images[api[nid]["_meta"]["title"]] = [
            np.asarray(Image.open(os.path.join(server.base, "output", im["subfolder"], im["filename"])).convert("RGB"))
            for im in out["images"]]
    return api, entry, images


def texts(api: dict, entry: dict) -> dict:
    """{title: text} shown by the Preview as Text nodes."""
    return {api[nid]["_meta"]["title"]: "".join(out["text"]) for nid, out in entry["outputs"].items()
            if api[nid]["class_type"] == "PreviewAny"}


def batch_of(api: dict) -> int:
    (latent,) = [n["inputs"] for n in api.values() if n["class_type"] in ("EmptyChromaRadianceLatentImage",
                                                                         "EmptyLatentImage")]
    return latent["batch_size"]


def change(a: list, b: list) -> list[float]:
    """Per image: mean absolute difference in 0..255."""
    return [float(np.abs(x.astype(np.float32) - y.astype(np.float32)).mean()) for x, y in zip(a, b, strict=True)]


def roughness(pictures: list) -> float:
    """Mean |difference| of neighbouring pixels at the model's 32 px, 0..255: about 17 for the demo
    model's clean pictures, about 75 for noise. Reported so that an erasure that only destroys the
    picture shows in the log."""
    small = [p[::wf.VIEW_SCALE, ::wf.VIEW_SCALE].astype(np.float32) for p in pictures]
    return round(float(np.mean([np.abs(np.diff(p, axis=0)).mean() for p in small])), 1)


def check_pictures(images: dict, count: int, size: int):
    for title, pics in images.items():
        assert len(pics) == count, f"{title}: {len(pics)} images, expected {count}"
        for p in pics:
            assert p.shape == (size, size, 3), title
            assert p.std() > 2, f"{title}: a flat image"


def what_classifiers_see(pictures: list) -> list[str]:
    """The shipped MiniCanvas judges' reading of each picture (reported, not asserted: how well
    an SAE erases is measured by the benchmark, not by this test)."""
    import torch

    from saemnesia_demo.classifier import load_classifiers
    from saemnesia_demo.data import OBJECTS, STYLES
    clf, _ = load_classifiers()
    small = [p[::wf.VIEW_SCALE, ::wf.VIEW_SCALE] for p in pictures]  # undo the nearest 4x enlargement exactly
    x = torch.stack([torch.from_numpy(p.astype(np.float32) / 127.5 - 1).permute(2, 0, 1) for p in small])
    with torch.no_grad():
        o, s = clf.predict(x)
    return [f"{OBJECTS[i]}/{STYLES[j]}" for i, j in zip(o.tolist(), s.tolist())]


DEMO_PX = 32 * wf.VIEW_SCALE  # the demo model's 32 px pictures, enlarged to be seen on the nodes
MIN_CHANGE = 1.0  # mean |after - before| per image, 0..255; the run-to-run noise of one graph is 0


@pytest.mark.parametrize("name", ["erase_one_concept_minicanvas", "erase_one_concept_minicanvas_dit"])
def test_erase_one_concept(server, name):
    """On each bundled demo model (the UNet, and MiniCanvas-DiT in Flux's layout), erasing 'star'
    with the shipped text-state SAE changes every picture of the batch."""
    require_saes(wf.load(name)[1])
    api, _, images = run(server, name)
    assert set(images) == {"Before", "After (star erased)"}
    check_pictures(images, batch_of(api), DEMO_PX)
    before, after = images["Before"], images["After (star erased)"]
    assert len({p.tobytes() for p in before}) == len(before), "the batch items should be different seeds"
    diffs = change(before, after)
    print(f"\n{name}: change per image {[round(d, 1) for d in diffs]}; before {what_classifiers_see(before)}, "
          f"roughness {roughness(before)}; after {what_classifiers_see(after)}, roughness {roughness(after)}")
    assert min(diffs) > MIN_CHANGE, f"erasing 'star' left some pictures unchanged: {diffs}"


def test_erase_several_concepts(server):
    name = "erase_several_concepts_minicanvas"
    require_saes(wf.load(name)[1])
    api, _, images = run(server, name)
    check_pictures(images, batch_of(api), DEMO_PX)
    assert len(images) == 6
    report, changes = [], {}
    for subject in ("star in stripes", "heart in dots"):
        before = images[f"Before: {subject}"]
        for column in ("After A", "After B"):
            after = images[f"{column}: {subject}"]
            changes[column, subject] = diffs = change(before, after)
            report.append(f"{column} {subject}: change {[round(d, 1) for d in diffs]}, seen {what_classifiers_see(after)}, "
                          f"roughness {roughness(after)} (before {roughness(before)})")
    print(f"\n{name}:\n  " + "\n  ".join(report))
    # A erases star and heart; B erases star and stripes
    for key in (("After A", "star in stripes"), ("After A", "heart in dots"), ("After B", "star in stripes")):
        assert min(changes[key]) > MIN_CHANGE, f"{key[0]} left '{key[1]}' pictures unchanged: {changes[key]}"
    # ... and neither of B's concepts is in 'a heart in dots': the edit is where they fire, so that row barely moves
    assert max(changes["After B", "heart in dots"]) < 0.25 * min(changes["After B", "star in stripes"]), changes


def test_inspect_neuron(server):
    name = "inspect_neuron_minicanvas"
    require_saes(wf.load(name)[1])
    api, entry, images = run(server, name)
    assert set(images) == {"Generated", "Heatmap: star", "Heatmap: stripes"}
    check_pictures({"Generated": images["Generated"]}, batch_of(api), DEMO_PX)
    for concept in ("star", "stripes"):
        # the heatmap is the 32 px picture with the activation laid over it, enlarged 8x (nearest) to 256 px,
        # above its colour scale; brought to the Generated image's 4x to compare
        heat = images[f"Heatmap: {concept}"]
        assert all(h.shape[1] == 256 and h.shape[0] > 256 for h in heat), [h.shape for h in heat]
        assert min(change(images["Generated"], [h[:256:2, ::2] for h in heat])) > MIN_CHANGE
        inspect = next(nid for nid, n in api.items() if n["_meta"]["title"] == f"Inspect Neuron: {concept}")
        assert len(entry["outputs"][inspect]["images"]) == batch_of(api)  # also shown on the node itself
    summaries = texts(api, entry)
    assert "'star'" in summaries["Summary: star"] and "'stripes'" in summaries["Summary: stripes"], summaries


def test_train_then_erase(server):
    from saemnesia_core import load_sae
    name = "train_then_erase_minicanvas"
    api, entry, images = run(server, name)
    check_pictures(images, batch_of(api), DEMO_PX)
    report = texts(api, entry)["Training report"]
    assert report.startswith("Saved "), report
    trained = load_sae(os.path.join(server.base, "models", "sae", "minicanvas_trained.safetensors"))
    assert set(trained.index.names()) == set(wf.OBJECTS.split(", ")) | set(wf.STYLES.split(", "))
    assert trained.index.supervised
    diffs = change(images["Before"], images["After (star erased)"])
    print(f"\n{name}: {report.splitlines()[-1]}; change per image {[round(d, 1) for d in diffs]}; "
          f"after {what_classifiers_see(images['After (star erased)'])}")
    assert min(diffs) > MIN_CHANGE, f"the trained SAE's erasure left pictures unchanged: {diffs}"


SD15_PX, SD15_STEPS = 64, 2  # shipped: 512 px, 25 steps (half an hour per picture on a busy CPU core)


def test_erase_concept_sd15_saeuron(server):
    """The shipped graph, unchanged but for size and steps, on the SD 1.5 checkpoint and SAE
    names it picks (random weights): both KSamplers run, Erase Concepts (ablate neuron:1234,
    a latent this SAE fires everywhere) changes every picture."""
    name = "erase_concept_sd15_saeuron"

    def small(api):
        for n in api.values():
            if n["class_type"] == "EmptyLatentImage":
                n["inputs"].update(width=SD15_PX, height=SD15_PX)
            elif n["class_type"] == "KSampler":
                n["inputs"]["steps"] = SD15_STEPS
    api, entry, images = run(server, name, override=small)
    assert set(images) == {"Save Image (before)", "Save Image (after)"}
    check_pictures(images, batch_of(api), SD15_PX)
    erase = next(n["inputs"] for n in api.values() if n["class_type"] == "SAEmnesiaEraseConcepts")
    assert (erase["concepts"], erase["mode"]) == ("neuron:1234", "ablate")  # what the shipped graph erases
    diffs = change(images["Save Image (before)"], images["Save Image (after)"])
    print(f"\n{name} ({SD15_PX} px, {SD15_STEPS} steps): change {diffs}")
    assert min(diffs) > MIN_CHANGE, diffs


def test_template_browser_lists_and_serves_the_workflows(server):
    """ComfyUI's template browser finds the pack's example_workflows/ folder and serves each file
    and its thumbnail, once (workflows/ holds only a pointer)."""
    from urllib.parse import quote
    from urllib.request import urlopen
    listed = server.get("/workflow_templates")
    assert sorted(listed["ComfyUI-SAEmnesia"]) == sorted(wf.TITLES.values())  # api/ twins are not templates
    for name in wf.NAMES:
        served = server.get(f"/api/workflow_templates/ComfyUI-SAEmnesia/{quote(wf.TITLES[name])}.json")
        assert served == wf.load(name)[0]
        with urlopen(f"{server.url}/api/workflow_templates/ComfyUI-SAEmnesia/{quote(wf.TITLES[name])}.jpg") as r:
            assert r.headers["Content-Type"] == "image/jpeg" and len(r.read()) > 5000
