"""restore and recover where Chroma is deployed: a live `chroma run` server, symlinked and
bind-mounted volumes at awkward paths, databases owned by another user. Real servers, real
mounts (this machine runs as root), real uids, real chromadb."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_verify import _truncate_level0

from chromasnap.snapshots import SnapshotManager
from chromasnap.snapshots.restore import RestoreRefused
from chromasnap.snapshots.swap import decode_mountinfo_path, is_mount_point, mountinfo_points
from conftest import counts, run_sample, tree_bytes

ENV = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}
CHROMA = str(Path(sys.executable).parent / "chroma")
OTHER_UID = 4242
THIRD_UID = 4343


def cli(*args: str | bytes, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", *args],
        capture_output=True,
        text=True,
        errors="surrogateescape",  # a path that is not UTF-8 is printed as its bytes, as ls does
        env={**ENV, **(env or {})},
        timeout=600,
        check=False,
    )


# --- a live `chroma run` server ---------------------------------------------------------

HTTP_WRITER = """
import json, sys, numpy as np, chromadb
client = chromadb.HttpClient(host="127.0.0.1", port=int(sys.argv[1]))
col = client.get_or_create_collection("served", embedding_function=None)
rng = np.random.default_rng(3)
acked = 0
for b in range(int(sys.argv[2])):
    col.add(ids=[f"s{b}-{k}" for k in range(20)], documents=["served"] * 20,
            embeddings=rng.standard_normal((20, 384), dtype=np.float32))
    acked += 20
