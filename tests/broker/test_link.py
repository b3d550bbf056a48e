"""JetStreamLink against a real nats-server on loopback, with envelopes from real captures."""

from __future__ import annotations

import pytest
import trio

from soar.broker.bridge import BRIDGE_KINDS
from soar.broker.client import JetStreamLink, open_link
from soar.broker.codec import decode_batch, encode_batch
from soar.broker.embedded import EmbeddedNats
from soar.broker.errors import (
    BrokerUnavailable,
    LeaseConflict,
    PartitionCountMismatch,
    PayloadTooLarge,
    StreamFull,
)
from soar.records import Envelope
from tests.broker.conftest import stream_spec, unique
from tests.broker.helpers import WAIT_S, fetch_until


@pytest.mark.parametrize("bridge", BRIDGE_KINDS)
async def test_batches_round_trip_through_a_partition(
    nats_server: EmbeddedNats, real_envelopes: list[Envelope], bridge: str
) -> None:
    spec = stream_spec(partitions=4)
    batches = [real_envelopes[i : i + 100] for i in range(0, len(real_envelopes), 100)]
    async with open_link(nats_server.url, token=nats_server.token,
                         bridge=bridge) as link:  # type: ignore[arg-type]
        assert link.bridge.kind == bridge
        stream = await link.ensure_stream(spec)
        acks = await stream.publish_batches(
            [(2, f"ingest-1:{i}", encode_batch(b)) for i, b in enumerate(batches)])
        assert [a.duplicate for a in acks] == [False] * len(batches)
        async with stream.consumer(2) as consumer:
            deliveries = await fetch_until(consumer, len(batches))
            assert [decode_batch(d.data) for d in deliveries] == batches
            assert [d.msg_id for d in deliveries] == [f"ingest-1:{i}" for i in range(len(batches))]
            assert {d.partition for d in deliveries} == {2}
            assert all(d.num_delivered == 1 for d in deliveries)
            await consumer.ack(deliveries, confirm=True)
            stats = await consumer.info()
            assert (stats.num_pending, stats.num_ack_pending) == (0, 0)
        # work-queue retention: acknowledged messages are gone from the stream
        assert (await stream.info()).messages == 0


async def test_the_same_msg_id_is_stored_once(
    link: JetStreamLink, real_envelopes: list[Envelope]
) -> None:
    stream = await link.ensure_stream(stream_spec())
    body = encode_batch(real_envelopes[:100])
    first = await stream.publish_batch(1, "ingest-7:42", body)
    again = await stream.publish_batch(1, "ingest-7:42", body)  # a retry after a lost PubAck
    other = await stream.publish_batch(1, "ingest-7:43", body)
    assert (first.duplicate, again.duplicate, other.duplicate) == (False, True, False)
    assert again.seq == first.seq
    assert (await stream.info()).messages == 2
    async with stream.consumer(1) as consumer:
        got = await fetch_until(consumer, 2)
        assert [d.msg_id for d in got] == ["ingest-7:42", "ingest-7:43"]
        assert await consumer.fetch(batch=5, timeout=0.3) == []
        await consumer.ack(got)


async def test_unacknowledged_is_redelivered_after_ack_wait_and_counted(
    link: JetStreamLink, real_envelopes: list[Envelope]
) -> None:
    stream = await link.ensure_stream(stream_spec(ack_wait_s=1.0))
    bodies = [encode_batch(real_envelopes[i * 10 : i * 10 + 10]) for i in range(5)]
    await stream.publish_batches([(0, f"m{i}", body) for i, body in enumerate(bodies)])
    async with stream.consumer(0) as consumer:
        first = await fetch_until(consumer, 3)
        stats = await consumer.info()
        assert (stats.num_pending, stats.num_ack_pending, stats.num_redelivered) == (2, 3, 0)
        await consumer.ack(first[:1], confirm=True)
        await first[1].term()  # a poison message: never again
        # first[2] is neither: JetStream hands it out again once ack_wait has passed
        rest = await fetch_until(consumer, 2)
        assert [d.msg_id for d in rest] == ["m3", "m4"]
        await consumer.ack(rest)
        again = await fetch_until(consumer, 1)
        assert [(d.msg_id, d.num_delivered) for d in again] == [("m2", 2)]
        await again[0].nak()  # back at once, not after ack_wait
        third = await fetch_until(consumer, 1)
        assert [(d.msg_id, d.num_delivered) for d in third] == [("m2", 3)]
        await third[0].ack(confirm=True)  # recorded by the server when this returns
        stats = await consumer.info()
        assert (stats.num_pending, stats.num_ack_pending) == (0, 0)
        assert stats.num_redelivered == 0  # nothing delivered more than once is still out


async def test_held_messages_are_kept_in_progress_then_returned_in_one_crossing(
    link: JetStreamLink, real_envelopes: list[Envelope]
) -> None:
    """A track holds committed messages (in_progress keeps JetStream from handing them out
    again past ack_wait) and returns them with one batch nak when it gives the partition up."""
    stream = await link.ensure_stream(stream_spec(ack_wait_s=3.0))
    bodies = [encode_batch(real_envelopes[i * 10 : i * 10 + 10]) for i in range(3)]
    await stream.publish_batches([(1, f"h{i}", body) for i, body in enumerate(bodies)])
    async with stream.consumer(1) as consumer:
        held = await fetch_until(consumer, 3)
        for delivery in held:
            delivery.release_data()
            assert delivery.data == b""
        for _ in range(4):  # past two ack_waits, renewed each second: none comes back
            await trio.sleep(1.0)
            await consumer.in_progress(held)
            assert await consumer.fetch(batch=3, timeout=0.2) == []
        await consumer.nak(held)
        again = await fetch_until(consumer, 3)
        assert sorted(d.msg_id or "" for d in again) == ["h0", "h1", "h2"]
        assert all(d.num_delivered == 2 for d in again)
        await consumer.ack(again, confirm=True)


