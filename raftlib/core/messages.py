"""The messages Raft peers exchange, named after the paper's RPCs.

Every message is a frozen, slotted dataclass carrying ``term``, ``src`` (the
sender's name) and ``dst`` (the receiver's name). Callers must treat messages
as immutable. ``describe()`` gives a stable one-line text used in test traces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..types import Entry, NodeId


@dataclass(frozen=True, slots=True)
class RequestVote:
    """§5.2: a candidate asks for a vote. With ``pre_vote`` it only asks whether
    the receiver *would* vote, without anyone changing term (thesis §9.6)."""

    term: int
    src: NodeId
    dst: NodeId
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False
    """Set when the election follows a leadership transfer: receivers grant it
    even though they heard from a leader recently."""

    def describe(self) -> str:
        kind = "PreVote" if self.pre_vote else "RequestVote"
        return f"{self.src}->{self.dst} {kind} term={self.term} last={self.last_log_term}/{self.last_log_index}"


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    term: int
    src: NodeId
    dst: NodeId
    granted: bool
    pre_vote: bool = False
    removed: int = 0
    """Non-zero when the receiver's committed configuration, and the one in
    force there, leave the candidate out: the index of that committed
    configuration. A candidate that missed its removal (it was down) learns
    it this way and stops campaigning, unless its own log holds a later
    configuration that names it."""

    def describe(self) -> str:
        kind = "PreVoteResponse" if self.pre_vote else "RequestVoteResponse"
        removed = f" removed={self.removed}" if self.removed else ""
        return f"{self.src}->{self.dst} {kind} term={self.term} granted={self.granted}{removed}"


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """§5.3: the leader replicates ``entries`` after ``prev_log_index``; with no
    entries it is a heartbeat. ``read_ctx`` tags heartbeats that confirm
    leadership for linearizable reads (0 when unused)."""

    term: int
    src: NodeId
    dst: NodeId
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int
    read_ctx: int = 0

    def describe(self) -> str:
        ents = ",".join(f"{e.term}/{e.index}" for e in self.entries)
        extra = f" ctx={self.read_ctx}" if self.read_ctx else ""
        return (
            f"{self.src}->{self.dst} AppendEntries term={self.term} prev={self.prev_log_term}/"
            f"{self.prev_log_index} commit={self.leader_commit} entries=[{ents}]{extra}"
        )


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """A follower's answer. On success ``match_index`` is the last index known to
    match the leader. On rejection ``reject_index`` is the ``prev_log_index``
    that failed and ``hint_index``/``hint_term`` let the leader skip a whole
    conflicting term at once (thesis §5.3 "fast back-off")."""

    term: int
    src: NodeId
    dst: NodeId
    success: bool
    match_index: int = 0
    reject_index: int = 0
    hint_index: int = 0
    hint_term: int = 0
    read_ctx: int = 0

    def describe(self) -> str:
        if self.success:
            body = f"ok match={self.match_index}"
        else:
            body = f"reject prev={self.reject_index} hint={self.hint_term}/{self.hint_index}"
        extra = f" ctx={self.read_ctx}" if self.read_ctx else ""
        return f"{self.src}->{self.dst} AppendEntriesResponse term={self.term} {body}{extra}"


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """§7: the follower needs entries the leader has compacted away, so the
    leader sends its latest snapshot instead. The message carries only the
    metadata (``membership`` is ``Membership.encode()`` bytes); the runtime
    streams the state-machine data in chunks and steps this message into the
    follower's core once the data is safely stored."""

    term: int
    src: NodeId
    dst: NodeId
    index: int
    snapshot_term: int
    membership: bytes

    def describe(self) -> str:
        return f"{self.src}->{self.dst} InstallSnapshot term={self.term} snapshot={self.snapshot_term}/{self.index}"


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Thesis §3.10: the leader tells the most up-to-date follower to start an
    election at once (leadership transfer)."""

    term: int
    src: NodeId
    dst: NodeId

    def describe(self) -> str:
        return f"{self.src}->{self.dst} TimeoutNow term={self.term}"


Message = Union[RequestVote, RequestVoteResponse, AppendEntries, AppendEntriesResponse, InstallSnapshot, TimeoutNow]
"""Any message a core sends or receives."""

MESSAGE_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (RequestVote, RequestVoteResponse, AppendEntries, AppendEntriesResponse, InstallSnapshot, TimeoutNow)
}
"""Wire name of each message type: the class name, as in the paper."""
