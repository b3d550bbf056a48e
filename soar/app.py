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

import os
import signal
import socket
import sys
from collections.abc import Callable

import structlog
import trio

from soar.config import Settings
from soar.database import Database, open_database
from soar.runtime import log_slow_gc_pauses, settle_runtime
from soar.web.app import WebContext
from soar.web.server import listen_socket, serve_web

log = structlog.get_logger(__name__)

#: after the pipeline has drained, how long the web server may take to close its connections
WEB_GRACE_S = 5.0


def migrate_command(settings: Settings) -> int:
    db = open_database(settings)  # applies the migrations
    db.stop()
    return 0


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
