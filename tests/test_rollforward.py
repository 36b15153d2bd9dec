"""roll-forward: after a restore, what the replaced (broken) database still holds past the
snapshot is applied to the restored one, every vector bit-identical to what chromadb
returned before the break or listed as lost; on real chromadb databases broken for real
(a SIGSEGV on open, a SIGKILL mid-persist, a truncated pickle) and real SIGKILLs of the
roll-forward itself (at the crash points of `fsutil.crash_point`, the one seam used)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_salvage import CHILD, change, export, segment_of

from chromasnap.snapshots import SnapshotManager, collection_child, rollforward, salvage
from chromasnap.snapshots.hnsw import HEADER_FORMAT
from chromasnap.snapshots.rollforward import EXTRA_REASONS, RollForwardRefused, journal_path
from conftest import run_sample

# since the snapshot: persisted adds (the queue purged), updates of vectors and of
# metadata alone, deletes, a collection created (l2) and one dropped, a tail in the queue
PLAN = [
    {"op": "add", "collection": "coll0", "start": 2500, "n": 1000, "seed": 31, "batch": 500},
    {"op": "update", "collection": "coll0", "start": 0, "n": 50, "seed": 33},
    {"op": "update_meta", "collection": "coll0", "start": 50, "n": 50},
    {"op": "delete", "collection": "coll0", "start": 100, "n": 30},
    {"op": "add", "collection": "newc", "space": "l2", "start": 0, "n": 300, "seed": 35},
    {"op": "drop", "collection": "coll1"},
    {"op": "add", "collection": "coll0", "start": 3500, "n": 20, "seed": 37},
]
NAMES = ("coll0", "newc")
Truth = dict[str, dict[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def template(base_db: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    """A database and its store: a snapshot of the base database (coll0 2500 records
    persisted, coll1 300 in the queue), then PLAN; and what chromadb returned for every
    record after PLAN, before any break."""
    root = tmp_path_factory.mktemp("rf-template")
    db = root / "chroma"
    shutil.copytree(base_db, db, symlinks=True)
    SnapshotManager(db, root / "store").snapshot(reason="manual")
    change(db, PLAN)
    truth = {name: export(db, name, root / f"{name}.jsonl") for name in NAMES}
    return root, truth


@pytest.fixture
def world(template: tuple[Path, Truth], tmp_path: Path) -> tuple[SnapshotManager, Path]:
    """A private copy of the template's database and store."""
    for name in ("chroma", "store"):
        shutil.copytree(template[0] / name, tmp_path / name, symlinks=True)
    return SnapshotManager(tmp_path / "chroma", tmp_path / "store"), tmp_path / "chroma"


def sqlite_ids(db: Path) -> dict[str, set[str]]:
    """Every collection's record ids as a chroma.sqlite3 lists them (a private copy)."""
    copy = db.parent / f".{db.name}-ids.sqlite3"
    copy.unlink(missing_ok=True)
    salvage.copy_sqlite(db, copy)
    con = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        out: dict[str, set[str]] = {}
        for name, rid in con.execute(
            "SELECT c.name, e.embedding_id FROM embeddings e JOIN segments s ON e.segment_id = s.id "
            "JOIN collections c ON s.collection = c.id WHERE s.scope = 'METADATA'"
        ):
            out.setdefault(str(name), set()).add(str(rid))
        for (name,) in con.execute("SELECT name FROM collections"):
            out.setdefault(str(name), set())
    finally:
        con.close()
        copy.unlink()
    return out


