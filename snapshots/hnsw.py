"""hnswlib's on-disk header and the record split of `data_level0.bin`.

Each level-0 record is [links: offset_data bytes][vector: dim float32][label: 8 bytes].
Links change whenever neighbours are added; vector and label never do. Storing the two
parts as separate streams lets an incremental snapshot re-store only the links.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER_FORMAT = "<iQQQQQQiIQQQdQ"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)  # 100


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
    if len(raw) != HEADER_SIZE:
        return None
    h = HnswHeader(*struct.unpack(HEADER_FORMAT, raw))
    plausible = (
        h.offset_level0 == 0
        and 0 <= h.cur_element_count <= h.max_elements
        and 0 < h.offset_data < h.label_offset
        and h.label_offset + 8 == h.size_data_per_element
        and h.offset_data == 4 + 4 * h.max_m0
        and (h.label_offset - h.offset_data) % 4 == 0
        and h.size_data_per_element < 1 << 24
    )
    return h if plausible else None


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
