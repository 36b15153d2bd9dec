"""Blob reads from a remote store's packs in aligned windows, not one request per blob.

Extract, restore and verify read blobs of 16-256 KiB in pack order; against S3 a request
per blob costs a round trip each. `WindowReader` fetches the aligned window (4 MiB) around
a blob once, shared by the reader threads (a window being fetched is waited for, not
fetched twice), and keeps the few most recent. Packs are immutable (named by their hash),
so a cached window is never stale. A blob straddling a window boundary is read alone.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future

from .backend import StorageBackend
from .errors import StoreError

WINDOW = 4 << 20
KEEP = 8


class WindowReader:
    """`load(name, offset, length)` of immutable objects of `backend`, through windows."""

    def __init__(self, backend: StorageBackend, window: int = WINDOW, keep: int = KEEP) -> None:
        self.backend = backend
        self.window = window
        self.keep = keep
        self._lock = threading.Lock()
        self._windows: OrderedDict[tuple[str, int], Future[bytes]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.requests = 0  # range requests sent (for the benchmark)

    def load(self, name: str, offset: int, length: int) -> bytes:
        start = offset - offset % self.window
        if offset + length > start + self.window or length <= 0:
            self.requests += 1
            return self.backend.load(name, offset, length)
        data = self._fetch(name, start)
        piece = data[offset - start : offset - start + length]
        if len(piece) != length:
            raise StoreError(f"{name} in store {self.backend.location} is truncated")
        return piece

    def _fetch(self, name: str, start: int) -> bytes:
        key = (name, start)
        with self._lock:
            fut = self._windows.get(key)
            mine = fut is None
            if fut is None:
                fut = self._windows[key] = Future()
                while len(self._windows) > self.keep:
                    self._windows.popitem(last=False)
            else:
                self._windows.move_to_end(key)
        if mine:
            try:
                size = self._sizes.get(name)
                if size is None:
                    size = self._sizes[name] = self.backend.stat(name)
                self.requests += 1
                fut.set_result(self.backend.load(name, start, max(0, min(self.window, size - start))))
            except BaseException as exc:
                with self._lock:
                    if self._windows.get(key) is fut:
                        del self._windows[key]
                fut.set_exception(exc)
                raise
        return fut.result()

    def forget(self) -> None:
        """Drop every window and size (another process's gc may have replaced packs)."""
        with self._lock:
            self._windows.clear()
            self._sizes.clear()
