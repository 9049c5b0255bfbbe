"""Membership changes, one voter at a time (thesis §4.1 with the 2015 errata).

A new configuration takes effect on each peer as soon as its entry is in that
peer's log, committed or not. Changing the voting set by at most one server
per entry keeps every majority of the old set overlapping every majority of
the new one, so two leaders can never be elected in the same term. Two rules
make that hold across leader changes:

1. at most one configuration entry is uncommitted at any time, and
2. a leader appends a configuration entry only after it has committed an
   entry of its own term (the errata fix: without it, a change proposed by a
   new leader can overlap a different, uncommitted change of a deposed one
   and lose committed entries).

Learners change nothing about quorums, so any number of them may be added,
removed or given new addresses in one step. A larger change (a whole new
voter set) is a sequence of such steps; :func:`plan_steps` produces one.
"""

from __future__ import annotations

from typing import Mapping

from ..types import Membership, NodeId

__all__ = ["check_change", "plan_steps", "with_member", "without_member"]


def check_change(old: Membership, new: Membership) -> None:
    """Raise ``ValueError`` (saying why) unless ``old`` -> ``new`` is one safe step."""
    both = set(new.voters) & set(new.learners)
    if both:
        raise ValueError(f"{sorted(both)} cannot be both a voter and a learner")
    if not new.voters:
        raise ValueError("a configuration needs at least one voter")
    changed = set(old.voters) ^ set(new.voters)
    if len(changed) > 1:
        raise ValueError(
            f"one membership change may add or remove at most one voter; {sorted(changed)} differ "
            f"(change them one at a time)"
        )


def with_member(old: Membership, name: NodeId, address: str, voter: bool) -> Membership:
    """``old`` with ``name`` at ``address`` as a voter or a learner."""
    voters = {n: a for n, a in old.voters.items() if n != name}
    learners = {n: a for n, a in old.learners.items() if n != name}
    (voters if voter else learners)[name] = address
    return old.with_members(voters, learners)


def without_member(old: Membership, name: NodeId) -> Membership:
    """``old`` without ``name``."""
    return old.with_members(
        {n: a for n, a in old.voters.items() if n != name},
        {n: a for n, a in old.learners.items() if n != name},
    )


def plan_steps(old: Membership, target: Mapping[NodeId, str], last: NodeId | None = None) -> list[Membership]:
    """Safe single steps from ``old`` to a configuration whose voters are ``target``.

    The first step adds every new member as a learner (and updates changed
    addresses); then each new member is promoted and, in between, one old
    voter is removed, so the cluster never shrinks below its size before
    growing. ``last`` (usually the leader) is removed after every other old
    voter. Learners of ``old`` that are not in ``target`` are dropped at the
    end. Returns an empty list if ``old`` already matches.
    """
    steps: list[Membership] = []
    current = old

    def push(m: Membership) -> None:
        nonlocal current
        if m != current:
            check_change(current, m)
            steps.append(m)
            current = m

    learners = dict(current.learners)
    voters = dict(current.voters)
    for name, address in target.items():
        if name in voters:
            voters[name] = address
        else:
            learners[name] = address
    push(old.with_members(voters, learners))

    to_add = [n for n in target if n not in current.voters]
    to_remove = sorted((n for n in current.voters if n not in target), key=lambda n: (n == last, n))
    while to_add or to_remove:
        if to_add:
            name = to_add.pop(0)
            push(with_member(current, name, target[name], voter=True))
        if to_remove and (not to_add or len(current.voters) > len(target)):
            push(without_member(current, to_remove.pop(0)))
    for name in [n for n in current.learners if n not in target]:
        push(without_member(current, name))
    return steps
