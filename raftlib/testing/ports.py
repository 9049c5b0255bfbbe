"""Free loopback ports for peers that a test starts by address.

A test that starts peers in other processes must name their ports before
they bind them. A port the kernel hands out for ``bind(("127.0.0.1", 0))``
comes from its ephemeral range, the range outbound connections take their
local ports from too: between picking the port and the peer binding it, a
peer started earlier may connect out from that very port, and the later
peer fails with "address already in use". :func:`free_port` draws from
below the ephemeral range instead, where the kernel never picks local ports
on its own.
"""

from __future__ import annotations

import random
import socket
import threading

_FLOOR = 10_000
"""Lowest port drawn: above the well-known and most registered services."""
_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"

_issued: set[int] = set()
_lock = threading.Lock()
_rng = random.SystemRandom()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux: from ``/proc``; elsewhere
    the IANA range 49152-65535)."""
    try:
        with open(_RANGE_FILE) as f:
            low, high = (int(x) for x in f.read().split()[:2])
    except (OSError, ValueError):
        return 49152, 65535
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` (an IPv4 or IPv6 address, such as ``"::1"``)
    that nothing listens on now, drawn below the ephemeral range, and never
    one this process was given before.

    Checked by binding it; the caller's peer binds it later, so another
    program could still take it in between, but no outbound connection of
    this machine will. Falls back to a port from ``bind((host, 0))`` if the
    range below the ephemeral one is too small or full.
    """
    low, _ = ephemeral_range()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # "::1" as well as "127.0.0.1"
    with _lock:
        if low - _FLOOR >= 1000:
            for _ in range(200):
                port = _rng.randrange(_FLOOR, low)
                if port in _issued:
                    continue
                with socket.socket(family) as s:
                    try:
                        s.bind((host, port))
                    except OSError:
                        continue
                _issued.add(port)
                return port
        with socket.socket(family) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        _issued.add(port)
        return port
