"""The record index: every record of a snapshot as (id, seq_id, document hash, metadata
hash), so that `diff` and `find` never materialize chroma.sqlite3.

The SqliteCopy child writes the rows of its private copy (`sqlite_copy.write_records`)
while the parent reads the segment folders; `store_records` turns them into blobs: one
per content-defined chunk of ids (deduplicated like any other blob) and a directory blob
(`RecordIndex`) that the snapshot names. Older snapshots without an index, and the live
database, get the same view computed on the fly from a private copy of chroma.sqlite3.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from blake3 import blake3

from chromasnap.manifest import (
    CollectionRecords,
    ManifestError,
    RecordChunkRef,
    RecordIndex,
    Snapshot,
    dumps,
)
from chromasnap.manifest.io import loads

from .errors import StoreError
from .repository import BlobWriter, Repository

Record = tuple[str, int, str | None, str]
"""(record id, seq_id, document hash or None, metadata hash)."""


def parse_lines(path: Path) -> Iterator[tuple[str, str, int, bytes]]:
    """The child's lines: ("C", json [id, name], 0, b"") or ("K", first id, count, payload)."""
    with path.open("rb") as fh:
        for line in fh:
            kind, rest = line[:1], line[2:].rstrip(b"\n")
            if kind == b"C":
                yield "C", rest.decode(), 0, b""
            elif kind == b"K":
                first, count, body = rest.split(b"\t", 2)
                yield "K", json.loads(first), int(count), body


def store_records(writer: BlobWriter, path: Path) -> str:
    """Store the child's record lines as chunk blobs and a directory blob; its key."""
    index = RecordIndex()
    pending: list[tuple[CollectionRecords, str, int, bytes]] = []
    for kind, a, count, body in parse_lines(path):
        if kind == "C":
            cid, name = json.loads(a)
            index.collections.append(CollectionRecords(id=cid, name=name, records=0))
        else:
            coll = index.collections[-1]
            coll.records += count
            pending.append((coll, a, count, body))
    futures = [writer.add([body], "records") for _c, _a, _n, body in pending]
    for (coll, first, count, _body), fut in zip(pending, futures, strict=True):
        coll.chunks.append(RecordChunkRef(first=first, key=fut.result()[0], count=count))
    return writer.add_sync(dumps(index), "records")


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

    def chunk(self, ref: RecordChunkRef) -> list[Record]:
        return self.source.chunk(ref.key)

    def all(self, skip: set[str] = frozenset()) -> Iterator[Record]:  # type: ignore[assignment]
        """Every record, leaving out chunks whose key is in `skip`."""
        for ref in self.chunks:
            if ref.key not in skip:
                yield from self.chunk(ref)

    def lookup(self, record_id: str) -> Record | None:
        """The record with this id: one chunk read (ids are sorted, `first` per chunk)."""
        firsts = [c.first for c in self.chunks]
        i = bisect.bisect_right(firsts, record_id) - 1
        if i < 0:
            return None
        for rec in self.chunk(self.chunks[i]):
            if rec[0] == record_id:
                return rec
        return None


@dataclass
class RecordSource:
    """Chunks by key: from the store (checked against their hash), or held in memory."""

    repo: Repository | None = None
    memory: dict[str, bytes] = field(default_factory=dict)
    cache: dict[str, list[Record]] = field(default_factory=dict)

    def chunk(self, key: str) -> list[Record]:
        got = self.cache.get(key)
        if got is None:
            raw = self.memory.get(key)
            if raw is None:
                if self.repo is None:
                    raise StoreError(f"record chunk {key[:16]} is missing")
                raw = self.repo.read_blob(key)
            try:
                got = [(str(r[0]), int(r[1]), r[2], str(r[3])) for r in json.loads(raw)]
            except (ValueError, TypeError, IndexError) as exc:
                raise StoreError(f"record chunk {key[:16]} is not a valid record list ({exc})") from None
            self.cache[key] = got
        return got


def load_index(repo: Repository, key: str) -> RecordIndex:
    try:
        return loads(RecordIndex, repo.read_blob(key), f"record index {key[:16]}")
    except ManifestError as exc:
        raise StoreError(str(exc)) from None


def views(index: RecordIndex, source: RecordSource) -> dict[str, CollectionView]:
    return {
        c.name: CollectionView(c.id, c.name, c.records, list(c.chunks), source) for c in index.collections
    }


def from_lines(path: Path, source: RecordSource) -> RecordIndex:
    """A RecordIndex held in memory (the live database, or an old snapshot)."""
    index = RecordIndex()
    for kind, a, count, body in parse_lines(path):
        if kind == "C":
            cid, name = json.loads(a)
            index.collections.append(CollectionRecords(id=cid, name=name, records=0))
        else:
            key = blake3(body).hexdigest()
            source.memory[key] = body
            index.collections[-1].records += count
            index.collections[-1].chunks.append(RecordChunkRef(first=a, key=key, count=count))
    return index


def from_sqlite(sqlite_path: Path, work: Path, source: RecordSource) -> RecordIndex:
    """Compute the index of a quiescent chroma.sqlite3 copy (never the live file)."""
    from .sqlite_copy import write_records

    out = work / "records"
    write_records(sqlite_path, out)
    try:
        return from_lines(out, source)
    finally:
        out.unlink(missing_ok=True)


def snapshot_views(repo: Repository, snap: Snapshot, source: RecordSource) -> dict[str, CollectionView]:
    """A snapshot's collections: from its record index, or (taken before there was one)
    computed from its chroma.sqlite3, materialized privately."""
    if snap.records is not None:
        return views(load_index(repo, snap.records), source)
    work = private_dir(repo, "records")
    try:
        db = materialize_sqlite(repo, snap, work)
        return views(from_sqlite(db, work, source), source)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def referenced(repo: Repository, snap: Snapshot) -> set[str]:
    """The blob keys of a snapshot's record index (the directory and its chunks)."""
    if snap.records is None:
        return set()
    index = load_index(repo, snap.records)
    return {snap.records} | {c.key for coll in index.collections for c in coll.chunks}


def check(repo: Repository, snap: Snapshot) -> list[str]:
    """Problems with a snapshot's record index: every chunk is read (its hash checked),
    parsed, and counted against the directory."""
    if snap.records is None:
        return []
    try:
        index = load_index(repo, snap.records)
        source = RecordSource(repo)
        for coll in index.collections:
            n = sum(len(source.chunk(c.key)) for c in coll.chunks)
            if n != coll.records or n != sum(c.count for c in coll.chunks):
                return [f"record index of {coll.name}: {n} records, the directory says {coll.records}"]
    except StoreError as exc:
        return [f"record index: {exc}"]
    return []


# --- materializing chroma.sqlite3 alone ------------------------------------------------------


def private_dir(repo: Repository, what: str) -> Path:
    work = repo.backend.scratch_dir() / f"{what}-{os.getpid()}-{os.urandom(4).hex()}"
    os.mkdir(work, 0o700)
    return work


def materialize_sqlite(repo: Repository, snap: Snapshot, work: Path) -> Path:
    """Write the snapshot's chroma.sqlite3 (every byte checked) into `work`; its path."""
    from .extract import Extractor

    entry = next((f for f in snap.files if f.path == "chroma.sqlite3"), None)
    if entry is None:
        raise StoreError(f"snapshot {snap.short_id} has no chroma.sqlite3")
    ex = Extractor(repo, durable=False)
    try:
        ex.write_file(work, entry)
    finally:
        ex.close()
    return work / "chroma.sqlite3"
