"""Log compaction and snapshot installation in the simulator.

Fuzzing with snapshots is in test_sim.py (half of the default seeds take
snapshots) and test_mutants.py (broken snapshot handling is caught); here:
scripted scenarios on a manual simulator, the crash points, the install-loop
check, user state machines that snapshot, and regression tests for core bugs
and a weakness the simulator found.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from raftlib import StateMachine
from raftlib.core.messages import AppendEntries, AppendEntriesResponse, InstallSnapshot, Message
from raftlib.core.progress import ProgressState
from raftlib.core.raft import LEADER, Raft
from raftlib.sim import InvariantViolation, SimConfig, Simulator, run_many
from raftlib.sim.simulator import SNAPSHOT_CRASH_POINTS

from .mutants import IgnoresCompactionLimit

MANUAL = SimConfig.no_faults(snapshot_keep=0)


def elect(sim: Simulator, peer: str) -> None:
    core = sim.core(peer)
    for _ in range(200):
        if core.role == LEADER:
            sim.stabilize()
            return
        sim.tick(peer)
        sim.stabilize()
    raise AssertionError(f"{peer} was not elected:\n{sim.status()}")


def write(sim: Simulator, leader: str, n: int, prefix: bytes = b"w") -> None:
    for k in range(n):
        sim.propose(leader, prefix + b"%d" % k)
        sim.stabilize()


def heartbeat(sim: Simulator, leader: str) -> None:
    sim.tick(leader, sim.config.heartbeat_ticks)


def lagging_s3(config: SimConfig = MANUAL, entries: int = 12) -> Simulator:
    """s1 leads, s3 was cut off while s1 wrote ``entries`` entries and compacted them all.

    s3 stays silent for an election timeout first: until then s1 counts it
    as a follower catching up and keeps the entries it needs."""
    sim = Simulator(1, 3, config, manual=True)
    elect(sim, "s1")
    sim.partition(["s3"], ["s1", "s2"])
    write(sim, "s1", entries)
    for _ in range(sim.config.election_ticks // sim.config.heartbeat_ticks + 1):
        heartbeat(sim, "s1")
        sim.stabilize()
    sim.take_snapshot("s1")
    sim.heal()
    return sim


def catch_up(sim: Simulator, follower: str = "s3", leader: str = "s1") -> None:
    for _ in range(30):
        heartbeat(sim, leader)
        sim.stabilize()
        if sim.peers[follower].applied == sim.core(leader).commit_index:
            return
    raise AssertionError(f"{follower} did not catch up:\n{sim.status()}")


def until_snapshot_in_flight(sim: Simulator, leader: str = "s1") -> InstallSnapshot:
    heartbeat(sim, leader)
    for _ in range(50):
        snaps = sim.messages(lambda m: isinstance(m, InstallSnapshot))
        if snaps:
            assert isinstance(snaps[0], InstallSnapshot)
            return snaps[0]
        if not sim.deliver(lambda m: not isinstance(m, InstallSnapshot)):
            heartbeat(sim, leader)
    raise AssertionError(f"{leader} never sent a snapshot:\n{sim.status()}")


# -- scripted -----------------------------------------------------------------------------------


def test_lagging_follower_installs_the_snapshot_and_catches_up() -> None:
    sim = lagging_s3()
    s1 = sim.core("s1")
    assert s1.snapshot is not None and sim.peers["s1"].disk.first_index() == s1.snapshot.index + 1
    snap = until_snapshot_in_flight(sim)
    assert (snap.index, snap.snapshot_term) == (s1.snapshot.index, s1.snapshot.term)
    sim.stabilize()
    s3 = sim.peers["s3"]
    assert (snap.index, snap.snapshot_term) in s3.snapshots  # stored before it was stepped
    assert s3.disk.load()[1] == s1.snapshot and s3.disk.first_index() == snap.index + 1
    write(sim, "s1", 3, b"after")
    assert s3.applied == sim.peers["s1"].applied == s1.commit_index
    assert sim.log("s3") == sim.log("s1")  # compacted prefixes read as the committed entries
    assert sim.snap_stats["installed"] == 1 and sim.snap_stats["sent"] == 1
    assert s1.progress["s3"].state is ProgressState.REPLICATE
    sim.check()


def test_restart_restores_the_state_from_the_snapshot_store() -> None:
    sim = lagging_s3()
    applied = sim.peers["s1"].applied
    sim.crash("s1")
    sim.restart("s1")
    assert sim.peers["s1"].applied == applied  # not replayed: the log before it is gone
    assert sim.snap_stats["restored"] == 1
    elect(sim, "s1")  # its election already brings s3 up to date, through the snapshot
    catch_up(sim)
    assert sim.snap_stats["installed"] == 1
    write(sim, "s1", 2, b"more")
    assert sim.peers["s3"].applied == sim.core("s1").commit_index
    sim.check()


def test_restart_without_the_snapshot_data_is_a_violation() -> None:
    sim = lagging_s3()
    sim.peers["s1"].snapshots.clear()  # as if the snapshot file had never been synced
    sim.crash("s1")
    with pytest.raises(InvariantViolation) as info:
        sim.restart("s1")
    assert info.value.invariant == "snapshot-durability"
    assert "s1 restarted with its log compacted up to the snapshot" in info.value.message


def test_a_dropped_transfer_is_reported_and_retried() -> None:
    sim = lagging_s3()
    until_snapshot_in_flight(sim)
    assert sim.core("s1").progress["s3"].state is ProgressState.SNAPSHOT
    sim.drop(lambda m: isinstance(m, InstallSnapshot))
    assert sim.core("s1").progress["s3"].state is ProgressState.PROBE  # report_snapshot(s3, False)
    until_snapshot_in_flight(sim)
    sim.stabilize()
    assert sim.snap_stats["failed"] == 1 and sim.snap_stats["installed"] == 1
    assert sim.peers["s3"].applied == sim.core("s1").commit_index


def test_a_crash_before_the_install_is_recorded_fails_the_transfer() -> None:
    """The follower stores the data and steps the message, then crashes
    before its Ready records the snapshot: with ``done_on_receipt=False``
    the leader hears the transfer failed and sends it again."""
    sim = lagging_s3(MANUAL.replace(done_on_receipt=False))
    until_snapshot_in_flight(sim)
    sim.hold_saves("s3")
    sim.deliver(lambda m: isinstance(m, InstallSnapshot))
    s3 = sim.peers["s3"]
    assert s3.pending is not None and s3.pending.snapshot is not None and s3.disk.load()[1] is None
    assert not sim.messages(lambda m: isinstance(m, AppendEntriesResponse) and m.src == "s3")  # no early ack
    sim.crash("s3")
    assert sim.core("s1").progress["s3"].state is ProgressState.PROBE
    sim.hold_saves("s3", False)
    sim.restart("s3")
    assert s3.disk.load()[1] is None and sim.snap_stats["restored"] == 0  # nothing of it was recorded
    catch_up(sim)


def test_snapshot_recorded_but_save_lost_restarts_from_the_snapshot() -> None:
    """Crash point after-install: storage has the snapshot (and the store its
    data), the Ready's hard state and entries never reached the disk."""
    sim = lagging_s3()
    until_snapshot_in_flight(sim)
    sim.hold_saves("s3")
    sim.deliver(lambda m: isinstance(m, InstallSnapshot))
    s3 = sim.peers["s3"]
    rd = s3.pending
    assert rd is not None and rd.snapshot is not None
    sim.flush("s3", snapshot_only=True)
    assert s3.disk.load()[1] == rd.snapshot and s3.pending is rd  # the save is still held
    sim.crash("s3")
    sim.hold_saves("s3", False)
    sim.restart("s3")
    assert s3.applied == rd.snapshot.index and sim.snap_stats["restored"] == 1
    catch_up(sim)
    write(sim, "s1", 2, b"z")
    catch_up(sim)
    sim.check()


