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
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
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


def main() -> int:
    live, dest = Path(sys.argv[1]), Path(sys.argv[2])
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
    except (sqlite3.Error, OSError) as exc:
        dest.unlink(missing_ok=True)
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
