"""Atomic file writes: a crash, a cancel or a full disk never leaves a half-written file in place,
and a write that fails says why in words (WriteFailed). And content fingerprints of files read."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import struct
import tempfile
from contextlib import contextmanager

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from .errors import WriteFailed


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str):
    """Yield a temp path in the same folder; on success it replaces `path` in one rename."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        os.close(fd)
        yield tmp
        # mkstemp makes 0600 and some writers (safetensors) re-create the file, so the mode is set
        # here, after writing: what a plain open() would give under the current umask
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        raise write_failure(path, e) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


_OS_ERROR = re.compile(r"os error (\d+)")  # how safetensors (Rust) reports the OS error of a failed write
_WHY = {errno.ENOSPC: ("the disk is full", "Free space on that disk, or point the folder at another disk "
                                           "(extra_model_paths.yaml for model folders), then queue again."),
        errno.EDQUOT: ("your disk quota is used up", "Free space within your quota, then queue again."),
        errno.EFBIG: ("the file is larger than this file system or a process limit allows",
                      "Save to a folder on another file system, or raise the limit, then queue again."),
        errno.EACCES: ("permission denied", "Make the folder writable for the user ComfyUI runs as, then queue again."),
        errno.EPERM: ("permission denied", "Make the folder writable for the user ComfyUI runs as, then queue again."),
        errno.EROFS: ("the file system is read-only", "Point the folder at a writable disk, then queue again.")}


def write_failure(path: str, error: Exception) -> WriteFailed:
    """A failed write as words: what happened (full disk, permission, read-only, ...) and the fix,
    from the OS error whether Python (OSError) or safetensors (its message) reports it."""
    code = getattr(error, "errno", None)
    if code is None:
        m = _OS_ERROR.search(str(error))
        code = int(m.group(1)) if m else None
    reason, fix = _WHY.get(code, (os.strerror(code) if code else f"the write failed ({type(error).__name__})",
                                  "Check the folder and the disk, then queue again."))
    return WriteFailed(path, reason, fix)


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


# Content fingerprints: what a file holds, not when it was written (cp -p and rsync -a keep a
# replaced file's time and size). Files up to WHOLE_FILE_HASH_BYTES are hashed whole; larger ones by
# their size, their whole safetensors header (the metadata: concept index, training record) and
# SAMPLE_CHUNKS evenly spaced chunks of the rest, about 4 MiB read in all: milliseconds for an
# SD-sized SAE (210 MB) that a whole hash would take a third of a second for on every queue. What a
# sample can miss is an in-place edit of a few weight bytes between samples that keeps the header and
# size, which no tool that replaces an SAE does.
WHOLE_FILE_HASH_BYTES = 32 << 20
SAMPLE_CHUNKS, SAMPLE_CHUNK_BYTES = 256, 16 << 10
_HEADER_LIMIT = 100 << 20  # safetensors' own header limit


def content_fingerprint(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(size.to_bytes(8, "little"))
        if size <= WHOLE_FILE_HASH_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return h.hexdigest()
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        start = 8 + n if n <= min(_HEADER_LIMIT, size - 8) else 1 << 20
        f.seek(0)
        h.update(f.read(start))
        span = max(size - start - SAMPLE_CHUNK_BYTES, 0)
        for i in range(SAMPLE_CHUNKS + 1):  # the first starts after the header, the last ends at the end
            f.seek(start + span * i // SAMPLE_CHUNKS)
            h.update(f.read(SAMPLE_CHUNK_BYTES))
    return h.hexdigest()
