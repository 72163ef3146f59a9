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
* Images, checkpoints (atomic, previous one kept), logs and the EMA export are ``trainer.train``'s,
  as for ``train_diffusion`` (the UNet's trainer); this module gives it the DiT, its captions and
  its loss.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data
from .dit import SAMPLING, MiniFlux, default_config, save_dit, shifted
from .trainer import ModelRecipe, train, training_parser
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


def caption_context(table: torch.Tensor, rows: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One of each row's captions at random: ``[B, T, 384]`` float."""
    col = torch.randint(0, table.shape[1], (rows.shape[0],), generator=gen)
    return table[rows, col].float()


def flow_loss(model: MiniFlux, x0: torch.Tensor, ctx: torch.Tensor, gen: torch.Generator, shift: float) -> torch.Tensor:
    b = x0.shape[0]
    u = torch.sigmoid(torch.randn(b, generator=gen)).clamp(1e-4, 1 - 1e-4)
    t = shifted(u, shift).float()
    noise = torch.randn(x0.shape, generator=gen)
    xt = (1 - t).view(b, 1, 1, 1) * x0 + t.view(b, 1, 1, 1) * noise
    return F.mse_loss(model(xt, t, ctx), noise - x0)


def main(argv=None) -> int:
    ap = training_parser(__doc__, out="models/minicanvas/demo_dit.safetensors", work="scratch/minicanvas_dit",
                         max_steps=12000, lr=5e-4, warmup=300)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--double", type=int, default=2)
    ap.add_argument("--single", type=int, default=2)
    ap.add_argument("--captions", type=int, default=48, help="distinct TRAIN captions per object x style pair")
    args = ap.parse_args(argv)
    return train(args, ModelRecipe(
        log_tag="train-dit", model_name="MiniFlux",
        new_config=lambda a: default_config(a.hidden, a.heads, a.double, a.single), build=MiniFlux,
        hparam_options=("captions", "pool", "seed"), fixed_hparams={"shift": SAMPLING["shift"]},
        save_export=save_dit,
        text_table=lambda work, hp: caption_states(caption_bank(hp["captions"], hp["seed"]),
                                                   work / "caption_states.safetensors"),
        context=caption_context,
        loss=lambda model, x0, ctx, gen, hp: flow_loss(model, x0, ctx, gen, hp["shift"]),
        checkpoint_fields={"arch": "dit"},
        export_notes={"captions": "TRAIN vocabulary (saemnesia_demo/vocabulary.py)"}))


if __name__ == "__main__":
    raise SystemExit(main())
