"""In the browser: the real ComfyUI frontend, with the pack's extension, in headless Chromium.

Every test runs against two frontends served by the pinned ComfyUI 0.3.75 backend: the one its
requirements pin (1.32.9, in the venv) and the newer one tools/browser/newer-frontend.txt pins
(1.58.1, what users of a current ComfyUI run), installed beside it by scripts/browser_deps.sh.

Needs Debian's chromium (/usr/bin/chromium) and `npm ci --prefix tools/browser`
(playwright-core only; it never downloads a browser): `make browser-deps` installs all three.
Skips with a message when one is missing. Screenshots go to test-artifacts/browser/ (the newer
frontend's to test-artifacts/browser/frontend-<version>/).
"""
import dataclasses
import importlib.metadata
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

def _newer_frontend() -> tuple[str, str]:
    """(version, static folder) of the newer frontend tools/browser/newer-frontend.txt pins,
    where scripts/browser_deps.sh installs it."""
    with open(os.path.join(BROWSER_TOOLS, "newer-frontend.txt"), encoding="utf-8") as f:
        (pin,) = [line.strip() for line in f if line.startswith("comfyui-frontend-package==")]
    version = pin.split("==")[1]
    return version, os.path.join(REPO, ".cache", "frontends", version, "comfyui_frontend_package", "static")


PINNED_VERSION = importlib.metadata.version("comfyui-frontend-package")  # what ComfyUI's requirements pin
NEWER_VERSION, NEWER_STATIC = _newer_frontend()
# The newer one first: its server (and the SD1.5-shaped checkpoint it loads, 5-8 GB) is gone before
# the session server loads that checkpoint for the pinned one and keeps it for the e2e tests.
FRONTENDS = [NEWER_VERSION, PINNED_VERSION]
# Where the two frontends differ in what the tests expect (not in what the pack must do):
# - saved_view: 1.32 opens a template from the browser at the view it was saved with; 1.58 frames
#   the whole graph instead (75% of the screen), whatever the view saved;
# - every_image: a Nodes 2.0 Save Image node shows all of a batch (1.58) or one at a time (1.32).
FRONTEND_WAYS = {PINNED_VERSION: {"saved_view": True, "every_image": False},
                 NEWER_VERSION: {"saved_view": False, "every_image": True}}


@dataclasses.dataclass
class Served:
    """A running ComfyUI server and the frontend version it must serve (the driver reports the one it met)."""
    server: object
    frontend: str

    @property
    def url(self) -> str:
        return self.server.url

    def read_log(self) -> str:
        return self.server.read_log()

    def artifacts(self, *parts: str) -> str:
        """Where its screenshots go: test-artifacts/browser/ for the pinned frontend (tools/gallery.py
        copies from there), test-artifacts/browser/frontend-<version>/ for the newer one."""
        root = ARTIFACTS if self.frontend == PINNED_VERSION else os.path.join(ARTIFACTS, f"frontend-{self.frontend}")
        path = os.path.join(root, *parts)
        os.makedirs(path, exist_ok=True)
        return path


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, comfy_server, tmp_path_factory):
    """The session's server (tests/conftest.py: thing.safetensors, hostile.safetensors) with the
    frontend ComfyUI pins, or a second server on the same models and settings serving the newer
    frontend (module scope: pytest runs every test of one frontend before starting the other).
    The backend is ComfyUI 0.3.75 for both: the newer frontend's requests to the jobs API it
    lacks answer 404, which the frontend survives."""
    if request.param == PINNED_VERSION:
        yield Served(comfy_server, PINNED_VERSION)
        return
    if not os.path.isfile(os.path.join(NEWER_STATIC, "index.html")):
        pytest.skip(f"frontend {NEWER_VERSION} not installed at {NEWER_STATIC}: make browser-deps")
    from tools import workflows as wf
    from tools.comfy_server import ComfyServer
    base = tmp_path_factory.mktemp(f"comfy-server-{NEWER_VERSION}")
    wf.write_returning_user_settings(str(base))
    models_dir = os.path.join(comfy_server.base, "models")
    models = {folder: {name: os.path.join(models_dir, folder, name) for name in os.listdir(os.path.join(models_dir, folder))}
              for folder in os.listdir(models_dir) if os.path.isdir(os.path.join(models_dir, folder))}
    srv = ComfyServer(str(base), models, threads=1, front_end_root=NEWER_STATIC)
    srv.start()
    yield Served(srv, NEWER_VERSION)
    srv.stop()


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
        pytest.fail(f"browser driver failed (frontend {result.get('frontend')}): {result.get('error')}\n"
                    f"browser log: {result.get('log')}\nserver log:\n{server.read_log()[-3000:]}")
    assert result["frontend"] == server.frontend, "the server did not serve the frontend under test"
    return result


def train_node(workflow: dict) -> dict:
    (train,) = [n for n in workflow["nodes"] if n["type"] == "SAEmnesiaTrainSAEFromPrompts"]
    return train


def test_erase_workflow_in_the_browser(server, tmp_path):
    wf = erase_workflow(SD15_CHECKPOINT, "thing.safetensors", "", 64, 2, inspect=True, train=True,
                        inspect_concept="thing")
    wf["extra"]["ds"] = {"scale": 0.62, "offset": [40, 160]}  # zoomed out: the screenshot shows the curve on Train SAE too
    # a file of its own per frontend: the newer frontend's server sees the session server's SAE
    # files, and an SAE the first run trained would make the picker read it, not the planned names
    train_node(wf)["widgets_values"][0] = f"browser_trained_{server.frontend.replace('.', '_')}"
    t0 = time.time()
    r = drive(server, "run", wf, tmp_path, out=server.artifacts(), concept="thing", timeout=600)

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
# Inputs a frontend queues for its own display widgets, which the node does not declare and the
# server ignores: frontend 1.32 queues PreviewAny's text box as "preview", 1.58 does not.
DISPLAY_ONLY = {"PreviewAny": {"preview"}}


