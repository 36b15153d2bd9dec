"""The record index: every record of a snapshot as (id, seq_id), and the document and
metadata hashes of record versions, so that `diff` and `find` rarely materialize
chroma.sqlite3 (docs/format.md).

The SqliteCopy child writes the rows of its private copy (`sqlite_copy.write_records`)
while the parent reads the segment folders; `store_records` turns them into blobs: one
per content-defined chunk of ids (deduplicated like any other blob), versions chunks, and
a directory blob (`RecordIndex`) that the snapshot names. Older snapshots without an
index, and the live database, get the same view computed from a private copy of
chroma.sqlite3.
"""

from __future__ import annotations

import bisect
import json
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blake3 import blake3

from chromasnap.manifest import (
    CollectionRecords,
    ManifestError,
    RecordChunkRef,
    RecordIndex,
    Snapshot,
    VersionChunkRef,
    dumps,
    limits,
)
from chromasnap.manifest.io import loads, parse_json

from .errors import StoreError
from .extract import Extractor, check_free_space
from .layout import SQLITE_NAME
from .repository import BlobWriter, Repository
from .sqlite_copy import record_hashes, write_records

Record = tuple[str, int]
"""(record id, seq_id)."""
CACHED_CHUNKS = 64
READ_AHEAD = 8
"""Record chunks being read ahead of the check (verify)."""
"""Record chunks a RecordSource keeps parsed (about 512 records each)."""
Hashes = tuple[str | None, str]
"""(document hash or None, metadata hash) of one version of a record."""


def parse_lines(path: Path) -> Iterator[tuple[str, str, int, bytes]]:
    """The child's lines (see `sqlite_copy.write_records`) as (kind, first, count, body)."""
    with path.open("rb") as fh:
        for line in fh:
            kind, rest = line[:1].decode(), line[2:].rstrip(b"\n")
            if kind in ("C", "W"):
                yield kind, rest.decode(), 0, b""
            elif kind == "K":
                first, count, body = rest.split(b"\t", 2)
                yield kind, first.decode(), int(count), body
            elif kind == "V":  # first is "collection<TAB>seq"
                cid, seq, count, body = rest.split(b"\t", 3)
                yield kind, f"{cid.decode()}\t{seq.decode()}", int(count), body


def _index(
    path: Path, add: Callable[[bytes], str], inherited: list[VersionChunkRef]
) -> tuple[RecordIndex, list[RecordChunkRef | VersionChunkRef]]:
    """A RecordIndex from the child's lines, each chunk body given to `add` (which returns
    its key), and the chunk references it made, in the order `add` was called."""
    index = RecordIndex(versions=list(inherited))
    made: list[RecordChunkRef | VersionChunkRef] = []
    for kind, first, count, body in parse_lines(path):
        if kind == "C":
            cid, name = json.loads(first)
            index.collections.append(CollectionRecords(id=cid, name=name, records=0))
        elif kind == "K":
            coll = index.collections[-1]
            coll.records += count
            ref = RecordChunkRef(first=json.loads(first), key=add(body), count=count)
            coll.chunks.append(ref)
            made.append(ref)
        elif kind == "V":
            cid, seq = first.split("\t")
            vref = VersionChunkRef(collection=cid, first=int(seq), key=add(body), count=count)
            index.versions.append(vref)
            made.append(vref)
        else:
            index.watermark = json.loads(first)
    return index, made


def store_records(writer: BlobWriter, path: Path, inherited: list[VersionChunkRef]) -> str:
    """Store the child's lines as chunk blobs and a directory blob (whose key it returns);
    the versions chunks of the parent snapshot are `inherited`."""
    bodies: list[bytes] = []

    def add(body: bytes) -> str:  # the key is filled in once the writer has hashed it
        bodies.append(body)
        return "0" * 64

    index, made = _index(path, add, inherited)
    pending: list[Future[list[str]]] = []
    batch: list[bytes] = []
    size = 0
    for body in bodies:  # about 1 MiB per task: fewer, larger tasks for the writer's pool
        batch.append(body)
        size += len(body)
        if size >= 1 << 20:
            pending.append(writer.add(batch, "records"))
            batch, size = [], 0
    if batch:
        pending.append(writer.add(batch, "records"))
    keys = [k for fut in pending for k in fut.result()]
    for ref, key in zip(made, keys, strict=True):
        ref.key = key
    return writer.add_sync(dumps(index), "records")


def parent_versions(repo: Repository, parent: Snapshot | None) -> tuple[int, list[VersionChunkRef]] | None:
    """(watermark, versions chunks) of the parent's record index: the child then hashes the
    records written after the watermark. None when there is nothing to continue from."""
    if parent is None or parent.records is None:
        return None
    try:
        index = load_index(repo, parent.records)
    except StoreError:
        return None
    if index.watermark is None:
        return None
    return index.watermark, index.versions


# --- reading ------------------------------------------------------------------------------


