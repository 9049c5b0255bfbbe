"""The asyncio runtime: drives a pure :class:`~raftlib.core.raft.Raft` core.

Theory of operation. One *driver* task owns the core; nothing else calls
into it. Everything that wants the core's attention (a message from the
transport, a tick, a user's write or read, a control call) is put on a list
and the driver is woken. Each driver round:

1. runs control calls, steps every queued message, applies queued ticks and
   proposes every queued write as one batch;
2. drains the core's Readies, each following the contract in
   :mod:`raftlib.core.ready`: send ``messages``; persist with one synced
   ``save`` in a worker thread; send ``messages_after_persist``; hand
   committed entries to the applier; ``advance``.

While a save is in flight new input piles up, so the next round carries it
all in one batch: the slower the disk, the bigger the batch. A separate
*applier* task feeds committed entries to the user's state machine strictly
in log order and resolves the writers' futures. It also takes snapshots
(between two entries, so the state is consistent) and hands them to the
driver, which compacts the log; see :mod:`raftlib.snapshotting` for how a
snapshot reaches a follower that fell too far behind.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import heapq
import inspect
import itertools
import logging
import os
import random
import time
import weakref
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterator, Mapping, NamedTuple, Sequence, TypeVar

from . import codec
from .config import Config, check_timeout
from . import snapshotting
from .core.messages import InstallSnapshot, Message
from .core.progress import ProgressState
from .core.raft import INPUT_WARNING, LEADER, Raft
from .core.ready import Ready
from .core.membership import plan_steps, with_member, without_member
from .errors import (
    AuthenticationFailed,
    CommandFailed,
    ConfigError,
    ConnectionLost,
    CorruptStorage,
    LeadershipLost,
    LogCompacted,
    MembershipChangePending,
    NoLiveMajority,
    NotLeader,
    NotMember,
    OutcomeUnknown,
    Overloaded,
    PeerStopped,
    ProposalDropped,
    ProtocolError,
    RaftError,
    SessionExpired,
    StorageError,
    StorageFull,
    Timeout,
    Unavailable,
    WriteTimeout,
)
from .io_thread import IOThread
from .metrics import PeerCounters
from .rpc import CANCEL, REQUEST, RpcConnection
from .security import Security, SharedSecret, TLSConfig, security_from
from .serving import RequestServer, read_failed, unreturnable_result
from .sessions import ClientEntry, Outcome, SessionOp, SessionTable, open_settings
from .snapshot import FileSnapshotStore, MemorySnapshotStore, SnapshotFile, SnapshotStore
from .state_machine import StateMachine
from .transport.framing import MAX_NAME_LENGTH, MAX_WIRE_INT, check_message, wire_problem
from .transport.tcp import Connection, Transport, parse_address
from .types import Change, Entry, EntryKind, HardState, Membership, NodeId, SnapshotMeta, founding_cluster_id

if TYPE_CHECKING:
    # storage_adapters imports raftlib.types, which runs this package's
    # __init__: importing the adapters' package here would be circular when a
    # program imports storage_adapters first.
    from storage_adapters.protocol import LogStorage

logger = logging.getLogger("raftlib")

StateMachineFactory = Callable[[], StateMachine]

_T = TypeVar("_T")


class Peer:
    """A running Raft peer. Create it with :func:`start_peer`.

    A peer is an async context manager that stops it (:meth:`stop`, with
    its defaults) when the block ends, normally or by an exception:
    ``async with await start_peer(...) as peer:``.
    """

    def __init__(
        self,
        state_machine: StateMachine,
        *,
        name: NodeId,
        address: str,
        storage: LogStorage,
        snapshots: SnapshotStore,
        config: Config,
        log: logging.Logger,
        advertise: str | None = None,
        security: Security = None,
    ) -> None:
        self.name = name
        self._security = security
        self.state_machine = state_machine
        self.config = config
        self._storage = storage
        self._snapshots = snapshots
        self._log = log
        self._transport = Transport(
            name, address, on_message=self._on_message, on_frame=self._on_frame, advertise=advertise,
            max_frame_size=config.max_frame_size, security=security, logger=log,
            max_outbox_bytes=config.max_outbox_bytes, max_inbound_connections=config.max_inbound_connections,
            hello_timeout=config.hello_timeout,
        )
        rng = random.Random(config.seed if config.seed is not None else os.urandom(16))
        core_log = log.getChild("core")
        for logger_ in (log, core_log):
            if not any(isinstance(f, _InputWarningLimit) for f in logger_.filters):
                logger_.addFilter(_InputWarningLimit())
        self._core = Raft(name, storage, config, rng, core_log)

        self._inbox: list[Message] = []
        self._proposals: list[tuple[EntryKind, bytes, asyncio.Future[Any]]] = []
        self._read_requests: list[tuple[int, asyncio.Future[int]]] = []
        self._calls: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._ticks = 0
        self._wake = asyncio.Event()

        self._pending_writes: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._reconfiguring = asyncio.Lock()
        """Held by the membership change (set_configuration, add_member,
        remove_member, leave) this leader is carrying out: the others wait
        their turn, so each moves the cluster from where the one before left
        it, and none takes steps of its own in between another's."""
        self._pending_reads: dict[int, asyncio.Future[int]] = {}
        self._read_ids = itertools.count(1)
        self._apply_queue: asyncio.Queue[list[Entry] | _Restore] = asyncio.Queue()
        self._applied = self._core.applied_index
        self._applied_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()
        self._state_waiters = _Waiters()
        """Woken at each change of role or leader (see :meth:`_wait_until`)."""
        self._forwards: dict[NodeId, set[asyncio.Timeout]] = {}
        """Requests forwarded and not yet answered, by the leader they went to (see :meth:`_forward`)."""
        self._deposed_after = self.config.election_ticks * self.config.tick_interval
        """How long a forward waits on a leader that this peer no longer follows."""
        self._removed_at = 0  # the core's removed_at as last reported
        self._membership = Membership()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._forked = False
        """Set in a child process forked from this peer's (see :func:`_after_fork_in_child`)."""
        _PEERS.add(self)
        self._release: asyncio.Task[None] | None = None
        """Releases everything once :meth:`stop` has begun (see :meth:`_release_all`)."""
        self._release_reported = False
        self._fatal: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._save_inline = not getattr(storage, "save_blocks", True)
        # The hard state last saved, and a newer one that differs from it only
        # in the commit index: a restart hint that needs no sync of its own and
        # that nothing waits for, so it rides along with the next save.
        self._hard_on_disk: HardState | None = None
        self._unsaved_hard: HardState | None = None
        # Pipelined persistence (see raftlib.core.ready and _handle_ready):
        # Readies waiting to be written, in order; the save on its way to disk
        # (at most one); Readies written, waiting for the driver to report
        # them to the core; and the waiters of _drain().
        self._writes: list[_Write] = []
        self._saving: asyncio.Future[None] | None = None
        self._writes_queued = 0
        self._writes_done = 0
        self._written: list[Ready] = []
        self._write_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._writer_failed: BaseException | None = None
        self._proposals_since = 0.0
        """Loop time at which the oldest write in ``_proposals`` was queued."""
        self._loop: asyncio.AbstractEventLoop
        """The event loop the peer runs on, set by :meth:`_start`. The hot paths
        use it rather than :func:`asyncio.get_running_loop`, which on Python
        3.11 makes a ``getpid()`` system call each time."""
        self._batch_timer: asyncio.TimerHandle | None = None
        """Wakes the driver when writes gathering behind a save are due (``max_batch_delay``)."""
        # Storage writes run on this one thread, in order.
        self._io = IOThread(f"raftlib-io-{name}")
        self._counters = PeerCounters()
        """What :meth:`metrics` reports besides the core's and the transport's counters."""
        self._save_started = 0.0
        """``time.perf_counter()`` when the save in flight began (see :meth:`_start_save`)."""

        snap = self._core.snapshot
        self._applied_term = snap.term if snap else 0
        self._snapshot_index = snap.index if snap else 0
        self._recorded_snapshot: SnapshotMeta | None = snap
        """The snapshot the log storage refers to: it must never be pruned."""
        self._bytes_since_snapshot = 0
        self._can_snapshot = type(state_machine).snapshot is not StateMachine.snapshot
        self._snapshot_requests: list[asyncio.Future[SnapshotMeta]] = []
        self._snapshot_started = self._snapshot_index
        """The index of the latest snapshot taken, written or not."""
        self._snapshot_writer: asyncio.Task[None] | None = None
        """Writes the latest snapshot in the background (see _take_snapshot)."""
        self._snapshot_failures = 0
        """Snapshots that failed in a row; the next one waits (see _snapshot_failed)."""
        self._snapshot_retry_at = 0.0
        """Event loop time before which no snapshot is due after a failure."""
        self._compacting: set[asyncio.Task[None]] = set()
        self._compactions: list[tuple[SnapshotMeta, asyncio.Future[None]]] = []
        self._snapshot_reports: list[tuple[NodeId, bool]] = []
        self._snapshot_first: InstallSnapshot | None = None
        """An InstallSnapshot at the head of the inbox, whose snapshot the
        state machine must restore before the core may take it (see
        :meth:`_restore_then_install`)."""
        self._restored: SnapshotMeta | None = None
        """The snapshot from the leader the state machine restored last."""
        self._not_restoring = asyncio.Event()
        """Clear while the state machine restores a snapshot from the leader: reads wait."""
        self._not_restoring.set()
        self._async_restore: asyncio.Task[Any] | None = None
        """An ``async def`` restore running on the loop for the worker thread
        (see :meth:`_run_async_restore`), cancelled if the peer stops."""
        self._unrestorable: dict[tuple[int, int, int, int], str] = {}
        """Snapshots the state machine could not restore, as (index, term,
        size, crc), newest last, with why: offered again, they are refused at once."""
        self._transfers: dict[NodeId, asyncio.Task[None]] = {}
        self._transfer_failures: dict[NodeId, int] = {}
        self._receiving = snapshotting.SnapshotReceiving(
            name, snapshots, lambda: self._core.term, self._on_message, log, self._prune_snapshots,
            refuse=self._unrestorable_reason,
        )
        self._requests = RequestServer(self, log)
        self._rpc: dict[str, RpcConnection] = {}
        """Connections to other peers for forwarded requests, by address."""
        self._rpc_opening = asyncio.Lock()
        """Held while a connection of ``_rpc`` is being opened."""
        self._last_contact: dict[NodeId, float] = {}
        self._last_tick_at = 0.0
        """Loop time at which the driver last fed ticks to the core."""
        self._storage_full: StorageFull | None = None
        """Set while the disk is full (see :meth:`_storage_call`)."""
        self._sessions = SessionTable(config.session_ttl, config.max_sessions)
        self._last_stamp = 0.0
        self._feed: list[_FeedItem] = []
        self._feed_start = 0
        self._feed_base = self._snapshot_index
        """Every write applied after this index is in ``_feed[_feed_start:]``."""
        self._feed_waiters = _Waiters()
        """Listeners waiting for the next change."""

    # -- lifecycle ---------------------------------------------------------------

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        snap = self._core.snapshot
        if snap is not None:
            found = self._snapshots.find(snap.index, snap.term)
            if found is None:
                raise CorruptStorage(
                    f"peer {self.name}: the log was compacted up to the snapshot at index {snap.index} "
                    f"(term {snap.term}), but that snapshot is missing; wipe the data directory and "
                    f"rejoin as a new member"
                )
            await self._snapshots.verify(found)
            self._sessions = await asyncio.to_thread(self._restore_state_machine, found)
        self._sync_addresses()
        await self._transport.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._drive(), name=f"raftlib-driver-{self.name}"),
            loop.create_task(self._tick_forever(), name=f"raftlib-ticker-{self.name}"),
            loop.create_task(self._apply_forever(), name=f"raftlib-applier-{self.name}"),
        ]
        self._wake.set()

    async def stop(self, transfer_leadership: bool = True) -> None:
        """Stop this peer: finish the current save, close the network and storage.

        If this peer leads (and ``transfer_leadership`` is true), it first
        hands leadership to the most up-to-date follower heard from within
        an election timeout, so a planned stop costs no election timeout; if
        that fails within two election timeouts it stops anyway and the
        others elect a leader. With no such follower still connected (they
        stopped too) it stops at once, without trying.

        Writes still in flight fail with :class:`LeadershipLost` (outcome
        unknown); queued writes not yet in the log fail with :class:`PeerStopped`.
        Idempotent.

        Safe to cancel (``asyncio.wait_for(peer.stop(), t)``, Ctrl-C during
        shutdown): once the handover is over, releasing the socket, storage
        and threads goes on to the end in a task of its own, and a later
        ``stop()`` waits for it. A cancelled handover is simply not made.
        """
        if self._forked:
            return  # the process that started it still runs it, and closes it
        if self._release is None:
            if transfer_leadership and self._fatal is None and self.is_leader and len(self._core.membership.voters) > 1:
                await self._hand_over("stopping", deadline=None)
        if self._release is None or self._release.cancelled():  # cancelled before it could begin: again
            self._stopping = True
            if self._batch_timer is not None:
                self._batch_timer.cancel()
                self._batch_timer = None
            self._wake.set()
            # The running loop: the one the peer started in may have closed (see _check_running).
            self._release = asyncio.get_running_loop().create_task(self._release_all(),
                                                                   name=f"raftlib-release-{self.name}")
            self._release.add_done_callback(_retrieve)
        await asyncio.shield(self._release)
        if not self._release_reported:
            # A failure to close storage reaches the first stop() to see the end.
            self._release_reported = True
            self._release.result()

    async def __aenter__(self) -> Peer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the peer (see :meth:`stop`); an exception of the block goes on."""
        await self.stop()

    async def _release_all(self) -> None:
        """The part of :meth:`stop` that must finish once begun: end the
        tasks, write what is queued, close the network and storage, fail
        what is still waiting. Each step runs to its end even if this task
        is cancelled meanwhile (as ``asyncio.run`` does to every task left
        when its main one returns)."""
        driver, *others = self._tasks
        if self._snapshot_writer is not None:
            others.append(self._snapshot_writer)  # its compaction would wait for the driver
        for t in others:
            t.cancel()
        try:
            for t in (driver, *others):
                try:
                    await _to_the_end(t)
                except asyncio.CancelledError:
                    pass
                except Exception:  # a crashed task was already logged by _fail
                    self._log.debug("task %s ended with an error", t.get_name(), exc_info=True)
            await _to_the_end(self._cancel_transfers())
            # Let queued writes reach the disk before storage closes.
            while self._saving is not None or (self._writes and self._writer_failed is None):
                if self._saving is None:
                    self._start_save()
                    continue
                await _to_the_end(asyncio.wait([self._saving]))
            if self._compacting:
                await _to_the_end(asyncio.wait(list(self._compacting)))
            if self._unsaved_hard is not None and self._fatal is None:
                # The latest commit index, so a restart re-applies without waiting for a leader.
                try:
                    await _to_the_end(asyncio.get_running_loop().run_in_executor(
                        self._io, self._storage.save, self._unsaved_hard, []))
                except Exception as exc:  # only a hint: stopping goes on
                    self._log.warning("%s: could not record the commit index on stop: %s", self.name, exc)
        finally:
            await self._close_all()

    async def _close_all(self) -> None:
        """Close the network, then storage; each step even if one before failed."""
        try:
            await _to_the_end(self._requests.close())
            rpc, self._rpc = self._rpc, {}
            for conn in rpc.values():
                await _to_the_end(conn.close())
            await _to_the_end(self._receiving.close())
        finally:
            await _to_the_end(self._transport.close())
            try:
                # On the I/O thread: closing checkpoints what the write-ahead
                # files hold (an LMDB commit), which must not stall the loop.
                await _to_the_end(asyncio.get_running_loop().run_in_executor(
                    self._io, _close_stores, self._snapshots, self._storage))
            finally:
                self._io.shutdown(wait=True)  # idle by now: the thread just ends
                self._fail_everything(
                    PeerStopped(f"peer {self.name} has stopped"),
                    LeadershipLost(f"peer {self.name} stopped before the write's outcome was known"),
                )
                self._stopped.set()
                _PEERS.discard(self)
                self._log.info("%s: stopped", self.name)

    def _after_fork_in_child(self) -> None:
        """In a child forked from this peer's process (without exec): let go
        of the locks and listening socket the child inherited, so that the
        parent can stop the peer and start it again while the child lives,
        and make :meth:`stop` in the child a no-op: the files and sockets are
        still the parent's, which must be the only one to write or close them."""
        self._forked = True
        self._stopping = True
        forget = getattr(self._storage, "_after_fork_in_child", None)
        if callable(forget):
            forget()
        self._transport._after_fork_in_child()

    # -- public API ----------------------------------------------------------------

    @property
    def address(self) -> str:
        """The address this peer listens on (with the real port if 0 was asked
        for, and a Unix socket's path made absolute): the one to give the
        other members."""
        return self._transport.address

    @property
    def leader(self) -> NodeId | None:
        """The name of the leader this peer knows of, or ``None`` (also once
        it is stopping or stopped: it no longer knows)."""
        return None if self._ended else self._core.leader

    @property
    def _ended(self) -> bool:
        """:meth:`stop` has begun, or a fatal error stopped this peer."""
        return self._stopping or self._fatal is not None

    @property
    def is_leader(self) -> bool:
        """Whether this peer is the leader (never after :meth:`stop`, nor once
        the event loop it was started in has closed)."""
        return (not self._stopping and self._storage_full is None and self._core.role == LEADER
                and not self._loop.is_closed())

    def status(self) -> dict[str, Any]:
        """This peer's view of the cluster, as a plain dict.

        Keys: ``name``, ``address``, ``role`` (``leader``, ``follower``,
        ``candidate`` or ``pre-candidate``; ``stopped`` once :meth:`stop`
        has begun or a fatal error stopped it), ``term``, ``leader`` (the
        leader this peer knows of; not itself while its disk is full, since
        it has stopped leading; ``None`` once stopped), ``commit_index``, ``applied_index``, ``last_index``,
        ``snapshot_index``, ``storage_full`` (the disk is full: requests are
        refused until space returns), ``removed_at`` (``None``, or the index
        of the configuration that removed this peer, as its own committed log
        shows or as a member told it when it was removed while down: see
        :class:`~raftlib.errors.NotMember`) and
        ``members`` (the configuration as this peer knows it): for each member its ``address``,
        ``role`` (``voter`` or ``learner``), ``voter`` (bool), ``last_contact``
        (seconds since this peer last heard from it; ``None`` if never, 0 for
        itself) and, on the leader, ``match_index`` (the last entry it is known
        to hold) and ``lag`` (entries it is behind); ``cluster_id``: the ID
        of this peer's cluster, fixed when it was founded (``None`` on an
        empty peer waiting to be added, or in a cluster founded before
        cluster IDs existed; see docs/security.md).
        """
        core = self._core
        membership = core.membership
        progress = core.progress if core.role == LEADER else {}
        now = asyncio.get_running_loop().time()
        last_index = core.log.last_index()

        def describe(nid: NodeId, addr: str) -> dict[str, Any]:
            heard = self._last_contact.get(nid)
            info: dict[str, Any] = {
                "address": addr,
                "role": "voter" if nid in membership.voters else "learner",
                "voter": nid in membership.voters,
                "last_contact": 0.0 if nid == self.name else (None if heard is None else round(now - heard, 3)),
            }
            if nid in progress:
                info["match_index"] = progress[nid].match
                info["lag"] = max(0, last_index - progress[nid].match)
            return info

        leader = self.leader
        return {
            "name": self.name,
            "address": self.address,
            "role": "stopped" if self._ended else core.role,
            "term": core.term,
            # A leader whose disk is full has stopped leading (no heartbeats;
            # the others elect a leader): it must not send clients back to itself.
            "leader": None if leader == self.name and not self.is_leader else leader,
            "commit_index": core.commit_index,
            "applied_index": self._applied,
            "last_index": last_index,
            "snapshot_index": self._snapshot_index,
            "storage_full": self._storage_full is not None,
            "removed_at": core.removal_index() or None,
            "cluster_id": self._transport.cluster_id,
            "members": {nid: describe(nid, addr) for nid, addr in membership.members.items()},
        }

    def metrics(self) -> dict[str, Any]:
        """Counters, gauges and timings of this peer, as a plain dict that
        :func:`json.dumps` takes as it is. Cheap: call it as often as you
        scrape. Still readable once the peer has stopped (its last values;
        ``is_leader`` and ``has_leader`` are then 0). Counters start at 0
        when the peer starts; none is kept across a restart.

        ``name`` is this peer's name. ``counters`` (each only grows):

        * ``pre_votes_started``, ``elections_started``, ``elections_won``:
          pre-vote rounds and elections (new terms) this peer began, and
          elections it won (a leadership transfer counts as an election);
        * ``leader_changes_seen``: leaders this peer came to know, one per
          term at most (the first leader it knows counts);
        * ``writes_proposed``: entries this peer appended as leader for
          writes (:meth:`write`, :meth:`submit`, writes forwarded to it,
          client sessions' entries), one per write;
        * ``writes_committed``: of those and of this leader's membership
          changes, the ones that committed and were applied here (a write
          whose ``handle_write`` raised counts: it applied);
        * ``writes_failed``: writes refused or lost on this peer, by reason:
          ``not_leader`` (:class:`NotLeader`, from a follower too when
          ``forward=False``), ``storage_full``, ``overloaded``, ``dropped``
          (:class:`ProposalDropped`), ``leadership_lost``, ``timeout``
          (:class:`WriteTimeout`) and ``stopped`` (:class:`PeerStopped`);
        * ``entries_applied``: log entries this peer applied (commands,
          and the leaders' no-op and configuration entries);
        * ``entries_saved``: log entries this peer wrote to its storage;
        * ``reads_served``: reads answered here, by consistency
          (``linearizable``, ``lease``, ``stale``);
        * ``requests_forwarded``: requests this peer sent on to the leader,
          by operation (``write``, ``read``, ``session_write``, ...);
        * ``messages_sent``, ``messages_received``, ``messages_dropped``:
          Raft messages handed to the network, received from other peers,
          and dropped (queue full, peer unreachable or unknown);
        * ``bytes_sent``: bytes written to other peers' Raft connections;
          ``bytes_received``: bytes read on inbound connections (other
          peers' messages and snapshots, clients' and forwarded requests);
        * ``snapshots_taken`` (of this peer's state machine),
          ``snapshots_sent`` (to followers that fell behind),
          ``snapshots_installed`` (received from a leader and restored);
        * ``connections_accepted``, ``connections_refused`` (failed the
          security handshake, presented the ID of another cluster, or over
          ``Config.max_inbound_connections``),
          ``connections_evicted`` (closed to make room),
          ``connect_failures`` (to other peers) and ``protocol_errors``.

        ``gauges`` (current values): ``term``, ``is_leader`` and
        ``has_leader`` (0 or 1), ``commit_index``, ``applied_index``,
        ``apply_lag`` (committed entries not yet applied), ``last_index``,
        ``snapshot_index``, ``writes_pending`` (queued or appended, not yet
        applied), ``reads_pending``, ``connections_open`` (inbound) and
        ``storage_full`` (0 or 1).

        ``timings``: ``save_seconds`` (each synced save of log entries or
        hard state: one per batch of writes), ``apply_seconds`` (each
        batch of committed entries through the state machine),
        ``snapshot_seconds`` (each snapshot taken, from the call to the
        state machine's ``snapshot()`` until the file is written and the log
        compacted) and ``restore_seconds`` (each snapshot from a leader
        restored into the state machine). Each has
        ``count``, ``sum``, ``max`` and ``buckets``, a dict from upper bound
        in seconds (a string; the last is ``"+Inf"``) to the number of
        durations at or below it, cumulative as in a Prometheus histogram.
        """
        core, c, stats = self._core, self._counters, self._transport.stats
        commit = core.commit_index
        leader = self.leader
        return {
            "name": self.name,
            "counters": {
                "pre_votes_started": core.pre_votes_started,
                "elections_started": core.elections_started,
                "elections_won": core.elections_won,
                "leader_changes_seen": c.leader_changes_seen,
                "writes_proposed": c.writes_proposed,
                "writes_committed": c.writes_committed,
                "writes_failed": dict(c.writes_failed),
                "entries_applied": c.entries_applied,
                "entries_saved": c.entries_saved,
                "reads_served": dict(c.reads_served),
                "requests_forwarded": dict(c.requests_forwarded),
                "messages_sent": stats["messages_sent"],
                "messages_received": stats["messages_received"],
                "messages_dropped": stats["dropped"],
                "bytes_sent": stats["bytes_sent"],
                "bytes_received": stats["bytes_received"],
                "snapshots_taken": c.snapshots_taken,
                "snapshots_sent": c.snapshots_sent,
                "snapshots_installed": c.snapshots_installed,
                "connections_accepted": stats["connections_accepted"],
                "connections_refused": stats["refused"] + stats["over_capacity"],
                "connections_evicted": stats["evicted"],
                "connect_failures": stats["connect_failures"],
                "protocol_errors": stats["protocol_errors"],
            },
            "gauges": {
                "term": core.term,
                "is_leader": int(leader == self.name and self.is_leader),
                "has_leader": int(leader is not None),
                "commit_index": commit,
                "applied_index": self._applied,
                "apply_lag": max(0, commit - self._applied),
                "last_index": core.log.last_index(),
                "snapshot_index": self._snapshot_index,
                "writes_pending": len(self._proposals) + len(self._pending_writes),
                "reads_pending": len(self._read_requests) + len(self._pending_reads),
                "connections_open": self._transport.connections_open,
                "storage_full": int(self._storage_full is not None),
            },
            "timings": {"save_seconds": c.save.summary(), "apply_seconds": c.apply.summary(),
                        "snapshot_seconds": c.snapshot.summary(), "restore_seconds": c.restore.summary()},
        }

    @property
    def membership(self) -> Membership:
        """The configuration in force on this peer (voters and learners)."""
        return self._core.membership

    async def set_configuration(self, members: Mapping[NodeId, str], timeout: float | None = None, *,
                                force: bool = False) -> None:
        """Found a new cluster, or move a running one to exactly ``members``.

        ``members`` maps each voter's name to its address. On a brand-new
        peer (empty log) this writes the first log entry and the members
        then elect a leader: call it on one founding peer, or on each with
        the same members; ``members`` must include this peer.

        On a running cluster (from any member: a follower forwards it to the
        leader) the change is made in safe single steps: new members join as
        learners, are promoted once caught up, and old voters are removed one
        at a time, the leader last (it then steps down). Members already
        matching are left alone, so calling it again is harmless. Membership
        changes made at once (this, :meth:`add_member`, :meth:`remove_member`,
        :meth:`leave`) run one after the other on the leader, each from where
        the one before left the cluster; one waiting its turn counts towards
        its ``timeout``.

        Raises :class:`ConfigError` for a malformed mapping (two members
        with the same address included); :class:`NoLiveMajority` (a
        ``ConfigError``) if a step would leave a configuration whose voters
        this leader has heard from lately are no majority of it (unless
        ``force``: see :meth:`remove_member`);
        :class:`Timeout`
        if a new member does not catch up (it stays a learner) or the change
        does not finish within ``timeout`` seconds; :class:`NotLeader` if no
        leader emerges to take it.
        """
        check_timeout(timeout)
        target = _check_members(members)
        if self._core.membership == Membership(voters=target) and self._core.leader is None:
            return  # no leader to ask (a cluster starting): nothing to do. A follower may be behind the leader
        if self._core.log.last_index() == 0 and self._core.term == 0 and not self._core.membership.members:
            if self.name not in target:
                raise ConfigError(f"the configuration must include this peer ({self.name!r})")

            def bootstrap() -> None:
                if self._core.log.last_index() == 0 and self._core.term == 0:
                    self._core.bootstrap(Membership(voters=target, cluster_id=founding_cluster_id(target)))

            await self._call_in_driver(bootstrap)
            if self._core.membership.members == target or self._core.log.last_index() == 1:
                return
        await self._reconfigure_to(target, timeout=timeout, hops=0, force=force)

    async def add_member(self, name: NodeId, address: str, *, voter: bool = True, timeout: float | None = None,
                         force: bool = False) -> None:
        """Add ``name`` (listening at ``address``) to the running cluster.

        A voter first joins as a learner and is promoted once it has caught
        up (see ``Config.catch_up_lag``), so adding a member never stalls
        writes. ``voter=False`` adds a learner: it receives the log but does
        not vote or count for quorum. Adding an existing member changes its
        address or role to the ones given; the same again does nothing
        (once the configuration in force has committed).
        Works on any member (a follower forwards to the leader) and returns
        once the change has committed. Membership changes asked at once run
        one after the other on the leader (see :meth:`set_configuration`).

        Raises :class:`ConfigError` for a bad name or address, an address
        another member (voter or learner) has; :class:`NoLiveMajority` for
        a promotion that would leave no live majority (unless ``force``:
        see :meth:`remove_member`);
        :class:`Timeout`
        if the new member makes no progress catching up (is it running?) or
        ``timeout`` passes, leaving it a learner; :class:`NotLeader` if no
        leader emerges.
        """
        check_timeout(timeout)
        await self._add_member(name, address, voter=voter, timeout=timeout, hops=0, force=force)

    async def remove_member(self, name: NodeId, *, timeout: float | None = None, force: bool = False) -> bool:
        """Remove ``name`` from the running cluster (voter or learner).

        Returns once the change has committed: ``True``, or ``False`` if
        ``name`` was not a member and nothing changed (also when a retry
        after a lost leader or a :class:`Timeout` finds the first attempt's
        removal done: it then waits for that removal to commit, since until
        then a new leader may drop it). A leader that removes itself first
        hands leadership over, as :meth:`stop` does (to the most up-to-date
        follower heard from within an election timeout), and the new leader
        removes it; if the handover fails within two maximum election
        timeouts, it removes itself, leads until the change commits, then
        steps down and tells the most up-to-date voter to campaign. The
        removed peer keeps running (stop it, or use :meth:`leave`).
        Membership changes asked at once run one after the other on the
        leader (see :meth:`set_configuration`): a leader removing itself
        hands over only in its turn.
        Raises :class:`ConfigError` when removing the last voter, or
        :class:`NoLiveMajority` (a ``ConfigError``) when
        the leader has heard from too few voters of the new configuration
        within an election timeout for it to commit anything (one voter of
        three down, and a running one removed): nothing is changed then.
        ``force=True`` makes such a change all the same; the cluster then
        commits nothing until enough of those voters are back. Raises
        :class:`Timeout` if ``timeout`` passes first (a handover still under
        way is abandoned: this peer leads on and is still a member).
        """
        check_timeout(timeout)
        return await self._remove_member(name, timeout=timeout, hops=0, force=force)

    async def leave(self, timeout: float | None = None, *, force: bool = False) -> None:
        """Remove this peer from the cluster, then stop it.

        A leader first hands leadership over (as :meth:`stop` does, to the
        most up-to-date follower heard from within an election timeout), so
        the cluster does not wait out an election timeout; if the handover
        fails by itself (within two maximum election timeouts) it leaves
        without one. A peer that has
        not learned the configuration yet (it joined moments ago) asks the
        leader all the same. ``timeout`` bounds the handover and the removal
        together (not the stop that follows). On a leader, both wait for
        any membership change under way to finish first (see
        :meth:`set_configuration`).

        Raises :class:`ConfigError` on the last voter, or
        :class:`NoLiveMajority` if the others
        have no live majority without this peer (before any handover;
        ``force`` as for :meth:`remove_member`), :class:`Timeout` if
        ``timeout`` passes first (a handover still under way is abandoned
        as :meth:`transfer_leadership` abandons one: this peer leads on and
        takes writes again), and what :meth:`remove_member` raises; in each
        case the peer keeps running.
        """
        check_timeout(timeout)
        self._check_running()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        membership = self._core.membership
        if self.name in membership.members or not membership.members:
            # On the leader, the handover comes in its turn, after any change under way.
            await self._remove_member(self.name, timeout=_remaining(loop, deadline), hops=0, leaving=True,
                                      force=force)
        await self.stop(transfer_leadership=False)

    async def _hand_over(self, doing: str, deadline: float | None, goal: str = "stop") -> None:
        """Transfer leadership to :meth:`_successor` before :meth:`stop`,
        :meth:`leave` or removing this peer (``doing`` says which, for the
        log). A transfer that fails within its own limit is logged: the peer
        then goes on without one. Raises Timeout saying this peer could not
        ``goal`` if ``deadline`` passes first."""
        loop = asyncio.get_running_loop()
        limit = self._transfer_limit()
        remaining = _remaining(loop, deadline)
        target = self._successor()
        if target is not None and not self._transport.linked(target):
            # Every follower heard from lately has closed its connection here:
            # they stopped (a whole cluster stopped in turn, say), and a
            # handover would only wait out its limit.
            self._log.info("%s: %s without a leadership transfer: no follower is connected", self.name, doing)
            return
        try:
            new = await self.transfer_leadership(target, timeout=_min_timeout(limit, remaining))
        except Timeout as exc:
            if remaining is not None and remaining <= limit:
                raise Timeout(f"{self.name} could not {goal} within the time allowed ({exc}); it is still "
                              f"a member and keeps running") from None
            self._log.info("%s: %s without a leadership transfer: %s", self.name, doing, exc)
        except RaftError as exc:
            self._log.info("%s: %s without a leadership transfer: %s", self.name, doing, exc)
        else:
            self._log.info("%s: handed leadership to %s before %s", self.name, new, doing)

    # -- membership changes ------------------------------------------------------------

    async def _add_member(self, name: NodeId, address: str, *, voter: bool, timeout: float | None, hops: int,
                          force: bool = False) -> None:
        _check_name(name)
        _check_member_address(name, address)

        def next_step(cur: Membership) -> Membership | None:
            if (cur.voters if voter else cur.learners).get(name) == address:
                return None
            _check_address_free(cur, name, address)
            if voter and name not in cur.voters and cur.learners.get(name) != address:
                return with_member(cur, name, address, voter=False)  # catch up as a learner first
            return with_member(cur, name, address, voter=voter)

        async def add(deadline: float | None) -> None:
            async with self._turn_to_reconfigure(deadline):
                await self._change_until(next_step, deadline, force=force)

        await self._on_leader("add_member", {"name": name, "address": address, "voter": voter, "force": force},
                              add, timeout, hops)

    async def _remove_member(self, name: NodeId, *, timeout: float | None, hops: int, leaving: bool = False,
                             force: bool = False) -> bool:
        """``leaving``: for :meth:`leave` (what a leader's handover says it does)."""
        _check_name(name)
        if set(self._core.membership.voters) == {name}:
            raise ConfigError(f"{name} is the only voter; a cluster cannot lose its last voter")

        def next_step(cur: Membership) -> Membership | None:
            return without_member(cur, name) if name in cur.members else None

        async def remove(deadline: float | None) -> bool:
            async with self._turn_to_reconfigure(deadline):
                self._refuse_without_live_majority(self._plan(next_step), force=force)  # before any handover
                return await self._change_until(next_step, deadline, leaving=leaving, force=force)

        changed: bool = await self._on_leader("remove_member", {"name": name, "force": force}, remove, timeout, hops)
        return changed

    async def _reconfigure_to(self, members: Mapping[NodeId, str], *, timeout: float | None, hops: int,
                              force: bool = False) -> bool:
        """Move the running cluster to ``members`` (see :meth:`set_configuration`);
        return whether any step was taken."""
        target = _check_members(members)

        def next_step(cur: Membership) -> Membership | None:
            steps = plan_steps(cur, target, last=self.name)
            return steps[0] if steps else None

        async def reconfigure(deadline: float | None) -> bool:
            async with self._turn_to_reconfigure(deadline):
                self._refuse_without_live_majority(self._plan(next_step), force=force)  # before the first step
                return await self._change_until(next_step, deadline, force=force)

        changed: bool = await self._on_leader("set_configuration", {"members": target, "force": force},
                                              reconfigure, timeout, hops)
        return changed

    @contextlib.asynccontextmanager
    async def _turn_to_reconfigure(self, deadline: float | None) -> AsyncIterator[None]:
        """On the leader: wait until the membership change under way (if
        any) has finished or failed, then hold :attr:`_reconfiguring` for
        the change made inside, so that it plans its steps from the members
        the one before left. Raises :class:`Timeout` if ``deadline`` passes
        while it waits (nothing changed then), and :class:`NotLeader` if
        this peer no longer leads when its turn comes."""
        try:
            async with asyncio.timeout_at(deadline):
                await self._reconfiguring.acquire()
        except TimeoutError:
            raise Timeout("another membership change was still under way on the leader when the timeout ran "
                          "out; nothing changed") from None
        try:
            self._check_leader()
            yield
        finally:
            self._reconfiguring.release()

    def _plan(self, next_step: Callable[[Membership], Membership | None]) -> list[Membership]:
        """The configuration in force, then each one ``next_step`` leads to
        from it (were nothing else to change meanwhile)."""
        plan = [self._core.membership]
        while (step := next_step(plan[-1])) is not None:
            plan.append(step)
        return plan

    def _refuse_without_live_majority(self, plan: Sequence[Membership], *, force: bool, wait: bool = False) -> None:
        """On the leader, before it moves through ``plan`` (the configuration
        in force, then each one to propose): raise :class:`NoLiveMajority` if
        the voters of one of them that this leader has heard from within an
        election timeout (itself included) are no majority of it, since the
        cluster could commit nothing then, that change included, until
        enough of them are back. A learner promoted counts as live, in that
        step and the plan's later ones (it is promoted once caught up); a step that keeps the voters is never
        refused. A leader too new to tell raises
        :class:`MembershipChangePending` if ``wait``, else lets it pass.
        Does nothing if ``force`` (etcd's ``--strict-reconfig-check`` off)."""
        heard, unsure = self._core.recent_contact()
        if force or not heard:  # not the leader: the core refuses the change itself
            return
        promoted: set[NodeId] = set()  # learners of the plan: each is promoted once caught up
        for cur, step in itertools.pairwise(plan):
            promoted.update(cur.learners)
            voters = set(step.voters)
            live = voters & (heard | promoted)
            need = len(voters) // 2 + 1
            if voters == set(cur.voters) or len(live) >= need:
                continue
            if voters & unsure:
                if not wait:
                    return
                raise MembershipChangePending(f"{self.name} has led for less than an election timeout and not "
                                              f"heard from {', '.join(sorted(voters & unsure))} yet")
            down = sorted(voters - live)
            them = "it" if len(down) == 1 else "them"
            raise NoLiveMajority(
                f"refusing to make the voters {', '.join(sorted(voters))}: the leader {self.name} has heard from "
                f"{len(live)} of them within an election timeout and needs {need} to commit anything, this "
                f"change included; {', '.join(down)} {'is' if len(down) == 1 else 'are'} down or cut off. "
                f"Start {them} again or remove {them} first, or force the change (force=True, or --force on the "
                f"command line): the cluster then commits nothing until enough voters are back")

    async def _change_until(self, next_step: Callable[[Membership], Membership | None], deadline: float | None,
                            *, leaving: bool = False, force: bool = False) -> bool:
        """On the leader: propose ``next_step(current)`` until it returns ``None``,
        waiting for each step to commit and for learners to catch up before
        they are promoted; return whether any step was proposed. Each step is
        computed from the membership in force when it is proposed, so
        concurrent changes compose. Nothing left to do is only reported once
        the membership in force has committed: a change proposed earlier
        (by a call that timed out) may still be dropped by a new leader.

        Before a step that takes this leader's vote away, it first hands
        leadership over (once) as :meth:`stop` does, to a follower it hears
        from (``leaving``: for :meth:`leave`, which the log and a
        :class:`Timeout` then name): the propose then raises :class:`NotLeader`
        and :meth:`_on_leader` takes the change to the new leader. Left to
        itself, the core would step down once the change commits and tell
        the first up-to-date voter by name to campaign, which may be one
        that stopped just after it received the change."""
        loop = asyncio.get_running_loop()
        core = self._core
        pause = self.config.heartbeat_ticks * self.config.tick_interval

        def demotes_me(cur: Membership) -> bool:
            step = next_step(cur)
            return step is not None and self.name in cur.voters and self.name not in step.voters

        def propose() -> tuple[asyncio.Future[None], Membership] | NodeId | int | None:
            current = core.membership
            step = next_step(current)
            if step is None:
                return core.pending_membership_index() or None
            for name in sorted(step.voters):
                if name in current.learners and not core.caught_up(name, self.config.catch_up_lag):
                    return name
            self._refuse_without_live_majority([current, step], force=force, wait=True)
            try:
                term, index = core.propose_membership(step)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            fut: asyncio.Future[None] = loop.create_future()
            self._pending_writes[index] = (term, fut)
            return fut, step

        changed = False
        hand_over = True
        while True:
            if hand_over and self.is_leader and demotes_me(core.membership):
                hand_over = False  # once: if it fails, the core's own step-down follows the change
                doing, goal = ("leaving", "leave") if leaving else ("removing itself", "remove itself")
                await self._hand_over(doing, deadline, goal)
            try:
                out = await self._call_in_driver(propose)
            except MembershipChangePending:
                _check_deadline(loop, deadline, "the membership change")
                await asyncio.sleep(pause)
                continue
            if out is None:
                return changed
            if isinstance(out, str):
                await self._wait_caught_up(out, deadline)
                continue
            if isinstance(out, int):
                self._check_leader()
                _check_deadline(loop, deadline, f"the membership change at index {out} committing")
                await asyncio.sleep(pause)
                continue
            committed, step = out
            changed = True
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(committed)
            except TimeoutError:
                # Whoever asks again waits for it (see above); its outcome is not ours to report.
                committed.add_done_callback(lambda f: f.cancelled() or f.exception())
                raise Timeout("the membership change did not commit in time; it may still commit") from None
            self._log.info("%s: membership now %s", self.name, _describe_membership(step))

    async def _wait_caught_up(self, name: NodeId, deadline: float | None) -> None:
        """Leader: wait until learner ``name`` is close enough to be promoted,
        or is no learner any more (another change removed or promoted it)."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        stall_limit = max(2.0, 20 * cfg.election_ticks * cfg.tick_interval)
        best, since = -1, loop.time()
        while not self._core.caught_up(name, cfg.catch_up_lag):
            self._check_running()
            self._check_leader()
            if name not in self._core.membership.learners:
                return
            pr = self._core.progress.get(name)
            match = pr.match if pr is not None else -1
            if match > best or (pr is not None and pr.state is ProgressState.SNAPSHOT):
                best, since = max(best, match), loop.time()
            elif loop.time() - since > stall_limit:
                address = self._core.membership.members.get(name)
                raise Timeout(
                    f"learner {name} at {address} made no progress catching up for {stall_limit:.0f} s; "
                    f"is it running and reachable? It stays a learner (remove it with remove_member)"
                )
            _check_deadline(loop, deadline, f"catching up {name}")
            await asyncio.sleep(cfg.tick_interval)

    async def _on_leader(self, op: str, args: dict[str, Any], local: Callable[[float | None], Awaitable[Any]],
                         timeout: float | None, hops: int, idempotent: bool = True,
                         payload: tuple[str, bytes] | None = None) -> Any:
        """Run ``local`` on the leader: here if this peer leads, else forwarded
        as request ``op`` with ``args``. ``payload`` is the user value in
        ``args`` (what it is, and its encoding), checked before it is first
        forwarded: raises TypeError if the leader could not decode it.

        A request that certainly did not apply (no leader, a leader that
        refused it, a peer that could not be reached) is tried again until
        ``timeout``; one whose outcome is unknown (leadership lost, the
        connection dropped) only if it is ``idempotent``.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        cfg = self.config
        election_wait = 4 * 2 * cfg.election_ticks * cfg.tick_interval
        attempts = 0
        maybe_applied: BaseException | None = None
        """The first attempt whose outcome is unknown: once there is one, giving
        up must not say the request certainly did not apply."""
        cuts_off = op in _MEMBERSHIP_CHANGES and self._cuts_off_self(op, args)
        """Whether this request removes this peer, which then hears no leader."""
        try:
            while True:
                self._check_running()
                try:
                    self._check_member()
                except NotMember:
                    if maybe_applied is not None and cuts_off:
                        return True  # this peer's removal committed: the change asked for is made
                    raise
                attempts += 1
                leader = self._core.leader
                if leader is None:
                    # Raises NotLeader(None) if no leader emerges within a few election timeouts.
                    # A peer whose own removal may be under way hears no leader: it waits,
                    # until its timeout, to be told the removal committed.
                    waiting_out_removal = maybe_applied is not None and cuts_off
                    await self._wait_for_leader_until(deadline, None if waiting_out_removal else election_wait)
                    continue
                try:
                    if leader == self.name:
                        return await local(deadline)
                    if hops >= _MAX_HOPS:
                        raise self._not_leader(leader)
                    if payload is not None and hops == 0:
                        _check_forwardable(*payload)
                        payload = None
                    within = _remaining(loop, deadline)
                    asked = within
                    if within is not None and op in _MEMBERSHIP_CHANGES:
                        # The leader gives up first, so that its own Timeout (which says
                        # whether anything changed) comes back before this peer's own.
                        asked = within - min(within / 10, _ANSWER_MARGIN)
                    return await self._forward(leader, op, {**args, "hops": hops + 1, "timeout": asked}, within,
                                               watch=not cuts_off)
                except (NotLeader, LeadershipLost, ProposalDropped, Unavailable, ConnectionLost) as exc:
                    unknown = isinstance(exc, (LeadershipLost, ConnectionLost))
                    if unknown and maybe_applied is None and op != "read":  # a read applies nothing
                        maybe_applied = exc
                    if attempts >= _MAX_ATTEMPTS or (hops and isinstance(exc, NotLeader)) or (unknown and not idempotent):
                        raise
                    self._log.debug("%s: %s: retrying after %r", self.name, op, exc)
                    _check_deadline(loop, deadline, op)
                    await asyncio.sleep(cfg.heartbeat_ticks * cfg.tick_interval)
                except OutcomeUnknown as exc:
                    # The leader lost its leadership while removing this peer: once the
                    # removal commits, a member says so (NotMember, above).
                    if isinstance(exc, Timeout) or not cuts_off:
                        raise
                    maybe_applied = maybe_applied or exc
                    self._log.debug("%s: %s: waiting for the outcome after %r", self.name, op, exc)
                    _check_deadline(loop, deadline, op)
                    await asyncio.sleep(cfg.heartbeat_ticks * cfg.tick_interval)
        except (NotLeader, ProposalDropped, Unavailable, PeerStopped, Overloaded, StorageFull, Timeout,
                SessionExpired) as exc:
            if maybe_applied is None or isinstance(exc, OutcomeUnknown):
                raise
            # A later attempt failed without applying, but an earlier one may have.
            message = f"{op}: an earlier attempt may have been applied ({maybe_applied}); then: {exc}"
            raise (WriteTimeout(message) if isinstance(exc, Timeout) else OutcomeUnknown(message)) from exc

    async def _wait_for_leader_until(self, deadline: float | None, limit: float | None) -> None:
        """Wait until a leader is known or this peer learns it was removed,
        for at most ``limit`` seconds (``None``: no limit) and not past
        ``deadline``; raise NotLeader(None), or Timeout at the deadline."""
        loop = asyncio.get_running_loop()
        left = None if deadline is None else max(0.0, deadline - loop.time())
        wait = left if limit is None else limit if left is None else min(limit, left)
        try:
            async with asyncio.timeout(wait):
                await self._wait_until(self._leader_known_or_removed)
        except TimeoutError:
            _check_deadline(loop, deadline, "waiting for a leader")
            raise NotLeader(None) from None

    def _cuts_off_self(self, op: str, args: dict[str, Any]) -> bool:
        """Whether membership change ``op`` removes this peer: the leader
        stops sending to it as soon as the change is appended, so until it
        commits this peer hears no leader."""
        return ((op == "remove_member" and args["name"] == self.name)
                or (op == "set_configuration" and self.name not in args["members"]))

    async def _forward(self, leader: NodeId, op: str, args: dict[str, Any], within: float | None = None, *,
                       watch: bool = True) -> Any:
        """Send a request to ``leader`` over a pooled connection and return
        its answer, within ``within`` seconds (``None``: no limit) even if
        the leader never answers. If ``watch``, raises :class:`LeadershipLost`
        once ``leader`` has not been this peer's leader for an election
        timeout without answering (it may be hung: its connection is
        dropped); a request that cuts this peer off from the leader waits
        for the answer instead."""
        address = self._core.membership.members.get(leader) or self._transport.addresses.get(leader)
        if address is None:
            raise NotLeader(leader)
        self._counters.forwarded(op)
        sent = False
        try:
            async with asyncio.timeout(within):
                conn = self._rpc.get(address)
                if conn is None or conn.closed:
                    # One connection per leader, not one per concurrent request (a
                    # burst would open hundreds, past the leader's connection limit).
                    async with self._rpc_opening:
                        conn = self._rpc.get(address)
                        if conn is None or conn.closed:
                            conn = await RpcConnection.open(address, name=self.name,
                                                            max_frame_size=self.config.max_frame_size,
                                                            security=self._security)
                            if self._stopping:
                                await conn.close()
                                self._check_running()
                            self._rpc[address] = conn
                sent = True
                # A leader that hangs keeps its connections open and never
                # answers: stop waiting once it has not been this peer's
                # leader for an election timeout (see _watch_forwards).
                loop = asyncio.get_running_loop()
                deposed = asyncio.timeout_at(None if self._core.leader == leader or not watch
                                             else loop.time() + self._deposed_after)
                watched = self._forwards.setdefault(leader, set()) if watch else set()
                try:
                    async with deposed:
                        watched.add(deposed)
                        return await conn.call(op, args)  # cancelled, it sends Cancel
                except TimeoutError:
                    if not deposed.expired():
                        raise
                finally:
                    watched.discard(deposed)
                    if not watched and self._forwards.get(leader) is watched:
                        del self._forwards[leader]
                if self._rpc.get(address) is conn:
                    # It may be hung or unreachable: connect afresh if it leads again.
                    del self._rpc[address]
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._deposed_after):
                            await conn.close()
                raise LeadershipLost(
                    f"the leader {leader} at {address} did not answer the forwarded {op} and has not been "
                    f"this peer's leader for an election timeout (it may be hung or cut off); outcome unknown"
                )
        except TimeoutError:
            if not sent:
                raise Unavailable(f"could not reach the leader {leader} at {address} in the time allowed") from None
            if op in ("write", "session_write"):
                raise WriteTimeout(f"the leader {leader} did not answer the forwarded write in the time allowed; "
                                   f"it may still be applied") from None
            raise Timeout(f"the leader {leader} did not answer the forwarded {op} in the time allowed") from None

    def _watch_forwards(self, current: NodeId | None) -> None:
        """The leader this peer knows is now ``current``: forwards waiting on
        another one give up an election timeout from now unless it leads again."""
        expire = self._loop.time() + self._deposed_after
        for leader, watched in self._forwards.items():
            for deposed in watched:
                if deposed.expired():
                    continue  # giving up already (reschedule would raise)
                if leader == current:
                    deposed.reschedule(None)
                elif deposed.when() is None:
                    deposed.reschedule(expire)

    async def wait_for_leader(self, timeout: float | None = None) -> NodeId:
        """Wait until a leader is known and return its name.

        Raises :class:`raftlib.errors.Timeout` after ``timeout`` seconds, and
        :class:`~raftlib.errors.NotMember` once this peer knows it was
        removed from the cluster.
        """
        check_timeout(timeout)
        self._check_running()

        try:
            async with asyncio.timeout(timeout):
                await self._wait_until(self._leader_known_or_removed)
        except TimeoutError:
            raise Timeout(f"no leader was elected within {timeout} s") from None
        self._check_member()
        leader = self._core.leader
        assert leader is not None
        return leader

    async def transfer_leadership(self, to: NodeId | None = None, timeout: float | None = None) -> NodeId:
        """Hand leadership to ``to`` and return the new leader's name. By
        default the target is the most up-to-date voter heard from within an
        election timeout whose connection here is still open (as for
        :meth:`stop`), else the most up-to-date voter.

        The leader stops accepting writes (they raise
        :class:`ProposalDropped`), waits until the target has every entry,
        then tells it to start an election at once (no election timeout).
        Raises :class:`NotLeader` on a follower, :class:`ConfigError` if ``to``
        is not another voter, and :class:`raftlib.errors.Timeout` if no other
        peer leads within ``timeout`` seconds (default: two maximum election
        timeouts); the transfer is then abandoned and this peer keeps leading.
        """
        check_timeout(timeout)
        self._check_running()
        self._check_leader()
        if to is None:
            to = self._successor()

        def start() -> NodeId:
            try:
                return self._core.transfer_leadership(to)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

        target = await self._call_in_driver(start)
        limit = timeout if timeout is not None else self._transfer_limit()
        try:
            async with asyncio.timeout(limit):
                await self._wait_until(lambda: self._core.leader not in (None, self.name))
        except TimeoutError:
            if not self._stopping and self._core.leader == self.name:
                # The core would refuse writes until its own election timeout ends the transfer.
                with contextlib.suppress(RaftError):
                    await self._call_in_driver(lambda: self._core.abort_transfer(target))
            raise Timeout(f"leadership did not pass to {target} within {limit:.2f} s") from None
        leader = self._core.leader
        assert leader is not None
        return leader

    def _transfer_limit(self) -> float:
        """Seconds :meth:`transfer_leadership` waits by default: two maximum
        election timeouts (an election timeout is drawn from 1 to 2 times
        ``election_ticks``)."""
        return 4 * self.config.election_ticks * self.config.tick_interval

    def _successor(self) -> NodeId | None:
        """The voter a leader hands over to when it stops or leaves: the
        most up-to-date of those heard from within an election timeout,
        preferring those whose connection here is still open (``None``: none
        was heard from, and the core chooses). The core's own choice counts every follower as
        active for a while after an election, when it may pick one that
        stopped long before and wait out the transfer."""
        now = self._loop.time()
        window = self.config.election_ticks * self.config.tick_interval
        heard = sorted(v for v in self._core.membership.voters
                       if v != self.name and now - self._last_contact.get(v, float("-inf")) <= window)
        # One whose connection here has closed has likely just stopped.
        heard = [v for v in heard if self._transport.linked(v)] or heard
        if not heard:
            return None
        progress = self._core.progress
        return max(heard, key=lambda v: progress[v].match if v in progress else -1)

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, checking it after each change of role or leader."""
        while not condition():
            self._check_running()
            await self._state_waiters.wait()

    async def write(self, command: Any, timeout: float | None = None, *, forward: bool = True) -> Any:
        """Replicate ``command`` and return what ``handle_write`` returned for it.

        On a follower the write is forwarded to the leader (unless
        ``forward=False``) and its answer returned. Raises :class:`TypeError`
        if msgpack cannot encode the command, or it must be forwarded and
        has map keys that cannot cross the network (see
        :func:`raftlib.transport.framing.unpack_wire`; nothing is appended);
        :class:`NotLeader` (no leader emerged within a few election timeouts,
        or ``forward=False`` on a follower), :class:`ProposalDropped`,
        :class:`PeerStopped`, :class:`~raftlib.errors.Unavailable` (the
        leader could not be reached), :class:`~raftlib.errors.Timeout` (not
        a :class:`WriteTimeout`: ``timeout`` ran out before a leader took
        the write) or :class:`~raftlib.errors.Overloaded` (the leader has
        ``Config.max_pending_writes`` writes pending: retry later, with
        back-off) when the write certainly did not apply;
        :class:`LeadershipLost`, :class:`WriteTimeout` or
        :class:`~raftlib.errors.ConnectionLost` (all :class:`OutcomeUnknown`)
        when its outcome is unknown. An exception raised by ``handle_write``
        is raised as it is here (as :class:`~raftlib.errors.CommandFailed`
        when forwarded); the command counts as applied. A result msgpack
        cannot encode, or that has map keys the network refuses (tuples),
        raises :class:`~raftlib.errors.CommandFailed` (here and forwarded):
        the write took effect, only its result is lost.
        """
        if timeout is not None:  # the hot path: no call for the usual None
            check_timeout(timeout)
        self._check_running()
        if self.is_leader or not forward:
            data = codec.pack(command, "command", self.config.max_command_size)
            return await self._submit(EntryKind.NORMAL, data, timeout)
        return await self._forwarded_write(command, timeout, 0)

    def submit(self, command: Any, *, forward: bool = True) -> asyncio.Future[Any]:
        """Start writing ``command`` and return at once a future of what
        :meth:`write` would return (or raise).

        For producers that keep many writes in flight: on the leader this
        costs no task per write, and the writes still go out in batches.
        The future's outcomes are those of :meth:`write` with no timeout
        (wrap it in :func:`asyncio.wait_for` for one; cancelling the future
        does not withdraw a write already appended). Errors found before
        anything is appended (:class:`TypeError` for a command msgpack
        cannot encode, :class:`PeerStopped`, :class:`NotLeader` with
        ``forward=False`` on a follower, :class:`~raftlib.errors.Overloaded`)
        are raised here, not through the future. On a follower the write is
        forwarded to the leader (by a task) unless ``forward=False``.
        """
        self._check_running()
        data = codec.pack(command, "command", self.config.max_command_size)
        if self.is_leader or not forward:
            return self._enqueue(EntryKind.NORMAL, data)
        _check_forwardable("command", data)
        return asyncio.ensure_future(self._forwarded_write(command, None, 0, data))

    async def _forwarded_write(self, command: Any, timeout: float | None, hops: int, data: bytes | None = None) -> Any:
        """``data``, if given, is the command encoded and checked by :func:`_check_forwardable`."""
        payload = None
        if data is None:
            data = codec.pack(command, "command", self.config.max_command_size)
            payload = ("command", data)
        encoded = data
        return await self._on_leader(
            "write", {"command": command},
            lambda deadline: self._submit(EntryKind.NORMAL, encoded, _remaining(self._loop, deadline)),
            timeout, hops, idempotent=False, payload=payload,
        )

    async def _submit(self, kind: EntryKind, data: bytes, timeout: float | None) -> Any:
        """Leader: append one entry and wait for its application.

        Raises :class:`Overloaded` (nothing appended) if
        ``Config.max_pending_writes`` writes are queued or appended but not
        yet applied.
        """
        fut = self._enqueue(kind, data)
        if timeout is None:
            return await fut
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(fut)
        except TimeoutError:
            exc = WriteTimeout(f"the write did not finish within {timeout} s; it may still be applied")
            self._counters.write_failed(exc)
            raise exc from None
        finally:
            if not fut.done():
                fut.add_done_callback(_retrieve)  # nobody awaits it any more

    def _enqueue(self, kind: EntryKind, data: bytes) -> asyncio.Future[Any]:
        """Leader: queue one entry for the driver; the future resolves once it is applied."""
        self._check_running()
        try:
            self._check_leader()
            pending = len(self._proposals) + len(self._pending_writes)
            if pending >= self.config.max_pending_writes:
                raise Overloaded(
                    f"peer {self.name} has {pending} writes pending (Config.max_pending_writes); "
                    f"this one was not applied: retry later"
                )
        except RaftError as exc:
            self._counters.write_failed(exc)
            raise
        loop = self._loop
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._proposals:
            self._proposals_since = loop.time()
        self._proposals.append((kind, data, fut))
        self._wake.set()
        return fut

    async def read(self, query: Any, timeout: float | None = None, *, consistency: str = "linearizable",
                   forward: bool = True) -> Any:
        """Answer ``query`` with ``handle_read``.

        ``consistency`` is one of:

        * ``"linearizable"`` (default): the leader confirms it still leads
          with a round of heartbeats (ReadIndex, one round shared by
          concurrent reads) and waits until it has applied everything
          committed before the read began;
        * ``"lease"``: the leader skips the round while a majority has
          acknowledged it within the last 90 % of an election timeout (see
          :meth:`raftlib.core.raft.Raft.lease_read_index`; needs
          ``Config.check_quorum``, and assumes the peers' clocks run at rates
          within 10 % of each other), falling back to a round otherwise;
        * ``"stale"``: this peer's current state, at once, on any peer; it
          may lag behind the leader.

        On a follower, linearizable and lease reads are forwarded to the
        leader (unless ``forward=False``). Raises :class:`ConfigError` for
        an unknown consistency, :class:`TypeError` for a query msgpack cannot
        encode, :class:`NotLeader` when no leader can be found,
        :class:`~raftlib.errors.Unavailable` when the leader it knows
        cannot be reached, :class:`~raftlib.errors.Overloaded` when the leader has
        ``Config.max_pending_reads`` reads pending (retry later) and
        :class:`raftlib.errors.Timeout` after ``timeout`` seconds.
        """
        check_timeout(timeout)
        if self.is_leader or not forward or consistency == "stale":
            return await self._read_here(query, consistency, timeout)
        return await self._forwarded_read(query, consistency, timeout, 0)

    async def _read_here(self, query: Any, consistency: str, timeout: float | None) -> Any:
        data = _pack_query(query, consistency, self.config.max_command_size)
        self._check_running()
        if consistency == "stale":
            return await self._answer_stale(data)
        return await self._read_local(data, consistency, timeout)

    async def _forwarded_read(self, query: Any, consistency: str, timeout: float | None, hops: int) -> Any:
        data = _pack_query(query, consistency, self.config.max_command_size)
        self._check_running()
        if consistency == "stale":
            return await self._answer_stale(data)
        return await self._on_leader(
            "read", {"query": query, "consistency": consistency},
            lambda deadline: self._read_local(data, consistency, _remaining(self._loop, deadline)),
            timeout, hops, idempotent=True, payload=("query", data),
        )

    async def _read_local(self, data: bytes, consistency: str, timeout: float | None) -> Any:
        self._check_running()
        self._check_leader()
        # Reads waiting for a ReadIndex round, for its answer or for the applier.
        pending = len(self._read_requests) + len(self._pending_reads) + len(self._applied_waiters)
        if pending >= self.config.max_pending_reads:
            raise Overloaded(f"peer {self.name} has {pending} reads pending (Config.max_pending_reads): retry later")
        index: int | None = None
        if consistency == "lease":
            try:
                index = self._core.lease_read_index()
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            # The lease is counted in ticks, which stop while the event loop
            # is blocked: trust it only if the core's clock is current.
            if asyncio.get_running_loop().time() - self._last_tick_at > 2 * self.config.tick_interval:
                index = None
        fut: asyncio.Future[int] | None = None
        if index is None:
            fut = asyncio.get_running_loop().create_future()
            self._read_requests.append((next(self._read_ids), fut))
            self._wake.set()

        async def serve() -> Any:
            at = await fut if fut is not None else index
            assert at is not None
            await self._wait_applied(at)
            result = await self._answer(data)
            self._counters.reads_served[consistency] += 1
            return result

        try:
            async with asyncio.timeout(timeout):
                return await serve()
        except TimeoutError:
            raise Timeout(f"the read did not finish within {timeout} s") from None

    async def _answer_stale(self, data: bytes) -> Any:
        result = await self._answer(data)
        self._counters.reads_served["stale"] += 1
        return result

    async def _answer(self, data: bytes) -> Any:
        if not self._not_restoring.is_set():
            await self._not_restoring.wait()  # the state is being replaced
        try:
            result = self.state_machine.handle_read(codec.unpack(data))
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError as exc:
            if _being_cancelled():
                raise
            # The handler's own: raised as it is, it would read as the
            # reader's cancellation (and end a forwarded read's server unanswered).
            raise read_failed(exc) from exc
        return _returned("read", codec.pack(result, "read result"))

    # -- client sessions -----------------------------------------------------------

    async def open_session(self, client: str, timeout: float | None = None, *, hops: int = 0) -> None:
        """Register client session ``client`` (a unique id the client chose)
        with the cluster; see :mod:`raftlib.sessions`. Forwarded to the leader."""
        check_timeout(timeout)
        # The leader's own settings go into the entry (see raftlib.sessions).
        settings = open_settings(self.config.session_ttl, self.config.max_sessions)
        entry = ClientEntry(SessionOp.OPEN, _check_client(client), command=settings)
        await self._on_leader("open_session", {"client": client},
                              lambda deadline: self._submit_client(entry, deadline), timeout, hops, idempotent=True)

    async def close_session(self, client: str, timeout: float | None = None, *, hops: int = 0) -> None:
        """Forget client session ``client`` and the results it kept."""
        check_timeout(timeout)
        entry = ClientEntry(SessionOp.CLOSE, _check_client(client))
        await self._on_leader("close_session", {"client": client},
                              lambda deadline: self._submit_client(entry, deadline), timeout, hops, idempotent=True)

    async def session_write(self, client: str, seq: int, command: Any, *, ack: int = 0,
                            timeout: float | None = None, hops: int = 0) -> Any:
        """Apply ``command`` exactly once for write ``seq`` of session ``client``.

        Retrying with the same ``seq`` (after a timeout or a lost connection,
        at any peer) never applies it twice: a write already applied returns
        its first result. ``ack`` tells the cluster that the answers of every
        write up to that sequence number were received, so it can forget
        them; ``seq`` is at most ``2**63 - 1`` (peers refuse larger numbers
        on the wire). Raises :class:`~raftlib.errors.SessionExpired` (not applied) if
        the session is unknown, :class:`~raftlib.errors.CommandFailed` if
        ``handle_write`` raised, :class:`~raftlib.errors.ConfigError` (not
        applied) if ``seq`` was applied for another command, and the errors
        of :meth:`write`.
        """
        check_timeout(timeout)
        _check_client(client)
        if type(seq) is not int or seq <= 0 or type(ack) is not int or ack < 0:
            raise ConfigError("seq must be a positive int and ack a non-negative int")
        if seq > MAX_WIRE_INT:
            # Peers refuse an entry carrying it (check_message): appended, it
            # could never be replicated, and nothing after it would commit.
            raise ConfigError(f"seq ({seq}) must be at most 2**63-1")
        if ack >= seq:
            # The session would forget answers up to ack, this one's too, and
            # refuse it as acknowledged before without applying it.
            raise ConfigError(f"ack ({ack}) must be below seq ({seq}): it counts the answers received, "
                              f"and this write's has not been")
        data = codec.pack(command, "command", self.config.max_command_size)

        async def local(deadline: float | None) -> Any:
            verdict, done = self._sessions.peek(client, seq, data)
            if verdict is Outcome.CONFLICT:
                raise _seq_reused(client, seq)
            if done is not None:
                return _session_result(done)
            stamp = max(time.time(), self._last_stamp, self._sessions.clock)
            self._last_stamp = stamp
            return await self._submit_client(ClientEntry(SessionOp.WRITE, client, seq, ack, stamp, data), deadline)

        return await self._on_leader("session_write", {"client": client, "seq": seq, "ack": ack, "command": command},
                                     local, timeout, hops, idempotent=True, payload=("command", data))

    async def _submit_client(self, entry: ClientEntry, deadline: float | None) -> Any:
        if entry.op is not SessionOp.WRITE:
            stamp = max(time.time(), self._last_stamp, self._sessions.clock)
            self._last_stamp = stamp
            entry = dataclasses.replace(entry, stamp=stamp)
        return await self._submit(EntryKind.CLIENT, entry.encode(), _remaining(self._loop, deadline))

    # -- change feed ------------------------------------------------------------------

    async def listen(self, from_index: int = 0, *, require_leader: bool = False,
                     reaching: int | None = None) -> AsyncIterator[Change]:
        """Yield every write this peer applies, in log order, as :class:`Change`
        objects (index, term, command, result), forever.

        ``from_index`` resumes after a gap: the first change yielded is the
        first applied write at that index or later. Changes are kept from
        this peer's latest snapshot on (at most ``Config.listen_backlog``
        of them); ``0`` starts at the oldest one kept. Raises
        :class:`~raftlib.errors.LogCompacted` if ``from_index`` (or a
        listener that fell behind) is older than that, and
        :class:`PeerStopped` when the peer stops. Writes applied more than
        once by a retry (client sessions) appear once.

        ``reaching=i`` (with ``from_index=0``) is for a reader that needs a
        change at or before index ``i``: once this peer has applied ``i``,
        the feed raises :class:`~raftlib.errors.LogCompacted` if it keeps no
        change that old (a restart from a snapshot, a snapshot installed or
        the backlog dropped them) instead of waiting for the next write.

        A peer cut off from the others applies nothing more, so by default
        its feed just waits. With ``require_leader``, a feed that is waiting
        raises :class:`~raftlib.errors.Unavailable` once this peer has known
        no leader for two election timeouts (it is cut off, or was removed),
        so that the reader can go on at another member; members serve
        :meth:`raftlib.Client.listen` this way.
        """
        if type(from_index) is not int or from_index < 0:
            raise ConfigError(f"from_index must be a non-negative int, got {from_index!r}")
        if reaching is not None:
            if type(reaching) is not int or reaching < 1 or from_index != 0:
                raise ConfigError(f"reaching must be None or a positive int, with from_index=0; got {reaching!r}")
            await self._wait_applied(reaching, require_leader)
        next_index = max(from_index, 1)
        while True:
            self._check_running()
            feed = self._feed
            if next_index <= self._feed_base and (from_index != 0 or next_index > 1):
                raise LogCompacted(
                    f"changes up to index {self._feed_base} are no longer kept on {self.name}; "
                    f"listen from {self._feed_base + 1} (after reading the current state)"
                )
            from_index = -1  # only the first position may start at the oldest change kept
            pos = bisect.bisect_left(feed, next_index, lo=self._feed_start, key=_item_index)
            if reaching is not None:
                if self._feed_base and (pos == len(feed) or feed[pos][0] > reaching):
                    raise LogCompacted(
                        f"no change at or before index {reaching} is kept on {self.name} (changes up to index "
                        f"{self._feed_base} are no longer kept); listen from {self._feed_base + 1} "
                        f"(after reading the current state)"
                    )
                reaching = None
            if pos < len(feed):
                index, term, data, ok, payload = feed[pos]
                next_index = index + 1
                if ok:
                    yield Change(index, term, codec.unpack(data), codec.unpack(payload))
                else:
                    yield Change(index, term, codec.unpack(data), None, payload.decode("utf-8", "replace"))
                continue
            waiter = self._feed_waiters.add()
            try:
                if require_leader:
                    await self._wait_with_leader(waiter)
                else:
                    await waiter
            finally:
                self._feed_waiters.discard(waiter)

    async def _wait_with_leader(self, waiter: asyncio.Future[None]) -> None:
        """Wait for ``waiter``; raise Unavailable (and drop it) once this peer
        has known no leader for two election timeouts meanwhile."""
        cfg = self.config
        limit = 2 * cfg.election_ticks * cfg.tick_interval
        loop = self._loop
        since: float | None = None
        try:
            while not waiter.done():
                if self._core.leader is not None:
                    since = None
                elif since is None:
                    since = loop.time()
                elif loop.time() - since >= limit:
                    raise Unavailable(
                        f"{self.name} knows no leader: it has heard from none for {limit:g} s (cut off from the "
                        f"others, or removed from the cluster); go on listening at another member"
                    )
                await asyncio.wait([waiter], timeout=limit / 4)
        finally:
            # Cancelled or given up: stop() must not fail a waiter nobody awaits.
            waiter.cancel()
        waiter.result()  # PeerStopped when stop() failed it, as `await waiter` would raise

    def _feed_append(self, item: _FeedItem) -> None:
        feed = self._feed
        feed.append(item)
        if len(feed) - self._feed_start > self.config.listen_backlog:
            self._feed_start += 1
            self._feed_base = feed[self._feed_start - 1][0]
            self._compact_feed()
        if self._feed_waiters:
            self._feed_waiters.wake()

    def _feed_drop_through(self, index: int) -> None:
        """A snapshot at ``index`` became the boundary: drop changes up to it."""
        if index <= self._feed_base:
            return
        self._feed_start = bisect.bisect_right(self._feed, index, lo=self._feed_start, key=_item_index)
        self._feed_base = index
        self._compact_feed()
        self._feed_waiters.wake()

    def _compact_feed(self) -> None:
        if self._feed_start > 1024 and self._feed_start * 2 > len(self._feed):
            del self._feed[: self._feed_start]
            self._feed_start = 0


    async def snapshot(self) -> SnapshotMeta:
        """Take a snapshot of the state machine now and compact the log.

        Returns the snapshot's metadata (the last applied index it covers).
        Raises :class:`ConfigError` if the state machine does not implement
        ``snapshot()``. Snapshots are also taken automatically (see
        ``Config.snapshot_entries`` and ``Config.snapshot_bytes``).
        """
        self._check_running()
        if not self._can_snapshot:
            raise ConfigError(f"{type(self.state_machine).__name__} does not implement snapshot()")
        fut: asyncio.Future[SnapshotMeta] = asyncio.get_running_loop().create_future()
        self._snapshot_requests.append(fut)
        self._apply_queue.put_nowait([])  # wake the applier
        return await fut

    # -- driver ---------------------------------------------------------------------

    async def _on_frame(self, type_name: str, body: Any, conn: Connection) -> None:
        if type_name in snapshotting.FRAME_TYPES:
            await self._receiving.on_frame(type_name, body, conn)
        elif type_name == REQUEST:
            await self._requests.on_request(body, conn)
        elif type_name == CANCEL:
            await self._requests.on_cancel(body, conn)
        else:
            raise ProtocolError(f"unexpected frame type {type_name[:64]!r}")

    def _on_message(self, msg: Message) -> None:
        if self._stopping:
            return
        if len(self._inbox) >= self.config.max_inbox:
            # Raft tolerates lost messages; a flood must not grow memory.
            self._log.debug("%s: inbox full (Config.max_inbox); dropping %s", self.name, msg.describe())
            return
        if isinstance(msg, InstallSnapshot) and not self._snapshot_stored(msg):
            return
        membership = self._core.membership
        if msg.src in membership.voters or msg.src in membership.learners:
            self._last_contact[msg.src] = asyncio.get_running_loop().time()
        self._inbox.append(msg)
        self._wake.set()

    async def _prune_snapshots(self) -> None:
        """Keep the snapshot files to the newest few (and the recorded one),
        after one was received or installed; a failure is only logged.
        Pruned after receiving too: one the core does not install (older
        than the log, or offered by a connection that is no leader) would
        stay, and offers could fill the disk. The one just received is the
        newest a leader sends, so it stays for the core to install."""
        try:
            await self._snapshots.prune(keep=_SNAPSHOTS_KEPT, protect=self._recorded_snapshot)
        except StorageError as exc:
            self._log.warning("%s: could not delete old snapshot files: %s", self.name, exc)

    def _snapshot_stored(self, msg: InstallSnapshot) -> bool:
        """Whether ``msg`` describes a well-formed snapshot this peer has stored
        (as :mod:`raftlib.snapshotting` does before it delivers one). Installing
        any other would stop this peer, so it is dropped with a warning."""
        try:
            check_message(msg)
            stored = self._snapshots.find(msg.index, msg.snapshot_term) is not None
        except RaftError as exc:
            self._log.warning("%s: dropping %s: %s", self.name, msg.describe(), exc, extra=INPUT_WARNING)
            return False
        if not stored:
            self._log.warning("%s: dropping %s: no such snapshot was received", self.name, msg.describe(),
                              extra=INPUT_WARNING)
        return stored

    async def _tick_forever(self) -> None:
        """Queue the ticks that came due, all at once: after a stall the
        driver then sees them together and feeds the core at most a
        heartbeat interval of them (see :meth:`_take_input`). Counted one
        at a time, a stall's ticks went in over the next few driver passes
        and all counted, ahead of messages that waited through the stall."""
        loop = asyncio.get_running_loop()
        interval = self.config.tick_interval
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            due = 1 + max(0, int((loop.time() - next_at) / interval))
            next_at += due * interval
            self._ticks += due
            self._wake.set()

    async def _call_in_driver(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` inside the driver and return once its effects are persisted."""
        self._check_running()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls.append((fn, fut))
        self._wake.set()
        return await fut

    async def _drive(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                if self._storage_full is not None:
                    # A full disk stops this peer until its writes get through
                    # (no ticks, no heartbeats).
                    await self._drain()
                self._report_written()
                if self._compactions:
                    self._compact()
                done = self._take_input()
                while self._core.has_ready():
                    await self._handle_ready(self._core.ready())
                if self._snapshot_first is not None:
                    await self._restore_then_install()
                if done:
                    await self._drain()  # the callers wait for the effects to be on disk
                for fut, result in done:
                    if not fut.done():
                        if isinstance(result, BaseException):
                            fut.set_exception(result)
                        else:
                            fut.set_result(result)
        except Exception as exc:
            self._die(exc, "")
            raise

    def _take_input(self) -> list[tuple[asyncio.Future[Any], Any]]:
        core = self._core
        done: list[tuple[asyncio.Future[Any], Any]] = []
        calls, self._calls = self._calls, []
        for fn, fut in calls:
            if fut.cancelled():
                continue  # the caller gave up before it ran (a change nobody waits for)
            try:
                done.append((fut, fn()))
            except RaftError as exc:
                done.append((fut, exc))
        reports, self._snapshot_reports = self._snapshot_reports, []
        for node_id, ok in reports:
            core.report_snapshot(node_id, ok)
        inbox, self._inbox = self._inbox, []
        for i, msg in enumerate(inbox):
            if type(msg) is InstallSnapshot and core.installs_snapshot(msg):
                # The state machine restores it first; the rest waits.
                self._snapshot_first = msg
                self._inbox[:0] = inbox[i:]
                break
            core.step(msg)
        # Messages first, then at most a heartbeat interval of ticks: if this
        # process was stalled, the time it could not observe must not count
        # against the others (a follower would call a needless election, a
        # leader would step down for lack of acknowledgements it has queued).
        ticks, self._ticks = self._ticks, 0
        for _ in range(min(ticks, self.config.heartbeat_ticks)):
            core.tick()
        if ticks:
            self._last_tick_at = self._loop.time()
            if ticks > self.config.heartbeat_ticks:
                # Time this peer could not observe: its clock is behind, so a
                # lease it holds may already have run out elsewhere.
                core.expire_lease()
        if self._proposals:
            # While a save is on its way to disk, writes gather into the next
            # batch: the leader could not write them any sooner, and one
            # larger batch costs the cluster one message and one save per
            # peer instead of several. Not for longer than max_batch_delay,
            # though: the followers need not wait for the leader's disk.
            cfg = self.config
            loop = self._loop
            due = self._proposals_since + cfg.max_batch_delay
            if self._saving is None or len(self._proposals) >= cfg.max_entries_per_message or loop.time() >= due:
                self._propose()
            elif self._batch_timer is None:
                self._batch_timer = loop.call_at(due, self._batch_due)
        if self._read_requests:
            reads, self._read_requests = self._read_requests, []
            for rid, rfut in reads:
                if rfut.done():
                    continue
                try:
                    core.read_index(rid)
                except NotLeader as exc:
                    rfut.set_exception(self._not_leader(exc.leader))
                else:
                    self._pending_reads[rid] = rfut
        return done

    def _batch_due(self) -> None:
        self._batch_timer = None
        self._wake.set()

    def _propose(self) -> None:
        batch, self._proposals = self._proposals, []
        live = [(kind, data, fut) for kind, data, fut in batch if not fut.done()]
        if not live:
            return
        try:
            placed = self._core.propose_batch([data for _, data, _ in live], kinds=[kind for kind, _, _ in live])
        except NotLeader as exc:
            self._counters.write_failed(exc, len(live))
            for _, _, fut in live:
                fut.set_exception(self._not_leader(exc.leader))
            return
        except ProposalDropped as exc:
            self._counters.write_failed(exc, len(live))
            for _, _, fut in live:
                fut.set_exception(ProposalDropped(str(exc)))
            return
        self._counters.writes_proposed += len(placed)
        for (term, index), (_, _, fut) in zip(placed, live):
            self._pending_writes[index] = (term, fut)

    async def _handle_ready(self, rd: Ready) -> None:
        """Carry out ``rd`` (the contract is in :mod:`raftlib.core.ready`).

        Writes are pipelined: the Ready's save is queued (see
        :meth:`_start_save`) and the driver goes on stepping the core, so
        acknowledgements are counted and entries committed while the disk
        is busy. A Ready marked ``persist_before_step`` (a new term or vote,
        or a snapshot) is written before anything else happens.
        """
        core = self._core
        if core.membership is not self._membership:
            self._sync_addresses()  # a new member must be reachable by this Ready's messages
        send = self._transport.send
        hard_state = rd.hard_state if rd.hard_state is not None else self._unsaved_hard
        self._unsaved_hard = None
        if hard_state is not None and not rd.entries and rd.snapshot is None and self._commit_moved_only(hard_state):
            self._unsaved_hard = hard_state
            hard_state = None
        queue = not rd.persist_before_step and (
            hard_state is not None or rd.entries or rd.messages_after_persist or self._writes_queued > self._writes_done
        )
        if queue and not self._save_inline:
            # Before the messages: the I/O thread wakes up while they go out.
            self._queue_write(rd, hard_state)
        for m in rd.messages:
            if isinstance(m, InstallSnapshot):
                self._start_transfer(m)
            else:
                send(m)
        if rd.committed_entries:
            # On this peer's disk, or (a leader's) on a quorum's: see Raft.ready.
            self._apply_queue.put_nowait(rd.committed_entries)
        for rs in rd.read_states:
            for rid in rs.request_ids:
                fut = self._pending_reads.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(rs.index)
        core.accept(rd)
        if queue:
            if self._save_inline:
                # Written at once: its acknowledgements go out after the messages.
                self._queue_write(rd, hard_state)
        elif rd.persist_before_step:
            await self._drain()
            if rd.snapshot is not None:
                if self._compacting:
                    await asyncio.wait(list(self._compacting))  # an older snapshot's, first
                # The term (at least the snapshot's) goes to disk before the
                # snapshot does, so a crash in between never leaves a log that
                # holds a snapshot of a term newer than the persisted one.
                if hard_state is not None:
                    await self._save(hard_state, [])
                    hard_state = None
                await self._install_snapshot(rd.snapshot)
            if hard_state is not None or rd.entries:
                await self._save(hard_state, rd.entries)
            for m in rd.messages_after_persist:
                send(m)
            core.persisted(rd)
        else:
            core.persisted(rd)
        if rd.soft_state is not None:
            self._on_soft_state(rd)
        if core.membership is not self._membership:
            self._sync_addresses()

    def _queue_write(self, rd: Ready, hard_state: HardState | None) -> None:
        """Queue ``rd``'s save; it starts now if no save is in flight."""
        self._writes.append(_Write(rd, hard_state))
        self._writes_queued += 1
        if self._saving is None:
            self._start_save()

    def _report_written(self) -> None:
        """Tell the core which Readies the writer has put on disk, in order."""
        written, self._written = self._written, []
        for rd in written:
            self._core.persisted(rd)

    async def _drain(self) -> None:
        """Wait until every queued write is on disk, and report them to the core."""
        target = self._writes_queued
        if self._writes_done < target:
            if self._writer_failed is not None:
                raise PeerStopped(f"peer {self.name} cannot write to storage: {self._writer_failed}")
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._write_waiters.append((target, fut))
            await fut
        self._report_written()

    def _start_save(self) -> None:
        """Write every queued Ready to disk in one synced save, on the I/O
        thread; when it is done (:meth:`_saved`), send their acknowledgements,
        hand them back to the driver, and start on what queued meanwhile.
        No task is involved, so a save costs few turns of the event loop."""
        batch, self._writes = self._writes, []
        hard_state: HardState | None = None
        entries: list[Entry] = []
        for w in batch:
            if w.hard_state is not None:
                hard_state = w.hard_state
            _splice(entries, w.ready.entries)
        loop = self._loop
        done: asyncio.Future[None] = loop.create_future()
        self._saving = done
        if hard_state is None and not entries:
            self._saved(batch, hard_state, None)
            return
        self._counters.entries_saved += len(entries)
        self._save_started = time.perf_counter()
        if self._save_inline:
            try:
                self._storage.save(hard_state, entries, True)
            except Exception as exc:
                self._saved(batch, hard_state, exc, entries)
            else:
                self._saved(batch, hard_state, None)
        else:
            self._io.call(loop, self._storage.save, (hard_state, entries, True),
                          lambda exc: self._saved(batch, hard_state, exc, entries))

    def _saved(self, batch: list[_Write], hard_state: HardState | None, exc: BaseException | None,
               entries: Sequence[Entry] = ()) -> None:
        if exc is not None:
            if isinstance(exc, StorageFull) and not self._stopping:
                # Waited out by _save's retries (the driver stops meanwhile).
                async def retry() -> None:
                    try:
                        await self._storage_call(self._storage.save, hard_state, entries, True)
                    except BaseException as again:
                        self._saved(batch, hard_state, again)
                    else:
                        self._saved(batch, hard_state, None)
                asyncio.get_running_loop().create_task(retry(), name=f"raftlib-save-retry-{self.name}")
                return
            self._write_failed(exc)
            return
        if hard_state is not None:
            self._hard_on_disk = hard_state
        if self._save_started:
            self._counters.save.observe(time.perf_counter() - self._save_started)
            self._save_started = 0.0
        self._written.extend(w.ready for w in batch)
        self._writes_done += len(batch)
        self._end_save(None)
        inline = self._save_inline
        if self._writes and not inline:
            # Before the acknowledgements: the I/O thread wakes up while they go out.
            self._start_save()
        send = self._transport.send
        for w in batch:
            for m in w.ready.messages_after_persist:
                send(m)
        self._wake.set()
        if self._writes and inline:
            self._start_save()  # written at once: after this batch's acknowledgements

    def _write_failed(self, exc: BaseException) -> None:
        if not isinstance(exc, StorageError):
            exc = StorageError(f"writing to storage failed: {exc}")
        self._writer_failed = exc
        self._end_save(PeerStopped(f"peer {self.name} cannot write to storage: {exc}"))
        if not self._stopping:
            self._die(exc, " while writing to storage")

    def _end_save(self, failed: BaseException | None) -> None:
        """The save in flight is over: wake the _drain() waiters it covers
        (all of them, with ``failed``, if writing failed)."""
        done = self._writes_done
        waiters, self._write_waiters = self._write_waiters, []
        for target, fut in waiters:
            if fut.done():
                continue
            if failed is not None:
                fut.set_exception(failed)
            elif target <= done:
                fut.set_result(None)
            else:
                self._write_waiters.append((target, fut))
        saving, self._saving = self._saving, None
        if saving is not None and not saving.done():
            saving.set_result(None)

    def _commit_moved_only(self, hs: HardState) -> bool:
        on_disk = self._hard_on_disk
        return on_disk is not None and hs.term == on_disk.term and hs.vote == on_disk.vote

    async def _save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Persist and sync ``hard_state`` (``None``: unchanged) and ``entries``."""
        started = time.perf_counter()
        await self._storage_call(self._storage.save, hard_state, entries, True)
        self._counters.save.observe(time.perf_counter() - started)
        self._counters.entries_saved += len(entries)
        if hard_state is not None:
            self._hard_on_disk = hard_state

    async def _storage_call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a storage write off the event loop (inline for adapters that never block).

        A full disk (:class:`StorageFull`: nothing was written) is waited
        out: the write is retried with back-off, and meanwhile this peer
        refuses writes and reads and stops leading (it neither ticks nor
        heartbeats, so the others elect a leader). Any other failure is fatal.
        """
        delay = 0.05
        while True:
            try:
                if self._save_inline:
                    fn(*args)
                else:
                    # Shielded: a write that has started must finish before storage closes.
                    await asyncio.shield(asyncio.get_running_loop().run_in_executor(self._io, fn, *args))
            except StorageFull as exc:
                if self._storage_full is None:
                    self._log.error("%s: %s; refusing requests and retrying until space returns", self.name, exc)
                    self._storage_full = exc
                    self._fail_leader_work()
                    self._notify_state_waiters()
                if self._stopping:
                    raise
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            except StorageError:
                raise
            except Exception as exc:
                raise StorageError(f"writing to storage failed: {exc}") from exc
            if self._storage_full is not None:
                self._log.warning("%s: storage accepts writes again; resuming", self.name)
                self._storage_full = None
                self._notify_state_waiters()
            return

    def _notify_state_waiters(self) -> None:
        self._state_waiters.wake()

    async def _install_snapshot(self, meta: SnapshotMeta) -> None:
        """A follower took the leader's snapshot, which the state machine
        has restored already (see :meth:`_restore_then_install`): record it."""
        assert self._restored is not None and (meta.index, meta.term) == (self._restored.index, self._restored.term)
        await self._storage_call(self._storage.install_snapshot, meta)
        self._recorded_snapshot = meta

    async def _restore_then_install(self) -> None:
        """Restore the state machine from the snapshot of the InstallSnapshot
        at the head of the inbox, after the entries already committed, then
        step the message into the core, which takes the snapshot in place of
        the log. If the state machine cannot restore it (a member running
        another state machine, or a stranger's snapshot on a cluster without
        TLS or a secret), the message is dropped: the log and the state stay
        as they were, this peer goes on serving, and the snapshot is refused
        when offered again (an error is logged once).

        Nothing steps the core meanwhile, so it still takes the snapshot:
        the state machine and the log never disagree."""
        msg, self._snapshot_first = self._snapshot_first, None
        assert msg is not None and self._inbox[0] is msg
        self._wake.set()  # for the rest of the inbox
        await self._drain()  # a leader's own entries on disk: its snapshots can compact (see _compact)
        core = self._core
        if not core.installs_snapshot(msg):  # reporting the writes moved the commit index past it
            return  # stepped as any other message, next
        del self._inbox[0]
        snap = self._snapshots.find(msg.index, msg.snapshot_term)
        if snap is None:  # replaced by a newer one meanwhile, which the leader offers next
            self._log.warning("%s: dropping %s: its snapshot is no longer stored", self.name, msg.describe(),
                              extra=INPUT_WARNING)
            return
        key = (snap.meta.index, snap.meta.term, snap.size, snap.crc)
        if key in self._unrestorable:
            return
        restored: asyncio.Future[BaseException | None] = self._loop.create_future()
        self._apply_queue.put_nowait(_Restore(snap, restored))
        while not restored.done():
            if self._stopping:
                return  # the applier is cancelled: nothing more to wait for
            # The applier may be writing a snapshot of its own, which waits for the driver to compact.
            self._wake.clear()
            woken: asyncio.Future[Any] = self._loop.create_task(self._wake.wait())
            try:
                await asyncio.wait([restored, woken], return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
            if self._compactions:
                self._compact()
        self._wake.set()
        failure = restored.result()
        if failure is not None:
            self._refuse_snapshot(key, msg, failure)
            return
        core.step(msg)
        assert core.has_ready()

    def _refuse_snapshot(self, key: tuple[int, int, int, int], msg: InstallSnapshot, exc: BaseException) -> None:
        """Remember a snapshot the state machine could not restore, and log why (an error, once)."""
        cause = exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ is not None else exc
        why = f"{type(self.state_machine).__name__} could not restore it: {cause!r}"
        while len(self._unrestorable) >= _UNRESTORABLE_KEPT:
            del self._unrestorable[next(iter(self._unrestorable))]
        self._unrestorable[key] = why
        self._log.error(
            "%s: refused the snapshot %d/%d (%d bytes) from %s: %s; the log and the state stay as they were. "
            "A member must run the same state machine as the others (and a cluster others can reach must "
            "use TLS or a shared secret)", self.name, msg.snapshot_term, msg.index, key[2], msg.src, why,
        )

    def _unrestorable_reason(self, meta: SnapshotMeta, size: int, crc: int) -> str | None:
        """Why an offered snapshot is refused before it is received, or ``None``."""
        return self._unrestorable.get((meta.index, meta.term, size, crc))

    def _compact(self) -> None:
        """Record snapshots taken by the applier in the core, and compact
        storage on the I/O thread, after the saves queued before, while the
        driver goes on. A leader may have applied entries that its own save
        has not finished writing (see :meth:`Raft.ready`): a snapshot that
        covers them waits until they are on disk, so that storage never
        records a snapshot past the end of its log."""
        compactions, self._compactions = self._compactions, []
        core = self._core
        stable = core.log.stable_last_index()
        for meta, fut in compactions:
            if meta.index > stable:
                self._compactions.append((meta, fut))  # again once the saves ahead of it are done
            elif meta.index >= self._storage.first_index() - 1 and (
                self._recorded_snapshot is None or meta.index >= self._recorded_snapshot.index
            ):
                core.snapshot_taken(meta)
                keep_from = min(meta.index - self.config.snapshot_keep_entries, core.compaction_limit())
                upto = max(keep_from, self._storage.first_index() - 1)
                task = asyncio.get_running_loop().create_task(self._compact_storage(meta, upto, fut))
                self._compacting.add(task)
                task.add_done_callback(self._compacting.discard)
            elif not fut.done():
                fut.set_result(None)  # a newer snapshot from the leader was installed meanwhile

    async def _compact_storage(self, meta: SnapshotMeta, upto: int, fut: asyncio.Future[None]) -> None:
        storage = self._storage

        def compact() -> None:
            if meta.index >= storage.first_index() - 1:  # else a newer snapshot was installed meanwhile
                storage.compact(upto, meta)

        try:
            await self._storage_call(compact)
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
            if not isinstance(exc, StorageFull):
                self._die(exc, " while compacting the log")
            return
        if self._recorded_snapshot is None or meta.index > self._recorded_snapshot.index:
            self._recorded_snapshot = meta
        if not fut.done():
            fut.set_result(None)

    def _start_transfer(self, msg: InstallSnapshot) -> None:
        running = self._transfers.get(msg.dst)
        if running is not None and not running.done():
            return
        self._transfers[msg.dst] = asyncio.get_running_loop().create_task(
            self._transfer(msg), name=f"raftlib-snapshot-{self.name}-to-{msg.dst}"
        )

    async def _transfer(self, msg: InstallSnapshot) -> None:
        ok = False
        try:
            snap = self._snapshots.find(msg.index, msg.snapshot_term)
            address = self._transport.addresses.get(msg.dst)
            newest = self._core.snapshot if snap is None else None
            if newest is not None and newest.index > msg.index:
                # Newer snapshots replaced it in the store before the transfer
                # began; the core's next offer carries the newest.
                self._log.info("%s: snapshot %d/%d for %s was replaced by %d/%d before it was sent",
                               self.name, msg.snapshot_term, msg.index, msg.dst, newest.term, newest.index)
                return
            if snap is None or address is None:
                self._log.warning("%s: cannot send snapshot %d/%d to %s (%s)", self.name, msg.snapshot_term,
                                  msg.index, msg.dst, "no such snapshot" if snap is None else "no address")
                return
            self._log.debug("%s: offering snapshot %d/%d (%d bytes) to %s", self.name, msg.snapshot_term,
                            msg.index, snap.size, msg.dst)
            sent = await snapshotting.send_snapshot(
                msg, snap, self._snapshots, own_address=self.address, address=address,
                cluster_id=self._transport.cluster_id,
                chunk_size=self.config.snapshot_chunk_size, max_frame_size=self.config.max_frame_size,
                timeout=max(5.0, 10 * self.config.election_ticks * self.config.tick_interval),
                security=self._security,
            )
            self._log.info("%s: sent snapshot %d/%d to %s (%d bytes this attempt)", self.name, msg.snapshot_term,
                           msg.index, msg.dst, sent)
            ok = True
            self._counters.snapshots_sent += 1
            self._transfer_failures.pop(msg.dst, None)
        except (OSError, RaftError, asyncio.TimeoutError) as exc:
            failures = self._transfer_failures.get(msg.dst, 0) + 1
            self._transfer_failures[msg.dst] = failures
            level = logging.INFO if failures == 1 else logging.DEBUG
            self._log.log(level, "%s: snapshot transfer to %s failed (%d in a row), will retry: %r",
                          self.name, msg.dst, failures, exc)
            # Back off before the core may retry, so an unreachable follower
            # is not offered the snapshot on every heartbeat.
            await asyncio.sleep(min(2.0, 0.05 * 2 ** min(failures, 6)))
        finally:
            self._snapshot_reports.append((msg.dst, ok))
            self._wake.set()

    async def _cancel_transfers(self) -> None:
        transfers, self._transfers = self._transfers, {}
        for task in transfers.values():
            task.cancel()
        for task in transfers.values():
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _on_soft_state(self, rd: Ready) -> None:
        assert rd.soft_state is not None
        self._counters.saw_leader(rd.soft_state.leader, rd.soft_state.term)
        removed_at = rd.soft_state.removed_at
        if removed_at != self._removed_at:
            self._removed_at = removed_at
            if removed_at:
                self._log.warning(
                    "%s: a member says the cluster removed this peer (configuration at index %d); it was down or "
                    "cut off when that happened. It will not campaign and refuses requests with NotMember. To "
                    "bring it back, add it on a member (Peer.add_member, or `raftlib members add`)",
                    self.name, removed_at)
            else:
                self._log.info("%s: a leader contacts this peer again; it is a member", self.name)
        self._state_waiters.wake()
        self._watch_forwards(rd.soft_state.leader)
        if rd.soft_state.role != LEADER:
            self._fail_leader_work()
            for task in self._transfers.values():
                task.cancel()
            self._transfers = {}

    def _fail_leader_work(self) -> None:
        """This peer stopped leading: fail what only a leader could finish."""
        commit = self._core.commit_index
        for index in [i for i in self._pending_writes if i > commit]:
            _, fut = self._pending_writes.pop(index)
            if not fut.done():
                exc = LeadershipLost(f"peer {self.name} stopped leading before entry {index} committed; outcome unknown")
                self._counters.write_failed(exc)
                fut.set_exception(exc)
        reads, self._pending_reads = self._pending_reads, {}
        for fut in reads.values():
            if not fut.done():
                fut.set_exception(self._not_leader(self._core.leader))

    def _sync_addresses(self) -> None:
        membership = self._core.membership
        self._membership = membership
        if membership.cluster_id is not None:
            # Learned with the log; kept if a configuration written by a peer
            # of an earlier version comes without it.
            self._transport.cluster_id = membership.cluster_id
        self._transport.update_addresses({n: a for n, a in membership.members.items() if n != self.name})

    # -- applying -------------------------------------------------------------------

    async def _apply_forever(self) -> None:
        try:
            await self._apply_loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._die(exc, " while applying")
            raise

    def _die(self, exc: Exception, where: str) -> None:
        """A fatal error (storage failure, state machine crash): fail every
        request and stop this peer so that it cannot act on a broken state."""
        if self._fatal is not None:
            return  # already stopping for the first one
        self._fatal = exc
        self._log.critical("%s: stopping after a fatal error%s: %s", self.name, where, exc, exc_info=True)
        self._fail_everything(
            PeerStopped(f"peer {self.name} stopped after a fatal error: {exc}"),
            LeadershipLost(f"peer {self.name} hit a fatal error before the write's outcome was known: {exc}"),
        )
        if not self._stopping:
            asyncio.get_running_loop().create_task(self.stop(), name=f"raftlib-stop-{self.name}")

    async def _apply_loop(self) -> None:
        sm = self.state_machine
        while True:
            batch = await self._apply_queue.get()
            if isinstance(batch, _Restore):
                await self._restore(batch)
                continue
            pending_writes = self._pending_writes
            unpack, feed = codec.unpack_without_tuple_keys, self._feed_append
            normal = EntryKind.NORMAL
            pending: tuple[int, asyncio.Future[Any]] | None = None
            started = time.perf_counter()
            try:
                for entry in batch:
                    pending = pending_writes.pop(entry.index, None) if pending_writes else None
                    if entry.kind is normal:
                        # The common case inline (no coroutine per entry): a plain
                        # result from a synchronous handle_write. See _execute.
                        fut = self._claim(entry, pending)
                        outcome = self._run_command(sm, entry.data, entry.index)
                        if type(outcome) is not tuple:
                            outcome = await outcome
                        ok, result, payload = outcome
                        feed((entry.index, entry.term, entry.data, ok, payload))
                        if fut is not None and not fut.done():
                            if ok:
                                try:
                                    fut.set_result(unpack(payload))
                                except TypeError:  # a map key the network refuses: see _returned
                                    fut.set_exception(_unreturnable("write", payload))
                            else:
                                fut.set_exception(result)
                        self._bytes_since_snapshot += len(entry.data)
                    elif entry.kind is EntryKind.CLIENT:
                        await self._apply_client(sm, entry, pending)
                    elif entry.kind is EntryKind.CONFIG and pending is not None and pending[0] == entry.term:
                        self._counters.writes_committed += 1
                        if not pending[1].done():
                            pending[1].set_result(None)
                    elif pending is not None:
                        self._drop_write(pending[1])
                    self._applied, self._applied_term = entry.index, entry.term
                    if self._applied_waiters and self._applied_waiters[0][0] <= entry.index:
                        self._wake_applied_waiters()
            except BaseException:
                # Stopped (or failed) in the middle of an entry: its writer, whose
                # future is no longer among the pending writes, must hear of it.
                if pending is not None and not pending[1].done():
                    pending[1].set_exception(LeadershipLost(
                        f"peer {self.name} stopped while applying the write; it is committed, its result unknown"))
                raise
            if batch:
                self._counters.apply.observe(time.perf_counter() - started)
                self._counters.entries_applied += len(batch)
            if self._snapshot_due() or (self._snapshot_requests and not self._snapshot_writing()):
                await self._take_snapshot()

    def _snapshot_due(self) -> bool:
        cfg = self.config
        if self._snapshot_writing():
            return False  # one at a time
        if self._snapshot_failures and self._loop.time() < self._snapshot_retry_at:
            return False  # backing off after a failure (peer.snapshot() still tries at once)
        return self._can_snapshot and (
            self._applied - max(self._snapshot_index, self._snapshot_started) >= cfg.snapshot_entries
            or self._bytes_since_snapshot >= cfg.snapshot_bytes
        )

    def _snapshot_writing(self) -> bool:
        writer = self._snapshot_writer
        return writer is not None and not writer.done()

    async def _take_snapshot(self) -> None:
        """Snapshot the state machine at the applied index.

        Nothing is applied while ``snapshot()`` runs. If it returned
        ``bytes`` (a copy of the state), applying resumes at once and the
        file is written, and the log compacted, in the background; a file
        or a stream may still read the live state, so applying waits until
        it is written.
        """
        requests, self._snapshot_requests = self._snapshot_requests, []
        try:
            index = self._applied
            meta = SnapshotMeta(index, self._applied_term, self._core.membership_at(index))
            if index > self._snapshot_index or self._snapshots.find(index, meta.term) is None:
                sessions = self._sessions.encode()  # the table as of this same index
                started = time.perf_counter()
                source = await asyncio.to_thread(self.state_machine.snapshot)
                try:
                    data = _with_header(sessions, source)
                    self._snapshot_started = index
                    self._bytes_since_snapshot = 0
                    if isinstance(data, bytes):
                        task = asyncio.get_running_loop().create_task(
                            self._write_snapshot(meta, data, requests, started), name=f"raftlib-snapshot-{self.name}")
                        self._snapshot_writer = task
                        return
                    await self._write_snapshot(meta, data, requests, started)
                    return
                finally:
                    await _close_source(source)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._snapshot_failed(exc, requests)
            return
        for req in requests:
            if not req.done():
                req.set_result(meta)

    async def _write_snapshot(self, meta: SnapshotMeta, data: Any, requests: list[asyncio.Future[SnapshotMeta]],
                              started: float) -> None:
        """Write the snapshot file, have the driver compact the log, prune old
        files. ``started`` is when ``snapshot()`` was called (``time.perf_counter()``)."""
        try:
            write = asyncio.ensure_future(self._snapshots.write(meta, data))
            try:
                snap = await asyncio.shield(write)
            except asyncio.CancelledError:
                # Let the write finish or clean up after itself: a write
                # cancelled halfway could leave its temporary file open.
                await asyncio.wait([write])
                raise
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._compactions.append((meta, fut))
            self._wake.set()
            await fut
            self._snapshot_index = max(self._snapshot_index, meta.index)
            await self._snapshots.prune(keep=_SNAPSHOTS_KEPT, protect=self._recorded_snapshot)
            self._snapshot_failures = 0
            self._counters.snapshots_taken += 1
            self._counters.snapshot.observe(time.perf_counter() - started)
            self._log.info("%s: snapshot at %d (%d bytes); log compacted", self.name, meta.index, snap.size)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._snapshot_failed(exc, requests)
            return
        finally:
            if self._snapshot_writer is asyncio.current_task():
                # The applier looks again whether the next one is due (or requested).
                self._apply_queue.put_nowait([])
        for req in requests:
            if not req.done():
                req.set_result(meta)

    def _snapshot_failed(self, exc: Exception, requests: list[asyncio.Future[SnapshotMeta]]) -> None:
        """A snapshot failed: due again as if it had not started, but not
        before a delay that doubles with each failure in a row (from
        :data:`SNAPSHOT_RETRY_MIN` to :data:`SNAPSHOT_RETRY_MAX` seconds), so
        that a ``snapshot()`` that keeps raising neither runs after every
        applied batch nor floods the log. The traceback is logged the first
        time; repeats get one line."""
        self._snapshot_failures += 1
        delay = min(SNAPSHOT_RETRY_MAX, SNAPSHOT_RETRY_MIN * 2 ** (self._snapshot_failures - 1))
        self._snapshot_retry_at = self._loop.time() + delay
        if self._snapshot_failures == 1:
            self._log.error("%s: taking a snapshot failed (retrying in %g s): %r", self.name, delay, exc, exc_info=True)
        else:
            self._log.error("%s: taking a snapshot failed again (%d in a row; retrying in %g s): %r",
                            self.name, self._snapshot_failures, delay, exc)
        self._snapshot_started = self._snapshot_index  # due again as if it had not started
        for req in requests:
            if not req.done():
                req.set_exception(exc)

    async def _restore(self, item: _Restore) -> None:
        """Restore the state machine from a snapshot the leader sent (in the
        applier, in order with the entries); tell the driver how it went."""
        snap = item.snap
        started = time.perf_counter()
        self._not_restoring.clear()
        try:
            self._sessions = await asyncio.to_thread(self._restore_state_machine, snap)
        except asyncio.CancelledError:
            if self._async_restore is not None:
                self._async_restore.cancel()  # the peer stops: an async restore must not go on
            raise
        except Exception as exc:
            if not item.done.done():
                item.done.set_result(exc)
            return
        finally:
            self._not_restoring.set()
        self._restored = snap.meta
        self._counters.snapshots_installed += 1
        self._counters.restore.observe(time.perf_counter() - started)
        self._feed_drop_through(snap.meta.index)  # the writes it covers were never applied here
        self._applied, self._applied_term = snap.meta.index, snap.meta.term
        self._snapshot_index = snap.meta.index
        self._bytes_since_snapshot = 0
        if not item.done.done():
            item.done.set_result(None)
        self._wake_applied_waiters()
        await self._prune_snapshots()  # as after a snapshot of this peer's own

    def _restore_state_machine(self, snap: SnapshotFile) -> SessionTable:
        """Load ``snap`` into the state machine (runs in a worker thread) and
        return its table of client sessions. If it raises, neither changed
        (as long as the state machine's ``restore`` raises before it changes
        anything, as it must)."""
        sessions = SessionTable(self.config.session_ttl, self.config.max_sessions)
        with self._snapshots.open(snap) as f:
            header = _read_header(f, snap)
            try:
                if header is not None:
                    sessions.restore(header)
            except ValueError as exc:
                raise CorruptStorage(f"snapshot {snap.meta.term}/{snap.meta.index}: {exc}") from None
            try:
                outcome = self.state_machine.restore_from_file(f)
                if inspect.isawaitable(outcome):
                    # An ``async def`` restore runs on the event loop; this
                    # thread holds the file open until it is done.
                    asyncio.run_coroutine_threadsafe(self._run_async_restore(outcome), self._loop).result()
            except Exception as exc:
                where = snap.path or f"index {snap.meta.index} term {snap.meta.term} (in memory)"
                raise StorageError(
                    f"peer {self.name}: {type(self.state_machine).__name__} could not restore the snapshot {where}: "
                    f"{exc!r}; if the data directory belongs to another state machine, start the peer with that "
                    f"one; otherwise fix restore(), or wipe the data directory and rejoin as a new member"
                ) from exc
        return sessions

    async def _run_async_restore(self, restoring: Awaitable[Any]) -> None:
        """Await an ``async def`` restore on the loop for the worker thread
        that waits for it. Once the peer stops, it is not begun, or it is
        cancelled with the applier (see :meth:`_restore`)."""
        if self._stopping:
            if inspect.iscoroutine(restoring):
                restoring.close()
            raise PeerStopped(f"peer {self.name} stopped before restoring the snapshot")
        self._async_restore = asyncio.current_task()
        try:
            await restoring
        finally:
            self._async_restore = None

    def _claim(self, entry: Entry, pending: tuple[int, asyncio.Future[Any]] | None) -> asyncio.Future[Any] | None:
        """The writer's future for ``entry``, or ``None`` if another leader's
        entry took the place of the write it was waiting for (then failed)."""
        if pending is None:
            return None
        term, fut = pending
        if term != entry.term:
            self._drop_write(fut)
            return None
        self._counters.writes_committed += 1
        return fut

    def _drop_write(self, fut: asyncio.Future[Any]) -> None:
        """Another leader's entry took the place of the write ``fut`` waits for."""
        if not fut.done():
            exc = ProposalDropped("another leader's entry took this write's place")
            self._counters.write_failed(exc)
            fut.set_exception(exc)

    def _run_command(self, sm: StateMachine, data: bytes, index: int) -> Any:
        """Apply one command: ``(True, result, packed result)``, or ``(False,
        exception, error text)`` if ``handle_write`` raised; if it returned
        an awaitable, a coroutine that finishes the job and returns the same."""
        try:
            result = sm.handle_write(codec.unpack(data))
        except (Exception, asyncio.CancelledError) as exc:  # nothing awaited: the handler's own
            return self._command_failed(exc, index)
        if type(result) not in _PLAIN_TYPES and inspect.isawaitable(result):
            return self._finish_command(result, index)
        try:
            return True, result, codec.pack(result, "write result")
        except Exception as exc:
            return self._result_unencodable(exc, index)

    async def _finish_command(self, pending: Awaitable[Any], index: int) -> tuple[bool, Any, bytes]:
        try:
            result = await pending
        except asyncio.CancelledError as exc:
            if _being_cancelled():
                raise
            return self._command_failed(exc, index)  # the handler's own, as any exception
        except Exception as exc:
            return self._command_failed(exc, index)
        try:
            return True, result, codec.pack(result, "write result")
        except Exception as exc:
            return self._result_unencodable(exc, index)

    def _command_failed(self, exc: BaseException, index: int) -> tuple[bool, Any, bytes]:
        self._log.info("%s: handle_write raised for entry %d: %r", self.name, index, exc)
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, asyncio.CancelledError):
            # Raised as it is, it would read as the writer's own cancellation.
            exc = CommandFailed(f"handle_write raised {text.rstrip(': ')}; the write counts as applied")
        return False, exc, text.encode()

    def _result_unencodable(self, exc: Exception, index: int) -> tuple[bool, Any, bytes]:
        """``handle_write`` returned, so the write took effect, but its result
        cannot be packed: every writer gets the same CommandFailed. The text
        depends only on the result, so that every peer records (in client
        sessions) and feeds the same one."""
        detail = str(exc) if type(exc) is TypeError else f"{type(exc).__name__}: {exc}"
        text = (f"the result of handle_write could not be encoded ({detail}); the write was applied "
                f"on every peer, only its result cannot be returned")
        self._log.warning("%s: entry %d: %s", self.name, index, text)
        return False, CommandFailed(text), text.encode()

    async def _execute(self, sm: StateMachine, data: bytes, index: int, decode: bool = True) -> tuple[bool, Any, bytes]:
        """:meth:`_run_command`, awaited; the result is given as a caller
        would receive it (decoded from the packed form) only if ``decode``,
        otherwise it is ``None``."""
        outcome = self._run_command(sm, data, index)
        if type(outcome) is not tuple:
            outcome = await outcome
        ok, value, packed = outcome
        if ok:
            value = codec.unpack(packed) if decode else None
        return ok, value, packed

    async def _apply_client(self, sm: StateMachine, entry: Entry,
                            pending: tuple[int, asyncio.Future[Any]] | None) -> None:
        """Apply a client-session entry (see :mod:`raftlib.sessions`)."""
        fut = self._claim(entry, pending)
        try:
            ce = ClientEntry.decode(entry.data)
        except ValueError as exc:
            raise CorruptStorage(f"entry {entry.index} is not a valid client-session entry: {exc}") from None
        table = self._sessions
        if ce.op is SessionOp.OPEN:
            table.configure(ce.command)
        table.tick(ce.stamp)
        outcome: Any = None
        if ce.op is SessionOp.OPEN:
            table.open(ce.client)
        elif ce.op is SessionOp.CLOSE:
            table.close(ce.client)
        else:
            verdict, stored = table.check(ce.client, ce.seq, ce.ack, ce.command)
            if verdict is Outcome.APPLY:
                ok, _, payload = await self._execute(sm, ce.command, entry.index, decode=False)
                table.record(ce.client, ce.seq, ok, payload, ce.command)
                self._feed_append((entry.index, entry.term, ce.command, ok, payload))
                self._bytes_since_snapshot += len(ce.command)
                stored = (ok, payload)
            if verdict is Outcome.CONFLICT:
                outcome = _seq_reused(ce.client, ce.seq)
            elif verdict is Outcome.ACKNOWLEDGED:
                outcome = ConfigError(
                    f"write {ce.seq} of client session {ce.client!r} was acknowledged before (an ack at or above "
                    f"it): its answer is forgotten, and it is not applied again. A sequence number the session "
                    f"acknowledged cannot be used again"
                )
            elif stored is None:
                outcome = SessionExpired(
                    f"client session {ce.client!r} is unknown to the cluster (expired, dropped or closed); "
                    f"write {ce.seq} was not applied"
                )
            else:
                try:
                    outcome = _session_result(stored)
                except CommandFailed as exc:
                    outcome = exc
        if fut is not None and not fut.done():
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

    async def _wait_applied(self, index: int, require_leader: bool = False) -> None:
        """Wait until this peer has applied ``index``; with ``require_leader``,
        raise Unavailable as :meth:`_wait_with_leader` does."""
        if self._applied >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._applied_waiters, (index, next(self._waiter_ids), fut))
        if require_leader:
            await self._wait_with_leader(fut)
        await fut

    def _wake_applied_waiters(self) -> None:
        waiters = self._applied_waiters
        while waiters and waiters[0][0] <= self._applied:
            _, _, fut = heapq.heappop(waiters)
            if not fut.done():
                fut.set_result(None)

    # -- errors ---------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._fatal is not None:
            raise PeerStopped(f"peer {self.name} stopped after a fatal error: {self._fatal}")
        if self._stopping:
            raise PeerStopped(f"peer {self.name} has stopped")
        if self._loop.is_closed():
            # Its tasks were cancelled with the loop (asyncio.run ends them all).
            raise PeerStopped(f"peer {self.name} no longer runs: the event loop it was started in has closed. "
                              f"Start peers and use them in one event loop (one asyncio.run); "
                              f"call stop() to release this one")

    def _check_storage(self) -> None:
        """Refuse a request while the disk is full (not applied: retry elsewhere or later)."""
        full = self._storage_full
        if full is not None:
            raise StorageFull(f"peer {self.name} cannot store anything now: {full}")

    def _check_leader(self) -> None:
        self._check_storage()
        if self._core.role != LEADER:
            raise self._not_leader(self._core.leader)

    def _leader_known_or_removed(self) -> bool:
        """What waiting for a leader waits for: one is known, or this peer
        knows it was removed (none will contact it: see :meth:`_check_member`)."""
        return self._core.leader is not None or self._core.removal_index() > 0

    def _check_member(self) -> None:
        """Raise :class:`NotMember` if this peer knows it was removed: a member
        said so, or it applied its own removal."""
        core = self._core
        removed_at = core.removal_index()
        if removed_at:
            how = " while it was down or cut off" if core.removed_at else ""
            raise NotMember(
                f"peer {self.name} was removed from the cluster (configuration at index {removed_at}){how}; send "
                "requests to a member, or add this peer back with add_member")

    def _not_leader(self, leader: NodeId | None) -> NotLeader:
        address = None
        if leader:
            # A follower may hear from its leader before it has the entry
            # naming it; the address the leader introduced itself with will do.
            address = self._core.membership.members.get(leader) or self._transport.addresses.get(leader)
        return NotLeader(leader, address)

    def _fail_everything(self, not_applied: BaseException, unknown: BaseException) -> None:
        for _, _, fut in self._proposals:
            if not fut.done():
                self._counters.write_failed(not_applied)
                fut.set_exception(not_applied)
        self._proposals = []
        self._feed_waiters.wake(not_applied)
        for _, fut in self._calls:
            if not fut.done():
                fut.set_exception(not_applied)
        self._calls = []
        for _, fut in self._read_requests:
            if not fut.done():
                fut.set_exception(not_applied)
        self._read_requests = []
        for _, wfut in self._pending_writes.values():
            if not wfut.done():
                self._counters.write_failed(unknown)
                wfut.set_exception(unknown)
        self._pending_writes = {}
        for rfut in self._pending_reads.values():
            if not rfut.done():
                rfut.set_exception(not_applied)
        self._pending_reads = {}
        for _, _, afut in self._applied_waiters:
            if not afut.done():
                afut.set_exception(not_applied)
        self._applied_waiters = []
        self._state_waiters.wake(not_applied)


