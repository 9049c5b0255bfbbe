"""msgpack encoding of user commands, queries and results.

Everything a user hands to raftlib crosses this boundary once: a command is
encoded when it is written (so a bad value fails at the call, before anything
is appended) and the bytes are what the log stores and the network carries.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

from .errors import CommandTooLarge

_local = threading.local()
"""Each thread's idle ``msgpack.Packer`` (``packer``), reused from call to
call: ``msgpack.packb`` builds a new one each time, which costs more than
packing a small command."""


def pack(value: Any, what: str = "value", max_size: int | None = None) -> bytes:
    """Encode ``value`` with msgpack; raise TypeError naming ``what`` if it cannot be."""
    local = _local
    packer = getattr(local, "packer", None)
    if packer is None:
        packer = msgpack.Packer(use_bin_type=True)
    # Taken while in use: packing a list or dict subclass runs its Python
    # methods, and a pack() they start on this thread gets a packer of its own.
    local.packer = None
    try:
        data: bytes = packer.pack(value)  # resets itself after an error too
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"the {what} must be encodable by msgpack (None, bool, int, float, str, bytes, "
            f"list, tuple, dict): {exc}"
        ) from None
    finally:
        local.packer = packer
    if max_size is not None and len(data) > max_size:
        raise CommandTooLarge(f"the encoded {what} is {len(data)} bytes; the limit (Config.max_command_size) is {max_size}")
    return data


def unpack(data: bytes) -> Any:
    """Decode msgpack bytes produced by :func:`pack`.

    A map key that was a tuple comes back as a tuple, not a list (a list
    cannot be a key): ``{(1, 2): 3}`` round-trips. Without that, a value
    :func:`pack` accepted could not be decoded where it is applied or
    answered.
    """
    try:
        return unpack_without_tuple_keys(data)
    except TypeError:  # an unhashable (array) map key; rare, so decoded again only then
        return msgpack.unpackb(data, raw=False, strict_map_key=False, object_pairs_hook=_map_with_tuple_keys)


def unpack_without_tuple_keys(data: bytes) -> Any:
    """Decode like :func:`unpack`, but raise TypeError for a map key that is
    a list (a tuple when it was packed): the network refuses such keys, so
    a result that has one cannot be returned to a caller anywhere."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _hashable(key: Any) -> Any:
    return tuple(map(_hashable, key)) if type(key) is list else key


def _map_with_tuple_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return {_hashable(key): value for key, value in pairs}


def roundtrip(value: Any, what: str = "value") -> Any:
    """``value`` as a caller anywhere would receive it after msgpack (tuples become lists)."""
    return unpack(pack(value, what))
