"""Restore and recover: put a verified snapshot in place of the live database, keeping
what was there; and, at start-up, decide whether that is needed.
"""

from __future__ import annotations

import builtins
import os
import shutil
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, model_validator

from chromasnap.manifest import Snapshot

from . import checker, owner, restored, swap, versions
from .backend import StorageBackend
from .errors import ChromasnapError, StoreError, UsageError
from .extract import extract
from .guard import Intent, describe_holders, open_by, trusted_intents
from .layout import OWN_PREFIX, SQLITE_NAME, inside, no_database_yet
from .livecopy import copy_database
from .repository import Repository


class Host(Protocol):
    """What restore and recover use of the SnapshotManager: its store, snapshots, a new
    snapshot (pre-restore), verify and health. Passed in: restore.py does not import
    manager.py."""

    backend: StorageBackend
    problems: builtins.list[str]

    @property
    def local(self) -> StorageBackend: ...

    @property
    def repo(self) -> Repository: ...

    def _need_db(self) -> Path: ...

    def get(self, ref: str) -> Snapshot: ...

    def list(self) -> builtins.list[Snapshot]: ...

    def snapshot(
        self, reason: str = "manual", tags: Sequence[str] = (), note: str | None = None
    ) -> Snapshot: ...

    def verify(
        self, ref: str, quick: bool = False, python: str | None = None, timeout: float | None = None
    ) -> checker.VerifyReport: ...

    def health(
        self, in_place: bool = False, python: str | None = None, timeout: float | None = None
    ) -> checker.HealthReport: ...


class RestoreRefused(ChromasnapError):
    """Restore would be unsafe now (a process has the database open, the probe failed)."""


class RestoreResult(BaseModel):
    id: str
    db: str
    mode: str
    kept_path: str | None = None
    pre_restore: str | None = None
    verified: bool = False
    detail: str = ""
    warnings: list[str] = []
    """One line each: what the restore could not do as it should (an owner it may not set)."""


RecoverKind = Literal["fresh-start", "healthy", "restored", "rolled-back", "reset", "failed"]


class RecoverResult(BaseModel):
    """What `recover` did. `action` is the coarse verb scripts were written against; `kind`
    tells the cases apart (action in brackets):

    - fresh-start (none): no database yet (missing or an empty directory) and nothing to
      restore; or a guarded write that began with no database died, and what it wrote was
      moved aside (`kept_path`). The application creates the database.
    - healthy (none): the database opens; nothing was done.
    - restored (restored): the database was broken or missing; the newest snapshot that
      verifies is in place (`kept_path`: the broken one, if there was one).
    - rolled-back (restored): a guarded write's process died; its pre-write snapshot is in place.
    - reset (reset): nothing verifies; the database was moved aside, the path is empty.
    - failed (failed): nothing verifies and `reset` was not asked; nothing was changed.
    """

    action: Literal["none", "restored", "reset", "failed"]
    kind: RecoverKind = "healthy"
    snapshot: str | None = None
    reason: str = ""
    kept_path: str | None = None
    finished_swap: str | None = None
    tried: list[str] = []
    warnings: list[str] = []
    """Swap journals and write intents found but not trusted, so not acted upon; what a
    restore could not do as it should (an owner it may not set)."""
    roll_forward: dict[str, Any] | None = None
    """What roll-forward did after the restore (`rollforward.RollForwardReport`), if it ran."""

    @model_validator(mode="before")
    @classmethod
    def _derive_kind(cls, data: object) -> object:
        """`kind` from `action` when not given (only fresh-start is always given)."""
        if isinstance(data, dict) and "kind" not in data:
            action, reason = data.get("action"), str(data.get("reason", ""))
            kind = {"none": "healthy", "restored": "restored"}.get(str(action), action)
            if action == "restored" and reason.startswith(INTERRUPTED):
                kind = "rolled-back"
            data = {**data, "kind": kind}
        return data


INTERRUPTED = "interrupted guarded write"


