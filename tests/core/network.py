"""A tiny synchronous cluster for core tests: cores + MemoryStorage + perfect delivery.

Messages are delivered only when a test says so, so each test controls the
interleaving. Persistence happens in ``process()`` before after-persist
messages are released, as the Ready contract demands.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable

from raftlib.config import Config
from raftlib.core.messages import Message
from raftlib.core.raft import Raft
from raftlib.types import Entry, EntryKind, Membership
from storage_adapters.memory import MemoryStorage


class Network:
    def __init__(self, ids: Iterable[str], seed: int = 0, config: Config | None = None, bootstrap: bool = True) -> None:
        self.ids = list(ids)
        self.config = config or Config(election_ticks=10, heartbeat_ticks=1, pre_vote=False, check_quorum=False)
        self.storage = {i: MemoryStorage() for i in self.ids}
        self.nodes: dict[str, Raft] = {}
        self.applied: dict[str, list[Entry]] = {i: [] for i in self.ids}
        self.inflight: list[Message] = []
        self.dropped: set[tuple[str, str]] = set()
        self.seed = seed
        for i in self.ids:
            self.nodes[i] = self._new(i)
            if bootstrap:
                self.nodes[i].bootstrap(Membership({n: f"addr-{n}" for n in self.ids}))
        self.process()

    def _new(self, i: str) -> Raft:
        return Raft(i, self.storage[i], self.config, random.Random(f"{self.seed}-{i}"))

    def restart(self, i: str) -> None:
        """Drop volatile state; keep what was persisted."""
        self.nodes[i] = self._new(i)
        self.applied[i] = []
        self.inflight = [m for m in self.inflight if m.dst != i and m.src != i]

    def process(self) -> None:
        """Run every node's Ready loop once (persist, queue messages, apply, advance)."""
        for i, node in self.nodes.items():
            while node.has_ready():
                rd = node.ready()
                self._queue(rd.messages)
                self.storage[i].save(rd.hard_state, rd.entries, sync=True)
                self._queue(rd.messages_after_persist)
                self.applied[i].extend(rd.committed_entries)
                node.advance(rd)

    def _queue(self, msgs: list[Message]) -> None:
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
