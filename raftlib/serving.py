"""Serving :mod:`raftlib.rpc` requests on a peer's port.

Each Request frame runs in its own task, so a slow request (a membership
change waiting for a learner to catch up) does not hold up the others on the
same connection; the answers go back as they finish. The tasks of a
connection are cancelled when it closes, and all of them when the peer stops.

A stream whose request asks for keepalives (``"keepalive": seconds``, see
:data:`~raftlib.rpc.KEEPALIVE`) has one timer, which sends a keepalive at
each tick that finds nothing sent since the one before; an item sent costs
only a flag.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

from . import codec
from .config import MESSAGE_FRAMING, check_timeout
from .errors import CommandFailed, ConfigError, Overloaded, ProtocolError, RaftError
from .rpc import CANCEL, KEEPALIVE, RESPONSE, STREAM, check_request, error_to_wire
from .transport.framing import wire_problem
from .transport.tcp import Connection

if TYPE_CHECKING:
    from .runtime import Peer

MAX_REQUESTS_PER_CONNECTION = 1024
"""Requests one connection may have outstanding; more are answered with
:class:`~raftlib.errors.Overloaded` (not run)."""

MIN_KEEPALIVE_INTERVAL = 0.02
"""Shortest keepalive interval a stream may ask for; a shorter one gets this."""

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
StreamHandler = Callable[[dict[str, Any]], AsyncIterator[Any]]


def arg(args: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """``args[key]`` checked against ``kind``; raises :class:`ConfigError` naming the problem."""
    if key not in args:
        if default is ...:
            raise ConfigError(f"the request lacks {key!r}")
        return default
    value = args[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise ConfigError(f"{key!r} has the wrong type ({type(value).__name__})")
    return value


def read_failed(exc: BaseException) -> CommandFailed:
    """What a reader gets when ``handle_read`` raised ``exc``."""
    return CommandFailed(f"handle_read raised {type(exc).__name__}: {exc} (the read changed nothing)")


def hops_of(args: dict[str, Any]) -> int:
    """How many times a request was forwarded already."""
    hops: int = arg(args, "hops", int, 0)
    return hops


class RequestServer:
    """Runs the request handlers of one peer."""

    def __init__(self, peer: Peer, log: logging.Logger) -> None:
        self._log = log
        self._tasks: set[asyncio.Task[None]] = set()
        self.handlers: dict[str, Handler] = {
            "status": self._status,
            "metrics": self._metrics,
            "add_member": self._add_member,
            "remove_member": self._remove_member,
            "set_configuration": self._set_configuration,
            "transfer_leadership": self._transfer_leadership,
            "write": self._write,
            "read": self._read,
            "open_session": self._open_session,
            "close_session": self._close_session,
            "session_write": self._session_write,
        }
        self.streams: dict[str, StreamHandler] = {"listen": self._listen}
        self._peer = peer

    async def on_request(self, body: Any, conn: Connection) -> None:
        rid, op, args = check_request(body)
        mine = self._requests_of(conn)
        if rid in mine:
            raise ProtocolError(f"request id {rid} is already in use on this connection")
        if len(mine) >= MAX_REQUESTS_PER_CONNECTION:
            # Refused, not run: the caller may retry once answers come back.
            # Waiting for the send to drain stops reading from a caller that
            # does not read its answers (TCP pushes back on it).
            refusal = Overloaded(f"{MAX_REQUESTS_PER_CONNECTION} requests are outstanding on this connection")
            try:
                await conn.send_frame(RESPONSE, [rid, False, error_to_wire(refusal)])
            except (OSError, RuntimeError):
                pass  # the caller went away
            return
        task = asyncio.get_running_loop().create_task(self._serve(rid, op, args, conn), name=f"raftlib-request-{op[:32]}")
        mine[rid] = task
        conn.track(task)  # a connection waiting for an answer, or with a stream open, is not idle
        self._tasks.add(task)
        task.add_done_callback(lambda _: mine.pop(rid, None))
        task.add_done_callback(self._tasks.discard)

    async def on_cancel(self, body: Any, conn: Connection) -> None:
        """The caller gave up on a request (usually a stream): stop it."""
        if type(body) is not list or len(body) != 1 or type(body[0]) is not int:
            raise ProtocolError("Cancel body must be [id]")
        task = self._requests_of(conn).get(body[0])
        if task is not None:
            task.cancel()

    def _requests_of(self, conn: Connection) -> dict[int, asyncio.Task[None]]:
        mine: dict[int, asyncio.Task[None]] | None = getattr(conn, "_raftlib_requests", None)
        if mine is None:
            mine = {}
            setattr(conn, "_raftlib_requests", mine)
            conn.on_close.append(lambda: self._cancel(set(mine.values())))
        return mine

    async def _serve(self, rid: int, op: str, args: dict[str, Any], conn: Connection) -> None:
        handler = self.handlers.get(op)
        body: list[Any]
        try:
            if op in self.streams:
                keepalive = _Keepalive.asked(args, conn, rid)
                try:
                    async for item in self.streams[op](args):
                        if keepalive is not None:
                            keepalive.sent = True
                        await conn.send_frame(STREAM, [rid, item])
                finally:
                    if keepalive is not None:
                        keepalive.stop()
                body = [rid, True, None]
            elif handler is None:
                raise ConfigError(f"unknown request {op[:64]!r}")
            else:
                result = await handler(args)
                if op in _USER_RESULTS:
                    _check_result(op, result, self._peer.config.max_frame_size)
                body = [rid, True, result]
        except RaftError as exc:
            body = [rid, False, error_to_wire(exc)]
        except (OSError, RuntimeError) as exc:
            if conn.closed:
                return  # the caller went away mid-stream
            self._log.exception("request %s from %s failed", op[:64], conn.remote)
            body = [rid, False, error_to_wire(exc)]
        except Exception as exc:
            # An exception from the user's handle_write (the command counts as
            # applied) or handle_read (nothing changed).
            if op == "read":
                failed = read_failed(exc)
            else:
                failed = CommandFailed(f"{type(exc).__name__}: {exc}")
            body = [rid, False, error_to_wire(failed)]
        try:
            await conn.send_frame(RESPONSE, body)
        except (OSError, RuntimeError):
            pass  # the caller went away

    async def _cancel(self, tasks: set[asyncio.Task[None]] | list[asyncio.Task[None]]) -> None:
        pending = list(tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        await self._cancel(self._tasks)

    # -- handlers ------------------------------------------------------------------

    async def _status(self, args: dict[str, Any]) -> Any:
        return self._peer.status()

    async def _metrics(self, args: dict[str, Any]) -> Any:
        return self._peer.metrics()

    async def _add_member(self, args: dict[str, Any]) -> Any:
        await self._peer._add_member(
            arg(args, "name", str), arg(args, "address", str), voter=arg(args, "voter", bool, True),
            timeout=_timeout(args), hops=hops_of(args), force=arg(args, "force", bool, False),
        )
        return None

    async def _remove_member(self, args: dict[str, Any]) -> Any:
        return await self._peer._remove_member(
            arg(args, "name", str), timeout=_timeout(args), hops=hops_of(args), force=arg(args, "force", bool, False)
        )

    async def _set_configuration(self, args: dict[str, Any]) -> Any:
        members = arg(args, "members", dict)
        return await self._peer._reconfigure_to(
            members, timeout=_timeout(args), hops=hops_of(args), force=arg(args, "force", bool, False)
        )

    async def _transfer_leadership(self, args: dict[str, Any]) -> Any:
        return await self._peer.transfer_leadership(
            arg(args, "to", (str, type(None)), None), timeout=_timeout(args)
        )

    async def _write(self, args: dict[str, Any]) -> Any:
        if "command" not in args:
            raise ConfigError("the request lacks 'command'")
        return await self._peer._forwarded_write(args["command"], _timeout(args), hops_of(args))

    async def _read(self, args: dict[str, Any]) -> Any:
        if "query" not in args:
            raise ConfigError("the request lacks 'query'")
        return await self._peer._forwarded_read(
            args["query"], arg(args, "consistency", str, "linearizable"), _timeout(args), hops_of(args)
        )

    async def _open_session(self, args: dict[str, Any]) -> Any:
        await self._peer.open_session(arg(args, "client", str), _timeout(args), hops=hops_of(args))

    async def _close_session(self, args: dict[str, Any]) -> Any:
        await self._peer.close_session(arg(args, "client", str), _timeout(args), hops=hops_of(args))

    async def _session_write(self, args: dict[str, Any]) -> Any:
        if "command" not in args:
            raise ConfigError("the request lacks 'command'")
        return await self._peer.session_write(
            arg(args, "client", str), arg(args, "seq", int), args["command"], ack=arg(args, "ack", int, 0),
            timeout=_timeout(args), hops=hops_of(args),
        )

    async def _listen(self, args: dict[str, Any]) -> AsyncIterator[Any]:
        # A member cut off from the others would stall its listeners without
        # a word: the stream ends instead, and the client resumes elsewhere.
        reaching = arg(args, "reaching", (int, type(None)), None)
        room = self._peer.config.max_frame_size - MESSAGE_FRAMING
        async for change in self._peer.listen(arg(args, "from_index", int, 0), require_leader=True, reaching=reaching):
            item = [change.index, change.term, change.command, change.result, change.error]
            # The listener would refuse the frame and close the connection
            # (failing every other request on it), then resume here again.
            problem = None
            if type(change.command) in (list, dict) or type(change.result) in (list, dict):
                data = codec.pack(item, "change")
                problem = wire_problem(data) or _too_large(len(data), room)
            elif sum(len(v) for v in item[2:] if type(v) in (bytes, str)) * 4 > room:  # 4: the most bytes of a char
                problem = _too_large(len(codec.pack(item, "change")), room)
            if problem:
                raise ProtocolError(f"the change at index {change.index} cannot be sent: {problem}; "
                                    f"listen from {change.index + 1} to go past it")
            yield item


class _Keepalive:
    """Sends ``Keepalive [id]`` on a stream at each tick of its timer that
    finds nothing sent since the tick before: a stream that has nothing to
    send is heard from at least every two intervals."""

    __slots__ = ("sent", "_conn", "_rid", "_interval", "_timer")

    def __init__(self, conn: Connection, rid: int, interval: float) -> None:
        self.sent = False
        """Whether the stream sent an item since the last tick."""
        self._conn = conn
        self._rid = rid
        self._interval = interval
        self._timer = asyncio.get_running_loop().call_later(interval, self._tick)

    @classmethod
    def asked(cls, args: dict[str, Any], conn: Connection, rid: int) -> _Keepalive | None:
        """The keepalive timer the stream's request asked for, if any; raises
        :class:`ConfigError` for an interval that is not a positive number."""
        interval = arg(args, "keepalive", (int, float, type(None)), None)
        if interval is None:
            return None  # a caller that may not know Keepalive frames
        if not (math.isfinite(interval) and interval > 0):
            raise ConfigError(f"'keepalive' must be a positive number of seconds, got {interval!r}")
        return cls(conn, rid, max(MIN_KEEPALIVE_INTERVAL, interval))

    def _tick(self) -> None:
        if self._conn.closed:
            return
        if not self.sent:
            self._conn.try_send_frame(KEEPALIVE, [self._rid])
        self.sent = False
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def stop(self) -> None:
        self._timer.cancel()


_USER_RESULTS = {"write": "write", "session_write": "write", "read": "read"}
"""The requests that answer with a value of the state machine's: of ``handle_write`` or ``handle_read``."""


