"""The benchmark suite: real clusters of peer processes on loopback, and PySyncObj under the same load.

    python -m benchmarks [--quick] [--runs N] [--only SECTION[,SECTION...]] [--out DIR] [--wait-quiet S]

Every peer runs in its own process (``benchmarks/_cluster_peer.py`` for
raftlib, ``benchmarks/_pysyncobj_peer.py`` for PySyncObj), all on 127.0.0.1
with ports picked by the OS, each cluster on fresh temporary directories.
raftlib peers run ``raftlib.cli.DemoKV`` with the default ``Config``, on
the standard event loop (``--loop uvloop`` for uvloop), and call
``gc.freeze()`` once started, as a latency-sensitive service would
(``--gc default`` leaves the collector alone); "LMDB"
is the default storage (a save is synced to disk before anything depending
on it is sent or acknowledged), "memory" is ``MemoryStorage``. The load is
generated inside the leader's own process, on its ``Peer`` API (PySyncObj:
on the ``SyncObj``, counting completions in the callbacks). A closed loop of
N outstanding operations keeps N in flight: each one finishing starts the
next. Values are ``bytes`` written under 1,000 cycling keys.

Sections (``--only``):

``compare``
    3 nodes, 64-byte values, 1,000 outstanding writes: raftlib with LMDB and
    with memory storage, and PySyncObj with its log in memory, with its
    journal file as shipped (never flushed while running), with the journal
    flushed before anything leaves a node (one flush per batch), and with it
    flushed after every entry. Also one write at a time (raftlib LMDB and
    PySyncObj in memory). Ratios are taken within each run, then their
    median is reported.
``writes``
    raftlib, 3 peers, LMDB and memory: 1, 16, 256 and 1,000 outstanding
    writes of 16-byte and 4 KiB values (one cluster per storage and run).
``latency``
    raftlib LMDB, 3 peers, 64-byte values in an open loop: writes start on a
    fixed schedule whatever the earlier ones are doing, at 1,000/s and at
    half the peak of ``compare`` (latency from when each write was due).
``reads``
    raftlib LMDB, 3 peers, 1,000 keys: linearizable and stale reads at the
    leader, 256 outstanding.
``five``
    raftlib LMDB, 5 peers, 64-byte values, 1,000 outstanding writes.
``election``
    raftlib LMDB, 3 peers: SIGKILL the leader and time until a survivor
    leads (the killed peer is restarted on its data between trials).
``profile``
    raftlib LMDB, 3 peers, 64-byte values, 1,000 outstanding writes, once:
    py-spy samples the leader's process (the thread holding the GIL) and
    the top costs are printed, with where they are called from.

Each figure is the median over ``--runs`` runs (3; 1 with ``--quick``, which
also shortens every measurement). Prints tables, and writes
``DIR/suite.json``, the chart ``DIR/suite-throughput.png`` (throughput
against outstanding writes; needs matplotlib), the raw profile
``DIR/suite-profile.txt`` and the peers' logs under ``DIR/suite-logs/``.
Each figure also records the CPU used by every peer and by everything else
on the machine ("outside"); figures taken while other processes used more
than a quarter of a core are named in a note. ``--wait-quiet S`` waits up to
S seconds before each cluster for the machine to calm down.

PySyncObj, matplotlib and py-spy come with ``pip install -e '.[bench]'``;
without them those parts are skipped with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Self

from benchmarks._common import CpuMeter, PeerError, PeerProcess, machine_busy_seconds, sum_counts
from benchmarks.snapshots import read_log
from raftlib.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("compare", "writes", "latency", "reads", "five", "election", "profile")
CONCURRENCY = (1, 16, 256, 1000)
VALUE_SIZES = (16, 4096)
COMPARE_VALUE = 64
OUTSTANDING = 1000
READ_CONCURRENCY = 256
KEYS = 1000
FIXED_RATE = 1000.0
MIB = 1024.0

PSO_MODES = {
    "memory": "PySyncObj, log in memory, batching on (its fastest mode)",
    "journal": "PySyncObj, journal file as shipped (mmap, never flushed while running)",
    "journal-flushed": "PySyncObj, journal flushed before anything leaves a node (per batch)",
    "journal-flushed-each": "PySyncObj, journal flushed after every entry",
}
PEER_LOOP = "asyncio"
"""The event loop raftlib peers run on (``--loop``)."""
PEER_GC_FREEZE = True
"""Whether raftlib peers call ``gc.freeze()`` after start-up (``--gc``)."""
LIVE: set[Proc] = set()
"""Every peer process started and not yet reaped, killed on the way out whatever happens."""


# -- processes and clusters ----------------------------------------------------------


def cpu_by_role(pct: dict[str, float | None], leader: str) -> dict[str, Any]:
    return {"leader": pct.get(leader), "followers": [v for n, v in pct.items() if n not in (leader, "outside")],
            "outside": pct.get("outside")}


class Proc(PeerProcess):
    """A peer process speaking the JSON-lines protocol of ``benchmarks._snapshot_peer``."""

    __hash__ = object.__hash__  # kept in the set LIVE: identity, not the dataclass's field equality

    def __eq__(self, other: object) -> bool:
        return self is other

    @classmethod
    async def launch(cls, name: str, address: str, module: str, args: list[str], log_path: Path,
                     data_dir: Path, cwd: Path | None = ROOT) -> Self:
        peer = await super().launch(name, address, module, args, log_path, data_dir, cwd)
        LIVE.add(peer)
        return peer

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def reap(self) -> None:
        await self.stop()
        LIVE.discard(self)

    async def sigkill(self) -> None:
        await self.kill()
        LIVE.discard(self)


@dataclass
class Cluster:
    """N peer processes of raftlib (``kind`` ``lmdb`` or ``memory``) or of
    PySyncObj (``kind`` ``pso-<mode>``) on loopback, in a temporary directory."""

    kind: str
    n: int
    log_dir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="raftlib-bench-")))
    peers: dict[str, Proc] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [f"s{i + 1}" for i in range(self.n)]

    @property
    def pysyncobj(self) -> bool:
        return self.kind.startswith("pso-")

    async def spawn(self, name: str) -> Proc:
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        if self.pysyncobj:
            args = ["--self", self.addresses[name], "--mode", self.kind[len("pso-"):], "--dir", str(data_dir)]
            for other in self.names:
                if other != name:
                    args += ["--partner", self.addresses[other]]
            module = "benchmarks._pysyncobj_peer"
        else:
            args = ["--name", name, "--address", self.addresses[name], "--storage", self.kind, "--loop", PEER_LOOP]
            if PEER_GC_FREEZE:
                args.append("--gc-freeze")
            if self.kind == "lmdb":
                args += ["--data-dir", str(data_dir)]
            module = "benchmarks._cluster_peer"
        peer = await Proc.launch(name, self.addresses[name], module, args, log_path, data_dir)
        self.peers[name] = peer
        return peer

    async def start(self) -> str:
        """Start every peer, found the cluster, and return the leader's name."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.addresses = {name: f"127.0.0.1:{free_port()}" for name in self.names}
        for name in self.names:
            await self.spawn(name)
        await asyncio.gather(*(p.wait_ready() for p in self.peers.values()))
        if not self.pysyncobj:
            await asyncio.gather(*(p.request("configure", members=self.addresses) for p in self.peers.values()))
        return await self.leader()

    async def leader(self, within: float = 60.0) -> str:
        """The name of the peer that leads, once every running peer agrees on it."""
        deadline = time.monotonic() + within
        running = [p for p in self.peers.values() if p.alive]
        while True:
            statuses = await asyncio.gather(*(p.request("status") for p in running))
            if self.pysyncobj:
                leaders = [p.name for p, s in zip(running, statuses) if s["is_leader"]]
                if (len(leaders) == 1 and all(s["connected"] for s in statuses)
                        and all(s["leader"] == self.addresses[leaders[0]] for s in statuses)):
                    return leaders[0]
            else:
                leaders = [p.name for p, s in zip(running, statuses) if s["role"] == "leader"]
                if len(leaders) == 1 and all(s["leader"] == leaders[0] for s in statuses):
                    return leaders[0]
            if time.monotonic() > deadline:
                raise PeerError(f"{self.kind}: no leader all peers agree on within {within} s: {statuses}")
            await asyncio.sleep(0.05)

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.peers.items() if p.alive}

    async def memory(self, leader: str) -> dict[str, Any]:
        """Each running peer's peak RSS (``VmHWM``), by role."""
        out: dict[str, Any] = {}
        for name, p in self.peers.items():
            if p.alive:
                s = await p.request("status")
                out[name] = {"role": "leader" if name == leader else "follower",
                             "vmhwm_kib": s.get("vmhwm_kib"), "ru_maxrss_kib": s.get("ru_maxrss_kib")}
        return out

    async def close(self) -> None:
        await asyncio.gather(*(p.reap() for p in self.peers.values()), return_exceptions=True)
        for p in self.peers.values():
            await p.sigkill()
        shutil.rmtree(self.root, ignore_errors=True)


