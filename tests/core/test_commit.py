"""The commitment rules: §5.3 (majority) and §5.4.2 (only entries of the
leader's own term are committed by counting replicas; Figure 8)."""

from __future__ import annotations

from raftlib.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    RequestVote,
    RequestVoteResponse,
)
from raftlib.core.raft import LEADER
from raftlib.types import Entry, EntryKind

from .network import Network, config, of_type

S = ["s1", "s2", "s3", "s4", "s5"]


def campaign(net: Network, i: str, voters: set[str]) -> None:
    """Time ``i`` out and let only ``voters`` hear its vote request."""
    net.tick(i, net.nodes[i].randomized_timeout)
    net.deliver(lambda m: isinstance(m, RequestVote) and m.src == i and m.dst in voters)
    net.drop(lambda m: isinstance(m, RequestVote) and m.src == i)
    net.deliver(lambda m: isinstance(m, RequestVoteResponse) and m.dst == i)


def terms(net: Network, i: str) -> list[int]:
    return net.terms(i)


def test_commit_needs_a_majority_of_five() -> None:
    """§5.3: an entry is committed once the leader has replicated it on a
    majority: two copies out of five are not enough, three are."""
    net = Network(S)
    net.elect("s1")
    s1 = net.nodes["s1"]
    net.propose("s1", b"x")
    net.deliver(lambda m: m.dst == "s2")
    net.deliver(lambda m: m.dst == "s1")
    assert s1.commit_index == 2
    net.deliver(lambda m: m.dst == "s3")
    net.deliver(lambda m: m.dst == "s1")
    assert s1.commit_index == 3
    assert net.commands("s1") == [b"x"]


