"""The local metadata cache of a remote store (metacache.py), on moto's S3 server on loopback:
a warm `list`, `show` and `find` fetch no document, index file or record-index blob; stale,
truncated, tampered and symlinked entries are refused and fetched again (results unchanged);
pruned snapshots are not served; an encrypted store's cache holds no plaintext; a cache that
cannot be written (a file in its place, ENOSPC injected at the one write seam) fails nothing.

Requests are counted at botocore's `before-parameter-build` event of the manager's own client."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3_servers import BUCKET, aws_env, fresh_url, moto_endpoint, raw_client

from chromasnap.manifest import RetentionPolicy
from chromasnap.snapshots import SnapshotManager, SnapshotNotFound, metacache
from chromasnap.snapshots.metacache import MetaCache
from conftest import run_sample

FIXTURES = (aws_env, moto_endpoint)  # pytest fixtures from s3_servers
PW = "correct horse battery staple"


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private XDG cache for the test, the cache switched on."""
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.delenv("CHROMASNAP_NO_CACHE", raising=False)
    yield home


def manager(url: str, endpoint: str, db: Path | None = None, **kw: Any) -> SnapshotManager:
    return SnapshotManager(db, url, endpoint_url=endpoint, **kw)


def requests_of(mgr: SnapshotManager) -> list[tuple[str, str]]:
    """(operation, key) of every request `mgr`'s S3 client sends from now on."""
    seen: list[tuple[str, str]] = []

    def note(params: dict[str, Any], model: Any, **_: Any) -> None:
        seen.append((model.name, str(params.get("Key", params.get("Prefix", "")))))

    mgr.backend.inner._client.meta.events.register("before-parameter-build.s3", note)  # type: ignore[attr-defined]
    return seen


def gets(seen: list[tuple[str, str]], folder: str) -> list[str]:
    return [key for op, key in seen if op == "GetObject" and f"/{folder}/" in key]


def entries(home: Path, folder: str) -> list[Path]:
    return sorted(home.glob(f"chromasnap/*/meta-*/{folder}/*"))


@pytest.fixture(scope="module")
def master3(
    base_db: Path, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[str]]:
    """An S3 store of three snapshots, taken once for the module (its cache thrown away)."""
    work = tmp_path_factory.mktemp("master3")
    db = work / "chroma"
    shutil.copytree(base_db, db, symlinks=True)
    url = fresh_url()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHROMASNAP_NO_CACHE", "1")
        mgr = manager(url, moto_endpoint, db)
        ids = [mgr.snapshot(reason=f"r{i}").id for i in range(2)]
        run_sample("mutate", str(db), "--step", "3", "--fraction", "0.02")
        ids.append(mgr.snapshot(reason="r2").id)
    return url, ids


@pytest.fixture
def store3(master3: tuple[str, list[str]], moto_endpoint: str, cache_home: Path) -> tuple[str, list[str]]:
    """A private copy of `master3` (the same store id, at a new location: a cache of its own)."""
    src, ids = master3
    url = fresh_url()
    client = raw_client(moto_endpoint)
    src_prefix, dst_prefix = src.split("/", 3)[3], url.split("/", 3)[3]
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=src_prefix + "/")
    for page in pages:
        for obj in page.get("Contents", []):
            key = dst_prefix + obj["Key"][len(src_prefix) :]
            client.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": obj["Key"]})
    return url, ids


def test_warm_list_show_and_find_fetch_no_document(
    store3: tuple[str, list[str]], moto_endpoint: str, cache_home: Path
) -> None:
    url, ids = store3
    cold = manager(url, moto_endpoint)
    seen = requests_of(cold)
    rows = cold.list()
    assert [s.id for s in rows] == ids
    assert len(gets(seen, "snapshots")) == 3 and cold.repo.cache is not None
    assert len(entries(cache_home, "snapshots")) == 3
    # each entry holds exactly the bytes the store holds (after its header)
    client = raw_client(moto_endpoint)
    bucket, prefix = url[len("s3://") :].split("/", 1)
    for path in entries(cache_home, "snapshots"):
        stored = client.get_object(Bucket=bucket, Key=f"{prefix}/snapshots/{path.name}")["Body"].read()
        assert path.read_bytes().endswith(b"\n" + stored)
    found = cold.find("coll0-7")
    assert [e.snapshot for e in found.entries] == ids

    warm = manager(url, moto_endpoint)
    seen = requests_of(warm)
    again = warm.list()
    assert [s.model_dump() for s in again] == [s.model_dump() for s in rows]
    assert gets(seen, "snapshots") == [] and warm.repo.cache is not None and warm.repo.cache.hits == 3
    # a warm list: HEAD and GET config.json, LIST keys/ and snapshots/, GET catalog.json
    assert sorted(op for op, _ in seen) == sorted(
        ["HeadObject", "GetObject", "ListObjectsV2", "ListObjectsV2", "GetObject"]
    ), seen
    assert warm.get(ids[0][:8]).id == ids[0] and gets(seen, "snapshots") == []
    seen.clear()
    assert warm.find("coll0-7").model_dump(exclude={"duration_s"}) == found.model_dump(exclude={"duration_s"})
    assert gets(seen, "index") == [] and gets(seen, "packs") == [], seen  # index files, record blobs
    assert entries(cache_home, "blobs")


