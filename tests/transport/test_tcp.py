"""Tests of the asyncio TCP/Unix transport, on loopback and tmp paths only."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import msgpack
import pytest

from raftlib.core.messages import AppendEntries, RequestVote, TimeoutNow
from raftlib.errors import AddressInUse, ConfigError
from raftlib.transport.framing import FrameDecoder, encode_frame, encode_message
from raftlib.transport import tcp
from raftlib.transport.tcp import Connection, Endpoint, Transport, parse_address
from raftlib.types import Entry, EntryKind

LOGGER = "raftlib.transport"


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` every few milliseconds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


@dataclass
class Node:
    """A started transport and the messages it received."""

    transport: Transport
    inbox: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.transport.address


MakeNode = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node() -> AsyncIterator[MakeNode]:
    """Factory of started transports, all closed at teardown."""
    created: list[Transport] = []

    async def make(name: str, listen: str = "127.0.0.1:0", **kwargs: Any) -> Node:
        inbox: list[Any] = []
        kwargs.setdefault("on_message", inbox.append)
        transport = Transport(name, listen, **kwargs)
        created.append(transport)
        await transport.start()
        return Node(transport, inbox)

    try:
        yield make
    finally:
        for transport in created:
            await transport.close()


def append(src: str, dst: str, term: int = 1) -> AppendEntries:
    return AppendEntries(term, src, dst, 0, 0, (Entry(term, 1, EntryKind.NORMAL, b"cmd"),), 0, 7)


async def connect_pair(make_node: MakeNode, **kwargs: Any) -> tuple[Node, Node]:
    a = await make_node("a", **kwargs)
    b = await make_node("b", **kwargs)
    a.transport.set_address("b", b.address)
    b.transport.set_address("a", a.address)
    return a, b


async def exchange(a: Node, b: Node, term: int) -> None:
    """Send one message each way and wait for both to arrive."""
    ab, ba = append("a", "b", term), TimeoutNow(term, "b", "a")
    a.transport.send(ab)
    b.transport.send(ba)
    await wait_until(lambda: ab in b.inbox and ba in a.inbox, what=f"exchange of term {term}")


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:80", Endpoint("tcp", "127.0.0.1", 80)),
        ("localhost:0", Endpoint("tcp", "localhost", 0)),
        ("node-1.example.com:65535", Endpoint("tcp", "node-1.example.com", 65535)),
        ("[::1]:7000", Endpoint("tcp", "::1", 7000)),
        ("unix:/tmp/x.sock", Endpoint("unix", "/tmp/x.sock", None)),
        ("unix:rel.sock", Endpoint("unix", "rel.sock", None)),
        ("unix:/" + "p" * 106, Endpoint("unix", "/" + "p" * 106, None)),  # the longest that binds
    ],
)
def test_parse_address(text: str, expected: Endpoint) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("127.0.0.1", "expected 'host:port'"),
        (":80", "host"),
        ("host:", "not a number"),
        ("host:http", "not a number"),
        ("host:-1", "not a number"),
        ("host:65536", "out of range"),
        ("host:٣", "not a number"),  # a non-ASCII digit
        ("::1:80", "brackets"),
        ("[::1:80", r"\[ipv6\]:port"),
        ("[nothex]:80", "not an IPv6"),
        ("unix:", "empty"),
        ("unix:/" + "p" * 107, "108 bytes, the system allows 107"),  # bind() would fail with no path named
        ("unix:/run/raft/", "ends with '/'"),  # bind() would fail saying the directory /run does not exist
        ("unix:~/s1.sock", r"'~' is not expanded.*full path"),  # bind() would look for a directory named '~'
        ("my host:80", "host"),
        ("http://127.0.0.1:80", r"without a scheme \('http://'\)"),  # not 'IPv6 addresses must be in brackets'
        ("tcp://[::1]:80", r"without a scheme \('tcp://'\)"),
        (None, "must be a str"),
    ],
)
def test_parse_address_rejects(text: Any, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_address(text)


def test_constructor_validates() -> None:
    def noop(msg: Any) -> None:
        pass

    with pytest.raises(ConfigError):
        Transport("a", "nowhere", on_message=noop)
    with pytest.raises(ConfigError):
        Transport("", "127.0.0.1:0", on_message=noop)
    with pytest.raises(ConfigError):
        Transport("a", "127.0.0.1:0", on_message=noop, max_outbox=0)
    transport = Transport("a", "127.0.0.1:0", on_message=noop)
    with pytest.raises(ConfigError):
        transport.set_address("b", "bad")


# --------------------------------------------------------------------------- exchanging


async def test_two_transports_exchange_both_ways(make_node: MakeNode) -> None:
    a, b = await connect_pair(make_node)
    assert a.address.startswith("127.0.0.1:") and not a.address.endswith(":0")
    for term in range(1, 4):
        await exchange(a, b, term)
    many = [append("a", "b", term) for term in range(10, 200)]
    for msg in many:
        a.transport.send(msg)
    await wait_until(lambda: len(b.inbox) == 3 + len(many), what="the burst")
    assert b.inbox[3:] == many  # in order, none lost
    assert a.transport.stats["frames_sent"] >= len(many) + 1
    assert b.transport.stats["protocol_errors"] == 0


async def test_address_learned_from_hello(make_node: MakeNode) -> None:
    a = await make_node("a")
    b = await make_node("b")
    a.transport.set_address("b", b.address)
    a.transport.send(TimeoutNow(1, "a", "b"))
    await wait_until(lambda: len(b.inbox) == 1)
    assert b.transport.addresses == {"a": a.address}
    b.transport.send(TimeoutNow(1, "b", "a"))
    await wait_until(lambda: len(a.inbox) == 1)


async def test_a_hello_does_not_move_an_address_set_for_a_peer(make_node: MakeNode) -> None:
    """Anyone may connect and claim to be "b": that must not send a's
    traffic for b elsewhere (it cut a member off until the next
    configuration change). Only names a has no address for are learned."""
    a, b = await connect_pair(make_node)
    await exchange(a, b, 1)
    for name, address in [("b", "127.0.0.1:1"), ("stranger", "127.0.0.1:2")]:
        raw = await RawClient.connect(a.address)
        try:
            await raw.send(encode_frame("Hello", [name, address]) + encode_frame("Hello", ["", ""]))
            await raw.wait_disconnected()  # for the second Hello
        finally:
            await raw.close()
    assert a.transport.addresses == {"b": b.address, "stranger": "127.0.0.1:2"}
    a.transport.send(TimeoutNow(5, "a", "b"))
    await wait_until(lambda: TimeoutNow(5, "a", "b") in b.inbox)


async def test_addresses_learned_from_hellos_are_bounded(make_node: MakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp, "MAX_LEARNED_ADDRESSES", 3)
    a = await make_node("a")
    a.transport.set_address("b", "127.0.0.1:1")
    for i in range(6):
        raw = await RawClient.connect(a.address)
        try:
            await raw.send(encode_frame("Hello", [f"x{i}", f"127.0.0.1:{100 + i}"]) + encode_frame("Hello", ["", ""]))
            await raw.wait_disconnected()
        finally:
            await raw.close()
    assert a.transport.addresses == {"b": "127.0.0.1:1", "x3": "127.0.0.1:103", "x4": "127.0.0.1:104",
                                     "x5": "127.0.0.1:105"}
    raw = await RawClient.connect(a.address)
    try:
        await raw.send(encode_frame("Hello", ["y", "unix:/" + "p" * tcp.MAX_ADDRESS_LENGTH]))
        await raw.wait_disconnected()
    finally:
        await raw.close()
    assert "y" not in a.transport.addresses


async def test_unix_sockets(make_node: MakeNode, tmp_path: Path) -> None:
    a = await make_node("a", f"unix:{tmp_path}/a.sock")
    b = await make_node("b", f"unix:{tmp_path}/b.sock")
    assert a.address == f"unix:{tmp_path}/a.sock"
    a.transport.set_address("b", b.address)
    b.transport.set_address("a", a.address)
    await exchange(a, b, 1)
    with pytest.raises(AddressInUse, match="a.sock"):
        await make_node("a2", f"unix:{tmp_path}/a.sock")
    await a.transport.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.sock", "b.sock.lock"]
    again = await make_node("a", f"unix:{tmp_path}/a.sock")  # closing released the path
    again.transport.set_address("b", b.address)
    b.transport.set_address("a", again.address)
    await exchange(again, b, 2)


async def test_a_unix_socket_held_by_this_process_is_not_said_to_be_another_process(
        make_node: MakeNode, tmp_path: Path) -> None:
    """Two peers of one program given the same path: the error once sent
    the user looking for "another process", naming this one's own ID."""
    await make_node("a", f"unix:{tmp_path}/a.sock")
    with pytest.raises(AddressInUse) as info:
        await make_node("b", f"unix:{tmp_path}/a.sock")
    message = str(info.value)
    assert "another process" not in message
    assert f"{tmp_path}/a.sock" in message and f"this process (pid {os.getpid()})" in message


