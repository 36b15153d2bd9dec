"""Roll-forward after a crash: what it brings back, how exactly, and at what cost next to
chromadb's own `add` of the same records (issue 18).

    python bench/rollforward_bench.py                    # the bench database, 20 trials
    python bench/rollforward_bench.py --records 20000 --trials 5
    python bench/rollforward_bench.py --trials 2 --profile /tmp/rf-prof   # cProfile of the parent

Per trial, on a fresh copy of the database whose newest snapshot was taken before the
write: a child adds 5% more records to coll0 with chromadb (batches of --batch, no
pre-write snapshot for that write) and is SIGKILLed at a uniformly random instant of its
writing; then the snapshot is restored (the replaced directory kept) and
`SnapshotManager.roll_forward_from` applies what the broken directory holds. Measured:

- records recovered / records the broken chroma.sqlite3 holds past the snapshot (target 1.0
  where the vector bytes survive), and the lost ones by reason;
- rolled-forward vectors bit-identical to what chromadb returned (the float32 readback of
  the writer's inputs), read back with chromadb after the swap: target all;
- roll-forward time / chromadb's own add of the same records into a copy of the restored
  database (same batches; the add calls alone): target <= 1.5;
- whether chromadb itself still opened the broken directory (with --probe).

Only the kill instant is chosen; everything else is real (chromadb in child processes).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE, bench_db

from chromasnap.snapshots import SnapshotManager, collection_child, salvage, sample

NAME = "coll0"
SEED = 91

WRITER = r"""
import sys, time, numpy as np, chromadb
from chromadb.config import Settings
path, name, start, n, batch, dim, seed = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:8])
only = set(sys.argv[8].split(",")) if len(sys.argv) > 8 and sys.argv[8] else None
col = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False)).get_collection(name)
print("READY", flush=True)
spent = 0.0
for i in range(start, start + n, batch):
    k = min(batch, start + n - i)
    emb = np.random.default_rng(seed + i).standard_normal((k, dim), dtype=np.float32)
    ids = [f"{name}-{j}" for j in range(i, i + k)]
    keep = [x for x in range(k) if only is None or ids[x] in only]
    if not keep:
        continue
    t = time.perf_counter()
    col.add(ids=[ids[x] for x in keep], embeddings=emb[keep],
            documents=[f"grown {i + x}" for x in keep],
            metadatas=[{"n": i + x, "grown": True} for x in keep])
    spent += time.perf_counter() - t
    print("BATCH", i, k, flush=True)
print("DONE", round(spent, 3), flush=True)
"""

GET = r"""
import json, sys, numpy as np, chromadb
from chromadb.config import Settings
col = chromadb.PersistentClient(path=sys.argv[1], settings=Settings(anonymized_telemetry=False)).get_collection(sys.argv[2])
ids = json.loads(open(sys.argv[3]).read())
out = {}
for i in range(0, len(ids), 1000):
    got = col.get(ids=ids[i:i + 1000], include=["embeddings", "documents", "metadatas"])
    for k, rid in enumerate(got["ids"]):
        out[rid] = [np.asarray(got["embeddings"][k], dtype="<f4").tobytes().hex(), got["documents"][k], got["metadatas"][k]]
