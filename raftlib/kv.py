"""raftlib.kv: a built-in key-value service, ready to serve.

Start peers with :class:`KVStateMachine` and talk to them with
:class:`KVClient`::

    peer = await raftlib.start_peer(raftlib.kv.KVStateMachine, name="s1", address=..., data_dir=...)
    kv = await raftlib.kv.KVClient.connect(["127.0.0.1:7001", "127.0.0.1:7002"])
    version = await kv.put("retries", 3, scope="billing")

Data model. Keys live in *scopes* (namespaces that many modules of a
service can share a cluster through). Scope ``"default"`` always exists;
others are created and deleted explicitly, and deleting one deletes its
keys. Each key holds a value (anything msgpack encodes) and a *version*. The
store keeps one *revision* counter that every successful change (a put, the
delete of an existing key, a successful compare-and-set, the creation or
deletion of a scope) increases by exactly one; a key's version is the
revision of its last change. Versions therefore strictly increase, also
across a delete and re-create (no ABA), and a version names one change of
the whole store.

Rule 1: :meth:`KVStateMachine.handle_write` never raises. A refused command
(unknown scope, wrong shape) returns an error result and changes nothing: an
exception would make the command "applied with an exception" on every peer.

Rule 2: every result of a write carries the store ``revision`` after it, so
a reader of the change feed can tell that it saw every change
(``revision`` goes up by one per change, and by nothing otherwise).

Theory of operation of a watch. A watch reads the change feed
(:meth:`raftlib.Client.listen` or :meth:`raftlib.Peer.listen`: every applied
write in log order with its result, resumed across members and leader
changes without gaps or repeats) and turns the changes of the watched scope
into :class:`KVEvent` objects. To start "now" it asks a member for its
applied log index *A*, then reads the current revision *R* linearizably
(after *A* was applied, so every change after *R* lies after *A*), listens
from *A* + 1 and skips changes of revision *R* or less. To resume from a
revision *r* it asks the member for its applied index *A*, then for its own
current revision *R* (a local read, answered after *A*). If *r* > *R*, every
change it wants lies after *A*: it listens from *A* + 1. Otherwise the
change of revision *r* lies at or before the member's applied index *A'*,
asked again after that read: it listens from the oldest change the member
keeps, ``reaching`` *A'*, so that a member that keeps nothing that old (it
restarted from a snapshot, say) says so at once instead of waiting for the
next write, and skips the changes older than *r*. Either way it checks
Rule 2 on every change it reads, so a gap is raised, never silently skipped.

*A* and *R* (and *A'*) must come from one member: a client that moves to
another member between these requests starts them over there. The feed
itself may land on yet another member, which may keep nothing as old as
*A* + 1 (it restarted from a later snapshot): *A* + 1 is only the earliest
index the watch needs, so it then reads from the oldest change that member
keeps, and Rule 2 tells whether it missed one.
"""

from __future__ import annotations

import asyncio
import builtins
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Protocol, Sequence

from . import codec
from .client import Client, connect
from .errors import KVError, LogCompacted, ScopeExists, ScopeNotFound, Unavailable
from .state_machine import StateMachine
from .types import Change

if TYPE_CHECKING:
    from .runtime import Peer

__all__ = [
    "DEFAULT_SCOPE",
    "KVClient",
    "KVEvent",
    "KVItem",
    "KVStateMachine",
    "KVWatch",
    "watch_peer",
]

DEFAULT_SCOPE = "default"
"""The scope that always exists and cannot be deleted."""

SNAPSHOT_FORMAT = 1
"""Version of the snapshot encoding written by :meth:`KVStateMachine.snapshot`."""

# Error codes of refused requests, and the exception KVClient raises for each.
SCOPE_NOT_FOUND = "scope_not_found"
SCOPE_EXISTS = "scope_exists"
BAD_REQUEST = "bad_request"
_ERRORS: dict[str, type[KVError]] = {SCOPE_NOT_FOUND: ScopeNotFound, SCOPE_EXISTS: ScopeExists, BAD_REQUEST: KVError}


# -- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KVItem:
    """A key's ``value`` and its ``version`` (the revision of its last change)."""

    value: Any
    version: int


@dataclass(frozen=True, slots=True)
class KVEvent:
    """One committed change seen by a watch.

    ``kind`` is ``"put"`` (a put or a successful compare-and-set; ``value``
    is the new value), ``"delete"`` (``value`` is ``None``),
    ``"scope_created"`` or ``"scope_deleted"`` (``key`` and ``value`` are
    ``None``; deleting a scope deletes its keys without an event per key).
    ``version`` is the store revision of the change, which is the key's new
    version for a put; ``prev_version`` is the key's version before it (0 if
    it did not exist; 0 for scope events). ``index`` is the change's log
    index.
    """

    kind: str
    scope: str
    key: str | None
    value: Any
    version: int
    index: int
    prev_version: int = 0