def test_follower_commit_is_capped_at_last_new_entry() -> None:
    """§5.3 (Figure 2, AppendEntries rule 5): a follower sets commitIndex =
    min(leaderCommit, index of last new entry); it never commits an entry
    the leader has not confirmed matches, even a stale one at that index."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    b = net.nodes["b"]
    # b holds a stale term-2 entry at index 3 ...
    b.step(AppendEntries(2, "a", "b", 2, 2, (Entry(2, 3, data=b"stale"),), 2))
    net.process()
    # ... and a term-3 leader whose commit index is 3 (its own entry 3/3)
    # sends a heartbeat that only vouches for index 2.
    b.step(AppendEntries(3, "c", "b", 2, 2, (), 3))
    assert b.commit_index == 2
    net.process()
    assert b"stale" not in net.commands("b")
    # With the real entry, the commit index advances.
    b.step(AppendEntries(3, "c", "b", 2, 2, (Entry(3, 3, EntryKind.NOOP),), 3))
    assert b.commit_index == 3
    net.process()
    assert net.log("b")[2].term == 3


def test_leader_does_not_commit_old_term_entry_by_counting_replicas() -> None:
    """§5.4.2: a leader does not conclude that an entry of a previous term is
    committed once it is stored on a majority; only once an entry of its own
    term is, which commits all before it."""
    net = Network(["a", "b", "c"], config=config(max_entries_per_message=1))
    net.elect("a")
    net.propose("a", b"x")  # 2/3
    net.deliver(lambda m: m.dst == "b")
    net.drop()
    net.isolate("a")
    campaign(net, "b", {"c"})
    b = net.nodes["b"]
    assert b.role == LEADER and b.term == 3
    assert terms(net, "b") == [1, 2, 2, 3]
    # c rejects b's first probe (it lacks index 3), then takes x (term 2) but
    # not b's no-op (term 3): one entry per message, and the second is lost.
    rejected = net.deliver(lambda m: m.dst == "c")
    assert [(m.prev_log_index, len(m.entries)) for m in of_type(AppendEntries, rejected)] == [(3, 1)]
    net.deliver(lambda m: m.dst == "b")
    net.deliver(lambda m: m.dst == "c")
    net.deliver(lambda m: m.dst == "b")
    net.drop(lambda m: m.dst == "c")
    assert terms(net, "c") == [1, 2, 2]
    assert b.progress["c"].match == 3 and b.progress["b"].match == 4
    # Index 3 is on b and c, a majority, but it is of term 2.
    assert b.commit_index == 2
    assert net.commands("b") == []
    # Once the no-op (term 3) is on c too (the leader retries it), both commit together.
    for _ in range(2 * net.config.election_ticks):
        net.tick("b")
        net.stabilize()
    assert b.commit_index == 4
    assert net.commands("b") == [b"x"]


def _figure8_through_c(net: Network) -> None:
    """Figure 8 (a)-(c), with the no-op each leader appends shifting indexes
    by one: index 2 is s1's term-2 no-op (committed everywhere), and the
    paper's "index 2" is index 3 here."""
    s1 = net.nodes["s1"]
    # (a) s1 leads term 2 and replicates x (index 3) to s2 only.
    net.elect("s1")
    assert [terms(net, i) for i in S] == [[1, 2]] * 5
    net.propose("s1", b"x")
    net.deliver(lambda m: m.dst == "s2")
    net.deliver(lambda m: m.dst == "s1")
    net.drop()
    assert terms(net, "s1") == terms(net, "s2") == [1, 2, 2]
    assert s1.commit_index == 2

    # (b) s1 crashes; s5 is elected in term 3 by s3, s4 and itself and
    # appends an entry at index 3 that nobody else receives.
    net.isolate("s1")
    campaign(net, "s5", {"s3", "s4"})
    s5 = net.nodes["s5"]
    assert s5.role == LEADER and s5.term == 3
    net.drop()
    assert terms(net, "s5") == [1, 2, 3]

    # (c) s5 crashes; s1 restarts, is elected in term 4 (after a failed
    # try in term 3) and replicates its term-2 entry to s3.
    net.heal()
    net.isolate("s5")
    net.restart("s1")
    s1 = net.nodes["s1"]
    campaign(net, "s1", {"s2", "s3", "s4"})
    assert s1.role != LEADER  # s3 and s4 already voted for s5 in term 3
    campaign(net, "s1", {"s2", "s3", "s4"})
    assert s1.role == LEADER and s1.term == 4
    assert terms(net, "s1") == [1, 2, 2, 4]
    net.drop(lambda m: m.dst == "s4")
    # s2 takes 4/4 directly; s3 first rejects, then takes 2/3 (one entry per
    # message); the follow-up with 4/4 to s3 is lost.
    net.deliver(lambda m: m.dst in ("s2", "s3"))
    net.deliver(lambda m: m.dst == "s1")
    net.deliver(lambda m: m.dst == "s3")
    net.deliver(lambda m: m.dst == "s1")
    net.drop(lambda m: m.dst != "s1")
    assert terms(net, "s2") == [1, 2, 2, 4]
    assert terms(net, "s3") == [1, 2, 2]
    assert {i: s1.progress[i].match for i in ("s1", "s2", "s3")} == {"s1": 4, "s2": 4, "s3": 3}


def test_figure8_old_term_entry_on_majority_is_not_committed_and_may_be_overwritten() -> None:
    """§5.4.2, Figure 8 (c)-(d): the term-2 entry is stored on a majority in
    (c), yet s1 must not commit it: in (d) s5 can still be elected (votes
    from s3, s4 and itself) and overwrite it with its term-3 entry."""
    net = Network(S, config=config(max_entries_per_message=1))
    _figure8_through_c(net)
    s1 = net.nodes["s1"]
    assert s1.commit_index == 2
    assert all(b"x" not in net.commands(i) for i in S)

    # (d) s1 crashes; s5 restarts and wins term 5 with s3 and s4.
    net.heal()
    net.isolate("s1")
    net.restart("s5")
    s5 = net.nodes["s5"]
    campaign(net, "s5", {"s2", "s3", "s4"})  # term 4: they all voted for s1
    assert s5.role != LEADER
    campaign(net, "s5", {"s2", "s3", "s4"})
    assert s5.role == LEADER and s5.term == 5
    grants = {m.src for m in net.sent if isinstance(m, RequestVoteResponse) and m.term == 5 and m.granted}
    assert grants == {"s3", "s4"}  # s2 holds 4/4, more up to date than s5
    net.stabilize()
    for _ in range(3):
        net.tick("s5")
        net.stabilize()
    for i in ("s2", "s3", "s4", "s5"):
        assert terms(net, i) == [1, 2, 3, 5], i
    # The entry that sat on a majority in (c) is gone; nobody ever applied it.
    assert all(b"x" not in net.commands(i) for i in S)
    assert s5.commit_index == 4


