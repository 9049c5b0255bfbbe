"""The ``raftlib`` command-line tool."""

from __future__ import annotations

import json
import re
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from raftlib import Config
from raftlib.cli import main


def test_demo_on_lmdb_shows_failover_and_no_lost_writes(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--data-dir", str(tmp_path), "--writes", "200"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Leader elected:" in out
    assert "New leader elected:" in out
    assert "All 200 writes are readable" in out
    assert "no committed write was lost" in out
    assert {p.name for p in tmp_path.iterdir()} == {"s1", "s2", "s3"}
    # Again on the same directory: refused up front, not a cluster that cannot elect.
    again = CliRunner().invoke(main, ["demo", "--data-dir", str(tmp_path), "--writes", "10"])
    assert again.exit_code == 2, again.output
    assert "already holds the logs of an earlier demo" in again.output
    assert "Starting peers" not in again.output


def test_demo_runs_as_a_module_in_memory_with_a_graceful_stop() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "raftlib", "demo", "--memory", "--writes", "50", "--graceful"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "hands leadership" in out.stdout
    assert "All 50 writes are readable" in out.stdout
    assert out.stderr == ""


def test_demo_writes_more_than_one_batch_of_pending_writes() -> None:
    # More writes than Config.max_pending_writes lets wait at once: the demo
    # keeps under that bound instead of failing its own writes.
    writes = Config().max_pending_writes + 1
    result = CliRunner().invoke(main, ["demo", "--memory", "--writes", str(writes)])
    assert result.exit_code == 0, result.output
    assert f"All {writes} writes are readable" in result.output


def test_help_and_bad_options() -> None:
    runner = CliRunner()
    assert "demo" in runner.invoke(main, ["--help"]).output
    assert "--writes" in runner.invoke(main, ["demo", "--help"]).output
    bad = runner.invoke(main, ["demo", "--writes", "0"])
    assert bad.exit_code != 0
    assert "--writes" in bad.output


def test_help_is_plain_text_without_markup() -> None:
    import click

    def commands(group: click.Group, path: list[str]) -> list[list[str]]:
        found = [path]
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found += commands(command, path + [name])
            else:
                found.append(path + [name])
        return found

    runner = CliRunner()
    every = commands(main, [])
    assert ["kv", "cas"] in every
    for path in every:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, path
        # Click prints docstrings as they are: RST literals and roles would show.
        assert "``" not in result.output, (path, result.output)
        assert not re.search(r":[a-z]+:`", result.output), (path, result.output)


def test_every_option_says_what_it_does() -> None:
    """`--help` of every command explains each option (docs/operations.md sends readers there)."""
    import click

    def options(command: click.Command, path: str) -> list[tuple[str, click.Parameter]]:
        own = [(path, param) for param in command.params if isinstance(param, click.Option)]
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                own += options(sub, f"{path} {name}")
        return own

    every = options(main, "raftlib")
    assert len(every) > 50
    assert [(path, param.opts) for path, param in every if not getattr(param, "help", None)] == []


def test_certs_into_a_directory_that_cannot_be_made_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["certs", "--out", str(blocker / "certs"), "--names", "s1"])
    assert result.exit_code == 1
    assert not isinstance(result.exception, OSError)  # reported, not raised
    assert result.output.startswith("Error: cannot write the certificates to ")
    assert len(result.output.strip().splitlines()) == 1


def test_a_client_command_against_a_non_member_prints_one_error_line() -> None:
    class Garbage(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Garbage) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            address = f"127.0.0.1:{server.server_address[1]}"
            out = subprocess.run([sys.executable, "-m", "raftlib", "status", "--cluster", address, "--timeout", "2"],
                                 capture_output=True, text=True, timeout=60)
        finally:
            server.shutdown()
    assert out.returncode == 1
    assert out.stderr.startswith("Error: no member could be reached: ")
    assert len(out.stderr.splitlines()) == 1, out.stderr


