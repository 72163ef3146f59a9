"""A bounded, thread-safe cache of what was read from SAE files, keyed by the files' content
(no ComfyUI here)."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable

from .checkpoint import MAX_SAE_BYTES, LoadedSAE, SAEPlan
from .errors import SAEError
from .fileio import content_fingerprint


def sae_fingerprint(path: str) -> str:
    """The version of an SAE as far as every cache is concerned (this one, and ComfyUI's through
    Load SAE's fingerprint_inputs): the content of its file, and of the cfg.json beside it or in its
    folder (a sparsify SAE), never its time or size alone. Raises OSError when it cannot be read."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    files = [os.path.join(path, "sae.safetensors")] if os.path.isdir(path) else [path]
    cfg = os.path.join(folder, "cfg.json")
    if os.path.isfile(cfg):
        files.append(cfg)
    return "-".join(content_fingerprint(f) for f in files)


class SAECache:
    """Values read from SAE files, by path, least recently used first out, bounded by count and by
    bytes (an SD-sized SAE is about 200 MB: unbounded, every SAE ever picked stayed in memory). A
    value larger than the byte bound alone is handed out but never kept: the cache holds at most
    max_bytes at any time (the loader refuses SAEs above MAX_SAE_BYTES, the default bound, so every
    SAE it loads fits). An entry is valid for one fingerprint of its file (sae_fingerprint), so a
    replaced file is read again; failures are kept too (an SAEError, by the same key), so a broken
    file asked for by every UI refresh is not re-parsed each time. Thread-safe: the prompt worker
    and the route's executor threads both load."""

    def __init__(self, max_entries: int = 4, max_bytes: int = MAX_SAE_BYTES, max_failures: int = 64,
                 size_of: Callable[[object], int] | None = None):
        self.max_entries, self.max_bytes, self.max_failures = max_entries, max_bytes, max_failures
        self.size_of = size_of or sae_bytes
        self._loaded: OrderedDict[str, tuple[str, object, int]] = OrderedDict()
        self._failed: OrderedDict[str, tuple[str, SAEError]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(n for _, _, n in self._loaded.values())

    def __len__(self):
        with self._lock:
            return len(self._loaded)

    def __contains__(self, path):
        with self._lock:
            return path in self._loaded

    def get(self, path: str, stamp: str):
        """The cached value for this version of the file; re-raises its cached failure."""
        with self._lock:
            hit = self._loaded.get(path)
            if hit and hit[0] == stamp:
                self._loaded.move_to_end(path)
                return hit[1]
            failed = self._failed.get(path)
        if failed and failed[0] == stamp:
            err = failed[1]
            raise type(err)(*err.args)  # a fresh exception: the cached one keeps no traceback chain
        return None

    def put(self, path: str, stamp: str, value):
        size = self.size_of(value)
        with self._lock:
            self._failed.pop(path, None)
            self._loaded.pop(path, None)  # an older version of the file goes either way
            if size > self.max_bytes:
                return  # kept by no one but its user: the bound holds
            self._loaded[path] = (stamp, value, size)
            total = sum(n for _, _, n in self._loaded.values())
            while len(self._loaded) > self.max_entries or total > self.max_bytes:
                _, (_, _, n) = self._loaded.popitem(last=False)  # the least recently used
                total -= n

    def put_failure(self, path: str, stamp: str, err: SAEError):
        with self._lock:
            self._loaded.pop(path, None)
            self._failed[path] = (stamp, err)
            self._failed.move_to_end(path)
            while len(self._failed) > self.max_failures:
                self._failed.popitem(last=False)

    def pop(self, path: str, default=None):
        with self._lock:
            self._failed.pop(path, None)
            hit = self._loaded.pop(path, None)
        return hit[1] if hit else default

    def clear(self):
        with self._lock:
            self._loaded.clear()
            self._failed.clear()


def sae_bytes(loaded: LoadedSAE) -> int:
    """What a loaded SAE holds in memory: the weights of every SAE of the file (a set has one per
    block) and the concepts' mean states and handover maps."""
    tensors = [t for member in loaded.blocks for t in member.sae.parameters()]
    for member in loaded.blocks:
        for c in member.index.concepts.values():
            tensors += [t for t in (c.state, c.handover) if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


def plan_bytes(plan: SAEPlan) -> int:
    """A rough size of what an SAE's plan (its header's concept index) holds: its concepts, each
    with a selection per timestep bucket."""
    return sum(200 + 100 * len(c.selections) for m in plan.members for c in m.index.concepts.values())
