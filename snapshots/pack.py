"""Pack files: many zstd-compressed blobs in one file, with a trailer that lists them.

Layout (docs/format.md): blob bodies back to back, then the trailer (zstd-compressed
JSON `{"blobs": [[key, type, offset, length, raw_length], ...]}`), then the trailer's
length as uint32 little-endian, then the 8-byte magic ``CSNPACK1``. A pack's name is
the BLAKE3 of its whole content, so a pack can be checked without any index.

In an encrypted store (docs/encryption.md) each blob body is sealed under its blob key
and the trailer under the name ``pack-trailer``, and the magic is ``CSNPACK2``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zstandard
from blake3 import blake3

from chromasnap.manifest import ManifestError, limits
from chromasnap.manifest.io import parse_json

from .errors import StoreError

if TYPE_CHECKING:
    from .crypto import Codec

MAGIC = b"CSNPACK1"
SEALED_MAGIC = b"CSNPACK2"
TRAILER_NAME = "pack-trailer"
"""The associated-data name of a sealed trailer (a pack's own name hashes the trailer too)."""
BLOB_TYPES = ("data", "list", "records")
_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack: str
    type: str
    offset: int
    length: int
    raw_length: int


def pack_name(pack_id: str) -> str:
    return f"packs/{pack_id[:2]}/{pack_id}"


def _is_key(value: object) -> bool:
    return type(value) is str and _KEY.fullmatch(value) is not None  # once per index row: fast


def location(pack: str, row: object, overhead: int = 0) -> tuple[str, BlobLocation]:
    """(key, location) of one `[key, type, offset, length, raw_length]` row of an index
    file or a pack trailer; ValueError saying what is wrong (sizes in sane limits, the
    compressed length possible for the raw length, plus a sealed body's `overhead`)."""
    if not isinstance(row, list) or len(row) != 5:
        raise ValueError("a row is not [key, type, offset, length, raw_length]")
    key, btype, off, length, raw = row
    if not _is_key(key):
        raise ValueError(f"{str(key)[:70]!r} is not a blob key")
    if btype not in BLOB_TYPES:
        raise ValueError(f"blob {key[:16]} has an unknown type {str(btype)[:20]!r}")
    if not (type(off) is int and type(length) is int and type(raw) is int):  # not bool
        raise ValueError(f"blob {key[:16]} has a non-integer offset or length")
    if not 0 <= raw <= limits.MAX_BLOB[btype]:
        raise ValueError(f"blob {key[:16]} claims {raw} bytes, more than a {btype} blob may have")
    if not 0 <= off <= limits.MAX_PACK or not 0 < length <= limits.zstd_bound(raw) + overhead:
        raise ValueError(f"blob {key[:16]} has an impossible offset {off} or length {length}")
    return key, BlobLocation(pack, btype, off, length, raw)


def decompress(
    dctx: zstandard.ZstdDecompressor, body: bytes, raw_length: int, what: str, exact: bool = True
) -> bytes:
    """A blob body's content, never more than `raw_length` + 1 bytes of output whatever its
    frame declares (python-zstandard sizes its output by the frame's own content size).

    A frame declaring exactly `raw_length` (every frame chromasnap writes) is decompressed
    at once into that many bytes; any other declared size is refused (with `exact=False`,
    `raw_length` is only a bound); a frame declaring none is streamed and stopped one byte
    past `raw_length`."""
    try:
        declared = zstandard.frame_content_size(body)
        if declared >= 0:
            if declared > raw_length or (exact and declared != raw_length):
                raise StoreError(
                    f"{what} is damaged: its frame declares {declared} bytes, the index {raw_length}"
                )
            return dctx.decompress(body)
        out: list[bytes] = []
        got = 0
        with dctx.stream_reader(body) as reader:
            while got <= raw_length:
                block = reader.read(raw_length + 1 - got)
                if not block:
                    break
                out.append(block)
                got += len(block)
        return b"".join(out)
    except zstandard.ZstdError as exc:
        raise StoreError(f"{what} is damaged: {exc}") from None


class PackFile:
    """A pack being written in a local scratch file."""

    def __init__(self, scratch: Path, codec: Codec | None = None) -> None:
        self.codec = codec
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
        magic = MAGIC
        if self.codec is not None and self.codec.encrypted:
            trailer, magic = self.codec.seal(TRAILER_NAME, trailer), SEALED_MAGIC
        tail = trailer + struct.pack("<I", len(trailer)) + magic
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


def parse_trailer(data: bytes, name: str, codec: Codec | None = None) -> list[tuple[str, str, int, int, int]]:
    """Blob table of a pack from its last bytes (the whole pack, or at least its tail);
    a sealed pack's needs the store's `codec`."""
    if len(data) < 12 or data[-8:] not in (MAGIC, SEALED_MAGIC):
        raise StoreError(f"{name}: not a pack file (bad magic)")
    sealed = data[-8:] == SEALED_MAGIC
    if sealed and (codec is None or not codec.encrypted):
        raise StoreError(f"{name}: an encrypted store's pack (it needs the store's key)")
    (tlen,) = struct.unpack("<I", data[-12:-8])
    if tlen + 12 > len(data) or tlen > limits.MAX_TRAILER + (codec.overhead if codec else 0):
        raise StoreError(f"{name}: pack trailer is truncated")
    body = data[-12 - tlen : -12]
    overhead = 0
    if sealed:
        assert codec is not None
        body, overhead = codec.open(TRAILER_NAME, body), codec.overhead
    raw = decompress(zstandard.ZstdDecompressor(), body, limits.MAX_TRAILER, f"{name}: pack trailer", False)
    try:
        if len(raw) > limits.MAX_TRAILER:
            raise ValueError("too large")
        blobs = parse_json(raw, f"{name}: pack trailer", limits.MAX_TRAILER)["blobs"]
        out = []
        for row in blobs:
            key, loc = location(name, row, overhead)
            if loc.offset + loc.length > len(data):
                raise ValueError(f"blob {key[:16]} lies past the pack's end")
            out.append((key, loc.type, loc.offset, loc.length, loc.raw_length))
        return out
    except (ManifestError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{name}: pack trailer is damaged ({exc})") from None
