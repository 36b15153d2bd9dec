"""Restore benchmark (issue 5): restore against `zstd -d | tar -x`, recover against the
probe floor, before_write on an unchanged database, and the first snapshot after a restore
with the restored-state note and without it (the note removed: what capture did before it).

    python bench/restore_bench.py [--runs 3] [--after-restore-only] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, bench_db, fresh_copy, run
from verify_bench import FLOOR

from chromasnap.snapshots import SnapshotManager
from chromasnap.snapshots.restored import note_name


def after_restore(mgr: SnapshotManager, snap_id: str, n: int) -> None:
    """The first snapshot after a restore, alternately without the note (removed after the
    restore: every file read again, as before the note) and with it."""
    assert mgr.db_path is not None and mgr.store_path is not None
    note = Path(mgr.store_path) / note_name(mgr.db_path)
    took: dict[str, list[float]] = {"without note": [], "with note": []}
    read: dict[str, list[int]] = {"without note": [], "with note": []}
    for _ in range(n):
        for how in took:
            mgr.restore(snap_id, verify=False, backup=False)
            mgr.purge_kept()
            if how == "without note":
                note.unlink()
            t0 = time.perf_counter()
            s = mgr.snapshot(reason="bench")
            took[how].append(time.perf_counter() - t0)
            read[how].append(s.totals.read_bytes)
    for how, times in took.items():
        print(
            f"first snapshot after a restore, {how}: median {statistics.median(times):.2f} s "
            f"({', '.join(f'{t:.2f}' for t in times)}), read {statistics.median(read[how]) / 1e6:.1f} MB"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--after-restore-only", action="store_true", help="only the first snapshot after a restore"
    )
    ap.add_argument("--work", type=Path, default=CACHE / "restore")
    args = ap.parse_args()
    n = args.runs
    root = args.work
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    db = fresh_copy(bench_db(), root / "chroma")
    mgr = SnapshotManager(db, root / "store")
    snap = mgr.snapshot()
    if args.after_restore_only:
        print(f"database: {snap.totals.logical_bytes / 1e6:.1f} MB")
        after_restore(mgr, snap.id, n)
        shutil.rmtree(root, ignore_errors=True)
        return 0
    tarball = root / "db.tar.zst"
    subprocess.run(
        f"tar -cf - -C {db.parent} {db.name} | zstd -3 -T0 -q -f -o {tarball}", shell=True, check=True
    )
    print(f"database: {snap.totals.logical_bytes / 1e6:.1f} MB")

    ours, untar, untar_sync, ours_nv = [], [], [], []
    out = root / "untar"
    for _ in range(n):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        untar.append(run(f"zstd -d -q -c {tarball} | tar -xf - -C {out}", executable="/bin/bash")[0])
        shutil.rmtree(out)
        out.mkdir()
        # the same made durable, as a restore must be: sync the filesystem afterwards
        untar_sync.append(
            run(f"zstd -d -q -c {tarball} | tar -xf - -C {out} && sync -f {out}", executable="/bin/bash")[0]
        )
        t0 = time.perf_counter()
        mgr.restore(snap.id, verify=False, backup=False)
        ours_nv.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        mgr.restore(snap.id, backup=False)
        ours.append(time.perf_counter() - t0)
        mgr.purge_kept()
    u, r, rv = statistics.median(untar), statistics.median(ours_nv), statistics.median(ours)
    print(
        f"restore --no-verify median {r:.2f} s   zstd -d | tar -x median {u:.2f} s   ratio {r / u:.2f} (target <= 1.2)"
    )
    us = statistics.median(untar_sync)
    print(
        f"                    zstd -d | tar -x && sync -f (durable, as a restore is) {us:.2f} s   ratio {r / us:.2f}"
    )
    print(f"restore (probed)    median {rv:.2f} s   ratio {rv / u:.2f}")

    floor, rec = [], []
    for _ in range(n):
        floor.append(run([sys.executable, "-c", FLOOR, str(db)])[0])
        t0 = time.perf_counter()
        assert mgr.recover().action == "none"
        rec.append(time.perf_counter() - t0)
    f, c = statistics.median(floor), statistics.median(rec)
    print(f"recover (healthy)   median {c:.2f} s   probe floor {f:.2f} s   ratio {c / f:.2f}")

    time.sleep(2.5)
    mgr.snapshot()
    bw = []
    for _ in range(max(5, n)):
        t0 = time.perf_counter()
        with mgr.before_write(reason="bench"):
            pass
        bw.append(time.perf_counter() - t0)
    print(
        f"before_write (unchanged database) median {statistics.median(bw) * 1000:.0f} ms over {len(bw)} "
        "(target <= 300 ms)"
    )
    after_restore(mgr, snap.id, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
