"""KVStateMachine on its own: every command and its refusals, versions,
snapshots, determinism, and how a watch turns changes into events."""

from __future__ import annotations

import asyncio
import random
from typing import Any, AsyncIterator

import pytest

from raftlib import codec, errors
from raftlib.kv import DEFAULT_SCOPE, KVClient, KVEvent, KVStateMachine, KVWatch
from raftlib.types import Change


def applied(sm: KVStateMachine, command: Any) -> Any:
    """Apply ``command`` as the runtime does: decoded from msgpack, result re-encoded."""
    return codec.roundtrip(sm.handle_write(codec.roundtrip(command)))


def read(sm: KVStateMachine, query: Any) -> Any:
    return codec.roundtrip(sm.handle_read(codec.roundtrip(query)))


# -- writes -----------------------------------------------------------------------------


def test_put_get_and_versions() -> None:
    sm = KVStateMachine()
    assert read(sm, ["get", "default", "a"]) is None
    r = applied(sm, ["put", "default", "a", 1])
    assert r == {"op": "put", "scope": "default", "key": "a", "changed": True, "version": 1,
                 "prev_version": 0, "revision": 1}
    r = applied(sm, ["put", "default", "a", {"x": [1, b"\x00"]}])
    assert (r["version"], r["prev_version"], r["revision"]) == (2, 1, 2)
    assert read(sm, ["get", "default", "a"]) == [{"x": [1, b"\x00"]}, 2]
    applied(sm, ["put", "default", "b", None])  # a stored None is a value like any other
    assert read(sm, ["get", "default", "b"]) == [None, 3]
    assert sm.revision == 3


def test_delete() -> None:
    sm = KVStateMachine()
    applied(sm, ["put", "default", "a", 1])
    r = applied(sm, ["delete", "default", "a"])
    assert r == {"op": "delete", "scope": "default", "key": "a", "changed": True, "version": 2,
                 "prev_version": 1, "revision": 2}
    r = applied(sm, ["delete", "default", "a"])
    assert (r["changed"], r["version"], r["prev_version"], r["revision"]) == (False, 0, 0, 2)
    assert read(sm, ["get", "default", "a"]) is None


def test_versions_strictly_increase_across_delete_and_recreate() -> None:
    """No ABA: a re-created key never gets back an old version."""
    sm = KVStateMachine()
    seen = [applied(sm, ["put", "default", "k", "v"])["version"]]
    for _ in range(3):
        seen.append(applied(sm, ["delete", "default", "k"])["version"])
        applied(sm, ["put", "default", "other", 0])  # other changes move the revision too
        seen.append(applied(sm, ["put", "default", "k", "v"])["version"])
    assert seen == sorted(set(seen))
    assert read(sm, ["get", "default", "k"])[1] == seen[-1] == sm.revision


def test_cas_by_value() -> None:
    sm = KVStateMachine()
    # expected None: the key must not exist.
    assert applied(sm, ["cas", "default", "k", None, None, 1])["changed"] is True
    assert applied(sm, ["cas", "default", "k", None, None, 2])["changed"] is False
    # Another value must be equal, as a msgpack value.
    miss = applied(sm, ["cas", "default", "k", 2, None, 3])
    assert (miss["changed"], miss["version"], miss["prev_version"], miss["revision"]) == (False, 1, 1, 1)
    for different in (1.0, True, "1", [1]):
        assert applied(sm, ["cas", "default", "k", different, None, 3])["changed"] is False
    hit = applied(sm, ["cas", "default", "k", 1, None, [1, {"a": b"x"}]])
    assert (hit["changed"], hit["version"], hit["prev_version"]) == (True, 2, 1)
    assert applied(sm, ["cas", "default", "k", [1, {"a": b"x"}], None, "z"])["changed"] is True
    assert read(sm, ["get", "default", "k"]) == ["z", 3]


def test_cas_by_value_compares_map_keys_and_floats_as_msgpack_values() -> None:
    sm = KVStateMachine()
    applied(sm, ["put", "default", "m", {1: "a"}])
    # Python finds key 1 for True or 1.0, but as msgpack values the maps differ.
    for different in ({True: "a"}, {1.0: "a"}, {"1": "a"}):
        assert applied(sm, ["cas", "default", "m", different, None, "x"])["changed"] is False
    assert applied(sm, ["cas", "default", "m", {1: "a"}, None, {(1, 2): [0.5]}])["changed"] is True
    assert applied(sm, ["cas", "default", "m", {(1, 2): [0.5]}, None, "y"])["changed"] is True
    # A float matches the same float, NaN included; 0.0 and -0.0 are different msgpack values.
    applied(sm, ["put", "default", "f", float("nan")])
    assert applied(sm, ["cas", "default", "f", float("nan"), None, -0.0])["changed"] is True
    assert applied(sm, ["cas", "default", "f", 0.0, None, 1])["changed"] is False
    assert applied(sm, ["cas", "default", "f", -0.0, None, 1])["changed"] is True


