"""Log replication (Raft paper §5.3), persistence ordering and restarts."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftlib.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from raftlib.core.progress import ProgressState
from raftlib.core.raft import CANDIDATE, FOLLOWER, LEADER, PRE_CANDIDATE, Raft
from raftlib.errors import NotLeader, ProposalDropped
from raftlib.types import Entry, EntryKind, HardState, Membership

from .network import Network, config, of_type


def cluster(n: int = 3, **cfg: object) -> Network:
    ids = ["a", "b", "c", "d", "e"][:n]
    net = Network(ids, config=config(**cfg)) if cfg else Network(ids)
    net.elect("a")
    return net


def entries_of(net: Network, i: str) -> list[tuple[int, int, bytes]]:
    return [(e.term, e.index, e.data) for e in net.log(i)]


# -- §5.3: the normal case -----------------------------------------------------------


def test_leader_sends_new_entries_to_every_follower() -> None:
    """§5.3: the leader appends the command to its log as a new entry, then
    issues AppendEntries in parallel to each of the other servers."""
    net = cluster()
    a = net.nodes["a"]
    assert a.propose(b"x") == (2, 3)
    assert a.log.last_index() == 3
    rd = a.ready()
    assert [(e.term, e.index, e.data) for e in rd.entries] == [(2, 3, b"x")]
    appends = of_type(AppendEntries, rd.messages)
    assert sorted(m.dst for m in appends) == ["b", "c"]
    for m in appends:
        assert (m.term, m.prev_log_index, m.prev_log_term, m.leader_commit) == (2, 2, 2, 2)
        assert [(e.term, e.index, e.data) for e in m.entries] == [(2, 3, b"x")]
    assert rd.committed_entries == []  # not committed before a majority has it


def test_leader_commits_after_majority_and_followers_learn_commit() -> None:
    """§5.3: once the entry is replicated on a majority the leader commits and
    applies it; followers learn the commit index from later AppendEntries and
    apply it too."""
    net = cluster()
    a = net.nodes["a"]
    net.propose("a", b"x")
    net.deliver(lambda m: m.dst == "b")  # only b gets the entry
    net.drop(lambda m: m.dst == "c")
    assert a.commit_index == 2 and net.nodes["b"].commit_index == 2
    net.deliver(lambda m: m.dst == "a")  # b's ack: {a, b} is a majority
    assert a.commit_index == 3
    assert net.commands("a") == [b"x"]
    assert net.commands("b") == []
    net.stabilize()  # the commit index travels with the next AppendEntries
    assert net.nodes["b"].commit_index == 3 and net.commands("b") == [b"x"]
    # c missed the entry; the leader retries it (within an election timeout or two).
    for _ in range(2 * net.config.election_ticks):
        net.tick("a")
        net.stabilize()
    assert net.nodes["c"].commit_index == 3 and net.commands("c") == [b"x"]
    assert entries_of(net, "a") == entries_of(net, "b") == entries_of(net, "c")


def test_consistency_check_rejects_mismatching_prev() -> None:
    """§5.3: a follower refuses AppendEntries whose (prev_log_index,
    prev_log_term) it does not hold, and leaves its log alone."""
    net = cluster()
    b = net.nodes["b"]
    before = entries_of(net, "b")
    assert [t for t, _, _ in before] == [1, 2]
    # prev past the end of b's log
    b.step(AppendEntries(2, "a", "b", 5, 2, (Entry(2, 6, data=b"z"),), 2))
    # prev index present, wrong term
    b.step(AppendEntries(2, "a", "b", 2, 1, (Entry(2, 3, data=b"z"),), 2))
    rd = b.ready()
    assert rd.entries == []
    rejects = of_type(AppendEntriesResponse, rd.messages + rd.messages_after_persist)
    assert [(m.success, m.reject_index) for m in rejects] == [(False, 5), (False, 2)]
    assert (rejects[0].hint_index, rejects[0].hint_term) == (3, 0)  # "my log ends at 2"
    assert (rejects[1].hint_index, rejects[1].hint_term) == (2, 2)  # "my term 2 starts at 2"
    assert entries_of(net, "b") == before


def test_follower_truncates_conflicting_suffix() -> None:
    """§5.3: if an existing entry conflicts with a new one (same index,
    different term), the follower deletes it and all that follow it."""
    net = cluster()
    b = net.nodes["b"]
    # b takes two entries of term 2 it will later have to give up.
    b.step(AppendEntries(2, "a", "b", 2, 2, (Entry(2, 3, data=b"x1"), Entry(2, 4, data=b"x2")), 2))
    net.process()
    assert [t for t, _, _ in entries_of(net, "b")] == [1, 2, 2, 2]
    # A term-3 leader holds a different entry at index 3.
    b.step(AppendEntries(3, "c", "b", 2, 2, (Entry(3, 3, data=b"y"),), 2))
    rd = b.ready()
    assert [(e.term, e.index) for e in rd.entries] == [(3, 3)]
    assert entries_of(net, "b") == [(1, 1, entries_of(net, "b")[0][2]), (2, 2, b""), (3, 3, b"y")]
    oks = of_type(AppendEntriesResponse, rd.messages_after_persist)
    assert [(m.success, m.match_index) for m in oks] == [(True, 3)]
    net.handle("b", rd)
    # The storage dropped the old suffix too.
    stored = net.storage["b"].entries(1, net.storage["b"].last_index() + 1)
    assert [(e.term, e.index) for e in stored] == [(1, 1), (2, 2), (3, 3)]


def test_divergent_log_of_old_leader_is_repaired() -> None:
    """§5.3: an old leader that appended entries nobody else has is brought
    in line with the new leader's log once it rejoins; its uncommitted entries
    are never applied anywhere."""
    net = cluster()
    net.isolate("a")
    net.propose("a", b"x1", b"x2")  # term 2, only in a's log
    assert [t for t, _, _ in entries_of(net, "a")] == [1, 2, 2, 2]
    net.elect("b")  # term 3 with c
    net.propose("b", b"y")
    net.stabilize()
    assert net.nodes["b"].commit_index == 4
    net.heal()
    net.tick("b")  # heartbeat: a learns term 3 and is probed
    net.stabilize()
    a = net.nodes["a"]
    assert (a.role, a.term, a.leader) == (FOLLOWER, 3, "b")
    assert entries_of(net, "a") == entries_of(net, "b") == entries_of(net, "c")
    assert [(t, d) for t, _, d in entries_of(net, "a")[2:]] == [(3, b""), (3, b"y")]
    assert a.commit_index == 4
    for i in net.ids:
        assert b"x1" not in net.commands(i) and b"x2" not in net.commands(i)
    assert net.commands("a") == [b"y"]
    stored = net.storage["a"].entries(1, net.storage["a"].last_index() + 1)
    assert [e.term for e in stored] == [1, 2, 3, 3]


def test_stale_leader_learns_newer_term_from_rejection_and_steps_down() -> None:
    """§5.1: a server rejects a request with a stale term and answers with
    its current term; a leader that learns of a newer term reverts to
    follower, and its proposals were never committed."""
    net = cluster()
    net.isolate("a")
    net.elect("b")
    net.heal()
    a, c = net.nodes["a"], net.nodes["c"]
    net.propose("a", b"stale")
    net.deliver(lambda m: m.src == "a" and m.dst == "c")
    answers = of_type(AppendEntriesResponse, [m for m in net.inflight if m.src == "c"])
    assert [(m.term, m.success) for m in answers] == [(3, False)]
    assert c.term == 3 and c.leader == "b" and c.log.last_index() == 3
    net.deliver(lambda m: m.dst == "a")
    assert (a.role, a.term) == (FOLLOWER, 3)
    net.tick("b")
    net.stabilize()
    assert entries_of(net, "a") == entries_of(net, "b")
    assert all(b"stale" not in net.commands(i) for i in net.ids)


def test_fast_backoff_repairs_long_divergence_in_few_round_trips() -> None:
    """§5.3 (the optimization at the end of the section): when rejecting, the
    follower reports the conflicting term and the first index it stores for
    it, so the leader skips a whole term per round trip rather than one
    entry: the number of rejections is O(terms), not O(entries)."""
    net = cluster(max_entries_per_message=1000)
    # a, leader of term 2, appends 40 entries nobody else gets.
    net.isolate("a")
    net.propose("a", *[b"old%d" % i for i in range(40)])
    # b leads term 3 and commits 40 entries of its own with c.
    net.elect("b")
    net.propose("b", *[b"new%d" % i for i in range(40)])
    net.stabilize()
    # c takes over in term 4, so its view of a starts at the end of its log.
    net.elect("c")
    net.propose("c", b"last")
    net.stabilize()
    assert net.nodes["c"].log.last_index() == 2 + 1 + 40 + 1 + 1
    assert len([t for t in net.terms("a") if t == 2]) == 41
    net.heal()
    first = len(net.sent)
    for _ in range(3):
        net.tick("c")
        net.stabilize()
    assert entries_of(net, "a") == entries_of(net, "c")
    rejects = [m for m in net.sent[first:] if isinstance(m, AppendEntriesResponse) and m.src == "a" and not m.success]
    assert 1 <= len(rejects) <= 3, [m.describe() for m in rejects]
    probes = [m for m in net.sent[first:] if isinstance(m, AppendEntries) and m.dst == "a"]
    assert len(probes) <= 8, [m.describe() for m in probes]


def _load(net: Network, i: str, term: int, terms_from_3: list[int]) -> None:
    """Give node ``i`` a log [config 1/1, 2/2, then one entry per term in
    ``terms_from_3``] and HardState(term), as if it had lived through it."""
    cfg = Entry(1, 1, EntryKind.CONFIG, Membership({n: "x" for n in net.ids}).encode())
    log = [cfg, Entry(2, 2, EntryKind.NOOP)] + [Entry(t, 3 + k, data=b"%d" % k) for k, t in enumerate(terms_from_3)]
    net.storage[i].save(HardState(term, None, 2), log)
    net.restart(i)


def test_fast_backoff_needs_one_round_trip_per_divergent_term() -> None:
    """§5.3: with the conflict hint, "one AppendEntries RPC will be required
    for each term with conflicting entries, rather than one RPC per entry".
    f's divergent suffix spans terms 3, 5 and 6 (30 entries); the leader's
    log has term 4 there. f is repaired after exactly three rejections."""
    net = Network(["l", "f", "g"], bootstrap=False)
    leader_log = [4] * 30
    _load(net, "l", 6, leader_log)
    _load(net, "g", 6, leader_log)
    _load(net, "f", 6, [3] * 10 + [5] * 10 + [6] * 10)
    net.tick("l", net.nodes["l"].randomized_timeout)
    net.stabilize()
    leader = net.nodes["l"]
    assert leader.role == LEADER and leader.term == 7
    rejects = [m for m in net.sent if isinstance(m, AppendEntriesResponse) and m.src == "f" and not m.success]
    assert [(m.hint_term, m.hint_index) for m in rejects] == [(6, 23), (5, 13), (3, 3)]
    assert net.terms("f") == net.terms("l") == [1, 2] + leader_log + [7]
    assert net.nodes["f"].commit_index == 33


def test_stale_duplicate_append_does_not_truncate() -> None:
    """§5.3: "if an existing entry conflicts with a new one ..." -- only a
    conflict truncates: a delayed, shorter copy of an earlier AppendEntries
    must not remove entries that follow it."""
    net = cluster()
    b = net.nodes["b"]
    first = AppendEntries(2, "a", "b", 2, 2, (Entry(2, 3, data=b"x"),), 2)
    second = AppendEntries(2, "a", "b", 2, 2, (Entry(2, 3, data=b"x"), Entry(2, 4, data=b"y"), Entry(2, 5, data=b"z")), 2)
    b.step(second)
    net.process()
    assert b.log.last_index() == 5
    b.step(first)  # reordered/duplicated by the network
    rd = b.ready()
    assert rd.entries == []
    assert b.log.last_index() == 5
    assert [d for _, _, d in entries_of(net, "b")[2:]] == [b"x", b"y", b"z"]
    # It only vouches for what that message covered, and at once: that is on disk already.
    assert of_type(AppendEntriesResponse, rd.messages_after_persist) == []
    oks = of_type(AppendEntriesResponse, rd.messages)
    assert [(m.success, m.match_index) for m in oks] == [(True, 3)]


def test_an_append_is_acknowledged_only_for_what_is_on_disk() -> None:
    """With the runtime still writing earlier entries (pipelined), a
    heartbeat is answered at once, but only for what is on disk; entries a
    message appends are acknowledged after their Ready is persisted."""
    net = cluster()
    b = net.nodes["b"]
    b.step(AppendEntries(2, "a", "b", 2, 2, (Entry(2, 3, data=b"x"), Entry(2, 4, data=b"y")), 2))
    rd1 = b.ready()  # the runtime starts writing 3..4 and does not report it yet
    assert [e.index for e in rd1.entries] == [3, 4]
    assert [m.match_index for m in of_type(AppendEntriesResponse, rd1.messages_after_persist)] == [4]
    b.accept(rd1)
    b.step(AppendEntries(2, "a", "b", 4, 2, (), 2))  # a heartbeat up to 4
    rd2 = b.ready()
    assert rd2.entries == [] and of_type(AppendEntriesResponse, rd2.messages_after_persist) == []
    assert [(m.success, m.match_index) for m in of_type(AppendEntriesResponse, rd2.messages)] == [(True, 2)]
    b.accept(rd2)
    b.step(AppendEntries(2, "a", "b", 4, 2, (Entry(2, 5, data=b"z"),), 2))
    rd3 = b.ready()
    assert [e.index for e in rd3.entries] == [5]  # only what rd1 did not carry
    assert [m.match_index for m in of_type(AppendEntriesResponse, rd3.messages_after_persist)] == [5]
    b.accept(rd3)
    b.persisted(rd1)
    b.persisted(rd2)
    b.step(AppendEntries(2, "a", "b", 5, 2, (), 2))
    rd4 = b.ready()
    assert [m.match_index for m in of_type(AppendEntriesResponse, rd4.messages)] == [4]
    b.persisted(rd3)
    assert b.log.stable_last_index() == 5


def test_stale_ack_does_not_move_leader_backwards() -> None:
    """§5.3: the leader's view of a follower (matchIndex) only increases, so
    reordered acknowledgements cannot make it resend or uncommit."""
    net = cluster()
    a = net.nodes["a"]
    net.propose("a", b"x")
    net.stabilize()
    net.propose("a", b"y")
    net.stabilize()
    assert a.progress["b"].match == 4 and a.commit_index == 4
    a.step(AppendEntriesResponse(2, "b", "a", True, 3))
    a.step(AppendEntriesResponse(2, "b", "a", False, reject_index=3, hint_index=3, hint_term=2))
    assert a.progress["b"].match == 4 and a.commit_index == 4
    rd = a.ready()
    assert [m for m in of_type(AppendEntries, rd.messages) if m.entries] == []


def test_heartbeats_keep_followers_from_timing_out() -> None:
    """§5.2/§5.3: the leader sends periodic heartbeats (empty AppendEntries)
    to maintain its authority; followers that receive them never campaign."""
    net = cluster()
    for _ in range(100):
        for i in net.ids:
            net.tick(i)
        net.stabilize()
    assert net.leaders() == ["a"]
    assert all(n.term == 2 and n.leader == "a" for n in net.nodes.values())
    assert of_type(RequestVote, net.sent[-300:]) == []
    heartbeats = [m for m in net.sent if isinstance(m, AppendEntries) and not m.entries and m.dst == "b"]
    assert len(heartbeats) >= 90


def test_without_heartbeats_a_follower_times_out() -> None:
    """§5.2 (converse of the above): a follower cut off from the leader starts
    an election once its timeout passes."""
    net = cluster()
    net.isolate("a")
    b = net.nodes["b"]
    net.tick("b", b.randomized_timeout)
    assert b.term == 3 and b.role != FOLLOWER


def test_proposals_between_two_readies_travel_as_one_append_per_follower() -> None:
    """Batching: entries proposed between two Readies leave as one
    AppendEntries per follower and one storage write."""
    net = cluster()
    a = net.nodes["a"]
    for i in range(10):
        a.propose(b"c%d" % i)
    rd = a.ready()
    assert [e.index for e in rd.entries] == list(range(3, 13))
    appends = of_type(AppendEntries, rd.messages)
    assert sorted(m.dst for m in appends) == ["b", "c"]
    for m in appends:
        assert [e.index for e in m.entries] == list(range(3, 13))
    net.handle("a", rd)
    net.stabilize()
    assert net.commands("b") == [b"c%d" % i for i in range(10)]


def test_follower_learns_commit_when_its_ack_arrives_even_after_a_heartbeat() -> None:
    """§5.3: followers learn the commit index from the leader's next
    AppendEntries; a follower whose append was in flight when the entry
    committed is told as soon as its acknowledgement arrives (the leader's
    _maybe_commit comment) -- also when a heartbeat went out in between,
    since that heartbeat could only vouch for the follower's old match."""
    net = cluster()
    a, b = net.nodes["a"], net.nodes["b"]
    net.propose("a", b"x")  # index 3
    net.deliver(lambda m: m.dst == "c")
    net.deliver(lambda m: m.dst == "a")
    assert a.commit_index == 3 and b.commit_index == 2
    net.tick("a")  # heartbeat to b: prev = b's match (2), commit 3
    beat = [m for m in net.inflight if isinstance(m, AppendEntries) and m.dst == "b" and not m.entries]
    assert [(m.prev_log_index, m.leader_commit) for m in beat] == [(2, 3)]
    net.stabilize()  # b receives the entry and the heartbeat, and acks both
    assert b.log.last_index() == 3 and a.progress["b"].match == 3
    assert b.commit_index == 3
    assert net.commands("b") == [b"x"]


