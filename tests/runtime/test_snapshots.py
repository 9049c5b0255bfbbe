"""Snapshots, log compaction and InstallSnapshot streaming through the runtime."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

import raftlib
from raftlib import errors, runtime
from raftlib.core.messages import InstallSnapshot
from raftlib.snapshot import MemorySnapshotStore, SnapshotFile
from raftlib.snapshotting import SnapshotReceiving, SnapshotTransferFailed, send_snapshot
from raftlib.transport.tcp import Transport
from raftlib.types import Membership, SnapshotMeta
from storage_adapters import MemoryStorage

from clusterkit import FAST, Cluster, KVStore, eventually

SNAP = dataclasses.replace(FAST, snapshot_entries=50, snapshot_keep_entries=10, snapshot_chunk_size=1024)


@pytest.fixture
async def snap_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, storage="lmdb", config=SNAP)
    try:
        yield c
    finally:
        await c.close()


async def write_many(peer: raftlib.Peer, n: int, prefix: str = "k") -> None:
    for start in range(0, n, 50):
        await asyncio.gather(*(peer.write(["set", f"{prefix}{i}", i]) for i in range(start, min(n, start + 50))))


async def test_automatic_snapshots_bound_the_log(snap_cluster: Cluster) -> None:
    peers = await snap_cluster.start(3)
    leader = await snap_cluster.leader()
    await write_many(leader, 400)
    # Snapshots are written in the background while applying goes on.
    await eventually(lambda: leader.status()["snapshot_index"] > 300)
    for p in peers.values():
        await eventually(lambda p=p: p.status()["snapshot_index"] > 300)
        storage = p._storage
        held = storage.last_index() - storage.first_index() + 1
        assert held <= SNAP.snapshot_entries + SNAP.snapshot_keep_entries + 60, held
    assert await leader.read(["get", "k0"]) == ["ok", 0]
    assert await leader.read(["get", "k399"]) == ["ok", 399]


async def test_forced_snapshot_returns_its_metadata(snap_cluster: Cluster) -> None:
    await snap_cluster.start(3)
    leader = await snap_cluster.leader()
    await write_many(leader, 20)
    meta = await leader.snapshot()
    assert meta.index == leader.status()["applied_index"]
    assert set(meta.membership.voters) == {"s1", "s2", "s3"}
    assert leader.status()["snapshot_index"] == meta.index
    again = await leader.snapshot()
    assert again == meta


async def test_lagging_follower_catches_up_through_a_streamed_snapshot(snap_cluster: Cluster) -> None:
    peers = await snap_cluster.start(3)
    leader = await snap_cluster.leader()
    lagging = next(n for n in peers if n != leader.name)
    await write_many(leader, 10)
    await snap_cluster.stop(lagging)
    # Large values so the snapshot spans many 1 KiB chunks.
    for start in range(0, 300, 30):
        await asyncio.gather(*(leader.write(["set", f"big{i}", "v" * 200]) for i in range(start, start + 30)))
    assert leader._storage.first_index() > 20  # what the follower needs is compacted away
    back = await snap_cluster.start_peer(lagging)
    await eventually(lambda: back.state_machine.data.get("big299") == "v" * 200, timeout=20)
    # The restore runs in a worker thread: its data shows before the applier records the snapshot.
    await eventually(lambda: back.status()["snapshot_index"] > 0)
    assert back.state_machine.restores == 1
    await leader.write(["set", "after", 1])
    await eventually(lambda: back.state_machine.data.get("after") == 1)
    assert back.state_machine.data == leader.state_machine.data


async def test_restart_recovers_from_snapshot_plus_log_tail(snap_cluster: Cluster) -> None:
    await snap_cluster.start(3)
    leader = await snap_cluster.leader()
    await write_many(leader, 130)
    expected = dict(leader.state_machine.data)
    # Every peer has a snapshot on disk: stopping cancels one still being
    # written (the log keeps everything), and then there is none to restart from.
    await eventually(lambda: all(p.status()["snapshot_index"] >= 50 for p in snap_cluster.peers.values()))
    for name in list(snap_cluster.peers):
        await snap_cluster.stop(name)
    for name in ["s1", "s2", "s3"]:
        p = await snap_cluster.start_peer(name)
        assert p.state_machine.restores == 1  # loaded from the snapshot, then the tail replays
    leader = await snap_cluster.leader()
    await leader.write(["set", "barrier", 1])
    expected["barrier"] = 1
    assert leader.state_machine.data == expected


async def test_the_demo_state_machine_compacts_its_log_and_restarts_from_a_snapshot(snap_cluster: Cluster) -> None:
    """``raftlib demo``'s state machine (the README's, and the benchmarks')
    used to implement no snapshot(), so its log was never compacted."""
    from raftlib.cli import DemoKV

    await snap_cluster.start(3, sm=DemoKV)
    leader = await snap_cluster.leader()
    await write_many(leader, 130)
    expected = dict(leader.state_machine.data)
    await eventually(lambda: all(p.status()["snapshot_index"] >= 50 for p in snap_cluster.peers.values()))
    assert all(p._storage.first_index() > 1 for p in snap_cluster.peers.values())
    for name in list(snap_cluster.peers):
        await snap_cluster.stop(name)
    for name in ["s1", "s2", "s3"]:
        await snap_cluster.start_peer(name, sm=DemoKV)
    leader = await snap_cluster.leader()
    assert await leader.write(["set", "barrier", 1]) == ["ok", "barrier", 1]
    expected["barrier"] = 1
    for p in snap_cluster.peers.values():
        await eventually(lambda p=p: p.state_machine.data == expected)


def test_the_demo_state_machine_refuses_what_is_not_its_snapshot_and_keeps_its_state() -> None:
    from raftlib import codec
    from raftlib.cli import DemoKV

    kv = DemoKV()
    kv.handle_write(["set", "a", [1, 2]])
    copy = DemoKV()
    copy.restore(kv.snapshot())
    assert copy.data == {"a": [1, 2]}
    for junk in (b"\xc1", codec.pack([1, 2])):
        with pytest.raises(ValueError, match="not a DemoKV snapshot"):
            copy.restore(junk)
    assert copy.data == {"a": [1, 2]}


async def test_corrupt_snapshot_is_reported_at_start_naming_the_file(snap_cluster: Cluster) -> None:
    await snap_cluster.start(1)
    leader = await snap_cluster.leader()
    await write_many(leader, 60)
    await leader.snapshot()
    await snap_cluster.stop("s1")
    snaps = sorted((snap_cluster.tmp_path / "s1" / "snapshots").glob("*.snap"))
    assert snaps
    path = snaps[-1]
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(errors.CorruptStorage) as info:
        await snap_cluster.start_peer("s1")
    assert path.name in str(info.value)


async def test_missing_snapshot_file_is_reported(snap_cluster: Cluster) -> None:
    await snap_cluster.start(1)
    leader = await snap_cluster.leader()
    await write_many(leader, 60)
    await leader.snapshot()
    await snap_cluster.stop("s1")
    for f in (snap_cluster.tmp_path / "s1" / "snapshots").glob("*.snap"):
        os.remove(f)
    with pytest.raises(errors.CorruptStorage, match="missing"):
        await snap_cluster.start_peer("s1")


async def test_state_machine_without_snapshot_never_compacts(tmp_path: Path) -> None:
    class NoSnap(raftlib.StateMachine):
        def handle_write(self, command: Any) -> Any:
            return command

    peer = await raftlib.start_peer(NoSnap, name="s1", address="127.0.0.1:0", storage=MemoryStorage(), config=SNAP)
    try:
        await peer.set_configuration({"s1": peer.address})
        await peer.wait_for_leader(timeout=5)
        for i in range(120):
            await peer.write(i)
        assert peer.status()["snapshot_index"] == 0
        assert peer._storage.first_index() == 1
        with pytest.raises(errors.ConfigError, match="snapshot"):
            await peer.snapshot()
    finally:
        await peer.stop()


async def test_a_state_machine_that_snapshots_but_cannot_restore_is_refused_at_start(tmp_path: Path) -> None:
    """It used to run: its log was compacted into snapshots, and the first
    restart, or follower sent a snapshot, then failed on restore(), which
    raised NotImplementedError. A mistake only a later restart would show."""

    class NoRestore(raftlib.StateMachine):
        def handle_write(self, command: Any) -> Any:
            return command

        def snapshot(self) -> bytes:
            return b""

    for storage in ({"storage": MemoryStorage()}, {"data_dir": tmp_path / "s1"}):
        with pytest.raises(errors.ConfigError, match=r"NoRestore implements snapshot\(\) but not restore"):
            await raftlib.start_peer(NoRestore, name="s1", address="127.0.0.1:0", config=SNAP, **storage)
    with pytest.raises(errors.ConfigError, match="not restore"):
        await raftlib.join(NoRestore, name="s1", address="127.0.0.1:0", seeds=["127.0.0.1:1"],
                           storage=MemoryStorage(), config=SNAP)

    class FromFile(NoRestore):
        def restore_from_file(self, file: Any) -> None:
            file.read()

    peer = await raftlib.start_peer(FromFile, name="s1", address="127.0.0.1:0", data_dir=tmp_path / "s1",
                                    config=SNAP)
    await peer.stop()


async def test_a_failing_snapshot_is_retried_after_a_delay_not_after_every_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(raftlib.StateMachine):
        def __init__(self) -> None:
            self.calls = 0
            self.broken = True

        def handle_write(self, command: Any) -> Any:
            return command

        def snapshot(self) -> bytes:
            self.calls += 1
            if self.broken:
                raise RuntimeError("cannot snapshot now")
            return b"state"

        def restore(self, data: bytes) -> None:
            pass

    monkeypatch.setattr(runtime, "SNAPSHOT_RETRY_MIN", 600.0, raising=False)
    peer = await raftlib.start_peer(Flaky, name="s1", address="127.0.0.1:0", storage=MemoryStorage(), config=SNAP)
    try:
        await peer.set_configuration({"s1": peer.address})
        await peer.wait_for_leader(timeout=5)
        sm = peer.state_machine
        assert isinstance(sm, Flaky)
        for i in range(300):  # six times snapshot_entries, one apply batch each
            await peer.write(i)
        assert sm.calls == 1  # the automatic retry waits
        with pytest.raises(RuntimeError, match="cannot snapshot now"):
            await peer.snapshot()  # asked for: tried at once
        assert sm.calls == 2
        tracebacks = [r for r in caplog.records if "taking a snapshot failed" in r.getMessage() and r.exc_info]
        assert len(tracebacks) == 1
        assert "2 in a row" in caplog.text
        sm.broken = False
        meta = await peer.snapshot()
        assert meta.index == peer.status()["applied_index"]
        assert peer._snapshot_failures == 0
        assert await peer.write("after") == "after"
    finally:
        await peer.stop()


class _FailingReads:
    """A store wrapper whose read_chunks stops after ``limit`` chunks."""

    def __init__(self, store: MemorySnapshotStore, limit: int) -> None:
        self.store = store
        self.limit = limit

    async def read_chunks(self, snap: SnapshotFile, offset: int = 0, chunk_size: int = 1024) -> AsyncIterator[bytes]:
        n = 0
        async for chunk in self.store.read_chunks(snap, offset, chunk_size):
            if n == self.limit:
                raise OSError("disk went away")
            n += 1
            yield chunk


@dataclasses.dataclass
class _Transfer:
    """A 20 KiB snapshot on a leader's store, and a follower's transport
    receiving transfers into ``follower_store``."""

    leader_store: MemorySnapshotStore
    snap: SnapshotFile
    msg: InstallSnapshot
    receiving: SnapshotReceiving
    delivered: list[InstallSnapshot]
    kw: dict[str, Any]


@contextlib.asynccontextmanager
async def _transfer(follower_store: MemorySnapshotStore, timeout: float) -> AsyncIterator[_Transfer]:
    leader_store = MemorySnapshotStore()
    meta = SnapshotMeta(40, 3, Membership({"a": "x", "b": "y"}))
    snap = await leader_store.write(meta, os.urandom(20 * 1024))
    delivered: list[InstallSnapshot] = []
    receiving = SnapshotReceiving("b", follower_store, lambda: 3, delivered.append, raftlib.runtime.logger)
    follower = Transport("b", "127.0.0.1:0", on_message=lambda m: None, on_frame=receiving.on_frame)
    await follower.start()
    try:
        kw: dict[str, Any] = dict(own_address="127.0.0.1:1", address=follower.address, chunk_size=1024,
                                  max_frame_size=1 << 20, timeout=timeout)
        msg = InstallSnapshot(3, "a", "b", 40, 3, meta.membership.encode())
        yield _Transfer(leader_store, snap, msg, receiving, delivered, kw)
    finally:
        await receiving.close()
        await follower.close()


async def test_interrupted_transfer_resumes_where_it_stopped() -> None:
    follower_store = MemorySnapshotStore()
    async with _transfer(follower_store, 5.0) as t:
        with pytest.raises(OSError):
            await send_snapshot(t.msg, t.snap, _FailingReads(t.leader_store, 8), **t.kw)  # type: ignore[arg-type]
        await eventually(lambda: t.receiving._active is None)
        assert not t.delivered
        sent = await send_snapshot(t.msg, t.snap, t.leader_store, **t.kw)
        assert 0 < sent <= t.snap.size - 8 * 1024
        assert t.delivered == [t.msg]
        got = follower_store.find(40, 3)
        assert got is not None and got.crc == t.snap.crc and got.size == t.snap.size
        # A stale leader is refused.
        stale = InstallSnapshot(2, "a", "b", 41, 2, t.msg.membership)
        with pytest.raises(SnapshotTransferFailed, match="stale"):
            await send_snapshot(stale, t.snap, t.leader_store, **t.kw)


async def test_lmdb_storage_without_data_dir_keeps_snapshots_on_disk(tmp_path: Path) -> None:
    from storage_adapters import LMDBStorage

    async def start() -> raftlib.Peer:
        storage = LMDBStorage(tmp_path / "db", map_size=16 << 20)
        return await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", storage=storage, config=SNAP)

    peer = await start()
    try:
        await peer.set_configuration({"s1": peer.address})
        await peer.wait_for_leader(timeout=5)
        await write_many(peer, 60)
        await peer.snapshot()
        assert peer._storage.first_index() > 1  # the log was compacted behind the snapshot
    finally:
        await peer.stop()
    assert list((tmp_path / "db" / "snapshots").glob("*.snap"))
    again = await start()
    try:
        assert again.state_machine.data == {f"k{i}": i for i in range(60)}
    finally:
        await again.stop()


async def test_other_disk_storage_without_data_dir_is_refused(tmp_path: Path) -> None:
    class DiskStorage(MemoryStorage):
        save_blocks = True  # as an adapter writing to disk says

    storage = DiskStorage()
    with pytest.raises(errors.ConfigError, match="data_dir"):
        await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", storage=storage, config=SNAP)


async def test_a_follower_keeps_only_the_two_newest_snapshots_it_received(snap_cluster: Cluster) -> None:
    peers = await snap_cluster.start(3)
    leader = await snap_cluster.leader()
    follower = peers[next(n for n in peers if n != leader.name)]
    directory = snap_cluster.tmp_path / follower.name / "snapshots"
    for round in range(1, 5):
        snap_cluster.isolate(follower.name)
        behind = follower.status()["last_index"]
        await write_many(leader, 120, prefix=f"r{round}-")
        # The leader compacts in the background: the follower must need a snapshot when it is back.
        await eventually(lambda: leader._storage.first_index() > behind + 1)
        snap_cluster.heal()
        await eventually(lambda: follower.state_machine.restores == round, timeout=20)
        # Restored before it is installed: the leader learns of it from the acknowledgement that follows.
        installed = follower.status()["snapshot_index"]
        await eventually(lambda: leader._core.progress[follower.name].match >= installed)
        await eventually(lambda: len(list(directory.glob("*.snap"))) <= 2)
    await leader.write(["set", "after", 1])
    await eventually(lambda: follower.state_machine.data.get("after") == 1)
    assert follower.state_machine.data == leader.state_machine.data


async def test_a_file_returned_by_snapshot_is_closed_once_written(tmp_path: Path) -> None:
    opened: list[Any] = []

    class FileSnapshots(KVStore):
        text = False

        def snapshot(self) -> Any:
            path = tmp_path / f"state-{len(opened)}"
            path.write_bytes(raftlib.codec.pack(self.data))
            f = open(path, "r", encoding="latin-1") if self.text else open(path, "rb")
            opened.append(f)
            return f

    sm = FileSnapshots()
    peer = await raftlib.start_peer(sm, name="s1", address="127.0.0.1:0", data_dir=tmp_path / "s1", config=SNAP)
    try:
        await peer.set_configuration({"s1": peer.address})
        await peer.wait_for_leader(timeout=5)
        await write_many(peer, 20)
        await peer.snapshot()
        assert opened and opened[-1].closed
        sm.text = True  # a text file is refused, and closed all the same
        await peer.write(["set", "more", 1])
        with pytest.raises(TypeError, match="bytes"):
            await peer.snapshot()
        assert len(opened) == 2 and opened[-1].closed
    finally:
        await peer.stop()
        for f in opened:
            f.close()


async def test_a_snapshot_the_state_machine_cannot_restore_names_the_file(snap_cluster: Cluster) -> None:
    class OtherFormat(KVStore):
        def restore(self, data: bytes) -> None:
            raise ValueError("not a snapshot of mine")

    await snap_cluster.start(1)
    leader = await snap_cluster.leader()
    await write_many(leader, 60)
    meta = await leader.snapshot()
    await snap_cluster.stop("s1")
    with pytest.raises(errors.StorageError) as info:
        await snap_cluster.start_peer("s1", sm=OtherFormat)
    path = snap_cluster.tmp_path / "s1" / "snapshots" / f"snapshot-{meta.index:020d}-{meta.term:020d}.snap"
    assert str(path) in str(info.value) and "OtherFormat" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    again = await snap_cluster.start_peer("s1")  # the right state machine still starts
    assert again.state_machine.data == {f"k{i}": i for i in range(60)}


async def test_a_snapshot_half_written_at_a_crash_is_deleted_at_start(snap_cluster: Cluster) -> None:
    await snap_cluster.start(1)
    leader = await snap_cluster.leader()
    await write_many(leader, 20)
    await leader.snapshot()
    await snap_cluster.stop("s1")
    directory = snap_cluster.tmp_path / "s1" / "snapshots"
    # What a crash while writing a large snapshot leaves; it may be what
    # filled the disk, so it must not wait for a snapshot to succeed.
    leftover = directory / f"snapshot-{30:020d}-{2:020d}.0123456789ab.tmp"
    leftover.write_bytes(b"\0" * 100_000)
    peer = await snap_cluster.start_peer("s1")
    assert not leftover.exists()
    assert len(list(directory.glob("*.snap"))) == 1
    assert peer.state_machine.data == {f"k{i}": i for i in range(20)}


class _FullDisk(MemorySnapshotStore):
    """A follower's store whose disk is full past ``limit`` bytes of a transfer."""

    limit = 1 << 62

    async def _append_partial(self, key: Any, offset: int, chunk: bytes, first: bool) -> None:
        if offset + len(chunk) > self.limit:
            raise errors.StorageError("cannot write the partial snapshot file: No space left on device")
        await super()._append_partial(key, offset, chunk, first)


