"""Leader election (Raft paper §5.2) and the election restriction (§5.4.1).

In the style of etcd's raft_paper_test.go: every test drives cores only
through ``tick``/``step`` (directly or through :class:`Network`) and asserts
on the resulting Ready contents and state.
"""

from __future__ import annotations

import random

import pytest

from raftlib.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from raftlib.core.raft import CANDIDATE, FOLLOWER, LEADER, Raft
from raftlib.types import Entry, EntryKind, Membership
from storage_adapters.memory import MemoryStorage

from .network import Network, config, of_type


def timeout(net: Network, i: str) -> None:
    """Tick node ``i`` exactly through its randomized election timeout (messages stay queued)."""
    net.tick(i, net.nodes[i].randomized_timeout)


def vote_request(term: int, src: str, dst: str, last_index: int, last_term: int) -> RequestVote:
    return RequestVote(term, src, dst, last_index, last_term)


# -- §5.2: becoming a candidate -------------------------------------------------------


def test_follower_times_out_and_becomes_candidate() -> None:
    """§5.2: a follower that hears nothing for an election timeout becomes
    candidate: it increments its term, votes for itself and asks every other
    server for its vote."""
    net = Network(["a", "b", "c"])
    a = net.nodes["a"]
    assert a.role == FOLLOWER and a.term == 1
    for _ in range(a.randomized_timeout - 1):
        a.tick()
    assert a.role == FOLLOWER and not a.has_ready()

    a.tick()
    assert a.role == CANDIDATE
    assert a.term == 2 and a.vote == "a"
    rd = a.ready()
    assert rd.hard_state is not None
    assert (rd.hard_state.term, rd.hard_state.vote) == (2, "a")
    assert rd.soft_state is not None and rd.soft_state.role == CANDIDATE
    # The request depends on the persisted term and self-vote: after persist only.
    assert of_type(RequestVote, rd.messages) == []
    reqs = of_type(RequestVote, rd.messages_after_persist)
    assert sorted(m.dst for m in reqs) == ["b", "c"]
    for m in reqs:
        assert (m.term, m.src, m.last_log_index, m.last_log_term, m.pre_vote) == (2, "a", 1, 1, False)


def test_candidate_that_times_out_starts_a_new_election() -> None:
    """§5.2: a candidate whose election neither wins nor loses times out and
    starts a new election in the next term."""
    net = Network(["a", "b", "c"])
    timeout(net, "a")
    net.drop()  # its vote requests are lost
    a = net.nodes["a"]
    assert (a.role, a.term) == (CANDIDATE, 2)
    timeout(net, "a")
    assert (a.role, a.term, a.vote) == (CANDIDATE, 3, "a")
    reqs = of_type(RequestVote, net.drop())
    assert sorted(m.dst for m in reqs) == ["b", "c"] and {m.term for m in reqs} == {3}


def test_candidate_with_majority_becomes_leader_and_appends_noop() -> None:
    """§5.2: a candidate that receives votes from a majority becomes leader;
    §5.4.2/§8: it appends a no-op entry of its own term."""
    net = Network(["a", "b", "c"])
    timeout(net, "a")
    a = net.nodes["a"]
    # b's vote alone (plus a's own) is a majority of three.
    net.deliver(lambda m: m.dst == "b")
    net.drop(lambda m: m.dst == "c")
    a.step(net.drop(lambda m: m.dst == "a")[0])
    assert a.role == LEADER and a.leader == "a" and a.term == 2
    rd = a.ready()
    assert rd.soft_state is not None and (rd.soft_state.role, rd.soft_state.leader) == (LEADER, "a")
    assert [(e.term, e.index, e.kind) for e in rd.entries] == [(2, 2, EntryKind.NOOP)]
    # It tells every follower at once (it may send before persisting, §10.2.1).
    appends = of_type(AppendEntries, rd.messages)
    assert sorted(m.dst for m in appends) == ["b", "c"]
    for m in appends:
        assert m.term == 2 and [e.kind for e in m.entries] == [EntryKind.NOOP]


def test_candidate_rejected_by_majority_returns_to_follower() -> None:
    """§5.2: a candidate that cannot win (a majority refused) does not become leader."""
    net = Network(["a", "b", "c"])
    timeout(net, "a")
    a = net.nodes["a"]
    net.drop()
    for src in ("b", "c"):
        a.step(RequestVoteResponse(2, src, "a", False))
    assert a.role == FOLLOWER and a.term == 2 and a.leader is None
    assert not a.is_leader()


