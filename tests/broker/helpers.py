"""What the broker tests share beyond fixtures: bounded waits on the server, and a track's
pipeline and PartitionFeed run in-process, as `soar track` wires them, with the partitions it
owns chosen by the test."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from soar.broker import JetStreamLink, PartitionedStream, encode_batch
from soar.broker.client import Delivery, PartitionConsumer
from soar.config import Settings
from soar.live import NatsLivePublisher
from soar.pipeline import Pipeline
from soar.records import Envelope
from soar.split import PartitionFeed
from soar.supervisor import ChildSpec
from soar.topology import Stage

#: every wait on the server, or on a feed, is bounded by this (a passing one takes seconds)
WAIT_S = 30.0
ENVELOPES_PER_MESSAGE = 50


async def fetch_until(consumer: PartitionConsumer, count: int) -> list[Delivery]:
    got: list[Delivery] = []
    with trio.fail_after(WAIT_S):
        while len(got) < count:
            got += await consumer.fetch(batch=count - len(got), timeout=1.0)
    return got


async def until(predicate: Callable[[], object | Awaitable[object]], what: str) -> None:
    """Until `predicate()` is true (looked at every 50 ms), failing after WAIT_S."""
    with trio.move_on_after(WAIT_S):
        while True:
            result = predicate()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            await trio.sleep(0.05)
    pytest.fail(f"still waiting after {WAIT_S:.0f} s for {what}")


class HeldLeases:
    """The test decides which partition the feed owns, and when (real leases would take them
    all at once, in an order of their own)."""

    def __init__(self) -> None:
        self.running = trio.Event()

    async def run(self) -> None:
        self.running.set()
        await trio.sleep_forever()


@contextlib.asynccontextmanager
async def running_feed(
    link: JetStreamLink, stream: PartitionedStream, db_url: str, tmp_path: Path,
    settings: dict[str, Any] | None = None, **bounds: int,
) -> AsyncIterator[PartitionFeed]:
    """A track's pipeline and PartitionFeed, as `soar track` wires them, partitions owned by
    the test; at exit the feed stops (everything fed is committed) and the pipeline drains.
    `settings` overrides the track's settings, `bounds` the feed's."""
    # a message is committed (and room made for the next) once its aircraft rows are: within
    # 0.1 s, not the second a track waits to fill a batch of them
    own = Settings(database_url=db_url, data_dir=tmp_path, batch_age=0.05, state_batch_age=0.1,
                   nats_partitions=stream.spec.partitions, **(settings or {}))
    pipeline = Pipeline(own, db_url, sources=[], hold_open=True, restore_open_flights=False,
                        live=NatsLivePublisher(link), block_envelopes=True)
    await pipeline.open()
    feed = PartitionFeed(stream, pipeline, **bounds)
    leases = HeldLeases()
    topology = pipeline.declare("track", [
        Stage("broker", [ChildSpec("watermark", feed.run_watermark),
                         ChildSpec("acknowledge", feed.acknowledge_held)]),
        Stage("partitions", [ChildSpec("leases", functools.partial(feed.run, leases))]),
    ])
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(topology.run)
            await leases.running.wait()
            yield feed
            with trio.fail_after(WAIT_S):
                await feed.stop()
                topology.stages["partitions"].stop()
                await pipeline.drain()
            topology.stop()
    finally:
        await pipeline.close()


async def publish(stream: PartitionedStream, partition: int, envelopes: list[Envelope]) -> int:
    """The envelopes as messages of ENVELOPES_PER_MESSAGE; how many messages."""
    items = [(partition, f"p{partition}-m{start}",
              encode_batch(envelopes[start:start + ENVELOPES_PER_MESSAGE]))
             for start in range(0, len(envelopes), ENVELOPES_PER_MESSAGE)]
    await stream.publish_batches(items)
    return len(items)