def comparable(graph: dict) -> dict:
    """An API-format graph less its _meta and its display-only inputs."""
    out = {}
    for nid, node in graph.items():
        shown = DISPLAY_ONLY.get(node.get("class_type"), set())
        node = {k: v for k, v in node.items() if k != "_meta"}
        out[nid] = {**node, "inputs": {k: v for k, v in node.get("inputs", {}).items() if k not in shown}}
    return out


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
    out = server.artifacts("erase_one_concept_minicanvas")
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
    queued, api = comparable(r["api_prompt"]), comparable(api)
    erase = [nid for nid, n in api.items() if n["class_type"] == "SAEmnesiaEraseConcepts"]
    for nid in erase:
        api[nid]["inputs"]["concepts"] = "star, heart"
    # what the user queues is the twin the e2e test runs, with the picked concept
    assert as_queued_for(api, queued) == api
    shown = {n["id"]: n["images"] for n in r["nodes_with_images"]}
    saves = [str(n["id"]) for n in ui["nodes"] if n["type"] == "SaveImage"]
    assert set(shown) == set(saves)
    every_image = renderer == "classic" or FRONTEND_WAYS[server.frontend]["every_image"]
    for nid in saves:
        # 32 px x 4; the canvas holds all 4 seeds, a Nodes 2.0 node all 4 or one at a time
        assert len(shown[nid]) == (4 if every_image else 1), shown[nid]
        assert all(im["width"] == 128 for im in shown[nid]), shown[nid]
    for shot in r["screenshots"]:
        assert os.path.getsize(shot) > 10_000


@pytest.mark.parametrize("renderer", ["classic", "vue"])
def test_a_hostile_concept_name_is_shown_as_text_and_runs_no_script(server, tmp_path, renderer):
    """Issue 13 (stored XSS): frontend 1.32's classic menu puts labels into innerHTML, 1.58's into
    textContent. A concept named <img src=x onerror=...>, in an SAE file or in a shared workflow's
    Train node text, must show as text, once escaped (issue 27: 1.58 showed "&lt;img"), and run
    nothing, in the classic menu and in the Nodes 2.0 Select. The server refuses the file."""
    wf = erase_workflow(SD15_CHECKPOINT, "hostile.safetensors", "", 64, 1, train=True)
    train = train_node(wf)
    train["widgets_values"][0] = "hostile_never_trained"  # no file of that name: the picker shows the planned names
    train["widgets_values"][1] = f"cat, {HOSTILE_CONCEPT}"  # objects, as a shared workflow could carry it
    out = server.artifacts("hostile")
    r = drive(server, "hostile", wf, tmp_path, out=out, concept=HOSTILE_CONCEPT, renderer=renderer, timeout=300)
    # fed by the SAE file with that name: refused by the server, and the picker says why
    assert r["refused"]["values"] == [] and "may not contain" in r["refused"]["error"], r["refused"]
    assert r["refused"]["status_text"] == "⚠ cannot read this SAE" and r["refused"]["status_visible"], r["refused"]
    # fed by the Train node: the name is offered, and its menu entry is that text, not an element
    assert HOSTILE_CONCEPT in r["planned"]["values"]
    entry = [m for m in r["menu"] if "onerror" in m["text"]]
    assert len(entry) == 1 and entry[0]["text"] == f"+ {HOSTILE_CONCEPT} · object", r["menu"]
    assert all(m["one_text_node"] for m in r["menu"]) and r["injected"] == 0, r["menu"]
    assert "&lt;img" in entry[0]["html"] and "&amp;lt;" not in entry[0]["html"]  # escaped once, by the frontend or by us
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
    shots = server.artifacts("templates")
    r = drive(server, "convert", ui, tmp_path, api_out=out, renderer=renderer, out=shots, name=name, timeout=300)
    queued, api = comparable(json.loads(out.read_text())), comparable(api)
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
    """The template browser (Comfy.BrowseTemplates) shows the pack's six templates with their
    own .jpg thumbnails; A → Z puts them in their numbered order (its default, "Newest" in 1.32 and
    "Default" in 1.58, keeps the server's file order); the first one opens onto the canvas at 100%
    (1.32), or (1.58, which frames a template whole) with every node on screen, drawn with its text."""
    out = server.artifacts("templates")
    r = drive(server, "templates", {}, tmp_path, pack="ComfyUI-SAEmnesia", out=out, timeout=300)
    assert sorted(c["title"] for c in r["cards"]) == sorted(TITLES.values())
    assert all(c["loaded"] for c in r["cards"]), r["cards"]  # no card fell back to the default picture
    assert [c["title"] for c in r["sorted"]] == [TITLES[n] for n in NAMES]
    opened = r["opened"]
    assert opened["nodes"] == len(load(NAMES[0])[0]["nodes"]) and opened["low_quality"] is False, opened
    if FRONTEND_WAYS[server.frontend]["saved_view"]:
        assert opened["scale"] == 1, opened
    else:
        assert opened["all_visible"] and opened["scale"] <= 1, opened
