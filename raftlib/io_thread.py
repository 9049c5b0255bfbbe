"""The thread a peer's storage writes run on.

A peer writes to storage on one thread, in order: saves, compactions and
snapshot installs must reach the disk in the order the driver issued them.
:class:`IOThread` is that thread. It is a :class:`concurrent.futures.Executor`
(so ``loop.run_in_executor`` works with it) with one shortcut for the call
made once per save: :meth:`IOThread.call` runs a function and hands its
outcome to a callback on the event loop with a single
``call_soon_threadsafe``. Through ``run_in_executor`` the same round trip
builds two futures, chains them, and takes two turns of the event loop
before the caller hears back; at hundreds of saves a second per peer that
is measurable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from typing import Any, Callable

_STOP = object()
"""Queued by :meth:`IOThread.shutdown`: the thread ends when it gets here."""


class IOThread(concurrent.futures.Executor):
    """One worker thread running what is given to it in order, started on
    first use. ``name`` names the thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._shut = False

    def _put(self, item: tuple[Any, ...]) -> None:
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new work after the I/O thread was shut down")
            if self._thread is None:
                # A daemon, so that a peer nobody stopped does not hold up the
                # interpreter's exit; nothing it has not finished was acknowledged.
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._queue.put(item)

    def call(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], args: tuple[Any, ...],
             done: Callable[[BaseException | None], None]) -> None:
        """Run ``fn(*args)`` on the thread, then ``done(exception or None)``
        on ``loop``'s thread. ``fn``'s return value is dropped. If ``loop``
        is closed by then, ``done`` is not called."""
        self._put((None, fn, args, (loop, done)))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` on the thread, after everything given
        before; the future gets its result or exception."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._put((fut, fn, args, kwargs))
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; the thread ends once what was given is done
        (``cancel_futures``: what has not started is cancelled instead).
        With ``wait``, return once it has ended. Idempotent."""
        with self._lock:
            if not self._shut:
                self._shut = True
                if cancel_futures:
                    self._cancel_queued()
                self._queue.put((_STOP, None, None, None))
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _cancel_queued(self) -> None:
        while True:
            try:
                fut, _, _, _ = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(fut, concurrent.futures.Future):
                fut.cancel()

    def _run(self) -> None:
        get = self._queue.get
        while True:
            fut, fn, args, extra = get()
            if fut is _STOP:
                return
            if fut is None:
                loop, done = extra
                error: BaseException | None = None
                try:
                    fn(*args)
                except BaseException as exc:  # handed to the caller, like a future would
                    error = exc
                try:
                    loop.call_soon_threadsafe(done, error)
                except RuntimeError:  # the loop is closed: nobody is left to tell
                    pass
                continue
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **extra)
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)
