"""ADS-B surface positions (TC 5-8): placed without a receiver, range-checked against one.

The shared captures hold no surface frame (every CRC-good DF17/18 in ../shared/data/adsb is TC
4, 10-13, 16-19, 28, 29 or 31), so these tests use real surface frames published with where and
when they were received, from two airports 752 km apart:

- Schiphol (EHAM), 484175: the surface example of "The 1090 MHz Riddle" (Junzi Sun), received
  2016-03-14 at 51.990 N 4.375 E. The book decodes the even/odd pair to 52.32061 N 4.73473 E
  and its third frame alone, against that receiver, to 52.320561 N 4.735735 E. The book gives
  no time for the third frame; it is placed 2 s after the pair here.
- Dublin (EIDW), 3CC158 and 40751E: TC 7 frames with their receive times, from a receiver at
  Dublin airport (53.42138 N 6.27 W), posted by wrobell in junzis/pyModeS issue #58 ("quality of
  surface positions", 2020-03-10). 3CC158 is 4.4-6 km west of the airport reference point, on
  runway 28's extended centre line; 40751E reports "surface" 12 km east of it, out over the
  coast, with no airfield within 5 NM.

The expected positions come from pyModeS decoding each frame against the receiver that really
heard it, never from the code under test.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from functools import cache

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pyModeS.position import surface_position_pair, surface_position_with_ref

from soar.protocols.modes import (
    SURFACE_AIRPORT_RADIUS_M,
    SURFACE_RANGE_KM,
    AirportLookup,
    ModeSAccumulator,
    icao_address,
    surface_candidates,
)
from soar.records import Fix, Rejected
from soar.tracking.airports import default_index

EHAM_RECEIVER = (51.990, 4.375)
EIDW_RECEIVER = (53.42138, -6.27)
EHAM_ARP = (52.308601, 4.76389)  # airportsdata's EHAM
EIDW_ARP = (53.421299, -6.27007)  # airportsdata's EIDW

EHAM = [
    (1457996410_000000, bytes.fromhex("8C4841753AAB238733C8CD4020B1")),
    (1457996412_000000, bytes.fromhex("8C4841753A8A35323FAEBDAC702D")),
    (1457996414_000000, bytes.fromhex("8C4841753A9A153237AEF0F275BE")),
]


def _frames(rows: str) -> list[tuple[int, bytes]]:
    out = []
    for line in rows.split():
        when, hexmsg = line.split(",")
        received_us = round(datetime.fromisoformat(when + "+00:00").timestamp() * 1e6)
        out.append((received_us, bytes.fromhex(hexmsg)))
    return out


EIDW_3CC158 = _frames("""
    2019-05-23T06:35:56.838210,8d3cc1583fce24179336500e4c8f
    2019-05-23T06:35:57.962537,8d3cc1583fce22777d11eff114f2
    2019-05-23T06:35:59.066856,8d3cc1583fce2417b335ac5ccab4
    2019-05-23T06:36:00.776281,8d3cc1583fce2277a711153c6e28
    2019-05-23T06:36:01.616062,8d3cc1583fce2277b110e63992e4
    2019-05-23T06:36:01.825039,8d3cc1583fce2417db34d6f12f38
    2019-05-23T06:36:09.474531,8d3cc1583fce241855327ff7f226
    2019-05-23T06:36:11.717234,8d3cc1583fce24187731ddbdeb66
""")
EIDW_40751E = _frames("""
    2019-09-24T17:26:59.691784,8d40751e3fce240e5367193c8d0f
    2019-09-24T17:27:01.208756,8d40751e3fce226e1b440c7ec977
    2019-09-24T17:27:02.200583,8d40751e3fce226e2743c291f323
    2019-09-24T17:27:02.737754,8d40751e3fce240e79664101e5f8
    2019-09-24T17:27:03.233013,8d40751e3fce226e3343787dade8
    2019-09-24T17:27:04.296969,8d40751e3fce140e8d65ce753512
""")


@cache
def _airports() -> AirportLookup:
    """The real airportsdata index, passed in as the edge of the process would pass it."""
    return default_index().nearest


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    h = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(b[1] - a[1]) / 2) ** 2)
    return 2 * 6371.0088 * math.asin(math.sqrt(h))


def _cpr(message: bytes) -> tuple[int, int, int]:
    me = int.from_bytes(message[4:11], "big")
    return (me >> 34) & 1, (me >> 17) & 0x1FFFF, me & 0x1FFFF


def _truth(message: bytes, receiver: tuple[float, float]) -> tuple[float, float]:
    """pyModeS's decode of one frame against the receiver that heard it."""
    return surface_position_with_ref(*_cpr(message), *receiver)


def _feed(acc: ModeSAccumulator, frames: list[tuple[int, bytes]]) -> list[Fix | Rejected | None]:
    return [acc.feed(message, received_us, source="test") for received_us, message in frames]


