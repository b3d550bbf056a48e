"""`JetStreamLink`: a trio-facing NATS JetStream connection (nats-py behind a bridge).

    async with open_link(url) as link:                     # nats-py + bridge, closed on exit
        stream = await link.ensure_stream(StreamSpec(partitions=64))
        ack = await stream.publish_batch(partition, msg_id, body)   # waits for the PubAck
        async with stream.consumer(partition) as consumer:  # durable pull consumer
            for delivery in await consumer.fetch(batch=16, timeout=1.0):
                ...                                          # decode_batch(delivery.data)
            await consumer.ack(deliveries)                   # once their rows are committed
        bucket = await link.lease_bucket("soar_leases", ttl_s=10)   # KV, compare-and-set
        await link.publish_many([(live_area_subject(lat, lon), body), ...])
        async with link.subscribe(capacity=10_000) as live:   # core NATS, for soar web
            await live.add("soar.live.area.47.8")
            async for message in live: ...

Every method raises only `soar.broker.errors` types (`BrokerUnavailable` to retry later,
`StreamFull`, `PayloadTooLarge`, `LeaseConflict`, `BrokerError`), never nats-py's.

Semantics worth knowing:
- The stream uses work-queue retention: a message is removed once acknowledged, and each
  partition has exactly one durable consumer (`<stream>-<partition>`), which any process may
  bind: that is how a partition moves between tracks. Limits (`max_age_s`, `max_bytes`) use
  discard-new, so a full stream refuses a publish (`StreamFull`) instead of silently dropping
  the oldest unprocessed envelopes.
- `publish_batch` sets `Nats-Msg-Id`: a retry with the same id within the duplicate window is
  stored once (`Published.duplicate` is then true).
- An ack is a fire-and-forget publish (nats-py's `msg.ack()`); if it is lost, the message is
  delivered again after `ack_wait_s`. Delivery is at-least-once; consumers must tolerate repeats.
- A fetch cancelled from trio may leave messages fetched but never handed over: they come back
  after `ack_wait_s` like any unacknowledged message.
- The connection reconnects for ever (nats-py's default gives up after 60 attempts); while it is
  down, requests fail with `BrokerUnavailable` after `request_timeout_s`. Subscriptions and
  consumers bound before are re-established by nats-py on reconnect.

May import: soar.broker.bridge, soar.broker.errors, soar.broker.subjects
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from soar.broker.bridge import DEFAULT_BRIDGE, Bridge, BridgeKind, open_bridge
from soar.broker.errors import (
    BrokerError,
    BrokerUnavailable,
    LeaseConflict,
    PartitionCountMismatch,
    PayloadTooLarge,
    StreamFull,
)
from soar.broker.subjects import ENV_PREFIX, ENV_STREAM

log = structlog.get_logger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
PARTITIONS_METADATA = "soar_partitions"
#: Closing the connection on exit (flushing acks) waits at most this long, even when cancelled.
CLOSE_TIMEOUT_S = 5.0
#: JetStream API error codes (nats-server's errors.json)
_WRONG_LAST_SEQUENCE = (10071, 10164)
_STORE_LIMITS = ("maximum bytes", "maximum messages", "resource limits")


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """The envelope stream and its per-partition durable pull consumers."""

    partitions: int = 64
    name: str = ENV_STREAM
    subject_prefix: str = ENV_PREFIX
    max_age_s: float = 24 * 3600.0
    max_bytes: int = 8 * 1024**3
    duplicate_window_s: float = 120.0
    #: redelivery of a message nobody acknowledged; longer than fetch-to-commit ever takes
    ack_wait_s: float = 30.0
    #: messages delivered but not yet acknowledged, per partition, before fetch returns none
    max_ack_pending: int = 10_000
    file_storage: bool = True
    #: copies on a JetStream cluster (1 on a single server; 3 survives losing one of three)
    replicas: int = 1

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("partitions: at least one")

    def subject(self, partition: int) -> str:
        self._check(partition)
        return f"{self.subject_prefix}.{partition}"

    def durable(self, partition: int) -> str:
        self._check(partition)
        return f"{self.name}-{partition}"

    def _check(self, partition: int) -> None:
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} not in 0..{self.partitions - 1}")


@dataclass(frozen=True, slots=True)
class Published:
    """JetStream's PubAck: the stream sequence, and whether the msg id was a duplicate."""

    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StreamStats:
    messages: int
    bytes: int
    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """One partition consumer, for metrics: what waits and what is out for processing."""

    num_pending: int  # stored, not yet delivered
    num_ack_pending: int  # delivered, not yet acknowledged
    num_redelivered: int
    num_waiting: int  # pull requests waiting on the server


