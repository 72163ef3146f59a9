"""Train MiniCanvas-DiT, the Flux-layout demo model (resumable, CPU-friendly, background-safe).

    nice -n 19 python -m saemnesia_demo.train_dit --threads 1 \\
        --out models/minicanvas/demo_dit.safetensors --work scratch/minicanvas_dit [--hours H]
    python -m saemnesia_demo.train_dit --export-only

* Rectified flow (Flux's objective): ``x_t = (1 - t) x0 + t noise``, the model predicts
  ``noise - x0``; ``t`` is logit-normal, then shifted as ComfyUI's ModelSamplingFlux shifts the
  sampling schedule (``dit.SAMPLING["shift"]``), so training covers the noise levels sampling visits.
* Captions come from the `TRAIN` vocabulary only (``vocabulary.py``: its name templates, carrier
  sentences and synonyms, ``--captions`` distinct ones per object x style pair), never from `TEST`:
  the benchmark's test wordings stay unseen. 10% of captions are dropped to "" for CFG.
* Images, checkpoints (atomic, previous one kept), logs and the EMA export work as in
  ``train_diffusion`` (the UNet's trainer), whose helpers this reuses.
"""
from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data
from .dit import MiniFlux, default_config, save_dit, shifted
from .train_diffusion import _unflatten_opt, ema_update, image_pool, lr_factor, read_checkpoint, save_checkpoint
from .vocabulary import TRAIN


def caption_bank(per_pair: int, seed: int) -> list[list[str]]:
    """For each pair (object-major index), ``per_pair`` distinct `TRAIN` captions."""
    return [TRAIN.prompts_for(obj, style, per_pair, seed) for obj in data.OBJECTS for style in data.STYLES]


def caption_states(bank: list[list[str]], cache: Path) -> torch.Tensor:
    """``[pairs, per_pair, T, 384]`` MiniLM states of the bank, plus ``[1, 1, T, 384]`` for "" last
    along dim 0 (as ``[pairs + 1, per_pair, T, 384]`` with the empty prompt repeated)."""
    from safetensors.torch import load_file, save_file

    from .text_encoder import encode_prompts
    flat = [p for row in bank for p in row] + [""]
    if cache.exists():
        t = load_file(str(cache))
        if json.loads(bytes(t["prompts_json"].tolist()).decode()) == flat:
            return t["states"]
    chunks = [encode_prompts(flat[i:i + 256]) for i in range(0, len(flat), 256)]
    states = torch.cat(chunks).to(torch.float16)
    per = len(bank[0])
    table = torch.cat([states[:-1].reshape(len(bank), per, *states.shape[1:]),
                       states[-1:][None].expand(1, per, *states.shape[1:])])
    blob = torch.tensor(list(json.dumps(flat).encode()), dtype=torch.uint8)
    tmp = cache.with_name(cache.name + ".tmp")
    save_file({"states": table.contiguous(), "prompts_json": blob}, str(tmp))
    tmp.replace(cache)
    return table


def flow_loss(model: MiniFlux, x0: torch.Tensor, ctx: torch.Tensor, gen: torch.Generator, shift: float) -> torch.Tensor:
    b = x0.shape[0]
    u = torch.sigmoid(torch.randn(b, generator=gen)).clamp(1e-4, 1 - 1e-4)
    t = shifted(u, shift).float()
    noise = torch.randn(x0.shape, generator=gen)
    xt = (1 - t).view(b, 1, 1, 1) * x0 + t.view(b, 1, 1, 1) * noise
    return F.mse_loss(model(xt, t, ctx), noise - x0)


