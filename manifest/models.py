"""Pydantic models of everything chromasnap writes: store config, snapshots, chunk lists.

The JSON these models produce *is* the on-disk format (see docs/format.md); change a
field only together with FORMAT_VERSION and an upgrade step in ``manifest.upgrade``.
"""

from __future__ import annotations

import functools
import json
import posixpath
import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from . import limits

FORMAT_VERSION = 3
"""Version of the store layout and of every JSON document in it (2 added `Snapshot.records`,
the record index; 3 added `Snapshot.owner`. An older document reads as the current version
without them, and an older chromasnap says "written by a newer chromasnap" rather than
failing on a field it does not know)."""


@functools.lru_cache(maxsize=8192)
def _check_relpath(value: str) -> str:
    """Reject any path that could land outside the directory it is relative to. Cached: the
    same paths come back in every snapshot (listing 200 snapshots spent 40% of its time
    here, issue 20's profile); a refusal raises and is not cached."""
    shown = repr(value[:100]) + ("..." if len(value) > 100 else "")
    if not value or "\x00" in value or "\\" in value:
        raise ValueError(f"unsafe path {shown}")
    if value.startswith("/") or posixpath.isabs(value):
        raise ValueError(f"absolute path {shown}")
    parts = value.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"path {shown} has an empty, '.' or '..' component")
    if len(value.encode(errors="surrogatepass")) > limits.MAX_PATH or any(
        len(p.encode(errors="surrogatepass")) > limits.MAX_NAME for p in parts
    ):
        raise ValueError(f"path {shown} is longer than a file system allows")
    return value


RelPath = Annotated[str, AfterValidator(_check_relpath)]
"""A relative POSIX path with no '..', '.', empty component, backslash or NUL."""

RESERVED_PREFIX = ".chromasnap-"
"""Names chromasnap gives its own entries beside and inside a database (swap journals,
staged and kept folders): never captured, and refused in a snapshot's files and folders."""


@functools.lru_cache(maxsize=8192)
def _check_entry_path(value: str) -> str:
    if any(p.startswith(RESERVED_PREFIX) for p in value.split("/")):
        raise ValueError(f"path {value[:200]!r} uses a name reserved for chromasnap ({RESERVED_PREFIX}*)")
    return value


EntryPath = Annotated[str, AfterValidator(_check_relpath), AfterValidator(_check_entry_path)]
"""A RelPath that a snapshot may extract: no component is a reserved `.chromasnap-` name."""


Mode = Annotated[int, Field(ge=0, le=0o7777)]
"""Permission bits as captured (up to 0o7777); only `applied_mode` (0o777 at most: never
setuid, setgid or sticky) is ever given to a file or folder."""


def applied_mode(mode: int) -> int:
    """The permission bits extract and restore apply: rwx for user, group and others only."""
    return mode & 0o777


Size = Annotated[int, Field(ge=0, le=limits.MAX_FILE_SIZE)]
TimeNs = Annotated[int, Field(ge=-limits.MAX_TIME_NS, le=limits.MAX_TIME_NS)]
Count = Annotated[int, Field(ge=0, le=1 << 63)]


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _check_key(value: str) -> str:
    if not _HEX64.fullmatch(value):
        raise ValueError(f"not a 64-digit lowercase hex key: {value[:80]!r}")
    return value


