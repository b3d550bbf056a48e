"""A shard owner task: the only place its aircraft's state is read or written.

Inputs arrive on one trio receive channel (fixes, raw Mode S, SBS messages, clock ticks). For
each, the shard decodes (one Mode S and one SBS accumulator per shard), computes AGL, runs the
aircraft's `FlightStateMachine`, and emits what the events ask for. It never awaits the
database, never holds a lock and never shares a dict with another task.

Sinks and what happens when one is full:

* `fixes`, `flights`, `aircraft` (the store writer): backpressure. The shard tries
  `send_nowait` and, when the channel is full, counts `soar_shard_sink_backpressure_total`
  and awaits `send`; the shard slows to the writer's pace and its own input channel fills,
  which is what the pipeline upstream measures and spills. The writer never stops draining
  (it spools to disk while the database is down), so the wait is bounded by its batch time.
* `live` (the publisher): a plain synchronous callable that never blocks
  (`LivePublisher.offer`, which drops its own oldest fix when full). Should it raise, the fix
  is dropped and counted in `soar_shard_sink_dropped_total{sink="live"}`, and the shard goes
  on. Stealth fixes are never handed to it.
* Enrichment requests: never block; dropped and counted when the enricher is saturated.

Every fix carries its own time (when the aircraft was there) and its receive time. The rules
use the own time, in order: each aircraft's `OrderedTrack` merges late and reordered fixes
(`soar.tracking.ordered`). The shard's clock is the receive clock: the newest receive time it
has processed (or a `ClockTick`). Every `sweep_every_us` of that clock the shard sweeps its
aircraft: timeouts of aircraft silent for an hour, due enrichment, expiry of idle aircraft.
Per-fix work is O(1) for fixes in order; the O(aircraft) sweep runs once a minute.
`soar_fix_delay_seconds{protocol}` is the receive time minus the own time of each accepted fix.

The receive clock is the host's wall clock, which can step. An input received more than
`CLOCK_STEP_US` (5 min) after the shard's clock is held until the next receive times tell: go
on from there for `CLOCK_CONFIRM_US` (10 s) and the clock really moved (the held inputs are
processed, `soar_shard_clock_steps_total{outcome="followed"}`); come back and the host clock
stepped (the held fixes are rejected as `clock_step`, `outcome="ignored"`); or the sources that
did not jump bring the clock within 5 min of the held time (a replay reads each capture at its
own pace), and the held inputs are processed too. So a +10 y step of
a few seconds, or one line of a replay stamped in 2036, times out and opens no flight and does
not leave the fixes after it late. A fix whose own time is more than `AHEAD_US` (10 s) after
its receive time is rejected as `time_ahead`.

When the input ends (a drained pipeline), enrichment still waiting for its ±20 s window is
requested at once and its results are applied before the last rows are written: the last
landing of a replay gets its airport.

An input whose processing raises is quarantined: logged with its raw content, counted in
`soar_shard_quarantined_total`, and the shard goes on with the next one.

May import: soar.channels, soar.log, soar.protocols, soar.records, soar.tracking.agl,
soar.tracking.enrichment, soar.tracking.flight, soar.tracking.inputs, soar.tracking.metrics,
soar.tracking.ordered, soar.tracking.privacy, soar.tracking.tow
"""

from __future__ import annotations

import copy
import uuid
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import trio
from prometheus_client import Histogram

from soar.channels import receive_buffered
from soar.log import RateLimited
from soar.records import (
    AddressType,
    AircraftSeen,
    Fix,
    FlightRow,
    Rejected,
    aircraft_id,
    aircraft_key_of_id,
    position_time,
)
from soar.records import Protocol as Feed
from soar.tracking.agl import AglCalculator
from soar.tracking.enrichment import Enricher, EnrichFn, EnrichmentResult, airport_enrich
from soar.tracking.flight import (
    ACCEPTED_HISTORY,
    HOUR,
    MINUTE,
    SECOND,
    SPLIT_MAX_GAP_US,
    AcceptedHistory,
    EnrichmentDue,
    Event,
    FixAccepted,
    FixDropped,
    FixLate,
    FixRevised,
    FlightClosed,
    FlightOpened,
    FlightStateMachine,
    FlightUpdated,
    Opening,
)
from soar.tracking.inputs import (
    ClockTick,
    ForgetAircraft,
    ModeSInput,
    OpenFlightLike,
    Restorable,
    RestoreFlights,
    SbsInput,
    ShardInput,
    TowRelease,
)
from soar.tracking.metrics import (
    CLOCK_STEPS,
    ENRICHMENT,
    FIXES_PROCESSED,
    FIXES_REJECTED,
    FLIGHTS_CLOSED,
    FLIGHTS_OPENED,
    FLIGHTS_RESUMED,
    LATE_FIXES,
    SHARD_AIRCRAFT,
    SHARD_QUARANTINED,
    SINK_BACKPRESSURE,
    SINK_DROPPED,
)
from soar.tracking.ordered import OrderedTrack
from soar.tracking.privacy import PrivacyRegistry
from soar.tracking.tow import LaunchFix, in_launch_window

