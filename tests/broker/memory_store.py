"""An in-memory lease store on trio's clock, for lease tests under MockClock.

It follows the real KV bucket's rules (checked against it by test_lease_store_contract):
entries expire `ttl` after their last write, create only when absent, update and delete only
at the current revision. `view()` gives one track its own handle that can be cut off.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import trio

from soar.broker.errors import BrokerUnavailable, LeaseConflict


@dataclass(frozen=True)
class MemoryEntry:
    value: bytes
    revision: int
    written: float


class MemoryLeaseStore:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, MemoryEntry] = {}
        self._revisions = itertools.count(1)

    def view(self) -> StoreView:
        return StoreView(self)

    def _live(self, key: str) -> MemoryEntry | None:
        entry = self._entries.get(key)
        if entry is not None and trio.current_time() >= entry.written + self.ttl:
            del self._entries[key]
            return None
        return entry

    def _write(self, key: str, value: bytes) -> int:
        revision = next(self._revisions)
        self._entries[key] = MemoryEntry(value, revision, trio.current_time())
        return revision

    async def create(self, key: str, value: bytes) -> int:
        await trio.lowlevel.checkpoint()
        if self._live(key) is not None:
            raise LeaseConflict(f"{key} exists")
        return self._write(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        await trio.lowlevel.checkpoint()
        entry = self._live(key)
        if entry is None or entry.revision != revision:
            raise LeaseConflict(f"{key} changed since revision {revision}")
        return self._write(key, value)

    async def put(self, key: str, value: bytes) -> int:
        await trio.lowlevel.checkpoint()
        return self._write(key, value)

    async def get(self, key: str) -> MemoryEntry | None:
        await trio.lowlevel.checkpoint()
        return self._live(key)

    async def delete(self, key: str, revision: int | None = None) -> None:
        await trio.lowlevel.checkpoint()
        entry = self._live(key)
        if revision is not None and (entry is None or entry.revision != revision):
            raise LeaseConflict(f"{key} changed since revision {revision}")
        self._entries.pop(key, None)

    async def keys(self, prefix: str = "") -> list[str]:
        await trio.lowlevel.checkpoint()
        return sorted(k for k in list(self._entries) if k.startswith(prefix) and self._live(k))


class StoreView:
    """One track's connection to the store; `down = True` cuts it off (BrokerUnavailable)."""

    def __init__(self, store: MemoryLeaseStore) -> None:
        self.store = store
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise BrokerUnavailable("cut off (test)")

    async def create(self, key: str, value: bytes) -> int:
        self._check()
        return await self.store.create(key, value)

    async def update(self, key: str, value: bytes, revision: int) -> int:
        self._check()
        return await self.store.update(key, value, revision)

    async def put(self, key: str, value: bytes) -> int:
        self._check()
        return await self.store.put(key, value)

    async def get(self, key: str) -> MemoryEntry | None:
        self._check()
        return await self.store.get(key)

    async def delete(self, key: str, revision: int | None = None) -> None:
        self._check()
        await self.store.delete(key, revision)

    async def keys(self, prefix: str = "") -> list[str]:
        self._check()
        return await self.store.keys(prefix)
