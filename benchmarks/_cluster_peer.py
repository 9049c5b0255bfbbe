"""One raftlib peer in its own process, driven by ``python -m benchmarks``.

    python -m benchmarks._cluster_peer --name s1 --address 127.0.0.1:PORT \
        (--data-dir DIR | --storage memory)

The peer runs :class:`raftlib.cli.DemoKV` with the default ``Config``, its
log in LMDB under ``--data-dir`` (synced before anything is acknowledged) or,
with ``--storage memory``, in :class:`storage_adapters.memory.MemoryStorage`.
It speaks the line protocol of :mod:`benchmarks._snapshot_peer` (one JSON
request per line on stdin, one JSON reply per request on stdout,
``{"event": "ready"}`` once started). Every load below is generated inside
this process, on this peer's own API: for writes and linearizable reads the
peer must lead.

``configure {members}``
    :meth:`Peer.set_configuration` with ``members`` (name -> address).
``leader {within}``
    Wait for a leader (up to ``within`` s); reply ``{"leader": name}``.
``closed {kind, concurrency, seconds, warmup, value_size, keys, consistency}``
    A closed loop (:func:`closed_loop`): ``concurrency`` workers each start
    a new operation as soon as their last one returned. ``kind`` ``"write"``
    calls ``Peer.write(["set", "k<i mod keys>", value])`` with ``value`` a
    ``bytes`` of ``value_size``; ``"read"`` calls ``Peer.read(["get",
    "k<j>"], consistency=...)``. Reply with ops/s and latency percentiles.
``open {rate, seconds, warmup, value_size, keys}``
    An open loop (:func:`open_loop`): writes are started on a fixed schedule
    of ``rate`` per second whether or not earlier ones have finished; the
    latency of each is counted from the moment it was due.
``preload {keys, value_size}``
    Write ``keys`` keys (256 at a time); reply with the commit index.
``wait_applied {index, within}``
    Reply once this peer has applied ``index``.
``watch_leader {old, within}``
    Reply as soon as this peer leads, or knows of a leader other than
    ``old``, with the ``time.time()`` at which it noticed (polled every ms).
``status``
    Role, term, indexes, and memory: ``VmHWM`` (peak RSS), ``VmRSS`` and
    ``ru_maxrss``, in KiB.
``stop``
    ``Peer.stop(transfer_leadership=False)``, reply, and exit.

Logs (raftlib's, at INFO) go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import itertools
import logging
import os
import sys
import time
from typing import Any, Awaitable, Callable

import raftlib
from benchmarks import _common
from benchmarks._common import LOG_FORMAT, PeerCommands, emit, memory_kib, percentiles, serve
from raftlib.cli import DemoKV
from raftlib.errors import RaftError
from raftlib.loop import run
from storage_adapters.memory import MemoryStorage

Op = Callable[[int], Awaitable[Any]]
"""One operation of a loop: ``op(i)`` for the ``i``-th operation started."""


async def closed_loop(op: Op, concurrency: int, seconds: float, warmup: float,
                      yield_each: bool = False) -> dict[str, Any]:
    """:func:`benchmarks._common.closed_loop` with ``op(i)`` for the ``i``-th
    operation started, by any worker, retries included."""
    started = itertools.count()
    return await _common.closed_loop(lambda w, n: op(next(started)), concurrency, seconds, warmup,
                                     yield_each=yield_each)


TICK = 0.001
"""The shortest sleep of the open loop's scheduler. The standard event loop
rounds a shorter timeout up to a millisecond anyway; uvloop rounds it down to
zero, and the scheduler would spin, taking the CPU the peer needs."""


async def open_loop(start: Callable[[int], "asyncio.Future[Any]"], rate: float, seconds: float,
                    warmup: float) -> dict[str, Any]:
    """Start operations on a fixed schedule, ``rate`` per second, for
    ``warmup + seconds``, whatever the ones before are doing.

    ``start(i)`` begins operation ``i`` and returns its future (for writes,
    ``Peer.submit``: no task per operation, so the load generator itself
    stays cheap). The latency of an operation is counted from the moment it
    was due (so a stall that delays starting new operations counts against
    them: no coordinated omission), and separately from the moment it was
    actually started (``service_ms``). Only operations due in the last
    ``seconds`` count. The scheduler wakes at most about once per
    millisecond and starts everything due.
    """
    clock = time.perf_counter
    interval = 1.0 / rate
    latencies, service, late = _common.samples(), _common.samples(), _common.samples()
    errors: dict[str, int] = {}
    pending: set[asyncio.Future[Any]] = set()

    def failed(exc: BaseException) -> None:
        name = type(exc).__name__
        errors[name] = errors.get(name, 0) + 1

    def finished(fut: asyncio.Future[Any], due: float, started: float, counted: bool) -> None:
        pending.discard(fut)
        exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if exc is not None:
            failed(exc)
        elif counted:
            now = clock()
            latencies.append(now - due)
            service.append(now - started)
            late.append(started - due)

    t0 = clock()
    count_from = t0 + warmup
    end = count_from + seconds
    i = 0
    due = t0
    while due < end:
        now = clock()
        while due <= now and due < end:
            try:
                fut = start(i)
            except RaftError as exc:
                failed(exc)
            else:
                pending.add(fut)
                fut.add_done_callback(functools.partial(finished, due=due, started=now, counted=due >= count_from))
            i += 1
            due = t0 + i * interval
        await asyncio.sleep(max(TICK, due - clock()))
    issued = i
    if pending:
        _, still = await asyncio.wait(set(pending), timeout=30.0)
        if still:
            errors["still_running_30s_after_the_end"] = len(still)
            for t in still:
                t.cancel()
    completed = len(latencies)
    return {"offered_per_s": rate, "issued": issued, "completed_in_window": completed,
            "achieved_per_s": completed / seconds, "seconds": seconds,
            "latency_ms": percentiles(latencies), "service_ms": percentiles(service),
            "start_delay_ms": percentiles(late), "errors": errors}


class ClusterPeer(PeerCommands):
    """The peer and the command handlers."""

    def __init__(self, peer: raftlib.Peer, storage: str) -> None:
        super().__init__(peer)
        self.storage = storage
        self.handlers = {
            "configure": self.configure,
            "leader": self.leader,
            "closed": self.closed,
            "open": self.open,
            "preload": self.preload,
            "wait_applied": self.wait_applied,
            "watch_leader": self.watch_leader,
            "status": self.status,
            "stop": self.stop,
        }

    def write_op(self, value_size: int, keys: int) -> Op:
        peer = self.peer
        value = b"v" * value_size
        names = [f"k{j}" for j in range(keys)]

        def op(i: int) -> Awaitable[Any]:
            return peer.write(["set", names[i % keys], value])
        return op

    async def closed(self, req: dict[str, Any]) -> dict[str, Any]:
        keys: int = req.get("keys", 1000)
        if req["kind"] == "write":
            op = self.write_op(req.get("value_size", 16), keys)
            yield_each = False
        else:
            peer = self.peer
            consistency: str = req.get("consistency", "linearizable")
            queries = [["get", f"k{j}"] for j in range(keys)]

            def op(i: int) -> Awaitable[Any]:
                return peer.read(queries[(i * 7919) % keys], consistency=consistency)
            yield_each = True
        before = self.role()
        result = await closed_loop(op, req["concurrency"], req["seconds"], req.get("warmup", 1.0), yield_each)
        return {**result, "before": before, "after": self.role()}

    async def open(self, req: dict[str, Any]) -> dict[str, Any]:
        peer = self.peer
        value = b"v" * req.get("value_size", 64)
        keys: int = req.get("keys", 1000)
        names = [f"k{j}" for j in range(keys)]

        def start(i: int) -> asyncio.Future[Any]:
            return peer.submit(["set", names[i % keys], value])
        before = self.role()
        result = await open_loop(start, req["rate"], req["seconds"], req.get("warmup", 1.0))
        return {**result, "before": before, "after": self.role()}

    async def preload(self, req: dict[str, Any]) -> dict[str, Any]:
        keys: int = req["keys"]
        value = b"v" * req.get("value_size", 16)
        for start in range(0, keys, 256):
            await asyncio.gather(*(self.peer.write(["set", f"k{j}", value])
                                   for j in range(start, min(keys, start + 256))))
        return {"commit_index": self.peer.status()["commit_index"]}

    async def watch_leader(self, req: dict[str, Any]) -> dict[str, Any]:
        old: str = req["old"]
        deadline = time.monotonic() + req.get("within", 30.0)
        peer = self.peer
        while True:
            if peer.is_leader:
                return {"at": time.time(), "leader": peer.name, "self": True, "term": peer.status()["term"]}
            if peer.leader is not None and peer.leader != old:
                return {"at": time.time(), "leader": peer.leader, "self": False, "term": peer.status()["term"]}
            if time.monotonic() > deadline:
                raise TimeoutError(f"no new leader within {req.get('within', 30.0)} s")
            await asyncio.sleep(0.001)

    async def status(self, req: dict[str, Any]) -> dict[str, Any]:
        return {**await super().status(req), "storage": self.storage, "pid": os.getpid(), **memory_kib()}


async def main(args: argparse.Namespace) -> None:
    started = time.time()
    if args.storage == "memory":
        peer = await raftlib.start_peer(DemoKV, name=args.name, address=args.address, storage=MemoryStorage())
    else:
        if not args.data_dir:
            raise SystemExit("--data-dir is needed for LMDB storage")
        peer = await raftlib.start_peer(DemoKV, name=args.name, address=args.address, data_dir=args.data_dir)
    cp = ClusterPeer(peer, args.storage)
    if args.gc_freeze:
        # As a latency-sensitive service would: what exists after start-up
        # (modules, classes, the peer) is never scanned by the collector again.
        gc.freeze()
    try:
        emit({"event": "ready", "pid": os.getpid(), "startup_seconds": time.time() - started})
        await serve(cp)
    finally:
        await peer.stop(transfer_leadership=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--data-dir", default=None, help="LMDB directory (the default storage)")
    parser.add_argument("--storage", choices=("lmdb", "memory"), default="lmdb")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the event loop (see raftlib.loop.run)")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once the peer has started")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    args = parse_args()
    run(main(args), use_uvloop=args.loop == "uvloop")
