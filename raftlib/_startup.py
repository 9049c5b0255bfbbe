"""Ctrl-C while the ``raftlib`` command starts up.

Loading raftlib and its dependencies takes a moment (longer on a busy
machine), and until ``raftlib serve`` has its own signal handlers a SIGINT
would raise :class:`KeyboardInterrupt` wherever the import happens to be,
and print a traceback. So the command's entry point (:mod:`raftlib.__main__`)
first calls :func:`hold_interrupt`: a SIGINT is then only remembered.
``serve`` takes it as a request to stop once its handlers are in place
(:func:`interrupted`); every other command gets the
:class:`KeyboardInterrupt` when it begins (:func:`release`), as it would
have for a later Ctrl-C. Only the standard library is imported here.
"""

from __future__ import annotations

import signal
from types import FrameType

_interrupted = False


def _remember(signum: int, frame: FrameType | None) -> None:
    global _interrupted
    _interrupted = True


def hold_interrupt() -> None:
    """Remember a SIGINT instead of raising :class:`KeyboardInterrupt`, until
    :func:`release` (or an event loop's own handler) takes over. Does
    nothing if SIGINT is not handled the default way (it is ignored, say)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _remember)


def interrupted() -> bool:
    """Whether a SIGINT came while it was held."""
    return _interrupted


def release() -> None:
    """Handle SIGINT the default way again; raise the :class:`KeyboardInterrupt`
    of one that came while it was held."""
    if signal.getsignal(signal.SIGINT) is _remember:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _interrupted:
        raise KeyboardInterrupt
