"""Serving :mod:`raftlib.rpc` requests on a peer's port.

Each Request frame runs in its own task, so a slow request (a membership
change waiting for a learner to catch up) does not hold up the others on the
same connection; the answers go back as they finish. The tasks of a
connection are cancelled when it closes, and all of them when the peer stops.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .errors import ConfigError, ProtocolError, RaftError
from .rpc import RESPONSE, check_request, error_to_wire
from .transport.tcp import Connection

if TYPE_CHECKING:
    from .runtime import Peer

MAX_REQUESTS_PER_CONNECTION = 1024
"""Requests one connection may have outstanding; more close the connection."""

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


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
            "add_member": self._add_member,
            "remove_member": self._remove_member,
            "set_configuration": self._set_configuration,
            "transfer_leadership": self._transfer_leadership,
        }
        self._peer = peer

    async def on_request(self, body: Any, conn: Connection) -> None:
        rid, op, args = check_request(body)
        mine = getattr(conn, "_raftlib_requests", None)
        if mine is None:
            mine = set()
            setattr(conn, "_raftlib_requests", mine)
            conn.on_close.append(lambda: self._cancel(mine))
        if len(mine) >= MAX_REQUESTS_PER_CONNECTION:
            raise ProtocolError(f"more than {MAX_REQUESTS_PER_CONNECTION} requests outstanding on one connection")
        task = asyncio.get_running_loop().create_task(self._serve(rid, op, args, conn), name=f"raftlib-request-{op[:32]}")
        mine.add(task)
        self._tasks.add(task)
        task.add_done_callback(mine.discard)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, rid: int, op: str, args: dict[str, Any], conn: Connection) -> None:
        handler = self.handlers.get(op)
        try:
            if handler is None:
                raise ConfigError(f"unknown request {op[:64]!r}")
            body = [rid, True, await handler(args)]
        except RaftError as exc:
            body = [rid, False, error_to_wire(exc)]
        except Exception as exc:
            self._log.exception("request %s from %s failed", op[:64], conn.remote)
            body = [rid, False, error_to_wire(exc)]
        try:
            await conn.send_frame(RESPONSE, body)
        except (OSError, RuntimeError):
            pass  # the caller went away

    async def _cancel(self, tasks: set[asyncio.Task[None]]) -> None:
        pending = list(tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        await self._cancel(self._tasks)

    # -- handlers ------------------------------------------------------------------

    async def _status(self, args: dict[str, Any]) -> Any:
        return self._peer.status()

    async def _add_member(self, args: dict[str, Any]) -> Any:
        await self._peer._add_member(
            arg(args, "name", str), arg(args, "address", str), voter=arg(args, "voter", bool, True),
            timeout=arg(args, "timeout", (int, float, type(None)), None), hops=hops_of(args),
        )
        return None

    async def _remove_member(self, args: dict[str, Any]) -> Any:
        await self._peer._remove_member(
            arg(args, "name", str), timeout=arg(args, "timeout", (int, float, type(None)), None), hops=hops_of(args)
        )
        return None

    async def _set_configuration(self, args: dict[str, Any]) -> Any:
        members = arg(args, "members", dict)
        await self._peer._reconfigure_to(
            members, timeout=arg(args, "timeout", (int, float, type(None)), None), hops=hops_of(args)
        )
        return None

    async def _transfer_leadership(self, args: dict[str, Any]) -> Any:
        return await self._peer.transfer_leadership(
            arg(args, "to", (str, type(None)), None), timeout=arg(args, "timeout", (int, float, type(None)), None)
        )
