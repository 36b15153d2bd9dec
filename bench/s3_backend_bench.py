"""S3Backend on loopback: throughput of 16 MiB saves and loads with 1, 4 and 8 connections,
requests per MiB, one multipart object, and the latency of small saves, loads and stats.

    python bench/s3_backend_bench.py [--objects 16] [--runs 3] [--small 200]

moto's server runs in a child process (in-process it would share the client's GIL). Figures
are medians of `--runs`; they measure the client and moto on this machine, not a network:
the later bench/remote_bench.py compares whole snapshots to S3 against a local store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from chromasnap.snapshots.s3_backend import MiB, S3Backend


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.05)
    raise SystemExit("moto_server did not start")


class Counter:
    """Counts HTTP requests the client sends (botocore's before-send event)."""

    def __init__(self, backend: S3Backend) -> None:
        self.n = 0
        self._lock = threading.Lock()
        backend._client.meta.events.register("before-send.s3", self._count)

    def _count(self, **_: Any) -> None:
        with self._lock:
            self.n += 1


def save_new(backend: S3Backend, name: str, body: bytes) -> str:
    return backend.save(name, body, create_only=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--small", type=int, default=200)
    args = ap.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    proc, endpoint = start_moto()
    try:
        S3Backend("s3://chromasnap-bench", endpoint_url=endpoint).create()
        bodies = [os.urandom(16 * MiB) for _ in range(args.objects)]
        total = 16 * args.objects
        print(f"moto_server on {endpoint}; {args.objects} objects of 16 MiB; median of {args.runs} runs")
        for conns in (1, 4, 8):
            saves, loads, reqs, cpu_s, cpu_l = [], [], [], [], []
            for run in range(args.runs):
                b = S3Backend(
                    f"s3://chromasnap-bench/c{conns}-{run}", endpoint_url=endpoint, connections=conns
                )
                count = Counter(b)
                names = [f"packs/{i:02x}/{i:064x}" for i in range(args.objects)]
                with ThreadPoolExecutor(conns) as pool:
                    t, c = time.perf_counter(), time.process_time()
                    list(pool.map(partial(save_new, b), names, bodies))
                    saves.append(time.perf_counter() - t)
                    cpu_s.append(time.process_time() - c)
                    reqs.append(count.n / total)
                    t, c = time.perf_counter(), time.process_time()
                    list(pool.map(b.load, names))
                    loads.append(time.perf_counter() - t)
                    cpu_l.append(time.process_time() - c)
                for n in names:
                    b.remove(n)
                b.close()
            s, lo = statistics.median(saves), statistics.median(loads)
            print(
                f"connections {conns}: save {total / s:7.1f} MiB/s ({s:.2f} s)   "
                f"load {total / lo:7.1f} MiB/s ({lo:.2f} s)   requests/MiB saved {statistics.median(reqs):.3f}   "
                f"client CPU s/GiB: save {1024 * statistics.median(cpu_s) / total:.2f}, "
                f"load {1024 * statistics.median(cpu_l) / total:.2f}"
            )

        # one 128 MiB object through multipart (threshold 32 MiB, 8 MiB parts)
        big = b"".join(bodies[:8])
        with tempfile.TemporaryDirectory() as tmp:
            for conns in (1, 8):
                times, reqs = [], []
                for run in range(args.runs):
                    b = S3Backend(
                        f"s3://chromasnap-bench/mp{conns}-{run}", endpoint_url=endpoint, connections=conns
                    )
                    count = Counter(b)
                    local = Path(tmp) / "big"
                    local.write_bytes(big)
                    t = time.perf_counter()
                    b.save_file("packs/big", local, create_only=True)
                    times.append(time.perf_counter() - t)
                    reqs.append(count.n)
                    b.remove("packs/big")
                    b.close()
                m = statistics.median(times)
                print(
                    f"multipart 128 MiB, connections {conns}: {128 / m:7.1f} MiB/s ({m:.2f} s), "
                    f"{statistics.median(reqs):.0f} requests"
                )

        b = S3Backend("s3://chromasnap-bench/small", endpoint_url=endpoint)
        raw = b._client  # the same client without our layer: what S3Backend adds per call
        payload = os.urandom(1024)
        keys = [f"snapshots/{i:08x}.json" for i in range(args.small)]
        lat: dict[str, list[float]] = {}
        for what, call in (
            ("save 1 KiB create_only", lambda k: b.save(k, payload, create_only=True)),
            ("load 1 KiB", b.load),
            ("stat", b.stat),
            (
                "boto3 put_object 1 KiB",
                lambda k: raw.put_object(Bucket="chromasnap-bench", Key="raw/" + k, Body=payload),
            ),
        ):
            xs = lat[what] = []
            for k in keys:
                t = time.perf_counter()
                call(k)
                xs.append(time.perf_counter() - t)
        xs = lat[f"list {args.small}"] = []
        for _ in range(20):
            t = time.perf_counter()
            b.list("snapshots")
            xs.append(time.perf_counter() - t)
        for what, xs in lat.items():
            xs.sort()
            print(
                f"{what:24s} median {1000 * statistics.median(xs):6.2f} ms   "
                f"p95 {1000 * xs[int(0.95 * (len(xs) - 1))]:6.2f} ms   (n={len(xs)})"
            )
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
