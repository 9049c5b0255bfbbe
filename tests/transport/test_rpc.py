"""RpcConnection calls and streams against a fake peer that answers little or nothing."""

from __future__ import annotations

import asyncio

import pytest

from raftlib.errors import Timeout
from raftlib.rpc import KEEPALIVE, REQUEST, RESPONSE, STREAM, RpcConnection
from raftlib.transport.framing import FrameDecoder, encode_frame

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


async def test_a_stream_silent_for_its_idle_timeout_raises_timeout() -> None:
    """A hung peer keeps the connection open and sends nothing: without an
    idle_timeout the stream would wait forever."""
    async with fake_server(silent) as address:
        conn = await RpcConnection.open(address)
        try:
            with pytest.raises(Timeout, match="sent nothing on the stream for 0.1 s"):
                async for _ in conn.stream("listen", {}, idle_timeout=0.1):
                    pass
            assert not conn._streams and not conn._heard
        finally:
            await conn.close()


async def test_keepalives_keep_a_quiet_stream_open() -> None:
    """A peer that has nothing to send sends keepalives, as often as the
    request asks: the stream waits through a silence many times its idle_timeout."""
    requests: list[list[object]] = []

    async def quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(1 << 20)
        while not requests:
            for type_name, body in decoder.feed(await reader.read(65536)):
                if type_name == REQUEST:
                    requests.append(body)
        rid, _, args = requests[0]
        for _ in range(12):  # 0.9 s, three times the idle_timeout
            writer.write(encode_frame(KEEPALIVE, [rid]))
            await asyncio.sleep(args["keepalive"])  # type: ignore[index]
        writer.write(encode_frame(STREAM, [rid, "item"]) + encode_frame(RESPONSE, [rid, True, None]))
        while await reader.read(65536):
            pass

    async with fake_server(quiet) as address:
        conn = await RpcConnection.open(address)
        try:
            items = [item async for item in conn.stream("listen", {"from_index": 3}, idle_timeout=0.3)]
            assert items == ["item"]
            assert requests[0][1:] == ["listen", {"from_index": 3, "keepalive": 0.075}]
        finally:
            await conn.close()
