"""A Jepsen-style fault test of real ``raftlib serve`` processes.

    python -m raftlib.testing.jepsen --nodes 5 --time 60 --clients 10 \\
        --nemesis kill,pause,partition,isolate-leader --seed 1

Theory of operation. The harness starts ``--nodes`` processes of the
built-in key-value service on loopback, each behind a :class:`Proxy`
(:mod:`raftlib.testing.netproxy`) so that links between peers can be cut.
``--clients`` clients run get / put / cas on a few keys as fast as the
cluster answers: the even-numbered ones each a :class:`raftlib.kv.KVClient`
with its own session (it follows the leader), the odd-numbered ones each
bound to one node, which forwards their plain reads and writes to the leader
(so that reads asked of other members are tested too). Every operation is
recorded with its call and return times and its outcome: ``ok``, ``fail``
(certainly not applied: no member could take it) or ``unknown`` (a write
that may have been applied). Meanwhile a nemesis
draws faults from ``--nemesis`` with the seeded generator:

* ``kill``: ``kill -9`` a node, restart it on the same data directory later;
* ``pause``: SIGSTOP a node, SIGCONT it later;
* ``partition``: cut the peers into a majority and a minority, or two halves
  joined by one bridge node, then heal;
* ``isolate-leader``: find the leader (``status``), cut it off from the
  other peers but not from its clients, and stop it while the others elect
  a new leader; resume it still cut off, so that it believes it leads,
  for a few election timeouts; then heal.

At the end everything is healed and restarted, the clients run a little
longer (to see the cluster recover), and the history is checked with
:func:`raftlib.testing.lincheck.check`. The run prints operation counts,
faults, availability and the verdict, and writes ``history.jsonl``,
``summary.json`` and ``latency.svg`` (latency over time, fault windows
shaded) to ``--out``. A node that exits without the nemesis killing it
is reported as a crash, and so is a client that stops on an unexpected
exception. The exit status is 0 only if the history is linearizable and
nothing crashed.

``--broken`` runs a deliberately broken cluster, as a self-check; the
checker must say it is not linearizable. ``stale-reads``: gets are served
by whichever node the client picked from its local state (``consistency=
"stale"``, no forwarding). ``leader-reads``: the nodes are started through
:mod:`raftlib.testing._broken`, whose leader answers linearizable reads
without the ReadIndex round (only ``isolate-leader`` catches it reliably).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    KVError, NotLeader, OutcomeUnknown, Overloaded, PeerStopped, ProposalDropped, RaftError, StorageFull, Unavailable,
)
from ..rpc import RpcConnection
from . import _broken
from .lincheck import History, Result
from .netproxy import Partitioner, Proxy
from .ports import free_port

__all__ = ["JepsenConfig", "run", "main"]

NEMESES = ("kill", "pause", "partition", "isolate-leader")
BROKEN = ("stale-reads", "leader-reads")


@dataclass
class JepsenConfig:
    """Settings of one fault test (the command-line options)."""

    nodes: int = 5
    time: float = 60.0
    clients: int = 10
    nemesis: tuple[str, ...] = NEMESES
    seed: int = 0
    keys: int = 3
    out: Path = Path("jepsen-results")
    broken: str | None = None
    op_timeout: float = 2.0
    election_timeout_ms: int = 200
    fault_interval: tuple[float, float] = (1.0, 3.0)
    fault_duration: tuple[float, float] = (1.0, 4.0)
    recovery: float = 3.0
    keep_data: bool = False


@dataclass
class _Node:
    name: str
    port: int
    proxy_port: int
    data_dir: Path
    log_path: Path
    election_ms: int = 200
    broken: str | None = None
    """A defect of :mod:`raftlib.testing._broken` to start the process with."""
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.proxy_port}"


@dataclass
class _Fault:
    kind: str
    start: float
    end: float | None = None
    detail: str = ""


@dataclass
class _Run:
    cfg: JepsenConfig
    rng: random.Random
    nodes: list[_Node] = field(default_factory=list)
    history: History = field(default_factory=History)
    faults: list[_Fault] = field(default_factory=list)
    latencies: list[tuple[float, float, str]] = field(default_factory=list)
    crashes: list[tuple[str, int, float]] = field(default_factory=list)
    """Nodes that exited without the harness killing them: (name, exit status, time)."""
    client_errors: list[str] = field(default_factory=list)
    """Clients that stopped on an unexpected exception, which ended their part of the history."""
    t0: float = 0.0
    next_value: int = 0
    last_seen: dict[str, Any] = field(default_factory=dict)
    """The latest value each key was seen with, so that many cas operations can succeed."""


# -- nodes ------------------------------------------------------------------------------------


def _start_node(node: _Node, initial: str) -> None:
    log = open(node.log_path, "ab")
    program = ["raftlib"] if node.broken is None else ["raftlib.testing._broken", node.broken]
    try:
        node.proc = subprocess.Popen(
            [sys.executable, "-m", *program, "serve", "--name", node.name,
             "--listen", f"127.0.0.1:{node.port}", "--advertise", node.address,
             "--data-dir", str(node.data_dir), "--initial-cluster", initial,
             "--election-timeout-ms", str(node.election_ms), "--log-level", "warning"],
            stdout=log, stderr=log, start_new_session=True,
        )
    finally:
        log.close()
    node.paused = False


def _kill(node: _Node) -> None:
    if node.proc is not None and node.proc.poll() is None:
        if node.paused:
            node.proc.send_signal(signal.SIGCONT)
        node.proc.kill()
        node.proc.wait()
    node.proc = None  # down on purpose: _watch does not count it as a crash
    node.paused = False


async def _watch(run: _Run) -> None:
    """Record every node that exits without the harness killing it (a crash,
    a failed restart): the cluster misbehaved, whatever the history says."""
    while True:
        for node in run.nodes:
            if node.proc is not None and node.proc.poll() is not None:
                at = time.monotonic() - run.t0
                run.crashes.append((node.name, node.proc.returncode, at))
                print(f"  {at:6.1f} s  {node.name} exited by itself with status {node.proc.returncode};"
                      f" see {node.log_path}", flush=True)
                node.proc = None
        await asyncio.sleep(0.1)


# -- clients ----------------------------------------------------------------------------------


def _bound_node(run: _Run, process: int) -> _Node | None:
    """The node an odd-numbered client is bound to (round robin); None for
    the even-numbered ones, which follow the leader."""
    return run.nodes[(process // 2) % len(run.nodes)] if process % 2 else None


async def _client(run: _Run, process: int, stop: asyncio.Event) -> None:
    from ..kv import KVClient

    cfg = run.cfg
    node = _bound_node(run, process)
    if node is not None:
        await _bound_client(run, process, node, stop)
        return
    addresses = [n.address for n in run.nodes]
    rng = random.Random(f"{cfg.seed}-client-{process}")
    kv: KVClient | None = None
    while kv is None and not stop.is_set():
        try:
            kv = await KVClient.connect(addresses, timeout=cfg.op_timeout)
        except RaftError:
            await asyncio.sleep(0.1)
    if kv is None:
        return
    stale: RpcConnection | None = None
    try:
        while not stop.is_set():
            key = f"k{rng.randrange(cfg.keys)}"
            kind = rng.choice(("get", "get", "put", "cas"))
            if kind == "get":
                if cfg.broken == "stale-reads":
                    stale = await _stale_connection(run, rng, stale)
                await _get(run, kv, stale, process, key)
            elif kind == "put":
                run.next_value += 1
                await _write(run, kv, process, "put", key, run.next_value, None)
            else:
                run.next_value += 1
                expected = run.last_seen.get(key) if rng.random() < 0.8 else rng.randrange(max(1, run.next_value))
                await _write(run, kv, process, "cas", key, run.next_value, expected)
    finally:
        if stale is not None:
            await stale.close()
        await kv.close()


# Errors after which a write forwarded by a member certainly did not apply.
_NOT_APPLIED = (NotLeader, ProposalDropped, PeerStopped, Unavailable, Overloaded, StorageFull, KVError)


async def _bound_client(run: _Run, process: int, node: _Node, stop: asyncio.Event) -> None:
    """A client that sends every request to ``node``, which forwards it to
    the leader (how a service's own processes use ``Peer.read`` and
    ``Peer.write`` on whichever member they run next to): this tests
    forwarding, and reads on members that are not, or no longer, the leader."""
    from ..kv import _raise_refused

    cfg = run.cfg
    rng = random.Random(f"{cfg.seed}-client-{process}")
    conn: RpcConnection | None = None
    try:
        while not stop.is_set():
            if conn is None or conn.closed:
                try:
                    conn = await RpcConnection.open(node.address, timeout=0.5)
                except RaftError:
                    conn = None
                    await asyncio.sleep(0.1)
                    continue
            key = f"k{rng.randrange(cfg.keys)}"
            kind = rng.choice(("get", "get", "put", "cas"))
            if kind == "get":
                consistency = "stale" if cfg.broken == "stale-reads" else "linearizable"
                handle = run.history.invoke(process, "get", key)
                start = time.monotonic()
                try:
                    item = await conn.call("read", {"query": ["get", "default", key], "consistency": consistency,
                                                    "timeout": cfg.op_timeout}, timeout=cfg.op_timeout)
                    _raise_refused(item)
                except (RaftError, OSError):
                    run.history.complete(handle, "fail")  # a read has no effect
                    await asyncio.sleep(0.05)  # the node may be down: do not spin
                    continue
                value = None if item is None else item[0]
                run.history.complete(handle, "ok", value)
                run.last_seen[key] = value
            else:
                run.next_value += 1
                value = run.next_value
                expected = None
                if kind == "cas":
                    expected = run.last_seen.get(key) if rng.random() < 0.8 else rng.randrange(value)
                command = ["put", "default", key, value] if kind == "put" else ["cas", "default", key, expected, None, value]
                handle = run.history.invoke(process, kind, key, value, expected)
                start = time.monotonic()
                try:
                    result = await conn.call("write", {"command": command, "timeout": cfg.op_timeout},
                                             timeout=cfg.op_timeout)
                    _raise_refused(result)
                except _NOT_APPLIED:
                    run.history.complete(handle, "fail")
                    await asyncio.sleep(0.05)
                    continue
                except (RaftError, OSError):
                    # A plain write is not retried in a session: a lost
                    # answer or a timeout leaves its outcome unknown.
                    run.history.complete(handle, "unknown")
                    await asyncio.sleep(0.05)
                    continue
                output = None if kind == "put" else bool(result["changed"])
                run.history.complete(handle, "ok", output)
                if kind == "put" or output:
                    run.last_seen[key] = value
            run.latencies.append((start - run.t0, time.monotonic() - start, kind))
    finally:
        if conn is not None:
            await conn.close()


async def _stale_connection(run: _Run, rng: random.Random, conn: RpcConnection | None) -> RpcConnection | None:
    if conn is not None and not conn.closed and rng.random() < 0.9:
        return conn
    if conn is not None:
        await conn.close()
    try:
        return await RpcConnection.open(rng.choice(run.nodes).address, timeout=0.5)
    except RaftError:
        return None


async def _get(run: _Run, kv: Any, stale: RpcConnection | None, process: int, key: str) -> None:
    handle = run.history.invoke(process, "get", key)
    start = time.monotonic()
    try:
        if run.cfg.broken == "stale-reads":
            if stale is None:
                raise RaftError("no connection")
            item = await stale.call("read", {"query": ["get", "default", key], "consistency": "stale"},
                                    timeout=run.cfg.op_timeout)
            value = None if item is None else item[0]
        else:
            value = await kv.get(key)
    except (RaftError, OSError):
        run.history.complete(handle, "fail")  # a read has no effect: a failed one constrains nothing
        return
    run.history.complete(handle, "ok", value)
    run.last_seen[key] = value
    run.latencies.append((start - run.t0, time.monotonic() - start, "get"))


async def _write(run: _Run, kv: Any, process: int, kind: str, key: str, value: int, expected: int | None) -> None:
    handle = run.history.invoke(process, kind, key, value, expected)
    start = time.monotonic()
    try:
        if kind == "put":
            await kv.put(key, value)
            output: Any = None
        else:
            output = await kv.cas(key, expected, value)
    except OutcomeUnknown:
        run.history.complete(handle, "unknown")
        return
    except (KVError, RaftError, OSError):
        run.history.complete(handle, "fail")
        return
    run.history.complete(handle, "ok", output)
    if kind == "put" or output is True:
        run.last_seen[key] = value
    run.latencies.append((start - run.t0, time.monotonic() - start, kind))


# -- nemesis ------------------------------------------------------------------------------------


async def _nemesis(run: _Run, partitioner: Partitioner, initial: str, stop: asyncio.Event) -> None:
    cfg, rng = run.cfg, run.rng
    names = [n.name for n in run.nodes]
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(*cfg.fault_interval))
            return
        except asyncio.TimeoutError:
            pass
        kind = rng.choice(cfg.nemesis)
        duration = rng.uniform(*cfg.fault_duration)
        fault = _Fault(kind, time.monotonic() - run.t0)
        minority = len(names) // 2 if len(names) > 2 else 1
        if kind == "kill":
            victim = rng.choice(run.nodes)
            fault.detail = f"kill -9 {victim.name}"
            _kill(victim)
            await _sleep_unless(stop, duration)
            _start_node(victim, initial)
        elif kind == "pause":
            victim = rng.choice([n for n in run.nodes if n.proc is not None and n.proc.poll() is None])
            fault.detail = f"pause {victim.name}"
            assert victim.proc is not None
            victim.proc.send_signal(signal.SIGSTOP)
            victim.paused = True
            await _sleep_unless(stop, duration)
            if victim.proc is not None and victim.proc.poll() is None:
                victim.proc.send_signal(signal.SIGCONT)
            victim.paused = False
        elif kind == "isolate-leader":
            await _isolate_leader(run, partitioner, fault, duration, stop)
        else:
            shuffled = names[:]
            rng.shuffle(shuffled)
            if len(names) >= 3 and rng.random() < 0.3:
                bridge, rest = shuffled[0], shuffled[1:]
                half = len(rest) // 2
                partitioner.split(rest[:half], rest[half:])
                fault.detail = f"bridge {bridge} between {rest[:half]} and {rest[half:]}"
            else:
                small = shuffled[:rng.randint(1, minority)]
                partitioner.split(small, shuffled[len(small):])
                fault.detail = f"partition {sorted(small)} | {sorted(shuffled[len(small):])}"
            await _sleep_unless(stop, duration)
            partitioner.heal()
        fault.end = time.monotonic() - run.t0
        run.faults.append(fault)
        print(f"  {fault.start:6.1f}-{fault.end:6.1f} s  {fault.detail}", flush=True)


async def _isolate_leader(run: _Run, partitioner: Partitioner, fault: _Fault, duration: float,
                          stop: asyncio.Event) -> None:
    """Cut the leader off from the other peers and stop it, then let it run,
    still cut off, for a few election timeouts; then heal.

    Only links between peers are cut: the clients keep reaching the old
    leader. Cut off alone, it would step down (CheckQuorum) before the
    others could elect a new leader; stopped as well, as in a long garbage
    collection or a frozen VM, it comes back believing it still leads while
    the others have elected a new leader and taken writes. Until it notices,
    it must refuse to answer reads it cannot confirm. It stays stopped for
    ``duration``, and longer than the clients' operation timeout: the
    requests pending when it stopped time out, and its clients' next ones,
    sent after the new leader's writes, wait for it to resume.
    """
    leader = await _find_leader(run)
    if leader is None or leader.proc is None:
        fault.detail = "isolate-leader: no node said it leads; nothing cut"
        await _sleep_unless(stop, duration)
        return
    names = [n.name for n in run.nodes]
    others = [n for n in names if n != leader.name]
    partitioner.split([leader.name], others)
    leader.proc.send_signal(signal.SIGSTOP)
    leader.paused = True
    await _sleep_unless(stop, max(duration, run.cfg.op_timeout + 0.5))
    if leader.proc is not None and leader.proc.poll() is None:
        leader.proc.send_signal(signal.SIGCONT)
    leader.paused = False
    resumed = time.monotonic() - run.t0
    # CheckQuorum makes it step down within an election timeout of running.
    await _sleep_unless(stop, 3 * run.cfg.election_timeout_ms / 1000)
    partitioner.heal()
    fault.detail = (f"isolate leader {leader.name} from {others}, stopped until {resumed:.1f} s"
                    f" and cut off after that")


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


# -- the run ------------------------------------------------------------------------------------


async def run(cfg: JepsenConfig) -> tuple[Result, dict[str, Any]]:
    """Run one fault test; return the checker's result and the summary."""
    if not cfg.nemesis or any(n not in NEMESES for n in cfg.nemesis):
        raise ValueError(f"--nemesis takes a comma-separated subset of {','.join(NEMESES)}")
    if cfg.broken is not None and cfg.broken not in BROKEN:
        raise ValueError(f"--broken takes one of {', '.join(BROKEN)}, not {cfg.broken!r}")
    if cfg.nodes < 1 or cfg.clients < 1 or not 0 < cfg.time < math.inf or cfg.keys < 1:
        raise ValueError("--nodes, --clients, --keys and --time must be positive")
    if not 0 < cfg.op_timeout < math.inf:
        raise ValueError(f"--op-timeout must be a positive number of seconds, not {cfg.op_timeout}")
    if not 20 <= cfg.election_timeout_ms <= 60_000:
        raise ValueError(f"--election-timeout-ms must be from 20 to 60000 (as for raftlib serve),"
                         f" not {cfg.election_timeout_ms}")
    state = _Run(cfg, random.Random(cfg.seed), t0=time.monotonic())
    cfg.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="raftlib-jepsen-"))
    names = [f"n{i}" for i in range(1, cfg.nodes + 1)]
    partitioner = Partitioner(names)
    proxies: list[Proxy] = []
    for name in names:
        node = _Node(name, free_port(), free_port(), work / name, cfg.out / f"{name}.log", cfg.election_timeout_ms,
                     broken=cfg.broken if cfg.broken in _broken.DEFECTS else None)
        node.log_path.write_bytes(b"")
        state.nodes.append(node)
    initial = ",".join(f"{n.name}={n.address}" for n in state.nodes)
    # SIGTERM (a CI timeout, kill) and SIGHUP stop the run like Ctrl-C: through
    # the finally below, which stops every node. Left to their default, they
    # would end this process at once and leave the nodes running.
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for signum in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, main_task.cancel)
    clients: list[asyncio.Future[None]] = []
    nemesis: asyncio.Future[None] | None = None
    watch: asyncio.Future[None] | None = None
    try:
        for node in state.nodes:
            proxy = Proxy(node.name, node.proxy_port, node.port, partitioner)
            await proxy.start()
            proxies.append(proxy)
            _start_node(node, initial)
        watch = asyncio.ensure_future(_watch(state))
        await _wait_for_leader(state, 30.0)
        print(f"{cfg.nodes} nodes up; {cfg.clients} clients ({cfg.clients // 2} bound to one node each) for"
              f" {cfg.time:g} s, nemesis {','.join(cfg.nemesis)}, seed {cfg.seed}"
              + (f", BROKEN: {cfg.broken}" if cfg.broken else ""), flush=True)
        state.t0 = time.monotonic()
        stop_faults, stop_clients = asyncio.Event(), asyncio.Event()
        clients = [asyncio.ensure_future(_client(state, i, stop_clients)) for i in range(cfg.clients)]
        nemesis = asyncio.ensure_future(_nemesis(state, partitioner, initial, stop_faults))
        await asyncio.sleep(cfg.time)
        stop_faults.set()
        await nemesis
        partitioner.heal()
        for node in state.nodes:
            if node.proc is None or node.proc.poll() is not None:
                _start_node(node, initial)
            elif node.paused:
                node.proc.send_signal(signal.SIGCONT)
                node.paused = False
        healed_at = time.monotonic() - state.t0
        await asyncio.sleep(cfg.recovery)
        stop_clients.set()
        for process, outcome in enumerate(await asyncio.gather(*clients, return_exceptions=True)):
            if isinstance(outcome, Exception):
                state.client_errors.append(f"client {process}: {type(outcome).__name__}: {outcome}")
    finally:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        # Stop the nemesis and the clients first: a nemesis still running
        # would restart the node it killed after the nodes are stopped.
        for task in [nemesis, *clients, watch]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [nemesis, *clients, watch] if t is not None], return_exceptions=True)
        for node in state.nodes:
            _kill(node)
        for proxy in proxies:
            await proxy.close()
        if cfg.keep_data:
            print(f"the nodes' data directories are kept in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    ops = state.history.operations()
    state.history.save(cfg.out / "history.jsonl")
    result = state.history.check(timeout=120.0)
    summary = _summary(state, ops, result, healed_at)
    summary["data_dir"] = str(work) if cfg.keep_data else None
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    (cfg.out / "latency.svg").write_text(_plot(state, healed_at))
    return result, summary


async def _status(node: _Node) -> dict[str, Any] | None:
    """``node``'s status, or None if it does not answer within half a second."""
    if node.proc is None or node.paused:
        return None
    try:
        conn = await RpcConnection.open(node.address, timeout=0.5)
        try:
            status: dict[str, Any] = await conn.call("status", {}, timeout=0.5)
        finally:
            await conn.close()
    except RaftError:
        return None
    return status


async def _find_leader(state: _Run) -> _Node | None:
    """The node that says it leads, in the highest term any node says so; None if none does."""
    statuses = await asyncio.gather(*[_status(node) for node in state.nodes])
    leaders = [(s["term"], node) for node, s in zip(state.nodes, statuses) if s is not None and s["role"] == "leader"]
    return max(leaders, key=lambda found: found[0])[1] if leaders else None


async def _wait_for_leader(state: _Run, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in state.nodes:
            status = await _status(node)
            if status is not None and status.get("leader"):
                return
        await asyncio.sleep(0.1)
    raise RaftError(f"no leader was elected within {timeout} s; see the node logs in {state.cfg.out}")


def _summary(state: _Run, ops: list[Any], result: Result, healed_at: float) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for op in ops:
        counts.setdefault(op.kind, {"ok": 0, "fail": 0, "unknown": 0})[op.status] += 1
    total = len(ops)
    ok = sum(c["ok"] for c in counts.values())
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(state.cfg).items()},
        "operations": total,
        "by_kind": counts,
        "availability": round(ok / total, 4) if total else 0.0,
        "faults": [{"kind": f.kind, "start": round(f.start, 3), "end": round(f.end or 0, 3), "detail": f.detail}
                   for f in state.faults],
        "healed_at": round(healed_at, 3),
        "crashes": [{"node": name, "status": status, "at": round(at, 3)} for name, status, at in state.crashes],
        "client_errors": state.client_errors,
        "clients": {str(p): (n.name if (n := _bound_node(state, p)) else "leader") for p in range(state.cfg.clients)},
        "verdict": result.verdict,
        "explanation": result.explain() if result.ok is not True else "",
    }


