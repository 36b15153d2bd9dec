"""`chromasnap health`: does the live database open and answer queries?"""

from __future__ import annotations

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
    manager,
    print_json,
    shown,
)


@handle_errors
def health_cmd(
    in_place: Annotated[
        bool, typer.Option("--in-place", help="Probe the live directory itself (faster; no copy).")
    ] = False,
    python: PythonOpt = None,
    timeout: TimeoutOpt = 120.0,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Probe the live database with chromadb in a child process; exit 0 healthy, 1 not."""
    report = manager(db, store, allow_foreign_owner, password_file).health(
        in_place=in_place, python=python, timeout=timeout
    )
    if json_out:
        print_json(
            {
                "healthy": report.healthy,
                "verdict": report.verdict,
                "detail": report.detail,
                "holders": report.holders,
            }
        )
    else:
        state = "healthy" if report.healthy else f"UNHEALTHY ({report.verdict})"
        typer.echo(f"{state}: {shown(report.detail)}")
        for holder in report.holders:
            typer.echo(f"  open by {shown(holder)}")
    if not report.healthy:
        raise typer.Exit(1)