class _Waiters:
    """The futures of tasks waiting for one kind of event, all woken at once.

    A task that stops waiting first (cancelled, or timed out) takes its
    future out again: a peer that tasks keep waiting on and leaving while
    the event does not come (feeds closed on a quiet cluster, calls that
    time out on a peer that knows no leader) holds none of theirs.
    """

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: dict[asyncio.Future[None], None] = {}
        """A dict for its order (woken as they came) and its O(1) removal."""

    def __len__(self) -> int:
        return len(self._futures)

    def __iter__(self) -> Iterator[asyncio.Future[None]]:
        return iter(self._futures)

    def add(self) -> asyncio.Future[None]:
        """A new future to wait on; :meth:`discard` it when done waiting."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures[fut] = None
        return fut

    def discard(self, fut: asyncio.Future[None]) -> None:
        self._futures.pop(fut, None)

    async def wait(self) -> None:
        """Wait for the next :meth:`wake`; raises what it was given."""
        fut = self.add()
        try:
            await fut
        finally:
            self.discard(fut)

    def wake(self, exc: BaseException | None = None) -> None:
        """Resolve every waiting future (failing them with ``exc`` if given)."""
        futures, self._futures = self._futures, {}
        for fut in futures:
            if fut.done():
                continue
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)


@dataclasses.dataclass(slots=True)
class _Write:
    """A Ready queued for the writer, with the hard state to save along."""

    ready: Ready
    hard_state: HardState | None


def _splice(entries: list[Entry], more: Sequence[Entry]) -> None:
    """Append ``more`` to ``entries`` as the log would: a later Ready that
    starts at or before the end replaces the entries from its first index."""
    if not more:
        return
    if entries:
        cut = more[0].index - entries[0].index
        if cut < len(entries):
            del entries[max(cut, 0):]
    entries.extend(more)


def _being_cancelled() -> bool:
    """Whether the running task has been asked to cancel, which tells its own
    cancellation from a CancelledError that code it awaited raised."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


