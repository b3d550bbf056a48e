"""Late and reordered fixes merged in time order (issue 15, point 2): `OrderedTrack` and the shard.

The oracle is the real Koenigsdorf flood (tests/tracking/flood.py): 211 beacons of 7 gliders
delivered as a 5-minute backlog; one glider lands, one is winch-launched. Whatever order they
arrive in, the flights must be those of an on-time delivery of the same beacons.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from soar.protocols.ogn import AircraftBeacon, parse_line, to_fix
from soar.records import Fix, FlightRow
from soar.tracking.agl import AglCalculator
from soar.tracking.airports import Airport, AirportIndex
from soar.tracking.flight import (
    MINUTE,
    Event,
    FixAccepted,
    FixDropped,
    FixLate,
    FixRevised,
    FlightClosed,
    FlightOpened,
    FlightStateMachine,
    FlightUpdated,
)
from soar.tracking.ordered import SUPERSEDED, OrderedTrack
from soar.tracking.shard import Shard

from .flood import LANDING_GLIDER, TAKEOFF_GLIDER, FloodBeacon, flood_beacons, koenigsdorf_airports
from .helpers import ADDRESS, fix, ids, us

S = 1_000_000


def airports(testdata: Path) -> AirportIndex:
    return AirportIndex(
        Airport(name[:4].upper(), name, lat, lon, elevation)
        for name, lat, lon, elevation in koenigsdorf_airports(testdata)
    )


def at(text: str) -> int:
    return round(datetime.fromisoformat(f"2024-03-29T{text}+00:00").timestamp() * S)


class Delivery:
    """The flood through one shard, in a given order and at given receive times."""

    def __init__(self, testdata: Path, beacons: list[FloodBeacon], received: dict[str, int]):
        self.shard = Shard(agl=AglCalculator(airports=airports(testdata)), new_id=ids())
        self.events: list[Event] = []
        self.fixes: dict[str, Fix] = {}  # by line
        for b in beacons:
            parsed = parse_line(b.line)
            assert isinstance(parsed, AircraftBeacon)
            f = self.fixes[b.line] = to_fix(parsed, received[b.line], "flood")
            self.events += self.shard.process(f)

    def flights(self) -> dict[int, FlightRow]:
        """The last row of each flight, by aircraft (one flight each here), superseded left out,
        open ones as the shard writes them when its input ends."""
        rows: dict[uuid.UUID, FlightRow] = {}
        for e in self.events:
            if isinstance(e, FlightOpened | FlightUpdated | FlightClosed):
                rows[e.row.id] = e.row
        for state in self.shard.aircraft.values():
            if (row := state.machine.open_flight) is not None:
                rows[row.id] = row
        out = {}
        for row in rows.values():
            if row.end_reason != SUPERSEDED:
                assert row.aircraft_id not in out
                out[row.aircraft_id] = row
        return out

    def summary(self) -> dict[int, tuple[object, ...]]:
        return {
            ident: (r.takeoff_us, r.landing_us, r.first_fix_us, r.last_fix_us, r.end_reason,
                    r.fix_count, round(r.distance_m, 6), r.max_altitude_ft, r.max_agl_ft,
                    r.spurious_reason)
            for ident, r in self.flights().items()
        }

    def stored(self) -> dict[str, tuple[object, ...]]:
        """Every fix as the store ends up with it: revisions are updates of the same row."""
        flights = {r.id: r.aircraft_id for r in self.flights().values()}
        return {line: (f.time_us, flights.get(f.flight_id) if f.flight_id else None, f.is_active)
                for line, f in self.fixes.items()}


def on_time(testdata: Path) -> Delivery:
    """Each beacon received 1 s after it was sent, in the order they were sent."""
    beacons = sorted(flood_beacons(testdata), key=lambda b: b.beacon_us)
    return Delivery(testdata, beacons, {b.line: b.beacon_us + S for b in beacons})


def test_on_time_the_flood_is_one_landing_and_one_takeoff(testdata: Path) -> None:
    run = on_time(testdata)
    assert [e for e in run.events if isinstance(e, FixDropped | FixLate)] == []
    flights = run.flights()
    assert len(flights) == 2
    landing = next(r for r in flights.values() if r.landing_us is not None)
    takeoff = next(r for r in flights.values() if r.takeoff_us is not None)
    # FLRDD95BF: first seen at 2,517 ft on final, 64 kt; its first fix under 25 kt is 15:56:25
    assert f"{landing.aircraft_id & 0xFFFFFF:06X}" == LANDING_GLIDER[3:]
    assert (landing.takeoff_us, landing.landing_us) == (None, at("15:56:25"))
    assert landing.spurious_reason is None  # a short look at a real approach is no glitch
    # FLRDDDE8E: standing at 0 kt every 20 s, then 26 kt at 15:57:42 and up the winch
    assert f"{takeoff.aircraft_id & 0xFFFFFF:06X}" == TAKEOFF_GLIDER[3:]
    assert (takeoff.takeoff_us, takeoff.landing_us) == (at("15:57:42"), None)


def test_the_flood_as_delivered_gives_the_on_time_flights(testdata: Path) -> None:
    beacons = flood_beacons(testdata)
    delivered = Delivery(testdata, sorted(beacons, key=lambda b: b.received_us),
                         {b.line: b.received_us for b in beacons})
    reference = on_time(testdata)
    assert delivered.summary() == reference.summary()
    assert delivered.stored() == reference.stored()


@pytest.mark.parametrize("seed", range(6))
def test_the_flood_shuffled_gives_the_on_time_flights(testdata: Path, seed: int) -> None:
    beacons = flood_beacons(testdata)
    random.Random(seed).shuffle(beacons)
    delivered = Delivery(testdata, beacons, {b.line: b.received_us for b in beacons})
    reference = on_time(testdata)
    assert delivered.summary() == reference.summary()
    # every fix ends in the flight (and with the active flag) it has on time: what a merge
    # re-decided went out as FixRevised
    assert delivered.stored() == reference.stored()
    # each flight opened once and closed at most once, however often a merge re-decided it
    opened = Counter(e.row.id for e in delivered.events if isinstance(e, FlightOpened))
    closed = Counter(e.row.id for e in delivered.events if isinstance(e, FlightClosed))
    assert set(opened.values()) == {1} and set(closed.values()) <= {1}
    # every fix stored once (FixAccepted), with a receive time no other fix of its aircraft has
    accepted = [e.fix for e in delivered.events if isinstance(e, FixAccepted)]
    assert len(accepted) == 211
    assert len({(f.aircraft_id, f.received_us) for f in accepted}) == 211


def test_merged_flight_rows_carry_the_aircrafts_newest_time(testdata: Path) -> None:
    # The store keeps the row with the greatest as_of: each row carries the newest own time of
    # its aircraft's fixes so far, which a merge (its last fix moving back) never lowers.
    beacons = flood_beacons(testdata)
    random.Random(1).shuffle(beacons)
    shard = Shard(agl=AglCalculator(airports=airports(testdata)), new_id=ids())
    newest: dict[int, int] = {}
    rows = 0
    for b in beacons:
        parsed = parse_line(b.line)
        assert isinstance(parsed, AircraftBeacon)
        f = to_fix(parsed, b.received_us, "flood")
        newest[f.aircraft_id] = max(newest.get(f.aircraft_id, 0), f.time_us)
        for e in shard.process(f):
            if isinstance(e, FlightOpened | FlightUpdated | FlightClosed):
                assert e.row.as_of_us == newest[e.row.aircraft_id]
                rows += 1
    assert rows > 20


# ---- the track alone ------------------------------------------------------------------------


def track() -> OrderedTrack:
    return OrderedTrack(FlightStateMachine(ADDRESS, ids()))


def feed(t: OrderedTrack, *fixes: Fix) -> list[Event]:
    events: list[Event] = []
    for f in fixes:
        events += t.on_fix(f)
    return events


def flying(start: float, n: int, step: float = 10.0, **kw: object) -> list[Fix]:
    return [fix(start + i * step, 60.0, **kw) for i in range(n)]  # type: ignore[arg-type]


def parked(start: float, n: int, step: float = 10.0, **kw: object) -> list[Fix]:
    return [fix(start + i * step, 0.0, **kw) for i in range(n)]  # type: ignore[arg-type]


def test_a_flight_the_first_pass_made_is_superseded_not_deleted() -> None:
    # Two receivers: one delivers a glider's final glide and, it seems, a landing and a new
    # takeoff; the other's backlog then shows it never stopped flying in between.
    t = track()
    events = feed(t, *parked(0, 3), *flying(30, 5), *parked(80, 5), *flying(130, 5))
    first_pass = [e.row for e in events if isinstance(e, FlightOpened)]
    assert [r.takeoff_us for r in first_pass] == [us(30), us(130)]
    late = [fix(200 + i, 60.0, at=85 + 10 * i) for i in range(4)]  # flying at 85..115 s
    merged = feed(t, *late)
    rows = {e.row.id: e.row for e in merged if isinstance(e, FlightUpdated)}
    gone = rows[first_pass[1].id]
    assert (gone.end_reason, gone.spurious_reason) == (SUPERSEDED, SUPERSEDED)
    kept = rows[first_pass[0].id]  # the first flight goes on: no landing at 80 s
    assert (kept.takeoff_us, kept.landing_us, kept.end_reason) == (us(30), None, None)
    assert kept.last_fix_us == us(170)
    # the fixes after 80 s now belong to the first flight
    revised = [e.fix for e in merged if isinstance(e, FixRevised)]
    assert {f.flight_id for f in revised} == {first_pass[0].id}
    assert t.machine.open_flight is not None and t.machine.open_flight.id == first_pass[0].id
    assert not [e for e in merged if isinstance(e, FlightOpened | FlightClosed)]


def test_fixes_older_than_the_window_are_late() -> None:
    t = track()
    feed(t, *parked(0, 3), *flying(30, 70))  # newest at 720 s
    (late,) = feed(t, fix(800, 60.0, at=720 - 10 * MINUTE / S - 1))
    assert isinstance(late, FixLate)
    inside = feed(t, fix(801, 60.0, at=720 - 10 * MINUTE / S + 5))
    assert [type(e) for e in inside if isinstance(e, FixAccepted | FixLate)] == [FixAccepted]
    assert t.merges == 1


def test_a_repeat_of_a_merged_fix_is_a_duplicate_without_a_merge() -> None:
    t = track()
    feed(t, *parked(0, 3), *flying(30, 10))
    feed(t, fix(200, 60.0, at=55))
    (dropped,) = feed(t, fix(201, 60.0, at=55))
    assert isinstance(dropped, FixDropped) and dropped.reason == "duplicate"
    assert t.merges == 1


def test_enrichment_survives_a_merge() -> None:
    t = track()
    feed(t, *parked(0, 3), *flying(30, 5))
    flight = t.machine.open_flight
    assert flight is not None
    t.apply_enrichment(flight.id, "takeoff", "EDPK", "25")
    merged = feed(t, fix(100, 60.0, at=45))
    (row,) = [e.row for e in merged if isinstance(e, FlightUpdated)]
    assert (row.departure_airport, row.takeoff_runway) == ("EDPK", "25")
    assert row.fix_count == 6


def test_a_shared_receive_time_is_made_unique_per_aircraft() -> None:
    # one socket read stamps all its lines alike; the store's key is (aircraft, received_at)
    t = track()
    events = feed(t, fix(5, 0.0, at=1), fix(5, 0.0, at=2), fix(5, 0.0, at=3))
    received = [e.fix.received_us for e in events if isinstance(e, FixAccepted)]
    assert received == [us(5), us(5) + 1, us(5) + 2]


def test_a_silent_aircraft_keeps_no_journal() -> None:
    # Parked or gone: after the window of silence on the receive clock, what only merges need
    # is dropped (most aircraft a shard holds are such), and a late fix is then only late.
    t = track()
    feed(t, *parked(0, 3), *flying(30, 20))
    t.settle(us(220 + 10 * MINUTE / S))
    assert len(t._journal) == 20 + 3  # not silent for the window yet
    t.settle(us(220 + 10 * MINUTE / S + 1))
    assert t._journal == [] and len(t._checkpoints) == 1
    (late,) = feed(t, fix(2000, 60.0, at=205))
    assert isinstance(late, FixLate) and t.merges == 0
