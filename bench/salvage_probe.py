"""What survives in a really broken Chroma database: the evidence issue 18's roll-forward
rests on.

    python bench/salvage_probe.py                       # 20,000 records, dim 384, 20 + 10 kills
    python bench/salvage_probe.py --records 5000 --trials 5 --persist-trials 3

Builds (once, cached in bench/.cache) a database of one cosine collection, then breaks
copies of it for real and runs `chromasnap.snapshots.salvage` on each:

- kills: a child adding 5% more records (in batches of --batch; the HNSW persists once
  1000 records are pending) is SIGKILLed at a uniformly random instant of its writing;
- persist kills: the same, killed at a random instant of the HNSW persist (from the first
  write to header.bin, over the persist's measured duration): torn pages;
- header.bin's element count inflated (of a grown copy);
- index_metadata.pickle truncated at 5%, 10%, ... 95% of its length.

For each: records the broken chroma.sqlite3 holds; vectors recovered from the queue and
from the HNSW; lost ones by reason; recovered vectors that are not bit-identical to what
chromadb returned before the break (must be 0: base records checked against chromadb's
own export, new ones against the float32 readback of their inputs); whether chromadb
itself still opens the copy. Prints a table and the distribution; --json writes it all.
Only the kill instant is chosen; everything else is real (chromadb in child processes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from chromasnap.snapshots import collection_child, salvage, salvage_hnsw, sample
from chromasnap.snapshots.hnsw import HEADER_FORMAT

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("CHROMASNAP_BENCH_CACHE", HERE / ".cache"))
NAME = "coll0"
SEED = 77

WRITER = r"""
import sys, numpy as np, chromadb
from chromadb.config import Settings
path, name, start, n, batch, dim, seed = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:8])
col = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False)).get_collection(name)
print("READY", flush=True)
for i in range(start, start + n, batch):
    k = min(batch, start + n - i)
    emb = np.random.default_rng(seed + i).standard_normal((k, dim), dtype=np.float32)
    ids = [f"{name}-{j}" for j in range(i, i + k)]
    col.add(ids=ids, embeddings=emb, documents=[f"grown {j}" for j in range(i, i + k)],
            metadatas=[{"n": j, "grown": True} for j in range(i, i + k)])
    print("BATCH", i, k, flush=True)
