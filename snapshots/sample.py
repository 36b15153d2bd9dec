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
import zlib
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

    # one stream per (seed, collection, offset): collections grown by the same step never share vectors
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), start])
    ids = [f"{name}-{i}" for i in range(start, start + n)]
    docs = [
        " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12)) + f" #{i}"
        for i in range(start, start + n)
    ]
    metas = [{"n": i, "topic": WORDS[i % len(WORDS)], "even": i % 2 == 0} for i in range(start, start + n)]
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    return {"ids": ids, "documents": docs, "metadatas": metas, "embeddings": emb}


def _max_batch(client: Any, batch: int = 0) -> int:
    """The largest batch chromadb accepts (fewer, larger writes build fastest), or `batch` if smaller."""
    limit = int(getattr(client, "get_max_batch_size", lambda: 5000)())
    return min(batch, limit) if batch > 0 else limit


def add(path: str, name: str, start: int, n: int, dim: int, seed: int, batch: int = 0) -> None:
    client = _client(path)
    col = _collection(client, name)
    batch = _max_batch(client, batch)
    for i in range(start, start + n, batch):
        k = min(batch, start + n - i)
        col.add(**_batch(name, i, k, dim, seed))


def mutate(path: str, step: int, fraction: float, only: list[str] | None = None) -> dict[str, Any]:
    """The benches' edit step on each collection (or those in `only`): delete `fraction`/2 of the
    records (adding as many new ones, so counts and `grow`'s ids stay valid), rewrite the documents
    (with new embeddings) of `fraction` and edit the metadata of another `fraction`."""
    import numpy as np

    client = _client(path)
    names = [c.name if hasattr(c, "name") else str(c) for c in client.list_collections()]
    report: dict[str, Any] = {}
    for name in sorted(names):
        if only is not None and name not in only:
            continue
        col = client.get_collection(name, embedding_function=None)
        total = col.count()
        dim = len(col.get(limit=1, include=["embeddings"])["embeddings"][0])
        rng = np.random.default_rng([10_000 + step, zlib.crc32(name.encode())])
        n_del, n_doc, n_meta = (max(1, int(total * f)) for f in (fraction / 2, fraction, fraction))
        # records below the count with the numbered ids `build` and `grow` gave them
        cand = [f"{name}-{i}" for i in rng.choice(total, size=min(total, 3 * (n_del + n_doc + n_meta)))]
        batch = _max_batch(client)
        uniq = sorted(set(cand))
        have = {
            i for k in range(0, len(uniq), batch) for i in col.get(ids=uniq[k : k + batch], include=[])["ids"]
        }
        pick = list(dict.fromkeys(c for c in cand if c in have))
        dele = pick[:n_del]
        docs = pick[n_del : n_del + n_doc]
        metas = pick[n_del + n_doc : n_del + n_doc + n_meta]
        for i in range(0, len(dele), batch):
            col.delete(ids=dele[i : i + batch])
        new = [f"{name}-x{step}-{j}" for j in range(len(dele))]
        for i in range(0, len(new), batch):
            part = new[i : i + batch]
            col.add(
                ids=part,
                embeddings=rng.standard_normal((len(part), dim), dtype=np.float32),
                documents=[f"added at step {step} #{rid}" for rid in part],
                metadatas=[{"step": step, "topic": "added"} for _ in part],
            )
        for i in range(0, len(docs), batch):
            part = docs[i : i + batch]
            col.update(
                ids=part,
                embeddings=rng.standard_normal((len(part), dim), dtype=np.float32),
                documents=[f"rewritten at step {step}: {rid}" for rid in part],
            )
        for i in range(0, len(metas), batch):
            part = metas[i : i + batch]
            col.update(ids=part, metadatas=[{"edited": step, "topic": "edited"} for _ in part])
        report[name] = {
            "deleted": len(dele),
            "added": len(new),
            "documents": len(docs),
            "metadata": len(metas),
        }
    return report


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
    b.add_argument(
        "--collections",
        type=int,
        default=1,
        help="repeat the --records list this many times (wide databases)",
    )
    b.add_argument(
        "--batch", type=int, default=0, help="records per add (default: the most chromadb accepts)"
    )
    b.add_argument("--progress", action="store_true", help="print each collection's build time")
    b.add_argument(
        "--resume", action="store_true", help="keep the records an interrupted build added; add the rest"
    )
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
    g.add_argument("--only", nargs="+", help="grow only these collections")
    m = sub.add_parser("mutate", help="delete (and re-add as many), rewrite documents, edit metadata")
    m.add_argument("path")
    m.add_argument("--step", type=int, default=1, help="seeds the choice and names the new ids")
    m.add_argument("--fraction", type=float, default=0.01)
    m.add_argument("--only", nargs="+", help="mutate only these collections")
    c = sub.add_parser("count", help="print each collection's count as JSON")
    c.add_argument("path")
    a = p.parse_args(argv)

    if a.cmd == "build":
        records = list(a.records) * a.collections
        have = counts(a.path) if a.resume else {}
        t0 = time.perf_counter()
        for i, n in enumerate(records):
            t = time.perf_counter()
            start = have.get(f"coll{i}", 0)  # --resume: what an interrupted build already added
            if start < n:
                add(a.path, f"coll{i}", start, n - start, a.dim, a.seed + 1000 * i, a.batch)
            if a.progress:
                print(f"coll{i}: {n} records in {time.perf_counter() - t:.1f} s", flush=True)
        if a.progress:
            print(json.dumps({"records": sum(records), "seconds": round(time.perf_counter() - t0, 1)}))
    elif a.cmd == "grow":
        client = _client(a.path)
        for col in client.list_collections():
            name = col.name if hasattr(col, "name") else str(col)
            if a.only is not None and name not in a.only:
                continue
            n = client.get_collection(name).count()
            add(a.path, name, n, max(1, int(n * a.fraction)), a.dim, a.seed)
    elif a.cmd == "mutate":
        print(json.dumps(mutate(a.path, a.step, a.fraction, a.only), sort_keys=True))
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
