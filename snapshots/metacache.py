"""The local metadata cache of a remote store: what `list`, `show`, `diff` and `find` read
again and again, kept on this machine so that a second run touches only what changed.

It holds snapshot documents and index files (by store name) and record-index blobs (by
blob key), each exactly as the backend returned it: an encrypted store's entries are
ciphertext. It lives beside the store's scratch folder, keyed by the store's location and
its id (`$XDG_CACHE_HOME/chromasnap/<location key>/meta-<store id>/`, docs/remote.md).

A cache file is untrusted input, like the store: opened without following a symlink, read
up to a bound, and used only when its header matches what the store says now: a document
or index file only when the listing taken in this run holds its name with the same size
(and the same ETag: a snapshot document, whose mutable fields change, is never served
without one), a blob only at the pack, offset and length the index gives it; and always
only when its body hashes to the SHA-256 recorded with it. Anything else (stale,
truncated, torn, tampered) is deleted and the object fetched again. Entries of objects
gone from a listing (pruned) are deleted when the folder is listed; that is the bound.

Writes go to a temporary name renamed into place (no fsync: a torn entry after a crash
fails its hash). No failure of the cache (read-only home, ENOSPC, someone else's folder)
ever fails a command: the cache turns itself off for the run and the backend is read.
`CHROMASNAP_NO_CACHE=1` (`chromasnap --no-cache`) turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Container
from pathlib import Path

from .backend import ObjectInfo, StorageBackend

__all__ = ["MetaCache", "cache_enabled"]

CACHED_NAME = re.compile(r"(snapshots|index)/[0-9a-f]{64}\.json")
"""Store names the cache holds: snapshot documents and index files."""
BLOB_KEY = re.compile(r"[0-9a-f]{64}")
MUTABLE = ("snapshots",)
"""Folders whose objects change in place (pinned, verifications, events): served only
when the listing and the entry both carry the same ETag."""
MAGIC = b"chromasnap-cache 1\n"
MAX_HEADER = 1024
TEMP_PREFIX = ".tmp-"
STALE_TEMP_S = 3600
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def cache_enabled() -> bool:
    """False when CHROMASNAP_NO_CACHE is set to 1/true/yes (`chromasnap --no-cache` sets it)."""
    return os.environ.get("CHROMASNAP_NO_CACHE", "").lower() not in ("1", "true", "yes")


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/chromasnap` (default `~/.cache/chromasnap`)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chromasnap"


def location_key(location: str) -> str:
    """The folder of one store location under `cache_root()` (shared with workdir.py)."""
    return hashlib.sha256(location.encode()).hexdigest()[:16]


def _etag(tag: str | None) -> str | None:
    """An ETag compared as the server spells it, without quotes or a weak marker."""
    if not tag:
        return None
    tag = tag.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    return tag.strip('"')[:200] or None


class MetaCache:
    """The cache of one remote store (see the module docstring). Thread-safe: entries are
    opened relative to folder descriptors, written under fresh temporary names."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._fds: dict[str, int] = {}
        self._off = False
        self.hits = 0
        self.misses = 0
        self.discarded = 0
        """Entries found and refused (stale, truncated, tampered), for tests and the bench."""

    @classmethod
    def of(cls, backend: StorageBackend, store_id: str) -> MetaCache | None:
        """The cache of `backend`'s store, or None: a local store (read directly), the cache
        turned off, or a store id that is not 64 hex digits."""
        if backend.is_local or not cache_enabled() or not BLOB_KEY.fullmatch(store_id):
            return None
        return cls(cache_root() / location_key(backend.location) / f"meta-{store_id[:32]}")

    # --- folders ----------------------------------------------------------------------

    def _folder(self, sub: str, create: bool) -> int | None:
        """A descriptor of `root/sub` (opened once, never through a symlink), None when it
        does not exist and `create` is false or the cache is off."""
        if self._off:
            return None
        with self._lock:
            fd = self._fds.get(sub)
            if fd is not None:
                return fd
            try:
                if "" not in self._fds:
                    if not create and not self.root.is_dir():
                        return None
                    self._fds[""] = self._open_root()
                root = self._fds[""]
                if sub == "":
                    return root
                try:
                    fd = os.open(sub, _DIR_FLAGS, dir_fd=root)
                except FileNotFoundError:
                    if not create:
                        return None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(sub, 0o700, dir_fd=root)
                    fd = os.open(sub, _DIR_FLAGS, dir_fd=root)
            except OSError:
                self._turn_off()
                return None
            self._fds[sub] = fd
            return fd

    def _open_root(self) -> int:
        """The cache folder, created 0700; refused (OSError) when it is a symlink or not ours."""
        parent = self.root.parent
        if not parent.is_dir():
            from . import fsutil

            fsutil.make_private_dirs(parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.root, 0o700)
        fd = os.open(self.root, _DIR_FLAGS)
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            os.close(fd)
            raise PermissionError("the cache folder is not this user's alone")
        self._drop_other_stores()
        return fd

    def _drop_other_stores(self) -> None:
        """`meta-*` folders of a store that was at this location before (replaced)."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.root.parent):
                other = entry.name.startswith("meta-") and entry.name != self.root.name
                if other and entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)

    def _turn_off(self) -> None:
        """A cache that failed is not used again in this run (the backend is read)."""
        self._off = True

    def close(self) -> None:
        """Close the folder descriptors (also when the cache is collected: a long-lived
        manager opens a Repository, and so a cache, per operation)."""
        with self._lock:
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            for fd in self._fds.values():
                os.close(fd)

    # --- entries ----------------------------------------------------------------------

    def _read(self, sub: str, fname: str, limit: int) -> tuple[dict[str, object], bytes] | None:
        """(header, body) of an entry, or None (absent, unreadable, malformed: deleted)."""
        dfd = self._folder(sub, create=False)
        if dfd is None:
            return None
        try:
            fd = os.open(fname, _READ_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError:  # a symlink (ELOOP), a FIFO...: not ours
            self._discard(sub, fname)
            return None
        try:
            st = os.fstat(fd)
            bound = len(MAGIC) + MAX_HEADER + limit
            if not stat.S_ISREG(st.st_mode) or st.st_size > bound:
                self._discard(sub, fname)
                return None
            chunks: list[bytes] = []
            got = 0
            while got <= bound:
                piece = os.read(fd, bound + 1 - got)
                if not piece:
                    break
                chunks.append(piece)
                got += len(piece)
        except OSError:
            return None
        finally:
            os.close(fd)
        data = b"".join(chunks)
        entry = _parse(data, bound)
        if entry is None or len(entry[1]) > limit:
            self._discard(sub, fname)
            return None
        return entry

    def _write(self, sub: str, fname: str, header: dict[str, object], body: bytes) -> None:
        dfd = self._folder(sub, create=True)
        if dfd is None:
            return
        head = json.dumps(header, separators=(",", ":")).encode()
        if len(head) + 1 > MAX_HEADER:
            return
        tmp = f"{TEMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
        try:
            fd = os.open(tmp, _NEW_FLAGS, 0o600, dir_fd=dfd)
            try:
                _write_all(fd, MAGIC + head + b"\n" + body)
            finally:
                os.close(fd)
            os.replace(tmp, fname, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:  # ENOSPC, EDQUOT, EROFS...: the run goes on without the cache
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            self._turn_off()

    def _discard(self, sub: str, fname: str) -> None:
        self.discarded += 1
        dfd = self._folder(sub, create=False)
        if dfd is not None:
            with contextlib.suppress(OSError):
                os.unlink(fname, dir_fd=dfd)

    # --- documents and index files ------------------------------------------------------

    @staticmethod
    def holds(name: str) -> bool:
        """Whether store objects of this name are cached."""
        return CACHED_NAME.fullmatch(name) is not None

    def get(self, name: str, listed: ObjectInfo, limit: int) -> bytes | None:
        """The cached bytes of `name` if they are what the store holds now by `listed` (its
        entry in a listing of this run); None otherwise (a refused entry is deleted)."""
        if not self.holds(name):
            return None
        sub, fname = name.split("/", 1)
        entry = self._read(sub, fname, limit)
        if entry is None:
            self.misses += 1
            return None
        header, body = entry
        tag, now = header.get("etag"), _etag(listed.etag)
        mutable = sub in MUTABLE
        if (
            header.get("name") != name
            or header.get("size") != listed.size
            or len(body) != listed.size
            or (mutable and (tag is None or now is None))
            or (tag is not None and now is not None and tag != now)
            or header.get("sha256") != hashlib.sha256(body).hexdigest()
        ):
            self._discard(sub, fname)
            self.misses += 1
            return None
        self.hits += 1
        return body

    def put(self, name: str, data: bytes, etag: str | None) -> None:
        """Record the bytes the backend returned for `name` with the ETag of that response
        (a snapshot document without one is not cached: it could not be checked)."""
        if not self.holds(name) or self._off:
            return
        sub, fname = name.split("/", 1)
        tag = _etag(etag)
        if sub in MUTABLE and tag is None:
            return
        header = {"name": name, "size": len(data), "etag": tag, "sha256": hashlib.sha256(data).hexdigest()}
        self._write(sub, fname, header, data)

    def forget(self, name: str) -> None:
        if self.holds(name):
            sub, fname = name.split("/", 1)
            dfd = self._folder(sub, create=False)
            if dfd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(fname, dir_fd=dfd)

    def prune(self, folder: str, listed: set[str]) -> None:
        """Delete the entries of `folder` whose objects are not in `listed` (the full names of
        a complete listing of that folder), and temporary files of crashed runs."""
        self._prune(folder, {n.split("/", 1)[1] for n in listed if n.startswith(folder + "/")})

    def _prune(self, sub: str, keep: set[str]) -> None:
        dfd = self._folder(sub, create=False)
        if dfd is None:
            return
        horizon = time.time() - STALE_TEMP_S
        try:
            names = os.listdir(dfd)
        except OSError:
            return
        for fname in names:
            if fname in keep:
                continue
            if fname.startswith(TEMP_PREFIX):
                with contextlib.suppress(OSError):
                    if os.stat(fname, dir_fd=dfd, follow_symlinks=False).st_mtime >= horizon:
                        continue  # perhaps another run's entry being written
            with contextlib.suppress(OSError):
                os.unlink(fname, dir_fd=dfd)

    # --- blobs ----------------------------------------------------------------------------

    def get_blob(self, key: str, pack: str, offset: int, length: int) -> bytes | None:
        """A blob's stored body (as read from its pack) if the entry was read from the same
        pack, offset and length and hashes as recorded; else None."""
        if not BLOB_KEY.fullmatch(key):
            return None
        entry = self._read("blobs", key, length)
        if entry is None:
            self.misses += 1
            return None
        header, body = entry
        if (
            header.get("name") != key
            or header.get("pack") != pack
            or header.get("offset") != offset
            or header.get("size") != length
            or len(body) != length
            or header.get("sha256") != hashlib.sha256(body).hexdigest()
        ):
            self._discard("blobs", key)
            self.misses += 1
            return None
        self.hits += 1
        return body

    def put_blob(self, key: str, pack: str, offset: int, body: bytes) -> None:
        if not BLOB_KEY.fullmatch(key) or self._off:
            return
        header = {
            "name": key,
            "pack": pack,
            "offset": offset,
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        self._write("blobs", key, header, body)

    def prune_blobs(self, known: Container[str]) -> None:
        """Delete blob entries the store's index no longer names (gc removed them)."""
        self._prune("blobs", {k for k in self._names("blobs") if k in known})

    def _names(self, sub: str) -> list[str]:
        dfd = self._folder(sub, create=False)
        if dfd is None:
            return []
        try:
            return os.listdir(dfd)
        except OSError:
            return []


def _write_all(fd: int, data: bytes) -> None:
    """Every byte of `data` to `fd` (the seam where tests inject ENOSPC)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _parse(data: bytes, bound: int) -> tuple[dict[str, object], bytes] | None:
    """(header, body) of an entry's bytes, or None when it is not one."""
    if len(data) > bound or not data.startswith(MAGIC):
        return None
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        return None
    try:
        header = json.loads(data[len(MAGIC) : end])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    return header, data[end + 1 :]
