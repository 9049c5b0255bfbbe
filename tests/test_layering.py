"""The dependency rules of docs/architecture.md, checked by walking imports."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module or "")
    return names


def allowed(name: str, allowed_prefixes: tuple[str, ...]) -> bool:
    top = name.split(".")[0]
    if top in sys.stdlib_module_names and top not in {"asyncio", "socket", "time", "threading", "selectors", "ssl"}:
        return True
    return any(name == p or name.startswith(p + ".") for p in allowed_prefixes)


@pytest.mark.parametrize("path", sorted((ROOT / "raftlib" / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_is_pure(path: Path) -> None:
    bad = {
        m for m in imported_modules(path)
        if not allowed(m, ("raftlib.core", "raftlib.types", "raftlib.errors", "raftlib.config", "storage_adapters.protocol"))
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sorted((ROOT / "storage_adapters").glob("*.py")), ids=lambda p: p.name)
def test_storage_adapters_depend_only_on_types_and_errors(path: Path) -> None:
    bad = {
        m for m in imported_modules(path)
        if not allowed(m, ("storage_adapters", "raftlib.types", "raftlib.errors", "lmdb", "msgpack"))
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_checker_notices_a_forbidden_import() -> None:
    fake = ROOT / "raftlib" / "core" / "probe.py"
    found = imported_modules(fake, "import asyncio\nfrom ..runtime import Peer\nfrom .log import RaftLog\n")
    assert found == {"asyncio", "raftlib.runtime", "raftlib.core.log"}
    assert not allowed("asyncio", ("raftlib.core",))
    assert not allowed("raftlib.runtime", ("raftlib.core",))
    assert allowed("raftlib.core.log", ("raftlib.core",))


def test_public_api_is_exported() -> None:
    import raftlib

    for name in raftlib.__all__:
        assert hasattr(raftlib, name), name
    for name in ("start_peer", "Peer", "StateMachine", "Config", "errors", "NotLeader", "OutcomeUnknown"):
        assert name in raftlib.__all__


def test_every_public_name_and_method_is_documented_and_typed() -> None:
    import inspect

    import raftlib

    undocumented, untyped = [], []
    for name in raftlib.__all__:
        obj = getattr(raftlib, name)
        if inspect.ismodule(obj):
            if not obj.__doc__:
                undocumented.append(name)
            continue
        members = [(name, obj)]
        if inspect.isclass(obj):
            if obj.__doc__ is None:
                undocumented.append(name)
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                value = value.fget if isinstance(value, property) else value
                value = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
                if inspect.isfunction(value):
                    members.append((f"{name}.{attr}", value))
            members = members[1:]
        for qualname, fn in members:
            if not inspect.isfunction(fn):
                continue
            if not fn.__doc__:
                undocumented.append(qualname)
            sig = inspect.signature(fn)
            if sig.return_annotation is inspect.Signature.empty or any(
                p.annotation is inspect.Parameter.empty for p in sig.parameters.values() if p.name not in ("self", "cls")
            ):
                untyped.append(qualname)
    assert undocumented == []
    assert untyped == []


@pytest.mark.parametrize("module", ["storage_adapters", "storage_adapters.lmdb", "storage_adapters.memory", "raftlib"])
def test_each_package_imports_on_its_own(module: str) -> None:
    """A program may import a storage adapter before raftlib (to wrap one, say)."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
