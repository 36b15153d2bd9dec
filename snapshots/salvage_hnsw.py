"""Vectors read back from a vector segment's HNSW files, each one verified, as chromadb's
`collection.get(include=["embeddings"])` returned them.

For each record id: its label from `index_metadata.pickle` (read by `safepickle`, never
unpickled), the one record of `data_level0.bin` whose own label field carries that label
(found by the geometry in `header.bin`), not marked deleted, a finite vector and, in a
cosine space, a unit vector and a positive finite length from `length.bin`. chromadb's
hnswlib stores a cosine vector normalized and returns `unit[i] * length` in float32; other
spaces store and return the vector as given. Anything that fails is reported with a reason
code (`REASONS`), never guessed. The files are only read (no symlink is followed).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import hnsw, safepickle

OK = "ok"
REASONS = {
    "label_map_unreadable": "index_metadata.pickle is missing, damaged or refused and its readable part "
    "does not hold this id",
    "not_in_label_map": "the complete id <-> label map does not hold this id",
    "label_mismatch": "the id -> label and label -> id maps disagree about this id or its label",
    "header_unreadable": "header.bin is missing or its record geometry is implausible",
    "dimension_mismatch": "header.bin's dimension differs from the collection's",
    "no_record": "no record in data_level0.bin carries this label (never written, torn, or past the end "
    "of the file)",
    "duplicate_label": "more than one record carries this label",
    "deleted": "the record carrying this label is marked deleted",
    "out_of_range": "length.bin has no entry at the record's position",
    "non_finite": "the vector has a NaN or infinite component",
    "bad_length": "length.bin's value is not a positive finite number",
    "zero_vector": "the vector is all zeros (indistinguishable from a page never written)",
    "not_unit": "the stored cosine vector is not of unit length (torn or garbled page)",
}
UNIT_TOLERANCE = 1e-4
"""Largest |norm - 1| of a stored cosine vector accepted. chromadb normalizes in float32
(measured deviations: below 1e-6 at dimension 384, docs/salvage.md); a torn or
garbled page is off by far more."""
MAX_PICKLE_BYTES = 1 << 30
CHUNK = 1 << 16


@dataclass
class LabelMap:
    """The id -> label map of index_metadata.pickle, only entries that pass the checks."""

    labels: dict[str, int] = field(default_factory=dict)
    complete: bool = False
    """The whole pickle was read: an id it does not hold is not in the persisted index."""
    total_elements_added: int | None = None
    max_seq_id: int | None = None
    """The legacy field (chromadb < 0.6 kept the vector segment's position here)."""
    error: str | None = None
    conflicts: set[str] = field(default_factory=set)
    """Ids left out because the two maps disagree about them."""
    derived: set[str] = field(default_factory=set)
    """Ids whose label was derived, not read (`salvage.derive_labels`)."""
    older: set[str] = field(default_factory=set)
    """Ids whose label was taken from an older copy of the index (`salvage.older_labels`)."""


def parse_label_map(data: bytes) -> LabelMap:
    """Check and read chromadb's IdMap: id_to_label (str -> int, labels from 1, no label
    twice) against label_to_id where it has the label. A truncated pickle gives the
    entries before the damage; a refused one gives nothing."""
    try:
        prefix = safepickle.parse_prefix(data, safepickle.Limits(max_bytes=MAX_PICKLE_BYTES), pending=True)
    except safepickle.PickleRefused as exc:
        return LabelMap(error=f"index_metadata.pickle refused: {exc}")
    top = prefix.value
    if not isinstance(top, dict):
        return LabelMap(error=f"index_metadata.pickle unreadable: {prefix.error or 'not a dict'}")
    out = LabelMap(complete=prefix.complete, error=None if prefix.complete else f"truncated: {prefix.error}")
    for key in ("total_elements_added", "max_seq_id"):
        value = top.get(key)
        if type(value) is int and value >= 0:
            setattr(out, key, value)
    forward = top.get("id_to_label")
    backward = top.get("label_to_id")
    if not isinstance(forward, dict):
        out.complete = False
        out.error = out.error or "index_metadata.pickle has no id_to_label map"
        return out
    if not isinstance(backward, dict):
        backward = {}
        if out.complete:
            out.complete = False
            out.error = "index_metadata.pickle has no label_to_id map"
    if _consistent(forward, backward, prefix.complete):  # the usual case, checked at C speed
        out.labels = dict(forward)
        return out
    owners: dict[int, list[str]] = {}
    for rid, label in forward.items():
        if type(rid) is not str or type(label) is not int or not 0 < label < 1 << 63:
            out.complete = False
            out.error = out.error or "id_to_label holds entries of the wrong type"
            continue
        owners.setdefault(label, []).append(rid)
    for label, rids in owners.items():
        back = backward.get(label)
        if len(rids) > 1 or (back is not None and back != rids[0]):
            out.conflicts.update(rids)
            continue
        if back is None and prefix.complete:
            out.conflicts.add(rids[0])
            continue
        out.labels[rids[0]] = label
    return out


def _consistent(forward: dict[Any, Any], backward: dict[Any, Any], complete: bool) -> bool:
    """Every entry of id_to_label is a str -> int in range, no label twice, and
    label_to_id gives each label back to its id (or, in a pickle cut short, lacks it):
    then parse_label_map's entry-by-entry checks would keep every entry."""
    labels = forward.values()
    if not all(type(rid) is str for rid in forward) or not all(
        type(label) is int and 0 < label < 1 << 63 for label in labels
    ):
        return False
    if len(set(labels)) != len(forward):
        return False
    get = backward.get
    if complete:
        return all(get(label) == rid for rid, label in forward.items())
    return all((back := get(label)) is None or back == rid for rid, label in forward.items())


@dataclass
class VectorRead:
    """One id's vector from the HNSW files, or why there is none."""

    status: str
    label: int | None = None
    position: int | None = None
    embedding: bytes | None = None
    """float32 little-endian, exactly what chromadb's get returned (when status is ok)."""


@dataclass
class SegmentRead:
    """What a vector segment folder gives back."""

    folder: str
    space: str
    dimension: int | None
    header: hnsw.HnswHeader | None = None
    elements: int = 0
    """Records scanned: the header's element count, or fewer if the file is shorter."""
    labels: LabelMap = field(default_factory=LabelMap)
    vectors: dict[str, VectorRead] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def read(self, record_id: str) -> VectorRead:
        """The vector of `record_id`, or a VectorRead saying why there is none."""
        got = self.vectors.get(record_id)
        if got is not None:
            return got
        if record_id in self.labels.conflicts:
            return VectorRead("label_mismatch")
        return VectorRead("not_in_label_map" if self.labels.complete else "label_map_unreadable")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.vectors.values():
            out[v.status] = out.get(v.status, 0) + 1
        return out


def _open_regular(path: Path) -> int | None:
    """A read-only descriptor of a regular file, never through a symlink; None if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OSError(f"{path.name}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path.name} is not a regular file")
    return fd


def _read_small(path: Path, limit: int) -> bytes | None:
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise OSError(f"{path.name} is {size} bytes, more than {limit}")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(limit + 1)
    finally:
        os.close(fd)


def _map(path: Path) -> tuple[Any, mmap.mmap | None]:
    """(uint8 array of the file, its mmap to close) ; an empty array if absent or empty."""
    import numpy as np

    fd = _open_regular(path)
    if fd is None:
        return np.zeros(0, dtype=np.uint8), None
    try:
        if os.fstat(fd).st_size == 0:
            return np.zeros(0, dtype=np.uint8), None
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    return np.frombuffer(mm, dtype=np.uint8), mm


def read_label_map(folder: Path) -> LabelMap:
    """The checked label map of a vector segment folder (an empty one, with the error,
    when the folder or its pickle is missing or unreadable)."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return LabelMap(error="no vector segment folder (the collection's HNSW was never written)")
    if not stat.S_ISDIR(st.st_mode):
        return LabelMap(error="the vector segment path is not a directory (a symlink is not followed)")
    try:
        raw = _read_small(folder / "index_metadata.pickle", MAX_PICKLE_BYTES)
    except OSError as exc:
        return LabelMap(error=str(exc))
    if raw is None:
        return LabelMap(error="no index_metadata.pickle (the index was never persisted)")
    return parse_label_map(raw)


@dataclass
class Level0:
    """An opened vector segment: geometry, and the fields of its first `count` records."""

    header: hnsw.HnswHeader
    count: int
    labels: Any
    deleted: Any
    vectors: Any
    lengths: Any
    positions: dict[int, int]
    duplicates: set[int]
    maps: list[mmap.mmap]

    def close(self) -> None:
        """Drop the views, then unmap (a view still held elsewhere keeps its map alive)."""
        self.vectors = self.lengths = None
        for mm in self.maps:
            with contextlib.suppress(BufferError):
                mm.close()
        self.maps = []

    def live_labels(self) -> Any:
        """Sorted labels carried by exactly one record not marked deleted."""
        import numpy as np

        pos = np.fromiter(self.positions.values(), dtype=np.int64, count=len(self.positions))
        return np.sort(self.labels[pos[~self.deleted[pos]]])


def open_level0(folder: Path, dimension: int | None) -> tuple[Level0 | None, str | None, list[str]]:
    """(the opened segment, None, problems) or (None, the status of every record, problems)."""
    problems: list[str] = []
    try:
        raw = _read_small(folder / "header.bin", hnsw.HEADER_SIZE)
    except OSError as exc:
        raw = None
        problems.append(f"header.bin: {exc}")
    h = hnsw.parse_geometry(raw or b"")
    if h is None or h.version != 1:
        return None, "header_unreadable", [*problems, "header.bin is missing or implausible"]
    if dimension is not None and h.dimension != dimension:
        why = f"header.bin says dimension {h.dimension}, the collection {dimension}"
        return None, "dimension_mismatch", [why]
    maps: list[mmap.mmap] = []
    try:
        level0, mm = _map(folder / "data_level0.bin")
        maps += [mm] if mm is not None else []
        lengths_raw, mm = _map(folder / "length.bin")
        maps += [mm] if mm is not None else []
    except OSError as exc:
        for m in maps:
            m.close()
        return None, "no_record", [str(exc)]
    in_file = len(level0) // h.size_data_per_element
    count = min(h.cur_element_count, in_file)
    if h.cur_element_count > in_file:
        problems.append(
            f"header.bin counts {h.cur_element_count} elements, data_level0.bin holds {in_file} records"
        )
    labels, deleted, vectors = hnsw.level0_fields(level0, h, count)
    positions, duplicates = hnsw.label_positions(labels)
    lengths = lengths_raw[: len(lengths_raw) // 4 * 4].view("<f4")
    return Level0(h, count, labels, deleted, vectors, lengths, positions, duplicates, maps), None, problems


def read_segment(
    folder: Path,
    space: str,
    dimension: int | None,
    ids: set[str] | None = None,
    labels: LabelMap | None = None,
    level0: Level0 | None = None,
) -> SegmentRead:
    """Read and verify the vectors of `ids` (default: every id the label map holds) from
    one vector segment folder. `space` is the collection's ("cosine", "l2", "ip");
    `labels` and `level0`, if given, are the folder's label map and opened records."""
    out = SegmentRead(folder=str(folder), space=space, dimension=dimension)
    out.labels = labels if labels is not None else read_label_map(folder)
    if out.labels.error:
        out.problems.append(f"label map: {out.labels.error}")
    wanted = set(out.labels.labels) if ids is None else {i for i in ids if i in out.labels.labels}
    if not wanted:
        return out
    opened, status, problems = (level0, None, []) if level0 is not None else open_level0(folder, dimension)
    out.problems += problems
    if opened is None:
        for rid in wanted:
            out.vectors[rid] = VectorRead(str(status), label=out.labels.labels[rid])
        return out
    try:
        _read_vectors(opened, out, wanted)
    finally:
        if level0 is None:
            opened.close()
    return out


def _read_vectors(seg: Level0, out: SegmentRead, wanted: set[str]) -> None:
    import numpy as np

    out.header, out.elements = seg.header, seg.count
    lengths, deleted, positions, duplicates = seg.lengths, seg.deleted, seg.positions, seg.duplicates
    cosine = out.space == "cosine"
    todo: list[tuple[str, int, int]] = []
    for rid in wanted:
        label = out.labels.labels[rid]
        pos = positions.get(label)
        if label in duplicates:
            out.vectors[rid] = VectorRead("duplicate_label", label)
        elif pos is None:
            out.vectors[rid] = VectorRead("no_record", label)
        elif deleted[pos]:
            out.vectors[rid] = VectorRead("deleted", label, pos)
        elif cosine and pos >= len(lengths):
            out.vectors[rid] = VectorRead("out_of_range", label, pos)
        else:
            todo.append((rid, label, pos))
    todo.sort(key=lambda t: t[2])  # file order: sequential reads of the map
    for i in range(0, len(todo), CHUNK):
        part = todo[i : i + CHUNK]
        where = np.fromiter((t[2] for t in part), dtype=np.int64, count=len(part))
        vec = seg.vectors[where]
        finite = np.isfinite(vec).all(axis=1)
        zero = ~(vec != 0).any(axis=1)
        status = np.where(finite, np.where(zero, "zero_vector", OK), "non_finite").astype(object)
        if cosine:
            length = lengths[where]
            with np.errstate(over="ignore", invalid="ignore"):
                norm = np.sqrt(np.square(vec.astype(np.float64)).sum(axis=1))
                bad_length = ~(np.isfinite(length) & (length > 0))
                off_unit = ~(np.abs(norm - 1.0) <= UNIT_TOLERANCE)
                returned = (vec * length[:, None]).astype(np.float32)
            status = np.where(
                status != OK, status, np.where(bad_length, "bad_length", np.where(off_unit, "not_unit", OK))
            )
        else:
            returned = vec
        rows = np.ascontiguousarray(returned, dtype="<f4")
        for j, ((rid, label, p), st) in enumerate(zip(part, status.tolist(), strict=True)):
            out.vectors[rid] = VectorRead(st, label, p, rows[j].tobytes() if st == OK else None)
