"""The manifest models: hostile paths, ids, versions, and one-line validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from chromasnap.manifest import (
    FORMAT_VERSION,
    FileEntry,
    ManifestError,
    json_schemas,
    load_config,
    load_snapshot,
    snapshot_id,
)
from chromasnap.snapshots import SnapshotManager

KEY = "a" * 64


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../x", "a/../../b", "a//b", "./a", "a/.", "", "a\\b", "a\x00b"]
)
def test_hostile_file_paths_are_rejected(path: str) -> None:
    with pytest.raises(ValidationError):
        FileEntry(path=path, size=1, data_bytes=1, mode=0o644, mtime_ns=0, hash=KEY, chunk_list=KEY)


def test_plain_relative_paths_are_accepted() -> None:
    e = FileEntry(
        path="seg/data_level0.bin",
        size=1,
        data_bytes=1,
        mode=0o644,
        mtime_ns=0,
        hash=KEY,
        chunk_list=KEY,
    )
    assert e.path == "seg/data_level0.bin"


def test_snapshot_id_covers_content_but_not_verifications(db: Path) -> None:
    snap = SnapshotManager(db).snapshot(tags=["a"])
    assert snapshot_id(snap) == snap.id
    edited = snap.model_copy(update={"tags": ["b"]})
    assert snapshot_id(edited) != snap.id
    raw = json.dumps(edited.model_dump(mode="json")).encode()
    with pytest.raises(ManifestError, match="does not match its id"):
        load_snapshot(raw, "snapshots/x.json")


def test_manifest_with_hostile_path_is_a_one_line_error(db: Path) -> None:
    snap = SnapshotManager(db).snapshot()
    data = snap.model_dump(mode="json")
    data["files"][0]["path"] = "../../etc/cron.d/evil"
    with pytest.raises(ManifestError) as err:
        load_snapshot(json.dumps(data).encode(), "snapshots/evil.json")
    msg = str(err.value)
    assert "\n" not in msg and "snapshots/evil.json" in msg and "files.0.path" in msg


def test_newer_format_is_refused_with_an_upgrade_hint() -> None:
    raw = json.dumps({"format": "chromasnap-store", "version": FORMAT_VERSION + 1}).encode()
    with pytest.raises(ManifestError, match="newer chromasnap"):
        load_config(raw, "config.json")


def test_garbage_is_a_one_line_error() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_config(b"\x00\xffnot json", "config.json")


def test_json_schema_covers_every_document() -> None:
    schemas = json_schemas()
    assert schemas["format_version"] == FORMAT_VERSION
    assert {"store_config", "snapshot", "chunk_list", "record_index"} <= set(schemas)
    assert "wal" in schemas["snapshot"]["properties"]
    json.dumps(schemas)  # serializable as is


def test_a_format_1_document_rewritten_keeps_its_id_and_its_readers() -> None:
    """A snapshot written before `records` existed, then rewritten by this version (a
    verification appended): same id, no new key, so the older chromasnap still reads it."""
    from datetime import UTC, datetime

    from chromasnap.manifest import Snapshot, Verification, WalState, dumps, load_snapshot, snapshot_id

    doc = Snapshot(
        id="0" * 64,
        created_at=datetime.now(UTC),
        reason="manual",
        source="/data/chroma",
        wal=WalState(journal_mode="delete"),
    ).model_dump(mode="json")
    del doc["records"]
    doc["format_version"] = 1
    doc["id"] = snapshot_id(doc)
    raw = json.dumps(doc).encode()
    snap = load_snapshot(raw, "old.json")
    snap.verifications.append(
        Verification(at=datetime.now(UTC), mode="quick", verdict="ok", ok=True, duration_s=0.1)
    )
    again = dumps(snap)
    assert "records" not in json.loads(again)
    assert load_snapshot(again, "old.json").id == doc["id"]
