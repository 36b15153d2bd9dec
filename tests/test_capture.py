"""Capture and round trip: real Chroma databases in, byte-identical databases out."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chromasnap.manifest import HnswSplitList, Snapshot
from chromasnap.snapshots import CaptureError, SnapshotManager, hnsw
from chromasnap.snapshots import capture as capture_mod
from chromasnap.snapshots.hnsw import parse_header
from conftest import counts, run_sample, tree_bytes


def roundtrip(mgr: SnapshotManager, snap_id: str, expected: dict[str, bytes], out: Path) -> None:
    mgr.extract(snap_id, out)
    assert tree_bytes(out) == expected


def test_successive_snapshots_round_trip_byte_identical(db: Path, tmp_path: Path) -> None:
    mgr = SnapshotManager(db)
    states, ids = [], []
    for step in range(3):
        if step:
            run_sample("grow", str(db), "--fraction", "0.5", "--seed", str(step))
        states.append(tree_bytes(db))
        ids.append(mgr.snapshot(tags=[f"step{step}"]).id)
    for i, (sid, state) in enumerate(zip(ids, states, strict=True)):
        roundtrip(mgr, sid, state, tmp_path / f"out{i}")
    # the extracted database opens with chromadb and holds what the source held then
    assert counts(tmp_path / "out0") == {"coll0": 2500, "coll1": 300}
    assert counts(tmp_path / "out2") == {"coll0": 5625, "coll1": 675}


def test_hnsw_split_used_and_exact_for_persisted_and_unpersisted(db: Path, tmp_path: Path) -> None:
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    level0 = [f for f in snap.files if f.path.endswith("data_level0.bin")]
    assert len(level0) == 2  # both collections have a vector folder
    assert all(f.layout == "hnsw-split" for f in level0)
    persisted = {c.name: c.hnsw_persisted for c in snap.wal.collections}
    assert persisted == {"coll0": True, "coll1": False}
    for f in level0:
        doc = mgr.repo.read_chunk_list(f.chunk_list).list
        assert isinstance(doc, HnswSplitList)
        header = parse_header((db / f.path).parent.joinpath("header.bin").read_bytes())
        assert header is not None
        assert doc.record_size == header.size_data_per_element
        assert doc.link_bytes == header.offset_data
    roundtrip(mgr, snap.id, tree_bytes(db), tmp_path / "out")


def test_incremental_snapshot_stores_only_links_and_new_vectors(db: Path) -> None:
    mgr = SnapshotManager(db)
    full = mgr.snapshot()
    run_sample("grow", str(db), "--fraction", "0.5")  # enough for HNSW to persist again
    inc = mgr.snapshot()
    path = next(f.path for f in full.files if f.path.endswith("data_level0.bin") and f.size > 1 << 20)
    old = mgr.repo.read_chunk_list(next(f for f in full.files if f.path == path).chunk_list).list
    new = mgr.repo.read_chunk_list(next(f for f in inc.files if f.path == path).chunk_list).list
    assert isinstance(old, HnswSplitList) and isinstance(new, HnswSplitList)
    assert new.records > old.records
    # every complete vector chunk of the old file is reused as is: vectors never move
    assert new.vectors[: len(old.vectors) - 1] == old.vectors[:-1]
    assert set(new.links).isdisjoint(old.links[:-1]) or len(old.links) > 1
    wal = {c.name: c for c in inc.wal.collections}
    assert wal["coll0"].records == 3750
    assert (wal["coll0"].hnsw_elements or 0) >= 3000  # the HNSW really persisted again


def test_unchanged_database_reads_nothing_and_stores_nothing(db: Path) -> None:
    mgr = SnapshotManager(db)
    first = mgr.snapshot()
    time.sleep(2.1)  # past the racy window: the stat check alone may now be trusted
    second = mgr.snapshot()
    third = mgr.snapshot()
    assert second.totals.new_bytes <= first.totals.new_bytes
    assert third.totals.read_bytes == 0
    assert third.totals.new_bytes == 0
    assert third.totals.reused_files == third.totals.files
    assert all(f.captured_by == "parent" for f in third.files)
    assert [f.hash for f in third.files] == [f.hash for f in second.files]


def test_file_changed_with_its_mtime_put_back_is_read_again(db: Path) -> None:
    mgr = SnapshotManager(db)
    mgr.snapshot()
    meta = next(db.glob("*/length.bin"))
    st = meta.stat()
    data = bytearray(meta.read_bytes())
    data[0] ^= 0xFF  # same size, and put the mtime back: only ctime tells
    meta.write_bytes(bytes(data))
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns))
    snap = mgr.snapshot()
    entry = next(f for f in snap.files if f.path.endswith(meta.parent.name + "/length.bin"))
    assert entry.captured_by == "read"


def test_sparse_file_is_read_by_extents_and_extracted_sparse(db: Path, tmp_path: Path) -> None:
    links = next(db.glob("*/link_lists.bin"))
    with links.open("r+b") as fh:  # terabytes of apparent size, almost all hole
        fh.seek(2 << 40)
        fh.write(b"tail")
    assert links.stat().st_size > 2 << 40
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    assert snap.totals.read_bytes < 100 << 20
    entry = next(f for f in snap.files if f.path.endswith(links.parent.name + "/link_lists.bin"))
    assert entry.hash_kind == "extents"
    out = tmp_path / "out"
    mgr.extract(snap.id, out)
    copy = out / entry.path
    assert copy.stat().st_size == links.stat().st_size
    assert copy.stat().st_blocks * 512 < 10 << 20  # still sparse on disk
    with copy.open("rb") as fh:
        fh.seek(2 << 40)
        assert fh.read() == b"tail"


def test_file_that_keeps_changing_fails_clearly(db: Path) -> None:
    target = next(db.glob("*/length.bin"))
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            with target.open("ab") as fh:
                fh.write(i.to_bytes(4, "little") * 4096)
            i += 1

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        with pytest.raises(CaptureError, match="kept changing"):
            SnapshotManager(db).snapshot()
    finally:
        stop.set()
        t.join()
    assert not SnapshotManager(db).list()  # nothing partial became visible


def test_symlinks_are_never_followed(db: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the database")
    (db / "escape").symlink_to(secret)
    snap = SnapshotManager(db).snapshot()
    assert [s.path for s in snap.skipped] == ["escape"]
    assert all(f.path != "escape" for f in snap.files)


def _make_hot_journal(db_file: Path) -> None:
    """A real hot journal: a child process dies (SIGKILL) mid-transaction after spilling pages."""
    code = f"""
