"""raftlib.kv on 3-peer clusters over TCP: the client API through a follower,
CAS races among many clients, watches across a leader change, resuming a
watch, and the store surviving a snapshot and a restart."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

import raftlib
from raftlib import codec, errors
from raftlib.kv import KVClient, KVEvent, KVItem, KVStateMachine, KVWatch, watch_peer

from clusterkit import FAST, Cluster, eventually


async def collect(watch: KVWatch, into: list[KVEvent]) -> None:
    async for event in watch:
        into.append(event)


async def stop_task(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


VALUES: list[Any] = [
    0, -7, 2**64 - 1, 1.5, True, False, "", "text", "ünïcode", b"", b"\x00\xffbytes",
    [], [1, "two", [3.0]], {}, {"nested": {"list": [1, 2], "bytes": b"x"}, "n": None},
]


async def test_the_client_api_through_a_follower(cluster: Cluster) -> None:
    peers = await cluster.start(3, sm=KVStateMachine)
    leader = await cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    async with await KVClient.connect([follower.address], timeout=10) as kv:
        assert await kv.get("missing") is None and await kv.item("missing") is None
        v1 = await kv.put("a", 1)
        v2 = await kv.put("a", 2)
        assert v2 > v1
        assert await kv.get("a") == 2
        assert await kv.item("a") == KVItem(2, v2)
        assert await kv.get("a", consistency="lease") == 2
        # Values of every msgpack type come back as they went in.
        for i, value in enumerate(VALUES):
            await kv.put(f"v/{i:02}", value)
        for i, value in enumerate(VALUES):
            item = await kv.item(f"v/{i:02}")
            assert item is not None and item.value == value and type(item.value) is type(value)
        # A stored None reads as None; item() tells it from a missing key.
        await kv.put("none", None)
        assert await kv.get("none") is None
        assert (await kv.item("none")) is not None
        assert await kv.list(prefix="v/") == [f"v/{i:02}" for i in range(len(VALUES))]
        assert await kv.list() == ["a", "none"] + [f"v/{i:02}" for i in range(len(VALUES))]
        assert await kv.delete("a") is True
        assert await kv.delete("a") is False
        assert await kv.get("a") is None
        assert (await kv.put("a", 3)) > v2  # re-created with a newer version
        # Scopes.
        await kv.create_scope("billing")
        with pytest.raises(errors.ScopeExists):
            await kv.create_scope("billing")
        assert await kv.scopes() == ["billing", "default"]
        await kv.put("a", "in billing", scope="billing")
        assert await kv.get("a", scope="billing") == "in billing"
        assert await kv.get("a") == 3
        revision, items = await kv.items("billing")
        assert items == {"a": KVItem("in billing", revision)} and revision == await kv.revision()
        await kv.delete_scope("billing")
        assert await kv.scopes() == ["default"]
        with pytest.raises(errors.ScopeNotFound):
            await kv.get("a", scope="billing")
        with pytest.raises(errors.ScopeNotFound):
            await kv.put("a", 1, scope="billing")
        with pytest.raises(errors.ScopeNotFound):
            await kv.delete_scope("billing")
        with pytest.raises(errors.KVError, match="cannot be deleted"):
            await kv.delete_scope("default")
        with pytest.raises(errors.KVError, match="non-empty str"):
            await kv.put(1, "x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not both"):
            await kv.cas("a", 3, 4, expected_version=1)
        # The same state on every peer.
        await eventually(lambda: len({p.state_machine.snapshot() for p in peers.values()}) == 1)
    with pytest.raises(errors.PeerStopped):
        await kv.put("after", 1)


async def test_the_deepest_value_the_store_takes_can_be_read_and_watched_through_a_client(cluster: Cluster) -> None:
    """A value within the documented nesting limit (1018 levels) is served by
    every read and by a watch: the answers and the change feed nest it a few
    levels down in frames that msgpack decodes at most 1024 levels deep."""

    def nested(depth: int) -> Any:
        value: Any = 0
        for _ in range(depth):
            value = [value]
        return value

    peers = await cluster.start(1, sm=KVStateMachine)
    peer = next(iter(peers.values()))
    depth = 1018
    while "error" not in (await peer.write(["put", "default", "probe", nested(depth + 1)])):
        depth += 1  # the store takes deeper values than documented: they must work too
    refused = await peer.write(["put", "default", "probe", nested(depth + 1)])
    assert refused["error"] == "bad_request" and f"{depth} levels" in refused["message"], refused
    await peer.write(["delete", "default", "probe"])
    async with await KVClient.connect([peer.address], timeout=10) as kv:
        async with kv.watch() as changes:
            await peer.write(["put", "default", "deep", nested(depth)])
            event = await asyncio.wait_for(anext(changes), 10)
        expected = codec.pack(nested(depth))  # compared encoded: == recurses deeper than Python allows
        assert event.key == "deep" and codec.pack(event.value) == expected
        assert codec.pack(await kv.get("deep")) == expected
        revision, items = await kv.items()
        assert (revision, list(items), items["deep"].version) == (event.version, ["deep"], event.version)
        assert codec.pack(items["deep"].value) == expected


@pytest.mark.parametrize("mode", ["version", "value"])
async def test_cas_races_among_many_clients_have_exactly_one_winner_per_version(cluster: Cluster, mode: str) -> None:
    peers = await cluster.start(3, sm=KVStateMachine)
    addresses = [p.address for p in peers.values()]
    clients = [await KVClient.connect(addresses, timeout=10) for _ in range(10)]
    watch = clients[0].watch("default", "counter")
    events: list[KVEvent] = []
    attempts: list[tuple[int, bool]] = []
    """(the version or value each CAS expected, whether it won)."""

    async def race(kv: KVClient) -> None:
        for _ in range(8):
            item = await kv.item("counter")
            count = item.value if item is not None else 0
            if mode == "version":
                version = item.version if item is not None else 0
                attempts.append((version, await kv.cas("counter", None, count + 1, expected_version=version)))
            else:
                expected = item.value if item is not None else None
                attempts.append((count, await kv.cas("counter", expected, count + 1)))

    try:
        await watch.start()
        consumer = asyncio.ensure_future(collect(watch, events))
        await asyncio.wait_for(asyncio.gather(*(race(kv) for kv in clients)), 30)
        won = [expected for expected, ok in attempts if ok]
        assert len(attempts) == 80 and len(won) < len(attempts)  # the clients did collide
        assert len(won) == len(set(won)), "two CASes won with the same expectation"
        final = await clients[1].item("counter")
        assert final is not None and final.value == len(won)
        # The watch saw every winner, in order: one version after another.
        await eventually(lambda: len(events) >= len(won))
        await asyncio.sleep(0.1)
        assert len(events) == len(won)
        assert [e.value for e in events] == list(range(1, len(won) + 1))
        assert [e.prev_version for e in events[1:]] == [e.version for e in events[:-1]]
        assert events[0].prev_version == 0 and events[-1].version == final.version
        if mode == "version":
            assert sorted(won) == [e.prev_version for e in events]  # exactly one winner per version
        else:
            assert sorted(won) == list(range(len(won)))  # exactly one winner per value
        await stop_task(consumer)
    finally:
        await watch.aclose()
        for kv in clients:
            await kv.close()


async def test_watch_delivers_every_change_in_order_across_a_leader_change(cluster: Cluster) -> None:
    peers = await cluster.start(3, sm=KVStateMachine)
    leader = await cluster.leader()
    others = [p for p in peers.values() if p is not leader]
    # The watcher's feed comes from the leader that is about to stop.
    watcher = await KVClient.connect([leader.address] + [p.address for p in others], timeout=10)
    writer = await KVClient.connect([p.address for p in others], timeout=10)
    seen: list[KVEvent] = []
    seen_in_process: list[KVEvent] = []
    watch = watcher.watch("default")
    local = watch_peer(others[0], "default")  # a peer that stays up
    tasks: list[asyncio.Task[Any]] = []
    try:
        await writer.put("before", "not reported")
        await watch.start()
        await local.start()
        tasks = [asyncio.ensure_future(collect(watch, seen)), asyncio.ensure_future(collect(local, seen_in_process))]
        expected: list[tuple[str, str, Any]] = []
        for i in range(10):
            await writer.put(f"k{i}", i)
            expected.append(("put", f"k{i}", i))
        await writer.create_scope("elsewhere")  # not in the watched scope
        await writer.put("k0", "other scope", scope="elsewhere")
        assert await writer.delete("k0")
        expected.append(("delete", "k0", None))
        assert watcher.client._conn is not None and watcher.client._conn.address == leader.address
        await leader.stop()
        for i in range(10, 20):
            await writer.put(f"k{i}", i)
            expected.append(("put", f"k{i}", i))
        assert await writer.cas("k1", 1, "one")
        expected.append(("put", "k1", "one"))
        assert not await writer.cas("k1", 1, "lost")
        assert await writer.delete("k5")
        expected.append(("delete", "k5", None))

        await eventually(lambda: len(seen) >= len(expected) and len(seen_in_process) >= len(expected))
        await asyncio.sleep(0.2)  # nothing more arrives: no repeats
        for events in (seen, seen_in_process):
            assert [(e.kind, e.key, e.value) for e in events] == expected
            versions = [e.version for e in events]
            assert versions == sorted(set(versions))
        assert seen == seen_in_process
        assert watch.first_revision == seen[0].version
    finally:
        for task in tasks:
            await stop_task(task)
        await watch.aclose()
        await local.aclose()
        await watcher.close()
        await writer.close()


async def test_a_watch_survives_losing_its_member_twice_a_quiet_while_apart(cluster: Cluster) -> None:
    """The feed resumes however often its member goes away, even with no change in between."""
    peers = await cluster.start(5, sm=KVStateMachine)
    addresses = [p.address for p in peers.values()]
    watcher = await KVClient.connect(addresses, timeout=0.5)
    writer = await KVClient.connect(addresses, timeout=10)
    watch = watcher.watch()
    seen: list[KVEvent] = []
    task: asyncio.Task[Any] | None = None
    try:
        await watch.start()
        task = asyncio.ensure_future(collect(watch, seen))
        await writer.put("a", 1)
        await eventually(lambda: len(seen) == 1)
        for _ in range(2):
            conn = await eventually(lambda: watcher.client._conn if watcher.client._conn and not watcher.client._conn.closed else None)
            await next(p for p in peers.values() if p.address == conn.address).stop()
            await asyncio.sleep(0.8)  # no change for longer than the watcher's timeout
        await writer.put("b", 2)
        await eventually(lambda: len(seen) == 2 or task.done(), timeout=5)
        assert not task.done(), task.exception()
        assert [(e.key, e.value) for e in seen] == [("a", 1), ("b", 2)]
    finally:
        if task is not None:
            await stop_task(task)
        await watch.aclose()
        await watcher.close()
        await writer.close()


async def test_a_watch_whose_member_stopped_while_it_was_not_reading_continues_at_another(cluster: Cluster) -> None:
    """As etcd's watch does, a watch whose member stops continues at another
    member, with exactly the events after the last one it delivered: whether
    its feed was not open yet (started, never read) or open with events
    received and not read."""
    peers = await cluster.start(5, sm=KVStateMachine)
    addresses = [p.address for p in peers.values()]
    writer = await KVClient.connect(addresses, timeout=10)
    try:
        for opened in (False, True):
            watcher = await KVClient.connect(addresses, timeout=10)
            watch = watcher.watch("default", f"{opened}/")
            try:
                await watch.start()
                for i in range(4):
                    await writer.put(f"{opened}/{i}", i)
                read = [await anext(watch) for _ in range(2 if opened else 0)]
                conn = watcher.client._conn
                assert conn is not None
                await next(p for p in cluster.live() if p.address == conn.address).stop()
                for i in range(4, 6):
                    await writer.put(f"{opened}/{i}", i)
                read += [await anext(watch) for _ in range(6 - len(read))]
                assert [(e.key, e.value) for e in read] == [(f"{opened}/{i}", i) for i in range(6)]
                await writer.put(f"{opened}/last", "no repeats before it")
                assert (await anext(watch)).key == f"{opened}/last"
            finally:
                await watch.aclose()
                await watcher.close()
    finally:
        await writer.close()


async def test_a_watch_whose_only_member_stopped_gives_up_within_the_client_timeout(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch whose feed was not open yet when its member stopped looked
    for another member for the client's timeout, and only then started the
    clock of the loss: it gave up after twice the timeout. The search for a
    member is one timeout long, and the error names the revision to watch
    from to resume without missing an event."""
    peers = await cluster.start(1, sm=KVStateMachine)
    (peer,) = peers.values()
    kv = await KVClient.connect([peer.address], timeout=1.0)
    watch = kv.watch()
    try:
        await watch.start()
        await kv.put("a", 1)  # committed: the watch must not miss it when resumed
        loop = asyncio.get_running_loop()
        deadlines: list[float] = []
        open_any = kv.client._open_any

        async def recording(within: float, *args: Any) -> Any:
            deadlines.append(loop.time() + within)
            return await open_any(within, *args)

        monkeypatch.setattr(kv.client, "_open_any", recording)
        await peer.stop()
        with pytest.raises(errors.Unavailable) as info:
            await anext(watch)
        assert deadlines and max(deadlines) - min(deadlines) < 0.5  # one timeout's search, not two
        assert str(info.value).endswith(f"watch again with from_revision={watch.first_revision}")
    finally:
        await watch.aclose()
        await kv.close()