async def test_a_follower_out_of_disk_space_tells_the_leader_and_resumes_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    follower_store = _FullDisk()
    async with _transfer(follower_store, 10.0) as t:
        follower_store.limit = t.snap.size - 1  # the last chunk does not fit
        # The leader hears why at once, instead of waiting out its timeout.
        with pytest.raises(SnapshotTransferFailed, match="No space left"):
            await send_snapshot(t.msg, t.snap, t.leader_store, **t.kw)
        assert not t.delivered
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        follower_store.limit = 1 << 62  # space is back
        sent = await send_snapshot(t.msg, t.snap, t.leader_store, **t.kw)
        assert sent == 1024  # only the chunk that did not fit
        assert t.delivered == [t.msg]


async def test_snapshots_received_and_never_installed_do_not_pile_up(tmp_path: Path) -> None:
    """A snapshot the core does not install (older than the log, or offered
    by a connection that is no leader) stayed on disk. Anyone who can reach
    the port could so fill the member's disk with complete snapshot files;
    received files are pruned like the member's own."""
    import zlib

    from raftlib.transport.framing import FrameDecoder, encode_frame

    cluster = Cluster(tmp_path, storage="lmdb")
    try:
        await cluster.start(3)
        leader = await cluster.leader()
        await write_many(leader, 60)
        follower = next(p for p in cluster.live() if p is not leader)
        await eventually(lambda: follower.status()["commit_index"] > 50)
        host, port = follower.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(encode_frame("Hello", ["stranger", ""]))
            term, membership = follower.status()["term"], leader.membership.encode()
            for index in range(2, 42):
                data = b"not a state machine's snapshot %d" % index
                writer.write(encode_frame("SnapshotOffer", [term, "stranger", index, 1, membership, len(data),
                                                            zlib.crc32(data)]))
                writer.write(encode_frame("SnapshotChunk", [0, data]))
            await writer.drain()
            decoder, done = FrameDecoder(1 << 20), 0
            while done < 40:  # each one stored, and answered
                data = await asyncio.wait_for(reader.read(65536), 10)
                assert data, "the member closed the connection"
                done += sum(1 for kind, _ in decoder.feed(data) if kind == "SnapshotDone")
        finally:
            writer.close()
        snapshots = tmp_path / follower.name / "snapshots"
        assert len(list(snapshots.glob("*.snap"))) <= 3
        assert await leader.write(["set", "after", 1]) == ["ok", "after", 1]
        await eventually(lambda: follower.state_machine.data.get("after") == 1)
        assert follower._fatal is None
    finally:
        await cluster.close()


