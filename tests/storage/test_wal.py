"""The LMDB adapter's write-ahead files: one flush per save, checkpoints into
LMDB in the background, and recovery after a crash at any point.

A "crash" here drops the adapter the way a killed process would: the files
and the environment are closed with no checkpoint, after letting a
background checkpoint finish (or fail) as it would have on its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftlib.errors import CorruptStorage, StorageError
from raftlib.types import Entry, EntryKind, HardState
from storage_adapters import LMDBStorage, MemoryStorage
from storage_adapters.lmdb import WAL_FILES
from storage_adapters.wal import HEADER_SIZE, WriteAheadFile

from .test_contract import SMALL_MAP, assert_same, make_entries, script_env, snapshot_meta, whole_log

WAL_SIZE = 4 * HEADER_SIZE
"""Small write-ahead files, so that tests switch between them often."""


def open_storage(path: Path, **kwargs: Any) -> LMDBStorage:
    kwargs.setdefault("wal_size", WAL_SIZE)
    return LMDBStorage(path, map_size=SMALL_MAP, **kwargs)


def crash(storage: LMDBStorage) -> None:
    """Drop ``storage`` as a killed process would: no checkpoint on the way out."""
    if storage._executor is not None:
        storage._executor.shutdown(wait=True)
    for f in storage._files:
        f.close()
    storage._env.close()
    os.close(storage._lock_fd)  # the kernel drops a killed process's lock
    storage._closed = True


def lmdb_commits(storage: LMDBStorage) -> int:
    """The id of LMDB's last committed transaction."""
    return int(storage._env.info()["last_txnid"])


def fail_background_commits(storage: LMDBStorage) -> list[int]:
    """Make the next background checkpoint fail; returns a list that counts
    the failures."""
    real = storage._commit
    failures: list[int] = []

    def commit(*args: Any) -> None:
        if threading.current_thread() is not threading.main_thread() and not failures:
            failures.append(1)
            raise StorageError("injected: the checkpoint's disk went away")
        real(*args)

    storage._commit = commit  # type: ignore[method-assign]
    return failures


def test_a_save_appends_to_the_file_and_leaves_lmdb_alone(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "db", wal_size=1 << 20)
    try:
        before = lmdb_commits(storage)
        for i in range(1, 51):
            storage.save(HardState(term=1, commit=i - 1), make_entries(i, i + 1))
        assert lmdb_commits(storage) == before
        assert whole_log(storage) == make_entries(1, 51)
        assert storage.load()[0] == HardState(term=1, commit=49)
        assert storage.sync_count == 50
    finally:
        storage.close()
    again = open_storage(tmp_path / "db")
    try:
        assert lmdb_commits(again) == before + 1, "close checkpointed everything in one commit"
        assert whole_log(again) == make_entries(1, 51)
    finally:
        again.close()


