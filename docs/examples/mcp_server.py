"""An MCP server whose indexing tool is guarded by chromasnap (docs/integration.md).

    python mcp_server.py ./chroma          # speaks MCP over stdio

Tools: `index_documents(ids, texts)` upserts into a Chroma collection inside
`before_write_async`; `search(text, n)` queries it; `status()` says what chromasnap's
`recover_async` did at start-up and how many records the collection holds.

At start-up (the server's lifespan, before any client opens the database)
`recover_async` rolls back an indexing call whose process died, or restores the newest
snapshot that opens if the database is broken; `reset=True` starts empty (the broken
database kept aside) when nothing opens. The guarded write runs the pre-write snapshot in
a worker thread, so the server keeps answering meanwhile, and two indexing calls take
turns. Chroma's own calls run in threads too (`asyncio.to_thread`).

Built on the official `mcp` package: `MCPServer` in mcp 2.x, the same class that mcp 1.x
calls `FastMCP`. Tested by tests/test_mcp_example.py, which runs this file as it is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import chromadb
from chromadb.config import Settings

try:  # mcp 2.x
    from mcp.server.mcpserver import MCPServer as FastMCP
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import FastMCP  # type: ignore[no-redef]

from chromasnap.snapshots import SnapshotManager

log = logging.getLogger("mcp-indexer")
DB = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CHROMA_DB", "./chroma"))
DIM = 64


def embed(texts: list[str]) -> list[list[float]]:
    """Your embedding model goes here. This one makes a vector from a hash of the text: no
    download, no network (Chroma's default embedding function downloads a model)."""
    out = []
    for text in texts:
        raw = hashlib.shake_256(text.encode()).digest(DIM)
        out.append([b / 255.0 - 0.5 for b in raw])
    return out


@dataclass
class State:
    snaps: SnapshotManager
    client: Any
    collection: Any
    recovered: dict[str, Any]


STATE: State | None = None


@asynccontextmanager
async def lifespan(_server: Any) -> AsyncIterator[None]:
    """1. recover, before anything opens the database; 2. open the client."""
    global STATE
    snaps = SnapshotManager(DB)  # store: <DB>.snapshots, beside the database
    result = await snaps.recover_async(reset=True)
    if result.kind not in ("fresh-start", "healthy"):
        log.warning("chromasnap recover: %s (%s), kept %s", result.kind, result.reason, result.kept_path)

    def open_client() -> tuple[Any, Any]:
        client = chromadb.PersistentClient(path=DB, settings=Settings(anonymized_telemetry=False))
        return client, client.get_or_create_collection("docs", embedding_function=None)

    # on a fresh start the client creates the database; the first guarded write then
    # snapshots it (empty of records)
    client, collection = await asyncio.to_thread(open_client)
    kept = str(result.kept_path) if result.kept_path else None
    STATE = State(snaps, client, collection, {"kind": result.kind, "reason": result.reason, "kept": kept})
    yield


mcp = FastMCP("chroma-indexer", lifespan=lifespan)


def state() -> State:
    assert STATE is not None, "the lifespan opens the database first"
    return STATE


@mcp.tool()
async def index_documents(ids: list[str], texts: list[str]) -> dict[str, Any]:
    """Index texts under stable ids (a re-run upserts the same records)."""
    if len(ids) != len(texts):
        raise ValueError("ids and texts differ in length")
    st = state()
    # 2. the guarded write: write lock, pre-write snapshot, write intent (all in a worker
    #    thread); if this process dies inside, the next start-up rolls the write back
    async with st.snaps.before_write_async(reason=f"index {len(ids)} documents") as snap:
        step = st.client.get_max_batch_size()  # chromadb refuses larger batches
        for i in range(0, len(ids), step):
            vectors = await asyncio.to_thread(embed, texts[i : i + step])
            await asyncio.to_thread(
                st.collection.upsert, ids=ids[i : i + step], documents=texts[i : i + step], embeddings=vectors
            )
    count = await asyncio.to_thread(st.collection.count)
    return {"indexed": len(ids), "pre_write_snapshot": snap.id if snap else None, "count": count}


@mcp.tool()
async def search(text: str, n: int = 5) -> list[str]:
    """The ids of the `n` records nearest to `text` (reads need no guard)."""
    st = state()
    found = await asyncio.to_thread(st.collection.query, query_embeddings=embed([text]), n_results=n)
    return list(found["ids"][0])


@mcp.tool()
async def status() -> dict[str, Any]:
    """What chromasnap's recover did at start-up, and the collection's size."""
    st = state()
    return {**st.recovered, "count": await asyncio.to_thread(st.collection.count), "db": DB}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)  # stdout carries MCP
    mcp.run(transport="stdio")
