"""What a broken database's chroma.sqlite3 still holds, read with the sqlite3 module from
a private copy (never the live file, never chromadb): which tables pass SQLite's integrity
check, the collections, every record's id, seq_id, document and metadata, the vector
segment's position (`max_seq_id`), and the write-ahead queue's rows with their vectors.

A file that fails `PRAGMA integrity_check` is used only for the tables that pass
`PRAGMA integrity_check(TABLE)` (SQLite >= 3.33; Python's bundled SQLite here is 3.40.1).
That per-table form checks the table's b-tree and its indexes, not pages shared with other
tables or the freelist. With an older SQLite a failing file passes no table.

Imports only the standard library (numpy where vectors are decoded), so it can run in a
child process of its own.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NEEDED = (
    "collections",
    "collection_metadata",
    "segments",
    "embeddings",
    "embedding_metadata",
    "embedding_metadata_array",
    "max_seq_id",
    "embeddings_queue",
)
"""The tables salvage reads."""
DOCUMENT_KEY = "chroma:document"
URI_KEY = "chroma:uri"
ADD, UPDATE, UPSERT, DELETE = 0, 1, 2, 3
"""`embeddings_queue.operation` codes (chromadb's sqlite_log.rs)."""
OPERATIONS = {ADD: "add", UPDATE: "update", UPSERT: "upsert", DELETE: "delete"}
BATCH = 500


def connect(path: Path) -> sqlite3.Connection:
    """A read-only connection to a private, quiescent copy (no locks, no journal)."""
    from urllib.parse import quote

    # the path's bytes, %-escaped: a name that is not UTF-8 (surrogate escapes) stays exact
    return sqlite3.connect(f"file:{quote(os.fsencode(path))}?mode=ro&immutable=1", uri=True)


def per_table_check_supported() -> bool:
    return sqlite3.sqlite_version_info >= (3, 33, 0)


@dataclass
class TableHealth:
    """Which tables of the file pass SQLite's integrity check."""

    sqlite_version: str = sqlite3.sqlite_version
    whole_ok: bool = False
    detail: str = ""
    """The first lines of the whole-file check when it fails."""
    tables: set[str] = field(default_factory=set)
    """Every table the schema names."""
    failed: dict[str, str] = field(default_factory=dict)
    """Table -> the first problem its own check reports."""
    schema_error: str | None = None

    def ok(self, table: str) -> bool:
        return self.schema_error is None and table in self.tables and table not in self.failed


def _first(rows: list[tuple[Any, ...]], lines: int = 3) -> str:
    text = "\n".join(str(r[0]) for r in rows)
    return " | ".join(text.splitlines()[:lines])


def check_tables(db: sqlite3.Connection, tables: tuple[str, ...] = NEEDED) -> TableHealth:
    """Check the whole file; if it fails, check each of `tables` on its own."""
    health = TableHealth()
    try:
        health.tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        health.schema_error = f"{type(exc).__name__}: {exc}"
        return health
    try:
        rows = db.execute("PRAGMA integrity_check").fetchall()
        health.whole_ok = rows == [("ok",)]
        if not health.whole_ok:
            health.detail = _first(rows)
    except (sqlite3.DatabaseError, MemoryError) as exc:  # SQLite reports some damage as NOMEM
        health.detail = f"{type(exc).__name__}: {exc}"
    if health.whole_ok:
        return health
    for table in tables:
        if table not in health.tables:
            continue
        if not per_table_check_supported():
            health.failed[table] = f"SQLite {sqlite3.sqlite_version} cannot check one table"
            continue
        try:
            rows = db.execute(f'PRAGMA integrity_check("{table}")').fetchall()
            if rows != [("ok",)]:
                health.failed[table] = _first(rows, 1)
        except (sqlite3.DatabaseError, MemoryError) as exc:
            health.failed[table] = f"{type(exc).__name__}: {exc}"
    return health


def check_file(path: Path) -> TableHealth | None:
    """`check_tables` of a private copy on a connection of its own (SQLite releases the
    GIL while it checks: two files can be checked at once in two threads); None when the
    file cannot be opened (the caller's own connection then says why)."""
    try:
        db = connect(path)
    except sqlite3.Error:
        return None
    try:
        return check_tables(db)
    finally:
        db.close()


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {str(r[1]) for r in db.execute(f'PRAGMA table_info("{table}")')}


def seq(value: Any) -> int:
    """seq_id was a big-endian BLOB in old schemas and is an INTEGER now."""
    if isinstance(value, bytes):
        return int.from_bytes(value, "big")
    return int(value)


@dataclass
class CollectionInfo:
    """One collection as chroma.sqlite3 describes it."""

    id: str
    name: str
    dimension: int | None
    space: str
    metadata_segment: str | None = None
    vector_segment: str | None = None
    vector_seq_id: int | None = None
    """How far the persisted HNSW has consumed the queue (`max_seq_id` of the VECTOR
    segment); None when there is no row or the table is unusable."""
    metadata: dict[str, Any] | None = None


def _space(schema: str | None, config: str | None, metadata: dict[str, Any]) -> str:
    """The collection's distance space: 1.5's schema, 1.0's configuration, then the
    legacy `hnsw:space` metadata; chromadb's default is l2."""
    for raw, path in (
        (schema, ("keys", "#embedding", "float_list", "vector_index", "config", "space")),
        (config, ("vector_index", "hnsw", "space")),
        (config, ("hnsw", "space")),
    ):
        try:
            node: Any = json.loads(raw) if raw else None
        except ValueError:
            continue
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, str) and node:
            return node
    value = metadata.get("hnsw:space")
    return value if isinstance(value, str) and value else "l2"


