"""Leases on a real JetStream KV bucket: the in-memory store's rules hold, and a SIGKILLed
track's partitions are taken over after the lease, then given back when it returns."""

from __future__ import annotations

import inspect
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from soar.broker import rendezvous
from soar.broker.client import JetStreamLink
from soar.broker.embedded import EmbeddedNats
from soar.broker.errors import LeaseConflict
from soar.broker.lease import PartitionLeases
from tests.broker.conftest import unique
from tests.broker.helpers import WAIT_S
from tests.broker.memory_store import MemoryLeaseStore

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 8
LEASE_S = 1.5


@pytest.mark.parametrize("kind", ["memory", "nats"])
async def test_lease_store_contract(link: JetStreamLink, kind: str) -> None:
    """The rules the MockClock tests rely on, checked on the fake and on the real bucket."""
    store = MemoryLeaseStore(ttl=60) if kind == "memory" else await link.lease_bucket(
        unique("contract"), ttl_s=60)
    first = await store.create("partition.0", b"a")
    with pytest.raises(LeaseConflict):
        await store.create("partition.0", b"b")
    second = await store.update("partition.0", b"a", first)
    assert second > first
    with pytest.raises(LeaseConflict):
        await store.update("partition.0", b"b", first)
    with pytest.raises(LeaseConflict):
        await store.delete("partition.0", first)
    await store.put("track.a", b"a")
    await store.put("track.b", b"b")
    assert await store.keys("track.") == ["track.a", "track.b"]
    await store.delete("track.b")
    assert await store.keys("track.") == ["track.a"]
    await store.delete("partition.0", second)
    assert await store.get("partition.0") is None
    with pytest.raises(LeaseConflict):
        await store.update("partition.0", b"a", second)  # gone: no revision matches
    third = await store.create("partition.0", b"c")
    entry = await store.get("partition.0")
    assert entry is not None and (entry.value, entry.revision) == (b"c", third)


def with_token(server: EmbeddedNats) -> str:
    """The server's URL carrying its token (nats-py reads a lone user name as the token)."""
    return server.url.replace("nats://", f"nats://{server.token}@", 1)


def start_track(url: str, bucket: str, track: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.broker.lease_worker", url, bucket, track, str(PARTITIONS),
         str(LEASE_S)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_for(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Until `condition()` holds, at most WAIT_S: sync on the state, not on a duration."""
    with trio.fail_after(WAIT_S):
        while True:
            result = condition()
            if await result if inspect.isawaitable(result) else result:
                return
            await trio.sleep(0.05)


@pytest.mark.time_limit(120)
async def test_a_killed_track_is_taken_over_and_given_back(
    nats_server: EmbeddedNats, link: JetStreamLink
) -> None:
    bucket_name = unique("leases")
    bucket = await link.lease_bucket(bucket_name, ttl_s=LEASE_S)
    b_share = rendezvous.share("b", PARTITIONS, {"a", "b"})
    a_share = frozenset(range(PARTITIONS)) - b_share
    assert a_share and b_share
    consumed: dict[int, str] = {}

    async def acquired(p: int) -> None:
        consumed[p] = "b"

    async def released(p: int) -> None:
        del consumed[p]

    async def holders() -> dict[int, bytes]:
        out = {}
        for p in range(PARTITIONS):
            entry = await bucket.get(f"partition.{p}")
            if entry is not None:
                out[p] = entry.value
        return out

    async def a_holds_its_share() -> bool:
        held = await holders()
        return all(held.get(p) == b"a" for p in a_share)

    b = PartitionLeases(bucket, "b", PARTITIONS, LEASE_S, on_acquired=acquired,
                        on_released=released)
    track_a = start_track(with_token(nats_server), bucket_name, "a")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.run)
            await wait_for(a_holds_its_share, "a holds its share")
            await wait_for(lambda: b.owned == b_share, "b holds its share")

            track_a.send_signal(signal.SIGKILL)  # no release: its keys must expire
            track_a.wait(timeout=WAIT_S)
            await wait_for(lambda: b.owned == frozenset(range(PARTITIONS)), "takeover")
            assert set(consumed) == set(range(PARTITIONS))
            assert set((await holders()).values()) == {b"b"}

            track_a = start_track(with_token(nats_server), bucket_name, "a")  # it comes back
            await wait_for(lambda: b.owned == b_share, "b gives back")
            await wait_for(a_holds_its_share, "a holds its share again")
            assert set(consumed) == b_share
            nursery.cancel_scope.cancel()
    finally:
        track_a.kill()
        track_a.wait(timeout=WAIT_S)
