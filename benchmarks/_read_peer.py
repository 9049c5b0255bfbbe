"""One raftlib peer in its own process, driven by :mod:`benchmarks.reads`.

    python -m benchmarks._read_peer --name s1 --address 127.0.0.1:PORT --data-dir DIR

The peer runs :class:`raftlib.cli.DemoKV` with the default ``Config`` and
LMDB under ``--data-dir``. It speaks the line protocol of
:mod:`benchmarks._snapshot_peer` (one JSON request per line on stdin, one
JSON reply per request on stdout, ``{"event": "ready"}`` once started).
Commands:

``configure {members}``
    :meth:`Peer.set_configuration` with ``members`` (name -> address).
``leader {within}``
    Wait for a leader (up to ``within`` s); reply ``{"leader": name}``.
``preload {keys, outstanding}``
    Write ``["set", "k<i>", i]`` for ``i`` in ``range(keys)`` through this
    peer, ``outstanding`` at a time; reply with the last commit index.
``wait_applied {index, within}``
    Reply once this peer has applied ``index`` (fail after ``within`` s).
``load {kind, consistency, forward, concurrency, seconds, warmup, keys}``
    A closed loop (:func:`closed_loop`) on this peer's own API:
    ``kind`` ``"read"`` calls ``Peer.read(["get", "k<j>"],
    consistency=..., forward=...)``, ``"write"`` calls
    ``Peer.write(["set", "w<worker>", n], forward=...)``. Reply with the
    counts, ops/s, latency percentiles, errors, and this peer's role and
    term before and after.
``status``
    :meth:`Peer.status` without the member list.
``stop``
    ``Peer.stop(transfer_leadership=False)`` (the whole cluster is being
    stopped: no point handing leadership to a peer that is stopping too),
    reply, and exit.

Logs (raftlib's, at INFO) go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from typing import Any, Awaitable, Callable

import raftlib
from benchmarks._snapshot_peer import LOG_FORMAT, emit, serve
from raftlib.cli import DemoKV
from raftlib.errors import RaftError

Op = Callable[[int, int], Awaitable[Any]]
"""One operation of a closed loop: ``op(worker, n)`` for the worker's ``n``-th call."""


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def closed_loop(op: Op, check: Callable[[Any], bool], concurrency: int, seconds: float,
                      warmup: float) -> dict[str, Any]:
    """Run ``concurrency`` workers, each calling ``op`` again as soon as the
    previous call returned, for ``warmup + seconds``; count what completes in
    the last ``seconds``.

    Each worker yields to the event loop after every operation
    (``asyncio.sleep(0)``), as a server answering requests would: a stale
    read is answered without suspending, so a loop of them would otherwise
    hold the event loop and starve the peer's own tasks. A failed operation
    is counted by exception type and retried after 1 ms; a result for which
    ``check`` is false counts as ``unexpected_result``.
    """
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counting = False
    stopping = False

    async def worker(w: int) -> None:
        n = 0
        while not stopping:
            started = time.perf_counter()
            try:
                result = await op(w, n)
            except RaftError as exc:
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
                await asyncio.sleep(0.001)
                continue
            n += 1
            if not check(result):
                errors["unexpected_result"] = errors.get("unexpected_result", 0) + 1
            elif counting:
                latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        warmup_errors = dict(errors)
        errors.clear()
        counting = True
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        counting = False
        elapsed = time.perf_counter() - t0
        ops = len(latencies)
        stopping = True
        # Let every operation in flight finish rather than cancel it.
        done, pending = await asyncio.wait(tasks, timeout=30.0)
        for t in done:
            t.result()
        if pending:
            errors["workers_still_running_30s_after_the_end"] = len(pending)
    finally:
        stopping = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies.sort()
    ms = 1000.0
    return {
        "ops": ops,
        "seconds": elapsed,
        "ops_per_s": ops / elapsed,
        "latency_ms": {
            "p50": (percentile(latencies, 0.50) or 0.0) * ms,
            "p99": (percentile(latencies, 0.99) or 0.0) * ms,
            "max": (latencies[-1] if latencies else 0.0) * ms,
            "mean": (statistics.fmean(latencies) if latencies else 0.0) * ms,
        },
        "errors": errors,
        "warmup_errors": warmup_errors,
    }


