"""raftlib.io_thread.IOThread: one thread, work in order, outcomes handed back."""

from __future__ import annotations

import asyncio
import threading

import pytest

from raftlib.io_thread import IOThread


async def test_calls_run_in_order_on_one_thread_and_report_on_the_loop() -> None:
    io = IOThread("test-io")
    loop = asyncio.get_running_loop()
    ran: list[tuple[int, str]] = []
    reported: list[tuple[int, BaseException | None, bool]] = []
    finished = loop.create_future()

    def work(i: int) -> None:
        ran.append((i, threading.current_thread().name))

    def done(i: int, exc: BaseException | None) -> None:
        reported.append((i, exc, threading.current_thread() is threading.main_thread()))
        if i == 49:
            finished.set_result(None)

    try:
        for i in range(50):
            io.call(loop, work, (i,), lambda exc, i=i: done(i, exc))
        await asyncio.wait_for(finished, 10)
    finally:
        io.shutdown(wait=True)
    assert [i for i, _ in ran] == list(range(50))
    assert {name for _, name in ran} == {"test-io"}
    assert reported == [(i, None, True) for i in range(50)]


async def test_an_exception_reaches_the_callback_and_later_work_still_runs() -> None:
    io = IOThread("test-io")
    loop = asyncio.get_running_loop()
    outcomes: asyncio.Queue[BaseException | None] = asyncio.Queue()

    def fail() -> None:
        raise OSError(5, "disk on fire")

    try:
        io.call(loop, fail, (), outcomes.put_nowait)
        io.call(loop, lambda: None, (), outcomes.put_nowait)
        first = await asyncio.wait_for(outcomes.get(), 10)
        second = await asyncio.wait_for(outcomes.get(), 10)
    finally:
        io.shutdown(wait=True)
    assert isinstance(first, OSError) and first.strerror == "disk on fire"
    assert second is None


async def test_run_in_executor_works_and_keeps_the_order_with_calls() -> None:
    io = IOThread("test-io")
    loop = asyncio.get_running_loop()
    order: list[str] = []
    try:
        io.call(loop, order.append, ("call",), lambda exc: None)
        result = await loop.run_in_executor(io, lambda: order.append("submit") or 42)
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(io, lambda: 1 / 0)
    finally:
        io.shutdown(wait=True)
    assert result == 42
    assert order == ["call", "submit"]


async def test_shutdown_finishes_queued_work_then_refuses_more() -> None:
    io = IOThread("test-io")
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    ran: list[int] = []
    io.call(loop, gate.wait, (10,), lambda exc: None)
    futs = [io.submit(ran.append, i) for i in range(3)]
    gate.set()
    io.shutdown(wait=True)
    assert ran == [0, 1, 2]
    assert all(f.done() and f.exception() is None for f in futs)
    with pytest.raises(RuntimeError, match="shut down"):
        io.submit(ran.append, 3)
    with pytest.raises(RuntimeError, match="shut down"):
        io.call(loop, ran.append, (4,), lambda exc: None)
    io.shutdown(wait=True)  # idempotent


def test_shutdown_cancels_what_has_not_started_when_asked() -> None:
    io = IOThread("test-io")
    gate, started = threading.Event(), threading.Event()
    first = io.submit(lambda: started.set() or gate.wait(10))
    assert started.wait(10)
    queued = [io.submit(lambda: None) for _ in range(3)]
    io.shutdown(wait=False, cancel_futures=True)
    gate.set()
    io.shutdown(wait=True)
    assert first.result() is True
    assert all(f.cancelled() for f in queued)


def test_a_closed_loop_does_not_kill_the_thread() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    io = IOThread("test-io")
    try:
        io.call(loop, lambda: None, (), lambda exc: None)  # its report has nowhere to go
        assert io.submit(lambda: "still here").result(timeout=10) == "still here"
    finally:
        io.shutdown(wait=True)


def test_no_thread_until_first_use() -> None:
    before = {t.name for t in threading.enumerate()}
    io = IOThread("test-io-unused")
    io.shutdown(wait=True)
    assert "test-io-unused" not in {t.name for t in threading.enumerate()} - before
