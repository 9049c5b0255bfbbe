"""The fault test of real processes, short: 3 nodes, every nemesis, and the self-check."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest


def jepsen(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftlib.testing.jepsen", "--nodes", "3", "--clients", "5", "--out", str(out), *args],
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.timeout(300)
def test_a_short_fault_test_with_every_nemesis_is_linearizable(tmp_path: Path) -> None:
    done = jepsen(tmp_path, "--time", "25", "--nemesis", "kill,pause,partition", "--seed", "7")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: linearizable" in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["verdict"] == "linearizable"
    assert summary["operations"] > 500
    kinds = {f["kind"] for f in summary["faults"]}
    assert len(summary["faults"]) >= 3 and kinds <= {"kill", "pause", "partition"}
    ok_writes = summary["by_kind"]["put"]["ok"] + summary["by_kind"]["cas"]["ok"]
    assert ok_writes > 100
    assert (tmp_path / "history.jsonl").read_text().count("\n") == summary["operations"]
    assert (tmp_path / "latency.svg").read_text().startswith("<svg")


@pytest.mark.timeout(300)
def test_the_self_check_reports_stale_reads_as_not_linearizable(tmp_path: Path) -> None:
    done = jepsen(tmp_path, "--time", "10", "--nemesis", "partition,pause", "--seed", "3", "--broken", "stale-reads")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "verdict: not linearizable" in done.stdout
    assert "no linearization exists" in done.stdout  # the explanation names the key and operations


@pytest.mark.timeout(200)
def test_isolating_the_leader_catches_a_leader_that_skips_read_index(tmp_path: Path) -> None:
    # A leader that answered linearizable reads from its own state passed
    # every run: cut off by a partition, CheckQuorum deposes it before the
    # others elect a new leader, so it never answers a read stale. Stopped
    # while cut off, it comes back still leading, behind a new leader.
    import asyncio

    from raftlib.testing.jepsen import JepsenConfig, run

    verdicts = {}
    for broken in ("leader-reads", None):
        # Two clients bound to each node, and three faults: each of 30
        # broken runs (seeds 1 to 10, and this one 20 times) was caught.
        cfg = JepsenConfig(nodes=3, clients=12, time=8, nemesis=("isolate-leader",), seed=4,
                           out=tmp_path / str(broken), broken=broken, op_timeout=1.0,
                           fault_interval=(0.5, 1.0), fault_duration=(1.0, 2.0), recovery=1.0)
        result, summary = asyncio.run(run(cfg))
        assert not summary["crashes"] and not summary["client_errors"], summary
        isolated = [f for f in summary["faults"] if f["detail"].startswith("isolate leader")]
        assert len(isolated) >= 2 and {f["kind"] for f in summary["faults"]} == {"isolate-leader"}
        verdicts[broken] = result.verdict
    assert verdicts == {"leader-reads": "not linearizable", None: "linearizable"}


def test_every_option_says_what_it_does_and_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/testing.md names --nodes, --clients, --keys, --seed and --op-timeout; --help explains them."""
    from raftlib.testing.jepsen import main

    with pytest.raises(SystemExit):
        main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    bare = [line.split()[0] for i, line in enumerate(lines) if line.startswith("  --")
            and len(line.split("  ")) < 3 and not lines[i + 1].startswith(" " * 8)]
    assert bare == []
    # Each default is shown, except where no value is taken.
    text = "\n".join(lines)
    for option, default in (("--nodes", "5"), ("--clients", "10"), ("--seed", "0"), ("--keys", "3"),
                            ("--op-timeout", "2.0"), ("--election-timeout-ms", "200"), ("--time", "60.0")):
        assert re.search(rf"{option} \S+\s+[^-]*?\(default {re.escape(default)}\)", text), option
    # --nemesis said which faults it takes, not that all of them are the
    # default, and what one node runs instead.
    assert re.search(r"--nemesis NEMESIS\s+comma-separated[^()]*\(default: all;\s+with\s+--nodes\s+1,\s+kill,pause\)",
                     text), text