QUIET: dict[str, Any] = {"wait": 0.0, "waited": 0.0, "gave_up": 0}
"""``--wait-quiet``: how long to wait for a quiet machine before each cluster, and what it cost."""


async def wait_quiet(limit: float, threshold: float = 30.0) -> None:
    """Wait, up to ``limit`` seconds, until the machine (no peer of ours is
    running now) is busier than ``threshold`` % of one core no more over 1 s."""
    if limit <= 0:
        return
    started = time.monotonic()
    while True:
        t0, busy0 = time.perf_counter(), machine_busy_seconds()
        await asyncio.sleep(1.0)
        busy1 = machine_busy_seconds()
        if busy0 is None or busy1 is None:
            return
        pct = 100 * (busy1 - busy0) / (time.perf_counter() - t0)
        waited = time.monotonic() - started
        if pct < threshold:
            QUIET["waited"] += waited
            return
        if waited > limit:
            QUIET["waited"] += waited
            QUIET["gave_up"] += 1
            print(f"  (the machine is still {pct:.0f} % busy after {waited:.0f} s: going on)", flush=True)
            return


async def with_cluster(kind: str, n: int, log_dir: Path,
                       body: Callable[[Cluster, str], Awaitable[Any]]) -> Any:
    """Start a cluster, run ``body(cluster, leader)``, and always tear it down."""
    await wait_quiet(QUIET["wait"])
    shutil.rmtree(log_dir, ignore_errors=True)
    cluster = Cluster(kind, n, log_dir)
    try:
        leader = await cluster.start()
        return await body(cluster, leader)
    except BaseException:
        for name, peer in cluster.peers.items():
            code = peer.proc.returncode
            if code is not None and code != -signal.SIGKILL:
                tail = read_log(peer.log_path).splitlines()[-5:]
                print(f"  peer process {name} ({kind}) exited with code {code}; last lines of {peer.log_path}:",
                      *tail, sep="\n    ", file=sys.stderr)
        raise
    finally:
        await cluster.close()


# -- the measurements ------------------------------------------------------------------


