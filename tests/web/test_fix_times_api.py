"""The API shows each fix's own time (issue 15): the Koenigsdorf flood, shuffled, through a
shard and the store writer into PostgreSQL, read back through the JSON API and the exports."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from soar.protocols.ogn import AircraftBeacon, parse_line, to_fix
from soar.records import AircraftSeen, Fix, FlightRow
from soar.store.tables import AircraftFamily, FixFamily, FlightFamily
from soar.tracking.agl import AglCalculator
from soar.tracking.airports import Airport, AirportIndex
from soar.tracking.flight import FixAccepted, FixRevised, FlightClosed, FlightOpened, FlightUpdated
from soar.tracking.shard import Shard, aircraft_seen
from soar.web.app import WebContext, create_app
from tests.support import write_rows
from tests.tracking.flood import LANDING_GLIDER, flood_beacons, koenigsdorf_airports
from tests.tracking.helpers import ids

from .conftest import get_json

S = 1_000_000



@pytest.fixture
def pool(db_url: str) -> Iterator[ConnectionPool]:
    with ConnectionPool(db_url, min_size=1, max_size=2, open=True) as p:
        yield p


async def stored_flood(testdata: Path, db_url: str, tmp_path: Path) -> list[Fix]:
    index = AirportIndex(Airport(n[:4].upper(), n, la, lo, el)
                         for n, la, lo, el in koenigsdorf_airports(testdata))
    shard = Shard(agl=AglCalculator(airports=index), new_id=ids())
    beacons = flood_beacons(testdata)
    random.Random(3).shuffle(beacons)
    fixes: list[Fix] = []
    flights: list[FlightRow] = []
    seen: list[AircraftSeen] = []
    for b in beacons:
        parsed = parse_line(b.line)
        assert isinstance(parsed, AircraftBeacon)
        for e in shard.process(to_fix(parsed, b.received_us, "flood")):
            if isinstance(e, FixAccepted):
                fixes.append(e.fix)
                seen.append(aircraft_seen(e.fix))
            elif isinstance(e, FixRevised):
                fixes.append(e.fix)
            elif isinstance(e, FlightOpened | FlightUpdated | FlightClosed):
                flights.append(e.row)
    flights += [s.machine.open_flight.snapshot() for s in shard.aircraft.values()
                if s.machine.open_flight is not None]
    await write_rows(db_url, FixFamily(), fixes, tmp_path / "spool")
    await write_rows(db_url, FlightFamily(), flights, tmp_path / "spool")
    await write_rows(db_url, AircraftFamily(), seen, tmp_path / "spool")
    return fixes


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / S, UTC).isoformat().replace("+00:00", "Z")


async def test_fixes_and_tracks_are_in_own_time_with_the_receive_time_beside(
    testdata: Path, db_url: str, tmp_path: Path, pool: ConnectionPool
) -> None:
    fixes = await stored_flood(testdata, db_url, tmp_path)
    glider = next(f.aircraft_id for f in fixes if f.address == int(LANDING_GLIDER[3:], 16))
    own = sorted({(f.time_us, f.received_us) for f in fixes if f.aircraft_id == glider})
    assert len(own) == 65
    client = create_app(WebContext(pool=pool)).test_client()

    # an aircraft's fixes, two pages, in the order the glider flew them
    listed: list[dict[str, Any]] = []
    path = f"/api/aircraft/{glider}/fixes?limit=40"
    while path:
        body = await get_json(client, path)
        listed += body["fixes"]
        cursor = body["next_cursor"]
        path = f"/api/aircraft/{glider}/fixes?limit=40&cursor={cursor}" if cursor else ""
    assert [(x["time"], x["received_at"]) for x in listed] == [
        (iso(t), iso(r)) for t, r in own
    ]
    # received all within half a second, at 15:59:44, flown over five minutes
    assert listed[0]["time"] == "2024-03-29T15:54:56Z"
    assert listed[0]["received_at"].startswith("2024-03-29T15:59:44.")
    # a window of own time
    window = await get_json(client, f"/api/aircraft/{glider}/fixes"
                                    f"?since=2024-03-29T15:56:00Z&until=2024-03-29T15:57:00Z")
    assert [x["time"] for x in window["fixes"]] == [
        iso(t) for t, _r in own if iso(t) >= "2024-03-29T15:56:00Z" and iso(t) < "2024-03-29T15:57"
    ]

    # its flight: last fix position and times are its own
    aircraft = await get_json(client, f"/api/aircraft/{glider}")
    assert aircraft["last_fix"]["time"] == iso(own[-1][0])
    assert aircraft["first_seen"] == iso(own[0][0])
    (flight,) = (await get_json(client, f"/api/aircraft/{glider}/flights"))["flights"]
    assert (flight["first_fix"], flight["landing"]) == ("2024-03-29T15:54:56Z",
                                                      "2024-03-29T15:56:25Z")
    geo = await get_json(client, f"/api/flights/{flight['id']}/track.geojson")
    in_flight = [t for t, _r in own if iso(t) <= flight["last_fix"]]
    assert geo["properties"]["times"] == [iso(t) for t in in_flight]
    igc = await (await client.get(f"/api/flights/{flight['id']}.igc")).get_data(as_text=True)
    b_times = [line[1:7] for line in igc.splitlines() if line.startswith("B")]
    assert b_times == [datetime.fromtimestamp(t / S, UTC).strftime("%H%M%S") for t in in_flight]
    assert re.search(r"HFDTEDATE:290324", igc)
