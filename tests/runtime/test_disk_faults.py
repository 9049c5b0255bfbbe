"""A full disk stops writes cleanly and the cluster recovers when space returns;
corruption on disk is found at start-up, naming the file and the entry."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import raftlib
from raftlib import errors
from storage_adapters import LMDBStorage, MemoryStorage

from clusterkit import FAST, Cluster, KVStore, eventually


class FillableDisk(MemoryStorage):
    """Memory storage that refuses writes (nothing stored) while ``full`` is set."""

    full = False
    refused = 0

    def save(self, hard_state: Any, entries: Any, sync: bool = True) -> None:
        if self.full:
            self.refused += 1
            raise errors.StorageFull("no space left on the test disk")
        super().save(hard_state, entries, sync)


async def start(c: Cluster, disks: dict[str, FillableDisk]) -> None:
    for name, disk in disks.items():
        c.peers[name] = await raftlib.start_peer(KVStore, name=name, address="127.0.0.1:0", storage=disk, config=FAST)
        c.addresses[name] = c.peers[name].address
    await c.peers["s1"].set_configuration(c.addresses)
    await c.leader()


async def test_a_leader_whose_disk_fills_stops_taking_writes_and_the_others_go_on(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    disks = {f"s{i}": FillableDisk() for i in (1, 2, 3)}
    try:
        await start(c, disks)
        old = await c.leader()
        assert await old.write(["set", "before", 1]) == ["ok", "before", 1]
        disks[old.name].full = True
        # The next write needs the disk: it fails (outcome unknown: it may
        # have reached the followers) and the peer refuses new requests.
        with pytest.raises((errors.OutcomeUnknown, errors.StorageFull)):
            await old.write(["set", "during", 1], timeout=5)
        with pytest.raises(errors.StorageFull, match="no space left"):
            await old.write(["set", "refused", 1])
        with pytest.raises(errors.StorageFull):
            await old.read(["get", "before"])
        assert not old.is_leader and old.status()["storage_full"] is True
        new = await eventually(lambda: next((p for p in c.live() if p.is_leader and p is not old), None))
        acked = [i for i in range(20) if await new.write(["set", f"k{i}", i]) == ["ok", f"k{i}", i]]
        assert len(acked) == 20
        assert not old._stopping  # waiting for space, not dead
        disks[old.name].full = False  # space returns
        await eventually(lambda: old.status()["storage_full"] is False)
        await eventually(lambda: all(old.state_machine.data.get(f"k{i}") == i for i in acked))
        assert old.state_machine.data["before"] == 1
        assert disks[old.name].refused > 0
        logs = [[(e.index, e.term) for e in d.entries(d.first_index(), d.last_index() + 1)] for d in disks.values()]
        shortest = min(len(log) for log in logs)
        assert logs[0][:shortest] == logs[1][:shortest] == logs[2][:shortest]
    finally:
        await c.close()


async def test_a_client_finds_the_new_leader_while_the_old_ones_disk_is_full(tmp_path: Path) -> None:
    """The old leader refuses requests with StorageFull and the others elect
    a leader; a client that tries the full member first must move on to
    that leader, not retry the full one until its timeout."""
    c = Cluster(tmp_path)
    disks = {f"s{i}": FillableDisk() for i in (1, 2, 3)}
    try:
        await start(c, disks)
        old = await c.leader()
        disks[old.name].full = True
        with pytest.raises((errors.OutcomeUnknown, errors.StorageFull)):
            await old.write(["set", "during", 1], timeout=5)
        new = await eventually(lambda: next((p for p in c.live() if p.is_leader and p is not old), None))
        others = [p.address for p in c.live() if p is not old]
        client = await raftlib.connect([old.address, *others], timeout=10)
        try:
            assert await client.write(["set", "via-client", 1]) == ["ok", "via-client", 1]
            assert client.leader_address == new.address
        finally:
            await client.close()
        assert old.status()["leader"] != old.name  # it does not claim to lead while it cannot
    finally:
        await c.close()


async def test_every_disk_full_stops_writes_and_the_cluster_recovers(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    disks = {f"s{i}": FillableDisk() for i in (1, 2, 3)}
    try:
        await start(c, disks)
        leader = await c.leader()
        assert await leader.write(["set", "a", 1]) == ["ok", "a", 1]
        for disk in disks.values():
            disk.full = True
        with pytest.raises((errors.OutcomeUnknown, errors.StorageFull, errors.NotLeader)):
            await leader.write(["set", "b", 2], timeout=2)
        await asyncio.sleep(0.5)
        with pytest.raises((errors.StorageFull, errors.NotLeader, errors.Timeout)):
            await leader.write(["set", "c", 3], timeout=1)
        for disk in disks.values():
            disk.full = False
        new = await c.leader(timeout=15)
        assert await new.write(["set", "d", 4]) == ["ok", "d", 4]
        assert await new.read(["get", "a"]) == ["ok", 1]
        assert all(not p._stopping for p in c.peers.values())
    finally:
        await c.close()


async def test_lmdb_map_full_is_storage_full_and_stores_nothing(tmp_path: Path) -> None:
    from raftlib.types import Entry

    storage = LMDBStorage(tmp_path / "db", map_size=1 << 20)
    try:
        storage.save(None, [Entry(1, 1, data=b"x")])
        with pytest.raises(errors.StorageFull, match="map_size"):
            storage.save(None, [Entry(1, i, data=b"y" * 4096) for i in range(2, 600)])
        assert storage.last_index() == 1
        assert storage.entries(1, 2) == [Entry(1, 1, data=b"x")]
        storage.save(None, [Entry(1, 2, data=b"z")])  # a small write still fits
        assert storage.last_index() == 2
    finally:
        storage.close()


_SHORT_WRITE_SCRIPT = """
import os, resource, signal, sys
from storage_adapters import LMDBStorage
from raftlib import errors
from raftlib.types import Entry

