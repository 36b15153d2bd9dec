"""Copy snapshots between two stores, local or remote, sending only the blobs the target lacks.

(Not `copy.py`: the child scripts run with this folder on sys.path, where it would shadow
the standard library's `copy`.)

Two ways, chosen by the stores' codecs (crypto.py):

- **As stored**, when both name and seal alike (both plain, or both encrypted under one
  master key: `copy --same-key` makes such a pair). Blob keys and snapshot ids agree, so the
  target's index says what it has and the snapshots' chunk lists and record indexes
  (gc.References) what they need. Missing blobs are read from the source's packs in
  coalesced ranges, each opened and checked against its key, and written into new packs as
  they are stored (compressed, and sealed, bodies copied; never recompressed or resealed).
- **Re-sealed**, when they differ (different master keys, or an encrypted and a plain
  store). A blob's name is then a keyed hash of its plaintext in one store and another in
  the other, so what the target lacks is known from the plaintext: each needed source blob
  is opened, decompressed and checked, named by the target's codec, and sent (its zstd
  frame sealed under the target's key) only if the target's index lacks that name. Chunk
  lists and record indexes name blobs, so they are rewritten with the target's names; so is
  the snapshot document, whose id is the target's keyed hash of it (and its `parent` the
  parent's id in the target, when the parent is there). A snapshot is already in the target
  when a target snapshot has the same content apart from names (`content_fingerprint`).
  To avoid reading blobs the target already holds, names are first paired through the
  copied parent: a source snapshot and its copy list the same chunks in the same order, so
  their chunk lists (and record indexes) give source name -> target name without reading
  any data blob. Only what that pairing does not cover is read.

Resumable either way: each pack is followed by an index file naming its blobs, and snapshot
documents are written last (then the catalog). A copy killed at any point leaves packs that
are either indexed (a second run skips their blobs) or unreferenced (gc reclaims them); a
snapshot is listed in the target only once everything it references is there. Verified:
every pack written is read back whole and its hash compared with its name, and a re-sealed
document is read back under its new id (`verify=False` skips both).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import zstandard
from blake3 import blake3

from chromasnap.manifest import (
    ChunkListDoc,
    Extent,
    HnswSplitList,
    PackEntry,
    PlainList,
    RecordIndex,
    Snapshot,
    dumps,
    limits,
    load_snapshot,
)
from chromasnap.manifest.io import MUTABLE, snapshot_id

from . import locks
from .backend import StorageBackend
from .checker import _chunk_keys
from .crypto import AuthenticationError, Codec
from .errors import ObjectExists, ObjectNotFound, StoreError, UsageError
from .gc import References
from .pack import BlobLocation, PackFile, decompress, pack_name
from .records import load_index
from .repository import PasswordSource, Repository

if TYPE_CHECKING:
    from .keys import Kdf

GAP = 256 << 10
"""Blobs of one source pack closer than this are read in one range request."""
MAX_RANGE = 16 << 20
"""The most one range request reads (a pack is at most a few times the pack size)."""
PARALLEL_PACKS = 4
"""Packs finished, uploaded and verified at once while the next is filled."""
READERS = 3
"""Source ranges read and opened at once (each up to MAX_RANGE in memory)."""

Progress = Callable[[int], None]
_COUNT = threading.Lock()


@dataclass
class CopyResult:
    """What a copy did: snapshots copied and already there, and what was sent."""

    source: str
    target: str
    copied: list[str] = field(default_factory=list)
    """Source ids of the snapshots copied."""
    present: list[str] = field(default_factory=list)
    """Source ids of the snapshots the target already had."""
    blobs_sent: int = 0
    packs_sent: int = 0
    bytes_sent: int = 0
    """Bytes written to the target: packs, index files and snapshot documents."""
    bytes_read: int = 0
    """Bytes read from the source's packs (ranges may span a few unneeded bytes)."""
    duration_s: float = 0.0
    resealed: bool = False
    """Blobs were opened and sealed again (the stores' keys differ): ids differ between them."""
    ids: dict[str, str] = field(default_factory=dict)
    """Source id -> the snapshot's id in the target, for copied and present snapshots."""
    created: bool = False
    """The target store was created by this copy."""
    encrypted: bool = False
    """The target store is encrypted."""
    target_codec: Codec | None = field(default=None, repr=False)
    """The codec that opened the target (mirroring keeps it: one key derivation per manager)."""


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


