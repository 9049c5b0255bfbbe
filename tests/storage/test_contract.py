"""The LogStorage contract, checked against every adapter.

The tests that take the ``storage`` fixture run once per adapter; the ones
at the end are LMDB-specific (durability across reopen and kill, checksums,
threads) or compare LMDB against the in-memory reference with hypothesis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import zlib
from pathlib import Path
from typing import Callable, Iterator

import lmdb
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftlib.errors import ConfigError, CorruptStorage, LogCompacted, StorageError
from raftlib.types import Entry, EntryKind, HardState, Membership, SnapshotMeta
from storage_adapters import LMDBStorage, LogStorage, MemoryStorage

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SMALL_MAP = 16 << 20
"""map_size for test databases: plenty for the tests, quick to create."""

MEMBERSHIP = Membership(voters={"s1": "127.0.0.1:7001", "s2": "127.0.0.1:7002"}, learners={"s3": "unix:/tmp/s3"})


def make_entries(lo: int, hi: int, term: int = 1, size: int = 0) -> list[Entry]:
    """Entries ``[lo, hi)`` of ``term``, each with ``size`` bytes of data
    naming its index (``size=0`` for a short name)."""
    out = []
    for index in range(lo, hi):
        data = f"cmd-{index}".encode()
        out.append(Entry(term=term, index=index, data=data.ljust(size, b".") if size else data))
    return out


def script_env() -> dict[str, str]:
    """The environment for a child Python process that imports this checkout."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}


def snapshot_meta(index: int, term: int) -> SnapshotMeta:
    """A snapshot descriptor with the test membership."""
    return SnapshotMeta(index=index, term=term, membership=MEMBERSHIP)


def whole_log(storage: LogStorage) -> list[Entry]:
    """Every stored entry."""
    return storage.entries(storage.first_index(), storage.last_index() + 1)


