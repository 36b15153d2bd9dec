"""Copy snapshots between two stores, local or remote, sending only the blobs the target lacks.

(Not `copy.py`: the child scripts run with this folder on sys.path, where it would shadow
the standard library's `copy`.)

Blobs are content-addressed (BLAKE3 of their content), so two stores agree on every key:
the target's index says what it has, the snapshots' chunk lists and record indexes
(gc.References) what they need. The missing blobs are read from the source's packs in
coalesced ranges, each checked against its key, and written into new packs of the target
as they are stored (compressed bodies copied, never recompressed).

Resumable: each pack is followed by an index file naming its blobs, and snapshot documents
are written last (then the catalog). A copy killed at any point leaves packs that are either
indexed (a second run skips their blobs) or unreferenced (gc reclaims them); a snapshot is
listed in the target only once everything it references is there. Verified: every pack
written is read back whole and its hash compared with its name (`verify=False` skips that).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import zstandard
from blake3 import blake3

from chromasnap.manifest import PackEntry, Snapshot, limits, load_snapshot

from . import locks
from .backend import StorageBackend
from .errors import ObjectExists, StoreError, UsageError
from .gc import References
from .pack import BlobLocation, PackFile, decompress, pack_name
from .repository import Repository

GAP = 256 << 10
"""Blobs of one source pack closer than this are read in one range request."""
MAX_RANGE = 16 << 20
"""The most one range request reads (a pack is at most a few times the pack size)."""
PARALLEL_PACKS = 4
"""Packs finished, uploaded and verified at once while the next is filled."""

Progress = Callable[[int], None]
_COUNT = threading.Lock()


@dataclass
class CopyResult:
    """What a copy did: snapshots copied and already there, and what was sent."""

    source: str
    target: str
    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    blobs_sent: int = 0
    packs_sent: int = 0
    bytes_sent: int = 0
    """Bytes written to the target: packs, index files and snapshot documents."""
    bytes_read: int = 0
    """Bytes read from the source's packs (ranges may span a few unneeded bytes)."""
    duration_s: float = 0.0


def _runs(locs: list[tuple[str, BlobLocation]]) -> list[list[tuple[str, BlobLocation]]]:
    """Blobs of one pack in offset order, grouped into runs read with one request each."""
    locs = sorted(locs, key=lambda kl: kl[1].offset)
    runs: list[list[tuple[str, BlobLocation]]] = []
    for key, loc in locs:
        if runs:
            first, last = runs[-1][0][1], runs[-1][-1][1]
            end = last.offset + last.length
            if loc.offset - end <= GAP and loc.offset + loc.length - first.offset <= MAX_RANGE:
                runs[-1].append((key, loc))
                continue
        runs.append([(key, loc)])
    return runs


def _target(dst: StorageBackend, source: Repository) -> Repository:
    """The target store, created like the source (chunking, compression, pack size) if new."""
    if dst.exists():
        return Repository.open(dst)
    cfg = source.config
    return Repository.open_or_create(
        dst,
        compression=cfg.compression,
        chunking=cfg.chunking,
        pack_size=cfg.pack_size,
        retention=cfg.retention,
    )


def copy_snapshots(
    src: StorageBackend,
    dst: StorageBackend,
    refs: Sequence[str] | None = None,
    *,
    verify: bool = True,
    progress: Progress | None = None,
) -> CopyResult:
    """Copy the snapshots `refs` (ids, unique prefixes or `latest`; all when None) from
    `src` to `dst`, which is created if it does not exist. Holds the target's store lock."""
    t0 = time.monotonic()
    if src.location == dst.location:
        raise UsageError(f"copy from {src.location} to itself")
    for side in (src, dst):  # blob names and bodies differ per key: re-sealing is not built yet
        if side.exists() and side.list("keys"):
            raise UsageError(
                f"{side.location} is an encrypted store: copy and mirroring handle plain stores only so far"
            )
    source = Repository.open(src)
    if refs:
        wanted = [source.load_snapshot(source.resolve(r)) for r in refs]
    else:
        wanted, problems = source.snapshots()
        if problems:
            raise StoreError(f"{problems[0]}; copy stopped before writing anything")
    result = CopyResult(source=src.location, target=dst.location)
    with locks.store_lock(dst):
        target = _target(dst, source)
        target.refresh_index()
        there = set(target.snapshot_ids())
        todo = sorted({s.id: s for s in wanted if s.id not in there}.values(), key=lambda s: s.created_at)
        result.present = sorted({s.id for s in wanted if s.id in there})
        if todo:
            _send_blobs(source, target, todo, verify, result, progress)
            for snap in todo:
                _send_document(source, target, snap, result)
    result.duration_s = time.monotonic() - t0
    return result


