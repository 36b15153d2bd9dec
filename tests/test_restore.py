"""restore, recover and before_write: real swaps, real kills, real mounts, real chromadb."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from blake3 import blake3
from test_verify import _corrupt_links, cli

from chromasnap.manifest import Snapshot
from chromasnap.manifest.limits import MAX_RESTORED_NOTE
from chromasnap.snapshots import SnapshotManager, StoreError
from chromasnap.snapshots.restore import RestoreRefused
from chromasnap.snapshots.restored import note_name
from chromasnap.snapshots.swap import is_mount_point
from conftest import counts, flip_ignored_bit, run_sample, tree_bytes

CHILD = """
import os, signal, sys
from chromasnap.snapshots import SnapshotManager
mgr = SnapshotManager(sys.argv[1])
what = sys.argv[2]
if what == "restore":
    mgr.restore(sys.argv[3], verify=False)
elif what == "guarded-kill":
    with mgr.before_write(reason="ingest"):
        import subprocess
        subprocess.run([sys.executable, sys.argv[3], "grow", sys.argv[1], "--fraction", "0.4"], check=True)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def child(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )


def test_restore_brings_back_the_exact_bytes_and_keeps_the_replaced(db: Path) -> None:
    mgr = SnapshotManager(db)
    old = mgr.snapshot()
    old_state = tree_bytes(db)
    run_sample("grow", str(db), "--fraction", "0.4")
    new_state = tree_bytes(db)
    res = mgr.restore(old.id)
    assert res.verified and res.mode == "exchange" and res.pre_restore
    assert tree_bytes(db) == old_state
    assert res.kept_path and tree_bytes(Path(res.kept_path)) == new_state
    assert mgr.kept() == [Path(res.kept_path)]
    assert mgr.get(res.pre_restore).reason == "pre-restore"
    assert counts(db) == {"coll0": 2500, "coll1": 300}
    assert not list(db.parent.glob(".chroma.*"))  # no staging or probe copy left behind
    r = cli("kept", "--db", str(db), "--json")
    assert [k["path"] for k in json.loads(r.stdout)["kept"]] == [res.kept_path]
    r = cli("kept", "--purge", "--yes", "--db", str(db))
    assert r.returncode == 0 and not Path(res.kept_path).exists()


def test_restore_onto_a_fresh_machine(db: Path, tmp_path: Path) -> None:
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    state = tree_bytes(db)
    fresh = tmp_path / "new-host" / "chroma"
    fresh.parent.mkdir()
    res = SnapshotManager(fresh, mgr.store_path).restore(snap.id)
    assert res.mode == "fresh" and res.kept_path is None and res.pre_restore is None
    assert tree_bytes(fresh) == state


