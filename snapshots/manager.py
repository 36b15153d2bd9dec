"""SnapshotManager: the public Python API that the CLI is a thin layer over."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from chromasnap.manifest import Snapshot, Totals, snapshot_id

from .backend import Backend, LocalBackend
from .errors import UsageError
from .repository import Repository

Progress = Callable[[int], None]
SQLITE_NAME = "chroma.sqlite3"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def default_store(db_path: Path) -> Path:
    """`<parent of db>/<db name>.snapshots`."""
    return db_path.parent / f"{db_path.name}.snapshots"


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_layout(db_path: Path, store_path: Path) -> None:
    """Refuse a store inside the database, or a database inside the store."""
    db, store = Path(os.path.realpath(db_path)), Path(os.path.realpath(store_path))
    if _inside(store, db):
        raise UsageError(
            f"the store {store_path} is inside the database {db_path}; put it elsewhere"
        )
    if _inside(db, store):
        raise UsageError(f"the database {db_path} is inside the store {store_path}")
    if store_path.exists() and not store_path.is_dir():
        raise UsageError(f"the store path {store_path} exists and is not a directory")


def check_database(db_path: Path) -> None:
    """A Chroma database is a directory holding chroma.sqlite3."""
    if not db_path.exists():
        raise UsageError(f"database {db_path} does not exist")
    if not db_path.is_dir():
        raise UsageError(f"database {db_path} is not a directory")
    sq = db_path / SQLITE_NAME
    if not sq.is_file() or sq.is_symlink():
        raise UsageError(f"{db_path} is not a Chroma database (no {SQLITE_NAME})")
    if not os.access(sq, os.R_OK):
        raise UsageError(f"cannot read {sq}: permission denied")


class SnapshotManager:
    """Snapshots of one Chroma database directory kept in one store.

    >>> mgr = SnapshotManager("./chroma")            # store: ./chroma.snapshots
    >>> snap = mgr.snapshot(reason="manual", tags=["nightly"])
    >>> mgr.extract(snap.id, "./chroma-copy")
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None,
        store_path: str | os.PathLike[str] | None = None,
        *,
        backend: Backend | None = None,
    ) -> None:
        if db_path is None and store_path is None:
            raise UsageError("no database given: use --db PATH or set CHROMASNAP_DB")
        self.db_path = Path(os.path.abspath(db_path)) if db_path is not None else None
        if store_path is not None:
            self.store_path = Path(os.path.abspath(store_path))
        else:
            assert self.db_path is not None
            self.store_path = default_store(self.db_path)
        if self.db_path is not None:
            check_layout(self.db_path, self.store_path)
        elif self.store_path.exists() and not self.store_path.is_dir():
            raise UsageError(f"the store path {self.store_path} exists and is not a directory")
        self.backend = backend or LocalBackend(self.store_path)
        self._repo: Repository | None = None
        self.problems: list[str] = []
        """Messages about unreadable snapshots found by the last `list()`."""
        self.last_duration_s = 0.0

    # --- reading ------------------------------------------------------------------

    @property
    def repo(self) -> Repository:
        if self._repo is None:
            self._repo = Repository.open(self.backend)
        return self._repo

    def list(self) -> list[Snapshot]:
        """Every readable snapshot, oldest first (see `problems` for unreadable ones)."""
        if not self.backend.exists():
            return []
        snaps, self.problems = self.repo.snapshots()
        return snaps

    def get(self, ref: str) -> Snapshot:
        """The snapshot with this id, unique id prefix, or `latest`."""
        return self.repo.load_snapshot(self.repo.resolve(ref))

    # --- writing ------------------------------------------------------------------

    def snapshot(
        self,
        reason: str = "manual",
        tags: Sequence[str] = (),
        note: str | None = None,
        progress: Progress | None = None,
    ) -> Snapshot:
        """Capture the database now; returns the new snapshot's record.

        Unchanged files are taken from the newest snapshot of the same database without
        being read; every chunk is stored once however many snapshots hold it.
        """
        from .capture import capture

        db_path = self._need_db()
        check_database(db_path)
        for t in tags:
            if not t or len(t) > 100 or any(c.isspace() or c == "," for c in t):
                raise UsageError(f"invalid tag {t!r}: use 1-100 characters, no spaces or commas")
        with self.backend.lock():
            repo = self._repo = Repository.open_or_create(self.backend)
            started = datetime.now(UTC)
            t0 = time.monotonic()
            parent = self._parent(repo)
            writer = repo.writer()
            try:
                dirs, files, skipped, wal, read_bytes, reused = capture(
                    repo, writer, db_path, parent, progress
                )
                writer.commit()
            except BaseException:
                writer.abort()
                raise
            totals = Totals(
                files=len(files),
                logical_bytes=sum(f.size for f in files),
                data_bytes=sum(f.data_bytes for f in files),
                read_bytes=read_bytes,
                new_blobs=writer.new_blobs,
                new_bytes=writer.new_bytes,
                reused_files=reused,
            )
            snap = Snapshot(
                id="0" * 64,
                created_at=started,
                reason=reason,
                tags=list(tags),
                note=note,
                source=str(db_path),
                hostname=socket.gethostname(),
                root_mode=os.lstat(db_path).st_mode & 0o7777,
                parent=parent.id if parent else None,
                chromasnap_version=_version("chromasnap") or "",
                chromadb_version=_version("chromadb"),
                totals=totals,
                dirs=dirs,
                files=files,
                skipped=skipped,
                wal=wal,
            )
            snap.id = snapshot_id(snap)
            repo.save_snapshot(snap)
            self.last_duration_s = time.monotonic() - t0
            return snap

    def _need_db(self) -> Path:
        if self.db_path is None:
            raise UsageError("this needs the database: use --db PATH or set CHROMASNAP_DB")
        return self.db_path

    def _parent(self, repo: Repository) -> Snapshot | None:
        snaps, _ = repo.snapshots()
        same = [s for s in snaps if s.source == str(self.db_path)]
        return same[-1] if same else None

    def extract(
        self, ref: str, target: str | os.PathLike[str], progress: Progress | None = None
    ) -> Path:
        """Write snapshot `ref` into `target`, a new or empty directory; every byte is checked."""
        from .extract import extract

        snap = self.get(ref)
        dest = Path(os.path.abspath(target))
        real = Path(os.path.realpath(dest))
        if _inside(real, Path(os.path.realpath(self.store_path))):
            raise UsageError(f"{dest} is inside the store; extract somewhere else")
        return extract(self.repo, snap, dest, progress)
