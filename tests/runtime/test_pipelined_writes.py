"""Pipelined persistence over real TCP: a peer goes on stepping messages
while its disk is busy, acknowledges nothing before it is on disk, and
writes what queued up meanwhile in one save."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import threading
from typing import Any, Sequence

import pytest

import raftlib
from raftlib.types import Entry, HardState
from storage_adapters import MemoryStorage

from clusterkit import FAST, KVStore, eventually

pytestmark = pytest.mark.asyncio


class GatedDisk(MemoryStorage):
    """Memory storage whose saves run on the runtime's I/O thread and wait
    for ``gate`` while it is closed: a disk the test can make slow."""

    save_blocks = True

    def __init__(self) -> None:
        super().__init__()
        self.path = tempfile.mkdtemp(prefix="raftlib-gated-")
        """Where the peer keeps its snapshots, as beside a real adapter's files."""
        self.gate = threading.Event()
        self.gate.set()
        self.saves: list[list[int]] = []
        """The indexes of the entries each save wrote (non-empty saves only)."""

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], sync: bool = True) -> None:
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the test never reopened the gate")
        super().save(hard_state, entries, sync)
        if entries:
            self.saves.append([e.index for e in entries])


async def start(n: int = 3, config: raftlib.Config = FAST) -> tuple[dict[str, raftlib.Peer], dict[str, GatedDisk]]:
    disks = {f"s{i}": GatedDisk() for i in range(1, n + 1)}
    peers = {}
    try:
        for name, disk in disks.items():
            peers[name] = await raftlib.start_peer(KVStore, name=name, address="127.0.0.1:0", storage=disk,
                                                   config=config)
        await peers["s1"].set_configuration({name: p.address for name, p in peers.items()})
        await eventually(lambda: peers["s1"].is_leader)
        await peers["s1"].write(["set", "warm", 1])
    except BaseException:
        await stop(peers, disks)
        raise
    return peers, disks


async def stop(peers: dict[str, raftlib.Peer], disks: dict[str, GatedDisk]) -> None:
    for d in disks.values():
        d.gate.set()
    for p in peers.values():
        await p.stop(transfer_leadership=False)
    for d in disks.values():
        shutil.rmtree(d.path, ignore_errors=True)


async def test_nothing_is_acknowledged_before_the_followers_disks_have_it() -> None:
    peers, disks = await start()
    leader = peers["s1"]
    try:
        for name in ("s2", "s3"):
            disks[name].gate.clear()
        first = leader.status()["last_index"] + 1
        writes = [asyncio.ensure_future(leader.write(["set", f"k{i}", i])) for i in range(5)]
        await eventually(lambda: leader.status()["last_index"] >= first + 4)
        await asyncio.sleep(0.3)  # many heartbeats: the followers step them while their saves wait
        # The leader has the entries on its own disk, but no follower does: nothing may commit.
        assert not any(w.done() for w in writes)
        assert leader.status()["commit_index"] < first
        for name in ("s2", "s3"):
            assert peers[name].status()["role"] == "follower"  # no election: heartbeats were answered
            assert all(i < first for save in disks[name].saves for i in save)
        disks["s2"].gate.set()  # one follower's disk catches up: a majority has the entries
        results = await asyncio.wait_for(asyncio.gather(*writes), 10)
        assert results == [["ok", f"k{i}", i] for i in range(5)]
        assert all(any(i in save for save in disks["s2"].saves) for i in range(first, first + 5))
        assert leader.status()["commit_index"] >= first + 4
    finally:
        await stop(peers, disks)


async def test_entries_that_queue_up_behind_a_slow_save_go_to_disk_in_one_save() -> None:
    peers, disks = await start()
    leader = peers["s1"]
    try:
        disk = disks["s2"]
        disk.gate.clear()
        first = leader.status()["last_index"] + 1
        # One write at a time: each goes out in its own AppendEntries.
        for i in range(8):
            await leader.write(["set", f"k{i}", i])
        # s3 and the leader committed them; s2 received them all while its
        # first save waited, and writes the rest in one go once it can.
        disk.gate.set()
        await eventually(lambda: peers["s2"].status()["applied_index"] >= first + 7)
        mine = [save for save in disk.saves if save[-1] >= first]
        assert sorted({i for save in mine for i in save} & set(range(first, first + 8))) == list(range(first, first + 8))
        assert len(mine) < 8, mine
        assert max(len(save) for save in mine) > 1
        assert peers["s2"].state_machine.data == peers["s1"].state_machine.data  # type: ignore[attr-defined]
    finally:
        await stop(peers, disks)