def _assert_true_positions(
    results: list[Fix | Rejected | None],
    frames: list[tuple[int, bytes]],
    receiver: tuple[float, float],
) -> None:
    assert results[0] is None  # a lone first frame waits for its pair
    for result, (received_us, message) in zip(results[1:], frames[1:], strict=True):
        assert isinstance(result, Fix), result
        assert (result.lat, result.lon) == pytest.approx(_truth(message, receiver), abs=1e-6)
        assert result.received_us == received_us
        assert result.on_ground is True
        assert result.altitude_ft is None


def test_the_frames_are_what_the_sources_say() -> None:
    for frames, address in ((EHAM, 0x484175), (EIDW_3CC158, 0x3CC158), (EIDW_40751E, 0x40751E)):
        for _, message in frames:
            assert icao_address(message) == address  # CRC-good DF17
            assert message[4] >> 3 in (5, 6, 7, 8)
    # the book's pair and lone-frame results, and the receivers 752 km apart
    even, odd = _cpr(EHAM[0][1]), _cpr(EHAM[1][1])
    assert surface_position_pair(
        *even[1:], *odd[1:], lat_ref=EHAM_RECEIVER[0], lon_ref=EHAM_RECEIVER[1], even_is_newer=False
    ) == pytest.approx((52.32061, 4.73473), abs=1e-5)
    assert _truth(EHAM[2][1], EHAM_RECEIVER) == pytest.approx((52.320561, 4.735735), abs=1e-6)
    for _, message in EIDW_3CC158:
        assert 4.4 < _km(_truth(message, EIDW_RECEIVER), EIDW_ARP) < 6.0
    for _, message in EIDW_40751E:
        assert 11.8 < _km(_truth(message, EIDW_RECEIVER), EIDW_ARP) < 12.4
    assert _km(_truth(EHAM[1][1], EHAM_RECEIVER), _truth(EIDW_3CC158[1][1], EIDW_RECEIVER)) == (
        pytest.approx(752, abs=1)
    )


def test_without_a_receiver_the_airport_places_the_first_pair() -> None:
    acc = ModeSAccumulator(airports=_airports())
    eham = _feed(acc, EHAM)
    eidw = _feed(acc, EIDW_3CC158)
    _assert_true_positions(eham, EHAM, EHAM_RECEIVER)
    _assert_true_positions(eidw, EIDW_3CC158, EIDW_RECEIVER)
    # the book's values, to its five decimals
    assert isinstance(fix := eham[1], Fix)
    assert (fix.lat, fix.lon) == pytest.approx((52.32061, 4.73473), abs=1e-5)
    assert isinstance(fix := eham[2], Fix)
    assert (fix.lat, fix.lon) == pytest.approx((52.320561, 4.735735), abs=1e-6)
    assert fix.ground_speed_kt == 17 and fix.track_deg == pytest.approx(92.8125)
    # one airport look-up per aircraft, then each aircraft's own track
    assert acc.stats["position_surface_airport"] == 2
    assert acc.stats["position_surface_pair"] == 1 + 6
    assert acc.stats["surface_unpaired"] == 2
    assert not acc.rejected


def test_a_receiver_750_km_away_rejects_and_counts_instead_of_misplacing() -> None:
    # Decoded alone against the Schiphol receiver, the first Dublin frame lands within 45 NM
    # of Schiphol: the 740 km error a lone-frame decode against the receiver used to store.
    first = EIDW_3CC158[0][1]
    misplaced = _truth(first, EHAM_RECEIVER)
    assert _km(misplaced, EHAM_RECEIVER) < SURFACE_RANGE_KM
    assert _km(misplaced, _truth(first, EIDW_RECEIVER)) > 700

    acc = ModeSAccumulator(reference=EHAM_RECEIVER)
    results = _feed(acc, EIDW_3CC158)
    assert results[0] is None  # never decoded against the receiver alone
    for result in results[1:]:
        assert isinstance(result, Rejected)
        assert result.reason == "surface_out_of_range"
        assert result.detail["reference"] == "receiver"
        assert result.detail["distance_km"] == pytest.approx(740, abs=5)
    assert acc.rejected["surface_out_of_range"] == len(EIDW_3CC158) - 1
    state = acc.aircraft(0x3CC158)
    assert state is not None and state.lat is None

    # the same receiver places Schiphol's aircraft, 40 km from it
    _assert_true_positions(_feed(acc, EHAM), EHAM, EHAM_RECEIVER)
    assert acc.stats["position_surface_receiver"] == 1


def test_an_airport_places_what_a_distant_receiver_cannot() -> None:
    acc = ModeSAccumulator(reference=EHAM_RECEIVER, airports=_airports())
    _assert_true_positions(_feed(acc, EIDW_3CC158), EIDW_3CC158, EIDW_RECEIVER)
    _assert_true_positions(_feed(acc, EHAM), EHAM, EHAM_RECEIVER)
    assert acc.stats["position_surface_airport"] == 2
    assert acc.stats["position_surface_receiver"] == 0
    assert not acc.rejected