Key = Annotated[str, AfterValidator(_check_key)]
"""A BLAKE3-256 digest in lowercase hex: the name of a blob, pack, index or snapshot."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# --- store config --------------------------------------------------------------------


class Compression(_Model):
    algorithm: Literal["zstd"] = "zstd"
    level: int = Field(1, ge=-7, le=22)


class Chunking(_Model):
    """Fixed chunk sizes, in bytes, per kind of stream (chosen by bench/chunking.py)."""

    sqlite: int = Field(16 * 1024, ge=512, le=64 << 20)
    hnsw_links: int = Field(64 * 1024, ge=512, le=64 << 20)
    hnsw_vectors: int = Field(256 * 1024, ge=512, le=64 << 20)
    other: int = Field(64 * 1024, ge=512, le=64 << 20)


class RetentionPolicy(_Model):
    """The store's retention rules (filled in by `chromasnap policy`; all unset means keep all)."""

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None
    keep_tags: list[str] = Field(default_factory=list)
    keep_replaced: str | None = Field(
        None, description="replaced databases kept by restore: a count ('3') or a duration ('14d')"
    )
    auto_prune: bool = False
    mirror: str | None = Field(
        None,
        max_length=1000,
        description="a store each new snapshot is copied to right after it is taken (policy set --mirror)",
    )


ENCRYPTED_STORE_VERSION = 4
"""`config.json`'s `version` in an encrypted store (issue 17): a chromasnap that reads up to
format 3 refuses it in one line ("written by a newer chromasnap") instead of misreading
sealed objects. Plain stores keep writing FORMAT_VERSION, byte for byte as before."""


class Encryption(_Model):
    """`config.json`'s `encryption` (absent in a plain store): how objects are sealed and
    blobs named. The master key is wrapped in the readable key files `keys/<id>.json`,
    which also hold their KDF parameters (docs/encryption.md)."""

    version: Literal[1] = 1
    cipher: Literal["aes-256-gcm", "chacha20-poly1305"] = "aes-256-gcm"
    blob_id: Literal["blake3-keyed"] = "blake3-keyed"


class StoreConfig(_Model):
    """`config.json` at the root of a store: how to read everything else in it."""

    format: Literal["chromasnap-store"] = "chromasnap-store"
    version: int = FORMAT_VERSION
    id: Key
    created_at: datetime
    hash: Literal["blake3"] = "blake3"
    compression: Compression = Field(default_factory=Compression)
    chunking: Chunking = Field(default_factory=Chunking)
    pack_size: int = Field(16 << 20, ge=1 << 16)
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    encryption: Encryption | None = Field(
        None, description="set in an encrypted store (version 4); absent from a plain store's file"
    )

    @model_validator(mode="after")
    def _version_says_encrypted(self) -> StoreConfig:
        """Version 4 if and only if encrypted: an edited config cannot make a store plain."""
        if (self.encryption is not None) != (self.version >= ENCRYPTED_STORE_VERSION):
            raise ValueError(
                f"version {self.version} does not match the encryption field "
                f"(an encrypted store is version {ENCRYPTED_STORE_VERSION})"
            )
        return self


# --- chunk lists (stored as blobs of type "list" in packs) -----------------------------

ChunkLen = Annotated[int, Field(ge=1, le=limits.MAX_CHUNK)]
ChunkRef = tuple[Key, ChunkLen]
"""(blob key, uncompressed length)."""


def _total(chunks: list[ChunkRef]) -> int:
    return sum(n for _, n in chunks)


class Extent(_Model):
    """A run of data at `offset` made of the listed chunks; gaps between extents are holes."""

    offset: Size
    chunks: list[ChunkRef]


class PlainList(_Model):
    layout: Literal["plain"] = "plain"
    size: Size
    extents: list[Extent]

    @model_validator(mode="after")
    def _extents_fit(self) -> PlainList:
        """Extents in order, not overlapping, inside the file."""
        end = 0
        for ext in self.extents:
            if ext.offset < end:
                raise ValueError(f"extent at {ext.offset} overlaps the one before it")
            end = ext.offset + _total(ext.chunks)
        if end > self.size:
            raise ValueError(f"extents end at {end}, past the file's {self.size} bytes")
        return self


