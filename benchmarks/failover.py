"""Time from stopping a leader to a new leader, on loopback with LMDB.

    python -m benchmarks.failover [--trials 10]

Uses the default Config (election timeout drawn from 0.5-1.0 s). Prints the
median and the worst failover time over the trials. The foundation's goal:
a new leader within 2 s of a leader stop.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import raftlib
from raftlib.cli import DemoKV


async def one_trial(tmp: str) -> float:
    peers = {}
    for name in ("s1", "s2", "s3"):
        peers[name] = await raftlib.start_peer(DemoKV, name=name, address="127.0.0.1:0", data_dir=f"{tmp}/{name}")
    try:
        await peers["s1"].set_configuration({n: p.address for n, p in peers.items()})
        old = await peers["s1"].wait_for_leader(timeout=10)
        await peers[old].write(["set", "k", 1])
        t0 = time.perf_counter()
        await peers[old].stop()
        while not any(p.is_leader for n, p in peers.items() if n != old):
            await asyncio.sleep(0.001)
        return time.perf_counter() - t0
    finally:
        for p in peers.values():
            await p.stop()


async def main(trials: int) -> None:
    times = []
    for i in range(trials):
        with tempfile.TemporaryDirectory() as tmp:
            times.append(await one_trial(tmp))
        print(f"trial {i + 1}: new leader after {times[-1] * 1000:.0f} ms")
    print(f"failover over {trials} trials: median {statistics.median(times) * 1000:.0f} ms, "
          f"worst {max(times) * 1000:.0f} ms (goal: under 2000 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    asyncio.run(main(parser.parse_args().trials))
