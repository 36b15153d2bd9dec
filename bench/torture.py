"""Torture suite: real kills, real corruption, hostile input and concurrency, counted.

    python bench/torture.py            # the short form (also run by tests/test_torture.py)
    python bench/torture.py --long     # 500 kills, 1000 flips, every bad input, 60 s of concurrency,
                                       # 200 snapshots under a writer saving its HNSW every 100 records
    python bench/torture.py --persist-only --persist 200

Bad inputs include every crafted store of bench/hostile.py (a store is hostile input).

Prints one summary line: `kills K, lost L; flips F, undetected U; bad inputs B, tracebacks T;
concurrency C ops, torn 0`, and one for the persist part: snapshots taken and refused, torn
ones (0), and how often a folder was re-read because it was caught mid-save. Everything is real: chromadb databases built with explicit
embeddings, child processes killed with SIGKILL, bytes flipped in real store files, the
real CLI. The only injected fault is the kill instant: a random delay.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from chromasnap.manifest import RetentionPolicy
from chromasnap.snapshots import ChromasnapError, SnapshotManager, sample

PY = sys.executable
ENV = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and not p.name.startswith(".chromasnap-")
    }


def build(path: Path, records: tuple[int, int] = (600, 80)) -> Path:
    subprocess.run([PY, sample.__file__, "build", str(path), "--records", *map(str, records)], check=True)
    return path


def counts(db: Path) -> dict[str, int] | None:
    r = subprocess.run([PY, sample.__file__, "count", str(db)], capture_output=True, text=True, check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "chromasnap.cli", *args],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        timeout=timeout,
        check=False,
    )


@dataclass
class Tally:
    kills: int = 0
    lost: int = 0
    flips: int = 0
    undetected: int = 0
    bad_inputs: int = 0
    tracebacks: int = 0
    wrong: list[str] = field(default_factory=list)
    interrupted: int = 0
    concurrent_ops: int = 0
    torn: int = 0
    before_start: int = 0
    """Ctrl-C that landed while Python itself was starting (site, runpy), before any of our
    code ran: Python prints its own KeyboardInterrupt traceback there, as it exits -2 earlier."""

    def line(self) -> str:
        return (
            f"kills {self.kills}, lost {self.lost}; flips {self.flips}, undetected {self.undetected}; "
            f"bad inputs {self.bad_inputs} ({self.interrupted} Ctrl-C mid-way, "
            f"{self.before_start} before Python ran our code), tracebacks {self.tracebacks}; "
            f"concurrency {self.concurrent_ops} ops, torn {self.torn}"
        )


# --- crashes -------------------------------------------------------------------------

CHILD = """
import os, sys, numpy as np
from chromasnap.manifest import RetentionPolicy
from chromasnap.snapshots import SnapshotManager
db, op, arg = sys.argv[1], sys.argv[2], sys.argv[3]
mgr = SnapshotManager(db)
if op == "snapshot":
    mgr.snapshot(note="torture")
elif op == "guarded":
    import chromadb
    from chromadb.config import Settings
    with mgr.before_write(reason="torture write"):
        client = chromadb.PersistentClient(path=db, settings=Settings(anonymized_telemetry=False))
        col = client.get_or_create_collection("coll0", embedding_function=None)
        rng = np.random.default_rng(int(arg))
        for b in range(20):
            ids = [f"t{arg}-{b}-{i}" for i in range(100)]
            col.add(ids=ids, embeddings=rng.standard_normal((100, 384), dtype=np.float32),
                    documents=["torture"] * 100)
elif op == "restore":
    mgr.restore(arg, verify=False)
elif op == "recover":
    mgr.recover()
elif op == "prune":
    mgr.prune(RetentionPolicy(keep_last=4))
