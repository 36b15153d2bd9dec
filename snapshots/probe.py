"""Open a Chroma directory with chromadb and report what it finds, as one JSON line.

Runs as a throwaway child process (`python probe.py DB [--sample N]`) under any
interpreter with chromadb (1.0.x or 1.5.x), so that a Rust panic or a segfault kills
only the probe. It imports nothing from chromasnap. The parent classifies the outcome.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _integrity(db: Path, out: dict[str, Any]) -> None:
    """PRAGMA integrity_check (SQLite 3.40's does not look inside FTS5 tables)."""
    try:
        con = sqlite3.connect(str(db / "chroma.sqlite3"), timeout=60, isolation_level=None)
        try:
            rows = con.execute("PRAGMA integrity_check").fetchall()
        finally:
            con.close()
        out["integrity"] = "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:5])
    except sqlite3.Error as exc:
        out["integrity"] = str(exc)


def _fts(db: Path, out: dict[str, Any]) -> None:
    """FTS5's own 'integrity-check' command, in a transaction that is rolled back."""
    try:
        con = sqlite3.connect(str(db / "chroma.sqlite3"), timeout=60, isolation_level=None)
    except sqlite3.Error as exc:
        out["fts"] = str(exc)
        return
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "embedding_fulltext_search" in names:
            con.execute("BEGIN")
            try:
                con.execute(
                    "INSERT INTO embedding_fulltext_search(embedding_fulltext_search) "
                    "VALUES('integrity-check')"
                )
                out["fts"] = "ok"
            finally:
                con.execute("ROLLBACK")
    except sqlite3.Error as exc:
        out["fts"] = str(exc)
    finally:
        con.close()


def _sqlite_checks(db: Path) -> tuple[dict[str, Any], list[threading.Thread]]:
    """Both checks on threads of their own (sqlite3 releases the GIL), beside chromadb."""
    out: dict[str, Any] = {}
    threads = [threading.Thread(target=f, args=(db, out), daemon=True) for f in (_integrity, _fts)]
    for t in threads:
        t.start()
    return out, threads


def probe(path: Path, sample: int, seed: int) -> dict[str, Any]:
    report: dict[str, Any] = {
        "python": sys.executable,
        "chromadb_version": None,
        "collections": [],
        "exception": None,
        "stage": "import",
    }
    t0 = time.monotonic()
    checks, threads = _sqlite_checks(path)
    try:
        import chromadb  # type: ignore[import-untyped,unused-ignore]
        from chromadb.config import Settings

        report["chromadb_version"] = chromadb.__version__
        report["stage"] = "open"
        client: Any = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
        report["stage"] = "list"
        rng = random.Random(seed)
        for col in client.list_collections():
            name = col.name if hasattr(col, "name") else str(col)
            report["stage"] = f"collection {name}"
            c: Any = client.get_collection(name, embedding_function=None)
            n = c.count()
            entry: dict[str, Any] = {
                "name": name,
                "count": n,
                "sampled": 0,
                "self_hits": 0,
                "misses": [],
            }
            report["collections"].append(entry)
            k = min(sample, n)
            if k:
                got = c.get(limit=k, offset=rng.randrange(0, n - k + 1), include=["embeddings"])
                embs = got["embeddings"]
                for rid, emb in zip(got["ids"], embs, strict=True):
                    # HNSW is approximate: a record counts as found if it is among its own
                    # 10 nearest hits (or an exact duplicate is the nearest)
                    res = c.query(
                        query_embeddings=[list(map(float, emb))],
                        n_results=min(10, n),
                        include=["distances"],
                    )
                    ids, dist = res["ids"][0], res["distances"]
                    d = dist[0][0] if dist and dist[0] else None
                    entry["sampled"] += 1
                    if rid in ids or (d is not None and abs(d) < 1e-5):
                        entry["self_hits"] += 1
                    elif len(entry["misses"]) < 5:
                        entry["misses"].append(rid)
        report["stage"] = "done"
    except BaseException as exc:  # a PyO3 PanicException is a BaseException
        report["exception"] = {"type": type(exc).__name__, "message": str(exc)[:2000]}
    report["open_query_s"] = round(time.monotonic() - t0, 3)
    for t in threads:
        t.join()
    report.update(checks)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="probe.py", description=__doc__)
    ap.add_argument("path")
    ap.add_argument("--sample", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    report = probe(Path(a.path), a.sample, a.seed)
    sys.stdout.write("CHROMASNAP-PROBE " + json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
