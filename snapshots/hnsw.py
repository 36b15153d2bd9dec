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

import bisect
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


# --- the structure of a vector segment folder, checked without loading it ---------------
#
# chromadb's hnswlib fork saves a folder in this order: header.bin, data_level0.bin and
# length.bin (the records it changed), link_lists.bin (every record up to the last one
# it changed), then chromadb writes index_metadata.pickle. A folder read while a save is
# under way can hold files from both sides of it; these checks find that from the bytes
# read, with nothing loaded and nothing unpickled.

LINK_LISTS_LIMIT = 512 << 20
"""A link_lists.bin larger than this is not walked (a healthy one holds a few bytes per
element: 8 MB for a million)."""
PICKLE_LIMIT = 512 << 20
"""An index_metadata.pickle larger than this is not walked."""


def link_list_records(raw: bytes, header: HnswHeader) -> tuple[int, str | None]:
    """Walk link_lists.bin: one record per element, a uint32 byte count (a multiple of the
    per-level link size, at most max_level of them) then the links. Returns the records
    walked (stopping once past the header's count) and a problem, if any."""
    import numpy as np

    per = header.max_m * 4 + 4
    top = max(header.max_level, 0) * per
    if len(raw) % 4:
        return 0, f"has {len(raw)} bytes, not a whole number of 4-byte words"
    words = np.frombuffer(raw, dtype="<u4")
    nonzero = np.flatnonzero(words).tolist()  # bisect on a list: no numpy call per record
    want = header.cur_element_count
    i = n = 0
    end = len(words)
    while i < end and n <= want:
        j = bisect.bisect_left(nonzero, i)
        nxt = nonzero[j] if j < len(nonzero) else end
        n += nxt - i  # elements on level 0 only: a zero count each
        i = nxt
        if i >= end or n > want:
            break
        size = int(words[i])
        if size % per or size > top:
            return n, f"record {n} claims {size} bytes of links (levels of {per} bytes, at most {top})"
        n += 1
        i += 1 + size // 4
    if i > end:
        return n, f"ends inside record {n - 1} (cut off mid-write?)"
    if n != want:
        return n, f"holds {n if n <= want else f'more than {want}'} records, header.bin says {want} elements"
    return n, None


_MEMO_OPS = {"MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT", "FRAME"}
_INT_OPS = {"BININT", "BININT1", "BININT2", "LONG1", "INT", "LONG"}
_TEXT_OPS = {
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
}


def _opcode_table() -> dict[int, tuple[int, str]]:
    """opcode byte -> (argument size, or -1 line, -2 uint8 length, -3 int32 length,
    -4 uint32 length, -5 uint64 length; opcode name), from the standard library's own
    description of the pickle format (pickletools); nothing is executed."""
    import pickletools

    table = {}
    for op in pickletools.opcodes:
        n = 0 if op.arg is None else op.arg.n
        if op.name == "GLOBAL" or op.name == "INST":
            n = -6  # two lines
        table[op.code.encode("latin-1")[0]] = (n, op.name)
    return table


_OPCODES: dict[int, tuple[int, str]] | None = None


def pickle_structure(raw: bytes) -> tuple[bool | None, int | None]:
    """Walk the opcodes of index_metadata.pickle WITHOUT unpickling it: no object is
    built, no name resolved. Returns (complete, total_elements_added): complete is True
    when a STOP opcode ends exactly at the last byte, False when the opcodes run past the
    end or stop early, None when an opcode is unknown; total_elements_added is the integer
    following that key, if one was found."""
    global _OPCODES
    if _OPCODES is None:
        _OPCODES = _opcode_table()
    table = _OPCODES
    pos, end = 0, len(raw)
    total: int | None = None
    want_total = False
    key = b"total_elements_added"
    while pos < end and total is None:  # the head: find total_elements_added
        n, name = table.get(raw[pos], (None, ""))
        if n is None:
            return None, total
        start = text = pos + 1
        pos, text = _argument_end(raw, start, n)
        if pos < 0:
            return (None if pos == -2 else False), total
        if pos > end:
            return False, total
        if name == "STOP":
            return pos == end, total
        if want_total and name in _INT_OPS:
            arg = raw[start:pos]
            if name == "BININT":
                total = int.from_bytes(arg, "little", signed=True)
            elif name in ("BININT1", "BININT2"):
                total = int.from_bytes(arg, "little")
            elif name == "LONG1":
                total = int.from_bytes(arg[1:], "little", signed=True)
        if name not in _MEMO_OPS:  # a memo store between the key and its value
            want_total = total is None and name in _TEXT_OPS and raw[text:pos] == key
    return _walk_to_stop(raw, pos, table), total


