"""The storage interface: every read and write of a store goes through a Backend.

Names are relative POSIX paths inside the store ("config.json", "packs/ab/ab12…").
LocalBackend keeps them in a directory; an object-storage backend (S3) will be a second
implementation of the same methods. Nothing above this module touches store paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import fsutil
from .errors import LockTimeout, StoreError


def lock_timeout() -> float:
    """Seconds to wait for the store lock: CHROMASNAP_LOCK_TIMEOUT, default 60."""
    try:
        return float(os.environ.get("CHROMASNAP_LOCK_TIMEOUT", "60"))
    except ValueError:
        return 60.0


def check_name(name: str) -> str:
    """Store names are hostile until checked: relative, no '..', no empty parts."""
    parts = name.split("/")
    if not name or name.startswith("/") or "\x00" in name or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"refusing unsafe store path {name!r}")
    return name


class Backend(ABC):
    """Where a store's files live. Writes are atomic and durable when they return."""

    location: str

    @abstractmethod
    def exists(self) -> bool:
        """Whether the store has been created (its config exists)."""

    @abstractmethod
    def create(self) -> None:
        """Create the empty store container (idempotent)."""

    @abstractmethod
    def read(self, name: str) -> bytes: ...

    @abstractmethod
    def read_range(self, name: str, offset: int, length: int) -> bytes: ...

    @abstractmethod
    def write(self, name: str, data: bytes) -> None:
        """Store `data` under `name`, replacing any old content atomically and durably."""

    @abstractmethod
    def put_file(self, name: str, local: Path) -> None:
        """Move a finished local scratch file to `name`, atomically and durably."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names under the folder `prefix` (recursively), sorted."""

    @abstractmethod
    def remove(self, name: str) -> None: ...

    @abstractmethod
    def size(self, name: str) -> int: ...

    @abstractmethod
    def scratch_dir(self) -> Path:
        """A private local directory for temporary files (packs being written, staging)."""

    @abstractmethod
    def lock(self, timeout: float | None = None) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock for mutating operations; raises LockTimeout naming the holder."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release cached resources."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing: its store name and size in bytes."""

    name: str
    size: int


class StorageBackend(ABC):
    """The storage contract (restic-style) that local and object stores implement.

    Every method raises a `StoreError`; the typed ones are `ObjectNotFound`, `ObjectExists`,
    `PreconditionFailed`, `TransientStoreError` (worth retrying) and `PermanentStoreError`.
    Messages are one line, name the store and the object, and never carry credentials.
    (Issue 15 folds this into `Backend`; until then the two ABCs live side by side.)
    """

    location: str  # printable, never holds credentials (s3://bucket/prefix, /path/to/store)
    is_local: bool = False  # True only for a local directory (flock, packs renamed into place)

    @abstractmethod
    def exists(self) -> bool:
        """Whether the store has been created (its config.json exists)."""

    @abstractmethod
    def create(self) -> None:
        """Create the empty container (idempotent)."""

    @abstractmethod
    def save(self, name: str, data: bytes, *, create_only: bool = False, if_match: str | None = None) -> str:
        """Store `data` atomically and durably; return the new version tag.

        create_only: refuse with ObjectExists if `name` exists. if_match: replace only if the
        current version tag equals it, else PreconditionFailed."""

    @abstractmethod
    def save_file(self, name: str, local: Path, *, create_only: bool = False) -> str:
        """The finished local file becomes `name`; return its version tag. On success the local
        file is gone (renamed or uploaded then deleted); on an error it is left to the caller."""

    @abstractmethod
    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """The object's bytes from `offset`, `length` of them or to the end. A range that does
        not fit in the object is a StoreError ("<name> is truncated"); offset == size with
        length 0 or None gives b""."""

    @abstractmethod
    def load_versioned(self, name: str) -> tuple[bytes, str]:
        """The whole object and its version tag (for a later save(if_match=...))."""

    @abstractmethod
    def stat(self, name: str) -> int:
        """The object's size; ObjectNotFound if absent."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects under the folder `prefix`, recursively, sorted by name, with sizes."""

    @abstractmethod
    def remove(self, name: str) -> None:
        """Delete `name`; an absent name is not an error."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and cached resources."""


def check_range(name: str, offset: int, length: int | None) -> None:
    """Reject negative offsets and lengths before they reach a server."""
    if offset < 0 or (length is not None and length < 0):
        raise StoreError(f"invalid range of {name}: offset {offset}, length {length}")


