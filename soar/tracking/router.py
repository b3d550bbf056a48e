"""Which shard owns an aircraft: a stable hash of its id, the same in every process.

`hash_of(aircraft_id)` is a 32-bit multiplicative (Fibonacci) hash; `shard_of` maps it onto
`n` shards by range (`hash * n >> 32`), so a split deployment can give each `soar track`
process a contiguous range of the hash space and the shards inside it stay contiguous too.
Python's `hash()` is never used: it is salted per process for str and could change.
"""

from __future__ import annotations

import os

from soar.records import AddressType, Fix, aircraft_id
from soar.tracking.inputs import ClockTick, ModeSInput, SbsInput, ShardInput, TowRelease

_GOLDEN_64 = 0x9E3779B97F4A7C15
_MASK_64 = (1 << 64) - 1
HASH_SPACE = 1 << 32


def hash_of(ident: int) -> int:
    """A 32-bit hash of an aircraft id, well spread even for consecutive addresses."""
    return ((ident * _GOLDEN_64) & _MASK_64) >> 32


def shard_of(ident: int, n: int) -> int:
    """The shard (0 ≤ k < n) that owns aircraft `ident`."""
    return (hash_of(ident) * n) >> 32


def default_shard_count() -> int:
    return 2 * (os.cpu_count() or 1)


def modes_address(message: bytes) -> int | None:
    try:
        from soar.protocols.modes import icao_address
    except ImportError:  # pragma: no cover - the Mode S module ships with soar
        return int.from_bytes(message[1:4], "big") if len(message) in (7, 14) else None
    return icao_address(message)


def aircraft_of(item: ShardInput) -> int | None:
    """The aircraft id an input belongs to; None for broadcasts and unaddressable messages."""
    if isinstance(item, Fix):
        return item.aircraft_id
    if isinstance(item, ModeSInput):
        address = modes_address(item.message)
        return None if address is None else aircraft_id(AddressType.ICAO, address)
    if isinstance(item, SbsInput):
        return aircraft_id(AddressType.ICAO, item.msg.icao)
    if isinstance(item, TowRelease):
        return item.glider_aircraft_id
    assert isinstance(item, ClockTick)
    return None


class ShardRouter:
    """Routes shard inputs to one of `n` shards."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n if n is not None else default_shard_count()
        if self.n < 1:
            raise ValueError("at least one shard")

    def route(self, item: ShardInput) -> int | None:
        """The shard index for `item`; None when it has no aircraft (broadcast or drop)."""
        ident = aircraft_of(item)
        return None if ident is None else shard_of(ident, self.n)
