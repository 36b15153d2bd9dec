"""Crash-safe file primitives: write to a temporary name, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2
try:
    import ctypes

    _libc = ctypes.CDLL(None, use_errno=True)
    _sync_file_range = getattr(_libc, "sync_file_range", None)
    if _sync_file_range is not None:
        _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
except OSError:  # pragma: no cover - no libc to load
    _sync_file_range = None


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing a file's dirty pages now, without waiting (Linux
    sync_file_range); the fsync that follows later then has less left to wait for."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def crash_point(name: str) -> None:
    """Test seam: die here by SIGKILL, as a crash would, when CHROMASNAP_CRASH_AT=name."""
    if os.environ.get("CHROMASNAP_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def make_private_dirs(path: Path) -> None:
    """Create `path` and missing parents with mode 0700, fsyncing each new entry's parent."""
    make_dirs(path, DIR_MODE)


def make_dirs(path: Path, mode: int) -> None:
    """Create `path` and missing parents with `mode` (less the umask), fsyncing each new
    entry's parent so that the new directories survive a crash."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, mode)
        fsync_dir(d.parent)


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content."""
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb", closefd=True) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def commit_file(tmp: Path, path: Path) -> None:
    """Durably move an already written temporary file into place (fsync, rename, fsync dir)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(path.parent)
