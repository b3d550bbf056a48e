"""The web worker process (`soar.web.worker` starts it; see there for what it is and why): the
web app, a live hub and the metrics thread, serving the connections the parent hands over until
SIGTERM, the parent's end closing, or its retirement.

May import: soar.config, soar.log, soar.web.app, soar.web.connections, soar.web.door,
soar.web.live, soar.web.server, soar.web.worker
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
import prometheus_client
import structlog
import trio

from soar.config import Settings
from soar.web.connections import Admission, ConnectionLimit
from soar.web.door import HandedOver, HeadKind
from soar.web.live import own_rss_bytes
from soar.web.worker import (
    DATABASE_ENV,
    GRACEFUL_S,
    KIND_OF_MESSAGE,
    RECYCLE_CHECK_S,
    RECYCLE_IDLE_S,
    SETTINGS_ENV,
    STOP_S,
    receive_exactly,
)

log = structlog.get_logger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soar web worker",
                                     description="soar run's web worker (started by soar run)")
    parser.add_argument("--handover-fd", type=int, required=True)
    parser.add_argument("--metrics-fd", type=int, required=True)
    parser.add_argument("--publisher", required=True)
    args = parser.parse_args(argv)
    from soar.config import load_settings
    from soar.log import configure_logging

    url = os.environ.pop(DATABASE_ENV, "")
    given = os.environ.pop(SETTINGS_ENV, "")
    if not url or not given:
        print(f"{parser.prog}: started by soar run only ({DATABASE_ENV}, {SETTINGS_ENV})",
              file=sys.stderr)
        return 2
    settings = load_settings(environ={}, overrides=json.loads(given))
    configure_logging(settings.log_format, settings.log_level)
    structlog.contextvars.bind_contextvars(process="web-worker")
    handover = socket.socket(fileno=args.handover_fd)
    metrics = socket.socket(fileno=args.metrics_fd)
    return trio.run(serve_worker, settings, url, args.publisher, handover, metrics)


@dataclass
class _ParentState:
    """What the parent last said of itself (b"T")."""

    tree: dict[str, Any]
    ready: bool
    feeds: dict[str, Any]


async def serve_worker(
    settings: Settings, database_url: str, publisher: str, handover: socket.socket,
    metrics: socket.socket,
) -> int:
    """The worker process: the web app and the live hub on the connections the parent hands
    over, the metrics thread, until SIGTERM, the parent's end closing, or retirement."""
    from soar.web.app import WebContext, create_app, open_api_pool
    from soar.web.connections import default_max_connections
    from soar.web.live import AircraftDirectory, LiveHub
    from soar.web.server import hypercorn_config, serve_arrivals

    parent = _ParentState({}, False, {})
    directory = AircraftDirectory()
    hub = LiveHub(publisher, directory=directory.get,
                  client_queue_size=settings.live_client_queue)
    pool = await trio.to_thread.run_sync(open_api_pool, database_url)
    ctx = WebContext(tree=lambda: parent.tree, ready_checks={"soar": lambda: parent.ready},
                     pool=pool, live=hub, api_token=settings.api_token,
                     extras={"settings": settings}, feeds=lambda: parent.feeds)
    app = create_app(ctx, max_requests=settings.http_max_requests)
    config = hypercorn_config(settings)
    config.graceful_timeout = GRACEFUL_S
    limit = _WatchedLimit(settings.http_max_connections or default_max_connections())
    listener = HandedOver()
    stop = trio.Event()
    retired = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_sigterm, stop)
            await nursery.start(hub.run)
            await nursery.start(directory.run, pool)
            metrics_done = trio.Event()
            nursery.start_soon(_serve_metrics, metrics, metrics_done)
            serving = trio.Event()
            nursery.start_soon(partial(serve_arrivals, app, config, listener, limit, stop,
                                       get_hub=lambda: hub, task_status=serving.set))
            await serving.wait()
            served, retired = await _receive_connections(
                handover, settings, limit, listener, parent, stop)
            if retired:
                # the parent reads our counts once more (they carry on in the next worker's)
                # once the last connection has gone, then closes the metrics socket
                await limit.settled(served)  # those that came as it retired, too
                handover.close()
                with trio.move_on_after(STOP_S):
                    await metrics_done.wait()
            # at info when it retires; at shutdown soar's own lines say it all
            (log.info if retired else log.debug)("web.worker.leaving", served=served,
                                                 retired=retired)
            stop.set()  # live clients are told goodbye (1001), requests get GRACEFUL_S
            with trio.move_on_after(GRACEFUL_S + 1):
                await limit.settled()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(pool.close)
        handover.close()
        metrics.close()
    return 0


