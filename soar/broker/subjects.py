"""NATS names used by soar (pure): envelope partitions, their durable consumers, live subjects.

    soar.env.<partition>              envelope batches, partition = shard_of(aircraft, N)
    <stream>-<partition>              the durable pull consumer of one partition (any track
                                      can bind it, which is how a partition changes hands)
    soar.live.area.<lat>.<lon>        live fixes in one 1° square (floor of each, may be < 0)
    soar.live.aircraft.<id>           live fixes of one aircraft

May import: nothing of soar
"""

from __future__ import annotations

import math

ENV_PREFIX = "soar.env"
ENV_STREAM = "SOAR_ENV"
LIVE_PREFIX = "soar.live"


def partition_subject(partition: int, prefix: str = ENV_PREFIX) -> str:
    return f"{prefix}.{partition}"


def durable_name(partition: int, stream: str = ENV_STREAM) -> str:
    # durable names may not contain '.', '*', '>' or whitespace; stream names neither
    return f"{stream}-{partition}"


def live_area_subject(lat: float, lon: float, prefix: str = LIVE_PREFIX) -> str:
    return f"{prefix}.area.{math.floor(lat)}.{math.floor(lon)}"


def live_aircraft_subject(aircraft_id: int, prefix: str = LIVE_PREFIX) -> str:
    return f"{prefix}.aircraft.{aircraft_id}"


def live_area_subjects(south: float, west: float, north: float, east: float,
                       prefix: str = LIVE_PREFIX) -> list[str]:
    """The square subjects covering a bounding box (west > east crosses the antimeridian)."""
    lats = range(math.floor(max(south, -90.0)), min(math.floor(min(north, 90.0)), 89) + 1)
    first, last = math.floor(west), math.floor(east)
    if west <= east:
        lons = list(range(max(first, -180), min(last, 179) + 1))
    else:
        lons = list(range(max(first, -180), 180)) + list(range(-180, min(last, 179) + 1))
    return [f"{prefix}.area.{lat}.{lon}" for lat in lats for lon in lons]
