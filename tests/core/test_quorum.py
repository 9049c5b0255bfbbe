"""raftlib.core.quorum against naive reference implementations."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given, settings
from hypothesis import strategies as st

from raftlib.core import quorum

NAMES = [f"n{i}" for i in range(9)]

voters_st = st.lists(st.sampled_from(NAMES), min_size=1, max_size=9, unique=True)


def naive_committed(voters: list[str], match: dict[str, int]) -> int:
    """The (n//2+1)-th largest match index: sorted(acks)[-(n//2+1)]."""
    acks = sorted(match.get(v, 0) for v in voters)
    return acks[-(len(voters) // 2 + 1)]


def brute_committed(voters: list[str], match: dict[str, int]) -> int:
    """The largest index i such that some majority all have match >= i."""
    q = len(voters) // 2 + 1
    best = 0
    for group in combinations(voters, q):
        best = max(best, min(match.get(v, 0) for v in group))
    return best


def brute_vote(voters: list[str], votes: dict[str, bool]) -> bool | None:
    """Try every way the missing votes could still go."""
    pending = [v for v in voters if v not in votes]
    q = len(voters) // 2 + 1
    outcomes = set()
    for k in range(len(pending) + 1):
        yes = sum(1 for v in voters if votes.get(v) is True) + k
        outcomes.add(yes >= q)
    if outcomes == {True}:
        return True
    if outcomes == {False}:
        return False
    return None


@st.composite
def voters_and_match(draw: st.DrawFn) -> tuple[list[str], dict[str, int]]:
    voters = draw(voters_st)
    # Some voters may be missing from ``match``; non-voters may be present.
    keys = draw(st.lists(st.sampled_from(NAMES + ["learner", "x"]), unique=True))
    match = {k: draw(st.integers(min_value=0, max_value=50)) for k in keys}
    return voters, match


@st.composite
def voters_and_votes(draw: st.DrawFn) -> tuple[list[str], dict[str, bool]]:
    voters = draw(voters_st)
    keys = draw(st.lists(st.sampled_from(NAMES + ["learner"]), unique=True))
    votes = {k: draw(st.booleans()) for k in keys}
    return voters, votes


@settings(max_examples=300, deadline=None)
@given(voters_and_match())
def test_committed_index_matches_naive(case: tuple[list[str], dict[str, int]]) -> None:
    """§5.3: the commit point is the highest index a majority of voters has."""
    voters, match = case
    got = quorum.committed_index(voters, match)
    assert got == naive_committed(voters, match)
    assert got == brute_committed(voters, match)


@settings(max_examples=300, deadline=None)
@given(voters_and_votes())
def test_vote_result_matches_brute_force(case: tuple[list[str], dict[str, bool]]) -> None:
    """§5.2: won with a majority of grants, lost once a majority can no longer
    be reached, undecided otherwise; votes of non-voters do not count."""
    voters, votes = case
    assert quorum.vote_result(voters, votes) == brute_vote(voters, votes)


@settings(max_examples=300, deadline=None)
@given(voters_st, st.lists(st.sampled_from(NAMES + ["learner"]), unique=True))
def test_has_quorum_matches_counting(voters: list[str], present: list[str]) -> None:
    members = [v for v in voters if v in present]
    assert quorum.has_quorum(voters, present) == (2 * len(members) > len(voters))


def test_committed_index_edge_cases() -> None:
    assert quorum.committed_index([], {"a": 5}) == 0
    assert quorum.committed_index(["a"], {"a": 7}) == 7
    assert quorum.committed_index(["a", "b"], {"a": 7, "b": 3}) == 3  # both needed
    assert quorum.committed_index(["a", "b", "c"], {"a": 7, "b": 3}) == 3
    assert quorum.committed_index(["a", "b", "c", "d"], {"a": 9, "b": 8, "c": 1, "d": 0}) == 1
    assert quorum.committed_index(["a", "b", "c"], {"a": 9, "learner": 9}) == 0


def test_vote_result_edge_cases() -> None:
    assert quorum.vote_result(["a"], {"a": True}) is True
    assert quorum.vote_result(["a", "b"], {"a": True}) is None
    assert quorum.vote_result(["a", "b"], {"a": True, "b": False}) is False
    assert quorum.vote_result(["a", "b", "c", "d"], {"a": True, "b": True, "c": False, "d": False}) is False
    assert quorum.vote_result(["a", "b", "c"], {"a": True, "x": True, "y": True}) is None
