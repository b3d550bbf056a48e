"""The flight state machine of one aircraft: fixes in, flight events out.

Pure: no I/O, no clock. Every rule reads the fixes' own times (`Fix.time_us`: when the
aircraft was there, not when the message arrived), fed in time order; `soar.tracking.ordered`
puts late and reordered fixes in that order first. Receive times count only for silence: a
flight times out when nothing has *arrived* for its aircraft for 1 h (`on_clock` gets the
shard's receive clock), so a backlog delivered hours late is still one flight per flight.
The shard owns one machine per aircraft and turns the returned events into rows and messages.
Every state change goes through `FlightStateMachine.enter`, checked against `TRANSITIONS`, the
table that draws docs/flight-states.md: a change the table does not draw raises
`IllegalTransition` (a bug in the rules, never bad input; the shard quarantines that input).

Rules (DESIGN "Flight state machine"):

* Active (airborne). OGN and ADS-B without air/ground: AGL ≥ 250 ft, or ground speed ≥ 25 kt
  (≥ 80 kt when the fix has no altitude at all). With AGL unknown the speed decides alone.
  ADS-B/SBS with the transponder's air/ground state: that state, debounced — it changes only
  after `DEBOUNCE_REPORTS` consecutive agreeing reports, so a flapping bit does not make
  flights.
* Takeoff: an active fix after ≥ 3 inactive fixes (ADS-B air/ground: 1) opens a flight with
  its takeoff time. With less history, an active fix opens a flight with a takeoff time only
  if AGL < 100 ft; otherwise the flight is "first seen airborne" (`takeoff_us` None).
  Inactive fixes older than `HISTORY_WINDOW_US` before the active fix are not history: the
  aircraft took off at some unseen moment in between.
* Landing: 5 consecutive inactive fixes (inactive implies AGL < 250 ft when AGL is known);
  ADS-B air/ground: the debounced switch to ground. The landing time is the first fix of
  the inactive run (ADS-B: the first ground report).
* Timeout: no fix for 1 h. Between two fixes, the gap of their own times decides; at a sweep,
  the aircraft's clock — its newest fix time plus the receive time passed since that fix
  arrived. `timed_out_us` is the deadline itself (last fix + 1 h), so it does not depend on
  when the shard happened to sweep. The phase comes from the climb of the last fixes.
* Landed out of coverage: a flight that times out (or is split by a gap) while descending,
  whose last fix meets the ground within 10 min at its descent rate from at most 5,000 ft
  (`soar.tracking.unseen`), is closed as landed, not timed out: `landing_us` = the projected
  touchdown, `end_reason` = "landed_out_of_coverage", `arrival_airport` = the nearest
  airport it could reach in that time (or None).
* Takeoff out of coverage: an aircraft whose last flight ended with a landing (seen or
  projected, remembered up to 48 h by the shard) is on the ground; when it is next seen
  airborne without the ground history for a normal takeoff, and its first fix climbs from at
  most 5,000 ft at a rate that meets the ground at most 10 min back, the flight opens with
  `takeoff_us` = that projected liftoff (never before the aircraft's previous fix) and the
  reachable airport as departure. First seen higher, level or without a climb rate, it is
  "first seen airborne": it took off at some unknown time, and a made-up time is worse than
  none.
* A timed-out flight is resumed (the same flight goes on) when the aircraft comes back within
  2 h of its last fix, airborne, having moved at least 30 % of speed x gap and not having
  been slow: an airliner that crossed a hole in receiver coverage is one flight, not two.
* Splits: callsign change; a 30 min-1 h gap after which the aircraft was slow (≤ 25 kt) or
  moved < 30 % of speed x gap; any gap > 2 h (never resumed).
* Duplicates: a fix with the same own time as an accepted one of the aircraft, within 1 km
  of it (the same report heard by two receivers, each decoding it) is dropped as
  `duplicate`; at the same time farther away it is `same_time_elsewhere` (two devices with
  one address): counted, and the first kept. Arriving soon after another fix does not make
  a fix a duplicate. ADS-B positions (Beast, SBS) come twice a second: one less than 1 s
  after an accepted one is dropped as `thinned`.
* `max_agl_ft` is the maximum over the whole flight or absent (None): AGL is often known
  only near airports (no terrain tiles), and the maximum of the part near an airport says
  nothing about the flight (an airliner's 163 ft "maximum" at 34,589 ft).
* Spurious flights are marked with `spurious_reason` when they end, never deleted.

May import: soar.records, soar.tracking.geo, soar.tracking.unseen
"""

from __future__ import annotations

import bisect
import enum
import uuid
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from soar.records import EndReason, Fix, FlightPhase, FlightRow, Protocol, position_time
from soar.tracking.geo import METRES_PER_NM, circular_mean_deg, distance_m
from soar.tracking.unseen import NearestAirport, project_to_ground

SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

