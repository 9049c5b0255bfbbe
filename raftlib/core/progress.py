"""The leader's view of one follower's log.

A follower is probed (one AppendEntries at a time, backing off on rejection)
until its log matches, then replicated to optimistically (``next`` runs ahead
of ``match`` with up to ``max_inflight`` messages unacknowledged). A follower
that needs entries the leader has compacted is sent a snapshot and waits in
SNAPSHOT until it acknowledges it (or the transfer is reported failed).

Invariant: 0 <= match < next.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = ("match", "next", "state", "inflight", "probe_sent", "recent_active", "read_ack", "stall_ticks",
                 "sent_commit", "pending_snapshot", "heard_at", "snapshot_ctx", "restoring")

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.inflight: deque[int] = deque()
        """Last index of each AppendEntries in flight (REPLICATE only)."""
        self.probe_sent = False
        """PROBE only: one probe is out; wait for its answer or the next heartbeat."""
        self.recent_active = False
        """Heard from since the last CheckQuorum round."""
        self.read_ack = 0
        """Highest ReadIndex context this follower acknowledged in the current term."""
        self.pending_snapshot = 0
        """SNAPSHOT only: index of the snapshot being sent."""
        self.sent_commit = 0
        """Highest commit index sent to this follower."""
        self.stall_ticks = 0
        """Ticks since ``match`` last moved while messages were in flight."""
        self.heard_at: int | None = None
        """The leader's tick when this follower last answered an AppendEntries
        (``None``: not yet in this term)."""
        self.snapshot_ctx = 0
        """Read context of the first message sent after this follower took a
        snapshot: rejections of older messages predate the snapshot."""
        self.restoring = False
        """The follower received a snapshot and has not answered since: it is
        restoring its state machine from it, which may take longer than an
        election timeout, and then continues from the log after it."""

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.next = self.match + 1
        self.inflight.clear()
        self.probe_sent = False

    def become_snapshot(self, index: int) -> None:
        """Wait for the follower to install the snapshot at ``index``; send nothing else."""
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.inflight.clear()
        self.probe_sent = False

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.inflight.clear()
        self.probe_sent = False

    def maybe_update(self, match: int) -> bool:
        """A success up to ``match`` arrived; returns whether it is news."""
        updated = match > self.match
        if updated:
            self.match = match
            self.stall_ticks = 0
            while self.inflight and self.inflight[0] <= match:
                self.inflight.popleft()
        self.next = max(self.next, match + 1)
        return updated

    def can_send(self, max_inflight: int) -> bool:
        if self.state is ProgressState.SNAPSHOT:
            return False
        if self.state is ProgressState.PROBE:
            return not self.probe_sent
        return len(self.inflight) < max_inflight

    def sent(self, last_index: int, n_entries: int) -> None:
        """Record an AppendEntries that carried entries up to ``last_index``."""
        if self.state is ProgressState.REPLICATE:
            if n_entries:
                self.next = last_index + 1
                self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def describe(self) -> str:
        return f"{self.state.value} match={self.match} next={self.next} inflight={len(self.inflight)}"
