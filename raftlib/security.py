"""Authenticating connections: mutual TLS, or a shared cluster secret.

Every connection raftlib opens (Raft traffic between peers, snapshot
streams, forwarded requests, clients) can be secured in one of two ways,
chosen with the ``tls=`` or ``secret=`` argument of
:func:`~raftlib.start_peer`, :func:`~raftlib.join` and :func:`~raftlib.connect`:

* :class:`TLSConfig`: mutual TLS with the standard :mod:`ssl` module. Both ends
  present a certificate signed by the cluster's CA and check the other's;
  the traffic is encrypted and integrity-protected.
* :class:`SharedSecret`: a challenge-response handshake with HMAC-SHA256
  over a secret every member and client knows. It proves that both ends know
  the secret, but the traffic that follows is neither encrypted nor protected:
  use it only on a network you trust not to tamper with connections.

The two are exclusive: TLS already authenticates both ends.

Theory of operation. Security runs before any frame reaches the Raft core or
a request handler. The server speaks first, so a client learns promptly
whether it was accepted::

    TLS:    (TLS handshake, certificates checked both ways)
            server -> AuthOk []
    secret: server -> Challenge [nonce_s]
            client -> Auth      [nonce_c, HMAC(secret, "raftlib-client" + nonce_s + nonce_c)]
            server -> AuthOk    [HMAC(secret, "raftlib-server" + nonce_c + nonce_s)]

and then the client's usual ``Hello``. A client with a secret does not
wait for the ``Challenge`` to speak: it sends its ``Auth`` frame at once up
to the proof (which needs ``nonce_s``), and the rest after the
``Challenge``. Its bytes are the same, so members of any version read them
as one ``Auth`` frame; and every member hears from the client first, which
a member without the secret handshake needs in order to answer it.

A mismatch is answered in plain text, so that the other end learns why at
once rather than at its timeout: a member secured with TLS answers a
connection that does not open with a TLS handshake with ``TLSRequired []``;
a member without security answers a TLS ClientHello with ``TLSNotUsed []``
(a member with a secret with its ``Challenge``), which the client's TLS
handshake fails to read as TLS, and the start of an ``Auth`` frame with
``SecretNotUsed []``; a member with a secret answers a wrong proof with
``SecretRefused []``. None of these says anything about the secret.

The ``AuthOk`` under TLS matters with
TLS 1.3: there a client finishes its handshake before the server has checked
the client's certificate, and would otherwise learn of a refusal only when a
later read fails. Nonces are 32 random bytes, so a recorded exchange cannot be
replayed; the two directions use different labels, so a server's answer cannot
be reflected back to it as a client's. Each side allows the handshake a
bounded time (:data:`HANDSHAKE_TIMEOUT` on the server) so that a silent
connection cannot hold resources.

Every failure raises :class:`~raftlib.errors.AuthenticationFailed`, with a
message that says what went wrong; the server logs it with the remote address
and closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import secrets
import socket
import ssl
import struct
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import AuthenticationFailed, ConfigError, ProtocolError
from .transport.framing import HEADER_SIZE, FrameDecoder, encode_frame

__all__ = [
    "TLSConfig",
    "SharedSecret",
    "Security",
    "HANDSHAKE_TIMEOUT",
    "security_from",
    "accept",
    "authenticate",
    "make_certificates",
]

HANDSHAKE_TIMEOUT = 5.0
"""Seconds a server allows an accepted connection to complete its security handshake."""

CHALLENGE = "Challenge"
AUTH = "Auth"
AUTH_OK = "AuthOk"
TLS_REQUIRED = "TLSRequired"
"""Sent in plain text by a member secured with TLS to a connection that did
not open with a TLS handshake, just before closing it."""
TLS_NOT_USED = "TLSNotUsed"
"""Sent in plain text by a member without TLS to a connection that opened
with a TLS handshake, just before closing it."""
SECRET_NOT_USED = "SecretNotUsed"
"""Sent in plain text by a member without security to a connection that
opened with the shared-secret handshake, just before closing it."""
SECRET_REFUSED = "SecretRefused"
"""Sent in plain text by a member with a shared secret to a connection whose
proof was wrong, just before closing it."""
NEEDS_TLS = "give tls=, or --cert/--key/--ca on the command line"
"""How a client or peer without TLS is told to connect to a member with it."""
NO_TLS = "connect without tls= (--cert/--key/--ca), or secure the members with it"
"""How a client or peer with TLS is told to connect to a member without it."""
TLS_NOT_SECRET = "give tls= instead of secret= (--cert/--key/--ca instead of --secret-file on the command line)"
"""How a client or peer with a secret is told to connect to a member with TLS."""
NO_SECRET = "connect without secret= (--secret-file), or give the members the secret"
"""How a client or peer with a secret is told to connect to a member without security."""
WRONG_SECRET = "give theirs (secret=, or --secret-file on the command line)"
"""How a client or peer with another secret than the members' is told to connect."""
_TLS_RECORD_HANDSHAKE = 0x16
"""The first byte of a TLS ClientHello (a handshake record). A raftlib frame
starts with its length: a first byte of 0x16 would make it over 350 MB."""
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL"})
"""What OpenSSL reports when the answer to a ClientHello is not TLS at all."""
_NAME_MISMATCH = frozenset({62, 64})
"""OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH."""
NONCE_SIZE = 32
PROOF_SIZE = 32
"""Bytes of an HMAC-SHA256 proof."""
MIN_SECRET_SIZE = 16
_MAX_HANDSHAKE_FRAME = 1024
_CLIENT_LABEL = b"raftlib-client"
_SERVER_LABEL = b"raftlib-server"
_HEADER = struct.Struct(">I")
_AUTH_START = encode_frame(AUTH, [bytes(NONCE_SIZE), bytes(PROOF_SIZE)])[: -(NONCE_SIZE + PROOF_SIZE + 4)]
"""How every Auth frame starts, up to its client nonce (each bytes value
has a 2-byte msgpack header): the first bytes a client with a secret sends."""
OPENING_SIZE = len(_AUTH_START)
"""The first bytes of a connection that :func:`security_refusal` needs to tell
a security handshake from a ``Hello``."""

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TLSConfig:
    """Mutual TLS: this end's certificate and key, and the CA that signs every member's.

    Parameters:
        cert: PEM file with this end's certificate (followed by any intermediate
            certificates).
        key: PEM file with its private key, unencrypted (keep it mode 0600).
        ca: PEM file with the CA certificate(s) to trust. It is the only trust
            root: the system's CAs are not used. During a CA rotation it may
            hold the old and the new CA.
        verify_hostname: also check that a server's certificate names the
            host (or IP address) it was reached at. Off by default: peers are
            named and addressed by the cluster's own membership, addresses
            change (ephemeral ports, NAT, containers), and a certificate
            signed by the cluster's private CA is what admits a member.
            Turn it on when certificates carry the hosts' names or IPs and
            you want a stolen member certificate to be usable only from
            that member's address.

    The files are read when a context is first needed (:func:`~raftlib.start_peer`
    does it at once, so bad files fail there) and again on :meth:`reload`.
    Raises :class:`~raftlib.errors.ConfigError` naming any missing file.
    """

    cert: PathLike
    key: PathLike
    ca: PathLike
    verify_hostname: bool = False
    _contexts: dict[str, ssl.SSLContext] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        missing = []
        for what in ("cert", "key", "ca"):
            value = getattr(self, what)
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                raise ConfigError(f"TLSConfig.{what} must be a file path, got {value!r}")
            if not os.path.isfile(value):
                missing.append(f"{what}={os.fspath(value)}")
        if missing:
            raise ConfigError(f"TLSConfig: no such file: {', '.join(missing)}")
        if not isinstance(self.verify_hostname, bool):
            raise ConfigError(f"TLSConfig.verify_hostname must be a bool, got {self.verify_hostname!r}")

    def server_context(self) -> ssl.SSLContext:
        """The context for accepted connections: requires a client certificate signed by ``ca``."""
        if "server" not in self._contexts:
            self._contexts["server"] = self._build(server=True)
        return self._contexts["server"]

    def client_context(self) -> ssl.SSLContext:
        """The context for outgoing connections: presents ``cert`` and requires a
        server certificate signed by ``ca``."""
        if "client" not in self._contexts:
            self._contexts["client"] = self._build(server=False)
        return self._contexts["client"]

    def reload(self) -> None:
        """Read the files again; new connections use them, open ones are kept.

        Both contexts are built before either replaces the old one, so a
        failure (:class:`~raftlib.errors.ConfigError`) leaves the old ones in use.
        """
        server, client = self._build(server=True), self._build(server=False)
        self._contexts.update(server=server, client=client)

    def _build(self, *, server: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if not server:
            ctx.check_hostname = self.verify_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cafile=os.fspath(self.ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLSConfig: cannot load the CA file {os.fspath(self.ca)}: {exc}") from None
        try:
            ctx.load_cert_chain(os.fspath(self.cert), os.fspath(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"TLSConfig: cannot load the certificate {os.fspath(self.cert)} with the key "
                f"{os.fspath(self.key)}: {exc}"
            ) from None
        return ctx


# --------------------------------------------------------------------------- shared secret


class SharedSecret:
    """A secret shared by every member and client, checked with an HMAC handshake.

    ``secret`` is bytes, or text (used as UTF-8), of at least 16 bytes; make
    one with ``python -c "import secrets; print(secrets.token_hex(32))"``.
    It never appears in ``repr`` or logs. This authenticates connections
    but does not encrypt them (see the module documentation).
    """

    __slots__ = ("_key",)

    def __init__(self, secret: bytes | str) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes):
            raise ConfigError(f"the shared secret must be bytes or str, got {type(secret).__name__}")
        if len(secret) < MIN_SECRET_SIZE:
            raise ConfigError(f"the shared secret must have at least {MIN_SECRET_SIZE} bytes, got {len(secret)}")
        self._key = secret

    @classmethod
    def from_file(cls, path: PathLike) -> SharedSecret:
        """Read the secret from a file (surrounding whitespace is ignored).

        Raises :class:`~raftlib.errors.ConfigError` naming the file if it
        cannot be read or holds too short a secret.
        """
        try:
            with open(path, "rb") as f:
                data = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the secret file {os.fspath(path)}: {exc.strerror or exc}") from None
        try:
            return cls(data)
        except ConfigError as exc:
            raise ConfigError(f"secret file {os.fspath(path)}: {exc}") from None

    def client_proof(self, nonce_s: bytes, nonce_c: bytes) -> bytes:
        """What a client sends to prove it knows the secret."""
        return hmac.digest(self._key, _CLIENT_LABEL + nonce_s + nonce_c, "sha256")

    def server_proof(self, nonce_s: bytes, nonce_c: bytes) -> bytes:
        """What a server answers to prove it knows the secret too."""
        return hmac.digest(self._key, _SERVER_LABEL + nonce_c + nonce_s, "sha256")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SharedSecret) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash((SharedSecret, hmac.digest(b"raftlib-hash", self._key, "sha256")))

    def __repr__(self) -> str:
        return "SharedSecret(<hidden>)"


Security = Union[TLSConfig, SharedSecret, None]
"""How a connection is secured: mutual TLS, a shared secret, or not at all."""


def security_from(tls: TLSConfig | None = None, secret: SharedSecret | bytes | str | None = None) -> Security:
    """Check the ``tls=`` and ``secret=`` arguments of the public API and return
    the one given (a ``secret`` given as bytes or str becomes a :class:`SharedSecret`).
    TLS files are loaded now, so that bad ones fail here.

    Raises :class:`~raftlib.errors.ConfigError` for a wrong type, unusable
    TLS files, or both arguments at once.
    """
    if tls is not None and not isinstance(tls, TLSConfig):
        raise ConfigError(f"tls must be a raftlib.TLSConfig, got {type(tls).__name__}")
    if secret is not None and not isinstance(secret, SharedSecret):
        secret = SharedSecret(secret)
    if tls is not None and secret is not None:
        raise ConfigError("give tls= or secret=, not both: TLS already authenticates both ends")
    if tls is not None:
        tls.server_context()
        tls.client_context()
        return tls
    return secret


# --------------------------------------------------------------------------- handshakes


_CLOSED = (EOFError, ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)
"""What a read or write raises when the other end closes the connection."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: certificate not trusted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, (asyncio.IncompleteReadError, ConnectionError)):
        return "the other end closed the connection during the handshake"
    return str(exc) or type(exc).__name__


def is_tls_hello(data: bytes) -> bool:
    """Whether ``data``, the first bytes received on a connection, start a TLS handshake."""
    return data[:1] == bytes([_TLS_RECORD_HANDSHAKE])


def security_refusal(head: bytes) -> tuple[bytes, str] | None:
    """For a member without security: ``(frame, reason)`` if ``head``, the
    first bytes of a connection, open a TLS or shared-secret handshake (send
    ``frame``, then close the connection, logging ``reason``), else ``None``.
    Fewer than :data:`OPENING_SIZE` bytes may be too few to tell."""
    if is_tls_hello(head):
        return encode_frame(TLS_NOT_USED, []), f"got a TLS handshake: this member does not use TLS ({NO_TLS})"
    if head.startswith(_AUTH_START):
        return encode_frame(SECRET_NOT_USED, []), (
            f"got a shared-secret handshake: this member does not use a shared secret (a client or peer with "
            f"one: {NO_SECRET})"
        )
    return None


async def _peek(writer: asyncio.StreamWriter) -> bytes:
    """The first bytes the other end sent, left in the socket for the TLS
    handshake to read; ``b""`` if it closed first. The stream must not be
    reading (see ``_HeldProtocol`` in :mod:`raftlib.transport.tcp`)."""
    loop = asyncio.get_running_loop()
    transport = writer.transport
    if transport.is_reading():  # type: ignore[attr-defined]
        transport.pause_reading()  # type: ignore[attr-defined]
    early = getattr(transport.get_protocol(), "early", b"")
    if early:
        return bytes(early)  # read already (uvloop): enough to tell plain text from TLS
    # A duplicate of the socket's descriptor: the event loop refuses to watch
    # the one its transport owns, even while the transport is not reading.
    fd = os.dup(writer.get_extra_info("socket").fileno())
    try:
        sock = socket.socket(fileno=fd)
    except BaseException:
        os.close(fd)
        raise
    with sock:
        sock.setblocking(False)
        while True:
            try:
                return sock.recv(16, socket.MSG_PEEK)
            except BlockingIOError:
                pass
            readable: asyncio.Future[None] = loop.create_future()

            def wake(readable: asyncio.Future[None] = readable) -> None:
                if not readable.done():
                    readable.set_result(None)

            loop.add_reader(fd, wake)
            try:
                await readable
            finally:
                loop.remove_reader(fd)  # before the descriptor closes: epoll would go on watching it


_REFUSALS = {
    TLS_REQUIRED: f"the member requires TLS, not a shared secret: {TLS_NOT_SECRET}",
    SECRET_NOT_USED: f"the member does not use a shared secret: {NO_SECRET}",
    SECRET_REFUSED: f"the member refused this shared secret: it is not the one the members have; {WRONG_SECRET}",
}
"""What a client with a secret reports for each refusal a member may send instead of its next handshake frame."""


async def _read_frame(reader: asyncio.StreamReader, expected: str) -> Any:
    """Read exactly one small handshake frame of type ``expected``; return its body.
    Raises :class:`AuthenticationFailed` for a member's refusal (see :data:`_REFUSALS`)."""
    header = await reader.readexactly(HEADER_SIZE)
    if is_tls_hello(header):
        raise ProtocolError(f"expected {expected}, got a TLS handshake: this member does not use TLS ({NO_TLS})")
    (size,) = _HEADER.unpack(header)
    if size > _MAX_HANDSHAKE_FRAME:
        raise ProtocolError(f"expected {expected}, got a frame of {size} bytes (TLS or other traffic?)")
    frames = FrameDecoder(_MAX_HANDSHAKE_FRAME).feed(header + await reader.readexactly(size))
    type_name, body = frames[0]
    if type_name in _REFUSALS and expected != AUTH:  # a member's refusal (a member reading Auth takes none)
        raise AuthenticationFailed(_REFUSALS[type_name])
    if type_name != expected:
        raise ProtocolError(f"expected {expected}, got {type_name[:64]!r} (different security settings?)")
    return body


def _check_bytes_list(body: Any, count: int, what: str) -> list[bytes]:
    if type(body) is not list or len(body) != count or not all(type(x) is bytes for x in body):
        raise ProtocolError(f"malformed {what} frame")
    return body


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, security: Security) -> None:
    """The server side of the handshake, on a connection just accepted.

    The caller bounds it in time. Raises :class:`AuthenticationFailed`
    describing why the connection must be refused, or ``ConnectionResetError``
    if the client closed the connection during the handshake.
    """
    try:
        if isinstance(security, TLSConfig):
            first = await _peek(writer)
            if not first:
                raise EOFError("closed before the handshake")
            if not is_tls_hello(first):
                writer.write(encode_frame(TLS_REQUIRED, []))
                await writer.drain()
                raise AuthenticationFailed(f"TLS handshake failed: the connection does not use TLS (a client or "
                                           f"peer without it: {NEEDS_TLS})")
            await writer.start_tls(security.server_context())
            writer.write(encode_frame(AUTH_OK, []))
        elif isinstance(security, SharedSecret):
            nonce_s = secrets.token_bytes(NONCE_SIZE)
            writer.write(encode_frame(CHALLENGE, [nonce_s]))
            nonce_c, proof = _check_bytes_list(await _read_frame(reader, AUTH), 2, AUTH)
            if len(nonce_c) != NONCE_SIZE or not hmac.compare_digest(proof, security.client_proof(nonce_s, nonce_c)):
                writer.write(encode_frame(SECRET_REFUSED, []))
                with contextlib.suppress(*_CLOSED):  # it is refused either way
                    await writer.drain()
                raise AuthenticationFailed("wrong shared secret")
            writer.write(encode_frame(AUTH_OK, [security.server_proof(nonce_s, nonce_c)]))
        await writer.drain()
    except AuthenticationFailed:
        raise
    except _CLOSED as exc:
        # Not a refusal by this end: the other end gave up (it may be stopping,
        # or it may refuse this end's credentials and say so in its own log).
        raise ConnectionResetError(f"the other end closed the connection during the handshake ({exc!r})") from None
    except (OSError, ProtocolError) as exc:
        raise AuthenticationFailed(_describe(exc)) from None


