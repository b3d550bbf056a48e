"""The all-in-one process: the supervision tree in one place.

    run_all_in_one
    ├── database (embedded PostgreSQL or SOAR_DATABASE_URL; migrations applied first)
    ├── signals          SIGTERM/SIGINT -> orderly shutdown
    ├── web              hypercorn (trio worker) serving the quart-trio app
    └── pipeline         soar.pipeline.Pipeline: its own supervisors
        ├── sources      per protocol: feed clients -> envelopes (cancelled first on shutdown)
        └── core         decoders -> shard router -> shard owners -> store writer / live hub

Shutdown order: cancel the sources, let the core drain (every stage ends when its input closes,
the writer flushes last), stop the web server, stop the embedded PostgreSQL; all within
`shutdown_deadline` seconds.

The listening socket is bound before anything else starts: an address already in use is one
line naming the setting to change, with no database started and nothing to undo.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
from collections.abc import Callable

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from soar.config import ConfigError, Settings, env_name, split_host_port
from soar.database import Database, open_database
from soar.runtime import log_slow_gc_pauses, settle_runtime
from soar.web.app import WebContext, create_app
from soar.web.connections import count_accept_errors

log = structlog.get_logger(__name__)

#: after the pipeline has drained, how long the web server may take to close its connections
WEB_GRACE_S = 5.0


def migrate_command(settings: Settings) -> int:
    db = open_database(settings)  # applies the migrations
    db.stop()
    return 0


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
        sock.listen(HypercornConfig().backlog)  # listening now holds the port against others
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
    """hypercorn on `sock` (from `listen_socket`), else on `bind` (default `http_addr`) until
    `stop` is set; `api=False`: health and metrics only (see `create_app`)."""
    config = HypercornConfig()
    if sock is not None:
        # hypercorn adopts a descriptor (`fd://`) and closes it itself: give it its own copy,
        # so the caller's socket object stays the caller's to close
        config.bind = [f"fd://{os.dup(sock.fileno())}"]
    else:
        config.bind = [bind or settings.http_addr]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 5.0
    # An idle keep-alive connection costs a descriptor: close it after a while (a held one
    # each from thousands of clients exhausted the process's descriptors).
    config.keep_alive_timeout = settings.http_keep_alive
    count_accept_errors()
    ctx.api_token = settings.api_token
    app = create_app(ctx, api=api)
    await hypercorn_serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)


async def _watch_signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("shutdown.requested", signal=signal.Signals(signum).name)
            shutdown.set()


async def run_all_in_one(settings: Settings, shutdown: trio.Event | None = None) -> int:
    """Run everything until SIGTERM/SIGINT (or `shutdown` is set); return the exit code."""
    with listen_socket(settings, "http_addr") as listener:
        db: Database = await trio.to_thread.run_sync(open_database, settings)
        try:
            return await _run(settings, db, shutdown or trio.Event(), listener)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(db.stop)


async def _run(
    settings: Settings, db: Database, shutdown: trio.Event, listener: socket.socket
) -> int:
    from soar.pipeline import Pipeline
    from soar.web.live import AircraftDirectory, LiveHub

    pipeline = Pipeline(settings, db.url)
    directory = AircraftDirectory()
    hub = LiveHub(settings.live_addr, directory=directory.get)
    ready_checks: dict[str, Callable[[], bool]] = {
        "database": pipeline.database_ready,
        "migrations": lambda: True,  # open_database applied them before anything started
    }
    ctx = WebContext(tree=pipeline.tree, ready_checks=ready_checks, pool=None, live=hub)
    web_stop = trio.Event()
    exit_code = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, shutdown)
        await pipeline.open()
        ctx.pool = pipeline.pool
        await nursery.start(directory.run, pipeline.pool)
        await nursery.start(hub.run)
        web_done = trio.Event()

        async def web(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve_web(settings, ctx, web_stop, sock=listener, task_status=task_status)
            finally:
                web_done.set()

        bound = await nursery.start(web)
        settle_runtime()
        nursery.start_soon(log_slow_gc_pauses)
        log.info("soar.started", http=bound, database="embedded" if db.embedded else "external")

        async with trio.open_nursery() as core:
            await core.start(pipeline.run)
            await shutdown.wait()
            log.info("shutdown.draining", deadline_s=settings.shutdown_deadline)
            with trio.move_on_after(settings.shutdown_deadline) as drain:
                await pipeline.drain()
            if drain.cancelled_caught:
                log.error("shutdown.deadline_exceeded", deadline_s=settings.shutdown_deadline)
                exit_code = 1
                core.cancel_scope.cancel()
        web_stop.set()
        await pipeline.close()
        with trio.move_on_after(WEB_GRACE_S):
            await web_done.wait()
        if not web_done.is_set():
            # hypercorn shields its socket writes from cancellation, so a WebSocket client that
            # stopped reading holds its connection task for ever and this nursery could never
            # close. Everything is committed by now: stop the database and leave.
            log.error("shutdown.web_stuck", hint="a WebSocket client stopped reading",
                      grace_s=WEB_GRACE_S)
            await trio.to_thread.run_sync(db.stop)
            log.info("soar.stopped", exit_code=exit_code)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_code)
        nursery.cancel_scope.cancel()  # the signal watcher, the live hub, the GC pause log
    log.info("soar.stopped", exit_code=exit_code)
    return exit_code
