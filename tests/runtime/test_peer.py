"""The public Peer API over loopback TCP with in-memory storage."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

import raftlib
from raftlib import errors
from raftlib import Config
from storage_adapters import MemoryStorage

from clusterkit import FAST, Cluster, KVStore, eventually


async def test_readme_example_flow(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    assert await leader.write(["set", "foo", "bar"]) == ["ok", "foo", "bar"]
    assert await leader.read(["get", "foo"]) == ["ok", "bar"]
    assert await leader.read(["get", "nope"]) == ["error", "key_not_found"]
    # Every peer applies the write, in the same order.
    await eventually(lambda: all(p.state_machine.data.get("foo") == "bar" for p in peers.values()))


async def test_results_come_back_as_msgpack_decodes_them(cluster: Cluster) -> None:
    await cluster.start(1)
    leader = await cluster.leader()
    # A tuple value becomes a list, as it would for a caller on another machine.
    assert await leader.write(("set", "t", (1, 2))) == ["ok", "t", [1, 2]]
    assert leader.state_machine.data["t"] == [1, 2]


class TupleKeys(KVStore):
    """Answers every write with a map keyed by tuples."""

    def handle_write(self, command: Any) -> Any:
        super().handle_write(command)
        return {(1, 2): "pair", ("a", (3,)): "nested"}


async def test_maps_with_tuple_keys_round_trip_and_the_leader_keeps_serving(cluster: Cluster) -> None:
    """msgpack turns a tuple key into an array, which decodes to a list: not
    a valid key. Such a result once stopped the leader (the write never
    answered) and such a command broke every change feed at its index. A
    command's tuple keys reach the state machines; a result's cannot reach
    a caller through a follower or a client, so the leader refuses it too."""
    await cluster.start(3, sm=TupleKeys)
    leader = await cluster.leader()
    expected = {(1, 2): "pair", ("a", (3,)): "nested"}
    for command in (["set", "k", {(4, 5): "v"}], ["set", "k2", 1]):
        with pytest.raises(errors.CommandFailed, match="list or tuple.*the write was applied on every peer"):
            await leader.write(command, timeout=10)
    assert leader._fatal is None and leader.is_leader
    for peer in cluster.peers.values():
        await eventually(lambda: peer.state_machine.data.get("k2") == 1)
        assert peer.state_machine.data["k"] == {(4, 5): "v"}
    changes = []
    async for change in leader.listen(0):
        changes.append(change)
        if change.command == ["set", "k2", 1]:
            break
    assert [c.command for c in changes[-2:]] == [["set", "k", {(4, 5): "v"}], ["set", "k2", 1]]
    assert changes[-1].result == expected


class SetResult(KVStore):
    """Applies the write, then answers with a set, which msgpack cannot encode."""

    def handle_write(self, command: Any) -> Any:
        super().handle_write(command)
        return {1, 2}


async def test_an_unencodable_result_raises_command_failed_saying_the_write_applied(cluster: Cluster) -> None:
    """handle_write ran (on every peer) and returned a value msgpack cannot
    encode: every writer gets the same CommandFailed saying the write
    applied, whether it wrote at the leader, through a follower, in a
    session or through raftlib.connect, and the change feed says the
    same. The cluster keeps serving."""
    peers = await cluster.start(3, sm=SetResult)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    await eventually(lambda: follower.leader == leader.name)
    said = "could not be encoded.*the write was applied"
    with pytest.raises(errors.CommandFailed, match=said):
        await leader.write(["set", "k", 1])
    with pytest.raises(errors.CommandFailed, match=said):
        await follower.write(["set", "k2", 2])
    await leader.open_session("c")
    with pytest.raises(errors.CommandFailed, match=said):
        await leader.session_write("c", 1, ["set", "k3", 3])
    with pytest.raises(errors.CommandFailed, match=said):
        await follower.session_write("c", 1, ["set", "k3", 3])  # the same answer, not applied again
    client = await raftlib.connect([follower.address], timeout=10)
    try:
        with pytest.raises(errors.CommandFailed, match=said):
            await client.write(["set", "k4", 4])
    finally:
        await client.close()
    expected = {"k": 1, "k2": 2, "k3": 3, "k4": 4}
    for peer in peers.values():
        await eventually(lambda: peer.state_machine.data == expected)
        assert peer.state_machine.applied.count(["set", "k3", 3]) == 1
    errors_fed = []
    async for change in follower.listen(0):
        errors_fed.append(change.error)
        if change.command == ["set", "k4", 4]:
            break
    assert len(errors_fed) == 4
    assert all(e is not None and "could not be encoded" in e and "the write was applied" in e for e in errors_fed)
    assert leader._fatal is None and await leader.read(["get", "k4"]) == ["ok", 4]


class AsyncSetResult(KVStore):
    async def handle_write(self, command: Any) -> Any:
        super().handle_write(command)
        await asyncio.sleep(0)
        return {1, 2}


async def test_an_unencodable_result_of_an_async_handle_write_raises_command_failed(cluster: Cluster) -> None:
    await cluster.start(1, sm=AsyncSetResult)
    leader = await cluster.leader()
    with pytest.raises(errors.CommandFailed, match="could not be encoded.*the write was applied"):
        await leader.write(["set", "k", 1])
    assert leader.state_machine.data == {"k": 1}


class AwaitsACancelledTask(KVStore):
    """Async handlers that await a task someone else cancelled, which raises
    CancelledError in them although nobody cancelled the handler."""

    async def _cancelled_task(self) -> None:
        task = asyncio.ensure_future(asyncio.sleep(3600))
        task.cancel()
        await task

    async def handle_write(self, command: Any) -> Any:
        if command[0] == "cancelled":
            self.applied.append(command)
            await self._cancelled_task()
        if command[0] == "raise-cancelled":  # raised at once, with no await before it
            self.applied.append(command)
            raise asyncio.CancelledError("gave up")
        return super().handle_write(command)

    async def handle_read(self, query: Any) -> Any:
        if query[0] == "cancelled":
            await self._cancelled_task()
        return super().handle_read(query)


async def test_a_cancelled_error_from_a_handler_fails_that_request_only(cluster: Cluster) -> None:
    """A CancelledError raised by handle_write (not a cancellation of the
    peer) once ended the task applying entries, on every peer: the cluster
    silently applied nothing more and every later write hung. And one from
    handle_read reached a local reader as its own cancellation and left a
    forwarded read without an answer. It is the handler's exception like
    any other: CommandFailed naming it, the write counts as applied, and
    the cluster keeps serving."""
    peers = await cluster.start(3, sm=AwaitsACancelledTask)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    await eventually(lambda: follower.leader == leader.name)
    with pytest.raises(errors.CommandFailed, match="CancelledError"):
        await leader.write(["cancelled", "k"], timeout=10)
    with pytest.raises(errors.CommandFailed, match="CancelledError: gave up"):
        await follower.write(["raise-cancelled", "k"], timeout=10)
    await leader.open_session("c")
    with pytest.raises(errors.CommandFailed, match="CancelledError"):
        await follower.session_write("c", 1, ["cancelled", "k"], timeout=10)
    assert await follower.write(["set", "after", 1], timeout=10) == ["ok", "after", 1]
    for peer in peers.values():
        await eventually(lambda: peer.state_machine.data.get("after") == 1)
        assert [c[0] for c in peer.state_machine.applied] == ["cancelled", "raise-cancelled", "cancelled", "set"]
    for reader in (leader, follower):
        with pytest.raises(errors.CommandFailed, match="handle_read raised CancelledError.*changed nothing"):
            await reader.read(["cancelled", "k"], timeout=10)
        assert await reader.read(["get", "after"], timeout=10) == ["ok", 1]
    assert all(p._fatal is None for p in peers.values())


async def test_unencodable_command_raises_type_error_and_appends_nothing(cluster: Cluster) -> None:
    await cluster.start(3)
    leader = await cluster.leader()
    before = leader.status()["last_index"]
    with pytest.raises(TypeError, match="msgpack"):
        await leader.write(["set", "k", object()])
    with pytest.raises(TypeError, match="query"):
        await leader.read(["get", {1, 2}])
    await asyncio.sleep(0.05)
    assert leader.status()["last_index"] == before


async def test_oversized_command_is_refused(tmp_path: Any) -> None:
    c = Cluster(tmp_path, config=raftlib.Config(tick_interval=0.01, max_command_size=1000))
    try:
        await c.start(1)
        leader = await c.leader()
        with pytest.raises(errors.CommandTooLarge):
            await leader.write(["set", "k", "x" * 2000])
        assert await leader.write(["set", "k", "small"]) == ["ok", "k", "small"]
    finally:
        await c.close()


async def test_follower_forwards_or_raises_not_leader_with_hint(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    await eventually(lambda: follower.leader == leader.name)
    with pytest.raises(errors.NotLeader) as info:
        await follower.write(["set", "a", 1], forward=False)
    assert info.value.leader == leader.name
    assert info.value.leader_address == leader.address
    assert leader.name in str(info.value)
    with pytest.raises(errors.NotLeader):
        await follower.read(["get", "a"], forward=False)
    # By default a follower forwards to the leader and returns its answer.
    assert await follower.write(["set", "a", 1]) == ["ok", "a", 1]
    assert await follower.read(["get", "a"]) == ["ok", 1]
    assert leader.state_machine.data["a"] == 1
    with pytest.raises(errors.CommandFailed, match="ValueError: refused x"):
        await follower.write(["fail", "x"])
    # A forwarded read whose handle_read raises says so, and changed nothing.
    with pytest.raises(errors.CommandFailed, match="handle_read raised ValueError.*changed nothing"):
        await follower.read(["get"])
    assert await follower.read(["get", "a"]) == ["ok", 1]


async def test_leader_stop_elects_a_new_leader_and_keeps_committed_writes(cluster: Cluster) -> None:
    await cluster.start(3)
    old = await cluster.leader()
    for i in range(20):
        await old.write(["set", f"k{i}", i])
    await old.stop()
    new = await cluster.leader()
    assert new is not old
    for i in range(20):
        assert await new.read(["get", f"k{i}"]) == ["ok", i]
    assert await new.write(["set", "after", True]) == ["ok", "after", True]
    with pytest.raises(errors.PeerStopped):
        await old.write(["set", "x", 1])


async def test_wait_for_leader_times_out_without_a_cluster(tmp_path: Any) -> None:
    peer = await raftlib.start_peer(KVStore, name="alone", address="127.0.0.1:0", storage=MemoryStorage(), config=FAST)
    try:
        assert peer.leader is None
        with pytest.raises(errors.Timeout):
            await peer.wait_for_leader(timeout=0.3)
        with pytest.raises(errors.NotLeader) as info:
            await peer.write(["set", "a", 1])
        assert info.value.leader is None
        # Given a timeout, a write that never reached a leader raises a plain
        # Timeout: it certainly did not apply (docs/errors.md).
        with pytest.raises(errors.Timeout) as timed_out:
            await peer.write(["set", "a", 1], timeout=0.3)
        assert not isinstance(timed_out.value, errors.OutcomeUnknown)
        assert peer.status()["last_index"] == 0
    finally:
        await peer.stop()


async def test_waits_for_a_leader_that_give_up_leave_nothing_behind(tmp_path: Any) -> None:
    """A peer that knows no leader keeps nothing for the calls that waited
    for one and gave up: a member cut off for hours, which clients keep
    asking, does not grow with their requests."""
    peer = await raftlib.start_peer(KVStore, name="alone", address="127.0.0.1:0", storage=MemoryStorage(), config=FAST)
    try:
        for _ in range(20):
            with pytest.raises(errors.Timeout):
                await peer.wait_for_leader(timeout=0.01)
            with pytest.raises(errors.Timeout):
                await peer.write(["set", "a", 1], timeout=0.01)
        assert len(peer._state_waiters) == 0
    finally:
        await peer.stop()


async def test_in_flight_write_on_a_stopping_leader_is_outcome_unknown(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    # Cut the followers off so that the write cannot commit, then stop the leader.
    for p in peers.values():
        if p is not leader:
            await p.stop()
    task = asyncio.ensure_future(leader.write(["set", "k", 1]))
    await asyncio.sleep(0.05)
    assert not task.done()
    await leader.stop()
    with pytest.raises(errors.OutcomeUnknown):
        await task


async def test_write_timeout_is_outcome_unknown(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    for p in peers.values():
        if p is not leader:
            await p.stop()
    with pytest.raises(errors.WriteTimeout) as info:
        await leader.write(["set", "k", 1], timeout=0.1)
    assert isinstance(info.value, errors.OutcomeUnknown)


async def test_cancelled_write_does_not_break_the_peer(cluster: Cluster) -> None:
    await cluster.start(3)
    leader = await cluster.leader()
    tasks = [asyncio.ensure_future(leader.write(["set", f"c{i}", i])) for i in range(20)]
    await asyncio.sleep(0)
    for t in tasks[::2]:
        t.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in done[::2])
    assert all(r == ["ok", f"c{i}", i] for i, r in zip(range(1, 20, 2), done[1::2]))
    assert await leader.write(["set", "z", 0]) == ["ok", "z", 0]


def test_a_peer_used_after_its_event_loop_closed_raises_peer_stopped(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A peer started in one ``asyncio.run`` and used in the next one (a
    script or notebook running each step in its own) lost its tasks when the
    first loop closed. A write then failed with asyncio's 'attached to a
    different loop' and left a 'Future exception was never retrieved' behind;
    it is refused as PeerStopped saying why, and stop() still releases it."""

    async def start() -> raftlib.Peer:
        peer = await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", data_dir=tmp_path / "s1",
                                        config=FAST)
        await peer.set_configuration({"s1": peer.address})
        await peer.write(["set", "a", 1])
        await peer.wait_for_leader(timeout=10)
        return peer

    peer = asyncio.run(start())

    async def use() -> None:
        said = "event loop it was started in has closed"
        with pytest.raises(errors.PeerStopped, match=said):
            await peer.write(["set", "a", 1], timeout=5)
        with pytest.raises(errors.PeerStopped, match=said):
            peer.submit(["set", "a", 1])
        with pytest.raises(errors.PeerStopped, match=said):
            await peer.read(["get", "a"], timeout=5)
        with pytest.raises(errors.PeerStopped, match=said):
            await peer.wait_for_leader(timeout=5)
        assert not peer.is_leader
        await peer.stop()
        again = await start()  # its data directory was released
        assert await again.read(["get", "a"]) == ["ok", 1]
        await again.stop()

    asyncio.run(use())
    assert "never retrieved" not in caplog.text


