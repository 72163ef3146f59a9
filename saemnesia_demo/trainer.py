"""The training run both demo trainers share (``train_diffusion``: the UNet, ``train_dit``: the DiT).

A trainer names what is its own in a :class:`ModelRecipe` (model, config, text conditioning, loss,
export) and calls :func:`train`, which does the rest the same way for both:

* a pool of training images generated once (uint8, cached in the work folder), random h-flips;
  each image's caption row is its object x style pair, replaced by "" (the last row) for the
  ``cfg_drop`` fraction (classifier-free guidance);
* AdamW, linear warm-up and a linear decay to 10% at the end (:func:`lr_factor`), gradient
  clipping at 1, EMA with a warm-up ``(1 + step) / (10 + step)``;
* every ``--ckpt-minutes`` a checkpoint (``weights.py``), resumed from on restart with the
  hyper-parameters it was started with; SIGINT/SIGTERM: finish the step, save, exit (a second
  signal interrupts at once); progress to ``train_log.jsonl`` in the work folder;
* at ``--max-steps`` or ``--hours`` (or with ``--export-only``) the EMA weights are exported.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import data
from .weights import load_checkpoint, read_checkpoint, save_checkpoint

LOG_NAME = "train_log.jsonl"
SHARED_HPARAMS = ("batch", "lr", "warmup", "ema", "cfg_drop")


def training_parser(description: str, *, out: str, work: str, max_steps: int, lr: float,
                    warmup: int) -> argparse.ArgumentParser:
    """A parser with the command-line options :func:`train` reads, with this trainer's defaults;
    the trainer adds its model's own."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=out)
    ap.add_argument("--work", default=work)
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--max-steps", type=int, default=max_steps)
    ap.add_argument("--decay-frac", type=float, default=0.3, help="lr decays linearly to 10%% over this last fraction of --max-steps")
    ap.add_argument("--hours", type=float, default=0.0, help="stop (and export) after this much training time; 0 = no limit")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--pool", type=int, default=40000, help="training images generated once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--stop-after-steps", type=int, default=0, help="testing: exit without export after this many steps in this run")
    return ap


@dataclass(frozen=True)
class ModelRecipe:
    """What one demo trainer does its own way; :func:`train` does the rest."""

    log_tag: str  # printed as "[log_tag] ..."
    model_name: str  # in the start-up line
    new_config: Callable[[argparse.Namespace], dict]  # the model config of a fresh run, from the options
    build: Callable[[dict], torch.nn.Module]
    # the hyper-parameters a fresh run records from its options after SHARED_HPARAMS, in this order
    # (then fixed_hparams); a resumed run keeps the ones it was started with
    hparam_options: tuple[str, ...]
    save_export: Callable[[dict, Path, dict, dict], None]  # (EMA state dict, path, config, training record)
    # (work folder, hparams) -> text states, one row per object x style pair and "" as the last row
    text_table: Callable[[Path, dict], torch.Tensor]
    # (text table, caption rows [B], generator) -> the batch's text conditioning
    context: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
    # (model, x0, context, generator, hparams) -> loss
    loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Generator, dict], torch.Tensor]
    fixed_hparams: dict = field(default_factory=dict)
    checkpoint_fields: dict = field(default_factory=dict)  # first in each checkpoint's train_state
    export_notes: dict = field(default_factory=dict)  # last in the export's training record


def image_pool(work: Path, n: int, seed: int):
    """Training images (uint8) + labels, generated once and cached in the work folder."""
    from safetensors.torch import load_file, save_file

    p = work / f"pool_{n}_{seed}.safetensors"
    if p.exists():
        t = load_file(str(p))
        return t["images"], t["objects"], t["styles"]
    t0 = time.time()
    x, o, s = data.make_dataset(n, seed)
    x = data.to_uint8(x)
    work.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    save_file({"images": x, "objects": o, "styles": s}, str(tmp))
    os.replace(tmp, p)
    print(f"[train] generated {n} training images in {time.time() - t0:.0f}s", flush=True)
    return x, o, s


