"""`chromasnap demo`: build a sample database, snapshot it, change it, snapshot again, list."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from .common import DebugOpt, JsonOpt, handle_errors, human_bytes, print_json, summary


def _sample(*args: str) -> None:
    from chromasnap.snapshots import sample

    subprocess.run([sys.executable, sample.__file__, *args], check=True)


@handle_errors
def demo_cmd(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Scratch folder (default: a new temporary one).")
    ] = None,
    records: Annotated[int, typer.Option("--records", min=10, help="Records in the main collection.")] = 3000,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Walk through the main job on a sample database with random embeddings (no network)."""
    from chromasnap.snapshots import SnapshotManager, UsageError

    base = directory or Path(tempfile.mkdtemp(prefix="chromasnap-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    db = base / "chroma"
    if db.exists():
        raise UsageError(f"{db} exists already; give an empty --dir")

    def say(msg: str) -> None:
        if not json_out:
            typer.echo(msg)

    say(f"1. building a sample Chroma database in {db} ({records} + {records // 10} records, dim 384)")
    _sample("build", str(db), "--records", str(records), str(records // 10))
    mgr = SnapshotManager(db)
    s1 = mgr.snapshot(reason="manual", tags=["demo"], note="sample database, first load")
    say(
        f"2. snapshot {s1.short_id}: {human_bytes(s1.totals.logical_bytes)} database, "
        f"{human_bytes(s1.totals.new_bytes)} stored"
    )
    say("3. adding 10% more records through chromadb")
    _sample("grow", str(db), "--fraction", "0.1")
    s2 = mgr.snapshot(reason="manual", tags=["demo"], note="after adding 10%")
    say(
        f"4. snapshot {s2.short_id}: {human_bytes(s2.totals.logical_bytes)} database, only "
        f"{human_bytes(s2.totals.new_bytes)} new ({s2.totals.reused_files} files unchanged)"
    )
    s3 = mgr.snapshot(reason="manual", tags=["demo"], note="nothing changed")
    say(f"5. snapshot {s3.short_id} of the unchanged database: {human_bytes(s3.totals.new_bytes)} new")
    if json_out:
        print_json(
            {
                "db": str(db),
                "store": str(mgr.store_path),
                "snapshots": [summary(s) for s in mgr.list()],
            }
        )
        return
    say("6. chromasnap list:")
    from .list_cmd import list_cmd

    list_cmd(db=db, store=None, json_out=False, debug=debug)
    say(f"\nTry: chromasnap show latest --db {db}\n     chromasnap extract latest /tmp/copy --db {db}")
