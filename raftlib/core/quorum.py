"""Pure quorum arithmetic: which index a majority holds, who won a vote."""

from __future__ import annotations

from typing import Collection, Mapping

from ..types import NodeId


def committed_index(voters: Collection[NodeId], match: Mapping[NodeId, int]) -> int:
    """Highest index that a majority of ``voters`` has matched (0 if none).

    ``match`` maps voters to their match index; missing voters count as 0.
    """
    if not voters:
        return 0
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[len(acked) // 2]


def vote_result(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> bool | None:
    """True if a majority granted, False if a majority can no longer grant,
    ``None`` while undecided."""
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = len(voters) // 2 + 1
    if granted >= need:
        return True
    if len(voters) - rejected < need:
        return False
    return None


def has_quorum(voters: Collection[NodeId], present: Collection[NodeId]) -> bool:
    """Do the ``present`` voters form a majority of ``voters``?"""
    return sum(1 for v in voters if v in present) >= len(voters) // 2 + 1