async def test_single_peer_cluster(cluster: Cluster) -> None:
    await cluster.start(1)
    leader = await cluster.leader()
    assert leader.name == "s1"
    assert await leader.write(["set", "a", 1]) == ["ok", "a", 1]
    assert await leader.read(["get", "a"]) == ["ok", 1]


async def test_a_restarted_peer_has_replayed_its_committed_log_when_start_peer_returns(
        lmdb_cluster: Cluster) -> None:
    await lmdb_cluster.start(1)
    leader = await lmdb_cluster.leader()
    for i in range(50):
        await leader.write(["set", f"k{i}", i])
    await lmdb_cluster.stop("s1")
    peer = await lmdb_cluster.start_peer("s1")
    # No leader yet: a stale read answers from this peer's own state at once.
    assert peer.status()["applied_index"] > 50
    assert await peer.read(["get", "k49"], consistency="stale") == ["ok", 49]


async def test_a_second_peer_on_a_data_dir_in_use_is_refused(lmdb_cluster: Cluster, tmp_path: Any) -> None:
    await lmdb_cluster.start(1)
    leader = await lmdb_cluster.leader()
    await leader.write(["set", "a", 1])
    with pytest.raises(errors.StorageError, match="in use"):
        await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", data_dir=str(tmp_path / "s1"))
    assert await leader.write(["set", "b", 2]) == ["ok", "b", 2]
    assert await leader.read(["get", "a"]) == ["ok", 1]


