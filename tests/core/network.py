"""A tiny synchronous cluster for core tests: cores + MemoryStorage + perfect delivery.

Messages are delivered only when a test says so, so each test controls the
interleaving. Persistence happens in ``process()`` before after-persist
messages are released, as the Ready contract demands.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Iterable, TypeVar

from raftlib.config import Config
from raftlib.core.messages import Message
from raftlib.core.raft import Raft
from raftlib.core.ready import ReadState, Ready
from raftlib.types import Entry, EntryKind, Membership, SnapshotMeta
from storage_adapters.memory import MemoryStorage

M = TypeVar("M")

DEFAULT_CONFIG = Config(election_ticks=10, heartbeat_ticks=1, pre_vote=False, check_quorum=False)


def config(**changes: object) -> Config:
    """The Network's default test Config with ``changes`` applied."""
    return dataclasses.replace(DEFAULT_CONFIG, **changes)  # type: ignore[arg-type]


def of_type(kind: type[M], msgs: Iterable[object]) -> list[M]:
    """The messages of type ``kind`` among ``msgs``."""
    return [m for m in msgs if isinstance(m, kind)]


class Network:
    def __init__(self, ids: Iterable[str], seed: int = 0, config: Config | None = None, bootstrap: bool = True) -> None:
        self.ids = list(ids)
        self.config = config or DEFAULT_CONFIG
        self.storage = {i: MemoryStorage() for i in self.ids}
        self.nodes: dict[str, Raft] = {}
        self.applied: dict[str, list[Entry]] = {i: [] for i in self.ids}
        self.snapshot_data: dict[tuple[int, int], list[Entry]] = {}
        self.inflight: list[Message] = []
        self.dropped: set[tuple[str, str]] = set()
        self.seed = seed
        self.read_states: dict[str, list[ReadState]] = {i: [] for i in self.ids}
        """Every ReadState each node's Readies produced, in order."""
        self.sent: list[Message] = []
        """Every message any node emitted (even ones the partition dropped), in order."""
        self.readies: dict[str, list[Ready]] = {i: [] for i in self.ids}
        """Every Ready each node produced, in order."""
        for i in self.ids:
            self.nodes[i] = self._new(i)
            if bootstrap:
                self.nodes[i].bootstrap(Membership({n: f"addr-{n}" for n in self.ids}))
        self.process()

    def add_node(self, i: str) -> Raft:
        """Start a new, empty peer ``i`` (not bootstrapped: it joins through a
        membership change)."""
        self.ids.append(i)
        self.storage[i] = MemoryStorage()
        self.applied[i] = []
        self.read_states[i] = []
        self.readies[i] = []
        self.nodes[i] = self._new(i)
        return self.nodes[i]

    def _new(self, i: str) -> Raft:
        return Raft(i, self.storage[i], self.config, random.Random(f"{self.seed}-{i}"))

    def restart(self, i: str) -> None:
        """Drop volatile state; keep what was persisted."""
        self.nodes[i] = self._new(i)
        snap = self.storage[i].load()[1]
        self.applied[i] = list(self.snapshot_data[(snap.index, snap.term)]) if snap else []
        self.inflight = [m for m in self.inflight if m.dst != i and m.src != i]

    def process(self) -> None:
        """Run every node's Ready loop once (persist, queue messages, apply, advance)."""
        for i, node in self.nodes.items():
            while node.has_ready():
                self.handle(i, node.ready())

    def handle(self, i: str, rd: Ready) -> None:
        """Carry out one Ready that a test took from node ``i`` itself, following
        the contract: send, persist, send after persist, apply, advance."""
        self.readies[i].append(rd)
        self.read_states[i].extend(rd.read_states)
        self._queue(rd.messages)
        if rd.snapshot is not None:
            # The snapshot's "data" is the applied entries it covers.
            self.storage[i].install_snapshot(rd.snapshot)
            self.applied[i] = list(self.snapshot_data[(rd.snapshot.index, rd.snapshot.term)])
        self.storage[i].save(rd.hard_state, rd.entries, sync=True)
        self._queue(rd.messages_after_persist)
        self.applied[i].extend(rd.committed_entries)
        self.nodes[i].advance(rd)

    def take_snapshot(self, i: str, keep: int = 0) -> SnapshotMeta:
        """Snapshot node ``i`` at its applied index and compact its storage,
        keeping ``keep`` entries (the runtime's job, done by hand)."""
        node = self.nodes[i]
        index = node.applied_index
        meta = SnapshotMeta(index, node.log.term(index), node.membership_at(index))
        self.snapshot_data[(meta.index, meta.term)] = list(self.applied[i])
        node.snapshot_taken(meta)
        upto = min(index - keep, node.compaction_limit())
        if upto >= self.storage[i].first_index():
            self.storage[i].compact(upto, meta)
        return meta

    def _queue(self, msgs: list[Message]) -> None:
        self.sent.extend(msgs)
        for m in msgs:
            if (m.src, m.dst) not in self.dropped and (m.dst, m.src) not in self.dropped:
                self.inflight.append(m)

    def isolate(self, i: str) -> None:
        for j in self.ids:
            if j != i:
                self.dropped.add((i, j))

    def heal(self) -> None:
        self.dropped.clear()

    def deliver(self, filt: Callable[[Message], bool] = lambda m: True) -> list[Message]:
        """Deliver all queued messages matching ``filt`` (once), then process."""
        take = [m for m in self.inflight if filt(m)]
        self.inflight = [m for m in self.inflight if not filt(m)]
        for m in take:
            if m.dst in self.nodes and (m.src, m.dst) not in self.dropped and (m.dst, m.src) not in self.dropped:
                self.nodes[m.dst].step(m)
        self.process()
        return take

    def stabilize(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            if not self.inflight:
                return
            self.deliver()

    def tick(self, i: str, n: int = 1) -> None:
        for _ in range(n):
            self.nodes[i].tick()
        self.process()

    def elect(self, i: str) -> None:
        """Make ``i`` leader by timing it out first."""
        node = self.nodes[i]
        self.tick(i, node.randomized_timeout)
        self.stabilize()
        assert node.is_leader(), node.status()

    def leaders(self) -> list[str]:
        return [i for i, n in self.nodes.items() if n.is_leader()]

    def commands(self, i: str) -> list[bytes]:
        return [e.data for e in self.applied[i] if e.kind is EntryKind.NORMAL]

    # -- helpers added for the core test suite ---------------------------------

    def drop(self, filt: Callable[[Message], bool] = lambda m: True) -> list[Message]:
        """Discard queued messages matching ``filt`` without delivering them."""
        take = [m for m in self.inflight if filt(m)]
        self.inflight = [m for m in self.inflight if not filt(m)]
        return take

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between nodes of different ``groups`` (others stay connected)."""
        sets = [set(g) for g in groups]
        for a in self.ids:
            for b in self.ids:
                ga = next((k for k, g in enumerate(sets) if a in g), None)
                gb = next((k for k, g in enumerate(sets) if b in g), None)
                if a != b and ga != gb:
                    self.dropped.add((a, b))

    def log(self, i: str) -> list[Entry]:
        """Node ``i``'s whole log (stable and unstable part)."""
        raft_log = self.nodes[i].log
        return raft_log.entries(raft_log.first_index(), raft_log.last_index() + 1)

    def terms(self, i: str) -> list[int]:
        """The term of each entry of node ``i``'s log, index 1 first."""
        return [e.term for e in self.log(i)]

    def propose(self, i: str, *commands: bytes) -> list[tuple[int, int]]:
        """Propose ``commands`` on ``i`` and run its Ready loop (nothing delivered)."""
        out = [self.nodes[i].propose(c) for c in commands]
        self.process()
        return out
