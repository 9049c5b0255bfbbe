"""The ``raftlib`` command-line tool."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import re
import signal
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

import click

from . import Config, Peer, StateMachine, _startup, codec, start_peer
from .errors import RaftError
from .security import Security, SharedSecret, TLSConfig, security_from
from .runtime import _join_started


class DemoKV(StateMachine):
    """The README's key-value state machine."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def handle_write(self, command: Any) -> Any:
        op, key, *rest = command
        if op == "set":
            self.data[key] = rest[0]
            return ["ok", key, rest[0]]
        return ["error", "unknown_op"]

    def handle_read(self, query: Any) -> Any:
        _, key = query
        return ["ok", self.data[key]] if key in self.data else ["error", "key_not_found"]

    def snapshot(self) -> bytes:
        """The whole dict as msgpack bytes, so the log is compacted every ``Config.snapshot_entries``."""
        return codec.pack(self.data, "snapshot")

    def restore(self, data: bytes) -> None:
        """Replace the dict with one produced by :meth:`snapshot`; ``ValueError`` if ``data`` is not one."""
        try:
            restored = codec.unpack(data)
        except Exception as exc:  # msgpack's errors differ across versions
            raise ValueError(f"not a DemoKV snapshot: {exc}") from None
        if not isinstance(restored, dict):
            raise ValueError(f"not a DemoKV snapshot: a {type(restored).__name__}, not a map")
        self.data = restored


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raftlib")
def main() -> None:
    """raftlib: replicated state for asyncio services, on Raft."""
    # Client commands report a failure as one "Error: ..." line; without a
    # handler, the library's warnings about the same failure (a refused
    # connection, a malformed frame) would reach stderr too, through
    # logging's last resort. serve and demo configure logging themselves.
    logging.getLogger("raftlib").addHandler(logging.NullHandler())
    if click.get_current_context().invoked_subcommand != "serve":
        # A Ctrl-C while loading (held by raftlib.__main__) aborts the
        # command now, as a later one would; serve stops cleanly instead.
        _startup.release()


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="A new or empty directory for the peers' LMDB logs (default: a temporary one, removed afterwards).")
@click.option("--memory", is_flag=True, help="Keep the logs in memory instead of LMDB.")
@click.option("--writes", type=click.IntRange(1, 1_000_000), default=1000, show_default=True,
              help="How many commands to write before stopping the leader.")
@click.option("--graceful", is_flag=True,
              help="Stop the leader with a leadership transfer instead of abruptly (as if it crashed).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning",
              show_default=True, help="How much the peers log (on stderr).")
def demo(data_dir: str | None, memory: bool, writes: int, graceful: bool, log_level: str) -> None:
    """Run a 3-peer cluster in this process: elect, write, stop the leader,
    watch the re-election, and check that every write survived."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if data_dir is not None and not memory:
        # The demo founds a new cluster on new ports; peers restarted on an
        # earlier run's logs would look for each other at the old addresses.
        used = [name for name in ("s1", "s2", "s3") if os.path.isdir(os.path.join(data_dir, name))
                and os.listdir(os.path.join(data_dir, name))]
        if used:
            raise click.BadParameter(
                f"{data_dir} already holds the logs of an earlier demo ({', '.join(used)}); "
                "give a new or empty directory", param_hint="--data-dir")
    try:
        if data_dir is None and not memory:
            with tempfile.TemporaryDirectory(prefix="raftlib-demo-") as tmp:
                ok = asyncio.run(_demo(tmp, memory, writes, graceful))
        else:
            ok = asyncio.run(_demo(data_dir or "", memory, writes, graceful))
    except RaftError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(0 if ok else 1)


async def _demo(data_dir: str, memory: bool, writes: int, graceful: bool) -> bool:
    from storage_adapters import MemoryStorage

    say = click.echo
    names = ["s1", "s2", "s3"]
    peers = {}
    where = "memory" if memory else f"LMDB under {data_dir}"
    say(f"Starting peers {', '.join(names)} on 127.0.0.1 ({where})")
    try:
        for name in names:
            kwargs: dict[str, Any] = {"storage": MemoryStorage()} if memory else {"data_dir": f"{data_dir}/{name}"}
            peers[name] = await start_peer(DemoKV, name=name, address="127.0.0.1:0", config=Config(), **kwargs)
        members = {name: p.address for name, p in peers.items()}
        for name, addr in members.items():
            say(f"  {name} listening on {addr}")
        t0 = time.perf_counter()
        await peers["s1"].set_configuration(members)
        leader_name = await peers["s1"].wait_for_leader(timeout=10)
        leader = peers[leader_name]
        say(f"Leader elected: {leader_name} (term {leader.status()['term']}) after {_ms(t0)}")

        t0 = time.perf_counter()
        # At most Config.max_pending_writes wait at once: a larger --writes
        # goes in rounds rather than having its surplus refused.
        results: list[Any] = []
        step = leader.config.max_pending_writes
        for first in range(0, writes, step):
            results += await asyncio.gather(*(leader.write(["set", f"key{i}", i])
                                              for i in range(first, min(writes, first + step))))
        elapsed = time.perf_counter() - t0
        how = "held in memory" if memory else "synced to disk"
        say(f"Wrote {len(results)} commands through {leader_name} in {elapsed * 1000:.0f} ms "
            f"({len(results) / elapsed:,.0f} writes/s, each {how} on a majority before it was acknowledged)")
        say(f"  read key0 -> {await leader.read(['get', 'key0'])}")

        if graceful:
            say(f"Stopping the leader {leader_name}; it hands leadership to the most up-to-date follower first")
        else:
            say(f"Stopping the leader {leader_name} abruptly; the others notice after an election timeout")
        t0 = time.perf_counter()
        await leader.stop(transfer_leadership=graceful)
        survivors = {n: p for n, p in peers.items() if n != leader_name}
        new_name = await _new_leader(survivors, leader_name)
        new = peers[new_name]
        say(f"New leader elected: {new_name} (term {new.status()['term']}) after {_ms(t0)}")

        missing = [i for i in range(writes) if await new.read(["get", f"key{i}"]) != ["ok", i]]
        if missing:
            say(f"LOST {len(missing)} writes, e.g. key{missing[0]}")
            return False
        say(f"All {writes} writes are readable from {new_name}")
        say(f"  write after failover -> {await new.write(['set', 'after-failover', True])}")
        say("Demo finished: no committed write was lost.")
        return True
    finally:
        for p in peers.values():
            await p.stop(transfer_leadership=False)


async def _new_leader(survivors: dict[str, Any], old: str) -> str:
    while True:
        for name, p in survivors.items():
            if p.is_leader and p.leader == name:
                return name
        await asyncio.sleep(0.005)


def _ms(t0: float) -> str:
    return f"{(time.perf_counter() - t0) * 1000:.0f} ms"


# -- shared options ------------------------------------------------------------------------------

_LOG_LEVELS = click.Choice(["debug", "info", "warning", "error"])


class _Seconds(click.FloatRange):
    """A float range of seconds that also refuses NaN (FloatRange lets it
    through: every comparison with NaN is false)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if isinstance(seconds, float) and math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


