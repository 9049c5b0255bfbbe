"""The simulator against the real core: many seeds, determinism, reporting, the CLI."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import time
from contextlib import redirect_stdout
from typing import Any

import pytest

from raftlib import StateMachine
from raftlib.core.raft import Raft
from raftlib.sim import InvariantViolation, SimConfig, Simulator, run_many, run_seed
from raftlib.sim.__main__ import main as cli_main

from .mutants import VoteWithoutUpToDateCheck

FAULT_KINDS = (
    "drop", "duplicate", "partition", "bridge", "oneway", "isolate_leader", "crash", "restart", "slow_sync", "transfer",
)

# 500 seeds in all: 300 against 3 peers, 200 against 5, every fault kind on
# (the SimConfig defaults), 300 ticks of faults each plus the liveness phase.
# About half of the seeds take snapshots and compact (``snapshots`` is drawn
# per seed), with crashes at the snapshot crash points and failing transfers;
# most change the membership a few times (tests/simulation/test_membership.py).
CHUNKS = [(3, 0), (3, 100), (3, 200), (5, 0), (5, 100)]


@pytest.mark.parametrize(("peers", "first"), CHUNKS, ids=[f"{p}peers-seeds{s}-{s + 99}" for p, s in CHUNKS])
def test_random_seeds_hold_every_invariant(peers: int, first: int) -> None:
    result = run_many(range(first, first + 100), peers)
    assert result.violation is None, result.violation.format()
    assert result.seeds_run == 100
    for kind in FAULT_KINDS:
        assert result.faults[kind] > 0, f"no {kind} fault was injected"
    assert result.writes_acked > 1000
    assert 30 <= result.seeds_with_snapshots <= 70
    st = result.snapshot_stats
    assert st["taken"] > 300 and st["sent"] > 50 and st["installed"] > 10 and st["restored"] > 30, dict(st)
    assert sum(v for k, v in result.faults.items() if k.startswith("crash@")) > 20
    assert result.seeds_with_changes > 80 and result.membership_stats["leaders_removed"] > 10


HOSTILE = {
    "slow-disks": (3, SimConfig(sync_delay_rate=0.5, max_sync_delay=30.0)),
    "everyone-crashes": (5, SimConfig(crash_rate=0.05, max_down=5, min_downtime=1.0, max_downtime=20.0)),
    "lossy-network": (3, SimConfig(drop_rate=0.3, duplicate_rate=0.3, max_delay=4.0)),
    "leader-churn": (5, SimConfig(ticks=600, max_entries_per_message=1, leader_isolation_rate=1.0,
                                  max_leader_isolation_delay=10.0, partition_rate=0.1, min_partition_ticks=15.0,
                                  write_rate=0.1, pre_vote=False)),
    "stale-leaders": (3, SimConfig(check_quorum=False, read_rate=0.5, transfer_rate=0.05, client_timeout=8.0)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_configurations(name: str) -> None:
    peers, config = HOSTILE[name]
    result = run_many(range(1000, 1080), peers, config)
    assert result.violation is None, result.violation.format()


def test_seven_peers_smoke() -> None:
    result = run_many(range(10), 7)
    assert result.violation is None, result.violation.format()


def test_same_seed_same_trace() -> None:
    config = SimConfig(hash_trace=True)
    first = Simulator(4242, 5, config)
    r1 = first.run()
    random.seed(1)  # global randomness must not matter
    second = Simulator(4242, 5, config)
    r2 = second.run()
    assert first.trace_digest() == second.trace_digest()
    assert r1 == r2
    other = Simulator(4243, 5, config)
    other.run()
    assert other.trace_digest() != first.trace_digest()


def test_same_seed_same_trace_across_processes() -> None:
    """String hashing (PYTHONHASHSEED) and the process must not matter either."""
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-m", "raftlib.sim", "--seed", "77", "--peers", "5"],
            env=env, capture_output=True, text=True, check=True, timeout=60,
        ).stdout
        digests.update(line for line in out.splitlines() if "sha256" in line)
    assert len(digests) == 1


def test_no_global_randomness_or_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the simulator must not use global randomness or the wall clock")

    for name in ("random", "randrange", "randint", "choice", "uniform", "shuffle", "sample", "getrandbits"):
        monkeypatch.setattr(random, name, forbidden)
    monkeypatch.setattr(time, "time", forbidden)
    monkeypatch.setattr(time, "monotonic", forbidden)
    result = Simulator(99, 3).run()
    assert result.writes_acked > 0


def test_violation_carries_seed_step_and_trace() -> None:
    with pytest.raises(InvariantViolation) as info:
        run_seed(0, 3, core_factory=VoteWithoutUpToDateCheck)
    v = info.value
    assert v.seed == 0 and v.peers == 3 and v.step > 0 and v.time > 0
    assert v.invariant in {"leader-completeness", "log-matching", "state-machine-safety", "core-error"}
    assert 0 < len(v.trace) <= 50
    text = str(v)
    assert "seed 0" in text and "run_seed(0, 3, SimConfig(), core_factory=VoteWithoutUpToDateCheck)" in text
    assert any("RequestVote" in line or "AppendEntries" in line for line in v.trace)
    # The failure replays exactly.
    with pytest.raises(InvariantViolation) as again:
        run_seed(0, 3, core_factory=VoteWithoutUpToDateCheck)
    assert again.value.step == v.step and again.value.trace == v.trace


class NeverCampaigns(Raft):
    """A core whose followers never time out: nobody is ever elected."""

    def _tick_election(self) -> None:
        pass


def test_liveness_violation_is_reported() -> None:
    config = SimConfig(ticks=20)
    with pytest.raises(InvariantViolation) as info:
        Simulator(1, 3, config, core_factory=NeverCampaigns).run()
    assert info.value.invariant == "liveness"
    assert "did not converge within 300 ticks" in info.value.message


def test_liveness_bound_default() -> None:
    assert SimConfig().liveness_bound() == 300
    assert SimConfig(election_ticks=20, heartbeat_ticks=2).liveness_bound() == 600
    assert SimConfig(liveness_ticks=77).liveness_bound() == 77


def test_convergence_is_well_inside_the_bound() -> None:
    worst = max(run_seed(s, 5).converge_ticks for s in range(40))
    assert worst < SimConfig().liveness_bound() / 2


def test_acknowledged_writes_are_applied_everywhere() -> None:
    sim = Simulator(5, 3)
    sim.run()
    assert sim.acked
    for w in sim.acked:
        assert w.data.startswith(b"c")
        for pid in sim.member_ids():  # every member of the final configuration
            entry = sim.log(pid)[w.index - 1]
            assert (entry.term, entry.data) == (w.term, w.data)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SimConfig(drop_rate=1.5)
    with pytest.raises(ValueError):
        SimConfig(min_delay=2.0, max_delay=1.0)
    quiet = SimConfig.no_faults()
    assert quiet.drop_rate == quiet.crash_rate == quiet.partition_rate == 0.0


# -- user state machines ---------------------------------------------------------------------


class KV(StateMachine):
    def __init__(self) -> None:
        self.data: dict[str, int] = {}

    def handle_write(self, command: Any) -> Any:
        key, delta = command
        if key == "boom":
            raise ValueError("deterministic failure")
        self.data[key] = self.data.get(key, 0) + delta
        return self.data[key]

    def snapshot(self) -> bytes:
        return repr(sorted(self.data.items())).encode()


class AsyncKV(KV):
    async def handle_write(self, command: Any) -> Any:  # type: ignore[override]
        return super().handle_write(command)


def kv_command(rng: random.Random, n: int) -> Any:
    return [rng.choice(["a", "b", "c", "boom"]), rng.randint(-3, 3)]


@pytest.mark.parametrize("machine", [KV, AsyncKV])
def test_user_state_machine_agrees_on_every_peer(machine: type[KV]) -> None:
    result = run_many(range(15), 3, state_machine_factory=machine, command_factory=kv_command)
    assert result.violation is None, result.violation.format()


_instances = 0


class Nondeterministic(KV):
    """Each instance adds its own offset: peers disagree on the results."""

    def __init__(self) -> None:
        global _instances
        super().__init__()
        _instances += 1
        self.offset = _instances

    def handle_write(self, command: Any) -> Any:
        return self.offset


def test_nondeterministic_state_machine_is_caught() -> None:
    with pytest.raises(InvariantViolation) as info:
        run_seed(3, 3, SimConfig(ticks=50), state_machine_factory=Nondeterministic, command_factory=kv_command)
    assert info.value.invariant == "state-machine-determinism"


# -- the command line ------------------------------------------------------------------------


def _cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        rc = cli_main(list(args))
    return rc, out.getvalue()


def test_cli_replays_one_seed() -> None:
    rc, text = _cli("--seed", "1234")
    assert rc == 0
    assert "seed 1234: 3 peers" in text and "trace sha256:" in text and "OK" in text
    assert "  snapshots: " in text
    rc, snap_text = _cli("--seed", "1234", "--set", "snapshots=True")
    assert rc == 0 and "installed" in snap_text and "snapshots: every" in snap_text
    _, text2 = _cli("--seed", "1234")
    digest = [line for line in text.splitlines() if "sha256" in line]
    assert digest == [line for line in text2.splitlines() if "sha256" in line]


def test_cli_runs_many_seeds() -> None:
    rc, text = _cli("--seeds", "5", "--start", "10", "--peers", "5", "--set", "ticks=100")
    assert rc == 0
    assert "ran 5 seeds (5 peers)" in text
    assert "seeds/s" in text and "simulated ticks/s" in text and "faults injected:" in text
    assert "snapshots on in " in text
    assert text.rstrip().splitlines()[-1].startswith("OK: 5 seeds")


def test_cli_exit_code_on_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    import functools

    import raftlib.sim.__main__ as cli
    from raftlib.sim import simulator

    monkeypatch.setattr(cli, "Simulator", functools.partial(Simulator, core_factory=VoteWithoutUpToDateCheck))
    rc, text = _cli("--seed", "0")
    assert rc == 1 and "violated" in text and "last " in text
    real_run_seed = simulator.run_seed
    monkeypatch.setattr(simulator, "run_seed",
                        functools.partial(real_run_seed, core_factory=VoteWithoutUpToDateCheck))
    rc, text = _cli("--seeds", "20")
    assert rc == 1 and "FAIL: seed 0" in text


def test_cli_interrupted_reports_the_seeds_that_completed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C during a sweep prints the summary of the seeds that completed,
    # says where to resume, and exits with 130 (128 + SIGINT).
    from raftlib.sim import simulator

    real_run_seed = simulator.run_seed

    def run_seed(seed: int, *args: Any, **kwargs: Any) -> Any:
        if seed == 13:
            raise KeyboardInterrupt
        return real_run_seed(seed, *args, **kwargs)

    monkeypatch.setattr(simulator, "run_seed", run_seed)
    rc, text = _cli("--seeds", "10", "--start", "10", "--set", "ticks=50")
    assert rc == 130
    assert "ran 3 seeds (3 peers)" in text and "OK: 3 seeds" in text
    assert "interrupted after 3 of 10 seeds" in text and "--start 13 --seeds 7" in text


def test_cli_replay_interrupted_says_how_far_it_got(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C while one seed is replayed: no traceback, how far it got and
    # the peers' state, exit status 130.
    from raftlib.sim.simulator import Simulator

    real_tick = Simulator._tick_peer
    calls = 0

    def tick(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 50:
            raise KeyboardInterrupt
        return real_tick(self, *args, **kwargs)

    monkeypatch.setattr(Simulator, "_tick_peer", tick)
    rc, text = _cli("--seed", "3", "--set", "ticks=60")
    assert rc == 130, text
    assert "seed 3: interrupted at t=" in text and "no invariant was violated until then" in text
    assert "state of the peers:" in text


def test_cli_interrupted_after_a_violation_reports_it_and_exits_with_1(monkeypatch: pytest.MonkeyPatch) -> None:
    # A failed seed outweighs the interruption: exit status 1, and its
    # replay line is printed as in a run that was not interrupted.
    import functools

    import raftlib.sim.__main__ as cli
    from raftlib.sim import simulator

    monkeypatch.setattr(simulator, "run_seed",
                        functools.partial(simulator.run_seed, core_factory=VoteWithoutUpToDateCheck))

    def interrupt(self: Any, n: int = 1) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.ProgressBar, "update", interrupt)  # Ctrl-C in the on_result hook of seed 0
    rc, text = _cli("--seeds", "20", "--progress")
    assert rc == 1
    assert "FAIL: seed 0" in text and "replay: run_seed(0, 3, SimConfig(), core_factory=" in text
    assert "interrupted after 1 of 20 seeds" in text


def test_run_many_into_keeps_the_seeds_that_completed_when_interrupted() -> None:
    from raftlib.sim import ManyResult

    def on_result(seed: int, result: Any) -> None:
        if seed == 2:
            raise KeyboardInterrupt

    summary = ManyResult(peers=3)
    with pytest.raises(KeyboardInterrupt):
        run_many(range(5), 3, SimConfig(ticks=50), on_result=on_result, into=summary)
    assert summary.seeds_run == 3 and summary.first_seed == 0 and summary.ticks > 0 and summary.elapsed > 0
    with pytest.raises(ValueError, match="5 peers"):
        run_many(range(1), 3, into=ManyResult(peers=5))


def test_cli_rejects_bad_settings() -> None:
    with pytest.raises(SystemExit) as info:
        _cli("--seeds", "3", "--set", "no_such_field=1")
    assert info.value.code == 2


@pytest.mark.parametrize("setting", [
    "election_ticks=0",          # rejected by the core's Config
    "heartbeat_ticks=20",        # not below election_ticks
    "pre_vote='yes'",            # not a bool
    "clients='3'",               # a string for a number
    "ticks=1.5",                 # a float for a count
    "liveness_ticks=-3",
    "max_down=-1",
])
def test_cli_rejects_bad_settings_as_a_usage_error(setting: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Exit status 1 means "an invariant was violated"; a bad setting is a
    # usage error (2) with a message naming the setting, not a traceback.
    with pytest.raises(SystemExit) as info:
        _cli("--seed", "1", "--set", setting)
    assert info.value.code == 2
    name = setting.partition("=")[0]
    assert name in capsys.readouterr().err


def test_config_rejects_core_settings_and_types_at_construction() -> None:
    with pytest.raises(ValueError, match="election_ticks"):
        SimConfig(election_ticks=0)
    with pytest.raises(ValueError, match="clients"):
        SimConfig(clients="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="liveness_ticks"):
        SimConfig(liveness_ticks=-1)
    SimConfig(max_delay=2, liveness_ticks=None, pre_vote=True)  # an int for a float, None where allowed


def test_the_replay_command_of_a_cli_run_carries_its_settings() -> None:
    # A violation found with --set must print a command that replays it:
    # without the settings the seed runs differently and may pass.
    rc, text = _cli("--seeds", "3", "--set", "liveness_ticks=5", "--pipeline", "off")
    assert rc == 1
    replay = next(line for line in text.splitlines() if line.startswith("replay: "))
    assert "--set liveness_ticks=5" in replay and "--set pipeline=False" in replay
    args = replay.removeprefix("replay: ").split("  (")[0].split()[3:]   # after "python -m raftlib.sim"
    rc2, text2 = _cli(*args)
    assert rc2 == 1 and text.splitlines()[0] in text2


def test_the_replay_of_a_user_state_machine_names_the_python_call() -> None:
    # The command line cannot run the user's machine: replaying there passes.
    with pytest.raises(InvariantViolation) as info:
        run_seed(3, 3, SimConfig(ticks=50), state_machine_factory=Nondeterministic, command_factory=kv_command)
    text = str(info.value)
    assert "python -m raftlib.sim" not in text
    assert ("run_seed(3, 3, SimConfig(ticks=50), state_machine_factory=Nondeterministic, "
            "command_factory=kv_command)") in text


class Opaque:
    """A result msgpack cannot encode; its repr names its address."""


class ReturnsOpaque(KV):
    def handle_write(self, command: Any) -> Any:
        super().handle_write(command)
        return Opaque()


def test_an_unencodable_result_is_the_error_the_writer_gets_not_nondeterminism() -> None:
    # The runtime answers such a write with the TypeError codec.pack raises,
    # the same on every peer; comparing reprs made each peer's result differ.
    result = run_many(range(5), 3, SimConfig(ticks=50), state_machine_factory=ReturnsOpaque,
                      command_factory=kv_command)
    assert result.violation is None, result.violation.format()


class YieldingKV(KV):
    """An async handler that yields to the event loop once, as cooperative
    code does (``asyncio.sleep(0)`` suspends without waiting for anything)."""

    async def handle_write(self, command: Any) -> Any:  # type: ignore[override]
        import asyncio

        await asyncio.sleep(0)
        return super().handle_write(command)


def test_an_async_handler_that_only_yields_runs_to_completion() -> None:
    result = run_many(range(3), 3, SimConfig(ticks=50), state_machine_factory=YieldingKV,
                      command_factory=kv_command)
    assert result.violation is None, result.violation.format()
    assert result.writes_acked > 0


class SnapshotRaises(KV):
    def snapshot(self) -> bytes:
        raise RuntimeError("disk full")


class SnapshotReturnsText(KV):
    def snapshot(self) -> bytes:
        return "not bytes"  # type: ignore[return-value]


@pytest.mark.parametrize("machine", [SnapshotRaises, SnapshotReturnsText])
def test_a_failing_snapshot_at_the_final_comparison_is_a_violation(machine: type[KV]) -> None:
    # Such a machine cannot restore, so it never snapshots during the run;
    # the comparison after the liveness phase still calls snapshot(). Its
    # failure must be reported with the seed, not escape and end run_many.
    result = run_many(range(2), 3, SimConfig(ticks=30), state_machine_factory=machine, command_factory=kv_command)
    assert result.violation is not None and result.violation.seed == 0
    assert result.violation.invariant == "state-machine-snapshot"
    assert "snapshot()" in result.violation.message


@pytest.mark.parametrize("args", [("--seed", "-1"), ("--seeds", "3", "--start", "-2")])
def test_cli_rejects_negative_seeds(args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    # random.Random(-n) is random.Random(n): seed -1 ran seed 1 again, so
    # "--seeds 10 --start -5" covered fewer distinct runs than it said.
    with pytest.raises(SystemExit) as info:
        _cli(*args)
    assert info.value.code == 2 and "seed" in capsys.readouterr().err
    with pytest.raises(ValueError, match="seed"):
        Simulator(-1, 3)


def test_a_sweep_that_goes_on_after_a_violation_names_every_failed_seed() -> None:
    result = run_many(range(6), 3, SimConfig(ticks=100), stop_on_violation=False, core_factory=VoteWithoutUpToDateCheck)
    failed = []
    for seed in range(6):
        try:
            run_seed(seed, 3, SimConfig(ticks=100), core_factory=VoteWithoutUpToDateCheck)
        except InvariantViolation:
            failed.append(seed)
    assert len(failed) >= 2 and result.seeds_run == 6
    assert result.failed_seeds == failed
    assert result.violation is not None and result.violation.seed == failed[0]
    assert f"{len(failed)} of 6 seeds" in result.verdict()


def test_a_command_factory_without_a_state_machine_is_refused() -> None:
    # Without a machine the clients write b"c<n>"; the user's commands
    # were silently never used.
    with pytest.raises(ValueError, match="state_machine_factory"):
        Simulator(1, 3, command_factory=kv_command)
