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

from pathlib import Path

import pytest

from soar.broker import JetStreamLink, PartitionedStream
from soar.records import Envelope
from soar.split import PartitionRouter
from tests.broker.conftest import SBS_SAMPLE, capture, stream_spec
from tests.broker.helpers import ENVELOPES_PER_MESSAGE, publish, running_feed, until


def sbs_envelopes(testdata: Path, partitions: int) -> dict[int, list[Envelope]]:
    """Real SBS lines by the partition the ingest would publish them to."""
    router = PartitionRouter(partitions)
    by_partition: dict[int, list[Envelope]] = {}
    for env in capture(testdata, SBS_SAMPLE, 2000):
        by_partition.setdefault(router.partition(env), []).append(env)
    return by_partition


async def waiting_fetches(stream: PartitionedStream, partition: int) -> int:
    async with stream.consumer(partition) as consumer:
        return (await consumer.info()).num_waiting


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
