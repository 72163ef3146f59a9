"""`make demo`: start the real ComfyUI with this pack, run the erase workflow on the bundled
MiniCanvas demo model, and leave the before/after images in a folder.

The graph: Load MiniCanvas Demo Model -> Train SAE from Prompts (6 objects x 6 styles,
SAEmnesia-supervised) -> Erase Concepts ("star") -> KSampler, next to the same KSampler on
the untouched model. The shipped classifiers then say what each picture shows.
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

OBJECTS = "circle, square, triangle, cross, star, heart"
STYLES = "solid, stripes, dots, checker, outline, gradient"


def erase_graph(concept: str, prompt: str, seeds: int) -> dict:
    def sampler(model):
        return {"model": model, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 7,
                "steps": 25, "cfg": 4.0, "sampler_name": "ddim", "scheduler": "ddim_uniform", "denoise": 1.0}
    return {
        "1": {"class_type": "SAEmnesiaLoadDemoModel", "inputs": {"unet_name": "demo_unet.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": prompt}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyChromaRadianceLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": seeds}},
        "13": {"class_type": "EmptyChromaRadianceLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "5": {"class_type": "SAEmnesiaTrainSAEFromPrompts", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "latent": ["13", 0], "name": "minicanvas_demo", "objects": OBJECTS,
            "styles": STYLES, "templates": "a {object} in {style} style", "labelled_prompts": "",
            "hook_point": "auto", "steps": 25, "cfg": 4.0, "sampler_name": "ddim", "scheduler": "ddim_uniform",
            "seeds_per_prompt": 1, "seed": 0, "expansion": 8, "k": 16, "train_steps": 600, "batch_size": 1024,
            "learning_rate": 0.001, "supervised": True, "overwrite": True}},
        "6": {"class_type": "SAEmnesiaEraseConcepts", "inputs": {
            "model": ["1", 0], "sae": ["5", 0], "concepts": concept, "mode": "auto", "strength": 1.0,
            "multiplier": 0.0, "apply_to": "both", "start_percent": 0.0, "end_percent": 1.0}},
        "7": {"class_type": "KSampler", "inputs": sampler(["1", 0])},
        "8": {"class_type": "KSampler", "inputs": sampler(["6", 0])},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "demo_before"}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "demo_after"}},
    }


def classify(paths):
    import numpy as np
    import torch
    from PIL import Image
    from saemnesia_core.minicanvas.classifier import load_classifiers
    from saemnesia_core.minicanvas.data import OBJECTS as OBJ, STYLES as STY
    clf, _ = load_classifiers()
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 127.5 - 1)
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
        entry = server.run(erase_graph(args.concept, args.prompt, args.seeds))
        if os.path.isdir(args.out):
            shutil.rmtree(args.out)
        os.makedirs(args.out)
        saved = {}
        for nid, tag in (("11", "before"), ("12", "after")):
            for i, img in enumerate(entry["outputs"][nid]["images"]):
                dst = os.path.join(args.out, f"{tag}_{i}.png")
                shutil.copyfile(os.path.join(base, "output", img["subfolder"], img["filename"]), dst)
                saved.setdefault(tag, []).append(dst)
        seen = {tag: classify(paths) for tag, paths in saved.items()}
        report = entry["outputs"]["5"]["text"][0]
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump({"seconds": round(time.time() - t0, 1), "prompt": args.prompt, "erased": args.concept,
                       "classifier_says": seen, "sae_report": report, "images": saved}, f, indent=1)
        print(f"[demo] {report}")
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