class LocalBackend(Backend):
    """A store in a local directory: files 0600, folders 0700, every write via temp+fsync+rename."""

    MAX_FDS = 64

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
        # Open pack fds, shared by reader threads. An fd that leaves the cache (too many
        # open, `remove`, `close`) is closed once no pread on it is in flight: closing it
        # under a reader would fail that read, or let a new open reuse its number.
        self._fds: dict[str, int] = {}
        self._fd_lock = threading.Lock()
        self._in_flight: dict[int, int] = {}  # fd -> preads running on it
        self._retired: set[int] = set()  # out of the cache, closed when its last pread ends

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def exists(self) -> bool:
        return (self.root / "config.json").is_file()

    def create(self) -> None:
        fsutil.make_private_dirs(self.root)
        for sub in ("packs", "index", "snapshots", "tmp"):
            fsutil.make_private_dirs(self.root / sub)

    def read(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"store file {name} is missing from {self.location}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {name} in {self.location}: {exc.strerror}") from None

    def _fd(self, name: str) -> int:
        """A cached read-only fd for `name`; the caller holds `_fd_lock`."""
        fd = self._fds.get(name)
        if fd is None:
            if len(self._fds) >= self.MAX_FDS:
                self._retire_all()
            try:
                fd = os.open(self._path(name), os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                raise StoreError(f"store file {name} is missing from {self.location}") from None
            self._fds[name] = fd
        return fd

    def _retire(self, fd: int) -> None:
        """Close `fd`, now or when its last pread ends; the caller holds `_fd_lock`."""
        if self._in_flight.get(fd):
            self._retired.add(fd)
        else:
            os.close(fd)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        with self._fd_lock:
            fd = self._fd(name)
            self._in_flight[fd] = self._in_flight.get(fd, 0) + 1
        try:
            data = os.pread(fd, length, offset)
        finally:
            with self._fd_lock:
                self._in_flight[fd] -= 1
                if not self._in_flight[fd]:
                    del self._in_flight[fd]
                    if fd in self._retired:
                        self._retired.discard(fd)
                        os.close(fd)
        if len(data) != length:
            raise StoreError(f"store file {name} is truncated (wanted {length} bytes at {offset})")
        return data

    def write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        fsutil.make_private_dirs(path.parent)
        fsutil.atomic_write(path, data)

    def put_file(self, name: str, local: Path) -> None:
        path = self._path(name)
        fsutil.make_private_dirs(path.parent)
        fsutil.commit_file(local, path)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        out: list[str] = []
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            out.extend(f"{rel}/{f}" for f in files if not f.startswith("."))
        return sorted(out)

    def remove(self, name: str) -> None:
        path = self._path(name)
        with self._fd_lock:
            fd = self._fds.pop(name, None)
            if fd is not None:
                self._retire(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            fsutil.fsync_dir(path.parent)

    def size(self, name: str) -> int:
        return self._path(name).stat().st_size

    def scratch_dir(self) -> Path:
        tmp = self.root / "tmp"
        fsutil.make_private_dirs(tmp)
        return tmp

    @contextlib.contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[None]:
        from filelock import FileLock, Timeout

        wait = lock_timeout() if timeout is None else timeout
        fsutil.make_private_dirs(self.root)
        lock = FileLock(str(self.root / "lock"), mode=0o600)
        owner = self.root / "lock.owner"
        try:
            lock.acquire(timeout=wait)
        except Timeout:
            holder = "another process"
            with contextlib.suppress(OSError, ValueError):
                info = json.loads(owner.read_text())
                holder = f"pid {info['pid']} ({info['command']}) since {info['since']}"
            raise LockTimeout(
                f"store {self.location} is locked by {holder}; gave up after {wait:g}s"
            ) from None
        except PermissionError:
            raise StoreError(f"cannot lock store {self.location}: permission denied") from None
        try:
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            fsutil.atomic_write(owner, json.dumps(info).encode())
            yield
        finally:
            lock.release()

    def close(self) -> None:
        """Close the cached fds (those in use by a read, when it ends): also how a reader lets
        go of packs another process's gc deleted."""
        with self._fd_lock:
            self._retire_all()

    def _retire_all(self) -> None:
        for fd in self._fds.values():
            self._retire(fd)
        self._fds.clear()
