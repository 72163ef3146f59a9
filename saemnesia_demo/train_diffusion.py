"""Train the MiniCanvas demo UNet (resumable, CPU-friendly).

    python -m saemnesia_demo.train_diffusion \\
        --out models/minicanvas/demo_unet.safetensors --work scratch/minicanvas [--max-steps N] [--hours H]
    python -m saemnesia_demo.train_diffusion --out ... --work ... --export-only

* DDPM epsilon objective on SD1's discrete schedule, min-SNR-5 loss weighting,
  classifier-free guidance dropout (10% of prompts replaced by ""), AdamW, EMA.
* Text states for the 36 prompts and "" are computed once with the frozen MiniLM.
* Training images: a pool generated once (uint8, cached in --work), random h-flips.
* Every --ckpt-minutes the state (weights, EMA, optimizer, step) is written atomically
  to ``--work/last.safetensors`` (the previous one kept as ``prev.safetensors``); a
  restart resumes from the newest readable one. SIGINT/SIGTERM: finish the step, save,
  exit. Progress goes to ``--work/train_log.jsonl``.
* At the end (max steps / hours reached) or with --export-only the EMA weights are
  written (fp16) to --out with config and training record in the metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data
from .sampling import alphas_cumprod
from .unet import build_unet, default_config, save_unet

CKPT = "last.safetensors"
PREV = "prev.safetensors"


# ---------------------------------------------------------------------------
# checkpoint I/O (safetensors only)


def _flatten_opt(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for k, v in st.items():
            out[f"opt.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _unflatten_opt(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if not key.startswith("opt."):
            continue
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(work: Path, model, ema, opt, state: dict) -> Path:
    from safetensors.torch import save_file

    work.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().contiguous() for k, v in ema.state_dict().items()})
    tensors.update(_flatten_opt(opt))
    tmp = work / f"{CKPT}.tmp{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"train_state": json.dumps(state)})
    last = work / CKPT
    if last.exists():
        os.replace(last, work / PREV)
    os.chmod(tmp, 0o644)
    os.replace(tmp, last)
    return last


def read_checkpoint(work: Path) -> tuple[dict, dict] | None:
    """Newest readable checkpoint in ``work`` -> ``(tensors, state)``; None if there is none."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    for name in (CKPT, PREV):
        p = work / name
        if not p.exists():
            continue
        try:
            with safe_open(str(p), framework="pt") as f:
                state = json.loads((f.metadata() or {})["train_state"])
            return load_file(str(p)), state
        except Exception as e:  # a torn or foreign file: try the older one
            print(f"[train] skipping unreadable checkpoint {p}: {e}", flush=True)
    return None


# ---------------------------------------------------------------------------


def prompt_table(cache: Path | None = None) -> torch.Tensor:
    """``[37, T, 384]``: rows 0..35 = prompts (object-major), row 36 = the empty prompt."""
    from .text_encoder import encode_prompts

    prompts = [p for _, _, p in data.all_prompts()] + [""]
    if cache is not None and cache.exists():
        from safetensors.torch import load_file

        t = load_file(str(cache))
        if json.loads(t["prompts_json"].numpy().tobytes().decode()) == prompts:
            return t["states"]
    states = encode_prompts(prompts)
    if cache is not None:
        from safetensors.torch import save_file

        blob = torch.frombuffer(bytearray(json.dumps(prompts).encode()), dtype=torch.uint8)
        save_file({"states": states.contiguous(), "prompts_json": blob}, str(cache))
    return states


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


