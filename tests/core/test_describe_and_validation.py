"""Stable one-line descriptions, and the semantic checks on incoming messages."""

from __future__ import annotations

import pytest

from raftlib.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from raftlib.core.raft import _malformed
from raftlib.core.ready import ReadState, Ready, SoftState
from raftlib.types import Entry, EntryKind, HardState, Membership, SnapshotMeta

from .network import Network


def test_message_descriptions_are_stable() -> None:
    ms = Membership({"a": "x"}).encode()
    assert [m.describe() for m in [
        RequestVote(3, "a", "b", 7, 2),
        RequestVote(4, "a", "b", 7, 2, pre_vote=True),
        RequestVoteResponse(3, "b", "a", True),
        RequestVoteResponse(4, "b", "a", False, pre_vote=True),
        AppendEntries(3, "a", "b", 6, 2, (Entry(3, 7), Entry(3, 8)), 5, read_ctx=9),
        AppendEntriesResponse(3, "b", "a", True, 8),
        AppendEntriesResponse(3, "b", "a", False, reject_index=6, hint_index=4, hint_term=2, read_ctx=9),
        InstallSnapshot(3, "a", "b", 40, 2, ms),
        TimeoutNow(3, "a", "b"),
    ]] == [
        "a->b RequestVote term=3 last=2/7",
        "a->b PreVote term=4 last=2/7",
        "b->a RequestVoteResponse term=3 granted=True",
        "b->a PreVoteResponse term=4 granted=False",
        "a->b AppendEntries term=3 prev=2/6 commit=5 entries=[3/7,3/8] ctx=9",
        "b->a AppendEntriesResponse term=3 ok match=8",
        "b->a AppendEntriesResponse term=3 reject prev=6 hint=2/4 ctx=9",
        "a->b InstallSnapshot term=3 snapshot=2/40",
        "a->b TimeoutNow term=3",
    ]


def test_ready_description_lists_everything_in_contract_order() -> None:
    rd = Ready(
        hard_state=HardState(3, "a", 5),
        entries=[Entry(3, 6, EntryKind.NORMAL, b"x")],
        messages=[TimeoutNow(3, "a", "b")],
        messages_after_persist=[RequestVoteResponse(3, "a", "c", True)],
        committed_entries=[Entry(3, 5, EntryKind.NOOP)],
        read_states=[ReadState(5, (1, 2))],
        soft_state=SoftState("leader", "a", 3),
        snapshot=SnapshotMeta(4, 2, Membership({"a": "x"})),
    )
    assert not rd.is_empty() and Ready().is_empty()
    assert rd.describe().splitlines() == [
        "SoftState role=leader leader=a term=3",
        "HardState term=3 vote=a commit=5",
        "InstallSnapshot 2/4",
        "Entries: 3/6/NORMAL",
        "Send: a->b TimeoutNow term=3",
        "SendAfterPersist: a->c RequestVoteResponse term=3 granted=True",
        "Apply: 3/5/NOOP",
        "ReadState index=5 ids=[1, 2]",
    ]


@pytest.mark.parametrize(
    "msg, problem",
    [
        (AppendEntries(3, "a", "b", 5, 4, (), 0), "prev_log_term is ahead"),
        (AppendEntries(3, "a", "b", 5, 2, (Entry(3, 7),), 0), "entry index 7 where 6"),
        (AppendEntries(3, "a", "b", 5, 2, (Entry(1, 6),), 0), "entry 6 has term 1"),
        (AppendEntries(3, "a", "b", 5, 2, (Entry(4, 6),), 0), "entry 6 has term 4"),
        (RequestVote(3, "a", "b", 5, 4), "last_log_term is ahead"),
        (InstallSnapshot(3, "a", "b", 5, 4, Membership().encode()), "snapshot_term is ahead"),
        (InstallSnapshot(3, "a", "b", 5, 2, b"\xc1"), "not an encoded Membership"),
    ],
)
def test_malformed_messages_are_named(msg: object, problem: str) -> None:
    found = _malformed(msg)  # type: ignore[arg-type]
    assert found is not None and problem in found


def test_well_formed_messages_pass() -> None:
    assert _malformed(AppendEntries(3, "a", "b", 5, 2, (Entry(2, 6), Entry(3, 7)), 0)) is None
    assert _malformed(TimeoutNow(3, "a", "b")) is None


def test_malformed_message_changes_nothing() -> None:
    net = Network(["a", "b", "c"])
    net.elect("a")
    b = net.nodes["b"]
    before = (b.term, b.log.last_index(), b.commit_index)
    b.step(AppendEntries(b.term, "a", "b", 1, 1, (Entry(b.term, 9),), 9))
    assert not b.has_ready()
    assert (b.term, b.log.last_index(), b.commit_index) == before


def test_bootstrap_refuses_a_used_log_or_no_voters() -> None:
    net = Network(["a", "b", "c"])
    with pytest.raises(ValueError, match="empty log"):
        net.nodes["a"].bootstrap(Membership({"a": "x"}))
    fresh = Network(["z"], bootstrap=False)
    with pytest.raises(ValueError, match="at least one voter"):
        fresh.nodes["z"].bootstrap(Membership())


def test_message_for_another_peer_is_ignored() -> None:
    net = Network(["a", "b", "c"])
    b = net.nodes["b"]
    b.step(TimeoutNow(5, "a", "c"))
    assert b.term == 1 and not b.has_ready()


def test_append_conflicting_with_a_committed_entry_is_ignored() -> None:
    """A sender whose log differs from ours at our commit index cannot be a
    legitimate leader (Leader Completeness): nothing of its message is taken,
    even when its term is newer than the one we have persisted."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    net.propose("a", b"x")
    net.stabilize()
    b = net.nodes["b"]
    committed = b.commit_index
    term_at_commit = b.log.term(committed)
    stale = AppendEntries(
        b.term + 1, "c", "b", committed - 1, b.log.term(committed - 1),
        (Entry(term_at_commit + 1, committed), Entry(term_at_commit + 1, committed + 1)), committed + 1,
    )
    b.step(stale)
    assert b.log.last_index() == committed
    assert b.log.term(committed) == term_at_commit
    assert b.commit_index == committed
    assert not any(isinstance(m, AppendEntriesResponse) and m.success for m in b.ready().messages_after_persist)
