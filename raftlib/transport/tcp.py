"""asyncio streams transport between Raft peers, over TCP or Unix sockets.

Addresses are ``"host:port"`` (IPv6 as ``"[::1]:port"``) or ``"unix:/path"``.

Outbound, :meth:`Transport.send` never blocks and never raises on network
trouble: each destination has a bounded outbox served by one writer task that
connects (with exponential back-off), introduces itself with a ``Hello`` frame
and writes everything queued in one batch per wake-up. Messages in a failed
write, or dropped from a full outbox, are lost; Raft tolerates that.

Inbound, every accepted connection must start with ``Hello [name, address]``
(peers add their cluster ID: see :func:`encode_hello`); then Raft messages go
to ``on_message`` and other frame types to ``on_frame``. A peer that knows
its cluster ID (:attr:`Transport.cluster_id`) refuses a connection whose
Hello presents another one (it is counted in ``stats["refused"]`` and warned
about as below): a member of another cluster with the same names, at an
address this cluster's configuration has, never reaches the Raft core.
A connection that sends anything malformed is logged and closed (a warning
at most every :data:`REFUSAL_LOG_INTERVAL` seconds per remote host, the
rest at debug level); the transport keeps serving all other connections. Strangers are bounded too: at
most ``max_inbound_connections`` are served at once, and a connection must
complete its Hello, at most :data:`HELLO_MAX_FRAME_SIZE` bytes, within
``hello_timeout`` seconds. When every slot is taken, a new connection takes
the place of the one open longest among those not yet past their Hello, or
if there is none, of the one idle longest (no frame in or out) among those past
their Hello, except the Raft link of each member of the configuration: a
stranger that introduces itself on every slot and goes silent cannot lock
out clients or members. Connections with work in progress (``on_frame``
running for one of their frames, or a task given to
:meth:`Connection.track`: a request being answered, a stream open) make
room only when all have some. Every Raft message passes
:func:`~raftlib.transport.framing.decode_message` (types) and
:func:`~raftlib.transport.framing.check_message` (values) before ``on_message``.

With ``security`` (see :mod:`raftlib.security`), every connection, in and
out, first runs the TLS or shared-secret handshake; :func:`connect_stream`
is the one place that opens a secured connection. An accepted connection that
fails the handshake, or does not finish it within
:data:`~raftlib.security.HANDSHAKE_TIMEOUT`, is closed before any of its
frames is read, with a warning naming the remote address (at most one per
host and reason every :data:`REFUSAL_LOG_INTERVAL` seconds, the rest at debug
level).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import stat
import struct
import sys
from asyncio.selector_events import BaseSelectorEventLoop
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Mapping, NamedTuple

from ..core.messages import Message
from ..errors import AddressInUse, AuthenticationFailed, ConfigError, FrameTooLarge, ProtocolError
from ..types import MAX_CLUSTER_ID_LENGTH
from ..security import (
    HANDSHAKE_TIMEOUT, OPENING_SIZE, Security, TLSConfig, accept, authenticate, security_refusal,
)
from .framing import (
    MAX_NAME_LENGTH,
    FrameDecoder,
    check_message,
    decode_message,
    encode_frame,
    encode_message,
    is_message_type,
)

__all__ = [
    "HELLO",
    "FRAME_TOO_LARGE",
    "encode_hello",
    "Endpoint",
    "parse_address",
    "format_address",
    "connect_stream",
    "Connection",
    "Transport",
]

HELLO = "Hello"
"""Type name of the first frame on every connection; body ``[name, address]``,
and from a peer that knows it, its cluster ID as an added field (see
:func:`encode_hello`)."""

FRAME_TOO_LARGE = "FrameTooLarge"
"""Type name of the last frame a peer sends on a connection before closing it
because a frame announced more than its ``max_frame_size``; body ``[limit,
size]``: its limit and the payload length announced. The frame and those
after it were not read, so a request in it was not run. (Earlier versions
close the connection without it.)"""

TOO_LARGE_LINGER = 5.0
"""Seconds a peer goes on reading (and discarding) what the other end sends
after :data:`FRAME_TOO_LARGE`, so that closing with unread data, which resets
the connection, cannot destroy the answer before the other end reads it."""

READ_SIZE = 64 * 1024
"""Bytes asked for per read of an inbound connection."""

DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_OUTBOX = 10_000
DEFAULT_MAX_OUTBOX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_INBOUND_CONNECTIONS = 1024
DEFAULT_HELLO_TIMEOUT = 5.0
HELLO_MAX_FRAME_SIZE = 64 * 1024
"""Largest first frame (the ``Hello``) accepted: until a connection has
introduced itself it cannot make this peer buffer more than this."""
CLOSE_GRACE = 1.0
"""Seconds a closing connection has to flush what is buffered for it before it is aborted."""
BACKOFF_MIN = 0.02
BACKOFF_MAX = 1.0
DEFAULT_CONNECT_TIMEOUT = 5.0
REFUSAL_LOG_INTERVAL = 30.0
"""Seconds between two warnings about connections refused from the same host."""
MAX_ADDRESS_LENGTH = 1024
"""Longest address a Hello may give."""
FILES_RESERVED = 256
"""Open files a listening transport wants beside ``max_inbound_connections``
(its peers, snapshot files, the storage): at start it raises the process's
soft limit on open files to fit both, as far as the hard limit allows."""
MAX_LEARNED_ADDRESSES = 1024
"""Addresses kept from Hello frames of peers with no address set by
:meth:`Transport.set_address`; beyond it the oldest learned one is forgotten."""

def encode_hello(name: str, address: str, cluster_id: str | None) -> bytes:
    """The Hello frame of a peer: ``[name, address]``, and ``cluster_id`` (if
    known) as an added field (``x``; see :mod:`~raftlib.transport.framing`),
    which decoders of earlier versions, strict about the body's two fields,
    do not see."""
    return encode_frame(HELLO, [name, address], [cluster_id] if cluster_id else None)


class _OtherCluster(Exception):
    """A connection's Hello presented a cluster ID other than this peer's."""


def _describe_other_cluster(name: str, address: str, theirs: str, ours: str) -> str:
    """Why a peer of cluster ``theirs`` is refused, and what to check."""
    return (f"{name[:64]!r} at {address} belongs to another cluster (cluster ID {theirs!r}; this peer's is "
            f"{ours}): two clusters share addresses (a member of another cluster listens at an address this "
            f"cluster's configuration has, or the other way round), or a peer runs on a data directory of "
            f"another cluster; check the members' addresses and data directories")


OnMessage = Callable[[Message], None]
OnFrame = Callable[[str, Any, "Connection"], Awaitable[None]]


# --------------------------------------------------------------------------- addresses


MAX_UNIX_PATH = 103 if sys.platform == "darwin" else 107
"""The longest Unix socket path, in bytes, that can be bound or connected to
(``sun_path`` less its terminating NUL)."""


class Endpoint(NamedTuple):
    """A parsed address. For ``kind == "unix"``, ``host`` is the socket path and ``port`` is ``None``."""

    kind: Literal["tcp", "unix"]
    host: str
    port: int | None


def _parse_port(addr: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"address {addr!r}: port {text!r} is not a number")
    port = int(text)
    if port > 65535:
        raise ConfigError(f"address {addr!r}: port {port} is out of range 0-65535")
    return port


def parse_address(addr: str) -> Endpoint:
    """Parse ``"host:port"``, ``"[v6]:port"`` or ``"unix:/path"``.

    Raises :class:`~raftlib.errors.ConfigError` describing what is wrong.
    Port 0 is accepted (it asks the OS for a free port when listening).
    """
    if not isinstance(addr, str):
        raise ConfigError(f"address must be a str, got {type(addr).__name__}")
    if addr.startswith("unix:"):
        path = addr[len("unix:") :]
        if not path or "\0" in path:
            raise ConfigError(f"address {addr!r}: unix socket path is empty or contains NUL")
        if path.startswith("~"):
            full = os.path.expanduser(path)
            example = f", as in 'unix:{full}'" if full != path else ""
            raise ConfigError(f"address {addr!r}: '~' is not expanded in a unix socket path; give the full "
                              f"path{example}")
        if path.endswith("/"):
            raise ConfigError(f"address {addr!r}: unix socket path ends with '/'; it must name a file, "
                              f"as in 'unix:/run/raftlib/s1.sock'")
        size = len(os.fsencode(path))
        if size > MAX_UNIX_PATH:
            raise ConfigError(
                f"address {addr!r}: unix socket path is {size} bytes, the system allows {MAX_UNIX_PATH} "
                f"(choose a shorter path)"
            )
        return Endpoint("unix", path, None)
    scheme, sep, _ = addr.partition("://")
    if sep and scheme.isalpha():
        raise ConfigError(f"address {addr!r}: expected 'host:port' without a scheme ({scheme + sep!r}), "
                          f"'[ipv6]:port' or 'unix:/path'")
    if addr.startswith("["):
        host, sep, port_text = addr[1:].partition("]:")
        if not sep:
            raise ConfigError(f"address {addr!r}: expected '[ipv6]:port'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"address {addr!r}: {host!r} is not an IPv6 address") from None
        return Endpoint("tcp", host, _parse_port(addr, port_text))
    host, sep, port_text = addr.rpartition(":")
    if not sep:
        raise ConfigError(f"address {addr!r}: expected 'host:port', '[ipv6]:port' or 'unix:/path'")
    if not host or any(c.isspace() for c in host):
        raise ConfigError(f"address {addr!r}: missing or invalid host")
    if ":" in host:
        raise ConfigError(f"address {addr!r}: IPv6 addresses must be written in brackets, as '[::1]:port'")
    return Endpoint("tcp", host, _parse_port(addr, port_text))


def format_address(host: str, port: int) -> str:
    """The ``host:port`` text of a TCP endpoint, bracketing IPv6 hosts."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _open(endpoint: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a stream to ``endpoint``."""
    if endpoint.kind == "unix":
        return await asyncio.open_unix_connection(endpoint.host)
    return await asyncio.open_connection(endpoint.host, endpoint.port)


