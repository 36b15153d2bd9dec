"""Build and change sample Chroma databases with explicit random embeddings.

Runs as a child process (`python sample.py build DIR ...`) under any interpreter that has
chromadb (1.0.x or 1.5.x): it imports nothing from chromasnap, so the demo, the tests
and the benchmarks can use it with a second virtual environment too. No model is
downloaded: every write passes `embeddings=`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

WORDS = [
    "vector",
    "index",
    "snapshot",
    "chroma",
    "backup",
    "restore",
    "panic",
    "segment",
    "queue",
    "sqlite",
    "hnsw",
    "embedding",
    "recall",
    "query",
    "document",
    "metadata",
    "collection",
    "crash",
    "recover",
    "durable",
]


def _client(path: str) -> Any:
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))


def _collection(client: Any, name: str) -> Any:
    return client.get_or_create_collection(name, metadata={"hnsw:space": "cosine"}, embedding_function=None)


def _batch(name: str, start: int, n: int, dim: int, seed: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed + start)
    ids = [f"{name}-{i}" for i in range(start, start + n)]
    docs = [
        " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12)) + f" #{i}"
        for i in range(start, start + n)
    ]
    metas = [{"n": i, "topic": WORDS[i % len(WORDS)], "even": i % 2 == 0} for i in range(start, start + n)]
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    return {"ids": ids, "documents": docs, "metadatas": metas, "embeddings": emb}


def add(path: str, name: str, start: int, n: int, dim: int, seed: int, batch: int = 5000) -> None:
    client = _client(path)
    col = _collection(client, name)
    for i in range(start, start + n, batch):
        k = min(batch, start + n - i)
        col.add(**_batch(name, i, k, dim, seed))


def counts(path: str) -> dict[str, int]:
    client = _client(path)
    return {
        c.name if hasattr(c, "name") else str(c): client.get_collection(
            c.name if hasattr(c, "name") else str(c)
        ).count()
        for c in client.list_collections()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sample.py", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="create collections and fill them")
    b.add_argument("path")
    b.add_argument(
        "--records",
        type=int,
        nargs="+",
        default=[2000, 300],
        help="records per collection; one collection per number",
    )
    b.add_argument("--dim", type=int, default=384)
    b.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("grow", help="add records to existing collections")
    g.add_argument("path")
    g.add_argument("--fraction", type=float, default=0.05)
    g.add_argument("--dim", type=int, default=384)
    g.add_argument("--seed", type=int, default=1)
    w = sub.add_parser("write-loop", help="keep adding small batches for --seconds")
    w.add_argument("path")
    w.add_argument("--seconds", type=float, default=5)
    w.add_argument("--dim", type=int, default=384)
    w.add_argument("--collection", default="live")
    c = sub.add_parser("count", help="print each collection's count as JSON")
    c.add_argument("path")
    a = p.parse_args(argv)

    if a.cmd == "build":
        for i, n in enumerate(a.records):
            add(a.path, f"coll{i}", 0, n, a.dim, a.seed + 1000 * i)
    elif a.cmd == "grow":
        client = _client(a.path)
        for col in client.list_collections():
            name = col.name if hasattr(col, "name") else str(col)
            n = client.get_collection(name).count()
            add(a.path, name, n, max(1, int(n * a.fraction)), a.dim, a.seed)
    elif a.cmd == "write-loop":
        end, i = time.monotonic() + a.seconds, 0
        client = _client(a.path)
        col = _collection(client, a.collection)
        while time.monotonic() < end:
            col.add(**_batch(a.collection, i, 50, a.dim, 7))
            i += 50
        print(json.dumps({"written": i}))
    elif a.cmd == "count":
        print(json.dumps(counts(a.path), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
