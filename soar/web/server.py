"""The HTTP server of every role: the listening socket bound at start-up, and hypercorn on it.

`listen_socket` binds before anything else starts, so an address in use is one line naming the
setting to change; `serve_web` runs hypercorn's HTTP connections with the quart-trio app on it.

`serve_web` is hypercorn's trio worker (`hypercorn.trio.run.worker_serve`) cut to what soar uses
(one plain-TCP listener) with two differences. Connections are accepted by the front door
(`soar.web.door`), a thread that answers health, readiness and metrics itself, however busy the
loop is, and hands the rest over: a new connection asking for `/api/live` to trio-websocket
(`live.serve_live_socket`, a third of hypercorn's memory per client), everything else to
hypercorn. In `soar run`, every connection the door hands over goes to the web worker, a child
process that serves it with `serve_arrivals` too, while it is up (`soar.web.worker`). Every
connection handed over goes through
`connections.guard` before hypercorn's `TCPServer` sees it: hypercorn has no hook at the
connection level, and the connection is the unit that costs a descriptor: ASGI sees requests,
not the thousands of connections that never send one.

May import: soar.config, soar.web.app, soar.web.connections, soar.web.door, soar.web.live,
soar.web.worker_metrics
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event, Updated
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app
from quart_trio import QuartTrio

from soar.config import ConfigError, Settings, env_name, split_host_port
from soar.web.app import WebContext, create_app, take_snapshot
from soar.web.connections import (
    CONNECTION_LIMIT,
    ConnectionLimit,
    default_max_connections,
    guard,
)
from soar.web.door import Arrival, FrontDoor, HandedOver, HeadKind, publish_snapshots, run_door
from soar.web.live import LiveHub, serve_live_socket
from soar.web.worker_metrics import exposition

log = structlog.get_logger(__name__)

#: Connections the kernel completes before soar accepts them. hypercorn's 100 overflows in a
#: burst of clients: the kernel then drops handshakes it has half done, and a client that sent
#: nothing yet believes itself connected while soar never sees it (capped by net.core.somaxconn).
LISTEN_BACKLOG = 1024


def listen_socket(settings: Settings, key: str) -> socket.socket:
    """A socket listening on the address of setting `key` (`http_addr`, `metrics_addr`).

    Bound at start-up, before the database or the pipeline, and handed to hypercorn later:
    an address in use (another soar?) is a ConfigError naming the setting, not a traceback
    after the whole process has started.
    """
    addr = getattr(settings, key)
    host, port = split_host_port(addr, key)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        # as hypercorn does: a restart does not wait for the old connections' TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)  # listening now holds the port against others
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{key}: {addr} is already in use (another soar running?); "
                f"set {env_name(key)} to a free host:port"
            ) from None
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"{key}: cannot listen on {addr}: {reason}; set {env_name(key)} to a local host:port"
        ) from None
    return sock


def hypercorn_config(settings: Settings) -> HypercornConfig:
    """hypercorn's settings for soar's HTTP connections (here and in the web worker)."""
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 5.0
    config.backlog = LISTEN_BACKLOG
    # An idle keep-alive connection costs a descriptor: close it after a while (a held one
    # each from thousands of clients exhausted the process's descriptors).
    config.keep_alive_timeout = settings.http_keep_alive
    return config


async def serve_web(
    settings: Settings,
    ctx: WebContext,
    stop: trio.Event,
    *,
    bind: str | None = None,
    sock: socket.socket | None = None,
    api: bool = True,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """HTTP on `sock` (from `listen_socket`), else on `bind` (default `http_addr`) until `stop`
    is set; `api=False`: health and metrics only (see `create_app`)."""
    config = hypercorn_config(settings)
    ctx.api_token = settings.api_token
    ctx.extras.setdefault("settings", settings)  # the map page's freshness settings
    limit = ConnectionLimit(settings.http_max_connections or default_max_connections())
    CONNECTION_LIMIT.set(limit.limit)
    app = create_app(ctx, api=api, max_requests=settings.http_max_requests)
    if sock is not None:
        own = sock.dup()  # the caller's socket object stays the caller's to close
    else:
        config.bind = [bind or settings.http_addr]
        [own] = config.create_sockets().insecure_sockets
        own.listen(config.backlog)
    with own:
        await _serve(app, ctx, settings, config, own, limit, stop, task_status, live=api)


async def serve_when_ready(
    settings: Settings,
    ctx: WebContext,
    stop: trio.Event,
    done: trio.Event,
    *,
    sock: socket.socket,
    ready: Sequence[trio.Event],
) -> None:
    """The web server as a task of a role's topology (`soar run`, `soar web`): once every event
    of `ready` is set (the live hub and the aircraft directory: the clients' messages need
    them), `serve_web` on `sock` until `stop`; `done` is set however it ends, for
    `await_web_or_leave`."""
    for event in ready:
        await event.wait()
    try:
        await serve_web(settings, ctx, stop, sock=sock)
    finally:
        done.set()


class _Connection(TCPServer):
    """hypercorn's HTTP/1 connection, let go of as soon as the client has gone.

    hypercorn keeps a connection's idle timer running after the client closed its end, so a
    connection that ended without a request (a port scan, a TCP health check, a client that gave
    up) held its descriptor for the whole keep-alive time: 30 s of every such connection.
    """

    _client_gone = False

    async def _read_data(self) -> None:
        await super()._read_data()
        self._client_gone = True  # EOF or a failed read: nothing more will come in
        await self.idle_task.stop()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated) and event.idle and self._client_gone:
            return  # a response just finished; no next request can come, so no idle wait
        await super().protocol_send(event)


async def _serve(
    app: QuartTrio,
    ctx: WebContext,
    settings: Settings,
    config: HypercornConfig,
    sock: socket.socket,
    limit: ConnectionLimit,
    stop: trio.Event,
    task_status: trio.TaskStatus[list[str]],
    *,
    live: bool,
) -> None:
    """`hypercorn.trio.run.worker_serve` for one plain listener behind the front door, each
    connection handed over guarded; `live`: `/api/live` connections to trio-websocket. With a
    web worker (`ctx.web_worker`, `soar run`), the door hands connections to it while it is
    up, and to this process while it is not."""
    listener = HandedOver()
    worker = ctx.web_worker

    def hand_over(conn: socket.socket, kind: HeadKind) -> None:
        # in the door's thread
        if worker is not None and worker.take(conn, kind):
            return
        listener.hand_over(conn, kind)

    door = FrontDoor(sock.dup(), hand_over, token=ctx.api_token,
                     stall_after=settings.health_stall_after,
                     metrics=partial(exposition, worker))
    door.publish(take_snapshot(ctx))  # the first probe finds an answer ready
    bound = f"http://{repr_socket_addr(sock.family, sock.getsockname())}"

    async def open_door(accepting: trio.Nursery) -> None:
        await accepting.start(run_door, door)
        accepting.start_soon(publish_snapshots, door, partial(take_snapshot, ctx))
        log.info("http.listening", address=bound, max_connections=limit.limit)

    await serve_arrivals(app, config, listener, limit, stop, get_hub=lambda: ctx.live,
                         live=live, open_door=open_door,
                         task_status=partial(task_status.started, [bound]))


async def serve_arrivals(
    app: QuartTrio,
    config: HypercornConfig,
    listener: trio.abc.Listener[Arrival],
    limit: ConnectionLimit,
    stop: trio.Event,
    *,
    get_hub: Callable[[], LiveHub | None],
    live: bool = True,
    open_door: Callable[[trio.Nursery], Awaitable[None]] | None = None,
    task_status: Callable[[], None] | None = None,
) -> None:
    """Serve every connection `listener` yields, guarded by `limit`, until `stop`: a new
    `/api/live` (with `live`) on trio-websocket, the rest on hypercorn with `app`. The front
    door (`open_door`, in this process) or the parent that hands connections over (the web
    worker) is the listener's source. `task_status()` once serving."""
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, object] = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            state = ConnectionState(lifespan_state.copy())
            http = partial(_Connection, asgi, config, context, state)
            leaving = trio.Event()  # set at stop: live clients are told the server is going
            live_socket = partial(serve_live_socket, get_hub, leaving=leaving)

            async def handler(arrival: Arrival) -> None:
                to_live = live and arrival.kind is HeadKind.LIVE
                await guard(limit, live_socket if to_live else http, arrival.stream)

            try:
                async with trio.open_nursery() as accepting:
                    if open_door is not None:
                        await open_door(accepting)
                    accepting.start_soon(partial(
                        trio.serve_listeners, handler, [listener], handler_nursery=connections
                    ))
                    if task_status is not None:
                        task_status()
                    await stop.wait()
                    leaving.set()
                    accepting.cancel_scope.cancel()
            finally:
                await listener.aclose()
                # idle connections close now, busy ones get graceful_timeout to finish
                await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


#: after the data path has drained, how long the web server may take to close its connections
WEB_GRACE_S = 5.0


async def await_web_or_leave(
    web_done: trio.Event, exit_code: int, leave: Callable[[], Awaitable[None]]
) -> None:
    """Wait up to WEB_GRACE_S for the web server to end (`web_done`); if it does not, run
    `leave` (stop what the role started) and end the process with `exit_code`.

    hypercorn shields its socket writes from cancellation, so a WebSocket client that stopped
    reading holds its connection task for ever and the role's nursery could never close. The
    caller has committed everything by now.
    """
    with trio.move_on_after(WEB_GRACE_S):
        await web_done.wait()
    if web_done.is_set():
        return
    log.error("shutdown.web_stuck", hint="a WebSocket client stopped reading", grace_s=WEB_GRACE_S)
    await leave()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
