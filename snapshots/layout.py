"""The layout of a Chroma database directory and where its store goes.

One place for the names chromasnap relies on (`chroma.sqlite3` and its side files, the
prefix of chromasnap's own entries inside a database folder) and for the checks of a
database path and a store path against each other.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError

SQLITE_NAME = "chroma.sqlite3"
"""Chroma's SQLite database, at the top of the database directory."""
SQLITE_SIDE_FILES = (SQLITE_NAME + "-journal", SQLITE_NAME + "-wal", SQLITE_NAME + "-shm")
"""SQLite's side files: captured with the database file, never as files of their own."""
OWN_PREFIX = ".chromasnap-"
"""Entries with this prefix inside a database folder are chromasnap's own (mount mode)."""


def default_store(db_path: Path) -> Path:
    """`<parent of db>/<db name>.snapshots`."""
    return db_path.parent / f"{db_path.name}.snapshots"


def inside(child: Path, parent: Path) -> bool:
    """`child` is `parent` or lies under it (paths compared as given: resolve them first)."""
    return child == parent or parent in child.parents


def check_layout(db_path: Path, store_path: Path) -> None:
    """Refuse a store inside the database, or a database inside the store."""
    db, store = Path(os.path.realpath(db_path)), Path(os.path.realpath(store_path))
    if inside(store, db):
        raise UsageError(f"the store {store_path} is inside the database {db_path}; put it elsewhere")
    if inside(db, store):
        raise UsageError(f"the database {db_path} is inside the store {store_path}")
    if store_path.exists() and not store_path.is_dir():
        raise UsageError(f"the store path {store_path} exists and is not a directory")


def check_database(db_path: Path) -> None:
    """A Chroma database is a directory holding chroma.sqlite3."""
    if not db_path.exists():
        raise UsageError(f"database {db_path} does not exist")
    if not db_path.is_dir():
        raise UsageError(f"database {db_path} is not a directory")
    sq = db_path / SQLITE_NAME
    if not sq.is_file() or sq.is_symlink():
        raise UsageError(f"{db_path} is not a Chroma database (no {SQLITE_NAME})")
    if not os.access(sq, os.R_OK):
        raise UsageError(f"cannot read {sq}: permission denied")


def no_database_yet(db_path: Path) -> bool:
    """The first run: `db_path` does not exist, or is a directory holding nothing but
    chromasnap's own entries (`.chromasnap-*`, mount mode) and a file system's `lost+found`."""
    if not os.path.lexists(db_path):
        return True
    if not db_path.is_dir():
        return False
    try:
        names = os.listdir(db_path)
    except OSError:
        return False
    return all(n.startswith(OWN_PREFIX) or n == "lost+found" for n in names)
