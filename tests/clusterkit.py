"""Helpers shared by the runtime and end-to-end tests: a KV state machine,
free ports, polling, a scripted TCP server, and a Cluster of peers on
loopback."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Callable

import raftlib
from raftlib import codec
from raftlib.config import Config
from raftlib.testing import free_port

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


@contextlib.asynccontextmanager
async def fake_server(handler: Any) -> AsyncIterator[str]:
    """A TCP server running ``handler(reader, writer)`` per connection; yields its address.
    Every connection is closed, and every handler finished, on exit."""
    tasks: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (asyncio.CancelledError, OSError, EOFError):
            pass
        finally:
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.sleep(0.01)
        await server.wait_closed()


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


async def first_change(client: raftlib.Client) -> raftlib.Change:
    """The first change ``client.listen()`` yields."""
    async for change in client.listen():
        return change
    raise AssertionError("the feed ended")


class Cluster:
    """Peers on loopback with ephemeral ports; stops them all on teardown.

    ``tls=True`` secures every connection with mutual TLS: each peer gets a
    certificate from a test CA made in ``tmp_path / "certs"`` (see
    :meth:`tls_for`). ``secret=`` secures them with a shared secret instead.
    """

    def __init__(self, tmp_path: Any, storage: str = "memory", config: Config = FAST, *, tls: bool = False,
                 secret: bytes | None = None) -> None:
        self.tmp_path = tmp_path
        self.storage = storage
        self.config = config
        self.tls = tls
        self.secret = secret
        self._certs: dict[str, Any] = {}
        self.peers: dict[str, raftlib.Peer] = {}
        self.addresses: dict[str, str] = {}
        self.cut: set[str] = set()
        """Peers cut off from all others (see :meth:`isolate`)."""

    def _peer_kwargs(self, name: str) -> dict[str, Any]:
        from storage_adapters import MemoryStorage

        kwargs = self.security_kwargs(name)
        if self.storage == "memory":
            return {"storage": MemoryStorage(), **kwargs}
        return {"data_dir": str(self.tmp_path / name), **kwargs}

    def tls_for(self, name: str) -> Any:
        """The TLSConfig of ``name`` (a peer or a client), signed by the cluster's test CA."""
        from raftlib.security import make_certificates

        if name not in self._certs:
            self._certs.update(make_certificates(self.tmp_path / "certs", [name]))
        return self._certs[name]

    def security_kwargs(self, name: str) -> dict[str, Any]:
        """``tls=``/``secret=`` for ``name``, as this cluster is secured (for peers and clients)."""
        if self.tls:
            return {"tls": self.tls_for(name)}
        if self.secret is not None:
            return {"secret": self.secret}
        return {}

    def _filter_inbound(self, peer: raftlib.Peer) -> None:
        """Drop Raft messages between a cut peer and the others (a partition on real TCP)."""
        deliver = peer._transport._on_message

        def on_message(msg: Any) -> None:
            if (msg.src in self.cut) != (peer.name in self.cut):
                return
            deliver(msg)

        peer._transport._on_message = on_message

    def isolate(self, name: str) -> None:
        self.cut.add(name)

    def heal(self) -> None:
        self.cut.clear()

    def hang(self, name: str) -> None:
        """Make ``name`` look hung (a stopped process, a frozen machine): it is
        cut off from the others (:meth:`isolate`), takes requests on the
        connections it keeps open without ever answering them, and sends
        nothing more on the connections open to it (no answer, stream item
        or end of stream)."""
        self.isolate(name)
        for conn in self.peers[name]._transport._inbound.values():
            conn._writer.write = lambda data: None  # type: ignore[method-assign]
        requests = self.peers[name]._requests

        async def swallow(body: Any, conn: Any) -> None:
            pass

        requests.on_request = swallow  # type: ignore[method-assign]
        requests.on_cancel = swallow  # type: ignore[method-assign]

    async def join(self, name: str, seeds: list[str] | None = None, voter: bool = True, sm: Any = KVStore) -> raftlib.Peer:
        """Start ``name`` and add it to the running cluster with ``raftlib.join``."""
        peer = await raftlib.join(
            sm, name=name, address=self.addresses.get(name, "127.0.0.1:0"),
            seeds=seeds or [p.address for p in self.live()], config=self.config, voter=voter,
            **self._peer_kwargs(name),
        )
        self._filter_inbound(peer)
        self.peers[name] = peer
        self.addresses[name] = peer.address
        return peer

    async def start_peer(self, name: str, sm: Any = KVStore) -> raftlib.Peer:
        address = self.addresses.get(name, "127.0.0.1:0")
        peer = await raftlib.start_peer(sm, name=name, address=address, config=self.config, **self._peer_kwargs(name))
        self._filter_inbound(peer)
        self.peers[name] = peer
        self.addresses[name] = peer.address
        return peer

    async def start(self, n: int = 3, sm: Any = KVStore) -> dict[str, raftlib.Peer]:
        for i in range(1, n + 1):
            await self.start_peer(f"s{i}", sm=sm)
        await self.peers["s1"].set_configuration(dict(self.addresses))
        await self.leader()
        # Knowing the leader is not having the log: a peer learns the leader
        # from its first (empty) AppendEntries and the configuration only from
        # the next one. Until it has it, it cannot vote or campaign, so a test
        # that cuts the leader off right away could leave nobody to elect.
        await eventually(lambda: all(p.membership.members for p in self.live()))
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
            voters = leaders[0].membership.voters
            known = sum(1 for p in live if p.name in voters and p.leader == leaders[0].name)
            return leaders[0] if known > len(voters) // 2 else None

        peer: raftlib.Peer = await eventually(find, timeout)
        return peer

    async def stop(self, name: str) -> None:
        await self.peers[name].stop()

    async def stop_a_follower_the_leader_would_pick(self, leader: raftlib.Peer) -> tuple[raftlib.Peer, raftlib.Peer]:
        """In a cluster of three, stop a follower of ``leader`` and let an
        election timeout pass; then make ``leader``'s core see both followers
        as it does right after an election: active and equally up to date.
        The core's own transfer target is then the stopped one (its name
        sorts first). Returns the stopped follower and the running one."""
        dead, alive = sorted((p for p in self.peers.values() if p is not leader), key=lambda p: p.name)
        await dead.stop()
        await asyncio.sleep(2 * self.config.election_ticks * self.config.tick_interval)
        for p in (alive, dead):
            leader._core.progress[p.name].recent_active = True
            leader._core.progress[p.name].match = leader._core.progress[alive.name].match
        return dead, alive

    async def close(self) -> None:
        for p in self.peers.values():
            await p.stop(transfer_leadership=False)


