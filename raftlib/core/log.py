"""RaftLog: the stable log (read through a LogStorage) plus an unstable tail.

Theory of operation. Entries the core has accepted but the runtime has not yet
persisted live in ``unstable``, starting at ``unstable_offset``. Every read of
an index at or after ``unstable_offset`` is served from memory; everything
before it from storage. A conflicting suffix may move ``unstable_offset`` back
into the stored range; the stored entries from there on are then hidden, and
``LogStorage.save`` truncates them when the tail is persisted.

A snapshot received from a leader replaces the whole log at once: until the
runtime has recorded it in storage (``snapshot_installed``) it is held in
``pending_snapshot`` and answers for ``first_index() - 1``.

Entries the runtime is writing are still unstable: the first
``_in_progress`` of ``unstable`` have been handed out in a Ready
(:meth:`take_unpersisted`) and are on their way to disk, so the next Ready
carries only the ones after them. ``stable_to`` moves entries out of the
tail once the runtime reports them written. A runtime may thus write one
Ready while the core goes on stepping messages and producing the next.

Entries just persisted are kept in memory a while longer, in ``_cache``
(ending right before ``unstable_offset``, at most ``CACHE_ENTRIES`` entries
and ``CACHE_BYTES`` bytes): they are the ones about to be applied and sent
to followers, so most reads never reach storage (and its decoding).

Invariants::

    first_index - 1 <= applied <= committed
    unstable_offset <= storage.last_index() + 1
    0 <= _in_progress <= len(unstable)
    committed <= last_index
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..errors import LogCompacted
from ..types import Entry, SnapshotMeta

if TYPE_CHECKING:  # the core never imports an adapter, only the protocol
    from storage_adapters.protocol import LogStorage


CACHE_ENTRIES = 4096
CACHE_BYTES = 32 * 1024 * 1024


class RaftLog:
    def __init__(self, storage: LogStorage, committed: int, applied: int) -> None:
        self.storage = storage
        self.unstable: list[Entry] = []
        self.unstable_offset = storage.last_index() + 1
        self._in_progress = 0
        """How many of ``unstable`` (from its start) a Ready already handed out."""
        self._cache: list[Entry] = []
        """Persisted entries ``[_cache_offset, unstable_offset)``, kept in memory."""
        self._cache_offset = self.unstable_offset
        self._cache_bytes = 0
        self._cache_sizes: list[int] = []
        """``size()`` of each cached entry, so trimming never calls it again."""
        self.pending_snapshot: SnapshotMeta | None = None
        # Invariant: applied <= committed <= last_index().
        self.committed = min(committed, storage.last_index())
        self.applied = applied
        self.committed = max(self.committed, applied)

    # -- reading ---------------------------------------------------------------

    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable_offset + len(self.unstable) - 1
        return self.unstable_offset - 1

    def stable_last_index(self) -> int:
        """Last index that is both on disk and still part of this log.

        While ``pending_snapshot`` is set this is the snapshot's index,
        although the snapshot is not recorded yet: an acknowledgement checks
        ``pending_snapshot`` first. (A runtime steps the core again only once
        the Ready recording it is persisted, so it counts for nothing else.)"""
        return self.unstable_offset - 1

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """Term at ``index``; 0 past the end. Raises LogCompacted before the snapshot."""
        if index >= self.unstable_offset:
            pos = index - self.unstable_offset
            return self.unstable[pos].term if pos < len(self.unstable) else 0
        if index < 0:
            return 0
        if index >= self._cache_offset and index >= self.storage.first_index():
            return self._cache[index - self._cache_offset].term
        snap = self.pending_snapshot
        if snap is not None:
            if index == snap.index:
                return snap.term
            raise LogCompacted(f"index {index} is covered by the snapshot at {snap.index}")
        return self.storage.term(index)

    def term_or_none(self, index: int) -> int | None:
        """Term at ``index``, or ``None`` if it was compacted away or is past the end."""
        if index > self.last_index():
            return None
        try:
            return self.term(index)
        except LogCompacted:
            return None

    def matches(self, index: int, term: int) -> bool:
        return self.term_or_none(index) == term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)`` (at least one when ``lo < hi``), limited by ``max_bytes``."""
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return []
        out: list[Entry] = []
        if lo < self._cache_offset:
            if self.pending_snapshot is not None:
                raise LogCompacted(f"index {lo} is covered by the snapshot at {self.pending_snapshot.index}")
            stop = min(hi, self._cache_offset)
            out = self.storage.entries(lo, stop, max_bytes)
            if lo + len(out) < stop:
                return out  # max_bytes reached inside the stored part
            lo += len(out)
        budget = None if max_bytes is None else max_bytes - sum(e.size() for e in out)
        for source, offset in ((self._cache, self._cache_offset), (self.unstable, self.unstable_offset)):
            end = offset + len(source)
            if lo >= hi or lo >= end:
                continue
            for e in source[lo - offset : min(hi, end) - offset]:
                if budget is not None:
                    budget -= e.size()
                    if budget < 0 and out:
                        return out
                out.append(e)
            lo = min(hi, end)
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: is a log ending at (last_term, last_index) at least as up to date as ours?"""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def find_conflict_hint(self, index: int) -> tuple[int, int]:
        """For a rejected ``prev_log_index``: the (hint_index, hint_term) a follower
        reports so the leader can skip a whole term (thesis §5.3)."""
        last = self.last_index()
        if index > last:
            return last + 1, 0
        term = self.term_or_none(index) or 0
        first = self.first_index()
        i = index
        while i > first and self.term_or_none(i - 1) == term:
            i -= 1
        return i, term

    def last_index_of_term(self, term: int, at_most: int) -> int | None:
        """Largest index ``<= at_most`` whose entry has ``term``, if any (leader side of the hint)."""
        i = min(at_most, self.last_index())
        first = self.first_index()
        while i >= first:
            t = self.term_or_none(i)
            if t is None or t < term:
                return None
            if t == term:
                return i
            i -= 1
        return None

    # -- writing ---------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries`` (contiguous), truncating any suffix from ``entries[0].index``."""
        if not entries:
            return
        after = entries[0].index
        # Invariant: nothing committed is ever truncated (Log Matching + Leader Completeness).
        assert after > self.committed, f"truncating committed entry {after} <= {self.committed}"
        end = self.unstable_offset + len(self.unstable)
        if after == end:
            self.unstable.extend(entries)
        elif after <= self.unstable_offset:
            self._drop_cache_from(after)
            self.unstable_offset = after
            self.unstable = list(entries)
            self._in_progress = 0
        else:
            keep = after - self.unstable_offset
            del self.unstable[keep:]
            self.unstable.extend(entries)
            # Replaced entries that were being written go out again in the next Ready.
            self._in_progress = min(self._in_progress, keep)

    def has_unpersisted(self) -> bool:
        """Whether some unstable entries were not handed out in a Ready yet."""
        return len(self.unstable) > self._in_progress

    def take_unpersisted(self) -> list[Entry]:
        """The unstable entries not handed out yet, now marked as being written."""
        out = self.unstable[self._in_progress :]
        self._in_progress = len(self.unstable)
        return out

    def stable_to(self, index: int, term: int) -> None:
        """The runtime persisted entries up to (index, term): drop them from the tail."""
        if index < self.unstable_offset or self.term_or_none(index) != term:
            return  # stale: the tail changed since that Ready was made
        n = index - self.unstable_offset + 1
        done = self.unstable[:n]
        del self.unstable[:n]
        self.unstable_offset = index + 1
        # If the tail was replaced and re-handed out, its write is still ahead.
        self._in_progress = max(0, self._in_progress - n)
        sizes = [e.size() for e in done]
        self._cache.extend(done)
        self._cache_sizes.extend(sizes)
        self._cache_bytes += sum(sizes)
        if len(self._cache) > CACHE_ENTRIES or self._cache_bytes > CACHE_BYTES:
            # Trim to half, so that trimming (a list copy) is rare.
            keep = min(len(self._cache), CACHE_ENTRIES) // 2
            drop = len(self._cache) - keep
            self._cache_bytes -= sum(self._cache_sizes[:drop])
            del self._cache[:drop]
            del self._cache_sizes[:drop]
            self._cache_offset += drop

    def _drop_cache_from(self, index: int) -> None:
        """Forget cached entries at ``index`` and after (they are being replaced)."""
        if index <= self._cache_offset:
            self._cache, self._cache_offset, self._cache_bytes, self._cache_sizes = [], index, 0, []
        elif index < self._cache_offset + len(self._cache):
            cut = index - self._cache_offset
            self._cache_bytes -= sum(self._cache_sizes[cut:])
            del self._cache[cut:]
            del self._cache_sizes[cut:]

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            assert index <= self.last_index(), f"commit {index} past last index {self.last_index()}"
            self.committed = index
            return True
        return False

    def has_next_committed(self, unstable: bool = False) -> bool:
        """Whether :meth:`next_committed` would return anything (reads no entries)."""
        return self._appliable(unstable) > self.applied

    def next_committed(self, max_bytes: int | None = None, unstable: bool = False) -> list[Entry]:
        """Committed entries not yet handed out for applying: only those
        already on this peer's disk, or with ``unstable`` also those still
        on their way to it (see :meth:`Raft.ready`)."""
        hi = self._appliable(unstable)
        if hi <= self.applied:
            return []
        return self.entries(self.applied + 1, hi + 1, max_bytes)

    def _appliable(self, unstable: bool) -> int:
        return self.committed if unstable else min(self.committed, self.stable_last_index())

    def restore(self, meta: SnapshotMeta) -> None:
        """Replace the whole log with a snapshot received from the leader."""
        assert meta.index > self.committed, (meta.index, self.committed)
        self.pending_snapshot = meta
        self.unstable = []
        self.unstable_offset = meta.index + 1
        self._in_progress = 0
        self._cache, self._cache_offset, self._cache_bytes, self._cache_sizes = [], meta.index + 1, 0, []
        self.committed = meta.index
        self.applied = meta.index

    def snapshot_installed(self, meta: SnapshotMeta) -> None:
        """The runtime recorded ``meta`` in storage; read through it again."""
        if self.pending_snapshot == meta:
            self.pending_snapshot = None

    def applied_to(self, index: int) -> None:
        if index < self.applied:
            return  # a snapshot restored since those entries were handed out
        assert index <= self.committed, (self.applied, index, self.committed)
        self.applied = index