print("DONE", flush=True)
"""

OPENS = r"""
import sys, chromadb
from chromadb.config import Settings
col = chromadb.PersistentClient(path=sys.argv[1], settings=Settings(anonymized_telemetry=False)).get_collection(sys.argv[2])
n = col.count()
got = col.get(limit=200, offset=max(0, n - 200), include=["embeddings"])
q = col.query(query_embeddings=[got["embeddings"][0]], n_results=5)
print(n, flush=True)
"""


def build(python: str, records: int, dim: int) -> tuple[Path, dict[str, bytes]]:
    """The base database and what chromadb returns for each of its records (cached)."""
    tag = hashlib.blake2b(python.encode(), digest_size=4).hexdigest()  # one per chromadb install
    where = CACHE / f"salvage-{records}-{dim}-{tag}"
    db, truth_file, ready = where / "chroma", where / "truth.npz", where / ".ready"
    if not ready.exists():
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        print(f"building the database ({records} records, dimension {dim}) ...", flush=True)
        subprocess.run(
            [python, sample.__file__, "build", str(db), "--records", str(records), "--dim", str(dim)],
            check=True,
        )
        out = where / "export.jsonl"
        subprocess.run(
            [python, collection_child.__file__, "export", str(db), NAME, str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        ids, rows = [], []
        with out.open(encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                ids.append(rec["id"])
                rows.append(np.asarray(rec["embedding"], dtype=np.float32))
        np.savez(truth_file, ids=np.array(ids), vectors=np.stack(rows))
        out.unlink()
        ready.write_text("ok")
    got = np.load(truth_file)
    return db, {str(i): v.tobytes() for i, v in zip(got["ids"], got["vectors"], strict=True)}


def grown_truth(start: int, n: int, batch: int, dim: int) -> dict[str, bytes]:
    """What chromadb returns for the records the writer adds (cosine readback)."""
    out = {}
    for i in range(start, start + n, batch):
        k = min(batch, start + n - i)
        emb = np.random.default_rng(SEED + i).standard_normal((k, dim), dtype=np.float32)
        back = collection_child.readback(emb)
        out.update({f"{NAME}-{i + j}": back[j].tobytes() for j in range(k)})
    return out


def segment(db: Path) -> Path:
    return next(p.parent for p in db.glob("*/header.bin") if (p.parent / "index_metadata.pickle").exists())


def writer(python: str, db: Path, start: int, n: int, batch: int, dim: int) -> subprocess.Popen[str]:
    args = [python, "-c", WRITER, str(db), NAME, str(start), str(n), str(batch), str(dim), str(SEED)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        raise SystemExit(f"the writer did not start: {line!r}")


def calibrate(python: str, base: Path, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """Time the write (READY to DONE) and the persist (first header.bin write to the
    pickle's) in one unkilled run."""
    db = fresh(base, work / "calibrate")
    seg = segment(db)
    h0, p0 = (seg / "header.bin").stat().st_mtime_ns, (seg / "index_metadata.pickle").stat().st_mtime_ns
    proc = writer(python, db, args.records, args.grow, args.batch, args.dim)
    wait_ready(proc)
    t0 = time.monotonic()
    t_header = t_pickle = None
    while proc.poll() is None:
        now = time.monotonic()
        if t_header is None and (seg / "header.bin").stat().st_mtime_ns != h0:
            t_header = now
        if t_pickle is None and (seg / "index_metadata.pickle").stat().st_mtime_ns != p0:
            t_pickle = now
        time.sleep(0.0005)
    write = time.monotonic() - t0
    if proc.returncode != 0 or t_header is None:
        raise SystemExit("the calibration write failed or never persisted the HNSW")
    persist = max((t_pickle or t_header) - t_header, 0.005)
    shutil.rmtree(db.parent)
    return {"write_s": write, "persist_s": persist, "header_at_s": t_header - t0}


def fresh(base: Path, where: Path) -> Path:
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    shutil.copytree(base, where / "chroma")
    return where / "chroma"


def kill_write(
    python: str, db: Path, args: argparse.Namespace, delay: float | None, persist: float, pickle: bool = False
) -> str:
    """Run the writer and SIGKILL it `delay` s after READY, or (delay None) a random
    instant of its persist, or (`pickle`) as soon as index_metadata.pickle changes size
    (chromadb rewrites it in place); returns when the kill landed."""
    seg = segment(db)
    h0 = (seg / "header.bin").stat().st_mtime_ns
    p0 = (seg / "index_metadata.pickle").stat().st_size
    proc = writer(python, db, args.records, args.grow, args.batch, args.dim)
    wait_ready(proc)
    t0 = time.monotonic()
    fire = None if delay is None else t0 + delay
    while proc.poll() is None:
        now = time.monotonic()
        if pickle:
            if (seg / "index_metadata.pickle").stat().st_size != p0:
                fire = now
        elif fire is None and (seg / "header.bin").stat().st_mtime_ns != h0:
            fire = now + random.uniform(0, persist * 1.2)
        if fire is not None and now >= fire:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0005)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    return "finished" if proc.returncode == 0 else f"killed at {time.monotonic() - t0:.2f}s"