"""
OPS = ("snapshot", "guarded", "restore", "recover", "prune")


def kills(root: Path, n: int, rng: random.Random, t: Tally) -> None:
    db = build(root / "kill-db")
    mgr = SnapshotManager(db)
    for _ in range(3):
        mgr.snapshot()
    for i in range(n):
        op = OPS[i % len(OPS)]
        mgr = SnapshotManager(db)  # finishes an interrupted swap, as any command does
        before_ids = {s.id for s in mgr.list()}
        before = tree(db)
        arg = str(i)
        target_state = None
        droppable: set[str] = set()
        if op == "prune":
            droppable = {e.id for e in mgr.prune(RetentionPolicy(keep_last=4), dry_run=True).removed}
        if op == "restore":
            snaps = mgr.list()
            pick = rng.choice(snaps)
            arg = pick.id
            out = root / "expect"
            shutil.rmtree(out, ignore_errors=True)
            mgr.extract(pick.id, out)
            target_state = tree(out)
        proc = subprocess.Popen(
            [PY, "-c", CHILD, str(db), op, arg], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t.kills += 1
        problems = _check_after_kill(db, op, before_ids - droppable, before, target_state)
        if problems:
            t.lost += 1
            t.wrong.append(f"kill {i} during {op}: {problems}")


def _check_after_kill(
    db: Path, op: str, before_ids: set[str], before: dict[str, bytes], target: dict[str, bytes] | None
) -> str:
    try:
        mgr = SnapshotManager(db)
        rolled_back = False
        if op == "guarded":  # a write died: recover rolls it back (or finds it complete)
            rolled_back = mgr.recover().action == "restored"
        after_ids = {s.id for s in mgr.list()}
        if mgr.problems:
            return f"unreadable snapshots: {mgr.problems[0]}"
        missing = before_ids - after_ids  # (what the prune policy drops was taken out)
        if missing:
            return f"{len(missing)} snapshots lost"
        bad = [r for r in mgr.verify_many(None, quick=True) if not r.ok]
        if bad:
            return f"verify: {bad[0].detail[:200]}"
        now = tree(db)
        if op in ("snapshot", "prune") and now != before:
            return "the database changed"
        if op == "restore" and now not in (before, target):
            return "the database is neither the old nor the restored one"
        if rolled_back and now != before:
            return "recover did not bring back the state before the guarded write"
        if counts(db) is None:
            return "chromadb cannot open the database"
        if len(after_ids) > 12:
            mgr.prune(RetentionPolicy(keep_last=6))
    except ChromasnapError as exc:
        return f"next command failed: {exc}"
    return ""


# --- corruption ----------------------------------------------------------------------


def flips(root: Path, n: int, rng: random.Random, t: Tally) -> None:
    db = build(root / "flip-db", (400, 50))
    base = SnapshotManager(db, root / "flip-store")
    for i in range(3):
        if i:
            subprocess.run(
                [PY, sample.__file__, "grow", str(db), "--fraction", "0.2", "--seed", str(i)], check=True
            )
        base.snapshot()
    truth = {}
    for s in base.list():
        out = root / f"truth-{s.id[:8]}"
        base.extract(s.id, out)
        truth[s.id] = tree(out)
    for i in range(n):
        store = root / "flip-work"
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(root / "flip-store", store)
        files = [
            p for p in store.rglob("*") if p.is_file() and p.name not in ("lock", "lock.owner", "write.lock")
        ]
        victim = rng.choice(files)
        how = rng.choice(("flip", "flip", "truncate", "delete"))
        data = bytearray(victim.read_bytes())
        if how == "delete" or not data:
            victim.unlink()
        elif how == "truncate":
            victim.write_bytes(bytes(data[: rng.randrange(len(data))]))
        else:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            victim.write_bytes(bytes(data))
        t.flips += 1
        if not _damage_detected(db, store, truth, root):
            t.undetected += 1
            t.wrong.append(f"flip {i}: {how} {victim.relative_to(store)} went unnoticed")


def _damage_detected(db: Path, store: Path, truth: dict[str, dict[str, bytes]], root: Path) -> bool:
    """True when every snapshot whose content changed is reported (or the store refuses
    to open with a clear error), and no undamaged manifest is hidden."""
    try:
        mgr = SnapshotManager(db, store)
        listed = {s.id for s in mgr.list()}
        reports = {r.id: r.ok for r in mgr.verify_many(None, quick=True)}
    except ChromasnapError:
        return True  # config or index damage: a clear one-line refusal
    for sid, expected in truth.items():
        if sid not in listed:
            if not mgr.problems:
                return False  # vanished without a word
            continue
        out = root / "flip-out"
        shutil.rmtree(out, ignore_errors=True)
        try:
            mgr.extract(sid, out)
            same = tree(out) == expected
        except (ChromasnapError, OSError):
            same = False
        if not same and reports.get(sid, True):
            return False  # damaged content that verify called ok
    return True


# --- hostile input ---------------------------------------------------------------------


def bad_inputs(root: Path, t: Tally) -> None:
    db = build(root / "bad-db", (200, 30))
    store = db.parent / "bad-db.snapshots"
    assert cli("snapshot", "--db", str(db)).returncode == 0
    good = json.loads(cli("list", "--db", str(db), "--json").stdout)[0]["id"]
    afile = root / "a-file"
    afile.write_text("x")
    full = root / "full"
    full.mkdir(exist_ok=True)
    (full / "x").write_text("x")
    doc = json.loads((store / "snapshots" / f"{good}.json").read_text())
    evil = []
    for bad_path in ("/etc/passwd", "../../escape", "a/../../b"):
        d = json.loads(json.dumps(doc))
        d["files"][0]["path"] = bad_path
        evil.append(d)
    from chromasnap.manifest import snapshot_id

    for d in evil:
        d["id"] = snapshot_id(d)
        (store / "snapshots" / f"{d['id']}.json").write_text(json.dumps(d))
    cases: list[tuple[list[str], int, str]] = [
        (["snapshot"], 2, "no database given"),
        (["snapshot", "--db", str(root / "missing")], 2, "does not exist"),
        (["snapshot", "--db", str(afile)], 2, "not a directory"),
        (["snapshot", "--db", str(full)], 2, "not a Chroma database"),
        (["snapshot", "--db", str(db), "--store", str(db / "s")], 2, "inside the database"),
        (["snapshot", "--db", str(store / "db"), "--store", str(store)], 2, "inside the store"),
        (["snapshot", "--db", str(db), "--store", str(afile)], 2, "not a directory"),
        (["snapshot", "--db", str(db), "--tag", "a b"], 2, "invalid tag"),
        (["show", "deadbeef", "--db", str(db)], 2, "no snapshot matches"),
        (["show", "zz", "--db", str(db)], 2, "not a snapshot id"),
        (["extract", "latest", str(full), "--db", str(db)], 2, "not empty"),
        (["extract", good, str(afile), "--db", str(db)], 2, "not a directory"),
        (["extract", good, str(store / "o"), "--db", str(db)], 2, "inside the store"),
        (["extract", good, str(root / "no" / "parent"), "--db", str(db)], 2, "does not exist"),
        (["list", "--store", str(root / "nowhere")], 2, "no chromasnap store"),
        (["verify", "deadbeef", "--db", str(db)], 2, "no snapshot matches"),
        (["verify", good, "--all", "--db", str(db)], 2, "not both"),
        (["verify", good, "--timeout", "0", "--db", str(db)], 2, "Invalid value"),
        (["restore", good, "--db", str(db)], 2, "--yes"),
        (["restore", "deadbeef", "--yes", "--db", str(db)], 2, "no snapshot matches"),
        (["health", "--db", str(root / "missing")], 2, "does not exist"),
        (["recover", "--db", str(afile)], 2, "not a directory"),
        (["policy", "set", "--keep-within", "7x", "--db", str(db)], 2, "invalid duration"),
        (["policy", "set", "--keep-last", "-3", "--db", str(db)], 2, "0 or more"),
        (["policy", "set", "--keep-replaced", "later", "--db", str(db)], 2, "invalid duration"),
        (["prune", "--db", str(db)], 2, "no retention rules"),
        (["prune", "--keep-tag", "none-has-it", "--db", str(db)], 2, "keep no snapshot"),
        (["pin", "deadbeef", "--db", str(db)], 2, "no snapshot matches"),
        (["kept", "--purge", "--db", str(db)], 2, "--yes"),
        (["snapshot", "--no-such-flag"], 2, "No such option"),
    ]
    evil_cases: list[tuple[list[str], int, str]] = [
        (["show", evil[0]["id"], "--db", str(db)], 1, "absolute path"),
        (["show", evil[1]["id"], "--db", str(db)], 1, "'..'"),
        (["extract", evil[2]["id"], str(root / "x1"), "--db", str(db)], 1, "'..'"),
        (["verify", evil[0]["id"], "--quick", "--db", str(db)], 1, "absolute path"),
    ]
    (db.parent / f"{db.name}.replaced-20260101T000000Z").mkdir()  # for `kept --purge`
    before_store = _store_tree(store)
    before_db = tree(db)
    _check_cases(evil_cases, t)
    for d in evil:
        (store / "snapshots" / f"{d['id']}.json").unlink()
    _check_cases(cases, t)
    if _store_tree(store) != {k: v for k, v in before_store.items() if not any(d["id"] in k for d in evil)}:
        t.wrong.append("a bad input changed the store")
    if tree(db) != before_db:
        t.wrong.append("a bad input changed the database")
    hostile_stores(root, db, store, good, t)
    _ctrl_c(root, db, good, t)


def hostile_stores(root: Path, db: Path, store: Path, good: str, t: Tally) -> None:
    """Crafted stores (bench/hostile.py: real format, ids recomputed), one CLI command each:
    exit code, one line naming the object, no raw control character, victims untouched."""
    from hostile import CLI_CASES, Base, foreign_owner, outcome_problems

    base = Base(db=db, store=store, work=root / "hostile", ids=[good])
    base.work.mkdir(exist_ok=True)
    for build in CLI_CASES:
        if build is foreign_owner and os.geteuid() != 0:
            continue  # making a store another user owns needs root
        case = build(base)
        r = cli(*case.args)
        t.bad_inputs += 1
        _traceback(t, f"hostile store {case.name}", r.stderr)
        t.wrong += [
            f"hostile store {case.name}: {p}"
            for p in outcome_problems(case, r.returncode, r.stdout, r.stderr)
        ]


def _store_tree(store: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree(store).items() if not k.startswith(("lock", "write.lock", "tmp/"))}


def _check_cases(cases: list[tuple[list[str], int, str]], t: Tally) -> None:
    for args, code, text in cases:
        r = cli(*args)
        t.bad_inputs += 1
        _traceback(t, f"bad input {args}", r.stderr)
        lines = r.stderr.strip().splitlines()
        one_line = len(lines) == 1
        if r.returncode != code or text not in r.stderr or not one_line:
            t.wrong.append(f"bad input {args}: exit {r.returncode}, {r.stderr.strip()[:200]}")


def _traceback(t: Tally, what: str, stderr: str) -> None:
    """Count a traceback and name it in `wrong`, with its last lines, so a failure says which."""
    if "Traceback" in stderr:
        t.tracebacks += 1
        t.wrong.append(f"traceback from {what}: {' | '.join(stderr.strip().splitlines()[-3:])[:300]}")


def _python_starting(stderr: str) -> bool:
    """A KeyboardInterrupt raised before cli/entry.py installed its handler: every frame is
    Python's own start-up (site, runpy, importlib), none is chromasnap's code."""
    lines = stderr.strip().splitlines()
    if not lines or lines[-1].strip() != "KeyboardInterrupt" or "Traceback" not in stderr:
        return False
    frames = [ln for ln in lines if ln.lstrip().startswith('File "')]
    ours = ("/cli/entry.py", "/cli/app.py", "/snapshots/", "/manifest/")
    return all(not any(o in f for o in ours) for f in frames)


def _ctrl_c(root: Path, db: Path, good: str, t: Tally) -> None:
    """Ctrl-C (SIGINT) at several instants of a snapshot and of a restore: each run ends
    either complete (exit 0) or interrupted (exit 130, one line) with nothing partial."""
    big = build(root / "ctrl-c-db", (3000, 300))  # big enough to be caught mid-way
    SnapshotManager(big).snapshot()
    target = SnapshotManager(big).list()[0].id
    for args in (
        ["snapshot", "--db", str(big)],
        ["restore", target, "--yes", "--no-verify", "--db", str(big)],
    ):
        for delay in (0.3, 0.4, 0.5, 0.6, 0.8):
            before_db = tree(big)
            proc = subprocess.Popen(
                [PY, "-m", "chromasnap.cli", *args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=ENV,
            )
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
            t.bad_inputs += 1
            if _python_starting(err):
                t.before_start += 1
                continue
            _traceback(t, f"Ctrl-C at {delay} s of {args[0]}", err)
            mgr = SnapshotManager(big)
            # interrupted: 130 from our handler (one line), or SIGINT's own exit (-2) and
            # click's "aborted" (1) when it lands before our code runs
            if proc.returncode in (130, -signal.SIGINT, 1):
                t.interrupted += 1
                lines = err.strip().splitlines()
                # a snapshot finished just before the interrupt is complete, not partial:
                # the store check below verifies every one
                if args[0] == "restore" and tree(big) != before_db:
                    t.wrong.append("Ctrl-C during a restore changed the database")
                if len(lines) > 1:
                    t.wrong.append(f"Ctrl-C message: {err.strip()[:200]}")
            elif proc.returncode != 0:
                t.wrong.append(f"Ctrl-C during {args[0]}: exit {proc.returncode}: {err.strip()[:200]}")
            if mgr.problems or not all(r.ok for r in mgr.verify_many(None, quick=True)):
                t.wrong.append(f"Ctrl-C during {args[0]} damaged the store")


# --- concurrency ---------------------------------------------------------------------

WRITER = """
import sys, time, numpy as np, chromadb
from chromadb.config import Settings
from chromasnap.snapshots import SnapshotManager
db, seconds = sys.argv[1], float(sys.argv[2])
mgr = SnapshotManager(db)
end, i = time.monotonic() + seconds, 0
while time.monotonic() < end:
    with mgr.before_write(reason="writer"):
        client = chromadb.PersistentClient(path=db, settings=Settings(anonymized_telemetry=False))
        col = client.get_or_create_collection("live", embedding_function=None)
        col.add(ids=[f"w{i}-{k}" for k in range(50)], documents=["w"] * 50,
                embeddings=np.random.default_rng(i).standard_normal((50, 384), dtype=np.float32))
        del col, client
    i += 1
