"""Hostile connections against a live cluster, and the resource limits.

The soak test runs a three-peer LMDB cluster on loopback while about a hundred
connections misbehave (garbage, cut-off frames, a slowloris, oversized
headers, bogus Hellos, schema-invalid messages after a valid Hello) and a
``raftlib.connect`` client writes all along. Every acknowledged write must be
readable on every peer afterwards, no peer may stop, and the process's RSS
must stay bounded. ``RAFTLIB_SOAK_SECONDS`` sets how long the client writes
(10 s by default); the figures are printed (``pytest -s``).

The other tests drive each limit of :class:`raftlib.Config` and the transport
past its bound: pending writes and reads (``Overloaded``), the inbox, the
outbox in bytes, the number of inbound connections, the Hello deadline and
the first frame's size.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import random
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

import msgpack
import pytest

import raftlib
from raftlib.config import Config
from raftlib.core.messages import (
    AppendEntries,
    InstallSnapshot,
    RequestVoteResponse,
    TimeoutNow,
)
from raftlib.errors import Overloaded
from raftlib.transport.framing import encode_frame, encode_message
from raftlib.transport.tcp import HELLO_MAX_FRAME_SIZE, Transport
from raftlib.types import Entry, EntryKind, Membership

from clusterkit import FAST, Cluster, eventually

SOAK_SECONDS = float(os.environ.get("RAFTLIB_SOAK_SECONDS", "10"))
SOAK_CONFIG = Config(tick_interval=0.01, election_ticks=30, heartbeat_ticks=3, hello_timeout=2.0)
"""Elections in 0.3-0.6 s (the attackers share the event loop with the
peers), and a short Hello deadline so that each silent attacker is cut
off several times during the run."""

MiB = 1024 * 1024


def rss() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc/self/status (Linux)")


class LogCounter(logging.Handler):
    """Counts records by level instead of keeping them (thousands are expected)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        if record.levelno >= logging.ERROR and len(self.samples) < 20:
            self.samples.setdefault(record.msg, record.getMessage())


@pytest.fixture
def quiet_raftlib_logs() -> Any:
    """Route raftlib's logs to a counter only, so that the soak's thousands of
    warnings neither flood the report nor count in the RSS."""
    log = logging.getLogger("raftlib")
    counter = LogCounter()
    old_level, old_propagate = log.level, log.propagate
    log.addHandler(counter)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield counter
    finally:
        log.removeHandler(counter)
        log.setLevel(old_level)
        log.propagate = old_propagate


# --------------------------------------------------------------------------- attackers

Attack = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Ctx"], Awaitable[None]]


@dataclasses.dataclass
class Ctx:
    """What an attack knows: its random source, the stop signal, the name it
    introduces itself with and the name of the peer it attacks."""

    rng: random.Random
    stop: asyncio.Event
    name: str
    target: str


async def until_closed(reader: asyncio.StreamReader, limit: float = 10.0) -> None:
    """Wait until the peer closes the connection (it sends nothing else)."""
    await asyncio.wait_for(reader.read(), limit)


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: Ctx) -> None:
    writer.write(ctx.rng.randbytes(ctx.rng.randrange(1, 4096)))
    await until_closed(reader)


