"""Write guards and their traces: the database write lock, write intents, open-file checks.

A write intent is a small durable file in the store saying "pid P on host H started a
guarded write at T after snapshot S". It is removed when the block ends, normally or by
an exception; if the process dies (kill -9, a Rust panic's SIGABRT) it stays behind, and
`recover` finds it.
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


@dataclass
class Intent:
    name: str
    pid: int
    host: str
    start: int | None
    started_at: str
    snapshot: str
    reason: str

    @property
    def dead(self) -> bool:
        """Its process is gone (only decidable on the host that wrote it)."""
        return self.host == socket.gethostname() and not alive(self.pid, self.start)


def write_intent(backend: Backend, snapshot_id: str, reason: str) -> str:
    pid = os.getpid()
    name = f"intents/{snapshot_id[:16]}-{pid}-{os.urandom(3).hex()}.json"
    doc = {
        "pid": pid,
        "host": socket.gethostname(),
        "start": process_start(pid),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "snapshot": snapshot_id,
        "reason": reason,
    }
    backend.write(name, json.dumps(doc).encode())
    return name


def read_intents(backend: Backend) -> list[Intent]:
    out = []
    for name in backend.list("intents"):
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError, Exception):
            d = json.loads(backend.read(name))
            out.append(
                Intent(
                    name,
                    int(d["pid"]),
                    str(d["host"]),
                    d.get("start"),
                    str(d["started_at"]),
                    str(d["snapshot"]),
                    str(d.get("reason", "")),
                )
            )
    return out


def open_by(db: Path) -> list[tuple[int, str]]:
    """Processes (other than this one) holding a file under `db` open, from /proc/*/fd."""
    root = os.path.realpath(db)
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
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target == root or target.startswith(root + "/"):
                try:
                    cmd = (
                        Path(f"/proc/{pid}/cmdline")
                        .read_bytes()
                        .replace(b"\0", b" ")
                        .decode(errors="replace")
                    )
                except OSError:
                    cmd = "?"
                found[pid] = cmd.strip()[:200] or "?"
                break
    return sorted(found.items())
