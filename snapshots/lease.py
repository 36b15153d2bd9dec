"""The store lock of a remote store, over the storage contract (no file system to flock).

`StoreLease` is one object, `locks/lease.json`, taken with a create-only write (or a
compare-and-swap of a free lease), renewed with compare-and-swap by a background thread while
held, and released by a compare-and-swap to the free state (never a delete, which could remove
a lease someone else took after ours was broken). It carries the holder (host, pid, command),
a generation that grows with every taking (a fencing number), and an expiry. A lease past
its expiry is reported as stale with its age, and broken only by `break_stale` (the CLI's
`unlock --stale`).

Some S3-compatible servers silently ignore conditional headers. `check_conditional_writes`
probes that once per store and process; on such a server the caller either refuses (the
default) or, with `no_cas=True`, uses `LockObjects`: restic-style lock objects, written then
listed. What that gives up: the lock rests on listing being read-after-write consistent and
on clocks roughly agreeing; a writer that stalls past its expiry is not fenced out; and
`create_only` / `if_match` no longer protect anything, so a writer that does not hold the lock
can overwrite the catalog or a snapshot document unnoticed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from .backend import StorageBackend, lock_timeout
from .errors import (
    ConditionalWritesUnsupported,
    LeaseLost,
    LockTimeout,
    ObjectExists,
    ObjectNotFound,
    PreconditionFailed,
    StaleLock,
    StoreError,
    UsageError,
)

LEASE_NAME = "locks/lease.json"
LOCK_OBJECT_PREFIX = "locks/lock-"
PROBE_PREFIX = "locks/probe-"
DEFAULT_TTL = 300.0  # seconds a lease lives without renewal; renewed every ttl/3
MAX_DOC = 64 << 10  # a lease document is tiny: anything bigger is not ours
LEASE_VERSION = 1

Clock = Callable[[], float]


# --- the lease document ------------------------------------------------------------------


def _clean(text: object, limit: int = 200) -> str:
    """Store strings are hostile: printable characters only, and not many of them."""
    return "".join(c if c.isprintable() else "?" for c in str(text))[:limit]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: object) -> float:
    if not isinstance(value, str) or len(value) > 40:
        raise ValueError("bad time")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def format_age(seconds: float) -> str:
    """3s, 5m 2s, 2h 10m, 3d 4h."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: the `LockOwner` of the design (pid, host, command, since)."""

    pid: int
    host: str
    command: str
    since: str

    @classmethod
    def this_process(cls, command: str | None = None) -> Holder:
        cmd = command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        return cls(os.getpid(), socket.gethostname(), cmd[:300], _iso(time.time()))

    def describe(self) -> str:
        who = f"pid {self.pid} on {_clean(self.host, 80)} ({_clean(self.command, 120)})"
        return f"{who} since {_clean(self.since, 40)}"


@dataclass(frozen=True)
class LeaseInfo:
    """A lease or lock object as read from the store (checked, never trusted further)."""

    name: str
    holder: Holder | None  # None: free (released or broken)
    token: str
    generation: int
    renewed_at: float
    expires_at: float

    def stale(self, now: float) -> bool:
        return self.holder is not None and now > self.expires_at

    def describe(self, now: float) -> str:
        if self.holder is None:
            return "nobody"
        state = (
            f"expired {format_age(now - self.expires_at)} ago"
            if self.stale(now)
            else f"renewed {format_age(now - self.renewed_at)} ago"
        )
        return f"{self.holder.describe()}, {state}"

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "version": LEASE_VERSION,
            "holder": None
            if self.holder is None
            else {
                "pid": self.holder.pid,
                "host": self.holder.host,
                "command": self.holder.command,
                "since": self.holder.since,
            },
            "token": self.token,
            "generation": self.generation,
            "renewed_at": _iso(self.renewed_at),
            "expires_at": _iso(self.expires_at),
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, name: str, raw: bytes, where: str) -> LeaseInfo:
        """Parse a lease document; StoreError (one line) if it is not one."""
        try:
            if len(raw) > MAX_DOC:
                raise ValueError("too large")
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("version") != LEASE_VERSION:
                raise ValueError("not a lease document")
            h = doc["holder"]
            holder = None
            if h is not None:
                if not isinstance(h, dict):
                    raise ValueError("bad holder")
                pid, host, command, since = h["pid"], h["host"], h["command"], h["since"]
                if not isinstance(pid, int) or not all(isinstance(v, str) for v in (host, command, since)):
                    raise ValueError("bad holder")
                holder = Holder(pid, host, command, since)
            token, gen = doc["token"], doc["generation"]
            if not isinstance(token, str) or not isinstance(gen, int) or isinstance(gen, bool) or gen < 0:
                raise ValueError("bad token or generation")
            return cls(
                name, holder, token, gen, _parse_time(doc["renewed_at"]), _parse_time(doc["expires_at"])
            )
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
            raise StoreError(
                f"{where} is not a lease document; if no chromasnap process is using the store, "
                "remove it with `chromasnap unlock --stale`"
            ) from None


