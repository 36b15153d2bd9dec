"""How often a snapshot taken under a writer that saves its HNSW all the time is torn.

    python bench/torn_rate.py --snapshots 300 [--prefill 5000] [--hold/--no-hold]
    PYTHONPATH=/path/to/old/checkout-as-chromasnap python bench/torn_rate.py ...   # another version

A writer adds 50 records at a time to a collection saved every 100 records (the
`persist` part of bench/torture.py); snapshots are taken back to back through the API.
Each snapshot taken is then extracted and its segment folders checked with
`hnsw.folder_problems` of *this* checkout (loaded by file path, so the same check judges
any chromasnap version under test); the ones it flags are verified in full with chromadb.
`--no-hold` disables the SQLite read lock kept across the folder reads (test seam
CHROMASNAP_NO_HOLD=1), to measure what the structural check alone catches.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torture import ENV, PERSIST_WRITER, PY, build

from chromasnap.snapshots import ChromasnapError, SnapshotManager

HERE = Path(__file__).resolve().parents[1]


def _this_checkouts_hnsw():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("hnsw_check", HERE / "snapshots" / "hnsw.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["hnsw_check"] = mod
    spec.loader.exec_module(mod)
    return mod


def folder_check(hnsw, db: Path) -> list[str]:  # type: ignore[no-untyped-def]
    out = []
    for seg in sorted(p for p in db.iterdir() if p.is_dir() and (p / "header.bin").is_file()):

        def raw(name: str, seg: Path = seg) -> bytes | None:
            p = seg / name
            return p.read_bytes() if p.is_file() else None

        files = hnsw.FolderFiles(
            sizes={p.name: p.stat().st_size for p in seg.iterdir() if p.is_file()},
            header=raw("header.bin"),
            link_lists=raw("link_lists.bin"),
            pickle=raw("index_metadata.pickle"),
        )
        out += [f"{seg.name}: {p}" for p in hnsw.folder_problems(files)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--snapshots", type=int, default=100)
    ap.add_argument("--prefill", type=int, default=5000)
    ap.add_argument("--hold", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--dir", type=Path, default=None)
    a = ap.parse_args()
    if not a.hold:
        os.environ["CHROMASNAP_NO_HOLD"] = "1"
    hnsw = _this_checkouts_hnsw()
    root = a.dir or Path(tempfile.mkdtemp(prefix="chromasnap-torn-"))
    db = build(root / "db", (300,))
    writer = subprocess.Popen(
        [PY, "-c", PERSIST_WRITER, str(db), str(a.prefill)],
        stdout=subprocess.PIPE,
        text=True,
        env={**ENV, "ANONYMIZED_TELEMETRY": "False"},
    )
    taken = failed = torn_rereads = changed_rereads = 0
    errors: list[str] = []
    t0 = time.monotonic()
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "READY"
        for _ in range(a.snapshots):
            mgr = SnapshotManager(db)
            try:
                mgr.snapshot(reason="torn-rate")
                taken += 1
            except ChromasnapError as exc:
                failed += 1
                errors.append(str(exc)[:200])
            stats = getattr(mgr, "last_capture", None)
            if stats is not None:
                torn_rereads += stats.torn_rereads
                changed_rereads += stats.changed_rereads
    finally:
        writer.kill()
        writer.wait()
    snap_s = time.monotonic() - t0
    mgr = SnapshotManager(db)
    flagged: dict[str, list[str]] = {}
    for s in mgr.list():
        out = root / "x"
        shutil.rmtree(out, ignore_errors=True)
        mgr.extract(s.id, out)
        problems = folder_check(hnsw, out)
        if problems:
            flagged[s.id] = problems
    verdicts = {sid: mgr.verify(sid).verdict for sid in flagged}
    print(
        json.dumps(
            {
                "snapshots": a.snapshots,
                "taken": taken,
                "refused": failed,
                "torn_by_structure": len(flagged),
                "torn_verify_fails": sum(1 for v in verdicts.values() if v != "ok"),
                "verdicts": sorted(verdicts.values()),
                "torn_rereads": torn_rereads,
                "changed_rereads": changed_rereads,
                "snapshot_s_mean": round(snap_s / max(1, a.snapshots), 3),
                "examples": [p[0][:160] for p in list(flagged.values())[:3]] + errors[:3],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
