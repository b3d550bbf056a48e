"""The JSON API against a real PostgreSQL filled from the real OGN captures."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import uuid
from typing import Any

import pytest

from soar.records import Fix
from soar.web import openapi
from soar.web.app import WebContext, create_app

from .conftest import Dataset, get_json


@pytest.fixture
def client(web_db: Dataset) -> Any:
    return create_app(WebContext(pool=web_db.pool)).test_client()


def _iso(us: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)).isoformat()


def test_openapi_documents_exactly_the_api_routes() -> None:
    app = create_app(WebContext())
    rules = {
        re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api")
    }
    assert rules == set(openapi.document()["paths"])


async def test_openapi_served(client: Any) -> None:
    doc = await get_json(client, "/api/openapi.json")
    assert doc["openapi"].startswith("3.")
    assert "/api/flights/{flight_id}.igc" in doc["paths"]


async def test_aircraft_in_bbox(client: Any, web_db: Dataset) -> None:
    west, south, east, north = -10.0, 35.0, 20.0, 60.0
    latest: dict[int, Fix] = {}
    for fix in web_db.fixes:
        if fix.aircraft_id not in latest or fix.received_us >= latest[fix.aircraft_id].received_us:
            latest[fix.aircraft_id] = fix
    expected = {
        ident for ident, fix in latest.items()
        if south <= fix.lat <= north and west <= fix.lon <= east and ident != web_db.hidden_id
    }
    assert len(expected) > 5
    body = await get_json(client, f"/api/aircraft?bbox={west},{south},{east},{north}")
    assert {a["id"] for a in body["aircraft"]} == expected
    for item in body["aircraft"]:
        fix = latest[item["id"]]
        assert item["last_fix"]["lat"] == pytest.approx(fix.lat)
        assert item["address"] == f"{fix.address:06X}"
    limited = await get_json(client, f"/api/aircraft?bbox={west},{south},{east},{north}&limit=3")
    assert len(limited["aircraft"]) == 3
    whole = await get_json(client, "/api/aircraft?bbox=-180,-90,180,90&limit=1000")
    ids = {a["id"] for a in whole["aircraft"]}
    assert web_db.hidden_id not in ids and web_db.anonymous_id in ids
    anonymous = next(a for a in whole["aircraft"] if a["id"] == web_db.anonymous_id)
    assert anonymous["registration"] is None and anonymous["model"] is None


async def test_aircraft_antimeridian_bbox(client: Any, web_db: Dataset) -> None:
    # west > east: everything except the band between; compare with the plain complement.
    everything = await get_json(client, "/api/aircraft?bbox=-180,-90,180,90&limit=1000")
    band = await get_json(client, "/api/aircraft?bbox=-100,-90,0,90&limit=1000")
    wrapped = await get_json(client, "/api/aircraft?bbox=0,-90,-100,90&limit=1000")
    all_ids = {a["id"] for a in everything["aircraft"]}
    band_ids = {a["id"] for a in band["aircraft"]}
    wrapped_ids = {a["id"] for a in wrapped["aircraft"]}
    assert wrapped_ids | band_ids == all_ids
    assert band_ids and wrapped_ids


async def test_aircraft_by_id_and_privacy(client: Any, web_db: Dataset) -> None:
    body = await get_json(client, f"/api/aircraft/{web_db.trace_id}")
    trace = web_db.fixes_of(web_db.trace_id)
    assert body["registration"] == "OO-TRC" and body["competition_number"] == "TR"
    assert body["last_fix"]["time"].startswith(_iso(trace[-1].received_us)[:19])
    assert body["last_fix"]["lat"] == pytest.approx(trace[-1].lat)
    assert body["current_flight"] is None  # both flights ended
    anonymous = await get_json(client, f"/api/aircraft/{web_db.anonymous_id}")
    assert anonymous["registration"] is None and anonymous["competition_number"] is None
    assert "D-SECRET" not in str(anonymous)
    hidden_paths = [
        f"/api/aircraft/{web_db.hidden_id}",
        f"/api/aircraft/{web_db.hidden_id}/fixes",
        f"/api/aircraft/{web_db.hidden_id}/flights",
    ]
    for path in hidden_paths:
        assert (await get_json(client, path, 404))["error"]


async def test_fixes_keyset_pagination_walks_every_fix_once(client: Any, web_db: Dataset) -> None:
    expected = [f.received_us for f in web_db.fixes_of(web_db.trace_id)]
    seen: list[str] = []
    path = f"/api/aircraft/{web_db.trace_id}/fixes?limit=100"
    pages = 0
    while True:
        body = await get_json(client, path)
        pages += 1
        seen.extend(fix["time"] for fix in body["fixes"])
        if body["next_cursor"] is None:
            break
        path = f"/api/aircraft/{web_db.trace_id}/fixes?limit=100&cursor={body['next_cursor']}"
    assert pages == len(expected) // 100 + 1
    assert [dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in seen] == [
        dt.datetime.fromisoformat(_iso(us)) for us in expected
    ]
    # a time window
    since, until = expected[100], expected[200]
    window = await get_json(
        client,
        f"/api/aircraft/{web_db.trace_id}/fixes?since={_iso(since).replace('+00:00', 'Z')}"
        f"&until={_iso(until).replace('+00:00', 'Z')}",
    )
    assert window["count"] == 100
    # a cursor from another aircraft is refused
    first = await get_json(client, f"/api/aircraft/{web_db.trace_id}/fixes?limit=1")
    other = await get_json(
        client, f"/api/aircraft/{web_db.anonymous_id}/fixes?cursor={first['next_cursor']}", 400
    )
    assert "cursor" in other["error"]


async def test_flights_of_aircraft_and_by_day(client: Any, web_db: Dataset) -> None:
    body = await get_json(client, f"/api/aircraft/{web_db.trace_id}/flights")
    trace_flights = [f for f in web_db.flights if f["aircraft_id"] == web_db.trace_id]
    assert {f["id"] for f in body["flights"]} == {str(f["id"]) for f in trace_flights}
    assert len(body["flights"]) == 2
    second = max(trace_flights, key=lambda f: f["first"])
    day = _iso(second["takeoff"])[:10]
    at_lebl = await get_json(client, f"/api/flights?date={day}&airport=lebl")
    assert [f["id"] for f in at_lebl["flights"]] == [str(second["id"])]
    flight = at_lebl["flights"][0]
    assert flight["registration"] == "OO-TRC"
    assert flight["duration_s"] == pytest.approx((second["landing"] - second["takeoff"]) / 1e6)
    assert (await get_json(client, f"/api/flights?date={day}&airport=EDDF"))["flights"] == []
    # the day of the valid_messages: the hidden aircraft's flight never shows
    hidden = next(f for f in web_db.flights if f["aircraft_id"] == web_db.hidden_id)
    listing = await get_json(client, f"/api/flights?date={_iso(hidden['takeoff'])[:10]}")
    ids = {f["aircraft_id"] for f in listing["flights"]}
    assert web_db.hidden_id not in ids and web_db.anonymous_id in ids
    assert "D-SECRET" not in str(listing) and "D-HIDDEN" not in str(listing)


async def test_flights_csv(client: Any, web_db: Dataset) -> None:
    second = max((f for f in web_db.flights if f["aircraft_id"] == web_db.trace_id),
                 key=lambda f: f["first"])
    response = await client.get(f"/api/flights?date={_iso(second['takeoff'])[:10]}&format=csv")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(await response.get_data(as_text=True))))
    row = next(r for r in rows if r["flight_id"] == str(second["id"]))
    assert row["registration"] == "OO-TRC" and row["competition_number"] == "TR"
    assert row["takeoff"] == _iso(second["takeoff"])[11:16] and row["time_zone"] == "UTC"
    assert row["date"] == _iso(second["takeoff"])[:10]
    minutes = round((second["landing"] - second["takeoff"]) / 60e6)
    assert row["duration"] == f"{minutes // 60}:{minutes % 60:02d}"
    assert row["departure"] == "LEBL" and row["arrival"] == "LEMD"


async def test_flight_track_exports(client: Any, web_db: Dataset) -> None:
    flight = web_db.flights[0]
    fixes = [f for f in web_db.fixes_of(flight["aircraft_id"])
             if flight["first"] <= f.received_us <= flight["last"]]
    body = await get_json(client, f"/api/flights/{flight['id']}")
    assert body["id"] == str(flight["id"]) and body["departure_airport"] == "EBBR"
    response = await client.get(f"/api/flights/{flight['id']}/track.geojson")
    geo = await response.get_json()
    assert response.status_code == 200 and geo["geometry"]["type"] == "LineString"
    coordinates = geo["geometry"]["coordinates"]
    assert len(coordinates) == len(fixes)
    assert coordinates[0][:2] == pytest.approx([fixes[0].lon, fixes[0].lat])

    igc = await (await client.get(f"/api/flights/{flight['id']}.igc")).get_data(as_text=True)
    b_records = [line for line in igc.splitlines() if line.startswith("B")]
    assert len(b_records) == len(fixes)
    assert all(len(line) == 35 for line in b_records)
    first = b_records[0]
    lat = int(first[7:9]) + int(first[9:14]) / 60_000
    assert lat == pytest.approx(fixes[0].lat, abs=2e-5) and first[14] == "N"
    assert "HFGIDGLIDERID:OO-TRC" in igc

    kml = await (await client.get(f"/api/flights/{flight['id']}.kml")).get_data(as_text=True)
    coords = re.search(r"<coordinates>(.*)</coordinates>", kml)
    assert coords is not None and len(coords.group(1).split()) == len(fixes)

    hidden = next(f for f in web_db.flights if f["aircraft_id"] == web_db.hidden_id)
    for suffix in ("", "/track.geojson", ".igc", ".kml"):
        await get_json(client, f"/api/flights/{hidden['id']}{suffix}", 404)
        await get_json(client, f"/api/flights/{uuid.uuid4()}{suffix}", 404)


async def test_receivers(client: Any, web_db: Dataset) -> None:
    body = await get_json(client, "/api/receivers?limit=1000")
    assert {r["name"] for r in body["receivers"]} == {r.name for r in web_db.receivers}
    with_status = {s.name for s in web_db.statuses} & {r.name for r in web_db.receivers}
    assert with_status
    name = sorted(with_status)[0]
    one = await get_json(client, f"/api/receivers/{name}")
    assert one["status"] is not None
    assert len(one["recent_statuses"]) == len({s.received_us for s in web_db.statuses
                                               if s.name == name})
    await get_json(client, "/api/receivers/NOSUCHRX", 404)


BAD_INPUTS: list[tuple[str, int]] = [
    ("/api/aircraft", 400),
    ("/api/aircraft?bbox=", 400),
    ("/api/aircraft?bbox=1,2,3", 400),
    ("/api/aircraft?bbox=a,b,c,d", 400),
    ("/api/aircraft?bbox=0,0,1,91", 400),
    ("/api/aircraft?bbox=-181,0,1,1", 400),
    ("/api/aircraft?bbox=0,10,1,5", 400),
    ("/api/aircraft?bbox=nan,0,1,1", 400),
    ("/api/aircraft?bbox=inf,0,1,1", 400),
    ("/api/aircraft?bbox=0,0,1,1&limit=0", 400),
    ("/api/aircraft?bbox=0,0,1,1&limit=100000", 400),
    ("/api/aircraft?bbox=0,0,1,1&limit=-1", 400),
    ("/api/aircraft?bbox=0,0,1,1&limit=1e3", 400),
    ("/api/aircraft?bbox=0,0,1,1&seen_after=yesterday", 400),
    ("/api/aircraft?bbox=0,0,1,1&bogus=1", 400),
    ("/api/aircraft?bbox=0,0,1,1&bbox=0,0,2,2", 400),
    ("/api/aircraft/abc", 400),
    ("/api/aircraft/-1", 400),
    ("/api/aircraft/99999999999", 400),
    ("/api/aircraft/1.5", 400),
    ("/api/aircraft/123", 404),
    ("/api/aircraft/123/fixes", 200),  # unknown aircraft: no fixes, not an error
    ("/api/aircraft/abc/fixes", 400),
    ("/api/aircraft/1/fixes?since=notatime", 400),
    ("/api/aircraft/1/fixes?until=2025-13-01T00:00:00Z", 400),
    ("/api/aircraft/1/fixes?since=2025-01-02T00:00:00Z&until=2025-01-01T00:00:00Z", 400),
    ("/api/aircraft/1/fixes?since=0001-01-01T00:00:00Z", 400),
    ("/api/aircraft/1/fixes?cursor=garbage!!", 400),
    ("/api/aircraft/1/fixes?cursor=eyJhIjoxLCJ0IjoieCJ9", 400),  # {"a":1,"t":"x"}
    ("/api/aircraft/1/fixes?cursor=" + "A" * 500, 400),
    ("/api/aircraft/1/fixes?limit=10001", 400),
    ("/api/aircraft/abc/flights", 400),
    ("/api/aircraft/1/flights?limit=x", 400),
    ("/api/flights?date=2025-02-30", 400),
    ("/api/flights?date=20250101", 400),
    ("/api/flights?date=yesterday", 400),
    ("/api/flights?date=0001-01-01", 400),
    ("/api/flights?airport=L", 400),
    ("/api/flights?airport=LEBL;DROP TABLE flights", 400),
    ("/api/flights?airport=%27%20OR%201=1--", 400),
    ("/api/flights?format=xml", 400),
    ("/api/flights?include_spurious=maybe", 400),
    ("/api/flights?limit=0", 400),
    ("/api/flights/not-a-uuid", 400),
    ("/api/flights/not-a-uuid/track.geojson", 400),
    ("/api/flights/not-a-uuid.igc", 400),
    ("/api/flights/not-a-uuid.kml", 400),
    ("/api/flights/00000000-0000-0000-0000-000000000000", 404),
    ("/api/flights/00000000-0000-0000-0000-000000000000.igc", 404),
    ("/api/flights/00000000-0000-0000-0000-000000000000?x=1", 400),
    ("/api/receivers?limit=99999", 400),
    ("/api/receivers?positioned=2", 400),
    ("/api/receivers/bad%20name", 400),
    ("/api/receivers/" + "X" * 40, 400),
    ("/api/receivers/NOPE", 404),
    ("/api/openapi.json?x=1", 400),
    ("/api/nothing-here", 404),
    ("/api/aircraft/1/fixes/extra", 404),
]


async def test_bad_inputs_get_json_errors_never_500(client: Any) -> None:
    failures = []
    for path, status in BAD_INPUTS:
        response = await client.get(path)
        body = await response.get_json()
        if response.status_code != status or (status != 200 and not body.get("error")):
            failures.append((path, response.status_code, body))
    assert failures == []


async def test_every_documented_route_refuses_unknown_parameters(client: Any) -> None:
    samples = {"aircraft_id": "1", "flight_id": str(uuid.uuid4()), "receiver": "X"}
    for route in openapi.ROUTES:
        if route.websocket:
            continue
        path = route.path
        for name, value in samples.items():
            path = path.replace("{" + name + "}", value)
        response = await client.get(path + "?surprise=1")
        assert response.status_code == 400, path
        assert "surprise" in (await response.get_json())["error"]
    response = await client.post("/api/aircraft?bbox=0,0,1,1")
    assert response.status_code == 405 and (await response.get_json())["error"]


async def test_no_database_is_503_json() -> None:
    client = create_app(WebContext(pool=None)).test_client()
    response = await client.get("/api/aircraft?bbox=0,0,1,1")
    assert response.status_code == 503
    assert (await response.get_json())["error"] == "database not available"


async def test_metrics_count_requests_per_route(client: Any, web_db: Dataset) -> None:
    await client.get(f"/api/aircraft/{web_db.trace_id}")
    await client.get("/api/aircraft/abc")
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert re.search(
        r'soar_http_requests_total\{method="GET",route="/api/aircraft/<aircraft_id>",status="200"\} [1-9]',
        text,
    )
    assert 'status="400"' in text
    assert 'soar_http_request_seconds_bucket{le="0.001",route="/api/aircraft/<aircraft_id>"}' in text
    assert "soar_websocket_connections" in text and "soar_websocket_dropped_total" in text


async def test_live_directory_from_database(web_db: Dataset) -> None:
    import trio

    from soar.web.live import AircraftDirectory

    directory = AircraftDirectory(refresh_interval=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(directory.run, web_db.pool)
        nursery.cancel_scope.cancel()
    hidden = directory.get(web_db.hidden_id)
    assert hidden is not None and not hidden.tracked
    trace = directory.get(web_db.trace_id)
    assert trace is not None and trace.identified and trace.registration == "OO-TRC"
    anonymous = directory.get(web_db.anonymous_id)
    assert anonymous is None or not anonymous.identified
