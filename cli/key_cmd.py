"""`chromasnap key list|add|remove|passwd`: the key files of an encrypted store.

The store's password comes as for every command (--password-file, CHROMASNAP_PASSWORD_FILE,
_COMMAND, CHROMASNAP_PASSWORD, a prompt); a new password from --new-password-file or the
CHROMASNAP_NEW_PASSWORD* variables, or a prompt asked twice. Never from an argument."""

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
    shown,
)

key_app = typer.Typer(
    help="List, add, remove or re-password the keys of an encrypted store.", no_args_is_help=True
)

NewPasswordFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--new-password-file",
        help="File whose first line is the new password; else CHROMASNAP_NEW_PASSWORD_FILE, "
        "CHROMASNAP_NEW_PASSWORD_COMMAND, CHROMASNAP_NEW_PASSWORD, or a prompt (asked twice).",
        show_default=False,
    ),
]


def _new_password(path: Path | None) -> str:
    from chromasnap.snapshots.password import read_password

    return read_password(password_file=path, prefix="CHROMASNAP_NEW", confirm=True, prompt="New password: ")


@key_app.command("list")
@handle_errors
def list_cmd(
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """The store's key files; `*` marks the one the password opened."""
    found, problems, current = manager(db, store, allow_foreign_owner, password_file).keys()
    for problem in problems:
        typer.echo(f"warning: {shown(problem)}", err=True)
    if json_out:
        print_json(
            [
                {"id": k.id, "created_at": k.created_at, "kdf": k.kdf.to_json(), "current": k.id == current}
                for k in found
            ]
        )
        return
    for k in found:
        params = ",".join(f"{n}={v}" for n, v in k.kdf.to_json().items() if n not in ("name", "version"))
        mark = "*" if k.id == current else " "
        typer.echo(f"{mark} {k.id}  {k.created_at}  {k.kdf.name}:{params}")


@key_app.command("add")
@handle_errors
def add_cmd(
    new_password_file: NewPasswordFileOpt = None,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Add a key: another password that opens the store."""
    mgr = manager(db, store, allow_foreign_owner, password_file)
    mgr.keys()  # the current password first: a wrong one fails before a new one is asked
    key = mgr.add_key(_new_password(new_password_file))
    print_json({"id": key.id, "added": True}) if json_out else typer.echo(f"added key {key.id}")


@key_app.command("remove")
@handle_errors
def remove_cmd(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id (see `key list`).")],
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Remove a key (not the one the password opened, never the last one)."""
    manager(db, store, allow_foreign_owner, password_file).remove_key(key_id)
    print_json({"id": key_id, "removed": True}) if json_out else typer.echo(f"removed key {shown(key_id)}")


@key_app.command("passwd")
@handle_errors
def passwd_cmd(
    new_password_file: NewPasswordFileOpt = None,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Change the password of the key the current password opens (it gets a new id)."""
    mgr = manager(db, store, allow_foreign_owner, password_file)
    _, _, old = mgr.keys()
    key = mgr.change_password(_new_password(new_password_file))
    if json_out:
        print_json({"old_id": old, "id": key.id})
    else:
        typer.echo(f"password changed: key {old} replaced by {key.id}")
