"""A client for processes outside the cluster: ``await raftlib.connect([...])``.

The client talks to any member over the peers' own port (see
:mod:`raftlib.rpc`); members forward to the leader, and the client moves its
connection to the leader once it knows where it is, following leader
changes. Every write goes through a client session (:mod:`raftlib.sessions`),
so it is retried after a timeout or a lost connection without ever being
applied twice. Errors keep the distinction that matters:

* :class:`~raftlib.errors.Unavailable`: the write was certainly **not**
  applied;
* :class:`~raftlib.errors.OutcomeUnknown` (here a
  :class:`~raftlib.errors.WriteTimeout`): it may have been, and every retry
  within ``timeout`` failed to find out.

A :class:`~raftlib.errors.SessionExpired` answer never reaches the caller:
the client opens a new session and sends the write again in it, unless an
earlier attempt may have been applied (then it is a ``WriteTimeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

from . import codec
from .config import check_timeout
from .errors import (
    AuthenticationFailed,
    CommandFailed,
    CommandTooLarge,
    ConfigError,
    ConnectionLost,
    LeadershipLost,
    LogCompacted,
    NotLeader,
    Overloaded,
    OutcomeUnknown,
    PeerStopped,
    ProposalDropped,
    RaftError,
    SessionExpired,
    StorageFull,
    Timeout,
    Unavailable,
    WriteTimeout,
)
from .rpc import RpcConnection
from .security import Security, SharedSecret, TLSConfig, security_from
from .transport.framing import wire_problem
from .transport.tcp import parse_address
from .types import Change

__all__ = ["Client", "connect"]

_log = logging.getLogger("raftlib.client")

_NOT_APPLIED = (NotLeader, ProposalDropped, PeerStopped, Unavailable, Overloaded, StorageFull)
"""Errors after which a request certainly did not take effect (retried with back-off)."""
_UNKNOWN = (OutcomeUnknown, Timeout)
"""Errors after which it may have."""

_T = TypeVar("_T")
_Call = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""``call(op, args)``: make one request to a member and return its answer."""


def _refused_for_good(exc: BaseException) -> bool:
    """Whether every member refused this client in a way that waiting does
    not change: its credentials, or the permissions of their Unix sockets."""
    return isinstance(exc, AuthenticationFailed) or isinstance(exc.__cause__, PermissionError)


class _OutOfTime(Exception):
    """The time allowed ran out between two requests of :meth:`Client._on_one_member`."""


