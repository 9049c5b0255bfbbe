"""The LMDB adapter, raftlib's default durable storage.

One LMDB environment lives in a directory and holds two sub-databases:

``log``
    key: the entry index as 8 bytes, big-endian (so keys sort by index);
    value: a 4-byte big-endian CRC32 (:func:`zlib.crc32`) of the rest,
    followed by msgpack ``[term, kind, data]``.

``meta``
    ``b"hard_state"`` -> msgpack ``[term, vote, commit]``;
    ``b"snapshot"`` -> msgpack ``[index, term, voters, learners]``, and the
    cluster ID fifth if the membership has one;
    ``b"boundary"`` -> msgpack ``[compacted_index, compacted_term]``, the last
    entry dropped by compaction (absent on a fresh log, meaning ``[0, 0]``);
    ``b"wal_checkpointed"`` -> msgpack generation (see below);
    ``b"format"`` -> msgpack ``1``, the layout version.
    Each record but ``format`` is stored as the byte ``0xc1`` (which msgpack
    never uses), a 4-byte big-endian CRC32 of the msgpack, then the msgpack.
    Records written without it (plain msgpack) are still read.

The environment keeps LMDB's durable commits (``sync=True,
metasync=True``): a commit flushes the new pages to disk, then writes and
flushes the meta page that makes them current. A save, a compaction or a
snapshot record is on disk when its method returns, and a power failure at
any moment leaves either the previous transaction or the new one, never a
meta page pointing at pages that did not reach the disk (which one flush
of both, in no particular order, could leave).

Recent saves go to a write-ahead file first (``wal-0`` and ``wal-1`` in the
same directory, see :mod:`storage_adapters.wal`): each save is one record
appended to the active file and flushed once, and its entries stay in
memory. When the active file fills up, or holds ``checkpoint_entries``
entries, the other file is emptied and becomes the active one, and a
background thread *checkpoints* what the full one holds: one durable LMDB
commit of those entries and hard state, which also records
``meta[b"wal_checkpointed"]``, the newest file generation LMDB now holds
(each file's header carries a generation; emptying a file gives it a new,
higher one). Before a snapshot is installed, for a large save (over
``DIRECT_BYTES``, committed straight to LMDB) and on
:meth:`LMDBStorage.close`, the checkpoint is synchronous and empties both
files.

Opening the directory replays the records of the generations newer than
``wal_checkpointed``, oldest first, onto what LMDB holds, exactly as they
were saved, and checkpoints them. Compaction, which only drops committed
entries, is committed to LMDB at once; replayed entries it dropped are
skipped.
"""

from __future__ import annotations

import concurrent.futures
import errno
import fcntl
import itertools
import os
import struct
import sys
import zlib
from contextlib import contextmanager
from typing import Iterator, Sequence

import lmdb
import msgpack

from raftlib.errors import ConfigError, CorruptStorage, StorageError, StorageFull
from raftlib.types import Entry, EntryKind, HardState, Membership, SnapshotMeta

from .memory import check_append, check_compact, check_range, check_term_index, take_within
from .wal import HEADER_SIZE, WriteAheadFile

FORMAT_VERSION = 1
"""The layout version stored under ``meta[b"format"]``."""

_KEY = struct.Struct(">Q")
_CRC = struct.Struct(">I")

WAL_FILES = ("wal-0", "wal-1")
"""The write-ahead files' names in the environment's directory."""
WAL_SIZE = 8 << 20
"""Bytes preallocated for each write-ahead file (the ``wal_size`` default)."""
CHECKPOINT_ENTRIES = 2048
"""Entries saved to the active write-ahead file before the files switch and
a checkpoint starts (the ``checkpoint_entries`` default)."""
DIRECT_BYTES = 1 << 20
"""A save whose entries' data passes this many bytes is committed straight to
LMDB (with whatever the write-ahead file holds): it gains nothing from the
file, and a full map shows up as that save's error."""

_PUT_SLICE = 1024
"""Entries put to LMDB per call in a checkpoint."""

_KINDS = frozenset(int(k) for k in EntryKind)

