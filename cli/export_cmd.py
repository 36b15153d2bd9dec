"""`chromasnap export ID COLLECTION --out FILE.jsonl`: one collection, embeddings included."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import (
    DbOpt,
    DebugOpt,
    ForeignOpt,
    JsonOpt,
    PasswordFileOpt,
    PythonOpt,
    StoreOpt,
    TimeoutOpt,
    handle_errors,
    human_bytes,
    manager,
    print_json,
)


@handle_errors
def export_cmd(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID", help="Id, unique prefix, or 'latest'.")],
    collection: Annotated[str, typer.Argument(metavar="COLLECTION")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The JSON Lines file to write.")],
    python: PythonOpt = None,
    timeout: TimeoutOpt = 3600.0,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Write ids, documents, metadatas and embeddings of COLLECTION as JSON Lines, atomically."""
    res = manager(db, store, allow_foreign_owner, password_file).export(
        snapshot_id, collection, out, python=python, timeout=timeout
    )
    if json_out:
        print_json(res.model_dump(mode="json"))
    else:
        typer.echo(
            f"exported {res.records} records of {collection} from {res.snapshot[:12]} "
            f"to {res.out} ({human_bytes(res.bytes)})"
        )
