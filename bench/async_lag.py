"""Event-loop lag while a guarded write snapshots the bench database from asyncio.

    python bench/async_lag.py [--runs 3] [--tick-ms 5] [--switch-ms 5]

A ticker task sleeps `--tick-ms` at a time and records how late each wake-up is (the lag
every other coroutine of the service sees). Measured on a private copy of bench/'s
database (100k + 12k records, about 320 MB):

- idle: the ticker alone (the floor on this machine);
- full: `async with mgr.before_write_async()` into an empty store (every byte read, hashed,
  compressed), the body a real write (`sample.py grow` in a child process, awaited);
- incremental: the next guarded write, after that write (only what changed is read);
- blocking: the synchronous `with mgr.before_write()` called on the loop, as an asyncio
  application without the async API would: the loop stops for the whole snapshot.

Only the wake-ups due while the guard is entered (write lock, snapshot, write intent)
count, not those during the write in the block.

Prints, per case, the median over runs of the p50, p99 and max lag in ms, and the
snapshot's duration; the target is p99 <= 50 ms for the async cases.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_db, fresh_copy

from chromasnap.snapshots import SnapshotManager, sample


class Ticker:
    """Lateness of each wake-up of a task that sleeps `interval` seconds at a time."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.lags: list[tuple[float, float]] = []
        """(due, lag): when each wake-up was due (loop time) and how late it came."""
        self._stop = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.lags.append((due, max(0.0, loop.time() - due)))

    def stop(self) -> None:
        self._stop = True


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else 0.0


async def grow(db: Path, seed: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, sample.__file__, "grow", str(db), "--fraction", "0.01", "--seed", str(seed)
    )
    if await proc.wait() != 0:
        raise SystemExit("sample.py grow failed")


async def measure(case: str, db: Path, store: Path, interval: float, seed: int) -> dict[str, float]:
    ticker = Ticker(interval)
    tick = asyncio.create_task(ticker.run())
    await asyncio.sleep(0.2)  # the ticker's first wake-ups are not part of any case
    loop = asyncio.get_running_loop()
    mgr = SnapshotManager(db, store)
    t0 = loop.time()  # the loop's clock is time.monotonic()
    snap_s = 0.0
    if case == "idle":
        await asyncio.sleep(3.0)
        snap_s = 3.0
    elif case == "blocking":
        with mgr.before_write(reason="bench blocking"):
            snap_s = time.monotonic() - t0
    else:
        async with mgr.before_write_async(reason=f"bench {case}"):
            snap_s = time.monotonic() - t0
            await grow(db, seed)  # the write itself: not part of the window measured
    ticker.stop()
    await tick
    # the wake-ups due while the guard was entered (write lock, snapshot, intent)
    lags = [lag * 1000 for due, lag in ticker.lags if t0 <= due <= t0 + snap_s]
    return {
        "p50": pct(lags, 50),
        "p99": pct(lags, 99),
        "max": max(lags, default=0.0),
        "ticks": len(lags),
        "snapshot_s": snap_s,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tick-ms", type=float, default=5.0)
    ap.add_argument(
        "--switch-ms",
        type=float,
        default=None,
        help="sys.setswitchinterval for the run (Python's default: 5 ms): how soon a thread "
        "waiting for the GIL (the loop's) asks the worker threads to hand it over",
    )
    a = ap.parse_args()
    if a.switch_ms is not None:
        sys.setswitchinterval(a.switch_ms / 1000)
    src = bench_db()
    root = Path(tempfile.mkdtemp(prefix="chromasnap-async-lag-"))
    results: dict[str, list[dict[str, float]]] = {}
    try:
        for run in range(a.runs):
            db = fresh_copy(src, root / "chroma")
            store = root / "store"
            shutil.rmtree(store, ignore_errors=True)
            for case in ("idle", "full", "incremental", "blocking"):
                r = asyncio.run(measure(case, db, store, a.tick_ms / 1000, seed=100 + run))
                results.setdefault(case, []).append(r)
                print(
                    f"run {run + 1} {case:<12} p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  "
                    f"max {r['max']:7.1f} ms  ({int(r['ticks'])} ticks, snapshot {r['snapshot_s']:.2f} s)",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\nmedians over {a.runs} runs (tick {a.tick_ms:g} ms, switch interval "
        f"{sys.getswitchinterval() * 1000:g} ms; target p99 <= 50 ms for the async cases; "
        "'snapshot': entering the guard):"
    )
    for case, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("p50", "p99", "max", "snapshot_s")}
        print(
            f"  {case:<12} p50 {med['p50']:7.1f} ms  p99 {med['p99']:7.1f} ms  max {med['max']:7.1f} ms"
            f"  snapshot {med['snapshot_s']:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
