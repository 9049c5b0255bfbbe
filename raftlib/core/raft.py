"""The Raft consensus algorithm as a pure, deterministic state machine.

Rule 1: nothing here awaits, sleeps, reads a clock, touches a socket or a
file, or draws randomness from anywhere but the injected ``random.Random``.
Time enters only through :meth:`Raft.tick`, input only through
:meth:`Raft.step`, :meth:`Raft.propose` and :meth:`Raft.read_index`.

Rule 2: every side effect leaves through :meth:`Raft.ready` and is confirmed
through :meth:`Raft.advance`. A message that promises something is on disk
(a vote, an acknowledgement) is queued in ``messages_after_persist`` and the
runtime sends it only after the matching ``save`` returned.

Theory of operation. Role behaviour lives in one place: ``_become_*`` swaps
``self._step_role`` and ``self._tick_role``. Term handling common to every
message happens in :meth:`step` before the role handler sees it. The leader
tracks each follower in a :class:`Progress`; proposals only mark the leader
dirty, and the actual AppendEntries are built in :meth:`ready`, so a burst of
proposals between two Readies travels as one message per follower.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Callable, Sequence

from ..config import Config
from ..errors import LogCompacted, MembershipChangePending, NotLeader, ProposalDropped
from ..types import Entry, EntryKind, HardState, Membership, NodeId, SnapshotMeta, make_entry
from . import quorum
from .membership import check_change
from .log import RaftLog
from .messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from .progress import Progress, ProgressState
from .ready import ReadState, Ready, SoftState

_CONFIG = EntryKind.CONFIG
"""A local name: looking up an enum member on its class takes about 0.1 µs."""

if TYPE_CHECKING:
    from storage_adapters.protocol import LogStorage

FOLLOWER = "follower"
PRE_CANDIDATE = "pre-candidate"
CANDIDATE = "candidate"
LEADER = "leader"

_NULL_LOGGER = logging.getLogger("raftlib.core")

INPUT_WARNING = {"raftlib_input": True}
"""``extra`` of a warning about another peer's message: one peer can send
such messages as fast as it likes, so the runtime may hold repeats back."""

MAX_TERM_STEP = 2**24
"""The most one message raises this peer's term by. Terms grow by one per
election, so no correct peer is this far ahead of another (it would take
some 16 million elections). A message further ahead raises the term by this
much and is dropped: a stray message whose term is near the largest the
wire carries (2**63-1) cannot leave the cluster without a term to elect in
(a stranger would need some 2**39 messages to get there), while a peer that
is really that far behind still catches up, by this much per message."""


class _ReadRound:
    __slots__ = ("ctx", "index", "request_ids")

    def __init__(self, ctx: int, index: int) -> None:
        self.ctx = ctx
        self.index = index
        self.request_ids: list[int] = []


class Raft:
    """One peer's Raft state machine.

    ``storage`` is read synchronously (never written: writes leave through
    :meth:`ready`). ``rng`` drives election timeouts and must be the only
    source of randomness, so that a seeded run replays exactly.
    """

    def __init__(
        self,
        node_id: NodeId,
        storage: LogStorage,
        config: Config | None = None,
        rng: random.Random | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.id = node_id
        self.config = (config or Config()).validate()
        self.rng = rng if rng is not None else random.Random(self.config.seed)
        self.logger = logger or _NULL_LOGGER
        self.storage = storage

        hs, snap = storage.load()
        applied = snap.index if snap else 0
        self.log = RaftLog(storage, hs.commit, applied)
        self.term = hs.term
        self.vote: NodeId | None = hs.vote
        self._prev_hard = HardState(hs.term, hs.vote, self.log.committed)

        # Membership: every configuration entry in the log, oldest first, on top
        # of the one in the snapshot. The latest one is in force, committed or not.
        self.snapshot: SnapshotMeta | None = snap
        """The latest snapshot this peer holds (what a leader sends to laggards)."""
        self._snapshot_to_install: SnapshotMeta | None = None
        self._snapshot_membership = snap.membership if snap else Membership()
        self._snapshot_membership_index = snap.index if snap else 0
        self._config_history: list[tuple[int, Membership]] = []
        self._load_config_history()

        self.role = FOLLOWER
        self.leader: NodeId | None = None
        self.progress: dict[NodeId, Progress] = {}
        self._leaving: dict[NodeId, int] = {}
        """Leader: removed members still sent the log, with the index of the entry removing them."""
        self._leaving_since: dict[NodeId, int] = {}
        """Leader: the tick at which a removed member's removal was seen committed."""
        self._removed = False
        """Leader: the entry removing this peer committed; step down after the current input."""
        self.removed_at = 0
        """Non-zero when a member answered this peer's vote request saying that
        its committed configuration at this index leaves this peer out: this
        peer was removed while it could not hear of it (it was down or cut
        off). It does not campaign until a leader contacts it again (as one
        does once the peer is added back)."""
        self.votes: dict[NodeId, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self._reset_randomized_timeout()

        self._msgs: list[Message] = []
        self._msgs_after_persist: list[Message] = []
        self._read_states: list[ReadState] = []
        self._read_rounds: list[_ReadRound] = []
        self._read_seq = 0
        self._now = 0
        """Ticks since this core was created (the leader lease's clock)."""
        self._led_since = 0
        """Leader: the tick at which this peer became leader."""
        self._seq_ticks: dict[int, int] = {}
        """Leader: for recent read contexts, the tick at which each came into use."""
        self._open_round: _ReadRound | None = None
        self._pending_reads: list[int] = []  # waiting for this term's first commit
        self._bcast_needed = False
        self._prev_soft = SoftState(self.role, self.leader, self.term)
        self.transfer_target: NodeId | None = None
        # Counters for Peer.metrics(): they only ever grow, and cost one add
        # per campaign, never anything per message or entry.
        self.pre_votes_started = 0
        """Pre-vote rounds this core began (thesis §9.6): each may lead to an election or not."""
        self.elections_started = 0
        """Times this core became candidate (a new term, its own vote in it)."""
        self.elections_won = 0
        """Times this core became leader."""

        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick_role: Callable[[], None] = self._tick_election

    # -- public API ------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        """The configuration in force (the latest one in the log)."""
        return self._config_history[-1][1] if self._config_history else self._snapshot_membership

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    def is_leader(self) -> bool:
        return self.role == LEADER

    def bootstrap(self, membership: Membership) -> None:
        """Start a brand-new cluster: the first log entry holds ``membership``.

        Only valid on an empty log in term 0; raises ``ValueError`` otherwise.
        Every founding member may be bootstrapped with the same membership:
        they all write the identical entry (term 1, index 1).
        """
        if self.log.last_index() != 0 or self.term != 0:
            raise ValueError("bootstrap needs an empty log")
        if not membership.voters:
            raise ValueError("a cluster needs at least one voter")
        self.term = 1
        self._append_local([Entry(1, 1, EntryKind.CONFIG, membership.encode())])

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._now += 1
        self._tick_role()

    def step(self, msg: Message) -> None:
        """Feed one message from a peer into the state machine."""
        if msg.dst != self.id:
            self.logger.debug("%s: dropping message for %s", self.id, msg.dst)
            return
        problem = "it claims to come from this peer" if msg.src == self.id else _malformed(msg)
        if problem:
            self.logger.warning("%s: dropping malformed message from %s: %s", self.id, msg.src, problem,
                                extra=INPUT_WARNING)
            return
        if isinstance(msg, RequestVote):
            removed = self._removal_index(msg.src)
            if removed and not self.log.is_up_to_date(msg.last_log_index, msg.last_log_term):
                # Whatever the terms: a removed peer must neither disrupt the
                # cluster with its term nor campaign forever without knowing.
                # A peer removed while it could not hear of it lacks the
                # committed entry that removed it, so its log is behind ours;
                # a candidate whose log is not behind knows a configuration we
                # have not seen (one that adds it back): this peer is the one
                # behind, and the request goes the usual way.
                self.logger.info("%s: %s is not a member since the configuration at %d; telling it",
                                 self.id, msg.src, removed)
                self._send(RequestVoteResponse(self.term, self.id, msg.src, False, msg.pre_vote, removed))
                return
        elif isinstance(msg, RequestVoteResponse) and msg.removed:
            self._heed_removal(msg)
            return
        if msg.term > self.term:
            if isinstance(msg, RequestVote) and not msg.transfer and self._in_leader_lease():
                # §9.6 (thesis): a peer that heard from a live leader within the
                # minimum election timeout ignores vote requests, so a member
                # that was cut off cannot depose a healthy leader.
                self.logger.debug("%s: ignoring %s (leader lease)", self.id, msg.describe())
                return
            if isinstance(msg, RequestVote) and msg.pre_vote:
                pass  # a pre-vote never changes our term
            elif isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.granted:
                pass  # granted pre-votes carry the term we would campaign in
            elif msg.term - self.term > MAX_TERM_STEP:
                # No correct peer is that far ahead; one that claims to be
                # must not take this peer near the largest term the wire
                # carries, past which no election could succeed.
                step = self.term + MAX_TERM_STEP
                self.logger.warning("%s: dropping %s: its term is more than %d above ours; raising ours to %d only",
                                    self.id, msg.describe(), MAX_TERM_STEP, step, extra=INPUT_WARNING)
                self._become_follower(step, None)
                return
            else:
                leader = msg.src if isinstance(msg, (AppendEntries, TimeoutNow)) else None
                self._become_follower(msg.term, leader)
        elif msg.term < self.term:
            self._step_stale(msg)
            return
        if isinstance(msg, RequestVote):
            self._handle_vote_request(msg)
            return
        self._step_role(msg)
        if self._removed:
            self._step_down_removed()

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append a user command; returns its (term, index).

        Raises :class:`NotLeader` if this peer is not the leader, and
        :class:`ProposalDropped` during a leadership transfer.
        """
        return self.propose_batch([data])[0]

    def propose_batch(
        self, commands: Sequence[bytes], kind: EntryKind = EntryKind.NORMAL, kinds: Sequence[EntryKind] | None = None
    ) -> list[tuple[int, int]]:
        """Append several commands at once; returns (term, index) of each.

        Every entry is of ``kind``, or ``kinds[i]`` for the i-th if given
        (``NORMAL`` or ``CLIENT``: configurations go through
        :meth:`propose_membership`).
        """
        if kinds is not None and (len(kinds) != len(commands) or EntryKind.CONFIG in kinds):
            raise ValueError("kinds must give one non-CONFIG kind per command")
        if self.role != LEADER:
            raise NotLeader(self.leader)
        if self.transfer_target is not None:
            raise ProposalDropped(f"leadership is being transferred to {self.transfer_target}")
        if not commands:
            return []
        first = self.log.last_index() + 1
        if kinds is None:
            entries = [make_entry(self.term, first + i, kind, data) for i, data in enumerate(commands)]
        else:
            entries = [make_entry(self.term, first + i, k, data) for i, (k, data) in enumerate(zip(kinds, commands))]
        self._append_local(entries)
        return [(self.term, e.index) for e in entries]

    def propose_membership(self, new: Membership) -> tuple[int, int]:
        """Append a configuration entry changing the membership to ``new``;
        returns its (term, index). It takes effect at once (before it commits).

        ``new`` may differ from the configuration in force by at most one
        voter (any learners may change); see :mod:`raftlib.core.membership`.
        Raises :class:`NotLeader`; :class:`ProposalDropped` during a
        leadership transfer; :class:`MembershipChangePending` while another
        change is uncommitted or this leader has not yet committed an entry
        of its term (retry shortly); ``ValueError`` for an unsafe change.
        """
        if self.role != LEADER:
            raise NotLeader(self.leader)
        if self.transfer_target is not None:
            raise ProposalDropped(f"leadership is being transferred to {self.transfer_target}")
        check_change(self.membership, new)
        if not self._committed_in_current_term():
            raise MembershipChangePending("the new leader has not committed an entry of its term yet")
        if self._config_history and self._config_history[-1][0] > self.log.committed:
            raise MembershipChangePending(
                f"the membership change at index {self._config_history[-1][0]} has not committed yet"
            )
        index = self.log.last_index() + 1
        self._append_local([Entry(self.term, index, EntryKind.CONFIG, new.encode())])
        return self.term, index

    def pending_membership_index(self) -> int:
        """Index of the latest configuration entry if it is not committed yet, else 0."""
        if self._config_history and self._config_history[-1][0] > self.log.committed:
            return self._config_history[-1][0]
        return 0

    def caught_up(self, node_id: NodeId, max_lag: int) -> bool:
        """Leader only: whether ``node_id`` is being replicated to and is at most
        ``max_lag`` entries behind this leader's log (ready for promotion)."""
        pr = self.progress.get(node_id) if self.role == LEADER else None
        return (
            pr is not None
            and pr.state is ProgressState.REPLICATE
            and self.log.last_index() - pr.match <= max_lag
        )

    def recent_contact(self) -> tuple[frozenset[NodeId], frozenset[NodeId]]:
        """Leader only: ``(heard, unsure)``. ``heard`` is this leader and the
        members that answered it within the last election timeout (the
        activity CheckQuorum relies on); ``unsure``, those it has not heard
        from in its term while it has led for less than an election timeout
        (their first answers may be on the way). Both are empty on a
        non-leader."""
        if self.role != LEADER:
            return frozenset(), frozenset()
        window = self.config.election_ticks
        heard, unsure = {self.id}, set()
        for nid, pr in self._followers():
            if pr.heard_at is not None and self._now - pr.heard_at < window:
                heard.add(nid)
            elif pr.heard_at is None and self._now - self._led_since < window:
                unsure.add(nid)
        return frozenset(heard), frozenset(unsure)

    def read_index(self, request_id: int) -> None:
        """Ask for a linearizable read point (ReadIndex, thesis §6.4).

        A :class:`ReadState` naming ``request_id`` appears in a later Ready once
        a majority confirmed this peer still leads. All requests made between
        two Readies share one confirmation round. Raises :class:`NotLeader`.
        """
        if self.role != LEADER:
            raise NotLeader(self.leader)
        if not self._committed_in_current_term():
            self._pending_reads.append(request_id)
            return
        self._add_read(request_id)

    def lease_read_index(self) -> int | None:
        """The commit index, if this leader's lease makes it safe to read there
        without a round of heartbeats; ``None`` if it must use :meth:`read_index`.

        With CheckQuorum on, a follower ignores vote requests for an election
        timeout after it last heard from its leader. So once a majority has
        acknowledged a message sent at tick ``t``, no other leader can exist
        before ``t + election_ticks`` on their clocks. The lease ends a tenth
        of that earlier (and a tick before), which assumes the peers' clocks
        run at rates within 10 % of each other. Raises :class:`NotLeader`, and
        ``ValueError`` if ``check_quorum`` is off.
        """
        if self.role != LEADER:
            raise NotLeader(self.leader)
        if not self.config.check_quorum:
            raise ValueError("lease reads need Config.check_quorum")
        if self.transfer_target is not None or not self._committed_in_current_term():
            return None
        heard = {self.id: self._now}
        for nid, pr in self._followers():
            sent_at = self._seq_ticks.get(pr.read_ack)
            if sent_at is not None:
                heard[nid] = sent_at
        voters = self.membership.voters
        times = sorted((heard[v] for v in voters if v in heard), reverse=True)
        need = len(voters) // 2 + 1
        if len(times) < need:
            return None
        since = times[need - 1]  # a majority heard from this leader at or after this tick
        lease = self.config.election_ticks - self.config.election_ticks // 10 - 1
        return self.log.committed if self._now < since + lease else None

    def expire_lease(self) -> None:
        """End the leader lease now: the runtime could not tick for a while,
        so this core's clock is behind real time. The next acknowledged
        heartbeat round starts a new lease."""
        self._seq_ticks.clear()

    def transfer_leadership(self, target: NodeId | None = None) -> NodeId:
        """Hand leadership to ``target`` (default: the most up-to-date voter).

        Proposals are refused until the transfer ends. Returns the target.
        Raises :class:`NotLeader`, or ``ValueError`` if there is no other voter.
        """
        if self.role != LEADER:
            raise NotLeader(self.leader)
        voters = [v for v in self.membership.voters if v != self.id]
        if target is None:
            if not voters:
                raise ValueError("there is no other voter to transfer leadership to")
            # The most up-to-date of the voters heard from lately (a stopped
            # peer may still hold the highest match).
            target = max(sorted(voters), key=lambda v: (self.progress[v].recent_active, self.progress[v].match))
        elif target not in voters:
            raise ValueError(f"{target!r} is not a voting member other than this peer")
        self.transfer_target = target
        self.election_elapsed = 0  # the transfer gets a full election timeout
        self._maybe_send_timeout_now()
        return target

    def abort_transfer(self, target: NodeId) -> None:
        """Give up the leadership transfer to ``target``, if it is still in
        progress: proposals are accepted again. (A ``TimeoutNow`` already
        sent may still make ``target`` campaign.)"""
        if self.transfer_target == target:
            self.transfer_target = None

    def membership_at(self, index: int) -> Membership:
        """The configuration in force at log ``index`` (for a snapshot's metadata)."""
        return self._membership_index(index)[1]

    def snapshot_taken(self, meta: SnapshotMeta) -> None:
        """The runtime stored a snapshot of the state machine at ``meta.index``.

        Later InstallSnapshot messages describe it. The runtime may then
        compact storage up to :meth:`compaction_limit`.
        """
        assert meta.index <= self.log.applied, (meta.index, self.log.applied)
        if self.snapshot is None or meta.index > self.snapshot.index:
            self.snapshot = meta

    def compaction_limit(self) -> int:
        """Highest index storage may compact up to without pushing a follower
        into needing another snapshot (an install loop).

        Never past the latest snapshot, nor past a snapshot being sent to a
        follower (it continues from the log once it has installed it). On a
        leader, also never past what a follower heard from within the last
        election timeout needs next (from its match index on; when probed,
        from the probe's index on), or one that received a snapshot and has
        not answered since (it is restoring its state machine, however long
        that takes), unless it is more than ``Config.snapshot_entries``
        entries behind: such a follower is catching up from the log, and
        compacting what it needs next would cost it a snapshot each time a
        message is lost or reordered, or each time it restores one. A
        follower that is silent (down, cut off) or further behind does not
        hold the log back; it gets a snapshot when it needs one.
        """
        limit = self.snapshot.index if self.snapshot else 0
        if self.role != LEADER:
            return limit
        first = self.log.first_index()
        last = self.log.last_index()
        cfg = self.config
        for _, pr in self._followers():
            if pr.state is ProgressState.SNAPSHOT:
                limit = min(limit, pr.pending_snapshot)
                continue
            if not pr.restoring and (pr.heard_at is None or self._now - pr.heard_at >= cfg.election_ticks):
                continue
            needs_after = pr.match if pr.state is ProgressState.REPLICATE else pr.next - 1
            if needs_after >= first - 1 and last - needs_after <= cfg.snapshot_entries:
                limit = min(limit, needs_after)  # (below first - 1 it needs a snapshot anyway)
        return limit

    def report_snapshot(self, node_id: NodeId, success: bool) -> None:
        """The runtime's transfer of a snapshot to ``node_id`` ended.

        Either way the follower is probed again from the next heartbeat on:
        after a failure that retries the transfer (the runtime resumes it
        where it stopped); after a success the follower's acknowledgement
        normally moves it on first, and if it crashed before recording the
        snapshot the probe finds out and the snapshot is sent again.
        """
        pr = self.progress.get(node_id) if self.role == LEADER else None
        if pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        pending = pr.pending_snapshot
        pr.become_probe()
        if success:
            # Probe right after the snapshot: the follower's acknowledgement
            # normally gets there first, but if it crashed before recording
            # the snapshot, the probe's rejection sends the snapshot again.
            pr.next = max(pr.next, pending + 1)
            pr.heard_at = self._now  # it took the whole snapshot: keep what follows it
            pr.restoring = True  # ... while it restores its state machine, until it answers
            # Rejections still on their way answer messages sent before the
            # snapshot, when the follower lacked it: a new read context (which
            # every message carries) tells them apart.
            pr.snapshot_ctx = self._next_read_ctx()
        pr.probe_sent = True  # wait for the next heartbeat (or the ack) before probing

    def has_ready(self) -> bool:
        if self._bcast_needed and self.role == LEADER:
            return True
        return bool(
            self._msgs
            or self._msgs_after_persist
            or self.log.has_unpersisted()
            or self._read_states
            or self._snapshot_to_install
            or self._hard_state() != self._prev_hard
            or self._soft_state() != self._prev_soft
            or self.log.has_next_committed(self.role == LEADER)
        )

    def ready(self) -> Ready:
        """Collect the outstanding work; see :mod:`raftlib.core.ready` for the contract.

        A leader hands out committed entries for applying even before its
        own save of them is done (thesis §10.2.1): the quorum that committed
        them holds them on disk, so every later leader has them, and waiting
        for this disk too would put its slowest save on every write's path.
        A follower applies only what its own disk holds."""
        if self.role == LEADER and self._bcast_needed:
            self._bcast_needed = False
            self._bcast_append()
        self._open_round = None  # later reads start a new round
        hs = self._hard_state()
        soft = self._soft_state()
        prev = self._prev_hard
        rd = Ready(
            hard_state=hs if hs != prev else None,
            entries=self.log.take_unpersisted(),
            messages=self._msgs,
            messages_after_persist=self._msgs_after_persist,
            committed_entries=self.log.next_committed(self.config.max_bytes_per_message, self.role == LEADER),
            read_states=self._read_states,
            soft_state=soft if soft != self._prev_soft else None,
            snapshot=self._snapshot_to_install,
            persist_before_step=(
                self._snapshot_to_install is not None or hs.term != prev.term or hs.vote != prev.vote
            ),
        )
        self._snapshot_to_install = None
        self._msgs, self._msgs_after_persist, self._read_states = [], [], []
        self._prev_hard = hs
        self._prev_soft = soft
        return rd

    def advance(self, rd: Ready) -> None:
        """The runtime has persisted ``rd.entries`` and handed out
        ``rd.committed_entries`` for applying: :meth:`accept` and
        :meth:`persisted` in one call."""
        self.accept(rd)
        self.persisted(rd)

    def accept(self, rd: Ready) -> None:
        """The runtime took ``rd``: its committed entries are on their way to
        the state machine. Call it before the next :meth:`ready`."""
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)

    def persisted(self, rd: Ready) -> None:
        """``rd``'s snapshot, hard state and entries are on disk. Readies are
        persisted in the order they were made; call this for each in turn."""
        if rd.snapshot is not None:
            self.log.snapshot_installed(rd.snapshot)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
            if self.role == LEADER:
                me = self.progress[self.id]
                if me.maybe_update(self.log.stable_last_index()):
                    self._maybe_commit()
        if self._removed:
            self._step_down_removed()

    def status(self) -> dict[str, object]:
        """A snapshot of this peer's state for ``Peer.status()``."""
        return {
            "id": self.id,
            "role": self.role,
            "term": self.term,
            "leader": self.leader,
            "commit_index": self.log.committed,
            "last_index": self.log.last_index(),
            "progress": {
                nid: {"match": pr.match, "next": pr.next, "state": pr.state.value}
                for nid, pr in self.progress.items()
            },
        }

    # -- shared helpers --------------------------------------------------------

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.role, self.leader, self.term, self.removed_at)

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)

    def _send_after_persist(self, msg: Message) -> None:
        self._msgs_after_persist.append(msg)

    def _reset_randomized_timeout(self) -> None:
        n = self.config.election_ticks
        self.randomized_timeout = n + self.rng.randrange(n)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.votes = {}
        self.progress = {}
        self._leaving = {}
        self._leaving_since = {}
        self._removed = False
        self.transfer_target = None
        self._read_rounds = []
        self._open_round = None
        self._pending_reads = []
        self._bcast_needed = False

    def _heard_from_leader_recently(self) -> bool:
        """Within the minimum election timeout of hearing from a live leader (or being it)."""
        return (
            self.leader is not None
            and self.role in (FOLLOWER, LEADER)
            and self.election_elapsed < self.config.election_ticks
        )

    def _in_leader_lease(self) -> bool:
        return self.config.check_quorum and self._heard_from_leader_recently()

    def _is_voter(self) -> bool:
        return self.membership.is_voter(self.id)

    def _may_campaign(self) -> bool:
        """A voter may campaign; so may a peer that the latest, uncommitted
        configuration removes while the one before counts it (thesis §4.2.2):
        until that entry commits it may be needed to elect a leader, which it
        can become itself without counting its own vote. A peer told that it
        was removed (:attr:`removed_at`) may not."""
        if self.removed_at:
            return False
        if self._is_voter():
            return True
        if not self.pending_membership_index():
            return False
        before = self._config_history[-2][1] if len(self._config_history) > 1 else self._snapshot_membership
        return before.is_voter(self.id)

    # -- membership --------------------------------------------------------------

    def _membership_index(self, upto: int | None = None) -> tuple[int, Membership]:
        """The configuration in force (at log index ``upto`` if given) and the
        index it came in at; a configuration from a snapshot counts as of the
        snapshot's index."""
        for at, membership in reversed(self._config_history):
            if upto is None or at <= upto:
                return at, membership
        return self._snapshot_membership_index, self._snapshot_membership

    def removal_index(self) -> int:
        """Non-zero when this peer knows it is no longer a member: the index
        of the configuration that removed it, as a member told it
        (:attr:`removed_at`), or as its own log shows (a committed
        configuration, still the latest, leaves it out after one that named
        it: it applied its own removal). A peer catching up from before it
        was added is not counted (no earlier configuration names it)."""
        if self.removed_at:
            return self.removed_at
        at = self._removal_index(self.id)
        if not at:
            return 0
        if self._snapshot_membership_index < at and self.id in self._snapshot_membership.members:
            return at
        for index, membership in self._config_history:
            if index >= at:
                break
            if self.id in membership.members:
                return at
        return 0

    def _removal_index(self, nid: NodeId) -> int:
        """The index of the committed configuration here if both it and the
        configuration in force leave ``nid`` out; otherwise 0."""
        if nid in self.membership.members:
            return 0
        at, committed = self._membership_index(self.log.committed)
        return 0 if nid in committed.members else at

    def _heed_removal(self, msg: RequestVoteResponse) -> None:
        """A member says its committed configuration at ``msg.removed`` leaves
        this peer out. Stop campaigning, unless this peer's own log holds a
        configuration at least as recent that names it (the sender may be
        behind), or it leads."""
        at, mine = self._membership_index()
        if self.role == LEADER or (at >= msg.removed and self.id in mine.members) or self.removed_at >= msg.removed:
            return
        self.removed_at = msg.removed
        self.logger.warning("%s: %s says the configuration at %d, committed, leaves this peer out; "
                            "not campaigning until a leader contacts it", self.id, msg.src, msg.removed)
        if self.role != FOLLOWER:
            self._become_follower(self.term, None)

    def _load_config_history(self) -> None:
        lo, last = self.log.first_index(), self.log.last_index()
        while lo <= last:
            batch = self.log.entries(lo, last + 1, 4 << 20)
            for e in batch:
                if e.kind is _CONFIG:
                    self._config_history.append((e.index, Membership.decode(e.data)))
            lo += len(batch)

    def _note_appended(self, entries: Sequence[Entry]) -> None:
        """Keep the configuration history in step with the log after an append."""
        first = entries[0].index
        while self._config_history and self._config_history[-1][0] >= first:
            self._config_history.pop()
        for e in entries:
            if e.kind is _CONFIG:
                self._config_history.append((e.index, Membership.decode(e.data)))

    def _append_local(self, entries: Sequence[Entry]) -> None:
        self.log.append(entries)
        self._note_appended(entries)
        if self.role == LEADER:
            self._bcast_needed = True
            if any(e.kind is _CONFIG for e in entries):
                self._sync_progress(entries[-1].index)

    def _sync_progress(self, config_index: int) -> None:
        """Leader: track every member of the configuration now in force.

        New members are probed from the configuration entry back. A removed
        member keeps its progress (outside every quorum) until it has
        acknowledged the entry that removes it and been sent a commit index
        covering it, so that it knows it must not campaign; or, if it does
        not answer, for an election timeout after that entry commits.
        """
        members = self.membership.members
        for nid in members:
            if nid not in self.progress:
                self.progress[nid] = Progress(config_index)
        for nid in self.progress:
            if nid not in members and nid != self.id:
                self._leaving[nid] = config_index
        for nid in list(self._leaving):
            if nid in members:
                del self._leaving[nid]
        if self.transfer_target is not None and not self.membership.is_voter(self.transfer_target):
            self.transfer_target = None

    def _forget_leaving(self, nid: NodeId) -> None:
        """Stop tracking removed member ``nid``."""
        self._leaving.pop(nid, None)
        self._leaving_since.pop(nid, None)
        self.progress.pop(nid, None)

    def _expire_leaving(self) -> None:
        """Forget removed members that had an election timeout of heartbeats
        since their removal committed (they may be down for good)."""
        for nid, at in list(self._leaving.items()):
            if at <= self.log.committed:
                since = self._leaving_since.setdefault(nid, self._now)
                if self._now - since >= self.config.election_ticks:
                    self._forget_leaving(nid)

    # -- role transitions --------------------------------------------------------

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        was = self.role
        self._reset(term)
        self.role = FOLLOWER
        self.leader = leader
        self._step_role = self._step_follower
        self._tick_role = self._tick_election
        if was != FOLLOWER:
            self.logger.info("%s: became follower in term %d (leader %s)", self.id, term, leader)

    def _become_pre_candidate(self) -> None:
        # A pre-candidate keeps its term and vote (thesis §9.6).
        self.role = PRE_CANDIDATE
        self.pre_votes_started += 1
        self.votes = {}
        self.leader = None
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = CANDIDATE
        self.elections_started += 1
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election
        self.logger.info("%s: became candidate in term %d", self.id, self.term)

    def _become_leader(self) -> None:
        assert self.role == CANDIDATE
        term = self.term
        self._reset(term)
        self.role = LEADER
        self.elections_won += 1
        self.leader = self.id
        self._step_role = self._step_leader
        self._tick_role = self._tick_heartbeat
        last = self.log.last_index()
        for nid in self.membership.members:
            self.progress[nid] = Progress(last + 1)
        me = self.progress.setdefault(self.id, Progress(last + 1))
        me.maybe_update(self.log.stable_last_index())
        me.become_replicate()
        self._led_since = self._now
        self.logger.info("%s: became leader in term %d", self.id, term)
        # §5.4.2 / §8: a no-op of the new term lets earlier entries commit and
        # gives ReadIndex a commit point of this term.
        self._append_local([Entry(term, last + 1, EntryKind.NOOP, b"")])

    # -- elections ---------------------------------------------------------------

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout and self._may_campaign():
            self.election_elapsed = 0
            self._campaign(pre_vote=self.config.pre_vote, transfer=False)

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        self._reset_randomized_timeout()
        self.votes[self.id] = True
        if self._poll() is not None:
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for nid in sorted(self.membership.voters):
            if nid == self.id:
                continue
            msg = RequestVote(term, self.id, nid, last_index, last_term, pre_vote=pre_vote, transfer=transfer)
            # A real vote request depends on the persisted term and self-vote.
            (self._send if pre_vote else self._send_after_persist)(msg)

    def _poll(self) -> bool | None:
        result = quorum.vote_result(list(self.membership.voters), self.votes)
        if result is True:
            if self.role == PRE_CANDIDATE:
                self._campaign(pre_vote=False, transfer=False)
            else:
                self._become_leader()
        elif result is False:
            self._become_follower(self.term, None)
        return result

    def _handle_vote_request(self, msg: RequestVote) -> None:
        up_to_date = self.log.is_up_to_date(msg.last_log_index, msg.last_log_term)
        if msg.pre_vote:
            # Grant if we would vote in that term: it is ahead of ours (or ours
            # with no vote cast) and no live leader is known.
            can_vote = msg.term > self.term or (self.vote in (None, msg.src) and self.leader is None)
            granted = up_to_date and can_vote and not self._heard_from_leader_recently()
            self._send(RequestVoteResponse(msg.term if granted else self.term, self.id, msg.src, granted, True))
            return
        can_vote = self.vote == msg.src or (self.vote is None and self.leader is None)
        granted = can_vote and up_to_date
        if granted:
            self.vote = msg.src
            self.election_elapsed = 0  # only after granting, and it is persisted before the reply
        self._send_after_persist(RequestVoteResponse(self.term, self.id, msg.src, granted, False))

    def _step_stale(self, msg: Message) -> None:
        """A message from an older term."""
        if isinstance(msg, AppendEntries):
            # Tell the stale leader about the newer term so that it steps down.
            self._send(AppendEntriesResponse(self.term, self.id, msg.src, False, reject_index=msg.prev_log_index))
        elif isinstance(msg, RequestVote) and msg.pre_vote:
            self._send(RequestVoteResponse(self.term, self.id, msg.src, False, True))
        elif isinstance(msg, RequestVote):
            self._send(RequestVoteResponse(self.term, self.id, msg.src, False, False))

    def _step_candidate(self, msg: Message) -> None:
        if isinstance(msg, RequestVoteResponse):
            if msg.pre_vote != (self.role == PRE_CANDIDATE):
                return  # an answer to an earlier round
            if not msg.granted and msg.term > self.term:
                self._become_follower(msg.term, None)
                return
            self.votes[msg.src] = msg.granted
            self._poll()
        elif isinstance(msg, (AppendEntries, InstallSnapshot)):
            self._become_follower(msg.term, msg.src)
            self._step_follower(msg)
        elif isinstance(msg, TimeoutNow):
            pass  # already campaigning

    # -- follower ------------------------------------------------------------------

    def _step_follower(self, msg: Message) -> None:
        if isinstance(msg, (AppendEntries, InstallSnapshot)):
            self.removed_at = 0  # a leader counts this peer (again)
        if isinstance(msg, AppendEntries):
            self.election_elapsed = 0
            self.leader = msg.src
            self._handle_append(msg)
        elif isinstance(msg, InstallSnapshot):
            self.election_elapsed = 0
            self.leader = msg.src
            self._handle_snapshot(msg)
        elif isinstance(msg, TimeoutNow):
            if self._may_campaign():
                self.logger.info("%s: leadership transfer: campaigning now", self.id)
                self._campaign(pre_vote=False, transfer=True)

    def _handle_append(self, msg: AppendEntries) -> None:
        """§5.3: the consistency check, conflict truncation and commit update."""
        if msg.prev_log_index < self.log.committed:
            # Everything up to our commit index matches a legitimate leader's
            # log; a sender whose entry at that index differs is not one.
            skip = self.log.committed - msg.prev_log_index
            if skip <= len(msg.entries) and msg.entries[skip - 1].term != self.log.term(self.log.committed):
                self.logger.warning("%s: %s sent an entry conflicting with our committed index %d; ignored",
                                    self.id, msg.src, self.log.committed, extra=INPUT_WARNING)
                return
            entries = msg.entries[skip:]
            if not entries:
                self._ack_append(msg, self.log.committed, appended=False)
                return
            prev_index, prev_term = self.log.committed, self.log.term(self.log.committed)
        else:
            entries = msg.entries
            prev_index, prev_term = msg.prev_log_index, msg.prev_log_term
        if not self.log.matches(prev_index, prev_term):
            hint_index, hint_term = self.log.find_conflict_hint(prev_index)
            self._send(
                AppendEntriesResponse(
                    self.term, self.id, msg.src, False,
                    reject_index=msg.prev_log_index, hint_index=hint_index, hint_term=hint_term,
                    read_ctx=msg.read_ctx,
                )
            )
            return
        new = self._first_new(entries)
        if new:
            self.log.append(new)
            self._note_appended(new)
        last_new = prev_index + len(entries)
        self.log.commit_to(min(msg.leader_commit, last_new))
        self._ack_append(msg, last_new, appended=bool(new))

    def _ack_append(self, msg: AppendEntries, match: int, appended: bool) -> None:
        """Acknowledge ``msg``, whose entries our log holds up to ``match``.

        An acknowledgement promises that the entries are on disk. If they
        are already, it goes out at once; if ``msg`` appended some, it waits
        for this Ready to be persisted. A message that brought nothing new
        (a heartbeat, a duplicate) while earlier entries are still being
        written is answered at once with what is on disk: a follower whose
        disk is slow still counts as alive for the leader's CheckQuorum and
        reads, and the full acknowledgement follows with the earlier Ready.
        Either way only once the current term is on disk too, and never
        while a snapshot received from the leader is still to be recorded:
        the log as it now stands starts with that snapshot, and until it is
        on disk a crash would bring back the log it replaced.
        """
        stable = self.log.stable_last_index()
        # The term must be on disk before we answer in it (Figure 2). A Ready
        # that changes it is written before the core steps on, so a term
        # already handed out in one is on disk.
        term_on_disk = self._prev_hard.term == self.term
        if term_on_disk and self.log.pending_snapshot is None and (match <= stable or not appended):
            ack = AppendEntriesResponse(self.term, self.id, msg.src, True, min(match, stable), read_ctx=msg.read_ctx)
            self._send(ack)
        else:
            self._send_after_persist(
                AppendEntriesResponse(self.term, self.id, msg.src, True, match, read_ctx=msg.read_ctx)
            )

    def installs_snapshot(self, msg: InstallSnapshot) -> bool:
        """Whether :meth:`step` would now replace the log with ``msg``'s snapshot.

        The runtime asks before it steps an ``InstallSnapshot`` in, and
        restores the state machine from the snapshot first: one the state
        machine cannot restore is then dropped, and the log and the state
        stay as they were. Nothing but :meth:`step` may change the answer.
        """
        if msg.dst != self.id or msg.src == self.id or _malformed(msg):
            return False
        if msg.term < self.term or msg.term - self.term > MAX_TERM_STEP:
            return False  # stale, or dropped (see step)
        if msg.term == self.term and self.role == LEADER:
            return False  # a leader ignores another's snapshot of its own term
        return self._snapshot_replaces_log(msg)

    def _snapshot_replaces_log(self, msg: InstallSnapshot) -> bool:
        """Whether the log neither holds all of ``msg``'s snapshot committed
        nor its last entry (it then takes the snapshot in place of the log)."""
        return msg.index > self.log.committed and not self.log.matches(msg.index, msg.snapshot_term)

    def _handle_snapshot(self, msg: InstallSnapshot) -> None:
        """§7: take the leader's snapshot (its data is already stored by the
        runtime, and restored into the state machine: see :meth:`installs_snapshot`)."""
        if msg.index <= self.log.committed:
            match = self.log.committed  # we have all of it already
        elif not self._snapshot_replaces_log(msg):
            # Our log holds the snapshot's last entry, so (Log Matching) all
            # entries before it too: keep the log, just learn the commit index.
            self.log.commit_to(msg.index)
            match = msg.index
        else:
            # Anything we hold conflicts with or falls short of the snapshot:
            # discard the whole log, never keep a conflicting suffix.
            meta = SnapshotMeta(msg.index, msg.snapshot_term, Membership.decode(msg.membership))
            self.logger.info("%s: installing snapshot %d/%d from %s", self.id, meta.term, meta.index, msg.src)
            self.log.restore(meta)
            self.snapshot = meta
            self._snapshot_to_install = meta
            self._snapshot_membership = meta.membership
            self._snapshot_membership_index = meta.index
            self._config_history = []
            match = msg.index
        self._send_after_persist(AppendEntriesResponse(self.term, self.id, msg.src, True, match))

    def _first_new(self, entries: Sequence[Entry]) -> Sequence[Entry]:
        """The suffix of ``entries`` that is not already in our log."""
        last = self.log.last_index()
        for i, e in enumerate(entries):
            if e.index > last or self.log.term_or_none(e.index) != e.term:
                return entries[i:]
        return ()

    # -- leader ------------------------------------------------------------------------

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self._leaving:
            self._expire_leaving()
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._check_quorum():
                self.logger.warning("%s: lost contact with a majority; stepping down", self.id)
                self._become_follower(self.term, None)
                return
            if self.transfer_target is not None:
                self.logger.warning("%s: leadership transfer to %s timed out", self.id, self.transfer_target)
                self.transfer_target = None
        for nid, pr in self.progress.items():
            if nid != self.id and pr.state is ProgressState.REPLICATE and pr.inflight:
                pr.stall_ticks += 1
                if pr.stall_ticks >= self.config.election_ticks:
                    # Messages were lost: fall back to probing from the last match.
                    pr.stall_ticks = 0
                    pr.become_probe()
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _check_quorum(self) -> bool:
        active = {nid for nid, pr in self.progress.items() if pr.recent_active}
        active.add(self.id)
        for pr in self.progress.values():
            pr.recent_active = False
        return quorum.has_quorum(self.membership.voters, active)

    def _followers(self) -> list[tuple[NodeId, Progress]]:
        return [(nid, pr) for nid, pr in self.progress.items() if nid != self.id]

    def _next_read_ctx(self) -> int:
        """Start a new read context: every message sent from now on carries it,
        so an acknowledgement of it proves the follower heard from this
        leader at or after the current tick."""
        self._read_seq += 1
        self._seq_ticks[self._read_seq] = self._now
        horizon = self._now - self.config.election_ticks
        if len(self._seq_ticks) > 64:
            self._seq_ticks = {seq: t for seq, t in self._seq_ticks.items() if t >= horizon or seq == self._read_seq}
        return self._read_seq

    def _bcast_heartbeat(self) -> None:
        self._next_read_ctx()
        for nid, pr in self._followers():
            if pr.state is ProgressState.PROBE:
                if pr.next < self.log.first_index():
                    pr.probe_sent = False
                    self._send_append(nid, pr, allow_empty=True)  # sends the snapshot
                else:
                    # An empty probe: entries follow only once the follower
                    # answers, so a peer that is down costs no log reads.
                    self._emit_append(nid, pr, pr.next - 1, ())
                    pr.probe_sent = True
            else:
                # A follower being sent a snapshot may match below our first index.
                self._emit_append(nid, pr, max(pr.match, self.log.first_index() - 1), ())

    def _bcast_append(self) -> None:
        for nid, pr in self._followers():
            self._send_append(nid, pr, allow_empty=False)

    def _send_append(self, nid: NodeId, pr: Progress, allow_empty: bool) -> None:
        """Send what ``nid`` is missing, as far as flow control allows."""
        last = self.log.last_index()
        cfg = self.config
        while pr.can_send(cfg.max_inflight):
            if pr.next < self.log.first_index():
                self._send_snapshot(nid, pr)
                return
            prev = pr.next - 1
            entries: tuple[Entry, ...] = ()
            if pr.next <= last:
                hi = min(last + 1, pr.next + cfg.max_entries_per_message)
                entries = tuple(self.log.entries(pr.next, hi, cfg.max_bytes_per_message))
            elif not allow_empty:
                return
            self._emit_append(nid, pr, prev, entries)
            pr.sent(prev + len(entries), len(entries))
            allow_empty = False
            if not entries or pr.state is ProgressState.PROBE:
                return

    def _send_snapshot(self, nid: NodeId, pr: Progress) -> None:
        snap = self.snapshot
        if snap is None:
            raise LogCompacted(f"{nid} needs compacted entries but this peer has no snapshot")
        pr.become_snapshot(snap.index)
        self.logger.info("%s: %s is behind the compacted log; sending snapshot %d/%d", self.id, nid, snap.term, snap.index)
        self._send(InstallSnapshot(self.term, self.id, nid, snap.index, snap.term, snap.membership.encode()))

    def _step_leader(self, msg: Message) -> None:
        if isinstance(msg, AppendEntriesResponse):
            pr = self.progress.get(msg.src)
            if pr is None:
                return
            if msg.success and msg.match_index > self.log.last_index():
                self.logger.warning("%s: %s claims entries we never sent (match %d)", self.id, msg.src, msg.match_index,
                                    extra=INPUT_WARNING)
                return
            if not msg.success and msg.reject_index > self.log.last_index():
                self.logger.warning("%s: %s rejects an index we never sent (%d)", self.id, msg.src, msg.reject_index,
                                    extra=INPUT_WARNING)
                return
            if msg.read_ctx > self._read_seq:
                # It would confirm reads this leader has not asked about yet.
                self.logger.warning("%s: %s acknowledges read context %d we never sent", self.id, msg.src, msg.read_ctx,
                                    extra=INPUT_WARNING)
                return
            pr.recent_active = True
            pr.heard_at = self._now
            if msg.read_ctx >= pr.snapshot_ctx:
                pr.restoring = False  # (older answers were on their way before it took the snapshot)
            if msg.read_ctx > pr.read_ack:
                pr.read_ack = msg.read_ctx
                self._advance_reads()
            if msg.success:
                self._handle_append_success(msg.src, pr, msg.match_index)
            else:
                self._handle_append_reject(msg.src, pr, msg)
        elif isinstance(msg, RequestVoteResponse):
            pass  # late answers from our own campaign

    def _handle_append_success(self, nid: NodeId, pr: Progress, match: int) -> None:
        at = self._leaving.get(nid)
        if at is not None and match >= at and self.log.committed >= at and pr.sent_commit >= at:
            self._forget_leaving(nid)  # it has its removal and knows it committed
            return
        if pr.maybe_update(match):
            if pr.state is ProgressState.PROBE or (
                pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot
            ):
                pr.become_replicate()
            self._maybe_commit()
            if nid == self.transfer_target:
                self._maybe_send_timeout_now()
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = False
            if pr.match + 1 == pr.next:
                pr.become_replicate()
        if pr.next <= self.log.last_index():
            self._send_append(nid, pr, allow_empty=False)
        else:
            self._maybe_send_commit(nid, pr)

    def _emit_append(self, nid: NodeId, pr: Progress, prev: int, entries: tuple[Entry, ...]) -> None:
        commit = self.log.committed
        # The follower can take the commit index only up to what this message ends with.
        pr.sent_commit = min(commit, prev + len(entries))
        self._send(AppendEntries(self.term, self.id, nid, prev, self.log.term(prev), entries, commit, self._read_seq))

    def _maybe_send_commit(self, nid: NodeId, pr: Progress) -> None:
        """Tell an idle, caught-up follower about a commit index it has not seen."""
        if (
            pr.state is ProgressState.REPLICATE
            and not pr.inflight
            and pr.next > self.log.last_index()
            and pr.sent_commit < self.log.committed
        ):
            self._emit_append(nid, pr, pr.next - 1, ())

    def _handle_append_reject(self, nid: NodeId, pr: Progress, msg: AppendEntriesResponse) -> None:
        if pr.state is ProgressState.SNAPSHOT:
            return  # a heartbeat it could not match yet; the snapshot will fix that
        if msg.read_ctx < pr.snapshot_ctx:
            return  # it answers a message sent before the follower took our snapshot
        if pr.state is ProgressState.REPLICATE:
            if msg.reject_index <= pr.match:
                return  # stale
            pr.become_probe()
        elif msg.reject_index != pr.next - 1:
            return  # stale: an answer to an earlier probe
        # Fast back-off: skip the follower's whole conflicting term at once.
        next_index = msg.hint_index
        if msg.hint_term:
            ours = self.log.last_index_of_term(msg.hint_term, msg.reject_index)
            if ours is not None:
                next_index = ours + 1
        pr.next = max(pr.match + 1, min(next_index, msg.reject_index))
        pr.probe_sent = False
        self._send_append(nid, pr, allow_empty=True)

    def _maybe_commit(self) -> None:
        """§5.4.2: commit the majority-matched index only if it is from this term."""
        match = {nid: pr.match for nid, pr in self.progress.items()}
        index = quorum.committed_index(list(self.membership.voters), match)
        if index > self.log.committed and self.log.term(index) == self.term:
            self.log.commit_to(index)
            self._bcast_needed = True  # followers learn the new commit index promptly
            if not self._is_voter() and not self.pending_membership_index():
                self._removed = True  # acted on once the current input is handled
            self._release_pending_reads()
            # Followers with appends in flight learn the new commit index when
            # those are acknowledged (see _handle_append_success); tell the idle
            # ones now.
            for nid, pr in self._followers():
                self._maybe_send_commit(nid, pr)

    def _step_down_removed(self) -> None:
        """Thesis §4.2.2: a leader whose removal committed steps down. It tells
        the most up-to-date voter to campaign at once, so that the cluster
        does not wait out an election timeout."""
        last = self.log.last_index()
        ready = sorted(v for v in self.membership.voters if v in self.progress and self.progress[v].match == last)
        self.logger.info("%s: no longer a voter; stepping down", self.id)
        if ready:
            self._send(TimeoutNow(self.term, self.id, ready[0]))
        self._become_follower(self.term, None)

    def _maybe_send_timeout_now(self) -> None:
        target = self.transfer_target
        if target is None:
            return
        pr = self.progress.get(target)
        if pr is not None and pr.match == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, target))

    # -- ReadIndex -------------------------------------------------------------------

    def _committed_in_current_term(self) -> bool:
        return self.log.term_or_none(self.log.committed) == self.term

    def _release_pending_reads(self) -> None:
        if self._pending_reads and self._committed_in_current_term():
            pending, self._pending_reads = self._pending_reads, []
            for rid in pending:
                self._add_read(rid)

    def _add_read(self, request_id: int) -> None:
        rnd = self._open_round
        if rnd is None:
            rnd = _ReadRound(self._next_read_ctx(), self.log.committed)
            self._read_rounds.append(rnd)
            self._open_round = rnd
            if set(self.membership.voters) != {self.id}:
                self._bcast_heartbeat()
        rnd.request_ids.append(request_id)
        self._advance_reads()

    def _advance_reads(self) -> None:
        voters = self.membership.voters
        while self._read_rounds:
            rnd = self._read_rounds[0]
            acked = {nid for nid, pr in self.progress.items() if pr.read_ack >= rnd.ctx}
            acked.add(self.id)
            if not quorum.has_quorum(voters, acked):
                return
            self._read_rounds.pop(0)
            if self._open_round is rnd:
                self._open_round = None
            self._read_states.append(ReadState(rnd.index, tuple(rnd.request_ids)))


