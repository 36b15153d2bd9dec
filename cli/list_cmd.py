"""`chromasnap list`: the store's snapshots, oldest first."""

from __future__ import annotations

import typer

from .common import (
    DbOpt,
    DebugOpt,
    ForeignOpt,
    JsonOpt,
    PasswordFileOpt,
    StoreOpt,
    console,
    handle_errors,
    human_bytes,
    manager,
    print_json,
    shown,
    summary,
)


@handle_errors
def list_cmd(
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """List snapshots with their size, what each added, and the last verification."""
    mgr = manager(db, store, allow_foreign_owner, password_file)
    if not mgr.backend.exists():
        from chromasnap.snapshots import UsageError

        raise UsageError(f"no chromasnap store at {mgr.store} (take one with `chromasnap snapshot`)")
    snaps = mgr.list()
    for problem in mgr.problems:
        typer.echo(f"warning: {shown(problem)}", err=True)
    mirror = mgr.policy().mirror if snaps else None
    if mirror:
        behind = len(mgr.unmirrored(snaps))  # not a second listing of the store
        if behind:
            typer.echo(
                f"warning: {behind} snapshots are not yet on the mirror {shown(mirror)} "
                "(`chromasnap mirror` retries)",
                err=True,
            )
    if json_out:
        print_json([summary(s) for s in snaps])
        return
    if not snaps:
        typer.echo(f"no snapshots in {shown(mgr.store)}")
        return
    from rich.table import Table

    table = Table(title=f"snapshots in {shown(mgr.store, markup=True)}", title_justify="left")
    for col in ("id", "created (UTC)", "reason", "tags", "size", "new", "verified"):
        table.add_column(
            col,
            justify="right" if col in ("size", "new") else "left",
            no_wrap=col not in ("tags", "reason"),
            overflow="fold" if col in ("tags", "reason") else "ellipsis",  # folded, never cut out of sight
        )
    for s in snaps:
        last = s.last_verification
        table.add_row(
            s.id[:8],
            s.created_at.strftime("%Y-%m-%d %H:%M"),
            shown(s.reason, markup=True),
            shown(",".join(s.tags), markup=True),
            human_bytes(s.totals.logical_bytes),
            human_bytes(s.totals.new_bytes),
            "-" if last is None else shown(f"{last.verdict}/{last.mode}", markup=True),
        )
    console().print(table)
