"""`chromasnap init [--encrypt | --no-encrypt]`: create a store explicitly."""

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

EncryptOpt = Annotated[
    bool | None,
    typer.Option(
        "--encrypt/--no-encrypt",
        help="Seal everything in the store under a password (default: plain for a local path, "
        "encrypted for a remote store).",
        show_default=False,
    ),
]


@handle_errors
def init_cmd(
    encrypt: EncryptOpt = None,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Create an empty store (the first `snapshot` also creates a plain one)."""
    mgr = manager(db, store, allow_foreign_owner, password_file, confirm_password=True)
    repo = mgr.init(encrypt)
    if json_out:
        print_json(
            {
                "store": mgr.backend.location,
                "id": repo.config.id,
                "encrypted": repo.codec.encrypted,
                "key_id": repo.key_id,
            }
        )
        return
    kind = f"encrypted store (key {repo.key_id})" if repo.codec.encrypted else "store (not encrypted)"
    typer.echo(f"created {kind} {repo.config.id[:12]} at {mgr.backend.location}")
    if repo.codec.encrypted:
        typer.echo("keep the password safe: without it (or another key's) nothing in the store can be read")