@dataclass
class CollectionView:
    """One collection's records, read chunk by chunk on demand."""

    id: str
    name: str
    records: int
    chunks: list[RecordChunkRef]
    source: RecordSource

    def keys(self) -> set[str]:
        return {c.key for c in self.chunks}

    def all(self, skip: frozenset[str] | set[str] = frozenset()) -> Iterator[Record]:
        """Every record, leaving out chunks whose key is in `skip`."""
        for run in self.runs(skip):
            yield from run

    def runs(self, skip: frozenset[str] | set[str] = frozenset()) -> Iterator[list[Record]]:
        """The records chunk by chunk, leaving out chunks whose key is in `skip`."""
        for ref in self.chunks:
            if ref.key not in skip:
                yield self.source.chunk(ref.key)

    def lookup(self, record_id: str) -> Record | None:
        """The record with this id: one chunk read (ids are sorted, `first` per chunk)."""
        i = bisect.bisect_right([c.first for c in self.chunks], record_id) - 1
        if i < 0:
            return None
        return next((r for r in self.source.chunk(self.chunks[i].key) if r[0] == record_id), None)


@dataclass
class RecordSource:
    """Chunks by key: from the store (checked against their hash), or held in memory."""

    repo: Repository | None = None
    memory: dict[str, bytes] = field(default_factory=dict)
    cache: OrderedDict[str, list[Record]] = field(default_factory=OrderedDict)
    """The CACHED_CHUNKS chunks read last (find reads the same chunk in snapshot after
    snapshot); holding every chunk read made a diff's memory grow with the collection."""
    vcache: dict[str, dict[tuple[int, str], Hashes]] = field(default_factory=dict)

    def _raw(self, key: str, raw: bytes | None = None) -> list[Any]:
        raw = raw if raw is not None else self.memory.get(key)
        if raw is None:
            if self.repo is None:
                raise StoreError(f"record chunk {key[:16]} is missing")
            raw = self.repo.read_blob(key)
        try:
            rows = parse_json(raw, f"record chunk {key[:16]}", limits.MAX_BLOB["records"])
        except ManifestError as exc:
            raise StoreError(str(exc)) from None
        if not isinstance(rows, list) or not set(map(type, rows)) <= {list}:
            raise StoreError(f"record chunk {key[:16]} is not a list of rows")
        return rows

    def chunk(self, key: str, raw: bytes | None = None) -> list[Record]:
        """The records of one chunk (`raw`: its bytes, already read and checked)."""
        got = self.cache.get(key)
        if got is not None:
            self.cache.move_to_end(key)
            return got
        columns = _columns(self._raw(key, raw), 2)
        if columns is None or not (_all(columns[0], str) and _seqs(columns[1])):
            raise StoreError(f"record chunk {key[:16]} is not a list of [id, seq_id]")
        got = self.cache[key] = list(zip(*columns, strict=True))
        if len(self.cache) > CACHED_CHUNKS:
            self.cache.popitem(last=False)
        return got

    def versions(self, key: str, raw: bytes | None = None) -> dict[tuple[int, str], Hashes]:
        got = self.vcache.get(key)
        if got is None:
            columns = _columns(self._raw(key, raw), 4)
            if columns is None or not (
                _seqs(columns[0])
                and _all(columns[1], str)
                and set(map(type, columns[2])) <= {str, type(None)}
                and _all(columns[3], str)
            ):
                raise StoreError(f"versions chunk {key[:16]} is not a list of [seq_id, id, hash, hash]")
            seqs, ids, docs, metas = columns
            got = self.vcache[key] = dict(
                zip(zip(seqs, ids, strict=True), zip(docs, metas, strict=True), strict=True)
            )
        return got


# A chunk's rows are checked a column at a time, in C-level loops (map, set, min, max): a
# million records' index was checked one Python expression per record, seconds of verify
# --quick (issue 20's profile).


def _columns(rows: list[list[Any]], width: int) -> tuple[tuple[Any, ...], ...] | None:
    """The columns of rows that all have `width` items; None when any has another length."""
    if not rows:
        return tuple(() for _ in range(width))
    if set(map(len, rows)) != {width}:
        return None
    return tuple(zip(*rows, strict=True))


def _all(column: tuple[Any, ...], kind: type) -> bool:
    return set(map(type, column)) <= {kind}


def _seqs(column: tuple[Any, ...]) -> bool:
    """seq_ids: integers (not bools) within SQLite's."""
    return _all(column, int) and (not column or (min(column) >= -(1 << 63) and max(column) < 1 << 64))


class Side:
    """One side of a comparison, a snapshot or the live database: its collections, and the
    document and metadata hashes of its records (from the index's versions where it has
    them, else computed from the side's chroma.sqlite3, materialized once on demand)."""

    def __init__(
        self, label: str, index: RecordIndex, source: RecordSource, sqlite: Callable[[], Path]
    ) -> None:
        self.label, self.index, self.source, self._sqlite = label, index, source, sqlite
        self.views = {
            c.name: CollectionView(c.id, c.name, c.records, list(c.chunks), source) for c in index.collections
        }

    def hashes(self, view: CollectionView, recs: list[Record]) -> dict[str, Hashes]:
        out: dict[str, Hashes] = {}
        if not recs:
            return out
        missing: list[str] = []
        chunks = [
            self.source.versions(v.key) for v in reversed(self.index.versions) if v.collection == view.id
        ]
        for rid, seq in recs:
            got = next((c[(seq, rid)] for c in chunks if (seq, rid) in c), None)
            if got is None:
                missing.append(rid)
            else:
                out[rid] = got
        if missing:
            for rid, (_seq, doc, meta) in record_hashes(self._sqlite(), view.id, missing).items():
                out[rid] = (doc, meta)
        return out


