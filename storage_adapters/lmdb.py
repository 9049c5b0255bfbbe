"""The LMDB adapter, raftlib's default durable storage.

One LMDB environment lives in a directory and holds two sub-databases:

``log``
    key: the entry index as 8 bytes, big-endian (so keys sort by index);
    value: a 4-byte big-endian CRC32 (:func:`zlib.crc32`) of the rest,
    followed by msgpack ``[term, kind, data]``.

``meta``
    ``b"hard_state"`` -> msgpack ``[term, vote, commit]``;
    ``b"snapshot"`` -> msgpack ``[index, term, voters, learners]``;
    ``b"boundary"`` -> msgpack ``[compacted_index, compacted_term]``, the last
    entry dropped by compaction (absent on a fresh log, meaning ``[0, 0]``);
    ``b"format"`` -> msgpack ``1``, the layout version.

The environment keeps LMDB's durable commits (``sync=True,
metasync=True``): a commit flushes the new pages to disk, then writes and
flushes the meta page that makes them current. A save, a compaction or a
snapshot record is on disk when its method returns, and a power failure at
any moment leaves either the previous transaction or the new one, never a
meta page pointing at pages that did not reach the disk (which one flush
of both, in no particular order, could leave). Several entries saved
together cost one commit.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from contextlib import contextmanager
from typing import Iterator, Sequence

import lmdb
import msgpack

from raftlib.errors import CorruptStorage, StorageError, StorageFull
from raftlib.types import Entry, EntryKind, HardState, Membership, SnapshotMeta

from .memory import check_append, check_compact, check_range, check_term_index, take_within

FORMAT_VERSION = 1
"""The layout version stored under ``meta[b"format"]``."""

_KEY = struct.Struct(">Q")
_CRC = struct.Struct(">I")

_HARD_STATE = b"hard_state"
_SNAPSHOT = b"snapshot"
_BOUNDARY = b"boundary"
_FORMAT = b"format"

RECOVERY_ADVICE = (
    "this member cannot be trusted with its data: remove it from the cluster, wipe its data directory "
    "and add it back as a new member (see docs/operations.md, 'Recover a member')"
)

_DECODE_ERRORS = (ValueError, TypeError, msgpack.UnpackException)
"""What msgpack and the record constructors raise on undecodable bytes."""


def _is_no_space(exc: BaseException) -> bool:
    """Whether an LMDB error reports a full device (ENOSPC)."""
    text = str(exc)
    return "No space left" in text or f"[Errno {errno.ENOSPC}]" in text or getattr(exc, "errno", None) == errno.ENOSPC


def _encode_entry(entry: Entry) -> bytes:
    """The ``log`` value for ``entry``: CRC32 of the body, then the body."""
    body: bytes = msgpack.packb([entry.term, int(entry.kind), entry.data])
    return _CRC.pack(zlib.crc32(body)) + body


class LMDBStorage:
    """A :class:`~storage_adapters.protocol.LogStorage` in an LMDB environment.

    ``path`` is the environment's directory, created if missing; ``map_size``
    is the most the database may grow to (LMDB reserves address space, not
    disk). The first and last index are cached in memory, so
    :meth:`first_index` and :meth:`last_index` never touch the database.
    Every read verifies the entry's CRC32 and raises
    :class:`~raftlib.errors.CorruptStorage` naming the path and index on a
    mismatch; LMDB failures become :class:`~raftlib.errors.StorageError`.

    No transaction outlives a method call, so reads may run on a different
    thread than the last :meth:`save`. ``sync_count`` counts the calls to
    :meth:`save` with ``sync=True``.
    """

    def __init__(self, path: str | os.PathLike[str], *, map_size: int = 8 << 30) -> None:
        self._path = os.fspath(path)
        self._map_size = map_size
        self.sync_count = 0
        try:
            os.makedirs(self._path, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the LMDB directory {self._path}: {exc}") from exc
        with self._lmdb_errors("open the database"):
            self._env = lmdb.open(
                self._path,
                map_size=map_size,
                subdir=True,
                sync=True,
                metasync=True,
                lock=True,
                max_dbs=4,
            )
        try:
            with self._lmdb_errors("open the database"):
                self._log_db = self._env.open_db(b"log")
                self._meta_db = self._env.open_db(b"meta")
                with self._env.begin(write=True) as txn:
                    self._check_format(txn)
                    boundary_index, self._boundary_term = self._read_boundary(txn)
                    self._first_index = boundary_index + 1
                    self._last_index = self._find_last_index(txn, boundary_index)
        except BaseException:
            self._env.close()
            raise

    # -- the LogStorage protocol ------------------------------------------

    def load(self) -> tuple[HardState, SnapshotMeta | None]:
        """Return the stored hard state (``HardState()`` if none) and the
        latest snapshot's metadata, if any."""
        with self._lmdb_errors("load the hard state"), self._env.begin() as txn:
            hard_state = self._read_hard_state(txn)
            snapshot = self._read_snapshot(txn)
        return hard_state, snapshot

    def first_index(self) -> int:
        """First log index still stored (cached)."""
        return self._first_index

    def last_index(self) -> int:
        """Last log index stored (cached)."""
        return self._last_index

    def term(self, index: int) -> int:
        """Term of the entry at ``index``; the boundary's term at ``first_index() - 1``."""
        check_term_index(index, self._first_index, self._last_index)
        if index == self._first_index - 1:
            return self._boundary_term
        with self._lmdb_errors(f"read log entry {index}"), self._env.begin() as txn:
            return self._read_entry(txn, index).term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, cut short by ``max_bytes`` (at least one entry)."""
        check_range(lo, hi, self._first_index, self._last_index)
        if lo == hi:
            return []
        with self._lmdb_errors(f"read log entries [{lo}, {hi})"), self._env.begin() as txn:
            return take_within(self._iter_entries(txn, lo, hi), max_bytes)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], sync: bool = True) -> None:
        """In one write transaction, drop stored entries at or after
        ``entries[0].index``, append ``entries`` and store ``hard_state``
        (unless ``None``); with ``sync``, flush to disk before returning
        (this adapter always does: its commits are durable)."""
        check_append(entries, self._first_index, self._last_index)
        with self._lmdb_errors("save"):
            with self._env.begin(write=True) as txn:
                if entries:
                    cursor = txn.cursor(db=self._log_db)
                    if cursor.set_range(_KEY.pack(entries[0].index)):
                        # Each delete moves to the next key; False once the end is passed.
                        while cursor.delete():
                            pass
                    # Every remaining key is smaller, so LMDB may append in key order.
                    cursor.putmulti(((_KEY.pack(e.index), _encode_entry(e)) for e in entries), append=True)
                if hard_state is not None:
                    packed = msgpack.packb([hard_state.term, hard_state.vote, hard_state.commit])
                    txn.put(_HARD_STATE, packed, db=self._meta_db)
            if entries:
                self._last_index = entries[-1].index
        if sync:
            self.sync_count += 1

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        """Discard the whole log, make ``meta`` the boundary and the latest
        snapshot, and flush to disk."""
        with self._lmdb_errors(f"install the snapshot at index {meta.index}"):
            with self._env.begin(write=True) as txn:
                txn.drop(self._log_db, delete=False)
                self._write_snapshot(txn, meta)
                txn.put(_BOUNDARY, msgpack.packb([meta.index, meta.term]), db=self._meta_db)
            self._first_index = meta.index + 1
            self._last_index = meta.index
            self._boundary_term = meta.term

    def compact(self, index: int, meta: SnapshotMeta) -> None:
        """Drop entries up to and including ``index``, record ``meta`` as the
        latest snapshot, and flush to disk.

        ``index`` must be at most ``meta.index`` and at most ``last_index()``
        (:class:`ValueError` otherwise). An ``index`` that is already
        compacted only records ``meta``.
        """
        check_compact(index, meta, self._last_index)
        with self._lmdb_errors(f"compact the log through index {index}"):
            boundary_term: int | None = None
            with self._env.begin(write=True) as txn:
                if index >= self._first_index:
                    boundary_term = self._read_entry(txn, index).term
                    limit = _KEY.pack(index)
                    cursor = txn.cursor(db=self._log_db)
                    cursor.first()
                    # Big-endian keys compare like the indexes they encode.
                    while cursor.key() and cursor.key() <= limit:
                        cursor.delete()
                    txn.put(_BOUNDARY, msgpack.packb([index, boundary_term]), db=self._meta_db)
                self._write_snapshot(txn, meta)
            if boundary_term is not None:
                self._first_index = index + 1
                self._boundary_term = boundary_term

    def close(self) -> None:
        """Close the environment. Idempotent."""
        with self._lmdb_errors("close the database"):
            self._env.close()

    # -- helpers ----------------------------------------------------------

    @contextmanager
    def _lmdb_errors(self, action: str) -> Iterator[None]:
        """Turn :class:`lmdb.Error` raised while doing ``action`` into
        :class:`StorageError` naming the path."""
        try:
            yield
        except lmdb.MapFullError as exc:
            raise StorageFull(
                f"cannot {action}: the LMDB database at {self._path} reached its map_size of "
                f"{self._map_size} bytes; reopen it with a larger map_size"
            ) from exc
        except lmdb.Error as exc:
            if _is_no_space(exc):
                raise StorageFull(f"cannot {action}: no space left on the device of {self._path}") from exc
            raise StorageError(f"cannot {action}: LMDB error in {self._path}: {exc}") from exc

    def _corrupt(self, what: str, detail: str) -> CorruptStorage:
        """A :class:`CorruptStorage` naming the path and the bad record."""
        return CorruptStorage(f"corrupt LMDB storage at {self._path}: {what} {detail}; {RECOVERY_ADVICE}")

    def _decode_entry(self, index: int, value: bytes | memoryview) -> Entry:
        """Check the CRC32 of a stored ``log`` value and decode it."""
        what = f"log entry {index}"
        if len(value) < _CRC.size:
            raise self._corrupt(what, f"is truncated to {len(value)} bytes")
        (stored,) = _CRC.unpack_from(value)
        body = memoryview(value)[_CRC.size :]
        computed = zlib.crc32(body)
        if stored != computed:
            raise self._corrupt(what, f"failed its checksum (stored CRC32 {stored:#010x}, computed {computed:#010x})")
        try:
            term, kind, data = msgpack.unpackb(body, raw=False)
            entry_kind = EntryKind(kind)
        except _DECODE_ERRORS as exc:
            raise self._corrupt(what, f"cannot be decoded: {exc}") from exc
        if not isinstance(term, int) or not isinstance(data, bytes):
            raise self._corrupt(what, f"has a term of type {type(term).__name__} and data of type {type(data).__name__}")
        return Entry(term=term, index=index, kind=entry_kind, data=data)

    def _read_entry(self, txn: lmdb.Transaction, index: int) -> Entry:
        """The stored entry at ``index``, which must be within the log."""
        value = txn.get(_KEY.pack(index), db=self._log_db)
        if value is None:
            raise self._corrupt(f"log entry {index}", "is missing")
        return self._decode_entry(index, value)

    def _iter_entries(self, txn: lmdb.Transaction, lo: int, hi: int) -> Iterator[Entry]:
        """Lazily decode the entries ``[lo, hi)``, which must be within the log."""
        cursor = txn.cursor(db=self._log_db)
        cursor.set_range(_KEY.pack(lo))
        for index in range(lo, hi):
            if cursor.key() != _KEY.pack(index):
                raise self._corrupt(f"log entry {index}", "is missing")
            yield self._decode_entry(index, cursor.value())
            cursor.next()

    def _read_meta(self, txn: lmdb.Transaction, key: bytes) -> object:
        """The decoded ``meta`` record ``key``, or ``None`` if absent."""
        raw = txn.get(key, db=self._meta_db)
        if raw is None:
            return None
        try:
            return msgpack.unpackb(raw, raw=False)
        except _DECODE_ERRORS as exc:
            raise self._corrupt(f"meta record {key.decode()}", f"cannot be decoded: {exc}") from exc

    def _read_hard_state(self, txn: lmdb.Transaction) -> HardState:
        """The stored hard state, ``HardState()`` if none was saved."""
        record = self._read_meta(txn, _HARD_STATE)
        if record is None:
            return HardState()
        match record:
            case [int(term), str() | None as vote, int(commit)]:
                return HardState(term=term, vote=vote, commit=commit)
        raise self._corrupt("meta record hard_state", f"is malformed: {record!r}")

    def _read_snapshot(self, txn: lmdb.Transaction) -> SnapshotMeta | None:
        """The latest snapshot's metadata, ``None`` if there is none."""
        record = self._read_meta(txn, _SNAPSHOT)
        if record is None:
            return None
        match record:
            case [int(index), int(term), dict(voters), dict(learners)]:
                return SnapshotMeta(index=index, term=term, membership=Membership(voters=voters, learners=learners))
        raise self._corrupt("meta record snapshot", f"is malformed: {record!r}")

    def _read_boundary(self, txn: lmdb.Transaction) -> tuple[int, int]:
        """Index and term of the last compacted entry, ``(0, 0)`` if none."""
        record = self._read_meta(txn, _BOUNDARY)
        if record is None:
            return 0, 0
        match record:
            case [int(index), int(term)]:
                return index, term
        raise self._corrupt("meta record boundary", f"is malformed: {record!r}")

    def _write_snapshot(self, txn: lmdb.Transaction, meta: SnapshotMeta) -> None:
        """Store ``meta`` as the latest snapshot."""
        membership = meta.membership
        record = [meta.index, meta.term, dict(membership.voters), dict(membership.learners)]
        txn.put(_SNAPSHOT, msgpack.packb(record), db=self._meta_db)

    def _check_format(self, txn: lmdb.Transaction) -> None:
        """Record the layout version in a new database; refuse an unknown one."""
        version = self._read_meta(txn, _FORMAT)
        if version is None:
            txn.put(_FORMAT, msgpack.packb(FORMAT_VERSION), db=self._meta_db)
        elif version != FORMAT_VERSION:
            raise StorageError(
                f"the LMDB database at {self._path} has layout version {version!r}; "
                f"this raftlib reads only version {FORMAT_VERSION}"
            )

    def _find_last_index(self, txn: lmdb.Transaction, boundary_index: int) -> int:
        """The last stored index, after checking that the log starts right
        after the boundary."""
        cursor = txn.cursor(db=self._log_db)
        if not cursor.last():
            return boundary_index
        last: int = _KEY.unpack(cursor.key())[0]
        cursor.first()
        first: int = _KEY.unpack(cursor.key())[0]
        if first != boundary_index + 1:
            raise self._corrupt(
                "log", f"starts at index {first}, but the last compacted index is {boundary_index}"
            )
        return last
