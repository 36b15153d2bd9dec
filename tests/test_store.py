"""The store on disk: permissions, pack files, the lock, and crash safety of a snapshot."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from blake3 import blake3

from chromasnap.manifest import RetentionPolicy
from chromasnap.snapshots import CaptureError, LocalBackend, LockTimeout, SnapshotManager, StoreError
from chromasnap.snapshots.pack import parse_trailer
from conftest import tree_bytes


def store_state(store: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree_bytes(store).items() if not k.startswith(("lock", "tmp/"))}


def test_store_files_are_private(db: Path) -> None:
    mgr = SnapshotManager(db)
    mgr.snapshot()
    for p in [mgr.store_path, *mgr.store_path.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), p


def test_packs_describe_themselves_and_match_the_index(db: Path) -> None:
    mgr = SnapshotManager(db)
    mgr.snapshot()
    index = mgr.repo.index()
    packs = sorted(mgr.store_path.glob("packs/*/*"))
    assert packs
    assert len(packs) < 50  # a database is a handful of packs, not one file per chunk
    seen = 0
    for pack in packs:
        data = pack.read_bytes()
        assert blake3(data).hexdigest() == pack.name  # named by content
        for key, btype, off, length, raw in parse_trailer(data, pack.name):
            loc = index[key]
            assert (loc.pack, loc.type, loc.offset, loc.length, loc.raw_length) == (
                pack.name,
                btype,
                off,
                length,
                raw,
            )
            seen += 1
    assert seen == len(index)


def test_damaged_blob_is_detected_on_extract(db: Path, tmp_path: Path) -> None:
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    pack = max(mgr.store_path.glob("packs/*/*"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    at = len(data) // 3  # 16 changed bytes: one flip may be a bit zstd ignores
    data[at : at + 16] = bytes(b ^ 0x55 for b in data[at : at + 16])
    pack.write_bytes(bytes(data))
    with pytest.raises(StoreError):
        SnapshotManager(db).extract(snap.id, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-extracted is left where asked


HOLD = """
import sys, time
from pathlib import Path
from chromasnap.snapshots import LocalBackend
from chromasnap.snapshots.locks import store_lock
with store_lock(LocalBackend(Path(sys.argv[1]))):
    print("locked", flush=True)
    time.sleep(30)