def _plot(state: _Run, healed_at: float) -> str:
    """An SVG of operation latency over time, with fault windows shaded."""
    width, height, pad = 1000, 400, 50
    points = state.latencies
    t_max = max([healed_at + state.cfg.recovery] + [t for t, _, _ in points]) or 1.0
    l_max = max([0.01] + [lat for _, lat, _ in points])
    colors = {"get": "#1f77b4", "put": "#2ca02c", "cas": "#d62728"}
    shade = {"kill": "#ff000022", "pause": "#ffa50033", "partition": "#0000ff1f", "isolate-leader": "#8000ff26"}

    def x(t: float) -> float:
        return pad + (width - 2 * pad) * t / t_max

    def y(lat: float) -> float:
        return height - pad - (height - 2 * pad) * lat / l_max

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>']
    for f in state.faults:
        end = f.end if f.end is not None else t_max
        parts.append(f'<rect x="{x(f.start):.1f}" y="{pad}" width="{max(1.0, x(end) - x(f.start)):.1f}" '
                     f'height="{height - 2 * pad}" fill="{shade.get(f.kind, "#8884")}"><title>{f.detail}</title></rect>')
    for t, lat, kind in points:
        parts.append(f'<circle cx="{x(t):.1f}" cy="{y(lat):.1f}" r="1.5" fill="{colors.get(kind, "black")}"/>')
    parts.append(f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>')
    parts.append(f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>')
    parts.append(f'<text x="{width / 2:.0f}" y="{height - 15}" text-anchor="middle">time (s), 0-{t_max:.1f}</text>')
    parts.append(f'<text x="10" y="{pad - 15}">latency (s), max {l_max:.3f}; blue get, green put, red cas; '
                 f'shaded: red kill, orange pause, blue partition, purple isolate-leader</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raftlib.testing.jepsen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5, help="`raftlib serve` processes (default 5)")
    parser.add_argument("--time", type=float, default=60.0, help="seconds of faults (default 60.0)")
    parser.add_argument("--clients", type=int, default=10,
                        help="concurrent clients: even ones follow the leader, odd ones keep to one node"
                             " (default 10)")
    parser.add_argument("--nemesis", default=",".join(NEMESES), help=f"comma-separated: {','.join(NEMESES)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule (default 0)")
    parser.add_argument("--keys", type=int, default=3, help="keys the clients share (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: jepsen-results/<time>)")
    parser.add_argument("--broken", choices=BROKEN, default=None,
                        help="self-check (must be caught): stale-reads serves gets from any node's local state;"
                             " leader-reads runs nodes whose leader answers reads without ReadIndex")
    parser.add_argument("--op-timeout", type=float, default=2.0,
                        help="seconds a client waits for one operation (default 2.0)")
    parser.add_argument("--election-timeout-ms", type=int, default=200,
                        help="the nodes' minimum election timeout (default 200)")
    parser.add_argument("--keep-data", action="store_true", help="keep the nodes' data directories")
    args = parser.parse_args(argv)
    out = args.out or Path("jepsen-results") / time.strftime("%Y%m%d-%H%M%S")
    cfg = JepsenConfig(
        nodes=args.nodes, time=args.time, clients=args.clients,
        nemesis=tuple(n.strip() for n in args.nemesis.split(",") if n.strip()), seed=args.seed, keys=args.keys,
        out=out, broken=args.broken, op_timeout=args.op_timeout, election_timeout_ms=args.election_timeout_ms,
        keep_data=args.keep_data,
    )
    try:
        result, summary = asyncio.run(run(cfg))
    except (ValueError, RaftError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: every node was stopped; the history was not checked", file=sys.stderr)
        return 1
    print(f"operations: {summary['operations']}")
    for kind, c in sorted(summary["by_kind"].items()):
        print(f"  {kind:4}  ok {c['ok']:6}  fail {c['fail']:5}  unknown {c['unknown']:5}")
    print(f"faults: {len(summary['faults'])}; availability {summary['availability'] * 100:.1f} % of operations ok")
    print(f"verdict: {result.verdict}")
    if result.ok is not True:
        print(result.explain())
    for crash in summary["crashes"]:
        print(f"FAILED: {crash['node']} exited by itself at {crash['at']:.1f} s with status {crash['status']};"
              f" see {out / (crash['node'] + '.log')}")
    for error in summary["client_errors"]:
        print(f"FAILED: {error} (it stopped there; its operations are missing from the history)")
    print(f"history, summary and latency plot in {out}")
    return 0 if result.ok is True and not summary["crashes"] and not summary["client_errors"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
