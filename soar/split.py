"""Split mode: `soar ingest`, `soar track`, `soar web` — the same pipeline code, over pynng.

    soar ingest ──TrackLink (Pair1, acked batches)──► soar track k ──► PostgreSQL
      feeds or captures -> route by                     WAL spool -> Pipeline (decoders,
      hash slice of the aircraft                        shards k*n..k*n+n-1, writers)
                                                          └─ LivePublisher (PUB) ──► soar web
                                                                                     (SUB, API)

The shard map is the ordered list `track_endpoints`: track k of K owns slice k of the hash
space, the same `shard_of` the all-in-one process uses with K = 1. The ingest side decodes each
envelope only to find its aircraft (receiver and server lines go to track 0) and forwards the
raw envelope; the track decodes it again in its own pipeline. A track appends each batch to a
write-ahead spool before acknowledging it, and advances that spool only when its pipeline is
idle (everything taken from it committed), so a track killed at any moment replays from its
spool what it had not committed; ingest resends what was never acknowledged.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import trio

from soar.config import ConfigError, Settings
from soar.database import open_database
from soar.decode import Decoder
from soar.overflow import OverflowSink, decode_envelope
from soar.pipeline import EnvelopeSink, Pipeline, SourceSpec, live_sources
from soar.records import Envelope, Protocol
from soar.runtime import log_slow_gc_pauses, settle_runtime
from soar.spool import DiskSpool
from soar.supervisor import ChildSpec, RestartPolicy, Supervisor
from soar.tracking.router import shard_of
from soar.transport import EnvelopeReceiver, TrackLink

log = structlog.get_logger(__name__)


async def _signalled(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("shutdown.requested", signal=signal.Signals(signum).name)
            stop.set()


# -- soar ingest ---------------------------------------------------------------------------


class IngestRouter:
    """Decodes just enough to find each envelope's aircraft and hands it to its track."""

    def __init__(self, links: list[TrackLink]) -> None:
        self.links = links
        self.decoders = {p: Decoder(p) for p in Protocol}

    def route(self, env: Envelope) -> None:
        decoded = self.decoders[env.protocol].decode(env)
        target = 0
        for ident, _item in decoded.shard_items:
            target = shard_of(ident, len(self.links))
            break
        self.links[target].offer(env)


def _metrics_listener(settings: Settings) -> contextlib.AbstractContextManager[socket.socket | None]:
    """The metrics_addr socket, bound before anything starts (see `soar.web.server.listen_socket`)."""
    from soar.web.server import listen_socket

    if not settings.metrics_addr:
        return contextlib.nullcontext()
    return listen_socket(settings, "metrics_addr")


async def run_ingest(settings: Settings, replay: list[Path], speed: float | None) -> int:
    if not settings.track_endpoints:
        raise ConfigError("track_endpoints: soar ingest needs the shard map (SOAR_TRACK_ENDPOINTS)")
    with _metrics_listener(settings) as listener:
        return await _run_ingest(settings, replay, speed, listener)