@dataclass(frozen=True, slots=True)
class LiveMessage:
    subject: str
    data: bytes


@dataclass(eq=False, slots=True)
class Delivery:
    """One JetStream message fetched from a partition; settle it with ack, nak or term."""

    partition: int
    data: bytes
    msg_id: str | None
    stream_seq: int
    num_delivered: int  # 1 the first time, more after redeliveries
    _msg: Any = field(repr=False)
    _link: JetStreamLink = field(repr=False)

    def release_data(self) -> None:
        """Drop the body once decoded: a message held unacknowledged for a while keeps only
        what settling it needs."""
        self.data = b""
        with contextlib.suppress(AttributeError):
            self._msg.data = b""

    async def ack(self, *, confirm: bool = False) -> None:
        """Done: its rows are committed. The server will not deliver it again (with `confirm`,
        this returns once the server has recorded the ack, not when it was sent)."""
        await self._link._settle([self], "ack", confirm)

    async def nak(self, delay_s: float | None = None) -> None:
        """Not processed: deliver it again (after `delay_s`, else at once)."""
        await self._link._call(self._msg.nak, delay_s)

    async def term(self) -> None:
        """Never deliver it again (a malformed body: count it, log it, then term it)."""
        await self._link._settle([self], "term", False)

    async def in_progress(self) -> None:
        """Still working on it: restart its ack_wait timer."""
        await self._link._call(self._msg.in_progress)