_PEERS: weakref.WeakSet[Peer] = weakref.WeakSet()
"""The peers of this process not yet stopped."""


def _after_fork_in_child() -> None:
    for peer in list(_PEERS):
        peer._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


async def _to_the_end(aw: Awaitable[_T]) -> _T:
    """Await ``aw`` until it is done, even if the calling task is cancelled
    meanwhile: such a cancellation is dropped. Only for cleanup that must
    not stop half way (see :meth:`Peer._release_all`)."""
    fut = asyncio.ensure_future(aw)
    while True:
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if fut.done():
                raise  # fut itself was cancelled
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()


async def _uninterrupted(aw: Awaitable[_T]) -> tuple[_T, asyncio.CancelledError | None]:
    """Await ``aw`` until it is done, even if the calling task is cancelled
    meanwhile; return its result and that cancellation (``None`` if none
    came), which the caller raises once it has kept hold of the result (to
    close what ``aw`` opened). If ``aw`` failed and a cancellation came,
    the cancellation is raised."""
    fut = asyncio.ensure_future(aw)
    cancelled: asyncio.CancelledError | None = None
    while not fut.done():
        try:
            await asyncio.wait([fut])  # unlike awaiting fut, leaves it running when cancelled
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None and (fut.cancelled() or fut.exception() is not None):
        _retrieve(fut)
        raise cancelled
    return fut.result(), cancelled


