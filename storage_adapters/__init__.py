"""Storage adapters for raftlib: the :class:`LogStorage` protocol, the
in-memory reference adapter and the LMDB adapter (the default)."""

from .protocol import LogStorage
from .memory import MemoryStorage
from .lmdb import LMDBStorage

__all__ = ["LogStorage", "MemoryStorage", "LMDBStorage"]
