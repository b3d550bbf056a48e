"""What the HTTP server admits, and connections that end when HTTP says they end.

- `ConnectionLimit`: at most `http_max_connections` open connections; past it a new one is
  answered `503` with `Retry-After` and closed at once (counted, logged once a minute). A few
  slots above the limit are kept for `PRIORITY_PATHS`: a connection in one of them is served only
  if its first request asks for one of those paths, and is closed after that answer.
- `prioritise`: requests other than `PRIORITY_PATHS` (and WebSockets) wait for one of
  `http_max_requests` slots, in arrival order; health, readiness and metrics never wait for one.
- `finish_responses`: the last message of a response is sent in full (below).

Connections end when HTTP says they end: quart-trio answers a request in one task and listens for the client's messages in another;
when hypercorn hands the final body to the socket it also tells the app the stream is over,
the listening task returns and cancels its sibling, the task that is still inside that last
`send`. The cancellation lands in hypercorn's close of the connection (`Connection: close`,
HTTP/1.0) or in the start of its keep-alive timer, so neither happens and the connection is
held until the client goes away — for ever, for a client that does not (measured: 3,000 such
clients took 3,000 descriptors, none released). Shielding the response's final message lets
hypercorn finish what HTTP asks of it: close, or start counting the idle keep-alive time.

May import: soar.log
"""

from __future__ import annotations

import contextvars
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import structlog
import trio
from prometheus_client import Counter, Gauge

from soar.log import RateLimited

log = structlog.get_logger(__name__)

ACCEPT_ERRORS = Counter(
    "soar_http_accept_errors_total",
    "Connections the HTTP listener could not accept (EMFILE: out of file descriptors)",
    ["errno"],
)

CONNECTIONS = Gauge("soar_http_connections", "Open HTTP connections, idle keep-alive ones included")
CONNECTION_LIMIT = Gauge(
    "soar_http_connection_limit", "http_max_connections in force (open connections past it get 503)"
)
REFUSED = Counter(
    "soar_http_connections_refused_total",
    "Connections answered 503 and closed because the process was at http_max_connections",
)
WAITING = Gauge(
    "soar_http_requests_waiting", "HTTP requests waiting for one of the http_max_requests slots"
)

#: Served ahead of everything else: never queued behind API requests, and answered even when the
#: process is at its connection limit. What an orchestrator and a scraper need most when the
#: process is overloaded; none of them touches the database or a worker thread.
PRIORITY_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

#: Descriptors `http_max_connections = 0` leaves for everything else: feed sockets, the database
#: pool, spool and archive files, the live hub, and the reserve below.
DESCRIPTOR_RESERVE = 256
#: Connections past the limit kept for PRIORITY_PATHS.
PRIORITY_SLOTS = 16
#: How long a connection in a priority slot may take to send its request line.
PRIORITY_READ_S = 5.0
#: How long a refused connection is read from after its 503, so that the request the client
#: has sent is consumed and the close is a FIN, not a reset that could discard the answer.
REFUSAL_LINGER_S = 1.0
#: Refused connections lingering at once; past it they are closed right after the 503.
MAX_LINGERING = 256
RETRY_AFTER_S = 5

_REFUSAL_BODY = b"too many connections; retry later\n"
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Retry-After: " + str(RETRY_AFTER_S).encode() + b"\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + _REFUSAL_BODY
)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _is_final(message: Message) -> bool:
    return message.get("type") == "http.response.body" and not message.get("more_body", False)


def finish_responses(app: AsgiApp) -> AsgiApp:
    """Wrap an ASGI app so that the last message of every HTTP response is sent in full."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return

        async def send_finishing(message: Message) -> None:
            if _is_final(message):
                # hypercorn already shields the socket write itself; what this adds is the
                # close or keep-alive bookkeeping that follows it in the same call.
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await app(scope, receive, send_finishing)

    return wrapped


# ---- the connection limit ----------------------------------------------------------------------


def default_max_connections(reserve: int = DESCRIPTOR_RESERVE) -> int:
    """`http_max_connections = 0`: the process's descriptor limit less `reserve`, so connections
    alone can never take the descriptors a feed reconnect or the database needs (at least 16)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft - reserve)


class Admission(Enum):
    SERVE = "serve"
    PRIORITY = "priority"  # past the limit: served only for PRIORITY_PATHS, then closed
    REFUSE = "refuse"


