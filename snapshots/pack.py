"""Pack files: many zstd-compressed blobs in one file, with a trailer that lists them.

Layout (docs/format.md): blob bodies back to back, then the trailer (zstd-compressed
JSON `{"blobs": [[key, type, offset, length, raw_length], ...]}`), then the trailer's
length as uint32 little-endian, then the 8-byte magic ``CSNPACK1``. A pack's name is
the BLAKE3 of its whole content, so a pack can be checked without any index.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import zstandard
from blake3 import blake3

from .errors import StoreError

MAGIC = b"CSNPACK1"
BLOB_TYPES = ("data", "list", "records")


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack: str
    type: str
    offset: int
    length: int
    raw_length: int


def pack_name(pack_id: str) -> str:
    return f"packs/{pack_id[:2]}/{pack_id}"


class PackFile:
    """A pack being written in a local scratch file."""

    def __init__(self, scratch: Path) -> None:
        self.path = scratch / f"pack-{os.getpid()}-{os.urandom(6).hex()}"
        self._fh = open(self.path, "xb")  # noqa: SIM115 - closed in finish/abort
        os.chmod(self.path, 0o600)
        self._hash = blake3()
        self.size = 0
        self.blobs: list[tuple[str, str, int, int, int]] = []

    def add(self, key: str, blob_type: str, body: bytes, raw_length: int) -> None:
        self._fh.write(body)
        self._hash.update(body)
        self.blobs.append((key, blob_type, self.size, len(body), raw_length))
        self.size += len(body)

    def finish(self) -> tuple[str, Path]:
        """Write the trailer, close, and return (pack id, local path); the caller commits it."""
        trailer = zstandard.ZstdCompressor(level=3).compress(
            json.dumps({"blobs": self.blobs}, separators=(",", ":")).encode()
        )
        tail = trailer + struct.pack("<I", len(trailer)) + MAGIC
        self._fh.write(tail)
        self._hash.update(tail)
        self.size += len(tail)
        self._fh.close()
        return self._hash.hexdigest(), self.path

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def parse_trailer(data: bytes, name: str) -> list[tuple[str, str, int, int, int]]:
    """Blob table of a pack from its last bytes (the whole pack, or at least its tail)."""
    if len(data) < 12 or data[-8:] != MAGIC:
        raise StoreError(f"{name}: not a pack file (bad magic)")
    (tlen,) = struct.unpack("<I", data[-12:-8])
    if tlen + 12 > len(data):
        raise StoreError(f"{name}: pack trailer is truncated")
    try:
        raw = zstandard.ZstdDecompressor().decompress(data[-12 - tlen : -12])
        blobs = json.loads(raw)["blobs"]
        return [(str(k), str(t), int(o), int(n), int(r)) for k, t, o, n, r in blobs]
    except (zstandard.ZstdError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{name}: pack trailer is damaged ({exc})") from None
