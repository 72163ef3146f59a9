"""In the browser: the real ComfyUI frontend, with the pack's extension, in headless Chromium.

Needs Debian's chromium (/usr/bin/chromium) and `npm ci --prefix tools/browser`
(playwright-core only; it never downloads a browser). Skips with a message when either is
missing. Screenshots go to test-artifacts/browser/.
"""
import json
import os
import shutil
import subprocess
import time

import pytest

# also e2e: it starts the real server, so `make test-fast` (-m "not comfy and not e2e") leaves it out
pytestmark = [pytest.mark.browser, pytest.mark.e2e]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROWSER_TOOLS = os.path.join(REPO, "tools", "browser")
DRIVER = os.path.join(BROWSER_TOOLS, "drive.js")
CHROMIUM = os.environ.get("SAEMNESIA_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = os.path.join(REPO, "test-artifacts", "browser")


def _missing() -> str | None:
    if not os.path.isfile(CHROMIUM):
        return f"{CHROMIUM} not found: apt-get install -y chromium"
    if not os.path.isdir(os.path.join(BROWSER_TOOLS, "node_modules", "playwright-core")):
        return "playwright-core not installed: npm ci --prefix tools/browser"
    if not shutil.which("node"):
        return "node not found on PATH"
    return None


if _missing():
    pytest.skip(f"browser test skipped: {_missing()}", allow_module_level=True)


# UI-format graphs: built by tools/workflows.py, which also defines the shipped workflows
from conftest import HOSTILE_CONCEPT  # noqa: E402 - after the skip: only when the browser is there

from tools.workflows import NAMES, SD15_CHECKPOINT, TITLES, erase_workflow, load, missing_saes  # noqa: E402

# ------------------------------------------------------------------ server and driver

@pytest.fixture()
def server(comfy_server):
    return comfy_server  # one server for the session (tests/conftest.py): thing.safetensors, hostile.safetensors


def drive(server, command: str, workflow: dict, tmp_path, timeout: float = 900, **args) -> dict:
    wf_path = tmp_path / f"{command}-workflow.json"
    wf_path.write_text(json.dumps(workflow))
    cmd = ["node", DRIVER, command, "--url", server.url, "--workflow", str(wf_path)]
    for k, v in args.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=BROWSER_TOOLS)
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"driver printed no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    if proc.returncode != 0 or "error" in result:
        pytest.fail(f"browser driver failed: {result.get('error')}\nbrowser log: {result.get('log')}\n"
                    f"server log:\n{server.read_log()[-3000:]}")
    return result


def test_erase_workflow_in_the_browser(server, tmp_path):
    os.makedirs(ARTIFACTS, exist_ok=True)
    wf = erase_workflow(SD15_CHECKPOINT, "thing.safetensors", "", 64, 2, inspect=True, train=True,
                        inspect_concept="thing")
    wf["extra"]["ds"] = {"scale": 0.62, "offset": [40, 160]}  # zoomed out: the screenshot shows the curve on Train SAE too
    t0 = time.time()
    r = drive(server, "run", wf, tmp_path, out=ARTIFACTS, concept="thing", timeout=600)

    # each node's help page is where the frontend's node library looks for it
    assert set(r["docs"]) == {"SAEmnesiaLoadSAE", "SAEmnesiaEraseConcepts", "SAEmnesiaInspectNeuron",
                              "SAEmnesiaTrainSAEFromPrompts", "SAEmnesiaLoadDemoModel"}
    assert all(d["status"] == 200 and d["chars"] > 500 for d in r["docs"].values()), r["docs"]
    # the picker lists the SAE's concepts, with their kinds
    (before,) = r["picker_before"]
    assert before["values"] == ["thing", "ink"], before
    assert "object" in before["status"] and "style" in before["status"], before["status"]
    assert before["status_visible"] and before["status_text"].startswith(before["status"]), before
    assert any("thing" in label and "object" in label for label in r["menu_labels"]), r["menu_labels"]
    # choosing it in the real menu writes it into the concepts text, the only thing queued
    (after,) = r["picker_after"]
    assert after["text"] == "thing"
    # it follows the wiring: nothing connected, a Train node (its planned concepts), Load SAE again
    assert r["rewire"]["unplug"]["values"] == [] and "connect" in r["rewire"]["unplug"]["status"]
    assert r["rewire"]["train"]["values"] == ["cat", "dog", "ink"], r["rewire"]["train"]
    assert r["rewire"]["load"]["values"] == ["thing", "ink"]
    erase = [n for n in r["api_prompt"].values() if n["class_type"] == "SAEmnesiaEraseConcepts"]
    assert erase[0]["inputs"]["concepts"] == "thing"
    assert "add concept" not in erase[0]["inputs"]

    # every image node shows its picture: before, after, and the Inspect Neuron heatmap
    shown = {n["type"]: n for n in r["nodes_with_images"]}
    assert {"SaveImage", "SAEmnesiaInspectNeuron"} <= set(shown)
    # pictures at their 64 px; the heatmap enlarged to 256 px with its colour scale below
    for n in r["nodes_with_images"]:
        assert n["images"] and n["images"][0]["width"] == (64 if n["type"] == "SaveImage" else 256), n
    # the training curve got its points from the saemnesia.train events
    (curve,) = r["curves"]
    assert curve["points"] >= 2 and curve["total"] == 40, curve
    for shot in r["screenshots"]:
        assert os.path.getsize(shot) > 10_000
    print(f"browser run: {time.time() - t0:.0f}s, images after {r['seconds_to_images']:.0f}s; {r['screenshots']}")