class Client:
    """A connection to a raftlib cluster. Create it with :func:`connect`.

    ``write``, ``read`` and ``listen`` may be used concurrently from many
    tasks; they share one connection and one session.
    """

    def __init__(self, addresses: Sequence[str], *, timeout: float, connect_timeout: float, max_frame_size: int,
                 security: Security = None, attempt_timeout: float = 5.0) -> None:
        self.addresses = list(addresses)
        self._security = security
        self.timeout = timeout
        """Default time allowed for each call (including its retries)."""
        self._attempt_timeout = attempt_timeout
        """Time one member has to answer one attempt of a write or read."""
        self._connect_timeout = connect_timeout
        self._max_frame_size = max_frame_size
        self._conn: RpcConnection | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self._renewing: asyncio.Lock = asyncio.Lock()
        self._preferred: str | None = None
        self._conn_to_replace = False
        """The leader is elsewhere: reconnect there before the next call."""
        self._avoid: str | None = None
        """The member that last failed to find a leader (tried last)."""
        self._leaderless: RpcConnection | None = None
        """The connection, if the member knew no leader when it was opened."""
        self._silent: dict[str, None] = {}
        """Members that could not be reached, or did not answer, when last
        tried (in that order): tried last, until one answers again."""
        self._unreachable: str | None = None
        """The leader's address, if this client could not connect to it (it
        may advertise an address only the members can reach): the client
        then stays with the member it reached, which forwards its requests."""
        self.client_id = ""
        self._opening: str | None = None
        """A session asked to open whose answer never came (the caller was
        cancelled, or it failed): it may be open. The next session opened
        takes this id, and :meth:`close` closes it, so a client leaves no
        session of its own behind, however many openings it gave up."""
        self._seq = 0
        self._done: set[int] = set()
        self._ack = 0
        self._closed = False

    # -- public API -----------------------------------------------------------------

    @property
    def leader_address(self) -> str | None:
        """The address of the member this client sends to when it is the leader."""
        return self._preferred

    async def write(self, command: Any, timeout: float | None = None) -> Any:
        """Apply ``command`` on the cluster exactly once; return ``handle_write``'s result.

        Retries (at other members, after leader changes) until ``timeout``
        (default: the client's). Raises :class:`~raftlib.errors.CommandFailed`
        if ``handle_write`` raised (the command counts as applied) or
        returned a result that cannot be encoded or sent (the write applied);
        :class:`~raftlib.errors.WriteTimeout` (an ``OutcomeUnknown``) if some
        attempt may have applied it and none could confirm;
        :class:`~raftlib.errors.Unavailable` or another not-applied error if
        it certainly was not applied (:class:`~raftlib.errors.AuthenticationFailed`
        at once if every member refuses this client's credentials); :class:`~raftlib.errors.ConfigError`
        (not applied) if another client wrote with the same sequence number
        in this client's session (both were given the same ``client_id``).
        """
        self._check_open()
        check_timeout(timeout)
        _check_sendable(codec.pack(command, "command"), "command", self._max_frame_size)  # before anything is sent
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        if not self.client_id:  # connected with session=False: the first write opens it
            await self._renew_session("", deadline)
        self._seq += 1
        seq, client = self._seq, self.client_id
        try:
            maybe_applied = False
            last: BaseException | None = None
            backoff = 0.01
            while True:
                if self._closed:
                    if maybe_applied:
                        raise OutcomeUnknown(f"the client was closed while write {seq} was in flight; it may have "
                                             f"been applied (last error: {last})")
                    raise PeerStopped(f"the client was closed before write {seq} was sent; it was not applied")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                conn: RpcConnection | None = None
                try:
                    conn = await self._connection(remaining)
                    left = deadline - loop.time()  # connecting took some of it
                    if left <= 0:
                        continue
                    # A member that does not answer (a hung leader keeps its
                    # connections open) is left after attempt_timeout: the
                    # session makes the retry elsewhere safe.
                    attempt = min(left, self._attempt_timeout)
                    result = await conn.call(
                        "session_write",
                        {"client": client, "seq": seq, "ack": self._ack if client == self.client_id else 0,
                         "command": command, "timeout": attempt},
                        timeout=attempt,
                    )
                    return result
                except SessionExpired as exc:
                    if maybe_applied:
                        raise WriteTimeout(
                            f"the client session expired while write {seq} was being retried; it may have been "
                            f"applied once: {exc}"
                        ) from None
                    await self._renew_session(client, deadline)
                    self._seq += 1
                    seq, client = self._seq, self.client_id
                    last = exc
                    continue
                except _NOT_APPLIED as exc:
                    if _refused_for_good(exc):
                        if maybe_applied:
                            raise WriteTimeout(f"write {seq} may have been applied by an earlier attempt, and "
                                               f"cannot be confirmed: {exc}") from exc
                        raise
                    last = exc
                    self._follow(exc, conn)
                except _UNKNOWN as exc:
                    last = exc
                    maybe_applied = True
                    self._leave(conn)
                    await self._drop_failed(conn)
                await asyncio.sleep(backoff)
                backoff = min(0.5, backoff * 2)
            if maybe_applied:
                raise WriteTimeout(f"write {seq} could not be confirmed within the time allowed; it may have been "
                                   f"applied (last error: {last})")
            if last is None:
                raise Unavailable(f"write {seq} was not applied: its timeout ran out before it could be sent")
            raise Unavailable(f"write {seq} was not applied: no leader could take it in time (last error: {last})")
        finally:
            # Whatever the outcome, this seq is never sent again: count it
            # answered, or ack would stop below it and every member would
            # keep the results of all later writes of the session.
            if client == self.client_id:
                self._answered(seq)

    async def read(self, query: Any, *, consistency: str = "linearizable", timeout: float | None = None) -> Any:
        """Answer ``query`` with the cluster's ``handle_read``.

        ``consistency`` is ``"linearizable"`` (default), ``"lease"`` or
        ``"stale"`` (the state of whichever member answers), as for
        :meth:`raftlib.Peer.read`. Retried until ``timeout``; raises
        :class:`~raftlib.errors.Unavailable` if no member answered, and
        :class:`~raftlib.errors.AuthenticationFailed` at once if every
        member refuses this client's credentials.
        """
        self._check_open()
        check_timeout(timeout)
        _check_sendable(codec.pack(query, "query"), "query", self._max_frame_size)  # before anything is sent
        request = {"query": query, "consistency": consistency}
        return await self._on_one_member(lambda call: call("read", request), "the read", timeout)

    async def listen(self, from_index: int = 0, *, reaching: int | None = None) -> AsyncIterator[Change]:
        """Yield every write the cluster applies, in log order, from
        ``from_index`` on (see :meth:`raftlib.Peer.listen`, also for
        ``reaching``), following the cluster across members and leader
        changes without gaps or repeats.

        A reader that falls far behind is resumed where it stopped reading.
        A member that hangs (its connection stays open, silent) is left once
        the feed has brought neither a change nor one of the keepalives
        members send on a quiet feed for ``attempt_timeout``, and the feed
        resumes at another member the same way.
        Raises :class:`~raftlib.errors.LogCompacted` if the members no
        longer keep changes that old, :class:`~raftlib.errors.Unavailable`
        if no member that knows a leader takes the feed over within the client's timeout of
        finding it lost (or of the first attempt to open it; the message
        names the index to listen from to go on),
        :class:`~raftlib.errors.AuthenticationFailed` (naming it too) at once
        if every member refuses this client's credentials, and
        :class:`~raftlib.errors.ProtocolError` for a change whose command or
        result has map keys that cannot cross the network (the message names
        the index to listen from to go past it).
        """
        self._check_open()
        next_index = from_index
        loop = asyncio.get_running_loop()
        lost_since: float | None = None
        """When the feed was lost (or first asked for): it has the client's timeout from then to find a member."""
        while True:
            conn: RpcConnection | None = None
            if lost_since is None:
                lost_since = loop.time()
            try:
                # A member that knows no leader cannot keep the feed going
                # (it ends it after two election timeouts): only one that
                # knows one takes it over.
                conn = await self._connection(lost_since + self.timeout - loop.time(), leader_required=True)
                lost_since = None  # connected again: the clock of a new loss starts afresh
                request: dict[str, Any] = {"from_index": next_index}
                if reaching is not None:
                    request["reaching"] = reaching
                # The member sends keepalives while it has nothing to send: a
                # feed silent for attempt_timeout is from a hung member.
                stream = conn.stream("listen", request, idle_timeout=self._attempt_timeout)
                async for index, term, command, result, error in stream:
                    if index < next_index:
                        continue
                    next_index = index + 1
                    reaching = None  # found: a feed resumed elsewhere starts at next_index
                    yield Change(index, term, command, result, error)
                return
            except LogCompacted:
                raise
            except Overloaded:
                # This reader fell STREAM_QUEUE_LIMIT items behind the member,
                # which stopped sending, or the member refused the request
                # (too many outstanding on the connection): ask again from
                # the next index (the member still keeps it unless it is
                # older than the backlog, then LogCompacted says so), after a
                # pause that spares a member already overloaded.
                await asyncio.sleep(0.05)
                continue
            except (ConnectionLost, Unavailable, PeerStopped, Timeout) as exc:
                self._check_open()
                if _refused_for_good(exc):
                    raise type(exc)(f"lost the change feed at index {next_index}: {exc}") from exc
                if isinstance(exc, Timeout):
                    self._leave(conn)  # hung: try the other members first
                await self._drop_failed(conn)
                if lost_since is None:
                    lost_since = loop.time()
                if loop.time() - lost_since >= self.timeout:
                    raise Unavailable(
                        f"lost the change feed at index {next_index} and no member could resume it within the "
                        f"client's timeout ({self.timeout:g} s): {exc}"
                    ) from None
                await asyncio.sleep(0.05)

    async def status(self) -> dict[str, Any]:
        """The status (as :meth:`raftlib.Peer.status`) of the member this client
        talks to (another one if it does not answer). Raises
        :class:`~raftlib.errors.Unavailable` if none answers within the client's timeout,
        :class:`~raftlib.errors.AuthenticationFailed` at once if every member
        refuses this client's credentials."""
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        last: BaseException | None = None
        while loop.time() < deadline:
            self._check_open()
            conn: RpcConnection | None = None
            try:
                conn = await self._connection(deadline - loop.time())
                status: dict[str, Any] = await conn.call("status", {}, timeout=max(0.1, deadline - loop.time()))
                return status
            except _NOT_APPLIED + _UNKNOWN as exc:
                if _refused_for_good(exc):
                    raise
                last = exc
                await self._drop_failed(conn)
            await asyncio.sleep(0.05)
        raise Unavailable(f"no member answered a status request in time (last error: {last})")

    async def close(self) -> None:
        """Close the session (best effort, within a second, connecting again
        if the connection was lost) and the connection. Idempotent.

        Calls still running end instead of reconnecting: a write already
        sent raises :class:`~raftlib.errors.OutcomeUnknown`, one not sent
        yet, a read or ``listen`` :class:`~raftlib.errors.PeerStopped`.
        """
        if self._closed:
            return
        self._closed = True
        try:
            sessions = [client_id for client_id in (self.client_id, self._opening) if client_id]
            if sessions:
                with contextlib.suppress(RaftError, OSError, TimeoutError):
                    async with asyncio.timeout(_CLOSE_SESSION_TIMEOUT):
                        conn = self._conn
                        if conn is None or conn.closed:
                            # Lost (a member restarting, a call that timed out):
                            # the session would stay on every member for session_ttl.
                            conn = self._conn = await self._open_any(_CLOSE_SESSION_TIMEOUT)
                        for client_id in sessions:
                            await conn.call("close_session", {"client": client_id})
        finally:
            # Also when cancelled: a second close() returns at once, so this
            # is the only chance to close the connection.
            await self._drop_connection()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise PeerStopped("the client is closed")

    def _answered(self, seq: int) -> None:
        """Remember ``seq`` was answered; move ``ack`` over every answered seq in a row."""
        self._done.add(seq)
        while self._ack + 1 in self._done:
            self._ack += 1
            self._done.discard(self._ack)

    def _follow(self, exc: BaseException, conn: RpcConnection | None) -> None:
        """After a NotLeader naming the leader, talk to it directly next time.
        If member ``conn`` knows no leader, cannot reach it, is stopping or
        has a full disk (it has stopped leading, and the others elect a
        leader), try the other members first."""
        if isinstance(exc, NotLeader) and exc.leader_address:
            if exc.leader_address != self._preferred:
                self._preferred = exc.leader_address
                self._conn_to_replace = True
        elif isinstance(exc, (NotLeader, Unavailable, PeerStopped, StorageFull)) and conn is not None and conn is self._conn:
            self._leave(conn)
            self._conn_to_replace = True

    def _leave(self, conn: RpcConnection | None) -> None:
        """Member ``conn`` did not answer in time, or its connection failed:
        try the other members first when reconnecting."""
        if conn is not None and conn is self._conn:
            self._avoid = conn.address
            if self._preferred == conn.address:
                self._preferred = None

    async def _on_one_member(self, calls: Callable[[_Call], Awaitable[_T]], what: str,
                             timeout: float | None = None) -> _T:
        """Return ``await calls(call)``, where ``call(op, args)`` makes request
        ``op`` and returns its answer, every one of them to the same member.

        When a request fails without taking effect, or gets no answer in
        time (requests made this way must change nothing), ``calls`` starts
        over, at another member if this one is left, until ``timeout``
        (default: the client's) runs out; raises
        :class:`~raftlib.errors.Unavailable` naming ``what`` then. One
        member answers each request within ``attempt_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        last: BaseException | None = None
        backoff = 0.01
        while loop.time() < deadline:
            self._check_open()
            conn: RpcConnection | None = None
            try:
                conn = await self._connection(deadline - loop.time())
                member = conn

                async def call(op: str, args: dict[str, Any]) -> Any:
                    left = deadline - loop.time()  # connecting and earlier requests took some of it
                    if left <= 0:
                        raise _OutOfTime
                    attempt = min(left, self._attempt_timeout)  # as for writes
                    return await member.call(op, {**args, "timeout": attempt}, timeout=attempt)

                return await calls(call)
            except _OutOfTime:
                break
            except _NOT_APPLIED + _UNKNOWN as exc:
                if _refused_for_good(exc):
                    raise
                last = exc
                self._follow(exc, conn)
                if isinstance(exc, _UNKNOWN):
                    self._leave(conn)
                    await self._drop_failed(conn)
            await asyncio.sleep(backoff)
            backoff = min(0.5, backoff * 2)
        if last is None:
            raise Unavailable(f"{what} was not sent: its timeout ran out first")
        raise Unavailable(f"{what} got no answer in time (last error: {last})")

    def _usable(self, conn: RpcConnection | None, leader_required: bool) -> bool:
        return (conn is not None and not conn.closed and not self._conn_to_replace
                and not (leader_required and conn is self._leaderless))

    async def _connection(self, within: float, leader_required: bool = False) -> RpcConnection:
        """The connection to use, opened if needed; raises PeerStopped once the client is closed.
        With ``leader_required``, only to a member that knew a leader when it was opened."""
        self._check_open()
        conn = self._conn
        if self._usable(conn, leader_required):
            assert conn is not None
            return conn
        # Another call may be opening a connection, for as long as its own
        # timeout allows: wait for it only as long as this one's allows, and
        # open one in what is left of it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, within)
        try:
            async with asyncio.timeout_at(deadline):
                await self._connecting.acquire()
        except TimeoutError:
            raise Unavailable("no member could be reached in the time allowed") from None
        try:
            self._check_open()
            conn = self._conn
            if self._usable(conn, leader_required):
                assert conn is not None
                return conn
            self._conn_to_replace = False
            if conn is not None:
                await conn.close()
                self._conn = None
            conn = await self._open_any(deadline - loop.time(), leader_required)
            if self._closed:  # closed meanwhile: nothing may reopen what close() closed
                await conn.close()
                self._check_open()
            self._conn = conn
            return conn
        finally:
            self._connecting.release()

    async def _open_any(self, within: float, leader_required: bool = False) -> RpcConnection:
        """A connection to a member that answers, one that knows a leader
        if any does; with ``leader_required``, only such a one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        first = [self._preferred] if self._preferred else []
        # A member that just failed to find a leader is tried last, and after
        # it those that did not answer at all (each may cost connect_timeout).
        last = [self._avoid] if self._avoid in self.addresses and self._avoid not in first else []
        silent = [a for a in self._silent if a in self.addresses and a not in first and a not in last]
        order = first + [a for a in self.addresses if a not in first and a not in last and a not in silent] + last
        order += silent
        errors: list[str] = []
        while True:
            refused = 0
            denied: list[PermissionError] = []
            leaderless: RpcConnection | None = None
            """The first member that answered but knows no leader: used only if none knows one."""
            for address in order:
                timeout = min(self._connect_timeout, max(0.05, deadline - loop.time()))
                try:
                    conn = await RpcConnection.open(address, timeout=timeout, max_frame_size=self._max_frame_size,
                                                    security=self._security)
                except Unavailable as exc:
                    errors.append(str(exc))
                    refused += isinstance(exc, AuthenticationFailed)
                    if isinstance(exc.__cause__, PermissionError):
                        denied.append(exc.__cause__)
                    if address == self._preferred:
                        self._unreachable = address
                    self._silent[address] = None
                    continue
                if address == self._unreachable:
                    self._unreachable = None
                try:
                    # Something that accepts connections is not necessarily a
                    # member (a stale address now used by another service, a
                    # hung process): only one that answers is used.
                    knows = await self._learn_leader(conn, min(self._connect_timeout, max(0.05, deadline - loop.time())))
                except (RaftError, OSError) as exc:
                    await conn.close()
                    if isinstance(exc, AuthenticationFailed):
                        refused += 1
                        errors.append(str(exc))
                    else:
                        errors.append(f"{address} did not answer as a raftlib member: {exc}")
                    self._silent[address] = None
                    continue
                except BaseException:
                    await conn.close()
                    if leaderless is not None:
                        await leaderless.close()
                    raise
                self._silent.pop(address, None)
                if knows:
                    if leaderless is not None:
                        await leaderless.close()
                    self._leaderless = None
                    return conn
                # Cut off from the others, or an election is under way: a
                # member on the majority's side may know the leader already.
                if leaderless is None and not leader_required:
                    leaderless = conn
                else:
                    errors.append(f"{address} knows no leader")
                    await conn.close()
            if leaderless is not None:
                self._leaderless = leaderless
                return leaderless
            if refused == len(order):
                # Waiting will not change credentials: say so now rather than at the deadline.
                raise AuthenticationFailed(f"every member refused this client: {'; '.join(errors[-len(order):])}")
            if denied and refused + len(denied) == len(order):
                # Nor the permissions of socket files.
                raise Unavailable(f"no member lets this client connect: {'; '.join(errors[-len(order):])}") \
                    from denied[-1]
            if loop.time() >= deadline:
                which = "a member that knows a leader among" if leader_required else "any of"
                raise Unavailable(f"could not reach {which} {order}: {'; '.join(errors[-len(order):])}")
            await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))

    async def _learn_leader(self, conn: RpcConnection, timeout: float) -> bool:
        """Ask the member for the leader's address, to go there next time;
        return whether it named one. Raises what the call raised if the
        member did not answer."""
        status = await conn.call("status", {}, timeout=timeout)
        leader = status.get("leader") if isinstance(status, dict) else None
        members = status.get("members") if isinstance(status, dict) else None
        if isinstance(leader, str) and isinstance(members, dict) and isinstance(members.get(leader), dict):
            address = members[leader].get("address")
            if isinstance(address, str) and address != conn.address:
                self._preferred = address
                self._conn_to_replace = address != self._unreachable
            elif address == conn.address:
                self._preferred = address
        known = [m.get("address") for m in members.values() if isinstance(m, dict)] if isinstance(members, dict) else []
        for address in known:
            if isinstance(address, str) and address not in self.addresses:
                self.addresses.append(address)
        return isinstance(leader, str)

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _drop_failed(self, conn: RpcConnection | None) -> None:
        """Close ``conn``, on which a call just failed (None: it failed to
        get one, and has nothing to close). Another call may have replaced it
        as the client's connection already: the calls in flight on the new
        one go on undisturbed."""
        if conn is None:
            return
        if conn is self._conn:
            self._conn = None
        await conn.close()

    async def _renew_session(self, expired: str, deadline: float) -> None:
        """Replace session ``expired`` with a new one, unless another task already did:
        the writes that all find it expired at once share one new session."""
        async with self._renewing:
            if self.client_id == expired:
                await self._reopen_session(deadline)

    async def _reopen_session(self, deadline: float) -> None:
        """Open a new session; the client switches to it once it is open."""
        client_id = self._opening or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        last: BaseException | None = None
        while loop.time() < deadline:
            self._check_open()
            remaining = deadline - loop.time()
            conn: RpcConnection | None = None
            try:
                conn = await self._connection(remaining)
                left = deadline - loop.time()  # connecting took some of it
                if left <= 0:
                    continue
                self._opening = client_id  # asked for: it may be open from now on
                await conn.call("open_session", {"client": client_id, "timeout": left}, timeout=left)
                self.client_id, self._opening = client_id, None
                self._seq, self._done, self._ack = 0, set(), 0
                return
            except _NOT_APPLIED + _UNKNOWN as exc:  # opening a session is idempotent
                if _refused_for_good(exc):
                    raise
                last = exc
                self._follow(exc, conn)
                if isinstance(exc, _UNKNOWN):
                    await self._drop_failed(conn)
            await asyncio.sleep(0.05)
        raise Unavailable(f"could not open a client session in time (last error: {last})")


