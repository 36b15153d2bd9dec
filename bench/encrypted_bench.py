"""Encrypted against plain stores (issue 17): snapshot and restore wall, stored bytes, and the
new bytes of an incremental snapshot after +5% vectors, on the bench database.

    python bench/encrypted_bench.py [--runs 3]

Plain and encrypted runs alternate (the machine is shared: ratios of medians, and the
per-pair ratios, mean more than absolute times). The encrypted store uses the key
derivation of CHROMASNAP_KDF (default: Argon2id t=4, m=128 MiB, p=4), paid once per opening
as a CLI command would; its wall is printed apart. Restore is `restore(verify=False,
backup=False)`: the data path (every blob read, opened, checked, written and fsynced, then
the swap), without the chromadb probe both kinds share.
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
from common import CACHE, RECORDS, bench_db, fresh_copy

from chromasnap.snapshots import SnapshotManager, keys, sample

PASSWORD = "bench password"


def stored(store: Path) -> int:
    """Bytes of the store's objects (not its lock files or scratch)."""
    return sum(
        p.stat().st_size
        for p in store.rglob("*")
        if p.is_file() and "tmp" not in p.relative_to(store).parts and not p.name.startswith("lock")
    )


def manager(db: Path, store: Path, encrypted: bool) -> SnapshotManager:
    return SnapshotManager(db, store, password=(lambda: PASSWORD) if encrypted else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--records", type=int, nargs="+", default=list(RECORDS), help="a smaller database to try it"
    )
    args = ap.parse_args()
    n = args.runs
    root = CACHE / "encrypted"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    src = bench_db(records=tuple(args.records))
    db = fresh_copy(src, root / "chroma")
    grown = fresh_copy(src, root / "grown" / "chroma")
    subprocess.run([sys.executable, sample.__file__, "grow", str(grown), "--fraction", "0.05"], check=True)

    t0 = time.perf_counter()
    keys.kdf_from_env().derive(b"x", b"0" * 16)
    kdf_wall = time.perf_counter() - t0

    snap_wall: dict[bool, list[float]] = {False: [], True: []}
    rest_wall: dict[bool, list[float]] = {False: [], True: []}
    size: dict[bool, int] = {}
    incr: dict[bool, int] = {}
    for i in range(n):
        for encrypted in (False, True) if i % 2 == 0 else (True, False):
            store = root / f"store-{'enc' if encrypted else 'plain'}-{i}"
            if encrypted:
                manager(db, store, True).init(encrypt=True)
            mgr = manager(db, store, encrypted)  # opening it (and the KDF) is part of the wall
            t0 = time.perf_counter()
            snap = mgr.snapshot()
            snap_wall[encrypted].append(time.perf_counter() - t0)
            size[encrypted] = stored(store)
            t0 = time.perf_counter()
            manager(db, store, encrypted).restore(snap.id, verify=False, backup=False)
            rest_wall[encrypted].append(time.perf_counter() - t0)
            mgr.purge_kept()
            if i == 0:  # +5% vectors: what the next snapshot adds (the same bytes every run)
                incr[encrypted] = manager(grown, store, encrypted).snapshot().totals.new_bytes
            shutil.rmtree(store)

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    pairs_s = [e / p for p, e in zip(snap_wall[False], snap_wall[True], strict=True)]
    pairs_r = [e / p for p, e in zip(rest_wall[False], rest_wall[True], strict=True)]
    print(f"database {sum(f.stat().st_size for f in db.rglob('*') if f.is_file()) / 1e6:.1f} MB, {n} runs")
    print(f"key derivation ({keys.kdf_from_env().name}) wall {kdf_wall:.2f} s (once per opening)")
    print(
        f"snapshot   plain median {med(snap_wall[False]):.2f} s  encrypted {med(snap_wall[True]):.2f} s  "
        f"ratio {med(snap_wall[True]) / med(snap_wall[False]):.3f} (target <= 1.10; pairs "
        f"{', '.join(f'{x:.3f}' for x in pairs_s)})"
    )
    print(
        f"restore    plain median {med(rest_wall[False]):.2f} s  encrypted {med(rest_wall[True]):.2f} s  "
        f"ratio {med(rest_wall[True]) / med(rest_wall[False]):.3f} (target <= 1.10; pairs "
        f"{', '.join(f'{x:.3f}' for x in pairs_r)})"
    )
    print(
        f"stored     plain {size[False]:,} B  encrypted {size[True]:,} B  "
        f"ratio {size[True] / size[False]:.4f} (target <= 1.01)"
    )
    print(
        f"+5% vectors new bytes  plain {incr[False]:,}  encrypted {incr[True]:,}  "
        f"ratio {incr[True] / incr[False]:.4f} (target <= 1.01)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
