"""The SnapshotStore contract, checked against both stores.

The tests that take the ``store`` (or ``make_store``) fixture run once per
store; the ones after them are FileSnapshotStore-specific: the file format,
corruption, crash leftovers, reopening and bounded memory.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator, cast

import msgpack
import pytest

from raftlib.errors import CorruptStorage, ProtocolError, StorageError
from raftlib.snapshot import (
    CHUNK_SIZE,
    MAGIC,
    FileSnapshotStore,
    MemorySnapshotStore,
    SnapshotData,
    SnapshotFile,
    SnapshotReceiver,
    SnapshotStore,
    chunk_crc,
)
from raftlib.types import Membership, SnapshotMeta

MEMBERSHIP = Membership(voters={"s1": "127.0.0.1:7001", "s2": "127.0.0.1:7002"}, learners={"s3": "unix:/tmp/s3"})

MakeStore = Callable[..., SnapshotStore]


def meta(index: int, term: int = 1) -> SnapshotMeta:
    """A snapshot descriptor with the test membership."""
    return SnapshotMeta(index=index, term=term, membership=MEMBERSHIP)


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def final_name(index: int, term: int) -> str:
    return f"snapshot-{index:020d}-{term:020d}.snap"


async def read_all(store: SnapshotStore, snap: SnapshotFile, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> bytes:
    return b"".join([chunk async for chunk in store.read_chunks(snap, offset, chunk_size)])


async def send(source: SnapshotStore, snap: SnapshotFile, receiver: SnapshotReceiver, chunk_size: int = 50_000) -> None:
    """Stream ``snap`` from ``source`` into ``receiver`` from its offset on."""
    offset = receiver.offset
    async for chunk in source.read_chunks(snap, offset, chunk_size):
        await receiver.write(offset, chunk)
        offset += len(chunk)


@pytest.fixture(params=["file", "memory"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(kind: str, tmp_path: Path) -> Iterator[MakeStore]:
    """Makes stores of the parametrised kind; ``name`` picks the directory."""
    stores: list[SnapshotStore] = []

    def make(name: str = "snapshots") -> SnapshotStore:
        store: SnapshotStore = FileSnapshotStore(tmp_path / name) if kind == "file" else MemorySnapshotStore()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> SnapshotStore:
    return make_store()


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[FileSnapshotStore]:
    store = FileSnapshotStore(tmp_path / "snapshots")
    yield store
    store.close()


# -- data sources for write() -------------------------------------------------


async def _async_chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        await asyncio.sleep(0)
        yield data[start : start + size]


SOURCES: dict[str, Callable[[bytes], SnapshotData]] = {
    "bytes": lambda data: data,
    "binary-file": lambda data: io.BytesIO(data),
    "iterator-small-chunks": lambda data: iter([data[i : i + 1000] for i in range(0, len(data), 1000)]),
    # bytearray and memoryview chunks are accepted too, though the signature says bytes.
    "list-mixed-buffers": lambda data: cast(
        SnapshotData, [bytearray(data[:10]), memoryview(data)[10:300_000], b"", data[300_000:]]
    ),
    "async-iterator-big-chunks": lambda data: _async_chunks(data, 300_000),
    "async-iterator-tiny-chunks": lambda data: _async_chunks(data, 7777),
}


# -- both stores --------------------------------------------------------------


def test_stores_satisfy_the_protocol(store: SnapshotStore) -> None:
    assert isinstance(store, SnapshotStore)


def test_empty_store_has_no_snapshot(store: SnapshotStore) -> None:
    assert store.latest() is None
    assert store.find(1, 1) is None


@pytest.mark.parametrize("source", list(SOURCES))
async def test_write_from_every_source(store: SnapshotStore, kind: str, source: str) -> None:
    data = payload(700_001)
    snap = await store.write(meta(10, 2), SOURCES[source](data))

    assert snap.meta == meta(10, 2)
    assert (snap.size, snap.crc) == (len(data), zlib.crc32(data))
    if kind == "file":
        assert snap.path is not None and os.path.basename(snap.path) == final_name(10, 2)
    else:
        assert snap.path is None
    assert store.latest() == snap
    assert store.find(10, 2) == snap
    assert await read_all(store, snap) == data
    with store.open(snap) as f:
        assert f.read() == data
    await store.verify(snap)


async def test_write_empty_snapshot(store: SnapshotStore) -> None:
    snap = await store.write(meta(1), b"")
    assert (snap.size, snap.crc) == (0, 0)
    assert await read_all(store, snap) == b""
    await store.verify(snap)


async def test_latest_is_highest_index_then_term(store: SnapshotStore) -> None:
    for index, term in [(5, 2), (7, 1), (7, 3), (6, 9)]:
        await store.write(meta(index, term), f"{index}/{term}".encode())
    latest = store.latest()
    assert latest is not None and (latest.meta.index, latest.meta.term) == (7, 3)
    found = store.find(7, 1)
    assert found is not None and await read_all(store, found) == b"7/1"
    assert store.find(7, 2) is None
    assert store.find(8, 1) is None


async def test_write_replaces_a_snapshot_of_the_same_index_and_term(store: SnapshotStore) -> None:
    await store.write(meta(3), b"first")
    snap = await store.write(meta(3), b"second")
    assert store.latest() == snap
    assert await read_all(store, snap) == b"second"


async def test_read_chunks_from_an_offset(store: SnapshotStore) -> None:
    data = payload(700_000)
    snap = await store.write(meta(1), data)
    chunks = [chunk async for chunk in store.read_chunks(snap, 123_457, 100_000)]
    assert b"".join(chunks) == data[123_457:]
    assert all(len(c) <= 100_000 for c in chunks) and len(chunks[0]) == 100_000
    assert await read_all(store, snap, offset=len(data)) == b""
    assert await read_all(store, snap, offset=len(data) - 1, chunk_size=1) == data[-1:]
    with pytest.raises(ValueError):
        await read_all(store, snap, offset=len(data) + 1)
    with pytest.raises(ValueError):
        await read_all(store, snap, offset=-1)
    with pytest.raises(ValueError):
        await read_all(store, snap, chunk_size=0)


async def test_open_is_positioned_at_the_data(store: SnapshotStore) -> None:
    data = payload(5000)
    snap = await store.write(meta(1), data)
    f = await asyncio.to_thread(store.open, snap)
    try:
        assert await asyncio.to_thread(f.read, 10) == data[:10]
        assert await asyncio.to_thread(f.read) == data[10:]
    finally:
        f.close()


async def test_prune_keeps_the_newest(store: SnapshotStore, kind: str) -> None:
    snaps = [await store.write(meta(index, 1), payload(100, index)) for index in (1, 2, 3, 4, 5)]
    await store.prune(keep=2)
    assert [store.find(s.meta.index, 1) is not None for s in snaps] == [False, False, False, True, True]
    assert store.latest() == snaps[-1]
    with pytest.raises(StorageError):
        await read_all(store, snaps[0])
    if kind == "file":
        assert isinstance(store, FileSnapshotStore)
        assert sorted(os.listdir(store.directory)) == [final_name(4, 1), final_name(5, 1)]
    await store.prune()  # the default keeps 2: nothing more to do
    assert store.find(4, 1) is not None
    await store.prune(keep=1)
    assert store.find(4, 1) is None and store.latest() == snaps[-1]
    with pytest.raises(ValueError):
        await store.prune(keep=-1)
    await store.prune(keep=0)
    assert store.latest() is None


async def test_receiver_full_transfer_gives_an_identical_snapshot(make_store: MakeStore, kind: str) -> None:
    source, target = make_store("leader"), make_store("follower")
    data = payload(1_000_003)
    snap = await source.write(meta(42, 7), data)

    receiver = target.receiver(snap.meta, snap.size, snap.crc)
    assert receiver.offset == 0
    await send(source, snap, receiver)
    assert receiver.offset == snap.size
    received = await receiver.finish()

    assert (received.meta, received.size, received.crc) == (snap.meta, snap.size, snap.crc)
    if kind == "file":
        assert received.path is not None and snap.path is not None
        assert os.path.basename(received.path) == os.path.basename(snap.path)
        assert Path(received.path).read_bytes() == Path(snap.path).read_bytes()
    assert target.latest() == received
    assert await read_all(target, received) == data
    await target.verify(received)


async def test_interrupted_transfer_resumes(make_store: MakeStore) -> None:
    source, target = make_store("leader"), make_store("follower")
    data = payload(600_000)
    snap = await source.write(meta(9, 2), data)

    first = target.receiver(snap.meta, snap.size, snap.crc)
    await first.write(0, data[:250_000])
    await first.write(250_000, data[250_000:260_000])
    await first.abort()
    await first.abort()  # idempotent
    assert target.latest() is None

    second = target.receiver(snap.meta, snap.size, snap.crc)
    assert second.offset == 260_000
    await send(source, snap, second)
    received = await second.finish()
    assert (received.size, received.crc) == (snap.size, snap.crc)
    assert await read_all(target, received) == data


async def test_a_new_receiver_supersedes_a_live_one(make_store: MakeStore) -> None:
    source, target = make_store("leader"), make_store("follower")
    data = payload(300_000)
    snap = await source.write(meta(9, 2), data)

    old = target.receiver(snap.meta, snap.size, snap.crc)
    await old.write(0, data[:100_000])
    new = target.receiver(snap.meta, snap.size, snap.crc)  # the leader retried without the old one aborting
    assert new.offset == 100_000
    with pytest.raises(ProtocolError, match="superseded"):
        await old.write(100_000, data[100_000:200_000])
    await send(source, snap, new)
    assert await read_all(target, await new.finish()) == data
    with pytest.raises(ProtocolError):
        await old.finish()


async def test_receiver_rejects_a_chunk_at_the_wrong_offset(store: SnapshotStore) -> None:
    data = payload(1000)
    receiver = store.receiver(meta(1), len(data), zlib.crc32(data))
    await receiver.write(0, data[:400])
    for wrong in (0, 399, 401, 1000):
        with pytest.raises(ProtocolError, match="400"):
            await receiver.write(wrong, data[wrong:])
    assert receiver.offset == 400
    await receiver.write(400, data[400:])  # still usable
    assert await read_all(store, await receiver.finish()) == data


async def test_receiver_rejects_overflow_and_an_early_finish(store: SnapshotStore) -> None:
    data = payload(1000)
    receiver = store.receiver(meta(1), len(data), zlib.crc32(data))
    with pytest.raises(ProtocolError, match="past the announced size"):
        await receiver.write(0, data + b"x")
    await receiver.write(0, data[:999])
    with pytest.raises(ProtocolError, match="999 of its 1000 bytes"):
        await receiver.finish()
    with pytest.raises(ProtocolError):
        await receiver.write(999, b"xy")
    await receiver.write(999, data[999:])
    await receiver.write(1000, b"")  # an empty chunk at the end is harmless
    await receiver.finish()
    with pytest.raises(ProtocolError, match="finished"):
        await receiver.write(1000, b"")


async def test_bad_crc_fails_finish_and_discards_the_partial(store: SnapshotStore, kind: str) -> None:
    data = payload(200_000)
    wrong_crc = zlib.crc32(data) ^ 1
    receiver = store.receiver(meta(5, 1), len(data), wrong_crc)
    await receiver.write(0, data)
    with pytest.raises(CorruptStorage, match=f"{wrong_crc:#010x}") as info:
        await receiver.finish()
    assert f"{zlib.crc32(data):#010x}" in str(info.value)
    assert store.latest() is None
    assert store.receiver(meta(5, 1), len(data), wrong_crc).offset == 0
    if kind == "file":
        assert isinstance(store, FileSnapshotStore)
        assert os.listdir(store.directory) == []


async def test_receiver_for_another_snapshot_discards_the_old_partial(store: SnapshotStore, kind: str) -> None:
    old_data, new_data = payload(100_000, 1), payload(50_000, 2)
    old = store.receiver(meta(5, 1), len(old_data), zlib.crc32(old_data))
    await old.write(0, old_data[:60_000])
    await old.abort()

    new = store.receiver(meta(8, 2), len(new_data), zlib.crc32(new_data))
    assert new.offset == 0
    await new.write(0, new_data)
    received = await new.finish()
    assert await read_all(store, received) == new_data
    if kind == "file":
        assert isinstance(store, FileSnapshotStore)
        assert os.listdir(store.directory) == [final_name(8, 2)]
    assert store.receiver(meta(5, 1), len(old_data), zlib.crc32(old_data)).offset == 0


async def test_a_different_size_or_crc_is_a_different_transfer(store: SnapshotStore) -> None:
    data = payload(1000)
    first = store.receiver(meta(5, 1), 1000, zlib.crc32(data))
    await first.write(0, data[:500])
    await first.abort()
    assert store.receiver(meta(5, 1), 1000, zlib.crc32(data) ^ 1).offset == 0
    assert store.receiver(meta(5, 1), 1000, zlib.crc32(data)).offset == 0


async def test_empty_transfer(store: SnapshotStore) -> None:
    receiver = store.receiver(meta(3, 3), 0, 0)
    snap = await receiver.finish()
    assert (snap.size, snap.crc) == (0, 0)
    assert store.latest() == snap
    assert await read_all(store, snap) == b""


async def test_receiver_rejects_an_impossible_offer(store: SnapshotStore) -> None:
    for bad_meta, size, crc in [(meta(1), -1, 0), (meta(1), 10, 1 << 32), (meta(-1), 10, 0), (meta(10**20), 10, 0)]:
        with pytest.raises(ProtocolError, match="invalid snapshot offer"):
            store.receiver(bad_meta, size, crc)


async def test_prune_keeps_the_live_and_the_resumable_partial_only(make_store: MakeStore, kind: str) -> None:
    store = make_store()
    data = payload(10_000)
    crc = zlib.crc32(data)
    await store.write(meta(10, 1), b"complete")

    stale = store.receiver(meta(5, 1), len(data), crc)  # older than the complete snapshot
    await stale.write(0, data[:4000])
    await stale.abort()
    await store.prune()
    assert store.receiver(meta(5, 1), len(data), crc).offset == 0  # it was deleted

    resumable = store.receiver(meta(20, 1), len(data), crc)
    await resumable.write(0, data[:4000])
    await store.prune()  # live: kept
    await resumable.write(4000, data[4000:6000])
    await resumable.abort()
    await store.prune()  # newer than every complete snapshot: kept for resumption
    again = store.receiver(meta(20, 1), len(data), crc)
    assert again.offset == 6000
    await again.write(6000, data[6000:])
    await again.finish()
    if kind == "file":
        assert isinstance(store, FileSnapshotStore)
        await store.prune()
        assert sorted(os.listdir(store.directory)) == [final_name(10, 1), final_name(20, 1)]


async def test_write_rejects_what_is_not_bytes(store: SnapshotStore, kind: str) -> None:
    with pytest.raises(TypeError):
        await store.write(meta(1), "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.write(meta(1), [b"ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        await store.write(meta(-1), b"")
    assert store.latest() is None
    if kind == "file":
        assert isinstance(store, FileSnapshotStore)
        assert os.listdir(store.directory) == []


async def test_a_failing_source_leaves_nothing_behind(store: SnapshotStore, kind: str) -> None:
    def broken() -> Iterator[bytes]:
        yield payload(CHUNK_SIZE * 2)
        raise RuntimeError("state machine failed")

    await store.write(meta(1), b"older")
    with pytest.raises(RuntimeError, match="state machine failed"):
        await store.write(meta(2), broken())
    latest = store.latest()
    assert latest is not None and latest.meta.index == 1
    if kind == "file":
        assert isinstance(store, FileSnapshotStore)
        assert os.listdir(store.directory) == [final_name(1, 1)]


async def test_a_cancelled_write_leaves_nothing_behind(store: SnapshotStore, kind: str) -> None:
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield payload(CHUNK_SIZE + 1)
        started.set()
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(store.write(meta(1), stalls()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.latest() is None
    if kind == "file":
        assert isinstance(store, FileSnapshotStore)
        assert os.listdir(store.directory) == []


async def test_a_closed_store_refuses_calls(store: SnapshotStore) -> None:
    snap = await store.write(meta(1), b"data")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        store.latest()
    with pytest.raises(StorageError, match="closed"):
        await store.write(meta(2), b"data")
    with pytest.raises(StorageError, match="closed"):
        await read_all(store, snap)


def test_chunk_crc_folds_to_the_crc_of_the_whole() -> None:
    data = payload(10_000)
    crc = 0
    for start in range(0, len(data), 999):
        crc = chunk_crc(data[start : start + 999], crc)
    assert crc == zlib.crc32(data)


# -- the file store -----------------------------------------------------------


async def test_file_format(file_store: FileSnapshotStore) -> None:
    data = payload(3000)
    snap = await file_store.write(meta(12, 4), data)
    assert snap.path is not None
    raw = Path(snap.path).read_bytes()
    assert raw[:8] == MAGIC == b"RAFTSNP1"
    (length,) = struct.unpack(">I", raw[8:12])
    header = msgpack.unpackb(raw[12 : 12 + length])
    assert header == {
        "index": 12,
        "term": 4,
        "voters": dict(MEMBERSHIP.voters),
        "learners": dict(MEMBERSHIP.learners),
        "size": 3000,
        "crc": zlib.crc32(data),
    }
    assert raw[12 + length :] == data


async def test_a_flipped_byte_fails_verify(file_store: FileSnapshotStore) -> None:
    data = payload(100_000)
    snap = await file_store.write(meta(3, 1), data)
    assert snap.path is not None
    with open(snap.path, "r+b") as f:
        f.seek(-50_000, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(CorruptStorage) as info:
        await file_store.verify(snap)
    message = str(info.value)
    assert snap.path in message
    assert f"expected CRC32 {snap.crc:#010x}" in message
    flipped = bytearray(data)
    flipped[-50_000] ^= 0x10
    assert f"computed {zlib.crc32(flipped):#010x}" in message


async def test_extra_bytes_fail_verify(file_store: FileSnapshotStore) -> None:
    snap = await file_store.write(meta(3, 1), b"data")
    assert snap.path is not None
    with open(snap.path, "ab") as f:
        f.write(b"!")
    with pytest.raises(CorruptStorage, match="5 data bytes"):
        await file_store.verify(snap)


def _break_magic(raw: bytes) -> bytes:
    return b"XXXXXXXX" + raw[8:]


def _break_header(raw: bytes) -> bytes:
    return raw[:12] + b"\xc1" * 20 + raw[32:]  # 0xc1 is never valid msgpack


def _break_length(raw: bytes) -> bytes:
    return raw[:8] + struct.pack(">I", 0xFFFFFFF0) + raw[12:]


def _truncate(raw: bytes) -> bytes:
    return raw[:-1]


def _truncate_header(raw: bytes) -> bytes:
    return raw[:20]


@pytest.mark.parametrize(
    "damage",
    [_break_magic, _break_header, _break_length, _truncate, _truncate_header],
    ids=lambda f: f.__name__.strip("_"),
)
async def test_a_corrupt_newest_snapshot_makes_latest_raise(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    directory = tmp_path / "snapshots"
    store = FileSnapshotStore(directory)
    older = await store.write(meta(1, 1), payload(1000, 1))
    newest = await store.write(meta(2, 1), payload(1000, 2))
    store.close()
    assert newest.path is not None
    path = Path(newest.path)
    path.write_bytes(damage(path.read_bytes()))

    reopened = FileSnapshotStore(directory)  # the scan itself does not raise
    with pytest.raises(CorruptStorage) as info:
        reopened.latest()
    assert newest.path in str(info.value) and "moving the file away" in str(info.value)
    with pytest.raises(CorruptStorage):
        reopened.find(2, 1)
    assert reopened.find(1, 1) == older
    reopened.close()

    path.rename(tmp_path / "quarantined.snap")  # the operator follows the advice
    recovered = FileSnapshotStore(directory)
    assert recovered.latest() == older
    recovered.close()


async def test_a_corrupt_older_snapshot_is_pruned_but_a_newer_one_is_kept(tmp_path: Path) -> None:
    directory = tmp_path / "snapshots"
    store = FileSnapshotStore(directory)
    for index in (1, 2, 3, 4):
        await store.write(meta(index), payload(100, index))
    store.close()
    for index in (1, 4):
        (directory / final_name(index, 1)).write_bytes(b"garbage")
    store = FileSnapshotStore(directory)
    await store.prune(keep=2)
    assert sorted(os.listdir(directory)) == [final_name(2, 1), final_name(3, 1), final_name(4, 1)]
    with pytest.raises(CorruptStorage):
        store.latest()
    store.close()


async def test_a_leftover_temp_file_is_ignored_and_pruned(tmp_path: Path) -> None:
    directory = tmp_path / "snapshots"
    store = FileSnapshotStore(directory)
    snap = await store.write(meta(1), b"good")
    store.close()
    # What a write interrupted by a crash leaves: a newer snapshot, half written.
    leftover = directory / f"snapshot-{2:020d}-{1:020d}.0123456789ab.tmp"
    leftover.write_bytes(MAGIC + b"\x00\x00\x00\x40" + b"half")
    unrelated = directory / "notes.txt"
    unrelated.write_text("not ours")

    store = FileSnapshotStore(directory)
    assert store.latest() == snap
    await store.prune()
    assert not leftover.exists()
    assert unrelated.exists()
    assert store.latest() == snap
    assert await read_all(store, snap) == b"good"
    store.close()


async def test_reopening_sees_the_same_snapshots(tmp_path: Path) -> None:
    directory = tmp_path / "snapshots"
    store = FileSnapshotStore(directory)
    snaps = [await store.write(meta(index, term), payload(5000, index)) for index, term in [(3, 1), (8, 2), (8, 1)]]
    store.close()

    reopened = FileSnapshotStore(directory)
    assert reopened.latest() == snaps[1]
    for snap in snaps:
        assert reopened.find(snap.meta.index, snap.meta.term) == snap
        await reopened.verify(snap)
        assert await read_all(reopened, snap) == payload(5000, snap.meta.index)
    reopened.close()


async def test_a_partial_transfer_resumes_after_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "snapshots"
    data = payload(500_000)
    crc = zlib.crc32(data)
    store = FileSnapshotStore(directory)
    receiver = store.receiver(meta(7, 3), len(data), crc)
    await receiver.write(0, data[:123_456])
    store.close()  # the peer crashed mid-transfer, without abort()
    assert (directory / f"receive-7-3-{len(data)}-{crc}.part").stat().st_size == 123_456

    restarted = FileSnapshotStore(directory)
    assert restarted.latest() is None
    resumed = restarted.receiver(meta(7, 3), len(data), crc)
    assert resumed.offset == 123_456
    await resumed.write(123_456, data[123_456:])
    snap = await resumed.finish()
    assert await read_all(restarted, snap) == data
    assert os.listdir(directory) == [final_name(7, 3)]
    restarted.close()


async def test_a_torn_partial_is_caught_at_finish(tmp_path: Path) -> None:
    directory = tmp_path / "snapshots"
    data = payload(10_000)
    crc = zlib.crc32(data)
    directory.mkdir()
    # A crash tore the partial: its tail is garbage, though its length looks right.
    (directory / f"receive-1-1-{len(data)}-{crc}.part").write_bytes(data[:4000] + b"\x00" * 1000)
    store = FileSnapshotStore(directory)
    receiver = store.receiver(meta(1, 1), len(data), crc)
    assert receiver.offset == 5000
    await receiver.write(5000, data[5000:])
    with pytest.raises(CorruptStorage, match="receive-1-1"):
        await receiver.finish()
    retry = store.receiver(meta(1, 1), len(data), crc)
    assert retry.offset == 0
    await retry.write(0, data)
    assert await read_all(store, await retry.finish()) == data
    store.close()


async def test_a_lost_partial_restarts_the_transfer(file_store: FileSnapshotStore) -> None:
    data = payload(10_000)
    crc = zlib.crc32(data)
    first = file_store.receiver(meta(1, 1), len(data), crc)
    await first.write(0, data[:4000])
    await first.abort()
    os.unlink(os.path.join(file_store.directory, f"receive-1-1-{len(data)}-{crc}.part"))

    resumed = file_store.receiver(meta(1, 1), len(data), crc)
    assert resumed.offset == 4000  # the store has not looked at the disk yet
    with pytest.raises(StorageError, match="start again from the beginning"):
        await resumed.write(4000, data[4000:])
    with pytest.raises(ProtocolError, match="lost its partial data"):
        await resumed.write(4000, data[4000:])
    retry = file_store.receiver(meta(1, 1), len(data), crc)
    assert retry.offset == 0
    await retry.write(0, data)
    assert await read_all(file_store, await retry.finish()) == data


async def test_a_failed_chunk_write_is_cut_back_before_the_next(
    store: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(10_000)
    receiver = store.receiver(meta(1, 1), len(data), zlib.crc32(data))
    await receiver.write(0, data[:4000])
    real_append = type(store)._append_partial  # type: ignore[attr-defined]

    async def append_then_fail(self: object, key: object, offset: int, chunk: bytes, first: bool) -> None:
        await real_append(self, key, offset, chunk[:500], first)  # half a chunk lands, then the disk fails
        raise StorageError("disk full")

    monkeypatch.setattr(type(store), "_append_partial", append_then_fail)
    with pytest.raises(StorageError, match="disk full"):
        await receiver.write(4000, data[4000:6000])
    monkeypatch.undo()
    assert receiver.offset == 4000
    await receiver.write(4000, data[4000:])
    assert await read_all(store, await receiver.finish()) == data


async def test_reading_a_pruned_file_names_it(file_store: FileSnapshotStore) -> None:
    snap = await file_store.write(meta(1), b"data")
    await file_store.write(meta(2), b"data")
    await file_store.prune(keep=1)
    assert snap.path is not None
    with pytest.raises(StorageError, match="no longer exists") as info:
        await file_store.verify(snap)
    assert snap.path in str(info.value)
    with pytest.raises(StorageError, match="no longer exists"):
        file_store.open(snap)


async def test_a_large_snapshot_streams_in_bounded_memory(file_store: FileSnapshotStore) -> None:
    total, piece = 20 << 20, 64 << 10
    crc = 0

    def chunks() -> Iterator[bytes]:
        nonlocal crc
        rng = random.Random(7)
        for _ in range(total // piece):
            chunk = rng.randbytes(piece)
            crc = zlib.crc32(chunk, crc)
            yield chunk

    tracemalloc.start()
    try:
        snap = await file_store.write(meta(1), chunks())
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read_crc = read_size = 0
        async for chunk in file_store.read_chunks(snap):
            read_crc = zlib.crc32(chunk, read_crc)
            read_size += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (snap.size, snap.crc) == (total, crc)
    assert (read_size, read_crc) == (total, crc)
    assert write_peak < 4 << 20, f"writing peaked at {write_peak} bytes"
    assert read_peak < 4 << 20, f"reading peaked at {read_peak} bytes"
    await file_store.verify(snap)