ACTIVE_SPEED_KT = 25.0
ACTIVE_SPEED_NO_ALTITUDE_KT = 80.0
ACTIVE_AGL_FT = 250.0
TAKEOFF_HISTORY_FIXES = 3
TAKEOFF_HISTORY_FIXES_ADSB = 1
TAKEOFF_LOW_AGL_FT = 100.0
HISTORY_WINDOW_US = 5 * MINUTE
LANDING_FIXES = 5
DEBOUNCE_REPORTS = 2
TIMEOUT_US = HOUR
SPLIT_MIN_GAP_US = 30 * MINUTE
SPLIT_MAX_GAP_US = 2 * HOUR
SLOW_KT = 25.0
MIN_PROGRESS = 0.30
THIN_US = SECOND  # ADS-B positions closer in time than this are thinned
DUPLICATE_DISTANCE_M = 1000.0
ACCEPTED_HISTORY = 1024
ENRICH_WINDOW_US = 20 * SECOND
PHASE_WINDOW_US = 2 * MINUTE
RUNWAY_MIN_SPEED_KT = 25.0
PHASE_CLIMB_FPM = 250.0

SPURIOUS_DURATION_US = 120 * SECOND
SPURIOUS_ALTITUDE_RANGE_FT = 50.0
SPURIOUS_MAX_AGL_FT = 100.0
SPURIOUS_PATH_M = 500.0
IMPOSSIBLE_ALTITUDE_FT = (-2_000.0, 80_000.0)
IMPOSSIBLE_SPEED_KT = 1_000.0
IMPOSSIBLE_SEGMENT_KT = 2_000.0

ADSB_PROTOCOLS = frozenset({Protocol.BEAST, Protocol.SBS})


class FlightState(enum.StrEnum):
    NEW = "new"  # no usable history
    ON_GROUND = "on_ground"  # no open flight, last fixes inactive
    FLYING = "flying"  # open flight, last fix active
    LANDING = "landing"  # open flight, counting inactive fixes
    TIMED_OUT = "timed_out"  # flight closed by timeout, may still be resumed


class DropReason(enum.StrEnum):
    """Why a fix adds nothing (see the module doc); a `soar_fixes_rejected_total` reason."""

    DUPLICATE = "duplicate"
    SAME_TIME_ELSEWHERE = "same_time_elsewhere"
    THINNED = "thinned"


class Opening(enum.StrEnum):
    """How a flight was opened."""

    TAKEOFF = "takeoff"
    TAKEOFF_OUT_OF_COVERAGE = "takeoff_out_of_coverage"
    FIRST_SEEN = "first_seen"  # first seen airborne: no takeoff time
    RESUMED = "resumed"  # a timed-out flight going on


class EnrichmentKind(enum.StrEnum):
    TAKEOFF = "takeoff"
    LANDING = "landing"


# (from, to, label) — the machine drawn for docs/flight-states.md
TRANSITIONS: tuple[tuple[FlightState, FlightState, str], ...] = (
    (FlightState.NEW, FlightState.ON_GROUND, "inactive fix"),
    (
        FlightState.NEW,
        FlightState.FLYING,
        "active fix: takeoff if AGL < 100 ft, else first seen airborne",
    ),
    (FlightState.ON_GROUND, FlightState.ON_GROUND, "inactive fix"),
    (FlightState.ON_GROUND, FlightState.FLYING, "active fix after ≥ 3 inactive (ADS-B 1): takeoff"),
    (FlightState.ON_GROUND, FlightState.NEW, "gap > 5 min (history too old)"),
    (FlightState.FLYING, FlightState.FLYING, "active fix"),
    (FlightState.FLYING, FlightState.LANDING, "inactive fix"),
    (FlightState.LANDING, FlightState.FLYING, "active fix"),
    (FlightState.LANDING, FlightState.LANDING, "inactive fix, fewer than 5"),
    (
        FlightState.LANDING,
        FlightState.ON_GROUND,
        "5th inactive fix (ADS-B: debounced ground): landed",
    ),
    (FlightState.FLYING, FlightState.TIMED_OUT, "no fix for 1 h (fix times; silence: receive clock)"),
    (FlightState.LANDING, FlightState.TIMED_OUT, "no fix for 1 h (fix times; silence: receive clock)"),
    (
        FlightState.TIMED_OUT,
        FlightState.FLYING,
        "active fix ≤ 2 h after, moved ≥ 30 % of speed x gap: resumed",
    ),
    (FlightState.TIMED_OUT, FlightState.NEW, "any other fix"),
    (
        FlightState.FLYING,
        FlightState.ON_GROUND,
        "no fix for 1 h (or split gap) descending, ground ≤ 10 min ahead: landed out of coverage",
    ),
    (
        FlightState.LANDING,
        FlightState.ON_GROUND,
        "no fix for 1 h (or split gap) descending, ground ≤ 10 min ahead: landed out of coverage",
    ),
    (
        FlightState.NEW,
        FlightState.FLYING,
        "active fix after a landing, ground ≤ 10 min back at its climb: takeoff out of coverage",
    ),
    (
        FlightState.FLYING,
        FlightState.NEW,
        "split: callsign change, 30 min-1 h gap slow or not moving",
    ),
    (
        FlightState.LANDING,
        FlightState.NEW,
        "split: callsign change, 30 min-1 h gap slow or not moving",
    ),
    (FlightState.NEW, FlightState.FLYING, "restored after a restart, last fix active"),
    (FlightState.NEW, FlightState.LANDING, "restored after a restart, last fix inactive"),
)


ALLOWED: frozenset[tuple[FlightState, FlightState]] = frozenset(
    (source, target) for source, target, _label in TRANSITIONS
)


class IllegalTransition(RuntimeError):
    """A state change the table does not draw: a bug in the rules, never bad input."""


