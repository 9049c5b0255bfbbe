"""The README's example runs as written (on free ports, in a temporary directory); the docs show real output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clusterkit import free_port
from docblocks import code_blocks, run_block

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None
    source = code.group(1)
    for port in ("7001", "7002", "7003"):
        assert port in source
        source = source.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    script = tmp_path / "example.py"
    script.write_text(source + "\nprint('EXAMPLE-OK')\n")
    # Twice: the second run restarts on the same data directories.
    for _ in range(2):
        out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "EXAMPLE-OK" in out.stdout
    assert (tmp_path / "data" / "s1").is_dir()


def test_the_readme_state_machine_has_the_methods_of_the_demo_one() -> None:
    """``raftlib demo`` runs the README's state machine (``raftlib.cli.DemoKV``); the page shows all it implements."""
    import ast

    from raftlib.cli import DemoKV

    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None
    shown = next(node for node in ast.parse(code.group(1)).body if isinstance(node, ast.ClassDef))
    methods = {node.name for node in shown.body if isinstance(node, ast.FunctionDef)}
    assert methods == {name for name, value in vars(DemoKV).items() if callable(value)}


def test_the_kv_example_runs_and_prints_what_the_page_says(tmp_path: Path) -> None:
    text = (README.parent / "docs" / "kv.md").read_text()
    source = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    printed = re.findall(r"print\(.*?# (?:e\.g\. )?(.*)", source)
    assert len(printed) == 2
    for port in ("7001", "7002", "7003"):
        source = source.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    script = tmp_path / "kv_example.py"
    script.write_text(source)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == printed
    assert "never retrieved" not in out.stderr, out.stderr


async def test_the_status_example_in_getting_started_shows_every_key(tmp_path: Path) -> None:
    import ast

    import raftlib
    from storage_adapters import MemoryStorage

    text = (README.parent / "docs" / "getting-started.md").read_text()
    example = re.search(r">>> peer\.status\(\)\n(.*?)```", text, re.S)
    assert example is not None
    shown = ast.literal_eval(example.group(1).replace(", ...}}", "}}"))
    peer = await raftlib.start_peer(raftlib.kv.KVStateMachine, name="s1", address="127.0.0.1:0",
                                    storage=MemoryStorage())
    try:
        await peer.set_configuration({"s1": peer.address})
        await peer.wait_for_leader(timeout=10)
        status = peer.status()
    finally:
        await peer.stop()
    assert set(shown) == set(status)
    assert set(shown["members"]["s1"]) == set(status["members"]["s1"])


