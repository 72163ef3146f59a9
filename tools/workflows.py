"""The example workflows in example_workflows/: defined here once, saved through the real frontend.

Each workflow is a UI-format graph built with :class:`UIGraph`. ``python -m tools.workflows``
starts the real ComfyUI server with the pack, loads every graph in the real frontend (headless
Chromium, ``tools/browser/drive.js convert``) and writes what the frontend saves
(``example_workflows/<title>.json``, what the template browser opens, titled by TITLES) and what
it queues (``example_workflows/api/<name>.json``, the API-format twin). Tests check that the files still agree
with each other (tests/test_workflows.py, tests/test_browser.py) and that every twin runs on a
real server (tests/test_workflows_e2e.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the folder name ComfyUI 0.3.75 asks for (it also reads workflows/, with a hint to rename it)
WORKFLOWS = os.path.join(REPO, "example_workflows")
API = os.path.join(WORKFLOWS, "api")
DRIVER = os.path.join(REPO, "tools", "browser", "drive.js")

# --------------------------------------------------------------------------- UI graphs

# Sockets of the node types the workflows use: (inputs, outputs) as (name, type) pairs, in the
# order ComfyUI declares them. Widgets are not listed: they go positionally in widgets_values.
PORTS: dict[str, tuple[list, list]] = {
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "SAEmnesiaLoadDemoModel": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([], [("LATENT", "LATENT")]),
    "EmptyChromaRadianceLatentImage": ([], [("LATENT", "LATENT")]),
    "SAEmnesiaLoadSAE": ([], [("SAE", "SAE"), ("info", "STRING")]),
    "SAEmnesiaEraseConcepts": ([("model", "MODEL"), ("sae", "SAE")], [("MODEL", "MODEL")]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")], [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "ImageScaleBy": ([("image", "IMAGE")], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "PreviewAny": ([("source", "*")], []),
    "SAEmnesiaInspectNeuron": ([("model", "MODEL"), ("sae", "SAE"), ("vae", "VAE"), ("positive", "CONDITIONING"),
                                ("latent", "LATENT"), ("image", "IMAGE")],
                               [("heatmap", "IMAGE"), ("summary", "STRING")]),
    "SAEmnesiaTrainSAEFromPrompts": ([("model", "MODEL"), ("clip", "CLIP"), ("latent", "LATENT")],
                                     [("SAE", "SAE"), ("report", "STRING")]),
    "Note": ([], []),
}

NOTE_COLORS = {"color": "#432", "bgcolor": "#653"}  # the frontend's yellow note colours


class UIGraph:
    """Builds a workflow in the format the frontend saves: nodes with positional
    widgets_values (seeds followed by their control_after_generate value) and a links table."""

    def __init__(self):
        self.nodes, self.links, self.groups = [], [], []

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

    def add(self, type_, pos, size, widgets=(), title=None, links=None, **extra):
        """A node of a type in PORTS, its inputs linked from ``links``: {input: (node id, output slot)}."""
        inputs, outputs = PORTS[type_]
        nid = self.node(type_, pos, size, widgets, inputs, outputs, title, **extra)
        for name, (src, slot) in (links or {}).items():
            self.link(src, slot, nid, name)
        return nid

    def note(self, pos, size, text):
        return self.node("Note", pos, size, [text], **NOTE_COLORS)

    def group(self, title, bounding, color="#3f789e"):
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": list(bounding), "color": color,
                            "font_size": 24, "flags": {}})

    def link(self, src, src_slot, dst, dst_input):
        lid = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        slot = next(i for i, x in enumerate(d["inputs"]) if x["name"] == dst_input)
        typ = s["outputs"][src_slot]["type"]
        s["outputs"][src_slot]["links"].append(lid)
        d["inputs"][slot]["link"] = lid
        self.links.append([lid, src, src_slot, dst, slot, typ])

    def workflow(self, scale: float = 0.68, offset=(70, 150)) -> dict:
        for n in self.nodes:
            for o in n["outputs"]:
                o["slot_index"] = n["outputs"].index(o)
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": self.groups, "config": {},
                "extra": {"ds": {"scale": scale, "offset": list(offset)}}, "version": 0.4}


# --------------------------------------------------------------------------- SD 1.5

def erase_workflow(ckpt: str, sae: str, concepts: str, size: int, steps: int, note: str | None = None,
                   inspect: bool = False, train: bool = False, mode: str = "auto",
                   inspect_concept: str = "") -> dict:
    """Checkpoint -> prompts -> KSampler before and after Erase Concepts -> Save Image both
    (plus, optionally, Inspect Neuron on the erased latent and a tiny Train SAE run)."""
    g = UIGraph()
    ckpt_n = g.node("CheckpointLoaderSimple", (20, 20), (315, 100), [ckpt],
                    outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])
    pos_n = g.node("CLIPTextEncode", (360, 20), (400, 140), ["a photo of a cat sitting on a sofa, van gogh style"],
                   inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")], title="positive")
    neg_n = g.node("CLIPTextEncode", (360, 205), (400, 100), ["blurry, low quality"],
                   inputs=[("clip", "CLIP")], outputs=[("CONDITIONING", "CONDITIONING")], title="negative")
    lat_n = g.node("EmptyLatentImage", (20, 180), (315, 110), [size, size, 1], outputs=[("LATENT", "LATENT")])
    sae_n = g.node("SAEmnesiaLoadSAE", (20, 350), (315, 80), [sae], outputs=[("SAE", "SAE"), ("info", "STRING")])
    erase_n = g.node("SAEmnesiaEraseConcepts", (360, 350), (400, 296),
                     [concepts, mode, 1.0, 0.0, "both", 0.0, 1.0, True],
                     inputs=[("model", "MODEL"), ("sae", "SAE")], outputs=[("MODEL", "MODEL")])
    ks = {}
    samplers = (("before", 790, ckpt_n, "KSampler (before)"), ("after", 1130, erase_n, "KSampler (after)"))
    for key, x, model_src, title in samplers:
        k = g.node("KSampler", (x, 20), (300, 262), [42, "fixed", steps, 7.0, "euler", "normal", 1.0],
                   inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                           ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")], title=title)
        g.link(model_src, 0, k, "model")
        g.link(pos_n, 0, k, "positive")
        g.link(neg_n, 0, k, "negative")
        g.link(lat_n, 0, k, "latent_image")
        dec = g.node("VAEDecode", (x, 330), (210, 46), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                     outputs=[("IMAGE", "IMAGE")])
        g.link(k, 0, dec, "samples")
        g.link(ckpt_n, 2, dec, "vae")
        save = g.node("SaveImage", (x, 460), (300, 300), [f"saemnesia_{key}"], inputs=[("images", "IMAGE")],
                      title=f"Save Image ({key})")
        g.link(dec, 0, save, "images")
        ks[key] = k
    for src, slot, dst, name in ((ckpt_n, 1, pos_n, "clip"), (ckpt_n, 1, neg_n, "clip"), (ckpt_n, 0, erase_n, "model"),
                                 (sae_n, 0, erase_n, "sae")):
        g.link(src, slot, dst, name)
    if note:
        g.node("Note", (20, 760), (740, 220), [note], **NOTE_COLORS)
    if inspect:
        ins = g.node("SAEmnesiaInspectNeuron", (1470, 20), (320, 560),
                     ["concept", inspect_concept, 0, max(0, steps - 1), steps, "normal", 0, "fixed"],
                     inputs=[("model", "MODEL"), ("sae", "SAE"), ("vae", "VAE"), ("positive", "CONDITIONING"),
                             ("latent", "LATENT"), ("image", "IMAGE")],
                     outputs=[("heatmap", "IMAGE"), ("summary", "STRING")])
        for src, slot, name in ((ckpt_n, 0, "model"), (sae_n, 0, "sae"), (ckpt_n, 2, "vae"), (pos_n, 0, "positive"),
                                (ks["after"], 0, "latent")):
            g.link(src, slot, ins, name)
        prev = g.node("PreviewImage", (1470, 700), (320, 260), inputs=[("images", "IMAGE")])
        g.link(ins, 0, prev, "images")
    if train:
        tr = g.node("SAEmnesiaTrainSAEFromPrompts", (1830, 20), (360, 760),
                    ["browser_trained", "cat, dog", "ink", "a {object} in {style} style", "", "auto", 2, 5.0, "euler",
                     "normal", 1, 0, "fixed", 1, 8, 40, 16, 0.001, True, True],
                    inputs=[("model", "MODEL"), ("clip", "CLIP"), ("latent", "LATENT")],
                    outputs=[("SAE", "SAE"), ("report", "STRING")])
        for src, slot, name in ((ckpt_n, 0, "model"), (ckpt_n, 1, "clip"), (lat_n, 0, "latent")):
            g.link(src, slot, tr, name)
    return g.workflow(**_view())


SD15_NOTE = (
    "SAEmnesia: erase a concept with a published SAeUron SAE (SD 1.5)\n\n"
    "1. Load Checkpoint wants v1-5-pruned-emaonly-fp16.safetensors in ComfyUI/models/checkpoints/: ComfyUI offers "
    "its download when this template opens without it (from huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive), "
    "or pick any SD 1.5 checkpoint you have. Until then queueing fails with 'Value not in list: ckpt_name'.\n"
    "2. Download a SAeUron SAE folder from huggingface.co/bcywinski/SAeUron (unet.up_blocks.1.attentions.2 is the "
    "style block, ...attentions.1 the object block) with its cfg.json and sae.safetensors into models/sae/, keeping "
    "the folder's name, then pick '.../sae.safetensors' in Load SAE.\n"
    "3. Published SAeUron SAEs carry no concept index, so 'concepts' names raw latents: replace the placeholder "
    "neuron:1234 with the latent you want to switch off (find one with Inspect Neuron). With an SAE trained by "
    "'Train SAE from Prompts', use the 'add concept' picker on Erase Concepts instead.\n"
    "4. Queue: the left image is the model as it is, the right one with the concept erased (same seed)."
)

SD15_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
# the file ComfyUI's own SD1.5 templates link, in their `models` node property: the frontend
# offers the download into models/checkpoints when the template opens without it
SD15_MODELS = [{"name": SD15_CHECKPOINT, "directory": "checkpoints",
                "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/" + SD15_CHECKPOINT}]
SD15_SAE = "unet.up_blocks.1.attentions.2/sae.safetensors"


def erase_concept_sd15_saeuron() -> dict:
    wf = erase_workflow(SD15_CHECKPOINT, SD15_SAE, "neuron:1234", 512, 25, note=SD15_NOTE, mode="ablate")
    for n in wf["nodes"]:
        if n["type"] == "CheckpointLoaderSimple":
            n["properties"]["models"] = SD15_MODELS
    return wf


# --------------------------------------------------------------------------- MiniCanvas demo model

DEMO_UNET = "demo_unet.safetensors"
DEMO_DIT = "demo_dit.safetensors"  # MiniCanvas-DiT: Flux's layout, joint attention (docs/minicanvas.md)
# The two bundled demo models: their file, and the sampler, scheduler and steps they were
# evaluated with (their family's: DDIM for the SD-layout UNet, euler / simple for the Flux-layout DiT)
DEMO_MODELS = {"unet": {"file": DEMO_UNET, "sampler": "ddim", "scheduler": "ddim_uniform", "steps": 25},
               "dit": {"file": DEMO_DIT, "sampler": "euler", "scheduler": "simple", "steps": 20}}
OBJECTS_SAE = "minicanvas_objects_saemnesia.safetensors"
STYLES_SAE = "minicanvas_styles_saemnesia.safetensors"
CONTEXT_SAE = "minicanvas_context_saemnesia.safetensors"  # text states: objects and styles, every block
OBJECTS_SAE_SAEURON = "minicanvas_objects_saeuron.safetensors"
STYLES_SAE_SAEURON = "minicanvas_styles_saeuron.safetensors"
OBJECTS = "circle, square, triangle, cross, star, heart"
STYLES = "solid, stripes, dots, checker, outline, gradient"
# The settings the demo models were evaluated with (docs/minicanvas.md); the UNet's sampler by default
SEED, CFG = 7, 4.0
STEPS, SAMPLER, SCHEDULER = (DEMO_MODELS["unet"][k] for k in ("steps", "sampler", "scheduler"))
BATCH = 4  # a few seeds per picture: KSampler draws one noise per batch item
VIEW_SCALE = 4  # 32 px pictures are enlarged (nearest: every pixel a 4x4 block) to be seen on the nodes

BEFORE_COLOR, AFTER_COLOR = "#3f789e", "#a1309b"
# Layout (canvas units): loaders on the left, prompts and SAE nodes in the middle, one column
# per model to the right (KSampler, then VAE Decode beside the enlargement, then Save Image); every
# template opens at 100%. A node's title bar (TITLE) sits above its pos. Sizes are what "Nodes 2.0"
# needs to show each node whole: frontend 1.58 draws it at its own place and at least 225 wide,
# so the size saved is the size drawn, in both renderers (1.32 also spreads places and sizes by
# 1.2 alike on load). The browser test measures all four: tools/browser/drive.js convert, layoutState.
LEFT, MID, COLUMN, COLUMN_STEP, WIDE = 20, 430, 820, 530, 470  # WIDE: column node width
TITLE, GAP = 30, 24  # a node's title bar; the space between one node's bottom and the next one's title
GROUP_TOP = -60  # group title bars (24 px type) above the first row of nodes, never under one
# (width, height below the title bar) of the nodes the demo templates repeat
LOADER, LATENT, LOAD_SAE = (330, 126), (330, 118), (330, 106)
PROMPT, NEGATIVE, ERASE = (360, 110), (360, 102), (360, 368)
SAMPLER_SIZE, DECODE, ENLARGE, SAVE = (WIDE, 262), (225, 54), (225, 90), (WIDE, 300)  # SAVE: 4 pictures in 2 rows (1.58 Nodes 2.0)


def below(y: int, size) -> int:
    """The y of the next node under one at y of this size."""
    return y + size[1] + TITLE + GAP


DECODE_DY = below(0, SAMPLER_SIZE)  # VAE Decode under KSampler
SAVE_DY = below(DECODE_DY, ENLARGE)  # Save Image under VAE Decode and the enlargement beside it
ROW_STEP = below(SAVE_DY, SAVE)  # one prompt's row of a column


def _view(scale: float = 1.0) -> dict:
    """workflow() arguments that open the canvas with its top-left corner (LEFT, GROUP_TOP) just
    below the frontend's menus and its floating Run bar (screen = (canvas + offset) * scale), at
    100% unless told. Two model columns fit a 1920 x 1080 screen at 100%."""
    return {"scale": scale, "offset": (round(70 / scale - LEFT), round(130 / scale - GROUP_TOP))}


def _demo_base(g: UIGraph, prompts: list[tuple[str, str]], batch: int, model: str = "unet"):
    """Load MiniCanvas Demo Model (a DEMO_MODELS key), the prompts (+ an empty negative) and the
    32x32 empty latent. Returns (loader, {title: positive}, negative, latent)."""
    loader = g.add("SAEmnesiaLoadDemoModel", (LEFT, 20), LOADER, [DEMO_MODELS[model]["file"]])
    latent = g.add("EmptyChromaRadianceLatentImage", (LEFT, below(20, LOADER)), LATENT, [32, 32, batch],
                   title=f"32x32 pixel-space latent, {batch} seeds")
    positives, y = {}, 20
    for title, text in prompts:
        positives[title] = g.add("CLIPTextEncode", (MID, y), PROMPT, [text], title=title,
                                 links={"clip": (loader, 1)})
        y = below(y, PROMPT)
    negative = g.add("CLIPTextEncode", (MID, y), NEGATIVE, [""], title="negative (empty)",
                     links={"clip": (loader, 1)})
    return loader, positives, negative, latent


# where the left column continues under the loader and the latent, and the middle one under the
# prompts (n of them) and the negative
LEFT_FREE = below(below(20, LOADER), LATENT)


def mid_free(prompts: int) -> int:
    return below(20 + prompts * below(0, PROMPT), NEGATIVE)


def _load_sae(g: UIGraph, y: int, name: str, kind: str):
    return g.add("SAEmnesiaLoadSAE", (LEFT, y), LOAD_SAE, [name], title=f"Load SAE ({kind})")


def _erase(g: UIGraph, pos, concepts: str, title: str, model, sae, width: int = 360):
    return g.add("SAEmnesiaEraseConcepts", pos, (width, ERASE[1]), [concepts, "auto", 1.0, 0.0, "both", 0.0, 1.0, True],
                 title=title, links={"model": model, "sae": sae})


def _enlarge(g: UIGraph, pos, image):
    return g.add("ImageScaleBy", pos, ENLARGE, ["nearest-exact", float(VIEW_SCALE)], title=f"{VIEW_SCALE}x to view",
                 links={"image": image})


def _sample_and_save(g: UIGraph, x: int, y: int, model, positive, negative, latent, vae, title: str, prefix: str,
                     demo: str = "unet"):
    """KSampler (the settings of demo model `demo`, fixed seed) -> VAE Decode -> enlarge -> Save Image;
    returns (KSampler, Save)."""
    settings = DEMO_MODELS[demo]
    k = g.add("KSampler", (x, y), SAMPLER_SIZE,
              [SEED, "fixed", settings["steps"], CFG, settings["sampler"], settings["scheduler"], 1.0],
              title=f"KSampler ({title})",
              links={"model": model, "positive": (positive, 0), "negative": (negative, 0), "latent_image": (latent, 0)})
    dec = g.add("VAEDecode", (x, y + DECODE_DY), DECODE, links={"samples": (k, 0), "vae": vae})
    big = _enlarge(g, (x + WIDE - ENLARGE[0], y + DECODE_DY), (dec, 0))
    return k, g.add("SaveImage", (x, y + SAVE_DY), SAVE, [prefix], title=title, links={"images": (big, 0)})


def _column(g: UIGraph, c: int, title: str, color: str, rows: int = 1, height: int | None = None):
    """x of model column c, framed by a titled group."""
    x = COLUMN + c * COLUMN_STEP
    g.group(title, (x - 10, GROUP_TOP, COLUMN_STEP - 10, height or 20 - GROUP_TOP + rows * ROW_STEP - GAP), color)
    return x


ERASE_ONE_NOTE = (
    "SAEmnesia on the MiniCanvas demo model: erase one concept\n\n"
    "The bundled demo model draws 6 objects (circle, square, triangle, cross, star, heart) in 6 styles "
    "(solid, stripes, dots, checker, outline, gradient) from prompts like 'a star in stripes style'. "
    "It runs offline on a CPU: about 10 s on 2 shared cores, loading included (measured); its 32x32 pictures "
    "are enlarged 4x (nearest) only to be seen.\n\n"
    "Both KSamplers use the same prompt, seeds and settings (DDIM, 25 steps, CFG 4, a batch of 4): "
    "Before samples the model as it is, After the model patched by Erase Concepts, which erases 'star' with the "
    "shipped text-state SAE: one SAE on what every cross-attention of the model reads, for objects and styles "
    "alike. SAEmnesia: one latent per concept, one calibrated multiplier; the star's activation goes to its "
    "nearest concept (its anchor), so a neighbouring shape is drawn in the same style.\n\n"
    "Try: 'stripes' (a style), 'star, stripes', 'star -> heart' (choose the anchor), 'star ->' (no anchor), "
    "strength 0.5, another prompt; or the one-block SAEs minicanvas_objects_saemnesia / "
    "minicanvas_styles_saemnesia.safetensors in Load SAE to compare."
)


ERASE_ONE_DIT_NOTE = (
    "SAEmnesia on MiniCanvas-DiT: erase one concept on a joint-attention model\n\n"
    "The second bundled demo model draws the same 6 objects in 6 styles, but it is a DiT in Flux's layout "
    "(ComfyUI's own Flux classes, 1.8M parameters): 2 double-stream blocks, where text and image tokens attend "
    "to each other and the text is rewritten as it goes, then 2 single-stream blocks. There is no cross-attention. "
    "Load MiniCanvas Demo Model reads the architecture from the file. Rectified flow, sampled as Flux is: "
    "euler, simple, 20 steps, CFG 4, a batch of 4, the same seeds in both columns.\n\n"
    "Erase Concepts uses the same text-state SAE as the UNet template (minicanvas_context_saemnesia): "
    "the DiT reads the same MiniLM text states, and the SAE edits them once, where they enter the model "
    "(txt_in). The star's activation goes to its nearest concept (its anchor).\n\n"
    "Look at: After should draw another shape in the same stripes, with no star left and no noise or blotches, "
    "as template 1 does on the UNet: although every block lets text and image rewrite each other, an edit "
    "made once at the input must hold through all of them. make demo DEMO_ARGS=\"--model dit\" runs this "
    "graph and says what the shipped classifiers see. Try 'stripes', 'star -> heart', strength 0.5, another prompt."
)
# per demo model: (its note, the note's height, the word its Save Image prefixes carry)
ERASE_ONE = {"unet": (ERASE_ONE_NOTE, 440, "erase_one"), "dit": (ERASE_ONE_DIT_NOTE, 500, "erase_one_dit")}


def erase_one_concept_minicanvas(model: str = "unet") -> dict:
    """Before and After Erase Concepts 'star' (text-state SAE) on demo model `model`."""
    note, note_height, prefix = ERASE_ONE[model]
    g = UIGraph()
    loader, pos, neg, latent = _demo_base(g, [("prompt", "a star in stripes style")], BATCH, model)
    sae = _load_sae(g, LEFT_FREE, CONTEXT_SAE, "text states")
    erase = _erase(g, (MID, mid_free(1)), "star", "Erase Concepts: star", (loader, 0), (sae, 0))
    g.note((LEFT, below(LEFT_FREE, LOAD_SAE)), (330, note_height), note)
    for c, (title, patched, tag) in enumerate((("Before", (loader, 0), "before"),
                                               ("After (star erased)", (erase, 0), "after"))):
        x = _column(g, c, title, (BEFORE_COLOR, AFTER_COLOR)[c])
        _sample_and_save(g, x, 20, patched, pos["prompt"], neg, latent, (loader, 2), title,
                         f"SAEmnesia/{prefix}_{tag}", model)
    return g.workflow(**_view())


def erase_one_concept_minicanvas_dit() -> dict:
    return erase_one_concept_minicanvas("dit")


ERASE_SEVERAL_NOTE = (
    "SAEmnesia on the MiniCanvas demo model: erase several concepts at once\n\n"
    "Two prompts (rows) and three models (columns), the same seeds everywhere:\n"
    "- Before: the model as it is.\n"
    "- After A: ONE Erase Concepts node, 'star, heart': both objects go at once.\n"
    "- After B: TWO chained Erase Concepts nodes: 'star', then 'stripes'. Erase nodes stack like any "
    "model patch.\n"
    "All three use the shipped text-state SAE (objects and styles in one SAE).\n"
    "In column B the heart in dots is neither erased concept, so it should stay as it was. "
    "(Pictures enlarged 4x to be seen.)\n\n"
    "The concept names come from each SAE's index: objects circle, square, triangle, cross, star, heart; "
    "styles solid, stripes, dots, checker, outline, gradient."
)


def erase_several_concepts_minicanvas() -> dict:
    g = UIGraph()
    rows = [("prompt 1", "a star in stripes style", "star in stripes"),
            ("prompt 2", "a heart in dots style", "heart in dots")]
    loader, pos, neg, latent = _demo_base(g, [r[:2] for r in rows], 2)
    sae = _load_sae(g, LEFT_FREE, CONTEXT_SAE, "text states")
    y_a = mid_free(len(rows))
    y_b1 = below(y_a, ERASE)
    erase_a = _erase(g, (MID, y_a), "star, heart", "A: erase star + heart (one node)", (loader, 0), (sae, 0))
    erase_b1 = _erase(g, (MID, y_b1), "star", "B1: erase star", (loader, 0), (sae, 0))
    erase_b2 = _erase(g, (MID, below(y_b1, ERASE)), "stripes", "B2: then erase stripes", (erase_b1, 0), (sae, 0))
    g.note((LEFT, below(LEFT_FREE, LOAD_SAE)), (330, 690), ERASE_SEVERAL_NOTE)
    columns = [("Before", (loader, 0), "before", BEFORE_COLOR),
               ("After A (star, heart erased)", (erase_a, 0), "after_a", AFTER_COLOR),
               ("After B (star + stripes erased)", (erase_b2, 0), "after_b", AFTER_COLOR)]
    for c, (title, model, tag, color) in enumerate(columns):
        x = _column(g, c, title, color, rows=len(rows))
        for r, (row, _, subject) in enumerate(rows):
            _sample_and_save(g, x, 20 + r * ROW_STEP, model, pos[row], neg, latent, (loader, 2),
                             f"{title.split(' (')[0]}: {subject}", f"SAEmnesia/erase_several_{tag}_{r + 1}")
    return g.workflow(**_view())


INSPECT_NOTE = (
    "SAEmnesia on the MiniCanvas demo model: where does a concept fire?\n\n"
    "Inspect Neuron adds noise to the generated picture at one step of the schedule (here step 12 of 25), runs "
    "the denoiser once and overlays where the SAE latent of a concept is active: dark = silent, yellow = its "
    "strongest; the colour bar under each heatmap gives the scale. The summary names the latent, where it "
    "fires and what its score means.\n\n"
    "Second column: the 'star' latent of the objects SAE; third: the 'stripes' latent of the styles SAE. Set 'show' "
    "to 'neuron' and pick an index to look at any raw latent instead of a concept; change 'step' to look at early "
    "(layout) or late (detail) steps."
)


def inspect_neuron_minicanvas() -> dict:
    g = UIGraph()
    loader, pos, neg, latent = _demo_base(g, [("prompt", "a star in stripes style")], 2)
    positive = pos["prompt"]
    g.note((MID, mid_free(1)), (360, 480), INSPECT_NOTE)
    x = _column(g, 0, "Generated", BEFORE_COLOR)
    sampler, _ = _sample_and_save(g, x, 20, (loader, 0), positive, neg, latent, (loader, 2), "Generated",
                                  "SAEmnesia/inspect_generated")
    for i, (sae_file, concept, kind) in enumerate(((OBJECTS_SAE, "star", "objects"), (STYLES_SAE, "stripes", "styles"))):
        sae = _load_sae(g, LEFT_FREE + i * below(0, LOAD_SAE), sae_file, kind)
        x = _column(g, 1 + i, f"Where '{concept}' fires", AFTER_COLOR, height=1380)
        # tall enough to show its own heatmap preview under the widgets (already 256 px with its scale)
        ins = g.add("SAEmnesiaInspectNeuron", (x, 20), (WIDE, 640),
                    ["concept", concept, 0, 12, STEPS, SCHEDULER, SEED, "fixed"], title=f"Inspect Neuron: {concept}",
                    links={"model": (loader, 0), "sae": (sae, 0), "vae": (loader, 2), "positive": (positive, 0),
                           "latent": (sampler, 0)})
        g.add("SaveImage", (x, 760), (WIDE, 280), [f"SAEmnesia/inspect_{concept}"], title=f"Heatmap: {concept}",
              links={"images": (ins, 0)})
        g.add("PreviewAny", (x, 1110), (WIDE, 200), title=f"Summary: {concept}", links={"source": (ins, 1)})
    return g.workflow(**_view())


TRAIN_NOTE = (
    "SAEmnesia on the MiniCanvas demo model: train an SAE, then erase with it\n\n"
    "Train SAE from Prompts encodes the 36 prompts 'a {object} in {style} style' (6 objects x 6 styles), "
    "records their text states (hook_point 'context': what every cross-attention of the model reads), trains a "
    "small SAEmnesia-supervised TopK SAE (one latent per concept) and saves it as "
    "models/sae/minicanvas_trained.safetensors. Overwrite is on, so queueing again replaces it; Cancel keeps the "
    "last checkpoint and the next run resumes from it. About 45 s on 2 shared CPU cores (measured): text states need no "
    "sampling. Put a block name (e.g. output_blocks.3.1), or several comma separated, in hook_point to train on "
    "what the model draws instead (minutes: every prompt is sampled).\n\n"
    "Its SAE goes straight into Erase Concepts ('star'), so the After images use the SAE just trained. It is "
    "uncalibrated (its multiplier is the default -1.5) and saw one wording per prompt, so expect a weaker "
    "erasure than with the shipped minicanvas_context_saemnesia.safetensors."
)


def train_then_erase_minicanvas() -> dict:
    g = UIGraph()
    loader, pos, neg, latent = _demo_base(g, [("prompt", "a star in stripes style")], BATCH)
    train = g.add("SAEmnesiaTrainSAEFromPrompts", (LEFT, LEFT_FREE), (390, 1000),
                  ["minicanvas_trained", OBJECTS, STYLES, "a {object} in {style} style", "", "context",
                   STEPS, CFG, SAMPLER, SCHEDULER, 1, 0, "fixed", 4, 16, 600, 512, 0.001, True, True],
                  title="Train SAE from Prompts (about 45 s on 2 CPU cores)",
                  links={"model": (loader, 0), "clip": (loader, 1), "latent": (latent, 0)})
    erase = _erase(g, (MID, mid_free(1)), "star", "Erase Concepts: star", (loader, 0), (train, 0))
    report = (360, 290)
    y_report = below(mid_free(1), ERASE)
    g.add("PreviewAny", (MID, y_report), report, title="Training report", links={"source": (train, 1)})
    g.note((MID, below(y_report, report)), (360, 560), TRAIN_NOTE)
    for c, (title, model, tag) in enumerate((("Before", (loader, 0), "before"),
                                             ("After (star erased)", (erase, 0), "after"))):
        x = _column(g, c, title, (BEFORE_COLOR, AFTER_COLOR)[c])
        _sample_and_save(g, x, 20, model, pos["prompt"], neg, latent, (loader, 2), title,
                         f"SAEmnesia/train_then_erase_{tag}")
    return g.workflow(**_view())


# name -> builder; the order the README lists them in
BUILDERS = {
    "erase_one_concept_minicanvas": erase_one_concept_minicanvas,
    "erase_several_concepts_minicanvas": erase_several_concepts_minicanvas,
    "inspect_neuron_minicanvas": inspect_neuron_minicanvas,
    "train_then_erase_minicanvas": train_then_erase_minicanvas,
    "erase_one_concept_minicanvas_dit": erase_one_concept_minicanvas_dit,
    "erase_concept_sd15_saeuron": erase_concept_sd15_saeuron,
}
NAMES = list(BUILDERS)
# name -> file name in example_workflows/ (and of its .jpg thumbnail). The template browser shows
# the file name as the title, so each starts with its place in the order; no characters that
# need quoting in a URL or a shell beyond spaces.
TITLES = {
    "erase_one_concept_minicanvas": "1 Start here - erase one concept (demo model)",
    "erase_several_concepts_minicanvas": "2 Erase several concepts, in one node or chained (demo model)",
    "inspect_neuron_minicanvas": "3 Inspect Neuron - where a concept fires (demo model)",
    "train_then_erase_minicanvas": "4 Train an SAE from prompts, then erase with it (demo model)",
    "erase_one_concept_minicanvas_dit": "5 Erase one concept on a DiT, Flux layout (demo model)",
    # last: the one that needs downloads
    "erase_concept_sd15_saeuron": "6 Your SD 1.5 - switch off an SAeUron SAE latent (needs downloads)",
}


# --------------------------------------------------------------------------- for the tests

PACK_SAES = os.path.join(REPO, "models", "sae")  # the pack's own sae folder (nodes/sae_folder.PACK_FOLDER)
CANDIDATES_ENV = "SAEMNESIA_CANDIDATE_SAES"


def candidate_saes() -> dict[str, str]:
    """{file name: path} of the SAEs in the folder $SAEMNESIA_CANDIDATE_SAES: candidates that
    tests put in their server's models/sae, to try SAEs before they are shipped."""
    folder = os.environ.get(CANDIDATES_ENV)
    if not folder:
        return {}
    return {f: os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".safetensors")}