print(json.dumps({"count": col.count(), "records": out}))
"""


OPENS = r"""
import sys, chromadb
from chromadb.config import Settings
client = chromadb.PersistentClient(path=sys.argv[1], settings=Settings(anonymized_telemetry=False))
col = client.get_collection(sys.argv[2])
n = col.count()
got = col.get(limit=200, offset=max(0, n - 200), include=["embeddings"])
col.query(query_embeddings=[got["embeddings"][0]], n_results=5)
"""


def truth(start: int, n: int, batch: int, dim: int) -> dict[str, bytes]:
    """What chromadb returns for the records the writer adds (cosine readback)."""
    out = {}
    for i in range(start, start + n, batch):
        k = min(batch, start + n - i)
        emb = np.random.default_rng(SEED + i).standard_normal((k, dim), dtype=np.float32)
        back = collection_child.readback(emb)
        out.update({f"{NAME}-{i + j}": back[j].tobytes() for j in range(k)})
    return out


def base_database(args: argparse.Namespace) -> tuple[Path, int]:
    """The database (the bench database, or one of --records) and coll0's record count."""
    if args.records is None:
        db = bench_db(args.python)
    else:
        where = CACHE / f"rollforward-{args.records}-{args.dim}"
        db = where / "chroma"
        if not (where / ".ready").exists():
            shutil.rmtree(where, ignore_errors=True)
            where.mkdir(parents=True)
            subprocess.run(
                [
                    args.python,
                    sample.__file__,
                    "build",
                    str(db),
                    "--records",
                    str(args.records),
                    "--dim",
                    str(args.dim),
                ],
                check=True,
            )
            (where / ".ready").write_text("ok")
    con = sqlite3.connect(f"file:{db / 'chroma.sqlite3'}?mode=ro&immutable=1", uri=True)
    try:
        (n,) = con.execute(
            "SELECT count(*) FROM embeddings e JOIN segments s ON e.segment_id = s.id "
            "JOIN collections c ON s.collection = c.id WHERE c.name = ? AND s.scope = 'METADATA'",
            (NAME,),
        ).fetchone()
    finally:
        con.close()
    return db, int(n)


