"""Ready: everything the core asks its runtime to do, in one batch.

The contract, in order (see docs/architecture.md):

1. Send ``messages`` at once (a leader's AppendEntries may go out while its
   own copy of the entries is still being written, thesis §10.2.1).
2. If ``snapshot`` is set (a follower received one), restore the state
   machine from it and record it with ``LogStorage.install_snapshot``. Then
   persist ``hard_state`` (if not ``None``) and ``entries`` with one synced
   ``LogStorage.save``.
3. Only then send ``messages_after_persist`` (votes and acknowledgements,
   which promise that something is on disk).
4. Apply ``committed_entries`` in order; answer ``read_states`` once the
   applied index reaches their ``index``.
5. Call ``Raft.advance(ready)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..types import Entry, HardState, NodeId, SnapshotMeta
from .messages import Message


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state that the runtime reacts to when it changes."""

    role: str
    leader: NodeId | None
    term: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the applied index reaches ``index``.

    ``request_ids`` are the ids the runtime passed to ``Raft.read_index``.
    """

    index: int
    request_ids: tuple[int, ...]


@dataclass(slots=True)
class Ready:
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    messages_after_persist: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    soft_state: SoftState | None = None
    snapshot: SnapshotMeta | None = None

    def is_empty(self) -> bool:
        return not (
            self.hard_state
            or self.entries
            or self.messages
            or self.messages_after_persist
            or self.committed_entries
            or self.read_states
            or self.soft_state
            or self.snapshot
        )

    def describe(self) -> str:
        """Stable multi-line text of this Ready, for traces and golden tests."""
        lines = []
        if self.soft_state:
            s = self.soft_state
            lines.append(f"SoftState role={s.role} leader={s.leader} term={s.term}")
        if self.hard_state:
            h = self.hard_state
            lines.append(f"HardState term={h.term} vote={h.vote} commit={h.commit}")
        if self.snapshot:
            lines.append(f"InstallSnapshot {self.snapshot.term}/{self.snapshot.index}")
        if self.entries:
            lines.append("Entries: " + " ".join(f"{e.term}/{e.index}/{e.kind.name}" for e in self.entries))
        for m in self.messages:
            lines.append("Send: " + m.describe())
        for m in self.messages_after_persist:
            lines.append("SendAfterPersist: " + m.describe())
        if self.committed_entries:
            lines.append("Apply: " + " ".join(f"{e.term}/{e.index}/{e.kind.name}" for e in self.committed_entries))
        for r in self.read_states:
            lines.append(f"ReadState index={r.index} ids={list(r.request_ids)}")
        return "\n".join(lines)