def test_a_crash_loses_no_save(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "db", checkpoint_entries=7)
    for i in range(1, 41):
        storage.save(HardState(term=2, vote="s1", commit=i // 2), make_entries(i, i + 1, term=2))
    storage.save(None, make_entries(30, 33, term=3))  # truncates 30..40
    crash(storage)
    again = open_storage(tmp_path / "db")
    try:
        assert again.load() == (HardState(term=2, vote="s1", commit=20), None)
        assert whole_log(again) == make_entries(1, 30, term=2) + make_entries(30, 33, term=3)
        assert all(again._files) and again._active is not None and again._active.empty
    finally:
        again.close()


def test_a_synced_append_is_one_write_unless_an_unsynced_one_came_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A synced append is one pwrite through the O_DSYNC descriptor; after
    an unsynced append, it flushes the whole file instead, so the earlier
    record is on disk too."""
    if not getattr(os, "O_DSYNC", 0):
        pytest.skip("no O_DSYNC on this platform")
    wal = WriteAheadFile(str(tmp_path / "wal"), 1 << 20, "advice")
    calls: list[str] = []
    real_pwrite, real_fdatasync = os.pwrite, os.fdatasync
    monkeypatch.setattr(os, "pwrite", lambda fd, data, off: calls.append("pwrite") or real_pwrite(fd, data, off))
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append("fdatasync") or real_fdatasync(fd))
    try:
        wal.append(b"one")
        assert calls == ["pwrite"]
        wal.append(b"two", sync=False)
        wal.append(b"three")
        assert calls == ["pwrite", "pwrite", "pwrite", "fdatasync"]
        wal.append(b"four")
        assert calls[4:] == ["pwrite"]
        monkeypatch.undo()
        assert wal.records() == [b"one", b"two", b"three", b"four"]
    finally:
        wal.close()
    reopened = WriteAheadFile(str(tmp_path / "wal"), 1 << 20, "advice")
    try:
        assert reopened.records() == [b"one", b"two", b"three", b"four"]
    finally:
        reopened.close()


def test_a_torn_last_record_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = open_storage(path, wal_size=1 << 20)
    storage.save(HardState(term=1), make_entries(1, 4))
    storage.save(None, make_entries(4, 6, size=200))
    active = storage._active
    assert active is not None
    torn_at = active._offset - 100  # inside the last record's payload
    crash(storage)
    with open(active.path, "r+b") as f:
        f.seek(torn_at)
        f.write(b"\xff" * 50)
    again = open_storage(path)
    try:
        assert whole_log(again) == make_entries(1, 4)
        assert again.load()[0] == HardState(term=1)
        again.save(None, make_entries(4, 5))  # the log goes on from there
    finally:
        again.close()
    final = open_storage(path)
    try:
        assert whole_log(final) == make_entries(1, 5)
    finally:
        final.close()


def test_a_damaged_record_before_intact_ones_is_reported_not_taken_for_a_torn_one(tmp_path: Path) -> None:
    """Only the last record can be torn by a crash: one that fails its CRC
    with an intact record of the same generation after it was flushed and
    acknowledged, then damaged on disk. Ending the replay there would drop
    it and every save after it (entries and votes) without a word."""
    path = tmp_path / "db"
    storage = open_storage(path, wal_size=1 << 20)
    active = storage._active
    assert active is not None
    storage.save(HardState(term=1), make_entries(1, 3))
    second = active._offset
    storage.save(HardState(term=2, vote="s2"), make_entries(3, 5, size=200))
    storage.save(None, make_entries(5, 7))
    crash(storage)
    with open(active.path, "r+b") as f:
        f.seek(second + 100)  # inside the second record's payload
        byte = f.read(1)
        f.seek(second + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptStorage, match="record 2 .* fails its checksum") as caught:
        open_storage(path)
    assert active.path in str(caught.value) and "wipe its data directory" in str(caught.value)


def test_a_damaged_header_is_reported_not_ignored(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = open_storage(path)
    storage.save(None, make_entries(1, 3))
    crash(storage)
    with open(path / WAL_FILES[0], "r+b") as f:
        f.write(b"NOTAWAL!")
    with pytest.raises(CorruptStorage, match="header is damaged") as caught:
        open_storage(path)
    assert str(path / WAL_FILES[0]) in str(caught.value)
    assert "wipe its data directory" in str(caught.value)


@pytest.mark.parametrize("damage", ["emptied", "removed"])
def test_a_lost_database_beside_write_ahead_files_is_refused(tmp_path: Path, damage: str) -> None:
    """LMDB opens an empty or missing data.mdb as a new database. Beside
    write-ahead files (made only after the database), that is a member that
    lost its log and its votes: starting afresh would let it vote twice in
    a term and count for entries it no longer holds."""
    path = tmp_path / "db"
    storage = open_storage(path)
    storage.save(HardState(3, "a", 2), make_entries(1, 5))
    storage.close()
    if damage == "emptied":
        os.truncate(path / "data.mdb", 0)
    else:
        os.unlink(path / "data.mdb")
    for _ in range(2):  # and the refusal leaves nothing behind that would pass the next time
        with pytest.raises(CorruptStorage, match="data.mdb is new or empty") as caught:
            open_storage(path)
        assert str(path / "data.mdb") in str(caught.value)
        assert "wipe its data directory" in str(caught.value)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xc1 is no msgpack", id="not-msgpack"),
        pytest.param(msgpack.packb({"a": 1}), id="a-map"),
        pytest.param(msgpack.packb([None, 1, [[1, 0, "text, not bytes"]]]), id="text-data"),
        pytest.param(msgpack.packb([None, 1, [[1, 99, b"x"]]]), id="unknown-kind"),
        pytest.param(msgpack.packb([[1, 2], 1, []]), id="short-hard-state"),
    ],
)
def test_an_undecodable_record_is_reported(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "db"
    storage = open_storage(path)
    active = storage._active
    assert active is not None
    active.append(payload)
    crash(storage)
    with pytest.raises(CorruptStorage, match="write-ahead record 1 cannot be decoded") as caught:
        open_storage(path)
    assert str(path) in str(caught.value)


def test_records_after_a_gap_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = open_storage(path)
    storage.save(None, make_entries(1, 3))
    active = storage._active
    assert active is not None
    active.append(msgpack.packb([None, 9, [[1, 0, b"x"]]]))
    crash(storage)
    with pytest.raises(CorruptStorage, match="starts at index 9, after the end of the log at 2"):
        open_storage(path)


def test_a_failed_background_checkpoint_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = open_storage(path, checkpoint_entries=4)
    failures = fail_background_commits(storage)
    storage.save(None, make_entries(1, 5))
    saved = 4
    refused = 0
    for _ in range(3):  # the next save switches files; the failure shows on this save or the next
        try:
            storage.save(None, make_entries(saved + 1, saved + 2))
        except StorageError as exc:
            assert "injected" in str(exc)
            refused += 1
            assert whole_log(storage) == make_entries(1, saved + 1), "the refused save stored nothing"
        else:
            saved += 1
    assert failures == [1] and refused == 1
    storage.save(None, make_entries(saved + 1, saved + 20))
    crash(storage)
    again = open_storage(path)
    try:
        assert whole_log(again) == make_entries(1, saved + 20)
    finally:
        again.close()


def test_a_crash_after_a_failed_background_checkpoint_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = open_storage(path, checkpoint_entries=4)
    fail_background_commits(storage)
    storage.save(HardState(term=5), make_entries(1, 5, term=5))
    try:
        storage.save(None, make_entries(5, 7, term=5))  # switches files
        saved = 7
    except StorageError:  # the failure may show on this save already
        saved = 5
    crash(storage)  # the failed commit left the first file's records the only copy
    again = open_storage(path)
    try:
        assert whole_log(again) == make_entries(1, saved, term=5)
        assert again.load()[0] == HardState(term=5)
    finally:
        again.close()


def test_older_records_are_not_replayed_over_a_newer_checkpoint(tmp_path: Path) -> None:
    """The other file keeps records LMDB already has; after a synchronous
    checkpoint they must not come back and truncate the log."""
    path = tmp_path / "db"
    storage = open_storage(path, checkpoint_entries=3)
    storage.save(None, make_entries(1, 4, term=1))
    storage.save(None, make_entries(2, 3, term=2))  # a truncation, in the first file
    storage.save(None, make_entries(3, 6, term=2))  # switches files
    storage.save(None, make_entries(6, 200, size=8 << 10, term=2))  # large: straight to LMDB
    storage.save(None, make_entries(200, 201, term=2))
    crash(storage)
    again = open_storage(path)
    try:
        assert whole_log(again) == make_entries(1, 2) + make_entries(2, 6, term=2) + make_entries(
            6, 200, size=8 << 10, term=2
        ) + make_entries(200, 201, term=2)
    finally:
        again.close()


def test_compaction_then_a_crash_skips_compacted_entries(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = open_storage(path, wal_size=1 << 20)
    storage.save(HardState(term=1, commit=8), make_entries(1, 11))
    storage.compact(8, snapshot_meta(8, 1))
    storage.save(None, make_entries(11, 13))
    crash(storage)
    again = open_storage(path)
    try:
        assert (again.first_index(), again.last_index(), again.term(8)) == (9, 12, 1)
        assert whole_log(again) == make_entries(9, 13)
        assert again.load() == (HardState(term=1, commit=8), snapshot_meta(8, 1))
    finally:
        again.close()


def test_installing_a_snapshot_then_a_crash_brings_back_no_old_entry(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = open_storage(path, wal_size=1 << 20)
    storage.save(None, make_entries(1, 20, term=1))
    storage.install_snapshot(snapshot_meta(10, 3))
    crash(storage)
    again = open_storage(path)
    try:
        assert (again.first_index(), again.last_index(), again.term(10)) == (11, 10, 3)
    finally:
        again.close()


def test_without_wal_every_save_is_a_commit(tmp_path: Path) -> None:
    storage = LMDBStorage(tmp_path / "db", map_size=SMALL_MAP, wal=False)
    try:
        before = lmdb_commits(storage)
        storage.save(None, make_entries(1, 3))
        storage.save(HardState(term=1), [])
        assert lmdb_commits(storage) == before + 2
        assert not any((tmp_path / "db" / name).exists() for name in WAL_FILES)
    finally:
        storage.close()


def test_opening_without_wal_takes_over_what_the_files_hold(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = open_storage(path, wal_size=1 << 20)
    storage.save(HardState(term=4), make_entries(1, 6, term=4))
    crash(storage)
    plain = LMDBStorage(path, map_size=SMALL_MAP, wal=False)
    try:
        assert whole_log(plain) == make_entries(1, 6, term=4)
        assert plain.load()[0] == HardState(term=4)
        assert not any((path / name).exists() for name in WAL_FILES)
    finally:
        plain.close()


def test_checkpoint_entries_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint_entries must be at least 1"):
        open_storage(tmp_path / "db", checkpoint_entries=0)
    assert not (tmp_path / "db").exists(), "refused before anything was created"


def test_a_larger_wal_size_extends_existing_files(tmp_path: Path) -> None:
    path = tmp_path / "db"
    open_storage(path, wal_size=WAL_SIZE).close()
    storage = open_storage(path, wal_size=4 * WAL_SIZE)
    try:
        assert all(os.path.getsize(path / name) == 4 * WAL_SIZE for name in WAL_FILES)
        storage.save(None, make_entries(1, 3))
    finally:
        storage.close()


@pytest.mark.slow
def test_a_process_killed_while_saving_loses_no_acknowledged_save(tmp_path: Path) -> None:
    path = tmp_path / "db"
    script = textwrap.dedent(
        """
        import sys
        from raftlib.types import Entry, HardState
        from storage_adapters.lmdb import LMDBStorage

        storage = LMDBStorage(sys.argv[1], map_size=64 << 20, wal_size=64 << 10, checkpoint_entries=50)
        i = 1
        while True:
            storage.save(HardState(term=1, commit=i), [Entry(1, i, data=b"x" * (i % 300))])
            print(i, flush=True)
            i += 1
        """
    )
    env = script_env()
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        acknowledged = 0
        for line in proc.stdout:
            acknowledged = int(line)
            if acknowledged >= 3000:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    again = LMDBStorage(path, map_size=64 << 20, wal_size=64 << 10)
    try:
        assert again.last_index() >= acknowledged
        log = whole_log(again)
        assert [e.index for e in log] == list(range(1, again.last_index() + 1))
        assert all(e.data == b"x" * (e.index % 300) for e in log)
        assert again.load()[0].commit == again.last_index()
    finally:
        again.close()


# -- against the reference, with crashes ----------------------------------------------


def both(on_adapter: Callable[[], None], on_reference: Callable[[], None]) -> None:
    """Do an operation on the adapter, then on the reference unless the
    adapter refused it with an injected failure (then it stored nothing)."""
    try:
        on_adapter()
    except StorageError as exc:
        assert "injected" in str(exc)
    else:
        on_reference()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_crashes_anywhere_agree_with_memory(data: st.DataObject) -> None:
    reference = MemoryStorage()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db"
        limit = data.draw(st.integers(2, 6), label="checkpoint_entries")
        real = open_storage(path, checkpoint_entries=limit)
        try:
            for _ in range(data.draw(st.integers(1, 25), label="steps")):
                if real._job is not None:
                    # Let a background commit finish, so that whether the next
                    # step sees its outcome (and the draws after) is no race.
                    real._job.exception()
                first, last = reference.first_index(), reference.last_index()
                op = data.draw(
                    st.sampled_from(["save"] * 6 + ["big", "compact", "snapshot", "crash", "reopen", "fail"])
                )
                if op in ("save", "big"):
                    start = data.draw(st.integers(first, last + 1), label="start")
                    terms = data.draw(st.lists(st.integers(1, 4), max_size=4), label="terms")
                    size = (300 << 10) if op == "big" else 1
                    entries = [
                        Entry(term=t, index=start + i, kind=EntryKind(t % 3), data=bytes([(start + i) % 256]) * size * t)
                        for i, t in enumerate(terms)
                    ]
                    hard_state = data.draw(
                        st.none() | st.builds(HardState, st.integers(0, 9), st.sampled_from([None, "s1"]), st.integers(0, 9))
                    )
                    both(lambda: real.save(hard_state, entries), lambda: reference.save(hard_state, entries))
                elif op == "compact":
                    index = data.draw(st.integers(max(0, first - 1), last), label="index")
                    meta = snapshot_meta(index, data.draw(st.integers(0, 5)))
                    both(lambda: real.compact(index, meta), lambda: reference.compact(index, meta))
                elif op == "snapshot":
                    meta = snapshot_meta(data.draw(st.integers(0, last + 3)), data.draw(st.integers(0, 5)))
                    both(lambda: real.install_snapshot(meta), lambda: reference.install_snapshot(meta))
                elif op == "fail":
                    fail_background_commits(real)
                    continue
                else:
                    if op == "crash":
                        crash(real)
                    else:
                        try:
                            real.close()
                        except StorageError as exc:
                            assert "injected" in str(exc)
                    real = open_storage(path, checkpoint_entries=limit)
                assert_same(reference, real)
        finally:
            try:
                real.close()
            except StorageError as exc:
                assert "injected" in str(exc)
