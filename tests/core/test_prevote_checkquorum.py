"""PreVote (thesis §9.6) and CheckQuorum / leader stickiness (thesis §6.2, §4.2.3)."""

from __future__ import annotations

import pytest

from raftlib.config import Config
from raftlib.core.messages import RequestVote, RequestVoteResponse
from raftlib.core.raft import CANDIDATE, FOLLOWER, LEADER, PRE_CANDIDATE

from .network import Network, config, of_type


def tick_all(net: Network, n: int) -> None:
    """``n`` rounds of: every node ticks once, then all traffic settles."""
    for _ in range(n):
        for i in net.ids:
            net.tick(i)
        net.stabilize()


# -- PreVote -----------------------------------------------------------------------


@pytest.mark.parametrize("check_quorum", [True, False])
def test_isolated_node_with_prevote_does_not_increase_its_term(check_quorum: bool) -> None:
    """Thesis §9.6: with PreVote, a candidate first asks whether it could win;
    a partitioned server never hears back, so however often it times out its
    term (and its persisted HardState) stays the same."""
    net = Network(["a", "b", "c"], config=config(pre_vote=True, check_quorum=check_quorum))
    net.elect("a")
    c = net.nodes["c"]
    net.isolate("c")
    hard_states_before = len([r for r in net.readies["c"] if r.hard_state])
    for _ in range(10):
        c.tick()
        while c.role == FOLLOWER or c.election_elapsed:
            c.tick()
        rd = c.ready()
        assert rd.hard_state is None
        pre = of_type(RequestVote, rd.messages)
        assert sorted(m.dst for m in pre) == ["a", "b"]
        assert all(m.pre_vote and m.term == 3 for m in pre)
        assert of_type(RequestVote, rd.messages_after_persist) == []
        net.handle("c", rd)
    assert (c.role, c.term, c.vote) == (PRE_CANDIDATE, 2, "a")
    assert len([r for r in net.readies["c"] if r.hard_state]) == hard_states_before


def _rejoin(check_quorum: bool, c_log_behind: bool) -> Network:
    net = Network(["a", "b", "c"], config=config(pre_vote=True, check_quorum=check_quorum))
    net.elect("a")
    net.isolate("c")
    if c_log_behind:
        net.propose("a", b"x")
    for _ in range(5):  # a keeps heartbeating b; c keeps timing out alone
        tick_all(net, net.config.election_ticks)
    assert net.nodes["c"].role == PRE_CANDIDATE and net.nodes["c"].term == 2
    net.heal()
    # c times out once more, now connected, and its pre-vote reaches a and b
    # before any heartbeat reaches c.
    while not of_type(RequestVote, net.inflight):
        net.tick("c")
    net.stabilize()
    return net


@pytest.mark.parametrize("c_log_behind", [True, False], ids=["log-behind", "log-up-to-date"])
@pytest.mark.parametrize("check_quorum", [True, False], ids=["check-quorum", "no-check-quorum"])
def test_rejoining_node_does_not_disrupt_leader(check_quorum: bool, c_log_behind: bool) -> None:
    """Thesis §9.6: when the partitioned server rejoins, it still cannot
    increment its term, since the others have been hearing from the leader;
    the leader stays in charge in the same term (Config.pre_vote: "a peer
    that was cut off cannot disrupt a healthy leader when it returns")."""
    net = _rejoin(check_quorum, c_log_behind)
    assert [n.term for n in net.nodes.values()] == [2, 2, 2]
    assert net.leaders() == ["a"]
    grants = [m for m in net.sent if isinstance(m, RequestVoteResponse) and m.dst == "c" and m.granted]
    assert grants == []
    # The next heartbeat brings c back as a follower.
    net.tick("a")
    net.stabilize()
    c = net.nodes["c"]
    assert (c.role, c.term, c.leader) == (FOLLOWER, 2, "a")
    assert c.log.last_index() == net.nodes["a"].log.last_index()


def test_prevote_then_vote_elects_when_leader_is_really_gone() -> None:
    """Thesis §9.6: when the leader is gone, pre-votes are granted (voters
    keep their term), and the candidate then runs a real election in term+1."""
    net = Network(["a", "b", "c"], config=config(pre_vote=True, check_quorum=True))
    net.elect("a")
    net.isolate("a")
    b, c = net.nodes["b"], net.nodes["c"]
    net.tick("c", net.config.election_ticks)  # c's lease on a expires
    net.tick("b", b.randomized_timeout)
    assert (b.role, b.term) == (PRE_CANDIDATE, 2)
    net.deliver(lambda m: isinstance(m, RequestVote))  # the pre-vote
    assert c.term == 2 and c.vote == "a"  # granting a pre-vote changes nothing on c
    answers = net.deliver(lambda m: isinstance(m, RequestVoteResponse))
    assert [(m.src, m.pre_vote, m.granted, m.term) for m in answers] == [("c", True, True, 3)]
    assert (b.role, b.term, b.vote) == (CANDIDATE, 3, "b")
    net.stabilize()
    assert b.role == LEADER and b.term == 3 and c.leader == "b"


def test_prevote_refused_to_a_stale_log() -> None:
    """Thesis §9.6: a pre-vote is granted only if the candidate's log is up
    to date (§5.4.1), so a stale server cannot even raise its term."""
    net = Network(["a", "b", "c"], config=config(pre_vote=True, check_quorum=False))
    net.elect("a")
    net.isolate("c")
    net.propose("a", b"x")
    net.stabilize()
    net.heal()
    net.isolate("a")  # the leader dies; only b and c remain
    c = net.nodes["c"]
    for _ in range(3):
        net.tick("c", c.randomized_timeout)
        net.stabilize()
        assert c.term == 2 and c.role != LEADER
    refusals = [m for m in net.sent if isinstance(m, RequestVoteResponse) and m.src == "b" and m.dst == "c"]
    assert refusals and all(m.pre_vote and not m.granted for m in refusals)
    assert net.nodes["b"].term == 2
    # b, which has the entry, wins.
    b = net.nodes["b"]
    net.tick("b", b.randomized_timeout)
    net.stabilize()
    assert b.role == LEADER and b.term == 3


