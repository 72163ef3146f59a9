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
SHIPPED = os.path.join(REPO, "workflows", "erase_concept_sd15_saeuron.json")
SHIPPED_API = os.path.join(REPO, "workflows", "api", "erase_concept_sd15_saeuron.json")


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


# ------------------------------------------------------------------ UI-format workflows

class UIGraph:
    """Builds a workflow in the format the frontend saves: nodes with positional
    widgets_values (seeds followed by their control_after_generate value) and a links table."""

    def __init__(self):
        self.nodes, self.links = [], []

    def node(self, type_, pos, size, widgets=(), inputs=(), outputs=(), title=None, **extra):
        nid = len(self.nodes) + 1
        node = {"id": nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {}, "order": nid - 1,
                "mode": 0, "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                "outputs": [{"name": n, "type": t, "links": []} for n, t in outputs],
                "properties": {"Node name for S&R": type_}, "widgets_values": list(widgets), **extra}
        if title:
            node["title"] = title
        self.nodes.append(node)
        return nid

    def link(self, src, src_slot, dst, dst_input):
        lid = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        slot = next(i for i, x in enumerate(d["inputs"]) if x["name"] == dst_input)
        typ = s["outputs"][src_slot]["type"]
        s["outputs"][src_slot]["links"].append(lid)
        d["inputs"][slot]["link"] = lid
        self.links.append([lid, src, src_slot, dst, slot, typ])

    def workflow(self) -> dict:
        for n in self.nodes:
            for o in n["outputs"]:
                o["slot_index"] = n["outputs"].index(o)
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.68, "offset": [70, 150]}}, "version": 0.4}


