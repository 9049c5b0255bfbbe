"""Snapshots and log compaction: write throughput, log size, memory, catch-up.

    python -m benchmarks.snapshots [--quick] [--writes N] [--lag N]
        [--snapshot-every N] [--keep N] [--outstanding N]

Three peers, each in its own process (benchmarks/_snapshot_peer.py, so
memory is per peer), on loopback TCP with LMDB in a temporary directory.
Two runs, each on a fresh cluster:

- snapshots **off** (``Config.snapshot_entries`` = 10**12): the leader's own
  process writes ``--writes`` small commands ``["set", "k<i mod 10000>", i]``
  with ``--outstanding`` in flight. Reports ops/s, the log entries left on
  disk and each process's peak RSS (``ru_maxrss``).
- snapshots **on** (``snapshot_entries=--snapshot-every``,
  ``snapshot_keep_entries=--keep``): the same, plus a check that each peer's
  log stays within ``snapshot_every + keep + outstanding`` entries. Then
  catch-up: one follower is stopped, the leader writes ``--lag`` commands
  with distinct keys and 100-character values (a state of tens of MB), the
  follower is restarted on its data directory and timed until it has applied
  the leader's commit index. Its status and logs must show it installed a
  streamed snapshot. The VmRSS of leader and follower is sampled every 50 ms
  to compare their memory during the transfer with the snapshot and chunk
  sizes.

Prints a table and writes bench-results/snapshots.json; the peers' logs go
to bench-results/snapshots-logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import raftlib
from benchmarks._common import PeerProcess, proc_status_kib, stop_all, write_json
from raftlib.testing import free_port

NAMES = ("s1", "s2", "s3")
RESULTS = Path("bench-results/snapshots.json")
LOGS = Path("bench-results/snapshots-logs")
SNAPSHOTS_OFF = 10**12
"""``snapshot_entries`` that is never reached: no snapshot, no compaction."""
SAMPLE_INTERVAL = 0.05
MIB = 1024 * 1024


def vmrss_kib(pid: int) -> int | None:
    """Current resident set size of ``pid`` in KiB, or None if it is gone."""
    return proc_status_kib({"VmRSS:": "vmrss_kib"}, pid).get("vmrss_kib")


class RssSampler:
    """Samples the VmRSS of some processes every ``interval`` seconds."""

    def __init__(self, interval: float = SAMPLE_INTERVAL) -> None:
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.samples: dict[str, list[tuple[float, int]]] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, label: str, pid: int) -> None:
        self.pids[label] = pid
        self.samples.setdefault(label, [])

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._sample()

    def _sample(self) -> None:
        now = time.time()
        for label, pid in self.pids.items():
            rss = vmrss_kib(pid)
            if rss is not None:
                self.samples[label].append((now, rss))

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self.interval)

    def peak(self, label: str, start: float = 0.0, end: float = float("inf")) -> int | None:
        values = [rss for t, rss in self.samples.get(label, []) if start <= t <= end]
        return max(values) if values else None

    def before(self, label: str, when: float) -> int | None:
        """The last sample taken before ``when``."""
        values = [rss for t, rss in self.samples.get(label, []) if t < when]
        return values[-1] if values else None


# -- logs ------------------------------------------------------------------------------

_STAMP = r"^(?P<t>\d+\.\d+) \S+ \w+ "
RECEIVING = re.compile(_STAMP + r"\S+: receiving snapshot (?P<term>\d+)/(?P<index>\d+) \((?P<size>\d+) bytes\) "
                       r"from (?P<src>\S+), resuming at (?P<offset>\d+)", re.M)
STORED = re.compile(_STAMP + r"\S+: snapshot (?P<term>\d+)/(?P<index>\d+) stored \((?P<size>\d+) bytes\)", re.M)
STREAMING = re.compile(_STAMP + r"\S+: streaming snapshot (?P<term>\d+)/(?P<index>\d+) \((?P<size>\d+) bytes\) "
                       r"to (?P<dst>\S+)", re.M)
SENT = re.compile(_STAMP + r"\S+: snapshot sent to (?P<dst>\S+) \((?P<sent>\d+) bytes this attempt\)", re.M)
TRANSFER_FAILED = re.compile(_STAMP + r"\S+: snapshot transfer to (?P<dst>\S+) failed.*$", re.M)
PROBLEM = re.compile(r"^\d+\.\d+ \S+ (WARNING|ERROR|CRITICAL) .*$", re.M)
ELECTION = re.compile(r"^\d+\.\d+ \S+ \w+ \S+: became (leader|candidate) in term \d+$", re.M)


def read_log(path: Path, since: int = 0) -> str:
    with open(path, "rb") as f:
        f.seek(since)
        return f.read().decode(errors="replace")


def log_summary(paths: dict[str, Path]) -> dict[str, Any]:
    """Warnings/errors and elections in each peer's log."""
    summary: dict[str, Any] = {}
    for name, path in paths.items():
        text = read_log(path)
        problems = [m.group(0) for m in PROBLEM.finditer(text)]
        summary[name] = {
            "problems": len(problems),
            "first_problems": problems[:5],
            "elections": [m.group(0) for m in ELECTION.finditer(text)],
        }
    return summary


