"""Fix sequences for the flight-rule tests."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable

from soar.records import AddressType, Fix, Protocol

T0 = 1_766_000_000_000_000  # 2025-12-17T19:33:20Z, µs
S = 1_000_000
ADDRESS = 0x48683E


def ids() -> Callable[[], uuid.UUID]:
    counter = itertools.count(1)
    return lambda: uuid.UUID(int=next(counter))


def fix(
    t_s: float,
    speed: float | None = 0.0,
    *,
    alt: float | None = 500.0,
    agl: float | None = None,
    lat: float = 45.0,
    lon: float = 9.0,
    protocol: Protocol = Protocol.OGN,
    on_ground: bool | None = None,
    callsign: str | None = None,
    climb: float | None = None,
    track: float | None = None,
    at: float | None = None,
) -> Fix:
    """A fix received at `t_s`; its own time is `at` (default: the receive time)."""
    return Fix(
        protocol=protocol,
        address_type=AddressType.ICAO,
        address=ADDRESS,
        received_us=T0 + round(t_s * S),
        lat=lat,
        lon=lon,
        time_us=T0 + round((t_s if at is None else at) * S),
        altitude_ft=alt,
        ground_speed_kt=speed,
        track_deg=track,
        climb_fpm=climb,
        callsign=callsign,
        on_ground=on_ground,
        agl_ft=agl,
    )


def us(t_s: float) -> int:
    return T0 + round(t_s * S)
