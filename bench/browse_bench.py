"""Browsing benchmark: `find` and `diff` over a store of 50 snapshots of the bench database,
and `restore --collection` of a 50k-record collection against chromadb's own `add`.

    python bench/browse_bench.py [--snapshots 50] [--runs 5] [--restore-runs 3] [--rebuild]

Targets: `find` over all 50 snapshots <= 5 s; `diff` of two snapshots <= 3 s; restoring a
50k-record collection <= 2x the time chromadb takes to add the same records from memory.
The store (50 snapshots, between which a child grows the database by 1% and every few
steps deletes and edits records) is built once and cached; `--rebuild` builds it again.
chromadb is only ever imported in child processes.
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
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, bench_db, chromasnap_cmd, du, fresh_copy, median_of, run

from chromasnap.snapshots import SnapshotManager, sample

FIND_TARGET = 5.0
DIFF_TARGET = 3.0
RESTORE_TARGET = 2.0
MUTATE_EVERY = 5  # delete and edit records every this many steps (besides the 1% growth)
KEEP = "coll0-12345"  # never deleted: held by every snapshot

# Child: delete some records (adding as many new ones, so that `sample.py grow`, which
# numbers new ids from the count, never reuses an id), rewrite some documents (with new
# embeddings: chromadb never embeds text here) and edit some metadata.
MUTATE = r"""
import json, sys
import numpy as np
import chromadb
from chromadb.config import Settings

path, step = sys.argv[1], int(sys.argv[2])
keep = set(sys.argv[3:])
client = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
rng = np.random.default_rng(10_000 + step)
report = {}
# only original records (below the initial count) are touched: grown ids stay intact
for name, lo, hi in (("coll0", 0, 100_000), ("coll1", 0, 12_000)):
    col = client.get_collection(name, embedding_function=None)
    before = col.count()
    dim = len(col.get(limit=1, include=["embeddings"])["embeddings"][0])
    n_del, n_doc, n_meta = (hi - lo) // 400, (hi - lo) // 250, (hi - lo) // 250
    cand = [f"{name}-{i}" for i in rng.choice(hi - lo, size=3 * (n_del + n_doc + n_meta), replace=False) + lo]
    have = set(col.get(ids=cand, include=[])["ids"])
    pick = [c for c in cand if c in have and c not in keep]
    dele = pick[:n_del]
    docs = pick[n_del : n_del + n_doc]
    metas = pick[n_del + n_doc : n_del + n_doc + n_meta]
    col.delete(ids=dele)
    new = [f"{name}-x{step}-{j}" for j in range(len(dele))]
    col.add(
        ids=new,
        embeddings=rng.standard_normal((len(new), dim), dtype=np.float32),
        documents=[f"added at step {step} #{j}" for j in range(len(new))],
        metadatas=[{"step": step, "topic": "added"} for _ in new],
    )
    col.update(
        ids=docs,
        embeddings=rng.standard_normal((len(docs), dim), dtype=np.float32),
        documents=[f"rewritten at step {step}: {rid}" for rid in docs],
    )
    col.update(ids=metas, metadatas=[{"edited": step, "topic": "edited"} for _ in metas])
    if name == "coll0":
        col.update(ids=sorted(keep), metadatas=[{"rev": step} for _ in keep])
    after = col.count()
    if after != before:
        raise SystemExit(f"{name}: count {before} -> {after}")
    report[name] = {"deleted": len(dele), "added": len(new), "documents": len(docs), "metadata": len(metas)}
print(json.dumps(report))
"""

# Child: the baseline. Load every record of a collection into memory (untimed), then time
# `add` of them, in batches, into a fresh collection of a fresh database.
BASELINE = r"""
import json, sys, time
import numpy as np
import chromadb
from chromadb.config import Settings

src_path, dst_path, name, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
settings = Settings(anonymized_telemetry=False)
src = chromadb.PersistentClient(path=src_path, settings=settings).get_collection(name, embedding_function=None)
total = src.count()
ids, docs, metas, embs = [], [], [], []
for offset in range(0, total, 5000):
    page = src.get(limit=5000, offset=offset, include=["documents", "metadatas", "embeddings"])
    ids += page["ids"]
    docs += page["documents"]
    metas += page["metadatas"]
    embs.append(np.asarray(page["embeddings"], dtype=np.float32))
embs = np.concatenate(embs)
assert len(ids) == total == len(embs)
client = chromadb.PersistentClient(path=dst_path, settings=settings)
col = client.create_collection(
    name, metadata=src.metadata, configuration=src.configuration, embedding_function=None
)
t0 = time.perf_counter()
for i in range(0, total, batch):
    col.add(
        ids=ids[i : i + batch],
        embeddings=embs[i : i + batch],
        documents=docs[i : i + batch],
        metadatas=metas[i : i + batch],
    )
