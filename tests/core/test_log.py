"""RaftLog: the stable log (in a LogStorage) plus the unstable tail."""

from __future__ import annotations

from typing import Sequence

import pytest

from raftlib.core.log import RaftLog
from raftlib.types import Entry, Membership, SnapshotMeta
from storage_adapters.memory import MemoryStorage


def ent(term: int, index: int, size: int = 0) -> Entry:
    return Entry(term, index, data=bytes(size))


def run(terms: Sequence[int], start: int = 1, size: int = 0) -> list[Entry]:
    return [ent(t, start + k, size) for k, t in enumerate(terms)]


def make(stable_terms: Sequence[int], unstable_terms: Sequence[int] = (), size: int = 0, committed: int = 0) -> RaftLog:
    storage = MemoryStorage()
    storage.save(None, run(stable_terms, size=size))
    log = RaftLog(storage, committed, 0)
    if unstable_terms:
        log.append(run(list(unstable_terms), start=len(stable_terms) + 1, size=size))
    return log


def view(log: RaftLog) -> list[tuple[int, int]]:
    return [(e.term, e.index) for e in log.entries(log.first_index(), log.last_index() + 1)]


def persist(log: RaftLog) -> None:
    """What the runtime does with a Ready's entries: save, then stable_to."""
    if log.unstable:
        log.storage.save(None, list(log.unstable))
        last = log.unstable[-1]
        log.stable_to(last.index, last.term)


# -- reading ---------------------------------------------------------------------------


def test_empty_log() -> None:
    log = make([])
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 0, 0)
    assert log.term(0) == 0
    assert log.term_or_none(1) is None
    assert log.entries(1, 5) == []
    assert log.matches(0, 0)
    assert not log.matches(1, 1)


def test_term_reads_both_regions_and_zero_past_the_end() -> None:
    log = make([1, 1, 2], [3, 3])
    assert [log.term(i) for i in range(6)] == [0, 1, 1, 2, 3, 3]
    assert log.term(6) == 0
    assert log.term_or_none(6) is None
    assert (log.last_index(), log.last_term(), log.stable_last_index()) == (5, 3, 3)


def test_append_extends_unstable_tail() -> None:
    log = make([1, 1])
    log.append(run([2], start=3))
    log.append(run([2, 2], start=4))
    assert view(log) == [(1, 1), (1, 2), (2, 3), (2, 4), (2, 5)]
    assert log.unstable_offset == 3 and len(log.unstable) == 3


def test_append_truncates_inside_unstable_tail() -> None:
    log = make([1], [2, 2, 2])
    log.append(run([3, 3], start=3))
    assert view(log) == [(1, 1), (2, 2), (3, 3), (3, 4)]
    assert log.unstable_offset == 2


def test_append_truncates_into_stable_region() -> None:
    """A conflicting suffix that starts inside the stored range hides the
    stored entries from there on until the tail is persisted."""
    log = make([1, 2, 2, 2, 2])
    log.append(run([3], start=3))
    assert log.unstable_offset == 3
    assert view(log) == [(1, 1), (2, 2), (3, 3)]
    assert log.last_index() == 3 and log.stable_last_index() == 2
    assert log.term(3) == 3 and log.term(4) == 0 and log.term_or_none(4) is None
    assert log.entries(1, 10) == [ent(1, 1), ent(2, 2), ent(3, 3)]
    # The storage still has the old suffix until it is overwritten by save.
    assert log.storage.last_index() == 5
    persist(log)
    assert log.storage.last_index() == 3
    assert view(log) == [(1, 1), (2, 2), (3, 3)]
    assert (log.unstable, log.unstable_offset) == ([], 4)


def test_append_over_whole_unstable_tail_at_its_start() -> None:
    log = make([1], [1, 1])
    log.append(run([2, 2, 2], start=2))
    assert view(log) == [(1, 1), (2, 2), (2, 3), (2, 4)]


# -- stable_to --------------------------------------------------------------------------