print(i)
"""


def concurrency(root: Path, seconds: float, t: Tally) -> None:
    db = build(root / "conc-db", (300, 40))
    SnapshotManager(db).snapshot()
    env = {"CHROMASNAP_LOCK_TIMEOUT": "20"}
    writer = subprocess.Popen(
        [PY, "-c", WRITER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    deadline = time.monotonic() + seconds
    commands = (
        ["snapshot"],
        ["verify", "--all", "--quick"],
        ["list", "--json"],
        ["prune", "--keep-last", "4"],
    )
    i = 0
    while time.monotonic() < deadline:
        r = cli(*commands[i % len(commands)], "--db", str(db), env=env, timeout=120)
        i += 1
        t.concurrent_ops += 1
        if r.returncode != 0 and "locked by" not in r.stderr and "gave up" not in r.stderr:
            t.wrong.append(
                f"concurrent {commands[(i - 1) % len(commands)]}: exit {r.returncode}: {r.stderr[-200:]}"
            )
    writer.communicate(timeout=seconds + 120)
    if writer.returncode != 0:
        t.wrong.append(f"the guarded writer failed ({writer.returncode})")
    for r in SnapshotManager(db).verify_many(None):  # every snapshot opens in full
        if not r.ok:
            t.torn += 1
            t.wrong.append(f"torn snapshot {r.id[:12]}: {r.verdict} {r.detail[:200]}")


# --- snapshots under a writer that saves its HNSW all the time ------------------------

PERSIST_WRITER = """
import sys, numpy as np, chromadb
from chromadb.config import Settings
db, prefill = sys.argv[1], int(sys.argv[2])
client = chromadb.PersistentClient(path=db, settings=Settings(anonymized_telemetry=False))
col = client.get_or_create_collection("live", embedding_function=None,
    metadata={"hnsw:sync_threshold": 100, "hnsw:batch_size": 100})
