"""The torture suite's short form: real kills, flips, hostile input and concurrency.

The long form is `python bench/torture.py --long`; both count the same things.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import pytest
from torture import PersistTally, persist, run


@pytest.mark.slow  # about 3 minutes on a loaded 2-core machine; each part has its own tests
def test_torture_lean_form(tmp_path: Path) -> None:
    """Real kills, flips and concurrency, fewer of each (the default run's budget)."""
    t = run(tmp_path, n_kills=3, n_flips=10, seconds=6, with_bad_inputs=False)
    assert t.wrong == []
    assert (t.kills, t.lost) == (3, 0)
    assert (t.flips, t.undetected) == (10, 0)
    assert t.concurrent_ops > 0 and t.torn == 0


@pytest.mark.slow
def test_torture_short_form(tmp_path: Path) -> None:
    t = run(tmp_path, n_kills=5, n_flips=25, seconds=12)
    assert t.wrong == []
    assert (t.kills, t.lost) == (5, 0)
    assert (t.flips, t.undetected) == (25, 0)
    # 30 bad arguments, 4 hostile manifests, 10 Ctrl-C, 39 crafted stores (one needs root)
    assert t.bad_inputs >= 83 - (os.geteuid() != 0) and t.tracebacks == 0
    assert t.concurrent_ops > 0 and t.torn == 0


@pytest.mark.slow
def test_persist_torture_short_form(tmp_path: Path) -> None:
    """Snapshots under a writer saving its HNSW every 100 records (the long form is
    `python bench/torture.py --persist-only --persist 200`): every snapshot taken verifies
    in full; any refused is one line and leaves nothing listed."""
    t = persist(tmp_path, 4, PersistTally(), prefill=500)
    assert t.wrong == []
    assert t.snapshots == 4 and t.taken + t.failed == 4 and t.torn == 0