async def test_a_watch_resumes_from_a_revision_and_says_when_that_is_too_old(tmp_path: Any) -> None:
    cluster = Cluster(tmp_path, config=dataclasses.replace(FAST, listen_backlog=8))
    kv: KVClient | None = None
    try:
        peers = await cluster.start(3, sm=KVStateMachine)
        kv = await KVClient.connect([p.address for p in peers.values()], timeout=10)
        for i in range(3):
            await kv.put("k", i)
        async with kv.watch(from_revision=1) as watch:
            first = [await anext(watch) for _ in range(3)]
        assert [(e.value, e.version) for e in first] == [(0, 1), (1, 2), (2, 3)]
        # Resume after the second event: the third again, then a new change.
        await kv.put("k", 3)
        async with kv.watch(from_revision=first[1].version + 1) as watch:
            assert [(e.value, e.version) for e in [await anext(watch), await anext(watch)]] == [(2, 3), (3, 4)]
        # Read the state, then follow it from there.
        revision, items = await kv.items()
        async with kv.watch(from_revision=revision + 1) as watch:
            await kv.put("k", 4)
            event = await asyncio.wait_for(anext(watch), 5)
        assert items["k"].value == 3 and (event.value, event.version) == (4, revision + 1)
        # The members keep 8 changes; revision 1 is long gone.
        for i in range(10):
            await kv.put("filler", i)
        with pytest.raises(errors.LogCompacted, match="no longer kept"):
            async with kv.watch(from_revision=1) as watch:
                await asyncio.wait_for(anext(watch), 5)
    finally:
        if kv is not None:
            await kv.close()
        await cluster.close()