import os, signal, sqlite3
db = sqlite3.connect({str(db_file)!r}, isolation_level=None)
db.execute("PRAGMA cache_size=1")
db.execute("BEGIN")
db.execute("UPDATE embedding_metadata SET string_value = 'torn' || string_value")
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -signal.SIGKILL


def test_hot_journal_is_rolled_back_privately_and_recorded(db: Path, tmp_path: Path) -> None:
    sq = db / "chroma.sqlite3"
    before = sq.read_bytes()
    _make_hot_journal(sq)
    journal = db / "chroma.sqlite3-journal"
    assert journal.exists() and journal.stat().st_size > 0
    torn = sq.read_bytes()
    assert torn != before  # pages were really spilled into the file
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    assert snap.wal.hot_journal
    assert snap.wal.leftover_files == ["chroma.sqlite3-journal"]
    assert "rolled back" in (snap.wal.journal_action or "")
    assert sq.read_bytes() == torn and journal.exists()  # the live directory was not touched
    out = tmp_path / "out"
    mgr.extract(snap.id, out)
    assert not (out / "chroma.sqlite3-journal").exists()
    con = sqlite3.connect(out / "chroma.sqlite3")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    n = con.execute("SELECT count(*) FROM embedding_metadata WHERE string_value LIKE 'torn%'").fetchone()
    assert n == (0,)
    con.close()
    assert counts(out) == {"coll0": 2500, "coll1": 300}


def test_wal_mode_database_is_captured_with_the_backup_api(db: Path, tmp_path: Path) -> None:
    con = sqlite3.connect(db / "chroma.sqlite3")
    assert con.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    con.execute("UPDATE collection_metadata SET key = key")
    con.commit()
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()  # `con` stays open: the -wal file is live
    assert snap.wal.journal_mode == "wal"
    sqlite_entry = next(f for f in snap.files if f.path == "chroma.sqlite3")
    assert sqlite_entry.captured_by == "sqlite-backup-api"
    con.close()
    out = tmp_path / "out"
    mgr.extract(snap.id, out)
    check = sqlite3.connect(out / "chroma.sqlite3")
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()
    assert counts(out) == {"coll0": 2500, "coll1": 300}


