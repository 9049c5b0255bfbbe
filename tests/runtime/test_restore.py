"""A follower restoring the leader's snapshot while the cluster goes on."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Iterator

import pytest

import raftlib

from clusterkit import Cluster, KVStore, eventually

from .test_snapshots import SNAP, snap_cluster, write_many

__all__ = ["snap_cluster"]  # the fixture


async def _lagging(cluster: Cluster, sm: Any) -> tuple[raftlib.Peer, str]:
    """A cluster of three whose leader has compacted what a stopped follower
    needs next; returns the leader and that follower's name."""
    peers = await cluster.start(3, sm=sm)
    leader = await cluster.leader()
    lagging = sorted(n for n in peers if n != leader.name)[0]
    await cluster.stop(lagging)
    await write_many(leader, 200)
    await leader.snapshot()  # after those it was taking: the follower needs this one
    assert leader._storage.first_index() > 20
    return leader, lagging


class _Held(KVStore):
    """A state machine whose restore (after the first at start-up, which
    finds nothing) waits until the test releases it."""

    release = threading.Event()
    restoring = threading.Event()

    def __init__(self) -> None:
        super().__init__()
        self.in_restore = False
        self.overlapped: list[Any] = []

    def restore(self, data: bytes) -> None:
        self.in_restore = True
        self.restoring.set()
        try:
            self.release.wait(30)
            super().restore(data)
        finally:
            self.in_restore = False

    def handle_read(self, query: Any) -> Any:
        if self.in_restore:
            self.overlapped.append(query)
        return super().handle_read(query)


@pytest.fixture
def held() -> Iterator[type[_Held]]:
    _Held.release.clear()
    _Held.restoring.clear()
    try:
        yield _Held
    finally:
        _Held.release.set()


class _AsyncRestore(KVStore):
    async def restore(self, data: bytes) -> None:
        await asyncio.sleep(0.01)
        super().restore(data)


async def test_an_async_restore_is_awaited(snap_cluster: Cluster) -> None:
    """``async def restore`` was called in a worker thread and its coroutine
    never awaited: the follower took the snapshot into its log with its
    state unchanged, and went on applying from there, silently diverging."""
    leader, lagging = await _lagging(snap_cluster, _AsyncRestore)
    back = await snap_cluster.start_peer(lagging, sm=_AsyncRestore)
    await leader.write(["set", "after", 1])
    await eventually(lambda: back.state_machine.data.get("after") == 1)
    assert back.state_machine.restores == 1
    assert back.state_machine.data == leader.state_machine.data
    await snap_cluster.stop(lagging)  # and from its own snapshot at start-up
    again = await snap_cluster.start_peer(lagging, sm=_AsyncRestore)
    assert again.state_machine.restores == 1
    await eventually(lambda: again.state_machine.data == leader.state_machine.data)


async def test_reads_on_a_restoring_follower_wait_for_the_restore(snap_cluster: Cluster, held: type[_Held]) -> None:
    """A stale read on a follower ran handle_read on the event loop while
    restore() replaced the state in a worker thread: it could see the state
    half replaced. It waits for the restore now, and sees its result."""
    leader, lagging = await _lagging(snap_cluster, held)
    back = await snap_cluster.start_peer(lagging, sm=held)
    await eventually(held.restoring.is_set)
    read = asyncio.ensure_future(back.read(["get", "k150"], consistency="stale"))
    await asyncio.sleep(0.2)
    held.release.set()
    assert await read == ["ok", 150]
    sm = back.state_machine
    assert isinstance(sm, _Held)
    assert sm.overlapped == []


async def test_a_follower_slow_to_restore_continues_from_the_log(snap_cluster: Cluster, held: type[_Held]) -> None:
    """While a follower restored a snapshot for longer than an election
    timeout, the leader stopped counting it as live and compacted the
    entries that follow the snapshot: once restored, it needed another
    snapshot (and, with writes going on, could keep needing one). The
    leader keeps them for it now, within ``snapshot_entries``; the cluster
    goes on writing meanwhile, and nobody campaigns."""
    leader, lagging = await _lagging(snap_cluster, held)
    term = leader.status()["term"]
    back = await snap_cluster.start_peer(lagging, sm=held)
    await eventually(held.restoring.is_set)
    await write_many(leader, 30, "during")  # a majority without the restoring follower
    await asyncio.sleep(3 * SNAP.election_ticks * SNAP.tick_interval)
    await leader.snapshot()
    held.release.set()
    await leader.write(["set", "after", 1])
    await eventually(lambda: back.state_machine.data.get("after") == 1)
    assert back.state_machine.restores == 1
    assert back.state_machine.data == leader.state_machine.data
    assert all(p.status()["term"] == term for p in snap_cluster.live())
    assert leader.is_leader


async def test_a_follower_stops_during_an_async_restore(snap_cluster: Cluster) -> None:
    """Stopping a follower whose ``async def restore`` never returns: the
    stop must not wait for it, and nothing may be left running."""
    started = asyncio.Event()
    cancelled = asyncio.Event()

    class Hanging(KVStore):
        async def restore(self, data: bytes) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    leader, lagging = await _lagging(snap_cluster, Hanging)
    await snap_cluster.start_peer(lagging, sm=Hanging)
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.wait_for(asyncio.shield(snap_cluster.stop(lagging)), 10)
    await asyncio.wait_for(cancelled.wait(), 10)
    assert await leader.write(["set", "after", 1]) == ["ok", "after", 1]
