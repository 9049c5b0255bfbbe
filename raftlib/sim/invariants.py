"""The safety properties of Raft (Figure 3 of the paper), checked as the run goes.

Cheap checks run after every simulator step on the peer the step touched;
the O(log length) ones run every ``SimConfig.full_check_ticks`` ticks.

Global records (all are contiguous prefixes of the log, kept as lists where
position ``i - 1`` holds index ``i``):

* ``committed``: the entry at every index some peer has reported committed,
  with ``commit_term``, the term of the first peer seen committing it (the
  leader that committed it, since followers learn commits from leaders),
  rounded up to keep the list non-decreasing.
* ``applied``: the entry every peer applied at each index, across restarts,
  and ``chain``, the digest of the state after each index (what a snapshot
  at that index must hold).
* ``leader_of_term``: who led each term, over the whole run.
* ``predecessor``: for every (index, term) entry ever persisted, the term of
  the entry before it (inductive Log Matching, which holds across compaction).
* ``configs``: every committed configuration entry, in log order, with its
  decoded membership (the latest one is the committed configuration).

Membership changes: Election Safety and the log checks are global (they
hold for every peer that ever held a log, member or not). What depends on
a quorum uses the configuration in force where it is decided: a leader
that advances its commit index must have a majority of the voters of its
configuration in force (the latest in its log, committed or not) holding
that entry on disk (``commit-quorum``); every peer's configuration in force
is the latest configuration entry in its whole log (``membership-in-force``);
a snapshot's membership is the committed configuration at its index
(``snapshot-membership``); and a leader that is no longer a voter of a
committed configuration steps down (``removed-leader``).

Compacted prefixes: a peer whose log starts after a snapshot at index ``b``
holds the snapshot (``b``, its term) in place of entries ``1..b``. The
snapshot must cover committed entries only, with the committed term at
``b``; the checks then treat indexes ``1..b`` as holding the committed
entries (:meth:`InvariantChecker.entries`), so every comparison below sees
whole logs.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from ..core import quorum
from ..core.raft import LEADER
from ..types import Entry, EntryKind, Membership, NodeId, SnapshotMeta
from .node import GENESIS, SnapshotData, chain_step

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
        replay: str | None = None,
    ) -> None:
        self.invariant = invariant
        self.message = message
        self.seed = seed
        self.step = step
        self.time = time
        self.peers = peers
        self.trace = list(trace)
        self.replay = replay or f"python -m raftlib.sim --seed {seed} --peers {peers}  (with the same SimConfig)"
        """How to run it again: a command line, or a Python call when the run
        had settings or factories the command line cannot express."""
        super().__init__(self.headline())

    def headline(self) -> str:
        """One line: seed, step, invariant and message."""
        return f"seed {self.seed}: {self.invariant} violated at step {self.step} (t={self.time:.3f}): {self.message}"

    def format(self) -> str:
        """The headline, the replay command and the trace tail."""
        lines = [
            self.headline(),
            f"replay: {self.replay}",
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
    """Entries ``[lo, hi)`` of a live peer's log (``hi`` defaults to the end).

    ``lo`` must not be compacted; :meth:`InvariantChecker.entries` reads
    compacted prefixes too.
    """
    log = peer.raft.log
    if hi is None:
        hi = log.last_index() + 1
    return log.entries(lo, hi)


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
        self.chain: list[bytes] = []
        self.predecessor: dict[tuple[int, int], int] = {}
        self.machine_at: dict[int, tuple[str, bytes]] = {}
        """The state machine's snapshot bytes at an index, from the first peer that took one there."""
        self.watches: dict[str, LeaderWatch] = {}
        self.on_new_leader: Callable[[str, int], None] | None = None
        self.configs: list[tuple[Entry, Membership]] = []
        self.on_config_committed: Callable[[Entry, Membership], None] | None = None

    def committed_membership(self, index: int | None = None) -> Membership | None:
        """The latest committed configuration (at or before ``index``), or
        ``None`` if no configuration entry committed yet."""
        configs = self.configs
        if index is None:
            return configs[-1][1] if configs else None
        k = bisect.bisect_right([e.index for e, _ in configs], index)
        return configs[k - 1][1] if k else None

    # -- reading logs through compaction -------------------------------------------

    def entries(self, peer: SimPeer, lo: int = 1, hi: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)`` of a live peer's log (``hi`` defaults to the
        end); indexes its snapshot covers are read from the committed record."""
        log = peer.raft.log
        last = log.last_index()
        hi = last + 1 if hi is None else min(hi, last + 1)
        if lo >= hi:
            return []
        base = log.first_index() - 1
        out: list[Entry] = []
        if lo <= base:
            if base > len(self.committed):
                fail("log-matching", f"{peer.id}'s log starts after a snapshot at {base}, past every commit "
                                     f"({len(self.committed)})")
            out = self.committed[lo - 1 : min(hi - 1, base)]
            lo = base + 1
        if lo < hi:
            out.extend(log.entries(lo, hi))
        return out

    def entry_at(self, peer: SimPeer, index: int) -> Entry | None:
        log = peer.raft.log
        if index < 1 or index > log.last_index():
            return None
        return self.entries(peer, index, index + 1)[0]

    def _check_base(self, peer: SimPeer) -> None:
        """A compacted prefix ends at a committed entry, with its committed term."""
        log = peer.raft.log
        base = log.first_index() - 1
        if base == peer.base_seen:
            return
        peer.base_seen = base
        if base <= 0:
            return
        term = log.term(base)
        if base > len(self.committed):
            fail("log-matching", f"{peer.id}'s log starts after a snapshot at {term}/{base}, which is not committed "
                                 f"(highest commit seen: {len(self.committed)})")
        known = self.committed[base - 1]
        if known.term != term:
            fail("log-matching", f"{peer.id}'s log starts after a snapshot at {term}/{base}, but "
                                 f"{_show(known)} is committed there")

    # -- persisting ------------------------------------------------------------------

    def on_persist(self, peer: SimPeer, prev_term: int, entries: Sequence[Entry]) -> None:
        """Log Matching, inductive form: an entry (index, term) follows the same
        term everywhere it is stored (a compacted predecessor counts with the
        snapshot's term)."""
        pred = self.predecessor
        for e in entries:
            key = (e.index, e.term)
            known = pred.setdefault(key, prev_term)
            if known != prev_term:
                fail("log-matching",
                     f"{peer.id} persists {e.term}/{e.index} after an entry of term {prev_term} at index "
                     f"{e.index - 1}, but {e.term}/{e.index} follows term {known} wherever else it was stored")
            prev_term = e.term

    # -- after every step -----------------------------------------------------

    def observe(self, peer: SimPeer) -> None:
        """Check everything cheap about one live peer (nothing if it is down)."""
        core = peer.core
        if core is None:
            return
        watch = self.watches.get(peer.id)
        # A leader that stepped down during this step (its removal committed)
        # still answers for the commits it made in it.
        led = core.role == LEADER or (
            watch is not None and watch.term == core.term and watch.incarnation == peer.incarnation
        )
        if core.role == LEADER:
            self._observe_leader(peer)
        elif watch is not None:
            del self.watches[peer.id]
        log = core.log
        self._check_base(peer)
        commit = log.committed
        if commit < peer.commit_seen:
            fail("commit-monotonic", f"{peer.id}'s commit index went from {peer.commit_seen} back to {commit}")
        if commit > peer.commit_seen:
            if led:
                self._check_commit_quorum(peer, commit)
            self._record_commits(peer, peer.commit_seen + 1, commit)
            peer.commit_seen = commit
        if core.role == LEADER and not core.membership.is_voter(peer.id) and not core.pending_membership_index():
            fail("removed-leader",
                 f"{peer.id} still leads term {core.term} although the configuration removing it as a voter "
                 f"committed ({members_text(core.membership)})")
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
            self.watches[peer.id] = LeaderWatch(term, peer.incarnation, last, self.entry_at(peer, last))
            if self.on_new_leader is not None:
                self.on_new_leader(peer.id, term)
            return
        # Leader Append-Only, cheap form: the last entry seen is still there, unchanged.
        if last < watch.last_index:
            fail("leader-append-only",
                 f"leader {peer.id} (term {term}) shrank its log from {watch.last_index} to {last} entries")
        now = self.entry_at(peer, watch.last_index)
        if now != watch.last_entry:
            fail("leader-append-only",
                 f"leader {peer.id} (term {term}) overwrote index {watch.last_index}: "
                 f"{_show(watch.last_entry)} became {_show(now)}")
        if last != watch.last_index:
            watch.last_index = last
            watch.last_entry = self.entry_at(peer, last)

    def _check_commit_quorum(self, peer: SimPeer, commit: int) -> None:
        """A leader commits an entry only once a majority of the voters of its
        configuration in force holds it durably (on disk, or under a snapshot)."""
        core = peer.raft
        term = core.log.term(commit)
        voters = core.membership.voters
        holders = durable_holders(self.peers, voters, commit, term)
        if not quorum.has_quorum(voters, holders):
            fail("commit-quorum",
                 f"{peer.id} (leader of term {core.term}) committed {term}/{commit}, but only {holders or 'nobody'} "
                 f"of the voters {sorted(voters)} of its configuration hold it on disk")

    def _check_new_leader(self, peer: SimPeer, term: int) -> None:
        """Leader Completeness: a leader of ``term`` holds every entry committed in an earlier term."""
        n = bisect.bisect_left(self.commit_term, term)  # commit_term is non-decreasing
        if n == 0:
            return
        have = self.entries(peer, 1, min(n, peer.raft.log.last_index()) + 1)
        if have != self.committed[:n]:
            for i in range(n):
                mine = have[i] if i < len(have) else None
                if mine != self.committed[i]:
                    fail("leader-completeness",
                         f"{peer.id} became leader of term {term} without index {i + 1}, committed in term "
                         f"{self.commit_term[i]} as {_show(self.committed[i])} (its log has {_show(mine)})")

    def _record_commits(self, peer: SimPeer, lo: int, hi: int) -> None:
        """Log Matching on committed prefixes: every peer commits the same entries."""
        entries = self.entries(peer, lo, hi + 1)
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
            if e.kind is EntryKind.CONFIG:
                self._config_committed(peer, e)
            # Kept non-decreasing (a stale leader may legitimately commit the
            # next index in a lower term after a newer leader committed this
            # one); rounding up only makes the completeness check weaker.
            self.commit_term.append(max(term, self.commit_term[-1]) if self.commit_term else term)
            # Leader Completeness for late commits: leaders of later terms hold it already.
            for other, watch in self.watches.items():
                q = self.peers[other]
                if watch.term > term and other != peer.id and q.up and q.raft.term == watch.term:
                    mine = self.entry_at(q, i)
                    if mine != e:
                        fail("leader-completeness",
                             f"{peer.id} committed {_show(e)} in term {term}, but {other}, leader of the later "
                             f"term {watch.term}, has {_show(mine)} at index {i}")

    def _config_committed(self, peer: SimPeer, e: Entry) -> None:
        try:
            membership = Membership.decode(e.data)
        except ValueError:
            fail("membership-in-force", f"{peer.id} committed the configuration entry {_show(e)}, which does not "
                                        f"decode as a Membership")
        self.configs.append((e, membership))
        if self.on_config_committed is not None:
            self.on_config_committed(e, membership)

    def check_snapshot_meta(self, peer: SimPeer, meta: SnapshotMeta, how: str) -> None:
        """A snapshot's membership is the configuration committed at its index."""
        expected = self.committed_membership(meta.index)
        if expected is not None and meta.membership != expected:
            fail("snapshot-membership",
                 f"{peer.id} {how} a snapshot at {meta.term}/{meta.index} with membership "
                 f"{members_text(meta.membership)}, but {members_text(expected)} is the configuration committed there")

    def forget(self, peer_id: str) -> None:
        """A peer crashed: its leadership (if any) ended with its volatile state."""
        self.watches.pop(peer_id, None)

    # -- applying ----------------------------------------------------------------

    def on_apply(self, peer: SimPeer, e: Entry) -> None:
        """State Machine Safety: no two peers apply different entries at one index."""
        i = e.index
        if i != peer.applied + 1:
            fail("applied-monotonic", f"{peer.id} applied index {i} right after index {peer.applied}")
        chain = self.chain
        if i <= len(self.applied):
            if self.applied[i - 1] != e:
                fail("state-machine-safety",
                     f"{peer.id} applied {_show(e)} at index {i}, where {_show(self.applied[i - 1])} was applied before")
            before = chain[i - 2] if i > 1 else GENESIS
            peer.chain = chain[i - 1] if peer.chain == before else chain_step(peer.chain, e)
            if peer.chain != chain[i - 1]:
                fail("state-machine-safety",
                     f"{peer.id} applied index {i}, but its state differs from the state every other peer "
                     f"reached there (it was restored from a snapshot that did not match the applied prefix)")
        else:
            self.applied.append(e)
            peer.chain = chain_step(peer.chain, e)
            chain.append(peer.chain)
        if i <= len(self.committed) and self.committed[i - 1] != e:
            fail("state-machine-safety",
                 f"{peer.id} applied {_show(e)} at index {i}, but {_show(self.committed[i - 1])} is committed there")
        peer.applied = i

    # -- snapshots ----------------------------------------------------------------------

    def on_snapshot(self, peer: SimPeer, data: SnapshotData) -> None:
        """A peer captured its state: with a state machine, every peer's
        snapshot at one index must be the same bytes."""
        if data.machine is None:
            return
        first = self.machine_at.setdefault(data.index, (peer.id, data.machine))
        if first[1] != data.machine:
            fail("state-machine-determinism",
                 f"{first[0]} and {peer.id} both snapshot their state machines at index {data.index}, "
                 f"but the snapshots differ")

    def on_restore(self, peer: SimPeer, data: SnapshotData, how: str) -> None:
        """State Machine Safety across snapshots: a restored state is exactly
        the state of the globally applied prefix up to its index."""
        i = data.index
        if i > len(self.applied):
            fail("state-machine-safety",
                 f"{peer.id} {how} a snapshot at {data.term}/{i}, but no peer ever applied index {i}")
        if self.applied[i - 1].term != data.term:
            fail("state-machine-safety",
                 f"{peer.id} {how} a snapshot at {data.term}/{i}, but {_show(self.applied[i - 1])} was applied there")
        if self.chain[i - 1] != data.chain:
            fail("state-machine-safety",
                 f"{peer.id} {how} a snapshot at {data.term}/{i} whose state is not that of the applied prefix 1..{i}")
        if i < peer.applied:
            fail("applied-monotonic", f"{peer.id} {how} a snapshot at {i} after applying up to {peer.applied}")
        peer.applied = i
        peer.chain = data.chain

    # -- every few ticks ---------------------------------------------------------------

    def full_check(self, peers: Sequence[SimPeer]) -> None:
        """Pairwise Log Matching over whole logs (compacted prefixes read as
        the committed entries they cover), full Leader Append-Only snapshots,
        and every peer's storage snapshot present in its snapshot store."""
        for p in peers:
            recorded = p.disk.load()[1]
            if recorded is not None and (recorded.index, recorded.term) not in p.snapshots:
                fail("snapshot-durability",
                     f"{p.id}'s storage records the snapshot {recorded.term}/{recorded.index}, but its snapshot "
                     f"store does not hold it")
        logs = {p.id: self.entries(p) for p in peers if p.up}
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
            if not p.up:
                continue
            latest = next((e for e in reversed(logs[p.id]) if e.kind is EntryKind.CONFIG), None)
            in_force = p.raft.membership
            if latest is None:
                meta = p.raft.snapshot
                expected = meta.membership if meta is not None else Membership()
            else:
                expected = Membership.decode(latest.data)
            if in_force != expected:
                where = f"the entry {_show(latest)}" if latest is not None else "its snapshot (or nothing)"
                fail("membership-in-force",
                     f"{p.id} acts on the configuration {members_text(in_force)}, but the latest one in its log is "
                     f"{members_text(expected)} ({where})")
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


def members_text(m: Membership) -> str:
    """``voters s1,s2, learners s4`` for messages and the trace."""
    text = "voters " + (",".join(sorted(m.voters)) or "none")
    if m.learners:
        text += ", learners " + ",".join(sorted(m.learners))
    return text


def durable_holders(peers: Mapping[NodeId, SimPeer], voters: Iterable[NodeId], index: int, term: int) -> list[NodeId]:
    """The ``voters`` (sorted) whose disk holds the entry (index, term), or a snapshot covering it."""
    return [v for v in sorted(voters) if v in peers and _durably_holds(peers[v], index, term)]


def _durably_holds(p: SimPeer, index: int, term: int) -> bool:
    """Whether ``p``'s disk holds the entry (index, term), or a snapshot covering it."""
    disk = p.disk
    snap = disk.load()[1]
    if snap is not None and snap.index >= index:
        return snap.index > index or snap.term == term
    return disk.first_index() <= index <= disk.last_index() and disk.term(index) == term