def test_away_from_airports_only_a_near_receiver_places_a_pair() -> None:
    # 40751E's "surface" frames are 12 km from Dublin airport, 5 NM from nothing
    for _, message in EIDW_40751E:
        position = _truth(message, EIDW_RECEIVER)
        assert default_index().nearest(*position, SURFACE_AIRPORT_RADIUS_M) is None

    nothing = ModeSAccumulator(airports=_airports())
    results = _feed(nothing, EIDW_40751E)
    assert results[0] is None
    assert all(isinstance(r, Rejected) and r.reason == "surface_no_reference" for r in results[1:])
    assert nothing.rejected == {"surface_no_reference": len(EIDW_40751E) - 1}

    near = ModeSAccumulator(reference=EIDW_RECEIVER, airports=_airports())
    _assert_true_positions(_feed(near, EIDW_40751E), EIDW_40751E, EIDW_RECEIVER)
    assert near.stats["position_surface_receiver"] == 1


def test_no_reference_at_all_is_counted() -> None:
    acc = ModeSAccumulator()
    results = _feed(acc, EIDW_3CC158)
    assert results[0] is None
    assert all(isinstance(r, Rejected) and r.reason == "surface_no_reference" for r in results[1:])
    assert acc.rejected == {"surface_no_reference": len(EIDW_3CC158) - 1}


def test_a_lone_frame_decodes_against_the_own_track_and_is_range_checked() -> None:
    acc = ModeSAccumulator(airports=_airports())
    _feed(acc, EIDW_3CC158[:2])
    state = acc.aircraft(0x3CC158)
    assert state is not None and state.lat is not None and state.lon is not None
    placed_us = state.position_us

    # the last frame 30 s on: no partner within 25 s, so a local decode against the track
    _, message = EIDW_3CC158[-1]
    fix = acc.feed(message, placed_us + 30_000_000)
    assert isinstance(fix, Fix)
    assert (fix.lat, fix.lon) == pytest.approx(_truth(message, EIDW_RECEIVER), abs=1e-6)
    assert acc.stats["position_surface_local"] == 1

    # A track 0.74 degrees of latitude and 1.2 of longitude off is still inside half a CPR
    # zone, so the decode is even right, but 115 km is beyond the 45 NM a local surface decode
    # vouches for: rejected and counted, the track kept.
    true_lat, true_lon = fix.lat, fix.lon
    state.lat, state.lon = true_lat - 0.74, true_lon - 1.2
    off = acc.feed(message, placed_us + 60_000_000)
    assert isinstance(off, Rejected) and off.reason == "surface_out_of_range"
    assert off.detail["reference"] == "track"
    assert off.detail["distance_km"] == pytest.approx(115, abs=3)
    assert (state.lat, state.lon) == (true_lat - 0.74, true_lon - 1.2)

    # a track older than 10 min is no reference for a lone frame
    state.lat, state.lon = true_lat, true_lon
    assert acc.feed(message, state.position_us + 600_000_001) is None
    assert acc.stats["surface_unpaired"] == 2


def test_a_pair_contradicting_the_track_re_anchors_it() -> None:
    acc = ModeSAccumulator(reference=EHAM_RECEIVER, airports=_airports())
    _feed(acc, EIDW_3CC158[:2])
    state = acc.aircraft(0x3CC158)
    assert state is not None
    # a wrong track: the aircraft "was" at Schiphol 3 min ago, near enough in time for a
    # local decode against it to pass the speed check
    state.lat, state.lon = EHAM_ARP
    state.position_us = EIDW_3CC158[2][0] - 180_000_000
    results = _feed(acc, EIDW_3CC158[2:])
    first, *rest = results
    # the pair says Dublin; nothing may confirm Schiphol, no local decode against it
    assert isinstance(first, Rejected) and first.reason == "implausible_position"
    assert acc.stats["position_reanchored"] == 1
    _assert_true_positions([None, *rest], EIDW_3CC158[2:], EIDW_RECEIVER)
    assert acc.stats["position_surface_local"] == 0


@given(
    st.integers(0, 0x1FFFF), st.integers(0, 0x1FFFF),
    st.integers(0, 0x1FFFF), st.integers(0, 0x1FFFF),
    st.booleans(),
    st.floats(-89.9, 89.9), st.floats(-180, 180, exclude_max=True),
)
# latitude 0 in the north is the South Pole in the south, which a reference at 46 S picks
@example(0, 0, 0, 0, False, -46.0, 0.0)
def test_candidates_hold_what_pymodes_picks_for_any_reference(
    lat_even: int, lon_even: int, lat_odd: int, lon_odd: int, even_is_newer: bool,
    ref_lat: float, ref_lon: float,
) -> None:
    candidates = surface_candidates(
        (0, lat_even, lon_even), (1, lat_odd, lon_odd), even_is_newer=even_is_newer
    )
    picked = surface_position_pair(
        lat_even, lon_even, lat_odd, lon_odd,
        lat_ref=ref_lat, lon_ref=ref_lon, even_is_newer=even_is_newer,
    )
    if picked is None:
        return  # that hemisphere's frames straddle an NL boundary
    assert len(candidates) in (4, 8)
    assert any(_km(picked, c) < 1e-3 for c in candidates)
    # four longitudes 90 degrees apart per latitude
    for lat in {c[0] for c in candidates}:
        lons = sorted(c[1] for c in candidates if c[0] == lat)
        assert [b - a for a, b in itertools.pairwise(lons)] == pytest.approx([90] * 3)
