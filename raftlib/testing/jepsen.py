"""A Jepsen-style fault test of real ``raftlib serve`` processes.

    python -m raftlib.testing.jepsen --nodes 5 --time 60 --clients 10 \\
        --nemesis kill,pause,partition,isolate-leader,membership,transfer --seed 1

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
  for a few election timeouts; then heal;
* ``membership``: remove a node (sometimes the leader) with ``raftlib
  members remove``, stop it, wipe its data directory and bring it back
  empty, by ``raftlib serve --join`` or by ``raftlib members add``; or
  remove it while it is down and restart it on its old disk, where it must
  learn it was removed before it is added back;
* ``transfer``: ask the leader to hand leadership over, to a random node or
  the one it picks, again and again.

The default is all six (with one node, ``kill`` and ``pause``). A fault
that could not take effect counts as not done (``fault_counts`` in the
summary); a node that does not stop on SIGTERM or does not become a voter
again after its re-add fails the run (``nemesis_errors``), as does a
client stuck in a call at the end.

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
from typing import Any, Callable

from ..errors import (
    KVError, NotLeader, OutcomeUnknown, Overloaded, PeerStopped, ProposalDropped, RaftError, StorageFull, Unavailable,
)
from ..rpc import RpcConnection
from . import _broken
from .lincheck import History, Result
from .netproxy import Partitioner, Proxy
from .ports import free_port

__all__ = ["JepsenConfig", "run", "main"]

NEMESES = ("kill", "pause", "partition", "isolate-leader", "membership", "transfer")
# The faults that act between nodes, which one node alone cannot have.
_BETWEEN_NODES = ("partition", "isolate-leader", "membership", "transfer")
_ONE_NODE = tuple(n for n in NEMESES if n not in _BETWEEN_NODES)
"""The default nemeses of a one-node run: kill and pause."""
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
    rejoin: bool = False
    """Its data directory was wiped after its removal: every later start joins
    through the others (``--join``) instead of founding a cluster."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.proxy_port}"


@dataclass
class _Fault:
    kind: str
    start: float
    end: float | None = None
    detail: str = ""
    done: bool = True
    """Whether the fault took effect (a membership change that committed, a
    transfer that moved leadership, a leader found to isolate)."""


@dataclass
class _Run:
    cfg: JepsenConfig
    rng: random.Random
    nodes: list[_Node] = field(default_factory=list)
    history: History = field(init=False)
    """Operations, timed in seconds from ``t0``, as faults and latencies are."""
    faults: list[_Fault] = field(default_factory=list)
    latencies: list[tuple[float, float, str]] = field(default_factory=list)
    crashes: list[tuple[str, int, float]] = field(default_factory=list)
    """Nodes that exited without the harness killing them: (name, exit status, time)."""
    client_errors: list[str] = field(default_factory=list)
    """Clients that stopped on an unexpected exception, which ended their part of the history."""
    errors: dict[str, int] = field(default_factory=dict)
    """How many operations failed or ended unknown, by "kind outcome error"."""
    nemesis_errors: list[str] = field(default_factory=list)
    """Steps of a fault that the cluster should have taken and did not: a
    stop that hung, a removed member that could not be added back."""
    t0: float = 0.0
    next_value: int = 0
    last_seen: dict[str, Any] = field(default_factory=dict)
    """The latest value each key was seen with, so that many cas operations can succeed."""

    def __post_init__(self) -> None:
        self.history = History(clock=lambda: time.monotonic() - self.t0)


# -- nodes ------------------------------------------------------------------------------------


