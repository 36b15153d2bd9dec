"""`chromasnap copy`: snapshots between stores (local -> S3 on moto -> another local store),
only missing blobs sent, resumable, byte-exact at the end."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from s3_servers import aws_env, fresh_url, moto_endpoint, raw_client
from test_encrypted import needles, scan

from chromasnap.snapshots import LocalBackend, SnapshotManager
from chromasnap.snapshots.errors import PermanentStoreError, UsageError
from chromasnap.snapshots.faulty_backend import FaultyBackend
from chromasnap.snapshots.keys import WrongPassword
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
    # a plain remote target on purpose (a new remote target is encrypted by default: below)
    first = cli(
        "copy",
        "--from",
        str(store),
        "--to",
        url,
        ids[0][:8],
        "--no-encrypt",
        "--json",
        endpoint=moto_endpoint,
    )
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


# --- issue 17: copies between stores with different keys (or an encrypted and a plain one) ---

PW1, PW2, PW3 = "first store's password", "second store's password", "third store's password"


def pw(value: str) -> Callable[[], str]:
    return lambda: value


def never() -> str:
    raise AssertionError("no password should be needed here")


def blob_bodies(mgr: SnapshotManager) -> dict[str, bytes]:
    """Every stored blob body of a local store, by key (as it lies in its pack)."""
    assert mgr.store_path is not None
    out = {}
    for key, loc in mgr.repo.index().items():
        pack = mgr.store_path / "packs" / loc.pack[:2] / loc.pack
        with pack.open("rb") as fh:
            fh.seek(loc.offset)
            out[key] = fh.read(loc.length)
    return out


def test_copy_between_keys_reseals_and_sends_only_what_is_missing(
    two_snapshots: tuple[Path, list[str], dict[str, bytes]],
    db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """plain -> encrypted -> encrypted under another key (killed once, resumed) -> plain: each
    step re-sealed, incremental, and the last plain store has the source's very ids (every
    chunk list, record index and document was rewritten faithfully both ways)."""
    monkeypatch.setenv("CHROMASNAP_KDF", "fast")
    store, ids, at_second = two_snapshots
    plain = LocalBackend(store)
    e1, e2, back = LocalBackend(tmp_path / "e1"), LocalBackend(tmp_path / "e2"), LocalBackend(tmp_path / "p")

    first = copy_snapshots(plain, e1, [ids[0]], encrypt=True, password=pw(PW1))
    assert first.created and first.encrypted and first.resealed and first.copied == [ids[0]]
    rest = copy_snapshots(plain, e1, password=pw(PW1))
    assert rest.copied == [ids[1]] and rest.present == [ids[0]]
    assert 0 < rest.bytes_sent < first.bytes_sent / 2  # the second snapshot's new blobs, not the database
    # and only those were read: the rest was named through the first snapshot and its copy
    assert 0 < rest.bytes_read < first.bytes_read / 2
    again = copy_snapshots(plain, e1, password=pw(PW1))
    assert again.copied == [] and again.blobs_sent == 0 and again.bytes_sent == 0
    enc_ids = [rest.ids[i] for i in ids]
    assert enc_ids[0] == first.ids[ids[0]] and not set(enc_ids) & set(ids)  # keyed ids

    # encrypted -> encrypted under a new master key (the default for a new target): killed at
    # the third pack (the seam: the target's save_file), then resumed
    full = copy_snapshots(e1, LocalBackend(tmp_path / "e-full"), from_password=pw(PW1), password=pw(PW2))
    faulty = FaultyBackend(e2, fail_at=3, kind="permanent", ops={"save_file"})
    with pytest.raises(PermanentStoreError):
        copy_snapshots(e1, faulty, from_password=pw(PW1), password=pw(PW2))
    assert SnapshotManager(None, e2.root, password=pw(PW2)).list() == []
    res = copy_snapshots(e1, e2, from_password=pw(PW1), password=pw(PW2))
    assert res.resealed and not res.created and res.copied == enc_ids
    assert 0 < res.blobs_sent < full.blobs_sent  # what the killed run indexed was not sent again
    mgr2 = SnapshotManager(None, e2.root, password=pw(PW2))
    assert mgr2.repo.codec.encrypted and not mgr2.repo.codec.same_keys(
        SnapshotManager(None, e1.root, password=pw(PW1)).repo.codec
    )
    assert [s.id for s in mgr2.list()] == [res.ids[i] for i in enc_ids]
    assert all(r.ok for r in mgr2.verify_many(quick=True))
    assert copy_snapshots(e1, e2, from_password=pw(PW1), password=pw(PW2)).blobs_sent == 0

    # encrypted -> plain: a new local target of an encrypted source is encrypted unless asked
    with pytest.raises(UsageError, match="no password"):
        copy_snapshots(e2, back, from_password=pw(PW2), password=None)  # no terminal: refused
    assert not back.exists() or not (tmp_path / "p" / "config.json").exists()
    out = copy_snapshots(e2, back, from_password=pw(PW2), encrypt=False)
    assert out.resealed and not out.encrypted
    with pytest.raises(UsageError, match="readable there"):  # never decrypted into a plain store unasked
        copy_snapshots(e2, back, from_password=pw(PW2))
    mgr = SnapshotManager(None, back.root, password=never)
    assert [s.id for s in mgr.list()] == ids  # the source's own ids, through two other keys
    assert [s.parent for s in mgr.list()] == [s.parent for s in SnapshotManager(None, store).list()]
    assert all(r.ok for r in mgr.verify_many(quick=True))
    extracted = tmp_path / "out"
    mgr2.extract(res.ids[enc_ids[1]], extracted)
    assert tree_bytes(extracted) == at_second  # byte-exact out of the twice re-sealed store
    [full] = mgr2.verify_many([res.ids[enc_ids[1]]])  # every byte, then chromadb opens it (a child)
    assert full.ok, full
    shutil.rmtree(db)  # the database gone: restored from the re-sealed store onto the bare path
    SnapshotManager(db, e2.root, password=pw(PW2)).restore(res.ids[enc_ids[1]][:12], verify=False)
    assert tree_bytes(db) == at_second


def test_same_key_copy_moves_sealed_bodies_as_they_are(
    two_snapshots: tuple[Path, list[str], dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHROMASNAP_KDF", "fast")
    store, ids, at_second = two_snapshots
    e1, twin = LocalBackend(tmp_path / "e1"), LocalBackend(tmp_path / "twin")
    enc = copy_snapshots(LocalBackend(store), e1, encrypt=True, password=pw(PW1))
    first = copy_snapshots(
        e1, twin, [enc.ids[ids[0]]], from_password=pw(PW1), password=pw(PW3), same_key=True
    )
    assert first.created and not first.resealed and first.ids == {enc.ids[ids[0]]: enc.ids[ids[0]]}
    # the twin opens with its own password only, and shares every name and sealed body
    twin_mgr = SnapshotManager(None, twin.root, password=pw(PW3))
    with pytest.raises(WrongPassword):
        SnapshotManager(None, twin.root, password=pw(PW1)).list()
    source_bodies = blob_bodies(SnapshotManager(None, e1.root, password=pw(PW1)))
    twin_bodies = blob_bodies(twin_mgr)
    assert twin_bodies and all(source_bodies[k] == v for k, v in twin_bodies.items())
    # later copies open the twin with the source's key: no password for it at all
    rest = copy_snapshots(e1, twin, from_password=pw(PW1), password=never)
    assert not rest.resealed and rest.copied == [enc.ids[ids[1]]] and 0 < rest.bytes_sent < first.bytes_sent
    assert [s.id for s in twin_mgr.list()] == [enc.ids[i] for i in ids]
    assert all(r.ok for r in twin_mgr.verify_many(quick=True))
    out = tmp_path / "out"
    twin_mgr.extract(enc.ids[ids[1]], out)
    assert tree_bytes(out) == at_second
    with pytest.raises(UsageError, match="same-key"):  # a plain source has no key to share
        copy_snapshots(
            LocalBackend(store), LocalBackend(tmp_path / "x"), encrypt=True, password=pw(PW1), same_key=True
        )


def run(*args: str, endpoint: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}
    return subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", "--endpoint-url", endpoint, *args],
        capture_output=True,
        text=True,
        env={**base, "CHROMASNAP_KDF": "fast", **env},
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )


def bucket_objects(endpoint: str, url: str) -> dict[str, bytes]:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    client = raw_client(endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_copy_to_a_new_remote_store_encrypts_it_and_nothing_is_readable(
    two_snapshots: tuple[Path, list[str], dict[str, bytes]], db: Path, tmp_path: Path, moto_endpoint: str
) -> None:
    """`copy --to s3://…` creates an encrypted store (the target's password from
    CHROMASNAP_PASSWORD*), and `copy --from` an encrypted one takes CHROMASNAP_FROM_PASSWORD*:
    no byte of the bucket, nor of the local cache, shows a document, a metadata value or an
    embedding."""
    store, ids, at_second = two_snapshots
    url, cache = fresh_url(), tmp_path / "cache"
    at = ("copy", "--from", str(store), "--to", url, "--json")
    r = run(*at, endpoint=moto_endpoint, XDG_CACHE_HOME=str(cache))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no password" in r.stderr, r.stderr
    r = run(*at, endpoint=moto_endpoint, XDG_CACHE_HOME=str(cache), CHROMASNAP_PASSWORD=PW1)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["created"] and res["encrypted"] and res["resealed"] and res["copied"] == ids
    objects = bucket_objects(moto_endpoint, url)
    config = json.loads(next(v for k, v in objects.items() if k.endswith("/config.json")))
    assert config["encryption"]["cipher"] == "aes-256-gcm"
    found = needles(db, SnapshotManager(db, store))
    assert all(v in b"".join(at_second.values()) for v in found.values())  # real needles
    hits = [f"{k} in {name}" for name, data in objects.items() for k, v in found.items() if v in data]
    assert hits == [] and scan(cache, found) == []

    back = tmp_path / "back"
    r = run("copy", "--from", url, "--to", str(back), "--no-encrypt", "--json", endpoint=moto_endpoint)
    assert r.returncode == 2 and "CHROMASNAP_FROM_PASSWORD" in r.stderr, r.stderr  # the source's password
    r = run(
        "copy", "--from", url, "--to", str(back), "--no-encrypt", "--json",
        endpoint=moto_endpoint, XDG_CACHE_HOME=str(cache), CHROMASNAP_FROM_PASSWORD=PW1,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["copied"] == [res["target_ids"][i] for i in ids]
    mgr = SnapshotManager(None, back, password=never)
    assert [s.id for s in mgr.list()] == ids
    out = tmp_path / "out"
    mgr.extract(ids[1], out)
    assert tree_bytes(out) == at_second
    assert scan(cache, found) == []


COPY_CHILD = """
import sys
from pathlib import Path
from chromasnap.snapshots import LocalBackend
from chromasnap.snapshots.store_copy import copy_snapshots
src, dst, pw = sys.argv[1:]
copy_snapshots(LocalBackend(Path(src)), LocalBackend(Path(dst)), encrypt=True, password=lambda: pw)
print("done", flush=True)
"""


@pytest.mark.slow  # ~1 min: a child copy per instant, each then resumed and checked
def test_a_resealing_copy_killed_at_random_instants_resumes(
    two_snapshots: tuple[Path, list[str], dict[str, bytes]], tmp_path: Path
) -> None:
    """SIGKILL at random instants of a plain -> encrypted copy (small packs: several land
    before the end): what is listed verifies, and the next run sends exactly what the killed
    one had not indexed."""
    store, _, at_second = two_snapshots
    env = {**os.environ, "CHROMASNAP_KDF": "fast"}
    rng = random.Random(5)
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", COPY_CHILD, str(store), str(tmp_path / "whole"), PW1], env=env, check=True
    )
    whole = time.monotonic() - t0
    full = copy_snapshots(
        LocalBackend(store), LocalBackend(tmp_path / "again"), encrypt=True, password=pw(PW1)
    )
    for i in range(4):
        target = tmp_path / f"t{i}"
        proc = subprocess.Popen([sys.executable, "-c", COPY_CHILD, str(store), str(target), PW1], env=env)
        time.sleep(rng.uniform(0.3, 1.0) * whole)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
        indexed = 0
        if (target / "config.json").exists():
            left = SnapshotManager(None, target, password=pw(PW1))
            assert all(r.ok for r in left.verify_many(quick=True))  # whatever is listed is whole
            indexed = len(left.repo.index())
        res = copy_snapshots(LocalBackend(store), LocalBackend(target), encrypt=True, password=pw(PW1))
        assert res.blobs_sent == full.blobs_sent - indexed  # what the killed run indexed is not sent again
        mgr = SnapshotManager(None, target, password=pw(PW1))
        assert len(mgr.list()) == 2 and all(r.ok for r in mgr.verify_many(quick=True))
        out = tmp_path / f"out{i}"
        mgr.extract("latest", out)
        assert tree_bytes(out) == at_second