# Optional inputs newer than the shipped graphs, at the default the frontend gives a graph saved
# before they existed. The twin runs without them, which means the same (zero_uses_sae_value:
# a twin's multiplier 0 stands for the SAE's calibrated multiplier, as the switch's default does).
NEWER_DEFAULTS = {"SAEmnesiaEraseConcepts": {"zero_uses_sae_value": True}}


def as_queued_for(api: dict, queued: dict) -> dict:
    """`queued` less the newer optional inputs its twin `api` predates, where they hold their default."""
    out = {}
    for nid, node in queued.items():
        newer = NEWER_DEFAULTS.get(node.get("class_type"), {})
        twin = api.get(nid, {}).get("inputs", {})
        inputs = {k: v for k, v in node.get("inputs", {}).items()
                  if not (k in newer and k not in twin and v == newer[k])}
        out[nid] = {**node, "inputs": inputs}
    return out


@pytest.mark.parametrize("renderer", ["classic", "vue"])
def test_demo_erase_workflow_runs_in_the_browser(server, tmp_path, renderer):
    """The shipped erase-one workflow, loaded and queued in the real frontend as a user would, in
    both node renderers (the classic canvas and "Nodes 2.0", Comfy.VueNodes.Enabled): the picker
    lists the SAE's 12 concepts, says so in a line of text on the node, adds 'heart' to the
    concepts when the user picks it from its menu, and Before and After show their pictures."""
    ui, api = load("erase_one_concept_minicanvas")
    missing = missing_saes(api)
    if missing:
        pytest.skip(f"shipped SAE missing from models/sae/: {', '.join(missing)}")
    out = os.path.join(ARTIFACTS, "erase_one_concept_minicanvas")
    os.makedirs(out, exist_ok=True)
    r = drive(server, "run", ui, tmp_path, out=out, concept="heart", renderer=renderer, timeout=600)
    assert r["renderer"] == renderer
    objects = {"circle", "square", "triangle", "cross", "star", "heart"}
    (picker,) = r["picker_before"]
    assert objects <= set(picker["values"]) and len(picker["values"]) == 12 and picker["text"] == "star", picker
    assert picker["status_visible"] and picker["status_text"] == "6 objects, 6 styles · 1 chosen", picker
    # the menu the user opened lists every concept with its kind (Nodes 2.0 once said "No available options")
    assert len(r["menu_labels"]) == 12 and "+ heart · object" in " ".join(r["menu_labels"]), r["menu_labels"]
    assert any(label.startswith("✓ star") for label in r["menu_labels"]), r["menu_labels"]
    (after,) = r["picker_after"]
    assert after["text"] == "star, heart" and after["status_text"].endswith("2 chosen"), after
    if renderer == "vue":  # what the node's own text box shows, not only the graph behind it
        assert "star" in r["vue_inputs_before"] and "star, heart" in r["vue_inputs_after"], r
    assert set(r["rewire"]["load"]["values"]) == set(picker["values"])  # unplugged and plugged back in
    queued = r["api_prompt"]
    for node in list(queued.values()) + list(api.values()):
        node.pop("_meta", None)
    erase = [nid for nid, n in api.items() if n["class_type"] == "SAEmnesiaEraseConcepts"]
    for nid in erase:
        api[nid]["inputs"]["concepts"] = "star, heart"
    # what the user queues is the twin the e2e test runs, with the picked concept
    assert as_queued_for(api, queued) == api
    shown = {n["id"]: n["images"] for n in r["nodes_with_images"]}
    saves = [n["id"] for n in ui["nodes"] if n["type"] == "SaveImage"]
    assert set(shown) == set(saves)
    for nid in saves:
        # 32 px x 4; the canvas holds all 4 seeds, a Nodes 2.0 node shows one at a time
        assert len(shown[nid]) == (4 if renderer == "classic" else 1), shown[nid]
        assert all(im["width"] == 128 for im in shown[nid]), shown[nid]
    for shot in r["screenshots"]:
        assert os.path.getsize(shot) > 10_000


