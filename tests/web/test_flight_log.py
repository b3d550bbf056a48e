"""The flight log's data through the REST API of a real soar fed by real captures
(`running_soar`): estimates and why, launch methods, paging with totals, the CSV, the day
summary, time zones, lookups by address and registration, and stealth aircraft."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from soar.web.api import CSV_COLUMNS

from .running_soar import (
    FLOOD_WINCH,
    REGISTRATIONS,
    STEALTH_GLIDER,
    TIMED_OUT_WINCH,
    TRACE_ID,
    RunningSoar,
    flarm_id,
    start_soar,
)

pytestmark = pytest.mark.slow


@pytest.fixture
async def soar(
    nursery: trio.Nursery, testdata: Path, tmp_path: Path, db_url: str
) -> RunningSoar:
    return await start_soar(nursery, testdata, tmp_path, db_url)


def by_aircraft(flights: list[dict[str, Any]], ident: int | None) -> list[dict[str, Any]]:
    return [f for f in flights if f["aircraft_id"] == ident]


async def test_estimates_launch_methods_and_durations(soar: RunningSoar) -> None:
    koenigsdorf = await soar.get_json("/api/flights?date=2024-03-29&include_spurious=true")
    # FLRD01CFE: winch launch at 10:08:38, then the capture ends: timed out an hour after its
    # last fix (10:08:44). Its duration runs to that fix, not to the timeout.
    (lost,) = by_aircraft(koenigsdorf["flights"], flarm_id(TIMED_OUT_WINCH))
    assert lost["registration"] == REGISTRATIONS[TIMED_OUT_WINCH]
    assert lost["takeoff"] == "2024-03-29T10:08:38Z" and lost["takeoff_estimate"] is None
    assert lost["landing"] is None and lost["landing_estimate"] == "timed_out"
    assert lost["last_fix"] == "2024-03-29T10:08:44Z" and lost["duration_s"] == 6.0
    assert lost["launch"] == "winch"
    # FLRDDDE8E: standing, then 2,000+ fpm: winch
    winched = by_aircraft(koenigsdorf["flights"], flarm_id(FLOOD_WINCH))
    assert winched[0]["takeoff"] == "2024-03-29T15:57:42Z" and winched[0]["launch"] == "winch"

    # The airliner: lost descending into Amsterdam (landing projected), then first seen
    # climbing out of it hours later (takeoff projected): both estimates, and why.
    evening = await soar.get_json("/api/flights?date=2025-12-23")
    (descent,) = by_aircraft(evening["flights"], TRACE_ID)
    assert descent["takeoff"] is None and descent["takeoff_estimate"] == "first_seen_airborne"
    assert descent["landing"] == "2025-12-24T22:32:41Z".replace("24T", "23T")
    assert descent["landing_estimate"] == "out_of_coverage"
    assert descent["arrival_airport"] == "EHAM" and descent["launch"] == "unknown"
    morning = await soar.get_json("/api/flights?date=2025-12-24")
    (climb,) = by_aircraft(morning["flights"], TRACE_ID)
    assert climb["takeoff"] == "2025-12-24T05:45:07Z"
    assert climb["takeoff_estimate"] == "out_of_coverage"
    assert climb["first_fix"] == "2025-12-24T05:46:34Z"
    assert climb["landing"] == "2025-12-24T07:28:59Z" and climb["landing_estimate"] is None
    # a jet's launch is its own, but this takeoff was not seen: unknown, not guessed
    assert climb["launch"] == "unknown"


async def test_paging_with_cursor_and_total(soar: RunningSoar) -> None:
    whole = await soar.get_json("/api/flights?date=2024-03-29&include_spurious=true")
    assert whole["total"] == whole["count"] == len(whole["flights"]) >= 4
    assert whole["next_cursor"] is None
    seen: list[str] = []
    path = "/api/flights?date=2024-03-29&include_spurious=true&limit=1"
    pages = 0
    while path:
        body = await soar.get_json(path)
        pages += 1
        assert body["total"] == whole["total"] and body["count"] == len(body["flights"])
        seen += [f["id"] for f in body["flights"]]
        cursor = body["next_cursor"]
        path = (f"/api/flights?date=2024-03-29&include_spurious=true&limit=1&cursor={cursor}"
                if cursor else "")
    assert seen == [f["id"] for f in whole["flights"]]
    assert pages == whole["total"]
    # the default hides flights marked spurious: its total counts what it lists
    plain = await soar.get_json("/api/flights?date=2024-03-29")
    assert plain["total"] == len(plain["flights"]) < whole["total"]
    # a cursor belongs to its list: another day, zone or filter refuses it
    first = await soar.get_json("/api/flights?date=2024-03-29&include_spurious=true&limit=1")
    for other in ("date=2024-03-30", "date=2024-03-29&tz=Europe/Paris",
                  "date=2024-03-29&airport=EHAM", "date=2024-03-29"):
        body = await soar.get_json(f"/api/flights?{other}&cursor={first['next_cursor']}", 400)
        assert "cursor" in body["error"]
    # an aircraft's flights page the same way, newest first (the airliner's two flights)
    mine = await soar.get_json(f"/api/aircraft/{TRACE_ID}/flights?limit=1")
    assert mine["total"] == 2 and mine["count"] == 1 and mine["next_cursor"]
    rest = await soar.get_json(f"/api/aircraft/{TRACE_ID}/flights?limit=1"
                                f"&cursor={mine['next_cursor']}")
    assert rest["flights"][0]["first_fix"] < mine["flights"][0]["first_fix"]
    assert rest["total"] == 2 and rest["next_cursor"] is None  # the last page says so
    other = await soar.get_json(f"/api/aircraft/{flarm_id(FLOOD_WINCH)}/flights"
                                 f"?cursor={mine['next_cursor']}", 400)
    assert "cursor" in other["error"]


async def test_csv_has_the_date_and_complete_rows(soar: RunningSoar) -> None:
    code, text = await soar.get("/api/flights?date=2024-03-29&include_spurious=true&format=csv")
    assert code == 200
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    json_body = await soar.get_json("/api/flights?date=2024-03-29&include_spurious=true")
    assert [r["flight_id"] for r in rows] == [f["id"] for f in json_body["flights"]]
    lost = next(r for r in rows if r["registration"] == REGISTRATIONS[TIMED_OUT_WINCH])
    # the timed-out flight: everything known about it, not just its id
    assert lost == {**lost, "date": "2024-03-29", "takeoff": "10:08", "landing": "",
                    "landing_estimate": "timed_out", "last_seen": "10:08", "duration": "0:00",
                    "launch": "winch", "model": "ASK 21", "time_zone": "UTC"}
    assert lost["max_altitude_ft"] == "2182" and lost["first_seen"] == "10:08"
    # every row has its date, times and launch method
    assert all(r["date"] == "2024-03-29" and r["launch"] and r["first_seen"] for r in rows)


async def test_time_zone_moves_the_day_and_the_csv_times(soar: RunningSoar) -> None:
    # Tokyo is UTC+9: the airliner's evening descent (22:18 UTC on the 23rd) and its
    # morning flight are both on the 24th there.
    tokyo = await soar.get_json("/api/flights?date=2025-12-24&tz=Asia/Tokyo")
    assert tokyo["tz"] == "Asia/Tokyo"
    assert len(by_aircraft(tokyo["flights"], TRACE_ID)) == 2 and tokyo["total"] == 2
    utc = await soar.get_json("/api/flights?date=2025-12-24")
    assert len(by_aircraft(utc["flights"], TRACE_ID)) == 1 and utc["tz"] == "UTC"
    code, text = await soar.get("/api/flights?date=2025-12-24&tz=Asia/Tokyo&format=csv")
    assert code == 200
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["date"], r["first_seen"], r["takeoff"], r["landing"]) for r in rows] == [
        ("2025-12-24", "07:18", "", "07:32"), ("2025-12-24", "14:46", "14:45", "16:28")]
    assert {r["time_zone"] for r in rows} == {"Asia/Tokyo"}
    for bad in ("Mars/Olympus", "../../etc/passwd", "Europe/Paris;", "x" * 80, ""):
        body = await soar.get_json(f"/api/flights?tz={bad}", 400)
        assert "tz" in body["error"]


async def test_day_summary_per_airfield(soar: RunningSoar) -> None:
    body = await soar.get_json("/api/flights?date=2024-03-29&include_spurious=true"
                                "&summary=true&limit=1")
    summary = body["summary"]
    assert summary["complete"] is True
    # over the whole day, not the page
    assert sum(a["flights"] for a in summary["airfields"]) == body["total"]
    launches: dict[str, int] = {}
    for field in summary["airfields"]:
        for method, n in field["launches"].items():
            launches[method] = launches.get(method, 0) + n
    expected: dict[str, int] = {}
    every = await soar.get_json("/api/flights?date=2024-03-29&include_spurious=true")
    for flight in every["flights"]:
        expected[flight["launch"]] = expected.get(flight["launch"], 0) + 1
    assert {k: v for k, v in launches.items() if v} == expected
    assert launches["winch"] >= 2
    assert "summary" not in await soar.get_json("/api/flights?date=2024-03-29")


async def test_aircraft_lookup_by_address_and_registration(soar: RunningSoar) -> None:
    body = await soar.get_json("/api/aircraft?address=48683e")
    assert [a["id"] for a in body["aircraft"]] == [TRACE_ID]
    assert body["aircraft"][0]["address"] == "48683E"
    body = await soar.get_json(f"/api/aircraft?registration={REGISTRATIONS[FLOOD_WINCH].lower()}")
    assert [a["id"] for a in body["aircraft"]] == [flarm_id(FLOOD_WINCH)]
    assert body["aircraft"][0]["registration"] == REGISTRATIONS[FLOOD_WINCH]
    assert (await soar.get_json("/api/aircraft?registration=N-OPE"))["aircraft"] == []
    assert (await soar.get_json("/api/aircraft?address=000001"))["count"] == 0
    for bad in ("address=XYZ", "address=1234567", "registration=", "registration=%27OR1",
                "address=48683E&registration=D-KXYZ", "address=48683E&bbox=0,0,1,1",
                "address=48683E&seen_after=2025-01-01T00:00:00Z", ""):
        assert (await soar.get_json(f"/api/aircraft?{bad}", 400))["error"], bad


async def test_stealth_aircraft_has_no_identity_anywhere_in_rest(soar: RunningSoar) -> None:
    ident = flarm_id(STEALTH_GLIDER)
    address = STEALTH_GLIDER[3:]
    secrets = (address, address.lower(), str(ident), REGISTRATIONS[STEALTH_GLIDER])
    # stored, and marked stealth from its beacons
    import psycopg

    with psycopg.connect(soar.db_url) as conn:
        [(stealth, fixes)] = conn.execute(
            "SELECT a.stealth, (SELECT count(*) FROM fixes WHERE aircraft_id = a.id)"
            " FROM aircraft a WHERE id = %s", (ident,)).fetchall()
    assert stealth is True and fixes > 20

    # not found by id, address or registration
    for path in (f"/api/aircraft/{ident}", f"/api/aircraft/{ident}/fixes",
                 f"/api/aircraft/{ident}/flights"):
        assert (await soar.get_json(path, 404))["error"] == "aircraft not found"
    assert (await soar.get_json(f"/api/aircraft?address={address}"))["aircraft"] == []
    registration = REGISTRATIONS[STEALTH_GLIDER]
    assert (await soar.get_json(f"/api/aircraft?registration={registration}"))["aircraft"] == []

    # its flight is listed with an anonymous per-flight id only
    day = await soar.get_json("/api/flights?date=2024-03-29&include_spurious=true&summary=1")
    anonymous = [f for f in day["flights"] if f["aircraft_id"] is None]
    assert len(anonymous) == 1
    (flight,) = anonymous
    assert flight["landing"] == "2024-03-29T15:56:25Z"
    assert (flight["registration"], flight["competition_number"], flight["callsign"]) == (
        None, None, None)
    # and nothing anywhere carries its address, id or registration
    bodies = [json.dumps(day)]
    for path in (
        "/api/aircraft?bbox=-180,-90,180,90&limit=1000",
        "/api/flights?date=2024-03-29&include_spurious=true&format=csv",
        f"/api/flights/{flight['id']}",
        f"/api/flights/{flight['id']}/track.geojson",
        f"/api/flights/{flight['id']}.igc",
        f"/api/flights/{flight['id']}.kml",
    ):
        code, text = await soar.get(path)
        assert code == 200, path
        bodies.append(text)
    geo = json.loads(bodies[4])
    assert len(geo["geometry"]["coordinates"]) > 20  # the track itself is shown
    for text in bodies:
        for secret in secrets:
            assert secret not in text.replace(flight["id"], ""), secret
