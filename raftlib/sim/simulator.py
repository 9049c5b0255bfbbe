"""The deterministic simulator: N Raft cores, one virtual clock, one seed.

Everything random (message delays, losses, duplicates, partitions, crashes,
slow disks, client behaviour and each core's election timeouts) is drawn
from one ``random.Random(seed)``, and events are ordered by (virtual time,
sequence number), so a seed replays byte for byte.

The simulator plays the runtime's part for every peer (see
:mod:`raftlib.core.ready`): it sends ``rd.messages`` at once, puts the save
in the peer's volatile write buffer, writes it to the peer's disk (a
:class:`~storage_adapters.memory.MemoryStorage`) either at once or after a
random delay, and only then releases ``rd.messages_after_persist``, applies
``rd.committed_entries`` and calls ``advance``. A crash throws away the write
buffer and the core; the restarted core is rebuilt from the disk alone. A
core that acknowledges before its save is on disk is therefore caught when a
crash lands in between.

Pipelined persistence (in about half of the seeds, see ``SimConfig.pipeline``):
the simulator plays a pipelined runtime instead. It applies
``rd.committed_entries`` and calls ``accept`` as soon as it takes a Ready,
and queues the Ready's save in the peer's FIFO of saves in flight; the core
goes on being stepped and ticked and further Readies are taken meanwhile.
Saves reach the disk in FIFO order after random delays (those due together
in one write, a group commit); each one's ``messages_after_persist`` are
sent and ``persisted`` called only then, also for Readies with nothing to
write, which wait behind the saves ahead of them. After a Ready with
``persist_before_step`` (a term or vote change, a snapshot to install) the
peer holds every input (messages, ticks, snapshot reports, compactions; client
requests are refused) until that Ready is persisted. A crash throws away the
whole FIFO. The committed entries a Ready hands out must already be on a
follower's disk, and on the disks of a majority of a leader's voters
(``apply-durability``); a snapshot is recorded and the log compacted only
once the peer's disk holds the snapshot's index.

Membership changes (``SimConfig.membership_rate``): now and then the leader
is asked for one random single-server change, among the founding peers and
``SimConfig.spare_peers`` spares that start outside the cluster with empty
storage. Crashes and partitions follow the configuration in force; the
liveness phase stops the peers the committed configuration removed and
requires convergence of the members only.

Snapshots (in about half of the seeds, see ``SimConfig.snapshots``): peers
capture their applied state into a durable per-peer snapshot store, tell the
core and compact storage once the file is durable; a leader's InstallSnapshot
becomes a transfer that takes time and may fail; the follower's core sees
the message only once the data is durably stored, and its Ready records the
snapshot and restores the state before saving. Crashes are injected between
these steps (``SNAPSHOT_CRASH_POINTS``).

Two ways to drive it:

* automatically: :meth:`Simulator.run` (or :meth:`run_ticks`) advances the
  clock; faults, leadership transfers and client requests are injected at
  random per ``SimConfig``;
* by hand (``manual=True``): nothing happens unless a test calls
  :meth:`tick`, :meth:`deliver`, :meth:`drop`, :meth:`crash`, :meth:`restart`,
  :meth:`partition`, :meth:`block`, :meth:`heal`, :meth:`propose`,
  :meth:`read`, :meth:`transfer_leadership`, :meth:`propose_membership` or
  :meth:`change_membership`. Messages wait in
  :attr:`in_flight` until delivered or dropped and saves are synced at once.
  (The same methods also work between :meth:`run_ticks` calls.)

After every step the invariants of :mod:`raftlib.sim.invariants` are checked
for the peer the step touched; a violation raises :class:`InvariantViolation`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import inspect
import io
import logging
import math
import random
import time as _time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..codec import pack, unpack
from ..core import quorum
from ..core.messages import AppendEntriesResponse, InstallSnapshot, Message, RequestVoteResponse
from ..core.raft import LEADER, Raft
from ..core.ready import Ready
from ..core.membership import with_member, without_member
from ..errors import LogCompacted, MembershipChangePending, NotLeader, ProposalDropped
from ..state_machine import StateMachine
from ..types import Entry, EntryKind, HardState, Membership, NodeId, SnapshotMeta
from .config import SimConfig
from .invariants import (
    Failure, InvariantChecker, InvariantViolation, _durably_holds, durable_holders, fail, members_text,
)
from .node import CoreFactory, PendingRead, PendingWrite, Save, SimPeer, SnapshotData, SnapshotWrite

# Event kinds (kept as small ints: the heap holds (time, seq, kind, a, b)).
(_DELIVER, _TICK, _SYNC, _WORLD, _RESTART, _HEAL, _ISOLATE,
 _SNAP_WRITE, _SNAP_COMPACT, _SNAP_FAIL, _SNAP_REPORT) = range(11)

# What a peer holds in its inbox during a pipelined barrier: (kind, a, b).
_IN_MSG, _IN_TICK, _IN_SNAP, _IN_REPORT = range(4)

SNAPSHOT_CRASH_POINTS = (
    "snapshot-write", "before-compact", "after-compact", "receiving", "received", "before-install", "after-install",
)
"""Where ``SimConfig.snapshot_crash_rate`` crashes a peer (fault ``crash@<point>``):

* ``snapshot-write``: a snapshot was captured, its file is not durable yet (it is lost);
* ``before-compact``: the file is durable, the core has not heard of it, storage is not compacted;
* ``after-compact``: right after ``snapshot_taken`` and ``LogStorage.compact``;
* ``receiving``: a follower is about to have a streamed snapshot durably stored (it is lost);
* ``received``: the streamed snapshot is durable, not yet stepped into the follower's core;
* ``before-install``: the follower's Ready carries the snapshot, nothing of it is recorded yet;
* ``after-install``: ``LogStorage.install_snapshot`` is done and the state restored, but the
  Ready's hard state and entries are not saved (and nothing was acknowledged).
