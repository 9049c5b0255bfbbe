"""raftlib.run: the event loop it picks, and a peer running on it."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import pytest

import raftlib
from raftlib.loop import loop_factory, loop_name
from raftlib.security import TLSConfig, make_certificates
from storage_adapters import MemoryStorage

from clusterkit import FAST, KVStore

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


async def which() -> str:
    return loop_name()


def test_the_standard_loop_when_asked_or_when_the_environment_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    assert raftlib.run(which(), use_uvloop=False) == "asyncio"
    monkeypatch.setenv("RAFTLIB_UVLOOP", "0")
    assert loop_factory() is None
    assert raftlib.run(which()) == "asyncio"


def test_uvloop_when_installed_and_a_clear_error_when_required_but_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAFTLIB_UVLOOP", raising=False)
    if HAVE_UVLOOP:
        assert raftlib.run(which()) == "uvloop"
        assert raftlib.run(which(), use_uvloop=True) == "uvloop"
    else:
        assert raftlib.run(which()) == "asyncio"
        with pytest.raises(RuntimeError, match=r"pip install 'raftlib\[fast\]'"):
            raftlib.run(which(), use_uvloop=True)


def test_a_peer_writes_and_reads_on_the_loop_run_picks() -> None:
    async def main() -> tuple[str, object, object]:
        peer = await raftlib.start_peer(KVStore, name="a", address="127.0.0.1:0", storage=MemoryStorage(), config=FAST)
        try:
            await peer.set_configuration({"a": peer.address})
            written = await peer.write(["set", "k", 1])
            fut = peer.submit(["set", "k", 2])
            assert isinstance(fut, asyncio.Future)
            return loop_name(), (written, await fut), await peer.read(["get", "k"])
        finally:
            await peer.stop()

    name, written, read = raftlib.run(main())
    assert name == ("uvloop" if HAVE_UVLOOP else "asyncio")
    assert written == (["ok", "k", 1], ["ok", "k", 2])
    assert read == ["ok", 2]


LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed"))]


@pytest.mark.parametrize("security", ["none", "tls", "secret"])
@pytest.mark.parametrize("loop", LOOPS)
def test_a_cluster_on_each_loop_and_security(loop: str, security: str, tmp_path: Path) -> None:
    """Three peers on the loop, plain, over TLS or with a shared secret: they
    elect, replicate, and forward a follower's writes."""
    names = ["s1", "s2", "s3"]
    kwargs: dict[str, dict[str, Any]] = {n: {} for n in names}
    if security == "tls":
        certs = make_certificates(tmp_path / "certs", names)
        kwargs = {n: {"tls": certs[n]} for n in names}
    elif security == "secret":
        kwargs = {n: {"secret": "a shared secret for the test"} for n in names}

    async def main() -> tuple[str, list[Any]]:
        peers: dict[str, raftlib.Peer] = {}
        try:
            for n in names:
                peers[n] = await raftlib.start_peer(KVStore, name=n, address="127.0.0.1:0", storage=MemoryStorage(),
                                                    config=FAST, **kwargs[n])
            await peers["s1"].set_configuration({n: p.address for n, p in peers.items()})
            leader = peers[await peers["s1"].wait_for_leader(timeout=10)]
            follower = next(p for p in peers.values() if p is not leader)
            await asyncio.gather(*(leader.write(["set", f"k{i}", i]) for i in range(100)))
            written = [await follower.write(["set", "f", 1])]
            written.append(await follower.read(["get", "k99"]))
            return loop_name(), written
        finally:
            for p in peers.values():
                await p.stop(transfer_leadership=False)

    name, written = raftlib.run(main(), use_uvloop=loop == "uvloop")
    assert name == loop
    assert written == [["ok", "f", 1], ["ok", 99]]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_security_mismatch_is_reported_at_once_on_each_loop(loop: str, tmp_path: Path) -> None:
    """Every way a client's security can differ from a member's is reported
    at once, saying what to change, on either loop (uvloop reads an accepted
    connection before the member can look at its first bytes); the member
    goes on serving clients that match it."""
    certs = make_certificates(tmp_path / "certs", ["s1", "client"])
    stranger = make_certificates(tmp_path / "other-ca", ["client"])["client"]
    trusting = TLSConfig(stranger.cert, stranger.key, certs["client"].ca)  # its certificate is not the cluster's
    secret, other = "a shared secret for the test", "another secret for the test"
    cases: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        ({"tls": certs["s1"]}, {}, "requires TLS and this connection has none (give tls="),
        ({"secret": secret}, {}, "requires a shared secret and this connection has none (give secret="),
        ({}, {"tls": certs["client"]}, "does not use TLS (it answered the TLS handshake in plain text): connect without tls="),
        ({"secret": secret}, {"tls": certs["client"]}, "does not use TLS (it answered the TLS handshake in plain text)"),
        ({"tls": certs["s1"]}, {"tls": stranger}, "certificate not trusted: self-signed certificate in certificate "
                                                 "chain (the member's certificate must be signed by a CA in this "
                                                 "end's ca= file"),
        ({"tls": certs["s1"]}, {"tls": trusting}, "does not trust this client's certificate (give one signed by"),
        ({"tls": certs["s1"]}, {"secret": secret}, "requires TLS, not a shared secret: give tls= instead of secret="),
        ({}, {"secret": secret}, "does not use a shared secret: connect without secret="),
        ({"secret": secret}, {"secret": other}, "refused this shared secret: it is not the one the members have"),
    ]

    async def main() -> list[str]:
        seen = []
        for member, client, _ in cases:
            peer = await raftlib.start_peer(KVStore, name="s1", address="127.0.0.1:0", storage=MemoryStorage(),
                                            config=FAST, **member)
            try:
                await peer.set_configuration({"s1": peer.address})
                try:
                    await raftlib.connect([peer.address], timeout=60, **client)
                except raftlib.errors.AuthenticationFailed as exc:
                    seen.append(str(exc))
                # The member goes on serving clients that match it.
                good = await raftlib.connect([peer.address], timeout=10, **member)
                await good.close()
            finally:
                await peer.stop()
        return seen

    seen = raftlib.run(main(), use_uvloop=loop == "uvloop")
    assert len(seen) == len(cases)
    for (_, _, expected), message in zip(cases, seen):
        assert expected in message
