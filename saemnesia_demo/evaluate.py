"""Evaluate the demo UNet: sample every (object, style) prompt, classify, report accuracy.

    python -m saemnesia_demo.evaluate [--unet models/minicanvas/demo_unet.safetensors]
        [--seeds 4] [--steps 25] [--cfg 4] [--out scratch/minicanvas/eval.json] [--grid grid.png]

``--unet`` may also be a training checkpoint (``scratch/minicanvas/last.safetensors``: its
EMA weights are used). Seeds are fixed: sample ``k`` of a prompt uses noise seed ``k``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from . import data
from .classifier import DEFAULT_PATH as CLS_PATH
from .classifier import load_classifiers
from .sampling import ddim_sample
from .unet import DEFAULT_PATH as UNET_PATH
from .unet import load_demo_unet


def sample_all(unet, seeds: int = 4, steps: int = 25, cfg: float = 4.0, batch: int = 72):
    """Samples for all 36 prompts x ``seeds`` -> ``(images, objects, styles)``."""
    from .text_encoder import encode_prompts

    table = encode_prompts([p for _, _, p in data.all_prompts()] + [""])
    uncond = table[-1:]
    rows = [(o, s, k) for o, s, _ in data.all_prompts() for k in range(seeds)]
    imgs = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        cond = table[[o * len(data.STYLES) + s for o, s, _ in chunk]]
        imgs.append(ddim_sample(unet, cond, uncond, steps=steps, cfg=cfg, seeds=[k for _, _, k in chunk]))
    objs = torch.tensor([o for o, _, _ in rows])
    styles = torch.tensor([s for _, s, _ in rows])
    return torch.cat(imgs), objs, styles


def score(images, objs, styles, classifiers) -> dict:
    po, ps = classifiers.predict(images)
    res = {
        "n": int(images.shape[0]),
        "object_acc": float((po == objs).float().mean()),
        "style_acc": float((ps == styles).float().mean()),
        "per_object": {},
        "per_style": {},
    }
    for i, name in enumerate(data.OBJECTS):
        m = objs == i
        res["per_object"][name] = float((po[m] == i).float().mean())
    for i, name in enumerate(data.STYLES):
        m = styles == i
        res["per_style"][name] = float((ps[m] == i).float().mean())
    # per (object, style) cell: share of samples with both labels right
    both = (po == objs) & (ps == styles)
    res["per_pair_both"] = {
        data.prompt_for(o, s): float(both[(objs == o) & (styles == s)].float().mean())
        for o in range(len(data.OBJECTS))
        for s in range(len(data.STYLES))
        if bool(((objs == o) & (styles == s)).any())
    }
    return res


def save_grid(images: torch.Tensor, path: str | Path, ncol: int) -> None:
    from PIL import Image

    n = images.shape[0]
    nrow = (n + ncol - 1) // ncol
    canvas = torch.ones(3, nrow * 34, ncol * 34)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[:, r * 34 + 1 : r * 34 + 33, c * 34 + 1 : c * 34 + 33] = (images[i] + 1) / 2
    arr = (canvas.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).resize((arr.shape[1] * 2, arr.shape[0] * 2), Image.NEAREST).save(str(path))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unet", default=str(UNET_PATH))
    ap.add_argument("--classifiers", default=str(CLS_PATH))
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="scratch/minicanvas/eval.json")
    ap.add_argument("--grid", default="", help="optional PNG of all samples (rows: prompts)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    t0 = time.time()
    unet, meta = load_demo_unet(args.unet)
    cls, _ = load_classifiers(args.classifiers)
    imgs, objs, styles = sample_all(unet, args.seeds, args.steps, args.cfg)
    res = score(imgs, objs, styles, cls)
    res.update(
        {
            "unet": args.unet,
            "unet_training": meta.get("training", {}),
            "seeds": args.seeds,
            "ddim_steps": args.steps,
            "cfg": args.cfg,
            "seconds": round(time.time() - t0, 1),
        }
    )
    print(f"object acc {res['object_acc']:.3f}  style acc {res['style_acc']:.3f}  ({res['n']} samples, {res['seconds']}s)")
    print("per object:", {k: round(v, 2) for k, v in res["per_object"].items()})
    print("per style: ", {k: round(v, 2) for k, v in res["per_style"].items()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    if args.grid:
        save_grid(imgs, args.grid, ncol=len(data.STYLES) * args.seeds)
    return res


if __name__ == "__main__":
    main()