@dataclass(frozen=True)
class LockRecord:
    """One lease or lock object found in a store: parsed, or the one line saying why not."""

    name: str
    tag: str
    info: LeaseInfo | None
    problem: str | None = None


def read_locks(backend: StorageBackend) -> list[LockRecord]:
    """The lease and every lock object in the store, with version tags (reports, unlock)."""
    out: list[LockRecord] = []
    names = [LEASE_NAME] + [o.name for o in backend.list("locks") if o.name.startswith(LOCK_OBJECT_PREFIX)]
    for name in names:
        try:
            raw, tag = backend.load_versioned(name)
        except ObjectNotFound:
            continue
        try:
            out.append(LockRecord(name, tag, LeaseInfo.from_json(name, raw, f"{backend.location}/{name}")))
        except StoreError as exc:
            out.append(LockRecord(name, tag, None, str(exc)))
    return out


# --- the conditional-write probe ----------------------------------------------------------

_probed: dict[str, str | None] = {}
_probed_lock = threading.Lock()


def probe_conditional_writes(backend: StorageBackend) -> str | None:
    """Write a probe object the ways a commit does; None if the server honoured every
    condition, else what it ignored. Costs four small writes and a delete."""
    name = f"{PROBE_PREFIX}{os.urandom(8).hex()}"
    ignored: list[str] = []
    try:
        tag = backend.save(name, b"probe 1", create_only=True)
        try:
            tag = backend.save(name, b"probe 2", create_only=True)
            ignored.append("If-None-Match (a second create of the same name succeeded)")
        except ObjectExists:
            pass
        try:
            tag = backend.save(name, b"probe 3", if_match='"00000000000000000000000000000000"')
            ignored.append("If-Match (a replace with a wrong version tag succeeded)")
        except PreconditionFailed:
            pass
        try:
            backend.save(name, b"probe 4", if_match=tag)
        except PreconditionFailed:
            ignored.append("If-Match (a replace with the current version tag was refused)")
    finally:
        backend.remove(name)
    return "; ".join(ignored) or None


def check_conditional_writes(backend: StorageBackend, *, no_cas: bool = False) -> bool:
    """Probe once per store and process before the first write. True: conditional writes
    work. False: they do not and the caller asked for `no_cas` (use LockObjects). Raises
    ConditionalWritesUnsupported otherwise."""
    with _probed_lock:
        if backend.location not in _probed:
            _probed[backend.location] = probe_conditional_writes(backend)
        ignored = _probed[backend.location]
    if ignored is None:
        return True
    if no_cas:
        return False
    raise ConditionalWritesUnsupported(
        f"the server of {backend.location} ignores conditional writes: {ignored}. Two writers could "
        "overwrite each other's commits; pass --no-cas to use lock objects instead (safe only "
        "while every writer takes the lock and clocks roughly agree)"
    )


# --- locks ----------------------------------------------------------------------------------


