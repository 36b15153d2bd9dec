"""`chromasnap recover`: run before the client opens; restore if the database is broken."""

from __future__ import annotations

from typing import Annotated, Any

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
    roll_forward: Annotated[
        bool,
        typer.Option(
            "--roll-forward/--no-roll-forward",
            help="After restoring a broken database, apply what the replaced one holds past the snapshot.",
        ),
    ] = True,
    python: PythonOpt = None,
    timeout: TimeoutOpt = None,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Finish an interrupted swap, probe, and restore the newest snapshot that verifies if needed.

    Reports one of: fresh start (no database yet), healthy, restored, rolled back (an
    interrupted guarded write), reset, failed (exit 1)."""
    mgr = manager(db, store, allow_foreign_owner, password_file)
    res = mgr.recover(
        rollback_interrupted=rollback, reset=reset, python=python, timeout=timeout, roll_forward=roll_forward
    )
    for warning in res.warnings:
        typer.echo(f"warning: {shown(warning)}", err=True)
    if json_out:
        print_json(
            {
                "action": res.action,
                "kind": res.kind,
                "snapshot": res.snapshot,
                "reason": res.reason,
                "kept_path": res.kept_path,
                "warnings": res.warnings,
                "finished_swap": res.finished_swap,
                "tried": res.tried,
                "roll_forward": res.roll_forward,
            }
        )
    else:
        if res.finished_swap:
            typer.echo(shown(res.finished_swap))
        typer.echo(describe(res, mgr.db_path), err=res.action == "failed")
        if res.roll_forward is not None:  # issue 18: what roll-forward did after the restore
            from chromasnap.snapshots.rollforward import describe as rolled

            typer.echo(shown(rolled(res.roll_forward)))
    if res.action == "failed":
        raise typer.Exit(1)


def describe(res: Any, db: object) -> str:
    """One line for a RecoverResult; a path is named only when there is one. Store and
    database strings are shown as text (escaped), never as terminal control."""
    snap = (res.snapshot or "")[:12]
    reason, kept = shown(res.reason), shown(res.kept_path or "")
    broken = f"; the replaced database is kept at {kept}" if res.kept_path else ""
    if res.kind == "fresh-start":
        return f"fresh start at {shown(str(db))}: {reason}; the application creates the database"
    if res.kind == "healthy":
        return "healthy: nothing to do"
    if res.kind == "rolled-back":
        left = f"; what it wrote is kept at {kept}" if res.kept_path else ""
        return f"rolled back: restored {snap} because of an {reason}{left}"
    if res.kind == "restored":
        return f"restored {snap} because {reason}{broken}"
    if res.kind == "reset":
        return f"reset: {reason}{broken}; the database path is empty, ready for a re-index"
    return f"failed: {reason}"