def load_index(repo: Repository, key: str) -> RecordIndex:
    try:
        return loads(RecordIndex, repo.read_blob(key), f"record index {key[:16]}", limits.MAX_BLOB["records"])
    except ManifestError as exc:
        raise StoreError(str(exc)) from None


def from_lines(path: Path, source: RecordSource) -> RecordIndex:
    """A RecordIndex held in memory (the live database, or an old snapshot)."""

    def add(body: bytes) -> str:  # named as the store names them, so equal chunks match
        key = source.repo.codec.blob_key(body) if source.repo else blake3(body).hexdigest()
        source.memory[key] = body
        return key

    return _index(path, add, [])[0]


def snapshot_side(repo: Repository, snap: Snapshot, source: RecordSource, work: Path) -> Side:
    """A snapshot's side; its chroma.sqlite3 is materialized in `work` only if needed. A
    snapshot taken before record indexes (format 1) is indexed from it on the spot."""
    where = work / f"snap-{snap.id[:16]}"
    path: list[Path] = []

    def sqlite() -> Path:
        if not path:
            where.mkdir(mode=0o700, exist_ok=True)
            path.append(materialize_sqlite(repo, snap, where))
        return path[0]

    if snap.records is not None:
        index = load_index(repo, snap.records)
    else:
        out = where.with_name(where.name + ".records")
        write_records(sqlite(), out)
        index = from_lines(out, source)
        out.unlink()
    return Side(snap.id, index, source, sqlite)


def referenced(repo: Repository, snap: Snapshot) -> set[str]:
    """The blob keys of a snapshot's record index (the directory and its chunks)."""
    if snap.records is None:
        return set()
    index = load_index(repo, snap.records)
    keys = {c.key for coll in index.collections for c in coll.chunks} | {v.key for v in index.versions}
    return {snap.records} | keys


def check(repo: Repository, snap: Snapshot) -> list[str]:
    """Problems with a snapshot's record index: every chunk is read (its hash checked),
    parsed, and counted against the directory."""
    if snap.records is None:
        return []
    try:
        index = load_index(repo, snap.records)
        source = RecordSource(repo)
        with ThreadPoolExecutor(2, thread_name_prefix="chromasnap-records") as pool:
            for coll in index.collections:
                keys = [c.key for c in coll.chunks]
                n = sum(len(source.chunk(k, raw)) for k, raw in _read_ahead(repo, pool, keys))
                if n != coll.records or n != sum(c.count for c in coll.chunks):
                    return [f"record index of {coll.name}: {n} records, the directory says {coll.records}"]
            keys = [v.key for v in index.versions]
            for v, (_key, raw) in zip(index.versions, _read_ahead(repo, pool, keys), strict=True):
                if len(source.versions(v.key, raw)) != v.count:
                    return [f"record index: versions chunk {v.key[:16]} does not hold {v.count} versions"]
    except StoreError as exc:
        return [f"record index: {exc}"]
    return []


def _read_ahead(repo: Repository, pool: ThreadPoolExecutor, keys: list[str]) -> Iterator[tuple[str, bytes]]:
    """(key, bytes) of blobs in order, read and checked by `pool` at most READ_AHEAD ahead
    (reading, decompressing and hashing run beside the parsing, outside the GIL)."""
    window: deque[tuple[str, Future[bytes]]] = deque()
    try:
        for key in keys:
            window.append((key, pool.submit(repo.read_blob, key)))
            if len(window) > READ_AHEAD:
                k, fut = window.popleft()
                yield k, fut.result()
        while window:
            k, fut = window.popleft()
            yield k, fut.result()
    finally:
        for _k, fut in window:
            fut.cancel()


# --- materializing chroma.sqlite3 alone ------------------------------------------------------


def private_dir(repo: Repository, what: str) -> Path:
    return repo.workdir.private(what)


def materialize_sqlite(repo: Repository, snap: Snapshot, work: Path) -> Path:
    """Write the snapshot's chroma.sqlite3 (every byte checked) into `work`; its path."""
    entry = next((f for f in snap.files if f.path == SQLITE_NAME), None)
    if entry is None:
        raise StoreError(f"snapshot {snap.short_id} has no {SQLITE_NAME}")
    check_free_space(entry.data_bytes, work, f"the chroma.sqlite3 of snapshot {snap.short_id}")
    ex = Extractor(repo, durable=False)
    try:
        ex.write_file(work, entry)
    finally:
        ex.close()
    return work / SQLITE_NAME
