"""Reading and writing manifest documents: canonical JSON, ids, and one-line errors."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from blake3 import blake3
from pydantic import BaseModel, ValidationError

from .models import FORMAT_VERSION, ChunkListDoc, RecordIndex, Snapshot, StoreConfig

M = TypeVar("M", bound=BaseModel)


class ManifestError(ValueError):
    """A manifest document is unreadable, invalid, or from a newer format."""


def dumps(model: BaseModel) -> bytes:
    """Canonical JSON (sorted keys, no whitespace) so equal records hash equally."""
    data = model.model_dump(mode="json")
    if isinstance(model, Snapshot):
        data = _without_absent(data)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


MUTABLE = ("id", "verifications", "events", "pinned")
"""Fields of a snapshot document that its id does not cover."""
ADDED_OPTIONAL = ("records", "owner")
"""Snapshot fields added after format 1 whose None means "absent": they are left out of
the document and of the id, so a format-1 document rewritten (a verification appended)
keeps its id and stays readable by the chromasnap that wrote it."""


def _without_absent(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not (k in ADDED_OPTIONAL and v is None)}


def snapshot_id(snap: Snapshot | dict[str, Any]) -> str:
    """BLAKE3 of the snapshot's canonical JSON without its `id` and mutable `verifications`.

    Given the parsed document (a dict), the id covers exactly what was written, so fields
    that a later version adds with defaults never invalidate an older document's id.
    """
    data = _without_absent(snap if isinstance(snap, dict) else snap.model_dump(mode="json"))
    core = {k: v for k, v in data.items() if k not in MUTABLE}
    raw = json.dumps(core, sort_keys=True, separators=(",", ":")).encode()
    return blake3(raw).hexdigest()


def _summarize(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "document"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{loc}: {first.get('msg', 'invalid')}{more}"


def loads(model: type[M], raw: bytes, name: str) -> M:
    """Parse and validate `raw` as `model`; problems are one-line ManifestErrors naming `name`."""
    try:
        data: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{name}: not valid JSON ({exc})") from None
    if isinstance(data, dict):
        version = data.get("format_version", data.get("version"))
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise ManifestError(
                f"{name}: written by a newer chromasnap (format {version}, this one reads "
                f"up to {FORMAT_VERSION}); upgrade chromasnap"
            )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{name}: invalid {model.__name__}: {_summarize(exc)}") from None


def load_snapshot(raw: bytes, name: str) -> Snapshot:
    snap = loads(Snapshot, raw, name)
    if snapshot_id(json.loads(raw)) != snap.id:
        raise ManifestError(f"{name}: content does not match its id (edited or damaged)")
    return snap


def load_config(raw: bytes, name: str) -> StoreConfig:
    return loads(StoreConfig, raw, name)


def load_chunk_list(raw: bytes, name: str) -> ChunkListDoc:
    return loads(ChunkListDoc, raw, name)


def json_schemas() -> dict[str, Any]:
    """JSON Schema of every document chromasnap writes, keyed by document kind."""
    return {
        "format_version": FORMAT_VERSION,
        "store_config": StoreConfig.model_json_schema(),
        "snapshot": Snapshot.model_json_schema(),
        "chunk_list": ChunkListDoc.model_json_schema(),
        "record_index": RecordIndex.model_json_schema(),
    }