def test_figure8_entry_of_current_term_commits_earlier_ones() -> None:
    """§5.4.2, Figure 8 (e): if s1 replicates an entry of its current term
    on a majority before crashing, that entry and the term-2 entry before it
    are committed, and s5 can no longer win an election."""
    net = Network(S, config=config(max_entries_per_message=1))
    _figure8_through_c(net)
    s1 = net.nodes["s1"]
    assert s1.commit_index == 2
    # s1 resends 4/4 to s3 (heartbeat round) and hears back.
    for _ in range(2 * net.config.election_ticks):
        net.tick("s1")
        net.deliver(lambda m: m.dst in ("s1", "s3"))
        net.drop(lambda m: m.dst in ("s2", "s4"))
        if s1.commit_index == 4:
            break
    assert terms(net, "s3") == [1, 2, 2, 4]
    assert s1.commit_index == 4
    assert net.commands("s1") == [b"x"]
    applied = [(e.term, e.index) for e in net.applied["s1"]]
    assert applied[-2:] == [(2, 3), (4, 4)]

    net.heal()
    net.isolate("s1")
    net.restart("s5")
    s5 = net.nodes["s5"]
    for _ in range(3):
        campaign(net, "s5", {"s2", "s3", "s4"})
        assert s5.role != LEADER
    for i in ("s2", "s3"):
        assert terms(net, i)[:4] == [1, 2, 2, 4]


def test_commit_index_never_decreases_on_leader() -> None:
    """§5.3: committed entries stay committed; late or duplicate acks never
    lower the leader's commit index."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    a = net.nodes["a"]
    seen = []
    for k in range(5):
        net.propose("a", b"%d" % k)
        net.stabilize()
        seen.append(a.commit_index)
        a.step(AppendEntriesResponse(2, "b", "a", True, 2))
        a.step(AppendEntriesResponse(2, "c", "a", True, 1))
        seen.append(a.commit_index)
    assert seen == sorted(seen) and seen[-1] == 7
    rd = a.ready()
    assert of_type(AppendEntries, rd.messages) == [] or all(not m.entries for m in of_type(AppendEntries, rd.messages))


def test_leader_applies_what_a_quorum_of_followers_holds_before_its_own_save() -> None:
    """Thesis §10.2.1: the leader's own copy need not be on its disk for an
    entry to commit, when a quorum of followers has it; the leader hands it
    out for applying at once. A follower applies only what its own disk
    holds, even when the leader says it is committed."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    a, b = net.nodes["a"], net.nodes["b"]
    first = a.log.last_index() + 1
    a.propose_batch([b"x"])
    rd = a.ready()  # the leader's save of x starts, and does not finish
    assert [e.index for e in rd.entries] == [first]
    a.accept(rd)
    for m in rd.messages:
        net.nodes[m.dst].step(m)
    net.process()  # both followers save x and acknowledge it
    for m in [m for m in net.inflight if m.dst == "a"]:
        a.step(m)
    net.inflight = [m for m in net.inflight if m.dst != "a"]
    assert a.log.stable_last_index() < first
    assert a.commit_index == first
    assert a.has_ready()
    applied = a.ready()
    assert [e.data for e in applied.committed_entries] == [b"x"]
    a.accept(applied)
    # A follower told that its newest entry is committed applies it only
    # once its own save of it is done.
    term = a.term
    b.step(AppendEntries(term, "a", "b", first, term, (Entry(term, first + 1, data=b"y"),), first + 1))
    follower_rd = b.ready()
    assert [e.data for e in follower_rd.entries] == [b"y"]
    assert b.commit_index == first + 1
    assert all(e.index <= first for e in follower_rd.committed_entries)
    b.accept(follower_rd)
    assert not b.log.has_next_committed()
    b.persisted(follower_rd)
    assert [e.data for e in b.ready().committed_entries] == [b"y"]