def test_split_vote_then_a_later_election_resolves_it() -> None:
    """§5.2: when votes split, no candidate wins; randomized election timeouts
    make one server time out first in a later term, and it wins."""
    net = Network(["a", "b", "c", "d"], seed=3)
    timeout(net, "a")
    timeout(net, "b")
    assert net.nodes["a"].term == net.nodes["b"].term == 2
    # c hears a first and d hears b first: 2 votes each, a majority is 3.
    net.deliver(lambda m: isinstance(m, RequestVote) and (m.src, m.dst) in {("a", "c"), ("b", "d")})
    net.stabilize()
    assert net.leaders() == []
    assert all(n.term == 2 for n in net.nodes.values())

    a, b = net.nodes["a"], net.nodes["b"]
    assert a.randomized_timeout != b.randomized_timeout  # the randomization this relies on
    for _ in range(40):
        for i in net.ids:
            net.tick(i)
        net.stabilize()
        if net.leaders():
            break
    assert len(net.leaders()) == 1
    leader = net.nodes[net.leaders()[0]]
    assert leader.term == 3
    assert all(n.term == 3 and n.leader == leader.id for n in net.nodes.values())


def test_candidate_steps_down_on_append_entries_of_its_term() -> None:
    """§5.2: while waiting for votes, a candidate that receives AppendEntries
    from a leader of its own term recognizes that leader and becomes follower."""
    net = Network(["a", "b", "c"])
    timeout(net, "a")
    net.drop()
    a = net.nodes["a"]
    assert (a.role, a.term) == (CANDIDATE, 2)
    a.step(AppendEntries(2, "b", "a", 1, 1, (Entry(2, 2, EntryKind.NOOP),), 0))
    assert (a.role, a.term, a.leader) == (FOLLOWER, 2, "b")
    assert a.vote == "a"  # its vote in term 2 stands
    rd = a.ready()
    assert [(e.term, e.index) for e in rd.entries] == [(2, 2)]
    acks = of_type(AppendEntriesResponse, rd.messages_after_persist)
    assert [(m.dst, m.success, m.match_index) for m in acks] == [("b", True, 2)]


def test_candidate_ignores_append_entries_of_an_older_term() -> None:
    """§5.2: if the term in the RPC is smaller than the candidate's current
    term, the candidate rejects it and continues in candidate state."""
    net = Network(["a", "b", "c"])
    timeout(net, "a")
    timeout(net, "a")
    net.drop()
    a = net.nodes["a"]
    assert (a.role, a.term) == (CANDIDATE, 3)
    a.step(AppendEntries(2, "b", "a", 1, 1, (), 0))
    assert (a.role, a.term) == (CANDIDATE, 3)
    rd = a.ready()
    rejects = of_type(AppendEntriesResponse, rd.messages)
    assert [(m.dst, m.success, m.term) for m in rejects] == [("b", False, 3)]


# -- §5.1: higher terms --------------------------------------------------------------


def _node_in_role(role: str) -> tuple[Network, Raft]:
    net = Network(["a", "b", "c"])
    if role == LEADER:
        net.elect("a")
    elif role == CANDIDATE:
        timeout(net, "a")
        net.drop()
    else:
        net.elect("b")  # a is a follower that voted for b in term 2
        assert net.nodes["a"].vote == "b"
    node = net.nodes["a"]
    assert node.role == role and node.term == 2 and node.vote is not None
    return net, node


HIGHER_TERM_MESSAGES = {
    "AppendEntries": lambda: AppendEntries(5, "c", "a", 0, 0, (), 0),
    "AppendEntriesResponse": lambda: AppendEntriesResponse(5, "c", "a", False, reject_index=1),
    "RequestVoteResponse": lambda: RequestVoteResponse(5, "c", "a", False),
    # A candidate with a shorter log: the receiver adopts its term but refuses.
    "RequestVote(stale log)": lambda: RequestVote(5, "c", "a", 0, 0),
}


