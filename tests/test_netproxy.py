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