# --- opening both stores ------------------------------------------------------------------


def _opens_with(dst: StorageBackend, codec: Codec) -> Repository | None:
    """The target opened with `codec` (the source's, or one kept from an earlier mirroring)
    if one of its sealed objects authenticates under it; None otherwise (then: password)."""
    if not codec.encrypted:
        return None
    try:
        repo = Repository.open(dst, codec=codec)
    except StoreError:
        return None
    names = [
        ("catalog.json", limits.MAX_CATALOG),
        *((n, limits.MAX_INDEX_FILE) for n in repo.index_files()[:1]),
    ]
    for name, most in names:
        try:
            data = dst.load_bounded(name, most + codec.overhead)
        except ObjectNotFound:
            continue
        except StoreError:
            return None
        try:
            codec.open(name, data)
        except AuthenticationError:
            return None
        return repo
    return None


def _target(
    dst: StorageBackend,
    source: Repository,
    password: PasswordSource | None,
    encrypt: bool | None,
    same_key: bool,
    kdf: Kdf | None,
    codec: Codec | None,
) -> tuple[Repository, bool]:
    """The target store and whether this copy created it. A new one is made like the source
    (chunking, compression, pack size, retention rules), encrypted when `encrypt` says so,
    else when it is remote or the source is encrypted. A copy never decrypts unasked: an
    encrypted source into an existing plain target needs `encrypt=False` (`--no-encrypt`)."""
    if dst.exists():
        repo = None
        for known in (codec, source.codec):
            if repo is None and known is not None:
                repo = _opens_with(dst, known)
        if repo is None:
            repo = Repository.open(dst, password)
        if encrypt is not None and encrypt != repo.codec.encrypted:
            state = "encrypted" if repo.codec.encrypted else "not encrypted"
            raise UsageError(
                f"{dst.location} exists and is {state}: --encrypt/--no-encrypt apply to a new target only"
            )
        if encrypt is None and source.codec.encrypted and not repo.codec.encrypted:
            raise UsageError(
                f"{dst.location} is not encrypted and {source.backend.location} is: the copy would be "
                "readable there; give --no-encrypt to copy into it in the clear on purpose"
            )
        if same_key and not repo.codec.same_keys(source.codec):
            raise UsageError(
                f"{dst.location} exists with a key of its own: --same-key applies to a new target only"
            )
        return repo, False
    enc = encrypt if encrypt is not None else (not dst.is_local or source.codec.encrypted)
    if same_key and not (enc and source.codec.encrypted):
        raise UsageError("--same-key needs an encrypted source and an encrypted target")
    cfg = source.config
    return (
        Repository.create(
            dst,
            password,
            encrypt=enc,
            kdf=kdf,
            master_key=source.master_key() if same_key else None,
            compression=cfg.compression,
            chunking=cfg.chunking,
            pack_size=cfg.pack_size,
            retention=cfg.retention,
        ),
        True,
    )


def _from_password() -> str:
    from .password import read_password

    return read_password(
        prefix="CHROMASNAP_FROM", option="--from-password-file", prompt="Password of the source store: "
    )


def copy_snapshots(
    src: StorageBackend,
    dst: StorageBackend,
    refs: Sequence[str] | None = None,
    *,
    verify: bool = True,
    progress: Progress | None = None,
    from_password: PasswordSource | None = None,
    password: PasswordSource | None = None,
    source: Repository | None = None,
    encrypt: bool | None = None,
    same_key: bool = False,
    kdf: Kdf | None = None,
    target_codec: Codec | None = None,
) -> CopyResult:
    """Copy the snapshots `refs` (ids, unique prefixes or `latest`; all when None) from
    `src` to `dst`, which is created if it does not exist. Holds the target's store lock.

    Passwords (asked only for an encrypted store): `from_password` the source's (default
    CHROMASNAP_FROM_PASSWORD_FILE, _COMMAND, CHROMASNAP_FROM_PASSWORD, a prompt),
    `password` the target's (default CHROMASNAP_PASSWORD_FILE, _COMMAND, CHROMASNAP_PASSWORD,
    a prompt). `source`: the source already open (mirroring). `encrypt`, `same_key`, `kdf`:
    how a new target is made (see `_target`); `target_codec`: a codec that opened `dst`
    before (tried first, then `password`)."""
    t0 = time.monotonic()
    if src.location == dst.location:
        raise UsageError(f"copy from {src.location} to itself")
    if source is None:
        source = Repository.open(src, from_password or _from_password)
    if refs:
        wanted = [source.load_snapshot(source.resolve(r)) for r in refs]
    else:
        wanted, problems = source.snapshots()
        if problems:
            raise StoreError(f"{problems[0]}; copy stopped before writing anything")
    result = CopyResult(source=src.location, target=dst.location)
    with locks.store_lock(dst):
        target, result.created = _target(dst, source, password, encrypt, same_key, kdf, target_codec)
        result.encrypted, result.target_codec = target.codec.encrypted, target.codec
        target.refresh_index()
        wanted = sorted({s.id: s for s in wanted}.values(), key=lambda s: (s.created_at, s.id))
        if target.codec.same_keys(source.codec):
            there = set(target.snapshot_ids())
            todo = [s for s in wanted if s.id not in there]
            result.present = sorted(s.id for s in wanted if s.id in there)
            result.ids = {s.id: s.id for s in wanted}
            if todo:
                _send_blobs(source, target, todo, verify, result, progress)
                for snap in todo:
                    _send_document(source, target, snap, result)
        else:
            result.resealed = True
            _reseal(source, target, wanted, verify, result, progress)
    result.duration_s = time.monotonic() - t0
    return result


