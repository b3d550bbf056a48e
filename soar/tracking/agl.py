"""Height above ground: MSL altitude minus terrain, or minus the nearby airport's elevation.

Terrain tiles win when configured and present; otherwise, within 2 km of an airport its
elevation stands in for the ground (good enough to tell a takeoff or landing there); else
AGL is unknown and the flight rules fall back to ground speed.

May import: soar.tracking.airports, soar.tracking.geo, soar.tracking.terrain
"""

from __future__ import annotations

from soar.tracking.airports import AirportIndex
from soar.tracking.geo import FEET_PER_METRE
from soar.tracking.terrain import Terrain

AIRPORT_RADIUS_M = 2000.0


class AglCalculator:
    def __init__(self, terrain: Terrain | None = None, airports: AirportIndex | None = None):
        self.terrain = terrain
        self.airports = airports

    def ground_ft(self, lat: float, lon: float) -> float | None:
        if self.terrain is not None:
            metres = self.terrain.elevation_m(lat, lon)
            if metres is not None:
                return metres * FEET_PER_METRE
        if self.airports is not None:
            airport = self.airports.nearest(lat, lon, AIRPORT_RADIUS_M)
            if airport is not None and airport.elevation_ft is not None:
                return airport.elevation_ft
        return None

    def agl_ft(self, lat: float, lon: float, altitude_ft: float | None) -> float | None:
        if altitude_ft is None:
            return None
        ground = self.ground_ft(lat, lon)
        return None if ground is None else altitude_ft - ground
