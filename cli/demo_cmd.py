"""`chromasnap demo`: the whole story on a sample database, with no network.

Build a database, snapshot it, run a guarded write, let a second guarded write die
mid-way leaving torn pages in the index (as a crash would), watch `health` fail, and
`recover` bring the data back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from .common import DebugOpt, JsonOpt, handle_errors, human_bytes, print_json, summary

CRASHING_WRITE = """
import os, signal, subprocess, sys
from pathlib import Path
from chromasnap.snapshots import SnapshotManager
db, sample = sys.argv[1], sys.argv[2]
with SnapshotManager(db).before_write(reason="ingest batch 2"):
    subprocess.run([sys.executable, sample, "grow", db, "--fraction", "0.05", "--seed", "9"], check=True)
    # the process dies while persisting the index: torn pages in data_level0.bin
    level0 = max(Path(db).glob("*/data_level0.bin"), key=lambda p: p.stat().st_size)
    with open(level0, "r+b") as fh:
        fh.write(os.urandom(level0.stat().st_size // 2))
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _sample(*args: str) -> str:
    from chromasnap.snapshots import sample

    return subprocess.run(
        [sys.executable, sample.__file__, *args], check=True, capture_output=True, text=True
    ).stdout


@handle_errors
def demo_cmd(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Scratch folder (default: a new temporary one).")
    ] = None,
    records: Annotated[int, typer.Option("--records", min=10, help="Records in the main collection.")] = 3000,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Snapshot, guard a write, survive a crash: the main job on a sample database."""
    from chromasnap.snapshots import SnapshotManager, UsageError, sample

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
    s1 = mgr.snapshot(reason="manual", tags=["demo"], note="first load")
    say(
        f"2. snapshot {s1.short_id}: {human_bytes(s1.totals.logical_bytes)} database, "
        f"{human_bytes(s1.totals.new_bytes)} stored in {mgr.store}"
    )
    with mgr.before_write(reason="ingest batch 1") as pre:
        _sample("grow", str(db), "--fraction", "0.1")
    assert pre is not None  # the database exists: there was a pre-write snapshot
    say(
        f"3. guarded write 'ingest batch 1' (+10%) after pre-write snapshot {pre.short_id} "
        f"({human_bytes(pre.totals.new_bytes)} new)"
    )
    expected = json.loads(_sample("count", str(db)))
    crash = subprocess.run([sys.executable, "-c", CRASHING_WRITE, str(db), sample.__file__], check=False)
    say(
        f"4. guarded write 'ingest batch 2' died mid-persist (exit {crash.returncode}), "
        "leaving torn pages in the index"
    )
    health = mgr.health()
    say(
        f"5. chromasnap health: {'healthy' if health.healthy else 'UNHEALTHY'} "
        f"({health.verdict}: {health.detail[:120]})"
    )
    rec = mgr.recover()
    say(
        f"6. chromasnap recover: {rec.action} snapshot {(rec.snapshot or '-')[:12]} because "
        f"{rec.reason[:100]}; broken database kept at {rec.kept_path}"
    )
    after = json.loads(_sample("count", str(db)))
    same = after == expected
    say(f"7. the data is back: {after} {'== after batch 1' if same else '!= ' + str(expected)}")
    if json_out:
        print_json(
            {
                "db": str(db),
                "store": str(mgr.store),
                "health": health.verdict,
                "recover": rec.model_dump(),
                "counts": after,
                "restored_ok": same,
                "snapshots": [summary(s) for s in mgr.list()],
            }
        )
    else:
        say("8. chromasnap list:")
        from .list_cmd import list_cmd

        list_cmd(db=db, store=None, json_out=False, debug=debug)
        say(
            f"\nTry: chromasnap show latest --db {db}\n     chromasnap verify --all --db {db}\n"
            f"     chromasnap kept --db {db}"
        )
    if not same or rec.action != "restored":
        raise typer.Exit(1)
