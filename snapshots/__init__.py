"""chromasnap.snapshots: take, list and extract snapshots of a Chroma database.

>>> from chromasnap.snapshots import SnapshotManager
"""

from chromasnap.manifest import Snapshot

from .backend import Backend, LocalBackend
from .errors import (
    CaptureError,
    ChromasnapError,
    LockTimeout,
    SnapshotNotFound,
    StoreError,
    UsageError,
    WriterBusy,
)
from .manager import SnapshotManager, default_store

__all__ = [
    "Backend",
    "CaptureError",
    "ChromasnapError",
    "LocalBackend",
    "LockTimeout",
    "Snapshot",
    "SnapshotManager",
    "SnapshotNotFound",
    "StoreError",
    "UsageError",
    "WriterBusy",
    "default_store",
]
