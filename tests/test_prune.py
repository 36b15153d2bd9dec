"""Retention rules, prune, gc and stats: real stores, real kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_verify import cli

from chromasnap.manifest import RetentionPolicy, Snapshot, Verification, WalState
from chromasnap.snapshots import SnapshotManager, UsageError
from chromasnap.snapshots.retention import decide, parse_duration
from conftest import run_sample, tree_bytes

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def snap(i: int, at: datetime, tags: list[str] | None = None, **kw: object) -> Snapshot:
    return Snapshot(
        id=f"{i:064x}",
        created_at=at,
        reason="manual",
        tags=tags or [],
        source="/db",
        wal=WalState(journal_mode="delete"),
        **kw,  # type: ignore[arg-type]
    )


def kept(snaps: list[Snapshot], protected: dict[str, str] | None = None, **rules: object) -> list[int]:
    reasons = decide(snaps, RetentionPolicy(**rules), protected or {})  # type: ignore[arg-type]
    return sorted(int(s.id, 16) for s in snaps if reasons[s.id])


# Worked examples (docs/retention.md): one snapshot every 6 hours for 10 days, newest first
EVERY_6H = [snap(i, T0 - timedelta(hours=6 * i)) for i in range(40)]


def test_keep_last() -> None:
    assert kept(EVERY_6H, keep_last=3) == [0, 1, 2]


def test_keep_daily_keeps_the_newest_of_each_day() -> None:
    # T0 is 12:00: day 0 holds snapshots 0 (12:00), 1 (06:00), 2 (00:00); 3 is 18:00 the day before
    assert kept(EVERY_6H, keep_daily=3) == [0, 3, 7]


def test_keep_hourly_weekly_monthly_yearly() -> None:
    assert kept(EVERY_6H, keep_hourly=2) == [0, 1]
    # T0 is Tuesday 12:00: this ISO week holds 0..6 (6 is Monday 00:00); the one before starts at 7
    assert kept(EVERY_6H, keep_weekly=2) == [0, 7]
    assert kept(EVERY_6H, keep_monthly=5) == [0]
    assert kept(EVERY_6H, keep_yearly=1) == [0]


def test_keep_within_counts_back_from_the_newest() -> None:
    assert kept(EVERY_6H, keep_within="1d") == [0, 1, 2, 3, 4]
    assert parse_duration("7d12h") == timedelta(days=7, hours=12)
    with pytest.raises(UsageError):
        parse_duration("7x")


def test_rules_combine_and_safety_rules_win() -> None:
    snaps = [snap(i, T0 - timedelta(hours=i)) for i in range(6)]
    snaps[4].tags = ["release"]
    snaps[5].pinned = True
    snaps[3].verifications = [Verification(at=T0, mode="full", verdict="ok", ok=True, duration_s=1)]
    snaps[2].verifications = [Verification(at=T0, mode="quick", verdict="ok", ok=True, duration_s=1)]
    assert kept(snaps, keep_last=1) == [0, 3, 5]  # newest fully verified, pinned
    assert kept(snaps, keep_last=1, keep_tags=["release"]) == [0, 3, 4, 5]
    assert kept(snaps, {snaps[1].id: "write intent (safety)"}, keep_last=1) == [0, 1, 3, 5]


def _grown_store(db: Path, n: int) -> SnapshotManager:
    mgr = SnapshotManager(db)
    for i in range(n):
        if i:
            run_sample("grow", str(db), "--fraction", "0.1", "--seed", str(i))
        mgr.snapshot(tags=[f"s{i}"])
    return mgr


def test_prune_removes_by_rule_and_reclaims_what_stats_predicted(db: Path) -> None:
    mgr = _grown_store(db, 4)
    before = mgr.stats()
    assert before.dedup_ratio > 1.5
    ids = [s.id for s in mgr.list()]
    expected = sum(s.unique_bytes for s in before.snapshots[:1])
    r = cli("prune", "--keep-last", "2", "--dry-run", "--db", str(db), "--json")
    dry = json.loads(r.stdout)
    assert r.returncode == 0 and dry["dry_run"] and len(mgr.list()) == 4
    assert [e["id"] for e in dry["removed"]] == ids[:2] and dry["removed"][0]["why"] == ["no rule keeps it"]
    r = cli("prune", "--keep-last", "2", "--db", str(db), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and [e["id"] for e in out["kept"]] == ids[2:]
    assert [e["why"] for e in out["kept"]] == [["last"], ["last"]]
    assert out["reclaimed_bytes"] >= expected > 0
    assert abs(out["reclaimed_bytes"] - out["expected_bytes"]) <= 0.02 * out["expected_bytes"] + 4096
    assert [s.id for s in mgr.list()] == ids[2:]
    assert all(v.ok for v in mgr.verify_many(None, quick=True))
    after = mgr.stats()
    assert after.pack_bytes == before.pack_bytes - out["reclaimed_bytes"]
    assert after.referenced_bytes == after.pack_bytes - _trailer_bytes(mgr)


def _trailer_bytes(mgr: SnapshotManager) -> int:
    total = 0
    for p in mgr.store_path.glob("packs/*/*"):
        data = p.read_bytes()
        total += int.from_bytes(data[-12:-8], "little") + 12
    return total


@pytest.mark.slow
def test_a_long_lived_manager_reads_after_another_process_pruned(db: Path, tmp_path: Path) -> None:
    """gc in another process repacks blobs and deletes their old packs: a manager that loaded
    the index before finds them again."""
    mgr = _grown_store(db, 3)
    ids = [s.id for s in mgr.list()]
    assert mgr.repo.index()
    r = cli("prune", "--keep-last", "1", "--db", str(db), "--json")
    assert r.returncode == 0, r.stderr
    mgr.backend.close()  # pack fds it kept open would still read the deleted packs
    out = mgr.extract(ids[-1], tmp_path / "out")
    assert tree_bytes(out) == tree_bytes(db)
    [report] = mgr.verify_many(None, quick=True)
    assert report.ok, report.detail


def test_policy_set_show_and_bad_values(db: Path) -> None:
    SnapshotManager(db).snapshot()
    r = cli(
        "policy", "set", "--keep-daily", "7", "--keep-within", "2d", "--keep-tag", "release", "--db", str(db)
    )
    assert r.returncode == 0, r.stderr
    shown = json.loads(cli("policy", "show", "--db", str(db), "--json").stdout)
    assert (shown["keep_daily"], shown["keep_within"], shown["keep_tags"]) == (7, "2d", ["release"])
    for args, text in (
        (["--keep-within", "7x"], "invalid duration"),
        (["--keep-last", "-1"], "0 or more"),
        (["--keep-replaced", "soon"], "invalid duration"),
    ):
        r = cli("policy", "set", *args, "--db", str(db))
        assert r.returncode == 2 and text in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = cli("prune", "--keep-tag", "nothing-has-this", "--db", str(db))
    assert r.returncode == 2 and "would keep no snapshot" in r.stderr
    cli("policy", "set", "--reset", "--db", str(db))
    r = cli("prune", "--db", str(db))
    assert r.returncode == 2 and "no retention rules" in r.stderr


@pytest.mark.slow
def test_pinned_snapshot_survives_and_stats_json(db: Path) -> None:
    mgr = _grown_store(db, 3)
    first = mgr.list()[0]
    assert cli("pin", first.id[:8], "--db", str(db)).returncode == 0
    r = cli("prune", "--keep-last", "1", "--db", str(db), "--json")
    assert {e["id"] for e in json.loads(r.stdout)["kept"]} == {first.id, mgr.list()[-1].id}
    stats = json.loads(cli("stats", "--db", str(db), "--json").stdout)
    assert {"store_bytes", "logical_bytes", "dedup_ratio", "snapshots"} <= set(stats)
    assert all(s["unique_bytes"] > 0 for s in stats["snapshots"])
    assert cli("unpin", first.id[:8], "--db", str(db)).returncode == 0
    assert not mgr.get(first.id).pinned


@pytest.mark.slow
def test_auto_prune_after_before_write(db: Path) -> None:
    mgr = SnapshotManager(db)
    mgr.snapshot()
    mgr.set_policy(RetentionPolicy(keep_last=2, auto_prune=True))
    for i in range(4):
        with mgr.before_write(reason=f"batch {i}"):
            run_sample("grow", str(db), "--fraction", "0.05", "--seed", str(i))
    snaps = mgr.list()
    assert len(snaps) == 2 and all(s.reason == "pre-write" for s in snaps)
    assert all(v.ok for v in mgr.verify_many(None, quick=True))


def test_keep_replaced_purges_old_kept_databases(db: Path) -> None:
    mgr = SnapshotManager(db)
    s = mgr.snapshot()
    for _ in range(3):
        mgr.restore(s.id, verify=False, backup=False)
        time.sleep(1.1)  # kept folders are named by the second
    assert len(mgr.kept()) == 3
    res = mgr.prune(RetentionPolicy(keep_last=5, keep_replaced="1"))
    assert len(res.purged_kept_dirs) == 2 and len(mgr.kept()) == 1


PRUNE_CHILD = """
import sys
from chromasnap.manifest import RetentionPolicy
from chromasnap.snapshots import SnapshotManager
SnapshotManager(sys.argv[1]).prune(RetentionPolicy(keep_last=2))
"""


@pytest.mark.parametrize(
    "point",
    [
        "prune-removed-one",
        pytest.param("gc-packed", marks=pytest.mark.slow),
        pytest.param("gc-indexed", marks=pytest.mark.slow),
        pytest.param("gc-old-index-removed", marks=pytest.mark.slow),
        pytest.param("gc-first-pack-removed", marks=pytest.mark.slow),
    ],
)
def test_prune_killed_at_each_step_loses_nothing(db: Path, point: str) -> None:
    """SIGKILL at each step of prune and gc, injected at the crash seam (CHROMASNAP_CRASH_AT)."""
    mgr = _grown_store(db, 4)
    ids = [s.id for s in mgr.list()]
    r = subprocess.run(
        [sys.executable, "-c", PRUNE_CHILD, str(db)],
        env={**os.environ, "CHROMASNAP_CRASH_AT": point},
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    _assert_intact(db, ids)


@pytest.mark.slow
def test_prune_killed_at_random_instants_loses_nothing(db: Path) -> None:
    mgr = _grown_store(db, 5)
    ids = [s.id for s in mgr.list()]
    for delay in (0.05, 0.15, 0.3, 0.5):
        proc = subprocess.Popen([sys.executable, "-c", PRUNE_CHILD, str(db)])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_intact(db, ids)


def _assert_intact(db: Path, ids: list[str]) -> None:
    mgr = SnapshotManager(db)
    left = [s.id for s in mgr.list()]
    assert not mgr.problems
    assert set(ids[-2:]) <= set(left) <= set(ids)  # the kept ones are all there
    r = cli("verify", "--all", "--quick", "--db", str(db))
    assert r.returncode == 0, r.stdout + r.stderr
    mgr.prune(RetentionPolicy(keep_last=2))  # the next prune completes the job
    assert [s.id for s in mgr.list()] == ids[-2:]
    assert all(v.ok for v in mgr.verify_many(None, quick=True))


def test_prune_and_stats_read_each_chunk_list_once(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unchanged files share their chunk list across snapshots. gc and stats used to read and
    validate every snapshot's chunk lists again (three times per prune), so pruning 150 of
    200 snapshots of a large database parsed the same multi-megabyte lists hundreds of times
    (issue 20). Now each distinct one is read once, and the sizes come out as before."""
    from collections import Counter

    from chromasnap.snapshots import checker
    from chromasnap.snapshots.repository import Repository

    mgr = _grown_store(db, 2)
    for _ in range(4):
        mgr.snapshot()  # unchanged: every file's chunk list is the previous snapshot's
    snaps = mgr.list()
    distinct = {f.chunk_list for s in snaps for f in s.files}
    assert len(distinct) < sum(len(s.files) for s in snaps) / 2
    # the sizes by the plain definition: a blob is freed when every snapshot naming it goes
    keys = {s.id: checker.referenced_blobs(mgr.repo, s) for s in snaps}
    index = mgr.repo.index()

    def freed(ids: set[str]) -> int:
        gone = set().union(*(keys[i] for i in ids))
        kept = set().union(*(keys[s.id] for s in snaps if s.id not in ids))
        return sum(index[k].length for k in gone - kept if k in index)

    reads: Counter[str] = Counter()
    read = Repository.read_chunk_list

    def counting(self: Repository, key: str) -> Any:
        reads[key] += 1
        return read(self, key)

    monkeypatch.setattr(Repository, "read_chunk_list", counting)  # counts, then reads for real
    stats = mgr.stats()
    assert set(reads) == distinct and max(reads.values()) == 1
    assert [s.unique_bytes for s in stats.snapshots] == [freed({s.id}) for s in snaps]
    reads.clear()
    res = mgr.prune(RetentionPolicy(keep_last=2))
    assert set(reads) == distinct and max(reads.values()) == 1
    assert res.expected_bytes == freed({s.id for s in snaps[:-2]}) > 0
    assert all(v.ok for v in mgr.verify_many(None, quick=True))