@pytest.fixture(params=["memory", "lmdb", "lmdb-nowal"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogStorage]:
    """A fresh adapter of each kind, closed afterwards."""
    adapter: LogStorage
    if request.param == "memory":
        adapter = MemoryStorage()
    else:
        adapter = LMDBStorage(tmp_path / "db", map_size=SMALL_MAP, wal=request.param == "lmdb")
    yield adapter
    adapter.close()


# -- the contract, for every adapter ------------------------------------------


def test_implements_the_protocol(storage: LogStorage) -> None:
    assert isinstance(storage, LogStorage)


def test_fresh_state(storage: LogStorage) -> None:
    assert storage.first_index() == 1
    assert storage.last_index() == 0
    assert storage.term(0) == 0
    assert storage.load() == (HardState(), None)
    assert storage.entries(1, 1) == []


def test_append_and_read_back(storage: LogStorage) -> None:
    entries = [
        Entry(term=1, index=1, kind=EntryKind.CONFIG, data=MEMBERSHIP.encode()),
        Entry(term=1, index=2, kind=EntryKind.NOOP),
        Entry(term=2, index=3, data=b"\x00\xffbinary"),
    ]
    storage.save(None, entries[:1])
    storage.save(None, entries[1:])
    assert (storage.first_index(), storage.last_index()) == (1, 3)
    read = storage.entries(1, 4)
    assert read == entries
    assert all(type(e.kind) is EntryKind and type(e.data) is bytes for e in read)
    assert [storage.term(i) for i in range(0, 4)] == [0, 1, 1, 2]
    assert storage.entries(2, 3) == entries[1:2]


def test_entries_range_bounds(storage: LogStorage) -> None:
    storage.save(None, make_entries(1, 11))
    storage.compact(4, snapshot_meta(4, 1))
    assert storage.entries(5, 11) == make_entries(5, 11)
    assert storage.entries(11, 11) == []
    with pytest.raises(LogCompacted):
        storage.entries(4, 6)
    with pytest.raises(IndexError):
        storage.entries(5, 12)
    with pytest.raises(ValueError):
        storage.entries(7, 6)


def test_entries_max_bytes(storage: LogStorage) -> None:
    entries = make_entries(1, 6, size=76)  # Entry.size() == 100 each
    storage.save(None, entries)
    assert storage.entries(1, 6, max_bytes=250) == entries[:2]
    assert storage.entries(1, 6, max_bytes=300) == entries[:3]
    assert storage.entries(2, 6, max_bytes=10_000) == entries[1:]
    assert storage.entries(3, 6, max_bytes=0) == entries[2:3], "always at least one entry"
    assert storage.entries(3, 6, max_bytes=99) == entries[2:3]
    assert storage.entries(3, 3, max_bytes=0) == []


def test_save_hard_state_alone(storage: LogStorage) -> None:
    storage.save(None, make_entries(1, 3))
    storage.save(HardState(term=3, vote="s2", commit=1), [])
    assert storage.load() == (HardState(term=3, vote="s2", commit=1), None)
    assert whole_log(storage) == make_entries(1, 3)
    storage.save(HardState(term=4, vote=None, commit=2), [])
    assert storage.load()[0] == HardState(term=4, vote=None, commit=2)


def test_save_none_hard_state_keeps_previous(storage: LogStorage) -> None:
    storage.save(HardState(term=2, vote="s1", commit=0), make_entries(1, 2, term=2))
    storage.save(None, make_entries(2, 3, term=2))
    assert storage.load()[0] == HardState(term=2, vote="s1", commit=0)
    assert whole_log(storage) == make_entries(1, 3, term=2)


def test_conflicting_save_truncates_the_suffix(storage: LogStorage) -> None:
    storage.save(None, make_entries(1, 8, term=1))
    storage.save(None, make_entries(4, 6, term=2))
    assert storage.last_index() == 5
    assert whole_log(storage) == make_entries(1, 4, term=1) + make_entries(4, 6, term=2)
    with pytest.raises(IndexError):
        storage.term(6)
    # Replacing the very first entry and appending right after the end both work.
    storage.save(None, make_entries(1, 2, term=3))
    storage.save(None, make_entries(2, 3, term=3))
    assert whole_log(storage) == make_entries(1, 3, term=3)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        pytest.param(make_entries(6, 7), "gap", id="gap-after-last"),
        pytest.param(make_entries(2, 4), "compacted", id="before-first"),
        pytest.param(make_entries(4, 5) + make_entries(6, 7), "not contiguous", id="not-contiguous"),
        pytest.param(make_entries(5, 6) + make_entries(5, 6), "not contiguous", id="repeated-index"),
    ],
)
def test_save_rejects_invalid_entries(storage: LogStorage, entries: list[Entry], message: str) -> None:
    storage.save(HardState(term=1), make_entries(1, 5))
    storage.compact(2, snapshot_meta(2, 1))
    with pytest.raises(ValueError, match=message):
        storage.save(HardState(term=9), entries)
    assert storage.load()[0] == HardState(term=1), "a rejected save changes nothing"
    assert whole_log(storage) == make_entries(3, 5)


def test_term_out_of_range(storage: LogStorage) -> None:
    storage.save(None, make_entries(1, 6, term=2))
    with pytest.raises(IndexError):
        storage.term(6)
    with pytest.raises(IndexError):
        storage.term(-1)
    storage.compact(3, snapshot_meta(3, 2))
    assert storage.term(3) == 2
    with pytest.raises(LogCompacted):
        storage.term(2)


def test_compact_keeps_the_boundary_term(storage: LogStorage) -> None:
    storage.save(None, make_entries(1, 4, term=1) + make_entries(4, 8, term=2))
    meta = snapshot_meta(5, 2)
    storage.compact(3, meta)
    assert (storage.first_index(), storage.last_index()) == (4, 7)
    assert storage.term(3) == 1
    assert storage.load() == (HardState(), meta)
    assert whole_log(storage) == make_entries(4, 8, term=2)
    # Compacting through an already compacted index only records the snapshot.
    later = snapshot_meta(6, 2)
    storage.compact(2, later)
    assert storage.first_index() == 4
    assert storage.load()[1] == later
    # The whole log may be compacted; appending then continues after it.
    storage.compact(7, snapshot_meta(7, 2))
    assert (storage.first_index(), storage.last_index(), storage.term(7)) == (8, 7, 2)
    storage.save(None, make_entries(8, 9, term=3))
    assert whole_log(storage) == make_entries(8, 9, term=3)


def test_compact_rejects_invalid_index(storage: LogStorage) -> None:
    storage.save(None, make_entries(1, 4))
    with pytest.raises(ValueError, match="snapshot only covers"):
        storage.compact(3, snapshot_meta(2, 1))
    with pytest.raises(ValueError, match="log ends at 3"):
        storage.compact(4, snapshot_meta(4, 1))
    assert storage.first_index() == 1
    assert storage.load()[1] is None