if TYPE_CHECKING:
    from soar.protocols.modes import ModeSAccumulator
    from soar.protocols.sbs import SbsAccumulator

log = structlog.get_logger(__name__)

_CHECKPOINT_EVERY = 256
#: a receive time this far past the shard's clock is a jump: held until the next ones confirm
#: it (below the 1 h timeout and the 30 min split, so a step that gets through cannot do harm
#: and one that could is held)
CLOCK_STEP_US = 5 * MINUTE
CLOCK_CONFIRM_US = 10 * SECOND
#: seconds (trio's clock) without any input after which held inputs are processed
HELD_QUIET_S = 30.0
#: a restore's `now_us` further than this past the newest restored fix is a jumped wall clock
RESTORE_TRUST_US = 24 * HOUR
#: a fix whose own time is this far after its receive time is rejected (`time_ahead`): no
#: aircraft reports from the future, and one such fix would split its flight. The OGN and SBS
#: decoders allow the same (`FUTURE_TOLERANCE_US`) for clocks that disagree by a second or
#: two; here it also bounds what Beast counters and fixes from other processes may claim
AHEAD_US = 10 * SECOND
LANDED_MEMORY_US = 48 * HOUR

FIX_DELAY = Histogram(
    "soar_fix_delay_seconds",
    "Receive time minus the position's own time of accepted fixes",
    ["protocol"],
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400),
)
_FIX_DELAY = {protocol: FIX_DELAY.labels(protocol.value) for protocol in Feed}


LiveFn = Callable[[Fix], None]
"""Hands one fix to the live publisher; must never block (`LivePublisher.offer`)."""


def _accept_positions(
    accepted: AcceptedHistory, times: list[int], lats: list[float], lons: list[float]
) -> None:
    """Merge restored fix positions into a restored machine's accepted history (the fixes it
    was restored with win a tie, as `AcceptedHistory.add` keeps the first)."""
    known = dict(zip(accepted.times, zip(accepted.lats, accepted.lons, strict=True), strict=True))
    for t, lat, lon in zip(times, lats, lons, strict=True):
        known.setdefault(t, (lat, lon))
    merged = sorted(known.items())[-ACCEPTED_HISTORY:]
    accepted.times = array("q", [t for t, _ in merged])
    accepted.lats = array("d", [p[0] for _, p in merged])
    accepted.lons = array("d", [p[1] for _, p in merged])


@dataclass(slots=True)
class ShardSinks:
    fixes: trio.MemorySendChannel[Fix]
    flights: trio.MemorySendChannel[FlightRow]
    aircraft: trio.MemorySendChannel[AircraftSeen]
    live: LiveFn | None = None
    #: hands the fixes of aircraft in their first minutes after a takeoff to the tow
    #: detector (`TowService.offer`); must never block
    tow: Callable[[LaunchFix], None] | None = None


@dataclass(slots=True)
class _Aircraft:
    track: OrderedTrack
    seen_sent_us: int = -(1 << 62)
    unsent: Fix | None = None  # newest fix not yet reported as AircraftSeen

    @property
    def machine(self) -> FlightStateMachine:
        return self.track.machine  # replaced when a late fix is merged: never keep it


def aircraft_seen(fix: Fix) -> AircraftSeen:
    """The `aircraft` row a fix makes: the aircraft seen there, then, as its first sighting
    (the store keeps the earliest `first_seen_us` and the newest position)."""
    return AircraftSeen(
        aircraft_id=fix.aircraft_id,
        address_type=fix.address_type,
        address=fix.address,
        last_fix_us=fix.time_us,
        lat=fix.lat,
        lon=fix.lon,
        altitude_ft=fix.altitude_ft,
        aircraft_type=fix.aircraft_type,
        callsign=fix.callsign,
        protocol=fix.protocol,
        stealth=fix.stealth,
        category=fix.category,
        first_seen_us=fix.time_us,
    )


