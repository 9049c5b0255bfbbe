"""Tests of the sans-I/O frame codec."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftlib.core.messages import MESSAGE_TYPES, AppendEntries, RequestVote, TimeoutNow
from raftlib.errors import FrameTooLarge, ProtocolError
from raftlib.transport.framing import (
    MAX_NAME_LENGTH,
    MESSAGE_SCHEMAS,
    FieldKind,
    FrameDecoder,
    decode_message,
    encode_frame,
    encode_message,
    is_message_type,
)
from raftlib.types import Entry, EntryKind

# --------------------------------------------------------------------------- strategies

ints = st.integers(min_value=0, max_value=2**64 - 1)
names = st.text(max_size=20) | st.text(min_size=MAX_NAME_LENGTH, max_size=MAX_NAME_LENGTH)
entries = st.lists(
    st.builds(Entry, ints, ints, st.sampled_from(list(EntryKind)), st.binary(max_size=64)), max_size=5
).map(tuple)
_FIELD_STRATEGIES: dict[FieldKind, st.SearchStrategy[Any]] = {
    FieldKind.INT: ints,
    FieldKind.STR: names,
    FieldKind.BOOL: st.booleans(),
    FieldKind.ENTRIES: entries,
    FieldKind.BYTES: st.binary(max_size=64),
}


def message_of(name: str) -> st.SearchStrategy[Any]:
    """Messages of one type with every field drawn from its wire type."""
    cls = MESSAGE_TYPES[name]
    return st.builds(cls, *[_FIELD_STRATEGIES[kind] for _, kind in MESSAGE_SCHEMAS[name]])


messages = st.one_of(*[message_of(name) for name in sorted(MESSAGE_TYPES)])

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=10) | st.binary(max_size=10),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


def raw_frame(payload: bytes) -> bytes:
    """Wrap arbitrary payload bytes in a length header."""
    return struct.pack(">I", len(payload)) + payload


def body_of(msg: Any) -> list[Any]:
    """The wire body of a message, as the decoder hands it over."""
    decoder = FrameDecoder(1 << 20)
    [(_, body)] = decoder.feed(encode_message(msg))
    return body


def sample_append() -> AppendEntries:
    return AppendEntries(3, "s1", "s2", 5, 2, (Entry(3, 6, EntryKind.NORMAL, b"cmd"),), 4, 0)


# --------------------------------------------------------------------------- schema table


def test_schema_covers_every_field_of_every_message_type() -> None:
    assert set(MESSAGE_SCHEMAS) == set(MESSAGE_TYPES)
    for name, cls in MESSAGE_TYPES.items():
        assert [f for f, _ in MESSAGE_SCHEMAS[name]] == [f.name for f in dataclasses.fields(cls)]
        assert all(isinstance(kind, FieldKind) for _, kind in MESSAGE_SCHEMAS[name])


def test_schema_kinds_match_known_fields() -> None:
    append = dict(MESSAGE_SCHEMAS["AppendEntries"])
    assert append["entries"] is FieldKind.ENTRIES
    assert append["src"] is FieldKind.STR and append["dst"] is FieldKind.STR
    assert append["term"] is FieldKind.INT
    assert dict(MESSAGE_SCHEMAS["RequestVote"])["pre_vote"] is FieldKind.BOOL


def test_is_message_type() -> None:
    for name in MESSAGE_TYPES:
        assert is_message_type(name)
    assert not is_message_type("Hello")
    assert not is_message_type(["RequestVote"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- round trips


@given(messages)
def test_every_message_type_round_trips(msg: Any) -> None:
    frames = FrameDecoder(1 << 20).feed(encode_message(msg))
    assert len(frames) == 1
    type_name, body = frames[0]
    assert type_name == type(msg).__name__
    decoded = decode_message(type_name, body)
    assert decoded == msg
    assert type(decoded) is type(msg)
    if isinstance(decoded, AppendEntries):
        assert all(type(e.kind) is EntryKind for e in decoded.entries)


def test_wire_format_is_documented_layout() -> None:
    frame = encode_message(TimeoutNow(7, "a", "b"))
    (size,) = struct.unpack(">I", frame[:4])
    assert size == len(frame) - 4
    assert msgpack.unpackb(frame[4:]) == {"v": 1, "t": "TimeoutNow", "b": [7, "a", "b"]}
    payload = msgpack.unpackb(encode_message(sample_append())[4:])
    assert payload["b"][5] == [[3, 6, 0, b"cmd"]]


def test_encode_frame_round_trips_other_types() -> None:
    body = ["s1", "127.0.0.1:9", {"k": b"\x00"}]
    assert FrameDecoder(1024).feed(encode_frame("Hello", body)) == [("Hello", body)]


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(TypeError):
        encode_message("hello")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_frame(3, [])  # type: ignore[arg-type]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=15), st.data())
def test_arbitrary_chunk_splits_decode_identically(msgs: list[Any], data: st.DataObject) -> None:
    stream = b"".join(encode_message(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    decoder = FrameDecoder(1 << 20)
    out: list[tuple[str, Any]] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        out.extend(decoder.feed(stream[previous:cut]))
        previous = cut
    assert out == FrameDecoder(1 << 20).feed(stream)
    assert [decode_message(t, b) for t, b in out] == msgs
    assert decoder.buffered == 0


def test_byte_at_a_time() -> None:
    stream = encode_message(sample_append()) * 3
    decoder = FrameDecoder(1024)
    out = [frame for i in range(len(stream)) for frame in decoder.feed(stream[i : i + 1])]
    assert [decode_message(t, b) for t, b in out] == [sample_append()] * 3


def test_partial_frame_is_buffered() -> None:
    frame = encode_message(sample_append())
    decoder = FrameDecoder(1024)
    assert decoder.feed(frame + frame[:7]) != []
    assert decoder.buffered == 7
    assert len(decoder.feed(frame[7:])) == 1
    assert decoder.buffered == 0


# --------------------------------------------------------------------------- size limits


def test_oversized_header_raises_before_buffering() -> None:
    decoder = FrameDecoder(1000)
    with pytest.raises(FrameTooLarge, match="1001"):
        decoder.feed(struct.pack(">I", 1001))  # only the header: no body yet
    assert decoder.buffered == 0


def test_oversized_frame_after_good_frames() -> None:
    good = encode_message(TimeoutNow(1, "a", "b"))
    decoder = FrameDecoder(100, first_frame_size=50)
    assert not decoder.started
    assert len(decoder.feed(good)) == 1
    assert decoder.started  # from now on max_frame_size bounds every frame
    with pytest.raises(FrameTooLarge) as refused:
        decoder.feed(struct.pack(">I", 2**32 - 1) + b"x" * 10)
    assert (refused.value.size, refused.value.limit) == (2**32 - 1, 100)  # what a peer answers with
    assert decoder.buffered == 0
    with pytest.raises(ProtocolError):  # the decoder stays failed
        decoder.feed(good)


def test_frame_at_the_limit_is_accepted() -> None:
    frame = encode_frame("Blob", b"x" * 200)
    limit = len(frame) - 4
    assert len(FrameDecoder(limit).feed(frame)) == 1
    with pytest.raises(FrameTooLarge):
        FrameDecoder(limit - 1).feed(frame)


def test_frame_too_large_is_a_protocol_error() -> None:
    assert issubclass(FrameTooLarge, ProtocolError)


def test_invalid_max_frame_size() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(0)


# --------------------------------------------------------------------------- malformed envelopes


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),  # never-used msgpack byte
        (b"\x92\x01", "not valid msgpack"),  # truncated array
        (msgpack.packb(1) + msgpack.packb(2), "not valid msgpack"),  # trailing data
        (msgpack.packb([1, "t", []]), "map"),
        (msgpack.packb({"v": 1, "t": "TimeoutNow"}), "lacks"),
        (msgpack.packb({"v": 2, "t": "TimeoutNow", "b": []}), "version"),
        (msgpack.packb({"v": True, "t": "TimeoutNow", "b": []}), "version"),
        (msgpack.packb({"v": 1, "t": b"TimeoutNow", "b": []}, use_bin_type=True), "type must be a str"),
        (msgpack.packb({"v": 1, "t": 5, "b": []}), "type must be a str"),
        (msgpack.packb({1: 1, "t": "x", "b": []}), "lacks"),  # an int key is no "v"
        (msgpack.packb({"v": 1, "t": "x", "b": {(1, 2): 3}}), "not valid msgpack"),  # an array as key
        (msgpack.packb({"v": 1, "t": "x", "b": {msgpack.Timestamp(1): 3}}), "not valid msgpack"),
        (msgpack.packb({"v": 1, "t": "x", "b": {msgpack.ExtType(5, b""): 3}}), "not valid msgpack"),
    ],
)
def test_malformed_payloads_raise_protocol_error(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        FrameDecoder(1024).feed(raw_frame(payload))


def test_maps_with_scalar_keys_decode() -> None:
    """Request bodies carry user values: a dict keyed by ints (or floats,
    bools, None, bytes) must travel as it does within a peer."""
    body = [1, "write", {"command": {1: "a", 2.5: {None: [True, {b"k": 0, False: 1}]}}}]
    assert FrameDecoder(1024).feed(encode_frame("Request", body)) == [("Request", body)]


def test_unknown_type_names_pass_the_decoder() -> None:
    assert FrameDecoder(1024).feed(encode_frame("Whatever", None)) == [("Whatever", None)]
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode_message("Whatever", None)


# --------------------------------------------------------------------------- schema violations


def _with(body: list[Any], index: int, value: Any) -> list[Any]:
    body = list(body)
    body[index] = value
    return body


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda b: _with(b, 0, True), "AppendEntries.term"),  # bool for int
        (lambda b: _with(b, 0, -1), "AppendEntries.term"),  # negative term
        (lambda b: _with(b, 0, 1.0), "AppendEntries.term"),
        (lambda b: _with(b, 3, "5"), "AppendEntries.prev_log_index"),
        (lambda b: _with(b, 1, 7), "AppendEntries.src"),
        (lambda b: _with(b, 2, "x" * (MAX_NAME_LENGTH + 1)), "AppendEntries.dst"),
        (lambda b: _with(b, 5, None), "AppendEntries.entries"),
        (lambda b: _with(b, 5, [[1, 2, 0]]), r"AppendEntries.entries\[0\]"),
        (lambda b: _with(b, 5, [(1, 2, 0, b"")]), r"AppendEntries.entries\[0\]"),  # never from msgpack
        (lambda b: _with(b, 5, [[1, 2, 9, b""]]), r"AppendEntries.entries\[0\].kind"),  # bad kind
        (lambda b: _with(b, 5, [[1, 2, False, b""]]), r"AppendEntries.entries\[0\].kind"),
        (lambda b: _with(b, 5, [[1, 2, 0, "text"]]), r"AppendEntries.entries\[0\].data"),
        (lambda b: _with(b, 5, [[1, 2, 0, b""], [-1, 2, 0, b""]]), r"AppendEntries.entries\[1\].term"),
        (lambda b: _with(b, 5, [[1, True, 0, b""]]), r"AppendEntries.entries\[0\].index"),
        # after entries of other kinds, the position is still the entry's own
        (lambda b: _with(b, 5, [[1, 2, 0, b"a"], [1, 3, 2, b""], [1, 4, 0, None]]), r"AppendEntries.entries\[2\].data"),
        (lambda b: b[:-1], "8 fields, got 7"),  # wrong field count
        (lambda b: b + [0], "8 fields, got 9"),
        (lambda b: {"term": 1}, "must be a list"),
        (lambda b: tuple(b), "must be a list"),
    ],
)
def test_schema_violations_name_the_field(mutate: Any, field: str) -> None:
    body = mutate(body_of(sample_append()))
    with pytest.raises(ProtocolError, match=field):
        decode_message("AppendEntries", body)


def test_bool_field_rejects_int() -> None:
    body = _with(body_of(RequestVote(1, "a", "b", 0, 0)), 5, 1)
    with pytest.raises(ProtocolError, match="RequestVote.pre_vote"):
        decode_message("RequestVote", body)


def test_max_length_names_are_accepted() -> None:
    msg = TimeoutNow(1, "a" * MAX_NAME_LENGTH, "b")
    assert decode_message("TimeoutNow", body_of(msg)) == msg


# --------------------------------------------------------------------------- fuzzing


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5))
def test_random_bytes_raise_only_protocol_error(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(256)
    previous = 0
    try:
        for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
            for type_name, body in decoder.feed(data[previous:cut]):
                if is_message_type(type_name):
                    decode_message(type_name, body)
            previous = cut
    except ProtocolError:
        pass


@given(st.sampled_from(sorted(MESSAGE_TYPES)) | st.text(max_size=12), msgpack_values)
def test_random_bodies_raise_only_protocol_error(type_name: str, body: Any) -> None:
    frame = encode_frame(type_name, body)
    [(name, decoded_body)] = FrameDecoder(1 << 16).feed(frame)
    try:
        decode_message(name, decoded_body)
    except ProtocolError:
        pass


@given(messages, st.data())
def test_mutated_valid_frames_raise_only_protocol_error(msg: Any, data: st.DataObject) -> None:
    frame = bytearray(encode_message(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    try:
        for type_name, body in FrameDecoder(1 << 16).feed(bytes(frame)):
            if is_message_type(type_name):
                decode_message(type_name, body)
    except ProtocolError:
        pass


def test_added_fields_are_appended_to_a_list_body_and_checked() -> None:
    assert FrameDecoder(1024).feed(encode_frame("Hello", ["s1", ""], ["id"])) == [("Hello", ["s1", "", "id"])]
    for body, added in [(["s1", ""], "id"), ("s1", ["id"]), (["s1", ""], {"c": 1})]:
        payload = msgpack.packb({"v": 1, "t": "Hello", "b": body, "x": added})
        with pytest.raises(ProtocolError, match="added fields"):
            FrameDecoder(1024).feed(struct.pack(">I", len(payload)) + payload)
    # A Raft message with added fields no longer has its schema's field count.
    frame = encode_frame("TimeoutNow", [1, "a", "b"], ["extra"])
    with pytest.raises(ProtocolError):
        decode_message(*FrameDecoder(1024).feed(frame)[0])