async def test_a_peer_whose_unix_socket_this_one_may_not_connect_to_is_warned_about(
        make_node: MakeNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Members run as different users, with the usual umask, cannot connect
    to each other's sockets: the cluster never elected, and only debug
    lines said why. No permission is no passing failure: warned at once,
    and once for the series of failed attempts."""
    a = await make_node("a", f"unix:{tmp_path}/a.sock")
    b = await make_node("b", f"unix:{tmp_path}/b.sock")
    real_open = asyncio.open_unix_connection

    async def open_without_permission(where: Any = None, **kwargs: Any) -> Any:
        if str(where) == f"{tmp_path}/b.sock":
            raise PermissionError(errno.EACCES, "Permission denied")
        return await real_open(where, **kwargs)

    monkeypatch.setattr(asyncio, "open_unix_connection", open_without_permission)
    a.transport.set_address("b", b.address)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for attempt in range(1, 4):  # each failure drops what was queued: the next attempt waits for more
            a.transport.send(TimeoutNow(attempt, "a", "b"))
            await wait_until(lambda: a.transport.stats["connect_failures"] >= attempt, what=f"attempt {attempt}")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"a: cannot connect to b at unix:{tmp_path}/b.sock: no permission" in warning, warning


async def test_a_tcp_port_another_process_listens_on_raises_address_in_use(make_node: MakeNode) -> None:
    """As for a Unix socket: AddressInUse (an OSError with EADDRINUSE) naming the address."""
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(AddressInUse) as info:
            await make_node("a", address)
        assert info.value.errno == errno.EADDRINUSE and isinstance(info.value, OSError)
        assert address in str(info.value) and "another process" in str(info.value)
    finally:
        taken.close()


@pytest.mark.parametrize("address, kind", [
    ("nonexistent.invalid:0", socket.gaierror),  # a mistyped host name (.invalid never resolves)
    ("192.0.2.1:0", OSError),  # an address of no interface here (TEST-NET-1)
])
async def test_a_tcp_address_that_cannot_be_listened_on_is_named(
        make_node: MakeNode, address: str, kind: type[OSError]) -> None:
    """Such a name once raised asyncio's bare ``gaierror: Name or service not
    known``, which did not say which address (of several a program may
    configure) was wrong. The class and errno stay those of the failure."""
    with pytest.raises(kind) as info:
        await make_node("a", address)
    assert not isinstance(info.value, AddressInUse)
    assert info.value.errno is not None and info.value.errno != errno.EADDRINUSE
    assert f"cannot listen on {address}:" in str(info.value)


async def test_an_address_of_no_interface_here_raises_eaddrnotavail_saying_so(make_node: MakeNode) -> None:
    """On every Python version alike: from 3.13, asyncio raises an OSError
    without an errno ("could not bind on any address") where 3.11 and 3.12
    give EADDRNOTAVAIL."""
    with pytest.raises(OSError) as info:
        await make_node("a", "192.0.2.1:0")  # TEST-NET-1: no interface has it
    assert info.value.errno == errno.EADDRNOTAVAIL
    assert "cannot listen on 192.0.2.1:0: no network interface here has that address" in str(info.value)


async def test_an_errno_less_bind_failure_from_asyncio_is_eaddrnotavail(
        make_node: MakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """What asyncio raises from Python 3.13 when every address of the host
    fails with EADDRNOTAVAIL, tried here on whichever version runs."""
    async def create_server(*args: Any, **kwargs: Any) -> Any:
        raise OSError("could not bind on any address out of [('192.0.2.1', 0)]")

    monkeypatch.setattr(asyncio.get_running_loop(), "create_server", create_server)
    with pytest.raises(OSError) as info:
        await make_node("a", "192.0.2.1:0")
    assert info.value.errno == errno.EADDRNOTAVAIL
    assert "cannot listen on 192.0.2.1:0: no network interface here has that address" in str(info.value)


async def test_a_unix_socket_this_process_may_not_connect_to_is_not_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live socket of another user's process, with no write permission for
    this one, looks refused to the probe; it must not be unlinked as stale."""
    path = tmp_path / "other.sock"
    other = socket.socket(socket.AF_UNIX)
    transport = Transport("a", f"unix:{path}", on_message=lambda msg: None)
    try:
        other.bind(str(path))
        other.listen()
        inode = path.stat().st_ino
        real_open = asyncio.open_unix_connection

        async def open_without_permission(where: Any = None, **kwargs: Any) -> Any:
            if str(where) == str(path):  # what connect() gives without write permission on the socket
                raise PermissionError(errno.EACCES, "Permission denied")
            return await real_open(where, **kwargs)

        monkeypatch.setattr(asyncio, "open_unix_connection", open_without_permission)
        with pytest.raises(PermissionError, match="other.sock"):
            await transport.start()
        assert path.stat().st_ino == inode
    finally:
        await transport.close()
        other.close()
    assert path.exists()  # still the other process's
    path.unlink()


@pytest.mark.parametrize("stale", [False, True], ids=["fresh path", "stale socket"])
async def test_a_unix_socket_bound_by_another_process_during_the_start_is_not_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stale: bool) -> None:
    """Two processes started at once on one path: the one that binds second
    must fail, not unlink the other's socket and leave it unreachable."""
    path = tmp_path / "s.sock"
    if stale:
        with socket.socket(socket.AF_UNIX) as crashed:
            crashed.bind(str(path))  # what a killed process leaves
    other = socket.socket(socket.AF_UNIX)
    others_inode: list[int] = []
    real_check = tcp._refuse_live_unix_socket

    async def check_then_lose_the_race(where: str, *args: Any) -> Any:
        result = await real_check(where, *args)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where)  # the other process found the same stale file and replaced it
        other.bind(where)
        other.listen()
        others_inode.append(os.stat(where).st_ino)
        return result

    monkeypatch.setattr(tcp, "_refuse_live_unix_socket", check_then_lose_the_race)
    transport = Transport("a", f"unix:{path}", on_message=lambda msg: None)
    try:
        with pytest.raises(OSError) as info:
            await transport.start()
        assert info.value.errno == errno.EADDRINUSE and str(path) in str(info.value)
        assert [path.stat().st_ino] == others_inode  # still the other process's
    finally:
        await transport.close()
        other.close()
        path.unlink(missing_ok=True)