"""


def test_lock_timeout_names_the_holder(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = SnapshotManager(db)
    mgr.snapshot()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(mgr.store_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("CHROMASNAP_LOCK_TIMEOUT", "0.5")
        with pytest.raises(LockTimeout, match=rf"pid {holder.pid} \(.*-c"):
            mgr.snapshot()
    finally:
        holder.kill()
        holder.wait()
    assert len(mgr.list()) == 1
    mgr.snapshot()  # the lock died with its holder


def test_full_disk_leaves_no_partial_snapshot(db: Path, tmp_path: Path) -> None:
    """A real ENOSPC from a 3 MiB tmpfs when the machine lets us mount one; otherwise the
    fault is injected at the one seam every pack goes through (LocalBackend.save_file)."""
    store = tmp_path / "small-store"
    store.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(store)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        mgr = SnapshotManager(db, store)
        if not mounted:
            calls = {"n": 0}
            real = LocalBackend.save_file

            def save_file(self: LocalBackend, name: str, local: Path, *, create_only: bool = False) -> str:
                calls["n"] += 1
                if calls["n"] == 2:
                    raise OSError(errno.ENOSPC, "No space left on device (injected)")
                return real(self, name, local, create_only=create_only)

            LocalBackend.save_file = save_file  # type: ignore[method-assign]
        try:
            with pytest.raises((OSError, CaptureError)) as err:
                mgr.snapshot()
            assert getattr(err.value, "errno", None) == errno.ENOSPC or "No space left" in str(err.value)
        finally:
            if not mounted:
                LocalBackend.save_file = real  # type: ignore[method-assign]
        assert SnapshotManager(db, store).list() == []
        assert not list((store / "snapshots").iterdir())
        assert not list((store / "tmp").iterdir())  # the pack being written was removed
    finally:
        if mounted:
            subprocess.run(["umount", str(store)], check=False)


SNAP_CHILD = """
import sys
from chromasnap.snapshots import SnapshotManager
SnapshotManager(sys.argv[1]).snapshot(note=sys.argv[2])
"""


def test_killed_snapshots_leave_only_complete_ones(db: Path, tmp_path: Path) -> None:
    mgr = SnapshotManager(db)
    first = mgr.snapshot()
    (db / "extra.bin").write_bytes(os.urandom(8 << 20))  # something new to write each time
    expected = tree_bytes(db)
    for i, delay in enumerate((0.15, 0.3, 0.45, 0.6, 0.8)):
        child = subprocess.Popen([sys.executable, "-c", SNAP_CHILD, str(db), f"kill {i}"])
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
    snaps = mgr.list()
    assert first.id in {s.id for s in snaps}
    assert not mgr.problems
    for s in snaps:
        out = tmp_path / f"out-{s.short_id}"
        mgr.extract(s.id, out)
        if s.id != first.id:
            assert tree_bytes(out) == expected
    final = mgr.snapshot()  # the store is usable afterwards
    mgr.extract(final.id, tmp_path / "final")
    assert tree_bytes(tmp_path / "final") == expected


def test_index_file_lists_every_new_pack(db: Path) -> None:
    mgr = SnapshotManager(db)
    mgr.snapshot()
    docs = [json.loads(p.read_bytes()) for p in mgr.store_path.glob("index/*.json")]
    assert len(docs) == 1
    named = {p["id"] for p in docs[0]["packs"]}
    assert named == {p.name for p in mgr.store_path.glob("packs/*/*")}


def test_pack_reads_from_many_threads_over_more_files_than_the_fd_cache(tmp_path: Path) -> None:
    """Readers share cached fds; evicting one under a running pread must neither fail that
    read nor let a reopened file take its number (which would read the wrong pack)."""
    import random
    import threading

    backend = LocalBackend(tmp_path / "store")
    backend.create()
    names = [f"packs/{i:02x}/{i:02x}{'0' * 62}" for i in range(LocalBackend.MAX_FDS * 2)]
    for i, name in enumerate(names):
        backend.save(name, bytes([i]) * 8192)
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                i = rng.randrange(len(names))
                if backend.load(names[i], rng.randrange(4096), 4096) != bytes([i]) * 4096:
                    raise AssertionError(f"read of {names[i]} returned another file's bytes")
                if rng.random() < 0.01:
                    backend.close()  # what a reader does after another process's gc
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    backend.close()
    assert not backend._fds and not backend._retired and not backend._in_flight


def test_store_of_more_packs_than_the_fd_cache_verifies_and_extracts(db: Path, tmp_path: Path) -> None:
    """With 16 MiB packs, a database over ~1 GiB has more packs than the 64 cached fds:
    the same here with 64 KiB packs (before the fix: EBADF from a reader thread)."""
    from chromasnap.snapshots.repository import Repository

    store = tmp_path / "store"
    Repository.open_or_create(LocalBackend(store), pack_size=1 << 16)
    snap = SnapshotManager(db, store).snapshot()
    assert len(list(store.glob("packs/*/*"))) > LocalBackend.MAX_FDS
    mgr = SnapshotManager(db, store)
    assert mgr.verify(snap.id, quick=True).ok
    assert tree_bytes(mgr.extract(snap.id, tmp_path / "out")) == tree_bytes(db)


def test_a_manager_reads_each_index_file_once(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every snapshot reopened the store and reloaded and rechecked every index file: an
    unchanged snapshot's time grew with everything ever stored (issue 20's profile: 85% of
    it). A manager now tops its index up with the files written since; after another
    process's gc removed index files, it reads them all again."""
    from chromasnap.snapshots import repository

    loaded: list[str] = []
    real = repository.Repository._load_index_file

    def counting(self: repository.Repository, idx: dict[str, object], name: str, raw: bytes) -> object:
        loaded.append(name)
        return real(self, idx, name, raw)  # type: ignore[arg-type]

    monkeypatch.setattr(repository.Repository, "_load_index_file", counting)
    store = db.parent / "store"
    mine, other = SnapshotManager(db, store), SnapshotManager(db, store)
    first = mine.snapshot()
    (db / "extra.txt").write_text("new bytes, a new pack and index file")
    time.sleep(2.1)  # past the racy window: the unchanged files are taken from the parent
    other.snapshot()
    loaded.clear()
    second = mine.snapshot()  # reads the index file `other` wrote, and only that one
    assert len(loaded) == 1 and second.totals.new_blobs == 0
    loaded.clear()
    mine.snapshot()  # nothing new anywhere: no index file read
    assert loaded == []
    other.prune(RetentionPolicy(keep_last=1))  # gc consolidates the index files: all read again
    assert first.id not in {s.id for s in mine.list()}
    loaded.clear()
    mine.snapshot()
    files = LocalBackend(store).list("index")
    assert sorted(loaded) == sorted(o.name for o in files)
