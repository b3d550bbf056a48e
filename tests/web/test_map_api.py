"""The map page's data routes (`/map/data/…`) against a real PostgreSQL filled from real captures."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from soar.config import Settings
from soar.web.app import WebContext, create_app
from soar.web.map_api import feed_states

from .conftest import Dataset


@pytest.fixture
def client(web_db: Dataset) -> Any:
    return create_app(WebContext(pool=web_db.pool)).test_client()


def _iso(us: int) -> str:
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)
    return moment.isoformat().replace("+00:00", "Z")


async def get_json(client: Any, path: str, status: int = 200) -> Any:
    response = await client.get(path)
    body = await response.get_json()
    assert response.status_code == status, (path, body)
    return body


async def test_config_defaults_and_settings(web_db: Dataset) -> None:
    body = await get_json(create_app(WebContext(pool=web_db.pool)).test_client(),
                          "/map/data/config")
    assert (body["inactive_after_s"], body["remove_after_s"], body["trail_minutes"]) == (
        120, 600, 10)
    ctx = WebContext(pool=web_db.pool, extras={"settings": Settings(
        map_inactive_after=30, map_remove_after=90, map_trail_minutes=3)})
    body = await get_json(create_app(ctx).test_client(), "/map/data/config")
    assert (body["inactive_after_s"], body["remove_after_s"], body["trail_minutes"]) == (30, 90, 3)


async def test_trails_are_the_last_minutes_of_aircraft_in_the_box(
    client: Any, web_db: Dataset
) -> None:
    trace = web_db.fixes_of(web_db.trace_id)
    last = trace[-1].received_us
    until = _iso(last)
    body = await get_json(client, f"/map/data/trails?bbox=-10,35,20,60&minutes=10&until={until}")
    expected = [f for f in trace if last - 600_000_000 <= f.received_us <= last]
    points = body["trails"][str(web_db.trace_id)]
    assert len(points) == len(expected) > 5
    assert [p[0] for p in points] == [f.received_us // 1000 for f in expected]
    assert points[-1][1:3] == [expected[-1].lat, expected[-1].lon]
    # the hidden aircraft never appears; a box elsewhere holds nothing
    assert str(web_db.hidden_id) not in body["trails"]
    empty = await get_json(client, f"/map/data/trails?bbox=100,-10,110,0&until={until}")
    assert empty["trails"] == {}


async def test_track_of_the_current_flight(client: Any, web_db: Dataset) -> None:
    body = await get_json(client, f"/map/data/track/{web_db.trace_id}")
    # the trace's second flight ends with its last fix: shown although it has ended
    latest = max((f for f in web_db.flights if f["aircraft_id"] == web_db.trace_id),
                 key=lambda f: f["first"])
    assert body["flight"]["id"] == str(latest["id"])
    expected = [f for f in web_db.fixes_of(web_db.trace_id)
                if latest["first"] <= f.received_us <= latest["last"]]
    assert len(body["fixes"]) == len(expected)
    assert body["fixes"][0][3] == round(expected[0].altitude_ft)
    await get_json(client, f"/map/data/track/{web_db.hidden_id}", 404)
    await get_json(client, "/map/data/track/abc", 400)


async def test_replay_pages_cover_the_window_once_in_time_order(
    client: Any, web_db: Dataset
) -> None:
    trace = web_db.fixes_of(web_db.trace_id)
    start, end = trace[0].received_us, trace[0].received_us + 1800 * 1_000_000
    expected = [f for f in web_db.fixes if start <= f.received_us < end
                and f.aircraft_id != web_db.hidden_id]
    path = f"/map/data/replay?start={_iso(start)}&end={_iso(end)}&limit=50"
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        body = await get_json(client, path + (f"&cursor={cursor}" if cursor else ""))
        seen.extend(body["fixes"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len({(f.aircraft_id, f.received_us) for f in expected}) > 50
    times = [f["time_us"] for f in seen]
    assert times == sorted(times)
    assert {f["registration"] for f in seen if f["id"] == web_db.trace_id} == {"OO-TRC"}
    assert all(f["type"] == "fix" for f in seen)
    await get_json(client, "/map/data/replay", 400)
    await get_json(client, f"/map/data/replay?start={_iso(start)}&cursor=zz", 400)
    await get_json(client, f"/map/data/replay?start={_iso(start)}&bogus=1", 400)


async def test_receivers_and_airfields(client: Any, web_db: Dataset) -> None:
    body = await get_json(client, "/map/data/receivers?bbox=-180,-90,180,90")
    positioned = {r.name for r in web_db.receivers if r.lat is not None}
    assert {r["name"] for r in body["receivers"]} == positioned
    # the capture's beacons are years old: every receiver is offline now
    assert not any(r["online"] for r in body["receivers"])
    # Amsterdam, where the trace's aircraft descended
    fields = await get_json(client, "/map/data/airfields?bbox=4.6,52.2,4.9,52.4")
    schiphol = next(a for a in fields["airfields"] if a["code"] == "EHAM")
    assert schiphol["iata"] == "AMS" and "Schiphol" in schiphol["name"]
    one = await get_json(client, "/map/data/airfields?bbox=-10,35,20,60&limit=1")
    assert one["count"] == 1 and one["airfields"][0]["iata"]  # the bigger fields first
    await get_json(client, "/map/data/airfields?bbox=1,2,3", 400)


def test_feed_states_from_the_tree() -> None:
    # the sources supervisor nested as the topology nests it, under a stage of the root
    sources = {"name": "sources", "children": {
        "source.sbs:127.0.0.1:1": {"state": "backing_off"},
        "source.aprs:aprs.example:14580": {"state": "running"},
    }}
    tree = {"name": "soar", "children": {"sources": {"state": "running", "children": {
        "feed": {"state": "running", "supervisor": sources}}}}}
    states = feed_states(tree)
    assert states["beast"]["state"] == "not_configured"
    assert states["sbs"]["state"] == "reconnecting"
    assert states["ogn"]["state"] == "reconnecting"
    assert feed_states({})["ogn"]["state"] == "unknown"
    assert feed_states({"name": "sources", "children": {}})["ogn"]["state"] == "not_configured"
