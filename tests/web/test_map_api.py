"""The map page's data routes (`/map/data/…`) against a real PostgreSQL filled from real captures."""

from __future__ import annotations

import datetime as dt
import json
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from structlog.testing import capture_logs

from soar.config import Settings, load_settings
from soar.web.app import WebContext, create_app
from soar.web.map_api import feed_states, shown
from soar.web.server import serve_web
from tests.support import fetch_json

from .conftest import Dataset, get_json
from .running_soar import FLOOD_WINCH, REGISTRATIONS, STEALTH_GLIDER, flarm_id, start_soar


@pytest.fixture
def client(web_db: Dataset) -> Any:
    return create_app(WebContext(pool=web_db.pool)).test_client()


def _iso(us: int) -> str:
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)
    return moment.isoformat().replace("+00:00", "Z")


async def test_config_defaults_and_settings(web_db: Dataset) -> None:
    body = await get_json(create_app(WebContext(pool=web_db.pool)).test_client(),
                          "/map/data/config")
    assert (body["inactive_after_s"], body["remove_after_s"], body["trail_minutes"]) == (
        120, 600, 10)
    ctx = WebContext(pool=web_db.pool, extras={"settings": Settings(
        map_inactive_after=30, map_remove_after=90, map_trail_minutes=3)})
    body = await get_json(create_app(ctx).test_client(), "/map/data/config")
    assert (body["inactive_after_s"], body["remove_after_s"], body["trail_minutes"]) == (30, 90, 3)


async def test_settings_from_a_toml_file_reach_the_page(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # `soar run --config` hands its settings to serve_web, which must pass them on: without
    # that the page would get the environment's (here the defaults: 120, 600, 10)
    config = tmp_path / "soar.toml"
    config.write_text("[soar]\nmap_inactive_after = 45\nmap_remove_after = 300\n"
                      "map_trail_minutes = 7\n")
    settings = load_settings(config, environ={})
    binds = await nursery.start(partial(serve_web, bind="127.0.0.1:0"), settings, WebContext(),
                                trio.Event())

    body = await fetch_json(f"{binds[0]}/map/data/config")
    assert (body["inactive_after_s"], body["remove_after_s"], body["trail_minutes"]) == (45, 300, 7)
    nursery.cancel_scope.cancel()


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


async def test_a_stealth_aircraft_is_on_no_map_route(
    testdata: Path, tmp_path: Path, db_url: str, nursery: trio.Nursery
) -> None:
    """A real soar fed the Koenigsdorf flood with FLRDD95BF's beacons stealth (`running_soar`),
    its registration in the device database: its fixes are stored, yet no map route shows its
    id, address, registration or a fix of it; the gliders beside it are shown."""
    soar = await start_soar(nursery, testdata, tmp_path, db_url)
    client = create_app(WebContext(pool=soar.pipeline.pool)).test_client()
    stealth, shown_glider = flarm_id(STEALTH_GLIDER), flarm_id(FLOOD_WINCH)
    secrets = (str(stealth), STEALTH_GLIDER[3:], REGISTRATIONS[STEALTH_GLIDER])
    with psycopg.connect(db_url) as conn:
        [(is_stealth,)] = conn.execute("SELECT stealth FROM aircraft WHERE id = %s",
                                       (stealth,)).fetchall()
        [(first, last, count)] = conn.execute(
            "SELECT min(coalesce(time, received_at)), max(coalesce(time, received_at)), count(*)"
            " FROM fixes WHERE aircraft_id = %s", (stealth,)).fetchall()
        start, end = first - dt.timedelta(minutes=2), last + dt.timedelta(minutes=2)
        [(others,)] = conn.execute(
            "SELECT count(*) FROM fixes fx LEFT JOIN aircraft a ON a.id = fx.aircraft_id"
            " WHERE coalesce(fx.time, fx.received_at) >= %s"
            " AND coalesce(fx.time, fx.received_at) < %s AND a.stealth IS NOT TRUE",
            (start, end)).fetchall()
        # the handlers' own guard, on the real rows the statements would never return
        raw = conn.execute(
            "SELECT fx.aircraft_id AS id, (a.tracked IS FALSE OR a.stealth IS TRUE) AS hidden"
            " FROM fixes fx LEFT JOIN aircraft a ON a.id = fx.aircraft_id"
            " WHERE coalesce(fx.time, fx.received_at) >= %s"
            " AND coalesce(fx.time, fx.received_at) < %s", (start, end)).fetchall()
    assert is_stealth and count > 10 and others > 10

    def private(text: str) -> list[str]:
        return [s for s in secrets if s.lower() in text.lower()]

    def at(moment: dt.datetime) -> str:
        return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")

    trails = await client.get(f"/map/data/trails?bbox=10,47,13,49&minutes=30&until={at(end)}")
    body = await trails.get_json()
    assert str(shown_glider) in body["trails"] and str(stealth) not in body["trails"]
    assert not private(json.dumps(body))

    seen: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = await get_json(client, f"/map/data/replay?start={at(start)}&end={at(end)}"
                                      f"&limit=500{cursor}")
        assert not private(json.dumps(page))
        seen.extend(page["fixes"])
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert shown_glider in {f["id"] for f in seen}
    assert stealth not in {f["id"] for f in seen}
    assert len(seen) == others  # every other fix of the window, none of the stealth one's

    response = await client.get(f"/map/data/track/{stealth}")
    assert response.status_code == 404
    assert not private(await response.get_data(as_text=True))
    assert (await get_json(client, f"/map/data/track/{shown_glider}"))["fixes"]

    with capture_logs() as logs:
        kept = shown(_rows(raw), "replay")
    assert {row["id"] for row in kept} == {row[0] for row in raw} - {stealth}
    assert [(e["event"], e["rows"]) for e in logs] == [("map.hidden_rows_dropped", count)]
    await soar.pipeline.close()
    nursery.cancel_scope.cancel()


def _rows(raw: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [{"id": ident, "hidden": hidden} for ident, hidden in raw]