def test_install_snapshot_discards_the_log(storage: LogStorage) -> None:
    storage.save(HardState(term=2, vote="s1", commit=3), make_entries(1, 6, term=2))
    meta = snapshot_meta(20, 4)
    storage.install_snapshot(meta)
    assert (storage.first_index(), storage.last_index()) == (21, 20)
    assert storage.term(20) == 4
    assert storage.load() == (HardState(term=2, vote="s1", commit=3), meta)
    assert storage.entries(21, 21) == []
    with pytest.raises(LogCompacted):
        storage.term(5)
    storage.save(None, make_entries(21, 23, term=4))
    assert whole_log(storage) == make_entries(21, 23, term=4)


def test_install_snapshot_behind_the_log_also_discards_it(storage: LogStorage) -> None:
    storage.save(None, make_entries(1, 10))
    storage.install_snapshot(snapshot_meta(4, 1))
    assert (storage.first_index(), storage.last_index()) == (5, 4)


def test_sync_count_counts_only_syncing_saves(storage: LogStorage) -> None:
    assert isinstance(storage, (MemoryStorage, LMDBStorage))
    assert storage.sync_count == 0
    storage.save(None, make_entries(1, 2), sync=False)
    storage.save(HardState(term=1), [], sync=False)
    assert storage.sync_count == 0
    storage.save(None, make_entries(2, 3))
    storage.save(HardState(term=2), [], sync=True)
    assert storage.sync_count == 2
    storage.compact(1, snapshot_meta(1, 1))
    storage.install_snapshot(snapshot_meta(5, 1))
    assert storage.sync_count == 2


def test_close_is_idempotent(storage: LogStorage) -> None:
    storage.save(None, make_entries(1, 2))
    storage.close()
    storage.close()


# -- LMDB only ----------------------------------------------------------------


def test_lmdb_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "db"
    first = LMDBStorage(path, map_size=SMALL_MAP)
    first.save(HardState(term=3, vote="s2", commit=6), make_entries(1, 5, term=1) + make_entries(5, 9, term=3))
    first.compact(4, snapshot_meta(6, 3))
    first.save(None, make_entries(9, 10, term=3), sync=False)
    first.close()

    again = LMDBStorage(str(path), map_size=SMALL_MAP)
    try:
        assert again.load() == (HardState(term=3, vote="s2", commit=6), snapshot_meta(6, 3))
        assert (again.first_index(), again.last_index()) == (5, 9)
        assert again.term(4) == 1
        assert whole_log(again) == make_entries(5, 10, term=3)
    finally:
        again.close()


def test_lmdb_reopen_after_install_snapshot(tmp_path: Path) -> None:
    first = LMDBStorage(tmp_path / "db", map_size=SMALL_MAP)
    first.save(None, make_entries(1, 4))
    first.install_snapshot(snapshot_meta(10, 2))
    first.close()
    again = LMDBStorage(tmp_path / "db", map_size=SMALL_MAP)
    try:
        assert (again.first_index(), again.last_index(), again.term(10)) == (11, 10, 2)
        assert again.load()[1] == snapshot_meta(10, 2)
    finally:
        again.close()


def test_a_second_lmdb_storage_on_an_open_directory_is_refused(tmp_path: Path) -> None:
    first = LMDBStorage(tmp_path / "db", map_size=SMALL_MAP)
    try:
        first.save(HardState(term=1, vote="s1", commit=0), make_entries(1, 3))
        with pytest.raises(StorageError, match="in use by another peer"):
            LMDBStorage(tmp_path / "db", map_size=SMALL_MAP)
        assert whole_log(first) == make_entries(1, 3)
    finally:
        first.close()
    again = LMDBStorage(tmp_path / "db", map_size=SMALL_MAP)  # closed: free again
    try:
        assert whole_log(again) == make_entries(1, 3)
    finally:
        again.close()


@pytest.mark.parametrize("argument, value", [
    ("map_size", -5), ("map_size", 0), ("map_size", "8G"), ("wal_size", 10), ("wal_size", "x"),
    ("checkpoint_entries", 0), ("checkpoint_entries", 2.5), ("checkpoint_entries", True),
])
def test_lmdb_names_an_invalid_argument_and_creates_nothing(tmp_path: Path, argument: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"{argument} must be"):
        LMDBStorage(tmp_path / "db", **{argument: value})  # type: ignore[arg-type]
    assert not (tmp_path / "db").exists()


