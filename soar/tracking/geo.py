"""Small spherical-earth helpers: distances and angle averages.

May import: nothing of soar
"""

from __future__ import annotations

import math
from collections.abc import Iterable

EARTH_RADIUS_M = 6_371_008.8
METRES_PER_NM = 1852.0
FEET_PER_METRE = 1 / 0.3048


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in metres."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def circular_mean_deg(angles: Iterable[float]) -> float | None:
    """Mean of angles in degrees in [0, 360), or None when empty or without a direction."""
    sx = sy = 0.0
    n = 0
    for angle in angles:
        r = math.radians(angle)
        sx += math.cos(r)
        sy += math.sin(r)
        n += 1
    if n == 0 or math.hypot(sx, sy) < 1e-9 * n:
        return None
    return math.degrees(math.atan2(sy, sx)) % 360.0
