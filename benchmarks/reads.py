"""Read and write throughput at the leader, at a follower and through a client.

    python -m benchmarks.reads [--seconds 3] [--concurrency 64] [--runs 3] [--keys 1000]

Three peers, each in its own process (benchmarks/_read_peer.py), on loopback
TCP with LMDB in a temporary directory, default ``Config``, state machine
``raftlib.cli.DemoKV``. Each run starts a fresh cluster, writes ``--keys``
keys ``["set", "k<i>", i]`` and waits until every peer has applied them.
Then each figure is a closed loop: ``--concurrency`` workers each start a new
operation as soon as the last one returned, for 0.5 s of warm-up and then
``--seconds`` s that are counted.

Through the peer API, the load runs inside the process of the peer named:

- reads ``Peer.read(["get", "k<j>"], consistency=...)`` at the leader, for
  ``"linearizable"``, ``"lease"`` and ``"stale"``;
- reads at a follower: ``"stale"`` (answered by the follower) and
  ``"linearizable"`` and ``"lease"`` (forwarded to the leader);
- writes ``Peer.write(["set", "w<worker>", n])`` at the leader and at a
  follower (forwarded to the leader).

Through a client, the load runs in this process, which holds one
``raftlib.connect([<a follower's address>])`` client shared by all workers:
linearizable, lease and stale reads, and writes (in the client's session).
The client asks the member it reached where the leader is and moves its
connection there, so these operations are served by the leader; the table
says which member the client talked to.

Every worker yields to the event loop after each operation: a stale read,
and a lease read while the lease holds, never suspends, so a loop of them
would otherwise hold the event loop and starve the peer's own tasks. Each
figure is the median over ``--runs`` runs. The table also gives the p50 and
p99 time inside one call, from the run with the median (lower median)
ops/s, and the CPU used over that figure by each peer process, by this
process and by everything else on the machine ("outside"; the figures
depend on it on a small machine). Prints a table and writes
bench-results/reads.json; the peers' logs go to bench-results/reads-logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable

import raftlib
from benchmarks._common import CpuMeter, PeerError, PeerProcess, stop_all, sum_counts, write_json
from benchmarks._read_peer import closed_loop, read_ok, write_ok
from benchmarks.snapshots import log_summary, read_log
from raftlib.testing import free_port

NAMES = ("s1", "s2", "s3")
RESULTS = Path("bench-results/reads.json")
LOGS = Path("bench-results/reads-logs")
WARMUP = 0.5
SETUP = ("3 peers, each in its own process (benchmarks/_read_peer.py), loopback TCP, LMDB, default Config, "
         "raftlib.cli.DemoKV")


@dataclass(frozen=True)
class Figure:
    key: str
    what: str
    via: str
    """``leader`` or ``follower`` (the load runs in that peer's process) or ``client``."""
    kind: str
    consistency: str = "linearizable"


FIGURES = (
    Figure("leader_read_linearizable", 'read, "linearizable"', "leader", "read", "linearizable"),
    Figure("leader_read_lease", 'read, "lease"', "leader", "read", "lease"),
    Figure("leader_read_stale", 'read, "stale"', "leader", "read", "stale"),
    Figure("follower_read_stale", 'read, "stale" (answered by the follower)', "follower", "read", "stale"),
    Figure("follower_read_linearizable", 'read, "linearizable" (forwarded)', "follower", "read", "linearizable"),
    Figure("follower_read_lease", 'read, "lease" (forwarded)', "follower", "read", "lease"),
    Figure("leader_write", "write", "leader", "write"),
    Figure("follower_write", "write (forwarded)", "follower", "write"),
    Figure("client_read_linearizable", 'read, "linearizable"', "client", "read", "linearizable"),
    Figure("client_read_lease", 'read, "lease"', "client", "read", "lease"),
    Figure("client_read_stale", 'read, "stale"', "client", "read", "stale"),
    Figure("client_write", "write (client session)", "client", "write"),
)


def cpu_meter(cluster: Cluster) -> CpuMeter:
    """CPU use of each peer process, of this process (``client``) and of
    everything else on the machine (``outside``), interrupt time left out:
    it is not charged to any process, and loopback traffic would put the
    benchmark's own there."""
    return CpuMeter({**{n: p.pid for n, p in cluster.peers.items()}, "client": os.getpid()}, interrupts=False)


def by_role(pct: dict[str, float | None], roles: dict[str, str]) -> dict[str, float | None]:
    """``pct`` by role: ``roles`` maps a role (leader, follower, other) to a peer's name."""
    return {**{role: pct[name] for role, name in roles.items()}, "client": pct["client"], "outside": pct.get("outside")}


@dataclass
class Cluster:
    root: Path
    log_dir: Path
    peers: dict[str, PeerProcess] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    async def start(self) -> None:
        self.addresses = {name: f"127.0.0.1:{free_port()}" for name in NAMES}
        for name in NAMES:
            address, data_dir = self.addresses[name], self.root / name
            self.peers[name] = await PeerProcess.launch(
                name, address, "benchmarks._read_peer",
                ["--name", name, "--address", address, "--data-dir", str(data_dir)], self.log_dir / f"{name}.log",
                data_dir)
        await asyncio.gather(*(p.wait_ready() for p in self.peers.values()))
        await asyncio.gather(*(p.request("configure", members=self.addresses) for p in self.peers.values()))

    async def leader(self) -> str:
        name: str = (await self.peers[NAMES[0]].request("leader"))["leader"]
        return name

    async def settle(self, leader: str) -> None:
        commit = (await self.peers[leader].request("status"))["commit_index"]
        await asyncio.gather(*(p.request("wait_applied", index=commit) for p in self.peers.values()))

    async def close(self) -> None:
        await stop_all(self.peers.values())


async def client_load(client: raftlib.Client, fig: Figure, args: argparse.Namespace) -> dict[str, Any]:
    queries = [["get", f"k{i}"] for i in range(args.keys)]
    if fig.kind == "read":
        def op(w: int, n: int) -> Awaitable[Any]:
            return client.read(queries[(w * 7919 + n) % args.keys], consistency=fig.consistency)
        check = read_ok
    else:
        def op(w: int, n: int) -> Awaitable[Any]:
            return client.write(["set", f"c{w}", n])
        check = write_ok
    return await closed_loop(op, check, args.concurrency, args.seconds, WARMUP)


async def one_run(args: argparse.Namespace, run_no: int) -> dict[str, Any]:
    log_dir = LOGS / f"run{run_no}"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    result: dict[str, Any] = {"run": run_no, "figures": {}}
    with tempfile.TemporaryDirectory(prefix="raftlib-readbench-") as tmp:
        cluster = Cluster(Path(tmp), log_dir)
        try:
            await cluster.start()
            leader = await cluster.leader()
            follower = next(n for n in NAMES if n != leader)
            t0 = time.perf_counter()
            await cluster.peers[leader].request("preload", timeout=120.0, keys=args.keys)
            await cluster.settle(leader)
            other = next(n for n in NAMES if n not in (leader, follower))
            roles = {"leader": leader, "follower": follower, "third": other}
            result.update(leader=leader, follower=follower, preload_seconds=time.perf_counter() - t0)
            print(f"[run {run_no}] leader {leader}, follower {follower}; {args.keys} keys preloaded", flush=True)
            budget = WARMUP + args.seconds + 60.0
            for fig in FIGURES:
                if fig.via == "client":
                    continue
                target = cluster.peers[leader if fig.via == "leader" else follower]
                cpu = cpu_meter(cluster)
                r = await target.request("load", timeout=budget, kind=fig.kind, consistency=fig.consistency,
                                         forward=True, concurrency=args.concurrency, seconds=args.seconds,
                                         warmup=WARMUP, keys=args.keys)
                r["cpu_percent"] = by_role(cpu.percent(), roles)
                r["served_by"] = follower if fig.key == "follower_read_stale" else leader
                result["figures"][fig.key] = r
                report_line(run_no, fig, r)
            client = await raftlib.connect([cluster.addresses[follower]])
            try:
                first = (await client.status())["name"]
                result["client"] = {"given": [cluster.addresses[follower]], "talking_to_after_connect": first}
                for fig in FIGURES:
                    if fig.via != "client":
                        continue
                    before = await cluster.peers[leader].request("status")
                    cpu = cpu_meter(cluster)
                    r = await asyncio.wait_for(client_load(client, fig, args), budget)
                    r["cpu_percent"] = by_role(cpu.percent(), roles)
                    after = await cluster.peers[leader].request("status")
                    r["before"] = {k: before[k] for k in ("role", "term", "leader")}
                    r["after"] = {k: after[k] for k in ("role", "term", "leader")}
                    r["served_by"] = (await client.status())["name"]
                    result["figures"][fig.key] = r
                    report_line(run_no, fig, r)
                result["client"]["talking_to_at_the_end"] = (await client.status())["name"]
                result["client"]["leader_address"] = client.leader_address
            finally:
                await client.close()
            result["statuses"] = {n: await p.request("status") for n, p in cluster.peers.items()}
        except BaseException:
            for name, peer in cluster.peers.items():
                code = peer.proc.returncode
                if code is not None:
                    tail = read_log(peer.log_path).splitlines()[-5:]
                    print(f"[run {run_no}] peer process {name} exited with code {code}; last lines of "
                          f"{peer.log_path}:", *tail, sep="\n  ", file=sys.stderr)
            raise
        finally:
            await cluster.close()
        result["logs"] = log_summary({n: log_dir / f"{n}.log" for n in NAMES})
    return result


def report_line(run_no: int, fig: Figure, r: dict[str, Any]) -> None:
    lat = r["latency_ms"]
    errors = f", errors {r['errors']}" if r["errors"] else ""
    changed = ""
    if (r["before"]["term"], r["before"]["leader"]) != (r["after"]["term"], r["after"]["leader"]):
        changed = f", LEADER CHANGED: {r['before']} -> {r['after']}"
    print(f"[run {run_no}] {fig.via:<8} {fig.what:<42} {r['ops_per_s']:>9,.0f} ops/s  "
          f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms{errors}{changed}", flush=True)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for fig in FIGURES:
        rs = [run["figures"][fig.key] for run in runs if fig.key in run["figures"]]
        if not rs:
            continue
        rates = [r["ops_per_s"] for r in rs]
        mid = sorted(rs, key=lambda r: r["ops_per_s"])[(len(rs) - 1) // 2]
        errors = sum_counts(r["errors"] for r in rs)
        summary[fig.key] = {
            "what": fig.what, "via": fig.via, "kind": fig.kind, "consistency": fig.consistency,
            "ops_per_s_median": statistics.median(rates), "ops_per_s_runs": rates,
            "latency_ms_of_median_run": mid["latency_ms"], "cpu_percent_of_median_run": mid["cpu_percent"], "served_by": sorted({r["served_by"] for r in rs}),
            "errors": errors,
            "leader_changes": sum((r["before"]["term"], r["before"]["leader"]) != (r["after"]["term"], r["after"]["leader"])
                                  for r in rs),
        }
    return summary


def report(results: dict[str, Any]) -> None:
    p = results["params"]
    print()
    print(f"{SETUP}; {results['machine']['cpus']} cores")
    print(f"{p['concurrency']} concurrent workers per figure, closed loop, {p['seconds']} s counted after "
          f"{WARMUP} s of warm-up, {p['keys']} keys preloaded; median of {p['runs']} runs")
    print("latency: time inside one call, in the run with the median ops/s; CPU: % of one core per process over "
          "that figure (warm-up included); follower: the one the load or the client starts at; client: this "
          "process; outside: every other process on the machine")
    print()
    print("| via | operation | ops/s (median) | ops/s per run | p50 / p99 latency | CPU % leader / follower / "
          "third peer / client / outside |")
    print("|---|---|---:|---|---:|---|")
    labels = {"leader": "`Peer` API at the leader", "follower": "`Peer` API at a follower",
              "client": "`raftlib.connect([follower])`"}
    for key, s in results["summary"].items():
        runs = ", ".join(f"{x:,.0f}" for x in s["ops_per_s_runs"])
        lat = s["latency_ms_of_median_run"]
        cpu = " / ".join("?" if v is None else f"{v:.0f}" for v in s["cpu_percent_of_median_run"].values())
        print(f"| {labels[s['via']]} | {s['what']} | {s['ops_per_s_median']:,.0f} | {runs} "
              f"| {lat['p50']:.2f} / {lat['p99']:.2f} ms | {cpu} |")
    notes = []
    for key, s in results["summary"].items():
        if s["errors"]:
            notes.append(f"{key}: errors {s['errors']}")
        if s["leader_changes"]:
            notes.append(f"{key}: the leader changed during {s['leader_changes']} run(s)")
    for run in results["runs"]:
        c = run.get("client", {})
        if c:
            notes.append(f"run {run['run']}: client given {c['given']} (follower {run['follower']}), talked to "
                         f"{c['talking_to_after_connect']} after connect and {c['talking_to_at_the_end']} at the "
                         f"end (leader {run['leader']})")
        problems = {n: s["problems"] for n, s in run["logs"].items() if s["problems"]}
        if problems:
            notes.append(f"run {run['run']}: warnings/errors in peer logs {problems} (see {LOGS})")
    if notes:
        print()
        for note in notes:
            print(note)
    print(f"\nresults: {RESULTS}")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "reads",
        "command": " ".join(["python -m benchmarks.reads", *sys.argv[1:]]),
        "setup": SETUP,
        "params": {"seconds": args.seconds, "concurrency": args.concurrency, "runs": args.runs, "keys": args.keys,
                   "warmup": WARMUP},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_at_start": os.getloadavg()},
        "runs": [],
    }
    # SIGTERM cancels the run like Ctrl-C does, so the peers and the temporary directory are cleaned up.
    main_task = asyncio.current_task()
    if main_task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    print(f"{SETUP}; client figures from this process", flush=True)
    for run_no in range(1, args.runs + 1):
        results["runs"].append(await one_run(args, run_no))
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    results["summary"] = summarize(results["runs"])
    write_json(RESULTS, results)
    report(results)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds counted per figure and run")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent readers or writers")
    parser.add_argument("--runs", type=int, default=3, help="runs (fresh clusters); each figure is their median")
    parser.add_argument("--keys", type=int, default=1000, help="keys written before the reads")
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        asyncio.run(main(parse_args()))
    except (PeerError, ConnectionError) as exc:
        sys.exit(f"benchmark failed: {type(exc).__name__}: {exc}")
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit("benchmark interrupted")