async def _settled(aw: Awaitable[_T]) -> _T:
    """Await ``aw`` until it is done, even if the calling task is cancelled
    meanwhile, then raise that cancellation: for cleanup that must not stop
    half way in a task that must still end as cancelled (unlike
    :func:`_to_the_end`, which drops the cancellation)."""
    result, cancelled = await _uninterrupted(aw)
    if cancelled is not None:
        raise cancelled
    return result


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark an abandoned future's exception as seen, so asyncio does not log it."""
    if not fut.cancelled():
        fut.exception()


_CONSISTENCIES = ("linearizable", "lease", "stale")

SNAPSHOT_RETRY_MIN = 1.0
"""Seconds before a snapshot is due again after one failed; doubled for
each further failure in a row."""
SNAPSHOT_RETRY_MAX = 60.0
"""The longest wait before a snapshot is due again after failures."""

_PLAIN_TYPES = frozenset({type(None), bool, int, float, str, bytes, list, dict, tuple})
"""Result types that are certainly not awaitable (skips ``inspect.isawaitable``)."""

_SNAPSHOT_MAGIC = b"RAFTLIB\x01"
"""A snapshot file starts with this, a 4-byte length and the session table;
the state machine's own data follows."""


def _close_stores(snapshots: SnapshotStore | None, storage: LogStorage) -> None:
    """Close ``snapshots`` (if any) and ``storage``, both even if the first raises."""
    try:
        if snapshots is not None:
            snapshots.close()
    finally:
        storage.close()


