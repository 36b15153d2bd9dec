"""Apply a roll-forward plan to a private copy of a database with chromadb, then read every
rolled-forward record back. Prints one JSON line (`CHROMASNAP-ROLLFORWARD {...}`).

Runs as a throwaway child process under any interpreter with chromadb (1.0.x or 1.5.x)
and numpy; it imports nothing from chromasnap but `collection_child.py` beside it (the
same bit-exact add), so a Rust panic kills only this process.

    python rollforward_child.py DB PLAN_DIR
    python rollforward_child.py --wait      # then {"db": DB, "plan": PLAN_DIR} on stdin

With --wait it imports chromadb first and then waits for its orders, so that the parent
can start it before it knows them (its start overlaps the parent's reading); stdin's end
without a line means nothing to apply.

PLAN_DIR/plan.json: {"drop": [name], "create": [{"name", "metadata", "configuration"}],
"collections": [{"name", "delete": [id], "records": FILE}]}; each FILE is JSON Lines of
{"id", "document", "metadata", "input", "expect"} with the vectors as base64 float32
little-endian: `input` is what is added, `expect` what `get` must return afterwards.
Records to change are deleted and added again (update and upsert merge metadata).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from collection_child import _add, _client, _config, _crash_point

MARK = "CHROMASNAP-ROLLFORWARD "
BATCH = 1000


def _vec(text: str) -> Any:
    import numpy as np

    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def _names(client: Any) -> set[str]:
    return {c.name if hasattr(c, "name") else str(c) for c in client.list_collections()}


def _hnsw(cfg: Any) -> Any:
    return cfg.get("hnsw") if isinstance(cfg, dict) else None


def _create(client: Any, spec: dict[str, Any]) -> Any:
    """The collection as the kept database made it: metadata first (how most collections
    are made); if the index configuration then differs, with it passed explicitly."""
    name, meta, want = spec["name"], spec.get("metadata") or None, spec.get("configuration")
    col = client.create_collection(name, metadata=meta, embedding_function=None)
    got = _config(col)
    if not _hnsw(want) or _hnsw(got) == _hnsw(want):
        return col
    client.delete_collection(name)
    return client.create_collection(
        name, metadata=meta, configuration={"hnsw": _hnsw(want)}, embedding_function=None
    )


def _same_meta(a: Any, b: Any) -> bool:
    return (a or None) == (b or None)


def apply(db: str, plan_dir: str) -> dict[str, Any]:
    import numpy as np

    t0 = time.monotonic()
    with open(os.path.join(plan_dir, "plan.json"), encoding="utf-8") as fh:
        plan = json.load(fh)
    client = _client(db)
    names = _names(client)
    spent: dict[str, float] = {"open": time.monotonic() - t0, "delete": 0.0, "add": 0.0, "read_back": 0.0}
    for name in plan.get("drop", []):
        if name in names:
            client.delete_collection(name)
    for spec in plan.get("create", []):
        if spec["name"] not in _names(client):
            _create(client, spec)
    _crash_point("rollforward-created")
    report: dict[str, Any] = {"collections": {}, "checked": 0, "mismatches": []}
    for job in plan.get("collections", []):
        col = client.get_collection(job["name"], embedding_function=None)
        deletes = list(job.get("delete", []))
        t = time.monotonic()
        for i in range(0, len(deletes), BATCH):
            col.delete(ids=deletes[i : i + BATCH])
        spent["delete"] += time.monotonic() - t
        expect: dict[str, tuple[bytes, Any, Any]] = {}
        added = 0
        if job.get("records"):
            with open(os.path.join(plan_dir, job["records"]), encoding="utf-8") as fh:
                page: list[dict[str, Any]] = []
                for line in fh:
                    page.append(json.loads(line))
                    if len(page) == BATCH:
                        added += _add_page(col, page, expect, spent)
                        page = []
                        _crash_point("rollforward-adding")
                if page:
                    added += _add_page(col, page, expect, spent)
        ids = list(expect)
        t = time.monotonic()
        for i in range(0, len(ids), BATCH):
            got = col.get(ids=ids[i : i + BATCH], include=["documents", "metadatas", "embeddings"])
            seen = set()
            for k, rid in enumerate(got["ids"]):
                seen.add(rid)
                emb, doc, meta = expect[rid]
                back = np.asarray(got["embeddings"][k], dtype="<f4").tobytes()
                if back != emb or got["documents"][k] != doc or not _same_meta(got["metadatas"][k], meta):
                    report["mismatches"].append([job["name"], rid])
                report["checked"] += 1
            report["mismatches"] += [[job["name"], rid] for rid in ids[i : i + BATCH] if rid not in seen]
        spent["read_back"] += time.monotonic() - t
        report["collections"][job["name"]] = {"deleted": len(deletes), "added": added, "count": col.count()}
    if report["mismatches"]:
        report["mismatches"] = report["mismatches"][:100]
        raise Mismatch(json.dumps(report["mismatches"][:5]))
    report["duration_s"] = round(time.monotonic() - t0, 3)
    report["timings"] = {k: round(v, 3) for k, v in spent.items()}
    return report


class Mismatch(Exception):
    """A rolled-forward record read back differs from its source."""


def _add_page(
    col: Any, page: list[dict[str, Any]], expect: dict[str, tuple[bytes, Any, Any]], spent: dict[str, float]
) -> int:
    import numpy as np

    ids = [r["id"] for r in page]
    embs = np.stack([_vec(r["input"]) for r in page]).astype(np.float32)
    docs = [r.get("document") for r in page]
    metas = [r.get("metadata") or None for r in page]
    for r in page:
        expect[r["id"]] = (base64.b64decode(r["expect"]), r.get("document"), r.get("metadata"))
    t = time.monotonic()
    _add(col, ids, embs, docs, metas)
    spent["add"] += time.monotonic() - t
    return len(ids)


def _wait() -> tuple[str, str, float] | None:
    """Import chromadb, then wait for the parent's `{"db", "plan"}` line on stdin
    (None when stdin ends first: nothing to apply). Returns (db, plan_dir, import seconds)."""
    t0 = time.monotonic()
    import chromadb  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    import numpy  # noqa: F401

    took = time.monotonic() - t0
    _crash_point("rollforward-waiting")
    line = sys.stdin.readline()
    if not line.strip():
        return None
    req = json.loads(line)
    return str(req["db"]), str(req["plan"]), took


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in (["--wait"],) and len(args) != 2:
        sys.stderr.write("usage: rollforward_child.py DB PLAN_DIR | --wait\n")
        return 2
    try:
        imported = None
        if args == ["--wait"]:
            got = _wait()
            if got is None:
                return 0
            db, plan_dir, imported = got
        else:
            db, plan_dir = args
        report = apply(db, plan_dir)
        if imported is not None:
            report["timings"]["import"] = round(imported, 3)
    except Exception as exc:
        sys.stdout.write(MARK + json.dumps({"error": f"{type(exc).__name__}: {exc}"[:2000]}) + "\n")
        return 1
    sys.stdout.write(MARK + json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
