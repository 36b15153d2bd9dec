"""How often a snapshot taken under a writer that saves its HNSW all the time is torn.

    python bench/torn_rate.py --snapshots 300 [--prefill 5000] [--hold/--no-hold]
    PYTHONPATH=/path/to/old/checkout-as-chromasnap python bench/torn_rate.py ...   # another version

A writer adds 50 records at a time to a collection saved every 100 records (the
`persist` part of bench/torture.py); snapshots are taken back to back through the API.
Each snapshot taken is then extracted and its segment folders checked with
`hnsw.folder_problems` of *this* checkout (loaded by file path, so the same check judges
any chromasnap version under test); the ones it flags are verified in full with chromadb.
`--no-hold` disables the SQLite read lock kept across the folder reads (test seam
CHROMASNAP_NO_HOLD=1), to measure what the structural check alone catches.

`--replay-ms D` widens the window instead of waiting for luck: real saves of a real
chromadb writer are recorded first (one per 100 records), then replayed into the database
in hnswlib's order (header.bin, data_level0.bin, length.bin, link_lists.bin written in
place), `index_metadata.pickle` written D ms later (in place, truncated first, as chromadb
1.5.9 does), over and over while the snapshots are taken. Only the instant of each write
is made up; the bytes are chromadb's. The replayer takes no SQLite lock, so this measures
the structural check and its re-reads alone; snapshots are judged by the folder check.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torture import ENV, PERSIST_WRITER, PY, build

from chromasnap.snapshots import ChromasnapError, SnapshotManager

HERE = Path(__file__).resolve().parents[1]


def _this_checkouts_hnsw():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("hnsw_check", HERE / "snapshots" / "hnsw.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["hnsw_check"] = mod
    spec.loader.exec_module(mod)
    return mod


def folder_check(hnsw, db: Path) -> list[str]:  # type: ignore[no-untyped-def]
    out = []
    for seg in sorted(p for p in db.iterdir() if p.is_dir() and (p / "header.bin").is_file()):

        def raw(name: str, seg: Path = seg) -> bytes | None:
            p = seg / name
            return p.read_bytes() if p.is_file() else None

        files = hnsw.FolderFiles(
            sizes={p.name: p.stat().st_size for p in seg.iterdir() if p.is_file()},
            header=raw("header.bin"),
            link_lists=raw("link_lists.bin"),
            pickle=raw("index_metadata.pickle"),
        )
        out += [f"{seg.name}: {p}" for p in hnsw.folder_problems(files)]
    return out


RECORD_SAVES = """
import shutil, sys, numpy as np, chromadb
from pathlib import Path
from chromadb.config import Settings
db, out, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
client = chromadb.PersistentClient(path=str(db), settings=Settings(anonymized_telemetry=False))
col = client.get_or_create_collection("live", embedding_function=None,
    metadata={"hnsw:sync_threshold": 100, "hnsw:batch_size": 100})
rng = np.random.default_rng(7)
for k in range(n):
    col.add(ids=[f"r{k}-{i}" for i in range(100)], embeddings=rng.standard_normal((100, 384), dtype=np.float32))
    seg = next(p.parent for p in db.glob("*/index_metadata.pickle"))
    shutil.copytree(seg, out / f"{k:04d}")
