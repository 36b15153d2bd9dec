"""`chromasnap verify`: check stored bytes, and open snapshots with chromadb in a child."""

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
def verify_cmd(
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...", help="Default: latest.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Verify every snapshot.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Only rehash stored bytes (no chromadb).")] = False,
    python: PythonOpt = None,
    timeout: TimeoutOpt = None,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Verify snapshots; exit 0 when all pass, 1 when any fails."""
    mgr = manager(db, store, allow_foreign_owner, password_file)
    if all_ and ids:
        from chromasnap.snapshots import UsageError

        raise UsageError("give snapshot ids or --all, not both")
    refs = None if all_ else (ids or ["latest"])
    reports = mgr.verify_many(refs, quick=quick, python=python, timeout=timeout)
    for problem in sorted(mgr.repo.index_problems.values()):  # what was found without them
        typer.echo(f"warning: {shown(problem)}", err=True)
    if json_out:
        print_json(
            [
                {"id": r.id, "ok": r.ok, "verdict": r.verdict, "detail": r.detail}
                | ({"restorable": True} if r.restorable else {})
                | ({"migration": r.migration} if r.migration else {})
                for r in reports
            ]
        )
    else:
        for r in reports:
            mark = "ok  " if r.ok else "FAIL"
            typer.echo(
                f"{mark} {r.id[:12]} {r.mode:5} {r.verdict:9} {shown(r.detail)} ({r.duration_s:.1f} s)"
            )
            if r.migration:
                typer.echo(f"     {shown(r.migration)}")
        if not reports:
            typer.echo("no snapshots to verify")
    if not all(r.ok for r in reports):
        raise typer.Exit(1)