class HnswSplitList(_Model):
    """`data_level0.bin` stored as two streams: each record's links, and its vector + label.

    Record i (of `records`) is links[i*link_bytes:(i+1)*link_bytes] followed by
    vectors[i*(record_size-link_bytes):...]. Bytes after records*record_size are `tail`.
    """

    layout: Literal["hnsw-split"] = "hnsw-split"
    size: Size
    record_size: int = Field(gt=0, le=limits.MAX_RECORD_SIZE)
    link_bytes: int = Field(gt=0, le=limits.MAX_RECORD_SIZE)
    records: int = Field(ge=0, le=limits.MAX_FILE_SIZE)
    links: list[ChunkRef]
    vectors: list[ChunkRef]
    tail: list[ChunkRef] = Field(default_factory=list)

    @model_validator(mode="after")
    def _streams_fit(self) -> HnswSplitList:
        """The two streams hold exactly `records` records, and with the tail make the file."""
        if self.link_bytes >= self.record_size:
            raise ValueError(f"link_bytes {self.link_bytes} is not less than record_size {self.record_size}")
        body = self.records * self.record_size
        if body + _total(self.tail) != self.size:
            raise ValueError(
                f"{self.records} records of {self.record_size} bytes and the tail "
                f"do not make {self.size} bytes"
            )
        if _total(self.links) != self.records * self.link_bytes:
            raise ValueError("the links stream does not hold exactly the records' links")
        if _total(self.vectors) != self.records * (self.record_size - self.link_bytes):
            raise ValueError("the vectors stream does not hold exactly the records' vectors")
        return self


ChunkList = Annotated[PlainList | HnswSplitList, Field(discriminator="layout")]


class ChunkListDoc(_Model):
    """Wrapper so a chunk list blob validates with one model."""

    list: ChunkList


# --- snapshots -----------------------------------------------------------------------


class FileEntry(_Model):
    path: EntryPath
    size: Size = Field(description="apparent size in bytes")
    data_bytes: Size = Field(description="bytes in data regions (less than size if sparse)")
    mode: Mode
    mtime_ns: TimeNs
    ctime_ns: TimeNs = Field(0, description="status change time at capture; to skip unchanged files")
    inode: Count = Field(0, description="inode at capture; only used to skip unchanged files")
    hash: Key = Field(description="BLAKE3 of the content, or of its extents if sparse")
    hash_kind: Literal["content", "extents"] = "content"
    layout: Literal["plain", "hnsw-split"] = "plain"
    chunk_list: Key = Field(description="key of the blob holding this file's chunk list")
    captured_by: Literal["read", "sqlite-shared-lock", "sqlite-backup-api", "parent"] = "read"


class DirEntry(_Model):
    path: EntryPath
    mode: Mode
    mtime_ns: TimeNs = 0


class SkippedEntry(_Model):
    path: RelPath
    kind: str
    reason: str


class SegmentState(_Model):
    id: str
    scope: str
    type: str
    max_seq_id: int | None = None


class CollectionState(_Model):
    id: str
    name: str
    dimension: int | None = None
    database: str | None = None
    records: int | None = Field(None, description="rows in `embeddings` for this collection")
    queue_rows: int = 0
    queue_min_seq_id: int | None = None
    queue_max_seq_id: int | None = None
    metadata_pending: int = Field(
        0, description="queued rows the metadata segment has not applied yet (replayed on open)"
    )
    segments: list[SegmentState] = Field(default_factory=list)
    hnsw_elements: int | None = Field(None, description="cur_element_count from header.bin")
    hnsw_persisted: bool = Field(False, description="index_metadata.pickle exists")
    vector_lags: bool = Field(False, description="the vector segment is behind the queue")
    lag_covered: bool | None = Field(
        None,
        description="every record written after the vector segment's max_seq_id is still queued",
    )


class WalState(_Model):
    """Chroma's write-ahead state, read from the captured chroma.sqlite3 with sqlite3."""

    change_counter: int | None = Field(None, description="SQLite header file change counter")
    journal_mode: str = Field(description="'delete' (rollback journal) or 'wal', from the header")
    leftover_files: list[str] = Field(default_factory=list)
    hot_journal: bool = False
    journal_action: str | None = None
    automatically_purge: bool | None = None
    queue_rows: int = 0
    schema_migrations: dict[str, int] = Field(default_factory=dict)
    collections: list[CollectionState] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


