"""Peer.metrics(): the counters, gauges and timings of a running peer, in a
real 3-peer cluster on loopback TCP."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

import raftlib
from raftlib import errors

from clusterkit import FAST, Cluster, eventually


def counters(peer: raftlib.Peer) -> dict[str, Any]:
    counted: dict[str, Any] = peer.metrics()["counters"]
    return counted


async def test_committed_writes_are_counted_exactly_on_every_peer(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    await leader.write(["set", "warm", 0])  # every peer has applied what the election appended
    await eventually(lambda: all(p.status()["applied_index"] == leader.status()["commit_index"]
                                 for p in peers.values()))
    before = {name: peer.metrics() for name, peer in peers.items()}

    await asyncio.gather(*(leader.write(["set", f"k{i}", i]) for i in range(25)))
    with pytest.raises(ValueError):
        await leader.write(["fail", "x"])  # handle_write raised: the write still committed
    await eventually(lambda: all(p.status()["applied_index"] == leader.status()["commit_index"]
                                 for p in peers.values()))

    after = {name: peer.metrics() for name, peer in peers.items()}
    lc0, lc1 = before[leader.name]["counters"], after[leader.name]["counters"]
    assert lc1["writes_proposed"] - lc0["writes_proposed"] == 26
    assert lc1["writes_committed"] - lc0["writes_committed"] == 26
    for name in peers:
        c0, c1 = before[name]["counters"], after[name]["counters"]
        assert c1["entries_applied"] - c0["entries_applied"] == 26, name
        assert c1["messages_sent"] > c0["messages_sent"] and c1["messages_received"] > c0["messages_received"]
        assert c1["bytes_sent"] > c0["bytes_sent"] and c1["bytes_received"] > c0["bytes_received"]
        t0, t1 = before[name]["timings"], after[name]["timings"]
        assert t1["save_seconds"]["count"] > t0["save_seconds"]["count"], name  # the entries went to disk
        assert t1["apply_seconds"]["count"] > t0["apply_seconds"]["count"], name
        if name != leader.name:
            assert c1["writes_proposed"] == c0["writes_proposed"]
            assert c1["writes_committed"] == c0["writes_committed"]
        gauges = after[name]["gauges"]
        status = peers[name].status()
        assert gauges["term"] == status["term"]
        assert gauges["commit_index"] == status["commit_index"]
        assert gauges["applied_index"] == status["applied_index"] and gauges["apply_lag"] == 0
        assert gauges["has_leader"] == 1
        assert gauges["is_leader"] == (1 if name == leader.name else 0)
        assert after[name]["name"] == name
    assert sum(lc1["writes_failed"].values()) == sum(lc0["writes_failed"].values())


async def test_timings_are_summaries_with_cumulative_buckets(cluster: Cluster) -> None:
    await cluster.start(1)
    leader = await cluster.leader()
    for i in range(5):
        await leader.write(["set", "k", i])
    timings = leader.metrics()["timings"]
    assert set(timings) == {"save_seconds", "apply_seconds", "snapshot_seconds", "restore_seconds"}
    assert timings["save_seconds"]["count"] > 0 and timings["apply_seconds"]["count"] > 0
    assert timings["snapshot_seconds"]["count"] == timings["restore_seconds"]["count"] == 0
    for timing in timings.values():
        buckets = timing["buckets"]
        counts = list(buckets.values())
        assert counts == sorted(counts)  # cumulative, as Prometheus has them
        assert list(buckets)[-1] == "+Inf" and buckets["+Inf"] == timing["count"]
        bounds = [float(b) for b in list(buckets)[:-1]]
        assert bounds == sorted(bounds)
        assert 0 <= timing["max"] <= timing["sum"]


async def test_a_leader_stop_counts_a_leader_change_and_an_election_on_the_survivors(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    old = await cluster.leader()
    survivors = [p for p in peers.values() if p is not old]
    assert all(counters(p)["leader_changes_seen"] >= 1 for p in peers.values())  # the first leader counts
    assert counters(old)["elections_won"] >= 1
    before = {p.name: counters(p) for p in survivors}

    await old.stop(transfer_leadership=False)
    new = await cluster.leader()
    assert new is not old
    await eventually(lambda: all(p.leader == new.name for p in survivors))
    for p in survivors:
        assert counters(p)["leader_changes_seen"] == before[p.name]["leader_changes_seen"] + 1, p.name
    assert counters(new)["elections_started"] > before[new.name]["elections_started"]
    assert counters(new)["elections_won"] == before[new.name]["elections_won"] + 1

    # A stopped peer's metrics are still there, and still plain JSON.
    stopped = old.metrics()
    assert stopped["gauges"]["is_leader"] == 0 and stopped["gauges"]["has_leader"] == 0
    assert stopped["counters"]["elections_won"] >= 1
    assert json.loads(json.dumps(stopped)) == stopped


async def test_metrics_are_plain_json(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    await leader.write(["set", "a", 1])
    for peer in peers.values():
        metrics = peer.metrics()
        assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics


async def test_reads_forwards_and_refusals_are_counted(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    await leader.write(["set", "a", 1])
    lead0, fol0 = counters(leader), counters(follower)

    assert await leader.read(["get", "a"]) == ["ok", 1]
    assert await follower.read(["get", "a"], consistency="stale") == ["ok", 1]
    assert await follower.read(["get", "a"]) == ["ok", 1]  # forwarded to the leader
    assert await follower.write(["set", "b", 2]) == ["ok", "b", 2]  # forwarded too
    with pytest.raises(errors.NotLeader):
        await follower.write(["set", "c", 3], forward=False)

    lead1, fol1 = counters(leader), counters(follower)
    assert lead1["reads_served"]["linearizable"] - lead0["reads_served"]["linearizable"] == 2
    assert fol1["reads_served"]["stale"] - fol0["reads_served"]["stale"] == 1
    assert fol1["requests_forwarded"].get("read", 0) - fol0["requests_forwarded"].get("read", 0) == 1
    assert fol1["requests_forwarded"].get("write", 0) - fol0["requests_forwarded"].get("write", 0) == 1
    assert fol1["writes_failed"]["not_leader"] - fol0["writes_failed"]["not_leader"] == 1
    assert lead1["writes_committed"] - lead0["writes_committed"] == 1  # the forwarded write


async def test_overloaded_writes_are_counted_by_reason(tmp_path: Any) -> None:
    c = Cluster(tmp_path, config=dataclasses.replace(FAST, max_pending_writes=1))
    try:
        await c.start(1)
        leader = await c.leader()
        first = leader.submit(["set", "a", 1])
        with pytest.raises(errors.Overloaded):
            leader.submit(["set", "b", 2])
        await first
        assert counters(leader)["writes_failed"]["overloaded"] == 1
    finally:
        await c.close()


async def test_writes_lost_with_the_leadership_are_counted(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    for name in peers:
        if name != leader.name:
            cluster.isolate(name)  # the leader hears no acknowledgement and steps down
    with pytest.raises(errors.LeadershipLost):
        await leader.write(["set", "x", 1])
    failed = counters(leader)["writes_failed"]
    assert failed["leadership_lost"] == 1 and sum(failed.values()) == 1


async def test_snapshots_and_client_connections_are_counted(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    await leader.write(["set", "a", 1])
    await leader.snapshot()
    assert counters(leader)["snapshots_taken"] == 1
    assert leader.metrics()["timings"]["snapshot_seconds"]["count"] == 1
    accepted = counters(leader)["connections_accepted"]
    async with await raftlib.connect([leader.address], timeout=10) as client:
        await client.write(["set", "b", 2])
        assert counters(leader)["connections_accepted"] > accepted
        assert leader.metrics()["gauges"]["connections_open"] >= 1
    assert all(counters(p)["snapshots_installed"] == 0 for p in peers.values())


async def test_a_snapshot_sent_to_a_lagging_follower_is_counted_at_both_ends(tmp_path: Any) -> None:
    c = Cluster(tmp_path, storage="lmdb", config=dataclasses.replace(FAST, snapshot_entries=50, snapshot_keep_entries=10))
    try:
        peers = await c.start(3)
        leader = await c.leader()
        lagging = next(name for name in peers if name != leader.name)
        await c.stop(lagging)
        for start in range(0, 150, 30):
            await asyncio.gather(*(leader.write(["set", f"k{i}", i]) for i in range(start, start + 30)))
        await eventually(lambda: leader._storage.first_index() > 20)  # what it lacks is compacted away
        # Counted once the snapshot's old files are pruned, a moment after the log is compacted.
        await eventually(lambda: counters(leader)["snapshots_taken"] >= 1)
        back = await c.start_peer(lagging)
        await eventually(lambda: counters(back)["snapshots_installed"] == 1, timeout=20)
        # The sender hears the transfer is over after the receiver may have restored it.
        await eventually(lambda: counters(leader)["snapshots_sent"] >= 1)
        assert back.metrics()["timings"]["restore_seconds"]["count"] == 1
        assert leader.metrics()["timings"]["restore_seconds"]["count"] == 0
        taken = leader.metrics()
        assert taken["timings"]["snapshot_seconds"]["count"] == taken["counters"]["snapshots_taken"]
        assert counters(back)["snapshots_sent"] == 0
    finally:
        await c.close()


def test_a_duration_on_a_bucket_bound_counts_in_that_bucket() -> None:
    """Buckets are "at or below" their bound (Prometheus' le); beyond the
    last bound only +Inf counts it."""
    from raftlib.metrics import Timing

    timing = Timing()
    for seconds in (0.001, 0.0011, 7.0):
        timing.observe(seconds)
    summary = timing.summary()
    assert summary["count"] == 3 and summary["max"] == 7.0 and summary["sum"] == pytest.approx(7.0021)
    buckets = summary["buckets"]
    assert (buckets["0.0005"], buckets["0.001"], buckets["0.0025"], buckets["5"], buckets["+Inf"]) == (0, 1, 2, 2, 3)
