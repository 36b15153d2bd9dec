"""Encrypted stores (issue 17) end to end: every command through the CLI on a real database,
nothing of the database readable in any stored byte, dedup kept, wrong passwords, tampered
and swapped objects, several keys, and a SIGKILL inside `key passwd` (at the fsutil.crash_point
seam between its two writes: a crash at that precise instant cannot be produced otherwise).
The restore's probe is the one full verify here (a chromadb child); the rest use --quick."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from s3_servers import aws_env, fresh_url, moto_endpoint, raw_client

from chromasnap.manifest import HnswSplitList
from chromasnap.snapshots import SnapshotManager
from chromasnap.snapshots.keys import FAST_KDF, WrongPassword
from conftest import run_sample, tree_bytes

FIXTURES = (aws_env, moto_endpoint)  # pytest fixtures from s3_servers

ENV = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}
ENV["CHROMASNAP_KDF"] = "fast"  # Argon2id t=1, m=1 MiB: tests only
PW = "correct horse battery staple"


def cli(*args: str, password: str | None = PW, **env: str) -> subprocess.CompletedProcess[str]:
    extra = {"CHROMASNAP_PASSWORD": password} if password is not None else {}
    return subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", *args],
        capture_output=True,
        text=True,
        env={**ENV, **extra, **env},
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, (r.args, r.stderr)
    return r


def one_line_error(r: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert r.returncode == code, (r.args, r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and text in r.stderr and "Traceback" not in r.stderr, r.stderr


def init(db: Path) -> Path:
    ok(cli("init", "--encrypt", "--db", str(db)))
    return db.parent / f"{db.name}.snapshots"


def needles(db: Path, mgr: SnapshotManager) -> dict[str, bytes]:
    """A document string, a metadata value, a record id and one embedding's float32 bytes,
    read from the live database (sqlite3, and data_level0.bin at the record's offset)."""
    con = sqlite3.connect(f"file:{db / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        doc = con.execute(
            "SELECT string_value FROM embedding_metadata WHERE key = 'chroma:document' LIMIT 1"
        ).fetchone()[0]
        topic = con.execute(
            "SELECT string_value FROM embedding_metadata WHERE key = 'topic' AND string_value = 'durable'"
        ).fetchone()[0]
        rid = con.execute("SELECT embedding_id FROM embeddings ORDER BY id LIMIT 1 OFFSET 17").fetchone()[0]
    finally:
        con.close()
    snap = mgr.get("latest")
    level0 = next(f for f in snap.files if f.layout == "hnsw-split" and f.size > 1 << 20)
    doc_list = mgr.repo.read_chunk_list(level0.chunk_list).list
    assert isinstance(doc_list, HnswSplitList)
    dim = next(c.dimension for c in snap.wal.collections if c.dimension)
    start = 7 * doc_list.record_size + doc_list.link_bytes
    vector = (db / level0.path).read_bytes()[start : start + 4 * dim]
    assert len(vector) == 4 * dim and len(set(vector)) > 32
    return {"document": doc.encode(), "metadata": topic.encode(), "id": rid.encode(), "vector": vector}


def scan(store: Path, found: dict[str, bytes]) -> list[str]:
    """(needle, file) for every needle found anywhere in any file of the store."""
    hits = []
    for path in sorted(p for p in store.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits += [f"{k} in {path.relative_to(store)}" for k, v in found.items() if v in data]
    return hits


def test_every_command_on_an_encrypted_store_and_nothing_readable(db: Path, tmp_path: Path) -> None:
    store = init(db)
    config = json.loads((store / "config.json").read_text())
    assert config["version"] == 4 and config["encryption"]["cipher"] == "aes-256-gcm"
    first = json.loads(ok(cli("snapshot", "--db", str(db), "--tag", "t1", "--json")).stdout)
    before = sum(p.stat().st_size for p in store.rglob("*") if p.is_file() and "tmp" not in p.parts)
    second = json.loads(ok(cli("snapshot", "--db", str(db), "--json")).stdout)
    after = sum(p.stat().st_size for p in store.rglob("*") if p.is_file() and "tmp" not in p.parts)
    # dedup kept: the unchanged database adds no blob, only a sealed document and catalog
    assert second["totals"]["new_bytes"] == 0 and after - before < 50_000, (before, after)

    rows = json.loads(ok(cli("list", "--db", str(db), "--json")).stdout)
    assert [r["id"] for r in rows] == [first["id"], second["id"]] and rows[0]["tags"] == ["t1"]
    shown = json.loads(ok(cli("show", first["id"][:8], "--db", str(db), "--json")).stdout)
    assert shown["id"] == first["id"]
    out = tmp_path / "copy"
    ok(cli("extract", first["id"][:10], str(out), "--db", str(db)))
    assert tree_bytes(out) == tree_bytes(db)  # byte-exact
    assert "quick ok" in ok(cli("verify", "latest", "--quick", "--db", str(db))).stdout
    ok(cli("diff", first["id"][:10], "--db", str(db), "--json"))  # against the live database
    ok(cli("restore", first["id"][:10], "--yes", "--db", str(db), "--json"))
    assert tree_bytes(db) == tree_bytes(out)

    mgr = SnapshotManager(db, password=lambda: PW)
    found = needles(db, mgr)
    assert all(v in b"".join(tree_bytes(out).values()) for v in found.values())  # real needles
    ok(cli("policy", "set", "--keep-last", "1", "--db", str(db)))
    assert b"keep_last" not in (store / "policy.json").read_bytes()  # the rules are sealed
    assert '"keep_last": 1' in ok(cli("policy", "show", "--db", str(db), "--json")).stdout
    assert scan(store, found) == []
    # nothing is stored plain: every object but config.json, key files and lock files is sealed
    readable = {"config.json", "lock", "lock.owner", "write.lock"}
    for path in (p for p in store.rglob("*") if p.is_file()):
        rel = path.relative_to(store).as_posix()
        if rel in readable or rel.startswith(("keys/", "tmp/")):
            continue
        data = path.read_bytes()
        assert data[:2] == b"\x01\x01" or data.endswith(b"CSNPACK2"), rel

    res = json.loads(ok(cli("prune", "--db", str(db), "--json")).stdout)
    assert res["removed"] and first["id"] in {e["id"] for e in res["removed"]}
    assert len(json.loads(ok(cli("list", "--db", str(db), "--json")).stdout)) == len(res["kept"])
    ok(cli("verify", "latest", "--quick", "--db", str(db)))
    assert scan(store, found) == []


def test_wrong_or_missing_password_is_one_line_exit_2_and_changes_nothing(db: Path) -> None:
    store = init(db)
    ok(cli("snapshot", "--db", str(db)))
    state = {k: v for k, v in tree_bytes(store).items() if not k.startswith(("lock", "tmp/"))}
    for args in (["list"], ["snapshot"], ["key", "list"]):
        one_line_error(cli(*args, "--db", str(db), password="wrong"), 2, "wrong password for store ")
    one_line_error(cli("snapshot", "--db", str(db), password=None), 2, "no password")
    pw_file = db.parent / "pw.txt"
    pw_file.write_text("wrong\n")
    one_line_error(cli("list", "--db", str(db), "--password-file", str(pw_file), password=None), 2, "wrong")
    pw_file.write_text(PW + "\n")
    ok(cli("list", "--db", str(db), "--password-file", str(pw_file), password=None))
    assert {k: v for k, v in tree_bytes(store).items() if not k.startswith(("lock", "tmp/"))} == state
    # a plain store never asks
    plain = db.parent / "plain.snapshots"
    ok(cli("snapshot", "--db", str(db), "--store", str(plain), password=None))
    assert not (plain / "keys").exists() and b"encryption" not in (plain / "config.json").read_bytes()


def test_tampered_and_swapped_objects_are_named(db: Path) -> None:
    store = init(db)
    a = json.loads(ok(cli("snapshot", "--db", str(db), "--tag", "a", "--json")).stdout)["id"]
    b = json.loads(ok(cli("snapshot", "--db", str(db), "--tag", "b", "--json")).stdout)["id"]
    # two snapshot documents swapped: each fails authentication under the other's name
    pa, pb = store / "snapshots" / f"{a}.json", store / "snapshots" / f"{b}.json"
    da, db_ = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(db_)
    pb.write_bytes(da)
    r = cli("list", "--db", str(db), "--json")
    assert (
        f"damaged object snapshots/{a}.json" in r.stderr and f"damaged object snapshots/{b}.json" in r.stderr
    )
    one_line_error(cli("verify", a[:12], "--quick", "--db", str(db)), 1, f"damaged object snapshots/{a}.json")
    pa.write_bytes(da)
    pb.write_bytes(db_)
    # one byte changed inside a sealed blob: verify names the blob and its pack
    mgr = SnapshotManager(db, password=lambda: PW)
    key, loc = next(iter(sorted(mgr.repo.index().items())))
    pack = store / "packs" / loc.pack[:2] / loc.pack
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x20
    pack.write_bytes(bytes(data))
    r = cli("verify", "latest", "--quick", "--db", str(db))
    assert r.returncode == 1 and key[:16] in r.stdout + r.stderr and loc.pack[:16] in r.stdout + r.stderr
    assert "authentication failed" in r.stdout + r.stderr
    # damaged retention rules are reported, and leave the rules unset (keep all), not the store shut
    ok(cli("policy", "set", "--keep-last", "3", "--db", str(db)))
    policy = store / "policy.json"
    policy.write_bytes(policy.read_bytes()[:-1] + b"\x00")
    r = ok(cli("list", "--db", str(db)))
    assert "damaged object policy.json" in r.stderr and "unset" in r.stderr
    one_line_error(cli("prune", "--db", str(db)), 2, "no retention rules")


@pytest.mark.slow
def test_two_keys_open_the_store_and_the_last_key_stays(db: Path) -> None:
    store = init(db)
    ok(cli("snapshot", "--db", str(db)))
    first = json.loads(ok(cli("key", "list", "--db", str(db), "--json")).stdout)
    r = ok(cli("key", "add", "--db", str(db), "--json", CHROMASNAP_NEW_PASSWORD="second password"))
    second = json.loads(r.stdout)["id"]
    ok(cli("list", "--db", str(db), password="second password"))
    keys_ = json.loads(ok(cli("key", "list", "--db", str(db), "--json", password="second password")).stdout)
    assert {k["id"] for k in keys_} == {first[0]["id"], second}
    assert [k["id"] for k in keys_ if k["current"]] == [second]
    one_line_error(cli("key", "remove", second, "--db", str(db), password="second password"), 2, "refusing")
    ok(cli("key", "remove", first[0]["id"], "--db", str(db), password="second password"))
    one_line_error(cli("list", "--db", str(db)), 2, "wrong password")  # the first is gone
    ok(cli("verify", "latest", "--quick", "--db", str(db), password="second password"))
    assert [p.name for p in (store / "keys").iterdir()] == [f"{second}.json"]
    (store / "keys").rename(store.parent / "keys-away")  # every key file gone: said so
    one_line_error(cli("list", "--db", str(db), password="second password"), 1, "has no key files")
    (store.parent / "keys-away").rename(store / "keys")
    # the config edited to say "plain" does not make the store plain
    cfg = json.loads((store / "config.json").read_text())
    cfg.pop("encryption")
    cfg["version"] = 3
    (store / "config.json").write_text(json.dumps(cfg))
    one_line_error(cli("snapshot", "--db", str(db), password=None), 1, "has key files")


def test_sigkill_inside_key_passwd_leaves_a_working_key(db: Path) -> None:
    init(db)
    ok(cli("snapshot", "--db", str(db)))
    r = cli(
        "key",
        "passwd",
        "--db",
        str(db),
        CHROMASNAP_NEW_PASSWORD="new",
        CHROMASNAP_CRASH_AT="keys.passwd.written",
    )
    assert r.returncode == -9, r.stderr
    ok(cli("list", "--db", str(db)))  # both passwords open it: never neither
    ok(cli("list", "--db", str(db), password="new"))
    r = ok(cli("key", "passwd", "--db", str(db), "--json", CHROMASNAP_NEW_PASSWORD="newer"))
    one_line_error(cli("list", "--db", str(db)), 2, "wrong password")
    ok(cli("verify", "latest", "--quick", "--db", str(db), password="newer"))
    assert json.loads(r.stdout)["id"]


@pytest.mark.parametrize("encrypt", [True, False])
def test_init_refuses_an_existing_store(db: Path, encrypt: bool) -> None:
    ok(cli("snapshot", "--db", str(db)))
    flag = "--encrypt" if encrypt else "--no-encrypt"
    one_line_error(cli("init", flag, "--db", str(db)), 2, "already exists")


def test_the_python_api_asks_the_password_once_per_manager(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHROMASNAP_KDF", "fast")
    asked: list[int] = []

    def password() -> str:
        asked.append(1)
        return PW

    mgr = SnapshotManager(db, password=password)
    assert mgr.init(encrypt=True).codec.encrypted
    first = mgr.snapshot()
    mgr.set_policy(mgr.policy().model_copy(update={"keep_last": 1}))
    mgr.snapshot()
    assert mgr.prune().removed[0].id == first.id
    assert len(asked) == 1  # init only: the key is unwrapped once, not at every opening
    again = SnapshotManager(db, password=password)
    assert again.policy().keep_last == 1 and len(again.list()) == 1 and len(asked) == 2
    with pytest.raises(WrongPassword, match="wrong password"):
        SnapshotManager(db, password=lambda: "nope").list()


# --- issue 17, continued: an encrypted store on S3 (moto on loopback), and SIGKILLs at random
# instants of an encrypted snapshot and of key add / passwd -------------------------------------


def s3_cli(endpoint: str, cache: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}  # aws_env's test values
    return cli("--endpoint-url", endpoint, *args, XDG_CACHE_HOME=str(cache), **aws, **env)


def bucket_bytes(endpoint: str, url: str) -> dict[str, bytes]:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    client = raw_client(endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k[len(prefix) + 1 :]: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def s3_round_trip(db: Path, tmp_path: Path, endpoint: str, every_command: bool) -> None:
    url, cache = fresh_url(), tmp_path / "cache"
    at = ("--db", str(db), "--store", url)
    made = json.loads(ok(s3_cli(endpoint, cache, "init", *at, "--json")).stdout)
    assert made["encrypted"]  # a store created for a remote URL is encrypted by default
    first = json.loads(ok(s3_cli(endpoint, cache, "snapshot", *at, "--tag", "one", "--json")).stdout)
    out = tmp_path / "out"
    ok(s3_cli(endpoint, cache, "extract", first["id"][:10], str(out), *at))
    assert tree_bytes(out) == tree_bytes(db)  # byte-exact out of the bucket
    rows = json.loads(ok(s3_cli(endpoint, cache, "list", *at, "--json")).stdout)
    assert [r["id"] for r in rows] == [first["id"]]
    if every_command:
        run_sample("mutate", str(db), "--step", "1", "--fraction", "0.02")
        second = json.loads(ok(s3_cli(endpoint, cache, "snapshot", *at, "--json")).stdout)
        assert 0 < second["totals"]["new_bytes"] < first["totals"]["new_bytes"] / 2  # dedup kept
        shown = json.loads(ok(s3_cli(endpoint, cache, "show", "latest", *at, "--json")).stdout)
        assert shown["id"] == second["id"]
        diff = json.loads(
            ok(s3_cli(endpoint, cache, "diff", first["id"][:10], "latest", *at, "--json")).stdout
        )
        assert diff
        reports = json.loads(ok(s3_cli(endpoint, cache, "verify", "latest", *at, "--json")).stdout)
        assert all(r["ok"] for r in reports), reports  # objects and the chromadb probe
        ok(s3_cli(endpoint, cache, "restore", first["id"][:10], "--yes", *at, "--json"))
        assert tree_bytes(db) == tree_bytes(out)
        pruned = json.loads(ok(s3_cli(endpoint, cache, "prune", "--keep-last", "1", *at, "--json")).stdout)
        assert pruned["removed"]
    assert "quick ok" in ok(s3_cli(endpoint, cache, "verify", "--all", "--quick", *at)).stdout
    one_line_error(s3_cli(endpoint, cache, "list", *at, password="wrong"), 2, "wrong password for store ")
    found = needles(db, SnapshotManager(db, url, endpoint_url=endpoint, password=lambda: PW))
    assert all(v in b"".join(tree_bytes(out).values()) for v in found.values())  # real needles
    objects = bucket_bytes(endpoint, url)
    assert objects and not [
        f"{k} in {n}" for n, data in objects.items() for k, v in found.items() if v in data
    ]
    assert scan(cache, found) == []  # the local cache and scratch of the remote store too


# slow (CI budget): the default run keeps test_copy's new encrypted store on S3 and its scan
@pytest.mark.slow
def test_an_encrypted_store_on_s3_round_trips_and_nothing_is_readable(
    db: Path, tmp_path: Path, moto_endpoint: str
) -> None:
    """The lean form: init (encrypted by default for s3://), snapshot, extract, list, verify."""
    s3_round_trip(db, tmp_path, moto_endpoint, every_command=False)


@pytest.mark.slow  # ~1-2 min: a dozen subprocesses, a chromadb probe and a restore
def test_every_command_on_an_encrypted_store_on_s3(db: Path, tmp_path: Path, moto_endpoint: str) -> None:
    s3_round_trip(db, tmp_path, moto_endpoint, every_command=True)


# The child opens the store (the KDF), says so, then runs one operation: the parent kills it
# after a random delay within that operation's measured duration.
CHILD = """
import sys
from chromasnap.snapshots import SnapshotManager
db, store, op, old, new = sys.argv[1:]
mgr = SnapshotManager(db, store, password=lambda: old)
mgr.list()
print("ready", flush=True)
if op == "passwd":
    mgr.change_password(new)
elif op == "add":
    mgr.add_key(new)
else:
    mgr.snapshot()
print("done", flush=True)
"""
KDF_ENV = {
    **ENV,
    "CHROMASNAP_KDF": "argon2id:t=1,m=8192,p=1",
}  # a few ms: instants fall in the KDF and the writes


def killed_after(delay: float | None, *args: str) -> float:
    """Run CHILD with `args`; SIGKILL it `delay` seconds after it opened the store (None: let it
    finish). The seconds from ready to the end."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, text=True, env=KDF_ENV
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    t0 = time.monotonic()
    if delay is None:
        assert proc.stdout.readline() == "done\n"
    else:
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=300)
    assert proc.returncode in (0, -signal.SIGKILL)
    return time.monotonic() - t0


def opens_with(db: Path, store: Path, *passwords: str) -> list[str]:
    good = []
    for p in passwords:
        try:
            SnapshotManager(db, store, password=lambda p=p: p).list()  # type: ignore[misc]
        except WrongPassword:
            continue
        good.append(p)
    return good


def kill_snapshots(db: Path, tmp_path: Path, instants: int, seed: int) -> None:
    """An encrypted snapshot into a fresh store killed at random instants: the store opens,
    verifies, and takes the next snapshot."""
    rng = random.Random(seed)
    whole = None
    for i in range(instants + 1):
        store = tmp_path / f"store{i}"
        SnapshotManager(db, store, password=lambda: PW).init(encrypt=True, kdf=FAST_KDF)
        if whole is None:  # the first run, uncut, measures the operation
            whole = killed_after(None, str(db), str(store), "snapshot", PW, PW)
            continue
        killed_after(rng.uniform(0.05, 1.0) * whole, str(db), str(store), "snapshot", PW, PW)
        mgr = SnapshotManager(db, store, password=lambda: PW)
        assert all(r.ok for r in mgr.verify_many(quick=True))  # whatever it left is whole
        mgr.snapshot()
        assert all(r.ok for r in mgr.verify_many(quick=True))


def kill_key_changes(db: Path, instants: int, seed: int) -> None:
    """`key passwd` and `key add` killed at random instants: the store opens with the old or
    the new password, never neither, and verifies."""
    rng = random.Random(seed)
    measure = db.parent / "measure.snapshots"  # uncut runs, apart: each its own key files
    SnapshotManager(db, measure, password=lambda: "pw0").init(encrypt=True, kdf=FAST_KDF)
    whole = {op: killed_after(None, str(db), str(measure), op, "pw0", "x") for op in ("add", "passwd")}
    store = db.parent / "keys.snapshots"
    mgr = SnapshotManager(db, store, password=lambda: "pw0")
    mgr.init(encrypt=True, kdf=FAST_KDF)
    mgr.snapshot()
    current = "pw0"
    for i in range(instants):
        op = "passwd" if i % 3 != 2 else "add"
        new = f"pw{i + 1}"
        killed_after(rng.uniform(0, 1.2) * whole[op], str(db), str(store), op, current, new)
        good = opens_with(db, store, current, new)
        assert good, f"{op} killed at instant {i}: neither {current!r} nor {new!r} opens the store"
        if op == "add":
            assert current in good  # add never takes a password away
        current = new if new in good else current
        assert all(
            r.ok for r in SnapshotManager(db, store, password=lambda c=current: c).verify_many(quick=True)
        )  # type: ignore[misc]


def test_sigkill_at_random_instants_of_an_encrypted_snapshot_and_key_changes(
    db: Path, tmp_path: Path
) -> None:
    """The lean form: two instants of a snapshot, three of passwd/add."""
    kill_snapshots(db, tmp_path, instants=2, seed=1)
    kill_key_changes(db, instants=3, seed=2)


@pytest.mark.slow  # ~2-3 min: a child process and a verify per instant
def test_sigkill_at_many_random_instants_of_an_encrypted_snapshot_and_key_changes(
    db: Path, tmp_path: Path
) -> None:
    kill_snapshots(db, tmp_path, instants=8, seed=11)
    kill_key_changes(db, instants=12, seed=12)
