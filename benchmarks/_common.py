"""What the benchmarks share inside a peer process.

``benchmarks._cluster_peer``, ``_read_peer`` and ``_snapshot_peer`` (and,
for the latency and memory helpers, ``_pysyncobj_peer``): the JSON-lines
protocol (:func:`emit`, :func:`serve`, the commands every raftlib peer
answers in :class:`PeerCommands`), the closed loop (:func:`closed_loop`),
latency percentiles and memory from /proc.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import statistics
import sys
import time
from typing import Any, Awaitable, Callable

import raftlib
from raftlib.errors import RaftError

# -- inside a peer process ---------------------------------------------------------------

LOG_FORMAT = "%(created).3f %(name)s %(levelname)s %(message)s"
"""Log line format of the peer processes; the drivers parse the leading ``time.time()`` stamp."""

WorkerOp = Callable[[int, int], Awaitable[Any]]
"""One operation of a closed loop: ``op(worker, n)``, ``n`` counting the worker's operations that did not fail."""

STILL_RUNNING = "still_running_30s_after_the_end"
"""The error counted for the workers of a closed loop that had not finished 30 s after its end."""

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""A peer process's command: the request in, the fields of its reply out."""


def percentiles(latencies: list[float]) -> dict[str, float | None]:
    """p50, p99, p999, max and mean of ``latencies`` (seconds), in ms."""
    if not latencies:
        return {"p50": None, "p99": None, "p999": None, "max": None, "mean": None}
    s = sorted(latencies)

    def at(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] * 1000.0

    return {"p50": at(0.50), "p99": at(0.99), "p999": at(0.999), "max": s[-1] * 1000.0,
            "mean": statistics.fmean(s) * 1000.0}


def maxrss_kib() -> int:
    """This process's peak resident set size, in KiB on Linux."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def proc_status_kib(wanted: dict[str, str], pid: int | str = "self") -> dict[str, int]:
    """The fields of ``/proc/<pid>/status`` named in ``wanted`` (as ``"VmRSS:"``,
    mapped to the key to return each under), in KiB; empty without /proc."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in wanted:
                    found[wanted[parts[0]]] = int(parts[1])
    except OSError:
        pass
    return found


def memory_kib() -> dict[str, int]:
    """Peak (``VmHWM``) and current (``VmRSS``) resident set size from
    /proc, and ``ru_maxrss``, all in KiB."""
    return {"ru_maxrss_kib": maxrss_kib(), **proc_status_kib({"VmHWM:": "vmhwm_kib", "VmRSS:": "vmrss_kib"})}


async def closed_loop(op: WorkerOp, concurrency: int, seconds: float, warmup: float, *,
                      yield_each: bool = False, check: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    """Run ``concurrency`` workers, each calling ``op`` again as soon as its
    previous call returned, for ``warmup + seconds``; count what completes in
    the last ``seconds``.

    With ``yield_each`` a worker yields to the event loop after every
    operation (``asyncio.sleep(0)``), as a server answering requests would:
    a stale read never suspends, so a loop of them would otherwise hold the
    event loop and starve the peer's own tasks. A failed operation is counted
    by exception type and retried after 1 ms; with ``check``, a result for
    which it is false counts as ``unexpected_result``. Operations still in
    flight at the end are allowed to finish (up to 30 s), not cancelled.
    """
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counting = False
    stopping = False
    clock = time.perf_counter

    async def worker(w: int) -> None:
        n = 0
        while not stopping:
            t = clock()
            try:
                result = await op(w, n)
            except RaftError as exc:
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
                await asyncio.sleep(0.001)
                continue
            n += 1
            if check is not None and not check(result):
                errors["unexpected_result"] = errors.get("unexpected_result", 0) + 1
            elif counting:
                latencies.append(clock() - t)
            if yield_each:
                await asyncio.sleep(0)

    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        warmup_errors = dict(errors)
        errors.clear()
        counting = True
        t0 = clock()
        await asyncio.sleep(seconds)
        counting = False
        elapsed = clock() - t0
        ops = len(latencies)
        stopping = True
        done, pending = await asyncio.wait(tasks, timeout=30.0)
        for task in done:
            task.result()
        if pending:
            errors[STILL_RUNNING] = len(pending)
    finally:
        stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"ops": ops, "seconds": elapsed, "ops_per_s": ops / elapsed, "latency_ms": percentiles(latencies),
            "errors": errors, "warmup_errors": warmup_errors}


class PeerCommands:
    """The commands every raftlib peer process answers, and what :func:`serve`
    needs: ``handlers`` (command name -> :data:`Handler`, filled in by each
    peer) and ``stopped``, set once the peer has stopped.

    ``configure {members}``: :meth:`Peer.set_configuration`. ``leader
    {within}``: wait for a leader, reply ``{"leader": name}``.
    ``wait_applied {index, within}``: reply once this peer has applied
    ``index``. ``status``: :meth:`Peer.status` without the member list.
    ``stop``: ``Peer.stop(transfer_leadership=False)``.
    """

    handlers: dict[str, Handler]

    def __init__(self, peer: raftlib.Peer) -> None:
        self.peer = peer
        self.stopped = asyncio.Event()

    async def configure(self, req: dict[str, Any]) -> dict[str, Any]:
        await self.peer.set_configuration(req["members"])
        return {}

    async def leader(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"leader": await self.peer.wait_for_leader(timeout=req.get("within", 30.0))}

    def role(self) -> dict[str, Any]:
        s = self.peer.status()
        return {"role": s["role"], "term": s["term"], "leader": s["leader"]}

    async def until_applied(self, index: int, within: float) -> None:
        """Return once this peer has applied ``index``; raise TimeoutError after ``within`` s."""
        deadline = time.monotonic() + within
        while self.peer.status()["applied_index"] < index:
            if time.monotonic() > deadline:
                raise TimeoutError(f"applied index {self.peer.status()['applied_index']} < {index}")
            await asyncio.sleep(0.005)

    async def wait_applied(self, req: dict[str, Any]) -> dict[str, Any]:
        await self.until_applied(req["index"], req.get("within", 60.0))
        return {}

    async def status(self, req: dict[str, Any]) -> dict[str, Any]:
        status = self.peer.status()
        status.pop("members", None)
        return status

    async def stop(self, req: dict[str, Any]) -> dict[str, Any]:
        await self.peer.stop(transfer_leadership=False)
        self.stopped.set()
        return {}


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def failed(req: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """Log that the command ``req`` raised ``exc`` (call it where it is caught), and return the reply that says so."""
    logging.getLogger("bench").warning("command %s failed: %r", req.get("cmd"), exc, exc_info=True)
    return {"id": req.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"}


async def serve(pp: PeerCommands) -> None:
    """Answer the requests on stdin, each in its own task, until the peer has
    stopped or stdin is closed; then wait for the requests still running."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def handle(req: dict[str, Any]) -> None:
        try:
            reply = await pp.handlers[req["cmd"]](req)
            emit({"id": req["id"], "ok": True, **reply})
        except Exception as exc:
            emit(failed(req, exc))

    tasks: set[asyncio.Task[None]] = set()
    stop_wait = asyncio.ensure_future(pp.stopped.wait())
    try:
        while not pp.stopped.is_set():
            read = asyncio.ensure_future(reader.readline())
            await asyncio.wait({read, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                read.cancel()
                break
            line = read.result()
            if not line:  # the orchestrator went away
                break
            task = asyncio.ensure_future(handle(json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    finally:
        stop_wait.cancel()
