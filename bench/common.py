"""Shared helpers for the benchmarks: the cached bench database, timing, sizes."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from chromasnap.snapshots import sample

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("CHROMASNAP_BENCH_CACHE", HERE / ".cache"))
# 100k + 12k records of dimension 384: about 320 MB on disk with chromadb 1.5.
RECORDS = (100_000, 12_000)


def chromasnap_cmd() -> list[str]:
    return [sys.executable, "-m", "chromasnap.cli"]


def bench_db(python: str = sys.executable, records: tuple[int, ...] = RECORDS) -> Path:
    """The bench database, built once (a few minutes) and cached between runs."""
    tag = "-".join(str(n) for n in records)
    path = CACHE / f"db-{tag}" / "chroma"
    done = path.parent / ".ready"
    if not done.exists():
        shutil.rmtree(path.parent, ignore_errors=True)
        path.parent.mkdir(parents=True)
        print(f"building the bench database ({' + '.join(map(str, records))} records) ...", flush=True)
        subprocess.run(
            [python, sample.__file__, "build", str(path), "--records", *map(str, records)],
            check=True,
        )
        done.write_text("ok")
    return path


# The scale workloads of issue 20: records per collection, repeated `collections` times.
WORKLOADS: dict[str, dict[str, int]] = {
    "large": {"records": 250_000, "collections": 4},  # 1M records, about 3 GB
    "wide": {"records": 1_000, "collections": 1_000},  # 1,000 collections of 1,000 records
    "pair": {"records": 1_000, "collections": 2},  # what `wide` is compared with
    # small stand-ins, to try the scale bench in a minute (`--large mini --wide miniwide`)
    "mini": {"records": 2_500, "collections": 4},
    "miniwide": {"records": 1_000, "collections": 20},
    # as many collections as `wide`, 20 records each: what grows with the number of collections
    "widesmall": {"records": 20, "collections": 1_000},
    "pairsmall": {"records": 20, "collections": 2},
}


def workload(name: str, python: str = sys.executable) -> Path:
    """A scale workload's database, built once (about an hour for `large` on 2 busy cores) and
    cached under CACHE/<name>; its build log and `.ready` (build seconds) sit beside it."""
    spec = WORKLOADS[name]
    path = CACHE / name / "chroma"
    done = path.parent / ".ready"
    if not done.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with (CACHE / f".{name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second bench run waits for the build, never joins it
            if not done.exists():
                _build(name, spec, path, python)
    return path


def _build(name: str, spec: dict[str, int], path: Path, python: str) -> None:
    done = path.parent / ".ready"
    # an interrupted build (killed between two of chromadb's writes) is resumed
    building = path.parent / ".building"
    earlier = float(building.read_text() or 0) if building.exists() and path.exists() else None
    if earlier is None:
        shutil.rmtree(path.parent, ignore_errors=True)
        path.parent.mkdir(parents=True)
        building.write_text("0")
    print(f"building workload {name} ({spec['collections']} x {spec['records']} records) ...", flush=True)
    cmd = [python, sample.__file__, "build", str(path), "--records", str(spec["records"])]
    cmd += ["--collections", str(spec["collections"]), "--progress"]
    cmd += ["--resume"] if earlier is not None else []
    t0 = time.perf_counter()
    with (path.parent / "build.log").open("a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait()
        finally:  # the time spent so far counts when a later run resumes
            building.write_text(str((earlier or 0) + time.perf_counter() - t0))
    if code != 0:
        raise SystemExit(f"building workload {name} failed ({code}): see {path.parent / 'build.log'}")
    build_s = round(float(building.read_text()), 1)
    info = {**spec, "build_s": build_s, "built_at": time.strftime("%F %T")}
    done.write_text(json.dumps(info))
    building.unlink()


def workload_info(name: str) -> dict[str, object]:
    """What `workload` wrote when it built `name` (records, build seconds, date)."""
    data: dict[str, object] = json.loads((CACHE / name / ".ready").read_text())
    return data


def fresh_copy(src: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    return dest


def du(path: Path) -> int:
    """Bytes of all regular files under `path` (apparent sizes)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def db_size(path: Path) -> int:
    return du(path)


def run(cmd: list[str] | str, **kw: object) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process (or shell pipeline)."""
    shell = isinstance(cmd, str)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=shell, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {cmd}")
    return wall, usage.ru_maxrss


def median_of(n: int, fn: Callable[[int], float]) -> tuple[float, list[float]]:
    vals = [fn(i) for i in range(n)]
    return statistics.median(vals), vals


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"
