"""chromasnap.snapshots: take, list and extract snapshots of a Chroma database.

>>> from chromasnap.snapshots import SnapshotManager
"""

from chromasnap.manifest import Snapshot

from .backend import Backend, ObjectInfo, StorageBackend
from .errors import (
    CaptureError,
    ChromasnapError,
    LockTimeout,
    SnapshotNotFound,
    StoreError,
    UsageError,
    WriterBusy,
)
from .local_backend import LocalBackend
from .manager import SnapshotManager, default_store

__all__ = [
    "Backend",
    "CaptureError",
    "ChromasnapError",
    "LocalBackend",
    "LockTimeout",
    "ObjectInfo",
    "Snapshot",
    "SnapshotManager",
    "SnapshotNotFound",
    "StorageBackend",
    "StoreError",
    "UsageError",
    "WriterBusy",
    "default_store",
]