_MAX_INDEX = 2**63 - 1
"""Largest term or index a message may carry or imply (the transport's
``MAX_WIRE_INT``): storage keeps them as 64-bit integers, with room for a term + 1."""


def _bad_membership(data: bytes) -> str | None:
    """Why ``data`` is not a configuration a correct peer could have written, or ``None``."""
    try:
        membership = Membership.decode(data)
    except ValueError:
        return "not an encoded Membership"
    if not membership.voters:
        return "a configuration without voters"
    if membership.voters.keys() & membership.learners.keys():
        return "a configuration naming a member both voter and learner"
    return None


def _malformed(msg: Message) -> str | None:
    """Why ``msg`` cannot have come from a correct peer, or ``None``.

    The transport has checked types and ranges; this checks the relations
    between fields that the algorithm relies on, and whatever the core itself
    decodes (configurations), so that no message makes :meth:`Raft.step` raise.
    """
    if msg.term > _MAX_INDEX:
        return "term is above 2**63-1"
    if msg.term == 0 and isinstance(msg, (AppendEntries, InstallSnapshot, RequestVote, TimeoutNow)):
        return "term 0 (only a peer that has never voted nor led has it)"
    if isinstance(msg, AppendEntries):
        expected = msg.prev_log_index + 1
        term = msg.prev_log_term
        if term > msg.term:
            return "prev_log_term is ahead of the message term"
        if (msg.prev_log_index == 0) != (term == 0):
            return "prev_log_term must be 0 exactly when prev_log_index is (every entry has a term)"
        if msg.prev_log_index + len(msg.entries) > _MAX_INDEX:
            return "entries beyond index 2**63-1"
        for e in msg.entries:
            if e.index != expected:
                return f"entry index {e.index} where {expected} was expected"
            if e.term < term or e.term > msg.term or e.term == 0:
                return f"entry {e.index} has term {e.term} out of order"
            if e.kind is _CONFIG:
                problem = _bad_membership(e.data)
                if problem:
                    return f"entry {e.index}: {problem}"
            expected += 1
            term = e.term
    elif isinstance(msg, RequestVote):
        if msg.last_log_term > msg.term:
            return "last_log_term is ahead of the message term"
        if (msg.last_log_index == 0) != (msg.last_log_term == 0):
            return "last_log_term must be 0 exactly when last_log_index is"
        if msg.last_log_index > _MAX_INDEX:
            return "last_log_index is above 2**63-1"
    elif isinstance(msg, AppendEntriesResponse):
        if msg.hint_term > msg.term:
            return "hint_term is ahead of the message term"
    elif isinstance(msg, InstallSnapshot):
        if msg.snapshot_term > msg.term:
            return "snapshot_term is ahead of the message term"
        if msg.index == 0 or msg.snapshot_term == 0:
            return "a snapshot covers at least one entry (index and snapshot_term are at least 1)"
        if msg.index > _MAX_INDEX:
            return "index is above 2**63-1"
        problem = _bad_membership(msg.membership)
        if problem:
            return f"membership is {problem}"
    return None
