"""Write guards and their traces: `WriteGuard`, write intents, open-file checks.

A write intent is a small durable file in the store saying "pid P on host H started a
guarded write of database D at T after snapshot S" (S is null when there was no database
yet: the state to return to is "no database"). It is removed when the block ends, normally
or by an exception; if the process dies (kill -9, a Rust panic's SIGABRT) it stays behind,
and `recover` finds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from chromasnap.manifest import Event, ManifestError, Snapshot, limits
from chromasnap.manifest.io import parse_json

from .backend import StorageBackend
from .errors import ChromasnapError, StoreError, UsageError
from .fsutil import crash_point, make_dirs
from .layout import no_database_yet
from .repository import Repository
from .retention import has_rules


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell pid reuse apart."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start is None or process_start(pid) in (None, start)


INTENT_VERSION = 2


@dataclass
class Intent:
    name: str
    pid: int
    host: str
    start: int | None
    started_at: str
    snapshot: str | None
    """The pre-write snapshot; None: there was no database (missing or empty) before."""
    reason: str
    version: int = 1
    db: str | None = None
    """The database path as the manager held it (version 2 on)."""
    db_dev: int | None = None
    db_ino: int | None = None
    """os.stat(db) when the intent was written: the directory the guarded write used."""

    @property
    def dead(self) -> bool:
        """Its process is gone (only decidable on the host that wrote it)."""
        return self.host == socket.gethostname() and not alive(self.pid, self.start)


def write_intent(backend: StorageBackend, snapshot_id: str | None, reason: str, db: Path) -> str:
    """Durably record a guarded write of `db` that starts now; `snapshot_id` is the state to
    return to should the process die (None: no database, a fresh start). `db` must exist:
    its (dev, ino) tell a later `recover` that the directory is still the one written."""
    pid = os.getpid()
    st = os.stat(db)
    name = f"intents/{(snapshot_id or 'nodb')[:16]}-{pid}-{os.urandom(3).hex()}.json"
    doc = {
        "version": INTENT_VERSION,
        "pid": pid,
        "host": socket.gethostname(),
        "start": process_start(pid),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reason": reason,
        "db": str(db),
        "db_dev": st.st_dev,
        "db_ino": st.st_ino,
        "snapshot": snapshot_id,
    }
    backend.save(name, json.dumps(doc).encode(), create_only=True)
    return name


_HEX64 = re.compile(r"[0-9a-f]{64}")
_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def _int(value: object, optional: bool = False) -> bool:
    return (optional and value is None) or (type(value) is int and 0 <= value < 1 << 64)


def parse_intent(name: str, raw: bytes) -> Intent:
    """A write intent document, small and well-typed, or ValueError saying what is wrong."""
    try:
        d = parse_json(raw, name, limits.MAX_SMALL_DOC)
    except ManifestError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    version = d.get("version", 1)
    snapshot = d.get("snapshot")
    ok = (
        type(version) is int
        and version in (1, 2)
        and _int(d.get("pid"))
        and 0 < d["pid"] < 1 << 31
        and isinstance(d.get("host"), str)
        and _int(d.get("start"), optional=True)
        and isinstance(d.get("started_at"), str)
        and _STAMP.fullmatch(d["started_at"]) is not None
        and isinstance(d.get("reason", ""), str)
        and (snapshot is None or (isinstance(snapshot, str) and _HEX64.fullmatch(snapshot) is not None))
        and ((version == 1 and snapshot is not None) or version == 2)
    )
    if ok and version == 2:
        ok = isinstance(d.get("db"), str) and _int(d.get("db_dev")) and _int(d.get("db_ino"))
    if not ok:
        raise ValueError("not a well-formed write intent")
    return Intent(
        name,
        d["pid"],
        d["host"][:255],
        d.get("start"),
        d["started_at"],
        snapshot,
        d.get("reason", "")[:1000],
        version,
        d.get("db"),
        d.get("db_dev"),
        d.get("db_ino"),
    )


def read_intents(backend: StorageBackend, problems: list[str] | None = None) -> list[Intent]:
    """Every well-formed write intent in the store (whatever it names); what is wrong with
    the others goes to `problems`."""
    out = []
    try:
        names = [o.name for o in backend.list("intents")]
    except StoreError as exc:  # prune (no `problems`) must stop: it would not know what to protect
        if problems is None:
            raise
        problems.append(f"write intents unreadable ({exc}); ignored")
        return []
    for name in names:
        try:
            out.append(parse_intent(name, backend.load_bounded(name, limits.MAX_SMALL_DOC)))
        except (ValueError, StoreError) as exc:
            if problems is not None:
                problems.append(f"write intent {name} is unreadable ({exc}); ignored")
    return out


def trusted_intents(
    backend: StorageBackend, db: Path, snapshot_created: Callable[[str], datetime | None]
) -> tuple[list[Intent], list[str]]:
    """The write intents `recover` may act on for `db`, and why each other one found is not.

    Acted on only: a well-formed version-2 intent naming this database (`db` as given,
    and its current (dev, ino) when it exists), written on this host by a process now
    dead (start time checked against pid reuse), after a snapshot that is in the store
    and was taken no later than the intent. Intents of other databases, of other hosts
    or of a write still running are not ours to judge and are left out silently."""
    problems: list[str] = []
    trusted: list[Intent] = []
    try:
        st: os.stat_result | None = os.stat(db)
    except OSError:
        st = None
    for i in read_intents(backend, problems):
        if i.version == 1:
            problems.append(
                f"write intent {i.name} is from an older chromasnap (no database recorded); "
                "not acted upon: remove it once you know its write is over"
            )
            continue
        if i.db != str(db) or i.host != socket.gethostname() or not i.dead:
            continue
        why = None
        if st is not None and (st.st_dev, st.st_ino) != (i.db_dev, i.db_ino):
            why = "the database folder is not the one it was written for"
        elif i.snapshot is not None:
            created = snapshot_created(i.snapshot)
            started = datetime.strptime(i.started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            if created is None:
                why = f"its snapshot {i.snapshot[:12]} is not in the store"
            elif created > started + timedelta(seconds=1):  # started_at is to the second
                why = f"its snapshot {i.snapshot[:12]} was taken after the intent"
        if why:
            problems.append(f"write intent {i.name} not acted upon: {why}")
        else:
            trusted.append(i)
    return trusted, problems


MAX_DB_ENTRIES = 100_000
"""Files of a database whose identities are collected for `open_by` (a Chroma directory
holds a few per collection)."""


def _identities(root: str) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of the database directory and everything under it, without
    following a symlink."""
    ids: set[tuple[int, int]] = set()
    try:
        st = os.stat(root)
    except OSError:
        return ids
    ids.add((st.st_dev, st.st_ino))
    stack = [root]
    while stack and len(ids) < MAX_DB_ENTRIES:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        est = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    ids.add((est.st_dev, est.st_ino))
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
        except OSError:
            continue
    return ids


