"""raftlib: an asyncio-native Raft consensus framework.

Subclass :class:`StateMachine`, start peers with :func:`start_peer`, found
the cluster with :meth:`Peer.set_configuration`, then ``write`` and ``read``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import errors
    from . import kv
    from .client import Client, connect
    from .config import Config
    from .loop import run
    from .errors import (ConfigError, LeadershipLost, MembershipChangePending, NoLiveMajority, NotLeader, NotMember,
                         OutcomeUnknown, Overloaded, PeerStopped, ProposalDropped, RaftError)
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

_MODULE_OF = {
    "Client": "client", "connect": "client", "Config": "config", "run": "loop",
    "Peer": "runtime", "join": "runtime", "start_peer": "runtime",
    "SharedSecret": "security", "TLSConfig": "security", "StateMachine": "state_machine",
    **dict.fromkeys(["ConfigError", "LeadershipLost", "MembershipChangePending", "NoLiveMajority", "NotLeader",
                     "NotMember", "OutcomeUnknown", "Overloaded", "PeerStopped", "ProposalDropped", "RaftError"],
                    "errors"),
    **dict.fromkeys(["Change", "Entry", "EntryKind", "HardState", "Membership", "NodeId", "SnapshotMeta"], "types"),
}
"""Where each public name lives. They are imported when first used (PEP
562), so that ``import raftlib`` itself is quick: the ``raftlib`` command
(:mod:`raftlib.__main__`) handles a Ctrl-C before the rest has loaded."""

if not TYPE_CHECKING:  # type checkers see the imports above instead

    def __getattr__(name: str) -> Any:
        """Import a public name, or a submodule (``raftlib.runtime``), on first use."""
        where = _MODULE_OF.get(name)
        if where is None and not name.startswith("__"):
            try:
                return importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise
                raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        if where is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
