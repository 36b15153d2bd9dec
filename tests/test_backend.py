"""The storage contract's conformance suite (tests/backend_suite.py) on every backend, and the
retry and fault-injection wrappers it relies on."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
from backend_suite import BackendCase, BackendSuite
from s3_servers import aws_env, fresh_url, moto_endpoint, open_faulty_s3, open_s3

from chromasnap.snapshots.backend import StorageBackend
from chromasnap.snapshots.errors import PermanentStoreError, TransientStoreError
from chromasnap.snapshots.faulty_backend import FaultyBackend
from chromasnap.snapshots.local_backend import LocalBackend
from chromasnap.snapshots.retry import RetryingBackend

FIXTURES = (aws_env, moto_endpoint)  # pytest fixtures from s3_servers, used by the tests below


def s3_case(request: pytest.FixtureRequest) -> BackendCase:
    """S3Backend on the session's moto server, under a prefix of its own."""
    return BackendCase(partial(open_s3, fresh_url(), request.getfixturevalue("moto_endpoint")))


def faulty_s3_case(request: pytest.FixtureRequest) -> BackendCase:
    """RetryingBackend(FaultyBackend(FaultyBackend(S3Backend))): a call in five fails before
    reaching moto, one in seven after it (its response lost); the retrier must hide both."""
    return BackendCase(partial(open_faulty_s3, fresh_url(), request.getfixturevalue("moto_endpoint")))


def open_local(root: Path) -> StorageBackend:
    return LocalBackend(root)


def open_faulty_local(root: Path) -> StorageBackend:
    """RetryingBackend(FaultyBackend(FaultyBackend(LocalBackend))): a call in five fails before
    reaching the directory, one in seven after it (its response lost)."""
    lost = FaultyBackend(LocalBackend(root), fail_at=3, every=7, after_call=True)
    dropped = FaultyBackend(lost, fail_at=2, every=5)
    # 12 attempts: the fault counters are shared by threads, so under the conformance suite's
    # four racing writers one call's retries can land on injected faults six times running
    # (a third of all calls fail here: far beyond a real server's rate)
    return RetryingBackend(dropped, attempts=12, base_delay=0.001, max_delay=0.01)


def local_case(request: pytest.FixtureRequest) -> BackendCase:
    """LocalBackend on a fresh folder (not created: `create` makes it)."""
    return BackendCase(partial(open_local, request.getfixturevalue("tmp_path") / "store"))


def faulty_local_case(request: pytest.FixtureRequest) -> BackendCase:
    """The retrier over fault injection over LocalBackend, as faulty_s3_case over S3."""
    return BackendCase(partial(open_faulty_local, request.getfixturevalue("tmp_path") / "store"))


# Every backend the suite runs on; adding one is one line.
BACKENDS = {
    "local": local_case,
    "local-retrying-faulty": faulty_local_case,
    "s3": s3_case,
    "s3-retrying-faulty": faulty_s3_case,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend_case(request: pytest.FixtureRequest) -> BackendCase:
    return BACKENDS[request.param](request)


class TestConformance(BackendSuite):
    """Every test of the contract, on every backend in BACKENDS."""


def test_faulty_backend_counts_only_chosen_operations(moto_endpoint: str) -> None:
    inner = open_s3(fresh_url(), moto_endpoint)
    faulty = FaultyBackend(inner, fail_at=2, kind="permanent", ops={"load"}, count=2, every=5)
    inner.save("a", b"1")
    outcomes = []
    for _ in range(8):
        try:
            faulty.load("a")
            outcomes.append("ok")
        except PermanentStoreError:
            outcomes.append("fail")
    faulty.save("b", b"2")  # not a chosen operation: never counted, never failed
    assert outcomes == ["ok", "fail", "fail", "ok", "ok", "ok", "fail", "fail"]
    assert faulty.calls == 8 and [f[1] for f in faulty.faults] == ["load"] * 4


def test_retrying_backend_backs_off_with_jitter_below_the_cap(moto_endpoint: str) -> None:
    delays: list[float] = []
    inner = FaultyBackend(open_s3(fresh_url(), moto_endpoint), fail_at=1, count=4, ops={"list"})
    retrying = RetryingBackend(inner, attempts=5, base_delay=0.5, max_delay=2.0, sleep=delays.append)
    assert retrying.list("packs") == []
    assert len(delays) == 4
    for attempt, delay in enumerate(delays):
        assert 0 <= delay <= min(2.0, 0.5 * 2**attempt)


def test_retrying_backend_never_retries_permanent_errors(moto_endpoint: str) -> None:
    delays: list[float] = []
    inner = FaultyBackend(open_s3(fresh_url(), moto_endpoint), fail_at=1, kind="permanent")
    retrying = RetryingBackend(inner, sleep=delays.append)
    with pytest.raises(PermanentStoreError):
        retrying.stat("config.json")
    assert delays == [] and inner.calls == 1


def test_transient_error_after_the_last_attempt_names_the_count(moto_endpoint: str) -> None:
    inner = FaultyBackend(open_s3(fresh_url(), moto_endpoint), fail_at=1, count=99)
    retrying = RetryingBackend(inner, attempts=2, sleep=lambda _s: None)
    with pytest.raises(TransientStoreError, match=r"injected fault\) \(gave up after 2 attempts\)$"):
        retrying.exists()


# --- a whole snapshot through the retrier over fault injection -----------------------------------


def test_snapshot_through_transient_faults_is_whole(db: Path, tmp_path: Path) -> None:
    """Every fifth store call fails before reaching the directory and every seventh after it
    (its response lost): the retrier hides them all, and the snapshot extracts bit-exactly."""
    from chromasnap.snapshots import SnapshotManager
    from conftest import tree_bytes

    store = tmp_path / "store"
    backend = open_faulty_local(store)
    mgr = SnapshotManager(db, store, backend=backend)
    snap = mgr.snapshot()
    assert isinstance(backend, RetryingBackend) and backend.retries > 0
    out = tmp_path / "out"
    SnapshotManager(db, store).extract(snap.id, out)
    assert tree_bytes(out) == tree_bytes(db)


def test_permanent_fault_fails_the_snapshot_in_one_line_and_leaves_nothing_half_written(
    db: Path, tmp_path: Path
) -> None:
    from chromasnap.snapshots import SnapshotManager

    store = tmp_path / "store"
    SnapshotManager(db, store).snapshot()  # a first snapshot, so the store exists
    faulty = FaultyBackend(LocalBackend(store), fail_at=1, kind="permanent", ops={"save_file"})
    mgr = SnapshotManager(db, store, backend=RetryingBackend(faulty, base_delay=0.001))
    (db / "extra.bin").write_bytes(os.urandom(1 << 20))  # new content: a pack to write
    with pytest.raises(PermanentStoreError) as info:
        mgr.snapshot()
    msg = str(info.value)
    assert "\n" not in msg and "injected" in msg
    assert faulty.calls == 1  # never retried
    assert len(SnapshotManager(db, store).list()) == 1
    assert not list((store / "tmp").iterdir())  # the pack being written was removed
