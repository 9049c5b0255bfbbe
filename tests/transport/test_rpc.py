"""RpcConnection.call against a peer that reads requests and never answers."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from raftlib.errors import Timeout
from raftlib.rpc import RpcConnection


@pytest.fixture
async def silent_peer() -> AsyncIterator[str]:
    """A loopback server that reads whatever it is sent and answers nothing."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while await reader.read(65536):
                pass
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def test_a_call_without_an_answer_times_out(silent_peer: str) -> None:
    conn = await RpcConnection.open(silent_peer)
    try:
        with pytest.raises(Timeout, match="got no answer within 0.05 s"):
            await conn.call("read", {}, timeout=0.05)
        assert not conn._pending
    finally:
        await conn.close()


async def test_cancelling_a_call_as_its_answer_arrives_cancels_it(silent_peer: str) -> None:
    """The answer and the cancellation land in the same turn of the event
    loop. The caller must see the cancellation (Python 3.11's
    ``asyncio.wait_for`` returned the answer instead, so a task being
    cancelled, by a stop for instance, went on running)."""
    conn = await RpcConnection.open(silent_peer)
    try:
        call = asyncio.create_task(conn.call("read", {}, timeout=5.0))
        for _ in range(100):
            if conn._pending:
                break
            await asyncio.sleep(0.001)
        (answer,) = conn._pending.values()
        answer.set_result("the answer")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert not conn._pending
    finally:
        await conn.close()