def writer(args: argparse.Namespace, db: Path, start: int, n: int, only: str = "") -> subprocess.Popen[str]:
    argv = [
        args.python,
        "-c",
        WRITER,
        str(db),
        NAME,
        str(start),
        str(n),
        str(args.batch),
        str(args.dim),
        str(SEED),
    ]
    proc = subprocess.Popen([*argv, only], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("READY"):
        raise SystemExit("the writer did not start")
    return proc


def grown_ids(db: Path, start: int) -> set[str]:
    """coll0's ids at or past `start` that the broken chroma.sqlite3 holds (private copy)."""
    copy = db.parent / "ids.sqlite3"
    copy.unlink(missing_ok=True)
    salvage.copy_sqlite(db, copy)
    con = sqlite3.connect(f"file:{copy}?mode=ro&immutable=1", uri=True)
    try:
        rows = con.execute(
            "SELECT e.embedding_id FROM embeddings e JOIN segments s ON e.segment_id = s.id "
            "JOIN collections c ON s.collection = c.id WHERE c.name = ? AND s.scope = 'METADATA'",
            (NAME,),
        ).fetchall()
    finally:
        con.close()
        copy.unlink()
    return {str(r) for (r,) in rows if int(str(r).rsplit("-", 1)[1]) >= start}


def opens(args: argparse.Namespace, db: Path, work: Path) -> str:
    """'ok', 'error', 'hang' or the signal that killed a chromadb child opening a copy
    (count, get the last records with their embeddings, query one)."""
    probe = work / "probe"
    shutil.copytree(db, probe)
    try:
        r = subprocess.run(
            [args.python, "-c", OPENS, str(probe), NAME], capture_output=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        return "hang"
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if r.returncode < 0:
        return signal.Signals(-r.returncode).name
    return "ok" if r.returncode == 0 else "error"


def trial(
    args: argparse.Namespace, k: int, base: Path, store0: Path, snap: str, start: int, want: dict[str, bytes]
) -> dict[str, Any]:
    work = args.work / f"trial-{k}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db, store = work / "chroma", work / "store"
    shutil.copytree(base, db)
    shutil.copytree(store0, store)
    proc = writer(args, db, start, args.grow)
    delay = random.uniform(0, args.write_s)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < delay:
        time.sleep(0.001)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    held = grown_ids(db, start)
    opened = opens(args, db, work) if args.probe else "-"
    mgr = SnapshotManager(db, store)
    kept = mgr.restore(snap, verify=False, backup=False).kept_path
    assert kept is not None
    if args.profile:
        import cProfile

        args.profile.mkdir(parents=True, exist_ok=True)
        prof = cProfile.Profile()
        rep = prof.runcall(mgr.roll_forward_from, kept, python=args.python)
        prof.dump_stats(str(args.profile / f"trial-{k}.prof"))
    else:
        rep = mgr.roll_forward_from(kept, python=args.python)
    coll = next((c for c in rep.collections if c.name == NAME), None)
    added = coll.added if coll else 0
    # read back what roll-forward added, with chromadb
    ids_file = work / "ids.json"
    ids_file.write_text(json.dumps(sorted(held)))
    got = subprocess.run(
        [args.python, "-c", GET, str(db), NAME, str(ids_file)], capture_output=True, text=True, check=True
    )
    back = json.loads(got.stdout)["records"]
    exact = sum(1 for rid, rec in back.items() if bytes.fromhex(rec[0]) == want[rid])
    # chromadb's own add of the same records into a copy of the restored database
    plain = work / "plain"
    mgr.extract(snap, plain)
    add = writer(args, plain, start, args.grow, ",".join(sorted(back)))
    out, _ = add.communicate()
    add_s = float(out.split("DONE")[-1].split()[0]) if "DONE" in out else float("nan")
    row = {
        "trial": k,
        "killed_at_s": round(delay, 2),
        "opened": opened,
        "held": len(held),
        "recovered": len(back),
        "rolled_forward": added,
        "exact": exact,
        "lost": rep.lost,
        "lost_by_reason": coll.lost_by_reason if coll else {},
        "rollforward_s": rep.duration_s,
        "add_s": round(add_s, 3),
        "ratio": round(rep.duration_s / add_s, 2) if add_s and len(back) else None,
        "timings": rep.timings,
    }
    shutil.rmtree(work, ignore_errors=True)
    Path(kept).parent.joinpath(Path(kept).name + ".lost.jsonl").unlink(missing_ok=True)
    return row


def calibrate(args: argparse.Namespace, base: Path, start: int) -> float:
    work = args.work / "calibrate"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(base, work / "chroma")
    t0 = time.monotonic()
    proc = writer(args, work / "chroma", start, args.grow)
    proc.communicate()
    took = time.monotonic() - t0
    shutil.rmtree(work)
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, help="coll0's records (default: the bench database)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--grow", type=int, help="records the writer adds (default 5%%)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--probe", action="store_true", help="also open each broken copy with chromadb")
    ap.add_argument("--python", default=sys.executable, help="interpreter with chromadb")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=CACHE / "rollforward-work")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", type=Path, help="folder: a cProfile of each trial's roll-forward (parent)")
    args = ap.parse_args()
    random.seed(args.seed)
    base, n = base_database(args)
    args.grow = args.grow or max(1000, n // 20)
    start = 10**7  # ids past every existing one
    want = truth(start, args.grow, args.batch, args.dim)
    store0 = args.work / "store"
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    snap = SnapshotManager(base, store0).snapshot(reason="manual").id
    args.write_s = calibrate(args, base, start)
    print(
        f"{n} records in {NAME}; the writer adds {args.grow} in {args.write_s:.1f}s; {args.trials} kills",
        flush=True,
    )
    rows = []
    for k in range(args.trials):
        row = trial(args, k, base, store0, snap, start, want)
        rows.append(row)
        print(json.dumps(row), flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    frac = [r["recovered"] / r["held"] for r in rows if r["held"]]
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    inexact = sum(r["recovered"] - r["exact"] for r in rows)
    print(
        f"recovered / held past the snapshot: min {min(frac, default=1):.4f}, median "
        f"{statistics.median(frac) if frac else 1:.4f}, trials at 1.0: {sum(f == 1 for f in frac)}/{len(frac)} "
        f"(nothing held past the snapshot: {len(rows) - len(frac)})"
    )
    print(f"vectors not bit-identical: {inexact} of {sum(r['recovered'] for r in rows)}")
    if ratios:
        print(
            f"roll-forward / chromadb add: median {statistics.median(ratios):.2f} "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f}); roll-forward median "
            f"{statistics.median(r['rollforward_s'] for r in rows):.1f}s"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
