"""Hand-made register histories for raftlib.testing.lincheck: linearizable
ones it must accept and broken ones it must reject, naming key and operations."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from raftlib.testing.lincheck import Operation, check, load, save


def op(p: int, kind: str, key: Any, call: float, ret: float | None, *, value: Any = None, expected: Any = None,
       output: Any = None, status: str = "ok") -> Operation:
    return Operation(process=p, kind=kind, key=key, value=value, expected=expected, output=output,
                     call=call, ret=ret, status=status)


def test_sequential_and_overlapping_histories_are_linearizable() -> None:
    history = [
        op(1, "put", "x", 0, 1, value=1),
        op(2, "get", "x", 2, 3, output=1),
        op(1, "put", "x", 4, 8, value=2),
        op(2, "get", "x", 5, 6, output=1),  # overlaps the put: it may read either value
        op(3, "get", "x", 5, 7, output=2),
        op(2, "cas", "x", 9, 10, expected=2, value=3, output=True),
        op(3, "cas", "x", 9, 11, expected=2, value=4, output=False),
        op(1, "get", "x", 12, 13, output=3),
    ]
    result = check(history)
    assert result.ok is True and result.verdict == "linearizable" and bool(result)


def test_a_stale_read_is_reported_with_its_key_and_operations() -> None:
    history = [
        op(1, "put", "x", 0, 1, value=1),
        op(1, "put", "x", 2, 3, value=2),
        op(2, "get", "x", 4, 5, output=1),  # the second put finished before this read began
        op(3, "put", "y", 0, 1, value=9),
        op(3, "get", "y", 2, 3, output=9),
    ]
    result = check(history)
    assert result.ok is False
    assert [v.key for v in result.violations] == ["x"]
    text = result.explain()
    assert "'x'" in text and "get('x') -> 1" in text and "'y'" not in text.split("\n")[0]


def test_two_cas_winners_for_the_same_expected_value_are_caught() -> None:
    history = [
        op(1, "put", "x", 0, 1, value=0),
        op(2, "cas", "x", 2, 3, expected=0, value=1, output=True),
        op(3, "cas", "x", 2, 4, expected=0, value=2, output=True),
    ]
    assert check(history).ok is False


def test_unknown_and_failed_operations() -> None:
    # An unknown put that a later read saw must have taken effect: fine.
    seen = [op(1, "put", "x", 0, None, value=5, status="unknown"), op(2, "get", "x", 3, 4, output=5)]
    assert check(seen).ok is True
    # An unknown put nobody saw may never have happened: fine too.
    unseen = [op(1, "put", "x", 0, None, value=5, status="unknown"), op(2, "get", "x", 3, 4, output=None)]
    assert check(unseen).ok is True
    # A failed put certainly did not take effect: a read that sees it is a violation.
    failed = [op(1, "put", "x", 0, 1, value=5, status="fail"), op(2, "get", "x", 3, 4, output=5)]
    assert check(failed).ok is False


def test_a_lost_write_is_caught() -> None:
    history = [op(1, "put", "x", 0, 1, value=1), op(2, "put", "x", 2, 3, value=2), op(1, "get", "x", 4, 5, output=None)]
    assert check(history).ok is False


def test_values_of_different_types_are_different_values() -> None:
    # The key-value service stores msgpack values, where 1, 1.0 and True
    # differ (and JSON histories keep them apart): reading True where only 1
    # was written is a read of a value never written.
    for written, read in [(1, True), (1, 1.0), (0, False), ((1, 2), (True, 2))]:
        history = [op(1, "put", "x", 0, 1, value=written), op(2, "get", "x", 2, 3, output=read)]
        assert check(history).ok is False, (written, read)
        assert check([history[0], op(2, "get", "x", 2, 3, output=written)]).ok is True
    # A cas expecting True does not match 1, so it cannot report a swap...
    swapped = [op(1, "put", "x", 0, 1, value=1), op(2, "cas", "x", 2, 3, expected=True, value=2, output=True)]
    assert check(swapped).ok is False
    # ... and an unknown put of True cannot explain a read of 1.
    unknown = [op(1, "put", "x", 0, None, value=True, status="unknown"), op(2, "get", "x", 2, 3, output=1)]
    assert check(unknown).ok is False
    # The explanation shows the register's value as it is.
    text = check([op(1, "put", "x", 0, 1, value=1), op(2, "get", "x", 2, 3, output=True)]).explain()
    assert "after it the state is 1:" in text


def _register_history(rng: random.Random, processes: int, ops: int) -> list[Operation]:
    """A history of a real register under random concurrency: each operation
    takes effect at one instant between its call and return."""
    value: Any = None
    t = 0.0
    pending: list[tuple[float, Operation]] = []
    out: list[Operation] = []
    free_at = [0.0] * processes
    for n in range(ops):
        p = rng.randrange(processes)
        call = max(t, free_at[p]) + rng.random()
        point = call + rng.random()
        ret = point + rng.random()
        free_at[p] = ret
        t = call
        kind = rng.choice(["get", "put", "cas"])
        if kind == "get":
            o = op(p, "get", "k", call, ret, output=value)
        elif kind == "put":
            value = n
            o = op(p, "put", "k", call, ret, value=n)
        else:
            expected = rng.choice([value, n - 1])
            won = expected == value
            if won:
                value = n
            o = op(p, "cas", "k", call, ret, expected=expected, value=n, output=won)
        pending.append((point, o))
    # Operations take effect in order of their points: rebuild values in that order.
    pending.sort(key=lambda x: x[0])
    value = None
    for _, o in pending:
        if o.kind == "get":
            o = op(o.process, "get", "k", o.call, o.ret, output=value)  # type: ignore[arg-type]
        elif o.kind == "put":
            value = o.value
        else:
            won = o.expected == value
            if won:
                value = o.value
            o = op(o.process, "cas", "k", o.call, o.ret, expected=o.expected, value=o.value,  # type: ignore[arg-type]
                   output=won)
        out.append(o)
    return out


def test_random_concurrent_register_histories_are_accepted_and_a_corrupted_read_is_not() -> None:
    rng = random.Random(7)
    for _ in range(5):
        history = _register_history(rng, processes=6, ops=300)
        result = check(history, timeout=30)
        assert result.ok is True, result.explain()
    history = _register_history(rng, processes=6, ops=300)
    gets = [i for i, o in enumerate(history) if o.kind == "get"]
    i = gets[len(gets) // 2]
    bad = history[i]
    history[i] = op(bad.process, "get", "k", bad.call, bad.ret, output="never written")  # type: ignore[arg-type]
    assert check(history, timeout=30).ok is False


def test_save_load_and_the_command_line(tmp_path: Path) -> None:
    good = [op(1, "put", "x", 0, 1, value=1), op(2, "get", "x", 2, 3, output=1)]
    bad = [op(1, "put", "x", 0, 1, value=1), op(2, "get", "x", 2, 3, output=2)]
    save(good, tmp_path / "good.jsonl")
    save(bad, tmp_path / "bad.jsonl")
    assert load(tmp_path / "good.jsonl") == good
    run = [sys.executable, "-m", "raftlib.testing.lincheck"]
    assert subprocess.run(run + [str(tmp_path / "good.jsonl")], capture_output=True, timeout=60).returncode == 0
    broken = subprocess.run(run + [str(tmp_path / "bad.jsonl")], capture_output=True, text=True, timeout=60)
    assert broken.returncode == 1 and "'x'" in broken.stdout
    (tmp_path / "junk.jsonl").write_text("not json\n")
    assert subprocess.run(run + [str(tmp_path / "junk.jsonl")], capture_output=True, timeout=60).returncode == 2


def test_json_operations_may_leave_out_what_they_do_not_have() -> None:
    # Operation.from_json: a missing value, expected, output or ret is None.
    # An unknown operation has no return time to write down.
    from raftlib.testing.lincheck import from_jsonl

    text = (
        '{"process": 1, "kind": "put", "key": "x", "value": 5, "call": 0, "status": "unknown"}\n'
        '{"process": 2, "kind": "get", "key": "x", "output": 5, "call": 1, "ret": 2, "status": "ok"}\n'
    )
    ops = from_jsonl(text)
    assert ops[0].ret is None and ops[0].status == "unknown"
    assert check(ops).ok is True
    # An ok operation still needs its return time, and says so.
    try:
        from_jsonl('{"process": 1, "kind": "get", "key": "x", "call": 0, "status": "ok"}\n', source="h.jsonl")
    except ValueError as exc:
        assert "h.jsonl:1" in str(exc) and "return time" in str(exc)
    else:
        raise AssertionError("an ok operation without a return time was accepted")


class _Counter:
    """A custom model: ``add`` adds its value, ``read`` outputs the total."""

    def init(self, initial: Any) -> Any:
        return initial or 0

    def step(self, state: Any, o: Operation) -> tuple[bool, Any]:
        if o.kind == "add":
            return True, state + o.value
        return o.status != "ok" or o.output == state, state


def test_a_custom_model_whose_unknown_operations_add_up_is_decided() -> None:
    # Two increments that may or may not have happened, then reads of 1, 2,
    # 1: a counter never goes down. The search must say so, not try ever
    # more increments (it used to, until the timeout or out of memory).
    def add(p: int) -> Operation:
        return op(p, "add", "c", 0, None, value=1, status="unknown")

    def read(t: float, total: int) -> Operation:
        return op(3, "read", "c", t, t + 1, output=total)

    down = [add(1), add(2), read(5, 1), read(7, 2), read(9, 1)]
    assert check(down, model=_Counter(), timeout=10).ok is False
    up = [add(1), add(2), read(5, 1), read(7, 2), read(9, 2)]
    assert check(up, model=_Counter(), timeout=10).ok is True
    assert check([add(1), add(2), read(5, 3)], model=_Counter(), timeout=10).ok is False


def _brute_force(history: list[Operation]) -> bool:
    """Linearizable by exhaustive search: some subset of the unknown
    operations plus every ok one, in some order that respects real time,
    that the register model accepts."""
    import itertools

    from raftlib.testing.lincheck import RegisterModel

    model = RegisterModel()
    oks = [o for o in history if o.status == "ok"]
    unknowns = [o for o in history if o.status == "unknown"]
    for r in range(len(unknowns) + 1):
        for chosen in itertools.combinations(unknowns, r):
            ops = oks + list(chosen)
            for order in itertools.permutations(ops):
                # Real time: a may not come after b if a was called after b returned.
                if any(order[j].call > order[i].end for i in range(len(order)) for j in range(i)):
                    continue
                state, legal = None, True
                for o in order:
                    legal, state = model.step(state, o)
                    if not legal:
                        break
                if legal:
                    return True
    return False


def test_small_random_histories_with_unknown_operations_agree_with_brute_force() -> None:
    rng = random.Random(11)
    verdicts = {True: 0, False: 0}
    for _ in range(1000):
        history = []
        for p in range(rng.randint(2, 6)):
            call = rng.randint(0, 8)
            ret = call + rng.randint(0, 4)
            kind = rng.choice(["get", "put", "put", "cas", "cas"])
            status = rng.choice(["ok", "ok", "unknown", "unknown", "fail"])
            v, e = rng.randint(0, 2), rng.choice([None, 0, 1, 2])
            out = rng.choice([None, 0, 1, 2]) if kind == "get" else (rng.random() < 0.5 if kind == "cas" else None)
            history.append(op(p, kind, "k", call, ret, value=v, expected=e, output=out, status=status))
        expected = _brute_force(history)
        assert check(history, timeout=10).ok is expected, history
        verdicts[expected] += 1
    assert verdicts[True] > 50 and verdicts[False] > 50, verdicts


def test_overlapping_reads_are_not_tried_in_every_order() -> None:
    # Sixteen clients read the same value at once, then one reads a value
    # never written. A read the register accepts changes nothing, so it can
    # go first in any linearization: trying the reads in every order (2**16
    # configurations) only to reject the last one is wasted work.
    reads = [op(p, "get", "x", 2, 3 + p / 100, output=1) for p in range(16)]
    for verdict, last in ((True, 1), (False, 7)):
        history = [op(0, "put", "x", 0, 1, value=1), *reads, op(0, "get", "x", 4, 5, output=last)]
        result = check(history, timeout=60)
        assert result.ok is verdict
        assert result.per_key["x"].configurations < 100, result.per_key["x"].describe()


def _linearizable_by_enumeration(history: list[Operation]) -> bool:
    """Whether some order of the ok operations and of some of the unknown
    ones respects real time and the register model: every order is tried,
    with no memory of what failed and no shortcut."""
    from raftlib.testing.lincheck import RegisterModel

    model = RegisterModel()
    kept = [o for o in history if o.status != "fail"]

    def extend(state: Any, left: list[Operation]) -> bool:
        if all(o.status != "ok" for o in left):
            return True
        for i, o in enumerate(left):
            # o may go next unless an operation still left returned before it was called.
            if any(other.end < o.call for other in left):
                continue
            legal, after = model.step(state, o)
            if legal and extend(after, left[:i] + left[i + 1:]):
                return True
        return False

    return extend(model.init(None), kept)


@st.composite
def _small_histories(draw: st.DrawFn) -> list[Operation]:
    """Up to seven operations on one key of a real register, with coarse
    times (so that many overlap, and some tie): each took effect at some
    point between its call and its return, or, if its outcome is unknown,
    maybe never, and a failed one never. Then, often, one output is
    changed, which usually makes the history not linearizable."""
    drawn = []
    for p in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from(["get", "put", "put", "cas"]))
        status = draw(st.sampled_from(["ok", "ok", "ok", "unknown", "fail"]))
        call = draw(st.integers(0, 5))
        ret = call + draw(st.integers(0, 4))
        point = call + draw(st.integers(0, 4 * (ret - call))) / 4
        applied = status == "ok" or (status == "unknown" and draw(st.booleans()))
        value = None if kind == "get" else draw(st.integers(0, 1))
        expected = draw(st.sampled_from([None, 0, 1])) if kind == "cas" else None
        drawn.append((point if applied else None, p, kind, status, call, ret, value, expected))
    outputs: dict[int, Any] = {}
    state: Any = None
    for point, p, kind, _, _, _, value, expected in sorted(drawn, key=lambda d: (d[0] is None, d[0] or 0)):
        if point is None:
            continue
        if kind == "get":
            outputs[p] = state
        elif kind == "put":
            state = value
        else:
            outputs[p] = state == expected
            state = value if outputs[p] else state
    if outputs and draw(st.booleans()):
        p = draw(st.sampled_from(sorted(outputs)))
        outputs[p] = (not outputs[p]) if type(outputs[p]) is bool else draw(st.sampled_from([None, 0, 1]))
    return [
        op(p, kind, "k", call, ret, value=value, expected=expected, output=outputs.get(p) if status == "ok" else None,
           status=status)
        for _, p, kind, status, call, ret, value, expected in drawn
    ]


@settings(max_examples=400, deadline=None)
@given(_small_histories())
@example([  # a put of the value the register holds still changes it if it goes later
    op(0, "put", "k", 0, 1, value=1), op(1, "put", "k", 2, 5, value=1), op(2, "put", "k", 2, 5, value=2),
    op(3, "get", "k", 6, 7, output=1),
])
def test_the_verdict_agrees_with_trying_every_order(history: list[Operation]) -> None:
    result = check(history, timeout=30)
    assert result.ok is _linearizable_by_enumeration(history), history
    if result.violation is not None:
        assert _is_a_linearization(result.violation.prefix, result.violation.state), result.explain()


def _is_a_linearization(prefix: tuple[Operation, ...], state: Any) -> bool:
    """Whether ``prefix`` is a legal sequence of distinct operations in an
    order real time allows, that leaves the register in ``state``."""
    from raftlib.testing.lincheck import RegisterModel

    model = RegisterModel()
    now = model.init(None)
    if len(set(map(id, prefix))) != len(prefix):
        return False
    for i, o in enumerate(prefix):
        if any(later.end < o.call for later in prefix[i + 1:]):
            return False
        legal, now = model.step(now, o)
        if not legal:
            return False
    return bool(now == state)


def test_the_prefix_explaining_a_violation_is_a_real_one() -> None:
    # An unknown put of 1 could explain one read of 1, not two. The search
    # that proves it lets interchangeable unknown operations be used again;
    # the explanation came from that search, and showed the one put twice
    # in "the longest linearizable prefix".
    history = [
        op(1, "put", "x", 0, None, value=1, status="unknown"), op(2, "put", "x", 0, None, value=5, status="unknown"),
        op(3, "put", "x", 1, 2, value=2), op(3, "get", "x", 3, 4, output=1),
        op(3, "put", "x", 5, 6, value=2), op(3, "get", "x", 7, 8, output=1), op(3, "get", "x", 9, 10, output=3),
    ]
    violation = check(history).violation
    assert violation is not None
    assert _is_a_linearization(violation.prefix, violation.state), violation.explain()
    assert [o for o in violation.stuck if o in violation.prefix] == [], violation.explain()


def test_a_violation_lists_what_overlaps_it_not_every_write_of_unknown_outcome() -> None:
    # Thirty puts that timed out long before a stale read were each listed
    # as "concurrent" with it (an unknown outcome never ends), burying the
    # operations that matter; they are counted instead.
    history = [op(p, "put", "x", p, None, value=p, status="unknown") for p in range(30)]
    history += [op(31, "put", "x", 100, 101, value="new"), op(32, "get", "x", 102, 103, output="old"),
                op(33, "get", "x", 102.5, 104, output="new")]
    violation = check(history).violation
    assert violation is not None
    text = violation.explain()
    assert "p32 get('x') -> 'old'" in text and "p33 get('x') -> 'new'" in text
    assert len(text.splitlines()) < 20, text
    assert "30 operations of unknown outcome" in text, text


def _long_operations(seed: int, clients: int, ops: int, unknown: float) -> list[Operation]:
    """A real register's history where every operation lasts long enough
    to overlap about ``clients`` others; a share ``unknown`` of the writes
    end with an unknown outcome (they did take effect)."""
    rng = random.Random(seed)
    free = [0.0] * clients
    drawn = []
    for _ in range(ops):
        p = min(range(clients), key=free.__getitem__)
        call = free[p] + rng.random() / 10
        free[p] = ret = call + rng.uniform(0.5, 10)
        drawn.append((rng.uniform(call, ret), p, rng.choice(["get", "put", "cas"]), call, ret,
                      rng.randrange(5), rng.randrange(5), rng.random() < unknown))
    history = []
    value = None
    for _, p, kind, call, ret, v, e, lost in sorted(drawn):
        if kind == "get":
            history.append(op(p, "get", "k", call, ret, output=value))
            continue
        won = kind == "put" or value == e
        value = v if won else value
        history.append(op(p, kind, "k", call, None if lost else ret, value=v, expected=e if kind == "cas" else None,
                          output=None if lost or kind == "put" else won, status="unknown" if lost else "ok"))
    return sorted(history, key=lambda o: o.call)


def test_a_violation_among_writes_of_unknown_outcome_is_found_without_a_long_detour() -> None:
    # The first search, exact and quick to find a linearization when there
    # is one, went on for twice as long as the relaxed search that
    # then proved there was none.
    history = _long_operations(0, clients=10, ops=600, unknown=0.1)
    assert check(history, timeout=60).ok is True
    gets = [i for i, o in enumerate(history) if o.kind == "get"]
    i = gets[len(gets) // 2]
    history[i] = op(history[i].process, "get", "k", history[i].call, history[i].ret, output="never written")  # type: ignore[arg-type]
    result = check(history, timeout=60)
    assert result.ok is False
    assert result.per_key["k"].configurations < 80_000, result.per_key["k"].describe()


def test_a_check_cut_short_by_its_timeout_is_undecided_never_linearizable() -> None:
    # Twenty clients whose operations each overlap some twenty others, and
    # a read in the middle of a value never written: the search has far
    # more to explore than the timeout allows. Another key is easy.
    history = _long_operations(0, clients=20, ops=1000, unknown=0.0)
    gets = [i for i, o in enumerate(history) if o.kind == "get"]
    i = gets[len(gets) // 2]
    history[i] = op(history[i].process, "get", "k", history[i].call, history[i].ret, output="never written")  # type: ignore[arg-type]
    history += [op(1, "put", "easy", 0, 1, value=1), op(2, "get", "easy", 2, 3, output=1)]
    result = check(history, timeout=0.2)
    assert result.ok is None and result.verdict == "unknown" and not result
    assert result.per_key["easy"].ok is True and result.per_key["k"].ok is None
    assert "UNKNOWN" in result.explain() and "timed out" in result.explain()


def test_the_model_is_asked_about_each_operation_in_each_state_once() -> None:
    # The search meets the same (state, operation) pairs again and again,
    # in configurations that differ elsewhere; asking the model each time
    # was most of the time the search took.
    from collections import Counter

    from raftlib.testing.lincheck import RegisterModel

    asked: Counter[tuple[int, Any]] = Counter()

    class Counting(RegisterModel):
        def step(self, state: Any, o: Operation) -> tuple[bool, Any]:
            asked[id(o), state] += 1
            return super().step(state, o)

    history = _long_operations(1, clients=10, ops=300, unknown=0.0)
    assert check(history, model=Counting()).ok is True
    assert asked and max(asked.values()) == 1, asked.most_common(3)


def test_a_rejected_read_is_traced_to_where_its_value_came_from() -> None:
    # "rejected in state 2" says what the read should have seen; where the
    # value it did see came from tells a stale read from a lost or a
    # phantom write at a glance.
    stale = [op(1, "put", "x", 0, 1, value=1), op(1, "put", "x", 2, 3, value=2), op(2, "get", "x", 4, 5, output=1)]
    assert "1 was last written by p1 put('x', 1) [0, 1], operation 1 of the prefix" in check(stale).explain()
    phantom = [op(1, "put", "x", 0, 1, value=1), op(2, "get", "x", 2, 3, output=7)]
    assert "no operation wrote 7" in check(phantom).explain()
    failed = [op(1, "put", "x", 0, 1, value=7, status="fail"), op(2, "get", "x", 2, 3, output=7)]
    assert "7 was written only by p1 put('x', 7) [0, 1] failed, which did not take effect" in check(failed).explain()
