"""Integrity: the object check (every stored byte) and the chromadb probe (a child process).

The object check re-reads every blob a snapshot references, decompresses it, checks its
hash, reassembles every file against its whole-file hash without writing anything, and
rehashes every pack file that holds those blobs against its name.
The probe opens a materialized database with chromadb in a throwaway child process; a
Rust panic or a segfault kills only the child and becomes the verdict `crashed`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from blake3 import blake3
from pydantic import BaseModel, Field

from chromasnap.manifest import ChunkRef, FileEntry, HnswSplitList, PlainList, Snapshot, WalState

from . import probe as probe_script
from .errors import StoreError
from .pack import pack_name
from .repository import Repository

Verdict = Literal["ok", "damaged", "exception", "crashed", "timeout", "mismatch"]
PROBE_MARK = "CHROMASNAP-PROBE "
SELF_HIT_RATIO = 0.5
"""Share of sampled records that must find themselves among their 10 nearest hits. HNSW is
approximate: a healthy index of random 384-d vectors added 50 at a time misses 4-7% (measured
with chromadb 1.5.9 alone); a broken one misses nearly all (a truncated length.bin: 20 of 20)."""
DEFAULT_TIMEOUT = 120.0


class ProbeReport(BaseModel):
    """What the probe child found, and how the parent classified it."""

    verdict: Verdict
    ok: bool
    detail: str = ""
    returncode: int | None = None
    signal: str | None = None
    interpreter: str = ""
    chromadb_version: str | None = None
    collections: list[dict[str, object]] = Field(default_factory=list)
    integrity: str | None = None
    fts: str | None = None
    stderr: str = ""
    duration_s: float = 0.0


class VerifyReport(BaseModel):
    """`SnapshotManager.verify`: one snapshot's verdict (quick or full)."""

    id: str
    ok: bool
    verdict: Verdict
    mode: Literal["quick", "full"]
    detail: str = ""
    duration_s: float = 0.0
    checked_bytes: int = 0
    probe: ProbeReport | None = None
    restorable: bool = False
    """Damaged only in pack hashes, while every blob matched and the probe opened it (full
    mode): restoring gives the recorded database, and `recover` may still use it."""
    migration: str | None = None
    """With another interpreter (`--python`): whether its chromadb migrates this snapshot's
    schema on open (one-way), or cannot open it (a newer schema than it knows)."""


class HealthReport(BaseModel):
    """`SnapshotManager.health`: whether the live database opens and answers."""

    healthy: bool
    verdict: Verdict
    detail: str = ""
    in_place: bool = False
    probe: ProbeReport
    holders: list[str] = Field(default_factory=list)
    """Processes holding the database open, `pid 4242 (chroma run --path /data)`: a server
    or an application; the probe read a private copy beside them."""


# --- the object check --------------------------------------------------------------


def referenced_blobs(repo: Repository, snap: Snapshot) -> set[str]:
    """Every blob key a snapshot needs: its chunk lists and their chunks."""
    from .records import referenced

    keys: set[str] = set()
    try:
        keys |= referenced(repo, snap)
    except StoreError:  # an unreadable index still names its directory blob
        keys |= {snap.records} if snap.records else set()
    for f in snap.files:
        keys.add(f.chunk_list)
        try:
            doc = repo.read_chunk_list(f.chunk_list).list
        except StoreError:
            continue
        keys.update(_chunk_keys(doc))
    return keys


def _chunk_keys(doc: PlainList | HnswSplitList) -> Iterable[str]:
    if isinstance(doc, PlainList):
        return (k for e in doc.extents for k, _ in e.chunks)
    return (k for k, _ in (*doc.links, *doc.vectors, *doc.tail))


def check_objects(
    repo: Repository,
    snap: Snapshot,
    verified: dict[str, str | None],
    progress: Callable[[int], None] | None = None,
) -> tuple[list[str], int]:
    """Problems found in `snap`'s stored bytes, and how many bytes were checked.

    `verified` maps a chunk-list key to None (its file checked out) or a problem, so
    that files shared by many snapshots are read once per run. Memory stays flat: each
    file is streamed, a few blobs ahead, and never held whole.
    """
    from . import records
    from .extract import join_streams, read_blobs

    problems: list[str] = []
    checked = 0
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="chromasnap-check")

    def blobs(refs: list[ChunkRef]) -> Iterator[bytes]:
        for data in read_blobs(repo, pool, refs):
            nonlocal checked
            checked += len(data)
            if progress:
                progress(len(data))
            yield data

    try:
        for f in snap.files:
            if f.chunk_list not in verified:
                verified[f.chunk_list] = _check_file(repo, f, blobs, join_streams)
            if verified[f.chunk_list]:
                problems.append(f"{f.path}: {verified[f.chunk_list]}")
        problems += records.check(repo, snap)
        problems += check_packs(repo, snap, verified)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return problems, checked


