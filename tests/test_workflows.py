"""The shipped workflows (example_workflows/*.json and their API twins in example_workflows/api/), checked
without ComfyUI: the files are what tools/workflows.py defines, each API twin is its UI graph
(same nodes, links and widget values), and the MiniCanvas ones use the demo model's settings.
tests/test_browser.py checks the same twins against the real frontend's conversion, and
tests/test_workflows_e2e.py runs them on a real server."""
import json
import os

import pytest

from tools import workflows as wf

CONTROL_MODES = {"fixed", "increment", "decrement", "randomize"}  # control_after_generate values
# widgets the frontend adds for display only; queued, but never read by the node
DISPLAY_ONLY = {"PreviewAny": {"preview"}}


def _projection(ui: dict) -> dict:
    """What a workflow says, without what the frontend adds when saving (ids, versions, renderer)."""
    nodes = [{k: n.get(k) for k in ("id", "type", "title", "pos", "size", "widgets_values", "mode")}
             | {"inputs": [(i["name"], i["link"]) for i in n["inputs"]],
                "outputs": [(o["name"], sorted(o.get("links") or [])) for o in n["outputs"]]}
             for n in ui["nodes"]]
    return {"nodes": nodes, "links": ui["links"], "ds": ui["extra"]["ds"],
            "groups": [(g["title"], g["bounding"]) for g in ui["groups"]]}


def test_every_shipped_file_has_a_definition_and_a_twin():
    top = {f[:-5] for f in os.listdir(wf.WORKFLOWS) if f.endswith(".json")}
    api = {f[:-5] for f in os.listdir(wf.API) if f.endswith(".json")}
    assert top == set(wf.TITLES.values()) and api == set(wf.NAMES) == set(wf.TITLES), \
        "regenerate with: .venv/bin/python -m tools.workflows"
    # the old folder keeps a pointer for whoever looks there, and no workflow (it would be listed twice)
    old = os.path.join(wf.REPO, "workflows")
    assert os.listdir(old) == ["README.md"]


def test_template_titles_are_ordered_and_say_what_they_need():
    """The template browser shows file names: start here first, the SD 1.5 one (downloads) last."""
    titles = [wf.TITLES[n] for n in wf.NAMES]
    assert sorted(titles) == titles and titles[0].startswith("1 Start here")
    assert "needs downloads" in titles[-1] and "SD 1.5" in titles[-1]
    assert all("(demo model" in t for t in titles[:-1])
    for t in titles:  # plain file names: nothing a URL or a shell would need quoted beyond spaces
        assert all(c.isalnum() or c in " -,.()" for c in t), t


@pytest.mark.parametrize("name", wf.NAMES)
def test_every_template_has_its_thumbnail(name):
    """A same-name .jpg next to each template: the template browser shows it on the card."""
    from PIL import Image
    with Image.open(wf.thumbnail_path(name)) as im:
        assert im.format == "JPEG" and im.width >= 256 and im.height >= 192, (im.format, im.size)
    assert os.path.getsize(wf.thumbnail_path(name)) < 150_000  # small: the browser loads all of them


@pytest.mark.parametrize("name", wf.NAMES)
def test_shipped_file_is_its_definition(name):
    """The files are generated (python -m tools.workflows); a hand edit or a stale file shows here."""
    ui, _ = wf.load(name)
    assert _projection(ui) == _projection(wf.BUILDERS[name]()), \
        f"{wf.ui_path(name)} differs from tools/workflows.py; regenerate with: .venv/bin/python -m tools.workflows {name}"


@pytest.mark.parametrize("name", wf.NAMES)
def test_api_twin_is_the_ui_graph(name):
    ui, api = wf.load(name)
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] != "Note"}  # notes are never queued
    assert set(api) == set(nodes)
    links = {lid: (src, slot) for lid, src, slot, _, _, _ in ui["links"]}
    for nid, node in nodes.items():
        queued = api[nid]
        assert queued["class_type"] == node["type"]
        assert queued["_meta"]["title"] == node.get("title", queued["_meta"]["title"])
        wired = {i["name"]: [str(links[i["link"]][0]), links[i["link"]][1]] for i in node["inputs"] if i["link"]}
        assert {k: v for k, v in queued["inputs"].items() if isinstance(v, list)} == wired, nid
        values = [v for k, v in queued["inputs"].items()
                  if not isinstance(v, list) and k not in DISPLAY_ONLY.get(node["type"], ())]
        widgets = node["widgets_values"]
        # a seed widget is followed by its control_after_generate value, which is not queued
        widgets = [v for i, v in enumerate(widgets)
                   if not (v in CONTROL_MODES and i and isinstance(widgets[i - 1], int))]
        assert values == widgets, f"{name} node {nid} ({node['type']})"


MINICANVAS = [n for n in wf.NAMES if "_minicanvas" in n]
# which bundled demo model each MiniCanvas workflow runs on: the UNet, or MiniCanvas-DiT for the _dit ones
DEMO_MODEL = {n: "dit" if n.endswith("_dit") else "unet" for n in MINICANVAS}


def test_both_demo_models_have_a_template():
    assert sorted(set(DEMO_MODEL.values())) == sorted(wf.DEMO_MODELS)
    assert wf.DEMO_MODELS["dit"]["file"] == "demo_dit.safetensors"