def test_manual_simulator_takes_no_snapshots_unless_asked() -> None:
    sim = Simulator(2, 3, SimConfig.no_faults(), manual=True)
    elect(sim, "s1")
    write(sim, "s1", 60)
    assert not sim.snapshots and sim.snap_stats["taken"] == 0
    assert all(p.disk.first_index() == 1 for p in sim.peers.values())


# -- fuzzing: crash points and a snapshot storm ----------------------------------------------------

STORM = SimConfig(
    snapshots=True, snapshot_entries_min=2, snapshot_entries_max=6, transfer_fail_rate=0.3,
    snapshot_crash_rate=0.15, crash_rate=0.02, min_downtime=1.0, max_downtime=15.0,
)


@pytest.mark.parametrize("peers", [3, 5])
def test_snapshot_storm_hits_every_crash_point(peers: int) -> None:
    result = run_many(range(2000, 2060), peers, STORM)
    assert result.violation is None, result.violation.format()
    assert result.seeds_with_snapshots == 60
    for point in SNAPSHOT_CRASH_POINTS:
        assert result.faults[f"crash@{point}"] > 0, f"no crash at {point}"
    st = result.snapshot_stats
    assert st["taken"] > 1000 and st["installed"] > 100 and st["restored"] > 100 and st["lost"] > 0
    assert st["failed: the transfer broke off"] > 0 and st["cancelled"] > 0


