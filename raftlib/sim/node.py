"""SimPeer: one simulated server, its disk, its write buffer and its volatile state."""

from __future__ import annotations

import hashlib
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from storage_adapters.memory import MemoryStorage
from storage_adapters.protocol import LogStorage

from ..config import Config
from ..core.messages import InstallSnapshot
from ..core.raft import Raft
from ..core.ready import Ready
from ..state_machine import StateMachine
from ..types import Entry, NodeId, SnapshotMeta


class CoreFactory(Protocol):
    """Builds a peer's core; :class:`~raftlib.core.raft.Raft` itself (or a
    subclass) fits: ``factory(node_id, storage, config, rng, logger=logger)``."""

    def __call__(
        self, node_id: NodeId, storage: LogStorage, config: Config, rng: random.Random, *, logger: logging.Logger
    ) -> Raft: ...


@dataclass(frozen=True, slots=True)
class SnapshotData:
    """What one simulated snapshot file holds: a peer's applied state at ``index``.

    ``chain`` is a digest of every entry applied up to ``index`` (see
    :func:`chain_step`), so two states are equal exactly when their chains
    are; ``machine`` is the user state machine's ``snapshot()`` bytes (when
    the run has one that can snapshot).
    """

    index: int
    term: int
    chain: bytes
    machine: bytes | None = None


GENESIS = b""
"""The chain of the empty state (nothing applied)."""


def chain_step(chain: bytes, e: Entry) -> bytes:
    """The state digest after applying ``e`` to a state whose digest is ``chain``."""
    h = hashlib.blake2b(chain, digest_size=16)
    h.update(b"%d:%d:%d:" % (e.index, e.term, e.kind))
    h.update(e.data)
    return h.digest()


@dataclass(slots=True)
class SnapshotWrite:
    """A snapshot captured at the applied index whose file is not durable yet
    (``durable`` False), or durable but not yet handed to the core and
    compacted into storage (``durable`` True)."""

    meta: SnapshotMeta
    data: SnapshotData
    durable: bool = False


@dataclass(slots=True)
class Save:
    """Pipelined mode: a Ready taken from the core whose persistence is in
    flight: its snapshot (while ``install_pending``), hard state and entries
    reach the disk at ``ready_at`` at the earliest (and never before the saves
    ahead of it), then its ``messages_after_persist`` go out and
    ``Raft.persisted`` is called. A Ready with nothing to write waits here
    too while saves are ahead of it."""

    rd: Ready
    ready_at: float
    install_pending: bool = False

    def has_write(self) -> bool:
        rd = self.rd
        return rd.snapshot is not None or rd.hard_state is not None or bool(rd.entries)


@dataclass(slots=True)
class PendingWrite:
    """A client write a leader accepted and the client is waiting for."""

    client: int
    term: int
    data: bytes
    proposed_at: float


@dataclass(slots=True)
class PendingRead:
    """A linearizable read (ReadIndex) a leader accepted.

    ``floor`` is the highest index of a write acknowledged before the read
    was asked: the read point the leader returns must not be below it.
    """

    client: int
    floor: int
    asked_at: float


