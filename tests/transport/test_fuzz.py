"""Fuzzing everything a stranger's bytes reach: the frame decoder, the schema
and value checks, and the Raft core's message handlers.

* :class:`FrameDecoder` fed arbitrary bytes, in arbitrary chunks, or streams
  mixing valid frames with garbage, oversized headers and cut-off frames:
  only :class:`ProtocolError` (or :class:`FrameTooLarge`) escapes, and it
  never holds more than one frame.
* :func:`decode_message` + :func:`check_message` on arbitrary bodies for every
  message type: only :class:`ProtocolError` escapes, and what passes is
  something the core can take.
* :meth:`Raft.step` with arbitrary schema-valid messages (every type, entries
  of every kind with random data, terms and indexes near the node's and up
  to ``2**64 - 1``) against a follower, a (pre-)candidate, a leader, and
  peers with compacted logs: it never raises, and the term, the commit index
  and the committed log never go back.

``RAFTLIB_FUZZ_EXAMPLES`` sets the examples per test (200 by default, a few
seconds in all); for a long run, say ``RAFTLIB_FUZZ_EXAMPLES=20000``.

With ``atheris`` installed, ``python -m transport.test_fuzz [libFuzzer
options]`` (from ``tests/``) runs a coverage-guided harness over the same
path, bytes to core; :func:`test_atheris_harness` runs it briefly.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # The atheris harness (at the end): instrument raftlib for coverage
    # feedback as it is first imported, and nothing else (that would take long).
    import atheris

    with atheris.instrument_imports(include=["raftlib", "storage_adapters"]):
        import raftlib.core.raft
        import raftlib.rpc
        import raftlib.transport.framing  # noqa: F401
        import storage_adapters.memory  # noqa: F401

import math
import os
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftlib.config import ENTRIES_PER_MESSAGE_LIMIT
from raftlib.core.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from raftlib.core.raft import CANDIDATE, FOLLOWER, LEADER, MAX_TERM_STEP, PRE_CANDIDATE, Raft
from raftlib.errors import FrameTooLarge, ProtocolError, RaftError
from raftlib.rpc import check_request, error_from_wire
from raftlib.sessions import ClientEntry, SessionOp
from raftlib.transport.framing import (
    HEADER_SIZE,
    MAX_NAME_LENGTH,
    MAX_WIRE_INT,
    MESSAGE_SCHEMAS,
    FieldKind,
    FrameDecoder,
    check_message,
    decode_message,
    encode_frame,
    encode_message,
    is_message_type,
)
from raftlib.types import Entry, EntryKind, Membership
from storage_adapters.memory import MemoryStorage

from core.network import Network, config

EXAMPLES = int(os.environ.get("RAFTLIB_FUZZ_EXAMPLES", "200"))
pytestmark = pytest.mark.timeout(120 + EXAMPLES // 10)  # room for long runs
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# --------------------------------------------------------------------------- strategies

U64 = 2**64 - 1
wire_ints = st.one_of(
    st.integers(0, 12),
    st.integers(0, U64),
    st.sampled_from([MAX_WIRE_INT - 1, MAX_WIRE_INT, MAX_WIRE_INT + 1, U64]),
)
"""Every int msgpack can carry as unsigned, biased to small and boundary values."""

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), U64) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8) | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=12,
)
"""Arbitrary msgpack-encodable values."""

node_names = st.sampled_from(["a", "b", "c", "zz", "s" * MAX_NAME_LENGTH])
addresses = st.sampled_from(
    ["127.0.0.1:7000", "[::1]:9", "unix:/tmp/p.sock", "host:65535", "bad", "", "h:99999", "unix:", "[zz]:1", "a b:1"]
) | st.text(max_size=10)

memberships = st.one_of(
    st.builds(
        lambda v, l: Membership(v, l).encode(),
        st.dictionaries(node_names | st.text(max_size=4), addresses, max_size=3),
        st.dictionaries(node_names | st.text(max_size=4), addresses, max_size=2),
    ),
    st.fixed_dictionaries({"voters": msgpack_values, "learners": msgpack_values}).map(msgpack.packb),
    msgpack_values.map(msgpack.packb),
    st.binary(max_size=24),
)
"""Configuration bytes: valid ones (some with bad names or addresses) and garbage."""

client_entries = st.one_of(
    st.builds(
        lambda op, client, seq, ack, stamp, cmd: ClientEntry(op, client, seq, ack, stamp, cmd).encode(),
        st.sampled_from(list(SessionOp)), st.text(min_size=1, max_size=8), st.integers(0, MAX_WIRE_INT),
        st.integers(0, MAX_WIRE_INT), st.floats(0, 1e10), st.binary(max_size=8),
    ),
    st.lists(msgpack_values, min_size=6, max_size=6).map(msgpack.packb),
    msgpack_values.map(msgpack.packb),
    st.binary(max_size=24),
)
"""Client-session entry bytes: valid ones and garbage (a ``command`` of
``2**40`` once made the applier allocate a terabyte)."""


def entry_data(kind: EntryKind) -> st.SearchStrategy[bytes]:
    if kind is EntryKind.CONFIG:
        return memberships
    if kind is EntryKind.CLIENT:
        return client_entries
    if kind is EntryKind.NOOP:
        return st.just(b"") | st.binary(max_size=4)
    return st.binary(max_size=16)


entry_kinds = st.sampled_from(list(EntryKind))


@st.composite
def raw_entries(draw: st.DrawFn) -> Any:
    """The wire form of an entries field: ``[term, index, kind, data]`` lists, or not."""
    out: list[Any] = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 9)) == 0:
            out.append(draw(msgpack_values))
            continue
        kind = draw(entry_kinds)
        raw_kind: Any = draw(st.just(int(kind)) | st.integers(-1, 9) | msgpack_values)
        out.append([draw(wire_ints), draw(wire_ints), raw_kind, draw(entry_data(kind) | msgpack_values)])
    return out


_TYPED: dict[FieldKind, st.SearchStrategy[Any]] = {
    FieldKind.INT: wire_ints,
    FieldKind.STR: node_names | st.just("") | st.text(max_size=6) | st.text(min_size=MAX_NAME_LENGTH + 1,
                                                                            max_size=MAX_NAME_LENGTH + 1),
    FieldKind.BOOL: st.booleans(),
    FieldKind.ENTRIES: raw_entries(),
    FieldKind.BYTES: memberships,
}


@st.composite
def bodies(draw: st.DrawFn, type_name: str) -> Any:
    """A body for ``type_name``: right field count with each field mostly of
    its wire type, sometimes a field too few or too many, or anything at all."""
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return draw(msgpack_values)
    fields = [draw(_TYPED[kind] if draw(st.integers(0, 7)) else msgpack_values) for _, kind in MESSAGE_SCHEMAS[type_name]]
    if shape == 1:
        fields = fields[:-1]
    elif shape == 2:
        fields.append(draw(msgpack_values))
    return fields


def wire_round_trip(type_name: str, body: Any) -> tuple[str, Any]:
    """``body`` as the decoder hands it over (lists, not tuples; str vs bytes)."""
    [(name, decoded)] = FrameDecoder(1 << 24).feed(encode_frame(type_name, body))
    return name, decoded


# --------------------------------------------------------------------------- the frame decoder


def feed_all(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[tuple[str, Any]]:
    """Feed ``data`` cut at ``cuts``; check the decoder's bounds after every call."""
    out: list[tuple[str, Any]] = []
    previous = 0
    for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
        frames = decoder.feed(data[previous:cut])
        assert all(type(name) is str for name, _ in frames)
        # What stays buffered is part of one frame: at most a header and a body.
        assert decoder.buffered < HEADER_SIZE + decoder.max_frame_size
        out.extend(frames)
        previous = cut
    return out


