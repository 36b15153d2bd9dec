"""Peak memory and time of the CLI on the crafted stores that used to exhaust memory.

    python bench/hostile_bench.py                    # this checkout
    python bench/hostile_bench.py --pythonpath DIR   # another one, laid out as DIR/chromasnap/*

Builds a sample database (explicit embeddings, in a child), snapshots it twice, crafts
each store with bench/hostile.py, and runs the command once under `prlimit --as` (a
safety net: an old version may try to take all the memory there is). Prints, per case,
the exit code, the peak RSS of the command (ru_maxrss of its process) and its wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hostile import (
    Base,
    bomb_declared,
    bomb_undeclared,
    deep_snapshot,
    doc_fifo,
    doc_symlink_dev_zero,
    hnsw_record_size,
    huge_document,
    huge_metadata_peek,
    huge_record_chunk,
)

from chromasnap.snapshots import SnapshotManager, sample

CASES = (
    bomb_declared,
    bomb_undeclared,
    hnsw_record_size,
    huge_record_chunk,
    huge_document,
    doc_symlink_dev_zero,
    doc_fifo,
    deep_snapshot,
    huge_metadata_peek,
)


def measure(args: list[str], env: dict[str, str], limit: int, timeout: float) -> tuple[str, float, float]:
    """(exit code or 'timeout', peak RSS in MiB, seconds) of one CLI run in a fresh child."""
    code = (
        "import resource, subprocess, sys, json\n"
        "try:\n"
        "    r = subprocess.run(sys.argv[2:], capture_output=True, timeout=float(sys.argv[1])).returncode\n"
        "except subprocess.TimeoutExpired:\n"
        "    r = 'timeout'\n"
        "print(json.dumps([r, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))\n"
    )
    cmd = ["prlimit", f"--as={limit}", sys.executable, "-m", "chromasnap.cli", *args]
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code, str(timeout), *cmd], capture_output=True, text=True, env=env, check=True
    )
    import json

    rc, rss_kb = json.loads(out.stdout)
    return str(rc), rss_kb / 1024, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--pythonpath", help="run the CLI from this tree (DIR/chromasnap/{snapshots,manifest,cli})"
    )
    ap.add_argument("--limit", type=int, default=3 << 30, help="prlimit --as for each run (bytes)")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--dir", type=Path, default=None)
    a = ap.parse_args()
    root = a.dir or Path(tempfile.mkdtemp(prefix="chromasnap-hostile-"))
    db = root / "db"
    if not db.exists():
        subprocess.run(
            [sys.executable, sample.__file__, "build", str(db), "--records", "2500", "300"], check=True
        )
    store = root / "store"
    mgr = SnapshotManager(db, store)
    ids = [s.id for s in mgr.list()] or [mgr.snapshot().id, mgr.snapshot().id]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}
    if a.pythonpath:
        env["PYTHONPATH"] = a.pythonpath
    print(f"{'case':24} {'exit':>7} {'peak RSS':>10} {'seconds':>8}   (prlimit --as={a.limit})")
    for build in CASES:
        (root / "cases").mkdir(exist_ok=True)
        case = build(Base(db=db, store=store, work=root / "cases", ids=ids))
        rc, rss, secs = measure(case.args, env, a.limit, a.timeout)
        print(f"{case.name:24} {rc:>7} {rss:>7.0f} MiB {secs:>8.1f}")
    print(
        f"(this interpreter's own peak: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
