"""Partition ownership with leases in a key-value bucket whose entries expire after `lease_s`.

Keys (in one bucket, TTL = lease_s, so an entry nobody rewrites disappears by itself):

    track.<id>         a live track's heartbeat, rewritten every lease_s / 3
    partition.<p>      the track holding partition p; created only when absent (compare-and-set),
                       renewed by revision, deleted by its holder when it gives p back

Each round (every lease_s / 3 on trio's clock) a track: writes its heartbeat, reads the live
track ids, computes its share with `rendezvous.share`, then
1. gives back what it holds but no longer should (a track came back): `on_released(p)` first,
   so it has stopped consuming p, then deletes the key at its revision;
2. renews what it keeps (update at the revision it wrote last; a conflict means another track
   took it: it is lost, `on_released(p)`);
3. claims what it should have: `create` succeeds once the previous holder's key expired (it is
   gone) or was deleted (it gave p back); then `on_acquired(p)`.

A track that cannot reach the bucket keeps its partitions only until `lease_s * 3/4` after
the start of its last successful round, then releases them all locally: another track may
create the keys once they expire (at `lease_s` after our last write, on the server's clock).
Takeover of a dead track's partitions therefore takes between lease_s and lease_s * 4/3, and
give-back at most two rounds. During a handover the old holder has stopped before the key is
free, so a partition is consumed by at most one track at a time (as long as the clocks run at
the same rate); JetStream redelivers whatever it had fetched and not acknowledged.

A track restarted with the same id resumes its own still-valid keys at once.

May import: soar.broker.errors, soar.broker.rendezvous
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog
import trio

from soar.broker import rendezvous
from soar.broker.errors import BrokerError, LeaseConflict

log = structlog.get_logger(__name__)

TRACK_PREFIX = "track."
PARTITION_PREFIX = "partition."
#: Of lease_s: how often a round runs, and how long after a round's start ownership is trusted.
ROUND_FRACTION = 1 / 3
VALID_FRACTION = 3 / 4
_VALID_ID = re.compile(r"^[-_=a-zA-Z0-9]+$")


class Entry(Protocol):
    @property
    def value(self) -> bytes: ...
    @property
    def revision(self) -> int: ...


class LeaseStore(Protocol):
    """A key-value bucket with compare-and-set and a TTL (`client.LeaseBucket` is one)."""

    async def create(self, key: str, value: bytes) -> int: ...
    async def update(self, key: str, value: bytes, revision: int) -> int: ...
    async def put(self, key: str, value: bytes) -> int: ...
    async def get(self, key: str) -> Entry | None: ...
    async def delete(self, key: str, revision: int | None = None) -> None: ...
    async def keys(self, prefix: str = "") -> list[str]: ...


Callback = Callable[[int], Awaitable[None]]


async def _nothing(_partition: int) -> None:
    return None


class PartitionLeases:
    """This track's share of the partitions, kept in a lease bucket.

    `on_acquired(p)` should start consuming p and may take a while (a track restores that
    partition's flights from the database first); `on_released(p)` must return only once p is
    no longer consumed here (and may also take a while: a track waits until what it fed from
    p is committed). While `run` runs, the callbacks run in a task of their own, one at a time
    and in order, so that a slow callback never delays the heartbeat and renewals (a track
    whose rounds stall would lose its leases to the others). A partition being given back
    keeps its key renewed until its `on_released` has returned, then the key is deleted; only
    then can another track claim it. When `round` is called without `run` (tests, tools), the
    callbacks run inside it. When `run` is cancelled it releases everything (shielded, at most
    lease_s) and deletes its keys, so a clean stop hands over at the others' next round
    instead of after the lease.
    """

    def __init__(
        self,
        store: LeaseStore,
        track_id: str,
        partitions: int,
        lease_s: float,
        *,
        on_acquired: Callback = _nothing,
        on_released: Callback = _nothing,
    ) -> None:
        if not _VALID_ID.match(track_id):
            raise ValueError(f"track id {track_id!r}: letters, digits, '-', '_' or '=' only")
        if partitions < 1 or lease_s <= 0:
            raise ValueError("need at least one partition and a positive lease")
        self.store = store
        self.track_id = track_id
        self.partitions = partitions
        self.lease_s = lease_s
        self.on_acquired = on_acquired
        self.on_released = on_released
        self._revisions: dict[int, int] = {}
        #: given back, key still renewed until on_released has returned: partition -> revision
        self._releasing: dict[int, int] = {}
        self._valid_until = -float("inf")
        self.live_tracks: frozenset[str] = frozenset()
        self.rounds = 0
        self.changed = trio.Event()  # set (and replaced) whenever `owned` changes
        self._work: trio.MemorySendChannel[tuple[str, int]] | None = None

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._revisions)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Rounds for ever, every lease_s / 3; started after the first round (which may have
        found the bucket unreachable: ownership then simply starts later)."""
        send, receive = trio.open_memory_channel[tuple[str, int]](math.inf)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._callbacks, receive)
                self._work = send
                await self.round()
                task_status.started()
                while True:
                    await trio.sleep(self.lease_s * ROUND_FRACTION)
                    await self.round()
        finally:
            self._work = None
            # a clean stop hands over at once instead of after the lease
            with trio.CancelScope(shield=True), trio.move_on_after(self.lease_s):
                await self.release_all(delete=True)
                for partition in sorted(self._releasing):
                    await self._give_back(partition)
                try:
                    await self.store.delete(TRACK_PREFIX + self.track_id)
                except BrokerError as exc:
                    log.debug("lease.heartbeat_not_deleted", error=str(exc))

    async def round(self) -> None:
        """One heartbeat-and-rebalance round; bucket errors are logged, never raised."""
        started = trio.current_time()
        try:
            await self._round()
        except BrokerError as exc:
            log.warning("lease.round_failed", track=self.track_id, error=str(exc),
                        held=len(self._revisions))
        else:
            self._valid_until = started + self.lease_s * VALID_FRACTION
        self.rounds += 1
        if (self._revisions or self._releasing) and trio.current_time() >= self._valid_until:
            log.error("lease.expired_locally", track=self.track_id,
                      partitions=len(self._revisions) + len(self._releasing))
            await self.release_all(delete=False)
            self._releasing.clear()  # their keys expire on the server: nothing to delete

    async def release_all(self, *, delete: bool) -> None:
        """Stop consuming everything; with `delete`, free the keys for others at once."""
        for partition in sorted(self._revisions):
            await self._release(partition, delete=delete)

    async def _round(self) -> None:
        me = self.track_id.encode()
        await self.store.put(TRACK_PREFIX + self.track_id, me)
        tracks = {k.removeprefix(TRACK_PREFIX) for k in await self.store.keys(TRACK_PREFIX)}
        self.live_tracks = frozenset(tracks | {self.track_id})
        wanted = rendezvous.share(self.track_id, self.partitions, self.live_tracks)
        for partition in sorted(self.owned - wanted):
            await self._release(partition, delete=True)
        # Renewals all in flight at once: a round is one round trip, however many partitions
        # are held (one after the other, a busy process's rounds outlasted its leases).
        lost: list[int] = []
        failed: list[BrokerError] = []

        async def renew(partition: int, held: int) -> None:
            try:
                revision = await self.store.update(PARTITION_PREFIX + str(partition), me, held)
            except LeaseConflict:
                lost.append(partition)
            except BrokerError as exc:
                failed.append(exc)
            else:
                if partition in self._revisions:
                    self._revisions[partition] = revision

        async def renew_releasing(partition: int, held: int) -> None:
            key = PARTITION_PREFIX + str(partition)
            try:
                revision = await self.store.update(key, me, held)
            except LeaseConflict:
                self._releasing.pop(partition, None)
                return
            except BrokerError as exc:
                failed.append(exc)
                return
            if partition in self._releasing:
                self._releasing[partition] = revision
            else:  # given back meanwhile, its delete named the revision before this one
                with contextlib.suppress(BrokerError):
                    await self.store.delete(key, revision)

        async with trio.open_nursery() as nursery:
            for partition in sorted(self.owned & wanted):
                nursery.start_soon(renew, partition, self._revisions[partition])
            for partition, held in sorted(self._releasing.items()):  # kept until given back
                nursery.start_soon(renew_releasing, partition, held)
        for partition in lost:
            if partition in self._revisions:
                log.warning("lease.lost", track=self.track_id, partition=partition)
                await self._release(partition, delete=False)
        if failed:
            raise failed[0]
        for partition in sorted(wanted - self.owned - set(self._releasing)):
            claimed = await self._claim(partition, me)
            if claimed is not None:
                self._revisions[partition] = claimed
                self._changed()
                log.info("lease.acquired", track=self.track_id, partition=partition)
                await self._call("acquired", partition)

    async def _claim(self, partition: int, me: bytes) -> int | None:
        key = PARTITION_PREFIX + str(partition)
        try:
            return await self.store.create(key, me)
        except LeaseConflict:
            pass
        entry = await self.store.get(key)
        if entry is None or entry.value != me:
            return None  # held by another track until it gives it back or its key expires
        try:  # ours, from before a restart: carry on with it
            return await self.store.update(key, me, entry.revision)
        except LeaseConflict:
            return None

    async def _release(self, partition: int, *, delete: bool) -> None:
        revision = self._revisions.pop(partition)
        self._changed()
        if delete:
            self._releasing[partition] = revision
            await self._call("give_back", partition)
        else:
            await self._call("released", partition)

    async def _call(self, what: str, partition: int) -> None:
        if self._work is not None:
            self._work.send_nowait((what, partition))
        else:
            await self._run_callback(what, partition)

    async def _callbacks(self, work: trio.MemoryReceiveChannel[tuple[str, int]]) -> None:
        async for what, partition in work:
            await self._run_callback(what, partition)

    async def _run_callback(self, what: str, partition: int) -> None:
        if what == "acquired":
            if partition in self._revisions:  # not lost again meanwhile
                await self.on_acquired(partition)
        elif what == "give_back":
            if partition in self._releasing:
                await self._give_back(partition)
        else:
            await self.on_released(partition)
            log.info("lease.released", track=self.track_id, partition=partition, freed=False)

    async def _give_back(self, partition: int) -> None:
        await self.on_released(partition)
        revision = self._releasing.pop(partition, None)
        log.info("lease.released", track=self.track_id, partition=partition, freed=True)
        if revision is None:
            return  # lost meanwhile (its key expired or was taken): nothing to delete
        try:
            await self.store.delete(PARTITION_PREFIX + str(partition), revision)
        except BrokerError as exc:  # taken meanwhile, or unreachable: it expires anyway
            log.debug("lease.release_not_deleted", partition=partition, error=str(exc))

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()
