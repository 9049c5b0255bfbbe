"""Run the code blocks of the documentation as a reader would: helpers for
the tests that keep README.md and docs/*.md true."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def code_blocks(page: str, lang: str = "python") -> list[str]:
    """The ```lang blocks of ``docs/page`` (or of README.md), in page order."""
    path = ROOT / page if page == "README.md" else DOCS / page
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), re.S)


async def run_block(source: str, namespace: dict[str, Any]) -> None:
    """Run a block that awaits at its top level, as the body of a coroutine
    whose globals are ``namespace``; the names it assigns end up there."""
    body = textwrap.indent(source, "    ")
    exec(f"async def _block():\n{body}\n    globals().update(locals())\n", namespace)
    await namespace["_block"]()


def first_iteration_only(source: str) -> str:
    """End each ``async for`` of ``source`` after its first item: the pages'
    change feeds and watches run forever, a test reads one item."""
    out: list[str] = []
    loops: list[int] = []  # indentation of each open loop's header
    for line in source.splitlines():
        indent = len(line) - len(line.lstrip())
        while loops and line.strip() and indent <= loops[-1]:
            out.append(" " * (loops.pop() + 4) + "break")
        out.append(line)
        if line.lstrip().startswith("async for "):
            loops.append(indent)
    while loops:
        out.append(" " * (loops.pop() + 4) + "break")
    return "\n".join(out) + "\n"
