"""`chromasnap stats`: what the store holds and what each snapshot costs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import (
    DbOpt,
    DebugOpt,
    ForeignOpt,
    JsonOpt,
    PasswordFileOpt,
    StoreOpt,
    handle_errors,
    human_bytes,
    manager,
    print_json,
)


@handle_errors
def stats_cmd(
    prometheus: Annotated[
        bool,
        typer.Option(
            "--prometheus",
            help="Print OpenMetrics text for node_exporter's textfile collector (docs/monitoring.md).",
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="With --prometheus: write to this file atomically (mode 0644) instead of stdout.",
            show_default=False,
        ),
    ] = None,
    db: DbOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    allow_foreign_owner: ForeignOpt = False,
    password_file: PasswordFileOpt = None,
) -> None:
    """Store size on disk, logical size of all snapshots, dedup ratio, bytes only each holds."""
    if output is not None and not prometheus:
        from chromasnap.snapshots import UsageError

        raise UsageError("--output goes with --prometheus")
    mgr = manager(db, store, allow_foreign_owner, password_file)
    if prometheus:
        from chromasnap.snapshots.metrics import openmetrics, store_metrics

        text = openmetrics(store_metrics(mgr))
        if output is None:
            typer.echo(text, nl=False)
        else:
            from chromasnap.snapshots.fsutil import atomic_write

            atomic_write(output, text.encode(), 0o644)
        return
    st = mgr.stats()
    behind = [x.id for x in mgr.unmirrored()]  # issue 16: snapshots not yet off the machine
    if json_out:
        print_json({**st.model_dump(), "mirror": mgr.policy().mirror, "unmirrored": behind})
        return
    typer.echo(f"store on disk      {human_bytes(st.store_bytes)} (packs {human_bytes(st.pack_bytes)})")
    typer.echo(f"logical snapshots  {human_bytes(st.logical_bytes)} in {len(st.snapshots)} snapshots")
    typer.echo(f"dedup ratio        {st.dedup_ratio:.1f}x")
    if mgr.policy().mirror:
        typer.echo(f"not yet mirrored   {len(behind)} of {len(st.snapshots)} snapshots")
    for s in st.snapshots:
        typer.echo(f"  {s.id[:12]} {s.created_at[:19]} frees {human_bytes(s.unique_bytes)} if removed")
