"""The data path of one process, built in one place.

    sources (per protocol, supervisor "sources")
       │ OverflowSink: channel, or the protocol's disk spool when the channel is full
       ▼
    decoder.{ogn,beast,sbs}  (supervisor "decoders": one task per protocol)
       │ route by stable hash of the aircraft id (ShardRouter)
       ▼
    shard.0 … shard.N-1     (supervisor "shards": each alone owns its aircraft's state)
       │ fixes, flights, aircraft           │ live fixes (never blocks)   │ enrichment requests
       ▼                                    ▼                             ▼
    writer.{fixes,flights,aircraft,receivers}   LivePublisher (pynng PUB)   enricher

Each stage is a supervisor whose children restart on a crash and finish when their input
closes. Draining is the same chain: cancel the sources, flush the overflow spools into the
channels and close them; when every decoder has finished the shard inputs close; when every
shard has finished the writer inputs close; the writers flush and return.
"""

from __future__ import annotations

import functools
import typing
from collections import Counter as CounterDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio
from prometheus_client import Counter, Gauge

from soar.channels import receive_buffered
from soar.config import Settings
from soar.decode import Decoder, StoreRow
from soar.ingest.tcp import wall_clock_us
from soar.overflow import OverflowSink
from soar.records import AircraftSeen, Envelope, Fix, FlightRow, Protocol
from soar.supervisor import ChildSpec, RestartPolicy, Supervisor
from soar.tracking.inputs import ClockTick, ShardInput
from soar.tracking.router import shard_of

if TYPE_CHECKING:
    from soar.store.writer import CommitReport, StoreWriter

log = structlog.get_logger(__name__)

QUEUE_DEPTH = Gauge("soar_queue_depth", "Items waiting in a pipeline channel", ["stage"])
MISROUTED = Counter(
    "soar_pipeline_misrouted_total", "Inputs for an aircraft another track process owns"
)
ARCHIVE_DROPPED = Counter(
    "soar_archive_dropped_total", "Envelopes not archived because the archive fell behind", ["protocol"]
)

TICK_EVERY_US = 30_000_000

class EnvelopeSink(typing.Protocol):
    async def send(self, env: Envelope, /) -> None: ...


#: A source: called with the sink of its protocol; runs until cancelled or its input ends.
SourceFn = Callable[[EnvelopeSink], Awaitable[None]]


class EnvelopeDispatch:
    """The sink of a source that carries several protocols (split mode's write-ahead log)."""

    def __init__(self, sinks: dict[Protocol, OverflowSink]) -> None:
        self.sinks = sinks

    async def send(self, env: Envelope) -> None:
        await self.sinks[env.protocol].send(env)


@dataclass
class SourceSpec:
    name: str
    protocol: Protocol | None  # None: the source gets an EnvelopeDispatch for all protocols
    run: SourceFn
    #: live feeds are restarted after any end; a capture replay finishes
    policy: RestartPolicy = RestartPolicy.PERMANENT