def test_stable_to_drops_persisted_prefix() -> None:
    log = make([1], [2, 2, 2])
    log.storage.save(None, list(log.unstable[:2]))
    log.stable_to(3, 2)
    assert log.unstable_offset == 4 and [e.index for e in log.unstable] == [4]
    assert view(log) == [(1, 1), (2, 2), (2, 3), (2, 4)]


def test_stable_to_with_stale_term_is_ignored() -> None:
    """A Ready taken before a conflicting append: its (index, term) no longer
    names an entry of the log, so nothing may be marked stable."""
    log = make([1], [2, 2])
    log.append(run([3], start=3))  # replaces 2/3 with 3/3
    log.stable_to(3, 2)
    assert log.unstable_offset == 2
    assert [(e.term, e.index) for e in log.unstable] == [(2, 2), (3, 3)]


def test_stable_to_below_offset_or_past_end_is_ignored() -> None:
    log = make([1, 1], [2])
    log.stable_to(1, 1)  # already stable
    assert log.unstable_offset == 3 and len(log.unstable) == 1
    log.stable_to(9, 2)  # not in the log
    assert log.unstable_offset == 3 and len(log.unstable) == 1


# -- entries() --------------------------------------------------------------------------


def test_entries_across_boundary_without_limit() -> None:
    log = make([1, 1, 1], [2, 2])
    assert [(e.term, e.index) for e in log.entries(2, 6)] == [(1, 2), (1, 3), (2, 4), (2, 5)]
    assert [e.index for e in log.entries(3, 5)] == [3, 4]
    assert [e.index for e in log.entries(4, 100)] == [4, 5]
    assert log.entries(6, 9) == []
    assert log.entries(3, 3) == []


@pytest.mark.parametrize(
    "lo,max_bytes,expected",
    [
        (1, 10**6, [1, 2, 3, 4, 5, 6]),
        (1, 0, [1]),  # always at least one entry
        (1, 100, [1, 2, 3, 4]),  # 4 * 25 = 100 exactly, crosses the boundary after 3
        (1, 99, [1, 2, 3]),  # stops exactly at the boundary
        (1, 74, [1, 2]),  # stops inside the stable part
        (3, 50, [3, 4]),  # one stable + one unstable
        (4, 0, [4]),  # at least one, from the unstable part
        (4, 60, [4, 5]),
        (2, 126, [2, 3, 4, 5, 6]),
    ],
)
def test_entries_with_max_bytes_across_boundary(lo: int, max_bytes: int, expected: list[int]) -> None:
    """Each entry is 25 bytes (1 payload + 24 overhead); stable [1..3],
    unstable [4..6]. The size limit is applied across both parts, as if
    the log were one list, and at least one entry is always returned."""
    log = make([1, 1, 1], [2, 2, 2], size=1)
    assert ent(1, 1, 1).size() == 25
    got = [e.index for e in log.entries(lo, 7, max_bytes)]
    assert got == expected
    reference = []
    total = 0
    for e in log.entries(lo, 7):
        total += e.size()
        if reference and total > max_bytes:
            break
        reference.append(e.index)
    assert got == reference


# -- hints for fast back-off (§5.3) -------------------------------------------------------


def test_find_conflict_hint_past_the_end() -> None:
    log = make([1, 2, 2])
    assert log.find_conflict_hint(7) == (4, 0)


@pytest.mark.parametrize(
    "index,expected",
    [
        (1, (1, 1)),
        (2, (2, 2)),
        (4, (2, 2)),
        (5, (5, 3)),
        (6, (5, 3)),
        (7, (7, 5)),
    ],
)
def test_find_conflict_hint_reports_first_index_of_the_term(index: int, expected: tuple[int, int]) -> None:
    """§5.3: "the follower can include the term of the conflicting entry and
    the first index it stores for that term"; spans stable and unstable."""
    log = make([1, 2, 2, 2], [3, 3, 5])
    assert log.find_conflict_hint(index) == expected