async def _close_source(source: Any) -> None:
    """Close what ``snapshot()`` returned once it was written (or failed):
    a file, or a generator whose ``finally`` releases something. Nobody else
    can: the state machine does not know when raftlib is done with it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return
    if callable(getattr(source, "aclose", None)):
        await source.aclose()
    elif callable(getattr(source, "close", None)):
        source.close()


def _with_header(header: bytes, data: Any) -> Any:
    """Snapshot data with the session table in front (see :data:`_SNAPSHOT_MAGIC`)."""
    prefix = _SNAPSHOT_MAGIC + len(header).to_bytes(4, "big") + header
    if isinstance(data, (bytes, bytearray, memoryview)):
        return prefix + bytes(data)
    if hasattr(data, "__aiter__"):
        async def chained_async() -> AsyncIterator[bytes]:
            yield prefix
            async for piece in data:
                yield piece
        return chained_async()
    if hasattr(data, "read"):
        def from_file() -> Any:
            yield prefix
            while piece := data.read(1 << 20):
                yield piece
        return from_file()
    if isinstance(data, (str,)) or not hasattr(data, "__iter__"):
        raise TypeError(f"snapshot() must return bytes, a binary file or an iterable of bytes, not {type(data).__name__}")

    def chained() -> Any:
        yield prefix
        yield from data
    return chained()


def _read_header(f: Any, snap: Any) -> bytes | None:
    """Read the session table at the start of a snapshot file (``None`` for a
    file without one, which is then rewound)."""
    start = f.tell()
    magic = f.read(len(_SNAPSHOT_MAGIC))
    if magic != _SNAPSHOT_MAGIC:
        f.seek(start)
        return None
    size = int.from_bytes(f.read(4), "big")
    header: bytes = f.read(size)
    if len(header) != size:
        raise CorruptStorage(f"snapshot {snap.meta.term}/{snap.meta.index} is truncated in its session table")
    return header

_FeedItem = tuple[int, int, bytes, bool, bytes]
"""An applied write kept for listeners: index, term, command, ok, packed result (or error text)."""


def _item_index(item: _FeedItem) -> int:
    return item[0]


def _pack_query(query: Any, consistency: str, limit: int) -> bytes:
    if consistency not in _CONSISTENCIES:
        raise ConfigError(f"consistency must be one of {', '.join(_CONSISTENCIES)}, got {consistency!r}")
    return codec.pack(query, "query", limit)


_SNAPSHOTS_KEPT = 2
"""Snapshot files kept on disk (the newest), after a snapshot of a peer's own or one installed from the leader."""