# --- packs of the target ------------------------------------------------------------------


class _Packer:
    """Blob bodies into new packs of the target: each full pack is uploaded, read back and
    indexed on a pool while the next one fills, so a killed copy's next run skips it."""

    def __init__(
        self, target: Repository, verify: bool, result: CopyResult, progress: Progress | None
    ) -> None:
        self.target, self.verify, self.result, self.progress = target, verify, result, progress
        self.have = target.index()
        self.sent: set[str] = set()
        self.scratch = target.workdir.ensure()
        self.pool = ThreadPoolExecutor(PARALLEL_PACKS, thread_name_prefix="chromasnap-copy")
        self.pending: list[Future[None]] = []
        self.pack: PackFile | None = None

    def has(self, key: str) -> bool:
        return key in self.have or key in self.sent

    def add(self, key: str, blob_type: str, body: bytes, raw_length: int) -> None:
        if self.has(key):
            return
        self.sent.add(key)
        if self.pack is None:
            self.pack = PackFile(self.scratch, self.target.codec)
        self.pack.add(key, blob_type, body, raw_length)
        self.result.blobs_sent += 1
        if self.progress is not None:
            self.progress(len(body))
        if self.pack.size >= self.target.config.pack_size:
            self.pending.append(
                self.pool.submit(_commit_pack, self.target, self.pack, self.verify, self.result)
            )
            self.pack = None
        for fut in [f for f in self.pending if f.done()]:  # a failed upload stops the copy now
            fut.result()

    def put(self, raw: bytes, blob_type: str) -> str:
        """A blob made here (a rewritten chunk list or record index): named, compressed and
        sealed by the target's codec; its key."""
        codec = self.target.codec
        key = codec.blob_key(raw)
        if not self.has(key):
            level = self.target.config.compression.level
            frame = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)
            self.add(key, blob_type, codec.seal(key, frame), len(raw))
        return key

    def flush(self) -> None:
        """Every blob added so far is in a pack that is durable, read back and indexed."""
        if self.pack is not None:
            self.pending.append(
                self.pool.submit(_commit_pack, self.target, self.pack, self.verify, self.result)
            )
            self.pack = None
        pending, self.pending = self.pending, []
        for fut in pending:
            fut.result()

    def close(self) -> None:
        if self.pack is not None:
            self.pack.abort()
            self.pack = None
        self.pool.shutdown(wait=True, cancel_futures=True)


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


# --- reading the source -------------------------------------------------------------------

Opened = tuple[str, BlobLocation, bytes, bytes]
"""(source key, its location, the stored body, the body opened: its zstd frame)."""


