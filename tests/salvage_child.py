"""Change a sample database in the ways roll-forward must follow: run as a child under any
interpreter with chromadb (1.0.x or 1.5.x); imports nothing from chromasnap.

    python salvage_child.py DB PLAN_JSON

PLAN_JSON is a list of steps, each {"op": "add" | "upsert" | "update" | "update_meta" |
"delete" | "drop" (the whole collection), "collection": NAME, "start": I, "n": N, "seed": S,
"batch": B}; records are named NAME-I. Embeddings are float32 standard normal from
numpy's default_rng(seed + i) per batch starting at i, dimension from the collection.
Prints one line per batch ("BATCH op start n") so a parent can kill it at a chosen point.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main() -> int:
    import chromadb
    import numpy as np
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=sys.argv[1], settings=Settings(anonymized_telemetry=False))
    print("READY", flush=True)
    for step in json.loads(sys.argv[2]):
        if step["op"] == "drop":  # drop a whole collection
            client.delete_collection(step["collection"])
            print(f"BATCH drop {step['collection']}", flush=True)
            continue
        col = client.get_or_create_collection(
            step["collection"], metadata={"hnsw:space": step.get("space", "cosine")}, embedding_function=None
        )
        dim = int(step.get("dim", 384))
        batch = int(step.get("batch", 1000))
        for i in range(step["start"], step["start"] + step["n"], batch):
            k = min(batch, step["start"] + step["n"] - i)
            ids = [f"{step['collection']}-{j}" for j in range(i, i + k)]
            emb = np.random.default_rng(step.get("seed", 0) + i).standard_normal((k, dim), dtype=np.float32)
            docs = [f"{step['op']} document {j}" for j in range(i, i + k)]
            metas: list[Any] = [
                {"n": j, "op": step["op"], "half": j % 2 == 0, "f": j / 3} for j in range(i, i + k)
            ]
            op = step["op"]
            if op == "add":
                col.add(ids=ids, embeddings=emb, documents=docs, metadatas=metas)
            elif op == "upsert":
                col.upsert(ids=ids, embeddings=emb, documents=docs, metadatas=metas)
            elif op == "update":
                col.update(ids=ids, embeddings=emb, documents=docs, metadatas=metas)
            elif op == "update_meta":
                col.update(ids=ids, metadatas=metas)
            elif op == "delete":
                col.delete(ids=ids)
            print(f"BATCH {op} {i} {k}", flush=True)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