# --- the record index (stored as blobs of type "records"; see docs/format.md) ------------


class RecordChunkRef(_Model):
    """One chunk of a collection's record index: records sorted by id, `first` the lowest."""

    first: str
    key: Key
    count: Count


class VersionChunkRef(_Model):
    """One chunk of content hashes of one collection's record versions, sorted by seq_id,
    `first` the lowest."""

    collection: str
    first: int = Field(ge=-(1 << 63), lt=1 << 64)
    key: Key
    count: Count


class CollectionRecords(_Model):
    id: str
    name: str
    records: Count
    chunks: list[RecordChunkRef] = Field(default_factory=list)


class RecordIndex(_Model):
    """Every record of every collection as (id, seq_id), in content-defined chunks so that
    unchanged runs of ids deduplicate across snapshots; and, by seq_id, the document and
    metadata hashes of the record versions written since the database's first snapshot."""

    version: Literal[1] = 1
    collections: list[CollectionRecords] = Field(default_factory=list)
    versions: list[VersionChunkRef] = Field(
        default_factory=list, description="the parent's versions chunks, then this snapshot's"
    )
    watermark: int | None = Field(None, description="the highest seq_id of any record")


class Totals(_Model):
    files: int = 0
    logical_bytes: int = Field(0, description="sum of the files' apparent sizes")
    data_bytes: int = 0
    read_bytes: int = Field(0, description="bytes read from the database for this snapshot")
    new_blobs: int = 0
    new_bytes: int = Field(0, description="compressed bytes this snapshot added to the store")
    reused_files: int = 0


class Verification(_Model):
    at: datetime
    mode: Literal["quick", "full"]
    interpreter: str | None = None
    chromadb_version: str | None = None
    verdict: str
    ok: bool
    duration_s: float
    detail: str = ""


class Event(_Model):
    """Something that happened to a snapshot after it was taken (a guarded write failed)."""

    at: datetime
    kind: str
    detail: str = ""


class Owner(_Model):
    """Numeric owner of the database directory when captured (names differ between hosts)."""

    uid: int = Field(ge=0, le=0xFFFFFFFE)
    gid: int = Field(ge=0, le=0xFFFFFFFE)


class Snapshot(_Model):
    """One snapshot: `snapshots/<id>.json`. `id` is BLAKE3 over the record without
    `id` and the mutable `verifications`, `events` and `pinned` (see `snapshot_id`)."""

    format_version: int = FORMAT_VERSION
    id: Key
    created_at: datetime
    reason: str
    tags: list[str] = Field(default_factory=list)
    note: str | None = None
    source: str = Field(description="absolute path of the database when captured")
    hostname: str = ""
    root_mode: Mode = Field(0o755, description="mode of the database folder")
    parent: Key | None = None
    chromasnap_version: str = ""
    chromadb_version: str | None = Field(None, description="chromadb installed where captured")
    totals: Totals = Field(default_factory=Totals)
    dirs: list[DirEntry] = Field(default_factory=list)
    files: list[FileEntry] = Field(default_factory=list)
    skipped: list[SkippedEntry] = Field(default_factory=list)
    wal: WalState
    records: Key | None = Field(
        None, description="blob holding the RecordIndex (ids, seq_ids, hashes) of chroma.sqlite3"
    )
    owner: Owner | None = Field(
        None,
        description="uid/gid of the database directory; a restore onto a bare path gives them back "
        "(absent before chromasnap recorded owners)",
    )
    verifications: list[Verification] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    pinned: bool = False

    @model_validator(mode="after")
    def _entries_fit(self) -> Snapshot:
        """Every path once, and inside a folder the snapshot lists (extract makes them in order)."""
        if len(self.files) + len(self.dirs) > limits.MAX_ENTRIES:
            raise ValueError(f"{len(self.files) + len(self.dirs)} entries, more than {limits.MAX_ENTRIES}")
        dirs: set[str] = set()
        for d in self.dirs:
            parent = d.path.rpartition("/")[0]
            if d.path in dirs or (parent and parent not in dirs):
                raise ValueError(f"folder {d.path!r} is listed twice or before its parent")
            dirs.add(d.path)
        files: set[str] = set()
        for f in self.files:
            parent = f.path.rpartition("/")[0]
            if f.path in files or f.path in dirs or (parent and parent not in dirs):
                raise ValueError(f"file {f.path!r} is listed twice, as a folder too, or outside the folders")
            files.add(f.path)
        return self

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def last_verification(self) -> Verification | None:
        return self.verifications[-1] if self.verifications else None


