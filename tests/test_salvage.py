"""salvage: what survives in a broken database, read without chromadb and without
unpickling, checked bit for bit against what chromadb itself returned (chromadb 1.5 and
1.0 in child processes), on real damage where it can be made and real SIGKILLs."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chromasnap.snapshots import collection_child, safepickle, salvage, salvage_hnsw, salvage_sqlite
from chromasnap.snapshots.hnsw import HEADER_FORMAT, parse_geometry
from chromasnap.snapshots.salvage_sqlite import ADD, DELETE, UPDATE, UPSERT, QueueRow
from conftest import run_sample

CHILD = str(Path(__file__).with_name("salvage_child.py"))
MARKER_NAME = "salvage-pwned"

# updates, deletes, upserts, a persisted add, then changes the HNSW has not persisted
PLAN = [
    {"op": "update", "collection": "coll0", "start": 0, "n": 50, "seed": 5},
    {"op": "update_meta", "collection": "coll0", "start": 50, "n": 50},
    {"op": "delete", "collection": "coll0", "start": 100, "n": 30},
    {"op": "upsert", "collection": "coll0", "start": 2480, "n": 40, "seed": 9},
    {"op": "add", "collection": "coll0", "start": 5000, "n": 1000, "seed": 11},
    {"op": "update", "collection": "coll0", "start": 200, "n": 20, "seed": 13},
    {"op": "update_meta", "collection": "coll0", "start": 0, "n": 10},
    {"op": "delete", "collection": "coll0", "start": 5000, "n": 5},
    {"op": "add", "collection": "coll0", "start": 5000, "n": 3, "seed": 17},
    # an l2 collection: vectors stored and returned as given
    {"op": "add", "collection": "l2c", "space": "l2", "start": 0, "n": 1010, "seed": 19, "batch": 1005},
]
NAMES = ("coll0", "coll1", "l2c")


def change(db: Path, plan: list[dict[str, Any]], python: str = sys.executable, dim: int = 384) -> None:
    steps = [{**step, "dim": dim} for step in plan]
    proc = subprocess.run(
        [python, CHILD, str(db), json.dumps(steps)], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def export(db: Path, name: str, out: Path, python: str = sys.executable) -> dict[str, dict[str, Any]]:
    """What chromadb's get returns for every record of a collection (child process)."""
    proc = subprocess.run(
        [python, collection_child.__file__, "export", str(db), name, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    got = {}
    with out.open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            rec["bytes"] = np.asarray(rec["embedding"], dtype=np.float32).tobytes()
            got[rec["id"]] = rec
    return got


Truth = dict[str, dict[str, dict[str, Any]]]


def changed_copy(source: Path, tmp: Path, python: str, dim: int) -> tuple[Path, Truth]:
    db = tmp / "chroma"
    shutil.copytree(source, db, symlinks=True)
    change(db, PLAN, python, dim)
    truth = {name: export(db, name, tmp / f"{name}.jsonl", python) for name in NAMES}
    return db, truth


@pytest.fixture(scope="session")
def changed(base_db: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    """chromadb 1.5: the base database (coll0 2500 records, coll1 300 never persisted)
    changed by PLAN; and what chromadb returned for each record."""
    return changed_copy(base_db, tmp_path_factory.mktemp("changed"), sys.executable, 384)


@pytest.fixture(scope="session")
def old_changed(old_python: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    """The same under chromadb 1.0.20 (coll0 1200 records, coll1 40, dimension 32)."""
    tmp = tmp_path_factory.mktemp("old-changed")
    run_sample("build", str(tmp / "base"), "--records", "1200", "40", "--dim", "32", python=old_python)
    return changed_copy(tmp / "base", tmp, old_python, 32)


@pytest.fixture
def broken(changed: tuple[Path, Truth], tmp_path: Path) -> Path:
    """A private copy of the changed database, to break."""
    dest = tmp_path / "chroma"
    shutil.copytree(changed[0], dest, symlinks=True)
    return dest


def run_salvage(db: Path, tmp: Path) -> salvage.Salvage:
    copy = tmp / "private.sqlite3"
    copy.unlink(missing_ok=True)
    salvage.copy_sqlite(db, copy)
    return salvage.salvage(db, copy)


def check(result: salvage.Salvage, truth: Truth) -> dict[str, int]:
    """Every record chromadb returned is listed; every recovered embedding is the exact
    bytes chromadb returned; every lost one has a known reason. Counts by source."""
    counts = {"queue": 0, "hnsw": 0, "lost": 0}
    for coll in result.collections:
        want = truth[coll.info.name]
        assert coll.records is not None
        assert {r.id for r in coll.records} == set(want)
        for rec in coll.records:
            if rec.source is None:
                assert rec.reason in salvage.LOST_REASONS, rec
                counts["lost"] += 1
                continue
            assert rec.embedding == want[rec.id]["bytes"], (coll.info.name, rec.id, rec.source)
            counts[rec.source] += 1
    return counts


def segment_of(db: Path, name: str = "coll0") -> Path:
    con = sqlite3.connect(f"file:{db / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        (seg,) = con.execute(
            "SELECT s.id FROM segments s JOIN collections c ON s.collection = c.id "
            "WHERE c.name = ? AND s.scope = 'VECTOR'",
            (name,),
        ).fetchone()
    finally:
        con.close()
    return db / str(seg)


# --- safepickle ---------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickle_is_refused_without_running_anything(tmp_path: Path, broken: Path) -> None:
    marker = tmp_path / MARKER_NAME
    evil = pickle.dumps({"id_to_label": {"x": 1}, "trap": Payload(marker)})
    for protocol in (0, 2, 5):
        data = pickle.dumps(Payload(marker), protocol=protocol)
        with pytest.raises(safepickle.PickleRefused, match="global"):
            safepickle.parse(data)
        with pytest.raises(safepickle.PickleRefused):
            safepickle.parse_prefix(data, pending=True)
    labels = salvage_hnsw.parse_label_map(evil)
    assert labels.labels == {} and labels.error and "refused" in labels.error
    # in place of a real index_metadata.pickle: salvage refuses it and takes nothing from the HNSW
    (segment_of(broken) / "index_metadata.pickle").write_bytes(evil)
    result = run_salvage(broken, tmp_path)
    coll0 = next(c for c in result.collections if c.info.name == "coll0")
    assert coll0.counts()["hnsw"] == 0
    assert coll0.counts()["lost_by_reason"] == {"label_map_unreadable": coll0.counts()["lost"]}
    assert any("refused" in p for p in coll0.problems)
    assert not marker.exists()


FORBIDDEN = {
    "GLOBAL": b"\x80\x02cos\nsystem\n.",
    "STACK_GLOBAL": b"\x80\x04\x8c\x02os\x8c\x06system\x93.",
    "INST": b"(ios\nsystem\n.",
    "OBJ": b"(N)o.",
    "NEWOBJ": b"\x80\x02N)\x81.",
    "NEWOBJ_EX": b"\x80\x04N)}\x92.",
    "REDUCE": b"\x80\x02N)R.",
    "BUILD": b"\x80\x02}}b.",
    "EXT1": b"\x80\x02\x82\x01.",
    "EXT2": b"\x80\x02\x83\x01\x00.",
    "EXT4": b"\x80\x02\x84\x01\x00\x00\x00.",
    "PERSID": b"Pid\n.",
    "BINPERSID": b"\x80\x02NQ.",
    "NEXT_BUFFER": b"\x80\x05\x97.",
    "EMPTY_SET": b"\x80\x04\x8f.",
    "BYTEARRAY8": b"\x80\x05\x96\x01\x00\x00\x00\x00\x00\x00\x00x.",
    "STRING": b"S'abc'\n.",
    "unknown opcode": b"\x80\x02\xff.",
}


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_every_object_building_opcode_is_refused(name: str) -> None:
    with pytest.raises(safepickle.PickleRefused):
        safepickle.parse(FORBIDDEN[name])


def test_plain_data_reads_back_equal_at_every_protocol() -> None:
    shared = [1, 2]
    values: list[Any] = [
        {"a": [1, 2.5, (3, None, True, False)], "é": "ü", 7: {}, (1, "t"): -(2**70)},
        list(range(2500)),
        {str(i): i for i in range(2500)},
        ((), [], {}, "", 0, -1, 255, 65536, 2**31, 1e300, -0.0),
        {"x": shared, "y": shared},
    ]
    with_bytes: list[Any] = [b"", b"\x00\xff" * 300, {"b": [b"x", "x"]}]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        # below protocol 3 Python writes bytes through a global (refused, tested above)
        for value in values + (with_bytes if protocol >= 3 else []):
            assert safepickle.parse(pickle.dumps(value, protocol=protocol)) == value, (protocol, value)


def test_limits_and_self_reference_are_refused() -> None:
    deep: Any = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(safepickle.PickleRefused, match="nest"):
        safepickle.parse(pickle.dumps(deep, protocol=0))  # protocol 0: a MARK per level
    with pytest.raises(safepickle.PickleRefused, match="nests"):
        safepickle.parse(pickle.dumps(deep, protocol=4))
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(safepickle.PickleRefused, match="refers to itself"):
        safepickle.parse(pickle.dumps(loop))
    laugh: Any = ["x"] * 10
    for _ in range(8):
        laugh = [laugh] * 10  # 10**9 elements through shared references, in a few hundred bytes
    with pytest.raises(safepickle.PickleRefused, match="elements"):
        safepickle.parse(pickle.dumps(laugh), safepickle.Limits(max_items=1_000_000))
    with pytest.raises(safepickle.PickleRefused, match="limit"):
        safepickle.parse(pickle.dumps(list(range(1000))), safepickle.Limits(max_bytes=100))
    with pytest.raises(safepickle.PickleDamaged):
        safepickle.parse(pickle.dumps([1, 2, 3])[:-1])
    with pytest.raises(safepickle.PickleDamaged, match="after STOP"):
        safepickle.parse(pickle.dumps(1) + b"junk")


def serde_pickle(value: Any) -> bytes:
    """`value` (dicts of str keys; str, int, float, bool, None, dict, list values) pickled
    the way chromadb's serde_pickle writes index_metadata.pickle: protocol 3, EMPTY_DICT,
    MARK ... SETITEMS in batches of 1000, BINUNICODE, BININT, no memo."""

    def emit(v: Any) -> bytes:
        if isinstance(v, dict):
            out, pairs = b"}", list(v.items())
            for i in range(0, len(pairs), 1000):
                out += b"(" + b"".join(emit(k) + emit(x) for k, x in pairs[i : i + 1000]) + b"u"
            return out
        if isinstance(v, list):
            return b"](" + b"".join(emit(x) for x in v) + b"e" if v else b"]"
        if v is None:
            return b"N"
        if isinstance(v, bool):
            return b"\x88" if v else b"\x89"
        if isinstance(v, int):
            return b"J" + struct.pack("<i", v)
        if isinstance(v, float):
            return b"G" + struct.pack(">d", v)
        raw = v.encode("utf-8", "surrogatepass")
        return b"X" + struct.pack("<I", len(raw)) + raw

    return b"\x80\x03" + emit(value) + b"."


def idmap(n: int) -> dict[str, Any]:
    ids = [f"id-{i}" for i in range(n)]
    return {
        "dimensionality": None,
        "total_elements_added": n,
        "max_seq_id": None,
        "id_to_label": {rid: k + 1 for k, rid in enumerate(ids)},
        "label_to_id": {k + 1: rid for k, rid in enumerate(ids)},
        "id_to_seq_id": {},
    }


def test_fast_path_reads_exactly_what_the_walker_reads() -> None:
    """safepickle's fast path (serde_pickle's opcodes, one tight loop) gives the walker's
    value for what it takes, and leaves everything else to the walker: refused opcodes,
    memo, damage, limits."""
    value = idmap(2500) | {"x": [1.5, True, False, None, "é\ud800", -(2**31)], "y": {}, "z": []}
    data = serde_pickle(value)
    walked, damage, _ = safepickle._run(data, safepickle.DEFAULT_LIMITS, strict=True)
    assert damage is None and walked.result == value
    assert safepickle._fast(data, safepickle.DEFAULT_LIMITS) == value  # taken by the fast path
    assert safepickle.parse(data) == value
    assert safepickle.parse_prefix(data, pending=True) == safepickle.Prefix(value, True, None, len(data))
    nested = {"t": [[[]], [[1]]], "u": {"v": {"w": None}}}
    assert safepickle._fast(serde_pickle(nested), safepickle.DEFAULT_LIMITS) == nested
    # not taken: forbidden content, memo, protocols Python writes, a cut, junk, NULs, limits
    not_fast = [
        *FORBIDDEN.values(),
        pickle.dumps(value, protocol=2),
        pickle.dumps(value, protocol=5),
        data[:-1],
        data[: len(data) // 2] + b".",
        data + b"junk.",
        data[:-1] + b"\x00" * 8 + b".",
    ]
    for bad in not_fast:
        assert safepickle._fast(bad, safepickle.DEFAULT_LIMITS) is safepickle._NOT_FAST, bad[:40]
    for limits in (
        safepickle.Limits(max_items=1000),
        safepickle.Limits(max_depth=1),
        safepickle.Limits(max_bytes=100),
    ):
        assert safepickle._fast(data, limits) is safepickle._NOT_FAST
        with pytest.raises(safepickle.PickleRefused):
            safepickle.parse(data, limits)
    # what a cut leaves is read by the walker, exactly as before
    for cut in (10, len(data) // 3, len(data) - 2):
        got = salvage_hnsw.parse_label_map(data[:cut])
        assert not got.complete and all(value["id_to_label"][k] == v for k, v in got.labels.items())


def test_label_map_checks_every_entry_when_the_maps_disagree() -> None:
    """The label map's C-speed check passes only a consistent map; otherwise the entry by
    entry checks leave out each disagreement (a label twice, a wrong back-reference, a
    wrong type) and keep the rest."""
    value = idmap(50)
    assert salvage_hnsw.parse_label_map(serde_pickle(value)).labels == value["id_to_label"]
    value["id_to_label"]["id-3"] = 5  # id-3 and id-4 both claim label 5
    value["label_to_id"][8] = "id-9"  # label 8 names another id
    value["id_to_label"]["id-20"] = -1  # out of range
    got = salvage_hnsw.parse_label_map(serde_pickle(value))
    assert got.conflicts == {"id-3", "id-4", "id-7"}
    assert "id-20" not in got.labels and got.error == "id_to_label holds entries of the wrong type"
    assert not got.complete  # a wrong entry: the map cannot say an id is absent
    assert len(got.labels) == 50 - 4 and got.labels["id-10"] == 11


def idmap_checks(data: bytes) -> dict[str, int]:
    value = safepickle.parse(data)
    assert list(value) == [
        "dimensionality",
        "total_elements_added",
        "max_seq_id",
        "id_to_label",
        "label_to_id",
        "id_to_seq_id",
    ]
    forward, backward = value["id_to_label"], value["label_to_id"]
    assert {v: k for k, v in forward.items()} == backward
    assert all(type(k) is str and type(v) is int and v > 0 for k, v in forward.items())
    assert value["total_elements_added"] >= max(forward.values())
    ops = {op.name for op, _arg, _pos in __import__("pickletools").genops(data)}
    assert ops <= {"PROTO", "EMPTY_DICT", "MARK", "BINUNICODE", "BININT", "NONE", "SETITEMS", "STOP"}
    return dict(forward)


@pytest.mark.slow
def test_chromadb_pickles_parse_and_truncated_ones_give_an_exact_prefix(
    changed: tuple[Path, Truth], old_changed: tuple[Path, Truth]
) -> None:
    for db in (changed[0], old_changed[0]):
        data = (segment_of(db) / "index_metadata.pickle").read_bytes()
        full = idmap_checks(data)
        seen = 0
        cuts = [0, 50, len(data) // 5, *range(len(data) // 2, len(data) // 2 + 10), len(data) - 1]
        for cut in cuts:
            with pytest.raises(safepickle.PickleDamaged):
                safepickle.parse(data[:cut])
            for tail in (b"", b"\x00" * 64):  # cut short, or cut and extended with zeros
                got = salvage_hnsw.parse_label_map(data[:cut] + tail)
                assert not got.complete and got.error
                assert all(full[k] == v for k, v in got.labels.items())  # never a wrong pair
                assert len(got.labels) >= seen
            seen = len(got.labels)
        assert seen == len(full)  # cut inside label_to_id: the id -> label map is whole


# --- vectors: bit for bit against chromadb ---------------------------------------------------------


def test_salvage_matches_chromadb_bit_for_bit(changed: tuple[Path, Truth], tmp_path: Path) -> None:
    db, truth = changed
    result = run_salvage(db, tmp_path)
    assert result.health.whole_ok and not result.problems
    counts = check(result, truth)
    assert counts["lost"] == 0
    coll0 = next(c for c in result.collections if c.info.name == "coll0")
    by_id = {r.id: r for r in coll0.records or []}
    # updated after the last persist: from the queue; updated before it: from the HNSW
    assert {by_id[f"coll0-{i}"].source for i in range(200, 220)} == {"queue"}
    assert {by_id[f"coll0-{i}"].source for i in range(10, 50)} == {"hnsw"}
    assert {by_id[f"coll0-{i}"].source for i in range(0, 10)} == {"hnsw"}  # metadata changed since
    assert {by_id[f"coll0-{i}"].source for i in range(5000, 5003)} == {"queue"}  # re-added
    l2c = next(c for c in result.collections if c.info.name == "l2c")
    assert l2c.info.space == "l2" and l2c.counts()["hnsw"] >= 1000
    assert counts["hnsw"] > 3000 and counts["queue"] >= 300 + 23
    for coll in result.collections:
        for rec in coll.records or []:
            want = truth[coll.info.name][rec.id]
            assert rec.document == want["document"] and rec.metadata == want["metadata"]
            if rec.raw is not None:  # the queue's input: adding it again gives the same readback
                raw = np.frombuffer(rec.raw, dtype="<f4")
                assert salvage.returned_embedding(raw, coll.info.space) == rec.embedding


@pytest.mark.slow
def test_salvage_matches_chromadb_1_0(old_changed: tuple[Path, Truth], tmp_path: Path) -> None:
    db, truth = old_changed
    counts = check(run_salvage(db, tmp_path), truth)
    assert counts["lost"] == 0 and counts["hnsw"] > 1500 and counts["queue"] >= 40 + 23


# --- broken HNSW files ---------------------------------------------------------------------------


def lost(result: salvage.Salvage, name: str = "coll0") -> dict[str, str]:
    coll = next(c for c in result.collections if c.info.name == name)
    return {r.id: str(r.reason) for r in coll.records or [] if r.source is None}


def test_inflated_element_count(broken: Path, changed: tuple[Path, Truth], tmp_path: Path) -> None:
    """The first of issue 18's breaks (chromadb dies by SIGSEGV opening it)."""
    header = segment_of(broken) / "header.bin"
    fields = list(struct.unpack(HEADER_FORMAT, header.read_bytes()))
    fields[3] = fields[2] + 100_000  # cur_element_count far past max_elements
    header.write_bytes(struct.pack(HEADER_FORMAT, *fields))
    result = run_salvage(broken, tmp_path)
    assert check(result, changed[1])["lost"] == 0
    assert any("holds" in p for c in result.collections for p in c.problems)


def test_truncated_pickle_loses_only_what_it_cannot_map(
    broken: Path, changed: tuple[Path, Truth], tmp_path: Path
) -> None:
    """chromadb 1.0 and 1.5 rewrite the pickle in place: a kill mid-write truncates it."""
    pickle_path = segment_of(broken) / "index_metadata.pickle"
    data = pickle_path.read_bytes()
    pickle_path.write_bytes(data[: len(data) // 10])
    result = run_salvage(broken, tmp_path)
    counts = check(result, changed[1])  # derived labels too give chromadb's exact bytes
    coll0 = next(c for c in result.collections if c.info.name == "coll0")
    got = coll0.counts()
    assert set(got["lost_by_reason"]) <= {"label_map_unreadable"}
    assert got["hnsw_derived_label"] > 2000 and got["lost"] < 100
    assert any("derived from insertion order" in p for p in coll0.problems)
    coll1 = next(c for c in result.collections if c.info.name == "coll1")
    assert all(r.source == "queue" for r in coll1.records or [])
    assert counts["lost"] == got["lost"]


def test_an_emptied_pickle_is_completed_from_a_snapshots_labels(
    broken: Path, changed: tuple[Path, Truth], base_db: Path, tmp_path: Path
) -> None:
    """A kill right after chromadb truncated the pickle to rewrite it leaves it empty (seen
    for real by bench/salvage_probe.py): no label can be read. The database it was
    changed from stands in for a snapshot: its labels of records unchanged since hold."""
    (segment_of(broken) / "index_metadata.pickle").write_bytes(b"")
    alone = run_salvage(broken, tmp_path)
    assert set(lost(alone).values()) == {"label_map_unreadable"} and len(lost(alone)) > 2000
    snap_sqlite = tmp_path / "snapshot.sqlite3"
    salvage.copy_sqlite(base_db, snap_sqlite)
    older = salvage.older_labels(base_db, snap_sqlite)
    copy = tmp_path / "private.sqlite3"
    copy.unlink()
    salvage.copy_sqlite(broken, copy)
    result = salvage.salvage(broken, copy, older)
    counts = check(result, changed[1])
    coll0 = next(c for c in result.collections if c.info.name == "coll0")
    assert any("taken from the older copy" in p for p in coll0.problems)
    by_id = {r.id: r for r in coll0.records or []}
    kept = [i for i in range(10, 2480) if not (100 <= i < 130 or 200 <= i < 220)]  # deleted; in the queue
    assert all(by_id[f"coll0-{i}"].source == "hnsw" for i in kept)
    assert all(by_id[f"coll0-{i}"].label_derived for i in range(10, 100))  # updated since: by order
    # created since the snapshot and before the persist: past the last anchor, where five
    # labels of records deleted after the persist are still live, so that gap stays unmapped
    assert {r.reason for r in coll0.records or [] if r.source is None} == {"label_map_unreadable"}
    tail = {f"coll0-{i}" for i in [*range(2480, 2520), *range(5005, 6000)]}
    assert set(lost(result)) <= tail and counts["lost"] > 1000


def test_labels_are_derived_only_between_anchors_in_order() -> None:
    def rec(i: int) -> salvage_sqlite.RecordRow:
        return salvage_sqlite.RecordRow(f"r{i}", i, rowid=10 * i)

    records = [rec(i) for i in range(10)]
    live = np.array([1, 2, 3, 5, 6, 7, 8, 9, 10, 11])  # label 4 deleted
    known = salvage_hnsw.LabelMap(labels={"r0": 1, "r4": 6, "r9": 11})
    derived, _ = salvage.derive_labels(known, records, live)
    assert derived == {"r1": 2, "r2": 3, "r3": 5, "r5": 7, "r6": 8, "r7": 9, "r8": 10}
    # a gap whose counts differ (a live label with no record: deleted since) stays unmapped
    derived, note = salvage.derive_labels(known, records, np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]))
    assert derived == {"r5": 7, "r6": 8, "r7": 9, "r8": 10} and "1 of 2 gaps left unmapped" in note
    # anchors out of insertion order: the premise fails, nothing is derived
    swapped = salvage_hnsw.LabelMap(labels={"r0": 1, "r4": 11, "r9": 6})
    assert salvage.derive_labels(swapped, records, live)[0] == {}
    # the ends are gaps too: both sequences start and end together
    two = salvage_hnsw.LabelMap(labels={"r2": 3, "r4": 6})
    assert salvage.derive_labels(two, records, live)[0] == {
        "r0": 1,
        "r1": 2,
        "r3": 5,
        "r5": 7,
        "r6": 8,
        "r7": 9,
        "r8": 10,
        "r9": 11,
    }
    # a live label past the last record (created or deleted since, say): the tail stays unmapped
    longer = np.array([*live, 12])
    assert set(salvage.derive_labels(two, records, longer)[0]) == {"r0", "r1", "r3"}
    # a single readable entry cannot show the order holds: nothing is derived
    assert salvage.derive_labels(salvage_hnsw.LabelMap(labels={"r2": 3}), records, live)[0] == {}


def test_damaged_level0_pages(broken: Path, changed: tuple[Path, Truth], tmp_path: Path) -> None:
    """Injected at the file's bytes: a zeroed page and a page of noise in data_level0.bin,
    a record marked deleted, a label carried twice, a short length.bin."""
    seg = segment_of(broken)
    h = parse_geometry((seg / "header.bin").read_bytes())
    assert h is not None
    size = h.size_data_per_element
    level0 = bytearray((seg / "data_level0.bin").read_bytes())
    level0[40960 : 40960 + 4096] = bytes(4096)
    level0[81920 : 81920 + 4096] = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    deleted_at, dup_from, dup_to = 200, 300, 301
    level0[deleted_at * size + 2] |= 0x01
    label_at = slice(dup_from * size + h.label_offset, dup_from * size + size)
    level0[dup_to * size + h.label_offset : dup_to * size + size] = level0[label_at]
    (seg / "data_level0.bin").write_bytes(bytes(level0))
    lengths = (seg / "length.bin").read_bytes()
    (seg / "length.bin").write_bytes(lengths[: 4 * (h.cur_element_count - 10)])
    result = run_salvage(broken, tmp_path)
    counts = check(result, changed[1])
    reasons = set(lost(result).values())
    assert {"deleted", "duplicate_label", "out_of_range", "no_record"} <= reasons
    assert reasons <= {"deleted", "duplicate_label", "out_of_range", "no_record", "not_unit", "non_finite"}
    assert reasons & {"not_unit", "non_finite"}
    assert counts["lost"] < 40 and counts["hnsw"] > 3000


def test_segment_folder_symlink_is_not_followed(broken: Path, tmp_path: Path) -> None:
    seg = segment_of(broken)
    elsewhere = tmp_path / "elsewhere"
    seg.rename(elsewhere)
    seg.symlink_to(elsewhere, target_is_directory=True)
    result = run_salvage(broken, tmp_path)
    assert set(lost(result).values()) == {"label_map_unreadable"}
    assert any("symlink" in p for c in result.collections for p in c.problems)


# --- broken SQLite ---------------------------------------------------------------------------------


def corrupt_table(path: Path, table: str) -> None:
    """Injected: overwrite the cells of one leaf page of `table` (found with dbstat)."""
    con = sqlite3.connect(path)
    try:
        (page_size,) = con.execute("PRAGMA page_size").fetchone()
        pages = [
            r[0] for r in con.execute("SELECT pageno FROM dbstat WHERE name = ? ORDER BY pageno", (table,))
        ]
    finally:
        con.close()
    with path.open("r+b") as fh:
        fh.seek((pages[len(pages) // 2] - 1) * page_size + 100)
        fh.write(b"\xff" * 400)


def salvage_of_copy(db: Path, tmp: Path, table: str) -> salvage.Salvage:
    copy = tmp / "private.sqlite3"
    salvage.copy_sqlite(db, copy)
    corrupt_table(copy, table)
    return salvage.salvage(db, copy)


def test_records_are_read_whole_or_only_where_asked(changed: tuple[Path, Truth], tmp_path: Path) -> None:
    """read_records with `content`: every record's id, seq_id and rowid, and the document
    and metadata (looked up by rowid for a few, filtered from one pass for most) of those
    it accepts, exactly as a whole read gives them; the others' None."""
    copy = tmp_path / "c.sqlite3"
    salvage.copy_sqlite(changed[0], copy)
    con = salvage_sqlite.connect(copy)
    try:
        health = salvage_sqlite.check_tables(con)
        assert salvage_sqlite.check_file(copy) == health
        info = next(c for c in salvage_sqlite.read_collections(con, health)[0] if c.name == "coll0")
        full, _ = salvage_sqlite.read_records(con, info, health)
        assert full is not None and sum(r.metadata is not None for r in full) > 1000
        for pick in (lambda r: r.rowid % 7 == 0, lambda r: r.rowid % 7 != 0, lambda r: False):
            got, _ = salvage_sqlite.read_records(con, info, health, pick)
            assert got is not None
            assert [(r.id, r.seq_id, r.rowid) for r in got] == [(r.id, r.seq_id, r.rowid) for r in full]
            for a, b in zip(got, full, strict=True):
                want = (b.document, b.metadata, b.uri) if pick(b) else (None, None, None)
                assert (a.document, a.metadata, a.uri) == want
    finally:
        con.close()


def test_python_sqlite_checks_one_table() -> None:
    assert salvage_sqlite.per_table_check_supported(), sqlite3.sqlite_version  # 3.40.1 here


def test_a_failing_queue_is_not_used(changed: tuple[Path, Truth], tmp_path: Path) -> None:
    db, truth = changed
    result = salvage_of_copy(db, tmp_path, "embeddings_queue")
    assert not result.health.whole_ok and set(result.health.failed) == {"embeddings_queue"}
    assert any("embeddings_queue fails" in p for p in result.problems)
    counts = check(result, truth)
    assert counts["queue"] == 0
    assert set(lost(result).values()) == {"queue_unusable"}
    assert len(lost(result, "coll1")) == 300  # never persisted: its vectors were only in the queue
    assert counts["hnsw"] > 3000


def test_failing_metadata_table_keeps_ids_and_vectors(changed: tuple[Path, Truth], tmp_path: Path) -> None:
    db, truth = changed
    result = salvage_of_copy(db, tmp_path, "embedding_metadata")
    assert set(result.health.failed) == {"embedding_metadata"}
    assert check(result, truth)["lost"] == 0
    coll0 = next(c for c in result.collections if c.info.name == "coll0")
    assert any("documents and metadata are unknown" in p for p in coll0.problems)
    assert all(r.document is None and r.metadata is None for r in coll0.records or [])


def test_an_unreadable_sqlite_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database" * 1000)
    for path in (garbage, tmp_path / "missing.sqlite3"):
        result = salvage.salvage(tmp_path, path)
        assert result.collections == [] and result.health.schema_error and result.problems


def test_queue_vectors_are_checked() -> None:
    good = np.arange(4, dtype="<f4").tobytes()
    assert salvage_sqlite.decode_vector(QueueRow(1, ADD, "a", good, "FLOAT32"), 4)[1] is None
    assert "encoding" in str(salvage_sqlite.decode_vector(QueueRow(1, ADD, "a", good, "INT32"), 4)[1])
    assert "dimension" in str(salvage_sqlite.decode_vector(QueueRow(1, ADD, "a", good, "FLOAT32"), 5)[1])
    nan = np.array([0, np.nan, 1, 2], dtype="<f4").tobytes()
    assert "NaN" in str(salvage_sqlite.decode_vector(QueueRow(1, ADD, "a", nan, "FLOAT32"), 4)[1])


# --- where a vector comes from: chromadb's replay of the queue over the persisted HNSW -------------


def row(s: int, op: int, vec: bool = True) -> QueueRow:
    return QueueRow(s, op, "x", b"\x00\x00\x80?" if vec else None, "FLOAT32")


@pytest.mark.parametrize(
    ("rows", "s", "position", "in_map", "complete", "want"),
    [
        ([], 5, 10, True, True, ("hnsw", None)),  # persisted and purged
        ([row(12, ADD)], 12, 10, False, True, ("queue", 12)),  # added since the persist
        ([row(12, UPDATE), row(13, UPDATE, False)], 13, 10, True, True, ("queue", 12)),
        ([row(13, UPDATE, False)], 13, 10, True, True, ("hnsw", None)),  # metadata only
        ([row(11, DELETE), row(12, ADD), row(14, UPDATE, False)], 14, 10, True, True, ("queue", 12)),
        ([row(11, ADD), row(14, UPDATE, False)], 14, 10, True, True, ("hnsw", None)),  # ignored add
        ([row(11, ADD), row(14, UPDATE, False)], 14, 10, False, False, (None, "ambiguous_add")),
        ([row(11, UPDATE), row(14, UPDATE, False)], 14, 10, False, False, ("queue", 11)),
        ([row(11, UPSERT), row(14, UPDATE, False)], 14, 10, False, False, ("queue", 11)),
        ([row(11, DELETE), row(14, UPDATE, False)], 14, 10, True, True, (None, "inconsistent_queue")),
        ([], 14, 10, True, True, (None, "queue_row_missing")),
        ([row(14, UPDATE, False)], 14, None, True, False, ("hnsw", None)),  # no position: all rows seen
    ],
)
def test_vector_source_replays_like_chromadb(
    rows: list[QueueRow], s: int, position: int | None, in_map: bool, complete: bool, want: tuple[Any, Any]
) -> None:
    labels = salvage_hnsw.LabelMap(labels={"x": 1} if in_map else {}, complete=complete)
    kind, detail = salvage.vector_source(s, rows, True, position, labels, "x")
    got = (kind, detail.seq_id if isinstance(detail, QueueRow) else (detail or None))
    assert got == want


def test_without_the_queue_only_persisted_vectors_are_taken() -> None:
    labels = salvage_hnsw.LabelMap(labels={"x": 1}, complete=True)
    assert salvage.vector_source(9, [], False, 10, labels, "x") == ("hnsw", "")
    assert salvage.vector_source(11, [], False, 10, labels, "x") == (None, "queue_unusable")
    assert salvage.vector_source(9, [], False, None, labels, "x") == (None, "position_unknown")


# --- a real crash -------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_during_a_persisting_add(db: Path, tmp_path: Path) -> None:
    """A real SIGKILL of chromadb adding 1000 records (enough to persist the HNSW), sent
    just after header.bin changes (the persist's first write). Whatever state the kill
    leaves: every record the SQLite holds is listed, every recovered vector is exactly what
    chromadb returns for it, and every other has a reason."""
    before = export(db, "coll0", tmp_path / "before.jsonl")
    header = segment_of(db) / "header.bin"
    mtime = header.stat().st_mtime_ns
    step = {
        "op": "add",
        "collection": "coll0",
        "start": 2500,
        "n": 1000,
        "seed": 21,
        "batch": 1000,
        "dim": 384,
    }
    proc = subprocess.Popen(
        [sys.executable, CHILD, str(db), json.dumps([step])],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if header.stat().st_mtime_ns != mtime:
            time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.0005)
    proc.wait(timeout=60)
    assert proc.stdout is not None
    proc.stdout.close()
    new = np.random.default_rng(21 + 2500).standard_normal((1000, 384), dtype=np.float32)
    truth = {rid: rec["bytes"] for rid, rec in before.items()}
    truth.update(
        {f"coll0-{2500 + i}": collection_child.readback(new[i : i + 1])[0].tobytes() for i in range(1000)}
    )
    result = run_salvage(db, tmp_path)
    coll0 = next(c for c in result.collections if c.info.name == "coll0")
    assert coll0.records is not None and len(coll0.records) in (2500, 3500)  # the add is atomic in SQLite
    for rec in coll0.records:
        if rec.source is None:
            assert rec.reason in salvage.LOST_REASONS
        else:
            assert rec.embedding == truth[rec.id], (rec.id, rec.source)
    # the vectors persisted earlier and the new queue rows survive a kill; only a kill in
    # the instant chromadb rewrites index_metadata.pickle (truncated) can cost labels
    assert set(coll0.counts()["lost_by_reason"]) <= {"label_map_unreadable"}
    if coll0.segment is not None and coll0.segment.labels.complete:
        assert coll0.counts()["lost"] == 0