_UNRESTORABLE_KEPT = 16
"""Snapshots the state machine could not restore that a peer remembers, to refuse them when offered again."""


class _Restore(NamedTuple):
    """For the applier: restore the state machine from ``snap``, then set
    ``done`` to ``None``, or to the exception that made it fail."""

    snap: SnapshotFile
    done: asyncio.Future[BaseException | None]


INPUT_WARNING_INTERVAL = 10.0
INPUT_WARNING_BURST = 5
"""At most this many warnings of one kind about other peers' messages (the
ones logged with :data:`raftlib.core.raft.INPUT_WARNING`) per
:data:`INPUT_WARNING_INTERVAL` seconds."""


class _InputWarningLimit(logging.Filter):
    """Lets warnings about other peers' messages through at most
    :data:`INPUT_WARNING_BURST` times per :data:`INPUT_WARNING_INTERVAL` for
    each kind (format string); the first after a pause says how many were
    held back. A peer, or a stranger on an unsecured port, can send messages
    that are dropped as fast as it likes, and one line each would flood the
    log."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[str, tuple[float, int, int]] = {}
        """Kind -> (start of its current interval, warnings let through in it, held back)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "raftlib_input", False):
            return True
        key = str(record.msg)
        now = time.monotonic()
        start, passed, held = self._seen.get(key, (float("-inf"), 0, 0))
        if now - start < INPUT_WARNING_INTERVAL:
            if passed >= INPUT_WARNING_BURST:
                self._seen[key] = (start, passed, held + 1)
                return False
            self._seen[key] = (start, passed + 1, held)
            return True
        if len(self._seen) >= 64:
            self._seen.clear()
        self._seen[key] = (now, 1, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it held back)"
        return True