def _read(
    source: Repository, keys: list[str], result: CopyResult, plaintext: bool
) -> Iterator[tuple[Opened, bytes | None]]:
    """The source blobs `keys`, read from their packs in coalesced ranges on a few threads,
    each opened and checked against its key; with the plaintext when `plaintext`. In order
    of pack and offset; at most READERS ranges are held at once."""
    src_index = source.index()
    by_pack: dict[str, list[tuple[str, BlobLocation]]] = {}
    for key in sorted(set(keys)):
        loc = src_index.get(key)
        if loc is None:
            source.refresh_index()
            loc = source.index().get(key)
        if loc is None:
            raise StoreError(
                f"blob {key[:16]} is not in the index of {source.backend.location}; copy stopped"
            )
        by_pack.setdefault(loc.pack, []).append((key, loc))
    runs = [run for pack_id in sorted(by_pack) for run in _runs(by_pack[pack_id])]
    dctx = threading.local()
    codec = source.codec

    def one(run: list[tuple[str, BlobLocation]]) -> list[tuple[Opened, bytes | None]]:
        start = run[0][1].offset
        end = run[-1][1].offset + run[-1][1].length
        data = source.backend.load(pack_name(run[0][1].pack), start, end - start)
        with _COUNT:
            result.bytes_read += len(data)
        d = getattr(dctx, "d", None)
        if d is None:
            d = dctx.d = zstandard.ZstdDecompressor()
        out: list[tuple[Opened, bytes | None]] = []
        for key, loc in run:
            body = data[loc.offset - start : loc.offset - start + loc.length]
            what = f"blob {key[:16]} in pack {loc.pack[:16]} of {source.backend.location}"
            try:
                frame = codec.open(key, body)
            except AuthenticationError as exc:
                raise StoreError(f"{what} is damaged: {exc.reason}; copy stopped") from None
            raw = decompress(d, frame, loc.raw_length, what)
            if len(raw) != loc.raw_length or codec.blob_key(raw) != key:
                raise StoreError(f"{what} does not match its hash; copy stopped")
            out.append(((key, loc, body, frame), raw if plaintext else None))
        return out

    with ThreadPoolExecutor(READERS, thread_name_prefix="chromasnap-copy-read") as pool:
        ahead: list[Future[list[tuple[Opened, bytes | None]]]] = []
        it = iter(runs)
        try:
            for run in it:
                ahead.append(pool.submit(one, run))
                if len(ahead) >= READERS:
                    yield from ahead.pop(0).result()
            while ahead:
                yield from ahead.pop(0).result()
        finally:
            for fut in ahead:
                fut.cancel()


# --- copying as stored --------------------------------------------------------------------


def _send_blobs(
    source: Repository,
    target: Repository,
    snaps: list[Snapshot],
    verify: bool,
    result: CopyResult,
    progress: Progress | None,
) -> None:
    """Every blob `snaps` reference that the target lacks, into new packs of the target,
    bodies as stored (the two stores seal alike)."""
    needed = References(source).of(snaps)
    packer = _Packer(target, verify, result, progress)
    try:
        for (key, loc, body, _frame), _raw in _read(
            source, sorted(needed - packer.have.keys()), result, False
        ):
            packer.add(key, loc.type, body, loc.raw_length)
        packer.flush()
    finally:
        packer.close()


def _send_document(source: Repository, target: Repository, snap: Snapshot, result: CopyResult) -> None:
    """The snapshot's document as stored (its id is its content's hash), then the catalog."""
    name = f"snapshots/{snap.id}.json"
    raw = source.backend.load_bounded(name, limits.MAX_SNAPSHOT_DOC + source.codec.overhead)
    try:
        plain = source.codec.open(name, raw)
        load_snapshot(plain, f"{source.backend.location}/{name}", snap.id, source.codec.blob_key)  # hostile
    except AuthenticationError as exc:
        raise StoreError(f"{exc}; copy stopped") from None
    locks.check_lease(target.backend)
    with contextlib.suppress(ObjectExists):
        target.backend.save(name, raw, create_only=True)
        result.bytes_sent += len(raw)
    target.catalog_add(snap.id)
    result.copied.append(snap.id)


# --- copying re-sealed --------------------------------------------------------------------


