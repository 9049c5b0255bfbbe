"""End to end over loopback TCP with LMDB: restarts, kill -9 and hostile input."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit import Cluster, eventually, free_port

WORKER = Path(__file__).with_name("worker.py")


async def test_restart_from_disk_recovers_term_vote_and_log(lmdb_cluster: Cluster) -> None:
    peers = await lmdb_cluster.start(3)
    leader = await lmdb_cluster.leader()
    for i in range(30):
        await leader.write(["set", f"k{i}", i])
    follower = next(p for p in peers.values() if p is not leader)
    await eventually(lambda: follower.status()["applied_index"] == leader.status()["commit_index"])
    before = follower.status()
    await follower.stop()
    restarted = await lmdb_cluster.start_peer(follower.name)
    st = restarted.status()
    assert st["term"] >= before["term"]
    assert st["last_index"] >= before["last_index"]
    # It replays the committed log into a fresh state machine and rejoins.
    await eventually(lambda: restarted.state_machine.data.get("k29") == 29)
    await leader.write(["set", "after", 1])
    await eventually(lambda: restarted.state_machine.data.get("after") == 1)


async def test_cold_restart_of_the_whole_cluster_loses_nothing(lmdb_cluster: Cluster) -> None:
    await lmdb_cluster.start(3)
    leader = await lmdb_cluster.leader()
    acked = [await leader.write(["set", f"k{i}", i]) for i in range(50)]
    assert len(acked) == 50
    for name in list(lmdb_cluster.peers):
        await lmdb_cluster.stop(name)
    for name in ["s3", "s1", "s2"]:
        await lmdb_cluster.start_peer(name)
    leader = await lmdb_cluster.leader()
    for i in range(50):
        assert await leader.read(["get", f"k{i}"]) == ["ok", i]


async def test_garbage_on_the_peer_port_leaves_the_peer_serving(lmdb_cluster: Cluster) -> None:
    peers = await lmdb_cluster.start(3)
    leader = await lmdb_cluster.leader()
    host, port = leader.address.rsplit(":", 1)
    payloads = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\xff\xff\xff\xff" + b"x" * 100,  # announces a 4 GiB frame
        b"\x00\x00\x00\x03abc",  # not msgpack
        bytes(random.Random(7).randrange(256) for _ in range(4096)),
    ]
    for payload in payloads:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(payload)
        await writer.drain()
        # The peer closes the connection on a bad frame.
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
        assert await leader.write(["set", "still", "alive"]) == ["ok", "still", "alive"]
    assert leader.is_leader
    await eventually(lambda: all(p.state_machine.data.get("still") == "alive" for p in peers.values()))


def _spawn(name: str, addresses: dict[str, str], tmp_path: Path) -> subprocess.Popen[bytes]:
    with open(tmp_path / f"{name}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, str(WORKER), name, addresses[name], str(tmp_path / name), json.dumps(addresses),
             str(tmp_path / f"acked-{name}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _acked(tmp_path: Path) -> set[str]:
    keys: set[str] = set()
    for f in tmp_path.glob("acked-*.txt"):
        keys.update(line for line in f.read_text().splitlines() if line)
    return keys


@pytest.mark.slow
async def test_kill_9_of_a_minority_and_then_of_everyone_loses_no_acknowledged_write(tmp_path: Path) -> None:
    names = ["s1", "s2", "s3"]
    addresses = {n: f"127.0.0.1:{free_port()}" for n in names}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    rng = random.Random(42)
    try:
        for n in names:
            procs[n] = _spawn(n, addresses, tmp_path)
        await eventually(lambda: len(_acked(tmp_path)) > 20, timeout=30)
        for _ in range(4):
            victim = rng.choice(names)
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            await asyncio.sleep(0.4)
            procs[victim] = _spawn(victim, addresses, tmp_path)
            await asyncio.sleep(0.6)
        seen = len(_acked(tmp_path))
        await eventually(lambda: len(_acked(tmp_path)) > seen, timeout=30)
        # Now the whole cluster at once.
        for p in procs.values():
            p.send_signal(signal.SIGKILL)
        for p in procs.values():
            p.wait()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    acked = _acked(tmp_path)
    assert len(acked) > 20
    cluster = Cluster(tmp_path, storage="lmdb")
    cluster.addresses = dict(addresses)
    try:
        for n in names:
            await cluster.start_peer(n)
        leader = await cluster.leader(timeout=30)
        await leader.write(["set", "barrier", 1])
        missing = [k for k in acked if k not in leader.state_machine.data]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    finally:
        await cluster.close()


async def test_a_peer_talking_nonsense_is_ignored_and_the_cluster_keeps_serving(
    lmdb_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    from raftlib.core.messages import AppendEntries, AppendEntriesResponse, RequestVote
    from raftlib.transport.framing import encode_frame, encode_message
    from raftlib.types import Entry

    peers = await lmdb_cluster.start(3)
    leader = await lmdb_cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    term = follower.status()["term"]
    host, port = follower.address.rsplit(":", 1)
    nonsense = [
        # entries that do not follow prev_log_index
        AppendEntries(term, leader.name, follower.name, 0, 0, (Entry(term, 7, data=b"x"),), 0),
        # terms going backwards inside one message
        AppendEntries(term, leader.name, follower.name, 0, 0, (Entry(term, 1), Entry(term - 1, 2)), 0),
        # a vote request whose log claims a term from the future
        RequestVote(term, leader.name, follower.name, 5, term + 5),
    ]
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(encode_frame("Hello", [leader.name, ""]))
    for msg in nonsense:
        writer.write(encode_message(msg))
    await writer.drain()
    await asyncio.sleep(0.1)
    # Type errors inside a frame close that connection.
    writer.write(encode_message(AppendEntriesResponse(term, leader.name, follower.name, True, 10)).replace(b"\xc3", b"\x05", 1))
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    assert await leader.write(["set", "after", "nonsense"]) == ["ok", "after", "nonsense"]
    await eventually(lambda: follower.state_machine.data.get("after") == "nonsense")
    assert follower.status()["term"] == term  # nothing in the nonsense moved the term
    dropped = [r for r in caplog.records if "dropping malformed message" in r.getMessage()]
    assert len(dropped) == 3
    assert any("closing connection" in r.getMessage() for r in caplog.records)