@pytest.mark.slow
def test_lmdb_survives_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "db"
    script = textwrap.dedent(
        """
        import os, signal, sys
        from raftlib.types import Entry, HardState
        from storage_adapters.lmdb import LMDBStorage

        storage = LMDBStorage(sys.argv[1], map_size=16 << 20)
        storage.save(HardState(term=2, vote="s1", commit=1), [Entry(1, 1, data=b"a"), Entry(2, 2, data=b"b")])
        storage.save(None, [Entry(2, 2, data=b"c")], sync=False)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = script_env()
    result = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()

    again = LMDBStorage(path, map_size=SMALL_MAP)
    try:
        assert again.load() == (HardState(term=2, vote="s1", commit=1), None)
        assert whole_log(again) == [Entry(1, 1, data=b"a"), Entry(2, 2, data=b"c")]
    finally:
        again.close()


def test_lmdb_refuses_a_truncated_database_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = LMDBStorage(path, map_size=SMALL_MAP)
    storage.save(HardState(term=2, vote="s1", commit=3), make_entries(1, 2000, size=100))
    storage.close()
    mdb = path / "data.mdb"
    os.truncate(mdb, mdb.stat().st_size // 2)  # a partial copy, or a damaged file system
    # In a child process: a database LMDB maps past the end of its file kills the process.
    script = textwrap.dedent(
        """
        import sys
        from raftlib.errors import CorruptStorage
        from storage_adapters.lmdb import LMDBStorage

        try:
            LMDBStorage(sys.argv[1], map_size=16 << 20).close()
        except CorruptStorage as exc:
            print(exc)
        """
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], env=script_env(), capture_output=True,
                            timeout=60)
    assert result.returncode == 0, (result.returncode, result.stderr.decode())
    out = result.stdout.decode()
    assert str(path) in out and "data.mdb" in out and "truncated" in out and "wipe its data directory" in out


def test_lmdb_refuses_a_database_it_did_not_make(tmp_path: Path) -> None:
    other = tmp_path / "other"  # another program's database
    env = lmdb.open(str(other), max_dbs=4, map_size=SMALL_MAP)
    with env.begin(write=True) as txn:
        txn.put(b"user:1", b"alice")
    env.close()
    with pytest.raises(StorageError, match="not a raftlib log") as info:
        LMDBStorage(other, map_size=SMALL_MAP)
    assert str(other) in str(info.value)
    lookalike = tmp_path / "lookalike"  # same database names, other records
    env = lmdb.open(str(lookalike), max_dbs=4, map_size=SMALL_MAP)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v", db=env.open_db(b"log", txn=txn))
    env.close()
    with pytest.raises(StorageError, match="not a raftlib log") as info:
        LMDBStorage(lookalike, map_size=SMALL_MAP)
    assert str(lookalike) in str(info.value)


def test_lmdb_reports_a_malformed_log_key_as_corruption(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = LMDBStorage(path, map_size=SMALL_MAP)
    storage.save(HardState(term=1), make_entries(1, 4))
    storage.close()
    env = lmdb.open(str(path), max_dbs=4, map_size=SMALL_MAP)
    with env.begin(write=True) as txn:
        txn.put(b"\xff" * 9, b"junk", db=env.open_db(b"log", txn=txn))
    env.close()
    with pytest.raises(CorruptStorage, match="log key") as info:
        LMDBStorage(path, map_size=SMALL_MAP)
    assert str(path) in str(info.value)


def _rewrite_log_value(path: Path, index: int, change: Callable[[bytes], bytes]) -> None:
    """Replace the stored ``log`` value at ``index`` by ``change(value)``,
    going behind the adapter's back with the lmdb module."""
    env = lmdb.open(str(path), max_dbs=4, map_size=SMALL_MAP)
    try:
        log = env.open_db(b"log")
        key = struct.pack(">Q", index)
        with env.begin(write=True, db=log) as txn:
            value = txn.get(key)
            assert value is not None
            txn.put(key, change(value))
    finally:
        env.close()


def _flip_last_byte(value: bytes) -> bytes:
    return value[:-1] + bytes([value[-1] ^ 0x01])


def _garbage_with_valid_crc(value: bytes) -> bytes:
    body = b"\xc1not msgpack"
    return struct.pack(">I", zlib.crc32(body)) + body


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(_flip_last_byte, "checksum", id="flipped-byte"),
        pytest.param(lambda value: value[:2], "truncated", id="truncated"),
        pytest.param(_garbage_with_valid_crc, "cannot be decoded", id="undecodable"),
    ],
)
def test_lmdb_reports_corruption_naming_path_and_index(
    tmp_path: Path, change: Callable[[bytes], bytes], message: str
) -> None:
    path = tmp_path / "db"
    storage = LMDBStorage(path, map_size=SMALL_MAP)
    storage.save(None, make_entries(1, 4))
    storage.close()
    _rewrite_log_value(path, 2, change)

    storage = LMDBStorage(path, map_size=SMALL_MAP)
    try:
        assert storage.term(1) == 1
        assert storage.entries(3, 4) == make_entries(3, 4)
        for read in (lambda: storage.term(2), lambda: storage.entries(1, 4)):
            with pytest.raises(CorruptStorage, match=message) as caught:
                read()
            assert "log entry 2 " in str(caught.value)
            assert str(path) in str(caught.value)
    finally:
        storage.close()


