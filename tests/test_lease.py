"""The store lock of a remote store: the lease object on a server with conditional writes
(moto), the probe that refuses a server without them (rclone), and lock objects for --no-cas."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial

import pytest
from backend_suite import one_line
from s3_servers import (
    RCLONE_BUCKET,
    aws_env,
    fresh_url,
    moto_endpoint,
    open_s3,
    rclone_endpoint,
)

from chromasnap.snapshots.backend import StorageBackend
from chromasnap.snapshots.errors import (
    ConditionalWritesUnsupported,
    LeaseLost,
    LockTimeout,
    StaleLock,
    UsageError,
)
from chromasnap.snapshots.faulty_backend import FaultyBackend
from chromasnap.snapshots.lease import (
    LEASE_NAME,
    LeaseInfo,
    LockObjects,
    StoreLease,
    break_stale,
    check_conditional_writes,
    read_locks,
    store_lock,
)
from chromasnap.snapshots.retry import RetryingBackend
from chromasnap.snapshots.s3_backend import S3Backend

FIXTURES = (aws_env, moto_endpoint, rclone_endpoint)  # pytest fixtures from s3_servers


@pytest.fixture
def store(moto_endpoint: str) -> Iterator[S3Backend]:
    backend = S3Backend(fresh_url(), endpoint_url=moto_endpoint)
    yield backend
    backend.close()


@pytest.fixture
def rclone_store(rclone_endpoint: str) -> Iterator[S3Backend]:
    backend = S3Backend(f"s3://{RCLONE_BUCKET}/{fresh_url().rsplit('/', 1)[1]}", endpoint_url=rclone_endpoint)
    yield backend
    backend.close()


def lease_doc(backend: StorageBackend) -> LeaseInfo:
    raw, _ = backend.load_versioned(LEASE_NAME)
    return LeaseInfo.from_json(LEASE_NAME, raw, LEASE_NAME)


def later(seconds: float) -> float:
    return time.time() + seconds


# --- the probe ---------------------------------------------------------------------------------


def test_probe_accepts_a_server_that_honours_conditions(store: S3Backend) -> None:
    assert check_conditional_writes(store) is True
    assert store.list("locks") == []  # the probe object is gone
    assert isinstance(store_lock(store), StoreLease)


def test_probe_refuses_a_server_that_ignores_conditions(rclone_store: S3Backend) -> None:
    with pytest.raises(ConditionalWritesUnsupported) as info:
        check_conditional_writes(rclone_store)
    msg = one_line(info.value)
    assert rclone_store.location in msg and "If-None-Match" in msg and "--no-cas" in msg
    assert rclone_store.list("locks") == []
    with pytest.raises(ConditionalWritesUnsupported):
        store_lock(rclone_store)
    assert check_conditional_writes(rclone_store, no_cas=True) is False
    assert isinstance(store_lock(rclone_store, no_cas=True), LockObjects)


# --- the lease ---------------------------------------------------------------------------------


def test_a_held_lease_keeps_others_out_until_released(store: S3Backend) -> None:
    first = StoreLease(store, command="chromasnap snapshot --db /srv/chroma")
    first.acquire(timeout=0)
    assert lease_doc(store).holder is not None and first.generation == 1
    second = StoreLease(store, command="chromasnap prune")
    with pytest.raises(LockTimeout) as info:
        second.acquire(timeout=0)
    msg = one_line(info.value)
    assert "chromasnap snapshot --db /srv/chroma" in msg and "renewed" in msg and store.location in msg
    assert not isinstance(info.value, StaleLock)
    first.release()
    assert lease_doc(store).holder is None
    with second:
        assert second.generation == 2
        second.check()
    assert lease_doc(store).holder is None and lease_doc(store).generation == 2


def test_a_waiting_writer_gets_the_lease_when_it_is_released(store: S3Backend) -> None:
    first = StoreLease(store)
    first.acquire(timeout=0)
    second = StoreLease(store, poll=0.05)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: (second.acquire(timeout=60), got.append(second.generation)))
    waiter.start()
    first.release()
    waiter.join(60)
    assert got == [2]
    second.release()


def test_the_lease_is_renewed_while_held(store: S3Backend) -> None:
    lease = StoreLease(store, ttl=60, refresh_every=0.05)
    lease.acquire(timeout=0)
    try:
        first = lease_doc(store)
        deadline = time.monotonic() + 30
        while lease_doc(store).renewed_at == first.renewed_at and time.monotonic() < deadline:
            time.sleep(0.05)
        renewed = lease_doc(store)
        assert renewed.renewed_at > first.renewed_at and renewed.expires_at > first.expires_at
        assert renewed.token == first.token and renewed.generation == first.generation
        lease.check()
    finally:
        lease.release()


def test_a_broken_lease_is_noticed_and_its_release_leaves_the_new_holder_alone(store: S3Backend) -> None:
    old = StoreLease(store, ttl=30, refresh_every=3600)
    old.acquire(timeout=0)
    broken = break_stale(store, clock=lambda: later(3600))
    assert [r.info.generation for r in broken if r.info] == [1]
    new = StoreLease(store)
    new.acquire(timeout=0)
    with pytest.raises(LeaseLost) as info:
        old.refresh()
    assert "broken or taken over" in one_line(info.value)
    with pytest.raises(LeaseLost):
        old.check()
    old.release()
    doc = lease_doc(store)
    assert doc.holder is not None and doc.token == new.info.token and doc.generation == 2  # type: ignore[union-attr]
    new.release()


def test_a_lease_past_its_expiry_fails_check_before_a_commit(store: S3Backend) -> None:
    now = [time.time()]
    lease = StoreLease(store, ttl=30, refresh_every=3600, clock=lambda: now[0])
    lease.acquire(timeout=0)
    lease.check()
    now[0] += 31  # the store could not be reached for longer than the lease lives
    with pytest.raises(LeaseLost, match="expired 1s ago without renewal"):
        lease.check()
    lease.release()


_HOLDER = """
import sys, time
from chromasnap.snapshots.s3_backend import S3Backend
from chromasnap.snapshots.lease import StoreLease
backend = S3Backend(sys.argv[1], endpoint_url=sys.argv[2])
lease = StoreLease(backend, ttl=30, command="chromasnap snapshot (child)")
lease.acquire(timeout=0)
print(lease.generation, flush=True)
time.sleep(600)
"""


def test_the_stale_lease_of_a_killed_holder_is_reported_and_broken_only_on_request(
    store: S3Backend, moto_endpoint: str
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, store.location, moto_endpoint], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "1"
    finally:
        child.kill()
        child.wait()

    # while its expiry is ahead, the dead holder looks alive: wait, then time out
    with pytest.raises(LockTimeout) as info:
        StoreLease(store).acquire(timeout=0)
    assert f"pid {child.pid}" in one_line(info.value) and not isinstance(info.value, StaleLock)
    with pytest.raises(UsageError, match="not stale, not broken"):
        break_stale(store)

    # past its expiry: reported at once as stale, with its age and the way out
    with pytest.raises(StaleLock) as stale:
        StoreLease(store, clock=lambda: later(3600)).acquire(timeout=60)
    msg = one_line(stale.value)
    assert f"pid {child.pid}" in msg and "(chromasnap snapshot (child))" in msg
    assert "expired 59m" in msg and "unlock --stale" in msg

    broken = break_stale(store, clock=lambda: later(3600))
    assert len(broken) == 1 and broken[0].info is not None and broken[0].info.holder is not None
    assert broken[0].info.holder.pid == child.pid
    with StoreLease(store) as lease:
        assert lease.generation == 2


def test_an_unreadable_or_hostile_lease_document(store: S3Backend) -> None:
    store.save(LEASE_NAME, b"\x00not json at all")
    with pytest.raises(StaleLock) as info:
        StoreLease(store).acquire(timeout=0)
    assert "not a lease document" in one_line(info.value) and "unlock --stale" in str(info.value)
    assert len(break_stale(store)) == 1
    with StoreLease(store):
        pass

    hostile = {
        "version": 1,
        "holder": {"pid": 7, "host": "h\x1b[2J", "command": "evil\r\nline two\x07", "since": "x"},
        "token": "t",
        "generation": 9,
        "renewed_at": "2999-01-01T00:00:00Z",
        "expires_at": "2999-01-01T00:00:00Z",
    }
    store.save(LEASE_NAME, json.dumps(hostile).encode())
    with pytest.raises(LockTimeout) as held:
        StoreLease(store).acquire(timeout=0)
    msg = one_line(held.value)
    assert "\x1b" not in msg and "\x07" not in msg and "\r" not in msg
    for bad in ({**hostile, "generation": "9"}, {**hostile, "holder": {"pid": "7"}}, [1] * 3, {"version": 2}):
        store.save(LEASE_NAME, json.dumps(bad).encode())
        with pytest.raises(StaleLock):
            StoreLease(store).acquire(timeout=0)


def test_the_lease_survives_a_lost_response_when_taking_it(store: S3Backend) -> None:
    faulty = FaultyBackend(store, fail_at=1, ops={"save"}, after_call=True)
    lease = StoreLease(RetryingBackend(faulty, base_delay=0.001))
    lease.acquire(timeout=0)
    assert len(faulty.faults) == 1 and lease_doc(store).token == lease.info.token  # type: ignore[union-attr]
    lease.release()
    assert lease_doc(store).holder is None


def _locked_increments(open_backend: partial[StorageBackend], rounds: int) -> None:
    """In a child process: `rounds` unprotected read-modify-writes, each under the lease."""
    backend = open_backend()
    for _ in range(rounds):
        with StoreLease(backend, poll=0.02):
            n = int(backend.load("counter"))
            backend.save("counter", str(n + 1).encode())  # no condition: only the lease protects it


def test_the_lease_excludes_writers_in_other_processes(store: S3Backend, moto_endpoint: str) -> None:
    store.save("counter", b"0")
    opener = partial(open_s3, store.location, moto_endpoint)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        pool.starmap(_locked_increments, [(opener, 4)] * 2)
    assert store.load("counter") == b"8"
    assert lease_doc(store).generation == 8


# --- lock objects (--no-cas) ---------------------------------------------------------------------


def test_lock_objects_on_a_server_without_conditions(rclone_store: S3Backend) -> None:
    first = store_lock(rclone_store, no_cas=True, command="chromasnap snapshot")
    first.acquire(timeout=0)
    second = LockObjects(rclone_store, poll=0.05)
    with pytest.raises(LockTimeout) as info:
        second.acquire(timeout=0)
    assert "chromasnap snapshot" in one_line(info.value)
    assert len(read_locks(rclone_store)) == 1  # the loser took its own object back
    first.release()
    second.acquire(timeout=0)

    with pytest.raises(StaleLock, match="stale lock object"):
        LockObjects(rclone_store, clock=lambda: later(3600)).acquire(timeout=0)
    with pytest.raises(UsageError):
        break_stale(rclone_store)
    assert len(break_stale(rclone_store, clock=lambda: later(3600))) == 1
    with pytest.raises(LeaseLost, match="was removed"):
        second.refresh()
    second.release()
    with LockObjects(rclone_store):
        assert len(read_locks(rclone_store)) == 1
    assert read_locks(rclone_store) == []
