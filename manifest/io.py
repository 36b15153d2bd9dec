"""Reading and writing manifest documents: canonical JSON, ids, and one-line errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from blake3 import blake3
from pydantic import BaseModel, ValidationError

from . import limits
from .models import ENCRYPTED_STORE_VERSION, FORMAT_VERSION, ChunkListDoc, RecordIndex, Snapshot, StoreConfig

M = TypeVar("M", bound=BaseModel)


class ManifestError(ValueError):
    """A manifest document is unreadable, invalid, or from a newer format."""


def dumps(model: BaseModel) -> bytes:
    """Canonical JSON (sorted keys, no whitespace) so equal records hash equally."""
    data = model.model_dump(mode="json")
    if isinstance(model, Snapshot):
        data = _without_absent(data)
    if isinstance(model, StoreConfig) and data.get("encryption") is None:
        data.pop("encryption", None)  # a plain store's config.json is written as before
    if isinstance(model, StoreConfig) and data["retention"].get("mirror") is None:
        del data["retention"]["mirror"]  # issue 16: a store without a mirror stays readable by older versions
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


MUTABLE = ("id", "verifications", "events", "pinned")
"""Fields of a snapshot document that its id does not cover."""
ADDED_OPTIONAL = ("records", "owner")
"""Snapshot fields added after format 1 whose None means "absent": they are left out of
the document and of the id, so a format-1 document rewritten (a verification appended)
keeps its id and stays readable by the chromasnap that wrote it."""


def _without_absent(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not (k in ADDED_OPTIONAL and v is None)}


Hasher = Callable[[bytes], str]
"""Names content: BLAKE3 hex in a plain store, the keyed BLAKE3 of an encrypted one
(`Codec.blob_key`), so that no name in an encrypted store is a function of plaintext alone."""


def _blake3_hex(raw: bytes) -> str:
    return blake3(raw).hexdigest()


def snapshot_id(snap: Snapshot | dict[str, Any], hasher: Hasher | None = None) -> str:
    """BLAKE3 of the snapshot's canonical JSON without its `id` and mutable `verifications`
    (`hasher`: the store's, keyed in an encrypted store).

    Given the parsed document (a dict), the id covers exactly what was written, so fields
    that a later version adds with defaults never invalidate an older document's id.
    """
    data = _without_absent(snap if isinstance(snap, dict) else snap.model_dump(mode="json"))
    core = {k: v for k, v in data.items() if k not in MUTABLE}
    raw = json.dumps(core, sort_keys=True, separators=(",", ":")).encode()
    return (hasher or _blake3_hex)(raw)


def _summarize(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p)[:80] for p in first.get("loc", ())) or "document"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc[:300]}: {str(first.get('msg', 'invalid'))[:300]}{more}"


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b"[]{},")
_OPEN_CLOSE = bytes.maketrans(b"{}", b"[]")


def _no_constant(value: str) -> Any:
    raise ValueError(f"{value} is not a JSON number")


def _problem(raw: bytes, max_depth: int, exact: bool) -> str | None:
    """Why `raw` must not reach json.loads (too deep, too big in memory), from its brackets,
    quotes and commas alone. Not `exact`, brackets and commas inside strings count too: an
    overestimate, so passing it is enough (and costs a few C-speed passes over the bytes)."""
    src = _STRING.sub(b'""', raw) if exact else raw
    strings = src.count(b'"') // 2
    shape = src.translate(_OPEN_CLOSE, _NOT_STRUCTURE)
    items = shape.count(b",")
    brackets = shape.replace(b",", b"")
    containers = len(brackets) // 2
    # Python objects: ~64 bytes per list or dict, ~56 per string, a pointer per item
    if 64 * containers + 56 * strings + 8 * items + len(raw) > limits.MAX_JSON_MEMORY:
        return f"too many values to hold in memory ({containers} lists or objects)"
    for _ in range(max_depth + 1):
        if not brackets:
            return None
        inner = brackets.replace(b"[]", b"")
        if inner == brackets:
            return "not valid JSON (unbalanced brackets)"
        brackets = inner
    return f"nested more than {max_depth} levels deep"


def parse_json(raw: bytes, name: str, max_bytes: int, max_depth: int = limits.MAX_JSON_DEPTH) -> Any:
    """JSON from a store, parsed only when it is at most `max_bytes`, nested at most
    `max_depth` deep and small enough in memory: a crafted document can neither exhaust
    the stack (json.loads recurses) nor the memory. Problems are one-line ManifestErrors."""
    if len(raw) > max_bytes:
        raise ManifestError(f"{name}: {len(raw)} bytes, more than the {max_bytes} a valid one can have")
    if _problem(raw, max_depth, exact=False):  # rare: look again without the strings' content
        problem = _problem(raw, max_depth, exact=True)
        if problem:
            raise ManifestError(f"{name}: {problem}")
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{name}: not valid JSON ({exc})") from None


def loads(model: type[M], raw: bytes, name: str, max_bytes: int = limits.MAX_SNAPSHOT_DOC) -> M:
    """Parse and validate `raw` as `model`; problems are one-line ManifestErrors naming `name`."""
    return validate(model, parse_json(raw, name, max_bytes), name)


def validate(model: type[M], data: Any, name: str) -> M:
    """Validate parsed JSON as `model` (refusing a newer format version)."""
    if isinstance(data, dict):
        version = data.get("format_version", data.get("version"))
        encrypted = model is StoreConfig and data.get("encryption") is not None
        top = ENCRYPTED_STORE_VERSION if encrypted else FORMAT_VERSION
        if isinstance(version, int) and version > top:
            raise ManifestError(
                f"{name}: written by a newer chromasnap (format {version}, this one reads "
                f"up to {top}); upgrade chromasnap"
            )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{name}: invalid {model.__name__}: {_summarize(exc)}") from None


def load_snapshot(
    raw: bytes, name: str, expected_id: str | None = None, hasher: Hasher | None = None
) -> Snapshot:
    """A snapshot document, refused unless its content matches its id (and, when the
    document was found under a name, that name's id: `snapshots/<id>.json`)."""
    data = parse_json(raw, name, limits.MAX_SNAPSHOT_DOC)
    snap = validate(Snapshot, data, name)
    if snapshot_id(data, hasher) != snap.id:
        raise ManifestError(f"{name}: content does not match its id (edited or damaged)")
    if expected_id is not None and snap.id != expected_id:
        raise ManifestError(f"{name}: holds snapshot {snap.id[:12]}, not the one its name says")
    return snap


def load_config(raw: bytes, name: str) -> StoreConfig:
    return loads(StoreConfig, raw, name, limits.MAX_CONFIG)


def load_chunk_list(raw: bytes, name: str) -> ChunkListDoc:
    return loads(ChunkListDoc, raw, name, limits.MAX_BLOB["list"])


def json_schemas() -> dict[str, Any]:
    """JSON Schema of every document chromasnap writes, keyed by document kind."""
    return {
        "format_version": FORMAT_VERSION,
        "store_config": StoreConfig.model_json_schema(),
        "snapshot": Snapshot.model_json_schema(),
        "chunk_list": ChunkListDoc.model_json_schema(),
        "record_index": RecordIndex.model_json_schema(),
    }
