"""verify and health: real broken databases, real probe children, real signals."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_capture import _make_hot_journal

from chromasnap.snapshots import SnapshotManager
from chromasnap.snapshots.hnsw import parse_header
from conftest import flip_ignored_bit, run_sample, tree_bytes

ENV = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
        check=False,
    )


def persisted_segment(db: Path) -> Path:
    return next(p.parent for p in db.glob("*/index_metadata.pickle"))


def fake_python(tmp_path: Path, body: str) -> str:
    """An 'interpreter' that is a shell script: for outcomes chromadb will not produce."""
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_verify_quick_and_full_are_recorded(db: Path) -> None:
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    quick = mgr.verify(snap.id, quick=True)
    assert quick.ok and quick.verdict == "ok" and quick.checked_bytes == snap.totals.data_bytes
    full = mgr.verify(snap.id)
    assert full.ok and full.verdict == "ok", full.detail
    assert full.probe is not None and full.probe.chromadb_version
    found = {c["name"]: c["count"] for c in full.probe.collections}
    assert found == {"coll0": 2500, "coll1": 300}
    history = mgr.get(snap.id).verifications
    assert [(v.mode, v.verdict) for v in history] == [("quick", "ok"), ("full", "ok")]
    assert history[1].chromadb_version == full.probe.chromadb_version
    assert not list((mgr.store_path / "tmp").iterdir())  # the private copy is gone
    r = cli("list", "--db", str(db), "--json")
    assert json.loads(r.stdout)[0]["last_verification"]["verdict"] == "ok"
    r = cli("verify", "--all", "--quick", "--db", str(db), "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout) == [{"id": snap.id, "ok": True, "verdict": "ok", "detail": quick.detail}]


def test_flipped_byte_in_a_stored_object_names_every_snapshot(db: Path) -> None:
    mgr = SnapshotManager(db)
    first = mgr.snapshot()
    run_sample("grow", str(db), "--fraction", "0.1")
    second = mgr.snapshot()
    # damage a blob both snapshots hold: the first vector chunk of the persisted index
    level0 = next(f for f in first.files if f.layout == "hnsw-split" and f.size > 1 << 20)
    doc = mgr.repo.read_chunk_list(level0.chunk_list).list
    key = doc.vectors[0][0]  # type: ignore[union-attr]
    loc = mgr.repo.index()[key]
    pack = mgr.store_path / "packs" / loc.pack[:2] / loc.pack
    data = bytearray(pack.read_bytes())
    # invert 16 bytes mid-blob: a single flipped bit can land where zstd's decoder ignores
    # it (the next test), a run of inverted bytes cannot
    mid = loc.offset + loc.length // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    pack.write_bytes(bytes(data))
    fresh = SnapshotManager(db)
    for quick in (True, False):
        reports = fresh.verify_many(None, quick=quick)
        assert [r.verdict for r in reports] == ["damaged", "damaged"]
        for r in reports:
            assert key[:16] in r.detail and loc.pack[:16] in r.detail
            assert first.id[:12] in r.detail and second.id[:12] in r.detail
            assert "restore as recorded" not in r.detail
    r = cli("verify", "--all", "--quick", "--db", str(db))
    assert r.returncode == 1 and "FAIL" in r.stdout


def test_flipped_bit_the_decoder_ignores_still_fails_the_pack_hash(db: Path) -> None:
    """Some bits of a zstd frame do not change what it decodes to (measured: 25 of the
    242,000 bytes of a vector chunk); the blob check cannot see them, the pack hash does."""
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    key, pack_id = flip_ignored_bit(mgr, snap)
    assert mgr.repo.read_blob(key)  # the content is still what was recorded
    for quick in (True, False):
        [report] = SnapshotManager(db).verify_many(None, quick=quick)
        assert report.verdict == "damaged" and not report.ok
        assert f"pack {pack_id[:16]} does not hash to its name" in report.detail
        assert snap.id[:12] in report.detail and "restore as recorded" in report.detail
        # full mode still probes the intact content, so `recover` may use the snapshot
        assert report.restorable is (not quick)
        assert (report.probe is not None and report.probe.ok) is (not quick)
    r = cli("verify", "latest", "--quick", "--db", str(db))
    assert r.returncode == 1 and "does not hash to its name" in r.stdout


def _truncate_level0(db: Path) -> None:
    p = persisted_segment(db) / "data_level0.bin"
    os.truncate(p, p.stat().st_size // 3)


def _delete_segment_folder(db: Path) -> None:
    import shutil

    shutil.rmtree(persisted_segment(db))  # its `segments` row now points at nothing


def _garbage_in_sqlite(db: Path) -> None:
    with (db / "chroma.sqlite3").open("r+b") as fh:
        fh.seek(4096 * 40)
        fh.write(np.random.default_rng(3).bytes(4096 * 40))


def _purge_queue_past_vector_segment(db: Path) -> None:
    """coll1's HNSW never persisted: its vectors exist only in the queue. Purge them."""
    con = sqlite3.connect(db / "chroma.sqlite3")
    (cid,) = con.execute("SELECT id FROM collections WHERE name = 'coll1'").fetchone()
    n = con.execute("DELETE FROM embeddings_queue WHERE topic LIKE ?", (f"%{cid}",)).rowcount
    assert n == 300
    con.commit()
    con.close()