_CLOSE_SESSION_TIMEOUT = 1.0
"""The most :meth:`Client.close` waits to close the session, connecting again first if it must."""


_REQUEST_OVERHEAD = 1024
"""At most what a request frame adds to the command or query it carries."""


_MIN_FRAME_SIZE = 64 * 1024
"""The smallest max_frame_size a client accepts: a member's status answer must fit."""


def _check_sendable(data: bytes, what: str, max_frame_size: int) -> None:
    """Raise TypeError or CommandTooLarge if the members would refuse a request
    frame carrying ``data``: they accept map keys of scalar types only (see
    :mod:`raftlib.transport.framing`) and frames up to ``Config.max_frame_size``,
    and close the connection on any other, so the request would only be
    retried until the timeout and end as an outcome unknown."""
    if len(data) > max_frame_size - _REQUEST_OVERHEAD:
        raise CommandTooLarge(
            f"the encoded {what} is {len(data)} bytes; a request frame carrying it would exceed max_frame_size "
            f"({max_frame_size} bytes), which members refuse (and they refuse commands and queries over their "
            f"Config.max_command_size)"
        )
    problem = wire_problem(data)
    if problem:
        raise TypeError(f"the {what} cannot be sent to the cluster: {problem}")


async def connect(
    addresses: Sequence[str],
    *,
    timeout: float = 30.0,
    connect_timeout: float = 5.0,
    max_frame_size: int = 64 * 1024 * 1024,
    tls: TLSConfig | None = None,
    secret: SharedSecret | bytes | str | None = None,
    attempt_timeout: float = 5.0,
    session: bool = True,
) -> Client:
    """Connect to the cluster through any of ``addresses`` and open a session.

    ``timeout`` is the default time each call may take, retries included.
    ``attempt_timeout`` is the time one member has to answer one attempt of
    a write or read: a member that does not (a leader that hangs keeps its
    connections open) is left for the others, and the write is sent again
    in its session, so it is still applied once. Keep it above the longest
    a write may take to apply. A change feed (:meth:`Client.listen`) leaves
    a member that sent it nothing for ``attempt_timeout``: members send
    keepalives on a quiet feed, every ``attempt_timeout / 4``.
    ``max_frame_size`` is the largest frame the client accepts or sends;
    keep it equal to the members' ``Config.max_frame_size``, so that a
    command or query too large for them raises
    :class:`~raftlib.errors.CommandTooLarge` before it is sent.
    ``tls`` (a client certificate signed by the cluster's CA) or ``secret``
    must match how the members are secured (see :mod:`raftlib.security`).
    Opening a session is a write: it needs a leader and a majority.
    ``session=False`` opens none at connect time, only a connection to a
    member that answers, and the first write opens it: a client that only
    reads or listens then works while the cluster has lost its majority
    (with ``consistency="stale"``, say).
    Raises :class:`~raftlib.errors.ConfigError` for malformed addresses,
    timeouts, ``max_frame_size`` or security settings and
    :class:`~raftlib.errors.Unavailable` if no member could open a session
    (with ``session=False``: answer) within ``timeout`` (also when every
    member refused this client's credentials).
    """
    if isinstance(addresses, str):
        raise ConfigError(f"connect takes a list of member addresses, not a str: [{addresses!r}]")
    if not addresses:
        raise ConfigError("connect needs at least one member address")
    for address in addresses:
        parse_address(address)
    check_timeout(timeout)
    check_timeout(connect_timeout, "connect_timeout")
    check_timeout(attempt_timeout, "attempt_timeout")
    if (timeout is None or connect_timeout is None or attempt_timeout is None or timeout <= 0
            or connect_timeout <= 0 or attempt_timeout <= 0):
        raise ConfigError("timeout, connect_timeout and attempt_timeout must be positive")
    if type(max_frame_size) is not int or max_frame_size < _MIN_FRAME_SIZE:
        raise ConfigError(f"max_frame_size must be an int of at least {_MIN_FRAME_SIZE}, got {max_frame_size!r}")
    security = security_from(tls, secret)
    client = Client(addresses, timeout=timeout, connect_timeout=connect_timeout, max_frame_size=max_frame_size,
                    security=security, attempt_timeout=attempt_timeout)
    loop = asyncio.get_running_loop()
    try:
        if session:
            await client._reopen_session(loop.time() + timeout)
        else:
            await client._connection(timeout)
    except BaseException:
        await client.close()  # closes a session it may have opened, too
        raise
    return client
