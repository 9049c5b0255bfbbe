"""Streaming a snapshot from the leader to a follower.

The core only says *send the snapshot at (index, term) to X*
(:class:`~raftlib.core.messages.InstallSnapshot`). The leader's runtime then
opens a dedicated connection to X, so that heartbeats and appends keep
flowing on the regular one, and streams the snapshot file in chunks. Flow
control is TCP's own: the sender waits for ``drain()`` after each chunk and
the receiver writes each chunk to disk before it reads the next, so both
sides hold only a few chunks in memory whatever the snapshot's size.

The exchange, after the usual ``Hello``::

    leader   -> SnapshotOffer  [term, leader, index, snapshot_term, membership, size, crc]
    follower -> SnapshotResume [offset]            (bytes it already holds from an earlier attempt)
    leader   -> SnapshotChunk  [offset, data] ...  (from that offset to the end)
    follower -> SnapshotDone   [ok, reason]        (after the crc check, fsync and rename)

Only once the file is complete and verified does the follower step an
``InstallSnapshot`` into its core. A transfer cut off midway resumes from
the follower's offset next time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .core.messages import InstallSnapshot
from .errors import ProtocolError, RaftError, StorageError
from .snapshot import SnapshotFile, SnapshotReceiver, SnapshotStore
from .transport.framing import FrameDecoder, encode_frame
from .security import Security
from .transport.tcp import Connection, connect_stream, encode_hello
from .types import Membership, SnapshotMeta

OFFER = "SnapshotOffer"
RESUME = "SnapshotResume"
CHUNK = "SnapshotChunk"
DONE = "SnapshotDone"
FRAME_TYPES = frozenset({OFFER, CHUNK})
"""Frames a follower's transport hands to :class:`SnapshotReceiving`."""


class SnapshotTransferFailed(RaftError):
    """A snapshot could not be streamed to a follower; it will be retried."""


async def send_snapshot(
    msg: InstallSnapshot,
    snap: SnapshotFile,
    store: SnapshotStore,
    *,
    own_address: str,
    address: str,
    cluster_id: str | None = None,
    chunk_size: int,
    max_frame_size: int,
    timeout: float,
    security: Security = None,
) -> int:
    """Stream ``snap`` to ``msg.dst`` at ``address`` over a connection secured
    by ``security``, introduced as a peer of ``cluster_id`` (a follower of
    another cluster refuses it); return the bytes sent.

    Raises :class:`SnapshotTransferFailed` (or an ``OSError``, such as
    :class:`~raftlib.errors.AuthenticationFailed`) on failure.
    """
    reader, writer = await connect_stream(address, security, timeout)
    decoder = FrameDecoder(max_frame_size)
    try:
        writer.write(encode_hello(msg.src, own_address, cluster_id))
        writer.write(
            encode_frame(OFFER, [msg.term, msg.src, msg.index, msg.snapshot_term, msg.membership, snap.size, snap.crc])
        )
        await writer.drain()
        kind, body = await _read_reply(reader, decoder, timeout)
        if kind == DONE:
            _check_done(body)
            return 0
        if kind != RESUME or type(body) is not list or len(body) != 1 or type(body[0]) is not int:
            raise SnapshotTransferFailed(f"unexpected answer to the offer: {kind!r}")
        offset = body[0]
        if not 0 <= offset <= snap.size:
            raise SnapshotTransferFailed(f"follower asked to resume at {offset} of {snap.size} bytes")
        start = offset
        async for chunk in store.read_chunks(snap, offset, chunk_size):
            writer.write(encode_frame(CHUNK, [offset, chunk]))
            offset += len(chunk)
            await writer.drain()
        kind, body = await _read_reply(reader, decoder, timeout)
        if kind != DONE:
            raise SnapshotTransferFailed(f"expected {DONE}, got {kind!r}")
        _check_done(body)
        return offset - start
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def _check_done(body: Any) -> None:
    if type(body) is not list or len(body) != 2 or type(body[0]) is not bool:
        raise SnapshotTransferFailed("malformed SnapshotDone")
    if not body[0]:
        raise SnapshotTransferFailed(f"the follower refused the snapshot: {str(body[1])[:200]}")


async def _read_reply(reader: asyncio.StreamReader, decoder: FrameDecoder, timeout: float) -> tuple[str, Any]:
    while True:
        async with asyncio.timeout(timeout):  # not wait_for, which can lose a cancellation in Python 3.11
            data = await reader.read(65536)
        if not data:
            raise SnapshotTransferFailed("the follower closed the connection")
        frames = decoder.feed(data)
        if frames:
            if len(frames) > 1:
                raise SnapshotTransferFailed("the follower sent more than one answer")
            return frames[0]


@dataclass
class _Transfer:
    conn: Connection
    receiver: SnapshotReceiver
    offer: InstallSnapshot
    size: int


