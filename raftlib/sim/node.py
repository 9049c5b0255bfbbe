"""SimPeer: one simulated server, its disk, its write buffer and its volatile state."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from storage_adapters.memory import MemoryStorage
from storage_adapters.protocol import LogStorage

from ..config import Config
from ..core.raft import Raft
from ..core.ready import Ready
from ..state_machine import StateMachine
from ..types import NodeId


class CoreFactory(Protocol):
    """Builds a peer's core; :class:`~raftlib.core.raft.Raft` itself (or a
    subclass) fits: ``factory(node_id, storage, config, rng, logger=logger)``."""

    def __call__(
        self, node_id: NodeId, storage: LogStorage, config: Config, rng: random.Random, *, logger: logging.Logger
    ) -> Raft: ...


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
    """One server. ``disk`` survives crashes; everything else does not.

    The core reads its stable log straight from ``disk``. A Ready's save
    waits in ``pending`` (the volatile write buffer) until the simulator syncs
    it; until then the core keeps those entries in its own unstable tail, and
    no further Ready is taken (the runtime, too, handles one Ready at a time).
    """

    __slots__ = (
        "applied",
        "commit_seen",
        "core",
        "core_applied_seen",
        "disk",
        "down_since",
        "id",
        "incarnation",
        "machine",
        "pending",
        "reads",
        "sync_token",
        "writes",
    )

    def __init__(self, node_id: NodeId) -> None:
        self.id = node_id
        self.disk = MemoryStorage()
        self.core: Raft | None = None
        self.incarnation = 0
        self.pending: Ready | None = None
        self.sync_token = 0
        self.applied = 0
        """Last index this incarnation handed to its state machine."""
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
        self.applied = 0
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
        self.sync_token += 1
        self.machine = None
        self.writes = {}
        self.reads = {}
        self.down_since = now

    def describe(self) -> str:
        if self.core is None:
            return f"{self.id}: down"
        c = self.core
        return (
            f"{self.id}: {c.role} term={c.term} vote={c.vote} last={c.log.last_term()}/{c.log.last_index()} "
            f"commit={c.log.committed} applied={self.applied}{' (save pending)' if self.pending else ''}"
        )

