"""What survives in a broken Chroma database: every record chroma.sqlite3 still lists,
with its vector from the write-ahead queue or the HNSW files, each verified, or the reason
it is lost (docs/salvage.md).

Input: the database directory (only read; no symlink followed) and a private copy of its
chroma.sqlite3 (`sqlite_copy.py` makes one and rolls a hot journal back in the copy).

Where a record's vector comes from, per record with current seq_id `s` in a collection
whose persisted HNSW has consumed the queue up to `P` (`max_seq_id` of its VECTOR
segment):

1. the queue row at `s` when it sets a vector (an add, an upsert, or an update with an
   embedding: the row that last changed the record);
2. otherwise (the change at `s` left the embedding alone) the newest earlier queue row of
   the record above `P` that set a vector and certainly took effect;
3. otherwise the HNSW files, which hold the state at `P` or later: the record's embedding
   has not changed since (`salvage_hnsw` verifies it);
4. otherwise the record is lost, with the reason.

The embedding reported is what chromadb's `get` returned before the break: for a queue
vector in a cosine space the float32 normalize-then-scale readback of the input
(`collection_child.readback`), for the HNSW the stored unit vector times its length.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from . import children, salvage_hnsw, salvage_sqlite, sqlite_copy
from .collection_child import readback
from .layout import SQLITE_NAME
from .salvage_sqlite import ADD, DELETE, UPDATE, UPSERT, CollectionInfo, QueueRow, TableHealth

QUEUE, HNSW = "queue", "hnsw"
LOST_REASONS = {
    **salvage_hnsw.REASONS,
    "queue_vector_unreadable": "the queue row that holds the vector cannot be decoded",
    "queue_unusable": "the vector is newer than the persisted HNSW and embeddings_queue fails its check",
    "queue_row_missing": "the vector is newer than the persisted HNSW and its queue row is gone",
    "position_unknown": "max_seq_id is unusable and the queue cannot tell whether the HNSW is current",
    "ambiguous_add": "an add of an id chromadb may already have held: cannot tell whether it took effect",
    "inconsistent_queue": "the queue's operations on this id contradict the record's existence",
    "hnsw_stale": "the HNSW files lack records the database says they hold: they are older than "
    "max_seq_id, so an embedding there may be outdated",
    "no_vector_segment": "the collection has no VECTOR segment",
    "not_read": "not read: the caller holds this version of the record (salvage's `known`): "
    "its document, metadata and vector are not read",
}


@dataclass(slots=True)
class RecordSalvage:
    """One record of the broken database and what could be recovered of it."""

    id: str
    seq_id: int
    document: str | None
    metadata: dict[str, Any] | None
    uri: str | None = None
    source: str | None = None
    """QUEUE or HNSW; None when the vector is lost."""
    reason: str | None = None
    """Why the vector is lost (a key of LOST_REASONS), None when recovered."""
    embedding: bytes | None = None
    """float32 little-endian, what chromadb's get returned."""
    raw: bytes | None = None
    """From the queue: the vector as the application gave it (adding it again reproduces
    `embedding` exactly)."""
    queue_seq_id: int | None = None
    label: int | None = None
    label_derived: bool = False
    """The HNSW label was not read from this database's index_metadata.pickle: derived
    (`derive_labels`) or taken from an older copy (`older_labels`)."""


@dataclass
class CollectionSalvage:
    info: CollectionInfo
    records: list[RecordSalvage] | None = None
    """None when chroma.sqlite3 no longer lists the records."""
    segment: salvage_hnsw.SegmentRead | None = None
    queue_rows: int = 0
    queue_usable: bool = False
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        recs = self.records or []
        lost: dict[str, int] = {}
        for r in recs:
            if r.source is None:
                lost[r.reason or "?"] = lost.get(r.reason or "?", 0) + 1
        return {
            "records": len(recs),
            "queue": sum(r.source == QUEUE for r in recs),
            "hnsw": sum(r.source == HNSW for r in recs),
            "hnsw_derived_label": sum(r.source == HNSW and r.label_derived for r in recs),
            "lost": sum(lost.values()),
            "lost_by_reason": dict(sorted(lost.items())),
        }