def _truncate_length_bin(db: Path) -> None:
    os.truncate(persisted_segment(db) / "length.bin", 100)


def _corrupt_links(db: Path) -> None:
    """Every level-0 neighbour id points far outside the index: hnswlib reads wild memory."""
    seg = persisted_segment(db)
    h = parse_header((seg / "header.bin").read_bytes())
    assert h is not None
    p = seg / "data_level0.bin"
    a = np.fromfile(p, dtype=np.uint8).reshape(-1, h.size_data_per_element)
    links = np.frombuffer(a[:, : h.offset_data].tobytes(), dtype=np.uint32).reshape(len(a), -1).copy()
    links[:, 0] = h.max_m0
    links[:, 1:] = 0x7FFFFFF0
    a[:, : h.offset_data] = np.frombuffer(links.tobytes(), dtype=np.uint8).reshape(len(a), -1)
    a.tofile(p)


BROKEN = [
    ("hnsw truncated", _truncate_level0, {"exception", "crashed", "mismatch"}),
    ("segment folder missing", _delete_segment_folder, {"exception", "crashed", "mismatch"}),
    ("garbage in sqlite", _garbage_in_sqlite, {"exception", "crashed", "mismatch"}),
    (
        "queue purged past vector segment",
        _purge_queue_past_vector_segment,
        {"mismatch", "exception"},
    ),
    ("length.bin truncated: silent wrong answers", _truncate_length_bin, {"mismatch"}),
    ("neighbour ids out of range: a real SIGSEGV", _corrupt_links, {"crashed"}),
]


SLOW_BREAKS = {
    "segment folder missing",
    "garbage in sqlite",
    "hnsw truncated",
    "queue purged past vector segment",
}


