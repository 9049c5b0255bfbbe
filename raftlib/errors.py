"""Every exception raftlib raises on purpose derives from :class:`RaftError`.

Each class says what it means for the caller's request. For writes this
matters most: :class:`ProposalDropped` and :class:`NotLeader` mean the command
was certainly **not** applied and may be retried freely, while
:class:`OutcomeUnknown` (and its subclass :class:`LeadershipLost`) means it may
or may not have been applied.
"""

from __future__ import annotations


class RaftError(Exception):
    """Root of all raftlib errors."""


class NotLeader(RaftError):
    """The request reached a peer that is not the leader; it was not applied.

    ``leader`` and ``leader_address`` name the leader this peer knows of, or
    are ``None`` during an election. Retry there (or wait and retry).
    """

    def __init__(self, leader: str | None = None, leader_address: str | None = None) -> None:
        self.leader = leader
        self.leader_address = leader_address
        if leader is None:
            msg = "this peer is not the leader and no leader is known yet; retry after an election"
        else:
            msg = f"this peer is not the leader; the leader is {leader!r} at {leader_address or 'an unknown address'}"
        super().__init__(msg)


class NotMember(NotLeader):
    """This peer has been removed from the cluster; the request was not applied.

    Its own log holds the committed configuration that removed it (a
    removed leader has stepped down), or, if it was removed while it was
    down or cut off and never received that entry, a member told it so when
    it asked for votes. It does not campaign and forwards nothing until a
    leader adds it back. Send
    requests to a member; to bring this peer back, add it with
    ``Peer.add_member`` on a member (or ``raftlib members add``).
    ``leader`` and ``leader_address`` are ``None``.
    """

    def __init__(self, message: str) -> None:
        RaftError.__init__(self, message)
        self.leader = None
        self.leader_address = None


class ProposalDropped(RaftError):
    """The write was certainly not applied (another entry took its place in
    the log, or the peer stopped before it was appended). Safe to retry."""


class OutcomeUnknown(RaftError):
    """The write may or may not have been applied: the peer lost contact with
    its outcome (for example it stepped down after appending it). Retrying
    may apply it twice unless the command is idempotent."""


class LeadershipLost(OutcomeUnknown):
    """The leader stepped down while the write was in flight; it may still be
    committed by the next leader. Outcome unknown."""


class CommandTooLarge(RaftError, ValueError):
    """An encoded command, query or result is larger than
    ``Config.max_command_size``. Nothing was appended."""


class PeerStopped(RaftError):
    """The peer has been stopped; it accepts no more requests."""


class ConfigError(RaftError, ValueError):
    """An option passed to raftlib is invalid; the message names it."""


class NoLiveMajority(ConfigError):
    """A membership change the leader refused: of the voters of a
    configuration it would make, it has heard from too few within an
    election timeout for that configuration to commit anything, this change
    included. Nothing changed. The message names the voters that are down:
    start them again (the same change then succeeds, so it is worth asking
    again, as :func:`raftlib.join` does until its timeout), or remove them
    first; or pass ``force=True`` (``--force``) to make the change anyway."""


class AddressInUse(RaftError, OSError):
    """The address to listen on is taken: another process listens on the
    TCP port or serves on the Unix socket, or holds the socket's lock file,
    ``<path>.lock``, because it is starting or running there. Nothing was
    started. The message names the address; stop that process or choose
    another address. It is also an ``OSError`` with ``errno.EADDRINUSE``."""


class StorageError(RaftError):
    """The storage adapter failed to read or write; the message names the
    file and what went wrong. A peer that hits this on a sync stops."""


class LogCompacted(StorageError):
    """The requested log index was discarded by compaction (it lies in a
    snapshot), or a change feed or watch asked for changes its member no
    longer keeps; the message names where to start instead."""


class CorruptStorage(StorageError):
    """Data on disk failed a check (bad checksum or undecodable record)."""


class ProtocolError(RaftError):
    """A peer sent bytes that are not a valid raftlib frame. The connection
    is closed; the peer keeps serving."""


class FrameTooLarge(ProtocolError):
    """A frame exceeded the configured maximum size.

    ``size`` is the payload length the frame announced and ``limit`` the
    most the receiver accepts, when known (``None`` otherwise).
    """

    def __init__(self, message: str, *, size: int | None = None, limit: int | None = None) -> None:
        self.size = size
        self.limit = limit
        super().__init__(message)


class Timeout(RaftError):
    """The operation did not finish in the time allowed."""


class WriteTimeout(Timeout, OutcomeUnknown):
    """A write did not finish in the time allowed. It may still be applied later."""


class MembershipChangePending(RaftError):
    """Another membership change has not committed yet (or a new leader has
    not committed an entry of its term). Nothing was changed; retry shortly.
    ``Peer.add_member`` and friends wait and retry by themselves."""


class Unavailable(RaftError):
    """No member of the cluster could be reached (or none leads) within the
    time allowed. The request was not sent, so it was not applied."""


class ConnectionLost(OutcomeUnknown):
    """The connection to a peer dropped after a request was sent and before
    its answer came. Outcome unknown."""


class SessionExpired(RaftError):
    """The client session is unknown to the cluster (it expired after being
    idle for ``Config.session_ttl`` seconds of log time, was dropped to make
    room for newer ones past ``Config.max_sessions``, or was closed). This
    write was not applied; whether earlier unanswered writes of the session
    were is unknown. Open a new session (``raftlib.connect`` does it)."""


class CommandFailed(RaftError):
    """``handle_write`` raised for this command on the cluster: the command
    counts as applied (every peer raised the same way; whatever it changed
    before raising stays changed). Also raised when ``handle_write``
    returned a result that cannot be encoded (or, for a writer elsewhere,
    cannot cross the network): the write took effect on every peer and
    only its result is lost; the message says so. Also raised for a read
    answered by another peer (forwarded, or through a client) whose
    ``handle_read`` raised; the read changed nothing. The message names the
    original exception."""


class KVError(RaftError):
    """A request to the built-in key-value service (:mod:`raftlib.kv`) was refused;
    nothing changed."""


class ScopeNotFound(KVError):
    """The key-value scope named does not exist; create it first (``create_scope``)."""


class ScopeExists(KVError):
    """``create_scope`` named a scope that already exists."""


class StorageFull(StorageError):
    """The disk (or the LMDB map) is full: the last write was refused and
    nothing of it was stored. The peer stops accepting writes and reads
    (this error) and retries the write until space returns; meanwhile the
    others elect a leader without it. Free space (or raise ``map_size``)."""


class AuthenticationFailed(Unavailable, ConnectionError):
    """A connection was refused by its security handshake: a TLS certificate
    that the other end does not trust (or none), or a wrong or missing shared
    secret. Nothing was sent over it, so nothing was applied. It is also a
    ``ConnectionError``, so code that handles refused connections handles it."""


class Overloaded(RaftError):
    """The peer refused the request because one of its bounded queues is full
    (``Config.max_pending_writes`` or ``max_pending_reads``, requests on one
    connection, a change feed whose reader fell too far behind). Nothing was
    appended, so a write was **not applied**. Retry later, with back-off."""
