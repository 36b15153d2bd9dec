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
