"""Retries with back-off around any backend: the one retry layer every remote store is used through.

Only `TransientStoreError` is retried (exponential back-off with full jitter); everything else
is reported at once. A conditional save whose earlier attempt failed transiently may have
landed with its response lost: when the retry is then refused (ObjectExists or
PreconditionFailed), the object is read back, and if it holds exactly the bytes we sent the
save succeeded. Without that, a lost response would turn our own write into a conflict.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .backend import ObjectInfo, StorageBackend
from .errors import ObjectExists, ObjectNotFound, PreconditionFailed, StoreError, TransientStoreError

T = TypeVar("T")

_COMPARE_CHUNK = 8 << 20


class RetryingBackend(StorageBackend):
    """Wraps `inner`; each operation gets up to `attempts` tries on transient errors."""

    def __init__(
        self,
        inner: StorageBackend,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self.location = inner.location
        self.is_local = inner.is_local
        self.no_cas = inner.no_cas
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self.retries = 0  # transient failures absorbed so far (for stats and tests)

    def _delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**attempt)]."""
        return random.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))

    def _run(self, fn: Callable[[], T], resolve: Callable[[StoreError], T] | None = None) -> T:
        failed_before = False
        for attempt in range(self.attempts):
            try:
                return fn()
            except TransientStoreError as exc:
                failed_before = True
                if attempt + 1 >= self.attempts:
                    raise TransientStoreError(f"{exc} (gave up after {self.attempts} attempts)") from None
                self.retries += 1
                self._sleep(self._delay(attempt))
            except (ObjectExists, PreconditionFailed) as exc:
                if failed_before and resolve is not None:
                    return resolve(exc)
                raise
        raise AssertionError("unreachable")

    # --- the contract ---------------------------------------------------------------

    def exists(self) -> bool:
        return self._run(self.inner.exists)

    def create(self) -> None:
        self._run(self.inner.create)

    def save(self, name: str, data: bytes, *, create_only: bool = False, if_match: str | None = None) -> str:
        def resolve(exc: StoreError) -> str:
            try:
                current, tag = self._run(lambda: self.inner.load_versioned(name))
            except ObjectNotFound:
                raise exc from None
            if current != data:
                raise exc
            return tag

        return self._run(
            lambda: self.inner.save(name, data, create_only=create_only, if_match=if_match), resolve
        )

    def save_file(self, name: str, local: Path, *, create_only: bool = False) -> str:
        def resolve(exc: StoreError) -> str:
            if not self._same_content(name, local):
                raise exc
            local.unlink()
            return ""  # the tag was lost with the response; immutable objects never need it

        return self._run(lambda: self.inner.save_file(name, local, create_only=create_only), resolve)

    def _same_content(self, name: str, local: Path) -> bool:
        size = local.stat().st_size
        try:
            if self._run(lambda: self.inner.stat(name)) != size:
                return False
        except ObjectNotFound:
            return False
        with open(local, "rb") as fh:
            for off in range(0, size, _COMPARE_CHUNK):
                mine = fh.read(_COMPARE_CHUNK)
                if mine != self.load(name, off, len(mine)):
                    return False
        return True

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._run(lambda: self.inner.load(name, offset, length))

    def load_bounded(self, name: str, limit: int) -> bytes:
        return self._run(lambda: self.inner.load_bounded(name, limit))

    def load_tagged(self, name: str, limit: int) -> tuple[bytes, str | None]:
        return self._run(lambda: self.inner.load_tagged(name, limit))

    def load_versioned(self, name: str) -> tuple[bytes, str]:
        return self._run(lambda: self.inner.load_versioned(name))

    def stat(self, name: str) -> int:
        return self._run(lambda: self.inner.stat(name))

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self._run(lambda: self.inner.list(prefix))

    def remove(self, name: str) -> None:
        self._run(lambda: self.inner.remove(name))

    def close(self) -> None:
        self.inner.close()
