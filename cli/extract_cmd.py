"""`chromasnap extract ID DIR`: write a snapshot into a new directory."""

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
    StoreOpt,
    handle_errors,
    manager,
    print_json,
    progress_bar,
)


@handle_errors
def extract_cmd(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID", help="Id, unique prefix, or 'latest'.")],
    target: Annotated[Path, typer.Argument(metavar="DIR", help="New or empty directory.")],
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Extract a snapshot into DIR; every file is checked against its hash."""
    mgr = manager(db, store, allow_foreign_owner, password_file)
    snap = mgr.get(snapshot_id)
    with progress_bar("extract", snap.totals.data_bytes, not json_out) as prog:
        out = mgr.extract(snap.id, target, progress=prog)
    if json_out:
        print_json({"id": snap.id, "path": str(out), "files": snap.totals.files})
    else:
        typer.echo(f"extracted {snap.short_id} into {out} ({snap.totals.files} files, all hashes match)")