@pytest.mark.parametrize("renderer", ["classic", "vue"])
def test_a_hostile_concept_name_is_shown_as_text_and_runs_no_script(server, tmp_path, renderer):
    """Issue 13 (stored XSS): the picker's menu puts labels into innerHTML. A concept named
    <img src=x onerror=...>, in an SAE file or in a shared workflow's Train node text, must show
    as text and run nothing, in the classic menu and in the Nodes 2.0 Select. The server refuses
    the file; the Train node's planned name is escaped."""
    wf = erase_workflow(SD15_CHECKPOINT, "hostile.safetensors", "", 64, 1, train=True)
    (train,) = [n for n in wf["nodes"] if n["type"] == "SAEmnesiaTrainSAEFromPrompts"]
    train["widgets_values"][0] = "hostile_never_trained"  # no file of that name: the picker shows the planned names
    train["widgets_values"][1] = f"cat, {HOSTILE_CONCEPT}"  # objects, as a shared workflow could carry it
    out = os.path.join(ARTIFACTS, "hostile")
    r = drive(server, "hostile", wf, tmp_path, out=out, concept=HOSTILE_CONCEPT, renderer=renderer, timeout=300)
    # fed by the SAE file with that name: refused by the server, and the picker says why
    assert r["refused"]["values"] == [] and "may not contain" in r["refused"]["error"], r["refused"]
    assert r["refused"]["status_text"] == "⚠ cannot read this SAE" and r["refused"]["status_visible"], r["refused"]
    # fed by the Train node: the name is offered, and its menu entry is that text, not an element
    assert HOSTILE_CONCEPT in r["planned"]["values"]
    entry = [m for m in r["menu"] if "onerror" in m["text"]]
    assert len(entry) == 1 and entry[0]["text"] == f"+ {HOSTILE_CONCEPT} · object", r["menu"]
    assert all(m["elements"] == 0 for m in r["menu"]) and r["injected"] == 0, r["menu"]
    assert "&lt;img" in entry[0]["html"]
    assert r["script_ran"] == 0
    assert r["status_text"] == "after training: 2 objects, 1 style · 0 chosen"  # the status line, as text


@pytest.mark.parametrize("renderer", ["classic", "vue"])
@pytest.mark.parametrize("name", NAMES)
def test_shipped_workflow_loads_and_matches_its_api_twin(server, tmp_path, name, renderer):
    """Each shipped workflow loads in the real frontend, in both node renderers, and what the
    frontend would queue for it is exactly its API-format twin in example_workflows/api/ (the
    graph the e2e tests run). It opens at 100% with no node over another or over a group's title
    (as each renderer draws them), and a screenshot of it goes to test-artifacts/browser/templates/."""
    ui, api = load(name)
    out = tmp_path / "api.json"
    shots = os.path.join(ARTIFACTS, "templates")
    r = drive(server, "convert", ui, tmp_path, api_out=out, renderer=renderer, out=shots, name=name, timeout=300)
    queued = json.loads(out.read_text())
    for node in list(queued.values()) + list(api.values()):
        node.pop("_meta", None)
    assert as_queued_for(api, queued) == api
    types = {n["type"] for n in ui["nodes"]}
    assert "Note" in types and "SaveImage" in types, f"{name}: every example explains itself and saves its images"
    layout = r["layout"]
    assert layout["scale"] == 1, layout["scale"]
    assert len(layout["boxes"]) == len(ui["nodes"]), "every node drawn"
    assert layout["overlaps"] == [], f"{name} ({renderer}): nodes overlap: {layout['overlaps']}"
    for g in layout["groups"]:
        assert g["covered_by"] == [] and g["font_size"] >= 20, f"{name} ({renderer}): group title hidden: {g}"


def test_template_browser_lists_the_templates_in_order_with_thumbnails(server, tmp_path):
    """The template browser (Comfy.BrowseTemplates) shows the pack's five templates with their
    own .jpg thumbnails; A → Z puts them in their numbered order (its default, "Newest", keeps
    the server's file order); the first one opens onto the canvas at 100%."""
    out = os.path.join(ARTIFACTS, "templates")
    r = drive(server, "templates", {}, tmp_path, pack="ComfyUI-SAEmnesia", out=out, timeout=300)
    assert sorted(c["title"] for c in r["cards"]) == sorted(TITLES.values())
    assert all(c["loaded"] for c in r["cards"]), r["cards"]  # no card fell back to the default picture
    assert [c["title"] for c in r["sorted"]] == [TITLES[n] for n in NAMES]
    assert r["opened"]["scale"] == 1 and r["opened"]["nodes"] == len(load(NAMES[0])[0]["nodes"]), r["opened"]
