"""SimConfig: every knob of a simulated run, with fuzzing defaults.

Time is measured in *ticks* of the virtual clock (a peer's ``Raft.tick()``
is called once per tick). Delays are floats in ticks, so a message can
arrive between two ticks; rates are probabilities per opportunity (per
message, per Ready or per tick, as each field says).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import Config


_TYPES: dict[str, type | tuple[type, ...]] = {"int": int, "float": (int, float), "bool": bool, "None": type(None)}
"""The field annotations SimConfig uses, as the types their values may have."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Settings of one simulated run. The defaults turn every fault kind on."""

    # -- run length ---------------------------------------------------------------
    ticks: int = 300
    """Length of the fault phase, in ticks."""
    liveness_ticks: int | None = None
    """Liveness bound: once the faults stop (everything healed, every peer
    restarted), the cluster must converge within this many ticks. ``None``
    means ``30 * election_ticks`` (see :meth:`liveness_bound`)."""

    # -- the Raft cores -------------------------------------------------------------
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    pre_vote: bool | None = None
    """``None`` draws it per seed from the run's random generator."""
    check_quorum: bool | None = None
    """``None`` draws it per seed from the run's random generator."""
    max_entries_per_message: int = 16
    max_inflight: int = 8

    # -- network ---------------------------------------------------------------------
    min_delay: float = 0.05
    """Smallest one-way message delay, in ticks."""
    max_delay: float = 2.0
    """Largest one-way message delay, in ticks (independent per message, so
    messages overtake each other)."""
    drop_rate: float = 0.05
    """Probability that a sent message is lost."""
    duplicate_rate: float = 0.03
    """Probability that a sent message is delivered twice (with independent delays)."""
    partition_rate: float = 0.03
    """Per tick, while no random partition is in force: probability that one
    starts. Half of the symmetric ones split the peers into a majority and a
    minority, half are bridges (two halves that cannot talk, joined by one
    peer that talks to both)."""
    oneway_fraction: float = 0.35
    """Fraction of partitions that are asymmetric: one link (A reaches B, B
    cannot reach A), or a peer that can only send, or only receive."""
    min_partition_ticks: float = 5.0
    max_partition_ticks: float = 60.0
    """Partitions (random and leader isolations) last a random time in this range."""
    leader_isolation_rate: float = 0.1
    """Probability that a newly elected leader is cut off from everyone soon
    after it wins (a leader-targeted partition, which may overlap others)."""
    max_leader_isolation_delay: float = 4.0
    """The isolation comes a random time in ``[0, this]`` ticks after the election."""

    # -- disks and crashes ---------------------------------------------------------------
    sync_delay_rate: float = 0.3
    """Probability that a Ready's save sits in the volatile write buffer for a
    while before it reaches the disk (otherwise it is synced at once). Slow
    disks are a fault: they stop with the others in the liveness phase."""
    max_sync_delay: float = 3.0
    """Longest time a save waits in the write buffer, in ticks."""
    pipeline: bool | None = None
    """Pipelined persistence (see :mod:`raftlib.core.ready`): the peer keeps
    stepping, ticking and taking Readies while earlier saves are still being
    written (a FIFO of saves in flight, completed in order, several at once
    in one write when they are due together), except after a Ready with
    ``persist_before_step``, which holds every input until the saves up to it
    are on disk (raftlib's runtime works this way). ``False``: one Ready at a
    time, the synchronous contract.
    ``None`` draws it per seed (on with probability ``pipeline_probability``)
    in automatic runs, from a generator of its own, so the seeds that do not
    pipeline run exactly as without this option; a manual simulator does not
    pipeline unless this is ``True``."""
    pipeline_probability: float = 0.5
    write_latency: float = 0.5
    """Pipelined mode: a save that is not slow (see ``sync_delay_rate``)
    still takes a random time in ``[0, this]`` ticks to reach the disk, during
    which the core goes on. It is not a fault: it stays in the liveness phase."""
    crash_rate: float = 0.01
    """Per tick: probability that one live peer crashes (losing un-synced saves)."""
    min_downtime: float = 2.0
    max_downtime: float = 40.0
    max_down: int | None = None
    """Most members down at once; ``None`` means a minority of the voters:
    a voter crashes only while fewer than half of the voters of the
    configuration in force (and of the latest committed one) would be down
    (``(voters - 1) // 2``); learners crash freely."""
    transfer_rate: float = 0.01
    """Per tick: probability that the leader is asked to hand leadership over
    (``Raft.transfer_leadership``, to a random voter or the most up-to-date one)."""

    # -- membership changes -----------------------------------------------------------------
    membership_rate: float = 0.02
    """Per tick: probability that the leader is asked to make one random
    membership change (``Raft.propose_membership``): add a non-member as a
    learner, promote a learner (usually once it caught up, sometimes early),
    remove a voter (the leader itself too), demote a voter, remove a
    learner, or now and then an unsafe change the core must refuse."""
    spare_peers: int = 2
    """Peers that start outside the cluster (empty storage, not bootstrapped),
    named after the founding ones (``s4``, ``s5`` for a 3-peer cluster); the
    membership changes add them."""
    promote_lag: int = 4
    """A learner counts as caught up (``Raft.caught_up``) at most this many
    entries behind the leader."""
    remove_leader_from_two: bool = True
    """Whether a random change may remove (or demote) the leader of a
    configuration with two voters: the hardest case, since if that leader is
    deposed before the change commits, the other voter needs its vote and
    it must campaign though its own latest configuration leaves it out.
    With it off, such a change removes the other voter instead."""

    # -- snapshots and log compaction -------------------------------------------------------
    snapshots: bool | None = None
    """Whether peers take snapshots and compact their logs. ``None`` draws it
    per seed (on with probability ``snapshot_probability``)."""
    snapshot_probability: float = 0.5
    snapshot_entries_min: int = 20
    snapshot_entries_max: int = 50
    """A peer snapshots once it applied this many entries since its last
    snapshot (drawn per seed in ``[min, max]``)."""
    snapshot_keep: int | None = None
    """Entries kept behind a snapshot (``Config.snapshot_keep_entries``);
    ``None`` draws it per seed: 0 half of the time, else 1-10."""
    extra_snapshot_rate: float = 0.02
    """Per Ready with committed entries: probability of an extra snapshot now."""
    max_snapshot_write: float = 3.0
    """A snapshot file becomes durable a random time in ``[0, this]`` ticks
    after it was captured (a crash before that loses it)."""
    max_compact_delay: float = 1.0
    """After the file is durable, the core hears of it (``snapshot_taken``)
    and storage is compacted a random time in ``[0, this]`` ticks later."""
    min_transfer_ticks: float = 0.5
    max_transfer_ticks: float = 6.0
    """Streaming a snapshot to a follower takes a random time in this range."""
    transfer_fail_rate: float = 0.1
    """Probability that a snapshot transfer breaks off midway (a fault)."""
    done_on_receipt: bool = True
    """When the leader hears that a transfer succeeded (``report_snapshot(dst,
    True)``): ``True``, as soon as the follower has stored the data and handed
    the message to its core, which is what raftlib's runtime does
    (``SnapshotDone`` right after ``deliver``), so a follower may still crash
    before recording it; ``False``, once the follower has recorded the
    snapshot in storage (or found it needs none)."""
    step_snapshot_mid_ready: bool = True
    """Step a received InstallSnapshot into a core whose Ready is still in
    progress (its save buffered), as the simulator does with every other
    message (the core's contract allows it). ``False``: it waits until that
    Ready is done, as in raftlib's runtime, whose driver steps messages only
    between Readies."""
    snapshot_crash_rate: float = 0.05
    """At each snapshot crash point (see docs/simulation.md), probability
    that the peer crashes right there (a fault; within ``max_down``)."""
    max_snapshot_sends: int = 3
    """No install loop: once the network has healed and the faults stopped,
    a leader may send one follower at most this many snapshots in its term."""

    # -- clients ---------------------------------------------------------------------------
    clients: int = 3
    write_rate: float = 0.3
    """Per client per tick: probability that it submits a write."""
    read_rate: float = 0.1
    """Per client per tick: probability that it asks for a linearizable read
    (``Raft.read_index``); the read point must cover every write acknowledged
    before the read was asked."""
    max_retries: int = 2
    """Extra attempts of a write after a NotLeader, within the same tick."""
    client_timeout: float = 20.0
    """A client that got no acknowledgement for this many ticks while it has
    writes outstanding tries another peer."""
    liveness_write_ticks: int = 0
    """Clients keep writing for this many ticks after the faults stopped,
    before the cluster must converge (leaders keep compacting meanwhile)."""

    # -- checking and tracing ------------------------------------------------------------------
    full_check_ticks: int = 10
    """Every this many ticks, run the O(log length) checks (pairwise Log
    Matching and full Leader Append-Only snapshots)."""
    trace_tail: int = 50
    """How many recent events an :class:`InvariantViolation` carries."""
    hash_trace: bool = False
    """Format every event and hash the whole trace (``Simulator.trace_digest``);
    slower, used by the determinism test and ``--seed`` replays."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = [_TYPES[t.strip()] for t in str(f.type).split("|")]
            if isinstance(value, bool) and bool not in allowed or not isinstance(value, tuple(allowed)):
                raise ValueError(f"SimConfig.{f.name} must be {f.type}, got {value!r}")
        for name in ("drop_rate", "duplicate_rate", "partition_rate", "oneway_fraction", "leader_isolation_rate",
                     "sync_delay_rate", "crash_rate", "write_rate", "read_rate", "transfer_rate", "membership_rate",
                     "snapshot_probability", "extra_snapshot_rate", "transfer_fail_rate", "snapshot_crash_rate",
                     "pipeline_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SimConfig.{name} must be a probability in [0, 1], got {value!r}")
        if not 0 < self.min_delay <= self.max_delay:
            raise ValueError("SimConfig needs 0 < min_delay <= max_delay")
        if not 0 < self.min_downtime <= self.max_downtime:
            raise ValueError("SimConfig needs 0 < min_downtime <= max_downtime")
        if not 0 < self.min_partition_ticks <= self.max_partition_ticks:
            raise ValueError("SimConfig needs 0 < min_partition_ticks <= max_partition_ticks")
        if self.write_latency < 0:
            raise ValueError("SimConfig.write_latency must be >= 0")
        if self.max_sync_delay < 0 or self.ticks < 0 or self.clients < 0 or self.full_check_ticks < 1:
            raise ValueError("SimConfig: ticks, clients, max_sync_delay must be >= 0, full_check_ticks >= 1")
        if not 1 <= self.snapshot_entries_min <= self.snapshot_entries_max:
            raise ValueError("SimConfig needs 1 <= snapshot_entries_min <= snapshot_entries_max")
        if self.snapshot_keep is not None and self.snapshot_keep < 0:
            raise ValueError("SimConfig.snapshot_keep must be >= 0 (or None)")
        if not 0 < self.min_transfer_ticks <= self.max_transfer_ticks:
            raise ValueError("SimConfig needs 0 < min_transfer_ticks <= max_transfer_ticks")
        if self.max_snapshot_write < 0 or self.max_compact_delay < 0 or self.liveness_write_ticks < 0:
            raise ValueError("SimConfig: max_snapshot_write, max_compact_delay, liveness_write_ticks must be >= 0")
        if self.max_snapshot_sends < 1:
            raise ValueError("SimConfig.max_snapshot_sends must be >= 1")
        if self.spare_peers < 0 or self.promote_lag < 0:
            raise ValueError("SimConfig: spare_peers and promote_lag must be >= 0")
        if self.liveness_ticks is not None and self.liveness_ticks < 0:
            raise ValueError("SimConfig.liveness_ticks must be >= 0 (or None)")
        if self.max_down is not None and self.max_down < 0:
            raise ValueError("SimConfig.max_down must be >= 0 (or None)")
        # The core's own settings: fail here, naming the field, not when a
        # Simulator builds its first core.
        self.raft_config(bool(self.pre_vote), bool(self.check_quorum))

    # -- derived values ------------------------------------------------------------------------

    def liveness_bound(self) -> int:
        """Ticks allowed for convergence after the faults stop.

        The default, ``30 * election_ticks``, covers the worst ordinary case
        with a wide margin: a peer restarted at the heal needs up to
        ``2 * election_ticks`` to time out, pre-vote plus vote take a few
        message delays, split votes cost another randomized timeout each, and
        a follower whose probe was lost waits ``election_ticks`` before being
        probed again. Measured with the defaults (1,600 seeds, membership
        changes included): median 6-8 ticks, worst 112.
        """
        return self.liveness_ticks if self.liveness_ticks is not None else 30 * self.election_ticks

    def raft_config(self, pre_vote: bool, check_quorum: bool) -> Config:
        """The core :class:`~raftlib.config.Config` every simulated peer uses."""
        return Config(
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            max_entries_per_message=self.max_entries_per_message,
            max_inflight=self.max_inflight,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
        ).validate()

    def replace(self, **changes: object) -> SimConfig:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def no_faults(cls, **changes: object) -> SimConfig:
        """A config with every fault off, no automatic snapshots, no
        membership changes and no spare peers (for scripted scenarios);
        ``changes`` on top."""
        base = cls(
            drop_rate=0.0, duplicate_rate=0.0, partition_rate=0.0, leader_isolation_rate=0.0, sync_delay_rate=0.0,
            crash_rate=0.0, transfer_rate=0.0, clients=0, pre_vote=False, check_quorum=False,
            snapshots=False, transfer_fail_rate=0.0, snapshot_crash_rate=0.0, membership_rate=0.0, spare_peers=0,
        )
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]
