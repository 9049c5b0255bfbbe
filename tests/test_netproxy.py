"""The fault test's proxy (raftlib.testing.netproxy) on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

from raftlib.testing import free_port
from raftlib.testing.netproxy import Partitioner, Proxy

from clusterkit import eventually, fake_server


async def test_a_connection_closed_before_its_hello_is_dropped_quietly() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))

    async def never_reached(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with fake_server(never_reached) as target:
        proxy = Proxy("n1", free_port(), int(target.rsplit(":", 1)[1]), Partitioner(["n1", "n2"]))
        await proxy.start()
        try:
            for payload in (b"", b"\x00\x00"):  # nothing, then half a frame header
                reader, writer = await asyncio.open_connection("127.0.0.1", int(proxy.address.rsplit(":", 1)[1]))
                writer.write(payload)
                writer.close()
                await writer.wait_closed()
                assert await reader.read() == b""
            await eventually(lambda: not proxy._tasks)  # the proxy has handled both
        finally:
            await proxy.close()
    assert reported == []


async def test_a_connection_cancelled_again_while_closing_still_closes_its_upstream() -> None:
    """Cutting a link cancels its task, and closing the proxy cancels it
    again: a second cancellation that lands while the task closes the
    client's side must not leave the connection to the target open."""
    import msgpack
    import struct

    upstream_ended = asyncio.Event()
    arrived = asyncio.Event()

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        arrived.set()
        while await reader.read(4096):
            pass
        upstream_ended.set()

    hello = msgpack.packb({"t": "Hello", "b": ["n2", ""]})
    async with fake_server(target) as address:
        partitioner = Partitioner(["n1", "n2"])
        proxy = Proxy("n1", free_port(), int(address.rsplit(":", 1)[1]), partitioner)
        await proxy.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", int(proxy.address.rsplit(":", 1)[1]))
            writer.write(struct.pack(">I", len(hello)) + hello)
            await asyncio.wait_for(arrived.wait(), 5)
            (task,) = proxy._tasks
            while not task.done():  # cancelled at every step of its ending
                task.cancel()
                await asyncio.sleep(0)
            await asyncio.wait_for(upstream_ended.wait(), 5)
            writer.close()
        finally:
            await proxy.close()