def content_fingerprint(snap: Snapshot) -> str:
    """A snapshot's identity apart from blob names: BLAKE3 of its canonical document
    without its id, its mutable fields, `parent`, `records` and the files' chunk lists.
    A snapshot and its re-sealed copy in a store with another key share it (file hashes
    are BLAKE3 of the content in every store)."""
    data = snap.model_dump(mode="json")
    for name in (*MUTABLE, "parent", "records"):
        data.pop(name, None)
    for f in data.get("files", []):
        f.pop("chunk_list", None)
    return blake3(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _zip_lists(a: PlainList | HnswSplitList, b: PlainList | HnswSplitList) -> list[tuple[str, str]] | None:
    """(a's key, b's key) chunk by chunk when the two lists have the same shape, else None."""
    if isinstance(a, PlainList) and isinstance(b, PlainList):
        if a.size != b.size or [e.offset for e in a.extents] != [e.offset for e in b.extents]:
            return None
        pairs = [(ea.chunks, eb.chunks) for ea, eb in zip(a.extents, b.extents, strict=True)]
    elif isinstance(a, HnswSplitList) and isinstance(b, HnswSplitList):

        def shape(h: HnswSplitList) -> tuple[int, ...]:
            return h.size, h.record_size, h.link_bytes, h.records

        if shape(a) != shape(b):
            return None
        pairs = [(a.links, b.links), (a.vectors, b.vectors), (a.tail, b.tail)]
    else:
        return None
    out: list[tuple[str, str]] = []
    for ca, cb in pairs:
        if [n for _, n in ca] != [n for _, n in cb]:
            return None
        out += [(ka, kb) for (ka, _), (kb, _) in zip(ca, cb, strict=True)]
    return out


def _zip_records(a: RecordIndex, b: RecordIndex) -> list[tuple[str, str]] | None:
    """(a's key, b's key) for each chunk of two record indexes of the same shape, else None."""
    if len(a.collections) != len(b.collections) or len(a.versions) != len(b.versions):
        return None
    out: list[tuple[str, str]] = []
    for ca, cb in zip(a.collections, b.collections, strict=True):
        if (ca.id, ca.records, len(ca.chunks)) != (cb.id, cb.records, len(cb.chunks)):
            return None
        for ra, rb in zip(ca.chunks, cb.chunks, strict=True):
            if (ra.first, ra.count) != (rb.first, rb.count):
                return None
            out.append((ra.key, rb.key))
    for va, vb in zip(a.versions, b.versions, strict=True):
        if (va.collection, va.first, va.count) != (vb.collection, vb.first, vb.count):
            return None
        out.append((va.key, vb.key))
    return out


def _pair(source: Repository, target: Repository, s: Snapshot, t: Snapshot, keymap: dict[str, str]) -> None:
    """Source name -> target name for the blobs of `s` and of its copy `t`, from their chunk
    lists and record indexes alone (no data blob read). What does not line up is skipped:
    those blobs are then read and named from their plaintext."""
    by_path = {f.path: f for f in t.files}
    try:
        for fs in s.files:
            ft = by_path.get(fs.path)
            if ft is None or (fs.hash, fs.size, fs.layout) != (ft.hash, ft.size, ft.layout):
                continue
            if fs.chunk_list in keymap:
                continue
            pairs = _zip_lists(
                source.read_chunk_list(fs.chunk_list).list, target.read_chunk_list(ft.chunk_list).list
            )
            if pairs is not None:
                keymap.update(pairs)
                keymap[fs.chunk_list] = ft.chunk_list
        if s.records is not None and t.records is not None and s.records not in keymap:
            pairs = _zip_records(load_index(source, s.records), load_index(target, t.records))
            if pairs is not None:
                keymap.update(pairs)
                keymap[s.records] = t.records
    except StoreError:
        return  # an unreadable pair maps nothing more: its blobs are read instead


def _rewrite_list(doc: PlainList | HnswSplitList, keymap: dict[str, str]) -> ChunkListDoc:
    def sub(refs: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return [(keymap[k], n) for k, n in refs]

    if isinstance(doc, PlainList):
        extents = [Extent.model_construct(offset=e.offset, chunks=sub(e.chunks)) for e in doc.extents]
        return ChunkListDoc.model_construct(list=doc.model_copy(update={"extents": extents}))
    new = doc.model_copy(update={"links": sub(doc.links), "vectors": sub(doc.vectors), "tail": sub(doc.tail)})
    return ChunkListDoc.model_construct(list=new)


def _rewrite_records(index: RecordIndex, keymap: dict[str, str]) -> RecordIndex:
    new = index.model_copy(deep=True)
    for coll in new.collections:
        for ref in coll.chunks:
            ref.key = keymap[ref.key]
    for v in new.versions:
        v.key = keymap[v.key]
    return new


def _reseal(
    source: Repository,
    target: Repository,
    wanted: list[Snapshot],
    verify: bool,
    result: CopyResult,
    progress: Progress | None,
) -> None:
    """Copy `wanted` (oldest first) into a store that names and seals otherwise."""
    targets, problems = target.snapshots()
    if problems:  # an unreadable target snapshot could be one of these: copying it again is harmless
        target.notes += problems
    by_print = {content_fingerprint(t): t for t in targets}
    # the wanted snapshots and their parents (a mirrored snapshot's parent was mirrored before)
    candidates = {s.id: s for s in wanted}
    for s in wanted:
        if s.parent is not None and s.parent not in candidates:
            with contextlib.suppress(StoreError):
                candidates[s.parent] = source.load_snapshot(s.parent)
    pairs: dict[str, Snapshot] = {}  # source id -> its copy in the target
    for sid, s in candidates.items():
        t = by_print.get(content_fingerprint(s))
        if t is not None:
            pairs[sid] = t
    ids = {sid: t.id for sid, t in pairs.items()}
    result.present = sorted(s.id for s in wanted if s.id in pairs)
    result.ids = {s.id: ids[s.id] for s in wanted if s.id in ids}
    todo = [s for s in wanted if s.id not in pairs]
    if not todo:
        return
    # names paired without reading: through each snapshot's parent if it is in the target,
    # else through the newest snapshot of the same database that is
    keymap: dict[str, str] = {}
    copied = sorted(pairs.items(), key=lambda kv: kv[1].created_at)
    seeds: set[str] = set()
    for snap in todo:
        seed = snap.parent if snap.parent in pairs else None
        if seed is None:
            older = [k for k, t in copied if t.created_at < snap.created_at and t.source == snap.source]
            seed = older[-1] if older else None
        if seed is not None and seed not in seeds:
            seeds.add(seed)
            _pair(source, target, candidates[seed], pairs[seed], keymap)
    packer = _Packer(target, verify, result, progress)
    try:
        for snap in todo:
            new = _translate(source, target, snap, keymap, ids, packer, result)
            packer.flush()  # every blob it names is durable and indexed before the document
            name = f"snapshots/{new.id}.json"
            target.create_snapshot(new)
            result.bytes_sent += len(dumps(new)) + target.codec.overhead
            if verify:
                back = target.load_snapshot(new.id)
                if content_fingerprint(back) != content_fingerprint(snap):
                    raise StoreError(f"{target.backend.location}/{name} does not read back as written")
            ids[snap.id] = result.ids[snap.id] = new.id
            result.copied.append(snap.id)
    finally:
        packer.close()


def _translate(
    source: Repository,
    target: Repository,
    snap: Snapshot,
    keymap: dict[str, str],
    ids: dict[str, str],
    packer: _Packer,
    result: CopyResult,
) -> Snapshot:
    """Send what `snap` needs that the target lacks; its document with the target's names."""
    lists: dict[str, PlainList | HnswSplitList] = {}
    for f in snap.files:
        if f.chunk_list not in lists:
            lists[f.chunk_list] = source.read_chunk_list(f.chunk_list).list
    index = load_index(source, snap.records) if snap.records is not None else None
    leaves: dict[str, None] = {}
    for key, doc in lists.items():
        if not (key in keymap and packer.has(keymap[key])):
            leaves.update(dict.fromkeys(_chunk_keys(doc)))
    if index is not None:
        leaves.update(dict.fromkeys(c.key for coll in index.collections for c in coll.chunks))
        leaves.update(dict.fromkeys(v.key for v in index.versions))
    unknown = [k for k in leaves if not (k in keymap and packer.has(keymap[k]))]
    codec = target.codec
    for (key, loc, _body, frame), raw in _read(source, unknown, result, True):
        assert raw is not None
        tkey = keymap[key] = codec.blob_key(raw)
        if not packer.has(tkey):  # the zstd frame as stored, sealed under the target's key
            packer.add(tkey, loc.type, codec.seal(tkey, frame), loc.raw_length)
    for key, doc in lists.items():
        if not (key in keymap and packer.has(keymap[key])):
            keymap[key] = packer.put(dumps(_rewrite_list(doc, keymap)), "list")
    new = snap.model_copy(deep=True)
    for f in new.files:
        f.chunk_list = keymap[f.chunk_list]
    if index is not None and snap.records is not None:
        if not (snap.records in keymap and packer.has(keymap[snap.records])):
            keymap[snap.records] = packer.put(dumps(_rewrite_records(index, keymap)), "records")
        new.records = keymap[snap.records]
    new.parent = ids.get(snap.parent) if snap.parent is not None else None
    new.id = snapshot_id(new, codec.blob_key)
    return new