def restore(
    mgr: Host,
    ref: str,
    verify: bool = True,
    backup: bool = True,
    force: bool = False,
    python: str | None = None,
    timeout: float | None = None,
) -> RestoreResult:
    given = mgr._need_db()
    db = swap.real_db(given)  # a symlinked database is restored into its target
    swap.finish_interrupted(db)
    snap = mgr.get(ref)
    # chromadb's migrations are one-way: never hand a newer schema to an older chromadb
    versions.check_openable(snap.id, snap.wal.schema_migrations, snap.chromadb_version, python, force)
    if not force:
        refuse_if_held(db)
    if not db.parent.is_dir():
        raise StoreError(f"{db.parent} does not exist")
    mount = db.exists() and swap.is_mount_point(db)
    place = db if mount else db.parent
    if not os.access(place, os.W_OK | os.X_OK):
        raise RestoreRefused(_no_permission(place, db, mount))
    who = owner.target_owner(db, snap.owner)
    token = os.urandom(4).hex()
    staging = (db / f"{OWN_PREFIX}restore-{token}") if mount else db.parent / f".{db.name}.restore-{token}"
    result = RestoreResult(id=snap.id, db=str(given), mode="")
    try:
        extract(mgr.repo, snap, staging)  # every byte checked, every file fsynced
        if verify:
            probe_dir = (
                staging.parent / f".{db.name}.probe-{token}"
                if not mount
                else db / f"{OWN_PREFIX}probe-{token}"
            )
            try:  # probe a copy: chromadb may write on open, the restore must stay exact
                copy_database(staging, probe_dir)
                seconds = checker.probe_timeout(snap.wal, timeout)
                report = checker.run_probe(probe_dir, snap.wal, python, seconds)
            finally:
                shutil.rmtree(probe_dir, ignore_errors=True)
            if not report.ok:
                raise RestoreRefused(
                    f"snapshot {snap.short_id} does not open ({report.verdict}): {report.detail}"
                )
            result.verified = True
        if who is not None:
            # in mount mode the mount point itself stays (and keeps its owner)
            problem = owner.apply(staging, who, given, include_root=True)
            if problem:
                result.warnings.append(problem)
        if backup and db.exists() and (db / SQLITE_NAME).is_file():
            try:
                result.pre_restore = mgr.snapshot(
                    reason="pre-restore", note=f"before restoring {snap.short_id}"
                ).id
            except (ChromasnapError, OSError) as exc:  # unreadable: the replaced folder is kept anyway
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                result.detail = f"no pre-restore snapshot ({why}); the replaced database is kept"
        if not force:  # a process may have opened it while we extracted and probed
            refuse_if_held(db)
        done = swap.swap_in(db, staging, mount)
    except PermissionError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        failed = Path(str(exc.filename)) if exc.filename else place
        if failed != place and not inside(failed, staging):  # not where the new one is built
            raise RestoreRefused(f"no permission for {failed} ({exc.strerror})") from None
        raise RestoreRefused(_no_permission(place, db, mount, exc)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.mode = done.mode
    result.kept_path = str(done.kept) if done.kept else None
    # the next snapshot takes these files from `snap` without reading them (restored.py)
    restored.record(mgr.local, mgr.repo, given, db, snap)
    return result


def refuse_if_held(db: Path) -> None:
    """Raise RestoreRefused naming a process that has the database open (the open-holders
    rule: nothing is swapped or written under a live process, whatever the reason)."""
    if not db.exists():
        return
    holders = open_by(db)
    if holders:
        raise RestoreRefused(
            f"{describe_holders(db, holders)}; stop it first, or use --force "
            "(it keeps using the replaced directory, and what it writes there is not in the "
            "restored database)"
        )


def _no_permission(place: Path, db: Path, mount: bool, exc: OSError | None = None) -> str:
    where = "inside the mount point" if mount else f"beside {db.name}"
    what = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
    return (
        f"no permission to write in {place}{what}: restore builds the new database {where} and "
        f"renames it into place; run it as root or as a user who may write in {place}"
    )


def recover(
    mgr: Host,
    rollback_interrupted: bool = True,
    reset: bool = False,
    python: str | None = None,
    timeout: float | None = None,
) -> RecoverResult:
    db = swap.real_db(mgr._need_db())  # a symlinked database is recovered in its target
    if db.exists() and not db.is_dir():
        raise UsageError(f"database {mgr._need_db()} is not a directory")
    finished = swap.finish_interrupted(db)
    warnings: list[str] = []
    if finished and finished.startswith(swap.IGNORED):
        warnings.append(finished)
        finished = None
    # intents name the database as the application gave it (a symlink stays a symlink)
    intents = _trusted_intents(mgr, mgr._need_db(), warnings)
    _refuse_while_open(db, intents if rollback_interrupted else [], "")
    first_run = _first_run(mgr, db, intents, rollback_interrupted, finished)
    if first_run is not None:
        first_run.warnings = warnings + first_run.warnings
        return first_run
    reason = ""
    if not db.exists():
        reason = "the database directory does not exist"
    elif not (db / SQLITE_NAME).is_file():
        reason = f"the database has no {SQLITE_NAME}"
    else:
        health = mgr.health(python=python, timeout=timeout)
        if not health.healthy:
            reason = f"health probe: {health.verdict}: {health.detail}"
        elif intents and rollback_interrupted:
            first = intents[0]
            reason = f"{INTERRUPTED} by pid {first.pid} ({first.reason or 'no reason'})"
    if not reason:
        _clear(mgr, intents)
        return RecoverResult(action="none", reason="healthy", finished_swap=finished, warnings=warnings)
    _refuse_while_open(db, [], reason)

    tried: list[str] = []
    candidates = [i.snapshot for i in intents if i.snapshot]
    if mgr.backend.exists():
        candidates += [s.id for s in reversed(mgr.list())]
    nothing = "no snapshot verifies" if candidates else _no_snapshots(mgr)
    seen: set[str] = set()
    for sid in candidates:
        if sid in seen:
            continue
        seen.add(sid)
        try:
            snap = mgr.get(sid)
        except ChromasnapError:
            continue
        # a snapshot newer than this chromadb: refuse (exit 2) rather than fall back to an
        # older one and lose what the newer chromadb wrote; run with --python NEWER
        versions.check_openable(snap.id, snap.wal.schema_migrations, snap.chromadb_version, python)
        try:
            report = mgr.verify(sid, python=python, timeout=timeout)
        except ChromasnapError:
            continue
        tried.append(f"{sid[:12]}:{report.verdict}")
        if not (report.ok or report.restorable):  # a pack's bit rot alone does not lose data
            continue
        res = restore(mgr, sid, verify=False, backup=False, python=python, timeout=timeout)
        _clear(mgr, intents)
        return RecoverResult(
            action="restored",
            snapshot=sid,
            reason=reason,
            kept_path=res.kept_path,
            finished_swap=finished,
            tried=tried,
            warnings=warnings + res.warnings,
        )
    if reset:
        kept = _move_aside(db)
        _clear(mgr, intents)
        return RecoverResult(
            action="reset",
            reason=f"{reason}; {nothing}",
            kept_path=kept,
            finished_swap=finished,
            tried=tried,
            warnings=warnings,
        )
    return RecoverResult(
        action="failed",
        reason=f"{reason}; {nothing}",
        finished_swap=finished,
        tried=tried,
        warnings=warnings,
    )


def _refuse_while_open(db: Path, intents: builtins.list[Intent], reason: str) -> None:
    """The open-holders rule in recover: a live process holding the database open means a
    writer is running (a write intent left by a dead guarded write notwithstanding), so
    nothing is swapped; there is no force here (`restore --force` is the way past)."""
    if not db.exists() or not (intents or reason):
        return
    holders = open_by(db)
    if not holders:
        return
    if intents:
        why = (
            f"a writer is running, so the write intent of pid {intents[0].pid} is not taken for a "
            "dead writer's"
        )
    else:
        why = f"the database needs recovering ({reason[:300]})"
    after = (
        " (with --keep-interrupted to keep what was written since instead of rolling back)" if intents else ""
    )
    raise RestoreRefused(
        f"{describe_holders(db, holders)}: {why}; recover swaps nothing while a process has the "
        f"database open: stop it, then run recover again{after}"
    )


def _trusted_intents(mgr: Host, db: Path, warnings: list[str]) -> list[Intent]:
    """The write intents recover may act on (guard.trusted_intents: this database's own,
    of a dead process on this host, after a snapshot in the store); why others are not
    goes to `warnings`."""
    if not mgr.backend.exists():
        return []

    def created(sid: str) -> datetime | None:
        try:
            return mgr.repo.load_snapshot(sid).created_at
        except ChromasnapError:
            return None

    trusted, problems = trusted_intents(mgr.local, db, created)
    warnings.extend(problems)
    return trusted


def _clear(mgr: Host, intents: builtins.list[Intent]) -> None:
    for i in intents:
        mgr.local.remove(i.name)


def _move_aside(db: Path) -> str | None:
    """Keep the broken database and leave an empty directory where it was (owned by the
    broken database's owner)."""
    if not db.exists():
        os.mkdir(db, 0o755)
        return None
    who = owner.target_owner(db, None)
    staging = db.parent / f".{db.name}.empty-{os.urandom(4).hex()}"
    mount = swap.is_mount_point(db)
    if mount:
        staging = db / f"{OWN_PREFIX}empty-{os.urandom(4).hex()}"
    os.mkdir(staging, 0o755)
    if who is not None:
        owner.apply(staging, who, db)
    done = swap.swap_in(db, staging, mount)
    return str(done.kept) if done.kept else None


# --- the first run of an application (no database yet) ------------------------------------


def _first_run(
    mgr: Host,
    db: Path,
    intents: list[Intent],
    rollback_interrupted: bool,
    finished: str | None,
) -> RecoverResult | None:
    """A fresh start, or None to go on with the usual checks.

    - A guarded write that began with no database (its intent's snapshot is null) died:
      what it left is moved aside (kept) and the path is a fresh start again. Such an
      intent is stale, and dropped from `intents`, when a snapshot of this database was
      taken since the write began.
    - No database yet (missing, or an empty directory) and no snapshot to restore: a fresh
      start; nothing is created. With snapshots the usual path restores the newest that
      verifies (a bare machine).
    """
    stale = [i for i in intents if i.snapshot is None and _snapshotted_since(mgr, db, i.started_at)]
    if stale:  # the database was snapshotted since: "no database" is no state to return to
        _clear(mgr, stale)
        intents[:] = [i for i in intents if i not in stale]
    first = [i for i in intents if i.snapshot is None]
    if first and rollback_interrupted:
        kept = None if no_database_yet(db) else _move_aside(db)
        _clear(mgr, intents)
        where = f"; what it wrote is kept at {kept}" if kept else ""
        return RecoverResult(
            action="none",
            kind="fresh-start",
            reason=f"no database yet: rolled back an {INTERRUPTED} by pid {first[0].pid} "
            f"({first[0].reason or 'no reason'}) that began with no database{where}",
            kept_path=kept,
            finished_swap=finished,
        )
    if not no_database_yet(db) or mgr.list():
        return None
    _clear(mgr, intents)
    return RecoverResult(action="none", kind="fresh-start", reason="no database yet", finished_swap=finished)


def _snapshotted_since(mgr: Host, db: Path, started_at: str) -> bool:
    """A snapshot of `db` was taken at or after `started_at` (an intent's UTC second)."""
    return any(
        s.source == str(db) and s.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") >= started_at for s in mgr.list()
    )


def _no_snapshots(mgr: Host) -> str:
    """Why nothing could be restored when the store offers no snapshot at all."""
    where = mgr.backend.location
    if mgr.backend.exists() and mgr.problems:
        return f"no readable snapshot in {where} ({mgr.problems[0]})"
    return f"no snapshots in {where}; take one with chromasnap snapshot"