def test_cas_by_value_compares_deeply_nested_values_without_raising() -> None:
    """A value nested as deep as msgpack allows is compared without recursion:
    handle_write never raises, and the outcome does not depend on the stack
    the peer applies it on."""

    def nested(depth: int, leaf: Any) -> Any:
        value = leaf
        for i in range(depth):
            value = [value] if i % 2 else {"k": value}
        return value

    sm = KVStateMachine()
    deep = nested(1000, 1)
    applied(sm, ["put", "default", "k", deep])
    assert applied(sm, ["cas", "default", "k", nested(1000, 2), None, "x"])["changed"] is False
    assert applied(sm, ["cas", "default", "k", deep, None, "y"])["changed"] is True
    assert read(sm, ["get", "default", "k"]) == ["y", 2]


def test_a_value_too_deep_to_be_stored_and_sent_back_is_refused() -> None:
    """An items answer to a client holds each value 6 levels down, and msgpack
    decodes at most 1024: a value nested deeper than 1018 could not be read
    back (nor, deeper still, watched or snapshotted)."""

    def nested(depth: int) -> Any:
        value: Any = 0
        for _ in range(depth):
            value = [value]
        return value

    sm = KVStateMachine()
    assert applied(sm, ["put", "default", "ok", nested(1018)])["changed"] is True
    for command in (["put", "default", "deep", nested(1019)], ["cas", "default", "deep", None, 0, nested(1023)]):
        result = applied(sm, command)
        assert result["error"] == "bad_request" and "nested" in result["message"], result
    assert read(sm, ["get", "default", "deep"]) is None and sm.revision == 1
    restored = KVStateMachine()
    restored.restore(sm.snapshot())
    assert restored.snapshot() == sm.snapshot()


def test_cas_by_version() -> None:
    sm = KVStateMachine()
    assert applied(sm, ["cas", "default", "k", None, 1, "a"])["changed"] is False  # absent has version 0
    assert applied(sm, ["cas", "default", "k", None, 0, "a"])["changed"] is True
    assert applied(sm, ["cas", "default", "k", None, 0, "b"])["changed"] is False
    assert applied(sm, ["cas", "default", "k", None, 1, None])["changed"] is True
    # A stored None is matched by version (expected=None would mean "absent").
    assert applied(sm, ["cas", "default", "k", None, None, "c"])["changed"] is False
    assert applied(sm, ["cas", "default", "k", None, 2, "c"])["changed"] is True
    assert read(sm, ["get", "default", "k"]) == ["c", 3]


async def test_a_client_refuses_an_expected_version_that_is_not_one_before_sending_it() -> None:
    sent: list[Any] = []

    class Recorder:
        async def write(self, command: Any) -> Any:
            sent.append(command)
            return {"op": "cas", "error": "bad_request", "message": "refused by the member", "changed": False}

    kv = KVClient(Recorder())  # type: ignore[arg-type]
    # 2**64 is beyond what msgpack encodes: no member could ever be asked it.
    for bad in (-1, 1.5, True, "3", 2**64):
        with pytest.raises(errors.KVError, match="expected_version must be None or an int from 0 to"):
            await kv.cas("k", None, 1, expected_version=bad)
    assert sent == []


def test_scopes() -> None:
    sm = KVStateMachine()
    assert read(sm, ["scopes"]) == ["default"]
    r = applied(sm, ["create_scope", "billing"])
    assert r == {"op": "create_scope", "scope": "billing", "key": None, "changed": True, "version": 1,
                 "prev_version": 0, "revision": 1}
    assert applied(sm, ["create_scope", "billing"])["error"] == "scope_exists"
    applied(sm, ["put", "billing", "a", 1])
    applied(sm, ["put", "billing", "b", 2])
    applied(sm, ["put", "default", "a", 3])
    assert read(sm, ["scopes"]) == ["billing", "default"]
    r = applied(sm, ["delete_scope", "billing"])
    assert (r["op"], r["changed"], r["version"], r["deleted"]) == ("delete_scope", True, 5, 2)
    assert read(sm, ["get", "billing", "a"])["error"] == "scope_not_found"
    assert read(sm, ["get", "default", "a"]) == [3, 4]
    applied(sm, ["create_scope", "billing"])
    assert read(sm, ["list", "billing", ""]) == []  # re-created empty


