"""The in-memory reference adapter.

:class:`MemoryStorage` keeps everything in Python objects, so nothing survives
the process. It is the executable form of the :class:`~storage_adapters.protocol.LogStorage`
contract: simple enough to be obviously correct, it is what the tests and the
deterministic simulator use, and what other adapters are checked against.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from raftlib.errors import LogCompacted
from raftlib.types import Entry, HardState, SnapshotMeta


def check_append(entries: Sequence[Entry], first_index: int, last_index: int) -> None:
    """Raise :class:`ValueError` unless ``entries`` may be saved into a log
    holding ``[first_index, last_index]``: they must be contiguous and start
    within ``[first_index, last_index + 1]``.

    Shared by every adapter so that all of them reject the same inputs with
    the same message.
    """
    if not entries:
        return
    start = entries[0].index
    if start < first_index:
        raise ValueError(
            f"cannot save entries starting at index {start}: the log starts at {first_index} "
            f"(earlier entries were compacted)"
        )
    if start > last_index + 1:
        raise ValueError(
            f"cannot save entries starting at index {start}: the log ends at {last_index}, "
            f"so that would leave a gap (the next index must be at most {last_index + 1})"
        )
    for previous, entry in zip(entries, entries[1:]):
        if entry.index != previous.index + 1:
            raise ValueError(
                f"entries to save are not contiguous: index {entry.index} follows index {previous.index}"
            )


def check_range(lo: int, hi: int, first_index: int, last_index: int) -> None:
    """Raise unless ``entries(lo, hi)`` is answerable for a log holding
    ``[first_index, last_index]``: :class:`ValueError` if ``lo > hi``,
    :class:`LogCompacted` if ``lo`` was compacted, :class:`IndexError` if
    ``hi`` passes the end of the log."""
    if lo > hi:
        raise ValueError(f"invalid entry range [{lo}, {hi}): lo is greater than hi")
    if lo < first_index:
        raise LogCompacted(f"entries from index {lo} were compacted; the log starts at {first_index}")
    if hi > last_index + 1:
        raise IndexError(f"entry range [{lo}, {hi}) passes the end of the log at index {last_index}")


def check_term_index(index: int, first_index: int, last_index: int) -> None:
    """Raise unless ``term(index)`` is answerable for a log holding
    ``[first_index, last_index]``: :class:`IndexError` for a negative index or
    one after ``last_index``, :class:`LogCompacted` below ``first_index - 1``."""
    if index < 0:
        raise IndexError(f"log index {index} is negative")
    if index < first_index - 1:
        raise LogCompacted(
            f"the term of index {index} was compacted; the earliest known is index {first_index - 1}"
        )
    if index > last_index:
        raise IndexError(f"log index {index} is after the last index {last_index}")


def check_compact(index: int, meta: SnapshotMeta, last_index: int) -> None:
    """Raise :class:`ValueError` unless ``compact(index, meta)`` is valid for a
    log ending at ``last_index``."""
    if index > meta.index:
        raise ValueError(f"cannot compact through index {index}: the snapshot only covers up to {meta.index}")
    if index > last_index:
        raise ValueError(f"cannot compact through index {index}: the log ends at {last_index}")


def take_within(entries: Iterable[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix of ``entries`` whose total :meth:`Entry.size` stays
    within ``max_bytes`` (no limit when ``None``), but at least one entry
    when ``entries`` is not empty. Stops consuming ``entries`` (which may be
    a lazy iterator) at the first entry left out."""
    if max_bytes is None:
        return list(entries)
    taken: list[Entry] = []
    total = 0
    for entry in entries:
        total += entry.size()
        if taken and total > max_bytes:
            break
        taken.append(entry)
    return taken


class MemoryStorage:
    """A :class:`~storage_adapters.protocol.LogStorage` held in memory.

    The log is a list of :class:`Entry` whose first element has index
    ``first_index()``; the entries before it were compacted, and only the
    index and term of the last compacted one (the *boundary*) are kept.

    ``sync_count`` counts the calls to :meth:`save` with ``sync=True``, so
    that tests can check when the runtime asks for durability.
    """

    save_blocks = False
    """``save`` never waits on a disk, so the runtime calls it on the event loop."""

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot: SnapshotMeta | None = None
        self._log: list[Entry] = []
        self._boundary_index = 0
        self._boundary_term = 0
        self.sync_count = 0

    def load(self) -> tuple[HardState, SnapshotMeta | None]:
        """Return the hard state and the latest snapshot's metadata, if any."""
        return self._hard_state, self._snapshot

    def first_index(self) -> int:
        """First log index still stored."""
        return self._boundary_index + 1

    def last_index(self) -> int:
        """Last log index stored (``first_index() - 1`` when the log is empty)."""
        return self._boundary_index + len(self._log)

    def term(self, index: int) -> int:
        """Term of the entry at ``index``; the boundary's term at ``first_index() - 1``."""
        check_term_index(index, self.first_index(), self.last_index())
        if index == self._boundary_index:
            return self._boundary_term
        return self._log[index - self.first_index()].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, cut short by ``max_bytes`` (at least one entry)."""
        check_range(lo, hi, self.first_index(), self.last_index())
        offset = self.first_index()
        return take_within(self._log[lo - offset : hi - offset], max_bytes)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], sync: bool = True) -> None:
        """Store ``hard_state`` (unless ``None``) and ``entries``, first dropping
        stored entries at or after ``entries[0].index``. Nothing changes when
        the entries are rejected with :class:`ValueError`."""
        check_append(entries, self.first_index(), self.last_index())
        if entries:
            del self._log[entries[0].index - self.first_index() :]
            self._log.extend(entries)
        if hard_state is not None:
            self._hard_state = hard_state
        if sync:
            self.sync_count += 1

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        """Discard the whole log and make ``meta`` the boundary and latest snapshot."""
        self._log.clear()
        self._boundary_index = meta.index
        self._boundary_term = meta.term
        self._snapshot = meta

    def compact(self, index: int, meta: SnapshotMeta) -> None:
        """Drop entries up to and including ``index`` and record ``meta``.

        ``index`` must be at most ``meta.index`` and at most ``last_index()``
        (:class:`ValueError` otherwise). An ``index`` that is already
        compacted only records ``meta``.
        """
        check_compact(index, meta, self.last_index())
        if index >= self.first_index():
            self._boundary_term = self.term(index)
            del self._log[: index - self._boundary_index]
            self._boundary_index = index
        self._snapshot = meta

    def close(self) -> None:
        """Nothing to release; present for the protocol."""

