"""Copy a live chroma.sqlite3 consistently, from a child process of its own.

Run as `python sqlite_copy.py LIVE DEST`; prints one JSON line. It imports only the
standard library. Why a child: SQLite's locks are POSIX advisory locks, which belong to
the process and are all dropped when *any* descriptor of the file is closed in that
process. Opening chroma.sqlite3 in the parent (to read it, or even with Python's own
sqlite3 module, a different SQLite library than chromadb's) could silently release the
locks of a Chroma client running in the same process. So the parent never opens the live
file; this child takes SQLite's SHARED lock, copies the bytes while no writer can change
them, and exits.

Rollback-journal mode: byte-for-byte copy under the lock. WAL mode: SQLite's online
backup API. A hot journal (left by a writer that died): the journal and the file are
copied to a private folder, SQLite rolls the journal back there, and the result is the
copy; the live files are not touched.

With `--records OUT` it then writes the record index rows of the copy to OUT (see
`write_records`) while the parent is still reading the segment folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path


def _header(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(100)


def _stat(path: Path) -> dict[str, int]:
    st = os.lstat(path)
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
        "mode": st.st_mode & 0o7777,
    }


def _locked() -> None:
    """Tell the parent the database state is now fixed: it may read the other files
    while this process copies (anything it reads is newer than this state)."""
    sys.stdout.write(LOCKED + "\n")
    sys.stdout.flush()


LOCKED = "LOCKED"


def copy(live: Path, dest: Path) -> dict[str, object]:
    header = _header(live)
    wal = len(header) >= 20 and header[:16] == b"SQLite format 3\x00" and header[18] == 2
    journal = live.with_name(live.name + "-journal")
    out: dict[str, object] = {"journal_mode": "wal" if wal else "delete", "hot_journal": False}
    if wal:
        try:
            src = sqlite3.connect(f"file:{live}?mode=ro", uri=True, timeout=60)
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            src = sqlite3.connect(str(live), timeout=60)
        out["stat"] = _stat(live)
        _locked()
        dst = sqlite3.connect(str(dest))
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
            src.close()
        out["how"] = "sqlite-backup-api"
    else:
        db = sqlite3.connect(f"file:{live}?mode=ro", uri=True, timeout=60, isolation_level=None)
        try:
            db.execute("BEGIN")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # SHARED: writers wait
            out["stat"] = _stat(live)
            _locked()
            shutil.copyfile(live, dest)  # sendfile: the kernel copies
            db.execute("COMMIT")
            out["how"] = "sqlite-shared-lock"
        except sqlite3.OperationalError as exc:
            if not (journal.exists() and "readonly" in str(exc).lower()):
                raise
            out["stat"] = _stat(live)
            _locked()
            work = dest.with_name(dest.name + ".hot")
            work.mkdir(mode=0o700)
            try:
                # journal first: replaying saved original pages onto a file that someone
                # rolled back meanwhile gives the same result
                shutil.copyfile(journal, work / journal.name)
                shutil.copyfile(live, work / live.name)
                con = sqlite3.connect(str(work / live.name))
                con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # rolls back
                con.close()
                os.replace(work / live.name, dest)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            out["hot_journal"] = True
            out["how"] = "sqlite-shared-lock"
        finally:
            db.close()
    out["journal_present"] = journal.exists()
    out["change_counter"] = int.from_bytes(_header(dest)[24:28], "big")
    return out


CHUNK_AVERAGE = 128
"""Records per record-index chunk on average: a chunk ends after a record whose id hashes
to 0 modulo this, so boundaries depend on ids alone and an insertion changes one chunk."""
DOCUMENT_KEY = "chroma:document"


def _h(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def ends_chunk(record_id: str) -> bool:
    digest = hashlib.blake2b(record_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % CHUNK_AVERAGE == 0


def _seq(value: object) -> int:
    """seq_id was a big-endian BLOB in old schemas and is an INTEGER now."""
    if isinstance(value, bytes):
        return int.from_bytes(value, "big")
    return int(value)  # type: ignore[call-overload,no-any-return]


def _records(db: sqlite3.Connection, seg: str, arrays: bool) -> Iterator[list[object]]:
    """[id, seq_id, document hash or None, metadata hash] of a METADATA segment, by id."""
    extra: dict[int, list[tuple[object, ...]]] = {}
    if arrays:
        for row in db.execute(
            "SELECT a.id, a.key, a.string_value, a.int_value, a.float_value, a.bool_value "
            "FROM embedding_metadata_array a JOIN embeddings e ON e.id = a.id "
            "WHERE e.segment_id = ? ORDER BY a.id, a.key, a.rowid",
            (seg,),
        ):
            extra.setdefault(row[0], []).append(("[]", *row[1:]))
    cur: int | None = None
    rec: list[object] = []
    meta: list[tuple[object, ...]] = []
    for eid, embedding_id, seq_id, key, sv, iv, fv, bv in db.execute(
        "SELECT e.id, e.embedding_id, e.seq_id, m.key, m.string_value, m.int_value, "
        "m.float_value, m.bool_value FROM embeddings e "
        "LEFT JOIN embedding_metadata m ON m.id = e.id "
        "WHERE e.segment_id = ? ORDER BY e.embedding_id, m.key",
        (seg,),
    ):
        if eid != cur:
            if cur is not None:
                meta.extend(extra.get(cur, ()))
                yield [*rec, _h(repr(meta).encode())]
            cur, rec, meta = eid, [str(embedding_id), _seq(seq_id), None], []
        if key == DOCUMENT_KEY:
            rec[2] = _h(str(sv).encode()) if sv is not None else None
        elif key is not None:
            meta.append((key, sv, iv, fv, bv))
    if cur is not None:
        meta.extend(extra.get(cur, ()))
        yield [*rec, _h(repr(meta).encode())]


def write_records(sqlite_path: Path, out: Path) -> int:
    """Write every record of a quiescent chroma.sqlite3 as record-index lines; returns
    how many. Per collection a line `C<TAB>[id, name]`, then its records sorted by id in
    chunks, a line each: `K<TAB>json(first id)<TAB>count<TAB>json([[id, seq_id, document
    hash|null, metadata hash], ...])`. The hashes are 8-byte BLAKE2b of the document and of
    the metadata rows (key order, exact values), so a diff can say what changed."""
    db = sqlite3.connect(f"file:{sqlite_path}?mode=ro&immutable=1", uri=True)
    total = 0
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        needed = {"collections", "segments", "embeddings", "embedding_metadata"}
        colls = (
            db.execute(
                "SELECT c.id, c.name, s.id FROM collections c JOIN segments s "
                "ON s.collection = c.id AND s.scope = 'METADATA' ORDER BY c.name"
            ).fetchall()
            if needed <= tables
            else []
        )
        arrays = "embedding_metadata_array" in tables and bool(
            db.execute("SELECT 1 FROM embedding_metadata_array LIMIT 1").fetchone()
        )
        with out.open("w", encoding="utf-8") as fh:

            def flush(chunk: list[list[object]]) -> None:
                if chunk:
                    first = json.dumps(chunk[0][0])
                    body = json.dumps(chunk, separators=(",", ":"))
                    fh.write(f"K\t{first}\t{len(chunk)}\t{body}\n")
                    chunk.clear()

            for cid, name, seg in colls:
                fh.write("C\t" + json.dumps([str(cid), str(name)]) + "\n")
                chunk: list[list[object]] = []
                for rec in _records(db, seg, arrays):
                    chunk.append(rec)
                    total += 1
                    if ends_chunk(str(rec[0])):
                        flush(chunk)
                flush(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        db.close()
    return total


def main() -> int:
    live, dest = Path(sys.argv[1]), Path(sys.argv[2])
    records = Path(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--records" else None
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        for attempt in range(3):
            try:
                result = copy(live, dest)
                break
            except FileNotFoundError as exc:  # a journal that vanished under us: look again
                if attempt == 2 or not str(exc.filename or "").endswith("-journal"):
                    raise
        if records is not None:
            try:
                result["records"] = write_records(dest, records)
            except sqlite3.Error as exc:  # an unreadable schema costs the index, not the snapshot
                records.unlink(missing_ok=True)
                result["records_error"] = f"{type(exc).__name__}: {exc}"
    except (sqlite3.Error, OSError) as exc:
        dest.unlink(missing_ok=True)
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