def test_list_and_items() -> None:
    sm = KVStateMachine()
    for key in ("b/2", "a", "b/1", "c"):
        applied(sm, ["put", "default", key, key.upper()])
    assert read(sm, ["list", "default", ""]) == ["a", "b/1", "b/2", "c"]
    assert read(sm, ["list", "default", "b/"]) == ["b/1", "b/2"]
    assert read(sm, ["items", "default", "b/"]) == [4, [["b/1", "B/1", 3], ["b/2", "B/2", 1]]]
    assert read(sm, ["revision"]) == 4


def test_refused_writes_change_nothing_and_are_results_not_exceptions() -> None:
    sm = KVStateMachine()
    applied(sm, ["put", "default", "k", 1])
    before = sm.snapshot()
    cases: list[tuple[Any, str]] = [
        (["put", "nope", "k", 1], "scope_not_found"),
        (["delete", "nope", "k"], "scope_not_found"),
        (["cas", "nope", "k", None, 0, 1], "scope_not_found"),
        (["delete_scope", "nope"], "scope_not_found"),
        (["create_scope", "default"], "scope_exists"),
        (["delete_scope", "default"], "bad_request"),
        (["put", "default", 7, 1], "bad_request"),
        (["put", "default", b"k", 1], "bad_request"),
        (["put", "default", "", 1], "bad_request"),
        (["put", 3, "k", 1], "bad_request"),
        (["put", "default", "k"], "bad_request"),
        (["put", "default", "k", 1, 2], "bad_request"),
        (["cas", "default", "k", 1, 1, 2], "bad_request"),  # both expectations
        (["cas", "default", "k", None, -1, 2], "bad_request"),
        (["cas", "default", "k", None, True, 2], "bad_request"),
        (["cas", "default", "k", None, "1", 2], "bad_request"),
        (["create_scope", ""], "bad_request"),
        (["frobnicate", "default"], "bad_request"),
        ([], "bad_request"),
        ("put", "bad_request"),
        (None, "bad_request"),
        ({"op": "put"}, "bad_request"),
        ([1, 2], "bad_request"),
    ]
    for command, code in cases:
        result = applied(sm, command)
        assert result["error"] == code, command
        assert result["changed"] is False and result["revision"] == 1 and result["message"]
    assert sm.snapshot() == before


def test_refused_reads() -> None:
    sm = KVStateMachine()
    for query, code in [
        (["get", "nope", "k"], "scope_not_found"),
        (["list", "nope", ""], "scope_not_found"),
        (["items", "nope", ""], "scope_not_found"),
        (["get", "default", 1], "bad_request"),
        (["list", "default", None], "bad_request"),
        (["get", "default"], "bad_request"),
        (["scopes", "x"], "bad_request"),
        (["put", "default", "k", 1], "bad_request"),  # a write is not a read
        ([], "bad_request"),
        (42, "bad_request"),
    ]:
        assert read(sm, query)["error"] == code, query


# -- snapshots and determinism ------------------------------------------------------------


def random_commands(rng: random.Random, n: int) -> list[Any]:
    scopes = ["default", "a", "b"]
    keys = ["k1", "k2", "k3", "x/1", "x/2"]
    values: list[Any] = [None, 0, 1, "s", b"b", [1, 2], {"m": 1}, 1.5, True]
    commands: list[Any] = []
    for _ in range(n):
        op = rng.choice(["put", "put", "put", "delete", "cas", "cas", "create_scope", "delete_scope", "bad"])
        scope, key = rng.choice(scopes), rng.choice(keys)
        if op == "put":
            commands.append(["put", scope, key, rng.choice(values)])
        elif op == "delete":
            commands.append(["delete", scope, key])
        elif op == "cas":
            if rng.random() < 0.5:
                commands.append(["cas", scope, key, None, rng.randrange(0, 8), rng.choice(values)])
            else:
                commands.append(["cas", scope, key, rng.choice(values), None, rng.choice(values)])
        elif op == "create_scope":
            commands.append(["create_scope", scope])
        elif op == "delete_scope":
            commands.append(["delete_scope", scope])
        else:
            commands.append(["put", scope, rng.choice([1, b"k", ""]), 1])
    return commands


