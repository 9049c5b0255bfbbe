"""raftlib.codec with its reused packers, and raftlib.types.make_entry."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import msgpack
import pytest

from raftlib import codec
from raftlib.errors import CommandTooLarge
from raftlib.types import Entry, EntryKind, make_entry


def test_pack_matches_msgpack_and_round_trips() -> None:
    for value in (None, 7, -3, 1.5, "é", b"\x00\xff", ["set", "k", b"v" * 64], {"a": [1, {"b": None}]}):
        assert codec.pack(value) == msgpack.packb(value, use_bin_type=True)
        assert codec.roundtrip(value) == value


def test_a_failed_pack_leaves_nothing_behind_for_the_next() -> None:
    with pytest.raises(TypeError, match="the command must be encodable"):
        codec.pack(["set", "k", object()], "command")
    assert codec.pack(["ok"]) == msgpack.packb(["ok"])


def test_pack_inside_pack_on_one_thread() -> None:
    """A list subclass runs Python code while it is packed; a pack() it
    starts must not share the outer call's packer."""

    class Sneaky(list):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            inner.append(codec.pack({"inner": [1, 2, 3]}))
            return super().__iter__()

    inner: list[bytes] = []
    outer = codec.pack(["before", Sneaky([1, 2]), "after"])
    assert msgpack.unpackb(outer) == ["before", [1, 2], "after"]
    assert inner and all(msgpack.unpackb(b) == {"inner": [1, 2, 3]} for b in inner)


def test_pack_from_many_threads_at_once() -> None:
    errors: list[str] = []

    def work(t: int) -> None:
        for i in range(2000):
            value = [t, i, b"x" * (i % 97), {"k": str(i)}]
            if msgpack.unpackb(codec.pack(value)) != value:
                errors.append(f"thread {t}, value {i}")
                return

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def test_pack_still_enforces_the_size_limit() -> None:
    with pytest.raises(CommandTooLarge):
        codec.pack(b"x" * 100, "command", 50)


def test_make_entry_is_an_ordinary_entry() -> None:
    made = make_entry(3, 17, EntryKind.CLIENT, b"data")
    built = Entry(3, 17, EntryKind.CLIENT, b"data")
    assert type(made) is Entry
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.term = 4  # type: ignore[misc]
