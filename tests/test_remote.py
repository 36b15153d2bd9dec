"""Every command against a store in S3 (`--store s3://...`), run as real subprocesses of the
`chromasnap` command against moto's server on loopback (and rclone's, which ignores
conditional writes); what stays beside the database when the store is remote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from s3_servers import (
    ACCESS_KEY,
    RCLONE_BUCKET,
    SECRET_KEY,
    aws_env,
    fresh_url,
    moto_endpoint,
    moto_iam_checks,
    raw_client,
    rclone_endpoint,
)

from chromasnap.snapshots import SnapshotManager
from chromasnap.snapshots.stores import beside_db
from conftest import run_sample, tree_bytes

FIXTURES = (aws_env, moto_endpoint, rclone_endpoint)  # pytest fixtures from s3_servers


def cli(
    *args: str, endpoint: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command; the AWS test environment (aws_env) is inherited."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}
    pre = ["--endpoint-url", endpoint] if endpoint else []
    return subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", *pre, *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=300,
        check=False,
    )


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


def one_line_error(r: subprocess.CompletedProcess[str], code: int | tuple[int, ...]) -> str:
    codes = code if isinstance(code, tuple) else (code,)
    assert r.returncode in codes, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("chromasnap: ") and "\n" not in err and "Traceback" not in err, err
    for secret in (SECRET_KEY, ACCESS_KEY, "X-Amz-Signature", "Signature="):
        assert secret not in r.stderr and secret not in r.stdout
    return err


def s3_keys(endpoint: str, url: str) -> list[str]:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    client = raw_client(endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return [o["Key"][len(prefix) + 1 :] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow  # ~2 min: a dozen subprocesses, each importing boto3, two probes
def test_every_command_round_trips_on_s3(db: Path, tmp_path: Path, moto_endpoint: str) -> None:
    url = fresh_url()
    at = ("--db", str(db), "--store", url)
    first = json.loads(ok(cli("snapshot", *at, "--tag", "one", "--json", endpoint=moto_endpoint)))
    # the store is in the bucket; nothing of it is on the local disk, the default store included
    keys = s3_keys(moto_endpoint, url)
    assert "config.json" in keys and f"snapshots/{first['id']}.json" in keys
    assert any(k.startswith("packs/") for k in keys) and any(k.startswith("index/") for k in keys)
    assert not (db.parent / "chroma.snapshots").exists()
    before = tree_bytes(db)

    out = tmp_path / "extracted"
    ok(cli("extract", first["id"][:8], str(out), *at, endpoint=moto_endpoint))
    assert tree_bytes(out) == before  # byte-exact

    run_sample("mutate", str(db), "--step", "1", "--fraction", "0.02")
    second = json.loads(ok(cli("snapshot", *at, "--json", endpoint=moto_endpoint)))
    rows = json.loads(ok(cli("list", *at, "--json", endpoint=moto_endpoint)))
    assert [r["id"] for r in rows] == [first["id"], second["id"]]
    assert rows[1]["new_bytes"] < rows[0]["new_bytes"]  # deduplicated against the first
    assert url in ok(cli("list", *at, endpoint=moto_endpoint))
    shown = json.loads(ok(cli("show", "latest", *at, "--json", endpoint=moto_endpoint)))
    assert shown["id"] == second["id"]

    diff = json.loads(
        ok(cli("diff", first["id"][:8], second["id"][:8], *at, "--json", endpoint=moto_endpoint))
    )
    assert diff["collections"], diff

    reports = json.loads(ok(cli("verify", "--all", *at, "--json", endpoint=moto_endpoint)))
    assert len(reports) == 2 and all(r["ok"] for r in reports), reports
    found = json.loads(ok(cli("find", "coll0-7", *at, "--json", endpoint=moto_endpoint)))
    assert found and "coll0-7" in json.dumps(found)
    peeked = json.loads(
        ok(cli("peek", "latest", "coll0", "--id", "coll0-7", *at, "--json", endpoint=moto_endpoint))
    )
    assert "coll0-7" in json.dumps(peeked)
    assert json.loads(ok(cli("pin", first["id"][:8], *at, "--json", endpoint=moto_endpoint)))["pinned"]
    assert json.loads(ok(cli("show", first["id"][:8], *at, "--json", endpoint=moto_endpoint)))["pinned"]
    assert not json.loads(ok(cli("unpin", first["id"][:8], *at, "--json", endpoint=moto_endpoint)))["pinned"]

    ok(cli("restore", first["id"][:8], "--yes", *at, "--json", endpoint=moto_endpoint))
    assert tree_bytes(db) == before
    # the database's machine-local state is beside it, not in the bucket
    local = beside_db(db)
    assert (local / "write.lock").exists()
    assert not any(k.startswith(("intents/", "write.lock")) for k in s3_keys(moto_endpoint, url))

    stats = json.loads(ok(cli("stats", *at, "--json", endpoint=moto_endpoint)))
    assert len(stats["snapshots"]) == 3  # two, and restore's pre-restore snapshot
    pruned = json.loads(ok(cli("prune", "--keep-last", "1", *at, "--json", endpoint=moto_endpoint)))
    assert pruned["removed"] and "reclaimed_bytes" in pruned  # the safety rules keep more than 1
    rows = json.loads(ok(cli("list", *at, "--json", endpoint=moto_endpoint)))
    assert len(rows) == len(pruned["kept"]) < 3
    reports = json.loads(ok(cli("verify", "--all", "--quick", *at, "--json", endpoint=moto_endpoint)))
    assert all(r["ok"] for r in reports)
    # the lease was released (free), and no lock file or lease was left held
    mgr = SnapshotManager(db, url, endpoint_url=moto_endpoint)
    from chromasnap.snapshots.lease import read_locks

    assert all(r.info is not None and r.info.holder is None for r in read_locks(mgr.backend))


# slow (CI budget): export and restore --collection are in the default run on a local store (test_browse)
@pytest.mark.slow
def test_export_and_restore_collection_round_trip_on_s3(db: Path, tmp_path: Path, moto_endpoint: str) -> None:
    """`export` and `restore --collection` read a snapshot in S3 (through the real command):
    every record comes back bit-exact (ids, documents, metadata, float32 embedding bits)."""
    from test_browse import chroma, records_of

    url = fresh_url()
    at = ("--db", str(db), "--store", url)
    snap = json.loads(ok(cli("snapshot", *at, "--json", endpoint=moto_endpoint)))
    before = records_of(db, "coll1")

    out = tmp_path / "coll1.jsonl"
    ok(cli("export", snap["id"][:8], "coll1", "--out", str(out), *at, endpoint=moto_endpoint))
    import numpy as np

    exported = {}
    for line in out.read_text().splitlines():
        r = json.loads(line)
        emb = np.asarray(r["embedding"], np.float32).tobytes().hex()
        exported[r["id"]] = [r["document"], r["metadata"], emb]
    assert exported == before["records"] and len(exported) == 300

    chroma(db, 'client.delete_collection("coll1")')
    res = json.loads(
        ok(cli("restore", snap["id"][:8], "--collection", "coll1", *at, "--json", endpoint=moto_endpoint))
    )
    assert res["records"] == res["exact_embeddings"] == 300, res
    after = records_of(db, "coll1")
    assert after["records"] == before["records"] and after["metadata"] == before["metadata"]
    assert after["configuration"] == before["configuration"]


def test_catalog_updates_are_compare_and_swap_on_s3(moto_endpoint: str) -> None:
    """Another writer replacing catalog.json between this one's read and write (injected at
    `snapshot_ids`, which the update calls between the two: the instant cannot be hit
    otherwise) makes the conditional write fail with 412; the update reads again and merges,
    so neither entry is lost (a plain replace dropped the other writer's)."""
    from chromasnap.snapshots.repository import Repository
    from chromasnap.snapshots.stores import open_store

    url = fresh_url()
    repo = Repository.create(open_store(url, endpoint_url=moto_endpoint))
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    repo.catalog_add(a)  # no catalog yet: created with If-None-Match
    assert repo.catalog() == ({a}, None)
    real = repo.snapshot_ids
    raced: list[int] = []

    def racing() -> list[str]:
        if not raced:
            raced.append(1)
            Repository.open(open_store(url, endpoint_url=moto_endpoint)).catalog_add(c)
        return real()

    repo.snapshot_ids = racing  # type: ignore[method-assign]
    repo.catalog_add(b)
    assert raced and repo.catalog() == ({a, b, c}, None)
    repo.catalog_remove({a})
    assert repo.catalog() == ({b, c}, None)


def test_python_api_and_the_environment(db: Path, tmp_path: Path, moto_endpoint: str) -> None:
    """CHROMASNAP_STORE and AWS_ENDPOINT_URL name the store; the API takes the URL too."""
    url = fresh_url()
    env = {"CHROMASNAP_STORE": url, "AWS_ENDPOINT_URL": moto_endpoint}
    snap = json.loads(ok(cli("snapshot", "--db", str(db), "--json", env=env)))
    mgr = SnapshotManager(db, url, endpoint_url=moto_endpoint)
    assert [s.id for s in mgr.list()] == [snap["id"]] and mgr.store == url and mgr.store_path is None
    with mgr.before_write(reason="index docs") as pre:
        assert pre is not None
        intents = list((beside_db(db) / "intents").iterdir())
        assert len(intents) == 1  # the write intent is beside the database
    assert not list((beside_db(db) / "intents").iterdir())
    assert len(mgr.list()) == 2


def test_wrong_credentials_and_missing_bucket_are_one_line(db: Path, moto_endpoint: str) -> None:
    url = fresh_url()
    ok(cli("snapshot", "--db", str(db), "--store", url, endpoint=moto_endpoint))
    with moto_iam_checks(moto_endpoint):
        r = cli(
            "list", "--db", str(db), "--store", url, endpoint=moto_endpoint,
            env={"AWS_SECRET_ACCESS_KEY": "wrong-" + SECRET_KEY},
        )  # fmt: skip
        err = one_line_error(r, (1, 2))
        assert "secret key" in err or "credentials" in err
    r = cli("list", "--db", str(db), "--store", "s3://no-such-bucket-here/x", endpoint=moto_endpoint)
    err = one_line_error(r, (1, 2))
    assert "no-such-bucket-here" in err
    r = cli("list", "--store", f"s3://{ACCESS_KEY}:{SECRET_KEY}@bucket/x", endpoint=moto_endpoint)
    one_line_error(r, 2)
    r = cli("list", "--store", "gs://bucket/x")
    assert "scheme" in one_line_error(r, 2)


def test_a_server_ignoring_conditional_writes_is_refused_unless_no_cas(
    db: Path, rclone_endpoint: str
) -> None:
    url = f"s3://{RCLONE_BUCKET}/{fresh_url().rsplit('/', 1)[1]}"
    at = ("--db", str(db), "--store", url)
    r = cli("snapshot", *at, endpoint=rclone_endpoint)
    err = one_line_error(r, 1)
    assert "ignores conditional writes" in err and "--no-cas" in err
    snap = json.loads(ok(cli("--no-cas", "snapshot", *at, "--json", endpoint=rclone_endpoint)))
    rows = json.loads(ok(cli("list", *at, "--json", endpoint=rclone_endpoint)))
    assert [r["id"] for r in rows] == [snap["id"]]


@pytest.mark.slow  # ~90 s: two recoveries, each verifying and probing
def test_recover_onto_a_bare_machine(db: Path, tmp_path: Path, moto_endpoint: str) -> None:
    """The disaster-recovery path: nothing on the machine but credentials and the store URL."""
    url = fresh_url()
    ok(cli("snapshot", "--db", str(db), "--store", url, endpoint=moto_endpoint))
    run_sample("mutate", str(db), "--step", "2", "--fraction", "0.02")
    newest = json.loads(
        ok(cli("snapshot", "--db", str(db), "--store", url, "--json", endpoint=moto_endpoint))
    )
    expected = tree_bytes(db)
    for bare in (tmp_path / "new-machine" / "chroma", tmp_path / "empty" / "chroma"):
        if bare.parent.name == "empty":
            bare.mkdir(parents=True)
        r = cli("recover", "--db", str(bare), "--store", url, "--json", endpoint=moto_endpoint)
        res = json.loads(ok(r))
        assert res["action"] == "restored" and res["snapshot"] == newest["id"], res
        assert tree_bytes(bare) == expected
        assert json.loads(run_sample("count", str(bare))) == json.loads(run_sample("count", str(db)))
    shutil.rmtree(db)


@pytest.mark.slow  # ~40 s: two snapshots at once, then verify
def test_two_processes_snapshot_into_one_s3_store_at_once(
    db: Path, tmp_path: Path, moto_endpoint: str
) -> None:
    """The second waits for the first's lease; both succeed and everything verifies."""
    url = fresh_url()
    other = tmp_path / "other" / "chroma"
    shutil.copytree(db, other)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chromasnap.cli",
                "--endpoint-url",
                moto_endpoint,
                "snapshot",
                "--db",
                str(d),
                "--store",
                url,
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=base,
        )
        for d in (db, other)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    ids = sorted(json.loads(o[0])["id"] for o in outs)
    rows = json.loads(ok(cli("list", "--store", url, "--json", endpoint=moto_endpoint)))
    assert sorted(r["id"] for r in rows) == ids
    reports = json.loads(
        ok(cli("verify", "--all", "--quick", "--store", url, "--json", endpoint=moto_endpoint))
    )
    assert len(reports) == 2 and all(r["ok"] for r in reports)


