"""`chromasnap restore ID`: replace the live database with a snapshot, atomically."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .common import (
    DbOpt,
    DebugOpt,
    ForeignOpt,
    JsonOpt,
    PasswordFileOpt,
    PythonOpt,
    StoreOpt,
    handle_errors,
    manager,
    print_json,
    shown,
)


@handle_errors
def restore_cmd(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID", help="Id, unique prefix, or 'latest'.")],
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the chromadb probe.")] = False,
    no_backup: Annotated[bool, typer.Option("--no-backup", help="Skip the pre-restore snapshot.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Restore even while a process has the database open. That process keeps using the "
            "replaced directory: what it writes from then on is not in the restored database (and is "
            "lost with the kept copy), and its reads go stale. Stop it instead if you can.",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    collection: Annotated[
        str | None,
        typer.Option("--collection", "-c", help="Restore only this collection; the others stay as they are."),
    ] = None,
    as_name: Annotated[
        str | None, typer.Option("--as", help="With --collection: restore under this name.")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="With --collection: replace a collection of that name.")
    ] = False,
    python: PythonOpt = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=1,
            help="Seconds before chromadb is stopped (probe: 120 + 0.5 per collection; --collection: 3600).",
        ),
    ] = None,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Restore a snapshot over the live database (kept: `chromasnap kept`), or one --collection."""
    mgr = manager(db, store, allow_foreign_owner, password_file)
    snap = mgr.get(snapshot_id)
    if collection is None and (as_name or replace):
        from chromasnap.snapshots import UsageError

        raise UsageError("--as and --replace go with --collection")
    if collection is not None:
        _restore_collection(mgr, snap, collection, as_name, replace, force, python, timeout, json_out)
        return
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
        typer.echo(f"the replaced directory is kept at {shown(res.kept_path)}")
    if res.detail:
        typer.echo(f"note: {shown(res.detail)}", err=True)
    for w in res.warnings:
        typer.echo(f"warning: {shown(w)}", err=True)


def _restore_collection(
    mgr: Any,
    snap: Any,
    collection: str,
    as_name: str | None,
    replace: bool,
    force: bool,
    python: str | None,
    timeout: float | None,
    json_out: bool,
) -> None:
    res = mgr.restore_collection(
        snap.id, collection, as_name=as_name, replace=replace, force=force, python=python, timeout=timeout
    )
    if json_out:
        print_json(res.model_dump(mode="json"))
        return
    verb = "replaced" if res.replaced else "restored"
    typer.echo(
        f"{verb} collection {res.target} with {res.records} records of {collection} from {snap.short_id} "
        f"({res.exact_embeddings} of {res.records} embeddings bit-identical)"
    )
    typer.echo(f"the database before was snapshotted as {res.pre_restore[:12]}")