@pytest.mark.parametrize("role", [FOLLOWER, CANDIDATE, LEADER])
@pytest.mark.parametrize("kind", sorted(HIGHER_TERM_MESSAGES))
def test_higher_term_in_any_message_makes_follower_with_vote_cleared(role: str, kind: str) -> None:
    """§5.1: if a server sees a term larger than its own, it updates its
    current term and reverts to follower; its vote for the old term is gone."""
    _, node = _node_in_role(role)
    node.step(HIGHER_TERM_MESSAGES[kind]())
    assert node.role == FOLLOWER
    assert node.term == 5
    assert node.vote is None
    assert node.leader == ("c" if kind == "AppendEntries" else None)
    rd = node.ready()
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (5, None)


@pytest.mark.parametrize("role", [FOLLOWER, CANDIDATE, LEADER])
def test_higher_term_vote_request_with_good_log_is_granted(role: str) -> None:
    """§5.1/§5.2: a higher-term RequestVote turns any role into a follower of
    that term, which may then grant its (fresh) vote."""
    _, node = _node_in_role(role)
    last = node.log.last_index() + 10
    node.step(RequestVote(5, "c", "a", last, 4))
    assert (node.role, node.term, node.vote) == (FOLLOWER, 5, "c")
    rd = node.ready()
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (5, "c")
    assert [(m.dst, m.granted) for m in of_type(RequestVoteResponse, rd.messages_after_persist)] == [("c", True)]


# -- §5.2: voting --------------------------------------------------------------------


def test_one_vote_per_term() -> None:
    """§5.2: each server votes for at most one candidate in a given term,
    first-come-first-served; a repeated request from the same candidate is
    answered the same way."""
    net = Network(["a", "b", "c"])
    b = net.nodes["b"]
    b.step(vote_request(2, "a", "b", 1, 1))
    assert b.vote == "a"
    b.step(vote_request(2, "c", "b", 1, 1))
    b.step(vote_request(2, "a", "b", 1, 1))
    assert b.vote == "a" and b.term == 2
    rd = b.ready()
    answers = [(m.dst, m.granted) for m in of_type(RequestVoteResponse, rd.messages_after_persist)]
    assert answers == [("a", True), ("c", False), ("a", True)]


def test_second_candidate_in_same_term_is_refused_end_to_end() -> None:
    """§5.2: with b's vote already given to a in term 2, c cannot win term 2."""
    net = Network(["a", "b", "c"])
    timeout(net, "a")
    timeout(net, "c")
    assert net.nodes["a"].term == net.nodes["c"].term == 2
    net.deliver(lambda m: m.src == "a" and m.dst == "b")  # b votes for a first
    net.stabilize()
    assert net.leaders() == ["a"]
    assert net.nodes["b"].vote == "a"
    refused = [m for m in net.sent if isinstance(m, RequestVoteResponse) and m.src == "b" and m.dst == "c"]
    assert [m.granted for m in refused] == [False]


def test_vote_is_persisted_before_the_response() -> None:
    """§5.2 with Figure 2's "updated on stable storage before responding to
    RPCs": the granted vote leaves only after the HardState carrying it."""
    net = Network(["a", "b", "c"])
    b = net.nodes["b"]
    b.step(vote_request(2, "a", "b", 1, 1))
    rd = b.ready()
    assert rd.hard_state is not None
    assert (rd.hard_state.term, rd.hard_state.vote) == (2, "a")
    assert of_type(RequestVoteResponse, rd.messages) == []
    grants = of_type(RequestVoteResponse, rd.messages_after_persist)
    assert [(m.term, m.dst, m.granted) for m in grants] == [(2, "a", True)]
    # After the runtime persisted it, the vote survives a restart.
    net.handle("b", rd)
    net.restart("b")
    assert (net.nodes["b"].term, net.nodes["b"].vote) == (2, "a")
    net.nodes["b"].step(vote_request(2, "c", "b", 1, 1))
    rd = net.nodes["b"].ready()
    assert [m.granted for m in of_type(RequestVoteResponse, rd.messages_after_persist)] == [False]


def test_granting_a_vote_resets_the_election_timer() -> None:
    """§5.2: a follower that grants a vote does not time out right after."""
    net = Network(["a", "b", "c"])
    b = net.nodes["b"]
    for _ in range(b.randomized_timeout - 1):
        b.tick()
    b.step(vote_request(2, "a", "b", 1, 1))
    assert b.vote == "a"
    b.tick()
    assert b.role == FOLLOWER and b.term == 2


