"""`chromasnap peek ID COLLECTION`: records of one collection of a snapshot."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import DbOpt, DebugOpt, JsonOpt, StoreOpt, handle_errors, manager, print_json


@handle_errors
def peek_cmd(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID", help="Id, unique prefix, or 'latest'.")],
    collection: Annotated[str, typer.Argument(metavar="COLLECTION")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="Records to show.")] = 10,
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="Show this record (repeat for several).")
    ] = None,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show records (id, document, metadata) of COLLECTION in a snapshot; exit 1 if an --id is missing."""
    res = manager(db, store).peek(snapshot_id, collection, limit=limit, ids=ids)
    if json_out:
        print_json(res.model_dump(mode="json"))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(
            title=f"{collection} in {res.snapshot[:12]}: {len(res.records)} of {res.total} records",
            title_justify="left",
        )
        for col in ("id", "document", "metadata"):
            table.add_column(col, overflow="fold")
        for r in res.records:
            doc = "-" if r.document is None else (r.document[:200] + ("…" if len(r.document) > 200 else ""))
            table.add_row(r.id, doc, "-" if r.metadata is None else str(r.metadata))
        Console().print(table)
        for rid in res.missing:
            typer.echo(f"not in this snapshot: {rid}", err=True)
    if res.missing:
        raise typer.Exit(1)