class StoreLock(ABC):
    """An exclusive lock on a remote store, renewed by a background thread while held."""

    def __init__(
        self,
        backend: StorageBackend,
        *,
        ttl: float = DEFAULT_TTL,
        command: str | None = None,
        clock: Clock = time.time,
        refresh_every: float | None = None,
        poll: float = 1.0,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.backend = backend
        self.ttl = ttl
        self.command = command
        self.clock = clock
        self.refresh_every = refresh_every if refresh_every is not None else ttl / 3
        self.poll = poll
        self.info: LeaseInfo | None = None
        self._tag = ""
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()  # renewals and release never overlap

    @property
    def generation(self) -> int:
        """The fencing number of this holding (grows with every taking of the lease)."""
        return self.info.generation if self.info else 0

    def _mine(self, generation: int) -> LeaseInfo:
        now = self.clock()
        holder = Holder.this_process(self.command)
        return LeaseInfo(self._name(), holder, os.urandom(16).hex(), generation, now, now + self.ttl)

    @abstractmethod
    def _name(self) -> str: ...

    @abstractmethod
    def _try_acquire(self) -> str | None:
        """One attempt: None when taken, else why not (holder and age). Raises StaleLock."""

    @abstractmethod
    def _renew(self) -> None:
        """One renewal; raises LeaseLost when the lock is no longer ours."""

    @abstractmethod
    def _release(self) -> None: ...

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock, waiting up to `timeout` (CHROMASNAP_LOCK_TIMEOUT, default 60s) while
        a live holder has it; a stale holder is reported at once (StaleLock)."""
        wait = lock_timeout() if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            why = self._try_acquire()
            if why is None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout(
                    f"store {self.backend.location} is locked by {why}; gave up after {wait:g}s"
                )
            time.sleep(min(left, self.poll * random.uniform(0.5, 1.5)))
        self._lost = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._refresh_loop, name="chromasnap-lease", daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_every):
            try:
                self.refresh()
            except LeaseLost:
                return
            except StoreError:
                continue  # try again next round; check() fails once the lease has expired

    def refresh(self) -> None:
        """Renew now (the background thread calls this every `refresh_every` seconds)."""
        with self._mutex:
            if self._lost is not None or self.info is None:
                raise LeaseLost(self._lost or f"the lock on {self.backend.location} is not held")
            try:
                self._renew()
            except LeaseLost as exc:
                self._lost = str(exc)
                raise

    def check(self) -> None:
        """Raise LeaseLost unless the lock is still ours and unexpired: call before a commit."""
        if self._lost is not None:
            raise LeaseLost(self._lost)
        if self.info is None:
            raise LeaseLost(f"the lock on {self.backend.location} is not held")
        late = self.clock() - self.info.expires_at
        if late > 0:
            raise LeaseLost(
                f"the lock on {self.backend.location} expired {format_age(late)} "
                "ago without renewal (the store could not be reached); stopping before a commit"
            )

    def release(self) -> None:
        """Stop renewing and let go (best effort: a lock that cannot be released expires)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._mutex:
            if self.info is not None and self._lost is None:
                # broken or taken over: nothing of ours to release
                with contextlib.suppress(LeaseLost, PreconditionFailed, ObjectNotFound):
                    self._release()
            self.info = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class StoreLease(StoreLock):
    """The lease object `locks/lease.json`, for servers that honour conditional writes."""

    def _name(self) -> str:
        return LEASE_NAME

    def _where(self) -> str:
        return f"{self.backend.location}/{LEASE_NAME}"

    def _try_acquire(self) -> str | None:
        try:
            raw, tag = self.backend.load_versioned(LEASE_NAME)
        except ObjectNotFound:
            mine = self._mine(1)
            try:
                self._tag = self.backend.save(LEASE_NAME, mine.to_json(), create_only=True)
            except ObjectExists:
                return "another process (it took the lease just now)"
            self.info = mine
            return None
        try:
            current = LeaseInfo.from_json(LEASE_NAME, raw, self._where())
        except StoreError as exc:
            raise StaleLock(str(exc)) from None
        now = self.clock()
        if current.holder is not None:
            if current.stale(now):
                raise StaleLock(
                    f"store {self.backend.location} is locked by a stale lease: {current.describe(now)}; "
                    "if that process is gone, break it with `chromasnap unlock --stale`"
                )
            return current.describe(now)
        mine = self._mine(current.generation + 1)
        try:
            self._tag = self.backend.save(LEASE_NAME, mine.to_json(), if_match=tag)
        except (PreconditionFailed, ObjectNotFound):
            return "another process (it took the lease just now)"
        self.info = mine
        return None

    def _renew(self) -> None:
        assert self.info is not None
        now = self.clock()
        renewed = LeaseInfo(
            LEASE_NAME, self.info.holder, self.info.token, self.info.generation, now, now + self.ttl
        )
        try:
            self._tag = self.backend.save(LEASE_NAME, renewed.to_json(), if_match=self._tag)
        except (PreconditionFailed, ObjectNotFound):
            raise LeaseLost(
                f"the lease on {self.backend.location} was broken or taken over (generation "
                f"{self.info.generation}); stopping before a commit"
            ) from None
        self.info = renewed

    def _release(self) -> None:
        assert self.info is not None
        now = self.clock()
        free = LeaseInfo(LEASE_NAME, None, self.info.token, self.info.generation, now, now)
        self.backend.save(LEASE_NAME, free.to_json(), if_match=self._tag)


class LockObjects(StoreLock):
    """restic-style lock objects (`locks/lock-<token>.json`), for servers without conditional
    writes (`no_cas`): write ours, list, and back off if another live one is there."""

    def __init__(self, backend: StorageBackend, **kwargs: Any) -> None:
        super().__init__(backend, **kwargs)
        self._object = f"{LOCK_OBJECT_PREFIX}{os.urandom(12).hex()}.json"

    def _name(self) -> str:
        return self._object

    def _try_acquire(self) -> str | None:
        mine = self._mine(0)
        self.backend.save(self._object, mine.to_json())
        try:
            others = [r for r in read_locks(self.backend) if r.name != self._object]
        except BaseException:
            self.backend.remove(self._object)
            raise
        now = self.clock()
        live = [r for r in others if r.info is None or r.info.holder is not None]
        if not live:
            self.info = mine
            return None
        self.backend.remove(self._object)
        for rec in live:
            if rec.info is None or rec.info.stale(now):
                what = rec.problem if rec.info is None else f"a stale lock object: {rec.info.describe(now)}"
                raise StaleLock(
                    f"store {self.backend.location} is locked by {what}; if that process is gone, "
                    "break it with `chromasnap unlock --stale`"
                )
        return live[0].info.describe(now) if live[0].info else "another process"

    def _renew(self) -> None:
        assert self.info is not None
        try:
            self.backend.stat(self._object)
        except ObjectNotFound:
            raise LeaseLost(
                f"the lock object on {self.backend.location} was removed; stopping before a commit"
            ) from None
        now = self.clock()
        renewed = LeaseInfo(self._object, self.info.holder, self.info.token, 0, now, now + self.ttl)
        self.backend.save(self._object, renewed.to_json())
        self.info = renewed

    def _release(self) -> None:
        self.backend.remove(self._object)


def store_lock(backend: StorageBackend, *, no_cas: bool = False, **kwargs: Any) -> StoreLock:
    """The lock for a remote store: a lease where conditional writes work (probed once), lock
    objects where they do not and the user passed `no_cas`; ConditionalWritesUnsupported else."""
    if check_conditional_writes(backend, no_cas=no_cas):
        return StoreLease(backend, **kwargs)
    return LockObjects(backend, **kwargs)


def break_stale(backend: StorageBackend, *, clock: Clock = time.time) -> list[LockRecord]:
    """`unlock --stale`: free the lease and remove lock objects that expired or are unreadable;
    a live holder is refused (UsageError) and nothing is broken. Returns what was broken."""
    now = clock()
    found = [r for r in read_locks(backend) if r.info is None or r.info.holder is not None]
    for rec in found:
        if rec.info is not None and not rec.info.stale(now):
            raise UsageError(
                f"store {backend.location} is locked by {rec.info.describe(now)}: not stale, not broken"
            )
    for rec in found:
        if rec.name != LEASE_NAME:
            backend.remove(rec.name)
            continue
        generation = rec.info.generation if rec.info is not None else 0
        free = LeaseInfo(LEASE_NAME, None, "", generation, now, now)
        try:
            backend.save(LEASE_NAME, free.to_json(), if_match=rec.tag)
        except (PreconditionFailed, ObjectNotFound):
            raise UsageError(
                f"the lease on {backend.location} changed while breaking it "
                "(its holder is alive?); not broken"
            ) from None
    return found