def _addresses(text: str) -> list[str]:
    """``ADDR[,ADDR...]`` as a list, each checked."""
    from .transport.tcp import parse_address

    addresses = [a.strip() for a in text.split(",") if a.strip()]
    if not addresses:
        raise click.BadParameter("give at least one address (host:port)")
    for address in addresses:
        try:
            parse_address(address)
        except RaftError as exc:
            raise click.BadParameter(str(exc)) from None
    return addresses


def _cluster_option(fn: Any) -> Any:
    return click.option(
        "--cluster", "cluster", required=True, envvar="RAFTLIB_CLUSTER", metavar="ADDR[,ADDR]",
        help="Addresses of one or more members (or set RAFTLIB_CLUSTER).",
    )(fn)


def _force_option(fn: Any) -> Any:
    return click.option(
        "--force", is_flag=True,
        help="Make the change even if the leader has not heard lately from a majority of the voters it leaves "
             "(the cluster then commits nothing until enough of them are back).",
    )(fn)


def _json_option(fn: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(fn)


def _timeout_option(fn: Any) -> Any:
    return click.option("--timeout", type=_Seconds(min=0.1), default=10.0, show_default=True,
                        help="Seconds allowed, retries included.")(fn)


_SECURITY = "raftlib.security"
"""Key of the resolved :data:`raftlib.security.Security` in ``click.Context.meta``."""


def _security_options(fn: Any) -> Any:
    """Add --cert/--key/--ca (mutual TLS) and --secret-file (shared secret) to a
    command; the checked result is left in the context for :func:`_security`."""

    @functools.wraps(fn)
    def command(*args: Any, tls_cert: str | None, tls_key: str | None, tls_ca: str | None,
                tls_secret_file: str | None, **kwargs: Any) -> Any:
        click.get_current_context().meta[_SECURITY] = _resolve_security(tls_cert, tls_key, tls_ca, tls_secret_file)
        return fn(*args, **kwargs)

    path = click.Path(dir_okay=False)
    options = [
        click.option("--cert", "tls_cert", envvar="RAFTLIB_CERT", type=path, default=None, metavar="PEM",
                     help="TLS: this end's certificate, signed by --ca (or set RAFTLIB_CERT)."),
        click.option("--key", "tls_key", envvar="RAFTLIB_KEY", type=path, default=None, metavar="PEM",
                     help="TLS: the certificate's private key (or set RAFTLIB_KEY)."),
        click.option("--ca", "tls_ca", envvar="RAFTLIB_CA", type=path, default=None, metavar="PEM",
                     help="TLS: the CA certificate every member and client is signed by (or set RAFTLIB_CA)."),
        click.option("--secret-file", "tls_secret_file", envvar="RAFTLIB_SECRET_FILE", type=path, default=None,
                     metavar="FILE", help="Authenticate with the shared cluster secret in FILE (or set RAFTLIB_SECRET_FILE)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _resolve_security(cert: str | None, key: str | None, ca: str | None, secret_file: str | None) -> Security:
    given = {"--cert": cert, "--key": key, "--ca": ca}
    if any(given.values()):
        missing = [flag for flag, value in given.items() if not value]
        if missing:
            raise click.UsageError(f"TLS needs --cert, --key and --ca together (missing {', '.join(missing)})")
        if secret_file:
            raise click.UsageError("give --cert/--key/--ca (TLS) or --secret-file, not both")
    try:
        if cert and key and ca:
            return security_from(tls=TLSConfig(cert, key, ca))
        if secret_file:
            return SharedSecret.from_file(secret_file)
    except RaftError as exc:
        raise click.UsageError(str(exc)) from None
    return None


def _security() -> Security:
    """The security chosen with :func:`_security_options` for the running command."""
    ctx = click.get_current_context(silent=True)
    security: Security = ctx.meta.get(_SECURITY) if ctx is not None else None
    return security


def _security_kwargs(security: Security) -> dict[str, Any]:
    """``tls=`` or ``secret=`` for :func:`raftlib.connect` and friends."""
    if security is None:
        return {}
    return {"tls": security} if isinstance(security, TLSConfig) else {"secret": security}


def _run(coro: Any) -> Any:
    """Run ``coro``; turn raftlib errors into a clear message and exit code 1."""
    try:
        return asyncio.run(coro)
    except RaftError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    except BrokenPipeError:
        raise  # the output's reader went away (`| head`): click ends the command quietly
    except OSError as exc:
        raise click.ClickException(str(exc)) from None


def _to_jsonable(value: Any) -> Any:
    """``value`` as standard JSON can show it: bytes as text (or ``base64:...``),
    map keys as strings (those that are not text as JSON writes them:
    ``"null"``, ``"true"``, ``"1.5"``), and NaN and the infinities as
    ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (JSON has no literal for
    them). Call it within :func:`_deep_enough` for values nested deeply."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode()
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, dict):
        return {_json_key(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


def _json_key(key: Any) -> str:
    shown = _to_jsonable(key)
    return shown if isinstance(shown, str) else json.dumps(shown)


@contextlib.contextmanager
def _deep_enough() -> Iterator[None]:
    """Room on the stack for values nested as deep as msgpack allows (1,024
    levels: each takes two frames of :func:`_to_jsonable` and one of the
    JSON encoder), more than Python's default recursion limit."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(previous + 4 * 1024)
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


def _json_text(value: Any) -> str:
    """``value`` (a result or an event) as one line of standard JSON."""
    with _deep_enough():
        return json.dumps(_to_jsonable(value), sort_keys=True)


def _echo(value: Any, as_json: bool) -> None:
    if as_json or not isinstance(value, str):
        click.echo(_json_text(value))
    else:
        click.echo(value)


def _parse_value(text: str, as_string: bool) -> Any:
    """A value from the command line: JSON if it parses (``3``, ``"x"``,
    ``[1,2]``) to a value the store keeps, else the text.

    How deep json decodes depends on the Python version (3.11 stops near its
    recursion limit, 3.13 goes thousands of levels deeper), so the depth the
    store keeps decides instead: the same text gives the same value on all."""
    from .kv import _too_deep

    if as_string:
        return text
    try:
        with _deep_enough():
            value = json.loads(text, parse_constant=_not_json, parse_float=_finite_float, parse_int=_storable_int)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json decodes
        return text
    return text if _too_deep(value) else value


def _not_json(constant: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (Python's json reads them)."""
    raise ValueError(f"{constant} is not JSON")


def _storable_int(text: str) -> int:
    """An int msgpack can encode (-2**63 to 2**64 - 1); others are not numbers we can store."""
    value = int(text)
    if not -(2**63) <= value < 2**64:
        raise ValueError(f"{text} is out of range")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: too large for a float, so not a number we can store
        raise ValueError(f"{text} is out of range")
    return value


# -- serve ---------------------------------------------------------------------------------------


def _name_address(part: str) -> tuple[str, str]:
    """``NAME=ADDRESS`` as a pair, the address checked."""
    name, sep, address = part.strip().partition("=")
    if not sep or not name or not address:
        raise click.BadParameter(f"expected NAME=ADDRESS, got {part.strip()!r}")
    _member_address(address)
    return name, address


def _member_address(address: str) -> None:
    """Check ``address`` as a member's, which every other member must reach as it is."""
    from .transport.tcp import parse_address

    _addresses(address)
    endpoint = parse_address(address)
    if endpoint.kind == "unix" and not os.path.isabs(endpoint.host):
        raise click.BadParameter(f"{address} is a relative path, which each member would look for in its own "
                                 f"working directory; give the absolute path, as in "
                                 f"unix:{os.path.abspath(endpoint.host)}")


def _initial_cluster(text: str) -> dict[str, str]:
    return dict(_name_address(part) for part in text.split(","))


@main.command()
@click.option("--name", required=True, help="This member's name, unique in the cluster.")
@click.option("--listen", "listen", required=True, metavar="ADDR",
              help="Address to listen on and to be reached at (host:port or unix:/path).")
@click.option("--advertise", default=None, metavar="ADDR",
              help="The address the others should use, if not --listen (a proxy or NAT in front).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the log (LMDB) and snapshots live; a restart on it resumes.")
@click.option("--memory", is_flag=True, help="Keep everything in memory (an ephemeral member).")
@click.option("--initial-cluster", default=None, metavar="NAME=ADDR,...",
              help="Found a new cluster with these members (ignored once this member has a log).")
@click.option("--join", "join_seeds", default=None, metavar="ADDR[,ADDR]",
              help="Join a running cluster through any of these members.")
@click.option("--learner", is_flag=True, help="With --join: join as a learner (a non-voting member).")
@click.option("--join-timeout", type=_Seconds(min=0, min_open=True), default=120.0, show_default=True,
              metavar="SECONDS", help="With --join: give up if not a member after this long.")
@click.option("--election-timeout-ms", type=click.IntRange(20, 60_000), default=None,
              help="Minimum election timeout (default 400 ms with 10 ms ticks).")
@click.option("--log-level", type=_LOG_LEVELS, default="info", show_default=True,
              help="How much to log (on stderr).")
@_security_options
def serve(name: str, listen: str, advertise: str | None, data_dir: str | None, memory: bool, initial_cluster: str | None,
          join_seeds: str | None, learner: bool, join_timeout: float, election_timeout_ms: int | None,
          log_level: str) -> None:
    """Run a member of the built-in key-value service (raftlib.kv).

    SIGTERM or SIGINT stops it cleanly: a leader first hands leadership to
    the most up-to-date follower. Start it again with the same --data-dir to
    resume. With --cert/--key/--ca, SIGHUP reads the TLS files again (new
    connections use them).
    """
    logging.basicConfig(level=log_level.upper(), format=f"%(asctime)s {name} %(name)s %(levelname)s %(message)s")
    if (data_dir is None) == (not memory):
        raise click.UsageError("give either --data-dir or --memory")
    if initial_cluster and join_seeds:
        raise click.UsageError("--initial-cluster founds a cluster and --join joins one: give only one")
    if learner and not join_seeds:
        raise click.UsageError("--learner needs --join")
    given = click.get_current_context().get_parameter_source("join_timeout")
    if given not in (None, click.core.ParameterSource.DEFAULT) and not join_seeds:
        raise click.UsageError("--join-timeout needs --join")
    members = _initial_cluster(initial_cluster) if initial_cluster else None
    if members is not None and name not in members:
        raise click.UsageError(f"--initial-cluster must include this member ({name})")
    for flag, address in (("--listen", listen), ("--advertise", advertise)):
        if address is not None and len(_addresses(address)) != 1:
            raise click.BadParameter("give one address", param_hint=flag)
    seeds = _addresses(join_seeds) if join_seeds else None
    config = Config()
    if election_timeout_ms is not None:
        ticks = max(4, round(election_timeout_ms / (config.tick_interval * 1000)))
        config = dataclasses.replace(config, election_ticks=ticks, heartbeat_ticks=max(1, ticks // 8))
    _run(_serve(name, listen, advertise, data_dir, members, seeds, not learner, join_timeout, config))


async def _serve(name: str, listen: str, advertise: str | None, data_dir: str | None,
                 members: dict[str, str] | None, seeds: list[str] | None, voter: bool, join_timeout: float,
                 config: Config) -> None:
    from .kv import KVStateMachine
    from storage_adapters import MemoryStorage

    security = _security()
    storage = MemoryStorage() if data_dir is None else None
    # The handlers go in before starting: a join can wait for minutes, and a
    # SIGTERM then must stop the joining peer as cleanly as one later does.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if _startup.interrupted():  # Ctrl-C while the command was loading: stop before starting
        stop.set()
    if isinstance(security, TLSConfig):
        loop.add_signal_handler(signal.SIGHUP, _reload_tls, security, name)
    def announce(asking: bool) -> None:
        if asking:
            click.echo(f"{name} joining the cluster through {', '.join(seeds or [])} "
                       f"(giving up after {join_timeout:g} s)", err=True)
        else:
            click.echo(f"{name} restarting as a member of its cluster (its data directory says so); "
                       f"not joining again", err=True)

    async def starting() -> Peer:
        """start_peer, then with --join what raftlib.join does once started."""
        peer = await start_peer(KVStateMachine, name=name, address=listen, data_dir=data_dir, storage=storage,
                                config=config, advertise=advertise, **_security_kwargs(security))
        if seeds:
            await _join_started(peer, seeds, voter, join_timeout, announce)
        return peer

    peer = await _unless_stopped(starting(), stop)
    if peer is None:  # join and start_peer stop the peer they started when cancelled
        click.echo(f"{name} stopped", err=True)
        return
    try:
        if members and peer.status()["last_index"] == 0:
            # Only a member with an empty log founds the cluster. Later, the
            # configuration may have changed (members joined or left), and
            # set_configuration would move the cluster back to these members.
            await peer.set_configuration(members)
        click.echo(f"{name} serving on {peer.address}", err=True)
        stopped = loop.create_task(peer._stopped.wait())
        signalled = loop.create_task(stop.wait())
        await asyncio.wait([stopped, signalled], return_when=asyncio.FIRST_COMPLETED)
        for task in (stopped, signalled):
            task.cancel()
        if peer._fatal is not None:
            raise click.ClickException(f"{name} stopped after a fatal error: {peer._fatal}")
    finally:
        await peer.stop()
        click.echo(f"{name} stopped", err=True)


async def _unless_stopped(starting: Any, stop: asyncio.Event) -> Any:
    """Await ``starting``; cancel it and return ``None`` if ``stop`` is set first."""
    task = asyncio.ensure_future(starting)
    signalled = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, signalled], return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait([task])
    # A task that finished before the cancellation took gives its peer, and
    # the caller stops it at once: stop is set.
    return None if task.cancelled() else task.result()


def _reload_tls(tls: TLSConfig, name: str) -> None:
    log = logging.getLogger("raftlib.cli")
    try:
        tls.reload()
    except RaftError as exc:
        log.error("%s: TLS files not reloaded, the old ones stay in use: %s", name, exc)
    else:
        log.info("%s: TLS certificate, key and CA reloaded", name)


# -- kv and scope ----------------------------------------------------------------------------------


def _utf8(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Refuse text that is not valid UTF-8 (Python keeps undecodable bytes of
    an argument as surrogates, which no member could decode)."""
    for text in value if isinstance(value, tuple) else (value,):  # nargs=-1 gives a tuple
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise click.BadParameter(f"{ascii(text)} is not valid UTF-8 text") from None
    return value


@main.group()
def kv() -> None:
    """Read and write keys of the built-in key-value service."""


async def _with_kv(cluster: str, timeout: float, fn: Any, *, writes: bool = True) -> Any:
    """``await fn(client)`` with a KVClient; one that only reads opens no
    session (that takes a majority), so stale reads work without one."""
    from .kv import KVClient

    client = await KVClient.connect(_addresses(cluster), timeout=timeout, session=writes,
                                    **_security_kwargs(_security()))
    try:
        return await fn(client)
    finally:
        await client.close()


def _scope_option(fn: Any) -> Any:
    return click.option("--scope", default="default", show_default=True, callback=_utf8,
                        help="The scope the key lives in.")(fn)


_NUMBER_LIKE = re.compile(r"-\.?[0-9]")


class _ValueCommand(click.Command):
    """A command taking values that may be negative numbers, which click
    reads as options: its usage error says how to pass them."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            if _NUMBER_LIKE.match(exc.option_name):
                exc.message = (f"{exc.message} A value that starts with '-' goes after '--', which ends the "
                               f"options (put them before it), as in: kv put KEY -- -5")
            raise


def _file_text(path: str, flag: str) -> str:
    """The whole content of ``path`` (``-``: standard input) as UTF-8 text,
    for values too large for the command line (which the OS limits to about
    128 KiB an argument)."""
    try:
        with click.open_file(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror or exc}", param_hint=flag) from None
    try:
        text: str = data.decode("utf-8")
    except UnicodeDecodeError:
        raise click.BadParameter(f"{path} is not valid UTF-8 text", param_hint=flag) from None
    return text


def _check_argument_or_file(argument: str | None, path: str | None, name: str, flag: str) -> None:
    """Refuse unless exactly one of the argument ``name`` and ``flag`` is given."""
    if argument is not None and path is not None:
        raise click.UsageError(f"give {name} or {flag}, not both")
    if argument is None and path is None:
        raise click.UsageError(f"give {name} or {flag}")


def _argument_or_file(argument: str | None, path: str | None, name: str, flag: str) -> str:
    """The value given as the argument ``name`` or read from ``flag``'s file: exactly one of them."""
    _check_argument_or_file(argument, path, name, flag)
    return _file_text(path, flag) if path is not None else str(argument)


def _value_file_option(flag: str, name: str, dest: str = "value_file") -> Callable[[Any], Any]:
    return click.option(
        flag, dest, type=click.Path(dir_okay=False, allow_dash=True), default=None, metavar="PATH",
        help=f"Read {name} from the file PATH ('-': standard input) instead of the command line, whose "
             f"arguments the OS limits to about 128 KiB. The whole content is the value, read as UTF-8 text; "
             f"it is parsed as {name} on the command line would be.")


@kv.command("put", cls=_ValueCommand)
@click.argument("key", callback=_utf8)
@click.argument("value", required=False, callback=_utf8)
@_value_file_option("--value-file", "VALUE")
@click.option("--string", "as_string", is_flag=True, help="Store VALUE as text even if it parses as JSON.")
@_scope_option
@_cluster_option
@_security_options
@_json_option
@_timeout_option
def kv_put(key: str, value: str | None, value_file: str | None, as_string: bool, scope: str, cluster: str,
           as_json: bool, timeout: float) -> None:
    """Set KEY to VALUE (JSON if it parses as JSON, else text); print the new version."""
    text = _argument_or_file(value, value_file, "VALUE", "--value-file")
    version = _run(_with_kv(cluster, timeout, lambda c: c.put(key, _parse_value(text, as_string), scope=scope)))
    _echo({"key": key, "scope": scope, "version": version} if as_json else f"version {version}", as_json)


def _consistency_option(fn: Any) -> Any:
    return click.option(
        "--consistency", type=click.Choice(["linearizable", "lease", "stale"]), default="linearizable",
        show_default=True,
        help="linearizable reflects every write that finished before the read; lease and stale answer from a "
             "member's state, possibly behind.",
    )(fn)


@kv.command("get")
@click.argument("key", callback=_utf8)
@_consistency_option
@_scope_option
@_cluster_option
@_security_options
@_json_option
@_timeout_option
def kv_get(key: str, consistency: str, scope: str, cluster: str, as_json: bool, timeout: float) -> None:
    """Print KEY's value (as JSON). Exits with status 1 if the key does not exist."""
    item = _run(_with_kv(cluster, timeout, lambda c: c.item(key, scope=scope, consistency=consistency),
                         writes=False))
    if as_json:
        _echo(None if item is None else {"key": key, "scope": scope, "value": item.value, "version": item.version},
              True)
    elif item is not None:
        _echo(item.value, True)
    if item is None:
        if not as_json:
            click.echo(f"key {key!r} not found in scope {scope!r}", err=True)
        sys.exit(1)


@kv.command("delete")
@click.argument("key", callback=_utf8)
@_scope_option
@_cluster_option
@_security_options
@_json_option
@_timeout_option
def kv_delete(key: str, scope: str, cluster: str, as_json: bool, timeout: float) -> None:
    """Delete KEY; print whether it existed."""
    existed = _run(_with_kv(cluster, timeout, lambda c: c.delete(key, scope=scope)))
    _echo({"key": key, "scope": scope, "deleted": existed} if as_json else ("deleted" if existed else "not found"),
          as_json)


@kv.command("cas", cls=_ValueCommand)
@click.argument("key", callback=_utf8)
@click.argument("expected", required=False, callback=_utf8)
@click.argument("new", required=False, callback=_utf8)
@_value_file_option("--expected-file", "EXPECTED", "expected_file")
@_value_file_option("--new-file", "NEW")
@click.option("--expected-version", type=click.IntRange(min=0, max=2**64 - 1), default=None,
              help="Compare the version instead of the value (0: the key must not exist); EXPECTED is ignored.")
@click.option("--string", "as_string", is_flag=True, help="Take EXPECTED and NEW as text.")
@_scope_option
@_cluster_option
@_security_options
@_json_option
@_timeout_option
def kv_cas(key: str, expected: str | None, new: str | None, expected_file: str | None, value_file: str | None,
           expected_version: int | None, as_string: bool, scope: str, cluster: str, as_json: bool,
           timeout: float) -> None:
    """Set KEY to NEW only if its value is EXPECTED (null: the key is absent). Exits 1 if it was not.

    --expected-file and --new-file take the place of EXPECTED and NEW: with
    --expected-file, the one value after KEY is NEW."""
    expected_text, new_text = _cas_texts(expected, new, expected_file, value_file, expected_version)
    # With --expected-version the version is compared and EXPECTED is only a
    # placeholder: KVClient.cas takes one or the other, never both.
    expected_value = None if expected_version is not None else _parse_value(expected_text, as_string)
    swapped = _run(_with_kv(cluster, timeout, lambda c: c.cas(
        key, expected_value, _parse_value(new_text, as_string), scope=scope, expected_version=expected_version)))
    _echo({"key": key, "scope": scope, "swapped": swapped} if as_json else ("swapped" if swapped else "not swapped"),
          as_json)
    if not swapped:
        sys.exit(1)


def _cas_texts(expected: str | None, new: str | None, expected_file: str | None, new_file: str | None,
               expected_version: int | None) -> tuple[str, str]:
    """``kv cas``'s EXPECTED and NEW texts, from the arguments or the files
    that take their places; every usage error comes before a file is read."""
    if expected_file is not None and new is None:
        expected, new = None, expected  # the one value after KEY is NEW
    if expected_file is not None and expected_version is not None:
        raise click.UsageError("give --expected-file or --expected-version, not both "
                               "(with --expected-version the value is not compared)")
    if expected_file == "-" and new_file == "-":
        raise click.UsageError("--expected-file and --new-file cannot both read standard input ('-'): "
                               "give a file for one of them")
    _check_argument_or_file(expected, expected_file, "EXPECTED", "--expected-file")
    _check_argument_or_file(new, new_file, "NEW", "--new-file")
    return (_argument_or_file(expected, expected_file, "EXPECTED", "--expected-file"),
            _argument_or_file(new, new_file, "NEW", "--new-file"))


@kv.command("list")
@click.option("--prefix", default="", callback=_utf8, help="Only keys starting with this.")
@_consistency_option
@_scope_option
@_cluster_option
@_security_options
@_json_option
@_timeout_option
def kv_list(prefix: str, consistency: str, scope: str, cluster: str, as_json: bool, timeout: float) -> None:
    """List the keys of a scope."""
    keys = _run(_with_kv(cluster, timeout, lambda c: c.list(scope, prefix, consistency=consistency), writes=False))
    if as_json:
        _echo(keys, True)
    else:
        for key in keys:
            click.echo(key)


@kv.command("watch")
@click.option("--prefix", default="", callback=_utf8, help="Only keys starting with this.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many events.")
@click.option("--from-revision", type=click.IntRange(min=1), default=None,
              help="Start at this revision instead of now.")
@click.option("--scope", default="default", show_default=True, callback=_utf8,
              help="The scope to watch (it need not exist yet).")
@click.option("--all-scopes", is_flag=True, help="Watch every scope instead of one (each event names its scope).")
@_cluster_option
@_security_options
@click.option("--timeout", type=_Seconds(min=0.1), default=10.0, show_default=True,
              help="Seconds allowed to connect, and to find another member when the one followed goes away "
                   "(the watch then ends with Unavailable, naming the revision to watch from).")
def kv_watch(prefix: str, count: int | None, from_revision: int | None, scope: str, all_scopes: bool,
             cluster: str, timeout: float) -> None:
    """Print committed changes of a scope (or of every scope) as JSON lines, following the cluster."""
    given = click.get_current_context().get_parameter_source("scope")
    if all_scopes and given not in (None, click.core.ParameterSource.DEFAULT):
        raise click.UsageError("give --scope or --all-scopes, not both")
    watched: str | None = None if all_scopes else scope

    async def follow(client: Any) -> None:
        seen = 0
        async for event in client.watch(watched, prefix, from_revision=from_revision):
            # Not dataclasses.asdict: it copies the value recursively.
            click.echo(_json_text({f.name: getattr(event, f.name) for f in dataclasses.fields(event)}))
            seen += 1
            if count is not None and seen >= count:
                return

    try:
        _run(_with_kv(cluster, timeout, follow, writes=False))
    except KeyboardInterrupt:
        pass


@main.group()
def scope() -> None:
    """Create, delete and list key-value scopes."""


@scope.command("create")
@click.argument("name", callback=_utf8)
@_cluster_option
@_security_options
@_timeout_option
def scope_create(name: str, cluster: str, timeout: float) -> None:
    """Create scope NAME."""
    _run(_with_kv(cluster, timeout, lambda c: c.create_scope(name)))
    click.echo(f"created {name}")


@scope.command("delete")
@click.argument("name", callback=_utf8)
@_cluster_option
@_security_options
@_timeout_option
def scope_delete(name: str, cluster: str, timeout: float) -> None:
    """Delete scope NAME and every key in it."""
    _run(_with_kv(cluster, timeout, lambda c: c.delete_scope(name)))
    click.echo(f"deleted {name}")


@scope.command("list")
@_consistency_option
@_cluster_option
@_security_options
@_json_option
@_timeout_option
def scope_list(consistency: str, cluster: str, as_json: bool, timeout: float) -> None:
    """List the scopes."""
    names = _run(_with_kv(cluster, timeout, lambda c: c.scopes(consistency=consistency), writes=False))
    if as_json:
        _echo(names, True)
    else:
        for name in names:
            click.echo(name)


# -- status and members --------------------------------------------------------------------------


async def _statuses(addresses: list[str], timeout: float,
                    metrics: bool = False) -> list[tuple[str, dict[str, Any] | None, str]]:
    """``(address, status or None, error)`` for every given or discovered member;
    with ``metrics``, each status has its member's ``metrics`` too (``None``
    from a member that does not answer them)."""
    from .rpc import RpcConnection

    results: dict[str, tuple[dict[str, Any] | None, str]] = {}
    todo = list(addresses)
    while todo:
        address = todo.pop(0)
        if address in results:
            continue
        try:
            conn = await RpcConnection.open(address, timeout=timeout, security=_security())
            try:
                status = await conn.call("status", {}, timeout=timeout)
                if metrics:
                    try:
                        status["metrics"] = await conn.call("metrics", {}, timeout=timeout)
                    except RaftError:  # a member from before metrics existed
                        status["metrics"] = None
            finally:
                await conn.close()
        except RaftError as exc:
            results[address] = (None, str(exc))
            continue
        results[address] = (status, "")
        for member in status.get("members", {}).values():
            if member.get("address") not in results:
                todo.append(member["address"])
    # A member reached at two spellings of its address (one given, the
    # other from the membership) is listed once, at the address it gives.
    rows: dict[str, tuple[str, dict[str, Any] | None, str]] = {}
    for address, (status, error) in results.items():
        key = f"name {status['name']}" if status is not None else f"address {address}"
        if key not in rows:
            rows[key] = (str(status.get("address", address)) if status is not None else address, status, error)
    return list(rows.values())


@main.command()
@_cluster_option
@_security_options
@_json_option
@click.option("--timeout", type=_Seconds(min=0.1), default=3.0, show_default=True,
              help="Seconds allowed per member.")
@click.option("--metrics", "with_metrics", is_flag=True,
              help="Also show each member's counters, gauges and timings (Peer.metrics()).")
def status(cluster: str, as_json: bool, timeout: float, with_metrics: bool) -> None:
    """Show every member: role, term, commit and applied index, last contact, lag.

    --json adds each member's cluster ID (fixed when the cluster was founded)."""
    rows = _run(_statuses(_addresses(cluster), timeout, with_metrics))
    reachable = [s for _, s, _ in rows if s is not None]
    if not reachable:
        raise click.ClickException("no member could be reached: " + "; ".join(f"{a}: {e}" for a, _, e in rows))
    leader_view = next((s for s in reachable if s["role"] == "leader"), None)
    members = (leader_view or reachable[0])["members"]
    table = []
    for address, st, error in rows:
        name = st["name"] if st else next((n for n, m in members.items() if m["address"] == address), "?")
        view = members.get(name, {})
        table.append({
            "name": name, "address": address,
            "role": st["role"] if st else "unreachable",
            "member": view.get("role", "not a member"),
            "term": st["term"] if st else None,
            "commit": st["commit_index"] if st else None,
            "applied": st["applied_index"] if st else None,
            "last_contact": view.get("last_contact") if leader_view else None,
            "lag": view.get("lag") if leader_view else None,
            "cluster_id": st.get("cluster_id") if st else None,
            "error": error or None,
        })
        if with_metrics:
            table[-1]["metrics"] = st.get("metrics") if st else None
    table.sort(key=lambda r: str(r["name"]))
    if as_json:
        _echo(table, True)
        return
    header = ["NAME", "ADDRESS", "ROLE", "MEMBER", "TERM", "COMMIT", "APPLIED", "LAST-CONTACT", "LAG"]
    lines = [header] + [[
        str(r["name"]), str(r["address"]), str(r["role"]), str(r["member"]), _cell(r["term"]), _cell(r["commit"]),
        _cell(r["applied"]), "-" if r["last_contact"] is None else f"{r['last_contact'] * 1000:.0f} ms",
        _cell(r["lag"]),
    ] for r in table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    if leader_view is None:
        click.echo("no leader among the reachable members", err=True)
    ids = sorted({r["cluster_id"] for r in table if r["cluster_id"]})
    if len(ids) > 1:
        click.echo(f"the members belong to different clusters (cluster IDs {', '.join(ids)}): "
                   f"check the addresses given to --cluster", err=True)
    if with_metrics:
        for r in table:
            click.echo(f"\n{r['name']} metrics:")
            values = _metric_lines(r["metrics"]) if r["metrics"] else [("-", "")]
            width = max(len(key) for key, _ in values)
            for key, value in values:
                click.echo(f"  {key.ljust(width)}  {value}".rstrip())


def _metric_lines(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """``(name, value)`` lines for Peer.metrics(): counters and gauges one
    per line (``writes_failed.not_leader``), timings as their count, sum and
    maximum (the buckets are in the --json output)."""
    lines: list[tuple[str, str]] = []
    for group in ("counters", "gauges"):
        for key, value in metrics.get(group, {}).items():
            if isinstance(value, dict):
                lines += [(f"{key}.{sub}", str(n)) for sub, n in value.items()]
            else:
                lines.append((key, str(value)))
    for key, timing in metrics.get("timings", {}).items():
        lines.append((key, f"count={timing['count']} sum={timing['sum']:.6f} s max={timing['max']:.6f} s"))
    return lines


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


@main.group()
def members() -> None:
    """Change the membership of a running cluster."""


async def _call_any(addresses: list[str], op: str, args: dict[str, Any], timeout: float) -> Any:
    """Send a request to the first member that answers (it forwards to the leader)."""
    from .errors import ConnectionLost, Timeout, Unavailable
    from .rpc import RpcConnection

    last: Exception | None = None
    for address in addresses:
        try:
            conn = await RpcConnection.open(address, timeout=min(timeout, 5.0), security=_security())
        except Unavailable as exc:
            last = exc
            continue
        try:
            # A member answers a status at once; one that takes the connection
            # but does not (a paused process) must not use up the whole timeout.
            try:
                await conn.call("status", {}, timeout=min(timeout, 5.0))
            except (Timeout, ConnectionLost) as exc:
                last = exc
                continue
            return await conn.call(op, {**args, "timeout": timeout}, timeout=timeout + 1)
        finally:
            await conn.close()
    raise Unavailable(f"no member answered: {last}")


@members.command("add")
@click.argument("name", callback=_utf8)
@click.argument("address")
@click.option("--learner", is_flag=True, help="Add a learner (a non-voting member).")
@_force_option
@_cluster_option
@_security_options
@click.option("--timeout", type=_Seconds(min=0.1), default=60.0, show_default=True,
              help="Seconds allowed for the change to commit (a new voter catches up as a learner first).")
def members_add(name: str, address: str, learner: bool, force: bool, cluster: str, timeout: float) -> None:
    """Add NAME at ADDRESS (it must be running: `raftlib serve` without --initial-cluster)."""
    _member_address(address)
    _run(_call_any(_addresses(cluster), "add_member",
                   {"name": name, "address": address, "voter": not learner, "force": force}, timeout))
    click.echo(f"added {name} as a {'learner' if learner else 'voter'}")


@members.command("remove")
@click.argument("name", callback=_utf8)
@_force_option
@_cluster_option
@_security_options
@click.option("--timeout", type=_Seconds(min=0.1), default=30.0, show_default=True,
              help="Seconds allowed for the removal to commit.")
def members_remove(name: str, force: bool, cluster: str, timeout: float) -> None:
    """Remove NAME from the cluster (stop its process afterwards). Removing a
    name that is not a member changes nothing."""
    if _run(_call_any(_addresses(cluster), "remove_member", {"name": name, "force": force}, timeout)):
        click.echo(f"removed {name}")
    else:
        click.echo(f"{name} is not a member; nothing changed")


@members.command("set")
@click.argument("pairs", nargs=-1, required=True, metavar="NAME=ADDRESS...", callback=_utf8)
@_force_option
@_cluster_option
@_security_options
@click.option("--timeout", type=_Seconds(min=0.1), default=120.0, show_default=True,
              help="Seconds allowed for the whole change (each new voter catches up as a learner first).")
def members_set(pairs: tuple[str, ...], force: bool, cluster: str, timeout: float) -> None:
    """Set the whole membership: the voters NAME=ADDRESS given.

    The change is made in safe single steps: new members (running: `raftlib
    serve` without --initial-cluster) join as learners and are promoted once
    caught up, then the others are removed, the leader last. Learners not
    listed are removed too. Members already as listed are left alone, so
    asking again changes nothing. A membership change under way finishes
    first (waiting counts towards --timeout)."""
    target: dict[str, str] = {}
    for part in pairs:
        name, address = _name_address(part)
        if name in target:
            raise click.BadParameter(f"{name} is given twice")
        target[name] = address
    changed = _run(_call_any(_addresses(cluster), "set_configuration", {"members": target, "force": force},
                             timeout))
    names = ", ".join(sorted(target))
    # An older member answers None: it does not say whether anything changed.
    click.echo(f"{names} are already the members; nothing changed" if changed is False
               else f"members are now {names}")


@members.command("transfer-leader")
@click.option("--to", "to", default=None, help="The member to hand over to (default: the most up-to-date one).")
@_cluster_option
@_security_options
@click.option("--timeout", type=_Seconds(min=0.1), default=10.0, show_default=True,
              help="Seconds allowed for the new leader to take over.")
def members_transfer(to: str | None, cluster: str, timeout: float) -> None:
    """Hand leadership to another voter without an election timeout."""

    async def transfer() -> tuple[Any, bool]:
        from .errors import NotLeader

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # During an election no member leads, or one that just lost leading
            # still says it does: ask again until the timeout, as other commands retry.
            left = deadline - loop.time()
            rows = await _statuses(_addresses(cluster), max(min(left, 3.0), 0.1))
            leader = next((s for _, s, _ in rows if s is not None and s["role"] == "leader"), None)
            try:
                if leader is None:
                    raise NotLeader(None)
                if to is not None and to == leader["name"]:
                    return to, False  # what was asked for holds already
                left = max(deadline - loop.time(), 0.1)
                return await _call_any([leader["address"]], "transfer_leadership", {"to": to}, left), True
            except NotLeader:
                if loop.time() + 0.1 >= deadline:
                    raise
                await asyncio.sleep(0.1)

    new, moved = _run(transfer())
    click.echo(f"leader is now {new}" if moved else f"{new} is already the leader; nothing changed")


# -- certs ---------------------------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@main.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for ca.pem, ca-key.pem and NAME.pem, NAME-key.pem (created if needed).")
@click.option("--names", required=True, metavar="NAME[,NAME]",
              help="One certificate per name: the members, and one or more clients (e.g. s1,s2,s3,client).")
@click.option("--ip", "ips", multiple=True, metavar="IP[,IP]",
              help="IP addresses the certificates name (repeatable; default 127.0.0.1 and ::1).")
@click.option("--dns", "dns", multiple=True, metavar="HOST[,HOST]",
              help="Extra DNS names the certificates name, besides NAME itself (repeatable; default localhost).")
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True,
              help="How long the certificates are valid.")
def certs(out_dir: str, names: str, ips: tuple[str, ...], dns: tuple[str, ...], days: int) -> None:
    """Make a test CA and a certificate and key per NAME, for --cert/--key/--ca.

    An existing ca.pem and ca-key.pem in --out are reused, so certificates
    made later for new members are signed by the same CA. Keep ca-key.pem
    away from the members: whoever has it can admit anyone.
    """
    from .security import make_certificates

    wanted = _csv(names)
    if not wanted:
        raise click.BadParameter("give at least one name", param_hint="--names")
    ip_list = tuple(ip for text in ips for ip in _csv(text)) or ("127.0.0.1", "::1")
    dns_list = tuple(host for text in dns for host in _csv(text)) or ("localhost",)
    try:
        made = make_certificates(out_dir, wanted, ips=ip_list, dns=dns_list, days=days)
    except RaftError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write the certificates to {out_dir}: {exc.strerror or exc}") from None
    some = next(iter(made.values()))
    click.echo(f"CA: {some.ca}")
    for name, tls in made.items():
        click.echo(f"{name}: --cert {tls.cert} --key {tls.key} --ca {tls.ca}")