def _value(sv: Any, iv: Any, fv: Any, bv: Any) -> Any:
    if sv is not None:
        return str(sv)
    if bv is not None:
        return bool(bv)
    if iv is not None:
        return int(iv)
    if fv is not None:
        return float(fv)
    return None


def read_collections(db: sqlite3.Connection, health: TableHealth) -> tuple[list[CollectionInfo], list[str]]:
    """Every collection with its segments and vector position; problems as lines."""
    problems: list[str] = []
    if not (health.ok("collections") and health.ok("segments")):
        return [], ["collections or segments table unusable: no collection can be listed"]
    ccols = _columns(db, "collections")
    dim = "dimension" if "dimension" in ccols else "NULL"
    schema = "schema_str" if "schema_str" in ccols else "NULL"
    config = "config_json_str" if "config_json_str" in ccols else "NULL"
    rows = db.execute(f"SELECT id, name, {dim}, {schema}, {config} FROM collections ORDER BY name").fetchall()
    meta: dict[str, dict[str, Any]] = {}
    if health.ok("collection_metadata"):
        for cid, key, sv, iv, fv, bv in db.execute(
            "SELECT collection_id, key, str_value, int_value, float_value, bool_value "
            "FROM collection_metadata"
        ):
            meta.setdefault(str(cid), {})[str(key)] = _value(sv, iv, fv, bv)
    else:
        problems.append("collection_metadata unusable: spaces come from the configuration only")
    positions: dict[str, int] = {}
    if health.ok("max_seq_id"):
        positions = {str(s): seq(q) for s, q in db.execute("SELECT segment_id, seq_id FROM max_seq_id")}
    else:
        problems.append("max_seq_id unusable: the vector segments' positions are unknown")
    segs: dict[str, dict[str, str]] = {}
    for sid, scope, coll in db.execute("SELECT id, scope, collection FROM segments"):
        segs.setdefault(str(coll), {})[str(scope)] = str(sid)
    out = []
    for cid, name, dimension, schema_str, config_str in rows:
        m = meta.get(str(cid), {})
        s = segs.get(str(cid), {})
        vec = s.get("VECTOR")
        out.append(
            CollectionInfo(
                id=str(cid),
                name=str(name),
                dimension=None if dimension is None else int(dimension),
                space=_space(schema_str, config_str, m),
                metadata_segment=s.get("METADATA"),
                vector_segment=vec,
                vector_seq_id=positions.get(vec) if vec else None,
                metadata=m or None,
            )
        )
    return out, problems


