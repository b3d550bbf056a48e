"""NATS JetStream between split-mode processes (issue 14): the transport, not its wiring.

    codec        a batch of envelopes <-> one message body (pure; CodecError for bad input)
    subjects     NATS names: soar.env.<partition>, soar.live.area.<lat>.<lon>, ... (pure)
    rendezvous   which live track owns which partition (pure)
    bridge       nats-py (asyncio) under trio: one asyncio loop in one thread
    client       JetStreamLink: streams, partition consumers, KV lease buckets, live pub/sub
    lease        PartitionLeases: a track's share of the partitions, kept by leases
    embedded     EmbeddedNats: nats-server -js under data_dir/nats, shared on one machine
    errors       what callers catch (never a nats-py exception)

Bridge choice, measured with `python -m soar.bench.broker` on the 2-core development machine
while other test suites ran on it (load 2-3), so ranges over five runs: 200,000 or 500,000
real OGN envelopes, 100 per message, 4 partitions, embedded server, each runtime in a process
of its own, envelopes/s:

    runtime               publish (PubAck awaited)   pull + ack
    thread bridge          370,000 - 760,000         300,000 - 675,000
    trio-asyncio           115,000 - 235,000         105,000 - 250,000
    asyncio alone          440,000 - 600,000         405,000 - 650,000   (baseline, no trio)

The thread bridge is two to three times as fast as trio-asyncio and close to nats-py alone
(run to run, either may lead: the trio thread and the asyncio thread overlap), and importing
trio_asyncio patches asyncio for the whole process. Hence `DEFAULT_BRIDGE = "thread"`.

May import: soar.broker
"""

from soar.broker.bridge import DEFAULT_BRIDGE, BridgeKind
from soar.broker.client import (
    ConsumerStats,
    Delivery,
    JetStreamLink,
    LeaseBucket,
    LiveMessage,
    LiveSubscription,
    PartitionConsumer,
    PartitionedStream,
    Published,
    StreamSpec,
    StreamStats,
    open_link,
)
from soar.broker.codec import CodecError, decode_batch, encode_batch
from soar.broker.embedded import EmbeddedNats, EmbeddedNatsError
from soar.broker.errors import (
    BrokerError,
    BrokerUnavailable,
    LeaseConflict,
    PartitionCountMismatch,
    PayloadTooLarge,
    StreamFull,
)
from soar.broker.lease import LeaseStore, PartitionLeases

__all__ = [
    "DEFAULT_BRIDGE",
    "BridgeKind",
    "BrokerError",
    "BrokerUnavailable",
    "CodecError",
    "ConsumerStats",
    "Delivery",
    "EmbeddedNats",
    "EmbeddedNatsError",
    "JetStreamLink",
    "LeaseBucket",
    "LeaseConflict",
    "LeaseStore",
    "LiveMessage",
    "LiveSubscription",
    "PartitionConsumer",
    "PartitionCountMismatch",
    "PartitionLeases",
    "PartitionedStream",
    "PayloadTooLarge",
    "Published",
    "StreamFull",
    "StreamSpec",
    "StreamStats",
    "decode_batch",
    "encode_batch",
    "open_link",
]
