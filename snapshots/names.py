"""Names people read: a vector segment's files named by their collection.

Chroma keeps each collection's HNSW files in a folder named by the vector segment's UUID, so two
collections' `data_level0.bin` differ only in 36 hex characters, past where a narrow terminal
cuts a column. `show` and `diff` print `docs/data_level0.bin` instead (the segment id stays in
`--json` and in a column of its own on a wide terminal)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from chromasnap.manifest import Snapshot


def segment_names(snapshots: Iterable[Snapshot | None]) -> dict[str, str]:
    """Vector segment id -> a name for its folder: the collection's name, with the segment's
    first 8 characters added where two segments would get the same name (two databases of one
    store, or a collection dropped and created again between two snapshots)."""
    pairs: dict[str, str] = {}
    for snap in snapshots:
        if snap is None:
            continue
        for col in snap.wal.collections:
            for seg in col.segments:
                if seg.scope == "VECTOR":
                    pairs.setdefault(seg.id, col.name)
    seen = Counter(pairs.values())
    return {seg: (name if seen[name] == 1 else f"{name}~{seg[:8]}") for seg, name in pairs.items()}


def split_path(path: str) -> tuple[str | None, str]:
    """A stored file path as (segment id, file name inside it); (None, path) for chroma.sqlite3
    and anything not inside one folder."""
    head, sep, tail = path.partition("/")
    if not sep or "/" in tail:
        return None, path
    return head, tail


def file_label(path: str, names: dict[str, str]) -> str:
    """`coll/data_level0.bin` for a file of a known vector segment, else the path itself."""
    seg, tail = split_path(path)
    if seg is None or seg not in names:
        return path
    return f"{names[seg]}/{tail}"


def segment_of(path: str, names: dict[str, str]) -> str | None:
    """The segment id of a file in a known segment folder, else None."""
    seg, _ = split_path(path)
    return seg if seg is not None and seg in names else None
