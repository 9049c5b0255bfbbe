"""Client sessions: exactly-once writes across retries.

A client opens a session (a log entry), then tags each write with its
session id and a sequence number, and tells which of its earlier writes it
has seen answered (``ack``: every sequence number up to it). The table below
is replicated state: every peer applies the same entries in the same order,
so every peer agrees on which writes were applied and what they returned.
A write whose sequence number was already applied is not applied again; its
first result is returned instead. Results are kept until the client
acknowledges them, each with a digest of its command: a write that reuses
the sequence number for another command (two writers sharing a session id)
is refused (:attr:`Outcome.CONFLICT`) rather than answered with the other
command's result.

Sessions expire by *log time*: the leader stamps each session entry with its
clock (never going backwards), and a session unused for ``ttl`` seconds of
that time is dropped when a later session entry is applied (the table is
swept every ``ttl / 16`` of log time, so a session may outlive ``ttl`` by up
to that much). Expiry is thus
decided by the log, identically on every peer, not by each peer's clock.

The table holds at most ``max_sessions`` sessions: opening one more drops
the session used longest ago (least recently used, as the Raft thesis,
§6.3, suggests), whose writes then fail with ``SessionExpired`` like those
of an expired session. The table keeps its sessions in the order they were
last used, so the one to drop is always the first.

Both limits are part of the log too: the leader writes its own
``Config.session_ttl`` and ``Config.max_sessions`` into each OPEN entry
(:func:`open_settings`), and every peer's table takes them from there, so
members whose configurations differ still keep the same sessions. A table
has its own peer's limits only until it applies such an entry (a log
written by an older version).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
from typing import Any

import msgpack

__all__ = ["SessionOp", "ClientEntry", "SessionTable", "Outcome", "open_settings"]


class SessionOp(enum.IntEnum):
    OPEN = 0
    WRITE = 1
    CLOSE = 2


@dataclasses.dataclass(frozen=True, slots=True)
class ClientEntry:
    """The payload of an ``EntryKind.CLIENT`` log entry."""

    op: SessionOp
    client: str
    seq: int = 0
    ack: int = 0
    stamp: float = 0.0
    command: bytes = b""

    def encode(self) -> bytes:
        data: bytes = msgpack.packb([int(self.op), self.client, self.seq, self.ack, self.stamp, self.command])
        return data

    @classmethod
    def decode(cls, data: bytes) -> ClientEntry:
        """Raises ``ValueError`` for anything that is not an encoded ClientEntry."""
        try:
            op, client, seq, ack, stamp, command = msgpack.unpackb(data)
            return cls(SessionOp(op), str(client), int(seq), int(ack), float(stamp), bytes(command))
        except Exception as exc:
            raise ValueError(f"not a client entry: {exc}") from None


def open_settings(ttl: float, max_sessions: int) -> bytes:
    """The ``command`` of an OPEN entry: the opening leader's session
    settings, which every peer's table adopts (see :meth:`SessionTable.configure`)."""
    # Any limit above what msgpack carries is as good as none.
    data: bytes = msgpack.packb({"ttl": float(ttl), "max_sessions": min(int(max_sessions), 2**63 - 1)})
    return data


def _settings_from(settings: bytes) -> tuple[float | None, int | None]:
    """The ttl and max_sessions in an OPEN entry's ``command``, each
    ``None`` if it names none that is usable (an entry of an older version
    carries nothing)."""
    if not settings:
        return None, None
    try:
        raw = msgpack.unpackb(settings)
    except Exception:
        return None, None
    if type(raw) is not dict:
        return None, None
    return _usable_ttl(raw.get("ttl")), _usable_max(raw.get("max_sessions"))


def _usable_ttl(ttl: Any) -> float | None:
    return ttl if type(ttl) is float and math.isfinite(ttl) and ttl > 0 else None


def _usable_max(limit: Any) -> int | None:
    return limit if type(limit) is int and limit > 0 else None