def _send_blobs(
    source: Repository,
    target: Repository,
    snaps: list[Snapshot],
    verify: bool,
    result: CopyResult,
    progress: Progress | None,
) -> None:
    """Every blob `snaps` reference that the target lacks, into new packs of the target."""
    needed = References(source).of(snaps)
    have = target.index()
    src_index = source.index()
    by_pack: dict[str, list[tuple[str, BlobLocation]]] = {}
    for key in sorted(needed - have.keys()):
        loc = src_index.get(key)
        if loc is None:
            raise StoreError(
                f"blob {key[:16]} is not in the index of {source.backend.location}; copy stopped"
            )
        by_pack.setdefault(loc.pack, []).append((key, loc))
    scratch = target.workdir.ensure()
    dctx = zstandard.ZstdDecompressor()
    pool = ThreadPoolExecutor(PARALLEL_PACKS, thread_name_prefix="chromasnap-copy")
    pending: list[Future[None]] = []
    pack: PackFile | None = None
    try:
        for pack_id in sorted(by_pack):
            for run in _runs(by_pack[pack_id]):
                start = run[0][1].offset
                end = run[-1][1].offset + run[-1][1].length
                data = source.backend.load(pack_name(pack_id), start, end - start)
                result.bytes_read += len(data)
                for key, loc in run:
                    body = data[loc.offset - start : loc.offset - start + loc.length]
                    what = f"blob {key[:16]} in pack {pack_id[:16]} of {source.backend.location}"
                    raw = decompress(dctx, body, loc.raw_length, what)
                    if len(raw) != loc.raw_length or blake3(raw).hexdigest() != key:
                        raise StoreError(f"{what} does not match its hash; copy stopped")
                    if pack is None:
                        pack = PackFile(scratch)
                    pack.add(key, loc.type, body, loc.raw_length)
                    result.blobs_sent += 1
                    if progress is not None:
                        progress(len(body))
                    if pack.size >= target.config.pack_size:
                        pending.append(pool.submit(_commit_pack, target, pack, verify, result))
                        pack = None
                # a failed upload stops the copy at the next run, not at the end
                for fut in [f for f in pending if f.done()]:
                    fut.result()
        if pack is not None:
            pending.append(pool.submit(_commit_pack, target, pack, verify, result))
            pack = None
        for fut in pending:
            fut.result()
    finally:
        if pack is not None:
            pack.abort()
        pool.shutdown(wait=True, cancel_futures=True)


def _commit_pack(target: Repository, pack: PackFile, verify: bool, result: CopyResult) -> None:
    """Finish, upload, verify, then index one pack (from then on a second run skips it)."""
    try:
        pack_id, local = pack.finish()
        name = pack_name(pack_id)
        try:
            target.backend.save_file(name, local, create_only=True)
        except ObjectExists:  # the same bytes, named by their hash (an earlier, killed run)
            local.unlink(missing_ok=True)
    except BaseException:
        pack.abort()
        raise
    if verify:
        size = target.backend.stat(name)
        h = blake3()
        for off in range(0, size, MAX_RANGE):
            h.update(target.backend.load(name, off, min(MAX_RANGE, size - off)))
        if size != pack.size or h.hexdigest() != pack_id:
            raise StoreError(f"{target.backend.location}/{name} does not read back as written; copy stopped")
    locks.check_lease(target.backend)
    entry = PackEntry.model_construct(id=pack_id, size=pack.size, blobs=pack.blobs)
    index = target.write_index([entry])
    index_size = 0
    with contextlib.suppress(StoreError):
        index_size = target.backend.stat(index)
    with _COUNT:
        result.bytes_sent += pack.size + index_size
        result.packs_sent += 1


def _send_document(source: Repository, target: Repository, snap: Snapshot, result: CopyResult) -> None:
    """The snapshot's document as stored (its id is its content's hash), then the catalog."""
    name = f"snapshots/{snap.id}.json"
    raw = source.backend.load_bounded(name, limits.MAX_SNAPSHOT_DOC)
    load_snapshot(raw, f"{source.backend.location}/{name}", expected_id=snap.id)  # hostile input
    locks.check_lease(target.backend)
    with contextlib.suppress(ObjectExists):
        target.backend.save(name, raw, create_only=True)
        result.bytes_sent += len(raw)
    target.catalog_add(snap.id)
    result.copied.append(snap.id)
