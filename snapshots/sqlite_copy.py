"""Copy a live chroma.sqlite3 consistently, from a child process of its own.

Run as `python sqlite_copy.py LIVE DEST`; prints one JSON line. As a child it imports only
the standard library; imported as a module it is also the parent side (`SqliteCopy`, started
through children.py), the one way chromasnap copies a live chroma.sqlite3.

Why a child: SQLite's locks are POSIX advisory locks, which belong to
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

With `--records OUT [--since SEQ]` it then writes the record index rows of the copy to
OUT (see `write_records`) while the parent is still reading the segment folders.

With `--hold` (rollback-journal mode) the read lock is kept after the copy, until the
parent writes a line to stdin (or closes it), or HOLD_MAX seconds have passed: Chroma
saves an HNSW folder only after a write transaction of its own, so while this lock is
held no save can start, and the parent reads the segment folders undisturbed (at most a
save already under way finishes meanwhile; docs/capture.md has the measurements).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__:  # imported by chromasnap (the parent side); the child runs with the stdlib only
    from . import children
    from .errors import CaptureError

HOLD_MAX = 20.0
"""Seconds the read lock is held at most: chromadb's writers wait on it, and give up
after about 30 s (measured with 1.5.9: 12 s of waiting cost nothing)."""


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


def _release_later(db: sqlite3.Connection, src: int) -> threading.Thread:
    """End the read transaction (releasing the lock) when the parent says so on stdin,
    when stdin closes, or after HOLD_MAX seconds; then close the copied file's descriptor
    (closing it earlier would drop the lock: see the module docstring)."""

    def wait() -> None:
        try:
            select.select([sys.stdin], [], [], HOLD_MAX)
        finally:
            try:
                db.execute("COMMIT")
            finally:
                db.close()
                os.close(src)

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    return t


def _copy_fd(src: int, dest: Path) -> None:
    """Copy the whole file behind `src` to `dest` without closing `src` (the kernel copies)."""
    with dest.open("wb") as out:
        size, off = os.fstat(src).st_size, 0
        while off < size:
            n = os.sendfile(out.fileno(), src, off, size - off)
            if n == 0:
                break
            off += n


def copy(live: Path, dest: Path, hold: bool = False) -> dict[str, object]:
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
        db = sqlite3.connect(
            f"file:{live}?mode=ro", uri=True, timeout=60, isolation_level=None, check_same_thread=False
        )
        # one descriptor, opened before the lock and closed after it: closing any descriptor
        # of the file in this process would drop SQLite's lock (POSIX lock semantics)
        fd = os.open(live, os.O_RDONLY)
        held = False
        try:
            db.execute("BEGIN")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # SHARED: writers wait
            out["stat"] = _stat(live)
            _locked()
            _copy_fd(fd, dest)
            if hold:
                out["holder"] = _release_later(db, fd)
                held = True
            else:
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
            if not held:
                db.close()
                os.close(fd)
    out["journal_present"] = journal.exists()
    out["change_counter"] = int.from_bytes(_header(dest)[24:28], "big")
    return out


CHUNK_AVERAGE = 512
"""Records per record-index chunk on average: a chunk ends after a record whose id hashes
to 0 modulo this, so boundaries depend on ids alone and an insertion changes one chunk."""
VERSION_CHUNK = 4096
"""Content hashes per versions chunk."""
DOCUMENT_KEY = "chroma:document"
BATCH = 500


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


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


CHROMA_TABLES = ("collections", "segments", "embeddings", "embedding_metadata")


def check_tables(db: sqlite3.Connection, names: tuple[str, ...] = CHROMA_TABLES) -> None:
    """Refuse (sqlite3.DatabaseError) a database where any of `names` is missing or is not a
    table: a view there could recurse forever, and a database without them is not Chroma's."""
    kinds = {str(n): str(t) for n, t in db.execute("SELECT name, type FROM sqlite_master")}
    for name in names:
        if name not in kinds:
            raise sqlite3.DatabaseError(f"no {name} table: not a Chroma database")
        if kinds[name] != "table":
            raise sqlite3.DatabaseError(f"{name} is a {kinds[name]}, not a table")


