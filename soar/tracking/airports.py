"""Nearest airport of a position, from the `airportsdata` tables, through a grid index.

The ICAO-keyed table (~28k airports, many small fields) is merged with the FAA LID table
(~12k US fields, many without an ICAO code) once, on first use. Airports are bucketed in
0.1° cells; a query scans only the cells a `max_m` circle can touch, never the whole table.

May import: soar.tracking.geo
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from soar.tracking.geo import distance_m

_CELL_DEG = 0.1
_METRES_PER_DEG_LAT = 111_320.0


@dataclass(slots=True, frozen=True)
class Airport:
    code: str  # ICAO code, or the FAA LID when the field has none
    name: str
    lat: float
    lon: float
    elevation_ft: float | None
    country: str = ""


def _cell(lat: float, lon: float) -> tuple[int, int]:
    return math.floor(lat / _CELL_DEG), math.floor(lon / _CELL_DEG)


class AirportIndex:
    """A grid index over airports: `nearest(lat, lon, max_m)` is O(airports in a few cells)."""

    def __init__(self, airports: Iterable[Airport]) -> None:
        self._cells: dict[tuple[int, int], list[Airport]] = {}
        self._count = 0
        for airport in airports:
            self._cells.setdefault(_cell(airport.lat, airport.lon), []).append(airport)
            self._count += 1

    def __len__(self) -> int:
        return self._count

    def nearest(self, lat: float, lon: float, max_m: float = 2000.0) -> Airport | None:
        dlat = max_m / _METRES_PER_DEG_LAT
        coslat = max(math.cos(math.radians(lat)), 0.01)
        dlon = min(max_m / (_METRES_PER_DEG_LAT * coslat), 180.0)
        lat_lo, lon_lo = _cell(lat - dlat, lon - dlon)
        lat_hi, lon_hi = _cell(lat + dlat, lon + dlon)
        lon_cells = round(360 / _CELL_DEG)
        best: Airport | None = None
        best_m = max_m
        for ci in range(lat_lo, lat_hi + 1):
            for cj in range(lon_lo, lon_hi + 1):
                # wrap across the antimeridian: cell -1800 is cell 1799
                wrapped = (cj + lon_cells // 2) % lon_cells - lon_cells // 2
                for airport in self._cells.get((ci, wrapped), ()):
                    d = distance_m(lat, lon, airport.lat, airport.lon)
                    if d <= best_m:
                        best, best_m = airport, d
        return best


def _from_airportsdata() -> list[Airport]:
    import airportsdata

    airports: list[Airport] = []
    seen: set[str] = set()
    for code, row in airportsdata.load("ICAO").items():
        airports.append(_airport(code, row))
        seen.add(code)
        if row.get("lid"):
            seen.add(row["lid"])
    for code, row in airportsdata.load("LID").items():
        icao = row.get("icao") or ""
        if code in seen or (icao and icao in seen):
            continue
        airports.append(_airport(code, row))
    return airports


def _airport(code: str, row: Mapping[str, object]) -> Airport:
    elevation = row.get("elevation")
    return Airport(
        code=code,
        name=str(row.get("name") or ""),
        lat=float(str(row["lat"])),
        lon=float(str(row["lon"])),
        elevation_ft=float(str(elevation)) if elevation not in (None, "") else None,
        country=str(row.get("country") or ""),
    )


@cache
def default_index() -> AirportIndex:
    """The airportsdata index, built once per process (~0.3 s)."""
    return AirportIndex(_from_airportsdata())