def test_flow_control_limits_appends_in_flight() -> None:
    """Thesis §10.2.2 pipelining: at most max_inflight AppendEntries are
    outstanding per follower; acknowledgements open the window again."""
    net = cluster(max_inflight=2, max_entries_per_message=1)
    a = net.nodes["a"]
    for i in range(5):
        a.propose(b"c%d" % i)
    rd = a.ready()
    to_b = [m for m in of_type(AppendEntries, rd.messages) if m.dst == "b"]
    assert [[e.index for e in m.entries] for m in to_b] == [[3], [4]]
    net.handle("a", rd)
    net.deliver(lambda m: m.dst == "b")
    net.drop(lambda m: m.dst == "c")
    more = net.deliver(lambda m: m.dst == "a")
    assert len(more) == 2
    to_b = [m for m in of_type(AppendEntries, net.inflight) if m.dst == "b" and m.entries]
    assert [[e.index for e in m.entries] for m in to_b] == [[5], [6]]
    net.stabilize()
    assert net.nodes["b"].log.last_index() == 7


def test_propose_batch_of_nothing_appends_nothing() -> None:
    """propose_batch "returns (term, index) of each" command: for no
    commands that is an empty list, not an exception."""
    net = cluster()
    a = net.nodes["a"]
    last = a.log.last_index()
    assert a.propose_batch([]) == []
    assert a.log.last_index() == last


