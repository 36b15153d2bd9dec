"""`chromasnap recover`: run before the client opens; restore if the database is broken."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import DbOpt, DebugOpt, ForeignOpt, JsonOpt, StoreOpt, handle_errors, manager, print_json, shown
from .verify_cmd import PythonOpt, TimeoutOpt


@handle_errors
def recover_cmd(
    rollback: Annotated[
        bool,
        typer.Option(
            "--rollback-interrupted/--keep-interrupted",
            help="Roll back a guarded write whose process died (default) or keep its changes.",
        ),
    ] = True,
    reset: Annotated[
        bool,
        typer.Option("--reset", help="If nothing verifies, move the database aside for a re-index."),
    ] = False,
    python: PythonOpt = None,
    timeout: TimeoutOpt = 120.0,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
) -> None:
    """Finish an interrupted swap, probe, and restore the newest snapshot that verifies if needed."""
    res = manager(db, store, allow_foreign_owner).recover(
        rollback_interrupted=rollback, reset=reset, python=python, timeout=timeout
    )
    for warning in res.warnings:
        typer.echo(f"warning: {shown(warning)}", err=True)
    if json_out:
        print_json(
            {
                "action": res.action,
                "snapshot": res.snapshot,
                "reason": res.reason,
                "kept_path": res.kept_path,
            }
        )
    else:
        if res.finished_swap:
            typer.echo(shown(res.finished_swap))
        if res.action == "none":
            typer.echo("healthy: nothing to do")
        elif res.action == "restored":
            typer.echo(
                f"restored {res.snapshot and res.snapshot[:12]} because {shown(res.reason)}; "
                f"the broken database is kept at {shown(res.kept_path)}"
            )
        elif res.action == "reset":
            typer.echo(
                f"reset: {shown(res.reason)}; the broken database is kept at {shown(res.kept_path)}; "
                "the database path is empty, ready for a re-index"
            )
        else:
            typer.echo(f"failed: {shown(res.reason)}", err=True)
    if res.action == "failed":
        raise typer.Exit(1)