class Shard:
    def __init__(
        self,
        index: int = 0,
        sinks: ShardSinks | None = None,
        *,
        agl: AglCalculator | None = None,
        enrich: EnrichFn | None = None,
        enrich_timeout_s: float = 5.0,
        enrich_queue: int = 1000,
        enrich_concurrency: int = 4,
        sweep_every_us: int = 60 * SECOND,
        seen_every_us: int = 10 * SECOND,
        expire_us: int = SPLIT_MAX_GAP_US,
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
        modes_reference: tuple[float, float] | None = None,
        privacy: PrivacyRegistry | None = None,
    ) -> None:
        self.index = index
        self.label = str(index)
        self.sinks = sinks
        self.agl = agl or AglCalculator()
        self.enricher = Enricher(
            enrich or airport_enrich(self.agl.airports), enrich_timeout_s, enrich_concurrency
        )
        self.enrich_queue = enrich_queue
        self.sweep_every_us = sweep_every_us
        self.seen_every_us = seen_every_us
        self.expire_us = expire_us
        self.new_id = new_id
        self.modes_reference = modes_reference
        self.privacy = privacy or PrivacyRegistry()
        self.quarantined = 0
        self._ahead_log = RateLimited(log)
        self.runs = 0  # how many times `run` has started: > 0 before a restart
        self._requests: trio.MemorySendChannel[EnrichmentDue] | None = None
        self._processed = 0
        self.reset()

    def reset(self) -> None:
        """Forget every aircraft, decoder and pending row: the state after a crash is suspect.

        A supervisor restarting a crashed shard calls `reset()`, then `restore()` with the
        shard's open flights read back from the database, then `run()` again.
        """
        self.clock_us = 0
        self._held: list[ShardInput] = []  # inputs after a jump of the receive clock
        self._held_sources: set[str] = set()  # the sources they came from
        self._held_from_us = 0
        self.aircraft: dict[int, _Aircraft] = {}
        self._next_sweep_us = 0
        self._backlog: list[Event] = []
        self._modes: ModeSAccumulator | None = None
        self._sbs: SbsAccumulator | None = None
        self._seen_outbox: list[AircraftSeen] = []  # last positions of expired aircraft
        #: aircraft shown without identity: never named in a log line either
        self._anonymous: set[int] = set()
        # aircraft expired from memory after a landing: known to be on the ground, so their
        # next flight may start with a takeoff out of coverage (see flight.py)
        self._landed: dict[int, int] = {}
        self._next_landed_prune_us = 0
        SHARD_AIRCRAFT.labels(self.label).set(0)

    def holds(self, ident: int) -> bool:
        """Whether this shard keeps anything of aircraft `ident`: track, landing memory, or
        (ADS-B) decoder state."""
        if ident in self.aircraft or ident in self._landed:
            return True
        address_type, address = aircraft_key_of_id(ident)
        if address_type is not AddressType.ICAO:
            return False
        return (self._modes is not None and self._modes.aircraft(address) is not None) or (
            self._sbs is not None and address in self._sbs
        )

    # ------------------------------------------------------------------------- restore

    def restore(
        self,
        open_flights: Iterable[Restorable],
        now_us: int | None = None,
    ) -> None:
        """Take back the open flights of this shard's aircraft after a restart.

        Each item is an open flight and its last fixes (any order; a few minutes' worth is
        plenty), as a `(row, fixes)` pair or an object with `.flight` and `.fixes` (what
        `soar.store.queries.open_flights` returns), whose `.positions` (times, latitudes,
        longitudes), when it has them, reach the duplicate rules for late fixes further back
        than the fixes do. With `now_us`, flights whose last fix is
        1 h or more before it are closed as timed out at once; the others resume. Without it,
        the shard's fix clock decides at its first sweep (run on the first input), exactly as
        if it had never stopped. The resulting rows are emitted when `run` starts.

        `now_us` is the host's wall clock, which may have jumped: more than
        `RESTORE_TRUST_US` past the newest restored fix it is not used (nothing the first
        input would not decide as well), so a clock ten years ahead at start times nothing
        out and cannot drag the shard's clock along.

        Thousands of flights come back in parts (their fixes need not all be in memory at
        once): restore each part without `now_us`, then call `restore([], now_us)`, which
        judges every flight restored so far as one call with all of them would.
        """
        for item in open_flights:
            self._restore_one(item)
        # every aircraft held, not only this call's: a restart restores in parts
        now = self._trusted_now(now_us, list(self.aircraft.values()))
        if now is not None:
            self.clock_us = max(self.clock_us, now)
            self._backlog.extend(self._sweep())

    def _trusted_now(self, now_us: int | None, restored: list[_Aircraft]) -> int | None:
        if now_us is None or not restored:
            return None
        newest = max(state.machine.last_received_us for state in restored)
        if now_us - newest <= RESTORE_TRUST_US:
            return now_us
        log.warning(
            "shard.restore_clock_ignored", shard=self.index, now_us=now_us, newest_us=newest
        )
        return None

    def _restore_one(self, item: Restorable) -> _Aircraft | None:
        row, fixes = (item.flight, item.fixes) if isinstance(item, OpenFlightLike) else item
        if not row.is_open:
            return None
        machine = FlightStateMachine.restore(row, list(fixes), self.new_id, self.agl.airports)
        positions = getattr(item, "positions", None)
        if positions is not None:
            _accept_positions(machine.accepted, *positions)
        state = self.aircraft[row.aircraft_id] = _Aircraft(OrderedTrack(machine))
        log.debug("shard.restored_flight", shard=self.index, flight=str(row.id))
        return state

    def _restore_flights(self, item: RestoreFlights) -> list[Event]:
        """Some aircraft taken over while running: what this shard held of them is replaced."""
        restored: list[_Aircraft] = []
        for flight in item.flights:
            row = flight.flight if isinstance(flight, OpenFlightLike) else flight[0]
            self.aircraft.pop(row.aircraft_id, None)
            self._landed.pop(row.aircraft_id, None)
            state = self._restore_one(flight)
            if state is not None:
                restored.append(state)
        events: list[Event] = []
        now = self._trusted_now(item.now_us, restored)
        if now is not None:
            # only these aircraft: the others are judged by this shard's own clock
            for state in restored:
                events.extend(state.track.on_clock(now))
        SHARD_AIRCRAFT.labels(self.label).set(len(self.aircraft))
        return events

    def _forget(self, owned: Callable[[int], bool]) -> list[Event]:
        """Give aircraft back: their latest rows first, so the next owner restores them."""
        events: list[Event] = []
        for ident in [ident for ident in self.aircraft if owned(ident)]:
            self._anonymous.discard(ident)
            state = self.aircraft.pop(ident)
            events.extend(state.track.handover())
            if state.unsent is not None:
                self._seen_outbox.append(aircraft_seen(state.unsent))
        self._landed = {ident: t for ident, t in self._landed.items() if not owned(ident)}

        def icao_owned(address: int) -> bool:
            return owned(aircraft_id(AddressType.ICAO, address))

        if self._modes is not None:
            self._modes.forget(icao_owned)
        if self._sbs is not None:
            self._sbs.forget(icao_owned)
        SHARD_AIRCRAFT.labels(self.label).set(len(self.aircraft))
        return events

    # ------------------------------------------------------------------------- processing

    def process(self, item: ShardInput) -> list[Event]:
        """All the state changes one input causes; synchronous, no I/O.

        An input received more than `CLOCK_STEP_US` after the shard's clock is held back
        until the receive times that follow say whether the clock really moved (they go on
        from there for `CLOCK_CONFIRM_US`: all held inputs are processed) or the host clock
        stepped and came back (a source with held inputs is read at the old time again: the
        held fixes and messages are rejected as `clock_step`, counted; held control inputs
        are still processed). One wrong time must not time out or split every flight, and
        the fixes after it must not all be late.

        Only a source that jumped can say it came back: a live host clock steps for every
        source at once, while a replay of captures from different days reads each on its own
        clock, and one of them must not make the other's jump look like a step.
        """
        received = _receive_time(item)
        if self._held:
            return self._while_held(item, received)
        if received is not None and self.clock_us and received > self.clock_us + CLOCK_STEP_US:
            self._hold(item, received)
            return []
        return self._process(item)

    def _hold(self, item: ShardInput, received: int | None) -> None:
        if not self._held and received is not None:
            self._held_from_us = received
        self._held.append(item)
        source = _source(item)
        if source is not None:
            self._held_sources.add(source)

    def _while_held(self, item: ShardInput, received: int | None) -> list[Event]:
        if received is None:  # a control input keeps its place among the held ones
            self._hold(item, received)
            return []
        if self._held_from_us <= self.clock_us + CLOCK_STEP_US:
            # Sources that never jumped moved the clock up to the held time (a replay reads
            # each capture at its own pace): no jump is left to judge, and the next input of
            # the source ahead must not look like it came back.
            events = self.release_held()
            events.extend(self.process(item))
            return events
        source = _source(item)
        stepped_back = source is None or source in self._held_sources
        if received <= self.clock_us + CLOCK_STEP_US:  # the time before the jump
            if not stepped_back or (source is None and self._held_sources):
                return self._process(item)  # a source that never jumped, or a tick
            events = self._drop_held(received)
            events.extend(self._process(item))
            return events
        if received < self._held_from_us - CLOCK_STEP_US and source in self._held_sources:
            # a jumping source, back before its jump yet after the clock: a new jump
            events = self._drop_held(received)
            self._hold(item, received)
            return events
        self._hold(item, received)
        if received - self._held_from_us >= CLOCK_CONFIRM_US:
            return self.release_held()
        return []

    def release_held(self) -> list[Event]:
        """Process the inputs held back at a jump of the receive clock: it was real (or the
        input ended without contradicting it)."""
        held, self._held = self._held, []
        self._held_sources.clear()
        if not held:
            return []
        CLOCK_STEPS.labels("followed").inc()
        # at debug: a replay of a capture with gaps follows one at every gap (the metric
        # counts them); a step that came back is the one an operator must hear of
        log.debug(
            "shard.clock_jump_followed",
            shard=self.index,
            from_us=self.clock_us,
            to_us=self._held_from_us,
            inputs=len(held),
        )
        return self._process_all(held)

    def _drop_held(self, back_us: int) -> list[Event]:
        held, self._held = self._held, []
        self._held_sources.clear()
        rejected = 0
        controls: list[ShardInput] = []
        for item in held:
            if isinstance(item, ClockTick):
                continue
            if _receive_time(item) is None:
                controls.append(item)
            else:
                rejected += 1
        if rejected:
            FIXES_REJECTED.labels("clock_step").inc(rejected)
        CLOCK_STEPS.labels("ignored").inc()
        log.warning(
            "shard.clock_step_ignored",
            shard=self.index,
            clock_us=self.clock_us,
            step_to_us=self._held_from_us,
            back_us=back_us,
            rejected=rejected,
        )
        return self._process_all(controls)

    def _process_all(self, items: list[ShardInput]) -> list[Event]:
        """Inputs processed inside another's turn: each one quarantined on its own."""
        events: list[Event] = []
        for item in items:
            try:
                events.extend(self._process(item))
            except Exception as exc:
                self._quarantine(item, exc)
        return events

    def _quarantine(self, item: ShardInput, exc: Exception) -> None:
        self.quarantined += 1
        SHARD_QUARANTINED.labels(self.label).inc()
        raw = _raw(item)
        if isinstance(item, Fix) and (
            item.stealth or item.no_track or item.anonymous or item.aircraft_id in self._anonymous
        ):
            raw = f"a {item.protocol.value} fix of an aircraft that must not be identified"
        log.error("shard.quarantined", shard=self.index, error=repr(exc), raw=raw, exc_info=True)

    def _named(self, ident: int) -> dict[str, str]:
        """The aircraft for a log line, unless it must not be identified (stealth, DDB): then
        the line names only its flight, an id that says nothing about who flew."""
        return {} if ident in self._anonymous else {"aircraft": f"{ident:08x}"}

    def _process(self, item: ShardInput) -> list[Event]:
        if isinstance(item, Fix):
            return self._fix(item)
        if isinstance(item, ModeSInput):
            # the accumulator pairs CPR frames by their own (counter) times
            accumulator = self._modes_accumulator()
            time_us = item.time_us or item.received_us
            decoded = accumulator.feed(
                item.message, time_us, item.source, item.signal_db, item.remainder
            )
            if isinstance(decoded, Fix):
                decoded.time_us = time_us
                decoded.received_us = item.received_us
                state = accumulator.aircraft(decoded.address)
                if state is not None:
                    decoded.category = state.emitter_category
            return self._decoded(decoded, item.received_us)
        if isinstance(item, SbsInput):
            return self._decoded(
                self._sbs_accumulator().feed(
                    item.msg, item.received_us, item.source, item.time_us or item.received_us
                ),
                item.received_us,
            )
        if isinstance(item, ClockTick):
            return self._advance(item.now_us)
        if isinstance(item, TowRelease):
            return self._tow(item)
        if isinstance(item, RestoreFlights):
            return self._restore_flights(item)
        if isinstance(item, ForgetAircraft):
            return self._forget(item.owned)
        raise TypeError(f"not a shard input: {type(item).__name__}")

    def _modes_accumulator(self) -> ModeSAccumulator:
        if self._modes is None:
            from soar.protocols.modes import ModeSAccumulator

            # Surface pairs with no track or receiver nearby are placed by the airport they
            # are at (the four CPR candidates are 90 degrees apart: only one can be near one).
            airports = self.agl.airports
            self._modes = ModeSAccumulator(
                self.modes_reference,
                airports=airports.nearest if airports is not None else None,
            )
        return self._modes

    def _sbs_accumulator(self) -> SbsAccumulator:
        if self._sbs is None:
            from soar.protocols.sbs import SbsAccumulator

            self._sbs = SbsAccumulator()
        return self._sbs

    def _decoded(self, decoded: Fix | Rejected | None, received_us: int) -> list[Event]:
        if isinstance(decoded, Fix):
            return self._fix(decoded)
        if isinstance(decoded, Rejected):
            FIXES_REJECTED.labels(decoded.reason).inc()
        return self._advance(received_us)

    def _tow(self, release: TowRelease) -> list[Event]:
        state = self.aircraft.get(release.glider_aircraft_id)
        if state is None:
            log.warning("shard.tow_for_unknown_aircraft", flight=str(release.flight_id))
            return []
        return state.track.apply_tow(
            release.flight_id,
            release.tow_aircraft_id,
            release.release_us,
            release.altitude_ft,
            release.height_ft,
        )

    def _fix(self, fix: Fix) -> list[Event]:
        if position_time(fix) - fix.received_us > AHEAD_US:
            FIXES_REJECTED.labels("time_ahead").inc()
            # one line a minute per protocol (a receiver with a wrong clock repeats it); no
            # aircraft named: it may be one that must not be identified
            self._ahead_log.log(
                fix.protocol,
                "warning",
                "shard.fix_time_ahead",
                shard=self.index,
                protocol=fix.protocol.value,
                source=fix.source,
                ahead_s=(fix.time_us - fix.received_us) / 1e6,
            )
            return self._advance(fix.received_us)
        ident = fix.aircraft_id
        directory = self.privacy.directory
        if fix.no_track or not directory.tracked(ident):
            # privacy: neither stored nor published, and no flight made of it
            FIXES_REJECTED.labels("no_track" if fix.no_track else "ddb_not_tracked").inc()
            return self._advance(fix.received_us)
        if fix.stealth or not directory.identified(ident):
            # stored and shown without identity: the callsign goes before anything keeps it
            # (the flight row, the aircraft row); callsign splits are the price
            fix.anonymous = True
            fix.callsign = None
            self._anonymous.add(ident)
        state = self.aircraft.get(ident)
        if state is None:
            machine = FlightStateMachine(ident, self.new_id, airports=self.agl.airports)
            machine.landed_us = self._landed.pop(ident, None)
            state = self.aircraft[ident] = _Aircraft(OrderedTrack(machine))
        fix.agl_ft = self.agl.agl_ft(fix.lat, fix.lon, fix.altitude_ft)
        events = state.track.on_fix(fix)
        events.extend(self._advance(fix.received_us))
        return events

    def _advance(self, now_us: int) -> list[Event]:
        if now_us > self.clock_us:
            self.clock_us = now_us
        if self.clock_us < self._next_sweep_us:
            return []
        self._next_sweep_us = self.clock_us + self.sweep_every_us
        return self._sweep()

    def _sweep(self) -> list[Event]:
        now = self.clock_us
        events: list[Event] = []
        expired: list[int] = []
        for ident, state in self.aircraft.items():
            events.extend(state.track.on_clock(now))
            state.track.settle(now)
            if state.machine.idle(now, self.expire_us):
                expired.append(ident)
        for ident in expired:
            self._anonymous.discard(ident)
            state = self.aircraft.pop(ident)
            if state.unsent is not None:
                self._seen_outbox.append(aircraft_seen(state.unsent))
            if state.machine.landed_us is not None:
                self._landed[ident] = state.machine.landed_us
        if self._landed and now >= self._next_landed_prune_us:
            self._next_landed_prune_us = now + HOUR
            self._landed = {
                ident: landed
                for ident, landed in self._landed.items()
                if now - landed <= LANDED_MEMORY_US
            }
        if self._modes is not None:
            self._modes.expire(now)
        if self._sbs is not None:
            self._sbs.expire(now)
        SHARD_AIRCRAFT.labels(self.label).set(len(self.aircraft))
        return events

    # ------------------------------------------------------------------------- task

    async def run(
        self, receive: trio.MemoryReceiveChannel[ShardInput], sinks: ShardSinks | None = None
    ) -> None:
        """Process inputs until `receive` closes, then finish enrichment and flush.

        `receive` is never closed here: a crash must not close the channel the decoders send
        to, and a restarted shard reads on from the same one. `sinks` defaults to the ones
        given to the constructor.
        """
        sinks = sinks or self.sinks
        if sinks is None:
            raise TypeError("Shard.run needs sinks (here or in the constructor)")
        self.runs += 1
        request_send, request_receive = trio.open_memory_channel[EnrichmentDue](self.enrich_queue)
        result_send, result_receive = trio.open_memory_channel[EnrichmentResult](self.enrich_queue)
        self._requests = request_send
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.enricher.run, request_receive, result_send)
            backlog, self._backlog = self._backlog, []
            await self._emit(backlog, sinks)  # rows of flights closed by `restore`
            # with a checkpoint every _CHECKPOINT_EVERY inputs instead of one per receive
            while (item := await self._next(receive, sinks)) is not None:
                await self._one(item, sinks)
                self._processed += 1
                if self._processed % _CHECKPOINT_EVERY == 0:
                    await self._apply_results(result_receive, sinks)
                    await trio.lowlevel.checkpoint()
                elif result_receive.statistics().current_buffer_used:
                    await self._apply_results(result_receive, sinks)
            # the input has ended: nothing contradicts a jump of its clock any more
            await self._emit(self.release_held(), sinks)
            # enrichment still waiting for fixes that will not come is asked for now, so its
            # results are applied (and written) before the end
            for state in list(self.aircraft.values()):
                await self._emit(state.track.flush_pending(), sinks)
            await request_send.aclose()
            async with result_receive:
                async for result in result_receive:
                    await self._emit(self._enriched(result), sinks)
        await self._flush(sinks)

    async def _next(
        self, receive: trio.MemoryReceiveChannel[ShardInput], sinks: ShardSinks
    ) -> ShardInput | None:
        """The next input; with inputs held at a clock jump, nothing for `HELD_QUIET_S` (trio's
        clock) decides as the end of input does: nothing contradicts the jump. A quiet
        partition must not keep what it holds (and a control input behind it) for ever."""
        while self._held:
            with trio.move_on_after(HELD_QUIET_S):
                return await receive_buffered(receive)
            await self._emit(self.release_held(), sinks)
        return await receive_buffered(receive)

    @property
    def holding(self) -> int:
        """Inputs taken from the channel but not processed yet (held at a jump of the receive
        clock): a commit watermark must not count them done."""
        return len(self._held)

    async def _one(self, item: ShardInput, sinks: ShardSinks) -> None:
        try:
            events = self.process(item)
        except Exception as exc:
            self._quarantine(item, exc)
            return
        if events or self._seen_outbox:
            await self._emit(events, sinks)

    async def _apply_results(
        self, results: trio.MemoryReceiveChannel[EnrichmentResult], sinks: ShardSinks
    ) -> None:
        while True:
            try:
                result = results.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            await self._emit(self._enriched(result), sinks)

    def _enriched(self, result: EnrichmentResult) -> list[Event]:
        state = self.aircraft.get(result.aircraft_id)
        if state is None:
            return []
        return state.track.apply_enrichment(
            result.flight_id, result.kind, result.airport, result.runway
        )

    async def _flush(self, sinks: ShardSinks) -> None:
        """On a clean end of input: the latest state of open flights and aircraft."""
        for state in self.aircraft.values():
            for event in state.track.handover():
                assert isinstance(event, FlightUpdated)
                await _store(sinks.flights, event.row, "flights")
            if state.unsent is not None:
                await _store(sinks.aircraft, aircraft_seen(state.unsent), "aircraft")
                state.unsent = None

    async def _emit(self, events: list[Event], sinks: ShardSinks) -> None:
        for event in events:
            if isinstance(event, FixAccepted):
                await self._accepted(event.fix, sinks)
            elif isinstance(event, FixLate):
                LATE_FIXES.inc()
                await _store(sinks.fixes, event.fix, "fixes")
            elif isinstance(event, FixRevised):
                # already stored and shown: the store updates its flight and active flag (a
                # copy: the fix itself may still wait in the channel to be inserted)
                revision = copy.copy(event.fix)
                revision.revision = True
                await _store(sinks.fixes, revision, "fixes")
            elif isinstance(event, FixDropped):
                FIXES_REJECTED.labels(event.reason).inc()
            elif isinstance(event, FlightOpened):
                # A resumed flight is the same flight reopened after a coverage gap.
                (FLIGHTS_RESUMED if event.how is Opening.RESUMED else FLIGHTS_OPENED).inc()
                log.debug(
                    "flight.opened",
                    how=event.how,
                    **self._named(event.row.aircraft_id),
                    flight=str(event.row.id),
                    takeoff_us=event.row.takeoff_us,
                )
                await _store(sinks.flights, event.row, "flights")
            elif isinstance(event, FlightUpdated):
                await _store(sinks.flights, event.row, "flights")
            elif isinstance(event, FlightClosed):
                FLIGHTS_CLOSED.labels(event.reason).inc()
                log.debug(
                    "flight.closed",
                    reason=event.reason,
                    **self._named(event.row.aircraft_id),
                    flight=str(event.row.id),
                    landing_us=event.row.landing_us,
                    timed_out_us=event.row.timed_out_us,
                    spurious=event.row.spurious_reason,
                )
                await _store(sinks.flights, event.row, "flights")
            else:
                self._request(event)
        while self._seen_outbox:
            await _store(sinks.aircraft, self._seen_outbox.pop(0), "aircraft")

    async def _accepted(self, fix: Fix, sinks: ShardSinks) -> None:
        FIXES_PROCESSED.labels(fix.protocol.value).inc()
        _FIX_DELAY[fix.protocol].observe((fix.received_us - fix.time_us) / 1e6)
        await _store(sinks.fixes, fix, "fixes")
        if sinks.tow is not None:
            self._offer_launch(fix, sinks.tow)
        if sinks.live is not None and not fix.stealth:
            try:
                sinks.live(fix)
            except Exception as exc:
                # the live view is an extra: its failure must cost this fix's display only
                SINK_DROPPED.labels("live").inc()
                log.warning("shard.live_failed", shard=self.index, error=repr(exc))
        state = self.aircraft.get(fix.aircraft_id)
        if state is None:
            await _store(sinks.aircraft, aircraft_seen(fix), "aircraft")
        elif fix.received_us - state.seen_sent_us >= self.seen_every_us:
            state.seen_sent_us = fix.received_us
            state.unsent = None
            await _store(sinks.aircraft, aircraft_seen(fix), "aircraft")
        else:
            state.unsent = fix

    def _offer_launch(self, fix: Fix, tow: Callable[[LaunchFix], None]) -> None:
        state = self.aircraft.get(fix.aircraft_id)
        if state is None or not state.machine.takeoff_observed:
            return
        row = state.machine.open_flight
        if row is None or row.id != fix.flight_id or not in_launch_window(fix, row.takeoff_us):
            return
        assert row.takeoff_us is not None
        try:
            tow(LaunchFix.of(fix, row.takeoff_us))
        except Exception as exc:
            SINK_DROPPED.labels("tow").inc()
            log.warning("shard.tow_failed", shard=self.index, error=repr(exc))

    def _request(self, request: EnrichmentDue) -> None:
        if self._requests is None:
            return
        try:
            self._requests.send_nowait(request)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            ENRICHMENT.labels("dropped").inc()
            SINK_DROPPED.labels("enrichment").inc()


async def _store(channel: trio.MemorySendChannel[Any], item: object, sink: str) -> None:
    try:
        channel.send_nowait(item)
    except trio.WouldBlock:
        SINK_BACKPRESSURE.labels(sink).inc()
        await channel.send(item)


def _receive_time(item: ShardInput) -> int | None:
    """When an input was received (the receive clock's reading); None for control inputs."""
    if isinstance(item, Fix | ModeSInput | SbsInput):
        return item.received_us
    if isinstance(item, ClockTick):
        return item.now_us
    return None


def _source(item: ShardInput) -> str | None:
    """The feed an input was read from; None for clock ticks and control inputs."""
    if isinstance(item, Fix | ModeSInput | SbsInput):
        return item.source
    return None


def _raw(item: object) -> str:
    if isinstance(item, ModeSInput):
        return item.message.hex()
    return repr(item)[:2000]
