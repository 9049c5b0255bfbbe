"""One PySyncObj node in its own process, driven by ``python -m benchmarks``.

    python -m benchmarks._pysyncobj_peer --self 127.0.0.1:PORT --partner 127.0.0.1:PORT ... \
        --mode memory|journal|journal-flushed|journal-flushed-each [--dir DIR]

The node is set up as in PySyncObj's own benchmark (``benchmarks/testobj.py``
in its repository): a ``SyncObj`` subclass with one ``@replicated`` method,
``SyncObjConf(appendEntriesUseBatch=True)`` (batching on, the default), the
commands issued with ``callback=`` and completions counted in the callback.
The method stores ``value`` under ``key`` in a dict and returns
``["ok", key, value]``, the same work as ``raftlib.cli.DemoKV``'s ``set``.
Everything else is PySyncObj's default configuration.

Modes (the log's storage):

``memory``
    no ``journalFile``: the log lives in memory (PySyncObj's fastest mode).
``journal``
    ``journalFile`` and ``fullDumpFile`` in ``--dir``, as shipped. The
    journal is a memory-mapped file that PySyncObj (0.3.x) writes into but
    never flushes while running (``mmap.flush`` runs only when the node is
    destroyed): it survives a killed process but not a crash of the machine.
    ``SyncObjConf`` has no option to flush it.
``journal-flushed``
    as ``journal``, and the journal is flushed (``mmap.flush()``, an
    ``msync(MS_SYNC)``) whenever it has changed before any message leaves the
    node: a follower's acknowledgement, or the leader's AppendEntries that
    lets followers acknowledge. So nothing is acknowledged or committed
    before it is on disk, with one flush per batch (a group commit). This is
    done here, by a ``FileJournal`` subclass and a ``TCPTransport``
    subclass, since PySyncObj has no setting for it.
``journal-flushed-each``
    as ``journal``, flushed after every entry appended.

Protocol: one JSON request per line on stdin, one JSON reply per request on
stdout (``{"id": N, "ok": true, ...}``), ``{"event": "ready"}`` once the node
exists. Requests are handled each in its own thread. Commands:

``status``
    ``{"is_leader", "leader", "term", "commit_idx", "connected", ...}`` and
    memory (``vmhwm_kib``, ``vmrss_kib``, ``ru_maxrss_kib``).
``closed {concurrency, seconds, warmup, value_size, keys}``
    The closed loop: ``concurrency`` commands are issued at once, and each
    completion callback issues the next one. Reply with the completions per
    second over the last ``seconds`` and their latency percentiles.
``stop``
    ``destroy()`` the node, reply and exit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Callable

import pysyncobj
import pysyncobj.syncobj
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.journal import FileJournal
from pysyncobj.transport import TCPTransport
from pysyncobj.version import VERSION as PYSYNCOBJ_VERSION

from benchmarks._common import LOG_FORMAT, failed, memory_kib, percentiles, samples

_emit_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    with _emit_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class FlushingJournal(FileJournal):  # type: ignore[misc]
    """A ``FileJournal`` that remembers whether it changed since its last
    flush, and with ``each`` flushes after every entry."""

    each = False
    flushes = 0

    def __init__(self, journalFile: str) -> None:
        super().__init__(journalFile)
        self.dirty = False

    def add(self, command: Any, idx: int, term: int) -> None:
        super().add(command, idx, term)
        if FlushingJournal.each:
            self.flush_now()
        else:
            self.dirty = True

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        super().deleteEntriesFrom(entryFrom)
        self.dirty = True

    def clear(self) -> None:
        super().clear()
        self.dirty = True

    def flush_now(self) -> None:
        self.flush()
        self.dirty = False
        FlushingJournal.flushes += 1


class FlushBeforeSendTransport(TCPTransport):  # type: ignore[misc]
    """Flushes the node's journal, if it changed, before sending anything."""

    def send(self, node: Any, message: Any) -> Any:
        journal = getattr(self._syncObj, "_SyncObj__raftLog", None)
        if isinstance(journal, FlushingJournal) and journal.dirty:
            journal.flush_now()
        return super().send(node, message)


class BenchObj(SyncObj):  # type: ignore[misc]
    def __init__(self, self_addr: str, partners: list[str], conf: SyncObjConf, transport_class: type) -> None:
        super().__init__(self_addr, partners, conf, transportClass=transport_class)
        self.__data: dict[str, Any] = {}
        self.__applied = 0

    @replicated  # type: ignore[untyped-decorator]
    def set(self, key: str, value: Any) -> list[Any]:
        self.__data[key] = value
        self.__applied += 1
        return ["ok", key, value]

    def applied(self) -> int:
        return self.__applied


