"""Remote stores against local ones, on one database in one run, with moto's S3 server on
loopback (in a child process: in-process it would share the client's GIL).

    python bench/remote_bench.py [--records 100000 12000] [--runs 3] [--snapshots 50]

Prints, as medians of `--runs` (wall seconds of the real `chromasnap` command):
- snapshot to S3 / snapshot to a local store (target <= 1.5)
- restore from S3 / restore from a local store (target <= 1.5)
- copy of an incremental snapshot to S3: bytes sent / the snapshot's new bytes (target <= 1.05)
- `list` of a store of `--snapshots` snapshots in S3 through the CLI: cold (an empty metadata
  cache, `$XDG_CACHE_HOME` fresh per run) and warm (the cache filled by an earlier run; target
  <= 0.5 s), wall and CPU seconds (CPU is what a busy shared machine does not inflate), the
  local store's list beside them, and the requests one warm and one cold list send
- HTTP requests of one full and one incremental snapshot to S3 (in-process, counted at
  botocore's before-send event)
- `restic backup` / `restic restore` of the same database to the same server, if restic is
  installed (chromasnap's restore also probes the copy with chromadb; restic's does not)
moto on loopback measures the client and moto on this machine, not a network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RECORDS, bench_db, chromasnap_cmd, fresh_copy, mb, run
from s3_backend_bench import start_moto

from chromasnap.snapshots import SnapshotManager, sample

BUCKET = "chromasnap-remote-bench"


def cli_json(*args: str) -> Any:
    out = subprocess.run([*chromasnap_cmd(), *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"chromasnap {' '.join(args)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def url() -> str:
    return f"s3://{BUCKET}/b-{uuid.uuid4().hex[:10]}"


def count_requests(mgr: SnapshotManager) -> list[int]:
    """A counter of the requests `mgr`'s S3 client sends."""
    n = [0]
    lock = threading.Lock()

    def seen(**_: Any) -> None:
        with lock:
            n[0] += 1

    client = mgr.backend.inner._client  # type: ignore[attr-defined]
    client.meta.events.register("before-send.s3", seen)
    return n


def restic_compare(
    src: Path, work: Path, endpoint: str, runs: int, snap: list[float], rest: list[float]
) -> None:
    """`restic backup` / `restic restore` of the same database to the same moto server."""
    restic = shutil.which("restic")
    if restic is None:
        print("restic: not installed (apt-get install restic); comparison skipped")
        return
    env = {
        **os.environ,
        "RESTIC_PASSWORD": "bench",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
    }
    backups: list[float] = []
    restores: list[float] = []
    for i in range(runs):
        repo = f"s3:{endpoint}/{BUCKET}/restic-{i}-{uuid.uuid4().hex[:6]}"
        subprocess.run([restic, "-r", repo, "init"], env=env, check=True, capture_output=True)
        db = fresh_copy(src, work / "restic-src" / "chroma")
        backups.append(run([restic, "-r", repo, "backup", "--no-cache", str(db)], env=env)[0])
        target = work / f"restic-restore-{i}"
        restores.append(
            run([restic, "-r", repo, "restore", "latest", "--no-cache", "--target", str(target)], env=env)[0]
        )
    b, r = statistics.median(backups), statistics.median(restores)
    print(
        f"restic backup to S3 {b:6.2f}s (chromasnap snapshot to S3 / restic: {statistics.median(snap) / b:.2f}); "
        f"restic restore from S3 {r:6.2f}s (chromasnap restore from S3, probe included / restic: "
        f"{statistics.median(rest) / r:.2f})"
    )


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {cmd}")
    return wall, usage.ru_utime + usage.ru_stime


def verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "MISS"


