"""The base class users subclass to put their service under Raft."""

from __future__ import annotations

from typing import Any, Awaitable, BinaryIO, Iterable


class StateMachine:
    """The replicated part of a service.

    raftlib calls :meth:`handle_write` once for every committed write, in log
    order, on every peer. It must be **deterministic**: given the same
    sequence of commands, every peer must reach the same state and return the
    same results. Do not read clocks, random numbers, the network or
    environment-specific state in it.

    Both handlers may be plain methods or ``async def``. Commands, queries and
    results are values msgpack can encode; handlers receive commands and
    queries as msgpack decodes them (tuples arrive as lists, for example).

    An exception raised by :meth:`handle_write` is raised to the writer; the
    entry still counts as applied, so raise only deterministically. A result
    msgpack cannot encode, or one that cannot cross the network (map keys
    other than str, bytes, int, float, bool or None, such as tuples), reaches
    the writer as :class:`~raftlib.errors.CommandFailed`, at whichever peer
    it wrote; the write took effect on every peer.
    """

    def handle_write(self, command: Any) -> Any:
        """Apply one committed command and return its result."""
        raise NotImplementedError(f"{type(self).__name__} must implement handle_write(command)")

    def handle_read(self, query: Any) -> Any:
        """Answer a query from the current state without changing it."""
        raise NotImplementedError(f"{type(self).__name__} must implement handle_read(query)")

    def snapshot(self) -> bytes | BinaryIO | Iterable[bytes]:
        """Return the whole state, for log compaction.

        Return ``bytes``, a readable binary file object, or an iterable of
        ``bytes`` chunks (a generator lets a large state stream to disk with
        bounded memory); raftlib closes a returned file or generator once
        it is written. raftlib calls it in a worker thread, never on the
        event loop, while no command is being applied; reads may still run.
        A state machine that does not override it never compacts its log;
        one that does must override :meth:`restore` or
        :meth:`restore_from_file` too.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement snapshot()")

    def restore(self, data: bytes) -> Awaitable[None] | None:
        """Replace the whole state with one produced by :meth:`snapshot`.

        Called at start-up (from the latest snapshot on disk) and when a
        follower installs a snapshot sent by the leader. A plain method runs
        in a worker thread, so the event loop keeps serving however long it
        takes, provided it lets go of the GIL: a single long call into a C
        extension (``msgpack.unpackb`` of a large state, say) holds it, and
        the loop with it, until it returns; unpack such a state piece by
        piece in :meth:`restore_from_file`. An ``async def`` one runs on the
        event loop (it must not block it). Either way nothing else touches the state meanwhile: no
        command is applied and reads (``handle_read``) wait until it
        returns. If it raises, it must leave the state as it was (decode
        everything, then replace the state): a follower then refuses the
        snapshot and keeps its log and its state.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement restore(data)")

    def restore_from_file(self, file: BinaryIO) -> Awaitable[None] | None:
        """Like :meth:`restore`, from a binary file positioned at the data.

        The default reads it all (in the worker thread) and calls
        :meth:`restore`; override it to load a large state without holding
        it in memory twice. It may be ``async def`` too; the file stays
        open until it returns.
        """
        return self.restore(file.read())