@FUZZ
@given(
    st.binary(max_size=3000),
    st.lists(st.integers(0, 3000), max_size=10),
    st.integers(1, 1024),
    st.none() | st.integers(1, 64),
)
def test_arbitrary_bytes_in_arbitrary_chunks(data: bytes, cuts: list[int], limit: int, first: int | None) -> None:
    decoder = FrameDecoder(limit, first_frame_size=first)
    try:
        feed_all(decoder, data, cuts)
    except ProtocolError:
        with pytest.raises(ProtocolError):  # a failed decoder stays failed
            decoder.feed(b"")
        assert decoder.buffered == 0


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    """Valid frames mixed with garbage, oversized headers, bad payloads and cut-off frames."""
    pieces: list[bytes] = []
    for _ in range(draw(st.integers(1, 8))):
        pick = draw(st.integers(0, 6))
        if pick == 0:
            type_name = draw(st.sampled_from(sorted(MESSAGE_TYPES)))
            pieces.append(encode_frame(type_name, draw(bodies(type_name))))
        elif pick == 1:
            pieces.append(encode_frame(draw(st.text(max_size=8)), draw(msgpack_values)))
        elif pick == 2:  # any msgpack value as the whole payload (not a v/t/b map)
            payload = msgpack.packb(draw(msgpack_values))
            pieces.append(len(payload).to_bytes(4, "big") + payload)
        elif pick == 3:
            pieces.append(draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big"))  # a header, maybe oversized
        elif pick == 4:
            frame = encode_frame("Hello", ["x", ""])
            pieces.append(frame[: draw(st.integers(0, len(frame) - 1))])  # cut off
        elif pick == 5:
            envelope = draw(st.fixed_dictionaries({"v": msgpack_values | st.just(1), "t": msgpack_values,
                                                   "b": msgpack_values}))
            payload = msgpack.packb(envelope)
            pieces.append(len(payload).to_bytes(4, "big") + payload)
        else:
            pieces.append(draw(st.binary(max_size=64)))
    return b"".join(pieces)


@FUZZ
@given(hostile_streams(), st.lists(st.integers(0, 4000), max_size=12), st.none() | st.integers(1, 256))
def test_hostile_streams_raise_only_protocol_errors(stream: bytes, cuts: list[int], first: int | None) -> None:
    decoder = FrameDecoder(4096, first_frame_size=first)
    try:
        for type_name, body in feed_all(decoder, stream, cuts):
            if is_message_type(type_name):
                check_message(decode_message(type_name, body))
    except ProtocolError:
        pass


def test_the_first_frame_has_its_own_limit() -> None:
    hello = encode_frame("Hello", ["s1", ""])
    big = encode_frame("Blob", b"x" * 1000)
    # The Hello and a large frame after it, even in one chunk.
    assert [t for t, _ in FrameDecoder(2000, first_frame_size=64).feed(hello + big)] == ["Hello", "Blob"]
    decoder = FrameDecoder(2000, first_frame_size=64)
    with pytest.raises(FrameTooLarge, match="first frame of 1016 bytes exceeds the limit of 64"):
        decoder.feed(big[:4])  # refused from its header: nothing of it is buffered
    assert decoder.buffered == 0
    with pytest.raises(ValueError):
        FrameDecoder(100, first_frame_size=0)


# --------------------------------------------------------------------------- decode_message and check_message


def assert_core_safe(msg: Message) -> None:
    """What :func:`check_message` promises about a message it let through."""
    for field_name, kind in MESSAGE_SCHEMAS[type(msg).__name__]:
        value = getattr(msg, field_name)
        if kind is FieldKind.INT:
            assert 0 <= value <= MAX_WIRE_INT
        elif kind is FieldKind.STR:
            assert 0 < len(value) <= MAX_NAME_LENGTH
    for e in getattr(msg, "entries", ()):
        assert e.term <= MAX_WIRE_INT and e.index <= MAX_WIRE_INT
        if e.kind is EntryKind.CONFIG:
            assert Membership.decode(e.data).voters
        elif e.kind is EntryKind.CLIENT:
            ce = ClientEntry.decode(e.data)
            assert type(ce.command) is bytes and math.isfinite(ce.stamp)
        elif e.kind is EntryKind.NOOP:
            assert e.data == b""
    assert len(getattr(msg, "entries", ())) <= ENTRIES_PER_MESSAGE_LIMIT
    if isinstance(msg, InstallSnapshot):
        assert Membership.decode(msg.membership).voters


@FUZZ
@given(st.data())
def test_arbitrary_bodies_of_every_type(data: st.DataObject) -> None:
    type_name = data.draw(st.sampled_from(sorted(MESSAGE_TYPES)) | st.text(max_size=12))
    body = data.draw(bodies(type_name) if type_name in MESSAGE_TYPES else msgpack_values)
    name, wire_body = wire_round_trip(type_name, body)
    try:
        msg = check_message(decode_message(name, wire_body))
    except ProtocolError:
        return
    assert_core_safe(msg)
    # What passes both checks encodes back to the same frame.
    [(again_name, again_body)] = FrameDecoder(1 << 24).feed(encode_message(msg))
    assert check_message(decode_message(again_name, again_body)) == msg


def test_check_message_names_what_is_wrong() -> None:
    ok_config = Membership({"s1": "127.0.0.1:7000"}).encode()
    cases: list[tuple[Message, str]] = [
        (TimeoutNow(MAX_WIRE_INT + 1, "a", "b"), r"TimeoutNow.term: .* is above 2\*\*63-1"),
        (TimeoutNow(1, "", "b"), "TimeoutNow.src: empty node name"),
        (AppendEntries(1, "a", "b", 0, 0, (Entry(1, MAX_WIRE_INT + 1),), 0), r"entries\[0\]: term and index"),
        (AppendEntries(1, "a", "b", 0, 0, (Entry(1, 1, EntryKind.CONFIG, b"\xc1"),), 0),
         r"entries\[0\].data: not an encoded Membership"),
        (AppendEntries(1, "a", "b", 0, 0, (Entry(1, 1, EntryKind.CONFIG, Membership({"s1": "nowhere"}).encode()),), 0),
         r"entries\[0\].data: address 'nowhere'"),
        (AppendEntries(1, "a", "b", 0, 0, (Entry(1, 1, EntryKind.CONFIG, Membership({"": "h:1"}).encode()),), 0),
         "member names must have"),
        (AppendEntries(1, "a", "b", 0, 0, (Entry(1, 1, EntryKind.CLIENT, msgpack.packb([0, "c", 1, 0, 0.0, 2**40])),), 0),
         r"entries\[0\].data: command must be bytes"),
        (AppendEntries(1, "a", "b", 0, 0, (Entry(1, 1, EntryKind.CLIENT, msgpack.packb([0, "c", 1, 0, math.inf, b""])),), 0),
         "stamp must be a finite"),
        (AppendEntries(1, "a", "b", 0, 0, (Entry(1, 1, EntryKind.NOOP, b"x"),), 0), "a NOOP entry carries no data"),
        (AppendEntries(1, "a", "b", 0, 0, tuple(Entry(1, i + 1) for i in range(ENTRIES_PER_MESSAGE_LIMIT + 1)), 0),
         "more than the 65536 allowed"),
        (InstallSnapshot(2, "a", "b", 5, 1, Membership({"s1": "h:1"}, {"s1": "h:1"}).encode()),
         "InstallSnapshot.membership: a member is both"),
    ]
    for msg, problem in cases:
        with pytest.raises(ProtocolError, match=problem):
            check_message(msg)
    fine = AppendEntries(1, "a", "b", 0, 0, (Entry(1, 1, EntryKind.CONFIG, ok_config), Entry(1, 2, EntryKind.NOOP),
                                             Entry(1, 3, EntryKind.CLIENT, ClientEntry(SessionOp.OPEN, "c").encode())), 0)
    assert check_message(fine) is fine
    with pytest.raises(TypeError):
        check_message("Hello")  # type: ignore[arg-type]


@FUZZ
@given(msgpack_values | st.lists(msgpack_values, min_size=3, max_size=3), msgpack_values)
def test_request_bodies_and_error_payloads(body: Any, payload: Any) -> None:
    """The other frames a stranger can send or answer with."""
    _, wire_body = wire_round_trip("Request", body)
    try:
        check_request(wire_body)
    except ProtocolError:
        pass
    _, wire_payload = wire_round_trip("Response", payload)
    assert isinstance(error_from_wire(wire_payload), RaftError)


@FUZZ
@given(memberships | st.fixed_dictionaries({"voters": st.dictionaries(st.text(max_size=3), msgpack_values,
                                                                      max_size=2),
                                            "learners": msgpack_values}).map(msgpack.packb))
def test_membership_decode_raises_only_value_error(data: bytes) -> None:
    """Whoever decodes a configuration from the wire catches ValueError only
    (learners that are not a map raised TypeError)."""
    try:
        Membership.decode(data)
    except ValueError:
        pass


# --------------------------------------------------------------------------- the core's message handlers

ROLES = ["fresh", "follower", "compacted-follower", PRE_CANDIDATE, CANDIDATE, LEADER, "compacted-leader"]


def build(role: str, check_quorum: bool) -> tuple[Raft, MemoryStorage]:
    """Node ``a`` of a three-node cluster, in ``role``, with a few committed entries."""
    net = Network(["a", "b", "c"], config=config(pre_vote=role == PRE_CANDIDATE, check_quorum=check_quorum),
                  bootstrap=role != "fresh")
    a = net.nodes["a"]
    if role in ("follower", "compacted-follower", PRE_CANDIDATE, CANDIDATE):
        net.elect("b")
        net.propose("b", b"x", b"y")
        net.stabilize()
        if role in (PRE_CANDIDATE, CANDIDATE):
            net.tick("a", a.randomized_timeout + net.config.election_ticks)
            net.drop()
    elif role in (LEADER, "compacted-leader"):
        net.elect("a")
        net.propose("a", b"x", b"y")
        net.stabilize()
        net.propose("a", b"z")  # one entry the followers have not acknowledged
        net.drop()
    if role.startswith("compacted"):
        net.take_snapshot("a")
    assert a.role == {"fresh": FOLLOWER, "compacted-follower": FOLLOWER, "compacted-leader": LEADER}.get(role, role)
    return a, net.storage["a"]


def drive(node: Raft, storage: MemoryStorage) -> list[Message]:
    """Carry out every Ready as the runtime does; return the messages sent."""
    sent: list[Message] = []
    while node.has_ready():
        rd = node.ready()
        sent += rd.messages + rd.messages_after_persist
        if rd.snapshot is not None:
            storage.install_snapshot(rd.snapshot)
        storage.save(rd.hard_state, rd.entries, sync=True)
        node.advance(rd)
    return sent


@st.composite
def entries_after(draw: st.DrawFn, prev: int, prev_term: int, term: int) -> tuple[Entry, ...]:
    """Entries following ``prev``: usually well ordered (so they reach the log), sometimes not."""
    out = []
    t = prev_term
    coherent = draw(st.integers(0, 4)) > 0
    for k in range(draw(st.integers(0, 4))):
        if coherent:
            t = draw(st.integers(max(t, 1), max(t, term, 1)))
            index = prev + 1 + k
        else:
            t, index = draw(wire_ints), draw(wire_ints)
        kind = draw(entry_kinds)
        out.append(Entry(t, index, kind, draw(entry_data(kind))))
    return tuple(out)


@st.composite
def messages_for(draw: st.DrawFn, node: Raft) -> Message:
    """A schema-valid message for ``node``. Three in four are plausible (values
    near its state, relations a correct peer keeps) so that they reach deep
    into the handlers; the others take any value the wire can carry."""
    wild = draw(st.integers(0, 3), label="wild") == 0

    def pick(plausible: st.SearchStrategy[int]) -> int:
        return draw(wire_ints if wild else plausible)

    near = node.term
    term = pick(st.sampled_from([near, near, near, near + 1, near + 2, max(0, near - 1)]))
    src = draw(st.sampled_from(["b", "c", "b", "c", "zz", node.id]))
    dst = draw(st.sampled_from([node.id] * 5 + ["b"]))
    first, last = node.log.first_index(), node.log.last_index()
    index = st.integers(max(0, first - 2), last + 2)
    kind = draw(st.sampled_from(sorted(MESSAGE_TYPES)))
    if kind == "AppendEntries":
        prev = pick(index)
        known = node.log.term_or_none(prev)
        prev_term = pick(st.just(known) if known is not None else st.integers(0 if prev == 0 else 1, max(1, term)))
        prev_term = 0 if prev == 0 and not wild else prev_term
        entries = draw(entries_after(prev, prev_term, term))
        commit = pick(st.integers(0, prev + len(entries) + 2))
        return AppendEntries(term, src, dst, prev, prev_term, entries, commit, pick(st.integers(0, 3)))
    if kind == "AppendEntriesResponse":
        success = draw(st.booleans())
        match = pick(st.integers(0, last + 1))
        reject = pick(st.integers(0, last + 1))
        return AppendEntriesResponse(term, src, dst, success, match, reject, pick(st.integers(0, reject + 1)),
                                     pick(st.integers(0, max(0, term))), pick(st.integers(0, node._read_seq)))
    if kind == "RequestVote":
        last_index = pick(st.integers(0, last + 2))
        last_term = pick(st.just(0) if last_index == 0 else st.integers(1, max(1, term)))
        return RequestVote(term, src, dst, last_index, last_term, draw(st.booleans()), draw(st.booleans()))
    if kind == "RequestVoteResponse":
        return RequestVoteResponse(term, src, dst, draw(st.booleans()), draw(st.booleans()))
    if kind == "InstallSnapshot":
        snap_index = pick(st.integers(1, last + 4))
        return InstallSnapshot(term, src, dst, snap_index, pick(st.integers(1, max(1, term))), draw(memberships))
    return TimeoutNow(term, src, dst)


def committed_terms(node: Raft) -> dict[int, int]:
    """Terms of the last few committed entries still in the log."""
    lo = max(node.log.first_index(), node.commit_index - 8)
    return {i: node.log.term(i) for i in range(lo, node.commit_index + 1)}


@FUZZ
@given(st.sampled_from(ROLES), st.booleans(), st.data())
def test_step_never_raises_and_keeps_invariants(role: str, check_quorum: bool, data: st.DataObject) -> None:
    node, storage = build(role, check_quorum)
    for _ in range(data.draw(st.integers(1, 12), label="inputs")):
        before = (node.term, node.commit_index, committed_terms(node))
        if data.draw(st.integers(0, 5), label="tick?") == 0:
            node.tick()
        else:
            node.step(data.draw(messages_for(node), label="message"))
        sent = drive(node, storage)
        term, commit, terms = before
        assert node.term >= term
        assert node.commit_index >= commit
        for i, t in terms.items():  # what was committed stays (unless a snapshot now covers it)
            assert node.log.term_or_none(i) in (t, None)
        assert node.applied_index <= node.commit_index <= node.log.last_index()
        assert node.log.unstable == []
        assert node.role in (FOLLOWER, PRE_CANDIDATE, CANDIDATE, LEADER)
        assert (node.role == LEADER) == (node.leader == node.id)
        hs = storage.load()[0]
        assert (hs.term, hs.vote, hs.commit) == (node.term, node.vote, node.commit_index)
        for pr in node.progress.values():
            assert 0 <= pr.match < pr.next  # Progress invariant
            assert pr.match <= node.log.last_index()
        for m in sent:
            assert m.src == node.id
            [(name, body)] = FrameDecoder(1 << 24).feed(encode_message(m))
            assert decode_message(name, body) == m


@st.composite
def snapshots_for(draw: st.DrawFn, node: Raft) -> InstallSnapshot:
    """An InstallSnapshot a leader of this or the next term could send ``node``, or one of a term it drops."""
    term = draw(st.sampled_from([node.term, node.term, node.term + 1, max(1, node.term - 1),
                                 node.term + MAX_TERM_STEP + 1]))
    index = draw(st.integers(max(1, node.commit_index - 1), node.log.last_index() + 3))
    members = node.membership if node.membership.voters else Membership({"a": "a:1", "b": "b:1", "c": "c:1"})
    membership = draw(st.just(members.encode()) | memberships)
    return InstallSnapshot(term, draw(st.sampled_from(["b", "c"])), node.id, index,
                           draw(st.integers(1, max(1, term))), membership)


@FUZZ
@given(st.sampled_from(ROLES), st.booleans(), st.data())
def test_installs_snapshot_says_what_step_does(role: str, check_quorum: bool, data: st.DataObject) -> None:
    """The runtime restores the state machine from a snapshot before it
    steps the InstallSnapshot in, only when ``installs_snapshot`` says the
    core will take it: the two must agree on every message."""
    node, storage = build(role, check_quorum)
    for _ in range(data.draw(st.integers(1, 6), label="inputs")):
        msg = data.draw(messages_for(node) | snapshots_for(node), label="message")
        if not isinstance(msg, InstallSnapshot):
            node.step(msg)
            drive(node, storage)
            continue
        expected = node.installs_snapshot(msg)
        node.step(msg)
        installed = False
        while node.has_ready():
            rd = node.ready()
            installed = installed or rd.snapshot is not None
            if rd.snapshot is not None:
                storage.install_snapshot(rd.snapshot)
            storage.save(rd.hard_state, rd.entries, sync=True)
            node.advance(rd)
        assert installed == expected, msg.describe()


# --------------------------------------------------------------------------- atheris


def _atheris_one_input(data: bytes) -> None:
    """Bytes -> frames -> checked messages -> a follower's core."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    first = fdp.ConsumeIntInRange(1, 512)
    chunk = fdp.ConsumeIntInRange(1, 64)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    decoder = FrameDecoder(1 << 16, first_frame_size=first)
    node, storage = build("follower", True)
    try:
        for i in range(0, len(stream), chunk):
            for type_name, body in decoder.feed(stream[i : i + chunk]):
                if is_message_type(type_name):
                    node.step(check_message(decode_message(type_name, body)))
                    drive(node, storage)
    except ProtocolError:
        pass
    assert node.applied_index <= node.commit_index <= node.log.last_index()


def _atheris_seeds(directory: Path) -> None:
    """A seed corpus: well-formed frames of every type, addressed to node ``a``."""
    ms = Membership({"a": "127.0.0.1:1", "b": "127.0.0.1:2"}).encode()
    seeds = [
        AppendEntries(2, "b", "a", 3, 2, (Entry(2, 4, EntryKind.NORMAL, b"x"), Entry(2, 5, EntryKind.CONFIG, ms)), 4),
        AppendEntriesResponse(2, "b", "a", False, 0, 3, 2, 1, 1),
        RequestVote(3, "c", "a", 4, 2, True),
        RequestVoteResponse(2, "c", "a", True),
        InstallSnapshot(3, "b", "a", 9, 3, ms),
        TimeoutNow(2, "b", "a"),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    for i, msg in enumerate(seeds):
        (directory / f"seed-{i}").write_bytes(b"\x00\x00" + encode_frame("Hello", ["b", ""]) + encode_message(msg))


def _atheris_main(argv: list[str]) -> None:
    import tempfile

    import atheris

    corpus = Path(tempfile.mkdtemp(prefix="raftlib-atheris-"))
    _atheris_seeds(corpus)
    atheris.Setup([argv[0], *argv[1:], str(corpus)], _atheris_one_input)
    atheris.Fuzz()


def test_atheris_harness() -> None:
    """A short coverage-guided run (``RAFTLIB_ATHERIS_RUNS`` inputs, 2000 by default)."""
    pytest.importorskip("atheris")
    runs = int(os.environ.get("RAFTLIB_ATHERIS_RUNS", "2000"))
    tests_dir = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests_dir.parent), str(tests_dir)])}
    out = subprocess.run(
        [sys.executable, "-m", "transport.test_fuzz", f"-runs={runs}", "-seed=1", "-max_len=4096"],
        cwd=tests_dir, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Done" in out.stderr, out.stderr[-3000:]


if __name__ == "__main__":
    _atheris_main(sys.argv)
