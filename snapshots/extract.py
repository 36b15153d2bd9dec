"""Materializing a snapshot into a new directory, checking every byte on the way.

Files are written into a hidden sibling folder and renamed into place only when all of
them are complete and fsynced, so a crash never leaves a half-extracted database where
the user asked for one. Paths from the manifest are checked again here: never trusted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from blake3 import blake3

from chromasnap.manifest import ChunkRef, FileEntry, HnswSplitList, PlainList, Snapshot
from chromasnap.manifest.models import RESERVED_PREFIX, applied_mode

from . import fsutil
from .errors import StoreError, UsageError
from .repository import Repository

Progress = Callable[[int], None]


BATCH = 2 << 20
"""Blobs are read in batches of about this many bytes per pool task (less overhead)."""
WRITES_AHEAD = 2
"""Joined blocks of an hnsw-split file handed to the writing thread and not yet written."""
PENDING_FSYNCS = 64
"""Files written whose fsync is still to come, at most: past this many the oldest is fsynced
(its writeback started when it was finished). Keeping every one open until the end made a
database of thousands of files (1,000 collections: 5,000) fail with EMFILE."""


def read_blobs(
    repo: Repository,
    pool: ThreadPoolExecutor,
    refs: Iterable[ChunkRef],
    write_at: tuple[int, int] | None = None,
) -> Generator[bytes, None, None]:
    """Blob contents in order, read, decompressed and checked a few batches ahead. With
    `write_at` (fd, offset) the pool's threads also write each checked blob at its place in
    that file (pwrite: the kernel's copies into the page cache run beside the hashing).
    Leaving the loop early waits for the batches under way: none writes to the fd after."""
    window: deque[Future[list[bytes]]] = deque()
    batch: list[ChunkRef] = []
    size = 0
    fd, pos = write_at if write_at is not None else (-1, 0)
    try:
        for ref in refs:
            batch.append(ref)
            size += ref[1]
            if size >= BATCH:
                window.append(pool.submit(_read_checked, repo, batch, fd, pos))
                pos += size
                batch, size = [], 0
                if len(window) >= 4:
                    yield from window.popleft().result()
        if batch:
            window.append(pool.submit(_read_checked, repo, batch, fd, pos))
        while window:
            yield from window.popleft().result()
    finally:
        for fut in window:
            fut.cancel()
        wait(window)


def _read_checked(repo: Repository, refs: list[ChunkRef], fd: int = -1, offset: int = 0) -> list[bytes]:
    out = []
    for key, length in refs:
        data = repo.read_blob(key)
        if len(data) != length:
            raise StoreError(f"blob {key[:16]} has {len(data)} bytes, the chunk list says {length}")
        if fd >= 0:
            pwrite_all(fd, data, offset)
            offset += length
        out.append(data)
    return out


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of `data` at `offset` of `fd` (a short write is continued)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def safe_target(root: Path, rel: str) -> Path:
    """`root/rel`, refusing anything that would escape `root` or pass through a symlink."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in rel:
        raise StoreError(f"refusing unsafe path {rel!r} from the manifest")
    if any(p.startswith(RESERVED_PREFIX) for p in parts):
        raise StoreError(f"refusing {rel!r} from the manifest: {RESERVED_PREFIX}* names are chromasnap's own")
    cur = root
    for p in parts[:-1]:
        cur = cur / p
        if cur.is_symlink() or (cur.exists() and not cur.is_dir()):
            raise StoreError(f"refusing to write through {cur}: not a plain directory")
    return root / rel


class Extractor:
    def __init__(
        self,
        repo: Repository,
        progress: Progress | None = None,
        workers: int = 2,
        durable: bool = True,
    ) -> None:
        self.repo = repo
        self.durable = durable
        self.pending: deque[int] = deque()
        self.progress = progress or (lambda _n: None)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chromasnap-read")
        self.writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromasnap-write")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.writes.shutdown(wait=True, cancel_futures=True)
        for fd in self.pending:
            os.close(fd)
        self.pending.clear()

    def write_file(self, root: Path, entry: FileEntry) -> None:
        path = safe_target(root, entry.path)
        doc = self.repo.read_chunk_list(entry.chunk_list).list
        if doc.size != entry.size or doc.layout != entry.layout:
            raise StoreError(f"{entry.path}: chunk list does not match the manifest")
        if data_of(doc) > entry.data_bytes:  # so the free-space check before holds
            raise StoreError(
                f"{entry.path}: chunk list holds more data than the manifest's {entry.data_bytes} bytes"
            )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            try:
                if isinstance(doc, PlainList):
                    digest = self._plain(fd, doc, entry.hash_kind == "extents")
                else:
                    digest = self._split(fd, doc)
                os.ftruncate(fd, entry.size)
            except OSError as exc:
                if exc.errno not in (errno.EFBIG, errno.EINVAL, errno.EOVERFLOW):
                    raise
                raise StoreError(
                    f"{entry.path}: cannot be written as {entry.size} bytes here ({exc.strerror})"
                ) from None
            if digest != entry.hash:
                raise StoreError(f"{entry.path}: reassembled content does not match its hash")
            os.fchmod(fd, applied_mode(entry.mode))  # never setuid, setgid or sticky
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            if self.durable:
                fsutil.start_writeback(fd)  # the kernel writes while we extract the rest
                if len(self.pending) >= PENDING_FSYNCS:
                    self._fsync(self.pending.popleft())
                self.pending.append(os.dup(fd))
        finally:
            os.close(fd)

    def sync_all(self) -> None:
        """fsync every file written (their writeback started as each was finished)."""
        while self.pending:
            self._fsync(self.pending.popleft())

    @staticmethod
    def _fsync(fd: int) -> None:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _plain(self, fd: int, doc: PlainList, sparse: bool) -> str:
        """Write a plain file's extents (the pool writes each blob at its offset) and
        return the hash of what was written, taken here in order."""
        h = blake3()
        for ext in doc.extents:
            if sparse:
                length = sum(n for _, n in ext.chunks)
                h.update(ext.offset.to_bytes(8, "little") + length.to_bytes(8, "little"))
            with contextlib.closing(read_blobs(self.repo, self.pool, ext.chunks, (fd, ext.offset))) as it:
                for data in it:
                    h.update(data)
                    self.progress(len(data))
        return h.hexdigest()

    def _split(self, fd: int, doc: HnswSplitList) -> str:
        """Write an hnsw-split file: records joined and hashed here, written by one thread
        (at most WRITES_AHEAD blocks under way)."""
        h = blake3()
        pos = 0
        inflight: deque[Future[None]] = deque()
        try:
            blocks = join_streams(lambda refs: read_blobs(self.repo, self.pool, refs), doc, reuse=False)
            with contextlib.closing(blocks) as it:
                for block in it:
                    h.update(block)
                    inflight.append(self.writes.submit(pwrite_all, fd, block, pos))
                    pos += len(block)
                    self.progress(len(block))
                    if len(inflight) > WRITES_AHEAD:
                        inflight.popleft().result()
            while inflight:
                inflight.popleft().result()
        finally:
            wait(inflight)  # never a write to `fd` after the caller closes it
        return h.hexdigest()


def data_of(doc: PlainList | HnswSplitList) -> int:
    """Bytes a chunk list writes (its holes excluded)."""
    if isinstance(doc, PlainList):
        return sum(n for e in doc.extents for _, n in e.chunks)
    return doc.size


def check_free_space(need: int, where: Path, what: str) -> None:
    """Refuse to start writing `need` bytes of `what` into the file system of `where`
    without room for them (one clear line rather than a full disk half-way)."""
    try:
        st = os.statvfs(where)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise StoreError(
            f"not enough free space in {where} for {what}: it needs {need} bytes, {free} are free"
        )


def join_streams(
    blobs: Callable[[list[ChunkRef]], Iterator[bytes]], doc: HnswSplitList, reuse: bool = True
) -> Generator[bytes | memoryview, None, None]:
    """The bytes of an hnsw-split file, in blocks of whole records, then its tail. With
    `reuse` a block is valid only until the next one is asked for (one buffer: the caller
    hashes each before going on); without, each block is a buffer of its own."""
    import numpy as np  # only when a level-0 file is really joined: keeps start-up fast

    rec, link = doc.record_size, doc.link_bytes
    vec = rec - link
    links, vectors = blobs(doc.links), blobs(doc.vectors)
    lbuf, vbuf = bytearray(), bytearray()
    done = 0
    per_block = max(1, (4 << 20) // rec)
    out = np.empty((min(per_block, doc.records), rec), dtype=np.uint8)
    try:
        while done < doc.records:
            n = min(per_block, doc.records - done)
            if not reuse and done:
                out = np.empty_like(out)
            while len(lbuf) < n * link:
                lbuf += next(links)
            while len(vbuf) < n * vec:
                vbuf += next(vectors)
            # the records interleaved in place: one copy of each stream, none of the result
            out[:n, :link] = np.frombuffer(lbuf, np.uint8, n * link).reshape(n, link)
            out[:n, link:] = np.frombuffer(vbuf, np.uint8, n * vec).reshape(n, vec)
            del lbuf[: n * link]  # (the views above are gone: a bytearray cannot shrink under one)
            del vbuf[: n * vec]
            done += n
            yield out[:n].data.cast("B")
    except StopIteration:
        raise StoreError("hnsw streams are shorter than their record count") from None
    if lbuf or vbuf or next(links, None) is not None or next(vectors, None) is not None:
        raise StoreError("hnsw streams are longer than their record count")
    yield from blobs(doc.tail)


def extract(
    repo: Repository,
    snap: Snapshot,
    target: Path,
    progress: Progress | None = None,
    durable: bool = True,
) -> Path:
    """Write `snap` into `target` (which must not exist or be an empty directory).

    `durable=False` skips the fsyncs, for throwaway copies such as verify's."""
    target = target.absolute()
    if target.is_symlink():
        raise UsageError(f"{target} is a symlink; give a plain directory")
    if target.exists():
        if not target.is_dir():
            raise UsageError(f"{target} exists and is not a directory")
        if any(target.iterdir()):
            raise UsageError(f"{target} is not empty; extract needs a new or empty directory")
    if not target.parent.is_dir():
        raise UsageError(f"{target.parent} does not exist")
    check_free_space(sum(f.data_bytes for f in snap.files), target.parent, f"snapshot {snap.short_id}")
    stage = target.with_name(f".{target.name}.extract-{os.getpid()}-{os.urandom(4).hex()}")
    os.mkdir(stage, 0o700)
    ex = Extractor(repo, progress, durable=durable)
    sync = fsutil.fsync_dir if durable else (lambda _p: None)
    try:
        for d in snap.dirs:
            path = safe_target(stage, d.path)
            os.mkdir(path, 0o700)
        for f in snap.files:
            ex.write_file(stage, f)
        ex.sync_all()
        for d in sorted(snap.dirs, key=lambda d: d.path.count("/"), reverse=True):
            path = stage / d.path
            sync(path)
            os.chmod(path, applied_mode(d.mode))
            os.utime(path, ns=(d.mtime_ns, d.mtime_ns))
        sync(stage)
        os.chmod(stage, applied_mode(snap.root_mode))
        os.rename(stage, target)  # replaces an empty directory atomically
        sync(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(stage)
        raise
    finally:
        ex.close()
    return target
