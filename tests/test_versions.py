"""Version safety: a snapshot whose schema is newer than the chromadb that would open it is
refused (chromadb 1.0.20 panics on a 1.5 database: "range start index 10 out of range for
slice of length 9"), and a verify with a newer chromadb says it migrates, one way."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from chromasnap.snapshots import SnapshotManager, versions
from chromasnap.snapshots.versions import (
    VersionMismatch,
    check_openable,
    describe_migration,
    known_migrations,
    migrations_on_open,
    newer_than_known,
)
from conftest import run_sample


@pytest.mark.slow
def test_the_levels_each_chromadb_knows(old_python: str) -> None:
    new, old = known_migrations(), known_migrations(old_python)
    assert old.chromadb_version == "1.0.20" and new.chromadb_version != "1.0.20"
    assert set(old.levels) <= set(new.levels)
    assert all(new.levels[k] >= v for k, v in old.levels.items())
    assert new.levels != old.levels  # 1.5 added sysdb 10 and metadb 6
    assert known_migrations(old_python) is old  # asked once per process


def test_level_arithmetic() -> None:
    assert newer_than_known({"sysdb": 10, "metadb": 5}, {"sysdb": 9, "metadb": 5}) == {"sysdb": 10}
    assert newer_than_known({"extra": 1}, {"sysdb": 9}) == {"extra": 1}
    assert migrations_on_open({"sysdb": 9}, {"sysdb": 10, "metadb": 6}) == {
        "sysdb": (9, 10),
        "metadb": (0, 6),
    }
    assert migrations_on_open({}, {"sysdb": 10}) == {}  # nothing recorded: nothing to say


@pytest.mark.slow
def test_a_newer_snapshot_is_refused_for_an_older_chromadb(db: Path, old_python: str) -> None:
    snap = SnapshotManager(db).snapshot()
    levels = snap.wal.schema_migrations
    assert levels
    assert check_openable(snap.id, levels, snap.chromadb_version) is not None  # this chromadb
    with pytest.raises(VersionMismatch) as err:
        check_openable(snap.id, levels, snap.chromadb_version, python=old_python)
    line = str(err.value)
    assert "\n" not in line and "1.0.20" in line and str(snap.chromadb_version) in line
    assert check_openable(snap.id, levels, snap.chromadb_version, python=old_python, force=True) is None


@pytest.mark.slow
def test_an_older_snapshot_migrates_on_open_and_says_so(old_python: str, tmp_path: Path) -> None:
    db = tmp_path / "chroma"
    run_sample("build", str(db), "--records", "40", "10", python=old_python)
    snap = SnapshotManager(db).snapshot()
    said = describe_migration(snap.wal.schema_migrations, known_migrations())
    assert said is not None and "one-way" in said and "sysdb 9->10" in said
    assert describe_migration(snap.wal.schema_migrations, known_migrations(old_python)) is None
    report = SnapshotManager(db).verify(snap.id, python=sys.executable)
    assert report.ok and report.migration is not None and "one-way" in report.migration


@pytest.mark.slow
def test_cli_restore_with_an_older_chromadb_is_exit_2(db: Path, old_python: str) -> None:
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    before = (db / "chroma.sqlite3").read_bytes()
    args = ["restore", snap.id, "--yes", "--db", str(db), "--python", old_python]
    r = subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "1.0.20" in r.stderr and "--force" in r.stderr
    assert (db / "chroma.sqlite3").read_bytes() == before


def _from_a_future_chromadb(db: Path) -> None:
    """A real database as a chromadb newer than any installed here leaves it: its schema has a
    migration this chromadb does not know (sysdb 99)."""
    con = sqlite3.connect(db / "chroma.sqlite3")
    con.execute(
        "INSERT INTO migrations (dir, version, filename, sql, hash) "
        "VALUES ('sysdb', 99, '00099-future.sqlite.sql', '', '')"
    )
    con.commit()
    con.close()


def test_a_snapshot_from_a_newer_chromadb_is_refused_by_restore_and_recover(db: Path) -> None:
    """The default run's form of the check (no second environment): restore, restore
    --collection and the CLI refuse with exit 2 and one line; --force goes past it."""
    _from_a_future_chromadb(db)
    mgr = SnapshotManager(db)
    snap = mgr.snapshot()
    assert snap.wal.schema_migrations["sysdb"] == 99
    with pytest.raises(VersionMismatch, match="sysdb 99"):
        mgr.restore(snap.id)
    with pytest.raises(VersionMismatch, match="one-way"):
        mgr.restore_collection(snap.id, "coll1", as_name="coll1-old")
    before = (db / "chroma.sqlite3").read_bytes()
    r = subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", "restore", snap.id[:8], "--yes", "--db", str(db)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--force" in r.stderr
    assert (db / "chroma.sqlite3").read_bytes() == before


def test_this_interpreters_levels_are_kept_between_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking chromadb costs a child that imports it (seconds on every restore, issue 20's
    profile): this interpreter's answer is kept in the user's cache, keyed by its chromadb
    install, and read back instead of asking again; nothing but our own regular file is read."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(versions, "_known", {})
    asked = known_migrations()
    cache = versions.cache_path()
    assert cache.is_file() and stat.S_IMODE(cache.stat().st_mode) == 0o600
    install = versions._install_id(sys.executable)
    assert install is not None and versions._install_id("/usr/bin/python3") is None  # never another's
    doc = json.loads(cache.read_text())
    assert doc["entries"][install] == {"chromadb": asked.chromadb_version, "levels": asked.levels}
    # a later run answers from the cache: shown by an answer only the cache holds
    doc["entries"][install]["levels"] = {"sysdb": 77}
    cache.write_text(json.dumps(doc))
    monkeypatch.setattr(versions, "_known", {})
    assert known_migrations().levels == {"sysdb": 77}
    # a malformed entry, or a cache that is a symlink, is not an answer
    doc["entries"][install]["levels"] = {"sysdb": "77"}
    cache.write_text(json.dumps(doc))
    assert versions._cached(sys.executable, install) is None
    doc["entries"][install]["levels"] = {"sysdb": 77}
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(doc))
    cache.unlink()
    cache.symlink_to(elsewhere)
    assert versions._read_cache() == {} and versions._cached(sys.executable, install) is None