class Outcome(enum.Enum):
    APPLY = "apply"
    """A new write: apply it and :meth:`SessionTable.record` its result."""
    DUPLICATE = "duplicate"
    """Applied before: the first result comes with it."""
    EXPIRED = "expired"
    """The session does not exist (expired, closed or never opened): not applied."""
    CONFLICT = "conflict"
    """The sequence number was applied for another command: not applied."""
    ACKNOWLEDGED = "acknowledged"
    """The client acknowledged this sequence number's answer, which is forgotten: not applied again."""


@dataclasses.dataclass(slots=True)
class _Session:
    last_used: float
    acked: int = 0
    results: dict[int, tuple[bool, bytes]] = dataclasses.field(default_factory=dict)
    """seq -> (ok, packed result or error text), for seqs above ``acked``."""
    digests: dict[int, bytes] = dataclasses.field(default_factory=dict)
    """seq -> :func:`_digest` of the command applied, for the seqs in
    ``results`` (not for those restored from a snapshot of an older version)."""


def _bytes(value: Any) -> bytes:
    # bytes(n) of an int n would allocate n bytes.
    if type(value) is not bytes:
        raise ValueError(f"expected bytes, got {type(value).__name__}")
    return value


def _digest(command: bytes) -> bytes:
    return hashlib.blake2b(command, digest_size=8).digest()


