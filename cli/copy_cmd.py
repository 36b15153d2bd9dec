"""`chromasnap copy --from STORE --to STORE [ID...]`: snapshots from one store to another."""

from __future__ import annotations

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
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
) -> None:
    """Copy snapshots between stores, sending only the blobs the target lacks; a second run
    (or a run after a killed one) sends only what is still missing."""
    from chromasnap.snapshots import UsageError
    from chromasnap.snapshots.store_copy import copy_snapshots
    from chromasnap.snapshots.stores import open_store

    if not from_store or not to_store:
        raise UsageError("copy needs both --from STORE and --to STORE")
    remote = {"endpoint_url": REMOTE["endpoint_url"], "no_cas": REMOTE["no_cas"]}
    src = open_store(from_store, allow_foreign_owner=allow_foreign_owner or None, **remote)
    dst = open_store(to_store, **remote)
    try:
        res = copy_snapshots(src, dst, ids or None, verify=not no_verify)
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
                "blobs_sent": res.blobs_sent,
                "packs_sent": res.packs_sent,
                "bytes_sent": res.bytes_sent,
                "bytes_read": res.bytes_read,
                "duration_s": round(res.duration_s, 3),
            }
        )
        return
    typer.echo(
        f"copied {len(res.copied)} snapshots to {shown(res.target)} "
        f"({len(res.present)} already there): {res.blobs_sent} blobs in {res.packs_sent} packs, "
        f"{human_bytes(res.bytes_sent)} sent in {res.duration_s:.1f}s"
    )