"""

MessageFilter = Callable[[Message], bool]


@dataclass(slots=True)
class Client:
    """A client: it writes to the peer it believes leads, follows NotLeader
    hints, and gives up on a peer that accepts writes but acknowledges none
    for ``SimConfig.client_timeout`` ticks (a deposed or cut-off leader)."""

    id: int
    target: NodeId
    last_ok: float = 0.0
    """When a write of this client was last acknowledged (or it last switched peers)."""
    unacked: int = 0
    """Writes accepted since then."""


@dataclass(slots=True)
class Transfer:
    """A snapshot being streamed from a leader to a follower."""

    msg: InstallSnapshot
    src_incarnation: int
    dst_incarnation: int
    data: SnapshotData
    started: float


@dataclass(frozen=True, slots=True)
class AckedWrite:
    """A write whose proposing leader applied it at its (term, index)."""

    index: int
    term: int
    data: bytes
    client: int


@dataclass(slots=True)
class SimResult:
    """What one run did. Everything here is a pure function of the seed and config."""

    seed: int
    peers: int
    pre_vote: bool
    check_quorum: bool
    ticks: float
    steps: int
    messages: int
    writes_proposed: int
    writes_acked: int
    reads_served: int
    leaders: int
    max_term: int
    committed: int
    converge_ticks: float
    faults: dict[str, int] = field(default_factory=dict)
    trace_digest: str | None = None
    snapshots: bool = False
    """Whether this run took snapshots (see ``SimConfig.snapshots``)."""
    snapshot_every: int = 0
    snapshot_keep: int = 0
    snapshot_stats: dict[str, int] = field(default_factory=dict)
    """``taken``, ``lost`` (writes a crash threw away), ``sent`` (transfers
    started), ``failed``, ``installed`` (by followers), ``restored`` (at restart)."""
    spare_peers: int = 0
    membership_stats: dict[str, int] = field(default_factory=dict)
    """``proposed`` and ``committed`` changes, each also by kind (``add``,
    ``promote``, ``promote-early``, ``remove``, ``remove-leader``, ``demote``,
    ``demote-leader``, ``remove-learner``; ``committed:<kind>`` for the
    committed ones), ``leaders_removed`` (committed changes that took the
    proposing leader's vote away), ``refused`` (the core said not now),
    ``unsafe_refused`` (a change of two voters, refused with ``ValueError``),
    ``retired`` (removed peers stopped for the liveness phase)."""
    voters: tuple[NodeId, ...] = ()
    """Voters of the last committed configuration."""
    learners: tuple[NodeId, ...] = ()
    pipeline: bool = False
    """Whether this run pipelined persistence (see ``SimConfig.pipeline``)."""
    pipeline_stats: dict[str, int] = field(default_factory=dict)
    """Pipelined mode: ``readies`` taken, ``overlapped`` (taken while saves were
    in flight), ``max_depth`` (most saves in flight at once), ``group_writes``
    (disk writes that merged several saves) and ``merged`` (the saves they
    merged), ``acks_waited`` (Readies with nothing to write whose
    ``messages_after_persist`` waited behind a save), ``barriers`` (Readies
    with ``persist_before_step``), ``held`` (inputs held during a barrier),
    ``lost`` (saves a crash threw away)."""

    def summary(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        lines = [
            f"seed {self.seed}: {self.peers} peers, pre_vote={self.pre_vote}, check_quorum={self.check_quorum}",
            f"  simulated {self.ticks:.0f} ticks in {self.steps} steps, {self.messages} messages sent",
            f"  {self.leaders} leaders elected (last term {self.max_term}), {self.committed} entries committed",
            (f"  writes: {self.writes_proposed} accepted by a leader, {self.writes_acked} acknowledged; "
             f"{self.reads_served} linearizable reads served"),
            f"  faults: {faults}",
            f"  snapshots: {self.snapshot_text()}",
            f"  membership: {self.membership_text()}",
            f"  persistence: {self.pipeline_text()}",
            f"  converged {self.converge_ticks:.1f} ticks after the faults stopped",
        ]
        if self.trace_digest:
            lines.append(f"  trace sha256: {self.trace_digest}")
        return "\n".join(lines)

    def membership_text(self) -> str:
        st = self.membership_stats
        final = "voters " + ",".join(self.voters)
        if self.learners:
            final += ", learners " + ",".join(self.learners)
        if not st.get("proposed") and not st.get("refused") and not st.get("unsafe_refused"):
            return f"no changes ({self.spare_peers} spare peers); {final}"
        return f"{membership_counts(st)}; finally {final}"

    def pipeline_text(self) -> str:
        if not self.pipeline:
            return "one Ready at a time"
        return "pipelined: " + pipeline_counts(self.pipeline_stats)

    def snapshot_text(self) -> str:
        if not self.snapshots:
            return "off"
        st = self.snapshot_stats
        return (f"every {self.snapshot_every} entries, keep {self.snapshot_keep}: {st.get('taken', 0)} taken "
                f"({st.get('lost', 0)} lost in a crash), {st.get('sent', 0)} sent ({st.get('failed', 0)} failed), "
                f"{st.get('installed', 0)} installed, {st.get('restored', 0)} restored at restart")


MEMBERSHIP_KINDS = ("add", "promote", "promote-early", "remove", "remove-leader", "demote", "demote-leader",
                    "remove-learner", "unsafe", "scripted")
"""The random membership changes, as counted in ``SimResult.membership_stats``."""


def membership_counts(st: Mapping[str, int]) -> str:
    """``6 changes proposed (add=2, ...), 5 committed (...), 1 leader removed; refused: 3 not now, 1 unsafe; ...``."""

    def kinds(prefix: str) -> str:
        parts = [f"{k}={st[prefix + k]}" for k in MEMBERSHIP_KINDS if st.get(prefix + k)]
        return f" ({', '.join(parts)})" if parts else ""

    def n(key: str, word: str) -> str:
        count = st.get(key, 0)
        return f"{count} {word}{'' if count == 1 else 's'}"

    return (f"{n('proposed', 'change')} proposed{kinds('')}, {st.get('committed', 0)} committed{kinds('committed:')}, "
            f"{n('leaders_removed', 'leader')} removed; refused: {st.get('refused', 0)} not now, "
            f"{st.get('unsafe_refused', 0)} unsafe; {n('retired', 'removed peer')} stopped for the liveness phase")


def pipeline_counts(st: Mapping[str, int]) -> str:
    """``120 Readies, 40 taken with saves in flight (up to 4 in flight), ...``."""
    return (f"{st.get('readies', 0)} Readies, {st.get('overlapped', 0)} taken with saves in flight (up to "
            f"{st.get('max_depth', 0)} in flight), {st.get('group_writes', 0)} group writes of "
            f"{st.get('merged', 0)} saves, {st.get('acks_waited', 0)} acknowledgements waited behind a save, "
            f"{st.get('barriers', 0)} barriers ({st.get('held', 0)} inputs held), {st.get('lost', 0)} saves "
            f"lost in crashes")


def _format_event(rec: tuple[int, float, str, tuple[Any, ...]]) -> str:
    step, when, fmt, args = rec
    if args:
        fmt = fmt % tuple(a.describe() if hasattr(a, "describe") else a for a in args)
    return f"#{step} t={when:.3f} {fmt}"


def _silent_logger() -> logging.Logger:
    """A logger outside the logging tree that drops everything (cores log a
    lot under faults; the trace already says what happened)."""
    logger = logging.Logger("raftlib.sim.core", level=logging.CRITICAL + 1)  # noqa: LOG001 - kept out of the tree
    logger.addHandler(logging.NullHandler())
    return logger


_SILENT = _silent_logger()


def _default_command(rng: random.Random, n: int) -> Any:
    return f"c{n}"


class Simulator:
    """A cluster of ``peers`` simulated Raft peers named ``s1`` .. ``sN``,
    plus ``SimConfig.spare_peers`` peers outside it (``sN+1`` on), which
    membership changes may add.

    ``core_factory`` builds each core (default :class:`Raft`; tests pass
    deliberately broken subclasses). With ``state_machine_factory`` every
    peer incarnation gets a fresh machine, committed NORMAL entries are
    decoded with msgpack and passed to its ``handle_write``, and all peers
    must return the same result at each index; client commands then come
    from ``command_factory(rng, n)`` (default: the string ``"c<n>"``) and
    are msgpack-encoded. Without a machine, client payloads are ``b"c<n>"``.
    Cores log to ``logger`` (default: nowhere).
    """

    def __init__(
        self,
        seed: int,
        peers: int = 3,
        config: SimConfig | None = None,
        *,
        core_factory: CoreFactory | Callable[..., Raft] = Raft,
        state_machine_factory: Callable[[], StateMachine] | None = None,
        command_factory: Callable[[random.Random, int], Any] | None = None,
        manual: bool = False,
        logger: logging.Logger | None = None,
    ) -> None:
        if peers < 1:
            raise ValueError("a cluster needs at least one peer")
        if command_factory is not None and state_machine_factory is None:
            raise ValueError("command_factory needs a state_machine_factory: without a state machine the "
                             "clients write b'c<n>' and the commands would never be used")
        if seed < 0:
            # random.Random(-n) is random.Random(n): a negative seed would only repeat another.
            raise ValueError(f"a seed must be >= 0, got {seed}")
        self.seed = seed
        self.config = cfg = config or SimConfig()
        self.manual = manual
        self.rng = rng = random.Random(seed)
        self.core_factory = core_factory
        self.state_machine_factory = state_machine_factory
        self.command_factory = command_factory or _default_command
        self.logger = logger or _SILENT
        self.pre_vote = cfg.pre_vote if cfg.pre_vote is not None else rng.random() < 0.5
        self.check_quorum = cfg.check_quorum if cfg.check_quorum is not None else rng.random() < 0.5
        self.snapshots = cfg.snapshots if cfg.snapshots is not None else rng.random() < cfg.snapshot_probability
        """Whether peers snapshot and compact automatically (``take_snapshot`` works either way)."""
        self.snapshot_every = rng.randint(cfg.snapshot_entries_min, cfg.snapshot_entries_max)
        if cfg.snapshot_keep is not None:
            self.snapshot_keep = cfg.snapshot_keep
        else:
            self.snapshot_keep = 0 if rng.random() < 0.5 else rng.randint(1, 10)
        if cfg.pipeline is not None:
            self.pipeline = cfg.pipeline
        elif manual:
            self.pipeline = False
        else:
            # A generator of its own: the run's draws stay those of a seed
            # that does not pipeline (a string seed hashes the same in every process).
            self.pipeline = random.Random(f"pipeline/{seed}").random() < cfg.pipeline_probability
        """Pipelined persistence (see ``SimConfig.pipeline``)."""
        self._machine_snapshots = False
        """The user state machine implements snapshot() and restore(); decided at boot."""
        self.raft_config = cfg.raft_config(self.pre_vote, self.check_quorum)
        self.founders: list[NodeId] = [f"s{i}" for i in range(1, peers + 1)]
        """The peers bootstrapped with the first configuration."""
        self.ids: list[NodeId] = self.founders + [f"s{i}" for i in range(peers + 1, peers + 1 + cfg.spare_peers)]
        """Every peer: the founders, then the spares (empty storage, outside the cluster)."""
        self.peers: dict[NodeId, SimPeer] = {i: SimPeer(i) for i in self.ids}
        self.checker = InvariantChecker(self.peers)
        self.checker.on_new_leader = self._on_new_leader
        self.checker.on_config_committed = self._on_config_committed
        self.max_down = cfg.max_down
        """Most members down at once (``None``: a minority of the voters, see :meth:`_may_crash`)."""
        self.bootstrap_membership = Membership({i: f"sim:{i}" for i in self.founders})

        self.now = 0.0
        self.step_count = 0
        self._heap: list[tuple[float, int, int, Any, Any]] = []
        self._seq = 0
        self.in_flight: dict[int, Message] = {}
        """Messages sent and not yet delivered or lost, by send order."""
        self.blocked: Counter[tuple[NodeId, NodeId]] = Counter()
        """Directed links (src, dst) that currently lose every message (with
        how many active cuts block each)."""
        self._cuts: dict[int, list[tuple[NodeId, NodeId]]] = {}
        self._cut_token = 0
        self._random_cut: int | None = None
        self._phase: dict[NodeId, float] = {}

        self.faults: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self.snap_stats: Counter[str] = Counter()
        self.member_stats: Counter[str] = Counter()
        self.pipe_stats: Counter[str] = Counter()
        self.crashes: Counter[NodeId] = Counter()
        """Crashes injected per peer (random ones and at crash points)."""
        self._changes: dict[tuple[int, int], tuple[str, NodeId, NodeId]] = {}
        """Membership changes proposed, by (index, term): (kind, target, proposing leader)."""
        self._transfers: dict[int, Transfer] = {}
        self._held: set[NodeId] = set()
        self._sends_after_heal: Counter[tuple[int, NodeId]] | None = None
        """Snapshots sent per (leader term, follower) since the faults stopped (install-loop check)."""
        self.acked: list[AckedWrite] = []
        self.max_acked_index = 0
        self._results: dict[int, Any] = {}
        self._faults_on = not manual
        self._clients_on = not manual and cfg.clients > 0
        self._write_seq = 0
        self._read_seq = 0
        self.clients = [Client(k, rng.choice(self.founders)) for k in range(cfg.clients)]

        self._trace: deque[tuple[int, float, str, tuple[Any, ...]]] = deque(maxlen=max(cfg.trace_tail, 1))
        self._hasher = hashlib.sha256() if cfg.hash_trace else None

        try:
            for pid in self.ids:
                p = self.peers[pid]
                self._start(p)
                if pid == self.ids[0] and p.machine is not None:
                    self._machine_snapshots = _can_snapshot(p.machine)
                    if not self._machine_snapshots:
                        self.snapshots = False
                if pid in self.bootstrap_membership.voters:
                    try:
                        p.raft.bootstrap(self.bootstrap_membership)
                    except Exception as exc:
                        self._core_failed(p, "bootstrap", exc)
                self._drive(p, sync_now=True)
                self.checker.observe(p)
        except Failure as f:
            raise self._violation(f) from f.__cause__
        if not manual:
            self._schedule(1.0, _WORLD, 1, None)

    # -- event queue ----------------------------------------------------------------

    def _schedule(self, when: float, kind: int, a: Any, b: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, a, b))

    def _note(self, fmt: str, *args: Any) -> None:
        """Record an event in the trace (formatted lazily unless hashing)."""
        rec = (self.step_count, self.now, fmt, args)
        self._trace.append(rec)
        if self._hasher is not None:
            self._hasher.update(_format_event(rec).encode())
            self._hasher.update(b"\n")

    def _violation(self, f: Failure) -> InvariantViolation:
        return InvariantViolation(
            f.invariant, f.message, seed=self.seed, step=self.step_count, time=self.now,
            peers=len(self.founders), trace=self.trace_tail(), replay=self.replay_command(),
        )

    def replay_command(self) -> str:
        """What runs this seed again: the command line with ``--set`` for
        every setting that differs from the defaults, or, when the run uses
        its own core or state machine, which only Python can pass, the
        :func:`run_seed` call."""
        default = SimConfig()
        changed = [(f.name, getattr(self.config, f.name)) for f in dataclasses.fields(SimConfig)
                   if f.name not in ("hash_trace", "trace_tail")
                   and getattr(self.config, f.name) != getattr(default, f.name)]
        peers = len(self.founders)
        factories = [(name, f) for name, f, plain in (
            ("core_factory", self.core_factory, Raft),
            ("state_machine_factory", self.state_machine_factory, None),
            ("command_factory", self.command_factory, _default_command),
        ) if f is not plain]
        if not factories:
            sets = "".join(f" --set {name}={value!r}" for name, value in changed)
            return f"python -m raftlib.sim --seed {self.seed} --peers {peers}{sets}"
        config = "SimConfig(" + ", ".join(f"{name}={value!r}" for name, value in changed) + ")"
        args = "".join(f", {name}={getattr(f, '__qualname__', None) or repr(f)}" for name, f in factories)
        return f"run_seed({self.seed}, {peers}, {config}{args})  (in Python, with the same factories)"

    def trace_tail(self) -> list[str]:
        """The last ``SimConfig.trace_tail`` events, formatted."""
        return [_format_event(rec) for rec in self._trace]

    def trace_digest(self) -> str:
        """SHA-256 of the whole formatted trace (needs ``SimConfig(hash_trace=True)``)."""
        if self._hasher is None:
            raise RuntimeError("trace hashing is off; use SimConfig(hash_trace=True)")
        return self._hasher.hexdigest()

    # -- running ----------------------------------------------------------------------

    def run(self) -> SimResult:
        """The whole fuzz run: ``config.ticks`` ticks of faults, then the liveness check."""
        self.run_ticks(self.config.ticks)
        converge = self.converge()
        return self.result(converge)

    def run_ticks(self, n: float) -> None:
        """Advance the virtual clock by ``n`` ticks, processing every event due."""
        if self.manual:
            raise RuntimeError("a manual simulator has no clock; use tick() and deliver()")
        self._run_until(self.now + n)

    def _run_until(self, target: float) -> None:
        heap = self._heap
        peers = self.peers
        try:
            while heap and heap[0][0] <= target:
                when, _, kind, a, b = heapq.heappop(heap)
                self.now = when
                self.step_count += 1
                if kind == _DELIVER:
                    self._deliver(a)
                elif kind == _TICK:
                    p = peers[a]
                    if p.core is not None and p.incarnation == b:
                        self._tick_peer(p)
                        self._schedule(when + 1.0, _TICK, a, b)
                elif kind == _SYNC:
                    p = peers[a]
                    if p.core is not None and p.sync_token == b:
                        if p.pending is not None:
                            self._sync(p)
                        elif p.saves:
                            self._save_event(p)
                elif kind == _WORLD:
                    self._world(a)
                elif kind == _RESTART:
                    p = peers[a]
                    if p.core is None and p.sync_token == b:
                        self._restart(p)
                elif kind == _HEAL:
                    self._uncut(b)
                elif kind == _ISOLATE:
                    p = peers[a]
                    if self._faults_on and p.core is not None and p.core.role == LEADER and p.core.term == b:
                        self._isolate_leader(p)
                elif kind == _SNAP_WRITE or kind == _SNAP_COMPACT:
                    p = peers[a]
                    token, write = b
                    w: SnapshotWrite | None = p.snap_write
                    if p.core is not None and p.sync_token == token and w is not None and w is write:
                        if kind == _SNAP_WRITE:
                            self._snapshot_durable(p, w)
                        else:
                            self._snapshot_compact(p, w)
                elif kind == _SNAP_FAIL:
                    t = self._transfers.get(a)
                    if t is not None and self.in_flight.pop(a, None) is not None:
                        self._transfer_failed(a, b)
                elif kind == _SNAP_REPORT:
                    self._report_snapshot(peers[a], *b)
        except Failure as f:
            raise self._violation(f) from f.__cause__
        self.now = max(self.now, target)

    def _world(self, tick: int) -> None:
        """Once per tick: random faults, transfers, client requests, periodic full checks."""
        self._note("-- tick %d --", tick)
        if self._faults_on:
            self._inject_faults()
        if self._faults_on and self.config.transfer_rate and self.rng.random() < self.config.transfer_rate:
            self._transfer_leadership()
        if self._faults_on and self.config.membership_rate and self.rng.random() < self.config.membership_rate:
            self._change_membership()
        if self._clients_on:
            self._client_writes()
            self._client_reads()
        if tick % self.config.full_check_ticks == 0:
            self.checker.full_check(list(self.peers.values()))
        self._schedule(tick + 1.0, _WORLD, tick + 1, None)

    # -- the Ready contract -------------------------------------------------------------------

    def _start(self, p: SimPeer) -> None:
        machine = self.state_machine_factory() if self.state_machine_factory is not None else None
        core_rng = random.Random(self.rng.getrandbits(64))
        try:
            p.start(self.core_factory, self.raft_config, core_rng, machine, self.logger)
        except Exception as exc:
            self._core_failed(p, "__init__", exc)
        if not self.manual:
            phase = self._phase[p.id] = self.rng.random()
            first = math.floor(self.now) + phase
            if first <= self.now:
                first += 1.0
            self._schedule(first, _TICK, p.id, p.incarnation)

    def _core_failed(self, p: SimPeer, what: str, exc: Exception) -> None:
        raise Failure("core-error", f"{p.id}: {what} raised {type(exc).__name__}: {exc}") from exc

    def _tick_peer(self, p: SimPeer) -> None:
        if p.barrier:
            self._hold(p, _IN_TICK, None, None)
            return
        try:
            p.raft.tick()
        except Exception as exc:
            self._core_failed(p, "Raft.tick()", exc)
        self._drive(p)
        self.checker.observe(p)

    def _drive(self, p: SimPeer, sync_now: bool = False) -> None:
        """Take Readies from ``p`` until it has none or a save is buffered
        (pipelined: until it has none or a barrier is in flight)."""
        if self.pipeline:
            self._drive_pipelined(p, sync_now)
            return
        core = p.core
        if core is None:
            return
        rounds = 0
        while p.pending is None:
            rounds += 1
            rd = self._next_ready(p, core, rounds)
            if rd is None:
                return
            if rd.entries:
                self._check_persist(p, core, rd)
            if rd.soft_state is not None and p.sending:
                self._cancel_transfers(p, core)
            for m in rd.messages:
                self._send(m)
            if p.id in self._held and (rd.snapshot is not None or rd.hard_state is not None or rd.entries):
                p.pending = rd
                p.install_pending = rd.snapshot is not None
                self._note("%s: save held (%s%s)", p.id, "snapshot, " if rd.snapshot else "", _save_text(rd))
                return
            if rd.snapshot is not None:
                if not self.manual and self._faults_on and not sync_now:
                    # Recording the snapshot is a step of its own: a crash may
                    # land before it, or after it but before the save.
                    p.pending = rd
                    p.install_pending = True
                    rate = self.config.sync_delay_rate
                    slow = rate and self.rng.random() < rate
                    delay = self.rng.uniform(0.0, self.config.max_sync_delay) if slow else 0.0
                    self._schedule(self.now + delay, _SYNC, p.id, p.sync_token)
                    self._note("%s: snapshot %d/%d to install (recorded in %.3f ticks)", p.id, rd.snapshot.term,
                               rd.snapshot.index, delay)
                    return
                self._install(p, rd.snapshot)
            if rd.hard_state is not None or rd.entries:
                rate = self.config.sync_delay_rate
                if not sync_now and self._faults_on and rate and self.rng.random() < rate:
                    p.pending = rd
                    delay = self.rng.uniform(0.0, self.config.max_sync_delay)
                    self._schedule(self.now + delay, _SYNC, p.id, p.sync_token)
                    self.faults["slow_sync"] += 1
                    self._note("%s: save buffered for %.3f ticks (%s)", p.id, delay, _save_text(rd))
                    return
            self._finish_ready(p, rd)
            if p.core is not core:
                return

    def _sync(self, p: SimPeer, force: bool = False, snapshot_only: bool = False) -> None:
        """The buffered part of ``p``'s Ready reaches the disk (``force``: all
        of it now, with no crash point in between; ``snapshot_only``: just
        record its snapshot)."""
        rd = p.pending
        assert rd is not None
        if p.install_pending:
            assert rd.snapshot is not None
            if not force and self._maybe_crash(p, "before-install"):
                return
            self._install(p, rd.snapshot)
            p.install_pending = False
            if snapshot_only or (not force and self._maybe_crash(p, "after-install")):
                return
            rate = self.config.sync_delay_rate
            if (rd.hard_state is not None or rd.entries) and not force and self._faults_on and rate \
                    and self.rng.random() < rate:
                delay = self.rng.uniform(0.0, self.config.max_sync_delay)
                self._schedule(self.now + delay, _SYNC, p.id, p.sync_token)
                self.faults["slow_sync"] += 1
                self._note("%s: save buffered for %.3f ticks (%s)", p.id, delay, _save_text(rd))
                return
        p.pending = None
        self._finish_ready(p, rd)
        if p.core is None:
            return
        while p.compactions and p.pending is None and self._compactable(p, p.compactions[0]):
            self._compact(p, p.compactions.pop(0))
        while p.snap_inbox and p.pending is None and p.up:
            self._step_snapshot(p, *p.snap_inbox.pop(0))
        self._drive(p)
        self.checker.observe(p)

    def _check_persist(self, p: SimPeer, core: Raft, rd: Ready) -> None:
        first = rd.entries[0].index
        try:
            prev = core.log.term(first - 1)
        except LogCompacted as exc:
            fail("log-matching", f"{p.id}'s Ready persists entries from {first}, but index {first - 1} is "
                                 f"compacted away ({exc})")
        self.checker.on_persist(p, prev, rd.entries)

    def _finish_ready(self, p: SimPeer, rd: Ready) -> None:
        """The save reached the disk: release the acks, apply, advance."""
        if rd.hard_state is not None or rd.entries:
            try:
                p.disk.save(rd.hard_state, rd.entries, True)
            except Exception as exc:
                self._core_failed(p, "LogStorage.save (entries from Ready)", exc)
            self._note("%s: synced %s", p.id, _save_text(rd))
        for m in rd.messages_after_persist:
            self._send(m)
        if rd.soft_state is not None:
            s = rd.soft_state
            self._note("%s: now %s in term %d (leader %s)", p.id, s.role, s.term, s.leader)
        if rd.committed_entries:
            for e in rd.committed_entries:
                self._apply(p, e)
            self._note("%s: applied %d..%d", p.id, rd.committed_entries[0].index, rd.committed_entries[-1].index)
        for rs in rd.read_states:
            for rid in rs.request_ids:
                self._answer_read(p, rid, rs.index)
        try:
            p.raft.advance(rd)
        except Exception as exc:
            self._core_failed(p, "Raft.advance()", exc)
        self._maybe_snapshot(p, rd)

    def _maybe_snapshot(self, p: SimPeer, rd: Ready) -> None:
        """After applying ``rd``'s committed entries: snapshot now and then."""
        if rd.committed_entries and self.snapshots and p.snap_write is None and p.compactions == []:
            rate = self.config.extra_snapshot_rate
            if p.applied - p.snap_last >= self.snapshot_every or (rate and self.rng.random() < rate):
                self._capture(p)

    # -- pipelined persistence --------------------------------------------------------------
    #
    # The runtime's part as a pipelined runtime plays it: take a Ready, send
    # its messages, apply its committed entries and accept() it at once,
    # queue its save; saves reach the disk in order (_complete_saves), then
    # their acknowledgements go out and persisted() is called. A barrier
    # (persist_before_step) stops the Ready loop, and holds every input in
    # p.inbox, until the FIFO is drained.

    def _drive_pipelined(self, p: SimPeer, sync_now: bool = False) -> None:
        core = p.core
        if core is None:
            return
        rounds = 0
        while not p.barrier:
            rounds += 1
            rd = self._next_ready(p, core, rounds)
            if rd is None:
                return
            self._take(p, core, rd, sync_now)
            if p.core is not core:
                return

    def _next_ready(self, p: SimPeer, core: Raft, rounds: int) -> Ready | None:
        """``p``'s next Ready (the ``rounds``-th in a row), or ``None`` if it has none."""
        try:
            if not core.has_ready():
                return None
            rd = core.ready()
        except Exception as exc:
            self._core_failed(p, "Raft.ready()", exc)
        if rounds > 1000:
            fail("ready-loop", f"{p.id} produced 1000 Readies in a row without settling")
        return rd

    def _take(self, p: SimPeer, core: Raft, rd: Ready, sync_now: bool) -> None:
        """Steps 1 and 2 of the contract (send, apply, accept), then queue the save."""
        st = self.pipe_stats
        st["readies"] += 1
        if p.saves:
            st["overlapped"] += 1
        if rd.entries:
            self._check_persist(p, core, rd)
        if rd.soft_state is not None and p.sending:
            self._cancel_transfers(p, core)
        for m in rd.messages:
            self._send(m)
        if rd.soft_state is not None:
            s = rd.soft_state
            self._note("%s: now %s in term %d (leader %s)", p.id, s.role, s.term, s.leader)
        if rd.committed_entries:
            last = rd.committed_entries[-1]
            self._check_apply_durability(p, core, last)
            for e in rd.committed_entries:
                self._apply(p, e)
            self._note("%s: applied %d..%d", p.id, rd.committed_entries[0].index, last.index)
        for rs in rd.read_states:
            for rid in rs.request_ids:
                self._answer_read(p, rid, rs.index)
        try:
            core.accept(rd)
        except Exception as exc:
            self._core_failed(p, "Raft.accept()", exc)
        self._queue_save(p, rd, sync_now)
        if p.core is core:
            self._maybe_snapshot(p, rd)

    def _check_apply_durability(self, p: SimPeer, core: Raft, last: Entry) -> None:
        """Entries handed out for applying are on disk: a follower's on its
        own, a leader's at least on a quorum of its voters (its own save
        may still be running, see ``Raft.ready``)."""
        if _durably_holds(p, last.index, last.term):
            return
        if core.role == LEADER:
            voters = core.membership.voters
            holders = durable_holders(self.peers, voters, last.index, last.term)
            if quorum.has_quorum(voters, holders):
                return
            fail("apply-durability",
                 f"leader {p.id}'s Ready hands out {last.term}/{last.index} for applying, but only "
                 f"{holders or 'nobody'} of the voters {sorted(voters)} hold it on disk")
        fail("apply-durability",
             f"{p.id}'s Ready hands out {last.term}/{last.index} for applying, but its disk does not hold it "
             f"(a follower's committed entries must already be persisted; disk ends at {p.disk.last_index()})")

    def _queue_save(self, p: SimPeer, rd: Ready, sync_now: bool) -> None:
        """Put ``rd``'s save at the end of ``p``'s FIFO (a Ready with nothing to
        write and nothing ahead of it is persisted at once)."""
        save = Save(rd, self.now, rd.snapshot is not None)
        st = self.pipe_stats
        if not save.has_write() and not p.saves:
            self._persisted(p, [rd])
            return
        p.saves.append(save)
        st["max_depth"] = max(st["max_depth"], len(p.saves))
        if rd.persist_before_step:
            p.barrier = True
            st["barriers"] += 1
        if not save.has_write():
            if rd.messages_after_persist:
                st["acks_waited"] += 1
            return  # done with the saves ahead of it
        if p.id in self._held or p.saves[0].ready_at == math.inf:
            save.ready_at = math.inf  # until flush() (behind held saves, in order)
            self._note("%s: save held (%s%s)", p.id, "snapshot, " if rd.snapshot else "", _save_text(rd))
            return
        if sync_now or self.manual:
            self._complete_saves(p, force=True)
            return
        rate = self.config.sync_delay_rate
        if self._faults_on and rate and self.rng.random() < rate:
            delay = self.rng.uniform(0.0, self.config.max_sync_delay)
            self.faults["slow_sync"] += 1
            how = "slow save"
        else:
            delay = self.rng.uniform(0.0, self.config.write_latency)
            how = "save"
        save.ready_at = self.now + delay
        self._schedule(save.ready_at, _SYNC, p.id, p.sync_token)
        what = (f"snapshot {rd.snapshot.term}/{rd.snapshot.index}, " if rd.snapshot else "") + _save_text(rd)
        self._note("%s: %s #%d in flight for %.3f ticks (%s)%s", p.id, how, len(p.saves), delay, what,
                   " [barrier]" if rd.persist_before_step else "")

    def _complete_saves(self, p: SimPeer, force: bool = False, snapshot_only: bool = False) -> bool:
        """Write, from the head of ``p``'s FIFO, every save that is due (all of
        them with ``force``; with ``snapshot_only``, up to recording the
        snapshot a queued Ready carries). Returns whether anything happened."""
        core = p.core
        progress = False
        if snapshot_only and not any(s.install_pending for s in p.saves):
            return False
        while p.saves and p.core is core:
            head = p.saves[0]
            if not force and head.ready_at > self.now:
                break
            if head.install_pending:
                rd = head.rd
                assert rd.snapshot is not None
                if not force and self._maybe_crash(p, "before-install"):
                    return True
                self._install(p, rd.snapshot, rd)
                head.install_pending = False
                progress = True
                if snapshot_only or (not force and self._maybe_crash(p, "after-install")):
                    return True
                rate = self.config.sync_delay_rate
                if (rd.hard_state is not None or rd.entries) and not force and self._faults_on and rate \
                        and self.rng.random() < rate:
                    delay = self.rng.uniform(0.0, self.config.max_sync_delay)
                    head.ready_at = self.now + delay
                    self._schedule(head.ready_at, _SYNC, p.id, p.sync_token)
                    self.faults["slow_sync"] += 1
                    self._note("%s: save buffered for %.3f ticks (%s)", p.id, delay, _save_text(rd))
                    return True
            group = [p.saves.popleft()]
            while p.saves and not p.saves[0].install_pending and (force or p.saves[0].ready_at <= self.now):
                group.append(p.saves.popleft())
            self._write_group(p, group)
            progress = True
        return progress

    def _write_group(self, p: SimPeer, group: list[Save]) -> None:
        """One synced write of the saves in ``group`` (in order), then their
        acknowledgements and ``persisted``."""
        hard_state = None
        entries: list[Entry] = []
        writes = 0
        for save in group:
            rd = save.rd
            if rd.hard_state is None and not rd.entries:
                continue
            writes += 1
            if rd.hard_state is not None:
                hard_state = rd.hard_state
            if rd.entries:
                if entries:
                    # A later save replaces the earlier one's entries from its first index on.
                    del entries[max(rd.entries[0].index - entries[0].index, 0):]
                entries.extend(rd.entries)
        if writes:
            try:
                p.disk.save(hard_state, entries, True)
            except Exception as exc:
                self._core_failed(p, "LogStorage.save (entries from Ready)", exc)
            if writes > 1:
                self.pipe_stats["group_writes"] += 1
                self.pipe_stats["merged"] += writes
                self._note("%s: synced %s (%d saves in one write)", p.id, _hs_entries_text(hard_state, entries),
                           writes)
            else:
                self._note("%s: synced %s", p.id, _hs_entries_text(hard_state, entries))
        self._persisted(p, [save.rd for save in group])

    def _persisted(self, p: SimPeer, readies: list[Ready]) -> None:
        """``readies`` are on disk: step 4 of the contract for each, in order."""
        core = p.raft
        for rd in readies:
            for m in rd.messages_after_persist:
                self._send(m)
            try:
                self._report_persisted(core, rd)
            except Exception as exc:
                self._core_failed(p, "Raft.persisted()", exc)
        p.barrier = bool(p.saves) and p.saves[-1].rd.persist_before_step

    def _report_persisted(self, core: Raft, rd: Ready) -> None:
        """``Raft.persisted(rd)`` (a seam for the tests' broken runtimes)."""
        core.persisted(rd)

    def _save_event(self, p: SimPeer) -> None:
        """A save of ``p`` may be due: write what is, then let the core go on."""
        core = p.core
        if self._complete_saves(p) and p.core is core:
            self._after_saves(p)

    def _after_saves(self, p: SimPeer) -> None:
        """Saves completed: deferred compactions and snapshots, the Ready
        loop, and the inputs held during a barrier."""
        core = p.core
        while p.compactions and not p.barrier and p.core is core and self._compactable(p, p.compactions[0]):
            self._compact(p, p.compactions.pop(0))
        if p.core is not core:
            return
        self._drive(p)
        self._release(p)
        while p.snap_inbox and not p.saves and p.core is core:
            self._step_snapshot(p, *p.snap_inbox.pop(0))
        self.checker.observe(p)

    def _hold(self, p: SimPeer, kind: int, a: Any, b: Any) -> None:
        """An input for ``p``'s core during a barrier: it waits in ``p.inbox``."""
        p.inbox.append((kind, a, b))
        self.pipe_stats["held"] += 1

    def _release(self, p: SimPeer) -> None:
        """Feed the held inputs to the core, in arrival order, until the next barrier."""
        core = p.core
        while p.inbox and not p.barrier and p.core is core:
            kind, a, b = p.inbox.popleft()
            if kind == _IN_MSG:
                self._step_into(p, a)
            elif kind == _IN_TICK:
                self._tick_peer(p)
            elif kind == _IN_SNAP:
                self._step_snapshot(p, a, b)
            else:
                self._report_snapshot(p, *a)

    def _apply(self, p: SimPeer, e: Entry) -> None:
        self.checker.on_apply(p, e)
        w = p.writes.pop(e.index, None)
        if w is not None:
            if w.term != e.term:
                self.stats["writes_superseded"] += 1
            elif w.data != e.data:
                fail("client-write",
                     f"{p.id} proposed {w.data!r} at {w.term}/{e.index} but applied {e.data!r} there")
            else:
                self.acked.append(AckedWrite(e.index, e.term, e.data, w.client))
                if 0 <= w.client < len(self.clients):
                    c = self.clients[w.client]
                    c.last_ok, c.unacked = self.now, 0
                self.max_acked_index = max(self.max_acked_index, e.index)
                self._note("%s: write %r acknowledged at %d/%d", p.id, e.data, e.term, e.index)
        if p.machine is not None and e.kind is EntryKind.NORMAL:
            self._apply_to_machine(p, e)

    def _apply_to_machine(self, p: SimPeer, e: Entry) -> None:
        machine = p.machine
        assert machine is not None
        try:
            result: Any = machine.handle_write(unpack(e.data))
            if inspect.iscoroutine(result):
                result = _run_coroutine(result)
            outcome: Any = ("ok", _canonical(result))  # unencodable: fails alike on every peer
        except HandlerSuspended:
            raise
        except Exception as exc:  # a deterministic exception is a result too
            outcome = ("raised", type(exc).__name__, str(exc))
        known = self._results.setdefault(e.index, outcome)
        if known != outcome:
            fail("state-machine-determinism",
                 f"{p.id}'s state machine returned {outcome!r} for index {e.index}, another peer got {known!r}")

    # -- snapshots ---------------------------------------------------------------------------
    #
    # Taking one (the runtime's _take_snapshot and _compact): capture the
    # applied state, write it to the snapshot store (durable after a delay; a
    # crash before loses it), and only then tell the core (snapshot_taken) and
    # compact storage, never while a Ready is in progress. Sending one: the
    # leader's InstallSnapshot starts a transfer that takes a while and may
    # break off; on success the follower's store holds the data durably and
    # only then is the message stepped into its core. Installing one: the
    # Ready's snapshot is recorded in storage and the applied state restored
    # from the store before the Ready's save.

    def _capture(self, p: SimPeer) -> None:
        """Start a snapshot of ``p``'s applied state."""
        core = p.raft
        index = p.applied
        if index <= 0:
            return
        term = core.log.term_or_none(index)
        if term is None:
            return  # a snapshot from the leader is being installed: it supersedes this one
        machine = None
        if p.machine is not None:
            if not self._machine_snapshots:
                raise RuntimeError(f"{type(p.machine).__name__} cannot snapshot (it needs snapshot() and restore())")
            try:
                machine = _snapshot_bytes(p.machine.snapshot())
            except Exception as exc:
                raise Failure("state-machine-snapshot",
                              f"{p.id}: snapshot() raised {type(exc).__name__}: {exc}") from exc
        data = SnapshotData(index, term, p.chain, machine)
        self.checker.on_snapshot(p, data)
        w = SnapshotWrite(SnapshotMeta(index, term, core.membership_at(index)), data)
        self.checker.observe(p)  # record the commits this Ready made before comparing
        self.checker.check_snapshot_meta(p, w.meta, "took")
        p.snap_write = w
        p.snap_last = index
        if self.manual:
            self._note("%s: snapshot %d/%d captured", p.id, term, index)
            self._snapshot_durable(p, w)
            return
        delay = self.rng.uniform(0.0, self.config.max_snapshot_write)
        self._schedule(self.now + delay, _SNAP_WRITE, p.id, (p.sync_token, w))
        self._note("%s: snapshot %d/%d captured, durable in %.3f ticks", p.id, term, index, delay)

    def _snapshot_durable(self, p: SimPeer, w: SnapshotWrite) -> None:
        if self._maybe_crash(p, "snapshot-write"):
            return
        meta = w.meta
        p.snapshots[(meta.index, meta.term)] = w.data
        w.durable = True
        if self.manual:
            if self._compactable(p, w):
                self._compact(p, w)
            else:
                p.compactions.append(w)
            return
        delay = self.rng.uniform(0.0, self.config.max_compact_delay)
        self._schedule(self.now + delay, _SNAP_COMPACT, p.id, (p.sync_token, w))
        self._note("%s: snapshot %d/%d durable", p.id, meta.term, meta.index)

    def _snapshot_compact(self, p: SimPeer, w: SnapshotWrite) -> None:
        if self._maybe_crash(p, "before-compact"):
            return
        if p.pending is not None or p.barrier or p.compactions or not self._compactable(p, w):
            # The runtime compacts between Readies only (pipelined: not in a
            # barrier), in order, and only once its disk holds the snapshot's
            # index (a leader may apply before its own save is done).
            p.compactions.append(w)
            return
        self._compact(p, w)
        if self._maybe_crash(p, "after-compact"):
            return
        self.checker.observe(p)

    @staticmethod
    def _compactable(p: SimPeer, w: SnapshotWrite) -> bool:
        """Whether ``p``'s disk holds the index ``w`` snapshots (the runtime's ``_compact`` waits for it)."""
        return _durably_holds(p, w.meta.index, w.meta.term)

    def _compact(self, p: SimPeer, w: SnapshotWrite) -> None:
        """``snapshot_taken`` and ``LogStorage.compact``, as the runtime's ``_compact`` does."""
        core = p.raft
        meta = w.meta
        if p.snap_write is w:
            p.snap_write = None
        try:
            core.snapshot_taken(meta)
        except Exception as exc:
            self._core_failed(p, "Raft.snapshot_taken()", exc)
        disk = p.disk
        recorded = disk.load()[1]
        self.snap_stats["taken"] += 1
        if recorded is not None and recorded.index >= meta.index:
            # A newer snapshot was installed from the leader meanwhile.
            self._note("%s: snapshot %d/%d taken; storage already holds %d/%d", p.id, meta.term, meta.index,
                       recorded.term, recorded.index)
        else:
            try:
                keep_from = min(meta.index - self.snapshot_keep, core.compaction_limit())
                upto = max(keep_from, disk.first_index() - 1)
                disk.compact(upto, meta)
            except Exception as exc:
                self._core_failed(p, "compaction (compaction_limit / LogStorage.compact)", exc)
            self._note("%s: snapshot %d/%d taken; log compacted through %d", p.id, meta.term, meta.index, upto)
        self._prune(p)

    def _prune(self, p: SimPeer) -> None:
        """Keep the two newest snapshots, and any that storage or the core refers to."""
        if len(p.snapshots) <= 2:
            return
        keep = set(sorted(p.snapshots, reverse=True)[:2])
        for meta in (p.disk.load()[1], p.core.snapshot if p.core is not None else None):
            if meta is not None:
                keep.add((meta.index, meta.term))
        for key in [k for k in p.snapshots if k not in keep]:
            del p.snapshots[key]

    def _install(self, p: SimPeer, meta: SnapshotMeta, rd: Ready | None = None) -> None:
        """The follower's Ready (``rd``, by default the buffered one) carries
        ``meta``: record it, restore the state from the store."""
        data = p.snapshots.get((meta.index, meta.term))
        if data is None:
            fail("snapshot-durability", f"{p.id}'s core installs the snapshot {meta.term}/{meta.index}, which is "
                                        f"not in its snapshot store")
        self.checker.check_snapshot_meta(p, meta, "installs")
        try:
            # As the runtime does: the Ready's hard state (its term is at least
            # the snapshot's) is saved before the snapshot is recorded.
            if rd is None:
                rd = p.pending
            if rd is not None and rd.snapshot == meta and rd.hard_state is not None:
                p.disk.save(rd.hard_state, [], sync=True)
            p.disk.install_snapshot(meta)
        except Exception as exc:
            self._core_failed(p, "LogStorage.install_snapshot", exc)
        term, match = p.ack_promise
        if term < p.raft.term and match > meta.index:
            # The log acknowledged in an older term gave way to a newer
            # leader's (committed) snapshot; storage records that before the
            # new term is saved, which is fine: those entries conflict with a
            # committed one and can never commit.
            p.ack_promise = (term, meta.index)
        self._restore(p, data, "installed")
        self.snap_stats["installed"] += 1
        if p.done_pending:
            self._resolve_done(p, True)
        self._note("%s: snapshot %d/%d installed; state restored", p.id, meta.term, meta.index)

    def _restore(self, p: SimPeer, data: SnapshotData, how: str) -> None:
        self.checker.on_restore(p, data, how)
        p.snap_last = max(p.snap_last, data.index)
        for index in [i for i in p.writes if i <= data.index]:
            del p.writes[index]  # outcome unknown to this peer: it never applies them
        machine = p.machine
        if machine is None or data.machine is None:
            return
        try:
            machine.restore_from_file(io.BytesIO(data.machine))
            again = _snapshot_bytes(machine.snapshot())
        except Exception as exc:
            raise Failure("state-machine-snapshot",
                          f"{p.id}: restoring the snapshot at {data.index} raised {type(exc).__name__}: {exc}") from exc
        if again != data.machine:
            fail("state-machine-snapshot",
                 f"{p.id} restored its state machine from the snapshot at index {data.index}, but snapshot() then "
                 f"returns different bytes ({len(again)} vs {len(data.machine)}): restore() does not reproduce "
                 f"the state")

    def _restore_at_start(self, p: SimPeer) -> None:
        meta = p.disk.load()[1]
        if meta is None:
            return
        data = p.snapshots.get((meta.index, meta.term))
        if data is None:
            fail("snapshot-durability",
                 f"{p.id} restarted with its log compacted up to the snapshot {meta.term}/{meta.index}, but that "
                 f"snapshot is not in its snapshot store")
        self.checker.check_snapshot_meta(p, meta, "restarted from")
        self._restore(p, data, "restarted from")
        self.snap_stats["restored"] += 1

    def _send_snapshot(self, m: InstallSnapshot) -> None:
        """A leader's InstallSnapshot: stream the snapshot (a transfer), step the message at the end."""
        p = self.peers[m.src]
        running = p.sending.get(m.dst)
        if running is not None and running in self._transfers:
            if self._transfers[running].msg.term == m.term:
                self._note("%s: already sending a snapshot to %s", p.id, m.dst)
                return
            self._cancel(running)
        data = p.snapshots.get((m.index, m.snapshot_term))
        if data is None:
            newer = p.core.snapshot if p.core is not None else None
            if newer is None or newer.index <= m.index or (newer.index, newer.term) not in p.snapshots:
                fail("snapshot-durability", f"{p.id} offers {m.dst} the snapshot {m.snapshot_term}/{m.index}, which "
                                            f"is not in its snapshot store")
            # Two newer snapshots were taken between the core's offer and the
            # transfer, and the store kept only those. As in the runtime, the
            # transfer fails at once and the next offer carries the newest.
            self.snap_stats["replaced before sending"] += 1
            self._note("%s: snapshot %d/%d for %s was replaced by %d/%d before it was sent", p.id, m.snapshot_term,
                       m.index, m.dst, newer.term, newer.index)
            report = (p.incarnation, m.term, m.dst, False)
            if self.manual:
                self._report_snapshot(p, *report)
            else:
                self._schedule(self.now + self.rng.uniform(0.1, 2.0), _SNAP_REPORT, m.src, report)
            return
        dst = self.peers[m.dst]
        if self._sends_after_heal is not None and dst.up:
            # (A transfer to a peer that is down is no loop: the leader keeps
            # trying a removed one for an election timeout, for instance.)
            key = (m.term, m.dst)
            self._sends_after_heal[key] += 1
            n = self._sends_after_heal[key]
            if n > self.config.max_snapshot_sends:
                fail("install-loop",
                     f"{p.id}, leader of term {m.term}, sends {m.dst} a snapshot ({m.snapshot_term}/{m.index}) for the "
                     f"{n}th time since the faults stopped (bound {self.config.max_snapshot_sends}): the follower "
                     f"keeps needing entries the leader compacted away")
        self.stats["messages"] += 1
        self.snap_stats["sent"] += 1
        self._seq += 1
        mid = self._seq
        self._transfers[mid] = Transfer(m, p.incarnation, dst.incarnation if dst.up else -1, data, self.now)
        self.in_flight[mid] = m
        p.sending[m.dst] = mid
        if self.manual:
            self._note("send %s", m)
            return
        cfg = self.config
        rng = self.rng
        if not dst.up or (m.src, m.dst) in self.blocked or (m.dst, m.src) in self.blocked:
            # The connection cannot be made: the transfer fails after a connect timeout.
            self._schedule(self.now + rng.uniform(cfg.min_delay, cfg.max_delay), _SNAP_FAIL, mid, "no connection")
            self._note("send %s (no connection)", m)
            return
        duration = rng.uniform(cfg.min_transfer_ticks, cfg.max_transfer_ticks)
        self._schedule(self.now + duration, _DELIVER, mid, None)
        if self._faults_on and cfg.transfer_fail_rate and rng.random() < cfg.transfer_fail_rate:
            self._schedule(self.now + rng.uniform(0.0, duration), _SNAP_FAIL, mid, "the transfer broke off")
        self._note("send %s (transfer of %.3f ticks)", m, duration)

    def _cancel(self, mid: int) -> None:
        t = self._transfers.pop(mid)
        self.in_flight.pop(mid, None)
        self.snap_stats["cancelled"] += 1
        self._note("%s: snapshot transfer to %s cancelled", t.msg.src, t.msg.dst)

    def _cancel_transfers(self, p: SimPeer, core: Raft) -> None:
        """``p`` stopped leading (or leads a new term): its transfers stop, as the runtime's are cancelled."""
        for dst, mid in list(p.sending.items()):
            t = self._transfers.get(mid)
            if t is None or core.role != LEADER or t.msg.term != core.term:
                del p.sending[dst]
                if t is not None:
                    self._cancel(mid)

    def _complete_transfer(self, mid: int, m: InstallSnapshot) -> None:
        """The last chunk arrives: the follower stores the data durably, then steps the message."""
        t = self._transfers.pop(mid, None)
        if t is None:
            return
        src, dst = self.peers[m.src], self.peers[m.dst]
        if src.sending.get(m.dst) == mid:
            del src.sending[m.dst]
        if src.core is None or src.incarnation != t.src_incarnation or src.core.role != LEADER \
                or src.core.term != m.term:
            self.snap_stats["cancelled"] += 1
            self._note("snapshot transfer cancelled (the leader is gone): %s", m)
            return
        why = None
        if dst.core is None or dst.incarnation != t.dst_incarnation:
            why = "the receiver crashed"
        elif (m.src, m.dst) in self.blocked or (m.dst, m.src) in self.blocked:
            why = "partition"
        elif dst.core.term > m.term:
            why = f"stale term (the receiver is in term {dst.core.term})"
            if self._sends_after_heal is not None:
                # Not an install loop: the receiver refuses a deposed leader
                # (which learns it from the next response it gets).
                self._sends_after_heal[(m.term, m.dst)] -= 1
        elif self._maybe_crash(dst, "receiving"):
            why = "the receiver crashed before the data was durable"
        if why is not None:
            self._transfer_failed(mid, why, t)
            return
        dst.snapshots[(m.index, m.snapshot_term)] = t.data
        self._note("%s: snapshot %d/%d from %s durably stored", dst.id, m.snapshot_term, m.index, m.src)
        if self._maybe_crash(dst, "received"):
            self._transfer_failed(mid, "the receiver crashed before taking it", t)
            return
        done = (m.src, t.src_incarnation, m.term)
        if self.config.done_on_receipt:
            self._transfer_done(done, dst.id, True)
        if (dst.pending is not None or dst.saves) and not self.config.step_snapshot_mid_ready:
            dst.snap_inbox.append((m, done))
            self._note("%s: %s waits for the current Ready", dst.id, m)
            return
        self._step_snapshot(dst, m, done)

    def _step_snapshot(self, dst: SimPeer, m: InstallSnapshot, done: tuple[NodeId, int, int]) -> None:
        if dst.barrier:
            self._hold(dst, _IN_SNAP, m, done)
            self._note("%s: holds %s until its saves are on disk", dst.id, m)
            return
        if not self.config.done_on_receipt:
            dst.done_pending.append(done)
        self._step_into(dst, m)
        if done in dst.done_pending and not dst.install_pending and dst.raft.log.pending_snapshot is None:
            dst.done_pending.remove(done)  # nothing to install
            self._transfer_done(done, dst.id, True)

    def _transfer_done(self, done: tuple[NodeId, int, int], dst: NodeId, ok: bool) -> None:
        src, incarnation, term = done
        if self.manual:
            self._report_snapshot(self.peers[src], incarnation, term, dst, ok)
        else:
            delay = self.rng.uniform(self.config.min_delay, self.config.max_delay)
            self._schedule(self.now + delay, _SNAP_REPORT, src, (incarnation, term, dst, ok))

    def _resolve_done(self, p: SimPeer, ok: bool) -> None:
        """Transfers to ``p`` waiting for the install end: recorded (``ok``) or lost in a crash."""
        pending, p.done_pending = p.done_pending, []
        for done in pending:
            self._transfer_done(done, p.id, ok)

    def _transfer_failed(self, mid: int, why: str, t: Transfer | None = None) -> None:
        if t is None:
            t = self._transfers.pop(mid, None)
            if t is None:
                return
        m = t.msg
        src = self.peers[m.src]
        if src.sending.get(m.dst) == mid:
            del src.sending[m.dst]
        self.snap_stats["failed"] += 1
        self.snap_stats["failed: " + why.split(" (")[0]] += 1
        self._sends_after_heal = None if self._faults_on else self._sends_after_heal
        self._note("snapshot transfer failed (%s): %s", why, m)
        if self.manual:
            self._report_snapshot(src, t.src_incarnation, m.term, m.dst, False)
        else:
            delay = self.rng.uniform(0.1, 2.0)  # the runtime backs off before the core may retry
            self._schedule(self.now + delay, _SNAP_REPORT, m.src, (t.src_incarnation, m.term, m.dst, False))

    def _report_snapshot(self, p: SimPeer, incarnation: int, term: int, dst: NodeId, ok: bool) -> None:
        """``report_snapshot`` to the leader that sent it, if it is still that live leader."""
        core = p.core
        if core is None or p.incarnation != incarnation or core.role != LEADER or core.term != term:
            return
        if p.barrier:
            self._hold(p, _IN_REPORT, (incarnation, term, dst, ok), None)
            return
        try:
            core.report_snapshot(dst, ok)
        except Exception as exc:
            self._core_failed(p, "Raft.report_snapshot()", exc)
        self._note("%s: snapshot transfer to %s reported %s", p.id, dst, "done" if ok else "failed")
        self._drive(p)
        self.checker.observe(p)

    def _maybe_crash(self, p: SimPeer, point: str) -> bool:
        """A snapshot crash point: crash ``p`` right here with ``snapshot_crash_rate``."""
        rate = self.config.snapshot_crash_rate
        if self.manual or not self._faults_on or not rate or not p.up or self.rng.random() >= rate:
            return False
        if not self._may_crash(p):
            return False
        self.faults[f"crash@{point}"] += 1
        self._note("%s: crash point %s", p.id, point)
        self._crash_for_a_while(p)
        return True

    # -- network ---------------------------------------------------------------------------

    def _send(self, m: Message) -> None:
        if isinstance(m, InstallSnapshot):
            self._send_snapshot(m)
            return
        if isinstance(m, AppendEntriesResponse):
            if m.success:
                p = self.peers[m.src]
                p.ack_promise = max(p.ack_promise, (m.term, m.match_index))
        elif isinstance(m, RequestVoteResponse) and m.granted and not m.pre_vote:
            p = self.peers[m.src]
            if m.term >= p.vote_promise[0]:
                p.vote_promise = (m.term, m.dst)
        self.stats["messages"] += 1
        self._seq += 1
        mid = self._seq
        if self.manual:
            self.in_flight[mid] = m
            self._note("send %s", m)
            return
        cfg = self.config
        rng = self.rng
        if self._faults_on and cfg.drop_rate and rng.random() < cfg.drop_rate:
            self.faults["drop"] += 1
            self._note("drop %s", m)
            self._sends_after_heal = None
            return
        self.in_flight[mid] = m
        self._schedule(self.now + rng.uniform(cfg.min_delay, cfg.max_delay), _DELIVER, mid, None)
        self._note("send %s", m)
        if self._faults_on and cfg.duplicate_rate and rng.random() < cfg.duplicate_rate:
            self.faults["duplicate"] += 1
            self._seq += 1
            self.in_flight[self._seq] = m
            self._schedule(self.now + rng.uniform(cfg.min_delay, cfg.max_delay), _DELIVER, self._seq, None)
            self._note("duplicate %s", m)

    def _deliver(self, mid: int) -> None:
        m = self.in_flight.pop(mid, None)
        if m is None:
            return
        if isinstance(m, InstallSnapshot):
            self._complete_transfer(mid, m)
            return
        p = self.peers.get(m.dst)
        if p is None or p.core is None:
            self._note("lost (peer down) %s", m)
            return
        if (m.src, m.dst) in self.blocked:
            self._note("lost (partition) %s", m)
            return
        self._step_into(p, m)

    def _step_into(self, p: SimPeer, m: Message) -> None:
        """Deliver ``m`` to ``p``'s core, run its Ready loop and check it."""
        if p.barrier:
            self._hold(p, _IN_MSG, m, None)
            self._note("%s: holds %s until its saves are on disk", p.id, m)
            return
        self._note("deliver %s", m)
        try:
            p.raft.step(m)
        except Exception as exc:
            self._core_failed(p, "Raft.step()", exc)
        self._drive(p)
        self.checker.observe(p)

    def _cut(self, links: Iterable[tuple[NodeId, NodeId]], duration: float | None) -> int:
        """Block ``links`` until :meth:`heal` or, with ``duration``, until then."""
        self._cut_token += 1
        self._sends_after_heal = None
        token = self._cut_token
        self._cuts[token] = cut = sorted(set(links))
        self.blocked.update(cut)
        if duration is not None:
            self._schedule(self.now + duration, _HEAL, None, token)
        return token

    def _uncut(self, token: int) -> None:
        links = self._cuts.pop(token, None)
        if links is None:
            return
        for link in links:
            self.blocked[link] -= 1
            if self.blocked[link] <= 0:
                del self.blocked[link]
        if token == self._random_cut:
            self._random_cut = None
        self._note("partition healed: %s", _links_text(links))

    def _heal(self) -> None:
        self.blocked.clear()
        self._cuts.clear()
        self._random_cut = None
        self._note("network healed")

    def _on_new_leader(self, peer: NodeId, term: int) -> None:
        """Leader-targeted fault: isolate some new leaders soon after they win."""
        cfg = self.config
        if self._faults_on and cfg.leader_isolation_rate and self.rng.random() < cfg.leader_isolation_rate:
            self._schedule(self.now + self.rng.uniform(0.0, cfg.max_leader_isolation_delay), _ISOLATE, peer, term)

    def _isolate_leader(self, p: SimPeer) -> None:
        cfg = self.config
        others = [x for x in self.ids if x != p.id]
        links = [(p.id, x) for x in others] + [(x, p.id) for x in others]
        self._cut(links, self.rng.uniform(cfg.min_partition_ticks, cfg.max_partition_ticks))
        self.faults["isolate_leader"] += 1
        self._note("partition: isolate leader %s (term %d)", p.id, p.raft.term)

    # -- random faults and clients -------------------------------------------------------------

    def _inject_faults(self) -> None:
        cfg = self.config
        rng = self.rng
        members = self.member_ids()
        if cfg.crash_rate and rng.random() < cfg.crash_rate:
            live = [i for i in members if self.peers[i].up and self._may_crash(self.peers[i])]
            if live:
                self._crash_for_a_while(self.peers[rng.choice(live)])
        if cfg.partition_rate and self._random_cut is None and len(members) > 1 and rng.random() < cfg.partition_rate:
            length = rng.uniform(cfg.min_partition_ticks, cfg.max_partition_ticks)
            if rng.random() < cfg.oneway_fraction:
                self._random_cut = self._random_oneway(members, length)
            else:
                order = list(members)
                rng.shuffle(order)
                if len(order) >= 3 and rng.random() < 0.5:
                    # A bridge: two halves that cannot talk, and one peer that talks to both.
                    bridge, rest = order[0], order[1:]
                    k = rng.randint(1, len(rest) // 2)
                    self._random_cut = self._partition([rest[:k], rest[k:]], length, bridge)
                    self.faults["bridge"] += 1
                else:
                    k = rng.randint(1, len(order) // 2)
                    self._random_cut = self._partition([order[:k], order[k:]], length)
                    self.faults["partition"] += 1

    def _may_crash(self, p: SimPeer) -> bool:
        """Whether ``p`` may go down now: with ``max_down`` set, while fewer
        members are down; otherwise a voter only while fewer than half of the
        voters of every configuration in force (see :meth:`configurations`)
        would then be down. Learners and non-members may always crash."""
        peers = self.peers
        if self.max_down is not None:
            members = self.member_ids()
            return sum(1 for i in members if not peers[i].up) < self.max_down
        for m in self.configurations():
            if p.id in m.voters:
                down = sum(1 for v in m.voters if v in peers and not peers[v].up)
                if down + 1 > (len(m.voters) - 1) // 2:
                    return False
        return True

    def _random_oneway(self, members: Sequence[NodeId], duration: float) -> int:
        rng = self.rng
        a, b = rng.sample(list(members), 2)
        mode = rng.randrange(3)
        if mode == 0:  # a reaches b, b cannot reach a
            links = [(b, a)]
        elif mode == 1:  # a is deaf: it sends but hears nobody
            links = [(x, a) for x in self.ids if x != a]
        else:  # a is mute: it hears everybody, nobody hears it
            links = [(a, x) for x in self.ids if x != a]
        self.faults["oneway"] += 1
        self._note("one-way partition: %s", _links_text(links))
        return self._cut(links, duration)

    def _partition(self, groups: Sequence[Iterable[NodeId]], duration: float | None, bridge: NodeId | None = None) -> int:
        sets = [sorted(set(g)) for g in groups]
        links = []
        for x, g in enumerate(sets):
            for h in sets[x + 1:]:
                for s in g:
                    for d in h:
                        links += [(s, d), (d, s)]
        via = f" (bridged by {bridge})" if bridge else ""
        self._note("partition %s%s", " | ".join(",".join(g) for g in sets), via)
        return self._cut(links, duration)

    def _client_writes(self) -> None:
        cfg = self.config
        rng = self.rng
        for c in self.clients:
            if c.unacked and self.now - c.last_ok > cfg.client_timeout:
                c.target = rng.choice([i for i in self.ids if i != c.target] or self.ids)
                c.last_ok, c.unacked = self.now, 0
            if rng.random() >= cfg.write_rate:
                continue
            self._write_seq += 1
            n = self._write_seq
            data = pack(self.command_factory(rng, n)) if self.state_machine_factory else f"c{n}".encode()
            target = c.target
            for _ in range(1 + cfg.max_retries):
                p = self.peers[target]
                if p.core is None:
                    target = rng.choice(self.ids)
                    continue
                try:
                    self._propose(p, data, c.id)
                    c.unacked += 1
                except NotLeader as exc:
                    hint = exc.leader
                    if hint is None or hint == target or hint not in self.peers:
                        hint = rng.choice([i for i in self.ids if i != target] or self.ids)
                    target = hint
                    continue
                except ProposalDropped:
                    pass
                break
            c.target = target

    def _client_reads(self) -> None:
        cfg = self.config
        rng = self.rng
        for c in self.clients:
            if not cfg.read_rate or rng.random() >= cfg.read_rate:
                continue
            p = self.peers[c.target]
            if p.core is None:
                c.target = rng.choice(self.ids)
                continue
            try:
                self._read(p, c.id)
            except NotLeader as exc:
                if exc.leader in self.peers:
                    c.target = exc.leader

    def _read(self, p: SimPeer, client: int) -> int:
        if p.barrier:
            raise NotLeader(None)  # busy persisting a term change: the client tries again later
        self._read_seq += 1
        rid = self._read_seq
        try:
            p.raft.read_index(rid)
        except NotLeader:
            raise
        except Exception as exc:
            self._core_failed(p, "Raft.read_index()", exc)
        p.reads[rid] = PendingRead(client, self.max_acked_index, self.now)
        self.stats["reads_asked"] += 1
        self._note("%s: read #%d asked (must see index >= %d)", p.id, rid, self.max_acked_index)
        self._drive(p)
        self.checker.observe(p)
        return rid

    def _answer_read(self, p: SimPeer, rid: int, index: int) -> None:
        """Linearizable reads: the read point covers every write acknowledged before the read."""
        read = p.reads.pop(rid, None)
        if read is None:
            fail("linearizable-read", f"{p.id} answered read #{rid}, which it never accepted (or answered before)")
        if index < read.floor:
            fail("linearizable-read",
                 f"{p.id} answered read #{rid} at index {index}, but the write at index {read.floor} was "
                 f"acknowledged before the read was asked (t={read.asked_at:.3f})")
        if index > p.raft.log.committed:
            fail("linearizable-read", f"{p.id} answered read #{rid} at index {index}, past its commit index")
        self.stats["reads_served"] += 1
        self._note("%s: read #%d served at index %d", p.id, rid, index)

    def _transfer_leadership(self, target: NodeId | None = None, random_target: bool = True) -> None:
        leader = self.leader()
        if leader is None:
            return
        p = self.peers[leader]
        if p.barrier:
            return
        if random_target and self.rng.random() >= 0.5:
            target = self.rng.choice([i for i in self.ids if i != leader] or [leader])
        try:
            chosen = p.raft.transfer_leadership(target)
        except (NotLeader, ValueError):
            return
        except Exception as exc:
            self._core_failed(p, "Raft.transfer_leadership()", exc)
        self.faults["transfer"] += 1
        self._note("%s: transferring leadership to %s", leader, chosen)
        self._drive(p)
        self.checker.observe(p)

    def _propose(self, p: SimPeer, data: bytes, client: int) -> tuple[int, int]:
        if p.barrier:
            self.stats["writes_refused"] += 1
            raise ProposalDropped(f"{p.id} is persisting a term change")
        try:
            term, index = p.raft.propose(data)
        except (NotLeader, ProposalDropped):
            self.stats["writes_refused"] += 1
            raise
        except Exception as exc:
            self._core_failed(p, "Raft.propose()", exc)
        p.writes[index] = PendingWrite(client, term, data, self.now)
        self.stats["writes_proposed"] += 1
        self._note("%s: accepted write %r at %d/%d", p.id, data, term, index)
        self._drive(p)
        self.checker.observe(p)
        return term, index

    # -- membership changes -----------------------------------------------------------------

    def committed_membership(self) -> Membership:
        """The latest committed configuration (the bootstrap one until a commit)."""
        return self.checker.committed_membership() or self.bootstrap_membership

    def configurations(self) -> list[Membership]:
        """The configurations in force: the committed one, and the live
        leader's (the latest in its log) if that differs."""
        committed = self.committed_membership()
        out = [committed]
        leader = self.leader()
        if leader is not None:
            m = self.peers[leader].raft.membership
            if m != committed:
                out.append(m)
        return out

    def member_ids(self) -> list[NodeId]:
        """Peers that are members (voters or learners) of a configuration in force, in ``ids`` order."""
        configs = self.configurations()
        return [i for i in self.ids if any(i in m.voters or i in m.learners for m in configs)]

    def _change_membership(self, kind: str | None = None, target: NodeId | None = None) -> bool:
        """Ask the leader for one membership change (random unless ``kind``
        and ``target`` say which); returns whether the core accepted it."""
        leader = self.leader()
        if leader is None:
            return False
        p = self.peers[leader]
        if p.barrier:
            return False
        core = p.raft
        rng = self.rng
        m = core.membership
        voters = [i for i in self.ids if i in m.voters]
        learners = [i for i in self.ids if i in m.learners]
        outsiders = [i for i in self.ids if i not in m.voters and i not in m.learners]
        if kind is None:
            if rng.random() < 0.05:
                kind = "unsafe"
            else:
                weights = {"add": 2 if outsiders else 0, "promote": 3 if learners else 0,
                           "remove-learner": 1 if learners else 0, "remove": 2 if len(voters) > 1 else 0,
                           "demote": 1 if len(voters) > 1 else 0}
                kinds = [k for k, w in weights.items() if w]
                if not kinds:
                    return False
                kind = rng.choices(kinds, [weights[k] for k in kinds])[0]
        new: Membership
        if kind == "unsafe":
            # Two voters at once: the core must refuse (ValueError).
            others = learners + outsiders
            options = []
            if len(others) >= 2:
                options.append("add two")
            if voters and others:
                options.append("swap")
            if len(voters) >= 3:
                options.append("remove two")
            if not options:
                return False
            how = rng.choice(options)
            if how == "add two":
                a, b = rng.sample(others, 2)
                new = with_member(with_member(m, a, f"sim:{a}", True), b, f"sim:{b}", True)
                target = f"{a}+{b}"
            elif how == "swap":
                a, b = rng.choice(voters), rng.choice(others)
                new = with_member(without_member(m, a), b, f"sim:{b}", True)
                target = f"{a}->{b}"
            else:
                a, b = rng.sample(voters, 2)
                new = without_member(without_member(m, a), b)
                target = f"{a}+{b}"
        elif kind == "add":
            target = target or rng.choice(outsiders)
            new = with_member(m, target, f"sim:{target}", voter=False)
        elif kind in ("promote", "promote-early"):
            target = target or rng.choice(learners)
            if kind == "promote" and not core.caught_up(target, self.config.promote_lag):
                if rng.random() >= 0.3:
                    self.member_stats["waiting"] += 1
                    return False
                kind = "promote-early"
            new = with_member(m, target, f"sim:{target}", voter=True)
        elif kind in ("remove", "remove-leader", "demote", "demote-leader"):
            base = kind.split("-")[0]
            if kind.endswith("-leader"):
                target = leader
            elif target is None:
                target = leader if rng.random() < 0.3 else rng.choice(voters)
                if target == leader and len(voters) == 2 and not self.config.remove_leader_from_two:
                    target = next(v for v in voters if v != leader)
            if target == leader:
                kind = base + "-leader"
            new = without_member(m, target) if base == "remove" else with_member(m, target, f"sim:{target}", False)
        elif kind == "remove-learner":
            target = target or rng.choice(learners)
            new = without_member(m, target)
        else:
            raise ValueError(f"unknown membership change {kind!r}")
        try:
            term, index = core.propose_membership(new)
        except (NotLeader, ProposalDropped, MembershipChangePending, ValueError) as exc:
            unsafe = kind == "unsafe" and isinstance(exc, ValueError)
            self.member_stats["unsafe_refused" if unsafe else "refused"] += 1
            self._note("%s: membership change %s %s refused: %s: %s", leader, kind, target, type(exc).__name__, exc)
            return False
        except Exception as exc:
            self._core_failed(p, "Raft.propose_membership()", exc)
        self._changes[(index, term)] = (kind, str(target), leader)
        self.member_stats["proposed"] += 1
        self.member_stats[kind] += 1
        self._note("%s: membership change %s %s proposed at %d/%d: %s", leader, kind, target, term, index,
                   members_text(new))
        self._drive(p)
        self.checker.observe(p)
        return True

    def _on_config_committed(self, e: Entry, membership: Membership) -> None:
        if e.index == 1:
            return  # the bootstrap configuration
        self.member_stats["committed"] += 1
        change = self._changes.get((e.index, e.term))
        if change is not None:
            kind, target, leader = change
            self.member_stats["committed:" + kind] += 1
            if kind in ("remove-leader", "demote-leader"):
                self.member_stats["leaders_removed"] += 1
        self._note("configuration %d/%d committed: %s", e.term, e.index, members_text(membership))

    def _follow_membership(self) -> None:
        """Liveness phase: keep every member of a configuration in force
        running, and stop peers outside them that still count themselves
        voters (removed servers that missed their removal would campaign)."""
        wanted = set(self.member_ids())
        for pid in self.ids:
            p = self.peers[pid]
            if pid in wanted:
                if not p.up:
                    self._restart(p)
            elif p.core is not None and p.core.membership.is_voter(pid):
                self._stop(p)
                self.member_stats["retired"] += 1
                self._note("%s: stopped (not a member of %s)", pid, members_text(self.committed_membership()))

    def _crash_for_a_while(self, p: SimPeer) -> None:
        cfg = self.config
        self._crash(p)
        downtime = self.rng.uniform(cfg.min_downtime, cfg.max_downtime)
        self._schedule(self.now + downtime, _RESTART, p.id, p.sync_token)

    def _crash(self, p: SimPeer) -> None:
        in_flight = [save.rd for save in p.saves if save.has_write()]
        lost = self._stop(p)
        self.faults["crash"] += 1
        self.crashes[p.id] += 1
        self._sends_after_heal = None
        if in_flight:
            self.pipe_stats["lost"] += len(in_flight)
            self._note("%s: CRASH (lost %d un-synced saves: %s)", p.id, len(in_flight),
                       "; ".join(_save_text(rd) for rd in in_flight))
            return
        self._note("%s: CRASH%s", p.id, f" (lost un-synced save: {_save_text(lost)})" if lost else "")

    def _stop(self, p: SimPeer) -> Ready | None:
        """Take ``p`` down, losing its volatile state; returns the save it lost."""
        self._check_promises(p)
        if not self.config.done_on_receipt:
            p.done_pending += [done for _, done in p.snap_inbox]
            p.done_pending += [done for kind, _, done in p.inbox if kind == _IN_SNAP]
        if p.done_pending:
            self._resolve_done(p, False)
        lost = p.pending
        if p.snap_write is not None and not p.snap_write.durable:
            self.snap_stats["lost"] += 1
        p.crash(self.now)
        self.checker.forget(p.id)
        return lost

    def _check_promises(self, p: SimPeer) -> None:
        """What ``p`` acknowledged must be on its disk when its memory goes:
        a vote, or entries up to a match index (a snapshot covers its index)."""
        hs = p.disk.load()[0]
        term, match = p.ack_promise
        if term > hs.term or (term == hs.term and p.disk.last_index() < match):
            fail("ack-durability",
                 f"{p.id} crashed having acknowledged index {match} in term {term}, but its disk holds term "
                 f"{hs.term} and entries up to {p.disk.last_index()}")
        term, candidate = p.vote_promise
        if term > hs.term or (term == hs.term and hs.vote != candidate):
            fail("ack-durability",
                 f"{p.id} crashed having granted its vote to {candidate} in term {term}, but its disk holds term "
                 f"{hs.term}, vote {hs.vote}")

    def _restart(self, p: SimPeer) -> None:
        self._start(p)
        self._restore_at_start(p)
        core = p.raft
        self.faults["restart"] += 1
        self._note("%s: restart #%d from disk: term=%d vote=%s last=%d commit=%d", p.id, p.incarnation,
                   core.term, core.vote, core.log.last_index(), core.log.committed)
        self._drive(p)
        self.checker.observe(p)

    # -- liveness ---------------------------------------------------------------------------

    def converge(self) -> float:
        """Stop the faults, heal, restart every crashed peer, and require that
        within ``config.liveness_bound()`` ticks a leader commits an entry of
        its term and every peer applies up to its commit index (so every
        acknowledged write is applied on every peer). Returns the ticks taken.
        """
        if self.manual:
            raise RuntimeError("converge() needs the clock; it is not available in manual mode")
        self._faults_on = False
        self._clients_on = False
        try:
            self.step_count += 1
            if self.blocked:
                self._heal()
            self._follow_membership()
        except Failure as f:
            raise self._violation(f) from f.__cause__
        self._sends_after_heal = Counter()
        writes = self.config.liveness_write_ticks
        if writes and self.config.clients:
            self._clients_on = True
            self._run_until(self.now + writes)
            self._clients_on = False
        start = self.now
        bound = self.config.liveness_bound()
        while not self._converged():
            if self.now - start >= bound:
                raise self._violation(Failure("liveness", self._liveness_report(bound)))
            self._run_until(math.floor(self.now) + 1.0)
            try:
                self._follow_membership()
            except Failure as f:
                raise self._violation(f) from f.__cause__
        self.check()
        self._check_acked_everywhere()
        self._compare_machines()
        return self.now - start

    def _converged(self) -> bool:
        """A leader committed an entry of its term (and every acknowledged
        write), its configuration is committed, and every member of that
        configuration is up and applied up to its commit index."""
        leader = self.leader()
        if leader is None:
            return False
        core = self.peers[leader].raft
        log = core.log
        commit = log.committed
        if log.term(commit) != core.term or commit < self.max_acked_index or core.pending_membership_index():
            return False
        return all(self.peers[i].up and self.peers[i].applied >= commit for i in self._final_members(core))

    def _final_members(self, core: Raft) -> list[NodeId]:
        members = core.membership.members
        return [i for i in self.ids if i in members]

    def _liveness_report(self, bound: int) -> str:
        leader = self.leader()
        head = (
            f"the cluster did not converge within {bound} ticks after the faults stopped "
            f"(leader: {leader or 'none'}; highest acknowledged index {self.max_acked_index})"
        )
        lines = [head, f"  committed configuration: {members_text(self.committed_membership())}"]
        lines += ["  " + p.describe() for p in self.peers.values()]
        return "\n".join(lines)

    def _check_acked_everywhere(self) -> None:
        """Every acknowledged write is what the cluster applied, on every member."""
        applied = self.checker.applied
        leader = self.leader()
        members = self._final_members(self.peers[leader].raft) if leader is not None else self.ids
        for w in self.acked:
            e = applied[w.index - 1] if w.index <= len(applied) else None
            if e is None or e.term != w.term or e.data != w.data:
                raise self._violation(Failure("durability", f"acknowledged write {w.data!r} at {w.term}/{w.index} "
                                                             f"is not what the cluster applied there"))
            for p in (self.peers[i] for i in members):
                if p.applied < w.index:
                    raise self._violation(Failure("liveness", f"{p.id} has not applied acknowledged write "
                                                               f"{w.data!r} at index {w.index}"))

    def _compare_machines(self) -> None:
        """Peers that applied the same prefix must hold equal state (when the machine can snapshot)."""
        if self.state_machine_factory is None:
            return
        by_applied: dict[int, tuple[NodeId, bytes]] = {}
        for p in self.peers.values():
            if p.machine is None:
                continue
            try:
                snap = _snapshot_bytes(p.machine.snapshot())
            except NotImplementedError:
                return
            except Exception as exc:
                raise self._violation(Failure(
                    "state-machine-snapshot", f"{p.id}: snapshot() raised {type(exc).__name__}: {exc}")) from exc
            first = by_applied.setdefault(p.applied, (p.id, snap))
            if first[1] != snap:
                raise self._violation(Failure(
                    "state-machine-determinism",
                    f"{first[0]} and {p.id} applied the same {p.applied} entries but their snapshots differ"))

    # -- controllable API ------------------------------------------------------------------------

    def _step(self, fn: Callable[[], Any]) -> Any:
        self.step_count += 1
        try:
            return fn()
        except Failure as f:
            raise self._violation(f) from f.__cause__

    def tick(self, peer: NodeId | None = None, n: int = 1) -> None:
        """Tick one peer (or every live peer) ``n`` times, outside the clock."""
        targets = [peer] if peer is not None else self.ids
        for _ in range(n):
            for pid in targets:
                p = self.peers[pid]
                if p.up:
                    self._step(functools.partial(self._tick_peer, p))

    def deliver(self, match: MessageFilter | None = None) -> list[Message]:
        """Deliver, in send order, every in-flight message ``match`` accepts
        (all by default). ``match`` is asked just before each delivery, so it
        sees the effect of the earlier ones. Messages sent meanwhile wait for
        a later call."""
        out = []
        for mid in list(self.in_flight):
            m = self.in_flight.get(mid)
            if m is not None and (match is None or match(m)):
                out.append(m)
                self._step(functools.partial(self._deliver, mid))
        return out

    def drop(self, match: MessageFilter | None = None) -> list[Message]:
        """Lose every in-flight message ``match`` accepts (all by default).
        A dropped InstallSnapshot is a failed transfer (reported to its leader)."""
        chosen = [mid for mid, m in self.in_flight.items() if match is None or match(m)]
        out = [self.in_flight.pop(mid) for mid in chosen]
        self._sends_after_heal = None
        for mid, m in zip(chosen, out):
            self._note("drop %s", m)
            if isinstance(m, InstallSnapshot):
                self._step(functools.partial(self._transfer_failed, mid, "dropped"))
        return out

    def stabilize(self, match: MessageFilter | None = None, rounds: int = 100) -> None:
        """Deliver matching messages round after round until none are left."""
        for _ in range(rounds):
            if not self.deliver(match):
                return

    def crash(self, peer: NodeId) -> None:
        """Crash ``peer`` now: its un-synced saves and volatile state are lost."""
        p = self.peers[peer]
        if p.up:
            self._step(lambda: self._crash(p))

    def restart(self, peer: NodeId) -> None:
        """Restart a crashed ``peer`` from its disk."""
        p = self.peers[peer]
        if not p.up:
            self._step(lambda: self._restart(p))

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Cut every link between different ``groups`` (both directions)."""
        self._step(lambda: self._partition(groups, None))

    def block(self, src: NodeId, dst: NodeId) -> None:
        """One-way fault: ``src`` can no longer reach ``dst`` (the reverse still works)."""
        self._cut([(src, dst)], None)
        self._note("one-way partition: %s-x->%s", src, dst)

    def heal(self) -> None:
        """Restore every link."""
        self._step(self._heal)

    def propose(self, peer: NodeId, data: bytes) -> tuple[int, int]:
        """Propose ``data`` on ``peer``; returns its (term, index). Raises
        NotLeader/ProposalDropped like the core. The write is acknowledged
        (see :attr:`acked`) when ``peer`` applies it at that (term, index)."""
        p = self.peers[peer]
        if not p.up:
            raise NotLeader(None)
        result: tuple[int, int] = self._step(lambda: self._propose(p, data, -1))
        return result

    def read(self, peer: NodeId) -> int:
        """Ask ``peer`` for a linearizable read point; returns the request id.
        When the core answers, the read point must cover every write
        acknowledged before now (``linearizable-read``). Raises NotLeader."""
        p = self.peers[peer]
        if not p.up:
            raise NotLeader(None)
        rid: int = self._step(lambda: self._read(p, -1))
        return rid

    def transfer_leadership(self, target: NodeId | None = None) -> None:
        """Ask the current leader (if any) to hand leadership to ``target``
        (default: the most up-to-date voter)."""
        self._step(lambda: self._transfer_leadership(target, random_target=False))

    def propose_membership(self, peer: NodeId, new: Membership) -> tuple[int, int]:
        """Propose the configuration ``new`` on ``peer``; returns its (term,
        index). Raises like ``Raft.propose_membership`` (NotLeader,
        ProposalDropped, MembershipChangePending, ValueError)."""
        p = self.peers[peer]
        if not p.up:
            raise NotLeader(None)

        def propose() -> tuple[int, int]:
            if p.barrier:
                raise ProposalDropped(f"{peer} is persisting a term change")
            term, index = p.raft.propose_membership(new)
            self._changes[(index, term)] = ("scripted", "", peer)
            self.member_stats["proposed"] += 1
            self._note("%s: membership change proposed at %d/%d: %s", peer, term, index, members_text(new))
            self._drive(p)
            self.checker.observe(p)
            return term, index

        result: tuple[int, int] = self._step(propose)
        return result

    def change_membership(self, kind: str | None = None, target: NodeId | None = None) -> bool:
        """Ask the current leader for one membership change, as the fault
        schedule does: a random one, or ``kind`` (``add``, ``promote``,
        ``promote-early``, ``remove``, ``remove-leader``, ``demote``,
        ``demote-leader``, ``remove-learner``, ``unsafe``) of ``target``
        (random if ``None``). Returns whether the core accepted it; a refusal
        (not now, or an unsafe change) is counted in ``member_stats``."""
        accepted: bool = self._step(lambda: self._change_membership(kind, target))
        return accepted

    def check(self) -> None:
        """Run the full (O(log length)) checks now."""
        self._step(lambda: self.checker.full_check(list(self.peers.values())))

    def flush(self, peer: NodeId | None = None, snapshot_only: bool = False) -> None:
        """Sync every buffered save now (of one peer or all). With
        ``snapshot_only``, only record the snapshot a held Ready carries
        (``LogStorage.install_snapshot`` and the restore), not its save.
        Pipelined: complete the whole FIFO of saves in flight, in order and
        in one write (with ``snapshot_only``, the saves ahead of the snapshot
        and its recording), then feed the core what a barrier held."""
        for pid in [peer] if peer is not None else self.ids:
            p = self.peers[pid]
            if self.pipeline:
                if p.up and p.saves:
                    self._step(functools.partial(self._flush_saves, p, snapshot_only))
                continue
            if snapshot_only:
                if p.up and p.install_pending:
                    self._step(functools.partial(self._sync, p, True, True))
                continue
            while p.up and p.pending is not None:
                self._step(functools.partial(self._sync, p, True))

    def _flush_saves(self, p: SimPeer, snapshot_only: bool) -> None:
        core = p.core
        if self._complete_saves(p, force=True, snapshot_only=snapshot_only) and p.core is core:
            self._after_saves(p)

    def hold_saves(self, peer: NodeId, hold: bool = True) -> None:
        """Keep ``peer``'s saves (and snapshot installs) in its write buffer
        until :meth:`flush`, so that a script can crash it in between (or
        step messages into it while a Ready is in progress). Pipelined: the
        saves stay in the FIFO (and those queued behind them too) while the
        core goes on, until a barrier holds its inputs."""
        if hold:
            self._held.add(peer)
        else:
            self._held.discard(peer)

    def take_snapshot(self, peer: NodeId) -> None:
        """Make ``peer`` snapshot its applied state now (whether or not
        ``snapshots`` is on). In manual mode the file is durable and the log
        compacted at once; otherwise after the usual random delays."""
        p = self.peers[peer]
        if p.up and p.snap_write is None:
            self._step(functools.partial(self._capture, p))

    # -- inspection -------------------------------------------------------------------------------

    def core(self, peer: NodeId) -> Raft:
        """The live core of ``peer``."""
        return self.peers[peer].raft

    def leader(self) -> NodeId | None:
        """The live leader with the highest term, if any."""
        best: tuple[int, NodeId] | None = None
        for p in self.peers.values():
            if p.core is not None and p.core.role == LEADER and (best is None or p.core.term > best[0]):
                best = (p.core.term, p.id)
        return best[1] if best else None

    def log(self, peer: NodeId) -> list[Entry]:
        """The whole log of a live peer (stable and unstable parts), from index
        1: indexes its snapshot covers hold the committed entries."""
        try:
            return self.checker.entries(self.peers[peer])
        except Failure as f:
            raise self._violation(f) from f.__cause__

    def messages(self, match: MessageFilter | None = None) -> list[Message]:
        """In-flight messages (in send order) that ``match`` accepts."""
        return [m for m in self.in_flight.values() if match is None or match(m)]

    def status(self) -> str:
        return "\n".join(p.describe() for p in self.peers.values())

    def result(self, converge_ticks: float = 0.0) -> SimResult:
        final = self.committed_membership()
        return SimResult(
            seed=self.seed,
            peers=len(self.founders),
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            ticks=self.now,
            steps=self.step_count,
            messages=self.stats["messages"],
            writes_proposed=self.stats["writes_proposed"],
            writes_acked=len(self.acked),
            reads_served=self.stats["reads_served"],
            leaders=len(self.checker.leader_of_term),
            max_term=max(self.checker.leader_of_term, default=0),
            committed=len(self.checker.committed),
            converge_ticks=converge_ticks,
            faults=dict(self.faults),
            trace_digest=self._hasher.hexdigest() if self._hasher is not None else None,
            snapshots=self.snapshots,
            snapshot_every=self.snapshot_every,
            snapshot_keep=self.snapshot_keep,
            snapshot_stats=dict(self.snap_stats),
            spare_peers=len(self.ids) - len(self.founders),
            membership_stats=dict(self.member_stats),
            voters=tuple(i for i in self.ids if i in final.voters),
            learners=tuple(i for i in self.ids if i in final.learners),
            pipeline=self.pipeline,
            pipeline_stats=dict(self.pipe_stats),
        )


def _save_text(rd: Ready | None) -> str:
    if rd is None:
        return "nothing"
    return _hs_entries_text(rd.hard_state, rd.entries)


def _hs_entries_text(hard_state: HardState | None, entries: Sequence[Entry]) -> str:
    parts = []
    if hard_state is not None:
        h = hard_state
        parts.append(f"term={h.term} vote={h.vote} commit={h.commit}")
    if entries:
        parts.append(f"entries {entries[0].term}/{entries[0].index}..{entries[-1].term}/{entries[-1].index}")
    return ", ".join(parts)


def _links_text(links: Iterable[tuple[NodeId, NodeId]]) -> str:
    return " ".join(f"{s}-x->{d}" for s, d in links)


def _snapshot_bytes(snap: Any) -> bytes:
    """A machine's snapshot (bytes, a binary file or an iterable of chunks)
    as bytes; a file or generator is closed, as the runtime closes it."""
    if isinstance(snap, (bytes, bytearray, memoryview)):
        return bytes(snap)
    if isinstance(snap, str):
        raise TypeError("snapshot() must return bytes, a binary file or an iterable of bytes, not str")
    try:
        if hasattr(snap, "read"):
            data: bytes = snap.read()
            return data
        return b"".join(snap)
    finally:
        close = getattr(snap, "close", None)
        if close is not None:
            close()


def _can_snapshot(machine: StateMachine) -> bool:
    """Whether ``machine`` implements snapshot() and restore() (or restore_from_file())."""
    cls = type(machine)
    return cls.snapshot is not StateMachine.snapshot and (
        cls.restore is not StateMachine.restore or cls.restore_from_file is not StateMachine.restore_from_file
    )


def _canonical(value: Any) -> Any:
    """A result as the writer would get it: packed, as the runtime packs it
    (a result msgpack cannot encode raises TypeError, recorded as a failed
    write; the runtime answers the writer CommandFailed then)."""
    return pack(value, "write result")


class HandlerSuspended(RuntimeError):
    """An ``async def handle_write`` awaited something that suspends; the
    simulator has no event loop, so it can only run handlers that do not."""


_MAX_BARE_YIELDS = 10_000
"""Bare yields (``asyncio.sleep(0)``) an async handler may make; more is a
handler waiting for something, which no event loop here will bring."""


def _run_coroutine(coro: Any) -> Any:
    """Run an ``async def`` handler that never waits (no event loop here).

    A bare yield, what ``asyncio.sleep(0)`` does, only hands the loop a
    turn: the handler is resumed at once. Yielding a future means waiting
    for it, which is not possible here."""
    try:
        for _ in range(_MAX_BARE_YIELDS):
            if coro.send(None) is not None:
                break
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise HandlerSuspended("an async handle_write suspended; the simulator only runs handlers that never await I/O")


# -- many seeds ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ManyResult:
    """Aggregate of :func:`run_many`."""

    peers: int
    seeds_run: int = 0
    ticks: float = 0.0
    steps: int = 0
    writes_acked: int = 0
    elapsed: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    violation: InvariantViolation | None = None
    """The first violation found."""
    failed_seeds: list[int] = field(default_factory=list)
    """Every seed that violated an invariant (more than one only with
    ``stop_on_violation=False``)."""
    first_seed: int | None = None
    seeds_with_snapshots: int = 0
    snapshot_stats: Counter[str] = field(default_factory=Counter)
    seeds_with_changes: int = 0
    """Seeds in which at least one membership change committed."""
    membership_stats: Counter[str] = field(default_factory=Counter)
    seeds_with_pipeline: int = 0
    """Seeds that pipelined persistence (``SimConfig.pipeline``)."""
    pipeline_stats: Counter[str] = field(default_factory=Counter)
    """Sums of ``SimResult.pipeline_stats`` (``max_depth``: the largest)."""

    @property
    def seeds_per_second(self) -> float:
        return self.seeds_run / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def ticks_per_second(self) -> float:
        return self.ticks / self.elapsed if self.elapsed > 0 else 0.0

    def verdict(self) -> str:
        if self.violation is not None:
            v = self.violation
            if len(self.failed_seeds) > 1:
                seeds = ", ".join(map(str, self.failed_seeds))
                return (f"FAIL: {len(self.failed_seeds)} of {self.seeds_run} seeds violated an invariant "
                        f"(seeds {seeds}); the first: {v.headline()}")
            return f"FAIL: {v.headline()}"
        return f"OK: {self.seeds_run} seeds, {self.peers} peers, no invariant violated"

    def report(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        return "\n".join([
            (f"ran {self.seeds_run} seeds ({self.peers} peers) in {self.elapsed:.2f} s: "
             f"{self.seeds_per_second:.1f} seeds/s, {self.ticks_per_second:,.0f} simulated ticks/s"),
            f"simulated {self.ticks:,.0f} ticks, {self.steps:,} steps, {self.writes_acked:,} acknowledged writes",
            f"faults injected: {faults}",
            self.snapshot_text(),
            self.membership_text(),
            self.pipeline_text(),
            self.verdict(),
        ])

    def membership_text(self) -> str:
        return (f"membership changes committed in {self.seeds_with_changes} of {self.seeds_run} seeds: "
                f"{membership_counts(self.membership_stats)}")

    def pipeline_text(self) -> str:
        return (f"pipelined persistence in {self.seeds_with_pipeline} of {self.seeds_run} seeds: "
                f"{pipeline_counts(self.pipeline_stats)}")

    def snapshot_text(self) -> str:
        st = self.snapshot_stats
        return (f"snapshots on in {self.seeds_with_snapshots} of {self.seeds_run} seeds: {st['taken']:,} taken, "
                f"{st['sent']:,} sent ({st['failed']:,} failed), {st['installed']:,} installed, "
                f"{st['restored']:,} restored at restart")


def run_seed(seed: int, peers: int = 3, config: SimConfig | None = None, **kwargs: Any) -> SimResult:
    """Run one seed to the end; raises :class:`InvariantViolation` on failure."""
    return Simulator(seed, peers, config, **kwargs).run()


def run_many(
    seeds: Iterable[int],
    peers: int = 3,
    config: SimConfig | None = None,
    *,
    on_result: Callable[[int, SimResult | None], None] | None = None,
    stop_on_violation: bool = True,
    into: ManyResult | None = None,
    **kwargs: Any,
) -> ManyResult:
    """Run ``seeds`` one after another; stop at the first violation (kept in
    ``ManyResult.violation``) unless ``stop_on_violation`` is false (every
    failing seed is listed in ``ManyResult.failed_seeds``).
    ``on_result(seed, result)`` is called after each seed (``None`` on failure).

    The results are added to ``into`` (a new ``ManyResult(peers=peers)`` by
    default) as each seed ends, so that a caller that passes its own still
    has those of the seeds that completed if the run is interrupted (an
    exception from ``on_result``, or ``KeyboardInterrupt``, which propagates).
    Raises ``ValueError`` if ``into`` is for another number of peers.
    """
    if into is not None and into.peers != peers:
        raise ValueError(f"into= is a ManyResult for {into.peers} peers, not {peers}")
    out = into if into is not None else ManyResult(peers=peers)
    start = _time.perf_counter()
    try:
        for seed in seeds:
            if out.first_seed is None:
                out.first_seed = seed
            try:
                res = run_seed(seed, peers, config, **kwargs)
            except InvariantViolation as v:
                out.seeds_run += 1
                out.failed_seeds.append(seed)
                if out.violation is None:
                    out.violation = v
                if on_result is not None:
                    on_result(seed, None)
                if stop_on_violation:
                    break
                continue
            out.seeds_run += 1
            out.ticks += res.ticks
            out.steps += res.steps
            out.writes_acked += res.writes_acked
            out.faults.update(res.faults)
            out.seeds_with_snapshots += res.snapshots
            out.snapshot_stats.update(res.snapshot_stats)
            out.membership_stats.update(res.membership_stats)
            out.seeds_with_changes += res.membership_stats.get("committed", 0) > 0
            out.seeds_with_pipeline += res.pipeline
            depth = max(out.pipeline_stats["max_depth"], res.pipeline_stats.get("max_depth", 0))
            out.pipeline_stats.update(res.pipeline_stats)
            out.pipeline_stats["max_depth"] = depth
            if on_result is not None:
                on_result(seed, res)
    finally:
        out.elapsed = _time.perf_counter() - start
    return out