async def test_a_timeout_that_is_not_a_number_is_a_config_error(cluster: Cluster) -> None:
    await cluster.start(1)
    leader = await cluster.leader()
    last = leader.status()["last_index"]
    for bad in ("1", True, [1], float("nan")):  # NaN: a leader ignored it, a follower timed out at once
        for call in (lambda: leader.write(["set", "a", 1], timeout=bad), lambda: leader.read(["get", "a"], timeout=bad),
                     lambda: leader.wait_for_leader(timeout=bad), lambda: leader.add_member("s9", "127.0.0.1:1", timeout=bad),
                     lambda: leader.session_write("c", 1, ["set", "a", 1], timeout=bad),
                     lambda: leader.open_session("c", timeout=bad), lambda: leader.close_session("c", timeout=bad),
                     lambda: raftlib.connect([leader.address], timeout=bad),
                     lambda: raftlib.join(KVStore, name="s9", address="127.0.0.1:0", seeds=[leader.address],
                                          storage=MemoryStorage(), timeout=bad)):
            with pytest.raises(errors.ConfigError, match="timeout must be a number"):
                await call()
    assert leader.status()["last_index"] == last  # nothing was appended
    client = await raftlib.connect([leader.address])
    try:
        with pytest.raises(errors.ConfigError, match="timeout must be a number"):
            await client.write(["set", "a", 1], timeout="1")
        with pytest.raises(errors.ConfigError, match="timeout must be a number"):
            await client.read(["get", "a"], timeout="1")
    finally:
        await client.close()


