"""Restore and recover: put a verified snapshot in place of the live database, keeping
what was there; and, at start-up, decide whether that is needed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from . import swap
from .errors import ChromasnapError, StoreError, UsageError

if TYPE_CHECKING:
    from .guard import Intent
    from .manager import SnapshotManager


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


class RecoverResult(BaseModel):
    action: Literal["none", "restored", "reset", "failed"]
    snapshot: str | None = None
    reason: str = ""
    kept_path: str | None = None
    finished_swap: str | None = None
    tried: list[str] = []
    warnings: list[str] = []
    """Swap journals and write intents found but not trusted, so not acted upon."""


def restore(
    mgr: SnapshotManager,
    ref: str,
    verify: bool = True,
    backup: bool = True,
    force: bool = False,
    python: str | None = None,
    timeout: float | None = None,
) -> RestoreResult:
    from . import checker
    from .extract import extract
    from .guard import open_by
    from .livecopy import copy_database

    db = mgr._need_db()
    swap.finish_interrupted(db)
    snap = mgr.get(ref)
    if not force and db.exists():
        holders = open_by(db)
        if holders:
            pid, cmd = holders[0]
            more = f" (and {len(holders) - 1} more)" if len(holders) > 1 else ""
            raise RestoreRefused(
                f"pid {pid} ({cmd}) has files of {db} open{more}; stop it first, or use --force"
            )
    if not db.parent.is_dir():
        raise StoreError(f"{db.parent} does not exist")
    mount = db.exists() and swap.is_mount_point(db)
    token = os.urandom(4).hex()
    staging = (
        (db / f"{swap.OWN_PREFIX}restore-{token}") if mount else db.parent / f".{db.name}.restore-{token}"
    )
    result = RestoreResult(id=snap.id, db=str(db), mode="")
    try:
        extract(mgr.repo, snap, staging)  # every byte checked, every file fsynced
        if verify:
            probe_dir = (
                staging.parent / f".{db.name}.probe-{token}"
                if not mount
                else db / f"{swap.OWN_PREFIX}probe-{token}"
            )
            try:  # probe a copy: chromadb may write on open, the restore must stay exact
                copy_database(staging, probe_dir)
                report = checker.run_probe(probe_dir, snap.wal, python, timeout or checker.DEFAULT_TIMEOUT)
            finally:
                shutil.rmtree(probe_dir, ignore_errors=True)
            if not report.ok:
                raise RestoreRefused(
                    f"snapshot {snap.short_id} does not open ({report.verdict}): {report.detail}"
                )
            result.verified = True
        if backup and db.exists() and (db / "chroma.sqlite3").is_file():
            try:
                result.pre_restore = mgr.snapshot(
                    reason="pre-restore", note=f"before restoring {snap.short_id}"
                ).id
            except ChromasnapError as exc:  # unreadable: the replaced folder is kept anyway
                result.detail = f"no pre-restore snapshot ({exc}); the replaced database is kept"
        done = swap.swap_in(db, staging, mount)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.mode = done.mode
    result.kept_path = str(done.kept) if done.kept else None
    return result


def recover(
    mgr: SnapshotManager,
    rollback_interrupted: bool = True,
    reset: bool = False,
    python: str | None = None,
    timeout: float | None = None,
) -> RecoverResult:
    db = mgr._need_db()
    if db.exists() and not db.is_dir():
        raise UsageError(f"database {db} is not a directory")
    finished = swap.finish_interrupted(db)
    warnings: list[str] = []
    if finished and finished.startswith(swap.IGNORED):
        warnings.append(finished)
        finished = None
    intents = _trusted_intents(mgr, db, warnings)
    reason = ""
    if not db.exists():
        reason = "the database directory does not exist"
    elif not (db / "chroma.sqlite3").is_file():
        reason = "the database has no chroma.sqlite3"
    else:
        health = mgr.health(python=python, timeout=timeout)
        if not health.healthy:
            reason = f"health probe: {health.verdict}: {health.detail}"
        elif intents and rollback_interrupted:
            first = intents[0]
            reason = f"interrupted guarded write by pid {first.pid} ({first.reason or 'no reason'})"
    if not reason:
        _clear(mgr, intents)
        return RecoverResult(action="none", reason="healthy", finished_swap=finished, warnings=warnings)

    tried: list[str] = []
    candidates = [i.snapshot for i in intents if i.snapshot]
    if mgr.backend.exists():
        candidates += [s.id for s in reversed(mgr.list())]
    seen: set[str] = set()
    for sid in candidates:
        if sid in seen:
            continue
        seen.add(sid)
        try:
            report = mgr.verify(sid, python=python, timeout=timeout)
        except ChromasnapError:
            continue
        tried.append(f"{sid[:12]}:{report.verdict}")
        if not (report.ok or report.restorable):  # a pack's bit rot alone does not lose data
            continue
        res = restore(mgr, sid, verify=False, backup=False, force=True, python=python, timeout=timeout)
        _clear(mgr, intents)
        return RecoverResult(
            action="restored",
            snapshot=sid,
            reason=reason,
            kept_path=res.kept_path,
            finished_swap=finished,
            tried=tried,
            warnings=warnings,
        )
    if reset:
        kept = _move_aside(db)
        _clear(mgr, intents)
        return RecoverResult(
            action="reset",
            reason=reason + "; no snapshot verifies",
            kept_path=kept,
            finished_swap=finished,
            tried=tried,
            warnings=warnings,
        )
    return RecoverResult(
        action="failed",
        reason=reason + "; no snapshot verifies",
        finished_swap=finished,
        tried=tried,
        warnings=warnings,
    )


def _trusted_intents(mgr: SnapshotManager, db: Path, warnings: list[str]) -> list[Intent]:
    """The write intents recover may act on (guard.trusted_intents: this database's own,
    of a dead process on this host, after a snapshot in the store); why others are not
    goes to `warnings`."""
    from datetime import datetime

    from .guard import trusted_intents

    if not mgr.backend.exists():
        return []

    def created(sid: str) -> datetime | None:
        try:
            return mgr.repo.load_snapshot(sid).created_at
        except ChromasnapError:
            return None

    trusted, problems = trusted_intents(mgr.backend, db, created)
    warnings.extend(problems)
    return trusted


def _clear(mgr: SnapshotManager, intents: list) -> None:  # type: ignore[type-arg]
    for i in intents:
        mgr.backend.remove(i.name)


def _move_aside(db: Path) -> str | None:
    """Keep the broken database and leave an empty directory where it was."""
    if not db.exists():
        os.mkdir(db, 0o755)
        return None
    staging = db.parent / f".{db.name}.empty-{os.urandom(4).hex()}"
    mount = swap.is_mount_point(db)
    if mount:
        staging = db / f"{swap.OWN_PREFIX}empty-{os.urandom(4).hex()}"
    os.mkdir(staging, 0o755)
    done = swap.swap_in(db, staging, mount)
    return str(done.kept) if done.kept else None