def test_every_public_name_is_documented() -> None:
    import raftlib
    import storage_adapters

    pages = [README, *sorted((README.parent / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    names = [f"raftlib.{name}" for name in raftlib.__all__] + list(storage_adapters.__all__)
    # A name counts as documented where it appears in code: `name`, `raftlib.errors.name`, `name(...)`, ...
    undocumented = [
        qualified for qualified in names
        if not re.search(rf"`([\w.]+\.)?{re.escape(qualified.rpartition('.')[2])}[`(\[.]", text)
    ]
    assert undocumented == []


async def test_the_getting_started_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The state machine, the start-up and the write-and-read blocks, run in
    order for three peers (each founding the cluster, as the page allows)."""
    import raftlib

    state_machine, start, write_read = code_blocks("getting-started.md")[:3]
    ports = {old: str(free_port()) for old in ("7001", "7002", "7003")}

    def on_free_ports(source: str) -> str:
        for old, new in ports.items():
            source = source.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
        return source

    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"raftlib": raftlib}
    exec(state_machine, namespace)
    peers: dict[str, Any] = {}
    try:
        for name, port in (("s1", "7001"), ("s2", "7002"), ("s3", "7003")):
            own = start.replace('name="s1"', f'name="{name}"').replace('data_dir="data/s1"', f'data_dir="data/{name}"')
            own = own.replace('address="127.0.0.1:7001"', f'address="127.0.0.1:{port}"')
            await run_block(on_free_ports(own), namespace)
            peers[name] = namespace["peer"]
        namespace["peer"], namespace["peers"] = peers["s1"], peers
        await run_block(write_read, namespace)
        assert namespace["result"] == 1 and namespace["value"] == 1
        assert (tmp_path / "data" / "s1").is_dir()
    finally:
        for peer in peers.values():
            await peer.stop()


async def test_the_getting_started_async_with_example_stops_the_peer(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import raftlib

    blocks = code_blocks("getting-started.md")
    example = next(block for block in blocks if block.startswith("async with await raftlib.start_peer("))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"raftlib": raftlib}
    exec(blocks[0], namespace)
    await run_block(example.replace("127.0.0.1:7001", f"127.0.0.1:{free_port()}"), namespace)
    assert namespace["total"] == 2
    assert namespace["peer"].status()["role"] == "stopped"
    # The data directory is free again: a peer starts on it, with the write.
    async with await raftlib.start_peer(namespace["Counter"], name="s1", address="127.0.0.1:0", data_dir="data/s1") as again:
        assert await again.read("value", consistency="stale") == 2


def test_every_config_field_is_documented_with_its_default() -> None:
    """Each ``Config`` field appears on some page, and every table row that
    gives a field's default (``| `field` | default | ...``) gives the real one."""
    import dataclasses

    import raftlib

    text = "\n".join(page.read_text() for page in [README, *sorted((README.parent / "docs").glob("*.md"))])
    defaults = {f.name: getattr(raftlib.Config(), f.name) for f in dataclasses.fields(raftlib.Config)}
    assert [name for name in defaults if f"`{name}`" not in text] == []
    units = {"": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "s": 1, "messages": 1}
    rows = re.findall(r"^\| `(?:Config\.)?(\w+)` \| (True|False|None|[\d.,]+)(?: (KiB|MiB|GiB|s|messages))?\b", text, re.M)
    checked = set()
    for name, value, unit in rows:
        if name not in defaults:
            continue
        shown = {"True": True, "False": False, "None": None}.get(value, None)
        if shown is None and value != "None":
            shown = float(value.replace(",", "")) * units[unit]
        assert shown == defaults[name], f"docs give {name} a default of {value} {unit}, Config has {defaults[name]!r}"
        checked.add(name)
    assert {"tick_interval", "snapshot_entries", "max_pending_reads"} <= checked


def test_readme_and_the_docs_index_link_every_page() -> None:
    docs = README.parent / "docs"
    pages = {page.name for page in docs.glob("*.md")} - {"index.md"}
    assert pages - set(re.findall(r"\]\(docs/([\w-]+\.md)", README.read_text())) == set()
    assert pages - set(re.findall(r"\]\(([\w-]+\.md)", (docs / "index.md").read_text())) == set()


def test_every_public_method_of_peer_and_client_is_documented() -> None:
    import raftlib

    text = "\n".join(page.read_text() for page in [README, *sorted((README.parent / "docs").glob("*.md"))])
    public = {f"{cls.__name__}.{name}" for cls in (raftlib.Peer, raftlib.Client) for name in dir(cls)
              if not name.startswith("_")}
    undocumented = sorted(q for q in public if not re.search(rf"[`.]{q.partition('.')[2]}[`(]", text))
    assert undocumented == []


def test_the_class_relations_errors_md_states_hold() -> None:
    """``X` (a `Y`)`` on the errors page means X derives from Y; and every class
    in raftlib.errors is on the page."""
    import builtins

    from raftlib import errors

    text = (README.parent / "docs" / "errors.md").read_text()
    claims = re.findall(r"`(\w+)` \((?:a|an|also a) `(\w+)`\)", text)
    assert len(claims) >= 8
    for sub, base in claims:
        assert issubclass(getattr(errors, sub), getattr(errors, base, None) or getattr(builtins, base)), (sub, base)
    classes = [name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, Exception)
               and value.__module__ == errors.__name__]
    assert [name for name in classes if f"`{name}`" not in text and f"`raftlib.errors.{name}`" not in text] == []