def test_pre_candidate_returns_to_follower_on_heartbeat_of_its_term() -> None:
    """Thesis §9.6: "once the server receives a heartbeat from the leader
    itself, it will return to the follower state (in the same term)"."""
    net = Network(["a", "b", "c"], config=config(pre_vote=True, check_quorum=True))
    net.elect("a")
    c = net.nodes["c"]
    net.tick("c", c.randomized_timeout)
    net.drop()
    assert (c.role, c.term) == (PRE_CANDIDATE, 2)
    net.tick("a")
    net.stabilize()
    assert (c.role, c.term, c.leader) == (FOLLOWER, 2, "a")


def test_default_config_enables_prevote_and_check_quorum() -> None:
    """The library defaults turn both protections on (Config docstring)."""
    cfg = Config(pre_vote=True)
    assert cfg.pre_vote and cfg.check_quorum
    net = Network(["a", "b", "c"], config=cfg)
    net.elect("a")
    net.isolate("c")
    for _ in range(4):
        tick_all(net, cfg.election_ticks)
    assert net.nodes["c"].term == 2
    net.heal()
    tick_all(net, 3 * cfg.election_ticks)
    assert net.leaders() == ["a"] and [n.term for n in net.nodes.values()] == [2, 2, 2]


# -- CheckQuorum ---------------------------------------------------------------------


def test_isolated_leader_steps_down_with_check_quorum() -> None:
    """Thesis §6.2: a leader that cannot reach a majority for an election
    timeout steps down, so clients stop waiting on it."""
    net = Network(["a", "b", "c"], config=config(check_quorum=True))
    net.elect("a")
    a = net.nodes["a"]
    tick_all(net, 3)
    net.isolate("a")
    net.tick("a", net.config.election_ticks - 1)
    assert a.role == LEADER
    for _ in range(net.config.election_ticks + 1):
        net.tick("a")
    assert a.role == FOLLOWER and a.term == 2 and a.leader is None
    soft = [r.soft_state for r in net.readies["a"] if r.soft_state]
    assert soft[-1].role == FOLLOWER


def test_leader_with_active_majority_keeps_leading_with_check_quorum() -> None:
    """Thesis §6.2: a leader that hears from a majority (here only b) stays."""
    net = Network(["a", "b", "c"], config=config(check_quorum=True))
    net.elect("a")
    net.isolate("c")
    tick_all(net, 5 * net.config.election_ticks)
    assert net.nodes["a"].role == LEADER and net.nodes["a"].term == 2


def test_without_check_quorum_isolated_leader_keeps_role() -> None:
    """Contrast: with check_quorum off, nothing makes a cut-off leader step down."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    net.isolate("a")
    net.tick("a", 5 * net.config.election_ticks)
    assert net.nodes["a"].role == LEADER


def test_follower_that_heard_from_leader_ignores_higher_term_vote() -> None:
    """Thesis §4.2.3: a server that heard from a current leader within the
    minimum election timeout ignores RequestVote, even of a higher term; it
    neither updates its term nor grants the vote."""
    net = Network(["a", "b", "c"], config=config(check_quorum=True))
    net.elect("a")
    net.tick("a")
    net.stabilize()
    b = net.nodes["b"]
    for msg in (RequestVote(5, "c", "b", 100, 4), RequestVote(5, "c", "a", 100, 4)):
        net.nodes[msg.dst].step(msg)
    assert (b.role, b.term, b.vote, b.leader) == (FOLLOWER, 2, "a", "a")
    assert net.nodes["a"].role == LEADER and net.nodes["a"].term == 2
    for i in ("a", "b"):
        rd = net.nodes[i].ready()
        assert rd.hard_state is None
        assert of_type(RequestVoteResponse, rd.messages + rd.messages_after_persist) == []


def test_disruptive_candidate_ignored_end_to_end() -> None:
    """Thesis §4.2.3: c, partitioned and campaigning in ever higher terms,
    cannot get a vote from b while b keeps hearing from the leader."""
    net = Network(["a", "b", "c"], config=config(check_quorum=True))
    net.elect("a")
    net.isolate("c")
    c = net.nodes["c"]
    net.tick("c", c.randomized_timeout)
    assert c.term == 3
    net.heal()
    net.tick("a")
    net.deliver(lambda m: m.dst == "b")
    net.drop()
    net.tick("c", c.randomized_timeout)  # term 4
    requests = net.deliver(lambda m: isinstance(m, RequestVote) and m.src == "c")
    assert {m.term for m in requests} == {4}
    assert net.nodes["b"].term == 2 and net.nodes["a"].term == 2
    assert net.nodes["a"].role == LEADER
    assert of_type(RequestVoteResponse, net.inflight) == []


def test_follower_grants_vote_once_its_lease_expired() -> None:
    """Thesis §4.2.3: the rule only holds within the minimum election
    timeout; after that a follower votes normally."""
    net = Network(["a", "b", "c"], config=config(check_quorum=True))
    net.elect("a")
    net.isolate("a")
    b = net.nodes["b"]
    for _ in range(net.config.election_ticks):
        b.tick()
        if b.role != FOLLOWER:
            break
    b.step(RequestVote(3, "c", "b", 100, 2))
    assert (b.term, b.vote) == (3, "c")
