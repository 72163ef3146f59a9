"""`make demo`: start the real ComfyUI with this pack, run the erase workflow on the bundled
MiniCanvas demo model, and leave the before/after images in a folder.

The graph is the shipped `example_workflows/api/erase_one_concept_minicanvas.json` (with `--model dit`,
`erase_one_concept_minicanvas_dit.json`; their UI twins are in ComfyUI's template browser):
Load MiniCanvas Demo Model -> Load SAE -> Erase Concepts (mode auto) -> KSampler, next to the same
KSampler on the untouched model. By default it erases the object "star", then the style "stripes",
from "a star in stripes style", both with the shipped text-state SAE (one SAE for objects and
styles, on the text states the model reads); `--concept` (repeatable) erases others. The shipped
classifiers then say what each picture shows, and each erased picture is checked against its
unedited twin as the benchmark does (broken = noise or blotches the demo model would not draw).
"""
import argparse
import functools
import json
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from saemnesia_core.fileio import save_json_atomic  # noqa: E402
from tools.comfy_server import ComfyServer  # noqa: E402
from tools.workflows import DEMO_MODELS as MODELS  # noqa: E402
from tools.workflows import api_path  # noqa: E402

# per demo model, the shipped erase-one workflow that runs on it (its file, sampler and scheduler)
WORKFLOWS = {"unet": api_path("erase_one_concept_minicanvas"), "dit": api_path("erase_one_concept_minicanvas_dit")}


SHIPPED_SAE = {"object": "minicanvas_context_saemnesia.safetensors",
               "style": "minicanvas_context_saemnesia.safetensors"}


def concept_kind(concept: str) -> str:
    from saemnesia_demo.data import OBJECTS, STYLES
    if concept in OBJECTS:
        return "object"
    if concept in STYLES:
        return "style"
    sys.exit(f"[demo] '{concept}' is not a MiniCanvas concept; the demo model knows the objects "
             f"{', '.join(OBJECTS)} and the styles {', '.join(STYLES)}")


def erase_graph(concept: str, prompt: str, seeds: int, model: str = "unet") -> tuple[dict, dict]:
    """The model's shipped workflow with the prompt, concept (and the SAE for its kind) and
    batch size set; and its save nodes."""
    with open(WORKFLOWS[model], encoding="utf-8") as f:
        graph = json.load(f)
    saves = {}
    for nid, node in graph.items():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CLIPTextEncode" and inputs["text"]:
            inputs["text"] = prompt
        elif kind == "SAEmnesiaEraseConcepts":
            inputs["concepts"] = concept
        elif kind == "SAEmnesiaLoadSAE":
            inputs["sae_name"] = SHIPPED_SAE[concept_kind(concept)]
        elif kind == "EmptyChromaRadianceLatentImage":
            inputs["batch_size"] = seeds
        elif kind == "SaveImage":
            saves["before" if "before" in inputs["filename_prefix"] else "after"] = nid
    return graph, saves


def load_pictures(paths):
    """[n, 3, 32, 32] in [-1, 1]: the workflow saves 4x enlarged copies for viewing, back to 32x32."""
    import numpy as np
    import torch
    from PIL import Image
    return torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BOX),
                                                    dtype=np.float32) / 127.5 - 1).permute(2, 0, 1) for p in paths])


def classify(paths):
    import torch

    from saemnesia_demo.classifier import load_classifiers
    from saemnesia_demo.data import OBJECTS as OBJ
    from saemnesia_demo.data import STYLES as STY
    clf, _ = load_classifiers()
    with torch.no_grad():
        o, s = clf.predict(load_pictures(paths))
    return [(OBJ[i], STY[j]) for i, j in zip(o.tolist(), s.tolist())]


@functools.lru_cache(maxsize=None)
def _judge(model: str):
    """The benchmark's model and classifiers, loaded once for all of a demo's runs."""
    from saemnesia_demo.bench import make_bench
    return make_bench(model, threads=1)


