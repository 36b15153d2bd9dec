"""Browsing and single-collection restore: diff, find, peek, export, restore --collection,
on real databases changed by real chromadb in child processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from chromasnap.manifest import snapshot_id
from chromasnap.snapshots import ChromasnapError, SnapshotManager, UsageError
from chromasnap.snapshots.pack import pack_name
from chromasnap.snapshots.records import load_index
from conftest import counts, run_sample

CLI = [sys.executable, "-m", "chromasnap.cli"]


def chroma(db: Path, code: str, python: str = sys.executable) -> str:
    """Run `code` in a child with `client` opened on `db` (chromadb never loads in the tests)."""
    head = (
        "import json, chromadb, numpy as np\n"
        "from chromadb.config import Settings\n"
        f"client = chromadb.PersistentClient(path={str(db)!r},\n"
        "    settings=Settings(anonymized_telemetry=False))\n"
    )
    proc = subprocess.run(
        [python, "-c", head + textwrap.dedent(code)], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def records_of(db: Path, name: str, python: str = sys.executable) -> dict[str, object]:
    """Every record of a collection as chromadb returns it, embeddings as float32 bytes (hex)."""
    out = chroma(
        db,
        f"""
        col = client.get_collection({name!r}, embedding_function=None)
        got = col.get(include=["documents", "metadatas", "embeddings"])
        recs = {{}}
        for i, rid in enumerate(got["ids"]):
            emb = np.asarray(got["embeddings"][i], dtype=np.float32).tobytes().hex()
            recs[rid] = [got["documents"][i], got["metadatas"][i], emb]
        print(json.dumps({{"records": recs, "metadata": col.metadata,
                          "configuration": getattr(col, "configuration_json", None)}}, default=str))
        """,
        python,
    )
    data: dict[str, object] = json.loads(out)
    return data


CHANGES = """
col = client.get_collection("coll0", embedding_function=None)
col.add(ids=["new-1", "new-2"], embeddings=np.ones((2, 384), dtype=np.float32), documents=["a", "b"])
col.delete(ids=["coll0-3"])
col.update(ids=["coll0-4"], documents=["changed doc"], embeddings=np.ones((1, 384), dtype=np.float32))
col.update(ids=["coll0-5"], metadatas=[{"n": 99}])
col.update(ids=["coll0-6"], embeddings=np.full((1, 384), 2.0, dtype=np.float32))
client.delete_collection("coll1")
new = client.create_collection("coll2", embedding_function=None)
new.add(ids=["z1", "z2"], embeddings=np.ones((2, 384), dtype=np.float32))
"""


def test_diff_find_peek_report_exactly_the_changes(db: Path, tmp_path: Path) -> None:
    mgr = SnapshotManager(db, tmp_path / "store")
    a = mgr.snapshot()
    assert a.records is not None
    chroma(db, CHANGES)

    live = mgr.diff(a.id, ids=True)  # against the live database, before any snapshot of it
    b = mgr.snapshot()
    for d in (live, mgr.diff(a.id, b.id, ids=True)):
        by = {c.name: c for c in d.collections}
        c0 = by["coll0"]
        assert (c0.status, c0.added, c0.removed, c0.changed) == ("changed", 2, 1, 3)
        assert c0.ids is not None
        assert sorted(c0.ids.added) == ["new-1", "new-2"]
        assert c0.ids.removed == ["coll0-3"]
        assert sorted(c0.ids.changed) == ["coll0-4", "coll0-5", "coll0-6"]
        assert c0.fields == {"document": 1, "metadata": 1, "embedding": 1}
        assert d.dropped == ["coll1"] and by["coll1"].removed == 300
        assert d.created == ["coll2"] and by["coll2"].added == 2
        assert d.recreated == []
        assert any(f.path == "chroma.sqlite3" and f.status == "changed" for f in d.files)
    assert live.b == "live"
    assert mgr.diff(b.id).identical  # nothing changed since b

    # unchanged runs of ids are stored once: most record chunks are shared with a
    ka, kb = (
        {c.key for coll in load_index(mgr.repo, s.records).collections for c in coll.chunks}  # type: ignore[arg-type]
        for s in (a, b)
    )
    assert len(ka & kb) > len(kb) // 2

    # a collection dropped and recreated under the same name
    chroma(
        db,
        """
        client.delete_collection("coll2")
        client.create_collection("coll2", embedding_function=None).add(
            ids=["z1", "z3"], embeddings=np.ones((2, 384), dtype=np.float32), documents=["d1", "d3"])
        """,
    )
    c = mgr.snapshot()
    d = mgr.diff(b.id, c.id, ids=True)
    assert d.recreated == ["coll2"] and d.created == [] and d.dropped == []
    c2 = {x.name: x for x in d.collections}["coll2"]
    assert c2.ids is not None
    assert (c2.ids.added, c2.ids.removed, c2.ids.changed) == (["z3"], ["z2"], ["z1"])
    assert c2.fields == {"document": 1}

    # find: when each record appeared, changed, vanished
    f = mgr.find("coll0-4")
    assert [(e.snapshot, e.change, e.fields) for e in f.entries] == [
        (a.id, "appeared", []),
        (b.id, "changed", ["document"]),
        (c.id, "unchanged", []),
    ]
    assert [e.change for e in mgr.find("coll0-3").entries] == ["appeared", "vanished"]
    assert [e.change for e in mgr.find("coll0-6", "coll0").entries][:2] == ["appeared", "changed"]
    assert mgr.find("coll0-6", "coll0").entries[1].fields == ["embedding"]
    assert [e.change for e in mgr.find("coll1-7").entries] == ["appeared", "vanished"]
    assert mgr.find("no-such-id").entries == []
    assert mgr.find("coll0-4", collection="coll1").entries == []

    # peek: documents and metadata as they were in each snapshot, no chromadb
    pa = mgr.peek(a.id, "coll0", ids=["coll0-4", "coll0-5", "nope"])
    pb = mgr.peek(b.id, "coll0", ids=["coll0-4", "coll0-5"])
    assert pa.missing == ["nope"] and pa.total == 2500 and pb.total == 2501
    assert {r.id: r.document for r in pb.records}["coll0-4"] == "changed doc"
    assert {r.id: r.document for r in pa.records}["coll0-4"] != "changed doc"
    meta_a = {r.id: r.metadata for r in pa.records}["coll0-5"]
    meta_b = {r.id: r.metadata for r in pb.records}["coll0-5"]
    assert meta_a is not None and meta_b is not None
    assert meta_a["n"] == 5 and meta_b["n"] == 99 and meta_a["topic"] == meta_b["topic"]
    assert len(mgr.peek(a.id, "coll1", limit=3).records) == 3
    with pytest.raises(UsageError, match="no collection"):
        mgr.peek(b.id, "coll1")


@pytest.mark.slow
def test_restore_collection_brings_back_exact_records(db: Path, tmp_path: Path) -> None:
    mgr = SnapshotManager(db, tmp_path / "store")
    snap = mgr.snapshot()
    before = records_of(db, "coll1")
    before0 = records_of(db, "coll0")
    chroma(
        db,
        """
        client.delete_collection("coll1")
        client.get_collection("coll0", embedding_function=None).add(
            ids=["later-1"], embeddings=np.ones((1, 384), dtype=np.float32), documents=["later"])
        """,
    )
    res = mgr.restore_collection(snap.id, "coll1")
    assert (res.records, res.exact_embeddings, res.replaced, res.target) == (300, 300, False, "coll1")
    assert mgr.get(res.pre_restore or "").reason == "pre-restore"  # type: ignore[arg-type]
    assert not mgr.backend.list("intents")
    after = records_of(db, "coll1")
    assert after["records"] == before["records"]  # ids, documents, metadata, embedding bits
    assert after["metadata"] == before["metadata"]
    assert after["configuration"] == before["configuration"]
    assert counts(db) == {"coll0": 2501, "coll1": 300}  # coll0 keeps its newer record
    assert mgr.health().healthy  # opens, counts, and sampled records find themselves

    # an existing name is refused, --as restores beside it, --replace swaps it
    with pytest.raises(UsageError, match="exists"):
        mgr.restore_collection(snap.id, "coll0")
    copy = mgr.restore_collection(snap.id, "coll0", as_name="coll0-copy")
    assert copy.exact_embeddings == copy.records == 2500
    assert records_of(db, "coll0-copy")["records"] == before0["records"]
    rep = mgr.restore_collection(snap.id, "coll0", replace=True)
    assert rep.replaced and records_of(db, "coll0")["records"] == before0["records"]
    assert counts(db) == {"coll0": 2500, "coll0-copy": 2500, "coll1": 300}
    with pytest.raises(UsageError, match="no collection"):
        mgr.restore_collection(snap.id, "nope")
    with pytest.raises(UsageError, match="invalid collection name"):
        mgr.restore_collection(snap.id, "coll1", as_name="x")


@pytest.mark.parametrize(
    "point",
    [
        pytest.param("collection-adding", marks=pytest.mark.slow),
        pytest.param("collection-added", marks=pytest.mark.slow),
        pytest.param("collection-dropped", marks=pytest.mark.slow),
    ],
)
def test_restore_collection_child_killed_at_each_step(
    db: Path, tmp_path: Path, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL of the chromadb child at each step, injected at its crash seam
    (CHROMASNAP_CRASH_AT): before the new collection is complete the parent drops it and the
    database is as before; after, the parent finishes the swap."""
    mgr = SnapshotManager(db, tmp_path / "store")
    snap = mgr.snapshot()
    full = records_of(db, "coll1")["records"]
    chroma(db, 'client.get_collection("coll1", embedding_function=None).delete(ids=["coll1-1"])')
    cut = records_of(db, "coll1")["records"]
    monkeypatch.setenv("CHROMASNAP_CRASH_AT", point)
    if point == "collection-adding":
        with pytest.raises(ChromasnapError, match="dropped the partial collection"):
            mgr.restore_collection(snap.id, "coll1", replace=True)
        assert records_of(db, "coll1")["records"] == cut
    else:
        res = mgr.restore_collection(snap.id, "coll1", replace=True)
        assert res.replaced and res.records == res.exact_embeddings == 300
        assert records_of(db, "coll1")["records"] == full
    monkeypatch.delenv("CHROMASNAP_CRASH_AT")
    assert sorted(counts(db)) == ["coll0", "coll1"]  # no temporary collection is left
    assert not mgr.backend.list("intents")


