"""Scale benchmark (issue 20): chromasnap on a 1M-record database and on 1,000 collections,
against `tar | zstd` and the chromadb probe floor, on the same data in the same run.

    CHROMASNAP_BENCH_CACHE=/work/bench-cache python bench/scale_bench.py [--runs 3]
        [--workloads large,wide,base] [--figures snapshot,unchanged,restore,verify,incremental,
         history,prune,rss,wide] [--large large] [--wide wide] [--base base]

Prints every figure of the issue as `name value target ok/MISS`, one line each, and
the raw timings behind them as `#` lines. Medians of `--runs` paired runs (each ratio is the
median of the per-run ratios: ours and the baseline run back to back). Peak RSS is the
child's (and its own children's) ru_maxrss from wait4.

Workloads (built once, cached under CHROMASNAP_BENCH_CACHE, never in CI): `large` (4 x
250,000 records, dim 384, cosine, about 3 GB), `wide` (1,000 x 1,000 records), `base` (the
315 MB database of the other benches), `pair` (2 x 1,000: what `wide` is compared with),
and a 200-snapshot store of `large` for list, diff, find and prune (`history`). Each run
works on copies; the cached databases stay as built. `--large mini --wide miniwide` tries
the whole script on small stand-ins in a few minutes. Needs only tar, zstd and sync.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, WORKLOADS, bench_db, chromasnap_cmd, du, fresh_copy, workload, workload_info
from verify_bench import FLOOR

from chromasnap.snapshots import SnapshotManager, sample

FIGURES = ("snapshot", "unchanged", "restore", "verify", "incremental", "history", "prune", "rss", "wide")
HISTORY_SNAPSHOTS = 200
HISTORY_CHANGES = 10  # snapshots after a change of the database; the others find it unchanged
HISTORY_FIND = "coll0-1234"
RACY_WAIT = 2.5  # a file changed within 2 s of the parent snapshot is read again: wait past it
MIB = 1024

# through the Python API, as before_write calls it: one warm-up, then the median of five
API_UNCHANGED = """
import json, statistics, sys, time
from chromasnap.snapshots import SnapshotManager
m = SnapshotManager(sys.argv[1], sys.argv[2])
m.snapshot()
u = []
for _ in range(5):
    t = time.perf_counter(); m.snapshot(); u.append(time.perf_counter() - t)
print(json.dumps(u))
"""

# full verify through the API, to learn how many collections the probe opened
VERIFY_FULL = """
import json, sys
from chromasnap.snapshots import SnapshotManager
r = SnapshotManager(sys.argv[1], sys.argv[2]).verify(sys.argv[3])
print(json.dumps({"ok": r.ok, "detail": r.detail, "probed": len(r.probe.collections) if r.probe else 0}))
"""


class Report:
    """Figure lines as they are measured, repeated together at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        print(f"# {text}", flush=True)

    def fig(self, name: str, value: float, target: str, fmt: str = "{:.2f}") -> None:
        op, num = (target[:2], float(target[2:])) if target[:2] in ("<=", ">=") else ("", 0.0)
        ok = value <= num if op == "<=" else value >= num if op == ">=" else True
        verdict = "-" if not op else "ok" if ok else "MISS"
        line = f"{name} {fmt.format(value)} {target} {verdict}"
        self.lines.append(line)
        print(line, flush=True)