def test_values_are_json_only_when_they_are_standard_json() -> None:
    from raftlib.cli import _parse_value

    assert _parse_value('{"a": [1, 2.5, null]}', as_string=False) == {"a": [1, 2.5, None]}
    assert _parse_value("100", as_string=False) == 100
    assert _parse_value("100", as_string=True) == "100"
    # Python's json would read these as floats that JSON output cannot show.
    for text in ("NaN", "Infinity", "-Infinity", "[1, NaN]", "1e400"):
        assert _parse_value(text, as_string=False) == text
    # Integers msgpack cannot hold are not numbers the store can keep either.
    assert _parse_value(str(2**64 - 1), as_string=False) == 2**64 - 1
    assert _parse_value(str(-(2**63)), as_string=False) == -(2**63)
    for text in (str(2**64), str(-(2**63) - 1), "[1, 100000000000000000000000]"):
        assert _parse_value(text, as_string=False) == text
    # JSON nested deeper than Python's json decodes is text too, not a RecursionError.
    deep = "[" * 5000 + "]" * 5000
    assert _parse_value(deep, as_string=False) == deep


def _nesting(value: object) -> int:
    depth = 0
    while isinstance(value, list):
        depth, value = depth + 1, value[0] if value else None
    return depth


def test_json_values_nest_as_deep_as_the_store_keeps_on_every_python() -> None:
    """How deep json decodes depends on the interpreter (3.11 stops near its
    recursion limit of 1000, 3.13 goes past 5000); a value from the command
    line does not: JSON as deep as the store keeps values, text beyond."""
    from raftlib.cli import _parse_value

    kept = "[" * 1018 + "]" * 1018
    assert _nesting(_parse_value(kept, as_string=False)) == 1018
    for depth in (1100, 2000, 5000):
        deep = "[" * depth + "]" * depth
        assert _parse_value(deep, as_string=False) == deep


def test_text_that_is_not_utf8_is_a_usage_error_before_connecting() -> None:
    # A terminal in another encoding, or a key taken from a file name, gives
    # Python an argument with surrogates, which no member could decode.
    bad = "caf\udce9"
    cluster = ["--cluster", "127.0.0.1:1"]
    for args in (
        ["kv", "put", bad, "1"], ["kv", "put", "k", bad], ["kv", "put", "k", "1", "--scope", bad],
        ["kv", "get", bad], ["kv", "delete", bad], ["kv", "cas", bad, "1", "2"], ["kv", "cas", "k", bad, "2"],
        ["kv", "cas", "k", "1", bad], ["kv", "list", "--prefix", bad], ["kv", "watch", "--prefix", bad],
        ["scope", "create", bad], ["scope", "delete", bad],
    ):
        result = CliRunner().invoke(main, args + cluster)
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert "not valid UTF-8" in result.output, args
        assert "Traceback" not in result.output