# -- §5.2: randomized timeouts -------------------------------------------------------


def test_election_timeout_is_randomized() -> None:
    """§5.2: election timeouts are chosen randomly from a fixed interval,
    here [election_ticks, 2 * election_ticks), and differ between seeds."""
    cfg = config(election_ticks=10)
    seen = set()
    for seed in range(100):
        storage = MemoryStorage()
        node = Raft("a", storage, cfg, random.Random(seed))
        node.bootstrap(Membership({"a": "x", "b": "y", "c": "z"}))
        t = node.randomized_timeout
        assert 10 <= t < 20
        seen.add(t)
    assert len(seen) >= 5


@pytest.mark.parametrize("seed", range(8))
def test_follower_campaigns_exactly_at_its_randomized_timeout(seed: int) -> None:
    """§5.2: the randomized timeout is what the follower actually waits, and a
    new one is drawn (still within the interval) for each election."""
    net = Network(["a", "b", "c"], seed=seed)
    a = net.nodes["a"]
    draws = []
    for term in (2, 3, 4):
        t = a.randomized_timeout
        draws.append(t)
        assert 10 <= t < 20
        for _ in range(t - 1):
            a.tick()
        assert a.term == term - 1
        a.tick()
        assert (a.role, a.term) == (CANDIDATE, term)
        a.ready()
    assert all(10 <= t < 20 for t in draws)


# -- who may campaign ----------------------------------------------------------------


def test_learner_never_campaigns() -> None:
    """§4.2.1 (thesis): a non-voting member (learner) never starts an election,
    not even when told to by TimeoutNow."""
    net = Network(["a", "b", "c"], bootstrap=False)
    membership = Membership(voters={"a": "x", "b": "y"}, learners={"c": "z"})
    for n in net.nodes.values():
        n.bootstrap(membership)
    net.process()
    c = net.nodes["c"]
    net.tick("c", 100)
    c.step(TimeoutNow(1, "a", "c"))
    net.process()
    assert c.role == FOLLOWER and c.term == 1 and c.vote is None
    assert [m for m in net.sent if m.src == "c"] == []
    # Voters still elect a leader between themselves, and the learner follows.
    net.elect("a")
    assert c.leader == "a" and c.log.last_index() == 2
    requests = of_type(RequestVote, net.sent)
    assert sorted(m.dst for m in requests) == ["b"]


def test_non_member_never_campaigns() -> None:
    """A peer that is not in the configuration (never bootstrapped, or
    bootstrapped into a cluster it is not a voter of) never campaigns."""
    net = Network(["x", "y"], bootstrap=False)
    net.nodes["y"].bootstrap(Membership(voters={"a": "addr"}))
    net.process()
    net.tick("x", 100)
    net.tick("y", 100)
    for n in net.nodes.values():
        assert n.role == FOLLOWER and n.vote is None
    assert net.nodes["x"].term == 0 and net.nodes["y"].term == 1
    assert net.sent == []


def test_single_voter_cluster_elects_itself_immediately() -> None:
    """§5.2: a candidate with a majority of votes wins; alone, its own vote is
    a majority, so it leads (and commits its no-op) as soon as it times out."""
    net = Network(["a"])
    a = net.nodes["a"]
    for _ in range(a.randomized_timeout - 1):
        a.tick()
    assert a.role == FOLLOWER
    a.tick()
    assert a.role == LEADER and a.term == 2
    rd = a.ready()
    assert rd.messages == [] and rd.messages_after_persist == []
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (2, "a")
    assert [(e.term, e.index, e.kind) for e in rd.entries] == [(2, 2, EntryKind.NOOP)]
    net.handle("a", rd)
    net.process()
    assert a.commit_index == 2
    assert [(e.index, e.kind) for e in net.applied["a"]] == [(1, EntryKind.CONFIG), (2, EntryKind.NOOP)]


# -- §5.4.1: the election restriction ----------------------------------------------


