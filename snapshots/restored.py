"""The restored-state note: what a restore put in place, so that the next snapshot need
not read it again.

A restore writes every file anew (new inodes, new ctimes), so the parent snapshot's stat
tuples match nothing and the first snapshot after it used to re-read and re-hash the whole
database. `record` notes, once the restored database is in place and fsynced, the stat
tuple of each of its files and the snapshot they came from; `load` gives capture that note
back as an extra parent candidate (docs/capture.md). The note lives with the database's
other machine-local state (the write lock and intents: the store for a local store,
`stores.beside_db` for a remote one), sealed by the store's codec, and is hostile input:
bounded, validated, and ignored when it names another database or a snapshot the store
does not hold. A stale note never costs correctness: a file whose ctime or inode changed
does not match it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from chromasnap.manifest import (
    FileEntry,
    RestoredFile,
    RestoredState,
    Snapshot,
    dumps,
    limits,
)
from chromasnap.manifest.io import parse_json

from .backend import StorageBackend
from .errors import ChromasnapError
from .layout import OWN_PREFIX
from .repository import Repository

__all__ = ["Restored", "load", "note_name", "record"]

NOTE_DIR = "restored"
TICK_TRIES = 10
"""Marker retries (10 ms apart) while a file's ctime is not yet before the marker's."""


def note_name(db: Path) -> str:
    """The note's name for the database path `db` as the manager holds it (one store may
    serve several databases)."""
    return f"{NOTE_DIR}/{hashlib.sha256(str(db).encode(errors='surrogateescape')).hexdigest()[:32]}.json"


def _marker_ns(root: Path) -> int:
    """Now, by the clock and granularity of the file system holding `root`: the ctime of a
    file created (and removed) there. Files changed after it get a ctime no earlier."""
    path = root / f"{OWN_PREFIX}restored-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        return os.fstat(fd).st_ctime_ns
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def record(local: StorageBackend, repo: Repository, db: Path, real: Path, snap: Snapshot) -> bool:
    """Note that `real` (the database `db` as the manager names it, symlinks resolved) now
    holds snapshot `snap`, file for file; called after the swap, the files fsynced. The
    marker time is taken before the files are stat'ed, so a change after the stat always
    shows in the ctime. Never fails the restore: False when no note could be written."""
    try:
        for _try in range(TICK_TRIES):
            taken = _marker_ns(real)
            files = []
            newest = 0
            for f in snap.files:
                try:
                    st = os.lstat(real / f.path)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                files.append(
                    RestoredFile(
                        path=f.path,
                        size=st.st_size,
                        mtime_ns=st.st_mtime_ns,
                        ctime_ns=st.st_ctime_ns,
                        inode=st.st_ino,
                    )
                )
                newest = max(newest, st.st_ctime_ns)
            if newest < taken:
                break
            time.sleep(0.01)  # written within the marker's clock tick: wait for the next one
        note = RestoredState(db=str(db), snapshot=snap.id, taken_ns=taken, files=files)
        name = note_name(db)
        local.save(name, repo.codec.seal(name, dumps(note)))  # temp, fsync, rename, fsync dir
        return True
    except (OSError, ChromasnapError, ValidationError):
        return False


@dataclass
class Restored:
    """A valid note and the snapshot it names: capture's extra parent candidate."""

    note: RestoredState
    snapshot: Snapshot
    files: dict[str, tuple[RestoredFile, FileEntry]]
    """path -> (its stat tuple in the note, its entry in the snapshot)."""


def load(local: StorageBackend | None, repo: Repository, db: Path) -> Restored | None:
    """The note of `db`, or None when there is none or it is not to be trusted (too big,
    not a valid document, another database's, a snapshot not in this store)."""
    if local is None:
        return None
    name = note_name(db)
    try:
        raw = local.load_bounded(name, limits.MAX_RESTORED_NOTE + repo.codec.overhead)
        body = repo.codec.open(name, raw)
        note = RestoredState.model_validate(parse_json(body, name, limits.MAX_RESTORED_NOTE))
        if note.db != str(db):
            return None
        snap = repo.load_snapshot(note.snapshot, cached=True)
    except (ChromasnapError, ValidationError, ValueError, OSError):  # ManifestError: a ValueError
        return None
    if snap.id != note.snapshot:
        return None
    entries = {f.path: f for f in snap.files}
    files = {f.path: (f, entries[f.path]) for f in note.files if f.path in entries}
    return Restored(note, snap, files)