def test_lost_append_is_retransmitted() -> None:
    """§5.3: "if followers crash or run slowly, or if network packets are
    lost, the leader retries AppendEntries RPCs indefinitely"."""
    net = cluster()
    a = net.nodes["a"]
    net.propose("a", b"x")
    net.drop(lambda m: m.dst == "b")  # lost
    net.stabilize()
    assert a.commit_index == 3 and net.nodes["b"].log.last_index() == 2
    for _ in range(2 * net.config.election_ticks):
        net.tick("a")
        net.stabilize()
        if net.nodes["b"].log.last_index() == 3:
            break
    assert net.nodes["b"].log.last_index() == 3
    assert net.commands("b") == [b"x"]


# -- persistence ordering ----------------------------------------------------------


def test_append_ack_only_after_persist() -> None:
    """Figure 2: a follower acknowledges entries only once they are on stable
    storage, so a successful AppendEntriesResponse is an after-persist message."""
    net = cluster()
    b = net.nodes["b"]
    b.step(AppendEntries(2, "a", "b", 2, 2, (Entry(2, 3, data=b"x"),), 2))
    rd = b.ready()
    assert [(e.index, e.data) for e in rd.entries] == [(3, b"x")]
    assert of_type(AppendEntriesResponse, rd.messages) == []
    oks = of_type(AppendEntriesResponse, rd.messages_after_persist)
    assert [(m.dst, m.success, m.match_index) for m in oks] == [("a", True, 3)]


