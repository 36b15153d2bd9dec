"""Applications as users write them: docs/examples/langchain_indexer.py (the real
langchain-chroma, with langchain-core's DeterministicFakeEmbedding) run as a child process,
from an empty directory, twice, then killed inside its first guarded write and restarted.

Every child runs with an audit hook that logs any Python-level network attempt (connect to
an internet address, name lookup) to a file the test reads, and, where `unshare -n` works
(root on Linux), in a network namespace of its own with no usable interface."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "langchain_indexer.py"

# Installs the network audit hook, then runs the example: as its own main, or (with "kill")
# through its index() with a progress callback that SIGKILLs the process after the first
# batch is written, inside the guarded block: the kill lands at a point the test chooses.
RUNNER = """
import os, runpy, signal, socket, sys
log_path = os.environ["NET_LOG"]

def audit(event, args):
    inet = event == "socket.connect" and isinstance(args[1], tuple)
    if inet or event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
        with open(log_path, "a") as fh:
            fh.write(f"{event} {args!r}\\n")

sys.addaudithook(audit)
example, mode, db, *files = sys.argv[1:]
if mode == "self-test":  # the hook sees a lookup and a connect attempt
    try:
        socket.getaddrinfo("localhost", 80)
    except OSError:
        pass
    try:
        socket.create_connection(("127.0.0.1", 9), 1)
    except OSError:
        pass
elif mode == "main":
    sys.argv = [example, db, *files]
    runpy.run_path(example, run_name="__main__")
else:
    ns = runpy.run_path(example)
    def die(batch):
        os.kill(os.getpid(), signal.SIGKILL)
    ns["index"](db, ns["load"](files), batch_size=4, on_batch=die)
"""


def _unshare() -> list[str]:
    try:
        ok = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return ["unshare", "-n"] if ok else []


UNSHARE = _unshare()


def run_indexer(cwd: Path, mode: str, db: str, *files: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NET_LOG": str(cwd.parent / "net.log")}
    return subprocess.run(
        [*UNSHARE, sys.executable, "-c", RUNNER, str(EXAMPLE), mode, db, *map(str, files)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.fixture
def notes(tmp_path: Path) -> list[Path]:
    """Two small text files of 10 paragraphs each."""
    src = tmp_path / "notes"
    src.mkdir()
    files = []
    for f in ("ops", "design"):
        path = src / f"{f}.txt"
        path.write_text(
            "\n\n".join(f"{f} note {i}: restore the vector index from a snapshot" for i in range(10))
        )
        files.append(path)
    return files


def test_langchain_indexer_first_runs_and_a_killed_first_write(tmp_path: Path, notes: list[Path]) -> None:
    ops, design = notes
    # An application started in an empty working directory, twice.
    app = tmp_path / "app"
    app.mkdir()
    first = summary(run_indexer(app, "main", "./chroma", ops))
    assert (first["recover"], first["reason"], first["kept_path"]) == ("fresh-start", "no database yet", None)
    assert first["count"] == 10 and first["top_hit"] == f"{ops}#0"
    assert sorted(p.name for p in app.iterdir()) == ["chroma", "chroma.snapshots"]
    second = summary(run_indexer(app, "main", "./chroma", design))
    assert (second["recover"], second["count"], second["top_hit"]) == ("healthy", 20, f"{design}#0")
    assert sorted(p.name for p in app.iterdir()) == ["chroma", "chroma.snapshots"]
    from chromasnap.snapshots import SnapshotManager

    mgr = SnapshotManager(app / "chroma")
    assert [s.reason for s in mgr.list()] == ["pre-write"]  # none for the first write
    assert not list((mgr.store_path / "intents").iterdir())
    assert mgr.verify("latest").ok  # the second run's pre-write snapshot: the first run's data

    # A third fresh directory: the first guarded write is killed after its first batch.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    killed = run_indexer(fresh, "kill", "./chroma", ops)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    left = SnapshotManager(fresh / "chroma")
    assert (fresh / "chroma" / "chroma.sqlite3").is_file()
    assert len(list((left.store_path / "intents").iterdir())) == 1
    restart = summary(run_indexer(fresh, "main", "./chroma", ops))
    assert restart["recover"] == "fresh-start", restart
    assert "rolled back an interrupted guarded write" in str(restart["reason"])
    kept = Path(str(restart["kept_path"]))
    assert kept.parent == fresh and (kept / "chroma.sqlite3").is_file()
    assert restart["count"] == 10 and restart["top_hit"] == f"{ops}#0"
    assert sorted(p.name for p in fresh.iterdir()) == ["chroma", kept.name, "chroma.snapshots"]
    assert left.list() == [] and not list((left.store_path / "intents").iterdir())

    net = tmp_path / "net.log"
    assert not net.exists(), net.read_text()[:2000]


def test_the_network_audit_hook_sees_attempts(tmp_path: Path) -> None:
    """The check above is not vacuous: a lookup and a connect attempt are both logged."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_indexer(cwd, "self-test", "-")
    assert proc.returncode == 0, proc.stderr[-2000:]
    logged = (tmp_path / "net.log").read_text()
    assert "socket.getaddrinfo" in logged and "socket.connect" in logged and "127.0.0.1" in logged