async def test_the_store_survives_a_snapshot_and_a_restart(lmdb_cluster: Cluster) -> None:
    cluster = lmdb_cluster
    peers = await cluster.start(1, sm=KVStateMachine)
    s1 = peers["s1"]
    async with await KVClient.connect([s1.address], timeout=10) as kv:
        await kv.create_scope("cfg")
        await kv.put("a", {"x": 1}, scope="cfg")
        await kv.put("b", b"bytes")
        await s1.snapshot()
        await kv.put("c", [1, 2])  # replayed from the log after the snapshot
        before = s1.state_machine.snapshot()
    await s1.stop()
    s1 = await cluster.start_peer("s1", sm=KVStateMachine)
    await cluster.leader()
    assert s1.status()["snapshot_index"] > 0  # restored from the snapshot, then the log replayed
    assert s1.state_machine.snapshot() == before
    async with await KVClient.connect([s1.address], timeout=10) as kv:
        assert await kv.get("a", scope="cfg") == {"x": 1}
        assert await kv.item("c") == KVItem([1, 2], 4)
        assert await kv.put("d", 1) == 5  # the revision carried on


async def test_a_watch_from_before_a_restart_from_a_snapshot_fails_at_once(lmdb_cluster: Cluster) -> None:
    """A member restarted from a snapshot keeps no change from before it. A
    watch from an older revision raises LogCompacted at once, naming the
    oldest revision it can start at (as when the backlog dropped them),
    instead of waiting for the next write; a revision not written yet is
    waited for, and one applied after the snapshot is replayed."""
    cluster = lmdb_cluster
    s1 = (await cluster.start(1, sm=KVStateMachine))["s1"]
    for i in range(5):
        await s1.write(["put", "default", "k", i])  # revisions 1 to 5
    await s1.snapshot()
    await s1.stop()
    s1 = await cluster.start_peer("s1", sm=KVStateMachine)
    await cluster.leader()
    async with await KVClient.connect([s1.address], timeout=10) as kv:
        for watch in (watch_peer(s1, None, from_revision=3), kv.watch(None, from_revision=3)):
            with pytest.raises(errors.LogCompacted, match="3 to 5 .*the oldest revision .* is 6"):
                async with watch:
                    await asyncio.wait_for(anext(watch), 10)
        async with watch_peer(s1, None, from_revision=6) as local, kv.watch(None, from_revision=6) as remote:
            assert await kv.put("k", 5) == 6
            for watch in (local, remote):
                event = await asyncio.wait_for(anext(watch), 10)
                assert (event.value, event.version) == (5, 6)
    await s1.stop()
    s1 = await cluster.start_peer("s1", sm=KVStateMachine)  # revision 6 is replayed from the log
    await cluster.leader()
    async with await KVClient.connect([s1.address], timeout=10) as kv:
        for watch in (watch_peer(s1, None, from_revision=6), kv.watch(None, from_revision=6)):
            async with watch:
                event = await asyncio.wait_for(anext(watch), 10)
                assert (event.value, event.version) == (5, 6)
        for watch in (watch_peer(s1, None, from_revision=5), kv.watch(None, from_revision=5)):
            with pytest.raises(errors.LogCompacted, match="the oldest revision .* is 6"):
                async with watch:
                    await asyncio.wait_for(anext(watch), 10)