async def _refuse_live_unix_socket(path: str, timeout: float = 1.0) -> bool:
    """Raise ``OSError(EADDRINUSE)`` if a process accepts connections on the
    Unix socket at ``path``; a stale socket file (nothing listening) passes.
    Returns whether there is one, to be replaced.

    Only a refused connection proves the file stale. Any other failure (no
    write permission on another user's socket, say) says nothing about a
    listener, so it is raised, naming the path, rather than taken as stale.
    """
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False  # binding fails on its own: "address already in use"
    except OSError:
        return False
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_unix_connection(path)
    except TimeoutError:
        pass  # a listener too busy to accept is still a listener
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return True  # refused, or gone: left behind by a process that is gone
        raise OSError(
            exc.errno,
            f"unix socket {path!r} already exists and this process cannot tell whether another one "
            f"listens there ({exc.strerror or exc}); remove the file if nothing uses it, or choose another path",
        ) from None
    else:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    raise AddressInUse(errno.EADDRINUSE, f"unix socket {path!r} is in use by a running process listening there; "
                                         f"stop it or choose another path")


LOCK_SUFFIX = ".lock"
"""A transport listening on the Unix socket ``path`` holds ``path + LOCK_SUFFIX``."""
_LOCK_ATTEMPTS = 5


def _lock_unix_path(path: str) -> int:
    """Take the lock file of the Unix socket ``path`` (absolute) and return
    its descriptor, to be held for as long as the socket is served and given
    to :func:`_unlock_unix_path`.

    Of the processes that start on one path at the same time only one gets
    it; the others raise :class:`~raftlib.errors.AddressInUse` at once,
    before they look at the socket file, so no two of them can both find a
    stale file and replace it. The lock is ``flock()``: the kernel drops it
    when its holder dies, however it dies, and a lock file left behind is
    simply taken again. Raises ``OSError`` naming the path if the lock file
    cannot be opened.
    """
    import fcntl  # POSIX only, as Unix socket servers are in asyncio

    lock = path + LOCK_SUFFIX
    for _ in range(_LOCK_ATTEMPTS):
        fd, writable = _open_lock_file(path, lock)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _unix_lock_error(path, lock, OSError(errno.EISDIR, "not a regular file"))
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Its last holder unlinks the file before letting go of it (see
            # _unlock_unix_path): a lock on a file no longer at the path
            # keeps nobody out, so open the one there now and try again.
            if _same_file(fd, lock):
                if writable and st.st_nlink == 1:  # not a hard link to some other file
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if holder == str(os.getpid()):
                raise AddressInUse(
                    errno.EADDRINUSE,
                    f"unix socket {path!r} is already used by this process (pid {holder}): another of its peers "
                    f"is starting or serving there (or one whose event loop has closed, until its stop()); stop "
                    f"that peer, or give each peer its own path",
                ) from None
            pid = f" (pid {holder})" if _is_running(holder) else ""
            raise AddressInUse(
                errno.EADDRINUSE,
                f"unix socket {path!r} is held by another process{pid}, starting or serving there (it holds the "
                f"lock file {lock!r}); stop that process or choose another path",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise AddressInUse(errno.EADDRINUSE, f"unix socket {path!r}: its lock file {lock!r} keeps being "
                                         f"replaced by other processes starting there; try again")


def _open_lock_file(path: str, lock: str) -> tuple[int, bool]:
    """Open (or create) ``lock``, the lock file of the Unix socket ``path``,
    and say whether it is open for writing. Another user's lock file, left
    by a process of theirs, is opened for reading if it cannot be written:
    its lock still tells whether that process is running."""
    # Not following a symlink: in a shared directory it may point anywhere.
    flags = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        return os.open(lock, flags | os.O_RDWR | os.O_CREAT, 0o666), True
    except PermissionError as exc:
        with contextlib.suppress(OSError):
            return os.open(lock, flags | os.O_RDONLY), False
        raise _unix_lock_error(path, lock, exc) from None
    except OSError as exc:
        raise _unix_lock_error(path, lock, exc) from None


def _is_running(pid: str) -> bool:
    """Whether ``pid`` (text from a lock file) is the ID of a running process.
    The file may still hold the ID of a process that died: a holder that
    may not write it (another user's file) leaves it as it was."""
    if not pid.isdigit() or int(pid) == 0:
        return False
    try:
        os.kill(int(pid), 0)
    except PermissionError:
        return True  # running, as another user
    except (OSError, OverflowError):
        return False
    return True


def _same_file(fd: int, path: str) -> bool:
    """Whether the file open as ``fd`` is the one at ``path``."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _unlock_unix_path(path: str, fd: int) -> None:
    """Remove the lock file of the Unix socket ``path`` taken by
    :func:`_lock_unix_path` as ``fd``, and release it. Removed first, while
    still held, so that a process that opened it meanwhile sees that it was
    replaced (:func:`_same_file`) rather than holding a lock nobody else can see."""
    try:
        with contextlib.suppress(OSError):
            if _same_file(fd, path + LOCK_SUFFIX):
                os.unlink(path + LOCK_SUFFIX)
    finally:
        os.close(fd)


def _remove_unix_files(path: str, inode: tuple[int, int], lock_fd: int) -> None:
    """Unlink the socket file at ``path`` if it is still the one with
    ``inode`` (``(st_dev, st_ino)``), then remove and release its lock file."""
    with contextlib.suppress(OSError):
        st = os.stat(path)
        if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == inode:
            os.unlink(path)
    _unlock_unix_path(path, lock_fd)


_SERVED_UNIX_SOCKETS: dict[str, tuple[tuple[int, int], int]] = {}
"""Path -> socket inode and lock file descriptor of every Unix socket a
transport of this process listens on (only one can hold a path's lock),
until it is closed: removed at exit if it never was (a program that returns
from ``asyncio.run`` without stopping its peer), as ``kill -9`` cannot."""


def _remove_unclosed_unix_sockets() -> None:
    while _SERVED_UNIX_SOCKETS:
        path, (inode, lock_fd) = _SERVED_UNIX_SOCKETS.popitem()
        _remove_unix_files(path, inode, lock_fd)


def _forget_unix_socket(path: str, lock_fd: int) -> None:
    """Take the socket at ``path`` out of :data:`_SERVED_UNIX_SOCKETS` if it is the one locked by ``lock_fd``."""
    if _SERVED_UNIX_SOCKETS.get(path, (None, None))[1] == lock_fd:
        del _SERVED_UNIX_SOCKETS[path]


atexit.register(_remove_unclosed_unix_sockets)
if hasattr(os, "register_at_fork"):
    # A child forked without exec must not remove its parent's files when it exits.
    os.register_at_fork(after_in_child=_SERVED_UNIX_SOCKETS.clear)


def _unix_lock_error(path: str, lock: str, exc: OSError) -> OSError:
    """``exc`` (from opening ``lock``, the lock file of ``path``) with a message that names the path."""
    if exc.errno in (errno.EACCES, errno.EPERM) and os.path.lexists(lock):
        return OSError(exc.errno, f"cannot listen on unix socket {path!r}: no permission to open its lock "
                                  f"file {lock!r} (another user's?); remove it if nothing uses the socket")
    if exc.errno in (errno.EISDIR, errno.ELOOP, errno.EMLINK):  # EMLINK: a symlink, on FreeBSD
        return OSError(exc.errno, f"cannot listen on unix socket {path!r}: its lock file {lock!r} is not a "
                                  f"regular file; remove it or choose another path")
    return _unix_bind_error(path, exc)


def _bind_unix_socket(path: str, stale: bool) -> socket.socket:
    """A Unix stream socket bound to ``path``, in place of the socket file
    there if it is ``stale`` (:func:`_refuse_live_unix_socket` found nothing
    listening on it) and still is. A raftlib process holds the path's lock
    file (:func:`_lock_unix_path`) meanwhile, but a process that does not
    take it may have bound the path since: ``bind()`` then fails rather than
    its socket being unlinked. Raises ``OSError`` naming the path and what
    is wrong."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if stale and _nothing_listens(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise _unix_bind_error(path, exc) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _nothing_listens(path: str) -> bool:
    """Whether a connection to the Unix socket at ``path`` is refused, checked
    without waiting (a Unix socket connects, or fails, at once)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except OSError as exc:
            return exc.errno in (errno.ECONNREFUSED, errno.ENOENT)
    return False


def _unix_bind_error(path: str, exc: OSError) -> OSError:
    """``exc`` (from unlinking or binding ``path``) with a message that names the path and the fix."""
    directory = os.path.dirname(os.path.abspath(path))
    if exc.errno == errno.ENOENT:
        why = f"the directory {directory!r} does not exist"
    elif exc.errno == errno.ENOTDIR:
        why = f"{directory!r} is not a directory"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = f"no permission to create or replace a file in {directory!r}"
    elif exc.errno == errno.EADDRINUSE and stat.S_ISDIR(_mode(path)):
        name = os.path.join(path, "s1.sock")
        why = f"it is a directory: name a socket file in it, as in 'unix:{name}'"
    elif exc.errno == errno.EADDRINUSE and not stat.S_ISSOCK(_mode(path)):
        why = "a file that is not a socket is in the way (remove it or choose another path)"
    elif exc.errno == errno.EADDRINUSE:
        return AddressInUse(exc.errno, f"cannot listen on unix socket {path!r}: another process has just bound it")
    else:
        why = exc.strerror or str(exc)
    return OSError(exc.errno, f"cannot listen on unix socket {path!r}: {why}")


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def connect_error_text(address: str, exc: BaseException) -> str:
    """Why connecting to ``address`` failed with ``exc``, for an error
    message: for a Unix socket, in words that say what to check rather
    than an errno (the file, not a port, decides who may connect)."""
    try:
        endpoint = parse_address(address)
    except ConfigError:
        return repr(exc)
    if endpoint.kind != "unix" or not isinstance(exc, OSError):
        return repr(exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ("no permission: connecting to a unix socket takes write permission on its file and search "
                "permission on the directories above it; run as the member's user, or start the member with a "
                "umask that lets this user in (see 'Unix sockets' in docs/getting-started.md)")
    if exc.errno == errno.ENOENT:
        return "no socket file there: the member is not running, or runs at another path"
    if exc.errno == errno.ECONNREFUSED:
        if stat.S_ISSOCK(_mode(endpoint.host)):
            return "nothing listens on this socket file: the member that made it has stopped"
        return "this file is not a socket"
    return repr(exc)


async def open_connection(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a stream to ``address`` (``host:port`` or ``unix:/path``), outside any outbox.

    For side channels such as snapshot streaming; raises ``OSError`` if it
    cannot connect and :class:`ConfigError` for a malformed address.
    """
    return await _open(parse_address(address))


async def connect_stream(
    address: str, security: Security = None, timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a stream to ``address`` and run the ``security`` handshake on it.

    Connecting and the handshake are each allowed ``timeout`` seconds. Raises
    ``OSError`` (``TimeoutError`` included) if it cannot connect,
    :class:`~raftlib.errors.AuthenticationFailed` (also an ``OSError``) if
    the handshake fails or times out, and :class:`ConfigError` for a
    malformed address. The caller sends its ``Hello`` next.
    """
    endpoint = parse_address(address)
    # asyncio.timeout rather than wait_for: in Python 3.11, wait_for loses a
    # cancellation that arrives just as the operation completes, and a
    # writer task that ignored close()'s cancellation would hang it.
    async with asyncio.timeout(timeout):
        reader, writer = await _open(endpoint)
    if security is None:
        return reader, writer
    hostname = endpoint.host if endpoint.kind == "tcp" else "localhost"
    try:
        async with asyncio.timeout(timeout):
            await authenticate(reader, writer, security, server_hostname=hostname)
    except TimeoutError:
        writer.close()
        raise AuthenticationFailed(
            f"security handshake with {address} failed: no answer within {timeout:.3g} s (different security settings?)"
        ) from None
    except AuthenticationFailed as exc:
        writer.close()
        raise AuthenticationFailed(f"security handshake with {address} failed: {exc}") from None
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream and wait until its socket is released, ignoring network errors.

    Closing first flushes what is still buffered. A far end that does not read
    it (a hostile or stuck peer) gets :data:`CLOSE_GRACE` seconds; then the
    connection is aborted, so it cannot hold its socket, buffers and task forever.
    """
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_GRACE):  # not wait_for: see connect_stream
            await writer.wait_closed()
    except TimeoutError:  # before OSError, of which it is a subclass
        writer.transport.abort()
    except (OSError, RuntimeError):
        pass
    except BaseException:  # cancelled while waiting
        writer.transport.abort()
        raise


def _remote_of(writer: asyncio.StreamWriter) -> str:
    """A printable name of the far end of an accepted stream. A Unix socket
    that connects has no address of its own (it is not bound): it is named
    by its process and user where the kernel tells them (Linux)."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_address(str(peer[0]), int(peer[1]))
    if peer:
        return f"unix:{peer}"
    sock = writer.get_extra_info("socket")
    if sock is not None and hasattr(socket, "SO_PEERCRED"):
        try:
            pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        except (OSError, struct.error):
            pass
        else:
            return f"unix:(pid {pid}, uid {uid})"
    return "unix:(anonymous)"


# --------------------------------------------------------------------------- connections


class Connection:
    """One accepted inbound connection, as seen by ``on_frame`` handlers.

    ``peer_name`` and ``peer_address`` come from the connection's Hello frame;
    ``remote`` is the socket's far end, for logs.
    """

    def __init__(self, writer: asyncio.StreamWriter, remote: str) -> None:
        self._writer = writer
        self.remote = remote
        self.peer_name: str | None = None
        self.peer_address: str | None = None
        self.peer_cluster_id: str | None = None
        """The cluster ID the Hello presented (``None`` from a client or a peer of an earlier version)."""
        self.on_close: list[Callable[[], Awaitable[None]]] = []
        """Cleanups an ``on_frame`` handler registers; run once when the connection ends."""
        self._opened_at = asyncio.get_running_loop().time()
        """When the connection was accepted, for eviction before its Hello."""
        self._admitted = False
        """Whether it passed the security handshake (if the transport has security), for eviction."""
        self._active_at = self._opened_at
        """When a frame last came in or went out (read or written), for eviction."""
        self._busy: set[asyncio.Task[Any]] = set()
        """The unfinished tasks given to :meth:`track`, for eviction."""
        self._handling = False
        """Whether ``on_frame`` is running for a frame of this connection, for eviction."""
        self._sending = asyncio.Lock()
        """Held by :meth:`send_frame` while it waits for room and writes."""

    @property
    def closed(self) -> bool:
        """Whether the connection is closed or closing."""
        return self._writer.is_closing()

    def track(self, task: asyncio.Task[Any]) -> None:
        """Count ``task`` as work in progress for this connection until it ends.

        For an ``on_frame`` handler that answers in a task of its own (a
        request waiting for a commit, a stream that may send nothing for a
        long time): while such work is in progress the connection is not
        idle, however long it has sent and received nothing: when the
        transport must close a connection to make room
        (``max_inbound_connections``), it closes one with nothing in
        progress, and one with work in progress only if all have some. (The
        connection counts as busy while ``on_frame`` runs for one of its
        frames too.) The task is not cancelled here when the connection
        closes; register that in :attr:`on_close`.
        """
        if not task.done():
            self._busy.add(task)
            task.add_done_callback(self._busy.discard)

    async def send_frame(self, type_name: str, body: Any) -> None:
        """Wait for buffer space, then write one frame back to the peer.

        One frame at a time, each once what is buffered has drained below
        the transport's high-water mark: however many tasks answer on this
        connection, a far end that reads nothing makes this peer buffer
        that much and one frame, not a frame for each of them.

        Raises :class:`ConnectionError` if the connection is closed.
        """
        async with self._sending:
            if not self._writer.is_closing():
                await self._writer.drain()
            if self._writer.is_closing():
                raise ConnectionResetError(f"connection to {self.remote} is closed")
            self._writer.write(encode_frame(type_name, body))
            self._active_at = asyncio.get_running_loop().time()

    def try_send_frame(self, type_name: str, body: Any) -> bool:
        """Write one small frame at once, from code that cannot wait (a timer),
        unless the connection is closed or still has data to send (the peer
        then has that to read first); return whether it was written. Such a
        frame does not count as activity for eviction."""
        if self._writer.is_closing() or self._writer.transport.get_write_buffer_size():
            return False
        self._writer.write(encode_frame(type_name, body))
        return True

    def close(self) -> None:
        """Close the connection (the socket is released on the next loop iteration)."""
        self._writer.close()

    def __repr__(self) -> str:
        return f"<Connection {self.peer_name or '?'} from {self.remote}>"


@dataclass(eq=False)
class _Outbox:
    """Frames waiting for one destination, and the writer task serving them."""

    name: str
    limit: int
    max_bytes: int = DEFAULT_MAX_OUTBOX_BYTES
    frames: collections.deque[bytes] = field(default_factory=collections.deque)
    size: int = 0
    """Bytes in ``frames``. Invariant: ``size == sum(map(len, frames))``."""
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    idle: asyncio.StreamWriter | None = None
    """The connection, while the writer task waits with nothing queued or
    unsent and the Hello written: :meth:`Transport.send` may write a frame
    to it at once instead of waking the task. Cleared by anything that
    wakes the task."""

    def put(self, frame: bytes) -> int:
        """Queue a frame; return how many old frames were dropped to make room
        (beyond ``limit`` frames or ``max_bytes`` bytes; the new one is always kept)."""
        self.idle = None
        dropped = 0
        while self.frames and (len(self.frames) >= self.limit or self.size + len(frame) > self.max_bytes):
            self.size -= len(self.frames.popleft())
            dropped += 1
        self.frames.append(frame)
        self.size += len(frame)
        self.wakeup.set()
        return dropped

    def take_all(self) -> list[bytes]:
        """Remove and return every queued frame."""
        frames = list(self.frames)
        self.frames.clear()
        self.size = 0
        return frames

    async def wait(self) -> None:
        """Wait until something calls :meth:`poke` or :meth:`put`."""
        await self.wakeup.wait()
        self.wakeup.clear()

    def poke(self) -> None:
        """Wake the writer task (address change, peer closed the connection)."""
        self.idle = None
        self.wakeup.set()


_ACCEPT_ITERATIONS = 3
"""Loop iterations from an accepted socket to its handler task's first step:
the task that sets the connection up, connection_made, the handler."""


class _HeldProtocol(asyncio.StreamReaderProtocol):
    """An accepted stream that reads nothing until ``start_tls`` takes over.

    Reading starts with the connection, before the task serving it has run;
    a client's TLS ClientHello read by then would sit in the plain
    ``StreamReader``, never reach the TLS handshake, and stall it.
    ``loop.start_tls`` resumes reading once its TLS protocol is in place.
    """

    early = b""
    """The first bytes read despite the pause. uvloop starts reading right
    after ``connection_made`` whatever it did, so there reading is only
    paused once the serving task runs (see ``_peek`` in :mod:`raftlib.security`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not asserted to be an asyncio.ReadTransport: uvloop's transports
        # are not, and have pause_reading() all the same.
        transport.pause_reading()  # type: ignore[attr-defined]
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.early:
            self.early = data[:16]
        super().data_received(data)


class _PeerClosed(ConnectionError):
    """The far end closed an outbound connection."""


# --------------------------------------------------------------------------- transport


class Transport:
    """Sends Raft messages to named peers and receives them from any peer.

    Parameters:
        name: this peer's name, sent in Hello frames.
        listen: the address to listen on (``"127.0.0.1:0"`` picks a free port).
        on_message: called (synchronously) with every well-formed Raft message
            received. Exceptions it raises are logged and otherwise ignored.
        on_frame: awaited with ``(type name, body, connection)`` for frames that
            are not Raft messages; without it such frames are protocol errors.
        advertise: the address announced to peers in Hello frames, if it is
            not the listening one (a proxy or NAT in front of this peer).
        max_frame_size: largest payload accepted from a peer.
        max_outbox: frames queued per destination before the oldest are dropped.
        max_outbox_bytes: bytes queued per destination before the oldest
            frames are dropped (the newest frame is always queued).
        max_inbound_connections: connections served at once. Beyond it a new
            connection takes the place of the one open longest among those
            not yet past their Hello (those that passed the security
            handshake last), or of the one idle longest among those
            past their Hello (first those with no work in progress: no
            ``on_frame`` running for them, nothing :meth:`Connection.track`
            counts), the Raft link of each peer
            :meth:`set_address` named excepted (with a warning at most every
            :data:`REFUSAL_LOG_INTERVAL` seconds per remote host); if there is
            none, it is closed as it arrives (with a warning at most once a second).
        hello_timeout: seconds an accepted connection has to complete its
            Hello frame (of at most :data:`HELLO_MAX_FRAME_SIZE` bytes).
        connect_timeout: seconds allowed for one connection attempt.
        security: how connections are authenticated (:mod:`raftlib.security`);
            ``None`` for plain connections.
        logger: where to log; ``logging.getLogger("raftlib.transport")`` by default.

    :attr:`cluster_id` (``None`` at first) is set by the owner once it knows
    its cluster's ID. All methods must be called from the event loop's thread.
    """

    def __init__(
        self,
        name: str,
        listen: str,
        *,
        on_message: OnMessage,
        on_frame: OnFrame | None = None,
        advertise: str | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_outbox: int = DEFAULT_MAX_OUTBOX,
        max_outbox_bytes: int = DEFAULT_MAX_OUTBOX_BYTES,
        max_inbound_connections: int = DEFAULT_MAX_INBOUND_CONNECTIONS,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        security: Security = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
            raise ConfigError(f"Transport name must be a non-empty str of at most {MAX_NAME_LENGTH} characters")
        if type(max_frame_size) is not int or max_frame_size <= 0:
            raise ConfigError(f"max_frame_size must be a positive int, got {max_frame_size!r}")
        if type(max_outbox) is not int or max_outbox <= 0:
            raise ConfigError(f"max_outbox must be a positive int, got {max_outbox!r}")
        for what, limit in (("max_outbox_bytes", max_outbox_bytes), ("max_inbound_connections", max_inbound_connections)):
            if type(limit) is not int or limit <= 0:
                raise ConfigError(f"{what} must be a positive int, got {limit!r}")
        if isinstance(hello_timeout, bool) or not isinstance(hello_timeout, (int, float)) or not hello_timeout > 0:
            raise ConfigError(f"hello_timeout must be a positive number, got {hello_timeout!r}")
        self.max_outbox_bytes = max_outbox_bytes
        self.max_inbound_connections = max_inbound_connections
        self.hello_timeout = float(hello_timeout)
        self._over_capacity_unlogged = 0
        """Connections refused for ``max_inbound_connections`` since the last warning."""
        self._over_capacity_logged_at: float | None = None
        self.name = name
        self._cluster_id: str | None = None
        self.listen = listen
        self._listen_endpoint = parse_address(listen)
        if advertise is not None:
            parse_address(advertise)
        self.advertise = advertise
        self._on_message = on_message
        self._on_frame = on_frame
        self.max_frame_size = max_frame_size
        self.max_outbox = max_outbox
        self.connect_timeout = connect_timeout
        if isinstance(security, TLSConfig):
            security.server_context()  # load the files now: bad ones fail here, not on the first connection
            security.client_context()
        self.security = security
        self._refusals: dict[str, tuple[float, int]] = {}
        """Remote host and reason -> (time of the last refusal warning, refusals since)."""
        self.log = logger or logging.getLogger("raftlib.transport")
        self.stats: dict[str, int] = {
            "frames_sent": 0,
            "frames_received": 0,
            "messages_sent": 0,
            "messages_received": 0,
            "bytes_sent": 0,
            "bytes_received": 0,
            "connections_accepted": 0,
            "dropped": 0,
            "protocol_errors": 0,
            "over_capacity": 0,
            "evicted": 0,
            "connect_failures": 0,
            "refused": 0,
        }
        self._address: str | None = None
        self._addresses: dict[str, str] = {}
        self._learned: dict[str, None] = {}
        """Names in ``_addresses`` only because of a Hello, oldest first."""
        self._outboxes: dict[str, _Outbox] = {}
        self._server: asyncio.Server | None = None
        self._inbound: dict[asyncio.Task[Any], Connection] = {}
        """The connections served, counted against ``max_inbound_connections``."""
        self._evicted: set[asyncio.Task[Any]] = set()
        """Tasks of connections closed to make room, until they end."""
        self._raft_links: dict[str, Connection] = {}
        """Name -> the connection that delivered the latest Raft message from it."""
        self._unix_path: str | None = None
        self._unix_inode: tuple[int, int] | None = None
        self._unix_lock: int | None = None
        """Descriptor of the socket's lock file, held while listening on a Unix socket."""
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        """The address peers should use: ``advertise`` if given (for example a
        proxy or NAT address in front of this one), else the listening address
        (after :meth:`start`, with the real port, or the absolute path of a
        Unix socket given as a relative one)."""
        return self.advertise or self._address or self.listen

    @property
    def addresses(self) -> dict[str, str]:
        """A copy of the address book."""
        return dict(self._addresses)

    @property
    def connections_open(self) -> int:
        """Inbound connections served now (other peers', clients', forwarded requests')."""
        return len(self._inbound)

    async def start(self) -> None:
        """Start listening. Raises :class:`OSError` if the address cannot be bound."""
        if self._closed:
            raise RuntimeError("transport is closed")
        if self._server is not None:
            return
        self._make_room_for_files()
        endpoint = self._listen_endpoint
        loop = asyncio.get_running_loop()
        protocol = _HeldProtocol if isinstance(self.security, TLSConfig) else asyncio.StreamReaderProtocol

        def accepted() -> asyncio.StreamReaderProtocol:
            return protocol(asyncio.StreamReader(loop=loop), self._serve_inbound, loop=loop)

        if endpoint.kind == "unix":
            # Absolute: close() removes these files even if the working directory changed.
            path = os.path.abspath(endpoint.host)
            # A socket file already at the path is replaced only if nothing
            # listens there: one left by a crashed process, not the address
            # of a process still running. Both are decided holding the lock
            # file, so that of two processes starting at once on a stale
            # file only one replaces it. The socket is bound here rather
            # than by asyncio, so that what goes wrong names the path.
            self._unix_lock = _lock_unix_path(path)
            try:
                stale = await _refuse_live_unix_socket(endpoint.host)
                sock = _bind_unix_socket(endpoint.host, stale)
                try:
                    st = os.stat(path)
                    self._server = await loop.create_unix_server(accepted, sock=sock)
                except BaseException:
                    sock.close()
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    raise
            except BaseException:
                _unlock_unix_path(path, self._unix_lock)
                self._unix_lock = None
                raise
            self._unix_path, self._unix_inode = path, (st.st_dev, st.st_ino)
            _SERVED_UNIX_SOCKETS[path] = (self._unix_inode, self._unix_lock)
            # Absolute, as for the port of a TCP address given with port 0:
            # the others resolve a path in their own working directories.
            self._address = f"unix:{path}"
        else:
            try:
                self._server = await loop.create_server(accepted, host=endpoint.host, port=endpoint.port,
                                                        reuse_address=True)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUse(errno.EADDRINUSE, f"cannot listen on {self.listen}: another process is "
                                                         f"listening there; stop it or choose another port") from None
                if exc.errno == errno.EADDRNOTAVAIL or (exc.errno is None and type(exc) is OSError):
                    # From Python 3.13, asyncio skips each address of the host
                    # that fails with EADDRNOTAVAIL and, when none is left,
                    # raises an OSError without an errno: give the errno back.
                    raise OSError(errno.EADDRNOTAVAIL, f"cannot listen on {self.listen}: no network interface here "
                                                       f"has that address; listen on one of this host's addresses "
                                                       f"(or 0.0.0.0)") from exc
                # Of the same class and errno (a gaierror for a host name
                # that does not resolve), naming the address.
                raise type(exc)(exc.errno, f"cannot listen on {self.listen}: {exc.strerror or exc}") from exc
            self._address = self._bound_address(endpoint)
        self.log.debug("%s listening on %s", self.name, self._address)

    def _make_room_for_files(self) -> None:
        """Raise the process's soft limit on open files to fit
        ``max_inbound_connections`` and :data:`FILES_RESERVED` more, as far
        as the hard limit allows; warn if that is not enough. Below it, the
        limit on connections protects nothing: a stranger opening
        connections would take the last file descriptors first, and this
        peer could open none for its peers, its snapshots or its clients."""
        try:
            import resource
        except ImportError:  # not POSIX
            return
        needed = self.max_inbound_connections + FILES_RESERVED
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft >= needed:
            return
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (OSError, ValueError) as exc:
                self.log.debug("%s: cannot raise the limit on open files to %d: %s", self.name, target, exc)
            else:
                self.log.info("%s: raised the limit on open files from %d to %d (max_inbound_connections "
                              "and %d more)", self.name, soft, target, FILES_RESERVED)
                soft = target
        if soft < needed:
            self.log.warning(
                "%s: this process may open %d files (ulimit -n; its hard limit is %d), fewer than "
                "max_inbound_connections (%d) and %d more: strangers opening connections could leave it none "
                "for its peers; raise the limit or lower max_inbound_connections",
                self.name, soft, hard, self.max_inbound_connections, FILES_RESERVED,
            )

    def _bound_address(self, endpoint: Endpoint) -> str:
        """The ``host:port`` actually bound, for an address given with port 0."""
        assert self._server is not None and endpoint.port is not None
        sockname = self._server.sockets[0].getsockname()
        host = endpoint.host if _is_ip_literal(endpoint.host) or endpoint.port else str(sockname[0])
        return format_address(host, int(sockname[1]))

    async def close(self) -> None:
        """Stop listening, end every task and close every socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._close()
        finally:
            # Even if cancelled part way: a second close() does nothing, and
            # the path must not stay locked for as long as this process lives.
            if self._server is not None:
                self._server.close()
            self._remove_unix_socket()
        for outbox in self._outboxes.values():
            outbox.take_all()

    async def _close(self) -> None:
        """What :meth:`close` awaits: stop accepting, end every task, let the server close."""
        if self._server is not None:
            loop = asyncio.get_running_loop()
            if isinstance(loop, BaseSelectorEventLoop):
                # Stop accepting before closing the server: asyncio sets an
                # accepted connection up in a task, a loop iteration later,
                # and if the server closed meanwhile it drops the connection
                # with its socket still open. Its handler, once started, sees
                # that this transport is closed and closes the connection.
                for sock in self._server.sockets:
                    loop.remove_reader(sock.fileno())
                for _ in range(_ACCEPT_ITERATIONS):
                    await asyncio.sleep(0)
            self._server.close()
        # Repeat until no task is left. A task that missed its cancellation
        # (it arrived just as what the task awaited completed) is cancelled
        # again on the next round.
        for _ in range(100):
            await asyncio.sleep(0)
            tasks = [t for t in self._all_tasks() if not t.done()]
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            done, _ = await asyncio.wait(tasks, timeout=0.1)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved, as gather(return_exceptions=True) would
        if self._server is not None:
            await self._server.wait_closed()

    def _all_tasks(self) -> list[asyncio.Task[Any]]:
        tasks = [o.task for o in self._outboxes.values() if o.task is not None]
        return tasks + list(self._inbound) + list(self._evicted)

    def _remove_unix_socket(self) -> None:
        """Unlink the socket file this transport created, if it is still
        ours, then remove and release its lock file."""
        if self._unix_inode is None or self._unix_path is None or self._unix_lock is None:
            return
        _forget_unix_socket(self._unix_path, self._unix_lock)
        inode, lock, self._unix_inode, self._unix_lock = self._unix_inode, self._unix_lock, None, None
        _remove_unix_files(self._unix_path, inode, lock)

    def _after_fork_in_child(self) -> None:
        """In a child forked without exec: give up the child's copies of the
        listening socket and the Unix socket's lock, and never remove the
        parent's socket file. The listening socket's descriptor is pointed at
        ``/dev/null`` rather than closed, so that nothing here closes a number
        the child may reuse."""
        if self._server is not None:
            devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            try:
                for sock in self._server.sockets:
                    os.dup2(devnull, sock.fileno(), inheritable=False)
            finally:
                os.close(devnull)
        if self._unix_lock is not None:  # (register_at_fork cleared _SERVED_UNIX_SOCKETS already)
            os.close(self._unix_lock)
            self._unix_lock = None
        self._unix_inode = None
        self._closed = True

    # ------------------------------------------------------------------ address book

    def set_address(self, name: str, address: str) -> None:
        """Record (or change) where peer ``name`` listens. Raises ConfigError on a bad address.

        A Hello no longer changes this address (see :meth:`_accept_hello`).
        """
        parse_address(address)
        self._learned.pop(name, None)
        old = self._addresses.get(name)
        self._addresses[name] = address
        if old != address and name in self._outboxes:
            self._outboxes[name].poke()  # reconnect to the new address

    def update_addresses(self, mapping: Mapping[str, str]) -> None:
        """Merge ``mapping`` (name to address) into the address book."""
        for address in mapping.values():
            parse_address(address)
        for name, address in mapping.items():
            self.set_address(name, address)

    def remove_address(self, name: str) -> None:
        """Forget peer ``name``: queued messages are dropped and its connection closed."""
        self._learned.pop(name, None)
        if self._addresses.pop(name, None) is not None and name in self._outboxes:
            self._outboxes[name].poke()

    # ------------------------------------------------------------------ sending

    def send(self, msg: Message) -> None:
        """Queue ``msg`` for ``msg.dst``. Never blocks; never raises on network trouble.

        Messages to a peer without a known address, or sent after
        :meth:`close`, are dropped. Raises :class:`TypeError` if ``msg`` is not
        a Raft message (a programming error).
        """
        frame = encode_message(msg)
        dst = msg.dst
        if self._closed or dst not in self._addresses:
            self.stats["dropped"] += 1
            reason = "transport closed" if self._closed else "no known address"
            self.log.debug("%s: dropping %s to %s: %s", self.name, type(msg).__name__, dst, reason)
            return
        stats = self.stats
        stats["messages_sent"] += 1
        outbox = self._outboxes.get(dst)
        if outbox is not None and outbox.idle is not None:
            writer = outbox.idle
            # Straight to the socket when the kernel took everything before:
            # no turn of the event loop for the writer task. Otherwise the
            # task sends it and waits for the buffer to drain.
            if not writer.is_closing() and writer.transport.get_write_buffer_size() == 0:
                writer.write(frame)
                stats["frames_sent"] += 1
                stats["bytes_sent"] += len(frame)
                return
        if outbox is None:
            outbox = self._outboxes[dst] = _Outbox(dst, self.max_outbox, self.max_outbox_bytes)
        if outbox.task is None:
            outbox.task = asyncio.get_running_loop().create_task(
                self._writer_loop(outbox), name=f"raftlib-transport-writer-{self.name}->{dst}"
            )
        dropped = outbox.put(frame)
        if dropped:
            self.stats["dropped"] += dropped

    async def _writer_loop(self, outbox: _Outbox) -> None:
        """Serve one destination forever: connect, send batches, reconnect on errors."""
        backoff = BACKOFF_MIN
        refusals = 0
        while True:
            while not outbox.frames:
                await outbox.wait()
            address = self._addresses.get(outbox.name)
            if address is None:
                self._drop_queued(outbox, "its address was removed")
                continue
            try:
                reader, writer = await connect_stream(address, self.security, self.connect_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                self.stats["connect_failures"] += 1
                # A peer that is stopping can end one handshake midway too: warn
                # once the refusals repeat, and only once per series. No
                # permission (a Unix socket's file) is no passing failure: at once.
                refusals = refusals + 1 if isinstance(exc, (AuthenticationFailed, PermissionError)) else 0
                if refusals == (1 if isinstance(exc, PermissionError) else 2):
                    self.log.warning("%s: cannot connect to %s at %s: %s", self.name, outbox.name, address,
                                     connect_error_text(address, exc) if isinstance(exc, PermissionError) else exc)
                else:
                    self.log.debug("%s: cannot connect to %s at %s: %r", self.name, outbox.name, address, exc)
                # What queued up for an unreachable peer is stale by the time it
                # returns, and would hold memory meanwhile: Raft resends what the
                # peer still needs from its progress, so drop it.
                self._drop_queued(outbox, "it is unreachable")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            refusals = 0
            failed = False
            try:
                await self._write_batches(outbox, address, reader, writer)
            except OSError as exc:  # includes ConnectionError and _PeerClosed
                failed = True
                self.log.info("%s: connection to %s at %s lost: %r", self.name, outbox.name, address, exc)
            finally:
                await _close_writer(writer)
            if failed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _drop_queued(self, outbox: _Outbox, reason: str) -> None:
        frames = outbox.take_all()
        self.stats["dropped"] += len(frames)
        self.log.debug("%s: dropped %d messages to %s: %s", self.name, len(frames), outbox.name, reason)

    async def _write_batches(
        self, outbox: _Outbox, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Send Hello then every queued frame, batch by batch, until the address
        changes (return) or the connection fails (raise)."""
        peer_closed = asyncio.Event()
        watcher = asyncio.get_running_loop().create_task(self._watch_outbound(reader, outbox, peer_closed))
        try:
            batch = [encode_hello(self.name, self.address, self.cluster_id)]
            while True:
                if self._addresses.get(outbox.name) != address:
                    self.log.debug("%s: address of %s changed; reconnecting", self.name, outbox.name)
                    return
                if peer_closed.is_set():
                    raise _PeerClosed(f"{outbox.name} closed the connection")
                batch.extend(outbox.take_all())
                if batch:
                    data = b"".join(batch)
                    writer.write(data)
                    self.stats["frames_sent"] += len(batch)
                    self.stats["bytes_sent"] += len(data)
                    batch = []
                    await writer.drain()
                if not outbox.frames and not outbox.wakeup.is_set():
                    outbox.idle = writer
                await outbox.wait()
                outbox.idle = None
        finally:
            outbox.idle = None
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch_outbound(self, reader: asyncio.StreamReader, outbox: _Outbox, closed: asyncio.Event) -> None:
        """Notice at once when the far end closes an outbound connection (it
        sends nothing on it), so the writer reconnects before the next batch."""
        try:
            while await reader.read(READ_SIZE):
                pass
        except OSError:
            pass
        closed.set()
        outbox.poke()

    # ------------------------------------------------------------------ receiving

    async def _serve_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Handle one accepted connection until it closes or misbehaves."""
        task = asyncio.current_task()
        assert task is not None
        if len(self._inbound) >= self.max_inbound_connections and not self._evict_idlest():
            self._refuse_over_capacity(writer)
            with contextlib.suppress(asyncio.CancelledError):
                await _close_writer(writer)
            return
        conn = Connection(writer, _remote_of(writer))
        self._inbound[task] = conn
        self.stats["connections_accepted"] += 1
        try:
            if not self._closed and await self._admit(reader, writer, conn):
                conn._admitted = self.security is not None
                await self._read_frames(reader, conn)
        except _OtherCluster as exc:
            self._log_refusal(conn.remote, str(exc))
        except ProtocolError as exc:
            self.stats["protocol_errors"] += 1
            # Keyed by host alone: the reasons of garbage vary with the garbage.
            self._warn_per_host(conn.remote, "protocol", f"closing connection from {conn.remote}: {exc}")
        except OSError as exc:
            self.log.debug("%s: connection from %s failed: %r", self.name, conn.remote, exc)
        except asyncio.CancelledError:
            # Only close() cancels this task, and it is ending anyway. Returning
            # normally matters: asyncio's stream callback calls task.exception(),
            # which would log an error for a cancelled task.
            pass
        except Exception:
            self.log.exception("%s: closing connection from %s after an unexpected error", self.name, conn.remote)
        finally:
            # close() may cancel us here too (the remote had just hung up): the
            # task is ending anyway and must end normally, as above, and still
            # release the socket.
            for cleanup in conn.on_close:
                try:
                    await cleanup()
                except asyncio.CancelledError:
                    pass
                except Exception:
                    self.log.exception("%s: cleanup for the connection from %s failed", self.name, conn.remote)
            with contextlib.suppress(asyncio.CancelledError):
                await _close_writer(writer)
            self._inbound.pop(task, None)
            self._evicted.discard(task)
            if conn.peer_name is not None and self._raft_links.get(conn.peer_name) is conn:
                del self._raft_links[conn.peer_name]

    async def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection) -> bool:
        """Run the security handshake on an accepted connection; False (logged) if it fails."""
        if self.security is None:
            return True
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):  # not wait_for: see connect_stream
                await accept(reader, writer, self.security)
        except AuthenticationFailed as exc:
            self._log_refusal(conn.remote, str(exc))
            return False
        except TimeoutError:
            self._log_refusal(conn.remote, f"no security handshake within {HANDSHAKE_TIMEOUT} s")
            return False
        except OSError as exc:
            self.log.debug("%s: connection from %s ended during the security handshake: %s",
                           self.name, conn.remote, exc)
            return False
        return True

    def _log_refusal(self, remote: str, why: str) -> None:
        """Log a refused connection: a warning per remote host and reason at
        most every :data:`REFUSAL_LOG_INTERVAL` seconds (a misconfigured peer
        retries every second), the others at debug level."""
        self.stats["refused"] += 1
        self._warn_per_host(remote, why, f"refused the connection from {remote}: {why}")

    def _warn_per_host(self, remote: str, kind: str, text: str) -> None:
        """Log ``text`` as a warning at most every :data:`REFUSAL_LOG_INTERVAL`
        seconds per remote host and ``kind``, the others at debug level; a
        stranger opening connection after connection must not flood the log."""
        key = f"{remote.rpartition(':')[0] or remote} {kind}"
        now = asyncio.get_running_loop().time()
        last, suppressed = self._refusals.get(key, (float("-inf"), 0))
        if now - last < REFUSAL_LOG_INTERVAL:
            self._refusals[key] = (last, suppressed + 1)
            self.log.debug("%s: %s", self.name, text)
            return
        if len(self._refusals) >= 1024:
            self._refusals.clear()
        self._refusals[key] = (now, 0)
        more = f" ({suppressed} more like it from this host since the last warning)" if suppressed else ""
        self.log.warning("%s: %s%s", self.name, text, more)

    @property
    def cluster_id(self) -> str | None:
        """This peer's cluster ID: sent in its Hellos, and a connection whose
        Hello presents another is refused (one already open is closed when
        it is set). ``None``: not known yet (an empty peer waiting to be
        added), every peer is accepted."""
        return self._cluster_id

    @cluster_id.setter
    def cluster_id(self, value: str | None) -> None:
        self._cluster_id = value
        for conn in self._inbound.values():
            theirs = conn.peer_cluster_id
            if value is not None and theirs is not None and theirs != value and not conn.closed:
                address = conn.peer_address or conn.remote
                self._log_refusal(conn.remote, _describe_other_cluster(conn.peer_name or "?", address, theirs, value))
                conn.close()

    def linked(self, name: str) -> bool:
        """Whether the connection the latest Raft message from ``name`` came
        on is still open (a peer that stopped has closed it)."""
        conn = self._raft_links.get(name)
        return conn is not None and not conn.closed

    def _evict_idlest(self) -> bool:
        """Close a connection to make room for a new one: the one open
        longest among those still in their security handshake or Hello;
        if there is none, the one idle longest among those past their Hello
        with nothing in progress (no ``on_frame`` running for it, no task
        given to :meth:`Connection.track` running), or if every one has
        something in progress, the one idle longest of all. False if there
        is none.

        A connection that has not introduced itself has shown nothing: a
        correct peer or client sends its Hello at once. Were such
        connections kept until their timeouts, a stranger that opened them
        on every slot, again as each was closed, would lock everyone out.

        The Raft link of a member (the connection its latest Raft message
        came on, for a name :meth:`set_address` gave) is never closed, so
        strangers cannot cut members off. A connection with work in progress
        (a client waiting for a write, or with a change feed open) is closed
        only when all are busy, so that work in progress cannot lock new
        connections out. A client closed here reconnects (``raftlib.connect``
        does so by itself).
        """
        victim: tuple[asyncio.Task[Any], Connection] | None = None
        victim_key = (0, False, 0.0)
        for task, conn in self._inbound.items():
            name = conn.peer_name
            if name is None:  # those that passed the security handshake after those that did not
                key = (0, conn._admitted, conn._opened_at)
            elif self._raft_links.get(name) is conn and name in self._addresses and name not in self._learned:
                continue
            else:
                key = (1, conn._handling or bool(conn._busy), conn._active_at)
            if victim is None or key < victim_key:
                victim, victim_key = (task, conn), key
        if victim is None:
            return False
        task, conn = victim
        busy = len(conn._busy) + conn._handling
        del self._inbound[task]
        self._evicted.add(task)
        conn._writer.transport.abort()  # its task sees the end of the stream and cleans up
        self.stats["evicted"] += 1
        now = asyncio.get_running_loop().time()
        room = f"to make room for a new one ({len(self._inbound) + 1} connections open, max_inbound_connections)"
        if conn.peer_name is None:
            what = (f"closed a connection from {conn.remote} that had not introduced itself after "
                    f"{now - conn._opened_at:.1f} s, {room}")
        else:
            doing = f" with {busy} request(s) in progress (as every connection it could close)" if busy else ""
            what = (f"closed the connection of {conn.peer_name!r} from {conn.remote}, idle for "
                    f"{now - conn._active_at:.1f} s{doing}, {room}")
        self._warn_per_host(conn.remote, "evicted", what)
        return True

    def _refuse_over_capacity(self, writer: asyncio.StreamWriter) -> None:
        """Count (and log, a warning at most once a second) a connection
        closed because ``max_inbound_connections`` are open."""
        self.stats["over_capacity"] += 1
        self._over_capacity_unlogged += 1
        now = asyncio.get_running_loop().time()
        if self._over_capacity_logged_at is None or now - self._over_capacity_logged_at >= 1.0:
            self.log.warning(
                "%s: refused %d connection(s) (the latest from %s): %d connections are open "
                "(max_inbound_connections)",
                self.name, self._over_capacity_unlogged, _remote_of(writer), len(self._inbound),
            )
            self._over_capacity_logged_at = now
            self._over_capacity_unlogged = 0

    async def _read_frames(self, reader: asyncio.StreamReader, conn: Connection) -> None:
        # Until the Hello is in, a frame may hold only HELLO_MAX_FRAME_SIZE
        # bytes and must be complete within hello_timeout: a stranger cannot
        # make this peer buffer much, nor hold a connection by trickling.
        decoder = FrameDecoder(self.max_frame_size, first_frame_size=HELLO_MAX_FRAME_SIZE)
        loop = asyncio.get_running_loop()
        hello_deadline = loop.time() + self.hello_timeout
        head: bytes | None = b"" if self.security is None else None
        """The first bytes, until they tell whether the other end opened a security handshake."""
        while True:
            if conn.peer_name is None:
                try:
                    async with asyncio.timeout_at(hello_deadline):  # not wait_for: see connect_stream
                        data = await reader.read(READ_SIZE)
                except TimeoutError:
                    raise ProtocolError(f"no Hello within {self.hello_timeout:g} s") from None
            else:
                data = await reader.read(READ_SIZE)
            if not data:
                return
            self.stats["bytes_received"] += len(data)
            if head is not None:
                head += data
                refusal = security_refusal(head)
                if refusal is not None:
                    answer, reason = refusal
                    conn._writer.write(answer)  # the other end reports it at once
                    raise ProtocolError(reason)
                if len(head) >= OPENING_SIZE:
                    head = None
            conn._active_at = loop.time()
            try:
                frames = decoder.feed(data)
            except FrameTooLarge as exc:
                if decoder.started and exc.limit == self.max_frame_size and exc.size is not None:
                    await self._refuse_too_large(reader, conn, exc.limit, exc.size)
                raise
            for type_name, body in frames:
                self.stats["frames_received"] += 1
                await self._dispatch(conn, type_name, body)

    async def _refuse_too_large(self, reader: asyncio.StreamReader, conn: Connection, limit: int, size: int) -> None:
        """Tell the other end that a frame of ``size`` bytes is over ``limit``
        (it was not read, so nothing in it ran), then discard what it sends
        until it closes, for at most :data:`TOO_LARGE_LINGER` seconds."""
        conn._writer.write(encode_frame(FRAME_TOO_LARGE, [limit, size]))
        try:
            async with asyncio.timeout(TOO_LARGE_LINGER):
                await conn._writer.drain()
                while await reader.read(READ_SIZE):
                    pass
        except (TimeoutError, OSError):
            pass

    async def _dispatch(self, conn: Connection, type_name: str, body: Any) -> None:
        """Route one inbound frame. Raises ProtocolError for anything malformed."""
        if conn.peer_name is None:
            self._accept_hello(conn, type_name, body)
        elif is_message_type(type_name):
            self._deliver(conn, check_message(decode_message(type_name, body)))
        elif type_name == HELLO:
            raise ProtocolError("second Hello on the same connection")
        elif self._on_frame is not None:
            await self._call_on_frame(conn, type_name, body)
        else:
            raise ProtocolError(f"unexpected frame type {type_name[:64]!r}")

    def _accept_hello(self, conn: Connection, type_name: str, body: Any) -> None:
        """Check the first frame and learn the peer's address from it."""
        if type_name != HELLO:
            raise ProtocolError(f"first frame must be Hello, got {type_name[:64]!r}")
        if type(body) is not list or len(body) not in (2, 3) or not all(type(x) is str for x in body):
            raise ProtocolError("Hello body must be [name, address] (two strings), and a cluster ID")
        name, address, *theirs = body
        if not name or len(name) > MAX_NAME_LENGTH:
            raise ProtocolError(f"Hello name must have 1 to {MAX_NAME_LENGTH} characters")
        if theirs and not 0 < len(theirs[0]) <= MAX_CLUSTER_ID_LENGTH:
            raise ProtocolError(f"Hello cluster ID must have 1 to {MAX_CLUSTER_ID_LENGTH} characters")
        if address:
            if len(address) > MAX_ADDRESS_LENGTH:
                raise ProtocolError(f"Hello address longer than {MAX_ADDRESS_LENGTH} characters")
            try:
                parse_address(address)
            except ConfigError as exc:
                raise ProtocolError(f"Hello address is invalid: {exc}") from None
        if theirs and self.cluster_id is not None and theirs[0] != self.cluster_id:
            raise _OtherCluster(_describe_other_cluster(name, address, theirs[0], self.cluster_id))
        conn.peer_name, conn.peer_address = name, address
        conn.peer_cluster_id = theirs[0] if theirs else None
        if address and name != self.name and self._addresses.get(name) != address:
            self._learn(name, address)

    def _learn(self, name: str, address: str) -> None:
        """Record the address a Hello gave, unless :meth:`set_address` set
        one for ``name``: anyone may connect and claim a member's name, and
        must not redirect this peer's traffic to that member. At most
        :data:`MAX_LEARNED_ADDRESSES` are kept, the oldest forgotten first,
        so that Hellos with ever new names cannot grow the address book."""
        if name in self._addresses and name not in self._learned:
            self.log.debug("%s: keeping the address of %s; a Hello gave %s", self.name, name, address)
            return
        self._learned.pop(name, None)
        while len(self._learned) >= MAX_LEARNED_ADDRESSES:
            self.remove_address(next(iter(self._learned)))
        self.log.debug("%s: learned address of %s: %s", self.name, name, address)
        self.set_address(name, address)
        self._learned[name] = None

    def _deliver(self, conn: Connection, msg: Message) -> None:
        """Hand a decoded message to ``on_message``; its exceptions are only logged."""
        if msg.src != conn.peer_name:
            raise ProtocolError(f"message from {msg.src[:64]!r} on the connection of {conn.peer_name!r}")
        if self._raft_links.get(msg.src) is not conn:
            self._raft_links[msg.src] = conn
        self.stats["messages_received"] += 1
        if msg.dst != self.name:
            self.stats["dropped"] += 1
            self.log.debug("%s: dropping %s addressed to %s", self.name, type(msg).__name__, msg.dst)
            return
        try:
            self._on_message(msg)
        except Exception:
            self.log.exception("%s: on_message failed for %s", self.name, msg.describe())

    async def _call_on_frame(self, conn: Connection, type_name: str, body: Any) -> None:
        """Await ``on_frame``; a ProtocolError it raises closes the connection, and
        so does a ConnectionError (the far end went away while it answered);
        others are logged."""
        assert self._on_frame is not None
        conn._handling = True  # work in progress, for eviction
        try:
            await self._on_frame(type_name, body, conn)
        except (ProtocolError, ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            self.log.exception("%s: on_frame failed for a %s frame from %s", self.name, type_name[:64], conn.remote)
        finally:
            conn._handling = False
