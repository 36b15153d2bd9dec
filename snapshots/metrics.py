"""What a monitoring system watches in a store, and its OpenMetrics text (docs/monitoring.md).

`chromasnap stats --prometheus` writes `openmetrics(store_metrics(mgr))`: gauges only, so
the same text reads as OpenMetrics and as Prometheus' classic text format, which
node_exporter's textfile collector parses (`# UNIT` and `# EOF` are comments there).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

from .errors import ChromasnapError

if TYPE_CHECKING:
    from .manager import SnapshotManager

PREFIX = "chromasnap_"


class StoreMetrics(BaseModel):
    """A store's state for monitoring; times are Unix seconds, None when there is none."""

    store: str
    generated_at: float
    snapshots: int
    store_bytes: int
    logical_bytes: int
    dedup_ratio: float
    newest_snapshot_at: float | None
    newest_verified_at: float | None
    """Creation time of the newest snapshot whose last verification passed."""
    last_verification_failed: int
    """Snapshots whose last verification failed."""
    last_failed_write_at: float | None
    """The last guarded write that failed: an exception in its block (a `write-failed`
    event), or a process that died inside it (its write intent left behind)."""
    interrupted_writes: int
    """Write intents of processes that died on this host: `recover` would roll them back."""
    writes_in_progress: int
    unreadable: int
    """Snapshot documents or index files that could not be read (see `chromasnap list`)."""
    unmirrored: int | None = None
    """Snapshots not yet copied to the store's mirror (`policy set --mirror`); None: no mirror."""


def _ts(at: datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def store_metrics(mgr: SnapshotManager, now: float | None = None) -> StoreMetrics:
    """Read the store once (no lock: readers take none) and sum it up."""
    from .guard import read_intents

    stats = mgr.stats()  # lists the snapshots itself (mgr.problems then holds what is unreadable)
    snaps = mgr.list() if mgr.backend.exists() else []
    problems = len(mgr.problems)
    verified = [s for s in snaps if s.last_verification is not None and s.last_verification.ok]
    failed_events = [_ts(e.at) for s in snaps for e in s.events if e.kind == "write-failed"]
    interrupted = running = 0
    try:
        side = mgr.local if mgr.db_path is not None else mgr.backend  # beside the database when remote
        intents = read_intents(side, []) if side.exists() else []
    except (OSError, ChromasnapError):
        intents = []
    for i in intents:
        if i.dead:
            interrupted += 1
            failed_events.append(
                datetime.strptime(i.started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
            )
        else:
            running += 1
    return StoreMetrics(
        store=mgr.backend.location,
        generated_at=time.time() if now is None else now,
        snapshots=len(snaps),
        store_bytes=stats.store_bytes,
        logical_bytes=stats.logical_bytes,
        dedup_ratio=stats.dedup_ratio,
        newest_snapshot_at=max((_ts(s.created_at) for s in snaps), default=None),
        newest_verified_at=max((_ts(s.created_at) for s in verified), default=None),
        last_verification_failed=sum(
            1 for s in snaps if s.last_verification is not None and not s.last_verification.ok
        ),
        last_failed_write_at=max(failed_events, default=None),
        interrupted_writes=interrupted,
        writes_in_progress=running,
        unreadable=problems,
        unmirrored=_unmirrored(mgr),
    )


def _unmirrored(mgr: SnapshotManager) -> int | None:
    """The mirror backlog, or None when the store has no mirror (or it cannot be told)."""
    try:
        if not mgr.backend.exists() or not mgr.policy().mirror:
            return None
        return len(mgr.unmirrored())
    except (OSError, ChromasnapError):
        return None


def _label(value: str) -> str:
    """An OpenMetrics label value: backslash, double quote and newline escaped; other
    control characters (a path may hold any) as well, so one sample stays one line."""
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return "".join(c if c.isprintable() else f"\\\\x{ord(c):02x}" for c in out)


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    return repr(float(v))


def openmetrics(m: StoreMetrics) -> str:
    """The metrics as OpenMetrics text (ends with `# EOF`). A time that does not exist yet
    (no snapshot, none verified, no failed write) has its family but no sample."""
    labels = f'{{store="{_label(m.store)}"}}'
    out: list[str] = []

    def gauge(name: str, help_: str, value: float | None, unit: str = "") -> None:
        full = PREFIX + name
        out.append(f"# TYPE {full} gauge")
        if unit:
            out.append(f"# UNIT {full} {unit}")
        out.append(f"# HELP {full} {help_}")
        if value is not None:
            out.append(f"{full}{labels} {_num(value)}")

    def age(at: float | None) -> float | None:
        return None if at is None else max(0.0, round(m.generated_at - at, 3))

    gauge("snapshots", "Readable snapshots in the store.", m.snapshots)
    gauge("store_bytes", "Bytes the store takes (packs, indexes, documents).", m.store_bytes, "bytes")
    gauge("logical_bytes", "Sum of the database sizes the snapshots hold.", m.logical_bytes, "bytes")
    gauge("dedup_ratio", "Logical bytes per stored pack byte.", m.dedup_ratio, "ratio")
    gauge(
        "newest_snapshot_timestamp_seconds",
        "Creation time of the newest snapshot (Unix seconds).",
        m.newest_snapshot_at,
        "seconds",
    )
    gauge(
        "newest_snapshot_age_seconds",
        "Age of the newest snapshot when these metrics were written.",
        age(m.newest_snapshot_at),
        "seconds",
    )
    gauge(
        "newest_verified_snapshot_timestamp_seconds",
        "Creation time of the newest snapshot whose last verification passed.",
        m.newest_verified_at,
        "seconds",
    )
    gauge(
        "newest_verified_snapshot_age_seconds",
        "Age of the newest snapshot whose last verification passed, when written.",
        age(m.newest_verified_at),
        "seconds",
    )
    gauge(
        "failed_verification_snapshots",
        "Snapshots whose last verification failed.",
        m.last_verification_failed,
    )
    gauge(
        "last_failed_guarded_write_timestamp_seconds",
        "Start or failure time of the last guarded write that failed or whose process died.",
        m.last_failed_write_at,
        "seconds",
    )
    gauge(
        "interrupted_guarded_writes",
        "Write intents of dead processes: recover would roll these writes back.",
        m.interrupted_writes,
    )
    gauge("guarded_writes_in_progress", "Write intents of live processes.", m.writes_in_progress)
    gauge("unreadable_store_files", "Snapshot documents or index files that could not be read.", m.unreadable)
    gauge(
        "unmirrored_snapshots",
        "Snapshots not yet copied to the store's mirror (no sample without a mirror).",
        m.unmirrored,
    )
    gauge(
        "metrics_generated_timestamp_seconds",
        "When these metrics were written (Unix seconds).",
        m.generated_at,
        "seconds",
    )
    return "\n".join([*out, "# EOF", ""])