def test_raftlib_exports_kv() -> None:
    assert raftlib.kv.KVClient is KVClient and "kv" in raftlib.__all__


async def test_an_answer_larger_than_a_frame_is_refused_at_once_naming_the_limit() -> None:
    """Each value fits a command, but items() of several is more than a
    frame carries: the client gets CommandFailed naming Config.max_frame_size
    (the read changed nothing), not a connection closed on every retry and
    Unavailable once its timeout runs out."""
    from storage_adapters import MemoryStorage

    frame = 1 << 20
    config = dataclasses.replace(FAST, max_frame_size=frame, max_command_size=frame // 2,
                                 max_bytes_per_message=frame // 2, snapshot_chunk_size=frame // 2)
    peer = await raftlib.start_peer(KVStateMachine, name="s1", address="127.0.0.1:0", storage=MemoryStorage(),
                                    config=config)
    try:
        await peer.set_configuration({"s1": peer.address})
        async with await KVClient.connect([peer.address], timeout=10, max_frame_size=frame) as kv:
            for i in range(3):
                await kv.put(f"v{i}", b"x" * (frame // 3))
            with pytest.raises(errors.CommandFailed, match=r"Config\.max_frame_size.*the read changed nothing"):
                await kv.items()
            assert len(await kv.get("v0")) == frame // 3  # the connection still serves
    finally:
        await peer.stop()


async def test_a_watch_on_a_cluster_that_lost_its_majority_gives_up_within_the_client_timeout(
    cluster: Cluster,
) -> None:
    """The member left knows no leader and ends the feed, so that the watch
    goes on at another member. It took that member back each time (the only
    one that answered), counting it as a member that took over, and so never
    raised: the watch stayed silent for good. A member that knows no leader
    takes nothing over; the error names the revision to resume from."""
    peers = await cluster.start(3, sm=KVStateMachine)
    leader = await cluster.leader()
    async with await KVClient.connect([p.address for p in peers.values()], timeout=1.0) as kv:
        async with kv.watch() as watch:
            version = await kv.put("a", 1)
            assert (await anext(watch)).version == version
            await leader.stop()
            await next(p for p in peers.values() if p is not leader).stop()
            with pytest.raises(errors.Unavailable) as info:
                await asyncio.wait_for(anext(watch), 30)  # a guard: it used to wait forever
            assert str(info.value).endswith(f"watch again with from_revision={version + 1}")


async def test_a_client_without_a_session_reads_what_is_left_of_a_cluster_that_lost_its_majority(
    cluster: Cluster,
) -> None:
    """Opening a session is a write, so connect() needs a majority; a client
    that only reads needs none. With session=False it connects to any member
    that answers and opens its session on its first write."""
    peers = await cluster.start(3, sm=KVStateMachine)
    addresses = [p.address for p in peers.values()]
    async with await KVClient.connect(addresses, timeout=10, session=False) as kv:
        assert kv.client.client_id == ""
        version = await kv.put("a", 1)
        assert kv.client.client_id != "" and await kv.item("a") == KVItem(1, version)
    survivor, *others = peers.values()
    for peer in others:
        await peer.stop()
    with pytest.raises(errors.Unavailable, match="session"):
        await KVClient.connect([survivor.address], timeout=0.5)
    async with await KVClient.connect([survivor.address], timeout=0.5, session=False) as kv:
        assert await kv.get("a", consistency="stale") == 1
        assert await kv.list(consistency="stale") == ["a"]
        with pytest.raises(errors.Unavailable):  # no majority to open a session: not applied
            await kv.put("b", 2)
    assert await survivor.read(["get", "default", "b"], consistency="stale") is None


async def test_a_watch_from_a_revision_starts_right_when_its_client_moves_to_a_member_behind(
        cluster: Cluster) -> None:
    """Starting a watch takes several requests (the member's applied index,
    its revision, the feed). The client's member stopped between the first
    two, so the revision came from a member that was behind: the watch took
    it for the first member's, listened from after that member's applied
    index, found the changes it wanted were before it and raised
    LogCompacted, though the member it had landed on keeps them all."""
    peers = await cluster.start(3, sm=KVStateMachine)
    ahead = await cluster.leader()
    behind = min((p for p in peers.values() if p is not ahead), key=lambda p: p.name)
    async with await KVClient.connect([p.address for p in peers.values()], timeout=10) as writer:
        for i in (1, 2):
            await writer.put("k", i)
        await eventually(lambda: behind.state_machine.revision == 2)
        cluster.isolate(behind.name)
        for i in (3, 4, 5):
            await writer.put("k", i)
        # The watcher talks to `ahead` (the leader), then to `behind` once `ahead` is gone.
        async with await KVClient.connect([ahead.address, behind.address], timeout=10) as watcher:
            assert (await watcher.client.status())["name"] == ahead.name
            read = ahead._requests.handlers["read"]

            async def stop_on_read(args: dict[str, Any]) -> Any:
                ahead._requests.handlers["read"] = read
                asyncio.get_running_loop().create_task(ahead.stop())
                raise errors.PeerStopped(f"peer {ahead.name} is stopping")

            ahead._requests.handlers["read"] = stop_on_read
            async with watcher.watch(from_revision=4) as watch:
                assert ahead._stopping
                cluster.heal()
                await writer.put("k", 6)
                events = [await asyncio.wait_for(anext(watch), 10) for _ in range(3)]
            assert [(e.value, e.version) for e in events] == [(4, 4), (5, 5), (6, 6)]
