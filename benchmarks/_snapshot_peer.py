"""One raftlib peer in its own process, driven by :mod:`benchmarks.snapshots`.

    python -m benchmarks._snapshot_peer --name s1 --address 127.0.0.1:PORT --data-dir DIR \
        [--snapshot-entries N] [--keep N]

The orchestrator talks to it with one JSON object per line. Requests arrive
on stdin as ``{"id": 7, "cmd": "status"}``; each gets exactly one reply on
stdout, ``{"id": 7, "ok": true, ...}`` or ``{"id": 7, "ok": false, "error":
"..."}``. Requests run concurrently. Once the peer has started the process
prints ``{"event": "ready", ...}`` unprompted. Commands:

``configure {members}``
    :meth:`Peer.set_configuration` with ``members`` (name -> address).
``leader {within}``
    Wait for a leader (up to ``within`` s); reply ``{"leader": name}``.
``bench {n, outstanding, key_prefix, key_space, value_size}``
    Write ``n`` commands ``["set", key, value]`` from inside this process
    (it must lead), at most ``outstanding`` in flight. Keys cycle over
    ``key_space`` names if it is positive, else they are all distinct; the
    value is the integer ``i`` if ``value_size`` is 0, else a string of that
    many characters. Reply with the elapsed seconds and ops/s.
``wait_applied {index, within}``
    Reply once this peer has applied ``index`` (fail after ``within`` s).
``status``
    :meth:`Peer.status` plus what is on disk (log entries, their sampled
    peak), snapshot and restore history, and memory (``ru_maxrss`` and the
    current ``VmRSS``, ``RssAnon`` and ``RssFile``, all KiB).
``stop``
    :meth:`Peer.stop`, reply, and exit.

Logs (raftlib's, at INFO, with ``time.time()`` stamps) go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import Any, BinaryIO

import msgpack

import raftlib
from benchmarks._common import LOG_FORMAT, PeerCommands, emit, maxrss_kib, proc_status_kib, serve
from raftlib.errors import RaftError
from storage_adapters.lmdb import LMDBStorage


class KVStore(raftlib.StateMachine):
    """A dict under Raft; snapshots are msgpack of the whole dict.

    Records every snapshot and restore (when, how many bytes, how long), so
    the orchestrator can tell a streamed snapshot from a log replay.
    """

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.snapshots: list[dict[str, float]] = []
        self.restores: list[dict[str, float]] = []
        self._maxrss_before_restore = 0

    def handle_write(self, command: Any) -> Any:
        op, key, value = command
        if op != "set":
            return ["error", "unknown_op"]
        self.data[key] = value
        return True

    def handle_read(self, query: Any) -> Any:
        _, key = query
        return self.data.get(key)

    def snapshot(self) -> bytes:
        started = time.perf_counter()
        data: bytes = msgpack.packb(self.data)
        self.snapshots.append({"time": time.time(), "bytes": len(data), "seconds": time.perf_counter() - started})
        return data

    def restore_from_file(self, file: BinaryIO) -> None:
        # The peak RSS before the file is read: for a follower that was just
        # sent a snapshot, this covers start-up and the whole transfer.
        self._maxrss_before_restore = maxrss_kib()
        super().restore_from_file(file)

    def restore(self, data: bytes) -> None:
        started = time.perf_counter()
        self.data = msgpack.unpackb(data)
        self.restores.append({"time": time.time(), "bytes": len(data), "keys": len(self.data),
                              "seconds": time.perf_counter() - started,
                              "ru_maxrss_before_kib": self._maxrss_before_restore,
                              "ru_maxrss_after_kib": maxrss_kib()})


def rss_kib() -> dict[str, int]:
    """This process's resident set size now (``VmRSS``) and its anonymous
    (heap) and file-backed (the LMDB map) parts, in KiB; empty without /proc."""
    return proc_status_kib({"VmRSS:": "vmrss_kib", "RssAnon:": "rss_anon_kib", "RssFile:": "rss_file_kib"})


class PeerProcess(PeerCommands):
    """The peer, its storage (kept to count log entries) and the command handlers."""

    def __init__(self, peer: raftlib.Peer, storage: LMDBStorage, kv: KVStore, started: float) -> None:
        super().__init__(peer)
        self.storage = storage
        self.kv = kv
        self.started = started
        self.max_log_entries = self.log_entries()
        self.handlers = {
            "configure": self.configure,
            "leader": self.leader,
            "bench": self.bench,
            "wait_applied": self.wait_applied,
            "status": self.status,
            "stop": self.stop,
        }

    def log_entries(self) -> int:
        return self.storage.last_index() - self.storage.first_index() + 1

    async def sample_log(self, interval: float = 0.02) -> None:
        """Track the peak number of log entries on disk."""
        while True:
            self.max_log_entries = max(self.max_log_entries, self.log_entries())
            await asyncio.sleep(interval)

    async def bench(self, req: dict[str, Any]) -> dict[str, Any]:
        n: int = req["n"]
        outstanding: int = req["outstanding"]
        prefix: str = req.get("key_prefix", "k")
        key_space: int = req.get("key_space", 0)
        value_size: int = req.get("value_size", 0)
        pad = "v" * max(0, value_size - 10)
        peer = self.peer
        next_i = 0
        errors: dict[str, int] = {}

        async def writer() -> None:
            nonlocal next_i
            while next_i < n:
                i = next_i
                next_i += 1
                key = f"{prefix}{i % key_space if key_space > 0 else i}"
                value: Any = f"{i:010d}{pad}" if value_size else i
                try:
                    await peer.write(["set", key, value])
                except RaftError as exc:
                    name = type(exc).__name__
                    errors[name] = errors.get(name, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(min(outstanding, n))))
        seconds = time.perf_counter() - started
        return {"n": n, "seconds": seconds, "ops_per_s": n / seconds, "errors": errors}

    async def wait_applied(self, req: dict[str, Any]) -> dict[str, Any]:
        await self.until_applied(req["index"], req.get("within", 600.0))
        now = time.time()
        return {"time": now, "seconds_since_start": now - self.started}

    async def status(self, req: dict[str, Any]) -> dict[str, Any]:
        status = await super().status(req)
        self.max_log_entries = max(self.max_log_entries, self.log_entries())
        return {
            **status,
            "first_index": self.storage.first_index(),
            "log_entries": self.log_entries(),
            "max_log_entries": self.max_log_entries,
            "keys": len(self.kv.data),
            "snapshots_taken": len(self.kv.snapshots),
            "last_snapshot": self.kv.snapshots[-1] if self.kv.snapshots else None,
            "restores": self.kv.restores,
            "ru_maxrss_kib": maxrss_kib(),
            **rss_kib(),
        }

    async def stop(self, req: dict[str, Any]) -> dict[str, Any]:
        await self.peer.stop()  # unlike the other peers, hands leadership over first
        self.stopped.set()
        return {}


async def main(args: argparse.Namespace) -> None:
    started = time.time()
    config = raftlib.Config(snapshot_entries=args.snapshot_entries, snapshot_keep_entries=args.keep)
    storage = await asyncio.to_thread(LMDBStorage, args.data_dir)
    kv = KVStore()
    peer = await raftlib.start_peer(kv, name=args.name, address=args.address, data_dir=args.data_dir,
                                   storage=storage, config=config)
    pp = PeerProcess(peer, storage, kv, started)
    sampler = asyncio.ensure_future(pp.sample_log())
    try:
        emit({"event": "ready", "pid": os.getpid(), "startup_seconds": time.time() - started,
              **await pp.status({})})
        await serve(pp)
    finally:
        sampler.cancel()
        await peer.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = raftlib.Config()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--snapshot-entries", type=int, default=defaults.snapshot_entries)
    parser.add_argument("--keep", type=int, default=defaults.snapshot_keep_entries)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    asyncio.run(main(parse_args()))