def test_find_conflict_hint_stops_at_first_index_after_compaction() -> None:
    storage = MemoryStorage()
    storage.save(None, run([1, 2, 2, 2, 2, 3]))
    storage.compact(3, SnapshotMeta(3, 2, Membership({"a": "x"})))
    log = RaftLog(storage, 3, 3)
    assert log.first_index() == 4
    assert log.find_conflict_hint(5) == (4, 2)
    assert log.find_conflict_hint(6) == (6, 3)


def test_last_index_of_term() -> None:
    log = make([1, 2, 2, 2], [3, 3, 5])
    assert log.last_index_of_term(2, 7) == 4
    assert log.last_index_of_term(2, 3) == 3
    assert log.last_index_of_term(3, 100) == 6
    assert log.last_index_of_term(4, 7) is None  # no entry of term 4
    assert log.last_index_of_term(5, 6) is None
    assert log.last_index_of_term(1, 7) == 1


# -- up-to-date, commit, apply ------------------------------------------------------------


@pytest.mark.parametrize(
    "last_index,last_term,ok",
    [(3, 2, True), (2, 2, False), (9, 2, True), (1, 3, True), (9, 1, False)],
)
def test_is_up_to_date(last_index: int, last_term: int, ok: bool) -> None:
    """§5.4.1: compare last terms, then lengths."""
    log = make([1, 2], [2])
    assert log.is_up_to_date(last_index, last_term) is ok


def test_commit_to_only_moves_forward() -> None:
    log = make([1, 1, 1])
    assert log.commit_to(2) is True
    assert log.commit_to(1) is False and log.committed == 2
    assert log.commit_to(2) is False
    assert log.commit_to(3) is True and log.committed == 3


def test_next_committed_hands_out_only_persisted_entries() -> None:
    log = make([1, 1], [2, 2])
    log.commit_to(4)
    assert [e.index for e in log.next_committed()] == [1, 2]
    log.applied_to(2)
    assert log.next_committed() == []
    persist(log)
    assert [e.index for e in log.next_committed()] == [3, 4]
    assert [e.index for e in log.next_committed(0)] == [3]
    log.applied_to(4)
    assert log.next_committed() == []


def test_restart_clamps_commit_to_stored_log() -> None:
    storage = MemoryStorage()
    storage.save(None, run([1, 1]))
    log = RaftLog(storage, committed=9, applied=0)
    assert log.committed == 2


# -- the cache of recently persisted entries --------------------------------------------------


class CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        self.reads += 1
        return super().entries(lo, hi, max_bytes)

    def term(self, index: int) -> int:
        self.reads += 1
        return super().term(index)


def test_recently_persisted_entries_are_read_from_memory() -> None:
    storage = CountingStorage()
    log = RaftLog(storage, 0, 0)
    log.append(run([1, 1, 1, 2]))
    persist(log)
    storage.reads = 0
    assert view(log) == [(1, 1), (1, 2), (1, 3), (2, 4)]
    assert log.term(3) == 1 and log.entries(2, 4, max_bytes=1) == [ent(1, 2)]
    assert storage.reads == 0
    # Entries persisted before this log was created come from storage.
    fresh = RaftLog(storage, 0, 0)
    assert fresh.entries(1, 5) == log.entries(1, 5)
    assert storage.reads > 0


def test_the_cache_follows_conflicts_snapshots_and_its_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    import raftlib.core.log as log_module

    monkeypatch.setattr(log_module, "CACHE_ENTRIES", 4)
    log = RaftLog(MemoryStorage(), 0, 0)
    for i in range(1, 11):
        log.append([ent(1, i)])
        persist(log)
    assert len(log._cache) <= 4 and view(log) == [(1, i) for i in range(1, 11)]
    # A leader's conflicting suffix replaces cached entries: the log reads the new ones.
    log.append(run([2, 2], start=9))
    assert view(log)[-3:] == [(1, 8), (2, 9), (2, 10)]
    persist(log)
    assert view(log)[-3:] == [(1, 8), (2, 9), (2, 10)]
    assert log.term(9) == 2
    # A snapshot from the leader empties it.
    log.restore(SnapshotMeta(20, 3, Membership({"a": "x"})))
    assert log._cache == [] and log.last_index() == 20 and log.term(20) == 3
