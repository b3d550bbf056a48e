"""Every `/api` response schema in OpenAPI holds for real responses: each route is called
against the database filled from the real captures (`web_db`) and against a real soar fed by
real captures (`running_soar`: estimates, stealth, summary), and each JSON body is validated
with jsonschema (Draft 2020-12, what OpenAPI 3.1 uses)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio
from jsonschema import Draft202012Validator, FormatChecker

from soar.web import openapi
from soar.web.app import WebContext, create_app

from .conftest import Dataset
from .running_soar import STEALTH_GLIDER, TRACE_ID, flarm_id, start_soar

DOCUMENT = openapi.document()


def validator(path: str) -> Draft202012Validator:
    route = openapi.route_for(path)
    assert route.schema is not None, f"{path} has no response schema"
    # $refs point into the document's components: give the schema the document's root
    schema = {**route.schema, "components": DOCUMENT["components"]}
    return Draft202012Validator(schema, format_checker=FormatChecker())


def test_every_route_has_a_response_schema_and_the_document_is_valid() -> None:
    for route in openapi.ROUTES:
        if not route.websocket:
            assert route.schema is not None, route.path
            Draft202012Validator.check_schema(route.schema)
    for name, schema in DOCUMENT["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema), name
    assert DOCUMENT["openapi"] == "3.1.0"
    ops = [op["get"] for op in DOCUMENT["paths"].values()]
    assert all("schema" in op["responses"]["200"]["content"][next(iter(
        op["responses"]["200"]["content"]))] for op in ops if "200" in op["responses"])


def test_a_schema_refuses_what_it_does_not_describe() -> None:
    # the schemas are closed: a test against them can fail
    check = validator("/api/flights/{flight_id}")
    assert list(check.iter_errors({"id": "x"}))
    errors = list(validator("/api/aircraft").iter_errors(
        {"aircraft": [], "count": 0, "limit": 1, "extra": True}))
    assert errors and "extra" in str(errors[0].message)


async def _validate(get: Any, path: str, template: str, seen: set[str]) -> Any:
    status, content_type, text = await get(path)
    assert status == 200, (path, text[:300])
    route = openapi.route_for(template)
    assert content_type.startswith(route.content_type), (path, content_type)
    body: Any = json.loads(text) if "json" in route.content_type else text
    errors = sorted(validator(template).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, (path, [f"{list(e.path)}: {e.message}" for e in errors[:5]])
    seen.add(template)
    return body


async def test_real_responses_match_their_schemas(web_db: Dataset) -> None:
    client = create_app(WebContext(pool=web_db.pool)).test_client()

    async def get(path: str) -> tuple[int, str, str]:
        response = await client.get(path)
        return (response.status_code, response.headers["Content-Type"],
                await response.get_data(as_text=True))

    seen: set[str] = set()
    await _validate(get, "/api/openapi.json", "/api/openapi.json", seen)
    await _validate(get, "/api/aircraft?bbox=-180,-90,180,90&limit=1000", "/api/aircraft", seen)
    await _validate(get, f"/api/aircraft?address={web_db.fixes[0].address:06X}",
                    "/api/aircraft", seen)
    await _validate(get, "/api/aircraft?registration=OO-TRC", "/api/aircraft", seen)
    for ident in (web_db.trace_id, web_db.anonymous_id):
        await _validate(get, f"/api/aircraft/{ident}", "/api/aircraft/{aircraft_id}", seen)
        await _validate(get, f"/api/aircraft/{ident}/fixes?limit=500",
                        "/api/aircraft/{aircraft_id}/fixes", seen)
        await _validate(get, f"/api/aircraft/{ident}/flights",
                        "/api/aircraft/{aircraft_id}/flights", seen)
    for flight in [f for f in web_db.flights if f["aircraft_id"] != web_db.hidden_id]:
        day = await _validate(get, f"/api/flights/{flight['id']}", "/api/flights/{flight_id}",
                              seen)
        await _validate(get, f"/api/flights?date={day['first_fix'][:10]}&summary=true",
                        "/api/flights", seen)
        for suffix, template in (("/track.geojson", "/api/flights/{flight_id}/track.geojson"),
                                 (".igc", "/api/flights/{flight_id}.igc"),
                                 (".kml", "/api/flights/{flight_id}.kml")):
            await _validate(get, f"/api/flights/{flight['id']}{suffix}", template, seen)
    await _validate(get, "/api/receivers?limit=1000", "/api/receivers", seen)
    name = sorted({s.name for s in web_db.statuses} & {r.name for r in web_db.receivers})[0]
    await _validate(get, f"/api/receivers/{name}", "/api/receivers/{receiver}", seen)
    documented = {r.path for r in openapi.ROUTES if not r.websocket}
    assert seen == documented


@pytest.mark.slow
async def test_flight_responses_of_a_running_soar_match_their_schemas(
    nursery: trio.Nursery, testdata: Path, tmp_path: Path, db_url: str
) -> None:
    soar = await start_soar(nursery, testdata, tmp_path, db_url)

    async def get(path: str) -> tuple[int, str, str]:
        status, text = await soar.get(path)
        content_type = "application/json"
        if path.endswith(".geojson"):
            content_type = "application/geo+json"
        elif path.endswith(".igc"):
            content_type = "application/vnd.fai.igc"
        elif path.endswith(".kml"):
            content_type = "application/vnd.google-earth.kml+xml"
        return status, content_type, text

    seen: set[str] = set()
    flights: list[dict[str, Any]] = []
    for day in ("2024-03-29", "2025-12-23", "2025-12-24"):
        body = await _validate(get, f"/api/flights?date={day}&include_spurious=true"
                                    "&summary=true&tz=Europe/Paris", "/api/flights", seen)
        flights += body["flights"]
    # estimates of every kind, winch launches, a stealth flight: all in the schema
    assert {f["landing_estimate"] for f in flights} >= {None, "timed_out", "out_of_coverage"}
    assert {f["takeoff_estimate"] for f in flights} >= {None, "first_seen_airborne",
                                                        "out_of_coverage"}
    assert "winch" in {f["launch"] for f in flights}
    assert any(f["aircraft_id"] is None for f in flights)
    for flight in flights:
        await _validate(get, f"/api/flights/{flight['id']}", "/api/flights/{flight_id}", seen)
        await _validate(get, f"/api/flights/{flight['id']}/track.geojson",
                        "/api/flights/{flight_id}/track.geojson", seen)
    for ident in (TRACE_ID, flarm_id("FLRDDDE8E")):
        await _validate(get, f"/api/aircraft/{ident}", "/api/aircraft/{aircraft_id}", seen)
        await _validate(get, f"/api/aircraft/{ident}/flights",
                        "/api/aircraft/{aircraft_id}/flights", seen)
    stealth = await _validate(get, f"/api/aircraft?address={STEALTH_GLIDER[3:]}",
                              "/api/aircraft", seen)
    assert stealth["aircraft"] == []
    assert re.fullmatch(r"[0-9A-F]{6}", STEALTH_GLIDER[3:])