def test_lmdb_rejects_an_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "db"
    LMDBStorage(path, map_size=SMALL_MAP).close()
    env = lmdb.open(str(path), max_dbs=4, map_size=SMALL_MAP)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.put(b"format", msgpack.packb(2))
    env.close()
    with pytest.raises(StorageError, match="layout version 2"):
        LMDBStorage(path, map_size=SMALL_MAP)


def test_lmdb_full_map_raises_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = LMDBStorage(path, map_size=1 << 20)
    try:
        with pytest.raises(StorageError, match="map_size") as caught:
            storage.save(None, make_entries(1, 5, size=1 << 20))
        assert str(path) in str(caught.value)
        assert storage.last_index() == 0, "a failed save leaves the cached bounds alone"
        storage.save(None, make_entries(1, 2))
        assert whole_log(storage) == make_entries(1, 2)
    finally:
        storage.close()


async def test_lmdb_save_on_a_worker_thread_then_read_on_the_main_thread(tmp_path: Path) -> None:
    storage = LMDBStorage(tmp_path / "db", map_size=SMALL_MAP)
    try:
        for round_ in range(5):
            lo = round_ * 3 + 1
            await asyncio.to_thread(storage.save, HardState(term=round_ + 1), make_entries(lo, lo + 3, term=round_ + 1))
            assert storage.last_index() == lo + 2
            assert storage.entries(lo, lo + 3) == make_entries(lo, lo + 3, term=round_ + 1)
            assert storage.load()[0] == HardState(term=round_ + 1)
        # And the other way round: save here, read on a fresh thread.
        storage.save(None, make_entries(16, 17, term=9))
        seen: list[Entry] = []
        reader = threading.Thread(target=lambda: seen.extend(storage.entries(15, 17)))
        reader.start()
        reader.join()
        assert seen == make_entries(15, 16, term=5) + make_entries(16, 17, term=9)
    finally:
        storage.close()


# -- LMDB agrees with the reference -------------------------------------------