# Slow transfers while leaders snapshot every few entries and keep nothing:
# compaction_limit() is what keeps a follower being sent a snapshot from
# needing another one, under every fault.
SLOW_TRANSFERS = SimConfig(
    snapshots=True, snapshot_entries_min=3, snapshot_entries_max=8, snapshot_keep=0, min_transfer_ticks=3.0,
    max_transfer_ticks=25.0, write_rate=0.5,
)


@pytest.mark.parametrize("peers", [3, 5])
def test_slow_transfers_and_aggressive_compaction(peers: int) -> None:
    result = run_many(range(3000, 3060), peers, SLOW_TRANSFERS)
    assert result.violation is None, result.violation.format()
    assert result.snapshot_stats["installed"] > 100


# -- no install loop -------------------------------------------------------------------------------

# Snapshots every 3 entries, slow transfers and clients that keep writing
# after the heal: while a lagging follower receives a snapshot, the leader
# takes several more. Constant delays keep every link FIFO (like the TCP
# connection of the runtime), so a follower that installed a snapshot only
# needs another one if the leader compacted what it needs next.
INSTALL_LOOP = SimConfig.no_faults(
    snapshots=True, snapshot_entries_min=3, snapshot_entries_max=3, snapshot_keep=0, extra_snapshot_rate=0.0,
    clients=3, write_rate=0.8, min_transfer_ticks=15.0, max_transfer_ticks=25.0, liveness_write_ticks=150,
    min_delay=1.0, max_delay=1.0, ticks=0,
)


def cut_off_a_follower_then_converge(seed: int, config: SimConfig, core: type[Raft] = Raft) -> Simulator:
    sim = Simulator(seed, 3, config, core_factory=core)
    sim.run_ticks(30)
    leader = sim.leader()
    assert leader is not None
    follower = next(i for i in sim.ids if i != leader)
    sim.partition([follower], [i for i in sim.ids if i != follower])
    sim.run_ticks(40)
    sim.converge()  # heals; clients write 150 more ticks; at most 3 snapshots per follower and term
    return sim


@pytest.mark.parametrize("seed", range(4))
def test_a_caught_up_follower_needs_one_snapshot(seed: int) -> None:
    sim = cut_off_a_follower_then_converge(seed, INSTALL_LOOP)
    sends = sim._sends_after_heal
    assert sends is not None and max(sends.values()) == 1
    assert sim.snap_stats["installed"] >= 1 and sim.snap_stats["taken"] > 100


@pytest.mark.parametrize(("seed", "config"), [
    (826, SimConfig(membership_rate=0.1, crash_rate=0.03)),
    (296, SimConfig(membership_rate=0.1)),
], ids=["826-churn-crashes", "296-churn"])
def test_no_acknowledgement_before_a_received_snapshot_is_recorded(seed: int, config: SimConfig) -> None:
    """A heartbeat stepped after an InstallSnapshot but before the Ready
    recording it was acknowledged at once, up to the snapshot's index; a
    crash before the install then left a peer that had acknowledged entries
    its disk did not hold (ack-durability, found in a sweep of 3,000 seeds)."""
    Simulator(seed, 3, config).run()


