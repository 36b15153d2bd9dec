"""`chromasnap health`: does the live database open and answer queries?"""

from __future__ import annotations

import contextlib
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
    """Probe the live database with chromadb in a child process; exit 0 healthy, 1 not, 2 bad
    input (no database there). A container health check: docs/monitoring.md."""
    from chromasnap.snapshots import ChromasnapError

    mgr = manager(db, store, allow_foreign_owner, password_file)
    try:
        report = mgr.health(in_place=in_place, python=python, timeout=timeout)
    except ChromasnapError as exc:
        if not json_out or exc.exit_code != 1:
            raise
        # found broken before the probe ran (chroma.sqlite3 unreadable): still a verdict
        print_json(
            {
                "healthy": False,
                "verdict": "damaged",
                "detail": str(exc),
                "database": str(mgr.db_path),
                "in_place": in_place,
                "chromadb_version": None,
                "collections": None,
                "duration_s": None,
                "holders": [],
                "unmirrored": None,
            }
        )
        raise typer.Exit(1) from None
    behind: list[str] | None = None  # issue 16: snapshots not yet on the mirror (None: unknown)
    with contextlib.suppress(Exception):  # the store's state never changes the database's verdict
        behind = [x.id for x in mgr.unmirrored()]
    if json_out:  # the fields docs/monitoring.md documents (a container's health check reads them)
        print_json(
            {
                "healthy": report.healthy,
                "verdict": report.verdict,
                "detail": report.detail,
                "holders": report.holders,
                "database": str(mgr.db_path),
                "in_place": report.in_place,
                "chromadb_version": report.probe.chromadb_version,
                "collections": len(report.probe.collections),
                "duration_s": round(report.probe.duration_s, 3),
                "unmirrored": behind,
            }
        )
    else:
        state = "healthy" if report.healthy else f"UNHEALTHY ({report.verdict})"
        typer.echo(f"{state}: {shown(report.detail)}")
        for holder in report.holders:
            typer.echo(f"  open by {shown(holder)}")
        if behind:
            typer.echo(f"  {len(behind)} snapshots are not yet on the mirror (`chromasnap mirror` retries)")
    if not report.healthy:
        raise typer.Exit(1)
