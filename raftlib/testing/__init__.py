"""raftlib.testing: tools for testing services built on raftlib.

:mod:`raftlib.testing.lincheck` checks that a recorded history of get, put
and cas operations is linearizable (see docs/testing.md)::

    from raftlib.testing import History, check

:func:`free_port` (from :mod:`raftlib.testing.ports`) names a loopback port
for a peer a test starts in another process.

The names below are imported on first use, so that
``python -m raftlib.testing.lincheck`` does not load the module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .lincheck import (
        History,
        KeyResult,
        Model,
        Operation,
        RegisterModel,
        Result,
        Violation,
        check,
        check_file,
        from_jsonl,
        load,
        save,
        to_jsonl,
    )
    from .ports import free_port

__all__ = [
    "History",
    "KeyResult",
    "Model",
    "Operation",
    "RegisterModel",
    "Result",
    "Violation",
    "check",
    "check_file",
    "free_port",
    "from_jsonl",
    "load",
    "save",
    "to_jsonl",
]


def __getattr__(name: str) -> Any:
    if name == "free_port":
        from .ports import free_port

        return free_port
    if name in __all__:
        from . import lincheck

        return getattr(lincheck, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