def unreturnable_result(kind: str, problem: str) -> CommandFailed:
    """The error for a result of ``handle_<kind>`` (``"write"`` or ``"read"``)
    that no caller can be given, at this peer or over the network; the same
    text whichever peer, client or session asked."""
    outcome = ("the write was applied on every peer, only its result cannot be returned" if kind == "write"
               else "the read changed nothing")
    return CommandFailed(f"the result of handle_{kind} cannot be returned, since a result must be able to "
                         f"cross the network: {problem}; {outcome}")


def _check_result(op: str, result: Any, max_frame_size: int) -> None:
    """Raise CommandFailed if the caller would refuse an answer carrying
    ``result``: one it cannot decode, or one larger than a frame (the caller
    would close the connection, and a client retry to the same end)."""
    kind = type(result)
    if kind in (list, dict):
        data = codec.pack(result, "result")
        problem = wire_problem(data)
        if problem:
            raise unreturnable_result(_USER_RESULTS[op], problem)
    elif kind in (bytes, str) and len(result) * 4 > max_frame_size - MESSAGE_FRAMING:  # 4: the most bytes of a char
        data = codec.pack(result, "result")
    else:
        return
    problem = _too_large(len(data), max_frame_size - MESSAGE_FRAMING)
    if problem:
        raise unreturnable_result(_USER_RESULTS[op], problem)


def _too_large(size: int, room: int) -> str | None:
    """Why a value of ``size`` bytes cannot be sent in a frame with ``room`` for it, or ``None``."""
    if size <= room:
        return None
    return (f"it is {size} bytes encoded, more than a frame carries (Config.max_frame_size less "
            f"{MESSAGE_FRAMING} bytes of framing: {room})")


def _timeout(args: dict[str, Any]) -> float | None:
    value: float | None = arg(args, "timeout", (int, float, type(None)), None)
    check_timeout(value)  # NaN too: a timer at NaN would upset the event loop's schedule
    return value
