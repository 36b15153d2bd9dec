"""The storage interface: every read and write of a store goes through a Backend.

Names are relative POSIX paths inside the store ("config.json", "packs/ab/ab12…").
LocalBackend keeps them in a directory; an object-storage backend (S3) will be a second
implementation of the same methods. Nothing above this module touches store paths.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from chromasnap.manifest import ManifestError, limits
from chromasnap.manifest.io import parse_json

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


def allow_foreign_owner_default() -> bool:
    """CHROMASNAP_ALLOW_FOREIGN_OWNER=1 allows reading a store another user owns."""
    return os.environ.get("CHROMASNAP_ALLOW_FOREIGN_OWNER", "").lower() in ("1", "true", "yes")


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
    def read(self, name: str, limit: int = limits.MAX_INDEX_FILE) -> bytes:
        """The whole content of `name`, refused (StoreError) when it is over `limit` bytes."""

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

    @abstractmethod
    def write_lock(self, timeout: float | None = None) -> contextlib.AbstractContextManager[None]:
        """The database write lock (before_write, restore, recover); raises LockTimeout."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release cached resources."""


_KINDS = (
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


def _kind(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_HELD: dict[tuple[int, int, int], list[int]] = {}
"""Lock files this process holds: (st_dev, st_ino, thread) -> [fd, depth] (re-entrant per thread)."""
_HELD_LOCK = threading.Lock()


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
    """A store in a local directory: files 0600, folders 0700, every write via temp+fsync+rename.

    Every name is opened from the store root one folder at a time (openat) with
    O_NOFOLLOW: a symlink anywhere inside the store is refused, never followed, and only
    regular files and folders are accepted (a FIFO or a device is refused before it is
    opened). A store whose root or entries belong to another user is refused unless
    `allow_foreign_owner` (that user could have crafted it)."""

    MAX_FDS = 64

    def __init__(self, root: Path, allow_foreign_owner: bool | None = None) -> None:
        self.root = root
        self.location = str(root)
        self.allow_foreign_owner = (
            allow_foreign_owner_default() if allow_foreign_owner is None else allow_foreign_owner
        )
        # Open pack fds and sizes, shared by reader threads. An fd that leaves the cache
        # (too many open, `remove`, `close`) is closed once no pread on it is in flight:
        # closing it under a reader would fail that read, or let a new open reuse its number.
        self._fds: dict[str, tuple[int, int]] = {}
        self._fd_lock = threading.Lock()
        self._in_flight: dict[int, int] = {}  # fd -> preads running on it
        self._retired: set[int] = set()  # out of the cache, closed when its last pread ends

    # --- opening safely -------------------------------------------------------------

    def _owner(self, st: os.stat_result, what: str) -> None:
        """Refuse what another user owns: they could have crafted it."""
        me = os.geteuid()
        if self.allow_foreign_owner or st.st_uid == me:
            return
        try:
            import pwd

            who = f"uid {st.st_uid} ({pwd.getpwuid(st.st_uid).pw_name})"
        except (KeyError, ImportError):
            who = f"uid {st.st_uid}"
        raise StoreError(
            f"{what} is owned by {who}, not by you (uid {me}): whoever can write a store can craft "
            "it to mislead or harm its reader; use --allow-foreign-owner (or "
            "CHROMASNAP_ALLOW_FOREIGN_OWNER=1) if you trust that user"
        )

    def _refuse(self, name: str, what: str) -> StoreError:
        return StoreError(f"{name} in store {self.location} is {what}; refused")

    @contextlib.contextmanager
    def _dir(self, parts: Sequence[str], create: bool = False) -> Iterator[int]:
        """An fd of the store folder `parts` (the root when empty), opened from the root one
        component at a time without following symlinks; created (0700) if `create`."""
        if create:
            fsutil.make_private_dirs(self.root)
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except NotADirectoryError:
            raise StoreError(f"the store path {self.location} is not a directory") from None
        try:
            self._owner(os.fstat(fd), f"store {self.location}")
            for i, part in enumerate(parts):
                where = "/".join(parts[: i + 1])
                try:
                    sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, fsutil.DIR_MODE, dir_fd=fd)
                    os.fsync(fd)
                    sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        kind = _kind(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                        raise self._refuse(where, f"{kind}, not a folder") from None
                    raise
                os.close(fd)
                fd = sub
                self._owner(os.fstat(fd), f"{where} in store {self.location}")
            yield fd
        finally:
            os.close(fd)

    def _open(self, name: str) -> tuple[int, int]:
        """A read-only fd of the regular file `name` and its size."""
        parts = check_name(name).split("/")
        try:
            with self._dir(parts[:-1]) as dfd:
                st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):  # before opening: a device's open may act
                    raise self._refuse(name, _kind(st.st_mode))
                fd = os.open(
                    parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd
                )
        except FileNotFoundError:
            raise StoreError(f"store file {name} is missing from {self.location}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refuse(name, "a symlink") from None
            raise StoreError(f"cannot read {name} in {self.location}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # replaced between the check and the open
                raise self._refuse(name, _kind(st.st_mode))
            self._owner(st, f"{name} in store {self.location}")
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size

    # --- Backend ------------------------------------------------------------------------

    def exists(self) -> bool:
        try:
            with self._dir([]) as fd:
                os.stat("config.json", dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except StoreError as exc:
            if not self.root.is_dir():
                return False
            raise exc from None
        return True

    def create(self) -> None:
        for sub in ("packs", "index", "snapshots", "tmp"):
            with self._dir([sub], create=True):
                pass

    def read(self, name: str, limit: int = limits.MAX_INDEX_FILE) -> bytes:
        fd, size = self._open(name)
        try:
            if size > limit:
                raise self._refuse(name, f"{size} bytes, more than the {limit} a valid one can have")
            chunks: list[bytes] = []
            got = 0
            while got <= limit:
                block = os.read(fd, min(4 << 20, limit + 1 - got))
                if not block:
                    break
                chunks.append(block)
                got += len(block)
            if got > limit:
                raise self._refuse(name, f"more than the {limit} bytes a valid one can have")
            return b"".join(chunks)
        except OSError as exc:
            raise StoreError(f"cannot read {name} in {self.location}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def _fd(self, name: str) -> tuple[int, int]:
        """A cached read-only fd for `name` and its size; the caller holds `_fd_lock`."""
        got = self._fds.get(name)
        if got is None:
            if len(self._fds) >= self.MAX_FDS:
                self._retire_all()
            got = self._fds[name] = self._open(name)
        return got

    def _retire(self, fd: int) -> None:
        """Close `fd`, now or when its last pread ends; the caller holds `_fd_lock`."""
        if self._in_flight.get(fd):
            self._retired.add(fd)
        else:
            os.close(fd)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        with self._fd_lock:
            fd, size = self._fd(name)
            if offset < 0 or length < 0 or offset + length > size:
                raise StoreError(
                    f"store file {name} has {size} bytes: no {length} bytes at offset {offset} "
                    "(a damaged or crafted index)"
                )
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
        parts = check_name(name).split("/")
        with self._dir(parts[:-1], create=True) as dfd:
            tmp = f".{parts[-1]}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd
            )
            try:
                with os.fdopen(fd, "wb", closefd=True) as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.rename(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            os.fsync(dfd)

    def put_file(self, name: str, local: Path) -> None:
        parts = check_name(name).split("/")
        with self._dir(parts[:-1], create=True) as dfd:
            fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(local, parts[-1], dst_dir_fd=dfd)
            os.fsync(dfd)

    def list(self, prefix: str) -> list[str]:
        parts = check_name(prefix).split("/")
        try:
            with self._dir(parts) as dfd:
                return sorted(self._walk(dfd, prefix, 0))
        except FileNotFoundError:
            return []

    def _walk(self, dfd: int, rel: str, depth: int) -> builtins.list[str]:
        """Names under an open folder; a symlink or special file is listed (reading it is
        refused by name), a subfolder is entered without following symlinks."""
        out: builtins.list[str] = []
        with os.scandir(dfd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it if not e.name.startswith(".")]
        for name, is_dir in entries:
            if not is_dir:
                out.append(f"{rel}/{name}")
            elif depth < 4:  # packs/ab/ is as deep as a store goes
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                except OSError:
                    continue  # gone, or replaced by a symlink meanwhile
                try:
                    self._owner(os.fstat(sub), f"{rel}/{name} in store {self.location}")
                    out.extend(self._walk(sub, f"{rel}/{name}", depth + 1))
                finally:
                    os.close(sub)
        return out

    def remove(self, name: str) -> None:
        parts = check_name(name).split("/")
        with self._fd_lock:
            got = self._fds.pop(name, None)
            if got is not None:
                self._retire(got[0])
        try:
            with self._dir(parts[:-1]) as dfd:
                os.unlink(parts[-1], dir_fd=dfd)
                os.fsync(dfd)
        except FileNotFoundError:
            pass

    def size(self, name: str) -> int:
        parts = check_name(name).split("/")
        with self._dir(parts[:-1]) as dfd:
            st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise self._refuse(name, _kind(st.st_mode))
        return st.st_size

    def scratch_dir(self) -> Path:
        with self._dir(["tmp"], create=True):
            pass
        return self.root / "tmp"

    # --- locks --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _hold(self, name: str, wait: float, busy: Callable[[], str]) -> Iterator[None]:
        """flock(2) on the store file `name`, opened without following a symlink and never
        truncated; re-entrant within a thread. `busy()` words the LockTimeout."""
        try:
            with self._dir([], create=True) as dfd:
                fd = os.open(
                    name,
                    os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    0o600,
                    dir_fd=dfd,
                )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refuse(name, "a symlink") from None
            raise StoreError(f"cannot lock store {self.location}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self._refuse(name, _kind(st.st_mode))
            self._owner(st, f"{name} in store {self.location}")
        except BaseException:
            os.close(fd)
            raise
        key = (st.st_dev, st.st_ino, threading.get_ident())
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is not None:
                held[1] += 1
        if held is not None:
            os.close(fd)
        else:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        raise LockTimeout(busy()) from None
                    time.sleep(0.05)
                except BaseException:
                    os.close(fd)
                    raise
            with _HELD_LOCK:
                held = _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            with _HELD_LOCK:
                held[1] -= 1
                last = held[1] == 0
                if last:
                    del _HELD[key]
            if last:
                os.close(held[0])  # closing the only fd releases the flock

    @contextlib.contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[None]:
        wait = lock_timeout() if timeout is None else timeout

        def busy() -> str:
            holder = "another process"
            with contextlib.suppress(ManifestError, StoreError, KeyError, TypeError):
                info = parse_json(
                    self.read("lock.owner", limits.MAX_SMALL_DOC), "lock.owner", limits.MAX_SMALL_DOC
                )
                holder = (
                    f"pid {int(info['pid'])} ({str(info['command'])[:300]}) since {str(info['since'])[:40]}"
                )
            return f"store {self.location} is locked by {holder}; gave up after {wait:g}s"

        with self._hold("lock", wait, busy):
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            self.write("lock.owner", json.dumps(info).encode())
            yield

    @contextlib.contextmanager
    def write_lock(self, timeout: float | None = None) -> Iterator[None]:
        wait = lock_timeout() if timeout is None else timeout
        with self._hold("write.lock", wait, lambda: f"gave up after {wait:g}s"):
            yield

    def close(self) -> None:
        """Close the cached fds (those in use by a read, when it ends): also how a reader lets
        go of packs another process's gc deleted."""
        with self._fd_lock:
            self._retire_all()

    def _retire_all(self) -> None:
        for fd, _size in self._fds.values():
            self._retire(fd)
        self._fds.clear()
