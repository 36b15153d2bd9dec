"""Retention rules: which snapshots a policy keeps, and why (restic `forget` semantics).

Snapshots are grouped by source database and taken newest first. `keep_last N` keeps the
N newest; `keep_hourly/daily/weekly/monthly/yearly N` keep the newest snapshot of each of
the N most recent hours/days/ISO weeks/months/years that have snapshots; `keep_within D`
keeps everything within D of the group's newest snapshot; `keep_tags` keeps snapshots
carrying any of the tags. Safety rules no policy overrides: the newest snapshot that
passed a full verification, pinned snapshots, and snapshots a write intent refers to.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from chromasnap.manifest import RetentionPolicy, Snapshot

from .errors import UsageError

_UNITS = {"y": 365 * 24, "m": 30 * 24, "w": 7 * 24, "d": 24, "h": 1}
_DURATION = re.compile(r"^(?:\d+[ymwdh])+$")


def parse_duration(text: str) -> timedelta:
    """'7d12h' -> 7 days 12 hours. Units: y (365 days), m (30 days), w, d, h."""
    if not _DURATION.match(text or ""):
        raise UsageError(f"invalid duration {text!r}: use a number and a unit (y m w d h), e.g. 7d12h")
    hours = sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([ymwdh])", text))
    return timedelta(hours=hours)


BUCKETS: list[tuple[str, Callable[[datetime], tuple[int, ...]]]] = [
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar()[:2])),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: (t.year,)),
]


def has_rules(p: RetentionPolicy) -> bool:
    return bool(
        p.keep_last
        or p.keep_hourly
        or p.keep_daily
        or p.keep_weekly
        or p.keep_monthly
        or p.keep_yearly
        or p.keep_within
        or p.keep_tags
    )


def validate(p: RetentionPolicy) -> None:
    for name in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"):
        v = getattr(p, name)
        if v is not None and v < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, not {v}")
    if p.keep_within:
        parse_duration(p.keep_within)
    if p.keep_replaced:
        parse_replaced(p.keep_replaced)


def parse_replaced(text: str) -> int | timedelta:
    """`--keep-replaced`: a count ('3') or a duration ('14d')."""
    return int(text) if text.isdigit() else parse_duration(text)


def decide(
    snaps: Iterable[Snapshot], policy: RetentionPolicy, protected: dict[str, str]
) -> dict[str, list[str]]:
    """Snapshot id -> reasons to keep it (an empty list: remove). `protected` maps ids to
    a safety reason (pinned, write intent)."""
    groups: dict[str, list[Snapshot]] = {}
    for s in snaps:
        groups.setdefault(s.source, []).append(s)
    out: dict[str, list[str]] = {}
    for group in groups.values():
        group.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        for s in group:
            out[s.id] = []
        if policy.keep_last:
            for s in group[: policy.keep_last]:
                out[s.id].append("last")
        for name, key in BUCKETS:
            n = getattr(policy, f"keep_{name}")
            if not n:
                continue
            last: tuple[int, ...] | None = None
            for s in group:
                k = key(s.created_at)
                if k != last and n > 0:
                    out[s.id].append(f"{name} snapshot")
                    n -= 1
                    last = k
        if policy.keep_within:
            horizon = group[0].created_at - parse_duration(policy.keep_within)
            for s in group:
                if s.created_at >= horizon:
                    out[s.id].append(f"within {policy.keep_within}")
        if policy.keep_tags:
            for s in group:
                tags = set(s.tags) & set(policy.keep_tags)
                if tags:
                    out[s.id].append(f"tag {','.join(sorted(tags))}")
        verified = next((s for s in group if any(v.mode == "full" and v.ok for v in s.verifications)), None)
        if verified is not None:
            out[verified.id].append("newest fully verified (safety)")
        for s in group:
            if s.pinned:
                out[s.id].append("pinned (safety)")
            if s.id in protected:
                out[s.id].append(protected[s.id])
    return out
