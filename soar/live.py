"""The publisher side of live fixes: shards hand fixes over, a trio task batches them onto pynng PUB.

Shards must never wait on the web side, so `offer()` is a plain synchronous append to a bounded
buffer (drop-oldest, counted). A flush task wakes every `flush_interval` seconds, groups the
buffered fixes by topic and sends one message per topic with every fix for it: `sock.send()` on
a PUB socket never blocks (≈600k/s here) while each `asend`/`arecv` costs ≈0.1 ms under trio, so
one message per fix would cap the whole system at ≈9k fixes/s.

Wire format of one message: ``topic`` + ``TOPIC_END`` + JSON array of fix objects (see
`fix_to_wire`). The terminator byte makes SUB prefix matching exact: without it a subscription
to ``aircraft.area.4.1`` would also match ``aircraft.area.4.12``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

import orjson
import prometheus_client
import structlog
import trio

from soar.records import AircraftType, Fix

log = structlog.get_logger(__name__)

TOPIC_END = b"\x00"
AREA_PREFIX = "aircraft.area."
#: nng's maximum per-pipe message queue.
PIPE_BUFFER = 8192
PACE_SLICE = PIPE_BUFFER // 4
PACE_PAUSE = 0.002
FIX_PREFIX = "aircraft.fix."

LIVE_DROPPED = prometheus_client.Counter(
    "soar_live_dropped_total", "Live fixes dropped before reaching a WebSocket client", ["stage"]
)
LIVE_PUBLISHED = prometheus_client.Counter(
    "soar_live_published_total", "Live fixes handed to the pynng PUB socket"
)
LIVE_MESSAGES = prometheus_client.Counter(
    "soar_live_messages_total", "pynng messages (batches of fixes) published"
)
LIVE_SKIPPED = prometheus_client.Counter(
    "soar_live_skipped_total", "Fixes not published live for privacy", ["reason"]
)


def area_topic(lat: float, lon: float) -> str:
    return f"{AREA_PREFIX}{math.floor(lat)}.{math.floor(lon)}"


def fix_topic(aircraft_id: int) -> str:
    return f"{FIX_PREFIX}{aircraft_id}"


def topic_bytes(topic: str) -> bytes:
    """The subscription prefix for one topic, terminator included."""
    return topic.encode() + TOPIC_END


def fix_to_wire(fix: Fix) -> dict[str, Any]:
    """The JSON-ready form of a fix as it travels to the web side (and, enriched, to clients)."""
    kind = fix.aircraft_type
    return {
        "id": fix.aircraft_id,
        "address_type": fix.address_type.value,
        "address": f"{fix.address:06X}",
        "protocol": fix.protocol.value,
        "time_us": fix.time_us or fix.received_us,  # when the aircraft was there
        "received_us": fix.received_us,
        "lat": round(fix.lat, 6),
        "lon": round(fix.lon, 6),
        "altitude_ft": fix.altitude_ft,
        "ground_speed_kt": fix.ground_speed_kt,
        "track_deg": fix.track_deg,
        "climb_fpm": fix.climb_fpm,
        "callsign": fix.callsign,
        "aircraft_type": None if kind is None else AircraftType(kind).name.lower(),
        "flight_id": None if fix.flight_id is None else str(fix.flight_id),
    }


def encode_batches(fixes: Iterable[Fix]) -> list[bytes]:
    """Group fixes by topic (area and aircraft) into one PUB message per topic, in order."""
    grouped: dict[str, list[bytes]] = {}
    for fix in fixes:
        body = orjson.dumps(fix_to_wire(fix))
        grouped.setdefault(area_topic(fix.lat, fix.lon), []).append(body)
        grouped.setdefault(fix_topic(fix.aircraft_id), []).append(body)
    return [
        topic_bytes(topic) + b"[" + b",".join(bodies) + b"]" for topic, bodies in grouped.items()
    ]


def decode_message(message: bytes) -> tuple[str, list[dict[str, Any]]]:
    """Split one PUB message into its topic and its fixes. Raises ValueError on garbage."""
    topic, sep, payload = message.partition(TOPIC_END)
    if not sep:
        raise ValueError("no topic terminator")
    fixes = orjson.loads(payload)
    if not isinstance(fixes, list):
        raise ValueError("payload is not a list")
    return topic.decode(), fixes


class LivePublisher:
    """Batches fixes from the shards onto a pynng PUB socket listening on `address`."""

    def __init__(
        self, address: str, *, max_buffer: int = 50_000, flush_interval: float = 0.05
    ) -> None:
        self.address = address
        self.flush_interval = flush_interval
        self._buffer: deque[Fix] = deque(maxlen=max_buffer)
        self._socket: Any = None
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

    def _take(self) -> tuple[int, list[bytes]]:
        fixes = list(self._buffer)
        self._buffer.clear()
        return len(fixes), encode_batches(fixes)

    def _sent(self, fixes: int, messages: int) -> None:
        LIVE_PUBLISHED.inc(fixes)
        LIVE_MESSAGES.inc(messages)

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
            self._socket = sock
            log.info("live.publisher.listening", address=self.address)
            task_status.started()
            try:
                while True:
                    await trio.sleep(self.flush_interval)
                    await self.flush_paced()
            finally:
                self.flush()  # what the shards gave us before shutdown still goes out
                self._socket = None
