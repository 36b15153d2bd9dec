"""Retention benchmark (issue 6): 50 successive snapshots, each after adding 1% more
vectors, then prune to the last 5 and gc.

    python bench/prune_bench.py [--snapshots 50]

Prints the store size against the sum of the snapshots' logical sizes, and for the prune:
wall time, and bytes reclaimed against the bytes `stats` predicted.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, bench_db, du, fresh_copy

from chromasnap.manifest import RetentionPolicy
from chromasnap.snapshots import SnapshotManager, sample


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--snapshots", type=int, default=50)
    n = ap.parse_args().snapshots
    root = CACHE / "prune"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    db = fresh_copy(bench_db(), root / "chroma")
    mgr = SnapshotManager(db, root / "store")
    t0 = time.perf_counter()
    snap_times = []
    for i in range(n):
        if i:
            subprocess.run(
                [
                    sys.executable,
                    sample.__file__,
                    "grow",
                    str(db),
                    "--fraction",
                    "0.01",
                    "--seed",
                    str(100 + i),
                ],
                check=True,
            )
        t = time.perf_counter()
        mgr.snapshot(tags=[f"step{i}"])
        snap_times.append(time.perf_counter() - t)
    built = time.perf_counter() - t0
    stats = mgr.stats()
    store = du(root / "store")
    print(
        f"{n} snapshots taken in {built:.0f} s (snapshot median {sorted(snap_times)[n // 2]:.2f} s); "
        f"database now {du(db) / 1e6:.1f} MB"
    )
    print(
        f"store on disk {store / 1e6:.1f} MB / sum of logical sizes {stats.logical_bytes / 1e6:.1f} MB = "
        f"{store / stats.logical_bytes:.4f} (dedup {stats.dedup_ratio:.1f}x)"
    )
    dry = mgr.prune(RetentionPolicy(keep_last=5), dry_run=True)
    t = time.perf_counter()
    res = mgr.prune(RetentionPolicy(keep_last=5))
    wall = time.perf_counter() - t
    print(
        f"prune --keep-last 5: removed {len(res.removed)}, kept {len(res.kept)} in {wall:.2f} s wall "
        f"({res.repacked_packs} packs rewritten, {res.deleted_packs} deleted)"
    )
    print(
        f"reclaimed {res.reclaimed_bytes / 1e6:.1f} MB / expected by stats {dry.expected_bytes / 1e6:.1f} MB = "
        f"{res.reclaimed_bytes / dry.expected_bytes:.3f}"
    )
    bad = [r for r in mgr.verify_many(None, quick=True) if not r.ok]
    print(f"verify --all --quick after prune: {bad if bad else 'ok'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
