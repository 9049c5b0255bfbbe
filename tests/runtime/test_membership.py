"""Membership changes of a running cluster over real TCP: join, leave,
learners, forwarding, removing the leader, and partitioned members."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import raftlib
from raftlib import errors

from clusterkit import FAST, Cluster, KVStore, eventually


class Writer:
    """A client that writes continuously to whoever leads, retrying on leader changes."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.acked: list[int] = []
        self.acked_at: list[float] = []
        self.unknown: list[int] = []
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while not self._stop:
            leaders = [p for p in self.cluster.live() if p.is_leader]
            if not leaders:
                await asyncio.sleep(0.005)
                continue
            try:
                await leaders[0].write(["set", f"k{n}", n], timeout=2)
            except (errors.NotLeader, errors.ProposalDropped, errors.PeerStopped):
                await asyncio.sleep(0.005)
                continue
            except errors.OutcomeUnknown:
                self.unknown.append(n)
            else:
                self.acked.append(n)
                self.acked_at.append(loop.time())
            n += 1

    async def stop(self) -> None:
        self._stop = True
        assert self._task is not None
        await self._task


def voters_everywhere(cluster: Cluster, names: set[str]) -> bool:
    return all(set(p.membership.voters) == names for p in cluster.live() if p.name in names)


async def check_all_acked(cluster: Cluster, writer: Writer, names: set[str]) -> None:
    """Every acknowledged write is applied on each of ``names``."""
    def done() -> bool:
        return all(
            all(f"k{n}" in cluster.peers[name].state_machine.data for n in writer.acked) for name in names
        )

    await eventually(done, timeout=20)


async def test_grow_from_one_to_five_while_writing(cluster: Cluster) -> None:
    await cluster.start(1)
    writer = Writer(cluster)
    writer.start()
    await eventually(lambda: len(writer.acked) > 20)
    for name in ("s2", "s3", "s4", "s5"):
        before = len(writer.acked)
        peer = await cluster.join(name)
        assert name in peer.membership.voters
        await eventually(lambda: len(writer.acked) > before + 20)  # writes go on
    await writer.stop()
    names = {"s1", "s2", "s3", "s4", "s5"}
    await eventually(lambda: voters_everywhere(cluster, names))
    await check_all_acked(cluster, writer, names)
    logs = [cluster.peers[n].state_machine.applied for n in sorted(names)]
    shortest = min(len(log) for log in logs)
    assert all(log[:shortest] == logs[0][:shortest] for log in logs)
    assert writer.unknown == []


async def test_concurrent_joins_all_succeed(cluster: Cluster) -> None:
    await cluster.start(1)
    await asyncio.gather(*(cluster.join(n) for n in ("s2", "s3", "s4")))
    await eventually(lambda: voters_everywhere(cluster, {"s1", "s2", "s3", "s4"}))


async def test_shrink_five_to_three_removing_the_leader(cluster: Cluster) -> None:
    await cluster.start(5)
    leader = await cluster.leader()
    writer = Writer(cluster)
    writer.start()
    await eventually(lambda: len(writer.acked) > 20)
    keep = sorted(n for n in cluster.peers if n != leader.name)[:3]
    removed = [n for n in cluster.peers if n not in keep]
    await leader.set_configuration({n: cluster.addresses[n] for n in keep})
    await eventually(lambda: not leader.is_leader)
    new = await cluster.leader()
    assert new.name in keep
    before = len(writer.acked)
    await eventually(lambda: len(writer.acked) > before + 20)
    await writer.stop()
    await eventually(lambda: voters_everywhere(cluster, set(keep)))
    await check_all_acked(cluster, writer, set(keep))
    for name in removed:
        assert name not in new.membership.members
        assert not cluster.peers[name].is_leader


async def test_replace_every_original_member_one_by_one(cluster: Cluster) -> None:
    await cluster.start(3)
    writer = Writer(cluster)
    writer.start()
    for old, new in (("s1", "s4"), ("s2", "s5"), ("s3", "s6")):
        await cluster.join(new)
        before = len(writer.acked)
        await cluster.peers[old].leave()  # the leader among them hands over first
        assert cluster.peers[old]._stopping
        await eventually(lambda: len(writer.acked) > before + 10)
    await writer.stop()
    final = {"s4", "s5", "s6"}
    await eventually(lambda: voters_everywhere(cluster, final))
    await check_all_acked(cluster, writer, final)
    assert (await cluster.leader()).name in final


async def test_a_partitioned_member_rejoining_does_not_change_the_term(cluster: Cluster) -> None:
    await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in cluster.peers.values() if p is not leader)
    term = leader.status()["term"]
    cluster.isolate(follower.name)
    await asyncio.sleep(10 * cluster.config.election_ticks * cluster.config.tick_interval)  # many timeouts
    await leader.write(["set", "during", 1])
    cluster.heal()
    await eventually(lambda: follower.state_machine.data.get("during") == 1)
    await asyncio.sleep(5 * cluster.config.election_ticks * cluster.config.tick_interval)
    assert leader.is_leader
    assert {p.status()["term"] for p in cluster.peers.values()} == {term}


async def test_a_leader_cut_off_from_the_majority_steps_down(cluster: Cluster) -> None:
    """CheckQuorum: within an election timeout of losing its majority."""
    await cluster.start(3)
    leader = await cluster.leader()
    cluster.isolate(leader.name)
    await eventually(lambda: not leader.is_leader, timeout=5)
    new = await cluster.leader()
    assert new is not leader
    cluster.heal()
    await eventually(lambda: leader.leader == new.name)


