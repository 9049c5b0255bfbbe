"""Helpers shared by the runtime and end-to-end tests: a KV state machine,
free ports, polling, and a Cluster of peers on loopback."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable

import raftlib
from raftlib import codec
from raftlib.config import Config

FAST = Config(tick_interval=0.01, election_ticks=10, heartbeat_ticks=2)
"""Elections in 0.1-0.2 s, so that tests stay quick."""


class KVStore(raftlib.StateMachine):
    """The state machine of the README example, plus a few test hooks."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.applied: list[Any] = []
        self.restores = 0

    def handle_write(self, command: Any) -> Any:
        self.applied.append(command)
        op, key, *rest = command
        if op == "set":
            self.data[key] = rest[0]
            return ["ok", key, rest[0]]
        if op == "fail":
            raise ValueError(f"refused {key}")
        return ["error", "unknown_op"]

    def handle_read(self, query: Any) -> Any:
        op, key = query
        return ["ok", self.data[key]] if key in self.data else ["error", "key_not_found"]

    def snapshot(self) -> bytes:
        return codec.pack(self.data)

    def restore(self, data: bytes) -> None:
        self.data = codec.unpack(data)
        self.restores += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


class Cluster:
    """Peers on loopback with ephemeral ports; stops them all on teardown."""

    def __init__(self, tmp_path: Any, storage: str = "memory", config: Config = FAST) -> None:
        self.tmp_path = tmp_path
        self.storage = storage
        self.config = config
        self.peers: dict[str, raftlib.Peer] = {}
        self.addresses: dict[str, str] = {}

    async def start_peer(self, name: str, sm: Any = KVStore) -> raftlib.Peer:
        from storage_adapters import MemoryStorage

        address = self.addresses.get(name, "127.0.0.1:0")
        kwargs: dict[str, Any] = {"data_dir": str(self.tmp_path / name)}
        if self.storage == "memory":
            kwargs = {"storage": MemoryStorage()}
        peer = await raftlib.start_peer(sm, name=name, address=address, config=self.config, **kwargs)
        self.peers[name] = peer
        self.addresses[name] = peer.address
        return peer

    async def start(self, n: int = 3) -> dict[str, raftlib.Peer]:
        for i in range(1, n + 1):
            await self.start_peer(f"s{i}")
        await self.peers["s1"].set_configuration(dict(self.addresses))
        await self.leader()
        return self.peers

    def live(self) -> list[raftlib.Peer]:
        return [p for p in self.peers.values() if not p._stopping and p._fatal is None]

    async def leader(self, timeout: float = 10.0) -> raftlib.Peer:
        """The one live peer that is leader and is recognised as such by a majority."""

        def find() -> raftlib.Peer | None:
            live = self.live()
            leaders = [p for p in live if p.is_leader]
            if len(leaders) != 1:
                return None
            known = sum(1 for p in live if p.leader == leaders[0].name)
            return leaders[0] if known > len(self.peers) // 2 else None

        peer: raftlib.Peer = await eventually(find, timeout)
        return peer

    async def stop(self, name: str) -> None:
        await self.peers[name].stop()

    async def close(self) -> None:
        for p in self.peers.values():
            await p.stop(transfer_leadership=False)


