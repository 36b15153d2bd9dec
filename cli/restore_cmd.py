"""`chromasnap restore ID`: replace the live database with a snapshot, atomically."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .common import DbOpt, DebugOpt, JsonOpt, StoreOpt, handle_errors, manager, print_json
from .verify_cmd import PythonOpt, TimeoutOpt


@handle_errors
def restore_cmd(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID", help="Id, unique prefix, or 'latest'.")],
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the chromadb probe.")] = False,
    no_backup: Annotated[bool, typer.Option("--no-backup", help="Skip the pre-restore snapshot.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Restore even while a process has the database open.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    python: PythonOpt = None,
    timeout: TimeoutOpt = 120.0,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Restore a snapshot over the live database; the replaced one is kept (`chromasnap kept`)."""
    mgr = manager(db, store)
    snap = mgr.get(snapshot_id)
    if not yes:
        if not sys.stdin.isatty():
            from chromasnap.snapshots import UsageError

            raise UsageError("restore replaces the live database: confirm with --yes")
        typer.confirm(
            f"Replace {mgr.db_path} with snapshot {snap.short_id} of {snap.created_at:%Y-%m-%d %H:%M}?",
            abort=True,
        )
    res = mgr.restore(
        snap.id,
        verify=not no_verify,
        backup=not no_backup,
        force=force,
        python=python,
        timeout=timeout,
    )
    if json_out:
        print_json(res.model_dump())
        return
    typer.echo(
        f"restored {snap.short_id} into {res.db} ({res.mode}" + (", verified" if res.verified else "") + ")"
    )
    if res.pre_restore:
        typer.echo(f"the previous database was snapshotted as {res.pre_restore[:12]}")
    if res.kept_path:
        typer.echo(f"the replaced directory is kept at {res.kept_path}")
    if res.detail:
        typer.echo(f"note: {res.detail}", err=True)
