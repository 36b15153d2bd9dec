"""Version safety: chromadb's schema migrations are one-way.

Every snapshot records the migration levels of its `chroma.sqlite3` (`WalState.schema_migrations`,
e.g. `{"sysdb": 10, "metadb": 6, "embeddings_queue": 2}`). A chromadb that does not know a level
cannot open that database safely, and one that knows more migrates it on open, for good. The levels
an install knows are read the only way that is exact for chromadb 1.x (its Rust core carries the
migrations): a child of that interpreter creates an empty database in a temporary folder and the
parent reads the levels it wrote.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import children
from .errors import UsageError

KNOWN_TIMEOUT = 120.0

_CHILD = """
import os, sys, sqlite3
os.environ["ANONYMIZED_TELEMETRY"] = "False"
import chromadb
from chromadb.config import Settings
path = sys.argv[1]
client = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
del client
con = sqlite3.connect(os.path.join(path, "chroma.sqlite3"))
rows = con.execute("SELECT dir, max(version) FROM migrations GROUP BY dir").fetchall()
import json
print(json.dumps({"chromadb": chromadb.__version__, "levels": {str(d): int(v) for d, v in rows}}))
"""

_known: dict[str, Known] = {}


@dataclass(frozen=True)
class Known:
    """The migration levels one interpreter's chromadb knows."""

    python: str
    chromadb_version: str
    levels: dict[str, int]


class VersionMismatch(UsageError):
    """The snapshot's schema is newer than the chromadb that would open it (exit 2)."""


def known_migrations(python: str | None = None) -> Known:
    """The levels the chromadb of `python` (default: this interpreter) creates a new database
    at, found by a child process (cached for the life of this process)."""
    exe = python or sys.executable
    if exe in _known:
        return _known[exe]
    work = Path(tempfile.mkdtemp(prefix="chromasnap-migrations-"))
    try:
        try:  # the one child runner: its own session, killed as a group, dies with us
            out = children.run([exe, "-c", _CHILD, str(work / "db")], KNOWN_TIMEOUT)
        except OSError as exc:
            raise UsageError(f"cannot ask chromadb in {exe} which schema it knows: {exc}") from None
        if out.timed_out:
            raise UsageError(
                f"cannot ask chromadb in {exe} which schema it knows: no answer in {KNOWN_TIMEOUT:g} s"
            )
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
            raise UsageError(f"cannot ask chromadb in {exe} which schema it knows: {last[:300]}")
        try:
            got = json.loads(out.stdout.strip().splitlines()[-1])
            known = Known(exe, str(got["chromadb"]), {str(k): int(v) for k, v in got["levels"].items()})
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise UsageError(f"chromadb in {exe} answered no schema levels") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _known[exe] = known
    return known


def _levels(levels: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(levels.items())) or "none"


def newer_than_known(recorded: dict[str, int], known: dict[str, int]) -> dict[str, int]:
    """The recorded levels the install does not know (a directory it lacks counts)."""
    return {k: v for k, v in recorded.items() if v > known.get(k, 0)}


def migrations_on_open(recorded: dict[str, int], known: dict[str, int]) -> dict[str, tuple[int, int]]:
    """What opening migrates: directory -> (recorded level, level after opening)."""
    if not recorded:
        return {}
    return {k: (recorded.get(k, 0), v) for k, v in known.items() if v > recorded.get(k, 0)}


def check_openable(
    snapshot_id: str,
    recorded: dict[str, int],
    written_by: str | None,
    python: str | None = None,
    force: bool = False,
) -> Known | None:
    """Refuse (VersionMismatch, one line naming both versions) a snapshot whose schema is newer
    than the chromadb of `python` knows; `force` skips the question (nothing is asked at all)."""
    if force or not recorded:
        return None
    try:
        known = known_migrations(python)
    except UsageError:
        # the interpreter cannot be asked (not executable by this user, no chromadb): the
        # restore's own probe, or the first open, then answers for that chromadb
        return None
    newer = newer_than_known(recorded, known.levels)
    if newer:
        by = f"chromadb {written_by}" if written_by else "a newer chromadb"
        raise VersionMismatch(
            f"snapshot {snapshot_id[:12]} was written by {by} (schema {_levels(recorded)}); "
            f"chromadb {known.chromadb_version} in {known.python} knows only {_levels(known.levels)} "
            "and migrations are one-way: open it with a chromadb at least as new, or use --force"
        )
    return known


def describe_migration(recorded: dict[str, int], known: Known) -> str | None:
    """One sentence when opening with `known`'s chromadb migrates the schema, else None."""
    steps = migrations_on_open(recorded, known.levels)
    if not steps:
        return None
    moves = ", ".join(f"{k} {a}->{b}" for k, (a, b) in sorted(steps.items()))
    return (
        f"opening with chromadb {known.chromadb_version} migrates the schema ({moves}); the migration "
        "is one-way, and the probe migrated only its private copy"
    )