def test_leader_counts_itself_only_after_its_entries_are_persisted() -> None:
    """§5.3/thesis §10.2.1: the leader may send before writing its own log,
    but counts itself toward the commit majority only after advance()."""
    net = cluster()
    a, b = net.nodes["a"], net.nodes["b"]
    a.propose(b"x")
    rd_a = a.ready()
    # Sent before persisting (in messages, not messages_after_persist).
    append_b = next(m for m in of_type(AppendEntries, rd_a.messages) if m.dst == "b")
    assert of_type(AppendEntries, rd_a.messages_after_persist) == []
    b.step(append_b)
    net.handle("b", b.ready())
    ack = net.drop(lambda m: m.src == "b" and m.dst == "a")
    assert [(m.success, m.match_index) for m in ack] == [(True, 3)]
    a.step(ack[0])
    # b has it, c does not, a has not persisted it: no majority yet.
    assert a.commit_index == 2
    assert a.progress["a"].match == 2
    net.drop(lambda m: m.dst == "c")
    net.handle("a", rd_a)  # persist + advance
    assert a.progress["a"].match == 3
    assert a.commit_index == 3
    net.process()
    assert net.commands("a") == [b"x"]


def test_committed_entries_are_handed_out_only_once_persisted() -> None:
    """A follower may learn that an entry is committed before its own copy is
    persisted; it must not hand it out for applying until it is."""
    net = cluster()
    b = net.nodes["b"]
    b.step(AppendEntries(2, "a", "b", 2, 2, (Entry(2, 3, data=b"x"),), 3))
    assert b.commit_index == 3
    rd = b.ready()
    assert [e.index for e in rd.entries] == [3]
    assert all(e.index <= 2 for e in rd.committed_entries)
    net.handle("b", rd)
    rd = b.ready()
    assert [e.index for e in rd.committed_entries] == [3]