# -- the runs --------------------------------------------------------------------------


@dataclass
class Cluster:
    args: argparse.Namespace
    snapshot_entries: int
    root: Path
    log_dir: Path
    peers: dict[str, PeerProcess] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    async def spawn(self, name: str) -> PeerProcess:
        address, data_dir = self.addresses[name], self.root / name
        peer = await PeerProcess.launch(
            name, address, "benchmarks._snapshot_peer",
            ["--name", name, "--address", address, "--data-dir", str(data_dir),
             "--snapshot-entries", str(self.snapshot_entries), "--keep", str(self.args.keep)],
            self.log_path(name), data_dir)
        self.peers[name] = peer
        return peer

    async def start(self) -> None:
        self.addresses = {name: f"127.0.0.1:{free_port()}" for name in NAMES}
        for name in NAMES:
            await self.spawn(name)
        await asyncio.gather(*(p.wait_ready() for p in self.peers.values()))
        await asyncio.gather(*(p.request("configure", members=self.addresses) for p in self.peers.values()))

    async def leader(self) -> PeerProcess:
        name = (await self.peers[NAMES[0]].request("leader"))["leader"]
        return self.peers[name]

    async def settle(self, leader: PeerProcess) -> dict[str, dict[str, Any]]:
        """Wait until every running peer applied the leader's commit index; return their statuses."""
        commit = (await leader.request("status"))["commit_index"]
        running = [p for p in self.peers.values() if p.proc.returncode is None]
        await asyncio.gather(*(p.request("wait_applied", timeout=None, index=commit, within=600.0)
                               for p in running))
        statuses = await asyncio.gather(*(p.request("status") for p in running))
        return {p.name: s for p, s in zip(running, statuses)}

    async def close(self) -> None:
        await stop_all(self.peers.values())


async def measure_throughput(leader: PeerProcess, n: int, outstanding: int) -> dict[str, Any]:
    """The leader writes ``n`` small commands with ``outstanding`` in flight."""
    result = await leader.request("bench", timeout=None, n=n, outstanding=outstanding, key_prefix="k",
                                  key_space=10_000, value_size=0)
    return {"writes": n, "seconds": result["seconds"], "ops_per_s": result["ops_per_s"], "errors": result["errors"]}