@dataclass
class Salvage:
    health: TableHealth
    collections: list[CollectionSalvage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        keys = ("records", "queue", "hnsw", "hnsw_derived_label", "lost")
        total: dict[str, Any] = {**dict.fromkeys(keys, 0), "lost_by_reason": {}}
        for c in self.collections:
            got = c.counts()
            for k in keys:
                total[k] += got[k]
            for reason, n in got["lost_by_reason"].items():
                total["lost_by_reason"][reason] = total["lost_by_reason"].get(reason, 0) + n
        return total


def returned_embedding(raw: Any, space: str) -> bytes:
    """What chromadb's get returns for a vector added as `raw` (float32)."""
    import numpy as np  # lazy: numpy only when salvage reads vectors

    vec = np.asarray(raw, dtype=np.float32)
    if space == "cosine":
        vec = readback(vec[None, :])[0]
    return vec.astype("<f4").tobytes()


def copy_sqlite(
    db_dir: Path, dest: Path, python: str = sys.executable, timeout: float = 600
) -> dict[str, Any]:
    """Make `dest` a private copy of the database's chroma.sqlite3 with `sqlite_copy.py` in
    a child process (a hot journal is rolled back in the copy, the original is untouched);
    its JSON report. Raises OSError with the child's one-line error. (Not `SqliteCopy`: the
    database is not live here, and the child may run under another interpreter.)"""
    done = children.run([python, sqlite_copy.__file__, str(db_dir / SQLITE_NAME), str(dest)], timeout)
    if done.timed_out:
        raise OSError(f"cannot copy {SQLITE_NAME}: no answer within {timeout:g} s")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    report: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if done.returncode != 0 or "error" in report or not lines:
        raise OSError(f"cannot copy {SQLITE_NAME}: {report.get('error') or done.stderr.strip()[-300:]}")
    return report


OlderLabels = dict[str, dict[str, tuple[int, int]]]
"""collection id -> {record id: (HNSW label, seq_id)} from an older intact copy of the
database (a snapshot): `older_labels`."""


def older_labels(db_dir: Path, sqlite_copy: Path) -> OlderLabels:
    """The label of every record of an intact older copy of the database (e.g. a
    materialized snapshot), with its seq_id then. chromadb 1.0/1.5 never change a
    record's label until it is deleted, so for a record whose seq_id is unchanged since,
    the label is still its own: `salvage` uses these when the broken database's
    index_metadata.pickle is truncated or empty."""
    out: OlderLabels = {}
    db = salvage_sqlite.connect(sqlite_copy)
    try:
        health = salvage_sqlite.check_tables(db)
        colls, _ = salvage_sqlite.read_collections(db, health)
        for info in colls:
            folder = _segment_folder(db_dir, info.vector_segment or "")
            if folder is None:
                continue
            labels = salvage_hnsw.read_label_map(folder)
            records, _ = salvage_sqlite.read_records(db, info, health, lambda _r: False)  # ids, seq_ids
            if not labels.complete or records is None:
                continue
            out[info.id] = {r.id: (labels.labels[r.id], r.seq_id) for r in records if r.id in labels.labels}
    finally:
        db.close()
    return out


def salvage(
    db_dir: Path,
    sqlite_copy: Path,
    older: OlderLabels | None = None,
    known: dict[str, dict[str, int]] | None = None,
    health: TableHealth | None = None,
) -> Salvage:
    """Everything recoverable from the database at `db_dir`, whose chroma.sqlite3 was
    copied (hot journal rolled back) to `sqlite_copy`. `older` (from `older_labels` of
    a snapshot of the same database) completes a damaged label map. `known` (collection
    id -> {record id: seq_id}) names record versions the caller already holds: neither
    their documents and metadata nor their vectors are read (such a record gets reason
    `not_read`), and a collection holding only such records is not read past its ids
    (no queue, no label map, no HNSW file). `health`: the file's table check, when it
    was made already (`salvage_sqlite.check_file`)."""
    try:
        db = salvage_sqlite.connect(sqlite_copy)
    except sqlite3.Error as exc:
        out = Salvage(TableHealth(schema_error=f"{type(exc).__name__}: {exc}"))
        out.problems.append(f"chroma.sqlite3 cannot be opened: {exc}")
        return out
    try:
        health = health or salvage_sqlite.check_tables(db)
        out = Salvage(health)
        if health.schema_error:
            out.problems.append(f"chroma.sqlite3's schema is unreadable: {health.schema_error}")
            return out
        for table, why in sorted(health.failed.items()):
            out.problems.append(f"table {table} fails its integrity check: {why}")
        try:
            colls, problems = salvage_sqlite.read_collections(db, health)
        except (sqlite3.DatabaseError, MemoryError) as exc:
            out.problems.append(f"cannot list the collections: {type(exc).__name__}: {exc}")
            return out
        out.problems += problems
        for info in colls:
            try:
                out.collections.append(
                    _collection(
                        db, db_dir, info, health, (older or {}).get(info.id), (known or {}).get(info.id)
                    )
                )
            except (sqlite3.DatabaseError, MemoryError) as exc:  # a table that passed its check
                cs = CollectionSalvage(info)
                cs.problems.append(f"cannot read: {type(exc).__name__}: {exc}")
                out.collections.append(cs)
        return out
    finally:
        db.close()


def _segment_folder(db_dir: Path, segment_id: str) -> Path | None:
    """The segment's folder inside the database directory, if its name is a plain one."""
    if not segment_id or "/" in segment_id or segment_id in (".", "..") or "\0" in segment_id:
        return None
    return db_dir / segment_id


def _collection(
    db: Any,
    db_dir: Path,
    info: CollectionInfo,
    health: TableHealth,
    older: dict[str, tuple[int, int]] | None = None,
    known: dict[str, int] | None = None,
) -> CollectionSalvage:
    cs = CollectionSalvage(info)

    def wanted(r: salvage_sqlite.RecordRow) -> bool:
        return known is None or known.get(r.id) != r.seq_id

    records, problems = salvage_sqlite.read_records(db, info, health, None if known is None else wanted)
    cs.problems += problems
    if records is None:
        return cs
    todo = records if known is None else [r for r in records if known.get(r.id) != r.seq_id]
    if not todo:  # the caller holds every record as it is here: nothing to read
        cs.records = [_not_read(r) for r in records]
        return cs
    queue: dict[str, list[QueueRow]] = {}
    cs.queue_usable = health.ok("embeddings_queue")
    if cs.queue_usable:
        queue = salvage_sqlite.read_queue(db, info)
        cs.queue_rows = sum(len(v) for v in queue.values())
    elif "embeddings_queue" in health.tables:
        cs.problems.append("embeddings_queue fails its integrity check: no vector comes from it")
    folder = _segment_folder(db_dir, info.vector_segment or "")
    labels = salvage_hnsw.read_label_map(folder) if folder is not None else salvage_hnsw.LabelMap()
    if folder is None:
        cs.problems.append("the collection has no VECTOR segment with a plain folder name")
    position = info.vector_seq_id
    if position is None and labels.max_seq_id is not None:
        position = labels.max_seq_id
        cs.problems.append("vector position taken from the pickle's legacy max_seq_id")
    if older and folder is not None and not labels.complete:
        cs.problems.append(_take_older(labels, records, older))
    level0 = None
    if folder is not None and labels.labels and not labels.complete:
        level0, _status, _problems = salvage_hnsw.open_level0(folder, info.dimension)
        if level0 is not None:
            derived, note = derive_labels(labels, records, level0.live_labels(), _unsettled(queue, position))
            labels.labels.update(derived)
            labels.derived = set(derived)
            cs.problems.append(note)
    try:
        plans = {
            r.id: vector_source(r.seq_id, queue.get(r.id, []), cs.queue_usable, position, labels, r.id)
            for r in todo
        }
        need = {rid for rid, (kind, _) in plans.items() if kind == HNSW}
        cs.segment = salvage_hnsw.read_segment(
            folder or db_dir / "-", info.space, info.dimension, need, labels=labels, level0=level0
        )
    finally:
        if level0 is not None:
            level0.close()
    if need:
        cs.problems += cs.segment.problems
    stale = _stale(records, labels, position)
    if stale:
        cs.problems.append(
            f"the HNSW files lack {stale} records that max_seq_id says they hold: "
            "they are older than chroma.sqlite3, no vector is taken from them"
        )
    salvage_sqlite.load_vectors(db, [d for _k, d in plans.values() if isinstance(d, QueueRow)])
    cs.records = []
    for rec in records:
        got_plan = plans.get(rec.id)
        if got_plan is None:
            cs.records.append(_not_read(rec))
            continue
        kind, detail = got_plan
        out = RecordSalvage(rec.id, rec.seq_id, rec.document, rec.metadata, rec.uri)
        if isinstance(detail, QueueRow):
            vec, _why = salvage_sqlite.decode_vector(detail, info.dimension)
            out.queue_seq_id = detail.seq_id
            if vec is None:
                out.reason = "queue_vector_unreadable"
            else:
                out.source, out.raw = QUEUE, vec.astype("<f4").tobytes()
                out.embedding = returned_embedding(vec, info.space)
        elif kind == HNSW:
            got = cs.segment.read(rec.id)
            out.label, out.label_derived = got.label, rec.id in labels.derived or rec.id in labels.older
            if folder is None:
                out.reason = "no_vector_segment"
            elif stale:
                out.reason = "hnsw_stale"
            elif got.status == salvage_hnsw.OK:
                out.source, out.embedding = HNSW, got.embedding
            else:
                out.reason = got.status
        else:
            out.reason = str(detail)
        cs.records.append(out)
    return cs


def _not_read(rec: salvage_sqlite.RecordRow) -> RecordSalvage:
    """A record whose version the caller holds (`known`): neither its content nor its
    vector is read."""
    return RecordSalvage(rec.id, rec.seq_id, rec.document, rec.metadata, rec.uri, reason="not_read")


def _take_older(
    labels: salvage_hnsw.LabelMap, records: list[salvage_sqlite.RecordRow], older: dict[str, tuple[int, int]]
) -> str:
    """Add to an incomplete map the older copy's labels of records whose seq_id has not
    changed since; none at all if the older copy contradicts the readable entries."""
    for rid, label in labels.labels.items():
        got = older.get(rid)
        if got is not None and got[0] != label:
            return "label map incomplete: the older copy's labels contradict it, none taken"
    taken = set(labels.labels.values())
    added = {}
    for rec in records:
        got = older.get(rec.id)
        if got is None or got[1] != rec.seq_id or rec.id in labels.labels or rec.id in labels.conflicts:
            continue
        if got[0] in taken:
            continue
        added[rec.id] = got[0]
    if len(set(added.values())) != len(added):
        return "label map incomplete: the older copy gives one label to two records, none taken"
    labels.labels.update(added)
    labels.older = set(added)
    return f"label map incomplete: {len(added)} labels taken from the older copy (records unchanged since)"


def derive_labels(
    labels: salvage_hnsw.LabelMap,
    records: list[salvage_sqlite.RecordRow],
    live: Any,
    unsettled: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict[str, int], str]:
    """Labels for the records an incomplete label map lacks, where they can be shown.

    chromadb hands out HNSW labels (1, 2, ...) and `embeddings` rowids in the same queue
    order, one each per record it creates, and a deleted record leaves both sequences
    (its label marked deleted). So among the records the HNSW holds, label order is rowid
    order. The map's readable entries are anchors, spread over the whole map (its order
    is a hash order): there must be two, all in that order, or nothing is derived; between
    two consecutive anchors (and before the first and after the last: both sequences
    start and end together), when the records and the live labels (`live`, sorted) number
    the same, the k-th record has the k-th label. Any other gap stays unmapped. Records in
    `unsettled` (created or deleted in the queue after the HNSW's position: their row or
    label may be newer than the other side's) are neither anchors nor aligned. Returns
    the derived map and a line for the report."""
    order = sorted((r for r in records if r.id not in unsettled), key=lambda r: r.rowid)
    rank = {r.id: k for k, r in enumerate(order)}
    live_list = [int(x) for x in live]
    slot = {label: j for j, label in enumerate(live_list)}
    anchors = sorted(
        (rank[rid], slot[label]) for rid, label in labels.labels.items() if rid in rank and label in slot
    )
    if len(anchors) < 2:
        return {}, "label map incomplete: too few readable entries to derive the rest"
    if any(b[1] <= a[1] for a, b in pairwise(anchors)):
        return {}, "label map incomplete: its entries do not follow insertion order, nothing derived"
    taken = set(labels.labels.values())
    derived: dict[str, int] = {}
    gaps = unresolved = 0
    ends = [(-1, -1), *anchors, (len(order), len(live_list))]  # both sequences start and end together
    for (ra, la), (rb, lb) in pairwise(ends):
        n = rb - ra - 1
        if n == 0 and lb - la - 1 == 0:
            continue
        gaps += 1
        pairs = [(order[ra + k].id, live_list[la + k]) for k in range(1, n + 1)]
        if n != lb - la - 1 or any(
            rid in labels.labels or rid in labels.conflicts or label in taken for rid, label in pairs
        ):
            unresolved += 1
            continue
        derived.update(pairs)
    return derived, (
        f"label map incomplete: {len(derived)} labels derived from insertion order between "
        f"{len(anchors)} readable entries ({unresolved} of {gaps} gaps left unmapped)"
    )


def _unsettled(queue: dict[str, list[QueueRow]], position: int | None) -> set[str]:
    """Ids the queue creates or deletes after the HNSW's position (all, without one)."""
    return {
        rid
        for rid, rows in queue.items()
        if any(
            r.operation in (ADD, UPSERT, DELETE) and (position is None or r.seq_id > position) for r in rows
        )
    }


def _stale(
    records: list[salvage_sqlite.RecordRow], labels: salvage_hnsw.LabelMap, position: int | None
) -> int:
    """Records at or below the vector position that a complete label map lacks."""
    if not labels.complete or position is None:
        return 0
    held, conflicts = labels.labels, labels.conflicts
    return sum(1 for r in records if r.seq_id <= position and r.id not in held and r.id not in conflicts)


UNKNOWN = None


def vector_source(
    s: int,
    rows: list[QueueRow],
    queue_usable: bool,
    position: int | None,
    labels: salvage_hnsw.LabelMap,
    rid: str,
) -> tuple[str | None, QueueRow | str]:
    """(QUEUE, the row), (HNSW, "") or (None, lost reason) for the record `rid` whose
    seq_id is `s`, given its queue rows in seq_id order and the HNSW's position."""
    if not queue_usable:
        if position is not None and s <= position:
            return HNSW, ""
        return None, "queue_unusable" if position is not None else "position_unknown"
    mine = [r for r in rows if r.seq_id <= s]
    at = next((r for r in mine if r.seq_id == s), None)
    if at is not None and at.sets_vector:
        return QUEUE, at  # the row that last changed the record, and it set the vector
    if at is None:
        if position is not None:
            return (HNSW, "") if s <= position else (None, "queue_row_missing")
        if not mine:
            return HNSW, ""  # every row of the record was consumed by all segments and purged
    # Replay, as chromadb does on start, the rows the persisted HNSW has not consumed over
    # the state it holds: the record exists there if the label map says so (unknown if
    # the map is incomplete or there is no position, as then rows it holds are replayed).
    window = [r for r in mine if position is None or r.seq_id > position]
    exists: bool | None
    if position is not None and rid in labels.labels:
        exists = True
    elif position is not None and labels.complete and rid not in labels.conflicts:
        exists = False
    else:
        exists = UNKNOWN
    source: QueueRow | str | None = HNSW if exists is not False else None
    for r in window:
        if r.operation == DELETE:
            exists, source = False, None
        elif r.operation == UPSERT and r.carries_vector:
            exists, source = True, r
        elif r.operation == ADD and r.carries_vector:
            if exists is False:
                exists, source = True, r
            elif exists is UNKNOWN:
                exists, source = True, "ambiguous_add"
        elif r.operation == UPDATE and r.carries_vector and exists is not False:
            # if the record's existence is unknown here, the update took effect unless a
            # later row created the record, and a later add makes the case ambiguous
            source = r
    if exists is False or source is None:
        return None, "inconsistent_queue"
    if isinstance(source, QueueRow):
        return QUEUE, source
    return (HNSW, "") if source == HNSW else (None, str(source))