class SnapshotReceiving:
    """The follower side: handles ``SnapshotOffer``/``SnapshotChunk`` frames.

    ``current_term`` reads the core's term (offers from older terms are
    refused); ``deliver`` steps the finished ``InstallSnapshot`` into the core;
    ``after_store``, if given, runs once it has (the runtime prunes old
    snapshot files there: a snapshot the core does not install would
    otherwise stay on disk). ``refuse``, if given, says why an offered
    snapshot (its metadata, size and crc) is refused before any of it is
    received, or ``None`` (the runtime refuses those its state machine could
    not restore). One transfer at a time: a new offer supersedes an
    unfinished one.
    """

    def __init__(
        self,
        name: str,
        store: SnapshotStore,
        current_term: Callable[[], int],
        deliver: Callable[[InstallSnapshot], None],
        log: logging.Logger,
        after_store: Callable[[], Awaitable[None]] | None = None,
        refuse: Callable[[SnapshotMeta, int, int], str | None] | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self.current_term = current_term
        self.deliver = deliver
        self.log = log
        self.after_store = after_store
        self.refuse = refuse
        self._active: _Transfer | None = None

    async def on_frame(self, type_name: str, body: Any, conn: Connection) -> None:
        if type_name == OFFER:
            await self._offer(body, conn)
        elif type_name == CHUNK:
            await self._chunk(body, conn)
        else:
            raise ProtocolError(f"unexpected frame type {type_name[:64]!r}")

    async def _offer(self, body: Any, conn: Connection) -> None:
        if type(body) is not list or len(body) != 7:
            raise ProtocolError("SnapshotOffer must have 7 fields")
        term, leader, index, snap_term, membership, size, crc = body
        if not all(type(v) is int and v >= 0 for v in (term, index, snap_term, size, crc)):
            raise ProtocolError("SnapshotOffer: term, index, snapshot term, size and crc must be non-negative ints")
        if type(leader) is not str or leader != conn.peer_name or type(membership) is not bytes:
            raise ProtocolError("SnapshotOffer: the leader must be the connection's peer, membership bytes")
        if snap_term > term:
            raise ProtocolError("SnapshotOffer: snapshot term ahead of the leader's term")
        try:
            members = Membership.decode(membership)
        except ValueError:
            raise ProtocolError("SnapshotOffer: membership is not an encoded Membership") from None
        if term < self.current_term():
            await conn.send_frame(DONE, [False, f"stale term {term} < {self.current_term()}"])
            return
        meta = SnapshotMeta(index, snap_term, members)
        refusal = self.refuse(meta, size, crc) if self.refuse is not None else None
        if refusal is not None:
            await conn.send_frame(DONE, [False, f"snapshot {snap_term}/{index} refused: {refusal}"])
            return
        await self._drop_active("superseded by a new offer")
        receiver = self.store.receiver(meta, size, crc)
        offer = InstallSnapshot(term, leader, self.name, index, snap_term, membership)
        transfer = _Transfer(conn, receiver, offer, size)
        self._active = transfer

        async def on_close() -> None:
            if self._active is transfer:
                await self._drop_active("the connection closed")

        conn.on_close.append(on_close)
        self.log.info("%s: receiving snapshot %d/%d (%d bytes) from %s, resuming at %d",
                      self.name, snap_term, index, size, leader, receiver.offset)
        await conn.send_frame(RESUME, [receiver.offset])
        if receiver.offset == size:
            await self._finish(transfer)

    async def _chunk(self, body: Any, conn: Connection) -> None:
        transfer = self._active
        if transfer is None or transfer.conn is not conn:
            raise ProtocolError("SnapshotChunk without an accepted offer on this connection")
        if type(body) is not list or len(body) != 2 or type(body[0]) is not int or type(body[1]) is not bytes:
            raise ProtocolError("SnapshotChunk must be [offset, bytes]")
        try:
            await transfer.receiver.write(body[0], body[1])
        except StorageError as exc:
            # This peer's disk (full, say), not the leader's fault: say why and
            # end the attempt; the leader retries and the transfer resumes from
            # what was written.
            self.log.warning("%s: snapshot transfer from %s paused: %s", self.name, transfer.offer.src, exc)
            if self._active is transfer:
                self._active = None
                await transfer.receiver.abort()
            try:
                await conn.send_frame(DONE, [False, str(exc)])
            except ConnectionError:
                pass
            conn.close()
            return
        if transfer.receiver.offset == transfer.size:
            await self._finish(transfer)

    async def _finish(self, transfer: _Transfer) -> None:
        self._active = None
        try:
            snap = await transfer.receiver.finish()
        except RaftError as exc:
            self.log.warning("%s: snapshot from %s rejected: %s", self.name, transfer.offer.src, exc)
            await transfer.conn.send_frame(DONE, [False, str(exc)])
            return
        self.log.info("%s: snapshot %d/%d stored (%d bytes)", self.name, snap.meta.term, snap.meta.index, snap.size)
        self.deliver(transfer.offer)
        if self.after_store is not None:
            await self.after_store()
        await transfer.conn.send_frame(DONE, [True, ""])

    async def _drop_active(self, why: str) -> None:
        transfer, self._active = self._active, None
        if transfer is not None:
            self.log.info("%s: snapshot transfer from %s paused: %s", self.name, transfer.offer.src, why)
            await transfer.receiver.abort()
            transfer.conn.close()

    async def close(self) -> None:
        await self._drop_active("the peer is stopping")
