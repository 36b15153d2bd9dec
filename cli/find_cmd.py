"""`chromasnap find RECORD_ID`: every snapshot holding a record, and when it changed."""

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
    shown,
)

CollectionOpt = Annotated[str | None, typer.Option("--collection", "-c", help="Only this collection.")]


@handle_errors
def find_cmd(
    record_id: Annotated[str, typer.Argument(metavar="RECORD_ID", help="The record's id.")],
    collection: CollectionOpt = None,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Every snapshot holding RECORD_ID and when it appeared, changed, vanished; exit 1 if none."""
    res = manager(db, store, allow_foreign_owner, password_file).find(record_id, collection)
    for problem in res.problems:
        typer.echo(f"warning: {shown(problem)}", err=True)
    if json_out:
        print_json(res.model_dump(mode="json", exclude={"duration_s"}))
    else:
        where = f" in {collection}" if collection else ""
        held = [e for e in res.entries if e.change != "vanished"]
        typer.echo(f"{shown(record_id)}{shown(where)}: in {len(held)} of {res.snapshots} snapshots")
        for e in res.entries:
            detail = f" ({shown(', '.join(e.fields))})" if e.fields else ""
            seq = f" seq {e.seq_id}" if e.seq_id is not None else ""
            typer.echo(
                f"  {e.snapshot[:12]}  {e.created_at[:19].replace('T', ' ')}  {shown(e.collection):20} "
                f"{e.change}{detail}{seq}"
            )
    if not res.entries:
        raise typer.Exit(1)
