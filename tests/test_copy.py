"""`chromasnap copy`: snapshots between stores (local -> S3 on moto -> another local store),
only missing blobs sent, resumable, byte-exact at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from s3_servers import aws_env, fresh_url, moto_endpoint

from chromasnap.snapshots import LocalBackend, SnapshotManager
from chromasnap.snapshots.errors import PermanentStoreError
from chromasnap.snapshots.faulty_backend import FaultyBackend
from chromasnap.snapshots.repository import Repository
from chromasnap.snapshots.store_copy import copy_snapshots
from conftest import run_sample, tree_bytes

FIXTURES = (aws_env, moto_endpoint)  # pytest fixtures from s3_servers


def cli(*args: str, endpoint: str) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}
    r = subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", "--endpoint-url", endpoint, *args],
        capture_output=True,
        text=True,
        env=base,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out


@pytest.fixture
def two_snapshots(db: Path, tmp_path: Path) -> tuple[Path, list[str], dict[str, bytes]]:
    """A local store (small packs: several per snapshot) with two snapshots; the database's
    bytes at the second."""
    store = tmp_path / "a.snapshots"
    Repository.open_or_create(LocalBackend(store), pack_size=1 << 20)
    mgr = SnapshotManager(db, store)
    first = mgr.snapshot().id
    run_sample("mutate", str(db), "--step", "1", "--fraction", "0.02")
    second = mgr.snapshot().id
    return store, [first, second], tree_bytes(db)


def test_copy_local_to_s3_to_local(
    two_snapshots: tuple[Path, list[str], dict[str, bytes]], tmp_path: Path, moto_endpoint: str
) -> None:
    store, ids, at_second = two_snapshots
    url = fresh_url()
    first = cli("copy", "--from", str(store), "--to", url, ids[0][:8], "--json", endpoint=moto_endpoint)
    assert first["copied"] == [ids[0]] and first["packs_sent"] >= 2
    rest = cli("copy", "--from", str(store), "--to", url, "--json", endpoint=moto_endpoint)
    assert rest["copied"] == [ids[1]] and rest["already_there"] == [ids[0]]
    # the incremental copy sent about the second snapshot's new bytes, not the whole database
    assert 0 < int(str(rest["bytes_sent"])) < int(str(first["bytes_sent"]))
    again = cli("copy", "--from", str(store), "--to", url, "--json", endpoint=moto_endpoint)
    assert again["copied"] == [] and again["bytes_sent"] == 0 and again["blobs_sent"] == 0

    other = tmp_path / "b.snapshots"
    back = cli("copy", "--from", url, "--to", str(other), "--json", endpoint=moto_endpoint)
    assert sorted(back["copied"]) == sorted(ids)  # type: ignore[type-var]
    mgr = SnapshotManager(None, other)
    assert [s.id for s in mgr.list()] == ids
    assert all(r.ok for r in mgr.verify_many(quick=True))
    out = tmp_path / "out"
    mgr.extract(ids[1], out)
    assert tree_bytes(out) == at_second  # byte-exact after local -> S3 -> local


def test_a_failed_copy_leaves_no_snapshot_and_resumes(
    two_snapshots: tuple[Path, list[str], dict[str, bytes]], tmp_path: Path
) -> None:
    """The failure is injected at the target's save_file (the third pack): what a kill at
    that point leaves, deterministically."""
    store, ids, at_second = two_snapshots
    fresh = copy_snapshots(LocalBackend(store), LocalBackend(tmp_path / "full"), verify=False)
    target = tmp_path / "target"
    faulty = FaultyBackend(LocalBackend(target), fail_at=3, kind="permanent", ops={"save_file"})
    with pytest.raises(PermanentStoreError):
        copy_snapshots(LocalBackend(store), faulty)
    assert SnapshotManager(None, target).list() == []  # nothing listed before its blobs are all there
    res = copy_snapshots(LocalBackend(store), LocalBackend(target))
    assert res.copied == ids
    assert 0 < res.blobs_sent < fresh.blobs_sent  # the packs indexed before the failure were not sent again
    mgr = SnapshotManager(None, target)
    assert all(r.ok for r in mgr.verify_many(quick=True))
    out = tmp_path / "out"
    mgr.extract(ids[1], out)
    assert tree_bytes(out) == at_second
