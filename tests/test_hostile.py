"""A store is hostile input: crafted stores (real format, ids recomputed) and the safe outcome.

Each finding of issue 12 is a case in bench/hostile.py (shared with bench/torture.py), run
here through the real CLI in a subprocess: the exit code, one line on stderr naming the
object, no raw control character, nothing outside the target touched, and bounded memory
(`prlimit --as`) where a case used to exhaust it. The rest (write intents, verify beside
prune, children outliving chromasnap, gc's scratch, export's mode, the SQLite deadline)
follow. Most cases need no chromadb: one small database is snapshotted once per module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chromasnap.snapshots import SnapshotManager, StoreError
from conftest import tree_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import contextlib

import hostile

ENV = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}
GIB = 1 << 30
MEMORY = {
    "bomb-declared": GIB,
    "bomb-undeclared": GIB,
    "hnsw-record-size": GIB,
    "huge-record-chunk": GIB,
    "huge-document": GIB,
    "doc-symlink-dev-zero": GIB,
    "deep-snapshot": GIB,
}
"""Cases run under `prlimit --as`: an extract needs about 400 MB of address space here
(threads, OpenBLAS); these cases took 2.6 to 5.3 GB before."""


def cli(
    *args: str, memory: int | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    limit = ["prlimit", f"--as={memory}"] if memory and shutil.which("prlimit") else []
    return subprocess.run(
        [*limit, sys.executable, "-m", "chromasnap.cli", *args],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def pristine(base_db: Path, tmp_path_factory: pytest.TempPathFactory) -> hostile.Base:
    """A copy of the base database and a store with two snapshots of it (made once)."""
    root = tmp_path_factory.mktemp("hostile")
    db = root / "chroma"
    shutil.copytree(base_db, db, symlinks=True)
    mgr = SnapshotManager(db, root / "store")
    ids = [mgr.snapshot(tags=["first"]).id, mgr.snapshot(tags=["second"]).id]
    return hostile.Base(db=db, store=root / "store", work=root, ids=ids)


@pytest.fixture
def base(pristine: hostile.Base, tmp_path: Path) -> hostile.Base:
    return hostile.Base(db=pristine.db, store=pristine.store, work=tmp_path, ids=pristine.ids)


@pytest.mark.parametrize("build", hostile.CLI_CASES, ids=[f.__name__ for f in hostile.CLI_CASES])
def test_crafted_store(build, base: hostile.Base) -> None:  # type: ignore[no-untyped-def]
    if build is hostile.foreign_owner and os.geteuid() != 0:
        pytest.skip("making a store another user owns needs root")
    case = build(base)
    r = cli(*case.args, memory=MEMORY.get(case.name))
    assert hostile.outcome_problems(case, r.returncode, r.stdout, r.stderr) == [], (
        case.args,
        r.stdout[-2000:],
    )


def test_other_snapshots_still_list_and_restore_beside_a_damaged_one(base: hostile.Base) -> None:
    """A damaged document, index file and blob cost only what needs them."""
    case = hostile.bomb_declared(base)  # a snapshot needing a bomb blob
    store = Path(case.args[-1])
    (store / "snapshots" / f"{'a' * 64}.json").write_bytes(b"[" * 10_000)
    hostile.Crafter(store).index(b"[" * 10_000)
    r = cli("list", "--store", str(store), "--json")
    assert r.returncode == 0, r.stderr
    listed = {row["id"] for row in json.loads(r.stdout)}
    assert set(base.ids) <= listed
    out = base.work / "good-out"
    r = cli("extract", base.ids[0], str(out), "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert tree_bytes(out) == tree_bytes(base.db)
    db = base.work / "restored"
    shutil.copytree(base.db, db)
    (db / "chroma.sqlite3").write_bytes(b"not what it was")
    r = cli(
        "restore", base.ids[0], "--yes", "--no-verify", "--no-backup", "--db", str(db), "--store", str(store)
    )
    assert r.returncode == 0, r.stderr
    assert tree_bytes(db) == tree_bytes(base.db)
    r = cli("verify", "--all", "--quick", "--store", str(store), "--json")
    verdicts = {row["id"]: row["ok"] for row in json.loads(r.stdout)}
    assert all(verdicts[i] for i in base.ids) and not all(verdicts.values())


def test_foreign_owner_is_read_with_the_flag(base: hostile.Base) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a store another user owns needs root")
    case = hostile.foreign_owner(base)
    store = case.args[-1]
    assert "--allow-foreign-owner" in cli("list", "--store", store).stderr
    r = cli("list", "--store", store, "--json", "--allow-foreign-owner")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 2, r.stderr
    mgr = SnapshotManager(None, store, allow_foreign_owner=True)
    assert len(mgr.list()) == 2
    with pytest.raises(StoreError, match="owned by uid 65534"):
        SnapshotManager(None, store).list()


def test_markup_and_control_characters_are_text(base: hostile.Base) -> None:
    """What the terminal would have obeyed is shown escaped; --json keeps the exact strings."""
    store, sid = hostile.injected_snapshot(base, "markup")
    r = cli("show", sid, "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\\x1b]0;owned\\x07" in r.stdout and "[/oops]" in r.stdout
    r = cli("list", "--store", str(store), "--json")
    row = next(x for x in json.loads(r.stdout) if x["id"] == sid)
    assert row["reason"] == hostile.INJECTED["reason"] and row["tags"] == hostile.INJECTED["tags"]
    r = cli("find", "\x1b[2Jnone", "--store", str(store))
    assert r.returncode == 1 and "\x1b" not in r.stdout + r.stderr and "\\x1b[2Jnone" in r.stdout


def test_peek_clips_huge_values(base: hostile.Base) -> None:
    case = hostile.huge_metadata_peek(base)
    r = cli(*case.args, env={"COLUMNS": "2000"})  # one line per row: the text is not folded
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) < 20_000 and f"({20 << 20} characters)" in r.stdout
    r = cli(*case.args, "--json")  # the JSON is the whole record
    assert len(json.loads(r.stdout)["records"][0]["metadata"]["topic"]) == 20 << 20


def test_recursive_view_reads_are_interrupted_by_the_deadline(tmp_path: Path) -> None:
    """The backstop behind the table checks: a statement that never ends is interrupted."""
    from chromasnap.snapshots.sqlite_copy import open_private

    path = tmp_path / "x.sqlite3"
    con = sqlite3.connect(path)
    con.execute(
        "CREATE VIEW forever AS WITH RECURSIVE n(i) AS "
        "(SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n"
    )
    con.close()
    con = open_private(path, seconds=0.5)
    with pytest.raises(sqlite3.OperationalError, match="interrupted"):
        con.execute("SELECT count(*) FROM forever").fetchone()


# --- write intents --------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_crafted_write_intents_are_reported_not_acted_upon(base: hostile.Base) -> None:
    """A crafted intent naming a dead pid on this host made recover replace a healthy
    database with an old snapshot. Now each must be this database's own, and all is said."""
    store, db = base.work / "intent-store", base.work / "intent-db"
    shutil.copytree(base.store, store)
    shutil.copytree(base.db, db)
    st = os.stat(db)
    common = {
        "pid": _dead_pid(),
        "host": socket.gethostname(),
        "start": None,
        "started_at": "2030-01-01T00:00:00Z",
        "reason": "crafted",
    }
    intents = {
        "v1": {**common, "snapshot": base.ids[0]},
        "inode": {
            **common,
            "version": 2,
            "db": str(db),
            "db_dev": st.st_dev,
            "db_ino": st.st_ino + 1,
            "snapshot": base.ids[0],
        },
        "later": {
            **common,
            "version": 2,
            "db": str(db),
            "db_dev": st.st_dev,
            "db_ino": st.st_ino,
            "snapshot": base.ids[0],
            "started_at": "2000-01-01T00:00:00Z",
        },
        "missing": {
            **common,
            "version": 2,
            "db": str(db),
            "db_dev": st.st_dev,
            "db_ino": st.st_ino,
            "snapshot": "9" * 64,
        },
        "garbage": [[[[]]]],
    }
    (store / "intents").mkdir()
    for name, doc in intents.items():
        (store / "intents" / f"{name}.json").write_text(json.dumps(doc))
    before = tree_bytes(db)
    r = subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", "recover", "--db", str(db), "--store", str(store), "--json"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["action"] == "none"
    warnings = r.stderr.strip().splitlines()
    for name, why in (
        ("v1", "older chromasnap"),
        ("inode", "not the one it was written for"),
        ("later", "taken after the intent"),
        ("missing", "not in the store"),
        ("garbage", "unreadable"),
    ):
        assert any(f"intents/{name}.json" in w and why in w for w in warnings), (name, warnings)
    assert tree_bytes(db) == before
    assert sorted(p.name for p in (store / "intents").iterdir()) == sorted(f"{n}.json" for n in intents)