def _voter_with_log() -> tuple[Network, Raft]:
    """c holds [1/1, 2/2, 2/3]: the term-2 leader a's no-op and one command."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    net.propose("a", b"x")
    net.stabilize()
    c = net.nodes["c"]
    assert net.terms("c") == [1, 2, 2]
    return net, c


@pytest.mark.parametrize(
    "last_term,last_index,granted",
    [
        (1, 9, False),  # longer log, but older last term
        (2, 2, False),  # same last term, shorter log
        (2, 3, True),  # identical
        (2, 7, True),  # same last term, longer log
        (3, 1, True),  # newer last term wins regardless of length
    ],
)
def test_election_restriction(last_term: int, last_index: int, granted: bool) -> None:
    """§5.4.1: the voter denies its vote if its own log is more up-to-date
    than the candidate's (compare last terms; if equal, the longer log)."""
    _, c = _voter_with_log()
    c.step(RequestVote(3, "b", "c", last_index, last_term))
    assert c.term == 3
    assert c.vote == ("b" if granted else None)
    rd = c.ready()
    answers = of_type(RequestVoteResponse, rd.messages_after_persist)
    assert [(m.term, m.granted) for m in answers] == [(3, granted)]


def test_server_missing_committed_entry_cannot_become_leader() -> None:
    """§5.4.1: a server that lacks a committed entry cannot collect a majority,
    so the Leader Completeness property holds."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    net.isolate("c")
    net.propose("a", b"x")
    net.stabilize()
    assert net.nodes["a"].commit_index == 3
    net.heal()
    net.isolate("a")
    c = net.nodes["c"]
    timeout(net, "c")
    net.stabilize()
    assert c.role != LEADER
    refusals = [m for m in net.sent if isinstance(m, RequestVoteResponse) and m.src == "b" and m.dst == "c"]
    assert [m.granted for m in refusals] == [False]
    # b, which holds the committed entry, wins the next election.
    timeout(net, "b")
    net.stabilize()
    assert net.nodes["b"].is_leader() and net.nodes["b"].term == 4
    assert net.terms("c")[:3] == [1, 2, 2]


# -- leadership transfer (thesis §3.10) ---------------------------------------------


@pytest.mark.parametrize("pre_vote", [False, True])
@pytest.mark.parametrize("check_quorum", [False, True])
def test_transfer_leadership_to_up_to_date_target(check_quorum: bool, pre_vote: bool) -> None:
    """Thesis §3.10: the leader sends TimeoutNow to an up-to-date target,
    which starts an election at once (no election timeout) and wins; the
    vote requests bypass the others' leader lease."""
    net = Network(["a", "b", "c"], config=config(check_quorum=check_quorum, pre_vote=pre_vote))
    net.elect("a")
    net.propose("a", b"x")
    net.stabilize()
    a, b = net.nodes["a"], net.nodes["b"]
    assert a.transfer_leadership("b") == "b"
    rd = a.ready()
    assert [(m.dst, m.term) for m in of_type(TimeoutNow, rd.messages)] == [("b", 2)]
    net.handle("a", rd)
    net.deliver(lambda m: isinstance(m, TimeoutNow))
    assert (b.role, b.term) == (CANDIDATE, 3)
    requests = of_type(RequestVote, net.inflight)
    assert requests and all(m.transfer and not m.pre_vote for m in requests)
    net.stabilize()
    assert net.leaders() == ["b"]
    assert (a.role, a.term, a.leader) == (FOLLOWER, 3, "b")
    assert b.term == 3 and b.commit_index == 4
    assert a.transfer_target is None


def test_proposals_during_transfer_are_dropped() -> None:
    """Thesis §3.10: while a transfer is in progress the leader stops
    accepting client requests (ProposalDropped: certainly not applied)."""
    from raftlib.errors import NotLeader, ProposalDropped

    net = Network(["a", "b", "c"])
    net.elect("a")
    a = net.nodes["a"]
    a.transfer_leadership("c")
    last = a.log.last_index()
    with pytest.raises(ProposalDropped):
        a.propose(b"x")
    with pytest.raises(ProposalDropped):
        a.propose_batch([b"y", b"z"])
    assert a.log.last_index() == last
    net.process()
    net.stabilize()
    assert net.leaders() == ["c"]
    with pytest.raises(NotLeader) as info:
        a.propose(b"x")
    assert info.value.leader == "c"