def mermaid_diagram() -> str:
    """The state diagram in Mermaid, generated from `TRANSITIONS` so it cannot drift."""
    lines = ["stateDiagram-v2", f"    [*] --> {FlightState.NEW.value}"]
    for source, target, label in TRANSITIONS:
        lines.append(f"    {source.value} --> {target.value}: {label}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- events


@dataclass(slots=True, frozen=True)
class FixAccepted:
    """A fix to store (and publish unless stealth), with agl_ft, is_active, flight_id set."""

    fix: Fix


@dataclass(slots=True, frozen=True)
class FixLate:
    """A fix older than what the machine can still re-decide: stored (it happened), with the
    flight it falls in, but it changes no state.

    The machine alone takes any fix older than its newest as late; `ordered.OrderedTrack`
    merges those within its window and hands only older ones here. After a restart the
    write-ahead log replays what was not committed, behind the flight state the database
    already had; these fixes must still be stored, never lost.
    """

    fix: Fix


@dataclass(slots=True, frozen=True)
class FixRevised:
    """A stored fix whose flight or active flag changed when a late fix was merged before it."""

    fix: Fix


@dataclass(slots=True, frozen=True)
class FixDropped:
    fix: Fix
    reason: DropReason


@dataclass(slots=True, frozen=True)
class FlightOpened:
    row: FlightRow  # a snapshot: later changes to the flight are new events
    how: Opening


@dataclass(slots=True, frozen=True)
class FlightUpdated:
    row: FlightRow


@dataclass(slots=True, frozen=True)
class FlightClosed:
    row: FlightRow
    reason: EndReason


@dataclass(slots=True, frozen=True)
class EnrichmentDue:
    """Takeoff/landing data for the airport and runway lookup, off the hot path."""

    aircraft_id: int
    flight_id: uuid.UUID
    kind: EnrichmentKind
    time_us: int
    lat: float
    lon: float
    tracks_deg: tuple[float, ...]  # tracks of the fixes within ±20 s


Event = (
    FixAccepted
    | FixLate
    | FixRevised
    | FixDropped
    | FlightOpened
    | FlightUpdated
    | FlightClosed
    | EnrichmentDue
)


# ---------------------------------------------------------------------------------- helpers


class AirGroundDebouncer:
    """The transponder's air/ground bit, changed only after consecutive agreeing reports."""

    __slots__ = ("_pending", "_pending_count", "_pending_since_us", "on_ground", "since_us")

    def copy(self) -> AirGroundDebouncer:
        other = AirGroundDebouncer()
        other.on_ground, other.since_us = self.on_ground, self.since_us
        other._pending, other._pending_count = self._pending, self._pending_count
        other._pending_since_us = self._pending_since_us
        return other

    def __init__(self) -> None:
        self.on_ground: bool | None = None
        self.since_us = 0  # time of the first report of the current state
        self._pending: bool | None = None
        self._pending_count = 0
        self._pending_since_us = 0

    def report(self, on_ground: bool, time_us: int) -> bool:
        """Feed one report; True when the debounced state changed."""
        if self.on_ground is None:
            self.on_ground, self.since_us = on_ground, time_us
            return False
        if on_ground == self.on_ground:
            self._pending, self._pending_count = None, 0
            return False
        if self._pending is not on_ground:
            self._pending, self._pending_count, self._pending_since_us = on_ground, 0, time_us
        self._pending_count += 1
        if self._pending_count >= DEBOUNCE_REPORTS:
            self.on_ground, self.since_us = on_ground, self._pending_since_us
            self._pending, self._pending_count = None, 0
            return True
        return False


def classify_speed_agl(fix: Fix) -> bool | None:
    """Active by AGL and ground speed (OGN rule); None when nothing tells."""
    if fix.agl_ft is not None and fix.agl_ft >= ACTIVE_AGL_FT:
        return True
    speed = fix.ground_speed_kt
    if speed is None:
        return None
    if fix.altitude_ft is None:
        return speed >= ACTIVE_SPEED_NO_ALTITUDE_KT
    return speed >= ACTIVE_SPEED_KT


def recent_climb_fpm(recent: deque[Fix], flight_id: uuid.UUID) -> float | None:
    """The flight's vertical rate over its last 2 minutes: the mean reported climb, else the
    altitude slope; None when neither is known."""
    mine = [f for f in recent if f.flight_id == flight_id]
    if not mine:
        return None
    newest = mine[-1].time_us
    window = [f for f in mine if newest - f.time_us <= PHASE_WINDOW_US]
    climbs = [f.climb_fpm for f in window if f.climb_fpm is not None]
    climb: float | None = None
    if climbs:
        climb = sum(climbs) / len(climbs)
    else:
        with_alt = [f for f in window if f.altitude_ft is not None]
        if len(with_alt) >= 2 and with_alt[-1].time_us > with_alt[0].time_us:
            dt_min = (with_alt[-1].time_us - with_alt[0].time_us) / MINUTE
            assert with_alt[-1].altitude_ft is not None and with_alt[0].altitude_ft is not None
            climb = (with_alt[-1].altitude_ft - with_alt[0].altitude_ft) / dt_min
    return climb


def phase_of(recent: deque[Fix], flight_id: uuid.UUID) -> FlightPhase:
    """Climbing / cruising / descending from the flight's fixes of its last 2 minutes."""
    if not any(f.flight_id == flight_id for f in recent):
        return FlightPhase.UNKNOWN
    climb = recent_climb_fpm(recent, flight_id)
    if climb is None:
        return FlightPhase.UNKNOWN
    if climb >= PHASE_CLIMB_FPM:
        return FlightPhase.CLIMBING
    if climb <= -PHASE_CLIMB_FPM:
        return FlightPhase.DESCENDING
    return FlightPhase.CRUISING


def _progress_ok(last: Fix, fix: Fix) -> bool:
    """Not slow before the gap, and moved ≥ 30 % of what its speed allowed in the gap."""
    speed = last.ground_speed_kt if last.ground_speed_kt is not None else fix.ground_speed_kt
    if speed is None or speed <= SLOW_KT:
        return False
    gap_h = (fix.time_us - last.time_us) / HOUR
    possible_m = speed * METRES_PER_NM * gap_h
    moved_m = distance_m(last.lat, last.lon, fix.lat, fix.lon)
    return moved_m >= MIN_PROGRESS * possible_m


def repeat_reason(fix: Fix, other: Fix) -> DropReason | None:
    """Why `fix` adds nothing to the accepted `other` (see the module doc), or None."""
    return _repeat_at(fix, other.time_us, other.lat, other.lon)


def _repeat_at(fix: Fix, time_us: int, lat: float, lon: float) -> DropReason | None:
    dt = fix.time_us - time_us
    if dt == 0:
        near = distance_m(fix.lat, fix.lon, lat, lon) <= DUPLICATE_DISTANCE_M
        return DropReason.DUPLICATE if near else DropReason.SAME_TIME_ELSEWHERE
    if fix.protocol in ADSB_PROTOCOLS and -THIN_US < dt < THIN_US:
        return DropReason.THINNED
    return None


class AcceptedHistory:
    """Own times and positions of an aircraft's last `ACCEPTED_HISTORY` accepted fixes, in
    time order: the duplicate rules for a fix older than the newest. Plain arrays, 24 bytes a
    fix, not the fixes themselves (a thousand per aircraft would be half a megabyte)."""

    __slots__ = ("lats", "lons", "times")

    def __init__(self) -> None:
        self.times = array("q")
        self.lats = array("d")
        self.lons = array("d")

    def __len__(self) -> int:
        return len(self.times)

    def add(self, fix: Fix) -> None:
        times = self.times
        t = fix.time_us
        i = len(times)
        if i and t <= times[-1]:
            i = bisect.bisect_left(times, t)
            if times[i] == t:
                return
        times.insert(i, t)
        self.lats.insert(i, fix.lat)
        self.lons.insert(i, fix.lon)
        if len(times) > ACCEPTED_HISTORY:
            del times[0], self.lats[0], self.lons[0]

    def repeat_of(self, fix: Fix) -> DropReason | None:
        """`repeat_reason` against the accepted fixes around `fix`'s time, or None."""
        times = self.times
        i = bisect.bisect_left(times, fix.time_us)
        for j in (i - 1, i, i + 1):
            if 0 <= j < len(times):
                reason = _repeat_at(fix, times[j], self.lats[j], self.lons[j])
                if reason is not None:
                    return reason
        return None


@dataclass(slots=True)
class _Pending:
    kind: EnrichmentKind
    time_us: int
    lat: float
    lon: float
    flight_id: uuid.UUID


@dataclass(slots=True)
class _FlightStats:
    """What the spurious check needs beyond the row."""

    max_speed_kt: float = 0.0
    max_segment_kt: float = 0.0
    has_altitude: bool = False
    agl_partial: bool = False  # a fix with an altitude but no AGL: max_agl_ft is not known

    def copy(self) -> _FlightStats:
        return _FlightStats(
            self.max_speed_kt, self.max_segment_kt, self.has_altitude, self.agl_partial
        )


# ---------------------------------------------------------------------------------- machine


class FlightStateMachine:
    """The flights of one aircraft. `on_fix` and `on_clock` return what the shard must emit."""

    def __init__(
        self,
        aircraft_id: int,
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
        update_every_us: int = 60 * SECOND,
        airports: NearestAirport | None = None,
    ) -> None:
        self.aircraft_id = aircraft_id
        self._new_id = new_id
        self._airports = airports
        #: when the aircraft's last flight ended with a landing (seen or projected) and it has
        #: not been airborne since: it is known to be on the ground
        self.landed_us: int | None = None
        #: the open flight's takeoff was seen (not projected, not first seen airborne)
        self.takeoff_observed = False
        self._update_every_us = update_every_us
        self.state = FlightState.NEW
        self.flight: FlightRow | None = None  # open, or timed out and resumable
        self.last_fix: Fix | None = None  # newest accepted fix (by its own time)
        #: the newest receive time of an accepted fix: the aircraft's silence is measured from it
        self.last_received_us = 0
        self.inactive_run = 0
        self.inactive_since_us = 0
        self.last_inactive_us = 0
        self.air_ground = AirGroundDebouncer()
        self.recent: deque[Fix] = deque(maxlen=64)
        #: the duplicate rules for fixes older than the newest (shared by clones: it only
        #: grows with accepted fixes)
        self.accepted = AcceptedHistory()
        self._stats = _FlightStats()
        self._flight_last_fix: Fix | None = None
        self._last_update_us = 0
        self._pending: list[_Pending] = []
        self._closed: dict[uuid.UUID, FlightRow] = {}  # recently closed, for enrichment

    def clone(self) -> FlightStateMachine:
        """An independent copy of the state (rows copied, fixes shared): a checkpoint that
        `ordered.OrderedTrack` can go back to when a late fix must be merged before others."""
        other = FlightStateMachine.__new__(FlightStateMachine)
        other.aircraft_id = self.aircraft_id
        other._new_id = self._new_id
        other._airports = self._airports
        other.landed_us = self.landed_us
        other.takeoff_observed = self.takeoff_observed
        other._update_every_us = self._update_every_us
        other.state = self.state
        flight = self.flight
        closed = {ident: row.snapshot() for ident, row in self._closed.items()}
        if flight is not None and flight.id in self._closed:
            other.flight = closed[flight.id]  # the timed-out flight is both: one row
        else:
            other.flight = None if flight is None else flight.snapshot()
        other._closed = closed
        other.last_fix = self.last_fix
        other.last_received_us = self.last_received_us
        other.inactive_run = self.inactive_run
        other.inactive_since_us = self.inactive_since_us
        other.last_inactive_us = self.last_inactive_us
        other.air_ground = self.air_ground.copy()
        other.recent = deque(self.recent, maxlen=self.recent.maxlen)
        other.accepted = self.accepted
        other._stats = self._stats.copy()
        other._flight_last_fix = self._flight_last_fix
        other._last_update_us = self._last_update_us
        other._pending = list(self._pending)
        return other

    def enter(self, new: FlightState) -> None:
        """The only way the state changes: checked against `TRANSITIONS`, so the drawn
        machine is the machine that runs."""
        if (self.state, new) not in ALLOWED:
            raise IllegalTransition(
                f"aircraft {self.aircraft_id:08x}: {self.state.value} -> {new.value}"
            )
        self.state = new

    # -- queries

    @property
    def open_flight(self) -> FlightRow | None:
        if self.flight is not None and self.flight.is_open:
            return self.flight
        return None

    def flights(self) -> dict[uuid.UUID, FlightRow]:
        """The flights the machine still holds (open, timed out, recently closed), by id."""
        held = dict(self._closed)
        if self.flight is not None:
            held[self.flight.id] = self.flight
        return held

    @property
    def newest_us(self) -> int | None:
        """The own time of the newest accepted fix."""
        return None if self.last_fix is None else self.last_fix.time_us

    def clock_us(self, now_us: int) -> int:
        """The aircraft's own clock at receive time `now_us`: its newest fix time plus the
        receive time gone by since that fix arrived (so a backlog is judged by its own times)."""
        if self.last_fix is None:
            return now_us
        return self.last_fix.time_us + max(0, now_us - self.last_received_us)

    def idle(self, now_us: int, expire_us: int = SPLIT_MAX_GAP_US) -> bool:
        """Nothing left to decide: no open flight, no pending work, nothing received for
        `expire_us` (receive clock)."""
        if self.open_flight is not None or self._pending:
            return False
        return self.last_fix is None or now_us - self.last_received_us > expire_us

    # -- inputs

    def on_fix(self, fix: Fix) -> list[Event]:
        events: list[Event] = []
        t = position_time(fix)
        last = self.last_fix
        if last is not None:
            if t < last.time_us:
                return [self.late(fix)]
            repeat = repeat_reason(fix, last)
            if repeat is not None:
                return [FixDropped(fix, repeat)]
            self._before_fix(fix, last, events)
        fix.flight_id = None  # fed again after a merge, it may belong to no flight now
        active = self._classify(fix)
        fix.is_active = active
        # before `fix` joins `recent`: a request made now only wants fixes within ±20 s
        self._pending_due(t, events)
        if self.open_flight is not None:
            self._in_flight(fix, active, events)
        elif active:
            self._start(fix, events)
        else:
            self._on_ground(fix, active)
        self.last_fix = fix
        if fix.received_us > self.last_received_us:
            self.last_received_us = fix.received_us
        self.recent.append(fix)
        self._remember(fix)
        events.append(FixAccepted(fix))
        return events

    def _remember(self, fix: Fix) -> None:
        self.accepted.add(fix)

    def repeat_of_accepted(self, fix: Fix) -> DropReason | None:
        """`repeat_reason` against the accepted fixes around `fix`'s time, or None."""
        position_time(fix)
        return self.accepted.repeat_of(fix)

    def late(self, fix: Fix) -> Event:
        """A fix older than the newest: judged by the duplicate rules against the accepted
        fixes around it, as it would have been in order; kept (stored in the flight it falls
        in) if it passes, changing no state."""
        position_time(fix)
        reason = self.repeat_of_accepted(fix)
        if reason is not None:
            return FixDropped(fix, reason)
        t = fix.time_us
        for flight in (self.flight, *self._closed.values()):
            if flight is not None and flight.first_fix_us <= t <= flight.last_fix_us:
                fix.flight_id = flight.id
                break
        self._remember(fix)
        return FixLate(fix)

    def on_clock(self, now_us: int) -> list[Event]:
        """Timeouts and due enrichment, with the shard's receive clock at `now_us`."""
        events: list[Event] = []
        now = self.clock_us(now_us)
        flight = self.open_flight
        if flight is not None and now - flight.last_fix_us >= TIMEOUT_US:
            self._time_out(flight, events)
        self._pending_due(now, events)
        return events

    def flush_pending(self) -> list[Event]:
        """Every enrichment request still waiting for its ±20 s window: the input has ended
        (a drained pipeline), so the fixes it waited for will not come."""
        if not self._pending:
            return []
        events: list[Event] = []
        due = max(p.time_us for p in self._pending) + ENRICH_WINDOW_US + 1
        self._pending_due(due, events)
        return events

    def apply_enrichment(
        self,
        flight_id: uuid.UUID,
        kind: EnrichmentKind,
        airport: str | None,
        runway: str | None,
    ) -> list[Event]:
        row = self.flight if self.flight is not None and self.flight.id == flight_id else None
        row = row or self._closed.get(flight_id)
        if row is None:
            return []
        if kind == EnrichmentKind.TAKEOFF:
            row.departure_airport = airport or row.departure_airport
            row.takeoff_runway = runway or row.takeoff_runway
        else:
            row.arrival_airport = airport or row.arrival_airport
            row.landing_runway = runway or row.landing_runway
        return [FlightUpdated(row.snapshot())]

    def apply_tow(
        self,
        flight_id: uuid.UUID,
        tow_aircraft_id: int,
        release_us: int,
        altitude_ft: float | None,
        height_ft: float | None,
    ) -> list[Event]:
        """Record an aerotow (from the `TowDetector`) on the flight, open or recently closed."""
        row = self.flight if self.flight is not None and self.flight.id == flight_id else None
        row = row or self._closed.get(flight_id)
        if row is None:
            return []
        row.tow_aircraft_id = tow_aircraft_id
        row.release_us = release_us
        row.release_altitude_ft = altitude_ft
        row.release_height_ft = height_ft
        return [FlightUpdated(row.snapshot())]

    @classmethod
    def restore(
        cls,
        row: FlightRow,
        fixes: list[Fix],
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
        airports: NearestAirport | None = None,
    ) -> FlightStateMachine:
        """A machine resuming an open flight after a restart, from its row and last fixes."""
        machine = cls(row.aircraft_id, new_id, airports=airports)
        machine.flight = row.snapshot()
        machine._stats.agl_partial = row.max_agl_ft is None and row.fix_count > 0
        ordered = sorted(fixes, key=position_time)
        for fix in ordered:
            t = fix.time_us
            if fix.on_ground is not None and fix.protocol in ADSB_PROTOCOLS:
                machine.air_ground.report(fix.on_ground, t)
            if fix.is_active is False:
                if machine.inactive_run == 0:
                    machine.inactive_since_us = t
                machine.inactive_run += 1
                machine.last_inactive_us = t
            elif fix.is_active:
                machine.inactive_run = 0
            machine.recent.append(fix)
            machine._remember(fix)
            machine.last_received_us = max(machine.last_received_us, fix.received_us)
        if ordered:
            machine.last_fix = ordered[-1]
            machine._flight_last_fix = ordered[-1]
        machine.enter(FlightState.LANDING if machine.inactive_run else FlightState.FLYING)
        machine._last_update_us = row.last_fix_us
        return machine

    # -- internals

    def _classify(self, fix: Fix) -> bool | None:
        if fix.protocol in ADSB_PROTOCOLS:
            if fix.on_ground is not None:
                self.air_ground.report(fix.on_ground, fix.time_us)
            if self.air_ground.on_ground is not None:
                return not self.air_ground.on_ground
        return classify_speed_agl(fix)

    def _adsb_air_ground(self, fix: Fix) -> bool:
        return fix.protocol in ADSB_PROTOCOLS and self.air_ground.on_ground is not None

    def _before_fix(self, fix: Fix, last: Fix, events: list[Event]) -> None:
        """Timeouts, resumption and splits decided by the gap since the previous fix."""
        gap = fix.time_us - last.time_us
        flight = self.open_flight
        if flight is not None and gap >= TIMEOUT_US:
            self._time_out(flight, events)
        flight = self.open_flight
        if flight is not None:
            if gap >= SPLIT_MIN_GAP_US and not _progress_ok(last, fix):
                if not self._landed_unseen(flight, events):
                    self._close(flight, EndReason.SPLIT_GAP, events)
                self._reset_history()
            elif fix.callsign and flight.callsign and fix.callsign != flight.callsign:
                self._close(flight, EndReason.SPLIT_CALLSIGN, events)
                self._reset_history()
        elif self.state is FlightState.TIMED_OUT and self.flight is not None:
            timed_out = self.flight
            if (
                gap <= SPLIT_MAX_GAP_US
                and self._classify_peek(fix)
                and _progress_ok(last, fix)
                and not (fix.callsign and timed_out.callsign and fix.callsign != timed_out.callsign)
            ):
                timed_out.timed_out_us = None
                timed_out.timeout_phase = None
                timed_out.end_reason = None
                timed_out.spurious_reason = None
                self._closed.pop(timed_out.id, None)
                self.enter(FlightState.FLYING)
                events.append(FlightOpened(timed_out.snapshot(), Opening.RESUMED))
            else:
                self.flight = None
                self._reset_history()
        elif gap > HISTORY_WINDOW_US:
            self._reset_history()

    def _classify_peek(self, fix: Fix) -> bool:
        """Whether the fix looks airborne, without feeding the debouncer."""
        if fix.protocol in ADSB_PROTOCOLS and fix.on_ground is not None:
            return not fix.on_ground
        return bool(classify_speed_agl(fix))

    def _reset_history(self) -> None:
        if self.state is not FlightState.NEW:  # history too old of a machine that knew none
            self.enter(FlightState.NEW)
        self.inactive_run = 0
        self.recent.clear()

    def _on_ground(self, fix: Fix, active: bool | None) -> None:
        if active is None:
            return
        if self.inactive_run == 0:
            self.inactive_since_us = fix.time_us
        self.inactive_run += 1
        self.last_inactive_us = fix.time_us
        self.enter(FlightState.ON_GROUND)

    def _start(self, fix: Fix, events: list[Event]) -> None:
        needed = TAKEOFF_HISTORY_FIXES_ADSB if self._adsb_air_ground(fix) else TAKEOFF_HISTORY_FIXES
        recent_history = (
            self.inactive_run > 0 and fix.time_us - self.last_inactive_us <= HISTORY_WINDOW_US
        )
        takeoff_us: int | None = None
        how = Opening.TAKEOFF
        departure: str | None = None
        if recent_history and self.inactive_run >= needed:
            takeoff_us = self.air_ground.since_us if self._adsb_air_ground(fix) else fix.time_us
        elif fix.agl_ft is not None and fix.agl_ft < TAKEOFF_LOW_AGL_FT:
            takeoff_us = fix.time_us
        elif self.landed_us is not None:
            liftoff = project_to_ground(fix, fix.climb_fpm, self._airports)
            if liftoff is not None and fix.climb_fpm is not None and fix.climb_fpm > 0:
                # it was on the ground, or at least seen, at its previous fix
                floor = self.last_fix.time_us if self.last_fix is not None else self.landed_us
                takeoff_us = max(liftoff.time_us, floor)
                departure = liftoff.airport
                how = Opening.TAKEOFF_OUT_OF_COVERAGE
        self.landed_us = None
        self.takeoff_observed = takeoff_us is not None and how is Opening.TAKEOFF
        row = FlightRow(
            id=self._new_id(),
            aircraft_id=self.aircraft_id,
            protocol=fix.protocol,
            first_fix_us=fix.time_us,
            last_fix_us=fix.time_us,
            takeoff_us=takeoff_us,
            callsign=fix.callsign or None,
            departure_airport=departure,
        )
        self.flight = row
        self._stats = _FlightStats()
        self._flight_last_fix = None
        self.inactive_run = 0
        self.enter(FlightState.FLYING)
        self._add_to_flight(row, fix)
        self._last_update_us = fix.time_us
        events.append(FlightOpened(row.snapshot(), how if takeoff_us else Opening.FIRST_SEEN))
        if takeoff_us is not None and how is Opening.TAKEOFF:
            self._pending.append(
                _Pending(EnrichmentKind.TAKEOFF, takeoff_us, fix.lat, fix.lon, row.id)
            )

    def _in_flight(self, fix: Fix, active: bool | None, events: list[Event]) -> None:
        row = self.open_flight
        assert row is not None
        self._add_to_flight(row, fix)
        if active is None:
            return
        if active:
            self.inactive_run = 0
            self.enter(FlightState.FLYING)
        else:
            if self.inactive_run == 0:
                self.inactive_since_us = fix.time_us
            self.inactive_run += 1
            self.last_inactive_us = fix.time_us
            self.enter(FlightState.LANDING)
            if self._adsb_air_ground(fix):
                self._land(row, self.air_ground.since_us, fix, events)
                return
            if self.inactive_run >= LANDING_FIXES:
                self._land(row, self.inactive_since_us, fix, events)
                return
        if fix.time_us - self._last_update_us >= self._update_every_us:
            self._last_update_us = fix.time_us
            events.append(FlightUpdated(row.snapshot()))

    def _add_to_flight(self, row: FlightRow, fix: Fix) -> None:
        fix.flight_id = row.id
        previous = self._flight_last_fix
        if previous is not None:
            step = distance_m(previous.lat, previous.lon, fix.lat, fix.lon)
            row.distance_m += step
            dt_h = (fix.time_us - previous.time_us) / HOUR
            if dt_h > 0:
                self._stats.max_segment_kt = max(
                    self._stats.max_segment_kt, step / METRES_PER_NM / dt_h
                )
        self._flight_last_fix = fix
        row.last_fix_us = fix.time_us
        row.fix_count += 1
        if not row.callsign and fix.callsign:
            row.callsign = fix.callsign
        row.min_lat = fix.lat if row.min_lat is None else min(row.min_lat, fix.lat)
        row.max_lat = fix.lat if row.max_lat is None else max(row.max_lat, fix.lat)
        row.min_lon = fix.lon if row.min_lon is None else min(row.min_lon, fix.lon)
        row.max_lon = fix.lon if row.max_lon is None else max(row.max_lon, fix.lon)
        if fix.altitude_ft is not None:
            self._stats.has_altitude = True
            alt = fix.altitude_ft
            row.min_altitude_ft = (
                alt if row.min_altitude_ft is None else min(row.min_altitude_ft, alt)
            )
            row.max_altitude_ft = (
                alt if row.max_altitude_ft is None else max(row.max_altitude_ft, alt)
            )
        if fix.agl_ft is None:
            if fix.altitude_ft is not None and not self._stats.agl_partial:
                self._stats.agl_partial = True  # over part of the flight only: no maximum
                row.max_agl_ft = None
        elif not self._stats.agl_partial:
            row.max_agl_ft = (
                fix.agl_ft if row.max_agl_ft is None else max(row.max_agl_ft, fix.agl_ft)
            )
        if fix.ground_speed_kt is not None:
            self._stats.max_speed_kt = max(self._stats.max_speed_kt, fix.ground_speed_kt)

    def _land(self, row: FlightRow, landing_us: int, fix: Fix, events: list[Event]) -> None:
        row.landing_us = landing_us
        self._pending.append(_Pending(EnrichmentKind.LANDING, landing_us, fix.lat, fix.lon, row.id))
        self._close(row, EndReason.LANDED, events)
        self.enter(FlightState.ON_GROUND)
        self.landed_us = landing_us

    def _landed_unseen(self, row: FlightRow, events: list[Event]) -> bool:
        """Close `row` as landed out of coverage when its last fix projects to the ground."""
        last = self._flight_last_fix
        if last is None or phase_of(self.recent, row.id) is not FlightPhase.DESCENDING:
            return False
        touchdown = project_to_ground(last, recent_climb_fpm(self.recent, row.id), self._airports)
        if touchdown is None:
            return False
        row.landing_us = touchdown.time_us
        row.arrival_airport = touchdown.airport or row.arrival_airport
        self._close(row, EndReason.LANDED_OUT_OF_COVERAGE, events)
        self.enter(FlightState.ON_GROUND)
        self.landed_us = touchdown.time_us
        return True

    def _time_out(self, row: FlightRow, events: list[Event]) -> None:
        if self._landed_unseen(row, events):
            return
        row.timed_out_us = row.last_fix_us + TIMEOUT_US
        row.timeout_phase = phase_of(self.recent, row.id)
        self._close(row, EndReason.TIMED_OUT, events)
        self.enter(FlightState.TIMED_OUT)

    def _close(self, row: FlightRow, reason: EndReason, events: list[Event]) -> None:
        row.end_reason = reason
        row.spurious_reason = spurious_reason(row, self._stats)
        self._closed[row.id] = row
        while len(self._closed) > 4:
            del self._closed[next(iter(self._closed))]
        events.append(FlightClosed(row.snapshot(), reason))
        if reason is not EndReason.TIMED_OUT:
            self.flight = None

    def _pending_due(self, now_us: int, events: list[Event]) -> None:
        """Enrichment requests whose ±20 s window has passed."""
        if not self._pending:
            return
        keep: list[_Pending] = []
        for pending in self._pending:
            if now_us - pending.time_us <= ENRICH_WINDOW_US:
                keep.append(pending)
                continue
            tracks = tuple(
                f.track_deg
                for f in self.recent
                if f.track_deg is not None
                and abs(f.time_us - pending.time_us) <= ENRICH_WINDOW_US
                # on the runway or just above it; taxiing and turning off say nothing
                and f.ground_speed_kt is not None
                and f.ground_speed_kt >= RUNWAY_MIN_SPEED_KT
            )
            events.append(
                EnrichmentDue(
                    self.aircraft_id,
                    pending.flight_id,
                    pending.kind,
                    pending.time_us,
                    pending.lat,
                    pending.lon,
                    tracks,
                )
            )
        self._pending = keep


def spurious_reason(row: FlightRow, stats: _FlightStats) -> str | None:
    """Why a closed flight is probably not a flight (comma-separated), or None."""
    reasons: list[str] = []
    start = row.takeoff_us if row.takeoff_us is not None else row.first_fix_us
    end = row.landing_us if row.landing_us is not None else row.last_fix_us
    duration = end - start
    flat = (
        stats.has_altitude
        and row.max_altitude_ft is not None
        and row.min_altitude_ft is not None
        and row.max_altitude_ft - row.min_altitude_ft < SPURIOUS_ALTITUDE_RANGE_FT
    )
    # a flight first seen airborne was airborne when seen, for longer than was seen: a short
    # look at it (the last minute of a glider's approach, 600 ft down to a landing) is no
    # evidence against it unless it did not even change height (a glitch on the ground)
    seen_flying = row.takeoff_us is None and stats.has_altitude and not flat
    if duration < SPURIOUS_DURATION_US and not seen_flying:
        reasons.append("short_duration")
    if row.distance_m < SPURIOUS_PATH_M and not seen_flying:
        reasons.append("short_path")
    # a level cruise is no evidence against a flight first seen airborne; one that started
    # on the ground must have climbed
    if row.takeoff_us is not None:
        if flat:
            reasons.append("flat_altitude")
        if row.max_agl_ft is not None and row.max_agl_ft < SPURIOUS_MAX_AGL_FT:
            reasons.append("low_agl")
    low, high = IMPOSSIBLE_ALTITUDE_FT
    if (row.max_altitude_ft is not None and row.max_altitude_ft > high) or (
        row.min_altitude_ft is not None and row.min_altitude_ft < low
    ):
        reasons.append("impossible_altitude")
    if stats.max_speed_kt > IMPOSSIBLE_SPEED_KT or stats.max_segment_kt > IMPOSSIBLE_SEGMENT_KT:
        reasons.append("impossible_speed")
    return ",".join(reasons) or None


def runway_designator(heading_deg: float) -> str:
    """Runway number for a magnetic-ish heading: 241° → "24", 5° → "36" is never "00"."""
    number = round(heading_deg / 10.0) % 36
    return f"{number or 36:02d}"


def runway_heading(tracks: tuple[float, ...]) -> float | None:
    return circular_mean_deg(tracks)
