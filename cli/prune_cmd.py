"""`chromasnap prune`: remove snapshots by the retention rules, then reclaim space."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    DbOpt,
    DebugOpt,
    ForeignOpt,
    JsonOpt,
    KeepDaily,
    KeepHourly,
    KeepLast,
    KeepMonthly,
    KeepReplaced,
    KeepTag,
    KeepWeekly,
    KeepWithin,
    KeepYearly,
    PasswordFileOpt,
    StoreOpt,
    handle_errors,
    human_bytes,
    manager,
    print_json,
    rules_from,
    shown,
)


@handle_errors
def prune_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Only say what would happen.")] = False,
    keep_last: KeepLast = None,
    keep_hourly: KeepHourly = None,
    keep_daily: KeepDaily = None,
    keep_weekly: KeepWeekly = None,
    keep_monthly: KeepMonthly = None,
    keep_yearly: KeepYearly = None,
    keep_within: KeepWithin = None,
    keep_tag: KeepTag = None,
    keep_replaced: KeepReplaced = None,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Keep or remove each snapshot by rule (flags override the stored rules for this run)."""
    from chromasnap.manifest import RetentionPolicy

    mgr = manager(db, store, allow_foreign_owner, password_file)
    flags = rules_from(
        keep_last,
        keep_hourly,
        keep_daily,
        keep_weekly,
        keep_monthly,
        keep_yearly,
        keep_within,
        keep_tag,
        keep_replaced,
    )
    policy = RetentionPolicy.model_validate(flags) if flags else None
    res = mgr.prune(policy, dry_run=dry_run)
    if json_out:
        print_json(
            {
                "kept": [e.model_dump() for e in res.kept],
                "removed": [e.model_dump() for e in res.removed],
                "reclaimed_bytes": res.reclaimed_bytes,
                "expected_bytes": res.expected_bytes,
                "purged_kept_dirs": res.purged_kept_dirs,
                "dry_run": res.dry_run,
            }
        )
        return
    for e in sorted(res.kept + res.removed, key=lambda e: e.created_at):
        typer.echo(
            f"{'keep  ' if e.keep else 'remove'} {e.id[:12]} {e.created_at[:19]} {shown(e.reason):11} "
            f"{shown(', '.join(e.why))}"
        )
    for p in res.purged_kept_dirs:
        typer.echo(f"{'would purge' if dry_run else 'purged'} kept database {shown(p)}")
    if dry_run:
        typer.echo(
            f"dry run: would remove {len(res.removed)} snapshots and free {human_bytes(res.expected_bytes)}"
        )
    else:
        typer.echo(
            f"removed {len(res.removed)} snapshots, kept {len(res.kept)}; reclaimed "
            f"{human_bytes(res.reclaimed_bytes)} ({res.repacked_packs} packs rewritten, "
            f"{res.deleted_packs} deleted) in {res.duration_s:.1f} s"
        )