def test_stale_truncated_tampered_and_symlinked_entries_are_fetched_again(
    store3: tuple[str, list[str]], moto_endpoint: str, cache_home: Path, tmp_path: Path
) -> None:
    url, ids = store3
    first = manager(url, moto_endpoint)
    rows = [s.model_dump() for s in first.list()]
    first.find("coll0-7")
    docs = entries(cache_home, "snapshots")
    flipped = bytearray(docs[0].read_bytes())
    flipped[-2] ^= 0x20  # one byte of the body: the header's hash no longer matches
    docs[0].write_bytes(bytes(flipped))
    docs[1].write_bytes(docs[1].read_bytes()[:-40])  # truncated (a torn write)
    elsewhere = tmp_path / "elsewhere.json"
    shutil.copy(docs[2], elsewhere)
    docs[2].unlink()
    docs[2].symlink_to(elsewhere)  # never followed
    blob = entries(cache_home, "blobs")[0]
    blob.write_bytes(blob.read_bytes()[:-1] + bytes([blob.read_bytes()[-1] ^ 1]))

    second = manager(url, moto_endpoint)
    seen = requests_of(second)
    assert [s.model_dump() for s in second.list()] == rows
    assert len(gets(seen, "snapshots")) == 3
    found = second.find("coll0-7")
    assert [e.snapshot for e in found.entries] == ids
    assert second.repo.cache is not None and second.repo.cache.discarded == 4
    assert all(not p.is_symlink() for p in entries(cache_home, "snapshots"))

    # a snapshot changed behind the cache's back (pinned by a run without it): its ETag
    # differs from the entry's, so the new version is read
    os.environ["CHROMASNAP_NO_CACHE"] = "1"
    try:
        manager(url, moto_endpoint).pin(ids[1][:8])
    finally:
        del os.environ["CHROMASNAP_NO_CACHE"]
    third = manager(url, moto_endpoint)
    seen = requests_of(third)
    assert [s.pinned for s in third.list()] == [False, True, False]
    assert gets(seen, "snapshots") == [f"{url.split('/', 3)[3]}/snapshots/{ids[1]}.json"]