def deadline_seconds() -> float:
    """How long one private SQLite read may run: CHROMASNAP_SQLITE_TIMEOUT, default 300 s."""
    try:
        return float(os.environ.get("CHROMASNAP_SQLITE_TIMEOUT", "300"))
    except ValueError:
        return 300.0


def open_private(path: Path, seconds: float | None = None) -> sqlite3.Connection:
    """A read-only connection to a private, quiescent copy of a chroma.sqlite3 whose every
    statement is interrupted (sqlite3.OperationalError "interrupted") once `seconds`
    (default `deadline_seconds()`) have passed since it was opened: a copy from a store
    may hold a crafted view, index or query plan that never ends."""
    import time

    con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    end = time.monotonic() + (deadline_seconds() if seconds is None else seconds)
    con.set_progress_handler(lambda: time.monotonic() > end, 10_000)
    return con


def content_hashes(db: sqlite3.Connection, rowids: list[int]) -> dict[int, tuple[str | None, str]]:
    """(document hash or None, metadata hash) of records by `embeddings` rowid: 8-byte
    BLAKE2b of the document text, and of the repr of the metadata rows in key order
    (exact values), then any array rows."""
    arrays = "embedding_metadata_array" in _tables(db)
    out: dict[int, tuple[str | None, str]] = {}
    for i in range(0, len(rowids), BATCH):
        part = rowids[i : i + BATCH]
        marks = ",".join("?" * len(part))
        rows: dict[int, list[tuple[object, ...]]] = {r: [] for r in part}
        docs: dict[int, str | None] = {}
        for rid, key, sv, iv, fv, bv in db.execute(
            "SELECT id, key, string_value, int_value, float_value, bool_value FROM embedding_metadata "
            f"WHERE id IN ({marks}) ORDER BY id, key",
            part,
        ):
            if key == DOCUMENT_KEY:
                docs[rid] = _h(str(sv).encode()) if sv is not None else None
            else:
                rows[rid].append((key, sv, iv, fv, bv))
        if arrays:
            for rid, key, sv, iv, fv, bv in db.execute(
                "SELECT id, key, string_value, int_value, float_value, bool_value "
                f"FROM embedding_metadata_array WHERE id IN ({marks}) ORDER BY id, key, rowid",
                part,
            ):
                rows[rid].append(("[]", key, sv, iv, fv, bv))
        for rid in part:
            out[rid] = (docs.get(rid), _h(repr(rows[rid]).encode()))
    return out