def test_transfers_to_a_peer_that_is_down_are_no_install_loop() -> None:
    """Seed 3113: a learner crashed and was removed while down; the leader
    kept offering it a snapshot for an election timeout after the removal,
    each transfer failing to connect. That is not a follower that installs a
    snapshot and needs another, and is not counted as one."""
    sim = Simulator(3113, 3, SimConfig(membership_rate=0.1, crash_rate=0.03))
    sim.run()
    assert "s5" not in sim.committed_membership().members
    assert sim.snap_stats["failed: no connection"] > sim.config.max_snapshot_sends


def test_compacting_past_the_snapshot_being_sent_is_an_install_loop() -> None:
    for seed in range(4):
        with pytest.raises(InvariantViolation) as info:
            cut_off_a_follower_then_converge(seed, INSTALL_LOOP, IgnoresCompactionLimit)
        assert info.value.invariant == "install-loop"


# -- user state machines ----------------------------------------------------------------------------


class KV(StateMachine):
    def __init__(self) -> None:
        self.data: dict[str, int] = {}

    def handle_write(self, command: Any) -> Any:
        key, delta = command
        self.data[key] = self.data.get(key, 0) + delta
        return self.data[key]

    def snapshot(self) -> bytes:
        return repr(sorted(self.data.items())).encode()

    def restore(self, data: bytes) -> None:
        import ast

        self.data = dict(ast.literal_eval(data.decode()))


def kv_command(rng: random.Random, n: int) -> Any:
    return [rng.choice("abc"), rng.randint(-3, 3)]


SNAPPY = SimConfig(snapshots=True, snapshot_entries_min=5, snapshot_entries_max=15)


@pytest.mark.parametrize("config", [SNAPPY, STORM], ids=["snapshots", "storm"])
def test_user_state_machine_snapshots_and_restores(config: SimConfig) -> None:
    result = run_many(range(15), 3, config, state_machine_factory=KV, command_factory=kv_command)
    assert result.violation is None, result.violation.format()
    assert result.snapshot_stats["installed"] > 0 and result.snapshot_stats["restored"] > 0


class ForgetfulRestore(KV):
    """restore() drops one key: the restored state is not the snapshot's."""

    def restore(self, data: bytes) -> None:
        super().restore(data)
        self.data.pop("a", None)


