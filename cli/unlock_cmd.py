"""`chromasnap unlock --stale`: break a remote store's lease that its holder let expire."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import DbOpt, DebugOpt, ForeignOpt, JsonOpt, StoreOpt, handle_errors, manager, print_json, shown


@handle_errors
def unlock_cmd(
    stale: Annotated[
        bool, typer.Option("--stale", help="Break only a lock whose holder let it expire.")
    ] = False,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
) -> None:
    """Break a stale lease of a remote store (a live holder is refused, exit 2)."""
    from chromasnap.snapshots import UsageError

    if not stale:
        raise UsageError("unlock breaks only stale locks: confirm with --stale")
    broken = manager(db, store, allow_foreign_owner).break_stale_lock()
    if json_out:
        print_json({"broken": broken})
        return
    for line in broken:
        typer.echo(f"broken: {shown(line)}")
    if not broken:
        typer.echo("nothing to unlock")
