"""A preallocated write-ahead file: one append and one flush per save.

The LMDB adapter keeps its recent saves here instead of committing each one
to LMDB, whose durable commit flushes twice (the pages, then the meta page
that makes them current). Appending to a file whose blocks were all written
when it was created needs one flush and no change to the file's metadata,
so a save costs one flush. Where the platform has ``O_DSYNC``, a synced
append is one ``pwrite`` on a descriptor opened with it, which returns once
the data is on disk: one system call where ``pwrite`` and ``fdatasync`` take
two. The thread saving gives up the interpreter lock for each system call
and must win it back from a busy event loop thread afterwards, so each one
fewer shortens a save under load.

Layout, all integers big-endian:

* bytes ``[0, 20)``: the header, ``magic`` (8 bytes, ``RAFTWAL1``), the
  ``generation`` (8 bytes) and a CRC32 of those 16 bytes; the rest of the
  first 4 KiB is unused;
* from byte 4096: records, each a 4-byte payload length, a 4-byte CRC32 of
  the generation (8 bytes) followed by the payload, then the payload.

The records of the current generation run from byte 4096 up to the first
record whose length is zero, passes the end of the file or fails its CRC.
A crash while a record was being written leaves it failing its CRC, so it
and everything after it are ignored; it was never acknowledged, since a
save returns only once its record is flushed. Only the last record can be
torn that way: one failing its CRC with an intact record of the same
generation right after it was damaged after it was flushed, and raises
:class:`~raftlib.errors.CorruptStorage`. (Appends made without a flush are
the exception: after a crash of the machine, a later one may be on disk and
an earlier one not, and this is reported too.) :meth:`WriteAheadFile.reset`
empties the file by writing a header with the next generation: the older
records it leaves behind fail their CRC under the new generation.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib

from raftlib.errors import CorruptStorage, StorageError, StorageFull

MAGIC = b"RAFTWAL1"
HEADER_SIZE = 4096
"""Records start on the second 4 KiB page, so a header write never touches them."""

_HEADER = struct.Struct(">8sQI")
_RECORD = struct.Struct(">II")
_GENERATION = struct.Struct(">Q")
_ZEROS = bytes(1 << 20)
_O_DSYNC = getattr(os, "O_DSYNC", 0)


def _os_error(action: str, path: str, exc: OSError) -> StorageError:
    """A :class:`StorageError` (:class:`StorageFull` for ENOSPC) for ``exc``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"cannot {action}: no space left on the device of {path}")
    return StorageError(f"cannot {action} {path}: {exc}")


