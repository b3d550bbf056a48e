"""Landings and takeoffs that happened out of receiver coverage, projected from the last
(or first) fix seen.

An aircraft that descends out of coverage low and fast, and is next seen hours later
climbing from low level, has landed and taken off again, even though no receiver saw either.
An operator reads that from the altitude and the vertical rate; so does this module:

* height = the fix's AGL when known (terrain tile, or an airport within 2 km); otherwise its
  altitude above the elevation of the airport it can reach; otherwise its MSL altitude;
* at the fix's vertical rate (at least 250 fpm in the right direction) it meets the ground
  after height / rate minutes; the projection is used only when that is at most 10 minutes
  and the height at most 5,000 ft: a higher or slower aircraft could have levelled off,
  gone around or flown anywhere;
* the airport is the nearest one the aircraft can reach in that time at its ground speed,
  plus 5 km because an airport's reference point can lie kilometres from its runway ends
  (the search radius is kept between 10 and 40 km).

Pure: no I/O, no clock.

May import: soar.records, soar.tracking.airports, soar.tracking.geo
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from soar.records import Fix
from soar.tracking.airports import Airport
from soar.tracking.geo import METRES_PER_NM

SECOND_US = 1_000_000

MAX_HEIGHT_FT = 5_000.0
MAX_MINUTES = 10.0
MIN_RATE_FPM = 250.0
AIRPORT_MARGIN_M = 5_000.0
AIRPORT_MIN_RADIUS_M = 10_000.0
AIRPORT_MAX_RADIUS_M = 40_000.0


class NearestAirport(Protocol):
    """What the projection needs of an airport index (`AirportIndex` is one)."""

    def nearest(self, lat: float, lon: float, max_m: float = ...) -> Airport | None: ...


@dataclass(slots=True, frozen=True)
class Projection:
    time_us: int  # the projected touchdown (descending) or liftoff (climbing)
    airport: str | None
    height_ft: float  # above the reference used
    rate_fpm: float  # the magnitude of the vertical rate used


def project_to_ground(
    fix: Fix, climb_fpm: float | None, airports: NearestAirport | None
) -> Projection | None:
    """When `fix` (descending: forwards; climbing: backwards) meets the ground, or None.

    `climb_fpm` is the vertical rate to use (negative: descending); its sign says which way
    the projection goes.
    """
    altitude = fix.altitude_ft
    if altitude is None or climb_fpm is None or abs(climb_fpm) < MIN_RATE_FPM:
        return None
    rate = abs(climb_fpm)
    # the reach radius from an upper bound of the time (terrain is almost never below MSL)
    msl_minutes = min(max(altitude, 0.0) / rate, MAX_MINUTES)
    speed_kt = fix.ground_speed_kt or 0.0
    reach_m = speed_kt * METRES_PER_NM * msl_minutes / 60.0 + AIRPORT_MARGIN_M
    radius = min(max(reach_m, AIRPORT_MIN_RADIUS_M), AIRPORT_MAX_RADIUS_M)
    airport = airports.nearest(fix.lat, fix.lon, radius) if airports is not None else None
    if fix.agl_ft is not None:
        height = fix.agl_ft
    elif airport is not None and airport.elevation_ft is not None:
        height = altitude - airport.elevation_ft
    else:
        height = altitude
    if height > MAX_HEIGHT_FT:
        return None
    height = max(height, 0.0)
    minutes = height / rate
    if minutes > MAX_MINUTES:
        return None
    # whole seconds: a projection is no more precise than that, and should not look it
    offset_us = round(minutes * 60) * SECOND_US
    time_us = fix.time_us + offset_us if climb_fpm < 0 else fix.time_us - offset_us
    return Projection(time_us, airport.code if airport else None, height, rate)
