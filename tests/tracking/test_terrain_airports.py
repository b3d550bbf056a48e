"""Terrain tiles (real SRTM tile of New York) and the airport index."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from soar.tracking.agl import AglCalculator
from soar.tracking.airports import Airport, AirportIndex, default_index
from soar.tracking.geo import FEET_PER_METRE, distance_m
from soar.tracking.terrain import Terrain, tile_name


@pytest.fixture(scope="module")
def terrain(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Terrain:
    root = tmp_path_factory.mktemp("elevation")
    (root / "N40").mkdir()
    shutil.copy(testdata / "elevation" / "N40W074.hgt.gz", root / "N40" / "N40W074.hgt.gz")
    return Terrain(root)


def test_tile_names() -> None:
    assert tile_name(40, -74) == "N40W074"
    assert tile_name(-3, 9) == "S03E009"


def test_known_elevations_around_new_york(terrain: Terrain) -> None:
    assert terrain.elevation_m(40.61, -73.83) == pytest.approx(0, abs=2)  # Jamaica Bay
    assert terrain.elevation_m(40.7295, -73.9656) == pytest.approx(0, abs=2)  # East River
    assert terrain.elevation_m(40.6413, -73.7781) == pytest.approx(4, abs=4)  # JFK, 13 ft
    assert terrain.elevation_m(40.7812, -73.9665) == pytest.approx(35, abs=10)  # Central Park
    assert terrain.elevation_m(39.5, -73.5) is None  # no tile there


def test_bilinear_matches_the_raw_samples(terrain: Terrain) -> None:
    tile = terrain.tile(40, -74)
    assert tile is not None and tile.size == 3601
    row, col = 1234, 2345
    lat = 41 - row / 3600
    lon = -74 + col / 3600
    assert terrain.elevation_m(lat, lon) == pytest.approx(tile.sample(row, col))
    corners = [tile.sample(row + dr, col + dc) for dr in (0, 1) for dc in (0, 1)]
    mid = terrain.elevation_m(lat - 0.5 / 3600, lon + 0.5 / 3600)
    assert mid == pytest.approx(sum(corners) / 4)
    quarter = terrain.elevation_m(lat - 0.25 / 3600, lon)
    assert quarter == pytest.approx(0.75 * corners[0] + 0.25 * corners[2])


def test_flat_layout_and_voids(tmp_path: Path) -> None:
    size = 1201
    samples = bytearray(size * size * 2)
    value = (100).to_bytes(2, "big", signed=True)
    void = (-32768).to_bytes(2, "big", signed=True)
    for i in range(size * size):
        samples[2 * i : 2 * i + 2] = value
    samples[0:2] = void  # north-west corner
    (tmp_path / "N45E009.hgt").write_bytes(bytes(samples))
    terrain = Terrain(tmp_path)
    assert terrain.elevation_m(45.5, 9.5) == 100
    assert terrain.elevation_m(46 - 0.5 / 1200, 9 + 0.5 / 1200) == 100  # void left out


def test_agl_from_terrain_then_airport(terrain: Terrain) -> None:
    jfk_ground_ft = terrain.elevation_m(40.6413, -73.7781)
    assert jfk_ground_ft is not None
    calc = AglCalculator(terrain, default_index())
    agl = calc.agl_ft(40.6413, -73.7781, 1000.0)
    assert agl == pytest.approx(1000 - jfk_ground_ft * FEET_PER_METRE)
    # no tile in Spain: Barcelona's airport elevation (12 ft) stands in
    assert calc.agl_ft(41.299, 2.082, 50.0) == pytest.approx(38.0)
    assert calc.agl_ft(41.0, 1.0, 5000.0) is None


def test_nearest_airport_uses_the_grid_and_the_radius() -> None:
    index = default_index()
    assert len(index) > 20_000
    lebl = index.nearest(41.299, 2.082)
    assert lebl is not None and lebl.code == "LEBL" and lebl.elevation_ft == 12.0
    assert index.nearest(52.422, 4.765) is None  # 12 km north of Schiphol
    eham = index.nearest(52.422, 4.765, max_m=20_000)
    assert eham is not None and eham.code == "EHAM"


def test_grid_index_agrees_with_a_linear_scan() -> None:
    airports = [
        Airport(f"A{i}", "", 45 + (i % 7) * 0.013, 9 + (i // 7) * 0.017, 0.0) for i in range(70)
    ]
    index = AirportIndex(airports)
    for lat, lon in [(45.0, 9.0), (45.05, 9.1), (45.2, 9.3), (44.99, 8.99)]:
        best = min(airports, key=lambda a: distance_m(lat, lon, a.lat, a.lon))
        expected = best if distance_m(lat, lon, best.lat, best.lon) <= 2000 else None
        assert index.nearest(lat, lon) == expected
    # across the antimeridian
    fiji = AirportIndex([Airport("EAST", "", -16.0, 179.999, 0.0)])
    assert fiji.nearest(-16.0, -179.999) is not None
