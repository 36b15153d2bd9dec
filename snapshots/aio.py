"""asyncio for SnapshotManager: the blocking work in a worker thread, safe to cancel.

Each call runs the synchronous method in the event loop's default executor, so the loop
keeps serving while a snapshot is read or a probe runs. Two rules make cancellation safe:

- A cancelled task waits for its worker thread before the `CancelledError` reaches it:
  when the call returns or raises, nothing of it still runs. A capture stops early at its
  next safe point (`capture.STOP`: a read block or a segment folder; nothing it wrote is
  referenced yet); other work (recover, a probe) runs to its end.
- What the worker finished for a task that was cancelled meanwhile is undone before the
  task hears of it: a guard that was entered is left again (the write intent removed, the
  write lock released). A snapshot that completed is whole and stays.

Guarded writes of one store in one event loop take turns through an `asyncio.Lock` (the
gate) before their worker asks for the database write lock, so a second one waits without
holding a thread and without the lock timeout of a thread that polls `flock`. The wait is
bounded by the same CHROMASNAP_LOCK_TIMEOUT as the write lock itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from .backend import lock_timeout
from .capture import STOP
from .errors import LockTimeout, UsageError, WriterBusy
from .local_backend import LocalBackend

if TYPE_CHECKING:
    from pathlib import Path

    from chromasnap.manifest import Snapshot

    from .backend import StorageBackend
    from .checker import HealthReport
    from .guard import WriteGuard
    from .restore import RecoverResult

T = TypeVar("T")
Progress = Callable[[int], None]


class SnapshotManager(Protocol):
    """What this module uses of the SnapshotManager (passed in: aio.py does not import
    manager.py, which imports it)."""

    backend: StorageBackend
    db_path: Path | None

    def before_write(
        self, reason: str = ..., tags: Sequence[str] = ..., note: str | None = ..., snapshot_reason: str = ...
    ) -> WriteGuard: ...

    def snapshot(
        self,
        reason: str = ...,
        tags: Sequence[str] = ...,
        note: str | None = ...,
        progress: Progress | None = ...,
        *,
        exclusive: bool = ...,
        wait: bool = ...,
    ) -> Snapshot: ...

    def recover(
        self,
        rollback_interrupted: bool = ...,
        reset: bool = ...,
        python: str | None = ...,
        timeout: float | None = ...,
    ) -> RecoverResult: ...

    def health(
        self, in_place: bool = ..., python: str | None = ..., timeout: float | None = ...
    ) -> HealthReport: ...

    def before_write_async(
        self, reason: str = ..., tags: Sequence[str] = ..., note: str | None = ..., snapshot_reason: str = ...
    ) -> contextlib.AbstractAsyncContextManager[Snapshot | None]: ...


_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)
_HELD: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "chromasnap_gates_held", default=frozenset()
)
"""The gates the current task holds (inside `async with before_write_async()`), and tasks
it created inside the block inherit them: their exclusive snapshots do not wait for it."""


def _gate_key(mgr: SnapshotManager) -> str:
    """The database write lock lives in the store: one gate per store."""
    if isinstance(mgr.backend, LocalBackend):
        return os.path.realpath(mgr.backend.location)
    return mgr.backend.location


def _gate(mgr: SnapshotManager) -> tuple[str, asyncio.Lock]:
    loop = asyncio.get_running_loop()
    key = _gate_key(mgr)
    gates = _GATES.setdefault(loop, {})
    return key, gates.setdefault(key, asyncio.Lock())


async def _enter_gate(mgr: SnapshotManager, gate: asyncio.Lock, wait: bool = True) -> None:
    if not wait and gate.locked():
        raise WriterBusy(
            f"skipped: a guarded write of this process holds the write lock of {mgr.db_path}; "
            "no snapshot taken (--no-wait)"
        )
    timeout = lock_timeout()
    try:
        async with asyncio.timeout(timeout):
            await gate.acquire()
    except TimeoutError:
        raise LockTimeout(
            f"another guarded write of this process holds the write lock of {mgr.db_path}; "
            f"gave up after {timeout:g}s"
        ) from None


async def run_in_worker(
    fn: Callable[[], T],
    stop: threading.Event | None = None,
    undo: Callable[[T], object] | None = None,
    executor: Executor | None = None,
) -> T:
    """`fn()` in `executor` (the loop's default one if None); cancellation waits for it.

    On cancellation `stop` is set (a capture in `fn` then stops at its next safe point),
    the thread is awaited, and if `fn` succeeded meanwhile `undo(result)` runs (to its end
    as well) before the `CancelledError` is re-raised."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    if stop is not None:
        ctx.run(STOP.set, stop)
    fut = loop.run_in_executor(executor, ctx.run, fn)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.wait({fut})  # never cancels fut itself
            break
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
            if stop is not None:
                stop.set()
    if cancelled is None:
        return fut.result()
    if not fut.cancelled() and fut.exception() is None and undo is not None:
        result = fut.result()
        await run_in_worker(lambda: undo(result), executor=executor)
    raise cancelled


class AsyncWriteGuard(contextlib.AbstractAsyncContextManager["Snapshot | None"]):
    """`async with mgr.before_write_async(reason=...)`: `before_write` for asyncio.

    Entering waits for the gate (the store's guarded writes in this loop, in turn), then
    runs `WriteGuard.__enter__` in a worker thread (write lock, pre-write snapshot, write
    intent); leaving runs `WriteGuard.__exit__` in the same thread, the guard's own for
    the block's duration: the locks are re-entrant per thread (backend.py), so no other
    work may run in the thread that holds them. A task cancelled while entering leaves no
    intent and no held lock; one cancelled while leaving still leaves cleanly."""

    def __init__(self, guard: WriteGuard) -> None:
        self.guard = guard
        self.snapshot: Snapshot | None = None
        self._gate: asyncio.Lock | None = None
        self._token: contextvars.Token[frozenset[str]] | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> Snapshot | None:
        mgr = cast("SnapshotManager", self.guard.mgr)  # guard.py types it by what it uses
        key, gate = _gate(mgr)
        if key in _HELD.get():
            raise UsageError(
                f"before_write_async inside a guarded write of the store {mgr.backend.location} "
                "in the same task (or one started inside its block) would wait for itself; "
                "write inside the outer block"
            )
        await _enter_gate(mgr, gate)
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromasnap-guard")
        try:
            self.snapshot = await run_in_worker(
                self.guard.__enter__,
                stop=threading.Event(),
                undo=lambda _snap: self.guard.__exit__(None, None, None),
                executor=thread,
            )
        except BaseException:
            thread.shutdown(wait=False)
            gate.release()
            raise
        self._gate, self._thread = gate, thread
        self._token = _HELD.set(_HELD.get() | {key})
        return self.snapshot

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._gate is not None and self._token is not None and self._thread is not None
        try:
            await run_in_worker(lambda: self.guard.__exit__(et, ev, tb), executor=self._thread)
        finally:
            self._thread.shutdown(wait=False)
            _HELD.reset(self._token)
            self._gate.release()
            self._gate = self._token = self._thread = None


def before_write(
    mgr: SnapshotManager, reason: str, tags: Sequence[str], note: str | None, snapshot_reason: str
) -> AsyncWriteGuard:
    return AsyncWriteGuard(mgr.before_write(reason, tags, note, snapshot_reason))


async def snapshot(
    mgr: SnapshotManager,
    reason: str = "manual",
    tags: Sequence[str] = (),
    note: str | None = None,
    progress: Progress | None = None,
    *,
    exclusive: bool = False,
    wait: bool = True,
) -> Snapshot:
    """`SnapshotManager.snapshot` in a worker thread. Cancelled mid-capture, it stores
    nothing that is referenced; an `exclusive` one takes its turn at the gate first
    (unless the task is inside a guarded write of the store already)."""

    def take() -> Snapshot:
        return mgr.snapshot(reason, tags, note, progress, exclusive=exclusive, wait=wait)

    key, gate = _gate(mgr)
    if not exclusive or key in _HELD.get():
        return await run_in_worker(take, stop=threading.Event())
    await _enter_gate(mgr, gate, wait)
    try:
        return await run_in_worker(take, stop=threading.Event())
    finally:
        gate.release()


async def recover(
    mgr: SnapshotManager,
    rollback_interrupted: bool = True,
    reset: bool = False,
    python: str | None = None,
    timeout: float | None = None,
) -> RecoverResult:
    """`SnapshotManager.recover` in a worker thread, after the store's guarded writes of
    this loop. A cancelled task waits for it to finish (a restore is never cut short)."""
    key, gate = _gate(mgr)
    if key in _HELD.get():
        raise UsageError("recover_async inside a guarded write of the same store; call it at start-up")
    await _enter_gate(mgr, gate)
    try:
        return await run_in_worker(lambda: mgr.recover(rollback_interrupted, reset, python, timeout))
    finally:
        gate.release()


async def health(
    mgr: SnapshotManager, in_place: bool = False, python: str | None = None, timeout: float | None = None
) -> HealthReport:
    """`SnapshotManager.health` in a worker thread; the probe itself is a child process. A
    cancelled task waits for the probe to end (its private copy is then removed)."""
    return await run_in_worker(lambda: mgr.health(in_place, python, timeout))