def test_pruned_snapshots_are_not_served_from_the_cache(
    store3: tuple[str, list[str]], moto_endpoint: str, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ids = store3
    manager(url, moto_endpoint).list()
    assert len(entries(cache_home, "snapshots")) == 3
    monkeypatch.setenv("CHROMASNAP_NO_CACHE", "1")  # pruned by a run that leaves the cache alone
    manager(url, moto_endpoint).prune(RetentionPolicy(keep_last=1))
    monkeypatch.delenv("CHROMASNAP_NO_CACHE")
    after = manager(url, moto_endpoint)
    assert [s.id for s in after.list()] == [ids[2]]
    assert [p.name for p in entries(cache_home, "snapshots")] == [f"{ids[2]}.json"]
    with pytest.raises(SnapshotNotFound):
        after.get(ids[0][:8])


def _needles(db: Path) -> list[bytes]:
    con = sqlite3.connect(f"file:{db / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        doc = con.execute(
            "SELECT string_value FROM embedding_metadata WHERE key = 'chroma:document' LIMIT 1"
        ).fetchone()[0]
    finally:
        con.close()
    return [doc.encode(), b"coll0-7", b"needle-note-5f1c", b"needle-tag-9a2e", b"coll0"]


def test_an_encrypted_stores_cache_holds_no_plaintext(
    db: Path, moto_endpoint: str, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHROMASNAP_KDF", "fast")  # Argon2id t=1, m=1 MiB: tests only
    url = fresh_url()
    mgr = manager(url, moto_endpoint, db, password=lambda: PW)
    mgr.init(encrypt=True)
    snap = mgr.snapshot(tags=["needle-tag-9a2e"], note="needle-note-5f1c")
    reader = manager(url, moto_endpoint, password=lambda: PW)
    assert [s.note for s in reader.list()] == ["needle-note-5f1c"]
    assert [e.snapshot for e in reader.find("coll0-7").entries] == [snap.id]
    files = [p for p in cache_home.rglob("*") if p.is_file() and "/meta-" in str(p)]
    assert entries(cache_home, "snapshots") and entries(cache_home, "index") and entries(cache_home, "blobs")
    for path in files:
        data = path.read_bytes()
        for needle in _needles(db):
            assert needle not in data, (path, needle)


def test_a_cache_that_cannot_be_written_fails_nothing(
    store3: tuple[str, list[str]], moto_endpoint: str, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ids = store3

    # ENOSPC, injected at the one seam that writes an entry's bytes (a full disk on demand)
    def full(_fd: int, _data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metacache, "_write_all", full)
    assert [s.id for s in manager(url, moto_endpoint).list()] == ids
    assert entries(cache_home, "snapshots") == []
    assert [p for p in cache_home.rglob(".tmp-*")] == []  # the temporary file went too
    monkeypatch.undo()

    # the cache folder's place taken by a file (no folder can be made there); find and diff
    # still need scratch space there (workdir.py), list and show do not
    shutil.rmtree(cache_home, ignore_errors=True)
    cache_home.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    mgr = manager(url, moto_endpoint)
    assert [s.id for s in mgr.list()] == ids and mgr.get("latest").id == ids[-1]


def test_cache_entries_are_bounded_reads_of_regular_files(tmp_path: Path) -> None:
    """Unit: what `get` refuses without a server (a listing is an ObjectInfo)."""
    from chromasnap.snapshots.backend import ObjectInfo

    cache = MetaCache(tmp_path / "meta-x")
    name = "snapshots/" + "a" * 64 + ".json"
    cache.put(name, b'{"doc": 1}', '"etag1"')
    assert cache.get(name, ObjectInfo(name, 10, '"etag1"'), 100) == b'{"doc": 1}'
    assert cache.get(name, ObjectInfo(name, 10, '"etag2"'), 100) is None  # stale: deleted
    assert cache.get(name, ObjectInfo(name, 10, '"etag1"'), 100) is None
    cache.put(name, b'{"doc": 1}', None)  # a mutable document without an ETag is not kept
    assert not (tmp_path / "meta-x" / name).exists()
    idx = "index/" + "b" * 64 + ".json"
    cache.put(idx, b"x" * 50, None)  # an index file is named by its content: size and hash do
    assert cache.get(idx, ObjectInfo(idx, 50), 100) == b"x" * 50
    assert cache.get(idx, ObjectInfo(idx, 50), 10) is None  # over the caller's bound: refused
    cache.put(idx, b"x" * 50, None)
    path = tmp_path / "meta-x" / idx
    path.unlink()
    os.mkfifo(path)  # a FIFO would block a plain open
    assert cache.get(idx, ObjectInfo(idx, 50), 100) is None and not path.exists()
    assert cache.get("config.json", ObjectInfo("config.json", 2), 10) is None  # never cached
    cache.prune("index", set())
    assert list((tmp_path / "meta-x" / "index").iterdir()) == []

    # a cache folder others can write is not used (its entries could be anyone's)
    shared = tmp_path / "meta-shared"
    shared.mkdir(mode=0o700)
    shared.chmod(0o777)
    other = MetaCache(shared)
    other.put(idx, b"x" * 50, None)
    assert other.get(idx, ObjectInfo(idx, 50), 100) is None and list(shared.iterdir()) == []
    # nor one reached through a symlink
    (tmp_path / "meta-link").symlink_to(tmp_path / "meta-x")
    linked = MetaCache(tmp_path / "meta-link")
    linked.put(idx, b"y" * 50, None)
    assert linked.get(idx, ObjectInfo(idx, 50), 100) is None


def test_cli_no_cache_and_a_warm_cli_list(
    store3: tuple[str, list[str]], moto_endpoint: str, cache_home: Path
) -> None:
    url, ids = store3
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}

    def cli(*args: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            [sys.executable, "-m", "chromasnap.cli", "--endpoint-url", moto_endpoint, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        rows: list[dict[str, Any]] = json.loads(out.stdout)
        return rows

    assert [r["id"] for r in cli("--no-cache", "list", "--store", url, "--json")] == ids
    assert not list(cache_home.glob("chromasnap/*/meta-*"))
    assert [r["id"] for r in cli("list", "--store", url, "--json")] == ids
    assert len(entries(cache_home, "snapshots")) == 3
    assert [r["id"] for r in cli("list", "--store", url, "--json")] == ids
    assert BUCKET in url
