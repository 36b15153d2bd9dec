"""`chromasnap diff A [B]`: what changed between two snapshots, or a snapshot and the database."""

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
    human_bytes,
    manager,
    print_json,
    shown,
)

IdArg = Annotated[str, typer.Argument(metavar="ID", help="Id, unique prefix, or 'latest'.")]
LimitOpt = Annotated[int, typer.Option("--limit", min=0, help="At most this many ids per list.")]


@handle_errors
def diff_cmd(
    a: IdArg,
    b: Annotated[
        str | None, typer.Argument(metavar="[B]", help="Second snapshot; default: the live database.")
    ] = None,
    ids: Annotated[bool, typer.Option("--ids", help="List the record ids added, removed, changed.")] = False,
    limit: LimitOpt = 20,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """What changed from snapshot A to B (default: the live database), per collection and file."""
    from chromasnap.snapshots.names import file_label, segment_names

    mgr = manager(db, store, allow_foreign_owner, password_file)
    res = mgr.diff(a, b, ids=ids, limit=limit)
    names = segment_names([mgr.get(res.a), None if res.b == "live" else mgr.get(res.b)])
    if json_out:
        data = res.model_dump(mode="json", exclude={"duration_s"})
        for f in data["files"]:  # the segment id stays in `path`
            f["label"] = file_label(f["path"], names)
        for c in data["collections"]:
            if c["ids"] is None:
                del c["ids"]
        print_json(data)
        return
    label = {"live": "the live database"}
    typer.echo(f"from {res.a[:12]} to {label.get(res.b, res.b[:12])}")
    if all(c.status == "same" for c in res.collections):
        typer.echo("  records: no change")
    for c in res.collections:
        if c.status == "same":
            continue
        what = f"+{c.added} -{c.removed} ~{c.changed}"
        fields = ", ".join(f"{k} {v}" for k, v in sorted(c.fields.items()))
        note = {"created": " (created)", "dropped": " (dropped)", "recreated": " (dropped and recreated)"}
        typer.echo(
            f"  {shown(c.name)}{note.get(c.status, '')}: {what} "
            f"({c.records_a} -> {c.records_b} records)" + (f"; changed: {fields}" if fields else "")
        )
        if c.ids is not None:
            for kind, sign in (("added", "+"), ("removed", "-"), ("changed", "~")):
                for rid in getattr(c.ids, kind):
                    typer.echo(f"    {sign} {shown(rid)}")
    if res.files:
        typer.echo(f"  files: {len(res.files)} differ ({human_bytes(res.changed_bytes)})")
        for f in res.files:
            sizes = f"{human_bytes(f.size_a or 0)} -> {human_bytes(f.size_b or 0)}"
            typer.echo(f"    {f.status:8} {shown(file_label(f.path, names))} ({sizes})")
    else:
        typer.echo("  files: identical")