@pytest.mark.parametrize("delay, sent_during_the_save", [(0.02, True), (60.0, False)])
async def test_a_write_waits_for_the_leaders_save_at_most_max_batch_delay(
    delay: float, sent_during_the_save: bool
) -> None:
    """Writes arriving while the leader's save is in flight gather behind
    it, for at most ``Config.max_batch_delay``; then they go to the
    followers even though the leader's disk is still busy. Once both
    followers have a write on disk it is committed, and the leader answers
    without waiting for its own disk (thesis §10.2.1)."""
    peers, disks = await start(config=dataclasses.replace(FAST, max_batch_delay=delay))
    leader = peers["s1"]
    try:
        disks["s1"].gate.clear()  # the leader's disk stalls
        first = leader.status()["last_index"] + 1
        a = asyncio.ensure_future(leader.write(["set", "a", 1]))  # no save in flight: out at once
        assert await asyncio.wait_for(a, 10) == ["ok", "a", 1]
        assert all(first in save for name in ("s2", "s3") for save in disks[name].saves[-1:])
        b = asyncio.ensure_future(leader.write(["set", "b", 2]))  # behind the leader's stalled save
        await asyncio.sleep(0.5)
        followers_have_b = [any(first + 1 in save for save in disks[name].saves) for name in ("s2", "s3")]
        assert followers_have_b == [sent_during_the_save] * 2
        assert b.done() == sent_during_the_save
        assert not any(i >= first for save in disks["s1"].saves for i in save)  # the leader's disk has neither
        disks["s1"].gate.set()
        assert await asyncio.wait_for(b, 10) == ["ok", "b", 2]
        await eventually(lambda: any(first + 1 in save for save in disks["s1"].saves))
    finally:
        await stop(peers, disks)


async def test_a_snapshot_past_the_leaders_disk_waits_for_its_save_before_compacting() -> None:
    """A leader applies what its followers committed while its own save is
    still running; a snapshot taken then is recorded in storage, and the log
    compacted, only once that save is done: storage never holds a snapshot
    past the end of its log."""
    peers, disks = await start()
    leader = peers["s1"]
    disk = disks["s1"]
    compactions: list[tuple[int, int]] = []
    compact = disk.compact

    def recording_compact(upto: int, meta: Any = None) -> None:
        compactions.append((meta.index if meta is not None else upto, disk.last_index()))
        compact(upto, meta)

    disk.compact = recording_compact  # type: ignore[method-assign]
    try:
        disk.gate.clear()
        first = leader.status()["last_index"] + 1
        for i in range(3):
            assert await asyncio.wait_for(leader.write(["set", f"k{i}", i]), 10) == ["ok", f"k{i}", i]
        assert disk.last_index() < first
        snapshot = asyncio.ensure_future(leader.snapshot())
        await asyncio.sleep(0.3)
        assert not snapshot.done()
        assert compactions == []
        disk.gate.set()
        meta = await asyncio.wait_for(snapshot, 10)
        assert meta.index >= first + 2
        assert compactions and all(index <= last for index, last in compactions), compactions
        assert disk.load()[1] == meta
        assert await leader.write(["set", "after", 1]) == ["ok", "after", 1]
    finally:
        await stop(peers, disks)


async def test_a_save_that_fails_stops_the_peer_and_the_others_go_on(caplog: Any) -> None:
    peers, disks = await start()
    leader = peers["s1"]
    try:
        def broken(*args: Any, **kwargs: Any) -> None:
            raise OSError("the disk went away")

        disks["s3"].save = broken  # type: ignore[method-assign]
        for i in range(3):
            await leader.write(["set", f"k{i}", i])
        await eventually(lambda: peers["s3"]._fatal is not None)
        with pytest.raises(raftlib.errors.PeerStopped):
            await peers["s3"].write(["set", "x", 1], forward=False)
        assert await leader.write(["set", "after", 1]) == ["ok", "after", 1]
    finally:
        await stop(peers, disks)
