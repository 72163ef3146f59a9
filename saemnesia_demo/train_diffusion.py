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

The run itself (images, checkpoints, signals, logs, EMA, export) is ``trainer.train``, shared with
``train_dit``; this module gives it the UNet, its prompt table and its loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data
from .sampling import alphas_cumprod
from .trainer import ModelRecipe, train, training_parser
from .unet import build_unet, default_config, save_unet


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
    ap = training_parser(__doc__, out="models/minicanvas/demo_unet.safetensors", work="scratch/minicanvas",
                         max_steps=7000, lr=1e-3, warmup=200)
    ap.add_argument("--snr-gamma", type=float, default=5.0)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CPUs with avx512_bf16/AMX)")
    args = ap.parse_args(argv)
    acp = alphas_cumprod()
    return train(args, ModelRecipe(
        log_tag="train", model_name="UNet",
        new_config=lambda a: default_config(a.width, a.heads), build=build_unet,
        hparam_options=("snr_gamma", "pool", "seed", "bf16"),
        save_export=save_unet,
        text_table=lambda work, hp: prompt_table(work / "prompt_states.safetensors"),
        context=lambda table, rows, gen: table[rows],
        loss=lambda model, x0, ctx, gen, hp: train_step(model, x0, ctx, acp, gen, hp["snr_gamma"], hp["bf16"])))


if __name__ == "__main__":
    raise SystemExit(main())