def missing_saes(api: dict) -> list[str]:
    """SAE files a workflow's Load SAE nodes pick that are neither shipped nor candidates."""
    names = {n["inputs"]["sae_name"] for n in api.values() if n["class_type"] == "SAEmnesiaLoadSAE"}
    return sorted(n for n in names if not os.path.isfile(os.path.join(PACK_SAES, n)) and n not in candidate_saes())


def ui_path(name: str) -> str:
    return os.path.join(WORKFLOWS, f"{TITLES[name]}.json")


def thumbnail_path(name: str) -> str:
    return os.path.join(WORKFLOWS, f"{TITLES[name]}.jpg")


def api_path(name: str) -> str:
    return os.path.join(API, f"{name}.json")


def load(name: str) -> tuple[dict, dict]:
    """(UI-format workflow, API-format twin) as shipped."""
    with open(ui_path(name), encoding="utf-8") as f:
        ui = json.load(f)
    with open(api_path(name), encoding="utf-8") as f:
        api = json.load(f)
    return ui, api


# --------------------------------------------------------------------------- writing through the frontend

def write_returning_user_settings(base: str):
    """A returning user: no first-run template browser over the canvas."""
    os.makedirs(os.path.join(base, "user", "default"), exist_ok=True)
    settings = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
    with open(os.path.join(base, "user", "default", "comfy.settings.json"), "w", encoding="utf-8") as f:
        json.dump(settings, f)