@pytest.mark.parametrize(
    "point", [pytest.param("collection-added", marks=pytest.mark.slow), "collection-dropped"]
)
def test_restore_collection_killed_with_its_process_is_rolled_back(
    db: Path, tmp_path: Path, point: str
) -> None:
    """The whole chromasnap process dies mid-restore (the child's seam kills its parent,
    then itself): the write intent stays, and `recover` puts back the pre-restore state."""
    import os

    store = tmp_path / "store"
    mgr = SnapshotManager(db, store)
    snap = mgr.snapshot()
    chroma(db, 'client.get_collection("coll1", embedding_function=None).delete(ids=["coll1-1"])')
    cut = records_of(db, "coll1")["records"]
    env = {**os.environ, "CHROMASNAP_CRASH_AT": f"parent:{point}"}
    cmd = [
        *CLI,
        "restore",
        snap.id,
        "--collection",
        "coll1",
        "--replace",
        "--db",
        str(db),
        "--store",
        str(store),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert r.returncode == -9, r.stderr
    assert len(mgr.backend.list("intents")) == 1
    res = mgr.recover()
    assert res.action == "restored" and mgr.get(res.snapshot or "").reason == "pre-restore"
    assert records_of(db, "coll1")["records"] == cut
    assert sorted(counts(db)) == ["coll0", "coll1"]


def test_export_writes_every_record_as_json_lines(db: Path, tmp_path: Path) -> None:
    mgr = SnapshotManager(db, tmp_path / "store")
    snap = mgr.snapshot()
    expected = records_of(db, "coll1")["records"]
    out = tmp_path / "coll1.jsonl"
    res = mgr.export(snap.id, "coll1", out)
    lines = out.read_text().splitlines()
    assert res.records == len(lines) == 300 and res.space == "cosine"
    import numpy as np

    got = {}
    for line in lines:
        r = json.loads(line)
        got[r["id"]] = [r["document"], r["metadata"], np.asarray(r["embedding"], np.float32).tobytes().hex()]
    assert got == expected
    with pytest.raises(UsageError):
        mgr.export(snap.id, "nope", tmp_path / "none.jsonl")
    assert not (tmp_path / "none.jsonl").exists()
    for inside in (db / "x.jsonl", tmp_path / "store" / "x.jsonl"):
        with pytest.raises(UsageError, match="inside"):
            mgr.export(snap.id, "coll1", inside)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_prune_keeps_record_indexes_and_old_snapshots_fall_back(db: Path, tmp_path: Path) -> None:
    from chromasnap.manifest import RetentionPolicy

    mgr = SnapshotManager(db, tmp_path / "store")
    mgr.snapshot()
    run_sample("grow", str(db), "--fraction", "0.02")
    b = mgr.snapshot()
    mgr.prune(RetentionPolicy(keep_last=1))
    assert [s.id for s in mgr.list()] == [b.id]
    assert mgr.verify(b.id, quick=True).ok
    assert mgr.diff(b.id).identical  # b's chunks, shared with pruned a, are still there

    # a snapshot taken before record indexes existed (format 1): computed on the fly
    old = b.model_copy(update={"records": None, "format_version": 1})
    old.id = snapshot_id(old)
    mgr.repo.save_snapshot(old)
    mgr.repo.catalog_add(old.id)
    assert mgr.diff(old.id, b.id).collections == mgr.diff(b.id, b.id).collections
    assert {e.snapshot for e in mgr.find("coll1-7").entries} == {old.id, b.id}


def test_damaged_record_index_is_reported(db: Path, tmp_path: Path) -> None:
    mgr = SnapshotManager(db, tmp_path / "store")
    snap = mgr.snapshot()
    index = load_index(mgr.repo, snap.records)  # type: ignore[arg-type]
    key = index.collections[0].chunks[0].key
    loc = mgr.repo.index()[key]
    pack = tmp_path / "store" / pack_name(loc.pack)
    raw = bytearray(pack.read_bytes())
    mid = loc.offset + loc.length // 2  # 16 inverted bytes: one flip may be a bit zstd ignores
    raw[mid : mid + 16] = bytes(b ^ 0xFF for b in raw[mid : mid + 16])
    pack.chmod(0o600)
    pack.write_bytes(bytes(raw))
    report = mgr.verify(snap.id, quick=True)
    assert not report.ok and "record index" in report.detail


@pytest.mark.slow
def test_cli_browse_commands(db: Path, tmp_path: Path) -> None:
    env_args = ["--db", str(db), "--store", str(tmp_path / "store")]
    mgr = SnapshotManager(db, tmp_path / "store")
    a = mgr.snapshot()
    chroma(db, 'client.get_collection("coll1", embedding_function=None).delete(ids=["coll1-1"])')

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args, *env_args], capture_output=True, text=True, timeout=600, check=False
        )

    d = cli("diff", a.short_id, "--json", "--ids")
    assert d.returncode == 0, d.stderr
    data = json.loads(d.stdout)
    c1 = {c["name"]: c for c in data["collections"]}["coll1"]
    assert (c1["removed"], c1["ids"]["removed"]) == (1, ["coll1-1"])
    assert set(data) >= {"collections", "created", "dropped"}
    assert "coll1: +0 -1 ~0" in cli("diff", a.short_id).stdout

    f = cli("find", "coll1-1", "--json")
    assert f.returncode == 0 and [e["change"] for e in json.loads(f.stdout)["entries"]] == ["appeared"]
    assert cli("find", "nothing-here").returncode == 1

    p = cli("peek", "latest", "coll1", "--id", "coll1-1", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["records"][0]["id"] == "coll1-1"
    bad = cli("peek", "latest", "nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr

    r = cli("restore", "latest", "--collection", "coll1", "--json")
    assert r.returncode == 2 and "exists" in r.stderr  # coll1 is still there (one record less)
    assert [s.id for s in mgr.list()] == [a.id]  # refused before taking any snapshot
    r = cli("restore", "latest", "--collection", "coll1", "--replace", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["records"] == 300
    assert counts(db)["coll1"] == 300
    assert cli("restore", "latest", "--as", "x").returncode == 2

    e = cli("export", a.short_id, "coll1", "--out", str(tmp_path / "c.jsonl"), "--json")
    assert e.returncode == 0 and json.loads(e.stdout)["records"] == 300


@pytest.mark.slow
def test_database_written_by_chromadb_1_0(old_python: str, tmp_path: Path) -> None:
    db = tmp_path / "old"
    run_sample("build", str(db), "--records", "1500", "200", python=old_python)
    mgr = SnapshotManager(db, tmp_path / "store")
    a = mgr.snapshot()
    before = records_of(db, "coll1", old_python)
    chroma(
        db,
        """
        client.delete_collection("coll1")
        col = client.get_collection("coll0", embedding_function=None)
        col.update(ids=["coll0-2"], documents=["new text"], embeddings=np.ones((1, 384), dtype=np.float32))
        """,
        old_python,
    )
    d = mgr.diff(a.id, ids=True)
    by = {c.name: c for c in d.collections}
    assert d.dropped == ["coll1"] and by["coll0"].ids is not None and by["coll0"].ids.changed == ["coll0-2"]
    assert [e.change for e in mgr.find("coll0-2").entries] == ["appeared"]
    assert mgr.peek(a.id, "coll0", ids=["coll0-2"]).records[0].document != "new text"
    res = mgr.restore_collection(a.id, "coll1", python=old_python)
    assert res.exact_embeddings == res.records == 200
    assert records_of(db, "coll1", old_python)["records"] == before["records"]
    assert counts(db, python=old_python) == {"coll0": 1500, "coll1": 200}


def test_diff_holds_a_batch_of_records_not_the_collection(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A diff held every record of both sides in dicts, and every chunk it read in a cache, so
    its memory grew with the collection (about 40 MiB per 100,000 records; issue 20). It now
    merges the two id-ordered record streams, compares versions DIFF_BATCH at a time and keeps
    CACHED_CHUNKS chunks, and answers as the in-memory comparison does."""
    from chromasnap.snapshots import browse, records

    mgr = SnapshotManager(db, tmp_path / "store")
    a = mgr.snapshot()
    run_sample("mutate", str(db), "--step", "3", "--fraction", "0.05")  # deletes, adds, edits
    b = mgr.snapshot()
    monkeypatch.setattr(browse, "DIFF_BATCH", 7)
    monkeypatch.setattr(records, "CACHED_CHUNKS", 2)
    batches: list[int] = []
    cached: list[int] = []
    hashes, chunk = records.Side.hashes, records.RecordSource.chunk

    def counting_hashes(self: records.Side, view: Any, recs: list[tuple[str, int]]) -> Any:
        batches.append(len(recs))
        return hashes(self, view, recs)

    def counting_chunk(self: records.RecordSource, key: str) -> Any:
        got = chunk(self, key)
        cached.append(len(self.cache))
        return got

    monkeypatch.setattr(records.Side, "hashes", counting_hashes)  # count, then do the real work
    monkeypatch.setattr(records.RecordSource, "chunk", counting_chunk)
    streamed = mgr.diff(a.id, b.id, ids=True, limit=10_000)
    assert batches and max(batches) <= 7 and max(cached) <= 2

    def unsorted(*_args: object) -> Any:
        raise browse._Unsorted

    monkeypatch.setattr(browse, "_merged", unsorted)  # the in-memory comparison, as reference
    reference = mgr.diff(a.id, b.id, ids=True, limit=10_000)
    assert streamed.collections == reference.collections
    by = {c.name: c for c in streamed.collections}
    assert by["coll0"].removed == by["coll0"].added > 0 and by["coll0"].changed >= 2 * 125
    assert by["coll0"].fields.keys() == {"document", "metadata"} and by["coll1"].changed > 0


def test_record_chunks_are_checked_a_column_at_a_time() -> None:
    """verify --quick checked a record index one Python expression per record (seconds for a
    million: issue 20's profile); the column checks that replaced it refuse what it refused."""
    from chromasnap.snapshots import StoreError, records

    def chunk(rows: object) -> object:
        return records.RecordSource(memory={"k": json.dumps(rows).encode()}).chunk("k")

    def versions(rows: object) -> object:
        return records.RecordSource(memory={"k": json.dumps(rows).encode()}).versions("k")

    assert chunk([["a", 1], ["b", 2]]) == [("a", 1), ("b", 2)] and chunk([]) == []
    for bad in (
        [["a", True]],
        [["a"]],
        [["a", 1, 2]],
        [["a", 1], ["b"]],
        [[1, 1]],
        [["a", 1.5]],
        [["a", 1 << 64]],
        [["a", -(1 << 63) - 1]],
        ["a", 1],
    ):
        with pytest.raises(StoreError, match="record chunk"):
            chunk(bad)
    got = versions([[1, "a", None, "h"], [2, "b", "d", "m"]])
    assert got == {(1, "a"): (None, "h"), (2, "b"): ("d", "m")}
    for bad in ([[1, "a", 3, "h"]], [[True, "a", None, "h"]], [[1, "a", None]], [[1, 2, None, "h"]]):
        with pytest.raises(StoreError, match="versions chunk"):
            versions(bad)


def test_diff_merges_windows_of_chunks_as_the_record_walk_did() -> None:
    """diff walked a million records one Python step each (issue 20's profile); it now compares
    windows of chunks as dicts. Against the record-by-record answer, on chunkings that cut the
    two sides at different ids, with records only on one side, and out-of-order input refused."""
    import random

    from chromasnap.snapshots import browse

    rng = random.Random(20)

    def chunks(recs: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
        out, i = [], 0
        while i < len(recs):
            n = rng.randint(0, 7)
            out.append(recs[i : i + n])
            i += n
        return out

    for _ in range(200):
        ids = sorted(f"id{n:03d}" for n in rng.sample(range(300), rng.randint(0, 60)))
        a = [(i, rng.randint(1, 3)) for i in ids if rng.random() < 0.8]
        b = [(i, rng.randint(1, 3)) for i in ids if rng.random() < 0.8]
        da, db = dict(a), dict(b)
        every = [(k, da.get(k), db.get(k)) for k in sorted(da.keys() | db.keys())]
        assert list(browse._merged(iter(chunks(a)), iter(chunks(b)))) == every
        differ = [t for t in every if t[1] != t[2]]
        assert list(browse._merged(iter(chunks(a)), iter(chunks(b)), same=True)) == differ
    for bad in ([[("b", 1), ("a", 1)]], [[("a", 1), ("a", 2)]], [[("b", 1)], [("a", 1)]]):
        with pytest.raises(browse._Unsorted):
            list(browse._merged(iter(bad), iter([])))
