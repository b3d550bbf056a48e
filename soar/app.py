"""The all-in-one process (`soar run`): one declared topology under one root supervisor.

    run                      (root: soar.topology.Topology)
    ├── <the data path>      soar.pipeline.Pipeline.stages: sources, spools, decoders, shards,
    │                        tow, writers, live, archive, maintenance
    ├── signals              SIGTERM/SIGINT -> orderly shutdown
    ├── web                  hypercorn (trio worker) serving the quart-trio app
    ├── hub                  live.hub: pynng SUB -> WebSocket clients (while no web worker is up)
    ├── web-worker           web.worker: the child process serving HTTP past the front door
    │                        (optional; soar/web/worker.py)
    ├── directory            aircraft.directory: registrations for the live messages
    └── runtime              gc.pauses (optional)

The database (embedded PostgreSQL or SOAR_DATABASE_URL, migrations applied first) is opened
before the tree starts and stopped after it. Shutdown order: stop the sources, let the data
path drain (every stage ends when its input closes, the writers flush last), stop the web
server, then the rest of the tree, then the embedded PostgreSQL; all within
`shutdown_deadline` seconds.

`soar run --replay FILE` adds capture sources (beside the live feeds, if any) and keeps running
after they end, so the live map shows a capture moving on its own clock.

The listening socket is bound before anything else starts: an address already in use is one
line naming the setting to change, with no database started and nothing to undo.

May import: soar.config, soar.database, soar.pipeline, soar.replay, soar.runtime, soar.supervisor,
soar.topology, soar.web
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import trio

from soar.config import Settings
from soar.database import Database, open_database
from soar.runtime import log_slow_gc_pauses, settle_runtime, watch_signals
from soar.supervisor import ChildSpec, RestartPolicy
from soar.topology import Stage, when_started
from soar.web.app import WebContext, open_api_pool, readiness_document
from soar.web.server import await_web_or_leave, listen_socket, serve_when_ready
from soar.web.worker import WebWorker, publisher_address

log = structlog.get_logger(__name__)



def migrate_command(settings: Settings) -> int:
    db = open_database(settings)  # applies the migrations
    db.stop()
    return 0


async def run_all_in_one(
    settings: Settings,
    shutdown: trio.Event | None = None,
    *,
    replay: list[Path] | None = None,
    speed: float | None = None,
) -> int:
    """Run everything until SIGTERM/SIGINT (or `shutdown` is set); return the exit code.

    `replay`: capture files fed beside the live feeds, at `speed` (None: as fast as possible).
    """
    with listen_socket(settings, "http_addr") as listener, contextlib.ExitStack() as stack:
        # the address the web worker dials for fixes: in a private folder, removed at exit
        worker_at = stack.enter_context(publisher_address()) if settings.web_worker else None
        db: Database = await trio.to_thread.run_sync(open_database, settings)
        try:
            return await _run(settings, db, shutdown or trio.Event(), listener,
                              replay or [], speed, worker_at)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(db.stop)


def _sources(settings: Settings, replay: list[Path], speed: float | None) -> list[Any] | None:
    """Live feeds, plus a capture source per `replay` file (None: just the live feeds)."""
    if not replay:
        return None
    from soar.pipeline import SourceSpec, live_sources
    from soar.replay import CaptureSource

    captures = [CaptureSource(path, speed=speed) for path in replay]
    return [*live_sources(settings),
            *(SourceSpec(f"replay:{c.path.name}:{i}", c.protocol, c.run, RestartPolicy.TEMPORARY)
              for i, c in enumerate(captures))]


async def _run(
    settings: Settings, db: Database, shutdown: trio.Event, listener: socket.socket,
    replay: list[Path], speed: float | None, worker_at: str | None,
) -> int:
    from soar.pipeline import Pipeline
    from soar.web.live import AircraftDirectory, LiveHub

    # hold_open: a replay's captures end, the process (and its live map) does not
    pipeline = Pipeline(settings, db.url, _sources(settings, replay, speed), hold_open=True)
    directory = AircraftDirectory()
    hub = LiveHub(settings.live_addr, directory=directory.get,
                  client_queue_size=settings.live_client_queue)
    ready_checks: dict[str, Callable[[], bool]] = {
        "database": pipeline.database_ready,
        "migrations": lambda: True,  # open_database applied them before anything started
    }
    ctx = WebContext(tree=pipeline.tree, ready_checks=ready_checks, pool=None, live=hub)
    web_stop = trio.Event()
    web_done = trio.Event()
    exit_code = 0
    await pipeline.open()
    ctx.pool = await trio.to_thread.run_sync(open_api_pool, db.url)

    hub_ready, directory_ready = trio.Event(), trio.Event()
    worker_stage: list[Stage] = []
    if worker_at is not None:
        pipeline.live.also.append(worker_at)
        ctx.web_worker = worker = WebWorker(
            settings, db.url, worker_at, tree=pipeline.tree,
            ready=lambda: readiness_document(ctx)[1])
        ready_checks["web_worker"] = worker.ready_check
        # optional: while it is down, the door hands connections to this process's server
        worker_stage.append(Stage("web-worker", [ChildSpec(
            "web.worker", worker.run, RestartPolicy.TRANSIENT, essential=False)],
            essential=False))

    topology = pipeline.declare("run", [
        Stage("signals", [ChildSpec("signals", functools.partial(watch_signals, shutdown))]),
        Stage("web", [ChildSpec("web.server", functools.partial(
            serve_when_ready, settings, ctx, web_stop, web_done, sock=listener,
            ready=(hub_ready, directory_ready)), RestartPolicy.TRANSIENT)]),
        Stage("hub", [ChildSpec("live.hub", when_started(hub.run, hub_ready))]),
        Stage("directory", [ChildSpec("aircraft.directory", when_started(
            directory.run, directory_ready, pipeline.pool))]),
        *worker_stage,
        Stage("runtime", [ChildSpec("gc.pauses", log_slow_gc_pauses)], essential=False),
    ])
    settle_runtime()
    log.info("soar.started", http=settings.http_addr,
             database="embedded" if db.embedded else "external",
             replay=[str(path) for path in replay] or None)
    async with trio.open_nursery() as nursery:
        await nursery.start(topology.run)
        await shutdown.wait()
        log.info("shutdown.draining", deadline_s=settings.shutdown_deadline)
        with trio.move_on_after(settings.shutdown_deadline) as drain:
            await pipeline.drain()
        if drain.cancelled_caught:
            log.error("shutdown.deadline_exceeded", deadline_s=settings.shutdown_deadline)
            exit_code = 1
            for stage in pipeline.stages:
                stage.stop()
        web_stop.set()
        if ctx.web_worker is not None:
            ctx.web_worker.stop()  # its clients are told goodbye (1001) now, as the server's
        await pipeline.close()

        async def leave() -> None:  # the web server is stuck: stop the database and leave
            await trio.to_thread.run_sync(db.stop)
            log.info("soar.stopped", exit_code=exit_code)

        await await_web_or_leave(web_done, exit_code, leave)
        topology.stop()  # the signal watcher, the live hub, the directory, the GC pause log
    await trio.to_thread.run_sync(ctx.pool.close)
    log.info("soar.stopped", exit_code=exit_code)
    return exit_code
