"""Swapping a restored database into place, atomically or under a journal.

A plain directory is exchanged with its staged replacement by renameat2(RENAME_EXCHANGE),
so there is no instant at which the path is missing; where the kernel or filesystem
cannot exchange, two renames run under a durable journal. A database that is a mount
point (a Docker volume, a bind mount) cannot be renamed at all (EBUSY): its entries are
moved instead, the old ones into a kept folder inside the mount, under the same journal.
Every chromasnap command that touches a database first calls `finish_interrupted`,
which completes or rolls back a swap a crash interrupted, deciding by inode numbers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chromasnap.manifest import ManifestError, limits
from chromasnap.manifest.io import parse_json

from . import fsutil

RENAME_EXCHANGE = 2
AT_FDCWD = -100
OWN_PREFIX = ".chromasnap-"
"""Entries with this prefix inside a database folder are chromasnap's own (mount mode)."""

_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """Atomically swap two paths (Linux renameat2 with RENAME_EXCHANGE)."""
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(a))


def _no_exchange() -> bool:
    """Test seam: behave as on a kernel or filesystem without RENAME_EXCHANGE."""
    return os.environ.get("CHROMASNAP_NO_EXCHANGE") == "1"


def _crash_point(name: str) -> None:
    """Test seam: die here by SIGKILL, as a crash would (CHROMASNAP_CRASH_AT=name)."""
    if os.environ.get("CHROMASNAP_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


def decode_mountinfo_path(field: bytes) -> bytes:
    """A path field of /proc/self/mountinfo as the raw bytes of the path. The kernel escapes
    space, tab, newline and backslash as a backslash and 3 octal digits (`\\040`); every
    other byte, UTF-8 or not, is written as it is, so the field is decoded as bytes (and the
    result compared with `os.fsencode` of a path), never as text."""
    return _OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field)


def mountinfo_points(text: bytes | None = None) -> set[bytes]:
    """Mount points (field 5) of /proc/self/mountinfo, or of `text` in its format, as bytes."""
    if text is None:
        try:
            text = Path("/proc/self/mountinfo").read_bytes()
        except OSError:
            return set()
    points = set()
    for line in text.split(b"\n"):
        fields = line.split(b" ")
        if len(fields) > 4:
            points.add(decode_mountinfo_path(fields[4]))
    return points


def is_mount_point(db: Path) -> bool:
    """The database folder is a mount point (a bind mount of the same filesystem too, which
    os.path.ismount misses), or on another filesystem than its parent."""
    if os.path.ismount(db) or os.stat(db).st_dev != os.stat(db.parent).st_dev:
        return True
    return os.fsencode(os.path.realpath(db)) in mountinfo_points()


def real_db(db: Path) -> Path:
    """The directory a restore replaces: the database path with every symlink resolved.

    A database path that is a symlink (`app/db -> ../real/chromadata`, a common container
    layout), or one under a symlinked parent, is restored into its target: the symlink
    stays a symlink, and the staging folder, the kept folder and the swap journal sit
    beside the real directory, on its filesystem. A dangling symlink resolves to where its
    target would be, so a restore onto a fresh machine creates the target.
    """
    return Path(os.path.realpath(db))


def utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def journal_paths(db: Path) -> list[Path]:
    """Where a swap journal for `db` may be: beside it, or inside it (mount mode)."""
    return [db.parent / f".{db.name}.chromasnap-swap.json", db / f"{OWN_PREFIX}swap.json"]


@dataclass
class SwapResult:
    mode: str  # "exchange", "two-renames", "entries", "fresh"
    kept: Path | None