class IncompleteSnapshot(KV):
    """Counts its writes, but the count is not in the snapshot: a restored
    peer answers differently from the others from then on."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def handle_write(self, command: Any) -> Any:
        self.writes += 1
        return [super().handle_write(command), self.writes]


class NoRestore(KV):
    restore = StateMachine.restore


@pytest.mark.parametrize(
    ("machine", "invariant"),
    [(ForgetfulRestore, "state-machine-snapshot"), (IncompleteSnapshot, "state-machine-determinism")],
)
def test_a_broken_snapshot_or_restore_is_caught(machine: type[KV], invariant: str) -> None:
    result = run_many(range(30), 3, SNAPPY, state_machine_factory=machine, command_factory=kv_command)
    assert result.violation is not None, f"{machine.__name__} survived"
    assert result.violation.invariant == invariant, result.violation.format()


def test_a_machine_without_restore_never_snapshots() -> None:
    sim = Simulator(3, 3, SNAPPY, state_machine_factory=NoRestore, command_factory=kv_command)
    sim.run()
    assert not sim.snapshots and sim.snap_stats["taken"] == 0


# -- once core bugs and a weakness, now regression tests -------------------------------------


def test_follower_crashing_after_the_transfer_succeeded_catches_up() -> None:
    """raftlib's runtime reports success as soon as the follower stored the
    data and handed the message to its core (``done_on_receipt=True``)."""
    sim = lagging_s3(MANUAL.replace(done_on_receipt=True))
    until_snapshot_in_flight(sim)
    sim.hold_saves("s3")
    sim.deliver(lambda m: isinstance(m, InstallSnapshot))  # stored, stepped; success reported
    sim.crash("s3")  # before the Ready that records it
    sim.hold_saves("s3", False)
    sim.restart("s3")
    catch_up(sim)


def test_snapshot_stepped_while_a_ready_is_in_progress() -> None:
    """The simulator steps other messages into a core whose Ready is still
    in progress; with ``step_snapshot_mid_ready=True`` it does so with
    InstallSnapshot too (raftlib's runtime never does: it steps messages only
    between Readies, which is the default here)."""
    sim = Simulator(1, 3, MANUAL.replace(step_snapshot_mid_ready=True), manual=True)
    elect(sim, "s1")
    sim.propose("s1", b"first")
    sim.deliver(lambda m: isinstance(m, AppendEntries))
    sim.deliver(lambda m: isinstance(m, AppendEntriesResponse))  # s1 commits it
    later = sim.messages(lambda m: m.dst == "s3")  # tells s3 so; held back until the end

    def held(m: Message) -> bool:
        return any(m is x for x in later)

    def cut_s3() -> None:  # s3 hears nothing else (but its snapshot)
        sim.deliver(lambda m: m.dst != "s3")
        sim.drop(lambda m: m.dst == "s3" and not held(m) and not isinstance(m, InstallSnapshot))

    cut_s3()
    for k in range(12):
        sim.propose("s1", b"x%d" % k)
        cut_s3()
        cut_s3()
    for _ in range(sim.config.election_ticks):  # s3 silent for an election timeout: its entries may go
        sim.tick("s1")
        cut_s3()
    sim.take_snapshot("s1")
    for _ in range(3 * sim.config.election_ticks):  # s3's appends stall: probe, then the snapshot
        if sim.messages(lambda m: isinstance(m, InstallSnapshot)):
            break
        sim.tick("s1")
        cut_s3()
    assert sim.core("s1").progress["s3"].state is ProgressState.SNAPSHOT
    sim.hold_saves("s3")
    sim.deliver(held)  # s3 learns "first" is committed: its Ready applies it, and is held
    s3 = sim.peers["s3"]
    assert s3.pending is not None and s3.pending.committed_entries
    sim.deliver(lambda m: isinstance(m, InstallSnapshot))  # stepped while that Ready is in progress
    sim.flush("s3")  # advance() of the held Ready: the restore made it stale, harmlessly
    catch_up(sim)


def test_a_caught_up_follower_needs_one_snapshot_even_on_a_reordering_network() -> None:
    """Once a follower installed the snapshot it catches up from the log,
    even when messages are reordered (so its appends get rejected and it is
    probed again) and the leader snapshots every 3 entries keeping only 20:
    the leader keeps what a follower it heard from lately needs next, and
    ignores rejections of messages sent before the snapshot was installed."""
    config = INSTALL_LOOP.replace(min_delay=0.05, max_delay=2.0, snapshot_keep=20)
    for seed in range(10):
        sim = cut_off_a_follower_then_converge(seed, config)
        sends = sim._sends_after_heal
        assert sends is not None and max(sends.values()) == 1, (seed, dict(sends or {}))
        assert sim.snap_stats["installed"] >= 1 and sim.snap_stats["taken"] > 100


_opened: list[Any] = []


class FileSnapshotKV(KV):
    """snapshot() returns a binary file, as the StateMachine docs allow."""

    def snapshot(self) -> Any:
        import io

        f = io.BytesIO(super().snapshot())
        _opened.append(f)
        return f


def test_a_snapshot_file_is_closed_once_read() -> None:
    # StateMachine.snapshot: "raftlib closes a returned file or generator
    # once it is written"; the simulator left every one open.
    _opened.clear()
    result = run_many(range(3), 3, SNAPPY, state_machine_factory=FileSnapshotKV, command_factory=kv_command)
    assert result.violation is None, result.violation.format()
    assert _opened and all(f.closed for f in _opened)
