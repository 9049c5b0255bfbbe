"""Client semantics over TCP: read consistency levels, forwarding,
exactly-once sessions, the change feed, and raftlib.connect."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
from typing import Any, AsyncIterator

import pytest

import raftlib
from raftlib import codec, errors
from raftlib.rpc import RpcConnection
from raftlib.transport.framing import encode_frame

from clusterkit import FAST, Cluster, KVStore, eventually, first_change


class GatedKV(KVStore):
    """Blocks ``["slow", key, value]`` until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def handle_write(self, command: Any) -> Any:
        if command[0] == "slow":
            self.entered.set()
            await self.gate.wait()
            command = ["set", *command[1:]]
        return super().handle_write(command)


# -- reads ------------------------------------------------------------------------------


async def _leader_and_follower(cluster: Cluster, sm: Any = KVStore) -> tuple[raftlib.Peer, raftlib.Peer]:
    """Start three peers; return the leader and a follower that knows it."""
    peers = await cluster.start(3, sm=sm)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    await eventually(lambda: follower.leader == leader.name)
    return leader, follower


async def test_consistency_levels_on_leader_and_follower(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    await leader.write(["set", "a", 1])
    for consistency in ("linearizable", "lease"):
        assert await leader.read(["get", "a"], consistency=consistency) == ["ok", 1]
        assert await follower.read(["get", "a"], consistency=consistency) == ["ok", 1]  # forwarded
    await eventually(lambda: follower.state_machine.data.get("a") == 1)
    assert await follower.read(["get", "a"], consistency="stale") == ["ok", 1]  # local state
    with pytest.raises(errors.ConfigError, match="consistency"):
        await leader.read(["get", "a"], consistency="eventual")


async def test_stale_reads_serve_local_state_even_without_a_leader(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    await leader.write(["set", "a", 1])
    follower = next(p for p in peers.values() if p is not leader)
    await eventually(lambda: follower.state_machine.data.get("a") == 1)
    cluster.isolate(follower.name)
    await leader.write(["set", "a", 2])
    assert await follower.read(["get", "a"], consistency="stale") == ["ok", 1]  # behind, by design


@pytest.mark.parametrize("consistency", ["linearizable", "lease"])
async def test_a_stale_leader_cut_off_from_the_majority_cannot_serve_a_read(
    cluster: Cluster, consistency: str
) -> None:
    await cluster.start(3)
    old = await cluster.leader()
    await old.write(["set", "k", "old"])
    cluster.isolate(old.name)
    new = await eventually(lambda: next((p for p in cluster.live() if p.is_leader and p is not old), None))
    assert await new.write(["set", "k", "new"]) == ["ok", "k", "new"]
    # The old leader may not have noticed yet; it must not answer with "old".
    try:
        answer = await old.read(["get", "k"], consistency=consistency, forward=False, timeout=0.5)
    except (errors.Timeout, errors.NotLeader):
        pass
    else:
        pytest.fail(f"a leader cut off from the majority answered {answer!r}")
    cluster.heal()


async def test_lease_reads_need_check_quorum(tmp_path: Any) -> None:
    c = Cluster(tmp_path, config=dataclasses.replace(FAST, check_quorum=False))
    try:
        await c.start(1)
        leader = await c.leader()
        with pytest.raises(errors.ConfigError, match="check_quorum"):
            await leader.read(["get", "a"], consistency="lease")
    finally:
        await c.close()


# -- sessions -----------------------------------------------------------------------------


async def test_a_retried_session_write_is_applied_once(cluster: Cluster) -> None:
    await cluster.start(1)
    peer = await cluster.start_peer("s2", sm=GatedKV)
    await cluster.peers["s1"].add_member("s2", peer.address)
    await cluster.peers["s1"].transfer_leadership("s2")
    await eventually(lambda: peer.is_leader)
    await peer.open_session("c1")
    sm: GatedKV = peer.state_machine  # type: ignore[assignment]
    with pytest.raises(errors.WriteTimeout):
        await peer.session_write("c1", 1, ["slow", "x", 1], timeout=0.2)
    assert sm.entered.is_set()
    retry = asyncio.ensure_future(peer.session_write("c1", 1, ["slow", "x", 1]))
    await asyncio.sleep(0.1)
    sm.gate.set()
    assert await retry == ["ok", "x", 1]
    # Once more, through another member: the first result, still applied once.
    assert await cluster.peers["s1"].session_write("c1", 1, ["slow", "x", 1]) == ["ok", "x", 1]
    assert sm.applied.count(["set", "x", 1]) == 1
    # A new sequence number is a new write.
    assert await peer.session_write("c1", 2, ["set", "x", 2], ack=1) == ["ok", "x", 2]


async def test_a_sequence_number_reused_for_another_command_is_refused(cluster: Cluster) -> None:
    """Two writers sharing a session id (two clients given the same one)
    number their writes alike. The second write of each number was taken
    for a retry of the first: not applied, and answered with the first
    one's result, as if it had been."""
    leader, follower = await _leader_and_follower(cluster)
    await leader.open_session("shared")
    assert await leader.session_write("shared", 1, ["set", "a", 1]) == ["ok", "a", 1]
    for peer in (leader, follower):
        with pytest.raises(errors.ConfigError, match="write 1 of client session 'shared' .* another command"):
            await peer.session_write("shared", 1, ["set", "b", 2])
    # Both appended before either is applied: the second is found out as it is applied.
    first, second = await asyncio.gather(leader.session_write("shared", 2, ["set", "d", 1]),
                                         leader.session_write("shared", 2, ["set", "d", 2]), return_exceptions=True)
    assert first == ["ok", "d", 1] and isinstance(second, errors.ConfigError), (first, second)
    a = await raftlib.connect([leader.address], timeout=5)
    b = await raftlib.connect([leader.address], timeout=5)
    try:
        b.client_id = a.client_id
        assert await a.write(["set", "c", 1]) == ["ok", "c", 1]
        with pytest.raises(errors.ConfigError, match="not applied"):
            await b.write(["set", "c", 2])
    finally:
        await a.close()
        await b.close()
    # A retry of the same command is still answered with its first result.
    assert await follower.session_write("shared", 1, ["set", "a", 1]) == ["ok", "a", 1]
    # Once acknowledged, a result is forgotten: the write is refused, not
    # reported applied (CommandFailed), whatever its command.
    assert await leader.session_write("shared", 3, ["set", "e", 1], ack=2) == ["ok", "e", 1]
    for command in (["set", "a", 1], ["set", "b", 2]):
        with pytest.raises(errors.ConfigError, match="write 1 of client session 'shared' was acknowledged"):
            await follower.session_write("shared", 1, command)
    assert "b" not in leader.state_machine.data and leader.state_machine.data["c"] == 1
    assert leader.state_machine.data["d"] == 1


async def test_session_errors(cluster: Cluster) -> None:
    peers = await cluster.start(1)
    s1 = peers["s1"]
    with pytest.raises(errors.SessionExpired, match="not applied"):
        await s1.session_write("never-opened", 1, ["set", "a", 1])
    assert "a" not in s1.state_machine.data
    await s1.open_session("c")
    with pytest.raises(errors.CommandFailed, match="ValueError: refused"):
        await s1.session_write("c", 1, ["fail", "z"])
    with pytest.raises(errors.CommandFailed, match="ValueError: refused"):
        await s1.session_write("c", 1, ["fail", "z"])  # the same answer, not applied again
    assert s1.state_machine.applied.count(["fail", "z"]) == 1
    await s1.close_session("c")
    with pytest.raises(errors.SessionExpired):
        await s1.session_write("c", 2, ["set", "b", 1])
    with pytest.raises(errors.ConfigError):
        await s1.session_write("c", 0, ["set", "b", 1])
    with pytest.raises(errors.ConfigError):
        await s1.open_session("")
    # An ack at or above seq claims this write's answer was received: it was
    # refused as acknowledged before, unapplied.
    await s1.open_session("d")
    for ack in (3, 4):
        with pytest.raises(errors.ConfigError, match="ack .* must be below seq"):
            await s1.session_write("d", 3, ["set", "d", 3], ack=ack)
    assert await s1.session_write("d", 3, ["set", "d", 3], ack=2) == ["ok", "d", 3]
    assert s1.state_machine.applied.count(["set", "d", 3]) == 1


async def test_a_session_write_with_a_seq_peers_would_refuse_is_refused_and_the_cluster_keeps_committing(
    cluster: Cluster,
) -> None:
    """Peers refuse a client-session entry whose seq or ack is above 2**63-1
    (check_message). The leader must refuse such a request too: appended, the
    entry could never be replicated and nothing after it would ever commit."""
    from raftlib.rpc import RpcConnection

    await cluster.start(3)
    leader = await cluster.leader()
    await leader.open_session("c")
    for seq, ack in ((2**63, 0), (2**64 - 1, 0), (2**63 + 1, 2**63)):
        with pytest.raises(errors.ConfigError, match="2\\*\\*63"):
            await leader.session_write("c", seq, ["set", "big", 1], ack=ack, timeout=5)
    conn = await RpcConnection.open(leader.address)
    try:
        with pytest.raises(errors.ConfigError, match="2\\*\\*63"):
            await conn.call("session_write", {"client": "c", "seq": 2**63, "command": ["set", "big", 1], "timeout": 5})
    finally:
        await conn.close()
    assert await leader.session_write("c", 2**63 - 1, ["set", "max", 1], timeout=5) == ["ok", "max", 1]
    assert await leader.write(["set", "after", 1], timeout=5) == ["ok", "after", 1]
    await eventually(lambda: all(p.state_machine.data.get("after") == 1 for p in cluster.live()))
    assert all("big" not in p.state_machine.data for p in cluster.live())


async def test_a_session_write_that_may_have_applied_is_never_reported_as_not_applied(cluster: Cluster) -> None:
    """The leader appends the write and loses its majority before it commits;
    the others elect a leader that commits it. The old leader, which then
    knows no leader, must not answer NotLeader (not applied): its first
    attempt's outcome is unknown, and the write did apply."""
    await cluster.start(3)
    old = await cluster.leader()
    await old.open_session("c")
    deliver = old._transport._on_message
    old._transport._on_message = lambda msg: None  # its messages go out; no answer comes back
    try:
        with pytest.raises(errors.OutcomeUnknown, match="may have been applied"):
            await old.session_write("c", 1, ["set", "x", 1], timeout=5)
        new = await eventually(lambda: next((p for p in cluster.live() if p.is_leader and p is not old), None))
        await eventually(lambda: new.state_machine.data.get("x") == 1)
    finally:
        old._transport._on_message = deliver
    assert await new.session_write("c", 1, ["set", "x", 1]) == ["ok", "x", 1]
    assert new.state_machine.applied.count(["set", "x", 1]) == 1


async def test_a_forwarded_session_write_that_may_have_applied_is_not_reported_expired(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower retries a session write after an outcome-unknown attempt.
    If the session is gone by the retry (it expired meanwhile), the retry's
    SessionExpired said "not applied", though the first attempt may have
    been; a client then applied the command again in a new session."""
    leader, follower = await _leader_and_follower(cluster)
    await follower.open_session("c", timeout=10)
    forward = follower._forward
    attempts = 0

    async def flaky(to: str, op: str, args: dict[str, Any], within: float | None = None, *,
                    watch: bool = True) -> Any:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise errors.LeadershipLost("the leader stepped down after appending it")
        await leader.close_session("c")  # gone by the retry
        return await forward(to, op, args, within, watch=watch)

    monkeypatch.setattr(follower, "_forward", flaky)
    with pytest.raises(errors.OutcomeUnknown, match="an earlier attempt may have been applied"):
        await follower.session_write("c", 1, ["set", "a", 1], timeout=10)
    assert attempts == 2


async def test_a_forwarded_read_that_lost_its_connection_never_says_it_may_have_applied(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read changes nothing. A follower whose first forward of a read lost
    its connection, and whose retries found no leader, ended the read with
    OutcomeUnknown "an earlier attempt may have been applied": an error
    Peer.read does not list, about an effect a read cannot have."""
    leader, follower = await _leader_and_follower(cluster)
    attempts = 0

    async def cut(to: str, op: str, args: dict[str, Any], within: float | None = None, *,
                  watch: bool = True) -> Any:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise errors.ConnectionLost("the connection to the leader dropped")
        raise errors.Unavailable("could not reach the leader")

    monkeypatch.setattr(follower, "_forward", cut)
    with pytest.raises((errors.NotLeader, errors.Unavailable, errors.Timeout)) as caught:
        await follower.read(["get", "a"], timeout=1)
    assert not isinstance(caught.value, errors.OutcomeUnknown), repr(caught.value)
    assert "applied" not in str(caught.value)
    assert attempts > 1  # a read is retried after a lost connection


async def test_sessions_expire_by_log_time(tmp_path: Any) -> None:
    c = Cluster(tmp_path, config=dataclasses.replace(FAST, session_ttl=0.3))
    try:
        peers = await c.start(1)
        s1 = peers["s1"]
        await s1.open_session("idle")
        await s1.open_session("busy")
        assert await s1.session_write("idle", 1, ["set", "i", 1]) == ["ok", "i", 1]
        for seq in range(1, 6):  # "busy" keeps writing for 0.5 s; log time moves with it
            await asyncio.sleep(0.1)
            assert await s1.session_write("busy", seq, ["set", "b", seq]) == ["ok", "b", seq]
        with pytest.raises(errors.SessionExpired):
            await s1.session_write("idle", 1, ["set", "i", 1])
        assert s1.state_machine.applied.count(["set", "i", 1]) == 1
    finally:
        await c.close()


async def test_peers_with_different_session_ttls_expire_the_same_sessions(tmp_path: Any) -> None:
    """Expiry is replicated state: a member whose own session_ttl is shorter
    dropped a session the others kept, and skipped a write of it they
    applied, so the state machines diverged."""
    c = Cluster(tmp_path)
    try:
        for name, ttl in (("s1", 3600.0), ("s2", 0.3), ("s3", 3600.0)):
            c.config = dataclasses.replace(FAST, session_ttl=ttl)
            await c.start_peer(name)
        await c.peers["s1"].set_configuration(dict(c.addresses))
        leader = await c.leader()
        await leader.open_session("idle")
        await leader.open_session("busy")
        for seq in range(1, 6):  # log time moves on by 0.5 s
            await asyncio.sleep(0.1)
            await leader.session_write("busy", seq, ["set", "b", seq])
        with contextlib.suppress(errors.SessionExpired):
            await leader.session_write("idle", 1, ["set", "i", 1])
        for p in c.live():
            await eventually(lambda: p._applied >= leader._applied)
        assert [p.state_machine.data for p in c.live()] == [leader.state_machine.data] * 3
    finally:
        await c.close()


async def test_a_full_session_table_forgets_the_least_recently_used_session(tmp_path: Any) -> None:
    """The table held every session opened for session_ttl (an hour), however
    many, in memory and in every snapshot. Full, it drops the session used
    longest ago: its writes then fail with SessionExpired, unapplied, and a
    client whose write may have applied says so (WriteTimeout) instead of
    sending it again in a new session."""
    async with one_member_and_a_client(tmp_path, max_sessions=3) as (peer, client):
        await client.write(["set", "a", 0])
        await peer.open_session("old")
        await peer.open_session("used")
        assert await peer.session_write("used", 1, ["set", "u", 1]) == ["ok", "u", 1]
        await client.write(["set", "a", 1])
        await peer.open_session("new")  # the table is full: "old" goes
        assert len(peer._sessions) == 3
        with pytest.raises(errors.SessionExpired, match="not applied"):
            await peer.session_write("old", 1, ["set", "o", 1])
        assert await peer.session_write("used", 1, ["set", "u", 1]) == ["ok", "u", 1]  # still answered once
        assert "o" not in peer.state_machine.data and peer.state_machine.data["u"] == 1
        # The client's session goes next but one; its next write opens another one.
        await peer.open_session("newer")
        await peer.open_session("newest")
        assert client.client_id not in peer._sessions
        assert await client.write(["set", "a", 2]) == ["ok", "a", 2]
        assert client.client_id in peer._sessions and len(peer._sessions) == 3


async def test_a_client_write_that_may_have_applied_is_not_sent_again_when_its_session_was_dropped(
    tmp_path: Any,
) -> None:
    cluster = Cluster(tmp_path, config=dataclasses.replace(FAST, max_sessions=3))
    try:
        await cluster.start(1, sm=GatedKV)
        peer = await cluster.leader()
        sm: GatedKV = peer.state_machine  # type: ignore[assignment]
        client = await raftlib.connect([peer.address], timeout=10)
        try:
            write = asyncio.ensure_future(client.write(["slow", "x", 1]))
            await asyncio.wait_for(sm.entered.wait(), 5)
            opened = [asyncio.ensure_future(peer.open_session(f"n{i}")) for i in range(3)]  # the third drops the client's
            await eventually(lambda: peer._core.log.last_index() >= peer._applied + 4)
            assert client._conn is not None
            await client._conn.close()  # the answer is lost: the client sends the write again
            sm.gate.set()
            with pytest.raises(errors.WriteTimeout, match="may have been applied"):
                await write
            await asyncio.gather(*opened)
            assert sm.applied.count(["set", "x", 1]) == 1
        finally:
            await client.close()
    finally:
        await cluster.close()


async def test_the_session_table_survives_snapshots_and_restarts(lmdb_cluster: Cluster) -> None:
    cluster = lmdb_cluster
    peers = await cluster.start(3)
    leader = await cluster.leader()
    await leader.open_session("c")
    assert await leader.session_write("c", 1, ["set", "a", 1]) == ["ok", "a", 1]
    for p in peers.values():
        await eventually(lambda: p._applied >= leader._applied)
        await p.snapshot()
    for name in list(peers):
        await cluster.peers[name].stop()
        await cluster.start_peer(name)
    new = await cluster.leader()
    assert new.state_machine.restores == 1
    assert await new.session_write("c", 1, ["set", "a", 1]) == ["ok", "a", 1]
    assert new.state_machine.applied == []  # answered from the table, not applied again
    assert await new.session_write("c", 2, ["set", "b", 2]) == ["ok", "b", 2]


# -- the change feed -----------------------------------------------------------------------


async def test_a_call_that_waited_for_another_s_connection_attempt_keeps_to_its_own_timeout(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls that find no connection open one at a time; the one that waits
    for another's attempt has only what is left of its own time for its
    attempt after it (it had its whole timeout again)."""
    peers = await cluster.start(1)
    (peer,) = peers.values()
    client = await raftlib.connect([peer.address], timeout=10)
    try:
        loop = asyncio.get_running_loop()
        deadlines: list[float] = []
        open_any = client._open_any

        async def recording(within: float, *args: Any) -> Any:
            deadlines.append(loop.time() + within)
            return await open_any(within, *args)

        monkeypatch.setattr(client, "_open_any", recording)
        await peer.stop()
        started = loop.time()
        answers = await asyncio.gather(client.read(["get", "k"], timeout=0.5), client.read(["get", "k"], timeout=1.0),
                                       return_exceptions=True)
        assert all(isinstance(a, errors.Unavailable) for a in answers), answers
        assert len(deadlines) >= 2 and max(deadlines) < started + 1.0 + 0.2
    finally:
        await client.close()


async def test_listen_yields_applied_writes_in_order_and_resumes(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    for i in range(5):
        await leader.write(["set", f"k{i}", i])
    seen: list[raftlib.Change] = []

    async def consume(peer: raftlib.Peer, start: int, n: int) -> None:
        async for change in peer.listen(start):
            seen.append(change)
            if len(seen) == n:
                return

    await asyncio.wait_for(consume(leader, 0, 5), 5)
    assert [c.command for c in seen] == [["set", f"k{i}", i] for i in range(5)]
    assert [c.result for c in seen] == [["ok", f"k{i}", i] for i in range(5)]
    indexes = [c.index for c in seen]
    assert indexes == sorted(indexes) and all(c.term >= 1 for c in seen)
    # Resume after the third, on a follower, and see a new write arrive live.
    follower = next(p for p in peers.values() if p is not leader)
    seen.clear()
    task = asyncio.ensure_future(consume(follower, indexes[2] + 1, 3))
    await asyncio.sleep(0.05)
    with pytest.raises(ValueError):
        await leader.write(["fail", "x"])
    await asyncio.wait_for(task, 5)
    assert [c.command for c in seen] == [["set", "k3", 3], ["set", "k4", 4], ["fail", "x"]]
    assert seen[-1].result is None and seen[-1].error == "ValueError: refused x"


async def test_listen_from_before_the_kept_changes_is_refused(tmp_path: Any) -> None:
    c = Cluster(tmp_path, config=dataclasses.replace(FAST, listen_backlog=3))
    try:
        peers = await c.start(1)
        s1 = peers["s1"]
        for i in range(6):
            await s1.write(["set", "k", i])
        with pytest.raises(errors.LogCompacted, match="listen from"):
            async for _ in s1.listen(1):
                pass
        first = await asyncio.wait_for(anext(aiter(s1.listen(0))), 2)
        assert first.command == ["set", "k", 3]  # the oldest of the three kept
        with pytest.raises(errors.ConfigError):
            async for _ in s1.listen(-1):
                pass
    finally:
        await c.close()


async def test_listen_after_a_restart_from_a_snapshot_can_say_at_once_that_it_cannot_reach_back(
        lmdb_cluster: Cluster) -> None:
    """A restarted peer keeps changes from its snapshot on. An older index is
    refused at once, as for a backlog that dropped it; ``reaching`` makes a
    feed from the oldest change kept refuse too, instead of waiting for the
    next write, when it keeps none that old (here, none at all)."""
    s1 = (await lmdb_cluster.start(1))["s1"]
    for i in range(5):
        await s1.write(["set", "k", i])
    snap = await s1.snapshot()
    await s1.stop()
    s1 = await lmdb_cluster.start_peer("s1")
    await lmdb_cluster.leader()
    client = await raftlib.connect([s1.address], timeout=10)
    try:
        with pytest.raises(errors.LogCompacted, match=f"listen from {snap.index + 1}"):
            await asyncio.wait_for(anext(aiter(s1.listen(1))), 10)
        for feed in (s1.listen(0, reaching=snap.index), client.listen(0, reaching=snap.index)):
            with pytest.raises(errors.LogCompacted, match=f"no change at or before index {snap.index} is kept"):
                await asyncio.wait_for(anext(aiter(feed)), 10)
        with pytest.raises(errors.ConfigError):
            await anext(aiter(s1.listen(3, reaching=snap.index)))
        await s1.write(["set", "k", 5])
        at = s1.status()["applied_index"]
        for feed in (s1.listen(0, reaching=at), client.listen(0, reaching=at)):
            change = await asyncio.wait_for(anext(aiter(feed)), 10)
            assert change.command == ["set", "k", 5] and change.index > snap.index
            await feed.aclose()  # type: ignore[attr-defined]
    finally:
        await client.close()


async def test_a_member_sends_keepalives_on_a_quiet_feed_only_when_asked(cluster: Cluster) -> None:
    """A caller that does not ask (one that knows no Keepalive frame, which
    would close its connection) gets none; one that asks gets them while the
    feed has nothing to send; an interval that is not a positive number is refused."""
    from raftlib.rpc import KEEPALIVE, RpcConnection

    await cluster.start(3)
    leader = await cluster.leader()
    await leader.write(["set", "a", 1])
    start = leader.status()["applied_index"] + 1
    conn = await RpcConnection.open(leader.address)
    frames: list[tuple[str, Any]] = []
    on_frame = conn._on_frame
    conn._on_frame = lambda t, b: (frames.append((t, b)), on_frame(t, b))[1]  # type: ignore[method-assign]
    feeds: list[AsyncIterator[Any]] = []
    try:
        for bad in (0, -1.0, float("inf"), "1"):
            with pytest.raises(errors.ConfigError, match="keepalive"):
                await anext(aiter(conn.stream("listen", {"from_index": start, "keepalive": bad})))
        feeds = [conn.stream("listen", {"from_index": start}), conn.stream("listen", {"from_index": start}),
                 conn.stream("listen", {"from_index": start, "keepalive": 0.02})]
        waiting: list[asyncio.Future[Any]] = []
        for feed in feeds:
            waiting.append(asyncio.ensure_future(anext(feed)))
            await eventually(lambda: len(conn._streams) == len(waiting))
            if len(waiting) == 2:
                plain = set(conn._streams)
        await eventually(lambda: sum(t == KEEPALIVE for t, _ in frames) >= 5)
        assert {b[0] for t, b in frames if t == KEEPALIVE}.isdisjoint(plain)
        await leader.write(["set", "b", 2])
        for task in waiting:
            assert (await asyncio.wait_for(task, 10))[2] == ["set", "b", 2]
    finally:
        for feed in feeds:
            await feed.aclose()  # type: ignore[attr-defined]
        await conn.close()


# -- raftlib.connect --------------------------------------------------------------------------


async def test_client_writes_reads_and_moves_to_the_leader(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    client = await raftlib.connect([follower.address], timeout=10)
    try:
        assert await client.write(["set", "a", 1]) == ["ok", "a", 1]
        assert await client.read(["get", "a"]) == ["ok", 1]
        assert await client.read(["get", "a"], consistency="stale") == ["ok", 1]
        assert client.leader_address == leader.address
        with pytest.raises(errors.CommandFailed, match="refused"):
            await client.write(["fail", "q"])
        status = await client.status()
        assert set(status["members"]) == {"s1", "s2", "s3"}
    finally:
        await client.close()
    with pytest.raises(errors.PeerStopped):
        await client.write(["set", "b", 1])


@contextlib.asynccontextmanager
async def one_member_and_a_client(tmp_path: Any, **config: Any) -> AsyncIterator[tuple[raftlib.Peer, raftlib.Client]]:
    """A one-member cluster with ``config`` changed from FAST, and a client of it."""
    cluster = Cluster(tmp_path, config=dataclasses.replace(FAST, **config))
    try:
        await cluster.start(1)
        leader = await cluster.leader()
        client = await raftlib.connect([leader.address], timeout=10)
        try:
            yield leader, client
        finally:
            await client.close()
    finally:
        await cluster.close()


async def test_client_writes_that_fail_do_not_hold_back_its_acknowledgements(tmp_path: Any) -> None:
    """A write refused before it applies (it cannot be encoded, it is too
    large, the caller gave up) is never sent again. The members must still
    be told they can forget the results of the writes after it."""
    async with one_member_and_a_client(tmp_path, max_command_size=1024) as (leader, client):
        with pytest.raises(TypeError, match="the command must be encodable by msgpack"):
            await client.write(["set", "a", object()])  # refused before it takes a number
        with pytest.raises(TypeError, match="the query must be encodable by msgpack"):
            await client.read(["get", object()])
        with pytest.raises(errors.CommandTooLarge):
            await client.write(["set", "a", "x" * 2048])
        for i in range(3):
            assert await client.write(["set", "a", i]) == ["ok", "a", i]
        session = leader._sessions._sessions[client.client_id]
        assert sorted(session.results) == [4]  # the results up to 3 were acknowledged


async def test_a_command_too_large_for_a_frame_is_refused_before_it_is_sent(tmp_path: Any) -> None:
    """Members close a connection whose frame exceeds Config.max_frame_size.
    A client sent such a command anyway, again at each retry, and reported
    after its whole timeout that it might have been applied."""
    async with one_member_and_a_client(tmp_path, max_command_size=1000, max_frame_size=100_000,
                                       snapshot_chunk_size=50_000, max_bytes_per_message=50_000) as (leader, _):
        client = await raftlib.connect([leader.address], timeout=5, max_frame_size=100_000)
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(errors.CommandTooLarge, match="max_frame_size"):
                await client.write(["set", "a", "x" * 200_000])
            with pytest.raises(errors.CommandTooLarge, match="max_frame_size"):
                await client.read(["get", "x" * 200_000])
            with pytest.raises(errors.CommandTooLarge, match="max_command_size"):
                await client.write(["set", "a", "x" * 2000])  # fits a frame: the member refuses it
            assert loop.time() - start < 1
            assert await client.write(["set", "a", 1]) == ["ok", "a", 1]
            assert leader._transport.stats["protocol_errors"] == 0
        finally:
            await client.close()


async def test_a_member_answers_a_frame_over_its_limit_so_the_client_says_it_was_not_applied(tmp_path: Any) -> None:
    """A client allowed larger frames than the members sent one anyway: the
    member closed the connection without a word, and the client retried for
    its whole timeout and raised WriteTimeout ("may have been applied")."""
    async with one_member_and_a_client(tmp_path, max_command_size=1000, max_frame_size=100_000,
                                       snapshot_chunk_size=50_000, max_bytes_per_message=50_000) as (leader, _):
        client = await raftlib.connect([leader.address], timeout=30, max_frame_size=1_000_000)
        try:
            with pytest.raises(errors.CommandTooLarge, match=r"not applied.*max_frame_size=100000"):
                await client.write(["set", "big", "x" * 200_000])
            with pytest.raises(errors.CommandTooLarge, match="100000 bytes"):
                await client.read(["get", "x" * 200_000])
            assert await client.write(["set", "a", 1]) == ["ok", "a", 1]  # on a new connection
            assert await client.read(["get", "big"]) == ["error", "key_not_found"]
        finally:
            await client.close()


async def test_writes_that_find_the_session_expired_together_share_one_new_session(tmp_path: Any) -> None:
    """Every write in flight when the session expired gets SessionExpired; each
    opened a session of its own, and all but one stayed in the replicated
    table, results unacknowledged, until they expired in turn."""
    async with one_member_and_a_client(tmp_path, session_ttl=0.5) as (leader, client):
        await client.write(["set", "a", 0])
        expired = client.client_id
        await asyncio.sleep(0.7)
        await leader.open_session("other")  # log time moves on; the idle session is dropped
        assert expired not in leader._sessions
        results = await asyncio.gather(*[client.write(["set", f"k{i}", i]) for i in range(10)])
        assert results == [["ok", f"k{i}", i] for i in range(10)]
        assert client.client_id != expired
        assert set(leader._sessions._sessions) == {"other", client.client_id}
        assert sorted(c[1] for c in leader.state_machine.applied) == ["a"] + [f"k{i}" for i in range(10)]


async def test_a_session_whose_opening_was_cancelled_is_closed_with_its_client(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connect, or the first write of a ``session=False`` client, cancelled
    after asking for its session and before reading the answer may have
    opened it. The client's next session takes that id rather than a new
    one, and ``close()`` closes it (a cancelled connect closes it at once),
    so that no session outlives its client for ``session_ttl``."""
    await cluster.start(1)
    leader = await cluster.leader()
    asked = asyncio.Event()
    hang_once = [True]
    call = RpcConnection.call

    async def answer_never_read(self: RpcConnection, op: str, args: Any, timeout: float | None = None) -> Any:
        result = await call(self, op, args, timeout)
        if op == "open_session" and hang_once[0]:
            hang_once[0] = False
            asked.set()
            await asyncio.Event().wait()  # cancelled here, the answer unseen
        return result

    monkeypatch.setattr(RpcConnection, "call", answer_never_read)
    connecting = asyncio.ensure_future(raftlib.connect([leader.address], timeout=10))
    await asked.wait()
    assert len(leader._sessions) == 1
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    assert len(leader._sessions) == 0

    asked.clear()
    hang_once[0] = True
    client = await raftlib.connect([leader.address], timeout=10, session=False)
    try:
        writing = asyncio.ensure_future(client.write(["set", "a", 1]))
        await asked.wait()
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
        assert await client.write(["set", "a", 2]) == ["ok", "a", 2]
        assert len(leader._sessions) == 1  # the one asked for first
    finally:
        await client.close()
    assert len(leader._sessions) == 0


async def test_a_client_whose_connection_was_lost_still_closes_its_session(tmp_path: Any) -> None:
    """``close()`` after the client's connection dropped (a member
    restarting, a call that timed out) connects again to close the session,
    rather than leaving it in every member's table for ``session_ttl``."""
    async with one_member_and_a_client(tmp_path) as (leader, client):
        await client.write(["set", "a", 1])
        assert len(leader._sessions) == 1
        assert client._conn is not None
        await client._conn.close()
        await client.close()
        assert len(leader._sessions) == 0


async def test_clients_that_come_and_go_leave_the_members_and_their_process_as_they_were(cluster: Cluster) -> None:
    """Many short-lived clients, with and without sessions, writing, reading,
    cancelling a write, opening change feeds and watches and dropping them
    read or unread, leave nothing behind once closed: not a connection,
    request task, session or feed waiter on any member, nor a task or a
    socket of their own."""
    from raftlib.kv import KVClient, KVStateMachine

    peers = await cluster.start(3, sm=KVStateMachine)
    leader = await cluster.leader()
    addresses = [p.address for p in peers.values()]
    async with await KVClient.connect(addresses) as warm:
        await warm.put("k", 0)

    def members() -> dict[str, tuple[int, ...]]:
        """Each member's client connections, request tasks, sessions and feed waiters."""
        return {p.name: (sum(conn.peer_name not in peers for conn in p._transport._inbound.values()),
                         len(p._requests._tasks), len(p._sessions), len(p._feed_waiters)) for p in peers.values()}

    def own_tasks() -> set[asyncio.Task[Any]]:
        pooled = {conn._reading for p in peers.values() for conn in p._rpc.values()}
        return {t for t in asyncio.all_tasks() if t.get_name().startswith("raftlib-rpc-")} - pooled

    def sockets() -> int:
        return len(os.listdir("/proc/self/fd"))

    await eventually(lambda: all(n == (0, 0, 0, 0) for n in members().values()))
    before, open_before = members(), sockets()
    for i in range(24):
        kv = await KVClient.connect(addresses, session=i % 2 == 0)
        if i % 4 in (1, 2):  # cancelled in flight; without a session (odd i), while it opens one
            write = asyncio.ensure_future(kv.put("k", i))
            await asyncio.sleep(0)
            write.cancel()
            await asyncio.gather(write, return_exceptions=True)
        await kv.put(f"k{i % 3}", i)
        assert await kv.get(f"k{i % 3}") == i
        if i % 3 == 0:
            watch = kv.watch("default")
            await watch.start()
            if i % 2:
                await kv.put("w", i)
                assert (await anext(watch)).value == i
            await watch.aclose()
        await kv.close()
    for i in range(4):  # feeds that wait for a change that does not come
        kv = await KVClient.connect(addresses, session=False)
        feed = kv.client.listen(leader.status()["applied_index"] + 1)
        waiting = asyncio.ensure_future(anext(feed))
        await eventually(lambda: any(not waiter.done() for waiter in leader._feed_waiters))
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await kv.close()
    await eventually(lambda: members() == before)
    assert own_tasks() == set()
    await eventually(lambda: sockets() <= open_before)


async def test_commands_and_results_keyed_by_ints_cross_the_network(cluster: Cluster) -> None:
    """A command, query or result with int keys works on the leader; it must
    work through a follower and a client too. The request frames carrying it
    were refused as malformed: the connection closed (every request on it
    lost), and a client retried until its timeout, reporting that the write
    might have been applied."""
    peers = await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    assert await follower.write(["set", "f", {1: "a"}], timeout=10) == ["ok", "f", {1: "a"}]
    assert await follower.read(["get", "f"], timeout=10) == ["ok", {1: "a"}]
    client = await raftlib.connect([follower.address], timeout=10)
    try:
        assert await client.write(["set", "c", {2: {3.5: None}}]) == ["ok", "c", {2: {3.5: None}}]
        assert await client.read(["get", "c"]) == ["ok", {2: {3.5: None}}]
        async for change in client.listen():
            if change.command[1] == "c":
                assert change.result == ["ok", "c", {2: {3.5: None}}]
                break
    finally:
        await client.close()
    assert sum(p._transport.stats["protocol_errors"] for p in cluster.peers.values()) == 0


async def test_a_follower_refuses_to_forward_map_keys_the_leader_would_refuse(cluster: Cluster) -> None:
    """The leader takes commands with tuple map keys locally, but refuses a
    request frame carrying them and closes the connection: a follower
    forwarding one got ConnectionLost (outcome unknown, though nothing was
    applied), as did every other request in flight on its pooled
    connection, and a read was retried until its attempts ran out."""
    leader, follower = await _leader_and_follower(cluster)
    await follower.open_session("c1", timeout=10)
    last = leader.status()["last_index"]
    with pytest.raises(TypeError, match="cannot be forwarded to the leader"):
        await follower.write(["set", "t", {(1, 2): "x"}], timeout=10)
    with pytest.raises(TypeError, match="cannot be forwarded to the leader"):
        follower.submit(["set", "t", {(1, 2): "x"}])
    with pytest.raises(TypeError, match="cannot be forwarded to the leader"):
        await follower.session_write("c1", 1, ["set", "t", {(1, 2): "x"}], timeout=10)
    with pytest.raises(TypeError, match="cannot be forwarded to the leader"):
        await follower.read(["get", {(1, 2): "x"}], timeout=10)
    assert leader.status()["last_index"] == last
    assert await follower.write(["set", "t", {1: "x"}], timeout=10) == ["ok", "t", {1: "x"}]
    assert sum(p._transport.stats["protocol_errors"] for p in cluster.peers.values()) == 0


class TupleKeyedKV(KVStore):
    """Answers ``["tuple", key]`` writes and reads with a dict keyed by a tuple."""

    def handle_write(self, command: Any) -> Any:
        if command[0] == "tuple":
            self.applied.append(command)
            return {(1, 2): command[1]}
        return super().handle_write(command)

    def handle_read(self, query: Any) -> Any:
        return {(3, 4): query[1]} if query[0] == "tuple" else super().handle_read(query)


async def test_a_result_that_cannot_cross_the_network_is_refused_the_same_way_everywhere(cluster: Cluster) -> None:
    """A result with tuple map keys came back as a value from the leader, but
    as CommandFailed through a follower or a client (whose answer frame
    cannot carry it): now every writer and reader gets the same
    CommandFailed, naming what is wrong, and the write applies on every peer."""
    leader, follower = await _leader_and_follower(cluster, sm=TupleKeyedKV)
    said: list[str] = []
    write_said = r"result of handle_write .*a map key may not be a list or tuple.*applied on every peer"
    read_said = r"result of handle_read .*a map key may not be a list or tuple.*the read changed nothing"
    for name, peer in (("l", leader), ("f", follower)):
        with pytest.raises(errors.CommandFailed, match=write_said) as wrote:
            await peer.write(["tuple", name], timeout=10)
        await peer.open_session(f"session-{name}", timeout=10)
        with pytest.raises(errors.CommandFailed, match=write_said) as session_wrote:
            await peer.session_write(f"session-{name}", 1, ["tuple", name + "s"], timeout=10)
        said += [str(wrote.value), str(session_wrote.value)]
        for consistency in ("linearizable", "lease", "stale"):
            with pytest.raises(errors.CommandFailed, match=read_said) as read:
                await peer.read(["tuple", name], consistency=consistency, timeout=10)
            said.append(str(read.value))
    client = await raftlib.connect([follower.address], timeout=5)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(errors.CommandFailed, match=write_said) as wrote:
            await client.write(["tuple", "c"])
        with pytest.raises(errors.CommandFailed, match=read_said) as read:
            await client.read(["tuple", "c"])
        said += [str(wrote.value), str(read.value)]
        assert loop.time() - start < 2
        assert await client.write(["set", "a", 1]) == ["ok", "a", 1]
    finally:
        await client.close()
    assert len({text for text in said if "handle_write" in text}) == 1, said
    assert len({text for text in said if "handle_read" in text}) == 1, said
    for peer in cluster.peers.values():
        sm = peer.state_machine
        await eventually(lambda sm=sm: [c[1] for c in sm.applied if c[0] == "tuple"] == ["l", "ls", "f", "fs", "c"])
    assert sum(p._transport.stats["protocol_errors"] for p in cluster.peers.values()) == 0


async def test_a_change_that_cannot_cross_the_network_ends_the_feed_with_an_error(cluster: Cluster) -> None:
    """A change whose command has tuple map keys (written on the leader) made
    the client refuse the member's stream frame and drop the connection,
    failing the client's other calls with it; the feed then resumed at the
    same change, forever."""
    peers = await cluster.start(1)
    s1 = peers["s1"]
    client = await raftlib.connect([s1.address], timeout=10)
    try:
        await s1.write(["set", "a", 1])
        with pytest.raises(errors.CommandFailed, match="the write was applied"):
            await s1.write(["set", "t", {(1, 2): 3}])  # the result, ["ok", "t", {(1, 2): 3}], cannot be returned
        bad = s1.status()["last_index"]
        await s1.write(["set", "b", 2])
        seen: list[Any] = []
        with pytest.raises(errors.ProtocolError, match=f"index {bad} cannot be sent.*listen from {bad + 1} to go"):
            async with asyncio.timeout(5):
                async for change in client.listen():
                    seen.append(change.command)
        assert seen == [["set", "a", 1]]
        async for change in client.listen(from_index=bad + 1):
            assert change.command == ["set", "b", 2]
            break
        assert await client.write(["set", "c", 3]) == ["ok", "c", 3]
    finally:
        await client.close()
    assert s1._transport.stats["protocol_errors"] == 0


async def test_a_client_refuses_map_keys_the_members_would_refuse_before_sending(cluster: Cluster) -> None:
    """Members accept scalar map keys only and close a connection that sends
    another; the client retried such a write until its timeout and reported
    that it might have been applied, although no member ever took it."""
    peers = await cluster.start(1)
    client = await raftlib.connect([peers["s1"].address], timeout=2)
    try:
        with pytest.raises(TypeError, match="map keys must be") as refused:
            await client.write(["set", "t", {(1, 2): "tuple key"}])
        assert "a map key may not be a list or tuple" in str(refused.value)  # the key the caller wrote
        with pytest.raises(TypeError, match="map keys must be"):
            await client.read(["get", {"nested": {(3,): 4}}])
        assert await client.write(["set", "k", {1: {None: [1.5]}}]) == ["ok", "k", {1: {None: [1.5]}}]
        assert [c[1] for c in peers["s1"].state_machine.applied] == ["k"]
    finally:
        await client.close()


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


async def test_a_client_refuses_values_nested_too_deep_for_a_frame_before_sending(cluster: Cluster) -> None:
    """A value nested just under msgpack's limit of 1,024 levels encodes, but
    not inside the few levels of a request frame: the member closed the
    connection, and the client retried until its timeout and reported that
    the write might have been applied, although no member ever took it."""
    peers = await cluster.start(1)
    client = await raftlib.connect([peers["s1"].address], timeout=2)
    try:
        for depth in (1021, 1022):
            with pytest.raises(TypeError, match="nested too deep"):
                await client.write(["set", "deep", _nested(depth)])
            with pytest.raises(TypeError, match="nested too deep"):
                await client.read(["get", _nested(depth)])
        deepest = _nested(1020)  # with the command's own list and a frame's 3 levels: 1,024
        result = await client.write(["set", "ok", deepest])
        assert codec.pack(result) == codec.pack(["ok", "ok", deepest])
        assert [c[1] for c in peers["s1"].state_machine.applied] == ["ok"]
    finally:
        await client.close()
    assert peers["s1"]._transport.stats["protocol_errors"] == 0


class _DeepResultKV(KVStore):
    def handle_write(self, command: Any) -> Any:
        if command[0] == "deep":
            self.applied.append(command)
            return _nested(1023)
        return super().handle_write(command)


async def test_a_result_nested_too_deep_for_a_frame_is_a_command_failed(cluster: Cluster) -> None:
    """The client could not decode such an answer: it dropped the connection
    and retried, and the write, applied once, ended as a WriteTimeout."""
    peer = (await cluster.start(1, sm=_DeepResultKV))["s1"]
    client = await raftlib.connect([peer.address], timeout=5)
    try:
        with pytest.raises(errors.CommandFailed, match="nested too deep.*the write was applied"):
            await client.write(["deep"])
        assert await client.write(["set", "after", 1]) == ["ok", "after", 1]
        assert [c[0] for c in peer.state_machine.applied] == ["deep", "set"]
    finally:
        await client.close()


async def _gated_leader(cluster: Cluster) -> tuple[raftlib.Peer, GatedKV]:
    """A two-peer cluster whose leader, s2, applies through a GatedKV."""
    await cluster.start(1)
    peer = await cluster.start_peer("s2", sm=GatedKV)
    await cluster.peers["s1"].add_member("s2", peer.address)
    await cluster.peers["s1"].transfer_leadership("s2")
    await eventually(lambda: peer.is_leader)
    sm: GatedKV = peer.state_machine  # type: ignore[assignment]
    return peer, sm


async def test_client_retry_after_a_lost_connection_applies_once(cluster: Cluster) -> None:
    peer, sm = await _gated_leader(cluster)
    client = await raftlib.connect([peer.address], timeout=10)
    try:
        write = asyncio.ensure_future(client.write(["slow", "x", 7]))
        await asyncio.wait_for(sm.entered.wait(), 5)
        assert client._conn is not None
        await client._conn.close()  # the answer can no longer come back on it
        await asyncio.sleep(0.1)
        sm.gate.set()
        assert await write == ["ok", "x", 7]
        assert sm.applied.count(["set", "x", 7]) == 1
    finally:
        await client.close()


async def test_a_client_leaves_a_member_cut_off_from_the_leader(cluster: Cluster) -> None:
    """A member that knows no leader answers NotLeader without a hint, or
    times out waiting for one; the client kept sending to it (and
    reconnected to it first) until its timeout, although the other members
    had elected a leader."""
    peers = await cluster.start(3)
    client = await raftlib.connect([p.address for p in peers.values()], timeout=5)
    try:
        await client.write(["set", "a", 0])
        old = await cluster.leader()
        assert client.leader_address == old.address
        cluster.isolate(old.name)
        new = await eventually(lambda: next((p for p in peers.values() if p.is_leader and p is not old), None))
        await eventually(lambda: old.leader is None)
        assert await client.write(["set", "a", 1]) == ["ok", "a", 1]
        assert await client.read(["get", "a"]) == ["ok", 1]
        assert client.leader_address == new.address
        assert new.state_machine.applied.count(["set", "a", 1]) == 1
    finally:
        await client.close()


async def test_calls_in_flight_when_the_client_closes_end_without_reconnecting(cluster: Cluster) -> None:
    """close() dropped the connection under calls still running, and they
    carried on: a write reconnected (a connection nothing would close), found
    its session closed and retried until its timeout, and a change feed
    kept reconnecting for the client's whole timeout."""
    peer, sm = await _gated_leader(cluster)
    client = await raftlib.connect([peer.address], timeout=10)
    session = client.client_id

    async def follow() -> None:
        async for _ in client.listen():
            pass

    loop = asyncio.get_running_loop()
    feed = asyncio.ensure_future(follow())
    write = asyncio.ensure_future(client.write(["slow", "x", 7]))
    try:
        await asyncio.wait_for(sm.entered.wait(), 5)
        await client.close()
        start = loop.time()
        with pytest.raises(errors.OutcomeUnknown, match="closed while write 1 was in flight"):
            await write  # sent, not answered: it may have been applied
        with pytest.raises(errors.PeerStopped, match="closed"):
            await feed
        assert loop.time() - start < 2
        assert client._conn is None
        assert not [t for t in asyncio.all_tasks() if t.get_name() == f"raftlib-rpc-{peer.address}"]
        with pytest.raises(errors.PeerStopped, match="closed"):
            await client.write(["set", "y", 1])
    finally:
        sm.gate.set()
        write.cancel()
        feed.cancel()
        await asyncio.gather(write, feed, return_exceptions=True)
        await client.close()
    await eventually(lambda: sm.applied.count(["set", "x", 7]) == 1 and session not in peer._sessions)
    assert len(peer._sessions) == 0  # no new session was opened after close()


async def test_a_client_that_cannot_reach_the_leader_stays_with_a_member_that_forwards(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Members may advertise addresses that only they can reach (behind NAT,
    in containers). A client told the leader is at one tried to move there
    before every call, paying a connect timeout each time (all of a
    shorter call timeout)."""
    from raftlib.rpc import RpcConnection

    leader, follower = await _leader_and_follower(cluster)
    real_open = RpcConnection.open.__func__  # type: ignore[attr-defined]
    tried: list[str] = []

    async def open_(cls: Any, address: str, **kwargs: Any) -> RpcConnection:
        if kwargs.get("name") is None and address == leader.address:  # the client's, to the leader
            tried.append(address)
            await asyncio.sleep(kwargs["timeout"])
            raise errors.Unavailable(f"cannot connect to {address}: timed out")
        conn: RpcConnection = await real_open(cls, address, **kwargs)
        return conn

    monkeypatch.setattr(RpcConnection, "open", classmethod(open_))
    client = await raftlib.connect([follower.address], timeout=10, connect_timeout=0.5)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(5):
            assert await client.write(["set", "a", i], timeout=2) == ["ok", "a", i]
        assert await client.read(["get", "a"], timeout=0.4) == ["ok", 4]
        assert len(tried) == 1
        assert loop.time() - start < 2
    finally:
        await client.close()


async def test_a_call_does_not_wait_past_its_timeout_for_another_to_reconnect(cluster: Cluster) -> None:
    """Calls share one connection, opened by one of them at a time. A call
    with a short timeout waited for the one reconnecting, however long that
    one's own timeout allowed it to try."""
    peers = await cluster.start(1)
    client = await raftlib.connect([peers["s1"].address], timeout=10)
    try:
        await peers["s1"].stop()
        loop = asyncio.get_running_loop()

        async def timed(call: Any) -> float:
            start = loop.time()
            with pytest.raises(errors.Unavailable):
                await call
            return loop.time() - start

        long, short, read = await asyncio.gather(
            timed(client.write(["set", "a", 1], timeout=3)),
            timed(client.write(["set", "b", 1], timeout=0.3)),
            timed(client.read(["get", "b"], timeout=0.3)),
        )
        assert long >= 3 and short < 1.5 and read < 1.5
    finally:
        await client.close()


async def test_client_calls_end_at_their_timeout_when_the_member_never_answers(cluster: Cluster) -> None:
    """A call waited a second more than its timeout for a member's answer,
    counted from after any reconnection, so a member that never answered
    held it well past its timeout."""
    peers = await cluster.start(1)
    s1 = peers["s1"]
    client = await raftlib.connect([s1.address], timeout=10)
    try:

        async def hung(body: Any, conn: Any) -> None:
            return None  # read, never answered

        s1._requests.on_request = hung  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(errors.WriteTimeout):
            await client.write(["set", "a", 1], timeout=0.5)
        assert loop.time() - start < 0.9
        start = loop.time()
        with pytest.raises(errors.Unavailable):
            await client.read(["get", "a"], timeout=0.5)
        assert loop.time() - start < 0.9
    finally:
        await client.close()


async def test_a_cancelled_close_still_closes_the_connection(cluster: Cluster) -> None:
    """close() cancelled while it closed the session (an ``async with`` left
    by a cancelled task) left the connection open, and a second close()
    returned at once without closing it."""
    peers = await cluster.start(1)
    client = await raftlib.connect([peers["s1"].address], timeout=10)
    conn = client._conn
    assert conn is not None
    closing = asyncio.ensure_future(client.close())
    await asyncio.sleep(0)  # now waiting for the session to close
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await client.close()
    assert conn.closed and client._conn is None
    assert not [t for t in asyncio.all_tasks() if t.get_name() == f"raftlib-rpc-{peers['s1'].address}"]


async def test_client_follows_a_leader_change_and_its_feed_has_no_gaps(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    client = await raftlib.connect([p.address for p in peers.values()], timeout=10)
    seen: list[raftlib.Change] = []

    async def consume() -> None:
        async for change in client.listen():
            seen.append(change)

    task = asyncio.ensure_future(consume())
    try:
        for i in range(10):
            await client.write(["set", "k", i])
        old = await cluster.leader()
        await old.stop()
        for i in range(10, 20):
            await client.write(["set", "k", i])
        await eventually(lambda: len(seen) >= 20)
        assert [c.command[2] for c in seen] == list(range(20))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def test_a_client_feed_leaves_a_member_cut_off_from_the_cluster(cluster: Cluster) -> None:
    """A member cut off from the others applies nothing more, and a feed read
    from it stalled without an error while the cluster went on. Now the
    member ends the stream once it has known no leader for two election
    timeouts, and the client resumes the feed at a member that knows one."""
    peers = await cluster.start(3)
    old = await cluster.leader()
    others = [p for p in peers.values() if p is not old]
    client = await raftlib.connect([old.address] + [p.address for p in others], timeout=10)
    seen: list[Any] = []

    async def consume() -> None:
        async for change in client.listen():
            seen.append(change.command)

    task = asyncio.ensure_future(consume())
    try:
        await client.write(["set", "k", 0])
        await eventually(lambda: seen == [["set", "k", 0]])
        idle_connection = client._conn
        cluster.isolate(old.name)  # the feed is read from it (the leader, first in the list)
        new = await eventually(lambda: next((p for p in others if p.is_leader), None))
        await new.write(["set", "k", 1])
        await eventually(lambda: len(seen) == 2)
        assert seen == [["set", "k", 0], ["set", "k", 1]]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def test_peer_listen_can_require_a_leader(cluster: Cluster) -> None:
    """``require_leader=True`` ends an idle feed with Unavailable once the
    peer has known no leader for two election timeouts; by default a feed
    waits as long as it takes."""
    peers = await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    await leader.write(["set", "k", 0])
    await eventually(lambda: follower.status()["applied_index"] >= leader.status()["commit_index"])
    cluster.isolate(follower.name)

    async def drain(feed: Any) -> list[Any]:
        return [change.command async for change in feed]

    with pytest.raises(errors.Unavailable, match="knows no leader"):
        await asyncio.wait_for(drain(follower.listen(require_leader=True)), 10)
    patient = asyncio.ensure_future(drain(follower.listen()))
    await asyncio.sleep(1.0)  # many election timeouts of FAST
    assert not patient.done()
    patient.cancel()
    await asyncio.gather(patient, return_exceptions=True)


@pytest.mark.parametrize("cancelled", [False, True], ids=["waiting", "cancelled"])
@pytest.mark.parametrize("require_leader", [True, False])
async def test_a_listener_of_a_peer_that_stops_leaves_nothing_unretrieved(
    cluster: Cluster, require_leader: bool, cancelled: bool
) -> None:
    """A feed waiting for the next change when its peer stops ends with
    PeerStopped; one cancelled while it waited (as a member's stream to a
    closed watch is) is gone. Either way stop() leaves no "Future exception
    was never retrieved" behind."""
    peers = await cluster.start(1)
    peer = next(iter(peers.values()))
    await cluster.leader()
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        seen: list[Any] = []

        async def drain() -> None:
            async for change in peer.listen(require_leader=require_leader):
                seen.append(change.command)

        task = asyncio.ensure_future(drain())
        await peer.write(["set", "k", 0])
        await eventually(lambda: len(seen) == 1)
        if cancelled:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await peer.stop()
        if not cancelled:
            with pytest.raises(errors.PeerStopped):
                await task
        del task
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert [c.get("message") for c in reported] == []


async def test_feeds_closed_on_a_quiet_cluster_leave_nothing_waiting(cluster: Cluster) -> None:
    """Feeds that wait for a change and are closed before one comes, in the
    peer's process or through a client, leave nothing waiting on the member:
    a quiet cluster that watchers keep coming to and leaving does not grow."""
    await cluster.start(3)
    leader = await cluster.leader()
    await leader.write(["set", "k", 0])
    after = leader.status()["applied_index"] + 1

    def one_waiting() -> bool:
        return any(not waiter.done() for waiter in leader._feed_waiters)

    async def open_and_drop(feed: AsyncIterator[Any]) -> None:
        waiting = asyncio.ensure_future(anext(feed))
        await eventually(one_waiting)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await feed.aclose()  # type: ignore[attr-defined]

    for require_leader in (False, True):
        for _ in range(20):
            await open_and_drop(leader.listen(after, require_leader=require_leader))
    assert len(leader._feed_waiters) == 0
    async with await raftlib.connect([leader.address]) as client:
        for _ in range(20):
            await open_and_drop(client.listen(after))
        await eventually(lambda: not leader._requests._tasks)  # the member ended every feed
    assert len(leader._feed_waiters) == 0


async def test_a_client_listener_that_falls_far_behind_resumes_where_it_stopped(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member stops a stream whose reader is STREAM_QUEUE_LIMIT items behind;
    the client asks again from the next index instead of ending the feed."""
    monkeypatch.setattr(raftlib.rpc, "STREAM_QUEUE_LIMIT", 5)
    peers = await cluster.start(1)
    s1 = peers["s1"]
    client = await raftlib.connect([s1.address], timeout=10)
    feed = aiter(client.listen())
    try:
        await s1.write(["set", "k", 0])
        first = await asyncio.wait_for(anext(feed), 5)
        conn = client._conn
        assert conn is not None
        for i in range(1, 21):
            await s1.write(["set", "k", i])
        await eventually(lambda: not conn._streams)  # the member's stream was stopped
        rest = [await asyncio.wait_for(anext(feed), 5) for _ in range(20)]
        assert [c.command[2] for c in [first, *rest]] == list(range(21))
        indexes = [c.index for c in [first, *rest]]
        assert indexes == sorted(set(indexes))
    finally:
        await feed.aclose()  # type: ignore[attr-defined]
        await client.close()


async def test_a_call_with_no_time_left_says_so(cluster: Cluster) -> None:
    """A timeout of 0 sends nothing; the error said only "no leader could
    take it in time (last error: None)". (A negative one is a ConfigError.)"""
    peers = await cluster.start(1)
    client = await raftlib.connect([peers["s1"].address], timeout=10)
    try:
        with pytest.raises(errors.Unavailable, match="not applied: its timeout ran out before it could be sent"):
            await client.write(["set", "a", 1], timeout=0)
        with pytest.raises(errors.Unavailable, match="not sent: its timeout ran out first"):
            await client.read(["get", "a"], timeout=0)
        assert await client.write(["set", "a", 2]) == ["ok", "a", 2]
    finally:
        await client.close()
    assert peers["s1"].state_machine.applied == [["set", "a", 2]]


async def test_a_listener_refused_as_overloaded_backs_off(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member refuses requests beyond MAX_REQUESTS_PER_CONNECTION with
    Overloaded; a client's feed asked again at once, thousands of times a
    second, for as long as the member stayed overloaded."""
    from raftlib import serving

    monkeypatch.setattr(serving, "MAX_REQUESTS_PER_CONNECTION", 3)
    peers = await cluster.start(1, sm=GatedKV)
    s1 = peers["s1"]
    sm: GatedKV = s1.state_machine  # type: ignore[assignment]
    client = await raftlib.connect([s1.address], timeout=10)
    writes = [asyncio.ensure_future(client.write(["slow", f"k{i}", i])) for i in range(3)]
    feed = aiter(client.listen())
    first = asyncio.ensure_future(anext(feed))
    try:
        await asyncio.wait_for(sm.entered.wait(), 5)
        requests = 0
        serve = s1._requests.on_request

        async def counted(body: Any, conn: Any) -> None:
            nonlocal requests
            requests += 1
            await serve(body, conn)

        s1._requests.on_request = counted  # type: ignore[method-assign]
        await asyncio.sleep(0.5)
        assert requests < 50
        sm.gate.set()
        assert (await asyncio.wait_for(first, 5)).command == ["slow", "k0", 0]
        await asyncio.gather(*writes)
    finally:
        sm.gate.set()
        for task in (first, *writes):
            task.cancel()
        await asyncio.gather(first, *writes, return_exceptions=True)
        await feed.aclose()  # type: ignore[attr-defined]
        await client.close()


async def test_connect_errors() -> None:
    with pytest.raises(errors.ConfigError):
        await raftlib.connect([])
    with pytest.raises(errors.ConfigError):
        await raftlib.connect(["no-port"])
    with pytest.raises(errors.Unavailable):
        await raftlib.connect(["127.0.0.1:9"], timeout=0.3)


@pytest.mark.parametrize("size", [0, -1, "64MiB", 10])
async def test_connect_refuses_a_bad_max_frame_size(cluster: Cluster, size: Any) -> None:
    """A max_frame_size that is not a positive int raised a bare ValueError
    from deep inside (leaving the socket it had opened), and one too small
    for any answer made the client retry until its timeout."""
    peers = await cluster.start(1)
    with pytest.raises(errors.ConfigError, match="max_frame_size"):
        await raftlib.connect([peers["s1"].address], timeout=2, max_frame_size=size)


async def _answers_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(60)


async def _sends_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"\xff" * 64)
    await writer.drain()
    await asyncio.sleep(60)


async def _never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(60)


@pytest.mark.parametrize("impostor", [_answers_http, _sends_garbage, _never_answers])
async def test_connect_skips_addresses_that_accept_connections_but_are_not_members(
    cluster: Cluster, impostor: Any
) -> None:
    """An address in the list that accepts TCP connections but does not answer
    as a member (another service, a hung process) was used anyway: the
    client kept reconnecting to it, first in the list, and never tried the
    member after it."""
    from clusterkit import fake_server

    peers = await cluster.start(1)
    loop = asyncio.get_running_loop()
    async with fake_server(impostor) as address:
        start = loop.time()
        client = await raftlib.connect([address, peers["s1"].address], timeout=5, connect_timeout=0.5)
        try:
            assert await client.write(["set", "a", 1]) == ["ok", "a", 1]
        finally:
            await client.close()
        assert loop.time() - start < 3
        start = loop.time()
        with pytest.raises(errors.Unavailable, match="did not answer as a raftlib member"):
            await raftlib.connect([address], timeout=1, connect_timeout=0.5)
        assert loop.time() - start < 2  # not a wait past the timeout


async def test_a_client_tries_a_member_that_did_not_answer_last_when_it_reconnects(cluster: Cluster) -> None:
    """A member that takes connections and never answers (a stopped process)
    was asked again first every time the client had to find the leader
    anew, costing connect_timeout after each leader change."""
    from clusterkit import fake_server

    accepted = 0

    async def hung(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await asyncio.sleep(60)

    peers = await cluster.start(3)
    async with fake_server(hung) as address:
        client = await raftlib.connect([address, *(p.address for p in peers.values())], timeout=20,
                                       connect_timeout=0.5)
        try:
            await client.write(["set", "a", 1])
            assert accepted == 1
            for name in ("first", "second"):  # each time the leader goes, the client looks for the next one
                leader = await cluster.leader()
                await leader.stop(transfer_leadership=False)
                await cluster.start_peer(leader.name)
                assert await client.write(["set", name, 1]) == ["ok", name, 1]
            assert accepted == 1
        finally:
            await client.close()


async def test_forwarding_without_a_reachable_leader_ends_in_a_clear_error(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    for p in peers.values():
        if p is not follower:
            await p.stop(transfer_leadership=False)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises((errors.NotLeader, errors.Unavailable)):
        await follower.write(["set", "a", 1])
    with pytest.raises((errors.NotLeader, errors.Unavailable)):
        await follower.read(["get", "a"])
    assert loop.time() - start < 30  # bounded, not a hang
    assert "a" not in follower.state_machine.data


async def test_a_forwarded_request_ends_at_its_timeout_when_the_leader_never_answers(cluster: Cluster) -> None:
    """A follower waited for the leader's answer to a forwarded request with
    no limit of its own, trusting the leader to answer within the timeout
    it passed on: a hung leader held the caller forever."""
    leader, follower = await _leader_and_follower(cluster)

    async def hung(body: Any, conn: Any) -> None:
        return None  # read, never answered

    leader._requests.on_request = hung  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(errors.WriteTimeout, match="may still be applied"):
        await follower.write(["set", "a", 1], timeout=0.5)
    with pytest.raises(errors.WriteTimeout):
        await follower.session_write("c", 1, ["set", "a", 1], timeout=0.5)
    with pytest.raises(errors.Timeout):
        await follower.read(["get", "a"], timeout=0.5)
    with pytest.raises(errors.Timeout):
        await follower.open_session("c", timeout=0.5)
    assert loop.time() - start < 5  # four calls of 0.5 s each


async def test_a_request_forwarded_too_often_is_refused(cluster: Cluster) -> None:
    from raftlib.rpc import RpcConnection

    leader, follower = await _leader_and_follower(cluster)
    conn = await RpcConnection.open(follower.address)
    try:
        with pytest.raises(errors.NotLeader) as info:
            await conn.call("write", {"command": ["set", "a", 1], "hops": 2})
        assert info.value.leader == leader.name
        assert await conn.call("write", {"command": ["set", "a", 1], "hops": 1}) == ["ok", "a", 1]
    finally:
        await conn.close()


async def test_a_forwarded_request_with_a_nan_timeout_is_refused(cluster: Cluster) -> None:
    from raftlib.rpc import RpcConnection

    leader, follower = await _leader_and_follower(cluster)
    last = leader.status()["last_index"]
    conn = await RpcConnection.open(follower.address)
    try:
        for op, args in [("write", {"command": ["set", "a", 1]}), ("read", {"query": ["get", "a"]}),
                         ("close_session", {"client": "c"})]:
            with pytest.raises(errors.ConfigError, match="timeout must be a number"):
                await conn.call(op, {**args, "timeout": float("nan")}, timeout=5)
    finally:
        await conn.close()
    assert leader.status()["last_index"] == last


async def test_a_lease_read_on_a_late_clock_takes_a_heartbeat_round(cluster: Cluster) -> None:
    """The lease is counted in ticks, which stop while the event loop is
    blocked: a read that finds the core's clock behind must not trust it."""
    await cluster.start(3)
    leader = await cluster.leader()
    await leader.write(["set", "a", 1])
    rounds: list[int] = []
    real = leader._core.read_index
    leader._core.read_index = lambda rid: (rounds.append(rid), real(rid))[1]  # type: ignore[method-assign]
    await eventually(lambda: leader._core.lease_read_index() is not None)
    rounds.clear()
    leader._last_tick_at -= 10.0  # as if the loop had been blocked for 10 s
    assert await leader.read(["get", "a"], consistency="lease") == ["ok", 1]
    assert rounds, "a lease read trusted a stale clock"


# -- connection limits --------------------------------------------------------------------


async def _stranger_holding_a_slot(address: str, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that introduces itself as ``name``, asks for the status,
    waits for the answer (it holds a slot) or for the connection to close
    (refused), and goes silent."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(encode_frame("Hello", [name, ""]) + encode_frame("Request", [1, "status", {}]))
    with contextlib.suppress(ConnectionError):
        await reader.read(1)
    return reader, writer


Streams = list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]


@contextlib.asynccontextmanager
async def _one_peer_and_a_client(tmp_path: Any, limit: int, sm: Any = KVStore) -> AsyncIterator[
    tuple[raftlib.Peer, raftlib.Client, Streams]
]:
    """A one-member cluster serving ``limit`` connections, a client connected
    to it, and a list for the strangers the test opens; all closed on exit."""
    cluster = Cluster(tmp_path, config=dataclasses.replace(FAST, max_inbound_connections=limit))
    strangers: Streams = []
    client: raftlib.Client | None = None
    try:
        peer = (await cluster.start(1, sm=sm))["s1"]
        client = await raftlib.connect([peer.address], timeout=10)
        yield peer, client, strangers
    finally:
        if client is not None:
            await client.close()
        for _, writer in strangers:
            writer.close()
        await cluster.close()


async def _collect_changes(client: raftlib.Client, seen: list[Any]) -> None:
    """Append the command of every change ``client.listen()`` yields to ``seen``."""
    async for change in client.listen():
        seen.append(change.command)


async def _fill_the_slots(peer: raftlib.Peer, count: int, strangers: Streams) -> None:
    """``count`` silent strangers, one after the other, until the peer has evicted one connection."""
    for i in range(count):
        strangers.append(await _stranger_holding_a_slot(peer.address, f"idle{i}"))
    await eventually(lambda: peer._transport.stats["evicted"] == 1)


async def test_idle_strangers_holding_every_slot_lock_out_neither_clients_nor_members(tmp_path: Any) -> None:
    """A stranger that introduces itself on every connection slot of every
    member and goes silent: a new client is served, a member that restarts
    is heard by the leader again, a client idle since before goes on,
    reconnecting as its connection made room, and a client with a change
    feed open keeps its connection (the feed is in progress)."""
    limit = 6
    cluster = Cluster(tmp_path, config=dataclasses.replace(FAST, max_inbound_connections=limit))
    strangers: list[asyncio.StreamWriter] = []
    clients: list[raftlib.Client] = []
    seen: list[Any] = []
    feed: asyncio.Future[None] | None = None
    try:
        peers = await cluster.start(3)
        leader = await cluster.leader()
        client = await raftlib.connect([p.address for p in peers.values()], timeout=10)
        clients.append(client)
        idler = await raftlib.connect([p.address for p in peers.values()], timeout=10)
        clients.append(idler)
        await idler.write(["set", "idle", 0])
        idle_connection = idler._conn

        async def consume() -> None:
            async for change in client.listen():
                seen.append(change.command)

        feed = asyncio.ensure_future(consume())
        await client.write(["set", "k", 0])
        await eventually(lambda: seen == [["set", "idle", 0], ["set", "k", 0]])
        feed_connection = client._conn

        for peer in peers.values():
            for i in range(limit + 2):
                _, writer = await _stranger_holding_a_slot(peer.address, f"idle{i}")
                strangers.append(writer)

        newcomer = await raftlib.connect([p.address for p in peers.values()], timeout=5)
        clients.append(newcomer)
        assert await newcomer.write(["set", "new", 1]) == ["ok", "new", 1]

        assert await idler.write(["set", "idle", 1]) == ["ok", "idle", 1]
        assert idler._conn is not idle_connection  # it made room, and the client reconnected
        await client.write(["set", "k", 1])
        await eventually(lambda: seen == [["set", "idle", 0], ["set", "k", 0], ["set", "new", 1], ["set", "idle", 1],
                                          ["set", "k", 1]])  # no gap, no repeat
        assert client._conn is feed_connection  # strangers made room before it

        follower = next(p for p in peers.values() if p is not leader)
        await follower.stop()
        restarted = await raftlib.start_peer(KVStore, name=follower.name, address=follower.address,
                                             storage=follower._storage, config=cluster.config)
        cluster.peers[follower.name] = restarted
        await leader.write(["set", "after", 1])
        last = leader.status()["last_index"]
        await eventually(lambda: leader.status()["members"][follower.name].get("match_index") == last)
    finally:
        if feed is not None:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
        for c in clients:
            await c.close()
        for writer in strangers:
            writer.close()
        await cluster.close()


async def test_a_client_with_an_open_change_feed_keeps_its_connection_when_strangers_need_room(tmp_path: Any) -> None:
    """The feed has sent nothing for longer than any stranger, but it is in
    progress: a stranger with nothing in progress makes room instead."""
    limit = 3
    seen: list[Any] = []
    async with _one_peer_and_a_client(tmp_path, limit) as (peer, client, strangers):
        feed = asyncio.ensure_future(_collect_changes(client, seen))
        try:
            await client.write(["set", "k", 0])
            await eventually(lambda: seen == [["set", "k", 0]])
            connection = client._conn
            assert connection is not None

            await _fill_the_slots(peer, limit, strangers)  # one more than the free slots
            reader, _ = strangers[0]
            await asyncio.wait_for(reader.read(), 5)  # the first stranger made room: its connection ends

            await client.write(["set", "k", 1])
            await eventually(lambda: seen == [["set", "k", 0], ["set", "k", 1]])
            assert client._conn is connection and not connection.closed
            assert peer._transport.stats["evicted"] == 1
        finally:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)


async def test_a_client_waiting_for_a_slow_write_keeps_its_connection_when_strangers_need_room(tmp_path: Any) -> None:
    limit = 3
    async with _one_peer_and_a_client(tmp_path, limit, sm=GatedKV) as (peer, client, strangers):
        sm = peer.state_machine
        assert isinstance(sm, GatedKV)
        await client.write(["set", "k", 0])
        connection = client._conn
        assert connection is not None
        write = asyncio.ensure_future(client.write(["slow", "k", 1]))
        try:
            await sm.entered.wait()
            await _fill_the_slots(peer, limit, strangers)
            reader, _ = strangers[0]
            await asyncio.wait_for(reader.read(), 5)  # the first stranger made room: its connection ends

            sm.gate.set()
            assert await write == ["ok", "k", 1]
            assert client._conn is connection and not connection.closed
            assert peer._transport.stats["evicted"] == 1
        finally:
            sm.gate.set()
            write.cancel()
            await asyncio.gather(write, return_exceptions=True)


async def test_connect_with_one_address_as_a_str_says_to_pass_a_list() -> None:
    """A str is a sequence of characters, not of addresses: the error says what to pass."""
    with pytest.raises(errors.ConfigError, match=r"a list of member addresses, not a str: \['127.0.0.1:1'\]"):
        await raftlib.connect("127.0.0.1:1")  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigError, match="at least one member address"):
        await raftlib.connect([])


async def test_a_change_larger_than_a_frame_ends_a_client_feed_naming_the_index_to_go_past() -> None:
    """A result that fits its own answer can still make its change (command
    and result together) larger than a frame: the feed ends there with
    ProtocolError, as for a change too deep, instead of the client
    reconnecting to the same change over and over."""
    from storage_adapters import MemoryStorage

    frame = 1 << 20

    class Echo(raftlib.StateMachine):
        def handle_write(self, command: Any) -> Any:
            return command

        def handle_read(self, query: Any) -> Any:
            return None

    config = dataclasses.replace(FAST, max_frame_size=frame, max_command_size=frame // 2,
                                 max_bytes_per_message=frame // 2, snapshot_chunk_size=frame // 2)
    peer = await raftlib.start_peer(Echo, name="s1", address="127.0.0.1:0", storage=MemoryStorage(), config=config)
    try:
        await peer.set_configuration({"s1": peer.address})
        async with await raftlib.connect([peer.address], timeout=10, max_frame_size=frame) as client:
            big = b"x" * (frame // 2 - 64)
            assert await client.write(big) == big
            index = peer.status()["applied_index"]
            await client.write(b"small")
            with pytest.raises(errors.ProtocolError, match=rf"index {index} .*max_frame_size.*listen from {index + 1}"):
                async for _ in client.listen():
                    pass
            seen = []
            async for change in client.listen(index + 1):
                seen.append(change.command)
                break
            assert seen == [b"small"]
    finally:
        await peer.stop()


async def test_a_client_that_never_reads_its_answers_holds_little_of_the_members_memory(cluster: Cluster) -> None:
    """Each request on a connection wrote its answer to the connection's
    buffer before waiting for room: a client sending requests and reading
    nothing made the member buffer an answer for every request it allows
    outstanding (MAX_REQUESTS_PER_CONNECTION, each up to a frame), some
    100 MiB for reads of a 100 KiB value, on each of its connections. The
    answers now wait for room before they are written."""
    import socket

    from raftlib import serving

    peers = await cluster.start(1)
    s1 = peers["s1"]
    value = "v" * 16 * 1024
    await s1.write(["set", "big", value])
    host, port = s1.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        writer.write(encode_frame("Hello", ["reads-nothing", ""]))
        [conn] = await eventually(
            lambda: [c for c in s1._transport._inbound.values() if c.peer_name == "reads-nothing"])
        # A small kernel buffer, which otherwise takes in megabytes of answers.
        conn._writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for rid in range(serving.MAX_REQUESTS_PER_CONNECTION + 1000):
            writer.write(encode_frame("Request", [rid, "read", {"query": ["get", "big"]}]))
        # Hundreds of answers are waiting to go out.
        await eventually(lambda: len(getattr(conn, "_raftlib_requests", ())) > 500)
        await asyncio.sleep(0.2)  # time to write what they would
        buffered = conn._writer.transport.get_write_buffer_size()
        assert buffered < 8 * len(value), buffered  # a few answers, not a thousand
        assert await s1.read(["get", "big"]) == ["ok", value]  # the member serves the others
    finally:
        writer.close()
    await eventually(lambda: not s1._requests._tasks)  # and lets go of them all when it goes


# -- one connection shared by many calls ---------------------------------------------------


@pytest.mark.parametrize("call", ["write", "read", "status", "listen"])
async def test_a_call_that_fails_on_a_replaced_connection_leaves_the_new_one_alone(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """A call whose connection failed closed the client's connection, even
    when another call had replaced it already: the calls in flight on the
    new one lost it too and started over."""
    peers = await cluster.start(1, sm=GatedKV)
    (peer,) = peers.values()
    sm: GatedKV = peer.state_machine  # type: ignore[assignment]
    client = await raftlib.connect([peer.address], timeout=10)
    tasks: list[asyncio.Future[Any]] = []
    try:
        old = client._conn
        assert old is not None
        on_old, lose_old = asyncio.Event(), asyncio.Event()

        async def lost(*args: Any, **kwargs: Any) -> Any:
            on_old.set()
            await lose_old.wait()
            raise errors.ConnectionLost("the connection dropped")

        async def lost_stream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            await lost()
            yield  # pragma: no cover

        monkeypatch.setattr(old, "call", lost)
        monkeypatch.setattr(old, "stream", lost_stream)
        # Know when the failed call makes its next request (on whichever connection).
        retried = asyncio.Event()
        real_call, real_stream = RpcConnection.call, RpcConnection.stream

        def note() -> None:
            if asyncio.current_task() is failing:
                retried.set()

        async def noted_call(self: RpcConnection, *args: Any, **kwargs: Any) -> Any:
            note()
            return await real_call(self, *args, **kwargs)

        def noted_stream(self: RpcConnection, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            note()
            return real_stream(self, *args, **kwargs)

        monkeypatch.setattr(RpcConnection, "call", noted_call)
        monkeypatch.setattr(RpcConnection, "stream", noted_stream)
        failing = asyncio.ensure_future({
            "write": lambda: client.write(["set", "a", 1]),
            "read": lambda: client.read(["get", "a"]),
            "status": client.status,
            "listen": lambda: first_change(client),
        }[call]())
        tasks.append(failing)
        await asyncio.wait_for(on_old.wait(), 5)
        client._conn_to_replace = True  # as after a NotLeader naming another member: the next call reconnects
        slow = asyncio.ensure_future(client.write(["slow", "x", 1]))
        tasks.append(slow)
        await asyncio.wait_for(sm.entered.wait(), 5)
        new = client._conn
        assert new is not None and new is not old
        lose_old.set()
        await asyncio.wait_for(retried.wait(), 5)
        assert client._conn is new and not new.closed
        sm.gate.set()
        assert await slow == ["ok", "x", 1]
        await failing
        assert client._conn is new and not new.closed
    finally:
        sm.gate.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
