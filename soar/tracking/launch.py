"""How a flight was launched, from what the flight row and its first fixes say. Pure.

The flight log and the map both show it; neither has to know the rules, which are the ones a
duty manager applies reading the launch point:

* **aerotow** — the flight has a tow partner (`soar.tracking.tow` paired it with a tow plane
  and recorded the release). The tow plane's registration goes with it.
* **winch** — a steep climb from rest with no tow partner: the takeoff was *observed* (the
  aircraft was seen standing on the ground first, so it was on a field; not first seen
  airborne and not a takeoff projected out of coverage), the aircraft is one that is winched
  (glider, hang glider, paraglider, or an OGN device of unknown type), and within
  `WINCH_WINDOW_S` of the takeoff it climbed at `WINCH_CLIMB_FPM` or more. An aerotow climbs
  at 300-1,000 fpm behind the tug; a winch launch at 2,000-4,000 fpm (the real Koenigsdorf
  launches: 3,445 fpm 6 s after the roll began, 4,257 fpm with a broken rope). The airfield is
  not required to be *named*: many glider sites (Koenigsdorf among them) are missing from the
  airport tables, and standing still before the climb already says it was on one.
* **self** — a powered aircraft (OGN type tow plane, helicopter, drop plane, powered, jet,
  airship, UAV), or an ADS-B aircraft whose emitter category is not a glider, balloon,
  parachutist or ultralight, seen taking off on its own. A tow plane's own flight is `self`
  and is marked `tow_plane` besides.
* **unknown** — anything else: first seen airborne, a takeoff out of coverage, a glider that
  neither climbed like a winch launch nor was paired with a tug (a self-launching motor
  glider and an aerotow whose tug soar did not hear look the same). A guess would be worse
  in a flight log than a blank.

May import: soar.records
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from soar.records import AircraftType

WINCH_CLIMB_FPM = 1_500.0
WINCH_WINDOW_S = 40.0

_WINCHED = frozenset({AircraftType.GLIDER, AircraftType.HANG_GLIDER, AircraftType.PARAGLIDER,
                      AircraftType.UNKNOWN})
_POWERED = frozenset({AircraftType.TOW_PLANE, AircraftType.HELICOPTER, AircraftType.DROP_PLANE,
                      AircraftType.POWERED, AircraftType.JET, AircraftType.AIRSHIP,
                      AircraftType.UAV})
# ADS-B emitter categories of aircraft without an engine of their own to take off with
# (B1 glider, B2 lighter than air, B3 parachutist, B4 ultralight/hang glider/paraglider).
_UNPOWERED_CATEGORIES = frozenset({"B1", "B2", "B3", "B4"})


class LaunchMethod(enum.StrEnum):
    AEROTOW = "aerotow"
    WINCH = "winch"
    SELF = "self"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class LaunchFacts:
    """What the launch method is decided from (one flight)."""

    takeoff_observed: bool  # seen on the ground, then airborne (not first seen airborne/projected)
    has_tow: bool  # paired with a tow plane
    departure_airport: str | None
    aircraft_type: int | None  # OGN type code (soar.records.AircraftType)
    adsb: bool  # the flight's protocol is Beast or SBS
    category: str | None  # ADS-B emitter category
    max_early_climb_fpm: float | None  # highest climb within WINCH_WINDOW_S after takeoff


def _type(code: int | None) -> AircraftType | None:
    if code is None:
        return None
    try:
        return AircraftType(code)
    except ValueError:
        return None


def launch_method(facts: LaunchFacts) -> LaunchMethod:
    if facts.has_tow:
        return LaunchMethod.AEROTOW
    if not facts.takeoff_observed:
        return LaunchMethod.UNKNOWN
    kind = _type(facts.aircraft_type)
    if kind in _POWERED:
        return LaunchMethod.SELF
    if facts.adsb and kind is None:
        if facts.category is not None and facts.category.upper() in _UNPOWERED_CATEGORIES:
            return LaunchMethod.UNKNOWN
        return LaunchMethod.SELF
    winched = kind in _WINCHED or (kind is None and not facts.adsb)
    if (
        winched
        and facts.max_early_climb_fpm is not None
        and facts.max_early_climb_fpm >= WINCH_CLIMB_FPM
    ):
        return LaunchMethod.WINCH
    return LaunchMethod.UNKNOWN
