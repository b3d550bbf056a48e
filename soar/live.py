"""The publisher side of live fixes: shards hand fixes over, a trio task batches them out.

Two transports, one interface (`offer(fix)`, `async run()`):

* `LivePublisher` — pynng PUB, for the all-in-one process (the hub dials it in-process).
* `NatsLivePublisher` — core NATS subjects on an open `JetStreamLink`, for `soar track` in
  split mode (`soar web` subscribes to the squares and aircraft its clients want).

Shards must never wait on the web side, so `offer()` is a plain synchronous append to a bounded
buffer (drop-oldest, counted). A flush task wakes every `flush_interval` seconds, groups the
buffered fixes by topic and sends one message per topic with every fix for it: `sock.send()` on
a PUB socket never blocks (≈600k/s here) while each `asend`/`arecv` costs ≈0.1 ms under trio, so
one message per fix would cap the whole system at ≈9k fixes/s. NATS gets the whole flush in one
bridge crossing (`JetStreamLink.publish_many`).

The wire format (JSON array of fix objects, topic framing) is `soar.protocols.live_wire`.

May import: soar.broker, soar.protocols, soar.records
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any, NoReturn

import prometheus_client
import structlog
import trio

from soar.broker.subjects import LIVE_PREFIX
from soar.protocols.live_wire import (
    PYNNG_TOPICS,
    TOPIC_END,
    TopicNames,
    decode_message,
    encode_batches,
    fix_to_wire,
    group_by_topic,
)
from soar.records import Fix

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from soar.broker.client import JetStreamLink

__all__ = [
    "AREA_PREFIX", "FIX_PREFIX", "LIVE_DROPPED", "NATS_TOPICS", "PIPE_BUFFER", "TOPIC_END",
    "LivePublisher", "NatsLivePublisher", "area_topic", "decode_message", "encode_batches",
    "fix_to_wire", "fix_topic", "nats_topics", "topic_bytes",
]

log = structlog.get_logger(__name__)

AREA_PREFIX = PYNNG_TOPICS.area_prefix
FIX_PREFIX = PYNNG_TOPICS.aircraft_prefix
#: nng's maximum per-pipe message queue.
PIPE_BUFFER = 8192
PACE_SLICE = PIPE_BUFFER // 4
PACE_PAUSE = 0.002
#: Room left in a NATS message for the protocol line and headers, below the server's max_payload.
NATS_BODY_HEADROOM = 4096
#: The last flush at shutdown waits at most this long for a NATS server that is not there.
FINAL_FLUSH_S = 2.0


def nats_topics(prefix: str = LIVE_PREFIX) -> TopicNames:
    """The NATS subjects of `soar.broker.subjects`: <prefix>.area.<lat>.<lon>, <prefix>.aircraft.<id>."""
    return TopicNames(f"{prefix}.area.", f"{prefix}.aircraft.")


NATS_TOPICS = nats_topics()

LIVE_DROPPED = prometheus_client.Counter(
    "soar_live_dropped_total", "Live fixes dropped before reaching a WebSocket client", ["stage"]
)
LIVE_PUBLISHED = prometheus_client.Counter(
    "soar_live_published_total", "Live fixes handed to the pynng PUB socket or to NATS"
)
LIVE_MESSAGES = prometheus_client.Counter(
    "soar_live_messages_total", "pynng or NATS messages (batches of fixes) published"
)
LIVE_SKIPPED = prometheus_client.Counter(
    "soar_live_skipped_total", "Fixes not published live for privacy", ["reason"]
)


def area_topic(lat: float, lon: float) -> str:
    return PYNNG_TOPICS.area(math.floor(lat), math.floor(lon))


def fix_topic(aircraft_id: int) -> str:
    return PYNNG_TOPICS.aircraft(aircraft_id)


def topic_bytes(topic: str) -> bytes:
    """The subscription prefix for one topic, terminator included."""
    return topic.encode() + TOPIC_END


class _LiveBuffer:
    """The shard-facing half both publishers share: a bounded, drop-oldest buffer of fixes."""

    def __init__(self, max_buffer: int, flush_interval: float) -> None:
        self.flush_interval = flush_interval
        self._buffer: deque[Fix] = deque(maxlen=max_buffer)
        self.dropped = 0

    def offer(self, fix: Fix) -> None:
        """Hand one fix over. Never blocks: a full buffer loses its oldest fix, counted."""
        if fix.no_track or fix.stealth:
            # Stealth aircraft are stored but never shown live; no-track ones never get here
            # from a correct shard, but a second guard costs nothing.
            LIVE_SKIPPED.labels(reason="no_track" if fix.no_track else "stealth").inc()
            return
        buffer = self._buffer
        if len(buffer) == buffer.maxlen:
            self.dropped += 1
            LIVE_DROPPED.labels(stage="publisher").inc()
        buffer.append(fix)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def _take_fixes(self) -> list[Fix]:
        fixes = list(self._buffer)
        self._buffer.clear()
        return fixes

    def _sent(self, fixes: int, messages: int) -> None:
        LIVE_PUBLISHED.inc(fixes)
        LIVE_MESSAGES.inc(messages)

    async def _flush_every_interval(self, flush: Callable[[], Awaitable[int]]) -> NoReturn:
        """The batching loop both publishers run until cancelled; each adds its own final flush."""
        while True:
            await trio.sleep(self.flush_interval)
            await flush()


class LivePublisher(_LiveBuffer):
    """Batches fixes from the shards onto a pynng PUB socket listening on `address`."""

    def __init__(
        self, address: str, *, max_buffer: int = 50_000, flush_interval: float = 0.05
    ) -> None:
        super().__init__(max_buffer, flush_interval)
        self.address = address
        #: more addresses to listen on (`soar run`'s web worker dials an ipc:// one); set
        #: before `run`
        self.also: list[str] = []
        self._socket: Any = None

    def _take(self) -> tuple[int, list[bytes]]:
        fixes = self._take_fixes()
        return len(fixes), encode_batches(fixes)

    def flush(self) -> int:
        """Send everything buffered now; returns the number of fixes sent. Synchronous."""
        if self._socket is None or not self._buffer:
            return 0
        count, messages = self._take()
        for message in messages:
            self._socket.send(message)  # PUB send never blocks: slow subscribers lose, not us
        self._sent(count, len(messages))
        return count

    async def flush_paced(self) -> int:
        """Like `flush`, but yields between slices of a large flush.

        nng drops a PUB message when a subscriber pipe's queue (PIPE_BUFFER messages) is full;
        pausing between slices lets the subscribers drain it when one flush has many topics.
        """
        if self._socket is None or not self._buffer:
            return 0
        count, messages = self._take()
        for start in range(0, len(messages), PACE_SLICE):
            if start:
                await trio.sleep(PACE_PAUSE)
            for message in messages[start : start + PACE_SLICE]:
                self._socket.send(message)
        self._sent(count, len(messages))
        return count

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        import pynng

        # nng queues PUB messages per subscriber pipe (default 16!) and drops on overflow; one
        # flush sends one message per topic, so the queue must hold a whole flush.
        with pynng.Pub0(listen=self.address, send_buffer_size=PIPE_BUFFER) as sock:
            for address in self.also:
                sock.listen(address)
            self._socket = sock
            log.info("live.publisher.listening", address=self.address, also=self.also or None)
            task_status.started()
            try:
                await self._flush_every_interval(self.flush_paced)
            finally:
                self.flush()  # what the shards gave us before shutdown still goes out
                self._socket = None


class NatsLivePublisher(_LiveBuffer):
    """Batches fixes from the shards onto core NATS subjects, per square and per aircraft.

    Core NATS, not JetStream: a live view has no use for a fix it missed, the database has it.
    When the server is away a flush fails as a whole; its fixes are counted as dropped
    (stage "nats") with one warning per outage, and the next flush tries again.
    """

    def __init__(
        self,
        link: JetStreamLink,
        *,
        prefix: str = LIVE_PREFIX,
        max_buffer: int = 50_000,
        flush_interval: float = 0.05,
    ) -> None:
        super().__init__(max_buffer, flush_interval)
        self.link = link
        self.topics = nats_topics(prefix)
        self.address = f"nats:{prefix}"
        self._failing = False

    async def flush(self) -> int:
        """Send everything buffered now; returns the number of fixes the server was handed."""
        from soar.broker.errors import BrokerError

        if not self._buffer:
            return 0
        fixes = self._take_fixes()
        max_body = max(1024, self.link.max_payload - NATS_BODY_HEADROOM)
        messages = group_by_topic(fixes, self.topics, max_body)
        try:
            await self.link.publish_many(messages)
        except BrokerError as exc:
            self.dropped += len(fixes)
            LIVE_DROPPED.labels(stage="nats").inc(len(fixes))
            if not self._failing:
                self._failing = True
                log.warning("live.publisher.nats_failing", error=str(exc), fixes=len(fixes))
            return 0
        if self._failing:
            self._failing = False
            log.info("live.publisher.nats_recovered")
        self._sent(len(fixes), len(messages))
        return len(fixes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        log.info("live.publisher.nats", prefix=self.topics.area_prefix.removesuffix(".area."))
        task_status.started()
        try:
            await self._flush_every_interval(self.flush)
        finally:
            # What the shards gave us before shutdown still goes out, if NATS takes it soon.
            with trio.CancelScope(shield=True), trio.move_on_after(FINAL_FLUSH_S):
                await self.flush()