async def catch_up(cluster: Cluster, leader: PeerProcess, args: argparse.Namespace) -> dict[str, Any]:
    """Stop a follower, write ``args.lag`` commands, restart it, time its catch-up."""
    follower_name = next(n for n in NAMES if n != leader.name)
    follower = cluster.peers[follower_name]
    before = await follower.request("status")
    await follower.stop()
    leader_log_offset = os.path.getsize(leader.log_path)
    follower_log_offset = os.path.getsize(follower.log_path)

    lag = await leader.request("bench", timeout=None, n=args.lag, outstanding=args.outstanding,
                               key_prefix="lag", key_space=0, value_size=100)
    leader_before = await leader.request("status")
    target = leader_before["commit_index"]

    sampler = RssSampler()
    sampler.watch("leader", leader.pid)
    sampler.start()
    try:
        await asyncio.sleep(0.2)  # a leader baseline
        restarted_at = time.time()
        follower = await cluster.spawn(follower_name)
        sampler.watch("follower", follower.pid)
        ready = await follower.wait_ready()
        done = await follower.request("wait_applied", timeout=None, index=target, within=600.0)
    finally:
        await sampler.stop()
    after = await follower.request("status")
    leader_after = await leader.request("status")
    memory_after: dict[str, dict[str, Any]] = {}
    for peer in cluster.peers.values():
        status = await peer.request("status")
        memory_after[peer.name] = {k: status[k] for k in ("role", "keys", "ru_maxrss_kib", "vmrss_kib",
                                                          "rss_anon_kib", "rss_file_kib")}

    flog = read_log(follower.log_path, follower_log_offset)
    llog = read_log(leader.log_path, leader_log_offset)
    receiving = [m.groupdict() for m in RECEIVING.finditer(flog)]
    stored = [m.groupdict() for m in STORED.finditer(flog)]
    # While the follower is down the leader retries the transfer (and fails to
    # connect) every heartbeat; count those apart from the attempts after the restart.
    streaming = [m.groupdict() for m in STREAMING.finditer(llog)]
    sent = [m.groupdict() for m in SENT.finditer(llog)]
    failed = [(float(m["t"]), m.group(0)) for m in TRANSFER_FAILED.finditer(llog)]
    streamed_restores = after["restores"][len(ready["restores"]):]
    via_snapshot = bool(stored) and bool(streamed_restores) and after["snapshot_index"] > before["snapshot_index"]

    transfer: dict[str, Any] = {}
    if receiving and stored:
        t_start, t_end = float(receiving[0]["t"]), float(stored[-1]["t"])
        restore_end = max(r["time"] for r in streamed_restores) if streamed_restores else t_end
        transfer = {
            "started_after_restart_s": t_start - restarted_at,
            "transfer_seconds": t_end - t_start,
            "restore_seconds": sum(r["seconds"] for r in streamed_restores),
            "snapshot_bytes": int(stored[-1]["size"]),
            "snapshot_index": int(stored[-1]["index"]),
            "attempts": sum(float(m["t"]) >= restarted_at for m in streaming),
            "failed_attempts": [line for t, line in failed if t >= restarted_at],
            "attempts_while_down": sum(float(m["t"]) < restarted_at for m in streaming),
            "rss_kib": {
                "leader_before": sampler.before("leader", t_start),
                "leader_peak_during_transfer": sampler.peak("leader", t_start, t_end),
                "leader_peak_catch_up": sampler.peak("leader"),
                "follower_before": sampler.before("follower", t_start),
                "follower_peak_during_transfer": sampler.peak("follower", t_start, t_end),
                "follower_peak_during_restore": sampler.peak("follower", t_end, restore_end + SAMPLE_INTERVAL),
                "follower_peak_catch_up": sampler.peak("follower"),
                "follower_ru_maxrss_before_restore": max(r["ru_maxrss_before_kib"] for r in streamed_restores)
                if streamed_restores else None,
            },
        }
    return {
        "follower": follower_name,
        "lag_writes": args.lag,
        "lag_ops_per_s": lag["ops_per_s"],
        "lag_errors": lag["errors"],
        "leader_commit_index": target,
        "catch_up_seconds": done["time"] - restarted_at,
        "follower_startup_seconds": ready["startup_seconds"],
        "snapshot_index_before_stop": before["snapshot_index"],
        "snapshot_index_at_restart": ready["snapshot_index"],
        "snapshot_index_after": after["snapshot_index"],
        "restores_after_restart": streamed_restores,
        "via_streamed_snapshot": via_snapshot,
        "chunk_size": raftlib.Config().snapshot_chunk_size,
        "leader_state_keys": leader_before["keys"],
        "leader_ru_maxrss_kib": {"before": leader_before["ru_maxrss_kib"], "after": leader_after["ru_maxrss_kib"]},
        "follower_ru_maxrss_kib": after["ru_maxrss_kib"],
        "follower_log_entries_after": after["log_entries"],
        "memory_after_kib": memory_after,
        "transfer": transfer,
        "leader_log_lines": {"streaming": streaming, "sent": sent},
        "follower_log_lines": {"receiving": receiving, "stored": stored},
        "rss_samples_kib": sampler.samples,
    }


