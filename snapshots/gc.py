"""Prune and garbage collection: remove snapshots by rule, then reclaim their bytes.

References go first, objects after: snapshot documents are deleted, then gc marks every
blob a remaining snapshot references, rewrites packs that hold garbage (live blobs into
new packs), writes one consolidated index for every live pack, and only then deletes old
index files and packs. A crash at any point leaves every referenced blob reachable and
at worst some garbage that the next gc reclaims.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from pydantic import BaseModel

from chromasnap.manifest import PackEntry, Snapshot

from .checker import _chunk_keys
from .errors import StoreError
from .fsutil import crash_point
from .guard import alive
from .records import referenced
from .repository import Repository
from .workdir import SCRATCH, STALE_S

__all__ = ["SCRATCH", "STALE_S", "PruneEntry", "PruneResult", "References", "StoreStats", "gc", "stats"]


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


class References:
    """The blob keys snapshots reference, each chunk list and record index read once.

    Snapshots of an unchanged file share its chunk list (and an unchanged database its
    record index), so the work follows the store's distinct content, not snapshots x
    files: gc and stats used to read and validate every snapshot's chunk lists again (three
    times per prune). An unreadable chunk list or record index stops everything: gc must
    know every reference before it may delete anything.
    """

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.groups: dict[str, frozenset[str]] = {}
        """Chunk list or record index key -> every key it references, itself included."""

    def groups_of(self, snap: Snapshot) -> list[str]:
        """The keys of the chunk lists and the record index `snap` names (each read once)."""
        out: list[str] = []
        if snap.records is not None:
            if snap.records not in self.groups:
                try:
                    self.groups[snap.records] = frozenset(referenced(self.repo, snap))
                except StoreError as exc:
                    raise StoreError(
                        f"snapshot {snap.short_id}: cannot read its record index ({exc}); "
                        "gc stopped before deleting anything"
                    ) from None
            out.append(snap.records)
        for f in snap.files:
            if f.chunk_list not in self.groups:
                try:
                    doc = self.repo.read_chunk_list(f.chunk_list).list
                except StoreError as exc:
                    raise StoreError(
                        f"snapshot {snap.short_id}: cannot read the chunk list of {f.path} ({exc}); "
                        "gc stopped before deleting anything"
                    ) from None
                self.groups[f.chunk_list] = frozenset((f.chunk_list, *_chunk_keys(doc)))
            out.append(f.chunk_list)
        return out

    def of(self, snaps: list[Snapshot]) -> set[str]:
        """Every key any of `snaps` references."""
        groups = {g: None for s in snaps for g in self.groups_of(s)}
        return set().union(*(self.groups[g] for g in groups))


@dataclass
class Usage:
    """Which snapshots reference each blob, and each blob's stored (compressed) size.

    Blobs with the same users share one frozenset, and `by_users` sums their stored sizes,
    so `freed_by` looks at each distinct set of users once, not at every blob."""

    refs: dict[str, frozenset[str]] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)
    by_users: dict[frozenset[str], int] = field(default_factory=dict)


def usage(repo: Repository, snaps: list[Snapshot], refs: References | None = None) -> Usage:
    refs = refs or References(repo)
    users: dict[str, set[str]] = {}  # chunk list or record index -> the snapshots naming it
    for s in snaps:
        for g in refs.groups_of(s):
            users.setdefault(g, set()).add(s.id)
    where: dict[str, list[str]] = {}  # blob -> the groups holding it
    for g in users:
        for key in refs.groups[g]:
            where.setdefault(key, []).append(g)
    u = Usage()
    index = repo.index()
    union: dict[tuple[str, ...], frozenset[str]] = {}
    for key, groups in where.items():
        sig = tuple(groups)
        who = union.get(sig)
        if who is None:
            who = union[sig] = frozenset().union(*(users[g] for g in groups))
        loc = index.get(key)
        size = loc.length if loc else 0
        u.refs[key] = who
        u.stored[key] = size
        u.by_users[who] = u.by_users.get(who, 0) + size
    return u


def freed_by(u: Usage, ids: set[str]) -> int:
    """Stored bytes that removing the snapshots `ids` would free."""
    return sum(size for users, size in u.by_users.items() if users and users <= ids)


def gc(repo: Repository, live_snaps: list[Snapshot], refs: References | None = None) -> tuple[int, int, int]:
    """Reclaim every blob no snapshot in `live_snaps` references. Returns (bytes
    reclaimed, packs rewritten, packs deleted). The caller holds the store lock; `refs`
    may carry what `usage` already read (chunk lists and record indexes never change)."""
    backend = repo.backend
    repo.reset_index()
    live = (refs or References(repo)).of(live_snaps)
    index = repo.index()
    listed = backend.list("packs")
    on_disk = {o.name.rsplit("/", 1)[-1]: o.name for o in listed}
    sizes = {o.name: o.size for o in listed}
    size_before = sum(o.size for o in listed)

    # Each pack's blobs, from the index (packs no index names are orphans: a crashed run's)
    packs: dict[str, list[tuple[str, str, int, int, int]]] = {}
    for key, loc in index.items():
        packs.setdefault(loc.pack, []).append((key, loc.type, loc.offset, loc.length, loc.raw_length))
    for pid in list(packs):
        if pid not in on_disk:
            del packs[pid]  # the index names a pack that is gone; verify reports its blobs
    keep: list[PackEntry] = []
    placed: set[str] = set()
    rewrite: list[str] = []
    # Packs whose blobs are all live keep as they are; the rest are rewritten or dropped.
    for pid, blobs in sorted(packs.items(), key=lambda kv: -sum(1 for b in kv[1] if b[0] in live)):
        if all(b[0] in live and b[0] not in placed for b in blobs):
            keep.append(PackEntry.model_construct(id=pid, size=sizes[on_disk[pid]], blobs=blobs))
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
    old_indexes = repo.index_files()
    new_index = repo.write_index(keep + new_packs)
    old_indexes = [n for n in old_indexes if n != new_index]
    crash_point("gc-indexed")
    for name in old_indexes:
        backend.remove(name)
    crash_point("gc-old-index-removed")
    kept_ids = {p.id for p in keep} | {p.id for p in new_packs}
    deleted = 0
    for pid, name in on_disk.items():
        if pid not in kept_ids:
            backend.remove(name)
            deleted += 1
            if deleted == 1:
                crash_point("gc-first-pack-removed")
    repo.workdir.clean(lambda pid: alive(pid, None))
    _abort_stale_uploads(backend)
    repo.reset_index()
    size_after = sum(o.size for o in backend.list("packs"))
    return size_before - size_after, len(rewrite), deleted


def _abort_stale_uploads(backend: object) -> None:
    """A remote store's unfinished multipart uploads (a killed upload's: invisible, but they
    hold space) are aborted; no writer is active under the store lock gc holds."""
    while not hasattr(backend, "abort_stale_uploads") and hasattr(backend, "inner"):
        backend = backend.inner
    abort = getattr(backend, "abort_stale_uploads", None)
    if abort is not None:
        with contextlib.suppress(StoreError):
            abort()


class SnapshotStats(BaseModel):
    id: str
    created_at: str
    logical_bytes: int
    unique_bytes: int


class StoreStats(BaseModel):
    store_bytes: int
    pack_bytes: int
    referenced_bytes: int
    logical_bytes: int
    dedup_ratio: float
    snapshots: list[SnapshotStats]


def stats(repo: Repository, snaps: list[Snapshot]) -> StoreStats:
    """Store size, logical size, dedup ratio, and what removing each snapshot frees (one
    listing with sizes per folder: no call per file)."""
    u = usage(repo, snaps)
    backend = repo.backend
    files = {o.name: o.size for d in ("packs", "index", "snapshots") for o in backend.list(d)}
    packs = sum(v for k, v in files.items() if k.startswith("packs/"))
    logical = sum(s.totals.logical_bytes for s in snaps)
    per = [
        SnapshotStats(
            id=s.id,
            created_at=s.created_at.isoformat(),
            logical_bytes=s.totals.logical_bytes,
            unique_bytes=freed_by(u, {s.id}),
        )
        for s in snaps
    ]
    return StoreStats(
        store_bytes=sum(files.values()) + backend.stat("config.json"),
        pack_bytes=packs,
        referenced_bytes=sum(u.stored.values()),
        logical_bytes=logical,
        dedup_ratio=(logical / packs) if packs else 0.0,
        snapshots=per,
    )
