"""Copies between stores with the same and with different keys (issue 17): a full copy and an
incremental one (after +5% vectors) from a plain local store into a plain, an encrypted
(a new master key: re-sealed) and a twin (`--same-key`) local store, and encrypted ->
encrypted under another key; wall, bytes read from the source and bytes sent, against the
snapshot's new bytes.

    python bench/copy_bench.py [--runs 3] [--records 100000 12000]

The kinds alternate within each run (the machine is shared: medians and ratios). Key
derivation is CHROMASNAP_KDF=fast here (the copies, not the KDF, are measured; a real
opening adds its KDF, about a second, per encrypted store). Local stores only: the S3 path
is bench/remote_bench.py's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, RECORDS, bench_db, fresh_copy

from chromasnap.snapshots import LocalBackend, SnapshotManager, sample
from chromasnap.snapshots.store_copy import CopyResult, copy_snapshots

PW = "bench password"
KINDS = ("plain", "resealed", "twin", "enc->enc")


def pw() -> str:
    return PW


def copy(kind: str, plain: Path, enc: Path, target: Path, refs: list[str] | None) -> CopyResult:
    """One copy of `kind` into `target` (created by the first, full, copy)."""
    dst = LocalBackend(target)
    if kind == "plain":
        return copy_snapshots(LocalBackend(plain), dst, refs, encrypt=False)
    if kind == "resealed":
        return copy_snapshots(LocalBackend(plain), dst, refs, encrypt=True, password=pw)
    if kind == "twin":
        return copy_snapshots(LocalBackend(enc), dst, refs, from_password=pw, password=pw, same_key=True)
    return copy_snapshots(LocalBackend(enc), dst, refs, from_password=pw, password=pw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--records", type=int, nargs="+", default=list(RECORDS))
    args = ap.parse_args()
    os.environ["CHROMASNAP_KDF"] = "fast"
    root = CACHE / "copy"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    src = bench_db(records=tuple(args.records))
    db = fresh_copy(src, root / "chroma")
    plain, enc = root / "plain.snapshots", root / "enc.snapshots"
    mgr = SnapshotManager(db, plain)
    first = mgr.snapshot()
    # the encrypted source of the twin and enc->enc copies: the plain store re-sealed once
    copy_snapshots(LocalBackend(plain), LocalBackend(enc), encrypt=True, password=pw)
    subprocess.run([sys.executable, sample.__file__, "grow", str(db), "--fraction", "0.05"], check=True)
    second = mgr.snapshot()
    copy_snapshots(LocalBackend(plain), LocalBackend(enc), password=pw)
    new = second.totals.new_bytes
    print(f"database {src} ({args.records}); first snapshot {first.totals.new_bytes:,} stored bytes, ")
    print(f"second (+5% vectors) {new:,} new bytes")
    full: dict[str, list[CopyResult]] = {k: [] for k in KINDS}
    incr: dict[str, list[CopyResult]] = {k: [] for k in KINDS}
    for i in range(args.runs):
        order = KINDS if i % 2 == 0 else KINDS[::-1]
        for kind in order:
            target = root / f"{kind}-{i}"
            refs = [first.id] if kind in ("plain", "resealed") else None
            if kind in ("twin", "enc->enc"):  # the first snapshot's id in the encrypted source
                refs = [SnapshotManager(None, enc, password=pw).list()[0].id]
            full[kind].append(copy(kind, plain, enc, target, refs))
            incr[kind].append(copy(kind, plain, enc, target, None))
            shutil.rmtree(target)
    print(f"{'kind':10} {'full wall':>10} {'incr wall':>10} {'incr sent/new':>14} {'incr read/new':>14}")
    for kind in KINDS:
        fw = statistics.median(r.duration_s for r in full[kind])
        iw = statistics.median(r.duration_s for r in incr[kind])
        sent = statistics.median(r.bytes_sent for r in incr[kind]) / new
        read = statistics.median(r.bytes_read for r in incr[kind]) / new
        print(f"{kind:10} {fw:9.2f}s {iw:9.2f}s {sent:14.3f} {read:14.3f}")
    base = statistics.median(r.duration_s for r in full["plain"])
    for kind in KINDS[1:]:
        ratio = statistics.median(r.duration_s for r in full[kind]) / base
        print(f"full copy wall, {kind} / plain: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