def test_trusted_intent_is_this_databases_own(base: hostile.Base, tmp_path: Path) -> None:
    from chromasnap.snapshots.guard import trusted_intents, write_intent
    from chromasnap.snapshots.local_backend import LocalBackend

    store = tmp_path / "s"
    shutil.copytree(base.store, store)
    backend = LocalBackend(store)
    snap = SnapshotManager(None, store).get(base.ids[-1])
    name = write_intent(backend, snap.id, "mine", base.db)
    doc = json.loads((store / name).read_text())
    assert {"version", "db", "db_dev", "db_ino", "snapshot", "started_at"} <= set(doc)
    doc["pid"] = _dead_pid()
    (store / name).write_text(json.dumps(doc))
    trusted, problems = trusted_intents(
        backend, base.db, lambda sid: snap.created_at if sid == snap.id else None
    )
    assert [i.name for i in trusted] == [name] and problems == []
    trusted, _ = trusted_intents(backend, tmp_path / "other", lambda sid: snap.created_at)
    assert trusted == []


# --- verify beside prune ---------------------------------------------------------------------


def test_verify_beside_prune_never_records_damage(db: Path) -> None:
    """verify --all --quick beside prune failed in 6 of 6 rounds (once on a snapshot prune
    kept) and recorded "damaged". Here prune (a real one, in a child) runs in the middle of
    a verify that has already read the index: it removes snapshots and repacks the blobs
    of the one it keeps."""
    from chromasnap.manifest import RetentionPolicy

    mgr = SnapshotManager(db)
    for _ in range(3):
        (db / "extra.bin").write_bytes(os.urandom(200_000))  # each snapshot owns some blobs
        mgr.snapshot()
    ran: list[int] = []

    def prune_now(_n: int) -> None:
        if not ran:
            ran.append(1)
            code = (
                "import sys\nfrom chromasnap.manifest import RetentionPolicy\n"
                "from chromasnap.snapshots import SnapshotManager\n"
                "SnapshotManager(sys.argv[1]).prune(RetentionPolicy(keep_last=1))\n"
            )
            subprocess.run([sys.executable, "-c", code, str(db)], check=True, env=ENV, timeout=300)

    reader = SnapshotManager(db)
    reports = reader.verify_many(None, quick=True, progress=prune_now)
    assert ran and all(r.ok for r in reports), [r.detail for r in reports if not r.ok]
    left = SnapshotManager(db).list()
    assert len(left) == 1 and left[0].id in {r.id for r in reports}
    assert all(v.ok for s in left for v in s.verifications)
    assert RetentionPolicy  # the policy a real prune uses


