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
import heapq
import inspect
import itertools
import logging
import os
import random
from typing import Any, Callable, Mapping

from . import codec
from .config import Config
from . import snapshotting
from .core.messages import InstallSnapshot, Message
from .core.raft import LEADER, Raft
from .core.ready import Ready
from .errors import (
    AlreadyBootstrapped,
    ConfigError,
    CorruptStorage,
    LeadershipLost,
    NotLeader,
    PeerStopped,
    ProposalDropped,
    ProtocolError,
    RaftError,
    StorageError,
    Timeout,
    WriteTimeout,
)
from .snapshot import FileSnapshotStore, MemorySnapshotStore, SnapshotFile, SnapshotStore
from .state_machine import StateMachine
from .transport.tcp import Connection, Transport, parse_address
from .types import Entry, EntryKind, Membership, NodeId, SnapshotMeta

from storage_adapters.protocol import LogStorage

logger = logging.getLogger("raftlib")

StateMachineFactory = Callable[[], StateMachine]


class Peer:
    """A running Raft peer. Create it with :func:`start_peer`."""

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
    ) -> None:
        self.name = name
        self.state_machine = state_machine
        self.config = config
        self._storage = storage
        self._snapshots = snapshots
        self._log = log
        self._transport = Transport(
            name, address, on_message=self._on_message, on_frame=self._on_frame,
            max_frame_size=config.max_frame_size, logger=log,
        )
        rng = random.Random(config.seed if config.seed is not None else os.urandom(16))
        self._core = Raft(name, storage, config, rng, log.getChild("core"))

        self._inbox: list[Message] = []
        self._proposals: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._read_requests: list[tuple[int, asyncio.Future[int]]] = []
        self._calls: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._ticks = 0
        self._wake = asyncio.Event()

        self._pending_writes: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._pending_reads: dict[int, asyncio.Future[int]] = {}
        self._read_ids = itertools.count(1)
        self._apply_queue: asyncio.Queue[list[Entry] | SnapshotFile] = asyncio.Queue()
        self._applied = self._core.applied_index
        self._applied_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()
        self._state_waiters: list[asyncio.Future[None]] = []
        self._membership = Membership()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._fatal: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._save_inline = not getattr(storage, "save_blocks", True)

        snap = self._core.snapshot
        self._applied_term = snap.term if snap else 0
        self._snapshot_index = snap.index if snap else 0
        self._recorded_snapshot: SnapshotMeta | None = snap
        """The snapshot the log storage refers to: it must never be pruned."""
        self._bytes_since_snapshot = 0
        self._can_snapshot = type(state_machine).snapshot is not StateMachine.snapshot
        self._snapshot_requests: list[asyncio.Future[SnapshotMeta]] = []
        self._compactions: list[tuple[SnapshotMeta, asyncio.Future[None]]] = []
        self._snapshot_reports: list[tuple[NodeId, bool]] = []
        self._transfers: dict[NodeId, asyncio.Task[None]] = {}
        self._transfer_failures: dict[NodeId, int] = {}
        self._receiving = snapshotting.SnapshotReceiving(
            name, snapshots, lambda: self._core.term, self._on_message, log
        )

    # -- lifecycle ---------------------------------------------------------------

    async def _start(self) -> None:
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
            await asyncio.to_thread(self._restore_state_machine, found)
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
        hands leadership to the most up-to-date follower, so a planned stop
        costs no election timeout; if that fails within two election
        timeouts it stops anyway and the others elect a leader.

        Writes still in flight fail with :class:`LeadershipLost` (outcome
        unknown); queued writes not yet in the log fail with :class:`PeerStopped`.
        Idempotent.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        if transfer_leadership and self._fatal is None and self.is_leader and len(self._core.membership.voters) > 1:
            try:
                new = await self.transfer_leadership()
                self._log.info("%s: handed leadership to %s before stopping", self.name, new)
            except RaftError as exc:
                self._log.info("%s: stopping without a leadership transfer: %s", self.name, exc)
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._wake.set()
        driver, *others = self._tasks
        for t in others:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception:  # a crashed task was already logged by _fail
                self._log.debug("task %s ended with an error", t.get_name(), exc_info=True)
        await self._cancel_transfers()
        await self._receiving.close()
        await self._transport.close()
        try:
            self._snapshots.close()
            self._storage.close()
        finally:
            self._fail_everything(
                PeerStopped(f"peer {self.name} has stopped"),
                LeadershipLost(f"peer {self.name} stopped before the write's outcome was known"),
            )
            self._stopped.set()
            self._log.info("%s: stopped", self.name)

    # -- public API ----------------------------------------------------------------

    @property
    def address(self) -> str:
        """The address this peer listens on (with the real port if 0 was asked for)."""
        return self._transport.address

    @property
    def leader(self) -> NodeId | None:
        """The name of the leader this peer knows of, or ``None``."""
        return self._core.leader

    @property
    def is_leader(self) -> bool:
        return self._core.role == LEADER

    def status(self) -> dict[str, Any]:
        """Role, term, leader, commit and applied index, and members of this peer."""
        core = self._core
        membership = core.membership
        progress = core.progress if core.role == LEADER else {}
        members = {
            nid: {
                "address": addr,
                "voter": nid in membership.voters,
                **({"match_index": progress[nid].match} if nid in progress else {}),
            }
            for nid, addr in membership.members.items()
        }
        return {
            "name": self.name,
            "address": self.address,
            "role": core.role,
            "term": core.term,
            "leader": core.leader,
            "commit_index": core.commit_index,
            "applied_index": self._applied,
            "last_index": core.log.last_index(),
            "snapshot_index": self._snapshot_index,
            "members": members,
        }

    async def set_configuration(self, members: Mapping[NodeId, str]) -> None:
        """Bootstrap a brand-new cluster with ``members`` (name → address).

        Call it on one founding peer (or on every one, with the same
        members). It only writes the first log entry; the members then elect
        a leader. On a peer whose log already holds this exact configuration
        it does nothing; with different members it raises
        :class:`AlreadyBootstrapped`. Raises :class:`ConfigError` for a
        malformed mapping or one that does not include this peer.
        """
        if not isinstance(members, Mapping) or not members:
            raise ConfigError("set_configuration needs a non-empty mapping of member name to address")
        for nid, addr in members.items():
            if not isinstance(nid, str) or not nid or not isinstance(addr, str):
                raise ConfigError(f"member names and addresses must be non-empty strings, got {nid!r}: {addr!r}")
            parse_address(addr)
        if self.name not in members:
            raise ConfigError(f"the configuration must include this peer ({self.name!r})")
        wanted = Membership(voters=dict(members))

        def bootstrap() -> None:
            core = self._core
            if core.log.last_index() == 0 and core.term == 0:
                core.bootstrap(wanted)
            elif core.membership != wanted:
                raise AlreadyBootstrapped(
                    f"peer {self.name} already belongs to a cluster with members "
                    f"{dict(core.membership.voters)}; use membership changes to alter it"
                )

        await self._call_in_driver(bootstrap)

    async def wait_for_leader(self, timeout: float | None = None) -> NodeId:
        """Wait until a leader is known and return its name.

        Raises :class:`raftlib.errors.Timeout` after ``timeout`` seconds.
        """
        self._check_running()

        try:
            await asyncio.wait_for(self._wait_until(lambda: self._core.leader is not None), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"no leader was elected within {timeout} s") from None
        leader = self._core.leader
        assert leader is not None
        return leader

    async def transfer_leadership(self, to: NodeId | None = None, timeout: float | None = None) -> NodeId:
        """Hand leadership to ``to`` (by default the most up-to-date voter) and
        return the new leader's name.

        The leader stops accepting writes (they raise
        :class:`ProposalDropped`), waits until the target has every entry,
        then tells it to start an election at once (no election timeout).
        Raises :class:`NotLeader` on a follower, :class:`ConfigError` if ``to``
        is not another voter, and :class:`raftlib.errors.Timeout` if no other
        peer leads within ``timeout`` seconds (default: two maximum election
        timeouts); the transfer is then abandoned and this peer keeps leading.
        """
        self._check_running()
        self._check_leader()

        def start() -> NodeId:
            try:
                return self._core.transfer_leadership(to)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

        target = await self._call_in_driver(start)
        limit = timeout if timeout is not None else 4 * self.config.election_ticks * self.config.tick_interval
        try:
            await asyncio.wait_for(self._wait_until(lambda: self._core.leader not in (None, self.name)), limit)
        except asyncio.TimeoutError:
            raise Timeout(f"leadership did not pass to {target} within {limit:.2f} s") from None
        leader = self._core.leader
        assert leader is not None
        return leader

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, checking it after each change of role or leader."""
        while not condition():
            self._check_running()
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._state_waiters.append(fut)
            await fut

    async def write(self, command: Any, timeout: float | None = None) -> Any:
        """Replicate ``command`` and return what ``handle_write`` returned for it.

        Raises :class:`TypeError` if the command cannot be encoded by msgpack
        (nothing is appended); :class:`NotLeader` if this peer is not the
        leader (not applied: retry at the leader it names);
        :class:`ProposalDropped` or :class:`PeerStopped` when the write
        certainly did not apply; :class:`LeadershipLost` or
        :class:`WriteTimeout` when its outcome is unknown.
        """
        data = codec.pack(command, "command", self.config.max_command_size)
        self._check_running()
        self._check_leader()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._proposals.append((data, fut))
        self._wake.set()
        if timeout is None:
            return await fut
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            raise WriteTimeout(f"the write did not finish within {timeout} s; it may still be applied") from None

    async def read(self, query: Any, timeout: float | None = None) -> Any:
        """Answer ``query`` with ``handle_read``, linearizably.

        The leader confirms it still leads with a round of heartbeats
        (ReadIndex, shared by concurrent reads) and waits until it has
        applied everything committed before the read began. Raises
        :class:`TypeError` for a query msgpack cannot encode, :class:`NotLeader`
        on a follower and :class:`raftlib.errors.Timeout` after ``timeout``.
        """
        data = codec.pack(query, "query", self.config.max_command_size)
        self._check_running()
        self._check_leader()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._read_requests.append((next(self._read_ids), fut))
        self._wake.set()

        async def serve() -> Any:
            index = await fut
            await self._wait_applied(index)
            result = self.state_machine.handle_read(codec.unpack(data))
            if inspect.isawaitable(result):
                result = await result
            return codec.roundtrip(result, "read result")

        try:
            return await asyncio.wait_for(serve(), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"the read did not finish within {timeout} s") from None

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
        else:
            raise ProtocolError(f"unexpected frame type {type_name[:64]!r}")

    def _on_message(self, msg: Message) -> None:
        if not self._stopping:
            self._inbox.append(msg)
            self._wake.set()

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.tick_interval
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            self._ticks += 1
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
                if self._compactions:
                    await self._compact()
                done = self._take_input()
                while self._core.has_ready():
                    await self._handle_ready(self._core.ready())
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
            try:
                done.append((fut, fn()))
            except RaftError as exc:
                done.append((fut, exc))
        reports, self._snapshot_reports = self._snapshot_reports, []
        for node_id, ok in reports:
            core.report_snapshot(node_id, ok)
        inbox, self._inbox = self._inbox, []
        for msg in inbox:
            core.step(msg)
        # Messages first, then at most a heartbeat interval of ticks: if this
        # process was stalled, the time it could not observe must not count
        # against the others (a follower would call a needless election, a
        # leader would step down for lack of acknowledgements it has queued).
        ticks, self._ticks = self._ticks, 0
        for _ in range(min(ticks, self.config.heartbeat_ticks)):
            core.tick()
        if self._proposals:
            self._propose()
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

    def _propose(self) -> None:
        batch, self._proposals = self._proposals, []
        live = [(data, fut) for data, fut in batch if not fut.done()]
        if not live:
            return
        try:
            placed = self._core.propose_batch([data for data, _ in live])
        except NotLeader as exc:
            for _, fut in live:
                fut.set_exception(self._not_leader(exc.leader))
            return
        except ProposalDropped as exc:
            for _, fut in live:
                fut.set_exception(ProposalDropped(str(exc)))
            return
        for (term, index), (_, fut) in zip(placed, live):
            self._pending_writes[index] = (term, fut)

    async def _handle_ready(self, rd: Ready) -> None:
        send = self._transport.send
        for m in rd.messages:
            if isinstance(m, InstallSnapshot):
                self._start_transfer(m)
            else:
                send(m)
        hard_state = rd.hard_state
        if rd.snapshot is not None:
            # The term (at least the snapshot's) goes to disk before the
            # snapshot does, so a crash in between never leaves a log that
            # holds a snapshot of a term newer than the persisted one.
            if hard_state is not None:
                await self._storage_call(self._storage.save, hard_state, [], True)
                hard_state = None
            await self._install_snapshot(rd.snapshot)
        if hard_state is not None or rd.entries:
            await self._storage_call(self._storage.save, hard_state, rd.entries, True)
        for m in rd.messages_after_persist:
            send(m)
        if rd.soft_state is not None:
            self._on_soft_state(rd)
        if rd.committed_entries:
            self._apply_queue.put_nowait(rd.committed_entries)
        for rs in rd.read_states:
            for rid in rs.request_ids:
                fut = self._pending_reads.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(rs.index)
        self._core.advance(rd)
        if self._core.membership is not self._membership:
            self._sync_addresses()

    async def _storage_call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a storage write off the event loop (inline for adapters that never block)."""
        try:
            if self._save_inline:
                fn(*args)
            else:
                # Shielded: a write that has started must finish before storage closes.
                await asyncio.shield(asyncio.to_thread(fn, *args))
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"writing to storage failed: {exc}") from exc

    async def _install_snapshot(self, meta: SnapshotMeta) -> None:
        """A follower took the leader's snapshot: record it, restore the state machine."""
        found = self._snapshots.find(meta.index, meta.term)
        if found is None:
            raise StorageError(f"peer {self.name}: the received snapshot {meta.term}/{meta.index} is not in the store")
        await self._storage_call(self._storage.install_snapshot, meta)
        self._recorded_snapshot = meta
        self._apply_queue.put_nowait(found)  # restored in order with the entries

    async def _compact(self) -> None:
        """Record snapshots taken by the applier in the core and compact storage."""
        compactions, self._compactions = self._compactions, []
        core = self._core
        for meta, fut in compactions:
            if meta.index >= self._storage.first_index() - 1:
                core.snapshot_taken(meta)
                keep_from = min(meta.index - self.config.snapshot_keep_entries, core.compaction_limit())
                upto = max(keep_from, self._storage.first_index() - 1)
                await self._storage_call(self._storage.compact, upto, meta)
                self._recorded_snapshot = meta
            # else: a newer snapshot from the leader was installed meanwhile.
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
            if snap is None or address is None:
                self._log.warning("%s: cannot send snapshot %d/%d to %s (%s)", self.name, msg.snapshot_term,
                                  msg.index, msg.dst, "no such snapshot" if snap is None else "no address")
                return
            self._log.debug("%s: offering snapshot %d/%d (%d bytes) to %s", self.name, msg.snapshot_term,
                            msg.index, snap.size, msg.dst)
            sent = await snapshotting.send_snapshot(
                msg, snap, self._snapshots, own_address=self.address, address=address,
                chunk_size=self.config.snapshot_chunk_size, max_frame_size=self.config.max_frame_size,
                timeout=max(5.0, 10 * self.config.election_ticks * self.config.tick_interval),
            )
            self._log.info("%s: sent snapshot %d/%d to %s (%d bytes this attempt)", self.name, msg.snapshot_term,
                           msg.index, msg.dst, sent)
            ok = True
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
        waiters, self._state_waiters = self._state_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
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
                fut.set_exception(
                    LeadershipLost(f"peer {self.name} stopped leading before entry {index} committed; outcome unknown")
                )
        reads, self._pending_reads = self._pending_reads, {}
        for fut in reads.values():
            if not fut.done():
                fut.set_exception(self._not_leader(self._core.leader))

    def _sync_addresses(self) -> None:
        membership = self._core.membership
        self._membership = membership
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
            if isinstance(batch, SnapshotFile):
                await asyncio.to_thread(self._restore_state_machine, batch)
                self._applied, self._applied_term = batch.meta.index, batch.meta.term
                self._snapshot_index = batch.meta.index
                self._bytes_since_snapshot = 0
                self._wake_applied_waiters()
                continue
            for entry in batch:
                pending = self._pending_writes.pop(entry.index, None)
                if entry.kind is EntryKind.NORMAL:
                    await self._apply_one(sm, entry, pending)
                    self._bytes_since_snapshot += len(entry.data)
                elif pending is not None and not pending[1].done():
                    pending[1].set_exception(ProposalDropped("another leader's entry took this write's place"))
                self._applied, self._applied_term = entry.index, entry.term
                self._wake_applied_waiters()
            if self._snapshot_requests or self._snapshot_due():
                await self._take_snapshot()

    def _snapshot_due(self) -> bool:
        cfg = self.config
        return self._can_snapshot and (
            self._applied - self._snapshot_index >= cfg.snapshot_entries
            or self._bytes_since_snapshot >= cfg.snapshot_bytes
        )

    async def _take_snapshot(self) -> None:
        """Snapshot the state machine at the applied index (nothing is applied meanwhile)."""
        requests, self._snapshot_requests = self._snapshot_requests, []
        try:
            index = self._applied
            meta = SnapshotMeta(index, self._applied_term, self._core.membership_at(index))
            if index > self._snapshot_index or self._snapshots.find(index, meta.term) is None:
                data = await asyncio.to_thread(self.state_machine.snapshot)
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
                self._snapshot_index = index
                self._bytes_since_snapshot = 0
                await self._snapshots.prune(keep=2, protect=self._recorded_snapshot)
                self._log.info("%s: snapshot at %d (%d bytes); log compacted", self.name, index, snap.size)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.error("%s: taking a snapshot failed: %r", self.name, exc, exc_info=True)
            for req in requests:
                if not req.done():
                    req.set_exception(exc)
            return
        for req in requests:
            if not req.done():
                req.set_result(meta)

    def _restore_state_machine(self, snap: SnapshotFile) -> None:
        """Load ``snap`` into the state machine (runs in a worker thread)."""
        with self._snapshots.open(snap) as f:
            self.state_machine.restore_from_file(f)

    async def _apply_one(self, sm: StateMachine, entry: Entry, pending: tuple[int, asyncio.Future[Any]] | None) -> None:
        fut = None
        if pending is not None:
            term, fut = pending
            if term != entry.term:
                if not fut.done():
                    fut.set_exception(ProposalDropped("another leader's entry took this write's place"))
                fut = None
        try:
            result = sm.handle_write(codec.unpack(entry.data))
            if inspect.isawaitable(result):
                result = await result
            if fut is not None and not fut.done():
                fut.set_result(codec.roundtrip(result, "write result"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.info("%s: handle_write raised for entry %d: %r", self.name, entry.index, exc)
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    async def _wait_applied(self, index: int) -> None:
        if self._applied >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._applied_waiters, (index, next(self._waiter_ids), fut))
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

    def _check_leader(self) -> None:
        if self._core.role != LEADER:
            raise self._not_leader(self._core.leader)

    def _not_leader(self, leader: NodeId | None) -> NotLeader:
        address = self._core.membership.members.get(leader) if leader else None
        return NotLeader(leader, address)

    def _fail_everything(self, not_applied: BaseException, unknown: BaseException) -> None:
        for _, fut in self._proposals:
            if not fut.done():
                fut.set_exception(not_applied)
        self._proposals = []
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
        for sfut in self._state_waiters:
            if not sfut.done():
                sfut.set_exception(not_applied)
        self._state_waiters = []


def _make_state_machine(state_machine: StateMachine | type[StateMachine] | StateMachineFactory) -> StateMachine:
    if isinstance(state_machine, StateMachine):
        return state_machine
    if callable(state_machine):
        sm = state_machine()
        if not isinstance(sm, StateMachine):
            raise ConfigError(f"{state_machine!r}() returned {type(sm).__name__}, not a raftlib.StateMachine")
        return sm
    raise ConfigError("state_machine must be a raftlib.StateMachine subclass, instance or factory")


async def start_peer(
    state_machine: StateMachine | type[StateMachine] | StateMachineFactory,
    *,
    name: NodeId,
    address: str,
    data_dir: str | os.PathLike[str] | None = None,
    storage: LogStorage | None = None,
    config: Config | None = None,
    logger: logging.Logger | None = None,
) -> Peer:
    """Start a Raft peer in the running event loop and return it.

    ``state_machine`` is a :class:`StateMachine` subclass (instantiated with no
    arguments), an instance, or a factory. ``address`` is ``host:port`` (port
    0 picks a free one; see :attr:`Peer.address`) or ``unix:/path``. The log
    lives in ``storage`` if given, else in an LMDB database under
    ``data_dir``. A peer restarted on the same ``data_dir`` recovers its term,
    vote and log and replays committed entries into a fresh state machine.

    A new cluster is then founded with :meth:`Peer.set_configuration`.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name must be a non-empty string, got {name!r}")
    parse_address(address)
    cfg = (config or Config()).validate()
    sm = _make_state_machine(state_machine)
    if storage is None:
        if data_dir is None:
            raise ConfigError("start_peer needs data_dir (for the default LMDB storage) or storage=")
        from storage_adapters.lmdb import LMDBStorage

        storage = await asyncio.to_thread(LMDBStorage, data_dir)
    log = logger or logging.getLogger(f"raftlib.peer.{name}")
    snapshots: SnapshotStore | None = None
    peer: Peer | None = None
    try:
        if data_dir is not None:
            snapshots = await asyncio.to_thread(FileSnapshotStore, os.path.join(os.fspath(data_dir), "snapshots"))
        else:
            snapshots = MemorySnapshotStore()
        peer = Peer(sm, name=name, address=address, storage=storage, snapshots=snapshots, config=cfg, log=log)
        await peer._start()
    except BaseException:
        # Release whatever was opened, then report the original error.
        if peer is not None:
            await peer._transport.close()
        if snapshots is not None:
            snapshots.close()
        storage.close()
        raise
    return peer