def assert_same(reference: MemoryStorage, lmdb_storage: LMDBStorage) -> None:
    """Both adapters hold the same hard state, snapshot and log."""
    assert lmdb_storage.load() == reference.load()
    first, last = reference.first_index(), reference.last_index()
    assert (lmdb_storage.first_index(), lmdb_storage.last_index()) == (first, last)
    assert whole_log(lmdb_storage) == whole_log(reference)
    assert [lmdb_storage.term(i) for i in range(first - 1, last + 1)] == [
        reference.term(i) for i in range(first - 1, last + 1)
    ]


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_lmdb_agrees_with_memory(data: st.DataObject) -> None:
    reference = MemoryStorage()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db"
        real = LMDBStorage(path, map_size=SMALL_MAP)
        try:
            for _ in range(data.draw(st.integers(1, 12), label="steps")):
                first, last = reference.first_index(), reference.last_index()
                op = data.draw(st.sampled_from(["save", "save", "save", "read", "compact", "snapshot", "reopen"]))
                if op == "save":
                    start = data.draw(st.integers(first - 2, last + 2), label="start")
                    terms = data.draw(st.lists(st.integers(1, 4), max_size=4), label="terms")
                    entries = [
                        Entry(term=t, index=start + i, kind=EntryKind(t % 3), data=bytes([(start + i) % 256] * t))
                        for i, t in enumerate(terms)
                    ]
                    hard_state = data.draw(
                        st.none() | st.builds(HardState, st.integers(0, 9), st.sampled_from([None, "s1", "s2"]), st.integers(0, 9))
                    )
                    sync = data.draw(st.booleans(), label="sync")
                    if entries and not first <= start <= last + 1:
                        for adapter in (reference, real):
                            with pytest.raises(ValueError):
                                adapter.save(hard_state, entries, sync)
                    else:
                        reference.save(hard_state, entries, sync)
                        real.save(hard_state, entries, sync)
                elif op == "read":
                    lo = data.draw(st.integers(first, last + 1), label="lo")
                    hi = data.draw(st.integers(lo, last + 1), label="hi")
                    max_bytes = data.draw(st.none() | st.integers(0, 100), label="max_bytes")
                    assert real.entries(lo, hi, max_bytes) == reference.entries(lo, hi, max_bytes)
                elif op == "compact":
                    index = data.draw(st.integers(max(0, first - 2), last), label="index")
                    meta = snapshot_meta(index + data.draw(st.integers(0, 2)), data.draw(st.integers(0, 5)))
                    reference.compact(index, meta)
                    real.compact(index, meta)
                elif op == "snapshot":
                    meta = snapshot_meta(data.draw(st.integers(0, last + 3)), data.draw(st.integers(0, 5)))
                    reference.install_snapshot(meta)
                    real.install_snapshot(meta)
                else:
                    real.close()
                    real = LMDBStorage(path, map_size=SMALL_MAP)
                assert_same(reference, real)
        finally:
            real.close()


# -- the cluster ID in snapshot metadata ----------------------------------------


def test_snapshot_metadata_keeps_the_cluster_id(storage: LogStorage) -> None:
    """The cluster ID rides in the membership of the snapshot metadata: once
    the log is compacted past the configuration entries, a restarted peer
    knows it from there."""
    marked = SnapshotMeta(3, 1, Membership(MEMBERSHIP.voters, MEMBERSHIP.learners, cluster_id="0123abcd"))
    storage.save(None, make_entries(1, 6))
    storage.compact(3, marked)
    meta = storage.load()[1]
    assert meta is not None and meta.membership.cluster_id == "0123abcd"
    storage.install_snapshot(dataclasses.replace(marked, index=9))
    meta = storage.load()[1]
    assert meta is not None and meta.membership.cluster_id == "0123abcd"


def test_lmdb_reopen_keeps_the_cluster_id_and_reads_older_snapshot_records(tmp_path: Path) -> None:
    first = LMDBStorage(tmp_path / "db", map_size=SMALL_MAP)
    first.install_snapshot(SnapshotMeta(10, 2, Membership(MEMBERSHIP.voters, cluster_id="0123abcd")))
    first.close()
    again = LMDBStorage(tmp_path / "db", map_size=SMALL_MAP)
    try:
        meta = again.load()[1]
        assert meta is not None and meta.membership.cluster_id == "0123abcd"
    finally:
        again.close()
    # Without an ID the record has the four fields of earlier versions.
    old = LMDBStorage(tmp_path / "old", map_size=SMALL_MAP)
    old.install_snapshot(snapshot_meta(10, 2))
    old.close()
    again = LMDBStorage(tmp_path / "old", map_size=SMALL_MAP)
    try:
        meta = again.load()[1]
        assert meta == snapshot_meta(10, 2) and meta.membership.cluster_id is None
    finally:
        again.close()


def test_membership_encoding_carries_the_cluster_id_and_reads_older_encodings() -> None:
    marked = Membership(MEMBERSHIP.voters, MEMBERSHIP.learners, cluster_id="0123abcd")
    assert Membership.decode(marked.encode()).cluster_id == "0123abcd"
    assert MEMBERSHIP.encode() == msgpack.packb({"voters": dict(MEMBERSHIP.voters), "learners": dict(MEMBERSHIP.learners)})
    assert Membership.decode(MEMBERSHIP.encode()).cluster_id is None
    assert marked == MEMBERSHIP  # the ID names the cluster; it is not part of the configuration
    with pytest.raises(ValueError):
        Membership.decode(msgpack.packb({"voters": {"s1": "a:1"}, "learners": {}, "cluster": 7}))
