"""Prune and garbage collection: remove snapshots by rule, then reclaim their bytes.

References go first, objects after: snapshot documents are deleted, then gc marks every
blob a remaining snapshot references, rewrites packs that hold garbage (live blobs into
new packs), writes one consolidated index for every live pack, and only then deletes old
index files and packs. A crash at any point leaves every referenced blob reachable and
at worst some garbage that the next gc reclaims.
"""

from __future__ import annotations

import json
import re
import stat
import time
from dataclasses import dataclass, field

from blake3 import blake3
from pydantic import BaseModel

from chromasnap.manifest import Snapshot

from .checker import referenced_blobs
from .errors import StoreError
from .fsutil import crash_point
from .repository import INDEX_VERSION, Repository


class PruneEntry(BaseModel):
    id: str
    created_at: str
    reason: str
    tags: list[str]
    keep: bool
    why: list[str]


class PruneResult(BaseModel):
    kept: list[PruneEntry]
    removed: list[PruneEntry]
    reclaimed_bytes: int = 0
    expected_bytes: int = 0
    repacked_packs: int = 0
    deleted_packs: int = 0
    purged_kept_dirs: list[str] = []
    dry_run: bool = False
    duration_s: float = 0.0


@dataclass
class Usage:
    """Which snapshots reference each blob, and each blob's stored (compressed) size."""

    refs: dict[str, set[str]] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)


def usage(repo: Repository, snaps: list[Snapshot]) -> Usage:
    u = Usage()
    index = repo.index()
    for s in snaps:
        for key in _referenced_strict(repo, s):
            u.refs.setdefault(key, set()).add(s.id)
            loc = index.get(key)
            u.stored[key] = loc.length if loc else 0
    return u


def _referenced_strict(repo: Repository, snap: Snapshot) -> set[str]:
    """Like referenced_blobs, but an unreadable chunk list stops everything: gc must know
    every reference before it may delete anything."""
    from .records import referenced

    try:
        referenced(repo, snap)
    except StoreError as exc:
        raise StoreError(
            f"snapshot {snap.short_id}: cannot read its record index ({exc}); "
            "gc stopped before deleting anything"
        ) from None
    for f in snap.files:
        try:
            repo.read_chunk_list(f.chunk_list)
        except StoreError as exc:
            raise StoreError(
                f"snapshot {snap.short_id}: cannot read the chunk list of {f.path} ({exc}); "
                "gc stopped before deleting anything"
            ) from None
    return referenced_blobs(repo, snap)


def freed_by(u: Usage, ids: set[str]) -> int:
    """Stored bytes that removing the snapshots `ids` would free."""
    return sum(u.stored[k] for k, users in u.refs.items() if users and users <= ids)


def gc(repo: Repository, live_snaps: list[Snapshot]) -> tuple[int, int, int]:
    """Reclaim every blob no snapshot in `live_snaps` references. Returns (bytes
    reclaimed, packs rewritten, packs deleted). The caller holds the store lock."""
    backend = repo.backend
    repo.reset_index()
    live: set[str] = set()
    for s in live_snaps:
        live |= _referenced_strict(repo, s)
    index = repo.index()
    on_disk = {name.rsplit("/", 1)[-1]: name for name in backend.list("packs")}
    size_before = sum(backend.size(n) for n in on_disk.values())

    # Each pack's blobs, from the index (packs no index names are orphans: a crashed run's)
    packs: dict[str, list[tuple[str, str, int, int, int]]] = {}
    for key, loc in index.items():
        packs.setdefault(loc.pack, []).append((key, loc.type, loc.offset, loc.length, loc.raw_length))
    for pid in list(packs):
        if pid not in on_disk:
            del packs[pid]  # the index names a pack that is gone; verify reports its blobs
    keep: list[dict[str, object]] = []
    placed: set[str] = set()
    rewrite: list[str] = []
    # Packs whose blobs are all live keep as they are; the rest are rewritten or dropped.
    for pid, blobs in sorted(packs.items(), key=lambda kv: -sum(1 for b in kv[1] if b[0] in live)):
        if all(b[0] in live and b[0] not in placed for b in blobs):
            keep.append({"id": pid, "size": backend.size(on_disk[pid]), "blobs": [list(b) for b in blobs]})
            placed.update(b[0] for b in blobs)
        else:
            rewrite.append(pid)
    writer = repo.writer(dedup=False)
    try:
        for pid in rewrite:
            for key, btype, *_ in packs[pid]:
                if key in live and key not in placed:
                    writer.add_sync(repo.read_blob(key), btype)
                    placed.add(key)
        new_packs = writer.commit(write_index=False)
    except BaseException:
        writer.abort()
        raise
    missing = live - placed
    if missing:
        raise StoreError(
            f"{len(missing)} referenced blobs are in no pack (e.g. {sorted(missing)[0][:16]}); "
            "gc stopped before deleting anything: run verify"
        )
    crash_point("gc-packed")
    doc = json.dumps({"version": INDEX_VERSION, "packs": keep + new_packs}, separators=(",", ":")).encode()
    new_index = f"index/{blake3(doc).hexdigest()}.json"
    old_indexes = [n for n in backend.list("index") if n != new_index]
    backend.write(new_index, doc)
    crash_point("gc-indexed")
    for name in old_indexes:
        backend.remove(name)
    crash_point("gc-old-index-removed")
    kept_ids = {str(p["id"]) for p in keep} | {str(p["id"]) for p in new_packs}
    deleted = 0
    for pid, name in on_disk.items():
        if pid not in kept_ids:
            backend.remove(name)
            deleted += 1
            if deleted == 1:
                crash_point("gc-first-pack-removed")
    _clean_scratch(repo)
    repo.reset_index()
    size_after = sum(backend.size(n) for n in backend.list("packs"))
    return size_before - size_after, len(rewrite), deleted


SCRATCH = re.compile(
    r"(?P<kind>pack|sqlite|hot|verify-[0-9a-f]{12}|diff|find|peek|export|restore-collection)-(?P<pid>[0-9]+)-.*"
)
"""tmp/ entries chromasnap makes: packs being written and SQLite copies (by writers, under
the store lock), and the private folders of verify, diff, find, peek, export and
restore --collection (by readers, without it), each named `<kind>-<pid>-<random>`."""
STALE_S = 24 * 3600


def _clean_scratch(repo: Repository) -> None:
    """Remove the scratch crashed runs left in tmp/ (gc holds the lock: no writer is active).
    A reader's private folder goes once its process is gone (or after a day, should the
    pid have been reused); anything else there is left alone."""
    import shutil

    from .guard import alive

    scratch = repo.backend.scratch_dir()
    horizon = time.time() - STALE_S
    for p in scratch.iterdir():
        m = SCRATCH.fullmatch(p.name)
        if m is None:
            continue
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        writer = m["kind"] in ("pack", "sqlite", "hot")
        if not (writer or not alive(int(m["pid"]), None) or st.st_mtime < horizon):
            continue
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
