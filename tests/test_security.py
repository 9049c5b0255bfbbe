"""Mutual TLS and the shared-secret handshake: secured clusters work end to
end, and peers and clients without valid credentials are refused, logged,
and never reach the Raft core."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
from click.testing import CliRunner, Result

import raftlib
from raftlib import errors
from raftlib.cli import main
from raftlib.core.messages import RequestVote
from raftlib.security import SharedSecret, TLSConfig, authenticate, make_certificates, security_from
from raftlib.transport import tcp
from raftlib.transport.framing import FrameDecoder, encode_frame
from raftlib.transport.tcp import Transport, connect_stream

from clusterkit import FAST, Cluster, KVStore, eventually, fake_server, first_change, free_port

SNAP = dataclasses.replace(FAST, snapshot_entries=50, snapshot_keep_entries=10, snapshot_chunk_size=1024)
SECRET = b"correct horse battery staple, 32+"


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Warnings of the cluster's peers about refused connections."""
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "refused the connection from 127.0.0.1:" in r.getMessage()]


async def write_many(peer: raftlib.Peer, n: int, prefix: str = "k") -> None:
    for start in range(0, n, 50):
        await asyncio.gather(*(peer.write(["set", f"{prefix}{i}", i]) for i in range(start, min(n, start + 50))))


@pytest.fixture
async def tls_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, tls=True)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def secret_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, secret=SECRET)
    try:
        yield c
    finally:
        await c.close()


def stranger_tls(tmp_path: Path, name: str, trust_cluster: Cluster | None = None) -> TLSConfig:
    """A certificate from another CA; trusting the cluster's CA if ``trust_cluster`` is given
    (so that it is the cluster that refuses it, not the stranger that refuses the cluster)."""
    own = make_certificates(tmp_path / "other-ca", [name])[name]
    if trust_cluster is None:
        return own
    return TLSConfig(own.cert, own.key, trust_cluster.tls_for("client").ca)


async def impersonate(tmp_path: Path, cluster: Cluster, **security: Any) -> None:
    """Send each member a RequestVote of a huge term from a transport with ``security``."""
    evil = Transport("s2", "127.0.0.1:0", on_message=lambda m: None, security=security_from(**security))
    await evil.start()
    try:
        for peer in cluster.live():
            evil.set_address(peer.name, peer.address)
            evil.send(RequestVote(1000, "s2", peer.name, 10**6, 999))
        await asyncio.sleep(0.5)
    finally:
        await evil.close()


# --------------------------------------------------------------------------- no security


@pytest.mark.parametrize("term", [2**63 - 1, 2**62, 2**40])
async def test_a_stranger_s_absurd_term_does_not_wedge_an_unsecured_cluster(
        cluster: Cluster, term: int, caplog: pytest.LogCaptureFixture) -> None:
    """An unsecured cluster takes Raft messages from anyone. A heartbeat of a
    term near 2**63 made every peer adopt that term, and the next election
    needed a term no peer accepts (above 2**63-1), so none ever succeeded.
    Terms grow by one per election: a message that far ahead is dropped with
    a warning and raises the term by a bounded step only; the peers keep
    serving and electing."""
    from raftlib.core.messages import AppendEntries, AppendEntriesResponse
    from raftlib.core.raft import MAX_TERM_STEP

    await cluster.start(3)
    leader = await cluster.leader()
    follower = next(p for p in cluster.live() if p is not leader)
    assert await leader.write(["set", "before", 1]) == ["ok", "before", 1]
    before = leader.status()["term"]
    stranger = Transport("intruder", "127.0.0.1:0", on_message=lambda m: None)
    await stranger.start()
    try:
        for peer in cluster.live():
            stranger.set_address(peer.name, peer.address)
        stranger.send(AppendEntries(term, "intruder", follower.name, 0, 0, (), 0))
        stranger.send(AppendEntriesResponse(term, "intruder", leader.name, True, 0))
        await eventually(lambda: follower.status()["term"] > before and leader.status()["term"] > before)
    finally:
        await stranger.close()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "intruder" in r.getMessage()]
    assert warned and all(f"more than {MAX_TERM_STEP} above ours" in m for m in warned)
    await (await cluster.leader()).stop()
    new = await cluster.leader()
    assert new.status()["term"] < before + 3 * MAX_TERM_STEP
    assert await new.write(["set", "after", 1], timeout=10) == ["ok", "after", 1]
    assert await new.read(["get", "before"]) == ["ok", 1]


# --------------------------------------------------------------------------- mutual TLS


