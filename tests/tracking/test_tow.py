"""Aerotow detection on synthetic launches built from rules of thumb.

Tow at 65 kt (33.4 m/s) climbing 4 m/s with the glider on a 50 m rope; release at 500 m
above a 1,000 ft field, after which the glider turns 60° right climbing gently and the tow
plane turns left and dives. A winch launch climbs 15 m/s to 400 m within 1 km of its start.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable

import trio

from soar.records import AddressType, AircraftType, Fix, FlightRow, Protocol, aircraft_id
from soar.tracking.airports import Airport, AirportIndex
from soar.tracking.flight import FlightUpdated
from soar.tracking.inputs import ShardInput, TowRelease
from soar.tracking.router import shard_of
from soar.tracking.shard import Shard
from soar.tracking.tow import TOWS, LaunchFix, TowDetector, TowService

from .helpers import T0, Sinks, run_shard

S = 1_000_000
FT = 1 / 0.3048
LAT0, LON0 = 45.0, 9.0
FIELD = Airport("LIXG", "gliding field", LAT0, LON0, 1000.0)
M_PER_DEG_LAT = 111_320.0
M_PER_DEG_LON = M_PER_DEG_LAT * math.cos(math.radians(LAT0))

TOW_SPEED = 33.4  # m/s, 65 kt
CLIMB = 4.0  # m/s
ROPE = 50.0
RELEASE_S = 125.0  # 500 m at 4 m/s
TOW_ID = aircraft_id(AddressType.FLARM, 0xDD0001)
GLIDER_ID = aircraft_id(AddressType.FLARM, 0xDD0002)
OTHER_ID = aircraft_id(AddressType.FLARM, 0xDD0003)

State = tuple[float, float, float, float, float]  # north m, east m, height m, track, climb m/s


def towed(offset_m: float, east_m: float = 0.0) -> Callable[[float], State]:
    """On tow `offset_m` behind the tow plane's path; after the release, 60° right, climbing."""

    def at(t: float) -> State:
        if t <= RELEASE_S:
            return TOW_SPEED * t - offset_m, east_m, CLIMB * t, 0.0, CLIMB
        dt = t - RELEASE_S
        n0 = TOW_SPEED * RELEASE_S - offset_m
        rad = math.radians(60.0)
        return (
            n0 + 25 * math.cos(rad) * dt,
            east_m + 25 * math.sin(rad) * dt,
            CLIMB * RELEASE_S + 0.5 * dt,
            60.0,
            0.5,
        )

    return at


def tow_plane(t: float) -> State:
    if t <= RELEASE_S:
        return TOW_SPEED * t, 0.0, CLIMB * t, 0.0, CLIMB
    dt = t - RELEASE_S
    rad = math.radians(300.0)
    return (
        TOW_SPEED * RELEASE_S + 40 * math.cos(rad) * dt,
        40 * math.sin(rad) * dt,
        CLIMB * RELEASE_S - 5 * dt,
        300.0,
        -5.0,
    )


def winch(t: float) -> State:
    """Ground run, steep climb to 400 m within 900 m of the start, then a glide north."""
    if t <= 30:
        return 30 * t, 0.0, min(15.0 * t, 400.0), 0.0, 15.0
    return 900 + 25 * (t - 30), 0.0, 400 - 1.0 * (t - 30), 0.0, -1.0


def launch(
    ident: int,
    kind: AircraftType,
    path: Callable[[float], State],
    start_s: float = 0.0,
    step_s: float = 2.0,
    until_s: float = 180.0,
) -> list[LaunchFix]:
    flight = uuid.UUID(int=ident)
    out = []
    t = start_s
    while t <= until_s:
        north, east, height, track, climb = path(t - start_s)
        out.append(
            LaunchFix(
                ident,
                flight,
                T0 + round(start_s * S),
                T0 + round(t * S),
                LAT0 + north / M_PER_DEG_LAT,
                LON0 + east / M_PER_DEG_LON,
                FIELD.elevation_ft + height * FT if FIELD.elevation_ft else None,
                track,
                climb * FT * 60,
                kind,
            )
        )
        t += step_s
    return out


def merged(*tracks: list[LaunchFix]) -> list[LaunchFix]:
    return sorted((f for track in tracks for f in track), key=lambda f: f.time_us)


def detect(items: list[LaunchFix]) -> list[TowRelease]:
    detector = TowDetector(AirportIndex([FIELD]))
    return [r for item in items for r in detector.feed(item)]


def test_aerotow_release_time_and_height() -> None:
    # tow fixes on even seconds, the glider's on odd ones: positions are interpolated
    items = merged(
        launch(TOW_ID, AircraftType.TOW_PLANE, tow_plane),
        launch(GLIDER_ID, AircraftType.GLIDER, towed(ROPE), start_s=1.0),
    )
    (release,) = detect(items)
    assert (release.glider_aircraft_id, release.tow_aircraft_id) == (GLIDER_ID, TOW_ID)
    assert release.flight_id == uuid.UUID(int=GLIDER_ID)
    truth_us = T0 + round((1.0 + RELEASE_S) * S)  # the glider's own clock started at 1 s
    assert abs(release.release_us - truth_us) <= 2 * S
    assert release.height_ft is not None and release.altitude_ft is not None
    assert abs(release.height_ft - 500 * FT) < 10 * FT  # 400-600 m AGL: a normal tow
    assert release.altitude_ft - release.height_ft == FIELD.elevation_ft


