"""A peer in its own process, for kill -9 tests.

Usage: python worker.py NAME ADDRESS DATA_DIR MEMBERS_JSON ACKED_FILE

It runs a KVStore peer on LMDB. Whenever it leads, it writes unique keys
one after another and appends each acknowledged key to ACKED_FILE (flushed
and fsynced), so that a test can check that no acknowledged write is lost
whatever is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import raftlib  # noqa: E402
from clusterkit import FAST, KVStore  # noqa: E402


async def main(name: str, address: str, data_dir: str, members: dict[str, str], acked_path: str) -> None:
    peer = await raftlib.start_peer(KVStore, name=name, address=address, data_dir=data_dir, config=FAST)
    await peer.set_configuration(members)
    n = 0
    with open(acked_path, "a") as acked:
        while True:
            if not peer.is_leader:
                await asyncio.sleep(0.01)
                continue
            key = f"{name}-{os.getpid()}-{n}"
            n += 1
            try:
                await peer.write(["set", key, n], timeout=2.0)
            except raftlib.RaftError:
                continue
            acked.write(key + "\n")
            acked.flush()
            os.fsync(acked.fileno())


if __name__ == "__main__":
    name, address, data_dir, members_json, acked_path = sys.argv[1:6]
    asyncio.run(main(name, address, data_dir, json.loads(members_json), acked_path))
