"""The first run of an application: recover and before_write on a database that does not
exist yet or is an empty directory, with no store or a store without snapshots."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_verify import cli

from chromasnap.snapshots import SnapshotManager
from conftest import SAMPLE, counts, run_sample, tree_bytes

# A guarded write in a child process. "finish"/"kill": the first one, the database does
# not exist when the block starts, the child builds a small database inside it; "grow-kill":
# a later one, adding 50% to the database. With "kill" the child dies by SIGKILL while
# still inside the block, as a Rust panic's abort or an OOM kill would end it.
FIRST_WRITE = """
import os, signal, subprocess, sys
from chromasnap.snapshots import SnapshotManager
db, sample, what = sys.argv[1], sys.argv[2], sys.argv[3]
with SnapshotManager(db).before_write(reason="first index") as snap:
    if what == "grow-kill":
        assert snap is not None
        subprocess.run([sys.executable, sample, "grow", db, "--fraction", "0.5"], check=True)
    else:
        assert snap is None
        subprocess.run([sys.executable, sample, "build", db, "--records", "200"], check=True)
    if what.endswith("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
"""


def first_write(db: Path, what: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", FIRST_WRITE, str(db), SAMPLE, what],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )


def beside(db: Path) -> list[str]:
    return sorted(p.name for p in db.parent.iterdir())


def test_recover_on_a_missing_database_is_a_fresh_start_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "chroma"
    for reset in (False, True):
        res = SnapshotManager(db).recover(reset=reset)
        assert (res.action, res.kind, res.reason) == ("none", "fresh-start", "no database yet")
        assert res.kept_path is None and not res.tried
        assert beside(db) == []  # no database, no empty store folder
    r = cli("recover", "--db", str(db))
    assert r.returncode == 0 and r.stdout.startswith(f"fresh start at {db}: no database yet"), r.stderr
    assert "None" not in r.stdout + r.stderr
    r = cli("recover", "--reset", "--db", str(db), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and (out["action"], out["kind"]) == ("none", "fresh-start")
    assert beside(db) == []


def test_recover_on_an_empty_directory_with_an_empty_store_is_a_fresh_start(tmp_path: Path) -> None:
    db = tmp_path / "chroma"
    db.mkdir()
    res = SnapshotManager(db).recover()
    assert (res.action, res.kind) == ("none", "fresh-start") and beside(db) == ["chroma"]
    # a store that exists but holds no snapshot (as the first before_write leaves it)
    from chromasnap.snapshots.repository import Repository

    mgr = SnapshotManager(db)
    Repository.open_or_create(mgr.backend)
    res = mgr.recover(reset=True)
    assert (res.action, res.kind) == ("none", "fresh-start") and res.kept_path is None
    assert not list(db.iterdir()) and beside(db) == ["chroma", "chroma.snapshots"]


def test_open_client_on_a_missing_database_opens_a_new_one(tmp_path: Path) -> None:
    db = tmp_path / "chroma"
    code = (
        "import sys\nfrom chromadb.config import Settings\n"
        "from chromasnap.snapshots import SnapshotManager\n"
        "c = SnapshotManager(sys.argv[1]).open_client(settings=Settings(anonymized_telemetry=False))\n"
        "col = c.get_or_create_collection('docs', embedding_function=None)\n"
        "col.add(ids=['a'], embeddings=[[1.0, 2.0]])\n"
        "print(c.get_collection('docs').count())\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr[-2000:]
    assert beside(db) == ["chroma"]  # the client made the database; recover made nothing


def test_recover_on_a_missing_database_restores_the_newest_snapshot(db: Path) -> None:
    """A bare machine with only the store: the database comes back; no "kept at None"."""
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    state = tree_bytes(db)
    shutil.rmtree(db)
    r = cli("recover", "--db", str(db))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"restored {snap.id[:12]} because the database directory does not exist")
    assert "None" not in r.stdout and "kept at" not in r.stdout
    assert tree_bytes(db) == state and beside(db) == ["chroma", "chroma.snapshots"]
    res = mgr.recover()
    assert (res.action, res.kind) == ("none", "healthy")


def test_recover_with_no_store_creates_nothing_and_says_how_to_get_one(db: Path, tmp_path: Path) -> None:
    r = cli("recover", "--db", str(db), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and (out["action"], out["kind"]) == ("none", "healthy")
    assert beside(db) == ["chroma"]  # no chroma.snapshots
    broken = tmp_path / "other" / "chroma"
    broken.mkdir(parents=True)
    (broken / "notes.txt").write_text("not a Chroma database")
    r = cli("recover", "--db", str(broken))
    store = broken.parent / "chroma.snapshots"
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == (
        f"failed: the database has no chroma.sqlite3; no snapshots in {store}; "
        "take one with chromasnap snapshot"
    )
    assert beside(broken) == ["chroma"]
    # moving a database aside takes the write lock, which lives in the store: now made
    r = cli("recover", "--reset", "--db", str(broken), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and (out["action"], out["kind"]) == ("reset", "reset")
    assert (Path(out["kept_path"]) / "notes.txt").is_file() and not list(broken.iterdir())
    assert out["reason"].endswith(f"no snapshots in {store}; take one with chromasnap snapshot")


def test_before_write_on_a_missing_database_stores_no_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "app" / "chroma"  # the parent does not exist either
    mgr = SnapshotManager(db)
    intents = mgr.store_path / "intents"
    with mgr.before_write(reason="first index") as snap:
        assert snap is None and db.is_dir() and not list(db.iterdir())
        assert oct(db.parent.stat().st_mode & 0o777) != oct(0o700)  # made as chromadb would
        (name,) = list(intents.iterdir())
        doc = json.loads(name.read_text())
        st = os.stat(db)
        assert doc["snapshot"] is None and doc["version"] == 2 and doc["db"] == str(db)
        assert (doc["db_dev"], doc["db_ino"]) == (st.st_dev, st.st_ino)
        assert doc["pid"] == os.getpid() and doc["reason"] == "first index"
        run_sample("build", str(db), "--records", "200")
    assert not list(intents.iterdir()) and mgr.list() == []  # no empty snapshot either
    assert counts(db) == {"coll0": 200}
    with mgr.before_write(reason="second index") as snap:  # now there is a database
        assert snap is not None and snap.totals.files > 0
        doc = json.loads(next(intents.iterdir()).read_text())
        assert doc["snapshot"] == snap.id
    assert [s.reason for s in mgr.list()] == ["pre-write"]
    assert beside(db) == ["chroma", "chroma.snapshots"]


def test_before_write_on_an_empty_directory(tmp_path: Path) -> None:
    db = tmp_path / "chroma"
    db.mkdir()
    ino = db.stat().st_ino
    mgr = SnapshotManager(db)
    with pytest.raises(RuntimeError), mgr.before_write(reason="first index") as snap:
        assert snap is None
        raise RuntimeError("embedding service down")
    assert db.stat().st_ino == ino and not list(db.iterdir())
    assert not list((mgr.store_path / "intents").iterdir()) and mgr.list() == []


def test_killed_first_write_is_moved_aside_for_a_fresh_start(tmp_path: Path) -> None:
    db = tmp_path / "chroma"
    r = first_write(db, "kill")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    mgr = SnapshotManager(db)
    assert (db / "chroma.sqlite3").is_file()
    assert len(list((mgr.store_path / "intents").iterdir())) == 1  # left for recover
    half_written = tree_bytes(db)
    r = cli("recover", "--db", str(db), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and (out["action"], out["kind"]) == ("none", "fresh-start"), r.stderr
    assert "rolled back an interrupted guarded write" in out["reason"]
    kept = Path(out["kept_path"])
    assert kept.parent == db.parent and kept.name.startswith("chroma.replaced-")
    assert tree_bytes(kept) == half_written and mgr.kept() == [kept]
    assert db.is_dir() and not list(db.iterdir())
    assert not list((mgr.store_path / "intents").iterdir())
    res = mgr.recover()
    assert (res.kind, res.kept_path) == ("fresh-start", None)
    # the restarted application's first write succeeds
    r = first_write(db, "finish")
    assert r.returncode == 0, r.stderr[-2000:]
    assert counts(db) == {"coll0": 200} and mgr.list() == []


@pytest.mark.slow
def test_killed_first_write_kept_in_place_with_keep_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "chroma"
    assert first_write(db, "kill").returncode == -signal.SIGKILL
    r = cli("recover", "--keep-interrupted", "--db", str(db), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and (out["action"], out["kind"]) == ("none", "healthy"), r.stderr
    assert (db / "chroma.sqlite3").is_file() and SnapshotManager(db).kept() == []  # kept in place


def test_crash_between_the_new_directory_and_the_intent(tmp_path: Path) -> None:
    """Injected at a seam (CHROMASNAP_CRASH_AT=first-write-dir: SIGKILL right after the
    database directory is made durable, before the intent is written): an empty directory
    and no intent, which is a fresh start with nothing to move aside."""
    db = tmp_path / "chroma"
    r = first_write(db, "finish", env={"CHROMASNAP_CRASH_AT": "first-write-dir"})
    assert r.returncode == -signal.SIGKILL
    assert db.is_dir() and not list(db.iterdir())
    res = SnapshotManager(db).recover()
    assert (res.kind, res.kept_path) == ("fresh-start", None)
    assert beside(db) == ["chroma", "chroma.snapshots"]


def test_first_write_intent_older_than_a_snapshot_is_not_acted_upon(tmp_path: Path) -> None:
    """A "no database" intent that a later snapshot of the database supersedes (the
    application never ran recover) must not move the grown database aside."""
    db = tmp_path / "chroma"
    assert first_write(db, "kill").returncode == -signal.SIGKILL
    mgr = SnapshotManager(db)
    later = mgr.snapshot(reason="nightly")
    state = tree_bytes(db)
    assert later.reason == "nightly"
    res = mgr.recover()
    assert (res.action, res.kind, res.kept_path) == ("none", "healthy", None)
    assert tree_bytes(db) == state and mgr.kept() == []
    assert not list((mgr.store_path / "intents").iterdir())


def test_recover_kinds_after_the_first_run(tmp_path: Path) -> None:
    """healthy, then rolled-back (action "restored", as before) for a later killed write."""
    db = tmp_path / "chroma"
    assert first_write(db, "finish").returncode == 0
    out = json.loads(cli("recover", "--db", str(db), "--json").stdout)
    assert (out["action"], out["kind"]) == ("none", "healthy")
    state = tree_bytes(db)
    assert first_write(db, "grow-kill").returncode == -signal.SIGKILL
    pre_write = SnapshotManager(db).list()[-1]
    r = cli("recover", "--db", str(db))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"rolled back: restored {pre_write.id[:12]} because of an interrupted")
    assert tree_bytes(db) == state  # the pre-write state, byte for byte
    (kept,) = SnapshotManager(db).kept()
    assert f"what it wrote is kept at {kept}" in r.stdout


def test_killed_first_write_into_an_empty_bind_mount(tmp_path: Path) -> None:
    """A new, empty volume (a real bind mount holding only `lost+found`; root only, skipped
    where mounting is refused): a fresh start; the killed first write is kept inside the
    mount point, which stays a mount point, and the next start is a fresh start again."""
    from chromasnap.snapshots.swap import is_mount_point

    volume = tmp_path / "volume"
    (volume / "lost+found").mkdir(parents=True)
    db = tmp_path / "chroma"
    db.mkdir()
    if subprocess.run(["mount", "--bind", str(volume), str(db)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        mgr = SnapshotManager(db)
        assert mgr.recover().kind == "fresh-start"
        assert first_write(db, "kill").returncode == -signal.SIGKILL
        inode = db.stat().st_ino
        res = mgr.recover()
        assert (res.action, res.kind) == ("none", "fresh-start") and res.kept_path
        kept = Path(res.kept_path)
        assert kept.parent == db and kept.name.startswith(".chromasnap-replaced-")
        assert (kept / "chroma.sqlite3").is_file() and mgr.kept() == [kept]
        assert db.stat().st_ino == inode and is_mount_point(db)
        assert set(os.listdir(db)) - {"lost+found"} == {kept.name}  # (swap moves lost+found too)
        assert mgr.recover().kind == "fresh-start"
    finally:
        subprocess.run(["umount", str(db)], check=False)