add_s = time.perf_counter() - t0
assert col.count() == total
print(json.dumps({"records": total, "add_s": add_s}))
"""


def child_json(cmd: list[str], **kw: Any) -> Any:
    """Run a child, fail loudly, and parse the JSON its stdout ends with."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(
            f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli_json(args: list[str], env: dict[str, str]) -> Any:
    proc = subprocess.run([*chromasnap_cmd(), *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"chromasnap {shlex.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def line(label: str, value: float, target: float, unit: str = "s") -> str:
    verdict = "ok" if value <= target else "MISSED"
    if unit == "x":
        return f"{label}: {value:.2f}x (target <= {target:g}x) {verdict}"
    return f"{label}: {value:.2f} s (target <= {target:g} s; {value / target:.2f} of it) {verdict}"


# --- the 50-snapshot store -------------------------------------------------------------------------


def build_store(root: Path, n: int) -> dict[str, Any]:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    db = fresh_copy(bench_db(), root / "chroma")
    mgr = SnapshotManager(db, root / "store")
    print(f"building a store of {n} snapshots of {du(db) / 1e6:.0f} MB under {root} ...", flush=True)
    t0 = time.perf_counter()
    change_s, snap_s, midway = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        mutate = Path(tmp) / "mutate.py"
        mutate.write_text(MUTATE)
        for i in range(n):
            t = time.perf_counter()
            if i and i == n // 2:
                counts = child_json([sys.executable, sample.__file__, "count", str(db)])
                midway = f"coll0-{counts['coll0']}"  # the first id the next growth adds
            if i:
                grow = [sys.executable, sample.__file__, "grow", str(db), "--fraction", "0.01"]
                subprocess.run([*grow, "--seed", str(100 + i)], check=True)
            if i and i % MUTATE_EVERY == 0:
                child_json([sys.executable, str(mutate), str(db), str(i), KEEP])
            change_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            mgr.snapshot(tags=[f"step{i}"])
            snap_s.append(time.perf_counter() - t)
            if (i + 1) % 10 == 0 or i + 1 == n:
                print(f"  {i + 1}/{n} snapshots, {time.perf_counter() - t0:.0f} s", flush=True)
    info = {
        "snapshots": n,
        "midway": midway,
        "midway_step": n // 2,
        "build_s": time.perf_counter() - t0,
        "change_median_s": statistics.median(change_s),
        "snapshot_median_s": statistics.median(snap_s),
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (root / ".ready").write_text(json.dumps(info))
    return info


def browse_part(n: int, runs: int, rebuild: bool, out: list[str]) -> None:
    root = CACHE / "browse"
    ready = root / ".ready"
    info = json.loads(ready.read_text()) if ready.exists() else None
    if rebuild or info is None or info.get("snapshots") != n:
        info = build_store(root, n)
        built = f"{n} snapshots built in {info['build_s']:.0f} s"
    else:
        built = f"{n} snapshots reused from {root} (built in {info['build_s']:.0f} s on {info['built_at']})"
    print(
        f"{built}; per step: change median {info['change_median_s']:.1f} s, "
        f"snapshot median {info['snapshot_median_s']:.1f} s",
        flush=True,
    )
    db, store = root / "chroma", root / "store"
    snaps = SnapshotManager(db, store).list()
    if len(snaps) != n:
        raise SystemExit(f"{store} holds {len(snaps)} snapshots, expected {n}: run with --rebuild")
    print(f"database now {du(db) / 1e6:.0f} MB; store on disk {du(store) / 1e6:.0f} MB", flush=True)
    env = {**os.environ, "CHROMASNAP_DB": str(db), "CHROMASNAP_STORE": str(store)}
    out.append(f"build: {built}")

    # find: the whole CLI process, an id every snapshot holds and one that appears midway
    finds = [("find (id in all snapshots)", KEEP)]
    if info.get("midway"):
        finds.append((f"find (id appearing at snapshot {info['midway_step']})", info["midway"]))
    for label, rid in finds:
        res = cli_json(["find", rid, "--json"], env)
        changes = sum(e["change"] != "unchanged" for e in res["entries"])
        print(
            f"{rid}: {len(res['entries'])} entries over {res['snapshots']} snapshots, {changes} not unchanged"
        )
        med, vals = median_of(
            runs, lambda _i, rid=rid: run([*chromasnap_cmd(), "find", rid, "--json"], env=env)[0]
        )
        print(f"{label} {rid}: median {med:.2f} s over {runs} ({', '.join(f'{v:.2f}' for v in vals)})")
        out.append(line(f"{label}, {n} snapshots, median of {runs}", med, FIND_TARGET))

    # diff: first..last, two consecutive snapshots, and the last against the live database
    k = max(0, n // 2 - 1)
    pairs = [(f"diff first..last (0..{n - 1})", [snaps[0].id, snaps[-1].id])]
    if n > 1:
        pairs.append((f"diff consecutive ({k}..{k + 1})", [snaps[k].id, snaps[k + 1].id]))
    pairs.append((f"diff last ({n - 1})..live database", [snaps[-1].id]))
    for label, refs in pairs:
        res = cli_json(["diff", *refs, "--json"], env)
        what = "; ".join(
            f"{c['name']} {c['status']} +{c['added']} -{c['removed']} ~{c['changed']}"
            for c in res["collections"]
        )
        print(f"{label}: {what}; {len(res['files'])} files differ")
        med, vals = median_of(
            runs, lambda _i, refs=refs: run([*chromasnap_cmd(), "diff", *refs, "--json"], env=env)[0]
        )
        print(f"{label}: median {med:.2f} s over {runs} ({', '.join(f'{v:.2f}' for v in vals)})")
        out.append(line(f"{label}, median of {runs}", med, DIFF_TARGET))


# --- restore --collection ------------------------------------------------------------------------------


def restore_part(records: int, runs: int, rebuild: bool, out: list[str]) -> None:
    root = CACHE / f"browse-restore-{records}"
    ready = root / ".ready"
    live, store = root / "chroma", root / "store"
    pristine_db, pristine_store = root / "pristine" / "chroma", root / "pristine" / "store"
    if rebuild or not ready.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        print(f"building a database with one collection of {records} records ...", flush=True)
        subprocess.run(
            [sys.executable, sample.__file__, "build", str(live), "--records", str(records)], check=True
        )
        snap = SnapshotManager(live, store).snapshot(tags=["c50k"])
        # keep untouched copies: every run restores into a fresh copy of both
        fresh_copy(live, pristine_db)
        fresh_copy(store, pristine_store)
        ready.write_text(json.dumps({"snapshot": snap.id, "records": records}))
    snap_id = json.loads(ready.read_text())["snapshot"]
    print(f"restore --collection: snapshot {snap_id[:12]} of {du(pristine_db) / 1e6:.0f} MB", flush=True)

    cmd = [*chromasnap_cmd(), "restore", snap_id, "--collection", "coll0", "--as", "coll0-restored", "--yes"]
    cmd += ["--db", str(live), "--store", str(store)]
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline.py"
        baseline.write_text(BASELINE)
        src, dst = root / "baseline-src", root / "baseline-dst"
        ours, theirs = [], []
        for i in range(runs):
            # untimed: a fresh database (so coll0-restored is free) and a fresh store
            fresh_copy(pristine_db, live)
            fresh_copy(pristine_store, store)
            ours.append(run(cmd)[0])
            fresh_copy(pristine_db, src)
            shutil.rmtree(dst, ignore_errors=True)
            dst.mkdir()
            rep = child_json([sys.executable, str(baseline), str(src), str(dst), "coll0", "2000"])
            if rep["records"] != records:
                raise SystemExit(f"baseline added {rep['records']} records, expected {records}")
            theirs.append(rep["add_s"])
            print(
                f"  run {i + 1}/{runs}: restore --collection {ours[-1]:.2f} s, chromadb add {theirs[-1]:.2f} s"
            )
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(dst, ignore_errors=True)
    # check the last restore through the record index (no chromadb here)
    res = cli_json(["diff", snap_id, "--json", "--db", str(live), "--store", str(store)], dict(os.environ))
    got = {c["name"]: (c["status"], c["records_b"]) for c in res["collections"]}
    if got.get("coll0-restored") != ("created", records) or got.get("coll0") != ("same", records):
        raise SystemExit(f"unexpected database after restore --collection: {got}")
    r, b = statistics.median(ours), statistics.median(theirs)
    print(
        f"restore --collection ({records} records): median {r:.2f} s; chromadb add from memory median "
        f"{b:.2f} s; ratio {r / b:.2f} (target <= {RESTORE_TARGET:g})"
    )
    out.append(
        f"restore --collection, {records} records, median of {runs}: {r:.2f} s; chromadb add median {b:.2f} s"
    )
    out.append(line("restore --collection / chromadb add", r / b, RESTORE_TARGET, unit="x"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--snapshots", type=int, default=50, help="snapshots in the store (default 50)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs of find and diff (default 5)")
    ap.add_argument(
        "--restore-runs", type=int, default=3, help="timed runs of restore --collection (default 3)"
    )
    ap.add_argument("--restore-records", type=int, default=50_000, help=argparse.SUPPRESS)
    ap.add_argument("--skip-restore", action="store_true", help="only find and diff")
    ap.add_argument("--skip-browse", action="store_true", help="only restore --collection")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached store and database")
    a = ap.parse_args()
    if a.snapshots < 1 or a.runs < 1 or a.restore_runs < 1:
        ap.error("--snapshots, --runs and --restore-runs must be at least 1")
    out: list[str] = []
    t0 = time.perf_counter()
    if not a.skip_browse:
        browse_part(a.snapshots, a.runs, a.rebuild, out)
    if not a.skip_restore:
        restore_part(a.restore_records, a.restore_runs, a.rebuild, out)
    assert "chromadb" not in sys.modules, "chromadb must only be imported by child processes"
    print()
    print(f"== summary ({time.perf_counter() - t0:.0f} s): {shlex.join([sys.executable, *sys.argv])}")
    for s in out:
        print(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