@pytest.mark.timeout(120)
def test_membership_changes_and_leadership_transfers_under_load_are_linearizable(tmp_path: Path) -> None:
    # Members removed (the leader among them), wiped and added back with an
    # empty disk, and leadership handed over again and again, while clients
    # bound to those members keep sending requests.
    import asyncio

    from raftlib.testing.jepsen import JepsenConfig, run

    # Seed 5 draws transfers, a node wiped that joins again, then a node
    # (the leader) removed while down and restarted on its old disk.
    cfg = JepsenConfig(nodes=3, clients=6, time=12, nemesis=("membership", "transfer"), seed=5,
                       out=tmp_path, fault_interval=(0.3, 0.8), fault_duration=(0.5, 1.5), recovery=1.0)
    result, summary = asyncio.run(run(cfg))
    assert result.verdict == "linearizable", result.explain()
    assert not summary["crashes"] and not summary["client_errors"] and not summary["nemesis_errors"], summary
    assert summary["fault_counts"]["membership"] > 0 and summary["fault_counts"]["transfer"] > 0, summary["faults"]
    details = " ".join(f["detail"] for f in summary["faults"])
    assert "wipe" in details and "learned it was out" in details, details
    moved = [f["detail"] for f in summary["faults"] if f["kind"] == "transfer" and f["done"]]
    assert all("->" in detail for detail in moved)
    ok_writes = summary["by_kind"]["put"]["ok"] + summary["by_kind"]["cas"]["ok"]
    assert ok_writes > 50


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    done = jepsen(tmp_path, "--nemesis", "earthquake", "--time", "1")
    assert done.returncode == 2 and "nemesis" in done.stderr


@pytest.mark.parametrize("option, value", [
    ("--op-timeout", "-1"), ("--op-timeout", "0"), ("--op-timeout", "nan"), ("--time", "nan"),
    ("--election-timeout-ms", "5"),
])
def test_bad_timeouts_exit_2_before_anything_runs(tmp_path: Path, option: str, value: str) -> None:
    # A timeout no client or node accepts used to run the test anyway: the
    # clients never connected and the empty history was "linearizable" (exit 0).
    done = jepsen(tmp_path, "--time", "2", option, value)
    assert done.returncode == 2, done.stdout + done.stderr
    assert option.lstrip("-").split("-")[0] in done.stderr and "nodes up" not in done.stdout


def test_an_output_folder_that_cannot_be_made_exits_2(tmp_path: Path) -> None:
    # --out naming a file ended in a FileExistsError traceback.
    (tmp_path / "taken").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "raftlib.testing.jepsen", "--nodes", "3", "--time", "1", "--nemesis", "pause",
         "--out", str(tmp_path / "taken")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--out" in done.stderr and "Traceback" not in done.stderr and "nodes up" not in done.stdout


