"""SnapshotManager: the public Python API that the CLI is a thin layer over.

It holds the paths and the open repository, takes the locks (locks.py) and delegates to
capture, checker, prune, restore, browse and guard; their result types are re-exported.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chromasnap.manifest import RetentionPolicy, Snapshot

from . import locks, swap
from .backend import StorageBackend
from .errors import ChromasnapError, UsageError
from .layout import SQLITE_NAME, check_database, check_layout, default_store, inside, no_database_yet
from .repository import Parents, PasswordSource, Repository
from .retention import parse_replaced, validate
from .stores import is_remote, open_beside_db, open_store


class _OnFirstUse:
    """A module imported when first used: `chromasnap list` loads none of the modules the
    facade delegates to (their pydantic models cost more start-up time than the list).
    Nothing here dodges a cycle: for mypy and the import check they are plain imports."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(f".{self._name}", __package__), attr)


if TYPE_CHECKING:
    from . import aio, browse, capture, checker, extract, gc, guard, mirror, prune, restore, rollforward
    from . import keys as keyfiles
    from . import restored as restored_state
    from .browse import CollectionRestoreResult, DiffResult, ExportResult, FindResult, PeekResult
    from .capture import CaptureStats
    from .checker import HealthReport, VerifyReport
    from .gc import PruneResult, SnapshotStats, StoreStats
    from .guard import WriteGuard
    from .mirror import MirrorResult
    from .restore import RecoverResult, RestoreResult
    from .rollforward import RollForwardReport
else:
    keyfiles = _OnFirstUse("keys")  # argon2 and cryptography: for encrypted stores only
    restored_state = _OnFirstUse("restored")
    aio, browse, capture, checker, extract, gc, guard, mirror, prune, restore, rollforward = map(
        _OnFirstUse,
        (
            "aio",
            "browse",
            "capture",
            "checker",
            "extract",
            "gc",
            "guard",
            "mirror",
            "prune",
            "restore",
            "rollforward",
        ),
    )

__all__ = ["SQLITE_NAME", "SnapshotManager", "SnapshotStats", "StoreStats", "WriteGuard", "check_database"]
__all__ += ["check_layout", "default_store", "no_database_yet"]  # and the names manager.py held before
_LAZY = {"SnapshotStats": "gc", "StoreStats": "gc", "WriteGuard": "guard"}  # re-exported, on first use
Progress = Callable[[int], None]


