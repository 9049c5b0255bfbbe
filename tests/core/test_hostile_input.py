"""Messages no correct peer sends: the core names the problem, drops the
message and changes nothing (it never raises from ``step``)."""

from __future__ import annotations

import msgpack
import pytest

from raftlib.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from raftlib.core.raft import LEADER, MAX_TERM_STEP, _malformed
from raftlib.types import Entry, EntryKind, Membership

from .network import Network

HUGE = 2**63
MS = Membership({"a": "x"}).encode()


def config_entry(term: int, index: int, data: bytes) -> Entry:
    return Entry(term, index, EntryKind.CONFIG, data)


@pytest.mark.parametrize(
    "msg, problem",
    [
        (TimeoutNow(HUGE, "a", "b"), "term is above 2**63-1"),
        (AppendEntries(0, "a", "b", 0, 0, (), 0), "term 0"),
        (RequestVote(0, "a", "b", 0, 0, pre_vote=True), "term 0"),
        (InstallSnapshot(0, "a", "b", 5, 0, MS), "term 0"),
        (TimeoutNow(0, "a", "b"), "term 0"),
        (AppendEntries(3, "a", "b", 0, 2, (), 0), "prev_log_term must be 0 exactly when"),
        (AppendEntries(3, "a", "b", 4, 0, (), 0), "prev_log_term must be 0 exactly when"),
        (AppendEntries(3, "a", "b", HUGE - 1, 2, (Entry(3, HUGE),), 0), "beyond index 2**63-1"),
        (AppendEntries(3, "a", "b", HUGE, 2, (), 0), "beyond index 2**63-1"),
        (AppendEntries(3, "a", "b", 0, 0, (Entry(0, 1),), 0), "entry 1 has term 0"),
        # A configuration the core would decode when appending it.
        (AppendEntries(3, "a", "b", 0, 0, (config_entry(3, 1, b"\xc1"),), 0), "not an encoded Membership"),
        (AppendEntries(3, "a", "b", 0, 0, (config_entry(3, 1, msgpack.packb({"voters": {"x": "y"}, "learners": [1]})),), 0),
         "not an encoded Membership"),  # learners that are not a map (a TypeError once)
        (AppendEntries(3, "a", "b", 0, 0, (config_entry(3, 1, Membership().encode()),), 0), "without voters"),
        (AppendEntries(3, "a", "b", 0, 0, (config_entry(3, 1, Membership({"x": "1"}, {"x": "1"}).encode()),), 0),
         "both voter and learner"),
        (RequestVote(3, "a", "b", 0, 2), "last_log_term must be 0 exactly when"),
        (RequestVote(3, "a", "b", 7, 0), "last_log_term must be 0 exactly when"),
        (RequestVote(3, "a", "b", HUGE, 2), "last_log_index is above"),
        (AppendEntriesResponse(3, "b", "a", False, reject_index=4, hint_index=2, hint_term=4), "hint_term is ahead"),
        (InstallSnapshot(3, "a", "b", 0, 2, MS), "at least one entry"),
        (InstallSnapshot(3, "a", "b", 5, 0, MS), "at least one entry"),
        (InstallSnapshot(3, "a", "b", HUGE, 2, MS), "index is above"),
        (InstallSnapshot(3, "a", "b", 5, 2, msgpack.packb({"voters": {"x": "y"}, "learners": "zz"})),
         "not an encoded Membership"),
        (InstallSnapshot(3, "a", "b", 5, 2, Membership().encode()), "without voters"),
    ],
)
def test_hostile_messages_are_named(msg: object, problem: str) -> None:
    found = _malformed(msg)  # type: ignore[arg-type]
    assert found is not None and problem in found, found


@pytest.mark.parametrize(
    "msg",
    [
        AppendEntries(3, "a", "b", 0, 0, (config_entry(1, 1, MS), Entry(3, 2, EntryKind.NOOP)), 0),
        AppendEntries(3, "a", "b", HUGE - 2, 3, (Entry(3, HUGE - 1),), 0),
        RequestVote(3, "a", "b", 0, 0),
        RequestVoteResponse(0, "b", "a", False, pre_vote=True),  # a fresh peer refusing a pre-vote
        AppendEntriesResponse(0, "b", "a", False),
        InstallSnapshot(3, "a", "b", 1, 1, MS),
    ],
)
def test_messages_correct_peers_send_pass(msg: object) -> None:
    assert _malformed(msg) is None  # type: ignore[arg-type]


