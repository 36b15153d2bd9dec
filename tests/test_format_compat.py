"""Store format 3 as the code before issue 15 wrote it (commit f916320): a committed store
(tests/fixtures/store-v3, built by tests/fixtures/build_store_v3.py) is read, verified,
extracted, restored and pruned by this code, and the documents this code writes itself
(index files, the catalog, the lock owner) are byte for byte what the old code wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from blake3 import blake3

from chromasnap.manifest import CatalogDoc, IndexDoc, LockOwner, RetentionPolicy
from chromasnap.snapshots import SnapshotManager

FIXTURE = Path(__file__).parent / "fixtures" / "store-v3"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
FIRST, SECOND = EXPECTED["snapshots"]


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): blake3(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A private copy of the committed store, private as a store is (0700 folders, 0600 files)."""
    dest = tmp_path / "store"
    shutil.copytree(FIXTURE / "store", dest)
    for p in [dest, *dest.rglob("*")]:
        p.chmod(0o700 if p.is_dir() else 0o600)
    return dest


def test_documents_are_written_as_the_old_code_wrote_them() -> None:
    for path in (FIXTURE / "store" / "index").glob("*.json"):
        raw = path.read_bytes()
        assert IndexDoc.model_validate_json(raw).to_json() == raw
        assert path.stem == blake3(raw).hexdigest()
    raw = (FIXTURE / "store" / "catalog.json").read_bytes()
    assert CatalogDoc.model_validate_json(raw).to_json() == raw
    raw = (FIXTURE / "store" / "lock.owner").read_bytes()
    assert LockOwner.model_validate_json(raw).to_json() == raw


def test_old_store_is_listed_verified_and_extracted(store: Path, tmp_path: Path) -> None:
    mgr = SnapshotManager(None, store)
    snaps = mgr.list()
    assert [s.id for s in snaps] == [FIRST, SECOND] and mgr.problems == []
    first, second = snaps
    assert second.pinned and not first.pinned
    assert [(v.mode, v.ok) for v in first.verifications] == [("full", True)]
    for s in snaps:
        assert {c.name: c.records for c in s.wal.collections} == EXPECTED["records"][s.id]
        out = tmp_path / f"out-{s.short_id}"
        mgr.extract(s.id, out)
        assert tree(out) == EXPECTED["files"][s.id]
    reports = mgr.verify_many(quick=True)
    assert [(r.id, r.ok) for r in reports] == [(FIRST, True), (SECOND, True)]
    full = mgr.verify(SECOND)
    assert full.ok and full.mode == "full", full.detail
    assert [v.mode for v in mgr.get(SECOND).verifications] == ["quick", "full"]


def test_old_store_is_restored_then_pruned(store: Path, tmp_path: Path) -> None:
    db = tmp_path / "chroma"
    mgr = SnapshotManager(db, store)
    res = mgr.restore(FIRST[:12], verify=False)
    assert res.id == FIRST
    assert tree(db) == EXPECTED["files"][FIRST]
    before = mgr.stats()
    result = mgr.prune(RetentionPolicy(keep_last=1))
    kept = {e.id for e in result.kept}
    assert SECOND in kept  # the newest and pinned
    assert FIRST in kept  # the newest snapshot that passed a full verification (a safety rule)
    mgr.verify(SECOND)  # now the second is the newest fully verified one ...
    result = mgr.prune(RetentionPolicy(keep_last=1))
    assert [e.id for e in result.removed] == [FIRST]  # ... and the first goes
    assert result.reclaimed_bytes > 0 and mgr.stats().pack_bytes < before.pack_bytes
    assert [s.id for s in SnapshotManager(None, store).list()] == [SECOND]
    out = tmp_path / "after-prune"
    mgr.extract(SECOND, out)
    assert tree(out) == EXPECTED["files"][SECOND]
    assert mgr.verify(SECOND, quick=True).ok
    catalog = json.loads((store / "catalog.json").read_bytes())
    assert catalog == {"version": 1, "snapshots": [SECOND]}
