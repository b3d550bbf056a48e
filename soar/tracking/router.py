"""Which shard owns an aircraft: a stable hash of its id, the same in every process.

`hash_of(aircraft_id)` is a 32-bit multiplicative (Fibonacci) hash; `shard_of` maps it onto
`n` shards by range (`hash * n >> 32`), so a split deployment can give each `soar track`
process a contiguous range of the hash space and the shards inside it stay contiguous too.
Python's `hash()` is never used: it is salted per process for str and could change.

Owns only the arithmetic; imports nothing from soar, so every layer (pipeline, split, tow,
store) may import it.

May import: nothing of soar
"""

from __future__ import annotations

_GOLDEN_64 = 0x9E3779B97F4A7C15
_MASK_64 = (1 << 64) - 1


def hash_of(ident: int) -> int:
    """A 32-bit hash of an aircraft id, well spread even for consecutive addresses."""
    return ((ident * _GOLDEN_64) & _MASK_64) >> 32


def shard_of(ident: int, n: int) -> int:
    """The shard (0 ≤ k < n) that owns aircraft `ident`."""
    return (hash_of(ident) * n) >> 32