async def test_learners_receive_the_log_but_do_not_vote(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    learner = await cluster.join("l1", voter=False)
    await leader.write(["set", "a", 1])
    await eventually(lambda: learner.state_machine.data.get("a") == 1)
    status = leader.status()["members"]
    assert status["l1"]["role"] == "learner" and status["l1"]["voter"] is False
    assert status["l1"]["last_contact"] is not None and status["l1"]["lag"] >= 0
    assert {m["role"] for n, m in status.items() if n != "l1"} == {"voter"}
    assert learner.membership.voters.keys() == peers["s1"].membership.voters.keys() == {"s1", "s2", "s3"}
    # Quorum is still 2 of 3: with a voter down, writes commit even without the learner's help.
    other = next(p for p in peers.values() if p is not leader)
    await other.stop(transfer_leadership=False)
    cluster.isolate("l1")
    assert await leader.write(["set", "b", 2]) == ["ok", "b", 2]
    cluster.heal()
    # A learner is promoted by adding it as a voter.
    await leader.add_member("l1", learner.address)
    assert "l1" in leader.membership.voters


async def test_changes_sent_to_a_follower_are_forwarded(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    extra = await cluster.start_peer("s4")  # running but not a member yet
    await follower.add_member("s4", extra.address)
    await eventually(lambda: "s4" in leader.membership.voters and "s4" in extra.membership.voters)
    assert await follower.remove_member("s4") is True
    await eventually(lambda: "s4" not in leader.membership.members)
    # Both are idempotent; a removal that changed nothing says so.
    assert await follower.remove_member("s4") is False
    assert await leader.remove_member("s4") is False
    await follower.set_configuration({n: cluster.addresses[n] for n in ("s1", "s2", "s3")})


async def test_leave_from_a_follower_and_from_the_leader(cluster: Cluster) -> None:
    await cluster.start(4)
    leader = await cluster.leader()
    follower = next(p for p in cluster.live() if p is not leader)
    await follower.leave()
    await eventually(lambda: all(follower.name not in p.membership.members for p in cluster.live()), timeout=20)
    leader = await cluster.leader()  # (it may have changed under load)
    term = leader.status()["term"]
    await leader.leave()
    new = await cluster.leader()
    assert leader.name not in new.membership.members and len(new.membership.voters) == 2
    assert new.status()["term"] > term  # it handed over (benchmarks/write_pause.py times it)
    assert await new.write(["set", "x", 1]) == ["ok", "x", 1]


async def test_a_removed_member_that_keeps_running_does_not_disrupt(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    victim = next(p for p in peers.values() if p is not leader)
    await leader.remove_member(victim.name)
    term = leader.status()["term"]
    await asyncio.sleep(10 * cluster.config.election_ticks * cluster.config.tick_interval)
    assert leader.is_leader and leader.status()["term"] == term
    assert victim.name not in victim.membership.voters  # it learned that it was removed
    assert victim.status()["role"] == "follower"


async def test_a_running_peer_that_applied_its_own_removal_refuses_requests_with_not_member(
        cluster: Cluster) -> None:
    """A follower removed while running went on forwarding writes to its old
    leader; a leader that removed itself refused writes only after several
    election timeouts, with "retry after an election", and wait_for_leader()
    never returned. A peer whose committed configuration leaves it out,
    after one that named it, now says NotMember, as one told so by a member."""
    peers = await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    await leader.write(["set", "before", 1])
    assert follower.status()["removed_at"] is None
    await leader.remove_member(follower.name)
    await eventually(lambda: follower.status()["removed_at"] is not None)
    with pytest.raises(errors.NotMember, match="add_member"):
        await follower.write(["set", "refused", 1], timeout=5)
    with pytest.raises(errors.NotMember):
        await follower.read(["get", "before"], timeout=5)
    with pytest.raises(errors.NotMember):
        await asyncio.wait_for(follower.wait_for_leader(), 10)
    assert "refused" not in leader.state_machine.data
    # The leader removes itself: once that commits it steps down, and knows why.
    await leader.remove_member(leader.name)
    await eventually(lambda: leader.status()["removed_at"] is not None)
    with pytest.raises(errors.NotMember):
        await leader.write(["set", "refused", 2], timeout=5)
    with pytest.raises(errors.NotMember):
        await asyncio.wait_for(leader.wait_for_leader(), 10)
    # Added back, the follower serves again.
    rest = await cluster.leader()
    await rest.add_member(follower.name, follower.address)
    await eventually(lambda: follower.status()["removed_at"] is None and follower.leader == rest.name, timeout=20)
    assert await follower.write(["set", "after", 1], timeout=10) == ["ok", "after", 1]


async def test_a_member_removed_while_down_learns_it_and_can_be_added_back(lmdb_cluster: Cluster) -> None:
    cluster = lmdb_cluster
    await cluster.start(3)
    leader = await cluster.leader()
    victim = next(p for p in cluster.live() if p is not leader)
    await leader.write(["set", "before", 1])
    await eventually(lambda: victim.state_machine.data.get("before") == 1)
    await victim.stop()
    assert await leader.remove_member(victim.name)
    await leader.write(["set", "while-down", 1])
    # The leader sends a removed member the log for an election timeout after
    # its removal commits, so that one that is only slow learns of it; this one
    # comes back well after the leader has given up on it.
    await asyncio.sleep(20 * FAST.election_ticks * FAST.tick_interval)
    # Restarted on its data dir, it still holds the configuration naming it;
    # a member tells it otherwise when it asks for votes.
    again = await cluster.start_peer(victim.name)
    assert again.name in again.membership.voters
    await eventually(lambda: again.status()["removed_at"] is not None, timeout=20)
    assert again.status()["role"] == "follower" and again.leader is None
    with pytest.raises(errors.NotMember, match="add_member"):
        await again.write(["set", "refused", 1], timeout=5)
    with pytest.raises(errors.NotMember):
        await again.wait_for_leader(timeout=5)
    with pytest.raises(errors.NotLeader):  # a subclass: "certainly not applied"
        await again.read(["get", "before"], timeout=5)
    leader = await cluster.leader()
    assert leader.status()["removed_at"] is None
    assert "refused" not in leader.state_machine.data
    # Added back, it catches up and serves again.
    await leader.add_member(again.name, again.address)
    await eventually(lambda: again.status()["removed_at"] is None and again.leader == leader.name, timeout=20)
    assert await again.write(["set", "after", 1], timeout=10) == ["ok", "after", 1]
    await eventually(lambda: again.state_machine.data.get("while-down") == 1)


async def test_membership_errors(cluster: Cluster) -> None:
    peers = await cluster.start(1)
    s1 = peers["s1"]
    with pytest.raises(errors.ConfigError, match="only voter"):
        await s1.remove_member("s1")
    with pytest.raises(errors.ConfigError, match="only voter"):
        await s1.leave()
    with pytest.raises(errors.ConfigError):
        await s1.add_member("s2", "no-port")
    with pytest.raises(errors.ConfigError):
        await s1.add_member("", "127.0.0.1:1")
    # Nobody listens there: the learner makes no progress and stays a learner.
    with pytest.raises(errors.Timeout, match="no progress catching up"):
        await s1.add_member("ghost", "127.0.0.1:9")
    assert "ghost" in s1.membership.learners
    await s1.remove_member("ghost")
    assert "ghost" not in s1.membership.members
    with pytest.raises(errors.Unavailable):
        await raftlib.join(raftlib.StateMachine, name="x", address="127.0.0.1:0", seeds=["127.0.0.1:9"],
                           storage=_memory(), timeout=0.5)
    with pytest.raises(errors.ConfigError, match="seeds"):
        await raftlib.join(raftlib.StateMachine, name="x", address="127.0.0.1:0", seeds=[], storage=_memory())


async def test_a_member_address_with_port_0_is_refused(cluster: Cluster) -> None:
    """Port 0 means "pick a free port" when listening; as a member's address
    nobody can reach it (the real one is Peer.address)."""
    await cluster.start(1)
    s1 = cluster.peers["s1"]
    with pytest.raises(errors.ConfigError, match="port 0"):
        await s1.add_member("s2", "127.0.0.1:0")
    with pytest.raises(errors.ConfigError, match="port 0"):
        await s1.set_configuration({"s1": s1.address, "s2": "localhost:0"})
    assert set(s1.membership.members) == {"s1"}
    fresh = await raftlib.start_peer(KVStore, name="n1", address="127.0.0.1:0", storage=_memory())
    try:
        with pytest.raises(errors.ConfigError, match="port 0"):
            await fresh.set_configuration({"n1": "127.0.0.1:0"})
        assert fresh.status()["last_index"] == 0
    finally:
        await fresh.stop()


async def test_member_names_peers_would_refuse_are_refused_and_the_cluster_keeps_committing(
    cluster: Cluster,
) -> None:
    """Peers refuse a configuration naming a member with more than 256
    characters (check_message). Such a name must be refused before a
    configuration entry is appended: once in the log, it could never be
    replicated and nothing after it would ever commit."""
    from raftlib.rpc import RpcConnection

    await cluster.start(3)
    leader = await cluster.leader()
    long_name = "x" * 257
    with pytest.raises(errors.ConfigError, match="256"):
        await leader.add_member(long_name, "127.0.0.1:9", voter=False, timeout=5)
    with pytest.raises(errors.ConfigError, match="256"):
        await leader.set_configuration({**leader.membership.voters, long_name: "127.0.0.1:9"}, timeout=5)
    conn = await RpcConnection.open(leader.address)
    try:
        with pytest.raises(errors.ConfigError, match="256"):
            await conn.call("add_member", {"name": long_name, "address": "127.0.0.1:9", "voter": False, "timeout": 5})
    finally:
        await conn.close()
    with pytest.raises(errors.ConfigError, match="256"):
        await raftlib.start_peer(raftlib.StateMachine, name=long_name, address="127.0.0.1:0", storage=_memory())
    assert await leader.write(["set", "after", 1], timeout=5) == ["ok", "after", 1]
    await eventually(lambda: all(p.state_machine.data.get("after") == 1 for p in cluster.live()))
    assert long_name not in leader.membership.members


def _memory() -> Any:
    from storage_adapters import MemoryStorage

    return MemoryStorage()


async def test_join_moves_on_from_a_seed_that_accepts_but_never_answers(cluster: Cluster) -> None:
    """A paused member (SIGSTOP) still accepts connections: the join must try
    the next seed rather than wait for it until its own timeout."""
    from clusterkit import fake_server

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads the requests, answers none

    await cluster.start(3)
    async with fake_server(silent) as silent_seed:
        peer = await raftlib.join(KVStore, name="s4", address="127.0.0.1:0", storage=_memory(),
                                  seeds=[silent_seed, cluster.addresses["s1"]], config=cluster.config, timeout=20)
    try:
        assert "s4" in (await cluster.leader()).membership.voters
    finally:
        await peer.stop()


async def test_a_joined_member_restarts_from_its_data_dir(lmdb_cluster: Cluster) -> None:
    cluster = lmdb_cluster
    await cluster.start(3)
    peer = await cluster.join("s4")
    leader = await cluster.leader()
    await leader.write(["set", "a", 1])
    await eventually(lambda: peer.state_machine.data.get("a") == 1)
    await peer.stop()
    again = await cluster.join("s4", seeds=["127.0.0.1:9"])  # needs no seed: it is a member already
    assert "s4" in again.membership.voters
    await eventually(lambda: again.state_machine.data.get("a") == 1)


async def test_status_over_the_wire(cluster: Cluster) -> None:
    from raftlib.rpc import RpcConnection

    peers = await cluster.start(3)
    leader = await cluster.leader()
    conn = await RpcConnection.open(peers["s2"].address)
    try:
        status = await conn.call("status", {})
        assert status["name"] == "s2" and set(status["members"]) == {"s1", "s2", "s3"}
        with pytest.raises(errors.ConfigError, match="unknown request"):
            await conn.call("no-such-op", {})
        with pytest.raises(errors.ConfigError, match="lacks 'name'"):
            await conn.call("remove_member", {})
        with pytest.raises(errors.NotLeader) as info:
            await conn.call("transfer_leadership", {})
        assert info.value.leader == leader.name and info.value.leader_address == leader.address
    finally:
        await conn.close()


async def test_membership_requests_over_the_wire_refuse_a_nan_timeout(cluster: Cluster) -> None:
    """A NaN deadline would go into the event loop's timer heap, where it
    breaks the ordering of every timer of the process: refused, changing nothing."""
    from raftlib.rpc import RpcConnection
    from raftlib.testing import free_port

    await cluster.start(3)
    leader = await cluster.leader()
    before = leader.membership
    conn = await RpcConnection.open(leader.address)
    try:
        nan = float("nan")
        requests = [
            ("add_member", {"name": "s9", "address": f"127.0.0.1:{free_port()}", "voter": False}),
            ("remove_member", {"name": "s2"}),
            ("set_configuration", {"members": {"s1": cluster.addresses["s1"], "s2": cluster.addresses["s2"]}}),
        ]
        for op, args in requests:
            with pytest.raises(errors.ConfigError, match="timeout"):
                await conn.call(op, {**args, "timeout": nan})
    finally:
        await conn.close()
    assert leader.membership == before


async def test_a_new_peer_cannot_take_the_name_of_a_voter_at_another_address(cluster: Cluster) -> None:
    """A fresh process joining as ``s2`` at a new address while the old ``s2``
    runs on would leave two processes answering as one voter."""
    await cluster.start(3)
    leader = await cluster.leader()
    before = leader.membership
    with pytest.raises(errors.ConfigError, match="already a voter"):
        await raftlib.join(KVStore, name="s2", address="127.0.0.1:0", seeds=[cluster.addresses["s1"]],
                           storage=_memory(), config=cluster.config, timeout=10)
    assert leader.membership == before
    # A learner's place may be taken (it never votes), and so may a removed member's.
    await leader.remove_member("s3")
    again = await raftlib.join(KVStore, name="s3", address="127.0.0.1:0", seeds=[cluster.addresses["s1"]],
                               storage=_memory(), config=cluster.config, timeout=10)
    try:
        assert leader.membership.voters.get("s3") == again.address
    finally:
        await again.stop()


async def test_joining_again_as_a_voter_promotes_a_member_left_a_learner(lmdb_cluster: Cluster) -> None:
    cluster = lmdb_cluster
    await cluster.start(3)
    # What an interrupted join leaves behind (a Timeout while catching up, or
    # a crash before the promotion): a learner that knows it is one.
    peer = await cluster.start_peer("s4")
    leader = await cluster.leader()
    await leader.add_member("s4", peer.address, voter=False)
    await eventually(lambda: "s4" in peer.membership.learners)
    await peer.stop()
    again = await cluster.join("s4")
    assert "s4" in (await cluster.leader()).membership.voters  # join returns once that commits
    await eventually(lambda: "s4" in again.membership.voters)
    # Joining as a learner does not demote a voter.
    await again.stop()
    assert "s4" in (await cluster.join("s4", voter=False)).membership.voters


async def test_concurrent_set_configurations_with_different_targets_both_finish(
        cluster: Cluster) -> None:
    """Two calls moving the cluster to different members must not undo each
    other's steps forever: each returns once the cluster has its members,
    and the one that returns last is in force."""
    await cluster.start(3)
    for name in ("s4", "s5"):
        await cluster.start_peer(name)
    base = {n: cluster.addresses[n] for n in ("s1", "s2", "s3")}
    a = {**base, "s4": cluster.addresses["s4"]}
    b = {**base, "s5": cluster.addresses["s5"]}
    leader = await cluster.leader()
    follower = next(p for p in cluster.live() if p.name in base and p is not leader)
    done: list[str] = []

    async def move(peer: raftlib.Peer, target: dict[str, str], label: str) -> None:
        await peer.set_configuration(target, timeout=30)
        done.append(label)

    await asyncio.gather(move(leader, a, "a"), move(follower, b, "b"))
    assert sorted(done) == ["a", "b"]
    final = {"a": a, "b": b}[done[-1]]
    leader = await cluster.leader()
    assert leader.membership.voters == final and not leader.membership.learners



async def test_a_forwarded_change_given_up_by_its_caller_does_not_undo_a_later_one(cluster: Cluster) -> None:
    """A voter asked through a follower to be added at an address where
    nothing runs, and gave up (a joiner that died before catching up). The
    leader must stop working on that request when its caller gives up: it
    would otherwise move the member back to the dead address once the
    member, meanwhile added at its real address, has caught up."""
    from raftlib.testing import free_port

    await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in cluster.live() if not p.is_leader)
    dead = f"127.0.0.1:{free_port()}"
    first = asyncio.get_running_loop().create_task(follower.add_member("s4", dead))
    await eventually(lambda: "s4" in leader.membership.learners)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    s4 = await cluster.start_peer("s4")
    await leader.add_member("s4", s4.address, voter=False)
    await leader.write(["set", "after", 1])
    await eventually(lambda: s4.state_machine.data.get("after") == 1)  # caught up at its real address
    await asyncio.sleep(20 * cluster.config.heartbeat_ticks * cluster.config.tick_interval)
    assert leader.membership.learners.get("s4") == s4.address


async def test_adding_a_member_at_an_address_another_member_has_is_refused(cluster: Cluster) -> None:
    """Only one process listens at an address: a second name there (a typo
    of the name, say) would never be reached, or be sent the other's
    traffic. Refused naming the member at that address, on the leader and
    through a follower; the same member again at its own address is fine."""
    from raftlib.testing import free_port

    await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in cluster.live() if not p.is_leader)
    learner_address = f"127.0.0.1:{free_port()}"
    await leader.add_member("r1", learner_address, voter=False)
    before = leader.membership
    s2 = cluster.addresses["s2"]
    for peer in (leader, follower):
        for voter in (True, False):
            with pytest.raises(errors.ConfigError, match=f"{s2} is the address of s2, a voter"):
                await peer.add_member("s9", s2, voter=voter, timeout=10)
            with pytest.raises(errors.ConfigError, match=f"{learner_address} is the address of r1, a learner"):
                await peer.add_member("r2", learner_address, voter=voter, timeout=10)
        # An existing member moved onto another's address is refused too.
        with pytest.raises(errors.ConfigError, match="s3"):
            await peer.add_member("s2", cluster.addresses["s3"], timeout=10)
        with pytest.raises(errors.ConfigError, match="s2"):
            await peer.add_member("r1", s2, voter=False, timeout=10)
    assert leader.membership == before
    # The same name at the same address again changes nothing, as before.
    await follower.add_member("s2", s2)
    await follower.add_member("r1", learner_address, voter=False)
    assert leader.membership == before
    # Two names on one address in set_configuration are refused as well.
    with pytest.raises(errors.ConfigError, match="same address"):
        await follower.set_configuration({**before.voters, "s9": s2}, timeout=10)
    assert leader.membership == before
    assert await leader.write(["set", "after", 1], timeout=5) == ["ok", "after", 1]


async def test_joining_at_the_address_of_a_stopped_member_is_refused(cluster: Cluster) -> None:
    """A new peer taking over a stopped member's address under another name
    (a typo, or a replacement not removed first) would leave two members on
    one address: join says which member has it, and stops the new peer."""
    await cluster.start(3)
    leader = await cluster.leader()
    victim = next(p for p in cluster.live() if p is not leader)
    await victim.stop(transfer_leadership=False)
    before = leader.membership
    with pytest.raises(errors.ConfigError, match=f"{victim.address} is the address of {victim.name}"):
        await raftlib.join(KVStore, name="s9", address=victim.address, seeds=[leader.address],
                           storage=_memory(), config=cluster.config, timeout=10)
    assert leader.membership == before


async def test_members_add_on_the_command_line_refuses_an_address_in_use(cluster: Cluster) -> None:
    from click.testing import CliRunner

    from raftlib.cli import main

    await cluster.start(3)
    leader = await cluster.leader()
    before = leader.membership
    s3 = cluster.addresses["s3"]
    args = ["members", "add", "s9", s3, "--cluster", cluster.addresses["s2"], "--timeout", "10"]
    result = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert result.exit_code == 1
    assert f"ConfigError: {s3} is the address of s3" in result.output
    assert leader.membership == before


@pytest.mark.parametrize("how", ["leave", "remove itself"])
async def test_leave_on_a_leader_whose_handover_stalls_gives_up_within_its_timeout(tmp_path: Any, how: str) -> None:
    """``timeout`` bounds the whole of leave() (and of a leader's
    remove_member of itself), the leadership transfer it starts included
    (which on its own waits up to two maximum election timeouts). When it
    runs out during the transfer, the transfer is abandoned: the peer keeps
    leading, stays a member and takes writes."""
    from raftlib.config import Config
    from raftlib.core.messages import TimeoutNow

    cluster = Cluster(tmp_path, config=Config(tick_interval=0.02, election_ticks=20, heartbeat_ticks=2))
    try:
        await cluster.start(3)
        leader = await cluster.leader()
        held = True
        for peer in cluster.live():
            deliver = peer._transport._on_message

            def on_message(msg: Any, deliver: Any = deliver) -> None:
                if not (held and isinstance(msg, TimeoutNow)):
                    deliver(msg)

            peer._transport._on_message = on_message

        async def go(timeout: float) -> None:
            if how == "leave":
                await leader.leave(timeout=timeout)
            else:
                assert await leader.remove_member(leader.name, timeout=timeout)

        with pytest.raises(errors.Timeout, match=how):
            await go(0.3)
        assert not leader._stopping and leader.name in leader.membership.voters
        await eventually(lambda: leader.is_leader)
        assert await leader.write(["set", "after", 1], timeout=5) == ["ok", "after", 1]
        held = False
        await go(30)
        new = await cluster.leader()
        assert set(new.membership.voters) == set(cluster.addresses) - {leader.name}
    finally:
        await cluster.close()


async def test_a_leaving_leader_hands_over_to_a_follower_it_hears_from(lmdb_cluster: Cluster) -> None:
    """leave() on a leader soon after a follower stopped hands over to the
    follower still running, not to the stopped one the core would pick."""
    cluster = lmdb_cluster
    await cluster.start(3)
    old = await cluster.leader()
    await old.write(["set", "a", 1])
    dead, alive = await cluster.stop_a_follower_the_leader_would_pick(old)
    targets: list[str] = []
    start_transfer = old._core.transfer_leadership

    def spy(target: str | None = None) -> str:
        targets.append(start_transfer(target))
        return targets[-1]

    old._core.transfer_leadership = spy  # type: ignore[method-assign]
    # Without the stopped follower the remaining two have no live majority:
    # the leader would refuse to leave, unless forced.
    leaving = asyncio.ensure_future(old.leave(timeout=30, force=True))
    try:
        await eventually(lambda: targets)
        assert targets == [alive.name]
        # With the stopped follower back, the two remaining voters commit the removal.
        await eventually(lambda: alive.is_leader)
        await cluster.start_peer(dead.name)
        await leaving
    finally:
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
    assert targets == [alive.name] and old._stopping
    new = await cluster.leader()
    assert set(new.membership.voters) == {alive.name, dead.name}
    assert await new.read(["get", "a"]) == ["ok", 1]


async def test_a_leader_removing_itself_hands_over_to_a_follower_still_running(cluster: Cluster) -> None:
    """A leader removing itself stepped down once the change committed and
    told the first up-to-date voter in name order to campaign, even if that
    follower had stopped after receiving the change: the others then waited
    out their election timeouts. Here they would wait far longer than the
    test (their election timeout is huge), so a leader is elected only if
    the handover goes to a follower still running."""
    from dataclasses import replace

    from raftlib.config import Config
    from raftlib.core.messages import AppendEntriesResponse

    patient = Config(tick_interval=FAST.tick_interval, election_ticks=100_000, heartbeat_ticks=FAST.heartbeat_ticks)
    for name in ("s1", "s2", "s3", "s4"):
        cluster.config = patient if name in ("s2", "s3") else FAST
        await cluster.start_peer(name)
    cluster.config = FAST
    await cluster.peers["s1"].set_configuration(dict(cluster.addresses))
    if (await cluster.leader()).name != "s4":
        await (await cluster.leader()).transfer_leadership("s4")
    leader = await cluster.leader()
    assert leader.name == "s4"
    await leader.write(["set", "a", 1])
    first = cluster.peers["s1"]
    await eventually(lambda: all(p._core.log.last_index() == leader._core.log.last_index() for p in cluster.live()))
    # s2 and s3 acknowledge nothing new to s4 until s1 has stopped: s1 alone
    # holds the entry removing s4 when it stops, and the change commits after.
    base = leader._core.log.last_index()
    held = True
    deliver = leader._transport._on_message

    def on_message(msg: Any) -> None:
        if held and isinstance(msg, AppendEntriesResponse) and msg.src in ("s2", "s3") and msg.match_index > base:
            msg = replace(msg, match_index=base)
        deliver(msg)

    leader._transport._on_message = on_message
    removing = asyncio.ensure_future(leader.remove_member("s4", timeout=30))
    try:
        await eventually(lambda: "s4" not in first.membership.voters)
        await first.stop()
        held = False
        new = await eventually(lambda: next((p for p in cluster.live() if p.is_leader and p.name != "s4"), None))
        assert new.name in ("s2", "s3") and new is await cluster.leader()
        assert await new.write(["set", "b", 2], timeout=10) == ["ok", "b", 2]
        await removing
    finally:
        removing.cancel()
        await asyncio.gather(removing, return_exceptions=True)
    assert set(new.membership.voters) == {"s1", "s2", "s3"}


# -- changes that would leave no live majority -------------------------------------


async def _one_follower_down(cluster: Cluster) -> tuple[raftlib.Peer, raftlib.Peer, raftlib.Peer]:
    """Three voters; stop one follower and wait until the leader has not
    heard from it for more than an election timeout. Returns the leader,
    the stopped follower and the running one."""
    await cluster.start(3)
    leader = await cluster.leader()
    dead, alive = sorted((p for p in cluster.live() if p is not leader), key=lambda p: p.name)
    await dead.stop()
    await asyncio.sleep(3 * cluster.config.election_ticks * cluster.config.tick_interval)
    return leader, dead, alive


async def test_removing_a_running_voter_while_another_is_down_is_refused(cluster: Cluster) -> None:
    """Three voters, one down: removing a running one left two voters, one of
    them down, and nothing (the removal included) committed until the
    stopped one came back. The leader now refuses the change at once,
    saying how many voters of the new configuration it hears from and how
    many it needs, whoever asks (through a follower, or a leader removing
    itself or leaving, which hands over nothing first); the cluster goes on
    as before."""
    leader, dead, alive = await _one_follower_down(cluster)
    before, term = leader.membership, leader.status()["term"]
    attempts = [
        lambda: leader.remove_member(alive.name, timeout=5),
        lambda: alive.remove_member(alive.name, timeout=5),  # forwarded
        lambda: leader.remove_member(leader.name, timeout=5),
        lambda: leader.leave(timeout=5),
        lambda: alive.leave(timeout=5),
    ]
    for attempt in attempts:
        with pytest.raises(errors.NoLiveMajority) as info:
            await attempt()
        message = str(info.value)
        assert "heard from 1 of them within an election timeout and needs 2" in message
        assert f"{dead.name} is down" in message and "force=True" in message and "--force" in message
        assert leader.membership == before and alive.membership == before
        assert leader.is_leader and leader.status()["term"] == term
        assert not leader._stopping and not alive._stopping
    assert await leader.write(["set", "after", 1], timeout=5) == ["ok", "after", 1]
    assert await alive.write(["set", "after", 2], timeout=5) == ["ok", "after", 2]


async def test_removing_the_voter_that_is_down_is_allowed(cluster: Cluster) -> None:
    leader, dead, alive = await _one_follower_down(cluster)
    assert await alive.remove_member(dead.name, timeout=10) is True
    await eventually(lambda: voters_everywhere(cluster, {leader.name, alive.name}))
    assert await leader.write(["set", "after", 1], timeout=5) == ["ok", "after", 1]


async def test_set_configuration_without_a_live_majority_is_refused(cluster: Cluster) -> None:
    """A target whose running voters are no majority is refused before any
    step is taken (no new member is even added as a learner); one that
    replaces the stopped voter by a new member is fine."""
    leader, dead, alive = await _one_follower_down(cluster)
    before = leader.membership
    extra = await cluster.start_peer("s4")  # running, not a member yet
    addresses = cluster.addresses
    for target in ({leader.name: addresses[leader.name], dead.name: addresses[dead.name]},
                   {dead.name: addresses[dead.name], "s4": extra.address}):
        for peer in (leader, alive):
            with pytest.raises(errors.NoLiveMajority, match="and needs 2"):
                await peer.set_configuration(target, timeout=5)
            assert leader.membership == before
    await alive.set_configuration({leader.name: addresses[leader.name], alive.name: addresses[alive.name],
                                   "s4": extra.address}, timeout=20)
    await eventually(lambda: voters_everywhere(cluster, {leader.name, alive.name, "s4"}))
    assert await extra.write(["set", "after", 1], timeout=5) == ["ok", "after", 1]


async def test_a_forced_change_without_a_live_majority_waits_for_the_stopped_voter(lmdb_cluster: Cluster) -> None:
    """``--force`` (``force=True``) makes the change all the same, through a
    follower too: it commits once the stopped voter is back."""
    from click.testing import CliRunner

    from raftlib.cli import main

    cluster = lmdb_cluster
    leader, dead, alive = await _one_follower_down(cluster)
    args = ["members", "remove", alive.name, "--cluster", alive.address, "--timeout", "30"]
    refused = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert refused.exit_code == 1 and "NoLiveMajority: " in refused.output and "--force" in refused.output
    forced = asyncio.ensure_future(asyncio.to_thread(CliRunner().invoke, main, [*args, "--force"]))
    try:
        await eventually(lambda: alive.name not in leader.membership.voters)
        await cluster.start_peer(dead.name)
        result = await forced
    finally:
        await asyncio.gather(forced, return_exceptions=True)
    assert result.exit_code == 0, result.output
    await alive.stop(transfer_leadership=False)
    await eventually(lambda: voters_everywhere(cluster, {leader.name, dead.name}))
    new = await cluster.leader()
    assert await new.write(["set", "after", 1], timeout=5) == ["ok", "after", 1]


async def test_a_member_forwarding_its_own_forced_removal_waits_for_the_answer(cluster: Cluster) -> None:
    """The leader stops sending to a member as soon as it appends that
    member's removal. Forwarded by the member itself and held up (forced,
    with a voter down), the removal outlasted an election timeout, and the
    member took its silent leader for a hung one, and a leader that stepped
    down meanwhile (its new configuration has no live majority) left the
    member, which hears no leader, without an answer: OutcomeUnknown, though
    the removal then committed. It now waits for the leader's answer, or to
    be told that its removal committed."""
    leader, dead, alive = await _one_follower_down(cluster)
    removal = asyncio.ensure_future(alive.remove_member(alive.name, force=True, timeout=60))
    try:
        await eventually(lambda: alive.name not in leader.membership.voters)
        await eventually(lambda: alive.leader is None, timeout=30)  # cut off: it no longer hears the leader
        await eventually(lambda: not leader.is_leader, timeout=30)  # no live majority for its new configuration
        await cluster.start_peer(dead.name)
        assert await removal in (True, False)  # False: a retry found the removal made (see remove_member)
    finally:
        await asyncio.gather(removal, return_exceptions=True)
    await eventually(lambda: voters_everywhere(cluster, {leader.name, dead.name}))


async def test_a_new_leader_refuses_a_change_without_a_live_majority_too(cluster: Cluster) -> None:
    """Right after an election the new leader has heard nothing yet in its
    term from the stopped old leader: it waits until it could have, then
    refuses, rather than taking the change on trust."""
    await cluster.start(3)
    old = await cluster.leader()
    await old.stop(transfer_leadership=False)
    new = await cluster.leader()
    other = next(p for p in cluster.live() if p is not new)
    before = new.membership
    with pytest.raises(errors.NoLiveMajority, match=f"heard from 1 of them .* {old.name} is down"):
        await new.remove_member(other.name, timeout=5)
    assert new.membership == before and new.is_leader
    assert await other.write(["set", "after", 1], timeout=5) == ["ok", "after", 1]


async def test_set_configuration_replacing_most_voters_by_new_members_is_not_refused(cluster: Cluster) -> None:
    """The check of a whole plan counts a new member as live in the steps
    after its promotion (it is promoted only once caught up): moving a
    healthy cluster to a set made mostly of new members works."""
    await cluster.start(3)
    leader = await cluster.leader()
    new = [await cluster.start_peer(name) for name in ("s4", "s5", "s6")]
    target = {leader.name: leader.address, **{p.name: p.address for p in new}}
    await leader.set_configuration(target, timeout=30)
    await eventually(lambda: voters_everywhere(cluster, set(target)))
    now = await cluster.leader()
    assert await now.write(["set", "after", 1], timeout=5) == ["ok", "after", 1]


async def test_removing_a_member_again_waits_for_the_first_removal_to_commit(cluster: Cluster) -> None:
    # A removal that timed out may still be uncommitted: a new leader can
    # drop it, and the member is a voter again. Asked again, remove_member
    # said at once that there was nothing to do (False), and a caller that
    # then stopped the member and wiped its disk took a voter's data away.
    await cluster.start(3)
    leader = await cluster.leader()
    victim = next(p for p in cluster.live() if p is not leader)
    stalled = [True]
    for follower in cluster.live():
        if follower is not leader:
            deliver = follower._transport._on_message

            def drop_entries(msg: Any, deliver: Any = deliver) -> None:
                if not (stalled[0] and getattr(msg, "entries", None)):  # heartbeats still arrive
                    deliver(msg)

            follower._transport._on_message = drop_entries
    with pytest.raises(errors.Timeout, match="may still commit"):
        await leader.remove_member(victim.name, timeout=0.3)
    assert victim.name not in leader.membership.members and leader.is_leader  # in force, not committed
    with pytest.raises(errors.Timeout):
        await leader.remove_member(victim.name, timeout=0.3)
    with pytest.raises(errors.Timeout):
        await leader.add_member(victim.name, victim.address, timeout=0.3)
    stalled[0] = False
    assert await leader.remove_member(victim.name, timeout=10) is False  # removed by the first call
    assert leader._core.pending_membership_index() == 0
    assert victim.name not in leader.membership.members


async def test_join_asks_again_while_the_leader_refuses_for_want_of_a_live_majority(tmp_path: Any) -> None:
    """A learner left by an interrupted join comes back while two voters of
    three are down (the leader leads on: CheckQuorum is off). Its promotion
    is refused for want of a live majority, a state the cluster recovers
    from: join keeps asking until its timeout, then raises that refusal;
    asked again, it is a voter once a stopped voter is back."""
    import dataclasses

    cluster = Cluster(tmp_path, storage="lmdb", config=dataclasses.replace(FAST, check_quorum=False))
    try:
        await cluster.start(3)
        leader = await cluster.leader()
        learner = await cluster.start_peer("s4")
        await leader.add_member("s4", learner.address, voter=False)
        await eventually(lambda: "s4" in learner.membership.learners)
        await learner.stop()
        down = [p for p in cluster.live() if p is not leader and p.name != "s4"]
        for peer in down:
            await peer.stop()
        await asyncio.sleep(3 * cluster.config.election_ticks * cluster.config.tick_interval)  # no longer heard
        refusals = [0]
        check = leader._refuse_without_live_majority

        def counting(*args: Any, **kwargs: Any) -> None:
            try:
                check(*args, **kwargs)
            except errors.ConfigError:
                refusals[0] += 1
                raise

        leader._refuse_without_live_majority = counting  # type: ignore[method-assign]
        with pytest.raises(errors.NoLiveMajority, match=r"s4 did not become a voter within 2 s.*needs 3"):
            await raftlib.join(KVStore, name="s4", address=learner.address, seeds=[leader.address],
                               data_dir=str(tmp_path / "s4"), config=cluster.config, timeout=2)
        assert refusals[0] >= 2  # asked again
        assert "s4" in leader.membership.learners and leader.is_leader
        joining = asyncio.ensure_future(cluster.join("s4", seeds=[leader.address]))
        try:
            await eventually(lambda: refusals[0] >= 4 or joining.done())
            assert not joining.done()
            await cluster.start_peer(down[0].name)
            peer = await joining
        finally:
            await asyncio.gather(joining, return_exceptions=True)
        assert "s4" in leader.membership.voters and "s4" in peer.membership.voters
    finally:
        await cluster.close()


def _configurations_since(peer: raftlib.Peer, index: int) -> list[raftlib.Membership]:
    """The configurations ``peer``'s log took after ``index``, in order."""
    log = peer._core.log
    return [raftlib.Membership.decode(e.data) for e in log.entries(index + 1, log.last_index() + 1)
            if e.kind is raftlib.EntryKind.CONFIG]


async def test_concurrent_set_configurations_run_one_after_the_other(cluster: Cluster) -> None:
    """A second set_configuration, asked while a first waits for its new
    member to catch up, took steps of its own in between: the cluster went
    through configurations neither asked for (five voters), the second
    dropped the first's learner, and the first then timed out waiting for
    it. The leader now runs them one after the other, in the order they
    reach it: the second starts from the members the first left."""
    from raftlib.core.membership import plan_steps
    from raftlib.testing import free_port

    await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in cluster.live() if p is not leader)
    s5 = await cluster.start_peer("s5")
    cluster.addresses["s4"] = f"127.0.0.1:{free_port()}"  # started later: the first call waits for it
    base = {n: cluster.addresses[n] for n in ("s1", "s2", "s3")}
    a = {**base, "s4": cluster.addresses["s4"]}
    b = {**base, "s5": s5.address}
    since, before = leader._core.log.last_index(), leader.membership
    first = asyncio.ensure_future(leader.set_configuration(a, timeout=30))
    second: asyncio.Future[None] | None = None
    try:
        await eventually(lambda: "s4" in leader.membership.learners)
        second = asyncio.ensure_future(follower.set_configuration(b, timeout=30))
        # Room for the second to take steps of its own, were it to.
        await asyncio.sleep(4 * cluster.config.election_ticks * cluster.config.tick_interval)
        await cluster.start_peer("s4")
        await first
        await second
    finally:
        await asyncio.gather(first, *([second] if second else []), return_exceptions=True)
    expected = plan_steps(before, a, last=leader.name) + plan_steps(raftlib.Membership(voters=a), b, last=leader.name)
    assert _configurations_since(leader, since) == expected
    assert leader.membership == raftlib.Membership(voters=b)


