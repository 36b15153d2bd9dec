"""The store lock and the database write lock, above the storage contract.

For a local store both are flock(2) on files at the store root, opened without following a
symlink and never truncated (`LocalBackend.open_lock_file`), re-entrant within a thread:

- `store_lock`: `lock`, held by every writer of the store for a whole operation; its holder
  is described in `lock.owner` (the `LockOwner` model) for the message of whoever waits.
- `write_lock`: `write.lock`, the database write lock of `before_write`, restore, recover and
  `snapshot --exclusive`.

A remote store's lock is a lease object (lease.py), re-entrant within a thread in the same
way; the database write lock is always local (a remote store's database keeps it beside the
database: stores.py). Nothing else opens lock files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from chromasnap.manifest import LockOwner, ManifestError, limits
from chromasnap.manifest.io import parse_json

from .backend import StorageBackend, lock_timeout
from .errors import LockTimeout, StoreError, WriterBusy
from .local_backend import LocalBackend

if TYPE_CHECKING:
    from . import lease

STORE_LOCK = "lock"
OWNER = "lock.owner"
WRITE_LOCK = "write.lock"

_HELD: dict[tuple[int, int, int], list[int]] = {}
"""Lock files this process holds: (st_dev, st_ino, thread) -> [fd, depth] (re-entrant per thread)."""
_HELD_LOCK = threading.Lock()


def _find_local(backend: StorageBackend) -> LocalBackend | None:
    """The LocalBackend under `backend` (wrappers such as RetryingBackend and FaultyBackend
    keep theirs as `inner`), or None for a remote store."""
    found: object = backend
    while not isinstance(found, LocalBackend) and hasattr(found, "inner"):
        found = found.inner
    return found if isinstance(found, LocalBackend) else None


def _local(backend: StorageBackend) -> LocalBackend:
    """The LocalBackend under `backend`: lock files are local files, outside the contract."""
    found = _find_local(backend)
    if found is None:
        raise StoreError(f"the database write lock cannot live in the remote store {backend.location}")
    return found


class _Lease:
    """A remote store's lock held by this process and thread, and how many times."""

    def __init__(self, lock: lease.StoreLock) -> None:
        self.lock = lock
        self.depth = 1


_LEASES: dict[tuple[str, int], _Lease] = {}
"""Remote store locks this process holds, by (location, thread): re-entrant per thread."""


@contextlib.contextmanager
def _lease(backend: StorageBackend, wait: float) -> Iterator[None]:
    """The lease of a remote store (lease.store_lock: the conditional-write probe first),
    re-entrant within a thread."""
    key = (backend.location, threading.get_ident())
    with _HELD_LOCK:
        held = _LEASES.get(key)
        if held is not None:
            held.depth += 1
    if held is None:
        from . import lease  # a remote store's writers only: not on `list`'s import path

        lock = lease.store_lock(backend, no_cas=backend.no_cas)
        lock.acquire(wait)
        with _HELD_LOCK:
            held = _LEASES[key] = _Lease(lock)
    try:
        yield
    finally:
        with _HELD_LOCK:
            held.depth -= 1
            last = held.depth == 0
            if last:
                del _LEASES[key]
        if last:
            held.lock.release()


def check_lease(backend: StorageBackend) -> None:
    """Before a commit to a remote store: LeaseLost unless this thread's lease is still ours
    and unexpired (a no-op for a local store and when no lease is held)."""
    with _HELD_LOCK:
        held = _LEASES.get((backend.location, threading.get_ident()))
    if held is not None:
        held.lock.check()


@contextlib.contextmanager
def _hold(backend: LocalBackend, name: str, wait: float, busy: Callable[[], str]) -> Iterator[None]:
    """flock(2) on the store file `name`; re-entrant within a thread. `busy()` words the
    LockTimeout."""
    fd = backend.open_lock_file(name)
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino, threading.get_ident())
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is not None:
        os.close(fd)
    else:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockTimeout(busy()) from None
                time.sleep(0.05)
            except BaseException:
                os.close(fd)
                raise
        with _HELD_LOCK:
            held = _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        with _HELD_LOCK:
            held[1] -= 1
            last = held[1] == 0
            if last:
                del _HELD[key]
        if last:
            os.close(held[0])  # closing the only fd releases the flock


def this_owner() -> LockOwner:
    """The `lock.owner` document of this process (not validated: a command line may hold
    bytes that are not UTF-8, as surrogate escapes, which JSON writes as \\udcxx)."""
    return LockOwner.model_construct(
        pid=os.getpid(),
        host=socket.gethostname(),
        command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
        since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def read_owner(backend: StorageBackend) -> LockOwner | None:
    """Who last took the store lock (None when unreadable: it is hostile input too)."""
    with contextlib.suppress(ManifestError, StoreError, ValueError, KeyError, TypeError):
        doc = parse_json(backend.load_bounded(OWNER, limits.MAX_SMALL_DOC), OWNER, limits.MAX_SMALL_DOC)
        fields = {k: doc[k] for k in ("pid", "host", "command", "since")}
        if type(fields["pid"]) is int and all(
            isinstance(fields[k], str) for k in ("host", "command", "since")
        ):
            return LockOwner.model_construct(**fields)  # surrogate escapes kept (see this_owner)
    return None


@contextlib.contextmanager
def store_lock(backend: StorageBackend, timeout: float | None = None) -> Iterator[None]:
    """The store lock, for a whole mutating operation; LockTimeout names the holder. A
    remote store's is its lease (lease.py)."""
    wait = lock_timeout() if timeout is None else timeout
    local = _find_local(backend)
    if local is None:
        with _lease(backend, wait):
            yield
        return

    def busy() -> str:
        owner = read_owner(local)
        holder = (
            f"pid {owner.pid} ({owner.command[:300]}) since {owner.since[:40]}"
            if owner is not None
            else "another process"
        )
        return f"store {local.location} is locked by {holder}; gave up after {wait:g}s"

    with _hold(local, STORE_LOCK, wait, busy):
        local.save(OWNER, this_owner().to_json())
        yield


@contextlib.contextmanager
def write_lock(
    backend: StorageBackend, db_path: Path | None, wait: bool = True, holder: Callable[[], str] | None = None
) -> Iterator[None]:
    """The database write lock. Waits up to the lock timeout (LockTimeout), or with
    `wait=False` raises WriterBusy at once naming `holder()` (a description of who holds it)."""
    local = _local(backend)
    local.create()
    seconds = lock_timeout() if wait else 0.0
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_hold(local, WRITE_LOCK, seconds, lambda: f"gave up after {seconds:g}s"))
        except LockTimeout:
            if not wait:
                who = holder() if holder is not None else "a guarded write or a restore"
                raise WriterBusy(
                    f"skipped: {who} holds the write lock of {db_path}; no snapshot taken (--no-wait)"
                ) from None
            raise LockTimeout(
                f"another process holds the write lock of {db_path} "
                f"(a guarded write or a restore); gave up after {lock_timeout():g}s"
            ) from None
        yield
