"""Partition leases under trio's MockClock, on the in-memory store (no server needed).

The invariant checked throughout: a partition is never consumed by two tracks at once (the
`Consumers` registry fails the test on a double acquire), and once things settle every
partition is consumed by exactly the track rendezvous hashing names.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from soar.broker import rendezvous
from soar.broker.lease import PartitionLeases
from tests.broker.memory_store import MemoryLeaseStore, StoreView

LEASE = 10.0
PARTITIONS = 16


class Consumers:
    """Who consumes which partition, as the tracks' callbacks report it."""

    def __init__(self) -> None:
        self.active: dict[int, str] = {}
        self.acquired: list[tuple[float, str, int]] = []

    def callbacks(self, track: str) -> dict[str, Callable[[int], object]]:
        async def on_acquired(p: int) -> None:
            assert p not in self.active, f"partition {p}: {track} while {self.active.get(p)} holds it"
            self.active[p] = track
            self.acquired.append((trio.current_time(), track, p))

        async def on_released(p: int) -> None:
            assert self.active.pop(p) == track

        return {"on_acquired": on_acquired, "on_released": on_released}

    def by_track(self) -> dict[str, frozenset[int]]:
        out: dict[str, set[int]] = {}
        for p, t in self.active.items():
            out.setdefault(t, set()).add(p)
        return {t: frozenset(ps) for t, ps in out.items()}


def expected(tracks: set[str]) -> dict[str, frozenset[int]]:
    return {t: rendezvous.share(t, PARTITIONS, tracks) for t in tracks
            if rendezvous.share(t, PARTITIONS, tracks)}


async def settle(consumers: Consumers, tracks: set[str], rounds: int = 20) -> float:
    """Wait (virtual time, bounded) until the consumers match the rendezvous share; when."""
    for _ in range(rounds):
        if consumers.by_track() == expected(tracks):
            return trio.current_time()
        await trio.sleep(LEASE / 6)
    raise AssertionError(f"not settled: {consumers.by_track()} != {expected(tracks)}")


class Track:
    def __init__(self, store: MemoryLeaseStore, consumers: Consumers, track_id: str) -> None:
        self.view: StoreView = store.view()
        self.leases = PartitionLeases(self.view, track_id, PARTITIONS, LEASE,
                                      **consumers.callbacks(track_id))  # type: ignore[arg-type]
        self.scope = trio.CancelScope()

    async def run(self) -> None:
        with self.scope:
            await self.leases.run()


async def test_tracks_share_the_partitions_and_a_cut_off_one_is_taken_over_then_given_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryLeaseStore(ttl=LEASE)
    consumers = Consumers()
    tracks = {name: Track(store, consumers, name) for name in ("a", "b", "c")}
    async with trio.open_nursery() as nursery:
        for track in tracks.values():
            nursery.start_soon(track.run)
        await settle(consumers, {"a", "b", "c"})
        held_by_b = consumers.by_track()["b"]

        # b loses the broker (a network partition, or a stopped process): it must stop
        # consuming before anyone else can start, and the others take its share after the lease
        cut = trio.current_time()
        tracks["b"].view.down = True
        taken = await settle(consumers, {"a", "c"})
        assert "b" not in consumers.by_track()
        assert LEASE <= taken - cut <= LEASE * 4 / 3 + LEASE / 6
        assert tracks["b"].leases.owned == frozenset()

        # b comes back: a and c give its partitions back, nothing else moves
        tracks["b"].view.down = False
        await settle(consumers, {"a", "b", "c"})
        assert consumers.by_track()["b"] == held_by_b
        nursery.cancel_scope.cancel()


async def test_a_clean_stop_hands_over_within_two_rounds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryLeaseStore(ttl=LEASE)
    consumers = Consumers()
    a, b = Track(store, consumers, "a"), Track(store, consumers, "b")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.run)
        nursery.start_soon(b.run)
        await settle(consumers, {"a", "b"})
        stopped = trio.current_time()
        b.scope.cancel()  # its run() releases and deletes its keys on the way out
        taken = await settle(consumers, {"a"})
        assert taken - stopped <= 2 * LEASE / 3 + LEASE / 6  # rounds, not the lease
        nursery.cancel_scope.cancel()


async def test_a_restarted_track_resumes_its_own_keys_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryLeaseStore(ttl=LEASE)
    consumers = Consumers()
    first = PartitionLeases(store, "a", PARTITIONS, LEASE)
    await first.round()
    assert first.owned == frozenset(range(PARTITIONS))
    # the process dies (no release); a new one with the same id starts a moment later
    await trio.sleep(1.0)
    again = PartitionLeases(store, "a", PARTITIONS, LEASE, **consumers.callbacks("a"))  # type: ignore[arg-type]
    await again.round()
    assert again.owned == frozenset(range(PARTITIONS))
    # whereas another track has to wait for those keys to expire
    other = PartitionLeases(store, "z", PARTITIONS, LEASE)
    await other.round()
    assert other.owned == frozenset()


async def test_lost_renewal_is_released_locally(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryLeaseStore(ttl=LEASE)
    consumers = Consumers()
    track = Track(store, consumers, "a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(track.run)
        await settle(consumers, {"a"})
        # someone else overwrote a key (a misconfigured duplicate id, an operator): the next
        # renewal's compare-and-set fails and that partition is released, not kept
        key = "partition.3"
        entry = await store.get(key)
        assert entry is not None
        await store.update(key, b"intruder", entry.revision)
        for _ in range(6):
            if 3 not in track.leases.owned:
                break
            await trio.sleep(LEASE / 6)
        assert 3 not in track.leases.owned and 3 not in consumers.active
        nursery.cancel_scope.cancel()


def test_bad_arguments_are_refused() -> None:
    store = MemoryLeaseStore(ttl=LEASE)
    with pytest.raises(ValueError, match="track id"):
        PartitionLeases(store, "has.dot", 4, LEASE)
    with pytest.raises(ValueError):
        PartitionLeases(store, "a", 0, LEASE)


async def test_slow_callbacks_never_stall_the_heartbeat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A track restoring flights (on_acquired) or waiting for its commits (on_released) for
    longer than the lease keeps its leases: the rounds do not wait for the callbacks."""
    store = MemoryLeaseStore(ttl=LEASE)
    consumed: set[int] = set()

    async def slow_acquire(p: int) -> None:
        await trio.sleep(LEASE / 2)
        consumed.add(p)

    async def slow_release(p: int) -> None:
        await trio.sleep(LEASE / 2)
        consumed.discard(p)

    slow = PartitionLeases(store, "a", PARTITIONS, LEASE, on_acquired=slow_acquire,
                           on_released=slow_release)
    other = PartitionLeases(store, "b", PARTITIONS, LEASE)
    async with trio.open_nursery() as nursery:
        await nursery.start(slow.run)
        await trio.sleep(PARTITIONS * LEASE / 2 + LEASE)  # every slow acquire has run
        assert consumed == set(range(PARTITIONS)) and slow.owned == frozenset(range(PARTITIONS))
        await other.round()
        assert other.owned == frozenset()  # nothing expired meanwhile
        # b joins for good: a gives b's share back, one slow release at a time, each key kept
        # (renewed) until its release has returned
        await nursery.start(other.run)
        share = rendezvous.share("b", PARTITIONS, {"a", "b"})
        for _ in range(200):
            if other.owned == share:
                break
            assert not (other.owned & consumed), "b got a partition a still consumes"
            await trio.sleep(LEASE / 20)
        assert other.owned == share and not (share & consumed)
        nursery.cancel_scope.cancel()
