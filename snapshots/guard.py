"""Write guards and their traces: the database write lock, write intents, open-file checks.

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
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .backend import Backend


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


def write_intent(backend: Backend, snapshot_id: str | None, reason: str, db: Path) -> str:
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
    backend.write(name, json.dumps(doc).encode())
    return name


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def read_intents(backend: Backend) -> list[Intent]:
    out = []
    for name in backend.list("intents"):
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError, Exception):
            d = json.loads(backend.read(name))
            snap = d["snapshot"]
            out.append(
                Intent(
                    name,
                    int(d["pid"]),
                    str(d["host"]),
                    d.get("start"),
                    str(d["started_at"]),
                    None if snap is None else str(snap),
                    str(d.get("reason", "")),
                    version=int(d.get("version", 1)),
                    db=None if d.get("db") is None else str(d["db"]),
                    db_dev=_opt_int(d.get("db_dev")),
                    db_ino=_opt_int(d.get("db_ino")),
                )
            )
    return out


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
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
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