class JetStreamLink:
    """One NATS connection, used from trio. Make it with `open_link`."""

    def __init__(self, bridge: Bridge, nc: Any, request_timeout_s: float) -> None:
        self.bridge = bridge
        self._nc = nc
        self._js = nc.jetstream(timeout=request_timeout_s)
        self._request_timeout_s = request_timeout_s
        self.disconnects = 0
        self.reconnects = 0
        self.closing = False

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def max_payload(self) -> int:
        """The largest message body the server accepts (bytes)."""
        return int(self._nc.max_payload)

    # -- envelope stream ---------------------------------------------------------------------------

    async def ensure_stream(self, spec: StreamSpec) -> PartitionedStream:
        """Create the stream, or check and update the existing one; its handle."""
        from nats.js import api
        from nats.js.errors import NotFoundError

        config = api.StreamConfig(
            name=spec.name,
            subjects=[f"{spec.subject_prefix}.*"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            discard=api.DiscardPolicy.NEW,
            max_age=spec.max_age_s,
            max_bytes=spec.max_bytes,
            duplicate_window=spec.duplicate_window_s,
            storage=api.StorageType.FILE if spec.file_storage else api.StorageType.MEMORY,
            num_replicas=spec.replicas,
            metadata={PARTITIONS_METADATA: str(spec.partitions)},
        )
        try:
            info = await self._call(self._js.stream_info, spec.name)
        except BrokerError as exc:
            if not isinstance(exc.__cause__, NotFoundError):
                raise
            await self._call(self._js.add_stream, config)
            log.info("broker.stream_created", stream=spec.name, partitions=spec.partitions)
        else:
            existing = (info.config.metadata or {}).get(PARTITIONS_METADATA)
            if existing is not None and existing != str(spec.partitions):
                raise PartitionCountMismatch(
                    f"stream {spec.name} has {existing} partitions, this process uses "
                    f"{spec.partitions} (nats_partitions must be the same everywhere)"
                )
            await self._call(self._js.update_stream, config)
        return PartitionedStream(self, spec)

    # -- core NATS, for live fixes -----------------------------------------------------------------

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Core publish (no storage, no ack): fire-and-forget, in order, one bridge crossing."""
        if messages:
            await self._call(_publish_all, self._nc, messages)

    @contextlib.asynccontextmanager
    async def subscribe(self, capacity: int = 10_000) -> AsyncIterator[LiveSubscription]:
        """A set of core subscriptions feeding one bounded channel; all removed on exit."""
        subscription = LiveSubscription(self, capacity)
        try:
            yield subscription
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await subscription.clear()

    # -- key-value leases --------------------------------------------------------------------------

    async def lease_bucket(self, name: str, ttl_s: float, replicas: int = 1) -> LeaseBucket:
        """A KV bucket whose entries expire `ttl_s` after their last write (created if missing;
        an existing bucket keeps its own TTL, logged when it differs)."""
        from nats.js import api
        from nats.js.errors import NotFoundError

        try:
            kv = await self._call(self._js.key_value, name)
        except BrokerError as exc:
            if not isinstance(exc.__cause__, NotFoundError):
                raise
            kv = await self._call(
                self._js.create_key_value,
                api.KeyValueConfig(bucket=name, history=1, ttl=ttl_s,
                                   storage=api.StorageType.FILE, replicas=replicas),
            )
            log.info("broker.bucket_created", bucket=name, ttl_s=ttl_s)
        else:
            status = await self._call(kv.status)
            if status.ttl is not None and not math.isclose(status.ttl, ttl_s, rel_tol=1e-3):
                log.warning("broker.bucket_ttl_differs", bucket=name, bucket_ttl_s=status.ttl,
                            wanted_ttl_s=ttl_s)
        return LeaseBucket(self, kv)

    # -- plumbing ----------------------------------------------------------------------------------

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a nats-py coroutine function through the bridge; nats errors become ours."""
        with _translated_errors():
            return await self.bridge.call(fn, *args, **kwargs)

    async def _settle(self, deliveries: Sequence[Delivery], how: str, confirm: bool) -> None:
        if deliveries:
            await self._call(_settle_all, [d._msg for d in deliveries], how,
                             self._request_timeout_s if confirm else None)

    async def _on_disconnected(self) -> None:
        if self.closing:
            return
        log.warning("broker.disconnected")
        self.bridge.to_trio(self._count_disconnect)

    async def _on_reconnected(self) -> None:
        log.info("broker.reconnected")
        self.bridge.to_trio(self._count_reconnect)

    def _count_disconnect(self) -> None:
        self.disconnects += 1

    def _count_reconnect(self) -> None:
        self.reconnects += 1


class PartitionedStream:
    """The envelope stream: publish to a partition, consume a partition."""

    def __init__(self, link: JetStreamLink, spec: StreamSpec) -> None:
        self.link = link
        self.spec = spec

    async def publish_batch(self, partition: int, msg_id: str, payload: bytes) -> Published:
        """Store one message in a partition and wait for JetStream's acknowledgement."""
        (published,) = await self.publish_batches([(partition, msg_id, payload)])
        return published

    async def publish_batches(self, items: Sequence[tuple[int, str, bytes]]) -> list[Published]:
        """Several messages in flight at once, one bridge crossing; raises if any failed.
        Retrying the whole list with the same ids is safe: duplicates are stored once."""
        requests = [(self.spec.subject(p), msg_id, payload) for p, msg_id, payload in items]
        acks = await self.link._call(_publish_js, self.link._js, requests)
        return [Published(seq=a.seq, duplicate=bool(a.duplicate)) for a in acks]

    @contextlib.asynccontextmanager
    async def consumer(self, partition: int) -> AsyncIterator[PartitionConsumer]:
        """Bind this partition's durable pull consumer (created or updated to the spec)."""
        from nats.js import api

        config = api.ConsumerConfig(
            durable_name=self.spec.durable(partition),
            name=self.spec.durable(partition),
            filter_subject=self.spec.subject(partition),
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.spec.ack_wait_s,
            max_deliver=-1,  # never give up on an envelope: a poison body is term()ed instead
            max_ack_pending=self.spec.max_ack_pending,
        )
        link = self.link
        await link._call(link._js.add_consumer, self.spec.name, config)
        sub = await link._call(link._js.pull_subscribe_bind, durable=config.durable_name,
                               stream=self.spec.name)
        try:
            yield PartitionConsumer(self, partition, sub)
        finally:
            with (trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S),
                  contextlib.suppress(BrokerError)):
                await link._call(sub.unsubscribe)

    async def info(self) -> StreamStats:
        info = await self.link._call(self.link._js.stream_info, self.spec.name)
        state = info.state
        return StreamStats(state.messages, state.bytes, state.first_seq, state.last_seq)


