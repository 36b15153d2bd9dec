"""Sane limits for everything read from a store (docs/security.md lists them and why).

A store may come from elsewhere (a copy, a backup, a bucket others can write), so no size,
count or depth read from it is trusted: these bound the memory, disk and time a crafted
store can make chromasnap spend. Each is far above what chromasnap itself writes.
"""

from __future__ import annotations

MAX_JSON_DEPTH = 32
"""Nesting of any JSON document (chromasnap writes at most 7 levels)."""
MAX_JSON_MEMORY = 1 << 30
"""Estimated Python memory of a parsed JSON document (its containers, strings and values)."""

MAX_CONFIG = 1 << 20
MAX_SNAPSHOT_DOC = 64 << 20
"""A snapshot document: about 3 kB per collection (its folder, five files, its state)."""
MAX_INDEX_FILE = 256 << 20
"""An index file: about 100 bytes per blob (gc's consolidated index lists every blob)."""
MAX_CATALOG = 64 << 20
MAX_SMALL_DOC = 64 << 10
"""Write intents, lock.owner."""
MAX_RESTORED_NOTE = 16 << 20
"""The restored-state note of a database (about 150 bytes per file of the database)."""
MAX_JOURNAL = 16 << 20
"""A swap journal (mount mode lists the database folder's entries)."""
MAX_TRAILER = 64 << 20
"""A pack trailer, compressed or not."""

MAX_CHUNK = 64 << 20
"""A data blob: a chunk is at most the largest chunk size a config may set."""
MAX_BLOB = {"data": MAX_CHUNK, "list": 128 << 20, "records": 16 << 20}
"""Uncompressed size of a blob by type: a chunk list of 128 MiB describes a file of 27 GB
or more; a record chunk averages 512 records (16 MiB is over 300,000 of 50 bytes)."""
MAX_PACK = 1 << 40
MAX_FILE_SIZE = 1 << 60
"""Apparent size of one file (sparse files may be huge; the offsets must stay in off_t)."""
MAX_TIME_NS = 1 << 62
MAX_RECORD_SIZE = 1 << 24
"""hnswlib's size_data_per_element (the capture refuses larger headers too)."""
MAX_NAME = 255
MAX_PATH = 4096
MAX_ENTRIES = 1 << 20
"""Entries (files, folders) in one snapshot, or in one swap journal."""


def zstd_bound(raw_length: int) -> int:
    """The largest compressed body a blob of `raw_length` bytes can have (zstd's
    ZSTD_compressBound, with room for the frame header)."""
    return raw_length + (raw_length >> 8) + (128 << 10) + 64
