"""The storage contract every adapter implements.

The Raft core reads the stable log synchronously through these methods (like
etcd's ``Storage``); the runtime calls :meth:`LogStorage.save` from a worker
thread so that a sync never blocks the event loop. The core never calls a
read method while a ``save`` is running, so adapters need no locking between
them, but reads must be safe from a different thread than the last save.

Index conventions: log indexes start at 1. ``first_index()`` is the first
index still held (1 on a fresh log, ``snapshot.index + 1`` after compaction),
``last_index()`` the last one (``first_index() - 1`` when the log is empty).
``term(first_index() - 1)`` is always answerable: 0 on a fresh log, the
snapshot's term after compaction.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from raftlib.types import Entry, HardState, SnapshotMeta


@runtime_checkable
class LogStorage(Protocol):
    """Durable home of a peer's hard state and log.

    Errors: reading an index below ``first_index() - 1`` raises
    :class:`raftlib.errors.LogCompacted`; above ``last_index()`` raises
    :class:`IndexError`; an I/O failure raises
    :class:`raftlib.errors.StorageError`; data that fails its checksum raises
    :class:`raftlib.errors.CorruptStorage` naming the file and index.

    An adapter whose ``save`` never blocks (it keeps everything in memory) may
    set the class attribute ``save_blocks = False``; the runtime then calls it
    on the event loop instead of in a worker thread.
    """

    def load(self) -> tuple[HardState, SnapshotMeta | None]:
        """Return the persisted hard state (``HardState()`` when fresh) and the
        metadata of the latest snapshot, if any."""
        ...

    def first_index(self) -> int:
        """First log index still stored."""
        ...

    def last_index(self) -> int:
        """Last log index stored."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index`` (see the module doc for the bounds)."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``. With ``max_bytes``, stop once the sum of
        ``Entry.size()`` would pass it, but always return at least one entry
        when ``lo < hi``."""
        ...

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], sync: bool = True) -> None:
        """Persist in one atomic step: the hard state (if not ``None``) and
        ``entries``, which are contiguous and start at most at
        ``last_index() + 1`` and at least at ``first_index()``. Stored entries at
        or after ``entries[0].index`` are dropped first (a conflicting suffix
        is truncated). With ``sync`` the data is on stable storage when this
        returns (fsync or LMDB sync); only then may the runtime acknowledge it."""
        ...

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        """Discard the whole log and record ``meta``: afterwards
        ``first_index() == meta.index + 1`` and ``term(meta.index) == meta.term``.
        Synced before returning."""
        ...

    def compact(self, index: int, meta: SnapshotMeta) -> None:
        """Drop stored entries up to and including ``index`` (which is at most
        ``meta.index``) and record ``meta`` as the latest snapshot. Synced."""
        ...

    def close(self) -> None:
        """Release files and handles. Idempotent. No other method is called afterwards."""
        ...
