"""Split mode: `soar ingest`, `soar track`, `soar web` over NATS JetStream.

    soar ingest ─► JetStream stream SOAR_ENV ─► soar track (any number) ─► PostgreSQL
      feeds or captures;        subjects            owns a share of the partitions by lease;
      partition = shard_of(     soar.env.<p>,        one durable pull consumer per partition;
      aircraft, N); batches     work-queue           acks a message only once all its rows
      with a message id         retention            are committed (CommitWatermark)
                                                      │ live fixes: soar.live.area.<lat>.<lon>,
                                                      ▼            soar.live.aircraft.<id>
                                                    soar web (subscribes to its clients' squares)

Partitions, not processes, are the unit of ownership: `nats_partitions` (64) is fixed for the
life of a stream, and tracks come and go. Each track holds leases in the JetStream key-value
bucket `soar_leases` (`soar.broker.lease.PartitionLeases`): rendezvous hashing gives every
live track its share, a track gone longer than `nats_lease_s` loses its share to the others,
and gets it back when it returns. On acquiring a partition a track restores the open flights
of that partition's aircraft from PostgreSQL before consuming; on giving one back it stops
consuming, waits until everything it fed is committed and acknowledged, writes the latest
state of that partition's flights, and only then frees the lease, so the next holder's
restore sees it.

The ingest side decodes each envelope only to find its aircraft (receiver and server lines,
which carry none, go to partition 0) and forwards the raw envelope; the track decodes it again
in its own pipeline. A publish waits for JetStream's acknowledgement; a retry after a lost
connection reuses the message id, so JetStream stores it once. Delivery to tracks is at least
once; repeats are harmless (fixes are keyed by aircraft and receive time, and the flight state
machine drops repeated beacons).

May import: soar.backoff, soar.broker, soar.config, soar.database, soar.decode, soar.ingest,
soar.live, soar.log, soar.overflow, soar.pipeline, soar.records, soar.replay, soar.runtime,
soar.store, soar.supervisor, soar.topology, soar.tracking, soar.watermark, soar.web
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import fcntl
import functools
import itertools
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
import trio
from prometheus_client import Counter, Gauge, Histogram

from soar.backoff import Backoff
from soar.broker import (
    BrokerError,
    CodecError,
    Delivery,
    EmbeddedNats,
    JetStreamLink,
    PartitionConsumer,
    PartitionedStream,
    PartitionLeases,
    StreamFull,
    StreamSpec,
    decode_batch,
    encode_batch,
    open_link,
)
from soar.config import ConfigError, Settings
from soar.database import open_database
from soar.decode import Decoder
from soar.log import RateLimited
from soar.overflow import OverflowSink
from soar.pipeline import Pipeline, SourceSpec, live_sources
from soar.records import Envelope, Protocol
from soar.runtime import log_slow_gc_pauses, settle_runtime, watch_signals
from soar.supervisor import ChildSpec, RestartPolicy, Supervisor
from soar.topology import Edge, EdgePolicy, Stage, Topology, when_started
from soar.tracking.router import shard_of
from soar.watermark import CommitWatermark, Flow

log = structlog.get_logger(__name__)

LEASE_BUCKET = "soar_leases"

PUBLISHED = Counter("soar_ingest_envelopes_published_total",
                    "Envelopes stored in the JetStream stream (acknowledged by it)")
PUBLISH_RETRIES = Counter("soar_ingest_publish_retries_total",
                          "Publishes to JetStream retried, by reason", ["reason"])
PUBLISH_BUFFERED = Gauge("soar_ingest_publish_buffered_envelopes",
                         "Envelopes routed to a partition and not yet stored in JetStream")
RECEIVED = Counter("soar_track_envelopes_received_total", "Envelopes received from JetStream")
BAD_BATCHES = Counter("soar_track_bad_batches_total",
                      "JetStream messages refused whole (not a batch of envelopes) and terminated")
UNACKED = Gauge("soar_track_unacked_messages",
                "JetStream messages fed to this track's pipeline and not yet committed")
HELD = Gauge("soar_track_held_messages",
             "JetStream messages committed and held back from acknowledgement for a minute of "
             "data time, so that the next owner of their partition replays them after a crash")
ACK_PENDING = Gauge("soar_track_consumer_ack_pending",
                    "JetStream's count of delivered, unacknowledged messages per owned partition",
                    ["partition"])
CONSUMER_PENDING = Gauge("soar_track_consumer_pending",
                         "Messages waiting in JetStream for an owned partition", ["partition"])
PARTITIONS_OWNED = Gauge("soar_track_partitions_owned", "Partitions this track consumes")
COMMIT_DELAY = Histogram(
    "soar_track_commit_delay_seconds",
    "From a message's delivery to its acknowledgement (all its rows committed)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

_bad_batch_log = RateLimited(log)

#: JetStream messages a track has fed to its pipeline and not yet committed, at most: seconds
#: of work, well inside the 30 s after which JetStream delivers a message again
MAX_UNACKED = 512
#: ... and envelopes in those messages, at most (messages are as small as a partition's 0.1 s)
MAX_UNACKED_ENVELOPES = 10_000
#: messages one fetch from a partition takes at most
FETCH_BATCH = 16
#: A committed message is acknowledged only once the track's data clock (the newest receive
#: time it has processed) is HOLD_DATA_S past the message's newest envelope (and at most
#: MAX_HELD are held, at most HOLD_MAX_S of wall time each). Until then a crash or a hand-over
#: makes JetStream deliver it again to the next owner of its partition, which so rebuilds the
#: decoding state the rows do not carry: an ADS-B velocity or identity message, a CPR frame
#: waiting for its pair. Repeated messages store nothing twice (fixes are keyed by aircraft and
#: receive time). Held messages are marked in progress every RENEW_S, so JetStream does not
#: deliver them again while this track lives (its ack_wait is 30 s).
HOLD_DATA_S = 60.0
HOLD_MAX_S = 600.0
MAX_HELD = 5000
RENEW_S = 10.0
#: open flights handed to a shard per control input when a partition is acquired
RESTORE_CHUNK = 25


def partition_of(ident: int, partitions: int) -> int:
    """The stream partition of an aircraft (the shard hash, over the partition count)."""
    return shard_of(ident, partitions)


def stream_spec(settings: Settings) -> StreamSpec:
    return StreamSpec(partitions=settings.nats_partitions, replicas=settings.nats_replicas)


# -- the broker connection of a split-mode process --------------------------------------------


@contextlib.asynccontextmanager
async def connect(settings: Settings, name: str) -> AsyncIterator[tuple[JetStreamLink, Any]]:
    """The NATS link of this process: `nats_url`, else the embedded server under data_dir/nats
    (started if none runs; left running while another process uses it). Yields (link, the
    keeper task to run in a nursery: restarts the embedded server if it dies, else None)."""
    embedded: EmbeddedNats | None = None
    url = settings.nats_url
    token = settings.nats_token
    if url is None:
        embedded = EmbeddedNats(Path(settings.data_dir))
        url = await trio.to_thread.run_sync(embedded.start)
        token = token or embedded.token
    creds = str(settings.nats_creds) if settings.nats_creds else None
    try:
        async with open_link(url, token=token, creds=creds, name=name) as link:
            yield link, (functools.partial(_keep_embedded, embedded) if embedded else None)
    finally:
        if embedded is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(embedded.stop)


async def _keep_embedded(embedded: EmbeddedNats) -> None:
    """The embedded server is shared and restarted by whichever process finds it gone (its
    JetStream store is on disk: streams, consumers and leases survive)."""
    while True:
        await trio.sleep(2.0)
        if not await trio.to_thread.run_sync(embedded.answers):
            log.warning("embedded_nats.gone", data_dir=str(embedded.dir))
            await trio.to_thread.run_sync(embedded.start)


# -- soar ingest ---------------------------------------------------------------------------


class PartitionRouter:
    """Decodes just enough to find each envelope's aircraft, hence its partition."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.decoders = {p: Decoder(p) for p in Protocol}

    def partition(self, env: Envelope) -> int:
        decoded = self.decoders[env.protocol].decode(env)
        for ident, _item in decoded.shard_items:
            return partition_of(ident, self.partitions)
        return 0  # receiver and server lines: no aircraft