path, device_full = sys.argv[1], sys.argv[2] == "full"
if device_full:
    real_statvfs = os.statvfs

    def statvfs(p):
        st = real_statvfs(p)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0, st.f_files, st.f_ffree,
                                  st.f_favail, st.f_flag, st.f_namemax))

    os.statvfs = statvfs
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-long write then fails instead of killing
storage = LMDBStorage(path, wal=False)
storage.save(None, [Entry(1, i, data=b"x" * 100) for i in range(1, 10)])
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
# The file may grow by a little only: LMDB's next commit gets a short write,
# as on a file system with a few blocks left, and LMDB reports it as EIO.
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(os.path.join(path, "data.mdb")) + 6000, hard))
big = [Entry(1, i, data=b"y" * 3000) for i in range(10, 200)]
try:
    storage.save(None, big)
except errors.StorageError as exc:
    print(type(exc).__name__)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space returns
storage.save(None, big)
storage.close()
again = LMDBStorage(path, wal=False)
assert again.last_index() == 199 and again.entries(150, 151)[0].data == b"y" * 3000
again.close()
"""


@pytest.mark.skipif(not hasattr(os, "statvfs") or sys.platform != "linux", reason="RLIMIT_FSIZE short writes on Linux")
@pytest.mark.parametrize("device, expected", [("full", "StorageFull"), ("roomy", "StorageError")])
def test_an_lmdb_write_cut_short_on_a_full_disk_is_storage_full(tmp_path: Path, device: str, expected: str) -> None:
    """A file system with a few blocks left cuts LMDB's write short, and LMDB
    reports that as an I/O error (EIO), not ENOSPC. On a full device that is
    StorageFull (nothing was committed; the peer waits for space), not a
    fatal StorageError; with room left, an I/O error stays fatal."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _SHORT_WRITE_SCRIPT, str(tmp_path / "db"), device],
                          cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [expected]


async def test_a_flipped_byte_in_the_lmdb_log_stops_the_peer_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "s1"
    peer = await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", data_dir=data_dir, config=FAST)
    try:
        await peer.set_configuration({"s1": peer.address})
        await peer.wait_for_leader(timeout=5)
        for i in range(5):
            await peer.write(["set", f"k{i}", "MARKER-%d" % i])
    finally:
        await peer.stop()
    mdb = data_dir / "data.mdb"
    raw = mdb.read_bytes()
    assert b"MARKER-3" in raw
    # LMDB keeps older copies of pages too: flip the byte in every copy.
    mdb.write_bytes(raw.replace(b"MARKER-3", b"MARKER\xff3"))
    with pytest.raises(errors.CorruptStorage) as info:
        again = await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", data_dir=data_dir, config=FAST)
        await again.stop()
    text = str(info.value)
    assert str(data_dir) in text and "log entry" in text and "checksum" in text
    assert "wipe its data directory" in text


async def test_a_flipped_byte_in_the_stored_vote_stops_the_peer_at_start(tmp_path: Path) -> None:
    """The hard state holds the vote: read back changed, this member could
    vote twice in one term. It is checksummed like the log entries."""
    data_dir = tmp_path / "s1"
    peer = await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", data_dir=data_dir, config=FAST)
    try:
        await peer.set_configuration({"s1": peer.address})
        await peer.wait_for_leader(timeout=5)
        await peer.write(["set", "a", 1])
    finally:
        await peer.stop()
    mdb = data_dir / "data.mdb"
    raw = bytearray(mdb.read_bytes())
    flipped = 0
    at = raw.find(b"hard_state")
    while at >= 0:  # LMDB may keep older copies of the page: change each
        vote = raw.find(b"\xa2s1", at, at + 40)  # msgpack of the vote "s1"
        if vote > 0:
            raw[vote + 2] = ord("9")
            flipped += 1
        at = raw.find(b"hard_state", at + 1)
    assert flipped
    mdb.write_bytes(bytes(raw))
    with pytest.raises(errors.CorruptStorage) as info:
        again = await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", data_dir=data_dir, config=FAST)
        await again.stop()
    text = str(info.value)
    assert str(data_dir) in text and "hard_state" in text and "checksum" in text


def test_meta_records_written_without_a_checksum_are_still_read(tmp_path: Path) -> None:
    import lmdb
    import msgpack

    from raftlib.types import Entry, HardState

    storage = LMDBStorage(tmp_path / "db", wal=False)
    storage.save(HardState(term=3, vote="s2", commit=1), [Entry(3, 1, data=b"x")])
    storage.close()
    env = lmdb.open(str(tmp_path / "db"), max_dbs=4)
    with env.begin(write=True) as txn:  # as an earlier release stored it
        txn.put(b"hard_state", msgpack.packb([3, "s2", 1]), db=env.open_db(b"meta", txn=txn))
    env.close()
    again = LMDBStorage(tmp_path / "db", wal=False)
    try:
        assert again.load()[0] == HardState(term=3, vote="s2", commit=1)
    finally:
        again.close()