@pytest.mark.parametrize(
    ("name", "breaker", "verdicts"),
    [pytest.param(*b, marks=[pytest.mark.slow] if b[0] in SLOW_BREAKS else []) for b in BROKEN],
    ids=[b[0] for b in BROKEN],
)
def test_health_finds_each_real_breakage(name: str, breaker, verdicts: set[str], db: Path) -> None:  # type: ignore[no-untyped-def]
    mgr = SnapshotManager(db)
    assert mgr.health().healthy
    breaker(db)
    before = tree_bytes(db)
    report = mgr.health()
    assert not report.healthy and report.verdict in verdicts, (report.verdict, report.detail)
    assert tree_bytes(db) == before  # probing a private copy leaves the live directory alone
    if name.startswith("neighbour"):
        assert report.probe.signal == "SIGSEGV"
    r = cli("health", "--db", str(db), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["healthy"] is False


def test_verify_of_a_snapshot_of_a_broken_database_fails(db: Path) -> None:
    _purge_queue_past_vector_segment(db)
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    coll1 = next(c for c in snap.wal.collections if c.name == "coll1")
    assert coll1.vector_lags and coll1.lag_covered is False  # the manifest says so at capture
    assert mgr.verify(snap.id, quick=True).ok  # the bytes are stored faithfully...
    full = mgr.verify(snap.id)
    assert not full.ok and full.verdict in ("mismatch", "exception")  # ...but it is no backup


def test_crashed_by_sigabrt_is_classified(db: Path, tmp_path: Path) -> None:
    """No damage found here makes chromadb 1.5.9 abort (it raises or segfaults), so this
    proves the SIGABRT branch with a child that really dies by SIGABRT."""
    report = SnapshotManager(db).health(python=fake_python(tmp_path, "kill -ABRT $$"))
    assert report.verdict == "crashed" and report.probe.signal == "SIGABRT"
    assert "panic" in report.detail


@pytest.mark.slow
def test_hanging_probe_times_out_and_cleans_up(db: Path, tmp_path: Path) -> None:
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    hang = fake_python(tmp_path, "sleep 60")
    report = mgr.verify(snap.id, python=hang, timeout=2)
    assert report.verdict == "timeout" and not report.ok and report.duration_s < 30
    assert not list((mgr.store_path / "tmp").iterdir())
    r = cli("health", "--db", str(db), "--python", hang, "--timeout", "1", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["verdict"] == "timeout"


def test_interrupted_verify_removes_its_private_copy(db: Path, tmp_path: Path) -> None:
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    ctrl_c = fake_python(tmp_path, f"kill -INT {os.getpid()}; sleep 30")
    with pytest.raises(KeyboardInterrupt):
        mgr.verify(snap.id, python=ctrl_c, timeout=60)
    assert not list((mgr.store_path / "tmp").iterdir())


def test_health_with_a_hot_journal_probes_a_copy_and_leaves_the_journal(db: Path) -> None:
    _make_hot_journal(db / "chroma.sqlite3")
    before = tree_bytes(db)
    report = SnapshotManager(db).health()
    assert report.healthy, report.detail  # chromadb rolled the journal back in the copy
    assert tree_bytes(db) == before and (db / "chroma.sqlite3-journal").exists()


def test_health_in_place(db: Path) -> None:
    report = SnapshotManager(db).health(in_place=True)
    assert report.healthy and report.in_place


def test_header_with_wild_entry_point_crashes_probe_not_us(db: Path) -> None:
    p = persisted_segment(db) / "header.bin"
    raw = bytearray(p.read_bytes())
    struct.pack_into("<I", raw, 56, 0x7FFFFFF0)  # enterpoint_node
    p.write_bytes(bytes(raw))
    report = SnapshotManager(db).health()
    assert report.verdict == "crashed", report.detail


@pytest.mark.slow
def test_probe_with_another_chromadb(old_python: str, db: Path, tmp_path: Path) -> None:
    old_db = tmp_path / "old"
    run_sample("build", str(old_db), "--records", "1500", "200", python=old_python)
    # a 1.0.20 database probed by this (1.5.x) chromadb: opens
    old_mgr = SnapshotManager(old_db)
    snap = old_mgr.snapshot()
    up = old_mgr.verify(snap.id)
    assert up.ok, up.detail
    # the same snapshot probed by 1.0.20 itself, recorded with that version
    same = old_mgr.verify(snap.id, python=old_python)
    assert same.ok and same.probe is not None and same.probe.chromadb_version == "1.0.20"
    assert old_mgr.get(snap.id).verifications[-1].chromadb_version == "1.0.20"
    # a 1.5.x database probed by 1.0.20: must not pass
    new_mgr = SnapshotManager(db)
    new = new_mgr.snapshot()
    down = new_mgr.verify(new.id, python=old_python)
    assert not down.ok and down.verdict in ("exception", "crashed", "mismatch"), down.detail
    r = cli("verify", new.id[:8], "--python", old_python, "--db", str(db), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)[0]["ok"] is False


def test_a_crash_that_prints_undecodable_bytes_is_a_verdict(tmp_path: Path) -> None:
    """Injected at one seam, the probe's interpreter: a child that writes bytes that are not
    UTF-8 (as a native crash on damaged files may) and dies by SIGSEGV. Seen for real once
    in `chromasnap demo` ("unexpected error: UnicodeDecodeError")."""
    from chromasnap.snapshots.checker import run_probe

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nprintf 'panic at \\377\\376\\n' >&2\nkill -SEGV $$\n")
    fake.chmod(0o755)
    report = run_probe(tmp_path, None, python=str(fake), timeout=60)
    assert (report.verdict, report.signal) == ("crashed", "SIGSEGV")
    assert "panic at \ufffd\ufffd" in report.stderr


def test_the_probe_timeout_grows_with_the_collections() -> None:
    """A flat 120 s did not open 1,000 collections on a busy 2-core machine (issue 20's
    `wide` workload: every full verify timed out): the default grows per collection, and a
    timeout given is kept as given."""
    from chromasnap.manifest import CollectionState, WalState
    from chromasnap.snapshots import checker

    def wal(n: int) -> WalState:
        return WalState(
            journal_mode="delete", collections=[CollectionState(id=f"c{i}", name=f"c{i}") for i in range(n)]
        )

    assert checker.probe_timeout(None) == checker.DEFAULT_TIMEOUT
    assert checker.probe_timeout(wal(2)) == checker.DEFAULT_TIMEOUT + 2 * checker.PER_COLLECTION_S
    assert checker.probe_timeout(wal(1000)) >= checker.DEFAULT_TIMEOUT + 1000 * checker.PER_COLLECTION_S
    assert checker.probe_timeout(wal(1000), 30.0) == 30.0
