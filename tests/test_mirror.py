"""Mirroring (`policy set --mirror URL`): each new snapshot copied to another store right
after it is taken, a failure recorded on the snapshot and never fatal, `chromasnap mirror`
retrying the backlog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from s3_servers import aws_env, fresh_url, moto_endpoint

from chromasnap.snapshots import SnapshotManager
from chromasnap.snapshots.mirror import MIRROR_FAILED, MIRRORED
from conftest import run_sample

FIXTURES = (aws_env, moto_endpoint)  # pytest fixtures from s3_servers


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}
    return subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", *args],
        capture_output=True,
        text=True,
        env=base,
        timeout=300,
        check=False,
    )


def test_mirror_after_before_write_to_s3(db: Path, tmp_path: Path, moto_endpoint: str) -> None:
    url = fresh_url()
    SnapshotManager(None, url, endpoint_url=moto_endpoint).init(encrypt=False)  # a plain mirror on purpose
    mgr = SnapshotManager(db, tmp_path / "store", endpoint_url=moto_endpoint)
    first = mgr.snapshot()
    assert mgr.last_mirror is None  # no mirror set yet
    mgr.set_mirror(url)
    assert [s.id for s in mgr.unmirrored()] == [first.id]
    with mgr.before_write(reason="index docs") as pre:
        assert pre is not None
        assert mgr.last_mirror is not None and mgr.last_mirror.failed is None
    remote = SnapshotManager(None, url, endpoint_url=moto_endpoint)
    assert [s.id for s in remote.list()] == [pre.id]  # copied right after it was taken
    assert [e.detail for e in mgr.get(pre.id).events if e.kind == MIRRORED] == [url]
    assert [s.id for s in mgr.unmirrored()] == [first.id]
    done = mgr.mirror()
    assert done.failed is None and done.mirrored == [first.id] and mgr.unmirrored() == []
    assert {s.id for s in remote.list()} == {first.id, pre.id}


@pytest.mark.slow  # ~40 s on a shared machine: nine subprocesses of the command
def test_a_failed_mirror_never_fails_the_snapshot_and_is_retried(db: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    blocked = tmp_path / "mirror"
    blocked.write_text("a file where the mirror's directory should be")
    at = ("--db", str(db), "--store", str(store))
    assert cli("snapshot", *at).returncode == 0
    r = cli("policy", "set", "--mirror", str(blocked), *at, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["mirror"] == str(blocked)

    r = cli("snapshot", *at, "--json")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    shown = json.loads(cli("show", snap["id"][:8], *at, "--json").stdout)
    failed = [e for e in shown["events"] if e["kind"] == MIRROR_FAILED]
    assert len(failed) == 1 and failed[0]["detail"].startswith(str(blocked))
    r = cli("list", *at, "--json")
    assert all(row["mirrored_to"] == [] for row in json.loads(r.stdout))
    assert "2 snapshots are not yet on the mirror" in r.stderr
    stats = json.loads(cli("stats", *at, "--json").stdout)
    assert stats["mirror"] == str(blocked) and len(stats["unmirrored"]) == 2
    metrics = cli("stats", "--prometheus", *at).stdout
    backlog = [ln for ln in metrics.splitlines() if ln.startswith("chromasnap_unmirrored_snapshots{")]
    assert len(backlog) == 1 and backlog[0].endswith(" 2")

    r = cli("mirror", *at)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    blocked.unlink()
    r = cli("mirror", *at, "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["mirrored"]) == 2
    r = cli("list", *at, "--json")
    assert all(row["mirrored_to"] == [str(blocked)] for row in json.loads(r.stdout))
    assert "not yet on the mirror" not in r.stderr
    assert len(SnapshotManager(None, blocked).list()) == 2


def test_a_new_remote_mirror_is_encrypted_with_the_password_from_the_environment(
    db: Path, tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 17: mirroring a plain local store creates an encrypted remote store; with no
    password in the environment the snapshot is taken and the mirroring recorded as failed
    in one line; with one, the backlog goes up re-sealed, then each new snapshot."""
    for var in [v for v in os.environ if v.startswith("CHROMASNAP_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("CHROMASNAP_KDF", "fast")
    url = fresh_url()
    mgr = SnapshotManager(db, tmp_path / "store", endpoint_url=moto_endpoint)
    zero = mgr.snapshot()
    mgr.set_mirror(url)
    first = mgr.snapshot()
    assert mgr.last_mirror is not None and mgr.last_mirror.failed is not None
    assert "no password" in mgr.last_mirror.failed and "\n" not in mgr.last_mirror.failed
    failed = [e.detail for e in mgr.get(first.id).events if e.kind == MIRROR_FAILED]
    assert len(failed) == 1 and failed[0].startswith(f"{url}: no password")
    assert not SnapshotManager(None, url, endpoint_url=moto_endpoint).backend.exists()

    monkeypatch.setenv("CHROMASNAP_MIRROR_PASSWORD", "the mirror's password")
    done = mgr.mirror()
    assert done.failed is None and done.mirrored == [zero.id, first.id] and mgr.unmirrored() == []
    remote = SnapshotManager(None, url, endpoint_url=moto_endpoint, password=lambda: "the mirror's password")
    assert remote.repo.codec.encrypted
    copies = remote.list()
    assert [c.created_at for c in copies] == [zero.created_at, first.created_at]
    assert copies[1].id != first.id and copies[1].parent == copies[0].id  # re-sealed: keyed ids
    run_sample("mutate", str(db), "--step", "1", "--fraction", "0.02")
    second = mgr.snapshot()
    assert mgr.last_mirror is not None and mgr.last_mirror.failed is None, mgr.last_mirror
    assert 0 < mgr.last_mirror.bytes_sent < done.bytes_sent / 2  # the new blobs, not the database
    assert [s.created_at for s in remote.list()] == [zero.created_at, first.created_at, second.created_at]
    assert all(r.ok for r in remote.verify_many(quick=True))
