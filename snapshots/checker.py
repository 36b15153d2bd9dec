"""Integrity: the object check (every stored byte) and the chromadb probe (a child process).

The object check re-reads every blob a snapshot references, decompresses it, checks its
hash, reassembles every file against its whole-file hash without writing anything, and
rehashes every pack file that holds those blobs against its name.
The probe opens a materialized database with chromadb in a throwaway child process; a
Rust panic or a segfault kills only the child and becomes the verdict `crashed`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from blake3 import blake3
from pydantic import BaseModel, Field

from chromasnap.manifest import (
    ChunkRef,
    FileEntry,
    HnswSplitList,
    PlainList,
    Snapshot,
    Verification,
    WalState,
)

from . import children, hnsw, locks, records, versions
from . import probe as probe_script
from .errors import ChromasnapError, LockTimeout, SnapshotNotFound, StoreError
from .extract import extract, join_streams, read_blobs
from .guard import describe_holders, open_by
from .layout import SQLITE_NAME, SQLITE_SIDE_FILES, check_database
from .livecopy import copy_database
from .pack import pack_name
from .repository import Repository
from .sqlite_state import apply_hnsw, read_wal_state_file

Verdict = Literal["ok", "damaged", "exception", "crashed", "timeout", "mismatch"]
PROBE_MARK = "CHROMASNAP-PROBE "
SELF_HIT_RATIO = 0.5
"""Share of sampled records that must find themselves among their 10 nearest hits. HNSW is
approximate: a healthy index of random 384-d vectors added 50 at a time misses 4-7% (measured
with chromadb 1.5.9 alone); a broken one misses nearly all (a truncated length.bin: 20 of 20)."""
DEFAULT_TIMEOUT = 120.0
PER_COLLECTION_S = 0.5
"""The probe opens and counts every collection: its default time grows by this much per
collection the snapshot records (1,000 collections did not open within a flat 120 s on a
busy 2-core machine: issue 20's `wide` workload)."""


def probe_timeout(expected: WalState | None, timeout: float | None = None) -> float:
    """Seconds the probe may run: `timeout` when given, else DEFAULT_TIMEOUT plus
    PER_COLLECTION_S for each collection in `expected`."""
    if timeout:
        return timeout
    return DEFAULT_TIMEOUT + PER_COLLECTION_S * (len(expected.collections) if expected else 0)


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
    keys: set[str] = set()
    try:
        keys |= records.referenced(repo, snap)
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


Blobs = Callable[[list[ChunkRef]], Iterator[bytes]]


def _check_file(
    repo: Repository,
    f: FileEntry,
    blobs: Callable[[list[ChunkRef]], Iterator[bytes]],
    join: Callable[[Blobs, HnswSplitList], Iterator[bytes | memoryview]],
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


def check_packs(
    repo: Repository, snap: Snapshot, verified: dict[str, str | None], workers: int = 2
) -> list[str]:
    """Problems in the pack files holding `snap`'s blobs: each is rehashed whole against its name.

    The blob checks catch every change that alters content; this catches the rest (a bit
    zstd's decoder ignores, a pack trailer), so a failing disk shows before it costs data.
    `verified` caches each pack under ``pack:<id>`` for the run. Packs are hashed `workers`
    at a time (reads and BLAKE3 run outside the GIL: both cores, not one).
    """
    index = repo.index()
    packs = sorted({loc.pack for k in referenced_blobs(repo, snap) if (loc := index.get(k))})
    todo = [pid for pid in packs if f"pack:{pid}" not in verified]
    if len(todo) > 1 and workers > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chromasnap-pack") as pool:
            found = list(pool.map(lambda pid: _check_pack(repo, pid), todo))
    else:
        found = [_check_pack(repo, pid) for pid in todo]
    verified.update({f"pack:{pid}": problem for pid, problem in zip(todo, found, strict=True)})
    problems = []
    for pid in packs:
        if verified[f"pack:{pid}"]:
            problems.append(f"pack {pid[:16]} {verified[f'pack:{pid}']}")
    return problems


def _check_pack(repo: Repository, pid: str) -> str | None:
    name = pack_name(pid)
    try:
        size = repo.backend.stat(name)
        h = blake3()
        for off in range(0, size, PACK_READ):
            h.update(repo.backend.load(name, off, min(PACK_READ, size - off)))
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
        done = children.run([interpreter, probe_script.__file__, str(db), "--sample", str(sample)], timeout)
    except OSError as exc:
        return ProbeReport(
            verdict="exception",
            ok=False,
            interpreter=interpreter,
            detail=f"cannot start {interpreter}: {exc.strerror or exc}",
        )
    out, err = done.stdout, done.stderr
    if done.timed_out:
        return ProbeReport(
            verdict="timeout",
            ok=False,
            interpreter=interpreter,
            detail=f"the probe did not finish in {timeout:g} s",
            stderr=_trim(err),
            duration_s=time.monotonic() - t0,
        )
    duration = time.monotonic() - t0
    report = ProbeReport(
        verdict="ok",
        ok=True,
        returncode=done.returncode,
        interpreter=interpreter,
        stderr=_trim(err),
        duration_s=duration,
    )
    name = done.signal
    if name is not None:
        report.verdict, report.ok, report.signal = "crashed", False, name
        report.detail = f"chromadb killed the process with {name}" + (
            " (a Rust panic aborts)" if name == "SIGABRT" else ""
        )
        return report
    line = next((x for x in reversed(out.splitlines()) if x.startswith(PROBE_MARK)), None)
    if line is None:
        report.verdict, report.ok = "exception", False
        tail = _trim(err).strip().splitlines()
        report.detail = f"the probe exited with {done.returncode} and no report" + (
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


def _trim(text: str, limit: int = 4000) -> str:
    text = text or ""
    return text if len(text) <= limit else "…" + text[-limit:]


# --- verify: the verdict of each snapshot, recorded in its history --------------------------


def verify_many(
    repo: Repository,
    snaps: Sequence[Snapshot],
    listing: Callable[[], list[Snapshot]],
    named: bool,
    quick: bool = False,
    python: str | None = None,
    timeout: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[VerifyReport]:
    """Verify `snaps` (shared files read once), record each verdict in its snapshot's
    history. `listing()` gives every snapshot (to name those sharing a damaged blob);
    `named`: the snapshots were asked for by name, so one removed meanwhile is an error."""
    verified: dict[str, str | None] = {}
    reports = []
    for snap in snaps:
        t0 = time.monotonic()
        report = _check(repo, snap, quick, python, timeout, verified, progress, listing)
        if not report.ok and report.verdict == "damaged":
            confirmed = _confirm_damage(repo, snap, report, quick, python, timeout, progress, listing)
            if confirmed is None:  # prune removed it while this run read it
                if named:
                    raise SnapshotNotFound(f"snapshot {snap.short_id} was removed while being verified")
                continue
            report = confirmed
        if python is not None and not quick:
            report.migration = _migration_note(snap, python)
        report.duration_s = time.monotonic() - t0
        record(repo, report, python)
        reports.append(report)
    return reports


def _migration_note(snap: Snapshot, python: str) -> str | None:
    """What opening `snap` with the chromadb of `python` does to its schema (one line)."""
    try:
        known = versions.check_openable(snap.id, snap.wal.schema_migrations, snap.chromadb_version, python)
    except versions.VersionMismatch as exc:
        return str(exc)
    except ChromasnapError:
        return None
    return versions.describe_migration(snap.wal.schema_migrations, known) if known else None


def _check(
    repo: Repository,
    snap: Snapshot,
    quick: bool,
    python: str | None,
    timeout: float | None,
    verified: dict[str, str | None],
    progress: Callable[[int], None] | None,
    listing: Callable[[], list[Snapshot]],
) -> VerifyReport:
    """One snapshot's verdict: its stored bytes, and (unless `quick`) the probe."""
    probe = None
    if quick:
        problems, checked = check_objects(repo, snap, verified, progress)
    else:  # extracting checks every blob and every whole-file hash on the way
        probe, problems = _probe_snapshot(repo, snap, python, timeout, verified)
        checked = snap.totals.data_bytes if probe is not None else 0
    if problems:
        detail = damage_detail(repo, problems, listing())
        if probe is not None:  # only pack hashes failed: the content was probed
            detail += f"; probe {probe.verdict}: {probe.detail}"
        return VerifyReport(
            id=snap.id,
            ok=False,
            verdict="damaged",
            mode="quick" if quick else "full",
            detail=detail,
            checked_bytes=checked,
            probe=probe,
            restorable=probe is not None and probe.ok,
        )
    if quick:
        return VerifyReport(
            id=snap.id,
            ok=True,
            verdict="ok",
            mode="quick",
            checked_bytes=checked,
            detail=f"{snap.totals.files} files, {checked} bytes: every hash matches",
        )
    assert probe is not None
    return VerifyReport(
        id=snap.id,
        ok=probe.ok,
        verdict=probe.verdict,
        mode="full",
        detail=probe.detail,
        checked_bytes=checked,
        probe=probe,
    )


def _confirm_damage(
    repo: Repository,
    snap: Snapshot,
    report: VerifyReport,
    quick: bool,
    python: str | None,
    timeout: float | None,
    progress: Callable[[int], None] | None,
    listing: Callable[[], list[Snapshot]],
) -> VerifyReport | None:
    """Verify reads without a lock, so a prune running meanwhile may have moved a blob or
    removed the snapshot under it. Damage is reported only once it is seen again under
    the store lock (no prune then runs), with the index read afresh; None when the
    snapshot is gone."""

    def again() -> VerifyReport | None:
        if snap.id not in repo.snapshot_ids():
            return None
        repo.reset_index()  # read every index file afresh
        repo.backend.close()
        if quick:
            return _check(repo, snap, True, python, timeout, {}, progress, listing)
        problems, _ = check_objects(repo, snap, {})
        whole = VerifyReport(id=snap.id, ok=True, verdict="ok", mode="quick")
        return report if problems else whole

    try:
        with locks.store_lock(repo.backend):
            seen = again()
    except (LockTimeout, StoreError, OSError):  # a read-only store, a long writer: look anyway
        seen = again()
    if seen is None or quick or not seen.ok:
        return seen
    return _check(repo, snap, quick, python, timeout, {}, progress, listing)  # whole: probe it again


def damage_detail(repo: Repository, problems: list[str], snaps: list[Snapshot]) -> str:
    """The problems, and for each damaged blob every snapshot of `snaps` that references it."""
    detail = "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
    prefixes = {p for p in (damaged_blob_key(x) for x in problems) if p}
    if prefixes:
        users = []
        for s in snaps:
            keys = referenced_blobs(repo, s)
            if any(k.startswith(p) for k in keys for p in prefixes):
                users.append(s.short_id)
        blobs = ", ".join(sorted(prefixes))
        detail += f"; damaged blob(s) {blobs} referenced by snapshots {', '.join(users)}"
    packs = {p for p in (damaged_pack_id(x) for x in problems) if p}
    if packs:
        index = repo.index()
        users = [
            s.short_id
            for s in snaps
            if any((loc := index.get(k)) and loc.pack[:16] in packs for k in referenced_blobs(repo, s))
        ]
        held = ", ".join(sorted(packs))
        detail += f"; damaged pack(s) {held} hold blobs of snapshots {', '.join(users)}"
        if all(damaged_pack_id(x) for x in problems):
            detail += (
                "; every blob these snapshots need still matches its hash, so they restore"
                " as recorded, but the disk under the store deserves a check"
            )
    return detail


def _probe_snapshot(
    repo: Repository,
    snap: Snapshot,
    python: str | None,
    timeout: float | None,
    verified: dict[str, str | None],
) -> tuple[ProbeReport | None, list[str]]:
    """Extract privately (checking every blob) and probe; with any pack whose hash fails.

    No probe (None) when a blob or the record index is damaged."""
    work = repo.workdir.private(f"verify-{snap.id[:12]}")
    try:
        try:
            db = extract(repo, snap, work / "db", durable=False)
        except StoreError as exc:  # name exactly what is damaged
            problems, _ = check_objects(repo, snap, {})
            return None, problems or [str(exc)]
        damaged = records.check(repo, snap)
        if damaged:
            return None, damaged
        packs = check_packs(repo, snap, verified)  # content intact: still probe
        probe = run_probe(db, snap.wal, python, probe_timeout(snap.wal, timeout))
        return probe, packs
    finally:  # also on Ctrl-C: the private copy never outlives the check
        shutil.rmtree(work, ignore_errors=True)


def record(repo: Repository, report: VerifyReport, python: str | None) -> None:
    """Append the verdict to the snapshot's verification history (under the store lock); a
    read-only store still gets its verdict, just not its history."""
    version = report.probe.chromadb_version if report.probe else None
    if report.probe is None and python is None:
        version = children.installed_version("chromadb")
    elif version is None and python is not None:
        version = children.chromadb_version_of(python)
    entry = Verification(
        at=datetime.now(UTC),
        mode=report.mode,
        interpreter=python or sys.executable,
        chromadb_version=version,
        verdict=report.verdict,
        ok=report.ok,
        duration_s=round(report.duration_s, 3),
        detail=report.detail[:2000],
    )
    with contextlib.suppress(OSError, ChromasnapError):
        repo.update_snapshot(report.id, lambda snap: snap.verifications.append(entry))


# --- health: the live database ----------------------------------------------------------------


def health(
    db_path: Path, in_place: bool = False, python: str | None = None, timeout: float | None = None
) -> HealthReport:
    """Probe the live database: a private consistent copy by default (a crash or a
    rolled-back journal then touches only the copy), the directory itself if `in_place`."""
    check_database(db_path)
    holders = open_by(db_path)  # a `chroma run` server, an application's client
    if in_place and holders:
        raise ChromasnapError(
            f"{describe_holders(db_path, holders)}; --in-place would open the live files beside "
            "it: drop --in-place to probe a private copy"
        )
    work: Path | None = None
    try:
        if in_place:
            target = db_path
        else:
            parent = db_path.parent if os.access(db_path.parent, os.W_OK) else Path(tempfile.gettempdir())
            work = Path(tempfile.mkdtemp(prefix=".chromasnap-health-", dir=parent))
            target = work / "db"
            copy_database(db_path, target)
        # in place, the live chroma.sqlite3 is never opened in this process (see
        # sqlite_copy.py), so there is no recorded state to compare with
        expected = None if in_place else expected_state(target)
        probe = run_probe(target, expected, python, probe_timeout(expected, timeout))
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return HealthReport(
        healthy=probe.ok,
        verdict=probe.verdict,
        detail=probe.detail,
        in_place=in_place,
        probe=probe,
        holders=[f"pid {pid} ({cmd})" for pid, cmd in holders],
    )


def expected_state(db: Path) -> WalState | None:
    """The WAL state of a (private) database directory, to compare the probe's findings with."""
    if any((db / side).exists() for side in SQLITE_SIDE_FILES[:2]):
        return None  # chromadb will first roll back or replay; counts are not comparable
    state = read_wal_state_file(db / SQLITE_NAME)
    info: dict[str, tuple[int | None, bool]] = {}
    for seg in db.iterdir():
        if seg.is_dir() and not seg.is_symlink() and (seg / "header.bin").is_file():
            h = hnsw.parse_header((seg / "header.bin").read_bytes())
            info[seg.name] = (
                h.cur_element_count if h else None,
                (seg / "index_metadata.pickle").exists(),
            )
    apply_hnsw(state, info)
    return state