def collection_segments(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(collection id, name, METADATA segment id) of every collection, by name; a database
    without Chroma's tables (or with a view in their place) is refused (check_tables)."""
    check_tables(db)
    return [
        (str(c), str(n), str(s))
        for c, n, s in db.execute(
            "SELECT c.id, c.name, s.id FROM collections c JOIN segments s "
            "ON s.collection = c.id AND s.scope = 'METADATA' ORDER BY c.name"
        )
    ]


def write_records(
    sqlite_path: Path, out: Path, since: int | None = None, seconds: float | None = None
) -> int:
    """Write the record index rows of a quiescent chroma.sqlite3 to `out`; returns how many
    records. Lines: per collection `C<TAB>[id, name]`, then its records sorted by id in
    chunks, a line each: `K<TAB>json(first id)<TAB>count<TAB>json([[id, seq_id], ...])`.
    Then the content hashes of the records written after `since` (a seq_id; all records
    when `since` is -1, none when it is None), sorted by seq_id, per collection, in lines
    `V<TAB>collection id<TAB>first seq_id<TAB>count<TAB>json([[seq_id, id, document
    hash|null, metadata hash], ...])`. Last `W<TAB>the highest seq_id` (or `W<TAB>null`).
    A version is named by (collection, id, seq_id): chromadb can reuse a seq_id once the
    queue rows above it are gone (a dropped collection's), never for the same record.
    Reads stop after `seconds` (default `deadline_seconds()`; see `open_private`)."""
    db = open_private(sqlite_path, seconds)
    total, top = 0, None
    fresh: list[tuple[str, int, int, str]] = []  # (collection, seq_id, rowid, id) after `since`
    try:
        with out.open("w", encoding="utf-8") as fh:

            def flush(chunk: list[list[object]]) -> None:
                if chunk:
                    first = json.dumps(chunk[0][0])
                    body = json.dumps(chunk, separators=(",", ":"))
                    fh.write(f"K\t{first}\t{len(chunk)}\t{body}\n")
                    chunk.clear()

            for cid, name, seg in collection_segments(db):
                fh.write("C\t" + json.dumps([cid, name]) + "\n")
                chunk: list[list[object]] = []
                for rowid, rid, raw in db.execute(
                    "SELECT id, embedding_id, seq_id FROM embeddings WHERE segment_id = ? "
                    "ORDER BY embedding_id",
                    (seg,),
                ):
                    seq = _seq(raw)
                    chunk.append([str(rid), seq])
                    total += 1
                    top = seq if top is None or seq > top else top
                    if since is not None and seq > since:
                        fresh.append((cid, seq, rowid, str(rid)))
                    if ends_chunk(str(rid)):
                        flush(chunk)
                flush(chunk)
            fresh.sort()
            for i in range(0, len(fresh), VERSION_CHUNK):
                part = fresh[i : i + VERSION_CHUNK]
                for cid in sorted({c for c, *_ in part}):
                    mine = [(q, r, rid) for c, q, r, rid in part if c == cid]
                    hashes = content_hashes(db, [r for _, r, _ in mine])
                    body = json.dumps([[q, rid, *hashes[r]] for q, r, rid in mine], separators=(",", ":"))
                    fh.write(f"V\t{cid}\t{mine[0][0]}\t{len(mine)}\t{body}\n")
            fh.write(f"W\t{json.dumps(top)}\n")  # a scratch file, read at once: no fsync
    finally:
        db.close()
    return total


def record_hashes(
    sqlite_path: Path, collection_id: str, ids: list[str]
) -> dict[str, tuple[int, str | None, str]]:
    """[seq_id, document hash, metadata hash] of the named records of one collection of a
    quiescent chroma.sqlite3 (for versions a record index does not hold)."""
    db = open_private(sqlite_path)
    try:
        seg = next((s for c, _n, s in collection_segments(db) if c == collection_id), None)
        if seg is None:
            return {}
        found: dict[str, tuple[int, int]] = {}
        for i in range(0, len(ids), BATCH):
            part = ids[i : i + BATCH]
            marks = ",".join("?" * len(part))
            for rowid, rid, raw in db.execute(
                f"SELECT id, embedding_id, seq_id FROM embeddings WHERE segment_id = ? "
                f"AND embedding_id IN ({marks})",
                (seg, *part),
            ):
                found[str(rid)] = (rowid, _seq(raw))
        hashes = content_hashes(db, [r for r, _ in found.values()])
        return {rid: (seq, *hashes[r]) for rid, (r, seq) in found.items()}
    finally:
        db.close()


# --- the parent side (imported as chromasnap.snapshots.sqlite_copy; never in the child) -----


class SqliteCopy:
    """The parent side: this script run as a child (children.py) copying a live
    chroma.sqlite3 under SQLite's read lock. The live file is never opened in the parent.

    `start()` returns once the child holds the lock (the captured state is then fixed),
    so the caller can read the segment folders while the child copies; `finish()` waits.
    """

    def __init__(
        self,
        live: Path,
        dest: Path,
        timeout: float = 3600,
        records: bool = False,
        since: int | None = None,
        hold: bool = False,
        python: str | None = None,
    ) -> None:
        self.live, self.dest, self.timeout = live, dest, timeout
        self.records = dest.with_name(dest.name + ".records") if records else None
        extra = ["--records", str(self.records)] if self.records else []
        if self.records and since is not None:
            extra += ["--since", str(since)]
        self.hold = hold
        self.proc = children.spawn(
            [
                python or sys.executable,
                __file__,
                *(["--hold"] if hold else []),
                str(live),
                str(dest),
                *extra,
            ],
            stdin=subprocess.PIPE if hold else subprocess.DEVNULL,
        )
        self.locked_at: float | None = None
        self.held_s = 0.0
        self.timed_out = False

        def expire() -> None:  # the pipes are read without a timeout: end the child instead
            self.timed_out = True
            children.kill_group(self.proc)

        self._timer = threading.Timer(timeout, expire)
        self._timer.daemon = True
        self._timer.start()

    def release(self) -> None:
        """End the read lock kept by `hold` (the child ends it by itself after HOLD_MAX s)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.write("\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            if self.locked_at is not None:
                self.held_s = time.monotonic() - self.locked_at

    def start(self) -> SqliteCopy:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "LOCKED", or the error report if it failed
        if line.strip() != "LOCKED":
            self._fail(line)
        self.locked_at = time.monotonic()
        return self

    def run(self) -> dict[str, Any]:
        """Copy at once: start, then finish; the child's report."""
        return self.start().finish()

    def finish(self) -> dict[str, Any]:
        # read through the same buffered pipe objects start() used (communicate() would
        # bypass what readline() already buffered); the child writes little
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.release()
        out = self.proc.stdout.read()
        err = self.proc.stderr.read()
        self.proc.wait()
        self._timer.cancel()
        if self.timed_out:
            self.kill()
            raise CaptureError(f"could not read {self.live} within {self.timeout:g} s")
        lines = out.strip().splitlines()
        if self.proc.returncode != 0 or not lines:
            self._fail(lines[-1] if lines else "", err)
        info: dict[str, Any] = json.loads(lines[-1])
        return info

    def _fail(self, line: str, err: str | None = None) -> None:
        if err is None:  # the child's own words, before it is gone
            try:
                rest = self.proc.stdout.read() if self.proc.stdout else ""
                err = self.proc.stderr.read() if self.proc.stderr else ""
            except (OSError, ValueError):
                rest, err = "", ""
            if not line.strip() and rest.strip():
                line = rest.strip().splitlines()[-1]
        self.kill()
        if self.timed_out:
            raise CaptureError(f"could not read {self.live} within {self.timeout:g} s")
        try:
            msg = json.loads(line)["error"]
        except (ValueError, KeyError, TypeError, IndexError):
            tail = (err or "").strip().splitlines()
            msg = tail[-1] if tail else f"exit {self.proc.returncode}"
        raise CaptureError(f"cannot read {self.live} with SQLite: {msg}")

    def kill(self) -> None:
        self._timer.cancel()
        if self.proc.poll() is None:
            children.kill_group(self.proc)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.proc.wait()
        self.dest.unlink(missing_ok=True)
        if self.records is not None:
            self.records.unlink(missing_ok=True)


def main() -> int:
    args = sys.argv[1:]
    hold = "--hold" in args
    if hold:
        args.remove("--hold")
    live, dest = Path(args[0]), Path(args[1])
    records = Path(args[3]) if len(args) > 3 and args[2] == "--records" else None
    since = int(args[5]) if len(args) > 5 and args[4] == "--since" else None
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    holder: threading.Thread | None = None
    try:
        for attempt in range(3):
            try:
                result = copy(live, dest, hold)
                holder = result.pop("holder", None)  # type: ignore[assignment]
                break
            except FileNotFoundError as exc:  # a journal that vanished under us: look again
                if attempt == 2 or not str(exc.filename or "").endswith("-journal"):
                    raise
        if records is not None:
            try:
                # the live database's own copy: as long as it takes
                result["records"] = write_records(dest, records, since, float("inf"))
            except sqlite3.Error as exc:  # an unreadable schema costs the index, not the snapshot
                records.unlink(missing_ok=True)
                result["records_error"] = f"{type(exc).__name__}: {exc}"
    except (sqlite3.Error, OSError) as exc:
        dest.unlink(missing_ok=True)
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    if holder is not None:
        holder.join()  # the parent has read the segment folders (or HOLD_MAX passed)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
