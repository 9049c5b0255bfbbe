"""`raftlib serve`, `kv`, `scope`, `status` and `members` against real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner, Result

from raftlib.cli import main

from clusterkit import free_port


class Node:
    def __init__(self, name: str, port: int, data_dir: Path, extra: list[str]) -> None:
        self.name, self.port, self.data_dir, self.extra = name, port, data_dir, extra
        self.address = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "raftlib", "serve", "--name", self.name, "--listen", self.address,
             "--data-dir", str(self.data_dir), "--election-timeout-ms", "200", "--log-level", "warning", *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, Node]]:
    ports = {f"s{i}": free_port() for i in (1, 2, 3)}
    initial = ",".join(f"{n}=127.0.0.1:{p}" for n, p in ports.items())
    started = {n: Node(n, p, tmp_path / n, ["--initial-cluster", initial]) for n, p in ports.items()}
    for node in started.values():
        node.start()
    try:
        yield started
    finally:
        for node in started.values():
            if node.proc is not None and node.proc.poll() is None:
                node.stop(signal.SIGKILL)


@pytest.fixture
def single(tmp_path: Path) -> Iterator[Node]:
    """A one-member cluster: enough for commands that need a leader but no followers."""
    port = free_port()
    node = Node("s1", port, tmp_path / "s1", ["--initial-cluster", f"s1=127.0.0.1:{port}"])
    node.start()
    try:
        yield node
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.stop(signal.SIGKILL)


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def wait_for(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def leader_of(cluster: str) -> str | None:
    out = cli("status", "--cluster", cluster, "--json", "--timeout", "1")
    if out.exit_code != 0:
        return None
    rows = json.loads(out.output)
    leaders = [r["name"] for r in rows if r["role"] == "leader"]
    return leaders[0] if len(leaders) == 1 else None


def test_serve_kv_scope_status_members(nodes: dict[str, Node], tmp_path: Path) -> None:
    cluster = ",".join(n.address for n in nodes.values())
    wait_for(lambda: leader_of(cluster))
    one = nodes["s2"].address  # any member: followers forward

    assert cli("kv", "put", "a", '{"x": 1}', "--cluster", one).output.strip().startswith("version ")
    got = cli("kv", "get", "a", "--cluster", one, "--json")
    assert json.loads(got.output)["value"] == {"x": 1}
    assert cli("kv", "put", "t", "hello", "--cluster", one).exit_code == 0
    assert cli("kv", "get", "t", "--cluster", one).output.strip() == '"hello"'
    missing = cli("kv", "get", "nope", "--cluster", one)
    assert missing.exit_code == 1 and "not found" in missing.output

    assert cli("kv", "cas", "a", '{"x": 1}', "2", "--cluster", one).output.strip() == "swapped"
    lost = cli("kv", "cas", "a", '{"x": 1}', "3", "--cluster", one)
    assert lost.exit_code == 1 and "not swapped" in lost.output
    # With --expected-version, EXPECTED is a placeholder (as in docs/operations.md).
    version = json.loads(cli("kv", "get", "a", "--cluster", one, "--json").output)["version"]
    stale = cli("kv", "cas", "a", "x", "4", "--expected-version", str(version + 100), "--cluster", one)
    assert stale.exit_code == 1 and stale.output.strip() == "not swapped", stale.output
    by_version = cli("kv", "cas", "a", "x", "4", "--expected-version", str(version), "--cluster", one)
    assert by_version.exit_code == 0 and by_version.output.strip() == "swapped", by_version.output
    assert cli("kv", "get", "a", "--cluster", one).output.strip() == "4"
    assert cli("kv", "delete", "a", "--cluster", one).output.strip() == "deleted"

    assert cli("scope", "create", "mod1", "--cluster", one).exit_code == 0
    assert cli("kv", "put", "k1", "1", "--scope", "mod1", "--cluster", one).exit_code == 0
    assert cli("kv", "list", "--scope", "mod1", "--cluster", one).output.split() == ["k1"]
    assert json.loads(cli("scope", "list", "--cluster", one, "--json").output) == ["default", "mod1"]
    refused = cli("kv", "put", "x", "1", "--scope", "nowhere", "--cluster", one)
    assert refused.exit_code == 1 and "ScopeNotFound" in refused.output
    assert cli("scope", "delete", "mod1", "--cluster", one).exit_code == 0

    table = cli("status", "--cluster", one)
    assert table.exit_code == 0
    assert table.output.splitlines()[0].split() == [
        "NAME", "ADDRESS", "ROLE", "MEMBER", "TERM", "COMMIT", "APPLIED", "LAST-CONTACT", "LAG"]
    assert sum("leader" in line for line in table.output.splitlines()) == 1

    old = leader_of(cluster)
    moved = cli("members", "transfer-leader", "--cluster", one)
    assert moved.exit_code == 0, moved.output
    wait_for(lambda: leader_of(cluster) not in (None, old))

    # A fourth member joins with --join, is listed, and is removed again.
    s4 = Node("s4", free_port(), tmp_path / "s4", ["--join", one])
    s4.start()
    try:
        wait_for(lambda: "s4" in cli("status", "--cluster", one).output)
        assert cli("kv", "get", "t", "--cluster", s4.address).output.strip() == '"hello"'
        assert cli("members", "remove", "s4", "--cluster", one).exit_code == 0
        rows = json.loads(cli("status", "--cluster", one, "--json").output)
        assert "s4" not in [r["name"] for r in rows]
        # Every member has the cluster ID fixed when it was founded.
        ids = {r["cluster_id"] for r in rows}
        assert len(ids) == 1 and None not in ids
        asked = json.loads(cli("status", "--cluster", f"{one},{s4.address}", "--json").output)
        assert [r["member"] for r in asked if r["name"] == "s4"] == ["not a member"]
    finally:
        s4.stop()


def test_sigterm_stops_cleanly_and_a_restart_resumes(nodes: dict[str, Node]) -> None:
    cluster = ",".join(n.address for n in nodes.values())
    wait_for(lambda: leader_of(cluster))
    assert cli("kv", "put", "kept", "42", "--cluster", cluster).exit_code == 0
    leader = nodes[leader_of(cluster) or ""]
    code, err = leader.stop(signal.SIGTERM)
    assert code == 0, err
    assert f"{leader.name} stopped" in err
    others = ",".join(n.address for n in nodes.values() if n is not leader)
    wait_for(lambda: leader_of(others))
    leader.start()  # same data dir: resumes
    wait_for(lambda: "unreachable" not in cli("status", "--cluster", cluster).output)
    # It is a member again and has applied everything the others have.
    def caught_up() -> bool:
        rows = {r["name"]: r for r in json.loads(cli("status", "--cluster", cluster, "--json").output)}
        me = rows[leader.name]
        return me["member"] == "voter" and me["applied"] == max(r["applied"] or 0 for r in rows.values())

    wait_for(caught_up)
    assert cli("kv", "get", "kept", "--cluster", leader.address).output.strip() == "42"


def test_cli_usage_errors(tmp_path: Path) -> None:
    assert cli("serve", "--name", "x", "--listen", "127.0.0.1:0").exit_code == 2  # no --data-dir/--memory
    both = cli("serve", "--name", "x", "--listen", "127.0.0.1:0", "--memory", "--initial-cluster", "x=127.0.0.1:1",
               "--join", "127.0.0.1:2")
    assert both.exit_code == 2 and "only one" in both.output
    for listen in ("nonsense", "127.0.0.1:0,127.0.0.1:0"):
        bad_listen = cli("serve", "--name", "x", "--listen", listen, "--memory")
        assert bad_listen.exit_code == 2 and "Invalid value" in bad_listen.output, bad_listen.output
    bad = cli("serve", "--name", "x", "--listen", "127.0.0.1:0", "--memory", "--initial-cluster", "nonsense")
    assert bad.exit_code == 2 and "NAME=ADDRESS" in bad.output
    unreachable = cli("kv", "get", "a", "--cluster", "127.0.0.1:9", "--timeout", "0.5")
    assert unreachable.exit_code == 1 and "Unavailable" in unreachable.output
    assert cli("kv", "get", "a", "--cluster", "no-port").exit_code == 2
    for args in (["--help"], ["kv", "--help"], ["kv", "cas", "--help"], ["scope", "--help"], ["status", "--help"],
                 ["members", "add", "--help"], ["members", "set", "--help"], ["serve", "--help"]):
        assert cli(*args).exit_code == 0
    listed = cli("members", "--help")
    assert listed.exit_code == 0
    assert {"add", "remove", "set", "transfer-leader"} <= {line.split()[0] for line in
                                                            listed.output.split("Commands:")[1].splitlines() if line.strip()}
    assert cli("members", "set", "--cluster", "127.0.0.1:9").exit_code == 2  # no members
    for pairs, why in ((["s1"], "expected NAME=ADDRESS, got 's1'"), (["s1=127.0.0.1:1", "s1=127.0.0.1:2"], "s1 is given twice"),
                       (["s1=nonsense"], "nonsense")):
        refused = cli("members", "set", *pairs, "--cluster", "127.0.0.1:9")
        assert refused.exit_code == 2 and why in refused.output, refused.output
    # A member's unix path is resolved by every other member in its own working directory.
    for args in (["serve", "--name", "x", "--listen", "unix:x.sock", "--memory", "--initial-cluster", "x=unix:x.sock"],
                 ["members", "set", "s1=unix:s1.sock", "--cluster", "127.0.0.1:9"],
                 ["members", "add", "s1", "unix:s1.sock", "--cluster", "127.0.0.1:9"]):
        relative = cli(*args)
        assert relative.exit_code == 2 and "is a relative path" in relative.output, relative.output
    env_cluster = CliRunner().invoke(main, ["kv", "get", "a", "--timeout", "0.3"],
                                     env={**os.environ, "RAFTLIB_CLUSTER": "127.0.0.1:9"})
    assert env_cluster.exit_code == 1


def test_kv_list_takes_the_consistency_of_kv_get(single: Node) -> None:
    from raftlib.cli import kv_get, kv_list

    def option(command: object) -> object:
        [param] = [p for p in command.params if p.name == "consistency"]  # type: ignore[attr-defined]
        return param

    assert option(kv_list).type.choices == option(kv_get).type.choices  # type: ignore[attr-defined]
    assert option(kv_list).default == option(kv_get).default == "linearizable"  # type: ignore[attr-defined]
    wait_for(lambda: leader_of(single.address))
    assert cli("kv", "put", "k1", "1", "--cluster", single.address).exit_code == 0
    for consistency in ("linearizable", "lease", "stale"):
        listed = cli("kv", "list", "--consistency", consistency, "--cluster", single.address)
        assert listed.exit_code == 0, listed.output
        assert listed.output.split() == ["k1"]
    bad = cli("kv", "list", "--consistency", "eventual", "--cluster", single.address)
    assert bad.exit_code == 2 and "linearizable" in bad.output


def test_read_commands_answer_stale_from_a_member_left_without_a_majority(nodes: dict[str, Node]) -> None:
    """Reads need no session, whose opening needs a majority: when the
    others are down, what is left can still be read with --consistency stale."""
    cluster = ",".join(n.address for n in nodes.values())
    wait_for(lambda: leader_of(cluster))
    assert cli("kv", "put", "kept", "42", "--cluster", cluster).exit_code == 0
    left = nodes["s1"].address
    wait_for(lambda: cli("kv", "get", "kept", "--consistency", "stale", "--cluster", left).output.strip() == "42")
    for name in ("s2", "s3"):
        nodes[name].stop(signal.SIGKILL)
    stale = ["--consistency", "stale", "--cluster", left, "--timeout", "2"]
    for args, output in ((["kv", "get", "kept"], "42"), (["kv", "list"], "kept"), (["scope", "list"], "default")):
        result = cli(*args, *stale)
        assert result.exit_code == 0 and result.output.strip() == output, (args, result.output)
    refused = cli("kv", "put", "lost", "1", "--cluster", left, "--timeout", "1")
    assert refused.exit_code == 1 and refused.output.startswith("Error: Unavailable: "), refused.output


def test_values_too_large_for_an_argument_come_from_a_file_or_stdin(single: Node, tmp_path: Path) -> None:
    """The OS limits one argument to about 128 KiB: --value-file (and --new-file
    for cas) reads the value from a file, or from standard input with '-'."""
    wait_for(lambda: leader_of(single.address))
    big = "x" * 300_000
    path = tmp_path / "value.txt"
    path.write_text(big)
    put = cli("kv", "put", "big", "--value-file", str(path), "--cluster", single.address)
    assert put.exit_code == 0, put.output
    assert json.loads(cli("kv", "get", "big", "--cluster", single.address).output) == big
    piped = CliRunner().invoke(main, ["kv", "put", "doc", "--value-file", "-", "--cluster", single.address],
                               input=json.dumps({"items": list(range(30_000))}))
    assert piped.exit_code == 0, piped.output
    got = cli("kv", "get", "doc", "--cluster", single.address)
    assert json.loads(got.output) == {"items": list(range(30_000))}
    path.write_text(big + "y")
    swapped = cli("kv", "cas", "big", big[:10], "--new-file", str(path), "--string", "--cluster", single.address)
    assert swapped.exit_code == 1 and swapped.output.strip() == "not swapped"
    swapped = cli("kv", "cas", "big", "x", "--expected-version", put.output.split()[1], "--new-file", str(path),
                  "--cluster", single.address)
    assert swapped.exit_code == 0, swapped.output
    assert json.loads(cli("kv", "get", "big", "--cluster", single.address).output) == big + "y"
    for args, message in ((["big", "1", "--value-file", str(path)], "not both"), (["big"], "give VALUE or"),
                          (["big", "--value-file", str(tmp_path / "missing")], "cannot read")):
        refused = cli("kv", "put", *args, "--cluster", single.address)
        assert refused.exit_code == 2 and message in refused.output, refused.output
    path.write_bytes(b"\xff")
    refused = cli("kv", "put", "big", "--value-file", str(path), "--cluster", single.address)
    assert refused.exit_code == 2 and "not valid UTF-8" in refused.output


def test_cas_takes_the_expected_value_from_a_file_or_stdin(single: Node, tmp_path: Path) -> None:
    """A large expected value does not fit on the command line either."""
    wait_for(lambda: leader_of(single.address))
    big = "x" * 300_000
    expected = tmp_path / "expected.txt"
    expected.write_text(big)
    new = tmp_path / "new.txt"
    new.write_text(big + "y")
    assert cli("kv", "put", "big", "--value-file", str(expected), "--cluster", single.address).exit_code == 0
    wrong = CliRunner().invoke(main, ["kv", "cas", "big", "--expected-file", "-", "--new-file", str(new),
                                      "--cluster", single.address], input=big + "z")
    assert wrong.exit_code == 1 and wrong.output.strip() == "not swapped", wrong.output
    piped = CliRunner().invoke(main, ["kv", "cas", "big", "--expected-file", "-", "--new-file", str(new),
                                      "--cluster", single.address], input=big)
    assert piped.exit_code == 0 and piped.output.strip() == "swapped", piped.output
    swapped = cli("kv", "cas", "big", "--expected-file", str(new), "[1, 2]", "--cluster", single.address)
    assert swapped.exit_code == 0 and swapped.output.strip() == "swapped", swapped.output
    expected.write_text("[1, 2]\n")
    as_text = cli("kv", "cas", "big", "--expected-file", str(expected), "3", "--string", "--cluster", single.address)
    assert as_text.exit_code == 1, as_text.output  # the text "[1, 2]\n" is not the list [1, 2]
    as_json = cli("kv", "cas", "big", "--expected-file", str(expected), "3", "--cluster", single.address)
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(cli("kv", "get", "big", "--cluster", single.address).output) == 3


def test_kv_watch_all_scopes_prints_the_changes_of_every_scope(single: Node) -> None:
    wait_for(lambda: leader_of(single.address))
    assert cli("scope", "create", "billing", "--cluster", single.address).exit_code == 0
    assert cli("kv", "put", "a", "1", "--cluster", single.address).exit_code == 0
    assert cli("kv", "put", "b", "2", "--scope", "billing", "--cluster", single.address).exit_code == 0
    watched = cli("kv", "watch", "--all-scopes", "--from-revision", "1", "--count", "3", "--cluster", single.address)
    assert watched.exit_code == 0, watched.output
    events = [json.loads(line) for line in watched.output.splitlines()]
    assert [(e["kind"], e["scope"], e["key"]) for e in events] == [
        ("scope_created", "billing", None), ("put", "default", "a"), ("put", "billing", "b")]
    both = cli("kv", "watch", "--all-scopes", "--scope", "billing", "--cluster", single.address)
    assert both.exit_code == 2 and "not both" in both.output


def test_a_watch_whose_output_is_closed_ends_quietly(single: Node) -> None:
    """`raftlib kv watch | head -1` ends as other commands do when their reader
    goes away (click's way: status 1, nothing on stderr), not with an error."""
    wait_for(lambda: leader_of(single.address))
    assert cli("kv", "put", "k", "1", "--cluster", single.address).exit_code == 0
    watch = subprocess.Popen([sys.executable, "-m", "raftlib", "kv", "watch", "--from-revision", "1",
                              "--cluster", single.address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None and '"key": "k"' in watch.stdout.readline()
        watch.stdout.close()  # as `head -1` does once it has its line
        assert cli("kv", "put", "k", "2", "--cluster", single.address).exit_code == 0
        _, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert (watch.returncode, err) == (1, "")


def test_removing_a_non_member_says_nothing_changed(single: Node) -> None:
    wait_for(lambda: leader_of(single.address))
    result = cli("members", "remove", "ghost", "--cluster", single.address)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "ghost is not a member; nothing changed"
    rows = json.loads(cli("status", "--cluster", single.address, "--json").output)
    assert [(r["name"], r["member"]) for r in rows] == [("s1", "voter")]


def test_members_set_moves_a_served_cluster_to_the_members_given(single: Node, tmp_path: Path) -> None:
    """`members set` makes the members given the whole membership in one
    call, through any member: new ones (serving, not members yet) join and
    are promoted, members left out are removed, the leader last. Asking
    again for the members in force says nothing changed."""
    wait_for(lambda: leader_of(single.address))
    new = {name: Node(name, free_port(), tmp_path / name, []) for name in ("s2", "s3")}
    for node in new.values():
        node.start()
    everyone = ",".join([single.address, *(node.address for node in new.values())])
    three = [f"s1={single.address}", *(f"{name}={node.address}" for name, node in new.items())]

    def members() -> dict[str, str]:
        out = cli("status", "--cluster", everyone, "--json", "--timeout", "2")
        return {r["name"]: r["member"] for r in json.loads(out.output)} if out.exit_code == 0 else {}

    try:
        wait_for(lambda: "unreachable" not in cli("status", "--cluster", everyone).output)
        clash = cli("members", "set", f"s1={single.address}", f"s2={single.address}", "--cluster", single.address)
        assert clash.exit_code == 1 and "ConfigError" in clash.output and "same address" in clash.output
        grown = cli("members", "set", *three, "--cluster", single.address, "--timeout", "60")
        assert grown.exit_code == 0, grown.output
        assert grown.output.strip() == "members are now s1, s2, s3"
        assert members() == {"s1": "voter", "s2": "voter", "s3": "voter"}
        again = cli("members", "set", *three, "--cluster", new["s2"].address)  # a follower forwards it
        assert again.exit_code == 0, again.output
        assert again.output.strip() == "s1, s2, s3 are already the members; nothing changed"
        shrunk = cli("members", "set", *three[1:], "--cluster", single.address, "--timeout", "60")
        assert shrunk.exit_code == 0, shrunk.output
        assert shrunk.output.strip() == "members are now s2, s3"
        wait_for(lambda: members() == {"s1": "not a member", "s2": "voter", "s3": "voter"})
        assert cli("kv", "put", "after", "1", "--cluster", new["s3"].address).exit_code == 0
    finally:
        for node in new.values():
            node.stop()


def test_transferring_to_the_member_that_leads_says_nothing_changed(single: Node) -> None:
    """`members transfer-leader --to s3` before maintenance elsewhere: if s3
    already leads, what was asked for holds, as with `members remove` of a
    non-member."""
    wait_for(lambda: leader_of(single.address))
    result = cli("members", "transfer-leader", "--to", "s1", "--cluster", single.address)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "s1 is already the leader; nothing changed"
    assert leader_of(single.address) == "s1"


def test_status_metrics_shows_each_members_counters(single: Node) -> None:
    """`status --metrics`: the member's Peer.metrics(), under each row with
    --json, and as one line per value after the table without."""
    wait_for(lambda: leader_of(single.address))
    assert cli("kv", "put", "a", "1", "--cluster", single.address).exit_code == 0
    shown = cli("status", "--metrics", "--json", "--cluster", single.address)
    assert shown.exit_code == 0, shown.output
    [row] = json.loads(shown.output)
    metrics = row["metrics"]
    assert metrics["name"] == "s1" and metrics["gauges"]["is_leader"] == 1
    assert metrics["counters"]["elections_won"] == 1
    assert metrics["counters"]["writes_committed"] >= 1  # the put (and the scope it made)
    assert metrics["timings"]["save_seconds"]["count"] >= 1

    text = cli("status", "--metrics", "--cluster", single.address)
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert lines[0].split()[0] == "NAME"  # the table first
    assert "s1 metrics:" in lines
    assert re.search(r"^  elections_won +1$", text.output, re.M), text.output
    assert re.search(r"^  writes_failed\.not_leader +0$", text.output, re.M), text.output
    assert re.search(r"^  save_seconds +count=\d+ sum=[\d.]+ s max=[\d.]+ s$", text.output, re.M), text.output
    assert "metrics" not in cli("status", "--json", "--cluster", single.address).output  # only when asked


def test_transfer_leader_waits_within_its_timeout_for_a_leader(tmp_path: Path) -> None:
    """Like every client command, `members transfer-leader` retries within
    --timeout: run during an election (here: before a majority is up), it
    hands over once a leader is elected instead of failing with NotLeader."""
    import threading

    ports = {"s1": free_port(), "s2": free_port()}
    initial = ",".join(f"{n}=127.0.0.1:{p}" for n, p in ports.items())
    s1, s2 = (Node(n, p, tmp_path / n, ["--initial-cluster", initial]) for n, p in ports.items())
    s1.start()
    try:
        results: list[Result] = []
        command = threading.Thread(target=lambda: results.append(
            cli("members", "transfer-leader", "--cluster", s1.address, "--timeout", "30")))
        command.start()
        time.sleep(0.5)  # the command's first attempt finds no leader
        s2.start()
        command.join()
        [result] = results
        assert result.exit_code == 0, result.output
        assert re.fullmatch(r"(leader is now|s[12] is already the leader).*", result.output.strip()), result.output
    finally:
        for node in (s1, s2):
            if node.proc is not None:
                node.stop(signal.SIGKILL)


def test_join_through_unreachable_seeds_says_so_and_gives_up_after_join_timeout(tmp_path: Path) -> None:
    seed = f"127.0.0.1:{free_port()}"  # bound and closed: nothing listens there
    node = Node("s9", free_port(), tmp_path / "s9", ["--join", seed, "--join-timeout", "1"])
    node.start()
    assert node.proc is not None
    try:
        _, err = node.proc.communicate(timeout=60)
    finally:
        if node.proc.poll() is None:
            node.stop(signal.SIGKILL)
    assert node.proc.returncode == 1, err
    assert f"s9 joining the cluster through {seed} (giving up after 1 s)" in err
    warnings = [line for line in err.splitlines() if " WARNING " in line and "could not join through" in line]
    assert warnings and seed in warnings[0], err
    assert "Unavailable" in err.splitlines()[-1]
    assert "Traceback" not in err
    assert cli("serve", "--name", "x", "--listen", "127.0.0.1:0", "--memory",
               "--join-timeout", "5").exit_code == 2  # needs --join


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_joining_stops_cleanly(tmp_path: Path, sig: int) -> None:
    seed = f"127.0.0.1:{free_port()}"  # bound and closed: the join keeps retrying
    node = Node("s9", free_port(), tmp_path / "s9", ["--join", seed, "--join-timeout", "60"])
    node.start()
    assert node.proc is not None and node.proc.stderr is not None
    try:
        first = node.proc.stderr.readline()
        assert first.startswith("s9 joining the cluster through "), first
    finally:
        code, err = node.stop(sig)
    assert code == 0, err
    assert "s9 stopped" in err
    assert "Traceback" not in err and "Aborted" not in err, err


def test_a_restart_with_initial_cluster_keeps_the_members_changed_since(single: Node, tmp_path: Path) -> None:
    wait_for(lambda: leader_of(single.address))
    s2 = Node("s2", free_port(), tmp_path / "s2", ["--join", single.address])
    s2.start()
    both = f"{single.address},{s2.address}"

    def members() -> dict[str, str]:
        out = cli("status", "--cluster", both, "--json", "--timeout", "2")
        return {r["name"]: r["member"] for r in json.loads(out.output)} if out.exit_code == 0 else {}

    try:
        wait_for(lambda: members() == {"s1": "voter", "s2": "voter"})
        code, err = single.stop(signal.SIGTERM)
        assert code == 0, err
        single.start()  # the same command line, --initial-cluster s1=... included
        assert single.proc is not None and single.proc.stderr is not None
        while not (line := single.proc.stderr.readline()).startswith("s1 serving on"):
            assert line, "s1 exited before serving"
        assert cli("kv", "put", "k", "1", "--cluster", both).exit_code == 0
        assert members() == {"s1": "voter", "s2": "voter"}
    finally:
        s2.stop()


def test_a_restart_with_join_says_it_restarts_as_a_member(single: Node, tmp_path: Path) -> None:
    """The same `serve --join` command line again, on the data directory of
    a member: it asks nobody to add it, and says so instead of 'joining'."""
    wait_for(lambda: leader_of(single.address))
    s2 = Node("s2", free_port(), tmp_path / "s2", ["--join", single.address])
    s2.start()
    try:
        assert s2.proc is not None and s2.proc.stderr is not None
        assert s2.proc.stderr.readline().startswith(f"s2 joining the cluster through {single.address}")
        # Serving once the join is done: stopped as a learner not yet promoted,
        # it would rightly ask again to vote.
        while not (line := s2.proc.stderr.readline()).startswith("s2 serving on"):
            assert line, "s2 exited before serving"
        code, err = s2.stop(signal.SIGTERM)
        assert code == 0, err
        s2.start()
        assert s2.proc is not None and s2.proc.stderr is not None
        first = s2.proc.stderr.readline()
        assert first.startswith("s2 restarting as a member of its cluster"), first
        assert s2.proc.stderr.readline().startswith("s2 serving on")
    finally:
        s2.stop()


def test_members_commands_move_on_from_a_member_that_does_not_answer(single: Node) -> None:
    """A paused member still accepts connections; the command must go on to
    the next address of --cluster instead of waiting out --timeout on it."""
    import socket
    import threading

    silent = socket.create_server(("127.0.0.1", 0))
    silent.settimeout(0.1)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                accepted.append(silent.accept()[0])  # takes the connection, never answers
            except OSError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        wait_for(lambda: leader_of(single.address))
        cluster = f"127.0.0.1:{silent.getsockname()[1]},{single.address}"
        result = cli("members", "remove", "ghost", "--cluster", cluster, "--timeout", "20")
        assert result.exit_code == 0, result.output
        assert result.output.strip() == "ghost is not a member; nothing changed"
    finally:
        done.set()
        acceptor.join()
        silent.close()
        for conn in accepted:
            conn.close()



def test_a_watch_leaves_a_member_stopped_with_sigstop(nodes: dict[str, Node]) -> None:
    """A stopped process keeps its connections open and sends nothing: a KV
    watch reading from it waited forever, as if nothing were written. It
    now resumes at another member, missing and repeating nothing."""
    import asyncio

    from raftlib.kv import KVClient

    addresses = [n.address for n in nodes.values()]
    wait_for(lambda: leader_of(",".join(addresses)))
    stopped: list[Node] = []

    async def watch() -> None:
        async with await KVClient.connect(addresses, timeout=60, attempt_timeout=1.0) as kv:
            await kv.put("k", 0)
            async with kv.watch(from_revision=1) as changes:
                assert (await asyncio.wait_for(anext(changes), 20)).value == 0
                assert kv.client._conn is not None
                stopped.append(next(n for n in nodes.values() if n.address == kv.client._conn.address))
                assert stopped[0].proc is not None
                stopped[0].proc.send_signal(signal.SIGSTOP)
                others = [a for a in addresses if a != stopped[0].address]
                async with await KVClient.connect(others, timeout=60) as writer:
                    for i in (1, 2):
                        await writer.put("k", i)
                events = [await asyncio.wait_for(anext(changes), 30) for _ in (1, 2)]
                assert [(e.value, e.prev_version) for e in events] == [(1, 1), (2, events[0].version)]

    try:
        asyncio.run(watch())
    finally:
        for node in stopped:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGCONT)


def test_kv_get_and_watch_over_a_unix_socket_print_values_as_deep_as_the_store_takes() -> None:
    """Through a member listening on a Unix socket, `kv get` and `kv watch`
    print a value nested as deep as the store takes as JSON (not a
    RecursionError), and the socket file goes away with the member."""
    import asyncio
    import shutil
    import tempfile

    from raftlib.kv import KVClient

    directory = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))  # short: socket paths are limited
    address = f"unix:{directory}/s1.sock"
    node = Node("s1", 0, directory / "s1", ["--initial-cluster", f"s1={address}"])
    node.address = address
    deep: object = "leaf"
    for _ in range(1018):
        deep = [deep]
    shown = "[" * 1018 + '"leaf"' + "]" * 1018

    async def put() -> None:
        async with await KVClient.connect([address], timeout=10) as kv:
            await kv.put("deep", deep)

    node.start()
    try:
        wait_for(lambda: leader_of(address))
        asyncio.run(put())
        got = cli("kv", "get", "deep", "--cluster", address)
        assert got.exit_code == 0 and got.output == shown + "\n", got.output[-300:]
        watched = cli("kv", "watch", "--from-revision", "1", "--count", "1", "--cluster", address)
        assert watched.exit_code == 0, watched.output[-300:]
        assert '"key": "deep", "kind": "put"' in watched.output and f'"value": {shown}' in watched.output
        assert node.stop()[0] == 0
        assert not (directory / "s1.sock").exists()
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.stop(signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


def test_status_lists_a_member_once_when_given_its_unix_path_spelled_otherwise() -> None:
    """`status` follows the members' addresses from the one it is given: a
    member reached through another spelling of its path (relative, or with
    './') was listed twice, once under each."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))  # short: socket paths are limited
    address = f"unix:{directory}/s1.sock"
    node = Node("s1", 0, directory / "s1", ["--initial-cluster", f"s1={address}"])
    node.address = address
    node.start()
    try:
        wait_for(lambda: leader_of(address))
        out = cli("status", "--cluster", f"unix:{directory}/./s1.sock", "--json")
        assert out.exit_code == 0, out.output
        assert [(r["name"], r["address"]) for r in json.loads(out.output)] == [("s1", address)]
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.stop(signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


def test_serve_on_a_unix_socket_refuses_a_second_process_and_restarts_after_kill_9() -> None:
    """A second `serve` on the socket path of a running member exits at once
    naming the path, and the member keeps serving; after `kill -9` the same
    command line starts the member again on the files it left behind."""
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))  # short: socket paths are limited
    address = f"unix:{directory}/s1.sock"
    member = Node("s1", 0, directory / "s1", ["--initial-cluster", f"s1={address}"])
    second = Node("s2", 0, directory / "s2", ["--initial-cluster", f"s2={address}"])
    member.address = second.address = address
    try:
        member.start()
        wait_for(lambda: leader_of(address))
        assert cli("kv", "put", "a", "1", "--cluster", address).exit_code == 0
        second.start()
        assert second.proc is not None
        try:
            _, err = second.proc.communicate(timeout=30)  # it ends on its own
        except subprocess.TimeoutExpired:
            raise AssertionError("a second member serves on the same socket path") from None
        assert second.proc.returncode == 1 and "AddressInUse" in err and f"{directory}/s1.sock" in err, err
        assert cli("kv", "get", "a", "--cluster", address).output.strip() == "1"
        member.stop(signal.SIGKILL)
        assert sorted(p.name for p in directory.glob("s1.sock*")) == ["s1.sock", "s1.sock.lock"]
        member.start()
        wait_for(lambda: leader_of(address))
        assert cli("kv", "get", "a", "--cluster", address).output.strip() == "1"
        assert member.stop()[0] == 0
        assert not any(directory.glob("s1.sock*"))
    finally:
        for node in (member, second):
            if node.proc is not None and node.proc.poll() is None:
                node.stop(signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


# Starts ``python -m raftlib`` with its arguments, pausing once at the import
# of one module (argv[1]) until a line comes on stdin: a Ctrl-C sent during
# the pause arrives while the command is starting up.
PAUSE_AT_IMPORT = """
import runpy, sys

AT = sys.argv.pop(1)

class PauseAt:
    def find_spec(self, name, path, target=None):
        if name == AT:
            sys.meta_path.remove(self)
            print("importing", name, file=sys.stderr, flush=True)
            sys.stdin.readline()
        return None

sys.meta_path.insert(0, PauseAt())
runpy.run_module("raftlib", run_name="__main__", alter_sys=True)
"""


def interrupt_while_importing(module: str, *args: str) -> tuple[int, str]:
    """Run ``raftlib *args``, send it SIGINT while it imports ``module``;
    return its exit status and stderr."""
    proc = subprocess.Popen([sys.executable, "-c", PAUSE_AT_IMPORT, module, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        assert proc.stderr.readline() == f"importing {module}\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate("\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


@pytest.mark.parametrize("module", ["raftlib.runtime", "raftlib.kv"])
def test_ctrl_c_while_serve_starts_up_stops_it_cleanly(module: str) -> None:
    """Ctrl-C while the command loads raftlib (raftlib.runtime) or is about
    to start the peer (raftlib.kv) stops it as a later one does."""
    code, err = interrupt_while_importing(module, "serve", "--name", "s1", "--listen", f"127.0.0.1:{free_port()}",
                                          "--memory", "--log-level", "warning")
    assert code == 0, err
    assert "Traceback" not in err and "Aborted" not in err, err
    assert err.splitlines()[-1] == "s1 stopped", err
    assert "serving on" not in err, err  # it stopped before it started serving


def test_ctrl_c_while_another_command_starts_up_aborts_it_without_a_traceback() -> None:
    code, err = interrupt_while_importing("raftlib.runtime", "status", "--cluster", f"127.0.0.1:{free_port()}")
    assert code == 1, err
    assert "Traceback" not in err and err.splitlines()[-1] == "Aborted!", err
