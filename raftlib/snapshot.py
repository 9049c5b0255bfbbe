"""Where a peer keeps its state-machine snapshots.

Two implementations share the :class:`SnapshotStore` interface:
:class:`FileSnapshotStore` keeps each snapshot in a file of its own in one
directory, and :class:`MemorySnapshotStore` keeps them in a dict (for tests
and for peers with in-memory storage). Both stream: data is written and read
in chunks of :data:`CHUNK_SIZE` bytes, so a snapshot may be far larger than
the memory a peer can spare.

File layout of :class:`FileSnapshotStore`
-----------------------------------------

``snapshot-{index:020d}-{term:020d}.snap``
    A complete snapshot: the 8-byte magic ``b"RAFTSNP1"``, the header's length
    as 4 bytes big-endian, the msgpack header
    ``{"index", "term", "voters", "learners", "size", "crc"}`` (``size`` is
    the number of data bytes and ``crc`` their :func:`zlib.crc32`; and
    ``"cluster"``, the cluster ID, if the membership has one), then the
    state-machine data itself. ``size`` and ``crc`` are always encoded as
    msgpack uint64 and uint32, so the header's length does not depend on
    them and can be written before the data and patched afterwards.

``receive-{index}-{term}-{size}-{crc}.part``
    The data received so far of a snapshot streamed from the leader (data
    only; the header is written when the transfer finishes). Kept after an
    interrupted transfer so that the next attempt can resume where it stopped.

``snapshot-{index:020d}-{term:020d}.{random}.tmp``
    A snapshot being written. It gets its final name only once it is complete
    and on stable storage, so a crash never leaves a partial file under a
    ``.snap`` name; opening the store, and :meth:`SnapshotStore.prune`,
    remove leftovers.

Only :meth:`SnapshotStore.open` blocks (it is meant for a worker thread), and
the constructor of :class:`FileSnapshotStore`, which scans the directory
reading only each file's header. Everything else does its file work through
:mod:`aiofiles` or :func:`asyncio.to_thread`, so the event loop never waits
for the disk.

Errors: an I/O failure raises :class:`~raftlib.errors.StorageError` naming the
file; a file that fails a check (bad magic, undecodable header, wrong length,
wrong checksum) raises :class:`~raftlib.errors.CorruptStorage` naming it; a
chunk streamed out of order or past the announced size raises
:class:`~raftlib.errors.ProtocolError`.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import reprlib
import secrets
import struct
import zlib
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    BinaryIO,
    Iterable,
    Iterator,
    Protocol,
    Union,
    runtime_checkable,
)

import aiofiles
import msgpack
from aiofiles.threadpool.binary import AsyncBufferedReader

from raftlib.errors import CorruptStorage, ProtocolError, StorageError
from raftlib.types import MAX_CLUSTER_ID_LENGTH, Membership, SnapshotMeta

__all__ = [
    "CHUNK_SIZE",
    "MAGIC",
    "FileSnapshotStore",
    "MemorySnapshotStore",
    "SnapshotData",
    "SnapshotFile",
    "SnapshotReceiver",
    "SnapshotStore",
    "chunk_crc",
]

CHUNK_SIZE = 256 * 1024
"""Bytes per chunk when snapshot data is written, read or copied."""

MAGIC = b"RAFTSNP1"
"""The first 8 bytes of every ``.snap`` file."""

SnapshotData = Union[bytes, BinaryIO, Iterable[bytes], AsyncIterable[bytes]]
"""What :meth:`SnapshotStore.write` accepts: the data itself, a binary file
read from its current position to its end, or an (async) iterable of chunks."""

_PREFIX = struct.Struct(">8sI")
"""The magic and the header's length, in front of the msgpack header."""

_MAX_HEADER = 64 << 20
"""A header length above this is taken as corruption rather than allocated."""

_MAX_NUMBER = 10**20 - 1
"""The largest index or term that fits the 20-digit file names."""

_SNAP_NAME = re.compile(r"snapshot-(\d{20})-(\d{20})\.snap")
_PART_NAME = re.compile(r"receive-(\d+)-(\d+)-(\d+)-(\d+)\.part")
_TEMP_NAME = re.compile(r"snapshot-\d+-\d+\.[0-9a-f]+\.tmp")

_DECODE_ERRORS = (ValueError, TypeError, msgpack.UnpackException)
"""What msgpack raises on undecodable bytes."""

_ADVICE = (
    "wipe the peer's data directory and let it rejoin the cluster (moving the file away falls back to an "
    "older snapshot only if it is not the one the log was compacted to: start-up would then find that one missing)"
)
"""What an operator can do about a corrupt snapshot file."""

_Key = tuple[int, int]
"""A snapshot's (index, term); snapshots sort by it."""

_ReceiveKey = tuple[int, int, int, int]
"""A transfer's (index, term, size, crc): a partial may resume only with all four equal."""