async def test_a_cancelled_fetch_returns_at_once_and_the_link_still_works(
    link: JetStreamLink, real_envelopes: list[Envelope]
) -> None:
    stream = await link.ensure_stream(stream_spec())
    async with stream.consumer(3) as consumer:
        with trio.move_on_after(0.2) as scope:
            await consumer.fetch(batch=10, timeout=600.0)  # nothing there: would wait 10 min
        assert scope.cancelled_caught
        await stream.publish_batch(3, "after-cancel", encode_batch(real_envelopes[:5]))
        got = await fetch_until(consumer, 1)
        assert decode_batch(got[0].data) == real_envelopes[:5]
        await got[0].ack()


async def test_a_second_consumer_binding_shares_the_partition(
    link: JetStreamLink, real_envelopes: list[Envelope]
) -> None:
    # how a partition moves between tracks: the durable consumer is bound by name
    stream = await link.ensure_stream(stream_spec())
    body = encode_batch(real_envelopes[:10])
    await stream.publish_batches([(1, f"x{i}", body) for i in range(4)])
    async with stream.consumer(1) as old_owner:
        got = await fetch_until(old_owner, 2)
        await old_owner.ack(got)
    async with stream.consumer(1) as new_owner:
        rest = await fetch_until(new_owner, 2)
        assert [d.msg_id for d in rest] == ["x2", "x3"]  # resumes where the old one stopped
        await new_owner.ack(rest)


async def test_stream_limits_and_partition_count_are_enforced(
    link: JetStreamLink, real_envelopes: list[Envelope]
) -> None:
    spec = stream_spec(partitions=4, max_bytes=64 * 1024)
    stream = await link.ensure_stream(spec)
    body = encode_batch(real_envelopes[:100])  # about 14 kB
    with pytest.raises(StreamFull):
        for i in range(20):
            await stream.publish_batch(0, f"fill-{i}", body)
    with pytest.raises(PartitionCountMismatch):
        await link.ensure_stream(spec.__class__(**{**_fields(spec), "partitions": 8}))
    with pytest.raises(PayloadTooLarge):
        await stream.publish_batch(1, "huge", b"x" * (link.max_payload + 1))
    with pytest.raises(ValueError):
        await stream.publish_batch(4, "no such partition", body)


def _fields(spec: object) -> dict[str, object]:
    return {name: getattr(spec, name) for name in spec.__slots__}  # type: ignore[attr-defined]


async def test_live_subjects_reach_subscribers_and_overflow_is_counted(
    link: JetStreamLink, real_envelopes: list[Envelope]
) -> None:
    prefix = unique("live")
    async with link.subscribe(capacity=5) as live:
        await live.add(f"{prefix}.area.47.*")
        await live.add(f"{prefix}.aircraft.1234")
        messages = [(f"{prefix}.area.47.8", real_envelopes[0].data),
                    (f"{prefix}.area.48.8", b"not subscribed"),
                    (f"{prefix}.aircraft.1234", real_envelopes[1].data)]
        await link.publish_many(messages)
        with trio.fail_after(WAIT_S):
            got = [await live.receive(), await live.receive()]
        assert [(m.subject, m.data) for m in got] == [messages[0], messages[2]]
        # nobody reads: the channel holds 5, the rest is dropped and counted, never blocking NATS
        await link.publish_many([(f"{prefix}.area.47.9", b"%d" % i) for i in range(12)])
        with trio.fail_after(WAIT_S):
            while live.dropped < 7:
                await trio.sleep(0.01)
        assert live.dropped == 7
        await live.remove(f"{prefix}.area.47.*")
        assert live.subjects == {f"{prefix}.aircraft.1234"}


async def test_lease_bucket_compare_and_set_and_ttl(link: JetStreamLink) -> None:
    # compare-and-set on a bucket whose TTL a busy machine cannot outrun between two calls
    bucket = await link.lease_bucket(unique("leases"), ttl_s=60.0)
    revision = await bucket.create("partition.1", b"a")
    with pytest.raises(LeaseConflict):
        await bucket.create("partition.1", b"b")
    newer = await bucket.update("partition.1", b"a", revision)
    with pytest.raises(LeaseConflict):
        await bucket.update("partition.1", b"b", revision)  # a stale revision loses
    with pytest.raises(LeaseConflict):
        await bucket.delete("partition.1", revision)
    entry = await bucket.get("partition.1")
    assert entry is not None and (entry.value, entry.revision) == (b"a", newer)
    await bucket.put("track.a", b"a")
    assert await bucket.keys("track.") == ["track.a"]
    await bucket.delete("partition.1", newer)
    assert await bucket.get("partition.1") is None
    await bucket.create("partition.1", b"b")  # free again after a delete
    # on a bucket with a short TTL, nobody renews: the entries expire by themselves
    bucket = await link.lease_bucket(unique("leases"), ttl_s=1.0)
    await bucket.create("partition.1", b"b")
    await bucket.put("track.a", b"a")
    with trio.fail_after(WAIT_S):
        while await bucket.keys():
            await trio.sleep(0.1)
    assert await bucket.get("partition.1") is None
    await bucket.create("partition.1", b"c")  # and can be claimed again


async def test_connecting_to_nothing_is_broker_unavailable() -> None:
    with trio.fail_after(WAIT_S), pytest.raises(BrokerUnavailable):
        async with open_link("nats://127.0.0.1:9", request_timeout_s=1.0):
            pass