async def test_start_peer_validates_arguments(tmp_path: Any) -> None:
    with pytest.raises(errors.ConfigError, match="data_dir"):
        await raftlib.start_peer(KVStore, name="x", address="127.0.0.1:0")
    with pytest.raises(errors.ConfigError):
        await raftlib.start_peer(KVStore, name="", address="127.0.0.1:0", storage=MemoryStorage())
    with pytest.raises(errors.ConfigError):
        await raftlib.start_peer(KVStore, name="x", address="nonsense", storage=MemoryStorage())
    with pytest.raises(errors.ConfigError, match="heartbeat_ticks"):
        await raftlib.start_peer(
            KVStore, name="x", address="127.0.0.1:0", storage=MemoryStorage(),
            config=raftlib.Config(heartbeat_ticks=40),
        )
    for bad in (0, -0.001, "1ms", True):
        with pytest.raises(errors.ConfigError, match="max_batch_delay"):
            raftlib.Config(max_batch_delay=bad).validate()  # type: ignore[arg-type]
    assert raftlib.Config(max_batch_delay=0.0005).validate().max_batch_delay == 0.0005
    # NaN passes every comparison and infinity never ticks: a peer with either
    # as its tick_interval never elects a leader, silently.
    for field in ("tick_interval", "max_batch_delay", "session_ttl", "hello_timeout"):
        for bad in (float("nan"), float("inf")):
            with pytest.raises(errors.ConfigError, match=f"Config.{field} must be finite"):
                raftlib.Config(**{field: bad}).validate()
    with pytest.raises(errors.ConfigError, match="StateMachine"):
        await raftlib.start_peer(dict, name="x", address="127.0.0.1:0", storage=MemoryStorage())  # type: ignore[arg-type]


async def test_start_peer_names_a_storage_class_a_config_dict_or_a_bad_data_dir(tmp_path: Any) -> None:
    """Easy slips (``storage=MemoryStorage`` without the call, ``config`` as a
    dict, a ``data_dir`` that is not a path) raise ConfigError saying what to pass."""
    with pytest.raises(errors.ConfigError, match=r"storage=.*MemoryStorage\(\)"):
        await raftlib.start_peer(KVStore, name="x", address="127.0.0.1:0", storage=MemoryStorage)  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigError, match="raftlib.Config"):
        await raftlib.start_peer(KVStore, name="x", address="127.0.0.1:0", storage=MemoryStorage(),
                                 config={"tick_interval": 0.01})  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigError, match="data_dir"):
        await raftlib.start_peer(KVStore, name="x", address="127.0.0.1:0", data_dir=5)  # type: ignore[arg-type]
    # Not StorageError "cannot create the LMDB directory : No such file or directory: ''":
    with pytest.raises(errors.ConfigError, match="data_dir is empty"):
        await raftlib.start_peer(KVStore, name="x", address="127.0.0.1:0", data_dir="")
    with pytest.raises(errors.ConfigError, match="raftlib.Config"):
        await raftlib.join(KVStore, name="x", address="127.0.0.1:0", seeds=["127.0.0.1:1"], storage=MemoryStorage(),
                           config={"tick_interval": 0.01})  # type: ignore[arg-type]


async def test_batches_that_would_not_fit_a_frame_are_refused_at_start(tmp_path: Any) -> None:
    """An AppendEntries carries up to max_bytes_per_message of entries (and
    a little framing), and peers close a connection that sends a frame above
    max_frame_size. A batch limit that does not fit a frame would make the
    leader send the same refused batch forever: nothing after it commits.
    Lowering max_frame_size (as docs/robustness.md suggests for untrusted
    networks) must therefore fail at start, not wedge the cluster later."""
    import dataclasses

    small = dataclasses.replace(FAST, max_frame_size=1 << 20, max_command_size=64 * 1024)
    with pytest.raises(errors.ConfigError, match="max_bytes_per_message"):
        small.validate()
    with pytest.raises(errors.ConfigError, match="max_bytes_per_message"):
        await raftlib.start_peer(KVStore, name="x", address="127.0.0.1:0", storage=MemoryStorage(), config=small)
    fits = dataclasses.replace(small, max_bytes_per_message=512 * 1024)
    cluster = Cluster(tmp_path, config=fits)
    try:
        await cluster.start(3)
        leader = await cluster.leader()
        results = await asyncio.gather(*(leader.write(["set", f"k{i}", "x" * 60_000], timeout=10) for i in range(40)))
        assert all(r[0] == "ok" for r in results)
        await eventually(lambda: all(len(p.state_machine.data) == 40 for p in cluster.live()))
    finally:
        await cluster.close()


def test_a_command_or_snapshot_chunk_that_fills_a_frame_leaves_no_room_for_its_framing() -> None:
    """An entry of max_command_size bytes travels in an AppendEntries, and a
    chunk of snapshot_chunk_size in a SnapshotChunk, each with some framing.
    Just under max_frame_size, the frame exceeded it: followers refused the
    AppendEntries forever and nothing after the command committed."""
    import dataclasses

    base = dataclasses.replace(FAST, max_frame_size=100_000, max_command_size=1000, max_bytes_per_message=50_000,
                               snapshot_chunk_size=50_000)
    base.validate()
    with pytest.raises(errors.ConfigError, match="max_command_size"):
        dataclasses.replace(base, max_command_size=99_999).validate()
    with pytest.raises(errors.ConfigError, match="snapshot_chunk_size"):
        dataclasses.replace(base, snapshot_chunk_size=99_999).validate()


class FailingStorage(MemoryStorage):
    """Memory storage whose saves fail once ``broken`` is set (a dead disk)."""

    broken = False

    def save(self, hard_state: Any, entries: Any, sync: bool = True) -> None:
        if self.broken:
            raise OSError(5, "Input/output error")
        super().save(hard_state, entries, sync)