def test_transfer_waits_for_lagging_target_to_catch_up() -> None:
    """Thesis §3.10 step 1: the leader first brings the target's log up to
    date, and only then sends TimeoutNow."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    a = net.nodes["a"]
    net.propose("a", b"x", b"y")
    net.deliver(lambda m: m.dst == "c")
    net.deliver(lambda m: m.dst == "a")
    assert a.commit_index == 4
    assert a.progress["b"].match < a.log.last_index()  # b's copy is still in flight
    a.transfer_leadership("b")
    net.process()
    assert of_type(TimeoutNow, net.inflight) == []
    net.deliver(lambda m: m.dst == "b")  # b catches up ...
    net.deliver(lambda m: m.dst == "a")  # ... and says so
    assert [m.dst for m in of_type(TimeoutNow, net.inflight)] == ["b"]
    assert net.log("b") == net.log("a")
    net.stabilize()
    assert net.leaders() == ["b"]
    assert net.commands("b")[-2:] == [b"x", b"y"]


def test_transfer_gets_a_full_election_timeout() -> None:
    """Thesis §3.10: the leader aborts a transfer that "does not complete
    after about an election timeout" -- counted from when the transfer
    started, not from wherever the leader's periodic timer happened to be."""
    from raftlib.errors import ProposalDropped

    net = Network(["a", "b", "c"])
    net.elect("a")
    a = net.nodes["a"]
    for _ in range(net.config.election_ticks - 1):
        net.tick("a")
        net.stabilize()
    net.propose("a", b"x")
    net.deliver(lambda m: m.dst == "c")
    net.deliver(lambda m: m.dst == "a")
    a.transfer_leadership("b")  # b lags by one entry: the transfer must wait
    net.process()
    net.tick("a")  # one tick later, far less than an election timeout
    assert a.transfer_target == "b"
    with pytest.raises(ProposalDropped):
        a.propose(b"y")
    # b catches up and the transfer completes.
    net.stabilize()
    assert net.leaders() == ["b"]


def test_transfer_that_does_not_finish_is_abandoned_after_election_timeout() -> None:
    """Thesis §3.10: if the transfer does not complete within an election
    timeout, the leader aborts it and resumes accepting client requests."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    a = net.nodes["a"]
    a.transfer_leadership("b")
    net.process()
    net.drop(lambda m: isinstance(m, TimeoutNow))  # lost
    net.tick("a", net.config.election_ticks)
    assert a.role == LEADER and a.transfer_target is None
    assert a.propose(b"after")[0] == 2


def test_transfer_leadership_argument_errors() -> None:
    """transfer_leadership refuses on a non-leader and for a target that is
    not another voter; without a target it picks the most up-to-date voter."""
    from raftlib.errors import NotLeader

    net = Network(["a", "b", "c"])
    net.elect("a")
    with pytest.raises(NotLeader):
        net.nodes["b"].transfer_leadership("c")
    a = net.nodes["a"]
    for bad in ("a", "zz"):
        with pytest.raises(ValueError):
            a.transfer_leadership(bad)
    assert a.transfer_target is None
    net.isolate("b")
    net.propose("a", b"x")
    net.stabilize()
    assert a.transfer_leadership() == "c"
    solo = Network(["a"])
    solo.tick("a", solo.nodes["a"].randomized_timeout)
    with pytest.raises(ValueError):
        solo.nodes["a"].transfer_leadership()


# -- counters for Peer.metrics -----------------------------------------------------


def test_cores_count_the_elections_they_start_and_win() -> None:
    """Each core counts the pre-vote rounds and elections it starts and the
    elections it wins; a lost election counts as started only."""
    net = Network(["a", "b", "c"], config=config(pre_vote=True))
    a, b = net.nodes["a"], net.nodes["b"]
    assert (a.pre_votes_started, a.elections_started, a.elections_won) == (0, 0, 0)
    net.elect("a")
    assert (a.pre_votes_started, a.elections_started, a.elections_won) == (1, 1, 1)
    assert (b.pre_votes_started, b.elections_started, b.elections_won) == (0, 0, 0)

    # b campaigns without pre-vote in a term nobody grants it: it loses.
    net.isolate("b")
    b._campaign(pre_vote=False, transfer=False)
    net.stabilize()
    assert (b.pre_votes_started, b.elections_started, b.elections_won) == (0, 1, 0)
    assert a.elections_won == 1
