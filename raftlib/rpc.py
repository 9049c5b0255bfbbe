"""Request/response calls to a peer, over the same framing as Raft traffic.

A caller opens a connection to any peer's address, introduces itself with a
``Hello`` frame (an empty address: it is not a peer) and then sends
``Request [id, op, args]`` frames; the peer answers each with
``Response [id, ok, payload]``, in any order. ``payload`` is the result, or
for a failure ``{"error": <class name>, "message": str, ...}``, which
:func:`error_from_wire` turns back into the :mod:`raftlib.errors` exception
the peer raised. Peers use this to forward requests to their leader (and a
joining peer to ask to be added); clients outside the cluster use it too.

A streaming request (``listen``) is answered with any number of ``Stream
[id, item]`` frames, then the ``Response`` that ends it; ``Cancel [id]``
from the caller stops it. A request that carries ``"keepalive": seconds``
among its args also gets ``Keepalive [id]`` frames while the stream has
nothing to send, at least one in every two such intervals, so that the
caller can tell a quiet stream from a hung peer (whose connection stays
open, silent). Only callers that ask get them: a caller that knows no
``Keepalive`` frame never sees one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from typing import Any, AsyncIterator, Mapping

from . import errors
from .errors import ConnectionLost, ProtocolError, RaftError, Unavailable
from .transport.framing import FrameDecoder, encode_frame
from .security import AUTH_OK, CHALLENGE, NEEDS_TLS, TLS_REQUIRED, Security
from .transport.framing import HEADER_SIZE
from .transport.tcp import FRAME_TOO_LARGE, HELLO, connect_error_text, connect_stream

__all__ = ["REQUEST", "RESPONSE", "STREAM", "CANCEL", "KEEPALIVE", "RpcConnection", "error_to_wire", "error_from_wire", "check_request"]

REQUEST = "Request"
RESPONSE = "Response"
STREAM = "Stream"
"""One item of a streamed answer: ``[id, item]``; the final Response ends the stream."""
CANCEL = "Cancel"
"""``[id]``: the caller no longer wants the answer (the peer stops the request or stream)."""
KEEPALIVE = "Keepalive"
"""``[id]``: stream ``id`` is alive and has had nothing to send; sent only on
streams whose request asked for it with a ``"keepalive"`` interval."""

KEEPALIVES_PER_SILENCE = 4
"""A stream opened with ``idle_timeout=t`` asks for a keepalive every
``t / 4`` seconds: a healthy peer then sends something at least every
``t / 2`` (see :data:`KEEPALIVE`), which leaves the other half for delays."""

STREAM_QUEUE_LIMIT = 10_000
"""Items of one stream received but not yet read; one more ends the stream
with :class:`~raftlib.errors.Overloaded` (and cancels it at the peer)."""

_log = logging.getLogger("raftlib.rpc")

_ERRORS: dict[str, type[RaftError]] = {
    name: cls
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, RaftError)
}


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """The payload of a failed Response for ``exc``."""
    if isinstance(exc, RaftError):
        payload: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, errors.NotLeader):
            payload["leader"] = exc.leader
            payload["leader_address"] = exc.leader_address
        return payload
    return {"error": "RaftError", "message": f"{type(exc).__name__}: {exc}"}


def error_from_wire(payload: Any) -> RaftError:
    """Rebuild the exception a peer reported; unknown names become :class:`RaftError`."""
    if not isinstance(payload, dict) or not isinstance(payload.get("message"), str):
        return ProtocolError(f"malformed error payload {str(payload)[:80]!r}")
    name = payload.get("error")
    cls = _ERRORS.get(name) if isinstance(name, str) else None
    if cls is errors.NotLeader:
        leader, address = payload.get("leader"), payload.get("leader_address")
        return errors.NotLeader(
            leader if isinstance(leader, str) else None, address if isinstance(address, str) else None
        )
    return (cls or RaftError)(payload["message"])


def check_request(body: Any) -> tuple[int, str, dict[str, Any]]:
    """Validate a Request body; raises :class:`ProtocolError`."""
    if type(body) is not list or len(body) != 3:
        raise ProtocolError("Request body must be [id, op, args]")
    rid, op, args = body
    if type(rid) is not int or rid < 0 or type(op) is not str or type(args) is not dict:
        raise ProtocolError("Request body must be [id: int, op: str, args: map]")
    return rid, op, args


class _RefusedTooLarge(ProtocolError):
    """Raised in the read loop when the peer refused a frame as too large;
    ``reason`` is what the calls still waiting raise."""

    def __init__(self, reason: ConnectionLost) -> None:
        self.reason = reason
        super().__init__(str(reason))


class RpcConnection:
    """One connection to a peer for :data:`REQUEST` calls. Open it with :meth:`open`."""

    def __init__(self, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_frame_size: int, secured: bool = False) -> None:
        self.address = address
        self._secured = secured
        self._answered = False
        """Whether the peer sent any frame on this connection."""
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._sizes: dict[int, int] = {}
        """The payload size of each pending call's request frame, to know which one a peer refused as too large."""
        self._streams: dict[int, asyncio.Queue[tuple[bool, Any]]] = {}
        self._heard: dict[int, float] = {}
        """For each stream opened with an idle_timeout, when a frame of it last came in."""
        self._decoder = FrameDecoder(max_frame_size)
        self._closed = False
        self._reading = asyncio.get_running_loop().create_task(self._read_loop(), name=f"raftlib-rpc-{address}")

    @classmethod
    async def open(cls, address: str, *, name: str | None = None, timeout: float = 5.0,
                   max_frame_size: int = 64 * 1024 * 1024, security: Security = None) -> RpcConnection:
        """Connect to the peer at ``address``, secured by ``security`` (see
        :mod:`raftlib.security`). Raises :class:`Unavailable` if it cannot
        (:class:`~raftlib.errors.AuthenticationFailed` if the peer refused it)."""
        try:
            reader, writer = await connect_stream(address, security, timeout)
        except errors.AuthenticationFailed:
            raise
        except (OSError, asyncio.TimeoutError) as exc:
            error = Unavailable(f"cannot connect to {address}: {connect_error_text(address, exc)}")
            # No permission (a Unix socket's file decides) is kept as the
            # cause: waiting does not change it (see client._refused_for_good).
            raise error from (exc if isinstance(exc, PermissionError) else None)
        writer.write(encode_frame(HELLO, [name or f"client-{os.getpid()}-{id(writer):x}", ""]))
        return cls(address, reader, writer, max_frame_size, secured=security is not None)

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(self, op: str, args: Mapping[str, Any], timeout: float | None = None) -> Any:
        """Send one request and return its result, or raise the peer's error.

        Raises :class:`ConnectionLost` (outcome unknown) if the connection
        drops before the answer, and :class:`raftlib.errors.Timeout` after
        ``timeout`` seconds (also outcome unknown for a write).
        """
        if self._closed:
            raise ConnectionLost(f"the connection to {self.address} is closed")
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            frame = encode_frame(REQUEST, [rid, op, dict(args)])
            self._sizes[rid] = len(frame) - HEADER_SIZE
            self._writer.write(frame)
            try:
                async with asyncio.timeout(timeout):
                    return await fut
            except TimeoutError:
                shown = timeout if timeout is None else f"{timeout:.3g}"
                raise errors.Timeout(f"{op} at {self.address} got no answer within {shown} s") from None
        finally:
            self._pending.pop(rid, None)
            self._sizes.pop(rid, None)
            if (fut.cancelled() or not fut.done()) and not self._closed:
                # The caller gave up (cancelled or timed out): the peer stops
                # working on it, rather than finishing a request nobody waits
                # for (a forwarded membership change could undo a later one).
                with contextlib.suppress(OSError, RuntimeError):
                    self._writer.write(encode_frame(CANCEL, [rid]))

    async def stream(self, op: str, args: Mapping[str, Any], *,
                     idle_timeout: float | None = None) -> AsyncIterator[Any]:
        """Send a streaming request and yield each item the peer sends.

        Ends when the peer ends the stream; raises the peer's error,
        :class:`ConnectionLost` if the connection drops, or
        :class:`~raftlib.errors.Overloaded` if the caller fell more than
        :data:`STREAM_QUEUE_LIMIT` items behind. Closing the generator early
        tells the peer to stop.

        With ``idle_timeout``, the request asks the peer for keepalives (see
        :data:`KEEPALIVE`), and the stream raises
        :class:`~raftlib.errors.Timeout` once the peer has sent nothing for
        it, neither an item nor a keepalive, for ``idle_timeout`` seconds:
        the peer is hung, or the network to it is. (Items received but not
        yet read count as sent.) Peers older than keepalives send none.
        """
        if self._closed:
            raise ConnectionLost(f"the connection to {self.address} is closed")
        rid = next(self._ids)
        # One slot more than the items allowed, for the end of the stream.
        queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(STREAM_QUEUE_LIMIT + 1)
        self._streams[rid] = queue
        request = dict(args)
        if idle_timeout is not None:
            request["keepalive"] = idle_timeout / KEEPALIVES_PER_SILENCE
            self._heard[rid] = asyncio.get_running_loop().time()
        finished = False
        try:
            self._writer.write(encode_frame(REQUEST, [rid, op, request]))
            while True:
                if idle_timeout is None or not queue.empty():
                    more, item = await queue.get()
                else:
                    more, item = await self._next_within(queue, rid, idle_timeout)
                if more:
                    yield item
                    continue
                finished = True
                if isinstance(item, BaseException):
                    raise item
                return
        finally:
            self._streams.pop(rid, None)
            self._heard.pop(rid, None)
            if not finished and not self._closed:
                with contextlib.suppress(OSError, RuntimeError):
                    self._writer.write(encode_frame(CANCEL, [rid]))

    async def _next_within(self, queue: asyncio.Queue[tuple[bool, Any]], rid: int,
                           idle_timeout: float) -> tuple[bool, Any]:
        """The next entry of stream ``rid``'s queue; raises :class:`~raftlib.errors.Timeout`
        once its peer has sent nothing for it for ``idle_timeout`` seconds."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(self._heard[rid] + idle_timeout):
                    return await queue.get()
            except TimeoutError:
                # A keepalive that came meanwhile moved the deadline on.
                if loop.time() >= self._heard[rid] + idle_timeout:
                    raise errors.Timeout(
                        f"{self.address} sent nothing on the stream for {idle_timeout:.3g} s, not even a "
                        f"keepalive (the member or the network to it is hung)"
                    ) from None

    async def _read_loop(self) -> None:
        reason: BaseException = ConnectionLost(f"{self.address} closed the connection")
        try:
            while True:
                data = await self._reader.read(64 * 1024)
                if not data:
                    break
                for type_name, body in self._decoder.feed(data):
                    self._answered = True
                    self._on_frame(type_name, body)
            if not self._answered and not self._secured:
                # Members that require TLS say so (TLSRequired); those of
                # earlier versions close the connection without a word.
                reason = ConnectionLost(
                    f"{self.address} closed the connection without answering (stopping, at its connection "
                    f"limit, or a member of an earlier version secured with TLS: {NEEDS_TLS})"
                )
        except errors.AuthenticationFailed as exc:
            reason = exc
        except _RefusedTooLarge as exc:
            reason = exc.reason
            # What is left to send is of no use: stop sending it now rather
            # than when the whole frame is out (close() would wait for that).
            self._writer.transport.abort()
        except ProtocolError as exc:
            reason = ConnectionLost(f"{self.address} sent a malformed frame: {exc}")
            _log.warning("closing the connection to %s: %s", self.address, exc)
        except OSError as exc:
            reason = ConnectionLost(f"the connection to {self.address} failed: {exc!r}")
        finally:
            self._closed = True
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(reason)
            for queue in self._streams.values():
                queue.put_nowait((False, reason))
            self._writer.close()

    def _on_frame(self, type_name: str, body: Any) -> None:
        if type_name == KEEPALIVE and type(body) is list and len(body) == 1 and type(body[0]) is int:
            if body[0] in self._heard:
                self._heard[body[0]] = asyncio.get_running_loop().time()
            return
        if type_name == STREAM and type(body) is list and len(body) == 2:
            queue = self._streams.get(body[0]) if type(body[0]) is int else None
            if queue is not None and queue.qsize() >= STREAM_QUEUE_LIMIT:
                # The consumer fell too far behind: end its stream rather than
                # hold more (or stall the answers of every other call).
                del self._streams[body[0]]
                queue.put_nowait((False, errors.Overloaded(
                    f"the stream from {self.address} got {STREAM_QUEUE_LIMIT} items ahead of its reader; "
                    f"it was stopped (resume it from the last item read)"
                )))
                with contextlib.suppress(OSError, RuntimeError):
                    self._writer.write(encode_frame(CANCEL, [body[0]]))
            elif queue is not None:
                queue.put_nowait((True, body[1]))
                if body[0] in self._heard:
                    self._heard[body[0]] = asyncio.get_running_loop().time()
            return
        if type_name in (CHALLENGE, AUTH_OK):
            # The handshake of a member secured with a shared secret, which
            # this connection did not run (one that did never sees these).
            raise errors.AuthenticationFailed(
                f"{self.address} requires a shared secret and this connection has none "
                f"(give secret=, or --secret-file on the command line)"
            )
        if type_name == FRAME_TOO_LARGE and type(body) is list and len(body) == 2 and all(type(n) is int for n in body):
            self._refused_too_large(*body)
        if type_name == TLS_REQUIRED:
            raise errors.AuthenticationFailed(f"{self.address} requires TLS and this connection has none ({NEEDS_TLS})")
        if type_name != RESPONSE or type(body) is not list or len(body) != 3:
            raise ProtocolError(f"expected a Response [id, ok, payload] frame, got {type_name[:64]!r}")
        rid, ok, payload = body
        queue = self._streams.get(rid) if type(rid) is int else None
        if queue is not None:
            queue.put_nowait((False, None if ok is True else error_from_wire(payload)))
            return
        fut = self._pending.get(rid) if type(rid) is int else None
        if fut is None or fut.done():
            return  # a late answer to a call that timed out
        if ok is True:
            fut.set_result(payload)
        else:
            fut.set_exception(error_from_wire(payload))

    def _refused_too_large(self, limit: int, size: int) -> None:
        """The peer refused a frame of ``size`` bytes as over its ``limit``
        and closes the connection: the call that sent it (it never ran)
        raises :class:`~raftlib.errors.CommandTooLarge`; the others get the
        usual :class:`ConnectionLost`, raised from here."""
        refused = next((rid for rid, sent in self._sizes.items() if sent == size), None)
        fut = self._pending.get(refused) if refused is not None else None
        if fut is not None and not fut.done():
            fut.set_exception(errors.CommandTooLarge(
                f"{self.address} refused a request of {size} bytes without reading it (its max_frame_size is "
                f"{limit} bytes): it was not applied. Keep the request smaller, or connect with max_frame_size="
                f"{limit} (the members' Config.max_frame_size) so that such requests are refused before they "
                f"are sent"
            ))
        raise _RefusedTooLarge(ConnectionLost(
            f"{self.address} closed the connection after refusing a request frame of {size} bytes, over its "
            f"max_frame_size ({limit} bytes)"
        ))

    async def close(self) -> None:
        """Close the connection; calls still waiting raise :class:`ConnectionLost`."""
        self._closed = True
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        self._writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await self._writer.wait_closed()