@pytest.mark.parametrize("seed", range(5))
def test_two_instances_fed_the_same_commands_end_equal(seed: int) -> None:
    commands = random_commands(random.Random(seed), 400)
    a, b = KVStateMachine(), KVStateMachine()
    results_a = [applied(a, c) for c in commands]
    results_b = [applied(b, c) for c in commands]
    assert results_a == results_b
    assert a.snapshot() == b.snapshot()
    assert a.revision == sum(1 for r in results_a if r["changed"])
    # Rule 2: the revision moves by exactly one per change.
    revision = 0
    for r in results_a:
        assert r["revision"] == revision + (1 if r["changed"] else 0)
        revision = r["revision"]


@pytest.mark.parametrize("seed", range(3))
def test_snapshot_restore_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    commands = random_commands(rng, 300)
    original = KVStateMachine()
    for c in commands[:200]:
        applied(original, c)
    copy = KVStateMachine()
    applied(copy, ["put", "default", "stale", 1])  # replaced by the restore
    copy.restore(original.snapshot())
    assert copy.snapshot() == original.snapshot()
    assert copy.revision == original.revision
    for query in (["scopes"], ["revision"], ["items", "default", ""], ["get", "default", "stale"]):
        assert read(copy, query) == read(original, query)
    # Both carry on identically after the restore.
    assert [applied(copy, c) for c in commands[200:]] == [applied(original, c) for c in commands[200:]]
    assert copy.snapshot() == original.snapshot()


def test_an_empty_store_round_trips_and_default_always_exists() -> None:
    sm = KVStateMachine()
    sm.restore(KVStateMachine().snapshot())
    assert read(sm, ["scopes"]) == [DEFAULT_SCOPE] and sm.revision == 0
    sm.restore(codec.pack({"format": 1, "revision": 0, "scopes": {}}))
    assert read(sm, ["scopes"]) == [DEFAULT_SCOPE]


@pytest.mark.parametrize("data", [
    b"\xc1",
    codec.pack([1, 2]),
    codec.pack({"format": 2, "revision": 0, "scopes": {}}),
    codec.pack({"format": 1, "revision": -1, "scopes": {}}),
    codec.pack({"format": 1, "revision": 1, "scopes": {"default": [["k", 1]]}}),
    codec.pack({"format": 1, "revision": 1, "scopes": {"default": [["k", 1, 2]]}}),  # version > revision
    codec.pack({"format": 1, "revision": 1, "scopes": {1: []}}),
])
def test_restore_rejects_what_is_not_a_snapshot(data: bytes) -> None:
    sm = KVStateMachine()
    applied(sm, ["put", "default", "k", 1])
    with pytest.raises(ValueError, match="not a KVStateMachine snapshot"):
        sm.restore(data)
    assert read(sm, ["get", "default", "k"]) == [1, 1]  # unchanged


# -- watch: changes to events ------------------------------------------------------------


def feed_of(commands: list[Any]) -> tuple[KVStateMachine, list[Change]]:
    """Apply ``commands`` and return the change feed a peer would produce (index = position + 1)."""
    sm = KVStateMachine()
    return sm, [Change(i, 1, codec.roundtrip(c), applied(sm, c)) for i, c in enumerate(commands, start=1)]


def make_watch(changes: list[Change], scope: str | None = "default", prefix: str = "",
               from_revision: int | None = None, applied_index: int = 0, revision: int = 0) -> KVWatch:
    async def listen(from_index: int, *, reaching: int | None = None) -> AsyncIterator[Change]:
        for change in changes:
            if change.index >= from_index:
                yield change

    async def position() -> int:
        return applied_index

    async def read_revision(consistency: str) -> int:
        return revision

    return KVWatch(listen, position, read_revision, scope, prefix, from_revision)


async def drain(watch: KVWatch) -> list[KVEvent]:
    return [event async for event in watch]


COMMANDS: list[Any] = [
    ["put", "default", "app/a", 1],            # rev 1
    ["create_scope", "other"],                 # rev 2
    ["put", "other", "app/a", "x"],            # rev 3
    ["put", "default", "zzz", 2],              # rev 4
    ["delete", "default", "missing"],          # no change
    ["cas", "default", "app/a", 1, None, 5],   # rev 5
    ["cas", "default", "app/a", 1, None, 6],   # fails
    ["put", "nope", "k", 1],                   # refused
    ["delete", "default", "app/a"],            # rev 6
    ["delete_scope", "other"],                 # rev 7
]