@dataclass(slots=True)
class RecordRow:
    """One record as the METADATA segment holds it."""

    id: str
    seq_id: int
    rowid: int = 0
    """`embeddings.id`: chromadb inserts records in queue order, so this orders them as
    their HNSW labels were handed out."""
    document: str | None = None
    metadata: dict[str, Any] | None = None
    uri: str | None = None


def read_records(
    db: sqlite3.Connection,
    coll: CollectionInfo,
    health: TableHealth,
    content: Callable[[RecordRow], bool] | None = None,
) -> tuple[list[RecordRow] | None, list[str]]:
    """The collection's records sorted by id (None when `embeddings` is unusable), with
    documents and metadata when `embedding_metadata` (and, if present, the array table)
    pass; problems as lines. With `content`, documents and metadata are read only for
    the records it accepts (the others keep None: their ids and seq_ids are all a caller
    comparing versions needs)."""
    if coll.metadata_segment is None:
        return None, [f"collection {coll.name} has no METADATA segment"]
    if not health.ok("embeddings"):
        return None, ["embeddings table unusable: the records' ids are unknown"]
    problems: list[str] = []
    by_rowid: dict[int, RecordRow] = {}
    for rowid, rid, raw in db.execute(
        "SELECT id, embedding_id, seq_id FROM embeddings WHERE segment_id = ?", (coll.metadata_segment,)
    ):
        by_rowid[rowid] = RecordRow(str(rid), raw if type(raw) is int else seq(raw), rowid)
    keep = None if content is None else {k for k, r in by_rowid.items() if content(r)}
    # a few records: looked up by rowid; most of them: one pass over the collection
    wanted = sorted(keep) if keep is not None and len(keep) <= len(by_rowid) // 2 else None
    if health.ok("embedding_metadata"):
        for rowid, key, sv, iv, fv, bv in _content_rows(
            db,
            "SELECT m.id, m.key, m.string_value, m.int_value, m.float_value, m.bool_value "
            "FROM embedding_metadata m JOIN embeddings e ON e.id = m.id WHERE e.segment_id = ?",
            "SELECT m.id, m.key, m.string_value, m.int_value, m.float_value, m.bool_value "
            "FROM embedding_metadata m WHERE m.id IN ({})",
            coll.metadata_segment,
            wanted,
        ):
            if keep is not None and rowid not in keep:
                continue
            rec = by_rowid.get(int(rowid))
            if rec is None:
                continue
            if key == DOCUMENT_KEY:
                rec.document = None if sv is None else str(sv)
            elif key == URI_KEY:
                rec.uri = None if sv is None else str(sv)
            else:
                rec.metadata = rec.metadata or {}
                rec.metadata[str(key)] = _value(sv, iv, fv, bv)
        if "embedding_metadata_array" in health.tables:
            if health.ok("embedding_metadata_array"):
                for rowid, key, sv, iv, fv, bv in _content_rows(
                    db,
                    "SELECT a.id, a.key, a.string_value, a.int_value, a.float_value, a.bool_value "
                    "FROM embedding_metadata_array a JOIN embeddings e ON e.id = a.id "
                    "WHERE e.segment_id = ? ORDER BY a.id, a.key, a.rowid",
                    "SELECT a.id, a.key, a.string_value, a.int_value, a.float_value, a.bool_value "
                    "FROM embedding_metadata_array a WHERE a.id IN ({}) ORDER BY a.id, a.key, a.rowid",
                    coll.metadata_segment,
                    wanted,
                ):
                    if keep is not None and rowid not in keep:
                        continue
                    rec = by_rowid.get(int(rowid))
                    if rec is not None:
                        rec.metadata = rec.metadata or {}
                        rec.metadata.setdefault(str(key), []).append(_value(sv, iv, fv, bv))
            else:
                problems.append("embedding_metadata_array unusable: array metadata values are missing")
    else:
        problems.append("embedding_metadata unusable: documents and metadata are unknown")
    return sorted(by_rowid.values(), key=lambda r: r.id), problems


