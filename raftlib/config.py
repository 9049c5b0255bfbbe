"""Tunable settings of a peer, as one frozen dataclass with ``validate()``."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError

ENTRIES_PER_MESSAGE_LIMIT = 65_536
"""Most entries a peer accepts in one AppendEntries (the wire check), so the
ceiling of ``Config.max_entries_per_message``."""


MESSAGE_FRAMING = 4096
"""Bytes a Raft message's frame holds besides its entries: the envelope,
the type name, two node names of up to 256 characters, and the ints. A
command, a snapshot chunk or a request's answer may take the rest of
``Config.max_frame_size``."""

@dataclass(frozen=True, slots=True)
class Config:
    """Settings for the Raft core and its runtime. Every field has a default.

    Time in the core is counted in ticks; the runtime ticks every
    ``tick_interval`` seconds. With the defaults a follower starts an election
    between 0.4 and 0.8 s after it last heard from a leader.
    """

    tick_interval: float = 0.01
    """Seconds between two ticks of the runtime's clock."""
    election_ticks: int = 40
    """Base election timeout in ticks; each timeout is drawn at random from
    ``[election_ticks, 2 * election_ticks)``."""
    heartbeat_ticks: int = 5
    """Ticks between two heartbeats from a leader. Must be below ``election_ticks``."""
    max_entries_per_message: int = 4096
    """Most entries one AppendEntries carries."""
    max_bytes_per_message: int = 4 * 1024 * 1024
    """Most payload bytes one AppendEntries carries (at least one entry is always sent)."""
    max_inflight: int = 64
    """Most AppendEntries in flight to one follower before waiting for acks."""
    max_batch_delay: float = 0.001
    """Leader: the longest a write waits to be sent while a save is on its
    way to disk. Writes that arrive meanwhile gather into one batch (one
    AppendEntries and one save per peer instead of several); one that has
    waited this long goes out at once, so a slow save on the leader does not
    hold the write back from the followers (a majority of them can commit it
    before the leader's own save is done)."""
    max_frame_size: int = 64 * 1024 * 1024
    """Largest frame the transport accepts; bigger frames close the connection."""
    max_command_size: int = 16 * 1024 * 1024
    """Largest encoded command, query or result accepted from a caller."""
    snapshot_entries: int = 10_000
    """Take a snapshot once this many entries were applied since the last one."""
    snapshot_bytes: int = 64 * 1024 * 1024
    """... or once the commands applied since the last one add up to this many bytes."""
    snapshot_keep_entries: int = 5_000
    """Entries kept in the log behind a snapshot, so that a follower that is
    only a little behind catches up from the log instead of a snapshot."""
    snapshot_chunk_size: int = 256 * 1024
    """Bytes per chunk when a snapshot is streamed to a follower."""
    catch_up_lag: int = 4096
    """A new voter first joins as a learner; it is promoted once it is being
    replicated to and at most this many entries behind the leader, so that
    adding a member never stalls writes while it copies the log."""
    session_ttl: float = 3600.0
    """Seconds of log time (the leader's clock, stamped into the log) after
    which an idle client session is forgotten (within a sixteenth more: the
    table is swept at that interval); its retries then fail with
    ``SessionExpired`` instead of risking a second application. The
    leader writes its own into each session it opens: the cluster uses
    the one of the leader that last opened a session."""
    max_sessions: int = 100_000
    """Client sessions the cluster keeps. Opening one more forgets the
    session used longest ago (its writes then fail with ``SessionExpired``,
    unapplied). Like ``session_ttl``, the leader writes its own into each
    session it opens, and the cluster uses the latest."""
    listen_backlog: int = 10_000
    """Applied writes kept in memory (command and result) for ``listen`` to
    resume from; a listener further behind gets ``LogCompacted``."""
    max_pending_writes: int = 10_000
    """Leader: writes queued for the log plus writes appended but not yet
    applied. Beyond it ``write`` (and session writes) raise
    :class:`~raftlib.errors.Overloaded` at once and append nothing."""
    max_pending_reads: int = 10_000
    """Leader: linearizable and lease reads in progress. Beyond it ``read``
    raises :class:`~raftlib.errors.Overloaded` at once."""
    max_inbox: int = 10_000
    """Raft messages received but not yet stepped into the core. Beyond it
    the newest are dropped (logged at debug level): Raft tolerates lost
    messages, so a flood cannot grow memory."""
    max_outbox_bytes: int = 64 * 1024 * 1024
    """Bytes of messages queued for one peer; beyond it the oldest are dropped
    (as they are beyond 10,000 messages). The newest message is always kept."""
    max_inbound_connections: int = 1024
    """Connections accepted at once (peers, clients, snapshot transfers).
    Beyond it a new connection takes the place of the one open longest
    among those that have not sent their Hello, or if there is none, of
    the one idle longest among those past their Hello, except each
    member's Raft link (clients
    of ``raftlib.connect`` reconnect by themselves): first among those with
    no request or change feed in progress, and only if all have one, among
    all. If there is none, the new one is closed at once. Both are logged.
    A peer raises its process's soft limit on open files to fit this many
    and 256 more, as far as the hard limit allows (a warning if it cannot)."""
    hello_timeout: float = 5.0
    """Seconds an accepted connection has to send its first frame (``Hello``)
    before it is closed. Until then a frame may hold at most 64 KiB."""
    pre_vote: bool = True
    """Run a pre-vote round before incrementing the term, so a peer that was
    cut off cannot disrupt a healthy leader when it returns."""
    check_quorum: bool = True
    """A leader that has not heard from a majority within an election timeout steps down."""
    seed: int | None = None
    """Seed of the core's random generator (election timeouts). ``None`` draws one."""

    def validate(self) -> Config:
        """Raise :class:`~raftlib.errors.ConfigError` naming the first bad field; return self."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "seed":
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise ConfigError(f"Config.seed must be an int or None, got {value!r}")
                continue
            if f.name in ("pre_vote", "check_quorum"):
                if not isinstance(value, bool):
                    raise ConfigError(f"Config.{f.name} must be a bool, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"Config.{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"Config.{f.name} must be finite, got {value!r}")
            if value <= 0 and f.name != "snapshot_keep_entries":
                raise ConfigError(f"Config.{f.name} must be positive, got {value!r}")
            if f.name not in ("tick_interval", "session_ttl", "hello_timeout", "max_batch_delay") and not isinstance(value, int):
                raise ConfigError(f"Config.{f.name} must be an int, got {value!r}")
        if self.heartbeat_ticks >= self.election_ticks:
            raise ConfigError(
                f"Config.heartbeat_ticks ({self.heartbeat_ticks}) must be less than "
                f"election_ticks ({self.election_ticks}), or followers time out between heartbeats"
            )
        if self.snapshot_keep_entries < 0:
            raise ConfigError("Config.snapshot_keep_entries must be 0 or more")
        # A command travels as an entry of an AppendEntries, a chunk in a
        # SnapshotChunk: each frame also holds their framing.
        room = self.max_frame_size - MESSAGE_FRAMING
        if self.snapshot_chunk_size > room:
            raise ConfigError(
                f"Config.snapshot_chunk_size must leave room for its framing in max_frame_size: at most {room}"
            )
        if self.max_command_size > room:
            raise ConfigError(
                f"Config.max_command_size must leave room for its framing in max_frame_size: at most {room}"
            )
        # An AppendEntries carries up to max_bytes_per_message of entries as
        # Entry.size() counts them (at most a byte short per entry on the
        # wire), plus its names and ints: a batch that cannot fit a frame
        # would be refused by every peer and resent forever.
        most = self.max_frame_size - self.max_entries_per_message - MESSAGE_FRAMING
        if self.max_bytes_per_message > most:
            raise ConfigError(
                f"Config.max_bytes_per_message ({self.max_bytes_per_message}) must fit a frame with its "
                f"framing: at most {most} with max_frame_size {self.max_frame_size} (peers refuse larger "
                f"frames); lower it with max_frame_size"
            )
        if self.max_entries_per_message > ENTRIES_PER_MESSAGE_LIMIT:
            raise ConfigError(
                f"Config.max_entries_per_message must be at most {ENTRIES_PER_MESSAGE_LIMIT} "
                f"(peers refuse larger messages)"
            )
        return self


def check_timeout(timeout: Any, what: str = "timeout") -> None:
    """Raise :class:`~raftlib.errors.ConfigError` unless ``timeout`` is a
    number of seconds, 0 or more, or ``None`` (no limit). A negative one
    would run out at once: a sign of a deadline computed wrong, not a wish."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout >= 0):  # NaN too: it compares false
        raise ConfigError(f"{what} must be a number of seconds (0 or more) or None, got {timeout!r}")