async def test_a_tls_cluster_elects_replicates_forwards_snapshots_and_serves_clients(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, storage="lmdb", config=SNAP, tls=True)
    try:
        peers = await cluster.start(3)
        leader = await cluster.leader()
        follower = next(p for p in peers.values() if p is not leader)
        assert await follower.write(["set", "forwarded", 1]) == ["ok", "forwarded", 1]
        await write_many(leader, 300)
        assert leader._storage.first_index() > 20  # a new member needs a snapshot
        s4 = await cluster.join("s4")
        await eventually(lambda: s4.state_machine.data.get("k299") == 299, timeout=20)
        assert s4.state_machine.restores == 1
        client = await raftlib.connect([follower.address], tls=cluster.tls_for("client"), timeout=10)
        try:
            assert await client.write(["set", "c", 3]) == ["ok", "c", 3]
            assert await client.read(["get", "c"]) == ["ok", 3]
            assert client.leader_address == leader.address
        finally:
            await client.close()
        for peer in cluster.live():
            assert isinstance(peer._transport.security, TLSConfig)
            assert peer._transport.stats["refused"] == 0
    finally:
        await cluster.close()


async def test_a_peer_with_a_certificate_of_another_ca_is_refused(
    tls_cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await tls_cluster.start(3)
    leader = await tls_cluster.leader()
    with pytest.raises(errors.AuthenticationFailed, match="every seed refused"):
        await raftlib.join(KVStore, name="s4", address="127.0.0.1:0", seeds=[leader.address],
                           storage=_memory(), config=FAST, timeout=5, tls=stranger_tls(tmp_path, "s4", tls_cluster))
    warnings = refusals(caplog)
    assert warnings and "certificate not trusted" in warnings[0]
    # A stranger that does not trust the cluster's CA either is refused as well.
    with pytest.raises(errors.AuthenticationFailed):
        await raftlib.join(KVStore, name="s5", address="127.0.0.1:0", seeds=[leader.address],
                           storage=_memory(), config=FAST, timeout=5, tls=stranger_tls(tmp_path, "s5"))
    assert set(leader.membership.members) == {"s1", "s2", "s3"}
    assert await leader.write(["set", "still", "serving"]) == ["ok", "still", "serving"]


async def test_a_client_hello_that_arrives_before_the_connection_is_served_is_not_lost(tmp_path: Path) -> None:
    """A busy peer may find a connection's TLS ClientHello already waiting when it accepts it."""
    certs = make_certificates(tmp_path, ["s1", "client"])
    peer = await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", storage=_memory(), config=FAST,
                                    tls=certs["s1"])
    host, _, port = peer.address.rpartition(":")

    def connect() -> bytes:
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with certs["client"].client_context().wrap_socket(raw, server_hostname=host) as tls:
                return tls.recv(64)

    try:
        answer = asyncio.get_running_loop().run_in_executor(None, connect)
        time.sleep(0.3)  # the loop is busy: the connection and its ClientHello queue up meanwhile
        assert b"AuthOk" in await asyncio.wait_for(answer, 10)
    finally:
        await peer.stop()