def _start_node(node: _Node, initial: str, *, found: bool = True) -> None:
    """Start ``node``: founding the cluster of ``initial`` (ignored once it
    has a log), or, after its data directory was wiped, joining it through
    the other members. With ``found=False`` a wiped node waits to be added."""
    log = open(node.log_path, "ab")
    program = ["raftlib"] if node.broken is None else ["raftlib.testing._broken", node.broken]
    if not node.rejoin:
        how = ["--initial-cluster", initial]
    elif found:
        seeds = [member.split("=", 1)[1] for member in initial.split(",") if not member.startswith(node.name + "=")]
        how = ["--join", ",".join(seeds), "--join-timeout", "60"]
    else:
        how = []
    try:
        node.proc = subprocess.Popen(
            [sys.executable, "-m", *program, "serve", "--name", node.name,
             "--listen", f"127.0.0.1:{node.port}", "--advertise", node.address,
             "--data-dir", str(node.data_dir), *how,
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


def _failed(run: _Run, handle: int, status: str, exc: BaseException) -> None:
    """Complete ``handle`` as ``status`` ("fail" or "unknown"), counting the error that made it so."""
    op = run.history.complete(handle, status)
    key = f"{op.kind} {status} {type(exc).__name__}"
    run.errors[key] = run.errors.get(key, 0) + 1


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
                except (RaftError, OSError) as exc:
                    _failed(run, handle, "fail", exc)  # a read has no effect
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
                except _NOT_APPLIED as exc:
                    _failed(run, handle, "fail", exc)
                    await asyncio.sleep(0.05)
                    continue
                except (RaftError, OSError) as exc:
                    # A plain write is not retried in a session: a lost
                    # answer or a timeout leaves its outcome unknown.
                    _failed(run, handle, "unknown", exc)
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
    except (RaftError, OSError) as exc:
        _failed(run, handle, "fail", exc)  # a read has no effect: a failed one constrains nothing
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
    except OutcomeUnknown as exc:
        _failed(run, handle, "unknown", exc)
        return
    except (KVError, RaftError, OSError) as exc:
        _failed(run, handle, "fail", exc)
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
        elif kind == "membership":
            await _membership(run, initial, fault)
        elif kind == "transfer":
            await _transfer(run, fault, duration, stop)
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
        fault.done = False
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


async def _membership(run: _Run, initial: str, fault: _Fault) -> None:
    """Take a node (the leader, two times in five) out of the cluster and
    add it back, in one of two ways.

    Two times in three, as docs/operations.md says to recover a member that
    lost its data: ``raftlib members remove``, stop it (SIGTERM or kill -9),
    wipe its data directory, then ``raftlib serve --join``, or a plain
    ``raftlib serve`` added with ``raftlib members add``. The removal must
    have committed before the directory is wiped: a voter that comes back
    with an empty disk while it still counts for a quorum could lose
    acknowledged writes.

    Otherwise ``kill -9`` it, remove it while it is down and restart it on
    its old disk, whose configuration still names it: it must learn from the
    others that it was removed (``removed_at`` in its status) before
    ``raftlib members add`` brings it back (docs/membership.md).

    The fault is not cut short by the end of the run: it ends with the node
    a voter again.
    """
    rng = run.rng
    # As many draws whatever the cluster answers, so that the seed fixes the faults that follow.
    the_leader, victim = rng.random() < 0.4, rng.choice(run.nodes)
    leader = await _find_leader(run)
    if the_leader and leader is not None:
        victim = leader
    others = ",".join(n.address for n in run.nodes if n is not victim)
    what = f"{victim.name}{' (the leader)' if victim is leader else ''}"
    while_down = rng.random() < 1 / 3
    if while_down:
        _kill(victim)
    code, said = 1, ""
    for _ in range(3):
        # Asked again after a Timeout, a removal already in force waits for
        # it to commit: "not a member" then means it is out for good.
        code, said = await _change("members", "remove", victim.name, "--cluster", others, "--timeout", "10")
        if code == 0 or _REFUSED in said:
            break
    if code != 0:
        fault.done = False
        fault.detail = f"membership: could not remove {what} ({said}); adding it back as it is"
        if _REFUSED not in said:  # a refusal is right while other faults keep voters down
            run.nemesis_errors.append(f"{victim.name} could not be removed in three tries of 10 s: {said}")
        if victim.proc is None:
            _start_node(victim, initial)
        await _change("members", "add", victim.name, victim.address, "--cluster", others, "--timeout", "30")
        return
    out_at = time.monotonic() - run.t0
    if while_down:
        _start_node(victim, initial, found=False)
        how = "while down (kill -9), restart on its old disk"
        learned = await _wait_for_status(victim, lambda status: status.get("removed_at") is not None, 20.0)
        if not learned:
            run.nemesis_errors.append(f"{victim.name}, removed while down and restarted at {out_at:.1f} s, did not"
                                      f" learn it was removed within 20 s; see {victim.log_path}")
        how += ", it learned it was out" if learned else ", it NEVER LEARNED it was out"
    else:
        if rng.random() < 0.5:
            how = "SIGTERM"
            await _stop(run, victim)
        else:
            how = "kill -9"
            _kill(victim)
        shutil.rmtree(victim.data_dir, ignore_errors=True)
        victim.rejoin = True
        how += ", wipe"
    if not while_down and rng.random() < 0.5:
        _start_node(victim, initial)
        back = "serve --join"
        added = await _wait_until_voter(victim, 60.0)
    else:
        if not while_down:
            _start_node(victim, initial, found=False)
        back = "members add"
        code, said = await _change("members", "add", victim.name, victim.address, "--cluster", others,
                                   "--timeout", "60")
        added = code == 0 and await _wait_until_voter(victim, 10.0)
    if not added:
        fault.done = False
        run.nemesis_errors.append(f"{victim.name}, out of the cluster at {out_at:.1f} s, was not a voter again"
                                  f" after {back} ({said}); see {victim.log_path}")
    fault.detail = (f"membership: remove {what}, {how}, {back}"
                    f" (out {out_at - fault.start:.1f}-{time.monotonic() - run.t0 - fault.start:.1f} s"
                    f" into the fault){'' if added else '; NOT ADDED BACK'}")


async def _transfer(run: _Run, fault: _Fault, duration: float, stop: asyncio.Event) -> None:
    """Ask the leader to hand leadership over (the request ``raftlib members
    transfer-leader`` sends), to a random voter or to the one it picks,
    again and again for ``duration``. How many that is depends on how fast
    the cluster answers: they draw from a generator of their own, so that
    the seed still fixes the faults that follow."""
    rng = random.Random(run.rng.random())
    deadline = time.monotonic() + duration
    moved: list[str] = []
    refused: dict[str, int] = {}
    while time.monotonic() < deadline and not stop.is_set():
        leader = await _find_leader(run)
        if leader is None:
            refused["no leader"] = refused.get("no leader", 0) + 1
        else:
            to = rng.choice([n.name for n in run.nodes if n is not leader]) if rng.random() < 0.5 else None
            try:
                conn = await RpcConnection.open(leader.address, timeout=0.5)
                try:
                    new = await conn.call("transfer_leadership", {"to": to, "timeout": 5.0}, timeout=6.0)
                finally:
                    await conn.close()
                moved.append(f"{leader.name}->{new}" + ("" if to is None else f" (asked {to})"))
            except RaftError as exc:
                error = type(exc).__name__
                refused[error] = refused.get(error, 0) + 1
        await _sleep_unless(stop, rng.uniform(0.1, 0.5))
    fault.done = bool(moved)
    fault.detail = (f"transfer leadership: {', '.join(moved) or 'never moved'}"
                    + "".join(f"; {n} refused ({error})" for error, n in sorted(refused.items())))


_REFUSED = "NoLiveMajority: "
"""How the command line names a membership change refused for want of a
live majority (the exception's class; see docs/membership.md)."""


async def _change(*args: str, within: float = 30.0) -> tuple[int, str]:
    """:func:`_cli` for a membership change, asked again for up to ``within``
    seconds while the cluster refuses it because too few voters of the new
    configuration are running (another fault has one down): that refusal is
    right, and the change goes through once the voter is back."""
    deadline = time.monotonic() + within
    while True:
        code, said = await _cli(*args)
        if code == 0 or _REFUSED not in said or time.monotonic() >= deadline:
            return code, said
        await asyncio.sleep(0.5)


async def _cli(*args: str) -> tuple[int, str]:
    """Run ``raftlib ARGS`` (the command an operator would type); return its
    exit status and the last line it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "raftlib", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120.0)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    lines = out.decode(errors="replace").strip().splitlines()
    assert proc.returncode is not None
    return proc.returncode, lines[-1] if lines else ""


async def _stop(run: _Run, node: _Node) -> None:
    """Stop ``node`` with SIGTERM, as an operator would; a node that has not
    stopped within 20 s is killed and counted as a nemesis error."""
    if node.proc is None or node.proc.poll() is not None:
        return
    proc = node.proc
    node.proc = None  # stopped on purpose: _watch does not count it as a crash
    if node.paused:
        proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20.0
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        run.nemesis_errors.append(f"{node.name} did not stop within 20 s of SIGTERM; see {node.log_path}")
        proc.kill()
        proc.wait()
    elif proc.returncode != 0:
        run.nemesis_errors.append(f"{node.name} exited with status {proc.returncode} on SIGTERM; see {node.log_path}")
    node.paused = False


async def _wait_until_voter(node: _Node, timeout: float) -> bool:
    """Whether ``node`` says, within ``timeout``, that it is a voter that knows the leader."""
    return await _wait_for_status(
        node, lambda status: bool(status.get("leader")) and status["members"].get(node.name, {}).get("voter", False),
        timeout)


async def _wait_for_status(node: _Node, holds: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
    """Whether ``node``'s status, asked every 0.1 s, satisfies ``holds`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await _status(node)
        if status is not None and holds(status):
            return True
        await asyncio.sleep(0.1)
    return False


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
    between = [n for n in cfg.nemesis if n in _BETWEEN_NODES]
    if cfg.nodes < 2 and between:
        raise ValueError(f"--nemesis {','.join(between)} needs at least 2 nodes (--nodes {cfg.nodes});"
                         f" with one node, only {' and '.join(_ONE_NODE)} apply")
    if not 0 < cfg.op_timeout < math.inf:
        raise ValueError(f"--op-timeout must be a positive number of seconds, not {cfg.op_timeout}")
    if not 20 <= cfg.election_timeout_ms <= 60_000:
        raise ValueError(f"--election-timeout-ms must be from 20 to 60000 (as for raftlib serve),"
                         f" not {cfg.election_timeout_ms}")
    state = _Run(cfg, random.Random(cfg.seed), t0=time.monotonic())
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {cfg.out}: cannot make the output folder ({exc.strerror})") from None
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
    interrupted = False
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
        # Every operation is bounded by --op-timeout: a client still running
        # well after that is stuck in a call that never returns.
        await asyncio.wait(clients, timeout=2 * cfg.op_timeout + 5)
        for process, client in enumerate(clients):
            if not client.done():
                state.client_errors.append(f"client {process}: stuck in an operation {2 * cfg.op_timeout + 5:g} s"
                                           f" after the clients were told to stop")
                client.cancel()
            elif not client.cancelled() and isinstance(client.exception(), Exception):
                outcome = client.exception()
                state.client_errors.append(f"client {process}: {type(outcome).__name__}: {outcome}")
    except (asyncio.CancelledError, KeyboardInterrupt):
        interrupted = True
        raise
    finally:
        # Stopping must not be broken off half-way, leaving nodes running
        # (they have sessions of their own, out of reach of the terminal's
        # Ctrl-C): a second Ctrl-C, SIGTERM or SIGHUP now only says so.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, _still_stopping)
        try:
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
            if interrupted:
                # What was recorded so far is kept, unchecked.
                stopped_at = time.monotonic() - state.t0
                state.history.save(cfg.out / "history.jsonl")
                _write_results(state, work, state.history.operations(), None, None, stopped_at)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)
    ops = state.history.operations()
    state.history.save(cfg.out / "history.jsonl")
    # The nodes are down and the check blocks the loop: Ctrl-C, SIGTERM or
    # SIGHUP now interrupts the check itself, and the summary still says so.
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        result: Result | None = state.history.check(timeout=120.0)
    except KeyboardInterrupt:
        result = None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    summary = _write_results(state, work, ops, result, healed_at, healed_at)
    if result is None:
        raise KeyboardInterrupt
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


def _write_results(state: _Run, work: Path, ops: list[Any], result: Result | None, healed_at: float | None,
                   plot_until: float) -> dict[str, Any]:
    """Write ``summary.json`` (see :func:`_summary`) and ``latency.svg`` (up
    to ``plot_until``) to the output folder; return the summary."""
    cfg = state.cfg
    summary = _summary(state, ops, result, healed_at)
    summary["data_dir"] = str(work) if cfg.keep_data else None
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    (cfg.out / "latency.svg").write_text(_plot(state, plot_until))
    return summary


def _interrupt(signum: int, frame: object) -> None:
    """Stop the history check on SIGTERM or SIGHUP as on Ctrl-C."""
    raise KeyboardInterrupt


def _still_stopping() -> None:
    print("stopping every node and proxy; the run ends once they are down", file=sys.stderr, flush=True)


def _summary(state: _Run, ops: list[Any], result: Result | None, healed_at: float | None) -> dict[str, Any]:
    """The summary of a run; ``result`` is None if the run was interrupted
    (the history was not checked), and ``healed_at`` then too unless the
    interrupt came during the check."""
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
        "faults": [{"kind": f.kind, "start": round(f.start, 3), "end": round(f.end or 0, 3), "detail": f.detail,
                    "done": f.done} for f in state.faults],
        "healed_at": None if healed_at is None else round(healed_at, 3),
        "crashes": [{"node": name, "status": status, "at": round(at, 3)} for name, status, at in state.crashes],
        "client_errors": state.client_errors,
        "nemesis_errors": state.nemesis_errors,
        "errors": dict(sorted(state.errors.items())),
        "fault_counts": {kind: sum(1 for f in state.faults if f.kind == kind and f.done) for kind in state.cfg.nemesis},
        "clients": {str(p): (n.name if (n := _bound_node(state, p)) else "leader") for p in range(state.cfg.clients)},
        "verdict": "not checked (interrupted)" if result is None else result.verdict,
        "explanation": "" if result is None or result.ok is True else result.explain(),
    }


