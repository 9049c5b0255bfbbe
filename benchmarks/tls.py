"""Throughput with connections in the clear, authenticated by a shared secret, and over mutual TLS.

    python -m benchmarks.tls [--seconds 3] [--runs 3] [--writes 1000] [--reads 1000] [--client 256]

Three peers in this one process, loopback TCP, LMDB in a temporary
directory, default ``Config``, state machine ``raftlib.cli.DemoKV``. For each
mode (``plain``; ``hmac``: ``secret=`` 32 random bytes; ``tls``: ``tls=``
with certificates from ``make_certificates``, as ``raftlib certs`` makes)
each run starts a fresh cluster and measures three closed loops, each with
0.5 s of warm-up and then ``--seconds`` s that are counted (runs take the
modes in turn, in a rotating order):

- writes ``Peer.write(["set", "k<i % 1000>", <64 bytes>])`` at the leader,
  ``--writes`` outstanding (replication to the followers crosses the
  secured connections);
- linearizable reads ``Peer.read(["get", "k<i>"])`` at the leader, ``--reads``
  outstanding (each batch confirms leadership with a heartbeat round);
- writes through one ``raftlib.connect`` client connected to the leader,
  ``--client`` outstanding (the client's own connection is secured too).

Every peer, the client and the load share one process and so one core for
Python code: TLS's encryption for all three peers is paid on that core,
which makes its cost larger than it is with a process per peer. Besides
operations per second, each figure gives the CPU time the process used per
operation (all threads, LMDB's included), which depends less on what else
the machine is doing. Each figure is the median over ``--runs`` runs.
Prints a table and writes bench-results/tls.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import raftlib
from raftlib.cli import DemoKV
from raftlib.security import make_certificates

RESULTS = Path("bench-results/tls.json")
MODES = ("plain", "hmac", "tls")
WARMUP = 0.5
VALUE = b"v" * 64
FIGURES = (
    ("leader_writes", "writes at the leader"),
    ("leader_reads", "linearizable reads at the leader"),
    ("client_writes", "writes through a client"),
)


async def closed_loop(op: Callable[[int], Awaitable[Any]], concurrency: int, seconds: float) -> tuple[float, float]:
    """Operations per second over ``seconds`` after a warm-up, ``concurrency``
    in flight, and the CPU time this process used per operation meanwhile."""
    loop = asyncio.get_running_loop()
    start = loop.time() + WARMUP
    end = start + seconds
    done = 0
    cpu: list[float] = []

    async def clock() -> None:
        for moment in (start, end):
            await asyncio.sleep(max(0.0, moment - loop.time()))
            cpu.append(time.process_time())

    async def worker(w: int) -> None:
        nonlocal done
        i = w
        while loop.time() < end:
            await op(i)
            if loop.time() >= start:
                done += 1
            i += concurrency

    await asyncio.gather(clock(), *(worker(w) for w in range(concurrency)))
    return done / seconds, (cpu[1] - cpu[0]) / max(1, done)


async def one_run(mode: str, tmp: str, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    names = ("s1", "s2", "s3")
    if mode == "tls":
        certs = make_certificates(os.path.join(tmp, "certs"), [*names, "client"])
        security: dict[str, dict[str, Any]] = {n: {"tls": certs[n]} for n in (*names, "client")}
    elif mode == "hmac":
        secret = secrets.token_bytes(32)
        security = {n: {"secret": secret} for n in (*names, "client")}
    else:
        security = {n: {} for n in (*names, "client")}
    peers: dict[str, raftlib.Peer] = {}
    try:
        for name in names:
            peers[name] = await raftlib.start_peer(DemoKV, name=name, address="127.0.0.1:0",
                                                   data_dir=os.path.join(tmp, name), **security[name])
        await peers["s1"].set_configuration({n: p.address for n, p in peers.items()})
        leader = peers[await peers["s1"].wait_for_leader(timeout=10)]
        await asyncio.gather(*(leader.write(["set", f"k{i}", VALUE]) for i in range(1000)))
        result = {
            "leader_writes": await closed_loop(
                lambda i: leader.write(["set", f"k{i % 1000}", VALUE]), args.writes, args.seconds),
            "leader_reads": await closed_loop(
                lambda i: leader.read(["get", f"k{i % 1000}"]), args.reads, args.seconds),
        }
        client = await raftlib.connect([leader.address], timeout=30, **security["client"])
        try:
            result["client_writes"] = await closed_loop(
                lambda i: client.write(["set", f"c{i % 1000}", VALUE]), args.client, args.seconds)
        finally:
            await client.close()
        return result
    finally:
        for peer in peers.values():
            await peer.stop(transfer_leadership=False)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, tuple[float, float]]]] = {mode: [] for mode in MODES}
    for run in range(args.runs):
        # Interleaved, and in a rotating order, so that neither the machine's
        # drift nor the state the process is left in favours one mode.
        for mode in MODES[run % 3:] + MODES[:run % 3]:
            with tempfile.TemporaryDirectory(prefix=f"raftlib-tls-{mode}-") as tmp:
                runs[mode].append(await one_run(mode, tmp, args))
            print(f"run {run + 1}/{args.runs} {mode}: " + ", ".join(
                f"{k} {rate:,.0f}/s {cpu * 1e6:.0f} us CPU/op" for k, (rate, cpu) in runs[mode][-1].items()),
                file=sys.stderr)
    medians = {mode: {key: [statistics.median(r[key][i] for r in runs[mode]) for i in (0, 1)] for key, _ in FIGURES}
               for mode in MODES}
    return {"setup": vars(args), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}", "runs": runs, "medians": medians}


def table(result: dict[str, Any]) -> str:
    medians = result["medians"]
    lines = ["| operation | | plain | shared secret (HMAC) | mutual TLS |", "|---|---|---:|---:|---:|"]
    for key, what in FIGURES:
        for i, unit in ((0, "ops/s"), (1, "CPU µs/op")):
            plain = medians["plain"][key][i]
            scale = 1 if i == 0 else 1e6
            cells = [f"{plain * scale:,.0f}"] + [
                f"{medians[mode][key][i] * scale:,.0f} ({medians[mode][key][i] / plain - 1:+.0%})"
                for mode in ("hmac", "tls")
            ]
            lines.append(f"| {what if i == 0 else ''} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="counted seconds per figure")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--writes", type=int, default=1000, help="outstanding writes at the leader")
    parser.add_argument("--reads", type=int, default=1000, help="outstanding linearizable reads at the leader")
    parser.add_argument("--client", type=int, default=256, help="outstanding writes through the client")
    arguments = parser.parse_args()
    outcome = asyncio.run(main(arguments))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(outcome, indent=2) + "\n")
    print(f"3 peers in one process, loopback TCP, LMDB; {outcome['machine']}; median of {arguments.runs} runs")
    print(table(outcome))
