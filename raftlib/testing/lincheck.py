"""A linearizability checker for register and key-value histories.

A *history* is what the clients of a service saw: for every operation, who
issued it, what it asked for, what came back, and when it was invoked and
when it returned (:class:`Operation`). :func:`check` decides whether some
total order of the operations, consistent with real time, explains every
result under a sequential *model* of the service (by default one register
per key: :class:`RegisterModel`). Record histories with :class:`History`,
save and reload them as JSON lines (:func:`save`, :func:`load`), and check a
saved one from the command line::

    python -m raftlib.testing.lincheck history.jsonl [--timeout SECONDS]

Exit status: 0 linearizable, 1 not linearizable, 2 undecided (timeout) or error.

Rule 1: an operation with status ``"fail"`` certainly did not take effect and
is dropped. An operation with status ``"unknown"`` may take effect at any
moment after its call, however late, or never; its output means nothing.

Rule 2: times are compared, never interpreted. Operation A precedes B only
if A returned strictly before B was called; equal times count as concurrent,
so a coarse clock can hide a violation but never invent one.

Rule 3: a verdict of "not linearizable" is a proof: no linearization exists.
A timeout yields "unknown", never a guess.

Theory of operation. Linearizability is compositional (Herlihy & Wing
1990): a key-value history is linearizable iff the sub-history of every key
is, so each key is checked on its own, which keeps the search space small.
Each key is checked with the algorithm of Wing & Gong (1993) as improved by
Lowe (2017), the one Knossos and Porcupine use. Every operation contributes
a call entry and a return entry to a doubly linked list sorted by time. The
operations whose call entries come before the first return entry are the
*minimal* ones, the only candidates to take effect next. The search
linearizes a candidate (if the model accepts it in the current state) by
unlinking its two entries and starting over from the head of the list; when
it reaches a return entry instead, the operation that returned can no longer
be placed, so the search backtracks: it relinks the last operation it
linearized and tries the next candidate after it. The path is an explicit
stack, not recursion, so histories of any length fit.

Memoization makes this practical: a configuration is the set of operations
linearized so far (an ``int`` used as a bitset) plus the model state, and
everything reachable from a configuration depends on nothing else, so a
configuration met twice is explored once. All operations that returned
before the earliest pending one are necessarily linearized, so a bitset is
stored as (the number of its trailing ones, the bits above them): small,
however long the history. Model states are numbered as they are met, and
the model is asked about each operation in each state once: the same step
recurs in many configurations, and a configuration is then three integers.

Operations that never change the state (the model's ``read_only``: a read,
a cas that reported no swap) need no branching. One the model accepts in
the current state can go first in any linearization from there: it is a
candidate, so moving it earlier keeps real time, and it changes nothing,
so the operations it moves past see the same states. When there is one it
is the only candidate tried. Without this, a violation after k overlapping
reads of one value is reported only once the reads were tried in 2**k
orders.

Unknown operations have a call entry and no return entry: nothing forces
them to be placed, and the search succeeds as soon as every ``ok`` operation
is linearized, which is how "never took effect" is expressed. They are tried
after the ``ok`` candidates, and not at all where they would leave the state
unchanged (doing nothing is always allowed). Their bits are kept apart from
those of ``ok`` operations, because a configuration with fewer unknown
operations linearized *dominates* one with more and the same state (the
spare unknowns are still available): a configuration is skipped when a
dominating one has been explored, which keeps a handful of unknown writes
from doubling the search each. Unknown reads are dropped before the search
when the model says they are read-only (:meth:`RegisterModel.read_only`).

With unknown operations the search runs in up to three passes, each sound
in the direction it answers. First a cheap exact one: unknown operations
are tried only where they let a waiting ``ok`` operation go next, and one
unknown bitset is kept per configuration; a linearization it finds is
real, and a dead end is a proof only if it pruned nothing (for the
register model it also gives up after a number of configurations
proportional to the history: when there is no linearization, it would
take longer to give up than the next pass takes to prove it). Then, for
the register model, a relaxed one, where unknown operations that do the same
thing are interchangeable and may be reused: a dead end there is a proof,
and a linearization is accepted once it is checked to use no class more
often than it has members. Only if that check fails does the full exact
search run. Other models go from the first search straight to the full
exact one: reusing their operations could reach new states without end
(a counter's increments add up), where a register's puts cannot.

When no linearization exists, the explanation is taken at the deepest dead
end of the search: the longest linearizable prefix found, the model state
after it, the operation whose return ended that branch and the candidates
that could not go next, and the operations concurrent with them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

STATUSES = ("ok", "fail", "unknown")

# How many search steps run between two looks at the clock (a power of two, minus one).
_CLOCK_MASK = 1023

# How many unknown bitsets per configuration the first, bounded exact search keeps.
_ANTICHAIN_LIMIT = 1

# How many configurations the first search visits before the relaxed one takes over
# (register model): this many, plus so many per operation.
_EAGER_BUDGET = 10_000
_EAGER_BUDGET_PER_OPERATION = 20


def _fmt_time(t: float | None) -> str:
    if t is None or math.isinf(t):
        return "?"
    return f"{t:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """One client operation, as the client saw it.

    ``process`` identifies the client. ``kind`` is ``"get"``, ``"put"`` or
    ``"cas"`` for the register model (any string for a custom model).
    ``value`` is what a put writes or the new value of a cas; ``expected``
    is what a cas expects; ``output`` is what a get read (``None``: absent)
    or whether a cas succeeded (``True``/``False``). ``call`` and ``ret``
    are the invocation and return times, on one clock. ``status`` is
    ``"ok"`` (it returned that output), ``"fail"`` (it certainly did not
    take effect) or ``"unknown"`` (it may have taken effect, at any moment
    after ``call``; ``ret`` is then ``None`` or ignored). Keys and values
    must be hashable.
    """

    process: int | str
    kind: str
    key: Any
    value: Any = None
    expected: Any = None
    output: Any = None
    call: float
    ret: float | None
    status: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}: {self.describe()}")
        if not isinstance(self.call, (int, float)) or not math.isfinite(self.call):
            raise ValueError(f"call time must be a finite number: {self.describe()}")
        if self.status == "ok":
            if not isinstance(self.ret, (int, float)) or not math.isfinite(self.ret):
                raise ValueError(f"an ok operation needs a finite return time: {self.describe()}")
            if self.ret < self.call:
                raise ValueError(f"returned before it was called: {self.describe()}")

    @property
    def end(self) -> float:
        """When the operation stopped being able to take effect: ``ret`` if
        it is ok, infinity if its outcome is unknown."""
        if self.status == "unknown" or self.ret is None:
            return math.inf
        return float(self.ret)

    def describe(self) -> str:
        """A stable one-line description, e.g. ``p2 cas('x', 1 -> 2) -> True [0.5, 0.75]``."""
        key = repr(self.key)
        if self.kind == "get":
            text = f"get({key})"
        elif self.kind == "cas":
            text = f"cas({key}, {self.expected!r} -> {self.value!r})"
        elif self.kind == "put" or self.value is not None:
            text = f"{self.kind}({key}, {self.value!r})"
        else:
            text = f"{self.kind}({key})"
        if self.status == "ok" and (self.output is not None or self.kind == "get"):
            text += f" -> {self.output!r}"
        span = f"[{_fmt_time(self.call)}, {_fmt_time(None if self.status == 'unknown' else self.ret)}]"
        suffix = {"ok": "", "fail": " failed", "unknown": " unknown outcome"}.get(self.status, f" {self.status}")
        return f"p{self.process} {text} {span}{suffix}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (an unknown return time becomes ``null``)."""
        ret = None if self.ret is None or not math.isfinite(self.ret) else self.ret
        return {
            "process": self.process,
            "kind": self.kind,
            "key": self.key,
            "value": self.value,
            "expected": self.expected,
            "output": self.output,
            "call": self.call,
            "ret": ret,
            "status": self.status,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Operation:
        """The inverse of :meth:`to_json`. JSON arrays become tuples (so that
        they are hashable); missing ``value``/``expected``/``output``/``ret``
        default to ``None``; unknown fields are an error."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"an operation must be a JSON object, not {type(obj).__name__}")
        names = {"process", "kind", "key", "value", "expected", "output", "call", "ret", "status"}
        extra = sorted(set(obj) - names)
        if extra:
            raise ValueError(f"unknown field(s) {extra}; expected {sorted(names)}")
        missing = sorted({"process", "kind", "key", "call", "status"} - set(obj))
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        return cls(**{"ret": None, **{name: _freeze(value) for name, value in obj.items()}})


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


class Model(Protocol):
    """The sequential specification of one object (one key).

    ``init(initial)`` gives the state of an object whose initial value is
    ``initial`` (``None`` unless :func:`check` was given one). ``step(state,
    op)`` says whether ``op``, taking effect in ``state``, could have
    produced what was observed, and the state after it. States must be
    hashable and compare by value. For an operation with status
    ``"unknown"`` the output means nothing: ``step`` must accept it in every
    state in which it can take effect at all.

    A model may also define ``read_only(op) -> bool``: True promises that
    ``op`` never changes the state (``step`` returns the state it was given
    whenever it accepts ``op``). An unknown operation for which it returns
    True is dropped before the search, and an ok one is linearized as soon
    as the model accepts it, without trying other orders.
    """

    def init(self, initial: Any) -> Any:
        """The state of a fresh object holding ``initial``."""
        ...

    def step(self, state: Any, op: Operation) -> tuple[bool, Any]:
        """``(legal, new_state)``: whether ``op`` fits in ``state``, and the state after it."""
        ...


def _exact(value: Any) -> Any:
    """A key that is equal for two values only if they are equal and of the
    same types, all the way down tuples: ``1``, ``1.0`` and ``True`` differ,
    as they do in msgpack and JSON (Python's ``==`` would call them equal)."""
    if type(value) is tuple:
        return (tuple, tuple(map(_exact, value)))
    return (type(value), value)


class _Value:
    """A register's state: the value, compared by :func:`_exact`; it prints as the value."""

    __slots__ = ("value", "_key")

    def __init__(self, value: Any) -> None:
        self.value = value
        self._key = _exact(value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Value) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return repr(self.value)


class RegisterModel:
    """A register: ``get`` reads the value, ``put`` sets it, ``cas`` sets
    ``value`` iff the register holds ``expected`` (an ok cas reports True
    or False; False means it saw something else). The state is the value
    (it prints as the value; its ``.value`` is the value itself); ``None``
    means absent. Values are equal only if they have the same types, as in
    msgpack and JSON: a register holding ``1`` does not hold ``True`` or
    ``1.0``. This is the default model of :func:`check`.
    """

    def init(self, initial: Any) -> Any:
        """The register starts out holding ``initial``."""
        return _Value(initial)

    def step(self, state: Any, op: Operation) -> tuple[bool, Any]:
        """Apply ``op`` to the value ``state``; see the class docstring."""
        if not isinstance(state, _Value):
            state = _Value(state)
        kind = op.kind
        if kind == "get":
            return op.status != "ok" or _exact(op.output) == state._key, state
        if kind == "put":
            return True, _Value(op.value)
        if kind == "cas":
            observed = None
            if op.status == "ok":
                if op.output not in (True, False):
                    raise ValueError(f"an ok cas must output True or False: {op.describe()}")
                observed = bool(op.output)
            if state._key == _exact(op.expected):
                return observed is not False, _Value(op.value)
            return observed is not True, state
        raise ValueError(f"the register model knows get, put and cas, not {kind!r}: {op.describe()}")

    def read_only(self, op: Operation) -> bool:
        """Whether ``op`` never changes the register: a get, or a cas that
        reported it did not swap."""
        return op.kind == "get" or (op.kind == "cas" and op.status == "ok" and op.output is False)

    def __repr__(self) -> str:
        return "RegisterModel()"


REGISTER = RegisterModel()


@dataclass(frozen=True)
class Violation:
    """Why one key's history is not linearizable.

    The search got furthest with ``prefix`` (a legal linearization of some
    of the operations, in order), leaving the model in ``state``. Then
    ``blocked`` returned: some operation must take effect before
    ``blocked.ret``, but none of the candidates, ``stuck`` (the operations
    called by then and not yet linearized, ``blocked`` among them), leads
    to a linearization: those in ``rejected`` are refused by the model in
    ``state`` outright, the others only lead to dead ends further on.
    Operations of unknown outcome are among ``stuck`` only if they would
    let a rejected one go next; ``other_unknown`` counts those that could
    take effect too, but would not. ``concurrent`` lists the other
    operations that overlap the stuck ones; ``earlier_unknown`` counts the
    operations of unknown outcome left out of it because they were called
    before the first stuck one (they may take effect at any time, so they
    overlap everything after them).
    """

    key: Any
    prefix: tuple[Operation, ...]
    state: Any
    blocked: Operation
    stuck: tuple[Operation, ...]
    rejected: tuple[Operation, ...]
    concurrent: tuple[Operation, ...]
    other_unknown: int = 0
    earlier_unknown: int = 0
    notes: tuple[str, ...] = ()
    """Where the values the rejected reads saw came from (register model)."""

    def explain(self, max_prefix: int = 10) -> str:
        """A multi-line explanation naming the key and the operations."""
        lines = [f"key {self.key!r}: no linearization exists."]
        n = len(self.prefix)
        if n == 0:
            lines.append(f"  Not even the first operation can be linearized; the initial state is {self.state!r}.")
        else:
            lines.append(
                f"  The longest linearizable prefix found has {n} operation{'s' if n != 1 else ''};"
                f" after it the state is {self.state!r}:"
            )
            shown = self.prefix[-max_prefix:] if max_prefix > 0 else ()
            if len(shown) < n:
                lines.append(f"    ... {n - len(shown)} earlier operations")
            for i, op in enumerate(shown, start=n - len(shown) + 1):
                lines.append(f"    {i:>{len(str(n))}}. {op.describe()}")
        lines.append(
            f"  Then {self.blocked.describe()} returned at {_fmt_time(self.blocked.ret)}: something had to take"
            " effect before that, but none of these can go next:"
        )
        rejected = set(map(id, self.rejected))
        for op in self.stuck:
            reason = (
                f"rejected in state {self.state!r}" if id(op) in rejected
                else "accepted, but every continuation fails"
            )
            lines.append(f"    {op.describe()}  <- {reason}")
        for note in self.notes:
            lines.append(f"    ({note})")
        if self.other_unknown:
            lines.append(
                f"    ({self.other_unknown} operation{'s' if self.other_unknown != 1 else ''} of unknown outcome"
                " could take effect here too, but would not make a rejected one possible)"
            )
        linearized = set(map(id, self.prefix))
        lines.append("  Concurrent with them:" if self.concurrent else "  Concurrent with them: none.")
        for op in self.concurrent:
            note = "  (in the prefix)" if id(op) in linearized else ""
            lines.append(f"    {op.describe()}{note}")
        if self.earlier_unknown:
            lines.append(
                f"    ({self.earlier_unknown} operation{'s' if self.earlier_unknown != 1 else ''} of unknown"
                " outcome called earlier, not listed)"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class KeyResult:
    """The verdict for one key: ``ok`` is True (linearizable), False (not:
    see ``violation``) or None (the timeout expired first: unknown).

    ``operations`` counts the key's operations in the history; ``dropped``
    those left out of the search (failed ones, unknown reads);
    ``configurations`` the distinct configurations the search visited.
    """

    key: Any
    ok: bool | None
    operations: int
    dropped: int
    configurations: int
    elapsed: float
    violation: Violation | None = None

    @property
    def verdict(self) -> str:
        """``"linearizable"``, ``"not linearizable"`` or ``"unknown"``."""
        return _verdict(self.ok)

    def describe(self) -> str:
        """One line: the key, its verdict and its counts."""
        extra = "" if self.ok is not None else " (timed out)"
        return (
            f"key {self.key!r}: {self.verdict}{extra}, {self.operations} operations"
            f" ({self.dropped} dropped), {self.configurations} configurations, {self.elapsed:.3f} s"
        )


def _verdict(ok: bool | None) -> str:
    return {True: "linearizable", False: "not linearizable", None: "unknown"}[ok]


@dataclass(frozen=True)
class Result:
    """The verdict for a whole history.

    ``ok`` is False if any key is not linearizable, else None if any key's
    check timed out (the verdict is then unknown), else True. ``per_key``
    maps each key to its :class:`KeyResult`. ``bool(result)`` is True only
    for a linearizable history, so ``assert check(history)`` reads well.
    """

    ok: bool | None
    operations: int
    per_key: Mapping[Any, KeyResult]
    elapsed: float
    timeout: float | None = None

    @property
    def keys_checked(self) -> int:
        """How many keys (independent registers) the history touches."""
        return len(self.per_key)

    @property
    def verdict(self) -> str:
        """``"linearizable"``, ``"not linearizable"`` or ``"unknown"``."""
        return _verdict(self.ok)

    @property
    def violations(self) -> tuple[Violation, ...]:
        """One :class:`Violation` per key that is not linearizable."""
        return tuple(r.violation for r in self.per_key.values() if r.violation is not None)

    @property
    def violation(self) -> Violation | None:
        """The first violation, if any."""
        found = self.violations
        return found[0] if found else None

    def __bool__(self) -> bool:
        return self.ok is True

    def explain(self, max_prefix: int = 10) -> str:
        """A human-readable, multi-line verdict: a summary line, the keys
        that are not linearizable or undecided, and for each violation the
        operations involved (at most ``max_prefix`` of the prefix)."""
        n_keys = len(self.per_key)
        summary = (
            f"{n_keys} key{'s' if n_keys != 1 else ''}, {self.operations} operations,"
            f" checked in {self.elapsed:.3f} s"
        )
        bad = [r for r in self.per_key.values() if r.ok is False]
        undecided = [r for r in self.per_key.values() if r.ok is None]
        if self.ok is True:
            return f"linearizable: {summary}"
        if self.ok is False:
            names = ", ".join(repr(r.key) for r in bad)
            lines = [f"NOT linearizable: key{'s' if len(bad) != 1 else ''} {names} ({summary})"]
        else:
            limit = "" if self.timeout is None else f" within the {self.timeout:g} s timeout"
            lines = [
                f"UNKNOWN: the check did not finish{limit} for {len(undecided)} key(s); the history may or"
                f" may not be linearizable ({summary})"
            ]
        for r in self.per_key.values():
            if r.ok is not True:
                lines.append(f"  {r.describe()}")
        for r in bad:
            assert r.violation is not None
            lines.append("")
            lines.append(r.violation.explain(max_prefix))
        return "\n".join(lines)


def check(
    history: Iterable[Operation],
    *,
    model: Model = REGISTER,
    initial: Mapping[Any, Any] | None = None,
    timeout: float | None = None,
) -> Result:
    """Check whether ``history`` is linearizable, key by key.

    ``model`` is the sequential specification of one key (default: a
    register). ``initial`` gives keys' initial values (default ``None``,
    absent). ``timeout`` bounds the whole check in seconds; keys not
    decided by then are reported as unknown.
    """
    started = time.monotonic()
    deadline = math.inf if timeout is None else started + timeout
    by_key: dict[Any, list[Operation]] = {}
    count = 0
    for op in history:
        if not isinstance(op, Operation):
            raise TypeError(f"a history holds Operation objects, not {type(op).__name__}")
        try:
            by_key.setdefault(op.key, []).append(op)
        except TypeError:
            raise TypeError(f"keys must be hashable: {op.describe()}") from None
        count += 1
    # Keys are checked in turn, each with a fair share of the time left;
    # those still undecided then get a second go with whatever remains.
    per_key: dict[Any, KeyResult] = {}
    for attempt in (1, 2):
        todo = [key for key in by_key if key not in per_key or per_key[key].ok is None]
        for i, key in enumerate(todo):
            share = (deadline - time.monotonic()) / (len(todo) - i) if attempt == 1 else 0.0
            key_deadline = deadline if math.isinf(deadline) or attempt == 2 else time.monotonic() + share
            init_value = initial.get(key) if initial is not None else None
            earlier = per_key.get(key)
            result = _check_key(key, by_key[key], model, model.init(init_value), key_deadline)
            if earlier is not None:
                result = replace(
                    result,
                    configurations=result.configurations + earlier.configurations,
                    elapsed=result.elapsed + earlier.elapsed,
                )
            per_key[key] = result
        if math.isinf(deadline):
            break
    oks = [r.ok for r in per_key.values()]
    ok: bool | None = False if False in oks else (None if None in oks else True)
    return Result(ok=ok, operations=count, per_key=per_key, elapsed=time.monotonic() - started, timeout=timeout)


def _check_key(key: Any, ops: list[Operation], model: Model, init_state: Any, deadline: float) -> KeyResult:
    started = time.monotonic()
    read_only: Callable[[Operation], bool] | None = getattr(model, "read_only", None)
    kept = [
        op for op in ops
        if op.status == "ok" or (op.status == "unknown" and not (read_only is not None and read_only(op)))
    ]
    if started >= deadline:
        return KeyResult(key, None, len(ops), len(ops) - len(kept), 0, 0.0)
    search = _Search(key, kept, model, init_state)
    try:
        if not search.classes:
            ok = search.run(deadline)
        else:
            # Unknown operations: a cheap exact search first, then the
            # relaxed one, then the full exact one (see the docstring).
            # The relaxed search may repeat an unknown operation without
            # end: only the register is known to reach no new states that
            # way (a put or cas again changes nothing); a custom model's
            # operations may add up (a counter), so it gets the exact one.
            register = type(model) is RegisterModel
            # The cheap search finds a linearization quickly if there is
            # one; when there is none it can take much longer than the
            # relaxed one to give up, so for the register it gets a budget.
            budget = _EAGER_BUDGET_PER_OPERATION * len(kept) + _EAGER_BUDGET if register else math.inf
            ok = search.run(deadline, exact=True, limit=_ANTICHAIN_LIMIT, eager=True, budget=budget)
            if ok is False and not search.complete:
                if register:
                    ok = search.run(deadline, exact=False)
                    if ok and not search.witness_fits():
                        ok = search.run(deadline, exact=True)
                else:
                    ok = search.run(deadline, exact=True)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise
        raise TypeError(f"key {key!r}: model states must be hashable ({exc})") from None
    return KeyResult(
        key, ok, len(ops), len(ops) - len(kept), search.configurations, time.monotonic() - started,
        search.violation(ops) if ok is False else None,
    )


class _Search:
    """The WGL search over one key's ok and unknown operations (see the module docstring)."""

    def __init__(self, key: Any, ops: Sequence[Operation], model: Model, init_state: Any) -> None:
        self.key = key
        self.model = model
        self.init_state = init_state
        # Operations are numbered ok ones first, by call time, then unknown ones by call time.
        ok_ops = sorted((op for op in ops if op.status == "ok"), key=lambda op: (op.call, op.end))
        unknown = sorted((op for op in ops if op.status != "ok"), key=lambda op: op.call)
        self.ops: list[Operation] = ok_ops + unknown
        self.n_ok = n_ok = len(ok_ops)
        self.bit: list[int] = [1 << i for i in range(n_ok)] + [1 << i for i in range(len(unknown))]
        # The ok operations that never change the state (model.read_only).
        read_only: Callable[[Operation], bool] | None = getattr(model, "read_only", None)
        self.observer: list[bool] = [read_only is not None and bool(read_only(op)) for op in ok_ops]
        # Entries are positions in the time order of all calls and returns
        # (calls first at equal times: Rule 2); unknown operations have no
        # return entry. Only the entries of ok operations are linked.
        events: list[tuple[float, int, int]] = [(op.call, 0, g) for g, op in enumerate(self.ops)]
        events += [(op.end, 1, g) for g, op in enumerate(ok_ops)]
        events.sort()
        self.head = n = len(events)  # the sentinel
        self.entry_op: list[int] = [g for _, _, g in events]
        self.is_return: list[bool] = [kind == 1 for _, kind, _ in events]
        self.call_entry: list[int] = [0] * len(self.ops)
        self.match: list[int] = [-1] * n  # call entry -> its return entry
        for e, (_, kind, g) in enumerate(events):
            if kind == 0:
                self.call_entry[g] = e
            else:
                self.match[self.call_entry[g]] = e
        self.linked: list[int] = [e for e, (_, _, g) in enumerate(events) if g < n_ok]
        # Unknown operations in classes of interchangeable ones (same kind,
        # value and expected value), each class in call order.
        by_effect: dict[Any, list[int]] = {}
        for g in range(n_ok, len(self.ops)):
            op = self.ops[g]
            try:
                by_effect.setdefault((op.kind, op.value, op.expected), []).append(g)
            except TypeError:
                raise TypeError(f"values must be hashable: {op.describe()}") from None
        self.classes: list[list[int]] = list(by_effect.values())
        self.class_of: dict[int, int] = {g: k for k, members in enumerate(self.classes) for g in members}
        # Model states are numbered as met: states[sid] is the state numbered
        # sid, and successors[g][sid] the number of the state after operation
        # g in it, or -1 if the model rejects g there (see _after).
        self.states: list[Any] = []
        self._state_ids: dict[Any, int] = {}
        self._successors: list[dict[int, int]] = [{} for _ in self.ops]
        # sid -> [(class, state after)] for the classes that would change it.
        self._effects: dict[int, list[tuple[int, int]]] = {}
        self.exact = True
        self.configurations = 0
        # The deepest dead end: (ok operations linearized, prefix, state number,
        # return entry, the bound each of prefix was placed under).
        self.best: tuple[int, list[int], int, int, list[int]] | None = None
        # The same, from the last exact run that failed (its prefix is always real).
        self.exact_best: tuple[int, list[int], int, int, list[int]] | None = None
        # The linearization found (operations, and the bound each was placed under).
        self.witness: tuple[list[int], list[int]] = ([], [])

    def run(
        self, deadline: float, exact: bool = True, limit: int | None = None, eager: bool = False,
        budget: float = math.inf,
    ) -> bool | None:
        """True if linearizable, False if not, None if ``deadline`` passed first.

        With ``exact=False`` each class of unknown operations may be used any
        number of times once its first member was called: a relaxation, so
        False is still a proof, and True is confirmed by :meth:`witness_fits`.
        With a ``limit``, at most that many unknown bitsets are kept per
        configuration and others are pruned: True is still a proof, and
        False is one only if :attr:`complete` (nothing was pruned so).
        With ``eager``, unknown operations are only tried where they let a
        waiting ok operation go next (also incomplete, if any others were
        skipped). After visiting about ``budget`` configurations (and
        meeting a dead end) the search gives up: False, and incomplete.
        """
        ops, bit, n_ok = self.ops, self.bit, self.n_ok
        successors, after = self._successors, self._after
        head = self.head
        nxt, prv = _links(head, self.linked)
        entry_op, is_return, match = self.entry_op, self.is_return, self.match
        observer = self.observer
        self.exact = exact
        self.best = None
        self.complete = True

        def remember(seen: dict[tuple[int, int, int], list[int]], memo: tuple[int, int, int], unknown: int) -> bool:
            return _remember(seen, memo, unknown, limit, self)
        classes = self.classes
        n_classes = len(classes)
        counts = [0] * n_classes  # Invariant (exact): the first counts[k] of classes[k] are linearized, no others
        dominance = exact and n_classes > 0
        monotonic = time.monotonic

        state = self._number(self.init_state)  # the number of the model state (see _after)
        ok_bits = 0  # Invariant: bit i set iff ok operation i is linearized
        unk_bits = 0  # exact: the same for unknown operations (numbered from n_ok)
        remaining = n_ok
        path: list[int] = []  # the operations linearized, in order
        # For each of path: (state before, phase, position, bound, phase 1 order).
        frames: list[tuple[int, int, int, int, list[tuple[int, int, int]] | None]] = []
        # Visited configurations, keyed by (trailing ones, bits above, state) of
        # the ok bitset. A set, unless exact with unknown operations: then a
        # map to the antichain of unknown bitsets seen with that key (dominance).
        seen: set[tuple[int, int, int]] = set()
        seen_unknown: dict[tuple[int, int, int], list[int]] = {(0, 0, state): [0]}
        configurations = 1
        ticks = 0
        entry = nxt[head]  # phase 0: the next linked entry to try
        scan = True  # phase 0: a configuration just entered, look for a candidate that changes nothing first
        forced = False  # phase 0: entry is such a candidate, the only one to try
        phase = 0  # 0: trying ok candidates; 1: trying unknown ones; in frames, 2: a forced ok candidate
        bound = head  # phase 1: the first return entry; unknown candidates are called before it
        order: list[tuple[int, int, int]] | None = None  # phase 1: (class, operation, state after) to try
        at = 0  # phase 1: the next index in order
        while remaining:
            ticks += 1
            if not ticks & _CLOCK_MASK:
                if monotonic() > deadline:
                    self.configurations += configurations
                    return None
                if configurations > budget and self.best is not None:
                    self.configurations += configurations
                    self.complete = False
                    if exact:
                        self.exact_best = self.best
                    return False
            if scan:
                # A candidate that never changes the state (a read, a failed
                # cas) and that the model accepts here can go first in any
                # linearization from here, so it is the only one to try: the
                # others' orders need not be explored around it.
                scan = False
                e = entry
                while not is_return[e]:
                    g = entry_op[e]
                    if observer[g]:
                        new_state = successors[g].get(state)
                        if new_state is None:
                            new_state = after(state, g)
                        if new_state >= 0:
                            entry, forced = e, True
                            break
                    e = nxt[e]
                continue
            if phase == 0:
                if not is_return[entry]:
                    g = entry_op[entry]
                    new_state = successors[g].get(state)
                    if new_state is None:
                        new_state = after(state, g)
                    if new_state >= 0:
                        new_ok = ok_bits | bit[g]
                        ones = (new_ok ^ (new_ok + 1)).bit_length() - 1
                        memo = (ones, new_ok >> ones, new_state)
                        fresh = remember(seen_unknown, memo, unk_bits) if dominance else memo not in seen
                        if fresh:
                            if not dominance:
                                seen.add(memo)
                            configurations += 1
                            path.append(g)
                            frames.append((state, 2 if forced else 0, entry, bound, None))
                            state, ok_bits, forced = new_state, new_ok, False
                            remaining -= 1
                            # Lift: unlink the call entry and its return entry.
                            nxt[prv[entry]] = nxt[entry]
                            prv[nxt[entry]] = prv[entry]
                            r = match[entry]
                            nxt[prv[r]] = nxt[r]
                            if nxt[r] >= 0:
                                prv[nxt[r]] = prv[r]
                            entry, scan = nxt[head], True
                            continue
                    if not forced:
                        entry = nxt[entry]
                        continue
                    # The forced candidate was explored already, and failed:
                    # so does this configuration.
                    forced = False
                    while not is_return[entry]:
                        entry = nxt[entry]
                    bound = entry
                else:
                    bound = entry
                    if n_classes:
                        phase, at = 1, 0
                        order = self._unknown_candidates(state, bound, counts if exact else None, nxt, eager)
                        continue
            else:
                assert order is not None
                if at < len(order):
                    k, g, new_state = order[at]
                    ones = (ok_bits ^ (ok_bits + 1)).bit_length() - 1
                    memo = (ones, ok_bits >> ones, new_state)
                    if dominance:
                        new_unk = unk_bits | bit[g]
                        fresh = remember(seen_unknown, memo, new_unk)
                    else:
                        new_unk = 0
                        fresh = memo not in seen
                        seen.add(memo)
                    if fresh:
                        configurations += 1
                        path.append(g)
                        frames.append((state, 1, at, bound, order))
                        state, unk_bits = new_state, new_unk
                        if exact:
                            counts[k] += 1
                        entry, phase, scan = nxt[head], 0, True
                        continue
                    at += 1
                    continue
            # Dead end: the operation returning at `bound` cannot be placed.
            depth = n_ok - remaining
            # The deepest, and of those the one with the fewest unknown operations (the easiest to read).
            if self.best is None or depth > self.best[0] or (depth == self.best[0] and len(path) < len(self.best[1])):
                self.best = (depth, path[:], state, bound, [frame[3] for frame in frames])
            while True:
                if not path:
                    self.configurations += configurations
                    if exact:
                        self.exact_best = self.best
                    return False
                g = path.pop()
                state, phase, position, bound, order = frames.pop()
                if phase == 1:
                    assert order is not None
                    unk_bits ^= bit[g]
                    if exact:
                        counts[order[position][0]] -= 1
                    at = position + 1
                    break
                ok_bits ^= bit[g]
                remaining += 1
                # Unlift, in the reverse order of the lift.
                r = match[position]
                nxt[prv[r]] = r
                if nxt[r] >= 0:
                    prv[nxt[r]] = r
                nxt[prv[position]] = position
                prv[nxt[position]] = position
                if phase == 0:
                    entry = nxt[position]
                    break
                # Phase 2: a forced candidate failed, so did the configuration it left.
        self.configurations += configurations
        self.witness = (path, [frame[3] for frame in frames])
        return True

    def _unknown_candidates(
        self, sid: int, bound: int, counts: list[int] | None, nxt: list[int], eager: bool = False
    ) -> list[tuple[int, int, int]]:
        """The unknown operations worth trying in the state numbered
        ``sid``, as (class, operation, state after): the next member of each
        class called before ``bound`` (any member, again and again, if
        ``counts`` is None: the relaxed search) that would change the state.
        Those after which some ok candidate the model now rejects becomes
        legal come first: they are what a stuck read or cas is waiting for."""
        after = self._after
        waiting = []
        e = nxt[self.head]
        while e != bound:
            g = self.entry_op[e]
            if after(sid, g) < 0:
                waiting.append(g)
            e = nxt[e]
        effects = self._effects.get(sid)
        if effects is None:
            # What each class would do here (its members all do the same).
            effects = self._effects[sid] = []
            for k, members in enumerate(self.classes):
                new_sid = after(sid, members[0])
                if new_sid >= 0 and new_sid != sid:
                    effects.append((k, new_sid))
        first: list[tuple[int, int, int]] = []
        rest: list[tuple[int, int, int]] = []
        classes, call_entry = self.classes, self.call_entry
        for k, new_sid in effects:
            members = classes[k]
            if call_entry[members[0]] >= bound:
                break  # classes are in the order of their first calls
            c = 0 if counts is None else counts[k]
            if c < len(members) and call_entry[members[c]] < bound:
                helps = False
                for g in waiting:
                    if after(new_sid, g) >= 0:
                        helps = True
                        break
                (first if helps else rest).append((k, members[c], new_sid))
        if eager:
            if rest:
                self.complete = False
            return first
        return first + rest

    def _number(self, state: Any) -> int:
        """The number of ``state`` (a new one if it was not met before)."""
        sid = self._state_ids.get(state)
        if sid is None:
            sid = self._state_ids[state] = len(self.states)
            self.states.append(state)
        return sid

    def _after(self, sid: int, g: int) -> int:
        """The number of the state after operation ``g`` in state ``sid``,
        or -1 if the model rejects it there; each is asked of the model once."""
        new_sid = self._successors[g].get(sid)
        if new_sid is None:
            legal, new_state = self.model.step(self.states[sid], self.ops[g])
            new_sid = self._successors[g][sid] = self._number(new_state) if legal else -1
        return new_sid

    def witness_fits(self) -> bool:
        """Whether the linearization found by a relaxed :meth:`run` uses no
        class of unknown operations more often than it had members called
        by then (so that it is a linearization of the history itself)."""
        return self._fits(*self.witness)

    def _fits(self, path: list[int], bounds: list[int]) -> bool:
        """Whether ``path``, with the j-th use of a class of unknown
        operations taken as its j-th member, places each of those after its
        call (before ``bounds``): whether it is a real linearization. A path
        of an exact run always is; one of a relaxed run may reuse members."""
        used = [0] * len(self.classes)
        for g, bound in zip(path, bounds):
            if g >= self.n_ok:
                k = self.class_of[g]
                members = self.classes[k]
                if used[k] >= len(members) or self.call_entry[members[used[k]]] >= bound:
                    return False
                used[k] += 1
        return True

    def violation(self, history: Sequence[Operation] = ()) -> Violation:
        """The explanation, from the deepest dead end (call after run() returned False).
        ``history`` is all of the key's operations, failed ones included.

        A relaxed run's deepest dead end may have reused an unknown
        operation; the explanation then comes from the exact run before it,
        so that its prefix is always a linearization of real operations."""
        best = self.best
        if best is None or not self._fits(best[1], best[4]):
            best = self.exact_best
        assert best is not None
        _, path, sid, ret_entry, _ = best
        state = self.states[sid]
        # The j-th use of a class of unknown operations is its j-th member.
        used = [0] * len(self.classes)
        prefix: list[int] = []
        for g in path:
            if g >= self.n_ok:
                k = self.class_of[g]
                g = self.classes[k][used[k]]
                used[k] += 1
            prefix.append(g)
        done = set(prefix)
        candidates = [
            self.entry_op[e] for e in self.linked
            if e < ret_entry and not self.is_return[e] and self.entry_op[e] not in done
        ]
        for k, members in enumerate(self.classes):
            if used[k] < len(members) and self.call_entry[members[used[k]]] < ret_entry:
                candidates.append(members[used[k]])
        blocked = self.ops[self.entry_op[ret_entry]]
        stuck: list[Operation] = []
        rejected: list[Operation] = []
        unknown: list[tuple[Operation, Any]] = []
        for g in candidates:
            op = self.ops[g]
            legal, new_state = self.model.step(state, op)
            if g >= self.n_ok:
                if legal and new_state != state:  # else it could not matter here
                    unknown.append((op, new_state))
                continue
            stuck.append(op)
            if not legal:
                rejected.append(op)
        other = [op for op, after in unknown if not any(self.model.step(after, r)[0] for r in rejected)]
        other_ids = set(map(id, other))
        stuck += [op for op, _ in unknown if id(op) not in other_ids]
        lo = min(op.call for op in stuck if op.status == "ok")
        hi = blocked.end
        left_out = set(map(id, stuck + other))
        concurrent = [op for op in self.ops if id(op) not in left_out and op.call <= hi and op.end >= lo]
        earlier = [op for op in concurrent if op.status != "ok" and op.call < lo]
        concurrent = [op for op in concurrent if not (op.status != "ok" and op.call < lo)]
        return Violation(
            key=self.key,
            prefix=tuple(self.ops[g] for g in prefix),
            state=state,
            blocked=blocked,
            stuck=tuple(sorted(stuck, key=lambda op: op.call)),
            rejected=tuple(rejected),
            concurrent=tuple(sorted(concurrent, key=lambda op: op.call)),
            other_unknown=len(other),
            earlier_unknown=len(earlier),
            notes=self._sources(rejected, [self.ops[g] for g in prefix], history),
        )

    def _sources(
        self, rejected: list[Operation], prefix: list[Operation], history: Sequence[Operation]
    ) -> tuple[str, ...]:
        """For the register model, where the value each rejected get read
        came from: the last write of it in ``prefix``, a write that could
        not go there, a failed write, or none."""
        if not isinstance(self.model, RegisterModel):
            return ()
        notes = []
        place = {id(op): i for i, op in enumerate(prefix, start=1)}
        for read in rejected:
            if read.kind != "get":
                continue
            seen = _Value(read.output)
            writes = [
                op for op in history
                if op.kind in ("put", "cas") and _Value(op.value) == seen
                and not (op.kind == "cas" and op.status == "ok" and op.output is not True)
            ]
            done = [op for op in writes if id(op) in place]
            if done:
                last = max(done, key=lambda op: place[id(op)])
                notes.append(f"{seen!r} was last written by {last.describe()}, operation {place[id(last)]} of"
                             f" the prefix")
            elif any(op.status != "fail" for op in writes):
                first = min((op for op in writes if op.status != "fail"), key=lambda op: op.call)
                notes.append(f"{seen!r} was written by {first.describe()}, which could not have taken effect by then")
            elif writes:
                notes.append(f"{seen!r} was written only by {writes[0].describe()}, which did not take effect")
            elif seen != self.init_state:
                notes.append(f"no operation wrote {seen!r}")
        return tuple(notes)


def _remember(
    seen: dict[tuple[int, int, int], list[int]],
    memo: tuple[int, int, int],
    unknown: int,
    limit: int | None,
    search: _Search,
) -> bool:
    """Record the configuration (``memo``, ``unknown``); False if it, or one
    that dominates it (same memo, a subset of the unknown operations), was
    seen before. Each memo keeps an antichain of unknown bitsets; when it
    holds ``limit`` already, the configuration is pruned and the search
    marked incomplete."""
    masks = seen.get(memo)
    if masks is None:
        seen[memo] = [unknown]
        return True
    dominated = False
    for m in masks:
        if not m & ~unknown:
            return False
        if not unknown & ~m:
            dominated = True
    if dominated:
        masks[:] = [m for m in masks if unknown & ~m]  # drop those the new one dominates
    if limit is not None and len(masks) >= limit:
        search.complete = False
        return False
    masks.append(unknown)
    return True


def _links(n: int, entries: Sequence[int]) -> tuple[list[int], list[int]]:
    """``next`` and ``prev`` arrays linking ``entries`` in order after a
    sentinel head at index ``n``; -1 stands for "none"."""
    nxt = [-1] * (n + 1)
    prv = [-1] * (n + 1)
    last = n
    for e in entries:
        nxt[last] = e
        prv[e] = last
        last = e
    return nxt, prv


class History:
    """Records a history as clients run, for :func:`check`.

    ``h = History(); t = h.invoke(p, "put", "x", 3); ...; h.complete(t, "ok")``
    Use one recorder per test run and one clock for all clients (the
    default, :func:`time.monotonic`, is right within one process).
    Operations invoked but never completed count as unknown. Safe to use
    from several threads.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[int | str, str, Any, Any, Any, float]] = {}
        self._done: list[Operation] = []
        self._next_handle = 0

    def invoke(
        self, process: int | str, kind: str, key: Any, value: Any = None, expected: Any = None
    ) -> int:
        """Note that ``process`` is invoking an operation now; returns a handle for :meth:`complete`."""
        with self._lock:
            handle = self._next_handle
            self._next_handle += 1
            self._pending[handle] = (process, kind, key, value, expected, self._clock())
        return handle

    def complete(self, handle: int, status: str, output: Any = None) -> Operation:
        """Note that the operation ``handle`` returned now, with ``status``
        ``"ok"``, ``"fail"`` (certainly not applied) or ``"unknown"``
        (maybe applied: a timeout, a lost connection)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        with self._lock:
            now = self._clock()
            try:
                process, kind, key, value, expected, call = self._pending.pop(handle)
            except KeyError:
                raise ValueError(f"no pending operation with handle {handle!r}") from None
            op = Operation(
                process=process, kind=kind, key=key, value=value, expected=expected,
                output=output if status == "ok" else None,
                call=call, ret=None if status == "unknown" else now, status=status,
            )
            self._done.append(op)
        return op

    def operations(self) -> list[Operation]:
        """Every operation so far, by call time; pending ones as unknown."""
        with self._lock:
            pending = [
                Operation(process=p, kind=k, key=key, value=v, expected=x, call=c, ret=None, status="unknown")
                for p, k, key, v, x, c in self._pending.values()
            ]
            return sorted(self._done + pending, key=lambda op: op.call)

    def __len__(self) -> int:
        with self._lock:
            return len(self._done) + len(self._pending)

    def to_jsonl(self) -> str:
        """The history as JSON lines (see :func:`to_jsonl`)."""
        return to_jsonl(self.operations())

    def save(self, path: str | Path) -> None:
        """Write the history to ``path`` as JSON lines."""
        save(self.operations(), path)

    def check(self, **kwargs: Any) -> Result:
        """:func:`check` the history recorded so far."""
        return check(self.operations(), **kwargs)


def to_jsonl(ops: Iterable[Operation]) -> str:
    """One JSON object per line per operation (see :meth:`Operation.to_json`)."""
    return "".join(json.dumps(op.to_json(), allow_nan=False) + "\n" for op in ops)


def from_jsonl(text: str, source: str = "<history>") -> list[Operation]:
    """Parse JSON lines written by :func:`to_jsonl`; blank lines are
    skipped. Raises ValueError naming ``source`` and the line."""
    ops = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            ops.append(Operation.from_json(json.loads(line)))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{source}:{lineno}: {exc}") from None
    return ops


def save(ops: Iterable[Operation], path: str | Path) -> None:
    """Write ``ops`` to ``path`` as JSON lines."""
    Path(path).write_text(to_jsonl(ops), encoding="utf-8")


def load(path: str | Path) -> list[Operation]:
    """Read a history written by :func:`save`."""
    return from_jsonl(Path(path).read_text(encoding="utf-8"), source=str(path))


def check_file(path: str | Path, **kwargs: Any) -> Result:
    """:func:`check` the history saved in ``path``; keyword arguments as for :func:`check`."""
    return check(load(path), **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 linearizable, 1 not, 2 unknown or error)."""
    parser = argparse.ArgumentParser(
        prog="python -m raftlib.testing.lincheck",
        description="Check that a recorded key-value history (JSON lines) is linearizable.",
        epilog="Exit status: 0 linearizable, 1 not linearizable, 2 unknown (timeout) or error.",
    )
    parser.add_argument("history", help="a history file, one JSON operation per line")
    parser.add_argument("--timeout", type=float, default=None, help="give up after SECONDS (verdict: unknown)")
    parser.add_argument("--prefix", type=int, default=10, help="how many prefix operations to show (default 10)")
    args = parser.parse_args(argv)
    try:
        result = check_file(args.history, timeout=args.timeout)
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.explain(max_prefix=args.prefix))
    return {True: 0, False: 1, None: 2}[result.ok]


if __name__ == "__main__":
    sys.exit(main())
