"""raftlib: an asyncio-native Raft consensus framework.

Subclass :class:`StateMachine`, start peers with :func:`start_peer`, found
the cluster with :meth:`Peer.set_configuration`, then ``write`` and ``read``.
"""

from . import errors
from . import kv
from .client import Client, connect
from .config import Config
from .loop import run
from .errors import (
    ConfigError,
    LeadershipLost,
    MembershipChangePending,
    NoLiveMajority,
    NotLeader,
    NotMember,
    OutcomeUnknown,
    Overloaded,
    PeerStopped,
    ProposalDropped,
    RaftError,
)
from .runtime import Peer, join, start_peer
from .security import SharedSecret, TLSConfig
from .state_machine import StateMachine
from .types import Change, Entry, EntryKind, HardState, Membership, NodeId, SnapshotMeta

__version__ = "0.1.0"

__all__ = [
    "Change",
    "Client",
    "Config",
    "ConfigError",
    "Entry",
    "EntryKind",
    "HardState",
    "LeadershipLost",
    "MembershipChangePending",
    "Membership",
    "NoLiveMajority",
    "NodeId",
    "NotLeader",
    "NotMember",
    "OutcomeUnknown",
    "Overloaded",
    "Peer",
    "PeerStopped",
    "ProposalDropped",
    "RaftError",
    "SharedSecret",
    "SnapshotMeta",
    "StateMachine",
    "TLSConfig",
    "connect",
    "errors",
    "join",
    "kv",
    "run",
    "start_peer",
]
