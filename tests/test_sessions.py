"""The replicated table of client sessions, on its own (raftlib.sessions)."""

from __future__ import annotations

import msgpack

from raftlib.sessions import Outcome, SessionTable, open_settings


def test_the_session_ttl_travels_in_open_entries_and_snapshots() -> None:
    """A peer that installs a snapshot expires sessions by the cluster's ttl,
    not by its own, until it applies the next OPEN entry."""
    table = SessionTable(ttl=3600.0, max_sessions=10)
    table.configure(open_settings(10.0, 10))
    table.tick(100.0)
    table.open("c")
    copy = SessionTable(ttl=0.5, max_sessions=10)
    copy.restore(table.encode())
    copy.tick(105.0)  # 5 s idle: gone with a ttl of 0.5 s, kept with the cluster's 10 s
    assert "c" in copy and copy.ttl == 10.0
    copy.tick(111.0)
    assert "c" not in copy
    # A table of an older version carries no ttl: the peer's own stays.
    raw = msgpack.unpackb(table.encode())
    del raw["ttl"]
    old = SessionTable(ttl=0.5, max_sessions=10)
    old.restore(msgpack.packb(raw))
    assert old.ttl == 0.5
    # Settings that name no usable ttl change nothing.
    for settings in (b"", b"\xc1", msgpack.packb({"ttl": -1.0}), msgpack.packb([1])):
        old.configure(settings)
        assert old.ttl == 0.5


def test_a_full_table_drops_the_session_used_longest_ago_alike_after_a_snapshot() -> None:
    table = SessionTable(ttl=3600.0, max_sessions=100)
    table.configure(open_settings(3600.0, 2))
    for stamp, client in ((1.0, "a"), (2.0, "b")):
        table.tick(stamp)
        table.open(client)
    table.tick(3.0)
    table.check("a", 1, 0, b"cmd")  # "a" used after "b"
    copy = SessionTable(ttl=3600.0, max_sessions=100)
    copy.restore(table.encode())
    assert copy.max_sessions == 2
    for t in (table, copy):
        t.tick(4.0)
        t.open("c")
        assert "b" not in t and "a" in t and "c" in t
    # A table of an older version lists its sessions in the order they were opened.
    raw = msgpack.unpackb(table.encode())
    raw["sessions"] = dict(reversed(list(raw["sessions"].items())))
    old = SessionTable(ttl=3600.0, max_sessions=2)
    old.restore(msgpack.packb(raw))
    old.open("d")
    assert "a" not in old and "c" in old


def test_a_snapshot_keeps_the_commands_of_the_results_it_keeps() -> None:
    """A peer that installed a snapshot tells a retry from another command
    that reuses its sequence number, as the peers that applied the write do."""
    table = SessionTable(ttl=3600.0, max_sessions=10)
    table.open("c")
    table.record("c", 1, True, b"\xa2ok", b"command")
    copy = SessionTable(ttl=3600.0, max_sessions=10)
    copy.restore(table.encode())
    assert copy.peek("c", 1, b"command") == (Outcome.DUPLICATE, (True, b"\xa2ok"))
    assert copy.peek("c", 1, b"another") == (Outcome.CONFLICT, None)
    # Acknowledged, the result and its command are forgotten.
    assert copy.check("c", 2, 1, b"next") == (Outcome.APPLY, None)
    assert copy.check("c", 1, 1, b"command") == (Outcome.ACKNOWLEDGED, None)
