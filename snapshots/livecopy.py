"""A private, consistent copy of a live database directory, for probing it safely.

`chroma.sqlite3` is copied under SQLite's read lock (or with the backup API in WAL
mode); a hot journal is copied along so that chromadb rolls it back in the copy as it
would in the live directory. Other files are reflinked where the filesystem can, else
copied by their data regions (holes stay holes), and re-copied if they changed meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from pathlib import Path

from .capture import RETRIES, _same, data_extents, scan
from .errors import CaptureError
from .layout import SQLITE_NAME
from .sqlite_copy import SqliteCopy

FICLONE = 0x40049409


def copy_file(src: Path, dst: Path) -> os.stat_result:
    """Copy one regular file (reflink, else extent by extent); returns the source's stat."""
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(sfd)
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.ioctl(dfd, FICLONE, sfd)
            except OSError as exc:
                if exc.errno not in (
                    errno.EOPNOTSUPP,
                    errno.EXDEV,
                    errno.EINVAL,
                    errno.ENOTTY,
                    errno.EBADF,
                ):
                    raise
                for off, length in data_extents(sfd, st.st_size):
                    done = 0
                    while done < length:
                        n = os.copy_file_range(sfd, dfd, length - done, off + done, off + done)
                        if n == 0:
                            break
                        done += n
                os.ftruncate(dfd, st.st_size)
            os.fchmod(dfd, stat.S_IMODE(st.st_mode))
        finally:
            os.close(dfd)
        return st
    finally:
        os.close(sfd)


def copy_database(src: Path, dst: Path) -> None:
    """Make `dst` (which must not exist) a consistent private copy of database `src`."""
    os.mkdir(dst, 0o700)
    found = scan(src)
    for d in found.dirs:
        os.mkdir(dst / d.path, 0o700)
    SqliteCopy(src / SQLITE_NAME, dst / SQLITE_NAME).run()  # under SQLite's read lock, in a child
    for rel, _st in found.files:
        if rel == SQLITE_NAME:
            continue
        for attempt in range(RETRIES):
            try:
                before = copy_file(src / rel, dst / rel)
            except FileNotFoundError:
                break  # removed meanwhile: chromadb rewrote the folder
            with contextlib.suppress(FileNotFoundError):
                if _same(before, os.lstat(src / rel)):
                    break
            time.sleep(0.05 * 2**attempt)
        else:
            raise CaptureError(f"{src / rel} kept changing while being copied")