class PartitionConsumer:
    """One partition's durable pull consumer, bound by this process."""

    def __init__(self, stream: PartitionedStream, partition: int, sub: Any) -> None:
        self.stream = stream
        self.partition = partition
        self._sub = sub

    async def fetch(self, batch: int = 16, timeout: float = 1.0) -> list[Delivery]:
        """Up to `batch` messages; those already waiting come at once, else it waits up to
        `timeout` seconds for the first; [] when none came."""
        link = self.stream.link
        msgs = await link._call(_fetch, self._sub, batch, timeout)
        deliveries = []
        for msg in msgs:
            meta = msg.metadata
            headers = msg.headers or {}
            deliveries.append(Delivery(
                self.partition, msg.data, headers.get(MSG_ID_HEADER), meta.sequence.stream,
                meta.num_delivered, msg, link,
            ))
        return deliveries

    async def ack(self, deliveries: Sequence[Delivery], *, confirm: bool = False) -> None:
        """Acknowledge many in one bridge crossing. A plain ack is sent, not confirmed: the
        server applies it a moment later (consumer info may not count it yet) and a lost one
        means a redelivery. `confirm` waits for the server's reply to every ack (one round
        trip, all in flight at once)."""
        await self.stream.link._settle(deliveries, "ack", confirm)

    async def nak(self, deliveries: Sequence[Delivery]) -> None:
        """Not processed here: deliver each again at once (one bridge crossing)."""
        await self.stream.link._settle(deliveries, "nak", False)

    async def in_progress(self, deliveries: Sequence[Delivery]) -> None:
        """Still held: restart the ack_wait timer of each (one bridge crossing)."""
        await self.stream.link._settle(deliveries, "in_progress", False)

    async def info(self) -> ConsumerStats:
        info = await self.stream.link._call(self._sub.consumer_info)
        return ConsumerStats(
            num_pending=info.num_pending or 0,
            num_ack_pending=info.num_ack_pending or 0,
            num_redelivered=info.num_redelivered or 0,
            num_waiting=info.num_waiting or 0,
        )


class LiveSubscription:
    """Core NATS subscriptions (live fixes) into one bounded trio channel.

    When trio does not keep up and the channel is full, messages are dropped and counted
    (`dropped`), with one warning per episode: live fixes are a view, the database has them.
    """

    def __init__(self, link: JetStreamLink, capacity: int) -> None:
        self._link = link
        self._send, self._receive = trio.open_memory_channel[LiveMessage](capacity)
        self._subs: dict[str, Any] = {}
        self.dropped = 0
        self._dropping = False

    @property
    def subjects(self) -> frozenset[str]:
        return frozenset(self._subs)

    async def add(self, subject: str) -> None:
        """Subscribe to a subject (wildcards allowed); no-op when already subscribed."""
        if subject in self._subs:
            return
        self._subs[subject] = None  # reserved: a concurrent add of the same subject is a no-op
        try:
            self._subs[subject] = await self._link._call(
                self._link._nc.subscribe, subject, cb=self._on_message
            )
        except BaseException:
            del self._subs[subject]
            raise

    async def remove(self, subject: str) -> None:
        sub = self._subs.pop(subject, None)
        if sub is not None:
            with contextlib.suppress(BrokerError):
                await self._link._call(sub.unsubscribe)

    async def clear(self) -> None:
        for subject in list(self._subs):
            await self.remove(subject)

    async def receive(self) -> LiveMessage:
        return await self._receive.receive()

    def __aiter__(self) -> LiveSubscription:
        return self

    async def __anext__(self) -> LiveMessage:
        return await self._receive.receive()

    async def _on_message(self, msg: Any) -> None:  # runs on the asyncio side
        message = LiveMessage(msg.subject, msg.data)
        self._link.bridge.to_trio(lambda: self._deliver(message))

    def _deliver(self, message: LiveMessage) -> None:  # runs in trio
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning("broker.live_dropping", subject=message.subject)
            return
        if self._dropping:
            self._dropping = False
            log.info("broker.live_caught_up", dropped_total=self.dropped)