def _check_forwardable(what: str, data: bytes) -> None:
    """Raise TypeError if the leader would refuse a request carrying ``data``
    (see :func:`~raftlib.transport.framing.wire_problem`)."""
    problem = wire_problem(data)
    if problem:
        raise TypeError(f"the {what} cannot be forwarded to the leader: {problem}; send it to the leader, "
                        f"or use such keys")


def _check_name(name: Any, what: str = "a member name") -> None:
    """Raise ConfigError unless ``name`` is a name peers accept on the wire
    (check_message): a configuration naming anything else could never be
    replicated, and nothing after it would commit."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what} must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{what} must have at most {MAX_NAME_LENGTH} characters, got {len(name)}")


def _check_client(client: Any) -> str:
    if not isinstance(client, str) or not client or len(client) > 128:
        raise ConfigError(f"a client session id must be a non-empty str of at most 128 characters, got {client!r}")
    return client


def _returned(kind: str, payload: bytes) -> Any:
    """A packed result of ``handle_<kind>`` as its caller receives it.

    Through a follower or a client a result travels in a frame, whose map
    keys may not be tuples; one with such a key raises the same
    CommandFailed here, so a write's or read's outcome does not depend on
    which peer was asked (:func:`codec.unpack` would give the tuples back).
    """
    try:
        return codec.unpack_without_tuple_keys(payload)
    except TypeError:
        raise _unreturnable(kind, payload) from None


def _unreturnable(kind: str, payload: bytes) -> CommandFailed:
    return unreturnable_result(kind, wire_problem(payload) or "a map key may not be a list or tuple")


def _seq_reused(client: str, seq: int) -> ConfigError:
    return ConfigError(
        f"write {seq} of client session {client!r} was applied before with another command; this one was not "
        f"applied. Each write of a session needs a sequence number of its own: two writers share the session "
        f"id, or a retry changed its command"
    )


def _session_result(stored: tuple[bool, bytes]) -> Any:
    ok, payload = stored
    if ok:
        return _returned("write", payload)
    raise CommandFailed(payload.decode("utf-8", "replace"))


_MEMBERSHIP_CHANGES = frozenset({"add_member", "remove_member", "set_configuration"})
"""Requests that the leader carries out in turn (see :meth:`Peer._turn_to_reconfigure`)."""
_ANSWER_MARGIN = 1.0
"""Seconds at most, of a forwarded membership change's timeout, left for the
leader's answer to come back (a tenth of the timeout when that is less)."""

