"""The launch method rules (soar/tracking/launch.py) on the real Koenigsdorf winch launches,
and each rule's boundary."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import pytest

from soar.records import AircraftType
from soar.tracking.launch import (
    WINCH_CLIMB_FPM,
    WINCH_WINDOW_S,
    LaunchFacts,
    LaunchMethod,
    launch_method,
)

FPM_PER_MS = 196.850394
KMH_PER_KT = 1.852
TAKEOFF_KT = 25.0  # soar.tracking.flight.ACTIVE_SPEED_KT: the first active fix is the takeoff


def early_climb(samples: list[tuple[float, float, float]]) -> float:
    """(time s, ground speed kt, climb fpm) from rest → the highest climb within the window
    after the first fix at takeoff speed."""
    takeoff = next(t for t, speed, _ in samples if speed >= TAKEOFF_KT)
    return max(c for t, _, c in samples if takeoff <= t <= takeoff + WINCH_WINDOW_S)


def ognmonitoring(path: Path) -> list[tuple[float, float, float]]:
    # raw APRS units: speed kt, climb fpm
    with path.open(newline="") as f:
        return [(datetime.fromisoformat(r["ts_beacon"]).timestamp(), float(r["speed"]),
                 float(r["climb_rate"])) for r in csv.DictReader(f)]


def ognpython(path: Path) -> list[tuple[float, float, float]]:
    # ogn-python's stored units: ground speed km/h, climb m/s
    with path.open(newline="") as f:
        return [(datetime.fromisoformat(r["timestamp"]).timestamp(),
                 float(r["ground_speed"]) / KMH_PER_KT, float(r["climb_rate"]) * FPM_PER_MS)
                for r in csv.DictReader(f)]


def glider(climb: float | None, **changes: object) -> LaunchFacts:
    facts = {"takeoff_observed": True, "has_tow": False, "departure_airport": None,
             "aircraft_type": int(AircraftType.GLIDER), "adsb": False, "category": None,
             "max_early_climb_fpm": climb}
    facts.update(changes)
    return LaunchFacts(**facts)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "reader", "climb"), [
    ("ognmonitoring-takeoff-koenigsdorf-20240329.csv", ognmonitoring, 3445.0),
    ("ognpython-broken-rope-koenigsdorf-20160702.csv", ognpython, 4257.0),
    ("ognpython-broken-rope-with-stall-koenigsdorf-20190413.csv", ognpython, None),
])
def test_real_winch_launches_are_winch(testdata: Path, name: str, reader: object,
                                       climb: float | None) -> None:
    samples = reader(testdata / "ogn" / name)  # type: ignore[operator]
    measured = early_climb(samples)
    if climb is not None:
        assert measured == pytest.approx(climb, abs=1)
    assert measured >= WINCH_CLIMB_FPM
    assert launch_method(glider(measured)) is LaunchMethod.WINCH
    # the same climb behind a tug is an aerotow; not seen from rest, nobody can tell
    assert launch_method(glider(measured, has_tow=True)) is LaunchMethod.AEROTOW
    assert launch_method(glider(measured, takeoff_observed=False)) is LaunchMethod.UNKNOWN


def test_rules_at_their_boundaries() -> None:
    assert launch_method(glider(WINCH_CLIMB_FPM)) is LaunchMethod.WINCH
    # an aerotow's climb with no tug heard: a motor glider or an unheard tug, not a guess
    assert launch_method(glider(WINCH_CLIMB_FPM - 1)) is LaunchMethod.UNKNOWN
    assert launch_method(glider(None)) is LaunchMethod.UNKNOWN
    for kind in (AircraftType.HANG_GLIDER, AircraftType.PARAGLIDER, AircraftType.UNKNOWN):
        assert launch_method(glider(2000, aircraft_type=int(kind))) is LaunchMethod.WINCH
    assert launch_method(glider(2000, aircraft_type=None)) is LaunchMethod.WINCH
    # powered aircraft launch themselves, whatever their climb
    for kind in (AircraftType.TOW_PLANE, AircraftType.POWERED, AircraftType.JET,
                 AircraftType.HELICOPTER):
        assert launch_method(glider(3392, aircraft_type=int(kind))) is LaunchMethod.SELF
        assert launch_method(glider(500, aircraft_type=int(kind))) is LaunchMethod.SELF
    # a tow plane's tow partner makes an aerotow only of the glider's flight
    assert launch_method(glider(None, aircraft_type=int(AircraftType.TOW_PLANE),
                                takeoff_observed=False)) is LaunchMethod.UNKNOWN
    # ADS-B: an airliner climbing out is self; a glider by its emitter category is not
    assert launch_method(glider(3392, aircraft_type=None, adsb=True, category="A3")
                         ) is LaunchMethod.SELF
    assert launch_method(glider(3392, aircraft_type=None, adsb=True)) is LaunchMethod.SELF
    assert launch_method(glider(3392, aircraft_type=None, adsb=True, category="B1")
                         ) is LaunchMethod.UNKNOWN
    # balloons and parachutes are neither winched nor self-launched
    assert launch_method(glider(3000, aircraft_type=int(AircraftType.BALLOON))
                         ) is LaunchMethod.UNKNOWN