class EnvelopePublisher:
    """Batches envelopes per partition and stores them in JetStream.

    `offer` buffers (and waits while `max_buffered` are not yet stored: the back-pressure
    that makes the ingest's overflow spool take the excess); `run` publishes what is buffered
    every `max_age_s` (or sooner when a partition has `batch_size`), all partitions' batches in
    flight at once, and waits for JetStream's acknowledgements. A failed publish is retried
    with the same message ids until it is stored: nothing is dropped, nothing stored twice.
    """

    def __init__(
        self,
        stream: PartitionedStream,
        *,
        batch_size: int = 200,
        max_age_s: float = 0.1,
        max_buffered: int = 20_000,
        instance: str | None = None,
    ) -> None:
        self.stream = stream
        self.batch_size = batch_size
        self.max_age_s = max_age_s
        self.max_buffered = max_buffered
        # message ids unique across ingest processes and their restarts
        self.instance = instance or uuid.uuid4().hex[:12]
        self._seq = 0
        self._buffers: dict[int, list[Envelope]] = {}
        self._buffered = 0
        self._full_batch = trio.Event()
        self._space = trio.Event()
        self.published = 0
        #: envelopes of each protocol stored in JetStream, in the order offered (a flush is
        #: all or nothing, so this is always a prefix of what each protocol's router offered)
        self.stored: dict[Protocol, int] = dict.fromkeys(Protocol, 0)
        self.on_stored: Callable[[], Awaitable[None]] | None = None
        self._idle = trio.Event()
        self._idle.set()

    async def offer(self, partition: int, env: Envelope) -> None:
        while self._buffered >= self.max_buffered:
            await self._space.wait()
        batch = self._buffers.setdefault(partition, [])
        batch.append(env)
        self._buffered += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        if len(batch) >= self.batch_size:
            self._full_batch.set()

    @property
    def buffered(self) -> int:
        """Envelopes offered and not yet stored in JetStream."""
        return self._buffered

    async def wait_published(self) -> None:
        """Until everything offered so far is stored in JetStream."""
        while self._buffered:
            await self._idle.wait()

    async def run(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while True:
            with trio.move_on_after(self.max_age_s):
                await self._full_batch.wait()
            self._full_batch = trio.Event()
            if not self._buffered:
                continue
            items, by_protocol = self._take()
            count = sum(n for _, _, _, n in items)
            while True:
                try:
                    await self.stream.publish_batches([(p, mid, body) for p, mid, body, _ in items])
                except StreamFull:
                    PUBLISH_RETRIES.labels(reason="stream_full").inc()
                    log.warning("ingest.stream_full", hint="tracks are not keeping up, or the "
                                "stream's max_bytes is too small; publishing again")
                except BrokerError as exc:
                    PUBLISH_RETRIES.labels(reason="unavailable").inc()
                    log.warning("ingest.publish_failed", error=str(exc), envelopes=count)
                else:
                    backoff.reset()
                    break
                await trio.sleep(backoff.next_delay())
            PUBLISHED.inc(count)
            self.published += count
            for protocol, n in by_protocol.items():
                self.stored[protocol] += n
            if self.on_stored is not None:
                await self.on_stored()
            self._buffered -= count
            PUBLISH_BUFFERED.set(self._buffered)
            self._space.set()
            self._space = trio.Event()
            if not self._buffered:
                self._idle.set()

    def _take(self) -> tuple[list[tuple[int, str, bytes, int]], dict[Protocol, int]]:
        items = []
        by_protocol: dict[Protocol, int] = {}
        for partition, envelopes in self._buffers.items():
            for env in envelopes:
                by_protocol[env.protocol] = by_protocol.get(env.protocol, 0) + 1
            for start in range(0, len(envelopes), self.batch_size):
                chunk = envelopes[start:start + self.batch_size]
                self._seq += 1
                items.append((partition, f"{self.instance}-{self._seq}", encode_batch(chunk),
                              len(chunk)))
        self._buffers = {}
        return items, by_protocol


class CaptureProgress:
    """Where each replayed capture got to: envelopes stored in JetStream, per capture file.

    Kept in `<data_dir>/ingest/captures.json` (at most once a second, and at the end), so a
    `soar ingest --replay` killed mid-way starts again where its stored envelopes end instead
    of publishing the whole capture again. A capture replayed to its end is forgotten: running
    it again replays it again. Resuming needs at most one capture per protocol (the stored
    count is per protocol); with more, they start from the beginning (repeats are harmless).
    """

    SAVE_EVERY_S = 1.0

    def __init__(self, data_dir: Path, captures: list[Path], publisher: EnvelopePublisher) -> None:
        self.file = data_dir / "ingest" / "captures.json"
        self.publisher = publisher
        self.by_protocol: dict[Protocol, Path] = {}
        protocols = [(path, _capture_protocol(path)) for path in captures]
        counts: dict[Protocol, int] = {}
        for _path, protocol in protocols:
            counts[protocol] = counts.get(protocol, 0) + 1
        for path, protocol in protocols:
            if counts[protocol] == 1:
                self.by_protocol[protocol] = path
        self.start: dict[Path, int] = {}
        saved = self._load()
        for path in self.by_protocol.values():
            entry = saved.get(str(path.resolve()), {})
            if entry.get("size") == path.stat().st_size:
                self.start[path] = int(entry.get("envelopes", 0))
        self._saved_at = -float("inf")

    def skip(self, path: Path) -> int:
        return self.start.get(path, 0)

    async def stored(self) -> None:
        if trio.current_time() - self._saved_at >= self.SAVE_EVERY_S:
            self._saved_at = trio.current_time()
            await trio.to_thread.run_sync(self.save)

    def save(self) -> None:
        entries = {
            str(path.resolve()): {"size": path.stat().st_size,
                                  "envelopes": self.skip(path) + self.publisher.stored[protocol]}
            for protocol, path in self.by_protocol.items()
        }
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries))
        tmp.replace(self.file)

    def finished(self) -> None:
        """Every capture was replayed to its end and stored: nothing to resume."""
        self.file.unlink(missing_ok=True)

    def _load(self) -> dict[str, Any]:
        try:
            loaded = json.loads(self.file.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("ingest.capture_progress_unreadable", file=str(self.file))
            return {}
        return loaded if isinstance(loaded, dict) else {}


def _capture_protocol(path: Path) -> Protocol:
    from soar.replay import capture_kind

    return capture_kind(path)[1]


class ResumedCapture:
    """A capture replayed from its `skip`-th envelope, at `speed` times its recorded pace."""

    def __init__(self, path: Path, skip: int, speed: float | None) -> None:
        self.path = path
        self.skip = skip
        self.speed = speed
        self.protocol = _capture_protocol(path)
        self.sent = 0

    async def run(self, sink: Any) -> None:
        from soar.ingest.capture import iter_capture

        envelopes = iter_capture(self.path)
        if self.skip:
            await trio.to_thread.run_sync(
                lambda: next(itertools.islice(envelopes, self.skip - 1, None), None))
            log.info("ingest.capture_resumed", file=str(self.path), skipped=self.skip)
        first_us: int | None = None
        started = trio.current_time()
        while batch := await trio.to_thread.run_sync(
                lambda: list(itertools.islice(envelopes, 2000))):
            for env in batch:
                if self.speed is not None:
                    if first_us is None:
                        first_us = env.received_us
                    await trio.sleep_until(started + (env.received_us - first_us) / 1e6 / self.speed)
                await sink.send(env)
            self.sent += len(batch)
            await trio.lowlevel.checkpoint()
        log.info("replay.file_done", file=str(self.path), messages=self.skip + self.sent)


def _metrics_listener(settings: Settings) -> contextlib.AbstractContextManager[socket.socket | None]:
    """The metrics_addr socket, bound before anything starts (see `soar.web.server.listen_socket`)."""
    from soar.web.server import listen_socket

    if not settings.metrics_addr:
        return contextlib.nullcontext()
    return listen_socket(settings, "metrics_addr")


async def run_ingest(settings: Settings, replay: list[Path], speed: float | None) -> int:
    with _metrics_listener(settings) as listener:
        return await _run_ingest(settings, replay, speed, listener)


async def _run_ingest(
    settings: Settings, replay: list[Path], speed: float | None, listener: socket.socket | None
) -> int:
    size = settings.channel_size
    data_dir = Path(settings.data_dir)

    def spill(protocol: Protocol) -> Callable[[trio.MemorySendChannel[Envelope]], OverflowSink]:
        return lambda send: OverflowSink(protocol, send, data_dir / "spool" / "ingest" /
                                         protocol.value, settings.spool_max_bytes)

    # a feed faster than JetStream takes it spills to disk, in order, and is never slowed
    edges = {p: Edge[Envelope](f"envelopes.{p.value}", size, EdgePolicy.SPILL, spill=spill(p))
             for p in Protocol}
    for edge in edges.values():
        assert edge.spill is not None
        await trio.to_thread.run_sync(edge.spill.open)
    stop = trio.Event()
    replay_finished = trio.Event()
    routed = trio.Event()
    async with connect(settings, "soar-ingest") as (link, keeper):
        stream = await _ensure_stream(link, settings)
        publisher = EnvelopePublisher(stream)
        router = PartitionRouter(settings.nats_partitions)
        progress: CaptureProgress | None = None
        captures: list[ResumedCapture] = []
        if replay:
            progress = CaptureProgress(data_dir, replay, publisher)
            publisher.on_stored = progress.stored
            captures = [ResumedCapture(f, progress.skip(f), speed) for f in replay]
            specs = [SourceSpec(f"replay:{c.path.name}", c.protocol, c.run,
                                RestartPolicy.TEMPORARY) for c in captures]
        else:
            specs = live_sources(settings)

        def child(spec: SourceSpec) -> ChildSpec:
            # every ingest source (live feed or capture) carries one protocol
            assert spec.protocol is not None, spec.name
            return ChildSpec(f"source.{spec.name}",
                             functools.partial(spec.run, edges[spec.protocol]), spec.policy)

        sources = Supervisor("sources", [child(s) for s in specs])

        async def feed() -> None:
            await sources.run()
            if replay:
                replay_finished.set()
                stop.set()  # a replay is done when its captures are
            for edge in edges.values():  # what is spooled goes on before the edges close
                assert edge.spill is not None
                await edge.spill.flush()

        async def route(protocol: Protocol) -> None:
            receive = edges[protocol].receiver()
            async for env in receive:
                await publisher.offer(router.partition(env), env)

        broker = [ChildSpec("publisher", publisher.run)]
        if keeper is not None:
            broker.append(ChildSpec("nats.embedded", keeper))
        transient = RestartPolicy.TRANSIENT
        topology = Topology("ingest", [
            Stage("signals", [ChildSpec("signals", functools.partial(watch_signals, stop))]),
            Stage("broker", broker),
            Stage("routers", [ChildSpec(f"route.{p.value}", functools.partial(route, p),
                                        transient) for p in Protocol],
                  then=[routed.set]),
            Stage("spools", [ChildSpec(f"spool.{p.value}", edge.spill.drain)
                             for p, edge in edges.items() if edge.spill is not None]),
            Stage("sources", [ChildSpec("feed", feed, transient, subtree=sources)],
                  outputs=list(edges.values())),
            *_metrics_stage(settings, listener, lambda: topology.tree(),
                            {"nats": lambda: link.connected}),
            Stage("runtime", [ChildSpec("gc.pauses", log_slow_gc_pauses)], essential=False),
        ])
        settle_runtime()
        async with trio.open_nursery() as nursery:
            await nursery.start(topology.run)
            log.info("ingest.started", partitions=settings.nats_partitions,
                     sources=[s.name for s in specs])
            await stop.wait()
            sources.stop()
            await routed.wait()  # the edges closed after the spools were flushed into them
            topology.stages["spools"].stop()
            with trio.move_on_after(settings.shutdown_deadline) as waited:
                await publisher.wait_published()
            if waited.cancelled_caught:
                log.error("ingest.unpublished_at_exit", envelopes=publisher.buffered)
            elif progress is not None:
                if replay_finished.is_set():
                    await trio.to_thread.run_sync(progress.finished)
                else:
                    await trio.to_thread.run_sync(progress.save)
            topology.stop()
    log.info("ingest.stopped", published=publisher.published)
    return 0


async def _ensure_stream(link: JetStreamLink, settings: Settings) -> PartitionedStream:
    backoff = Backoff(0.5, 5.0)
    while True:
        try:
            return await link.ensure_stream(stream_spec(settings))
        except BrokerError as exc:
            if type(exc).__name__ == "PartitionCountMismatch":
                raise ConfigError(f"nats_partitions: {exc}") from None
            log.warning("broker.stream_unavailable", error=str(exc))
            await trio.sleep(backoff.next_delay())


async def _serve_metrics(
    settings: Settings,
    listener: socket.socket,
    tree: Callable[[], dict[str, Any]],
    ready_checks: dict[str, Callable[[], bool]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """/metrics, /healthz and /readyz on `metrics_addr` (no API) until the process stops."""
    from soar.web.app import WebContext
    from soar.web.server import serve_web

    ctx = WebContext(tree=tree, ready_checks=ready_checks)
    await serve_web(settings, ctx, trio.Event(), sock=listener, api=False,
                    task_status=task_status)


# -- soar track ----------------------------------------------------------------------------


class PartitionFeed:
    """This track's partitions: consumed into the pipeline, acknowledged once committed.

    `PartitionLeases` calls `acquired(p)` / `released(p)`; each owned partition has one task
    that fetches from its durable consumer and sends every envelope into the pipeline (whose
    envelope edges block: JetStream is the buffer here, never the track's disk). The
    `CommitWatermark` acknowledges messages whose rows are committed; at most `max_unacked`
    messages are in the pipeline at once, which bounds what a crash makes JetStream redeliver.
    """

    def __init__(
        self,
        stream: PartitionedStream,
        pipeline: Pipeline,
        *,
        fetch_batch: int = FETCH_BATCH,
        max_unacked: int = MAX_UNACKED,
    ) -> None:
        self.stream = stream
        self.pipeline = pipeline
        self.nursery: trio.Nursery | None = None
        self.stopping = False
        self.partitions = stream.spec.partitions
        self.fetch_batch = fetch_batch
        self.max_unacked = max_unacked
        self.watermark: CommitWatermark[Delivery | trio.Event] = CommitWatermark(
            commit_levels(pipeline), self._settle)
        self._consumers: dict[int, PartitionConsumer] = {}
        self._scopes: dict[int, trio.CancelScope] = {}
        self._acquiring: set[int] = set()  # their flights being restored, not yet consumed
        self._stopped: dict[int, trio.Event] = {}
        self._fed_at: dict[int, float] = {}
        self._envelopes_in: dict[int, int] = {}  # id(delivery) -> its envelopes, uncommitted
        self.unacked_envelopes = 0
        self._reserved = 0  # messages being fetched, counted against max_unacked
        self._queue: collections.deque[_Turn] = collections.deque()  # fetches waiting, in turn
        self.received = 0
        #: committed, not yet acknowledged, oldest first
        self._held: collections.deque[_Held] = collections.deque()
        self._data_us: dict[int, int] = {}  # id(delivery) -> its newest envelope's receive time
        #: the newest receive time this track has been fed
        self.newest_us = 0
        # a shard of this pipeline restarted after a crash gets back this track's flights only
        pipeline.rebuild_shard = self.rebuild_shard

    @property
    def reserved(self) -> int:
        """Messages the fetches under way may bring, counted against `max_unacked`."""
        return self._reserved

    async def run_watermark(self) -> None:
        await self.watermark.run()

    async def run(self, leases: PartitionLeases) -> None:
        """The leases, and a consumer task per owned partition, until cancelled."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await leases.run()

    async def stop(self) -> None:
        """Before the leases are given back at exit: stop every consumer, write the latest
        state of every aircraft held, and wait once until all of it is committed and
        acknowledged (a per-partition hand-over would wait once per partition)."""
        self.stopping = True
        owned = set(self._scopes)
        for scope in self._scopes.values():
            scope.cancel()
        for stopped in self._stopped.values():
            await stopped.wait()
        self._scopes.clear()
        self._stopped.clear()
        PARTITIONS_OWNED.set(0)
        partitions = self.partitions

        def held(ident: int) -> bool:
            return partition_of(ident, partitions) in owned

        from soar.tracking.inputs import ForgetAircraft

        for index in range(len(self.pipeline.shards)):
            await self.pipeline.shard_input(index, ForgetAircraft(held))
        await self.barrier()
        await self._return_held(owned)

    def owns(self, ident: int) -> bool:
        """Whether aircraft `ident` is this track's: its partition is owned, or being acquired
        (its flights are being restored)."""
        partition = partition_of(ident, self.partitions)
        return partition in self._scopes or partition in self._acquiring

    async def rebuild_shard(self, index: int) -> int:
        """The pipeline's shard `index`, restarted after a crash and not yet reading: the open
        flights of its aircraft in the partitions this track owns, from PostgreSQL, straight
        into the shard, so ahead of the inputs queued for it (an acquired partition's go
        through its edge, in their order, before anything is consumed). The other partitions'
        aircraft are other tracks' to hold. A partition being acquired counts as owned: its
        restore may have been half taken by the shard that crashed."""
        return await self.pipeline.restore_shard(index, self.owns)

    async def acquired(self, partition: int) -> None:
        if self.stopping or self.nursery is None:
            return
        self._acquiring.add(partition)
        try:
            restored = await self._restore(partition)
        finally:
            self._acquiring.discard(partition)
        scope = trio.CancelScope()
        stopped = trio.Event()
        self._scopes[partition] = scope
        self._stopped[partition] = stopped
        PARTITIONS_OWNED.set(len(self._scopes))
        self.nursery.start_soon(self._consume, partition, scope, stopped)
        log.info("track.partition_acquired", partition=partition, flights=restored)

    async def released(self, partition: int) -> None:
        if self.stopping:
            return  # `stop` has done it for every partition at once
        scope = self._scopes.pop(partition, None)
        if scope is None:
            return
        scope.cancel()
        await self._stopped.pop(partition).wait()
        PARTITIONS_OWNED.set(len(self._scopes))
        ACK_PENDING.remove(str(partition))
        CONSUMER_PENDING.remove(str(partition))
        # The next holder restores this partition's flights from the database: write their
        # latest state and forget them, then wait until that and every message of ours is
        # committed and acknowledged.
        await self._forget(partition)
        await self.barrier()
        await self._return_held({partition})
        log.info("track.partition_released", partition=partition)

    async def barrier(self) -> None:
        """Until everything fed before now is committed and acknowledged."""
        done = trio.Event()
        self.watermark.add(done)
        await done.wait()

    async def _consume(self, partition: int, scope: trio.CancelScope, stopped: trio.Event) -> None:
        backoff = Backoff(0.5, 5.0)
        try:
            with scope:
                while True:
                    try:
                        async with self.stream.consumer(partition) as consumer:
                            self._consumers[partition] = consumer
                            backoff.reset()
                            await self._await_previous_owner(consumer)
                            await self._fetch_forever(consumer)
                    except BrokerError as exc:
                        log.warning("track.consumer_failed", partition=partition, error=str(exc))
                        await trio.sleep(backoff.next_delay())
        finally:
            stopped.set()

    async def _await_previous_owner(self, consumer: PartitionConsumer) -> None:
        """A partition taken over from a track that died: the messages it had been given and
        never acknowledged come back only once their ack_wait has run out, and then ahead of
        newer ones. Wait that long before the first fetch, so that they are replayed first and
        in order (the decoding state they rebuild is needed by the newer ones)."""
        stats = await consumer.info()
        if stats.num_ack_pending == 0:
            return
        wait_s = self.stream.spec.ack_wait_s + 1.0
        log.info("track.awaiting_previous_owner", partition=consumer.partition,
                 unacknowledged=stats.num_ack_pending, wait_s=wait_s)
        await trio.sleep(wait_s)

    async def _fetch_forever(self, consumer: PartitionConsumer) -> None:
        # A partition asks for twice what its last fetch brought (one message when that
        # brought none, at most fetch_batch). An idle partition's fetch waits on the server
        # for up to a second holding its reservation: one message of the bound, not a batch,
        # so the idle partitions of a track cannot take the room of those with a backlog.
        batch = 1
        while True:
            await self._admit(batch)
            reserved = batch
            try:
                deliveries = await consumer.fetch(batch=batch, timeout=1.0)
                self._reserved -= reserved - len(deliveries)
                reserved = len(deliveries)
                for index in range(len(deliveries)):
                    await self._feed(consumer, deliveries, index)
                    self._reserved -= 1
                    reserved -= 1
            finally:
                self._reserved -= reserved
                self._grant()
            batch = max(1, min(self.fetch_batch, 2 * len(deliveries)))

    async def _admit(self, count: int) -> None:
        """Reserve `count` messages of the unacknowledged bound for a fetch, in turn.

        Every partition's task fetches: a fetch's reservation counts until each message it
        got is counted by the watermark, so that together they go at most one batch over the
        bound. In turn, because a task whose fetch just ended would otherwise take back the
        room it gave before the tasks waiting for it ran: issue 14's bench stalled so, the
        waiting fetches of drained partitions holding the whole bound for ever while the
        partitions with messages waited for room."""
        turn = _Turn(count)
        self._queue.append(turn)
        self._grant()
        try:
            await turn.granted.wait()
        except BaseException:  # given back (cancelled), granted or not
            if turn.granted.is_set():
                self._reserved -= count
            else:
                self._queue.remove(turn)
            self._grant()
            raise

    def _grant(self) -> None:
        """Room may have come: reserve for the waiting fetches, first come first served."""
        while (self._queue and self.watermark.pending + self._reserved < self.max_unacked
               and self.unacked_envelopes < MAX_UNACKED_ENVELOPES):
            turn = self._queue.popleft()
            self._reserved += turn.count
            turn.granted.set()

    async def _feed(self, consumer: PartitionConsumer, deliveries: list[Delivery],
                    index: int) -> None:
        """Send one message's envelopes into the pipeline and register it with the watermark
        (a message that is not a batch of envelopes is terminated and counted)."""
        delivery = deliveries[index]
        try:
            envelopes = decode_batch(delivery.data)
        except CodecError as exc:
            BAD_BATCHES.inc()
            _bad_batch_log.log("bad_batch", "error", "track.bad_batch",
                               partition=consumer.partition, msg_id=delivery.msg_id,
                               error=str(exc))
            with trio.CancelScope(shield=True):
                await delivery.term()
            return
        try:
            for env in envelopes:
                await self.pipeline.dispatch.send(env)
        except trio.Cancelled:
            # given back mid-message: what was sent is processed, the rest (and this
            # message) comes again to the next holder at once instead of after ack_wait
            with trio.CancelScope(shield=True), contextlib.suppress(BrokerError):
                await consumer.nak(deliveries[index:])
            raise
        self.received += len(envelopes)
        RECEIVED.inc(len(envelopes))
        self._fed_at[id(delivery)] = trio.current_time()
        self._envelopes_in[id(delivery)] = len(envelopes)
        self.unacked_envelopes += len(envelopes)
        if envelopes:
            newest = max(env.received_us for env in envelopes)
            self._data_us[id(delivery)] = newest
            self.newest_us = max(self.newest_us, newest)
        delivery.release_data()
        self.watermark.add(delivery)
        UNACKED.set(self.watermark.pending)

    async def _settle(self, items: list[Delivery | trio.Event]) -> None:
        """Committed: held, then acknowledged by `acknowledge_held`."""
        now = trio.current_time()
        for item in items:
            if isinstance(item, Delivery):
                COMMIT_DELAY.observe(now - self._fed_at.pop(id(item), now))
                self.unacked_envelopes -= self._envelopes_in.pop(id(item), 0)
                data_us = self._data_us.pop(id(item), self.newest_us)
                self._held.append(_Held(now, now, data_us, item))
            else:
                item.set()
        HELD.set(len(self._held))
        UNACKED.set(self.watermark.pending)
        self._grant()

    async def acknowledge_held(self) -> None:
        """Twice a second: acknowledge what is HOLD_DATA_S behind the data clock (sooner past
        MAX_HELD or HOLD_MAX_S), and mark the rest in progress every RENEW_S."""
        while True:
            now = trio.current_time()
            due_us = self.newest_us - int(HOLD_DATA_S * 1e6)
            ripe: list[Delivery] = []
            while self._held and (self._held[0].data_us <= due_us
                                  or len(self._held) > MAX_HELD
                                  or now - self._held[0].committed >= HOLD_MAX_S):
                ripe.append(self._held.popleft().delivery)
            HELD.set(len(self._held))
            await self._ack(ripe)
            stale = [held for held in self._held if now - held.renewed >= RENEW_S]
            if stale:
                consumer = next(iter(self._consumers.values()), None)
                if consumer is not None:
                    try:
                        await consumer.in_progress([held.delivery for held in stale])
                    except BrokerError as exc:
                        log.warning("track.renew_failed", messages=len(stale), error=str(exc))
                    else:
                        for held in stale:
                            held.renewed = now
            await trio.sleep(0.5)

    async def _ack(self, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        consumer = next(iter(self._consumers.values()), None)  # all ack on one connection
        try:
            if consumer is not None:
                await consumer.ack(deliveries)
            else:
                for delivery in deliveries:
                    await delivery.ack()
        except BrokerError as exc:
            # committed, just not acknowledged: JetStream redelivers, the store ignores it
            log.warning("track.ack_failed", messages=len(deliveries), error=str(exc))

    async def _return_held(self, partitions: set[int]) -> None:
        """Give the held messages of `partitions` back (nak): the next owner replays them at
        once, before newer ones, and so starts with the decoding state this track had."""
        returned = [h.delivery for h in self._held if h.delivery.partition in partitions]
        self._held = collections.deque(h for h in self._held
                                       if h.delivery.partition not in partitions)
        HELD.set(len(self._held))
        consumer = next(iter(self._consumers.values()), None)
        if consumer is None or not returned:
            return
        try:
            await consumer.nak(returned)
        except BrokerError as exc:  # unreachable: they come back after ack_wait all the same
            log.warning("track.return_failed", messages=len(returned), error=str(exc))

    async def _restore(self, partition: int) -> int:
        """The open flights of the partition's aircraft, from PostgreSQL, to their shards, in
        small chunks through their edges, which a shard rebuilds between its other inputs
        (the process, and its lease heartbeat, stays responsive)."""
        from soar.tracking.inputs import RestoreFlights

        pipeline = self.pipeline
        partitions = self.partitions

        def of_partition(ident: int) -> bool:
            return partition_of(ident, partitions) == partition

        async def hand_over(found: list[Any]) -> None:
            by_shard: dict[int, list[Any]] = {}
            for item in found:
                by_shard.setdefault(pipeline.local_shard(item.flight.aircraft_id), []).append(item)
            for index, items in by_shard.items():
                # judged by the shard's own clock (the fixes' time), not the wall clock: a
                # replayed capture's flights are hours "old" by the wall clock
                for first in range(0, len(items), RESTORE_CHUNK):
                    await pipeline.shard_input(
                        index, RestoreFlights(items[first:first + RESTORE_CHUNK], None))

        return await pipeline.load_open_flights(of_partition, hand_over)

    async def _forget(self, partition: int) -> None:
        from soar.tracking.inputs import ForgetAircraft

        partitions = self.partitions

        def owned(ident: int) -> bool:
            return partition_of(ident, partitions) == partition

        for index in range(len(self.pipeline.shards)):
            await self.pipeline.shard_input(index, ForgetAircraft(owned))

    async def export_consumer_stats(self) -> None:
        """JetStream's own view of each owned partition, as gauges (every 5 s)."""
        while True:
            for partition, consumer in list(self._consumers.items()):
                if partition not in self._scopes:
                    continue
                try:
                    stats = await consumer.info()
                except BrokerError:
                    continue
                ACK_PENDING.labels(str(partition)).set(stats.num_ack_pending)
                CONSUMER_PENDING.labels(str(partition)).set(stats.num_pending)
            await trio.sleep(5.0)


@dataclasses.dataclass(slots=True)
class _Turn:
    """A fetch waiting for room under the unacknowledged bound."""

    count: int
    granted: trio.Event = dataclasses.field(default_factory=trio.Event)


@dataclasses.dataclass(slots=True)
class _Held:
    """A committed message not yet acknowledged."""

    committed: float  # trio clock
    renewed: float  # trio clock: last marked in progress (or committed)
    data_us: int  # its newest envelope's receive time
    delivery: Delivery


def commit_levels(pipeline: Pipeline) -> list[list[Flow]]:
    """The pipeline's cascade for `CommitWatermark`: envelopes -> shards -> writers."""
    edges = pipeline.edges
    envelopes = [Flow(name, edge.sent_count, edge.done_count)
                 for name, edge in edges.items() if name.startswith("envelopes.")]
    # a shard holds inputs back at a jump of the receive clock: taken, not yet processed
    decoded = [Flow(edge.name, edge.sent_count, functools.partial(_shard_done, edge, shard))
               for edge, shard in zip(pipeline.shard_edges, pipeline.shards, strict=True)]
    decoded += [Flow(name, edge.sent_count, edge.done_count)
                for name, edge in edges.items() if name == "writer.receivers"]
    stored = [Flow(name, edges[f"writer.{name}"].sent_count,
                   functools.partial(_settled, writer))
              for name, writer in pipeline.writers.items() if name != "receivers"]
    return [envelopes, decoded, stored]


def _settled(writer: Any) -> int:
    return int(writer.settled)


def _shard_done(edge: Edge[Any], shard: Any) -> int:
    return edge.done_count() - int(shard.holding)


@contextlib.contextmanager
def _track_lock(data_dir: Path, track_id: str) -> Iterator[None]:
    """Two tracks with one id on one machine would both consume the same partitions."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f"track-{track_id}.lock", "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"track_id: another soar track with id {track_id!r} runs with this data_dir; "
                "give each track on a machine its own SOAR_TRACK_ID") from None
        yield


async def run_track(settings: Settings) -> int:
    with _track_lock(Path(settings.data_dir), settings.track_id), \
            _metrics_listener(settings) as listener:
        return await _run_track(settings, listener)


async def _run_track(settings: Settings, listener: socket.socket | None) -> int:
    db = await trio.to_thread.run_sync(open_database, settings)
    try:
        async with connect(settings, f"soar-track-{settings.track_id}") as (link, keeper):
            return await _track_on(settings, db.url, link, keeper, listener)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(db.stop)


async def _track_on(
    settings: Settings, database_url: str, link: JetStreamLink, keeper: Any,
    listener: socket.socket | None,
) -> int:
    from soar.live import NatsLivePublisher

    stream = await _ensure_stream(link, settings)
    bucket = await link.lease_bucket(LEASE_BUCKET, ttl_s=settings.nats_lease_s,
                                     replicas=settings.nats_replicas)
    # its own spools: tracks on one machine share data_dir (and so the embedded servers)
    own = dataclasses.replace(settings, data_dir=Path(settings.data_dir) / "tracks" / settings.track_id)
    pipeline = Pipeline(own, database_url, sources=[], hold_open=True,
                        restore_open_flights=False, live=NatsLivePublisher(link),
                        block_envelopes=True)
    await pipeline.open()
    feed = PartitionFeed(stream, pipeline)
    leases = PartitionLeases(bucket, settings.track_id, settings.nats_partitions,
                             settings.nats_lease_s, on_acquired=feed.acquired,
                             on_released=feed.released)
    stop = trio.Event()
    broker = [ChildSpec("watermark", feed.run_watermark),
              ChildSpec("acknowledge", feed.acknowledge_held),
              ChildSpec("consumer.stats", feed.export_consumer_stats, essential=False)]
    if keeper is not None:
        broker.append(ChildSpec("nats.embedded", keeper))
    ready = {"database": pipeline.database_ready, "nats": lambda: link.connected}
    topology = pipeline.declare("track", [
        Stage("signals", [ChildSpec("signals", functools.partial(watch_signals, stop))]),
        Stage("broker", broker),
        Stage("partitions", [ChildSpec("leases", functools.partial(feed.run, leases),
                                       RestartPolicy.TRANSIENT)]),
        *_metrics_stage(settings, listener, lambda: topology.tree(), ready),
        Stage("runtime", [ChildSpec("gc.pauses", log_slow_gc_pauses)], essential=False),
    ])
    settle_runtime()
    async with trio.open_nursery() as nursery:
        await nursery.start(topology.run)
        log.info("track.started", track=settings.track_id, partitions=settings.nats_partitions)
        await stop.wait()
        await feed.stop()
        topology.stages["partitions"].stop()  # deletes the leases: the others take over now
        with trio.move_on_after(settings.shutdown_deadline):
            await pipeline.drain()
        topology.stop()
    await pipeline.close()
    log.info("track.stopped", track=settings.track_id)
    return 0


def _metrics_stage(
    settings: Settings, listener: socket.socket | None, tree: Callable[[], dict[str, Any]],
    ready: dict[str, Callable[[], bool]],
) -> list[Stage]:
    """/metrics, /healthz and /readyz on `metrics_addr`, when it is set."""
    if listener is None:
        return []
    serve = functools.partial(_serve_metrics, settings, listener, tree, ready)
    return [Stage("metrics", [ChildSpec("metrics.server", serve)])]


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
    from soar.web.server import await_web_or_leave, serve_when_ready

    db = await trio.to_thread.run_sync(open_database, settings)
    pool = await trio.to_thread.run_sync(open_pool, db.url)
    stop = trio.Event()
    web_stop, web_done = trio.Event(), trio.Event()
    try:
        async with connect(settings, "soar-web") as (link, keeper):
            directory = AircraftDirectory()
            hub = LiveHub(link=link, directory=directory.get,
                          client_queue_size=settings.live_client_queue)
            ctx = WebContext(ready_checks={"database": lambda: True,
                                           "nats": lambda: link.connected},
                             pool=pool, live=hub)
            hub_ready, directory_ready = trio.Event(), trio.Event()
            services = [ChildSpec("live.hub", when_started(hub.run, hub_ready)),
                        ChildSpec("aircraft.directory",
                                  when_started(directory.run, directory_ready, pool))]
            if keeper is not None:
                services.append(ChildSpec("nats.embedded", keeper))
            topology = Topology("web", [
                Stage("signals", [ChildSpec("signals", functools.partial(watch_signals, stop))]),
                Stage("services", services),
                Stage("web", [ChildSpec("web.server", functools.partial(
                    serve_when_ready, settings, ctx, web_stop, web_done, sock=listener,
                    ready=(hub_ready, directory_ready)), RestartPolicy.TRANSIENT)]),
                Stage("runtime", [ChildSpec("gc.pauses", log_slow_gc_pauses)],
                      essential=False),
            ])
            ctx.tree = topology.tree
            settle_runtime()
            async with trio.open_nursery() as nursery:
                await nursery.start(topology.run)
                log.info("web.started", http=settings.http_addr)
                await stop.wait()
                web_stop.set()  # hypercorn finishes its requests and returns

                async def leave() -> None:  # nothing is left to commit here
                    await trio.to_thread.run_sync(pool.close)
                    await trio.to_thread.run_sync(db.stop)

                await await_web_or_leave(web_done, 0, leave)
                topology.stop()
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