_HARD_STATE = b"hard_state"
_CHECKPOINTED = b"wal_checkpointed"
_SNAPSHOT = b"snapshot"
_BOUNDARY = b"boundary"
_FORMAT = b"format"
_OWN_DATABASES = frozenset({b"log", b"meta"})
"""The named databases of the adapter, the only keys of LMDB's main database."""

_LMDB_MAGIC = 0xBEEFC0DE
"""``mm_magic`` of an LMDB meta page."""
_META_U32 = struct.Struct("=I")
"""``mm_magic`` and the page size are native 32-bit ints."""
_META_MAGIC_AT = 16
"""Offset of ``mm_magic`` in a meta page (after the 16-byte page header)."""
_META_PAGE_SIZE_AT = 40
"""Offset of the page size (``md_pad`` of the free-page database's record)."""
_META_LAST = struct.Struct("=QQ")
_META_LAST_AT = 136
"""Offset of ``mm_last_pg`` and ``mm_txnid``, the last page used and the transaction id."""
_META_END = _META_LAST_AT + _META_LAST.size

RECOVERY_ADVICE = (
    "this member cannot be trusted with its data: remove it from the cluster, wipe its data directory "
    "and add it back as a new member (see docs/operations.md, 'Recover a member')"
)

_DECODE_ERRORS = (ValueError, TypeError, msgpack.UnpackException)
"""What msgpack and the record constructors raise on undecodable bytes."""


_META_CRC_MARK = b"\xc1"
"""First byte of a ``meta`` record that carries a CRC32: a byte msgpack never
uses, so records written before they had one are told apart."""


def _meta_value(value: object) -> bytes:
    """The stored form of ``meta`` record ``value``: mark, CRC32, msgpack."""
    packed: bytes = msgpack.packb(value)
    return _META_CRC_MARK + _CRC.pack(zlib.crc32(packed)) + packed


def _is_no_space(exc: BaseException) -> bool:
    """Whether an LMDB error reports a full device (ENOSPC)."""
    text = str(exc)
    return "No space left" in text or f"[Errno {errno.ENOSPC}]" in text or getattr(exc, "errno", None) == errno.ENOSPC


_FULL_DEVICE_BYTES = 1 << 20
"""Free space below which an I/O error of LMDB's is taken for a full device."""


def _is_write_cut_short(exc: BaseException, path: str) -> bool:
    """Whether an LMDB error is a write the file system cut short for want of
    space. A file system with a few blocks left writes what fits and returns
    a short count, which LMDB reports as EIO rather than ENOSPC; so an EIO
    counts when the device has (almost) no space left for this process.
    LMDB aborted the transaction: nothing of it was committed."""
    if os.strerror(errno.EIO) not in str(exc) and getattr(exc, "errno", None) != errno.EIO:
        return False
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _FULL_DEVICE_BYTES


_pack_plain = msgpack.Packer().pack
"""A packer reused for lists of ints, str, bytes and None only (entry
bodies, hard states): the C packer packs those without running Python
code, so a call is atomic under the GIL and any thread may share it."""


def _encode_body(entry: Entry) -> bytes:
    """msgpack ``[term, kind, data]``: an entry in a write-ahead record, and
    the body of its LMDB value."""
    return _pack_plain([entry.term, int(entry.kind), entry.data])  # type: ignore[no-any-return]


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _encode_record(hard_state: HardState | None, entries: Sequence[Entry], bodies: list[bytes]) -> bytes:
    """A write-ahead record: msgpack ``[hard_state, first_index, [body, ...]]``
    with ``hard_state`` as ``[term, vote, commit]`` or nil and each entry's
    body from :func:`_encode_body`."""
    hs = None if hard_state is None else [hard_state.term, hard_state.vote, hard_state.commit]
    first = entries[0].index if entries else 0
    head: bytes = b"\x93" + _pack_plain(hs) + _pack_plain(first)
    return head + _array_header(len(bodies)) + b"".join(bodies)


