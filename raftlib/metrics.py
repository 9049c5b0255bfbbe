"""What a peer counts about itself, for :meth:`raftlib.Peer.metrics`.

Rule 1: keeping a metric costs an integer add (or, for a timing, two clock
reads and a few adds) per batch, per message or per request: never anything
per log entry beyond an add, and nothing allocated.

Theory of operation. The runtime and the transport bump plain attributes
(:class:`PeerCounters`, ``Transport.stats``) and the core counts its own
campaigns; :meth:`raftlib.Peer.metrics` reads them all into one plain dict
when asked. Timings are summaries with a fixed set of buckets
(:class:`Timing`), cumulative as Prometheus histograms are, so they export
without conversion (see docs/operations.md).
"""

from __future__ import annotations

import bisect
from typing import Any

from .errors import LeadershipLost, NotLeader, Overloaded, PeerStopped, ProposalDropped, StorageFull, WriteTimeout

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds, in seconds, of the buckets of every :class:`Timing` (then ``+Inf``)."""

WRITE_FAILURES = ("not_leader", "storage_full", "overloaded", "dropped", "leadership_lost", "timeout", "stopped")
"""The reasons ``writes_failed`` counts, by what the writer got: :class:`~raftlib.errors.NotLeader`,
:class:`~raftlib.errors.StorageFull`, :class:`~raftlib.errors.Overloaded`,
:class:`~raftlib.errors.ProposalDropped`, :class:`~raftlib.errors.LeadershipLost`,
:class:`~raftlib.errors.WriteTimeout`, :class:`~raftlib.errors.PeerStopped`."""

_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (NotLeader, "not_leader"), (StorageFull, "storage_full"), (Overloaded, "overloaded"),
    (ProposalDropped, "dropped"), (LeadershipLost, "leadership_lost"), (WriteTimeout, "timeout"),
    (PeerStopped, "stopped"),
)

READ_KINDS = ("linearizable", "lease", "stale")
"""The consistencies ``reads_served`` counts."""


class Timing:
    """Count, sum, maximum and a fixed-bucket histogram of durations in seconds."""

    __slots__ = ("count", "total", "max", "_counts")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self._counts = [0] * (len(SECONDS_BUCKETS) + 1)
        """Observations per bucket (not cumulative); the last one is ``+Inf``."""

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds
        # bisect_left: a value equal to a bound falls in that bound's bucket ("le").
        self._counts[bisect.bisect_left(SECONDS_BUCKETS, seconds)] += 1

    def summary(self) -> dict[str, Any]:
        """``count``, ``sum``, ``max`` and ``buckets``: upper bound (a string,
        the last ``"+Inf"``) to the number of durations at or below it."""
        buckets: dict[str, int] = {}
        running = 0
        for bound, n in zip((*(format(b, "g") for b in SECONDS_BUCKETS), "+Inf"), self._counts):
            running += n
            buckets[bound] = running
        return {"count": self.count, "sum": self.total, "max": self.max, "buckets": buckets}


class PeerCounters:
    """The counters the runtime keeps (see :meth:`raftlib.Peer.metrics` for
    what each means). Plain attributes, bumped in place."""

    __slots__ = ("writes_proposed", "writes_committed", "writes_failed", "entries_applied", "entries_saved",
                 "reads_served", "requests_forwarded", "leader_changes_seen", "snapshots_taken", "snapshots_sent",
                 "snapshots_installed", "save", "apply", "snapshot", "restore", "_leader_seen")

    def __init__(self) -> None:
        self.writes_proposed = 0
        self.writes_committed = 0
        self.writes_failed = dict.fromkeys(WRITE_FAILURES, 0)
        self.entries_applied = 0
        self.entries_saved = 0
        self.reads_served = dict.fromkeys(READ_KINDS, 0)
        self.requests_forwarded: dict[str, int] = {}
        self.leader_changes_seen = 0
        self.snapshots_taken = 0
        self.snapshots_sent = 0
        self.snapshots_installed = 0
        self.save = Timing()
        self.apply = Timing()
        self.snapshot = Timing()
        self.restore = Timing()
        self._leader_seen: tuple[str, int] | None = None

    def saw_leader(self, leader: str | None, term: int) -> None:
        """The core reports ``leader`` in ``term``: a leader not seen before
        (one per term at most) counts as a leader change."""
        if leader is not None and (leader, term) != self._leader_seen:
            self._leader_seen = (leader, term)
            self.leader_changes_seen += 1

    def write_failed(self, exc: BaseException, n: int = 1) -> None:
        """``n`` writes failed with ``exc`` (one of :data:`WRITE_FAILURES`'s kinds)."""
        for kind, reason in _REASONS:
            if isinstance(exc, kind):
                self.writes_failed[reason] += n
                return

    def forwarded(self, op: str) -> None:
        """One request ``op`` sent on to the leader."""
        self.requests_forwarded[op] = self.requests_forwarded.get(op, 0) + 1