async def _offer_snapshot(address: str, sender: str, term: int, index: int, membership: bytes,
                          data: bytes) -> list[Any]:
    """Offer a snapshot of ``data`` at ``index`` to the member at ``address``,
    as ``sender`` in ``term``, as a leader does; return its SnapshotDone body."""
    import zlib

    from raftlib.transport.framing import FrameDecoder, encode_frame

    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(encode_frame("Hello", [sender, ""]))
        writer.write(encode_frame("SnapshotOffer", [term, sender, index, term, membership, len(data),
                                                    zlib.crc32(data)]))
        writer.write(encode_frame("SnapshotChunk", [0, data]))
        await writer.drain()
        decoder = FrameDecoder(1 << 20)
        while True:
            received = await asyncio.wait_for(reader.read(65536), 10)
            assert received, "the member closed the connection"
            for kind, body in decoder.feed(received):
                if kind == "SnapshotDone":
                    return list(body)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.mark.parametrize("sender", ["stranger", "leader"])
async def test_a_snapshot_the_state_machine_cannot_restore_is_refused(
    snap_cluster: Cluster, caplog: pytest.LogCaptureFixture, sender: str
) -> None:
    """A snapshot past the commit index that the state machine cannot
    restore (offered by a stranger, on a cluster without TLS or a secret,
    under its own name or the leader's) stopped the member, and the log had
    been replaced by it first: on disk too, so a restart could not bring the
    writes back. It is refused now; the log and the state stay."""
    await snap_cluster.start(3)
    leader = await snap_cluster.leader()
    await write_many(leader, 20)
    follower = next(p for p in snap_cluster.live() if p is not leader)
    await eventually(lambda: follower.status()["applied_index"] == leader.status()["applied_index"])
    before = follower.status()
    name = leader.name if sender == "leader" else sender
    offer = (follower.address, name, before["term"], before["commit_index"] + 100, leader.membership.encode(),
             b"not a snapshot of this state machine")
    await _offer_snapshot(*offer)
    await eventually(lambda: any("could not restore" in r.getMessage() for r in caplog.records))
    # Offered again, it is refused at once, and logged no more.
    assert (await _offer_snapshot(*offer))[0] is False
    assert follower._fatal is None
    after = follower.status()
    assert after["last_index"] < before["commit_index"] + 100
    assert after["commit_index"] >= before["commit_index"]
    assert follower.state_machine.data == {f"k{i}": i for i in range(20)}
    assert await leader.write(["set", "after", 1]) == ["ok", "after", 1]
    await eventually(lambda: follower.state_machine.data.get("after") == 1)
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    await snap_cluster.stop(follower.name)  # and what is on disk is whole
    back = await snap_cluster.start_peer(follower.name)
    await eventually(lambda: back.state_machine.data.get("after") == 1)
    assert back.state_machine.data == leader.state_machine.data


