"""`chromasnap peek ID COLLECTION`: records of one collection of a snapshot."""

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
    console,
    handle_errors,
    manager,
    print_json,
    shown,
)


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
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Show records (id, document, metadata) of COLLECTION in a snapshot; exit 1 if an --id is missing."""
    res = manager(db, store, allow_foreign_owner, password_file).peek(
        snapshot_id, collection, limit=limit, ids=ids
    )
    if json_out:
        print_json(res.model_dump(mode="json"))
    else:
        from rich.table import Table

        table = Table(
            title=f"{shown(collection, markup=True)} in {res.snapshot[:12]}: "
            f"{len(res.records)} of {res.total} records",
            title_justify="left",
        )
        for col in ("id", "document", "metadata"):
            table.add_column(col, overflow="fold")
        for r in res.records:
            doc = "-" if r.document is None else _clip(r.document)
            meta = "-" if r.metadata is None else _clip(_short(r.metadata), 1000)
            table.add_row(shown(_clip(r.id), markup=True), shown(doc, markup=True), shown(meta, markup=True))
        console().print(table)
        for rid in res.missing:
            typer.echo(f"not in this snapshot: {shown(_clip(rid))}", err=True)
    if res.missing:
        raise typer.Exit(1)


def _clip(text: str, limit: int = 200) -> str:
    """At most `limit` characters of `text` (a record may hold megabytes: only a glimpse
    is shown, in bounded time)."""
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def _short(metadata: dict[str, object]) -> str:
    """The metadata as `{key: value}` with each key and value clipped before it is joined."""

    def one(value: object) -> str:
        if isinstance(value, list):
            return "[" + ", ".join(one(v) for v in value[:20]) + (", …" if len(value) > 20 else "") + "]"
        return repr(_clip(value, 200)) if isinstance(value, str) else _clip(repr(value), 200)

    items = list(metadata.items())
    body = ", ".join(f"{_clip(repr(k), 100)}: {one(v)}" for k, v in items[:50])
    return "{" + body + (", …" if len(items) > 50 else "") + "}"
