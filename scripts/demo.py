"""`make demo`: start the real ComfyUI with this pack, run the erase workflow, and leave
the before/after images in a folder.

Until the bundled MiniCanvas demo model lands, the graph runs on an SD1.5-shaped
checkpoint with random weights (built from ComfyUI's own classes): every node and the
whole path run for real, but the pictures are noise, not art.
"""
import argparse
import json
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools import comfy_env  # noqa: E402
from tools.comfy_server import ComfyServer  # noqa: E402


def erase_graph(ckpt: str, concept: str) -> dict:
    def sampler(model, prefix, seed=7):
        return {"model": model, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
                "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat in ink style"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "SAEmnesiaTrainSAEFromPrompts", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "latent": ["4", 0], "name": "demo_sae", "objects": "cat, dog",
            "styles": "ink, oil", "templates": "a {object} in {style} style", "labelled_prompts": "",
            "hook_point": "auto", "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "seeds_per_prompt": 1, "seed": 0, "expansion": 2, "k": 16, "train_steps": 60, "batch_size": 32,
            "learning_rate": 0.001, "supervised": True, "overwrite": True}},
        "6": {"class_type": "SAEmnesiaEraseConcepts", "inputs": {
            "model": ["1", 0], "sae": ["5", 0], "concepts": concept, "mode": "auto", "strength": 1.0,
            "multiplier": 0.0, "apply_to": "both", "start_percent": 0.0, "end_percent": 1.0}},
        "7": {"class_type": "KSampler", "inputs": sampler(["1", 0], "before")},
        "8": {"class_type": "KSampler", "inputs": sampler(["6", 0], "after")},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "demo_before"}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "demo_after"}},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--serve", action="store_true", help="keep the server running and print its URL")
    ap.add_argument("--port", type=int, default=8199)
    ap.add_argument("--out", default=os.path.join(REPO, "demo-output"))
    args = ap.parse_args()

    base = os.path.join(REPO, ".cache", "demo-comfy")
    print("[demo] building the SD1.5-shaped random checkpoint (first run only) ...", flush=True)
    ckpt = comfy_env.sd15_random_checkpoint()
    server = ComfyServer(base, {"checkpoints": {"sd15-random.safetensors": ckpt}}, port=args.port)
    print(f"[demo] starting ComfyUI at {server.url} ...", flush=True)
    server.start()
    try:
        t0 = time.time()
        entry = server.run(erase_graph("sd15-random.safetensors", "cat"))
        os.makedirs(args.out, exist_ok=True)
        saved = {}
        for nid, name in (("11", "before.png"), ("12", "after.png")):
            img = entry["outputs"][nid]["images"][0]
            shutil.copyfile(os.path.join(base, "output", img["subfolder"], img["filename"]), os.path.join(args.out, name))
            saved[name] = os.path.join(args.out, name)
        report = entry["outputs"]["5"]["text"][0]
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump({"seconds": round(time.time() - t0, 1), "sae_report": report, "images": saved}, f, indent=1)
        print(f"[demo] {report}")
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