print(seg.name)
"""
ORDER = ("header.bin", "data_level0.bin", "length.bin", "link_lists.bin")


def replay(seg: Path, saves: list[Path], delay: float, stop: threading.Event) -> None:
    """Write recorded saves into `seg` one after another, as hnswlib and chromadb do."""
    while not stop.is_set():
        for i, save in enumerate(saves):
            if stop.is_set():
                return
            for name in ORDER:
                data = (save / name).read_bytes()
                fd = os.open(seg / name, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    os.pwrite(fd, data, 0)
                    if i == 0:  # back to the first save: the files shrink
                        os.ftruncate(fd, len(data))
                finally:
                    os.close(fd)
            time.sleep(delay)
            (seg / "index_metadata.pickle").write_bytes((save / "index_metadata.pickle").read_bytes())
            time.sleep(delay)


def replayed(a: argparse.Namespace, root: Path, hnsw) -> dict[str, object]:  # type: ignore[no-untyped-def]
    db = root / "db"
    saves_dir = root / "saves"
    saves_dir.mkdir(parents=True)
    seg_name = subprocess.run(
        [PY, "-c", RECORD_SAVES, str(db), str(saves_dir), "12"],
        check=True,
        capture_output=True,
        text=True,
        env={**ENV, "ANONYMIZED_TELEMETRY": "False"},
    ).stdout.strip()
    saves = sorted(saves_dir.iterdir())
    seg = db / seg_name
    stop = threading.Event()
    t = threading.Thread(target=replay, args=(seg, saves, a.replay_ms / 1000, stop), daemon=True)
    t.start()
    taken = failed = torn_rereads = changed_rereads = 0
    errors: list[str] = []
    try:
        for _ in range(a.snapshots):
            mgr = SnapshotManager(db)
            try:
                mgr.snapshot(reason="torn-rate")
                taken += 1
            except ChromasnapError as exc:
                failed += 1
                errors.append(str(exc)[:200])
            stats = getattr(mgr, "last_capture", None)
            if stats is not None:
                torn_rereads += stats.torn_rereads
                changed_rereads += stats.changed_rereads
    finally:
        stop.set()
        t.join()
    mgr = SnapshotManager(db)
    torn = 0
    examples = []
    for s in mgr.list():
        out = root / "x"
        shutil.rmtree(out, ignore_errors=True)
        mgr.extract(s.id, out)
        problems = folder_check(hnsw, out)
        if problems:
            torn += 1
            examples.append(problems[0][:160])
    return {
        "mode": f"replay {a.replay_ms} ms",
        "snapshots": a.snapshots,
        "taken": taken,
        "refused": failed,
        "torn_by_structure": torn,
        "torn_rereads": torn_rereads,
        "changed_rereads": changed_rereads,
        "examples": examples[:3] + errors[:3],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--snapshots", type=int, default=100)
    ap.add_argument("--prefill", type=int, default=5000)
    ap.add_argument("--hold", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--replay-ms", type=float, default=None, help="replay real saves (see above)")
    a = ap.parse_args()
    if not a.hold:
        os.environ["CHROMASNAP_NO_HOLD"] = "1"
    hnsw = _this_checkouts_hnsw()
    root = a.dir or Path(tempfile.mkdtemp(prefix="chromasnap-torn-"))
    if a.replay_ms is not None:
        print(json.dumps(replayed(a, root, hnsw)))
        return 0
    db = build(root / "db", (300,))
    writer = subprocess.Popen(
        [PY, "-c", PERSIST_WRITER, str(db), str(a.prefill)],
        stdout=subprocess.PIPE,
        text=True,
        env={**ENV, "ANONYMIZED_TELEMETRY": "False"},
    )
    taken = failed = torn_rereads = changed_rereads = 0
    errors: list[str] = []
    t0 = time.monotonic()
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "READY"
        for _ in range(a.snapshots):
            mgr = SnapshotManager(db)
            try:
                mgr.snapshot(reason="torn-rate")
                taken += 1
            except ChromasnapError as exc:
                failed += 1
                errors.append(str(exc)[:200])
            stats = getattr(mgr, "last_capture", None)
            if stats is not None:
                torn_rereads += stats.torn_rereads
                changed_rereads += stats.changed_rereads
    finally:
        writer.kill()
        writer.wait()
    snap_s = time.monotonic() - t0
    mgr = SnapshotManager(db)
    flagged: dict[str, list[str]] = {}
    for s in mgr.list():
        out = root / "x"
        shutil.rmtree(out, ignore_errors=True)
        mgr.extract(s.id, out)
        problems = folder_check(hnsw, out)
        if problems:
            flagged[s.id] = problems
    verdicts = {sid: mgr.verify(sid).verdict for sid in flagged}
    print(
        json.dumps(
            {
                "snapshots": a.snapshots,
                "taken": taken,
                "refused": failed,
                "torn_by_structure": len(flagged),
                "torn_verify_fails": sum(1 for v in verdicts.values() if v != "ok"),
                "verdicts": sorted(verdicts.values()),
                "torn_rereads": torn_rereads,
                "changed_rereads": changed_rereads,
                "snapshot_s_mean": round(snap_s / max(1, a.snapshots), 3),
                "examples": [p[0][:160] for p in list(flagged.values())[:3]] + errors[:3],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
