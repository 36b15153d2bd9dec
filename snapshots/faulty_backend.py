"""A fault-injecting wrapper, for tests: fails chosen calls of chosen operations.

The seam stands for the network and the server: a transient fault is what a reset, a timeout
or a 503 looks like after the backend classified it; a permanent one is a 403. With
`after_call=True` the inner call runs first and its result is thrown away, which is what a
response lost on the way back looks like (the write landed, the caller cannot know).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Literal, TypeVar

from .backend import ObjectInfo, StorageBackend
from .errors import PermanentStoreError, TransientStoreError

T = TypeVar("T")

OPERATIONS = frozenset(
    {"exists", "create", "save", "save_file", "load", "load_versioned", "stat", "list", "remove"}
)


class FaultyBackend(StorageBackend):
    """Counts calls to `ops` (1-based, across threads) and fails call number `fail_at`, the
    `count - 1` calls after it, and, with `every`, the same run again every `every` calls."""

    def __init__(
        self,
        inner: StorageBackend,
        fail_at: int,
        kind: Literal["transient", "permanent"] = "transient",
        ops: Collection[str] = OPERATIONS,
        *,
        count: int = 1,
        every: int | None = None,
        after_call: bool = False,
    ) -> None:
        unknown = set(ops) - OPERATIONS
        if unknown or fail_at < 1 or count < 1 or (every is not None and every < count):
            raise ValueError(f"bad fault plan: ops {sorted(unknown)}, fail_at {fail_at}, count {count}")
        self.inner = inner
        self.location = inner.location
        self.is_local = inner.is_local
        self.fail_at = fail_at
        self.kind = kind
        self.ops = frozenset(ops)
        self.count = count
        self.every = every
        self.after_call = after_call
        self.calls = 0  # calls of `ops` so far
        self.faults: list[tuple[int, str, str]] = []  # (call number, operation, name) of each fault
        self._lock = threading.Lock()

    def _should_fail(self, op: str, name: str) -> bool:
        if op not in self.ops:
            return False
        with self._lock:
            self.calls += 1
            n = self.calls - self.fail_at
            if n < 0:
                return False
            if self.every is not None:
                n %= self.every
            if n >= self.count:
                return False
            self.faults.append((self.calls, op, name))
            return True

    def _fault(self, op: str, name: str) -> Exception:
        where = f"{self.location}/{name}" if name else self.location
        if self.kind == "permanent":
            return PermanentStoreError(f"cannot {op} {where}: access denied (injected fault)")
        return TransientStoreError(f"cannot {op} {where}: the connection broke (injected fault)")

    def _call(self, op: str, name: str, fn: Callable[[], T]) -> T:
        if not self._should_fail(op, name):
            return fn()
        if self.after_call:
            with contextlib.suppress(Exception):  # the response is "lost" either way
                fn()
        raise self._fault(op, name)

    # --- the contract ---------------------------------------------------------------

    def exists(self) -> bool:
        return self._call("exists", "", self.inner.exists)

    def create(self) -> None:
        self._call("create", "", self.inner.create)

    def save(self, name: str, data: bytes, *, create_only: bool = False, if_match: str | None = None) -> str:
        return self._call(
            "save", name, lambda: self.inner.save(name, data, create_only=create_only, if_match=if_match)
        )

    def save_file(self, name: str, local: Path, *, create_only: bool = False) -> str:
        if not self._should_fail("save_file", name):
            return self.inner.save_file(name, local, create_only=create_only)
        if self.after_call:  # the upload lands and the local file stays, as when a response is lost
            with contextlib.suppress(Exception):
                self.inner.save(name, local.read_bytes(), create_only=create_only)
        raise self._fault("save_file", name)

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call("load", name, lambda: self.inner.load(name, offset, length))

    def load_versioned(self, name: str) -> tuple[bytes, str]:
        return self._call("load_versioned", name, lambda: self.inner.load_versioned(name))

    def stat(self, name: str) -> int:
        return self._call("stat", name, lambda: self.inner.stat(name))

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self._call("list", prefix, lambda: self.inner.list(prefix))

    def remove(self, name: str) -> None:
        self._call("remove", name, lambda: self.inner.remove(name))

    def close(self) -> None:
        self.inner.close()