async def run(args: argparse.Namespace, snapshots: bool) -> dict[str, Any]:
    label = "on" if snapshots else "off"
    log_dir = LOGS / f"snapshots-{label}"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix=f"raftlib-snapbench-{label}-") as tmp:
        cluster = Cluster(args, args.snapshot_every if snapshots else SNAPSHOTS_OFF, Path(tmp), log_dir)
        try:
            await cluster.start()
            leader = await cluster.leader()
            print(f"[snapshots {label}] leader {leader.name}; writing {args.writes} commands ...", flush=True)
            result: dict[str, Any] = {"snapshots": snapshots, "leader": leader.name,
                                      **await measure_throughput(leader, args.writes, args.outstanding)}
            print(f"[snapshots {label}] {result['ops_per_s']:.0f} ops/s", flush=True)
            statuses = await cluster.settle(leader)
            bound = args.snapshot_every + args.keep + args.outstanding if snapshots else None
            result["log_entry_bound"] = bound
            result["peers"] = {
                name: {
                    "log_entries": s["log_entries"],
                    "max_log_entries_sampled": s["max_log_entries"],
                    "first_index": s["first_index"],
                    "last_index": s["last_index"],
                    "snapshot_index": s["snapshot_index"],
                    "snapshots_taken": s["snapshots_taken"],
                    "ru_maxrss_kib": s["ru_maxrss_kib"],
                    "vmrss_kib": s["vmrss_kib"],
                    "rss_anon_kib": s["rss_anon_kib"],
                    "rss_file_kib": s["rss_file_kib"],
                }
                for name, s in statuses.items()
            }
            if bound is not None:
                result["log_bounded"] = all(p["log_entries"] <= bound for p in result["peers"].values())
                result["peak_bounded"] = all(p["max_log_entries_sampled"] <= bound for p in result["peers"].values())
            if snapshots:
                print(f"[snapshots {label}] catch-up: stopping a follower, writing {args.lag} commands ...",
                      flush=True)
                result["catch_up"] = await catch_up(cluster, leader, args)
        finally:
            await cluster.close()
        result["logs"] = log_summary({n: p.log_path for n, p in cluster.peers.items()})
        result["log_dir"] = str(log_dir)
    return result


# -- report ----------------------------------------------------------------------------


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.0f}"


def report(results: dict[str, Any]) -> None:
    p = results["params"]
    print()
    print(f"{p['writes']} writes, {p['outstanding']} in flight; snapshots on: every {p['snapshot_every']} "
          f"entries, keep {p['keep']}; 3 peer processes, loopback TCP, LMDB; {results['machine']['cpus']} cores")
    print()
    print(f"{'snapshots':<10} {'ops/s':>8} {'log entries on disk s1/s2/s3 (sampled peak)':<52} "
          f"{'bound':>7}  {'peak RSS MiB s1/s2/s3':<22}")
    for run in results["runs"]:
        peers = [run["peers"][n] for n in NAMES if n in run["peers"]]
        entries = "/".join(str(x["log_entries"]) for x in peers)
        peaks = "/".join(str(x["max_log_entries_sampled"]) for x in peers)
        rss = "/".join(mib(x["ru_maxrss_kib"]) for x in peers)
        bound = "-" if run["log_entry_bound"] is None else str(run["log_entry_bound"])
        ok = "" if run.get("log_bounded", True) else "  END VALUE ABOVE BOUND"
        ok += "" if run.get("peak_bounded", True) else "  (a sampled peak is above the bound)"
        print(f"{'on' if run['snapshots'] else 'off':<10} {run['ops_per_s']:>8.0f} {entries + ' (' + peaks + ')':<52} "
              f"{bound:>7}  {rss:<22}{ok}")
    for run in results["runs"]:
        cu = run.get("catch_up")
        if not cu:
            continue
        print()
        t = cu["transfer"]
        print(f"catch-up of {cu['follower']} after {cu['lag_writes']} writes (distinct keys, 100-char values; "
              f"leader wrote them at {cu['lag_ops_per_s']:.0f} ops/s):")
        print(f"  caught up to index {cu['leader_commit_index']} in {cu['catch_up_seconds']:.2f} s after restart "
              f"(peer start-up in its process {cu['follower_startup_seconds']:.2f} s)")
        print(f"  via streamed snapshot: {cu['via_streamed_snapshot']} (snapshot index {cu['snapshot_index_before_stop']}"
              f" before the stop -> {cu['snapshot_index_after']} after; "
              f"{len(cu['restores_after_restart'])} restore(s) after start-up)")
        if t:
            r = t["rss_kib"]
            print(f"  snapshot {t['snapshot_bytes'] / MIB:.1f} MiB in {p['chunk_size'] // 1024} KiB chunks: "
                  f"transfer {t['transfer_seconds']:.2f} s, restore {t['restore_seconds']:.2f} s, "
                  f"{t['attempts']} attempt(s) after the restart, {t['attempts_while_down']} while it was down")
            if r["follower_peak_during_transfer"] is None:
                print(f"  (the transfer was shorter than the {SAMPLE_INTERVAL * 1000:.0f} ms RSS sampling: "
                      f"see ru_maxrss before the restore)")
            print(f"  RSS MiB leader: {mib(r['leader_before'])} before, {mib(r['leader_peak_during_transfer'])} "
                  f"peak during transfer; follower: {mib(r['follower_before'])} before, "
                  f"{mib(r['follower_peak_during_transfer'])} peak during transfer, "
                  f"{mib(r['follower_peak_during_restore'])} peak during restore "
                  f"(ru_maxrss before the restore: {mib(r['follower_ru_maxrss_before_restore'])})")
        after = ", ".join(f"{n} ({m['role']}) {mib(m['vmrss_kib'])} = {mib(m['rss_anon_kib'])} anon + "
                          f"{mib(m['rss_file_kib'])} file" for n, m in sorted(cu["memory_after_kib"].items()))
        print(f"  RSS MiB after the catch-up: {after}")
    problems = {f"{'on' if run['snapshots'] else 'off'}/{n}": s["problems"]
                for run in results["runs"] for n, s in run["logs"].items() if s["problems"]}
    if problems:
        print(f"\nwarnings/errors in peer logs: {problems} (see {LOGS})")
    print(f"\nresults: {RESULTS}")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "snapshots",
        "command": " ".join(["python -m benchmarks.snapshots", *sys.argv[1:]]),
        "params": {
            "writes": args.writes, "lag": args.lag, "snapshot_every": args.snapshot_every, "keep": args.keep,
            "outstanding": args.outstanding, "chunk_size": raftlib.Config().snapshot_chunk_size,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "runs": [],
    }
    for snapshots in (False, True):
        results["runs"].append(await run(args, snapshots))
    write_json(RESULTS, results)
    report(results)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=1_000_000, help="writes per throughput run")
    parser.add_argument("--lag", type=int, default=200_000, help="writes made while a follower is down")
    parser.add_argument("--snapshot-every", type=int, default=10_000, help="Config.snapshot_entries when on")
    parser.add_argument("--keep", type=int, default=5_000, help="Config.snapshot_keep_entries")
    parser.add_argument("--outstanding", type=int, default=1000, help="writes in flight")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: --writes 50000 --lag 20000")
    args = parser.parse_args(argv)
    if args.quick:
        args.writes, args.lag = 50_000, 20_000
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