def main(argv=None) -> int:
    from .dit import SAMPLING
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/minicanvas/demo_dit.safetensors")
    ap.add_argument("--work", default="scratch/minicanvas_dit")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--max-steps", type=int, default=12000)
    ap.add_argument("--decay-frac", type=float, default=0.3)
    ap.add_argument("--hours", type=float, default=0.0, help="stop (and export) after this much training time; 0 = none")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--double", type=int, default=2)
    ap.add_argument("--single", type=int, default=2)
    ap.add_argument("--captions", type=int, default=48, help="distinct TRAIN captions per object x style pair")
    ap.add_argument("--pool", type=int, default=40000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--stop-after-steps", type=int, default=0, help="testing: exit without export after this many steps")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    ck = read_checkpoint(work)
    if ck is not None:
        tensors, state = ck
        config, hp = state["config"], state["hparams"]
    else:
        tensors, state = None, None
        config = default_config(args.hidden, args.heads, args.double, args.single)
        hp = {k: getattr(args, k) for k in ("batch", "lr", "warmup", "ema", "cfg_drop", "captions", "pool", "seed")}
        hp["shift"] = SAMPLING["shift"]
    torch.manual_seed(hp["seed"])
    model, ema = MiniFlux(config), MiniFlux(config)
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=0.01, betas=(0.9, 0.99))
    step, elapsed = 0, 0.0
    if tensors is not None:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        _unflatten_opt(opt, tensors)
        step, elapsed = int(state["step"]), float(state["elapsed"])
        print(f"[train-dit] resumed from step {step} ({elapsed / 60:.1f} min trained)", flush=True)
    else:
        ema.load_state_dict(model.state_dict())
    ema.eval().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())

    def export():
        save_dit(ema.state_dict(), out, config, {"steps": step, "seconds": round(elapsed, 1), "params": n_params,
                                                 "hparams": hp, "weights": "EMA", "dtype": "float16",
                                                 "captions": "TRAIN vocabulary (saemnesia_demo/vocabulary.py)"})
        print(f"[train-dit] exported EMA weights (step {step}) to {out}", flush=True)

    if args.export_only:
        if tensors is None:
            print(f"[train-dit] no checkpoint in {work}", flush=True)
            return 1
        export()
        return 0

    images, objs, styles = image_pool(work, hp["pool"], hp["seed"] + 1)
    table = caption_states(caption_bank(hp["captions"], hp["seed"]), work / "caption_states.safetensors")
    pair = objs * len(data.STYLES) + styles
    empty = table.shape[0] - 1
    print(f"[train-dit] MiniFlux {n_params / 1e6:.2f}M params, config {json.dumps(config)}", flush=True)

    stop = {"flag": False}

    def on_signal(signum, frame):
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        print(f"[train-dit] signal {signum}: saving and stopping after this step", flush=True)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def snapshot():
        save_checkpoint(work, model, ema, opt, {"arch": "dit", "step": step, "elapsed": elapsed, "config": config,
                                                "hparams": hp, "time": time.time()})

    model.train()
    last_ckpt, t_log = time.time(), time.time()
    run_steps, acc_loss, acc_n, done = 0, 0.0, 0, None
    log_path = work / "train_log.jsonl"
    try:
        while True:
            if step >= args.max_steps:
                done = "max_steps"
                break
            if args.hours and elapsed >= args.hours * 3600:
                done = "hours"
                break
            t_step = time.time()
            gen = torch.Generator().manual_seed(hp["seed"] * 1_000_003 + step)
            idx = torch.randint(0, images.shape[0], (hp["batch"],), generator=gen)
            x0 = data.from_uint8(images[idx])
            flip = torch.rand(hp["batch"], generator=gen) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
            row = torch.where(torch.rand(hp["batch"], generator=gen) < hp["cfg_drop"], empty, pair[idx])
            col = torch.randint(0, table.shape[1], (hp["batch"],), generator=gen)
            ctx = table[row, col].float()
            lr = hp["lr"] * lr_factor(step, hp["warmup"], args.max_steps, args.decay_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = flow_loss(model, x0, ctx, gen, hp["shift"])
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
                print(f"[train-dit] {json.dumps(rec)}", flush=True)
                acc_loss, acc_n, t_log = 0.0, 0, now
            if stop["flag"] or (args.stop_after_steps and run_steps >= args.stop_after_steps):
                break
            if time.time() - last_ckpt >= args.ckpt_minutes * 60:
                snapshot()
                last_ckpt = time.time()
        snapshot()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if done:
        export()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