def state(net: Network, i: str) -> tuple[object, ...]:
    node = net.nodes[i]
    return node.term, node.vote, node.role, node.log.last_index(), node.commit_index, node.membership


def test_an_undecodable_configuration_never_reaches_the_log() -> None:
    """Appending a configuration entry decodes it: an undecodable one used to
    escape from ``step`` and stop the peer. Now it is dropped whole."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    b = net.nodes["b"]
    before = state(net, "b")
    last = b.log.last_index()
    for data in (b"\xc1", msgpack.packb({"voters": {"x": "y"}, "learners": [1]}), msgpack.packb([1, 2])):
        b.step(AppendEntries(b.term, "a", "b", last, b.log.last_term(), (config_entry(b.term, last + 1, data),), 0))
    assert not b.has_ready()
    assert state(net, "b") == before


def test_a_message_claiming_to_come_from_this_peer_is_dropped() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    b = net.nodes["b"]
    before = state(net, "b")
    b.step(TimeoutNow(b.term + 5, "b", "b"))
    b.step(RequestVote(b.term + 5, "b", "b", 100, b.term + 5))
    assert not b.has_ready()
    assert state(net, "b") == before


def test_a_leader_ignores_rejections_of_indexes_it_never_sent() -> None:
    """A rejection names the ``prev_log_index`` the leader sent: one beyond its
    log is forged, and would send the follower's progress past the log."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    a = net.nodes["a"]
    last = a.log.last_index()
    pr = a.progress["b"]
    before = (pr.match, pr.next, pr.state)
    a.step(AppendEntriesResponse(a.term, "b", "a", False, reject_index=HUGE - 1, hint_index=HUGE - 1))
    assert (pr.match, pr.next, pr.state) == before
    assert a.role == LEADER and a.log.last_index() == last


def test_a_leader_ignores_read_acknowledgements_from_the_future() -> None:
    """A follower echoes the leader's read context; a larger one would
    confirm reads this leader has not yet asked a majority about."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    a = net.nodes["a"]
    a.read_index(1)
    for f in ("b", "c"):
        a.step(AppendEntriesResponse(a.term, f, "a", True, a.log.last_index(), read_ctx=10**9))
    net.process()
    assert net.read_states["a"] == []
    assert a.progress["b"].read_ack < 10**9
    net.stabilize()  # the real acknowledgements confirm it
    assert [rs.request_ids for rs in net.read_states["a"]] == [(1,)]


def test_a_snapshot_at_index_zero_changes_nothing() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    b = net.nodes["b"]
    before = state(net, "b")
    b.step(InstallSnapshot(b.term, "a", "b", 0, 0, MS))
    assert not b.has_ready()
    assert state(net, "b") == before


def test_a_term_far_ahead_raises_ours_by_a_bounded_step_only() -> None:
    """A message whose term is near the largest the wire carries made a
    peer adopt it, and no election could then find a term to campaign in.
    One more than MAX_TERM_STEP ahead is dropped and raises the term by
    MAX_TERM_STEP; a leader that far ahead still gets its follower back,
    one step per message."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    a, b = net.nodes["a"], net.nodes["b"]
    start = b.term
    b.step(AppendEntries(HUGE - 1, "intruder", "b", 0, 0, (), 0))
    assert (b.term, b.leader, b.vote) == (start + MAX_TERM_STEP, None, None)
    b.step(AppendEntries(b.term + MAX_TERM_STEP, "intruder", "b", 0, 0, (), 0))  # as far as one step goes
    assert (b.term, b.leader) == (start + 2 * MAX_TERM_STEP, "intruder")
    a.step(AppendEntriesResponse(HUGE - 1, "intruder", "a", True, 0))
    assert a.role != LEADER and a.term == start + MAX_TERM_STEP
    # Two steps ahead of c, the others elect a leader and c catches up.
    for _ in range(100):
        leaders = [n for n in net.nodes.values() if n.role == LEADER]
        if leaders and all(n.term == leaders[0].term for n in net.nodes.values()):
            break
        for i in net.ids:
            net.tick(i)
        net.stabilize()
    leader = leaders[0]
    assert start + 2 * MAX_TERM_STEP < leader.term < start + 2 * MAX_TERM_STEP + 10
    assert leader.propose(b"after")[1] == leader.log.last_index()
    net.stabilize()
    net.tick(leader.id, net.config.heartbeat_ticks)  # the followers learn the commit
    net.stabilize()
    assert all(n.log.committed == leader.log.last_index() for n in net.nodes.values())