def read_ok(result: Any) -> bool:
    return isinstance(result, list) and len(result) == 2 and result[0] == "ok"


def write_ok(result: Any) -> bool:
    return isinstance(result, list) and len(result) == 3 and result[0] == "ok"


class ReadPeer:
    """The peer and the command handlers."""

    def __init__(self, peer: raftlib.Peer) -> None:
        self.peer = peer
        self.stopped = asyncio.Event()
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "configure": self.configure,
            "leader": self.leader,
            "preload": self.preload,
            "wait_applied": self.wait_applied,
            "load": self.load,
            "status": self.status,
            "stop": self.stop,
        }

    async def configure(self, req: dict[str, Any]) -> dict[str, Any]:
        await self.peer.set_configuration(req["members"])
        return {}

    async def leader(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"leader": await self.peer.wait_for_leader(timeout=req.get("within", 30.0))}

    async def preload(self, req: dict[str, Any]) -> dict[str, Any]:
        keys: int = req["keys"]
        outstanding: int = req.get("outstanding", 256)
        for start in range(0, keys, outstanding):
            await asyncio.gather(*(self.peer.write(["set", f"k{i}", i])
                                   for i in range(start, min(keys, start + outstanding))))
        return {"commit_index": self.peer.status()["commit_index"]}

    async def wait_applied(self, req: dict[str, Any]) -> dict[str, Any]:
        index: int = req["index"]
        deadline = time.monotonic() + req.get("within", 60.0)
        while self.peer.status()["applied_index"] < index:
            if time.monotonic() > deadline:
                raise TimeoutError(f"applied index {self.peer.status()['applied_index']} < {index}")
            await asyncio.sleep(0.005)
        return {}

    def role(self) -> dict[str, Any]:
        s = self.peer.status()
        return {"role": s["role"], "term": s["term"], "leader": s["leader"]}

    async def load(self, req: dict[str, Any]) -> dict[str, Any]:
        peer = self.peer
        kind: str = req["kind"]
        consistency: str = req.get("consistency", "linearizable")
        forward: bool = req.get("forward", True)
        keys: int = req.get("keys", 1000)
        op: Op
        if kind == "read":
            queries = [["get", f"k{i}"] for i in range(keys)]

            def op(w: int, n: int) -> Awaitable[Any]:
                return peer.read(queries[(w * 7919 + n) % keys], consistency=consistency, forward=forward)
            check = read_ok
        elif kind == "write":
            def op(w: int, n: int) -> Awaitable[Any]:
                return peer.write(["set", f"w{w}", n], forward=forward)
            check = write_ok
        else:
            raise ValueError(f"unknown kind {kind!r}")
        before = self.role()
        result = await closed_loop(op, check, req["concurrency"], req["seconds"], req.get("warmup", 0.5))
        return {**result, "before": before, "after": self.role()}

    async def status(self, req: dict[str, Any]) -> dict[str, Any]:
        status = self.peer.status()
        status.pop("members", None)
        return status

    async def stop(self, req: dict[str, Any]) -> dict[str, Any]:
        await self.peer.stop(transfer_leadership=False)
        self.stopped.set()
        return {}


async def main(args: argparse.Namespace) -> None:
    started = time.time()
    peer = await raftlib.start_peer(DemoKV, name=args.name, address=args.address, data_dir=args.data_dir)
    rp = ReadPeer(peer)
    try:
        emit({"event": "ready", "pid": os.getpid(), "startup_seconds": time.time() - started})
        await serve(rp)  # type: ignore[arg-type]  # duck-typed: handlers and stopped
    finally:
        await peer.stop(transfer_leadership=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--data-dir", required=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    asyncio.run(main(parse_args()))