@pytest.mark.parametrize("name", MINICANVAS)
def test_minicanvas_workflows_run_unmodified_on_the_demo_model(name):
    """Bundled model, its 32x32 pixel-space latent, the settings it was evaluated with (DDIM for
    the UNet, euler / simple as Flux for the DiT), and only SAEs the pack ships (or trains in the
    same graph)."""
    ui, api = wf.load(name)
    model = wf.DEMO_MODELS[DEMO_MODEL[name]]
    by_type = {}
    for n in api.values():
        by_type.setdefault(n["class_type"], []).append(n["inputs"])
    assert [n["unet_name"] for n in by_type["SAEmnesiaLoadDemoModel"]] == [model["file"]]
    for lat in by_type["EmptyChromaRadianceLatentImage"]:
        assert (lat["width"], lat["height"]) == (32, 32)
    assert "EmptyLatentImage" not in by_type and "CheckpointLoaderSimple" not in by_type
    for k in by_type["KSampler"]:
        assert (k["sampler_name"], k["scheduler"], k["steps"], k["cfg"], k["denoise"]) == \
               (model["sampler"], model["scheduler"], model["steps"], wf.CFG, 1)
        assert k["seed"] == wf.SEED
    shipped = {wf.OBJECTS_SAE, wf.STYLES_SAE, wf.OBJECTS_SAE_SAEURON, wf.STYLES_SAE_SAEURON, wf.CONTEXT_SAE}
    assert {s["sae_name"] for s in by_type.get("SAEmnesiaLoadSAE", [])} <= shipped
    assert "SAEmnesiaLoadSAE" in by_type or "SAEmnesiaTrainSAEFromPrompts" in by_type
    notes = [n for n in ui["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1 and len(notes[0]["widgets_values"][0]) > 300  # each one explains itself
    for prefix in (s["filename_prefix"] for s in by_type["SaveImage"]):
        assert prefix.startswith("SAEmnesia/"), prefix


def test_erase_workflows_title_their_before_and_after_images():
    for name in ("erase_one_concept_minicanvas", "train_then_erase_minicanvas", "erase_one_concept_minicanvas_dit"):
        _, api = wf.load(name)
        titles = sorted(n["_meta"]["title"] for n in api.values() if n["class_type"] == "SaveImage")
        assert titles == ["After (star erased)", "Before"], name
    _, api = wf.load("erase_several_concepts_minicanvas")
    titles = [n["_meta"]["title"] for n in api.values() if n["class_type"] == "SaveImage"]
    assert sorted(t.split(":")[0] for t in titles) == ["After A"] * 2 + ["After B"] * 2 + ["Before"] * 2
    erase = {n["_meta"]["title"]: n["inputs"] for n in api.values() if n["class_type"] == "SAEmnesiaEraseConcepts"}
    assert sorted(e["concepts"] for e in erase.values()) == ["star", "star, heart", "stripes"]
    chained = next(e for e in erase.values() if e["concepts"] == "stripes")
    assert api[chained["model"][0]]["class_type"] == "SAEmnesiaEraseConcepts"  # B2 takes B1's MODEL


def test_dit_template_mirrors_the_first_one_on_the_dit():
    """Template 5 is template 1 (same graph, prompt, SAE and concept) on MiniCanvas-DiT, and its
    note says what kind of model that is, which SAE it uses and what to look at."""
    _, api1 = wf.load("erase_one_concept_minicanvas")
    ui5, api5 = wf.load("erase_one_concept_minicanvas_dit")
    sampling = {"unet_name", "sampler_name", "scheduler", "steps", "filename_prefix"}

    def graph(api):
        return {nid: (n["class_type"], {k: v for k, v in n["inputs"].items() if k not in sampling})
                for nid, n in api.items()}
    assert graph(api5) == graph(api1)
    assert {n["inputs"]["filename_prefix"] for n in api5.values() if n["class_type"] == "SaveImage"} == \
           {"SAEmnesia/erase_one_dit_before", "SAEmnesia/erase_one_dit_after"}  # not mixed with template 1's
    (note,) = [n["widgets_values"][0] for n in ui5["nodes"] if n["type"] == "Note"]
    for words in ("joint", "Flux's layout", wf.CONTEXT_SAE.removesuffix(".safetensors"), "euler", "Look at"):
        assert words in note, words


def test_template_browser_serves_the_folder():
    """ComfyUI 0.3.75 serves a pack's templates from one of these folder names (app/custom_node_manager.py)."""
    assert os.path.basename(wf.WORKFLOWS) == "example_workflows"  # the name it recommends
    with open(wf.ui_path(wf.NAMES[0]), encoding="utf-8") as f:
        assert json.load(f)["nodes"]  # UI format, the one the template browser opens


def test_sd15_template_links_the_checkpoint_it_needs():
    """The `models` node property (as in ComfyUI's own templates): the frontend offers the download."""
    ui, _ = wf.load("erase_concept_sd15_saeuron")
    ckpt = next(n for n in ui["nodes"] if n["type"] == "CheckpointLoaderSimple")
    [model] = ckpt["properties"]["models"]
    assert model["name"] == ckpt["widgets_values"][0] and model["directory"] == "checkpoints"
    assert model["url"].startswith("https://huggingface.co/") and model["url"].endswith("/" + model["name"])
    note = next(n for n in ui["nodes"] if n["type"] == "Note")["widgets_values"][0]
    assert model["name"] in note and "models/checkpoints" in note
