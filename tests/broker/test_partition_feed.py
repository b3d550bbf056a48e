"""A track's PartitionFeed on the real embedded nats-server, with a real pipeline into PostgreSQL:
a partition with messages waiting is always fetched, however many partitions are idle.

Every owned partition has a task that fetches in turn, and the fetches share one bound on what
the track has in its pipeline (a fetch reserves what it may bring). An idle partition's fetch
waits on the server for up to a second; issue 14's bench stalled when those waiting fetches of
drained partitions held the whole bound and handed it back to themselves each time they timed
out, while the partitions that still had messages waited for room that never came (the tracks
received 26,148 of 38,112 envelopes, and then nothing). These tests make that arrangement on
purpose: the idle partition holds the bound first, then the busy partition asks for its turn.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from soar.broker import JetStreamLink, PartitionedStream, encode_batch
from soar.config import Settings
from soar.live import NatsLivePublisher
from soar.pipeline import Pipeline
from soar.records import Envelope
from soar.split import PartitionFeed, PartitionRouter
from soar.supervisor import ChildSpec
from soar.topology import Stage
from tests.broker.conftest import SBS_SAMPLE, capture, stream_spec

#: a stuck feed fails the test after this long (a passing one takes a second or two)
DEADLINE_S = 30.0
ENVELOPES_PER_MESSAGE = 50


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
    link: JetStreamLink, stream: PartitionedStream, db_url: str, tmp_path: Path, **bounds: int,
) -> AsyncIterator[PartitionFeed]:
    """A track's pipeline and PartitionFeed, as `soar track` wires them, partitions owned by
    the test; at exit the feed stops (everything fed is committed) and the pipeline drains."""
    # a message is committed (and room made for the next) once its aircraft rows are: within
    # 0.1 s, not the second a track waits to fill a batch of them
    settings = Settings(database_url=db_url, data_dir=tmp_path, batch_age=0.05,
                        state_batch_age=0.1, nats_partitions=stream.spec.partitions)
    pipeline = Pipeline(settings, db_url, sources=[], hold_open=True, restore_open_flights=False,
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
            with trio.fail_after(DEADLINE_S):
                await feed.stop()
                topology.stages["partitions"].stop()
                await pipeline.drain()
            topology.stop()
    finally:
        await pipeline.close()


def sbs_envelopes(testdata: Path, partitions: int) -> dict[int, list[Envelope]]:
    """Real SBS lines by the partition the ingest would publish them to."""
    router = PartitionRouter(partitions)
    by_partition: dict[int, list[Envelope]] = {}
    for env in capture(testdata, SBS_SAMPLE, 2000):
        by_partition.setdefault(router.partition(env), []).append(env)
    return by_partition


async def publish(stream: PartitionedStream, partition: int, envelopes: list[Envelope]) -> int:
    """The envelopes as messages of ENVELOPES_PER_MESSAGE; how many messages."""
    items = [(partition, f"p{partition}-m{start}",
              encode_batch(envelopes[start:start + ENVELOPES_PER_MESSAGE]))
             for start in range(0, len(envelopes), ENVELOPES_PER_MESSAGE)]
    await stream.publish_batches(items)
    return len(items)


async def waiting_fetches(stream: PartitionedStream, partition: int) -> int:
    async with stream.consumer(partition) as consumer:
        return (await consumer.info()).num_waiting


async def until(predicate: Callable[[], object | Awaitable[object]], what: str) -> None:
    """Until `predicate()` is true (looked at every 50 ms), failing after DEADLINE_S."""
    with trio.move_on_after(DEADLINE_S):
        while True:
            result = predicate()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            await trio.sleep(0.05)
    pytest.fail(f"still waiting after {DEADLINE_S:.0f} s for {what}")


# (fetch batch, bound): one fetch's reservation fills the bound, then one message does
@pytest.mark.parametrize(("fetch_batch", "max_unacked"), [(4, 4), (1, 1)])
async def test_a_busy_partition_is_fetched_while_an_idle_one_waits_on_the_server(
    link: JetStreamLink, db_url: str, testdata: Path, tmp_path: Path,
    fetch_batch: int, max_unacked: int,
) -> None:
    stream = await link.ensure_stream(stream_spec(partitions=2))
    idle, busy = 0, 1
    # a few messages: with a bound of one, each waits its turn behind the idle fetch's second
    envelopes = sbs_envelopes(testdata, 2)[busy][:4 * ENVELOPES_PER_MESSAGE]
    async with running_feed(link, stream, db_url, tmp_path, fetch_batch=fetch_batch,
                            max_unacked=max_unacked) as feed:
        await feed.acquired(idle)
        # the idle partition's fetch is waiting on the server: it holds its reservation
        await until(lambda: waiting_fetches(stream, idle), "the idle partition's fetch")
        assert feed.reserved == 1  # one message of the bound, whatever the batch
        messages = await publish(stream, busy, envelopes)
        await feed.acquired(busy)
        await until(lambda: feed.received == len(envelopes),
                    f"the busy partition's {len(envelopes)} envelopes")
        await until(lambda: feed.watermark.settled == messages, "every message committed")
        assert feed.unacked_envelopes == 0
    async with stream.consumer(busy) as consumer:
        assert (await consumer.info()).num_pending == 0


async def test_a_burst_over_many_partitions_is_all_fetched_under_a_small_bound(
    link: JetStreamLink, db_url: str, testdata: Path, tmp_path: Path,
) -> None:
    """As the bench feeds a track: everything published at once, partitions emptying at
    different times, and their fetches (4 each) together allowed twice the bound of 8."""
    partitions = 16
    stream = await link.ensure_stream(stream_spec(partitions=partitions))
    by_partition = sbs_envelopes(testdata, partitions)
    assert len(by_partition) == partitions  # every partition has some
    messages = 0
    for partition, envelopes in by_partition.items():
        messages += await publish(stream, partition, envelopes)
    async with running_feed(link, stream, db_url, tmp_path, fetch_batch=4,
                            max_unacked=8) as feed:
        for partition in range(partitions):
            await feed.acquired(partition)
        await until(lambda: feed.received == 2000, "all 2000 envelopes")
        await until(lambda: feed.watermark.settled == messages, "every message committed")
    for partition in range(partitions):
        async with stream.consumer(partition) as consumer:
            assert (await consumer.info()).num_pending == 0