def convert(url: str, workflow: dict, work: str, name: str, screenshots: str | None = None) -> tuple[dict, dict]:
    """Load a UI-format workflow in the real frontend: (what it saves, what it queues)."""
    src, ui_out, api_out = (os.path.join(work, f"{name}.{k}.json") for k in ("in", "ui", "api"))
    with open(src, "w", encoding="utf-8") as f:
        json.dump(workflow, f)
    shots = ["--out", os.path.abspath(screenshots)] if screenshots else []
    proc = subprocess.run(["node", DRIVER, "convert", "--url", url, "--workflow", src, "--ui-out", ui_out,
                           "--api-out", api_out, *shots], check=False, capture_output=True, text=True,
                          timeout=600,
                          cwd=os.path.dirname(DRIVER))
    if proc.returncode != 0:
        raise RuntimeError(f"drive.js convert failed for {name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with open(ui_out, encoding="utf-8") as f:
        saved = json.load(f)
    with open(api_out, encoding="utf-8") as f:
        queued = json.load(f)
    return saved, queued


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write example_workflows/*.json and example_workflows/api/*.json through the real "
                                             "ComfyUI frontend (needs chromium and npm ci --prefix tools/browser).")
    ap.add_argument("names", nargs="*", default=NAMES, help=f"which workflows (default: all of {', '.join(NAMES)})")
    ap.add_argument("--screenshots", help="also save a screenshot of each loaded workflow into this folder")
    args = ap.parse_args(argv)
    sys.path.insert(0, REPO)
    from tools.comfy_server import ComfyServer

    os.makedirs(API, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="saemnesia-workflows-") as base:
        write_returning_user_settings(base)
        server = ComfyServer(base)
        server.start()
        try:
            for name in args.names:
                saved, queued = convert(server.url, BUILDERS[name](), base, name, args.screenshots)
                if os.path.isfile(ui_path(name)):
                    with open(ui_path(name), encoding="utf-8") as f:
                        saved["id"] = json.load(f).get("id", saved["id"])  # regenerating keeps the workflow's id
                for path, data in ((ui_path(name), saved), (api_path(name), queued)):
                    with open(path, "w", encoding="utf-8") as f:
                        json.dump(data, f, indent=2)
                        f.write("\n")
                print(f"wrote {os.path.relpath(ui_path(name), REPO)} and its api/ twin")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