# -- restart ---------------------------------------------------------------------


def test_restarted_follower_keeps_term_vote_log_and_replays_committed() -> None:
    """Figure 2 "persistent state on all servers": after a restart a server
    has its currentTerm, votedFor and log, and re-applies committed entries."""
    net = cluster()
    net.propose("a", b"x", b"y")
    net.stabilize()
    net.tick("a")
    net.stabilize()
    before = entries_of(net, "b")
    b_old = net.nodes["b"]
    assert (b_old.term, b_old.vote, b_old.commit_index) == (2, "a", 4)
    net.restart("b")
    b = net.nodes["b"]
    assert b is not b_old
    assert (b.role, b.term, b.vote, b.leader) == (FOLLOWER, 2, "a", None)
    assert entries_of(net, "b") == before
    assert b.commit_index == 4 and b.applied_index == 0
    net.process()
    assert [e.index for e in net.applied["b"]] == [1, 2, 3, 4]
    assert net.commands("b") == [b"x", b"y"]
    assert b.applied_index == 4
    # It keeps following the same leader.
    net.propose("a", b"z")
    net.stabilize()
    assert net.commands("b") == [b"x", b"y", b"z"]


def test_restarted_leader_comes_back_as_follower_of_same_term() -> None:
    """Figure 2: a restarted leader keeps its term and vote (so it cannot vote
    twice in that term) but restarts as a follower."""
    net = cluster()
    net.propose("a", b"x")
    net.stabilize()
    net.restart("a")
    a = net.nodes["a"]
    assert (a.role, a.term, a.vote) == (FOLLOWER, 2, "a")
    assert net.storage["a"].load()[0] == HardState(2, "a", 3)
    net.process()
    assert net.commands("a") == [b"x"]
    a.step(RequestVote(2, "b", "a", 10, 2))
    rd = a.ready()
    assert [m.granted for m in rd.messages_after_persist] == [False]
    # The cluster elects a leader again and nothing committed is lost.
    net.handle("a", rd)
    net.elect("b")
    net.propose("b", b"y")
    net.stabilize()
    assert net.commands("a") == [b"x", b"y"]
    assert net.nodes["b"].role == LEADER and net.nodes["b"].term == 3
    assert net.nodes["b"].progress["a"].state is ProgressState.REPLICATE


