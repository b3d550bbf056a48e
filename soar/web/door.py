"""The HTTP server's front door: a thread that accepts every connection, answers health,
readiness and metrics itself, and hands everything else to the event loop untouched.

Why a thread: with a crowd of WebSocket clients every pass of trio's loop runs hundreds of
tasks, and a request served by hypercorn needs several passes (accept, read, the app, write).
Beside 1,000 WebSocket clients `/healthz` took 2.6 s at the median and 15 s at worst, and an
orchestrator restarts a process whose liveness probe times out: the busiest moment of the day
would end in a restart. This thread waits on epoll, not on the loop; it needs the GIL only for
the few hundred microseconds an answer takes (Python hands it over every 5 ms at most).

What it does with a connection: accept, then peek (MSG_PEEK: nothing is consumed) at what the
client sent. A request line `GET|HEAD /healthz|/readyz|/metrics` is parsed with h11, answered,
and closed (`Connection: close`: a prober opens a connection per probe anyway). Anything else,
and a client that says nothing within `PEEK_S`, goes to the loop as accepted, its bytes still
unread, where the connection limit and hypercorn see it as before; keep-alive requests after an
API request on the same connection are the loop's too.

What it answers from: `/healthz` and `/readyz` from the `HealthSnapshot` a task of the loop
publishes every `REFRESH_S` (the supervision tree is the loop's to read; this thread only takes
the latest bytes). A snapshot older than `stall_after` means the loop itself is stuck, so
`/healthz` says so with a 503: the one failure a liveness probe exists to catch, which an
answer from the loop could never report. `/metrics` is prometheus-client's registry, which is
made to be read from a thread (its own exposition server does).

May import: soar.log, soar.web.connections
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import math
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial

import h11
import orjson
import prometheus_client
import structlog
import trio
from prometheus_client import Counter, Gauge

from soar.log import RateLimited
from soar.web.connections import ACCEPT_ERRORS

log = structlog.get_logger(__name__)

DOOR = Counter(
    "soar_http_door_connections_total",
    "Connections by what the front door did with them: answered health/readiness/metrics "
    "itself, handed to the event loop, closed (client left without a request), or failed",
    ["outcome"],
)
LOOP_LAG = Gauge(
    "soar_event_loop_lag_seconds",
    "How late the event loop ran the health snapshot's timer the last time (seconds): how long "
    "a ready task waits for its turn",
)

#: How often the loop publishes a new HealthSnapshot.
REFRESH_S = 0.25
#: How long a new connection may take to send the start of its request before it is handed to
#: the loop unread (its own timeouts and the connection limit take over from there).
PEEK_S = 1.0
#: Connections waiting for their first bytes at once; past it the oldest is handed on unread.
MAX_PEEKING = 1024
#: Bytes looked at before deciding: a request head to /healthz is well under this; a longer one
#: goes to hypercorn, whose answer to it (431) is the right one.
HEAD_MAX = 8192
#: How long an answer may take to be sent, and the client to close after it.
WRITE_S = 5.0
LINGER_S = 1.0
#: After EMFILE on accept: how long to wait before trying again (as trio's listener does).
ACCEPT_RETRY_S = 0.1
ACCEPT_BATCH = 64

PATHS = (b"/healthz", b"/readyz", b"/metrics")
_LIVE = b"GET /api/live"
_PREFIXES = tuple(method + b" " + path for method in (b"GET", b"HEAD") for path in PATHS)
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_JSON = b"application/json"


@dataclass(frozen=True)
class HealthSnapshot:
    """What `/healthz` and `/readyz` answer, as the loop saw it at `taken` (time.monotonic)."""

    taken: float
    healthz: bytes  # for anyone: states, no error texts
    healthz_trusted: bytes  # for this host or a caller with the token: error texts too
    readyz: bytes
    ready: bool


class HeadKind(Enum):
    WAIT = "wait"  # could still be a request the door answers: peek again when more comes
    LIVE = "live"  # the live WebSocket (`GET /api/live`): for the loop's WebSocket server
    OTHER = "other"  # for the loop's HTTP server


def classify(data: bytes) -> HeadKind | int:
    """What the first bytes of a connection are: the length of a complete request head the door
    answers, `WAIT` for more bytes, `LIVE` or `OTHER` (the loop's)."""
    if len(data) <= len(_LIVE):
        if _LIVE.startswith(data):
            return HeadKind.WAIT
    elif data.startswith(_LIVE) and data[len(_LIVE):len(_LIVE) + 1] in (b" ", b"?"):
        return HeadKind.LIVE
    for prefix in _PREFIXES:
        if len(data) <= len(prefix):
            if prefix.startswith(data):
                return HeadKind.WAIT
        elif data.startswith(prefix) and data[len(prefix):len(prefix) + 1] in (b" ", b"?"):
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                return end + 4
            return HeadKind.WAIT if len(data) < HEAD_MAX else HeadKind.OTHER
    return HeadKind.OTHER


#: A request head begun but not complete is looked at again after this long. Its bytes stay in
#: the socket (peeked, not read), so the socket stays readable: selecting on it again would spin.
REPEEK_S = 0.01


class _Conn:
    __slots__ = ("deadline", "lingering", "out", "repeek_at", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.out = b""
        self.lingering = False
        self.repeek_at: float | None = None  # set while out of the selector, waiting for more


class FrontDoor:
    """The accept loop of one listening socket, run in a thread (`run`) until `stop`.

    `hand_over(sock, kind)` is called, in this thread, with every connection the loop must
    serve: `LIVE` for its WebSocket server, `OTHER` for hypercorn.
    `publish` (from the loop) sets the snapshot health and readiness are answered from.
    `metrics()` gives the body of /metrics (default: this process's registry).
    """

    def __init__(
        self,
        listener: socket.socket,
        hand_over: Callable[[socket.socket, HeadKind], None],
        *,
        token: str | None = None,
        stall_after: float = 30.0,
        metrics: Callable[[], bytes] | None = None,
        peek_s: float = PEEK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listener = listener
        self._hand_over = hand_over
        self._token = token
        self.stall_after = stall_after
        self._metrics = metrics or partial(prometheus_client.generate_latest,
                                           prometheus_client.REGISTRY)
        self._peek_s = peek_s
        self._clock = clock
        self._snapshot: HealthSnapshot | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopped = False
        self._ran = False
        self._conns: dict[socket.socket, _Conn] = {}
        self._accept_paused_until: float | None = None
        self._errors = RateLimited(log)

    # -- called from the loop ---------------------------------------------------------------

    def publish(self, snapshot: HealthSnapshot) -> None:
        self._snapshot = snapshot  # one reference, replaced whole: nothing to lock

    def stop(self) -> None:
        """Make `run` return (from any thread; idempotent)."""
        if not self._stopped:
            self._stopped = True
            with contextlib.suppress(OSError):  # closed: run has returned already
                self._wake_w.send(b"x")

    # -- the thread -------------------------------------------------------------------------

    def discard(self) -> None:
        """Close what `run` would have closed, if it never ran (cancelled before it started)."""
        if not self._ran:
            self._ran = True
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()

    def run(self, on_running: Callable[[], object] | None = None) -> None:
        """Accept and answer until `stop`; `on_running()` once the listener is being watched."""
        if self._ran:
            return
        self._ran = True
        self._listener.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._selector = selector
        if on_running is not None:
            on_running()
        try:
            while not self._stopped:
                for key, events in selector.select(self._timeout()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        break
                    else:
                        conn = self._conns.get(key.fileobj)  # type: ignore[call-overload]
                        if conn is not None:
                            self._guarded(conn, self._ready, conn, events)
                self._expire()
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            selector.close()
            self._wake_r.close()
            self._wake_w.close()
            self._listener.close()

    def _timeout(self) -> float | None:
        deadlines = [conn.deadline if conn.repeek_at is None else conn.repeek_at
                     for conn in self._conns.values()]
        if self._accept_paused_until is not None:
            deadlines.append(self._accept_paused_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - self._clock())

    def _expire(self) -> None:
        now = self._clock()
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            self._selector.register(self._listener, selectors.EVENT_READ, None)
        for conn in [c for c in self._conns.values() if c.repeek_at is not None
                     and c.repeek_at <= now and c.deadline > now]:
            conn.repeek_at = None
            self._selector.register(conn.sock, selectors.EVENT_READ, None)
            self._guarded(conn, self._peek, conn)
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            if conn.out or conn.lingering:
                self._close(conn)  # a client that does not read its answer, or does not close
            else:
                self._pass_on(conn)  # silent so far: the loop's timeouts apply from here

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._out_of_descriptors(exc)
                return  # ECONNABORTED and the like: that client is gone, the next may come
            sock.setblocking(False)
            if len(self._conns) >= MAX_PEEKING:
                oldest = next((c for c in self._conns.values() if not (c.out or c.lingering)),
                              None)
                if oldest is not None:
                    self._pass_on(oldest)
            conn = _Conn(sock, self._clock() + self._peek_s)
            self._conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, None)
            self._guarded(conn, self._peek, conn)  # on loopback the request is there already

    def _guarded(self, conn: _Conn, step: Callable[..., None], *args: object) -> None:
        """One step of one connection: whatever goes wrong with it (a bug included) closes that
        connection, counted and logged, and the door goes on with the others."""
        try:
            step(*args)
        except Exception as exc:
            kind = type(exc).__name__
            self._errors.log(("failed", kind), "error", "http.door_failed", error=kind,
                             detail=str(exc)[:200])
            if conn.sock in self._conns:  # not yet handed over: still the door's to close
                with contextlib.suppress(Exception):
                    self._close(conn, "failed")

    def _out_of_descriptors(self, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, "other")
        ACCEPT_ERRORS.labels(errno=name).inc()
        self._errors.log(name, "error", "http.accept_failed", errno=name,
                         retry_s=ACCEPT_RETRY_S, open_here=len(self._conns))
        # stop selecting on the listener (it stays readable) until the retry time
        self._selector.unregister(self._listener)
        self._accept_paused_until = self._clock() + ACCEPT_RETRY_S

    def _ready(self, conn: _Conn, events: int) -> None:
        if conn.lingering:
            self._drain(conn)
        elif conn.out:
            if events & selectors.EVENT_WRITE:
                self._write(conn)
        else:
            self._peek(conn)

    def _peek(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(HEAD_MAX, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn, "closed")
            return
        if not data:
            self._close(conn, "closed")  # connected, then left without a request
            return
        head = classify(data)
        if head is HeadKind.OTHER or head is HeadKind.LIVE:
            self._pass_on(conn, head)
        elif isinstance(head, int):
            self._answer(conn, data[:head])
        else:  # begun, not complete: look again shortly rather than spin on a readable socket
            self._selector.unregister(conn.sock)
            conn.repeek_at = self._clock() + REPEEK_S

    def _pass_on(self, conn: _Conn, kind: HeadKind = HeadKind.OTHER) -> None:
        self._forget(conn)
        DOOR.labels(outcome="handed_over").inc()
        self._hand_over(conn.sock, kind)

    def _answer(self, conn: _Conn, head: bytes) -> None:
        http = h11.Connection(h11.SERVER)
        http.receive_data(head)
        try:
            request = http.next_event()
            end = http.next_event()
        except h11.RemoteProtocolError:
            self._pass_on(conn)  # hypercorn answers what is wrong with it
            return
        if not isinstance(request, h11.Request) or not isinstance(end, h11.EndOfMessage):
            self._pass_on(conn)  # a body, or something h11 wants more of: not a probe
            return
        try:
            conn.sock.recv(len(head))  # consume the head: only then is a close a clean FIN
        except OSError:
            self._close(conn, "closed")
            return
        path = request.target.split(b"?", 1)[0]
        status, content_type, body, extra = self._respond(path, request, conn.sock)
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"), (b"connection", b"close"), *extra]
        out = http.send(h11.Response(status_code=status, headers=headers)) or b""
        if request.method != b"HEAD":
            out += http.send(h11.Data(data=body)) or b""
        out += http.send(h11.EndOfMessage()) or b""
        DOOR.labels(outcome=path.decode().strip("/")).inc()
        conn.out = out
        conn.deadline = self._clock() + WRITE_S
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, None)
        self._write(conn)

    def _respond(
        self, path: bytes, request: h11.Request, sock: socket.socket
    ) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        token_ok = self._token_given(request)
        if path == b"/metrics":
            if self._token and not token_ok:
                return (401, b"text/plain; charset=utf-8", TOKEN_REQUIRED.encode(),
                        [(b"www-authenticate", TOKEN_CHALLENGE.encode())])
            body = self._metrics()
            return 200, prometheus_client.CONTENT_TYPE_LATEST.encode(), body, []
        snapshot = self._snapshot
        silent = math.inf if snapshot is None else self._clock() - snapshot.taken
        if snapshot is None or silent > self.stall_after:
            state = "starting" if snapshot is None else "stalled"
            if path == b"/readyz":
                body = orjson.dumps({"ready": False, "checks": {"event_loop": False}})
            else:
                body = orjson.dumps({"status": state, "loop_silent_s": (
                    None if snapshot is None else round(silent, 1))})
            return 503, _JSON, body, []
        if path == b"/readyz":
            return (200 if snapshot.ready else 503), _JSON, snapshot.readyz, []
        trusted = token_ok or _peer_is_loopback(sock)
        return 200, _JSON, (snapshot.healthz_trusted if trusted else snapshot.healthz), []

    def _token_given(self, request: h11.Request) -> bool:
        if not self._token:
            return False
        for name, value in request.headers:
            if name == b"authorization":
                return bearer_matches(value.decode("latin-1"), self._token)
        return False

    def _write(self, conn: _Conn) -> None:
        try:
            while conn.out:
                sent = conn.sock.send(conn.out)
                conn.out = conn.out[sent:]
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        # answered: tell the client we are done and wait (briefly) for its close, so that ours
        # is a FIN after it has read everything, not a reset that could discard the answer
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.lingering = True
        conn.deadline = self._clock() + LINGER_S
        self._selector.modify(conn.sock, selectors.EVENT_READ, None)

    def _drain(self, conn: _Conn) -> None:
        try:
            while conn.sock.recv(65536):
                pass
        except BlockingIOError:
            return
        except OSError:
            pass
        self._close(conn)

    def _forget(self, conn: _Conn) -> None:
        del self._conns[conn.sock]
        if conn.repeek_at is None:
            self._selector.unregister(conn.sock)
        conn.repeek_at = None

    def _close(self, conn: _Conn, outcome: str | None = None) -> None:
        if conn.sock in self._conns:
            self._forget(conn)
        if outcome is not None:
            DOOR.labels(outcome=outcome).inc()
        conn.sock.close()


def _peer_is_loopback(sock: socket.socket) -> bool:
    try:
        return is_loopback(str(sock.getpeername()[0]))
    except (OSError, IndexError):
        return False


# ---- who may see what: the door and the app's routes decide alike ------------------------

#: /metrics without the token when SOAR_API_TOKEN is set: 401, this body, this challenge
TOKEN_REQUIRED = "a bearer token is required (SOAR_API_TOKEN)\n"
TOKEN_CHALLENGE = 'Bearer realm="soar"'


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an `Authorization` header value is `Bearer <token>` (compared in constant time)."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def is_loopback(host: str) -> bool:
    """Whether a peer address (IPv4, IPv6, with or without a zone) is this host's loopback."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


# ---- the loop's side -----------------------------------------------------------------------


@dataclass
class Arrival(trio.abc.AsyncResource):
    """A connection the door passed on, and what its first request asked for."""

    kind: HeadKind
    stream: trio.SocketStream

    async def aclose(self) -> None:
        await self.stream.aclose()


class HandedOver(trio.abc.Listener[Arrival]):
    """The connections the door passes on, each with what it asked for, as a trio listener for
    `trio.serve_listeners`."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[HeadKind, socket.socket]](
            math.inf)
        self._token = trio.lowlevel.current_trio_token()

    def hand_over(self, sock: socket.socket, kind: HeadKind) -> None:
        """From the door's thread: queue `sock` for `accept` without waiting for the loop."""
        try:
            self._token.run_sync_soon(self._deliver, sock, kind)
        except trio.RunFinishedError:
            sock.close()

    def _deliver(self, sock: socket.socket, kind: HeadKind) -> None:
        # runs in the loop, where an exception would be fatal: a closed listener closes `sock`
        try:
            self._send.send_nowait((kind, sock))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            sock.close()

    async def accept(self) -> Arrival:
        while True:
            kind, sock = await self._receive.receive()
            try:
                return Arrival(kind, trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
            except OSError:
                sock.close()  # gone between the door and here

    async def aclose(self) -> None:
        self._send.close()
        while True:
            try:
                self._receive.receive_nowait()[1].close()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break  # ClosedResourceError: closed already (serve_listeners closes it too)
        self._receive.close()
        await trio.lowlevel.checkpoint()


async def publish_snapshots(
    door: FrontDoor, take: Callable[[], HealthSnapshot], every: float = REFRESH_S
) -> None:
    """A task of the loop: give the door a fresh snapshot every `every` seconds, and measure
    how late the loop woke for it (`soar_event_loop_lag_seconds`)."""
    while True:
        door.publish(take())
        due = trio.current_time() + every
        await trio.sleep(every)
        LOOP_LAG.set(max(0.0, trio.current_time() - due))


async def run_door(
    door: FrontDoor, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run `door` in a thread of its own until cancelled (then it is stopped and waited for);
    started once the thread is accepting."""
    running = trio.Event()
    token = trio.lowlevel.current_trio_token()

    async def stop_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            door.stop()

    async def in_thread() -> None:
        # its own limiter: the door never waits for, nor holds, a slot of the API's threads
        await trio.to_thread.run_sync(
            partial(door.run, on_running=partial(token.run_sync_soon, running.set)),
            limiter=trio.CapacityLimiter(1))
        nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_when_cancelled)
            nursery.start_soon(in_thread)
            await running.wait()
            task_status.started()
    finally:
        door.discard()
