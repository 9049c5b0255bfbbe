"""Deliberately broken Raft cores, for checking that the simulator catches them.

Each is a subclass of the real :class:`~raftlib.core.raft.Raft` that undoes
exactly one safety rule. They live only in the tests.

At the end: deliberately broken *pipelined runtimes*, subclasses of the
:class:`~raftlib.sim.simulator.Simulator` that break one rule of the Ready
contract (:mod:`raftlib.core.ready`) when they play a pipelined runtime.
"""

from __future__ import annotations

from collections.abc import Sequence

from raftlib.core import quorum
from raftlib.core.membership import check_change
from raftlib.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    RequestVoteResponse,
)
from raftlib.core.raft import LEADER, Raft
from raftlib.core.ready import ReadState, Ready
from raftlib.errors import MembershipChangePending, NotLeader, ProposalDropped
from raftlib.sim.node import SimPeer, SnapshotWrite
from raftlib.sim.simulator import Simulator
from raftlib.types import Entry, EntryKind, Membership


class CommitEarlierTermByCounting(Raft):
    """Commits whatever a majority holds, even an entry of an earlier term
    (the Figure 8 bug: §5.4.2 forbids counting replicas of old entries)."""

    def _maybe_commit(self) -> None:
        match = {nid: pr.match for nid, pr in self.progress.items()}
        index = quorum.committed_index(list(self.membership.voters), match)
        if index > self.log.committed:  # no "and log.term(index) == self.term"
            self.log.commit_to(index)
            self._bcast_needed = True
            if not self._is_voter() and not self.pending_membership_index():
                self._removed = True
            self._release_pending_reads()
            for nid, pr in self._followers():
                self._maybe_send_commit(nid, pr)


class VoteWithoutUpToDateCheck(Raft):
    """Grants (pre-)votes without the §5.4.1 check that the candidate's log
    is at least as up to date as the voter's."""

    def _handle_vote_request(self, msg: RequestVote) -> None:
        self.log.is_up_to_date = lambda last_index, last_term: True  # type: ignore[method-assign]
        try:
            super()._handle_vote_request(msg)
        finally:
            del self.log.is_up_to_date


class AckBeforePersist(Raft):
    """Sends votes and append acknowledgements with ``rd.messages``, i.e.
    before the vote or the entries they promise are on disk."""

    def _send_after_persist(self, msg: Message) -> None:
        if isinstance(msg, (AppendEntriesResponse, RequestVoteResponse)):
            self._send(msg)
        else:
            super()._send_after_persist(msg)


class NoConflictTruncation(Raft):
    """A follower keeps a conflicting suffix: it only appends the entries
    past its last index, yet acknowledges the whole AppendEntries."""

    def _first_new(self, entries: Sequence[Entry]) -> Sequence[Entry]:
        last = self.log.last_index()
        for i, e in enumerate(entries):
            if e.index > last:
                return entries[i:]
        return ()


class ReadWithoutLeadershipCheck(Raft):
    """Answers ReadIndex requests at once, without the heartbeat round that
    confirms a majority still follows it (thesis §6.4): a deposed leader that
    does not know it yet serves stale reads."""

    def _advance_reads(self) -> None:
        while self._read_rounds:
            rnd = self._read_rounds.pop(0)
            if self._open_round is rnd:
                self._open_round = None
            self._read_states.append(ReadState(rnd.index, tuple(rnd.request_ids)))


class KeepSuffixAfterSnapshot(Raft):
    """A follower installs a snapshot whose last entry it does not hold (its
    entry at the snapshot index has another term) but keeps its own entries
    after the snapshot index, instead of discarding the whole log (§7: only
    a log that holds the snapshot's last entry may keep what follows it)."""

    def _handle_snapshot(self, msg: InstallSnapshot) -> None:
        log = self.log
        if msg.index > log.committed and log.last_index() > msg.index and not log.matches(msg.index, msg.snapshot_term):
            suffix = log.entries(msg.index + 1, log.last_index() + 1)
            super()._handle_snapshot(msg)  # restores the log to the snapshot...
            log.append(suffix)  # ...then puts the conflicting suffix back
            self._note_appended(suffix)
        else:
            super()._handle_snapshot(msg)


class AckSnapshotBeforeInstall(Raft):
    """Acknowledges an InstallSnapshot with ``rd.messages``, i.e. before the
    snapshot is recorded in storage (and before the term it came with is)."""

    def _handle_snapshot(self, msg: InstallSnapshot) -> None:
        super()._handle_snapshot(msg)
        self._send(self._msgs_after_persist.pop())  # the acknowledgement it just queued


class IgnoresCompactionLimit(Raft):
    """Lets the runtime compact everything its snapshot covers, even entries
    a follower that is being sent an older snapshot needs next: that follower
    installs the snapshot and needs another one (an install loop)."""

    def compaction_limit(self) -> int:
        return self.snapshot.index if self.snapshot else 0


class MembershipChangeWithoutErrata(Raft):
    """A new leader may change the membership before it committed an entry
    of its own term (the rule the 2015 errata added to thesis §4.1): its
    change can overlap an uncommitted change of a deposed leader, two
    configurations with disjoint majorities, and a committed entry is lost.
    It still allows one uncommitted change at a time."""

    def propose_membership(self, new: Membership) -> tuple[int, int]:
        if self.role != LEADER:
            raise NotLeader(self.leader)
        if self.transfer_target is not None:
            raise ProposalDropped(f"leadership is being transferred to {self.transfer_target}")
        check_change(self.membership, new)
        # (no "committed an entry of its term" check)
        if self.pending_membership_index():
            raise MembershipChangePending(f"the membership change at index {self.pending_membership_index()} "
                                          f"has not committed yet")
        index = self.log.last_index() + 1
        self._append_local([Entry(self.term, index, EntryKind.CONFIG, new.encode())])
        return self.term, index