def broken(before_paths, after_paths, model: str = "unet") -> list[bool]:
    """The benchmark's check: an erased picture is broken when its noise level or the demo
    model's own denoising error rises past the margins over its unedited twin."""
    from saemnesia_demo.bench import DENOISE_MARGIN, NOISE_MARGIN
    bench = _judge(model)
    rise = bench.quality(load_pictures(after_paths)) - bench.quality(load_pictures(before_paths))
    return [bool(n > NOISE_MARGIN or e > DENOISE_MARGIN) for n, e in rise.tolist()]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--serve", action="store_true", help="keep the server running and print its URL")
    ap.add_argument("--port", type=int, default=8199)
    ap.add_argument("--concept", action="append",
                    help="concept to erase; repeat for one run per concept (default: star)")
    ap.add_argument("--prompt", default="a star in stripes style")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(REPO, "demo-output"))
    ap.add_argument("--model", choices=list(MODELS), default="unet",
                    help="the demo UNet (SD1-style) or MiniCanvas-DiT (Flux layout, joint attention)")
    args = ap.parse_args()
    if not os.path.isfile(os.path.join(REPO, "models", "minicanvas", MODELS[args.model]["file"])):
        sys.exit(f"[demo] models/minicanvas/{MODELS[args.model]['file']} is missing; restore it with "
                 "'git checkout models/minicanvas' (docs/minicanvas.md says how it is trained)")
    concepts = list(dict.fromkeys(args.concept or ["star", "stripes"]))  # one output folder per concept
    kinds = [concept_kind(c) for c in concepts]  # fail on a typo before starting the server

    base = os.path.join(REPO, ".cache", "demo-comfy")
    server = ComfyServer(base, port=args.port)
    print(f"[demo] starting ComfyUI at {server.url} ...", flush=True)
    server.start()
    try:
        if os.path.isdir(args.out):
            shutil.rmtree(args.out)
        report = {"model": args.model, "prompt": args.prompt, "workflow": os.path.relpath(WORKFLOWS[args.model], REPO), "runs": []}
        for concept, kind in zip(concepts, kinds):
            report["runs"].append(run_one(server, base, concept, kind, args))
        save_json_atomic(report, os.path.join(args.out, "report.json"))
        contact_sheet(report["runs"], os.path.join(args.out, "before_after.png"))
        print(f"[demo] before/after images in {args.out}/<concept>/ and {args.out}/before_after.png, "
              f"summary in {args.out}/report.json")
        if args.serve:
            print(f"[demo] ComfyUI is running at {server.url} (Ctrl-C to stop)")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def contact_sheet(runs: list[dict], path: str):
    """One picture of every run: its before row above its after row (docs/images shows one)."""
    from PIL import Image
    rows = [[Image.open(p).convert("RGB") for p in run["images"][tag]] for run in runs for tag in ("before", "after")]
    w, h = rows[0][0].size
    sheet = Image.new("RGB", (max(len(r) for r in rows) * (w + 4), len(rows) * (h + 6)), "white")
    for y, row in enumerate(rows):
        for x, im in enumerate(row):
            sheet.paste(im, (x * (w + 4), y * (h + 6)))
    tmp = path + ".tmp.png"
    sheet.save(tmp)
    os.replace(tmp, path)


def run_one(server, base, concept, kind, args) -> dict:
    t0 = time.time()
    graph, saves = erase_graph(concept, args.prompt, args.seeds, args.model)
    entry = server.run(graph)
    folder = os.path.join(args.out, concept)
    os.makedirs(folder)
    saved = {}
    for tag, nid in saves.items():
        for i, img in enumerate(entry["outputs"][nid]["images"]):
            dst = os.path.join(folder, f"{tag}_{i}.png")
            shutil.copyfile(os.path.join(base, "output", img["subfolder"], img["filename"]), dst)
            saved.setdefault(tag, []).append(dst)
    seen = {tag: classify(paths) for tag, paths in saved.items()}
    slot = 0 if kind == "object" else 1
    still = sum(pair[slot] == concept for pair in seen["after"])
    ruined = broken(saved["before"], saved["after"], args.model)
    clean = sum(pair[slot] != concept and not bad for pair, bad in zip(seen["after"], ruined))
    print(f"[demo] prompt '{args.prompt}', erasing the {kind} '{concept}' with {SHIPPED_SAE[kind]}")
    for tag in ("before", "after"):
        print(f"[demo]   {tag:6s}: " + "; ".join(" / ".join(pair) + (" (broken)" if tag == "after" and bad else "")
                                          for pair, bad in zip(seen[tag], ruined)))
    print(f"[demo]   '{concept}' cleanly erased in {clean} of {len(seen['after'])} pictures "
          f"(still seen in {still}, broken {sum(ruined)})")
    return {"erased": concept, "kind": kind, "sae": SHIPPED_SAE[kind], "seconds": round(time.time() - t0, 1),
            "classifier_says": {tag: [" / ".join(pair) for pair in pairs] for tag, pairs in seen.items()},
            "still_seen_after": still, "broken_after": sum(ruined), "cleanly_erased": clean, "images": saved}


if __name__ == "__main__":
    main()