def test_window_reads_equal_direct_reads(tmp_path: Path) -> None:
    """readahead.WindowReader (blobs of remote packs read in windows): the same bytes as a
    direct range read, fewer requests, a short object refused (over a LocalBackend: the
    reader only uses the contract)."""
    from chromasnap.snapshots import LocalBackend
    from chromasnap.snapshots.errors import StoreError
    from chromasnap.snapshots.readahead import WindowReader

    backend = LocalBackend(tmp_path / "s")
    backend.create()
    body = os.urandom(3 * (1 << 20) + 12345)
    backend.save("packs/aa/x", body)
    reader = WindowReader(backend, window=1 << 20, keep=2)
    reads = [(0, 100), (100, 5000), ((1 << 20) - 10, 20), ((1 << 20) + 7, 300_000), (len(body) - 5, 5)]
    reads += [(o, 4096) for o in range(0, len(body) - 4096, 65536)]
    for off, n in reads:
        assert reader.load("packs/aa/x", off, n) == body[off : off + n]
    assert reader.requests < len(reads) // 4
    with pytest.raises(StoreError):
        reader.load("packs/aa/x", len(body) - 5, 10)


def test_unlock_breaks_only_a_stale_lease(moto_endpoint: str) -> None:
    import time

    from chromasnap.snapshots.lease import LEASE_NAME, Holder, LeaseInfo, read_locks
    from chromasnap.snapshots.s3_backend import S3Backend

    url = fresh_url()
    backend = S3Backend(url, endpoint_url=moto_endpoint)
    now = time.time()
    live = LeaseInfo(LEASE_NAME, Holder(4242, "web-1", "chromasnap snapshot", "x"), "t", 3, now, now + 300)
    backend.save(LEASE_NAME, live.to_json(), create_only=True)
    assert "--stale" in one_line_error(cli("unlock", "--store", url, endpoint=moto_endpoint), 2)
    err = one_line_error(cli("unlock", "--stale", "--store", url, endpoint=moto_endpoint), 2)
    assert "not stale" in err and "pid 4242" in err
    _, tag = backend.load_versioned(LEASE_NAME)
    stale = LeaseInfo(LEASE_NAME, live.holder, "t", 3, now - 900, now - 600)
    backend.save(LEASE_NAME, stale.to_json(), if_match=tag)
    out = json.loads(ok(cli("unlock", "--stale", "--store", url, "--json", endpoint=moto_endpoint)))
    assert len(out["broken"]) == 1 and "pid 4242" in out["broken"][0]
    (rec,) = read_locks(backend)
    assert rec.info is not None and rec.info.holder is None and rec.info.generation == 3


