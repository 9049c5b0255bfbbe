"""What the benchmarks share: the inside of a peer process, and the driver's handle on one.

Inside a peer process (``benchmarks._cluster_peer``, ``_read_peer``,
``_snapshot_peer``; ``_pysyncobj_peer`` takes the latency and memory
helpers): the JSON-lines protocol (:func:`emit`, :func:`serve`, the commands
every raftlib peer answers in :class:`PeerCommands`), the closed loop
(:func:`closed_loop`), latency percentiles and memory from /proc.

In a driver (``python -m benchmarks``, ``benchmarks.reads``,
``benchmarks.snapshots``): :class:`PeerProcess`, which launches one peer
process, talks to it, stops and kills it, and CPU time from /proc
(:class:`CpuMeter`).
"""

from __future__ import annotations

import array
import asyncio
import json
import logging
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Self, Sequence

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


def samples() -> array.array[float]:
    """An empty list of latencies (seconds) for a load loop to append to.

    A plain ``array`` of doubles, not a ``list``: a list of a few hundred
    thousand floats is a container the garbage collector walks element by
    element in every full collection of the process it lives in, the peer
    under measurement (4 ms per full collection in a 5-s loop at 35,000
    writes/s, against 0.7 ms with an array).
    """
    return array.array("d")


def percentiles(latencies: Sequence[float]) -> dict[str, float | None]:
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
    latencies = samples()
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


# -- in a driver ---------------------------------------------------------------------------


class PeerError(RuntimeError):
    """A peer process answered a request with an error, or died."""


@dataclass
class PeerProcess:
    """The orchestrator's handle on one peer process (one JSON line per message)."""

    name: str
    address: str
    data_dir: Path
    log_path: Path
    proc: asyncio.subprocess.Process
    ready: asyncio.Future[dict[str, Any]]
    replies: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    next_id: int = 0
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def launch(cls, name: str, address: str, module: str, args: list[str], log_path: Path,
                     data_dir: Path, cwd: Path | None = None) -> Self:
        """Start ``python -m module *args`` (in ``cwd``), its stderr appended to ``log_path``."""
        with open(log_path, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, *args, cwd=cwd,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, limit=1 << 20,
            )
        try:
            peer = cls(name, address, data_dir, log_path, proc, asyncio.get_running_loop().create_future())
            peer.reader = asyncio.create_task(peer._read_replies())
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        return peer

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        return await asyncio.wait_for(asyncio.shield(self.ready), timeout)

    async def request(self, cmd: str, timeout: float | None = 60.0, **fields: Any) -> dict[str, Any]:
        """Send one command and wait for its reply; raise :class:`PeerError` on failure."""
        assert self.proc.stdin is not None
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[self.next_id] = fut
        self.proc.stdin.write(json.dumps({"id": self.next_id, "cmd": cmd, **fields}).encode() + b"\n")
        await self.proc.stdin.drain()
        reply = await asyncio.wait_for(fut, timeout)
        if not reply["ok"]:
            raise PeerError(f"{self.name}: {cmd} failed: {reply['error']} (log: {self.log_path})")
        return reply

    async def _read_replies(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            if msg.get("event") == "ready":
                if not self.ready.done():
                    self.ready.set_result(msg)
            elif (fut := self.replies.pop(msg.get("id"), None)) is not None and not fut.done():
                fut.set_result(msg)
        code = await self.proc.wait()
        gone = PeerError(f"{self.name} exited with code {code} (log: {self.log_path})")
        for fut in [self.ready, *self.replies.values()]:
            if not fut.done():
                fut.set_exception(gone)
        self.replies.clear()

    async def stop(self, timeout: float = 30.0) -> None:
        """Ask the peer to stop and wait for the process to exit; kill it if it does not."""
        if self.proc.returncode is None:
            try:
                await self.request("stop", timeout=timeout)
                await asyncio.wait_for(self.proc.wait(), timeout)
            except (PeerError, asyncio.TimeoutError, ConnectionError):
                pass
        await self.kill()

    async def kill(self) -> None:
        """SIGKILL the process if it is still running, and wait for it and for its last replies."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self.reader is not None:
            try:
                await asyncio.wait_for(self.reader, 5.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self.reader.cancel()


async def stop_all(peers: Iterable[PeerProcess]) -> None:
    """Stop every peer at once, then kill whatever :meth:`PeerProcess.stop` could not end."""
    peers = list(peers)
    await asyncio.gather(*(p.stop() for p in peers), return_exceptions=True)
    for p in peers:
        await p.kill()


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of process ``pid`` so far (all its threads), or None without /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds(interrupts: bool = True) -> float | None:
    """CPU time the whole machine spent so far (all cores, not idle or
    waiting for I/O; time stolen by the hypervisor included), or None without
    /proc. Without ``interrupts``, interrupt time is left out: it is not
    charged to any process, and loopback traffic would put the benchmark's
    own there."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    busy = user + nice + system + steal + (irq + softirq if interrupts else 0)
    return busy / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU use over an interval, in % of one core: of some processes, and of
    everything else on the machine (``outside``: other processes, this one
    included unless it is named, and with ``interrupts`` the kernel's
    interrupt work)."""

    def __init__(self, pids: dict[str, int], interrupts: bool = True) -> None:
        self.pids = pids
        self.interrupts = interrupts
        self.t0 = time.perf_counter()
        self.start = {n: cpu_seconds(p) for n, p in pids.items()}
        self.machine_start = machine_busy_seconds(interrupts)

    def percent(self) -> dict[str, float | None]:
        """Each process by name, and ``outside`` if every figure could be read."""
        elapsed = time.perf_counter() - self.t0
        out: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            now, then = cpu_seconds(pid), self.start[name]
            out[name] = None if now is None or then is None else round(100 * (now - then) / elapsed, 1)
        machine_now = machine_busy_seconds(self.interrupts)
        if machine_now is not None and self.machine_start is not None and None not in out.values():
            ours = sum(v for v in out.values() if v is not None)
            out["outside"] = max(0.0, round(100 * (machine_now - self.machine_start) / elapsed - ours, 1))
        return out


def sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    """The counts (of errors, by kind) of several runs added up."""
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write a results file (its directory made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
