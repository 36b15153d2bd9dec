"""The asyncio API (snapshots/aio.py): guarded writes off the event loop, in turn, and safe to
cancel. Real databases and real child-process writes; cancellation at a precise instant is
timed from one narrow seam (a wrapped function of ours that cancels the task), as each test
says. Event-loop lag is measured by bench/async_lag.py, not asserted here."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

from chromasnap.snapshots import SnapshotManager, locks, sample
from chromasnap.snapshots.errors import UsageError


def assert_clean(mgr: SnapshotManager) -> None:
    """No write intent, neither lock held, no scratch left, every snapshot whole."""
    assert not mgr.backend.list("intents")
    # raise WriterBusy / LockTimeout if either is held
    with locks.write_lock(mgr.backend, mgr.db_path, wait=False), locks.store_lock(mgr.backend, 0):
        pass
    scratch = mgr.store_path / "tmp"
    assert not scratch.exists() or not list(scratch.iterdir())
    fresh = SnapshotManager(mgr.db_path, mgr.store_path)
    assert fresh.problems == []
    for snap in fresh.list():
        assert fresh.verify(snap.id, quick=True).ok


async def grow(db: Path, collection: str, seed: int) -> None:
    """A real write: chromadb in a child process adds 1% to one collection."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        sample.__file__,
        "grow",
        str(db),
        "--fraction",
        "0.01",
        "--seed",
        str(seed),
        "--only",
        collection,
    )
    assert await proc.wait() == 0


def records(mgr: SnapshotManager, snap_id: str, collection: str) -> int | None:
    snap = mgr.get(snap_id)
    return next(c.records for c in snap.wal.collections if c.name == collection)


def test_two_guarded_writes_from_one_loop_take_turns(db: Path) -> None:
    """Two tasks (two managers of the same database) enter guarded writes at once: the second
    waits for the first to leave, so its pre-write snapshot holds the first one's write."""
    order: list[str] = []
    snaps: dict[str, str] = {}

    async def write(mgr: SnapshotManager, name: str, seed: int) -> None:
        async with mgr.before_write_async(reason=f"write {name}") as snap:
            assert snap is not None
            snaps[name] = snap.id
            order.append(f"enter {name}")
            await grow(db, "coll1", seed)
            order.append(f"leave {name}")

    async def main() -> None:
        a, b = SnapshotManager(db), SnapshotManager(db)
        await asyncio.gather(write(a, "a", 11), write(b, "b", 12))

    asyncio.run(main())
    assert order in (
        ["enter a", "leave a", "enter b", "leave b"],
        ["enter b", "leave b", "enter a", "leave a"],
    )
    first, second = (snaps[order[0][-1]], snaps[order[2][-1]])
    mgr = SnapshotManager(db)
    assert records(mgr, first, "coll1") == 300
    assert records(mgr, second, "coll1") == 303  # taken after the first write ended
    assert mgr.get(second).parent == first
    assert_clean(mgr)