async def _run_ingest(
    settings: Settings, replay: list[Path], speed: float | None, listener: socket.socket | None
) -> int:
    from soar.replay import CaptureSource

    links = [TrackLink(address) for address in settings.track_endpoints]
    router = IngestRouter(links)
    size = settings.channel_size
    channels = {p: trio.open_memory_channel[Envelope](size) for p in Protocol}
    data_dir = Path(settings.data_dir)
    sinks = {
        p: OverflowSink(p, channels[p][0], data_dir / "spool" / "ingest" / p.value,
                        settings.spool_max_bytes)
        for p in Protocol
    }
    for sink in sinks.values():
        await trio.to_thread.run_sync(sink.open)
    settle_runtime()
    if replay:
        captures = [CaptureSource(f, speed=speed) for f in replay]
        specs = [SourceSpec(f"replay:{c.path.name}", c.protocol, c.run, RestartPolicy.TEMPORARY)
                 for c in captures]
    else:
        specs = live_sources(settings)
    def child(spec: SourceSpec) -> ChildSpec:
        # every ingest source (live feed or capture) carries one protocol
        assert spec.protocol is not None, spec.name
        return ChildSpec(f"source.{spec.name}", functools.partial(spec.run, sinks[spec.protocol]),
                         spec.policy)

    sources = Supervisor("sources", [child(s) for s in specs])
    links_sup = Supervisor("links", [ChildSpec(f"link.{link.address}", link.run) for link in links])

    async def route(protocol: Protocol) -> None:
        async for env in channels[protocol][1]:
            router.route(env)

    routers = Supervisor("routers", [
        ChildSpec(f"route.{p.value}", functools.partial(route, p), RestartPolicy.TRANSIENT)
        for p in Protocol
    ])
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signalled, stop)
        nursery.start_soon(links_sup.run)
        nursery.start_soon(routers.run)
        nursery.start_soon(log_slow_gc_pauses)
        if listener is not None:
            def tree() -> dict[str, Any]:
                return {sup.name: sup.tree() for sup in (sources, links_sup, routers)}

            # ready while every track keeps up (a stalled one fills its unacknowledged window)
            ready = {f"track {link.address}": link.keeping_up for link in links}
            await nursery.start(_serve_metrics, settings, listener, tree, ready)

        async def sources_then_stop() -> None:
            await sources.run()
            if not replay:
                return
            stop.set()  # a replay is done when its captures are

        async with trio.open_nursery() as feeding:
            for sink in sinks.values():
                feeding.start_soon(sink.drain)
            feeding.start_soon(sources_then_stop)
            await stop.wait()
            sources.stop()
            feeding.cancel_scope.cancel()
        for sink in sinks.values():
            await sink.flush()
        for send, _ in channels.values():
            await send.aclose()
        with trio.move_on_after(settings.shutdown_deadline) as waited:
            for link in links:
                await link.wait_acknowledged()
        if waited.cancelled_caught:
            log.error("ingest.unacknowledged_at_exit",
                      envelopes=sum(link.unacked for link in links))
        nursery.cancel_scope.cancel()
    log.info("ingest.stopped")
    return 0


