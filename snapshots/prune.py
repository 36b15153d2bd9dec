"""Prune: decide which snapshots the rules keep (retention.py), then reclaim (gc.py).

References go first, objects after: the catalog and the removed snapshots' documents, then
gc. Kept replaced databases (restore's and recover's) are pruned by `keep_replaced`.
"""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path

from chromasnap.manifest import RetentionPolicy, Snapshot

from . import gc
from .backend import StorageBackend
from .errors import StoreError, UsageError
from .fsutil import crash_point
from .guard import read_intents
from .repository import Repository
from .retention import decide, has_rules, validate


def plan(
    repo: Repository, rules: RetentionPolicy, dry_run: bool, intents: StorageBackend | None = None
) -> tuple[gc.PruneResult, list[Snapshot], gc.References]:
    """The deciding half: every snapshot with its verdict and reasons, the bytes removing
    the others would free, the snapshots kept, and the references read (shared with gc).
    The write intents protected are read from `intents` (beside the database when the
    store is remote: stores.py), else from the store. The caller holds the store lock."""
    validate(rules)
    if not has_rules(rules):
        raise UsageError("no retention rules: set them with `chromasnap policy set` or give --keep-* flags")
    snaps, problems = repo.snapshots()
    if problems:
        raise StoreError(f"{problems[0]}; prune stopped before deleting anything")
    repo.backend.list("packs")  # a store folder that is a symlink stops it here, too
    found = read_intents(intents or repo.backend)
    protected = {i.snapshot: "write intent (safety)" for i in found if i.snapshot}
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
    refs = gc.References(repo)  # shared with gc: each chunk list is read once
    usage = gc.usage(repo, snaps, refs)
    result = gc.PruneResult(
        kept=kept,
        removed=removed,
        dry_run=dry_run,
        expected_bytes=gc.freed_by(usage, {e.id for e in removed}),
    )
    return result, [s for s in snaps if reasons[s.id]], refs


def prune(
    repo: Repository, rules: RetentionPolicy, dry_run: bool, intents: StorageBackend | None = None
) -> gc.PruneResult:
    """Remove the snapshots `rules` do not keep, then reclaim every byte no remaining
    snapshot references (unless `dry_run`). The caller holds the store lock."""
    result, live, refs = plan(repo, rules, dry_run, intents)
    if not dry_run:
        repo.catalog_remove({e.id for e in result.removed})
        for e in result.removed:  # references first ...
            repo.backend.remove(f"snapshots/{e.id}.json")
            crash_point("prune-removed-one")
        # ... objects after
        result.reclaimed_bytes, result.repacked_packs, result.deleted_packs = gc.gc(repo, live, refs)
    return result


def prune_kept(kept: list[Path], rule: int | timedelta, dry_run: bool) -> list[str]:
    """Delete the kept replaced databases (oldest first in `kept`) that `rule` (keep the
    newest N, or those younger than a duration) does not keep; returns their paths."""
    if isinstance(rule, int):
        drop = kept[: max(0, len(kept) - rule)]
    else:
        horizon = time.time() - rule.total_seconds()
        drop = [p for p in kept if p.stat().st_mtime < horizon]
    if not dry_run:
        for p in drop:
            shutil.rmtree(p)
    return [str(p) for p in drop]
