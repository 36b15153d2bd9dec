"""The repository: a store's config, index, blobs and snapshots, on top of a Backend.

Write order makes a crash harmless: packs first, then the index file naming their
blobs, then the snapshot document. Anything written before a crash but not yet
referenced by a snapshot is garbage that gc reclaims; no snapshot is ever partial.

Every object body goes through the store's `Codec` (crypto.py): as it is in a plain
store, sealed under the object's name in an encrypted one (docs/encryption.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import zstandard

from chromasnap.manifest import (
    ENCRYPTED_STORE_VERSION,
    INDEX_VERSION,
    CatalogDoc,
    ChunkListDoc,
    Encryption,
    IndexDoc,
    ManifestError,
    PackEntry,
    RetentionPolicy,
    Snapshot,
    StoreConfig,
    dumps,
    limits,
    load_chunk_list,
    load_config,
    load_snapshot,
)
from chromasnap.manifest.io import loads, parse_json

from . import locks
from .backend import ObjectInfo, StorageBackend
from .crypto import CIPHER_NAMES, KEYS_FOLDER, AuthenticationError, Codec, PlainCodec, SealedCodec
from .errors import (
    ObjectExists,
    ObjectNotFound,
    PreconditionFailed,
    SnapshotNotFound,
    StoreError,
    UsageError,
)
from .metacache import MetaCache
from .pack import BlobLocation, PackFile, decompress, location, pack_name
from .readahead import WindowReader
from .workdir import WorkDir

if TYPE_CHECKING:
    from . import keys as keyfiles

__all__ = ["INDEX_VERSION", "BlobWriter", "Parents", "PasswordSource", "Repository"]
HEX64 = re.compile(r"[0-9a-f]{64}")
SNAPSHOT_NAME = re.compile(r"snapshots/([0-9a-f]{64})\.json")

# --- encryption (issue 17) -------------------------------------------------------------
PasswordSource = Callable[[], str]
"""Gives the store's password when (and only when) an encrypted store is opened; the
default reads CHROMASNAP_PASSWORD_FILE, _COMMAND, CHROMASNAP_PASSWORD or a terminal."""
POLICY_NAME = "policy.json"
"""An encrypted store's retention rules, sealed (config.json's stay empty)."""


def _unlock(
    backend: StorageBackend, config: StoreConfig, password: PasswordSource | None
) -> tuple[Codec, bytes | None, str | None]:
    """The codec that opens this store, its master key and the id of the key file that opened it.

    A store with key files is encrypted whatever config.json says: a bucket writer who
    removed `encryption` from it must not make the next snapshot write plaintext."""
    has_keys = bool(backend.list(KEYS_FOLDER))
    if config.encryption is None:
        if has_keys:
            raise StoreError(
                f"store {backend.location} has key files but its config.json says it is not "
                "encrypted (edited?); refusing to read or write it"
            )
        return PlainCodec(), None, None
    from . import keys as keyfiles  # argon2 and cryptography: imported for a sealed store only
    from .password import read_password  # a terminal prompt's modules, for a sealed store only

    master, key = keyfiles.open_master_key(backend, config.id, (password or read_password)())
    cipher = {v: k for k, v in CIPHER_NAMES.items()}[config.encryption.cipher]
    return SealedCodec(master, cipher), master, key.id


# --- end encryption ---------------------------------------------------------------------


class Repository:
    """Typed access to one store. Readers need no lock; writers hold `locks.store_lock`.

    The only writer of the store's documents: config, index files (`write_index`), the
    catalog and snapshot documents."""

    def __init__(
        self,
        backend: StorageBackend,
        config: StoreConfig,
        codec: Codec | None = None,
        key_id: str | None = None,
    ) -> None:
        self.backend = backend
        self.config = config
        self.codec: Codec = codec or PlainCodec()
        """Seals and opens every object body, names blobs (crypto.py)."""
        self.key_id = key_id
        """The key file that opened an encrypted store (None: a plain store)."""
        self._master: bytes | None = None
        self.workdir = WorkDir.of(backend)
        """Local scratch (packs being written, private copies): not part of the store."""
        # issue 16: blobs of a remote store's packs are read in windows (readahead.py)
        self._load_pack = backend.load if backend.is_local else WindowReader(backend).load
        self._index: dict[str, BlobLocation] | None = None
        self._dctx = threading.local()
        self._index_lock = threading.Lock()
        self.index_problems: dict[str, str] = {}
        """Index files (by name) that could not be read whole, and why."""
        self.notes: list[str] = []
        """What the last `snapshots()` ignored without harm (stray names, invalid catalog entries)."""
        self.cache = MetaCache.of(backend, config.id)
        """A remote store's local metadata cache (metacache.py); None for a local store."""
        self._listed: dict[str, ObjectInfo] = {}
        """Snapshot documents and index files as this run's last listing gave them: the
        metadata cache serves an object only if it is listed here with the entry's size."""
        self._blobs_pruned = False

    # --- opening ------------------------------------------------------------------

    @classmethod
    def open(
        cls, backend: StorageBackend, password: PasswordSource | None = None, codec: Codec | None = None
    ) -> Repository:
        """Open a store; an encrypted one asks `password` (run only then) or uses `codec`."""
        if not backend.exists():
            raise UsageError(f"no chromasnap store at {backend.location}")
        try:
            config = load_config(
                backend.load_bounded("config.json", limits.MAX_CONFIG), f"{backend.location}/config.json"
            )
        except ManifestError as exc:
            raise StoreError(str(exc)) from None
        key_id = master = None
        if codec is None:
            codec, master, key_id = _unlock(backend, config, password)
        elif codec.encrypted != (config.encryption is not None):
            raise StoreError(f"store {backend.location} is not encrypted as it was when opened")
        repo = cls(backend, config, codec, key_id)
        repo._master = master
        if codec.encrypted:
            repo._load_policy()
        return repo

    @classmethod
    def open_or_create(
        cls, backend: StorageBackend, password: PasswordSource | None = None, **config: Any
    ) -> Repository:
        """Open the store, or create a plain one (the first snapshot's store, as always)."""
        if backend.exists():
            return cls.open(backend, password)
        return cls.create(backend, **config)

    @classmethod
    def create(
        cls,
        backend: StorageBackend,
        password: PasswordSource | None = None,
        *,
        encrypt: bool = False,
        kdf: keyfiles.Kdf | None = None,
        master_key: bytes | None = None,
        **config: Any,
    ) -> Repository:
        """A new store: plain, or encrypted with a new master key wrapped under `password`
        (asked once, confirmed at a terminal). The key file is durable before config.json
        says the store exists, so a crash leaves no store that nothing can open.

        `master_key`: an encrypted store sharing another's master key (`copy --same-key`:
        objects then move between the two unchanged). An encrypted store's `retention` goes
        into its sealed policy.json, never into config.json."""
        if backend.exists():
            raise UsageError(f"a chromasnap store already exists at {backend.location}")
        backend.create()
        if backend.list(KEYS_FOLDER):  # an `init --encrypt` that died before config.json
            raise UsageError(
                f"{backend.location} has key files but no config.json (an interrupted init?): "
                "remove its keys/ folder first"
            )
        store_id = os.urandom(32).hex()
        codec: Codec = PlainCodec()
        key_id = master = None
        rules: RetentionPolicy | None = None
        if encrypt:
            rules = config.pop("retention", None)
            from . import keys as keyfiles  # argon2 and cryptography: for a sealed store only
            from .password import read_password

            config = {**config, "version": ENCRYPTED_STORE_VERSION, "encryption": Encryption()}
            pw = password() if password else read_password(confirm=True)
            master, key = keyfiles.create_master_key(backend, store_id, pw, kdf=kdf, master_key=master_key)
            codec, key_id = SealedCodec(master), key.id
        elif master_key is not None:
            raise UsageError("a master key is for an encrypted store only")
        cfg = StoreConfig(id=store_id, created_at=datetime.now(UTC), **config)
        backend.save("config.json", dumps(cfg))
        repo = cls(backend, cfg, codec, key_id)
        repo._master = master
        if rules is not None and rules != RetentionPolicy():
            repo.config.retention = rules
            repo.save_config()
        return repo

    def reopen(self) -> Repository:
        """The store read afresh (config, index, policy), with the key already unwrapped: a
        long-lived manager derives an encrypted store's key once, not at every snapshot."""
        if not self.codec.encrypted:
            return Repository.open(self.backend)
        repo = Repository.open(self.backend, codec=self.codec)
        if repo.config.id != self.config.id:
            raise StoreError(f"the store at {self.backend.location} was replaced by another store")
        repo.key_id, repo._master = self.key_id, self._master
        return repo

    def master_key(self) -> bytes:
        """The master key of an encrypted store opened by password (for key files and `copy`)."""
        if self._master is None:
            raise UsageError(f"the store at {self.backend.location} was not opened with a key")
        return self._master

    def save_config(self) -> None:
        """Write the config (its retention rules changed; the caller holds the store lock).
        An encrypted store keeps its rules sealed in policy.json, and config.json as it is."""
        if self.codec.encrypted:
            raw = dumps(self.config.retention)
            self.backend.save(POLICY_NAME, self.codec.seal(POLICY_NAME, raw))
            return
        self.backend.save("config.json", dumps(self.config))

    def _load_policy(self) -> None:
        """An encrypted store's retention rules. Damaged, they are reported (as list and
        verify report index files) and left unset, which keeps everything and stops prune,
        rather than stopping every command: `policy set` writes them again."""
        try:
            raw = self._load(POLICY_NAME, limits.MAX_CONFIG)
            self.config.retention = loads(RetentionPolicy, raw, POLICY_NAME, limits.MAX_CONFIG)
        except ObjectNotFound:
            return
        except (StoreError, ManifestError) as exc:
            self.index_problems[POLICY_NAME] = f"{exc}; the retention rules are unset until `policy set`"

    def _load(self, name: str, max_bytes: int, cached: bool = False) -> bytes:
        """A whole document, opened (sealed documents are `overhead` bytes larger). `cached`:
        from the metadata cache if it holds what this run's listing says is in the store."""
        return self.codec.open(name, self._fetch(name, max_bytes + self.codec.overhead, cached))

    def _fetch(self, name: str, limit: int, cached: bool) -> bytes:
        """A document's stored bytes (sealed in an encrypted store: the cache holds those)."""
        cache = self.cache
        if cache is None or not cache.holds(name):
            return self.backend.load_bounded(name, limit)
        listed = self._listed.get(name) if cached else None
        if listed is not None:
            raw = cache.get(name, listed, limit)
            if raw is not None:
                return raw
        raw, tag = self.backend.load_tagged(name, limit)
        cache.put(name, raw, tag)
        return raw

    def _remember(self, folder: str, listing: list[ObjectInfo]) -> None:
        """A complete listing of `folder`: what the cache may serve, and what it may drop."""
        for name in [n for n in self._listed if n.startswith(folder + "/")]:
            del self._listed[name]
        self._listed.update((o.name, o) for o in listing)
        if self.cache is not None:
            self.cache.prune(folder, {o.name for o in listing})

    # --- index --------------------------------------------------------------------

    def index(self) -> dict[str, BlobLocation]:
        """Every known blob: the union of all index files, loaded once, then topped up."""
        if self._index is None:
            self._index = {}
            self._index_files: set[str] = set()
            self.refresh_index()
        return self._index

    def refresh_index(self) -> None:
        """Load index files written since the last look (by this or another process).

        When a known index file is gone, another process's gc consolidated them and moved
        blobs to new packs: the map is reloaded whole, in place (a BlobWriter holds it)."""
        idx = self.index()
        with self._index_lock:
            names = self.index_files()
            if not self._index_files <= set(names):
                idx.clear()
                self._index_files.clear()
                self.backend.close()  # let go of the deleted packs' space
            for name in names:
                if name in self._index_files:
                    continue
                try:
                    raw = self._load(name, limits.MAX_INDEX_FILE, cached=True)
                except ObjectNotFound:
                    continue  # removed by another process's gc since the listing
                except StoreError as exc:
                    self.index_problems[name] = str(exc)
                    self._index_files.add(name)
                    continue
                # A damaged index file (or row) loses only dedup knowledge; the packs still
                # describe themselves, and verify reports what cannot be found.
                problem = self._load_index_file(idx, name, raw)
                if problem:
                    self.index_problems[name] = problem
                self._index_files.add(name)

    def _load_index_file(self, idx: dict[str, BlobLocation], name: str, raw: bytes) -> str | None:
        """Add an index file's valid rows to `idx`; what was wrong with it, if anything."""
        where = f"{self.backend.location}/{name}"
        try:
            doc = parse_json(raw, where, limits.MAX_INDEX_FILE)
            packs = doc["packs"]
            if not isinstance(packs, list):
                raise TypeError("packs is not a list")
        except (ManifestError, KeyError, TypeError) as exc:
            return f"{where} is unreadable ({exc}); ignored"
        bad: list[str] = []
        for pack in packs:
            pid = pack.get("id") if isinstance(pack, dict) else None
            rows = pack.get("blobs") if isinstance(pack, dict) else None
            if not isinstance(pid, str) or not HEX64.fullmatch(pid) or not isinstance(rows, list):
                bad.append("a pack entry without a valid id or blob list")
                continue
            for row in rows:
                try:
                    key, loc = location(pid, row, self.codec.overhead)
                except ValueError as exc:
                    bad.append(str(exc))
                    continue
                idx[key] = loc
        if bad:
            return f"{where}: {len(bad)} invalid entries ignored ({bad[0]})"
        return None

    def index_files(self) -> list[str]:
        listing = self.backend.list("index")
        self._remember("index", listing)
        return [o.name for o in listing]

    def write_index(self, packs: list[PackEntry]) -> str:
        """Durably record where the blobs of `packs` lie, in one new index file named by
        its content's hash; returns its name. (BlobWriter.commit and gc call this.)"""
        raw = IndexDoc.of(packs).to_json()
        name = f"index/{self.codec.blob_key(raw)}.json"
        with contextlib.suppress(ObjectExists):  # the same content, named by its hash
            self.backend.save(name, self.codec.seal(name, raw), create_only=True)
        return name

    def adopt_index(self, earlier: Repository) -> None:
        """Take over the index an earlier opening of the same store loaded, then top it up
        (`refresh_index`: files written since, or everything again after another process's
        gc). A manager's every snapshot reloaded and rechecked every index file: an unchanged
        snapshot's time grew with the store (issue 20's profile: 85% of it)."""
        if earlier is self or earlier._index is None or earlier.config.id != self.config.id:
            return
        if earlier.codec.encrypted != self.codec.encrypted:
            return
        with earlier._index_lock:
            self._index, self._index_files = earlier._index, set(earlier._index_files)
            self.index_problems.update(
                {k: v for k, v in earlier.index_problems.items() if k in earlier._index_files}
            )
        self.refresh_index()

    def indexed(self, name: str, rows: dict[str, BlobLocation]) -> None:
        """Index file `name`, just written, is already in `rows`: when those are this
        repository's index, the next refresh need not read the file back."""
        if rows is self._index:
            with self._index_lock:
                self._index_files.add(name)

    def reset_index(self) -> None:
        """Forget the cached index (after gc rewrote it)."""
        self._index = None

    def has_blob(self, key: str) -> bool:
        return key in self.index()

    def read_blob(self, key: str) -> bytes:
        """The blob's uncompressed bytes, checked against its key."""
        loc = self.index().get(key)
        if loc is None:
            self.refresh_index()
            loc = self.index().get(key)
        if loc is None:
            n = len(self.index_problems)
            refused = f" ({n} index files had entries refused)" if n else ""
            raise StoreError(f"blob {key[:16]} is not in the store's index{refused}")
        cache = self.cache if loc.type == "records" else None  # issue 16: diff and find's
        if cache is not None and not self._blobs_pruned:
            self._blobs_pruned = True
            cache.prune_blobs(self.index())  # entries of blobs gc removed since the last run
        body = cache.get_blob(key, loc.pack, loc.offset, loc.length) if cache else None
        if body is None:
            try:
                body = self._load_pack(pack_name(loc.pack), loc.offset, loc.length)
            except StoreError:  # another process's gc may have moved it since the index was read
                moved = self._moved(key, loc)
                if moved is None:
                    raise
                loc = moved
                body = self._load_pack(pack_name(loc.pack), loc.offset, loc.length)
            if cache is not None:
                cache.put_blob(key, loc.pack, loc.offset, body)
        try:
            body = self.codec.open(key, body)
        except AuthenticationError as exc:  # worded as verify names a damaged blob
            raise StoreError(f"blob {key[:16]} in pack {loc.pack[:16]} is damaged: {exc.reason}") from None
        dctx = getattr(self._dctx, "d", None)
        if dctx is None:
            dctx = self._dctx.d = zstandard.ZstdDecompressor()
        raw = decompress(dctx, body, loc.raw_length, f"blob {key[:16]} in pack {loc.pack[:16]}")
        if len(raw) != loc.raw_length or self.codec.blob_key(raw) != key:
            raise StoreError(f"blob {key[:16]} in pack {loc.pack[:16]} does not match its hash")
        return raw

    def _moved(self, key: str, loc: BlobLocation) -> BlobLocation | None:
        """Where a blob is now, if another process's gc moved it: the index is read again,
        whole (a reader that looked while gc was replacing index files may hold a stale row)."""
        for attempt in range(3):
            with self._index_lock:
                self._index_files.clear()  # the next refresh reloads every index file
            self.refresh_index()
            moved = self.index().get(key)
            if moved is not None and moved != loc:
                return moved
            time.sleep(0.1 * (attempt + 1))  # gc removes old index files right after the new one
        return None

    def read_chunk_list(self, key: str) -> ChunkListDoc:
        try:
            return load_chunk_list(self.read_blob(key), f"chunk list {key[:16]}")
        except ManifestError as exc:
            raise StoreError(str(exc)) from None

    # --- snapshots ----------------------------------------------------------------

    def snapshot_ids(self) -> list[str]:
        """Ids of the documents in snapshots/ (only `<64 hex>.json` names: others are noted)."""
        out = []
        listing = self.backend.list("snapshots")
        self._remember("snapshots", listing)
        for name in (o.name for o in listing):
            m = SNAPSHOT_NAME.fullmatch(name)
            if m:
                out.append(m.group(1))
            else:
                self.notes.append(f"{self.backend.location}/{name} is not a snapshot document name; ignored")
        return out

    def load_snapshot(self, snap_id: str, cached: bool = False) -> Snapshot:
        """A snapshot's document; `cached`: from a remote store's metadata cache when it holds
        the version this run's last listing names (`update_snapshot` reads afresh)."""
        name = f"snapshots/{snap_id}.json"
        try:
            raw = self._load(name, limits.MAX_SNAPSHOT_DOC, cached)
            return load_snapshot(raw, f"{self.backend.location}/{name}", snap_id, self.codec.blob_key)
        except ManifestError as exc:
            raise StoreError(str(exc)) from None

    def snapshots(self) -> tuple[list[Snapshot], list[str]]:
        """All readable snapshots, oldest first, and one message per unreadable one
        (including snapshots the catalog lists whose document is gone)."""
        snaps, problems = [], []
        self.notes = []
        ids = self.snapshot_ids()

        def one(sid: str) -> Snapshot | str:
            try:
                return self.load_snapshot(sid, cached=True)
            except StoreError as exc:
                return str(exc)

        if self.backend.is_local or len(ids) < 2:
            loaded = [one(sid) for sid in ids]
        else:  # issue 16: a remote store's documents are fetched 8 at a time
            with ThreadPoolExecutor(8, thread_name_prefix="chromasnap-docs") as pool:
                loaded = list(pool.map(one, ids))
        for item in loaded:
            if isinstance(item, str):
                problems.append(item)
            else:
                snaps.append(item)
        catalog, trouble = self.catalog()
        if trouble:
            problems.append(trouble)
        for sid in sorted(catalog - set(ids)):
            problems.append(f"snapshot {sid[:12]} is in the catalog but its document is missing (deleted?)")
        snaps.sort(key=lambda s: (s.created_at, s.id))
        return snaps, problems

    # The catalog (catalog.json) lists every snapshot id, so that a deleted snapshot
    # document is reported rather than silently gone. New ids are added after their
    # document is durable; prune removes ids before it deletes documents.

    def catalog(self) -> tuple[set[str], str | None]:
        """The catalog's snapshot ids, and why it is unreadable if it is. Entries that are
        not snapshot ids are noted and dropped (the next catalog write leaves them out)."""
        ids, trouble, _tag = self._read_catalog(versioned=False)
        return ids, trouble

    def _read_catalog(self, versioned: bool) -> tuple[set[str], str | None, str | None]:
        """(ids, why unreadable, version tag of what was read: "" when there is no catalog,
        None when unknown or not `versioned`)."""
        where = f"{self.backend.location}/catalog.json"
        tag: str | None = None
        try:
            try:  # one GET (a HEAD first cost a request per `list` of a remote store)
                if versioned:
                    sealed, tag = self.backend.load_tagged(
                        "catalog.json", limits.MAX_CATALOG + self.codec.overhead
                    )
                    raw = self.codec.open("catalog.json", sealed)
                else:
                    raw = self._load("catalog.json", limits.MAX_CATALOG)
            except ObjectNotFound:
                return set(), None, ""
            doc = parse_json(raw, where, limits.MAX_CATALOG)
            entries = doc["snapshots"]
            if not isinstance(entries, list):
                raise TypeError("snapshots is not a list")
        except (StoreError, ManifestError, KeyError, TypeError) as exc:
            return set(), f"{where} is unreadable ({exc}); ignored", tag
        ids = {e for e in entries if isinstance(e, str) and HEX64.fullmatch(e)}
        invalid = [e for e in entries if not (isinstance(e, str) and HEX64.fullmatch(e))]
        if invalid:
            self.notes.append(
                f"{where}: {len(invalid)} entries are not snapshot ids "
                f"(e.g. {str(invalid[0])[:40]!r}); ignored"
            )
        return ids, None, tag

    def _update_catalog(self, change: Callable[[set[str]], set[str]]) -> None:
        """Read the catalog, `change` its ids, write it back (the caller holds the store lock).

        On a remote store the write is a compare-and-swap (If-Match the ETag read, or
        If-None-Match when there was none): a writer whose lease lapsed unnoticed cannot
        silently drop another's entry; the loser reads again and merges. Under `--no-cas`
        (a server that ignores conditional headers) and on a local store (its flock excludes
        every other writer) the catalog is replaced as before."""
        cas = not self.backend.is_local and not self.backend.no_cas
        for _attempt in range(5):
            ids, _trouble, tag = self._read_catalog(versioned=cas)
            doc = CatalogDoc.model_construct(version=INDEX_VERSION, snapshots=sorted(change(ids)))
            body = self.codec.seal("catalog.json", doc.to_json())
            try:
                if not cas or tag is None:
                    self.backend.save("catalog.json", body)
                elif tag == "":
                    self.backend.save("catalog.json", body, create_only=True)
                else:
                    self.backend.save("catalog.json", body, if_match=tag)
                return
            except (ObjectExists, PreconditionFailed):
                continue  # another writer changed it between our read and write: merge again
        raise StoreError(
            f"{self.backend.location}/catalog.json kept changing while this run updated it "
            "(another writer without the store lock?)"
        )

    def catalog_add(self, snap_id: str) -> None:
        self._update_catalog(lambda ids: ids | {snap_id} | set(self.snapshot_ids()))

    def catalog_remove(self, snap_ids: set[str]) -> None:
        self._update_catalog(lambda ids: (ids | set(self.snapshot_ids())) - snap_ids)

    def resolve(self, ref: str) -> str:
        """Full id from a unique prefix (at least 4 digits) or `latest`."""
        ids = self.snapshot_ids()
        if ref == "latest":
            snaps, _ = self.snapshots()
            if not snaps:
                raise SnapshotNotFound("the store has no snapshots yet")
            return snaps[-1].id
        ref = ref.lower()
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
            raise SnapshotNotFound(f"{ref!r} is not a snapshot id (give 4 or more hex digits, or 'latest')")
        found = [i for i in ids if i.startswith(ref)]
        if not found:
            raise SnapshotNotFound(f"no snapshot matches {ref!r}")
        if len(found) > 1:
            raise SnapshotNotFound(f"{ref!r} matches {len(found)} snapshots; give more digits")
        return found[0]

    def save_snapshot(self, snap: Snapshot) -> None:
        """Replace a snapshot's document (its mutable fields changed: pinned, verifications,
        events); the caller holds the store lock."""
        name = f"snapshots/{snap.id}.json"
        body = self.codec.seal(name, dumps(snap))
        tag = self.backend.save(name, body)
        self._saved(name, body, tag)

    def _saved(self, name: str, body: bytes, tag: str) -> None:
        """A document this process wrote: cached with the write's ETag, and served from the
        cache again only after a new listing names that version."""
        self._listed.pop(name, None)
        if self.cache is not None:
            self.cache.put(name, body, tag or None)

    def create_snapshot(self, snap: Snapshot) -> None:
        """Write a new snapshot's document (named by its content's hash), then list it in
        the catalog; the caller holds the store lock."""
        name = f"snapshots/{snap.id}.json"
        locks.check_lease(self.backend)  # issue 16: a remote store's lease must still be ours
        body = self.codec.seal(name, dumps(snap))
        with contextlib.suppress(ObjectExists):  # the same document, named by its hash
            self._saved(name, body, self.backend.save(name, body, create_only=True))
        self.catalog_add(snap.id)

    def update_snapshot(self, snap_id: str, change: Callable[[Snapshot], None]) -> Snapshot:
        """Read a snapshot's document afresh under the store lock, apply `change` to its
        mutable fields, and write it back."""
        with locks.store_lock(self.backend):
            snap = self.load_snapshot(snap_id)
            change(snap)
            self.save_snapshot(snap)
        return snap

    # --- writing ------------------------------------------------------------------

    def writer(self, workers: int | None = None, dedup: bool = True) -> BlobWriter:
        return BlobWriter(self, workers, dedup)