def swap_in(db: Path, staging: Path, mount: bool) -> SwapResult:
    """Put the complete, fsynced `staging` in place of `db`; keep what was there."""
    if not db.exists():
        os.rename(staging, db)
        fsutil.fsync_dir(db.parent)
        return SwapResult("fresh", None)
    if mount:
        return _swap_entries(db, staging)
    kept = db.parent / f"{db.name}.replaced-{utc_stamp()}"
    while kept.exists():
        kept = kept.with_name(kept.name + "-1")
    journal = journal_paths(db)[0]
    record = {
        "version": 1,
        "kind": "dir",
        "db": str(db),
        "staging": str(staging),
        "kept": str(kept),
        "old_ino": os.lstat(db).st_ino,
        "new_ino": os.lstat(staging).st_ino,
    }
    fsutil.atomic_write(journal, json.dumps(record).encode())
    _crash_point("journal")
    mode = "exchange"
    try:
        if _no_exchange():
            raise OSError(errno.EINVAL, "RENAME_EXCHANGE disabled")
        exchange(staging, db)  # the path is never missing
        fsutil.fsync_dir(db.parent)
        _crash_point("exchanged")
        os.rename(staging, kept)
    except OSError as exc:
        if exc.errno == errno.EBUSY:  # a mount point we failed to detect: move entries
            journal.unlink()
            fsutil.fsync_dir(db.parent)
            inner = db / f"{OWN_PREFIX}restore-{os.urandom(4).hex()}"
            os.rename(staging, inner)  # fails with EXDEV on another filesystem: nothing lost
            return _swap_entries(db, inner)
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        mode = "two-renames"
        os.rename(db, kept)
        fsutil.fsync_dir(db.parent)
        _crash_point("first-rename")
        os.rename(staging, db)
    fsutil.fsync_dir(db.parent)
    _crash_point("swapped")
    journal.unlink()
    fsutil.fsync_dir(db.parent)
    return SwapResult(mode, kept)


def _entries(folder: Path) -> dict[str, int]:
    return {e.name: e.inode() for e in os.scandir(folder) if not e.name.startswith(OWN_PREFIX)}


def _swap_entries(db: Path, staging: Path) -> SwapResult:
    """Mount mode: move old entries into a kept folder inside the mount, new ones in."""
    kept = db / f"{OWN_PREFIX}replaced-{utc_stamp()}"
    while kept.exists():
        kept = kept.with_name(kept.name + "-1")
    journal = journal_paths(db)[1]
    record = {
        "version": 1,
        "kind": "entries",
        "db": str(db),
        "staging": str(staging),
        "kept": str(kept),
        "old": _entries(db),
        "new": _entries(staging),
    }
    fsutil.atomic_write(journal, json.dumps(record).encode())
    _roll_entries_forward(record)
    return SwapResult("entries", kept)


def _roll_entries_forward(record: dict[str, object]) -> None:
    """Idempotent: whatever was done, finish it."""
    db, staging, kept = (Path(str(record[k])) for k in ("db", "staging", "kept"))
    old: dict[str, int] = record["old"]  # type: ignore[assignment]
    new: dict[str, int] = record["new"]  # type: ignore[assignment]
    if not kept.exists():
        os.mkdir(kept, 0o700)
        fsutil.fsync_dir(db)
    for name, ino in old.items():
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(db / name).st_ino == ino:
                os.rename(db / name, kept / name)
                _crash_point("entry-moved-out")
    fsutil.fsync_dir(db)
    fsutil.fsync_dir(kept)
    for name in new:
        if (staging / name).exists() or (staging / name).is_symlink():
            os.rename(staging / name, db / name)
    fsutil.fsync_dir(db)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(staging)
    journal = journal_paths(db)[1]
    journal.unlink(missing_ok=True)
    fsutil.fsync_dir(db)


IGNORED = "ignored "
"""What `finish_interrupted` returns about a journal it did not trust starts with this."""
_TOKEN = r"[0-9a-f]{1,64}"
_STAMP = r"[0-9]{8}T[0-9]{6}Z(?:-1)*"


def _read_journal(journal: Path) -> Any:
    """The journal's JSON if it is a small regular file of this user's, never following a
    symlink; ValueError saying why not."""
    try:
        fd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError("it is a symlink") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("it is not a regular file")
        if st.st_uid != os.geteuid():
            raise ValueError(f"it belongs to uid {st.st_uid}, not to you")
        if st.st_size > limits.MAX_JOURNAL:
            raise ValueError(f"it is {st.st_size} bytes")
        raw = os.read(fd, limits.MAX_JOURNAL + 1)
    finally:
        os.close(fd)
    try:
        return parse_json(raw, str(journal), limits.MAX_JOURNAL)
    except ManifestError as exc:
        raise ValueError(str(exc)) from None


def _plain_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\x00" not in name
        and not name.startswith(OWN_PREFIX)
    )