async def authenticate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, security: Security, *, server_hostname: str
) -> None:
    """The client side of the handshake, on a connection just opened.

    ``server_hostname`` is the host the connection was made to (for SNI,
    and checked against the certificate with ``verify_hostname``). The
    caller bounds it in time. Raises :class:`AuthenticationFailed`.
    """
    try:
        if isinstance(security, TLSConfig):
            await writer.start_tls(security.client_context(), server_hostname=server_hostname)
            _check_bytes_list(await _read_frame(reader, AUTH_OK), 0, AUTH_OK)
        elif isinstance(security, SharedSecret):
            # The Auth frame up to its proof, at once: a member without the
            # secret handshake, which waits for the client to speak, learns
            # what this connection is and says so (see the module docs).
            nonce_c = secrets.token_bytes(NONCE_SIZE)
            opening = encode_frame(AUTH, [nonce_c, bytes(PROOF_SIZE)])[:-PROOF_SIZE]
            writer.write(opening)
            (nonce_s,) = _check_bytes_list(await _read_frame(reader, CHALLENGE), 1, CHALLENGE)
            if len(nonce_s) != NONCE_SIZE:
                raise ProtocolError("malformed Challenge frame")
            auth = encode_frame(AUTH, [nonce_c, security.client_proof(nonce_s, nonce_c)])
            assert auth[:-PROOF_SIZE] == opening
            writer.write(auth[-PROOF_SIZE:])
            (proof,) = _check_bytes_list(await _read_frame(reader, AUTH_OK), 1, AUTH_OK)
            if not hmac.compare_digest(proof, security.server_proof(nonce_s, nonce_c)):
                raise AuthenticationFailed("the server does not know the shared secret")
    except AuthenticationFailed:
        raise
    except EOFError:
        if isinstance(security, TLSConfig):
            # After the TLS handshake, instead of AuthOk: the member checked this end's certificate and refused it.
            raise AuthenticationFailed(
                "the member closed the connection after the TLS handshake instead of accepting it: it does not "
                "trust this client's certificate (give one signed by the CA in the members' ca= file, --ca on "
                "the command line), or it is stopping"
            ) from None
        raise AuthenticationFailed(
            "the server closed the connection during the handshake (does it refuse these credentials?)"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason in _NOT_TLS_REASONS:
            # It answered the ClientHello, in plain text: TLSNotUsed, or a Challenge.
            raise AuthenticationFailed(f"the member does not use TLS (it answered the TLS handshake in plain "
                                       f"text): {NO_TLS}") from None
        if isinstance(exc, ssl.SSLCertVerificationError):
            if exc.verify_code in _NAME_MISMATCH:
                advice = "verify_hostname is on: the member's certificate must name the host or IP it is reached at"
            else:
                advice = "the member's certificate must be signed by a CA in this end's ca= file, --ca on the command line"
            raise AuthenticationFailed(f"{_describe(exc)} ({advice})") from None
        raise AuthenticationFailed(_describe(exc)) from None
    except (OSError, ProtocolError) as exc:
        raise AuthenticationFailed(_describe(exc)) from None


# --------------------------------------------------------------------------- test certificates


def make_certificates(
    out_dir: PathLike,
    names: list[str],
    *,
    ips: tuple[str, ...] = ("127.0.0.1", "::1"),
    dns: tuple[str, ...] = ("localhost",),
    days: int = 365,
) -> dict[str, TLSConfig]:
    """Make a test CA and one certificate and key per name in ``out_dir``.

    Writes ``ca.pem`` and ``ca-key.pem`` (reused if they exist, so that
    certificates for new members made later are signed by the same CA), then
    ``<name>.pem`` and ``<name>-key.pem`` for each name. Every certificate has
    the name as its common name and, as subject alternative names, the name,
    ``dns`` and ``ips``; it is valid for ``days`` days and usable by both a
    server and a client. Keys are ECDSA P-256, written with mode 0600.
    Returns a :class:`TLSConfig` per name. This is what ``raftlib certs``
    runs; it needs the ``cryptography`` package. Raises
    :class:`~raftlib.errors.ConfigError` for a bad name, IP or day count.
    """
    import datetime
    import ipaddress
    import re

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not names:
        raise ConfigError("make_certificates needs at least one name")
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or name == "ca":
            raise ConfigError(f"certificate name {name!r}: use letters, digits, '.', '_', '-' (and not 'ca')")
        if name.endswith("-key"):
            # NAME.pem would be the key file of the name before "-key" (ca-key.pem is the CA's).
            raise ConfigError(f"certificate name {name!r}: a name may not end in '-key' "
                              f"({name}.pem is where the key of {name[:-4]!r} goes)")
    try:
        addresses = [ipaddress.ip_address(ip) for ip in ips]
    except ValueError as exc:
        raise ConfigError(f"certificate IP address: {exc}") from None
    if type(days) is not int or days <= 0:
        raise ConfigError(f"days must be a positive int, got {days!r}")
    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    def write(path: str, data: bytes, private: bool = False) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_path, ca_key_path = os.path.join(out, "ca.pem"), os.path.join(out, "ca-key.pem")
    if os.path.exists(ca_path) and os.path.exists(ca_key_path):
        try:
            with open(ca_path, "rb") as f:
                ca_cert = x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot reuse the CA certificate {ca_path}: {exc}") from None
        try:
            with open(ca_key_path, "rb") as f:
                loaded = serialization.load_pem_private_key(f.read(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot reuse the CA key {ca_key_path}: {exc}") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{ca_key_path}: expected an EC private key")
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if loaded.public_key().public_bytes(*spki) != ca_cert.public_key().public_bytes(*spki):
            # Certificates it signed would fail verification against ca.pem everywhere.
            raise ConfigError(f"the CA key {ca_key_path} does not belong to the CA certificate {ca_path}")
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "raftlib test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(now + datetime.timedelta(days=max(days, 3650)))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        write(ca_key_path, pem_key(ca_key), private=True)
        write(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM))

    configs: dict[str, TLSConfig] = {}
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys([name, *dns])]
        alt_names += [x509.IPAddress(a) for a in addresses]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = os.path.join(out, f"{name}.pem"), os.path.join(out, f"{name}-key.pem")
        write(key_path, pem_key(key), private=True)
        write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        configs[name] = TLSConfig(cert=cert_path, key=key_path, ca=ca_path)
    return configs