@dataclass(frozen=True, slots=True)
class LeaseEntry:
    value: bytes
    revision: int


class LeaseBucket:
    """A JetStream key-value bucket with a TTL: compare-and-set by revision (`soar.broker.lease`
    uses it; anything satisfying `soar.broker.lease.LeaseStore` would do)."""

    def __init__(self, link: JetStreamLink, kv: Any) -> None:
        self._link = link
        self._kv = kv

    async def create(self, key: str, value: bytes) -> int:
        """Write `key` only if it has no live value; its revision. LeaseConflict if it has."""
        with _conflicts_as(LeaseConflict, f"{key} exists"):
            return int(await self._link._call(self._kv.create, key, value))

    async def update(self, key: str, value: bytes, revision: int) -> int:
        """Write `key` only if its revision is still `revision`; the new revision."""
        with _conflicts_as(LeaseConflict, f"{key} changed since revision {revision}"):
            return int(await self._link._call(self._kv.update, key, value, revision))

    async def put(self, key: str, value: bytes) -> int:
        return int(await self._link._call(self._kv.put, key, value))

    async def get(self, key: str) -> LeaseEntry | None:
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self._link._call(self._kv.get, key)
        except BrokerError as exc:
            if isinstance(exc.__cause__, KeyNotFoundError):
                return None
            raise
        return LeaseEntry(bytes(entry.value or b""), int(entry.revision))

    async def delete(self, key: str, revision: int | None = None) -> None:
        """Delete `key` (only at `revision` when given: LeaseConflict if it moved on)."""
        with _conflicts_as(LeaseConflict, f"{key} changed since revision {revision}"):
            await self._link._call(self._kv.delete, key, revision)

    async def keys(self, prefix: str = "") -> list[str]:
        """The keys with a live value (expired and deleted ones are gone), starting with prefix."""
        from nats.js.errors import NoKeysError

        try:
            keys = await self._link._call(self._kv.keys)
        except BrokerError as exc:
            if isinstance(exc.__cause__, NoKeysError):
                return []
            raise
        return sorted(k for k in keys if k.startswith(prefix))


# -- connecting -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_link(
    url: str,
    *,
    token: str | None = None,
    creds: str | None = None,
    name: str = "soar",
    bridge: BridgeKind = DEFAULT_BRIDGE,
    request_timeout_s: float = 5.0,
    reconnect_wait_s: float = 1.0,
    connect_attempts: int = 3,
) -> AsyncIterator[JetStreamLink]:
    """Connect to NATS (a URL, or several comma-separated for a cluster) and yield the link.

    `token` or `creds` (the path of a .creds file) authenticate when the server wants it. The
    first connection gets `connect_attempts` tries per server (BrokerUnavailable after that:
    retry with backoff); once connected, a lost connection is retried for ever. On exit
    pending acks are flushed and the connection closed, within CLOSE_TIMEOUT_S.
    """
    import nats

    async with open_bridge(bridge) as running_bridge:
        holder: dict[str, JetStreamLink] = {}

        async def disconnected() -> None:
            if "link" in holder:
                await holder["link"]._on_disconnected()

        failing = [False]  # one warning per outage, not one per reconnect attempt

        async def reconnected() -> None:
            failing[0] = False
            if "link" in holder:
                await holder["link"]._on_reconnected()

        async def error(exc: Exception) -> None:
            (log.debug if failing[0] else log.warning)(
                "broker.connection_error", error=f"{type(exc).__name__}: {exc}")
            failing[0] = True

        async def closed() -> None:
            log.debug("broker.closed")

        options: dict[str, Any] = dict(
            servers=[u.strip() for u in url.split(",") if u.strip()],
            name=name,
            allow_reconnect=True,
            # nats-py applies this to the first connection too, where -1 would wait for ever
            max_reconnect_attempts=connect_attempts,
            reconnect_time_wait=reconnect_wait_s,
            connect_timeout=request_timeout_s,
            error_cb=error,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            closed_cb=closed,
        )
        if token:
            options["token"] = token
        if creds:
            options["user_credentials"] = creds
        with _translated_errors():
            nc = await running_bridge.call(nats.connect, **options)
        nc.options["max_reconnect_attempts"] = -1  # connected: from now on, never give up
        link = JetStreamLink(running_bridge, nc, request_timeout_s)
        holder["link"] = link
        log.info("broker.connected", url=_redacted(url), bridge=running_bridge.kind)
        try:
            yield link
        finally:
            link.closing = True
            with (trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S),
                  contextlib.suppress(Exception)):
                await running_bridge.call(nc.close)


