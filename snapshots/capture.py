"""Capturing a live Chroma directory into a repository, consistently.

Order matters: chroma.sqlite3 first (under a SQLite read lock, so no page can tear),
then each segment folder (re-read until none of its files changed during the read).
A vector segment captured newer than the SQLite file only replays queued writes it
already holds; the reverse order could pair old HNSW files with a purged queue.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from blake3 import blake3

from chromasnap.manifest import (
    ChunkListDoc,
    DirEntry,
    Extent,
    FileEntry,
    HnswSplitList,
    PlainList,
    SkippedEntry,
    Snapshot,
    Totals,
    WalState,
    dumps,
    snapshot_id,
)

from . import hnsw
from .children import installed_version
from .errors import Cancelled, CaptureError, UsageError
from .layout import OWN_PREFIX, SQLITE_NAME, SQLITE_SIDE_FILES
from .owner import of_directory
from .records import parent_versions, store_records
from .repository import BlobWriter, Repository
from .restored import Restored
from .sqlite_copy import SqliteCopy
from .sqlite_state import apply_hnsw, read_wal_state_file

__all__ = [
    *("OWN_PREFIX", "SQLITE_NAME", "SQLITE_SIDE_FILES", "SqliteCopy"),
    *("capture", "check_tags", "take_snapshot"),
]
READ_BLOCK = 4 << 20
RETRIES = 4
RACY_NS = 2_000_000_000
"""A file modified this close to the parent's capture may have changed unseen within one
mtime tick, so it is read again instead of trusted (git's "racily clean" rule)."""
RESTORED_RACY_NS = 0
"""The same margin against a restored-state note's time: none beyond "strictly before", since
that time is a ctime of the database's own file system (same clock, same granularity),
taken before the files' stat tuples (restored.py); a later change gets a later ctime."""

Progress = Callable[[int], None]
LIVE_JOURNAL_ACTION = "journal of a transaction in progress; its changes are not captured"
HOT_JOURNAL_ACTION = "hot journal rolled back in a private copy; live files untouched"


STOP: ContextVar[threading.Event | None] = ContextVar("chromasnap_capture_stop", default=None)
"""Set by the asyncio API (aio.py) in the context of its worker thread: once the event is
set (its task was cancelled), a capture stops at its next read block or folder by raising
`Cancelled`, a safe point: nothing it wrote is referenced yet."""


def _no_progress(_n: int) -> None:
    pass


@dataclass
class Scan:
    dirs: list[DirEntry] = field(default_factory=list)
    files: list[tuple[str, os.stat_result]] = field(default_factory=list)
    skipped: list[SkippedEntry] = field(default_factory=list)
    side_files: list[str] = field(default_factory=list)
    root_mode: int = 0o755


def scan(root: Path) -> Scan:
    """Walk the database folder without following symlinks; only regular files are kept."""
    out = Scan(root_mode=stat.S_IMODE(os.stat(root).st_mode))  # a symlinked database: its target

    def walk(rel: str) -> None:
        try:
            with os.scandir(root / rel if rel else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            return  # a folder removed since its parent was listed
        for e in entries:
            path = f"{rel}/{e.name}" if rel else e.name
            if e.name.startswith(OWN_PREFIX):  # chromasnap's own (a restore staged in a mount point)
                if rel:  # never ours below the top: say so (a snapshot may not hold such names)
                    out.skipped.append(
                        SkippedEntry(path=path, kind="reserved", reason="name reserved for chromasnap")
                    )
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone since the listing (a -journal a writer just removed)
            if stat.S_ISLNK(st.st_mode):
                out.skipped.append(SkippedEntry(path=path, kind="symlink", reason="never followed"))
            elif stat.S_ISDIR(st.st_mode):
                out.dirs.append(DirEntry(path=path, mode=stat.S_IMODE(st.st_mode), mtime_ns=st.st_mtime_ns))
                walk(path)
            elif not stat.S_ISREG(st.st_mode):
                out.skipped.append(SkippedEntry(path=path, kind="special", reason="not a regular file"))
            elif not rel and e.name in SQLITE_SIDE_FILES:
                out.side_files.append(e.name)
            else:
                out.files.append((path, st))

    walk("")
    return out


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the data regions of a file, skipping holes (SEEK_DATA/SEEK_HOLE)."""
    extents: list[tuple[int, int]] = []
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            if exc.errno == errno.EINVAL:  # no SEEK_DATA support: all data
                return [(0, size)] if size else []
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, end - start))
        off = end
    return extents


class StreamChunker:
    """Cuts a byte stream into fixed-size chunks and queues them on the BlobWriter in
    batches of about BATCH bytes."""

    BATCH = 2 << 20

    def __init__(self, writer: BlobWriter, size: int) -> None:
        self.writer, self.size = writer, size
        self.buf = bytearray()
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        self.futures: list[Future[list[str]]] = []
        self.sizes: list[int] = []

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        if self.buf:  # complete the partial chunk left by the last feed
            need = self.size - len(self.buf)
            self.buf += view[:need]
            view = view[need:]
            if len(self.buf) < self.size:
                return
            self._emit(bytes(self.buf))
            self.buf = bytearray()
        whole = len(view) - len(view) % self.size
        for i in range(0, whole, self.size):
            self._emit(bytes(view[i : i + self.size]))
        self.buf += view[whole:]

    def _emit(self, chunk: bytes) -> None:
        self.batch.append(chunk)
        self.sizes.append(len(chunk))
        self.batch_bytes += len(chunk)
        if self.batch_bytes >= self.BATCH:
            self._submit()

    def _submit(self) -> None:
        if self.batch:
            self.futures.append(self.writer.add(self.batch))
            self.batch, self.batch_bytes = [], 0

    def finish(self) -> list[tuple[str, int]]:
        if self.buf:
            self._emit(bytes(self.buf))
            self.buf = bytearray()
        self._submit()
        keys = [k for f in self.futures for k in f.result()]
        return list(zip(keys, self.sizes, strict=True))


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino, a.st_ctime_ns) == (
        b.st_size,
        b.st_mtime_ns,
        b.st_ino,
        b.st_ctime_ns,
    )


class Capturer:
    """One snapshot run: reads the database and queues its chunks on a BlobWriter."""

    def __init__(self, repo: Repository, writer: BlobWriter, progress: Progress | None) -> None:
        self.repo, self.writer = repo, writer
        self.chunking = repo.config.chunking
        self.progress = progress or _no_progress
        self.stop = STOP.get()
        self.read_bytes = 0
        self.stats = CaptureStats()

    # --- reading one file -----------------------------------------------------------

    def checkpoint(self) -> None:
        """Stop here if the asyncio task that runs this capture was cancelled (`STOP`)."""
        if self.stop is not None and self.stop.is_set():
            raise Cancelled("the capture was cancelled")

    def _read(self, fd: int, offset: int, length: int) -> Iterator[bytes]:
        end = offset + length
        while offset < end:
            self.checkpoint()
            block = os.pread(fd, min(READ_BLOCK, end - offset), offset)
            if not block:
                raise CaptureError("file shrank while being read")
            offset += len(block)
            self.read_bytes += len(block)
            self.progress(len(block))
            yield block

    def _plain(
        self, fd: int, size: int, chunk: int, keep: bytearray | None = None
    ) -> tuple[PlainList, str, str]:
        """Chunk a file by its data regions; with `keep`, also collect its bytes there (for
        the folder check; left empty for a sparse file)."""
        extents = data_extents(fd, size)
        sparse = extents != ([(0, size)] if size else [])
        h = blake3()
        out = []
        for off, length in extents:
            chunker = StreamChunker(self.writer, chunk)
            if sparse:
                h.update(off.to_bytes(8, "little") + length.to_bytes(8, "little"))
            for block in self._read(fd, off, length):
                h.update(block)
                chunker.feed(block)
                if keep is not None and not sparse:
                    keep += block
            out.append(Extent(offset=off, chunks=chunker.finish()))
        return PlainList(size=size, extents=out), h.hexdigest(), "extents" if sparse else "content"

    def _split(self, fd: int, size: int, header: hnsw.HnswHeader) -> tuple[HnswSplitList, str, str]:
        rec, link = header.size_data_per_element, header.offset_data
        records = size // rec
        links = StreamChunker(self.writer, self.chunking.hnsw_links)
        vectors = StreamChunker(self.writer, self.chunking.hnsw_vectors)
        tail = StreamChunker(self.writer, self.chunking.other)
        h = blake3()
        per_block = max(1, READ_BLOCK // rec)
        off = 0
        while off < records * rec:
            n = min(per_block, records - off // rec) * rec
            block = b"".join(self._read(fd, off, n))
            h.update(block)
            a, b = hnsw.split_records(block, rec, link)
            links.feed(a)
            vectors.feed(b)
            off += n
        for block in self._read(fd, off, size - off):
            h.update(block)
            tail.feed(block)
        doc = HnswSplitList(
            size=size,
            record_size=rec,
            link_bytes=link,
            records=records,
            links=links.finish(),
            vectors=vectors.finish(),
            tail=tail.finish(),
        )
        return doc, h.hexdigest(), "content"

    def read_file(
        self,
        root: Path,
        rel: str,
        chunk: int,
        header: hnsw.HnswHeader | None = None,
        keep: bytearray | None = None,
    ) -> tuple[FileEntry, os.stat_result]:
        """Read one file, retrying while it changes underneath us; with `keep`, the bytes
        read (of the try that is returned) are left there."""
        path = root / rel
        for attempt in range(RETRIES):
            if keep is not None:
                keep.clear()
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as exc:
                raise CaptureError(f"cannot read {path}: {exc.strerror}") from None
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    raise CaptureError(f"{path} is no longer a regular file")
                size = before.st_size
                split = header is not None and data_extents(fd, size) == ([(0, size)] if size else [])
                if split and header is not None:
                    doc: PlainList | HnswSplitList
                    doc, digest, kind = self._split(fd, size, header)
                else:
                    doc, digest, kind = self._plain(fd, size, chunk, keep)
                after = os.fstat(fd)
            except OSError as exc:
                raise CaptureError(f"cannot read {path}: {exc.strerror}") from None
            finally:
                os.close(fd)
            try:
                now = os.lstat(path)
            except FileNotFoundError:
                now = None
            if now is not None and _same(before, after) and _same(before, now):
                return self._entry(rel, before, doc, digest, kind), before
            time.sleep(0.05 * 2**attempt)
        raise CaptureError(
            f"{path} kept changing while being read ({RETRIES} tries); is a writer running "
            "outside before_write?"
        )

    def _entry(
        self, rel: str, st: os.stat_result, doc: PlainList | HnswSplitList, digest: str, kind: str
    ) -> FileEntry:
        list_key = self.writer.add_sync(dumps(ChunkListDoc(list=doc)), "list")
        data = (
            doc.size if isinstance(doc, HnswSplitList) else sum(n for e in doc.extents for _, n in e.chunks)
        )
        return FileEntry(
            path=rel,
            size=st.st_size,
            data_bytes=data,
            mode=stat.S_IMODE(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            inode=st.st_ino,
            hash=digest,
            hash_kind="extents" if kind == "extents" else "content",
            layout=doc.layout,
            chunk_list=list_key,
        )

    # --- chroma.sqlite3 ---------------------------------------------------------------

    def read_sqlite(self, copy: Path, info: dict[str, Any], side: list[str]) -> tuple[FileEntry, WalState]:
        """Chunk the private copy of chroma.sqlite3 that a SqliteCopy child made, and read
        the WAL state from it, so the manifest describes exactly the captured bytes."""
        try:
            fd = os.open(copy, os.O_RDONLY)
            try:
                doc, digest, kind = self._plain(fd, os.fstat(fd).st_size, self.chunking.sqlite)
            finally:
                os.close(fd)
            wal = read_wal_state_file(copy)
        finally:
            copy.unlink(missing_ok=True)
        st = info["stat"]
        wal.journal_mode = str(info["journal_mode"])
        wal.change_counter = int(info["change_counter"])
        wal.leftover_files = sorted(side)
        if info["hot_journal"]:
            wal.hot_journal = True
            wal.journal_action = HOT_JOURNAL_ACTION
        elif info["journal_present"]:
            wal.journal_action = LIVE_JOURNAL_ACTION
        entry = FileEntry(
            path=SQLITE_NAME,
            size=doc.size,
            data_bytes=doc.size,
            mode=int(st["mode"]),
            mtime_ns=int(st["mtime_ns"]),
            ctime_ns=int(st["ctime_ns"]),
            inode=int(st["ino"]),
            hash=digest,
            hash_kind="extents" if kind == "extents" else "content",
            layout="plain",
            chunk_list=self.writer.add_sync(dumps(ChunkListDoc(list=doc)), "list"),
            captured_by=info["how"],
        )
        return entry, wal


def capture(
    repo: Repository,
    writer: BlobWriter,
    root: Path,
    parent: Snapshot | None,
    progress: Progress | None = None,
    restored: Restored | None = None,
) -> Captured:
    """Capture `root`: its dirs, files, skipped entries, WAL state and record index. Files
    unchanged since `parent`, or since the restore that `restored` notes, are not read."""
    cap = Capturer(repo, writer, progress)
    found = scan(root)
    scratch = repo.workdir.ensure()
    prev = {f.path: f for f in parent.files} if parent else {}
    racy_before = int(parent.created_at.timestamp() * 1e9) - RACY_NS if parent else 0
    index = repo.index()
    reused = 0
    source: dict[str, Snapshot] = {}
    """The snapshot each file taken without reading came from (the parent, or the restored one)."""

    def reusable(rel: str, st: os.stat_result) -> FileEntry | None:
        now = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        old = prev.get(rel)
        if (
            old is not None
            and parent is not None
            and (old.size, old.mtime_ns, old.ctime_ns, old.inode) == now
            and st.st_ctime_ns < racy_before
            and old.chunk_list in index
        ):
            source[rel] = parent
            return old.model_copy(update={"captured_by": "parent"})
        # the database as a restore left it (restored.py): the note's stat tuple, a ctime
        # before the note's marker (same file system clock), and the snapshot's own entry
        noted = restored.files.get(rel) if restored is not None else None
        if noted is not None and restored is not None:
            seen, entry = noted
            if (
                (seen.size, seen.mtime_ns, seen.ctime_ns, seen.inode) == now
                and st.st_ctime_ns < restored.note.taken_ns - RESTORED_RACY_NS
                and entry.size == st.st_size
                and entry.chunk_list in index
            ):
                cap.stats.restored_files += 1
                source[rel] = restored.snapshot
                return entry.model_copy(
                    update={
                        "captured_by": "parent",
                        "mtime_ns": st.st_mtime_ns,
                        "ctime_ns": st.st_ctime_ns,
                        "inode": st.st_ino,
                        "mode": stat.S_IMODE(st.st_mode),
                    }
                )
        return None

    files: dict[str, FileEntry] = {}
    stats = dict(found.files)
    if SQLITE_NAME not in stats:
        raise CaptureError(f"{root} has no {SQLITE_NAME}")

    # 1. chroma.sqlite3
    sq_copy: SqliteCopy | None = None
    wal: WalState
    records: str | None = None
    sq_old = reusable(SQLITE_NAME, stats[SQLITE_NAME])
    sq_from = source.get(SQLITE_NAME)
    if (
        sq_old is not None
        and sq_from is not None
        and not found.side_files
        and sq_from.wal.journal_mode == "delete"
        and sq_from.records is not None
    ):
        files[SQLITE_NAME] = sq_old
        # a deep copy through pydantic-core: copy.deepcopy of 1,000 collections' state was
        # the largest part of an unchanged snapshot of the `wide` workload (issue 20)
        wal = WalState.model_validate(sq_from.wal.model_dump())
        records = sq_from.records
        reused += 1
    else:
        # content hashes of the records written since the parent (its index names those
        # of earlier versions); a database's first snapshot records none (docs/format.md)
        inherited = parent_versions(repo, parent)
        sq_copy = SqliteCopy(
            root / SQLITE_NAME,
            scratch / f"sqlite-{os.getpid()}-{os.urandom(4).hex()}",
            records=True,
            since=inherited[0] if inherited else None,
            # kept until the folders are read: Chroma starts no HNSW save meanwhile (test
            # seam CHROMASNAP_NO_HOLD=1, for bench/torn_rate.py's comparison)
            hold=os.environ.get("CHROMASNAP_NO_HOLD") != "1",
        )
        sq_copy.start()  # the SQLite state is fixed from here: folders read next are newer

    # 2. every other file, one folder at a time, consistent within the folder, while the
    #    child copies chroma.sqlite3
    hnsw_info: dict[str, tuple[int | None, bool]] = {}
    by_dir: dict[str, list[tuple[str, os.stat_result]]] = {}
    for rel, st in found.files:
        if rel != SQLITE_NAME:
            by_dir.setdefault(rel.rsplit("/", 1)[0] if "/" in rel else "", []).append((rel, st))
    damage: list[str] = []
    try:
        for folder, members in sorted(by_dir.items()):
            cap.checkpoint()
            entries, elements, warning = _capture_folder(cap, root, folder, members, reusable)
            reused += sum(1 for e in entries if e.captured_by == "parent")
            if warning:
                damage.append(warning)
            elif entries and all(e.captured_by == "parent" for e in entries):
                # unchanged since the parent (or the restored snapshot): so is what it
                # found wrong with it
                mark = f"segment {folder}{DAMAGE_MARK}"
                for snap in {source[e.path].id: source[e.path] for e in entries}.values():
                    damage += [w for w in snap.wal.warnings if w.startswith(mark) and w not in damage]
            for e in entries:
                files[e.path] = e
            if folder:
                names = {m[0].rsplit("/", 1)[-1] for m in members}
                hnsw_info[folder] = (elements, "index_metadata.pickle" in names)
        if sq_copy is not None:
            sq_copy.release()
            cap.stats.lock_held_s = sq_copy.held_s
            info = sq_copy.finish()
            files[SQLITE_NAME], wal = cap.read_sqlite(sq_copy.dest, info, found.side_files)
            if sq_copy.records is not None and "records" in info:
                records = store_records(writer, sq_copy.records, inherited[1] if inherited else [])
            elif info.get("records_error"):
                wal.warnings.append(f"no record index: {info['records_error']}")
            if sq_copy.records is not None:
                sq_copy.records.unlink(missing_ok=True)
    except BaseException:
        if sq_copy is not None:
            sq_copy.kill()
        raise

    # 3. the HNSW side of the WAL state, from the headers just read
    apply_hnsw(wal, hnsw_info)
    wal.warnings = [w for w in wal.warnings if DAMAGE_MARK not in w] + damage

    ordered = [files[rel] for rel, _ in found.files]
    return Captured(found.dirs, ordered, found.skipped, wal, records, cap.read_bytes, reused, cap.stats)


@dataclass
class Captured:
    dirs: list[DirEntry]
    files: list[FileEntry]
    skipped: list[SkippedEntry]
    wal: WalState
    records: str | None
    """Key of the record index blob (None if chroma.sqlite3 could not be indexed)."""
    read_bytes: int
    reused: int
    stats: CaptureStats = field(default_factory=lambda: CaptureStats())


FOLDER_RETRIES = 6
"""Reads of one segment folder before giving up (back-off 0.05 s doubling: 1.55 s in all)."""
AT_REST_READS = 3
AT_REST_S = 1.0
"""A folder that fails the structural check in AT_REST_READS identical reads spanning at
least AT_REST_S (while the SQLite read lock keeps Chroma from starting a save) is damaged
on disk, not caught mid-save: it is captured as found, with a warning."""
CHECKED_FILES = ("header.bin", "link_lists.bin", "index_metadata.pickle")
DAMAGE_MARK = ": inconsistent on disk"
"""Warnings about folders captured damaged read `segment <folder>: inconsistent on disk ...`."""


@dataclass
class CaptureStats:
    """How a capture read the segment folders (for benchmarks and `--debug`)."""

    folders_read: int = 0
    changed_rereads: int = 0
    """Folder re-reads because a file changed while it was read (size, mtime, ctime, inode)."""
    torn_rereads: int = 0
    """Folder reads whose files did not form one save (the structural check): each is
    read again, or the folder is refused or captured as damaged."""
    damaged_folders: int = 0
    """Folders captured as found: inconsistent, and unchanged over AT_REST_S."""
    lock_held_s: float = 0.0
    """Seconds the SQLite read lock was kept while the folders were read."""
    restored_files: int = 0
    """Files taken, without reading them, from the snapshot a restore put in place (the
    restored-state note, restored.py)."""


def _read_small(path: Path, limit: int) -> bytes | str | None:
    """The bytes of a file for the folder check: None if absent, "sparse" or "big" if not read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            return "big"
        if data_extents(fd, size) != ([(0, size)] if size else []):
            return "sparse"
        out = bytearray()
        while len(out) < size:
            block = os.pread(fd, min(READ_BLOCK, size - len(out)), len(out))
            if not block:
                break
            out += block
        return bytes(out)
    finally:
        os.close(fd)


def _capture_folder(
    cap: Capturer,
    root: Path,
    folder: str,
    members: list[tuple[str, os.stat_result]],
    reusable: Callable[[str, os.stat_result], FileEntry | None],
) -> tuple[list[FileEntry], int | None, str | None]:
    """Capture a folder's files so that none changed between the first read and the last,
    and (for a vector segment) so that they form one complete save of the index: the sizes
    and counts of hnsw.folder_problems. Returns the entries, the header's element count,
    and a warning when the folder is damaged on disk (see AT_REST_S)."""
    cap.stats.folders_read += 1
    problem = ""
    last_print: tuple[object, ...] | None = None
    same_reads, same_since = 0, 0.0
    for attempt in range(FOLDER_RETRIES):
        if attempt:
            time.sleep(0.05 * 2 ** (attempt - 1))
        header: hnsw.HnswHeader | None = None
        elements: int | None = None
        names = {rel.rsplit("/", 1)[-1]: rel for rel, _ in members}
        segment = bool(folder) and "header.bin" in names
        if segment:
            try:
                raw = (root / names["header.bin"]).read_bytes()
            except OSError:
                raw = b""
            header = hnsw.parse_header(raw)
            if header is not None:
                elements = header.cur_element_count
        entries: list[FileEntry] = []
        seen: list[tuple[str, os.stat_result]] = []
        kept: dict[str, bytes | str | None] = {}
        sizes: dict[str, int] = {}
        reused_all = True
        for rel, _scanned in members:
            name = rel.rsplit("/", 1)[-1]
            try:
                cur = os.lstat(os.path.join(root, rel))  # (a Path per file: 1,000 folders)
            except FileNotFoundError:
                continue  # removed since the scan: the folder is being rewritten
            old = reusable(rel, cur)
            if old is not None:
                entries.append(old)
                seen.append((rel, cur))
                sizes[name] = old.size
                continue
            reused_all = False
            is_level0 = rel.endswith("/data_level0.bin")
            limit = hnsw.PICKLE_LIMIT if name == "index_metadata.pickle" else hnsw.LINK_LISTS_LIMIT
            keep = bytearray() if segment and name in CHECKED_FILES and cur.st_size <= limit else None
            entry, st_read = cap.read_file(root, rel, cap.chunking.other, header if is_level0 else None, keep)
            entries.append(entry)
            seen.append((rel, st_read))
            sizes[name] = entry.size
            if keep is not None:
                kept[name] = "sparse" if entry.hash_kind == "extents" else bytes(keep)
            elif name in CHECKED_FILES:
                kept[name] = "big"
        stable = True
        for rel, st in seen:
            try:
                stable = stable and _same(st, os.lstat(os.path.join(root, rel)))
            except FileNotFoundError:
                stable = False
        if not stable:
            cap.stats.changed_rereads += 1
            continue
        if not segment or reused_all:  # an unchanged folder passed when its parent was taken
            return entries, elements, None
        for name in CHECKED_FILES:  # files taken from the parent are read for the check only
            if name in names and name not in kept and name in sizes:
                limit = hnsw.PICKLE_LIMIT if name == "index_metadata.pickle" else hnsw.LINK_LISTS_LIMIT
                kept[name] = _read_small(root / names[name], limit)
        files = hnsw.FolderFiles(
            sizes=sizes,
            header=kept.get("header.bin") if isinstance(kept.get("header.bin"), bytes) else None,  # type: ignore[arg-type]
            link_lists=kept.get("link_lists.bin") if "link_lists.bin" in sizes else None,
            pickle=kept.get("index_metadata.pickle") if "index_metadata.pickle" in sizes else None,
        )
        problems = hnsw.folder_problems(files)
        if not problems:
            return entries, elements, None
        problem = "; ".join(problems)
        cap.stats.torn_rereads += 1
        now = time.monotonic()
        fingerprint = tuple((e.path, e.hash, e.size) for e in entries)
        if fingerprint != last_print:
            last_print, same_reads, same_since = fingerprint, 0, now
        same_reads += 1
        if same_reads >= AT_REST_READS and now - same_since >= AT_REST_S:
            cap.stats.damaged_folders += 1
            return (
                entries,
                elements,
                f"segment {folder}{DAMAGE_MARK}, unchanged over {now - same_since:.1f} s, so damaged "
                f"rather than caught mid-save ({problem[:500]}); captured as found: this snapshot "
                "will not verify",
            )
    if problem:
        raise CaptureError(
            f"segment folder {root / folder} could not be read as one complete save of its index "
            f"({FOLDER_RETRIES} tries; last: {problem[:300]}); nothing was stored: is a writer "
            "running outside before_write? try again"
        )
    raise CaptureError(
        f"segment folder {root / folder} kept changing during capture ({FOLDER_RETRIES} tries); "
        "take snapshots from before_write, or while no process writes"
    )


def check_tags(tags: Sequence[str]) -> None:
    """Tags are 1-100 characters without spaces or commas."""
    for t in tags:
        if not t or len(t) > 100 or any(c.isspace() or c == "," for c in t):
            raise UsageError(f"invalid tag {t!r}: use 1-100 characters, no spaces or commas")


def take_snapshot(
    repo: Repository,
    db_path: Path,
    parent: Snapshot | None,
    reason: str,
    tags: Sequence[str],
    note: str | None,
    progress: Progress | None = None,
    restored: Restored | None = None,
) -> tuple[Snapshot, CaptureStats]:
    """Capture `db_path` into `repo` and write the snapshot's document (packs, then the
    index file, then the document and the catalog entry); the caller holds the store lock.
    Unchanged files are taken from `parent` (the newest snapshot of the same database), or
    from the snapshot a restore put in place (`restored`, restored.load)."""
    started = datetime.now(UTC)
    writer = repo.writer()
    try:
        cap = capture(repo, writer, db_path, parent, progress, restored)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    totals = Totals(
        files=len(cap.files),
        logical_bytes=sum(f.size for f in cap.files),
        data_bytes=sum(f.data_bytes for f in cap.files),
        read_bytes=cap.read_bytes,
        new_blobs=writer.new_blobs,
        new_bytes=writer.new_bytes,
        reused_files=cap.reused,
    )
    snap = Snapshot(
        id="0" * 64,
        created_at=started,
        reason=reason,
        tags=list(tags),
        note=note,
        source=str(db_path),
        hostname=socket.gethostname(),
        root_mode=os.stat(db_path).st_mode & 0o7777,  # a symlinked db: its target's
        owner=of_directory(db_path),
        parent=parent.id if parent else None,
        chromasnap_version=installed_version("chromasnap") or "",
        chromadb_version=installed_version("chromadb"),
        totals=totals,
        dirs=cap.dirs,
        files=cap.files,
        skipped=cap.skipped,
        wal=cap.wal,
        records=cap.records,
    )
    snap.id = snapshot_id(snap, repo.codec.blob_key)  # keyed in an encrypted store
    repo.create_snapshot(snap)
    return snap, cap.stats