async def test_a_member_restoring_a_snapshot_stops_when_asked(tmp_path: Path) -> None:
    """The member restores a snapshot before its core takes it, and its
    driver waits for that: stopping meanwhile must not wait for it forever."""
    import threading

    release = threading.Event()
    restoring = threading.Event()

    class SlowRestore(KVStore):
        def restore(self, data: bytes) -> None:
            restoring.set()
            release.wait(10)
            raise ValueError("not a snapshot of mine")

    cluster = Cluster(tmp_path)
    try:
        await cluster.start(3, sm=SlowRestore)
        leader = await cluster.leader()
        await write_many(leader, 5)
        follower = next(p for p in cluster.live() if p is not leader)
        await eventually(lambda: follower.status()["commit_index"] >= 5)
        st = follower.status()
        offer = asyncio.ensure_future(_offer_snapshot(
            follower.address, "stranger", st["term"], st["commit_index"] + 10, leader.membership.encode(), b"x"))
        await eventually(restoring.is_set)
        # Shielded: Peer.stop() would swallow the cancellation of a timeout.
        await asyncio.wait_for(asyncio.shield(cluster.stop(follower.name)), 10)
        release.set()
        with contextlib.suppress(AssertionError, OSError):
            await offer
    finally:
        release.set()
        await cluster.close()


async def test_an_offer_with_a_malformed_membership_is_a_protocol_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A SnapshotOffer whose membership had learners that are not a map
    raised TypeError, which the member logged as an unexpected error, with
    its traceback, for every such frame anyone sent: it is a malformed
    frame, which closes the connection (a warning, limited per host)."""
    import msgpack

    from raftlib.transport.framing import encode_frame

    cluster = Cluster(tmp_path)
    try:
        await cluster.start(3)
        leader = await cluster.leader()
        host, port = leader.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            membership = msgpack.packb({"voters": {"s1": leader.address}, "learners": ["s9"]})
            writer.write(encode_frame("Hello", ["stranger", ""]))
            writer.write(encode_frame("SnapshotOffer", [leader.status()["term"], "stranger", 50, 1, membership, 1, 0]))
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed
        finally:
            writer.close()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert await leader.write(["set", "after", 1]) == ["ok", "after", 1]
    finally:
        await cluster.close()