# -- the state machine ------------------------------------------------------------------------


class _Refused(Exception):
    """Raised inside the state machine to return an error result (never leaves it)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Store:
    """The whole state of a :class:`KVStateMachine`; ``restore`` swaps in a new one."""

    __slots__ = ("scopes", "revision")

    def __init__(self, scopes: dict[str, dict[str, tuple[Any, int]]], revision: int) -> None:
        # Invariant: DEFAULT_SCOPE in scopes; every version in scopes is in 1..revision.
        self.scopes = scopes
        """scope -> key -> (value, version)."""
        self.revision = revision
        """How many changes were applied."""


class KVStateMachine(StateMachine):
    """The replicated key-value store. Deterministic; see the module docs.

    Writes (msgpack lists; each returns a result dict, see below):

    * ``["put", scope, key, value]``: set the value; always a change.
    * ``["delete", scope, key]``: remove the key; a change if it existed.
    * ``["cas", scope, key, expected_value, expected_version, new_value]``:
      set ``new_value`` if the key matches, else change nothing. With
      ``expected_version`` an int, the key must have that version (0: the
      key must not exist), and ``expected_value`` must be ``None``. With
      ``expected_version`` ``None``, ``expected_value`` ``None`` means the
      key must not exist, and any other value means the key must exist with
      an equal value (equal as msgpack values: the same type, so ``1``,
      ``1.0`` and ``True`` differ; lists and dicts, keys included, compare
      element-wise; floats by their bits, so NaN matches NaN). A
      stored ``None`` can only be matched by version.
    * ``["create_scope", scope]``, ``["delete_scope", scope]`` (deletes its
      keys; ``"default"`` cannot be deleted).

    A write's result is a dict with ``op``, ``scope``, ``key`` (``None`` for
    scope operations), ``changed``, ``version`` (the revision of the change;
    for an unchanged delete 0, for a failed cas the key's current version),
    ``prev_version`` (the key's version before; 0 if absent), ``revision``
    (the store revision after the command) and, for ``delete_scope``,
    ``deleted`` (how many keys went with it). The new value is not repeated
    in the result (a watch takes it from the command). A refused write returns
    ``{"op", "error", "message", "changed": False, "revision"}`` with
    ``error`` one of ``"scope_not_found"``, ``"scope_exists"`` or
    ``"bad_request"``.

    Reads: ``["get", scope, key]`` returns ``[value, version]`` or ``None``;
    ``["list", scope, prefix]`` the sorted keys starting with ``prefix``;
    ``["items", scope, prefix]`` ``[revision, [[key, value, version], ...]]``
    sorted by key; ``["scopes"]`` the sorted scope names; ``["revision"]``
    the store revision. A refused read returns an error dict as above.

    Keys and scope names are non-empty ``str``. A stored value may nest
    lists and maps at most 1018 levels deep (an ``items`` answer sent to a
    client holds it 6 levels down, and msgpack decodes 1024).
    """

    def __init__(self) -> None:
        self._store = _Store({DEFAULT_SCOPE: {}}, 0)
        self._writes: dict[str, tuple[int, Callable[..., dict[str, Any]]]] = {
            "put": (3, self._put),
            "delete": (2, self._delete),
            "cas": (5, self._cas),
            "create_scope": (1, self._create_scope),
            "delete_scope": (1, self._delete_scope),
        }
        self._reads: dict[str, tuple[int, Callable[..., Any]]] = {
            "get": (2, self._get),
            "list": (2, self._list),
            "items": (2, self._items),
            "scopes": (0, self._list_scopes),
            "revision": (0, self._current_revision),
        }

    @property
    def revision(self) -> int:
        """The store revision: how many changes were applied so far."""
        return self._store.revision

    # -- StateMachine -------------------------------------------------------------------

    def handle_write(self, command: Any) -> dict[str, Any]:
        """Apply one write command; return its result (never raises)."""
        op = command[0] if isinstance(command, (list, tuple)) and command else None
        try:
            result: dict[str, Any] = self._dispatch(self._writes, command, "write")()
            return result
        except _Refused as refused:
            return {"op": op if isinstance(op, str) else None, "error": refused.code, "message": refused.message,
                    "changed": False, "revision": self._store.revision}

    def handle_read(self, query: Any) -> Any:
        """Answer one read query (never raises; a refused query returns an error dict)."""
        op = query[0] if isinstance(query, (list, tuple)) and query else None
        try:
            return self._dispatch(self._reads, query, "read")()
        except _Refused as refused:
            return {"op": op if isinstance(op, str) else None, "error": refused.code, "message": refused.message,
                    "changed": False, "revision": self._store.revision}

    def snapshot(self) -> bytes:
        """The whole store as msgpack bytes, scopes and keys sorted (equal stores give equal bytes)."""
        scopes = {
            name: [[key, value, version] for key, (value, version) in sorted(keys.items())]
            for name, keys in sorted(self._store.scopes.items())
        }
        return codec.pack({"format": SNAPSHOT_FORMAT, "revision": self._store.revision, "scopes": scopes}, "snapshot")

    def restore(self, data: bytes) -> None:
        """Replace the store with one produced by :meth:`snapshot`; ``ValueError`` if ``data`` is not one."""
        try:
            raw = codec.unpack(data)
        except Exception as exc:  # msgpack's errors differ across versions
            raise ValueError(f"not a KVStateMachine snapshot: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("not a KVStateMachine snapshot (format 1)")
        revision, raw_scopes = raw.get("revision"), raw.get("scopes")
        if type(revision) is not int or revision < 0 or not isinstance(raw_scopes, dict):
            raise ValueError("not a KVStateMachine snapshot: bad revision or scopes")
        scopes: dict[str, dict[str, tuple[Any, int]]] = {}
        for name, rows in raw_scopes.items():
            if not isinstance(name, str) or not isinstance(rows, list):
                raise ValueError(f"not a KVStateMachine snapshot: bad scope {name!r}")
            keys: dict[str, tuple[Any, int]] = {}
            for row in rows:
                if (not isinstance(row, list) or len(row) != 3 or not isinstance(row[0], str)
                        or type(row[2]) is not int or not 0 < row[2] <= revision):
                    raise ValueError(f"not a KVStateMachine snapshot: bad entry in scope {name!r}")
                keys[row[0]] = (row[1], row[2])
            scopes[name] = keys
        scopes.setdefault(DEFAULT_SCOPE, {})
        self._store = _Store(scopes, revision)  # one assignment: reads may run meanwhile (in the loop's thread)

    # -- dispatch -----------------------------------------------------------------------

    @staticmethod
    def _dispatch(table: Mapping[str, tuple[int, Callable[..., Any]]], request: Any, what: str) -> Callable[[], Any]:
        if not isinstance(request, (list, tuple)) or not request or not isinstance(request[0], str):
            raise _Refused(BAD_REQUEST, f"a {what} must be a list [op, ...], got {_short(request)}")
        op, args = request[0], request[1:]
        entry = table.get(op)
        if entry is None:
            raise _Refused(BAD_REQUEST, f"unknown {what} {_short(op)}; known: {', '.join(table)}")
        arity, handler = entry
        if len(args) != arity:
            raise _Refused(BAD_REQUEST, f"{op!r} takes {arity} arguments, got {len(args)}")
        return lambda: handler(*args)

    def _keys_of(self, scope: Any, store: _Store | None = None) -> dict[str, tuple[Any, int]]:
        _check_name(scope, "scope")
        keys = (store or self._store).scopes.get(scope)
        if keys is None:
            raise _Refused(SCOPE_NOT_FOUND, f"scope {scope!r} does not exist")
        return keys

    def _bump(self) -> int:
        self._store.revision += 1
        return self._store.revision

    def _key_result(self, op: str, scope: str, key: str, changed: bool, version: int, prev: int) -> dict[str, Any]:
        return {"op": op, "scope": scope, "key": key, "changed": changed, "version": version,
                "prev_version": prev, "revision": self._store.revision}

    # -- writes -------------------------------------------------------------------------

    def _put(self, scope: Any, key: Any, value: Any) -> dict[str, Any]:
        _check_name(key, "key")
        _check_storable(value)
        keys = self._keys_of(scope)
        prev = keys[key][1] if key in keys else 0
        version = self._bump()
        keys[key] = (value, version)
        return self._key_result("put", scope, key, True, version, prev)

    def _delete(self, scope: Any, key: Any) -> dict[str, Any]:
        _check_name(key, "key")
        keys = self._keys_of(scope)
        if key not in keys:
            return self._key_result("delete", scope, key, False, 0, 0)
        prev = keys.pop(key)[1]
        return self._key_result("delete", scope, key, True, self._bump(), prev)

    def _cas(self, scope: Any, key: Any, expected: Any, expected_version: Any, new: Any) -> dict[str, Any]:
        _check_name(key, "key")
        if expected_version is not None:
            _check_version(expected_version)
            if expected is not None:
                raise _Refused(BAD_REQUEST, "give an expected value or an expected version, not both")
        _check_storable(new)
        keys = self._keys_of(scope)
        current = keys.get(key)
        version = current[1] if current is not None else 0
        if expected_version is not None:
            matches = version == expected_version
        elif expected is None:
            matches = current is None
        else:
            matches = current is not None and _same(current[0], expected)
        if not matches:
            return self._key_result("cas", scope, key, False, version, version)
        new_version = self._bump()
        keys[key] = (new, new_version)
        return self._key_result("cas", scope, key, True, new_version, version)

    def _create_scope(self, scope: Any) -> dict[str, Any]:
        _check_name(scope, "scope")
        if scope in self._store.scopes:
            raise _Refused(SCOPE_EXISTS, f"scope {scope!r} already exists")
        self._store.scopes[scope] = {}
        return {"op": "create_scope", "scope": scope, "key": None, "changed": True, "version": self._bump(),
                "prev_version": 0, "revision": self._store.revision}

    def _delete_scope(self, scope: Any) -> dict[str, Any]:
        _check_name(scope, "scope")
        if scope == DEFAULT_SCOPE:
            raise _Refused(BAD_REQUEST, f"scope {DEFAULT_SCOPE!r} cannot be deleted")
        keys = self._keys_of(scope)
        del self._store.scopes[scope]
        return {"op": "delete_scope", "scope": scope, "key": None, "changed": True, "version": self._bump(),
                "prev_version": 0, "revision": self._store.revision, "deleted": len(keys)}

    # -- reads --------------------------------------------------------------------------

    def _get(self, scope: Any, key: Any) -> list[Any] | None:
        _check_name(key, "key")
        item = self._keys_of(scope).get(key)
        return None if item is None else [item[0], item[1]]

    def _list(self, scope: Any, prefix: Any) -> list[str]:
        _check_prefix(prefix)
        return sorted(k for k in self._keys_of(scope) if k.startswith(prefix))

    def _items(self, scope: Any, prefix: Any) -> list[Any]:
        _check_prefix(prefix)
        store = self._store  # the revision and the keys of one state
        keys = self._keys_of(scope, store)
        return [store.revision, [[k, v, ver] for k, (v, ver) in sorted(keys.items()) if k.startswith(prefix)]]

    def _list_scopes(self) -> list[str]:
        return sorted(self._store.scopes)

    def _current_revision(self) -> int:
        return self._store.revision


_MAX_VERSION = 2**64 - 1
"""The largest version a compare-and-set can name: the largest int msgpack encodes."""


def _check_version(version: Any) -> None:
    if type(version) is not int or not 0 <= version <= _MAX_VERSION:
        raise _Refused(BAD_REQUEST, f"expected_version must be None or an int from 0 to {_MAX_VERSION}, "
                                    f"got {_short(version)}")


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise _Refused(BAD_REQUEST, f"a {what} must be a non-empty str, got {_short(name)}")


_VALUE_NESTING = 6
"""The most containers a value is sent or stored in: an ``items`` answer
(``[revision, [[key, value, version]]]``) in the 3 levels of a frame. A
snapshot puts a value 4 levels down, a change sent to a watch 5."""

_MAX_VALUE_DEPTH = 1024 - _VALUE_NESTING
"""How deep a stored value may nest lists and maps."""


def _check_storable(value: Any) -> None:
    """Refuse a value that could not be stored or sent back: msgpack decodes
    at most 1024 levels of lists and maps, and a reply, a change sent to a
    watch and a snapshot put the value up to 6 levels down. A value accepted
    deeper would make reads, watches or every later snapshot fail."""
    if _too_deep(value):
        raise _Refused(BAD_REQUEST, f"the value is nested too deeply to be stored (a value may nest lists "
                                    f"and maps {_MAX_VALUE_DEPTH} levels deep)")


def _too_deep(value: Any) -> bool:
    """Whether ``value`` nests lists and maps deeper than a stored value may."""
    if not isinstance(value, (list, tuple, dict)):
        return False
    wrapped = value
    for _ in range(_VALUE_NESTING):
        wrapped = [wrapped]
    try:
        codec.pack(wrapped, "value")
    except TypeError:
        return True
    return False


def _check_prefix(prefix: Any) -> None:
    if not isinstance(prefix, str):
        raise _Refused(BAD_REQUEST, f"a key prefix must be a str, got {_short(prefix)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _same(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are equal as msgpack values (tuples count as lists).

    Iterative: a value may nest as deep as msgpack allows, deeper than
    Python's recursion limit, and handle_write must not raise on it.
    """
    pairs = [(a, b)]
    while pairs:
        a, b = pairs.pop()
        kind_a = list if isinstance(a, tuple) else type(a)
        kind_b = list if isinstance(b, tuple) else type(b)
        if kind_a is not kind_b:
            return False
        if kind_a is list:
            if len(a) != len(b):
                return False
            pairs.extend(zip(a, b))
        elif kind_a is dict:
            if len(a) != len(b):
                return False
            # Python finds b's key 1 for a's key True or 1.0: compare the keys themselves too.
            keys_b = {k: k for k in b}
            for k, v in a.items():
                if k not in keys_b:
                    return False
                pairs.append((k, keys_b[k]))
                pairs.append((v, b[k]))
        elif kind_a is float:
            # By their bits, as msgpack encodes them: NaN matches NaN, 0.0 does not match -0.0.
            if struct.pack("<d", a) != struct.pack("<d", b):
                return False
        elif not a == b:
            return False
    return True


# -- the client ---------------------------------------------------------------------------------


class KVClient:
    """A typed client for a cluster of :class:`KVStateMachine` peers.

    Create it with :meth:`connect` (or wrap a connected :class:`raftlib.Client`).
    Every method may be used concurrently from many tasks. Writes are applied
    exactly once (through the client's session) and raise the errors of
    :meth:`raftlib.Client.write`; a refused request raises
    :class:`~raftlib.errors.ScopeNotFound`, :class:`~raftlib.errors.ScopeExists`
    or :class:`~raftlib.errors.KVError` (nothing changed).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        """The underlying :class:`raftlib.Client`."""

    @classmethod
    async def connect(cls, addresses: Sequence[str], **kwargs: Any) -> KVClient:
        """Connect to the cluster through any of ``addresses``; ``kwargs`` go to :func:`raftlib.connect`."""
        return cls(await connect(addresses, **kwargs))

    async def close(self) -> None:
        """Close the session and the connection. Idempotent."""
        await self.client.close()

    async def __aenter__(self) -> KVClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- keys ---------------------------------------------------------------------------

    async def put(self, key: str, value: Any, scope: str = DEFAULT_SCOPE) -> int:
        """Set ``key`` to ``value``; return its new version."""
        _check_request_names(scope, key)
        result = await self._write(["put", scope, key, value])
        version: int = result["version"]
        return version

    async def get(self, key: str, scope: str = DEFAULT_SCOPE, *, consistency: str = "linearizable") -> Any | None:
        """The value of ``key``, or ``None`` if it does not exist (use :meth:`item` to tell
        a stored ``None`` apart). ``consistency`` is as for :meth:`raftlib.Client.read`."""
        item = await self.item(key, scope, consistency=consistency)
        return None if item is None else item.value

    async def item(self, key: str, scope: str = DEFAULT_SCOPE, *, consistency: str = "linearizable") -> KVItem | None:
        """The value and version of ``key``, or ``None`` if it does not exist."""
        _check_request_names(scope, key)
        found = await self._read(["get", scope, key], consistency)
        return None if found is None else KVItem(found[0], found[1])

    async def cas(self, key: str, expected: Any, new: Any, scope: str = DEFAULT_SCOPE, *,
                  expected_version: int | None = None) -> bool:
        """Compare-and-set: store ``new`` if ``key`` still matches; return whether it did.

        Without ``expected_version``, ``key`` matches if its value equals
        ``expected`` (as msgpack values: ``1``, ``1.0`` and ``True`` differ),
        or, with ``expected=None``, if it does not exist. With
        ``expected_version``, it matches if its version is that (0: it does
        not exist); ``expected`` must then be ``None``. When many clients
        race, exactly one of them wins for each value or version.
        """
        _check_request_names(scope, key)
        if expected_version is not None:
            if expected is not None:
                raise ValueError("give an expected value or an expected version, not both")
            try:
                _check_version(expected_version)  # before a round trip, as for names
            except _Refused as refused:
                raise KVError(refused.message) from None
        result = await self._write(["cas", scope, key, expected, expected_version, new])
        changed: bool = result["changed"]
        return changed

    async def delete(self, key: str, scope: str = DEFAULT_SCOPE) -> bool:
        """Delete ``key``; return whether it existed."""
        _check_request_names(scope, key)
        result = await self._write(["delete", scope, key])
        changed: bool = result["changed"]
        return changed

    async def list(self, scope: str = DEFAULT_SCOPE, prefix: str = "", *,
                   consistency: str = "linearizable") -> builtins.list[str]:
        """The keys of ``scope`` that start with ``prefix``, sorted."""
        _check_request_names(scope)
        keys: builtins.list[str] = await self._read(["list", scope, prefix], consistency)
        return keys

    async def items(self, scope: str = DEFAULT_SCOPE, prefix: str = "", *,
                    consistency: str = "linearizable") -> tuple[int, dict[str, KVItem]]:
        """``(revision, {key: KVItem})`` for the keys of ``scope`` starting with
        ``prefix``, read at store revision ``revision``: watch with
        ``from_revision=revision + 1`` to follow them from there."""
        _check_request_names(scope)
        revision, rows = await self._read(["items", scope, prefix], consistency)
        return revision, {key: KVItem(value, version) for key, value, version in rows}

    # -- scopes -------------------------------------------------------------------------

    async def create_scope(self, name: str) -> None:
        """Create scope ``name``; :class:`~raftlib.errors.ScopeExists` if it exists."""
        _check_request_names(name)
        await self._write(["create_scope", name])

    async def delete_scope(self, name: str) -> None:
        """Delete scope ``name`` and its keys; :class:`~raftlib.errors.ScopeNotFound` if
        it does not exist, :class:`~raftlib.errors.KVError` for ``"default"``."""
        _check_request_names(name)
        await self._write(["delete_scope", name])

    async def scopes(self, *, consistency: str = "linearizable") -> builtins.list[str]:
        """The names of every scope, sorted."""
        names: builtins.list[str] = await self._read(["scopes"], consistency)
        return names

    async def revision(self, *, consistency: str = "linearizable") -> int:
        """The store revision: how many changes the store has applied."""
        revision: int = await self._read(["revision"], consistency)
        return revision

    # -- watch --------------------------------------------------------------------------

    def watch(self, scope: str | None = DEFAULT_SCOPE, key_prefix: str = "", *,
              from_revision: int | None = None) -> KVWatch:
        """Follow the committed changes of ``scope`` (every scope if ``None``) to keys
        starting with ``key_prefix``, as :class:`KVEvent` objects in revision order.

        Scope events are delivered whatever the prefix. ``scope`` need not
        exist: the watch then reports its creation and what follows. Without
        ``from_revision`` the watch starts with the first change after it is
        started (``await w.start()``, ``async with``, or the first
        iteration); with it, at that revision (``event.version + 1`` resumes
        after ``event``), raising :class:`~raftlib.errors.LogCompacted` if
        the members no longer keep changes that old. It follows the cluster
        across members and leader changes without losing or repeating a
        change; see :class:`KVWatch`.
        """
        member = _OneMember(self.client)
        return KVWatch(self.client.listen, member.position, member.read_revision, scope, key_prefix, from_revision,
                       one_member=member.run)

    # -- internals ----------------------------------------------------------------------

    async def _write(self, command: builtins.list[Any]) -> dict[str, Any]:
        result = await self.client.write(command)
        _raise_refused(result)
        if not isinstance(result, dict):
            raise KVError(f"the cluster does not run KVStateMachine (it answered {_short(result)})")
        return result

    async def _read(self, query: builtins.list[Any], consistency: str) -> Any:
        result = await self.client.read(query, consistency=consistency)
        _raise_refused(result)
        return result


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator now (stopping a feed on the member), not when it is garbage collected."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def _check_request_names(scope: Any, key: Any = "-") -> None:
    """Refuse a bad scope or key before it costs a round trip (the state machine checks too)."""
    try:
        _check_name(scope, "scope")
        _check_name(key, "key")
    except _Refused as refused:
        raise KVError(refused.message) from None


def _raise_refused(result: Any) -> None:
    if isinstance(result, dict) and "error" in result:
        code = result["error"]
        raise _ERRORS.get(code, KVError)(result.get("message") or str(code))


# -- watching -----------------------------------------------------------------------------------


def watch_peer(peer: Peer, scope: str | None = DEFAULT_SCOPE, key_prefix: str = "", *,
               from_revision: int | None = None) -> KVWatch:
    """Like :meth:`KVClient.watch`, in the process of ``peer`` (a running
    :class:`raftlib.Peer` serving :class:`KVStateMachine`), from its own
    change feed (:meth:`raftlib.Peer.listen`). Ends with
    :class:`~raftlib.errors.PeerStopped` when the peer stops."""

    async def position() -> int:
        applied: int = peer.status()["applied_index"]
        return applied

    async def read_revision(consistency: str) -> int:
        revision: int = await peer.read(["revision"], consistency=consistency)
        return revision

    return KVWatch(peer.listen, position, read_revision, scope, key_prefix, from_revision)


class _OneMember:
    """The requests that start a watch through a client, all made to one
    member: an applied index and a revision from two members say nothing
    about each other. If one fails, they start over (at another member if
    need be)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._call: Callable[[str, dict[str, Any]], Awaitable[Any]] | None = None

    async def run(self, start: Callable[[], Awaitable[_Start]]) -> _Start:
        async def calls(call: Callable[[str, dict[str, Any]], Awaitable[Any]]) -> _Start:
            self._call = call
            try:
                return await start()
            finally:
                self._call = None

        return await self._client._on_one_member(calls, "the start of the watch")

    async def position(self) -> int:
        assert self._call is not None, "only while run() runs"
        applied: int = (await self._call("status", {}))["applied_index"]
        return applied

    async def read_revision(self, consistency: str) -> int:
        assert self._call is not None, "only while run() runs"
        revision: Any = await self._call("read", {"query": ["revision"], "consistency": consistency})
        _raise_refused(revision)
        if type(revision) is not int:
            raise KVError(f"the cluster does not run KVStateMachine (it answered {_short(revision)})")
        return revision


_Start = tuple[int, int, int | None, int | None]
"""Where a watch starts: its first revision, the log index to listen from,
the ``reaching`` index (with listening from 0), and the member's revision
if the watch asked it for older changes."""


class _Listen(Protocol):
    """A change feed: :meth:`raftlib.Client.listen` or :meth:`raftlib.Peer.listen`."""

    def __call__(self, from_index: int, *, reaching: int | None = None) -> AsyncIterator[Change]: ...


class KVWatch:
    """The committed changes of one scope (or all), as an async iterator of :class:`KVEvent`.

    Create it with :meth:`KVClient.watch` or :func:`watch_peer`. It starts
    when :meth:`start` is awaited (by ``async with`` or the first
    iteration; changes before that are not reported unless
    ``from_revision`` asks for them). Close it with :meth:`aclose` (or
    leave the ``async with`` block) to stop the feed on the member.

    Raises :class:`~raftlib.errors.LogCompacted` if it must start at a
    revision the members no longer keep (the message names the oldest one
    it can start at), or falls behind what they keep (the message names the
    revision), :class:`~raftlib.errors.KVError`
    if the feed skipped a change (it never should), and the errors of the
    underlying ``listen``: :class:`~raftlib.errors.Unavailable` when no
    member took the feed over in time, its message ending with the
    ``from_revision`` a new watch resumes at without missing or repeating
    an event.
    """

    def __init__(self, listen: _Listen, position: Callable[[], Awaitable[int]],
                 read_revision: Callable[[str], Awaitable[int]], scope: str | None, key_prefix: str,
                 from_revision: int | None, *,
                 one_member: Callable[[Callable[[], Awaitable[_Start]]], Awaitable[_Start]] | None = None) -> None:
        """``position()`` is the member's applied index; ``read_revision(consistency)``
        the store revision, read ``"linearizable"`` or ``"stale"`` (on the member).
        ``one_member(start)`` returns ``await start()``, making sure that the
        calls of ``position`` and ``read_revision`` in it all reach one member
        (by default they do: one peer's)."""
        if scope is not None:
            _check_request_names(scope)
        if not isinstance(key_prefix, str):
            raise KVError(f"a key prefix must be a str, got {_short(key_prefix)}")
        if from_revision is not None and (type(from_revision) is not int or from_revision < 0):
            raise KVError(f"from_revision must be None or an int >= 0, got {_short(from_revision)}")
        self.scope = scope
        self.key_prefix = key_prefix
        self.first_revision: int | None = None if from_revision is None else max(1, from_revision)
        """The first revision this watch reports (known once started)."""
        self._listen = listen
        self._position = position
        self._read_revision = read_revision
        self._one_member = one_member
        self._events: AsyncGenerator[KVEvent, None] | None = None
        self._starting = asyncio.Lock()
        self._waiting = False
        """A task is waiting in ``__anext__`` (the generator is running)."""
        self._closed = False

    async def start(self) -> None:
        """Position the watch on the change feed (idempotent). Every change
        committed after this returns is reported."""
        async with self._starting:
            if self._closed:
                raise KVError("this watch is closed")
            if self._events is not None:
                return
            start = self._locate() if self._one_member is None else self._one_member(self._locate)
            self.first_revision, from_index, reaching, member_revision = await start
            changes: AsyncIterator[Change] = (
                _at_or_after(self._listen, from_index) if reaching is None else self._listen(0, reaching=reaching)
            )
            self._events = _events(changes, self.scope, self.key_prefix, self.first_revision, member_revision)

    async def _locate(self) -> _Start:
        """Where to start (see the module docs), from one member's answers."""
        applied = await self._position()
        if self.first_revision is None:
            revision = await self._read_revision("linearizable")
            # Every change of revision > `revision` has a log index > `applied`.
            return revision + 1, applied + 1, None, None
        revision = await self._read_revision("stale")  # the member's own, after `applied`
        if self.first_revision > revision:
            return self.first_revision, applied + 1, None, None  # as above
        # The change of revision first_revision is applied there by now: the
        # feed must reach back to it (or say at once that it cannot).
        return self.first_revision, 0, max(1, await self._position()), revision

    def __aiter__(self) -> KVWatch:
        return self

    async def __anext__(self) -> KVEvent:
        if self._closed:
            await self.aclose()
            raise StopAsyncIteration
        await self.start()
        assert self._events is not None
        self._waiting = True
        try:
            event = await anext(self._events)
        finally:
            self._waiting = False
        if self._closed:  # closed by another task while this one waited
            await self.aclose()
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Stop the watch and its feed. Idempotent.

        Called from another task while one waits for the next event, it
        stops the watch at that event; cancel the waiting task to stop at once.
        """
        self._closed = True
        events = self._events
        if events is None or self._waiting:
            return  # not started, or the waiting task finishes it
        self._events = None
        await events.aclose()

    async def __aenter__(self) -> KVWatch:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _at_or_after(listen: _Listen, index: int) -> AsyncGenerator[Change, None]:
    """The change feed from log ``index`` on, where ``index`` is only the
    earliest a reader needs: if the member the feed reaches keeps nothing
    that old (it restarted from a snapshot taken after ``index``, say,
    though the watch positioned itself on another member), from the oldest
    change it keeps; the reader checks that it missed none."""
    changes = listen(index)
    try:
        try:
            first = await anext(changes)
        except StopAsyncIteration:
            return
        except LogCompacted:
            await _aclose(changes)
            changes = listen(0)
        else:
            yield first
        async for change in changes:
            yield change
    finally:
        await _aclose(changes)


async def _events(changes: AsyncIterator[Change], scope: str | None, prefix: str,
                  first_revision: int, member_revision: int | None = None) -> AsyncGenerator[KVEvent, None]:
    """The events of ``scope``/``prefix`` in ``changes`` from ``first_revision`` on,
    checking that no change is missing (Rule 2 of the module docs).
    ``member_revision`` is the member's revision when the feed was asked
    for, if known: a feed that keeps nothing that old has dropped the
    changes up to it."""
    last: int | None = None
    """The store revision after the last change read."""
    try:
        while True:
            try:
                change = await anext(changes)
            except StopAsyncIteration:
                return
            except LogCompacted as exc:
                # The feed's message names log indexes and Peer.listen: say it in revisions.
                if last is None and member_revision is not None and member_revision >= first_revision:
                    raise _compacted(first_revision, member_revision) from exc
                where = f"from revision {first_revision} on" if last is None else f"after revision {last}"
                raise LogCompacted(
                    f"changes {where} are no longer kept by the member this watch reads from (it fell more than "
                    f"Config.listen_backlog changes behind, or the member installed a snapshot); read the current "
                    f"state (KVClient.items) and watch from its revision + 1"
                ) from exc
            except Unavailable as exc:
                # No member to continue at: say where a new watch takes over.
                resume = first_revision if last is None else max(first_revision, last + 1)
                raise type(exc)(
                    f"{exc}; to resume this watch without missing or repeating an event, watch again with "
                    f"from_revision={resume}"
                ) from exc
            result = change.result
            if not isinstance(result, dict) or type(result.get("revision")) is not int:
                continue  # handle_write raised: not a KVStateMachine change
            revision: int = result["revision"]
            changed = result.get("changed") is True and "error" not in result
            before = revision - 1 if changed else revision
            if last is None and before >= first_revision:
                raise _compacted(first_revision, before)
            if last is not None and before != last:
                raise KVError(f"the change feed skipped revisions {last + 1} to {before} (at log index {change.index})")
            last = revision
            if changed and revision >= first_revision:
                event = _event_of(change, result, scope, prefix)
                if event is not None:
                    yield event
    finally:
        await _aclose(changes)


def _compacted(first_revision: int, last_dropped: int) -> LogCompacted:
    return LogCompacted(
        f"changes from revision {first_revision} to {last_dropped} are no longer kept by the member this watch "
        f"reads from (it restarted from a snapshot, installed one, or dropped them from its Config.listen_backlog); "
        f"the oldest revision a watch can start at there is {last_dropped + 1}: read the current state "
        f"(KVClient.items) and watch from its revision + 1"
    )


_KINDS = {"put": "put", "cas": "put", "delete": "delete", "create_scope": "scope_created",
          "delete_scope": "scope_deleted"}


def _event_of(change: Change, result: dict[str, Any], scope: str | None, prefix: str) -> KVEvent | None:
    """The event for one applied change, or ``None`` if the watch does not cover it."""
    op, command = result.get("op"), change.command
    kind = _KINDS.get(op) if isinstance(op, str) else None
    if kind is None or (scope is not None and result.get("scope") != scope):
        return None
    key = result.get("key")
    if key is not None and not (isinstance(key, str) and key.startswith(prefix)):
        return None
    value = command[3] if op == "put" else command[5] if op == "cas" else None
    return KVEvent(kind, result["scope"], key, value, result["version"], change.index, result.get("prev_version", 0))