def child(cmd: list[str] | str, env: dict[str, str] | None = None) -> tuple[float, int, str, float]:
    """Wall seconds, peak RSS (KiB, the process tree's largest), stdout and CPU seconds (user +
    system, with its children) of one child. On a shared machine CPU seconds show what wall
    seconds hide."""
    shell = isinstance(cmd, str)
    out = CACHE / f".scale-out-{os.getpid()}"
    with out.open("w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, shell=shell, stdout=fh, env=env, executable="/bin/bash" if shell else None
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    text = out.read_text()
    out.unlink()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
        raise SystemExit(f"command failed ({code}): {shown}\n{text[-2000:]}")
    return wall, usage.ru_maxrss, text, usage.ru_utime + usage.ru_stime


def pressure() -> str:
    """The kernel's CPU pressure (share of time some task waited for a CPU): on a shared
    machine it says how far wall seconds were stretched."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return "CPU pressure unknown"
    return "CPU pressure " + " ".join(line.split()[1:4])


def cs(db: Path, store: Path, *args: str) -> list[str]:
    return [*chromasnap_cmd(), *args, "--db", str(db), "--store", str(store)]


def med(vals: list[float]) -> float:
    return statistics.median(vals)


def paired(ours: list[float], theirs: list[float]) -> float:
    """The median of the per-run ratios ours / theirs (each pair run back to back)."""
    return med([a / b for a, b in zip(ours, theirs, strict=True)])


def fmt_runs(vals: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in vals)


def sample_cmd(*args: str) -> None:
    subprocess.run([sys.executable, sample.__file__, *args], check=True, stdout=subprocess.DEVNULL)


def change(db: Path, step: int, fraction: float, only: list[str] | None = None) -> None:
    """The benches' change step: +fraction records, then deletes and edits of documents and metadata."""
    sel = ["--only", *only] if only else []
    sample_cmd("grow", str(db), "--fraction", str(fraction), "--seed", str(100 + step), *sel)
    sample_cmd("mutate", str(db), "--step", str(step), "--fraction", str(fraction), *sel)
    time.sleep(RACY_WAIT)


def purge_kept(db: Path, store: Path) -> None:
    SnapshotManager(db, store).purge_kept()


class Bench:
    def __init__(self, args: argparse.Namespace, rep: Report) -> None:
        self.runs: int = args.runs
        self.figures: set[str] = args.figures
        self.rep = rep
        self.root = CACHE / f"scale-work-{os.getpid()}"  # concurrent runs never share it
        self.rss: dict[str, dict[str, int]] = {}  # workload -> operation -> KiB
        self.full_s: dict[str, float] = {}

    # --- one workload: full snapshot, unchanged, restore, verify, incremental, diff ----------

    def workload(self, label: str, src: Path) -> None:
        rep, n = self.rep, self.runs
        info = workload_info(src.parent.name) if (src.parent / ".ready").read_text().startswith("{") else {}
        work = self.root / label
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        db = fresh_copy(src, work / "chroma")
        size = du(db)
        built = f", built in {info['build_s']:.0f} s" if "build_s" in info else ""
        rep.note(f"{label}: {src.parent.name}, {size / 1e6:,.0f} MB in {db}{built}")
        rss = self.rss.setdefault(label, {})
        tarball = work / "db.tar.zst"
        tar = f"set -o pipefail; tar -cf - -C {db.parent} {db.name} | zstd -3 -T0 -q > {tarball}"
        store = work / "store"

        # full snapshot against tar | zstd, with and without sync, run back to back
        snap_s, tar_s, tar_sync_s, snap_rss, snap_cpu, tar_cpu = [], [], [], [], [], []
        first: dict[str, Any] = {}
        for i in range(n):
            tar_sync_s.append(child(f"{tar} && sync -f {tarball}")[0])
            got = child(tar)
            tar_s.append(got[0])
            tar_cpu.append(got[3])
            st = work / f"store-{i}"
            shutil.rmtree(st, ignore_errors=True)
            wall, kib, out, cpu = child(cs(db, st, "snapshot", "--json"))
            snap_s.append(wall)
            snap_cpu.append(cpu)
            snap_rss.append(kib)
            if i == 0:
                first = json.loads(out)
                st.rename(store)
            else:
                shutil.rmtree(st)
        full_new = int(first["totals"]["new_bytes"])
        self.full_s[label] = med(snap_s)
        rss["snapshot"] = int(med([float(k) for k in snap_rss]))
        rep.note(
            f"{label}: full snapshot {fmt_runs(snap_s)} s; tar|zstd -3 -T0 && sync {fmt_runs(tar_sync_s)} s; "
            f"without sync {fmt_runs(tar_s)} s; CPU s ours {fmt_runs(snap_cpu)}, tar|zstd {fmt_runs(tar_cpu)}; stored {du(store) / 1e6:,.0f} MB, tarball "
            f"{tarball.stat().st_size / 1e6:,.0f} MB; peak RSS {max(snap_rss) / MIB:.0f} MiB"
        )
        if "snapshot" in self.figures:
            rep.fig(f"{label}.snapshot/tar_zstd_sync", paired(snap_s, tar_sync_s), "<=1.0")
            rep.fig(f"{label}.snapshot/tar_zstd_nosync", paired(snap_s, tar_s), "-")
            rep.fig(f"{label}.snapshot/tar_zstd_cpu_seconds", paired(snap_cpu, tar_cpu), "-")

        # nothing changed: through the API (before_write) and through the CLI
        if "unchanged" in self.figures and label != "base":
            time.sleep(RACY_WAIT)
            api = json.loads(child([sys.executable, "-c", API_UNCHANGED, str(db), str(store)])[2])
            cli = [child(cs(db, store, "snapshot", "--json"))[0] for _ in range(max(3, n))]
            rep.note(f"{label}: unchanged via API {fmt_runs(api)} s; via CLI {fmt_runs(cli)} s")
            rep.fig(f"{label}.unchanged_api_s", med(api), "<=0.3", "{:.3f}")
            rep.fig(f"{label}.unchanged_cli_s", med(cli), "<=0.5", "{:.3f}")

        snap_id = str(first["id"])
        # restore --no-verify against zstd -d | tar -x && sync (both durable)
        if {"restore", "rss"} & self.figures:
            out = work / "untar"
            ours, theirs, kibs, cpus, tcpus = [], [], [], [], []
            for _ in range(n):
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                got = child(f"set -o pipefail; zstd -d -q < {tarball} | tar -xf - -C {out} && sync -f {out}")
                theirs.append(got[0])
                tcpus.append(got[3])
                shutil.rmtree(out)
                wall, kib, _, cpu = child(
                    cs(db, store, "restore", snap_id, "--no-verify", "--no-backup", "--yes")
                )
                ours.append(wall)
                kibs.append(kib)
                cpus.append(cpu)
                purge_kept(db, store)
            rss["restore"] = int(med([float(k) for k in kibs]))
            rep.note(
                f"{label}: restore --no-verify {fmt_runs(ours)} s (CPU {fmt_runs(cpus)}); "
                f"zstd -d | tar -x && sync {fmt_runs(theirs)} s (CPU {fmt_runs(tcpus)})"
            )
            if "restore" in self.figures:
                rep.fig(f"{label}.restore/untar_sync", paired(ours, theirs), "<=1.0")
                rep.fig(f"{label}.restore/untar_cpu_seconds", paired(cpus, tcpus), "-")

        # verify --quick against zstd -d of the tarball; full verify against the probe floor
        if {"verify", "rss"} & self.figures:
            data = int(first["totals"]["data_bytes"])
            q_s, z_s, q_kib, q_cpu, z_cpu = [], [], [], [], []
            for _ in range(n):
                wall, kib, _, cpu = child(cs(db, store, "verify", snap_id, "--quick", "--json"))
                q_s.append(wall)
                q_kib.append(kib)
                q_cpu.append(cpu)
                got = child(f"zstd -d -q -c < {tarball} > /dev/null")
                z_s.append(got[0])
                z_cpu.append(got[3])
            rss["verify"] = int(med([float(k) for k in q_kib]))
            thr = [(data / q) / (size / z) for q, z in zip(q_s, z_s, strict=True)]
            rep.note(
                f"{label}: verify --quick {fmt_runs(q_s)} s = {data / med(q_s) / 1e6:,.0f} MB/s; "
                f"zstd -d {fmt_runs(z_s)} s = {size / med(z_s) / 1e6:,.0f} MB/s; CPU s ours {fmt_runs(q_cpu)}, "
                f"zstd {fmt_runs(z_cpu)}"
            )
        if "verify" in self.figures:
            rep.fig(f"{label}.verify_quick_throughput/zstd_d", med(thr), ">=1.0")
            thr_cpu = [(data / q) / (size / z) for q, z in zip(q_cpu, z_cpu, strict=True)]
            rep.fig(f"{label}.verify_quick_throughput/zstd_d_cpu_seconds", med(thr_cpu), "-")
            if label != "base":
                f_s, v_s, probed = [], [], 0
                for _ in range(n):
                    f_s.append(child([sys.executable, "-c", FLOOR, str(db)])[0])
                    wall, _kib, out_text, _ = child(
                        [sys.executable, "-c", VERIFY_FULL, str(db), str(store), snap_id]
                    )
                    res = json.loads(out_text)
                    if not res["ok"]:
                        raise SystemExit(f"{label}: full verify failed: {res['detail']}")
                    probed = int(res["probed"])
                    v_s.append(wall)
                colls = len(json.loads(child([sys.executable, sample.__file__, "count", str(db)])[2]))
                rep.note(
                    f"{label}: full verify {fmt_runs(v_s)} s; floor (child + import + open + count) "
                    f"{fmt_runs(f_s)} s; probe opened {probed} of {colls} collections"
                )
                target = "<=2.0" if label == "wide" else "<=1.5"
                rep.fig(f"{label}.verify_full/probe_floor", paired(v_s, f_s), target)
                rep.fig(f"{label}.verify_probed_collections/all", probed / colls, ">=1.0")

        # +1% records: new bytes against the full snapshot's; then the edit step (deletes,
        # document and metadata rewrites) on its own; diff of the full and the last
        if {"incremental", "rss"} & self.figures:
            t0 = time.perf_counter()
            sample_cmd("grow", str(db), "--fraction", "0.01", "--seed", "101")
            time.sleep(RACY_WAIT)
            grown_s = time.perf_counter() - t0
            wall, kib, out_text, cpu = child(cs(db, store, "snapshot", "--json"))
            new = int(json.loads(out_text)["totals"]["new_bytes"])
            t0 = time.perf_counter()
            sample_cmd("mutate", str(db), "--step", "1", "--fraction", "0.01")
            time.sleep(RACY_WAIT)
            edited_s = time.perf_counter() - t0
            wall2, _, out_text, cpu2 = child(cs(db, store, "snapshot", "--json"))
            inc = json.loads(out_text)
            new2 = int(inc["totals"]["new_bytes"])
            rep.note(
                f"{label}: +1% records (chromadb {grown_s:.0f} s): snapshot {wall:.2f} s (CPU {cpu:.2f}), "
                f"{new / 1e6:,.1f} MB new of {full_new / 1e6:,.1f} MB full; then deletes and edits of 1% "
                f"(chromadb {edited_s:.0f} s): snapshot {wall2:.2f} s (CPU {cpu2:.2f}), {new2 / 1e6:,.1f} MB new"
            )
            if "incremental" in self.figures and label != "base":
                rep.fig(f"{label}.incremental_new/full_bytes", new / full_new, "<=0.10", "{:.3f}")
                rep.fig(f"{label}.edits_new/full_bytes", new2 / full_new, "-", "{:.3f}")
            d_s, d_kib = [], []
            for _ in range(n):
                wall, kib, _, _ = child(cs(db, store, "diff", snap_id, str(inc["id"]), "--json"))
                d_s.append(wall)
                d_kib.append(kib)
            rss["diff"] = int(med([float(k) for k in d_kib]))
            rep.note(f"{label}: diff full..+1% and edits {fmt_runs(d_s)} s")
            # prune's memory: every snapshot but the newest, with gc, on a copy of the store
            pstore = work / "store-prune"
            fresh_copy(store, pstore)
            wall, kib, _, _ = child(cs(db, pstore, "prune", "--keep-last", "1", "--json"))
            rss["prune"] = kib
            shutil.rmtree(pstore)
        shutil.rmtree(work / "untar", ignore_errors=True)
        tarball.unlink(missing_ok=True)
        rep.note(f"{label}: peak RSS MiB " + ", ".join(f"{op} {kib / MIB:.0f}" for op, kib in rss.items()))

    # --- 200 snapshots of large: list, diff, find, prune ------------------------------------

    def history(self, src: Path, label: str) -> None:
        rep, n = self.rep, self.runs
        root = CACHE / f"{src.parent.name}-history"
        ready = root / ".ready"
        db, store = root / "chroma", root / "store"
        if not ready.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            fresh_copy(src, db)
            mgr = SnapshotManager(db, store)
            rep.note(f"building {HISTORY_SNAPSHOTS} snapshots of {src.parent.name} in {root} ...")
            t0 = time.perf_counter()
            every = HISTORY_SNAPSHOTS // HISTORY_CHANGES
            for i in range(HISTORY_SNAPSHOTS):
                if i and i % every == 0:
                    sample_cmd("mutate", str(db), "--step", str(i), "--fraction", "0.004")
                    time.sleep(RACY_WAIT)
                mgr.snapshot(tags=[f"step{i}"])
            ready.write_text(json.dumps({"build_s": round(time.perf_counter() - t0, 1)}))
        info = json.loads(ready.read_text())
        snaps = SnapshotManager(db, store).list()
        rep.note(
            f"{label}: history store of {len(snaps)} snapshots ({HISTORY_CHANGES} after changes), "
            f"{du(store) / 1e6:,.0f} MB, built in {info['build_s']:.0f} s"
        )
        if "history" in self.figures:
            lst = [child(cs(db, store, "list", "--json"))[0] for _ in range(max(3, n))]
            dif = [child(cs(db, store, "diff", snaps[0].id, snaps[-1].id, "--json"))[0] for _ in range(n)]
            fnd = [child(cs(db, store, "find", HISTORY_FIND, "--json"))[0] for _ in range(n)]
            rep.note(
                f"{label}: list {fmt_runs(lst)} s; diff first..last {fmt_runs(dif)} s; find {fmt_runs(fnd)} s"
            )
            rep.fig(f"{label}.list_{len(snaps)}_s", med(lst), "<=0.5", "{:.3f}")
            rep.fig(f"{label}.diff_s", med(dif), "<=3.0")
            rep.fig(f"{label}.find_{len(snaps)}_s", med(fnd), "<=5.0")
        if "prune" in self.figures:
            keep = len(snaps) - 150
            walls, ratios, kibs = [], [], []
            for _ in range(n):
                pstore = root.parent / f"{root.name}-prune"
                fresh_copy(store, pstore)
                dry = json.loads(
                    child(cs(db, pstore, "prune", "--keep-last", str(keep), "--dry-run", "--json"))[2]
                )
                wall, kib, out, _ = child(cs(db, pstore, "prune", "--keep-last", str(keep), "--json"))
                res = json.loads(out)
                walls.append(wall)
                kibs.append(kib)
                ratios.append(res["reclaimed_bytes"] / max(1, dry["expected_bytes"]))
                shutil.rmtree(pstore)
            rep.note(
                f"{label}: prune 150 of {len(snaps)} with gc {fmt_runs(walls)} s, peak RSS "
                f"{max(kibs) / MIB:.0f} MiB; reclaimed/expected {' '.join(f'{r:.4f}' for r in ratios)}"
            )
            rep.fig(f"{label}.prune_reclaimed/expected_err", abs(med(ratios) - 1), "<=0.01", "{:.4f}")
            if label in self.full_s:
                rep.fig(f"{label}.prune_wall/full_snapshot", med(walls) / self.full_s[label], "<=2.0")
            else:
                rep.note(f"{label}: prune/full snapshot needs the snapshot figure of {label}")

    # --- wide: work scales with the changed collections ------------------------------------

    def one_collection(self, label: str, src: Path) -> dict[str, list[float]]:
        """Change one collection, then snapshot, diff, verify --quick, restore --collection."""
        n = self.runs
        work = self.root / f"{label}-one"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        db, store = fresh_copy(src, work / "chroma"), work / "store"
        child(cs(db, store, "snapshot", "--json"))
        name = "coll1"
        out: dict[str, list[float]] = {"snapshot": [], "diff": [], "verify": [], "restore": []}
        for i in range(n):
            prev = json.loads(child(cs(db, store, "show", "latest", "--json"))[2])["id"]
            change(db, 10 + i, 0.01, [name])
            wall, _, text, _ = child(cs(db, store, "snapshot", "--json"))
            out["snapshot"].append(wall)
            new = json.loads(text)["id"]
            out["diff"].append(child(cs(db, store, "diff", prev, new, "--json"))[0])
            out["verify"].append(child(cs(db, store, "verify", new, "--quick", "--json"))[0])
            cmd = cs(db, store, "restore", prev, "--collection", name, "--replace", "--yes", "--no-backup")
            out["restore"].append(child(cmd)[0])
            time.sleep(RACY_WAIT)
        shutil.rmtree(work)
        return out

    def wide(self, wide: Path, pair: Path, label: str) -> None:
        rep = self.rep
        w = self.one_collection(label, wide)
        p = self.one_collection("pair", pair)
        for op in ("snapshot", "diff", "verify", "restore"):
            rep.note(
                f"{label}: one collection changed, {op}: {fmt_runs(w[op])} s; on pair {fmt_runs(p[op])} s"
            )
            ratio = paired(w[op], p[op])
            rep.fig(f"{label}.one_collection_{op}/pair", ratio, "<=2.0")

    # --- peak RSS: at most 150 MiB on large, and flat between base and large ---------------

    def rss_figures(self, large: str) -> None:
        base = self.rss.get("base", {})
        for op in ("snapshot", "restore", "verify", "prune", "diff"):
            kib = self.rss.get(large, {}).get(op)
            if kib is None:
                continue
            self.rep.fig(f"{large}.rss_{op}_MiB", kib / MIB, "<=150", "{:.0f}")
            if op in base:
                self.rep.fig(f"{large}.rss_{op}/base", kib / base[op], "<=1.10")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="paired runs per figure (default 3)")
    ap.add_argument("--workloads", default="large,wide,base", help="comma-separated: large, wide, base")
    ap.add_argument("--figures", default=",".join(FIGURES), help=f"comma-separated: {', '.join(FIGURES)}")
    ap.add_argument("--large", default="large", help="workload used as large (mini to try the script)")
    ap.add_argument("--wide", default="wide", help="workload used as wide (miniwide to try the script)")
    ap.add_argument("--pair", default="pair", help="the 2-collection database wide is compared with")
    ap.add_argument("--keep-work", action="store_true", help="keep the working copies and stores")
    args = ap.parse_args()
    args.figures = set(args.figures.split(","))
    wl = args.workloads.split(",")
    if args.runs < 1 or not args.figures <= set(FIGURES) or not set(wl) <= {"large", "wide", "base"}:
        ap.error("bad --runs, --figures or --workloads")
    for name in (args.large, args.wide, args.pair):
        if name not in WORKLOADS:
            ap.error(f"unknown workload {name}: one of {', '.join(WORKLOADS)}")
    for tool in ("tar", "zstd", "sync"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH")
    rep = Report()
    bench = Bench(args, rep)
    t0 = time.perf_counter()
    stages: list[tuple[str, Callable[[], None]]] = []
    if "base" in wl and "rss" in args.figures:
        stages.append(("base", lambda: bench.workload("base", bench_db())))
    if "large" in wl:
        stages.append(("large", lambda: bench.workload("large", workload(args.large))))
        if {"history", "prune"} & args.figures:
            stages.append(("history", lambda: bench.history(workload(args.large), "large")))
        if "rss" in args.figures:
            stages.append(("rss", lambda: bench.rss_figures("large")))
    if "wide" in wl:
        stages.append(("wide", lambda: bench.workload("wide", workload(args.wide))))
        if "wide" in args.figures:
            stages.append(("wide-one", lambda: bench.wide(workload(args.wide), workload(args.pair), "wide")))
    rep.note(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {pressure()}")
    for name, stage in stages:
        t = time.perf_counter()
        stage()
        rep.note(
            f"stage {name}: {time.perf_counter() - t:.0f} s; load {os.getloadavg()[0]:.1f}, {pressure()}"
        )
    if args.keep_work:
        rep.note(f"working copies and stores kept in {bench.root}")
    else:
        shutil.rmtree(bench.root, ignore_errors=True)
    assert "chromadb" not in sys.modules, "chromadb must only be imported by child processes"
    print(f"\n== summary ({time.perf_counter() - t0:.0f} s): {shlex.join([sys.executable, *sys.argv])}")
    for line in rep.lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
