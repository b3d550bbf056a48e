"""The OpenAPI 3 description of `/api`, built from one route table.

The API validates query parameter names against the same table (`query_names`), so a
parameter cannot be accepted without being documented; a test checks that every `/api` rule
in the app's url_map is here and nothing else is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LIMIT_MAX = {"aircraft": 1000, "fixes": 10_000, "flights": 1000, "receivers": 5000}


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    where: str  # "query" | "path"
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # OpenAPI form: /api/aircraft/{aircraft_id}
    summary: str
    params: tuple[Param, ...] = ()
    content_type: str = "application/json"
    websocket: bool = False


def _limit(kind: str, default: int) -> Param:
    return Param(
        "limit", "query",
        {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX[kind], "default": default},
        f"At most this many items (capped at {LIMIT_MAX[kind]}).",
    )


_AIRCRAFT_ID = Param(
    "aircraft_id", "path", {"type": "integer", "minimum": 0, "maximum": 0x3FFFFFF},
    "aircraft id: (address type code << 24) | 24-bit address", True,
)
_FLIGHT_ID = Param("flight_id", "path", {"type": "string", "format": "uuid"}, "flight id", True)
_TIME = {"type": "string", "format": "date-time"}

ROUTES: tuple[Route, ...] = (
    Route("/api/aircraft", "Tracked aircraft whose latest position is in a bounding box", (
        Param("bbox", "query", {"type": "string", "example": "5.8,45.8,10.5,47.8"},
              "west,south,east,north in degrees; west > east crosses the antimeridian", True),
        Param("seen_after", "query", _TIME, "only aircraft with a fix at or after this time"),
        _limit("aircraft", 500),
    )),
    Route("/api/aircraft/{aircraft_id}", "One aircraft: identity, category, last fix, current flight",
          (_AIRCRAFT_ID,)),
    Route("/api/aircraft/{aircraft_id}/fixes", "An aircraft's fixes by time, oldest first, paginated", (
        _AIRCRAFT_ID,
        Param("since", "query", _TIME, "inclusive lower bound"),
        Param("until", "query", _TIME, "exclusive upper bound"),
        Param("cursor", "query", {"type": "string"}, "opaque: next_cursor of the previous page"),
        _limit("fixes", 1000),
    )),
    Route("/api/aircraft/{aircraft_id}/flights", "An aircraft's flights, newest first",
          (_AIRCRAFT_ID, _limit("flights", 100))),
    Route("/api/flights", "Flights that started on a UTC day, optionally at one airport", (
        Param("date", "query", {"type": "string", "format": "date"}, "UTC day; default today"),
        Param("airport", "query", {"type": "string", "pattern": "^[A-Za-z0-9]{3,8}$"},
              "ICAO code; departure or arrival"),
        Param("format", "query", {"type": "string", "enum": ["json", "csv"], "default": "json"},
              "csv: the day's log for printing"),
        Param("include_spurious", "query", {"type": "boolean", "default": False},
              "include flights marked spurious"),
        _limit("flights", 500),
    )),
    Route("/api/flights/{flight_id}", "One flight", (_FLIGHT_ID,)),
    Route("/api/flights/{flight_id}/track.geojson", "A flight's track as a GeoJSON Feature",
          (_FLIGHT_ID,), "application/geo+json"),
    Route("/api/flights/{flight_id}.igc", "A flight's track as an IGC file", (_FLIGHT_ID,),
          "application/vnd.fai.igc"),
    Route("/api/flights/{flight_id}.kml", "A flight's track as KML", (_FLIGHT_ID,),
          "application/vnd.google-earth.kml+xml"),
    Route("/api/receivers", "Receivers with position and latest status", (
        Param("positioned", "query", {"type": "boolean", "default": False},
              "only receivers with a known position"),
        _limit("receivers", 1000),
    )),
    Route("/api/receivers/{receiver}", "One receiver with its recent statuses", (
        Param("receiver", "path", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,16}$"},
              "receiver name (APRS callsign)", True),
    )),
    Route("/api/live", "WebSocket: live fixes (area_bulk / aircraft subscriptions)",
          websocket=True),
    Route("/api/openapi.json", "This document"),
)


def query_names(path: str) -> frozenset[str]:
    for route in ROUTES:
        if route.path == path:
            return frozenset(p.name for p in route.params if p.where == "query")
    raise KeyError(path)


_ERROR = {
    "description": "bad request or not found",
    "content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"],
    }}},
}


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "parameters": [
                {"name": p.name, "in": p.where, "required": p.required, "schema": p.schema,
                 "description": p.description}
                for p in route.params
            ],
        }
        if route.websocket:
            operation["description"] = (
                'Upgrade to WebSocket. Client sends {"type":"area_bulk","action":"subscribe"|'
                '"unsubscribe","bounds":{"north","south","east","west"}} or {"type":"aircraft",'
                '"action":"subscribe"|"unsubscribe","id":N}; server sends connection_status, '
                "subscribed/unsubscribed/error replies and one {\"type\":\"fix\"} per fix."
            )
            operation["responses"] = {"101": {"description": "switching protocols"}}
        else:
            operation["responses"] = {
                "200": {"description": "OK", "content": {route.content_type: {}}},
                "400": _ERROR,
                "404": _ERROR,
            }
        paths[route.path] = {"get": operation}
    return {
        "openapi": "3.0.3",
        "info": {"title": "soar", "version": "1", "description": "Real-time aircraft tracker API"},
        "paths": paths,
    }