def command_line(pid: int) -> str:
    """A process's command line as one printable line (at most 200 characters)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    text = raw.replace(b"\0", b" ").decode(errors="replace")
    text = "".join(c if c.isprintable() else "?" for c in text).strip()
    return text[:200] or "?"


def open_by(db: Path) -> list[tuple[int, str]]:
    """Processes (other than this one) holding the database directory or a file in it open.

    Read from /proc/*/fd. A descriptor matches by its path (under the real directory) or
    by the identity (device, inode) of the file it refers to, so a process that opened the
    database through another path (a symlink, the source of a bind mount, a container's
    own mount namespace) is found too. Processes this user may not inspect (another
    user's, without root) and other PID namespaces are not seen.
    """
    root = os.path.realpath(db)
    ids = _identities(root)
    found = _scan(root, ids, None)
    # A process killed a moment ago still lists its descriptors until its exit completes:
    # look again at those found, and keep the ones that hold on (two scans alike).
    for _ in range(5):
        if not found:
            break
        time.sleep(0.1)
        again = _scan(root, ids, {pid for pid, _ in found})
        if again == found:
            break
        found = again
    return found


def _scan(root: str, ids: set[tuple[int, int]], pids: set[int] | None) -> list[tuple[int, str]]:
    """One pass over /proc (or over `pids`) for descriptors of the database at `root`."""
    found: dict[int, str] = {}
    me = os.getpid()
    candidates = pids if pids is not None else {int(e.name) for e in os.scandir("/proc") if e.name.isdigit()}
    for pid in sorted(candidates):
        if pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            link = f"/proc/{pid}/fd/{fd}"
            try:
                target = os.readlink(link)
            except OSError:
                continue
            hit = target == root or target.startswith(root + "/")
            if not hit and target.startswith("/"):  # not a socket, pipe or anon inode
                try:
                    st = os.stat(link)
                except OSError:
                    continue
                hit = (st.st_dev, st.st_ino) in ids
            if hit:
                found[pid] = command_line(pid)
                break
    return sorted(found.items())


def describe_holders(db: Path, holders: list[tuple[int, str]]) -> str:
    """`pid 4242 (chroma run --path /data) has files of /data open (and 1 more)`."""
    pid, cmd = holders[0]
    more = f" (and {len(holders) - 1} more)" if len(holders) > 1 else ""
    return f"pid {pid} ({cmd}) has files of {db} open{more}"


def write_lock_holder(backend: StorageBackend) -> str:
    """Who holds the database write lock, as far as the write intents tell."""
    try:
        live = [i for i in read_intents(backend) if not i.dead]
    except (OSError, ChromasnapError):
        live = []
    if live:
        return f"a guarded write (pid {live[0].pid}: {live[0].reason or 'no reason'})"
    return "a guarded write or a restore"


def add_event(mgr: Guarded, snap_id: str, kind: str, detail: str) -> None:
    """Append to a snapshot's mutable event history (under the store lock), if it can."""
    event = Event(at=datetime.now(UTC), kind=kind, detail=detail)
    with contextlib.suppress(OSError, ChromasnapError):
        mgr.repo.update_snapshot(snap_id, lambda snap: snap.events.append(event))


# --- the guard ---------------------------------------------------------------------------------


class Guarded(Protocol):
    """What a WriteGuard uses of the SnapshotManager (passed in: guard.py does not import
    manager.py)."""

    backend: StorageBackend

    @property
    def local(self) -> StorageBackend: ...

    @property
    def repo(self) -> Repository: ...

    def _need_db(self) -> Path: ...

    def _write_lock(self, wait: bool = True) -> contextlib.AbstractContextManager[object]: ...

    def _create_store(self) -> None: ...

    def snapshot(
        self, reason: str = "manual", tags: Sequence[str] = (), note: str | None = None
    ) -> Snapshot: ...

    def prune(self) -> object: ...


class WriteGuard(contextlib.ContextDecorator):
    """The context manager and decorator returned by `SnapshotManager.before_write`."""

    def __init__(
        self,
        mgr: Guarded,
        reason: str,
        tags: Sequence[str],
        note: str | None,
        snapshot_reason: str = "pre-write",
    ):
        self.mgr, self.reason, self.tags, self.note = mgr, reason, tags, note
        self.snapshot_reason = snapshot_reason
        self.snapshot: Snapshot | None = None
        self._lock: contextlib.ExitStack | None = None
        self._intent: str | None = None

    def _recreate_cm(self) -> WriteGuard:  # a fresh guard for each decorated call
        return WriteGuard(self.mgr, self.reason, self.tags, self.note, self.snapshot_reason)

    def __enter__(self) -> Snapshot | None:
        db = self.mgr._need_db()
        if not os.path.lexists(db.parent):  # before the store makes it 0700: as chromadb would
            make_dirs(db.parent, 0o777)
        stack = contextlib.ExitStack()
        stack.enter_context(self.mgr._write_lock())
        try:
            if no_database_yet(db):  # the first write: nothing to snapshot, "no database" to return to
                self._first_write(db)
            else:
                self.snapshot = self.mgr.snapshot(
                    reason=self.snapshot_reason, tags=self.tags, note=self.note or self.reason or None
                )
                self._intent = write_intent(self.mgr.local, self.snapshot.id, self.reason, db)
                rules = self.mgr.repo.config.retention
                if rules.auto_prune and has_rules(rules):
                    self.mgr.prune()
        except BaseException:
            stack.close()
            raise
        self._lock = stack
        return self.snapshot

    def _first_write(self, db: Path) -> None:
        """Create the store (an empty one) and the database directory, both durably, then the
        intent naming "no database": a crash at any point leaves a fresh start."""
        if db.is_symlink() and not db.exists():
            raise UsageError(f"database {db} is a symbolic link to a missing {os.readlink(db)}")
        self.mgr._create_store()
        make_dirs(db, 0o777)  # as chromadb makes it (less the umask); fsyncs each parent
        crash_point("first-write-dir")
        self._intent = write_intent(self.mgr.local, None, self.reason, db)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: object) -> None:
        try:
            if et is not None and self.snapshot is not None:
                add_event(self.mgr, self.snapshot.id, "write-failed", f"{et.__name__}: {ev}"[:500])
            if self._intent:
                self.mgr.local.remove(self._intent)
        finally:
            if self._lock is not None:
                self._lock.close()