@dataclass
class Suite:
    args: argparse.Namespace
    out: Path
    figures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    memory: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    election: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.out / "suite-logs"

    def record(self, key: str, label: str, result: dict[str, Any]) -> None:
        self.labels[key] = label
        self.figures.setdefault(key, []).append(result)
        lat = result.get("latency_ms", {})
        rate = result.get("ops_per_s", result.get("achieved_per_s", 0.0))
        errors = {k: v for k, v in result.get("errors", {}).items() if v}
        extra = f", errors {errors}" if errors else ""
        changed = ""
        before, after = result.get("before"), result.get("after")
        if before and after and before != after:
            changed = f", LEADER CHANGED {before} -> {after}"
        print(f"  {label}: {rate:,.0f} ops/s, p50 {fmt_ms(lat.get('p50'))}, p99 {fmt_ms(lat.get('p99'))}, "
              f"p99.9 {fmt_ms(lat.get('p999'))}{extra}{changed}", flush=True)

    def record_memory(self, kind: str, mem: dict[str, Any]) -> None:
        self.memory.setdefault(kind, []).append(mem)

    async def closed(self, cluster: Cluster, leader: str, key: str, label: str, **req: Any) -> dict[str, Any]:
        a = self.args
        req.setdefault("seconds", a.seconds)
        req.setdefault("warmup", a.warmup)
        req.setdefault("keys", KEYS)
        cpu = CpuMeter(cluster.pids())
        result = await cluster.peers[leader].request("closed", timeout=req["seconds"] + req["warmup"] + 90, **req)
        pct = cpu.percent()
        result["cpu_percent"] = cpu_by_role(pct, leader)
        result["leader"] = leader
        self.record(key, label, result)
        return result

    # compare ----------------------------------------------------------------------

    async def compare(self, run: int) -> None:
        logs = self.logs / f"compare-run{run}"
        v, c, secs = COMPARE_VALUE, OUTSTANDING, self.args.compare_seconds

        async def raft_lmdb(cluster: Cluster, leader: str) -> None:
            await self.closed(cluster, leader, "cmp.raftlib-lmdb.c1000", f"raftlib LMDB, {v} B, {c} outstanding",
                              kind="write", concurrency=c, value_size=v, seconds=secs)
            await self.closed(cluster, leader, "cmp.raftlib-lmdb.c1", f"raftlib LMDB, {v} B, 1 at a time",
                              kind="write", concurrency=1, value_size=v, seconds=secs)
            self.record_memory("raftlib LMDB, 3 peers (compare)", await cluster.memory(leader))

        async def raft_memory(cluster: Cluster, leader: str) -> None:
            await self.closed(cluster, leader, "cmp.raftlib-memory.c1000", f"raftlib memory, {v} B, {c} outstanding",
                              kind="write", concurrency=c, value_size=v, seconds=secs)
            self.record_memory("raftlib memory, 3 peers (compare)", await cluster.memory(leader))

        def pso(mode: str) -> Callable[[Cluster, str], Awaitable[None]]:
            async def body(cluster: Cluster, leader: str) -> None:
                await self.closed(cluster, leader, f"cmp.pso-{mode}.c1000", f"{PSO_MODES[mode]}, {v} B, {c} outstanding",
                                  concurrency=c, value_size=v, seconds=secs)
                if mode == "memory":
                    await self.closed(cluster, leader, "cmp.pso-memory.c1", f"{PSO_MODES[mode]}, {v} B, 1 at a time",
                                      concurrency=1, value_size=v, seconds=secs)
                mem = await cluster.memory(leader)
                status = await cluster.peers[leader].request("status")
                self.figures[f"cmp.pso-{mode}.c1000"][-1]["leader_journal_flushes"] = status["journal_flushes"]
                self.record_memory(f"PySyncObj {mode}, 3 nodes (compare)", mem)
            return body

        print(f"[compare, run {run}]", flush=True)
        await with_cluster("lmdb", 3, logs / "raftlib-lmdb", raft_lmdb)
        await with_cluster("memory", 3, logs / "raftlib-memory", raft_memory)
        if not have("pysyncobj"):
            if run == 1:
                self.notes.append("PySyncObj is not installed (pip install -e '.[bench]'): comparison skipped")
            return
        for mode in PSO_MODES:
            await with_cluster(f"pso-{mode}", 3, logs / f"pysyncobj-{mode}", pso(mode))

    # writes -----------------------------------------------------------------------

    async def writes(self, run: int) -> None:
        print(f"[writes, run {run}]", flush=True)
        for storage in ("lmdb", "memory"):
            async def body(cluster: Cluster, leader: str, storage: str = storage) -> None:
                for size in VALUE_SIZES:
                    for c in CONCURRENCY:
                        await self.closed(cluster, leader, f"w.{storage}.{size}.c{c}",
                                          f"raftlib {storage_label(storage)}, {size_label(size)}, {c} outstanding",
                                          kind="write", concurrency=c, value_size=size)
                self.record_memory(f"raftlib {storage_label(storage)}, 3 peers (writes: all 8 figures on one "
                                   f"cluster)", await cluster.memory(leader))
            await with_cluster(storage, 3, self.logs / f"writes-run{run}" / storage, body)

    # latency ----------------------------------------------------------------------

    async def latency(self, run: int) -> None:
        print(f"[latency, run {run}]", flush=True)
        a = self.args

        async def body(cluster: Cluster, leader: str) -> None:
            if "half_peak_rate" not in self.handoff:
                peak = median_of(self.figures.get("cmp.raftlib-lmdb.c1000", []), "ops_per_s")
                if peak is None:
                    r = await self.closed(cluster, leader, "lat.peak", f"raftlib LMDB, {COMPARE_VALUE} B, "
                                          f"{OUTSTANDING} outstanding (peak for the latency runs)",
                                          kind="write", concurrency=OUTSTANDING, value_size=COMPARE_VALUE)
                    peak = r["ops_per_s"]
                self.handoff["half_peak_rate"] = round(peak / 2)
            half = self.handoff["half_peak_rate"]
            for key, rate in (("lat.fixed", FIXED_RATE), ("lat.half", float(half))):
                cpu = CpuMeter(cluster.pids())
                r = await cluster.peers[leader].request("open", timeout=a.latency_seconds + a.warmup + 90, rate=rate,
                                                        seconds=a.latency_seconds, warmup=a.warmup,
                                                        value_size=COMPARE_VALUE, keys=KEYS)
                r["cpu_percent"] = cpu_by_role(cpu.percent(), leader)
                self.record(key, f"raftlib LMDB, {COMPARE_VALUE} B, open loop offered {rate:,.0f}/s", r)
            self.record_memory("raftlib LMDB, 3 peers (latency)", await cluster.memory(leader))

        await with_cluster("lmdb", 3, self.logs / f"latency-run{run}", body)

    handoff: dict[str, Any] = field(default_factory=dict)
    """Values one section hands to a later one (the offered load of ``latency``)."""

    # reads ------------------------------------------------------------------------

    async def reads(self, run: int) -> None:
        print(f"[reads, run {run}]", flush=True)

        async def body(cluster: Cluster, leader: str) -> None:
            r = await cluster.peers[leader].request("preload", timeout=120.0, keys=KEYS, value_size=16)
            await asyncio.gather(*(p.request("wait_applied", index=r["commit_index"])
                                   for p in cluster.peers.values()))
            for consistency in ("linearizable", "stale"):
                await self.closed(cluster, leader, f"r.{consistency}",
                                  f"raftlib LMDB, {consistency} reads at the leader, {READ_CONCURRENCY} outstanding",
                                  kind="read", consistency=consistency, concurrency=READ_CONCURRENCY)

        await with_cluster("lmdb", 3, self.logs / f"reads-run{run}", body)

    # five -------------------------------------------------------------------------

    async def five(self, run: int) -> None:
        print(f"[five, run {run}]", flush=True)

        async def body(cluster: Cluster, leader: str) -> None:
            await self.closed(cluster, leader, "five.lmdb.c1000",
                              f"raftlib LMDB, 5 peers, {COMPARE_VALUE} B, {OUTSTANDING} outstanding",
                              kind="write", concurrency=OUTSTANDING, value_size=COMPARE_VALUE)
            self.record_memory("raftlib LMDB, 5 peers", await cluster.memory(leader))

        await with_cluster("lmdb", 5, self.logs / f"five-run{run}", body)

    # election ---------------------------------------------------------------------

    async def elections(self, run: int) -> None:
        print(f"[election, run {run}]", flush=True)

        async def body(cluster: Cluster, leader: str) -> None:
            for trial in range(1, self.args.trials + 1):
                leader = await cluster.leader()
                r = await cluster.peers[leader].request("preload", timeout=120.0, keys=100, value_size=16)
                survivors = [n for n in cluster.names if n != leader]
                await asyncio.gather(*(cluster.peers[n].request("wait_applied", index=r["commit_index"])
                                       for n in survivors))
                watches = [asyncio.ensure_future(cluster.peers[n].request("watch_leader", timeout=60.0, old=leader,
                                                                          within=50.0)) for n in survivors]
                # Requests are taken in order: once these answer, the watches are running.
                await asyncio.gather(*(cluster.peers[n].request("status") for n in survivors))
                killed_at = time.time()
                await cluster.peers[leader].sigkill()
                seen = await asyncio.gather(*watches)
                winners = [s for s in seen if s["self"]]
                if not winners:
                    raise PeerError(f"no survivor reported leading: {seen}")
                sample = {"run": run, "trial": trial, "killed": leader, "new_leader": winners[0]["leader"],
                          "term": winners[0]["term"], "ms": (min(s["at"] for s in winners) - killed_at) * 1000,
                          "all_know_ms": (max(s["at"] for s in seen) - killed_at) * 1000}
                self.election.append(sample)
                print(f"  trial {trial}: killed {leader}, {sample['new_leader']} leads after {sample['ms']:.0f} ms "
                      f"(term {sample['term']}; every survivor knows after {sample['all_know_ms']:.0f} ms)",
                      flush=True)
                restarted = await cluster.spawn(leader)
                await restarted.wait_ready()
                new = await cluster.leader()
                commit = (await cluster.peers[new].request("status"))["commit_index"]
                await restarted.request("wait_applied", index=commit)

        await with_cluster("lmdb", 3, self.logs / f"election-run{run}", body)

    # profile ----------------------------------------------------------------------

    async def run_profile(self, cluster: Cluster, leader: str) -> None:
        """Sample the leader with py-spy during a 1,000-outstanding LMDB run."""
        pyspy = shutil.which("py-spy")
        if pyspy is None:
            self.notes.append("py-spy is not installed (pip install -e '.[bench]'): no profile")
            return
        a = self.args
        raw = self.out / "suite-profile.txt"
        raw.unlink(missing_ok=True)
        pid = cluster.peers[leader].pid
        load = asyncio.ensure_future(self.closed(
            cluster, leader, "profile.raftlib-lmdb.c1000",
            f"raftlib LMDB, {COMPARE_VALUE} B, {OUTSTANDING} outstanding, under py-spy",
            kind="write", concurrency=OUTSTANDING, value_size=COMPARE_VALUE,
            seconds=a.profile_seconds + 1.0, warmup=a.warmup))
        try:
            await asyncio.sleep(a.warmup + 0.5)
            cmd = [pyspy, "record", "--pid", str(pid), "--duration", str(int(a.profile_seconds)),
                   "--rate", "100", "--gil", "--threads", "--format", "raw", "--output", str(raw)]
            print(f"  py-spy {' '.join(cmd[1:])}", flush=True)
            spy = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.STDOUT)
            try:
                out, _ = await asyncio.wait_for(spy.communicate(), a.profile_seconds + 60)
            finally:
                if spy.returncode is None:
                    spy.kill()
                    await spy.wait()
            if spy.returncode != 0 or not raw.exists():
                self.notes.append(f"py-spy failed ({spy.returncode}): {out.decode(errors='replace')[-500:]}")
            else:
                self.profile = parse_profile(raw.read_text())
                self.profile.update(command=" ".join(["py-spy", *cmd[1:]]), raw=str(raw), pid=pid)
        finally:
            await load


