"""raftlib.testing.free_port: ports below the ephemeral range, each handed out once."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator

import pytest

from raftlib.testing import free_port, ports


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    low, _ = ports.ephemeral_range()
    got = [free_port() for _ in range(50)]
    assert len(set(got)) == 50
    if low - ports._FLOOR >= 1000:
        assert all(ports._FLOOR <= p < low for p in got)
    assert all(bindable(p) for p in got)


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (40_000, 60_999))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        spare = next(p for p in range(30_000, 31_000) if p not in ports._issued and bindable(p))
        draws: Iterator[int] = iter([taken, spare])
        monkeypatch.setattr(ports._rng, "randrange", lambda a, b: next(draws))
        assert ports.free_port() == spare


def test_too_small_a_range_falls_back_to_the_kernels_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (ports._FLOOR + 10, 65_535))
    monkeypatch.setattr(ports._rng, "randrange", lambda a, b: pytest.fail("drew from a range that is too small"))
    port = ports.free_port()
    assert bindable(port) and port in ports._issued


def test_the_range_comes_from_proc_or_defaults_to_ianas(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = tmp_path / "range"
    f.write_text("20000\t30000\n")
    monkeypatch.setattr(ports, "_RANGE_FILE", str(f))
    assert ports.ephemeral_range() == (20000, 30000)
    monkeypatch.setattr(ports, "_RANGE_FILE", str(tmp_path / "missing"))
    assert ports.ephemeral_range() == (49152, 65535)
    f.write_text("garbage\n")
    monkeypatch.setattr(ports, "_RANGE_FILE", str(f))
    assert ports.ephemeral_range() == (49152, 65535)


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_a_port_on_the_ipv6_loopback() -> None:
    # raftlib peers listen on [::1]:port too; free_port("::1") used an IPv4
    # socket, failed every bind and raised "Address family ... not supported".
    port = free_port("::1")
    low, _ = ports.ephemeral_range()
    if low - ports._FLOOR >= 1000:
        assert ports._FLOOR <= port < low
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", port))