rng = np.random.default_rng(7)
i = 0
def add():
    global i
    col.add(ids=[f"w{i}-{k}" for k in range(50)], documents=["w"] * 50,
            embeddings=rng.standard_normal((50, 384), dtype=np.float32))
    i += 1
while i * 50 < prefill:
    add()
print("READY", flush=True)
while True:  # every second add saves the HNSW (sync_threshold 100): header, data, links, pickle
    add()
"""


@dataclass
class PersistTally:
    snapshots: int = 0
    taken: int = 0
    failed: int = 0
    torn: int = 0
    """Snapshots taken (no error) that do not verify in full: must stay 0."""
    torn_rereads: int = 0
    """Folder re-reads because the files read were not one save (the structural check)."""
    changed_rereads: int = 0
    """Folder re-reads because a file changed while it was read."""
    damaged: int = 0
    wrong: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"persist: {self.snapshots} snapshots under a writer (sync_threshold 100): {self.taken} taken, "
            f"{self.failed} refused, torn {self.torn}; folder re-reads: {self.torn_rereads} not one save, "
            f"{self.changed_rereads} changed while read; {self.damaged} captured as damaged"
        )


def persist(root: Path, n: int, t: PersistTally, prefill: int = 1000) -> PersistTally:
    """`n` snapshots while a writer adds 50 records at a time to a collection whose HNSW is
    saved every 100 records. Every snapshot taken must verify in full; every refusal is
    one line and leaves nothing listed."""
    db = build(root / "persist-db", (300,))
    writer = subprocess.Popen(
        [PY, "-c", PERSIST_WRITER, str(db), str(prefill)],
        stdout=subprocess.PIPE,
        text=True,
        env={**ENV, "ANONYMIZED_TELEMETRY": "False"},
    )
    try:
        assert writer.stdout is not None
        if writer.stdout.readline().strip() != "READY":
            t.wrong.append("the persist writer did not start")
            return t
        for _ in range(n):
            mgr = SnapshotManager(db)
            listed = len(mgr.list())
            t.snapshots += 1
            try:
                mgr.snapshot(reason="torture")
                t.taken += 1
            except ChromasnapError as exc:
                t.failed += 1
                if "\n" in str(exc) or len(SnapshotManager(db).list()) != listed:
                    t.wrong.append(f"a refused snapshot left something listed, or said: {exc}")
            stats = getattr(mgr, "last_capture", None)  # (absent before issue 13)
            if stats is not None:
                t.torn_rereads += stats.torn_rereads
                t.changed_rereads += stats.changed_rereads
                t.damaged += stats.damaged_folders
        if writer.poll() is not None:
            t.wrong.append(f"the persist writer died ({writer.returncode})")
    finally:
        writer.kill()
        writer.wait()
    for r in SnapshotManager(db).verify_many(None):
        if not r.ok:
            t.torn += 1
            t.wrong.append(f"torn snapshot {r.id[:12]}: {r.verdict} {r.detail[:300]}")
    return t


def run(
    root: Path,
    n_kills: int = 5,
    n_flips: int = 25,
    seconds: float = 12,
    seed: int = 1,
    with_bad_inputs: bool = True,
) -> Tally:
    """The short form by default; `--long` is 500 kills, 1000 flips, 60 s. Without
    `with_bad_inputs`, the 80-odd CLI runs on bad arguments, crafted stores and Ctrl-C are
    left out (the default test run's lean form: tests/test_cli.py and test_hostile.py cover
    those cases one by one)."""
    rng = random.Random(seed)
    t = Tally()
    kills(root, n_kills, rng, t)
    flips(root, n_flips, rng, t)
    if with_bad_inputs:
        bad_inputs(root, t)
    concurrency(root, seconds, t)
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--long", action="store_true", help="500 kills, 1000 flips, 60 s of concurrency")
    ap.add_argument("--kills", type=int, default=None)
    ap.add_argument("--flips", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument(
        "--persist", type=int, default=None, help="snapshots under a saving writer (short 6, long 200)"
    )
    ap.add_argument("--persist-only", action="store_true", help="run only the persist part")
    a = ap.parse_args()
    n_kills = a.kills if a.kills is not None else (500 if a.long else 5)
    n_flips = a.flips if a.flips is not None else (1000 if a.long else 25)
    seconds = a.seconds if a.seconds is not None else (60 if a.long else 12)
    import tempfile

    n_persist = a.persist if a.persist is not None else (200 if a.long else 6)
    root = a.dir or Path(tempfile.mkdtemp(prefix="chromasnap-torture-"))
    t0 = time.monotonic()
    wrong: list[str] = []
    if not a.persist_only:
        t = run(root, n_kills, n_flips, seconds)
        wrong += t.wrong
        print(f"{t.line()} ({time.monotonic() - t0:.0f} s)")
    t1 = time.monotonic()
    p = persist(root, n_persist, PersistTally())
    wrong += p.wrong
    print(f"{p.line()} ({time.monotonic() - t1:.0f} s)")
    for w in wrong:
        print("PROBLEM", w)
    return 0 if not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