async def test_set_configuration_on_a_follower_behind_asks_the_leader(cluster: Cluster) -> None:
    """A follower that has not yet received the last change took its own,
    older configuration for the one in force: asked to move the cluster
    back to it, it said at once that nothing needed doing, and the cluster
    stayed as it was. It now asks the leader."""
    await cluster.start(3)
    leader = await cluster.leader()
    behind = next(p for p in cluster.live() if p is not leader)
    deliver = behind._transport._on_message

    def drop_entries(msg: Any) -> None:
        if not getattr(msg, "entries", None):  # heartbeats still arrive: it knows the leader
            deliver(msg)

    behind._transport._on_message = drop_entries
    original = dict(cluster.addresses)
    s4 = await cluster.start_peer("s4")
    await leader.set_configuration({**original, "s4": s4.address}, timeout=20)
    assert behind.membership == raftlib.Membership(voters=original)  # it missed the change
    await behind.set_configuration(original, timeout=20)
    assert leader.membership == raftlib.Membership(voters=original)


@pytest.mark.parametrize("via", ["leader", "follower"])
@pytest.mark.parametrize("second", ["add_member", "remove_member", "leave"])
@pytest.mark.parametrize("first", ["set_configuration", "add_member"])
async def test_membership_changes_asked_at_once_run_one_after_the_other(
        cluster: Cluster, first: str, second: str, via: str) -> None:
    """A change asked (on the leader, or through a follower) while another
    waited for its new member to catch up took its steps in between, so
    the cluster went through configurations nobody asked for, and one
    change undid the other. add_member of s5 during a set_configuration
    promoted s5 (five voters), returned, and then the set_configuration
    removed s5; remove_member of the learner being caught up returned
    True, and the learner was added back; a follower that left was added
    back as a learner by the set_configuration, which then failed with a
    Timeout saying that learner made no progress (it had stopped); a
    leader that left handed over in the middle of the other change's
    steps. Every change now waits on the leader until the one before has
    finished, and starts from the members that one left."""
    from raftlib.core.membership import plan_steps, with_member, without_member
    from raftlib.testing import free_port

    await cluster.start(3)
    leader = await cluster.leader()
    asked, observer = sorted((p for p in cluster.live() if p is not leader), key=lambda p: p.name)
    s5 = await cluster.start_peer("s5")
    cluster.addresses["s4"] = f"127.0.0.1:{free_port()}"  # started later: the first change waits for it
    base = {n: cluster.addresses[n] for n in ("s1", "s2", "s3")}
    a = {**base, "s4": cluster.addresses["s4"]}
    since, before = leader._core.log.last_index(), leader.membership
    first_plan = plan_steps(before, a, last=leader.name)
    if first == "set_configuration":
        first_call = leader.set_configuration(a, timeout=30)
    else:
        first_call = leader.add_member("s4", a["s4"], timeout=30)
    caller = leader if via == "leader" else asked
    after_first = raftlib.Membership(voters=a)
    if second == "add_member":
        second_call = caller.add_member("s5", s5.address, timeout=30)
        second_plan = [with_member(after_first, "s5", s5.address, voter=False),
                       raftlib.Membership(voters={**a, "s5": s5.address})]
    elif second == "remove_member":
        second_call = caller.remove_member("s4", timeout=30)
        second_plan = [raftlib.Membership(voters=base)]
    else:
        second_call = caller.leave(timeout=30)
        second_plan = [without_member(after_first, caller.name)]

    def deviated() -> bool:
        configs = _configurations_since(observer, since)
        return configs != first_plan[:len(configs)]

    def queued() -> bool:  # a change waits for the leader's lock (asyncio.Lock keeps them in _waiters)
        return any(getattr(p._reconfiguring, "_waiters", None) for p in cluster.live())

    one = asyncio.ensure_future(first_call)
    two: asyncio.Future[Any] | None = None
    try:
        await eventually(lambda: "s4" in leader.membership.learners)
        two = asyncio.ensure_future(second_call)
        # Either the second change waits its turn on the leader, or it has
        # taken a step of its own in the middle of the first's.
        await eventually(lambda: queued() or deviated() or two.done())
        await cluster.start_peer("s4")
        await one
        await two
    finally:
        if two is None:
            second_call.close()
        await asyncio.gather(one, *([two] if two else []), return_exceptions=True)
    now = await cluster.leader()
    await eventually(lambda: observer._core.log.last_index() >= now._core.log.last_index())
    assert _configurations_since(observer, since) == first_plan + second_plan
    assert now.membership == second_plan[-1]


async def test_a_change_waiting_its_turn_times_out_having_changed_nothing(cluster: Cluster) -> None:
    """While a set_configuration waits for a new member that is not running,
    an add_member whose timeout runs out in the queue says so and changes
    nothing; a remove_member queued behind goes on as soon as the first
    call is cancelled, from the members that call left. Forwarded by a
    follower, the add_member said instead that the leader did not answer in
    the time allowed, as if the leader were hung: the follower gave up at
    the very moment the leader did, before the leader's answer came."""
    from raftlib.testing import free_port

    await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in cluster.live() if p is not leader)
    s5 = await cluster.start_peer("s5")
    target = {**{n: cluster.addresses[n] for n in ("s1", "s2", "s3")}, "s4": f"127.0.0.1:{free_port()}"}
    first = asyncio.ensure_future(leader.set_configuration(target, timeout=60))
    queued: asyncio.Future[bool] | None = None
    try:
        await eventually(lambda: "s4" in leader.membership.learners)
        for asked in (leader, follower):
            with pytest.raises(errors.Timeout, match="still under way.*nothing changed"):
                await asked.add_member("s5", s5.address, timeout=0.5)
        assert "s5" not in leader.membership.members
        queued = asyncio.ensure_future(leader.remove_member("s4", timeout=30))
        await eventually(lambda: leader._reconfiguring._waiters)
        first.cancel()
        assert await queued is True
    finally:
        first.cancel()
        await asyncio.gather(first, *([queued] if queued else []), return_exceptions=True)
    assert leader.membership == raftlib.Membership(voters={n: target[n] for n in ("s1", "s2", "s3")})