def _plot(state: _Run, healed_at: float) -> str:
    """An SVG of operation latency over time, with fault windows shaded."""
    width, height, pad = 1000, 400, 50
    points = state.latencies
    t_max = max([healed_at + state.cfg.recovery] + [t for t, _, _ in points]) or 1.0
    l_max = max([0.01] + [lat for _, lat, _ in points])
    colors = {"get": "#1f77b4", "put": "#2ca02c", "cas": "#d62728"}
    shade = {"kill": "#ff000022", "pause": "#ffa50033", "partition": "#0000ff1f", "isolate-leader": "#8000ff26",
             "membership": "#00800026", "transfer": "#80808033"}

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
                 f'shaded: red kill, orange pause, blue partition, purple isolate-leader, green membership, '
                 f'grey transfer</text>')
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
    parser.add_argument("--nemesis", default=None,
                        help=f"comma-separated: {','.join(NEMESES)} (default: all; with --nodes 1,"
                             f" {','.join(_ONE_NODE)})")
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
    if args.nemesis is not None:
        nemesis = tuple(n.strip() for n in args.nemesis.split(",") if n.strip())
    elif args.nodes == 1:
        nemesis = _ONE_NODE
        print(f"one node: nemesis {','.join(nemesis)} (the other faults need at least 2 nodes)", flush=True)
    else:
        nemesis = NEMESES
    cfg = JepsenConfig(
        nodes=args.nodes, time=args.time, clients=args.clients,
        nemesis=nemesis, seed=args.seed, keys=args.keys,
        out=out, broken=args.broken, op_timeout=args.op_timeout, election_timeout_ms=args.election_timeout_ms,
        keep_data=args.keep_data,
    )
    try:
        result, summary = asyncio.run(run(cfg))
    except (ValueError, RaftError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"interrupted: every node was stopped; the history so far, not checked, is in {out}",
              file=sys.stderr)
        return 1
    print(f"operations: {summary['operations']}")
    for kind, c in sorted(summary["by_kind"].items()):
        print(f"  {kind:4}  ok {c['ok']:6}  fail {c['fail']:5}  unknown {c['unknown']:5}")
    done = ", ".join(f"{kind} {n}" for kind, n in summary["fault_counts"].items())
    print(f"faults: {len(summary['faults'])} ({done} took effect);"
          f" availability {summary['availability'] * 100:.1f} % of operations ok")
    print(f"verdict: {result.verdict}")
    if result.ok is not True:
        print(result.explain())
    for crash in summary["crashes"]:
        print(f"FAILED: {crash['node']} exited by itself at {crash['at']:.1f} s with status {crash['status']};"
              f" see {out / (crash['node'] + '.log')}")
    for error in summary["client_errors"]:
        print(f"FAILED: {error} (it stopped there; its operations are missing from the history)")
    for error in summary["nemesis_errors"]:
        print(f"FAILED: {error}")
    print(f"history, summary and latency plot in {out}")
    clean = not summary["crashes"] and not summary["client_errors"] and not summary["nemesis_errors"]
    return 0 if result.ok is True and clean else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
