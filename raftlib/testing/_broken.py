"""Deliberately broken ``raftlib serve`` processes, for the fault test's self-checks.

    python -m raftlib.testing._broken leader-reads serve --name n1 ...

applies the named defect to this process's raftlib, then runs the ``raftlib``
command line with the remaining arguments. The fault test starts its nodes
this way for ``--broken`` defects that live in the served processes rather
than in its clients; nothing else should.

* ``leader-reads``: a leader answers linearizable reads at its commit index
  without the round of heartbeats that confirms it still leads (the rest of
  ReadIndex is kept: it waits for an entry of its term to commit, and for
  the applier). A leader that others have replaced answers from its old
  state until CheckQuorum makes it step down.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["DEFECTS", "apply", "main"]


def _leader_reads() -> None:
    import asyncio

    from .. import runtime
    from ..errors import Timeout

    read_index = runtime.Peer._read_local

    async def read_local(self: runtime.Peer, data: bytes, consistency: str, timeout: float | None) -> Any:
        self._check_running()
        self._check_leader()
        core = self._core
        if core.log.term_or_none(core.log.committed) != core.term:
            return await read_index(self, data, consistency, timeout)
        try:
            async with asyncio.timeout(timeout):
                await self._wait_applied(core.log.committed)  # no round of heartbeats first
        except TimeoutError:
            raise Timeout(f"the read did not finish within {timeout} s") from None
        return await self._answer(data)

    runtime.Peer._read_local = read_local  # type: ignore[method-assign]


DEFECTS = {"leader-reads": _leader_reads}
"""The defects a served process can be started with, by name."""


def apply(defect: str) -> None:
    """Break this process's raftlib as ``defect`` (a key of :data:`DEFECTS`) says."""
    if defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; known: {', '.join(DEFECTS)}")
    DEFECTS[defect]()


def main(argv: list[str]) -> None:
    """``argv``: a defect's name, then the arguments of the ``raftlib`` command."""
    if not argv:
        sys.exit(f"usage: python -m raftlib.testing._broken {{{','.join(DEFECTS)}}} RAFTLIB-ARGS...")
    try:
        apply(argv[0])
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    from ..cli import main as cli

    cli(args=argv[1:], prog_name="raftlib")


if __name__ == "__main__":
    main(sys.argv[1:])
