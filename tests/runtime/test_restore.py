"""A follower restoring the leader's snapshot while the cluster goes on."""

from __future__ import annotations

import asyncio
from typing import Any

import raftlib

from clusterkit import Cluster, KVStore, eventually

from .test_snapshots import snap_cluster, write_many

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

