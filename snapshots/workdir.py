"""Local scratch, separate from the storage backend: packs being written, private SQLite
copies, verify's extraction, the private folders of diff, find, peek and export.

For a local store it is `<store>/tmp` (the same filesystem: a finished pack is renamed into
place, not copied). A remote store's is a private folder under the XDG cache
(`$XDG_CACHE_HOME/chromasnap/<key>/tmp`). Entries are named `<kind>-<pid>-<random>`, so that
gc can tell a crashed run's leftovers from a live reader's folder (`clean`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

from . import fsutil
from .backend import StorageBackend
from .errors import StoreError

SCRATCH = re.compile(
    r"(?P<kind>pack|sqlite|hot|verify-[0-9a-f]{12}|diff|find|peek|export|restore-collection)-(?P<pid>[0-9]+)-.*"
)
"""Entries chromasnap makes: packs being written and SQLite copies (by writers, under the
store lock), and the private folders of verify, diff, find, peek, export and restore
--collection (by readers, without it), each named `<kind>-<pid>-<random>`."""
WRITER_KINDS = ("pack", "sqlite", "hot")
STALE_S = 24 * 3600


class WorkDir:
    """A private local folder for temporary files of one store."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of(cls, backend: StorageBackend) -> WorkDir:
        """The work directory of `backend`'s store (see the module docstring)."""
        if backend.is_local:
            return cls(Path(backend.location) / "tmp")
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        key = hashlib.sha256(backend.location.encode()).hexdigest()[:16]
        return cls(cache / "chromasnap" / key / "tmp")

    def ensure(self) -> Path:
        """The folder, created 0700 if missing; refused if it is not a folder (a symlink
        there would send private copies elsewhere)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            fsutil.make_private_dirs(self.path)
            st = os.lstat(self.path)
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a folder"
            raise StoreError(f"the work folder {self.path} is {kind}; refused")
        return self.path

    def name(self, kind: str) -> Path:
        """A fresh path `<kind>-<pid>-<random>` inside the folder (not created)."""
        return self.ensure() / f"{kind}-{os.getpid()}-{os.urandom(4).hex()}"

    def private(self, kind: str) -> Path:
        """A fresh private folder (0700) for one reader or writer."""
        path = self.name(kind)
        os.mkdir(path, 0o700)
        return path

    def clean(self, alive: Callable[[int], bool]) -> None:
        """Remove what crashed runs left (the caller holds the store lock: no writer is
        active). A reader's private folder goes once its process is gone (`alive(pid)` is
        false) or after a day, should the pid have been reused; anything else is left alone."""
        if not self.path.is_dir():
            return
        horizon = time.time() - STALE_S
        for p in self.ensure().iterdir():
            m = SCRATCH.fullmatch(p.name)
            if m is None:
                continue
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            writer = m["kind"] in WRITER_KINDS
            if not (writer or not alive(int(m["pid"])) or st.st_mtime < horizon):
                continue
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