class Node:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        kwargs: dict[str, Any] = {"appendEntriesUseBatch": True}
        transport: type = TCPTransport
        if args.mode != "memory":
            if not args.dir:
                raise SystemExit("--dir is needed for the journal modes")
            kwargs["journalFile"] = os.path.join(args.dir, "journal.bin")
            kwargs["fullDumpFile"] = os.path.join(args.dir, "dump.bin")
        if args.mode in ("journal-flushed", "journal-flushed-each"):
            # SyncObj.__init__ calls pysyncobj.syncobj.createJournal(journalFile).
            pysyncobj.syncobj.createJournal = lambda path: FlushingJournal(path) if path else None
            FlushingJournal.each = args.mode == "journal-flushed-each"
            transport = FlushBeforeSendTransport
        self.conf_kwargs = kwargs
        self.obj = BenchObj(args.self_addr, args.partner, SyncObjConf(**kwargs), transport)
        self.stopped = threading.Event()
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "status": self.status, "closed": self.closed, "stop": self.stop,
        }

    def status(self, req: dict[str, Any]) -> dict[str, Any]:
        obj = self.obj
        leader = obj._getLeader()
        st = obj.getStatus()
        connected = all(v == 2 for k, v in st.items() if k.startswith("partner_node_status_server_"))
        return {"is_leader": obj._isLeader(), "leader": None if leader is None else str(leader),
                "term": st["raft_term"], "commit_idx": st["commit_idx"], "last_applied": st["last_applied"],
                "log_len": st["log_len"], "connected": connected, "has_quorum": st["has_quorum"],
                "applied": obj.applied(), "journal_flushes": FlushingJournal.flushes,
                "mode": self.args.mode, "conf": self.conf_kwargs, "pysyncobj_version": PYSYNCOBJ_VERSION,
                "pid": os.getpid(), **memory_kib()}

    def closed(self, req: dict[str, Any]) -> dict[str, Any]:
        obj = self.obj
        concurrency: int = req["concurrency"]
        seconds: float = req["seconds"]
        warmup: float = req.get("warmup", 1.0)
        keys: int = req.get("keys", 1000)
        value = b"v" * req.get("value_size", 64)
        names = [f"k{j}" for j in range(keys)]
        counter = itertools.count()
        clock = time.perf_counter
        latencies = samples()
        errors: dict[str, int] = {}
        state = {"counting": False, "stopping": False}
        in_flight = [0]
        lock = threading.Lock()
        all_done = threading.Event()
        before = self.status({})

        def issue() -> None:
            i = next(counter)
            with lock:
                in_flight[0] += 1
            started = clock()
            obj.set(names[i % keys], value, callback=lambda res, err: done(err, started))

        def done(err: int, started: float) -> None:
            if err == FAIL_REASON.SUCCESS:
                if state["counting"]:
                    latencies.append(clock() - started)
            else:
                errors[str(err)] = errors.get(str(err), 0) + 1
            with lock:
                in_flight[0] -= 1
                left = in_flight[0]
            if not state["stopping"]:
                issue()
            elif left == 0:
                all_done.set()

        for _ in range(concurrency):
            issue()
        time.sleep(warmup)
        warmup_errors = dict(errors)
        errors.clear()
        state["counting"] = True
        t0 = clock()
        time.sleep(seconds)
        state["counting"] = False
        elapsed = clock() - t0
        ops = len(latencies)
        state["stopping"] = True
        if not all_done.wait(30.0):
            errors["still_running_30s_after_the_end"] = in_flight[0]
        return {"ops": ops, "seconds": elapsed, "ops_per_s": ops / elapsed, "latency_ms": percentiles(latencies),
                "errors": errors, "warmup_errors": warmup_errors,
                "before": {k: before[k] for k in ("is_leader", "leader", "term")},
                "after": {k: v for k, v in self.status({}).items() if k in ("is_leader", "leader", "term")}}

    def stop(self, req: dict[str, Any]) -> dict[str, Any]:
        self.obj.destroy()
        self.stopped.set()
        return {}


def main(args: argparse.Namespace) -> None:
    node = Node(args)
    emit({"event": "ready", "pid": os.getpid()})

    def handle(req: dict[str, Any]) -> None:
        try:
            reply = node.handlers[req["cmd"]](req)
            emit({"id": req["id"], "ok": True, **reply})
        except Exception as exc:
            emit(failed(req, exc))

    threads: list[threading.Thread] = []
    try:
        for line in sys.stdin:
            req = json.loads(line)
            t = threading.Thread(target=handle, args=(req,), daemon=True)
            t.start()
            threads.append(t)
            if req.get("cmd") == "stop":
                t.join(30.0)
                break
    finally:
        if not node.stopped.is_set():
            node.obj.destroy()
        time.sleep(0.2)  # let the tick thread close the sockets and the journal


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--self", dest="self_addr", required=True)
    parser.add_argument("--partner", action="append", required=True)
    parser.add_argument("--mode", choices=("memory", "journal", "journal-flushed", "journal-flushed-each"),
                        default="memory")
    parser.add_argument("--dir", default=None, help="where the journal modes keep their files")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    main(parse_args())
