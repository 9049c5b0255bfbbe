"""Command line of the simulator.

    python -m raftlib.sim --seed 1234              # replay one seed, print a summary
    python -m raftlib.sim --seeds 1000 --peers 5   # seeds 0..999 (or --start N)
    python -m raftlib.sim --seeds 200 --set drop_rate=0.2 --set ticks=1000
    python -m raftlib.sim --seeds 1000 --set snapshots=True   # snapshots in every seed
    python -m raftlib.sim --seeds 1000 --pipeline on          # pipelined persistence in every seed

Exit status: 0 when every seed passed, 1 on an invariant violation, 2 on a
usage error, 130 when interrupted (Ctrl-C) before any seed failed.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from .config import SimConfig
from .invariants import InvariantViolation
from .simulator import ManyResult, SimResult, Simulator, run_many


def _parse_overrides(items: Sequence[str]) -> dict[str, object]:
    names = {f.name for f in dataclasses.fields(SimConfig)}
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in names:
            raise ValueError(f"--set expects NAME=VALUE with NAME one of: {', '.join(sorted(names))}")
        try:
            out[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"--set {key}: cannot parse {raw!r} (use Python literals: 0.2, 300, True, None)") from None
    return out


class ProgressBar:
    """A one-line ``\\r`` progress bar on a terminal stream."""

    def __init__(self, total: int, stream: TextIO, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.width = width
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last < 0.1 and self.done < self.total:
            return
        self._last = now
        filled = int(self.width * self.done / self.total)
        rate = self.done / (now - self.start) if now > self.start else 0.0
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} seeds  {rate:.1f}/s ")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\r" + " " * (self.width + 40) + "\r")
        self.stream.flush()


def _replay(seed: int, peers: int, config: SimConfig, out: TextIO) -> int:
    sim = Simulator(seed, peers, dataclasses.replace(config, hash_trace=True))
    start = time.perf_counter()
    try:
        result: SimResult = sim.run()
    except InvariantViolation as v:
        out.write(v.format() + "\n")
        out.write("\nstate of the peers:\n" + sim.status() + "\n")
        return 1
    except KeyboardInterrupt:
        out.write(f"seed {seed}: interrupted at t={sim.now:.3f} after {sim.step_count} steps; no invariant was violated "
                  f"until then\n\nstate of the peers:\n{sim.status()}\n")
        return 130
    elapsed = time.perf_counter() - start
    out.write(result.summary() + "\n")
    out.write(f"  wall time {elapsed:.3f} s\nOK: no invariant violated\n")
    return 0


def _many(start: int, count: int, peers: int, config: SimConfig, progress: bool, out: TextIO) -> int:
    bar = ProgressBar(count, sys.stderr) if progress else None

    def on_result(seed: int, result: SimResult | None) -> None:
        if bar is not None:
            bar.update()

    summary = ManyResult(peers=peers)
    interrupted = False
    try:
        run_many(range(start, start + count), peers, config, on_result=on_result, into=summary)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    if summary.violation is not None:
        out.write(summary.violation.format() + "\n\n")
    out.write(summary.report() + "\n")
    if interrupted:
        done = summary.seeds_run
        out.write(f"interrupted after {done} of {count} seeds (--start {start + done} --seeds {count - done} "
                  f"runs the rest)\n")
    if summary.violation is not None:
        return 1  # a violation found matters most, interrupted or not
    return 130 if interrupted else 0  # 130 = 128 + SIGINT, as a shell reports a program Ctrl-C ended


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m raftlib.sim",
        description="Deterministic simulation of raftlib's Raft core under faults.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--seed", type=int, help="replay one seed and print a summary (and the trace tail on failure)")
    what.add_argument("--seeds", type=int, metavar="N", help="run N seeds, from --start on")
    parser.add_argument("--start", type=int, default=0, help="first seed for --seeds (default 0)")
    parser.add_argument("--peers", type=int, default=3, help="cluster size (default 3)")
    parser.add_argument("--ticks", type=int, help=f"length of the fault phase in ticks (default {SimConfig().ticks})")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override any SimConfig field, e.g. --set drop_rate=0.2 (repeatable)")
    parser.add_argument("--pipeline", choices=("on", "off", "random"),
                        help="pipelined persistence in every seed, in none, or drawn per seed (the default); "
                             "same as --set pipeline=True/False/None")
    parser.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is not a terminal")
    args = parser.parse_args(argv)
    if args.peers < 1:
        parser.error("--peers must be at least 1")
    if (args.seed if args.seed is not None else args.start) < 0:
        parser.error("a seed must be >= 0 (a negative seed runs the same as its absolute value)")
    try:
        overrides = _parse_overrides(args.set)
        if args.ticks is not None:
            overrides["ticks"] = args.ticks
        if args.pipeline is not None:
            overrides["pipeline"] = {"on": True, "off": False, "random": None}[args.pipeline]
        config = SimConfig(**overrides)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if args.seed is not None:
        return _replay(args.seed, args.peers, config, sys.stdout)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    progress = args.progress or sys.stderr.isatty()
    return _many(args.start, args.seeds, args.peers, config, progress, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