class BlobWriter:
    """Hashes, deduplicates, compresses and packs blobs on a thread pool.

    `add` returns a Future of the blob key so callers can keep reading while workers
    compress; `commit` finishes the last pack and writes one index file for all new
    packs. Until `commit` returns, nothing written is referenced by anything.
    """

    def __init__(self, repo: Repository, workers: int | None = None, dedup: bool = True) -> None:
        self.repo = repo
        self.level = repo.config.compression.level
        self.pack_size = repo.config.pack_size
        # gc's repacking writes blobs the index already knows (in packs it will delete)
        self.known: dict[str, BlobLocation] = repo.index() if dedup else {}
        self.scratch = repo.workdir.ensure()
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._pack: PackFile | None = None
        self._packs: list[PackEntry] = []
        self._local = threading.local()
        # one more thread than cores: the reading thread waits on I/O part of the time
        default = min(8, (os.cpu_count() or 1) + 1)
        n = workers or int(os.environ.get("CHROMASNAP_WORKERS", 0)) or default
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="chromasnap-blob")
        self._slots = threading.BoundedSemaphore(3 * n)
        uploads = 1 if repo.backend.is_local else 4  # issue 16: a remote store's packs go up in parallel
        self._committer = ThreadPoolExecutor(max_workers=uploads, thread_name_prefix="chromasnap-commit")
        self._commits: list[tuple[Future[None], PackFile]] = []
        self.new_blobs = 0
        self.new_bytes = 0

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
        return c

    def _store(self, chunks: list[bytes], blob_type: str) -> list[str]:
        """Hash a batch, compress the blobs the store lacks, append them to the pack."""
        codec = self.repo.codec
        keys = [codec.blob_key(c) for c in chunks]
        fresh: list[int] = []
        with self._lock:
            for i, key in enumerate(keys):
                if key not in self.known and key not in self._pending:
                    self._pending.add(key)
                    fresh.append(i)
        if not fresh:
            return keys
        comp = self._compressor()
        bodies = [codec.seal(keys[i], comp.compress(chunks[i])) for i in fresh]
        full: list[PackFile] = []
        with self._lock:
            for i, body in zip(fresh, bodies, strict=True):
                if self._pack is None:
                    self._pack = PackFile(self.scratch, self.repo.codec)
                self._pack.add(keys[i], blob_type, body, len(chunks[i]))
                self.new_blobs += 1
                self.new_bytes += len(body)
                if self._pack.size >= self.pack_size:
                    full.append(self._pack)
                    self._pack = None
        for pack in full:  # fsync and rename on the committer thread: workers keep packing
            fut = self._committer.submit(self._finish_pack, pack)
            with self._lock:
                self._commits.append((fut, pack))
        return keys

    def _finish_pack(self, pack: PackFile) -> None:
        try:
            pack_id, local = pack.finish()
            try:
                self.repo.backend.save_file(pack_name(pack_id), local, create_only=True)
            except ObjectExists:  # the same bytes, named by their hash
                local.unlink(missing_ok=True)
        except BaseException:
            pack.abort()
            raise
        with self._lock:
            self._packs.append(PackEntry.model_construct(id=pack_id, size=pack.size, blobs=pack.blobs))

    def add(self, chunks: list[bytes], blob_type: str = "data") -> Future[list[str]]:
        """Queue a batch of blobs (about a MiB keeps per-task overhead small); the future
        gives their keys in order. Blocks while too many batches are in flight."""
        self._slots.acquire()
        fut = self._pool.submit(self._store, chunks, blob_type)
        fut.add_done_callback(lambda _f: self._slots.release())
        return fut

    def add_sync(self, data: bytes, blob_type: str = "data") -> str:
        return self.add([data], blob_type).result()[0]

    def commit(self, write_index: bool = True) -> list[PackEntry]:
        """Finish the last pack and durably record every new blob in one index file
        (gc writes its own consolidated index instead); returns the new packs."""
        self._pool.shutdown(wait=True)
        with self._lock:
            last, self._pack = self._pack, None
        if last is not None and last.blobs:
            self._commits.append((self._committer.submit(self._finish_pack, last), last))
        self._committer.shutdown(wait=True)
        for fut, _pack in self._commits:
            fut.result()  # a failed pack fails the snapshot before anything refers to it
        packs = list(self._packs)
        if self._packs and write_index:
            name = self.repo.write_index(self._packs)
            for pack in self._packs:
                for key, btype, off, length, rawlen in pack.blobs:
                    self.known[key] = BlobLocation(pack.id, btype, off, length, rawlen)
            self.repo.indexed(name, self.known)
        self._packs = []
        return packs

    def abort(self) -> None:
        """Drop the pack being written; packs already committed stay as garbage for gc."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._committer.shutdown(wait=True, cancel_futures=True)
        for fut, pack in self._commits:
            if fut.cancelled():
                pack.abort()
        with self._lock:
            if self._pack is not None:
                self._pack.abort()
                self._pack = None


class Parents:
    """Finds the parent of a new snapshot: the newest snapshot of the same database.

    A document's creation time and source never change, so each is read once per
    instance (a manager keeps one): every snapshot used to read them all, a cost growing
    with the store's history."""

    def __init__(self, source: os.PathLike[str] | None) -> None:
        self.source = str(source)
        self._seen: dict[str, tuple[datetime, str] | None] = {}
        """Snapshot id -> (created_at, source); None: unreadable, never a parent."""
        self._last: Snapshot | None = None

    def add(self, snap: Snapshot) -> None:
        """A snapshot this process just took."""
        self._seen[snap.id], self._last = (snap.created_at, snap.source), snap

    def newest(self, repo: Repository) -> Snapshot | None:
        ids = repo.snapshot_ids()
        for sid in ids:
            if sid not in self._seen:
                try:
                    s = repo.load_snapshot(sid)
                except StoreError:
                    self._seen[sid] = None  # unreadable: never a parent (as before)
                    continue
                self._seen[sid] = (s.created_at, s.source)
                if s.source == self.source:
                    self._last = s
        live = set(ids)
        same = [
            (meta[0], sid)
            for sid, meta in self._seen.items()
            if meta is not None and sid in live and meta[1] == self.source
        ]
        if not same:
            return None
        newest = max(same)[1]
        if self._last is not None and self._last.id == newest:
            return self._last
        return repo.load_snapshot(newest)
