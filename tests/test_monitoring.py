"""Monitoring: `chromasnap stats --prometheus` read back by prometheus_client's parsers (the
OpenMetrics one and the classic text one node_exporter's textfile collector uses), and
`chromasnap health --json` as a container health check reads it (docs/monitoring.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_classic

from chromasnap.snapshots import SnapshotManager

ENV = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chromasnap.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )


def samples(text: str) -> dict[str, tuple[dict[str, str], float]]:
    """name -> (labels, value) through the strict OpenMetrics parser; the classic parser must
    read the same samples."""
    strict = {s.name: (s.labels, s.value) for f in parse_openmetrics(text) for s in f.samples}
    classic = {s.name: (s.labels, s.value) for f in parse_classic(text) for s in f.samples}
    assert classic == strict
    return strict


KILLED_WRITE = """
import os, signal, sys
from chromasnap.snapshots import SnapshotManager
with SnapshotManager(sys.argv[1], sys.argv[2]).before_write(reason="killed"):
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_stats_prometheus_parses_and_says_what_the_store_holds(db: Path, tmp_path: Path) -> None:
    # a store path with characters label values must escape
    store = tmp_path / 'st"o\\re\nx'
    empty = cli("stats", "--prometheus", "--db", str(db), "--store", str(store))
    assert empty.returncode == 2 and "no chromasnap store" in empty.stderr  # one line, as every error

    mgr = SnapshotManager(db, store)
    first = mgr.snapshot(reason="first")
    assert mgr.verify(first.id, quick=True).ok
    with pytest.raises(RuntimeError), mgr.before_write(reason="fails"):
        raise RuntimeError("the indexer failed")
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(db), str(store)], check=False, timeout=120)
    assert proc.returncode == -9
    snaps = mgr.list()
    assert len(snaps) == 3

    r = cli("stats", "--prometheus", "--db", str(db), "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("# EOF\n")
    got = samples(r.stdout)
    labels = {"store": str(store)}
    assert all(lab == labels for lab, _ in got.values())
    value = {k.removeprefix("chromasnap_"): v for k, (_, v) in got.items()}
    stats = mgr.stats()
    assert value["snapshots"] == 3
    assert value["store_bytes"] == stats.store_bytes and value["logical_bytes"] == stats.logical_bytes
    assert value["dedup_ratio"] == pytest.approx(stats.dedup_ratio)
    assert value["newest_snapshot_timestamp_seconds"] == pytest.approx(snaps[-1].created_at.timestamp())
    assert value["newest_verified_snapshot_timestamp_seconds"] == pytest.approx(first.created_at.timestamp())
    generated = value["metrics_generated_timestamp_seconds"]
    assert value["newest_verified_snapshot_age_seconds"] == pytest.approx(
        generated - first.created_at.timestamp(), abs=0.01
    )
    failed_event = next(e for e in mgr.get(snaps[1].id).events if e.kind == "write-failed")
    # the killed write started after the failed one ended: its intent's start is the later
    assert value["last_failed_guarded_write_timestamp_seconds"] >= int(failed_event.at.timestamp())
    assert value["interrupted_guarded_writes"] == 1 and value["guarded_writes_in_progress"] == 0
    assert value["failed_verification_snapshots"] == 0 and value["unreadable_store_files"] == 0

    # --output: the same text, written atomically for the textfile collector
    out = tmp_path / "chromasnap.prom"
    r = cli("stats", "--prometheus", "--output", str(out), "--db", str(db), "--store", str(store))
    assert r.returncode == 0 and r.stdout == ""
    assert set(samples(out.read_text())) == set(got)
    assert cli("stats", "--output", str(out), "--db", str(db)).returncode == 2


def test_stats_prometheus_of_an_empty_store_has_no_times(tmp_path: Path) -> None:
    from chromasnap.snapshots.metrics import openmetrics, store_metrics

    mgr = SnapshotManager(tmp_path / "chroma")
    mgr.backend.create()
    from chromasnap.snapshots.repository import Repository

    Repository.open_or_create(mgr.backend)
    got = samples(openmetrics(store_metrics(mgr)))
    assert got["chromasnap_snapshots"][1] == 0
    assert "chromasnap_newest_snapshot_age_seconds" not in got  # no sample: alert on absent()
    assert "chromasnap_last_failed_guarded_write_timestamp_seconds" not in got


def test_health_json_fields_and_exit_codes(db: Path, tmp_path: Path) -> None:
    r = cli("health", "--json", "--db", str(db))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    fields = {
        "healthy",
        "verdict",
        "detail",
        "database",
        "in_place",
        "chromadb_version",
        "collections",
        "duration_s",
        "holders",
        "unmirrored",
    }
    assert set(out) == fields
    assert out["healthy"] is True and out["verdict"] == "ok" and out["collections"] == 2
    assert out["database"] == str(db) and out["in_place"] is False
    missing = cli("health", "--json", "--db", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and missing.stdout == "" and "does not exist" in missing.stderr
    (db / "chroma.sqlite3").write_bytes(b"not a database" * 100)
    broken = cli("health", "--json", "--db", str(db))
    assert broken.returncode == 1
    out = json.loads(broken.stdout)
    assert out["healthy"] is False and out["verdict"] == "damaged" and "not a database" in out["detail"]
    assert set(out) == fields