async def test_watch_turns_changes_into_events_of_its_scope_and_prefix() -> None:
    _, changes = feed_of(COMMANDS)
    events = await drain(make_watch(changes, "default", "app/", from_revision=1))
    assert events == [
        KVEvent("put", "default", "app/a", 1, 1, 1, 0),
        KVEvent("put", "default", "app/a", 5, 5, 6, 1),
        KVEvent("delete", "default", "app/a", None, 6, 9, 5),
    ]
    events = await drain(make_watch(changes, "other", "nothing-matches/", from_revision=0))
    assert [(e.kind, e.key, e.version) for e in events] == [("scope_created", None, 2), ("scope_deleted", None, 7)]
    everything = await drain(make_watch(changes, None, from_revision=1))
    assert [e.version for e in everything] == [1, 2, 3, 4, 5, 6, 7]


async def test_watch_from_a_revision_skips_older_changes_and_from_now_starts_after_the_position() -> None:
    _, changes = feed_of(COMMANDS)
    assert [e.version for e in await drain(make_watch(changes, None, from_revision=5))] == [5, 6, 7]
    # From "now": the member had applied index 3 (revision 3) and the store was at
    # revision 4 when read, so the change at index 4 (revision 4) came before "now".
    watch = make_watch(changes, None, applied_index=3, revision=4)
    await watch.start()
    assert watch.first_revision == 5
    assert [e.version for e in await drain(watch)] == [5, 6, 7]


async def test_watch_raises_when_the_feed_no_longer_reaches_back_or_has_a_gap() -> None:
    _, changes = feed_of(COMMANDS)
    with pytest.raises(errors.LogCompacted, match="revision 2"):
        await drain(make_watch(changes[3:], None, from_revision=2))  # the oldest kept is revision 4
    assert [e.version for e in await drain(make_watch(changes[3:], None, from_revision=4))] == [4, 5, 6, 7]
    gap = changes[:3] + changes[4:]
    with pytest.raises(errors.KVError, match="skipped revisions 4 to 4"):
        await drain(make_watch(gap, None, from_revision=1))


async def test_a_watch_from_a_revision_asks_for_a_feed_that_says_at_once_if_it_cannot_reach_it() -> None:
    """The member has applied index 4, at revision 4. A newer revision is
    read from index 5 on; an older one from the oldest change kept, with the
    feed made to reach back to index 4, so that a member that keeps nothing
    that old (restarted from a snapshot) raises instead of waiting for the
    next write, naming the oldest revision a watch can start at."""
    _, changes = feed_of(COMMANDS)
    asked: list[tuple[int, int | None, str]] = []

    def member(kept: list[Change]) -> tuple[Any, Any, Any]:
        async def listen(from_index: int, *, reaching: int | None = None) -> AsyncIterator[Change]:
            asked.append((from_index, reaching, consistency[-1]))
            if reaching is not None and not any(c.index <= reaching for c in kept):
                raise errors.LogCompacted(f"no change at or before index {reaching} is kept on s1; listen from 11")
            for change in kept:
                if change.index >= from_index:
                    yield change

        consistency: list[str] = []

        async def position() -> int:
            return 4

        async def read_revision(how: str) -> int:
            consistency.append(how)
            return 4

        return listen, position, read_revision

    assert [e.version for e in await drain(KVWatch(*member(changes), None, "", 6))] == [6, 7]
    assert [e.version for e in await drain(KVWatch(*member(changes), None, "", 2))] == [2, 3, 4, 5, 6, 7]
    assert asked == [(5, None, "stale"), (0, 4, "stale")]
    with pytest.raises(errors.LogCompacted, match="revision 2 to 4 .*the oldest revision .* is 5") as raised:
        await drain(KVWatch(*member([]), None, "", 2))
    assert "index" not in str(raised.value)