@torch.no_grad()
def ema_update(ema, model, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def lr_factor(step: int, warmup: int, max_steps: int, decay_frac: float) -> float:
    """Linear warm-up, constant, then linear decay to 10% over the last ``decay_frac`` of ``max_steps``."""
    f = min(1.0, (step + 1) / max(1, warmup))
    start = max_steps * (1 - decay_frac)
    if decay_frac > 0 and step >= start:
        f *= 1 - 0.9 * min(1.0, (step - start) / max(1.0, max_steps - start))
    return f


def train(args: argparse.Namespace, recipe: ModelRecipe) -> int:
    """Train (or resume, or with ``--export-only`` export) as the module docstring says; 0 on success."""
    tag = f"[{recipe.log_tag}]"
    torch.set_num_threads(max(1, args.threads))
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / LOG_NAME

    ck = read_checkpoint(work)
    if ck is not None:
        tensors, state = ck
        config, hp = state["config"], state["hparams"]
    else:
        tensors, state = None, None
        config = recipe.new_config(args)
        names = SHARED_HPARAMS + recipe.hparam_options
        hp = {k: getattr(args, k) for k in names} | recipe.fixed_hparams

    torch.manual_seed(hp["seed"])
    model, ema = recipe.build(config), recipe.build(config)
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=0.01, betas=(0.9, 0.99))
    step, elapsed = 0, 0.0
    if tensors is not None:
        load_checkpoint(tensors, model, ema, opt)
        step, elapsed = int(state["step"]), float(state["elapsed"])
        print(f"{tag} resumed from step {step} ({elapsed / 60:.1f} min trained)", flush=True)
    else:
        ema.load_state_dict(model.state_dict())
    ema.eval().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())

    def export():
        training = {"steps": step, "seconds": round(elapsed, 1), "params": n_params, "hparams": hp,
                    "weights": "EMA", "dtype": "float16", **recipe.export_notes}
        recipe.save_export(ema.state_dict(), out, config, training)
        print(f"{tag} exported EMA weights (step {step}) to {out}", flush=True)

    if args.export_only:
        if tensors is None:
            print(f"{tag} no checkpoint in {work}", flush=True)
            return 1
        export()
        return 0

    images, objs, styles = image_pool(work, hp["pool"], hp["seed"] + 1)
    table = recipe.text_table(work, hp)
    pair = objs * len(data.STYLES) + styles
    empty = table.shape[0] - 1
    print(f"{tag} {recipe.model_name} {n_params / 1e6:.2f}M params, config {json.dumps(config)}", flush=True)

    stop = {"flag": False}

    def on_signal(signum, frame):
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        print(f"{tag} signal {signum}: saving and stopping after this step", flush=True)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def snapshot():
        save_checkpoint(work, model, ema, opt, {**recipe.checkpoint_fields, "step": step, "elapsed": elapsed,
                                                "config": config, "hparams": hp, "time": time.time()})

    model.train()
    last_ckpt, t_log = time.time(), time.time()
    run_steps, acc_loss, acc_n, done_reason = 0, 0.0, 0, None
    try:
        while True:
            if step >= args.max_steps:
                done_reason = "max_steps"
                break
            if args.hours and elapsed >= args.hours * 3600:
                done_reason = "hours"
                break
            t_step = time.time()
            gen = torch.Generator().manual_seed(hp["seed"] * 1_000_003 + step)
            idx = torch.randint(0, images.shape[0], (hp["batch"],), generator=gen)
            x0 = data.from_uint8(images[idx])
            flip = torch.rand(hp["batch"], generator=gen) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
            rows = torch.where(torch.rand(hp["batch"], generator=gen) < hp["cfg_drop"], empty, pair[idx])
            ctx = recipe.context(table, rows, gen)
            lr = hp["lr"] * lr_factor(step, hp["warmup"], args.max_steps, args.decay_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = recipe.loss(model, x0, ctx, gen, hp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            ema_update(ema, model, min(hp["ema"], (1 + step) / (10 + step)))
            elapsed += time.time() - t_step
            run_steps += 1
            acc_loss += float(loss.detach())
            acc_n += 1
            if step % args.log_every == 0:
                now = time.time()
                rec = {"step": step, "loss": round(acc_loss / acc_n, 5), "lr": lr, "elapsed_s": round(elapsed, 1),
                       "steps_per_s": round(acc_n / (now - t_log), 4), "wall": round(now, 1)}
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{tag} {json.dumps(rec)}", flush=True)
                acc_loss, acc_n, t_log = 0.0, 0, now
            if stop["flag"] or (args.stop_after_steps and run_steps >= args.stop_after_steps):
                break
            if time.time() - last_ckpt >= args.ckpt_minutes * 60:
                snapshot()
                last_ckpt = time.time()
        snapshot()
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
    if done_reason:
        export()
    return 0
