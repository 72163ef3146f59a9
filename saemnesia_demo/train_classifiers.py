"""Train the MiniCanvas object and style classifiers.

    python -m saemnesia_demo.train_classifiers [--out models/minicanvas/classifiers.safetensors]

Trains on freshly generated images with noise/blur/colour augmentation, measures accuracy
on a held-out set (other seed) both clean and with augmentation, and writes one
safetensors file atomically with the measurements in its metadata.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from . import data
from .classifier import DEFAULT_PATH, MiniCanvasClassifiers, augment, save_classifiers


@torch.no_grad()
def accuracy(model: MiniCanvasClassifiers, x, yo, ys, noisy: bool = False, seed: int = 0) -> tuple[float, float]:
    if noisy:
        x = augment(x, torch.Generator().manual_seed(seed))
    po, ps = model.predict(x)
    return float((po == yo).float().mean()), float((ps == ys).float().mean())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_PATH))
    ap.add_argument("--n-train", type=int, default=24000)
    ap.add_argument("--n-test", type=int, default=3600)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    # half the training images on the diffusion model's light backgrounds, half on any colour
    half = args.n_train // 2
    xa, yoa, ysa = data.make_dataset(half, seed=args.seed)
    xb, yob, ysb = data.make_dataset(args.n_train - half, seed=args.seed + 1, background="wide")
    x, yo, ys = torch.cat([xa, xb]), torch.cat([yoa, yob]), torch.cat([ysa, ysb])
    xt, yot, yst = data.make_dataset(args.n_test, seed=args.seed + 100_000)
    xw, yow, ysw = data.make_dataset(args.n_test // 2, seed=args.seed + 200_000, background="wide")
    print(f"data: {args.n_train} train / {args.n_test} test in {time.time() - t0:.1f}s", flush=True)

    model = MiniCanvasClassifiers(args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (args.n_train // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    for ep in range(args.epochs):
        model.train()
        perm = torch.randperm(args.n_train, generator=gen)
        tot = 0.0
        for i in range(args.n_train // args.batch):
            idx = perm[i * args.batch : (i + 1) * args.batch]
            xb = x[idx]
            # a quarter of each batch stays clean so clean accuracy stays perfect
            aug = augment(xb, gen)
            keep = torch.rand(len(idx), generator=gen) < 0.25
            xb = torch.where(keep[:, None, None, None], xb, aug)
            loss = F.cross_entropy(model.object(xb), yo[idx], label_smoothing=0.05) + F.cross_entropy(
                model.style(xb), ys[idx], label_smoothing=0.05
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            tot += float(loss.detach())
        model.eval()
        clean = accuracy(model, xt, yot, yst)
        print(
            f"epoch {ep + 1}/{args.epochs} loss {tot / (i + 1):.4f} held-out object {clean[0]:.4f} style {clean[1]:.4f} "
            f"({time.time() - t0:.0f}s)",
            flush=True,
        )
    model.eval()
    clean = accuracy(model, xt, yot, yst)
    noisy = accuracy(model, xt, yot, yst, noisy=True, seed=7)
    wide = accuracy(model, xw, yow, ysw)
    meta = {
        "heldout_n": args.n_test,
        "heldout_seed": args.seed + 100_000,
        "object_acc": clean[0],
        "style_acc": clean[1],
        "object_acc_augmented": noisy[0],
        "style_acc_augmented": noisy[1],
        "object_acc_wide_background": wide[0],
        "style_acc_wide_background": wide[1],
        "heldout_wide_n": args.n_test // 2,
        "train_n": args.n_train,
        "epochs": args.epochs,
        "train_seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(meta), flush=True)
    save_classifiers(model, args.out, meta)
    print(f"wrote {args.out}")
    return meta


if __name__ == "__main__":
    main()
