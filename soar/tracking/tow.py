"""Aerotow detection: which tow plane launched which glider, and the release time and height.

A tow plane and its glider may live in different shards, so the shards hand the fixes of
every aircraft in its first `LAUNCH_WINDOW_US` after an observed takeoff to one
`TowService` (`offer`, never blocks); the service feeds the pure `TowDetector` and routes
each `TowRelease` back to the glider's shard, which records it on the glider's flight.
Everything runs on the fixes' own times (when each aircraft was where it was, not when its
beacon arrived: two receivers' delays would otherwise pull the pair apart), so a replay gives
the same answer.

Rules (issue #10, from how clubs launch):

* Tow plane: OGN aircraft type 2 (tow plane) or an aircraft id in `tow_ids` (configured
  registrations, resolved through the device database).
* Candidates: a non-tow aircraft that took off within 60 s of the tow plane, from the same
  airport (nearest within 2 km), or within 1 km of it when either has no airport.
* Pairing is checked at each candidate fix against the tow plane's position interpolated to
  that time. A candidate farther than 500 m before the pair has been together 60 s never was
  on the rope (a winch launch beside a departing tow, say): discarded.
* Separation: past 300 m with the glider climbing better than the tow plane or its track
  30° or more off the tow plane's. The release is the last moment they were within 150 m
  (rope plus position error), else the last sample before 300 m; its height is the glider's
  altitude there, MSL and above the departure airfield's elevation (the airport's, else the
  glider's takeoff altitude). Past 500 m without either sign: no tow.
* Ambiguity: if, when a glider releases, another candidate of the same tow plane is still
  within the rules, no tow is recorded rather than a wrong one.

May import: soar.records, soar.tracking.geo, soar.tracking.inputs, soar.tracking.router,
soar.tracking.unseen
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import trio
from prometheus_client import Counter

from soar.records import AircraftType, Fix
from soar.tracking.geo import distance_m
from soar.tracking.inputs import ShardInput, TowRelease
from soar.tracking.router import shard_of
from soar.tracking.unseen import NearestAirport

log = structlog.get_logger(__name__)

SECOND = 1_000_000
LAUNCH_WINDOW_US = 15 * 60 * SECOND
TAKEOFF_WINDOW_US = 60 * SECOND
SAME_FIELD_M = 1_000.0
AIRPORT_RADIUS_M = 2_000.0
ON_TOW_M = 500.0
ESTABLISHED_US = 60 * SECOND
SEPARATED_M = 300.0
TOGETHER_M = 150.0
TURN_AWAY_DEG = 30.0
ALIGN_US = 5 * SECOND  # how far a tow position may be extrapolated from its nearest fix

TOWS = Counter("soar_tow_total", "Aerotow detection outcomes", ["result"])


@dataclass(slots=True, frozen=True)
class LaunchFix:
    """A fix of an aircraft within its first minutes after an observed takeoff."""

    aircraft_id: int
    flight_id: uuid.UUID
    takeoff_us: int
    time_us: int
    lat: float
    lon: float
    altitude_ft: float | None
    track_deg: float | None
    climb_fpm: float | None
    aircraft_type: AircraftType | None
    anonymous: bool = False  # not to be identified: logs name its flight, not the aircraft

    @classmethod
    def of(cls, fix: Fix, takeoff_us: int) -> LaunchFix:
        assert fix.flight_id is not None
        return cls(
            fix.aircraft_id,
            fix.flight_id,
            takeoff_us,
            fix.time_us,
            fix.lat,
            fix.lon,
            fix.altitude_ft,
            fix.track_deg,
            fix.climb_fpm,
            fix.aircraft_type,
            fix.anonymous or fix.stealth,
        )

    @property
    def name(self) -> str:
        """How logs call the aircraft: its id, or for one that must not be identified its
        flight's."""
        return f"flight {self.flight_id}" if self.anonymous else f"{self.aircraft_id:08x}"


@dataclass(slots=True)
class _Launch:
    first: LaunchFix
    is_tow: bool
    airport: str | None
    elevation_ft: float | None
    fixes: list[LaunchFix] = field(default_factory=list)
    done: bool = False  # towed (glider) or decided (tow plane)


@dataclass(slots=True, frozen=True)
class _Sample:
    time_us: int
    distance_m: float
    altitude_ft: float | None


class PairState(enum.StrEnum):
    CANDIDATE = "candidate"  # still judged fix by fix
    DISCARDED = "discarded"  # never was on the rope
    RELEASED = "released"  # separated: `release` says where


@dataclass(slots=True)
class _Pair:
    tow: _Launch
    glider: _Launch
    cursor: int = 0
    samples: list[_Sample] = field(default_factory=list)
    together_since_us: int | None = None
    state: PairState = PairState.CANDIDATE
    release: _Sample | None = None

    @property
    def evaluated_us(self) -> int:
        return self.samples[-1].time_us if self.samples else -1