async def test_two_starts_on_one_stale_unix_socket_leave_one_owner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two transports started at once on the path of a socket a killed
    process left behind: both find it stale before either binds. One must
    fail at once, naming the path and saying that it is taken; the other
    serves on the socket file at the path."""
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as crashed:
        crashed.bind(str(path))  # what a killed process leaves
    real_check = tcp._refuse_live_unix_socket
    both_checked = asyncio.Event()
    checked = 0

    async def check_then_wait_for_the_other(where: str, *args: Any) -> Any:
        nonlocal checked
        result = await real_check(where, *args)
        checked += 1
        if checked == 2:
            both_checked.set()
        await both_checked.wait()
        return result

    # Between the other's bind() and listen(), a connection to the path is
    # refused: the quick re-check before unlinking cannot see the other one.
    monkeypatch.setattr(tcp, "_refuse_live_unix_socket", check_then_wait_for_the_other)
    monkeypatch.setattr(tcp, "_nothing_listens", lambda where: True)
    inboxes: dict[str, list[Any]] = {"a": [], "b": []}
    transports = {name: Transport(name, f"unix:{path}", on_message=inboxes[name].append) for name in inboxes}

    async def start(transport: Transport) -> None:
        try:
            await transport.start()
        finally:
            both_checked.set()  # one that fails before its check must not hold up the other

    try:
        results = await asyncio.gather(*(start(t) for t in transports.values()), return_exceptions=True)
        failed = [name for name, result in zip(transports, results) if result is not None]
        assert len(failed) == 1, results
        error = results[list(transports).index(failed[0])]
        assert isinstance(error, AddressInUse) and isinstance(error, OSError), error
        assert error.errno == errno.EADDRINUSE
        assert str(path) in str(error) and "used by this process" in str(error)  # both run in this one
        (winner,) = set(transports) - set(failed)
        sender = Transport("c", "127.0.0.1:0", on_message=lambda msg: None)
        try:
            sender.set_address(winner, f"unix:{path}")
            message = append("c", winner)
            sender.send(message)
            await wait_until(lambda: message in inboxes[winner], what="a message through the socket file")
        finally:
            await sender.close()
    finally:
        for transport in transports.values():
            await transport.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_unix_lock_file_replaced_before_it_was_locked_is_not_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process opens the lock file just before its holder stops (removing
    it) and locks it just after: that lock is on a file no one else will
    open, so it must take the one at the path instead."""
    import fcntl

    path = str(tmp_path / "s.sock")
    holder = tcp._lock_unix_path(path)
    real_flock = fcntl.flock

    def holder_stops_first(fd: int, operation: int) -> None:
        nonlocal holder
        if holder >= 0:
            tcp._unlock_unix_path(path, holder)
            holder = -1
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", holder_stops_first)
    taken = tcp._lock_unix_path(path)
    monkeypatch.undo()
    try:
        with pytest.raises(AddressInUse, match="s.sock"):
            tcp._lock_unix_path(path)  # a third process
    finally:
        tcp._unlock_unix_path(path, taken)
    assert list(tmp_path.iterdir()) == []


async def fails_to_listen(path: Path, error: type[BaseException], match: str) -> None:
    """Starting a transport on the Unix socket ``path`` raises ``error`` matching ``match``."""
    transport = Transport("a", f"unix:{path}", on_message=lambda msg: None)
    try:
        with pytest.raises(error, match=match):
            await transport.start()
    finally:
        await transport.close()


async def test_a_unix_lock_file_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    """In a shared directory another user may put a symlink where the lock
    file goes: opening it must not create or truncate the file it points to."""
    target = tmp_path / "precious"
    target.write_text("keep me")
    path = tmp_path / "s.sock"
    (tmp_path / "s.sock.lock").symlink_to(target)
    await fails_to_listen(path, OSError, r"s\.sock\.lock.* not a regular file")
    assert target.read_text() == "keep me" and not path.exists()


@pytest.mark.parametrize("readable", [False, True], ids=["mode 0600", "mode 0644"])
async def test_a_unix_lock_file_of_another_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, readable: bool) -> None:
    """Another user's lock file cannot be opened for writing. If it can be
    read, its lock still tells whether that user's process is running
    there; if not, the error names the lock file."""
    path = tmp_path / "s.sock"
    lock = tmp_path / "s.sock.lock"
    others = tcp._lock_unix_path(str(path))  # the other user's process, running
    os.ftruncate(others, 0)
    os.pwrite(others, b"1\n", 0)  # as process 1, which runs
    real_open = os.open

    def open_as_another_user(where: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(where) == str(lock) and (flags & os.O_ACCMODE != os.O_RDONLY or not readable):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(where, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_as_another_user)
    try:
        if readable:
            await fails_to_listen(path, AddressInUse, r"s\.sock' is held by another process \(pid 1\)")
        else:
            await fails_to_listen(path, PermissionError, r"s\.sock\.lock.*another user")
    finally:
        tcp._unlock_unix_path(str(path), others)
    if readable:  # the other user's process has died, leaving its lock file: the path is free
        lock.write_text("")
        transport = Transport("a", f"unix:{path}", on_message=lambda msg: None)
        try:
            await transport.start()
        finally:
            await transport.close()
    assert not path.exists()


async def test_a_unix_lock_file_naming_a_dead_process_does_not_name_it(tmp_path: Path) -> None:
    """A holder that may not write the lock file (another user's) leaves in it
    the ID of the process before, which may be dead: not one to name."""
    path = tmp_path / "s.sock"
    holder = tcp._lock_unix_path(str(path))
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "")
    await gone.wait()
    os.pwrite(holder, f"{gone.pid}\n".encode(), 0)
    try:
        await fails_to_listen(path, AddressInUse, r"s\.sock' is held by another process, starting")
    finally:
        tcp._unlock_unix_path(str(path), holder)