print(json.dumps({"acked": acked, "count": col.count()}))
"""

KILLED_GUARD = """
import os, signal, sys
from chromasnap.snapshots import SnapshotManager
with SnapshotManager(sys.argv[1]).before_write(reason="ingest"):
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def chroma_server(db: Path, log: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`chroma run` on loopback in a process group of its own, killed at the end."""
    port = _free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [CHROMA, "run", "--path", str(db), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**ENV, "ANONYMIZED_TELEMETRY": "False"},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"chroma run did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield proc, port
    finally:
        stop_server(proc)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def http_write(port: int, batches: int) -> dict[str, int]:
    r = subprocess.run(
        [sys.executable, "-c", HTTP_WRITER, str(port), str(batches)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out: dict[str, int] = json.loads(r.stdout)
    return out


def test_recover_refuses_while_a_chroma_server_has_the_database_open(tmp_path: Path) -> None:
    db = tmp_path / "chroma"
    run_sample("build", str(db), "--records", "200")
    mgr = SnapshotManager(db)
    mgr.snapshot()
    r = subprocess.run([sys.executable, "-c", KILLED_GUARD, str(db)], capture_output=True, check=False)
    assert r.returncode == -signal.SIGKILL  # a guarded write died, leaving its intent
    pre_write = SnapshotManager(db).list()[-1]
    intents = mgr.store_path / "intents"
    assert len(list(intents.iterdir())) == 1
    inode = db.stat().st_ino
    with chroma_server(db, tmp_path / "server.log") as (server, port):
        acked = http_write(port, 15)["acked"]
        r = cli("recover", "--db", str(db))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert f"pid {server.pid} (" in lines[0] and "chroma run" in lines[0]
        assert "a writer is running" in lines[0] and "--keep-interrupted" in lines[0]
        with pytest.raises(RestoreRefused, match=f"pid {server.pid} "):
            SnapshotManager(db).recover()
        assert db.stat().st_ino == inode and SnapshotManager(db).kept() == []  # nothing swapped
        assert len(list(intents.iterdir())) == 1
        assert http_write(port, 0)["count"] == acked  # every acknowledged record is there
    r = cli("recover", "--db", str(db), "--json")  # the server stopped: recover proceeds
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["action"] == "restored" and out["snapshot"] == pre_write.id
    assert counts(db) == {"coll0": 200}
    assert counts(Path(out["kept_path"]))["served"] == acked  # rolled back, and kept


# slow (CI budget): a served database's snapshot, verified in full against a real `chroma run`
@pytest.mark.slow
def test_snapshots_of_a_database_a_chroma_server_is_writing_verify(tmp_path: Path) -> None:
    """A `chroma run` server written through HttpClient while snapshots are taken: each
    snapshot verifies in full (opened by chromadb in a child) and holds a prefix of the
    acknowledged batches; health names the server as a process holding the database."""
    db = tmp_path / "chroma"
    run_sample("build", str(db), "--records", "200")
    with chroma_server(db, tmp_path / "server.log") as (server, port):
        http_write(port, 1)  # the collection exists before the first snapshot
        writer = subprocess.Popen(
            [sys.executable, "-c", HTTP_WRITER, str(port), "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        mgr = SnapshotManager(db)
        taken = [mgr.snapshot(reason="while served") for _ in range(3)]
        _out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err[-2000:]
        health = cli("health", "--db", str(db), "--json")
        report = json.loads(health.stdout)
        assert f"pid {server.pid} " in json.dumps(report.get("holders", [])), health.stdout
    for snap in taken:
        v = SnapshotManager(db).verify(snap.id)
        assert v.ok, v.detail
        served = next(c for c in snap.wal.collections if c.name == "served")
        assert served.records is not None and served.records % 20 == 0  # whole batches only


def test_recover_refuses_to_replace_a_broken_database_a_process_has_open(db: Path) -> None:
    mgr = SnapshotManager(db)
    mgr.snapshot()
    _truncate_level0(db)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; f = open(sys.argv[1], 'rb'); print('open', flush=True); time.sleep(120)",
            str(db / "chroma.sqlite3"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        before = tree_bytes(db)
        with pytest.raises(RestoreRefused, match=rf"pid {holder.pid} .*needs recovering"):
            mgr.recover()
        assert tree_bytes(db) == before and mgr.kept() == []
    finally:
        holder.kill()
        holder.wait()
    assert mgr.recover().action == "restored"


def test_a_holder_is_found_through_another_path(db: Path, tmp_path: Path) -> None:
    """A process that opened the database through another path (here a bind mount of it, as
    a container sees its volume) is found by the identity of the file it holds."""
    from chromasnap.snapshots.guard import open_by

    alias = tmp_path / "alias"
    alias.mkdir()
    if subprocess.run(["mount", "--bind", str(db), str(alias)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); print('open', flush=True); "
            "time.sleep(120)",
            str(alias / "chroma.sqlite3"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        assert os.readlink(f"/proc/{holder.pid}/fd/3").startswith(str(alias))  # not under db
        assert [pid for pid, _ in open_by(db)] == [holder.pid]
    finally:
        holder.kill()
        holder.wait()
        subprocess.run(["umount", str(alias)], check=False)


# --- symlinked databases -------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout", ["db-is-a-symlink", pytest.param("parent-is-a-symlink", marks=pytest.mark.slow)]
)
def test_recover_through_a_symlinked_database(db: Path, tmp_path: Path, layout: str) -> None:
    real = tmp_path / "real" / "chromadata"
    real.parent.mkdir()
    shutil.move(db, real)
    real.chmod(0o750)
    app = tmp_path / "app"
    if layout == "db-is-a-symlink":  # app/db -> ../real/chromadata
        app.mkdir()
        path = app / "db"
        path.symlink_to(Path("..") / "real" / "chromadata")
        link = path
    else:  # app -> real: app/chromadata is the database
        app.symlink_to("real")
        path = app / "chromadata"
        link = app
    target = os.readlink(link)
    mgr = SnapshotManager(path, tmp_path / "store")
    snap = mgr.snapshot()
    assert snap.root_mode == 0o750  # the target's mode, not the symlink's 0777
    state = tree_bytes(real)
    _truncate_level0(real)
    res = mgr.recover()
    assert res.action == "restored" and res.snapshot == snap.id
    assert link.is_symlink() and os.readlink(link) == target  # still the same symlink
    assert real.is_dir() and not real.is_symlink()
    assert tree_bytes(real) == state
    assert stat.S_IMODE(real.stat().st_mode) == 0o750
    assert counts(path) == counts(real) == {"coll0": 2500, "coll1": 300}
    kept = mgr.kept()
    assert len(kept) == 1 and kept[0].parent == real.parent and kept[0] == Path(res.kept_path or "")
    r = cli("kept", "--db", str(path), "--store", str(tmp_path / "store"), "--json")
    assert [k["path"] for k in json.loads(r.stdout)["kept"]] == [str(kept[0])]
    # restore through the symlink too, and onto a dangling symlink (a fresh machine)
    assert mgr.restore(snap.id, verify=False).mode == "exchange"
    shutil.rmtree(real)
    assert mgr.restore(snap.id, verify=False).mode == "fresh"
    assert link.is_symlink() and tree_bytes(real) == state


# --- mount points at awkward paths ----------------------------------------------------------


def test_mountinfo_paths_are_decoded_as_bytes() -> None:
    """Lines in the kernel's format, constructed here: octal escapes for space, tab, newline
    and backslash; UTF-8 and undecodable bytes as they are."""
    text = (
        b"36 25 8:1 / /mnt/d\xc3\xa4t\xc3\xa4 rw - ext4 /dev/sda1 rw\n"
        b"37 25 8:1 / /mnt/with\\040space rw - ext4 /dev/sda1 rw\n"
        b"38 25 8:1 / /mnt/bad\xffbyte rw - ext4 /dev/sda1 rw\n"
        b"39 25 8:1 / /mnt/tab\\011and\\012newline\\134back rw - ext4 /dev/sda1 rw\n"
    )
    assert mountinfo_points(text) == {
        os.fsencode("/mnt/dätä"),
        b"/mnt/with space",
        b"/mnt/bad\xffbyte",
        b"/mnt/tab\tand\nnewline\\back",
    }
    assert decode_mountinfo_path(b"/a\\134040") == b"/a\\040"  # an escaped backslash stays one


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("dätä", marks=pytest.mark.slow),
        pytest.param("with space", marks=pytest.mark.slow),
        pytest.param(os.fsdecode(b"bad\xffbyte"), marks=pytest.mark.slow),
    ],
)
def test_restore_and_recover_in_a_bind_mount_at_an_awkward_path(db: Path, tmp_path: Path, name: str) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    target = tmp_path / "mnt" / name
    target.mkdir(parents=True)
    if subprocess.run(["mount", "--bind", str(volume), str(target)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        assert os.fsencode(target) in mountinfo_points() and is_mount_point(target)
        for entry in db.iterdir():
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target / entry.name)
        inode = target.stat().st_ino
        mgr = SnapshotManager(target, tmp_path / "store")
        snap = mgr.snapshot()
        state = tree_bytes(target)
        _truncate_level0(target)
        res = mgr.recover()
        assert res.action == "restored" and res.kept_path and Path(res.kept_path).parent == target
        assert target.stat().st_ino == inode and is_mount_point(target)  # still the mount
        visible = {k: v for k, v in tree_bytes(target).items() if not k.startswith(".chromasnap-")}
        assert visible == state
        alias = tmp_path / "alias"  # chromadb itself cannot open a path that is not UTF-8
        alias.symlink_to(target)
        run_sample("grow", str(alias), "--fraction", "0.1")
        r = cli(
            "restore", snap.id[:12], "--yes", "--no-verify", "--db", os.fsencode(target),
            "--store", str(tmp_path / "store"),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "(entries)" in r.stdout
        assert counts(alias) == {"coll0": 2500, "coll1": 300}
    finally:
        subprocess.run(["umount", str(target)], check=False)


# --- other owners ---------------------------------------------------------------------------


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder other users can traverse (pytest's own tmp_path is 0700 root)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="chromasnap-owners-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for top, dirs, files in os.walk(root):
        for n in dirs + files:
            os.lchown(os.path.join(top, n), uid, gid)


def _owners(root: Path) -> set[tuple[int, int]]:
    out = {(root.stat().st_uid, root.stat().st_gid)}
    for p in root.rglob("*"):
        st = p.lstat()
        out.add((st.st_uid, st.st_gid))
    return out


def _modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.lstat().st_mode) for p in root.rglob("*")}


DROP_TO = """
import importlib, os, sys
for name in sys.argv[2].split(","):  # what the code needs, imported while still root: the
    importlib.import_module(name)     # interpreter lives under /root (0700) on this machine
uid = int(sys.argv[1])
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
exec(compile(sys.argv[3], "<as-user>", "exec"), {"__name__": "__main__", "argv": sys.argv[4:]})
"""
CHROMADB_MODULES = "numpy,chromadb,chromadb.config,chromadb.api.rust"
CHROMASNAP_MODULES = (
    "json,numpy,chromasnap.snapshots,chromasnap.snapshots.restore,chromasnap.snapshots.extract,"
    "chromasnap.snapshots.checker,chromasnap.snapshots.livecopy,chromasnap.snapshots.owner,"
    "chromasnap.snapshots.guard,chromasnap.snapshots.capture,chromasnap.snapshots.records"
)


def as_user(uid: int, modules: str, code: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` as `uid`: a real other user (root drops its privileges in the child)."""
    home.mkdir(exist_ok=True)
    os.chown(home, uid, uid)
    return subprocess.run(
        [sys.executable, "-c", DROP_TO, str(uid), modules, code, *args],
        capture_output=True,
        text=True,
        env={**ENV, "HOME": str(home), "ANONYMIZED_TELEMETRY": "False"},
        timeout=300,
        check=False,
    )


OWNER_WRITES = """
import json, numpy as np, chromadb
from chromadb.config import Settings
client = chromadb.PersistentClient(path=argv[0], settings=Settings(anonymized_telemetry=False))
col = client.get_collection("coll0")
col.add(ids=["by-owner"], embeddings=np.zeros((1, 384), dtype=np.float32), documents=["owner"])
print(json.dumps({"count": col.count()}))
"""


def test_restore_as_root_gives_the_database_back_to_its_owner(db: Path, open_tmp: Path) -> None:
    chroma = open_tmp / "chroma"
    shutil.copytree(db, chroma, symlinks=True)
    _chown_tree(chroma, OTHER_UID, OTHER_UID)
    chroma.chmod(0o750)
    (chroma / "chroma.sqlite3").chmod(0o640)
    mgr = SnapshotManager(chroma, open_tmp / "store")
    snap = mgr.snapshot()
    assert snap.owner is not None and (snap.owner.uid, snap.owner.gid) == (OTHER_UID, OTHER_UID)
    modes = _modes(chroma)
    _truncate_level0(chroma)
    res = mgr.restore(snap.id)  # as root
    assert res.warnings == []
    assert _owners(chroma) == {(OTHER_UID, OTHER_UID)}
    assert stat.S_IMODE(chroma.stat().st_mode) == 0o750 and _modes(chroma) == modes
    r = as_user(OTHER_UID, CHROMADB_MODULES, OWNER_WRITES, str(chroma), home=open_tmp / "home")
    assert r.returncode == 0, r.stderr[-2000:]  # its owner's PersistentClient writes
    assert json.loads(r.stdout) == {"count": 2501}
    # onto a bare path the recorded owner is used (nothing on this machine says otherwise)
    shutil.rmtree(chroma)
    assert mgr.restore(snap.id, verify=False).mode == "fresh"
    assert _owners(chroma) == {(OTHER_UID, OTHER_UID)}


RESTORE_AS = """
import json
from chromasnap.snapshots import SnapshotManager, ChromasnapError
try:
    res = SnapshotManager(argv[0], argv[1]).restore("latest", verify=False, backup=False)
    print(json.dumps({"warnings": res.warnings}))
except ChromasnapError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def test_restore_by_a_user_who_cannot_set_the_owner_warns(db: Path, open_tmp: Path) -> None:
    chroma = open_tmp / "parent" / "chroma"
    chroma.parent.mkdir()
    shutil.copytree(db, chroma, symlinks=True)
    _chown_tree(chroma, OTHER_UID, OTHER_UID)
    store = open_tmp / "store"
    SnapshotManager(chroma, store).snapshot()
    _chown_tree(store, THIRD_UID, THIRD_UID)
    # the parent is root's and not writable by the third user: the error names it
    r = as_user(THIRD_UID, CHROMASNAP_MODULES, RESTORE_AS, str(chroma), str(store), home=open_tmp / "home")
    assert r.stdout, r.stderr[-2000:]
    err = json.loads(r.stdout)["error"]
    assert f"no permission to write in {chroma.parent}" in err and ".restore-" not in err
    # writable: the restore goes through, and says the owner could not be kept
    chroma.parent.chmod(0o777)
    r = as_user(THIRD_UID, CHROMASNAP_MODULES, RESTORE_AS, str(chroma), str(store), home=open_tmp / "home")
    warnings = json.loads(r.stdout)["warnings"]
    assert len(warnings) == 1 and f"not by uid {OTHER_UID} gid {OTHER_UID}" in warnings[0]
    assert f"chown -R {OTHER_UID}:{OTHER_UID} {chroma}" in warnings[0]
    assert _owners(chroma) == {(THIRD_UID, THIRD_UID)}