def _angle_deg(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def _interpolate(fixes: list[LaunchFix], time_us: int) -> LaunchFix | None:
    """The tow plane's fix at `time_us` (position interpolated), or None when out of reach."""
    if not fixes or time_us > fixes[-1].time_us:
        return None
    lo, hi = 0, len(fixes) - 1
    while lo < hi:  # first fix at or after time_us
        mid = (lo + hi) // 2
        if fixes[mid].time_us < time_us:
            lo = mid + 1
        else:
            hi = mid
    after = fixes[lo]
    if lo == 0:
        return after if after.time_us - time_us <= ALIGN_US else None
    before = fixes[lo - 1]
    span = after.time_us - before.time_us
    k = 0.0 if span == 0 else (time_us - before.time_us) / span
    return LaunchFix(
        after.aircraft_id,
        after.flight_id,
        after.takeoff_us,
        time_us,
        before.lat + (after.lat - before.lat) * k,
        before.lon + (after.lon - before.lon) * k,
        after.altitude_ft,
        after.track_deg,
        after.climb_fpm,
        after.aircraft_type,
        after.anonymous,
    )


class TowDetector:
    """Pure: `feed(LaunchFix)` returns the releases it decided."""

    def __init__(
        self, airports: NearestAirport | None = None, tow_ids: frozenset[int] = frozenset()
    ) -> None:
        self.airports = airports
        self.tow_ids = tow_ids
        self.clock_us = 0
        self._launches: dict[uuid.UUID, _Launch] = {}
        self._pairs: list[_Pair] = []

    def is_tow_plane(self, item: LaunchFix) -> bool:
        return item.aircraft_type is AircraftType.TOW_PLANE or item.aircraft_id in self.tow_ids

    def feed(self, item: LaunchFix) -> list[TowRelease]:
        self.clock_us = max(self.clock_us, item.time_us)
        launch = self._launches.get(item.flight_id)
        if launch is None:
            launch = self._new_launch(item)
        elif item.time_us <= launch.fixes[-1].time_us:
            return []  # out of order: the pairing only walks forwards
        launch.fixes.append(item)
        releases: list[TowRelease] = []
        for tow in {id(p.tow): p.tow for p in self._pairs if launch in (p.tow, p.glider)}.values():
            releases.extend(self._advance(tow))
        self._expire()
        return releases

    def _new_launch(self, item: LaunchFix) -> _Launch:
        airport = (
            self.airports.nearest(item.lat, item.lon, AIRPORT_RADIUS_M)
            if self.airports is not None
            else None
        )
        launch = _Launch(
            item,
            self.is_tow_plane(item),
            airport.code if airport else None,
            airport.elevation_ft if airport else None,
        )
        self._launches[item.flight_id] = launch
        for other in self._launches.values():
            if other is launch or other.is_tow == launch.is_tow or other.done:
                continue
            if abs(other.first.takeoff_us - item.takeoff_us) > TAKEOFF_WINDOW_US:
                continue
            same_airport = launch.airport is not None and launch.airport == other.airport
            near = (
                distance_m(launch.first.lat, launch.first.lon, other.first.lat, other.first.lon)
                <= SAME_FIELD_M
            )
            if same_airport or near:
                tow, glider = (launch, other) if launch.is_tow else (other, launch)
                self._pairs.append(_Pair(tow, glider))
        return launch

    def _advance(self, tow: _Launch) -> list[TowRelease]:
        pairs = [p for p in self._pairs if p.tow is tow]
        for pair in pairs:
            if pair.state is PairState.CANDIDATE:
                self._walk(pair)
        if tow.done:
            return []
        released = [p for p in pairs if p.state is PairState.RELEASED]
        if not released:
            return []
        first = min(released, key=lambda p: p.release.time_us if p.release else 0)
        assert first.release is not None
        # every other candidate must have been judged up to the release before deciding,
        # and the candidate list is open until 60 s after the tow plane's takeoff
        if self.clock_us < tow.first.takeoff_us + TAKEOFF_WINDOW_US:
            return []
        rivals = [p for p in pairs if p is not first and p.state is not PairState.DISCARDED]
        lagging = any(
            p.state is PairState.CANDIDATE and p.evaluated_us < first.release.time_us for p in rivals
        )
        if lagging and self.clock_us - first.release.time_us < ALIGN_US * 6:
            return []  # their fixes may still be on the way from another shard
        tow.done = True
        if rivals:
            TOWS.labels("ambiguous").inc()
            log.debug(
                "tow.ambiguous",
                tow=tow.first.name,
                gliders=[p.glider.first.name for p in [first, *rivals]],
            )
            return []
        glider = first.glider
        glider.done = True
        elevation = glider.elevation_ft
        if elevation is None:
            elevation = glider.first.altitude_ft
        altitude = first.release.altitude_ft
        height = None if altitude is None or elevation is None else altitude - elevation
        TOWS.labels("released").inc()
        release = TowRelease(
            glider_aircraft_id=glider.first.aircraft_id,
            flight_id=glider.first.flight_id,
            tow_aircraft_id=tow.first.aircraft_id,
            release_us=first.release.time_us,
            altitude_ft=altitude,
            height_ft=height,
        )
        log.debug(
            "tow.released",
            glider=glider.first.name,
            tow=tow.first.name,
            release_us=release.release_us,
            height_ft=height,
        )
        return [release]

    def _walk(self, pair: _Pair) -> None:
        """Judge the glider's fixes that the tow plane's track now covers."""
        gliders = pair.glider.fixes
        while pair.cursor < len(gliders) and pair.state is PairState.CANDIDATE:
            g = gliders[pair.cursor]
            t = _interpolate(pair.tow.fixes, g.time_us)
            if t is None:
                if pair.tow.fixes and g.time_us > pair.tow.fixes[-1].time_us:
                    return  # wait for the tow plane's next fix
                pair.cursor += 1  # before the tow plane was seen: nothing to compare
                continue
            pair.cursor += 1
            d = distance_m(g.lat, g.lon, t.lat, t.lon)
            sample = _Sample(g.time_us, d, g.altitude_ft)
            if d <= SEPARATED_M and pair.together_since_us is None:
                pair.together_since_us = g.time_us
            established = (
                pair.together_since_us is not None
                and g.time_us - pair.together_since_us >= ESTABLISHED_US
            )
            if d > SEPARATED_M and established and self._parting(g, t, pair):
                pair.release = self._release_sample(pair)
                pair.state = PairState.RELEASED
            elif d > ON_TOW_M:
                pair.state = PairState.DISCARDED
            pair.samples.append(sample)

    @staticmethod
    def _parting(g: LaunchFix, t: LaunchFix, pair: _Pair) -> bool:
        climbing = False
        if g.climb_fpm is not None and t.climb_fpm is not None:
            climbing = g.climb_fpm > t.climb_fpm
        elif g.altitude_ft is not None and t.altitude_ft is not None and pair.samples:
            previous = pair.samples[-1].altitude_ft
            climbing = previous is not None and g.altitude_ft > previous
        turning = (
            g.track_deg is not None
            and t.track_deg is not None
            and _angle_deg(g.track_deg, t.track_deg) >= TURN_AWAY_DEG
        )
        return climbing or turning

    @staticmethod
    def _release_sample(pair: _Pair) -> _Sample | None:
        for sample in reversed(pair.samples):
            if sample.distance_m <= TOGETHER_M:
                return sample
        return pair.samples[-1] if pair.samples else None

    def _expire(self) -> None:
        old = [
            key
            for key, launch in self._launches.items()
            if self.clock_us - launch.first.takeoff_us > LAUNCH_WINDOW_US + TAKEOFF_WINDOW_US
        ]
        if not old:
            return
        for key in old:
            del self._launches[key]
        live = set(self._launches)
        self._pairs = [
            p
            for p in self._pairs
            if p.tow.first.flight_id in live and p.glider.first.flight_id in live
        ]


def in_launch_window(fix: Fix, takeoff_us: int | None) -> bool:
    return takeoff_us is not None and 0 <= fix.time_us - takeoff_us <= LAUNCH_WINDOW_US


class TowService:
    """The trio side: shards `offer` launch fixes; `run` detects and routes releases."""

    def __init__(self, detector: TowDetector, queue: int = 10_000) -> None:
        self.detector = detector
        self._send, self._receive = trio.open_memory_channel[LaunchFix](queue)
        self.dropped = 0

    def offer(self, item: LaunchFix) -> None:
        """Never blocks: a full queue drops the fix, counted (a tow may go unrecorded)."""
        try:
            self._send.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1
            TOWS.labels("input_dropped").inc()

    def close(self) -> None:
        """No more input: `run` finishes what is queued and returns."""
        self._send.close()

    async def run(
        self,
        shard_sends: list[trio.MemorySendChannel[ShardInput]],
        route: Callable[[int], int] | None = None,
    ) -> None:
        """Until `close()`: feed the detector, send each release to the glider's shard.

        `shard_sends` are the shards' own input channels (the decoders' objects, not
        clones, so that closing them at shutdown still ends the shards); a release that
        finds its shard closed is dropped and counted.
        """
        n = len(shard_sends)
        route = route or (lambda ident: shard_of(ident, n))
        async for item in self._receive:
            for release in self.detector.feed(item):
                channel = shard_sends[route(release.glider_aircraft_id)]
                try:
                    await channel.send(release)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    TOWS.labels("release_dropped").inc()
                    log.warning("tow.release_dropped", flight=str(release.flight_id))


__all__ = [
    "LaunchFix",
    "PairState",
    "TowDetector",
    "TowRelease",
    "TowService",
    "in_launch_window",
]