# --- the store's small documents: index files, the catalog, the lock owner -----------------

INDEX_VERSION = 1
"""The version of index files and of the catalog."""

BlobRow = tuple[Key, str, int, int, int]
"""One blob of a pack: key, type ("data", "tree", ...), offset, stored length, raw length."""


class PackEntry(_Model):
    """One pack of an index file: its id (the BLAKE3 of the pack file), size and blobs."""

    id: Key
    size: Count
    blobs: list[BlobRow]


class IndexDoc(_Model):
    """`index/<blake3 of the document>.json`: where every blob of some packs lies. Written by
    `Repository.write_index` only; read row by row (a damaged row loses only itself)."""

    version: int = INDEX_VERSION
    packs: list[PackEntry]

    @classmethod
    def of(cls, packs: list[PackEntry]) -> IndexDoc:
        """An index of packs this process wrote (already valid: not validated again)."""
        return cls.model_construct(version=INDEX_VERSION, packs=packs)

    def to_json(self) -> bytes:
        """Compact JSON, keys in this order (as every chromasnap version wrote it)."""
        doc = {
            "version": self.version,
            "packs": [{"id": p.id, "size": p.size, "blobs": [list(b) for b in p.blobs]} for p in self.packs],
        }
        return json.dumps(doc, separators=(",", ":")).encode()


class CatalogDoc(_Model):
    """`catalog.json`: every snapshot id of the store, sorted, so that a deleted snapshot
    document is reported rather than silently gone. Written by `Repository` only."""

    version: int = INDEX_VERSION
    snapshots: list[Key]

    def to_json(self) -> bytes:
        return json.dumps(
            {"version": self.version, "snapshots": self.snapshots}, separators=(",", ":")
        ).encode()


class LockOwner(_Model):
    """`lock.owner`: who holds (or last held) the store lock, for the message of whoever
    waits for it. Written by `locks.store_lock` only."""

    pid: int = Field(ge=0, lt=1 << 63)
    host: str = Field(max_length=300)
    command: str = Field(max_length=10_000)
    since: str = Field(max_length=40)

    def to_json(self) -> bytes:
        """json.dumps' default separators, keys in this order (as every version wrote it)."""
        return json.dumps(
            {"pid": self.pid, "host": self.host, "command": self.command, "since": self.since}
        ).encode()


class RestoredFile(_Model):
    """One file of a restored database as it was in place when the note was taken."""

    path: EntryPath
    size: Size
    mtime_ns: TimeNs
    ctime_ns: TimeNs
    inode: Count


class RestoredState(_Model):
    """`restored/<key>.json` beside the write lock: the database `db` holds, file for file,
    what snapshot `snapshot` holds, as of `taken_ns` (a timestamp of the database's own
    file system, taken after the files were fsynced and before they were stat'ed). Capture
    trusts a file whose stat tuple still equals the note's and whose ctime is before
    `taken_ns` (docs/capture.md). Written by `restored.record` only; hostile input."""

    version: Literal[1] = 1
    db: str = Field(max_length=limits.MAX_PATH)
    snapshot: Key
    taken_ns: TimeNs
    files: list[RestoredFile] = Field(default_factory=list, max_length=limits.MAX_ENTRIES)
