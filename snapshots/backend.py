"""The storage contract: every read and write of a store goes through a StorageBackend.

Names are relative POSIX paths inside the store ("config.json", "packs/ab/ab12…").
`LocalBackend` (local_backend.py) keeps them in a directory, `S3Backend` in a bucket;
`RetryingBackend` and `FaultyBackend` wrap either. Nothing above the backends touches
store paths; locks (locks.py) and local scratch (workdir.py) sit beside the contract.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StoreError


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


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing: its store name, size in bytes and, where the listing gives
    one (S3), its ETag (the metadata cache checks entries against both; not compared)."""

    name: str
    size: int
    etag: str | None = field(default=None, compare=False)


class StorageBackend(ABC):
    """The storage contract (restic-style) that local and object stores implement.

    Every method raises a `StoreError`; the typed ones are `ObjectNotFound`, `ObjectExists`,
    `PreconditionFailed`, `TransientStoreError` (worth retrying) and `PermanentStoreError`.
    Messages are one line, name the store and the object, and never carry credentials.
    """

    location: str  # printable, never holds credentials (s3://bucket/prefix, /path/to/store)
    is_local: bool = False  # True only for a local directory (flock, packs renamed into place)
    no_cas: bool = False  # the user accepted a server that ignores conditional writes (lease.py)

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

    def load_bounded(self, name: str, limit: int) -> bytes:
        """The whole object, refused (StoreError) when it is over `limit` bytes, without
        reading more than that: every document of a store is hostile input. Backends that
        can bound one read do so (LocalBackend); this default stats, then reads that many."""
        for _attempt in range(3):
            size = self.stat(name)
            if size > limit:
                raise too_big(name, self.location, size, limit)
            try:
                return self.load(name, 0, size)
            except StoreError as exc:  # replaced by a shorter version meanwhile: look again
                if "truncated" not in str(exc):
                    raise
        raise StoreError(f"{name} in store {self.location} kept changing while being read")

    def load_tagged(self, name: str, limit: int) -> tuple[bytes, str | None]:
        """`load_bounded`, and the version tag of the bytes returned when the same response
        gives it (S3's ETag: the metadata cache records it), else None."""
        return self.load_bounded(name, limit), None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and cached resources."""


Backend = StorageBackend
"""The name the library used before issue 15 (kept for importers)."""


def too_big(name: str, location: str, size: int, limit: int) -> StoreError:
    """The refusal of a document over its size limit."""
    return StoreError(
        f"{name} in store {location} is {size} bytes, more than the {limit} a valid one can have; refused"
    )


def check_range(name: str, offset: int, length: int | None) -> None:
    """Reject negative offsets and lengths before they reach a server."""
    if offset < 0 or (length is not None and length < 0):
        raise StoreError(f"invalid range of {name}: offset {offset}, length {length}")