async def half_frame(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: Ctx) -> None:
    """A plausible header, half its body, then silence: cut off at the Hello deadline."""
    size = ctx.rng.randrange(16, HELLO_MAX_FRAME_SIZE)
    writer.write(struct.pack(">I", size) + ctx.rng.randbytes(size // 2))
    await until_closed(reader)


async def half_frame_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: Ctx) -> None:
    """Introduced, then half of a 1 MiB frame and silence: held open until the end."""
    writer.write(encode_frame("Hello", [ctx.name, ""]) + struct.pack(">I", MiB) + ctx.rng.randbytes(ctx.rng.randrange(1, 4096)))
    await ctx.stop.wait()


async def slowloris(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: Ctx) -> None:
    """A byte every 100 ms of what would be a Hello: cut off at the Hello deadline."""
    data = encode_frame("Hello", [ctx.name, ""]) * 20
    for byte in data:
        if reader.at_eof() or reader.exception() is not None or writer.is_closing() or ctx.stop.is_set():
            return  # the peer closed (or reset) the connection
        writer.write(bytes([byte]))
        await asyncio.sleep(0.1)


async def oversized(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: Ctx) -> None:
    size = ctx.rng.choice([2**32 - 1, 64 * MiB + 1, HELLO_MAX_FRAME_SIZE + 1])
    writer.write(struct.pack(">I", size) + ctx.rng.randbytes(100))
    await until_closed(reader)


BOGUS_HELLOS = [
    encode_frame("Hello", 5),
    encode_frame("Hello", ["x"]),
    encode_frame("Hello", ["", ""]),
    encode_frame("Hello", ["x" * 300, ""]),
    encode_frame("Hello", ["x", "not an address"]),
    encode_frame("Hello", [1, 2]),
    encode_frame("Hello", ["x", b"127.0.0.1:1"]),
    encode_frame("Hullo", ["x", ""]),
    encode_message(TimeoutNow(1, "x", "s1")),  # no Hello first
    encode_frame("Hello", ["x", ""]) + encode_frame("Hello", ["x", ""]),
]


async def bogus_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: Ctx) -> None:
    writer.write(ctx.rng.choice(BOGUS_HELLOS))
    await until_closed(reader)


def _append_body(entries: list[Any], term: Any = 1) -> list[Any]:
    return [term, "intruder", "target", 0, 0, entries, 0, 0]


SCHEMA_INVALID = [
    ("AppendEntries", _append_body([], term=-1)),
    ("AppendEntries", _append_body([], term=2**63)),
    ("AppendEntries", _append_body([], term=True)),
    ("AppendEntries", _append_body([[1, 1, EntryKind.CONFIG, b"\xc1"]])),
    ("AppendEntries", _append_body([[1, 1, EntryKind.CONFIG, msgpack.packb({"voters": {"a": "b"}, "learners": [1]})]])),
    ("AppendEntries", _append_body([[1, 1, EntryKind.CONFIG, Membership({"a": "nowhere"}).encode()]])),
    ("AppendEntries", _append_body([[1, 1, EntryKind.CLIENT, msgpack.packb([0, "c", 1, 0, 0.0, 2**40])]])),
    ("AppendEntries", _append_body([[1, 1, EntryKind.NOOP, b"data"]])),
    ("AppendEntries", _append_body([[1, 1, 9, b""]])),
    ("AppendEntries", _append_body([[1, 1, 0]])),
    ("AppendEntries", [1, "intruder"]),
    ("RequestVote", [1, "intruder", "target", 0, 0, 1, 0]),
    ("InstallSnapshot", [1, "intruder", "target", 5, 1, b"\xc1"]),
    ("TimeoutNow", [1, "", "target"]),
    ("TimeoutNow", [1, "someone-else", "target"]),  # not the name of the Hello
    ("Request", "not a request"),
]


async def invalid_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: Ctx) -> None:
    """A valid Hello, then nonsense: schema-valid messages the core or runtime
    drops (they keep the connection open), then a schema-invalid one (closes it)."""
    name, target = ctx.name, ctx.target
    harmless = [
        RequestVoteResponse(0, name, target, True),  # a stale term
        AppendEntries(0, name, target, 0, 0, (), 0),  # term 0: malformed
        InstallSnapshot(1, name, target, 5, 1, Membership({"s1": "127.0.0.1:1"}).encode()),  # never received
    ]
    writer.write(encode_frame("Hello", [ctx.name, ""]) + b"".join(encode_message(m) for m in harmless))
    type_name, body = ctx.rng.choice(SCHEMA_INVALID)
    body = [target if v == "target" else name if v == "intruder" else v for v in body] if type(body) is list else body
    writer.write(encode_frame(type_name, body))
    await until_closed(reader)


