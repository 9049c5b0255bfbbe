"""Membership changes one voter at a time (thesis §4.1, §4.2 and the 2015 errata)."""

from __future__ import annotations

import pytest

from raftlib.core.membership import check_change, plan_steps, with_member, without_member
from raftlib.core.messages import AppendEntries, RequestVote, RequestVoteResponse, TimeoutNow
from raftlib.core.raft import CANDIDATE, FOLLOWER, LEADER, PRE_CANDIDATE
from raftlib.errors import MembershipChangePending, NotLeader, ProposalDropped
from raftlib.types import EntryKind, Membership

from .network import Network, config, of_type


def m(voters: str, learners: str = "") -> Membership:
    return Membership({n: f"addr-{n}" for n in voters.split()}, {n: f"addr-{n}" for n in learners.split()})


def commit_all(net: Network, leader: str, rounds: int = 3) -> None:
    for _ in range(rounds):
        net.tick(leader)
        net.stabilize()


def change(net: Network, leader: str, new: Membership) -> int:
    _, index = net.nodes[leader].propose_membership(new)
    net.process()
    net.stabilize()
    commit_all(net, leader)
    return index


# -- the pure rules ------------------------------------------------------------------


def test_check_change_allows_one_voter_and_any_learners() -> None:
    check_change(m("a b c"), m("a b c d"))
    check_change(m("a b c"), m("a b"))
    check_change(m("a b c"), m("a b c", "d e f"))
    check_change(m("a b c", "d"), m("a b c d"))  # promotion
    check_change(m("a b c"), m("a b", "c"))  # demotion


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        (m("a b c"), m("a b c d e"), "at most one voter"),
        (m("a b c"), m("a d e"), "at most one voter"),
        (m("a"), Membership({}, {"a": "x"}), "at least one voter"),
        (m("a b"), Membership({"a": "x", "b": "y"}, {"b": "y"}), "both a voter and a learner"),
    ],
)
def test_check_change_refuses_unsafe_steps(old: Membership, new: Membership, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_change(old, new)


def _walk(old: Membership, target: dict[str, str], last: str | None = None) -> list[Membership]:
    steps = plan_steps(old, target, last)
    current = old
    for step in steps:
        check_change(current, step)  # every step is safe on its own
        current = step
    assert dict(current.voters) == target and not current.learners
    return steps


def test_plan_grows_one_to_five_through_learners() -> None:
    steps = _walk(m("a"), dict(m("a b c d e").voters))
    assert steps[0] == m("a", "b c d e")
    assert [len(s.voters) for s in steps] == [1, 2, 3, 4, 5]


def test_plan_shrinks_five_to_three_removing_the_leader_last() -> None:
    steps = _walk(m("a b c d e"), dict(m("b c d").voters) | {}, last="e")
    assert [sorted(s.voters) for s in steps] == [["b", "c", "d", "e"], ["b", "c", "d"]]
    steps = _walk(m("a b c d e"), dict(m("c d e").voters), last="a")
    assert sorted(steps[0].voters) == ["a", "c", "d", "e"]  # b goes first, the leader a last


def test_plan_replaces_every_member_without_shrinking_below_three() -> None:
    steps = _walk(m("a b c"), dict(m("x y z").voters), last="a")
    assert steps[0] == m("a b c", "x y z")
    assert min(len(s.voters) for s in steps) == 3
    assert list(steps[-1].voters) and "a" not in steps[-1].voters
    assert sorted(steps[-2].voters) == ["a", "x", "y", "z"]  # the leader is removed last


def test_plan_updates_addresses_and_drops_unwanted_learners() -> None:
    steps = _walk(m("a b", "l"), {"a": "new-a", "b": "addr-b"})
    assert steps[0].voters["a"] == "new-a"
    assert plan_steps(m("a b"), dict(m("a b").voters)) == []


def test_member_helpers() -> None:
    assert with_member(m("a b"), "b", "addr-b", voter=False) == m("a", "b")
    assert without_member(m("a b", "c"), "c") == m("a b")


# -- proposing changes -----------------------------------------------------------------


def test_only_a_leader_with_a_commit_in_its_term_may_change_membership() -> None:
    """Errata (2015): a new leader must commit an entry of its own term before
    it appends a configuration entry."""
    net = Network(["a", "b", "c"])
    with pytest.raises(NotLeader):
        net.nodes["a"].propose_membership(m("a b"))
    a = net.nodes["a"]
    net.tick("a", a.randomized_timeout)
    net.deliver()  # votes requested
    net.deliver()  # votes granted: a leads, its no-op is not committed yet
    assert a.role == LEADER and a.commit_index < a.log.last_index()
    with pytest.raises(MembershipChangePending, match="not committed an entry of its term"):
        a.propose_membership(m("a b"))
    net.stabilize()
    commit_all(net, "a")
    term, index = a.propose_membership(m("a b"))
    assert a.membership == m("a b")  # in force at once, before it commits
    with pytest.raises(MembershipChangePending, match=f"index {index} has not committed"):
        a.propose_membership(m("a"))
    assert a.pending_membership_index() == index
    net.process()
    net.stabilize()
    commit_all(net, "a")
    assert a.pending_membership_index() == 0
    with pytest.raises(ValueError, match="at most one voter"):
        a.propose_membership(m("a b c d"))


def test_no_membership_change_during_a_leadership_transfer() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    commit_all(net, "a")
    net.nodes["a"].transfer_leadership("b")
    with pytest.raises(ProposalDropped):
        net.nodes["a"].propose_membership(m("a b"))


def test_a_learner_gets_the_log_but_never_votes_or_counts() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    commit_all(net, "a")
    d = net.add_node("d")
    change(net, "a", m("a b c", "d"))
    net.propose("a", b"x")
    net.stabilize()
    commit_all(net, "a")
    assert net.commands("d") == [b"x"]
    assert d.membership == m("a b c", "d") and not d._is_voter()
    # Quorum stays 2 of {a, b, c}: with d and c cut off, a and b still commit.
    net.isolate("d")
    net.isolate("c")
    net.propose("a", b"y")
    net.stabilize()
    assert net.nodes["a"].commit_index == net.nodes["a"].log.last_index()
    # A learner never campaigns, however long it hears nothing.
    net.heal()
    net.isolate("d")
    net.tick("d", 10 * net.config.election_ticks)
    assert d.role == FOLLOWER and not of_type(RequestVote, net.sent[-50:])
    # ... and never asks for a vote after a TimeoutNow either.
    d.step(TimeoutNow(d.term, "a", "d"))
    assert d.role == FOLLOWER


def test_a_promoted_learner_counts_for_quorum() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    commit_all(net, "a")
    net.add_node("d")
    change(net, "a", m("a b c", "d"))
    a = net.nodes["a"]
    assert a.caught_up("d", max_lag=0)
    assert not a.caught_up("nobody", max_lag=0)
    change(net, "a", m("a b c d"))
    assert net.nodes["d"].membership == m("a b c d")
    # Four voters need three: a and b alone can no longer commit.
    net.isolate("c")
    net.isolate("d")
    net.propose("a", b"z")
    net.stabilize()
    assert a.commit_index < a.log.last_index()
    net.heal()
    commit_all(net, "a", rounds=2 * net.config.election_ticks)  # lost appends are resent
    assert a.commit_index == a.log.last_index()


def test_a_removed_follower_learns_it_and_stays_quiet() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    commit_all(net, "a")
    index = change(net, "a", m("a b"))
    a, c = net.nodes["a"], net.nodes["c"]
    assert c.membership == m("a b") and c.log.last_index() >= index
    assert "c" not in a.progress  # no longer replicated to
    before = len(net.sent)
    net.tick("c", 10 * net.config.election_ticks)
    assert c.role == FOLLOWER
    assert not of_type(RequestVote, net.sent[before:])
    # The two remaining voters commit on their own.
    net.propose("a", b"w")
    net.stabilize()
    assert a.commit_index == a.log.last_index()


def test_a_removed_follower_that_missed_its_removal_cannot_disrupt_the_leader() -> None:
    """Thesis §4.2.3: the leader lease (CheckQuorum) makes the others ignore
    the vote requests of a server that does not know it was removed."""
    net = Network(["a", "b", "c"], config=config(pre_vote=True, check_quorum=True))
    net.elect("a")
    commit_all(net, "a")
    net.isolate("c")
    change(net, "a", m("a b"))
    assert net.nodes["c"].membership == m("a b c")
    term = net.nodes["a"].term
    net.heal()
    for _ in range(5 * net.config.election_ticks):
        for i in ("a", "b", "c"):
            net.tick(i)
        net.stabilize()
    assert net.nodes["a"].role == LEADER and net.nodes["a"].term == term
    assert net.nodes["b"].term == term


def _remove_while_down(net: Network, down: str, leader: str, new: Membership) -> int:
    """Remove ``down`` while it is cut off, and let the leader forget it (an
    election timeout of heartbeats after the removal commits)."""
    net.isolate(down)
    index = change(net, leader, new)
    for _ in range(3 * net.config.election_ticks):
        for i in net.ids:
            if i != down:
                net.tick(i)
        net.stabilize()
    assert down not in net.nodes[leader].progress
    return index


@pytest.mark.parametrize("fenced", [True, False], ids=["prevote-checkquorum", "plain"])
def test_a_member_removed_while_down_is_told_when_it_campaigns(fenced: bool) -> None:
    """It cannot learn its removal from the log (no leader sends it entries
    any more), so the members it asks for a vote tell it; it then stops
    campaigning, and its term, however high, disrupts no one."""
    net = Network(["a", "b", "c"], config=config(pre_vote=fenced, check_quorum=fenced))
    net.elect("a")
    commit_all(net, "a")
    index = _remove_while_down(net, "c", "a", m("a b"))
    c = net.nodes["c"]
    net.tick("c", 5 * net.config.election_ticks)  # campaigning into the void
    assert c.membership == m("a b c") and c.removed_at == 0
    term = net.nodes["a"].term
    net.heal()
    net.tick("c", 3 * net.config.election_ticks)
    net.stabilize()
    assert c.removed_at == index and c.role == FOLLOWER
    assert c.ready().soft_state is None  # the runtime saw removed_at in the SoftState already
    assert any(r.soft_state is not None and r.soft_state.removed_at == index for r in net.readies["c"])
    told = [r for r in of_type(RequestVoteResponse, net.sent) if r.dst == "c" and r.removed]
    assert told and {r.removed for r in told} == {index}
    before = len(net.sent)
    for _ in range(5 * net.config.election_ticks):
        for i in ("a", "b", "c"):
            net.tick(i)
        net.stabilize()
    assert not [r for r in of_type(RequestVote, net.sent[before:]) if r.src == "c"]
    assert net.leaders() == ["a"] and net.nodes["a"].term == term == net.nodes["b"].term


def test_removal_index_counts_a_peer_that_applied_its_own_removal_only() -> None:
    """A learner catching up from index 1 applies configurations that leave
    it out: they came before the one adding it, so it is not "removed". A
    peer whose committed configuration leaves it out after one that named
    it is, from that entry's index, until a configuration names it again."""
    net = Network(["a", "b", "c"], config=config(max_entries_per_message=1))  # d catches up entry by entry
    net.elect("a")
    commit_all(net, "a")
    net.propose("a", b"x", b"y")
    commit_all(net, "a")
    d = net.add_node("d")
    net.nodes["a"].propose_membership(m("a b c", "d"))
    for _ in range(100):
        net.tick("a")
        net.deliver()  # one hop at a time: d sees every step of its catching up
        assert d.removal_index() == 0
    assert d.membership == m("a b c", "d") and net.commands("d") == [b"x", b"y"]
    index = change(net, "a", m("a b c"))
    assert d.removal_index() == index and d.removed_at == 0
    assert all(net.nodes[i].removal_index() == 0 for i in "abc")
    change(net, "a", m("a b c", "d"))
    assert d.removal_index() == 0
    # The leader removing itself knows it too, once that commits.
    index = change(net, "a", m("b c", "d"))
    assert net.nodes["a"].removal_index() == index and net.nodes["a"].role == FOLLOWER


def test_a_member_told_it_was_removed_campaigns_again_once_added_back() -> None:
    net = Network(["a", "b", "c"], config=config(pre_vote=True, check_quorum=True))
    net.elect("a")
    commit_all(net, "a")
    _remove_while_down(net, "c", "a", m("a b"))
    net.heal()
    c = net.nodes["c"]
    net.tick("c", 3 * net.config.election_ticks)
    net.stabilize()
    assert c.removed_at
    change(net, "a", m("a b", "c"))
    change(net, "a", m("a b c"))
    assert c.removed_at == 0 and c.membership == m("a b c")
    # A voter again: it is needed for a quorum and can lead.
    net.isolate("b")
    net.propose("a", b"w")
    net.stabilize()
    commit_all(net, "a")
    assert b"w" in net.commands("c")
    net.heal()
    net.partition(["a"], ["b", "c"])
    net.tick("b", net.config.election_ticks)  # b's lease on a's leadership runs out
    net.drop()
    net.elect("c")


def test_a_member_behind_on_configurations_does_not_silence_a_newer_member() -> None:
    """A peer that is behind may still hold the configuration before a member
    was added. It must not tell that member it was removed: its log is behind
    the candidate's, so it answers the request the usual way. And a notice
    older than a peer's own configuration naming it is ignored."""
    net = Network(["a", "b", "c"], config=config(pre_vote=True, check_quorum=True))
    net.elect("a")
    commit_all(net, "a")
    net.add_node("d")
    net.isolate("c")
    change(net, "a", m("a b c", "d"))
    index = change(net, "a", m("a b c d"))
    net.heal()
    d = net.nodes["d"]
    assert d.membership == m("a b c d") and net.nodes["c"].membership == m("a b c")
    # c, cut off since before d was added, answers d's vote request.
    net.isolate("a")
    net.isolate("b")
    net.tick("c", 2 * net.config.election_ticks)  # past its leader lease
    net.stabilize()
    net.tick("d", 3 * net.config.election_ticks)
    net.stabilize()
    answers = [r for r in of_type(RequestVoteResponse, net.sent) if r.src == "c" and r.dst == "d"]
    assert answers and all(r.removed == 0 for r in answers)
    assert any(r.granted for r in answers)
    assert d.removed_at == 0 and d.role in (PRE_CANDIDATE, CANDIDATE)
    # A notice naming a configuration older than d's own is not heeded.
    d.step(RequestVoteResponse(d.term, "c", "d", False, True, index - 1))
    assert d.removed_at == 0 and d.role in (PRE_CANDIDATE, CANDIDATE)


def test_a_leader_that_removes_itself_steps_down_and_hands_over() -> None:
    """Thesis §4.2.2: the leader manages the cluster without counting itself
    until its removal commits, then steps down; here it also tells the most
    up-to-date voter to campaign at once."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    commit_all(net, "a")
    a = net.nodes["a"]
    a.propose_membership(m("b c"))
    net.process()
    assert a.role == LEADER  # still leading while the removal is uncommitted
    net.stabilize()
    assert a.role == FOLLOWER
    timeout_now = of_type(TimeoutNow, net.sent)
    assert [t.src for t in timeout_now] == ["a"]
    net.stabilize()
    leaders = net.leaders()
    assert leaders == [timeout_now[0].dst]
    new = net.nodes[leaders[0]]
    commit_all(net, leaders[0])
    # The removed leader does not campaign; the new one commits with two voters.
    net.tick("a", 10 * net.config.election_ticks)
    net.stabilize()
    assert net.leaders() == leaders
    net.propose(leaders[0], b"after")
    net.stabilize()
    commit_all(net, leaders[0])
    assert new.commit_index == new.log.last_index()
    assert b"after" in net.commands("b") and b"after" in net.commands("c")


def test_removing_the_leader_does_not_count_its_own_ack() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    commit_all(net, "a")
    a = net.nodes["a"]
    net.isolate("c")
    a.propose_membership(m("b c"))
    net.process()
    net.stabilize()
    # Only b acknowledged: one of the two new voters is not a majority.
    assert a.role == LEADER and a.pending_membership_index() > 0


def test_an_uncommitted_configuration_is_undone_with_its_entry() -> None:
    """A configuration takes effect on append, so a follower whose entry is
    overwritten by a new leader falls back to the one before."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    commit_all(net, "a")
    net.isolate("a")
    net.nodes["a"].propose_membership(m("a b"))
    net.process()
    assert net.nodes["a"].membership == m("a b")
    net.heal()
    net.partition(["a"], ["b", "c"])
    net.elect("b")
    commit_all(net, "b")
    net.heal()
    net.tick("b")
    net.stabilize()
    commit_all(net, "b")
    a = net.nodes["a"]
    assert a.role == FOLLOWER and a.membership == m("a b c")
    assert not [e for e in net.log("a") if e.kind is EntryKind.CONFIG and e.index > 1]


def test_membership_survives_restart_and_snapshots() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    commit_all(net, "a")
    net.add_node("d")
    change(net, "a", m("a b c", "d"))
    change(net, "a", m("a b c d"))
    net.propose("a", b"x")
    net.stabilize()
    commit_all(net, "a")
    net.take_snapshot("b")
    net.restart("b")
    assert net.nodes["b"].membership == m("a b c d")
    assert net.nodes["b"].snapshot is not None and net.nodes["b"].snapshot.membership == m("a b c d")
    net.restart("d")
    assert net.nodes["d"].membership == m("a b c d")


def test_a_new_member_is_brought_up_to_date_through_a_snapshot() -> None:
    net = Network(["a", "b", "c"], config=config(max_entries_per_message=2))
    net.elect("a")
    for i in range(6):
        net.propose("a", b"%d" % i)
    net.stabilize()
    commit_all(net, "a")
    net.take_snapshot("a")
    d = net.add_node("d")
    change(net, "a", m("a b c", "d"))
    sent = [s for s in net.sent if s.dst == "d"]
    assert any(type(s).__name__ == "InstallSnapshot" for s in sent)
    assert d.membership == m("a b c", "d")
    assert net.nodes["a"].caught_up("d", max_lag=0)
    assert len([e for e in net.log("d")]) <= 2  # the rest came as the snapshot
    assert of_type(AppendEntries, sent)


def test_recent_contact_is_what_a_leader_heard_within_an_election_timeout() -> None:
    """What the runtime counts before a change that could leave no live
    majority: members heard from lately, and, while a new leader has led
    for less than an election timeout, those it could not have heard yet."""
    net = Network(["a", "b", "c"])
    ticks = net.config.election_ticks
    net.elect("a")
    assert net.nodes["a"].recent_contact() == ({"a", "b", "c"}, set())
    assert net.nodes["b"].recent_contact() == (set(), set())  # not the leader
    net.isolate("c")
    for _ in range(ticks):
        net.tick("a")
        net.stabilize()
    assert net.nodes["a"].recent_contact() == ({"a", "b"}, set())
    net.elect("b")  # c is still cut off: the new leader cannot tell yet
    assert net.nodes["b"].recent_contact() == ({"a", "b"}, {"c"})
    for _ in range(ticks):
        net.tick("b")
        net.stabilize()
    assert net.nodes["b"].recent_contact() == ({"a", "b"}, set())


def test_every_step_keeps_the_cluster_id() -> None:
    """The cluster ID is fixed at founding: no configuration change drops or alters it."""
    old = Membership({"a": "h:1", "b": "h:2", "c": "h:3"}, {"l": "h:9"}, cluster_id="0123abcd")
    steps = [with_member(old, "d", "h:4", voter=False), without_member(old, "c"),
             *plan_steps(old, {"d": "h:4", "e": "h:5", "f": "h:6"}, last="a")]
    assert len(steps) > 3
    assert all(step.cluster_id == "0123abcd" for step in steps)
    assert all(Membership.decode(step.encode()).cluster_id == "0123abcd" for step in steps)