def chunk_crc(chunk: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """The running CRC32 (:func:`zlib.crc32`) of ``chunk`` continued from
    ``crc``; fold it over the chunks in order to get the checksum of their
    concatenation, the ``crc`` of a :class:`SnapshotFile`."""
    return zlib.crc32(chunk, crc)


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """A complete snapshot held by a :class:`SnapshotStore`.

    ``size`` is the number of state-machine data bytes and ``crc`` their
    :func:`zlib.crc32`. ``path`` is the ``.snap`` file of a
    :class:`FileSnapshotStore` (``None`` in a :class:`MemorySnapshotStore`).
    """

    meta: SnapshotMeta
    size: int
    crc: int
    path: str | None


@runtime_checkable
class SnapshotStore(Protocol):
    """Where a peer keeps its state-machine snapshots.

    ``latest`` and ``find`` answer from memory; the other methods that touch
    data are coroutines (or an async generator) that never block the event
    loop, except :meth:`open`, which is meant to be called in a worker thread.
    """

    def latest(self) -> SnapshotFile | None:
        """The newest complete snapshot (highest index, then highest term), or
        ``None`` if there is none. Raises
        :class:`~raftlib.errors.CorruptStorage` naming the file if the newest
        one is unreadable: it never silently falls back to an older one."""
        ...

    def find(self, index: int, term: int) -> SnapshotFile | None:
        """The complete snapshot at ``index`` and ``term``, or ``None``;
        :class:`~raftlib.errors.CorruptStorage` if it is unreadable."""
        ...

    async def write(self, meta: SnapshotMeta, data: SnapshotData) -> SnapshotFile:
        """Store a new snapshot atomically and durably (replacing one with the
        same index and term), streaming ``data`` in bounded memory."""
        ...

    def read_chunks(self, snap: SnapshotFile, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Yield ``snap``'s data from byte ``offset`` to its end, in chunks of
        at most ``chunk_size`` bytes."""
        ...

    def open(self, snap: SnapshotFile) -> BinaryIO:
        """A blocking binary file positioned at the start of ``snap``'s data,
        for restoring the state machine in a worker thread. The caller closes it."""
        ...

    async def verify(self, snap: SnapshotFile) -> None:
        """Re-read ``snap``'s data and check its size and CRC32; raise
        :class:`~raftlib.errors.CorruptStorage` naming the file on a mismatch."""
        ...

    def receiver(self, meta: SnapshotMeta, size: int, crc: int) -> SnapshotReceiver:
        """A :class:`SnapshotReceiver` for a snapshot of ``size`` bytes with
        checksum ``crc`` streamed from the leader, resuming a partial transfer
        of the same snapshot if one was kept (any other partial is discarded)."""
        ...

    async def prune(self, keep: int = 2, protect: SnapshotMeta | None = None) -> None:
        """Delete all but the newest ``keep`` complete snapshots (and never
        ``protect``, the one the log storage refers to), and leftover
        temporary and partial files."""
        ...

    def close(self) -> None:
        """Release the store; later calls raise :class:`~raftlib.errors.StorageError`."""
        ...


# -- the header -------------------------------------------------------------


class _Malformed(Exception):
    """A snapshot file failed a structural check; the message says how."""


def _encode_prefix(meta: SnapshotMeta, size: int, crc: int) -> bytes:
    """Magic, header length and msgpack header of a ``.snap`` file.

    The map is assembled by hand so that ``size`` and ``crc`` always take
    their widest msgpack encodings (uint64 and uint32): the header then has
    the same length whatever they are, and :meth:`FileSnapshotStore.write`
    can write it first and patch in the real values once the data is through.
    """
    pack = msgpack.packb
    cluster_id = meta.membership.cluster_id
    header = b"".join(
        (
            b"\x86" if cluster_id is None else b"\x87",  # a fixmap of 6 pairs, 7 with a cluster ID
            b"" if cluster_id is None else pack("cluster") + pack(cluster_id),
            pack("index"),
            pack(meta.index),
            pack("term"),
            pack(meta.term),
            pack("voters"),
            pack(dict(meta.membership.voters)),
            pack("learners"),
            pack(dict(meta.membership.learners)),
            pack("size"),
            b"\xcf" + size.to_bytes(8, "big"),
            pack("crc"),
            b"\xce" + crc.to_bytes(4, "big"),
        )
    )
    return _PREFIX.pack(MAGIC, len(header)) + header


def _header_length(prefix: bytes) -> int:
    """The header length announced by the first 12 bytes of a ``.snap`` file."""
    if len(prefix) < _PREFIX.size:
        raise _Malformed(f"it is only {len(prefix)} bytes long, too short for the {_PREFIX.size}-byte prefix")
    magic, length = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise _Malformed(f"it does not start with the snapshot magic {MAGIC!r} (found {magic!r})")
    if length > _MAX_HEADER:
        raise _Malformed(f"its header length of {length} bytes is implausible")
    return int(length)


def _is_address_map(value: dict[object, object]) -> bool:
    """Whether ``value`` maps names to addresses, as a :class:`Membership` does."""
    return all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _decode_header(raw: bytes) -> tuple[SnapshotMeta, int, int]:
    """The snapshot metadata, size and CRC32 in a msgpack header."""
    try:
        record = msgpack.unpackb(raw, raw=False)
    except _DECODE_ERRORS as exc:
        raise _Malformed(f"its header cannot be decoded ({exc})") from exc
    match record:
        case {
            "index": int(index),
            "term": int(term),
            "voters": dict(voters),
            "learners": dict(learners),
            "size": int(size),
            "crc": int(crc),
        } if (
            index >= 0
            and term >= 0
            and size >= 0
            and 0 <= crc <= 0xFFFFFFFF
            and _is_address_map(voters)
            and _is_address_map(learners)
        ):
            cluster_id = record.get("cluster")
            if cluster_id is None or (type(cluster_id) is str and 0 < len(cluster_id) <= MAX_CLUSTER_ID_LENGTH):
                membership = Membership(voters=voters, learners=learners, cluster_id=cluster_id)
                return SnapshotMeta(index=index, term=term, membership=membership), size, crc
    raise _Malformed(f"its header is malformed: {reprlib.repr(record)}")


def _read_header_sync(f: BinaryIO) -> tuple[SnapshotMeta, int, int, int]:
    """Read the prefix and header of an open ``.snap`` file: returns the
    metadata, size, CRC32 and the offset where the data starts."""
    length = _header_length(f.read(_PREFIX.size))
    raw = f.read(length)
    if len(raw) < length:
        raise _Malformed(f"its header is truncated ({len(raw)} of {length} bytes)")
    meta, size, crc = _decode_header(raw)
    return meta, size, crc, _PREFIX.size + length


async def _read_header_async(f: AsyncBufferedReader) -> tuple[SnapshotMeta, int, int, int]:
    """:func:`_read_header_sync` for a file opened with :mod:`aiofiles`."""
    length = _header_length(await f.read(_PREFIX.size))
    raw = await f.read(length)
    if len(raw) < length:
        raise _Malformed(f"its header is truncated ({len(raw)} of {length} bytes)")
    meta, size, crc = _decode_header(raw)
    return meta, size, crc, _PREFIX.size + length


def _check_describes(snap: SnapshotFile, meta: SnapshotMeta, size: int, crc: int) -> None:
    """Raise :class:`_Malformed` unless a file's header describes ``snap``."""
    found = (meta.index, meta.term, size, crc)
    expected = (snap.meta.index, snap.meta.term, snap.size, snap.crc)
    if found != expected:
        raise _Malformed(
            f"its header describes index {found[0]}, term {found[1]}, {found[2]} bytes with CRC32 {found[3]:#010x}, "
            f"not the expected index {expected[0]}, term {expected[1]}, {expected[2]} bytes with CRC32 "
            f"{expected[3]:#010x} (the file was corrupted or replaced)"
        )


# -- helpers ----------------------------------------------------------------


def _check_meta(meta: SnapshotMeta) -> None:
    """Refuse an index or term that cannot name a snapshot file."""
    for what, value in (("index", meta.index), ("term", meta.term)):
        if not isinstance(value, int) or not 0 <= value <= _MAX_NUMBER:
            raise ValueError(f"snapshot {what} must be an integer in [0, {_MAX_NUMBER}], not {value!r}")


def _check_read(snap: SnapshotFile, offset: int, chunk_size: int) -> None:
    """Refuse a read window outside ``snap``'s data or a chunk size below 1."""
    if not 0 <= offset <= snap.size:
        raise ValueError(f"offset {offset} is outside the snapshot's {snap.size} bytes of data")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")


def _describe(meta: SnapshotMeta) -> str:
    """``index I term T`` for messages."""
    return f"index {meta.index} term {meta.term}"


async def _read_stream(stream: BinaryIO) -> AsyncGenerator[bytes, None]:
    """Read a blocking binary file to its end, each read in a worker thread."""
    while True:
        piece = await asyncio.to_thread(stream.read, CHUNK_SIZE)
        if piece is None:
            raise ValueError("snapshot data came from a non-blocking stream that had no data ready")
        if not piece:
            return
        yield piece


_EXHAUSTED = object()


async def _from_sync(data: Iterable[bytes]) -> AsyncGenerator[bytes, None]:
    """An async view of a plain iterable; each ``next()`` runs in a worker
    thread, so a generator that serializes a large state never blocks the
    event loop."""
    it = iter(data)
    while True:
        piece = await asyncio.to_thread(next, it, _EXHAUSTED)
        if piece is _EXHAUSTED:
            return
        yield piece  # type: ignore[misc]


async def _chunks(data: SnapshotData) -> AsyncGenerator[bytes | memoryview, None]:
    """The bytes of ``data`` in chunks of at most :data:`CHUNK_SIZE`.

    Large pieces are cut up (as views, not copies) and small ones gathered
    into full chunks, so each chunk costs one write. A yielded chunk is only
    valid until the next one is requested.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        for start in range(0, len(view), CHUNK_SIZE):
            yield view[start : start + CHUNK_SIZE]
        return
    source: AsyncIterable[bytes]
    if hasattr(data, "__aiter__"):  # first: an aiofiles file has both
        source = data  # type: ignore[assignment]
    elif hasattr(data, "read"):
        source = _read_stream(data)  # type: ignore[arg-type]
    elif isinstance(data, Iterable) and not isinstance(data, str):
        source = _from_sync(data)
    else:
        raise TypeError(
            f"snapshot data must be bytes, a binary file or an (async) iterable of bytes, not {type(data).__name__}"
        )
    pending = bytearray()
    async with aclosing(_aiter_checked(source)) as pieces:
        async for piece in pieces:
            view = memoryview(piece).cast("B")
            pos = 0
            if pending:
                pos = min(CHUNK_SIZE - len(pending), len(view))
                pending += view[:pos]
                if len(pending) < CHUNK_SIZE:
                    continue
                full = bytes(pending)
                pending.clear()
                yield full
            while len(view) - pos >= CHUNK_SIZE:
                yield view[pos : pos + CHUNK_SIZE]
                pos += CHUNK_SIZE
            if pos < len(view):
                pending += view[pos:]
    if pending:
        yield bytes(pending)


async def _aiter_checked(source: AsyncIterable[bytes]) -> AsyncGenerator[bytes | bytearray | memoryview, None]:
    """Pass on ``source``'s pieces, refusing any that are not bytes-like."""
    iterator = source.__aiter__()
    try:
        async for piece in iterator:
            if not isinstance(piece, (bytes, bytearray, memoryview)):
                raise TypeError(f"snapshot data chunks must be bytes, not {type(piece).__name__}")
            yield piece
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


@contextmanager
def _io_errors(action: str, path: str, *, reading: bool = False) -> Iterator[None]:
    """Turn an :class:`OSError` raised while doing ``action`` on ``path``
    into :class:`StorageError` naming both. With ``reading``, a missing file
    is explained as a snapshot that no longer exists."""
    try:
        yield
    except FileNotFoundError as exc:
        if not reading:
            raise StorageError(f"cannot {action} {path}: {exc.strerror or exc}") from exc
        raise StorageError(f"cannot {action} {path}: the file no longer exists (was it pruned?)") from exc
    except OSError as exc:
        raise StorageError(f"cannot {action} {path}: {exc.strerror or exc}") from exc


def _fsync_dir(directory: str) -> None:
    """Flush a directory's entries (renames, creations) to stable storage."""
    if os.name == "nt":  # Windows cannot open a directory; NTFS journals renames.
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_durably(src: str, dst: str, directory: str) -> None:
    """Rename ``src`` to ``dst`` (atomically replacing it) and flush the directory."""
    os.replace(src, dst)
    _fsync_dir(directory)


def _remove_quietly(path: str) -> bool:
    """Delete ``path`` if possible; whether it was deleted. A leftover is
    harmless: :meth:`SnapshotStore.prune` tries again."""
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def _remove_all(paths: Iterable[str], directory: str) -> None:
    """Delete ``paths`` (missing ones are fine) and flush the directory."""
    removed = [_remove_quietly(p) for p in paths]
    if any(removed):
        _fsync_dir(directory)


@dataclass(frozen=True, slots=True)
class _Unreadable:
    """A ``.snap`` file found on disk whose header could not be used."""

    path: str
    reason: str
    corrupt: bool = True

    def error(self) -> StorageError:
        """The exception that :meth:`SnapshotStore.latest` and ``find`` raise for it."""
        if self.corrupt:
            return CorruptStorage(f"corrupt snapshot file {self.path}: {self.reason}; {_ADVICE}")
        return StorageError(f"cannot read the snapshot file {self.path}: {self.reason}")


# -- the receiver -----------------------------------------------------------


class SnapshotReceiver:
    """Takes in a snapshot streamed from the leader, chunk by chunk.

    Obtained from :meth:`SnapshotStore.receiver`. ``offset`` is the number of
    bytes already held, so a leader can resume an interrupted transfer from
    there. Chunks must arrive in order (:meth:`write` with ``offset`` equal to
    :attr:`offset`); :meth:`finish` checks the whole and installs it as a
    complete snapshot; :meth:`abort` ends the attempt but keeps what arrived.

    Only one receiver per store is live: asking the store for another one
    supersedes this one, whose later calls raise
    :class:`~raftlib.errors.ProtocolError`. Calls of a receiver after
    :meth:`finish` or :meth:`abort` raise it too. A receiver holds no open
    file between calls, so a forgotten one leaks nothing.
    """

    offset: int
    """Bytes of the snapshot already received."""

    def __init__(self, store: _StoreBase, meta: SnapshotMeta, size: int, crc: int, offset: int) -> None:
        self.meta = meta
        """The snapshot being received."""
        self.size = size
        """Its announced size in bytes."""
        self.crc = crc
        """Its announced CRC32."""
        self.offset = offset
        self._store = store
        self._key: _ReceiveKey = (meta.index, meta.term, size, crc)
        self._ended: str | None = None  # why calls are refused: "finished", "aborted", ...
        self._touched = False  # whether a write has reconciled the partial with ``offset``

    async def write(self, offset: int, chunk: bytes) -> None:
        """Append ``chunk``, which must start at byte :attr:`offset` and fit
        within the announced size (:class:`~raftlib.errors.ProtocolError`
        otherwise)."""
        async with self._store._receive_lock:
            self._check_live()
            await self._store._reap()
            if offset != self.offset:
                raise ProtocolError(
                    f"snapshot chunk for {_describe(self.meta)} starts at byte {offset}, but {self.offset} bytes "
                    "have been received; chunks must arrive in order"
                )
            length = len(chunk)
            if length > self.size - offset:
                raise ProtocolError(
                    f"snapshot chunk for {_describe(self.meta)} would end at byte {offset + length}, past the "
                    f"announced size of {self.size} bytes"
                )
            if not length:
                return
            try:
                await self._store._append_partial(self._key, offset, chunk, first=not self._touched)
            except BaseException:
                # Part of the chunk may have landed: the next write cuts the
                # partial back to ``offset`` first, so nothing is lost by a
                # failed or cancelled write, and the transfer can go on.
                self._touched = False
                if self._ended is None and self._key not in self._store._partial_sizes():
                    self._end("lost its partial data")
                raise
            if self._ended is not None:  # superseded while the chunk was being written
                self._check_live()
            self._touched = True
            self.offset = offset + length
            self._store._note_partial(self._key, self.offset)

    async def finish(self) -> SnapshotFile:
        """Install the received snapshot once all :attr:`size` bytes are here.

        Checks the CRC32 of the whole: on a mismatch the partial data is
        deleted (the next attempt starts from byte 0) and
        :class:`~raftlib.errors.CorruptStorage` is raised. Otherwise the
        snapshot becomes complete, durably, and is returned.
        """
        async with self._store._receive_lock:
            self._check_live()
            await self._store._reap()
            if self.offset != self.size:
                raise ProtocolError(
                    f"snapshot transfer for {_describe(self.meta)} finished after {self.offset} of its "
                    f"{self.size} bytes"
                )
            try:
                snap = await self._store._complete_partial(self.meta, self.size, self.crc)
            except BaseException:
                self._end("failed")
                raise
            self._end("finished")
            return snap

    async def abort(self) -> None:
        """End this attempt, keeping the data received so far so that a new
        receiver for the same snapshot resumes from :attr:`offset`.
        Idempotent."""
        async with self._store._receive_lock:
            if self._ended is None:
                self._end("aborted")
            if not self._store._closed:
                await self._store._reap()

    def _end(self, why: str) -> None:
        """Refuse further calls, and stop being the store's live receiver."""
        self._ended = why
        if self._store._receiver is self:
            self._store._receiver = None

    def _check_live(self) -> None:
        """Raise unless this receiver may still be used."""
        self._store._check_open()
        if self._ended is not None:
            raise ProtocolError(f"the receiver of snapshot {_describe(self.meta)} has {self._ended}")


# -- the shared store logic -------------------------------------------------


class _StoreBase:
    """What both stores share: the index of complete snapshots, the
    bookkeeping of partial transfers and receivers, and pruning."""

    def __init__(self) -> None:
        self._snapshots: dict[_Key, SnapshotFile | _Unreadable] = {}
        self._receiver: SnapshotReceiver | None = None
        self._receive_lock = asyncio.Lock()  # serialises receivers' file work, and prune's
        self._install_lock = asyncio.Lock()  # serialises installing snapshots with pruning them
        self._closed = False

    # -- public, shared ----------------------------------------------------

    def latest(self) -> SnapshotFile | None:
        """The newest complete snapshot (highest index, then highest term), or
        ``None``. Raises :class:`~raftlib.errors.CorruptStorage` naming the
        file, with advice, if the newest one is unreadable."""
        self._check_open()
        if not self._snapshots:
            return None
        return self._usable(self._snapshots[max(self._snapshots)])

    def find(self, index: int, term: int) -> SnapshotFile | None:
        """The complete snapshot at ``index`` and ``term``, or ``None``.
        Raises :class:`~raftlib.errors.CorruptStorage` if it is unreadable."""
        self._check_open()
        entry = self._snapshots.get((index, term))
        return None if entry is None else self._usable(entry)

    def receiver(self, meta: SnapshotMeta, size: int, crc: int) -> SnapshotReceiver:
        """A receiver for a snapshot of ``size`` bytes with CRC32 ``crc``.

        If a partial transfer of the same index, term, size and CRC32 was
        kept, the receiver starts at its length; every other partial is
        discarded. A previous live receiver is superseded. The arguments come
        from the leader, so values no snapshot can have (a negative size, a
        CRC32 of 2**32 or more, an index or term past 20 digits) raise
        :class:`~raftlib.errors.ProtocolError`.
        """
        self._check_open()
        try:
            _check_meta(meta)
        except ValueError as exc:
            raise ProtocolError(f"invalid snapshot offer: {exc}") from None
        if not isinstance(size, int) or size < 0:
            raise ProtocolError(f"invalid snapshot offer: size must be a non-negative integer, not {size!r}")
        if not isinstance(crc, int) or not 0 <= crc <= 0xFFFFFFFF:
            raise ProtocolError(f"invalid snapshot offer: crc must be a CRC32 (in [0, 2**32)), not {crc!r}")
        if self._receiver is not None:
            self._receiver._end("been superseded by a newer transfer")
        key: _ReceiveKey = (meta.index, meta.term, size, crc)
        offset = 0
        for other in list(self._partial_sizes()):
            held = self._partial_sizes()[other]
            if other == key and held <= size:
                offset = held
            else:
                self._drop_partial(other)
        self._note_partial(key, offset)
        receiver = SnapshotReceiver(self, meta, size, crc, offset)
        self._receiver = receiver
        return receiver

    async def prune(self, keep: int = 2, protect: SnapshotMeta | None = None) -> None:
        """Delete all but the newest ``keep`` complete snapshots, and stale
        partial and temporary files. ``protect`` (the snapshot the log storage
        refers to) is kept whatever its age.

        Unreadable snapshot files older than the oldest one kept are deleted
        too; newer ones are left for an operator to inspect. A partial
        transfer survives if a live receiver is using it, or if it is of a
        snapshot newer than every complete one (so the transfer can still
        resume); other partials are stale. Temporary files of writes in
        progress are never touched.
        """
        if keep < 0:
            raise ValueError(f"keep must be at least 0, not {keep}")
        self._check_open()
        async with self._receive_lock, self._install_lock:
            ordered = sorted(self._snapshots, reverse=True)
            kept = [k for k in ordered if isinstance(self._snapshots[k], SnapshotFile)][:keep]
            if keep == 0:
                doomed = ordered
            elif not kept:
                doomed = []
            else:
                doomed = [k for k in ordered if k < kept[-1]]
            if protect is not None:
                doomed = [k for k in doomed if k != (protect.index, protect.term)]
            removed = [self._snapshots.pop(k) for k in doomed]
            newest = max(self._snapshots, default=None)
            live = self._receiver._key if self._receiver is not None else None
            for key in list(self._partial_sizes()):
                if key != live and newest is not None and key[:2] <= newest:
                    self._drop_partial(key)
            await self._sweep(removed)

    # -- internals, shared -------------------------------------------------

    @staticmethod
    def _usable(entry: SnapshotFile | _Unreadable) -> SnapshotFile:
        """``entry`` if it is a readable snapshot; else raise its error."""
        if isinstance(entry, _Unreadable):
            raise entry.error()
        return entry

    def _check_open(self) -> None:
        """Raise :class:`StorageError` once the store is closed."""
        if self._closed:
            raise StorageError(f"the snapshot store {self._name()} is closed")

    # -- what each store provides -------------------------------------------

    def _name(self) -> str:
        """How messages name the store."""
        raise NotImplementedError

    def _partial_sizes(self) -> dict[_ReceiveKey, int]:
        """Bytes held of each kept partial transfer."""
        raise NotImplementedError

    def _note_partial(self, key: _ReceiveKey, size: int) -> None:
        """Record that the partial ``key`` now holds ``size`` bytes."""
        raise NotImplementedError

    def _drop_partial(self, key: _ReceiveKey) -> None:
        """Forget the partial ``key``; its data goes at the next :meth:`_reap`."""
        raise NotImplementedError

    async def _reap(self) -> None:
        """Delete the data of dropped partials (under the receive lock)."""
        raise NotImplementedError

    async def _append_partial(self, key: _ReceiveKey, offset: int, chunk: bytes, first: bool) -> None:
        """Write ``chunk`` at ``offset`` of the partial ``key``; with ``first``,
        cut the partial to ``offset`` bytes beforehand. If the partial turns
        out shorter than ``offset``, drop it and raise :class:`StorageError`."""
        raise NotImplementedError

    async def _complete_partial(self, meta: SnapshotMeta, size: int, crc: int) -> SnapshotFile:
        """Check and install the complete partial of ``meta``, ``size``, ``crc``."""
        raise NotImplementedError

    async def _sweep(self, removed: list[SnapshotFile | _Unreadable]) -> None:
        """Delete the pruned snapshots, dropped partials and stale temporary
        files (under the receive lock)."""
        raise NotImplementedError


# -- the file store ---------------------------------------------------------


class FileSnapshotStore(_StoreBase):
    """A :class:`SnapshotStore` keeping one file per snapshot in ``directory``.

    The directory is created if missing, then scanned: the header of each
    ``.snap`` file is read (not its data, so this is quick) to learn what
    exists, and the length of each kept partial transfer. This scan is the
    only blocking work outside :meth:`open`; construct the store before
    serving, or in a worker thread. A ``.snap`` file whose header is
    unreadable makes :meth:`latest` (if it is the newest) or :meth:`find`
    raise :class:`~raftlib.errors.CorruptStorage` naming it. Use
    :meth:`verify` to check a snapshot's data.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        super().__init__()
        self._dir = os.path.abspath(os.fspath(directory))
        self._partials: dict[_ReceiveKey, int] = {}
        self._dropped: set[str] = set()  # partial files to delete at the next _reap
        self._writing: set[str] = set()  # temporary files of writes in progress
        try:
            os.makedirs(self._dir, exist_ok=True)
            names = os.listdir(self._dir)
        except OSError as exc:
            raise StorageError(f"cannot open the snapshot directory {self._dir}: {exc.strerror or exc}") from exc
        stale = []
        for name in sorted(names):
            path = os.path.join(self._dir, name)
            if _TEMP_NAME.fullmatch(name):
                stale.append(path)  # left by a crash: no write of this store is in progress yet
            elif match := _SNAP_NAME.fullmatch(name):
                key = (int(match[1]), int(match[2]))
                self._snapshots[key] = self._scan(path, key)
            elif match := _PART_NAME.fullmatch(name):
                index, term, size, crc = (int(g) for g in match.groups())
                try:
                    held = os.stat(path).st_size
                except OSError:
                    continue  # prune() deals with it
                if held <= size:
                    self._partials[(index, term, size, crc)] = held
        # At once, not at the next prune: that follows a successful snapshot,
        # which a disk filled by a crashed write's leftovers would never allow.
        try:
            _remove_all(stale, self._dir)
        except OSError:
            pass  # prune() tries again

    @property
    def directory(self) -> str:
        """The absolute path of the snapshot directory."""
        return self._dir

    def _name(self) -> str:
        return f"in {self._dir}"

    def _scan(self, path: str, key: _Key) -> SnapshotFile | _Unreadable:
        """What the header of the ``.snap`` file ``path``, named for ``key``, says."""
        try:
            with io.open(path, "rb") as f:
                meta, size, crc, start = _read_header_sync(f)
                length = os.fstat(f.fileno()).st_size
        except _Malformed as exc:
            return _Unreadable(path, str(exc))
        except OSError as exc:
            return _Unreadable(path, str(exc.strerror or exc), corrupt=False)
        if (meta.index, meta.term) != key:
            return _Unreadable(path, f"its header says index {meta.index} term {meta.term}, unlike its name")
        if length != start + size:
            return _Unreadable(
                path, f"it is {length} bytes long, but its header announces {size} data bytes after a "
                f"{start}-byte header ({start + size} bytes in all)"
            )
        return SnapshotFile(meta=meta, size=size, crc=crc, path=path)

    def _final_path(self, meta: SnapshotMeta) -> str:
        """The ``.snap`` file name of ``meta``'s snapshot."""
        return os.path.join(self._dir, f"snapshot-{meta.index:020d}-{meta.term:020d}.snap")

    def _part_path(self, key: _ReceiveKey) -> str:
        """The ``.part`` file of the transfer ``key``."""
        index, term, size, crc = key
        return os.path.join(self._dir, f"receive-{index}-{term}-{size}-{crc}.part")

    def _temp_path(self, meta: SnapshotMeta) -> str:
        """A fresh temporary file name for ``meta``'s snapshot, registered as in use."""
        path = os.path.join(self._dir, f"snapshot-{meta.index:020d}-{meta.term:020d}.{secrets.token_hex(6)}.tmp")
        self._writing.add(path)
        return path

    def _data_path(self, snap: SnapshotFile) -> str:
        """Where ``snap`` lives: its ``path``, or its name in this directory."""
        return snap.path if snap.path is not None else self._final_path(snap.meta)

    async def _rename_into_place(self, temp: str, snap: SnapshotFile) -> None:
        """Durably rename the complete, flushed ``temp`` to ``snap.path`` and
        record ``snap``, without letting a concurrent prune slip in between."""
        assert snap.path is not None
        async with self._install_lock:
            with _io_errors(f"rename {temp} to", snap.path):
                await asyncio.to_thread(_replace_durably, temp, snap.path, self._dir)
            self._snapshots[(snap.meta.index, snap.meta.term)] = snap

    # -- writing -----------------------------------------------------------

    async def write(self, meta: SnapshotMeta, data: SnapshotData) -> SnapshotFile:
        """Store ``data`` as the snapshot ``meta``, atomically and durably.

        The data goes to a temporary file in the directory, chunk by chunk,
        while its size and CRC32 are computed; then the header is completed,
        the file flushed to disk, renamed to its final name and the directory
        flushed. A failure or cancellation removes the temporary file, so a
        ``.snap`` name only ever holds a complete snapshot. ``data`` may be
        bytes, a binary file (read in a worker thread from its current
        position) or an iterable or async iterable of byte chunks (a plain
        iterable's ``next()`` runs in a worker thread).
        """
        self._check_open()
        _check_meta(meta)
        final = self._final_path(meta)
        temp = self._temp_path(meta)
        done = False
        try:
            with _io_errors("create the temporary snapshot file", temp):
                f = await aiofiles.open(temp, "xb")
            try:
                size = crc = 0
                with _io_errors("write the temporary snapshot file", temp):
                    await f.write(_encode_prefix(meta, 0, 0))
                async with aclosing(_chunks(data)) as chunks:
                    async for chunk in chunks:
                        size += len(chunk)
                        crc = zlib.crc32(chunk, crc)
                        with _io_errors("write the temporary snapshot file", temp):
                            await f.write(chunk)
                with _io_errors("write the temporary snapshot file", temp):
                    await f.seek(0)
                    await f.write(_encode_prefix(meta, size, crc))
                    await f.flush()
                    await asyncio.to_thread(os.fsync, f.fileno())
            finally:
                with _io_errors("close the temporary snapshot file", temp):
                    await f.close()
            snap = SnapshotFile(meta=meta, size=size, crc=crc, path=final)
            await self._rename_into_place(temp, snap)
            done = True
        finally:
            self._writing.discard(temp)
            if not done:
                await asyncio.to_thread(_remove_quietly, temp)
        return snap

    # -- reading -----------------------------------------------------------

    async def read_chunks(
        self, snap: SnapshotFile, offset: int = 0, chunk_size: int = CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """Yield ``snap``'s data from byte ``offset`` on, in chunks of at most
        ``chunk_size`` bytes, read through :mod:`aiofiles`. The file's header
        must still describe ``snap``
        (:class:`~raftlib.errors.CorruptStorage` otherwise)."""
        self._check_open()
        _check_read(snap, offset, chunk_size)
        path = self._data_path(snap)
        with _io_errors("read the snapshot file", path, reading=True):
            async with aiofiles.open(path, "rb") as f:
                try:
                    meta, size, crc, start = await _read_header_async(f)
                    _check_describes(snap, meta, size, crc)
                except _Malformed as exc:
                    raise CorruptStorage(f"corrupt snapshot file {path}: {exc}; {_ADVICE}") from exc
                await f.seek(start + offset)
                remaining = snap.size - offset
                while remaining:
                    chunk = await f.read(min(chunk_size, remaining))
                    if not chunk:
                        raise CorruptStorage(
                            f"corrupt snapshot file {path}: its data ends {remaining} bytes short of the "
                            f"{snap.size} its header announces; {_ADVICE}"
                        )
                    remaining -= len(chunk)
                    yield chunk

    def open(self, snap: SnapshotFile) -> BinaryIO:
        """Open ``snap``'s file for blocking reads, positioned at the start of
        its data (after the header, which must describe ``snap``). Meant for
        a worker thread restoring the state machine; the caller closes it."""
        self._check_open()
        path = self._data_path(snap)
        with _io_errors("open the snapshot file", path, reading=True):
            f = io.open(path, "rb")
            try:
                meta, size, crc, start = _read_header_sync(f)
                _check_describes(snap, meta, size, crc)
                f.seek(start)
            except _Malformed as exc:
                f.close()
                raise CorruptStorage(f"corrupt snapshot file {path}: {exc}; {_ADVICE}") from exc
            except BaseException:
                f.close()
                raise
        return f

    async def verify(self, snap: SnapshotFile) -> None:
        """Re-read ``snap``'s file and check its header, data length and
        CRC32; raise :class:`~raftlib.errors.CorruptStorage` naming the file
        (with the expected and computed CRC32) on any mismatch."""
        self._check_open()
        path = self._data_path(snap)
        size = crc = 0
        with _io_errors("verify the snapshot file", path, reading=True):
            async with aiofiles.open(path, "rb") as f:
                try:
                    meta, header_size, header_crc, _ = await _read_header_async(f)
                    _check_describes(snap, meta, header_size, header_crc)
                except _Malformed as exc:
                    raise CorruptStorage(f"corrupt snapshot file {path}: {exc}; {_ADVICE}") from exc
                while chunk := await f.read(CHUNK_SIZE):
                    size += len(chunk)
                    crc = zlib.crc32(chunk, crc)
        if size != snap.size:
            raise CorruptStorage(
                f"corrupt snapshot file {path}: it holds {size} data bytes, not the expected {snap.size}; {_ADVICE}"
            )
        if crc != snap.crc:
            raise CorruptStorage(
                f"corrupt snapshot file {path}: its data failed its checksum (expected CRC32 {snap.crc:#010x}, "
                f"computed {crc:#010x}); {_ADVICE}"
            )

    # -- receiving ---------------------------------------------------------

    def _partial_sizes(self) -> dict[_ReceiveKey, int]:
        return self._partials

    def _note_partial(self, key: _ReceiveKey, size: int) -> None:
        self._partials[key] = size
        self._dropped.discard(self._part_path(key))  # claimed again: keep the file

    def _drop_partial(self, key: _ReceiveKey) -> None:
        if self._partials.pop(key, None) is not None:
            self._dropped.add(self._part_path(key))

    async def _reap(self) -> None:
        if self._dropped:
            doomed, self._dropped = self._dropped, set()
            await asyncio.to_thread(_remove_all, doomed, self._dir)

    async def _append_partial(self, key: _ReceiveKey, offset: int, chunk: bytes, first: bool) -> None:
        path = self._part_path(key)
        with _io_errors("write the partial snapshot file", path):
            if not first:
                async with aiofiles.open(path, "ab") as f:
                    await f.write(chunk)
            elif offset == 0:
                async with aiofiles.open(path, "wb") as f:
                    await f.write(chunk)
            else:
                try:
                    f = await aiofiles.open(path, "r+b")
                except FileNotFoundError:
                    held = 0
                else:
                    try:
                        held = await f.seek(0, os.SEEK_END)
                        if held >= offset:
                            await f.seek(offset)
                            await f.truncate()
                            await f.write(chunk)
                            return
                    finally:
                        await f.close()
                self._drop_partial(key)
                raise StorageError(
                    f"cannot resume the snapshot transfer {path}: the file holds {held} bytes, fewer than the "
                    f"{offset} recorded; the transfer must start again from the beginning"
                )

    async def _complete_partial(self, meta: SnapshotMeta, size: int, crc: int) -> SnapshotFile:
        key: _ReceiveKey = (meta.index, meta.term, size, crc)
        part = self._part_path(key)
        final = self._final_path(meta)
        temp = self._temp_path(meta)
        done = False
        try:
            if size == 0:  # nothing was ever written, so there may be no file
                with _io_errors("create the partial snapshot file", part):
                    async with aiofiles.open(part, "ab"):
                        pass
            copied = actual = 0
            with _io_errors("install the received snapshot from", part):
                async with aiofiles.open(part, "rb") as src, aiofiles.open(temp, "xb") as dst:
                    await dst.write(_encode_prefix(meta, size, crc))
                    while chunk := await src.read(CHUNK_SIZE):
                        copied += len(chunk)
                        actual = zlib.crc32(chunk, actual)
                        if copied > size:
                            break
                        await dst.write(chunk)
                    intact = copied == size and actual == crc
                    if intact:
                        await dst.flush()
                        await asyncio.to_thread(os.fsync, dst.fileno())
            if not intact:
                self._drop_partial(key)
                await self._reap()
                raise CorruptStorage(
                    f"corrupt snapshot transfer {part}: it holds {copied} bytes with CRC32 {actual:#010x}, but the "
                    f"leader announced {size} bytes with CRC32 {crc:#010x}; the partial file was deleted, so the "
                    "transfer starts again from the beginning"
                )
            snap = SnapshotFile(meta=meta, size=size, crc=crc, path=final)
            await self._rename_into_place(temp, snap)
            done = True
        finally:
            self._writing.discard(temp)
            if not done:
                await asyncio.to_thread(_remove_quietly, temp)
        self._drop_partial(key)
        await self._reap()
        return snap

    # -- pruning -----------------------------------------------------------

    async def _sweep(self, removed: list[SnapshotFile | _Unreadable]) -> None:
        with _io_errors("list the snapshot directory", self._dir):
            names = await asyncio.to_thread(os.listdir, self._dir)
        kept_parts = {self._part_path(k) for k in self._partials}
        doomed = {entry.path for entry in removed if entry.path is not None} | self._dropped
        self._dropped = set()
        for name in names:
            path = os.path.join(self._dir, name)
            stale_temp = _TEMP_NAME.fullmatch(name) and path not in self._writing
            stale_part = _PART_NAME.fullmatch(name) and path not in kept_parts
            if stale_temp or stale_part:
                doomed.add(path)
        if doomed:
            await asyncio.to_thread(_remove_all, sorted(doomed), self._dir)

    def close(self) -> None:
        """Close the store (it holds no open files); later calls raise
        :class:`~raftlib.errors.StorageError`. Idempotent."""
        self._closed = True


# -- the memory store -------------------------------------------------------


class MemorySnapshotStore(_StoreBase):
    """A :class:`SnapshotStore` keeping snapshots, and partial transfers for
    resumption, as bytes in memory. Same semantics as
    :class:`FileSnapshotStore` (with ``path=None``); nothing survives the
    process."""

    def __init__(self) -> None:
        super().__init__()
        self._data: dict[_Key, bytes] = {}
        self._partial_data: dict[_ReceiveKey, bytearray] = {}
        self._sizes: dict[_ReceiveKey, int] = {}

    def _name(self) -> str:
        return "in memory"

    @staticmethod
    def _label(meta: SnapshotMeta) -> str:
        """How messages name a snapshot of this store, as if it were a file."""
        return f"memory:snapshot-{meta.index:020d}-{meta.term:020d}.snap"

    def _lookup(self, snap: SnapshotFile) -> bytes:
        """The stored data of ``snap``, which must be the snapshot stored now."""
        self._check_open()
        key = (snap.meta.index, snap.meta.term)
        data = self._data.get(key)
        stored = self._snapshots.get(key)
        if data is None or not isinstance(stored, SnapshotFile):
            raise StorageError(f"snapshot {self._label(snap.meta)} is not in the store (was it pruned?)")
        try:
            _check_describes(snap, stored.meta, stored.size, stored.crc)
        except _Malformed as exc:
            raise CorruptStorage(f"corrupt snapshot {self._label(snap.meta)}: {exc}") from exc
        return data

    async def write(self, meta: SnapshotMeta, data: SnapshotData) -> SnapshotFile:
        """Store ``data`` (bytes, a binary file, or an (async) iterable of
        chunks) as the snapshot ``meta``; see :meth:`FileSnapshotStore.write`."""
        self._check_open()
        _check_meta(meta)
        if isinstance(data, bytes):
            whole = data
        else:
            pieces: list[bytes] = []
            async with aclosing(_chunks(data)) as chunks:
                async for chunk in chunks:
                    pieces.append(bytes(chunk))
            whole = b"".join(pieces)
        snap = SnapshotFile(meta=meta, size=len(whole), crc=zlib.crc32(whole), path=None)
        key = (meta.index, meta.term)
        self._data[key] = whole
        self._snapshots[key] = snap
        return snap

    async def read_chunks(
        self, snap: SnapshotFile, offset: int = 0, chunk_size: int = CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """Yield ``snap``'s data from byte ``offset`` on, in chunks of at most
        ``chunk_size`` bytes."""
        _check_read(snap, offset, chunk_size)
        view = memoryview(self._lookup(snap))
        for start in range(offset, snap.size, chunk_size):
            yield bytes(view[start : start + chunk_size])

    def open(self, snap: SnapshotFile) -> BinaryIO:
        """A :class:`io.BytesIO` of ``snap``'s data; the caller closes it."""
        return io.BytesIO(self._lookup(snap))

    async def verify(self, snap: SnapshotFile) -> None:
        """Check the stored data's length and CRC32 against ``snap``; raise
        :class:`~raftlib.errors.CorruptStorage` on a mismatch."""
        data = self._lookup(snap)
        actual = zlib.crc32(data)
        if len(data) != snap.size or actual != snap.crc:
            raise CorruptStorage(
                f"corrupt snapshot {self._label(snap.meta)}: {len(data)} bytes with CRC32 {actual:#010x}, "
                f"expected {snap.size} bytes with CRC32 {snap.crc:#010x}"
            )

    def _partial_sizes(self) -> dict[_ReceiveKey, int]:
        return self._sizes

    def _note_partial(self, key: _ReceiveKey, size: int) -> None:
        self._sizes[key] = size
        self._partial_data.setdefault(key, bytearray())

    def _drop_partial(self, key: _ReceiveKey) -> None:
        self._sizes.pop(key, None)
        self._partial_data.pop(key, None)

    async def _reap(self) -> None:
        return None

    async def _append_partial(self, key: _ReceiveKey, offset: int, chunk: bytes, first: bool) -> None:
        buffer = self._partial_data.setdefault(key, bytearray())
        if first:
            del buffer[offset:]
        buffer += chunk

    async def _complete_partial(self, meta: SnapshotMeta, size: int, crc: int) -> SnapshotFile:
        key: _ReceiveKey = (meta.index, meta.term, size, crc)
        whole = bytes(self._partial_data.get(key, b""))
        actual = zlib.crc32(whole)
        self._drop_partial(key)
        if len(whole) != size or actual != crc:
            raise CorruptStorage(
                f"corrupt snapshot transfer {self._label(meta)}: it holds {len(whole)} bytes with CRC32 "
                f"{actual:#010x}, but the leader announced {size} bytes with CRC32 {crc:#010x}; the partial data "
                "was deleted, so the transfer starts again from the beginning"
            )
        snap = SnapshotFile(meta=meta, size=size, crc=crc, path=None)
        self._data[(meta.index, meta.term)] = whole
        self._snapshots[(meta.index, meta.term)] = snap
        return snap

    async def _sweep(self, removed: list[SnapshotFile | _Unreadable]) -> None:
        for entry in removed:
            if isinstance(entry, SnapshotFile):
                self._data.pop((entry.meta.index, entry.meta.term), None)

    def close(self) -> None:
        """Drop every snapshot and partial; later calls raise
        :class:`~raftlib.errors.StorageError`. Idempotent."""
        self._closed = True
        self._data.clear()
        self._snapshots.clear()
        self._partial_data.clear()
        self._sizes.clear()
