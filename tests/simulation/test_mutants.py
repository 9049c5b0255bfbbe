"""Deliberately broken cores must be caught within a bounded number of seeds.

Each case names the SimConfig that makes its bug likely to show:

* counting replicas of an earlier-term entry (Figure 8) needs leaders that
  win, append and are cut off before replicating, three times in the right
  order: every new leader is isolated within 4 ticks for 15-80 ticks, one
  entry per AppendEntries (so that a follower acknowledges the old entries
  before the new leader's no-op), no check_quorum (a cut-off leader keeps
  leading), few writes and long runs (many leadership changes per seed);
* acknowledging before persisting needs crashes that land while a save sits
  in the write buffer: slow disks and frequent crashes with short downtimes;
* answering reads without confirming leadership needs a deposed leader that
  does not know it (no check_quorum, leaders cut off), clients that still
  read from it, and clients that moved on and write to the new leader;
* keeping the log suffix after a snapshot whose last entry does not match
  needs a follower holding uncommitted entries past a leader's snapshot
  index: deposed leaders that keep accepting writes while cut off (no
  check_quorum, leaders isolated, patient clients) and leaders that snapshot
  every few entries and keep nothing behind;
* acknowledging a snapshot before it is installed needs followers that
  crash between the InstallSnapshot and its recording in storage: frequent
  snapshots and a high ``snapshot_crash_rate``;
* the other two show up under the default fuzzing faults.

For every case the real core must pass the same seeds with the same config,
so a catch is the mutant's fault and not the configuration's.
"""

from __future__ import annotations

import pytest

from raftlib.core.raft import Raft
from raftlib.sim import SimConfig, run_many

from .mutants import (
    AckBeforePersist,
    AckSnapshotBeforeInstall,
    CommitEarlierTermByCounting,
    KeepSuffixAfterSnapshot,
    NoConflictTruncation,
    ReadWithoutLeadershipCheck,
    VoteWithoutUpToDateCheck,
)

SEED_BUDGET = 200
"""A mutant must be caught within this many seeds (it usually takes a handful)."""

FIGURE8_HUNT = SimConfig(
    ticks=1200,
    max_entries_per_message=1,
    leader_isolation_rate=1.0,
    max_leader_isolation_delay=4.0,
    min_partition_ticks=15.0,
    max_partition_ticks=80.0,
    partition_rate=0.03,
    oneway_fraction=0.7,
    drop_rate=0.0,
    max_delay=1.0,
    crash_rate=0.02,
    min_downtime=1.0,
    max_downtime=5.0,
    write_rate=0.1,
    pre_vote=True,
    check_quorum=False,
)

CRASHY_DISKS = SimConfig(
    sync_delay_rate=0.9,
    max_sync_delay=5.0,
    crash_rate=0.1,
    min_downtime=1.0,
    max_downtime=10.0,
)

STALE_LEADERS = SimConfig(
    check_quorum=False,
    read_rate=0.5,
    partition_rate=0.1,
    leader_isolation_rate=0.5,
    client_timeout=8.0,
)

DIVERGED_FOLLOWERS = SimConfig(
    snapshots=True,
    snapshot_entries_min=4,
    snapshot_entries_max=10,
    snapshot_keep=0,
    check_quorum=False,
    leader_isolation_rate=0.5,
    write_rate=0.5,
    client_timeout=30.0,
)

CRASHY_INSTALLS = SimConfig(
    snapshots=True,
    snapshot_entries_min=4,
    snapshot_entries_max=10,
    snapshot_crash_rate=0.3,
    crash_rate=0.03,
    min_downtime=1.0,
    max_downtime=10.0,
)

SAFETY = {
    "election-safety", "leader-append-only", "log-matching", "leader-completeness",
    "state-machine-safety", "commit-monotonic", "applied-monotonic", "durability", "ack-durability", "core-error",
    "commit-quorum",
}

CASES = [
    ("commit-earlier-term", CommitEarlierTermByCounting, FIGURE8_HUNT, {"leader-completeness", "state-machine-safety"}),
    ("vote-without-up-to-date-check", VoteWithoutUpToDateCheck, SimConfig(), SAFETY),
    ("ack-before-persist", AckBeforePersist, CRASHY_DISKS, SAFETY | {"liveness"}),
    ("no-conflict-truncation", NoConflictTruncation, SimConfig(), SAFETY | {"liveness"}),
    ("read-without-leadership-check", ReadWithoutLeadershipCheck, STALE_LEADERS, {"linearizable-read"}),
    ("keep-suffix-after-snapshot", KeepSuffixAfterSnapshot, DIVERGED_FOLLOWERS, {"log-matching"}),
    ("ack-snapshot-before-install", AckSnapshotBeforeInstall, CRASHY_INSTALLS, {"ack-durability"}),
]

SNAPSHOT_SEED_BUDGET = 60
"""The snapshot mutants are caught within this many seeds (measured over ten
windows of seeds: at most 27 for the suffix, 9 for the early acknowledgement)."""


@pytest.mark.parametrize("peers", [3, 5])
@pytest.mark.parametrize(("name", "core", "config", "expected"), CASES, ids=[c[0] for c in CASES])
def test_mutant_is_caught(name: str, core: type[Raft], config: SimConfig, expected: set[str], peers: int) -> None:
    budget = SNAPSHOT_SEED_BUDGET if config.snapshots else SEED_BUDGET
    caught = run_many(range(budget), peers, config, core_factory=core)
    violation = caught.violation
    assert violation is not None, f"the {name} mutant survived {budget} seeds with {peers} peers"
    assert violation.invariant in expected, violation.format()
    # The real core passes every seed the mutant was run on, with the same config.
    control = run_many(range(caught.seeds_run), peers, config)
    assert control.violation is None, control.violation.format()
