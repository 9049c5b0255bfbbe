"""Starting and stopping a Peer as an application embeds it: ``async with``,
what a stopped peer reports, timeouts refused up front, and a start that is
cancelled (once, then again while it cleans up)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

import raftlib
from raftlib import errors
from raftlib.rpc import RpcConnection
from storage_adapters import MemoryStorage

from clusterkit import FAST, Cluster, KVStore


def _start(tmp_path: Path, address: str = "127.0.0.1:0") -> Any:
    return raftlib.start_peer(KVStore, name="s1", address=address, data_dir=tmp_path / "s1", config=FAST)


async def test_async_with_a_started_peer_stops_it_on_exit(tmp_path: Path) -> None:
    async with await _start(tmp_path) as peer:
        await peer.set_configuration({"s1": peer.address})
        assert await peer.write(["set", "a", 1], timeout=10) == ["ok", "a", 1]
    assert peer.status()["role"] == "stopped"
    with pytest.raises(errors.PeerStopped):
        await peer.write(["set", "a", 2])
    # The data directory and the address were released: a new peer takes both.
    async with await _start(tmp_path, peer.address) as again:
        assert await again.read(["get", "a"], timeout=10) == ["ok", 1]


async def test_async_with_stops_the_peer_also_on_an_error(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        async with await _start(tmp_path) as peer:
            await peer.set_configuration({"s1": peer.address})
            await peer.write(["set", "a", 1], timeout=10)
            1 / 0
    assert peer.status()["role"] == "stopped"
    async with await _start(tmp_path, peer.address) as again:
        assert again is not peer
        assert await again.read(["get", "a"], timeout=10) == ["ok", 1]
    # Started without async with, a peer is stopped by hand as before.
    peer = await _start(tmp_path)
    await peer.stop()
    assert peer.status()["role"] == "stopped"


def test_start_peer_and_join_are_coroutine_functions() -> None:
    # `await raftlib.start_peer(...)` is the documented way to start a peer;
    # code that checks what it may await (or schedules it) sees it as such.
    assert inspect.iscoroutinefunction(raftlib.start_peer)
    assert inspect.iscoroutinefunction(raftlib.join)


async def test_async_with_join_stops_the_joined_peer(cluster: Cluster) -> None:
    await cluster.start(1)
    leader = await cluster.leader()
    async with await raftlib.join(KVStore, name="s2", address="127.0.0.1:0", seeds=[leader.address],
                            storage=MemoryStorage(), config=FAST, timeout=30) as peer:
        assert "s2" in leader.membership.voters
    assert peer.status()["role"] == "stopped"


async def test_a_stopped_leader_no_longer_claims_to_lead(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    for peer in (leader, follower):
        await peer.stop(transfer_leadership=False)  # the leader stops as leader
        status = peer.status()
        assert status["role"] == "stopped" and status["leader"] is None
        assert not peer.is_leader and peer.leader is None
        assert status["term"] >= 1 and status["name"] == peer.name  # the rest is still there


class _Blocking(KVStore):
    """``handle_write`` of ``["block"]`` waits until the peer stops."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def handle_write(self, command: Any) -> Any:
        if command == ["block"]:
            self.entered.set()
            await asyncio.Event().wait()
        return super().handle_write(command)


@pytest.mark.parametrize("session", [False, True])
async def test_a_write_being_applied_when_its_peer_stops_ends(tmp_path: Path, session: bool) -> None:
    """The applier takes a write's future before handle_write runs; a stop
    that cancelled it there left the future unresolved, and the writer
    waiting for ever (with no timeout) instead of hearing the outcome is unknown."""
    peer = await raftlib.start_peer(_Blocking, name="s1", address="127.0.0.1:0", storage=MemoryStorage(),
                                    config=FAST)
    try:
        await peer.set_configuration({"s1": peer.address})
        await peer.open_session("c", timeout=10)
        write = asyncio.ensure_future(peer.session_write("c", 1, ["block"]) if session else peer.write(["block"]))
        await asyncio.wait_for(peer.state_machine.entered.wait(), 10)
    finally:
        await peer.stop()
    done, _ = await asyncio.wait([write], timeout=10)
    write.cancel()
    assert done, "the write never ended"
    with pytest.raises(errors.OutcomeUnknown, match="stopped"):
        await write


