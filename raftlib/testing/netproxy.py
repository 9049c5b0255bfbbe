"""A TCP proxy in front of each peer, for partitioning real processes on loopback.

Every peer is told (through the cluster configuration and ``--advertise``)
to be reached at its proxy's address, so all traffic *to* a peer passes its
proxy. Every raftlib connection starts with a ``Hello [name, address]``
frame, so a proxy learns who is connecting before it forwards a byte, and
:class:`Partitioner` decides from ``(sender, receiver)`` whether the link is
up. Cutting a link closes the connections already open on it and refuses
new ones until it is healed. Connections from clients (senders that are not
peers) are never cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Iterable

import msgpack

__all__ = ["Partitioner", "Proxy"]

_MAX_HELLO = 4096


class Partitioner:
    """The set of cut links (``(sender, receiver)`` pairs), shared by all proxies."""

    def __init__(self, peers: Iterable[str]) -> None:
        self.peers = set(peers)
        self._cut: set[tuple[str, str]] = set()
        self._proxies: list[Proxy] = []

    def blocked(self, src: str, dst: str) -> bool:
        return (src, dst) in self._cut

    def split(self, *groups: Iterable[str]) -> None:
        """Cut every link between peers of different groups (both directions);
        a peer in no group keeps all its links (a bridge)."""
        sets = [set(g) for g in groups]
        cut: set[tuple[str, str]] = set()
        for i, a in enumerate(sets):
            for j, b in enumerate(sets):
                if i != j:
                    cut.update((x, y) for x in a for y in b)
        self.set_cut(cut)

    def set_cut(self, cut: Iterable[tuple[str, str]]) -> None:
        self._cut = set(cut)
        for proxy in self._proxies:
            proxy.enforce()

    def heal(self) -> None:
        self.set_cut(())


class Proxy:
    """Forwards ``listen_port`` to ``target_port`` on 127.0.0.1 for peer ``name``."""

    def __init__(self, name: str, listen_port: int, target_port: int, partitioner: Partitioner) -> None:
        self.name = name
        self.listen_port = listen_port
        self.target_port = target_port
        self.partitioner = partitioner
        partitioner._proxies.append(self)
        self._server: asyncio.Server | None = None
        self._links: dict[asyncio.Task[None], str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def enforce(self) -> None:
        """Close the open connections whose link is now cut."""
        for task, src in list(self._links.items()):
            if self.partitioner.blocked(src, self.name):
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(task, reader, writer)
        except asyncio.CancelledError:
            pass  # closing: end normally, as asyncio's stream callback expects
        finally:
            writer.close()  # also when cancelled while waiting for the Hello
            self._tasks.discard(task)

    async def _serve(self, task: asyncio.Task[None], reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            head, src = await asyncio.wait_for(_read_hello(reader), 5)
        except (asyncio.TimeoutError, OSError, EOFError, ValueError, msgpack.UnpackException):  # EOFError: closed before its Hello
            writer.close()
            return
        if src in self.partitioner.peers and self.partitioner.blocked(src, self.name):
            self.refused += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        if src in self.partitioner.peers:
            self._links[task] = src
        try:
            up_writer.write(head)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            self._links.pop(task, None)
            # Both closed before waiting: a second cancellation (the link cut,
            # then the proxy closed) may end the wait, and must not leave
            # the connection to the target open.
            writer.close()
            up_writer.close()
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    await w.wait_closed()


async def _read_hello(reader: asyncio.StreamReader) -> tuple[bytes, str]:
    """Read the first frame; return its bytes and the sender's name."""
    header = await reader.readexactly(4)
    (size,) = struct.unpack(">I", header)
    if size > _MAX_HELLO:
        raise ValueError("first frame too large for a Hello")
    payload = await reader.readexactly(size)
    frame = msgpack.unpackb(payload, raw=False)
    if not isinstance(frame, dict) or frame.get("t") != "Hello" or not isinstance(frame.get("b"), list):
        raise ValueError("first frame is not a Hello")
    return header + payload, str(frame["b"][0])


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()