def chromadb_opens(python: str, db: Path) -> str:
    """'ok', 'error', or the signal that killed a chromadb child opening a copy."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(db, Path(tmp) / "c")
        try:
            r = subprocess.run(
                [python, "-c", OPENS, str(Path(tmp) / "c"), NAME],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "hang"
    if r.returncode < 0:
        return signal.Signals(-r.returncode).name
    return "ok" if r.returncode == 0 else "error"


def state(db: Path) -> dict[str, Any]:
    """Where the files are: element count in header.bin, pickle size, hot journal."""
    seg = segment(db)
    fields = struct.unpack(HEADER_FORMAT, (seg / "header.bin").read_bytes())
    return {
        "header_elements": fields[3],
        "pickle_bytes": (seg / "index_metadata.pickle").stat().st_size,
        "pickle_complete": salvage_hnsw.read_label_map(seg).complete,
        "hot_journal": (db / "chroma.sqlite3-journal").exists(),
    }


def measure(
    db: Path, truth: dict[str, bytes], work: Path, older: salvage.OlderLabels | None = None
) -> dict[str, Any]:
    """Salvage `db`; with `older` (the base database's labels, standing in for a snapshot
    taken before the write) a second time when the label map is incomplete."""
    copy = work / "private.sqlite3"
    copy.unlink(missing_ok=True)
    t0 = time.monotonic()
    salvage.copy_sqlite(db, copy)
    result = salvage.salvage(db, copy)
    took = time.monotonic() - t0
    coll = next(c for c in result.collections if c.info.name == NAME)
    counts = coll.counts()
    inexact = sum(1 for r in coll.records or [] if r.source and r.embedding != truth.get(r.id))
    unknown = sum(1 for r in coll.records or [] if r.id not in truth)
    out = {
        **counts,
        "inexact": inexact,
        "unknown_ids": unknown,
        "salvage_s": round(took, 2),
        "failed_tables": sorted(result.health.failed),
        "problems": coll.problems + result.problems,
    }
    if older is not None and coll.segment is not None and not coll.segment.labels.complete:
        again = next(c for c in salvage.salvage(db, copy, older).collections if c.info.name == NAME)
        out["with_snapshot_labels"] = again.counts()
        out["inexact"] += sum(1 for r in again.records or [] if r.source and r.embedding != truth.get(r.id))
    copy.unlink()
    return out


def row(kind: str, note: str, got: dict[str, Any], opens: str) -> dict[str, Any]:
    rec = {"kind": kind, "note": note, "chromadb": opens, **got}
    frac = (got["queue"] + got["hnsw"]) / got["records"] if got["records"] else 1.0
    rec["recovered_fraction"] = frac
    reasons = ", ".join(f"{k} {v}" for k, v in got["lost_by_reason"].items()) or "-"
    print(
        f"{kind:13} {note:28} sqlite {got['records']:6}  queue {got['queue']:5}  hnsw {got['hnsw']:6}  "
        f"lost {got['lost']:5} ({reasons})  inexact {got['inexact']}  chromadb {opens}  {got['salvage_s']}s",
        flush=True,
    )
    more = got.get("with_snapshot_labels")
    if more:
        print(
            f"{'':13} {'+ the base labels':28} {'':13}  queue {more['queue']:5}  hnsw {more['hnsw']:6}  "
            f"lost {more['lost']:5}"
        )
        rec["recovered_fraction_with_snapshot_labels"] = (more["queue"] + more["hnsw"]) / max(
            1, more["records"]
        )
    return rec


def summary(rows: list[dict[str, Any]], kind: str) -> str:
    mine = [r for r in rows if r["kind"] == kind]
    if not mine:
        return ""
    fr = [r["recovered_fraction"] for r in mine]
    lost = [r["lost"] for r in mine]
    return (
        f"{kind}: {len(mine)} trials; recovered/sqlite min {min(fr):.4f} median {statistics.median(fr):.4f} "
        f"max {max(fr):.4f}; lost min {min(lost)} median {statistics.median(lost)} max {max(lost)}; "
        f"inexact {sum(r['inexact'] for r in mine)}; "
        + (
            "with the base labels min {:.4f} median {:.4f}; ".format(
                min(r.get("recovered_fraction_with_snapshot_labels", r["recovered_fraction"]) for r in mine),
                statistics.median(
                    r.get("recovered_fraction_with_snapshot_labels", r["recovered_fraction"]) for r in mine
                ),
            )
            if any("with_snapshot_labels" in r for r in mine)
            else ""
        )
        + "chromadb opens "
        + ", ".join(
            f"{k} {sum(r['chromadb'] == k for r in mine)}" for k in sorted({r["chromadb"] for r in mine})
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--grow", type=int, help="records the writer adds (default 5%%, at least 1000)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--trials", type=int, default=20, help="kills at random instants of the write")
    ap.add_argument("--persist-trials", type=int, default=10, help="kills during the HNSW persist")
    ap.add_argument("--pickle-trials", type=int, default=5, help="kills while the pickle is rewritten")
    ap.add_argument("--no-breaks", action="store_true", help="skip the inflated and truncated breaks")
    ap.add_argument("--python", default=sys.executable, help="interpreter with chromadb")
    ap.add_argument("--no-probe", action="store_true", help="skip opening each copy with chromadb")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.grow = args.grow or max(1000, args.records // 20)  # the HNSW persists once 1000 are pending
    random.seed(args.seed)
    base, truth = build(args.python, args.records, args.dim)
    truth.update(grown_truth(args.records, args.grow, args.batch, args.dim))
    work = Path(tempfile.mkdtemp(prefix="salvage-probe-", dir=CACHE))
    rows: list[dict[str, Any]] = []
    salvage.copy_sqlite(base, work / "base.sqlite3")
    older = salvage.older_labels(base, work / "base.sqlite3")

    def probe(db: Path) -> str:
        return "-" if args.no_probe else chromadb_opens(args.python, db)

    try:
        cal = calibrate(args.python, base, work, args)
        print(
            f"write of {args.grow} records in batches of {args.batch}: {cal['write_s']:.2f}s; "
            f"HNSW persist starts at {cal['header_at_s']:.2f}s and takes {cal['persist_s'] * 1000:.0f} ms",
            flush=True,
        )
        for i in range(args.trials):
            db = fresh(base, work / "trial")
            note = kill_write(args.python, db, args, random.uniform(0, cal["write_s"]), cal["persist_s"])
            st = state(db)
            note += f" h{st['header_elements']}" + (" hot" if st["hot_journal"] else "")
            note += "" if st["pickle_complete"] else " cut"
            rows.append(
                row("kill", note, measure(db, truth, work, older), probe(db)) | {"state": st, "trial": i}
            )
        for i in range(args.persist_trials):
            db = fresh(base, work / "trial")
            note = kill_write(args.python, db, args, None, cal["persist_s"])
            st = state(db)
            note += f" h{st['header_elements']}" + (" hot" if st["hot_journal"] else "")
            rows.append(
                row("persist-kill", note, measure(db, truth, work, older), probe(db))
                | {"state": st, "trial": i}
            )
        for i in range(args.pickle_trials):
            db = fresh(base, work / "trial")
            note = kill_write(args.python, db, args, None, cal["persist_s"], pickle=True)
            st = state(db)
            note += f" h{st['header_elements']}" + (" hot" if st["hot_journal"] else "")
            note += "" if st["pickle_complete"] else f" cut {st['pickle_bytes']}B"
            rows.append(
                row("pickle-kill", note, measure(db, truth, work, older), probe(db))
                | {"state": st, "trial": i}
            )
        if args.no_breaks:
            return finish(rows, args)
        grown = fresh(base, work / "grown")
        if kill_write(args.python, grown, args, 1e9, cal["persist_s"]) != "finished":
            raise SystemExit("the unkilled write failed")
        rows.append(row("intact", "grown, unbroken", measure(grown, truth, work), probe(grown)))
        db = fresh(grown, work / "trial")
        header = segment(db) / "header.bin"
        fields = list(struct.unpack(HEADER_FORMAT, header.read_bytes()))
        fields[3] = fields[3] * 4
        header.write_bytes(struct.pack(HEADER_FORMAT, *fields))
        rows.append(row("inflated", f"count x4 = {fields[3]}", measure(db, truth, work, older), probe(db)))
        data = (segment(grown) / "index_metadata.pickle").read_bytes()
        for pct in range(5, 100, 5):
            db = fresh(grown, work / "trial")
            (segment(db) / "index_metadata.pickle").write_bytes(data[: len(data) * pct // 100])
            opens = probe(db) if pct in (5, 50, 95) else "-"
            rows.append(row("truncated", f"pickle cut at {pct}%", measure(db, truth, work, older), opens))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return finish(rows, args)


def finish(rows: list[dict[str, Any]], args: argparse.Namespace) -> int:
    print()
    for kind in ("kill", "persist-kill", "pickle-kill", "truncated"):
        line = summary(rows, kind)
        if line:
            print(line)
    print(f"inexact vectors over all {len(rows)} runs: {sum(r['inexact'] for r in rows)}")
    took = [r["salvage_s"] for r in rows]
    print(f"salvage time (sqlite copy included): median {statistics.median(took):.2f}s, max {max(took):.2f}s")
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1)
        )
    return 1 if any(r["inexact"] or r["unknown_ids"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
