"""Write pause seen by clients while the leader stops, on loopback with LMDB.

    python -m benchmarks.write_pause [--trials 5] [--clients 8]

Three peers in one process, default Config (election timeout drawn from
0.4-0.8 s). C client loops each write ``["set", "k<i>", n]`` to whichever
live peer leads, retrying after 1 ms when a write is refused or fails, and
note the time of every acknowledged write. After about 1 s of steady writing
the leader stops, either with ``stop(transfer_leadership=False)`` (as a
crash: the others wait out an election timeout) or with a plain ``stop()``
(which first hands leadership to the most up-to-date follower). Writing goes
on for 2 s after a new leader is elected. The pause of a trial is the longest
gap between consecutive acknowledgements (all clients merged) from 0.5 s
before the stop to the end. Prints every trial's pause and when it began,
then the median and the worst, and the write rate over the 0.5 s before the
stop.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import raftlib
from raftlib.cli import DemoKV
from raftlib.errors import LeadershipLost, NotLeader, PeerStopped, ProposalDropped, WriteTimeout

RETRY = (NotLeader, ProposalDropped, LeadershipLost, PeerStopped, WriteTimeout)
WINDOW = 0.5  # seconds before the stop that count towards the pause and the steady rate


async def client(i: int, peers: dict, live: set, acks: list, done: asyncio.Event) -> None:
    n = 0
    while not done.is_set():
        leader = next((p for name, p in peers.items() if name in live and p.is_leader), None)
        if leader is None:
            await asyncio.sleep(0.001)
            continue
        n += 1
        try:
            await leader.write(["set", f"k{i}", n], timeout=2)
        except RETRY:
            await asyncio.sleep(0.001)
            continue
        acks.append(time.perf_counter())


async def one_trial(tmp: str, transfer: bool, clients: int) -> tuple[float, float, float]:
    peers = {}
    tasks: list[asyncio.Task] = []
    try:
        for name in ("s1", "s2", "s3"):
            peers[name] = await raftlib.start_peer(DemoKV, name=name, address="127.0.0.1:0", data_dir=f"{tmp}/{name}")
        await peers["s1"].set_configuration({n: p.address for n, p in peers.items()})
        await peers["s1"].wait_for_leader(timeout=10)
        live = set(peers)
        acks: list[float] = []
        done = asyncio.Event()
        tasks = [asyncio.create_task(client(i, peers, live, acks, done)) for i in range(clients)]
        await asyncio.sleep(1.0)
        old = next(n for n, p in peers.items() if p.is_leader)
        live.discard(old)
        t_stop = time.perf_counter()
        await peers[old].stop(transfer_leadership=transfer)
        while not any(peers[n].is_leader for n in live):
            await asyncio.sleep(0.001)
        await asyncio.sleep(2.0)
        t_end = time.perf_counter()
        done.set()  # let each client finish its write in flight rather than cancel it
        await asyncio.gather(*tasks)
        window = sorted(t for t in acks if t_stop - WINDOW <= t <= t_end)
        pause, start = max((b - a, a) for a, b in zip(window, window[1:]))
        rate = sum(1 for t in acks if t_stop - WINDOW <= t < t_stop) / WINDOW
        return pause, start - t_stop, rate
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in peers.values():
            await p.stop(transfer_leadership=False)


async def main(trials: int, clients: int) -> None:
    modes = ((False, "stop(transfer_leadership=False) (as a crash)"), (True, "stop() with leadership transfer"))
    results = {}
    for transfer, label in modes:
        pauses, rates = [], []
        for i in range(trials):
            with tempfile.TemporaryDirectory() as tmp:
                pause, at, rate = await one_trial(tmp, transfer, clients)
            pauses.append(pause)
            rates.append(rate)
            print(f"{label}, trial {i + 1}: longest write pause {pause * 1000:.0f} ms, "
                  f"starting {round(at * 1000):+d} ms from the stop ({rate:,.0f} writes/s before the stop)")
        results[label] = (pauses, rates)
    print(f"\n{clients} clients, {trials} trials; pause = longest gap between acknowledged writes\n")
    print("| how the leader stops | pause per trial (ms) | median | worst | writes/s before the stop (median) |")
    print("|---|---|---:|---:|---:|")
    for label, (pauses, rates) in results.items():
        per_trial = ", ".join(f"{p * 1000:.0f}" for p in pauses)
        print(f"| {label} | {per_trial} | {statistics.median(pauses) * 1000:.0f} ms "
              f"| {max(pauses) * 1000:.0f} ms | {statistics.median(rates):,.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.trials, args.clients))