async def claims_to_be_the_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: Ctx) -> None:
    """Introduces itself with the target's own name and speaks for it: dropped by the core."""
    target = ctx.target
    writer.write(encode_frame("Hello", [target, ""]) + encode_message(TimeoutNow(10**6, target, target)))
    await asyncio.sleep(0.5)


ATTACKS: dict[str, tuple[Attack, int]] = {
    "garbage": (garbage, 20),
    "half frame": (half_frame, 15),
    "half frame after Hello": (half_frame_after_hello, 10),
    "slowloris": (slowloris, 15),
    "oversized header": (oversized, 10),
    "bogus Hello": (bogus_hello, 12),
    "invalid after Hello": (invalid_after_hello, 15),
    "claims to be the peer": (claims_to_be_the_peer, 3),
}
"""Each attack and how many connections run it at once (100 in all)."""


async def attacker(kind: str, number: int, peer: raftlib.Peer, stop: asyncio.Event,
                   connections: collections.Counter[str]) -> None:
    """Run attack ``kind`` against ``peer`` over and over until ``stop``."""
    attack, _ = ATTACKS[kind]
    ctx = Ctx(random.Random(f"{kind}-{number}"), stop, f"intruder-{kind.replace(' ', '-')}-{number}", peer.name)
    host, port = peer.address.rsplit(":", 1)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            await asyncio.sleep(0.1)
            continue
        connections[kind] += 1
        try:
            await attack(reader, writer, ctx)
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
        await asyncio.sleep(ctx.rng.uniform(0.05, 0.2))


# --------------------------------------------------------------------------- the soak