_MAX_HOPS = 2
"""A request is forwarded at most this many times (follower to leader, once more if the leader moved)."""
_MAX_ATTEMPTS = 30


def _check_members(members: Mapping[NodeId, str]) -> dict[NodeId, str]:
    if not isinstance(members, Mapping) or not members:
        raise ConfigError("a configuration needs a non-empty mapping of member name to address")
    owners: dict[str, NodeId] = {}
    for nid, addr in members.items():
        _check_name(nid)
        _check_member_address(nid, addr)
        # Only one process can listen at an address: the others would never
        # be reached, and a cluster of them could not elect a leader.
        key = _address_key(addr)
        if key in owners:
            raise ConfigError(f"members {owners[key]} and {nid} have the same address {addr}; each needs its own")
        owners[key] = nid
    return dict(members)


def _address_key(address: str) -> str:
    """``address`` as compared with the others': an absolute Unix socket
    path without repeated slashes or ``.`` components, so that spellings of
    one file compare equal (``..`` stays: it may step back over a symlink)."""
    if address.startswith("unix:/"):
        return "unix:/" + "/".join(part for part in address[len("unix:"):].split("/") if part not in ("", "."))
    return address


def _check_address_free(current: Membership, name: NodeId, address: str) -> None:
    """Raise ConfigError if another member than ``name`` has ``address`` in
    ``current``: as in :func:`_check_members`, only one of them could be
    reached there (and a mistyped name would add a second member)."""
    for owner, addr in current.members.items():
        if _address_key(addr) == _address_key(address) and owner != name:
            role = "voter" if owner in current.voters else "learner"
            raise ConfigError(
                f"{address} is the address of {owner}, a {role} of this cluster: {name} cannot have it too "
                f"(each member needs its own address). To put {name} in its place, remove {owner} first"
            )


def _check_member_address(name: NodeId, address: str) -> None:
    """Raise ConfigError unless ``address`` is one the others can reach ``name`` at."""
    if not isinstance(address, str):
        raise ConfigError(f"the address of {name} must be a string, got {address!r}")
    endpoint = parse_address(address)
    if endpoint.kind == "tcp" and endpoint.port == 0:
        raise ConfigError(
            f"the address of {name}, {address}, has port 0, which only asks for a free port when listening; "
            f"give the port the peer listens on (Peer.address)"
        )
    if endpoint.kind == "unix" and not os.path.isabs(endpoint.host):
        raise ConfigError(
            f"the address of {name}, {address}, is a relative path, which each member would look for in its "
            f"own working directory; give the absolute path (Peer.address)"
        )


def _min_timeout(a: float, b: float | None) -> float:
    return a if b is None else min(a, b)


def _remaining(loop: asyncio.AbstractEventLoop, deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - loop.time())


def _check_deadline(loop: asyncio.AbstractEventLoop, deadline: float | None, what: str) -> None:
    if deadline is not None and loop.time() >= deadline:
        raise Timeout(f"{what} did not finish in the time allowed")


def _describe_membership(m: Membership) -> str:
    text = "voters " + ",".join(sorted(m.voters))
    return text + (" learners " + ",".join(sorted(m.learners)) if m.learners else "")


def _make_state_machine(state_machine: StateMachine | type[StateMachine] | StateMachineFactory) -> StateMachine:
    if isinstance(state_machine, StateMachine):
        sm = state_machine
    elif callable(state_machine):
        sm = state_machine()
        if not isinstance(sm, StateMachine):
            raise ConfigError(f"{state_machine!r}() returned {type(sm).__name__}, not a raftlib.StateMachine")
    else:
        raise ConfigError("state_machine must be a raftlib.StateMachine subclass, instance or factory")
    cls = type(sm)
    if (cls.snapshot is not StateMachine.snapshot and cls.restore is StateMachine.restore
            and cls.restore_from_file is StateMachine.restore_from_file):
        # Else the log is compacted into snapshots that only a restart, or a
        # follower sent one, would find it cannot load.
        raise ConfigError(f"{cls.__name__} implements snapshot() but not restore(data) (or "
                          f"restore_from_file(file)), so no peer could load its snapshots: implement "
                          f"restore too, or drop snapshot() to keep the whole log")
    return sm


def _snapshot_dir(
    data_dir: str | os.PathLike[str] | None, storage: LogStorage, sm: StateMachine
) -> str | None:
    """Where a peer keeps its snapshot files, ``None`` to keep them in memory.

    Snapshots must be as durable as the log: once the log is compacted, its
    entries live only in the snapshot. So they go under ``data_dir`` if
    given, else beside a durable adapter's files (its ``path``); only an
    adapter that keeps everything in memory (``save_blocks = False``) gets
    in-memory snapshots.
    """
    if data_dir is not None:
        return os.path.join(os.fspath(data_dir), "snapshots")
    if not getattr(storage, "save_blocks", True):
        return None
    path = getattr(storage, "path", None)
    if isinstance(path, (str, os.PathLike)):
        return os.path.join(os.fspath(path), "snapshots")
    if type(sm).snapshot is StateMachine.snapshot:
        return None  # never compacts, so never needs a snapshot file
    raise ConfigError(
        f"storage={type(storage).__name__}(...) keeps the log on disk, so snapshots must be on disk too: "
        "pass data_dir= (snapshots go to DATA_DIR/snapshots); in memory they would be lost at a restart, "
        "together with the log entries compacted into them"
    )


async def start_peer(
    state_machine: StateMachine | type[StateMachine] | StateMachineFactory,
    *,
    name: NodeId,
    address: str,
    data_dir: str | os.PathLike[str] | None = None,
    storage: LogStorage | None = None,
    config: Config | None = None,
    logger: logging.Logger | None = None,
    advertise: str | None = None,
    tls: TLSConfig | None = None,
    secret: SharedSecret | bytes | str | None = None,
) -> Peer:
    """Start a Raft peer in the running event loop and return it.

    ``await start_peer(...)`` gives the started :class:`Peer`;
    ``async with await start_peer(...) as peer:`` also stops it when the
    block ends, normally or by an exception, as :meth:`Peer.stop` with its
    defaults does.
    If starting fails or is cancelled, what it had opened (the socket, the
    storage and its lock) is released before the error or the
    cancellation is raised, even if it is cancelled again meanwhile.

    ``state_machine`` is a :class:`StateMachine` subclass (instantiated with no
    arguments), an instance, or a factory. ``address`` is ``host:port`` (port
    0 picks a free one; see :attr:`Peer.address`) or ``unix:/path``. The log
    lives in ``storage`` if given, else in an LMDB database under
    ``data_dir``. A peer restarted on the same ``data_dir`` recovers its term,
    vote and log and replays committed entries into a fresh state machine.
    Snapshots go to ``data_dir/snapshots``; without ``data_dir``, beside the
    files of a storage with a ``path`` (``LMDBStorage``), or in memory for
    in-memory storage. Other on-disk storage needs ``data_dir``
    (:class:`ConfigError` otherwise) when the state machine can snapshot.

    A new cluster is then founded with :meth:`Peer.set_configuration`.
    ``advertise`` is the address the others should use to reach this peer
    when it differs from ``address`` (a proxy or NAT in front of it).

    ``tls`` (mutual TLS) or ``secret`` (a shared cluster secret) secures
    every connection to and from this peer; every member and client must
    use the same kind (see :mod:`raftlib.security`). Connections that fail
    the handshake are logged and closed before they reach the Raft core.

    The peer belongs to this process: fork worker processes before calling
    ``start_peer``, or start them with ``exec``. A child forked after it
    without ``exec`` gives up its copies of the data directory lock and
    the listening socket at once, and :meth:`Peer.stop` there does nothing,
    but it keeps the peer's open connections until it exits, and nothing
    else of the peer may be used in it (see docs/operations.md).
    """
    _check_name(name, "name")
    parse_address(address)
    if advertise is not None:
        parse_address(advertise)
    security = security_from(tls, secret)
    if config is not None and not isinstance(config, Config):
        raise ConfigError(f"config must be a raftlib.Config, got {type(config).__name__}")
    if isinstance(storage, type):
        raise ConfigError(f"storage= takes an adapter instance, got the class {storage.__name__}: "
                          f"pass {storage.__name__}()")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ConfigError(f"data_dir must be a path (str or os.PathLike), got {type(data_dir).__name__}")
    if data_dir is not None and not os.fspath(data_dir):
        raise ConfigError("data_dir is empty: give the directory for this peer's log, such as 'data/s1'")
    cfg = (config or Config()).validate()
    sm = _make_state_machine(state_machine)
    if storage is None:
        if data_dir is None:
            raise ConfigError("start_peer needs data_dir (for the default LMDB storage) or storage=")
        from storage_adapters.lmdb import LMDBStorage

        # A cancellation while the thread opens the database takes effect
        # once it is open, so that it is closed (and its lock released).
        lmdb, cancelled = await _uninterrupted(asyncio.to_thread(LMDBStorage, data_dir))
        if cancelled is not None:
            await _settled(asyncio.to_thread(lmdb.close))
            raise cancelled
        storage = lmdb
    log = logger or logging.getLogger(f"raftlib.peer.{name}")
    snapshots: SnapshotStore | None = None
    peer: Peer | None = None
    try:
        snapshot_dir = _snapshot_dir(data_dir, storage, sm)
        if snapshot_dir is not None:
            files, cancelled = await _uninterrupted(asyncio.to_thread(FileSnapshotStore, snapshot_dir))
            snapshots = files
            if cancelled is not None:
                raise cancelled
        else:
            snapshots = MemorySnapshotStore()
        peer = Peer(sm, name=name, address=address, storage=storage, snapshots=snapshots, config=cfg, log=log,
                    advertise=advertise, security=security)
        recovered = peer._core.commit_index
        await peer._start()
    except BaseException:
        # Release whatever was opened, then report the original error. Like
        # stop(), the release goes on to its end if cancelled (again) meanwhile.
        await _settled(_close_unstarted(peer, snapshots, storage))
        raise
    try:
        # A restarted peer serves only once it has replayed what it knew to
        # be committed: a read must not see the state from before the restart.
        await peer._wait_applied(recovered)
    except BaseException:
        await _settled(peer.stop(transfer_leadership=False))
        raise
    return peer


async def _close_unstarted(peer: Peer | None, snapshots: SnapshotStore | None, storage: LogStorage) -> None:
    """Release what a start that failed had opened: the peer's socket, then the stores."""
    try:
        if peer is not None:
            await peer._transport.close()
    finally:
        if peer is not None:
            _PEERS.discard(peer)
        await asyncio.to_thread(_close_stores, snapshots, storage)


async def join(
    state_machine: StateMachine | type[StateMachine] | StateMachineFactory,
    *,
    name: NodeId,
    address: str,
    seeds: Sequence[str],
    data_dir: str | os.PathLike[str] | None = None,
    storage: LogStorage | None = None,
    config: Config | None = None,
    logger: logging.Logger | None = None,
    voter: bool = True,
    timeout: float | None = 120.0,
    advertise: str | None = None,
    tls: TLSConfig | None = None,
    secret: SharedSecret | bytes | str | None = None,
) -> Peer:
    """Start a peer and add it to a running cluster; return it.

    Like :func:`start_peer`, it may also be used as ``async with await
    join(...) as peer:`` to stop the peer when the block ends.

    ``seeds`` are addresses of any current members: the first one reachable
    forwards the request to the leader, which adds this peer as a learner,
    lets it catch up (from the log or a snapshot) and then, if ``voter``,
    promotes it. Returns once the change has committed. A peer restarted on
    a ``data_dir`` where it is already a member just starts, unless it is a
    learner asking to be a voter or its address changed: then that change
    is made as for a new member (a voter is never made a learner). A new
    peer (empty log) may not take the name of a voter at another address,
    and no peer the address of another member.

    A refusal for want of a live majority (:class:`NoLiveMajority`: voters
    of the cluster are down) is asked again until ``timeout``, then raised:
    the cluster may be restarting a member. The other arguments are those
    of :func:`start_peer`. Raises
    :class:`ConfigError` for bad arguments, :class:`Unavailable` if no seed
    can be reached (:class:`~raftlib.errors.AuthenticationFailed` if every
    seed refused this peer's ``tls``/``secret`` credentials), and
    :class:`Timeout` if it is not a member within ``timeout`` seconds; the
    peer is stopped in each case.
    """
    check_timeout(timeout)
    if isinstance(seeds, str) or not seeds or not all(isinstance(a, str) for a in seeds):
        raise ConfigError("join needs seeds: a list of addresses of current members")
    for seed in seeds:
        parse_address(seed)
    peer = await start_peer(state_machine, name=name, address=address, data_dir=data_dir, storage=storage,
                            config=config, logger=logger, advertise=advertise, tls=tls, secret=secret)
    await _join_started(peer, list(seeds), voter, timeout)
    return peer


async def _join_started(peer: Peer, seeds: list[str], voter: bool, timeout: float | None,
                        announce: Callable[[bool], None] | None = None) -> None:
    """What :func:`join` does once ``peer`` has started; stops it if that
    fails. ``announce(asking)`` is told first whether it asks the cluster
    to add it (``False``: a member restarted on its data directory)."""
    try:
        # A restart on a data_dir where it is a member just starts, unless the
        # change is unfinished: a learner that asks to vote (a join cut off
        # before its promotion) or a member now at another address. A voter
        # is never demoted here.
        membership = peer.membership
        voter = voter or peer.name in membership.voters
        asking = (membership.voters if voter else membership.learners).get(peer.name) != peer.address
        if announce is not None:
            announce(asking)
        if asking:
            fresh = not membership.members and peer._core.log.last_index() == 0
            await _ask_to_join(peer, seeds, voter, timeout, fresh)
    except BaseException:
        await _settled(peer.stop(transfer_leadership=False))  # to its end, as in start_peer
        raise


def _check_name_free(peer: Peer, status: Any) -> None:
    """Raise ConfigError if a brand-new ``peer`` would take the place of a
    voter of that name at another address. That voter may still run and
    vote under its old address, next to this one under the new address: two
    processes answering as one voter can elect two leaders, or lose
    committed entries."""
    members = status.get("members") if isinstance(status, dict) else None
    info = members.get(peer.name) if isinstance(members, dict) else None
    if isinstance(info, dict) and info.get("role") == "voter" and info.get("address") != peer.address:
        raise ConfigError(
            f"{peer.name} is already a voter of this cluster, at {info.get('address')}; a new peer with an empty "
            f"log cannot take its place. Start this peer on {peer.name}'s data directory, or remove "
            f"{peer.name} first (remove_member, or `raftlib members remove {peer.name}`), then join"
        )


_JOIN_WARNING_INTERVAL = 5.0
"""Seconds between warnings that joining is still failing. The first comes
at once if no seed could be reached at all, otherwise after this long: a
member that answered is often just busy electing or changing membership."""


async def _ask_to_join(peer: Peer, seeds: list[str], voter: bool, timeout: float | None, fresh: bool) -> None:
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    args = {"name": peer.name, "address": peer.address, "voter": voter}
    cfg = peer.config
    probe = max(1.0, 4 * cfg.election_ticks * cfg.tick_interval)  # seconds a seed has to answer a status
    last_error: BaseException | None = None
    addresses = list(seeds)
    backoff = 0.05
    warned_at: float | None = None
    started = loop.time()
    while True:
        refused = denied = 0
        reached = False
        for address in list(addresses):
            try:
                conn = await RpcConnection.open(address, name=peer.name, max_frame_size=peer.config.max_frame_size,
                                                security=peer._security)
            except Unavailable as exc:
                last_error = exc
                refused += isinstance(exc, AuthenticationFailed)
                denied += isinstance(exc.__cause__, PermissionError)  # a Unix socket's file (see RpcConnection.open)
                continue
            try:
                # A seed that accepts connections but does not answer (a paused
                # process) must not hold the join up until its deadline: a
                # member answers a status at once, so move on to the next one.
                try:
                    status = await conn.call("status", {}, timeout=_min_timeout(probe, _remaining(loop, deadline)))
                except Timeout as exc:
                    last_error = Unavailable(f"{address} accepted the connection but did not answer: {exc}")
                    continue
                reached = True
                if fresh:
                    _check_name_free(peer, status)
                await conn.call("add_member", {**args, "timeout": _remaining(loop, deadline)},
                                timeout=_remaining(loop, deadline))
                peer._log.info("%s: joined the cluster through %s", peer.name, address)
                return
            except NoLiveMajority as exc:
                # The leader answered: asking through another seed gets the same answer.
                # Once a stopped voter is back, it is a yes.
                last_error = exc
                break
            except (NotLeader, Unavailable, ConnectionLost, LeadershipLost) as exc:
                last_error = exc
                refused += isinstance(exc, AuthenticationFailed)
                if isinstance(exc, NotLeader) and exc.leader_address and exc.leader_address not in addresses:
                    addresses.insert(0, exc.leader_address)
            finally:
                await conn.close()
        if refused == len(addresses):
            raise AuthenticationFailed(f"{peer.name} cannot join: every seed refused its credentials ({last_error})")
        if denied and refused + denied == len(addresses):
            # Waiting does not change the permissions of socket files either.
            raise Unavailable(f"{peer.name} cannot join: no seed lets this process connect ({last_error})")
        if deadline is not None and loop.time() + backoff >= deadline:
            if isinstance(last_error, Unavailable):
                raise Unavailable(f"{peer.name} could not reach any of {seeds} to join: {last_error}")
            if isinstance(last_error, NoLiveMajority):
                raise NoLiveMajority(f"{peer.name} did not become a {'voter' if voter else 'member'} within "
                                     f"{timeout:g} s: {last_error}")
            raise Timeout(f"{peer.name} did not become a member within {timeout} s (last error: {last_error})")
        if warned_at is not None:
            warn_at = warned_at + _JOIN_WARNING_INTERVAL
        else:
            warn_at = started + _JOIN_WARNING_INTERVAL if reached else started
        if loop.time() >= warn_at:
            warned_at = loop.time()
            peer._log.warning("%s: could not join through %s yet, retrying: %s",
                              peer.name, ", ".join(addresses), last_error)
        await asyncio.sleep(backoff)
        backoff = min(1.0, backoff * 2)