class WriteAheadFile:
    """The write-ahead file at ``path``, created with ``size`` bytes of zeros
    (and flushed, file and directory) if it does not exist.

    :meth:`records` returns the payloads of the current generation, in the
    order they were appended; :meth:`append` adds one and flushes;
    :meth:`reset` drops them all. ``advice`` ends the message of a
    :class:`~raftlib.errors.CorruptStorage` raised for a damaged header.
    """

    def __init__(self, path: str, size: int, advice: str) -> None:
        if size < 2 * HEADER_SIZE:
            raise ValueError(f"a write-ahead file needs at least {2 * HEADER_SIZE} bytes, not {size}")
        self.path = path
        self.size = size
        self._advice = advice
        self._fd = -1
        self._sync_fd = -1
        """The same file opened with ``O_DSYNC``, for synced appends (``-1``
        where the platform lacks it: ``pwrite`` then ``fdatasync``)."""
        self._unflushed = False
        """Whether a record was appended without a flush since the last one:
        the next synced append then flushes the whole file, not just itself."""
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            header = os.pread(self._fd, _HEADER.size, 0)
        except OSError as exc:
            self._close_fd()
            raise _os_error("open the write-ahead file", path, exc) from exc
        try:
            generation = self._parse_header(header)
            if generation is None:
                generation = self._create()
            else:
                self._extend()
            if _O_DSYNC:
                self._sync_fd = os.open(path, os.O_WRONLY | _O_DSYNC)
        except OSError as exc:
            self._close_fd()
            raise _os_error("open the write-ahead file", path, exc) from exc
        except BaseException:
            self._close_fd()
            raise
        self.generation = generation
        self._seed = zlib.crc32(_GENERATION.pack(generation))
        self._offset = HEADER_SIZE

    # -- reading -------------------------------------------------------------------

    def records(self) -> list[bytes]:
        """The payloads of the current generation, oldest first. Appends
        after this go right after the last of them."""
        try:
            with open(self._fd, "rb", closefd=False) as f:
                f.seek(0)
                data = f.read()
        except OSError as exc:
            raise _os_error("read the write-ahead file", self.path, exc) from exc
        out: list[bytes] = []
        offset = HEADER_SIZE
        while offset + _RECORD.size <= len(data):
            length, crc = _RECORD.unpack_from(data, offset)
            start = offset + _RECORD.size
            if length == 0 or start + length > len(data):
                break
            payload = data[start : start + length]
            if zlib.crc32(payload, self._seed) != crc:
                if self._intact_record_at(data, start + length):
                    # Only the last record can be torn by a crash: this one was
                    # flushed, and so acknowledged, before the next, then damaged.
                    raise CorruptStorage(
                        f"corrupt write-ahead file {self.path}: record {len(out) + 1} (at byte {offset}) "
                        f"fails its checksum, but the record after it is intact, so it was not torn by a "
                        f"crash: the saves from it on cannot be trusted; {self._advice}"
                    )
                break
            out.append(payload)
            offset = start + length
        self._offset = offset
        return out

    def _intact_record_at(self, data: bytes, offset: int) -> bool:
        """Whether a record of the current generation, passing its CRC, starts at ``offset``."""
        if offset + _RECORD.size > len(data):
            return False
        length, crc = _RECORD.unpack_from(data, offset)
        start = offset + _RECORD.size
        return 0 < length <= len(data) - start and zlib.crc32(data[start : start + length], self._seed) == int(crc)

    @property
    def empty(self) -> bool:
        """Whether no record of the current generation is known."""
        return self._offset == HEADER_SIZE

    def room(self) -> int:
        """Payload bytes that still fit in the preallocated size."""
        return self.size - self._offset - _RECORD.size

    # -- writing -------------------------------------------------------------------

    def append(self, payload: bytes, sync: bool = True) -> None:
        """Write one record after the last and, with ``sync``, flush it.
        On failure nothing counts as appended: the next record goes to the
        same place."""
        record = _RECORD.pack(len(payload), zlib.crc32(payload, self._seed)) + payload
        synced = sync and self._sync_fd >= 0 and not self._unflushed
        try:
            written = os.pwrite(self._sync_fd if synced else self._fd, record, self._offset)
            if written != len(record):
                raise OSError(errno.EIO, f"short write: {written} of {len(record)} bytes")
            if sync and not synced:
                os.fdatasync(self._fd)
            self._unflushed = not sync
        except OSError as exc:
            raise _os_error("append to the write-ahead file", self.path, exc) from exc
        self._offset += len(record)

    def reset(self, generation: int) -> None:
        """Drop every record: write and flush a header with ``generation``,
        which must be greater than any this file had."""
        if generation <= self.generation:
            raise ValueError(f"generation {generation} is not after {self.generation}")
        self._write_header(generation)
        self._unflushed = False
        self.generation = generation
        self._seed = zlib.crc32(_GENERATION.pack(generation))
        self._offset = HEADER_SIZE

    def close(self) -> None:
        """Close the file. Idempotent."""
        self._close_fd()

    # -- helpers -------------------------------------------------------------------

    def _close_fd(self) -> None:
        if self._sync_fd >= 0:
            fd, self._sync_fd = self._sync_fd, -1
            os.close(fd)
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _parse_header(self, header: bytes) -> int | None:
        """The generation in a valid header; ``None`` for a file that was
        never finished (shorter than a header, or zeros where it goes)."""
        if len(header) < _HEADER.size or header == bytes(_HEADER.size):
            return None
        magic, generation, crc = _HEADER.unpack(header)
        if magic != MAGIC or zlib.crc32(header[: _HEADER.size - 4]) != crc:
            raise CorruptStorage(
                f"corrupt write-ahead file {self.path}: its header is damaged, so the saves it holds "
                f"cannot be trusted; {self._advice}"
            )
        return int(generation)

    def _create(self) -> int:
        """Fill the file with zeros up to ``size``, then write the first
        header; flush both, and the directory entry."""
        try:
            os.ftruncate(self._fd, 0)
            self._zero_fill(0)
            os.fsync(self._fd)
        except OSError as exc:
            raise _os_error("create the write-ahead file", self.path, exc) from exc
        self._write_header(1)
        try:
            dir_fd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise _os_error("flush the directory of", self.path, exc) from exc
        return 1

    def _extend(self) -> None:
        """Fill a file shorter than ``size`` (made with a smaller one) with
        zeros up to it, and flush."""
        try:
            length = os.fstat(self._fd).st_size
            if length < self.size:
                self._zero_fill(length)
                os.fsync(self._fd)
        except OSError as exc:
            raise _os_error("extend the write-ahead file", self.path, exc) from exc

    def _zero_fill(self, offset: int) -> None:
        while offset < self.size:
            offset += os.pwrite(self._fd, _ZEROS[: min(len(_ZEROS), self.size - offset)], offset)

    def _write_header(self, generation: int) -> None:
        head = MAGIC + _GENERATION.pack(generation)
        try:
            os.pwrite(self._fd, head + struct.pack(">I", zlib.crc32(head)), 0)
            os.fdatasync(self._fd)
        except OSError as exc:
            raise _os_error("write the header of the write-ahead file", self.path, exc) from exc
