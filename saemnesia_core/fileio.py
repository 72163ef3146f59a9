"""Atomic file writes: a crash or a cancel never leaves a half-written file in place."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager

import torch
from safetensors.torch import save_file


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str):
    """Yield a temp path in the same folder; on success it replaces `path` in one rename."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes 0600 and some writers (safetensors) re-create the file, so the mode is set
        # here, after writing: what a plain open() would give under the current umask
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None):
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def save_json_atomic(obj, path: str):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)


def copy_atomic(src: str, dst: str):
    import shutil
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