def test_an_expected_version_beyond_any_version_is_a_usage_error_before_connecting() -> None:
    result = CliRunner().invoke(main, ["kv", "cas", "k", "x", "1", "--expected-version", str(2**64),
                                       "--cluster", "127.0.0.1:1", "--timeout", "0.1"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Invalid value for '--expected-version'" in result.output


def test_json_output_is_standard_json_for_every_value(capsys: pytest.CaptureFixture[str]) -> None:
    # Values written through the API may hold floats JSON has no literal for, and bytes map keys.
    from raftlib.cli import _echo

    def strict(text: str) -> object:
        def refuse(constant: str) -> object:
            raise ValueError(f"{constant} is not JSON")

        return json.loads(text, parse_constant=refuse)

    for value, shown in (
        (float("nan"), "NaN"), (float("inf"), "Infinity"), ([float("-inf"), 1.5], ["-Infinity", 1.5]),
        ({b"key": b"value", 1: 2}, {"key": "value", "1": 2}), ({b"\xff": 0}, {"base64:/w==": 0}),
    ):
        _echo(value, True)
        assert strict(capsys.readouterr().out) == shown


def test_json_output_shows_map_keys_as_json_would_and_values_as_deep_as_the_store_takes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Keys that are not text read as their JSON text (``null``, ``true``, as
    json.dumps writes them), and a value nested as deep as the key-value
    store takes (1018 levels) is printed, not a RecursionError."""
    from raftlib.cli import _echo

    _echo({None: 1, True: 2, False: 3, 1.5: 4, 7: 5, b"b": 6}, True)
    assert json.loads(capsys.readouterr().out) == {"null": 1, "true": 2, "false": 3, "1.5": 4, "7": 5, "b": 6}
    deep: object = b"leaf"
    for _ in range(1018):
        deep = [deep]
    _echo(deep, True)
    assert capsys.readouterr().out == "[" * 1018 + '"leaf"' + "]" * 1018 + "\n"


def test_a_nan_timeout_is_a_usage_error() -> None:
    # click's FloatRange lets NaN through (every comparison with it is false); a
    # deadline of NaN then ended every command with a misleading "Unavailable".
    for args in (
        ["kv", "get", "k", "--cluster", "127.0.0.1:1"], ["kv", "watch", "--cluster", "127.0.0.1:1"],
        ["scope", "list", "--cluster", "127.0.0.1:1"], ["status", "--cluster", "127.0.0.1:1"],
        ["members", "remove", "s9", "--cluster", "127.0.0.1:1"],
    ):
        result = CliRunner().invoke(main, args + ["--timeout", "nan"])
        assert result.exit_code == 2, (args, result.output)
        assert "'nan' is not a number of seconds" in result.output, args
    result = CliRunner().invoke(main, ["serve", "--name", "s1", "--listen", "127.0.0.1:1", "--memory",
                                       "--join", "127.0.0.1:2", "--join-timeout", "nan"])
    assert result.exit_code == 2 and "is not a number of seconds" in result.output, result.output


def test_a_negative_number_as_a_value_gets_a_hint_to_use_the_option_terminator() -> None:
    """click takes ``-5`` for an option; the bare "No such option: -5" did
    not say that a value starting with '-' goes after ``--``."""
    for args in (["kv", "put", "offset", "-5"], ["kv", "cas", "offset", "1", "-2.5"]):
        result = CliRunner().invoke(main, args + ["--cluster", "127.0.0.1:1"])
        assert result.exit_code == 2, (args, result.output)
        assert "No such option" in result.output and "after '--'" in result.output, result.output
    # Options still parse after the value, and an unknown option gets no such hint.
    result = CliRunner().invoke(main, ["kv", "put", "offset", "--bogus", "--cluster", "127.0.0.1:1"])
    assert result.exit_code == 2 and "after '--'" not in result.output, result.output
    # With the terminator the value reaches the command: here a refused
    # connection, not a usage error.
    result = CliRunner().invoke(main, ["kv", "put", "--cluster", "127.0.0.1:1", "--timeout", "0.5", "offset", "--", "-5"])
    assert result.exit_code == 1, result.output


def test_cas_values_from_files_are_usage_errors_before_connecting_when_they_clash(tmp_path: Path) -> None:
    """--expected-file takes EXPECTED's place as --new-file takes NEW's;
    standard input ('-') can feed only one of them."""
    path = tmp_path / "value.txt"
    path.write_text("1")
    for args, message in (
        (["--expected-file", "-", "--new-file", "-"], "cannot both read standard input"),
        (["1", "2", "--expected-file", str(path)], "give EXPECTED or --expected-file, not both"),
        (["--expected-file", str(path)], "give NEW or --new-file"),
        (["2", "--expected-file", str(path), "--new-file", str(path)], "not both"),
        (["--new-file", str(path)], "give EXPECTED or --expected-file"),
        (["x", "2", "--expected-file", str(path), "--expected-version", "3"], "--expected-version"),
        (["--expected-file", str(tmp_path / "missing"), "2"], "cannot read"),
    ):
        result = CliRunner().invoke(main, ["kv", "cas", "k", *args, "--cluster", "127.0.0.1:1", "--timeout", "0.1"],
                                    input="1")
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert message in result.output, (args, result.output)

