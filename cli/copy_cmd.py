"""`chromasnap copy --from STORE --to STORE [ID...]`: snapshots from one store to another."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import REMOTE, DebugOpt, ForeignOpt, JsonOpt, handle_errors, human_bytes, print_json, shown


@handle_errors
def copy_cmd(
    ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[ID...]", help="Snapshots to copy (ids, prefixes, 'latest'); default all."),
    ] = None,
    from_store: Annotated[
        str | None,
        typer.Option("--from", help="Source store: a directory or s3://bucket/prefix.", show_default=False),
    ] = None,
    to_store: Annotated[
        str | None,
        typer.Option("--to", help="Target store (created if missing, like the source).", show_default=False),
    ] = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Do not read back each pack written to check its hash.")
    ] = False,
    encrypt: Annotated[
        bool | None,
        typer.Option(
            "--encrypt/--no-encrypt",
            help="A new target store: encrypted or not (default: encrypted when it is remote or the "
            "source is encrypted).",
            show_default=False,
        ),
    ] = None,
    same_key: Annotated[
        bool,
        typer.Option(
            "--same-key",
            help="A new encrypted target shares the source's master key (under its own password): "
            "later copies move sealed objects as they are, and ids agree.",
        ),
    ] = False,
    from_password_file: Annotated[
        Path | None,
        typer.Option(
            "--from-password-file",
            help="File whose first line is the source store's password; else "
            "CHROMASNAP_FROM_PASSWORD_FILE, CHROMASNAP_FROM_PASSWORD_COMMAND, CHROMASNAP_FROM_PASSWORD, "
            "a prompt.",
            show_default=False,
        ),
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(
            "--password-file",
            help="File whose first line is the target store's password; else CHROMASNAP_PASSWORD_FILE, "
            "CHROMASNAP_PASSWORD_COMMAND, CHROMASNAP_PASSWORD, a prompt (twice for a new store).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
) -> None:
    """Copy snapshots between stores, sending only the blobs the target lacks; a second run
    (or a run after a killed one) sends only what is still missing. Between stores with
    different keys (or an encrypted and a plain one) blobs are opened and sealed again."""
    from chromasnap.snapshots import UsageError
    from chromasnap.snapshots.store_copy import copy_snapshots
    from chromasnap.snapshots.stores import open_store

    if not from_store or not to_store:
        raise UsageError("copy needs both --from STORE and --to STORE")
    remote = {"endpoint_url": REMOTE["endpoint_url"], "no_cas": REMOTE["no_cas"]}
    src = open_store(from_store, allow_foreign_owner=allow_foreign_owner or None, **remote)
    dst = open_store(to_store, **remote)

    def from_password() -> str:
        from chromasnap.snapshots.password import read_password

        return read_password(
            password_file=from_password_file,
            prefix="CHROMASNAP_FROM",
            option="--from-password-file",
            prompt="Password of the source store: ",
        )

    def password() -> str:
        from chromasnap.snapshots.password import read_password

        new = not dst.exists()
        return read_password(
            password_file=password_file,
            confirm=new,
            prompt=f"Password of the {'new ' if new else ''}target store: ",
        )

    try:
        res = copy_snapshots(
            src,
            dst,
            ids or None,
            verify=not no_verify,
            from_password=from_password,
            password=password,
            encrypt=encrypt,
            same_key=same_key,
        )
    finally:
        src.close()
        dst.close()
    if json_out:
        print_json(
            {
                "source": res.source,
                "target": res.target,
                "copied": res.copied,
                "already_there": res.present,
                "target_ids": res.ids,
                "resealed": res.resealed,
                "created": res.created,
                "encrypted": res.encrypted,
                "blobs_sent": res.blobs_sent,
                "packs_sent": res.packs_sent,
                "bytes_sent": res.bytes_sent,
                "bytes_read": res.bytes_read,
                "duration_s": round(res.duration_s, 3),
            }
        )
        return
    if res.created:
        kind = "encrypted store" if res.encrypted else "store (not encrypted)"
        typer.echo(f"created {kind} at {shown(res.target)}")
    typer.echo(
        f"copied {len(res.copied)} snapshots to {shown(res.target)} "
        f"({len(res.present)} already there): {res.blobs_sent} blobs in {res.packs_sent} packs, "
        f"{human_bytes(res.bytes_sent)} sent in {res.duration_s:.1f}s"
        + (" (named and sealed by the target's keys: its ids differ)" if res.resealed and res.copied else "")
    )