def lost_lines(path: str | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def check_rolled_forward(
    db: Path, broken_ids: dict[str, set[str]], truth: Truth, report: dict[str, Any], tmp: Path
) -> dict[str, int]:
    """The database's records are the broken SQLite's, less only the lost ones (each
    exported with a known reason); every record chromadb returned before the break comes
    back with the same document, metadata and embedding bytes, unless it is lost."""
    lost = lost_lines(report["lost_export"])
    assert len(lost) == report["lost"]
    reasons = {**salvage.LOST_REASONS, **EXTRA_REASONS}
    assert all(line["reason"] in reasons for line in lost)
    lost_ids = {(line["collection"], line["id"]) for line in lost}
    now = sqlite_ids(db)
    assert set(now) == set(broken_ids)
    exact = 0
    for name, ids in broken_ids.items():
        got = export(db, name, tmp / f"after-{name}.jsonl")
        missing = ids - set(got)
        assert {(name, rid) for rid in missing} <= lost_ids, sorted(missing)[:5]
        assert set(got) <= ids | {rid for c, rid in lost_ids if c == name}
        for rid, rec in got.items():
            if (name, rid) in lost_ids or rid not in truth.get(name, {}):
                continue
            want = truth[name][rid]
            assert rec["bytes"] == want["bytes"], (name, rid)
            assert rec["document"] == want["document"] and rec["metadata"] == want["metadata"]
            exact += 1
    return {"exact": exact, "lost": len(lost)}


def break_header(db: Path) -> None:
    header = segment_of(db) / "header.bin"
    fields = list(struct.unpack(HEADER_FORMAT, header.read_bytes()))
    fields[3] = fields[2] + 100_000  # cur_element_count far past max_elements: SIGSEGV on open
    header.write_bytes(struct.pack(HEADER_FORMAT, *fields))


def test_inflated_header_recovers_every_record_bit_exact(
    world: tuple[SnapshotManager, Path], template: tuple[Path, Truth], tmp_path: Path
) -> None:
    """Break (a): chromadb dies by SIGSEGV opening the database. recover restores the
    snapshot and rolls forward: nothing is lost, every vector is chromadb's own."""
    mgr, db = world
    broken_ids = sqlite_ids(db)
    break_header(db)
    proc = cli("recover", "--db", str(db), "--store", str(mgr.backend.location), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["kind"] == "restored" and res["kept_path"] and res["roll_forward"] is not None
    report = res["roll_forward"]
    assert report["applied"] and report["lost"] == 0 and report["pre_snapshot"]
    got = check_rolled_forward(db, broken_ids, template[1], report, tmp_path)
    assert got["exact"] == sum(len(v) for v in broken_ids.values())
    by_name = {c["name"]: c for c in report["collections"]}
    assert by_name["coll0"]["added"] == 1020 and by_name["coll0"]["changed"] == 100
    assert by_name["coll0"]["deleted"] == 30 and by_name["coll0"]["from_hnsw"] > 0
    assert by_name["newc"]["status"] == "created" and by_name["newc"]["added"] == 300
    assert by_name["coll1"]["status"] == "dropped"
    assert report["checked"] == 1020 + 100 + 300
    # the pre-roll-forward snapshot took the restored files from the restored snapshot,
    # reading none (the restored-state note)
    pre, restored = mgr.get(report["pre_snapshot"]), mgr.get(res["snapshot"])
    assert pre.totals.read_bytes == 0 and pre.totals.reused_files == len(restored.files)
    assert {f.path: f.hash for f in pre.files} == {f.path: f.hash for f in restored.files}
    # the kept directory is never modified, and a second run changes nothing
    kept = Path(res["kept_path"])
    before = {p: p.stat().st_mtime_ns for p in kept.rglob("*")}
    snaps = len(mgr.list())
    again = mgr.roll_forward_from(kept)
    assert not again.applied and again.lost == 0 and len(mgr.list()) == snaps
    assert {p: p.stat().st_mtime_ns for p in kept.rglob("*")} == before
    # the next start finds a healthy database
    assert mgr.recover().kind == "healthy"


@pytest.mark.slow
def test_truncated_pickle(
    world: tuple[SnapshotManager, Path], template: tuple[Path, Truth], tmp_path: Path
) -> None:
    """Break (c): index_metadata.pickle cut short, as a kill while chromadb rewrites it
    leaves it. The restored snapshot's labels stand in for records unchanged since; what
    cannot be mapped is exported, never invented."""
    mgr, db = world
    broken_ids = sqlite_ids(db)
    pickle_path = segment_of(db) / "index_metadata.pickle"
    pickle_path.write_bytes(pickle_path.read_bytes()[:1000])
    res = mgr.recover(roll_forward=False)
    assert res.kind == "restored" and res.kept_path and res.roll_forward is None  # chromadb fails to open it
    assert sqlite_ids(db)["coll1"]  # the snapshot as it was
    report = mgr.roll_forward_from(res.kept_path).model_dump()
    assert report["applied"]
    got = check_rolled_forward(db, broken_ids, template[1], report, tmp_path)
    print("truncated pickle:", got, report["collections"])
    assert got["exact"] + got["lost"] >= sum(len(v) for v in broken_ids.values()) - 30


def kill_mid_persist(mgr: SnapshotManager, db: Path) -> tuple[dict[str, bytes], int]:
    """A guarded write (before_write in a child) adding 1000 records (one HNSW persist),
    SIGKILLed just after header.bin first changes (mid-persist). Returns what chromadb
    returns for each record it could hold."""
    header = segment_of(db) / "header.bin"
    mtime = header.stat().st_mtime_ns
    step = {"op": "add", "collection": "coll0", "start": 4000, "n": 1000, "seed": 41, "batch": 1000}
    code = (
        "import subprocess, sys\n"
        "from chromasnap.snapshots import SnapshotManager\n"
        "mgr = SnapshotManager(sys.argv[1], sys.argv[2])\n"
        "with mgr.before_write(reason='ingest'):\n"
        "    subprocess.run([sys.executable, sys.argv[3], sys.argv[1], sys.argv[4]], check=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(db), str(mgr.backend.location), CHILD, json.dumps([step])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if header.stat().st_mtime_ns != mtime:
            time.sleep(0.002)
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.0005)
    proc.wait(timeout=60)
    vecs = collection_child.readback(
        np.random.default_rng(41 + 4000).standard_normal((1000, 384), dtype=np.float32)
    )
    return {f"coll0-{4000 + i}": vecs[i].tobytes() for i in range(1000)}, proc.returncode


@pytest.mark.slow
def test_guarded_write_killed_mid_persist(
    world: tuple[SnapshotManager, Path], template: tuple[Path, Truth], tmp_path: Path
) -> None:
    """Break (b): a guarded write SIGKILLed while chromadb persists its HNSW (torn pages).
    recover rolls the write back (its contract); rolling forward from what it kept then
    brings every record the broken SQLite holds, each vector bit-exact or listed."""
    mgr, db = world
    new, _code = kill_mid_persist(mgr, db)
    broken_ids = sqlite_ids(db)
    truth = {name: dict(recs) for name, recs in template[1].items()}
    truth["coll0"].update(
        {rid: {"bytes": b, "document": f"add document {rid[6:]}", "metadata": None} for rid, b in new.items()}
    )
    res = mgr.recover()
    # rolled back: by the write's intent if the database opens, else by restoring the
    # write's pre-write snapshot (the database is broken); either way not rolled forward
    assert res.kind in ("rolled-back", "restored") and res.kept_path and res.roll_forward is None
    assert res.snapshot == mgr.list()[-1].id and mgr.list()[-1].reason == "pre-write"
    report = mgr.roll_forward_from(res.kept_path).model_dump()
    added = broken_ids["coll0"] - set(template[1]["coll0"])
    assert report["applied"] == bool(added)
    for rid in added:  # metadata of the new records: as salvage_child wrote them
        j = int(rid[6:])
        truth["coll0"][rid]["metadata"] = {"n": j, "op": "add", "half": j % 2 == 0, "f": j / 3}
    got = check_rolled_forward(db, broken_ids, truth, report, tmp_path)
    print("mid-persist:", res.kind, len(added), "added since;", got, report["collections"])


def test_only_what_changed_since_the_snapshot_is_read(
    world: tuple[SnapshotManager, Path], base_db: Path, tmp_path: Path
) -> None:
    """A record whose seq_id is the same in both databases is the same version: of it
    only the id and seq_id are read (no document, metadata or vector, in either
    database); the kept database's other records are read whole, and the restored
    database's content only where the kept one holds another seq_id."""
    _mgr, db = world
    kept = tmp_path / "kept"
    os.rename(db, kept)
    shutil.copytree(base_db, db, symlinks=True)  # the snapshot's state
    work = tmp_path / "work"
    work.mkdir()
    live, kept_s, live_hw, kept_hw, configs = rollforward.read_both(db, kept, work)
    before = {r.id: r for r in next(c for c in live.collections if c.info.name == "coll0").records or []}
    after = next(c for c in kept_s.collections if c.info.name == "coll0").records or []
    same = [r for r in after if r.id in before and before[r.id].seq_id == r.seq_id]
    other = [r for r in after if r not in same]
    assert len(same) > 2000 and len(other) == 1020 + 100
    assert all(r.reason == "not_read" and r.document is None and r.embedding is None for r in same)
    assert all(r.document is not None and r.embedding is not None for r in other)
    assert {rid for rid, r in before.items() if r.document is not None} == {
        r.id for r in other if r.id in before
    }
    plan = rollforward.make_plan(live, kept_s, live_hw, kept_hw, configs)
    job = next(j for j in plan.jobs if j.name == "coll0")
    assert len(job.adds) == 1020 + 100 and len(job.deletes) == 100 + 30


def test_refuses_a_directory_that_does_not_descend(
    world: tuple[SnapshotManager, Path], base_db: Path, tmp_path: Path
) -> None:
    """Another database's directory, and one older than the database, are refused with
    one line; nothing changes (no snapshot, no file)."""
    mgr, db = world
    other = tmp_path / "other"
    run_sample("build", str(other), "--records", "40", "10", "--dim", "8")
    older = tmp_path / "older"
    shutil.copytree(base_db, older, symlinks=True)
    snaps = len(mgr.list())
    before = {p: p.stat().st_mtime_ns for p in db.rglob("*")}
    with pytest.raises(RollForwardRefused, match="share no collection"):
        mgr.roll_forward_from(other)
    with pytest.raises(RollForwardRefused, match="not a later state") as info:
        mgr.roll_forward_from(older)
    assert "\n" not in str(info.value)
    store = str(mgr.backend.location)
    proc = cli("roll-forward", "--from", str(older), "--to", str(db), "--store", store)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "not a later state" in proc.stderr
    assert len(mgr.list()) == snaps and not journal_path(db).exists()
    assert {p: p.stat().st_mtime_ns for p in db.rglob("*")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chroma", "older", "other", "store"]


def cli(*args: str, crash: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHROMASNAP_CRASH_AT": crash}
    return subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def roll_cli(mgr: SnapshotManager, db: Path, kept: Path, crash: str) -> subprocess.CompletedProcess[str]:
    store = str(mgr.backend.location)
    return cli("roll-forward", "--from", str(kept), "--to", str(db), "--store", store, crash=crash)


def children_of_the_test(crash: str) -> list[int]:
    """Live roll-forward children of this worktree started under CHROMASNAP_CRASH_AT=crash."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes()
            env = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        mine = str(rollforward.CHILD).encode() in cmd and f"CHROMASNAP_CRASH_AT={crash}".encode() in env
        if mine and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize(
    "crash",
    [
        pytest.param("rollforward-journal", marks=pytest.mark.slow),
        pytest.param("rollforward-applied", marks=pytest.mark.slow),
        pytest.param("rollforward-swapped", marks=pytest.mark.slow),
    ],
)
def test_sigkill_of_the_roll_forward_is_finished_by_recover(
    world: tuple[SnapshotManager, Path],
    template: tuple[Path, Truth],
    base_db: Path,
    tmp_path: Path,
    crash: str,
) -> None:
    """A real SIGKILL of `chromasnap roll-forward` at each step leaves the restored
    database or the rolled-forward one, never a mix; recover then finishes it."""
    mgr, db = world
    broken_ids = sqlite_ids(db)
    kept = tmp_path / "kept"
    os.rename(db, kept)  # stands for the replaced database; the base is the snapshot's state
    shutil.copytree(base_db, db, symlinks=True)
    proc = roll_cli(mgr, db, kept, crash)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert journal_path(db).exists()
    # the chromadb child, started before the read (and waiting at rollforward-journal),
    # dies with the roll-forward (PR_SET_PDEATHSIG)
    deadline = time.monotonic() + 10
    while children_of_the_test(crash) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not children_of_the_test(crash)
    ids = sqlite_ids(db)
    assert ids in (sqlite_ids(base_db), broken_ids)
    proc = cli("recover", "--db", str(db), "--store", str(mgr.backend.location))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("healthy: nothing to do\nfinished an interrupted roll-forward from ")
    assert not journal_path(db).exists()
    assert not [p for p in db.parent.iterdir() if ".rollforward-" in p.name]
    again = mgr.roll_forward_from(kept)  # nothing left to apply
    assert not again.applied
    check_rolled_forward(db, broken_ids, template[1], again.model_dump(), tmp_path)


@pytest.mark.parametrize(
    "crash", ["rollforward-adding", pytest.param("rollforward-waiting", marks=pytest.mark.slow)]
)
def test_a_killed_chromadb_child_changes_nothing(
    world: tuple[SnapshotManager, Path], base_db: Path, tmp_path: Path, crash: str
) -> None:
    """chromadb killed while adding, or while it waits for the plan (started before the
    read; its own SIGKILL seam): roll-forward fails with one line, the database is
    untouched, no journal is left; no recover is needed."""
    mgr, db = world
    kept = tmp_path / "kept"
    os.rename(db, kept)
    shutil.copytree(base_db, db, symlinks=True)
    before = {p: p.stat().st_mtime_ns for p in db.rglob("*")}
    proc = roll_cli(mgr, db, kept, crash)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "nothing was changed" in proc.stderr
    if crash == "rollforward-waiting":
        assert "died by SIGKILL" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in db.rglob("*")} == before
    assert not journal_path(db).exists()
    assert not [p for p in db.parent.iterdir() if ".rollforward-" in p.name]