def _lmdb_values(bodies: list[bytes]) -> list[bytes]:
    """The ``log`` values for entry bodies: CRC32 of the body, then the body."""
    return [_CRC.pack(zlib.crc32(b)) + b for b in bodies]


def _delete_from(cursor: lmdb.Cursor, index: int) -> None:
    """Delete every ``log`` key from ``index`` on."""
    if cursor.set_range(_KEY.pack(index)):
        # Each delete moves to the next key; False once the end is passed.
        while cursor.delete():
            pass


LOCK_FILE = "raftlib.lock"
"""The file in an LMDB directory that an open :class:`LMDBStorage` holds an
exclusive lock on, so that no second one (a second peer started on the same
directory, here or in another process) writes the same log."""


def _lock_directory(path: str) -> int:
    """Take the exclusive lock of ``path``; return the descriptor that holds it."""
    lock_path = os.path.join(path, LOCK_FILE)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot open the lock file {lock_path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise StorageError(
                f"{path} is in use by another peer (in this process or another); "
                f"each peer needs a data directory of its own"
            ) from None
        raise StorageError(f"cannot lock {lock_path}: {exc}") from exc
    return fd


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

    With ``wal`` (the default) saves go through the write-ahead file
    described in the module doc, one flush each; ``wal=False`` commits every
    save to LMDB, two flushes each. Either way a save is on disk when it
    returns. A damaged write-ahead file header raises
    :class:`~raftlib.errors.CorruptStorage`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = 8 << 30,
        wal: bool = True,
        wal_size: int = WAL_SIZE,
        checkpoint_entries: int = CHECKPOINT_ENTRIES,
    ) -> None:
        for name, value, least in (("map_size", map_size, 1), ("wal_size", wal_size, 2 * HEADER_SIZE),
                                   ("checkpoint_entries", checkpoint_entries, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"LMDBStorage: {name} must be at least {least} (an int), got {value!r}")
        self._path = os.fspath(path)
        self._map_size = map_size
        self.sync_count = 0
        try:
            os.makedirs(self._path, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the LMDB directory {self._path}: {exc}") from exc
        self._lock_fd = _lock_directory(self._path)
        try:
            self._open(map_size, wal, wal_size, checkpoint_entries)
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _open(self, map_size: int, wal: bool, wal_size: int, checkpoint_entries: int) -> None:
        # Write-ahead files are created only after LMDB has committed its
        # format record: with them, a database without it lost its data.
        had_wal = any(os.path.exists(os.path.join(self._path, name)) for name in WAL_FILES)
        self._check_length()
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
                with self._env.begin() as txn:
                    names = set(txn.cursor().iternext(keys=True, values=False))
                if names - _OWN_DATABASES:
                    raise self._foreign(f"the keys {sorted(names - _OWN_DATABASES)!r} in its main database")
                self._log_db = self._env.open_db(b"log")
                self._meta_db = self._env.open_db(b"meta")
                with self._env.begin(write=True) as txn:
                    if not self._check_format(txn) and had_wal:
                        raise CorruptStorage(
                            f"{os.path.join(self._path, 'data.mdb')} is new or empty, but the write-ahead "
                            f"files beside it show that this directory held a log: its entries and votes are "
                            f"lost; {RECOVERY_ADVICE}"
                        )
                    boundary_index, self._boundary_term = self._read_boundary(txn)
                    self._first_index = boundary_index + 1
                    self._last_index = self._find_last_index(txn, boundary_index)
        except BaseException:
            self._env.close()
            raise
        self._tail: list[Entry] = []
        """Entries ``[_tail_start, last_index]``, saved to a write-ahead file
        but not known to be in LMDB. LMDB entries from ``_tail_start`` on are
        stale (a save truncated them) and go at the next checkpoint."""
        self._tail_values: list[bytes] = []
        """The LMDB value of each ``_tail`` entry, encoded when it was saved."""
        self._tail_start = self._last_index + 1
        self._tail_hard_state: HardState | None = None
        """A hard state saved to a write-ahead file but not known to be in LMDB."""
        self._checkpoint_entries = checkpoint_entries
        self._files: list[WriteAheadFile] = []
        self._active: WriteAheadFile | None = None
        """The write-ahead file saves go to; the other one holds older records."""
        self._job: concurrent.futures.Future[None] | None = None
        """The background checkpoint of the other file's records, if one was started."""
        self._job_end = 0
        """The last index the background checkpoint writes."""
        self._job_hard_state: HardState | None = None
        self._other_needed = False
        """Whether the other file holds records that LMDB may not have yet."""
        self._stale = False
        """Whether LMDB holds entries a save replaced, not yet committed over."""
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False
        paths = [os.path.join(self._path, name) for name in WAL_FILES]
        # Without write-ahead files, any left from a run with them are replayed and removed.
        if wal or any(os.path.exists(p) for p in paths):
            try:
                for p in paths:
                    self._files.append(WriteAheadFile(p, wal_size, RECOVERY_ADVICE))
                self._files.sort(key=lambda f: f.generation)
                self._active = self._files[-1]
                with self._lmdb_errors("open the database"), self._env.begin() as txn:
                    checkpointed = self._read_checkpointed(txn)
                # Records of generations LMDB has were checkpointed; the rest are replayed in order.
                self._replay([r for f in self._files if f.generation > checkpointed for r in f.records()])
                if self._active.generation <= checkpointed:
                    # A crash came between a checkpoint and emptying the files.
                    for generation, f in enumerate(self._files, checkpointed + 1):
                        f.reset(generation)
                if not wal:
                    for f in self._files:
                        f.close()
                        os.unlink(f.path)
                    self._files, self._active = [], None
            except BaseException:
                for f in self._files:
                    f.close()
                self._env.close()
                raise

    @property
    def path(self) -> str:
        """The directory of the database; a peer started on this storage
        without ``data_dir`` keeps its snapshots in ``path/snapshots``."""
        return self._path

    # -- the LogStorage protocol ------------------------------------------

    def load(self) -> tuple[HardState, SnapshotMeta | None]:
        """Return the stored hard state (``HardState()`` if none) and the
        latest snapshot's metadata, if any."""
        with self._lmdb_errors("load the hard state"), self._env.begin() as txn:
            hard_state = self._read_hard_state(txn)
            snapshot = self._read_snapshot(txn)
        return self._tail_hard_state or hard_state, snapshot

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
        if index >= self._tail_start:
            return self._tail[index - self._tail_start].term
        with self._lmdb_errors(f"read log entry {index}"), self._env.begin() as txn:
            return self._read_entry(txn, index).term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, cut short by ``max_bytes`` (at least one entry)."""
        check_range(lo, hi, self._first_index, self._last_index)
        if lo == hi:
            return []
        start = self._tail_start
        if lo >= start:
            return take_within(iter(self._tail[lo - start : hi - start]), max_bytes)
        with self._lmdb_errors(f"read log entries [{lo}, {hi})"), self._env.begin() as txn:
            stored = self._iter_entries(txn, lo, min(hi, start))
            if hi <= start:
                return take_within(stored, max_bytes)
            return take_within(itertools.chain(stored, self._tail[: hi - start]), max_bytes)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], sync: bool = True) -> None:
        """Drop stored entries at or after ``entries[0].index``, append
        ``entries`` and store ``hard_state`` (unless ``None``), all at once.

        With write-ahead files this is one record appended to the active
        file, flushed when ``sync`` is true (a later flush covers a record
        written without). A large save is committed to LMDB instead, with
        everything before it. Without write-ahead files, one durable LMDB
        commit. If it raises, nothing of this save was stored.
        """
        check_append(entries, self._first_index, self._last_index)
        active = self._active
        if active is None or sum(len(e.data) for e in entries) > DIRECT_BYTES:
            self._checkpoint(hard_state, entries)
        else:
            bodies = [_encode_body(e) for e in entries]
            payload = _encode_record(hard_state, entries, bodies)
            # Entries since the last switch (the tail also holds those a background commit is writing).
            fresh = self._last_index - max(self._job_end, self._tail_start - 1)
            if len(payload) > active.room() or fresh + len(entries) > self._checkpoint_entries:
                self._switch()
            # A save that replaces entries the background commit is writing waits for it.
            self._collect(wait=bool(entries) and entries[0].index <= self._job_end)
            self._active.append(payload, sync)  # type: ignore[union-attr]  # set whenever active was
            self._add_to_tail(hard_state, entries, _lmdb_values(bodies))
        if sync:
            self.sync_count += 1

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        """Discard the whole log, make ``meta`` the boundary and the latest
        snapshot, and flush to disk.

        What the write-ahead file holds is checkpointed first, so that no
        replay can bring back entries the snapshot replaced."""
        self._checkpoint()
        with self._lmdb_errors(f"install the snapshot at index {meta.index}"):
            with self._env.begin(write=True) as txn:
                txn.drop(self._log_db, delete=False)
                self._write_snapshot(txn, meta)
                txn.put(_BOUNDARY, _meta_value([meta.index, meta.term]), db=self._meta_db)
            self._first_index = meta.index + 1
            self._last_index = meta.index
            self._boundary_term = meta.term
            self._reset_tail(meta.index + 1)

    def compact(self, index: int, meta: SnapshotMeta) -> None:
        """Drop entries up to and including ``index``, record ``meta`` as the
        latest snapshot, and flush to disk.

        ``index`` must be at most ``meta.index`` and at most ``last_index()``
        (:class:`ValueError` otherwise). An ``index`` that is already
        compacted only records ``meta``.
        """
        check_compact(index, meta, self._last_index)
        self._collect(wait=True)  # its commit must not bring back entries dropped here
        if self._stale:
            # Replaying the write-ahead records needs the entries they
            # replaced: commit the replacement first, then drop the prefix.
            self._checkpoint()
        boundary_term = self.term(index) if index >= self._first_index else None
        with self._lmdb_errors(f"compact the log through index {index}"):
            with self._env.begin(write=True) as txn:
                if boundary_term is not None:
                    limit = _KEY.pack(index)
                    cursor = txn.cursor(db=self._log_db)
                    cursor.first()
                    # Big-endian keys compare like the indexes they encode.
                    while cursor.key() and cursor.key() <= limit:
                        cursor.delete()
                    txn.put(_BOUNDARY, _meta_value([index, boundary_term]), db=self._meta_db)
                self._write_snapshot(txn, meta)
            if boundary_term is not None:
                self._first_index = index + 1
                self._boundary_term = boundary_term
                self._trim_tail(index)

    def close(self) -> None:
        """Checkpoint what the write-ahead files hold, then close them and
        the environment. Idempotent. If the checkpoint fails, the files keep
        those saves for the next open, and the error is raised."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._active is not None:
                self._checkpoint()  # waits for a background one first
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            for f in self._files:
                f.close()
            try:
                with self._lmdb_errors("close the database"):
                    self._env.close()
            finally:
                os.close(self._lock_fd)

    def _after_fork_in_child(self) -> None:
        """In a child forked without exec (called by the peer): release the
        child's hold on the directory lock, and make :meth:`close` a no-op
        there. The environment and the write-ahead files stay the parent's;
        the child must not write or close them."""
        if not self._closed:
            self._closed = True
            os.close(self._lock_fd)

    # -- the write-ahead files --------------------------------------------
    #
    # Saves append to the active file. When it fills up (or the tail passes
    # ``checkpoint_entries``), the other file is emptied and becomes the
    # active one, and a background thread commits the tail as it was to
    # LMDB. Its entries stay in memory until that commit is known to have
    # succeeded (``_collect``), so reads never wait for it. A file is only
    # emptied once LMDB holds its records, and the active file always has
    # the higher generation, so replaying the other file's records, then the
    # active file's, rebuilds the log. A synchronous checkpoint empties both.

    def _add_to_tail(
        self, hard_state: HardState | None, entries: Sequence[Entry], values: list[bytes]
    ) -> None:
        """Record a save that reached a write-ahead file (``values``: the
        entries' LMDB values)."""
        if entries:
            start = entries[0].index
            if start < self._tail_start:
                self._tail, self._tail_values = list(entries), values
                self._tail_start = start
                self._stale = True  # LMDB's entries from start on
            else:
                del self._tail[start - self._tail_start :]
                del self._tail_values[start - self._tail_start :]
                self._tail.extend(entries)
                self._tail_values.extend(values)
            self._last_index = entries[-1].index
        if hard_state is not None:
            self._tail_hard_state = hard_state

    def _commit(
        self, start: int, values: list[bytes], hard_state: HardState | None, generation: int
    ) -> None:
        """One durable LMDB transaction: drop the log from ``start`` on,
        put ``values`` (those of the entries from ``start`` on),
        store ``hard_state`` and record that the records of ``generation``
        and older are in LMDB (``0``: leave that record alone)."""
        with self._lmdb_errors("save"):
            with self._env.begin(write=True) as txn:
                cursor = txn.cursor(db=self._log_db)
                _delete_from(cursor, start)
                # Every remaining key is smaller, so LMDB may append in key
                # order. In slices, so that a background commit gives the
                # interpreter back to the event loop's thread in between.
                for i in range(0, len(values), _PUT_SLICE):
                    chunk = values[i : i + _PUT_SLICE]
                    keys = map(_KEY.pack, range(start + i, start + i + len(chunk)))
                    cursor.putmulti(zip(keys, chunk), append=True)
                if hard_state is not None:
                    hs = [hard_state.term, hard_state.vote, hard_state.commit]
                    txn.put(_HARD_STATE, _meta_value(hs), db=self._meta_db)
                if generation:
                    txn.put(_CHECKPOINTED, _meta_value(generation), db=self._meta_db)

    def _checkpoint(self, hard_state: HardState | None = None, entries: Sequence[Entry] = ()) -> None:
        """Commit the tail, then ``hard_state`` and ``entries`` (a save), to
        LMDB, and empty both write-ahead files. Waits for a background
        checkpoint first. If it raises, nothing changed."""
        self._collect(wait=True)
        covered = max((f.generation for f in self._files if not f.empty), default=0)
        pending_state = hard_state is not None or self._tail_hard_state is not None
        if not (entries or self._tail or self._stale or covered or pending_state):
            return  # nothing to commit
        tail, values, start = self._tail, self._tail_values, self._tail_start
        if entries:
            new = _lmdb_values([_encode_body(e) for e in entries])
            if entries[0].index < start:
                tail, values, start = list(entries), new, entries[0].index
            else:
                keep = entries[0].index - start
                tail, values = tail[:keep] + list(entries), values[:keep] + new
        # Records the commit covers are made unreplayable: their files are
        # emptied, the active one last so that it keeps the highest generation.
        self._commit(start, values, hard_state or self._tail_hard_state, covered)
        if tail:
            self._last_index = tail[-1].index
        self._reset_tail(self._last_index + 1)
        self._tail_hard_state = None
        self._stale = False
        if covered:
            generation = max(f.generation for f in self._files)
            for f in sorted(self._files, key=lambda f: f is self._active):
                generation += 1
                f.reset(generation)
        self._other_needed = False

    def _reset_tail(self, start: int) -> None:
        """Empty the tail; the next entry to go there is ``start``."""
        self._tail, self._tail_values, self._tail_start = [], [], start

    def _trim_tail(self, upto: int) -> None:
        """Drop the tail's entries up to and including ``upto``."""
        if upto >= self._tail_start:
            del self._tail[: upto + 1 - self._tail_start]
            del self._tail_values[: upto + 1 - self._tail_start]
            self._tail_start = upto + 1

    def _switch(self) -> None:
        """Make the other write-ahead file the active one and commit the
        tail to LMDB in the background."""
        self._collect(wait=True)
        if self._other_needed:
            # The last background commit failed: the other file's records
            # are still needed, so commit everything now instead.
            self._checkpoint()
            return
        active = self._active
        assert active is not None
        other = next(f for f in self._files if f is not active)
        other.reset(max(f.generation for f in self._files) + 1)
        self._active = other
        if not self._tail and self._tail_hard_state is None:
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="raftlib-checkpoint")
        self._other_needed = True
        self._job_end = self._last_index
        self._job_hard_state = self._tail_hard_state
        self._job = self._executor.submit(
            self._commit, self._tail_start, list(self._tail_values), self._tail_hard_state, active.generation
        )

    def _collect(self, wait: bool) -> None:
        """Take note of a finished background checkpoint (with ``wait``,
        wait for it): its entries and hard state are in LMDB, so memory and
        the other file no longer need to keep them. A failed one raises its
        error once; the data stays in memory and in the files."""
        job = self._job
        if job is None or not (wait or job.done()):
            return
        self._job = None
        end, self._job_end = self._job_end, 0
        job.result()
        self._other_needed = False
        self._stale = False  # the commit started at or before any replaced entry
        self._trim_tail(end)
        if self._tail_hard_state is self._job_hard_state:
            self._tail_hard_state = None
        self._job_hard_state = None

    def _replay(self, records: list[bytes]) -> None:
        """Apply the write-ahead records, in order, onto what LMDB holds,
        skipping entries compacted since; then checkpoint them."""
        if not records:
            return
        for number, payload in enumerate(records, 1):
            hard_state, entries = self._decode_record(number, payload)
            if entries and entries[-1].index < self._first_index:
                # All compacted since; but the log ended with them then.
                self._reset_tail(self._first_index)
                self._last_index = self._first_index - 1
                self._stale = True
            entries = [e for e in entries if e.index >= self._first_index]
            if entries and entries[0].index > self._last_index + 1:
                raise self._corrupt(
                    f"write-ahead record {number}",
                    f"starts at index {entries[0].index}, after the end of the log at {self._last_index}",
                )
            self._add_to_tail(hard_state, entries, _lmdb_values([_encode_body(e) for e in entries]))
        self._checkpoint()

    def _decode_record(self, number: int, payload: bytes) -> tuple[HardState | None, list[Entry]]:
        """The hard state and entries of one write-ahead record."""
        what = f"write-ahead record {number}"
        try:
            record = msgpack.unpackb(payload, raw=False)
        except _DECODE_ERRORS as exc:
            raise self._corrupt(what, f"cannot be decoded: {exc}") from exc
        match record:
            case [None | [int(), str() | None, int()] as hs, int(first), list(rows)] if all(
                isinstance(row, list) and len(row) == 3 and isinstance(row[0], int) and isinstance(row[2], bytes)
                and row[1] in _KINDS
                for row in rows
            ):
                hard_state = None if hs is None else HardState(term=hs[0], vote=hs[1], commit=hs[2])
                entries = [Entry(term=t, index=first + i, kind=EntryKind(k), data=d) for i, (t, k, d) in enumerate(rows)]
                return hard_state, entries
        raise self._corrupt(what, "cannot be decoded: it is not [hard state, first index, entries]")

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
            if _is_no_space(exc) or _is_write_cut_short(exc, self._path):
                raise StorageFull(f"cannot {action}: no space left on the device of {self._path}") from exc
            raise StorageError(f"cannot {action}: LMDB error in {self._path}: {exc}") from exc

    def _check_length(self) -> None:
        """Refuse a ``data.mdb`` shorter than its newest meta page says.

        LMDB maps the file and trusts its meta pages: a truncated file (a
        partial copy, a damaged file system) would kill the process with
        ``SIGBUS`` on the first access past its end instead of raising.
        The meta pages are read as LMDB lays them out on 64-bit platforms;
        anything that does not look like one is left to LMDB to refuse.
        """
        path = os.path.join(self._path, "data.mdb")
        try:
            with open(path, "rb") as f:
                length = os.fstat(f.fileno()).st_size
                head = f.read(_META_END)
                if len(head) < _META_END or _META_U32.unpack_from(head, _META_MAGIC_AT)[0] != _LMDB_MAGIC:
                    return
                page_size = _META_U32.unpack_from(head, _META_PAGE_SIZE_AT)[0]
                if not 512 <= page_size <= 1 << 16:
                    return
                f.seek(page_size)
                metas = [head, f.read(_META_END)]
        except FileNotFoundError:
            return  # a new database
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if sys.maxsize <= 1 << 32:
            return  # other layout
        newest = None
        for meta in metas:
            if len(meta) == _META_END and _META_U32.unpack_from(meta, _META_MAGIC_AT)[0] == _LMDB_MAGIC:
                last_page, txnid = _META_LAST.unpack_from(meta, _META_LAST_AT)
                if newest is None or txnid > newest[1]:
                    newest = (last_page, txnid)
        needed = 2 * page_size if newest is None else max(2, newest[0] + 1) * page_size
        if length < needed:
            raise self._corrupt(
                "file data.mdb", f"is truncated: it is {length} bytes long, but its meta page needs {needed}"
            )

    def _key_index(self, key: bytes | memoryview) -> int:
        """The log index a ``log`` key encodes."""
        if len(key) != _KEY.size:
            raise self._corrupt("log key", f"{bytes(key)[:16]!r} is not an 8-byte index")
        index: int = _KEY.unpack(key)[0]
        return index

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
        if raw[:1] == _META_CRC_MARK:
            what = f"meta record {key.decode()}"
            if len(raw) < 1 + _CRC.size:
                raise self._corrupt(what, f"is {len(raw)} bytes long, too short for its checksum")
            (stored,) = _CRC.unpack_from(raw, 1)
            raw = raw[1 + _CRC.size :]
            computed = zlib.crc32(raw)
            if computed != stored:
                raise self._corrupt(
                    what, f"failed its checksum (stored CRC32 {stored:#010x}, computed {computed:#010x})"
                )
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
                cluster_id = None
            case [int(index), int(term), dict(voters), dict(learners), str(cluster_id)]:
                pass
            case _:
                raise self._corrupt("meta record snapshot", f"is malformed: {record!r}")
        membership = Membership(voters=voters, learners=learners, cluster_id=cluster_id)
        return SnapshotMeta(index=index, term=term, membership=membership)

    def _read_checkpointed(self, txn: lmdb.Transaction) -> int:
        """The newest write-ahead generation whose records LMDB holds, 0 if none."""
        record = self._read_meta(txn, _CHECKPOINTED)
        if record is None:
            return 0
        if not isinstance(record, int):
            raise self._corrupt("meta record wal_checkpointed", f"is malformed: {record!r}")
        return record

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
        record: list[object] = [meta.index, meta.term, dict(membership.voters), dict(membership.learners)]
        if membership.cluster_id is not None:
            record.append(membership.cluster_id)
        txn.put(_SNAPSHOT, _meta_value(record), db=self._meta_db)

    def _check_format(self, txn: lmdb.Transaction) -> bool:
        """Record the layout version in a new database (and return False);
        refuse an unknown one."""
        version = self._read_meta(txn, _FORMAT)
        if version is None:
            if txn.stat(self._log_db)["entries"] or txn.stat(self._meta_db)["entries"]:
                raise self._foreign("records but no layout version")
            txn.put(_FORMAT, msgpack.packb(FORMAT_VERSION), db=self._meta_db)
            return False
        if version != FORMAT_VERSION:
            raise StorageError(
                f"the LMDB database at {self._path} has layout version {version!r}; "
                f"this raftlib reads only version {FORMAT_VERSION}"
            )
        return True

    def _foreign(self, found: str) -> StorageError:
        """The error for an LMDB database that raftlib did not make."""
        return StorageError(
            f"the LMDB database at {self._path} is not a raftlib log (it holds {found}); "
            "give each peer a directory of its own, empty the first time"
        )

    def _find_last_index(self, txn: lmdb.Transaction, boundary_index: int) -> int:
        """The last stored index, after checking that the log starts right
        after the boundary."""
        cursor = txn.cursor(db=self._log_db)
        if not cursor.last():
            return boundary_index
        last = self._key_index(cursor.key())
        cursor.first()
        first = self._key_index(cursor.key())
        if first != boundary_index + 1:
            raise self._corrupt(
                "log", f"starts at index {first}, but the last compacted index is {boundary_index}"
            )
        return last
