"""Snapshot benchmark (issue 3): chromasnap against `tar | zstd` and restic on the same data.

    python bench/snapshot_bench.py [--runs 3]

Prints medians and the ratios the targets are stated in. The bench database (~320 MB,
dim 384, two collections, random float32 embeddings) is built once and cached in
bench/.cache. Needs `tar`, `zstd` and (optionally) `restic` on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, bench_db, chromasnap_cmd, du, fresh_copy, mb, run

from chromasnap.snapshots import sample


def snapshot(db: Path, store: Path) -> tuple[float, int, dict[str, object]]:
    """One `chromasnap snapshot --json` as a child process: wall s, peak RSS KiB, record."""
    out = store.parent / f"{store.name}.out.json"
    with out.open("w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [*chromasnap_cmd(), "snapshot", "--db", str(db), "--store", str(store), "--json"],
            stdout=fh,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("chromasnap snapshot failed")
    return wall, usage.ru_maxrss, json.loads(out.read_text())


def restic(repo: Path, *args: str) -> str:
    """Run restic on `repo` with a throwaway password; returns stdout."""
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(repo)}
    return subprocess.run(
        ["restic", "--no-cache", "-q", *args], env=env, check=True, capture_output=True, text=True
    ).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    n = args.runs
    src = bench_db()
    work_root = CACHE / "work"
    shutil.rmtree(work_root, ignore_errors=True)
    work_root.mkdir(parents=True)
    db = fresh_copy(src, work_root / "chroma")
    size_a = du(db)
    print(f"database: {mb(size_a)} in {db} ({sum(1 for _ in db.rglob('*'))} entries)")

    # 1. full snapshot vs tar | zstd -3 -T0, interleaved
    tar_t, snap_t, rss, ratios = [], [], [], []
    tarball = work_root / "db.tar.zst"
    for i in range(n):
        t, _ = run(
            f"set -o pipefail; tar -cf - -C {db.parent} {db.name} | zstd -3 -T0 -q > {tarball}",
            executable="/bin/bash",
        )
        tar_t.append(t)
        store = work_root / f"store-{i}"
        shutil.rmtree(store, ignore_errors=True)
        s, r, rec = snapshot(db, store)
        snap_t.append(s)
        rss.append(r)
        ratios.append(s / t)
        if i == 0:
            full = rec
    tar_bytes = tarball.stat().st_size
    store = work_root / "store-0"
    store_bytes = du(store)
    full_new = int(full["totals"]["new_bytes"])  # type: ignore[index]
    med_snap, med_tar = statistics.median(snap_t), statistics.median(tar_t)
    print(
        f"full snapshot      median {med_snap:.2f} s   tar|zstd -3 -T0 median {med_tar:.2f} s   "
        f"ratio {statistics.median(ratios):.2f} (target <= 1.2)"
    )
    print(
        f"stored bytes       {mb(store_bytes)} (blobs {mb(full_new)})   tarball {mb(tar_bytes)}   "
        f"ratio {store_bytes / tar_bytes:.3f}"
    )
    print(
        f"peak RSS           median {statistics.median(rss) / 1024:.0f} MiB (max {max(rss) / 1024:.0f}; "
        "target <= 300 MiB)"
    )

    # 2. restic backup of state A
    have_restic = shutil.which("restic") is not None
    if have_restic:
        repo = work_root / "restic"
        restic(repo, "init")
        t0 = time.perf_counter()
        restic(repo, "backup", str(db))
        restic_full_t = time.perf_counter() - t0
        restic_a = du(repo)

    # 3. add 5% more vectors (HNSW persists: 5% of 100k is past sync_threshold 1000)
    subprocess.run([sys.executable, sample.__file__, "grow", str(db), "--fraction", "0.05"], check=True)
    time.sleep(2.5)  # let the change settle past the racy-mtime window of the next snapshot
    inc_t, _, inc = snapshot(db, store)
    inc_new = int(inc["totals"]["new_bytes"])  # type: ignore[index]
    print(f"after +5% vectors  database {mb(du(db))}")
    print(
        f"incremental        {mb(inc_new)} new / {mb(full_new)} full = {inc_new / full_new:.3f} "
        f"(target <= 0.25) in {inc_t:.2f} s"
    )
    if have_restic:
        restic(repo, "backup", str(db))
        restic_b = du(repo)
        print(
            f"restic             {mb(restic_b - restic_a)} new / {mb(restic_a)} full = "
            f"{(restic_b - restic_a) / restic_a:.3f} (repo growth on disk; full backup {restic_full_t:.2f} s)"
        )
    else:
        print("restic             not installed (apt-get install restic): skipped")

    # 4. nothing changed
    unchanged = [snapshot(db, store)[0] for _ in range(n)]
    med_un = statistics.median(unchanged)
    print(
        f"unchanged snapshot median {med_un:.3f} s / full {med_snap:.2f} s = {med_un / med_snap:.3f} "
        "(target <= 0.1)"
    )

    # 4b. the same through the Python API, as before_write calls it (no process start-up)
    code = (
        "import sys, time, statistics\n"
        "from chromasnap.snapshots import SnapshotManager\n"
        "m = SnapshotManager(sys.argv[1], sys.argv[2])\n"
        "t = time.perf_counter(); m.snapshot(); full = time.perf_counter() - t\n"
        "time.sleep(2.5)\n"
        "m.snapshot()\n"
        "u = []\n"
        "for _ in range(5):\n"
        "    t = time.perf_counter(); m.snapshot(); u.append(time.perf_counter() - t)\n"
        "print(full, statistics.median(u))\n"
    )
    api_store = work_root / "store-api"
    shutil.rmtree(api_store, ignore_errors=True)
    out = subprocess.run(
        [sys.executable, "-c", code, str(db), str(api_store)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    api_full, api_un = float(out[0]), float(out[1])
    print(
        f"unchanged via API  median {api_un:.3f} s / full via API {api_full:.2f} s = {api_un / api_full:.3f} "
        "(target <= 0.1)"
    )

    # 5. list start-up
    list_t = [
        run([*chromasnap_cmd(), "list", "--db", str(db), "--store", str(store), "--json"])[0]
        for _ in range(max(5, n))
    ]
    print(
        f"list start-up      median {statistics.median(list_t):.3f} s over {len(list_t)} runs "
        f"({len(unchanged) + 2} snapshots; target <= 0.4 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