async def test_storage_failure_stops_the_peer_and_the_cluster_moves_on(tmp_path: Any) -> None:
    c = Cluster(tmp_path)
    try:
        storages = {f"s{i}": FailingStorage() for i in range(1, 4)}
        for name, storage in storages.items():
            c.peers[name] = await raftlib.start_peer(KVStore, name=name, address="127.0.0.1:0", storage=storage, config=FAST)
            c.addresses[name] = c.peers[name].address
        await c.peers["s1"].set_configuration(c.addresses)
        leader = await c.leader()
        await leader.write(["set", "before", 1])
        storages[leader.name].broken = True
        # The entry may already have reached the followers: outcome unknown.
        with pytest.raises(errors.OutcomeUnknown, match="Input/output error"):
            await leader.write(["set", "lost", 1])
        await eventually(lambda: leader._stopped.is_set())
        with pytest.raises(errors.PeerStopped, match="fatal"):
            await leader.write(["set", "x", 1])
        await leader.stop()  # idempotent after a fatal error
        new = await c.leader()
        assert new is not leader
        assert await new.read(["get", "before"]) == ["ok", 1]
    finally:
        await c.close()


class SlowClosingStorage(MemoryStorage):
    """Memory storage whose close() blocks like a large final checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.closed_on: list[str] = []

    def close(self) -> None:
        time.sleep(0.4)
        self.closed_on.append(threading.current_thread().name)
        super().close()


async def test_stop_closes_storage_off_the_event_loop() -> None:
    """Closing storage may take a while (LMDB checkpoints the write-ahead
    files); the application's event loop keeps running meanwhile."""
    storage = SlowClosingStorage()
    peer = await raftlib.start_peer(KVStore, name="solo", address="127.0.0.1:0", storage=storage, config=FAST)
    await peer.set_configuration({"solo": peer.address})
    await peer.write(["set", "a", 1])
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    try:
        await peer.stop()
    finally:
        beat.cancel()
    assert storage.closed_on and storage.closed_on[0] != threading.current_thread().name
    assert len(storage.closed_on) == 1
    assert max(gaps) < 0.3, f"the event loop stalled for {max(gaps):.3f} s while the peer stopped"


