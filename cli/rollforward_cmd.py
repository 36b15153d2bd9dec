"""`chromasnap roll-forward --from KEPT_DIR`: apply to the database what a replaced
database still holds past the snapshot it was restored from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import (
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
def rollforward_cmd(
    kept: Annotated[
        Path,
        typer.Option(
            "--from", help="The replaced database directory (see chromasnap kept).", show_default=False
        ),
    ],
    to: Annotated[
        Path | None,
        typer.Option(
            "--to",
            "--db",
            envvar="CHROMASNAP_DB",
            help="The restored database directory.",
            show_default=False,
        ),
    ] = None,
    python: PythonOpt = None,
    timeout: TimeoutOpt = 3600.0,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Roll the database forward: records added, changed and deleted since the snapshot,
    collections created and dropped since, from what the kept directory still holds.

    Every vector is bit-exact or listed as lost (JSON Lines next to the kept directory).
    Takes a pre-roll-forward snapshot first; running it again changes nothing. Exit 1 when
    records are lost or the kept directory is not a later state of the database."""
    from chromasnap.snapshots.rollforward import describe, table

    mgr = manager(to, store, allow_foreign_owner, password_file)
    report = mgr.roll_forward_from(kept, python=python, timeout=timeout)
    if json_out:
        print_json({**report.model_dump(), "totals": report.totals()})
    else:
        rows = table(report)
        widths = [max(len(shown(r[i])) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            cells = [
                shown(v).ljust(w) if i < 2 else shown(v).rjust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            ]
            typer.echo("  ".join(cells).rstrip())
        for p in report.problems:
            typer.echo(f"note: {shown(p)}", err=True)
        typer.echo(shown(describe(report)))
    if report.lost:
        raise typer.Exit(1)
