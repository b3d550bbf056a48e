"""The web side of live fixes: a pynng or NATS source, per-client queues, and the `/api/live` socket.

`LiveHub` subscribes only to the topics some WebSocket client wants: one per 1x1 degree square
and one per followed aircraft, the first client's interest adding it and the last one's leaving
removing it. Two sources, the same hub:

* pynng SUB dialling `LivePublisher`s (all-in-one: `aircraft.area.{lat}.{lon}`,
  `aircraft.fix.{id}`); a subscription change is applied at once.
* core NATS on a `JetStreamLink` (split mode: `soar.live.area.{lat}.{lon}`,
  `soar.live.aircraft.{id}`, published by `NatsLivePublisher`s in the track processes);
  subscribing is a round trip, so one task brings the link's subjects to the wanted set and
  a client's "subscribed" reply waits for it (`wait_subscribed`).

Each received batch is decoded once, each fix serialised once, and the text is put on the
queue of every interested client.

Client queues are bounded and drop their OLDEST message when full (counted): a client that does
not read falls behind and loses old positions, and nothing upstream ever waits for it. Only that
client's sender task blocks on its socket.

Privacy: the hub asks an optional `directory` (aircraft id -> `AircraftInfo`) about every fix;
an aircraft marked not tracked is never sent, and registration / competition number / model
are added only when the aircraft is identified.

May import: soar.broker, soar.live, soar.protocols, soar.tracking
"""

from __future__ import annotations

import gc
import json
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import prometheus_client
import structlog
import trio
import trio_websocket
from quart import Blueprint, websocket

from soar.live import LIVE_DROPPED, PIPE_BUFFER, nats_topics, topic_bytes
from soar.protocols.live_wire import (
    MAX_AIRCRAFT_PER_CLIENT,
    MAX_SQUARES_PER_CLIENT,
    PYNNG_TOPICS,
    AircraftRequest,
    AreaRequest,
    BadRequest,
    LiveWireError,
    Rejection,
    SetOptions,
    Square,
    TopicNames,
    acknowledgement,
    decode_fixes,
    parse_client_message,
    squares_in_bounds,
    unframe,
    wire_square,
)
from soar.tracking.privacy import REFRESH_S, AircraftInfo, PrivacyRegistry

if TYPE_CHECKING:
    from soar.broker.client import JetStreamLink, LiveSubscription

__all__ = [  # the pure parts come from soar.protocols.live_wire, re-exported for callers
    "MAX_AIRCRAFT_PER_CLIENT", "MAX_SQUARES_PER_CLIENT", "WS_DISCARDED", "WS_DROPPED", "WS_QUEUED",
    "AircraftDirectory",
    "AircraftInfo",
    "BadRequest", "ClientQueue", "LiveClient", "LiveHub", "Square", "connection_status",
    "handle_client_message", "live_blueprint", "own_rss_bytes", "run_live_client",
    "serve_live_socket",
    "squares_in_bounds",
]

log = structlog.get_logger(__name__)

# A member index key: a square or an aircraft id.
_Key = TypeVar("_Key")

WS_CONNECTIONS = prometheus_client.Gauge(
    "soar_websocket_connections", "Open WebSocket connections on /api/live"
)
WS_SUBSCRIPTIONS = prometheus_client.Gauge(
    "soar_websocket_subscriptions", "Area squares and aircraft followed, summed over clients"
)
WS_DROPPED = prometheus_client.Counter(
    "soar_websocket_dropped_total", "Fix messages dropped from a slow WebSocket client's queue"
)
WS_SENT = prometheus_client.Counter("soar_websocket_sent_total", "Fix messages sent to clients")
# Every fix put on a queue is in the end sent, dropped or discarded: with no client connected,
# queued = sent + dropped + discarded, so no loss goes uncounted.
WS_QUEUED = prometheus_client.Counter(
    "soar_websocket_queued_total", "Fix messages put on WebSocket clients' queues"
)
WS_DISCARDED = prometheus_client.Counter(
    "soar_websocket_discarded_total",
    "Fix messages still queued, or being sent, when their WebSocket client left",
)
WS_BAD_MESSAGES = prometheus_client.Counter(
    "soar_websocket_bad_messages_total", "Client messages rejected", ["reason"]
)
HUB_BAD = prometheus_client.Counter(
    "soar_live_hub_bad_messages_total", "Undecodable messages received from the publisher"
)
HUB_SUBJECTS = prometheus_client.Gauge(
    "soar_live_hub_subjects", "NATS subjects the live hub is subscribed to (split mode)"
)

