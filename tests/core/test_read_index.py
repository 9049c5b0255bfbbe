"""Linearizable reads with ReadIndex (Raft paper §8, thesis §6.4)."""

from __future__ import annotations

import pytest

from raftlib.core.messages import AppendEntries, AppendEntriesResponse, RequestVote
from raftlib.core.raft import LEADER
from raftlib.core.ready import ReadState
from raftlib.errors import NotLeader

from .network import Network, of_type


def cluster(ids: list[str] | None = None) -> Network:
    net = Network(ids or ["a", "b", "c"])
    net.elect("a")
    return net


def test_read_state_only_after_majority_acknowledges_heartbeat() -> None:
    """Thesis §6.4 step 3: the leader records its commit index as the read
    index and answers only after a heartbeat round acknowledged by a
    majority confirms it is still the leader."""
    net = cluster()
    a = net.nodes["a"]
    a.read_index(1)
    rd = a.ready()
    assert rd.read_states == []
    beats = of_type(AppendEntries, rd.messages)
    assert sorted(m.dst for m in beats) == ["b", "c"]
    ctx = {m.read_ctx for m in beats}
    assert len(ctx) == 1 and ctx.pop() > 0
    net.handle("a", rd)
    net.deliver(lambda m: m.dst == "b")
    net.drop(lambda m: m.dst == "c")
    assert net.read_states["a"] == []
    acks = net.deliver(lambda m: m.dst == "a")  # b's ack: a + b is a majority
    assert [m.src for m in of_type(AppendEntriesResponse, acks)] == ["b"]
    assert net.read_states["a"] == [ReadState(2, (1,))]


def test_read_index_is_commit_index_at_request_time() -> None:
    """Thesis §6.4 step 1: the read index is the commit index when the read
    arrives, even while a later write is still in flight."""
    net = cluster()
    a = net.nodes["a"]
    net.propose("a", b"x")  # index 3, not yet committed
    a.read_index(9)
    net.process()
    net.stabilize()
    assert a.commit_index == 3
    assert net.read_states["a"] == [ReadState(2, (9,))]


def test_concurrent_reads_share_one_heartbeat_round() -> None:
    """Thesis §6.4 (batching): reads that arrive between two Readies share
    one confirmation round: one heartbeat per follower, one ReadState."""
    net = cluster()
    a = net.nodes["a"]
    for rid in (1, 2, 3):
        a.read_index(rid)
    rd = a.ready()
    beats = of_type(AppendEntries, rd.messages)
    assert sorted(m.dst for m in beats) == ["b", "c"]
    net.handle("a", rd)
    net.stabilize()
    assert net.read_states["a"] == [ReadState(2, (1, 2, 3))]


def test_reads_in_different_readies_use_separate_rounds() -> None:
    """Thesis §6.4: a read that arrives after the previous round's heartbeats
    were sent needs a fresh round (an older ack proves nothing about it)."""
    net = cluster()
    a = net.nodes["a"]
    a.read_index(1)
    rd1 = a.ready()
    a.read_index(2)
    rd2 = a.ready()
    ctx1 = {m.read_ctx for m in of_type(AppendEntries, rd1.messages)}
    ctx2 = {m.read_ctx for m in of_type(AppendEntries, rd2.messages)}
    assert len(ctx1) == len(ctx2) == 1 and ctx1 != ctx2
    net.handle("a", rd1)
    net.handle("a", rd2)
    # Only answers to the first round arrive: the second read must wait.
    net.deliver(lambda m: m.dst != "a" and m.read_ctx in ctx1)
    net.deliver(lambda m: m.dst == "a" and m.read_ctx in ctx1)
    assert net.read_states["a"] == [ReadState(2, (1,))]
    net.stabilize()
    assert net.read_states["a"] == [ReadState(2, (1,)), ReadState(2, (2,))]


def test_ack_of_an_append_sent_before_the_read_does_not_confirm_it() -> None:
    """Thesis §6.4: leadership must be confirmed *after* the read arrived; an
    acknowledgement of an AppendEntries sent earlier does not count."""
    net = cluster()
    a = net.nodes["a"]
    net.propose("a", b"x")
    earlier = net.drop()  # AppendEntries for x, sent before the read
    a.read_index(5)
    net.process()
    for m in earlier:
        net.nodes[m.dst].step(m)
    net.process()
    # Only acks for the pre-read appends reach a.
    acks = net.deliver(lambda m: m.dst == "a" and m.read_ctx == earlier[0].read_ctx)
    assert len(acks) == 2
    assert a.commit_index == 3
    assert net.read_states["a"] == []
    net.stabilize()
    assert net.read_states["a"] == [ReadState(2, (5,))]


def test_read_waits_for_first_commit_in_leader_term() -> None:
    """§8 / thesis §6.4 step 1: until the leader has committed an entry of
    its own term (its no-op) it does not know the commit index, so the read
    is deferred; then it is served at an index at least the no-op's."""
    net = Network(["a", "b", "c"])
    a = net.nodes["a"]
    net.tick("a", a.randomized_timeout)
    net.deliver(lambda m: isinstance(m, RequestVote))
    net.deliver(lambda m: m.dst == "a")
    assert a.role == LEADER and a.commit_index == 0
    noop_appends = net.drop()
    a.read_index(7)
    rd = a.ready()
    assert rd.read_states == [] and of_type(AppendEntries, rd.messages) == []  # no round yet
    net.handle("a", rd)
    # Time passes (heartbeats go out and are lost): still no round, no answer.
    net.tick("a", 3)
    net.drop()
    assert a.commit_index == 0 and net.read_states["a"] == []
    assert a._read_rounds == [] and a._pending_reads == [7]
    for m in noop_appends:
        net.nodes[m.dst].step(m)
    net.process()
    net.stabilize()
    assert a.commit_index == 2
    assert net.read_states["a"] == [ReadState(2, (7,))]


@pytest.mark.parametrize("role", ["follower", "candidate"])
def test_read_index_on_non_leader_raises_not_leader(role: str) -> None:
    """ReadIndex is a leader operation; other peers refuse (naming the leader they know)."""
    net = cluster()
    b = net.nodes["b"]
    if role == "candidate":
        net.tick("b", b.randomized_timeout)
    with pytest.raises(NotLeader) as info:
        b.read_index(1)
    assert info.value.leader == ("a" if role == "follower" else None)
    assert not b.has_ready() or b.ready().read_states == []


def test_isolated_stale_leader_never_produces_a_read_state() -> None:
    """§8: a leader cut off from the majority may have been deposed; it must
    never answer a read (that would return stale data)."""
    net = cluster()
    a = net.nodes["a"]
    net.isolate("a")
    a.read_index(1)
    net.tick("a", 30)
    net.elect("b")
    net.propose("b", b"newer")
    net.stabilize()
    a.read_index(2)
    net.tick("a", 30)
    assert a.role == LEADER and a.term == 2  # it still believes it leads
    assert net.read_states["a"] == []
    net.heal()
    net.tick("b")
    net.stabilize()
    net.tick("a", 5)
    net.stabilize()
    assert a.role != LEADER and a.term == 3
    assert net.read_states["a"] == []
    # The real leader serves reads at an index that includes the newer write.
    net.nodes["b"].read_index(3)
    net.process()
    net.stabilize()
    assert net.read_states["b"] == [ReadState(4, (3,))]


def test_single_voter_serves_reads_without_messages() -> None:
    """Thesis §6.4: with one voter, the leader alone is a majority."""
    net = Network(["a"])
    net.tick("a", net.nodes["a"].randomized_timeout)
    a = net.nodes["a"]
    assert a.role == LEADER and a.commit_index == 2
    a.read_index(4)
    rd = a.ready()
    assert rd.messages == []
    assert rd.read_states == [ReadState(2, (4,))]


# -- leader lease (thesis §6.4.1) ------------------------------------------------------


def lease_cluster() -> Network:
    from .network import config

    net = Network(["a", "b", "c"], config=config(pre_vote=True, check_quorum=True))
    net.elect("a")
    return net


def test_lease_read_after_a_majority_heard_from_the_leader() -> None:
    net = lease_cluster()
    a = net.nodes["a"]
    net.tick("a")  # a heartbeat round, acknowledged by both
    net.stabilize()
    assert a.lease_read_index() == a.commit_index == 2


def test_no_lease_before_a_commit_in_the_leaders_term_or_during_a_transfer() -> None:
    from .network import config

    net = Network(["a", "b", "c"], config=config(pre_vote=False, check_quorum=True))
    a = net.nodes["a"]
    net.tick("a", a.randomized_timeout)
    net.deliver(lambda m: isinstance(m, RequestVote))
    net.deliver(lambda m: m.dst == "a")
    assert a.role == LEADER and a.lease_read_index() is None  # its no-op has not committed
    net.stabilize()
    net.tick("a")
    net.stabilize()
    assert a.lease_read_index() == 2
    a.transfer_leadership("b")
    assert a.lease_read_index() is None


def test_lease_reads_need_check_quorum_and_a_leader() -> None:
    net = cluster()
    with pytest.raises(ValueError, match="check_quorum"):
        net.nodes["a"].lease_read_index()
    with pytest.raises(NotLeader):
        net.nodes["b"].lease_read_index()


def test_a_leader_cut_off_loses_its_lease_before_anyone_else_can_lead() -> None:
    """Thesis §6.4.1: the lease must end before the others can elect a new
    leader; from then on the old leader needs a heartbeat round (which it
    cannot complete) to serve a read."""
    net = lease_cluster()
    a = net.nodes["a"]
    net.tick("a")
    net.stabilize()
    assert a.lease_read_index() is not None
    net.isolate("a")
    lease_ended = None
    for step in range(6 * net.config.election_ticks):
        for i in ("a", "b", "c"):
            net.tick(i)
        net.stabilize()
        others_lead = [i for i in ("b", "c") if net.nodes[i].is_leader()]
        if a.is_leader() and a.lease_read_index() is None and lease_ended is None:
            lease_ended = step
        if others_lead:
            assert lease_ended is not None and lease_ended < step
            if a.is_leader():
                assert a.lease_read_index() is None
    assert lease_ended is not None and [i for i in ("b", "c") if net.nodes[i].is_leader()]


def test_the_lease_is_renewed_by_every_acknowledged_round() -> None:
    net = lease_cluster()
    a = net.nodes["a"]
    for _ in range(5 * net.config.election_ticks):
        net.tick("a")
        net.stabilize()
        assert a.lease_read_index() == a.commit_index
    net.propose("a", b"x")
    net.stabilize()
    assert a.lease_read_index() == a.commit_index == 3


def test_expire_lease_ends_the_lease_until_the_next_round() -> None:
    from .network import config

    net = Network(["a", "b", "c"], config=config(pre_vote=True, check_quorum=True))
    net.elect("a")
    net.tick("a")
    net.stabilize()
    a = net.nodes["a"]
    assert a.lease_read_index() is not None
    a.expire_lease()
    assert a.lease_read_index() is None
    net.tick("a", net.config.heartbeat_ticks)
    net.stabilize()
    assert a.lease_read_index() == a.commit_index
