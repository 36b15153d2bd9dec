"""`chromasnap snapshot`: capture the database now."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    DbOpt,
    DebugOpt,
    ForeignOpt,
    JsonOpt,
    PasswordFileOpt,
    StoreOpt,
    dir_bytes,
    handle_errors,
    human_bytes,
    manager,
    print_json,
    progress_bar,
    shown,
)


@handle_errors
def snapshot_cmd(
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag to attach (repeatable).")] = None,
    note: Annotated[str | None, typer.Option("--note", help="Free text to keep with it.")] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why it was taken.")] = "manual",
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="If a guarded write (or a restore) holds the database write lock, skip at once "
            "(exit 1, nothing taken) instead of waiting up to CHROMASNAP_LOCK_TIMEOUT seconds.",
        ),
    ] = False,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Take a snapshot of the database (unchanged files are not read again).

    It first takes the database write lock, so it never lands inside a guarded write.
    Exit 1: nothing was taken (skipped with --no-wait, or the database could not be read
    consistently), or it was taken of a damaged database (the warning says which folder).
    """
    from chromasnap.snapshots.capture import DAMAGE_MARK

    mgr = manager(db, store, allow_foreign_owner, password_file)
    total = dir_bytes(mgr.db_path) if mgr.db_path is not None and mgr.db_path.is_dir() else None
    with progress_bar("snapshot", total, not json_out) as prog:
        snap = mgr.snapshot(
            reason=reason, tags=tag or [], note=note, progress=prog, exclusive=True, wait=not no_wait
        )
    damaged = [w for w in snap.wal.warnings if DAMAGE_MARK in w]
    if json_out:
        print_json(snap.model_dump(mode="json"))
        if damaged:
            raise typer.Exit(1)
        return
    t = snap.totals
    if t.new_bytes == 0:
        what = "nothing changed since the last snapshot: 0 bytes new"
    else:
        what = f"{human_bytes(t.new_bytes)} new in the store"
    typer.echo(
        f"snapshot {snap.short_id} taken: {t.files} files, {human_bytes(t.logical_bytes)}, "
        f"{what} ({t.reused_files} files unchanged, {mgr.last_duration_s:.2f} s)"
    )
    for w in snap.wal.warnings:
        typer.echo(f"warning: {shown(w)}", err=True)
    if damaged:
        raise typer.Exit(1)
