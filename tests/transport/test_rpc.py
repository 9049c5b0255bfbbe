"""RpcConnection.call against a peer that reads requests and never answers."""

from __future__ import annotations

import asyncio

import pytest

from raftlib.errors import Timeout
from raftlib.rpc import RpcConnection

from clusterkit import fake_server


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read whatever is sent, answer nothing."""
    while await reader.read(65536):
        pass


async def test_a_call_without_an_answer_times_out() -> None:
    async with fake_server(silent) as address:
        conn = await RpcConnection.open(address)
        try:
            # A time left on a deadline (0.04999997...) is shown rounded.
            with pytest.raises(Timeout, match=r"got no answer within 0\.05 s$"):
                await conn.call("read", {}, timeout=0.05 - 3e-8)
            assert not conn._pending
        finally:
            await conn.close()


async def test_cancelling_a_call_as_its_answer_arrives_cancels_it() -> None:
    """The answer and the cancellation land in the same turn of the event
    loop. The caller must see the cancellation (Python 3.11's
    ``asyncio.wait_for`` returned the answer instead, so a task being
    cancelled, by a stop for instance, went on running)."""
    async with fake_server(silent) as address:
        conn = await RpcConnection.open(address)
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