async def test_a_cancelled_close_still_frees_the_unix_socket_path(tmp_path: Path) -> None:
    """close() is idempotent, so once it has begun a second call does nothing:
    a close cancelled part way must still remove the socket and lock files
    and release the lock, or nothing in this process could listen there again."""
    path = tmp_path / "s.sock"
    transport = Transport("a", f"unix:{path}", on_message=lambda msg: None)
    await transport.start()
    closing = asyncio.create_task(transport.close())
    await asyncio.sleep(0)  # close() is under way
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await transport.close()
    assert list(tmp_path.iterdir()) == []
    again = Transport("b", f"unix:{path}", on_message=lambda msg: None)
    try:
        await again.start()
    finally:
        await again.close()


LISTEN_AND_WAIT = """
import asyncio, sys
from raftlib.transport.tcp import Transport

async def main():
    transport = Transport("other", sys.argv[1], on_message=lambda msg: None)
    await transport.start()
    print("listening", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


START_UNDER_A_FILE_LIMIT = """
import asyncio, logging, resource, sys
from raftlib.transport.tcp import Transport

soft, hard = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

async def main():
    transport = Transport("a", "127.0.0.1:0", on_message=lambda msg: None, max_inbound_connections=300)
    await transport.start()
    print("soft limit", resource.getrlimit(resource.RLIMIT_NOFILE)[0], flush=True)
    await transport.close()

asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file limits")
@pytest.mark.parametrize("hard", [2048, 200])
async def test_a_file_limit_below_max_inbound_connections_is_raised_or_named(hard: int) -> None:
    """A process allowed fewer open files than max_inbound_connections (the
    usual soft limit is 1,024, the default max_inbound_connections too) ran
    out of them first: a stranger opening connections left the member none
    for its peers, its snapshots, or its clients, and asyncio logged an error
    for every connection it could not accept. The member raises its soft
    limit to make room, as far as the hard limit allows, and says so if that
    is not enough."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", START_UNDER_A_FILE_LIMIT, "128", str(hard),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode == 0, err.decode()
    limit = int(out.decode().split()[-1])
    if hard == 2048:
        assert limit >= 300 + tcp.FILES_RESERVED
        assert b"WARNING" not in err
    else:
        assert limit == hard
        assert b"max_inbound_connections" in err and b"ulimit -n" in err


async def test_a_process_that_exits_without_closing_its_unix_transport_leaves_no_files(tmp_path: Path) -> None:
    """A program that returns from asyncio.run without stopping its peer left
    the socket file and the lock file behind, for nothing to listen on."""
    exits = LISTEN_AND_WAIT.replace("await asyncio.sleep(3600)", "return transport")
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", exits, f"unix:{tmp_path}/s.sock",
                                                 stdout=asyncio.subprocess.PIPE)
    out, _ = await child.communicate()
    assert (child.returncode, out) == (0, b"listening\n")
    assert list(tmp_path.iterdir()) == []


async def test_a_unix_socket_of_a_live_process_is_refused_and_freed_when_it_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", LISTEN_AND_WAIT, f"unix:{path}",
                                                 stdout=asyncio.subprocess.PIPE)
    transport = Transport("a", f"unix:{path}", on_message=lambda msg: None)
    try:
        assert child.stdout is not None
        assert await child.stdout.readline() == b"listening\n"
        with pytest.raises(AddressInUse) as info:
            await transport.start()
        assert str(path) in str(info.value) and f"pid {child.pid}" in str(info.value)
        await transport.close()
        _, writer = await asyncio.open_unix_connection(str(path))  # still the other process's
        writer.close()
        child.kill()  # leaves its socket file and its lock file behind
        await child.wait()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sock", "s.sock.lock"]
        transport = Transport("a", f"unix:{path}", on_message=lambda msg: None)  # the same start again
        await transport.start()
        _, writer = await asyncio.open_unix_connection(str(path))
        writer.close()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await transport.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["missing directory", "not a directory", "not a socket", "a directory",
                                  "not writable"])
async def test_a_unix_path_that_cannot_be_bound_is_named_in_the_error(tmp_path: Path, case: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path, errno_, reason = {
        "missing directory": (tmp_path / "missing" / "a.sock", errno.ENOENT, "does not exist"),
        "not a directory": (blocker / "a.sock", errno.ENOTDIR, "is not a directory"),
        "not a socket": (blocker, errno.EADDRINUSE, "not a socket"),
        # Not "remove it": the path names the directory the socket was meant to go in.
        "a directory": (tmp_path / "dir", errno.EADDRINUSE, f"is a directory: name a socket file in it, as in "
                                                            f"'unix:{tmp_path}/dir/"),
        "not writable": (tmp_path / "ro" / "a.sock", errno.EACCES, "no permission"),
    }[case]
    if case == "not writable":
        if os.geteuid() == 0:
            pytest.skip("root may create files in any directory")
        path.parent.mkdir(mode=0o555)
    if case == "a directory":
        path.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    transport = Transport("a", f"unix:{path}", on_message=lambda msg: None)
    try:
        with pytest.raises(OSError) as info:
            await transport.start()
    finally:
        await transport.close()
        if case == "not writable":
            path.parent.chmod(0o755)
    assert info.value.errno == errno_
    assert str(path) in str(info.value) and reason in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


async def test_a_unix_socket_another_program_listens_on_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    """A process that takes no lock file (not raftlib) listens there."""
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen()
        await fails_to_listen(path, AddressInUse, r"s\.sock' is in use by a running process.*; stop it or choose "
                                                  r"another path")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sock"]  # still the other program's
    path.unlink()


async def test_a_relative_unix_socket_is_removed_after_a_change_of_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    transport = Transport("a", "unix:a.sock", on_message=lambda msg: None)
    try:
        await transport.start()
        assert (tmp_path / "a.sock").exists()
        os.chdir(tmp_path / "elsewhere")
    finally:
        await transport.close()
    assert not (tmp_path / "a.sock").exists()


async def test_ipv6_loopback(make_node: MakeNode) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    a, b = await connect_pair(make_node, listen="[::1]:0")
    assert a.address.startswith("[::1]:")
    await exchange(a, b, 1)


async def test_reconnect_after_receiver_restarts(make_node: MakeNode) -> None:
    a, b = await connect_pair(make_node)
    await exchange(a, b, 1)
    address = b.address
    await b.transport.close()
    failures = a.transport.stats["connect_failures"]
    a.transport.send(TimeoutNow(2, "a", "b"))  # may die with the old connection
    await wait_until(lambda: a.transport.stats["connect_failures"] > failures, what="a failed reconnect")
    queued = TimeoutNow(3, "a", "b")
    a.transport.send(queued)  # the writer is backing off: this one is queued
    b2 = await make_node("b", address)
    await wait_until(lambda: queued in b2.inbox, what="the queued message after restart")
    b2.transport.send(TimeoutNow(3, "b", "a"))  # b2 learned a's address from Hello
    await wait_until(lambda: TimeoutNow(3, "b", "a") in a.inbox)


async def test_address_change_moves_the_connection(make_node: MakeNode) -> None:
    a, b = await connect_pair(make_node)
    await exchange(a, b, 1)
    b2 = await make_node("b")
    a.transport.set_address("b", b2.address)
    a.transport.send(TimeoutNow(2, "a", "b"))
    await wait_until(lambda: TimeoutNow(2, "a", "b") in b2.inbox)
    assert TimeoutNow(2, "a", "b") not in b.inbox


async def test_order_is_kept_across_direct_and_queued_sends(make_node: MakeNode) -> None:
    """An idle connection takes a frame at once; a busy one (the kernel has
    not taken everything yet) queues it for the writer task. Mixed, with
    large frames that fill the socket buffer, every message still arrives,
    in order."""
    a, b = await connect_pair(make_node, max_outbox=100_000)
    await exchange(a, b, 1)
    b.inbox.clear()
    big = b"x" * (512 * 1024)
    sent: list[AppendEntries] = []
    for i in range(300):
        data = big if i % 50 == 0 else b"cmd"
        msg = AppendEntries(2, "a", "b", i, 0, (Entry(2, i + 1, EntryKind.NORMAL, data),), 0, 0)
        a.transport.send(msg)
        sent.append(msg)
        if i % 7 == 0:
            await asyncio.sleep(0)
        if i % 60 == 59:
            await wait_until(lambda: len(b.inbox) >= len(sent), what="the messages so far")  # idle again
    await wait_until(lambda: len(b.inbox) >= len(sent), timeout=20, what="every message")
    assert b.inbox == sent
    assert a.transport.stats["dropped"] == 0


async def test_a_peer_that_stops_reading_fills_the_outbox_not_memory(make_node: MakeNode) -> None:
    """Frames go straight to the socket only while the kernel takes them;
    once it stops, they queue in the outbox, whose limit drops the oldest."""
    held: list[asyncio.StreamWriter] = []

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        a = await make_node("a", max_outbox=3)
        a.transport.set_address("z", f"127.0.0.1:{port}")
        a.transport.send(TimeoutNow(1, "a", "z"))
        await wait_until(lambda: a.transport.stats["frames_sent"] >= 2, what="Hello and the first frame")
        payload = b"x" * (256 * 1024)
        for i in range(200):  # 50 MiB, far more than the socket buffers hold
            a.transport.send(AppendEntries(1, "a", "z", i, 0, (Entry(1, i + 1, EntryKind.NORMAL, payload),), 0, 0))
            await asyncio.sleep(0)
        # What the kernel took (Hello, the first frame, some MiB), and at
        # most 3 queued: the rest was dropped.
        stats = a.transport.stats
        assert stats["dropped"] >= 100
        assert stats["frames_sent"] + stats["dropped"] >= 201 - 3
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_full_outbox_drops_oldest(make_node: MakeNode, tmp_path: Path) -> None:
    a = await make_node("a", max_outbox=3)
    a.transport.set_address("z", f"unix:{tmp_path}/nobody-listens.sock")
    for term in range(10):
        a.transport.send(TimeoutNow(term, "a", "z"))
    assert a.transport.stats["dropped"] == 7
    # Nobody listens: what was queued for the unreachable peer is dropped too.
    await wait_until(lambda: a.transport.stats["connect_failures"] > 0)
    assert a.transport.stats["dropped"] == 10
    a.transport.send(TimeoutNow(1, "a", "unknown"))  # no address at all
    assert a.transport.stats["dropped"] == 11


async def test_message_for_another_node_is_dropped(make_node: MakeNode) -> None:
    a, b = await connect_pair(make_node)
    a.transport.set_address("c", b.address)  # wrong: b listens there
    a.transport.send(TimeoutNow(1, "a", "c"))
    await wait_until(lambda: b.transport.stats["dropped"] == 1)
    assert b.inbox == []
    await exchange(a, b, 2)


async def test_on_message_exception_is_logged_and_survived(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[Any] = []

    def flaky(msg: Any) -> None:
        received.append(msg)
        if len(received) == 1:
            raise RuntimeError("handler bug")

    a = await make_node("a")
    b = await make_node("b", on_message=flaky)
    a.transport.set_address("b", b.address)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        a.transport.send(TimeoutNow(1, "a", "b"))
        a.transport.send(TimeoutNow(2, "a", "b"))
        await wait_until(lambda: len(received) == 2)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None and "handler bug" in str(record.exc_info[1])


# --------------------------------------------------------------------------- raw clients


class RawClient:
    """A hand-driven socket speaking (or not) the protocol."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.local = "%s:%d" % writer.get_extra_info("sockname")[:2]

    @classmethod
    async def connect(cls, address: str) -> RawClient:
        endpoint = parse_address(address)
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def wait_disconnected(self, timeout: float = 5.0) -> None:
        """Wait until the server closes the connection (EOF or reset)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except ConnectionResetError:
            pass

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def raw_frame(payload: bytes) -> bytes:
    """Wrap arbitrary payload bytes in a length header."""
    return struct.pack(">I", len(payload)) + payload


HELLO = encode_frame("Hello", ["raw", ""])

MISBEHAVIOURS: dict[str, tuple[bytes, str]] = {
    "garbage bytes": (b"\x00\x00\x00\x03\xc1\xc1\xc1", "not valid msgpack"),
    "http request": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "exceeds the limit"),
    "oversized header": (struct.pack(">I", 2**31) + b"\x00" * 100, "exceeds the limit"),
    "non-Hello first frame": (encode_message(TimeoutNow(1, "raw", "a")), "first frame must be Hello"),
    "malformed Hello": (encode_frame("Hello", ["raw"]), "Hello body"),
    "wrong field count": (HELLO + encode_frame("RequestVote", [1, "raw", "a"]), "RequestVote: body must have"),
    "bool for an int": (HELLO + encode_frame("TimeoutNow", [True, "raw", "a"]), "TimeoutNow.term"),
    "spoofed src": (HELLO + encode_message(RequestVote(1, "b", "a", 0, 0)), "message from 'b'"),
    "unknown frame type": (HELLO + encode_frame("Gossip", []), "unexpected frame type 'Gossip'"),
    "second Hello": (HELLO + HELLO, "second Hello"),
    "bad version": (raw_frame(msgpack.packb({"v": 2, "t": "Hello", "b": ["raw", ""]})), "version"),
}


@pytest.mark.parametrize("case", sorted(MISBEHAVIOURS))
async def test_misbehaving_connection_is_closed_and_others_keep_working(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    data, reason = MISBEHAVIOURS[case]
    a, b = await connect_pair(make_node, max_frame_size=1 << 20)
    await exchange(a, b, 1)
    raw = await RawClient.connect(a.address)
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            await raw.send(data)
            await raw.wait_disconnected()
            await wait_until(lambda: a.transport.stats["protocol_errors"] == 1)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        text = warnings[0].getMessage()
        assert raw.local in text and reason in text, text
    finally:
        await raw.close()
    await exchange(a, b, 2)
    assert a.inbox[-1] == TimeoutNow(2, "b", "a")


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="SO_PEERCRED is Linux's")
async def test_a_misbehaving_unix_connection_is_logged_with_its_process_and_user(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A connecting Unix socket has no address, so the warning named every
    such connection "unix:(anonymous)"; the kernel knows its process and user."""
    a = await make_node("a", f"unix:{tmp_path}/a.sock")
    _, writer = await asyncio.open_unix_connection(f"{tmp_path}/a.sock")
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            writer.write(MISBEHAVIOURS["unknown frame type"][0])
            await wait_until(lambda: a.transport.stats["protocol_errors"] == 1)
        [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert f"from unix:(pid {os.getpid()}, uid {os.getuid()})" in warning, warning
    finally:
        writer.close()


async def test_a_flood_of_misbehaving_connections_logs_a_warning_per_host_not_per_connection(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone who can reach the port can open thousands of garbage
    connections a second; a warning for each would flood the log (and the
    disk it is on). As for refused handshakes, one warning per host at most
    every REFUSAL_LOG_INTERVAL, the rest at debug level, and the next
    warning counts them."""
    a, b = await connect_pair(make_node, max_frame_size=1 << 20)
    cases = sorted(MISBEHAVIOURS)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for i, case in enumerate(cases):
            raw = await RawClient.connect(a.address)
            try:
                await raw.send(MISBEHAVIOURS[case][0])
                await raw.wait_disconnected()
                await wait_until(lambda: a.transport.stats["protocol_errors"] == i + 1)
            finally:
                await raw.close()
    closing = [r for r in caplog.records if "closing connection from 127.0.0.1:" in r.getMessage()]
    assert len(closing) == len(cases)  # each is still logged, with its reason
    warnings = [r for r in closing if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    await exchange(a, b, 1)


async def test_on_frame_receives_other_types_and_can_reply(make_node: MakeNode) -> None:
    seen: list[tuple[str, Any, str | None]] = []

    async def on_frame(type_name: str, body: Any, conn: Connection) -> None:
        seen.append((type_name, body, conn.peer_name))
        await conn.send_frame("Pong", body)

    a = await make_node("a", on_frame=on_frame)
    raw = await RawClient.connect(a.address)
    try:
        await raw.send(encode_frame("Hello", ["client", ""]) + encode_frame("Ping", [1, b"x"]))
        decoder = FrameDecoder(1024)
        frames: list[tuple[str, Any]] = []
        async with asyncio.timeout(5):
            while not frames:
                frames += decoder.feed(await raw.reader.read(1024))
        assert frames == [("Pong", [1, b"x"])]
        assert seen == [("Ping", [1, b"x"], "client")]
        assert "client" not in a.transport.addresses  # empty Hello address is not recorded
    finally:
        await raw.close()


async def test_a_handler_whose_answer_finds_the_connection_gone_logs_no_error(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """A far end that hangs up while an on_frame handler answers it (a
    snapshot sender that stops mid-offer, a client that gives up) is the
    connection ending, not a failure of this peer: no ERROR and traceback."""
    handled = asyncio.Event()

    async def on_frame(type_name: str, body: Any, conn: Connection) -> None:
        handled.set()
        raise ConnectionResetError("Connection lost")  # what send_frame raises then

    a = await make_node("a", on_frame=on_frame)
    raw = await RawClient.connect(a.address)
    try:
        with caplog.at_level(logging.DEBUG, logger=LOGGER):
            await raw.send(encode_frame("Hello", ["client", ""]) + encode_frame("Ping", [1]))
            await asyncio.wait_for(handled.wait(), 5)
            await raw.wait_disconnected()
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await raw.close()


# --------------------------------------------------------------------------- closing


async def test_close_leaves_no_tasks_and_is_idempotent(tmp_path: Path) -> None:
    before = asyncio.all_tasks()
    inboxes: dict[str, list[Any]] = {"a": [], "b": []}
    a = Transport("a", "127.0.0.1:0", on_message=inboxes["a"].append)
    b = Transport("b", f"unix:{tmp_path}/b.sock", on_message=inboxes["b"].append)
    try:
        await a.start()
        await b.start()
        a.set_address("b", b.address)
        b.set_address("a", a.address)
        a.set_address("down", f"unix:{tmp_path}/down.sock")  # a writer stuck backing off
        a.send(TimeoutNow(1, "a", "down"))
        a.send(TimeoutNow(1, "a", "b"))
        b.send(TimeoutNow(1, "b", "a"))
        await wait_until(lambda: len(inboxes["a"]) == 1 and len(inboxes["b"]) == 1)
        assert len(asyncio.all_tasks() - before) >= 4
    finally:
        await a.close()
        await b.close()
    assert asyncio.all_tasks() - before == set()
    await a.close()  # idempotent
    a.send(TimeoutNow(2, "a", "b"))  # dropped, no error
    assert a.stats["dropped"] >= 1
    assert not (tmp_path / "b.sock").exists()


async def test_close_closes_a_connection_accepted_just_before() -> None:
    """A connection the server accepted right before close(): asyncio sets
    it up over a few loop iterations, and close() must not return before its
    socket is closed (else it is left to a handler that may never run, when
    the application's loop ends right after)."""
    transport = Transport("a", "127.0.0.1:0", on_message=lambda msg: None)
    await transport.start()
    host, port = transport.address.rsplit(":", 1)
    client = socket.create_connection((host, int(port)))
    try:
        for _ in range(1000):  # until the loop has accepted it and is setting it up
            await asyncio.sleep(0)
            if any(t.get_coro().__name__ == "_accept_connection2" for t in asyncio.all_tasks()):
                break
        else:
            pytest.fail("the server never accepted the connection")
        await transport.close()
        client.settimeout(2.0)
        assert client.recv(1) == b""  # closed by the server, without another turn of the loop
    finally:
        client.close()


async def test_close_closes_a_connection_whose_cleanup_is_still_running(make_node: MakeNode) -> None:
    """close() cancels the task of a connection that ended while it awaits a
    cleanup (on_close) of an on_frame handler: the socket is closed all the same."""
    entered = asyncio.Event()
    conns: list[Connection] = []

    async def slow_cleanup() -> None:
        entered.set()
        await asyncio.Event().wait()  # until cancelled

    async def on_frame(type_name: str, body: Any, conn: Connection) -> None:
        conns.append(conn)
        conn.on_close.append(slow_cleanup)

    a = await make_node("a", on_frame=on_frame)
    _, writer = await introduce(a.address, "client", encode_frame("Ping", [1]))
    await wait_until(lambda: bool(conns), what="the client's frame")
    writer.close()  # the connection ends; its cleanup starts and waits
    await asyncio.wait_for(entered.wait(), 5)
    await a.transport.close()
    assert conns[0].closed


async def test_close_before_start() -> None:
    transport = Transport("a", "127.0.0.1:0", on_message=lambda msg: None)
    await transport.close()
    with pytest.raises(RuntimeError):
        await transport.start()


# --------------------------------------------------------------------------- idle connections at the limit


async def introduce(address: str, name: str, then: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection to ``address``, send a Hello as ``name`` (and ``then``)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(encode_frame("Hello", [name, ""]) + then)
    await writer.drain()
    return reader, writer


async def test_idle_strangers_holding_every_slot_make_room_for_clients_and_members(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    frames: list[tuple[str | None, str]] = []

    async def on_frame(type_name: str, body: Any, conn: Connection) -> None:
        frames.append((conn.peer_name, type_name))

    a = await make_node("a", max_inbound_connections=4, on_frame=on_frame)
    a.transport.set_address("m", "127.0.0.1:1")  # a member of a's configuration
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for i in range(4):  # a stranger introduces itself on every slot, then goes silent
            opened.append(await introduce(a.address, f"idle{i}"))
        await wait_until(lambda: a.transport.stats["frames_received"] == 4, what="the strangers' Hellos")
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            opened.append(await introduce(a.address, "client", encode_frame("Ping", [1])))
            await wait_until(lambda: frames == [("client", "Ping")], what="the new client's frame")
            opened.append(await introduce(a.address, "m", encode_message(append("m", "a"))))
            await wait_until(lambda: len(a.inbox) == 1, what="the reconnecting member's message")
        # The two connections idle longest made room, each closed.
        for reader, _ in opened[:2]:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        assert a.transport.stats["evicted"] == 2
        assert a.transport.stats["over_capacity"] == 0
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len([w for w in warnings if "idle" in w and "max_inbound_connections" in w]) == 1  # one per host
    finally:
        for _, writer in opened:
            writer.close()


async def test_silent_strangers_holding_every_slot_make_room_for_clients_and_members(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """Connections that never send their Hello (nor finish a security
    handshake) could not be closed to make room, only wait out their
    hello_timeout: a stranger that kept every slot so, reconnecting as each
    was closed, refused every new connection, and members could not reach
    each other to elect a leader. Those open longest make room first now."""
    frames: list[tuple[str | None, str]] = []

    async def on_frame(type_name: str, body: Any, conn: Connection) -> None:
        frames.append((conn.peer_name, type_name))

    a = await make_node("a", max_inbound_connections=4, on_frame=on_frame, hello_timeout=60.0)
    a.transport.set_address("m", "127.0.0.1:1")
    host, port = a.address.rsplit(":", 1)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(4):  # a stranger takes every slot and says nothing
            opened.append(await asyncio.open_connection(host, int(port)))
        await wait_until(lambda: len(a.transport._inbound) == 4, what="the strangers' connections")
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            opened.append(await introduce(a.address, "m", encode_message(append("m", "a"))))
            await wait_until(lambda: len(a.inbox) == 1, what="the member's message")
            opened.append(await introduce(a.address, "client", encode_frame("Ping", [1])))
            await wait_until(lambda: frames == [("client", "Ping")], what="the new client's frame")
        for reader, _ in opened[:2]:  # the two open longest made room
            assert await asyncio.wait_for(reader.read(), 5) == b""
        assert a.transport.stats["evicted"] == 2
        assert a.transport.stats["over_capacity"] == 0
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len([w for w in warnings if "not introduced itself" in w]) == 1  # one per host
    finally:
        for _, writer in opened:
            writer.close()


async def test_a_connection_past_its_security_handshake_makes_room_after_those_in_it(make_node: MakeNode) -> None:
    """On a secured member, a connection that has proved the secret makes
    room only after those that have not: a stranger opening connection
    after connection cannot close a member's while it has yet to send its Hello."""
    from raftlib.security import SharedSecret

    secret = SharedSecret(b"s" * 32)
    a = await make_node("a", max_inbound_connections=3, security=secret, hello_timeout=60.0)
    host, port = a.address.rsplit(":", 1)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        opened.append(await tcp.connect_stream(a.address, secret))  # proves the secret, sends nothing yet
        for _ in range(3):
            opened.append(await asyncio.open_connection(host, int(port)))  # a stranger: no handshake
            await wait_until(lambda: len(a.transport._inbound) == len(opened) - a.transport.stats["evicted"],
                             what="the connection")
        assert await asyncio.wait_for(opened[1][0].read(), 5) != b""  # the challenge ...
        assert await asyncio.wait_for(opened[1][0].read(), 5) == b""  # ... then closed to make room
        assert a.transport.stats["evicted"] == 1
        opened[0][1].write(encode_frame("Hello", ["m", ""]) + encode_message(TimeoutNow(1, "m", "a")))  # still served
        await wait_until(lambda: a.inbox == [TimeoutNow(1, "m", "a")], what="the member's message")
    finally:
        for _, writer in opened:
            writer.close()


def holding_on_frame(held: dict[str, asyncio.Event]) -> Callable[[str, Any, Connection], Awaitable[None]]:
    """An ``on_frame`` that, for a ``Hold`` frame, tracks a task on the
    connection that runs until ``held[name].set()`` (or the connection ends)."""

    async def on_frame(type_name: str, body: Any, conn: Connection) -> None:
        assert conn.peer_name is not None
        release = held.setdefault(conn.peer_name, asyncio.Event())
        task = asyncio.get_running_loop().create_task(release.wait())

        async def stop() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        conn.on_close.append(stop)
        conn.track(task)

    return on_frame


async def test_a_connection_with_work_in_progress_is_evicted_after_those_without(make_node: MakeNode) -> None:
    held: dict[str, asyncio.Event] = {}
    a = await make_node("a", max_inbound_connections=3, on_frame=holding_on_frame(held))
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        opened.append(await introduce(a.address, "waiting", encode_frame("Hold", [])))  # silent longest, but busy
        await wait_until(lambda: "waiting" in held, what="the first connection's work")
        for i in range(4):
            opened.append(await introduce(a.address, f"idle{i}"))
            await wait_until(lambda: a.transport.stats["frames_received"] == 3 + i, what="a stranger's Hello")
        assert a.transport.stats["evicted"] == 2
        for reader, _ in opened[1:3]:  # the strangers idle longest
            assert await asyncio.wait_for(reader.read(), 5) == b""
        assert not held["waiting"].is_set()
        assert any(conn.peer_name == "waiting" for conn in a.transport._inbound.values())

        held["waiting"].set()  # done: now it is the one idle longest with nothing in progress
        await wait_until(lambda: all(not conn._busy for conn in a.transport._inbound.values()), what="the work's end")
        opened.append(await introduce(a.address, "late"))
        reader, _ = opened[0]
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert a.transport.stats["evicted"] == 3
    finally:
        for _, writer in opened:
            writer.close()


async def test_a_connection_whose_frame_is_being_handled_is_evicted_after_those_without(make_node: MakeNode) -> None:
    """An ``on_frame`` that takes long (storing a snapshot, say) keeps its connection busy while it runs."""
    release = asyncio.Event()
    handling: list[str] = []

    async def on_frame(type_name: str, body: Any, conn: Connection) -> None:
        assert conn.peer_name is not None
        handling.append(conn.peer_name)
        await release.wait()

    a = await make_node("a", max_inbound_connections=2, on_frame=on_frame)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        opened.append(await introduce(a.address, "storing", encode_frame("Slow", [])))
        await wait_until(lambda: handling == ["storing"], what="the first connection's frame")
        for i in range(2):
            opened.append(await introduce(a.address, f"idle{i}"))
            await wait_until(lambda: a.transport.stats["frames_received"] == 3 + i, what="a stranger's Hello")
        reader, _ = opened[1]
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert a.transport.stats["evicted"] == 1
        assert sorted(conn.peer_name or "" for conn in a.transport._inbound.values()) == ["idle1", "storing"]
    finally:
        release.set()
        for _, writer in opened:
            writer.close()


async def test_when_every_connection_has_work_in_progress_the_one_idle_longest_makes_room(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """Work in progress must not let anyone lock new connections out."""
    held: dict[str, asyncio.Event] = {}
    a = await make_node("a", max_inbound_connections=3, on_frame=holding_on_frame(held))
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for i in range(3):
            opened.append(await introduce(a.address, f"busy{i}", encode_frame("Hold", [])))
            await wait_until(lambda: len(held) == i + 1, what="a connection's work")
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            opened.append(await introduce(a.address, "newcomer", encode_frame("Hold", [])))
            await wait_until(lambda: "newcomer" in held, what="the newcomer's work")
        reader, _ = opened[0]
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert a.transport.stats["evicted"] == 1
        assert a.transport.stats["over_capacity"] == 0
        assert sorted(conn.peer_name or "" for conn in a.transport._inbound.values()) == ["busy1", "busy2", "newcomer"]
        assert any("1 request(s) in progress" in r.getMessage() for r in caplog.records)
    finally:
        for _, writer in opened:
            writer.close()


async def test_a_members_idle_raft_link_is_kept_when_strangers_need_room(make_node: MakeNode) -> None:
    a = await make_node("a", max_inbound_connections=3)
    a.transport.set_address("m", "127.0.0.1:1")
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        opened.append(await introduce(a.address, "m", encode_message(append("m", "a"))))
        await wait_until(lambda: len(a.inbox) == 1, what="the member's first message")
        for i in range(4):  # each beyond the limit takes the place of an idle stranger, never the member's
            opened.append(await introduce(a.address, f"idle{i}"))
            await wait_until(lambda: a.transport.stats["frames_received"] == 2 + i, what="a stranger's Hello")
        assert a.transport.stats["evicted"] == 2
        for reader, _ in opened[1:3]:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        _, member = opened[0]
        member.write(encode_message(append("m", "a", term=2)))
        await wait_until(lambda: len(a.inbox) == 2, what="the member's second message")
    finally:
        for _, writer in opened:
            writer.close()


# --------------------------------------------------------------------------- cluster IDs


async def test_a_peer_presenting_another_cluster_id_is_refused_and_warned_about_once(
        make_node: MakeNode, caplog: pytest.LogCaptureFixture) -> None:
    a, b = await connect_pair(make_node)
    a.transport.cluster_id, b.transport.cluster_id = "aaaa1111", "bbbb2222"
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for term in range(1, 4):
            a.transport.send(TimeoutNow(term, "a", "b"))
            await wait_until(lambda: b.transport.stats["refused"] >= term, what=f"refusal {term}")
    assert b.inbox == []
    assert b.transport.stats["protocol_errors"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "aaaa1111" in warnings[0] and "bbbb2222" in warnings[0] and a.address in warnings[0]
    assert "another cluster" in warnings[0] and "data directory" in warnings[0]


@pytest.mark.parametrize("ids", [("aaaa1111", None), (None, "bbbb2222"), ("cccc3333", "cccc3333")],
                         ids=["receiver knows none", "sender presents none", "same"])
async def test_a_peer_presenting_no_or_the_same_cluster_id_is_accepted(
        make_node: MakeNode, ids: tuple[str | None, str | None]) -> None:
    a, b = await connect_pair(make_node)
    a.transport.cluster_id, b.transport.cluster_id = ids
    await exchange(a, b, 1)
    assert a.transport.stats["refused"] == b.transport.stats["refused"] == 0


def test_an_older_decoder_reads_a_hello_with_a_cluster_id_as_name_and_address() -> None:
    """Decoders of earlier versions require the Hello body to be exactly
    [name, address]: the ID travels beside it, in a key they ignore."""
    frame = tcp.encode_hello("s1", "127.0.0.1:7001", "aaaa1111")
    raw = msgpack.unpackb(frame[4:])
    assert raw["b"] == ["s1", "127.0.0.1:7001"] and raw["v"] == 1 and raw["t"] == "Hello"
    assert FrameDecoder(1 << 16).feed(frame) == [("Hello", ["s1", "127.0.0.1:7001", "aaaa1111"])]
    assert FrameDecoder(1 << 16).feed(tcp.encode_hello("s1", "127.0.0.1:7001", None)) == [
        ("Hello", ["s1", "127.0.0.1:7001"])]


async def test_a_connection_of_another_cluster_open_before_the_id_was_known_is_closed_when_it_is(
        make_node: MakeNode) -> None:
    a, b = await connect_pair(make_node)
    a.transport.cluster_id = "aaaa1111"
    await exchange(a, b, 1)  # b knows no ID yet: accepted
    b.transport.cluster_id = "bbbb2222"
    assert b.transport.stats["refused"] == 1
    sent = []
    for term in range(2, 200):  # the first may go out on the closed connection, and be lost
        sent.append(TimeoutNow(term, "a", "b"))
        a.transport.send(sent[-1])
        if b.transport.stats["refused"] >= 2:
            break
        await asyncio.sleep(0.02)
    assert b.transport.stats["refused"] >= 2
    assert not set(sent) & set(b.inbox)
