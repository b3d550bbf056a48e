"""The real-trace oracles, through the real OGN parser and a shard."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from soar.records import AddressType, Fix, aircraft_id
from soar.tracking.agl import AglCalculator
from soar.tracking.airports import default_index
from soar.tracking.flight import Event, FixAccepted, FixDropped, FlightClosed, FlightOpened
from soar.tracking.shard import Shard
from tests.support import ogn_trace_fixes

from .helpers import ids


def replay(fixes: list[Fix]) -> list[Event]:
    shard = Shard(agl=AglCalculator(airports=default_index()), new_id=ids())
    events: list[Event] = []
    for f in fixes:
        events += shard.process(f)
    return events


def us(iso: str) -> int:
    return round(datetime.fromisoformat(iso).timestamp() * 1e6)


def test_descended_out_of_range_then_took_off_is_two_flights(testdata: Path) -> None:
    fixes = ogn_trace_fixes(testdata / "ogn" / "soar-flight-descended-out-of-range-then-took-off.txt")
    assert len(fixes) == 1183
    events = replay(fixes)
    ident = aircraft_id(AddressType.ICAO, 0x48683E)
    stored = [e.fix for e in events if isinstance(e, FixAccepted)]
    flight_ids = {f.flight_id for f in stored}
    assert None not in flight_ids  # airborne or landing from the first fix to the last
    assert len(flight_ids) == 2
    # 66 beacons are the same ADS-B report (same own time, a few metres to 160 m apart)
    # decoded by a second or third receiver: stored once
    dropped = [e.reason for e in events if isinstance(e, FixDropped)]
    assert (len(stored), dropped) == (1117, ["duplicate"] * 66)

    rows = {}
    for e in events:
        if isinstance(e, FlightOpened | FlightClosed):
            assert e.row.aircraft_id == ident
            rows[e.row.id] = e.row
    assert set(rows) == flight_ids
    first, second = sorted(rows.values(), key=lambda r: r.first_fix_us)

    # the evening flight: first seen at FL182 descending towards Amsterdam, lost at 3,687 ft
    # descending at ~830 fpm (mean of the last 2 minutes' reported rates), 194 kt: at that
    # rate it touches down 265 s later; Schiphol (-11 ft) is the airport it can reach.
    # Closed as landed out of coverage, not timed out. Every time is the beacons' own
    # (`/221816h`, received at 22:18:15.956: that receiver's clock ran 44 ms ahead).
    assert first.first_fix_us == us("2025-12-23T22:18:16+00:00")
    assert first.takeoff_us is None
    assert first.last_fix_us == us("2025-12-23T22:28:16+00:00")
    assert first.landing_us == us("2025-12-23T22:32:41+00:00")
    assert first.end_reason == "landed_out_of_coverage"
    assert first.arrival_airport == "EHAM"
    assert first.timed_out_us is None
    assert first.timeout_phase is None
    assert first.callsign == "TRA24U"

    # the morning flight, 7 h later: first seen climbing through 4,932 ft at 3,392 fpm north
    # of Schiphol. Known to be on the ground since its landing, so this is a takeoff: 87 s
    # before the first fix at that rate. Through a 62-minute hole in coverage over France
    # (resumed, not split), landed at Barcelona.
    assert second.first_fix_us == us("2025-12-24T05:46:34+00:00")
    assert second.takeoff_us == us("2025-12-24T05:45:07+00:00")
    assert second.departure_airport == "EHAM"
    assert second.timed_out_us is None
    # the first fix on the ground, `/072859h`, received 1.2 s later
    assert second.landing_us == us("2025-12-24T07:28:59+00:00")
    assert second.end_reason == "landed"
    assert second.callsign == "TRA34Z"
    assert second.spurious_reason is None
    assert first.spurious_reason is None
    assert second.takeoff_us - first.landing_us > 7 * 3600 * 1_000_000  # hours apart

    hows = [e.how for e in events if isinstance(e, FlightOpened)]
    assert hows == ["first_seen", "takeoff_out_of_coverage", "resumed"]


def test_stationary_tracker_makes_no_flight(testdata: Path) -> None:
    fixes = ogn_trace_fixes(testdata / "ogn" / "soar-flight-no-active-fixes.txt")
    events = replay(fixes)
    stored = [e.fix for e in events if isinstance(e, FixAccepted)]
    assert len(stored) == 6
    assert all(f.is_active is False and f.flight_id is None for f in stored)
    assert not [e for e in events if isinstance(e, FlightOpened | FlightClosed)]


@pytest.mark.parametrize("name", ["soar-flight-descended-out-of-range-then-took-off.txt"])
def test_replay_is_deterministic(testdata: Path, name: str) -> None:
    a = [
        (type(e).__name__, getattr(e, "row", None))
        for e in replay(ogn_trace_fixes(testdata / "ogn" / name))
    ]
    b = [
        (type(e).__name__, getattr(e, "row", None))
        for e in replay(ogn_trace_fixes(testdata / "ogn" / name))
    ]
    assert a == b