def _check_file(
    repo: Repository,
    f: FileEntry,
    blobs: Callable[[list[ChunkRef]], Iterator[bytes]],
    join: Callable[[Callable[[list[ChunkRef]], Iterator[bytes]], HnswSplitList], Iterator[bytes]],
) -> str | None:
    try:
        doc = repo.read_chunk_list(f.chunk_list).list
        if doc.size != f.size:
            return f"chunk list says {doc.size} bytes, the manifest {f.size}"
        h = blake3()
        if isinstance(doc, PlainList):
            for ext in doc.extents:
                if f.hash_kind == "extents":
                    length = sum(n for _, n in ext.chunks)
                    h.update(ext.offset.to_bytes(8, "little") + length.to_bytes(8, "little"))
                for data in blobs(ext.chunks):
                    h.update(data)
        else:  # the whole-file hash is over the interleaved records
            for block in join(blobs, doc):
                h.update(block)
        if h.hexdigest() != f.hash:
            return "reassembled content does not match the recorded hash"
    except StoreError as exc:
        return str(exc)
    return None


PACK_READ = 4 << 20


def check_packs(repo: Repository, snap: Snapshot, verified: dict[str, str | None]) -> list[str]:
    """Problems in the pack files holding `snap`'s blobs: each is rehashed whole against its name.

    The blob checks catch every change that alters content; this catches the rest (a bit
    zstd's decoder ignores, a pack trailer), so a failing disk shows before it costs data.
    `verified` caches each pack under ``pack:<id>`` for the run.
    """
    index = repo.index()
    packs = sorted({loc.pack for k in referenced_blobs(repo, snap) if (loc := index.get(k))})
    problems = []
    for pid in packs:
        if f"pack:{pid}" not in verified:
            verified[f"pack:{pid}"] = _check_pack(repo, pid)
        if verified[f"pack:{pid}"]:
            problems.append(f"pack {pid[:16]} {verified[f'pack:{pid}']}")
    return problems


def _check_pack(repo: Repository, pid: str) -> str | None:
    name = pack_name(pid)
    try:
        size = repo.backend.size(name)
        h = blake3()
        for off in range(0, size, PACK_READ):
            h.update(repo.backend.read_range(name, off, min(PACK_READ, size - off)))
    except (OSError, StoreError) as exc:
        return f"cannot be read: {getattr(exc, 'strerror', None) or exc}"
    if h.hexdigest() != pid:
        return "does not hash to its name: a stored byte changed"
    return None


def damaged_pack_id(message: str) -> str | None:
    """The 16-digit pack id prefix a `check_packs` problem names, if any."""
    if not message.startswith("pack "):
        return None
    prefix = message[5:21]
    return prefix if len(prefix) == 16 and all(c in "0123456789abcdef" for c in prefix) else None


def damaged_blob_key(message: str) -> str | None:
    """The 16-digit key prefix a StoreError message names, if any."""
    parts = message.split("blob ", 1)
    if len(parts) < 2:
        return None
    prefix = parts[1][:16]
    return prefix if all(c in "0123456789abcdef" for c in prefix) else None


# --- the probe -----------------------------------------------------------------------


def run_probe(
    db: Path,
    expected: WalState | None,
    python: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    sample: int = 20,
) -> ProbeReport:
    """Open `db` with chromadb in a child process and classify what happened."""
    interpreter = python or sys.executable
    t0 = time.monotonic()
    try:
        proc = spawn_child([interpreter, probe_script.__file__, str(db), "--sample", str(sample)])
    except OSError as exc:
        return ProbeReport(
            verdict="exception",
            ok=False,
            interpreter=interpreter,
            detail=f"cannot start {interpreter}: {exc.strerror or exc}",
        )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        return ProbeReport(
            verdict="timeout",
            ok=False,
            interpreter=interpreter,
            detail=f"the probe did not finish in {timeout:g} s",
            stderr=_trim(err),
            duration_s=time.monotonic() - t0,
        )
    except BaseException:
        kill_group(proc)
        proc.wait()
        raise
    duration = time.monotonic() - t0
    report = ProbeReport(
        verdict="ok",
        ok=True,
        returncode=proc.returncode,
        interpreter=interpreter,
        stderr=_trim(err),
        duration_s=duration,
    )
    if proc.returncode is not None and proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        report.verdict, report.ok, report.signal = "crashed", False, name
        report.detail = f"chromadb killed the process with {name}" + (
            " (a Rust panic aborts)" if name == "SIGABRT" else ""
        )
        return report
    line = next((x for x in reversed(out.splitlines()) if x.startswith(PROBE_MARK)), None)
    if line is None:
        report.verdict, report.ok = "exception", False
        tail = _trim(err).strip().splitlines()
        report.detail = f"the probe exited with {proc.returncode} and no report" + (
            f": {tail[-1]}" if tail else ""
        )
        return report
    data = json.loads(line[len(PROBE_MARK) :])
    report.chromadb_version = data.get("chromadb_version")
    report.collections = data.get("collections", [])
    report.integrity, report.fts = data.get("integrity"), data.get("fts")
    raised = data.get("exception")
    if raised:
        report.verdict, report.ok = "exception", False
        report.detail = f"{raised['type']} at {data.get('stage')}: {raised['message'][:300]}"
        return report
    problems = hnsw_file_problems(db) + compare(report, expected)
    if problems:
        report.verdict, report.ok = "mismatch", False
        report.detail = "; ".join(problems)[:1000]
    else:
        counts = ", ".join(f"{c['name']}={c['count']}" for c in report.collections)
        report.detail = f"opened with chromadb {report.chromadb_version}: {counts or 'no collections'}"
    return report


