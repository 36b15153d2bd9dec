"""Verify benchmark (issue 4): the probe against its floor, the object check against zstd -d.

    python bench/verify_bench.py [--runs 3]

Full verify / floor, where the floor is a child Python that imports chromadb, opens the
same database and counts every collection (what any probe must pay); and the object
check's throughput (uncompressed MB/s) against `zstd -d` of the same database as a
`tar | zstd -3` archive.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, bench_db, du, fresh_copy, run

FLOOR = """
import sys, chromadb
from chromadb.config import Settings
c = chromadb.PersistentClient(path=sys.argv[1], settings=Settings(anonymized_telemetry=False))
print({x.name: c.get_collection(x.name, embedding_function=None).count() for x in c.list_collections()})
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    n = ap.parse_args().runs
    root = CACHE / "verify"
    db = fresh_copy(bench_db(), root / "chroma")
    store = root / "store"
    subprocess.run(["rm", "-rf", str(store)], check=True)
    from chromasnap.snapshots import SnapshotManager

    mgr = SnapshotManager(db, store)
    snap = mgr.snapshot()
    size = snap.totals.data_bytes
    print(f"database: {size / 1e6:.1f} MB")

    floor, full, quick, zstd = [], [], [], []
    tarball = root / "db.tar.zst"
    subprocess.run(
        f"tar -cf - -C {db.parent} {db.name} | zstd -3 -T0 -q -f -o {tarball}",
        shell=True,
        check=True,
    )
    for _ in range(n):
        floor.append(run([sys.executable, "-c", FLOOR, str(db)])[0])
        t0 = time.perf_counter()
        r = mgr.verify(snap.id)
        full.append(time.perf_counter() - t0)
        assert r.ok, r.detail
        t0 = time.perf_counter()
        r = mgr.verify(snap.id, quick=True)
        quick.append(time.perf_counter() - t0)
        zstd.append(run(["zstd", "-d", "-q", "-c", str(tarball)], stderr=subprocess.DEVNULL)[0])
    f, v = statistics.median(floor), statistics.median(full)
    q, z = statistics.median(quick), statistics.median(zstd)
    print(
        f"full verify        median {v:.2f} s   floor (child + import chromadb + open + count) {f:.2f} s   ratio {v / f:.2f}"
    )
    print(
        f"object check       median {q:.2f} s = {size / q / 1e6:.0f} MB/s   zstd -d of the tar.zst {z:.2f} s = "
        f"{du(db) / z / 1e6:.0f} MB/s   ratio (throughput) {(size / q) / (du(db) / z):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