def test_leader_noop_commits_entries_of_earlier_term() -> None:
    """§5.4.2/§8: entries left uncommitted by an old leader are committed by
    the new leader's no-op, without any new client command."""
    net = cluster()
    net.propose("a", b"x")
    net.deliver(lambda m: m.dst == "b")  # b has x; a has not heard back
    net.drop()
    assert net.nodes["a"].commit_index == 2
    net.isolate("a")
    net.elect("b")
    net.stabilize()
    b = net.nodes["b"]
    assert [(e.term, e.kind) for e in net.log("b")[2:]] == [(2, EntryKind.NORMAL), (3, EntryKind.NOOP)]
    assert b.commit_index == 4
    assert net.commands("b") == [b"x"] and net.commands("c") == [b"x"]


# -- robustness: arbitrary input never crashes a core ----------------------------------

ROLES = ["follower-fresh", "follower", PRE_CANDIDATE, CANDIDATE, LEADER]
MESSAGE_KINDS = ["RequestVote", "RequestVoteResponse", "AppendEntries", "AppendEntriesResponse", "TimeoutNow"]


def _setup(role: str, pre_vote: bool, check_quorum: bool) -> Network:
    if role in (PRE_CANDIDATE, CANDIDATE):
        pre_vote = role == PRE_CANDIDATE
    net = Network(["a", "b", "c"], config=config(pre_vote=pre_vote, check_quorum=check_quorum))
    a = net.nodes["a"]
    if role == "follower":
        net.elect("b")
    elif role in (PRE_CANDIDATE, CANDIDATE):
        net.tick("a", a.randomized_timeout)
        net.drop()
    elif role == LEADER:
        net.elect("a")
        net.propose("a", b"x")
    assert a.role == role.replace("follower-fresh", FOLLOWER)
    return net


