"""Version safety: chromadb's schema migrations are one-way.

Every snapshot records the migration levels of its `chroma.sqlite3` (`WalState.schema_migrations`,
e.g. `{"sysdb": 10, "metadb": 6, "embeddings_queue": 2}`). A chromadb that does not know a level
cannot open that database safely, and one that knows more migrates it on open, for good. The levels
an install knows are read the only way that is exact for chromadb 1.x (its Rust core carries the
migrations): a child of that interpreter creates an empty database in a temporary folder and the
parent reads the levels it wrote. That child imports chromadb (seconds), so the answer for this
interpreter's own chromadb is kept in the user's cache (`$XDG_CACHE_HOME/chromasnap/schema-levels.json`),
keyed by the installed distribution's RECORD: an upgrade or reinstall asks again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from chromasnap.manifest import ManifestError
from chromasnap.manifest.io import parse_json

from . import children, fsutil
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
    at, found by a child process (cached for the life of this process; this interpreter's
    answer also between runs, `cache_path()`)."""
    exe = python or sys.executable
    if exe in _known:
        return _known[exe]
    install = _install_id(exe)
    cached = _cached(exe, install) if install else None
    if cached is not None:
        _known[exe] = cached
        return cached
    known = _ask(exe)
    if install:
        _remember(install, known)
    _known[exe] = known
    return known


def _ask(exe: str) -> Known:
    """The levels of `exe`'s chromadb, from a child that creates an empty database."""
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
    return known


# --- the answer for this interpreter's chromadb, kept across runs ------------------------

CACHE_NAME = "schema-levels.json"
CACHE_LIMIT = 64 << 10
CACHE_ENTRIES = 16


def cache_path() -> Path:
    """Where the levels known by this interpreter's chromadb are kept between runs."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "chromasnap" / CACHE_NAME


def _install_id(exe: str) -> str | None:
    """What identifies the chromadb that `exe` imports, found without running it: for this
    very interpreter (the path as given, not resolved: a venv's python links to its base),
    the hash of the path, chromadb's version and its RECORD (the hash of every installed
    file); None for another interpreter or when chromadb's metadata cannot be read."""
    if exe != sys.executable:
        return None
    from importlib import metadata

    try:
        dist = metadata.distribution("chromadb")
        record = dist.read_text("RECORD")
        version = str(dist.version)  # parses METADATA (email.parser): may fail where record did not
    except (metadata.PackageNotFoundError, OSError, ImportError):
        return None  # not cached: the child is asked, as for another interpreter
    if not record:
        return None
    h = hashlib.sha256()
    for part in (exe, version, record):
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def _read_cache() -> dict[str, object]:
    """The cache's entries; empty when it is missing, not our own regular file, or not valid."""
    path = cache_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > CACHE_LIMIT:
            return {}
        raw = os.read(fd, CACHE_LIMIT + 1)
    except OSError:
        return {}
    finally:
        os.close(fd)
    try:
        doc = parse_json(raw, str(path), CACHE_LIMIT)
    except ManifestError:
        return {}
    entries = doc.get("entries") if isinstance(doc, dict) else None
    return entries if isinstance(entries, dict) else {}


def _cached(exe: str, install: str) -> Known | None:
    entry = _read_cache().get(install)
    if not isinstance(entry, dict):
        return None
    version, levels = entry.get("chromadb"), entry.get("levels")
    if not isinstance(version, str) or not isinstance(levels, dict) or not levels:
        return None
    if not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in levels.items()):
        return None
    return Known(exe, version, dict(levels))


def _remember(install: str, known: Known) -> None:
    """Add `known` to the cache (crash-safe replace); a cache that cannot be written is skipped."""
    entries = {k: v for k, v in _read_cache().items() if k != install}
    kept = dict(list(entries.items())[-(CACHE_ENTRIES - 1) :])
    kept[install] = {"chromadb": known.chromadb_version, "levels": known.levels}
    raw = json.dumps({"version": 1, "entries": kept}).encode()  # oldest first
    path = cache_path()
    try:
        fsutil.make_private_dirs(path.parent)
        fsutil.atomic_write(path, raw)
    except OSError:
        pass


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