def _argument_end(raw: bytes, start: int, n: int) -> tuple[int, int]:
    """(end of an opcode's argument, start of its text) given pickletools' argument size
    code `n`; (-1, _) when it runs off the end, (-2, _) when the code is unknown."""
    if n >= 0:
        return start + n, start
    if n in (-1, -6):  # one or two newline-terminated arguments
        nl = raw.find(b"\n", start)
        if n == -6 and nl >= 0:
            nl = raw.find(b"\n", nl + 1)
        return (nl + 1 if nl >= 0 else -1), start
    width = {-2: 1, -3: 4, -4: 4, -5: 8}.get(n)
    if width is None:
        return -2, start
    return start + width + int.from_bytes(raw[start : start + width], "little"), start + width


def _walk_to_stop(raw: bytes, pos: int, table: dict[int, tuple[int, str]]) -> bool | None:
    """The rest of the walk: the id maps are runs of (BINUNICODE, BININT) pairs and the
    reverse, taken two opcodes at a time."""
    end = len(raw)
    u32 = struct.Struct("<I").unpack_from
    while pos < end:
        op = raw[pos]
        if op == 0x58:  # BINUNICODE: X, u32 length, text
            if pos + 5 > end:
                return False
            pos += 5 + u32(raw, pos + 1)[0]
            if pos < end and raw[pos] == 0x4A:  # BININT: J, 4 bytes
                pos += 5
            continue
        if op == 0x4A:
            pos += 5
            if pos + 5 <= end and raw[pos] == 0x58:
                pos += 5 + u32(raw, pos + 1)[0]
            continue
        entry = table.get(op)
        if entry is None:
            return None
        nxt, _text = _argument_end(raw, pos + 1, entry[0])
        if nxt == -2:
            return None
        if nxt < 0 or nxt > end:
            return False
        if entry[1] == "STOP":
            return nxt == end
        pos = nxt
    return False


@dataclass
class FolderFiles:
    """What a capture read of one vector segment folder: sizes, and the bytes of the small
    files (None: absent; "big": present but not kept)."""

    sizes: dict[str, int]
    header: bytes | None = None
    link_lists: bytes | str | None = None
    pickle: bytes | str | None = None


def folder_problems(f: FolderFiles) -> list[str]:
    """Why a vector segment folder is not one consistent save (empty when it is): the
    checks of `checker.hnsw_file_problems` (sizes against header.bin) and the link
    records, and the pickle's completeness and element count."""
    if f.header is None:
        return []
    h = parse_header(f.header)
    if h is None:
        return ["header.bin is not a valid hnswlib header"]
    problems = []
    counts = {h.cur_element_count, h.max_elements}
    for name, per in (("data_level0.bin", h.size_data_per_element), ("length.bin", 4)):
        size = f.sizes.get(name)
        if size is None:
            problems.append(f"{name} is missing")
        elif size not in {per * n for n in counts}:
            problems.append(
                f"{name} has {size} bytes; header.bin says {h.cur_element_count} elements "
                f"of capacity {h.max_elements}"
            )
    if f.link_lists is None:
        problems.append("link_lists.bin is missing")
    elif isinstance(f.link_lists, bytes):
        _, problem = link_list_records(f.link_lists, h)
        if problem:
            problems.append(f"link_lists.bin {problem}")
    elif f.link_lists == "sparse":
        problems.append("link_lists.bin has holes (hnswlib writes it densely)")
    if f.pickle is None:
        if h.cur_element_count:
            problems.append(
                f"header.bin holds {h.cur_element_count} elements but there is no "
                "index_metadata.pickle (a first save under way?)"
            )
    elif isinstance(f.pickle, bytes):
        complete, total = pickle_structure(f.pickle)
        if complete is False:
            problems.append(
                f"index_metadata.pickle is incomplete ({len(f.pickle)} bytes, cut off mid-write?)"
            )
        if total is not None and total < h.cur_element_count:
            problems.append(
                f"index_metadata.pickle counts {total} elements added, header.bin {h.cur_element_count} "
                "(it is from an earlier save)"
            )
    return problems
