"""`chromasnap mirror`: copy the snapshots not yet on the mirror (`policy set --mirror URL`)."""

from __future__ import annotations

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


@handle_errors
def mirror_cmd(
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Retry the mirroring backlog: every snapshot not yet copied to the mirror. Exit 1 if it fails.
    An encrypted mirror's password: CHROMASNAP_MIRROR_PASSWORD*, else the store's own."""
    res = manager(db, store, allow_foreign_owner, password_file).mirror()
    if json_out:
        print_json(
            {
                "mirror": res.mirror,
                "mirrored": res.mirrored,
                "failed": res.failed,
                "bytes_sent": res.bytes_sent,
            }
        )
    elif res.failed is None:
        typer.echo(f"{len(res.mirrored)} snapshots copied to {shown(res.mirror)}")
    if res.failed is not None:
        if not json_out:
            typer.echo(f"chromasnap: mirroring to {shown(res.mirror)} failed: {shown(res.failed)}", err=True)
        raise typer.Exit(1)
