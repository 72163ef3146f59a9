"""A bounded, thread-safe cache of loaded SAEs keyed by file version (no ComfyUI here)."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

from .checkpoint import LoadedSAE
from .errors import SAEError


def file_stamp(path: str) -> tuple:
    """The version of a file as far as the cache is concerned: an edit changes one of these."""
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size)


class SAECache:
    """Loaded SAEs by path, least recently used first out, bounded by count and by bytes
    (an SD-sized SAE is about 200 MB: unbounded, every SAE ever picked stayed in memory).
    An entry is valid for one (mtime, size) of its file, so an edited file is read again;
    failures are kept too (an SAEError, by the same key), so a broken file asked for by
    every UI refresh is not re-parsed each time. Thread-safe: the prompt worker and the
    route's executor threads both load."""

    def __init__(self, max_entries: int = 4, max_bytes: int = 1 << 30, max_failures: int = 64):
        self.max_entries, self.max_bytes, self.max_failures = max_entries, max_bytes, max_failures
        self._loaded: OrderedDict[str, tuple[tuple, LoadedSAE, int]] = OrderedDict()
        self._failed: OrderedDict[str, tuple[tuple, SAEError]] = OrderedDict()
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

    def get(self, path: str, stamp: tuple) -> LoadedSAE | None:
        """The cached SAE for this version of the file; re-raises its cached failure."""
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

    def put(self, path: str, stamp: tuple, loaded: LoadedSAE):
        size = sae_bytes(loaded)
        with self._lock:
            self._failed.pop(path, None)
            self._loaded[path] = (stamp, loaded, size)
            self._loaded.move_to_end(path)
            total = sum(n for _, _, n in self._loaded.values())
            # evict the least recently used; the newest stays even when it alone is over the byte bound
            while len(self._loaded) > 1 and (len(self._loaded) > self.max_entries or total > self.max_bytes):
                _, (_, _, n) = self._loaded.popitem(last=False)
                total -= n

    def put_failure(self, path: str, stamp: tuple, err: SAEError):
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
    return sum(t.numel() * t.element_size() for t in loaded.sae.parameters())


