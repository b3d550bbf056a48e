"""The OpenAPI 3.1 description of `/api`, built from one route table.

The API validates query parameter names against the same table (`query_names`), so a
parameter cannot be accepted without being documented; a test checks that every `/api` rule
in the app's url_map is here and nothing else is. Every JSON response has a schema here
(OpenAPI 3.1: plain JSON Schema 2020-12, objects closed with `additionalProperties: false`),
and tests/web/test_openapi_schemas.py validates real responses against them, so a field
cannot be added, renamed or retyped without the document following.

May import: nothing of soar
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
    schema: dict[str, Any] | None = None  # of the 200 response


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
_TZ = Param("tz", "query", {"type": "string", "example": "Europe/Paris", "default": "UTC"},
            "IANA time zone: the day runs midnight to midnight there; CSV times are shown in it")
_FLIGHT_CURSOR = Param("cursor", "query", {"type": "string"},
                       "opaque: next_cursor of the previous page of the same list")


# -- response schemas -----------------------------------------------------------------------


def _n(kind: str | dict[str, Any], **extra: Any) -> dict[str, Any]:
    """`kind` or null."""
    if isinstance(kind, dict):
        return {"anyOf": [kind, {"type": "null"}]}
    return {"type": [kind, "null"], **extra}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list_of(key: str, item: str, **more: Any) -> dict[str, Any]:
    return _object({key: {"type": "array", "items": _ref(item)},
                    "count": {"type": "integer", "minimum": 0}, **more})


_DT = {"type": "string", "format": "date-time"}
_CURSOR = _n("string")

_AIRCRAFT_PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer", "minimum": 0, "maximum": 0x3FFFFFF},
    "address_type": {"type": "string", "enum": ["other", "icao", "flarm", "ogn"]},
    "address": {"type": "string", "pattern": "^[0-9A-F]{6}$"},
    "protocol": _n("string"),
    "registration": _n("string"),
    "competition_number": _n("string"),
    "model": _n("string"),
    "aircraft_type": _n("string"),
    "category": _n("string"),
    "device_type": _n("string"),
    "first_seen": _n("string", format="date-time"),
    "last_fix": _n(_ref("LastFix")),
}

_FLIGHT_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "format": "uuid"},
    "aircraft_id": _n("integer"),
    "registration": _n("string"),
    "competition_number": _n("string"),
    "model": _n("string"),
    "aircraft_type": _n("string"),
    "protocol": {"type": "string", "enum": ["ogn", "beast", "sbs"]},
    "callsign": _n("string"),
    "takeoff": _n("string", format="date-time"),
    "takeoff_estimate": {"enum": [None, "first_seen_airborne", "out_of_coverage"]},
    "landing": _n("string", format="date-time"),
    "landing_estimate": {"enum": [None, "out_of_coverage", "timed_out", "split"]},
    "timed_out": _n("string", format="date-time"),
    "timeout_phase": _n("string"),
    "first_fix": _DT,
    "last_fix": _DT,
    "duration_s": _n("number"),
    "departure_airport": _n("string"),
    "arrival_airport": _n("string"),
    "takeoff_runway": _n("string"),
    "landing_runway": _n("string"),
    "distance_m": {"type": "number"},
    "bbox": _n({"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}),
    "max_altitude_ft": _n("number"),
    "max_agl_ft": _n("number"),
    "fix_count": {"type": "integer"},
    "spurious_reason": _n("string"),
    "launch": {"type": "string", "enum": ["aerotow", "winch", "self", "unknown"]},
    "tow_plane": {"type": "boolean"},
    "tow": _n(_ref("Tow")),
    "end_reason": _n("string"),
    "open": {"type": "boolean"},
}

_STATUS_PROPERTIES: dict[str, Any] = {
    "version": _n("string"), "platform": _n("string"), "cpu_load": _n("number"),
    "ram_free_mb": _n("number"), "ram_total_mb": _n("number"), "ntp_offset_ms": _n("number"),
    "ntp_ppm": _n("number"), "temperature_c": _n("number"), "rf_correction_ppm": _n("number"),
    "senders": _n("integer"),
}
_RECEIVER_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string"}, "lat": _n("number"), "lon": _n("number"),
    "altitude_ft": _n("number"), "first_seen": _DT, "latest_packet": _DT,
    "status": _n(_object({"time": _DT, **_STATUS_PROPERTIES})),
}
_LAUNCH_COUNTS = _object({m: {"type": "integer", "minimum": 0}
                          for m in ("aerotow", "winch", "self", "unknown")})

SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": {"type": "string"}}),
    "LastFix": _object({
        "time": _DT, "lat": {"type": "number"}, "lon": {"type": "number"},
        "altitude_ft": _n("number"), "agl_ft": _n("number"), "ground_speed_kt": _n("number"),
        "track_deg": _n("number"), "climb_fpm": _n("number"), "callsign": _n("string"),
    }),
    "Aircraft": _object(_AIRCRAFT_PROPERTIES),
    "AircraftDetail": _object({**_AIRCRAFT_PROPERTIES, "current_flight": _n(_ref("Flight"))}),
    "Tow": _object({
        "aircraft_id": _n("integer"), "registration": _n("string"),
        "competition_number": _n("string"), "release": _n("string", format="date-time"),
        "release_altitude_ft": _n("number"), "release_height_ft": _n("number"),
    }),
    "Flight": _object(_FLIGHT_PROPERTIES),
    "Fix": _object({
        "time": _DT, "received_at": _DT, "lat": {"type": "number"}, "lon": {"type": "number"},
        "altitude_ft": _n("number"), "agl_ft": _n("number"), "ground_speed_kt": _n("number"),
        "track_deg": _n("number"), "climb_fpm": _n("number"), "turn_rate": _n("number"),
        "callsign": _n("string"), "squawk": _n("string"),
        "flight_id": _n("string", format="uuid"), "receiver": _n("string"),
        "protocol": {"type": "string"}, "is_active": _n("boolean"), "on_ground": _n("boolean"),
    }),
    "DaySummary": _object({
        "complete": {"type": "boolean"},
        "airfields": {"type": "array", "items": _object({
            "airport": _n("string"), "flights": {"type": "integer", "minimum": 0},
            "launches": _LAUNCH_COUNTS, "tow_plane_flights": {"type": "integer", "minimum": 0},
        })},
    }),
    "Receiver": _object(_RECEIVER_PROPERTIES),
}

_AIRCRAFT_LIST = _list_of("aircraft", "Aircraft", limit={"type": "integer"})
_FIXES = _list_of("fixes", "Fix", aircraft_id={"type": "integer"}, next_cursor=_CURSOR)
_AIRCRAFT_FLIGHTS = _list_of("flights", "Flight", aircraft_id={"type": "integer"},
                             total={"type": "integer", "minimum": 0}, next_cursor=_CURSOR)
_DAY_FLIGHTS = {
    **_list_of("flights", "Flight", date={"type": "string", "format": "date"},
               tz={"type": "string"}, airport=_n("string"),
               total={"type": "integer", "minimum": 0}, next_cursor=_CURSOR,
               summary=_ref("DaySummary")),
}
_DAY_FLIGHTS["required"] = [k for k in _DAY_FLIGHTS["required"] if k != "summary"]
_GEOJSON = _object({
    "type": {"const": "Feature"},
    "geometry": _object({
        "type": {"const": "LineString"},
        "coordinates": {"type": "array", "items": {
            "type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 3}},
    }),
    "properties": _object({
        **_FLIGHT_PROPERTIES,
        "times": {"type": "array", "items": _DT},
        "altitudes_ft": {"type": "array", "items": _n("number")},
    }),
})
_RECEIVERS = _list_of("receivers", "Receiver")
_RECEIVER = _object({
    **_RECEIVER_PROPERTIES,
    "recent_statuses": {"type": "array", "items": _object({"received_at": _DT,
                                                            **_STATUS_PROPERTIES})},
})
_TEXT = {"type": "string"}
_DOCUMENT = {"type": "object", "required": ["openapi", "info", "paths", "components"]}

ROUTES: tuple[Route, ...] = (
    Route("/api/aircraft", "Aircraft by position (bbox), by address or by registration: "
          "exactly one of the three", (
        Param("bbox", "query", {"type": "string", "example": "5.8,45.8,10.5,47.8"},
              "west,south,east,north in degrees; west > east crosses the antimeridian"),
        Param("address", "query", {"type": "string", "pattern": "^[0-9A-Fa-f]{6}$",
                                   "example": "3C6444"},
              "24-bit address in hex (ICAO, FLARM or OGN: every type with it)"),
        Param("registration", "query", {"type": "string", "example": "D-KXYZ"},
              "registration, any case; only aircraft whose identity may be shown"),
        Param("seen_after", "query", _TIME, "with bbox: only aircraft with a fix at or after"),
        _limit("aircraft", 500),
    ), schema=_AIRCRAFT_LIST),
    Route("/api/aircraft/{aircraft_id}", "One aircraft: identity, category, last fix, current flight",
          (_AIRCRAFT_ID,), schema=_ref("AircraftDetail")),
    Route("/api/aircraft/{aircraft_id}/fixes", "An aircraft's fixes by time, oldest first, paginated", (
        _AIRCRAFT_ID,
        Param("since", "query", _TIME, "inclusive lower bound"),
        Param("until", "query", _TIME, "exclusive upper bound"),
        Param("cursor", "query", {"type": "string"}, "opaque: next_cursor of the previous page"),
        _limit("fixes", 1000),
    ), schema=_FIXES),
    Route("/api/aircraft/{aircraft_id}/flights", "An aircraft's flights, newest first, paginated "
          "(total: how many it has)",
          (_AIRCRAFT_ID, _FLIGHT_CURSOR, _limit("flights", 100)), schema=_AIRCRAFT_FLIGHTS),
    Route("/api/flights", "Flights that started on a day (in tz), optionally at one airport, "
          "in takeoff order, paginated (total: the day's count)", (
        Param("date", "query", {"type": "string", "format": "date"}, "day in tz; default today"),
        _TZ,
        Param("airport", "query", {"type": "string", "pattern": "^[A-Za-z0-9]{3,8}$"},
              "ICAO code; departure or arrival"),
        Param("format", "query", {"type": "string", "enum": ["json", "csv"], "default": "json"},
              "csv: the whole day's log (no paging), times in tz, with a date column"),
        Param("include_spurious", "query", {"type": "boolean", "default": False},
              "include flights marked spurious"),
        Param("summary", "query", {"type": "boolean", "default": False},
              "add the day's per-airfield summary: launches by method, tow-plane flights"),
        _FLIGHT_CURSOR,
        _limit("flights", 500),
    ), schema=_DAY_FLIGHTS),
    Route("/api/flights/{flight_id}", "One flight", (_FLIGHT_ID,), schema=_ref("Flight")),
    Route("/api/flights/{flight_id}/track.geojson", "A flight's track as a GeoJSON Feature",
          (_FLIGHT_ID,), "application/geo+json", schema=_GEOJSON),
    Route("/api/flights/{flight_id}.igc", "A flight's track as an IGC file", (_FLIGHT_ID,),
          "application/vnd.fai.igc", schema=_TEXT),
    Route("/api/flights/{flight_id}.kml", "A flight's track as KML", (_FLIGHT_ID,),
          "application/vnd.google-earth.kml+xml", schema=_TEXT),
    Route("/api/receivers", "Receivers with position and latest status", (
        Param("positioned", "query", {"type": "boolean", "default": False},
              "only receivers with a known position"),
        _limit("receivers", 1000),
    ), schema=_RECEIVERS),
    Route("/api/receivers/{receiver}", "One receiver with its recent statuses", (
        Param("receiver", "path", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,16}$"},
              "receiver name (APRS callsign)", True),
    ), schema=_RECEIVER),
    Route("/api/live", "WebSocket: live fixes (area_bulk / aircraft subscriptions)",
          websocket=True),
    Route("/api/openapi.json", "This document", schema=_DOCUMENT),
)


def query_names(path: str) -> frozenset[str]:
    """The query parameters the route at `path` (a template, as in ROUTES) declares."""
    return frozenset(p.name for p in route_for(path).params if p.where == "query")


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref("Error")}}}


def route_for(path: str) -> Route:
    """The route whose template is `path`; KeyError for a path the API does not declare."""
    for route in ROUTES:
        if route.path == path:
            return route
    raise KeyError(path)


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
            content = {} if route.schema is None else {"schema": route.schema}
            operation["responses"] = {
                "200": {"description": "OK", "content": {route.content_type: content}},
                "400": _error("bad request: a parameter is missing, malformed or unknown"),
                "404": _error("not found (also: hidden by privacy)"),
                "503": _error("database not available"),
            }
        paths[route.path] = {"get": operation}
    return {
        "openapi": "3.1.0",
        "info": {"title": "soar", "version": "1", "description": "Real-time aircraft tracker API"},
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
