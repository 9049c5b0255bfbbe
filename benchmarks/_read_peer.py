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
import sys
import time
from typing import Any, Awaitable, Callable

import raftlib
from benchmarks import _common
from benchmarks._common import LOG_FORMAT, STILL_RUNNING, PeerCommands, WorkerOp, emit, serve
from raftlib.cli import DemoKV


async def closed_loop(op: WorkerOp, check: Callable[[Any], bool], concurrency: int, seconds: float,
                      warmup: float) -> dict[str, Any]:
    """:func:`benchmarks._common.closed_loop`, each worker yielding to the
    event loop after every operation, a result for which ``check`` is false
    counted as ``unexpected_result``; latency as p50, p99, max and mean (0.0
    when nothing completed), and the workers still running 30 s after the end
    counted as ``workers_still_running_30s_after_the_end``."""
    result = await _common.closed_loop(op, concurrency, seconds, warmup, yield_each=True, check=check)
    lat = result["latency_ms"]
    result["latency_ms"] = {k: lat[k] or 0.0 for k in ("p50", "p99", "max", "mean")}
    errors = result["errors"]
    if STILL_RUNNING in errors:
        errors[f"workers_{STILL_RUNNING}"] = errors.pop(STILL_RUNNING)
    return result


def read_ok(result: Any) -> bool:
    return isinstance(result, list) and len(result) == 2 and result[0] == "ok"


def write_ok(result: Any) -> bool:
    return isinstance(result, list) and len(result) == 3 and result[0] == "ok"


class ReadPeer(PeerCommands):
    """The peer and the command handlers."""

    def __init__(self, peer: raftlib.Peer) -> None:
        super().__init__(peer)
        self.handlers = {
            "configure": self.configure,
            "leader": self.leader,
            "preload": self.preload,
            "wait_applied": self.wait_applied,
            "load": self.load,
            "status": self.status,
            "stop": self.stop,
        }

    async def preload(self, req: dict[str, Any]) -> dict[str, Any]:
        keys: int = req["keys"]
        outstanding: int = req.get("outstanding", 256)
        for start in range(0, keys, outstanding):
            await asyncio.gather(*(self.peer.write(["set", f"k{i}", i])
                                   for i in range(start, min(keys, start + outstanding))))
        return {"commit_index": self.peer.status()["commit_index"]}

    async def load(self, req: dict[str, Any]) -> dict[str, Any]:
        peer = self.peer
        kind: str = req["kind"]
        consistency: str = req.get("consistency", "linearizable")
        forward: bool = req.get("forward", True)
        keys: int = req.get("keys", 1000)
        op: WorkerOp
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


async def main(args: argparse.Namespace) -> None:
    started = time.time()
    peer = await raftlib.start_peer(DemoKV, name=args.name, address=args.address, data_dir=args.data_dir)
    rp = ReadPeer(peer)
    try:
        emit({"event": "ready", "pid": os.getpid(), "startup_seconds": time.time() - started})
        await serve(rp)
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