class SessionTable:
    """The replicated table of client sessions (see the module docs)."""

    def __init__(self, ttl: float, max_sessions: int) -> None:
        self.ttl = ttl
        """Seconds of log time an idle session is kept: this peer's own
        until an OPEN entry carrying the cluster's is applied."""
        self.max_sessions = max_sessions
        """Sessions kept at most: this peer's own until an OPEN entry carrying the cluster's is applied."""
        self._configured = False
        """Whether :attr:`ttl` came from the log (OPEN entries or a snapshot)."""
        self.clock = 0.0
        """The latest stamp applied: the cluster's log time."""
        self._last_sweep = 0.0
        self._sessions: dict[str, _Session] = {}
        """Invariant: in the order the sessions were last used (``last_used`` never decreases along it)."""

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, client: object) -> bool:
        return client in self._sessions

    def tick(self, stamp: float) -> None:
        """Advance log time to ``stamp`` and drop sessions idle for longer than ``ttl``."""
        if stamp > self.clock:
            self.clock = stamp
        if self.clock - self._last_sweep >= self.ttl / 16:
            self._last_sweep = self.clock
            horizon = self.clock - self.ttl
            for client in [c for c, s in self._sessions.items() if s.last_used < horizon]:
                del self._sessions[client]

    def configure(self, settings: bytes) -> None:
        """Adopt the session settings of an OPEN entry (its ``command``, from
        :func:`open_settings`); settings it does not carry are left as they are."""
        ttl, max_sessions = _settings_from(settings)
        if max_sessions is not None:
            self.max_sessions = max_sessions
        if ttl is None:
            return
        if not self._configured or ttl != self.ttl:
            # The sweep schedule restarts from log time here, alike on every
            # peer whatever ttl (and schedule) each had before.
            self._last_sweep = self.clock
        self.ttl, self._configured = ttl, True

    def open(self, client: str) -> None:
        """Open session ``client`` (or mark it used, if open); when the table
        is full, drop the sessions used longest ago to make room."""
        session = self._sessions.pop(client, None)
        if session is None:
            while len(self._sessions) >= self.max_sessions:
                del self._sessions[next(iter(self._sessions))]
            session = _Session(self.clock)
        session.last_used = self.clock
        self._sessions[client] = session  # the most recently used: last

    def close(self, client: str) -> None:
        self._sessions.pop(client, None)

    def check(self, client: str, seq: int, ack: int, command: bytes) -> tuple[Outcome, tuple[bool, bytes] | None]:
        """Classify a write of ``command`` by ``client`` with sequence number ``seq``.

        Also forgets the results the client acknowledged (``ack``).
        """
        session = self._sessions.pop(client, None)
        if session is None:
            return Outcome.EXPIRED, None
        session.last_used = self.clock
        self._sessions[client] = session  # the most recently used: last
        if ack > session.acked:
            session.acked = ack
            for s in [s for s in session.results if s <= ack]:
                del session.results[s]
                session.digests.pop(s, None)
        if seq in session.results:
            return self._known(session, seq, command)
        if seq <= session.acked:
            # The client said it saw this answer already: it cannot be asking
            # again, and whether the command is the one applied is unknown.
            return Outcome.ACKNOWLEDGED, None
        return Outcome.APPLY, None

    def peek(self, client: str, seq: int, command: bytes) -> tuple[Outcome, tuple[bool, bytes] | None]:
        """What :meth:`check` would say of a write applied before, without
        changing anything: ``(APPLY, None)`` if this table cannot tell (the
        write is new, or its answer was acknowledged, or the session is unknown)."""
        session = self._sessions.get(client)
        if session is None or seq not in session.results:
            return Outcome.APPLY, None
        return self._known(session, seq, command)

    @staticmethod
    def _known(session: _Session, seq: int, command: bytes) -> tuple[Outcome, tuple[bool, bytes] | None]:
        digest = session.digests.get(seq)
        if digest is not None and digest != _digest(command):
            return Outcome.CONFLICT, None
        return Outcome.DUPLICATE, session.results[seq]

    def record(self, client: str, seq: int, ok: bool, result: bytes, command: bytes) -> None:
        """Keep the result of write ``seq`` (of ``command``) until the client acknowledges it."""
        session = self._sessions.get(client)
        if session is not None:
            session.results[seq] = (ok, result)
            session.digests[seq] = _digest(command)

    # -- snapshots ---------------------------------------------------------------

    def encode(self) -> bytes:
        data: bytes = msgpack.packb({
            **({"ttl": self.ttl, "max_sessions": self.max_sessions} if self._configured else {}),
            "clock": self.clock,
            "last_sweep": self._last_sweep,
            "sessions": {
                c: [s.last_used, s.acked, [[seq, ok, r] for seq, (ok, r) in s.results.items()]]
                for c, s in self._sessions.items()
            },
            # Apart, so that a peer of an older version can still read the rest.
            "digests": {c: [[seq, d] for seq, d in s.digests.items()] for c, s in self._sessions.items() if s.digests},
        })
        return data

    def restore(self, data: bytes) -> None:
        """Replace the table with one from :meth:`encode`; raises ``ValueError`` if malformed."""
        try:
            raw: Any = msgpack.unpackb(data, strict_map_key=False)
            sessions = {
                str(c): _Session(float(used), int(acked), {int(seq): (bool(ok), bytes(r)) for seq, ok, r in results})
                for c, (used, acked, results) in raw["sessions"].items()
            }
            for c, digests in raw.get("digests", {}).items():
                session = sessions[str(c)]
                session.digests = {int(seq): _bytes(d) for seq, d in digests if int(seq) in session.results}
            clock, last_sweep = float(raw["clock"]), float(raw["last_sweep"])
            ttl, max_sessions = raw.get("ttl"), raw.get("max_sessions")
            if ttl is not None and _usable_ttl(ttl) is None:
                raise ValueError(f"ttl {ttl!r} is not a positive number of seconds")
            if max_sessions is not None and _usable_max(max_sessions) is None:
                raise ValueError(f"max_sessions {max_sessions!r} is not a positive int")
        except Exception as exc:
            raise ValueError(f"malformed session table in snapshot: {exc}") from None
        # A table of an older version is in the order the sessions were opened.
        sessions = dict(sorted(sessions.items(), key=lambda item: item[1].last_used))
        self._sessions, self.clock, self._last_sweep = sessions, clock, last_sweep
        if ttl is not None:  # a snapshot of an older version has none: this peer's own limits stay
            self.ttl, self._configured = ttl, True
        if max_sessions is not None:
            self.max_sessions = max_sessions