def __getattr__(name: str) -> Any:
    """The result types re-exported here, imported on first use (see _OnFirstUse)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __package__), name)


class SnapshotManager:
    """Snapshots of one Chroma database directory kept in one store.

    >>> mgr = SnapshotManager("./chroma")            # store: ./chroma.snapshots
    >>> snap = mgr.snapshot(reason="manual", tags=["nightly"])
    >>> mgr.extract(snap.id, "./chroma-copy")
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None,
        store_path: str | os.PathLike[str] | None = None,
        *,
        backend: StorageBackend | None = None,
        allow_foreign_owner: bool | None = None,
        password: PasswordSource | None = None,
        mirror_password: PasswordSource | None = None,
        endpoint_url: str | None = None,
        no_cas: bool | None = None,
        connections: int | None = None,
    ) -> None:
        """`store_path` is a directory or a remote store's URL (`s3://bucket/prefix`: see
        stores.py; `endpoint_url`, `no_cas` and `connections` apply to it).
        `allow_foreign_owner` reads a store another user owns (refused by default: they
        could have crafted it); None takes CHROMASNAP_ALLOW_FOREIGN_OWNER. `password` is
        asked only if the store is encrypted (None: CHROMASNAP_PASSWORD* or a prompt);
        `mirror_password` only if the mirror is, or mirroring creates it (None: the
        environment, never a prompt: `password.read_mirror_password`)."""
        self._password = password  # issue 17
        self._mirror_password = mirror_password
        self._mirror_codecs: dict[str, Any] = {}
        if db_path is None and store_path is None:
            raise UsageError("no database given: use --db PATH or set CHROMASNAP_DB")
        self.db_path = Path(os.path.abspath(db_path)) if db_path is not None else None
        remote = store_path is not None and is_remote(store_path)
        if remote:
            assert store_path is not None
            backend = backend or open_store(
                store_path, endpoint_url=endpoint_url, no_cas=no_cas, connections=connections
            )
        if store_path is not None and not remote:
            self.store_path: Path | None = Path(os.path.abspath(store_path))
        elif remote:
            self.store_path = None
        else:
            assert self.db_path is not None
            self.store_path = default_store(self.db_path)
        self.finished_swap: str | None = None
        """What was done to a restore a crash had interrupted (done before anything else)."""
        self.warnings: builtins.list[str] = []
        """Things found and deliberately not acted upon (a swap journal that is not this
        database's own); the CLI prints them."""
        if self.db_path is not None:
            if self.store_path is not None:
                check_layout(self.db_path, self.store_path)
            self.finished_swap = swap.finish_interrupted(self.db_path)
            if self.finished_swap and self.finished_swap.startswith(swap.IGNORED):
                self.warnings.append(self.finished_swap)
                self.finished_swap = None
        elif self.store_path is not None and self.store_path.exists() and not self.store_path.is_dir():
            raise UsageError(f"the store path {self.store_path} exists and is not a directory")
        if backend is None:
            assert self.store_path is not None
            backend = open_store(self.store_path, allow_foreign_owner=allow_foreign_owner)
        self.backend: StorageBackend = backend
        self._local: StorageBackend | None = backend
        """Where the database write lock and the write intents live: the store itself when
        it is local, a directory beside the database when it is remote (stores.py)."""
        if not backend.is_local:
            self._local = open_beside_db(self.db_path) if self.db_path is not None else None
        self._remote_options: dict[str, Any] = {"endpoint_url": endpoint_url, "no_cas": no_cas}
        self.last_mirror: MirrorResult | None = None
        """How the last `snapshot()` was mirrored (None: no mirror is set)."""
        self._repo: Repository | None = None
        self.problems: builtins.list[str] = []
        """Messages about unreadable snapshots found by the last `list()`, then what it
        ignored without harm (stray names, invalid catalog entries, damaged index files)."""
        self.last_duration_s = 0.0
        self.last_capture: CaptureStats | None = None
        """How the last `snapshot()` read the database (folders re-read, and why)."""
        self._holding_write_lock = 0
        self._parents = Parents(self.db_path)

    # --- reading ------------------------------------------------------------------

    @property
    def store(self) -> str:
        """The store's printable location (a directory, or `s3://bucket/prefix`)."""
        return self.backend.location

    @property
    def local(self) -> StorageBackend:
        """The machine-local side: the database write lock and write intents (see `_local`)."""
        if self._local is None:
            raise UsageError("this needs the database: use --db PATH or set CHROMASNAP_DB")
        return self._local

    @property
    def repo(self) -> Repository:
        if self._repo is None:
            self._repo = Repository.open(self.backend, self._password)
        return self._repo

    def list(self) -> builtins.list[Snapshot]:
        """Every readable snapshot, oldest first (see `problems` for unreadable ones)."""
        if not self.backend.exists():
            return []
        snaps, problems = self.repo.snapshots()
        self.problems = problems + self.repo.notes + sorted(self.repo.index_problems.values())
        return snaps

    def get(self, ref: str) -> Snapshot:
        """The snapshot with this id, unique id prefix, or `latest`."""
        return self.repo.load_snapshot(self.repo.resolve(ref), cached=True)

    # --- writing ------------------------------------------------------------------

    def snapshot(
        self,
        reason: str = "manual",
        tags: Sequence[str] = (),
        note: str | None = None,
        progress: Progress | None = None,
        *,
        exclusive: bool = False,
        wait: bool = True,
    ) -> Snapshot:
        """Capture the database now; returns the new snapshot's record. Unchanged files are
        taken from the newest snapshot of the same database without being read.

        `exclusive` takes the database write lock first (a scheduled snapshot then never lands
        inside another process's guarded write), waiting up to CHROMASNAP_LOCK_TIMEOUT, or with
        `wait=False` raising `WriterBusy` at once; inside this manager's own `before_write`
        block the lock is already held."""
        db_path = self._need_db()
        check_database(db_path)
        capture.check_tags(tags)
        exclusive = exclusive and not self._holding_write_lock
        with (
            self._write_lock(wait=wait) if exclusive else contextlib.nullcontext(),
            locks.store_lock(self.backend),
        ):
            repo = self._repo = self._fresh_repo(create=True)
            t0 = time.monotonic()
            parent = self._parents.newest(repo)
            restored = restored_state.load(self._local, repo, db_path)  # after a restore
            snap, self.last_capture = capture.take_snapshot(
                repo, db_path, parent, reason, tags, note, progress, restored
            )
            self._parents.add(snap)
            self.last_duration_s = time.monotonic() - t0
        self.last_mirror = None
        url = self.repo.config.retention.mirror
        if url:  # after the store lock is let go; a failure is recorded, never raised
            self.last_mirror = mirror.mirror_snapshots(self.repo, url, [snap.id], **self._mirror_options())
        return snap

    def _need_db(self) -> Path:
        if self.db_path is None:
            raise UsageError("this needs the database: use --db PATH or set CHROMASNAP_DB")
        return self.db_path

    def _create_store(self) -> None:
        """Open the store, creating an empty one if there is none (under the store lock)."""
        with locks.store_lock(self.backend):
            self._repo = self._fresh_repo(create=True)

    def extract(self, ref: str, target: str | os.PathLike[str], progress: Progress | None = None) -> Path:
        """Write snapshot `ref` into `target`, a new or empty directory; every byte is checked."""
        snap = self.get(ref)
        dest = Path(os.path.abspath(target))
        real = Path(os.path.realpath(dest))
        if self.store_path is not None and inside(real, Path(os.path.realpath(self.store_path))):
            raise UsageError(f"{dest} is inside the store; extract somewhere else")
        return extract.extract(self.repo, snap, dest, progress)

    # --- integrity ----------------------------------------------------------------

    def verify(
        self,
        ref: str,
        quick: bool = False,
        python: str | None = None,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> VerifyReport:
        """Check one snapshot: every stored byte, then (unless `quick`) open it with chromadb
        (or the interpreter `python`) in a child process. The result is recorded in the
        snapshot's history."""
        return self.verify_many([ref], quick=quick, python=python, timeout=timeout, progress=progress)[0]

    def verify_many(
        self,
        refs: Sequence[str] | None = None,
        quick: bool = False,
        python: str | None = None,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> builtins.list[VerifyReport]:
        """`verify` for several snapshots (all when `refs` is None), reading shared files once."""
        self.repo.refresh_index()  # another process may have pruned since this manager looked
        snaps = [self.get(r) for r in refs] if refs is not None else self.list()
        named = refs is not None
        return checker.verify_many(self.repo, snaps, self.list, named, quick, python, timeout, progress)

    def health(
        self, in_place: bool = False, python: str | None = None, timeout: float | None = None
    ) -> HealthReport:
        """Probe the live database: a private consistent copy by default (a crash or a
        rolled-back journal then touches only the copy), the directory itself if `in_place`."""
        return checker.health(self._need_db(), in_place, python, timeout)

    # --- restore, guarded writes, recovery -------------------------------------------

    def restore(
        self,
        ref: str,
        verify: bool = True,
        backup: bool = True,
        force: bool = False,
        python: str | None = None,
        timeout: float | None = None,
    ) -> RestoreResult:
        """Replace the live database with snapshot `ref`, atomically; the replaced
        directory is kept (see `kept`). Takes the database write lock."""
        with self._write_lock():
            return restore.restore(self, ref, verify, backup, force, python, timeout)

    def recover(
        self,
        rollback_interrupted: bool = True,
        reset: bool = False,
        python: str | None = None,
        timeout: float | None = None,
        *,
        roll_forward: bool = True,
    ) -> RecoverResult:
        """Run at start-up, before opening a client: finish an interrupted swap, probe the
        database, and if it is broken (or a guarded write died and `rollback_interrupted`)
        restore the newest snapshot that verifies, the interrupted write's first.

        After restoring a broken database, `roll_forward` applies what the replaced one
        still holds past the snapshot (`roll_forward_from`; not after rolling back an
        interrupted guarded write), and finishes a roll-forward a crash interrupted."""
        db = self._need_db()
        if db.exists() and not db.is_dir():  # refuse before creating anything beside it
            raise UsageError(f"database {db} is not a directory")
        if not self.backend.exists():
            # No store: nothing to restore and no guarded write ever ran here, so no lock is
            # needed to look, and none is taken: recover creates nothing (no empty store).
            # Only moving a database aside (reset) takes the lock, and looks again under it.
            result = restore.recover(self, rollback_interrupted, False, python, timeout)
            if result.action != "failed" or not reset:
                return result
        with self._write_lock():
            # roll forward past the restored snapshot (rollforward.py, issue 18)
            undo = rollforward.interrupted_writes(self) if rollback_interrupted else set()
            result = restore.recover(self, rollback_interrupted, reset, python, timeout)
            return rollforward.after_recover(self, result, roll_forward, python, timeout, undo)

    def roll_forward_from(
        self, kept: str | os.PathLike[str], python: str | None = None, timeout: float | None = None
    ) -> RollForwardReport:
        """Apply to the database what the replaced directory `kept` (see `kept`) holds past
        the snapshot it was restored from: records added, changed and deleted since,
        collections created and dropped since, each vector bit-exact or listed as lost
        (docs/recovery.md). A guarded write (pre-roll-forward snapshot); idempotent."""
        return rollforward.roll_forward(self, kept, python, timeout)

    def open_client(self, **kwargs: object) -> object:
        """`recover()`, then `chromadb.PersistentClient(path=db)`: one call at start-up.

        On a fresh start (no database yet) the client creates the database."""
        result = self.recover()
        if result.action == "failed":
            raise ChromasnapError(f"cannot recover {self.db_path}: {result.reason}")
        import chromadb  # lazy: chromadb is imported only by an application opening its client

        return chromadb.PersistentClient(path=str(self.db_path), **kwargs)  # type: ignore[arg-type]

    def kept(self) -> builtins.list[Path]:
        """Replaced databases kept by restore and recover, oldest first."""
        return swap.kept_dirs(self._need_db())

    def purge_kept(self) -> builtins.list[Path]:
        """Delete the kept replaced databases; returns what was removed."""
        gone = self.kept()
        for p in gone:
            shutil.rmtree(p)
        return gone

    def before_write(
        self,
        reason: str = "",
        tags: Sequence[str] = (),
        note: str | None = None,
        snapshot_reason: str = "pre-write",
    ) -> WriteGuard:
        """Guard a write: `with mgr.before_write(reason="index docs"):` or as a decorator.

        Takes the database write lock, snapshots (reason `snapshot_reason`), leaves a durable
        write intent for `recover` should the process die, and clears it when the block ends;
        the block's value is the pre-write snapshot. On the first run (no database yet, or an
        empty directory) nothing is snapshotted, the value is None, the directory is created
        and the intent names "no database" as the state to return to (docs/integration.md)."""
        return guard.WriteGuard(self, reason, tags, note, snapshot_reason)

    @contextlib.contextmanager
    def _write_lock(self, wait: bool = True) -> Iterator[object]:
        """The database write lock (locks.write_lock), counted so that a snapshot inside this
        manager's own guarded write does not wait for itself."""
        with locks.write_lock(self.local, self.db_path, wait, lambda: guard.write_lock_holder(self.local)):
            self._holding_write_lock += 1
            try:
                yield self
            finally:
                self._holding_write_lock -= 1

    # --- browsing by collection and record --------------------------------------------

    def diff(self, a: str, b: str | None = None, ids: bool = False, limit: int = 100) -> DiffResult:
        """What changed from snapshot `a` to snapshot `b` (default: the live database): per
        collection the records added, removed and changed (with `ids`, up to `limit` of
        each), collections created, dropped or recreated, and the files that differ."""
        return browse.diff(self, a, b, ids, limit)

    def find(self, record_id: str, collection: str | None = None) -> FindResult:
        """Every snapshot holding `record_id`, oldest first, with what changed between
        consecutive snapshots of the same database (appeared, changed, vanished)."""
        return browse.find(self, record_id, collection)

    def peek(
        self, ref: str, collection: str, limit: int = 10, ids: Sequence[str] | None = None
    ) -> PeekResult:
        """Records (id, document, metadata) of one collection of a snapshot; no chromadb."""
        return browse.peek(self, ref, collection, limit, builtins.list(ids) if ids else None)

    def export(
        self,
        ref: str,
        collection: str,
        out: str | os.PathLike[str],
        python: str | None = None,
        timeout: float | None = None,
    ) -> ExportResult:
        """Write ids, documents, metadatas and embeddings of one collection of a snapshot to
        `out` as JSON lines (read by chromadb in a child; written atomically)."""
        return browse.export(self, ref, collection, out, python, timeout)

    def restore_collection(
        self,
        ref: str,
        collection: str,
        as_name: str | None = None,
        replace: bool = False,
        force: bool = False,
        python: str | None = None,
        timeout: float | None = None,
    ) -> CollectionRestoreResult:
        """Bring one collection of snapshot `ref` back into the live database (as `as_name`),
        bit-exactly, as a guarded write; other collections stay as they are (see browse.py)."""
        return browse.restore_collection(self, ref, collection, as_name, replace, force, python, timeout)

    # --- retention ---------------------------------------------------------------------

    def policy(self) -> RetentionPolicy:
        """The store's retention rules."""
        return self.repo.config.retention

    def set_policy(self, policy: RetentionPolicy) -> RetentionPolicy:
        """Replace the store's retention rules (validated; written atomically)."""
        validate(policy)
        with locks.store_lock(self.backend):
            repo = self._repo = self._fresh_repo()
            repo.config.retention = policy
            repo.save_config()
        return policy

    def pin(self, ref: str, pinned: bool = True) -> Snapshot:
        """Pin a snapshot so that no retention rule removes it (or unpin it)."""
        with locks.store_lock(self.backend):
            snap = self.get(ref)
            snap.pinned = pinned
            self.repo.save_snapshot(snap)
        return snap

    def prune(self, policy: RetentionPolicy | None = None, dry_run: bool = False) -> PruneResult:
        """Remove the snapshots the rules (the store's, or `policy` for this run) do not
        keep, then reclaim every byte no remaining snapshot references."""
        t0 = time.monotonic()
        with locks.store_lock(self.backend):
            repo = self._repo = self._fresh_repo()
            rules = policy or repo.config.retention
            result = prune.prune(repo, rules, dry_run, self._local)
            if rules.keep_replaced and self.db_path is not None:
                rule = parse_replaced(rules.keep_replaced)
                result.purged_kept_dirs = prune.prune_kept(self.kept(), rule, dry_run)
        result.duration_s = time.monotonic() - t0
        return result

    # --- remote store locks ---------------------------------------------------------------

    def break_stale_lock(self) -> builtins.list[str]:
        """`unlock --stale`: free a remote store's lease (or lock objects) whose holder let it
        expire; a live holder is refused (UsageError). Returns what was broken, described.
        A local store's lock is flock(2), released by the kernel when its holder dies."""
        if self.backend.is_local:
            return []
        from . import lease

        now = time.time()
        return [
            f"{r.name}: {r.info.describe(now) if r.info else r.problem}"
            for r in lease.break_stale(self.backend)
        ]

    # --- mirroring ----------------------------------------------------------------------

    def set_mirror(self, url: str | None) -> RetentionPolicy:
        """Copy each new snapshot to the store `url` from now on (None: stop mirroring)."""
        policy = self.policy().model_copy()
        policy.mirror = mirror.check_url(url) if url else None
        return self.set_policy(policy)

    def unmirrored(self, snaps: builtins.list[Snapshot] | None = None) -> builtins.list[Snapshot]:
        """Snapshots not yet copied to the mirror (none when no mirror is set), among `snaps`
        (a `list()` just made: not listed again) or every snapshot."""
        url = self.policy().mirror if self.backend.exists() else None
        if not url:
            return []
        return mirror.unmirrored(self.list() if snaps is None else snaps, url)

    def mirror(self) -> MirrorResult:
        """Copy every snapshot not yet on the mirror (the backlog of failed mirrorings)."""
        url = self.policy().mirror
        if not url:
            raise UsageError("no mirror is set: use `chromasnap policy set --mirror URL`")
        ids = [s.id for s in self.unmirrored()]
        return mirror.mirror_snapshots(self.repo, url, ids, **self._mirror_options())

    def _mirror_options(self) -> dict[str, Any]:
        return {**self._remote_options, "password": self._mirror_password, "codecs": self._mirror_codecs}

    def stats(self) -> StoreStats:
        """Store size, logical size, dedup ratio, and what removing each snapshot frees."""
        return gc.stats(self.repo, self.list())

    # --- asyncio: the same calls, their blocking work in a worker thread (aio.py) ------

    def before_write_async(
        self,
        reason: str = "",
        tags: Sequence[str] = (),
        note: str | None = None,
        snapshot_reason: str = "pre-write",
    ) -> contextlib.AbstractAsyncContextManager[Snapshot | None]:
        """`async with mgr.before_write_async(reason=...)`: `before_write` for asyncio (docs/asyncio.md)."""
        return aio.before_write(self, reason, tags, note, snapshot_reason)

    async def snapshot_async(
        self,
        reason: str = "manual",
        tags: Sequence[str] = (),
        note: str | None = None,
        progress: Progress | None = None,
        *,
        exclusive: bool = False,
        wait: bool = True,
    ) -> Snapshot:
        """`snapshot` in a worker thread; cancelled mid-capture, it stores nothing referenced."""
        return await aio.snapshot(self, reason, tags, note, progress, exclusive=exclusive, wait=wait)

    async def recover_async(
        self,
        rollback_interrupted: bool = True,
        reset: bool = False,
        python: str | None = None,
        timeout: float | None = None,
    ) -> RecoverResult:
        """`recover` in a worker thread, in turn with this loop's guarded writes of the store."""
        return await aio.recover(self, rollback_interrupted, reset, python, timeout)

    async def health_async(
        self, in_place: bool = False, python: str | None = None, timeout: float | None = None
    ) -> HealthReport:
        """`health` in a worker thread (the probe itself is a child process)."""
        return await aio.health(self, in_place, python, timeout)

    # --- encryption (issue 17): init and key files ----------------------------------------

    def init(self, encrypt: bool | None = None, kdf: keyfiles.Kdf | None = None) -> Repository:
        """Create the store explicitly; `encrypt` None: encrypted for a remote store (the hook
        for remote URLs: any backend that is not local), plain for a local path."""
        if encrypt is None:
            encrypt = not self.backend.is_local
        with locks.store_lock(self.backend):
            self._repo = Repository.create(self.backend, self._password, encrypt=encrypt, kdf=kdf)
        return self._repo

    def keys(self) -> tuple[builtins.list[keyfiles.KeyFile], builtins.list[str], str]:
        """The store's readable key files (oldest first), one message per damaged one, and
        the id of the key the password opened (the store is opened: a wrong password fails)."""
        repo = self._encrypted()
        found, problems = keyfiles.list_keys(self.backend)
        assert repo.key_id is not None
        return found, problems, repo.key_id

    def add_key(self, new_password: str, kdf: keyfiles.Kdf | None = None) -> keyfiles.KeyFile:
        """A new key file opening the store with `new_password` (durable, read back)."""
        with locks.store_lock(self.backend):
            repo = self._encrypted()
            return keyfiles.add_key(self.backend, repo.config.id, repo.master_key(), new_password, kdf=kdf)

    def remove_key(self, key_id: str) -> None:
        """Remove a key file; refused for the key this password opened, and for the last one."""
        with locks.store_lock(self.backend):
            repo = self._encrypted()
            assert repo.key_id is not None
            keyfiles.remove_key(self.backend, repo.config.id, key_id, opened_with=repo.key_id)

    def change_password(self, new_password: str, kdf: keyfiles.Kdf | None = None) -> keyfiles.KeyFile:
        """Replace the key file the password opened by one for `new_password` (a new id):
        the new file is durable before the old one goes; no pack or document is touched."""
        with locks.store_lock(self.backend):
            repo = self._encrypted()
            assert repo.key_id is not None
            new = keyfiles.change_password(
                self.backend, repo.config.id, repo.master_key(), repo.key_id, new_password, kdf=kdf
            )
            repo.key_id = new.id
            return new

    def _fresh_repo(self, create: bool = False) -> Repository:
        """The store read afresh under the store lock; an encrypted store's key, once
        unwrapped by this manager, is reused (the KDF runs once per manager)."""
        earlier = self._repo
        if earlier is not None and earlier.codec.encrypted and self.backend.exists():
            repo = earlier.reopen()
        elif create:
            repo = Repository.open_or_create(self.backend, self._password)
        else:
            repo = Repository.open(self.backend, self._password)
        if earlier is not None:
            repo.adopt_index(earlier)  # only what changed since is read
        return repo

    def _encrypted(self) -> Repository:
        repo = self.repo
        if not repo.codec.encrypted:
            raise UsageError(f"the store at {self.backend.location} is not encrypted: it has no keys")
        return repo
