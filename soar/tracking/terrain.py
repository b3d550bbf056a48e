"""Terrain elevation from SRTM `.hgt` / `.hgt.gz` tiles, for AGL.

A tile covers one degree; its name is its south-west corner (`N40W074`). Samples are
big-endian int16 metres, rows from north to south, 3601² for 1″ tiles and 1201² for 3″
tiles (the edges repeat the neighbours'). Voids are -32768 and never enter an average.
Tiles are found as `<dir>/N40/N40W074.hgt[.gz]` or flat `<dir>/N40W074.hgt[.gz]`.

Loading is synchronous and happens once per tile: measured here, a 1″ gzip tile (26 MB of
samples) decompresses and byte-swaps in ~90 ms. Aircraft stay for minutes to hours in the
same few tiles, so a shard pays that once per tile per process, which is cheaper and simpler
than "unknown until a worker thread has it" (and answers the same on every run, which keeps
flights reproducible). A bounded LRU (default 16 tiles, ~415 MB at 1″) evicts the least
recently used tile; a missing tile is remembered so it is not looked for on every fix.

May import: nothing of soar
"""

from __future__ import annotations

import array
import gzip
import math
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import Counter, Histogram

log = structlog.get_logger(__name__)

VOID = -32768

TILE_LOADS = Counter("soar_terrain_tile_loads_total", "SRTM tiles loaded", ["result"])
TILE_LOAD_SECONDS = Histogram("soar_terrain_tile_load_seconds", "Time to load one SRTM tile")


@dataclass(slots=True)
class Tile:
    south: int
    west: int
    size: int  # samples per side: 3601 (1″) or 1201 (3″)
    samples: array.array[int]

    def sample(self, row: int, col: int) -> int:
        return self.samples[row * self.size + col]

    def elevation_m(self, lat: float, lon: float) -> float | None:
        """Bilinear interpolation of the four surrounding samples; voids are left out."""
        step = self.size - 1
        y = (self.south + 1 - lat) * step  # rows grow southwards
        x = (lon - self.west) * step
        r0 = min(max(math.floor(y), 0), step - 1)
        c0 = min(max(math.floor(x), 0), step - 1)
        fy = min(max(y - r0, 0.0), 1.0)
        fx = min(max(x - c0, 0.0), 1.0)
        total = weight = 0.0
        for dr, dc, w in (
            (0, 0, (1 - fy) * (1 - fx)),
            (0, 1, (1 - fy) * fx),
            (1, 0, fy * (1 - fx)),
            (1, 1, fy * fx),
        ):
            value = self.sample(r0 + dr, c0 + dc)
            if value != VOID and w > 0:
                total += value * w
                weight += w
        if weight <= 0:
            return None
        return total / weight


def tile_name(south: int, west: int) -> str:
    ns = "N" if south >= 0 else "S"
    ew = "E" if west >= 0 else "W"
    return f"{ns}{abs(south):02d}{ew}{abs(west):03d}"


def read_tile(path: Path, south: int, west: int) -> Tile:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    count = len(raw) // 2
    size = math.isqrt(count)
    if size * size != count or size not in (3601, 1201):
        raise ValueError(f"{path}: {len(raw)} bytes is not a 1″ or 3″ SRTM tile")
    samples = array.array("h")
    samples.frombytes(raw)
    if sys.byteorder == "little":
        samples.byteswap()
    return Tile(south, west, size, samples)


class Terrain:
    """Terrain elevation (metres MSL) from a directory of SRTM tiles, loaded lazily."""

    def __init__(self, directory: Path | str, max_tiles: int = 16) -> None:
        self.directory = Path(directory)
        self.max_tiles = max_tiles
        self._tiles: OrderedDict[tuple[int, int], Tile | None] = OrderedDict()

    def _find(self, south: int, west: int) -> Path | None:
        name = tile_name(south, west)
        for folder in (self.directory / name[:3], self.directory):
            for suffix in (".hgt.gz", ".hgt"):
                path = folder / (name + suffix)
                if path.is_file():
                    return path
        return None

    def tile(self, south: int, west: int) -> Tile | None:
        key = (south, west)
        if key in self._tiles:
            self._tiles.move_to_end(key)
            return self._tiles[key]
        tile: Tile | None = None
        path = self._find(south, west)
        if path is not None:
            started = time.perf_counter()
            try:
                tile = read_tile(path, south, west)
            except (OSError, ValueError, EOFError) as exc:
                TILE_LOADS.labels("error").inc()
                log.warning("terrain.tile_unreadable", path=str(path), error=str(exc))
            else:
                elapsed = time.perf_counter() - started
                TILE_LOAD_SECONDS.observe(elapsed)
                TILE_LOADS.labels("loaded").inc()
                log.debug("terrain.tile_loaded", path=str(path), seconds=round(elapsed, 3))
        else:
            TILE_LOADS.labels("missing").inc()
        self._tiles[key] = tile
        # only real tiles count against the bound; "missing" markers are a few bytes each
        while sum(1 for t in self._tiles.values() if t is not None) > self.max_tiles:
            for old_key, old in self._tiles.items():
                if old is not None:
                    del self._tiles[old_key]
                    break
        return tile

    def elevation_m(self, lat: float, lon: float) -> float | None:
        """Terrain elevation in metres MSL, or None without a tile or on voids."""
        if not (-90.0 <= lat < 90.0 and -180.0 <= lon <= 180.0):
            return None
        south = math.floor(lat)
        west = math.floor(lon) if lon < 180.0 else 179
        tile = self.tile(south, west)
        if tile is None:
            return None
        return tile.elevation_m(lat, lon)
