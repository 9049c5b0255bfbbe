"""Ready: everything the core asks its runtime to do, in one batch.

The contract, in order (see docs/architecture.md):

1. Send ``messages`` at once (a leader's AppendEntries may go out while its
   own copy of the entries is still being written, thesis §10.2.1).
2. Hand ``committed_entries`` to the state machine, to be applied in order,
   and call ``Raft.accept(ready)``. A follower's are already on its disk; a
   leader's may still be on their way there (a majority of the other voters
   holds them, thesis §10.2.1), so a snapshot of the state machine that
   covers them must not be recorded, nor the log compacted up to it, before
   the Readies holding them are persisted.
   Answer ``read_states`` once the applied index reaches their ``index``.
3. If ``snapshot`` is set (a follower received one), restore the state
   machine from it and record it with ``LogStorage.install_snapshot``. Then
   persist ``hard_state`` (if not ``None``) and ``entries`` with one synced
   ``LogStorage.save``.
4. Only then send ``messages_after_persist`` (votes and acknowledgements,
   which promise that something is on disk), and call
   ``Raft.persisted(ready)``.

A simple runtime does all of it before taking the next Ready, and may call
``Raft.advance(ready)`` (``accept`` and ``persisted`` at once) at the end.
A pipelined one may step messages, tick and take further Readies while
step 3 runs, provided that:

- Readies are persisted, and their ``messages_after_persist`` sent, in the
  order they were made, also those with nothing to persist (their
  acknowledgements may cover entries an earlier Ready is still writing);
- when ``persist_before_step`` is set (the term or vote changed, which the
  core already counts on, or a snapshot is to be installed), every Ready up
  to this one is persisted and reported before the core is stepped or
  ticked again.
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
    removed_at: int = 0
    """See :attr:`Raft.removed_at`."""


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
    persist_before_step: bool = False

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
            removed = f" removed_at={s.removed_at}" if s.removed_at else ""
            lines.append(f"SoftState role={s.role} leader={s.leader} term={s.term}{removed}")
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