async def test_a_watch_whose_feed_lands_on_a_member_that_keeps_less_starts_from_what_it_keeps() -> None:
    """The watch positioned itself on a member that had applied index 4 (at
    revision 4), then its feed reached a member that restarted from a
    snapshot at index 6: the feed from index 5 is compacted there, but the
    changes the watch wants (from revision 8, or from "now") are kept. It
    starts from the oldest change that member keeps; one it does not keep
    is still refused."""
    _, changes = feed_of([["put", "default", "k", i] for i in range(10)])  # revision i + 1 at index i + 1
    asked: list[int] = []

    async def listen(from_index: int, *, reaching: int | None = None) -> AsyncIterator[Change]:
        asked.append(from_index)
        if 0 < from_index <= 6:
            raise errors.LogCompacted("changes up to index 6 are no longer kept on s2; listen from 7")
        for change in changes[6:]:
            if change.index >= from_index:
                yield change

    async def four(*_: Any) -> int:
        return 4

    assert [e.version for e in await drain(KVWatch(listen, four, four, None, "", 8))] == [8, 9, 10]
    assert asked == [5, 0]
    now = KVWatch(listen, four, four, None, "", None)
    await now.start()
    with pytest.raises(errors.LogCompacted, match="revision 5 to 6"):
        await drain(now)
    with pytest.raises(errors.LogCompacted, match="revision 6 to 6"):
        await drain(KVWatch(listen, four, four, None, "", 6))


async def test_a_watch_that_falls_behind_what_members_keep_says_so_in_revisions() -> None:
    """The feed's LogCompacted names log indexes and Peer.listen; a watch's
    reader needs the revision to resume from and how."""
    _, changes = feed_of(COMMANDS)

    def listen_then_compacted(kept: list[Change]) -> Any:
        async def listen(from_index: int, *, reaching: int | None = None) -> AsyncIterator[Change]:
            for change in kept:
                yield change
            raise errors.LogCompacted("changes up to index 40 are no longer kept on s1; listen from 41")

        return listen

    async def zero(*_: Any) -> int:
        return 0

    watch = KVWatch(listen_then_compacted(changes[:4]), zero, zero, None, "", 1)
    assert [e.version for e in [await anext(watch) for _ in range(4)]] == [1, 2, 3, 4]
    with pytest.raises(errors.LogCompacted) as raised:
        await anext(watch)
    message = str(raised.value)
    assert "after revision 4" in message and "KVClient.items" in message and "index" not in message
    # Before the first change it read: from the revision it was to start at.
    watch = KVWatch(listen_then_compacted([]), zero, zero, None, "", 3)
    with pytest.raises(errors.LogCompacted, match="from revision 3 on") as raised:
        await anext(watch)
    assert "index" not in str(raised.value)


async def test_watch_ignores_changes_whose_handler_raised_and_checks_its_arguments() -> None:
    _, changes = feed_of(COMMANDS[:1])
    changes.insert(0, Change(0, 1, ["?"], None, "ValueError: x"))
    assert len(await drain(make_watch(changes, from_revision=1))) == 1
    for bad in ({"scope": ""}, {"prefix": 3}, {"from_revision": -1}):
        with pytest.raises(errors.KVError):
            make_watch(changes, **bad)


async def test_a_closed_watch_stops_its_feed() -> None:
    closed = asyncio.Event()

    async def listen(from_index: int, *, reaching: int | None = None) -> AsyncIterator[Change]:
        try:
            _, changes = feed_of(COMMANDS)
            for change in changes:
                yield change
            await asyncio.Event().wait()  # forever, like a live feed
        finally:
            closed.set()

    async def zero(*_: Any) -> int:
        return 0

    async with KVWatch(listen, zero, zero, "default", "", None) as watch:
        first = await anext(watch)
        assert first.version == 1
    assert closed.is_set()
    with pytest.raises(StopAsyncIteration):
        await anext(watch)


async def test_a_watch_closed_by_another_task_stops_at_the_next_event_or_on_cancel() -> None:
    release = asyncio.Event()
    closed = asyncio.Event()
    _, changes = feed_of(COMMANDS[:2])

    async def listen(from_index: int, *, reaching: int | None = None) -> AsyncIterator[Change]:
        try:
            yield changes[0]
            await release.wait()
            yield changes[1]
            await asyncio.Event().wait()
        finally:
            closed.set()

    async def zero(*_: Any) -> int:
        return 0

    watch = KVWatch(listen, zero, zero, None, "", 1)
    seen: list[KVEvent] = []

    async def consume() -> None:
        async for event in watch:
            seen.append(event)

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.01)
    await watch.aclose()  # the consumer is waiting: it stops at its next event
    assert not closed.is_set() and not task.done()
    release.set()
    await asyncio.wait_for(task, 1)
    assert closed.is_set() and [e.version for e in seen] == [1]

    closed.clear()
    watch = KVWatch(listen, zero, zero, None, "", 1)
    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.01)
    task.cancel()  # stops at once
    await watch.aclose()
    await asyncio.gather(task, return_exceptions=True)
    assert closed.is_set()