# --- children, scratch, export ------------------------------------------------------------


def _fake_python(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def _children_running(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def killed_later() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_child_dies_with_chromasnap(base: hostile.Base, tmp_path: Path, killed_later: list[int]) -> None:
    """export's chromadb child kept running after chromasnap was killed."""
    marker = f"0.{os.getpid()}{time.monotonic_ns()}"  # a unique argument sleep accepts
    python = _fake_python(tmp_path, f"exec sleep 300 {marker}")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chromasnap.cli",
            "export",
            base.ids[-1],
            "coll0",
            "--out",
            str(tmp_path / "o.jsonl"),
            "--python",
            python,
            "--store",
            str(base.store),
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_later.append(proc.pid)
    deadline = time.monotonic() + 120
    while not _children_running(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    children = _children_running(marker)
    killed_later.extend(children)
    assert children, "the child never started"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while _children_running(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _children_running(marker) == []


def test_export_child_has_a_timeout_and_the_file_is_private(base: hostile.Base, tmp_path: Path) -> None:
    hang = _fake_python(tmp_path, "exec sleep 300")
    r = cli(
        "export",
        base.ids[-1],
        "coll0",
        "--out",
        str(tmp_path / "a.jsonl"),
        "--python",
        hang,
        "--timeout",
        "2",
        "--store",
        str(base.store),
    )
    assert r.returncode == 1 and "did not finish within 2 s" in r.stderr, r.stderr
    writes = _fake_python(tmp_path, 'echo "{}" > "$5"; echo \'CHROMASNAP-COLLECTION {"records": 1}\'')
    out = tmp_path / "b.jsonl"
    r = cli(
        "export", base.ids[-1], "coll0", "--out", str(out), "--python", writes, "--store", str(base.store)
    )
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    from chromasnap.snapshots.browse import CHILD_TIMEOUT

    assert CHILD_TIMEOUT > 0  # export and restore --collection default to it


def test_gc_cleans_every_kind_of_scratch(base: hostile.Base, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(base.store, store)
    tmp = store / "tmp"
    dead, me = _dead_pid(), os.getpid()
    for kind in ("export", "peek", "diff", "find", "restore-collection", "verify-0123456789ab"):
        (tmp / f"{kind}-{dead}-abcd").mkdir()
        (tmp / f"{kind}-{dead}-abcd" / "x").write_text("x")
    (tmp / f"export-{me}-live").mkdir()  # a reader still running
    (tmp / "not-ours").mkdir()
    r = cli("prune", "--keep-last", "2", "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp.iterdir()) == sorted([f"export-{me}-live", "not-ours"])