def erase_workflow(ckpt: str, sae: str, concepts: str, size: int, steps: int, note: str | None = None,
                   inspect: bool = False, train: bool = False, mode: str = "auto",
                   inspect_concept: str = "") -> dict:
    """Checkpoint -> prompts -> KSampler before and after Erase Concepts -> Save Image both
    (plus, optionally, Inspect Neuron on the erased latent and a tiny Train SAE run)."""
    g = UIGraph()
    ckpt_n = g.node("CheckpointLoaderSimple", (20, 60), (315, 100), [ckpt],
                    outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])
    pos_n = g.node("CLIPTextEncode", (360, 20), (400, 140), ["a photo of a cat sitting on a sofa, van gogh style"],
                   inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")], title="positive")
    neg_n = g.node("CLIPTextEncode", (360, 190), (400, 100), ["blurry, low quality"],
                   inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")], title="negative")
    lat_n = g.node("EmptyLatentImage", (20, 220), (315, 110), [size, size, 1], outputs=[("LATENT", "LATENT")])
    sae_n = g.node("SAEmnesiaLoadSAE", (20, 380), (315, 80), [sae], outputs=[("SAE", "SAE"), ("info", "STRING")])
    erase_n = g.node("SAEmnesiaEraseConcepts", (360, 330), (400, 250),
                     [concepts, mode, 1.0, 0.0, "both", 0.0, 1.0],
                     inputs=[("model", "MODEL"), ("sae", "SAE")], outputs=[("MODEL", "MODEL")])
    ks = {}
    samplers = (("before", 790, ckpt_n, "KSampler (before)"), ("after", 1110, erase_n, "KSampler (after)"))
    for key, x, model_src, title in samplers:
        k = g.node("KSampler", (x, 20), (300, 262), [42, "fixed", steps, 7.0, "euler", "normal", 1.0],
                   inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                           ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")], title=title)
        g.link(model_src, 0, k, "model")
        g.link(pos_n, 0, k, "positive")
        g.link(neg_n, 0, k, "negative")
        g.link(lat_n, 0, k, "latent_image")
        dec = g.node("VAEDecode", (x, 310), (210, 46), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                     outputs=[("IMAGE", "IMAGE")])
        g.link(k, 0, dec, "samples")
        g.link(ckpt_n, 2, dec, "vae")
        save = g.node("SaveImage", (x, 390), (300, 300), [f"saemnesia_{key}"], inputs=[("images", "IMAGE")],
                      title=f"Save Image ({key})")
        g.link(dec, 0, save, "images")
        ks[key] = k
    for src, slot, dst, name in ((ckpt_n, 1, pos_n, "clip"), (ckpt_n, 1, neg_n, "clip"), (ckpt_n, 0, erase_n, "model"),
                                 (sae_n, 0, erase_n, "sae")):
        g.link(src, slot, dst, name)
    if note:
        g.node("Note", (20, 620), (740, 200), [note], color="#432", bgcolor="#653")
    if inspect:
        ins = g.node("SAEmnesiaInspectNeuron", (1430, 20), (320, 560),
                     [-1, inspect_concept, max(0, steps - 1), steps, "normal", 0, "fixed"],
                     inputs=[("model", "MODEL"), ("sae", "SAE"), ("vae", "VAE"), ("positive", "CONDITIONING"),
                             ("latent", "LATENT"), ("image", "IMAGE")],
                     outputs=[("heatmap", "IMAGE"), ("summary", "STRING")])
        for src, slot, name in ((ckpt_n, 0, "model"), (sae_n, 0, "sae"), (ckpt_n, 2, "vae"), (pos_n, 0, "positive"),
                                (ks["after"], 0, "latent")):
            g.link(src, slot, ins, name)
        # Inspect Neuron is not an output node: ComfyUI runs it only when something uses its output
        prev = g.node("PreviewImage", (1430, 610), (320, 260), inputs=[("images", "IMAGE")])
        g.link(ins, 0, prev, "images")
    if train:
        tr = g.node("SAEmnesiaTrainSAEFromPrompts", (1790, 20), (360, 760),
                    ["browser_trained", "cat, dog", "ink", "a {object} in {style} style", "", "auto", 2, 5.0, "euler",
                     "normal", 1, 0, "fixed", 1, 8, 40, 16, 0.001, True, True],
                    inputs=[("model", "MODEL"), ("clip", "CLIP"), ("latent", "LATENT")],
                    outputs=[("SAE", "SAE"), ("report", "STRING")])
        for src, slot, name in ((ckpt_n, 0, "model"), (ckpt_n, 1, "clip"), (lat_n, 0, "latent")):
            g.link(src, slot, tr, name)
    return g.workflow()


SHIPPED_NOTE = (
    "SAEmnesia: erase a concept with a published SAeUron SAE (SD 1.5)\n\n"
    "1. Put an SD 1.5 checkpoint in models/checkpoints and pick it in Load Checkpoint.\n"
    "2. Download a SAeUron SAE folder (e.g. unet.up_blocks.1.attentions.2, the style block) with its cfg.json "
    "and sae.safetensors into models/sae/, then pick '.../sae.safetensors' in Load SAE.\n"
    "3. Published SAeUron SAEs carry no concept index, so 'concepts' names raw latents: replace the placeholder "
    "neuron:1234 with the latent you want to switch off (find one with Inspect Neuron). With an SAE trained by "
    "'Train SAE from Prompts', use the 'add concept' picker on Erase Concepts instead.\n"
    "4. Queue: the left image is the model as it is, the right one with the concept erased (same seed)."
)


def shipped_workflow() -> dict:
    return erase_workflow("v1-5-pruned-emaonly.safetensors", "unet.up_blocks.1.attentions.2/sae.safetensors",
                          "neuron:1234", 512, 25, note=SHIPPED_NOTE, mode="ablate")


# ------------------------------------------------------------------ server and driver

@pytest.fixture(scope="module")
def server(tmp_path_factory, comfy, pack):
    from tools import comfy_env
    from tools.comfy_server import ComfyServer
    from saemnesia_core import SAEInfo, TopKSAE, save_sae
    from saemnesia_core.concepts import Concept, ConceptIndex, Selection
    base = tmp_path_factory.mktemp("comfy-browser")
    sae = TopKSAE(1280, 2560, 16)
    sae.requires_grad_(False)
    sel = [Selection([1, 2], [1, 1], [1, 1], [0, 0])] * 2
    index = ConceptIndex(timesteps=[999.0, 0.0], default_mode="ablate", default_multiplier=-3.0,
                         concepts={"thing": Concept("thing", "object", None, sel),
                                   "ink": Concept("ink", "style", None, sel)})
    # written into models/sae itself: the sae folder refuses symlinks that resolve outside it
    os.makedirs(base / "models" / "sae", exist_ok=True)
    save_sae(str(base / "models" / "sae" / "thing.safetensors"), sae, SAEInfo("output_blocks.5.1", "sd1", index, {}))
    # a returning user: no first-run template browser over the canvas
    os.makedirs(base / "user" / "default", exist_ok=True)
    settings = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(settings))
    srv = ComfyServer(str(base), {"checkpoints": {"sd15-random.safetensors": comfy_env.sd15_random_checkpoint()}})
    srv.start()
    yield srv
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
        pytest.fail(f"browser driver failed: {result.get('error')}\nbrowser log: {result.get('log')}\n"
                    f"server log:\n{server.read_log()[-3000:]}")
    return result


def test_erase_workflow_in_the_browser(server, tmp_path):
    os.makedirs(ARTIFACTS, exist_ok=True)
    wf = erase_workflow("sd15-random.safetensors", "thing.safetensors", "", 64, 2, inspect=True, train=True,
                        inspect_concept="thing")
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
    assert all(n["images"] and n["images"][0]["width"] == 64 for n in r["nodes_with_images"]), r["nodes_with_images"]
    # the training curve got its points from the saemnesia.train events
    (curve,) = r["curves"]
    assert curve["points"] >= 2 and curve["total"] == 40, curve
    for shot in r["screenshots"]:
        assert os.path.getsize(shot) > 10_000
    print(f"browser run: {time.time() - t0:.0f}s, images after {r['seconds_to_images']:.0f}s; {r['screenshots']}")


def test_shipped_workflow_loads_and_matches_its_api_twin(server, tmp_path):
    """The example workflow loads in the real frontend, and what the frontend would queue for
    it is exactly the API-format twin."""
    with open(SHIPPED, encoding="utf-8") as f:
        ui = json.load(f)
    with open(SHIPPED_API, encoding="utf-8") as f:
        api = json.load(f)
    out = tmp_path / "api.json"
    drive(server, "convert", ui, tmp_path, api_out=out, timeout=300)
    queued = json.loads(out.read_text())
    for node in list(queued.values()) + list(api.values()):
        node.pop("_meta", None)
    assert queued == api
    types = {n["type"] for n in ui["nodes"]}
    assert {"SAEmnesiaLoadSAE", "SAEmnesiaEraseConcepts", "Note", "SaveImage"} <= types
    sae = next(n for n in ui["nodes"] if n["type"] == "SAEmnesiaLoadSAE")
    assert sae["widgets_values"] == ["unet.up_blocks.1.attentions.2/sae.safetensors"]
