"""`make demo`: start the real ComfyUI with this pack, run the erase workflow on the bundled
MiniCanvas demo model, and leave the before/after images in a folder.

The graph is the shipped `workflows/api/erase_one_concept_minicanvas.json` (its UI twin is in
ComfyUI's template browser): Load MiniCanvas Demo Model -> Load SAE (the shipped objects SAE)
-> Erase Concepts ("star", mode auto) -> KSampler, next to the same KSampler on the untouched
model. The shipped classifiers then say what each picture shows.
"""
import argparse
import json
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools.comfy_server import ComfyServer  # noqa: E402

WORKFLOW = os.path.join(REPO, "workflows", "api", "erase_one_concept_minicanvas.json")


def erase_graph(concept: str, prompt: str, seeds: int) -> tuple[dict, dict]:
    """The shipped workflow with the prompt, concept and batch size set; and its save nodes."""
    with open(WORKFLOW, encoding="utf-8") as f:
        graph = json.load(f)
    saves = {}
    for nid, node in graph.items():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CLIPTextEncode" and inputs["text"]:
            inputs["text"] = prompt
        elif kind == "SAEmnesiaEraseConcepts":
            inputs["concepts"] = concept
        elif kind == "EmptyChromaRadianceLatentImage":
            inputs["batch_size"] = seeds
        elif kind == "SaveImage":
            saves["before" if "before" in inputs["filename_prefix"] else "after"] = nid
    return graph, saves


def classify(paths):
    import numpy as np
    import torch
    from PIL import Image
    from saemnesia_core.minicanvas.classifier import load_classifiers
    from saemnesia_core.minicanvas.data import OBJECTS as OBJ, STYLES as STY
    clf, _ = load_classifiers()
    # the workflow saves 4x enlarged copies for viewing: back to the model's 32x32
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BOX),
                                                 dtype=np.float32) / 127.5 - 1)
                     .permute(2, 0, 1) for p in paths])
    with torch.no_grad():
        o, s = clf.predict(x)
    return [f"{OBJ[i]} / {STY[j]}" for i, j in zip(o.tolist(), s.tolist())]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--serve", action="store_true", help="keep the server running and print its URL")
    ap.add_argument("--port", type=int, default=8199)
    ap.add_argument("--concept", default="star")
    ap.add_argument("--prompt", default="a star in stripes style")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(REPO, "demo-output"))
    args = ap.parse_args()

    base = os.path.join(REPO, ".cache", "demo-comfy")
    server = ComfyServer(base, port=args.port)
    print(f"[demo] starting ComfyUI at {server.url} ...", flush=True)
    server.start()
    try:
        t0 = time.time()
        graph, saves = erase_graph(args.concept, args.prompt, args.seeds)
        entry = server.run(graph)
        if os.path.isdir(args.out):
            shutil.rmtree(args.out)
        os.makedirs(args.out)
        saved = {}
        for tag, nid in saves.items():
            for i, img in enumerate(entry["outputs"][nid]["images"]):
                dst = os.path.join(args.out, f"{tag}_{i}.png")
                shutil.copyfile(os.path.join(base, "output", img["subfolder"], img["filename"]), dst)
                saved.setdefault(tag, []).append(dst)
        seen = {tag: classify(paths) for tag, paths in saved.items()}
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump({"seconds": round(time.time() - t0, 1), "prompt": args.prompt, "erased": args.concept,
                       "classifier_says": seen, "images": saved,
                       "workflow": os.path.relpath(WORKFLOW, REPO)}, f, indent=1)
        print(f"[demo] prompt '{args.prompt}', erasing '{args.concept}'")
        for tag in ("before", "after"):
            print(f"[demo]   {tag:6s}: " + "; ".join(seen[tag]))
        print(f"[demo] before/after images in {args.out}")
        if args.serve:
            print(f"[demo] ComfyUI is running at {server.url} (Ctrl-C to stop)")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
