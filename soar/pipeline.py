"""The data path of one process: its edges and its stage bodies.

    sources (per protocol)                                    stage "sources"
       │ edge envelopes.<protocol>: SPILL (OverflowSink: the protocol's disk spool when full;
       │ BLOCK in a track process, where JetStream is the buffer); edge archive: DROP_NEWEST
       ▼
    decoder.{ogn,beast,sbs}  (one task per protocol)         stage "decoders"
       │ edge shard.<i>: BLOCK, routed by stable hash of the aircraft id (`shard_of`)
       ▼
    shard.0 … shard.N-1  (each alone owns its aircraft's state)  stage "shards"
       │ edges writer.{fixes,flights,aircraft}: BLOCK     │ live fixes (never block)
       ▼                                                  ▼
    writer.{fixes,flights,aircraft,receivers}             live publisher
       (writer.receivers is fed by the decoders)

`Pipeline.stages` declares them (with the tow detector, the raw archive, the overflow spools and
maintenance) for `soar.topology.Topology`; a role adds its own stages (web, signals) beside them
under one root supervisor. Draining is the stages' closing chain: the sources are stopped, the
spools flushed into the envelope edges and those closed; when every decoder has finished the
shard edges close; when every shard has finished the writer edges close; the writers flush and
return. Maintenance stops when the data path has finished.

May import: soar.channels, soar.config, soar.database, soar.ddb, soar.decode, soar.ingest,
soar.live, soar.overflow, soar.records, soar.store, soar.supervisor, soar.topology, soar.tracking,
soar.watermark
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

from soar.channels import receive_buffered
from soar.config import Settings
from soar.decode import Decoder, StoreRow
from soar.ingest.tcp import wall_clock_us
from soar.overflow import OverflowSink
from soar.records import AircraftSeen, Envelope, Fix, FlightRow, Protocol
from soar.supervisor import ChildSpec, RestartPolicy, Supervisor
from soar.topology import Edge, EdgePolicy, Stage, Topology
from soar.tracking.inputs import ClockTick, ShardInput
from soar.tracking.router import shard_of

if TYPE_CHECKING:
    from soar.store.writer import CommitReport, StoreWriter

log = structlog.get_logger(__name__)

TICK_EVERY_US = 30_000_000
# What a restored flight state machine keeps of its fixes: the last 64 whole fixes (its
# `recent`: climb and phase over 2 min, runway tracks over +-20 s; the inactive run and the
# air/ground debounce are in its tail), and times and positions for the duplicate rules of
# late fixes: 600, the 10 min reorder window at ADS-B's 1 fix/s after thinning (a replay run
# again after a stop, or a receiver's backlog, brings fixes behind the restored newest one).
RESTORE_FIXES = 64
RESTORE_POSITIONS = 600
# Flights loaded at a time: their fixes are what a restart holds beyond the machines.
RESTORE_CHUNK = 500


class EnvelopeSink(typing.Protocol):
    async def send(self, env: Envelope, /) -> None: ...


class LiveSink(typing.Protocol):
    """Where shards publish live fixes: `offer` never blocks; `run` is its task."""

    def offer(self, fix: Fix, /) -> None: ...
    async def run(self) -> None: ...


#: A source: called with the sink of its protocol; runs until cancelled or its input ends.
SourceFn = Callable[[EnvelopeSink], Awaitable[None]]


class EnvelopeDispatch:
    """The sink of a source that carries several protocols."""

    def __init__(self, sinks: dict[Protocol, EnvelopeSink]) -> None:
        self.sinks = sinks

    async def send(self, env: Envelope) -> None:
        await self.sinks[env.protocol].send(env)


class _Teed:
    """A protocol's sink when the raw archive is on: the archive sees every envelope as it
    arrives (and never slows a feed: its edge drops the newest when full)."""

    def __init__(self, edge: Edge[Envelope], archive: Edge[Envelope]) -> None:
        self.edge = edge
        self.archive = archive

    async def send(self, env: Envelope) -> None:
        self.archive.offer(env)
        await self.edge.send(env)


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


#: the stages whose end is the end of the data path (maintenance runs until then)
_CORE = ("sources", "decoders", "shards", "tow", "writers", "live", "archive")

class Pipeline:
    def __init__(
        self,
        settings: Settings,
        database_url: str,
        sources: Sequence[SourceSpec] | None = None,
        *,
        hold_open: bool | None = None,
        wall_clock: Callable[[], datetime] | None = None,
        restore_open_flights: bool = True,
        live: LiveSink | None = None,
        block_envelopes: bool = False,
    ) -> None:
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
        #: False in a track process: it restores flights per partition as it acquires them
        self.restore_open_flights = restore_open_flights
        #: How a shard restarted after a crash gets its open flights back, before it reads on
        #: (so ahead of the inputs queued for it); returns how many. A track sets its own: the
        #: flights of the partitions it owns (`soar.split.PartitionFeed.rebuild_shard`).
        self.rebuild_shard: Callable[[int], Awaitable[int]] | None = (
            self.restore_shard if restore_open_flights else None)
        self.sources = list(live_sources(settings) if sources is None else sources)
        if self.hold_open and not self.sources and sources is None:
            log.warning("pipeline.no_feeds", hint="set SOAR_APRS_SERVER, SOAR_BEAST_SERVERS or "
                        "SOAR_SBS_SERVERS; `soar replay FILE` feeds captures")
        size = settings.channel_size
        data_dir = Path(settings.data_dir)

        def spill(protocol: Protocol) -> Callable[[trio.MemorySendChannel[Envelope]], OverflowSink]:
            return lambda send: OverflowSink(protocol, send, data_dir / "spool" / "ingest" /
                                             protocol.value, settings.spool_max_bytes)

        self.envelope_edges: dict[Protocol, Edge[Envelope]] = {
            p: Edge[Envelope](f"envelopes.{p.value}", size, EdgePolicy.BLOCK)
            if block_envelopes else
            Edge[Envelope](f"envelopes.{p.value}", size, EdgePolicy.SPILL, spill=spill(p))
            for p in Protocol
        }
        # The raw archive is a record, not the data path: it never slows a feed.
        self.archive_edge = (Edge[Envelope]("archive", size, EdgePolicy.DROP_NEWEST)
                             if settings.archive_raw else None)
        archive_edge = self.archive_edge
        self.sinks: dict[Protocol, EnvelopeSink] = {
            p: edge if archive_edge is None else _Teed(edge, archive_edge)
            for p, edge in self.envelope_edges.items()
        }
        self.dispatch = EnvelopeDispatch(self.sinks)
        self.decoders = {p: Decoder(p) for p in Protocol}

        n = settings.shard_count
        self.shard_edges = [Edge[ShardInput](f"shard.{i}", size) for i in range(n)]
        self.writer_edges: dict[str, Edge[Any]] = {
            "fixes": Edge[Fix]("writer.fixes", size),
            "flights": Edge[FlightRow]("writer.flights", size),
            "aircraft": Edge[AircraftSeen]("writer.aircraft", size),
            "receivers": Edge[StoreRow]("writer.receivers", size),
        }
        #: every edge of the data path by name (what a commit watermark follows)
        self.edges: dict[str, Edge[Any]] = {
            **{edge.name: edge for edge in self.envelope_edges.values()},
            **{edge.name: edge for edge in self.shard_edges},
            **{edge.name: edge for edge in self.writer_edges.values()},
        }
        if self.archive_edge is not None:
            self.edges[self.archive_edge.name] = self.archive_edge

        if live is None:
            from soar.live import LivePublisher

            live = LivePublisher(settings.live_addr)
        self.live: Any = live
        self._families: dict[str, Any] = {
            "fixes": FixFamily(), "flights": FlightFamily(), "aircraft": AircraftFamily(),
            "receivers": ReceiverFamily(),
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
            fixes=self.writer_edges["fixes"].as_sender(),
            flights=self.writer_edges["flights"].as_sender(),
            aircraft=self.writer_edges["aircraft"].as_sender(),
            live=live.offer, tow=self.tow.offer,
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
        from soar.tracking.metrics import FIXES_REJECTED, FLIGHTS_OPENED

        # Counters are process-wide: a summary reports what changed since this pipeline began.
        self.committed: CounterDict[str] = CounterDict()
        self.commit_hooks: list[Callable[[CommitReport], None]] = []
        self._flights_at_start = counter_total(FLIGHTS_OPENED)
        self._rejects_at_start = _counts_by_label(FIXES_REJECTED, "reason")
        self._drain_requested = trio.Event()
        self._database_answers = True
        self._core_done = trio.Event()
        self.topology: Topology | None = None
        self.stages = self._declare()

    # -- the declaration ----------------------------------------------------------------------

    def _declare(self) -> list[Stage]:
        """The data path's stages, in the order they are started (consumers first)."""
        transient = RestartPolicy.TRANSIENT
        shard_edges: list[Edge[Any]] = list(self.shard_edges)
        writer_edges = self.writer_edges
        stages = [
            Stage("writers", [ChildSpec(f"writer.{name}", functools.partial(self._write, name),
                                        transient) for name in writer_edges]),
            Stage("live", [ChildSpec("live.publisher", self.live.run)]),
            Stage("tow", [ChildSpec("tow", functools.partial(
                self.tow.run, [edge.as_sender() for edge in self.shard_edges], self.local_shard),
                transient)]),
            Stage("shards", [ChildSpec(f"shard.{i}", functools.partial(self._run_shard, i),
                                       transient) for i in range(len(self.shards))],
                  outputs=[writer_edges["fixes"], writer_edges["flights"],
                           writer_edges["aircraft"]],
                  then=[self._stop_stage("live"), self.tow.close]),
            Stage("decoders", [ChildSpec(f"decoder.{p.value}", functools.partial(self._decode, p),
                                         transient) for p in Protocol],
                  outputs=[*shard_edges, writer_edges["receivers"]]),
            Stage("spools", [ChildSpec(f"spool.{p.value}", edge.spill.drain)
                             for p, edge in self.envelope_edges.items()
                             if edge.spill is not None]),
            Stage("sources", [ChildSpec("feed", self._feed, transient, subtree=self.sources_sup)],
                  outputs=[*self.envelope_edges.values(),
                           *([self.archive_edge] if self.archive_edge is not None else [])]),
        ]
        if self.archive_edge is not None:
            from soar.ingest.archive import RawArchive

            archive = RawArchive(Path(self.settings.data_dir) / "archive")
            # Optional: an archive that keeps failing (a full or read-only disk) is stopped and
            # reported; the live data path does not depend on it.
            stages.append(Stage("archive", [ChildSpec(
                "archive", functools.partial(self._archive, archive), transient)],
                essential=False))
        maintenance = [ChildSpec("partitions", self._maintain_partitions),
                       ChildSpec("database.probe", self._probe_database)]
        if self.settings.ddb_url:
            # a download that keeps failing leaves the last imported database in use
            maintenance.append(ChildSpec("ddb.refresh", self._refresh_ddb, essential=False))
        from soar.database import embedded_supervisor

        # the embedded PostgreSQL this process started (none with SOAR_DATABASE_URL)
        if (supervise := embedded_supervisor(self.database_url)) is not None:
            maintenance.append(ChildSpec("database.embedded", supervise))
        stages.append(Stage("maintenance", maintenance))
        core = [stage for stage in stages if stage.name in _CORE]
        ended: set[str] = set()

        def core_stage_ended(name: str) -> None:
            ended.add(name)
            if len(ended) == len(core):
                self._core_done.set()
                self._stop_stage("maintenance")()
                self._stop_stage("spools")()

        for stage in core:
            stage.then.append(functools.partial(core_stage_ended, stage.name))
        return stages

    def _stop_stage(self, name: str) -> Callable[[], None]:
        def stop() -> None:
            for stage in self.stages:
                if stage.name == name:
                    stage.stop()
        return stop

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create the writers, open the spools and give every shard its open flights
        back (blocking parts in threads)."""
        from soar.store.writer import StoreWriter, open_pool

        data_dir = Path(self.settings.data_dir)
        self.pool = await trio.to_thread.run_sync(open_pool, self.database_url)
        for name, family in self._families.items():
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
        from soar.ddb import load_privacy, tow_ids_for

        self.privacy.replace(await trio.to_thread.run_sync(load_privacy, self.database_url))
        self.tow.detector.tow_ids = await trio.to_thread.run_sync(
            tow_ids_for, self.database_url, self.settings.tow_registrations
        )
        for edge in self.envelope_edges.values():
            if edge.spill is not None:
                await trio.to_thread.run_sync(edge.spill.open)
        if not self.restore_open_flights:
            return
        # Live feeds run on the wall clock: a flight silent for an hour is over. A replay's fix
        # clock is the capture's recorded time: the first replayed fix decides, so a replay run
        # again after SIGTERM continues the flights it left open instead of duplicating them.
        restored = await self._restore(
            range(len(self.shards)), now_us=wall_clock_us() if self.hold_open else None
        )
        if restored:
            log.info("pipeline.flights_restored", flights=restored)

    async def _restore(
        self, shards: range | list[int], now_us: int | None,
        aircraft: Callable[[int], bool] | None = None,
    ) -> int:
        """Give shards (not running) the open flights of their aircraft (those `aircraft`
        selects) from the database; flights whose last fix is more than 1 h before `now_us`
        are closed as timed out by the shard."""
        selected = set(shards)
        local = self.local_shard

        def wanted(ident: int) -> bool:
            return local(ident) in selected and (aircraft is None or aircraft(ident))

        async def restore(found: list[Any]) -> None:
            by_shard: dict[int, list[Any]] = {}
            for item in found:
                by_shard.setdefault(local(item.flight.aircraft_id), []).append(item)
            for index, items in by_shard.items():
                self.shards[index].restore(items)
            await trio.lowlevel.checkpoint()

        restored = await self.load_open_flights(wanted, restore)
        for index in shards:
            self.shards[index].restore([], now_us=now_us)  # the wall clock judges them all
        return restored

    async def load_open_flights(
        self, aircraft: Callable[[int], bool], take: Callable[[list[Any]], Awaitable[None]],
    ) -> int:
        """Hand `take` the open flights of the aircraft `aircraft` selects, from the database,
        with what a restored machine keeps of their fixes; how many flights.

        A chunk of flights at a time: a machine keeps only its last `RESTORE_FIXES` fixes,
        so loading every flight's fixes first would hold thousands of flights' history at
        once (6,314 open flights made a restart take 559 MB).
        """
        from soar.store.queries import open_flight_rows, with_last_fixes

        def rows() -> list[FlightRow]:
            with self.pool.connection() as conn:
                return open_flight_rows(conn)

        def load(chunk: list[FlightRow]) -> list[Any]:
            with self.pool.connection() as conn:
                return with_last_fixes(conn, chunk, last_fixes=RESTORE_FIXES,
                                       last_positions=RESTORE_POSITIONS)

        # selected here, not in the thread: `aircraft` may read state of this trio thread
        flights = [f for f in await trio.to_thread.run_sync(rows) if aircraft(f.aircraft_id)]
        for start in range(0, len(flights), RESTORE_CHUNK):
            await take(await trio.to_thread.run_sync(load, flights[start:start + RESTORE_CHUNK]))
        return len(flights)

    async def restore_shard(self, index: int, aircraft: Callable[[int], bool] | None = None) -> int:
        """Give shard `index`, restarted and not yet reading, the open flights of its aircraft
        (those `aircraft` selects) from the database: once the writers have committed the
        fixes and flights sent to them before now, so that it reads back all the crashed
        shard emitted (a flight opened a moment ago, not yet written, would be opened again)."""
        from soar.watermark import CommitWatermark, Flow

        written = [Flow(name, self.writer_edges[name].sent_count,
                        functools.partial(_settled, self.writers[name]))
                   for name in ("fixes", "flights")]
        await CommitWatermark([written], _nothing_to_settle).advance()
        return await self._restore([index], now_us=None, aircraft=aircraft)

    async def close(self) -> None:
        if self.pool is not None:
            await trio.to_thread.run_sync(self.pool.close)
            self.pool = None

    def declare(self, role: str, extra: Sequence[Stage] = ()) -> Topology:
        """The process of `role`: this data path's stages and `extra` under one root (the
        tree `tree()` shows from now on)."""
        self.topology = Topology(role, [*self.stages, *extra])
        return self.topology

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The data path alone under a root of its own, until it has drained (a library
        caller's or a test's; a role declares its own stages beside these: `declare`)."""
        assert self.writers, "open() first"
        topology = self.declare("pipeline")
        task_status.started()
        await topology.run()

    async def _feed(self) -> None:
        await self.sources_sup.run()
        if self.hold_open:
            await self._drain_requested.wait()
        # Sources ended (a replay finished, or drain() stopped them): hand over what is
        # spooled; the stage then closes the envelope edges so the decoders finish.
        self._stop_stage("spools")()
        for edge in self.envelope_edges.values():
            if edge.spill is not None:
                await edge.spill.flush()

    async def drain(self) -> None:
        """Stop the sources and wait until everything they produced is committed."""
        self._drain_requested.set()
        self.sources_sup.stop()
        await self._core_done.wait()

    async def wait_finished(self) -> None:
        """For replays: wait until the sources have ended by themselves and all is committed."""
        await self._core_done.wait()

    async def shard_input(self, index: int, item: ShardInput) -> None:
        """Hand shard `index` a control input (in its order with the decoders' inputs)."""
        await self.shard_edges[index].send(item)

    # -- stage bodies --------------------------------------------------------------------------

    async def _decode(self, protocol: Protocol) -> None:
        decoder = self.decoders[protocol]
        receive = self.envelope_edges[protocol].receiver()
        shard_edges = self.shard_edges
        store = self.writer_edges["receivers"]
        local = self.local_shard
        last_tick_us = 0
        try:
            # A trio checkpoint costs ~10 µs: take what is already buffered and hand it on
            # without one per message, and wait (await) only when an edge is empty or full.
            while (env := await receive_buffered(receive)) is not None:
                if env.received_us - last_tick_us >= TICK_EVERY_US:
                    # The fix clock reaches every shard, so a shard with no traffic still times
                    # its flights out.
                    last_tick_us = env.received_us
                    for tick_edge in shard_edges:
                        await tick_edge.send(ClockTick(env.received_us))
                decoded = decoder.decode(env)
                for ident, item in decoded.shard_items:
                    edge = shard_edges[local(ident)]
                    try:
                        edge.channel.send_nowait(item)
                    except trio.WouldBlock:
                        await edge.channel.send(item)
                    edge.sent += 1
                for row in decoded.store_rows:
                    await store.send(row)
                if decoder.messages % 256 == 0:
                    await trio.lowlevel.checkpoint()  # let the other protocols and shards run
            for row in decoder.flush_receivers():
                await store.send(row)
        finally:
            receive.close()

    def local_shard(self, ident: int) -> int:
        """This process's shard for aircraft `ident`."""
        return shard_of(ident, len(self.shards))

    async def _run_shard(self, index: int) -> None:
        if self._shard_started[index]:
            # A restart after a crash: the in-memory state may be what crashed, so start clean
            # from what the database has (once the rows it emitted are committed), before the
            # inputs queued for it: the shard loses only what it held and had not emitted.
            self.shards[index].reset()
            if self.rebuild_shard is not None:
                restored = await self.rebuild_shard(index)
                log.warning("shard.rebuilt", shard=index, flights=restored)
        self._shard_started[index] = True
        # Its own receive end, so that a crashed shard closing it does not close the edge the
        # decoders send to; the restarted shard reads on from where the other stopped.
        receive = self.shard_edges[index].receiver()
        try:
            await self.shards[index].run(receive.as_channel(), self.shard_sinks)
        finally:
            receive.close()

    async def _write(self, name: str) -> None:
        receive = self.writer_edges[name].receiver()
        try:
            await self.writers[name].run(receive.as_channel())
        finally:
            receive.close()

    async def _archive(self, archive: Any) -> None:
        assert self.archive_edge is not None
        receive = self.archive_edge.receiver()
        try:
            await archive.run(receive.as_channel())
        finally:
            receive.close()

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

    # -- what the web side shows ---------------------------------------------------------------

    def tree(self) -> dict[str, Any]:
        """The supervision tree this pipeline runs in (its own root when run alone)."""
        if self.topology is not None:
            return self.topology.tree()
        return {stage.name: stage.supervisor.tree() for stage in self.stages}

    def database_ready(self) -> bool:
        return (self._database_answers and bool(self.writers)
                and all(w.healthy for w in self.writers.values()))


def _settled(writer: StoreWriter[Any]) -> int:
    return writer.settled


async def _nothing_to_settle(_items: list[None]) -> None:
    """A mark that waits and acknowledges nothing."""


def counter_total(counter: Any) -> float:
    """The sum over all label sets of a prometheus Counter."""
    return float(sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total")))


def _counts_by_label(counter: Any, label: str) -> dict[str, float]:
    return {
        s.labels[label]: s.value
        for m in counter.collect() for s in m.samples if s.name.endswith("_total")
    }
