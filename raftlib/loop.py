"""Running an asyncio program on uvloop when it is installed.

raftlib runs on any asyncio event loop: embedded in an application, it uses
the application's. :func:`run` is for programs that raftlib starts itself
(the benchmarks) and for applications that want the same choice: it runs a
coroutine like :func:`asyncio.run`, on uvloop when it is installed
(``pip install 'raftlib[fast]'``), unless told otherwise.

uvloop makes the event loop's own work (callbacks, futures, sockets) cheaper,
but most of a peer's time goes to raftlib's Python code, and on the 2-core
reference machines a cluster on uvloop was no faster than on the standard
loop (see docs/performance.md; measure yours with ``python -m benchmarks --loop
uvloop``). Set ``RAFTLIB_UVLOOP=0`` to keep the standard loop.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from typing import Any, Callable, Coroutine, TypeVar

T = TypeVar("T")

ENV = "RAFTLIB_UVLOOP"
"""Set to ``0`` to keep the standard event loop even when uvloop is installed."""


def loop_factory(use_uvloop: bool | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory :func:`run` uses: uvloop's when it is installed
    and wanted, else ``None`` (the standard loop).

    ``use_uvloop``: ``True`` requires uvloop (:class:`RuntimeError` with the
    install command if it is missing), ``False`` never uses it, ``None``
    uses it when installed unless the environment variable ``RAFTLIB_UVLOOP``
    is ``0``.
    """
    if use_uvloop is False or (use_uvloop is None and os.environ.get(ENV, "") == "0"):
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if use_uvloop:
            raise RuntimeError("uvloop is not installed: pip install 'raftlib[fast]' (or pip install uvloop)") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: which event loop runs ``loop`` (default: the running one)."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool | None = None, debug: bool | None = None) -> T:
    """Run the coroutine ``main`` to completion, like :func:`asyncio.run`,
    on uvloop when it is installed (see :func:`loop_factory` for
    ``use_uvloop``), and return its result."""
    try:
        factory = loop_factory(use_uvloop)
    except RuntimeError:
        main.close()  # never started: no "never awaited" warning
        raise
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