def list_figures(big: str, many: str, work: Path, endpoint: str, runs: int, n: int) -> None:
    """`list` of an n-snapshot store in S3, cold and warm (the metadata cache), and local."""
    cmd = [*chromasnap_cmd(), "list", "--store", big, "--json"]
    cold = [timed(cmd, {**os.environ, "XDG_CACHE_HOME": str(work / f"xdg-cold-{i}")}) for i in range(runs)]
    warm_env = {**os.environ, "XDG_CACHE_HOME": str(work / "xdg-warm")}
    timed(cmd, warm_env)  # fills the cache
    warm = [timed(cmd, warm_env) for _ in range(runs)]
    local = [
        timed([*chromasnap_cmd(), "list", "--store", many, "--json"], dict(os.environ)) for _ in range(runs)
    ]
    uncached = [
        timed([*chromasnap_cmd(), "--no-cache", "list", "--store", big, "--json"], warm_env)
        for _ in range(runs)
    ]

    def med(xs: list[tuple[float, float]], i: int) -> float:
        return statistics.median(x[i] for x in xs)

    wm = med(warm, 0)
    print(
        f"list of {n} snapshots in S3, warm cache  {wm:6.2f}s wall {med(warm, 1):5.2f}s cpu  target <= 0.5 s  {verdict(wm, 0.5)}"
    )
    print(f"list of {n} snapshots in S3, cold cache  {med(cold, 0):6.2f}s wall {med(cold, 1):5.2f}s cpu")
    print(
        f"list of {n} snapshots in S3, --no-cache  {med(uncached, 0):6.2f}s wall {med(uncached, 1):5.2f}s cpu"
    )
    print(f"list of {n} snapshots in a local store   {med(local, 0):6.2f}s wall {med(local, 1):5.2f}s cpu")
    saved = os.environ.get("XDG_CACHE_HOME")
    try:
        for label, env in (("cold", work / "xdg-count-cold"), ("warm", work / "xdg-warm")):
            os.environ["XDG_CACHE_HOME"] = str(env)
            mgr = SnapshotManager(None, big, endpoint_url=endpoint)
            mgr.backend.exists()  # the client's first connection, not list's work
            count = count_requests(mgr)
            t0, c0 = time.perf_counter(), time.process_time()
            mgr.list()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(
                f"{label} list in-process (the client made: list's own work): {count[0]} requests, "
                f"{wall:.3f}s wall {cpu:.3f}s cpu"
            )
    finally:
        if saved is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, nargs="+", default=list(RECORDS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--snapshots", type=int, default=50)
    ap.add_argument("--no-list", action="store_true", help="skip the list of --snapshots snapshots")
    args = ap.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    src = bench_db(records=tuple(args.records))
    proc, endpoint = start_moto()
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    from chromasnap.snapshots.s3_backend import S3Backend

    S3Backend(f"s3://{BUCKET}", endpoint_url=endpoint).create()
    try:
        with tempfile.TemporaryDirectory(prefix="remote-bench-") as tmp:
            work = Path(tmp)
            db = fresh_copy(src, work / "chroma")
            size = sum(p.stat().st_size for p in db.rglob("*") if p.is_file())
            print(f"database: {' + '.join(map(str, args.records))} records, {mb(size)}; moto at {endpoint}")

            snap_s3: list[float] = []
            snap_local: list[float] = []
            stores: list[tuple[str, str]] = []
            for i in range(args.runs):
                remote, local = url(), str(work / f"local-{i}.snapshots")
                # alternate the order so neither side always runs on a warmer page cache
                pair = [("s3", remote), ("local", local)][:: 1 if i % 2 == 0 else -1]
                for kind, store in pair:
                    wall, _ = run([*chromasnap_cmd(), "snapshot", "--db", str(db), "--store", store])
                    (snap_s3 if kind == "s3" else snap_local).append(wall)
                stores.append((remote, local))
            s3m, locm = statistics.median(snap_s3), statistics.median(snap_local)
            print(
                f"snapshot  to S3 {s3m:6.2f}s  to local {locm:6.2f}s  ratio {s3m / locm:.2f}  (target <= 1.5)"
            )

            rest_s3: list[float] = []
            rest_local: list[float] = []
            remote, local = stores[0]
            for i in range(args.runs):
                pair = [("s3", remote), ("local", local)][:: 1 if i % 2 == 0 else -1]
                for kind, store in pair:
                    target = fresh_copy(src, work / f"restore-{kind}" / "chroma")
                    cmd = [*chromasnap_cmd(), "restore", "latest", "--yes", "--no-backup"]
                    wall, _ = run([*cmd, "--db", str(target), "--store", store])
                    (rest_s3 if kind == "s3" else rest_local).append(wall)
            s3m, locm = statistics.median(rest_s3), statistics.median(rest_local)
            print(
                f"restore from S3 {s3m:6.2f}s  from local {locm:6.2f}s  ratio {s3m / locm:.2f}  (target <= 1.5)"
            )

            restic_compare(src, work, endpoint, args.runs, snap_s3, rest_s3)

            # copy: the first snapshot is in both; a second (incremental) is copied local -> S3
            cli_json("copy", "--from", local, "--to", remote, "--json")
            run([sys.executable, sample.__file__, "mutate", str(db), "--step", "7", "--fraction", "0.02"])
            snap = cli_json("snapshot", "--db", str(db), "--store", local, "--json")
            t0 = time.perf_counter()
            res = cli_json("copy", "--from", local, "--to", remote, "--json")
            wall = time.perf_counter() - t0
            new = snap["totals"]["new_bytes"]
            print(
                f"copy of an incremental snapshot: {res['bytes_sent']:,} bytes sent / {new:,} new bytes "
                f"= {res['bytes_sent'] / new:.3f} (target <= 1.05); {res['packs_sent']} packs, "
                f"{res['bytes_read']:,} bytes read, {wall:.2f}s"
            )
            again = cli_json("copy", "--from", local, "--to", remote, "--json")
            print(f"second copy: {again['bytes_sent']} bytes sent")

            # requests per snapshot, in-process
            mgr = SnapshotManager(db, url(), endpoint_url=endpoint)
            n = count_requests(mgr)
            mgr.snapshot()
            full = n[0]
            run([sys.executable, sample.__file__, "mutate", str(db), "--step", "8", "--fraction", "0.02"])
            mgr.snapshot()
            print(f"requests: full snapshot {full}, incremental snapshot {n[0] - full}")

            # list of a store of N snapshots in S3 (unchanged database: each snapshot is cheap)
            if args.no_list:
                return
            many = str(work / "many.snapshots")
            for _ in range(args.snapshots):
                run([*chromasnap_cmd(), "snapshot", "--db", str(db), "--store", many])
            big = url()
            cli_json("copy", "--from", many, "--to", big, "--no-encrypt", "--json")  # plain, as `many`
            list_figures(big, many, work, endpoint, args.runs, args.snapshots)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
