"""Throughput of the deterministic simulator.

    python -m benchmarks.sim_throughput [--seeds 200] [--peers 3 5 7] [--ticks 300] [--snapshots drawn|on|off]

Runs ``--seeds`` seeds with every fault on (the ``SimConfig`` defaults) for
each cluster size and prints seeds per second, simulated ticks per second,
simulator steps per second and how many snapshots were taken, sent and
installed (``--snapshots``: drawn per seed as by default, or on or off in
every seed). Any invariant violation is reported and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import sys

from raftlib.sim import SimConfig, run_many


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200, help="seeds per cluster size (default 200)")
    parser.add_argument("--peers", type=int, nargs="+", default=[3, 5, 7], help="cluster sizes (default 3 5 7)")
    parser.add_argument("--ticks", type=int, default=SimConfig().ticks, help="fault-phase length per seed")
    parser.add_argument("--snapshots", choices=["drawn", "on", "off"], default="drawn",
                        help="snapshots in each seed: drawn per seed (default), always or never")
    args = parser.parse_args(argv)
    snapshots = {"drawn": None, "on": True, "off": False}[args.snapshots]
    config = SimConfig(ticks=args.ticks, snapshots=snapshots)
    failed = False
    print(f"{'peers':>5} {'seeds':>6} {'seconds':>8} {'seeds/s':>8} {'ticks/s':>9} {'steps/s':>9} "
          f"{'snap seeds':>10} {'taken':>7} {'sent':>6} {'installed':>9}  verdict")
    for peers in args.peers:
        result = run_many(range(args.seeds), peers, config)
        steps_per_s = result.steps / result.elapsed if result.elapsed > 0 else 0.0
        st = result.snapshot_stats
        print(
            f"{peers:>5} {result.seeds_run:>6} {result.elapsed:>8.2f} {result.seeds_per_second:>8.1f} "
            f"{result.ticks_per_second:>9,.0f} {steps_per_s:>9,.0f} {result.seeds_with_snapshots:>10} "
            f"{st['taken']:>7} {st['sent']:>6} {st['installed']:>9}  {result.verdict()}"
        )
        if result.violation is not None:
            print(result.violation.format())
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
