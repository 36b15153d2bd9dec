"""A LangChain indexer guarded by chromasnap (docs/integration.md).

    python langchain_indexer.py ./chroma notes/*.txt

Indexes each file's paragraphs into a `langchain_chroma.Chroma` vector store persisted
in ./chroma, then answers one query. At start-up `recover()` runs before anything opens
the database; the indexing run, including the construction of the vector store, runs
inside `before_write()`. The first run starts from nothing: `recover` reports a fresh
start and `before_write` creates the database directory (and the store beside it,
./chroma.snapshots) without taking an empty snapshot. Prints a JSON summary.

Tested by tests/test_integration.py, which runs this file as it is.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from chromadb.config import Settings
from langchain_chroma import Chroma
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings

from chromasnap.snapshots import SnapshotManager

log = logging.getLogger("indexer")


def embeddings() -> Embeddings:
    # Your model goes here (OpenAIEmbeddings, HuggingFaceEmbeddings, ...). This one makes a
    # vector from a hash of the text: no download, no network.
    return DeterministicFakeEmbedding(size=64)


def load(paths: list[str]) -> list[Document]:
    """One document per paragraph, with an id that stays the same when re-indexed."""
    docs = []
    for path in paths:
        text = Path(path).read_text()
        for n, para in enumerate(p.strip() for p in text.split("\n\n")):
            if para:
                docs.append(Document(page_content=para, metadata={"source": path}, id=f"{path}#{n}"))
    return docs


def index(
    db: str,
    documents: list[Document],
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, object]:
    snaps = SnapshotManager(db)  # store: <db>.snapshots, beside the database
    # 1. Before anything opens the database: finish an interrupted restore, roll back a
    #    guarded write whose process died, restore the newest snapshot that opens if the
    #    database is broken. On the first run this is a fresh start and creates nothing.
    #    reset=True: if nothing verifies, keep the broken database aside and re-index.
    result = snaps.recover(reset=True)
    if result.kind not in ("fresh-start", "healthy"):
        log.warning("chromasnap recover: %s: %s", result.kind, result.reason)

    # 2. The indexing run under before_write: the database write lock, a pre-write snapshot
    #    (none on the first run: there is no database yet), and a write intent that stays
    #    behind if this process dies, for the next recover() to roll the write back.
    with snaps.before_write(reason=f"index {len(documents)} documents"):
        store = Chroma(
            collection_name="notes",
            embedding_function=embeddings(),
            persist_directory=db,
            client_settings=Settings(anonymized_telemetry=False),
        )
        for start in range(0, len(documents), batch_size):
            batch = documents[start : start + batch_size]
            store.add_documents(batch, ids=[d.id for d in batch])
            if on_batch is not None:
                on_batch(start // batch_size + 1)

    # 3. Serve queries from the same store (reads need no guard).
    hits = store.similarity_search(documents[0].page_content, k=1) if documents else []
    return {
        "recover": result.kind,
        "reason": result.reason,
        "kept_path": result.kept_path,
        "indexed": len(documents),
        "count": len(store.get(include=[])["ids"]),
        "top_hit": hits[0].id if hits else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("db", help="the Chroma database directory (need not exist yet)")
    p.add_argument("files", nargs="+", help="text files to index, one document per paragraph")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(index(a.db, load(a.files))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