async def test_transfer_leadership_to_the_most_up_to_date_follower(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    old = await cluster.leader()
    await old.write(["set", "a", 1])
    term = old.status()["term"]
    new_name = await old.transfer_leadership()
    assert new_name != old.name
    new = peers[new_name]
    await eventually(lambda: new.is_leader)
    assert new.status()["term"] == term + 1
    assert await new.write(["set", "b", 2]) == ["ok", "b", 2]
    assert await new.read(["get", "a"]) == ["ok", 1]
    with pytest.raises(errors.NotLeader):
        await old.transfer_leadership()


async def test_transfer_leadership_to_a_named_peer_and_bad_targets(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    target = next(n for n in peers if n != leader.name)
    assert await leader.transfer_leadership(to=target) == target
    new = peers[target]
    await eventually(lambda: new.is_leader)
    with pytest.raises(errors.ConfigError, match="voting member"):
        await new.transfer_leadership(to=new.name)
    with pytest.raises(errors.ConfigError, match="voting member"):
        await new.transfer_leadership(to="nobody")
    assert new.is_leader


async def test_transfer_that_cannot_complete_times_out_and_the_leader_keeps_serving(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    leader = await cluster.leader()
    target = next(n for n in peers if n != leader.name)
    await peers[target].stop()
    with pytest.raises(errors.Timeout, match=target):
        await leader.transfer_leadership(to=target, timeout=0.3)
    # The transfer is abandoned after an election timeout; writes work again.
    await eventually(lambda: leader._core.transfer_target is None)
    assert await leader.write(["set", "k", 1]) == ["ok", "k", 1]


async def test_a_transfer_that_times_out_early_is_abandoned_at_once(tmp_path: Any) -> None:
    """A ``timeout`` shorter than an election timeout: once Timeout is
    raised the leader takes writes again, instead of refusing them until
    the core gives the transfer up by itself."""
    cluster = Cluster(tmp_path, config=Config(tick_interval=0.01, election_ticks=100, heartbeat_ticks=2))
    try:
        peers = await cluster.start(3)
        leader = await cluster.leader()
        target = next(n for n in peers if n != leader.name)
        await peers[target].stop()
        with pytest.raises(errors.Timeout, match=target):
            await leader.transfer_leadership(to=target, timeout=0.05)
        assert leader._core.transfer_target is None
        assert await leader.write(["set", "k", 1], forward=False) == ["ok", "k", 1]
        assert leader.is_leader
    finally:
        await cluster.close()


async def test_stopping_the_leader_hands_over_leadership_first(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    old = await cluster.leader()
    await old.write(["set", "a", 1])
    await old.stop()
    # No election timeout needed: a successor already leads when stop() returns.
    leaders = [p for p in peers.values() if p is not old and p.is_leader]
    assert len(leaders) == 1
    assert await leaders[0].read(["get", "a"]) == ["ok", 1]


async def test_a_stopping_leader_hands_over_to_a_follower_it_hears_from(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    await cluster.start(3)
    old = await cluster.leader()
    await old.write(["set", "a", 1])
    dead, alive = await cluster.stop_a_follower_the_leader_would_pick(old)
    with caplog.at_level("INFO", logger="raftlib"):
        await old.stop()
    assert f"handed leadership to {alive.name} before stopping" in caplog.text
    assert alive.is_leader  # for now: alone of three, it cannot commit
    assert await alive.read(["get", "a"], consistency="stale") == ["ok", 1]


async def test_transfer_leadership_without_a_target_picks_a_follower_it_hears_from(cluster: Cluster) -> None:
    """With no target, the core picked the most up-to-date voter it counted
    as active, which right after an election may be a follower that stopped
    long before: the transfer then waited out its timeout. It now goes to a
    follower heard from lately, as a stopping leader's does."""
    await cluster.start(3)
    old = await cluster.leader()
    await old.write(["set", "a", 1])
    dead, alive = await cluster.stop_a_follower_the_leader_would_pick(old)
    assert await old.transfer_leadership(timeout=10) == alive.name
    assert alive.is_leader


async def test_peers_on_unix_sockets(tmp_path: Any) -> None:
    addresses = {f"s{i}": f"unix:{tmp_path}/s{i}.sock" for i in range(1, 4)}
    peers = {
        name: await raftlib.start_peer(KVStore, name=name, address=addr, storage=MemoryStorage(), config=FAST)
        for name, addr in addresses.items()
    }
    try:
        assert {p.address for p in peers.values()} == set(addresses.values())
        await peers["s1"].set_configuration(addresses)
        leader = peers[await peers["s1"].wait_for_leader(timeout=10)]
        await eventually(lambda: leader.is_leader)
        assert await leader.write(["set", "via", "unix"]) == ["ok", "via", "unix"]
        await eventually(lambda: all(p.state_machine.data.get("via") == "unix" for p in peers.values()))
    finally:
        for p in peers.values():
            await p.stop(transfer_leadership=False)
    assert not any(tmp_path.glob("*.sock"))


async def test_a_client_denied_a_unix_socket_says_so_at_once(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connecting needs write permission on the socket file, which the
    member's umask may not give other users. Waiting does not change that,
    yet such a client was retried until its timeout and then told only
    ``PermissionError(13, 'Permission denied')``."""
    import errno
    import socket

    path = tmp_path / "s1.sock"
    attempts = 0
    real_open = asyncio.open_unix_connection

    async def open_without_permission(where: Any = None, **kwargs: Any) -> Any:
        nonlocal attempts
        if str(where) == str(path):  # what connect() gives without write permission on the socket
            attempts += 1
            raise PermissionError(errno.EACCES, "Permission denied")
        return await real_open(where, **kwargs)

    monkeypatch.setattr(asyncio, "open_unix_connection", open_without_permission)
    with socket.socket(socket.AF_UNIX) as member:
        member.bind(str(path))
        member.listen()
        with pytest.raises(errors.Unavailable, match=r"cannot connect to unix:.*s1\.sock: no permission: connecting "
                                                     r"to a unix socket takes write permission on its file"):
            await raftlib.connect([f"unix:{path}"], timeout=60)
        assert attempts == 1
        # Nor does a new member keep asking until its join timeout.
        with pytest.raises(errors.Unavailable, match=r"s2 cannot join: no seed lets this process connect.*"
                                                     r"no permission"):
            await raftlib.join(KVStore, name="s2", address=f"unix:{tmp_path}/s2.sock", seeds=[f"unix:{path}"],
                               storage=MemoryStorage(), config=FAST, timeout=60)
        assert attempts == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1.sock"]  # the new member's files are gone


@pytest.mark.parametrize("case, reason", [
    ("missing", "no socket file there: the member is not running, or runs at another path"),
    ("stale", "nothing listens on this socket file: the member that made it has stopped"),
    ("regular file", "this file is not a socket"),
])
async def test_a_client_that_cannot_reach_a_unix_socket_says_why(tmp_path: Any, case: str, reason: str) -> None:
    """Rather than ``FileNotFoundError(2, ...)`` or ``ConnectionRefusedError(111, ...)``."""
    import socket

    path = tmp_path / "s1.sock"
    if case == "stale":
        with socket.socket(socket.AF_UNIX) as crashed:
            crashed.bind(str(path))  # what a member killed with kill -9 leaves
    elif case == "regular file":
        path.write_text("")
    with pytest.raises(errors.Unavailable) as info:
        await raftlib.connect([f"unix:{path}"], timeout=0.2)
    assert f"cannot connect to unix:{path}: {reason}" in str(info.value)


async def test_a_unix_socket_left_by_a_crash_is_reused_but_a_live_one_is_not_taken(tmp_path: Any) -> None:
    import errno
    import socket

    path = tmp_path / "s1.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # bound, never listening, then abandoned: what a crash leaves
    stale.close()
    first = await raftlib.start_peer(KVStore, name="s1", address=f"unix:{path}", storage=MemoryStorage(), config=FAST)
    try:
        await first.set_configuration({"s1": first.address})
        await eventually(lambda: first.is_leader)
        with pytest.raises(errors.AddressInUse) as info:
            await raftlib.start_peer(KVStore, name="s2", address=f"unix:{path}", storage=MemoryStorage(), config=FAST)
        assert info.value.errno == errno.EADDRINUSE and str(path) in str(info.value)
        # The first peer still owns its address: a client reaches it there.
        client = await raftlib.connect([first.address])
        try:
            assert await client.write(["set", "a", 1]) == ["ok", "a", 1]
        finally:
            await client.close()
    finally:
        await first.stop()
    assert list(tmp_path.iterdir()) == []


async def test_a_relative_unix_path_is_made_absolute_for_the_other_members(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each member resolves a unix path in its own working directory: in a
    membership, a relative one reached another file from each member whose
    directory differed (or none), and the cluster never elected."""
    monkeypatch.chdir(tmp_path)
    peer = await raftlib.start_peer(KVStore, name="s1", address="unix:s1.sock", storage=MemoryStorage(), config=FAST)
    try:
        assert peer.address == f"unix:{tmp_path}/s1.sock"  # what the others must be given
        with pytest.raises(errors.ConfigError, match=r"unix:s2\.sock, is a relative path.*absolute path"):
            await peer.set_configuration({"s1": peer.address, "s2": "unix:s2.sock"})
        assert peer.status()["last_index"] == 0  # nothing was written
        await peer.set_configuration({"s1": peer.address})
        await eventually(lambda: peer.is_leader)
        with pytest.raises(errors.ConfigError, match="relative path"):
            await peer.add_member("s2", "unix:s2.sock")
    finally:
        await peer.stop()
    assert list(tmp_path.iterdir()) == []


async def test_a_configuration_giving_two_members_one_address_is_refused(tmp_path: Any) -> None:
    """Only one process can listen at an address: such a cluster could never elect."""
    peer = await raftlib.start_peer(KVStore, name="s1", address=f"unix:{tmp_path}/s1.sock", storage=MemoryStorage(),
                                    config=FAST)
    try:
        with pytest.raises(errors.ConfigError, match=r"s1 and s2 .*s1\.sock"):
            await peer.set_configuration({"s1": peer.address, "s2": peer.address})
        # The same socket file, spelled otherwise.
        with pytest.raises(errors.ConfigError, match=r"s1 and s2 .*s1\.sock"):
            await peer.set_configuration({"s1": peer.address, "s2": f"unix:{tmp_path}//./s1.sock"})
        assert peer.status()["last_index"] == 0  # nothing was written: a corrected call founds the cluster
        await peer.set_configuration({"s1": peer.address})
        await eventually(lambda: peer.is_leader)
    finally:
        await peer.stop()
    assert not any(tmp_path.glob("*.sock"))


async def test_submit_starts_writes_without_waiting_and_reports_like_write(tmp_path: Any) -> None:
    c = Cluster(tmp_path, config=raftlib.Config(tick_interval=0.01, election_ticks=10, heartbeat_ticks=2,
                                                max_pending_writes=50))
    try:
        peers = await c.start(3)
        leader = await c.leader()
        follower = next(p for p in peers.values() if p is not leader)
        await eventually(lambda: follower.leader == leader.name)
        # Many writes in flight from one coroutine, answered in log order with handle_write's results.
        futures = [leader.submit(["set", f"k{i}", i]) for i in range(40)]
        assert all(isinstance(f, asyncio.Future) for f in futures)
        assert await asyncio.gather(*futures) == [["ok", f"k{i}", i] for i in range(40)]
        assert leader.state_machine.data["k39"] == 39
        # handle_write's exception comes through the future; the write counts as applied.
        with pytest.raises(ValueError, match="refused x"):
            await leader.submit(["fail", "x"])
        # Errors found before anything is appended are raised at once.
        before = leader.status()["last_index"]
        with pytest.raises(TypeError, match="msgpack"):
            leader.submit(["set", "k", object()])
        with pytest.raises(errors.NotLeader):
            follower.submit(["set", "k", 1], forward=False)
        with pytest.raises(TypeError, match="msgpack"):
            follower.submit(["set", "k", object()])  # also on a follower, not through the future
        with pytest.raises(errors.CommandTooLarge):
            follower.submit(["set", "k", "x" * (c.config.max_command_size + 1)])
        with pytest.raises(errors.Overloaded):
            [leader.submit(["set", f"o{i}", i]) for i in range(60)]
        await asyncio.sleep(0.2)  # let the ones that were queued settle
        assert leader.status()["last_index"] == before + 50
        # On a follower it is forwarded to the leader.
        assert await follower.submit(["set", "via", "follower"]) == ["ok", "via", "follower"]
        assert leader.state_machine.data["via"] == "follower"
    finally:
        await c.close()


async def test_a_stalled_event_loop_counts_as_at_most_a_heartbeat_interval() -> None:
    """Time this peer could not observe (its loop stalled, by a long garbage
    collection say) must not count against the others: after a stall of many
    election timeouts the core is ticked at most ``heartbeat_ticks`` times,
    not once for every tick missed, so a leader does not step down for lack
    of acknowledgements it has not read yet, and a follower does not campaign."""
    cfg = Config(tick_interval=0.01, election_ticks=10, heartbeat_ticks=2)
    peer = await raftlib.start_peer(KVStore, name="solo", address="127.0.0.1:0", storage=MemoryStorage(), config=cfg)
    try:
        await asyncio.sleep(0.05)
        # A tick that came due before the stall is time the peer did observe:
        # the driver takes it first. (Whether one is pending here depends on
        # how the ticker's timer falls against this coroutine's, which an
        # eager task factory, say, shifts.)
        while peer._ticks:
            await asyncio.sleep(0)
        ticks: list[float] = []
        core_tick = peer._core.tick

        def counted_tick() -> None:
            ticks.append(time.monotonic())
            core_tick()

        peer._core.tick = counted_tick  # type: ignore[method-assign]
        time.sleep(0.5)  # the loop stalls for 50 ticks (five election timeouts)
        stalled_until = time.monotonic()
        await asyncio.sleep(0.05)
        right_after = [t for t in ticks if t - stalled_until < 0.005]
        assert len(right_after) <= cfg.heartbeat_ticks, f"{len(right_after)} ticks right after the stall"
        assert 1 <= len(ticks) <= cfg.heartbeat_ticks + 8  # and then the clock goes on as usual
    finally:
        await peer.stop()


async def test_a_flood_of_dropped_messages_logs_a_few_warnings_not_one_each(cluster: Cluster) -> None:
    """Every message the core or the runtime drops (malformed, or an
    InstallSnapshot for a snapshot never received) was logged as a warning:
    one connection sending them as fast as it could wrote thousands of
    lines a second. Warnings about another peer's input are now held back
    after a few, per kind, for a while; the next one says how many."""
    import logging

    from raftlib.core.messages import AppendEntries, InstallSnapshot
    from raftlib.transport.framing import encode_frame, encode_message

    await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in cluster.live() if p is not leader)
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                records.append(record)

    handler = Collect()
    logging.getLogger("raftlib").addHandler(handler)
    host, port = follower.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(encode_frame("Hello", ["stranger", ""]))
        malformed = encode_message(AppendEntries(1, "stranger", follower.name, 5, 0, (), 0))  # prev index, no term
        unknown = encode_message(InstallSnapshot(1, "stranger", follower.name, 7, 1, leader.membership.encode()))
        for _ in range(300):
            writer.write(malformed + unknown)
        await writer.drain()
        await eventually(lambda: len([r for r in records if "no such snapshot" in r.getMessage()]) >= 1)
        await asyncio.sleep(0.3)  # the rest of the flood arrives
    finally:
        writer.close()
        logging.getLogger("raftlib").removeHandler(handler)
    dropped = [r for r in records if "dropping" in r.getMessage()]
    assert 2 <= len(dropped) <= 2 * 5, [r.getMessage() for r in dropped]  # two kinds, a burst of 5 each
    assert await leader.write(["set", "after", 1], timeout=5) == ["ok", "after", 1]


async def test_a_stopping_leader_skips_a_follower_that_just_stopped(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    """A follower that stopped a moment before was still "heard from within
    an election timeout", so the leader could hand over to it and wait out
    the transfer (two election timeouts, then a warning). A follower whose
    connection to the leader has closed is now passed over."""
    peers = await cluster.start(3)
    old = await cluster.leader()
    dead, alive = sorted((p for p in peers.values() if p is not old), key=lambda p: p.name)
    await old.write(["set", "a", 1])
    await eventually(lambda: all(old._core.progress[p.name].match == old._core.log.last_index() for p in (dead, alive)))
    await dead.stop()
    await eventually(lambda: not old._transport.linked(dead.name))
    with caplog.at_level("INFO", logger="raftlib"):
        await old.stop()
    assert f"handed leadership to {alive.name} before stopping" in caplog.text
    assert "timed out" not in caplog.text


async def test_a_leader_whose_followers_all_stopped_stops_without_trying_a_handover(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    """Stopping a whole cluster in turn leaves its leader last, with every
    follower heard from a moment ago: it used to hand over to one of them
    and wait out the transfer (two election timeouts, then a warning). With
    no follower's connection open it stops at once."""
    peers = await cluster.start(3)
    old = await cluster.leader()
    followers = [p for p in peers.values() if p is not old]
    await old.write(["set", "a", 1])
    for p in followers:
        await p.stop()
    await eventually(lambda: not any(old._transport.linked(p.name) for p in followers))
    tried: list[Any] = []
    transfer = old.transfer_leadership

    async def spy(*args: Any, **kwargs: Any) -> Any:
        tried.append(args)
        return await transfer(*args, **kwargs)

    old.transfer_leadership = spy  # type: ignore[method-assign]
    with caplog.at_level("INFO", logger="raftlib"):
        await old.stop()
    assert tried == []
    assert "stopping without a leadership transfer: no follower is connected" in caplog.text


def _leftovers(name: str) -> list[str]:
    """What of a peer called ``name`` still runs: its tasks and its I/O thread."""
    tasks = [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    threads = [t.name for t in threading.enumerate() if t.name == f"raftlib-io-{name}"]
    return tasks + threads


@pytest.mark.parametrize("again", [True, False], ids=["stop-again", "left-alone"])
@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_a_cancelled_stop_still_releases_everything(tmp_path: Any, kind: str, again: bool) -> None:
    """A stop cut short (``wait_for`` with a short timeout, Ctrl-C during
    shutdown) still closes the listening socket, storage and I/O thread, and
    leaves no task behind: a peer can start on the same address and data
    directory in the same process. A second stop() waits for the first to
    finish its cleanup."""
    address = f"unix:{tmp_path}/p.sock" if kind == "unix" else "127.0.0.1:0"
    data_dir = tmp_path / "data"
    for delay in (0.0005, 0.002, 0.01, 0.05):
        peer = await raftlib.start_peer(KVStore, name="p", address=address, data_dir=data_dir, config=FAST)
        address = peer.address
        await peer.set_configuration({"p": address})
        await peer.write(["set", "k", delay])
        writes = [asyncio.ensure_future(peer.write(["set", "k", i])) for i in range(5)]
        await asyncio.sleep(0)
        try:
            await asyncio.wait_for(peer.stop(), delay)
        except TimeoutError:
            pass
        if again:
            await peer.stop()
        # Every write has its answer (applied, or an error saying whether it may have been).
        await eventually(lambda: all(w.done() for w in writes))
        for w in writes:
            assert w.exception() is None or isinstance(w.exception(), (errors.PeerStopped, errors.LeadershipLost))
        await eventually(lambda: _leftovers("p") == [])
        await peer.stop()  # a no-op by now
    again_peer = await raftlib.start_peer(KVStore, name="p", address=address, data_dir=data_dir, config=FAST)
    try:
        await again_peer.set_configuration({"p": address})
        assert (await again_peer.read(["get", "k"]))[0] == "ok"
    finally:
        await again_peer.stop()
    assert _leftovers("p") == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_a_child_forked_without_exec_does_not_keep_the_peers_locks_or_address(
    tmp_path: Any, kind: str
) -> None:
    """A child forked after start_peer inherits the peer's lock files and
    listening socket. While it lives, the parent must still be able to stop
    the peer and start it again on the same data directory and address; a
    stop() in the child must not touch what the parent owns."""
    address = f"unix:{tmp_path}/p.sock" if kind == "unix" else "127.0.0.1:0"
    data_dir = tmp_path / "data"
    peer = await raftlib.start_peer(KVStore, name="p", address=address, data_dir=data_dir, config=FAST)
    address = peer.address
    await peer.set_configuration({"p": address})
    await peer.write(["set", "before", 1])
    hold_r, hold_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: stop its copy of the peer, then wait until told to exit
        try:
            os.close(hold_w)
            asyncio.run(peer.stop())
            os.write(done_w, b"stopped")
            os.read(hold_r, 1)
        finally:
            os._exit(0)
    os.close(hold_r)
    os.close(done_w)
    try:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, os.read, done_r, 16) == b"stopped"
        await peer.write(["set", "after", 2])  # the child's stop() left the peer alone
        await peer.stop()
        again = await raftlib.start_peer(KVStore, name="p", address=address, data_dir=data_dir, config=FAST)
        try:
            await again.set_configuration({"p": address})
            assert await again.read(["get", "before"]) == ["ok", 1]
            assert await again.read(["get", "after"]) == ["ok", 2]
        finally:
            await again.stop()
    finally:
        os.close(hold_w)
        os.close(done_r)
        os.waitpid(pid, 0)