class UnsafeMembershipChanges(Raft):
    """Appends any configuration at any time: no errata rule, any number of
    uncommitted changes, and a change may add or remove several voters at
    once (only an empty voter set is refused). Consecutive configurations
    then need not share a majority."""

    def propose_membership(self, new: Membership) -> tuple[int, int]:
        if self.role != LEADER:
            raise NotLeader(self.leader)
        if self.transfer_target is not None:
            raise ProposalDropped(f"leadership is being transferred to {self.transfer_target}")
        if not new.voters or set(new.voters) & set(new.learners):
            raise ValueError("not a configuration")
        index = self.log.last_index() + 1
        self._append_local([Entry(self.term, index, EntryKind.CONFIG, new.encode())])
        return self.term, index


class RemovedLeaderCountsItself(Raft):
    """A leader that removed (or demoted) itself keeps counting its own log
    in commit majorities until the change commits, instead of managing a
    configuration that does not include it (thesis §4.2.2)."""

    def _maybe_commit(self) -> None:
        voters = [*self.membership.voters, *([] if self._is_voter() else [self.id])]
        match = {nid: pr.match for nid, pr in self.progress.items()}
        index = quorum.committed_index(voters, match)
        if index > self.log.committed and self.log.term(index) == self.term:
            self.log.commit_to(index)
            self._bcast_needed = True
            if not self._is_voter() and not self.pending_membership_index():
                self._removed = True
            self._release_pending_reads()
            for nid, pr in self._followers():
                self._maybe_send_commit(nid, pr)


MUTANTS: dict[str, type[Raft]] = {
    "commit-earlier-term": CommitEarlierTermByCounting,
    "vote-without-up-to-date-check": VoteWithoutUpToDateCheck,
    "ack-before-persist": AckBeforePersist,
    "no-conflict-truncation": NoConflictTruncation,
    "read-without-leadership-check": ReadWithoutLeadershipCheck,
    "keep-suffix-after-snapshot": KeepSuffixAfterSnapshot,
    "ack-snapshot-before-install": AckSnapshotBeforeInstall,
    "ignores-compaction-limit": IgnoresCompactionLimit,
    "membership-change-without-errata": MembershipChangeWithoutErrata,
    "unsafe-membership-changes": UnsafeMembershipChanges,
    "removed-leader-counts-itself": RemovedLeaderCountsItself,
}


# -- broken pipelined runtimes ---------------------------------------------------------------------


class AcksAfterPersist(Raft):
    """Not broken: answers every AppendEntries that matches in
    ``messages_after_persist``, with everything it holds, also a heartbeat
    that brings nothing new while an earlier Ready is still writing the
    entries the acknowledgement covers (the contract allows it: Readies are
    persisted, and their acknowledgements sent, in order). The real core
    answers such a heartbeat at once with what is already on disk, so a
    runtime that breaks that order for Readies with nothing to write is only
    caught with a core like this one."""

    def _ack_append(self, msg: AppendEntries, match: int, appended: bool) -> None:
        self._send_after_persist(AppendEntriesResponse(self.term, self.id, msg.src, True, match, read_ctx=msg.read_ctx))


class EagerAcksRuntime(Simulator):
    """Sends the ``messages_after_persist`` of a Ready with nothing to write
    (and reports it persisted) at once, although saves of earlier Readies
    are still in flight."""

    def _queue_save(self, p: SimPeer, rd: Ready, sync_now: bool) -> None:
        if p.saves and rd.snapshot is None and rd.hard_state is None and not rd.entries:
            self._persisted(p, [rd])
            return
        super()._queue_save(p, rd, sync_now)


class NoTermBarrierRuntime(Simulator):
    """Ignores ``persist_before_step`` on a Ready whose term or vote changed:
    it goes on stepping and ticking the core while the new term is still
    being written."""

    def _queue_save(self, p: SimPeer, rd: Ready, sync_now: bool) -> None:
        if rd.snapshot is None:
            rd.persist_before_step = False
        super()._queue_save(p, rd, sync_now)


class EarlyPersistedRuntime(Simulator):
    """Calls ``Raft.persisted(rd)`` when it takes the Ready instead of once
    the save is on disk (the acknowledgements still wait for the disk)."""

    def _queue_save(self, p: SimPeer, rd: Ready, sync_now: bool) -> None:
        p.raft.persisted(rd)
        super()._queue_save(p, rd, sync_now)

    def _report_persisted(self, core: Raft, rd: Ready) -> None:
        pass  # reported already


class EagerCompactionRuntime(Simulator):
    """Records a snapshot and compacts the log as soon as the snapshot file
    is durable, even when the snapshot covers entries a leader applied
    before its own save of them was done."""

    @staticmethod
    def _compactable(p: SimPeer, w: SnapshotWrite) -> bool:
        return True


RUNTIME_MUTANTS: dict[str, type[Simulator]] = {
    "eager-acks": EagerAcksRuntime,
    "no-term-barrier": NoTermBarrierRuntime,
    "early-persisted": EarlyPersistedRuntime,
    "eager-compaction": EagerCompactionRuntime,
}
