"""The storage contract's conformance suite: every backend must pass it.

A test module provides a `backend_case` fixture (a `BackendCase` opening a fresh, empty store)
and subclasses `BackendSuite`; see tests/test_backend.py, where adding a backend is one line
in BACKENDS. The tests use only the contract, so they hold for a directory, an object store,
and either of those under fault injection and retries.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from chromasnap.snapshots.backend import ObjectInfo, StorageBackend
from chromasnap.snapshots.errors import (
    ObjectExists,
    ObjectNotFound,
    PermanentStoreError,
    PreconditionFailed,
    StoreError,
    TransientStoreError,
)
from chromasnap.snapshots.faulty_backend import FaultyBackend
from chromasnap.snapshots.retry import RetryingBackend


@dataclass(frozen=True)
class BackendCase:
    """How to open one fresh, empty store of one kind. `open` must be picklable (a partial of a
    top-level function): child processes open the same store with it."""

    open: Callable[[], StorageBackend]


def one_line(exc: BaseException, *forbidden: str) -> str:
    """The error's message, checked to be one line holding none of `forbidden`."""
    msg = str(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    for secret in forbidden:
        assert secret not in msg, msg
    return msg


def _child_create(open_backend: Callable[[], StorageBackend], name: str, data: bytes) -> str:
    """In a child process: create `name` with create_only; "created" or "exists"."""
    backend = open_backend()
    try:
        backend.save(name, data, create_only=True)
        return "created"
    except ObjectExists:
        return "exists"
    finally:
        backend.close()


class BackendSuite:
    """Conformance tests over the `backend_case` fixture."""

    @pytest.fixture
    def backend(self, backend_case: BackendCase) -> Iterator[StorageBackend]:
        b = backend_case.open()
        b.create()
        yield b
        b.close()

    # --- round trips ------------------------------------------------------------------------

    def test_round_trip(self, backend: StorageBackend) -> None:
        data = os.urandom(100_000)
        tag = backend.save("packs/ab/abcdef", data)
        assert tag
        assert backend.load("packs/ab/abcdef") == data
        assert backend.stat("packs/ab/abcdef") == len(data)
        body, tag2 = backend.load_versioned("packs/ab/abcdef")
        assert body == data and tag2 == tag

    def test_empty_object(self, backend: StorageBackend) -> None:
        backend.save("index/empty", b"")
        assert backend.load("index/empty") == b""
        assert backend.load("index/empty", 0, 0) == b""
        assert backend.stat("index/empty") == 0
        assert backend.list("index") == [ObjectInfo("index/empty", 0)]

    def test_load_bounded(self, backend: StorageBackend) -> None:
        """Documents are read whole under a size limit (issue 16: one request on S3)."""
        backend.save("doc.json", b"x" * 100)
        backend.save("empty.json", b"")
        assert backend.load_bounded("doc.json", 100) == b"x" * 100
        assert backend.load_bounded("doc.json", 1000) == b"x" * 100
        assert backend.load_bounded("empty.json", 10) == b""
        with pytest.raises(StoreError) as info:
            backend.load_bounded("doc.json", 99)
        assert "100 bytes" in one_line(info.value)
        with pytest.raises(ObjectNotFound):
            backend.load_bounded("absent.json", 10)

    def test_plain_save_replaces(self, backend: StorageBackend) -> None:
        t1 = backend.save("catalog.json", b"one")
        t2 = backend.save("catalog.json", b"two, longer")
        assert t1 != t2
        assert backend.load("catalog.json") == b"two, longer"

    def test_save_file_moves_the_file(self, backend: StorageBackend, tmp_path: Path) -> None:
        local = tmp_path / "pack.tmp"
        data = os.urandom(70_000)
        local.write_bytes(data)
        tag = backend.save_file("packs/cd/cdef", local, create_only=True)
        assert tag
        assert not local.exists()
        assert backend.load("packs/cd/cdef") == data

    def test_exists_and_create(self, backend_case: BackendCase) -> None:
        backend = backend_case.open()
        try:
            assert not backend.exists()
            backend.create()
            backend.create()  # idempotent
            assert not backend.exists()
            backend.save("config.json", b"{}", create_only=True)
            assert backend.exists()
        finally:
            backend.close()

    # --- conditional writes -----------------------------------------------------------------

    def test_create_only_refuses_an_existing_name(self, backend: StorageBackend) -> None:
        backend.save("snapshots/s1.json", b"first", create_only=True)
        with pytest.raises(ObjectExists) as info:
            backend.save("snapshots/s1.json", b"second", create_only=True)
        assert "snapshots/s1.json" in one_line(info.value)
        assert backend.load("snapshots/s1.json") == b"first"

    def test_save_file_create_only_refusal_keeps_the_local_file(
        self, backend: StorageBackend, tmp_path: Path
    ) -> None:
        backend.save("packs/ee/ee01", b"theirs", create_only=True)
        local = tmp_path / "mine"
        local.write_bytes(b"mine, different")
        with pytest.raises(ObjectExists):
            backend.save_file("packs/ee/ee01", local, create_only=True)
        assert local.read_bytes() == b"mine, different"
        assert backend.load("packs/ee/ee01") == b"theirs"

    def test_compare_and_swap(self, backend: StorageBackend) -> None:
        t1 = backend.save("catalog.json", b"v1", create_only=True)
        t2 = backend.save("catalog.json", b"v2", if_match=t1)
        with pytest.raises(PreconditionFailed) as info:
            backend.save("catalog.json", b"v3 from a stale reader", if_match=t1)
        assert "catalog.json" in one_line(info.value)
        body, tag = backend.load_versioned("catalog.json")
        assert (body, tag) == (b"v2", t2)

    def test_compare_and_swap_of_a_deleted_object_fails(self, backend: StorageBackend) -> None:
        t1 = backend.save("catalog.json", b"v1")
        backend.remove("catalog.json")
        with pytest.raises(PreconditionFailed):
            backend.save("catalog.json", b"v2", if_match=t1)

    def test_create_only_and_if_match_together_is_a_bug(self, backend: StorageBackend) -> None:
        with pytest.raises(ValueError):
            backend.save("x", b"", create_only=True, if_match="tag")

    # --- ranges -----------------------------------------------------------------------------

    def test_ranges_at_and_past_the_end(self, backend: StorageBackend) -> None:
        data = bytes(range(256)) * 40  # 10240 bytes
        size = len(data)
        backend.save("packs/00/range", data)
        assert backend.load("packs/00/range", 100, 50) == data[100:150]
        assert backend.load("packs/00/range", 0, size) == data
        assert backend.load("packs/00/range", size - 3, 3) == data[-3:]
        assert backend.load("packs/00/range", 5000) == data[5000:]
        assert backend.load("packs/00/range", size, 0) == b""
        assert backend.load("packs/00/range", size) == b""
        for offset, length in ((size - 2, 3), (size, 1), (size + 10, 5), (size + 1, 0), (size + 1, None)):
            with pytest.raises(StoreError) as info:
                backend.load("packs/00/range", offset, length)
            assert not isinstance(info.value, ObjectNotFound)
            assert "truncated" in one_line(info.value)

    # --- listing, absence, removal --------------------------------------------------------------

    def test_list_with_sizes(self, backend: StorageBackend) -> None:
        names = {"packs/aa/aa1": 10, "packs/aa/aa2": 0, "packs/bb/bb1": 300, "packsplus/x": 1, "index/i1": 7}
        for name, size in names.items():
            backend.save(name, b"x" * size)
        assert backend.list("packs") == [
            ObjectInfo("packs/aa/aa1", 10),
            ObjectInfo("packs/aa/aa2", 0),
            ObjectInfo("packs/bb/bb1", 300),
        ]
        assert backend.list("packs/aa") == [ObjectInfo("packs/aa/aa1", 10), ObjectInfo("packs/aa/aa2", 0)]
        assert backend.list("index") == [ObjectInfo("index/i1", 7)]
        assert backend.list("snapshots") == []

    def test_not_found_is_typed(self, backend: StorageBackend) -> None:
        for call in (
            lambda: backend.load("snapshots/nope.json"),
            lambda: backend.load("snapshots/nope.json", 0, 10),
            lambda: backend.load_versioned("snapshots/nope.json"),
            lambda: backend.stat("snapshots/nope.json"),
        ):
            with pytest.raises(ObjectNotFound) as info:
                call()
            msg = one_line(info.value)
            assert "snapshots/nope.json" in msg and backend.location in msg

    def test_remove_is_idempotent(self, backend: StorageBackend) -> None:
        backend.save("packs/aa/gone", b"data")
        backend.remove("packs/aa/gone")
        backend.remove("packs/aa/gone")
        backend.remove("packs/never/was")
        assert backend.list("packs") == []
        with pytest.raises(ObjectNotFound):
            backend.stat("packs/aa/gone")

    def test_unsafe_names_are_refused(self, backend: StorageBackend) -> None:
        for bad in ("", "/etc/passwd", "../outside", "packs/../../x", "a//b", "a/./b", "nul\x00l"):
            with pytest.raises(StoreError):
                backend.save(bad, b"x")
            with pytest.raises(StoreError):
                backend.load(bad)

    # --- concurrency ------------------------------------------------------------------------

    def test_concurrent_creators_of_one_content_addressed_name_threads(self, backend: StorageBackend) -> None:
        data = os.urandom(50_000)

        def create(_: int) -> str:
            try:
                backend.save("packs/cc/same", data, create_only=True)
                return "created"
            except ObjectExists:
                return "exists"

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(create, range(16)))
        assert "created" in outcomes and set(outcomes) <= {"created", "exists"}
        assert backend.load("packs/cc/same") == data

    def test_concurrent_creators_of_one_content_addressed_name_processes(
        self, backend_case: BackendCase, backend: StorageBackend
    ) -> None:
        data = os.urandom(50_000)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(2) as pool:
            outcomes = pool.starmap(_child_create, [(backend_case.open, "packs/pp/same", data)] * 4)
        assert "created" in outcomes and set(outcomes) <= {"created", "exists"}
        assert backend.load("packs/pp/same") == data

    def test_compare_and_swap_loses_no_update(self, backend: StorageBackend) -> None:
        """Writers add their own items to one JSON set with read, modify, save(if_match): none
        is lost. (Updates are idempotent, as the catalog's are: after a lost response a
        retried CAS may report a conflict for a write that landed, and is then re-applied.)"""
        backend.save("catalog.json", b"[]", create_only=True)

        def add(item: str) -> None:
            while True:
                raw, tag = backend.load_versioned("catalog.json")
                items = set(json.loads(raw)) | {item}
                try:
                    backend.save("catalog.json", json.dumps(sorted(items)).encode(), if_match=tag)
                    return
                except PreconditionFailed:
                    continue

        wanted = {f"w{i}-{j}" for i in range(4) for j in range(4)}
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(add, sorted(wanted)))
        assert set(json.loads(backend.load("catalog.json"))) == wanted

    def test_readers_never_see_a_partial_object(self, backend: StorageBackend) -> None:
        """A reader racing a writer that replaces an object sees one whole version or another."""
        versions = [bytes([i]) * (200_000 + i * 50_000) for i in range(4)]
        backend.save("snapshots/racy.json", versions[0])
        stop = threading.Event()
        seen: list[bytes] = []

        def read() -> None:
            while not stop.is_set():
                seen.append(backend.load("snapshots/racy.json"))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for i in range(1, 12):
                backend.save("snapshots/racy.json", versions[i % 4])
        finally:
            stop.set()
            reader.join()
        assert seen and all(body in versions for body in seen)

    # --- faults: the retry layer over this backend --------------------------------------------

    def test_transient_faults_are_retried(self, backend: StorageBackend) -> None:
        faulty = FaultyBackend(backend, fail_at=1, kind="transient", count=2)
        retrying = RetryingBackend(faulty, attempts=3, base_delay=0.001)
        retrying.save("index/i1", b"hello")
        assert retrying.retries == 2 and len(faulty.faults) == 2
        assert retrying.load("index/i1") == b"hello"

    def test_transient_faults_give_up_with_one_line(self, backend: StorageBackend) -> None:
        faulty = FaultyBackend(backend, fail_at=1, kind="transient", count=10, ops={"load"})
        retrying = RetryingBackend(faulty, attempts=3, base_delay=0.001)
        backend.save("index/i1", b"hello")
        with pytest.raises(TransientStoreError) as info:
            retrying.load("index/i1")
        assert "gave up after 3 attempts" in one_line(info.value)
        assert len(faulty.faults) == 3

    def test_permanent_faults_are_reported_at_once(self, backend: StorageBackend) -> None:
        faulty = FaultyBackend(backend, fail_at=1, kind="permanent", ops={"save"})
        retrying = RetryingBackend(faulty, attempts=5, base_delay=0.001)
        with pytest.raises(PermanentStoreError) as info:
            retrying.save("index/i1", b"hello", create_only=True)
        one_line(info.value)
        assert faulty.calls == 1 and retrying.retries == 0
        assert backend.list("index") == []  # nothing half-written visible

    def test_lost_responses_of_conditional_writes_are_resolved(
        self, backend: StorageBackend, tmp_path: Path
    ) -> None:
        """The write lands, its response is lost, the retry is refused: still a success,
        because the object holds exactly what we sent."""
        faulty = FaultyBackend(backend, fail_at=1, ops={"save", "save_file"}, after_call=True)
        retrying = RetryingBackend(faulty, attempts=3, base_delay=0.001)
        t1 = retrying.save("snapshots/s.json", b"doc", create_only=True)
        assert backend.load_versioned("snapshots/s.json") == (b"doc", t1)

        faulty.fail_at, faulty.calls = 1, 0
        t2 = retrying.save("snapshots/s.json", b"doc, pinned", if_match=t1)
        assert backend.load_versioned("snapshots/s.json") == (b"doc, pinned", t2)

        faulty.fail_at, faulty.calls = 1, 0
        local = tmp_path / "pack"
        local.write_bytes(b"pack body")
        retrying.save_file("packs/ab/ab99", local, create_only=True)
        assert not local.exists() and backend.load("packs/ab/ab99") == b"pack body"

        # a refusal after a lost response is still a refusal when the content is not ours
        backend.save("snapshots/other.json", b"theirs", create_only=True)
        retrying2 = RetryingBackend(
            FaultyBackend(backend, fail_at=1, ops={"save"}), attempts=3, base_delay=0.001
        )
        with pytest.raises(ObjectExists):
            retrying2.save("snapshots/other.json", b"mine", create_only=True)

    def test_nothing_half_written_is_visible_after_failed_writes(
        self, backend: StorageBackend, tmp_path: Path
    ) -> None:
        """Saves that fail (before or after reaching the store, transient or permanent) leave
        either nothing or the whole object: never a prefix of it."""
        data = os.urandom(300_000)
        for i, (kind, after) in enumerate(
            (("transient", False), ("permanent", False), ("transient", True), ("permanent", True))
        ):
            faulty = FaultyBackend(
                backend, fail_at=1, kind=kind, ops={"save", "save_file"}, count=2, after_call=after
            )  # type: ignore[arg-type]
            local = tmp_path / f"f{i}"
            local.write_bytes(data)
            with pytest.raises(StoreError):
                faulty.save(f"packs/hw/b{i}", data, create_only=True)
            with pytest.raises(StoreError):
                faulty.save_file(f"packs/hw/f{i}", local, create_only=True)
            assert local.read_bytes() == data  # the caller still owns its file
        for info in backend.list("packs/hw"):
            assert info.size == len(data) and backend.load(info.name) == data
