"""The README's example runs as written (on free ports, in a temporary directory)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from clusterkit import free_port

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
