"""The safety properties of Raft (Figure 3 of the paper), checked as the run goes.

Cheap checks run after every simulator step on the peer the step touched;
the O(log length) ones run every ``SimConfig.full_check_ticks`` ticks.

Global records (all are contiguous prefixes of the log, kept as lists where
position ``i - 1`` holds index ``i``):

* ``committed``: the entry at every index some peer has reported committed,
  with ``commit_term``, the term of the first peer seen committing it (the
  leader that committed it, since followers learn commits from leaders),
  rounded up to keep the list non-decreasing.
* ``applied``: the entry every peer applied at each index, across restarts.
* ``leader_of_term``: who led each term, over the whole run.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from ..core.raft import LEADER
from ..types import Entry, EntryKind

if TYPE_CHECKING:
    from .node import SimPeer


class InvariantViolation(Exception):
    """A property of Raft does not hold in a simulated run.

    Carries everything needed to understand and replay it: the ``seed``, the
    simulator ``step`` and virtual ``time`` at which it was seen, the
    ``invariant`` name, a ``message`` and ``trace``, the last events
    (formatted with the messages' ``describe()``).
    """

    def __init__(
        self,
        invariant: str,
        message: str,
        *,
        seed: int,
        step: int,
        time: float,
        peers: int,
        trace: Sequence[str] = (),
    ) -> None:
        self.invariant = invariant
        self.message = message
        self.seed = seed
        self.step = step
        self.time = time
        self.peers = peers
        self.trace = list(trace)
        super().__init__(self.headline())

    def headline(self) -> str:
        """One line: seed, step, invariant and message."""
        return f"seed {self.seed}: {self.invariant} violated at step {self.step} (t={self.time:.3f}): {self.message}"

    def format(self) -> str:
        """The headline, the replay command and the trace tail."""
        lines = [
            self.headline(),
            f"replay: python -m raftlib.sim --seed {self.seed} --peers {self.peers}  (with the same SimConfig)",
            f"last {len(self.trace)} events:",
        ]
        lines.extend("  " + t for t in self.trace)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


class Failure(Exception):
    """Raised inside the checker; the simulator turns it into an
    :class:`InvariantViolation` with the run's context."""

    def __init__(self, invariant: str, message: str) -> None:
        super().__init__(f"{invariant}: {message}")
        self.invariant = invariant
        self.message = message


def fail(invariant: str, message: str) -> NoReturn:
    raise Failure(invariant, message)


def log_entries(peer: SimPeer, lo: int = 1, hi: int | None = None) -> list[Entry]:
    """Entries ``[lo, hi)`` of a live peer's log (``hi`` defaults to the end)."""
    log = peer.raft.log
    if hi is None:
        hi = log.last_index() + 1
    return log.entries(lo, hi)


def entry_at(peer: SimPeer, index: int) -> Entry | None:
    log = peer.raft.log
    if index < 1 or index > log.last_index():
        return None
    return log.entries(index, index + 1)[0]


def _show(e: Entry | None) -> str:
    """``term/index/KIND`` (and the data of a NORMAL entry) for messages."""
    if e is None:
        return "nothing"
    data = f" {e.data!r}" if e.data and e.kind is EntryKind.NORMAL else ""
    return f"{e.term}/{e.index}/{e.kind.name}{data}"


@dataclass(slots=True)
class LeaderWatch:
    """What we know of a peer's log while it leads one term (Leader Append-Only)."""

    term: int
    incarnation: int
    last_index: int
    last_entry: Entry | None
    snapshot: list[Entry] = field(default_factory=list)


class InvariantChecker:
    """Holds the run-wide records and checks each property against them."""

    def __init__(self, peers: dict[str, SimPeer]) -> None:
        self.peers = peers
        self.leader_of_term: dict[int, str] = {}
        self.committed: list[Entry] = []
        self.commit_term: list[int] = []
        self.applied: list[Entry] = []
        self.watches: dict[str, LeaderWatch] = {}
        self.on_new_leader: Callable[[str, int], None] | None = None

    # -- after every step -----------------------------------------------------

    def observe(self, peer: SimPeer) -> None:
        """Check everything cheap about one live peer."""
        core = peer.raft
        if core.role == LEADER:
            self._observe_leader(peer)
        elif peer.id in self.watches:
            del self.watches[peer.id]
        log = core.log
        commit = log.committed
        if commit < peer.commit_seen:
            fail("commit-monotonic", f"{peer.id}'s commit index went from {peer.commit_seen} back to {commit}")
        if commit > peer.commit_seen:
            self._record_commits(peer, peer.commit_seen + 1, commit)
            peer.commit_seen = commit
        if log.applied < peer.core_applied_seen:
            fail("applied-monotonic", f"{peer.id}'s applied index went from {peer.core_applied_seen} back to {log.applied}")
        peer.core_applied_seen = log.applied

    def _observe_leader(self, peer: SimPeer) -> None:
        core = peer.raft
        term = core.term
        holder = self.leader_of_term.setdefault(term, peer.id)
        if holder != peer.id:
            fail("election-safety", f"both {holder} and {peer.id} became leader in term {term}")
        watch = self.watches.get(peer.id)
        last = core.log.last_index()
        if watch is None or watch.term != term or watch.incarnation != peer.incarnation:
            self._check_new_leader(peer, term)
            self.watches[peer.id] = LeaderWatch(term, peer.incarnation, last, entry_at(peer, last))
            if self.on_new_leader is not None:
                self.on_new_leader(peer.id, term)
            return
        # Leader Append-Only, cheap form: the last entry seen is still there, unchanged.
        if last < watch.last_index:
            fail("leader-append-only",
                 f"leader {peer.id} (term {term}) shrank its log from {watch.last_index} to {last} entries")
        now = entry_at(peer, watch.last_index)
        if now != watch.last_entry:
            fail("leader-append-only",
                 f"leader {peer.id} (term {term}) overwrote index {watch.last_index}: "
                 f"{_show(watch.last_entry)} became {_show(now)}")
        if last != watch.last_index:
            watch.last_index = last
            watch.last_entry = entry_at(peer, last)

    def _check_new_leader(self, peer: SimPeer, term: int) -> None:
        """Leader Completeness: a leader of ``term`` holds every entry committed in an earlier term."""
        n = bisect.bisect_left(self.commit_term, term)  # commit_term is non-decreasing
        if n == 0:
            return
        have = log_entries(peer, 1, min(n, peer.raft.log.last_index()) + 1)
        if have != self.committed[:n]:
            for i in range(n):
                mine = have[i] if i < len(have) else None
                if mine != self.committed[i]:
                    fail("leader-completeness",
                         f"{peer.id} became leader of term {term} without index {i + 1}, committed in term "
                         f"{self.commit_term[i]} as {_show(self.committed[i])} (its log has {_show(mine)})")

    def _record_commits(self, peer: SimPeer, lo: int, hi: int) -> None:
        """Log Matching on committed prefixes: every peer commits the same entries."""
        entries = log_entries(peer, lo, hi + 1)
        if len(entries) != hi - lo + 1:
            fail("commit-past-log", f"{peer.id} claims commit index {hi} but its log ends at {lo + len(entries) - 1}")
        known = len(self.committed)
        term = peer.raft.term
        for e in entries:
            i = e.index
            if i <= known:
                if self.committed[i - 1] != e:
                    fail("log-matching",
                         f"{peer.id} committed {_show(e)} at index {i}, but {_show(self.committed[i - 1])} "
                         f"was committed there before (term {self.commit_term[i - 1]})")
                continue
            self.committed.append(e)
            # Kept non-decreasing (a stale leader may legitimately commit the
            # next index in a lower term after a newer leader committed this
            # one); rounding up only makes the completeness check weaker.
            self.commit_term.append(max(term, self.commit_term[-1]) if self.commit_term else term)
            # Leader Completeness for late commits: leaders of later terms hold it already.
            for other, watch in self.watches.items():
                q = self.peers[other]
                if watch.term > term and other != peer.id and q.up and q.raft.term == watch.term:
                    mine = entry_at(q, i)
                    if mine != e:
                        fail("leader-completeness",
                             f"{peer.id} committed {_show(e)} in term {term}, but {other}, leader of the later "
                             f"term {watch.term}, has {_show(mine)} at index {i}")

    def forget(self, peer_id: str) -> None:
        """A peer crashed: its leadership (if any) ended with its volatile state."""
        self.watches.pop(peer_id, None)

    # -- applying ----------------------------------------------------------------

    def on_apply(self, peer: SimPeer, e: Entry) -> None:
        """State Machine Safety: no two peers apply different entries at one index."""
        i = e.index
        if i != peer.applied + 1:
            fail("applied-monotonic", f"{peer.id} applied index {i} right after index {peer.applied}")
        if i <= len(self.applied):
            if self.applied[i - 1] != e:
                fail("state-machine-safety",
                     f"{peer.id} applied {_show(e)} at index {i}, where {_show(self.applied[i - 1])} was applied before")
        else:
            self.applied.append(e)
        if i <= len(self.committed) and self.committed[i - 1] != e:
            fail("state-machine-safety",
                 f"{peer.id} applied {_show(e)} at index {i}, but {_show(self.committed[i - 1])} is committed there")
        peer.applied = i

    # -- every few ticks ---------------------------------------------------------------

    def full_check(self, peers: Sequence[SimPeer]) -> None:
        """Pairwise Log Matching over whole logs, and full Leader Append-Only snapshots."""
        logs = {p.id: log_entries(p) for p in peers if p.up}
        ids = sorted(logs)
        for x, a_id in enumerate(ids):
            a = logs[a_id]
            for b_id in ids[x + 1:]:
                b = logs[b_id]
                i = min(len(a), len(b)) - 1
                while i >= 0 and a[i].term != b[i].term:
                    i -= 1
                if i >= 0 and a[: i + 1] != b[: i + 1]:
                    j = next(k for k in range(i + 1) if a[k] != b[k])
                    fail("log-matching",
                         f"{a_id} and {b_id} agree on the term of index {i + 1} ({a[i].term}) but differ at "
                         f"index {j + 1}: {_show(a[j])} vs {_show(b[j])}")
        for p in peers:
            watch = self.watches.get(p.id)
            if watch is None or not p.up:
                continue
            log = logs[p.id]
            snap = watch.snapshot
            if log[: len(snap)] != snap:
                j = next(k for k in range(len(snap)) if k >= len(log) or log[k] != snap[k])
                fail("leader-append-only",
                     f"leader {p.id} (term {watch.term}) changed index {j + 1}: {_show(snap[j])} became "
                     f"{_show(log[j] if j < len(log) else None)}")
            watch.snapshot = log
