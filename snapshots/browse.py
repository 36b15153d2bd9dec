"""Browsing snapshots by collection and record: diff, find, peek, export, and restoring
one collection. `diff` and `find` read record indexes (and, for versions an index does not
hold, a private copy of chroma.sqlite3); `peek` reads a private copy of a snapshot's
chroma.sqlite3 with sqlite3; `export` and collection restore read the
embeddings through chromadb in a child process (collection_child.py).
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import json
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, Protocol

from blake3 import blake3
from pydantic import BaseModel, Field

from chromasnap.manifest import Snapshot

from . import children, collection_child, versions
from . import records as rx
from .capture import scan
from .errors import ChromasnapError, StoreError, UsageError
from .extract import extract
from .fsutil import commit_file, temp_name
from .guard import WriteGuard, describe_holders, open_by
from .layout import SQLITE_NAME, check_database, inside
from .repository import Repository
from .sqlite_copy import SqliteCopy, check_tables, deadline_seconds, open_private


class Host(Protocol):
    """What browsing uses of the SnapshotManager: its paths, repository and snapshots, and
    a guarded write (restore --collection). Passed in: browse.py does not import manager.py."""

    db_path: Path | None
    store_path: Path | None

    @property
    def repo(self) -> Repository: ...

    def _need_db(self) -> Path: ...

    def get(self, ref: str) -> Snapshot: ...

    def list(self) -> builtins.list[Snapshot]: ...

    def before_write(
        self,
        reason: str = "",
        tags: Sequence[str] = (),
        note: str | None = None,
        snapshot_reason: str = "pre-write",
    ) -> WriteGuard: ...


LIVE = "live"
FIELD_NAMES = ("document", "metadata", "embedding")


class RecordIds(BaseModel):
    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    changed: list[str] = Field(default_factory=list)


class CollectionDiff(BaseModel):
    name: str
    status: Literal["same", "changed", "created", "dropped", "recreated"]
    records_a: int = 0
    records_b: int = 0
    added: int = 0
    removed: int = 0
    changed: int = 0
    fields: dict[str, int] = Field(
        default_factory=dict,
        description="changed records by what changed; 'embedding' means the record was rewritten "
        "with the same document and metadata (its seq_id moved)",
    )
    ids: RecordIds | None = None


class FileDiff(BaseModel):
    path: str
    status: Literal["added", "removed", "changed"]
    size_a: int | None = None
    size_b: int | None = None


class DiffResult(BaseModel):
    a: str
    b: str
    collections: list[CollectionDiff]
    created: list[str]
    dropped: list[str]
    recreated: list[str]
    files: list[FileDiff]
    changed_bytes: int = Field(description="sum of the larger size of each differing file")
    duration_s: float = 0.0

    @property
    def identical(self) -> bool:
        return not self.files and all(c.status == "same" for c in self.collections)


class FindEntry(BaseModel):
    snapshot: str
    created_at: str
    source: str
    collection: str
    change: Literal["appeared", "changed", "unchanged", "vanished"]
    seq_id: int | None = None
    fields: list[str] = Field(default_factory=list)


class FindResult(BaseModel):
    id: str
    collection: str | None
    snapshots: int
    entries: list[FindEntry]
    problems: list[str] = Field(
        default_factory=list, description="snapshots whose record index could not be read, and why"
    )
    duration_s: float = 0.0


class PeekRecord(BaseModel):
    id: str
    document: str | None
    metadata: dict[str, Any] | None


class PeekResult(BaseModel):
    snapshot: str
    collection: str
    total: int
    records: list[PeekRecord]
    missing: list[str] = Field(default_factory=list)


class ExportResult(BaseModel):
    snapshot: str
    collection: str
    out: str
    records: int
    bytes: int
    space: str | None = None
    metadata: dict[str, Any] | None = None
    duration_s: float = 0.0


class CollectionRestoreResult(BaseModel):
    snapshot: str
    collection: str
    target: str
    replaced: bool
    records: int
    exact_embeddings: int
    space: str | None = None
    pre_restore: str | None = None
    duration_s: float = 0.0


# --- views of both sides --------------------------------------------------------------------


def _side(mgr: Host, ref: str, source: rx.RecordSource, work: Path) -> tuple[rx.Side, Any]:
    """The records and files of a snapshot or, for `live`, of the database."""
    if ref == LIVE:
        return _live(mgr, source, work)
    snap = mgr.get(ref)
    return rx.snapshot_side(mgr.repo, snap, source, work), snap


CHILD_TIMEOUT = 3600.0
"""Default seconds before a chromadb child of export or restore --collection is killed."""


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """SQLite errors of a private copy as one line naming it (a view that never ends is
    interrupted by the deadline of `sqlite_copy.open_private`)."""
    try:
        yield
    except sqlite3.Error as exc:
        if "interrupted" in str(exc):
            raise StoreError(
                f"{what}: reading its chroma.sqlite3 took more than {deadline_seconds():g} s "
                "(CHROMASNAP_SQLITE_TIMEOUT); a view or query that does not end?"
            ) from None
        raise StoreError(f"{what}: its chroma.sqlite3 cannot be read ({exc})") from None


def _live(mgr: Host, source: rx.RecordSource, work: Path) -> tuple[rx.Side, dict[str, Any]]:
    """The live database's records (from a private copy of chroma.sqlite3 made under
    SQLite's read lock by a child) and its files as {path: stat, or for chroma.sqlite3
    ("hash", hash of the copy, size)}."""
    db = mgr._need_db()
    check_database(db)
    copy = SqliteCopy(db / SQLITE_NAME, work / "live.sqlite3", records=True).start()
    try:
        info = copy.finish()
    except BaseException:
        copy.kill()
        raise
    if copy.records is None or "records" not in info:
        raise ChromasnapError(f"cannot read the records of {db}: {info.get('records_error', 'unknown')}")
    side = rx.Side(LIVE, rx.from_lines(copy.records, source), source, lambda: copy.dest)
    files: dict[str, Any] = dict(scan(db).files)
    files[SQLITE_NAME] = ("hash", _hash_file(copy.dest), copy.dest.stat().st_size)
    return side, files


def _hash_file(path: Path) -> str:
    h = blake3()
    with path.open("rb") as fh:
        while block := fh.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def _file_diff(mgr: Host, a: Any, b: Any) -> list[FileDiff]:
    """Files that differ: snapshot entries by hash; live files by stat, then by hash."""
    if isinstance(a, dict) and isinstance(b, dict):
        return []  # the live database against itself
    if isinstance(a, dict):  # keep the live side second
        return [_flip(d) for d in _file_diff(mgr, b, a)]
    fa = {f.path: f for f in a.files}
    out: list[FileDiff] = []
    if isinstance(b, Snapshot):
        fb = {f.path: f for f in b.files}
        for p in sorted(fa.keys() | fb.keys()):
            x, y = fa.get(p), fb.get(p)
            if x is None or y is None or x.hash != y.hash or x.size != y.size:
                out.append(
                    FileDiff(
                        path=p,
                        status="added" if x is None else "removed" if y is None else "changed",
                        size_a=x.size if x else None,
                        size_b=y.size if y else None,
                    )
                )
        return out
    db = mgr._need_db()
    for p in sorted(fa.keys() | b.keys()):
        x, st = fa.get(p), b.get(p)
        if st is None:
            out.append(FileDiff(path=p, status="removed", size_a=x.size if x else None))
            continue
        if not isinstance(st, os.stat_result):  # chroma.sqlite3: hashed from the private copy
            size, same = st[2], x is not None and x.hash == st[1]
        else:
            size = st.st_size
            same = x is not None and (x.size, x.mtime_ns, x.inode, x.ctime_ns) == (
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
                st.st_ctime_ns,
            )
            if not same and x is not None and x.size == size and x.hash_kind == "content":
                with contextlib.suppress(OSError):
                    same = _hash_file(db / p) == x.hash
        if x is None:
            out.append(FileDiff(path=p, status="added", size_b=size))
        elif not same:
            out.append(FileDiff(path=p, status="changed", size_a=x.size, size_b=size))
    return out


def _flip(d: FileDiff) -> FileDiff:
    status = {"added": "removed", "removed": "added"}.get(d.status, d.status)
    return FileDiff(path=d.path, status=status, size_a=d.size_b, size_b=d.size_a)


# --- diff -----------------------------------------------------------------------------------------


def _fields(x: rx.Hashes | None, y: rx.Hashes | None, seq_moved: bool) -> list[str]:
    """What changed between two versions of a record: its document, its metadata, or (the
    record was rewritten with both the same) its embedding."""
    if x is None or y is None:
        return ["document", "metadata"] if x != y else []
    out = [f for f, a, b in (("document", x[0], y[0]), ("metadata", x[1], y[1])) if a != b]
    return out or (["embedding"] if seq_moved else [])


DIFF_BATCH = 4096
"""Records whose versions are compared at a time: a diff holds this many, not the collection."""


class _Unsorted(Exception):
    """A record stream that is not in strictly increasing id order."""


def _merged(
    a: Iterator[list[rx.Record]], b: Iterator[list[rx.Record]], same: bool = False
) -> Iterator[tuple[str, int | None, int | None]]:
    """(id, seq_id on the left or None, seq_id on the right or None) of two collections' record
    chunks in id order (a record index keeps each collection's records sorted by id), a window
    of about a chunk of each in memory: holding both sides whole made a diff's memory grow
    with the collection. With `same` (one collection on both sides) only the records that
    differ are given: each window is compared as dicts, in C, rather than record by record
    in Python (a million records' diff took seconds of that: issue 20's profile).

    A window ends at the smaller of the two buffers' last ids: every record after it, on
    either side, has a greater id, so the window holds all there is up to that id."""
    bufs: list[list[rx.Record]] = [[], []]
    its = (a, b)
    done = [False, False]
    last: list[str | None] = [None, None]

    def fill(side: int) -> None:
        while not bufs[side] and not done[side]:
            run = next(its[side], None)
            if run is None:
                done[side] = True
                return
            if not run:
                continue
            ids = [r[0] for r in run]
            prev = last[side]
            # strictly increasing: sorted already, no repeats, after the previous chunk's
            if ids != sorted(ids) or len(set(ids)) != len(ids) or (prev is not None and ids[0] <= prev):
                raise _Unsorted
            last[side] = ids[-1]
            bufs[side] = list(run)

    fill(0)
    fill(1)
    while bufs[0] or bufs[1]:
        # a side with nothing left imposes no end; else the smaller last id of the two
        end = min(buf[-1][0] for buf in bufs if buf)
        cut = [bisect.bisect_right(buf, end, key=_first) for buf in bufs]
        wa, wb = bufs[0][: cut[0]], bufs[1][: cut[1]]
        bufs[0], bufs[1] = bufs[0][cut[0] :], bufs[1][cut[1] :]
        da, db = dict(wa), dict(wb)
        keys = {k for k, _ in da.items() ^ db.items()} if same else da.keys() | db.keys()
        for k in sorted(keys):
            yield k, da.get(k), db.get(k)
        fill(0)
        fill(1)


def _first(rec: rx.Record) -> str:
    return rec[0]


def _collection_diff(name: str, sa: rx.Side, sb: rx.Side, want_ids: bool, limit: int) -> CollectionDiff:
    va, vb = sa.views.get(name), sb.views.get(name)
    ids = RecordIds() if want_ids else None

    def note(kind: str, rid: str) -> None:
        if ids is not None:
            lst: list[str] = getattr(ids, kind)
            if len(lst) < limit:
                lst.append(rid)

    if va is None or vb is None:
        view = vb if va is None else va
        assert view is not None
        kind = "added" if va is None else "removed"
        cd = CollectionDiff(
            name=name,
            status="created" if va is None else "dropped",
            records_a=va.records if va else 0,
            records_b=vb.records if vb else 0,
        )
        setattr(cd, kind, view.records)
        if ids is not None:
            for rec in view.all():
                if len(getattr(ids, kind)) >= limit:
                    break
                note(kind, rec[0])
        cd.ids = ids
        return cd
    same = va.id == vb.id
    skip = va.keys() & vb.keys() if same else set()  # shared chunks hold the same records
    cd = CollectionDiff(name=name, status="same", records_a=va.records, records_b=vb.records)
    fields: dict[str, int] = {}
    batch: list[tuple[str, int, int]] = []

    def compare() -> None:
        # within one collection a record changed iff its seq_id moved; a recreated collection's
        # records are compared by content (their seq_ids say nothing about each other)
        ha = sa.hashes(va, [(rid, x) for rid, x, _ in batch])
        hb = sb.hashes(vb, [(rid, y) for rid, _, y in batch])
        for rid, _x, _y in batch:
            what = _fields(ha.get(rid), hb.get(rid), same)
            if what:
                cd.changed += 1
                note("changed", rid)
                for f in what:
                    fields[f] = fields.get(f, 0) + 1
        batch.clear()

    try:
        pairs = _merged(va.runs(skip), vb.runs(skip), same)
        for rid, x, y in pairs:
            if x is None:
                cd.added += 1
                note("added", rid)
            elif y is None:
                cd.removed += 1
                note("removed", rid)
            elif x != y or not same:
                batch.append((rid, x, y))
                if len(batch) >= DIFF_BATCH:
                    compare()
        compare()
    except _Unsorted:  # an index whose chunks are not in id order: compare in memory
        cd.added = cd.removed = cd.changed = 0
        fields.clear()
        batch.clear()
        if ids is not None:
            ids = RecordIds()
        left, right = dict(va.all(skip)), dict(vb.all(skip))
        for rid in sorted(left.keys() | right.keys()):
            x, y = left.get(rid), right.get(rid)
            if x is None:
                cd.added += 1
                note("added", rid)
            elif y is None:
                cd.removed += 1
                note("removed", rid)
            elif x != y or not same:
                batch.append((rid, x, y))
        compare()
    cd.fields = fields
    cd.ids = ids
    if not same:
        cd.status = "recreated"
    elif cd.added or cd.removed or cd.changed:
        cd.status = "changed"
    return cd


def diff(mgr: Host, a: str, b: str | None, want_ids: bool = False, limit: int = 100) -> DiffResult:
    """What changed from snapshot `a` to snapshot `b` (default: the live database)."""
    t0 = time.monotonic()
    if limit < 0:
        raise UsageError("--limit must be 0 or more")
    source = rx.RecordSource(mgr.repo)
    work = rx.private_dir(mgr.repo, "diff")
    try:
        with _reading(f"snapshot {a}"):
            sa, fa = _side(mgr, a, source, work)
        with _reading(f"snapshot {b}" if b else "the live database"):
            sb, fb = _side(mgr, b or LIVE, source, work)
        files = _file_diff(mgr, fa, fb)
        names = sorted(sa.views.keys() | sb.views.keys())
        with _reading(f"snapshots {a} and {b or LIVE}"):
            colls = [_collection_diff(n, sa, sb, want_ids, limit) for n in names]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return DiffResult(
        a=sa.label,
        b=sb.label,
        collections=colls,
        created=[c.name for c in colls if c.status == "created"],
        dropped=[c.name for c in colls if c.status == "dropped"],
        recreated=[c.name for c in colls if c.status == "recreated"],
        files=files,
        changed_bytes=sum(max(f.size_a or 0, f.size_b or 0) for f in files),
        duration_s=time.monotonic() - t0,
    )


# --- find ------------------------------------------------------------------------------------------


def find(mgr: Host, record_id: str, collection: str | None = None) -> FindResult:
    """Every snapshot holding `record_id` (in `collection`, or any), oldest first, with what
    changed since the previous snapshot of the same database: appeared, changed, vanished."""
    t0 = time.monotonic()
    if not record_id:
        raise UsageError("give a record id")
    snaps = mgr.list()
    source = rx.RecordSource(mgr.repo)
    last: dict[tuple[str, str], tuple[int, rx.Side, rx.CollectionView] | None] = {}
    entries: list[FindEntry] = []
    problems: list[str] = []
    work = rx.private_dir(mgr.repo, "find")
    try:
        for snap in snaps:
            try:  # a damaged record index costs only its own snapshot
                with _reading(f"snapshot {snap.short_id}"):
                    side = rx.snapshot_side(mgr.repo, snap, source, work)
                    for name in [collection] if collection else list(side.views):
                        view = side.views.get(name)
                        if view is not None:
                            view.lookup(record_id)
            except StoreError as exc:
                problems.append(f"snapshot {snap.short_id} skipped: {exc}")
                continue
            held = {n for (src, n), v in last.items() if src == snap.source and v is not None}
            for name in [collection] if collection else sorted(set(side.views) | held):
                view = side.views.get(name)
                rec = view.lookup(record_id) if view is not None else None
                key = (snap.source, name)
                prev = last.get(key)
                if rec is None and prev is None:
                    continue
                base = {
                    "snapshot": snap.id,
                    "created_at": snap.created_at.isoformat(),
                    "source": snap.source,
                    "collection": name,
                }
                if rec is None or view is None:
                    entries.append(FindEntry(**base, change="vanished"))
                    last[key] = None
                    continue
                fields: list[str] = []
                if prev is not None and (prev[0] != rec[1] or prev[2].id != view.id):
                    try:
                        with _reading(f"snapshot {snap.short_id}"):
                            x = prev[1].hashes(prev[2], [(record_id, prev[0])]).get(record_id)
                            y = side.hashes(view, [rec]).get(record_id)
                    except StoreError as exc:
                        problems.append(f"what changed in snapshot {snap.short_id} is unknown: {exc}")
                        x = y = None
                    fields = _fields(x, y, prev[2].id == view.id)
                    if prev[2].id != view.id:
                        fields.append("collection recreated")
                change = "appeared" if prev is None else "changed" if fields else "unchanged"
                entries.append(FindEntry(**base, change=change, seq_id=rec[1], fields=fields))
                last[key] = (rec[1], side, view)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return FindResult(
        id=record_id,
        collection=collection,
        snapshots=len(snaps),
        entries=entries,
        problems=problems,
        duration_s=time.monotonic() - t0,
    )


# --- peek ------------------------------------------------------------------------------------------


def _metadata(con: sqlite3.Connection, rowids: list[int], tables: set[str]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {i: {} for i in rowids}
    marks = ",".join("?" * len(rowids))
    for rid, key, sv, iv, fv, bv in con.execute(
        "SELECT id, key, string_value, int_value, float_value, bool_value FROM embedding_metadata "
        f"WHERE id IN ({marks}) ORDER BY id, key",
        rowids,
    ):
        out[rid][key] = _value(sv, iv, fv, bv)
    if "embedding_metadata_array" in tables:
        for rid, key, sv, iv, fv, bv in con.execute(
            "SELECT id, key, string_value, int_value, float_value, bool_value "
            f"FROM embedding_metadata_array WHERE id IN ({marks}) ORDER BY id, key, rowid",
            rowids,
        ):
            cur = out[rid].get(key)
            if not isinstance(cur, list):
                cur = out[rid][key] = []
            cur.append(_value(sv, iv, fv, bv))
    return out


def _value(sv: Any, iv: Any, fv: Any, bv: Any) -> Any:
    if sv is not None:
        return sv
    if bv is not None:
        return bool(bv)
    if iv is not None:
        return iv
    return fv


def peek(mgr: Host, ref: str, collection: str, limit: int = 10, ids: list[str] | None = None) -> PeekResult:
    """Records (id, document, metadata) of one collection of a snapshot, read with sqlite3
    from a private copy of its chroma.sqlite3 (no chromadb)."""
    if limit < 0:
        raise UsageError("--limit must be 0 or more")

    snap = mgr.get(ref)
    work = rx.private_dir(mgr.repo, "peek")
    try:
        path = rx.materialize_sqlite(mgr.repo, snap, work)
        with _reading(f"snapshot {snap.short_id}"):
            con = open_private(path)
            try:
                check_tables(con)
                return _peek(con, snap, collection, limit, ids)
            finally:
                con.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _peek(
    con: sqlite3.Connection, snap: Snapshot, collection: str, limit: int, ids: list[str] | None
) -> PeekResult:
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    row = con.execute(
        "SELECT s.id FROM collections c JOIN segments s ON s.collection = c.id AND s.scope = 'METADATA' "
        "WHERE c.name = ?",
        (collection,),
    ).fetchone()
    if row is None:
        _no_collection(snap, collection, [r[0] for r in con.execute("SELECT name FROM collections")])
    seg = row[0]
    (total,) = con.execute("SELECT count(*) FROM embeddings WHERE segment_id = ?", (seg,)).fetchone()
    if ids:
        marks = ",".join("?" * len(ids))
        rows = con.execute(
            f"SELECT id, embedding_id FROM embeddings WHERE segment_id = ? AND embedding_id IN ({marks}) "
            "ORDER BY id",
            (seg, *ids),
        ).fetchall()
    else:
        rows = con.execute(
            "SELECT id, embedding_id FROM embeddings WHERE segment_id = ? ORDER BY id LIMIT ?", (seg, limit)
        ).fetchall()
    meta = _metadata(con, [r[0] for r in rows], tables) if rows else {}
    out = []
    for rowid, rid in rows:
        m = meta.get(rowid, {})
        doc = m.pop("chroma:document", None)
        m = {k: v for k, v in m.items() if not k.startswith("chroma:")}
        out.append(PeekRecord(id=rid, document=doc, metadata=m or None))
    found = {r.id for r in out}
    return PeekResult(
        snapshot=snap.id,
        collection=collection,
        total=int(total),
        records=out,
        missing=[i for i in (ids or []) if i not in found],
    )


# --- export and restore through chromadb in a child -----------------------------------------------


def _run_child(python: str | None, args: list[str], timeout: float | None) -> dict[str, Any]:
    interpreter = python or sys.executable
    try:
        done = children.run([interpreter, collection_child.__file__, *args], timeout)
    except OSError as exc:
        raise UsageError(f"cannot start {interpreter}: {exc.strerror or exc}") from None
    if done.timed_out:
        raise ChromasnapError(f"chromadb did not finish within {timeout:g} s")
    lines = done.stdout.splitlines()
    line = next((x for x in reversed(lines) if x.startswith(collection_child.MARK)), None)
    checked = next((x for x in lines if x.startswith(collection_child.CHECKED)), None)
    partial = json.loads(checked[len(collection_child.CHECKED) :]) if checked else None
    if done.signal is not None:
        raise ChildFailed(f"chromadb's process was killed by {done.signal}", partial)
    if line is None:
        tail = done.stderr.strip().splitlines()
        raise ChildFailed(
            f"chromadb exited with {done.returncode} and no report" + (f": {tail[-1]}" if tail else ""),
            partial,
        )
    report: dict[str, Any] = json.loads(line[len(collection_child.MARK) :])
    if "error" in report:
        if report.get("refused"):
            raise UsageError(str(report["error"]))
        raise ChildFailed(str(report["error"]), partial)
    return report


class ChildFailed(ChromasnapError):
    """The chromadb child failed; `checked` is its report if it had finished and checked
    the restored collection (under its temporary name) before it was lost."""

    def __init__(self, message: str, checked: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.checked = checked


def _collection_of(snap: Snapshot, collection: str) -> None:
    names = [c.name for c in snap.wal.collections]
    if collection not in names:
        _no_collection(snap, collection, names)


def _no_collection(snap: Snapshot, collection: str, names: list[str]) -> NoReturn:
    have = ", ".join(sorted(names)) or "none"
    raise UsageError(f"snapshot {snap.short_id} has no collection {collection!r} (it has: {have})")


def export(
    mgr: Host,
    ref: str,
    collection: str,
    out: str | os.PathLike[str],
    python: str | None = None,
    timeout: float | None = None,
) -> ExportResult:
    """Write one collection of a snapshot as JSON lines (id, document, metadata, embedding),
    streamed in batches by chromadb in a child; the file appears complete or not at all."""
    t0 = time.monotonic()
    snap = mgr.get(ref)
    _collection_of(snap, collection)
    dest = Path(os.path.abspath(out))
    if dest.is_dir():
        raise UsageError(f"{dest} is a directory; give a file name")
    real = Path(os.path.realpath(dest.parent))
    for folder, what in ((mgr.store_path, "the store"), (mgr.db_path, "the database")):
        if folder is not None and inside(real, Path(os.path.realpath(folder))):
            raise UsageError(f"{dest} is inside {what}; write the export somewhere else")
    if not dest.parent.is_dir():
        raise UsageError(f"{dest.parent} does not exist")
    work = rx.private_dir(mgr.repo, "export")
    tmp = temp_name(dest)
    try:
        db = extract(mgr.repo, snap, work / "db", durable=False)
        # made here 0600 (the child only truncates and writes it): a store's records are private
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        report = _run_child(python, ["export", str(db), collection, str(tmp)], timeout or CHILD_TIMEOUT)
        os.chmod(tmp, 0o600)
        commit_file(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(
        snapshot=snap.id,
        collection=collection,
        out=str(dest),
        records=int(report["records"]),
        bytes=dest.stat().st_size,
        space=report.get("space"),
        metadata=report.get("metadata"),
        duration_s=time.monotonic() - t0,
    )


def restore_collection(
    mgr: Host,
    ref: str,
    collection: str,
    as_name: str | None = None,
    replace: bool = False,
    force: bool = False,
    python: str | None = None,
    timeout: float | None = None,
) -> CollectionRestoreResult:
    """Bring one collection of snapshot `ref` back into the live database, as `as_name` if
    given; every other collection stays as it is.

    Runs as a guarded write (database write lock, a `pre-restore` snapshot, a write intent)
    through chromadb in a child process (`python`, default this interpreter). Records come
    back with the same ids, documents, metadata and bit-identical embeddings, under the
    collection's metadata and index configuration. An existing collection of the target
    name is refused unless `replace`; it is dropped only after its replacement is complete.
    """
    t0 = time.monotonic()
    db = mgr._need_db()
    check_database(db)
    snap = mgr.get(ref)
    _collection_of(snap, collection)
    versions.check_openable(snap.id, snap.wal.schema_migrations, snap.chromadb_version, python, force)
    target = as_name or collection
    _check_name(target)

    def refuse_if_held() -> None:
        holders = [] if force else open_by(db)
        if holders:
            raise UsageError(
                f"{describe_holders(db, holders)}; stop it first, or use --force (its own view of "
                "the database then goes stale, and what it writes may be lost or clash)"
            )

    refuse_if_held()
    work = rx.private_dir(mgr.repo, "restore-collection")
    try:
        if not replace and target in _live_collections(db, work):  # before any snapshot is taken
            raise UsageError(f"collection {target} exists in {db}; give --replace or --as NEW_NAME")
        src = extract(mgr.repo, snap, work / "db", durable=False)
        temp = f"{target[:480]}-restore-{os.urandom(4).hex()}"
        with mgr.before_write(
            reason=f"restore collection {collection} from {snap.short_id}", snapshot_reason="pre-restore"
        ) as pre:
            assert pre is not None  # check_database above: there is a database to snapshot
            refuse_if_held()  # again: a process may have opened it since
            args = ["restore", str(src), str(db), collection, "--as", target, "--temp", temp]
            try:
                report = _run_child(
                    python, [*args, "--replace"] if replace else args, timeout or CHILD_TIMEOUT
                )
            except ChildFailed as exc:
                if exc.checked is None:  # it died before the new collection was complete
                    raise ChromasnapError(f"{exc}; {_drop_temp(python, db, temp)}") from None
                # complete and checked under its temporary name: finish the swap
                _run_child(python, ["finish", str(db), temp, target], 600)
                report = exc.checked
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return CollectionRestoreResult(
        snapshot=snap.id,
        collection=collection,
        target=target,
        replaced=bool(report["replaced"]),
        records=int(report["records"]),
        exact_embeddings=int(report["exact_embeddings"]),
        space=report.get("space"),
        pre_restore=pre.id,
        duration_s=time.monotonic() - t0,
    )


def _drop_temp(python: str | None, db: Path, temp: str) -> str:
    """After a failed child: drop the partial collection it may have left; says what it did.
    The collection being restored or replaced was not touched before the child's last step."""
    try:
        done = _run_child(python, ["drop", str(db), temp], 600)
    except ChromasnapError as exc:
        return f"could not drop the partial collection {temp} ({exc}); drop it, or run `chromasnap recover`"
    gone = "dropped the partial collection" if done.get("dropped") else "no partial collection was left"
    return f"{gone} ({temp}); the database is otherwise as before"


def _live_collections(db: Path, work: Path) -> set[str]:
    """Collection names of the live database, read from a private copy of chroma.sqlite3
    (made by a child under SQLite's read lock; the live file is never opened here)."""
    copy = work / "names.sqlite3"
    SqliteCopy(db / SQLITE_NAME, copy).run()
    try:
        con = open_private(copy)
        try:
            return {str(r[0]) for r in con.execute("SELECT name FROM collections")}
        finally:
            con.close()
    except sqlite3.Error:
        return set()
    finally:
        copy.unlink(missing_ok=True)


def _check_name(name: str) -> None:
    """Chroma's collection name rule: 3-512 of [a-zA-Z0-9._-], alphanumeric at both ends."""
    ok = (
        3 <= len(name) <= 512
        and all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
        and name[0].isalnum()
        and name[-1].isalnum()
        and ".." not in name
    )
    if not ok:
        raise UsageError(
            f"invalid collection name {name!r}: 3-512 characters from [a-zA-Z0-9._-], "
            "starting and ending with a letter or digit"
        )