async def test_a_peer_without_tls_is_refused(tls_cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    await tls_cluster.start(3)
    leader = await tls_cluster.leader()
    with pytest.raises((errors.Timeout, errors.Unavailable)):
        await raftlib.join(KVStore, name="s4", address="127.0.0.1:0", seeds=[leader.address],
                           storage=_memory(), config=FAST, timeout=1.5)
    assert any("TLS handshake failed" in w for w in refusals(caplog))
    assert set(leader.membership.members) == {"s1", "s2", "s3"}


async def test_a_client_or_peer_without_tls_is_told_at_once_that_the_members_require_it(
    tls_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A TLS member answers a connection that opens without a TLS handshake
    with a plain-text TLSRequired frame: the client or joining peer learns
    why it is refused instead of retrying until its timeout."""
    peers = await tls_cluster.start(3)
    addresses = [p.address for p in peers.values()]
    with pytest.raises(errors.AuthenticationFailed, match="requires TLS.*give tls=, or --cert/--key/--ca"):
        await raftlib.connect(addresses, timeout=60)
    with pytest.raises(errors.AuthenticationFailed, match="requires TLS"):
        await raftlib.join(KVStore, name="s4", address="127.0.0.1:0", seeds=addresses[:1],
                           storage=_memory(), config=FAST, timeout=60)
    assert any("does not use TLS" in w for w in refusals(caplog))
    assert set((await tls_cluster.leader()).membership.members) == {"s1", "s2", "s3"}


@pytest.mark.parametrize("members", ["plain", "secret"])
async def test_a_client_with_tls_is_told_at_once_that_the_members_do_not_use_it(
    tmp_path: Path, members: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The reverse: a member without TLS answers a TLS ClientHello in plain
    text (TLSNotUsed, or a secret member's Challenge), which the client's
    TLS handshake cannot read; the client says so rather than blaming its certificate."""
    cluster = Cluster(tmp_path, secret=SECRET if members == "secret" else None)
    try:
        peers = await cluster.start(1)
        tls = make_certificates(tmp_path / "certs", ["client"])["client"]
        with pytest.raises(errors.AuthenticationFailed, match="does not use TLS.*without tls="):
            await raftlib.connect([p.address for p in peers.values()], tls=tls, timeout=60)
        if members == "plain":
            assert any("a TLS handshake" in r.getMessage() and "does not use TLS" in r.getMessage()
                       for r in caplog.records if r.levelno == logging.WARNING)
    finally:
        await cluster.close()


async def test_a_member_closing_connections_is_not_taken_for_a_tls_one() -> None:
    """Connections closed without a word (a member crashing, or at its
    connection limit) are retried until the timeout, and not reported as a
    security mismatch."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with fake_server(hang_up) as address:
        with pytest.raises(errors.Unavailable) as info:
            await raftlib.connect([address], timeout=0.5)
        assert not isinstance(info.value, errors.AuthenticationFailed)


async def test_raft_messages_from_refused_peers_never_reach_the_core(
    tls_cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await tls_cluster.start(3)
    leader = await tls_cluster.leader()
    term = leader.status()["term"]
    await impersonate(tmp_path, tls_cluster)
    await impersonate(tmp_path, tls_cluster, tls=stranger_tls(tmp_path, "s2", tls_cluster))
    # A vote request of term 1000 would have deposed the leader had it been stepped.
    assert leader.is_leader and leader.status()["term"] == term
    assert sum(p._transport.stats["refused"] for p in tls_cluster.live()) >= 6
    assert len(refusals(caplog)) >= 6


async def test_a_client_without_a_valid_certificate_is_refused(
    tls_cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    peers = await tls_cluster.start(3)
    addresses = [p.address for p in peers.values()]
    with pytest.raises(errors.Unavailable):
        await raftlib.connect(addresses, timeout=1.5)
    started = time.monotonic()
    with pytest.raises(errors.AuthenticationFailed):
        await raftlib.connect(addresses, tls=stranger_tls(tmp_path, "client", tls_cluster), timeout=10)
    assert time.monotonic() - started < 5  # refused credentials fail at once, not at the timeout
    with pytest.raises(errors.AuthenticationFailed):
        await raftlib.connect(addresses, tls=stranger_tls(tmp_path, "client"), timeout=10)
    assert any("certificate not trusted" in w for w in refusals(caplog))
    assert any("TLS handshake failed" in w and "certificate" not in w for w in refusals(caplog))


async def test_tls_with_hostname_verification(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path, ["s1", "client"], ips=("127.0.0.1",))
    certs.update(make_certificates(tmp_path, ["elsewhere"], ips=("10.9.9.9",), dns=()))
    strict = {n: dataclasses.replace(c, verify_hostname=True) for n, c in certs.items()}
    peers = [await raftlib.start_peer(KVStore, name=n, address="127.0.0.1:0", storage=_memory(), config=FAST,
                                      tls=strict[n]) for n in ("s1", "elsewhere")]
    try:
        await peers[0].set_configuration({"s1": peers[0].address})
        client = await raftlib.connect([peers[0].address], tls=strict["client"], timeout=10)
        assert await client.write(["set", "a", 1]) == ["ok", "a", 1]
        await client.close()
        # This certificate names 10.9.9.9, not the 127.0.0.1 it was reached at.
        with pytest.raises(errors.AuthenticationFailed, match="certificate not trusted: IP address mismatch.*verify_hostname is on: "
                                                                "the member's certificate must name the host"):
            await connect_stream(peers[1].address, strict["client"], timeout=5)
        _, writer = await connect_stream(peers[1].address, certs["client"], timeout=5)  # not checked by default
        writer.close()
    finally:
        for peer in peers:
            await peer.stop()


async def test_tls_over_unix_sockets(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs", ["s1", "s2"])
    peers = [await raftlib.start_peer(KVStore, name=n, address=f"unix:{tmp_path / n}.sock", storage=_memory(),
                                      config=FAST, tls=certs[n]) for n in ("s1", "s2")]
    try:
        await peers[0].set_configuration({p.name: p.address for p in peers})
        await peers[0].wait_for_leader(timeout=5)
        assert await peers[1].write(["set", "u", 1]) == ["ok", "u", 1]
    finally:
        for p in peers:
            await p.stop(transfer_leadership=False)


async def test_tls_files_are_checked_at_start(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path, ["s1"])["s1"]
    with pytest.raises(errors.ConfigError, match="no such file: cert=.*nope.pem"):
        TLSConfig(tmp_path / "nope.pem", certs.key, certs.ca)
    with pytest.raises(errors.ConfigError, match="key=.*missing-key.pem, ca=.*missing-ca.pem"):
        TLSConfig(certs.cert, tmp_path / "missing-key.pem", tmp_path / "missing-ca.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(errors.ConfigError, match="cannot load the certificate"):
        await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", storage=_memory(),
                                 tls=TLSConfig(garbage, certs.key, certs.ca))
    with pytest.raises(errors.ConfigError, match="CA file"):
        await raftlib.connect(["127.0.0.1:1"], tls=TLSConfig(certs.cert, certs.key, garbage))
    with pytest.raises(errors.ConfigError, match="not both"):
        await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", storage=_memory(), tls=certs,
                                 secret=SECRET)
    with pytest.raises(errors.ConfigError, match="TLSConfig"):
        await raftlib.connect(["127.0.0.1:1"], tls="certs/")  # type: ignore[arg-type]


async def test_reload_picks_up_new_certificates_for_new_connections(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path, ["s1", "client"])
    tls = certs["s1"]
    old = tls.server_context()
    make_certificates(tmp_path, ["s1"])  # a renewed certificate, same CA
    tls.reload()
    assert tls.server_context() is not old
    Path(tls.key).write_text("broken")
    with pytest.raises(errors.ConfigError):
        tls.reload()
    assert tls.server_context() is not old  # the renewed one stays in use


# --------------------------------------------------------------------------- shared secret


async def test_a_secret_cluster_elects_replicates_forwards_and_serves_clients(secret_cluster: Cluster) -> None:
    peers = await secret_cluster.start(3)
    leader = await secret_cluster.leader()
    follower = next(p for p in peers.values() if p is not leader)
    assert await follower.write(["set", "forwarded", 1]) == ["ok", "forwarded", 1]
    s4 = await secret_cluster.join("s4")
    await eventually(lambda: s4.state_machine.data.get("forwarded") == 1)
    client = await raftlib.connect([follower.address], secret=SECRET.decode(), timeout=10)
    try:
        assert await client.write(["set", "c", 3]) == ["ok", "c", 3]
        assert await client.read(["get", "c"]) == ["ok", 3]
    finally:
        await client.close()
    assert all(p._transport.stats["refused"] == 0 for p in secret_cluster.live())


async def test_peers_with_a_wrong_secret_or_none_are_refused(
    secret_cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await secret_cluster.start(3)
    leader = await secret_cluster.leader()
    term = leader.status()["term"]
    with pytest.raises(errors.AuthenticationFailed):
        await raftlib.join(KVStore, name="s4", address="127.0.0.1:0", seeds=[leader.address], storage=_memory(),
                           config=FAST, timeout=5, secret=b"a different secret of 32 bytes!!")
    assert any("wrong shared secret" in w for w in refusals(caplog))
    with pytest.raises((errors.Timeout, errors.Unavailable)):
        await raftlib.join(KVStore, name="s5", address="127.0.0.1:0", seeds=[leader.address], storage=_memory(),
                           config=FAST, timeout=1.5)
    assert any("expected Auth, got 'Hello'" in w for w in refusals(caplog))
    await impersonate(tmp_path, secret_cluster, secret=b"a different secret of 32 bytes!!")
    await impersonate(tmp_path, secret_cluster)
    assert leader.is_leader and leader.status()["term"] == term
    assert set(leader.membership.members) == {"s1", "s2", "s3"}


async def test_clients_with_a_wrong_secret_or_none_are_refused(secret_cluster: Cluster) -> None:
    peers = await secret_cluster.start(3)
    addresses = [p.address for p in peers.values()]
    with pytest.raises(errors.AuthenticationFailed, match="refused this shared secret.*give theirs .secret=, or --secret-file"):
        await raftlib.connect(addresses, secret=b"a different secret of 32 bytes!!", timeout=60)
    with pytest.raises(errors.Unavailable):
        await raftlib.connect(addresses, timeout=1.5)


@pytest.mark.parametrize("call", ["listen", "write", "read", "status"])
async def test_a_client_whose_credentials_are_refused_after_it_connected_is_told_at_once(
    secret_cluster: Cluster, call: str
) -> None:
    """The members refuse a connected client when it reconnects (their
    secret was changed, say). Waiting does not change credentials: every
    call says so at once, as connect does; listen retried as if the members
    were down and raised Unavailable at its timeout."""
    peers = await secret_cluster.start(1)
    client = await raftlib.connect([p.address for p in peers.values()], secret=SECRET, timeout=5)
    try:
        client._security = SharedSecret(b"a different secret of 32 bytes!!")
        await client._drop_connection()
        with pytest.raises(errors.AuthenticationFailed, match="refused this shared secret") as refused:
            await {
                "listen": lambda: first_change(client),
                "write": lambda: client.write(["set", "a", 1]),
                "read": lambda: client.read(["get", "a"]),
                "status": client.status,
            }[call]()
        if call == "listen":  # where to listen from once the credentials are fixed
            assert "change feed at index 0" in str(refused.value)
    finally:
        await client.close()


async def test_a_write_that_may_have_applied_before_the_credentials_were_refused_stays_unknown(
    secret_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal is not-applied only for the attempt it stopped: an earlier
    attempt of the write, whose answer was lost, may have applied."""
    peers = await secret_cluster.start(1)
    client = await raftlib.connect([p.address for p in peers.values()], secret=SECRET, timeout=5)
    try:
        assert client._conn is not None

        async def answer_lost(*args: Any, **kwargs: Any) -> Any:
            client._security = SharedSecret(b"a different secret of 32 bytes!!")  # the next connection is refused
            raise errors.Timeout("no answer")

        monkeypatch.setattr(client._conn, "call", answer_lost)
        with pytest.raises(errors.WriteTimeout, match="may have been applied.*refused this shared secret"):
            await client.write(["set", "a", 1])
    finally:
        await client.close()


async def test_a_client_or_peer_without_a_secret_learns_that_the_cluster_requires_one(
    secret_cluster: Cluster,
) -> None:
    """A member that requires a secret opens with a Challenge. A client or a
    joining peer with no secret sees it: that is a refusal of its (missing)
    credentials, to be reported as such at once rather than retried until
    the timeout as a member that does not answer."""
    peers = await secret_cluster.start(3)
    addresses = [p.address for p in peers.values()]
    with pytest.raises(errors.AuthenticationFailed, match="requires a shared secret"):
        await raftlib.connect(addresses, timeout=10)
    with pytest.raises(errors.AuthenticationFailed, match="requires a shared secret"):
        await raftlib.join(KVStore, name="s4", address="127.0.0.1:0", seeds=addresses, storage=_memory(),
                           config=FAST, timeout=10)
    assert set((await secret_cluster.leader()).membership.members) == {"s1", "s2", "s3"}


@pytest.mark.parametrize("members", ["plain", "tls"])
async def test_a_client_or_peer_with_a_secret_is_told_at_once_what_the_members_use_instead(
    tmp_path: Path, members: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A client with a secret waited for the member's Challenge while a
    member without the secret handshake waited for the client to speak (a
    Hello, or a TLS ClientHello), until the handshake timed out. The client
    now sends the start of its Auth frame at once, which a member with TLS
    answers with TLSRequired and a member without security with
    SecretNotUsed: the client or joining peer learns what to change, and
    the member goes on serving the others."""
    cluster = Cluster(tmp_path, tls=members == "tls")
    try:
        peers = await cluster.start(3)
        addresses = [p.address for p in peers.values()]
        expected = {
            "tls": r"requires TLS, not a shared secret: give tls= instead of secret= \(--cert/--key/--ca instead "
                   r"of --secret-file",
            "plain": r"does not use a shared secret: connect without secret= \(--secret-file\), or give the "
                     r"members the secret",
        }[members]
        with pytest.raises(errors.AuthenticationFailed, match=expected):
            await raftlib.connect(addresses, secret=SECRET, timeout=60)
        with pytest.raises(errors.AuthenticationFailed, match=expected):
            await raftlib.join(KVStore, name="s4", address="127.0.0.1:0", seeds=addresses, storage=_memory(),
                               config=FAST, timeout=60, secret=SECRET)
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        told = "the connection does not use TLS" if members == "tls" else "got a shared-secret handshake"
        assert any(told in w for w in warned), warned
        client = await raftlib.connect(addresses, timeout=10, **cluster.security_kwargs("client"))
        try:
            assert await client.write(["set", "still", 1]) == ["ok", "still", 1]
        finally:
            await client.close()
        assert set((await cluster.leader()).membership.members) == {"s1", "s2", "s3"}
    finally:
        await cluster.close()


def _auth_opening(nonce: bytes) -> bytes:
    """What a client with a secret sends before the Challenge: its Auth frame but the proof."""
    return encode_frame("Auth", [nonce, bytes(32)])[:-32]


async def test_a_member_without_security_recognises_a_secret_handshake_however_it_arrives(cluster: Cluster) -> None:
    peers = await cluster.start(1)
    host, _, port = next(iter(peers.values())).address.rpartition(":")
    opening = _auth_opening(os.urandom(32))
    for split in (1, 4, 9, len(opening) - 1, len(opening)):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(opening[:split])
            await writer.drain()
            writer.write(opening[split:])
            answer = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        assert FrameDecoder(1024).feed(answer) == [("SecretNotUsed", [])]
    leader = await cluster.leader()
    assert await leader.write(["set", "k", 1]) == ["ok", "k", 1]


async def test_a_member_accepts_the_earlier_order_and_answers_a_wrong_proof_with_a_refusal_only(
    secret_cluster: Cluster,
) -> None:
    """A client of an earlier version sends its whole Auth frame after the
    Challenge, and is still admitted. A wrong proof is answered with
    SecretRefused and nothing else: the member reveals nothing of its secret
    (nor its own proof)."""
    peers = await secret_cluster.start(1)
    host, _, port = next(iter(peers.values())).address.rpartition(":")
    right, wrong = SharedSecret(SECRET), SharedSecret(b"a different secret of 32 bytes!!")
    for secret in (right, wrong):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            decoder = FrameDecoder(1024)
            frames: list[Any] = []
            while not frames:
                frames = decoder.feed(await asyncio.wait_for(reader.read(1024), 30))
            ((kind, (nonce_s,)),) = frames
            assert kind == "Challenge"
            nonce_c = os.urandom(32)
            writer.write(encode_frame("Auth", [nonce_c, secret.client_proof(nonce_s, nonce_c)]))
            if secret is right:
                frames = []
                while not frames:
                    frames = decoder.feed(await asyncio.wait_for(reader.read(1024), 30))
                assert frames == [("AuthOk", [right.server_proof(nonce_s, nonce_c)])]
            else:
                rest = await asyncio.wait_for(reader.read(), 30)
                assert decoder.feed(rest) == [("SecretRefused", [])]
                assert SECRET not in rest and right.server_proof(nonce_s, nonce_c) not in rest
        finally:
            writer.close()


async def test_the_server_must_prove_it_knows_the_secret_too() -> None:
    """A server that does not know the secret cannot pass itself off as a member."""

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode_frame("Challenge", [os.urandom(32)]))
        await reader.readexactly(4)
        writer.write(encode_frame("AuthOk", [os.urandom(32)]))
        await writer.drain()
        await reader.read()

    async with fake_server(impostor) as address:
        with pytest.raises(errors.AuthenticationFailed, match="does not know the shared secret"):
            await connect_stream(address, SharedSecret(SECRET), timeout=5)


async def test_a_silent_connection_is_closed_after_the_handshake_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tcp, "HANDSHAKE_TIMEOUT", 0.3)
    certs = make_certificates(tmp_path, ["s1"])
    for security in ({"tls": certs["s1"]}, {"secret": SECRET}):
        peer = await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", storage=_memory(), config=FAST,
                                        **security)
        try:
            host, _, port = peer.address.rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            started = time.monotonic()
            while await asyncio.wait_for(reader.read(1024), 3):  # a Challenge, then the end of the stream
                pass
            assert time.monotonic() - started < 2
            writer.close()
        finally:
            await peer.stop()
    assert len([w for w in refusals(caplog) if "no security handshake within 0.3 s" in w]) == 2


async def test_a_client_gives_up_on_a_server_that_never_answers_the_handshake() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with fake_server(silent) as address:
        with pytest.raises(errors.AuthenticationFailed, match="no answer within 0.3 s"):
            await connect_stream(address, SharedSecret(SECRET), timeout=0.3)


def test_shared_secrets_are_checked_and_never_shown(tmp_path: Path) -> None:
    secret = SharedSecret("x" * 16)
    assert "x" not in repr(secret) and secret == SharedSecret(b"x" * 16) and secret != SharedSecret("y" * 16)
    with pytest.raises(errors.ConfigError, match="at least 16 bytes"):
        SharedSecret("short")
    with pytest.raises(errors.ConfigError, match="bytes or str"):
        SharedSecret(1234)  # type: ignore[arg-type]
    path = tmp_path / "secret"
    path.write_text(SECRET.decode() + "\n")
    assert SharedSecret.from_file(path) == SharedSecret(SECRET)
    with pytest.raises(errors.ConfigError, match="cannot read the secret file .*missing"):
        SharedSecret.from_file(tmp_path / "missing")


async def test_handshake_frames_of_the_wrong_size_are_refused() -> None:
    """A client reading a server's first bytes as a handshake frame never buffers a large frame."""

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x7f\xff\xff\xff" + b"x" * 100)
        await writer.drain()
        await reader.read()

    async with fake_server(plain) as address:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        with pytest.raises(errors.AuthenticationFailed, match="frame of 2147483647 bytes"):
            await authenticate(reader, writer, SharedSecret(SECRET), server_hostname=host)
        writer.close()
        await writer.wait_closed()


def _memory() -> Any:
    from storage_adapters import MemoryStorage

    return MemoryStorage()


# --------------------------------------------------------------------------- command line


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def test_certs_command_makes_a_ca_and_reuses_it(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    made = cli("certs", "--out", str(out), "--names", "s1,s2,client", "--ip", "127.0.0.1,10.0.0.5", "--days", "30")
    assert made.exit_code == 0, made.output
    assert f"s1: --cert {out / 's1.pem'} --key {out / 's1-key.pem'} --ca {out / 'ca.pem'}" in made.output
    names = {p.name for p in out.iterdir()}
    assert names == {"ca.pem", "ca-key.pem", "s1.pem", "s1-key.pem", "s2.pem", "s2-key.pem",
                     "client.pem", "client-key.pem"}
    for key in ("ca-key.pem", "s1-key.pem"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    ca = (out / "ca.pem").read_bytes()
    assert cli("certs", "--out", str(out), "--names", "s4").exit_code == 0
    assert (out / "ca.pem").read_bytes() == ca  # the same CA signs later members

    from cryptography import x509

    cert = x509.load_pem_x509_certificate((out / "s1.pem").read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == ["s1", "localhost"]
    assert [str(ip) for ip in alt.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.0.0.5"]
    bad = cli("certs", "--out", str(out), "--names", "../evil")
    assert bad.exit_code != 0 and "certificate name" in bad.output


def test_certs_refuses_names_whose_files_would_overwrite_keys(tmp_path: Path) -> None:
    """NAME.pem of a name ending in -key is another name's key file: 'ca-key'
    would overwrite the CA's private key with a certificate (the CA is lost),
    and 's1-key' the key of s1."""
    out = tmp_path / "certs"
    assert cli("certs", "--out", str(out), "--names", "s1").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for names in ("ca-key", "s1-key", "s2,s2-key"):
        bad = cli("certs", "--out", str(out), "--names", names)
        assert bad.exit_code == 2 and "-key" in bad.output, bad.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert cli("certs", "--out", str(out), "--names", "s3").exit_code == 0  # the CA still works


@pytest.mark.parametrize("damage", ["ca-key.pem", "ca.pem", "other-key"])
def test_certs_with_an_unusable_ca_says_which_file(tmp_path: Path, damage: str) -> None:
    out = tmp_path / "certs"
    assert cli("certs", "--out", str(out), "--names", "s1").exit_code == 0
    if damage == "other-key":  # a CA key that does not match ca.pem would sign certificates nobody trusts
        make_certificates(tmp_path / "other", ["x"])
        (out / "ca-key.pem").write_bytes((tmp_path / "other" / "ca-key.pem").read_bytes())
        damage = "ca-key.pem"
    else:
        (out / damage).write_text("not a PEM file\n")
    bad = cli("certs", "--out", str(out), "--names", "s2")
    assert bad.exit_code == 2 and str(out / damage) in bad.output, bad.output
    assert not (out / "s2.pem").exists()


def test_cli_security_options_are_checked(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path, ["client"])["client"]
    half = cli("kv", "get", "a", "--cluster", "127.0.0.1:1", "--cert", str(certs.cert))
    assert half.exit_code == 2 and "missing --key, --ca" in half.output
    both = cli("status", "--cluster", "127.0.0.1:1", "--cert", str(certs.cert), "--key", str(certs.key),
               "--ca", str(certs.ca), "--secret-file", str(certs.ca))
    assert both.exit_code == 2 and "not both" in both.output
    missing = cli("members", "remove", "s1", "--cluster", "127.0.0.1:1", "--secret-file", str(tmp_path / "nope"))
    assert missing.exit_code == 2 and "cannot read the secret file" in missing.output


class Served:
    """`raftlib serve` processes, killed on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str) -> None:
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "raftlib", "serve", "--memory", "--election-timeout-ms", "200",
             "--log-level", "warning", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))

    def stop(self) -> list[str]:
        errs = []
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
            try:
                errs.append(proc.communicate(timeout=20)[1])
            except subprocess.TimeoutExpired:
                proc.kill()
                errs.append(proc.communicate()[1])
        return errs


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    try:
        yield s
    finally:
        s.stop()


def wait_for(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.slow
def test_serve_and_kv_over_tls_from_the_command_line(tmp_path: Path, served: Served) -> None:
    out = tmp_path / "certs"
    assert cli("certs", "--out", str(out), "--names", "s1,s2,s3,client").exit_code == 0
    ports = {f"s{i}": free_port() for i in (1, 2, 3)}
    initial = ",".join(f"{n}=127.0.0.1:{p}" for n, p in ports.items())
    for name, port in ports.items():
        served.start("--name", name, "--listen", f"127.0.0.1:{port}", "--initial-cluster", initial,
                     "--cert", str(out / f"{name}.pem"), "--key", str(out / f"{name}-key.pem"),
                     "--ca", str(out / "ca.pem"))
    cluster = ",".join(f"127.0.0.1:{p}" for p in ports.values())
    tls = ["--cert", str(out / "client.pem"), "--key", str(out / "client-key.pem"), "--ca", str(out / "ca.pem")]

    def put() -> bool:
        return cli("kv", "put", "a", '{"x": 1}', "--cluster", cluster, "--timeout", "2", *tls).exit_code == 0

    wait_for(put)
    got = cli("kv", "get", "a", "--cluster", cluster, "--json", *tls)
    assert got.exit_code == 0 and '"value": {"x": 1}' in got.output
    env = {"RAFTLIB_CERT": str(out / "client.pem"), "RAFTLIB_KEY": str(out / "client-key.pem"),
           "RAFTLIB_CA": str(out / "ca.pem")}
    status = cli("status", "--cluster", cluster, "--json", env=env)
    assert status.exit_code == 0 and status.output.count('"role": "leader"') == 1
    refused = cli("kv", "get", "a", "--cluster", cluster, "--timeout", "1")
    # Without the certificates: refused at once, told what to give.
    assert refused.exit_code == 1 and "AuthenticationFailed" in refused.output
    assert "requires TLS" in refused.output and "--cert/--key/--ca" in refused.output
    errs = served.stop()
    assert any("refused the connection from 127.0.0.1:" in e for e in errs)


def test_sighup_reloads_the_tls_files_of_serve_and_logs_how_it_went(tmp_path: Path) -> None:
    """A reload that worked is routine (INFO); one that failed is an ERROR
    naming the reason, and the member keeps serving with the old files."""
    out = tmp_path / "certs"
    assert cli("certs", "--out", str(out), "--names", "s1,client").exit_code == 0
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"
    tls = ["--cert", str(out / "client.pem"), "--key", str(out / "client-key.pem"), "--ca", str(out / "ca.pem")]
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "raftlib", "serve", "--memory", "--election-timeout-ms", "200", "--name", "s1",
             "--listen", address, "--initial-cluster", f"s1={address}", "--log-level", "info",
             "--cert", str(out / "s1.pem"), "--key", str(out / "s1-key.pem"), "--ca", str(out / "ca.pem")],
            stdout=subprocess.DEVNULL, stderr=err, text=True,
        )
    try:
        wait_for(lambda: cli("kv", "put", "a", "1", "--cluster", address, "--timeout", "2", *tls).exit_code == 0)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "raftlib.cli INFO s1: TLS certificate, key and CA reloaded" in log.read_text())
        (out / "s1-key.pem").write_text("not a key")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "raftlib.cli ERROR s1: TLS files not reloaded" in log.read_text())
        assert "cannot load the certificate" in log.read_text()
        assert cli("kv", "get", "a", "--cluster", address, *tls).output.strip() == "1"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "WARNING" not in log.read_text()


@pytest.mark.slow
def test_serve_and_kv_with_a_secret_file_from_the_command_line(tmp_path: Path, served: Served) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET.decode())
    wrong = tmp_path / "wrong"
    wrong.write_text("a different secret of 32 bytes!!")
    port = free_port()
    served.start("--name", "s1", "--listen", f"127.0.0.1:{port}", "--initial-cluster", f"s1=127.0.0.1:{port}",
                 "--secret-file", str(secret))
    address = f"127.0.0.1:{port}"
    wait_for(lambda: cli("kv", "put", "k", "v", "--cluster", address, "--timeout", "2",
                         "--secret-file", str(secret)).exit_code == 0)
    assert cli("kv", "get", "k", "--cluster", address, "--secret-file", str(secret)).output.strip() == '"v"'
    refused = cli("kv", "get", "k", "--cluster", address, "--secret-file", str(wrong))
    assert refused.exit_code == 1 and "AuthenticationFailed" in refused.output
    errs = served.stop()
    assert any("wrong shared secret" in e for e in errs)
