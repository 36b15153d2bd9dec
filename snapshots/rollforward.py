"""Roll forward past a snapshot: after a restore replaced a broken database, apply to the
restored database what the replaced (kept) one still holds that the snapshot lacks
(docs/recovery.md).

The kept directory is only read: its chroma.sqlite3 through a private copy, its HNSW files
through `salvage`. The restored database is changed only by swapping in a complete,
checked copy, so a crash at any instant leaves either the restored database or the
rolled-forward one:

1. plan: both databases' records (id, seq_id, document, metadata, the embedding chromadb
   returns), per collection by name: records added or changed since the snapshot, records
   and collections deleted since, collections created since; each vector from the kept
   database's queue or HNSW files, or the record is lost (exported with its reason);
2. a journal beside the database (`journal_path`), then a pre-roll-forward snapshot;
3. a private copy of the database (made alongside the snapshot), changed by chromadb in
   a child process (`rollforward_child.py`, started before step 1 so that chromadb's
   import overlaps the read: bit-exact embeddings, the collection's configuration kept),
   every rolled-forward record read back and compared (document, metadata, embedding
   bytes), every file fsynced;
4. the copy swapped in (`swap.swap_in`), the journal removed.

`recover` finds a journal left by a killed roll-forward and finishes it (running it again
is idempotent: what is already applied is not applied twice).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel

from . import fsutil, swap
from .errors import ChromasnapError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from chromasnap.manifest import Snapshot

    from .backend import StorageBackend
    from .restore import RecoverResult
    from .salvage import CollectionSalvage, RecordSalvage, Salvage
    from .salvage_sqlite import RecordRow, TableHealth


class SnapshotManager(Protocol):
    """What roll-forward uses of the SnapshotManager (passed in: rollforward.py does not
    import manager.py, which imports it)."""

    backend: StorageBackend
    _holding_write_lock: int

    @property
    def local(self) -> StorageBackend: ...

    def _need_db(self) -> Path: ...

    def _write_lock(self, wait: bool = True) -> contextlib.AbstractContextManager[object]: ...

    def snapshot(self, reason: str = ..., tags: Sequence[str] = ..., note: str | None = ...) -> Snapshot: ...


JOURNAL_VERSION = 1
CHILD = Path(__file__).with_name("rollforward_child.py")
MARK = "CHROMASNAP-ROLLFORWARD "
EXTRA_REASONS = {
    "metadata_unreadable": "the kept chroma.sqlite3's metadata table fails its check: "
    "the record's document and metadata are unknown",
    "no_exact_input": "no float32 input makes chromadb return this cosine vector exactly",
}
CANNOT = (
    "collections or segments table unusable",
    "cannot list the collections",
    "chroma.sqlite3 cannot be opened",
    "schema is unreadable",
)


class RollForwardRefused(ChromasnapError):
    """Roll-forward would be wrong or unsafe (the kept directory is not a later state of
    the database, its records cannot be listed): nothing was changed."""


class CollectionReport(BaseModel):
    """What roll-forward did to one collection (by name)."""

    name: str
    status: str = "unchanged"
    """unchanged, changed, created, recreated (space or dimension changed), dropped, skipped"""
    from_snapshot: int = 0
    """Records the restored database held."""
    added: int = 0
    changed: int = 0
    deleted: int = 0
    from_queue: int = 0
    from_hnsw: int = 0
    lost: int = 0
    lost_by_reason: dict[str, int] = {}
    problems: list[str] = []


class RollForwardReport(BaseModel):
    """The result of a roll-forward: per collection, where each vector came from, what is
    lost; `checked` records read back equal to their source before the swap."""

    db: str
    kept: str
    applied: bool = False
    """The database was changed (False: nothing to roll forward)."""
    pre_snapshot: str | None = None
    collections: list[CollectionReport] = []
    checked: int = 0
    lost: int = 0
    lost_export: str | None = None
    """JSON Lines of the lost records, next to the kept directory."""
    problems: list[str] = []
    finished: str | None = None
    """Set when this run finished (or undid) a roll-forward a crash interrupted."""
    duration_s: float = 0.0
    timings: dict[str, float] = {}
    """Seconds per step: read (both databases; the chromadb child starts alongside), plan,
    snapshot (the private copy made alongside), copy (what the copy took past the
    snapshot), apply (the chromadb child, read-back included; `apply_import`, `apply_open`,
    `apply_add`, ...: the child's own, its import done during the read), fsync, swap."""

    def totals(self) -> dict[str, int]:
        keys = ("from_snapshot", "added", "changed", "deleted", "from_queue", "from_hnsw", "lost")
        return {k: sum(int(getattr(c, k)) for c in self.collections) for k in keys}


# --- plan ----------------------------------------------------------------------------------


@dataclass
class _Job:
    name: str
    space: str
    deletes: list[str] = field(default_factory=list)
    adds: list[RecordSalvage] = field(default_factory=list)
    inputs: list[bytes] = field(default_factory=list)


@dataclass
class Plan:
    drop: list[str] = field(default_factory=list)
    create: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[_Job] = field(default_factory=list)
    lost: list[dict[str, Any]] = field(default_factory=list)
    report: list[CollectionReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.drop or self.create or any(j.deletes or j.adds for j in self.jobs))


def _high_water(sqlite_copy: Path) -> int:
    """The highest write-ahead seq_id the database shows (0 when none can be read)."""
    from . import salvage_sqlite

    best = 0
    db = salvage_sqlite.connect(sqlite_copy)
    try:
        for sql in (
            "SELECT seq_id FROM max_seq_id",
            "SELECT max(seq_id) FROM embeddings",
            "SELECT max(seq_id) FROM embeddings_queue",
        ):
            try:
                for (value,) in db.execute(sql):
                    if value is not None:
                        best = max(best, salvage_sqlite.seq(value))
            except Exception:  # a damaged table just tells nothing
                continue
    finally:
        db.close()
    return best


def _configs(sqlite_copy: Path) -> dict[str, Any]:
    """Each collection's index configuration as the kept database recorded it."""
    from . import salvage_sqlite

    out: dict[str, Any] = {}
    db = salvage_sqlite.connect(sqlite_copy)
    try:
        for name, raw in db.execute("SELECT name, config_json_str FROM collections"):
            try:
                out[str(name)] = json.loads(raw) if raw else None
            except ValueError:
                out[str(name)] = None
    except Exception:  # no configuration: metadata alone decides
        pass
    finally:
        db.close()
    return out


def _same(a: RecordSalvage, b: RecordSalvage) -> bool:
    """The same version of a record: same seq_id (both databases share the history up to
    the snapshot, so neither's content is read: `read_both`), or the same document,
    metadata and returned embedding."""
    if a.seq_id == b.seq_id:
        return True
    if a.document != b.document or (a.metadata or None) != (b.metadata or None):
        return False
    return a.embedding is not None and a.embedding == b.embedding


def _unreadable(cs: CollectionSalvage) -> str | None:
    if cs.records is None:
        return "; ".join(cs.problems) or "its records cannot be listed"
    return None


def _meta_known(cs: CollectionSalvage) -> bool:
    return not any(p.startswith("embedding_metadata unusable") for p in cs.problems)


def make_plan(live: Salvage, kept: Salvage, live_hw: int, kept_hw: int, configs: dict[str, Any]) -> Plan:
    """What to apply to the restored database (`live`) to reach the kept one; raises
    RollForwardRefused when the kept database is not a later state of it."""
    whole = [p for p in kept.problems if p.startswith(CANNOT) or any(c in p for c in CANNOT)]
    if kept.health.schema_error or whole:
        raise RollForwardRefused(f"the kept chroma.sqlite3 cannot list its collections: {(whole or [''])[0]}")
    live_ids = {c.info.id for c in live.collections}
    if live_ids and not live_ids & {c.info.id for c in kept.collections}:
        raise RollForwardRefused(
            "the kept directory is not a later state of the database: they share no collection"
        )
    plan = Plan(problems=[f"kept: {p}" for p in kept.problems])
    live_by_name = {c.info.name: c for c in live.collections}
    kept_names = {c.info.name for c in kept.collections}
    older_versions = 0
    for kc in kept.collections:
        name = kc.info.name
        lc = live_by_name.get(name)
        rep = CollectionReport(name=name, problems=list(kc.problems))
        plan.report.append(rep)
        why = _unreadable(kc)
        if why is not None:
            rep.status = "skipped"
            rep.problems.append("not rolled forward: its records cannot be listed in the kept database")
            if lc is not None:
                rep.from_snapshot = len(lc.records or [])
            continue
        if lc is not None and lc.records is None:
            rep.status = "skipped"
            rep.problems.append("not rolled forward: the restored database's records cannot be listed")
            continue
        dims = (lc.info.dimension, kc.info.dimension) if lc is not None else (None, None)
        recreate = lc is not None and (
            lc.info.space != kc.info.space or (None not in dims and dims[0] != dims[1])
        )
        base: dict[str, RecordSalvage] = {}
        if lc is not None:
            rep.from_snapshot = len(lc.records or [])
            if not recreate:
                base = {r.id: r for r in lc.records or []}
        if lc is None or recreate:
            rep.status = "recreated" if recreate else "created"
            if recreate:
                plan.drop.append(name)
            plan.create.append(
                {"name": name, "metadata": kc.info.metadata, "configuration": configs.get(name)}
            )
        if lc is not None and not recreate and (lc.info.metadata or None) != (kc.info.metadata or None):
            rep.problems.append("its own metadata changed since the snapshot: not rolled forward")
        job = _Job(name, kc.info.space)
        known = _meta_known(kc)
        for rec in kc.records or []:
            old = base.get(rec.id)
            if old is not None and _same(old, rec):
                continue
            if old is not None and rec.seq_id < old.seq_id:
                older_versions += 1
            reason = rec.reason if rec.source is None else None if known else "metadata_unreadable"
            if reason is not None:
                plan.lost.append(_lost_line(name, rec, reason, old is not None))
                rep.lost += 1
                rep.lost_by_reason[reason] = rep.lost_by_reason.get(reason, 0) + 1
                continue
            if old is not None:
                job.deletes.append(rec.id)
                rep.changed += 1
            else:
                rep.added += 1
            job.adds.append(rec)
        if known or not base:
            present = {r.id for r in kc.records or []}
            gone = [rid for rid in base if rid not in present]
            job.deletes += gone
            rep.deleted = len(gone)
        _inputs(job, plan, rep)
        if job.adds or job.deletes:
            plan.jobs.append(job)
            if rep.status == "unchanged":
                rep.status = "changed"
    for lc in live.collections:
        if lc.info.name not in kept_names:
            plan.drop.append(lc.info.name)
            plan.report.append(
                CollectionReport(name=lc.info.name, status="dropped", from_snapshot=len(lc.records or []))
            )
    if not plan.empty and (kept_hw < live_hw or older_versions):
        what = (
            f"{older_versions} records there are older versions of the database's"
            if older_versions
            else f"its last change (seq_id {kept_hw}) precedes the database's ({live_hw})"
        )
        raise RollForwardRefused(
            f"the kept directory is not a later state of the database: {what}; nothing was changed"
        )
    return plan


def _inputs(job: _Job, plan: Plan, rep: CollectionReport) -> None:
    """The vector to add for each record, so that chromadb returns exactly its embedding:
    the queue's raw input; from the HNSW, l2/ip as is and cosine solved (`exact_inputs`)."""
    import numpy as np

    from .collection_child import exact_inputs, readback
    from .salvage import QUEUE

    keep: list[RecordSalvage] = []
    inputs: list[bytes] = []
    solve = [r for r in job.adds if r.source != QUEUE and job.space == "cosine"]
    solved: dict[str, bytes] = {}
    if solve:
        target = np.stack([np.frombuffer(r.embedding or b"", dtype="<f4") for r in solve]).astype(np.float32)
        got = exact_inputs(target)
        ok = (readback(got) == target).all(axis=1)
        for r, row, good in zip(solve, got, ok, strict=True):
            if good:
                solved[r.id] = row.astype("<f4").tobytes()
    for r in job.adds:
        if r.source == QUEUE:
            inputs.append(r.raw or b"")
            rep.from_queue += 1
        elif job.space != "cosine":
            inputs.append(r.embedding or b"")
            rep.from_hnsw += 1
        elif r.id in solved:
            inputs.append(solved[r.id])
            rep.from_hnsw += 1
        else:
            plan.lost.append(_lost_line(job.name, r, "no_exact_input", r.id in job.deletes))
            rep.lost += 1
            rep.lost_by_reason["no_exact_input"] = rep.lost_by_reason.get("no_exact_input", 0) + 1
            if r.id in job.deletes:  # keep the restored version rather than nothing
                job.deletes.remove(r.id)
                rep.changed -= 1
            else:
                rep.added -= 1
            continue
        keep.append(r)
    job.adds, job.inputs = keep, inputs


def _lost_line(collection: str, rec: RecordSalvage, reason: str, in_restored: bool) -> dict[str, Any]:
    from .salvage import LOST_REASONS

    return {
        "collection": collection,
        "id": rec.id,
        "reason": reason,
        "detail": LOST_REASONS.get(reason) or EXTRA_REASONS.get(reason, ""),
        "in_restored": in_restored,
        "document": rec.document,
        "metadata": rec.metadata,
        "uri": rec.uri,
        "seq_id": rec.seq_id,
    }


def read_both(db: Path, kept: Path, work: Path) -> tuple[Salvage, Salvage, int, int, dict[str, Any]]:
    """Both databases as salvage sees them, their high-water seq_ids, the kept
    configurations. A record whose seq_id is the same in both is the same version
    (`_same`): only its id and seq_id are read, in either database. The kept
    directory's other records are read whole (content, vector); the restored
    database's content only for records of both with another seq_id, and its vectors
    only when such a record's version cannot be told by its content (`_needs_vectors`).
    Its labels complete a damaged label map of the kept directory (`older_labels`), read
    only when there is one."""
    from .salvage import older_labels, salvage

    live_copy, kept_copy = work / "live.sqlite3", work / "kept.sqlite3"
    live_health, kept_health = _in_pairs(
        lambda: _copy_and_check(db, live_copy), lambda: _copy_and_check(kept, kept_copy)
    )
    live = records_only(live_copy, lambda _r: False, health=live_health)
    known = {c.info.id: {r.id: r.seq_id for r in c.records or []} for c in live.collections}
    kept_s = salvage(kept, kept_copy, known=known, health=kept_health)
    if any(c.segment is not None and not c.segment.labels.complete for c in kept_s.collections):
        kept_s = salvage(kept, kept_copy, older_labels(db, live_copy), known, kept_health)
    compare = _compared(live, kept_s)
    if any(compare.values()):
        live = records_only(live_copy, only=compare, health=live.health)
    if _needs_vectors(live, kept_s):
        live = salvage(db, live_copy)
    return live, kept_s, _high_water(live_copy), _high_water(kept_copy), _configs(kept_copy)


T = TypeVar("T")
U = TypeVar("U")


def _in_pairs(first: Callable[[], T], second: Callable[[], U]) -> tuple[T, U]:
    """Run two calls at once (each copy is made by a child and checked by SQLite, which
    releases the GIL), then return both results or raise the first error."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(first), pool.submit(second)
        return a.result(), b.result()


def _copy_and_check(db_dir: Path, copy: Path) -> TableHealth | None:
    """A private copy of the database's chroma.sqlite3 (hot journal rolled back in it) and
    SQLite's check of its tables."""
    from .salvage import copy_sqlite
    from .salvage_sqlite import check_file

    copy_sqlite(db_dir, copy)
    return check_file(copy)


def _compared(live: Salvage, kept: Salvage) -> dict[str, set[str]]:
    """Per collection of the restored database (by id), the records the kept database
    (the collection of the same name) holds with another seq_id: their versions are
    compared by content."""
    by_name = {c.info.name: c for c in kept.collections}
    out: dict[str, set[str]] = {}
    for lc in live.collections:
        kc = by_name.get(lc.info.name)
        if kc is None or kc.records is None or lc.records is None:
            continue
        theirs = {r.id: r.seq_id for r in kc.records}
        out[lc.info.id] = {r.id for r in lc.records if theirs.get(r.id, r.seq_id) != r.seq_id}
    return out


def records_only(
    sqlite_copy: Path,
    content: Callable[[RecordRow], bool] | None = None,
    only: dict[str, set[str]] | None = None,
    health: TableHealth | None = None,
) -> Salvage:
    """Every record of a database (id, seq_id, document, metadata), without vectors;
    with `content`, documents and metadata only of the records it accepts; with `only`
    (collection id -> record ids), only of those. `health`: the file's table check, when
    it was made already."""
    import sqlite3

    from . import salvage_sqlite
    from .salvage import CollectionSalvage, RecordSalvage, Salvage

    try:
        con = salvage_sqlite.connect(sqlite_copy)
    except sqlite3.Error as exc:
        out = Salvage(salvage_sqlite.TableHealth(schema_error=str(exc)))
        out.problems.append(f"chroma.sqlite3 cannot be opened: {exc}")
        return out
    try:
        out = Salvage(health or salvage_sqlite.check_tables(con))
        if out.health.schema_error:
            out.problems.append(f"chroma.sqlite3's schema is unreadable: {out.health.schema_error}")
            return out
        colls, out.problems = salvage_sqlite.read_collections(con, out.health)
        for info in colls:
            cs = CollectionSalvage(info)
            pick = content
            if only is not None:
                ids = only.get(info.id, set())

                def pick(r: RecordRow, ids: set[str] = ids) -> bool:
                    return r.id in ids

            recs, cs.problems = salvage_sqlite.read_records(con, info, out.health, pick)
            if recs is not None:
                cs.records = [RecordSalvage(r.id, r.seq_id, r.document, r.metadata, r.uri) for r in recs]
            out.collections.append(cs)
    finally:
        con.close()
    return out


def _needs_vectors(live: Salvage, kept: Salvage) -> bool:
    """A record of both with another seq_id but the same document and metadata: only its
    embedding tells whether it changed (a vector-only update, or a roll-forward's own)."""
    by_name = {c.info.name: c for c in live.collections}
    for kc in kept.collections:
        lc = by_name.get(kc.info.name)
        if lc is None or lc.records is None or kc.records is None:
            continue
        old = {r.id: r for r in lc.records}
        for rec in kc.records:
            o = old.get(rec.id)
            if (
                o is not None
                and o.seq_id != rec.seq_id
                and o.document == rec.document
                and (o.metadata or None) == (rec.metadata or None)
            ):
                return True
    return False


# --- journal -------------------------------------------------------------------------------


def journal_path(db: Path) -> Path:
    """Where a roll-forward of `db` records what it is doing (beside it; inside a mount point)."""
    if swap.is_mount_point(db):
        return db / f"{swap.OWN_PREFIX}rollforward.json"
    return db.parent / f".{db.name}.chromasnap-rollforward.json"


def _staging_ok(db: Path, staging: Path) -> bool:
    pattern = re.compile(
        r"(\.chromasnap-rollforward-|\." + re.escape(db.name) + r"\.rollforward-)[0-9a-f]{8}"
    )
    return staging.parent in (db, db.parent) and bool(pattern.fullmatch(staging.name))


def read_journal(db: Path) -> dict[str, Any] | None:
    """This database's roll-forward journal if one is there and is its own (paths checked:
    a journal is acted on only when it names this database and a staging folder beside it)."""
    path = journal_path(db)
    try:
        raw = path.read_bytes()[:65536]
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        rec = json.loads(raw)
    except ValueError:
        return {"invalid": "not JSON"}
    if (
        not isinstance(rec, dict)
        or rec.get("version") != JOURNAL_VERSION
        or rec.get("db") != str(db)
        or not isinstance(rec.get("kept"), str)
        or not isinstance(rec.get("staging"), str)
        or type(rec.get("pid")) is not int
        or not _staging_ok(db, Path(rec["staging"]))
    ):
        return {"invalid": "not this database's own"}
    return rec


def _drop_journal(db: Path) -> None:
    path = journal_path(db)
    path.unlink(missing_ok=True)
    fsutil.fsync_dir(path.parent)


# --- apply ---------------------------------------------------------------------------------


def _fsync_tree(root: Path) -> None:
    for top, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(top, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsutil.fsync_dir(Path(top))


def _copy_modes(src: Path, dst: Path) -> None:
    """Give the private copy the database's modes (copy_database makes them private)."""
    for top, dirs, files in os.walk(dst):
        rel = os.path.relpath(top, dst)
        for name in [".", *dirs, *files]:
            s, d = os.path.join(src, rel, name), os.path.join(top, name)
            try:
                st = os.lstat(s)
            except FileNotFoundError:
                continue
            if not os.path.islink(d):
                os.chmod(d, st.st_mode & 0o7777)


def _write_plan(plan: Plan, folder: Path) -> None:
    jobs = []
    for k, job in enumerate(plan.jobs):
        name = f"records-{k}.jsonl" if job.adds else None
        if name:
            with open(folder / name, "w", encoding="utf-8") as fh:
                for rec, inp in zip(job.adds, job.inputs, strict=True):
                    line = {
                        "id": rec.id,
                        "document": rec.document,
                        "metadata": rec.metadata,
                        "input": base64.b64encode(inp).decode(),
                        "expect": base64.b64encode(rec.embedding or b"").decode(),
                    }
                    fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        jobs.append({"name": job.name, "delete": job.deletes, "records": name})
    doc = {"drop": plan.drop, "create": plan.create, "collections": jobs}
    (folder / "plan.json").write_text(json.dumps(doc, default=str), encoding="utf-8")


class _Child:
    """The chromadb child (`rollforward_child.py --wait`), started before anything is
    read so that its start (the interpreter, numpy, chromadb's import) overlaps reading
    both databases. It touches no file until `apply` hands it the staging copy and the
    plan on its stdin; closed unused (its stdin's end tells it to exit), and killed with
    chromasnap (`children.spawn`)."""

    def __init__(self, python: str | None) -> None:
        from . import children

        self.proc = children.spawn([python or sys.executable, str(CHILD), "--wait"], stdin=subprocess.PIPE)

    def apply(self, staging: Path, folder: Path, timeout: float | None) -> dict[str, Any]:
        """Have the child apply the plan in `folder` to `staging`; its JSON report.
        Raises ChromasnapError (one line) when it fails, dies or runs out of time."""
        from . import children

        go = json.dumps({"db": str(staging), "plan": str(folder)}) + "\n"
        try:
            out, err = self.proc.communicate(go, timeout=timeout or 3600)
        except subprocess.TimeoutExpired:
            children.kill_group(self.proc)
            self.proc.communicate()
            within = f"no answer within {timeout or 3600:g} s"
            raise ChromasnapError(f"roll-forward failed in chromadb, nothing was changed: {within}") from None
        lines = [ln[len(MARK) :] for ln in out.splitlines() if ln.startswith(MARK)]
        report: dict[str, Any] = json.loads(lines[-1]) if lines else {}
        code = self.proc.returncode
        if code != 0 or "error" in report or not lines:
            died = children.signal_name(code)
            why = report.get("error") or (f"the chromadb child died by {died}" if died else "")
            why = why or err.strip()[-300:] or f"exit {code}"
            raise ChromasnapError(f"roll-forward failed in chromadb, nothing was changed: {why}")
        return report

    def close(self) -> None:
        """End the child if it is still there (nothing to apply, or a failure)."""
        from . import children

        if self.proc.returncode is not None and self.proc.stdout is not None and self.proc.stdout.closed:
            return  # `apply` saw it to its end
        if self.proc.poll() is None:
            children.kill_group(self.proc)
        with contextlib.suppress(Exception):
            self.proc.communicate(timeout=60)


def export_path(kept: Path) -> Path:
    return kept.parent / f"{kept.name}.lost.jsonl"


def _export(lost: list[dict[str, Any]], kept: Path) -> str | None:
    if not lost:
        return None
    path = export_path(kept)
    data = "".join(json.dumps(line, ensure_ascii=False, default=str) + "\n" for line in lost)
    fsutil.atomic_write(path, data.encode(), mode=0o600)
    return str(path)


def roll_forward(
    mgr: SnapshotManager,
    kept: str | os.PathLike[str],
    python: str | None = None,
    timeout: float | None = None,
) -> RollForwardReport:
    """Apply to the database what the kept directory holds past it (see the module
    docstring). Takes the database write lock unless this manager holds it already."""
    import contextlib

    db = swap.real_db(mgr._need_db())
    with contextlib.ExitStack() as stack:
        if not mgr._holding_write_lock:
            stack.enter_context(mgr._write_lock())
        return _roll_forward(mgr, db, Path(os.path.abspath(kept)), python, timeout)


def _work_prefix(db: Path, mount: bool) -> str:
    return f"{swap.OWN_PREFIX}rollforward-work-" if mount else f".{db.name}.rollforward-work-"


def _remove_leftovers(db: Path, mount: bool) -> None:
    """What a killed roll-forward of this database left (its private SQLite copies, a
    staging copy): none of it is in use, as this process holds the database write lock."""
    folder = db if mount else db.parent
    staging = re.compile(
        re.escape(f"{swap.OWN_PREFIX}rollforward-" if mount else f".{db.name}.rollforward-") + "[0-9a-f]{8}"
    )
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False) and (
            entry.name.startswith(_work_prefix(db, mount)) or staging.fullmatch(entry.name)
        ):
            shutil.rmtree(entry.path, ignore_errors=True)


def _check_dirs(db: Path, kept: Path) -> None:
    if kept.is_symlink() or not kept.is_dir():
        raise UsageError(f"{kept} is not a directory")
    if not (kept / "chroma.sqlite3").is_file():
        raise UsageError(f"{kept} holds no chroma.sqlite3: not a Chroma database directory")
    if swap.real_db(kept) == db:
        raise UsageError(f"{kept} is the database itself; give the replaced directory (chromasnap kept)")
    if not (db / "chroma.sqlite3").is_file():
        raise UsageError(f"database {db} holds no chroma.sqlite3: restore a snapshot first")


def _roll_forward(
    mgr: SnapshotManager, db: Path, kept: Path, python: str | None, timeout: float | None
) -> RollForwardReport:
    from concurrent.futures import ThreadPoolExecutor

    from .livecopy import copy_database
    from .owner import apply as apply_owner
    from .owner import target_owner
    from .restore import refuse_if_held

    t0 = time.monotonic()
    _check_dirs(db, kept)
    swap.finish_interrupted(db)
    refuse_if_held(db)
    mount = swap.is_mount_point(db)
    _remove_leftovers(db, mount)
    work = Path(tempfile.mkdtemp(prefix=_work_prefix(db, mount), dir=db if mount else db.parent))
    token = os.urandom(4).hex()
    staging = (
        db / f"{swap.OWN_PREFIX}rollforward-{token}"
        if mount
        else db.parent / f".{db.name}.rollforward-{token}"
    )
    report = RollForwardReport(db=str(db), kept=str(kept))
    journal = journal_path(db)
    child: _Child | None = None
    mark = [time.monotonic()]

    def lap(step: str) -> None:
        now = time.monotonic()
        report.timings[step] = round(now - mark[0], 3)
        mark[0] = now

    try:
        child = _Child(python)  # chromadb's start overlaps the read
        live, kept_s, live_hw, kept_hw, configs = read_both(db, kept, work)
        lap("read")
        plan = make_plan(live, kept_s, live_hw, kept_hw, configs)
        report.collections, report.problems = plan.report, plan.problems
        report.lost = len(plan.lost)
        report.lost_export = _export(plan.lost, kept)
        lap("plan")
        if plan.empty:
            if journal.exists():
                _drop_journal(db)
            report.duration_s = round(time.monotonic() - t0, 3)
            return report
        record = {
            "version": JOURNAL_VERSION,
            "db": str(db),
            "kept": str(kept),
            "staging": str(staging),
            "pid": os.getpid(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        fsutil.atomic_write(journal, json.dumps(record).encode())
        fsutil.crash_point("rollforward-journal")

        def make_staging() -> None:
            copy_database(db, staging)
            _copy_modes(db, staging)
            who = target_owner(db, None)
            if who is not None:
                problem = apply_owner(staging, who, db, include_root=True)
                if problem:
                    report.problems.append(problem)
            _write_plan(plan, work)

        # the private copy is made (by a thread: a child and copy_file_range) while the
        # pre-roll-forward snapshot reads the same unchanging database (the write lock is
        # held); both must be done before the child changes anything
        with ThreadPoolExecutor(1) as pool:
            copying = pool.submit(make_staging)
            report.pre_snapshot = mgr.snapshot(
                reason="pre-roll-forward", note=f"before rolling forward from {kept.name}"
            ).id
            fsutil.crash_point("rollforward-snapshot")
            lap("snapshot")
            copying.result()
        lap("copy")
        got = child.apply(staging, work, timeout)
        report.checked = int(got.get("checked", 0))
        lap("apply")
        for step, took in (got.get("timings") or {}).items():
            report.timings[f"apply_{step}"] = float(took)
        _fsync_tree(staging)
        lap("fsync")
        fsutil.crash_point("rollforward-applied")
        refuse_if_held(db)
        done = swap.swap_in(db, staging, mount)
        fsutil.crash_point("rollforward-swapped")
        if done.kept is not None:  # the restored database: its copy is the pre-roll-forward snapshot
            shutil.rmtree(done.kept, ignore_errors=True)
        _drop_journal(db)
        lap("swap")
        report.applied = True
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if journal.exists() and not staging.exists():
            with_journal = read_journal(db)
            if with_journal and with_journal.get("pid") == os.getpid():
                _drop_journal(db)
        raise
    finally:
        if child is not None:
            child.close()
        shutil.rmtree(work, ignore_errors=True)
    report.duration_s = round(time.monotonic() - t0, 3)
    return report


def finish_interrupted(
    mgr: SnapshotManager, roll: bool, python: str | None, timeout: float | None
) -> RollForwardReport | str | None:
    """A roll-forward a crash interrupted: its staging copy removed, and then run again
    (with `roll`: it applies what is left, idempotently) or dropped (the database is the
    restored one, or the rolled-forward one if the swap was done). Returns the report or
    a line, None when there was nothing to finish."""
    from .guard import alive

    db = swap.real_db(mgr._need_db())
    rec = read_journal(db)
    if rec is None:
        return None
    if "invalid" in rec:
        return f"ignored the roll-forward journal {journal_path(db)}: {rec['invalid']}"
    if alive(int(rec["pid"]), None) and rec["pid"] != os.getpid():
        return f"a roll-forward by pid {rec['pid']} is running; left alone"
    shutil.rmtree(rec["staging"], ignore_errors=True)
    kept = Path(rec["kept"])
    if not roll or not kept.is_dir():
        _drop_journal(db)
        why = "not asked to roll forward" if not roll else f"{kept} is gone"
        return f"dropped an interrupted roll-forward from {kept} ({why}); the database was not changed by it"
    report = roll_forward(mgr, kept, python, timeout)
    report.finished = f"finished an interrupted roll-forward from {kept}"
    return report


def interrupted_writes(mgr: SnapshotManager) -> set[str]:
    """The pre-write snapshots of guarded writes whose process died (read before recover
    clears their intents): restoring one rolls the write back, and rolling forward from
    the database it replaced would redo that write."""
    from .guard import read_intents

    if not mgr.local.exists():  # intents live beside the database when the store is remote
        return set()
    return {i.snapshot for i in read_intents(mgr.local, []) if i.snapshot and i.dead}


def after_recover(
    mgr: SnapshotManager,
    result: RecoverResult,
    roll: bool,
    python: str | None,
    timeout: float | None,
    rolled_back: set[str] | frozenset[str] = frozenset(),
) -> RecoverResult:
    """recover's hook: finish an interrupted roll-forward; after a restore of a broken
    database, roll forward from the replaced one (unless not `roll`, or the snapshot
    restored is the pre-write snapshot of an interrupted guarded write in `rolled_back`:
    that restore is the write's rollback). A roll-forward that cannot be done is a
    warning: the restored database stays."""
    if result.action == "failed":
        return result
    try:
        got = finish_interrupted(mgr, roll, python, timeout)
    except Exception as exc:  # never fails recover: the database stays as recover left it
        result.warnings.append(f"an interrupted roll-forward was not finished: {_line(exc)}")
        got = None
    if isinstance(got, str):
        result.warnings.append(got)
    elif got is not None:
        result.roll_forward = got.model_dump()
    if result.kind != "restored" or not result.kept_path or not roll:
        return result
    if result.snapshot in rolled_back:
        result.warnings.append(
            "not rolled forward: the snapshot restored is an interrupted guarded write's pre-write "
            f"snapshot, so the write is rolled back (recover --keep-interrupted, or roll-forward "
            f"--from {result.kept_path}, keeps what it wrote)"
        )
        return result
    try:
        report = roll_forward(mgr, result.kept_path, python, timeout)
    except Exception as exc:  # never fails recover: the restored database stays
        result.warnings.append(f"roll-forward from {result.kept_path} not done: {_line(exc)}")
        return result
    result.roll_forward = report.model_dump()
    return result


def _line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    if isinstance(exc, ChromasnapError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:500]


# --- text ----------------------------------------------------------------------------------


def describe(report: RollForwardReport | dict[str, Any]) -> str:
    """One line for a roll-forward (recover prints it)."""
    r = report if isinstance(report, RollForwardReport) else RollForwardReport.model_validate(report)
    t = r.totals()
    head = f"{r.finished}; " if r.finished else ""
    if not r.applied:
        lost = f"; {r.lost} records lost, listed in {r.lost_export}" if r.lost else ""
        return f"{head}rolled forward: nothing to apply from {r.kept}{lost}"
    lost = f"; {r.lost} lost (listed in {r.lost_export})" if r.lost else ""
    return (
        f"{head}rolled forward from {r.kept}: {t['added']} added, {t['changed']} changed, "
        f"{t['deleted']} deleted; vectors {t['from_queue']} from the queue, {t['from_hnsw']} from HNSW"
        f"{lost}; {r.checked} read back exact; pre-roll-forward snapshot {(r.pre_snapshot or '')[:12]}"
    )


def table(report: RollForwardReport) -> list[list[str]]:
    """Rows (header first) of the per-collection table."""
    rows = [["collection", "status", "snapshot", "added", "changed", "deleted", "queue", "hnsw", "lost"]]
    for c in report.collections:
        rows.append(
            [
                c.name,
                c.status,
                *(
                    str(v)
                    for v in (
                        c.from_snapshot,
                        c.added,
                        c.changed,
                        c.deleted,
                        c.from_queue,
                        c.from_hnsw,
                        c.lost,
                    )
                ),
            ]
        )
    return rows
