"""Figure 8 of the Raft paper, scripted step by step on a manual simulator.

Five peers; every leader appends a no-op when elected, so the paper's
"index 2" is our index 2 (the no-op of term 2) plus index 3 (a write):

(a) s1 leads term 2 and replicates indexes 2-3 to s2 only.
(b) s1 crashes; s5 wins term 3 with s3 and s4, appends its own 2-3, crashes.
(c) s1 restarts, wins term 4 with s2, s3 and s4, and replicates 2-3 (term 2)
    to s3 and s4: a majority holds them, yet they are NOT committed, because
    they are not from the current term (§5.4.2).
(d) s1 crashes; s5 restarts and wins term 5 with s2, s3 and s4, overwriting
    indexes 2-3 everywhere. Safe, since they were never committed.
(e) Alternatively s1 first replicates its term-4 no-op to a majority: that
    commits 2-4, and s5 can no longer win.

A core that commits old entries by counting replicas commits 2-3 in (c) and
then loses them in (d); the simulator reports Leader Completeness.
"""

from __future__ import annotations

import pytest

from raftlib.core.messages import AppendEntries, AppendEntriesResponse, Message, RequestVote, RequestVoteResponse
from raftlib.core.raft import LEADER, Raft
from raftlib.sim import InvariantViolation, SimConfig, Simulator

from .mutants import CommitEarlierTermByCounting

# One entry per AppendEntries, so that the script decides exactly which
# entries each follower receives.
CONFIG = SimConfig.no_faults(max_entries_per_message=1)


def elect(sim: Simulator, candidate: str, voters: set[str]) -> bool:
    """Time ``candidate`` out and let only ``voters`` hear its vote requests;
    retry (with a new term) until it wins. Returns whether it won."""
    core = sim.core(candidate)
    for _ in range(5):
        term = core.term
        while core.term == term:
            sim.tick(candidate)

        def request_to_voter(m: Message) -> bool:
            return isinstance(m, RequestVote) and m.src == candidate and m.dst in voters

        sim.deliver(request_to_voter)
        sim.drop(lambda m: isinstance(m, RequestVote) and m.src == candidate)
        sim.deliver(lambda m: isinstance(m, RequestVoteResponse) and m.dst == candidate)
        if core.role == LEADER:
            return True
    return False


def replicate(sim: Simulator, leader: str, followers: set[str], upto: int) -> None:
    """Let ``leader`` bring ``followers`` up to index ``upto`` (and learn that
    they did) while no follower accepts anything past ``upto``."""

    def accepts_beyond(m: AppendEntries) -> bool:
        if not m.entries or m.entries[-1].index <= upto:
            return False
        log = sim.log(m.dst)
        prev = m.prev_log_index
        return prev <= len(log) and (prev == 0 or log[prev - 1].term == m.prev_log_term)

    def allowed(m: Message) -> bool:
        if isinstance(m, AppendEntries):
            return m.src == leader and m.dst in followers and not accepts_beyond(m)
        return isinstance(m, AppendEntriesResponse) and m.dst == leader

    for _ in range(100):
        sim.drop(lambda m: isinstance(m, AppendEntries) and m.src == leader and m.dst not in followers)
        if sim.deliver(allowed):
            continue
        progress = sim.core(leader).progress
        if all(progress[f].match >= upto for f in followers):
            sim.drop(lambda m: m.src == leader or m.dst == leader)
            return
        sim.tick(leader)  # a heartbeat retries what was refused
    raise AssertionError(f"could not replicate to {followers}:\n{sim.status()}")


def terms(sim: Simulator, peer: str) -> list[int]:
    return [e.term for e in sim.log(peer)]


def play_until_c(core: type[Raft]) -> Simulator:
    sim = Simulator(8, 5, CONFIG, core_factory=core, manual=True)
    # (a)
    assert elect(sim, "s1", {"s2", "s3"})
    sim.propose("s1", b"x")
    replicate(sim, "s1", {"s2"}, 3)
    assert terms(sim, "s1") == terms(sim, "s2") == [1, 2, 2]
    # (b)
    sim.crash("s1")
    assert elect(sim, "s5", {"s3", "s4"})
    assert sim.core("s5").term == 3
    sim.propose("s5", b"y")
    sim.drop()
    assert terms(sim, "s5") == [1, 3, 3]
    sim.crash("s5")
    # (c)
    sim.restart("s1")
    assert elect(sim, "s1", {"s2", "s3", "s4"})
    assert sim.core("s1").term == 4
    replicate(sim, "s1", {"s3", "s4"}, 3)
    for peer in ("s1", "s2", "s3", "s4"):
        assert terms(sim, peer)[:3] == [1, 2, 2]
    return sim


def test_figure8_old_entries_on_a_majority_are_not_committed() -> None:
    sim = play_until_c(Raft)
    assert sim.core("s1").commit_index == 0  # indexes 2-3 sit on 4 of 5 logs, uncommitted
    # (d)
    sim.crash("s1")
    sim.restart("s5")
    assert elect(sim, "s5", {"s2", "s3", "s4"})
    assert sim.core("s5").term == 5
    sim.stabilize()
    for peer in ("s2", "s3", "s4", "s5"):
        assert terms(sim, peer) == [1, 3, 3, 5]
        assert sim.core(peer).commit_index == 4
    sim.restart("s1")
    sim.tick("s5", 2)  # heartbeat: s1 learns of term 5 and is repaired
    sim.stabilize()
    assert terms(sim, "s1") == [1, 3, 3, 5]
    sim.check()


def test_figure8_current_term_entry_commits_and_blocks_s5() -> None:
    sim = play_until_c(Raft)
    # (e)
    replicate(sim, "s1", {"s3", "s4"}, 4)
    assert sim.core("s1").commit_index == 4
    sim.crash("s1")
    sim.restart("s5")
    assert not elect(sim, "s5", {"s2", "s3", "s4"})
    sim.check()


def test_figure8_counting_replicas_of_old_entries_is_caught() -> None:
    sim = play_until_c(CommitEarlierTermByCounting)
    assert sim.core("s1").commit_index == 3  # the bug: committed by counting replicas
    sim.crash("s1")
    sim.restart("s5")
    with pytest.raises(InvariantViolation) as info:
        elect(sim, "s5", {"s2", "s3", "s4"})
    assert info.value.invariant == "leader-completeness"
    assert "s5 became leader of term 5 without index 2" in info.value.message