def train_step(model, x0, ctx, acp, gen, snr_gamma: float, autocast: bool) -> torch.Tensor:
    b = x0.shape[0]
    t = torch.randint(0, len(acp), (b,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    a = acp[t].view(b, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        pred = model(xt, t, encoder_hidden_states=ctx).sample
    per = F.mse_loss(pred.float(), noise, reduction="none").mean((1, 2, 3))
    if snr_gamma > 0:
        snr = acp[t] / (1 - acp[t])
        w = torch.clamp(snr, max=snr_gamma) / snr  # min-SNR-gamma for epsilon prediction
        return (per * w).mean()
    return per.mean()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/minicanvas/demo_unet.safetensors")
    ap.add_argument("--work", default="scratch/minicanvas")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--max-steps", type=int, default=7000)
    ap.add_argument("--decay-frac", type=float, default=0.3, help="lr decays linearly to 10%% over this last fraction of --max-steps")
    ap.add_argument("--hours", type=float, default=0.0, help="stop (and export) after this much training time; 0 = no limit")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--snr-gamma", type=float, default=5.0)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--pool", type=int, default=40000, help="training images generated once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CPUs with avx512_bf16/AMX)")
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--stop-after-steps", type=int, default=0, help="testing: exit without export after this many steps in this run")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "train_log.jsonl"

    ck = read_checkpoint(work)
    if ck is not None:
        tensors, state = ck
        config = state["config"]
        hp = state["hparams"]
    else:
        tensors, state = None, None
        config = default_config(args.width, args.heads)
        hp = {k: getattr(args, k) for k in ("batch", "lr", "warmup", "ema", "cfg_drop", "snr_gamma", "pool", "seed", "bf16")}

    torch.manual_seed(hp["seed"])
    model = build_unet(config)
    ema = build_unet(config)
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=0.01, betas=(0.9, 0.99))
    step, elapsed = 0, 0.0
    if tensors is not None:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        _unflatten_opt(opt, tensors)
        step, elapsed = int(state["step"]), float(state["elapsed"])
        print(f"[train] resumed from step {step} ({elapsed / 60:.1f} min trained)", flush=True)
    else:
        ema.load_state_dict(model.state_dict())
    ema.eval().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())

    def export():
        training = {
            "steps": step,
            "seconds": round(elapsed, 1),
            "params": n_params,
            "hparams": hp,
            "weights": "EMA",
            "dtype": "float16",
        }
        save_unet(ema.state_dict(), out, config, training)
        print(f"[train] exported EMA weights (step {step}) to {out}", flush=True)

    if args.export_only:
        if tensors is None:
            print(f"[train] no checkpoint in {work}", flush=True)
            return 1
        export()
        return 0

    images, objs, styles = image_pool(work, hp["pool"], hp["seed"] + 1)
    table = prompt_table(work / "prompt_states.safetensors")
    prompt_idx = objs * len(data.STYLES) + styles
    empty_idx = table.shape[0] - 1
    acp = alphas_cumprod()
    print(f"[train] UNet {n_params / 1e6:.2f}M params, config {json.dumps(config)}", flush=True)

    stop = {"flag": False}

    def on_signal(signum, frame):
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        print(f"[train] signal {signum}: saving and stopping after this step", flush=True)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def snapshot():
        st = {"step": step, "elapsed": elapsed, "config": config, "hparams": hp, "time": time.time()}
        save_checkpoint(work, model, ema, opt, st)

    model.train()
    last_ckpt = time.time()
    run_steps, acc_loss, acc_n = 0, 0.0, 0
    t_log = time.time()
    done_reason = None
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
            pidx = torch.where(torch.rand(hp["batch"], generator=gen) < hp["cfg_drop"], empty_idx, prompt_idx[idx])
            ctx = table[pidx]
            lr = hp["lr"] * lr_factor(step, hp["warmup"], args.max_steps, args.decay_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = train_step(model, x0, ctx, acp, gen, hp["snr_gamma"], hp["bf16"])
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
                rec = {
                    "step": step,
                    "loss": round(acc_loss / acc_n, 5),
                    "lr": lr,
                    "elapsed_s": round(elapsed, 1),
                    "steps_per_s": round(acc_n / (now - t_log), 4),
                    "wall": round(now, 1),
                }
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"[train] {json.dumps(rec)}", flush=True)
                acc_loss, acc_n, t_log = 0.0, 0, now
            if stop["flag"]:
                break
            if args.stop_after_steps and run_steps >= args.stop_after_steps:
                break
            if time.time() - last_ckpt >= args.ckpt_minutes * 60:
                snapshot()
                last_ckpt = time.time()
        snapshot()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if done_reason:
        export()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
