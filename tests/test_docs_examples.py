"""The examples of docs/*.md run as written and do what the pages say.

Each test takes a page's blocks in order and runs them against peers on
free loopback ports (in a temporary directory), supplying only what a
fragment leaves to its surroundings: the peers, a state machine, the
values its commands use. test_readme.py covers README.md, the first
example of kv.md and the first three of getting-started.md."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import secrets
import shlex
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

import raftlib
from raftlib.kv import KVClient, KVItem, KVStateMachine
from raftlib.testing import free_port
from storage_adapters import MemoryStorage

from clusterkit import FAST
from docblocks import DOCS, code_blocks, first_iteration_only, run_block


class Store(raftlib.StateMachine):
    """Takes the commands of clients.md: ``{"add": n}`` adds to a counter and
    returns it, ``["set", key, value]`` stores and returns ``value``; reads
    ``"value"`` (the counter) or a key."""

    def __init__(self) -> None:
        self.value = 0
        self.data: dict[str, Any] = {}

    def handle_write(self, command: Any) -> Any:
        if isinstance(command, dict):
            self.value += command["add"]
            return self.value
        _, key, value = command
        self.data[key] = value
        return value

    def handle_read(self, query: Any) -> Any:
        return self.value if query == "value" else self.data.get(query)


@contextlib.asynccontextmanager
async def founded(machine: Any, names: tuple[str, ...] = ("s1", "s2", "s3"),
                  **kwargs: Any) -> AsyncIterator[dict[str, raftlib.Peer]]:
    """Peers on memory storage and free ports, the cluster founded and a leader elected."""
    peers: dict[str, raftlib.Peer] = {}
    try:
        for name in names:
            peers[name] = await raftlib.start_peer(machine, name=name, address=f"127.0.0.1:{free_port()}",
                                                   storage=MemoryStorage(), config=FAST, **kwargs)
        await peers[names[0]].set_configuration({name: peer.address for name, peer in peers.items()})
        await peers[names[0]].wait_for_leader(timeout=10)
        yield peers
    finally:
        for peer in peers.values():
            await peer.stop()


def recorder(printed: list[tuple[Any, ...]]) -> Any:
    """A ``print`` for a block's namespace that keeps what it is given."""
    return lambda *args: printed.append(args)


async def test_clients_md_examples_run() -> None:
    """Reads at each consistency, a thousand submits, a session retry that is
    not applied twice, raftlib.connect and the change feed."""
    reads, submits, sessions, connecting, feed = code_blocks("clients.md")
    async with founded(Store) as peers:
        leader = peers[await peers["s1"].wait_for_leader(timeout=10)]
        follower = next(peer for peer in peers.values() if peer is not leader)
        printed: list[tuple[Any, ...]] = []
        ns: dict[str, Any] = {"raftlib": raftlib, "asyncio": asyncio, "print": recorder(printed),
                              "peer": leader, "any_peer": follower, "query": "value",
                              "command": {"add": 1}, "other": {"add": 10}}
        await run_block(reads, ns)
        await run_block(submits, ns)
        assert ns["results"] == list(range(1000))

        await run_block(sessions, ns)
        assert ns["result"] == 1  # the retry answers as the first attempt did
        assert await leader.read("value") == 11  # {"add": 1} applied once, then {"add": 10}
        await leader.close_session("client-7f3a")
        with pytest.raises(raftlib.errors.SessionExpired):
            await leader.session_write("client-7f3a", 3, {"add": 100}, ack=2)

        connecting = connecting.replace("127.0.0.1:7001", peers["s1"].address)
        await run_block(first_iteration_only(connecting.replace("127.0.0.1:7002", peers["s2"].address)), ns)
        assert ns["result"] == ns["value"] == 12
        assert isinstance(ns["change"], raftlib.Change)

        await run_block(first_iteration_only(feed), ns)
        # The first write this peer applied was the first submit.
        assert printed == [(ns["change"].index, ns["change"].term, ["set", "k0", 0], 0, None)]


