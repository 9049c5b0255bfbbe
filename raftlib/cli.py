"""The ``raftlib`` command-line tool."""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from typing import Any

import click

from . import Config, StateMachine, start_peer
from .errors import RaftError


class DemoKV(StateMachine):
    """The README's key-value state machine."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def handle_write(self, command: Any) -> Any:
        op, key, *rest = command
        if op == "set":
            self.data[key] = rest[0]
            return ["ok", key, rest[0]]
        return ["error", "unknown_op"]

    def handle_read(self, query: Any) -> Any:
        _, key = query
        return ["ok", self.data[key]] if key in self.data else ["error", "key_not_found"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raftlib")
def main() -> None:
    """raftlib: replicated state for asyncio services, on Raft."""


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the peers keep their LMDB logs (default: a temporary directory, removed afterwards).")
@click.option("--memory", is_flag=True, help="Keep the logs in memory instead of LMDB.")
@click.option("--writes", type=click.IntRange(1, 1_000_000), default=1000, show_default=True,
              help="How many commands to write before stopping the leader.")
@click.option("--graceful", is_flag=True,
              help="Stop the leader with a leadership transfer instead of abruptly (as if it crashed).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning",
              show_default=True)
def demo(data_dir: str | None, memory: bool, writes: int, graceful: bool, log_level: str) -> None:
    """Run a 3-peer cluster in this process: elect, write, stop the leader,
    watch the re-election, and check that every write survived."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if data_dir is None and not memory:
            with tempfile.TemporaryDirectory(prefix="raftlib-demo-") as tmp:
                ok = asyncio.run(_demo(tmp, memory, writes, graceful))
        else:
            ok = asyncio.run(_demo(data_dir or "", memory, writes, graceful))
    except RaftError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(0 if ok else 1)


async def _demo(data_dir: str, memory: bool, writes: int, graceful: bool) -> bool:
    from storage_adapters import MemoryStorage

    say = click.echo
    names = ["s1", "s2", "s3"]
    peers = {}
    where = "memory" if memory else f"LMDB under {data_dir}"
    say(f"Starting peers {', '.join(names)} on 127.0.0.1 ({where})")
    try:
        for name in names:
            kwargs: dict[str, Any] = {"storage": MemoryStorage()} if memory else {"data_dir": f"{data_dir}/{name}"}
            peers[name] = await start_peer(DemoKV, name=name, address="127.0.0.1:0", config=Config(), **kwargs)
        members = {name: p.address for name, p in peers.items()}
        for name, addr in members.items():
            say(f"  {name} listening on {addr}")
        t0 = time.perf_counter()
        await peers["s1"].set_configuration(members)
        leader_name = await peers["s1"].wait_for_leader(timeout=10)
        leader = peers[leader_name]
        say(f"Leader elected: {leader_name} (term {leader.status()['term']}) after {_ms(t0)}")

        t0 = time.perf_counter()
        results = await asyncio.gather(*(leader.write(["set", f"key{i}", i]) for i in range(writes)))
        elapsed = time.perf_counter() - t0
        how = "held in memory" if memory else "synced to disk"
        say(f"Wrote {len(results)} commands through {leader_name} in {elapsed * 1000:.0f} ms "
            f"({len(results) / elapsed:,.0f} writes/s, each {how} on a majority before it was acknowledged)")
        say(f"  read key0 -> {await leader.read(['get', 'key0'])}")

        if graceful:
            say(f"Stopping the leader {leader_name}; it hands leadership to the most up-to-date follower first")
        else:
            say(f"Stopping the leader {leader_name} abruptly; the others notice after an election timeout")
        t0 = time.perf_counter()
        await leader.stop(transfer_leadership=graceful)
        survivors = {n: p for n, p in peers.items() if n != leader_name}
        new_name = await _new_leader(survivors, leader_name)
        new = peers[new_name]
        say(f"New leader elected: {new_name} (term {new.status()['term']}) after {_ms(t0)}")

        missing = [i for i in range(writes) if await new.read(["get", f"key{i}"]) != ["ok", i]]
        if missing:
            say(f"LOST {len(missing)} writes, e.g. key{missing[0]}")
            return False
        say(f"All {writes} writes are readable from {new_name}")
        say(f"  write after failover -> {await new.write(['set', 'after-failover', True])}")
        say("Demo finished: no committed write was lost.")
        return True
    finally:
        for p in peers.values():
            await p.stop(transfer_leadership=False)


async def _new_leader(survivors: dict[str, Any], old: str) -> str:
    while True:
        for name, p in survivors.items():
            if p.is_leader and p.leader == name:
                return name
        await asyncio.sleep(0.005)


def _ms(t0: float) -> str:
    return f"{(time.perf_counter() - t0) * 1000:.0f} ms"