def check_journal(record: Any, db: Path, inside: bool) -> str | None:
    """Why a swap journal found for `db` is not this database's own, or None if it is: its
    `db` is the path given, and its staged and kept folders are exactly the siblings (or,
    in mount mode, the `.chromasnap-` entries inside) that a restore of `db` creates, with
    plain entry names; so acting on it can only finish or undo a swap of `db` itself."""
    if not isinstance(record, dict) or record.get("version") != 1:
        return "not a version-1 swap journal"
    if record.get("db") != str(db):
        return f"it names another database ({str(record.get('db'))[:200]!r})"
    staging, kept = record.get("staging"), record.get("kept")
    if not isinstance(staging, str) or not isinstance(kept, str):
        return "its staged or kept folder is missing"
    name = re.escape(db.name)
    if inside:
        if record.get("kind") != "entries":
            return "a journal inside the database must be of kind 'entries'"
        base = re.escape(str(db)) + "/" + re.escape(OWN_PREFIX)
        staged_ok = re.fullmatch(rf"{base}(?:restore|empty)-{_TOKEN}", staging)
        kept_ok = re.fullmatch(rf"{base}replaced-{_STAMP}", kept)
    else:
        if record.get("kind") != "dir":
            return "a journal beside the database must be of kind 'dir'"
        base = re.escape(str(db.parent)) + "/"
        staged_ok = re.fullmatch(rf"{base}\.{name}\.(?:restore|empty)-{_TOKEN}", staging)
        kept_ok = re.fullmatch(rf"{base}{name}\.replaced-{_STAMP}", kept)
    if not staged_ok:
        return f"its staged folder {staging[:200]!r} is not one a restore of {db} makes"
    if not kept_ok:
        return f"its kept folder {kept[:200]!r} is not one a restore of {db} makes"
    if inside:
        for field in ("old", "new"):
            entries = record.get(field)
            if not isinstance(entries, dict) or len(entries) > limits.MAX_ENTRIES:
                return f"its {field!r} entries are not a table of names"
            for entry, ino in entries.items():
                if not _plain_name(entry) or type(ino) is not int:
                    return f"its {field!r} entries hold {str(entry)[:80]!r}, not a plain name and an inode"
    elif type(record.get("old_ino")) is not int or type(record.get("new_ino")) is not int:
        return "its inode numbers are missing"
    return None


def finish_interrupted(db: Path) -> str | None:
    """Complete or roll back a swap that a crash interrupted; returns what was done.

    Journals are looked for at the real directory (`real_db`), where restore writes them. A
    journal is acted on only if it is this database's own (`check_journal`); any other is
    left alone and reported: the return value then starts with IGNORED."""
    db = real_db(db)
    for journal, inside in zip(journal_paths(db), (False, True), strict=True):
        try:
            record = _read_journal(journal)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, ValueError) as exc:  # never act on a journal we cannot trust
            return f"{IGNORED}the swap journal {journal}: {getattr(exc, 'strerror', None) or exc}"
        why = check_journal(record, db, inside)
        if why:
            return f"{IGNORED}the swap journal {journal}, not acted upon: {why}"
        if record.get("kind") == "entries":
            _roll_entries_forward(record)
            return "completed an interrupted restore (mount mode)"
        staging, kept = Path(record["staging"]), Path(record["kept"])
        at_db = _ino(db)
        if at_db == record["new_ino"]:  # the new database is in place: finish tidying
            if _ino(staging) == record["old_ino"]:
                os.rename(staging, kept)
            action = "completed an interrupted restore"
        elif at_db is None and _ino(kept) == record["old_ino"] and _ino(staging) == record["new_ino"]:
            os.rename(staging, db)  # between the two renames
            action = "completed an interrupted restore"
        else:  # nothing was swapped yet: drop the staged copy
            if _ino(staging) == record["new_ino"]:
                shutil.rmtree(staging, ignore_errors=True)
            action = "rolled back an interrupted restore"
        fsutil.fsync_dir(db.parent)
        journal.unlink(missing_ok=True)
        fsutil.fsync_dir(db.parent)
        return action
    return None


def _ino(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


def kept_dirs(db: Path) -> list[Path]:
    """Replaced databases kept by restore and recover, oldest first (beside the real
    directory of a symlinked database, where they were kept)."""
    db = real_db(db)
    out = sorted(db.parent.glob(f"{db.name}.replaced-*"))
    if db.is_dir():
        out += sorted(db.glob(f"{OWN_PREFIX}replaced-*"))
    return [p for p in out if p.is_dir() and not p.is_symlink()]