class AircraftDirectory(PrivacyRegistry):
    """The hub's holder of the one privacy authority, refreshed every `refresh_interval` s.

    Kept for the roles that build a hub of their own; where a process has shards, pass their
    `PrivacyRegistry.get` to the hub instead and run one refresh.
    """

    def __init__(self, refresh_interval: float = REFRESH_S) -> None:
        super().__init__()
        self.refresh_interval = refresh_interval

    async def run(
        self, pool: Any, *, every_s: float | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await super().run(pool, every_s=every_s or self.refresh_interval, task_status=task_status)


#: Replies to a client's own messages that may wait unsent before its next message is read.
CONTROL_AHEAD = 64


class ClientQueue:
    """A bounded queue of outgoing texts that drops the oldest when full."""

    def __init__(self, size: int) -> None:
        self._items: deque[str] = deque(maxlen=size)
        # Replies to the client's own requests: never dropped, served before fixes. A client
        # asks no further ahead than CONTROL_AHEAD unsent replies (`control_room`).
        self._control: deque[str] = deque()
        self._wakeup = trio.Event()
        self._room = trio.Event()
        self.dropped = 0
        self.discarded = 0
        self.closed = False

    def close(self) -> None:
        """The client left: free what it never read (counted), and take nothing more."""
        self.closed = True
        self._room.set()
        self.discard(len(self._items))
        self._items.clear()
        self._control.clear()

    def discard(self, fixes: int) -> None:
        """Count `fixes` taken for a client that left before they were sent."""
        self.discarded += fixes
        WS_DISCARDED.inc(fixes)

    def put_control(self, item: str) -> None:
        self._control.append(item)
        self._wakeup.set()

    async def control_room(self) -> None:
        """Until fewer than CONTROL_AHEAD replies wait to be sent. The client's next message is
        read only then: a client that asks faster than it reads is slowed by TCP, and never
        loses a reply (a bounded deque dropped them: 400 subscriptions sent at once got ~270
        acknowledgements)."""
        while len(self._control) >= CONTROL_AHEAD and not self.closed:
            self._room = trio.Event()
            await self._room.wait()

    def put_nowait(self, item: str) -> None:
        fan_out((self,), item)

    def __len__(self) -> int:
        return len(self._items) + len(self._control)

    def take_fixes(self, most: int) -> list[str]:
        """Up to `most` queued fixes at once (control replies stay queued, served first)."""
        taken: list[str] = []
        while self._items and len(taken) < most and not self._control:
            taken.append(self._items.popleft())
        return taken

    async def get(self) -> tuple[str, bool]:
        """The next text to send, and whether it is a fix (not a control reply)."""
        while not self._items and not self._control:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        if self._control:
            reply = self._control.popleft()
            self._room.set()
            return reply, False
        return self._items.popleft(), True


def fan_out(queues: Iterable[ClientQueue], item: str) -> int:
    """Put `item` on every open queue of `queues`, each full one dropping its oldest; how many
    took it. Counted once for all: a fix for a crowd of stalled clients is put, and drops, on
    each of their queues, and a metric update each (~1 µs) was half the cost."""
    queued = dropped = 0
    for queue in queues:
        if queue.closed:
            continue
        items = queue._items
        if len(items) == items.maxlen:
            queue.dropped += 1
            dropped += 1
        items.append(item)
        queue._wakeup.set()
        queued += 1
    WS_QUEUED.inc(queued)
    if dropped:
        WS_DROPPED.inc(dropped)
    return queued


@dataclass(eq=False)
class LiveClient:
    """One WebSocket client's subscriptions and queue."""

    queue: ClientQueue
    squares: set[Square] = field(default_factory=set)
    aircraft: set[int] = field(default_factory=set)
    ident: int = 0
    batch: bool = False  # opted in to {"type":"fixes"} messages


class LiveHub:
    """Receives published fix batches and hands each fix to the clients that want it.

    Give it pynng `address`es (all-in-one, or several tracks' live_addr) or an open NATS
    `link` (split mode), not both.
    """

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
        *,
        link: JetStreamLink | None = None,
        live_prefix: str | None = None,
        client_queue_size: int = 1000,
        directory: Callable[[int], AircraftInfo | None] | None = None,
        subscription_capacity: int = 10_000,
    ) -> None:
        if (address is None) == (link is None):
            raise ValueError("LiveHub: give pynng addresses or a NATS link, one of the two")
        self._link = link
        self.names: TopicNames
        if link is not None:
            self.addresses: list[str] = []
            self.names = nats_topics() if live_prefix is None else nats_topics(live_prefix)
            self.address = "nats:" + self.names.area_prefix.removesuffix(".area.")
        else:
            assert address is not None
            # Several addresses in split mode: every track process publishes its own slice.
            self.addresses = [address] if isinstance(address, str) else list(address)
            self.address = ",".join(self.addresses)
            self.names = PYNNG_TOPICS
        self.client_queue_size = client_queue_size
        self.subscription_capacity = subscription_capacity
        self.directory = directory or (lambda _ident: None)
        self._clients: set[LiveClient] = set()
        self._by_square: dict[Square, set[LiveClient]] = {}
        self._by_aircraft: dict[int, set[LiveClient]] = {}
        self._socket: Any = None
        self._live: LiveSubscription | None = None
        # NATS: the wanted set changes synchronously (client messages); one task applies it.
        self._wanted_generation = 0
        self._applied_generation = 0
        self._wanted_changed = trio.Event()
        self._applied = trio.Event()
        self._next_ident = 0
        self.received_fixes = 0
        self._departed = 0  # clients gone since the last memory trim
        self._crowd_left = trio.Event()

    # -- clients -------------------------------------------------------------------------

    def connect(self) -> LiveClient:
        self._next_ident += 1
        client = LiveClient(ClientQueue(self.client_queue_size), ident=self._next_ident)
        self._clients.add(client)
        WS_CONNECTIONS.inc()
        return client

    def disconnect(self, client: LiveClient) -> None:
        if client not in self._clients:
            return
        self.unsubscribe_squares(client, list(client.squares))
        for ident in list(client.aircraft):
            self.unsubscribe_aircraft(client, ident)
        self._clients.discard(client)
        client.queue.close()
        WS_CONNECTIONS.dec()
        self._departed += 1
        if self._departed >= TRIM_AFTER_DEPARTURES:
            self._crowd_left.set()

    @property
    def connected(self) -> bool:
        """True once the source is up: a live pipe to a publisher, or a connected NATS link."""
        if self._link is not None:
            return self._live is not None and self._link.connected
        return self._socket is not None and bool(self._socket.pipes)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def subscribed(self) -> frozenset[str]:
        """The topics the source holds now (NATS: applied by the subscription task)."""
        if self._live is not None:
            return self._live.subjects
        return frozenset(self.topics()) if self._socket is not None else frozenset()

    def subscribe_squares(self, client: LiveClient, squares: list[Square]) -> None:
        new = [square for square in squares if square not in client.squares]
        if len(client.squares) + len(new) > MAX_SQUARES_PER_CLIENT:
            raise BadRequest(
                f"too many squares: at most {MAX_SQUARES_PER_CLIENT} per connection"
            )
        for square in new:
            client.squares.add(square)
            self._join(self._by_square, square, self.names.area(*square), client)
        WS_SUBSCRIPTIONS.inc(len(new))

    def unsubscribe_squares(self, client: LiveClient, squares: list[Square]) -> None:
        for square in squares:
            if square not in client.squares:
                continue
            client.squares.discard(square)
            WS_SUBSCRIPTIONS.dec()
            self._leave(self._by_square, square, self.names.area(*square), client)

    def subscribe_aircraft(self, client: LiveClient, ident: int) -> None:
        if ident in client.aircraft:
            return
        if len(client.aircraft) >= MAX_AIRCRAFT_PER_CLIENT:
            raise BadRequest(f"too many aircraft: at most {MAX_AIRCRAFT_PER_CLIENT}")
        client.aircraft.add(ident)
        WS_SUBSCRIPTIONS.inc()
        self._join(self._by_aircraft, ident, self.names.aircraft(ident), client)

    def unsubscribe_aircraft(self, client: LiveClient, ident: int) -> None:
        if ident not in client.aircraft:
            return
        client.aircraft.discard(ident)
        WS_SUBSCRIPTIONS.dec()
        self._leave(self._by_aircraft, ident, self.names.aircraft(ident), client)

    def _join(
        self, index: dict[_Key, set[LiveClient]], key: _Key, topic: str, client: LiveClient
    ) -> None:
        """Add a client to a square's or aircraft's members; the first one subscribes the topic."""
        members = index.setdefault(key, set())
        if not members:
            self._sub(topic)
        members.add(client)

    def _leave(
        self, index: dict[_Key, set[LiveClient]], key: _Key, topic: str, client: LiveClient
    ) -> None:
        """Drop a client from a square's or aircraft's members; the last one out unsubscribes."""
        members = index.get(key)
        if members is None:
            return
        members.discard(client)
        if not members:
            del index[key]
            self._unsub(topic)

    def topics(self) -> set[str]:
        """The topics the source should hold now."""
        names = self.names
        return {names.area(*square) for square in self._by_square} | {
            names.aircraft(ident) for ident in self._by_aircraft
        }

    def _sub(self, topic: str) -> None:
        if self._link is not None:
            self._want_changed()
        elif self._socket is not None:
            self._socket.subscribe(topic_bytes(topic))

    def _unsub(self, topic: str) -> None:
        if self._link is not None:
            self._want_changed()
        elif self._socket is not None:
            self._socket.unsubscribe(topic_bytes(topic))

    def _want_changed(self) -> None:
        self._wanted_generation += 1
        self._wanted_changed.set()

    async def wait_subscribed(self, timeout: float = 5.0) -> bool:
        """Wait until the source holds every topic wanted when this was called (at once for
        pynng). False after `timeout`: NATS is away, the subscriptions follow when it is back."""
        if self._link is None:
            return True
        target = self._wanted_generation
        with trio.move_on_after(timeout):
            while self._applied_generation < target:
                await self._applied.wait()
            return True
        return False

    # -- fixes ---------------------------------------------------------------------------

    def dispatch(self, message: bytes) -> int:
        """Hand one pynng message (topic + batch) to the interested clients; fixes delivered."""
        try:
            topic, body = unframe(message)
        except LiveWireError:
            HUB_BAD.inc()
            log.warning("live.hub.bad_message", size=len(message))
            return 0
        return self.dispatch_batch(topic, body)

    def dispatch_batch(self, topic: str, body: bytes) -> int:
        """Hand one batch published under `topic` to the interested clients; fixes delivered."""
        try:
            fixes = decode_fixes(body)
        except LiveWireError:
            HUB_BAD.inc()
            log.warning("live.hub.bad_message", topic=topic, size=len(body))
            return 0
        delivered = 0
        by_area = self.names.is_area(topic)
        for raw in fixes:
            if not isinstance(raw, dict):
                HUB_BAD.inc()
                continue
            self.received_fixes += 1
            try:
                square, ident = wire_square(raw)
            except LiveWireError:
                HUB_BAD.inc()
                continue
            targets: Iterable[LiveClient]
            if by_area:
                targets = self._by_square.get(square, ())
            else:
                # A client following this aircraft and its square gets it from the area topic.
                targets = [
                    client
                    for client in self._by_aircraft.get(ident, ())
                    if square not in client.squares
                ]
            if not targets:
                continue
            text = self._render(ident, raw)
            if text is None:
                continue
            delivered += fan_out((client.queue for client in targets), text)
        return delivered

    def _render(self, ident: int, raw: dict[str, Any]) -> str | None:
        info = self.directory(ident)
        if info is not None and not info.tracked:
            return None
        message = {"type": "fix", **raw}
        if info is not None and info.identified:
            message["registration"] = info.registration
            message["competition_number"] = info.competition_number
            message["model"] = info.model
            if info.category:
                message["category"] = info.category
        else:
            message["registration"] = message["competition_number"] = message["model"] = None
        message.setdefault("category", raw.get("aircraft_type"))
        return orjson.dumps(message).decode()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._trim_after_crowds)
            if self._link is not None:
                await self._run_nats(self._link, task_status)
            else:
                await self._run_pynng(task_status)
            nursery.cancel_scope.cancel()

    async def _trim_after_crowds(self) -> None:
        """Once many clients have left, give the memory they used back to the system.

        Their queues are freed when they go, but their connections leave reference cycles only
        a full collection frees, and glibc keeps freed heap pages for the process: without
        this, RSS stayed at its crowd level (and a second crowd went higher still). Measured
        with 1,000 clients: 80 MB before, 134 MB after they left, 88 MB after this, when the
        process runs with PYTHONMALLOC=malloc (pymalloc's arenas stay: 123 MB).
        malloc_trim walks the heap in a worker thread (ctypes drops the GIL).
        """
        while True:
            await self._crowd_left.wait()
            # a crowd leaves over a moment: trim once, when the departures have stopped
            while self._departed:
                seen = self._departed
                await trio.sleep(TRIM_SETTLE_S)
                if self._departed == seen:
                    break
            self._departed = 0
            self._crowd_left = trio.Event()
            before = own_rss_bytes()
            # closed connections leave reference cycles (server and framework objects) that
            # only a full collection frees; once per crowd, not per client
            gc.collect()
            await trio.to_thread.run_sync(_malloc_trim)
            log.info("live.hub.memory_trimmed", clients=self.client_count,
                     rss_before_mb=before // 2**20, rss_after_mb=own_rss_bytes() // 2**20)

    async def _run_pynng(self, task_status: trio.TaskStatus[None]) -> None:
        import pynng

        # Dial without blocking: the publisher may come up later; nng keeps redialling.
        # A blocking recv in a worker thread, draining whatever else is queued, costs a thread
        # hop per batch; `await arecv()` costs ~100 µs per message under trio, which with many
        # subscribed squares (one message per square per flush) was the bottleneck.
        with pynng.Sub0(recv_buffer_size=PIPE_BUFFER, recv_timeout=RECV_POLL_MS) as sock:
            for address in self.addresses:
                sock.dial(address, block=False)
            self._socket = sock
            for topic in self.topics():
                sock.subscribe(topic_bytes(topic))
            log.info("live.hub.dialled", address=self.address)
            task_status.started()
            try:
                while True:
                    for message in await trio.to_thread.run_sync(_receive_batch, sock):
                        self.dispatch(message)
            finally:
                self._socket = None

    async def _run_nats(self, link: JetStreamLink, task_status: trio.TaskStatus[None]) -> None:
        async with link.subscribe(capacity=self.subscription_capacity) as live:
            self._live = live
            log.info("live.hub.nats", prefix=self.address)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._follow_wanted, live)
                    task_status.started()
                    dropped = 0
                    async for message in live:
                        self.dispatch_batch(message.subject, message.data)
                        if live.dropped != dropped:
                            # the subscription's channel was full: trio fell behind NATS
                            LIVE_DROPPED.labels(stage="hub").inc(live.dropped - dropped)
                            dropped = live.dropped
            finally:
                self._live = None
                HUB_SUBJECTS.set(0)

    async def _follow_wanted(
        self, live: LiveSubscription,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bring the link's subjects to the wanted set, each time it changes."""
        from soar.broker.errors import BrokerError

        started = False
        while True:
            self._wanted_changed = trio.Event()
            target = self._wanted_generation
            wanted = self.topics()
            try:
                for subject in sorted(live.subjects - wanted):
                    await live.remove(subject)
                for subject in sorted(wanted - live.subjects):
                    await live.add(subject)
            except BrokerError as exc:
                log.warning("live.hub.subscribe_failed", error=str(exc))
                await trio.sleep(SUBSCRIBE_RETRY_S)
                continue
            finally:
                HUB_SUBJECTS.set(len(live.subjects))
            self._applied_generation = target
            self._applied.set()
            self._applied = trio.Event()
            if not started:
                task_status.started()
                started = True
            if self._wanted_generation == target:
                await self._wanted_changed.wait()


RECV_POLL_MS = 200
RECV_BATCH = 2000
#: Departed clients after which the hub hands freed memory back to the system, once the
#: departures have paused for TRIM_SETTLE_S.
TRIM_AFTER_DEPARTURES = 100
TRIM_SETTLE_S = 5.0


def _malloc_trim() -> None:
    """glibc's malloc_trim(0): return free heap pages to the system. No-op without glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)


def own_rss_bytes() -> int:
    """This process's resident set size (Linux: /proc/self/statm); 0 where unknown."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
#: After NATS refused a subscription change, try again this much later.
SUBSCRIBE_RETRY_S = 1.0


def _receive_batch(sock: Any) -> list[bytes]:
    """In a worker thread: the next message (waiting at most RECV_POLL_MS, so the task stays
    cancellable) and everything already queued behind it."""
    import pynng

    try:
        messages = [sock.recv()]
    except pynng.Timeout:
        return []
    while len(messages) < RECV_BATCH:
        try:
            messages.append(sock.recv(block=False))
        except pynng.TryAgain:
            break
    return messages


# -- the WebSocket protocol ------------------------------------------------------------------


def handle_client_message(hub: LiveHub, client: LiveClient, text: str | bytes) -> dict[str, Any]:
    """Apply one client message; returns the acknowledgement (or an error) to send back."""
    request = parse_client_message(text)
    try:
        match request:
            case Rejection():
                WS_BAD_MESSAGES.labels(reason=request.reason).inc()
                return request.reply()
            case SetOptions(batch=batch):
                client.batch = batch
            case AreaRequest(subscribe=True, squares=squares):
                hub.subscribe_squares(client, squares)
            case AreaRequest(squares=squares):
                hub.unsubscribe_squares(client, squares)
            case AircraftRequest(subscribe=True, ident=ident):
                hub.subscribe_aircraft(client, ident)
            case AircraftRequest(ident=ident):
                hub.unsubscribe_aircraft(client, ident)
    except BadRequest as exc:  # over a per-client cap
        WS_BAD_MESSAGES.labels(reason="bad_request").inc()
        return Rejection("bad_request", str(exc)).reply()
    return acknowledgement(request, len(client.squares))


def connection_status(hub: LiveHub | None, client: LiveClient | None) -> dict[str, Any]:
    return {
        "type": "connection_status",
        "status": "connected" if hub is not None else "live_unavailable",
        "client": None if client is None else client.ident,
        "max_squares": MAX_SQUARES_PER_CLIENT,
        "queue_size": None if hub is None else hub.client_queue_size,
    }


#: fixes per batched WebSocket message at the most
BATCH_MAX = 500
#: seconds between two batched messages to one client at the least (a map redraws a few
#: times a second; the client's queue holds what comes meanwhile)
BATCH_INTERVAL = 0.25


Send = Callable[[str], Awaitable[None]]
Receive = Callable[[], Awaitable[str | bytes]]


def live_blueprint(get_hub: Callable[[], LiveHub | None]) -> Blueprint:
    """The `/api/live` WebSocket route; `get_hub` is read per connection (the hub may start late).

    A new connection whose first request is `/api/live` never reaches it: the front door hands
    those to `serve_live_socket`. This route serves the rest (an upgrade on a connection that
    asked something else first)."""
    bp = Blueprint("live", __name__)

    @bp.websocket("/api/live")
    async def live() -> None:
        hub = get_hub()
        await websocket.accept()
        if hub is None:
            await websocket.send(json.dumps(connection_status(None, None)))
            await websocket.close(1011, "live fixes are not available")
            return
        await run_live_client(hub, websocket.send, websocket.receive)

    return bp


#: How long a client handed to `serve_live_socket` may take to send its WebSocket handshake.
HANDSHAKE_S = 10.0


async def serve_live_socket(
    get_hub: Callable[[], LiveHub | None], stream: trio.abc.Stream, leaving: trio.Event
) -> None:
    """One `/api/live` connection on trio-websocket, straight from the front door.

    Why not hypercorn and quart: each of their WebSocket connections took ~57 KB of small
    objects (five tasks, ~42 coroutine frames, the ASGI and framework state); trio-websocket's
    takes about a third of that. With a thousand map clients that is memory, and CPU, the
    process does not spend, and less for the allocator to leave scattered when they go.
    `leaving` set: the server is shutting down; the client is told (1001) and let go.
    """
    async with trio.open_nursery() as nursery:
        with trio.move_on_after(HANDSHAKE_S) as handshake:
            try:
                request = await trio_websocket.wrap_server_stream(nursery, stream)
            except (trio_websocket.HandshakeError, trio.BrokenResourceError,
                    trio.ClosedResourceError, OSError):
                request = None
        if handshake.cancelled_caught or request is None:
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()
            return
        if request.path.split("?", 1)[0] != "/api/live":
            await request.reject(404, body=b"not found\n")
            nursery.cancel_scope.cancel()
            return
        ws = await request.accept()
        try:
            hub = get_hub()
            if hub is None:
                await ws.send_message(json.dumps(connection_status(None, None)))
                await ws.aclose(1011, "live fixes are not available")
                return

            async def goodbye_when_leaving() -> None:
                await leaving.wait()
                with trio.move_on_after(1.0):
                    await ws.aclose(1001, "server shutting down")
                client_scope.cancel()

            with trio.CancelScope() as client_scope:
                nursery.start_soon(goodbye_when_leaving)
                await run_live_client(hub, ws.send_message, ws.get_message)
        except* (trio_websocket.ConnectionClosed, trio.BrokenResourceError,
                 trio.ClosedResourceError):
            pass  # the client left: nothing more to say to it
        finally:
            with trio.move_on_after(1.0):
                await ws.aclose()
            nursery.cancel_scope.cancel()


async def run_live_client(hub: LiveHub, send: Send, receive: Receive) -> None:
    """A connected `/api/live` client, whatever carries it: status, then its messages in and
    its queue out, until it leaves."""
    client = hub.connect()
    log.debug("live.client.connected", client=client.ident)
    try:
        await send(json.dumps(connection_status(hub, client)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_queued, client, send)
            while True:
                await client.queue.control_room()
                text = await receive()
                reply = handle_client_message(hub, client, text)
                if reply["type"] == "subscribed":
                    # "subscribed" promises the fixes from now on: over NATS that is
                    # once the server has the subscription.
                    await hub.wait_subscribed()
                client.queue.put_control(json.dumps(reply))
    finally:
        hub.disconnect(client)
        log.debug("live.client.disconnected", client=client.ident, dropped=client.queue.dropped)


async def _send_queued(client: LiveClient, send: Send) -> None:
    queue = client.queue
    while True:
        text, is_fix = await queue.get()
        if not is_fix:
            await send(text)
            continue
        # Batching: the fix just taken and every fix queued behind it, in one message.
        texts = [text, *queue.take_fixes(BATCH_MAX - 1)] if client.batch else [text]
        try:
            if client.batch:
                await send('{"type":"fixes","fixes":[' + ",".join(texts) + "]}")
            else:
                await send(text)
        except BaseException:
            # the client left (or its connection broke) with these taken but not sent
            queue.discard(len(texts))
            raise
        WS_SENT.inc(len(texts))
        if client.batch:
            # A batching client gets at most one batch per BATCH_INTERVAL: a send costs the
            # same for one fix as for fifty, and a thousand maps woken on every publisher
            # flush (20 a second) took more than a core between them.
            await trio.sleep(BATCH_INTERVAL)
