"""SnapshotManager: the public Python API that the CLI is a thin layer over."""

from __future__ import annotations

import builtins
import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from chromasnap.manifest import RetentionPolicy, Snapshot, Totals, WalState, snapshot_id

from .backend import Backend, LocalBackend
from .errors import ChromasnapError, LockTimeout, SnapshotNotFound, StoreError, UsageError, WriterBusy
from .repository import Repository

if TYPE_CHECKING:
    from .browse import CollectionRestoreResult, DiffResult, ExportResult, FindResult, PeekResult
    from .capture import CaptureStats
    from .checker import HealthReport, ProbeReport, VerifyReport
    from .gc import PruneResult
    from .restore import RecoverResult, RestoreResult
    from .rollforward import RollForwardReport

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
        raise UsageError(f"the store {store_path} is inside the database {db_path}; put it elsewhere")
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


def no_database_yet(db_path: Path) -> bool:
    """The first run: `db_path` does not exist, or is a directory holding nothing but
    chromasnap's own entries (`.chromasnap-*`, mount mode) and a file system's `lost+found`."""
    if not os.path.lexists(db_path):
        return True
    if not db_path.is_dir():
        return False
    try:
        names = os.listdir(db_path)
    except OSError:
        return False
    from .swap import OWN_PREFIX

    return all(n.startswith(OWN_PREFIX) or n == "lost+found" for n in names)


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
        allow_foreign_owner: bool | None = None,
    ) -> None:
        """`allow_foreign_owner` reads a store another user owns (refused by default: they
        could have crafted it); None takes CHROMASNAP_ALLOW_FOREIGN_OWNER."""
        if db_path is None and store_path is None:
            raise UsageError("no database given: use --db PATH or set CHROMASNAP_DB")
        self.db_path = Path(os.path.abspath(db_path)) if db_path is not None else None
        if store_path is not None:
            self.store_path = Path(os.path.abspath(store_path))
        else:
            assert self.db_path is not None
            self.store_path = default_store(self.db_path)
        self.finished_swap: str | None = None
        """What was done to a restore a crash had interrupted (done before anything else)."""
        self.warnings: list[str] = []
        """Things found and deliberately not acted upon (a swap journal that is not this
        database's own); the CLI prints them."""
        if self.db_path is not None:
            check_layout(self.db_path, self.store_path)
            from .swap import IGNORED, finish_interrupted

            self.finished_swap = finish_interrupted(self.db_path)
            if self.finished_swap and self.finished_swap.startswith(IGNORED):
                self.warnings.append(self.finished_swap)
                self.finished_swap = None
        elif self.store_path.exists() and not self.store_path.is_dir():
            raise UsageError(f"the store path {self.store_path} exists and is not a directory")
        self.backend = backend or LocalBackend(self.store_path, allow_foreign_owner)
        self._repo: Repository | None = None
        self.problems: list[str] = []
        """Messages about unreadable snapshots found by the last `list()`, then what it
        ignored without harm (stray names, invalid catalog entries, damaged index files)."""
        self.last_duration_s = 0.0
        self.last_capture: CaptureStats | None = None
        """How the last `snapshot()` read the database (folders re-read, and why)."""
        self._holding_write_lock = 0
        self._seen: dict[str, tuple[datetime, str] | None] = {}
        """Snapshot id -> (created_at, source), for `_parent`: each document is read once."""
        self._last: Snapshot | None = None

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
        snaps, problems = self.repo.snapshots()
        self.problems = problems + self.repo.notes + sorted(self.repo.index_problems.values())
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
        *,
        exclusive: bool = False,
        wait: bool = True,
    ) -> Snapshot:
        """Capture the database now; returns the new snapshot's record.

        Unchanged files are taken from the newest snapshot of the same database without
        being read; every chunk is stored once however many snapshots hold it.

        `exclusive` takes the database write lock first, as a scheduled snapshot should,
        so that it never lands inside another process's guarded write: it waits up to the
        lock timeout (CHROMASNAP_LOCK_TIMEOUT), or with `wait=False` raises `WriterBusy` at
        once. Inside this manager's own `before_write` block the lock is already held.
        """
        db_path = self._need_db()
        check_database(db_path)
        for t in tags:
            if not t or len(t) > 100 or any(c.isspace() or c == "," for c in t):
                raise UsageError(f"invalid tag {t!r}: use 1-100 characters, no spaces or commas")
        if exclusive and not self._holding_write_lock:
            with self._write_lock(wait=wait):
                return self._snapshot(db_path, reason, tags, note, progress)
        return self._snapshot(db_path, reason, tags, note, progress)

    def _snapshot(
        self,
        db_path: Path,
        reason: str,
        tags: Sequence[str],
        note: str | None,
        progress: Progress | None,
    ) -> Snapshot:
        from .capture import capture
        from .owner import of_directory

        with self.backend.lock():
            repo = self._repo = Repository.open_or_create(self.backend)
            started = datetime.now(UTC)
            t0 = time.monotonic()
            parent = self._parent(repo)
            writer = repo.writer()
            try:
                cap = capture(repo, writer, db_path, parent, progress)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
            totals = Totals(
                files=len(cap.files),
                logical_bytes=sum(f.size for f in cap.files),
                data_bytes=sum(f.data_bytes for f in cap.files),
                read_bytes=cap.read_bytes,
                new_blobs=writer.new_blobs,
                new_bytes=writer.new_bytes,
                reused_files=cap.reused,
            )
            snap = Snapshot(
                id="0" * 64,
                created_at=started,
                reason=reason,
                tags=list(tags),
                note=note,
                source=str(db_path),
                hostname=socket.gethostname(),
                root_mode=os.stat(db_path).st_mode & 0o7777,  # a symlinked db: its target's
                owner=of_directory(db_path),
                parent=parent.id if parent else None,
                chromasnap_version=_version("chromasnap") or "",
                chromadb_version=_version("chromadb"),
                totals=totals,
                dirs=cap.dirs,
                files=cap.files,
                skipped=cap.skipped,
                wal=cap.wal,
                records=cap.records,
            )
            snap.id = snapshot_id(snap)
            repo.save_snapshot(snap)
            repo.catalog_add(snap.id)
            self._seen[snap.id], self._last = (snap.created_at, snap.source), snap
            self.last_duration_s = time.monotonic() - t0
            self.last_capture = cap.stats
            return snap

    def _need_db(self) -> Path:
        if self.db_path is None:
            raise UsageError("this needs the database: use --db PATH or set CHROMASNAP_DB")
        return self.db_path

    def _parent(self, repo: Repository) -> Snapshot | None:
        """The newest snapshot of this database. A document's creation time and source never
        change, so a manager reads each document once: every snapshot used to read them all,
        a cost growing with the store's history."""
        ids = repo.snapshot_ids()
        for sid in ids:
            if sid not in self._seen:
                try:
                    s = repo.load_snapshot(sid)
                except StoreError:
                    self._seen[sid] = None  # unreadable: never a parent (as before)
                    continue
                self._seen[sid] = (s.created_at, s.source)
                if s.source == str(self.db_path):
                    self._last = s
        live = set(ids)
        same = [
            (meta[0], sid)
            for sid, meta in self._seen.items()
            if meta is not None and sid in live and meta[1] == str(self.db_path)
        ]
        if not same:
            return None
        newest = max(same)[1]
        if self._last is not None and self._last.id == newest:
            return self._last
        return repo.load_snapshot(newest)

    def extract(self, ref: str, target: str | os.PathLike[str], progress: Progress | None = None) -> Path:
        """Write snapshot `ref` into `target`, a new or empty directory; every byte is checked."""
        from .extract import extract

        snap = self.get(ref)
        dest = Path(os.path.abspath(target))
        real = Path(os.path.realpath(dest))
        if _inside(real, Path(os.path.realpath(self.store_path))):
            raise UsageError(f"{dest} is inside the store; extract somewhere else")
        return extract(self.repo, snap, dest, progress)

    # --- integrity ----------------------------------------------------------------

    def verify(
        self,
        ref: str,
        quick: bool = False,
        python: str | None = None,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> VerifyReport:
        """Check one snapshot: every stored byte, then (unless `quick`) open it with chromadb
        (or the interpreter `python`) in a child process. The result is recorded in the
        snapshot's history."""
        return self.verify_many([ref], quick=quick, python=python, timeout=timeout, progress=progress)[0]

    def verify_many(
        self,
        refs: Sequence[str] | None = None,
        quick: bool = False,
        python: str | None = None,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> builtins.list[VerifyReport]:
        """`verify` for several snapshots (all when `refs` is None), reading shared files once."""

        repo = self.repo
        repo.refresh_index()  # another process may have pruned since this manager looked
        snaps = [self.get(r) for r in refs] if refs is not None else self.list()
        verified: dict[str, str | None] = {}
        reports = []
        for snap in snaps:
            t0 = time.monotonic()
            report = self._check(snap, quick, python, timeout, verified, progress)
            if not report.ok and report.verdict == "damaged":
                confirmed = self._confirm_damage(snap, report, quick, python, timeout, progress)
                if confirmed is None:  # prune removed it while this run read it
                    if refs is not None:
                        raise SnapshotNotFound(f"snapshot {snap.short_id} was removed while being verified")
                    continue
                report = confirmed
            report.duration_s = time.monotonic() - t0
            self._record(report, python)
            reports.append(report)
        return reports

    def _check(
        self,
        snap: Snapshot,
        quick: bool,
        python: str | None,
        timeout: float | None,
        verified: dict[str, str | None],
        progress: Progress | None,
    ) -> VerifyReport:
        """One snapshot's verdict: its stored bytes, and (unless `quick`) the probe."""
        from . import checker

        repo = self.repo
        probe = None
        if quick:
            problems, checked = checker.check_objects(repo, snap, verified, progress)
        else:  # extracting checks every blob and every whole-file hash on the way
            probe, problems = self._probe_snapshot(snap, python, timeout, verified)
            checked = snap.totals.data_bytes if probe is not None else 0
        if problems:
            detail = self._damage_detail(problems)
            if probe is not None:  # only pack hashes failed: the content was probed
                detail += f"; probe {probe.verdict}: {probe.detail}"
            return checker.VerifyReport(
                id=snap.id,
                ok=False,
                verdict="damaged",
                mode="quick" if quick else "full",
                detail=detail,
                checked_bytes=checked,
                probe=probe,
                restorable=probe is not None and probe.ok,
            )
        if quick:
            return checker.VerifyReport(
                id=snap.id,
                ok=True,
                verdict="ok",
                mode="quick",
                checked_bytes=checked,
                detail=f"{snap.totals.files} files, {checked} bytes: every hash matches",
            )
        assert probe is not None
        return checker.VerifyReport(
            id=snap.id,
            ok=probe.ok,
            verdict=probe.verdict,
            mode="full",
            detail=probe.detail,
            checked_bytes=checked,
            probe=probe,
        )

    def _confirm_damage(
        self,
        snap: Snapshot,
        report: VerifyReport,
        quick: bool,
        python: str | None,
        timeout: float | None,
        progress: Progress | None,
    ) -> VerifyReport | None:
        """Verify reads without a lock, so a prune running meanwhile may have moved a blob or
        removed the snapshot under it. Damage is reported only once it is seen again under
        the store lock (no prune then runs), with the index read afresh; None when the
        snapshot is gone."""
        from . import checker

        def again() -> VerifyReport | None:
            repo = self.repo
            if snap.id not in repo.snapshot_ids():
                return None
            repo.reset_index()  # read every index file afresh
            repo.backend.close()
            if quick:
                return self._check(snap, True, python, timeout, {}, progress)
            problems, _ = checker.check_objects(repo, snap, {})
            whole = checker.VerifyReport(id=snap.id, ok=True, verdict="ok", mode="quick")
            return report if problems else whole

        try:
            with self.backend.lock():
                seen = again()
        except (LockTimeout, StoreError, OSError):  # a read-only store, a long writer: look anyway
            seen = again()
        if seen is None or quick or not seen.ok:
            return seen
        return self._check(snap, quick, python, timeout, {}, progress)  # whole: probe it again

    def _damage_detail(self, problems: builtins.list[str]) -> str:
        """The problems, and for each damaged blob every snapshot that references it."""
        from . import checker

        detail = "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        prefixes = {p for p in (checker.damaged_blob_key(x) for x in problems) if p}
        if prefixes:
            users = []
            for s in self.list():
                keys = checker.referenced_blobs(self.repo, s)
                if any(k.startswith(p) for k in keys for p in prefixes):
                    users.append(s.short_id)
            blobs = ", ".join(sorted(prefixes))
            detail += f"; damaged blob(s) {blobs} referenced by snapshots {', '.join(users)}"
        packs = {p for p in (checker.damaged_pack_id(x) for x in problems) if p}
        if packs:
            index = self.repo.index()
            users = [
                s.short_id
                for s in self.list()
                if any(
                    (loc := index.get(k)) and loc.pack[:16] in packs
                    for k in checker.referenced_blobs(self.repo, s)
                )
            ]
            held = ", ".join(sorted(packs))
            detail += f"; damaged pack(s) {held} hold blobs of snapshots {', '.join(users)}"
            if all(checker.damaged_pack_id(x) for x in problems):
                detail += (
                    "; every blob these snapshots need still matches its hash, so they restore"
                    " as recorded, but the disk under the store deserves a check"
                )
        return detail

    def _probe_snapshot(
        self,
        snap: Snapshot,
        python: str | None,
        timeout: float | None,
        verified: dict[str, str | None],
    ) -> tuple[ProbeReport | None, builtins.list[str]]:
        """Extract privately (checking every blob) and probe; with any pack whose hash fails.

        No probe (None) when a blob or the record index is damaged."""
        import shutil

        from . import checker
        from .extract import extract

        work = self.backend.scratch_dir() / f"verify-{snap.id[:12]}-{os.getpid()}-{os.urandom(3).hex()}"
        os.mkdir(work, 0o700)
        try:
            try:
                db = extract(self.repo, snap, work / "db", durable=False)
            except StoreError as exc:  # name exactly what is damaged
                problems, _ = checker.check_objects(self.repo, snap, {})
                return None, problems or [str(exc)]
            from .records import check

            damaged = check(self.repo, snap)
            if damaged:
                return None, damaged
            packs = checker.check_packs(self.repo, snap, verified)  # content intact: still probe
            probe = checker.run_probe(db, snap.wal, python, timeout or checker.DEFAULT_TIMEOUT)
            return probe, packs
        finally:  # also on Ctrl-C: the private copy never outlives the check
            shutil.rmtree(work, ignore_errors=True)

    def _add_event(self, snap_id: str, kind: str, detail: str) -> None:
        """Append to a snapshot's mutable event history (under the store lock)."""
        from chromasnap.manifest import Event

        try:
            with self.backend.lock():
                snap = self.repo.load_snapshot(snap_id)
                snap.events.append(Event(at=datetime.now(UTC), kind=kind, detail=detail))
                self.repo.save_snapshot(snap)
        except (OSError, ChromasnapError):
            pass

    def _record(self, report: VerifyReport, python: str | None) -> None:
        from chromasnap.manifest import Verification

        from . import checker

        version = report.probe.chromadb_version if report.probe else None
        if report.probe is None and python is None:
            version = _version("chromadb")
        elif version is None and python is not None:
            version = checker.chromadb_version_of(python)
        entry = Verification(
            at=datetime.now(UTC),
            mode=report.mode,
            interpreter=python or sys.executable,
            chromadb_version=version,
            verdict=report.verdict,
            ok=report.ok,
            duration_s=round(report.duration_s, 3),
            detail=report.detail[:2000],
        )
        try:
            with self.backend.lock():
                snap = self.repo.load_snapshot(report.id)
                snap.verifications.append(entry)
                self.repo.save_snapshot(snap)
        except (OSError, ChromasnapError):
            pass  # a read-only store still gets its verdict, just not its history

    def health(
        self, in_place: bool = False, python: str | None = None, timeout: float | None = None
    ) -> HealthReport:
        """Probe the live database: a private consistent copy by default (a crash or a
        rolled-back journal then touches only the copy), the directory itself if `in_place`."""
        import shutil
        import tempfile

        from . import checker
        from .livecopy import copy_database
        from .sqlite_state import apply_hnsw, read_wal_state_file

        db_path = self._need_db()
        check_database(db_path)
        work: Path | None = None
        try:
            if in_place:
                target = db_path
            else:
                parent = db_path.parent if os.access(db_path.parent, os.W_OK) else Path(tempfile.gettempdir())
                work = Path(tempfile.mkdtemp(prefix=".chromasnap-health-", dir=parent))
                target = work / "db"
                copy_database(db_path, target)
            # in place, the live chroma.sqlite3 is never opened in this process (see
            # sqlite_copy.py), so there is no recorded state to compare with
            expected = None if in_place else self._expected_state(target, read_wal_state_file, apply_hnsw)
            probe = checker.run_probe(target, expected, python, timeout or checker.DEFAULT_TIMEOUT)
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
        return checker.HealthReport(
            healthy=probe.ok,
            verdict=probe.verdict,
            detail=probe.detail,
            in_place=in_place,
            probe=probe,
        )

    @staticmethod
    def _expected_state(
        db: Path, read: Callable[[Path], WalState], apply: Callable[..., None]
    ) -> WalState | None:
        """The WAL state of a database directory, to compare the probe's findings with."""
        from . import hnsw

        if (db / "chroma.sqlite3-journal").exists() or (db / "chroma.sqlite3-wal").exists():
            return None  # chromadb will first roll back or replay; counts are not comparable
        state = read(db / SQLITE_NAME)
        info: dict[str, tuple[int | None, bool]] = {}
        for seg in db.iterdir():
            if seg.is_dir() and not seg.is_symlink() and (seg / "header.bin").is_file():
                h = hnsw.parse_header((seg / "header.bin").read_bytes())
                info[seg.name] = (
                    h.cur_element_count if h else None,
                    (seg / "index_metadata.pickle").exists(),
                )
        apply(state, info)
        return state

    # --- restore, guarded writes, recovery -------------------------------------------

    def restore(
        self,
        ref: str,
        verify: bool = True,
        backup: bool = True,
        force: bool = False,
        python: str | None = None,
        timeout: float | None = None,
    ) -> RestoreResult:
        """Replace the live database with snapshot `ref`, atomically; the replaced
        directory is kept (see `kept`). Takes the database write lock."""
        from .restore import restore

        with self._write_lock():
            return restore(self, ref, verify, backup, force, python, timeout)

    def recover(
        self,
        rollback_interrupted: bool = True,
        reset: bool = False,
        python: str | None = None,
        timeout: float | None = None,
        *,
        roll_forward: bool = True,
    ) -> RecoverResult:
        """Run at start-up, before opening a client: finish an interrupted swap, probe the
        database, and if it is broken (or a guarded write died and `rollback_interrupted`)
        restore the newest snapshot that verifies, the interrupted write's first.

        After restoring a broken database, `roll_forward` applies what the replaced one
        still holds past the snapshot (`roll_forward_from`; not after rolling back an
        interrupted guarded write), and finishes a roll-forward a crash interrupted."""
        from .restore import recover

        db = self._need_db()
        if db.exists() and not db.is_dir():  # refuse before creating anything beside it
            raise UsageError(f"database {db} is not a directory")
        if not self.backend.exists():
            # No store: nothing to restore and no guarded write ever ran here, so no lock is
            # needed to look, and none is taken: recover creates nothing (no empty store).
            # Only moving a database aside (reset) takes the lock, and looks again under it.
            result = recover(self, rollback_interrupted, False, python, timeout)
            if result.action != "failed" or not reset:
                return result
        with self._write_lock():
            # --- issue 18: roll forward past the restored snapshot (rollforward.py) ---
            from .rollforward import after_recover, interrupted_writes

            undo = interrupted_writes(self) if rollback_interrupted else set()
            result = recover(self, rollback_interrupted, reset, python, timeout)
            return after_recover(self, result, roll_forward, python, timeout, undo)

    def roll_forward_from(
        self, kept: str | os.PathLike[str], python: str | None = None, timeout: float | None = None
    ) -> RollForwardReport:
        """Apply to the database what the replaced directory `kept` (see `kept`) holds past
        the snapshot it was restored from: records added, changed and deleted since,
        collections created and dropped since, each vector bit-exact or listed as lost
        (docs/recovery.md). A guarded write (pre-roll-forward snapshot); idempotent."""
        from .rollforward import roll_forward

        return roll_forward(self, kept, python, timeout)

    def open_client(self, **kwargs: object) -> object:
        """`recover()`, then `chromadb.PersistentClient(path=db)`: one call at start-up.

        On a fresh start (no database yet) the client creates the database."""
        result = self.recover()
        if result.action == "failed":
            raise ChromasnapError(f"cannot recover {self.db_path}: {result.reason}")
        import chromadb

        return chromadb.PersistentClient(path=str(self.db_path), **kwargs)  # type: ignore[arg-type]

    def kept(self) -> builtins.list[Path]:
        """Replaced databases kept by restore and recover, oldest first."""
        from .swap import kept_dirs

        return kept_dirs(self._need_db())

    def purge_kept(self) -> builtins.list[Path]:
        """Delete the kept replaced databases; returns what was removed."""
        import shutil

        gone = self.kept()
        for p in gone:
            shutil.rmtree(p)
        return gone

    def before_write(
        self,
        reason: str = "",
        tags: Sequence[str] = (),
        note: str | None = None,
        snapshot_reason: str = "pre-write",
    ) -> WriteGuard:
        """Guard a write: `with mgr.before_write(reason="index docs"):` or as a decorator.

        Takes the database write lock, snapshots (reason `snapshot_reason`), leaves a
        durable write intent for `recover` should the process die, and clears it when the
        block ends. The block's value is the pre-write snapshot.

        On the first run (the database does not exist yet, or is an empty directory) no
        snapshot is taken and the block's value is None: the directory is created (so a
        client opened inside the block writes there) and the intent names "no database"
        as the state to return to; `recover` after a crash inside moves what the write
        left aside (kept) for a fresh start.
        """
        return WriteGuard(self, reason, tags, note, snapshot_reason)

    # --- browsing by collection and record --------------------------------------------

    def diff(self, a: str, b: str | None = None, ids: bool = False, limit: int = 100) -> DiffResult:
        """What changed from snapshot `a` to snapshot `b` (default: the live database): per
        collection the records added, removed and changed (with `ids`, up to `limit` of
        each), collections created, dropped or recreated, and the files that differ."""
        from .browse import diff

        return diff(self, a, b, ids, limit)

    def find(self, record_id: str, collection: str | None = None) -> FindResult:
        """Every snapshot holding `record_id`, oldest first, with what changed between
        consecutive snapshots of the same database (appeared, changed, vanished)."""
        from .browse import find

        return find(self, record_id, collection)

    def peek(
        self, ref: str, collection: str, limit: int = 10, ids: Sequence[str] | None = None
    ) -> PeekResult:
        """Records (id, document, metadata) of one collection of a snapshot; no chromadb."""
        from .browse import peek

        return peek(self, ref, collection, limit, list(ids) if ids else None)

    def export(
        self,
        ref: str,
        collection: str,
        out: str | os.PathLike[str],
        python: str | None = None,
        timeout: float | None = None,
    ) -> ExportResult:
        """Write ids, documents, metadatas and embeddings of one collection of a snapshot to
        `out` as JSON lines (read by chromadb in a child; written atomically)."""
        from .browse import export

        return export(self, ref, collection, out, python, timeout)

    def restore_collection(
        self,
        ref: str,
        collection: str,
        as_name: str | None = None,
        replace: bool = False,
        force: bool = False,
        python: str | None = None,
        timeout: float | None = None,
    ) -> CollectionRestoreResult:
        """Bring one collection of snapshot `ref` back into the live database, as
        `as_name` if given; every other collection stays as it is.

        Runs as a guarded write (database write lock, a `pre-restore` snapshot, a write
        intent) through chromadb in a child process (`python`, default this interpreter).
        Records come back with the same ids, documents, metadata and bit-identical
        embeddings, under the collection's metadata and index configuration. An existing
        collection of the target name is refused unless `replace`; it is dropped only
        after its replacement is complete.
        """
        from .browse import restore_collection

        return restore_collection(self, ref, collection, as_name, replace, force, python, timeout)

    def _write_lock(self, wait: bool = True) -> contextlib.AbstractContextManager[object]:
        from .backend import lock_timeout

        self.backend.create()

        @contextlib.contextmanager
        def held() -> Iterator[object]:
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(self.backend.write_lock(None if wait else 0))
                except LockTimeout:
                    if not wait:
                        raise WriterBusy(
                            f"skipped: {self._write_lock_holder()} holds the write lock of "
                            f"{self.db_path}; no snapshot taken (--no-wait)"
                        ) from None
                    raise LockTimeout(
                        f"another process holds the write lock of {self.db_path} "
                        f"(a guarded write or a restore); gave up after {lock_timeout():g}s"
                    ) from None
                self._holding_write_lock += 1
                try:
                    yield self
                finally:
                    self._holding_write_lock -= 1

        return held()

    def _write_lock_holder(self) -> str:
        """Who holds the database write lock, as far as the write intents tell."""
        from .guard import read_intents

        try:
            live = [i for i in read_intents(self.backend) if not i.dead]
        except (OSError, ChromasnapError):
            live = []
        if live:
            return f"a guarded write (pid {live[0].pid}: {live[0].reason or 'no reason'})"
        return "a guarded write or a restore"

    # --- retention ---------------------------------------------------------------------

    def policy(self) -> RetentionPolicy:
        """The store's retention rules."""
        return self.repo.config.retention

    def set_policy(self, policy: RetentionPolicy) -> RetentionPolicy:
        """Replace the store's retention rules (validated; written atomically)."""
        from chromasnap.manifest import dumps

        from .retention import validate

        validate(policy)
        with self.backend.lock():
            repo = self._repo = Repository.open(self.backend)
            repo.config.retention = policy
            self.backend.write("config.json", dumps(repo.config))
        return policy

    def pin(self, ref: str, pinned: bool = True) -> Snapshot:
        """Pin a snapshot so that no retention rule removes it (or unpin it)."""
        with self.backend.lock():
            snap = self.get(ref)
            snap.pinned = pinned
            self.repo.save_snapshot(snap)
        return snap

    def prune(self, policy: RetentionPolicy | None = None, dry_run: bool = False) -> PruneResult:
        """Remove the snapshots the rules (the store's, or `policy` for this run) do not
        keep, then reclaim every byte no remaining snapshot references."""
        from . import gc
        from .guard import read_intents
        from .retention import decide, has_rules, parse_replaced, validate

        t0 = time.monotonic()
        with self.backend.lock():
            repo = self._repo = Repository.open(self.backend)
            rules = policy or repo.config.retention
            validate(rules)
            if not has_rules(rules):
                raise UsageError(
                    "no retention rules: set them with `chromasnap policy set` or give --keep-* flags"
                )
            snaps, problems = repo.snapshots()
            if problems:
                raise StoreError(f"{problems[0]}; prune stopped before deleting anything")
            self.backend.list("packs")  # a store folder that is a symlink stops it here, too
            protected = {
                i.snapshot: "write intent (safety)" for i in read_intents(self.backend) if i.snapshot
            }
            reasons = decide(snaps, rules, protected)
            entries = [
                gc.PruneEntry(
                    id=s.id,
                    created_at=s.created_at.isoformat(),
                    reason=s.reason,
                    tags=s.tags,
                    keep=bool(reasons[s.id]),
                    why=reasons[s.id] or ["no rule keeps it"],
                )
                for s in sorted(snaps, key=lambda s: (s.created_at, s.id))
            ]
            kept = [e for e in entries if e.keep]
            removed = [e for e in entries if not e.keep]
            if snaps and not kept:
                raise UsageError("this policy would keep no snapshot at all; refused")
            refs = gc.References(repo)  # shared with gc below: each chunk list is read once
            usage = gc.usage(repo, snaps, refs)
            result = gc.PruneResult(
                kept=kept,
                removed=removed,
                dry_run=dry_run,
                expected_bytes=gc.freed_by(usage, {e.id for e in removed}),
            )
            if not dry_run:
                repo.catalog_remove({e.id for e in removed})
                for e in removed:  # references first ...
                    self.backend.remove(f"snapshots/{e.id}.json")
                    from .fsutil import crash_point

                    crash_point("prune-removed-one")
                live = [s for s in snaps if reasons[s.id]]
                # ... objects after
                result.reclaimed_bytes, result.repacked_packs, result.deleted_packs = gc.gc(repo, live, refs)
            if rules.keep_replaced and self.db_path is not None:
                result.purged_kept_dirs = self._prune_kept(parse_replaced(rules.keep_replaced), dry_run)
        result.duration_s = time.monotonic() - t0
        return result

    def _prune_kept(self, rule: int | timedelta, dry_run: bool) -> builtins.list[str]:
        import shutil

        kept = self.kept()
        if isinstance(rule, int):
            drop = kept[: max(0, len(kept) - rule)]
        else:
            horizon = time.time() - rule.total_seconds()
            drop = [p for p in kept if p.stat().st_mtime < horizon]
        if not dry_run:
            for p in drop:
                shutil.rmtree(p)
        return [str(p) for p in drop]

    def stats(self) -> StoreStats:
        """Store size, logical size, dedup ratio, and what removing each snapshot frees."""
        from . import gc

        snaps = self.list()
        repo = self.repo
        usage = gc.usage(repo, snaps)
        files = {
            n: self.backend.size(n) for d in ("packs", "index", "snapshots") for n in self.backend.list(d)
        }
        packs = sum(v for k, v in files.items() if k.startswith("packs/"))
        logical = sum(s.totals.logical_bytes for s in snaps)
        per = [
            SnapshotStats(
                id=s.id,
                created_at=s.created_at.isoformat(),
                logical_bytes=s.totals.logical_bytes,
                unique_bytes=gc.freed_by(usage, {s.id}),
            )
            for s in snaps
        ]
        return StoreStats(
            store_bytes=sum(files.values()) + self.backend.size("config.json"),
            pack_bytes=packs,
            referenced_bytes=sum(usage.stored.values()),
            logical_bytes=logical,
            dedup_ratio=(logical / packs) if packs else 0.0,
            snapshots=per,
        )


class SnapshotStats(BaseModel):
    id: str
    created_at: str
    logical_bytes: int
    unique_bytes: int


class StoreStats(BaseModel):
    store_bytes: int
    pack_bytes: int
    referenced_bytes: int
    logical_bytes: int
    dedup_ratio: float
    snapshots: builtins.list[SnapshotStats]


class WriteGuard(contextlib.ContextDecorator):
    """The context manager and decorator returned by `SnapshotManager.before_write`."""

    def __init__(
        self,
        mgr: SnapshotManager,
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
        from .guard import write_intent

        db = self.mgr._need_db()
        if not os.path.lexists(db.parent):  # before the store makes it 0700: as chromadb would
            from .fsutil import make_dirs

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
                self._intent = write_intent(self.mgr.backend, self.snapshot.id, self.reason, db)
                rules = self.mgr.repo.config.retention
                if rules.auto_prune:
                    from .retention import has_rules

                    if has_rules(rules):
                        self.mgr.prune()
        except BaseException:
            stack.close()
            raise
        self._lock = stack
        return self.snapshot

    def _first_write(self, db: Path) -> None:
        """Create the store (an empty one) and the database directory, both durably, then the
        intent naming "no database": a crash at any point leaves a fresh start."""
        from .fsutil import crash_point, make_dirs
        from .guard import write_intent

        if db.is_symlink() and not db.exists():
            raise UsageError(f"database {db} is a symbolic link to a missing {os.readlink(db)}")
        with self.mgr.backend.lock():
            self.mgr._repo = Repository.open_or_create(self.mgr.backend)
        make_dirs(db, 0o777)  # as chromadb makes it (less the umask); fsyncs each parent
        crash_point("first-write-dir")
        self._intent = write_intent(self.mgr.backend, None, self.reason, db)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: object) -> None:
        try:
            if et is not None and self.snapshot is not None:
                self.mgr._add_event(self.snapshot.id, "write-failed", f"{et.__name__}: {ev}"[:500])
            if self._intent:
                self.mgr.backend.remove(self._intent)
        finally:
            if self._lock is not None:
                self._lock.close()