@pytest.mark.slow  # ~1 min: a snapshot cut mid-upload (with retries), then snapshot, verify, prune
def test_server_gone_mid_snapshot_then_snapshot_verify_and_gc(db: Path, moto_endpoint: str) -> None:
    """The connection to the server is cut (a real loopback proxy, reset like a killed server)
    after a few packs went up: one line, no snapshot listed; once the dead writer's lease is
    broken (its expiry simulated: the one injected part), a snapshot and verify --all
    succeed and gc reclaims the orphaned packs."""
    from s3_servers import CuttingProxy

    from chromasnap.snapshots.repository import Repository
    from chromasnap.snapshots.stores import open_store

    url = fresh_url()
    Repository.open_or_create(open_store(url, endpoint_url=moto_endpoint), pack_size=1 << 20)
    at = ("--db", str(db), "--store", url)
    proxy = CuttingProxy(moto_endpoint, cut_after=4 << 20)
    r = cli("snapshot", *at, endpoint=proxy.endpoint, env={"CHROMASNAP_CONNECTIONS": "1"})
    assert proxy.cut_done.is_set()
    one_line_error(r, 1)
    assert json.loads(ok(cli("list", *at, "--json", endpoint=moto_endpoint))) == []
    orphans = {k for k in s3_keys(moto_endpoint, url) if k.startswith("packs/")}
    assert orphans  # some packs went up before the cut
    # the dead process's lease could not be released (the server was gone): it holds the store
    # until it expires (5 min), then `unlock --stale` breaks it; the expiry is simulated here
    import time

    from chromasnap.snapshots.lease import break_stale

    assert (
        len(break_stale(open_store(url, endpoint_url=moto_endpoint), clock=lambda: time.time() + 3600)) == 1
    )

    snap = json.loads(ok(cli("snapshot", *at, "--json", endpoint=moto_endpoint)))
    reports = json.loads(ok(cli("verify", "--all", "--quick", *at, "--json", endpoint=moto_endpoint)))
    assert [r["id"] for r in reports] == [snap["id"]] and reports[0]["ok"]
    ok(cli("prune", "--keep-last", "5", *at, "--json", endpoint=moto_endpoint))
    mgr = SnapshotManager(db, url, endpoint_url=moto_endpoint)
    indexed = {loc.pack for loc in mgr.repo.index().values()}
    packs = {k.rsplit("/", 1)[-1] for k in s3_keys(moto_endpoint, url) if k.startswith("packs/")}
    assert packs == indexed  # every orphan not reused by the snapshot is gone
    out = json.loads(ok(cli("verify", "--all", "--quick", *at, "--json", endpoint=moto_endpoint)))
    assert out[0]["ok"]
