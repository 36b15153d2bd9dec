"""`chromasnap pin ID` / `unpin ID`: protect a snapshot from every retention rule."""

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
    handle_errors,
    manager,
    print_json,
)

IdArg = Annotated[str, typer.Argument(metavar="ID", help="Id, unique prefix, or 'latest'.")]


@handle_errors
def pin_cmd(
    snapshot_id: IdArg,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Pin a snapshot: prune never removes it."""
    s = manager(db, store, allow_foreign_owner, password_file).pin(snapshot_id, True)
    print_json({"id": s.id, "pinned": True}) if json_out else typer.echo(f"pinned {s.short_id}")


@handle_errors
def unpin_cmd(
    snapshot_id: IdArg,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Unpin a snapshot: retention rules apply to it again."""
    s = manager(db, store, allow_foreign_owner, password_file).pin(snapshot_id, False)
    print_json({"id": s.id, "pinned": False}) if json_out else typer.echo(f"unpinned {s.short_id}")
