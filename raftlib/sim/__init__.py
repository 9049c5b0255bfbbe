"""raftlib.sim: a deterministic simulator for the Raft core.

It runs N :class:`~raftlib.core.raft.Raft` cores in one process on a virtual
clock, with a lossy, reordering, partitionable network, disks that sync late
and peers that crash, and checks the safety properties of Raft after every
step and liveness once the faults stop. One integer seed determines the
whole run, so any failure replays exactly::

    python -m raftlib.sim --seed 1234
    python -m raftlib.sim --seeds 1000 --peers 5

See docs/simulation.md.
"""

from .config import SimConfig
from .invariants import InvariantViolation
from .simulator import AckedWrite, ManyResult, SimResult, Simulator, run_many, run_seed

__all__ = [
    "AckedWrite",
    "InvariantViolation",
    "ManyResult",
    "SimConfig",
    "SimResult",
    "Simulator",
    "run_many",
    "run_seed",
]