def test_two_rename_fallback(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RENAME_EXCHANGE exists here, so the fallback is forced through its test seam."""
    mgr = SnapshotManager(db)
    old = mgr.snapshot()
    state = tree_bytes(db)
    run_sample("grow", str(db), "--fraction", "0.2")
    monkeypatch.setenv("CHROMASNAP_NO_EXCHANGE", "1")
    res = mgr.restore(old.id, verify=False)
    assert res.mode == "two-renames" and tree_bytes(db) == state


def test_restore_refuses_while_a_process_has_the_database_open(db: Path) -> None:
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; f = open(sys.argv[1], 'rb'); print('open', flush=True); time.sleep(60)",
            str(db / "chroma.sqlite3"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        before = tree_bytes(db)
        with pytest.raises(RestoreRefused, match=rf"pid {holder.pid} \(.*time.sleep"):
            mgr.restore(snap.id)
        assert tree_bytes(db) == before
        r = cli("restore", snap.id[:8], "--yes", "--db", str(db))
        assert r.returncode == 1 and f"pid {holder.pid}" in r.stderr and "--force" in r.stderr
        assert mgr.restore(snap.id, verify=False, force=True).mode == "exchange"
    finally:
        holder.kill()
        holder.wait()


def test_restore_refuses_a_damaged_snapshot(db: Path) -> None:
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    pack = max(mgr.store_path.glob("packs/*/*"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    mid = len(data) // 2  # 16 inverted bytes: one flip may be a bit zstd ignores
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    pack.write_bytes(bytes(data))
    before = tree_bytes(db)
    with pytest.raises(StoreError):
        SnapshotManager(db).restore(snap.id)
    assert tree_bytes(db) == before and not list(db.parent.glob(".chroma.*"))


def test_restore_refuses_a_snapshot_that_does_not_open(db: Path) -> None:
    _corrupt_links(db)
    mgr = SnapshotManager(db)
    bad = mgr.snapshot()
    with pytest.raises(RestoreRefused, match="crashed"):
        mgr.restore(bad.id)
    r = cli("restore", bad.id[:8], "--db", str(db))  # not a terminal and no --yes
    assert r.returncode == 2 and "--yes" in r.stderr


def test_restore_into_a_real_bind_mount_keeps_the_mount_point(db: Path, tmp_path: Path) -> None:
    """A real bind mount (root only; skipped where mounting is refused)."""
    mgr = SnapshotManager(db, tmp_path / "store")
    old = mgr.snapshot()
    old_state = tree_bytes(db)
    volume = tmp_path / "volume"
    volume.mkdir()
    target = tmp_path / "mounted"
    target.mkdir()
    if subprocess.run(["mount", "--bind", str(volume), str(target)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        run_sample("build", str(target), "--records", "100")
        inode = target.stat().st_ino
        assert is_mount_point(target)  # os.path.ismount misses a same-filesystem bind mount
        mounted = SnapshotManager(target, tmp_path / "store")
        res = mounted.restore(old.id)
        assert res.mode == "entries"
        assert target.stat().st_ino == inode and is_mount_point(target)  # still the mount
        visible = {k: v for k, v in tree_bytes(target).items() if not k.startswith(".chromasnap-")}
        assert visible == old_state
        assert res.kept_path and Path(res.kept_path).parent == target
        assert "chroma.sqlite3" in os.listdir(res.kept_path)
        assert counts(target) == {"coll0": 2500, "coll1": 300}
        # a snapshot of the mount ignores chromasnap's own kept folder
        snap = mounted.snapshot()
        assert all(not f.path.startswith(".chromasnap-") for f in snap.files)
    finally:
        subprocess.run(["umount", str(target)], check=False)


@pytest.mark.parametrize(
    ("point", "env"),
    [
        pytest.param("journal", {}, marks=pytest.mark.slow),
        ("exchanged", {}),
        pytest.param("swapped", {}, marks=pytest.mark.slow),
        pytest.param("journal", {"CHROMASNAP_NO_EXCHANGE": "1"}, marks=pytest.mark.slow),
        ("first-rename", {"CHROMASNAP_NO_EXCHANGE": "1"}),
        pytest.param("swapped", {"CHROMASNAP_NO_EXCHANGE": "1"}, marks=pytest.mark.slow),
    ],
)
def test_restore_killed_at_each_swap_step(db: Path, point: str, env: dict[str, str]) -> None:
    """SIGKILL at each step of the swap, injected at the swap's crash seam
    (CHROMASNAP_CRASH_AT); then one chromasnap command repairs it."""
    mgr = SnapshotManager(db)
    old = mgr.snapshot()
    old_state = tree_bytes(db)
    run_sample("grow", str(db), "--fraction", "0.2")
    new_state = tree_bytes(db)
    r = child(str(db), "restore", old.id, env={"CHROMASNAP_CRASH_AT": point, **env})
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = cli("list", "--db", str(db), "--json")  # any command finishes the swap first
    assert r.returncode == 0
    state = tree_bytes(db)
    assert state in (old_state, new_state)
    assert not list(db.parent.glob(".chroma.chromasnap-swap.json"))
    if state == old_state:  # the restore went through: the replaced database is kept
        assert [tree_bytes(p) for p in SnapshotManager(db).kept()] == [new_state]
    assert counts(db)


@pytest.mark.slow
def test_restore_killed_at_random_instants(db: Path) -> None:
    mgr = SnapshotManager(db)
    old = mgr.snapshot()
    old_state = tree_bytes(db)
    run_sample("grow", str(db), "--fraction", "0.2")
    for delay in (0.2, 0.5, 0.8, 1.1, 1.4):
        current = tree_bytes(db)
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db), "restore", old.id])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        SnapshotManager(db)  # the next command repairs
        assert tree_bytes(db) in (current, old_state)


def test_before_write_as_context_manager_and_decorator(db: Path) -> None:
    mgr = SnapshotManager(db)
    intents = mgr.store_path / "intents"
    with mgr.before_write(reason="index docs") as snap:
        assert snap.reason == "pre-write" and snap.note == "index docs"
        assert len(list(intents.iterdir())) == 1
        run_sample("grow", str(db), "--fraction", "0.1")
    assert not list(intents.iterdir())

    @mgr.before_write(reason="batch")
    def ingest(n: int) -> int:
        assert len(list(intents.iterdir())) == 1
        return n * 2

    assert ingest(21) == 42 and ingest(1) == 2
    assert not list(intents.iterdir())
    with pytest.raises(ValueError), mgr.before_write(reason="failing"):
        raise ValueError("embedding service down")
    assert not list(intents.iterdir())
    failed = mgr.list()[-1]
    assert [(e.kind, e.detail) for e in failed.events] == [
        ("write-failed", "ValueError: embedding service down")
    ]
    assert [s.reason for s in mgr.list()].count("pre-write") == 4


def test_killed_guarded_write_is_rolled_back_by_recover(db: Path) -> None:
    from conftest import SAMPLE

    mgr = SnapshotManager(db)
    before = tree_bytes(db)
    r = child(str(db), "guarded-kill", SAMPLE)
    assert r.returncode == -signal.SIGKILL
    assert len(list((mgr.store_path / "intents").iterdir())) == 1  # left for recover
    assert tree_bytes(db) != before
    r = cli("recover", "--keep-interrupted", "--db", str(db), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["action"] == "none"
    assert tree_bytes(db) != before  # kept the interrupted write's changes, as asked
    r = child(str(db), "guarded-kill", SAMPLE)
    pre_write = SnapshotManager(db).list()[-1]
    r = cli("recover", "--db", str(db), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["action"] == "restored" and out["snapshot"] == pre_write.id
    assert "interrupted guarded write" in out["reason"] and Path(out["kept_path"]).is_dir()
    assert not list((mgr.store_path / "intents").iterdir())


def test_recover_restores_the_newest_snapshot_that_verifies(db: Path) -> None:
    mgr = SnapshotManager(db)
    good = mgr.snapshot()
    good_state = tree_bytes(db)
    _corrupt_links(db)  # chromadb now segfaults on query
    bad = mgr.snapshot()  # a snapshot of the broken state: newest, but does not verify
    broken_state = tree_bytes(db)
    res = mgr.recover()
    assert res.action == "restored" and res.snapshot == good.id
    assert res.tried[0].startswith(bad.id[:12]) and "crashed" in res.tried[0]
    assert tree_bytes(db) == good_state
    assert res.kept_path and tree_bytes(Path(res.kept_path)) == broken_state
    assert mgr.recover().action == "none"


@pytest.mark.slow
def test_recover_uses_a_snapshot_whose_pack_failed_only_its_hash(db: Path) -> None:
    """Bit rot where zstd's decoder ignores it fails `verify`, but the content restores as
    recorded: recovery must not fall back to older data because of it."""
    mgr = SnapshotManager(db)
    older = mgr.snapshot()
    run_sample("grow", str(db), "--fraction", "0.1")
    newest = mgr.snapshot()
    newest_state = tree_bytes(db)
    flip_ignored_bit(mgr, newest)
    _corrupt_links(db)
    res = mgr.recover()
    assert res.action == "restored" and res.snapshot == newest.id != older.id
    assert res.tried == [f"{newest.id[:12]}:damaged"]
    assert tree_bytes(db) == newest_state


@pytest.mark.slow
def test_recover_with_nothing_to_restore(db: Path) -> None:
    _corrupt_links(db)
    r = cli("recover", "--db", str(db), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["action"] == "failed"
    r = cli("recover", "--reset", "--db", str(db), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["action"] == "reset"
    assert db.is_dir() and not list(db.iterdir())  # empty, ready for a re-index
    assert (Path(out["kept_path"]) / "chroma.sqlite3").is_file()


def test_open_client_recovers_then_opens(db: Path) -> None:
    mgr = SnapshotManager(db)
    mgr.snapshot()
    _corrupt_links(db)
    code = (
        "import sys\nfrom chromasnap.snapshots import SnapshotManager\n"
        "c = SnapshotManager(sys.argv[1]).open_client()\n"
        "print(sorted((x.name, c.get_collection(x.name).count()) for x in c.list_collections()))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[('coll0', 2500), ('coll1', 300)]"


FEW_FDS = """
import resource, sys
from chromasnap.snapshots import SnapshotManager
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[3]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
SnapshotManager(sys.argv[1]).restore(sys.argv[2], verify=False, backup=False)
"""


@pytest.mark.slow
def test_restore_of_more_files_than_the_open_file_limit(tmp_path: Path) -> None:
    """Restore kept every file it wrote open until one fsync pass at the end, so a database
    of 1,000 collections (5,000 files) failed with EMFILE where 1,024 descriptors is the limit
    (issue 20). The same here: 161 files under a real limit of 100 descriptors."""
    db = tmp_path / "chroma"
    run_sample("build", str(db), "--records", "10", "--collections", "40")
    files = sum(1 for p in db.rglob("*") if p.is_file())
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    state = tree_bytes(db)
    run_sample("grow", str(db), "--fraction", "0.5")
    assert files > 150 and tree_bytes(db) != state
    r = subprocess.run(
        [sys.executable, "-c", FEW_FDS, str(db), snap.id, "100"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert tree_bytes(db) == state


# --- the restored-state note: the first snapshot after a restore reads nothing ----------


def _content(snap: Snapshot) -> dict[str, tuple[str, str, int]]:
    return {f.path: (f.hash, f.chunk_list, f.size) for f in snap.files}


def _restored(db: Path) -> tuple[SnapshotManager, Snapshot, Path]:
    """A snapshot, the database grown past it, the snapshot restored: the manager, the
    restored snapshot and the note written for the database."""
    mgr = SnapshotManager(db)
    old = mgr.snapshot()
    run_sample("grow", str(db), "--fraction", "0.2")
    mgr.restore(old.id, verify=False)
    note = Path(mgr.store_path or "") / note_name(db)
    assert note.is_file()
    return mgr, old, note


def test_first_snapshot_after_a_restore_reads_no_file(db: Path) -> None:
    mgr, old, _note = _restored(db)
    snap = mgr.snapshot()
    assert snap.totals.read_bytes == 0 and snap.totals.reused_files == len(snap.files)
    assert mgr.last_capture is not None and mgr.last_capture.restored_files == len(old.files)
    assert _content(snap) == _content(old) and snap.records == old.records
    assert snap.wal.collections == old.wal.collections
    # its entries are the files as now in place: the snapshot after it trusts them too
    assert {f.path: f.inode for f in snap.files} == {f.path: os.lstat(db / f.path).st_ino for f in snap.files}
    again = mgr.snapshot()
    assert again.totals.read_bytes == 0 and _content(again) == _content(old)
    assert mgr.verify(snap.id, quick=True).ok


def test_a_file_changed_after_a_restore_is_read_again(db: Path) -> None:
    """Size and mtime kept (os.utime) after a content change: the ctime still tells."""
    mgr, old, _note = _restored(db)
    rel = next(f.path for f in old.files if f.path.endswith("/length.bin") and f.size >= 8)
    path = db / rel
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    snap = mgr.snapshot()
    changed = {f.path: f for f in snap.files}[rel]
    assert changed.captured_by == "read" and changed.hash == blake3(bytes(data)).hexdigest()
    assert snap.totals.read_bytes == len(data)
    assert {p: v for p, v in _content(snap).items() if p != rel} == {
        p: v for p, v in _content(old).items() if p != rel
    }


def test_a_corrupt_oversized_or_foreign_note_is_ignored(db: Path) -> None:
    mgr, old, note = _restored(db)
    good = json.loads(note.read_bytes())
    size = sum(f.size for f in old.files)
    bad = {
        "corrupt": b"{not json",
        "oversized": b" " * (MAX_RESTORED_NOTE + 1),
        "another database": json.dumps({**good, "db": str(db.parent / "other")}).encode(),
        "a snapshot not in the store": json.dumps({**good, "snapshot": "ab" * 32}).encode(),
        "an unknown field": json.dumps({**good, "trust": True}).encode(),
    }
    for why, body in bad.items():
        mgr.restore(old.id, verify=False, backup=False)  # new inodes: no parent matches either
        note.write_bytes(body)
        snap = mgr.snapshot()
        assert snap.totals.read_bytes >= size, why  # every file read again
        assert _content(snap) == _content(old), why
        assert mgr.last_capture is not None and mgr.last_capture.restored_files == 0, why
