"""hnswlib's on-disk header and the record split of `data_level0.bin`.

Each level-0 record is [links: offset_data bytes][vector: dim float32][label: 8 bytes].
Links change whenever neighbours are added; the label never does, and the vector only
when an update replaces the element's embedding in place (chromadb 1.0/1.5). Storing the
two parts as separate streams lets an incremental snapshot re-store only the links.

The links part starts with a 4-byte header: a uint16 neighbour count, then a flags byte
whose bit 0 marks the element deleted (hnswlib's `DELETE_MARK`). An element's position in
the file (its internal id) is not its label: chromadb inserts a batch from several
threads, so hnswlib rebuilds its label -> position lookup on load from the label fields
of the first `cur_element_count` records, and so does `label_positions`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

HEADER_FORMAT = "<iQQQQQQiIQQQdQ"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)  # 100
LABEL_BYTES = 8
DELETE_MARK = 0x01
"""Bit of the byte at offset 2 of a level-0 record that marks the element deleted."""


@dataclass(frozen=True)
class HnswHeader:
    version: int
    offset_level0: int
    max_elements: int
    cur_element_count: int
    size_data_per_element: int
    label_offset: int
    offset_data: int
    max_level: int
    enterpoint_node: int
    max_m: int
    max_m0: int
    m: int
    mult: float
    ef_construction: int

    @property
    def dimension(self) -> int:
        return (self.label_offset - self.offset_data) // 4


def parse_header(raw: bytes) -> HnswHeader | None:
    """The header if `raw` is a plausible hnswlib header.bin, else None (plain chunking)."""
    h = parse_geometry(raw)
    return h if h is not None and 0 <= h.cur_element_count <= h.max_elements else None


def parse_geometry(raw: bytes) -> HnswHeader | None:
    """The header if its record geometry is plausible, whatever its element counts say
    (a header whose count was inflated still tells where each field of a record is)."""
    if len(raw) != HEADER_SIZE:
        return None
    h = HnswHeader(*struct.unpack(HEADER_FORMAT, raw))
    plausible = (
        h.offset_level0 == 0
        and 0 < h.offset_data < h.label_offset
        and h.label_offset + LABEL_BYTES == h.size_data_per_element
        and h.offset_data == 4 + 4 * h.max_m0
        and (h.label_offset - h.offset_data) % 4 == 0
        and h.size_data_per_element < 1 << 24
    )
    return h if plausible else None


def level0_fields(level0: Any, h: HnswHeader, count: int) -> tuple[Any, Any, Any]:
    """(labels uint64, deleted flags bool, vectors float32 rows) of the first `count`
    records of `level0` (a uint8 array over data_level0.bin, e.g. of an mmap); the vectors
    are a view, read only where they are indexed."""
    import numpy as np

    rec = level0[: count * h.size_data_per_element].reshape(count, h.size_data_per_element)
    labels = np.ascontiguousarray(rec[:, h.label_offset : h.size_data_per_element]).view("<u8")[:, 0]
    deleted = (rec[:, 2] & DELETE_MARK) != 0
    vectors = rec[:, h.offset_data : h.label_offset].view("<f4")  # a view: rows are read when indexed
    return labels, deleted, vectors


def label_positions(labels: Any) -> tuple[dict[int, int], set[int]]:
    """{label: position} of labels carried by exactly one record, and the labels carried
    by more than one (ambiguous: never read). Label 0 (an unwritten record) is left out."""
    import numpy as np

    order = np.argsort(labels, kind="stable")
    ranked = labels[order]
    dup = np.zeros(len(ranked), dtype=bool)
    if len(ranked) > 1:
        same = ranked[1:] == ranked[:-1]
        dup[1:] |= same
        dup[:-1] |= same
    keep = ~dup & (ranked != 0)
    unique = dict(zip(ranked[keep].tolist(), order[keep].tolist(), strict=True))
    return unique, set(ranked[dup & (ranked != 0)].tolist())


def split_records(block: bytes, record_size: int, link_bytes: int) -> tuple[bytes, bytes]:
    """Split whole records into (links stream part, vectors+labels stream part)."""
    import numpy as np  # only when a level-0 file is really read: keeps start-up fast

    arr = np.frombuffer(block, dtype=np.uint8).reshape(-1, record_size)
    return arr[:, :link_bytes].tobytes(), arr[:, link_bytes:].tobytes()


def join_records(links: bytes, vectors: bytes, record_size: int, link_bytes: int) -> bytes:
    """Inverse of split_records."""
    import numpy as np

    n = len(links) // link_bytes
    out = np.empty((n, record_size), dtype=np.uint8)
    out[:, :link_bytes] = np.frombuffer(links, dtype=np.uint8).reshape(n, link_bytes)
    out[:, link_bytes:] = np.frombuffer(vectors, dtype=np.uint8).reshape(n, record_size - link_bytes)
    return out.tobytes()