def test_capture_while_chromadb_writes_opens(db: Path, tmp_path: Path) -> None:
    writer = subprocess.Popen(
        [
            sys.executable,
            run_sample.__globals__["SAMPLE"],
            "write-loop",
            str(db),
            "--seconds",
            "12",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    mgr = SnapshotManager(db)
    taken = []
    try:
        time.sleep(2)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and len(taken) < 4:
            with contextlib.suppress(CaptureError):  # refused rather than captured torn
                taken.append(mgr.snapshot().id)
            time.sleep(0.5)
    finally:
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err[-2000:]
    assert json.loads(out)["written"] > 0
    assert taken, "no snapshot succeeded while the writer ran"
    for i, sid in enumerate(taken):
        dest = tmp_path / f"out{i}"
        mgr.extract(sid, dest)
        found = counts(dest)
        assert found["coll0"] == 2500 and found["coll1"] == 300
        snap = mgr.get(sid)
        live = next((c for c in snap.wal.collections if c.name == "live"), None)
        if live is not None:
            # rows queued past the metadata segment's position are replayed on open (some
            # may already be in `embeddings` when its max_seq_id was not yet updated)
            assert (live.records or 0) <= found["live"] <= (live.records or 0) + live.metadata_pending


@pytest.mark.slow
def test_database_written_by_chromadb_1_0_20(old_python: str, tmp_path: Path) -> None:
    db = tmp_path / "chroma"
    run_sample("build", str(db), "--records", "1500", "200", python=old_python)
    level0 = next(p for p in db.glob("*/data_level0.bin") if (p.parent / "index_metadata.pickle").exists())
    header = parse_header((level0.parent / "header.bin").read_bytes())
    assert header is not None
    # 1.0.x writes data_level0.bin at its capacity, zero-padded past the element count
    assert level0.stat().st_size == header.max_elements * header.size_data_per_element
    assert header.max_elements > header.cur_element_count
    expected = tree_bytes(db)
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    entry = next(f for f in snap.files if f.path == level0.relative_to(db).as_posix())
    assert entry.layout == "hnsw-split"
    assert snap.wal.schema_migrations  # read defensively from the 1.0 schema
    assert {c.name: c.records for c in snap.wal.collections} == {"coll0": 1500, "coll1": 200}
    roundtrip(mgr, snap.id, expected, tmp_path / "out")
    assert counts(tmp_path / "out", python=old_python) == {"coll0": 1500, "coll1": 200}


LOCK_HOLDER = """
import sqlite3, subprocess, sys
from chromasnap.snapshots import SnapshotManager
db = sys.argv[1]
con = sqlite3.connect(db + "/chroma.sqlite3", isolation_level=None)
con.execute("BEGIN IMMEDIATE")  # this process holds SQLite's RESERVED lock, as a writing client would
mgr = SnapshotManager(db)
mgr.snapshot()
mgr.health()
probe = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=0); c.execute('BEGIN IMMEDIATE')"
other = subprocess.run([sys.executable, "-c", probe, db + "/chroma.sqlite3"], capture_output=True, text=True)
print("still locked" if "locked" in other.stderr else "LOCK LOST")
"""


def test_snapshot_and_health_never_drop_a_lock_held_in_the_same_process(db: Path) -> None:
    """SQLite's POSIX locks die with any close() of the file in the holding process: an
    application with a Chroma client open calls before_write in that same process."""
    r = subprocess.run(
        [sys.executable, "-c", LOCK_HOLDER, str(db)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "still locked"


# --- a folder caught in the middle of Chroma's save -------------------------------------------


def _saves(db: Path) -> tuple[Path, bytes, bytes]:
    """The persisted segment folder after a real chromadb save, with the pickle of the save
    before it (header, data and links new, pickle old: the torn shape seen in the wild) and
    the pickle of this one."""
    seg = next(p.parent for p in db.glob("*/index_metadata.pickle"))
    old = (seg / "index_metadata.pickle").read_bytes()
    run_sample("grow", str(db), "--fraction", "0.5")  # past sync_threshold: the HNSW is saved
    new = (seg / "index_metadata.pickle").read_bytes()
    assert new != old
    return seg, old, new


def _folder(seg: Path, **override: bytes | None) -> hnsw.FolderFiles:
    def raw(name: str) -> bytes | None:
        key = name.split(".")[0]
        if key in override:
            return override[key]
        return (seg / name).read_bytes() if (seg / name).exists() else None

    files = {"header.bin", "data_level0.bin", "length.bin", "link_lists.bin", "index_metadata.pickle"}
    sizes = {n: len(raw(n) or b"") for n in files if raw(n) is not None}
    return hnsw.FolderFiles(
        sizes=sizes,
        header=raw("header.bin"),
        link_lists=raw("link_lists.bin"),
        pickle=raw("index_metadata.pickle"),
    )


def test_folder_check_finds_each_torn_shape_in_real_files(db: Path, tmp_path: Path) -> None:
    seg, old_pickle, new_pickle = _saves(db)
    links = (seg / "link_lists.bin").read_bytes()
    assert hnsw.folder_problems(_folder(seg)) == []
    torn = {
        "pickle from the save before": _folder(seg, index_metadata=old_pickle),
        "pickle cut off mid-write": _folder(seg, index_metadata=new_pickle[: len(new_pickle) // 2]),
        "pickle not written yet (first save)": _folder(seg, index_metadata=None),
        "link_lists.bin cut off mid-record": _folder(seg, link_lists=links[: len(links) - 3]),
        "link_lists.bin of fewer elements": _folder(seg, link_lists=links[: len(links) // 2 // 4 * 4]),
        "length.bin of fewer elements": _folder(seg, length=(seg / "length.bin").read_bytes()[:-40]),
    }
    for name, files in torn.items():
        assert hnsw.folder_problems(files), name
    # the pickle is walked, never loaded: a pickle that would run a command only is read
    marker = tmp_path / "ran"
    evil = b"\x80\x03cos\nsystem\nX" + len(f"touch {marker}").to_bytes(4, "little")
    evil += f"touch {marker}".encode() + b"\x85R."
    assert hnsw.pickle_structure(evil) == (True, None) and not marker.exists()


def _torn_at_first_read(monkeypatch: pytest.MonkeyPatch, seg: Path, states: list[bytes]) -> None:
    """Test seam: the instant a save completes cannot be produced on demand, so the pickle
    is rewritten at capture's back-off sleeps (the only change of timing), one state each."""
    real_sleep = time.sleep
    it = iter(states)

    def sleep(s: float) -> None:
        nxt = next(it, None)
        if nxt is not None:
            (seg / "index_metadata.pickle").write_bytes(nxt)
        real_sleep(s)

    monkeypatch.setattr(capture_mod.time, "sleep", sleep)


def test_a_folder_caught_mid_save_is_read_again(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seg, old_pickle, new_pickle = _saves(db)
    (seg / "index_metadata.pickle").write_bytes(old_pickle)  # the save has not written it yet
    _torn_at_first_read(monkeypatch, seg, [new_pickle])  # ... and writes it during the back-off
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    assert mgr.last_capture is not None and mgr.last_capture.torn_rereads == 1
    assert mgr.last_capture.lock_held_s > 0
    assert not [w for w in snap.wal.warnings if capture_mod.DAMAGE_MARK in w]
    assert mgr.verify(snap.id).ok


@pytest.mark.slow
def test_a_folder_that_never_forms_one_save_is_refused(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seg, old_pickle, new_pickle = _saves(db)
    mgr = SnapshotManager(db)
    mgr.snapshot()
    run_sample("grow", str(db), "--fraction", "0.1")
    before = [s.id for s in mgr.list()]
    (seg / "index_metadata.pickle").write_bytes(old_pickle)
    cut = new_pickle[: len(new_pickle) // 2]
    _torn_at_first_read(monkeypatch, seg, [cut, old_pickle, cut, old_pickle, cut, old_pickle])
    with pytest.raises(CaptureError, match="could not be read as one complete save") as exc:
        mgr.snapshot()
    assert "\n" not in str(exc.value) and "index_metadata.pickle" in str(exc.value)
    assert [s.id for s in SnapshotManager(db).list()] == before  # nothing listed


@pytest.mark.slow
def test_a_folder_damaged_at_rest_is_captured_as_found_with_a_warning(db: Path) -> None:
    seg, old_pickle, _new = _saves(db)
    (seg / "index_metadata.pickle").write_bytes(old_pickle)  # a writer killed mid-save left this
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    warnings = [w for w in snap.wal.warnings if capture_mod.DAMAGE_MARK in w]
    assert len(warnings) == 1 and seg.name in warnings[0] and "earlier save" in warnings[0]
    assert mgr.last_capture is not None and mgr.last_capture.damaged_folders == 1
    r = subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", "snapshot", "--db", str(db)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1 and "inconsistent on disk" in r.stderr and "taken" in r.stdout
    assert len(mgr.list()) == 2  # taken, as found: the database is what is damaged


WRITER = """
import sys, numpy as np, chromadb
from chromadb.config import Settings
client = chromadb.PersistentClient(path=sys.argv[1], settings=Settings(anonymized_telemetry=False))
col = client.get_or_create_collection("live", embedding_function=None,
    metadata={"hnsw:sync_threshold": 100, "hnsw:batch_size": 100})
rng = np.random.default_rng(1)
i = 0
while True:
    col.add(ids=[f"w{i}-{k}" for k in range(50)], embeddings=rng.standard_normal((50, 384), dtype=np.float32))
    i += 1
    if i == 4:
        print("READY", flush=True)
"""


@pytest.mark.slow
def test_the_sqlite_read_lock_keeps_chroma_from_starting_a_save(tmp_path: Path) -> None:
    """What capture relies on (chromadb 1.5.9, measured in docs/capture.md): Chroma saves an
    HNSW folder only after a write transaction of its own, so while a snapshot keeps the
    SQLite read lock no save starts; one already under way may finish."""
    db = tmp_path / "chroma"
    run_sample("build", str(db), "--records", "10")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "READY"
        pickle = next(db.glob("*/index_metadata.pickle"))  # the only collection saved yet

        def saves_within(seconds: float, stop_at: int = 1 << 30) -> int:
            seen, n = pickle.stat().st_mtime_ns, 0
            end = time.monotonic() + seconds
            while time.monotonic() < end and n < stop_at:
                now = pickle.stat().st_mtime_ns
                if now != seen:
                    seen, n = now, n + 1
                time.sleep(0.005)
            return n

        assert saves_within(60, stop_at=2) == 2  # the writer saves again and again
        lock = capture_mod.SqliteCopy(db / "chroma.sqlite3", tmp_path / "copy", hold=True).start()
        try:
            held = saves_within(3)
        finally:
            lock.finish()
        assert held <= 1  # at most the save already under way
        assert saves_within(60, stop_at=1) == 1  # and they resume once it is released
    finally:
        writer.kill()
        writer.wait()


GUARDED = """
import sys, time
from chromasnap.snapshots import SnapshotManager
with SnapshotManager(sys.argv[1]).before_write(reason="long ingest"):
    print("IN", flush=True)
    sys.stdin.readline()
"""


def test_cli_snapshot_waits_for_a_guarded_write_or_skips(db: Path) -> None:
    def snap(*extra: str, timeout: str = "60") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CHROMASNAP_LOCK_TIMEOUT": timeout}
        return subprocess.run(
            [sys.executable, "-m", "chromasnap.cli", "snapshot", "--db", str(db), *extra],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    guard = subprocess.Popen(
        [sys.executable, "-c", GUARDED, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert guard.stdout is not None and guard.stdout.readline().strip() == "IN"
        listed = len(SnapshotManager(db).list())
        r = snap("--no-wait")
        assert r.returncode == 1 and r.stderr.count("\n") == 1
        assert f"skipped: a guarded write (pid {guard.pid}: long ingest) holds the write lock" in r.stderr
        r = snap(timeout="1")
        assert r.returncode == 1 and "gave up after 1s" in r.stderr
        assert len(SnapshotManager(db).list()) == listed  # nothing taken inside the guarded write
        waiting = subprocess.Popen(
            [sys.executable, "-m", "chromasnap.cli", "snapshot", "--db", str(db), "--note", "scheduled"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert guard.stdin is not None
        guard.stdin.write("done\n")
        guard.stdin.close()
        assert guard.wait(timeout=120) == 0
        _out, err = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, err
    finally:
        guard.kill()
        guard.wait()
    snaps = SnapshotManager(db).list()
    assert [s.note for s in snaps][-2:] == ["long ingest", "scheduled"]  # after the write, not in it


def test_wal_state_reads_the_queue_once_for_any_number_of_collections(tmp_path: Path) -> None:
    """The write-ahead state counted each collection's pending queue rows with its own query,
    and no index serves `topic LIKE`, so every collection scanned the whole queue: 74% of a
    snapshot of 1,000 small collections (issue 20). One pass serves all now, with the counts
    the per-collection query gives."""
    from chromasnap.snapshots.sqlite_state import read_wal_state

    db = tmp_path / "chroma"
    run_sample("build", str(db), "--records", "10", "--collections", "30")
    copy = tmp_path / "copy.sqlite3"
    shutil.copyfile(db / "chroma.sqlite3", copy)
    con = sqlite3.connect(copy)
    # two metadata segments behind the queue, as a crash between the queue and them leaves it
    meta = [
        r[0]
        for r in con.execute(
            "SELECT m.segment_id FROM max_seq_id m JOIN segments s ON s.id = m.segment_id "
            "WHERE s.scope = 'METADATA' ORDER BY m.segment_id LIMIT 2"
        )
    ]
    con.execute("UPDATE max_seq_id SET seq_id = seq_id - 4 WHERE segment_id = ?", (meta[0],))
    con.execute("UPDATE max_seq_id SET seq_id = -1 WHERE segment_id = ?", (meta[1],))
    con.commit()
    expected = {
        str(cid): n
        for cid, n in con.execute(
            "SELECT c.id, (SELECT count(*) FROM embeddings_queue q WHERE q.topic LIKE '%/' || c.id "
            "AND q.seq_id > coalesce(m.seq_id, -1)) FROM collections c "
            "JOIN segments s ON s.collection = c.id AND s.scope = 'METADATA' "
            "LEFT JOIN max_seq_id m ON m.segment_id = s.id"
        )
    }
    con.close()
    assert len(expected) == 30 and sorted(expected.values())[-2:] != [0, 0]
    ro = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    statements: list[str] = []
    ro.set_trace_callback(statements.append)
    state = read_wal_state(ro, "delete")
    ro.close()
    assert {c.id: c.metadata_pending for c in state.collections} == expected
    queue = [q for q in statements if "embeddings_queue " in q or q.endswith("embeddings_queue")]
    scans = [q for q in queue if "NOT EXISTS" not in q]  # the lag check looks rows up by seq_id
    assert len(scans) <= 2 and not any("LIKE" in q for q in statements), scans


def test_a_manager_reads_each_snapshot_document_once(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding the parent read every document of the store on every snapshot, so before_write
    in a long-lived process slowed down with the store's history (issue 20). A manager now
    reads the documents it has not seen, and the parent is still the newest of the database."""
    from collections import Counter

    from chromasnap.snapshots.repository import Repository

    mgr = SnapshotManager(db)
    mgr.snapshot()
    other = SnapshotManager(db)  # another process's snapshots in between
    theirs = [other.snapshot() for _ in range(3)]
    reads: Counter[str] = Counter()
    load = Repository.load_snapshot

    def counting(self: Repository, snap_id: str) -> Snapshot:
        reads[snap_id] += 1
        return load(self, snap_id)

    monkeypatch.setattr(Repository, "load_snapshot", counting)  # counts, then reads for real
    mine = mgr.snapshot()
    assert mine.parent == theirs[-1].id
    assert set(reads) <= {t.id for t in theirs} and reads[theirs[-1].id] <= 2
    reads.clear()
    chain = [mine] + [mgr.snapshot() for _ in range(3)]
    assert [s.parent for s in chain[1:]] == [s.id for s in chain[:-1]]
    assert not reads