def _draw_message(data: st.DataObject, node: Raft) -> object:
    kind = data.draw(st.sampled_from(MESSAGE_KINDS), label="kind")
    term = data.draw(st.integers(max(0, node.term - 2), node.term + 2), label="term")
    src = data.draw(st.sampled_from(["b", "c", "zz"]), label="src")
    dst = data.draw(st.sampled_from(["a", "a", "a", "b"]), label="dst")
    last = node.log.last_index()
    idx = st.integers(0, last + 3)
    small_term = st.integers(0, term)
    if kind == "RequestVote":
        return RequestVote(term, src, dst, data.draw(idx), data.draw(small_term),
                           pre_vote=data.draw(st.booleans()), transfer=data.draw(st.booleans()))
    if kind == "RequestVoteResponse":
        return RequestVoteResponse(term, src, dst, data.draw(st.booleans()), data.draw(st.booleans()))
    if kind == "TimeoutNow":
        return TimeoutNow(term, src, dst)
    if kind == "AppendEntriesResponse":
        return AppendEntriesResponse(
            term, src, dst, data.draw(st.booleans()), match_index=data.draw(idx), reject_index=data.draw(idx),
            hint_index=data.draw(idx), hint_term=data.draw(small_term), read_ctx=data.draw(st.integers(0, 3)),
        )
    prev = data.draw(idx, label="prev")
    prev_term = data.draw(small_term, label="prev_term")
    n = data.draw(st.integers(0, 4), label="n_entries")
    entries = []
    t = prev_term
    for k in range(n):
        t = data.draw(st.integers(t, max(t, term)))
        kind_ = data.draw(st.sampled_from([EntryKind.NORMAL, EntryKind.NOOP]))
        entries.append(Entry(t, prev + 1 + k, kind_, b"f%d" % k if kind_ is EntryKind.NORMAL else b""))
    commit = data.draw(st.integers(0, prev + n + 3), label="leader_commit")
    return AppendEntries(term, src, dst, prev, prev_term, tuple(entries), commit, data.draw(st.integers(0, 3)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    role=st.sampled_from(ROLES),
    pre_vote=st.booleans(),
    check_quorum=st.booleans(),
    data=st.data(),
)
def test_random_inputs_never_crash_a_core(role: str, pre_vote: bool, check_quorum: bool, data: st.DataObject) -> None:
    """Whatever a peer sends (well-formed messages of any type, any nearby
    term, in any role), the core never raises from step/tick/ready/advance;
    the API calls raise only their documented errors (NotLeader,
    ProposalDropped, ValueError). Basic invariants hold throughout."""
    net = _setup(role, pre_vote, check_quorum)
    a = net.nodes["a"]
    last_term = a.term
    for _ in range(data.draw(st.integers(1, 25), label="steps")):
        op = data.draw(st.sampled_from(["step", "step", "step", "tick", "propose", "read", "transfer", "deliver"]))
        if op == "step":
            a.step(_draw_message(data, a))  # type: ignore[arg-type]
        elif op == "tick":
            a.tick()
        elif op == "propose":
            try:
                term, index = a.propose(b"cmd")
                assert term == a.term and index == a.log.last_index()
            except (NotLeader, ProposalDropped):
                assert a.role != LEADER or a.transfer_target is not None
        elif op == "read":
            try:
                a.read_index(data.draw(st.integers(1, 100)))
            except NotLeader:
                assert a.role != LEADER
        elif op == "transfer":
            try:
                a.transfer_leadership(data.draw(st.sampled_from(["b", "c", "a", "zz", None])))
            except NotLeader:
                assert a.role != LEADER
            except ValueError:
                assert a.role == LEADER
        else:
            net.deliver()
        net.process()
        assert a.term >= last_term
        last_term = a.term
        assert a.role in (FOLLOWER, PRE_CANDIDATE, CANDIDATE, LEADER)
        assert (a.role == LEADER) == (a.leader == "a")
        assert a.applied_index <= a.commit_index <= a.log.last_index()
        assert a.log.unstable == []  # process() persisted everything
        hs = net.storage["a"].load()[0]
        assert (hs.term, hs.vote, hs.commit) == (a.term, a.vote, a.commit_index)