@dataclass
class ConnectionLimit:
    """Counts open connections and says what each new one gets. One per listening server."""

    limit: int
    priority_slots: int = PRIORITY_SLOTS
    open: int = 0
    priority: int = 0
    lingering: int = 0

    def admit(self) -> Admission:
        if self.open < self.limit:
            self.open += 1
            CONNECTIONS.inc()
            return Admission.SERVE
        if self.priority < self.priority_slots:
            self.priority += 1
            CONNECTIONS.inc()
            return Admission.PRIORITY
        return Admission.REFUSE

    def release(self, admission: Admission) -> None:
        if admission is Admission.SERVE:
            self.open -= 1
        elif admission is Admission.PRIORITY:
            self.priority -= 1
        else:
            return
        CONNECTIONS.dec()


#: Set for the tasks of a connection in a priority slot: its response closes the connection.
_PRIORITY_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "soar_priority_only", default=False
)

_refusals = RateLimited(log)

Handler = Callable[[Any], Awaitable[None]]


async def guard(limit: ConnectionLimit, serve: Handler, stream: trio.SocketStream) -> None:
    """The handler of every accepted connection: `serve(stream)` (hypercorn) within the limit,
    a priority slot or a 503 past it."""
    admission = limit.admit()
    try:
        if admission is Admission.REFUSE:
            await _refuse(limit, stream, "limit")
            return
        if admission is Admission.PRIORITY:
            head = await _request_line(stream)
            if head is None or _path(head) not in PRIORITY_PATHS:
                await _refuse(limit, stream, "limit")
                return
            _PRIORITY_ONLY.set(True)  # this task's context: hypercorn's tasks below inherit it
            await serve(_Replayed(stream, head))
            return
        await serve(stream)
    finally:
        limit.release(admission)


async def _request_line(stream: trio.SocketStream) -> bytes | None:
    """What the client sent up to the end of its request line; None if it sent none in time."""
    data = b""
    with trio.move_on_after(PRIORITY_READ_S):
        try:
            while b"\n" not in data and len(data) < 8192:
                chunk = await stream.receive_some(8192)
                if not chunk:
                    return None
                data += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return None
        return data
    return None


def _path(head: bytes) -> str:
    parts = head.split(b"\n", 1)[0].split()
    if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
        return ""
    return parts[1].split(b"?", 1)[0].decode("latin-1")


async def _refuse(limit: ConnectionLimit, stream: trio.SocketStream, reason: str) -> None:
    """503, Retry-After, close: the client learns at once, the descriptor is back within a
    second at most."""
    REFUSED.inc()
    _refusals.log("refused", "warning", "http.connections_refused", reason=reason,
                  limit=limit.limit, open=limit.open)
    linger = limit.lingering < MAX_LINGERING
    limit.lingering += linger
    try:
        with trio.move_on_after(REFUSAL_LINGER_S):
            await stream.send_all(REFUSAL)
            await stream.send_eof()
            while linger and await stream.receive_some(65536):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        limit.lingering -= linger
        await trio.aclose_forcefully(stream)


class _Replayed:
    """A connection whose first bytes were already read: they are handed out again first.

    Just what hypercorn's TCPServer uses of a trio.SocketStream (no `do_handshake`: not TLS)."""

    def __init__(self, stream: trio.SocketStream, head: bytes) -> None:
        self._stream = stream
        self._head = head
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._head:
            head, self._head = self._head, b""
            return head
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


# ---- requests: health first --------------------------------------------------------------------


def prioritise(app: AsgiApp, max_requests: int) -> AsgiApp:
    """Wrap an ASGI app: HTTP requests other than PRIORITY_PATHS take one of `max_requests`
    slots (waiting in arrival order), so a crowd of API clients queues here instead of filling
    the worker threads and the database pool that the writers share, and never delays health.
    WebSockets hold no slot (they live for hours; the live hub bounds them)."""
    slots = trio.Semaphore(max_requests)

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        if _PRIORITY_ONLY.get():
            await app(scope, receive, _closing(send))
            return
        if scope.get("path") in PRIORITY_PATHS:
            await app(scope, receive, send)
            return
        WAITING.inc()
        waiting = True
        try:
            async with slots:
                WAITING.dec()
                waiting = False
                await app(scope, receive, send)
        finally:
            if waiting:
                WAITING.dec()

    return wrapped


def _closing(send: Send) -> Send:
    """A priority slot answers one request: its response says `Connection: close`."""

    async def closing(message: Message) -> None:
        if message.get("type") == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing
