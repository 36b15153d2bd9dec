"""Does Chroma's HNSW save wait while a snapshot holds the SQLite read lock?

    python bench/save_wait.py [--rounds 6] [--seconds 3]

A writer adds 50 records at a time to a collection saved every 100 (the persist part of
bench/torture.py). In turns, for `--seconds` each, the script counts the saves (new
mtimes of index_metadata.pickle, polled every 2 ms) with no lock held, then while the
sqlite_copy child that capture uses holds the read lock (`SqliteCopy(hold=True)`).
Prints one line per round and whether the writer survived the holds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torture import ENV, PERSIST_WRITER, PY, build

from chromasnap.snapshots.capture import SqliteCopy


def count_saves(pickle: Path, seconds: float) -> list[float]:
    """Instants (s from the start) at which the pickle's mtime changed."""
    seen, out = pickle.stat().st_mtime_ns, []
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        m = pickle.stat().st_mtime_ns
        if m != seen:
            seen = m
            out.append(round(now - t0, 3))
        time.sleep(0.002)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="chromasnap-save-wait-"))
    db = build(root / "db", (10,))
    writer = subprocess.Popen(
        [PY, "-c", PERSIST_WRITER, str(db), "1000"],
        stdout=subprocess.PIPE,
        text=True,
        env={**ENV, "ANONYMIZED_TELEMETRY": "False"},
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "READY"
        pickle = max(db.glob("*/index_metadata.pickle"), key=lambda p: p.stat().st_size)
        for r in range(a.rounds):
            free = count_saves(pickle, a.seconds)
            lock = SqliteCopy(db / "chroma.sqlite3", root / f"copy-{r}", hold=True).start()
            try:
                held = count_saves(pickle, a.seconds)
            finally:
                lock.finish()
                (root / f"copy-{r}").unlink(missing_ok=True)
            print(f"round {r}: saves in {a.seconds:g} s free {len(free)}, held {len(held)} at {held}")
        print(f"writer alive after the holds: {writer.poll() is None}")
    finally:
        writer.kill()
        writer.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