def live_sources(settings: Settings) -> list[SourceSpec]:
    """The feed clients the settings ask for."""
    from soar.ingest.aprs import AprsIsSource
    from soar.ingest.beast_source import BeastSource
    from soar.ingest.sbs_source import SbsSource

    specs: list[SourceSpec] = []
    if settings.aprs_server:
        aprs = AprsIsSource(
            settings.aprs_server, settings.aprs_callsign, server_filter=settings.aprs_filter,
            passcode=settings.aprs_passcode, source=f"aprs:{settings.aprs_server}",
        )
        specs.append(SourceSpec(aprs.source, Protocol.OGN, aprs.run))
    for addr in settings.beast_servers:
        beast = BeastSource(addr, source=f"beast:{addr}")
        specs.append(SourceSpec(beast.source, Protocol.BEAST, beast.run))
    for addr in settings.sbs_servers:
        sbs = SbsSource(addr, source=f"sbs:{addr}")
        specs.append(SourceSpec(sbs.source, Protocol.SBS, sbs.run))
    return specs


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        database_url: str,
        sources: Sequence[SourceSpec] | None = None,
        *,
        hold_open: bool | None = None,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        from soar.live import LivePublisher
        from soar.store.tables import AircraftFamily, FixFamily, FlightFamily, ReceiverFamily
        from soar.tracking.agl import AglCalculator
        from soar.tracking.airports import default_index
        from soar.tracking.privacy import PrivacyRegistry
        from soar.tracking.shard import Shard, ShardSinks
        from soar.tracking.terrain import Terrain
        from soar.tracking.tow import TowDetector, TowService

        self.settings = settings
        self.database_url = database_url
        self.pool: Any = None
        #: the wall clock partition maintenance and retention read (injectable for tests)
        self.wall_clock = wall_clock
        # Live feeds run until drain(); a replay's sources end by themselves.
        self.hold_open = sources is None if hold_open is None else hold_open
        self.sources = list(live_sources(settings) if sources is None else sources)
        if self.hold_open and not self.sources:
            log.warning("pipeline.no_feeds", hint="set SOAR_APRS_SERVER, SOAR_BEAST_SERVERS or "
                        "SOAR_SBS_SERVERS; `soar replay FILE` feeds captures")
        size = settings.channel_size
        data_dir = Path(settings.data_dir)

        self.envelopes: dict[Protocol, tuple[trio.MemorySendChannel[Envelope], trio.MemoryReceiveChannel[Envelope]]] = {
            p: trio.open_memory_channel[Envelope](size) for p in Protocol
        }
        # The raw archive sees every envelope as it arrives, before any spooling.
        self.archive_channel = trio.open_memory_channel[Envelope](size) if settings.archive_raw else None
        self.sinks = {
            p: OverflowSink(p, self.envelopes[p][0], data_dir / "spool" / "ingest" / p.value,
                            settings.spool_max_bytes,
                            tee=self._archive if self.archive_channel is not None else None)
            for p in Protocol
        }
        self.dispatch = EnvelopeDispatch(self.sinks)
        self.decoders = {p: Decoder(p) for p in Protocol}

        n = settings.shard_count
        # Split mode: this process owns slice `track_index` of `len(track_endpoints)` equal
        # slices of the hash space, i.e. global shards k*n .. k*n+n-1 of n*K.
        self.slice_count = max(1, len(settings.track_endpoints))
        self.slice_index = settings.track_index if settings.track_endpoints else 0
        self.shard_channels = [trio.open_memory_channel[ShardInput](size) for _ in range(n)]
        self.fix_channel = trio.open_memory_channel[Fix](size)
        self.flight_channel = trio.open_memory_channel[FlightRow](size)
        self.aircraft_channel = trio.open_memory_channel[AircraftSeen](size)
        self.receiver_channel = trio.open_memory_channel[StoreRow](size)

        self.live = LivePublisher(settings.live_addr)
        self._writer_inputs: dict[str, tuple[Any, trio.MemoryReceiveChannel[Any]]] = {
            "fixes": (FixFamily(), self.fix_channel[1]),
            "flights": (FlightFamily(), self.flight_channel[1]),
            "aircraft": (AircraftFamily(), self.aircraft_channel[1]),
            "receivers": (ReceiverFamily(), self.receiver_channel[1]),
        }
        self.writers: dict[str, StoreWriter[Any]] = {}
        agl = AglCalculator(
            Terrain(settings.elevation_dir) if settings.elevation_dir else None, default_index()
        )
        reference = (
            (settings.receiver_lat, settings.receiver_lon)
            if settings.receiver_lat is not None and settings.receiver_lon is not None
            else None
        )
        # One AGL calculator for all shards: airports and terrain tiles are read-only data
        # (the tile cache fills on first use and is never changed by a shard's aircraft state).
        self.agl = agl
        self.privacy = PrivacyRegistry()
        self.tow = TowService(TowDetector(agl.airports, frozenset()))
        self.shard_sinks = ShardSinks(
            fixes=self.fix_channel[0], flights=self.flight_channel[0],
            aircraft=self.aircraft_channel[0], live=self.live.offer, tow=self.tow.offer,
        )
        self.shards = [
            Shard(i, agl=agl, modes_reference=reference, privacy=self.privacy) for i in range(n)
        ]
        self._shard_started = [False] * n

        self.sources_sup = Supervisor(
            "sources",
            [ChildSpec(f"source.{s.name}",
                       functools.partial(s.run, self.sinks[s.protocol] if s.protocol else self.dispatch),
                       s.policy)
             for s in self.sources],
        )
        self.decoders_sup = Supervisor(
            "decoders",
            [ChildSpec(f"decoder.{p.value}", functools.partial(self._decode, p), RestartPolicy.TRANSIENT)
             for p in Protocol],
        )
        self.shards_sup = Supervisor(
            "shards",
            [ChildSpec(f"shard.{i}", functools.partial(self._run_shard, i), RestartPolicy.TRANSIENT)
             for i in range(n)],
        )
        self.writers_sup: Supervisor | None = None
        self.live_sup = Supervisor("live", [ChildSpec("live.publisher", self.live.run)])
        maintenance = [ChildSpec("partitions", self._maintain_partitions),
                       ChildSpec("database.probe", self._probe_database)]
        if settings.ddb_url:
            maintenance.append(ChildSpec("ddb.refresh", self._refresh_ddb))
        from soar.database import embedded_supervisor

        # the embedded PostgreSQL this process started (none with SOAR_DATABASE_URL)
        if (supervise := embedded_supervisor(database_url)) is not None:
            maintenance.append(ChildSpec("database.embedded", supervise))
        self.maintenance_sup = Supervisor("maintenance", maintenance)
        self.tow_sup = Supervisor("tow", [ChildSpec(
            "tow", functools.partial(self.tow.run, [send for send, _ in self.shard_channels],
                                     self.local_shard),
            RestartPolicy.TRANSIENT,
        )])
        self.archive_sup: Supervisor | None = None
        if self.archive_channel is not None:
            from soar.ingest.archive import RawArchive

            archive = RawArchive(data_dir / "archive")
            receive_archive = self.archive_channel[1]
            self.archive_sup = Supervisor("archive", [ChildSpec(
                "archive", functools.partial(archive.run, receive_archive), RestartPolicy.TRANSIENT,
            )])
        self.spool_sup = Supervisor(
            "spools",
            [ChildSpec(f"spool.{p.value}", self.sinks[p].drain) for p in Protocol],
        )
        from soar.tracking.metrics import FIXES_REJECTED, FLIGHTS_OPENED

        # Counters are process-wide: a summary reports what changed since this pipeline began.
        self.committed: CounterDict[str] = CounterDict()
        self.commit_hooks: list[Callable[[CommitReport], None]] = []
        self._flights_at_start = counter_total(FLIGHTS_OPENED)
        self._rejects_at_start = _counts_by_label(FIXES_REJECTED, "reason")
        self._drain_requested = trio.Event()
        self._database_answers = True
        self._core_done = trio.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create the writers, open the spools and give every shard its open flights
        back (blocking parts in threads)."""
        from soar.store.writer import StoreWriter, open_pool

        data_dir = Path(self.settings.data_dir)
        self.pool = await trio.to_thread.run_sync(open_pool, self.database_url)
        for name, (family, _receive) in self._writer_inputs.items():
            # Flights and aircraft are state, coalesced per id within a batch: waiting longer
            # makes fewer, larger upserts (10,000 first sightings in a second made the
            # database compete with the live path for the CPU; see docs/performance.md).
            state = name in ("flights", "aircraft")
            self.writers[name] = StoreWriter(
                self.pool, family, spool_dir=data_dir / "spool" / "store" / name,
                max_rows=self.settings.batch_rows,
                max_age=self.settings.state_batch_age if state else self.settings.batch_age,
                spool_max_bytes=self.settings.spool_max_bytes, on_commit=self._committed,
            )
        self.writers_sup = Supervisor(
            "writers",
            [ChildSpec(f"writer.{name}", functools.partial(w.run, self._writer_inputs[name][1]),
                       RestartPolicy.TRANSIENT) for name, w in self.writers.items()],
        )
        from soar.ddb import load_privacy, tow_ids_for

        self.privacy.replace(await trio.to_thread.run_sync(load_privacy, self.database_url))
        self.tow.detector.tow_ids = await trio.to_thread.run_sync(
            tow_ids_for, self.database_url, self.settings.tow_registrations
        )
        for sink in self.sinks.values():
            await trio.to_thread.run_sync(sink.open)
        # Live feeds run on the wall clock: a flight silent for an hour is over. A replay's fix
        # clock is the capture's recorded time: the first replayed fix decides, so a replay run
        # again after SIGTERM continues the flights it left open instead of duplicating them.
        restored = await self._restore(
            range(len(self.shards)), now_us=wall_clock_us() if self.hold_open else None
        )
        if restored:
            log.info("pipeline.flights_restored", flights=restored)

    async def _restore(self, shards: range | list[int], now_us: int | None) -> int:
        """Give shards their open flights from the database; flights whose last fix is more
        than 1 h before `now_us` are closed as timed out by the shard."""
        from soar.store.queries import open_flights

        def load() -> list[Any]:
            with self.pool.connection() as conn:
                # Enough history for the < 1 s rule over what a write-ahead log may replay.
                return open_flights(conn, shards=list(shards), shard_of=self.owner_shard,
                                    last_fixes=600)

        found = await trio.to_thread.run_sync(load)
        by_shard: dict[int, list[tuple[FlightRow, list[Fix]]]] = {i: [] for i in shards}
        for item in found:
            by_shard[self.owner_shard(item.flight.aircraft_id)].append((item.flight, item.fixes))
        for index, flights in by_shard.items():
            self.shards[index].restore(flights, now_us=now_us)
        return len(found)

    async def close(self) -> None:
        if self.pool is not None:
            await trio.to_thread.run_sync(self.pool.close)
            self.pool = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.writers_sup is not None, "open() first"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_queues)
            nursery.start_soon(self.maintenance_sup.run)
            async with trio.open_nursery() as stages:
                stages.start_soon(self._stage, self.writers_sup, [])
                stages.start_soon(self._stage, self.live_sup, [])
                stages.start_soon(self.tow_sup.run)
                stages.start_soon(
                    self._stage, self.shards_sup,
                    [self.fix_channel[0], self.flight_channel[0], self.aircraft_channel[0]],
                    self.live_sup, self.tow.close,
                )
                stages.start_soon(
                    self._stage, self.decoders_sup,
                    [*(send for send, _ in self.shard_channels), self.receiver_channel[0]],
                )
                stages.start_soon(self._run_sources)
                if self.archive_sup is not None:
                    stages.start_soon(self.archive_sup.run)
                task_status.started()
            nursery.cancel_scope.cancel()  # the queue watcher
        self._core_done.set()

    @staticmethod
    async def _stage(
        sup: Supervisor,
        close_after: list[Any],
        stop_after: Supervisor | None = None,
        then: Callable[[], None] | None = None,
    ) -> None:
        await sup.run()
        for channel in close_after:
            await channel.aclose()
        if stop_after is not None:
            stop_after.stop()
        if then is not None:
            then()

    async def _run_sources(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.spool_sup.run)
            await self.sources_sup.run()
            if self.hold_open:
                await self._drain_requested.wait()
            # Sources ended (a replay finished, or drain() stopped them): hand over what is
            # spooled, then close the envelope channels so the decoders finish.
            self.spool_sup.stop()
        for sink in self.sinks.values():
            await sink.flush()
        for send, _ in self.envelopes.values():
            await send.aclose()
        if self.archive_channel is not None:
            await self.archive_channel[0].aclose()

    async def drain(self) -> None:
        """Stop the sources and wait until everything they produced is committed."""
        self._drain_requested.set()
        self.sources_sup.stop()
        await self._core_done.wait()

    async def wait_finished(self) -> None:
        """For replays: wait until the sources have ended by themselves and all is committed."""
        await self._core_done.wait()

    # -- stage bodies --------------------------------------------------------------------------

    async def _decode(self, protocol: Protocol) -> None:
        decoder = self.decoders[protocol]
        receive = self.envelopes[protocol][1]
        shard_sends = [send for send, _ in self.shard_channels]
        store = self.receiver_channel[0]
        local = self.local_shard
        last_tick_us = 0
        # A trio checkpoint costs ~10 µs: take what is already buffered and hand it on without
        # one per message, and wait (await) only when a channel is empty or full.
        while (env := await receive_buffered(receive)) is not None:
            if env.received_us - last_tick_us >= TICK_EVERY_US:
                # The fix clock reaches every shard, so a shard with no traffic still times
                # its flights out.
                last_tick_us = env.received_us
                for send in shard_sends:
                    await send.send(ClockTick(env.received_us))
            decoded = decoder.decode(env)
            for ident, item in decoded.shard_items:
                channel = shard_sends[local(ident)]
                try:
                    channel.send_nowait(item)
                except trio.WouldBlock:
                    await channel.send(item)
            for row in decoded.store_rows:
                await store.send(row)
            if decoder.messages % 256 == 0:
                await trio.lowlevel.checkpoint()  # let the other protocols and shards run
        for row in decoder.flush_receivers():
            await store.send(row)

    def owner_shard(self, ident: int) -> int:
        """This process's shard for `ident`, or -1 when another process owns it."""
        n = len(self.shards)
        local = shard_of(ident, n * self.slice_count) - self.slice_index * n
        return local if 0 <= local < n else -1

    def local_shard(self, ident: int) -> int:
        local = self.owner_shard(ident)
        if local < 0:
            # The ingest side routed it to the wrong process (a shard map that differs between
            # processes): process it anyway, rather than lose it, and make it visible.
            MISROUTED.inc()
            log.warning("pipeline.misrouted", aircraft=f"{ident:08x}", slice=self.slice_index)
            return shard_of(ident, len(self.shards))
        return local

    async def _run_shard(self, index: int) -> None:
        if self._shard_started[index]:
            # A restart after a crash: the in-memory state may be what crashed, so start clean
            # from what the database has (rows still queued for the writer are not lost: the
            # writer commits them; the shard only loses the part of a flight not yet written).
            self.shards[index].reset()
            restored = await self._restore([index], now_us=None)
            log.warning("shard.rebuilt", shard=index, flights=restored)
        self._shard_started[index] = True
        # A clone, so that a crashed shard closing its end does not close the channel the
        # decoders send to; the restarted shard reads on from where the other stopped.
        await self.shards[index].run(self.shard_channels[index][1].clone(), self.shard_sinks)

    def _archive(self, env: Envelope) -> None:
        assert self.archive_channel is not None
        try:
            self.archive_channel[0].send_nowait(env)
        except trio.WouldBlock:
            # The archive is a record, not the data path: it never slows a feed. Counted.
            ARCHIVE_DROPPED.labels(protocol=env.protocol.value).inc()

    async def _probe_database(self) -> None:
        """/readyz must turn false when the database goes away even if nothing is being
        written: ask it every couple of seconds."""

        def ping() -> None:
            with self.pool.connection(timeout=2.0) as conn:
                conn.execute("SELECT 1")

        while True:
            try:
                await trio.to_thread.run_sync(ping)
            except Exception as exc:  # any failure to answer means not ready
                if self._database_answers:
                    log.warning("database.unreachable", error=(str(exc).splitlines() or [type(exc).__name__])[0][:200])
                self._database_answers = False
            else:
                if not self._database_answers:
                    log.info("database.reachable")
                self._database_answers = True
            await trio.sleep(2.0)

    async def _refresh_ddb(self) -> None:
        from soar.ddb import refresh_forever

        await refresh_forever(self.database_url, self.settings.ddb_url, self.privacy.replace)

    async def _maintain_partitions(self) -> None:
        from soar.store.partitions import maintain_partitions, wall_now

        await maintain_partitions(self.pool, retention_days=self.settings.fixes_retention_days,
                                  clock=self.wall_clock or wall_now)

    async def _watch_queues(self) -> None:
        while True:
            for p, (env_send, _) in self.envelopes.items():
                QUEUE_DEPTH.labels(stage=f"envelopes.{p.value}").set(
                    env_send.statistics().current_buffer_used)
            for i, (shard_send, _) in enumerate(self.shard_channels):
                QUEUE_DEPTH.labels(stage=f"shard.{i}").set(shard_send.statistics().current_buffer_used)
            for name, channel in (("fixes", self.fix_channel), ("flights", self.flight_channel),
                                  ("aircraft", self.aircraft_channel), ("receivers", self.receiver_channel)):
                QUEUE_DEPTH.labels(stage=f"writer.{name}").set(channel[0].statistics().current_buffer_used)
            await trio.sleep(1.0)

    # -- what happened ------------------------------------------------------------------------

    def _committed(self, report: CommitReport) -> None:
        self.committed[report.table] += report.rows
        for hook in self.commit_hooks:
            hook(report)

    def summary(self) -> dict[str, Any]:
        """Counts for `soar replay`: this pipeline's messages and rejects, committed rows."""
        from soar.tracking.metrics import FIXES_REJECTED, FLIGHTS_OPENED

        shard_rejects = {
            reason: value - self._rejects_at_start.get(reason, 0)
            for reason, value in _counts_by_label(FIXES_REJECTED, "reason").items()
        }
        reasons: CounterDict[str] = CounterDict()
        for decoder in self.decoders.values():
            reasons.update(decoder.rejects)
        for reason, value in shard_rejects.items():
            if value:
                reasons[reason] += int(value)
        return {
            "messages": sum(d.messages for d in self.decoders.values()),
            "fixes": self.committed["fixes"],
            "flights": int(counter_total(FLIGHTS_OPENED) - self._flights_at_start),
            "rejects": sum(reasons.values()),
            "reject_reasons": dict(reasons),
            "committed": dict(self.committed),
        }

    def activity(self) -> tuple[int, ...]:
        """A fingerprint of work done and waiting; equal twice a moment apart means idle."""
        buffered = sum(send.statistics().current_buffer_used for send, _ in self.envelopes.values())
        buffered += sum(send.statistics().current_buffer_used for send, _ in self.shard_channels)
        for channel in (self.fix_channel, self.flight_channel, self.aircraft_channel,
                        self.receiver_channel):
            buffered += channel[0].statistics().current_buffer_used
        spooled = sum(sink.depth for sink in self.sinks.values())
        done = sum(d.messages for d in self.decoders.values()) + sum(self.committed.values())
        return buffered, spooled, done

    def quiescent_now(self) -> bool:
        buffered, spooled, _done = self.activity()
        return buffered == 0 and spooled == 0 and all(w.idle for w in self.writers.values())

    # -- what the web side shows ---------------------------------------------------------------

    def tree(self) -> dict[str, Any]:
        sups = [self.sources_sup, self.spool_sup, self.decoders_sup, self.shards_sup, self.live_sup,
                self.tow_sup, self.maintenance_sup]
        if self.archive_sup is not None:
            sups.append(self.archive_sup)
        if self.writers_sup is not None:
            sups.append(self.writers_sup)
        return {sup.name: sup.tree() for sup in sups}

    def database_ready(self) -> bool:
        return (self._database_answers and bool(self.writers)
                and all(w.healthy for w in self.writers.values()))


def counter_total(counter: Any) -> float:
    """The sum over all label sets of a prometheus Counter."""
    return float(sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total")))


def _counts_by_label(counter: Any, label: str) -> dict[str, float]:
    return {
        s.labels[label]: s.value
        for m in counter.collect() for s in m.samples if s.name.endswith("_total")
    }