async def _serve_metrics(
    settings: Settings,
    listener: socket.socket,
    tree: Callable[[], dict[str, Any]],
    ready_checks: dict[str, Callable[[], bool]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """/metrics, /healthz and /readyz on `metrics_addr` (no API) until the process stops.

    Cancelled with the process's nursery: nothing long-lived (no WebSocket) is served here.
    """
    from soar.web.app import WebContext
    from soar.web.server import serve_web

    ctx = WebContext(tree=tree, ready_checks=ready_checks)
    await serve_web(settings, ctx, trio.Event(), sock=listener, api=False,
                    task_status=task_status)


# -- soar track ----------------------------------------------------------------------------


class WalSource:
    """Feeds the pipeline from the write-ahead spool; acknowledges it only when idle."""

    def __init__(self, wal: DiskSpool, pipeline_ref: list[Pipeline]) -> None:
        self.wal = wal
        self.pipeline_ref = pipeline_ref
        self.arrived = trio.Event()
        self._holding = False

    def notify(self) -> None:
        self.arrived.set()

    async def run(self, sink: EnvelopeSink) -> None:
        # After a crash, what was read and not acknowledged comes again (duplicates are
        # harmless downstream; a gap would not be).
        await trio.to_thread.run_sync(self.wal.rewind)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._checkpoint)
            while True:
                records = await trio.to_thread.run_sync(self.wal.read, 1000)
                if not records:
                    self.arrived = trio.Event()
                    with trio.move_on_after(0.2):
                        await self.arrived.wait()
                    continue
                self._holding = True
                for record in records:
                    await sink.send(decode_envelope(record))
                self._holding = False

    async def _checkpoint(self) -> None:
        """Advance the spool past what the pipeline has committed: when nothing read from it is
        still anywhere in the pipeline, twice in a row half a second apart."""
        pipeline = self.pipeline_ref[0]
        previous: tuple[int, ...] | None = None
        while True:
            await trio.sleep(0.5)
            now = pipeline.activity()
            idle = not self._holding and pipeline.quiescent_now() and now == previous
            if idle and self.wal.in_flight:
                await trio.to_thread.run_sync(self.wal.commit)
            previous = now


async def run_track(settings: Settings) -> int:
    if not settings.track_endpoints:
        raise ConfigError("track_endpoints: soar track needs the shard map (SOAR_TRACK_ENDPOINTS)")
    with _metrics_listener(settings) as listener:
        return await _run_track(settings, listener)


async def _run_track(settings: Settings, listener: socket.socket | None) -> int:
    address = settings.track_endpoints[settings.track_index]
    db = await trio.to_thread.run_sync(open_database, settings)
    try:
        wal_dir = Path(settings.data_dir) / "wal" / f"track-{settings.track_index}"
        wal = await trio.to_thread.run_sync(
            functools.partial(DiskSpool, wal_dir, max_bytes=settings.spool_max_bytes)
        )
        # Records read but never acknowledged by a previous run are delivered again.
        ref: list[Pipeline] = []
        source = WalSource(wal, ref)
        pipeline = Pipeline(
            settings, db.url, sources=[SourceSpec("wal", None, source.run)], hold_open=True
        )
        ref.append(pipeline)
        receiver = EnvelopeReceiver(address, wal, source.notify)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_signalled, stop)
            await pipeline.open()
            if listener is not None:
                await nursery.start(_serve_metrics, settings, listener, pipeline.tree,
                                    {"database": pipeline.database_ready})
            async with trio.open_nursery() as core:
                await core.start(pipeline.run)
                await core.start(receiver.run)
                settle_runtime()
                nursery.start_soon(log_slow_gc_pauses)
                log.info("track.started", address=address, slice=settings.track_index,
                         slices=len(settings.track_endpoints))
                await stop.wait()
                with trio.move_on_after(settings.shutdown_deadline):
                    await pipeline.drain()
                core.cancel_scope.cancel()
            await pipeline.close()
            nursery.cancel_scope.cancel()
        wal.close()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(db.stop)
    return 0


# -- soar web ------------------------------------------------------------------------------


async def run_web(settings: Settings) -> int:
    from soar.web.server import listen_socket

    if settings.database_url is None:
        raise ConfigError("database_url: soar web reads the tracks' database (SOAR_DATABASE_URL)")
    with listen_socket(settings, "http_addr") as listener:
        return await _run_web(settings, listener)


async def _run_web(settings: Settings, listener: socket.socket) -> int:
    from soar.store.writer import open_pool
    from soar.web.app import WebContext
    from soar.web.live import AircraftDirectory, LiveHub
    from soar.web.server import serve_web

    db = await trio.to_thread.run_sync(open_database, settings)
    pool = await trio.to_thread.run_sync(open_pool, db.url)
    directory = AircraftDirectory()
    hub = LiveHub(settings.live_sources or [settings.live_addr], directory=directory.get)
    ctx = WebContext(ready_checks={"database": lambda: True}, pool=pool, live=hub)
    stop = trio.Event()
    web_stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_signalled, stop)
            await nursery.start(directory.run, pool)
            await nursery.start(hub.run)
            async with trio.open_nursery() as web:
                await web.start(functools.partial(serve_web, sock=listener), settings, ctx, web_stop)
                settle_runtime()
                nursery.start_soon(log_slow_gc_pauses)
                log.info("web.started", http=settings.http_addr, live=hub.address)
                await stop.wait()
                web_stop.set()  # hypercorn finishes its requests and returns
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(pool.close)
            await trio.to_thread.run_sync(db.stop)
    return 0


def split_command(command: str, settings: Settings, args: argparse.Namespace) -> int:
    if command == "ingest":
        return trio.run(run_ingest, settings, list(args.replay or []), args.speed)
    if command == "track":
        return trio.run(run_track, settings)
    return trio.run(run_web, settings)
