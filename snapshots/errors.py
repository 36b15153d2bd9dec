"""Exceptions with one-line messages and the exit code the CLI gives each."""

from __future__ import annotations


class ChromasnapError(Exception):
    """Base class: `str(exc)` is the one line a user sees; `exit_code` is the CLI's."""

    exit_code = 1


class UsageError(ChromasnapError):
    """Bad input: a wrong path, an unknown id, an invalid option value (exit 2)."""

    exit_code = 2


class SnapshotNotFound(UsageError):
    """No snapshot, or more than one, matches the given id or prefix."""


class StoreError(ChromasnapError):
    """The store is damaged, unreadable, or from a newer format (exit 1)."""


class LockTimeout(ChromasnapError):
    """Another process held the store lock for longer than we were willing to wait."""


class CaptureError(ChromasnapError):
    """The database could not be captured consistently (for example, it kept changing)."""


class WriterBusy(ChromasnapError):
    """A snapshot asked not to wait found the database write lock held (exit 1: nothing
    was taken)."""


class Cancelled(BaseException):
    """A worker thread of the asyncio API (aio.py) stopped at a safe point of a capture
    because its task was cancelled: nothing it wrote is referenced (as on Ctrl-C). A
    BaseException, like asyncio.CancelledError, so that no `except Exception` swallows it."""


# --- the storage contract's errors (docs: DESIGN-storage; raised by every StorageBackend) ---


class ObjectNotFound(StoreError):
    """load, load_versioned or stat of a name the store does not have."""


class ObjectExists(StoreError):
    """save(create_only=True) of a name that already exists."""


class PreconditionFailed(StoreError):
    """save(if_match=tag) when the object changed since `tag` was read (compare-and-swap lost)."""


class TransientStoreError(StoreError):
    """Worth retrying: 5xx, throttling, connection resets, timeouts."""


class PermanentStoreError(StoreError):
    """Never retried: access denied, missing bucket, wrong region, a refused configuration."""


class ConditionalWritesUnsupported(PermanentStoreError):
    """The server ignores If-None-Match / If-Match: concurrent writers could overwrite each other."""


class LeaseLost(StoreError):
    """The store lease this process held was broken or taken over: stop writing."""


class StaleLock(LockTimeout):
    """The store's lease or lock object outlived its holder; broken only on request (unlock --stale)."""