async def test_kv_md_compare_and_set_loop_and_watches_run() -> None:
    _, increment, watch, resume = code_blocks("kv.md")
    async with founded(KVStateMachine, ("s1",)) as peers:
        async with await KVClient.connect([peers["s1"].address]) as kv:
            # Three increments racing on one key: each retries until it wins once.
            await asyncio.gather(*(run_block(increment, {"kv": kv}) for _ in range(3)))
            assert await kv.get("hits") == 3

            await kv.create_scope("billing")
            done = asyncio.Event()

            async def writer() -> None:
                # Writes until the block under test has seen one; a key the
                # watch's prefix leaves out comes first each time.
                i = 0
                while not done.is_set():
                    await kv.put(f"other/{i}", i, scope="billing")
                    await kv.put(f"rate/{i}", i, scope="billing")
                    i += 1
                    await asyncio.sleep(0.02)

            printed: list[tuple[Any, ...]] = []
            ns: dict[str, Any] = {"kv": kv, "print": recorder(printed)}
            for block in (watch, resume):
                done.clear()
                writing = asyncio.create_task(writer())
                try:
                    await run_block(first_iteration_only(block), ns)
                finally:
                    done.set()
                    await writing
            [(kind, scope, key, value, version)] = printed
            assert (kind, scope, key, value) == ("put", "billing", key, int(key.removeprefix("rate/")))
            assert key.startswith("rate/") and version > 0
            # The resumed watch starts with the change right after the copy read.
            assert ns["event"].version == ns["revision"] + 1
            assert all(isinstance(item, KVItem) for item in ns["items"].values())


async def test_the_kv_commands_underneath_answer_as_the_tables_say() -> None:
    async with founded(KVStateMachine, ("s1",)) as peers:
        peer = peers["s1"]
        put = await peer.write(["put", "default", "k", 1])
        assert set(put) == {"op", "scope", "key", "changed", "version", "prev_version", "revision"}
        assert (put["changed"], put["version"], put["prev_version"], put["revision"]) == (True, 1, 0, 1)
        failed = await peer.write(["cas", "default", "k", 2, None, 3])
        assert (failed["changed"], failed["version"]) == (False, 1)
        assert (await peer.write(["delete", "default", "nope"]))["version"] == 0
        await peer.write(["create_scope", "s"])
        await peer.write(["put", "s", "a", "x"])
        assert (await peer.write(["delete_scope", "s"]))["deleted"] == 1
        for refused, error in ((["create_scope", "default"], "scope_exists"), (["delete", "s", "a"], "scope_not_found"),
                               (["delete_scope", "default"], "bad_request")):
            answer = await peer.write(refused)
            assert set(answer) == {"op", "error", "message", "changed", "revision"} and answer["error"] == error
            assert answer["changed"] is False
        assert await peer.read(["get", "default", "k"]) == [1, 1]
        assert await peer.read(["get", "default", "nope"]) is None
        assert await peer.read(["list", "default", ""]) == ["k"]
        revision = await peer.read(["revision"])
        assert await peer.read(["items", "default", ""]) == [revision, [["k", 1, 1]]]
        assert await peer.read(["scopes"]) == ["default"]


def on_free_ports(source: str, ports: dict[str, str]) -> str:
    """``source`` with each address of the page (a key of ``ports``) replaced by a free loopback one."""
    for old in re.findall(r"\d+\.\d+\.\d+\.\d+:\d+", source):
        ports.setdefault(old, f"127.0.0.1:{free_port()}")
    for old, new in ports.items():
        source = source.replace(old, new)
    return source


