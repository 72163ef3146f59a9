"""The demo models' files (UNet and DiT alike), safetensors only.

* An export: the weights (fp16 by default) and one JSON metadata entry under the model's key
  (``unet.META_KEY`` / ``dit.META_KEY``).
* A training checkpoint in the work folder: ``last.safetensors`` (the one before it kept as
  ``prev.safetensors``) with the tensors ``model.*``, ``ema.*`` and ``opt.<param id>.<name>`` and
  the metadata ``train_state`` (JSON: step, elapsed, config, hparams, ...). Runs resume from these
  files, so their names and layout stay as they are.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

CKPT = "last.safetensors"
PREV = "prev.safetensors"
MODEL_PREFIX, EMA_PREFIX, OPTIMIZER_PREFIX = "model.", "ema.", "opt."


def save_export(state_dict: dict, path: str | os.PathLike, meta_key: str, metadata: dict,
                dtype: torch.dtype = torch.float16) -> None:
    """Write ``state_dict`` as ``dtype`` with ``metadata`` (JSON) under ``meta_key``, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state_dict.items()}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={meta_key: json.dumps(metadata)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, named without it."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def ema_weights(checkpoint_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A training checkpoint's EMA weights, named as in an export."""
    return with_prefix(checkpoint_tensors, EMA_PREFIX)


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for param_id, param_state in opt.state_dict()["state"].items():
        for name, v in param_state.items():
            out[f"{OPTIMIZER_PREFIX}{param_id}.{name}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if not key.startswith(OPTIMIZER_PREFIX):
            continue
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(work: Path, model, ema, opt, state: dict) -> Path:
    from safetensors.torch import save_file

    work.mkdir(parents=True, exist_ok=True)
    tensors = {f"{MODEL_PREFIX}{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"{EMA_PREFIX}{k}": v.detach().contiguous() for k, v in ema.state_dict().items()})
    tensors.update(optimizer_tensors(opt))
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


def load_checkpoint(tensors: dict[str, torch.Tensor], model, ema, opt) -> None:
    """Put a checkpoint's tensors back into the model, its EMA copy and the optimizer."""
    model.load_state_dict(with_prefix(tensors, MODEL_PREFIX))
    ema.load_state_dict(with_prefix(tensors, EMA_PREFIX))
    load_optimizer_tensors(opt, tensors)
