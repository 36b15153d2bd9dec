"""`chromasnap kept`: databases replaced by restore and recover, kept until purged."""

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
    shown,
)


@handle_errors
def kept_cmd(
    purge: Annotated[bool, typer.Option("--purge", help="Delete them (asks unless --yes).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """List (or purge) the replaced databases that restore and recover kept."""
    mgr = manager(db, store, allow_foreign_owner, password_file)
    kept = mgr.kept()
    if purge and kept and not yes:
        import sys

        if not sys.stdin.isatty():
            from chromasnap.snapshots import UsageError

            raise UsageError("kept --purge deletes databases: confirm with --yes")
        typer.confirm(f"Delete {len(kept)} kept database(s)?", abort=True)
    rows: list[dict[str, str | int]] = [{"path": str(p), "bytes": dir_bytes(p)} for p in kept]
    if purge:
        mgr.purge_kept()
    if json_out:
        print_json({"kept": rows, "purged": purge})
        return
    for r in rows:
        typer.echo(f"{'purged' if purge else 'kept'} {shown(r['path'])} ({human_bytes(int(r['bytes']))})")
    if not rows:
        typer.echo("no kept databases")