async def test_membership_md_examples_grow_and_shrink_a_cluster(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``join``, ``add_member`` (again, and a learner), ``remove_member`` and ``leave``."""
    joining, adding, shrinking, *_ = code_blocks("membership.md")
    monkeypatch.chdir(tmp_path)
    ports: dict[str, str] = {}
    founders = {name: on_free_ports(f"127.0.0.1:700{i}", ports) for i, name in enumerate(("s1", "s2", "s3"), 1)}
    started: list[raftlib.Peer] = []
    try:
        for name, address in founders.items():
            started.append(await raftlib.start_peer(KVStateMachine, name=name, address=address,
                                                    storage=MemoryStorage(), config=FAST))
        s1, s2, s3 = started
        await s1.set_configuration(founders)
        await s1.wait_for_leader(timeout=10)
        ns: dict[str, Any] = {"raftlib": raftlib, "MyMachine": KVStateMachine}
        await run_block(on_free_ports(joining, ports), ns)
        started.append(ns["peer"])
        assert set(s1.membership.voters) == {"s1", "s2", "s3", "s4"}
        assert (tmp_path / "data" / "s4").is_dir()

        # r1 runs before it is added, as the page says.
        r1 = on_free_ports("127.0.0.1:7101", ports)
        started.append(await raftlib.start_peer(KVStateMachine, name="r1", address=r1, storage=MemoryStorage(),
                                                config=FAST))
        ns["any_member"] = s2
        await run_block(on_free_ports(adding, ports), ns)  # s4 again, as it is: nothing changes
        assert s1.membership.voters["s4"] == ports["127.0.0.1:7004"] and set(s1.membership.learners) == {"r1"}

        ns["any_member"] = s1
        await run_block(shrinking, ns)
        assert set(s1.membership.voters) == {"s1", "s3"} and set(s3.membership.voters) == {"s1", "s3"}
        with pytest.raises(raftlib.errors.PeerStopped):
            await ns["peer"].write(["put", "default", "k", 1])  # left, then stopped
    finally:
        for peer in started:
            await peer.stop()


async def test_membership_md_examples_move_to_a_new_set_and_transfer_leadership() -> None:
    _, _, _, moving, transferring = code_blocks("membership.md")
    ports: dict[str, str] = {}
    moving = on_free_ports(moving, ports)
    newcomers: list[raftlib.Peer] = []
    async with founded(KVStateMachine) as peers:
        try:
            for name in ("s4", "s5", "s6"):
                address = ports[f"10.0.0.{name[1]}:7000"]
                newcomers.append(await raftlib.start_peer(KVStateMachine, name=name, address=address,
                                                          storage=MemoryStorage(), config=FAST))
            ns: dict[str, Any] = {"any_member": peers["s1"]}
            await run_block(moving, ns)
            by_name = dict(zip(("s4", "s5", "s6"), newcomers))
            for peer in newcomers:
                assert set(peer.membership.voters) == {"s4", "s5", "s6"}
            # Two ways to transfer: each is run on the leader of the moment.
            to_any, to_one = [line for line in transferring.splitlines() if line.startswith("new_leader")]
            old = await newcomers[0].wait_for_leader(timeout=10)
            ns["leader"] = by_name[old]
            await run_block(to_any, ns)
            assert ns["new_leader"] != old
            # The page names s3, a member of its own example.
            target = next(name for name in by_name if name != ns["new_leader"])
            ns["leader"] = by_name[ns["new_leader"]]
            await run_block(to_one.replace('to="s3"', f'to="{target}"'), ns)
            assert ns["new_leader"] == target
        finally:
            for peer in newcomers:
                await peer.stop()


async def test_snapshots_md_state_machine_snapshots_and_restores_from_its_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import msgpack

    [machine] = code_blocks("snapshots.md")
    monkeypatch.chdir(tmp_path)
    ns: dict[str, Any] = {"raftlib": raftlib, "msgpack": msgpack, "load_incrementally": msgpack.unpack}
    exec(machine, ns)
    restored_from: list[Any] = []

    class KVStore(ns["KVStore"]):  # type: ignore[misc, valid-type]
        """The page's snapshot side, with the writes and reads it leaves out."""

        def __init__(self) -> None:
            self.data: dict[str, Any] = {}

        def handle_write(self, command: Any) -> Any:
            key, value = command
            self.data[key] = value

        def handle_read(self, query: Any) -> Any:
            return self.data.get(query)

        def restore_from_file(self, file: Any) -> None:
            restored_from.append(file)
            super().restore_from_file(file)

    address = f"127.0.0.1:{free_port()}"
    peer = await raftlib.start_peer(KVStore, name="s1", address=address, data_dir="data", config=FAST)
    try:
        await peer.set_configuration({"s1": address})
        await peer.wait_for_leader(timeout=10)
        for i in range(5):
            await peer.write([f"k{i}", i])
        meta = await peer.snapshot()
        assert isinstance(meta, raftlib.SnapshotMeta) and set(meta.membership.voters) == {"s1"}
    finally:
        await peer.stop()
    name = f"snapshot-{meta.index:020d}-{meta.term:020d}.snap"
    assert [path.name for path in (tmp_path / "data" / "snapshots").iterdir()] == [name]
    peer = await raftlib.start_peer(KVStore, name="s1", address=address, data_dir="data", config=FAST)
    try:
        assert len(restored_from) == 1  # the large-state path, when the machine has it
        await peer.wait_for_leader(timeout=10)
        assert await peer.read("k3") == 3
    finally:
        await peer.stop()


async def test_security_md_examples_secure_a_peer_and_its_client(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Certificates made with the page's ``raftlib certs`` line, then its TLS
    and shared-secret blocks, each split where a cluster must be founded
    before a client can open its session."""
    from click.testing import CliRunner

    from raftlib.cli import main

    monkeypatch.chdir(tmp_path)
    [make] = [line for line in code_blocks("security.md", "sh")[0].splitlines() if line.startswith("raftlib certs")]
    made = CliRunner().invoke(main, shlex.split(make)[1:])
    assert made.exit_code == 0, made.output
    assert "client: --cert certs/client.pem --key certs/client-key.pem --ca certs/ca.pem" in made.output
    for name in ("s1", "s2", "s3", "client"):
        assert (tmp_path / "certs" / f"{name}-key.pem").stat().st_mode & 0o777 == 0o600
    (tmp_path / "secret").write_text(secrets.token_hex(32) + "\n")
    for block in code_blocks("security.md"):
        block = on_free_ports(block, {}).replace("/var/lib/s1", "data").replace("/etc/raftlib/secret", "secret")
        starting, connecting = re.split(r"\n(?=client = )", block)
        ns: dict[str, Any] = {"raftlib": raftlib, "MyStateMachine": KVStateMachine}
        await run_block(starting, ns)
        peer = ns["peer"]
        try:
            await peer.set_configuration({"s1": peer.address})
            await run_block(connecting, ns)
            try:
                assert (await ns["client"].write(["put", "default", "k", 1]))["changed"]
            finally:
                await ns["client"].close()
        finally:
            await peer.stop()


def test_testing_md_examples_check_a_history_and_pick_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    checking, ports = code_blocks("testing.md")
    monkeypatch.chdir(tmp_path)
    printed: list[tuple[Any, ...]] = []
    exec(checking, {"print": recorder(printed)})
    assert printed == [("linearizable",)]
    # The command its last comment gives.
    command = re.search(r"# (python -m raftlib\.testing\.lincheck .*)", checking)
    assert command is not None
    checked = subprocess.run([sys.executable, *shlex.split(command.group(1))[1:]], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0 and checked.stdout.startswith("linearizable"), checked.stdout + checked.stderr
    ns: dict[str, Any] = {}
    exec(ports, ns)
    assert len(set(ns["addresses"].values())) == 3


def test_simulation_md_examples_run_and_the_seed_summary_is_real(capsys: pytest.CaptureFixture[str]) -> None:
    import random

    from raftlib.sim import InvariantViolation, ManyResult, SimConfig, Simulator, SimResult
    from raftlib.sim.__main__ import main as sim_main

    from simulation.mutants import VoteWithoutUpToDateCheck

    from_python, replaying, own_machine = code_blocks("simulation.md")
    # Fewer seeds than the page runs: the blocks, not the seeds, are under test.
    ns: dict[str, Any] = {}
    exec(from_python.replace("range(1000)", "range(3)"), ns)
    assert isinstance(ns["result"], SimResult) and isinstance(ns["summary"], ManyResult)
    assert ns["summary"].violation is None and "3 seeds" in ns["summary"].report()

    # A core that votes without the up-to-date check fails seed 0, so the block's except clause runs.
    printed: list[tuple[Any, ...]] = []
    failing = functools.partial(Simulator, core_factory=VoteWithoutUpToDateCheck)
    ns = {**ns, "Simulator": failing, "seed": 0, "peers": 3, "config": SimConfig(), "print": recorder(printed)}
    exec(replaying, ns)
    [(violation,), (status,), (log,)] = printed
    assert isinstance(violation, InvariantViolation)
    headline, replay, tail = str(violation).splitlines()[:3]
    assert headline.startswith("seed 0: ") and " violated at step " in headline
    assert replay.startswith("replay: run_seed(0, 3, SimConfig(), core_factory=VoteWithoutUpToDateCheck)")
    assert tail == "last 50 events:"
    assert "s2:" in status and all(isinstance(entry, raftlib.Entry) for entry in log)

    exec(own_machine.replace("range(200)", "range(3)"), {"random": random})

    text = (DOCS / "simulation.md").read_text()
    summary = re.search(r"```\n(seed 1234: .*?)```\n\n\(That is `(.*?)`\.\)", text, re.S)
    assert summary is not None
    shown = summary.group(1).splitlines()
    capsys.readouterr()
    assert sim_main(shlex.split(summary.group(2))) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:len(shown) - 1] == shown[:-1]
    digest = shown[-1].removesuffix("...")
    assert lines[len(shown) - 1].startswith(digest), (lines[len(shown) - 1], digest)


def shell_commands(block: str) -> list[tuple[list[str], str]]:
    """Each command of a sh block, its continuation lines joined, with the
    comment that follows it (what it prints); optional ``[--flag ...]`` parts given."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        command, _, comment = line.partition("  #")
        if command.strip() and not command.lstrip().startswith("#"):
            commands.append((shlex.split(re.sub(r"\[(.*?)\]", r"\1", command)), comment.strip()))
    return commands


def test_operations_md_commands_run_against_the_cluster_they_start(tmp_path: Path) -> None:
    """The page's serve command for three members, its client commands, the
    columns of its status table, then a fourth member joining and the
    membership commands."""
    import json
    import subprocess
    import sys

    from click.testing import CliRunner

    from raftlib.cli import main

    text = (DOCS / "operations.md").read_text()
    start, use, members = code_blocks("operations.md", "sh")
    ports: dict[str, str] = {}
    processes: list[subprocess.Popen[bytes]] = []

    def run_serve(args: list[str], name: str) -> None:
        args = [arg.replace("/var/lib/raftlib", str(tmp_path)) for arg in args]
        with open(tmp_path / f"{name}.log", "wb") as log:
            processes.append(subprocess.Popen([sys.executable, "-m", "raftlib", *args[1:]], cwd=DOCS.parent,
                                              stdout=log, stderr=subprocess.STDOUT))

    def cli(args: list[str], env: dict[str, str]) -> Any:
        return CliRunner().invoke(main, args[1:], env=env)

    def members_once(env: dict[str, str], member: dict[str, str]) -> dict[str, dict[str, Any]]:
        """The rows of `raftlib status` once one member leads and each of ``member`` is what it gives."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            shown = cli(["raftlib", "status", "--json"], env)
            if shown.exit_code == 0:
                rows = {row["name"]: row for row in json.loads(shown.output)}
                if ([row["role"] for row in rows.values()].count("leader") == 1
                        and all(name in rows and rows[name]["member"] == want for name, want in member.items())):
                    return rows
            time.sleep(0.1)
        raise AssertionError(f"no leader, or not members as {member}")

    try:
        for i in (1, 2, 3):  # "or three terminals, with different ports"
            own = start.replace("--name s1", f"--name s{i}").replace("--listen 10.0.0.1:", f"--listen 10.0.0.{i}:")
            [(serve, _)] = shell_commands(on_free_ports(own.replace("raftlib/s1", f"raftlib/s{i}"), ports))
            run_serve(serve, f"s{i}")
        [(export, _), *use_commands] = shell_commands(on_free_ports(use, ports))
        env = dict(item.split("=", 1) for item in export[1:])
        members_once(env, {})
        for args, comment in use_commands:
            if "watch" in args:  # runs until Ctrl-C
                continue
            done = cli(args, env)
            assert done.exit_code in (0, 1), (args, done.output)
            output = done.output.strip()
            if comment == "prints the new version":
                assert re.fullmatch(r"version \d+", output), (args, output)
            elif comment.startswith("#"):
                pass
            elif comment.startswith('"'):  # "swapped", or exit status 1 "not swapped"
                assert output == ("swapped" if done.exit_code == 0 else "not swapped"), (args, output)
            elif comment and not comment.startswith("and "):
                assert output == comment, (args, output)
        table = re.search(r"\$ raftlib status .*\n(.*)\n", text)
        assert table is not None
        shown = cli(["raftlib", "status"], env)
        assert shown.output.splitlines()[0].split() == table.group(1).split()

        commands = shell_commands(on_free_ports(members, ports))
        run_serve(commands[0][0], "s4")
        members_once(env, {"s4": "voter"})
        *changes, (set_all, shown) = commands[1:]
        for args, _ in changes:  # s4 again, as a learner; remove s2; transfer to s3
            done = cli(args, env)
            assert done.exit_code == 0, (args, done.output)
        rows = members_once(env, {"s4": "learner", "s2": "not a member"})
        assert rows["s3"]["role"] == "leader"
        assert set_all[:3] == ["raftlib", "members", "set"]
        done = cli(set_all, env)  # s4 a voter again; s2 stays out
        assert done.exit_code == 0 and f"`{done.output.strip()}`" in text, (set_all, done.output)
        rows = members_once(env, {"s1": "voter", "s3": "voter", "s4": "voter", "s2": "not a member"})
        assert rows["s3"]["role"] == "leader"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


COMMAND = re.compile(r"(?:^|`|\$ |# |replay: )((?:raftlib (?:serve|kv|scope|status|members|demo|certs)\b"
                     r"|python -m (?:raftlib\.[\w.]+|benchmarks[\w.]*))[^`\n#]*)", re.M)
"""A command line in a page: in a block, after a prompt or a comment's #, or in inline code."""

TOOLS = {"getting-started.md": ["raftlib"], "operations.md": ["raftlib"], "security.md": ["raftlib"],
         "simulation.md": ["raftlib.sim", "benchmarks.sim_throughput"],
         "testing.md": ["raftlib.testing.jepsen", "raftlib.testing.lincheck", "raftlib"]}
"""The command line tools each page documents: any ``--option`` it names is one of theirs."""


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, words) of every `raftlib ...` and `python -m ...` command the docs show."""
    found = []
    for page in [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = page.read_text().replace("\\\n", " ")
        for match in COMMAND.finditer(text):
            words = match.group(1).replace("[", " ").replace("]", " ").split()
            found.append((page.name, words))
    return found


def click_options(words: list[str]) -> set[str]:
    """The options of the `raftlib` subcommand ``words`` names (all of them for just ``["raftlib"]``)."""
    import click

    from raftlib.cli import main

    def every(command: click.Command) -> set[str]:
        own = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
        if isinstance(command, click.Group):
            return own.union(*(every(sub) for sub in command.commands.values()))
        return own

    command: click.Command = main
    for word in words[1:]:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
    assert len(words) == 1 or not isinstance(command, click.Group), f"`{' '.join(words)}`: no such command"
    return every(command)


def module_options(modules: list[str]) -> dict[str, set[str]]:
    """The options ``python -m module --help`` lists, for each module (run side by side)."""
    import subprocess
    import sys

    helps = {module: subprocess.Popen([sys.executable, "-m", module, "--help"], cwd=DOCS.parent, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for module in modules}
    options = {}
    for module, process in helps.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, (module, err)
        options[module] = set(re.findall(r"(?:^  |, )(--[\w-]+)", out, re.M))
    return options


def test_every_option_a_page_gives_a_command_exists() -> None:
    """Each ``--option`` written in a command line of the docs is one that
    command takes (its subcommand's, for `raftlib`), as its ``--help`` lists;
    and each one a page names in its text is one of the tools that page documents."""
    commands = documented_commands()
    modules = sorted({words[2] for _, words in commands if words[0] == "python" and "<" not in words[2]}
                     - {"raftlib.testing._broken"} | {tool for tools in TOOLS.values() for tool in tools} - {"raftlib"})
    options = module_options(modules)
    options["raftlib"] = click_options(["raftlib"])
    wrong = []
    for page, words in commands:
        if words[0] == "raftlib":
            known = click_options(words)
        elif words[2] in options:
            known = options[words[2]]
        else:
            continue
        wrong += [(page, " ".join(words), word) for word in words if word.startswith("--") and word != "--"
                  and word.split("=")[0] not in known]
    for page, tools in TOOLS.items():
        named = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", (DOCS / page).read_text()))
        wrong += [(page, "", option) for option in sorted(named - set().union(*(options[t] for t in tools)))]
    assert wrong == []
    assert {"raftlib.sim", "raftlib.testing.jepsen", "raftlib.testing.lincheck", "benchmarks"} <= set(modules)


def test_operations_md_lists_the_commands_that_take_json() -> None:
    import click

    from raftlib.cli import main

    text = (DOCS / "operations.md").read_text()
    listed = re.search(r"on the commands that print a result \((.*?)\)", text, re.S)
    assert listed is not None
    named, group = set(), ""
    for words in re.findall(r"`([\w ]+)`", listed.group(1)):
        group = words.split()[0] if " " in words else group  # `kv put`, `get`: the kv commands
        named.add(words if " " in words or words == "status" else f"{group} {words}")

    def taking_json(command: click.Command, path: str) -> set[str]:
        if isinstance(command, click.Group):
            return set().union(*(taking_json(sub, f"{path} {name}".strip()) for name, sub in command.commands.items()))
        return {path} if any("--json" in param.opts for param in command.params) else set()

    assert named == taking_json(main, "")


async def test_operations_md_prometheus_collector_exports_a_peers_metrics() -> None:
    """The page's collector, registered for a running peer, gives Prometheus
    every counter (with _total), gauge and histogram. Needs prometheus_client,
    which raftlib does not depend on."""
    prometheus_client = pytest.importorskip("prometheus_client")
    [block] = code_blocks("operations.md")
    registry = prometheus_client.CollectorRegistry()
    async with founded(Store, names=("s1",)) as peers:
        peer = peers["s1"]
        await peer.write({"add": 1})
        namespace: dict[str, Any] = {"peer": peer}
        # The page registers with the default registry; a test keeps to its own.
        await run_block(block.replace("REGISTRY.register(", "registry.register("),
                        {**namespace, "registry": registry})
        text = prometheus_client.generate_latest(registry).decode()
    metrics = peer.metrics()
    assert f'raftlib_writes_committed_total{{peer="s1"}} {float(metrics["counters"]["writes_committed"])}' in text
    assert 'raftlib_writes_failed_total{kind="overloaded",peer="s1"} 0.0' in text
    assert 'raftlib_is_leader{peer="s1"} 1.0' in text
    assert 'raftlib_save_seconds_bucket{le="+Inf",peer="s1"}' in text
    assert 'raftlib_save_seconds_count{peer="s1"}' in text
    for key in (*metrics["counters"], *metrics["gauges"], *metrics["timings"]):
        assert f"raftlib_{key}" in text, key