def test_cancelled_mid_capture_leaves_no_snapshot_intent_or_lock(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while its worker reads the database (seam: the capture's first read of a
    block cancels the task, then waits until the cancellation has reached the worker's stop
    event): no snapshot, no intent, no lock; the database is untouched and the next guarded
    write works."""
    from chromasnap.snapshots import capture

    real_read = capture.Capturer._read
    fired = threading.Event()
    done_while_worker_ran: list[bool] = []
    task: asyncio.Task[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def read(self: capture.Capturer, fd: int, offset: int, length: int):  # type: ignore[no-untyped-def]
        if not fired.is_set():
            fired.set()
            assert loop is not None and task is not None and self.stop is not None
            loop.call_soon_threadsafe(task.cancel)
            assert self.stop.wait(30)  # set by the cancelled task, which now waits for us
            done_while_worker_ran.append(task.done())
        return real_read(self, fd, offset, length)

    monkeypatch.setattr(capture.Capturer, "_read", read)
    entered = []

    async def guarded() -> None:
        async with SnapshotManager(db).before_write_async(reason="never"):
            entered.append(True)

    async def main() -> None:
        nonlocal task, loop
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(guarded())
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    mgr = SnapshotManager(db)
    assert fired.is_set() and not entered and done_while_worker_ran == [False]
    assert mgr.list() == []  # nothing referenced: the capture stopped at its next block
    assert_clean(mgr)
    monkeypatch.undo()
    with mgr.before_write(reason="after") as snap:
        assert snap is not None
    assert records(mgr, snap.id, "coll0") == 2500


def test_cancelled_after_the_snapshot_leaves_the_guard_again(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled once the worker has snapshotted and written its intent (seam: the intent
    writer cancels the task): the guard is left again before the task hears of it (intent
    removed, lock released); the whole pre-write snapshot stays. A second guarded write
    waiting at the gate meanwhile then goes ahead."""
    from chromasnap.snapshots import guard

    real_write_intent = guard.write_intent
    task: asyncio.Task[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    cancelled_at: list[int] = []

    def write_intent(*args, **kwargs):  # type: ignore[no-untyped-def]
        name = real_write_intent(*args, **kwargs)
        if not cancelled_at:
            assert loop is not None and task is not None
            cancelled_at.append(1)
            done = threading.Event()
            loop.call_soon_threadsafe(lambda: (task.cancel(), done.set()))
            assert done.wait(10)
        return name

    monkeypatch.setattr(guard, "write_intent", write_intent)
    body = []

    async def guarded(reason: str) -> None:
        async with SnapshotManager(db).before_write_async(reason=reason) as snap:
            body.append((reason, snap.id if snap else None))

    async def main() -> None:
        nonlocal task, loop
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(guarded("cancelled"))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(guarded("next"))
        with pytest.raises(asyncio.CancelledError):
            await task
        await waiting

    asyncio.run(main())
    mgr = SnapshotManager(db)
    snaps = mgr.list()
    assert [r for r, _ in body] == ["next"] and len(snaps) == 2
    assert body[0][1] == snaps[1].id and snaps[1].parent == snaps[0].id
    assert_clean(mgr)


def test_cancelled_while_waiting_for_its_turn_takes_nothing(db: Path) -> None:
    """A guarded write cancelled while another holds the store's turn leaves nothing; a guard
    nested in the same task (or one it started inside the block) is refused, not deadlocked."""

    async def main() -> None:
        mgr = SnapshotManager(db)
        release = asyncio.Event()

        async def first() -> None:
            async with mgr.before_write_async(reason="first"):
                await release.wait()

        holder = asyncio.create_task(first())
        await asyncio.sleep(0.5)  # first is inside its block, or entering it
        second = asyncio.create_task(SnapshotManager(db).before_write_async(reason="second").__aenter__())
        await asyncio.sleep(0.05)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        release.set()
        await holder
        with pytest.raises(UsageError, match="wait for itself"):
            async with mgr.before_write_async(reason="outer"), mgr.before_write_async():
                pass

    asyncio.run(main())
    mgr = SnapshotManager(db)
    assert [s.note for s in mgr.list()] == ["first", "outer"]
    assert_clean(mgr)


def test_snapshot_recover_and_health_async(db: Path) -> None:
    """The other three calls: results as the synchronous ones give; an exclusive snapshot
    from inside the block does not wait for its own guard."""

    async def main() -> dict[str, object]:
        mgr = SnapshotManager(db)
        snap = await mgr.snapshot_async(reason="async", tags=["t"])
        async with mgr.before_write_async(reason="w"):
            inner = await mgr.snapshot_async(reason="inside", exclusive=True)
        health = await mgr.health_async()
        result = await mgr.recover_async()
        return {
            "snap": snap.reason,
            "tags": snap.tags,
            "inner": inner.reason,
            "healthy": health.healthy,
            "kind": result.kind,
        }

    out = asyncio.run(main())
    assert out == {"snap": "async", "tags": ["t"], "inner": "inside", "healthy": True, "kind": "healthy"}
    assert_clean(SnapshotManager(db))