class _WatchedLimit(ConnectionLimit):
    """The connection limit, counting what it admitted, and a way to wait for it to settle."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.admitted = 0
        self._changed = trio.Event()

    def _change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def admit(self) -> Admission:
        admission = super().admit()
        self.admitted += 1
        self._change()
        return admission

    def release(self, admission: Admission) -> None:
        super().release(admission)
        self._change()

    async def settled(self, handed: int = 0) -> None:
        """Until `handed` connections have been admitted (or refused) and none is open."""
        while self.admitted < handed or self.open or self.priority:
            await self._changed.wait()


async def _stop_on_sigterm(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _signal in signals:
            stop.set()
            return


async def _receive_connections(
    handover: socket.socket, settings: Settings, limit: ConnectionLimit, listener: HandedOver,
    parent: _ParentState, stop: trio.Event,
) -> tuple[int, bool]:
    """Hand each connection the parent passes to `listener`, and keep `parent` current, until
    `stop` (SIGTERM), the parent's end closes, or it answers our retirement (b"A"). Returns
    how many connections came, and whether the worker retired."""
    handover.setblocking(False)
    served = 0
    retired = False

    async def retire_after_crowds(baseline: int) -> None:
        idle_since: float | None = None
        while True:
            await trio.sleep(RECYCLE_CHECK_S)
            if limit.open or limit.priority or served < settings.web_worker_recycle_after:
                idle_since = None
                continue
            now = trio.current_time()
            idle_since = now if idle_since is None else idle_since
            rss = own_rss_bytes()
            if now - idle_since >= RECYCLE_IDLE_S and rss > baseline * (
                    1 + settings.web_worker_recycle_growth):
                log.info("web.worker.retiring", served=served, rss_mb=rss // 2**20,
                         baseline_mb=baseline // 2**20)
                await trio.socket.from_stdlib_socket(handover).send(b"D")
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(retire_after_crowds, own_rss_bytes())

        async def end_when_stopped() -> None:
            await stop.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(end_when_stopped)
        await trio.socket.from_stdlib_socket(handover).send(b"R")
        while True:
            await trio.lowlevel.wait_readable(handover)
            try:
                message, fds, _flags, _address = socket.recv_fds(handover, 2**18, 4)
            except BlockingIOError:
                continue
            except OSError:
                message, fds = b"", []
            for fd in fds:
                served += 1
                listener.hand_over(socket.socket(fileno=fd), KIND_OF_MESSAGE.get(message, HeadKind.OTHER))
            if not message:
                stop.set()  # the parent is gone
                break
            if message.startswith(b"T"):
                with contextlib.suppress(ValueError):
                    state = orjson.loads(message[1:])
                    parent.tree, parent.ready = state["tree"], bool(state["ready"])
                    parent.feeds = state["feeds"]
            elif message == b"A":
                retired = True
                break
        nursery.cancel_scope.cancel()
    return served, retired


async def _serve_metrics(sock: socket.socket, done: trio.Event) -> None:
    """Answer the parent's metrics requests from a thread (however busy this loop is) until
    cancelled or the parent closes its end; then set `done`."""
    wake_r, wake_w = socket.socketpair()

    def answer() -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            selector.register(wake_r, selectors.EVENT_READ)
            while True:
                for key, _events in selector.select():
                    if key.fileobj is wake_r:
                        return
                    try:
                        request = receive_exactly(sock, 5)
                    except OSError:
                        return  # the parent is gone
                    body = prometheus_client.generate_latest(prometheus_client.REGISTRY)
                    try:
                        sock.sendall(request[1:] + len(body).to_bytes(4, "big") + body)
                    except OSError:
                        return

    sock.setblocking(True)
    try:
        async with trio.open_nursery() as nursery:

            async def wake_when_cancelled() -> None:
                try:
                    await trio.sleep_forever()
                finally:
                    wake_w.send(b"x")

            nursery.start_soon(wake_when_cancelled)
            await trio.to_thread.run_sync(answer, limiter=trio.CapacityLimiter(1))
            nursery.cancel_scope.cancel()
    finally:
        done.set()
        wake_r.close()
        wake_w.close()