# -- profile parsing -------------------------------------------------------------------

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short_path(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def parse_profile(text: str, top: int = 15) -> dict[str, Any]:
    """Aggregate py-spy's raw (collapsed) stacks: samples by leaf function
    (self) and by every function on the stack (inclusive), and by thread."""
    total = 0
    self_counts: dict[tuple[str, str], int] = {}
    incl_counts: dict[tuple[str, str], int] = {}
    threads: dict[str, int] = {}
    paths: dict[tuple[str, str], dict[tuple[str, ...], int]] = {}
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = stack.split(";")
        thread = "?"
        parsed: list[tuple[str, str]] = []
        for fr in frames:
            if fr.startswith(("thread ", "process ")):
                if fr.startswith("thread "):
                    thread = fr
                continue
            m = FRAME.match(fr)
            parsed.append((m["func"], short_path(m["file"])) if m else (fr, ""))
        threads[thread] = threads.get(thread, 0) + count
        if parsed:
            self_counts[parsed[-1]] = self_counts.get(parsed[-1], 0) + count
            # The three callers above the leaf, nearest first: where its cost comes from.
            above = tuple(f"{f} ({p})" for f, p in reversed(parsed[-4:-1]))
            by_path = paths.setdefault(parsed[-1], {})
            by_path[above] = by_path.get(above, 0) + count
        for key in set(parsed):
            incl_counts[key] = incl_counts.get(key, 0) + count

    def table(counts: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
        rows = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        out = []
        for (f, p), n in rows:
            row: dict[str, Any] = {"function": f, "file": p, "samples": n,
                                   "self_pct": round(100 * self_counts.get((f, p), 0) / total, 1),
                                   "inclusive_pct": round(100 * incl_counts.get((f, p), 0) / total, 1)}
            by_path = paths.get((f, p), {})
            if by_path:
                own = sum(by_path.values())
                row["called_from"] = [{"callers": " < ".join(path) or "-", "pct_of_self": round(100 * c / own, 1)}
                                      for path, c in sorted(by_path.items(), key=lambda kv: -kv[1])[:3]]
            out.append(row)
        return out

    return {"samples": total, "top_self": table(self_counts) if total else [],
            "top_inclusive": table(incl_counts) if total else [],
            "threads": {t: round(100 * n / total, 1) for t, n in sorted(threads.items(), key=lambda kv: -kv[1])}
            if total else {}}


# -- summaries, report, chart -----------------------------------------------------------


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms")


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def storage_label(storage: str) -> str:
    return "LMDB" if storage == "lmdb" else "memory"


def median_of(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [float(s[key]) for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over runs of the rate and of each latency percentile."""
    rate_key = "ops_per_s" if "ops_per_s" in samples[0] else "achieved_per_s"
    out: dict[str, Any] = {"ops_per_s": median_of(samples, rate_key), "runs": [s[rate_key] for s in samples]}
    for lat_key in ("latency_ms", "service_ms"):
        if lat_key in samples[0]:
            out[lat_key] = {p: median_of([s[lat_key] for s in samples], p) for p in ("p50", "p99", "p999", "max")}
    leader_cpu = [s["cpu_percent"]["leader"] for s in samples if s.get("cpu_percent", {}).get("leader") is not None]
    follower_cpu = [max(f for f in s["cpu_percent"]["followers"] if f is not None)
                    for s in samples if s.get("cpu_percent", {}).get("followers")]
    outside = [s["cpu_percent"]["outside"] for s in samples if s.get("cpu_percent", {}).get("outside") is not None]
    out["cpu_leader_pct"] = statistics.median(leader_cpu) if leader_cpu else None
    out["cpu_outside_pct"] = statistics.median(outside) if outside else None
    out["cpu_busiest_follower_pct"] = statistics.median(follower_cpu) if follower_cpu else None
    out["errors"] = sum_counts(s.get("errors", {}) for s in samples)
    if "offered_per_s" in samples[0]:
        out["offered_per_s"] = samples[0]["offered_per_s"]
    return out


def ratios(suite: Suite, num: str, den: str) -> dict[str, Any] | None:
    a, b = suite.figures.get(num, []), suite.figures.get(den, [])
    n = min(len(a), len(b))
    if n == 0:
        return None
    per_run = [a[i]["ops_per_s"] / b[i]["ops_per_s"] if b[i]["ops_per_s"] else float("inf") for i in range(n)]
    return {"median": statistics.median(per_run), "runs": per_run}


def machine_info(probe_dir: str) -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform(), "loadavg_at_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for mod in ("lmdb", "msgpack", "matplotlib"):
        try:
            versions[mod] = getattr(__import__(mod), "__version__", None)
        except ImportError:
            versions[mod] = None
    try:
        import lmdb
        versions["LMDB (C library)"] = ".".join(map(str, lmdb.version()))
        from pysyncobj.version import VERSION
        versions["pysyncobj"] = VERSION
    except ImportError:
        versions.setdefault("pysyncobj", None)
    info["versions"] = versions
    import raftlib
    code: dict[str, Any] = {"raftlib": str(Path(raftlib.__file__).parent)}
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--", "raftlib", "storage_adapters"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=10)
            code.update(git_head=head.stdout.strip(), uncommitted_changes_in_raftlib=bool(dirty.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    info["code"] = code
    # What a synced write costs here: 200 appends of 64 bytes, each followed by fsync.
    fd, path = tempfile.mkstemp(dir=probe_dir)
    try:
        times = []
        for _ in range(200):
            os.write(fd, b"x" * 64)
            t = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t)
        times.sort()
        info["fsync_ms"] = {"p50": times[100] * 1000, "p99": times[198] * 1000, "dir": probe_dir}
    finally:
        os.close(fd)
        os.unlink(path)
    # And what raftlib's own synced save of one small entry costs: the floor under one-at-a-time writes.
    from raftlib.types import Entry, HardState
    from storage_adapters.lmdb import LMDBStorage
    storage = LMDBStorage(os.path.join(probe_dir, "lmdb-probe"))
    try:
        times = []
        for i in range(1, 201):
            t = time.perf_counter()
            storage.save(HardState(term=1, commit=i - 1), [Entry(term=1, index=i, data=b"x" * 80)], True)
            times.append(time.perf_counter() - t)
        times.sort()
        info["lmdb_save_ms"] = {"p50": times[100] * 1000, "p99": times[198] * 1000}
    finally:
        storage.close()
    return info


def chart(suite: Suite, path: Path) -> str | None:
    """Throughput against outstanding writes; returns a note if it could not be drawn."""
    if not have("matplotlib"):
        return "matplotlib is not installed (pip install -e '.[bench]'): no chart"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    drawn = False
    styles = {"lmdb": "-", "memory": "--"}
    colors = {16: "tab:blue", 4096: "tab:orange"}
    for storage in ("lmdb", "memory"):
        for size in VALUE_SIZES:
            xs, ys = [], []
            for c in CONCURRENCY:
                samples = suite.figures.get(f"w.{storage}.{size}.c{c}")
                if samples:
                    xs.append(c)
                    ys.append(summarize(samples)["ops_per_s"])
            if xs:
                drawn = True
                ax.plot(xs, ys, styles[storage], marker="o", color=colors[size],
                        label=f"raftlib {storage_label(storage)}, {size_label(size)}")
    points = [("cmp.raftlib-lmdb", "raftlib LMDB, 64 B", "tab:green", "s"),
              ("cmp.raftlib-memory", "raftlib memory, 64 B", "tab:olive", "s"),
              ("cmp.pso-memory", "PySyncObj memory, 64 B", "tab:red", "^"),
              ("cmp.pso-journal", "PySyncObj journal (unflushed), 64 B", "tab:purple", "v"),
              ("cmp.pso-journal-flushed", "PySyncObj journal flushed per batch, 64 B", "tab:brown", "D"),
              ("cmp.pso-journal-flushed-each", "PySyncObj journal flushed per entry, 64 B", "tab:gray", "x")]
    for i, (prefix, label, color, marker) in enumerate(points):
        xs, ys = [], []
        for c in (1, OUTSTANDING):
            samples = suite.figures.get(f"{prefix}.c{c}")
            if samples:
                xs.append(c * (1 + 0.07 * (i - 2.5)))  # side by side, so equal values stay visible
                ys.append(summarize(samples)["ops_per_s"])
        if xs:
            drawn = True
            ax.plot(xs, ys, linestyle="none", marker=marker, markersize=8, color=color, label=label)
    if not drawn:
        plt.close(fig)
        return "no throughput figures measured: no chart"
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(list(CONCURRENCY))
    ax.set_xticklabels([f"{c:,}" for c in CONCURRENCY])
    ax.set_xlabel("outstanding writes (closed loop in the leader's process)")
    ax.set_ylabel("writes/s (median of runs)")
    ax.set_title(f"3 peers on loopback, {os.cpu_count()} cores: write throughput", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def cpu_cell(f: dict[str, Any]) -> str:
    vals = (f.get("cpu_leader_pct"), f.get("cpu_busiest_follower_pct"), f.get("cpu_outside_pct"))
    return " / ".join("-" if v is None else f"{v:.0f}" for v in vals)


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / MIB:.0f}"


def build_summary(suite: Suite) -> dict[str, Any]:
    summary: dict[str, Any] = {"figures": {}, "ratios": {}, "memory": {}, "election": None, "acceptance": []}
    for key, samples in suite.figures.items():
        summary["figures"][key] = {"label": suite.labels[key], **summarize(samples)}
    for den in ("cmp.pso-memory.c1000", "cmp.pso-journal.c1000", "cmp.pso-journal-flushed.c1000",
                "cmp.pso-journal-flushed-each.c1000"):
        for num in ("cmp.raftlib-lmdb.c1000", "cmp.raftlib-memory.c1000"):
            r = ratios(suite, num, den)
            if r is not None:
                summary["ratios"][f"{num} / {den}"] = r
    r = ratios(suite, "five.lmdb.c1000", "cmp.raftlib-lmdb.c1000")
    if r is not None:
        summary["ratios"]["five.lmdb.c1000 / cmp.raftlib-lmdb.c1000"] = r
    for kind, runs in suite.memory.items():
        leader = max((p["vmhwm_kib"] for run in runs for p in run.values() if p["role"] == "leader"), default=None)
        followers = sorted(max(p["vmhwm_kib"] for p in run.values() if p["role"] == "follower")
                           for run in runs if any(p["role"] == "follower" for p in run.values()))
        smallest = [min(p["vmhwm_kib"] for p in run.values() if p["role"] == "follower")
                    for run in runs if any(p["role"] == "follower" for p in run.values())]
        summary["memory"][kind] = {"leader_peak_kib": leader,
                                   "follower_peak_kib_max": followers[-1] if followers else None,
                                   "follower_peak_kib_min": min(smallest) if smallest else None,
                                   "runs": runs}
    if suite.election:
        ms = [s["ms"] for s in suite.election]
        summary["election"] = {"median_ms": statistics.median(ms), "worst_ms": max(ms), "best_ms": min(ms),
                               "trials": len(ms), "samples_ms": ms,
                               "all_know_median_ms": statistics.median(s["all_know_ms"] for s in suite.election)}
    figs = summary["figures"]
    for key, samples in suite.figures.items():
        changed = sum(1 for x in samples if x.get("before") and x.get("after") and x["before"] != x["after"])
        errors = figs[key]["errors"]
        if changed or errors:
            suite.notes.append(f"{key}: " + ", ".join(
                ([f"errors {errors}"] if errors else [])
                + ([f"the leader or its term changed during {changed} run(s)"] if changed else [])))
    busy = {k: f["cpu_outside_pct"] for k, f in figs.items() if (f.get("cpu_outside_pct") or 0) > 25}
    if busy:
        suite.notes.append("other processes used more than 25 % of a core during "
                           + ", ".join(f"{k} ({v:.0f} %)" for k, v in busy.items())
                           + ": those figures are not from a quiet machine")

    def check(name: str, ok: bool | None, detail: str) -> None:
        summary["acceptance"].append({"criterion": name, "pass": ok, "detail": detail})

    r1 = summary["ratios"].get("cmp.raftlib-lmdb.c1000 / cmp.pso-memory.c1000")
    check("durable raftlib (LMDB) >= 3x PySyncObj in memory with batching (64 B, 1,000 outstanding)",
          None if r1 is None else r1["median"] >= 3,
          "not measured" if r1 is None else f"{r1['median']:.2f}x (per run: "
          + ", ".join(f"{x:.2f}" for x in r1["runs"]) + ")")
    # "Its journal actually flushed": PySyncObj's journal writes each entry as
    # it is appended, so flushing it means a flush per entry. A flush per
    # batch (a group commit PySyncObj does not have, added here for a second
    # reference) is reported beside it.
    r3 = summary["ratios"].get("cmp.raftlib-lmdb.c1000 / cmp.pso-journal-flushed-each.c1000")
    check("durable raftlib (LMDB) >= 20x PySyncObj with its journal actually flushed (each entry as it is written)",
          None if r3 is None else r3["median"] >= 20,
          "not measured" if r3 is None else f"{r3['median']:.2f}x (per run: "
          + ", ".join(f"{x:.2f}" for x in r3["runs"]) + ")")
    r2 = summary["ratios"].get("cmp.raftlib-lmdb.c1000 / cmp.pso-journal-flushed.c1000")
    if r2 is not None:
        summary["acceptance"].append({
            "criterion": "for reference, PySyncObj given a group commit (journal flushed once per batch, "
                         "before anything leaves a node)",
            "pass": "info",
            "detail": f"{r2['median']:.2f}x (per run: " + ", ".join(f"{x:.2f}" for x in r2["runs"]) + ")"})
    one = figs.get("cmp.raftlib-lmdb.c1")
    check("one-at-a-time durable writes (LMDB, 64 B): p50 < 2 ms",
          None if one is None else one["latency_ms"]["p50"] < 2.0,
          "not measured" if one is None else f"p50 {fmt_ms(one['latency_ms']['p50'])}, "
          f"{one['ops_per_s']:,.0f} writes/s")
    half = figs.get("lat.half")
    check("p99 write latency < 10 ms at half of peak load (LMDB, 64 B, open loop)",
          None if half is None else half["latency_ms"]["p99"] < 10.0,
          "not measured" if half is None else f"p99 {fmt_ms(half['latency_ms']['p99'])} at "
          f"{half['offered_per_s']:,.0f}/s offered ({half['ops_per_s']:,.0f}/s achieved)")
    return summary


def report(results: dict[str, Any]) -> None:
    s = results["summary"]
    figs = s["figures"]
    m = results["machine"]
    p = results["params"]
    print()
    print(f"machine: {m.get('cpu')}, {m['cpus']} cores, {m.get('mem_gib')} GiB, {m['platform']}, Python {m['python']}; "
          f"fsync of a 64-byte append p50 {fmt_ms(m['fsync_ms']['p50'])}, p99 {fmt_ms(m['fsync_ms']['p99'])}"
          + (f"; a synced LMDBStorage.save of one entry p50 {fmt_ms(m['lmdb_save_ms']['p50'])}, "
             f"p99 {fmt_ms(m['lmdb_save_ms']['p99'])}" if "lmdb_save_ms" in m else ""))
    code = m.get("code", {})
    if code:
        head = f", git HEAD {code['git_head'][:10]}" if code.get("git_head") else ""
        dirty = " (with uncommitted changes)" if code.get("uncommitted_changes_in_raftlib") else ""
        print(f"code: raftlib from {code['raftlib']}{head}{dirty}")
    print(f"each figure: median of {p['runs']} run(s); closed loops count {p['seconds']} s ({p['compare_seconds']} s "
          f"in the comparison) after {p['warmup']} s of warm-up; open loops {p['latency_seconds']} s; load generated "
          f"in the leader's process; raftlib peers on the {p.get('loop', 'asyncio')} event loop"
          + (", gc.freeze() after start-up" if p.get("gc") == "freeze" else ""))

    def row_closed(key: str) -> str:
        f = figs[key]
        lat = f["latency_ms"]
        runs = ", ".join(f"{x:,.0f}" for x in f["runs"])
        cpu = cpu_cell(f)
        return (f"| {f['label']} | {f['ops_per_s']:,.0f} | {runs} | {fmt_ms(lat['p50'])} | {fmt_ms(lat['p99'])} "
                f"| {fmt_ms(lat['p999'])} | {cpu} |")

    header = ("| figure | ops/s | per run | p50 | p99 | p99.9 | CPU % leader / busiest follower / outside |\n"
              "|---|---:|---|---:|---:|---:|---:|")
    cmp_keys = [k for k in figs if k.startswith("cmp.")]
    if cmp_keys:
        print(f"\n## raftlib and PySyncObj: 3 nodes, {COMPARE_VALUE}-byte values\n")
        print(header)
        for k in cmp_keys:
            print(row_closed(k))
        if s["ratios"]:
            print("\n| ratio (within each run; median) | value | per run |\n|---|---:|---|")
            for name, r in s["ratios"].items():
                print(f"| {name} | {r['median']:.2f}x | {', '.join(f'{x:.2f}' for x in r['runs'])} |")
    w_keys = [k for k in figs if k.startswith("w.")]
    if w_keys:
        print("\n## raftlib write throughput, 3 peers\n")
        print(header)
        for k in w_keys:
            print(row_closed(k))
    l_keys = [k for k in figs if k.startswith("lat.")]
    if l_keys:
        print(f"\n## raftlib write latency at a fixed offered load (LMDB, 3 peers, {COMPARE_VALUE} B, open loop)\n")
        print("| offered | achieved | p50 | p99 | p99.9 | max | service time p50 / p99 | CPU % leader / busiest follower / outside |\n"
              "|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k in l_keys:
            f = figs[k]
            if "offered_per_s" not in f:
                print(row_closed(k))
                continue
            lat, svc = f["latency_ms"], f["service_ms"]
            cpu = cpu_cell(f)
            print(f"| {f['offered_per_s']:,.0f}/s | {f['ops_per_s']:,.0f}/s | {fmt_ms(lat['p50'])} | {fmt_ms(lat['p99'])} "
                  f"| {fmt_ms(lat['p999'])} | {fmt_ms(lat['max'])} | {fmt_ms(svc['p50'])} / {fmt_ms(svc['p99'])} "
                  f"| {cpu} |")
    other = [k for k in figs if k.startswith(("r.", "five.", "profile."))]
    if other:
        print("\n## reads, 5 peers, and the run under the profiler\n")
        print(header)
        for k in other:
            print(row_closed(k))
    if s["election"]:
        e = s["election"]
        print(f"\n## leader killed (SIGKILL), 3 peers, LMDB, default Config\n\n"
              f"new leader after: median {e['median_ms']:.0f} ms, best {e['best_ms']:.0f} ms, worst {e['worst_ms']:.0f} ms "
              f"over {e['trials']} trials ({', '.join(f'{x:.0f}' for x in e['samples_ms'])} ms); every survivor knew "
              f"it after {e['all_know_median_ms']:.0f} ms (median)")
    if s["memory"]:
        print("\n## peak RSS per peer (VmHWM, MiB; the largest over runs)\n")
        print("| cluster | leader (runs the load) | followers |\n|---|---:|---:|")
        for kind, mem in s["memory"].items():
            lo, hi = mem["follower_peak_kib_min"], mem["follower_peak_kib_max"]
            fol = mib(hi) if lo is None or mib(lo) == mib(hi) else f"{mib(lo)}-{mib(hi)}"
            print(f"| {kind} | {mib(mem['leader_peak_kib'])} | {fol} |")
    prof = results.get("profile") or {}
    if prof.get("top_self"):
        print(f"\n## profile of the leader (py-spy --gil: {prof['samples']:,} samples of the thread holding the GIL)\n")
        print(f"threads: {', '.join(f'{t} {pct}%' for t, pct in prof['threads'].items())}\n")
        print("| # | function (self) | file | self % | inclusive % | mostly called from |\n|---:|---|---|---:|---:|---|")
        for i, r in enumerate(prof["top_self"], 1):
            via = r.get("called_from") or [{"callers": "-", "pct_of_self": 0}]
            print(f"| {i} | `{r['function']}` | {r['file']} | {r['self_pct']} | {r['inclusive_pct']} "
                  f"| {via[0]['callers']} ({via[0]['pct_of_self']:.0f} %) |")
        print("\n| # | function (inclusive) | file | inclusive % | self % |\n|---:|---|---|---:|---:|")
        for i, r in enumerate(prof["top_inclusive"], 1):
            print(f"| {i} | `{r['function']}` | {r['file']} | {r['inclusive_pct']} | {r['self_pct']} |")
    if s["acceptance"]:
        print("\n## acceptance\n")
        for a in s["acceptance"]:
            verdict = {True: "PASS", False: "FAIL", None: "n/a", "info": "info"}[a["pass"]]
            print(f"- {verdict}: {a['criterion']}: {a['detail']}")
    q = results.get("waited_for_quiet", {})
    if q.get("limit_per_cluster_s"):
        print(f"waited for a quiet machine: {q['total_s']:.0f} s in all (went on regardless {q['gave_up']} time(s))")
    for note in results["notes"]:
        print(f"note: {note}")
    for err in results["errors"]:
        print(f"ERROR: {err}")
    print(f"\nresults: {results['files']['json']}")
    if results["files"].get("chart"):
        print(f"chart: {results['files']['chart']}")


# -- main ------------------------------------------------------------------------------


async def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    suite = Suite(args, out)
    QUIET["wait"] = args.wait_quiet
    shutil.rmtree(suite.logs, ignore_errors=True)
    suite.logs.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="raftlib-bench-probe-") as probe:
        machine = machine_info(probe)
    print(f"benchmarks: sections {', '.join(args.sections)}; {args.runs} run(s); "
          f"{'quick' if args.quick else 'full'}; peer logs in {suite.logs}", flush=True)
    started = time.time()
    # SIGTERM and SIGHUP end the run as Ctrl-C does: the current cluster is torn down on the way out.
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if main_task is not None:
            loop.add_signal_handler(sig, main_task.cancel)
    steps: list[tuple[str, Callable[[int], Awaitable[None]]]] = [
        ("compare", suite.compare), ("writes", suite.writes), ("latency", suite.latency), ("reads", suite.reads),
        ("five", suite.five), ("election", suite.elections)]

    async def profile_once(run: int) -> None:
        if run == 1:
            print("[profile]", flush=True)
            await with_cluster("lmdb", 3, suite.logs / "profile", suite.run_profile)
    steps.append(("profile", profile_once))
    try:
        for section, step in steps:
            if section not in args.sections:
                continue
            for run in range(1, args.runs + 1):
                try:
                    await step(run)
                except (PeerError, ConnectionError, TimeoutError, asyncio.TimeoutError, OSError) as exc:
                    msg = f"{section}, run {run}: {type(exc).__name__}: {exc}"
                    print(f"  FAILED: {msg}", file=sys.stderr, flush=True)
                    suite.errors.append(msg)
    finally:
        for proc in list(LIVE):  # whatever a failure left running
            await proc.sigkill()
    results: dict[str, Any] = {
        "benchmark": "suite",
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "params": {"loop": args.loop, "gc": args.gc, "runs": args.runs, "seconds": args.seconds, "compare_seconds": args.compare_seconds,
                   "warmup": args.warmup,
                   "latency_seconds": args.latency_seconds, "election_trials": args.trials,
                   "profile_seconds": args.profile_seconds, "sections": args.sections, "keys": KEYS,
                   "compare_value_bytes": COMPARE_VALUE, "outstanding": OUTSTANDING,
                   "read_concurrency": READ_CONCURRENCY, "half_peak_rate": suite.handoff.get("half_peak_rate")},
        "machine": {**machine, "loadavg_at_end": os.getloadavg()},
        "elapsed_seconds": round(time.time() - started, 1),
        "waited_for_quiet": {"limit_per_cluster_s": QUIET["wait"], "total_s": round(QUIET["waited"], 1),
                             "gave_up": QUIET["gave_up"]},
        "figures": suite.figures,
        "memory": suite.memory,
        "election": suite.election,
        "profile": suite.profile,
        "notes": suite.notes,
        "errors": suite.errors,
        "files": {"json": str(out / "suite.json")},
    }
    results["summary"] = build_summary(suite)
    note = chart(suite, out / "suite-throughput.png")
    if note is None:
        results["files"]["chart"] = str(out / "suite-throughput.png")
    else:
        suite.notes.append(note)
    if suite.profile:
        results["files"]["profile"] = suite.profile.get("raw")
    (out / "suite.json").write_text(json.dumps(results, indent=1))
    report(results)
    print(f"elapsed: {results['elapsed_seconds']:.0f} s")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 1 run, 1 s per figure (3 s in the comparison with PySyncObj)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3, 1 with --quick)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated sections to run, of: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--out", default="bench-results", help="where results go (default bench-results/)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each cluster, wait up to SECONDS for other processes to use less than 30%% of "
                             "a core (default 0: do not wait)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the event loop of the raftlib peers (default asyncio; uvloop needs uvloop installed)")
    parser.add_argument("--gc", choices=("freeze", "default"), default="freeze",
                        help="freeze: raftlib peers call gc.freeze() once started, so the collector never scans "
                             "what start-up created again (default); default: leave the collector alone")
    args = parser.parse_args(argv)
    if args.only:
        args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in args.sections if s not in SECTIONS]
        if unknown:
            parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    else:
        args.sections = list(SECTIONS)
    if args.quick:
        # The comparison keeps 3 s: PySyncObj's flushed journal slows as it
        # grows, and 1 s showed it up to twice as fast as longer runs do.
        args.seconds, args.compare_seconds, args.warmup = 1.0, 3.0, 0.5
        args.latency_seconds, args.trials, args.profile_seconds = 2.0, 2, 3.0
    else:
        args.seconds, args.compare_seconds, args.warmup = 3.0, 5.0, 1.0
        args.latency_seconds, args.trials, args.profile_seconds = 5.0, 3, 10.0
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main() -> None:
    global PEER_LOOP, PEER_GC_FREEZE
    args = parse_args()
    PEER_LOOP = args.loop
    PEER_GC_FREEZE = args.gc == "freeze"
    try:
        asyncio.run(run_suite(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit("interrupted; peer processes were stopped")


if __name__ == "__main__":
    main()
