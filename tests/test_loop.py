"""raftlib.run: the event loop it picks, and a peer running on it."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

import raftlib
from raftlib.loop import loop_factory, loop_name
from storage_adapters import MemoryStorage

from clusterkit import FAST, KVStore

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


async def which() -> str:
    return loop_name()


def test_the_standard_loop_when_asked_or_when_the_environment_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    assert raftlib.run(which(), use_uvloop=False) == "asyncio"
    monkeypatch.setenv("RAFTLIB_UVLOOP", "0")
    assert loop_factory() is None
    assert raftlib.run(which()) == "asyncio"


def test_uvloop_when_installed_and_a_clear_error_when_required_but_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAFTLIB_UVLOOP", raising=False)
    if HAVE_UVLOOP:
        assert raftlib.run(which()) == "uvloop"
        assert raftlib.run(which(), use_uvloop=True) == "uvloop"
    else:
        assert raftlib.run(which()) == "asyncio"
        with pytest.raises(RuntimeError, match=r"pip install 'raftlib\[fast\]'"):
            raftlib.run(which(), use_uvloop=True)


def test_a_peer_writes_and_reads_on_the_loop_run_picks() -> None:
    async def main() -> tuple[str, object, object]:
        peer = await raftlib.start_peer(KVStore, name="a", address="127.0.0.1:0", storage=MemoryStorage(), config=FAST)
        try:
            await peer.set_configuration({"a": peer.address})
            written = await peer.write(["set", "k", 1])
            fut = peer.submit(["set", "k", 2])
            assert isinstance(fut, asyncio.Future)
            return loop_name(), (written, await fut), await peer.read(["get", "k"])
        finally:
            await peer.stop()

    name, written, read = raftlib.run(main())
    assert name == ("uvloop" if HAVE_UVLOOP else "asyncio")
    assert written == (["ok", "k", 1], ["ok", "k", 2])
    assert read == ["ok", 2]