class SimPeer:
    """One server. ``disk`` and ``snapshots`` survive crashes; everything else does not.

    The core reads its stable log straight from ``disk``. A Ready's save
    waits in ``pending`` (the volatile write buffer) until the simulator syncs
    it; until then the core keeps those entries in its own unstable tail, and
    no further Ready is taken (a synchronous runtime handles one Ready at a time).

    In pipelined mode (``SimConfig.pipeline``) ``pending`` stays ``None``:
    the saves in flight wait in ``saves`` (oldest first) while the core goes
    on, and ``barrier`` is set while the last of them comes from a Ready with
    ``persist_before_step``; inputs for the core then wait in ``inbox``.
    """

    __slots__ = (
        "ack_promise",
        "applied",
        "barrier",
        "base_seen",
        "chain",
        "commit_seen",
        "compactions",
        "core",
        "core_applied_seen",
        "disk",
        "done_pending",
        "down_since",
        "id",
        "inbox",
        "incarnation",
        "install_pending",
        "machine",
        "pending",
        "reads",
        "saves",
        "sending",
        "snap_inbox",
        "snap_last",
        "snap_write",
        "snapshots",
        "sync_token",
        "vote_promise",
        "writes",
    )

    def __init__(self, node_id: NodeId) -> None:
        self.id = node_id
        self.disk = MemoryStorage()
        self.snapshots: dict[tuple[int, int], SnapshotData] = {}
        """The durable snapshot store, by (index, term): survives crashes like ``disk``."""
        self.core: Raft | None = None
        self.incarnation = 0
        self.pending: Ready | None = None
        self.saves: deque[Save] = deque()
        """Pipelined mode: the saves in flight, oldest first (volatile)."""
        self.barrier = False
        """Pipelined mode: a Ready with ``persist_before_step`` is in ``saves``;
        the core takes no input until it is persisted and reported."""
        self.inbox: deque[tuple[int, Any, Any]] = deque()
        """Pipelined mode: inputs (messages, ticks, ...) that arrived during a barrier, in order."""
        self.sync_token = 0
        self.applied = 0
        """Last index this incarnation handed to its state machine (or restored from a snapshot)."""
        self.chain = GENESIS
        """Digest of the applied state (see :class:`SnapshotData`)."""
        self.install_pending = False
        """``pending`` holds a Ready whose snapshot is not recorded in storage yet."""
        self.snap_write: SnapshotWrite | None = None
        """The snapshot being written (volatile: a crash loses it unless durable)."""
        self.snap_last = 0
        """Applied index of the last snapshot taken, installed or restored."""
        self.compactions: list[SnapshotWrite] = []
        """Durable snapshots waiting for the current Ready to finish before compaction."""
        self.sending: dict[NodeId, int] = {}
        """Snapshot transfers this (leader) incarnation runs, by receiver: the transfer's message id."""
        self.snap_inbox: list[tuple[InstallSnapshot, tuple[NodeId, int, int]]] = []
        """Received snapshots (durable) whose message waits for the current Ready to finish."""
        self.done_pending: list[tuple[NodeId, int, int]] = []
        """Transfers received whose success is reported once the snapshot is
        recorded: (leader, its incarnation, term)."""
        self.base_seen = 0
        self.ack_promise: tuple[int, int] = (0, 0)
        """Highest (term, match index) this peer acknowledged, across incarnations: its
        disk must hold the match index as long as its persisted term is that term."""
        self.vote_promise: tuple[int, NodeId | None] = (0, None)
        """Latest (term, candidate) this peer granted its vote to, across incarnations."""
        self.commit_seen = 0
        self.core_applied_seen = 0
        self.machine: StateMachine | None = None
        self.writes: dict[int, PendingWrite] = {}
        """Client writes this incarnation proposed, by log index."""
        self.reads: dict[int, PendingRead] = {}
        """Reads this incarnation accepted, by request id."""
        self.down_since: float | None = None

    @property
    def up(self) -> bool:
        return self.core is not None

    @property
    def raft(self) -> Raft:
        """The live core (only valid while the peer is up)."""
        core = self.core
        assert core is not None, f"{self.id} is down"
        return core

    def start(
        self,
        factory: CoreFactory | Callable[..., Raft],
        config: Config,
        rng: random.Random,
        machine: StateMachine | None,
        logger: logging.Logger,
    ) -> None:
        """Boot a new incarnation from what is on ``disk``."""
        self.incarnation += 1
        self.core = factory(self.id, self.disk, config, rng, logger=logger)
        self.pending = None
        self.saves = deque()
        self.barrier = False
        self.inbox = deque()
        self.install_pending = False
        self.applied = 0
        self.chain = GENESIS
        self.snap_write = None
        self.snap_last = 0
        self.compactions = []
        self.sending = {}
        self.snap_inbox = []
        self.done_pending = []
        self.base_seen = 0
        self.commit_seen = 0
        self.core_applied_seen = 0
        self.machine = machine
        self.writes = {}
        self.reads = {}
        self.down_since = None

    def crash(self, now: float) -> None:
        """Lose all volatile state, including saves still in the write buffer."""
        self.core = None
        self.pending = None
        self.saves = deque()
        self.barrier = False
        self.inbox = deque()
        self.install_pending = False
        self.snap_write = None
        self.compactions = []
        self.sending = {}
        self.snap_inbox = []
        self.done_pending = []
        self.sync_token += 1
        self.machine = None
        self.writes = {}
        self.reads = {}
        self.down_since = now

    def describe(self) -> str:
        if self.core is None:
            return f"{self.id}: down"
        c = self.core
        m = c.membership
        member = "" if m.is_voter(self.id) else " (learner)" if self.id in m.learners else " (not a member)"
        return (
            f"{self.id}: {c.role}{member} term={c.term} vote={c.vote} last={c.log.last_term()}/{c.log.last_index()} "
            f"commit={c.log.committed} applied={self.applied} first={c.log.first_index()}"
            f"{' (save pending)' if self.pending else ''}"
            f"{f' ({len(self.saves)} saves in flight)' if self.saves else ''}"
            f"{' (barrier)' if self.barrier else ''}"
        )

