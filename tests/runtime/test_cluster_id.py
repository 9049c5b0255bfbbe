"""The cluster ID: fixed when a cluster is founded, learned by every member,
kept across restarts and snapshots, and checked on every peer connection so
that a peer of another cluster (same member names, a reused address) cannot
step a message into this one."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

import raftlib
from raftlib.testing import free_port
from raftlib.types import Entry, EntryKind, Membership, founding_cluster_id
from storage_adapters import MemoryStorage
from tests.clusterkit import FAST, Cluster, KVStore, eventually

SNAP = dataclasses.replace(FAST, snapshot_entries=20, snapshot_keep_entries=5)


def cluster_id(peer: raftlib.Peer) -> Any:
    return peer.status()["cluster_id"]


async def start_and_write(cluster: Cluster) -> raftlib.Peer:
    """Start three members and write enough for a snapshot; return the leader."""
    await cluster.start(3)
    leader = await cluster.leader()
    for i in range(30):
        await leader.write(["set", f"k{i}", i])
    return leader


async def test_founding_members_agree_on_the_cluster_id(cluster: Cluster) -> None:
    """s1 founds the cluster; s2 and s3 never call set_configuration and
    learn the ID from the leader. Calling it on them too changes nothing."""
    await cluster.start(3)
    await eventually(lambda: len({cluster_id(p) for p in cluster.live()}) == 1)
    ids = {cluster_id(p) for p in cluster.live()}
    (the_id,) = ids
    assert isinstance(the_id, str) and the_id
    for peer in cluster.live():
        await peer.set_configuration(dict(cluster.addresses))
    assert {cluster_id(p) for p in cluster.live()} == ids


async def test_peers_founded_separately_with_the_same_members_get_the_same_id(tmp_path: Any) -> None:
    """Founding on each peer with the same members gives the same ID (it is
    derived from the founding configuration); other members give another."""
    members = {"s1": "127.0.0.1:7001", "s2": "127.0.0.1:7002", "s3": "127.0.0.1:7003"}
    assert founding_cluster_id(members) == founding_cluster_id(dict(reversed(members.items())))
    assert founding_cluster_id(members) != founding_cluster_id({**members, "s3": "127.0.0.1:7004"})


async def test_a_peer_of_another_cluster_at_a_stopped_members_address_is_refused(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    a, b = Cluster(tmp_path / "a"), Cluster(tmp_path / "b")
    try:
        await a.start(3)
        a_leader = await a.leader()
        # Give cluster A the higher term, so that its leader would take over
        # any peer of B that stepped its messages.
        for _ in range(3):
            other = next(p for p in a.live() if p is not a_leader)
            await a_leader.transfer_leadership(other.name)
            a_leader = await a.leader()
        a_s2 = a.peers["s2"] if a_leader.name != "s2" else a.peers["s3"]
        await a_s2.stop()
        # Cluster B has members of the same names, a_s2's namesake at the
        # address a_s2 had. That one restarts on its data directory (a log
        # holding B's founding configuration, as set_configuration writes
        # it): it knows its cluster before A's leader, still sending to that
        # address, reaches it.
        b.addresses = {f"s{i}": f"127.0.0.1:{free_port()}" for i in (1, 2, 3)}
        b.addresses[a_s2.name] = a.addresses[a_s2.name]
        founded = MemoryStorage()
        founding = Membership(b.addresses, cluster_id=founding_cluster_id(b.addresses))
        founded.save(None, [Entry(1, 1, EntryKind.CONFIG, founding.encode())])
        with caplog.at_level("WARNING", logger="raftlib"):
            b.peers[a_s2.name] = await raftlib.start_peer(
                KVStore, name=a_s2.name, address=b.addresses[a_s2.name], storage=founded, config=FAST)
            for name in b.addresses:
                if name != a_s2.name:
                    await b.start_peer(name)
            await b.peers["s1"].set_configuration(dict(b.addresses))
            b_leader = await b.leader()
            assert b_leader.status()["term"] < a_leader.status()["term"]
            for i in range(5):
                await b_leader.write(["set", f"b{i}", i])
            b_peer = b.peers[a_s2.name]
            await eventually(lambda: b_peer.state_machine.data.get("b4") == 4)
            b_term, b_commit = b_peer.status()["term"], b_peer.status()["commit_index"]
            for i in range(5):
                await a_leader.write(["set", f"a{i}", i])
            # Heartbeats and appends of A's leader at B's peer.
            await asyncio.sleep(30 * FAST.tick_interval)
        status = a_leader.status()
        assert status["members"][a_s2.name]["match_index"] < status["last_index"]
        assert b_peer.status()["term"] == b_term
        assert b_peer.status()["commit_index"] >= b_commit
        assert all(b_peer.state_machine.data.get(f"b{i}") == i for i in range(5))
        assert not any(k.startswith("a") for k in b_peer.state_machine.data)
        assert b_peer.metrics()["counters"]["connections_refused"] > 0
        # Both clusters keep working.
        await a_leader.write(["set", "after", "a"])
        await (await b.leader()).write(["set", "after", "b"])
        await eventually(lambda: b_peer.state_machine.data.get("after") == "b")
        warnings = [r.getMessage() for r in caplog.records if "another cluster" in r.getMessage()]
        assert warnings, caplog.text
        assert cluster_id(a_leader) in warnings[0] and cluster_id(b_peer) in warnings[0]
    finally:
        await a.close()
        await b.close()


async def test_the_cluster_id_survives_compaction_and_a_restart(tmp_path: Any) -> None:
    cluster = Cluster(tmp_path, storage="lmdb", config=SNAP)
    try:
        leader = await start_and_write(cluster)
        follower = next(p for p in cluster.live() if p is not leader)
        await eventually(lambda: follower.state_machine.data.get("k29") == 29)
        the_id = cluster_id(leader)
        await follower.snapshot()
        await follower.stop()
        for peer in cluster.live():
            await peer.stop()
        # Alone, before any leader could tell it anything.
        again = await cluster.start_peer(follower.name)
        assert again.status()["snapshot_index"] > 1
        assert cluster_id(again) == the_id
    finally:
        await cluster.close()


async def test_a_joined_peer_and_one_restored_from_a_snapshot_learn_the_id(tmp_path: Any) -> None:
    cluster = Cluster(tmp_path, storage="lmdb", config=SNAP)
    try:
        leader = await start_and_write(cluster)
        the_id = cluster_id(leader)
        await leader.snapshot()  # the log no longer begins with the founding configuration
        joined = await cluster.join("s4")
        await eventually(lambda: cluster_id(joined) == the_id)
        assert joined.status()["snapshot_index"] > 1
        await joined.stop()
        for peer in cluster.live():
            await peer.stop()
        again = await cluster.start_peer("s4")
        assert cluster_id(again) == the_id
    finally:
        await cluster.close()


async def test_an_empty_peer_waiting_to_be_joined_has_no_cluster_id(tmp_path: Any) -> None:
    async with await raftlib.start_peer(KVStore, name="s9", address="127.0.0.1:0", storage=MemoryStorage(),
                                        config=FAST) as peer:
        assert cluster_id(peer) is None