async def test_a_negative_timeout_is_a_config_error_and_zero_keeps_its_meaning(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    client = await raftlib.connect([leader.address])  # its session is an entry of the log
    conn = await RpcConnection.open(follower.address)
    last = leader.status()["last_index"]
    said = r"timeout must be a number of seconds \(0 or more\) or None, got -"
    for bad in (-1, -0.001, float("-inf")):
        for peer in (leader, follower):
            for call in (lambda: peer.write(["set", "a", 1], timeout=bad),
                         lambda: peer.read(["get", "a"], timeout=bad),
                         lambda: peer.read(["get", "a"], timeout=bad, consistency="stale"),
                         lambda: peer.wait_for_leader(timeout=bad),
                         lambda: peer.transfer_leadership(timeout=bad),
                         lambda: peer.add_member("s9", "127.0.0.1:1", timeout=bad),
                         lambda: peer.remove_member("s9", timeout=bad),
                         lambda: peer.set_configuration(dict(cluster.addresses), timeout=bad),
                         lambda: peer.leave(timeout=bad),
                         lambda: peer.open_session("c", timeout=bad),
                         lambda: peer.close_session("c", timeout=bad),
                         lambda: peer.session_write("c", 1, ["set", "a", 1], timeout=bad),
                         lambda: raftlib.connect([peer.address], timeout=bad),
                         lambda: raftlib.join(KVStore, name="s9", address="127.0.0.1:0", seeds=[peer.address],
                                              storage=MemoryStorage(), timeout=bad)):
                with pytest.raises(errors.ConfigError, match=said):
                    await call()
    try:
        with pytest.raises(errors.ConfigError, match=said):
            await client.write(["set", "a", 1], timeout=-1)
        with pytest.raises(errors.ConfigError, match=said):
            await client.read(["get", "a"], timeout=-1)
        with pytest.raises(errors.ConfigError, match=said):
            await conn.call("write", {"command": ["set", "a", 1], "timeout": -1}, timeout=5)
        assert leader.status()["last_index"] == last  # nothing was appended
    finally:
        await conn.close()
        await client.close()
    assert leader.is_leader and all(p._fatal is None for p in peers.values())
    # 0 still means "no time at all": it may time out, but it is allowed.
    with contextlib.suppress(errors.Timeout):
        await leader.write(["set", "b", 1], timeout=0)
    with contextlib.suppress(errors.Timeout):
        await leader.read(["get", "b"], timeout=0)
    assert await leader.write(["set", "c", 1], timeout=None) == ["ok", "c", 1]


class SlowToClose(MemoryStorage):
    """A memory storage whose ``close`` waits for ``release``, telling the
    loop through ``closing`` that it has begun; ``closed`` once done."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.closing = asyncio.Event()
        self.release = threading.Event()
        self.closed = False

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.closing.set)
        self.release.wait(30)
        super().close()
        self.closed = True


async def _cancel_again_while_closing(starting: asyncio.Task[Any], storage: SlowToClose) -> list[bool]:
    """Cancel ``starting`` while its cleanup is closing ``storage``; return
    whether the storage was closed when ``starting`` ended."""
    closed_at_end: list[bool] = []
    starting.add_done_callback(lambda _: closed_at_end.append(storage.closed))
    await storage.closing.wait()
    starting.cancel()
    for _ in range(3):
        await asyncio.sleep(0)  # let the cancellation reach the task
    storage.release.set()
    with pytest.raises(asyncio.CancelledError):
        await starting
    return closed_at_end


async def test_a_failed_start_cancelled_during_its_cleanup_still_closes_the_storage() -> None:
    storage = SlowToClose()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = "127.0.0.1:%d" % taken.getsockname()[1]
        starting = asyncio.create_task(raftlib.start_peer(KVStore, name="s1", address=address, storage=storage))
        assert await _cancel_again_while_closing(starting, storage) == [True]


class Gated(raftlib.StateMachine):
    """Applies writes only once ``gate`` is set; says when it is first asked to."""

    def __init__(self, asked: asyncio.Event, gate: asyncio.Event) -> None:
        self.asked, self.gate = asked, gate

    async def handle_write(self, command: Any) -> Any:
        self.asked.set()
        await self.gate.wait()
        return command

    def handle_read(self, query: Any) -> Any:
        return query


async def test_a_start_cancelled_while_replaying_and_again_while_stopping_still_closes_the_storage() -> None:
    storage = SlowToClose()
    storage.release.set()
    peer = await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", storage=storage, config=FAST)
    await peer.set_configuration({"s1": peer.address})
    await peer.write(["set", "a", 1], timeout=10)
    await peer.stop()
    storage.release.clear()
    storage.closing.clear()
    storage.closed = False
    # A restart replays what was committed before it serves: cancel it there.
    asked, gate = asyncio.Event(), asyncio.Event()
    starting = asyncio.create_task(raftlib.start_peer(lambda: Gated(asked, gate), name="s1", address="127.0.0.1:0",
                                                      storage=storage, config=FAST))
    await asked.wait()
    starting.cancel()
    assert await _cancel_again_while_closing(starting, storage) == [True]


async def test_a_join_cancelled_and_again_while_stopping_still_closes_the_storage() -> None:
    storage = SlowToClose()
    with socket.socket() as gone:
        gone.bind(("127.0.0.1", 0))
        seed = "127.0.0.1:%d" % gone.getsockname()[1]  # nothing listens: the join keeps asking
    joining = asyncio.create_task(raftlib.join(KVStore, name="s9", address="127.0.0.1:0", seeds=[seed],
                                               storage=storage, config=FAST, timeout=60))
    # Wait until it is asking (it has started), without waiting out a retry.
    asking = asyncio.Event()
    real_open = RpcConnection.open

    async def open_and_tell(*args: Any, **kwargs: Any) -> Any:
        asking.set()
        return await real_open(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RpcConnection, "open", open_and_tell)
        await asking.wait()
    joining.cancel()
    assert await _cancel_again_while_closing(joining, storage) == [True]


async def test_a_start_cancelled_while_opening_its_database_closes_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from storage_adapters import lmdb

    loop = asyncio.get_running_loop()
    opening, release = asyncio.Event(), threading.Event()
    opened: list[Any] = []
    real = lmdb.LMDBStorage

    def slow_to_open(path: Any) -> Any:
        loop.call_soon_threadsafe(opening.set)
        release.wait(30)
        opened.append(real(path))
        return opened[-1]

    monkeypatch.setattr(lmdb, "LMDBStorage", slow_to_open)
    starting = asyncio.create_task(_start(tmp_path))
    closed_at_end: list[bool] = []
    starting.add_done_callback(lambda _: closed_at_end.append(bool(opened) and opened[0]._closed))
    await opening.wait()
    starting.cancel()
    for _ in range(3):
        await asyncio.sleep(0)  # let the cancellation reach the task
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert closed_at_end == [True]