@needs_proc
async def test_soak_hostile_connections_lose_no_acknowledged_write(
    tmp_path: Path, quiet_raftlib_logs: LogCounter
) -> None:
    cluster = Cluster(tmp_path, storage="lmdb", config=SOAK_CONFIG)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    try:
        peers = await cluster.start(3)
        client = await raftlib.connect([p.address for p in peers.values()], timeout=30)
        acked: dict[str, int] = {}
        errors: list[BaseException] = []

        async def write_forever(w: int) -> None:
            i = 0
            while not stop.is_set():
                key = f"w{w}-{i}"
                try:
                    assert await client.write(["set", key, i]) == ["ok", key, i]
                    acked[key] = i
                except raftlib.RaftError as exc:
                    errors.append(exc)
                i += 1

        for _ in range(50):  # warm up before the baseline
            await client.write(["set", "warm", 1])
        baseline = peak = rss()
        loop = asyncio.get_running_loop()
        started = loop.time()
        connections: collections.Counter[str] = collections.Counter()
        for kind, (_, count) in ATTACKS.items():
            for n in range(count):
                target = list(peers.values())[n % len(peers)]
                tasks.append(asyncio.ensure_future(attacker(kind, n, target, stop, connections)))
        writers = [asyncio.ensure_future(write_forever(w)) for w in range(4)]
        max_inbound = 0
        while loop.time() - started < SOAK_SECONDS:
            await asyncio.sleep(0.2)
            peak = max(peak, rss())
            max_inbound = max(max_inbound, *(len(p._transport._inbound) for p in peers.values()))
            assert all(p._fatal is None and not p._stopping for p in peers.values())
        stop.set()
        await asyncio.wait_for(asyncio.gather(*writers), 30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()

        # Every acknowledged write is on every peer.
        leader = await cluster.leader()
        await leader.write(["set", "barrier", 1])
        barrier = leader.status()["commit_index"]
        for p in peers.values():
            await eventually(lambda p=p: p.status()["applied_index"] >= barrier, timeout=30)
            missing = [k for k, v in acked.items() if p.state_machine.data.get(k) != v]
            assert not missing, f"{p.name} lost {len(missing)} acknowledged writes, e.g. {missing[:5]}"
        assert all(p._fatal is None and not p._stopping for p in peers.values())
        assert not errors, errors[:5]
        growth = peak - baseline
        protocol_errors = sum(p._transport.stats["protocol_errors"] for p in peers.values())
        print(
            f"\nsoak: {SOAK_SECONDS:g} s, {len(acked)} writes acknowledged ({len(acked) / SOAK_SECONDS:.0f}/s), "
            f"{sum(c for _, c in ATTACKS.values())} attackers made {sum(connections.values())} connections "
            f"({dict(connections)}), {protocol_errors} closed for protocol errors, at most {max_inbound} open "
            f"on one peer; RSS {baseline / MiB:.0f} MiB -> peak {peak / MiB:.0f} MiB (+{growth / MiB:.1f} MiB); "
            f"log lines {dict(quiet_raftlib_logs.counts)}"
        )
        assert len(acked) > 10 * SOAK_SECONDS  # the client was served all along
        assert all(connections[kind] >= count for kind, (_, count) in ATTACKS.items())
        assert protocol_errors >= connections["garbage"] // 2
        assert growth < 100 * MiB
        assert quiet_raftlib_logs.counts["WARNING"] > 0  # each closed connection is logged
        assert "CRITICAL" not in quiet_raftlib_logs.counts and "ERROR" not in quiet_raftlib_logs.counts, (
            quiet_raftlib_logs.samples
        )
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await cluster.close()


# --------------------------------------------------------------------------- pending writes and reads


async def track_max(condition: Callable[[], int], stop: asyncio.Event) -> int:
    """The largest value of ``condition()`` seen, sampled on every loop iteration."""
    most = 0
    while not stop.is_set():
        most = max(most, condition())
        await asyncio.sleep(0)
    return most


@needs_proc
async def test_a_flood_of_writes_beyond_max_pending_writes_is_refused(tmp_path: Path) -> None:
    limit = 64
    cluster = Cluster(tmp_path, config=dataclasses.replace(FAST, max_pending_writes=limit))
    try:
        peers = await cluster.start(3)
        leader = await cluster.leader()
        follower = next(p for p in peers.values() if p is not leader)
        done = asyncio.Event()
        watcher = asyncio.ensure_future(
            track_max(lambda: len(leader._proposals) + len(leader._pending_writes), done)
        )
        before = rss()
        results: list[Any] = []
        for peer in (leader, follower, leader):  # on the leader, forwarded, and again
            results += await asyncio.gather(
                *(peer.write(["set", f"{peer.name}-{len(results)}-{i}", i]) for i in range(3000)),
                return_exceptions=True,
            )
        done.set()
        most = await watcher
        refused = [r for r in results if isinstance(r, Overloaded)]
        accepted = [r for r in results if isinstance(r, list)]
        assert len(refused) + len(accepted) == len(results), [r for r in results if not isinstance(r, list)][:3]
        assert refused and accepted
        assert most <= limit
        # Nothing refused was applied, on any peer.
        applied = {r[1] for r in accepted}
        barrier = await leader.write(["set", "barrier", 1])
        assert barrier == ["ok", "barrier", 1]
        for p in peers.values():
            await eventually(lambda p=p: p.state_machine.data.get("barrier") == 1)
            assert set(p.state_machine.data) - {"barrier"} == applied
        assert rss() - before < 50 * MiB
        # Once the flood is over, writes go through again.
        assert await leader.write(["set", "after", 1]) == ["ok", "after", 1]
    finally:
        await cluster.close()


async def test_reads_beyond_max_pending_reads_are_refused(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, config=dataclasses.replace(FAST, max_pending_reads=32))
    try:
        await cluster.start(3)
        leader = await cluster.leader()
        await leader.write(["set", "k", 1])
        results = await asyncio.gather(*(leader.read(["get", "k"]) for _ in range(500)), return_exceptions=True)
        assert {repr(r) for r in results if not isinstance(r, Overloaded)} == {repr(["ok", 1])}
        assert 0 < sum(isinstance(r, Overloaded) for r in results) <= 500 - 32
        assert await leader.read(["get", "k"]) == ["ok", 1]
    finally:
        await cluster.close()


async def test_a_connection_over_the_request_limit_is_answered_overloaded(tmp_path: Path, monkeypatch: Any) -> None:
    from raftlib import serving
    from raftlib.rpc import RpcConnection

    monkeypatch.setattr(serving, "MAX_REQUESTS_PER_CONNECTION", 4)
    cluster = Cluster(tmp_path)
    try:
        await cluster.start(1)
        leader = await cluster.leader()
        conn = await RpcConnection.open(leader.address)
        try:
            # Streams stay outstanding until cancelled: four of them fill the connection.
            streams = [conn.stream("listen", {"from_index": 0}) for _ in range(4)]
            pending = [asyncio.ensure_future(s.__anext__()) for s in streams]
            await asyncio.sleep(0.2)
            with pytest.raises(Overloaded, match="4 requests are outstanding"):
                await conn.call("status", {}, timeout=5)
            assert not conn.closed  # refused, not disconnected
            for s, fut in zip(streams, pending):
                fut.cancel()
                await asyncio.gather(fut, return_exceptions=True)
                await s.aclose()
            await asyncio.sleep(0.2)
            assert (await conn.call("status", {}, timeout=5))["name"] == leader.name
        finally:
            await conn.close()
    finally:
        await cluster.close()


# --------------------------------------------------------------------------- inbox and outbox


async def test_the_inbox_drops_the_newest_beyond_max_inbox(tmp_path: Path) -> None:
    limit = 50
    cluster = Cluster(tmp_path, config=dataclasses.replace(FAST, max_inbox=limit))
    try:
        peers = await cluster.start(3)
        leader = await cluster.leader()
        target = next(p for p in peers.values() if p is not leader)
        most = 0
        deliver = target._transport._on_message

        def on_message(msg: Any) -> None:
            nonlocal most
            deliver(msg)
            most = max(most, len(target._inbox))

        target._transport._on_message = on_message
        host, port = target.address.rsplit(":", 1)
        _, writer = await asyncio.open_connection(host, int(port))
        flood = encode_message(RequestVoteResponse(0, "intruder", target.name, False)) * 20_000
        writer.write(encode_frame("Hello", ["intruder", ""]) + flood)
        await writer.drain()
        await eventually(lambda: target._transport.stats["frames_received"] > 20_000)
        assert most == limit  # full, and never beyond
        writer.close()
        await writer.wait_closed()
        assert await leader.write(["set", "after", 1]) == ["ok", "after", 1]
        await eventually(lambda: target.state_machine.data.get("after") == 1)
    finally:
        await cluster.close()


async def test_the_outbox_is_bounded_in_bytes(tmp_path: Path) -> None:
    """To a peer that accepts but never reads, queued messages beyond
    ``max_outbox_bytes`` are dropped, oldest first."""
    accepted: list[asyncio.StreamWriter] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limit = 256 * 1024
    transport = Transport("a", "127.0.0.1:0", on_message=lambda m: None, max_outbox_bytes=limit)
    await transport.start()
    try:
        transport.set_address("b", f"127.0.0.1:{port}")
        big = (Entry(1, 1, EntryKind.NORMAL, b"x" * 8192),)
        for round_ in range(20):
            for i in range(200):
                transport.send(AppendEntries(1, "a", "b", 0, 0, big, 0, i))
            outbox = transport._outboxes["b"]
            assert outbox.size == sum(map(len, outbox.frames)) <= limit
            await asyncio.sleep(0.01)
        assert transport.stats["dropped"] > 0
        assert accepted  # it connected; the kernel's buffers filled, then the outbox
    finally:
        await transport.close()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------- inbound connection limits


async def test_connections_beyond_the_limit_are_refused_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """When every slot holds a member's Raft link, none of which makes
    room, new connections are closed as they arrive."""
    received: list[Any] = []
    transport = Transport("a", "127.0.0.1:0", on_message=received.append, max_inbound_connections=5)
    await transport.start()
    host, port = transport.address.rsplit(":", 1)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for i in range(5):
            transport.set_address(f"m{i}", "127.0.0.1:1")
            opened.append(await asyncio.open_connection(host, int(port)))
            opened[-1][1].write(encode_frame("Hello", [f"m{i}", ""]) + encode_message(TimeoutNow(1, f"m{i}", "a")))
        await eventually(lambda: len(received) == 5)
        with caplog.at_level(logging.WARNING, logger="raftlib.transport"):
            for _ in range(3):
                opened.append(await asyncio.open_connection(host, int(port)))
            for reader, _ in opened[5:]:
                assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once
        assert transport.stats["over_capacity"] == 3
        assert any("max_inbound_connections" in r.getMessage() for r in caplog.records)
        for _, writer in opened[:5]:
            writer.close()
        await eventually(lambda: not transport._inbound)
        reader, writer = await asyncio.open_connection(host, int(port))  # room again
        writer.write(encode_frame("Hello", ["b", ""]))
        await writer.drain()
        await eventually(lambda: any(len(transport._inbound) == 1 for _ in [0]))
        assert transport.stats["over_capacity"] == 3
        writer.close()
    finally:
        for _, writer in opened:
            writer.close()
        await transport.close()


async def test_a_stranger_holding_every_slot_silently_cannot_stop_an_election(tmp_path: Path) -> None:
    """A stranger that opened connections on every slot of every member,
    sent nothing on them and opened another as soon as one was closed, left
    no member able to reach another: once the leader stopped, no election
    could succeed. Connections that have not introduced themselves now make
    room first."""
    slots = 16
    config = dataclasses.replace(FAST, max_inbound_connections=slots, hello_timeout=60.0)
    cluster = Cluster(tmp_path, config=config)
    holders: list[asyncio.Task[None]] = []

    async def hold(address: str) -> None:
        host, port = address.rsplit(":", 1)
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                await asyncio.sleep(0.01)
                continue
            try:
                await reader.read()  # until the member closes it
            except OSError:
                pass
            finally:
                writer.close()

    try:
        await cluster.start(3)
        leader = await cluster.leader()
        assert await leader.write(["set", "before", 1]) == ["ok", "before", 1]
        holders = [asyncio.ensure_future(hold(p.address)) for p in cluster.live() for _ in range(slots)]
        await eventually(lambda: all(len(p._transport._inbound) == slots for p in cluster.live()))
        await cluster.stop(leader.name)
        new = await cluster.leader()
        assert await new.write(["set", "after", 1]) == ["ok", "after", 1]
        for p in cluster.live():
            await eventually(lambda p=p: p.state_machine.data == {"before": 1, "after": 1})
    finally:
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        await cluster.close()


@pytest.mark.parametrize(
    "send, reason",
    [
        (b"", "no Hello within 0.3 s"),
        (encode_frame("Hello", ["b", ""])[:-3], "no Hello within 0.3 s"),  # cut off
        (struct.pack(">I", HELLO_MAX_FRAME_SIZE + 1), "first frame of 65537 bytes exceeds the limit of 65536"),
    ],
)
async def test_a_stranger_must_introduce_itself_quickly_and_briefly(
    send: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    transport = Transport("a", "127.0.0.1:0", on_message=lambda m: None, hello_timeout=0.3)
    await transport.start()
    host, port = transport.address.rsplit(":", 1)
    try:
        with caplog.at_level(logging.WARNING, logger="raftlib.transport"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(send)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await eventually(lambda: transport.stats["protocol_errors"] == 1)
        assert any(reason in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
        # Once introduced, a peer may stay silent and send large frames.
        received: list[Any] = []
        transport._on_message = received.append
        reader, writer = await asyncio.open_connection(host, int(port))
        big = AppendEntries(1, "b", "a", 0, 0, (Entry(1, 1, EntryKind.NORMAL, b"x" * 200_000),), 0)
        writer.write(encode_frame("Hello", ["b", ""]))
        await asyncio.sleep(0.6)
        writer.write(encode_message(big))
        await eventually(lambda: received == [big])
        writer.close()
    finally:
        await transport.close()
