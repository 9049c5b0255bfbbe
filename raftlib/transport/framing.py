"""Sans-I/O wire codec: length-prefixed msgpack frames.

A frame is a 4-byte big-endian unsigned payload length followed by that many
bytes of msgpack. The payload is a map ``{"v": 1, "t": <type name>, "b": <body>}``:

* ``v`` is the protocol version (only ``1`` exists);
* ``t`` names the frame type: a Raft message class name from
  :data:`~raftlib.core.messages.MESSAGE_TYPES`, or another name such as
  ``"Hello"`` used by the runtime;
* ``b`` is the body. For Raft messages it is the list of the dataclass field
  values in field order, with ``entries`` encoded as ``[term, index, kind, data]``
  lists;
* ``x`` (optional) is a list of fields added to a list body after its
  first version: decoders of earlier versions ignore the key, and
  :class:`FrameDecoder` appends them to the body. So a frame can grow a
  field without breaking older peers that check the body's length.

:class:`FrameDecoder` splits a byte stream into ``(type name, body)`` pairs and
checks only the envelope; :func:`decode_message` turns a body into a message
after checking its schema (field count and wire types), and
:func:`check_message` then checks its values (ranges, names, the contents of
entries) before the message may reach a core. Every malformed input raises
:class:`~raftlib.errors.ProtocolError` (or its subclass
:class:`~raftlib.errors.FrameTooLarge`), never anything else.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import struct
from operator import attrgetter
from typing import Any, Callable

import msgpack

from ..config import ENTRIES_PER_MESSAGE_LIMIT
from ..core.messages import MESSAGE_TYPES, InstallSnapshot, Message
from ..errors import ConfigError, FrameTooLarge, ProtocolError
from ..sessions import SessionOp
from ..types import Entry, EntryKind, Membership, make_entry

__all__ = [
    "PROTOCOL_VERSION",
    "HEADER_SIZE",
    "MAX_NAME_LENGTH",
    "MAX_WIRE_INT",
    "FieldKind",
    "MESSAGE_SCHEMAS",
    "encode_message",
    "encode_frame",
    "decode_message",
    "check_message",
    "is_message_type",
    "FrameDecoder",
]

PROTOCOL_VERSION = 1
"""The only payload version this codec speaks (the ``"v"`` key)."""

HEADER_SIZE = 4
"""Bytes of the length prefix."""

MAX_NAME_LENGTH = 256
"""Longest node name (``src``/``dst``) accepted in a message."""

MAX_WIRE_INT = 2**63 - 1
"""Largest term, index or other int :func:`check_message` accepts: every
count a correct peer sends fits a signed 64-bit integer with room to grow
(msgpack could carry up to ``2**64 - 1``, which a term + 1 would overflow)."""

_MAX_PAYLOAD = 0xFFFFFFFF
_HEADER = struct.Struct(">I")


class FieldKind(enum.Enum):
    """The wire type of one message field."""

    INT = "int"
    """A non-negative int (never a bool)."""
    STR = "str"
    """A node name: a str of at most :data:`MAX_NAME_LENGTH` characters."""
    BOOL = "bool"
    """A bool."""
    ENTRIES = "entries"
    """A list of ``[term, index, kind, data]`` lists (a tuple of :class:`Entry`)."""
    BYTES = "bytes"
    """Opaque bytes."""


_ANNOTATION_KINDS: dict[str, FieldKind] = {
    "int": FieldKind.INT,
    "NodeId": FieldKind.STR,
    "str": FieldKind.STR,
    "bool": FieldKind.BOOL,
    "tuple[Entry, ...]": FieldKind.ENTRIES,
    "bytes": FieldKind.BYTES,
}
"""The one place mapping dataclass annotations (strings, because of
``from __future__ import annotations``) to wire types. A message field with an
annotation missing here makes this module fail at import."""


def _schema_of(cls: type) -> tuple[tuple[str, FieldKind], ...]:
    """Return ``((field name, kind), ...)`` for a message dataclass, in field order."""
    schema = []
    for f in dataclasses.fields(cls):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", repr(f.type))
        kind = _ANNOTATION_KINDS.get(annotation)
        if kind is None:
            raise TypeError(f"framing: no wire type for {cls.__name__}.{f.name}: {annotation!r}")
        schema.append((f.name, kind))
    return tuple(schema)


MESSAGE_SCHEMAS: dict[str, tuple[tuple[str, FieldKind], ...]] = {
    name: _schema_of(cls) for name, cls in MESSAGE_TYPES.items()
}
"""For each Raft message type name, its fields and wire types in body order."""

_KINDS_BY_VALUE: dict[int, EntryKind] = {k.value: k for k in EntryKind}


# --------------------------------------------------------------------------- encoding

_packer = msgpack.Packer(use_bin_type=True)
# One module-level packer, reused: the C implementation packs the plain values
# used here without calling back into Python, so a call is atomic under the GIL.


@functools.lru_cache(maxsize=1024)
def _payload_prefix(type_name: str) -> bytes:
    """The constant payload bytes before the body: ``{"v": 1, "t": name, "b": ...``."""
    prefix: bytes = (
        b"\x83"
        + msgpack.packb("v")
        + msgpack.packb(PROTOCOL_VERSION)
        + msgpack.packb("t")
        + msgpack.packb(type_name, use_bin_type=True)
        + msgpack.packb("b")
    )
    return prefix


def _frame(prefix: bytes, body: bytes) -> bytes:
    """Join the length header, payload prefix and packed body into one frame."""
    size = len(prefix) + len(body)
    if size > _MAX_PAYLOAD:
        raise FrameTooLarge(f"frame payload of {size} bytes does not fit a 4-byte length")
    return b"".join((_HEADER.pack(size), prefix, body))


_entry_values = attrgetter("term", "index", "kind", "data")


def _make_encoder(name: str, cls: type) -> Callable[[Any], bytes]:
    """Build the encoder of one message class (field getters computed once)."""
    names = [field_name for field_name, _ in MESSAGE_SCHEMAS[name]]
    getter = attrgetter(*names)
    prefix = _payload_prefix(name)
    entry_positions = [i for i, (_, kind) in enumerate(MESSAGE_SCHEMAS[name]) if kind is FieldKind.ENTRIES]
    pack = _packer.pack

    if not entry_positions:

        def encode_plain(msg: Any) -> bytes:
            return _frame(prefix, pack(getter(msg)))

        return encode_plain

    def encode_with_entries(msg: Any) -> bytes:
        values = list(getter(msg))
        for i in entry_positions:
            values[i] = list(map(_entry_values, values[i]))
        return _frame(prefix, pack(values))

    return encode_with_entries


_ENCODERS: dict[type, Callable[[Any], bytes]] = {cls: _make_encoder(name, cls) for name, cls in MESSAGE_TYPES.items()}


def encode_message(msg: Message) -> bytes:
    """Encode a Raft message as one complete frame (header included).

    Raises :class:`TypeError` if ``msg`` is not a Raft message.
    """
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        raise TypeError(f"not a Raft message: {type(msg).__name__}")
    return encoder(msg)


def encode_frame(type_name: str, body: Any, added: list[Any] | None = None) -> bytes:
    """Encode a frame of any type (``"Hello"``, client requests, ...).

    ``body`` must be msgpack-serialisable (bytes are sent as bin). ``added``
    (if not empty) goes in the ``x`` key: fields a list ``body`` gained after
    its first version, which decoders of earlier versions do not see.
    """
    if not isinstance(type_name, str):
        raise TypeError(f"frame type name must be a str, got {type(type_name).__name__}")
    if added:
        payload = {"v": PROTOCOL_VERSION, "t": type_name, "b": body, "x": added}
        return _frame(b"", _packer.pack(payload))
    return _frame(_payload_prefix(type_name), _packer.pack(body))


# --------------------------------------------------------------------------- decoding


def is_message_type(name: str) -> bool:
    """Whether ``name`` is the wire name of a Raft message (see :func:`decode_message`)."""
    return type(name) is str and name in MESSAGE_TYPES


def _short(value: Any) -> str:
    """A bounded repr for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_int(where: str, value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ProtocolError(f"{where}: expected a non-negative int, got {_short(value)}")
    return value


def _check_name(where: str, value: Any) -> str:
    if type(value) is not str:
        raise ProtocolError(f"{where}: expected a str, got {_short(value)}")
    if len(value) > MAX_NAME_LENGTH:
        raise ProtocolError(f"{where}: node name longer than {MAX_NAME_LENGTH} characters")
    return value


def _check_bool(where: str, value: Any) -> bool:
    if type(value) is not bool:
        raise ProtocolError(f"{where}: expected a bool, got {_short(value)}")
    return value


def _check_bytes(where: str, value: Any) -> bytes:
    if type(value) is not bytes:
        raise ProtocolError(f"{where}: expected bytes, got {_short(value)}")
    return value


def _decode_entry(where: str, raw: Any) -> Entry:
    if type(raw) is not list or len(raw) != 4:
        raise ProtocolError(f"{where}: expected a [term, index, kind, data] list, got {_short(raw)}")
    term, index, kind, data = raw
    _check_int(f"{where}.term", term)
    _check_int(f"{where}.index", index)
    entry_kind = _KINDS_BY_VALUE.get(kind) if type(kind) is int else None
    if entry_kind is None:
        raise ProtocolError(f"{where}.kind: expected one of {sorted(_KINDS_BY_VALUE)}, got {_short(kind)}")
    if type(data) is not bytes:
        raise ProtocolError(f"{where}.data: expected bytes, got {_short(data)}")
    return make_entry(term, index, entry_kind, data)


_NORMAL = EntryKind.NORMAL


def _check_entries(where: str, value: Any) -> tuple[Entry, ...]:
    if type(value) is not list:
        raise ProtocolError(f"{where}: expected a list of entries, got {_short(value)}")
    entries: list[Entry] = []
    append = entries.append
    for raw in value:
        # The common case checked inline: a well-formed NORMAL entry.
        if type(raw) is list and len(raw) == 4:
            term, index, kind, data = raw
            if (type(term) is int and type(index) is int and type(kind) is int and type(data) is bytes
                    and term >= 0 and index >= 0 and kind == 0):
                append(make_entry(term, index, _NORMAL, data))
                continue
        append(_decode_entry(f"{where}[{len(entries)}]", raw))
    return tuple(entries)


_CHECKERS: dict[FieldKind, Callable[[str, Any], Any]] = {
    FieldKind.INT: _check_int,
    FieldKind.STR: _check_name,
    FieldKind.BOOL: _check_bool,
    FieldKind.ENTRIES: _check_entries,
    FieldKind.BYTES: _check_bytes,
}


def _make_decoder(name: str, cls: type) -> Callable[[Any], Any]:
    """Build the schema-checking decoder of one message class."""
    schema = MESSAGE_SCHEMAS[name]
    steps = tuple((f"{name}.{field_name}", _CHECKERS[kind]) for field_name, kind in schema)
    count = len(steps)

    def decode(body: Any) -> Any:
        if type(body) is not list:
            raise ProtocolError(f"{name}: body must be a list of {count} fields, got {_short(body)}")
        if len(body) != count:
            raise ProtocolError(f"{name}: body must have {count} fields, got {len(body)}")
        return cls(*[check(where, value) for (where, check), value in zip(steps, body)])

    return decode


_DECODERS: dict[str, Callable[[Any], Any]] = {name: _make_decoder(name, cls) for name, cls in MESSAGE_TYPES.items()}


def decode_message(type_name: str, body: Any) -> Message:
    """Build the Raft message named ``type_name`` from a decoded frame body.

    Checks the field count and every field's type. Raises
    :class:`~raftlib.errors.ProtocolError` naming the offending field for
    anything malformed, including an unknown type name.
    """
    decoder = _DECODERS.get(type_name) if type(type_name) is str else None
    if decoder is None:
        raise ProtocolError(f"unknown message type {_short(type_name)}")
    msg: Message = decoder(body)
    return msg


_SESSION_OPS = frozenset(int(op) for op in SessionOp)


def _check_membership(where: str, data: bytes) -> None:
    """``data`` must be a configuration a correct peer could have written:
    decodable, with a voter, names that fit, addresses that parse."""
    # tcp imports this module, so its address parser is imported at use.
    from .tcp import parse_address

    try:
        membership = Membership.decode(data)
    except ValueError:
        raise ProtocolError(f"{where}: not an encoded Membership") from None
    if not membership.voters:
        raise ProtocolError(f"{where}: a configuration without voters")
    if membership.voters.keys() & membership.learners.keys():
        raise ProtocolError(f"{where}: a member is both a voter and a learner")
    for name, address in [*membership.voters.items(), *membership.learners.items()]:
        if not name or len(name) > MAX_NAME_LENGTH:
            raise ProtocolError(f"{where}: member names must have 1 to {MAX_NAME_LENGTH} characters")
        try:
            parse_address(address)
        except ConfigError as exc:
            raise ProtocolError(f"{where}: {exc}") from None


def _check_client_entry(where: str, data: bytes) -> None:
    """``data`` must be an encoded :class:`raftlib.sessions.ClientEntry`
    ``[op, client, seq, ack, stamp, command]``, with nothing to coerce."""
    try:
        raw = msgpack.unpackb(data)
    except Exception:  # msgpack raises several unrelated classes for bad input
        raise ProtocolError(f"{where}: not an encoded client-session entry") from None
    if type(raw) is not list or len(raw) != 6:
        raise ProtocolError(f"{where}: a client-session entry has 6 fields")
    op, client, seq, ack, stamp, command = raw
    if type(op) is not int or op not in _SESSION_OPS:
        raise ProtocolError(f"{where}: unknown client-session operation {_short(op)}")
    if type(client) is not str or not 0 < len(client) <= MAX_NAME_LENGTH:
        raise ProtocolError(f"{where}: client session id must be a str of 1 to {MAX_NAME_LENGTH} characters")
    for value in (seq, ack):
        if type(value) is not int or not 0 <= value <= MAX_WIRE_INT:
            raise ProtocolError(f"{where}: seq and ack must be ints in 0..2**63-1")
    if type(stamp) not in (int, float) or not math.isfinite(stamp) or stamp < 0:
        raise ProtocolError(f"{where}: stamp must be a finite, non-negative number")
    if type(command) is not bytes:
        raise ProtocolError(f"{where}: command must be bytes")


def _check_entry_values(where: str, entries: tuple[Entry, ...]) -> None:
    if len(entries) > ENTRIES_PER_MESSAGE_LIMIT:
        raise ProtocolError(f"{where}: {len(entries)} entries, more than the {ENTRIES_PER_MESSAGE_LIMIT} allowed")
    normal = _NORMAL
    for i, e in enumerate(entries):
        if e.term > MAX_WIRE_INT or e.index > MAX_WIRE_INT:
            raise ProtocolError(f"{where}[{i}]: term and index must be at most 2**63-1")
        if e.kind is normal:
            continue
        if e.kind is EntryKind.CONFIG:
            _check_membership(f"{where}[{i}].data", e.data)
        elif e.kind is EntryKind.CLIENT:
            _check_client_entry(f"{where}[{i}].data", e.data)
        elif e.kind is EntryKind.NOOP and e.data:
            raise ProtocolError(f"{where}[{i}].data: a NOOP entry carries no data")


_FIELDS: dict[type, tuple[tuple[str, str, FieldKind], ...]] = {
    cls: tuple((field_name, f"{name}.{field_name}", kind) for field_name, kind in MESSAGE_SCHEMAS[name])
    for name, cls in MESSAGE_TYPES.items()
}
"""For each message class: (field name, name for errors, wire type), in order."""


def check_message(msg: Message) -> Message:
    """Check the values of a message :func:`decode_message` built; return it.

    :func:`decode_message` checks wire types only. This checks what the
    core must never see: ints above :data:`MAX_WIRE_INT`, empty node names,
    more than ``ENTRIES_PER_MESSAGE_LIMIT`` entries, and entry data a correct
    peer cannot have written (a configuration that does not decode, has no
    voter or an address that does not parse; a client-session entry that
    does not decode; a NOOP with data); likewise an ``InstallSnapshot``'s
    membership. Relations between fields are the core's to check
    (``raftlib.core.raft._malformed``). Raises
    :class:`~raftlib.errors.ProtocolError` naming the field, and
    :class:`TypeError` if ``msg`` is not a Raft message.
    """
    fields = _FIELDS.get(type(msg))
    if fields is None:
        raise TypeError(f"not a Raft message: {type(msg).__name__}")
    for field_name, where, kind in fields:
        value = getattr(msg, field_name)
        if kind is FieldKind.INT:
            if value > MAX_WIRE_INT:
                raise ProtocolError(f"{where}: {_short(value)} is above 2**63-1")
        elif kind is FieldKind.STR:
            if not value:
                raise ProtocolError(f"{where}: empty node name")
        elif kind is FieldKind.ENTRIES:
            _check_entry_values(where, value)
    if isinstance(msg, InstallSnapshot):
        _check_membership("InstallSnapshot.membership", msg.membership)
    return msg


_SCALAR_KEYS = frozenset({str, bytes, int, float, bool, type(None)})
_DECODED_AS: dict[type, str] = {list: "a list or tuple"}
"""What the caller wrote, for a key msgpack decodes as a list: a tuple is encoded as one too."""


def _map_with_scalar_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    for key, _ in pairs:
        if type(key) not in _SCALAR_KEYS:
            raise ValueError(f"a map key may not be {_DECODED_AS.get(type(key), f'a {type(key).__name__}')}")
    return dict(pairs)


def unpack_wire(data: bytes | memoryview) -> Any:
    """Decode msgpack as a receiving peer does: map keys may be str or
    bytes, and also int, float, bool or None; any other key (an array, an
    extension type) raises ``ValueError``, and bytes that are not msgpack
    raise what msgpack raises. A client checks a command with this before
    sending it.

    The commands, queries and results of requests are user values, and a
    dict with int keys must travel as it does within a peer. These keys are
    still safe from hash flooding: str and bytes hashes are salted, and at
    most a few dozen ints or floats of msgpack's range share a hash value.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except ValueError:
        # Rare (a key that is not a str), or not msgpack at all: decoded
        # again, each map checked.
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True,
                               object_pairs_hook=_map_with_scalar_keys)



_ENVELOPE_DEPTH = 3
"""The most levels a frame nests a user value in: the payload map, the
body's array and, in a request, its map of arguments."""

_ENVELOPE = b"\x91" * _ENVELOPE_DEPTH
"""That many one-element arrays, opened before a value to check it fits."""


def wire_problem(data: bytes | memoryview) -> str | None:
    """Why a receiving peer or client would refuse a frame carrying ``data``
    (a value encoded by :func:`raftlib.codec.pack`), or ``None``: they decode
    with :func:`unpack_wire`, which accepts map keys of scalar types only,
    and close a connection that sends others, failing every request on it.
    msgpack decodes at most 1,024 nested arrays and maps, and the frame's own
    levels count: a value that encodes may still be too deep to be sent."""
    try:
        unpack_wire(_ENVELOPE + bytes(data))
    except msgpack.StackError:
        return (f"it is nested too deeply: with the {_ENVELOPE_DEPTH} levels of a frame, msgpack decodes at most "
                f"1024 nested lists and maps")
    except ValueError as exc:
        return f"{exc} (map keys must be str, bytes, int, float, bool or None)"
    return None

def _unpack_payload(payload: bytes | memoryview) -> tuple[str, Any]:
    """Check one frame payload's envelope and return ``(type name, body)``
    (decoded by :func:`unpack_wire`)."""
    try:
        raw = unpack_wire(payload)
    except Exception as exc:  # msgpack raises several unrelated classes for bad input
        raise ProtocolError(f"payload is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if type(raw) is not dict:
        raise ProtocolError(f"payload must be a map with v/t/b, got {type(raw).__name__}")
    if "v" not in raw or "t" not in raw or "b" not in raw:
        raise ProtocolError(f"payload map lacks {sorted({'v', 't', 'b'} - raw.keys())}")
    version = raw["v"]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {_short(version)} (expected {PROTOCOL_VERSION})")
    type_name = raw["t"]
    if type(type_name) is not str:
        raise ProtocolError(f"frame type must be a str, got {_short(type_name)}")
    body = raw["b"]
    if "x" in raw:
        added = raw["x"]
        if type(added) is not list or type(body) is not list:
            raise ProtocolError(f"{_short(type_name)}: added fields need a list body and a list in x")
        body = body + added
    return type_name, body


class FrameDecoder:
    """Incremental frame splitter for one byte stream.

    ``max_frame_size`` bounds the payload length (header excluded);
    ``first_frame_size``, if given, bounds the first frame of the stream
    instead, so that a stranger cannot make the receiver buffer a large frame
    before it has introduced itself. After :meth:`feed` raises, the decoder
    is unusable: every later call raises :class:`~raftlib.errors.ProtocolError`
    (the caller should close the stream).
    """

    __slots__ = ("max_frame_size", "first_frame_size", "_buf", "_failed", "_started")

    def __init__(self, max_frame_size: int, first_frame_size: int | None = None) -> None:
        if type(max_frame_size) is not int or max_frame_size <= 0:
            raise ValueError(f"max_frame_size must be a positive int, got {max_frame_size!r}")
        if first_frame_size is not None and (type(first_frame_size) is not int or first_frame_size <= 0):
            raise ValueError(f"first_frame_size must be a positive int or None, got {first_frame_size!r}")
        self.max_frame_size = max_frame_size
        self.first_frame_size = first_frame_size
        self._buf = bytearray()
        self._failed = False
        self._started = False  # a first frame was complete

    @property
    def started(self) -> bool:
        """Whether a first frame of the stream was complete (``max_frame_size`` then bounds every frame)."""
        return self._started

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[str, Any]]:
        """Add bytes from the stream; return every frame now complete, in order.

        Raises :class:`~raftlib.errors.FrameTooLarge` as soon as a header
        announces a payload above ``max_frame_size`` (its body is never
        buffered), and :class:`~raftlib.errors.ProtocolError` for a payload
        with a bad envelope. Frames completed by the same call before the bad
        one are discarded with it.
        """
        if self._failed:
            raise ProtocolError("stream already failed to decode")
        buf = self._buf
        buf += data
        frames: list[tuple[str, Any]] = []
        pos = 0
        end = len(buf)
        view = memoryview(buf)  # slices of it copy nothing
        try:
            while end - pos >= HEADER_SIZE:
                (size,) = _HEADER.unpack_from(view, pos)
                if self._started or self.first_frame_size is None:
                    if size > self.max_frame_size:
                        raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {self.max_frame_size}",
                                            size=size, limit=self.max_frame_size)
                elif size > min(self.first_frame_size, self.max_frame_size):
                    limit = min(self.first_frame_size, self.max_frame_size)
                    raise FrameTooLarge(f"first frame of {size} bytes exceeds the limit of {limit}",
                                        size=size, limit=limit)
                start = pos + HEADER_SIZE
                if end - start < size:
                    break
                with view[start : start + size] as payload:
                    frames.append(_unpack_payload(payload))
                self._started = True
                pos = start + size
        except ProtocolError:
            self._failed = True
            view.release()
            buf.clear()
            raise
        finally:
            view.release()  # the bytearray cannot shrink while a view exists
        if pos:
            del buf[:pos]  # O(1) for a bytearray prefix: CPython advances its start
        return frames
