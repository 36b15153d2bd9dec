"""LocalBackend: the storage contract (backend.py) on a local directory.

Every name is opened from the store root one folder at a time (openat) with O_NOFOLLOW: a
symlink anywhere inside the store is refused, never followed, and only regular files and
folders are accepted (a FIFO or a device is refused before it is opened). A store whose
root or entries belong to another user is refused unless `allow_foreign_owner` (that user
could have crafted it). Files are 0600, folders 0700; every write goes to a temporary name,
is fsynced, then renamed (or, for create-only names, hard-linked) into place, and the folder
is fsynced.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import os
import shutil
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import fsutil
from .backend import ObjectInfo, StorageBackend, allow_foreign_owner_default, check_name, check_range, too_big
from .errors import ObjectExists, ObjectNotFound, PreconditionFailed, StoreError

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


def _tag(st: os.stat_result) -> str:
    """A local object's version tag: its inode, modification time and size."""
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
STORE_FOLDERS = ("packs", "index", "snapshots", "tmp")
"""What `create` makes (tmp/ is the local work directory of a local store: workdir.py)."""


class LocalBackend(StorageBackend):
    """A store in a local directory (see the module docstring)."""

    MAX_FDS = 64
    is_local = True

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
            import pwd  # only here: naming the owner of a refused store

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

    def _missing(self, name: str) -> ObjectNotFound:
        return ObjectNotFound(f"store file {name} is missing from {self.location}")

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
        """A read-only fd of the regular file `name` and its size; ObjectNotFound if absent."""
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
            raise self._missing(name) from None
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

    def open_lock_file(self, name: str) -> int:
        """A read-write fd of the lock file `name` at the store root (created 0600, never
        truncated, never through a symlink), for locks.py's flock."""
        try:
            with self._dir([], create=True) as dfd:
                fd = os.open(
                    name,
                    os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    fsutil.FILE_MODE,
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
        return fd

    # --- the contract -----------------------------------------------------------------

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
        for sub in STORE_FOLDERS:
            with self._dir([sub], create=True):
                pass

    def load_bounded(self, name: str, limit: int) -> bytes:
        fd, size = self._open(name)
        try:
            if size > limit:
                raise too_big(name, self.location, size, limit)
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

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(name, offset, length)
        if length is None:
            fd, size = self._open(name)
            try:
                if offset > size:
                    raise self._truncated(name, size, offset, length)
                return self._pread_all(fd, name, size - offset, offset)
            finally:
                os.close(fd)
        return self._load_range(name, offset, length)

    def _truncated(self, name: str, size: int, offset: int, length: int | None) -> StoreError:
        want = "the rest" if length is None else f"{length} bytes"
        return StoreError(
            f"store file {name} is truncated: {size} bytes, no {want} at offset {offset} "
            "(a damaged or crafted index)"
        )

    def _pread_all(self, fd: int, name: str, length: int, offset: int) -> bytes:
        try:
            first = os.pread(fd, min(16 << 20, length), offset)  # a blob: one call, no copy
        except OSError as exc:
            raise StoreError(f"cannot read {name} in {self.location}: {exc.strerror}") from None
        if len(first) == length:
            return first
        chunks: list[bytes] = [first]
        got = len(first)
        try:
            while got < length and first:
                block = os.pread(fd, min(16 << 20, length - got), offset + got)
                if not block:
                    break
                chunks.append(block)
                got += len(block)
        except OSError as exc:
            raise StoreError(f"cannot read {name} in {self.location}: {exc.strerror}") from None
        if got != length:
            raise StoreError(f"store file {name} is truncated (wanted {length} bytes at {offset})")
        return b"".join(chunks)

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

    def _load_range(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` through the fd cache shared by reader threads."""
        with self._fd_lock:
            fd, size = self._fd(name)
            if offset + length > size:
                raise self._truncated(name, size, offset, length)
            self._in_flight[fd] = self._in_flight.get(fd, 0) + 1
        try:
            return self._pread_all(fd, name, length, offset)
        finally:
            with self._fd_lock:
                self._in_flight[fd] -= 1
                if not self._in_flight[fd]:
                    del self._in_flight[fd]
                    if fd in self._retired:
                        self._retired.discard(fd)
                        os.close(fd)

    def load_versioned(self, name: str) -> tuple[bytes, str]:
        fd, size = self._open(name)
        try:
            tag = _tag(os.fstat(fd))
            return self._pread_all(fd, name, size, 0), tag
        finally:
            os.close(fd)

    def stat(self, name: str) -> int:
        parts = check_name(name).split("/")
        try:
            with self._dir(parts[:-1]) as dfd:
                st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            raise self._missing(name) from None
        if not stat.S_ISREG(st.st_mode):
            raise self._refuse(name, _kind(st.st_mode))
        return st.st_size

    def save(self, name: str, data: bytes, *, create_only: bool = False, if_match: str | None = None) -> str:
        if create_only and if_match is not None:
            raise ValueError("save: create_only and if_match exclude each other")
        parts = check_name(name).split("/")
        with self._dir(parts[:-1], create=True) as dfd:
            tmp = f".{parts[-1]}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
            fd = os.open(tmp, _NEW_FLAGS, fsutil.FILE_MODE, dir_fd=dfd)
            try:
                with os.fdopen(fd, "wb", closefd=True) as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                    tag = _tag(os.fstat(fh.fileno()))
                self._place(dfd, tmp, name, parts[-1], create_only, if_match)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            os.fsync(dfd)
        return tag

    def _place(
        self, dfd: int, tmp: str, name: str, leaf: str, create_only: bool, if_match: str | None
    ) -> None:
        """Make the durable temporary file `tmp` the object `leaf` of the folder `dfd`:
        a hard link for create-only names (refused atomically when the name exists), else a
        rename, after comparing the version tag under a flock of the folder when `if_match`
        (local writers also hold the store lock: this is belt and braces)."""
        if create_only:
            self._link(tmp, dfd, name, leaf)
            return
        if if_match is None:
            os.rename(tmp, leaf, src_dir_fd=dfd, dst_dir_fd=dfd)
            return
        fcntl.flock(dfd, fcntl.LOCK_EX)
        try:
            try:
                current = _tag(os.stat(leaf, dir_fd=dfd, follow_symlinks=False))
            except FileNotFoundError:
                current = None
            if current != if_match:
                raise PreconditionFailed(
                    f"store file {name} in {self.location} changed since it was read; not replaced"
                )
            os.rename(tmp, leaf, src_dir_fd=dfd, dst_dir_fd=dfd)
        finally:
            fcntl.flock(dfd, fcntl.LOCK_UN)

    def _link(self, src: str, src_dir: int | None, name: str, leaf: str, dst_dir: int | None = None) -> None:
        """Move the durable file `src` to the name `leaf` (in the folder `dst_dir`, default
        `src_dir`) unless that name exists (ObjectExists): a hard link, atomic, then the
        unlink of `src`. Where the file system has no hard links: a check, then a rename
        (local writers hold the store lock; content-addressed names hold the same bytes)."""
        dst = src_dir if dst_dir is None else dst_dir
        try:
            os.link(src, leaf, src_dir_fd=src_dir, dst_dir_fd=dst, follow_symlinks=False)
        except FileExistsError:
            raise ObjectExists(f"store file {name} already exists in {self.location}") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            with contextlib.suppress(FileNotFoundError):
                os.stat(leaf, dir_fd=dst, follow_symlinks=False)
                raise ObjectExists(f"store file {name} already exists in {self.location}") from None
            os.rename(src, leaf, src_dir_fd=src_dir, dst_dir_fd=dst)
            return
        os.unlink(src, dir_fd=src_dir)

    def save_file(self, name: str, local: Path, *, create_only: bool = False) -> str:
        parts = check_name(name).split("/")
        with self._dir(parts[:-1], create=True) as dfd:
            fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
                tag = _tag(os.fstat(fd))
            finally:
                os.close(fd)
            try:
                if create_only:
                    self._link(os.fspath(local), None, name, parts[-1], dfd)
                else:
                    os.rename(local, parts[-1], dst_dir_fd=dfd)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                # another filesystem (a caller's own file): copied, then placed like `save`
                tag = self._copy_in(dfd, local, name, parts[-1], create_only)
                local.unlink()
            os.fsync(dfd)
        return tag

    def _copy_in(self, dfd: int, local: Path, name: str, leaf: str, create_only: bool) -> str:
        tmp = f".{leaf}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        fd = os.open(tmp, _NEW_FLAGS, fsutil.FILE_MODE, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb", closefd=True) as out, local.open("rb") as src:
                shutil.copyfileobj(src, out, 4 << 20)
                out.flush()
                os.fsync(out.fileno())
                tag = _tag(os.fstat(out.fileno()))
            self._place(dfd, tmp, name, leaf, create_only, None)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        return tag

    def list(self, prefix: str) -> builtins.list[ObjectInfo]:
        parts = check_name(prefix).split("/")
        try:
            with self._dir(parts) as dfd:
                return sorted(self._walk(dfd, prefix, 0), key=lambda o: o.name)
        except FileNotFoundError:
            return []

    def _walk(self, dfd: int, rel: str, depth: int) -> builtins.list[ObjectInfo]:
        """Objects under an open folder; a symlink or special file is listed (reading it is
        refused by name), a subfolder is entered without following symlinks."""
        out: builtins.list[ObjectInfo] = []
        files: builtins.list[tuple[str, int]] = []
        folders: builtins.list[str] = []
        with os.scandir(dfd) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    folders.append(e.name)
                    continue
                try:
                    size = e.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # removed since the folder was read
                files.append((e.name, size))
        out.extend(ObjectInfo(f"{rel}/{name}", size) for name, size in files)
        if depth < 4:  # packs/ab/ is as deep as a store goes
            for name in folders:
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

    def close(self) -> None:
        """Close the cached fds (those in use by a read, when it ends): also how a reader lets
        go of packs another process's gc deleted."""
        with self._fd_lock:
            self._retire_all()

    def _retire_all(self) -> None:
        for fd, _size in self._fds.values():
            self._retire(fd)
        self._fds.clear()
