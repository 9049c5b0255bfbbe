"""Time from stopping a leader to a new leader, on loopback with LMDB.

    python -m benchmarks.failover [--trials 10]

Uses the default Config (election timeout drawn from 0.4-0.8 s). Two kinds
of stop: ``stop(transfer_leadership=False)`` behaves like a crash (the
others wait out an election timeout), while a plain ``stop()`` first hands
leadership to the most up-to-date follower. Prints the median and the worst
time over the trials. The goal: a new leader within 2 s of a leader stop.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import raftlib
from raftlib.cli import DemoKV


async def one_trial(tmp: str, transfer: bool) -> float:
    peers = {}
    for name in ("s1", "s2", "s3"):
        peers[name] = await raftlib.start_peer(DemoKV, name=name, address="127.0.0.1:0", data_dir=f"{tmp}/{name}")
    try:
        await peers["s1"].set_configuration({n: p.address for n, p in peers.items()})
        old = await peers["s1"].wait_for_leader(timeout=10)
        await peers[old].write(["set", "k", 1])
        t0 = time.perf_counter()
        await peers[old].stop(transfer_leadership=transfer)
        while not any(p.is_leader for n, p in peers.items() if n != old):
            await asyncio.sleep(0.001)
        return time.perf_counter() - t0
    finally:
        for p in peers.values():
            await p.stop()


async def main(trials: int) -> None:
    for transfer, label in ((False, "stop without transfer (as a crash)"), (True, "stop() with leadership transfer")):
        times = []
        for i in range(trials):
            with tempfile.TemporaryDirectory() as tmp:
                times.append(await one_trial(tmp, transfer))
            print(f"{label}, trial {i + 1}: new leader after {times[-1] * 1000:.0f} ms")
        print(f"{label}: over {trials} trials median {statistics.median(times) * 1000:.0f} ms, "
              f"worst {max(times) * 1000:.0f} ms (goal: under 2000 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    asyncio.run(main(parser.parse_args().trials))