def hnsw_file_problems(db: Path) -> list[str]:
    """Structural checks of each vector segment folder (`hnsw.folder_problems`): the sizes
    of data_level0.bin and length.bin against header.bin (hnswlib writes them for exactly
    its element count in 1.5.x, its capacity in 1.0.x; a truncated file can answer queries
    silently wrong), the link records, and the pickle's completeness and element count (a
    folder saved in part, as a capture that caught a save under way would hold it)."""
    from . import hnsw

    problems = []
    for seg in sorted(db.iterdir()):
        if not seg.is_dir() or seg.is_symlink() or not (seg / "header.bin").is_file():
            continue

        def small(name: str, limit: int, seg: Path = seg) -> bytes | str | None:
            p = seg / name
            if not p.is_file() or p.is_symlink():
                return None
            return p.read_bytes() if p.stat().st_size <= limit else "big"

        files = hnsw.FolderFiles(
            sizes={p.name: p.stat().st_size for p in seg.iterdir() if p.is_file() and not p.is_symlink()},
            header=(seg / "header.bin").read_bytes(),
            link_lists=small("link_lists.bin", hnsw.LINK_LISTS_LIMIT),
            pickle=small("index_metadata.pickle", hnsw.PICKLE_LIMIT),
        )
        problems += [f"{seg.name}/{p}" for p in hnsw.folder_problems(files)]
    return problems


def compare(report: ProbeReport, expected: WalState | None) -> list[str]:
    """Where what chromadb found disagrees with the recorded write-ahead state."""
    problems = []
    if report.integrity not in (None, "ok"):
        problems.append(f"sqlite integrity_check: {report.integrity}")
    if report.fts not in (None, "ok"):
        problems.append(f"full-text index: {report.fts}")
    found = {str(c["name"]): c for c in report.collections}
    for c in report.collections:
        sampled, hits = int(c.get("sampled", 0)), int(c.get("self_hits", 0))  # type: ignore[call-overload]
        if hits < SELF_HIT_RATIO * sampled:
            problems.append(
                f"{c['name']}: {sampled - hits} of {sampled} records are not their own nearest hit"
            )
    if expected is None:
        return problems
    for ec in expected.collections:
        got = found.get(ec.name)
        if got is None:
            problems.append(f"collection {ec.name} is missing")
            continue
        count = int(got["count"])  # type: ignore[call-overload]
        lo = ec.records or 0
        hi = lo + ec.metadata_pending
        if not lo <= count <= hi:
            problems.append(
                f"{ec.name}: chromadb counts {count}, the manifest {lo}" + (f"-{hi}" if hi > lo else "")
            )
        if ec.hnsw_elements is not None and ec.hnsw_elements + ec.queue_rows < lo:
            problems.append(
                f"{ec.name}: the HNSW index ({ec.hnsw_elements}) and the queue ({ec.queue_rows}) "
                f"together hold fewer vectors than the {lo} records"
            )
        if ec.vector_lags and ec.lag_covered is False:
            problems.append(f"{ec.name}: records ahead of the vector segment are no longer queued")
    extra = set(found) - {c.name for c in expected.collections}
    if extra:
        problems.append(f"collections not in the manifest: {', '.join(sorted(extra))}")
    return problems


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when chromasnap dies (Linux PR_SET_PDEATHSIG),
    killed or crashed, so no child outlives it; it exits at once if that already happened.
    prctl is resolved here, before the fork: the child only calls into libc."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the timeout and group kill remain
        return lambda: None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def spawn_child(cmd: list[str], stdin: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """Start a child (probe, collection export or restore, SQLite copy) in a session of its
    own, so that it and anything it starts can be killed as a group, and killed with
    chromasnap should chromasnap die first; no telemetry, no .pyc. Its output is decoded
    leniently: a crash may print bytes of the damaged files. `stdin` is /dev/null unless a
    child is driven through it (the SQLite copy holding its read lock)."""
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen(
        cmd,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent(os.getpid()),
    )


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a child started by `spawn_child` and its own children."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _trim(text: str, limit: int = 4000) -> str:
    text = text or ""
    return text if len(text) <= limit else "…" + text[-limit:]


def chromadb_version_of(python: str) -> str | None:
    """chromadb's version in another interpreter, without importing it."""
    try:
        out = subprocess.run(
            [python, "-c", "import importlib.metadata as m; print(m.version('chromadb'))"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
