"""The broker's error types: what a caller of `soar.broker` catches, never a nats-py class.

May import: nothing of soar
"""

from __future__ import annotations


class BrokerError(Exception):
    """Something went wrong talking to NATS; the text says what."""


class BrokerUnavailable(BrokerError):
    """NATS did not answer in time, or the connection is down or closed. Retry later: a
    publish retried with the same message id is stored once (JetStream de-duplication)."""


class StreamFull(BrokerError):
    """The stream is at its max_bytes/max_msgs limit and refuses new messages (discard new):
    nothing was stored; back off until the track processes catch up."""


class PayloadTooLarge(BrokerError):
    """The message is larger than the server's max_payload (1 MiB by default): send smaller
    batches."""


class PartitionCountMismatch(BrokerError):
    """The stream exists with another partition count: every process must use the same
    `nats_partitions`, or envelopes of one aircraft would land in two partitions."""


class LeaseConflict(BrokerError):
    """A compare-and-set on the lease bucket lost: another process holds or changed the key."""