def test_two_gliders_behind_one_tow_plane_record_no_tow() -> None:
    before = TOWS.labels("ambiguous")._value.get()
    items = merged(
        launch(TOW_ID, AircraftType.TOW_PLANE, tow_plane),
        launch(GLIDER_ID, AircraftType.GLIDER, towed(ROPE), start_s=1.0),
        launch(OTHER_ID, AircraftType.GLIDER, towed(ROPE + 30, east_m=60.0), start_s=3.0),
    )
    assert detect(items) == []
    assert TOWS.labels("ambiguous")._value.get() == before + 1


def test_winch_launch_records_no_tow() -> None:
    assert detect(launch(GLIDER_ID, AircraftType.GLIDER, winch)) == []


def test_winch_launch_beside_a_departing_tow_is_not_a_rival() -> None:
    # the winch glider takes off 20 s after the tow from the same field but is left 500 m
    # behind within the first minute: only the aerotowed glider is the tow's
    items = merged(
        launch(TOW_ID, AircraftType.TOW_PLANE, tow_plane),
        launch(GLIDER_ID, AircraftType.GLIDER, towed(ROPE), start_s=1.0),
        launch(OTHER_ID, AircraftType.GLIDER, winch, start_s=20.0),
    )
    (release,) = detect(items)
    assert release.glider_aircraft_id == GLIDER_ID


def test_configured_tow_registration_counts_as_a_tow_plane() -> None:
    items = merged(
        launch(TOW_ID, AircraftType.POWERED, tow_plane),
        launch(GLIDER_ID, AircraftType.GLIDER, towed(ROPE), start_s=1.0),
    )
    assert detect(items) == []
    detector = TowDetector(AirportIndex([FIELD]), tow_ids=frozenset({TOW_ID}))
    assert len([r for item in items for r in detector.feed(item)]) == 1


def as_fixes(items: list[LaunchFix], ident: int) -> list[Fix]:
    """Shard fixes for one aircraft: 3 on the ground, then its launch track."""
    first = items[0]
    ground = [
        Fix(
            Protocol.OGN,
            AddressType.FLARM,
            ident & 0xFFFFFF,
            first.time_us - (3 - i) * 5 * S,
            first.lat,
            first.lon,
            altitude_ft=FIELD.elevation_ft,
            ground_speed_kt=0.0,
            aircraft_type=first.aircraft_type,
        )
        for i in range(3)
    ]
    air = [
        Fix(
            Protocol.OGN,
            AddressType.FLARM,
            ident & 0xFFFFFF,
            item.time_us,
            item.lat,
            item.lon,
            altitude_ft=item.altitude_ft,
            ground_speed_kt=TOW_SPEED * 1.944,
            track_deg=item.track_deg,
            climb_fpm=item.climb_fpm,
            aircraft_type=item.aircraft_type,
        )
        for item in items
    ]
    return ground + air


async def test_release_reaches_the_gliders_shard_and_its_flight_row() -> None:
    tow_items = launch(TOW_ID, AircraftType.TOW_PLANE, tow_plane)
    glider_items = launch(GLIDER_ID, AircraftType.GLIDER, towed(ROPE), start_s=1.0)
    fixes = sorted(
        [*as_fixes(tow_items, TOW_ID), *as_fixes(glider_items, GLIDER_ID)],
        key=lambda f: f.received_us,
    )
    n = 2
    shards = [Shard(k, new_id=lambda k=k: uuid.uuid4()) for k in range(n)]
    service = TowService(TowDetector(AirportIndex([FIELD])))
    sinks = [Sinks() for _ in range(n)]
    for s in sinks:
        s.sinks.tow = service.offer
    for k in range(n):
        await run_shard(shards[k], [f for f in fixes if shard_of(f.aircraft_id, n) == k], sinks[k])
    assert service.dropped == 0
    # the detector's releases go into the shards' input channels
    channels = [trio.open_memory_channel[ShardInput](10) for _ in range(n)]
    service.close()
    await service.run([send for send, _ in channels])
    glider_shard = shard_of(GLIDER_ID, n)
    received = [Sinks.drain(receive) for _, receive in channels]  # type: ignore[arg-type]
    (release,) = received[glider_shard]
    assert [len(r) for r in received].count(0) == n - 1  # there, and only there
    assert isinstance(release, TowRelease)
    events = shards[glider_shard].process(release)
    (updated,) = [e for e in events if isinstance(e, FlightUpdated)]
    row: FlightRow = updated.row
    assert row.aircraft_id == GLIDER_ID
    assert (row.tow_aircraft_id, row.release_us) == (TOW_ID, release.release_us)
    assert row.release_height_ft == release.height_ft
    assert row.takeoff_us == glider_items[0].time_us