def _content_rows(
    db: sqlite3.Connection, whole: str, some: str, segment: str, rowids: list[int] | None
) -> Iterator[tuple[Any, ...]]:
    """Rows of `whole` (the segment's, one query), or of `some` for the records `rowids`
    (ascending; in batches, so that the rows of one record stay together and in order)."""
    if rowids is None:
        yield from db.execute(whole, (segment,))
        return
    for i in range(0, len(rowids), BATCH):
        part = rowids[i : i + BATCH]
        yield from db.execute(some.format(",".join("?" * len(part))), part)


@dataclass
class QueueRow:
    """One row of the write-ahead queue (its vector bytes loaded on demand)."""

    seq_id: int
    operation: int
    id: str
    vector: bytes | None
    encoding: str | None
    has_vector: bool | None = None
    """Whether the row carries a vector, when `vector` is not loaded yet."""

    @property
    def carries_vector(self) -> bool:
        return self.vector is not None if self.has_vector is None else self.has_vector

    @property
    def sets_vector(self) -> bool:
        """An add, upsert or update that carries an embedding."""
        return self.operation in (ADD, UPSERT, UPDATE) and self.carries_vector


def read_queue(db: sqlite3.Connection, coll: CollectionInfo) -> dict[str, list[QueueRow]]:
    """The queue rows of the collection's topic, by record id, in seq_id order; vectors
    are not loaded (`load_vectors`), so a queue that was never purged fits in memory."""
    out: dict[str, list[QueueRow]] = {}
    for s, op, topic, rid, has, encoding in db.execute(
        "SELECT seq_id, operation, topic, id, vector IS NOT NULL, encoding FROM embeddings_queue "
        "WHERE topic LIKE ? ORDER BY seq_id",
        (f"%/{coll.id}",),
    ):
        if not str(topic).endswith("/" + coll.id):
            continue
        enc = None if encoding is None else str(encoding)
        row = QueueRow(seq(s), int(op), str(rid), None, enc, bool(has))
        out.setdefault(str(rid), []).append(row)
    return out


def load_vectors(db: sqlite3.Connection, rows: list[QueueRow]) -> None:
    """Fill in the vector bytes of `rows`."""
    for i in range(0, len(rows), BATCH):
        part = {r.seq_id: r for r in rows[i : i + BATCH]}
        marks = ",".join("?" * len(part))
        for s, vector in db.execute(
            f"SELECT seq_id, vector FROM embeddings_queue WHERE seq_id IN ({marks})", list(part)
        ):
            row = part.get(seq(s))
            if row is not None:
                row.vector = None if vector is None else bytes(vector)


def decode_vector(row: QueueRow, dimension: int | None) -> tuple[Any, str | None]:
    """(float32 vector, None) or (None, why not): the encoding must be FLOAT32 (the only
    one chromadb writes and reads), the size dimension * 4, every component finite."""
    import numpy as np

    if row.vector is None:
        return None, "the queue row has no vector"
    if row.encoding != "FLOAT32":
        return None, f"queue vector encoding {row.encoding!r} is not FLOAT32"
    if len(row.vector) % 4 or (dimension is not None and len(row.vector) != 4 * dimension):
        return None, f"queue vector of {len(row.vector)} bytes does not fit dimension {dimension}"
    vec = np.frombuffer(row.vector, dtype="<f4")
    if not np.isfinite(vec).all():
        return None, "queue vector has a NaN or infinite component"
    return vec, None
