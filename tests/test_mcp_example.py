"""docs/examples/mcp_server.py run as users run it: a real MCP server (the official `mcp`
package) started over stdio by the package's own client, its indexing tool called, the
server SIGKILLed inside a guarded write (once the write intent is in the store and the
first batch has reached chroma.sqlite3), then started again: `recover_async` at start-up
rolls the write back to its pre-write snapshot."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "mcp_server.py"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("CHROMASNAP_")}


def server(db: Path) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[str(EXAMPLE), str(db)], env=ENV)


async def call(session: ClientSession, tool: str, **arguments: Any) -> Any:
    result: Any = await session.call_tool(tool, arguments)
    assert not result.isError if hasattr(result, "isError") else not result.is_error, result
    return json.loads(result.content[0].text)


def docs(prefix: str, n: int) -> dict[str, list[str]]:
    return {"ids": [f"{prefix}{i}" for i in range(n)], "texts": [f"document {prefix} {i}" for i in range(n)]}


def intents(store: Path) -> list[Path]:
    """The write intents in place (not one being written under its temporary name)."""
    folder = store / "intents"
    return [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []


def assertion_in(exc: BaseException) -> AssertionError | None:
    """An AssertionError of the test, also from inside the stdio client's task groups."""
    if isinstance(exc, AssertionError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        if found := assertion_in(inner):
            return found
    return None


async def wait_for_the_write(store: Path, sqlite: Path) -> dict[str, Any]:
    """The write intent of the guarded write, once its first batch is in chroma.sqlite3."""
    deadline = time.monotonic() + 120
    while not (names := intents(store)):
        assert time.monotonic() < deadline, "no write intent appeared"
        await asyncio.sleep(0.005)
    (name,) = names
    intent: dict[str, Any] = json.loads(name.read_text())
    before = sqlite.stat().st_mtime_ns
    while sqlite.stat().st_mtime_ns == before:
        assert time.monotonic() < deadline and name.exists(), "the write never reached chroma.sqlite3"
        await asyncio.sleep(0.002)
    return intent


@pytest.mark.slow
def test_mcp_server_indexes_is_killed_mid_write_and_recovers(tmp_path: Path) -> None:
    db, store = tmp_path / "chroma", tmp_path / "chroma.snapshots"

    async def first_run() -> dict[str, Any]:
        async with stdio_client(server(db)) as (r, w), ClientSession(r, w) as session:
            await session.initialize()
            tools = {t.name for t in (await session.list_tools()).tools}
            assert {"index_documents", "search", "status"} <= tools
            assert (await call(session, "status"))["kind"] == "fresh-start"
            out = await call(session, "index_documents", **docs("a", 200))
            assert out["count"] == 200 and out["pre_write_snapshot"]  # the empty database's
            # a write large enough to be killed in the middle: several of chromadb's batches
            big = asyncio.create_task(session.call_tool("index_documents", docs("b", 30000)))
            intent = await wait_for_the_write(store, db / "chroma.sqlite3")
            os.kill(intent["pid"], signal.SIGKILL)
            with pytest.raises(BaseException):  # noqa: B017 - the server is gone: any transport error
                await asyncio.wait_for(big, 60)
            return intent

    try:
        intent = asyncio.run(first_run())
    except BaseException as exc:  # the stdio client's task group may re-raise the lost server
        if failed := assertion_in(exc):
            raise failed from exc
        assert len(intents(store)) == 1, exc
        intent = json.loads(intents(store)[0].read_text())
    assert len(intents(store)) == 1  # left behind by the killed server

    async def second_run() -> tuple[dict[str, Any], dict[str, Any]]:
        async with stdio_client(server(db)) as (r, w), ClientSession(r, w) as session:
            await session.initialize()
            status = await call(session, "status")
            after = await call(session, "index_documents", **docs("c", 10))
            return status, after

    status, after = asyncio.run(second_run())
    assert status["kind"] == "rolled-back" and status["count"] == 200, status
    assert status["kept"] and Path(status["kept"]).is_dir()  # what the killed write left
    assert after["count"] == 210 and after["pre_write_snapshot"] != intent["snapshot"]
    assert not intents(store)
