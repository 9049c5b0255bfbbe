"""Leaf value types shared by the core, the storage adapters and the runtime.

This module imports nothing from the rest of raftlib, so every layer can use it.
All types are immutable.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import msgpack

NodeId = str
"""A peer's name, unique within a cluster (``"s1"``)."""


class EntryKind(enum.IntEnum):
    """What a log entry carries."""

    NORMAL = 0
    """A user command for :meth:`raftlib.StateMachine.handle_write` (msgpack bytes)."""
    CONFIG = 1
    """A cluster membership (``Membership.encode()`` bytes)."""
    NOOP = 2
    """Appended by each new leader so that it can commit entries of earlier terms."""
    CLIENT = 3
    """A client-session operation: open, close, or a write tagged for exactly-once
    application (see :mod:`raftlib.sessions`)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One applied write, as :meth:`raftlib.Peer.listen` reports it: its log
    ``index`` and ``term``, the ``command`` and what ``handle_write`` returned
    (``result``; ``None`` with ``error`` set if it raised, or returned a
    result msgpack cannot encode)."""

    index: int
    term: int
    command: Any
    result: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``data`` is opaque bytes; its meaning depends on ``kind``."""

    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate encoded size in bytes, used for batching limits."""
        return len(self.data) + 24


_new_object = object.__new__
_set_term, _set_index, _set_kind, _set_data = (Entry.__dict__[name].__set__ for name in ("term", "index", "kind", "data"))


def make_entry(term: int, index: int, kind: EntryKind, data: bytes) -> Entry:
    """``Entry(term, index, kind, data)`` in half the time, for the paths
    that build one per write (proposing, decoding AppendEntries): the slots
    are filled directly instead of through the ``object.__setattr__`` calls
    of a frozen dataclass's ``__init__``. The result is an ordinary,
    immutable :class:`Entry`."""
    entry = _new_object(Entry)
    _set_term(entry, term)
    _set_index(entry, index)
    _set_kind(entry, kind)
    _set_data(entry, data)
    return entry


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message that depends on it is sent.

    ``term`` is the latest term this peer has seen, ``vote`` the candidate it
    voted for in that term (or ``None``), and ``commit`` the highest index it
    knows to be committed (persisted only as a hint for restart).
    """

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Membership:
    """The voting members of a cluster and their addresses.

    ``voters`` maps each member's name to its ``host:port`` (or
    ``unix:/path``) address. ``learners`` receive the log but do not vote.
    ``cluster_id`` names the cluster (see :func:`founding_cluster_id`):
    every configuration carries the one its cluster was founded with, so
    that each member learns it with the log; ``None`` for a cluster founded
    before cluster IDs existed. It is not part of the configuration: two
    memberships with the same members are equal whatever their IDs.
    """

    voters: Mapping[NodeId, str] = field(default_factory=dict)
    learners: Mapping[NodeId, str] = field(default_factory=dict)
    cluster_id: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Copy into plain dicts so that a caller's later mutation cannot leak in.
        object.__setattr__(self, "voters", dict(self.voters))
        object.__setattr__(self, "learners", dict(self.learners))

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.voters.items())), tuple(sorted(self.learners.items()))))

    @property
    def members(self) -> dict[NodeId, str]:
        """Every member (voters and learners) with its address."""
        return {**self.learners, **self.voters}

    def is_voter(self, node_id: NodeId) -> bool:
        """Whether ``node_id`` votes (a learner or a non-member does not)."""
        return node_id in self.voters

    def quorum(self) -> int:
        """How many voters make a majority."""
        return len(self.voters) // 2 + 1

    def encode(self) -> bytes:
        """The msgpack form stored in a configuration entry's data."""
        raw: dict[str, Any] = {"voters": dict(self.voters), "learners": dict(self.learners)}
        if self.cluster_id is not None:
            raw["cluster"] = self.cluster_id  # decoders of earlier versions ignore it
        data: bytes = msgpack.packb(raw)
        return data

    def with_members(self, voters: Mapping[NodeId, str], learners: Mapping[NodeId, str] | None = None) -> Membership:
        """A configuration of this cluster (same ``cluster_id``) with these members."""
        return Membership(voters, learners or {}, cluster_id=self.cluster_id)

    @classmethod
    def decode(cls, data: bytes) -> Membership:
        """Inverse of :meth:`encode`; raises ``ValueError`` for anything else."""
        try:
            raw = msgpack.unpackb(data)
        except Exception as exc:  # msgpack's errors differ across versions
            raise ValueError(f"not an encoded Membership: {exc}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("voters"), dict):
            raise ValueError("not an encoded Membership")
        learners = raw.get("learners") or {}
        if not isinstance(learners, dict):
            raise ValueError("not an encoded Membership: learners must be a map")
        members = {**raw["voters"], **learners}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in members.items()):
            raise ValueError("not an encoded Membership: names and addresses must be strings")
        cluster_id = raw.get("cluster")
        if cluster_id is not None and not (isinstance(cluster_id, str) and 0 < len(cluster_id) <= MAX_CLUSTER_ID_LENGTH):
            raise ValueError(f"not an encoded Membership: the cluster ID must be 1 to {MAX_CLUSTER_ID_LENGTH} characters")
        return cls(voters=raw["voters"], learners=learners, cluster_id=cluster_id)


MAX_CLUSTER_ID_LENGTH = 64
"""Longest cluster ID accepted from a configuration or a peer's Hello."""


def founding_cluster_id(voters: Mapping[NodeId, str]) -> str:
    """The ID of a cluster founded with ``voters`` (name -> address): 16 hex
    digits of the BLAKE2b hash of the sorted name/address pairs. Founding
    the same members on each of them gives the same ID; two clusters
    founded with the same names at different addresses get different ones."""
    pairs = sorted(voters.items())
    return hashlib.blake2b(msgpack.packb(pairs), digest_size=8, person=b"raftlib-cluster").hexdigest()


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Describes a snapshot: the last log index and term it covers, and the
    membership in force at that index."""

    index: int
    term: int
    membership: Membership
