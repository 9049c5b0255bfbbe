"""Requests a follower forwarded to a leader that hangs (a stopped process,
a frozen machine: its connections stay open, nothing answers) end once the
others have elected a new leader, instead of waiting on the old one forever;
a client's change feed leaves a hung member too."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any, AsyncIterator

import pytest

import raftlib
from raftlib import errors

from clusterkit import Cluster, KVStore, eventually

BOUND = 20.0
"""Far more than an election takes: reaching it means the request was stuck."""


async def hang_leader(cluster: Cluster) -> tuple[raftlib.Peer, raftlib.Peer]:
    """Start three peers, open session "c1" and hang the leader; return it
    and a follower that still names it as leader."""
    peers = await cluster.start(3)
    old = await cluster.leader()
    await old.open_session("c1")
    follower = next(p for p in peers.values() if p is not old)
    await eventually(lambda: follower.leader == old.name)
    cluster.hang(old.name)
    return old, follower


async def test_plain_write_forwarded_to_a_hung_leader_ends_outcome_unknown(cluster: Cluster) -> None:
    old, follower = await hang_leader(cluster)
    write = asyncio.ensure_future(follower.write(["set", "a", 1]))  # no timeout: it used to wait forever
    with pytest.raises(errors.OutcomeUnknown):
        # The hung leader may have appended it: it must not be reported as not applied.
        await asyncio.wait_for(write, BOUND)
    new = await cluster.leader()
    assert new is not old
    # The follower still works: a write now goes to the new leader.
    assert await asyncio.wait_for(follower.write(["set", "b", 2]), BOUND) == ["ok", "b", 2]


async def test_session_write_forwarded_to_a_hung_leader_is_retried_at_the_new_leader(cluster: Cluster) -> None:
    old, follower = await hang_leader(cluster)
    result = await asyncio.wait_for(follower.session_write("c1", 1, ["set", "a", 1]), BOUND)
    assert result == ["ok", "a", 1]
    new = await cluster.leader()
    assert new is not old
    sm = new.state_machine
    assert isinstance(sm, KVStore)
    await eventually(lambda: sm.applied.count(["set", "a", 1]) == 1)


async def test_linearizable_read_forwarded_to_a_hung_leader_is_answered_by_the_new_leader(cluster: Cluster) -> None:
    peers = await cluster.start(3)
    old = await cluster.leader()
    await old.write(["set", "k", "v"])
    follower = next(p for p in peers.values() if p is not old)
    await eventually(lambda: follower.leader == old.name)
    cluster.hang(old.name)
    # Several at once: they share the pooled connection to the hung leader.
    reads = [follower.read(["get", "k"], consistency=c) for c in ("linearizable", "lease") for _ in range(3)]
    answers = await asyncio.wait_for(asyncio.gather(*reads), BOUND)
    assert answers == [["ok", "v"]] * 6
    assert follower.leader != old.name


async def test_a_client_talking_to_a_hung_leader_moves_to_the_new_one(cluster: Cluster) -> None:
    """A raftlib.connect client sent each attempt to the member it was
    connected to and waited for the whole call's timeout (30 s by default):
    with the leader hung, it never tried the new one. An attempt now waits at
    most attempt_timeout (5 s by default); the session makes the retry
    elsewhere safe, so the write is applied once."""
    peers = await cluster.start(3)
    old = await cluster.leader()
    others = [p for p in peers.values() if p is not old]
    client = await raftlib.connect([old.address] + [p.address for p in others], timeout=60)
    try:
        assert await client.write(["set", "a", 1]) == ["ok", "a", 1]
        cluster.hang(old.name)
        assert await asyncio.wait_for(client.write(["set", "b", 2]), BOUND) == ["ok", "b", 2]
        assert await asyncio.wait_for(client.read(["get", "b"]), BOUND) == ["ok", 2]
        new = await cluster.leader()
        assert new is not old
        assert new.state_machine.applied.count(["set", "b", 2]) == 1
    finally:
        await asyncio.wait_for(client.close(), BOUND)


def count_feeds(cluster: Cluster) -> list[str]:
    """Record the name of the member each time one starts serving a client's change feed."""
    opened: list[str] = []
    for peer in cluster.peers.values():
        serve = peer._requests.streams["listen"]

        def counting(args: dict[str, Any], serve: Any = serve, name: str = peer.name) -> Any:
            opened.append(name)
            return serve(args)

        peer._requests.streams["listen"] = counting
    return opened


async def read_until(feed: AsyncIterator[raftlib.Change], command: Any, seen: list[raftlib.Change]) -> None:
    """Append the changes of ``feed`` to ``seen`` up to the one applying ``command``."""
    while not seen or seen[-1].command != command:
        seen.append(await asyncio.wait_for(anext(feed), BOUND))


@dataclasses.dataclass
class Feed:
    """A client's change feed, as :func:`listening` opened it."""

    client: raftlib.Client
    changes: AsyncIterator[raftlib.Change]
    seen: list[raftlib.Change]
    """What ``changes`` yielded so far."""
    opened: list[str]
    """The members that started serving the feed, in order (see :func:`count_feeds`)."""


@contextlib.asynccontextmanager
async def listening(cluster: Cluster, attempt_timeout: float) -> AsyncIterator[Feed]:
    """Start three peers, connect a client, write ``["set", "a", 1]`` and
    read the client's feed from 0 up to that write."""
    peers = await cluster.start(3)
    opened = count_feeds(cluster)
    client = await raftlib.connect([p.address for p in peers.values()], timeout=60, attempt_timeout=attempt_timeout)
    try:
        await client.write(["set", "a", 1])
        feed = Feed(client, aiter(client.listen(0)), [], opened)
        await read_until(feed.changes, ["set", "a", 1], feed.seen)
        yield feed
        await feed.changes.aclose()  # type: ignore[attr-defined]
    finally:
        await asyncio.wait_for(client.close(), BOUND)


async def test_a_client_feed_from_a_hung_member_resumes_at_another(cluster: Cluster) -> None:
    """A feed's silence looked like a quiet cluster: with its member hung
    (connections open, nothing sent, not even the end of the stream), the
    client waited forever while the others went on applying writes. Members
    now send keepalives on a quiet feed, and the client leaves a member whose
    feed sent nothing for attempt_timeout, resuming elsewhere from the next
    index."""
    async with listening(cluster, attempt_timeout=0.5) as feed:
        hung = feed.opened[-1]
        cluster.hang(hung)
        others = [p for p in cluster.peers.values() if p.name != hung]
        async with await raftlib.connect([p.address for p in others], timeout=60) as writer:
            await writer.write(["set", "b", 2])
        await read_until(feed.changes, ["set", "b", 2], feed.seen)
        assert feed.opened[-1] != hung
        # No gap, no repeat: the feed is exactly what a healthy member applied.
        expected = []
        async for change in others[0].listen(0):
            expected.append(change)
            if change.index == feed.seen[-1].index:
                break
        assert feed.seen == expected


async def test_a_quiet_feed_from_a_healthy_member_is_kept(cluster: Cluster) -> None:
    """Keepalives keep a feed with nothing to send on its member through a
    silence many times attempt_timeout: it is not abandoned and reopened."""
    async with listening(cluster, attempt_timeout=1.0) as feed:
        # Nothing is written for four times attempt_timeout while the feed waits.
        waiting = asyncio.ensure_future(anext(feed.changes))
        await asyncio.sleep(4.0)
        assert not waiting.done()
        await feed.client.write(["set", "b", 2])
        assert (await asyncio.wait_for(waiting, BOUND)).command == ["set", "b", 2]
        assert len(feed.opened) == 1