@pytest.mark.parametrize("nemesis", ["partition", "isolate-leader", "membership", "transfer"])
def test_faults_between_nodes_need_two_nodes(tmp_path: Path, nemesis: str) -> None:
    # With one node, a transfer ended the run in a traceback (no other node
    # to hand leadership to), and a partition cut nothing off yet counted.
    done = jepsen(tmp_path, "--nodes", "1", "--time", "2", "--nemesis", f"pause,{nemesis}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert nemesis in done.stderr and "2 nodes" in done.stderr and "nodes up" not in done.stdout


def test_one_node_without_nemesis_runs_the_faults_one_node_can_have(tmp_path: Path) -> None:
    # The default (all six) needs several nodes: `--nodes 1` alone exited 2.
    done = jepsen(tmp_path, "--nodes", "1", "--clients", "2", "--time", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nemesis kill,pause" in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["nemesis"] == ["kill", "pause"]


_INTERRUPTED_CHECK = """
import os, signal, sys, time
from raftlib.testing import jepsen, lincheck

def interrupted_check(self, **kwargs):
    os.kill(os.getpid(), signal.{signal})
    time.sleep(60)
    raise SystemExit("the signal did not stop the check")

lincheck.History.check = interrupted_check
sys.exit(jepsen.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_an_interrupt_during_the_check_still_writes_the_summary(tmp_path: Path, signum: str) -> None:
    # Ctrl-C or SIGTERM once the nodes were stopped, during the check, left
    # history.jsonl but no summary.json (SIGTERM ended the process at once).
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_CHECK.format(signal=signum), "--nodes", "1", "--clients", "2",
         "--time", "1", "--nemesis", "pause", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "interrupted" in done.stderr and "Traceback" not in done.stderr
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["verdict"] == "not checked (interrupted)" and summary["operations"] == len(lines) > 0
    assert summary["healed_at"] is not None  # the run itself was over
    assert (tmp_path / "latency.svg").exists()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the nodes")
@pytest.mark.timeout(120)
def test_sigterm_stops_every_node_and_removes_their_data(tmp_path: Path) -> None:
    work = tmp_path / "tmp"
    work.mkdir()
    with subprocess.Popen(
        [sys.executable, "-m", "raftlib.testing.jepsen", "--nodes", "3", "--clients", "2", "--time", "60",
         "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(work)},
    ) as harness:
        try:
            assert harness.stdout is not None and harness.stderr is not None
            assert "nodes up" in harness.stdout.readline()
            assert len(_processes_mentioning(str(work))) == 3
            harness.send_signal(signal.SIGTERM)
            assert harness.wait(timeout=60) == 1
            assert "interrupted" in harness.stderr.read()
            assert _processes_mentioning(str(work)) == []
            assert list(work.iterdir()) == []
        finally:
            harness.kill()
            harness.wait()
            for pid in _processes_mentioning(str(work)):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the nodes")
@pytest.mark.timeout(180)
def test_a_node_that_exits_by_itself_fails_the_run(tmp_path: Path) -> None:
    # A node that dies without the nemesis killing it (a crash, a failed
    # restart) is the cluster misbehaving: the run must say so, not restart
    # it quietly at the end and report success.
    work = tmp_path / "tmp"
    work.mkdir()
    out = tmp_path / "out"
    with subprocess.Popen(
        [sys.executable, "-m", "raftlib.testing.jepsen", "--nodes", "3", "--clients", "2", "--time", "4",
         "--nemesis", "pause", "--seed", "1", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(work)},
    ) as harness:
        try:
            assert harness.stdout is not None and harness.stderr is not None
            assert "nodes up" in harness.stdout.readline()
            nodes = _processes_mentioning(str(work / "raftlib-jepsen-"))
            assert len(nodes) == 3
            os.kill(nodes[0], signal.SIGKILL)
            stdout, stderr = harness.communicate(timeout=150)
            assert harness.returncode == 1, stdout + stderr
            assert "exited by itself" in stdout
            summary = json.loads((out / "summary.json").read_text())
            assert len(summary["crashes"]) == 1 and summary["crashes"][0]["status"] == -signal.SIGKILL
            assert _processes_mentioning(str(work)) == []
        finally:
            harness.kill()
            harness.wait()
            for pid in _processes_mentioning(str(work)):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(120)
def test_a_client_that_stops_on_an_unexpected_error_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A client task that ends on anything but the errors an operation may
    # meet (a result of the wrong shape, a bug) stops recording; the run
    # must say so instead of checking what is left and passing.
    from raftlib.kv import KVClient
    from raftlib.testing import jepsen as harness

    async def broken_cas(self: KVClient, *args: object, **kwargs: object) -> bool:
        raise KeyError("changed")

    monkeypatch.setattr(KVClient, "cas", broken_cas)
    status = harness.main(["--nodes", "1", "--clients", "1", "--time", "1", "--nemesis", "pause",
                           "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert status == 1, out
    assert "KeyError" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["client_errors"]) == 1 and "KeyError" in summary["client_errors"][0]


# Loaded into every process of the run through PYTHONPATH: members that are
# not the leader answer linearizable reads from their own state instead of
# forwarding them. The leader is unchanged, so only clients that send reads
# to other members can see it.
_FOLLOWER_READS_MUTANT = '''
import raftlib.runtime as runtime

_forwarded_read = runtime.Peer._forwarded_read


async def broken(self, query, consistency, timeout, hops):
    if not self.is_leader:
        consistency = "stale"
    return await _forwarded_read(self, query, consistency, timeout, hops)


runtime.Peer._forwarded_read = broken
'''


@pytest.mark.timeout(300)
def test_members_serving_reads_without_the_leader_are_caught(tmp_path: Path) -> None:
    # The clients used to follow the leader, so a member that answered
    # reads from its own state was never asked: a cluster with that bug
    # passed the fault test.
    mutant = tmp_path / "mutant"
    mutant.mkdir()
    (mutant / "sitecustomize.py").write_text(_FOLLOWER_READS_MUTANT)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "raftlib.testing.jepsen", "--nodes", "3", "--clients", "4", "--time", "6",
         "--nemesis", "pause", "--seed", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=240,
        # The mutant imports raftlib before -m puts the working directory on
        # the path: name this checkout, so that it is the one under test.
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(mutant), str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])
        )},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "verdict: not linearizable" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients"] == {"0": "leader", "1": "n1", "2": "leader", "3": "n2"}


@pytest.mark.timeout(120)
def test_keep_data_says_where_the_data_directories_are(tmp_path: Path) -> None:
    # --keep-data kept the nodes' directories in a temporary directory whose
    # name the run never printed: there was nothing to find them by.
    work = tmp_path / "tmp"
    work.mkdir()
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "raftlib.testing.jepsen", "--nodes", "3", "--clients", "2", "--time", "1",
         "--nemesis", "pause", "--keep-data", "--out", str(out)],
        capture_output=True, text=True, timeout=100, env={**os.environ, "TMPDIR": str(work)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    kept = json.loads((out / "summary.json").read_text())["data_dir"]
    assert kept in done.stdout
    assert sorted(p.name for p in Path(kept).iterdir()) == ["n1", "n2", "n3"]
    assert Path(kept).parent == work


def _interrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, again_while_stopping: bool
) -> tuple[list[Any], float]:
    """Run the fault test in this process and Ctrl-C it once the clients
    have recorded some operations (and, if ``again_while_stopping``, once
    more as it stops the first node); return the node processes it left
    running, and how long it ran."""
    import asyncio

    from raftlib.testing import jepsen as harness

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    started: list[subprocess.Popen[bytes]] = []
    start_node, kill = harness._start_node, harness._kill

    def recording_start(node: Any, *args: Any, **kwargs: Any) -> None:
        start_node(node, *args, **kwargs)
        started.append(node.proc)

    async def ctrl_c_once_operations_are_recorded(run: Any, *args: Any) -> None:
        while len(run.history) < 20:
            await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    def kill_after_ctrl_c(node: Any) -> None:
        if again_while_stopping and not kill_after_ctrl_c.done:  # type: ignore[attr-defined]
            kill_after_ctrl_c.done = True  # type: ignore[attr-defined]
            os.kill(os.getpid(), signal.SIGINT)
        kill(node)

    kill_after_ctrl_c.done = False  # type: ignore[attr-defined]
    monkeypatch.setattr(harness, "_start_node", recording_start)
    monkeypatch.setattr(harness, "_nemesis", ctrl_c_once_operations_are_recorded)
    monkeypatch.setattr(harness, "_kill", kill_after_ctrl_c)
    began = time.monotonic()
    cfg = harness.JepsenConfig(nodes=3, clients=2, time=60, nemesis=("pause",), out=tmp_path / "out")
    try:
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(harness.run(cfg))
    finally:
        took = time.monotonic() - began
        left = [proc for proc in started if proc.poll() is None]
        for proc in left:
            proc.kill()
            proc.wait()
    return left, took


@pytest.mark.timeout(120)
def test_an_interrupted_run_writes_the_history_it_has(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C stopped the nodes but threw the history away: nothing to look
    # at after a long run that had to be cut short.
    left, took = _interrupted_run(tmp_path, monkeypatch, again_while_stopping=False)
    assert left == []
    lines = (tmp_path / "out" / "history.jsonl").read_text().splitlines()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["verdict"] == "not checked (interrupted)" and summary["operations"] == len(lines) >= 20
    # Times are seconds since the clients started, as the faults' are, so
    # that an operation in an explanation can be set against the faults.
    ops = [json.loads(line) for line in lines]
    assert all(0 <= op["call"] <= (op["ret"] or op["call"]) < took for op in ops)
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.timeout(120)
def test_a_second_ctrl_c_while_the_run_stops_leaves_no_node_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pressed twice, Ctrl-C broke off the stopping half-way: the nodes not
    # stopped yet kept running (in sessions of their own, the terminal's
    # Ctrl-C does not reach them) and their data stayed in the temporary
    # directory, while the run said every node was stopped.
    assert _interrupted_run(tmp_path, monkeypatch, again_while_stopping=True)[0] == []
    assert list((tmp_path / "tmp").iterdir()) == []