def _redacted(url: str) -> str:
    # nats://user:password@host -> nats://***@host
    return ",".join(u.split("://", 1)[0] + "://***@" + u.rsplit("@", 1)[1] if "@" in u else u
                    for u in url.split(","))


# -- asyncio-side helpers (each runs inside one bridge call) ---------------------------------------


async def _publish_js(js: Any, requests: Sequence[tuple[str, str, bytes]]) -> list[Any]:
    import asyncio

    return list(await asyncio.gather(*(
        js.publish(subject, payload, headers={MSG_ID_HEADER: msg_id})
        for subject, msg_id, payload in requests
    )))


async def _publish_all(nc: Any, messages: Sequence[tuple[str, bytes]]) -> None:
    for subject, payload in messages:
        await nc.publish(subject, payload)


async def _fetch(sub: Any, batch: int, timeout: float) -> list[Any]:
    try:
        return list(await sub.fetch(batch, timeout=timeout))
    except TimeoutError:  # nats-py raises its own subclass or asyncio's: both mean "none came"
        return []


async def _settle_all(msgs: Sequence[Any], how: str, confirm_timeout: float | None) -> None:
    import asyncio

    from nats.errors import MsgAlreadyAckdError

    if how == "ack" and confirm_timeout is not None:
        pending = [m for m in msgs if not m.is_acked]
        await asyncio.gather(*(m.ack_sync(timeout=confirm_timeout) for m in pending))
        return
    for msg in msgs:
        with contextlib.suppress(MsgAlreadyAckdError):
            if how == "ack":
                await msg.ack()
            elif how == "in_progress":
                await msg.in_progress()
            elif how == "nak":
                await msg.nak()
            else:
                await msg.term()


# -- errors ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    """nats-py's exceptions as soar.broker.errors, the original kept as __cause__."""
    import nats.errors
    import nats.js.errors

    try:
        yield
    except BrokerError:
        raise
    except nats.errors.MaxPayloadError as exc:
        raise PayloadTooLarge(str(exc)) from exc
    except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError) as exc:
        raise BrokerUnavailable("no JetStream responder (stream missing or JetStream down)") from exc
    except nats.js.errors.APIError as exc:
        text = getattr(exc, "description", None) or str(exc)
        if any(limit in text for limit in _STORE_LIMITS):
            raise StreamFull(text) from exc
        if getattr(exc, "code", None) == 503:
            raise BrokerUnavailable(text) from exc
        raise BrokerError(text) from exc
    except (nats.errors.TimeoutError, TimeoutError) as exc:
        raise BrokerUnavailable("NATS did not answer in time") from exc
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
            nats.errors.OutboundBufferLimitError, nats.errors.StaleConnectionError,
            nats.errors.NoServersError, ConnectionError, OSError) as exc:
        raise BrokerUnavailable(f"NATS connection: {type(exc).__name__}: {exc}") from exc
    except nats.errors.Error as exc:
        raise BrokerError(f"{type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def _conflicts_as(error: type[BrokerError], text: str) -> Iterator[None]:
    import nats.js.errors

    try:
        yield
    except BrokerError as exc:
        cause = exc.__cause__
        if isinstance(cause, nats.js.errors.KeyWrongLastSequenceError) or (
            isinstance(cause, nats.js.errors.APIError)
            and getattr(cause, "err_code", None) in _WRONG_LAST_SEQUENCE
        ):
            raise error(text) from cause
        raise
