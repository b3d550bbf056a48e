"""The JSON API under `/api`, its error handling and request metrics; `register()` wires it all.

Every parameter is parsed by a small validator that raises `ApiError` (→ JSON `{"error": ...}`
with 400 or 404); unknown query parameters are refused, so the OpenAPI table in
`soar.web.openapi` is the whole truth.

A route parses its parameters in the event loop, then hands one function to `answer`: in a
worker thread it runs the queries on one connection of the API's own pool (psycopg's async API
does not run under trio; the writers have a pool of their own), shapes the rows and serialises
the body with orjson. The event loop only moves bytes, so /healthz is not kept waiting behind a
213 KB `/api/aircraft` being encoded (issue #18.6: /healthz p99 3.8 s beside 200 API clients).

May import: soar.records, soar.store, soar.tracking, soar.web.app, soar.web.live,
soar.web.openapi, soar.web.pages, soar.web.queries
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import io
import json
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import prometheus_client
import structlog
import trio
from quart import Blueprint, Response, g, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from soar.records import AircraftType
from soar.store.queries import us
from soar.store.tables import ts
from soar.tracking.launch import LaunchFacts, LaunchMethod, launch_method
from soar.web import openapi, queries
from soar.web.app import WebContext
from soar.web.queries import Conn

log = structlog.get_logger(__name__)

HTTP_REQUESTS = prometheus_client.Counter(
    "soar_http_requests_total", "HTTP requests", ["route", "method", "status"]
)
HTTP_SECONDS = prometheus_client.Histogram(
    "soar_http_request_seconds", "HTTP request latency", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_ERRORS = prometheus_client.Counter(
    "soar_http_unhandled_errors_total", "Requests that raised an unexpected exception", ["route"]
)

FEET_PER_METRE = 3.28084
MAX_TRACK_FIXES = 50_000
MAX_AIRCRAFT_ID = 0x3FFFFFF
#: The day summary is computed over at most this many flights (a worldwide ADS-B day has more;
#: then it says it is incomplete rather than take the database down for a convenience).
SUMMARY_MAX_FLIGHTS = 5000
#: An ADS-B takeoff time is the first airborne report, a few reports before the first fix of
#: the flight; farther back than this it was projected from the first climb (out of coverage).
ADSB_TAKEOFF_LEAD = dt.timedelta(seconds=30)
#: A CSV is the whole day (no cursor) up to this many rows.
CSV_MAX_ROWS = 20_000
UTC = ZoneInfo("UTC")
T = TypeVar("T")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- validation -----------------------------------------------------------------------------


def _check_names(path: str) -> None:
    unknown = set(request.args) - openapi.query_names(path)
    if unknown:
        raise ApiError(400, f"unknown parameter: {sorted(unknown)[0]}")
    for name in request.args:
        if len(request.args.getlist(name)) > 1:
            raise ApiError(400, f"parameter given more than once: {name}")


def _finite(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a number") from None
    if not math.isfinite(value):
        raise ApiError(400, f"{name} must be finite")
    return value


def parse_bbox(text: str | None) -> tuple[float, float, float, float]:
    if not text:
        raise ApiError(400, "bbox is required: west,south,east,north")
    parts = text.split(",")
    if len(parts) != 4:
        raise ApiError(400, "bbox must be west,south,east,north")
    west, south, east, north = (_finite(p, "bbox") for p in parts)
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise ApiError(400, "bbox longitudes must be within -180..180")
    if not (-90 <= south <= 90 and -90 <= north <= 90):
        raise ApiError(400, "bbox latitudes must be within -90..90")
    if south > north:
        raise ApiError(400, "bbox south must not be north of north")
    return west, south, east, north


def parse_limit(kind: str, default: int) -> int:
    text = request.args.get("limit")
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,7}", text):
        raise ApiError(400, "limit must be a positive integer")
    value = int(text)
    if not 1 <= value <= openapi.LIMIT_MAX[kind]:
        raise ApiError(400, f"limit must be between 1 and {openapi.LIMIT_MAX[kind]}")
    return value


def parse_aircraft_id(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) > MAX_AIRCRAFT_ID:
        raise ApiError(400, "aircraft id must be an integer between 0 and 67108863")
    return int(text)


def parse_flight_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ApiError(400, "flight id must be a UUID") from None


def parse_time(name: str) -> dt.datetime | None:
    text = request.args.get(name)
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise ApiError(400, f"{name} must be an ISO 8601 date-time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    if not 1990 <= value.year <= 2200:
        raise ApiError(400, f"{name} out of range")
    return value


def parse_tz(text: str | None) -> ZoneInfo:
    """An IANA time zone name (`Europe/Paris`); UTC when absent."""
    if text is None:
        return UTC
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,2}", text) or len(text) > 64:
        raise ApiError(400, "tz must be an IANA time zone name, e.g. Europe/Paris")
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ApiError(400, f"tz is not a known time zone: {text}") from None


def parse_address(text: str) -> int:
    if not re.fullmatch(r"[0-9A-Fa-f]{6}", text):
        raise ApiError(400, "address must be 6 hexadecimal digits, e.g. 3C6444")
    return int(text, 16)


def parse_registration(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 .-]{0,15}", text):
        raise ApiError(400, "registration must be 1 to 16 letters, digits, '-', '.' or spaces")
    return text.strip()


def parse_date(text: str | None, zone: dt.tzinfo = dt.UTC) -> dt.date:
    if text is None:
        return dt.datetime.now(zone).date()
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        raise ApiError(400, "date must be YYYY-MM-DD")
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise ApiError(400, "date is not a calendar day") from None
    if not 1990 <= day.year <= 2200:
        raise ApiError(400, "date out of range")
    return day


def parse_airport(text: str | None) -> str | None:
    if text is None:
        return None
    if not re.fullmatch(r"[A-Za-z0-9]{3,8}", text):
        raise ApiError(400, "airport must be an ICAO code (3 to 8 letters or digits)")
    return text.upper()


def parse_bool(name: str) -> bool:
    text = request.args.get(name)
    if text is None:
        return False
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ApiError(400, f"{name} must be true or false")


def parse_receiver(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,16}", text):
        raise ApiError(400, "receiver must be a name of 1 to 16 letters, digits, - or _")
    return text


# Keyset cursors are opaque to clients: base64url (unpadded) of a small JSON object, times in
# µs. A cursor that does not decode, or names another list, is a 400, never a wrong page.
CURSOR_ERRORS = (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError,
                 OverflowError)


def encode_token(fields: dict[str, Any]) -> str:
    """A cursor carrying `fields` (JSON values)."""
    payload = json.dumps(fields, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_token(text: str) -> dict[str, Any]:
    """The fields of a cursor `encode_token` made; one of `CURSOR_ERRORS` for anything else."""
    if len(text) > 200:
        raise ValueError("too long")
    data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data


def token_int(data: dict[str, Any], key: str) -> int:
    """A cursor's whole-number field (an id, or a time in µs): a JSON integer in [0, 2**62)."""
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
        raise ValueError(f"bad {key}")
    return value


# Fixes of one aircraft: {"a": its id, "t": the last fix's own time, "r": its receive time}
# (fixes are listed by own time; two may share one).
def encode_cursor(aircraft_id: int, last: dt.datetime, received: dt.datetime) -> str:
    return encode_token({"a": aircraft_id, "t": us(last), "r": us(received)})


def decode_cursor(text: str, aircraft_id: int) -> tuple[dt.datetime, dt.datetime]:
    try:
        data = decode_token(text)
        if data.get("a") != aircraft_id:
            raise ValueError("cursor of another aircraft")
        return ts(token_int(data, "t")), ts(token_int(data, "r"))
    except CURSOR_ERRORS:
        raise ApiError(400, "cursor is not valid for this request") from None


# Flight lists: {"k": the list it belongs to, "t": started_at, "i": the flight id} of the last
# flight of the previous page.
def encode_flight_cursor(kind: str, started: dt.datetime, flight_id: uuid.UUID) -> str:
    return encode_token({"k": kind, "t": us(started), "i": str(flight_id)})


def decode_flight_cursor(text: str, kind: str) -> queries.FlightKey:
    try:
        data = decode_token(text)
        if data.get("k") != kind:
            raise ValueError("cursor of another list")
        return ts(token_int(data, "t")), uuid.UUID(str(data["i"]))
    except CURSOR_ERRORS:
        raise ApiError(400, "cursor is not valid for this request") from None


def _page(kind: str, rows: list[dict[str, Any]], limit: int
          ) -> tuple[list[dict[str, Any]], str | None]:
    """The page of `limit + 1` rows fetched: its first `limit`, and a cursor only when there is
    a row after them."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_flight_cursor(kind, rows[-1]["started_at"], rows[-1]["id"])


def day_bounds(day: dt.date, zone: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """[midnight, next midnight) of `day` in `zone` (23 or 25 h on a DST change)."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


# -- rendering ------------------------------------------------------------------------------


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def aircraft_type_name(code: int | None) -> str | None:
    """The API's name of a stored OGN aircraft type code (`glider`, `tow_plane`, ...);
    None for no code or one `AircraftType` does not know."""
    if code is None:
        return None
    try:
        return AircraftType(code).name.lower()
    except ValueError:
        return None


def aircraft_identity(row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that name an aircraft, written once so the API's aircraft and the map's
    replayed fixes cannot disagree on them (address as 6 hex digits, type by name)."""
    return {
        "address": None if row["address"] is None else f"{row['address']:06X}",
        "address_type": row["address_type"],
        "protocol": row["protocol"],
        "registration": row["registration"],
        "competition_number": row["competition_number"],
        "model": row["model"],
        "aircraft_type": aircraft_type_name(row["aircraft_type"]),
        "category": row["category"],
    }


def aircraft_json(row: dict[str, Any]) -> dict[str, Any]:
    last_fix = None
    if row["last_fix_at"] is not None and row["lat"] is not None:
        last_fix = {
            "time": iso(row["last_fix_at"]),
            "lat": row["lat"],
            "lon": row["lon"],
            "altitude_ft": row["altitude_ft"],
            "agl_ft": row["agl_ft"],
            "ground_speed_kt": row["ground_speed_kt"],
            "track_deg": row["track_deg"],
            "climb_fpm": row["climb_fpm"],
            "callsign": row["callsign"],
        }
    return {
        "id": row["id"],
        **aircraft_identity(row),
        "device_type": row["device_type"],
        "first_seen": iso(row["first_seen_at"]),
        "last_fix": last_fix,
    }


def takeoff_estimate(row: dict[str, Any]) -> str | None:
    """Why the takeoff time is not an observed one: "first_seen_airborne" (no takeoff time:
    it took off unseen) or "out_of_coverage" (projected back from the first climb); None when
    the aircraft was seen leaving the ground.

    Inferred from the row: a takeoff projected out of coverage is before the flight's first
    fix, an observed OGN takeoff is that fix, an ADS-B one the first airborne report, a few
    reports before it."""
    takeoff, first = row["takeoff_at"], row["first_fix_at"]
    if takeoff is None:
        return "first_seen_airborne"
    lead = first - takeoff
    if lead <= dt.timedelta(0) or (row["protocol"] != "ogn" and lead <= ADSB_TAKEOFF_LEAD):
        return None
    return "out_of_coverage"


def landing_estimate(row: dict[str, Any]) -> str | None:
    """Why the end of the flight is not an observed landing: "out_of_coverage" (touchdown
    projected from the last descent), "timed_out" (lost: no fix for an hour), "split" (the
    track was cut by a gap or a callsign change); None when landed in sight or still open."""
    reason = row["end_reason"]
    if reason == "landed_out_of_coverage":
        return "out_of_coverage"
    if row["landing_at"] is None and (row["timed_out_at"] is not None or reason == "timed_out"):
        return "timed_out"
    if reason in ("split_gap", "split_callsign"):
        return "split"
    return None


def end_time(row: dict[str, Any]) -> dt.datetime | None:
    """The landing, else — for a flight that ended unseen — its last fix (a timed-out flight's
    `timed_out_at` is that fix plus the 1 h timeout: not when it flew)."""
    if row["landing_at"] is not None:
        return row["landing_at"]  # type: ignore[no-any-return]
    if row["timed_out_at"] is not None or row["end_reason"] is not None:
        return row["last_fix_at"]  # type: ignore[no-any-return]
    return None


def duration_s(row: dict[str, Any]) -> float | None:
    start = row["takeoff_at"]  # first seen airborne: how long it flew is unknown
    end = end_time(row)
    if start is None or end is None:
        return None
    return float((end - start).total_seconds())


def launch_of(row: dict[str, Any]) -> LaunchMethod:
    return launch_method(LaunchFacts(
        takeoff_observed=row["takeoff_at"] is not None and takeoff_estimate(row) is None,
        has_tow=bool(row.get("has_tow", row["tow_aircraft_id"] is not None)),
        departure_airport=row["departure_airport"],
        aircraft_type=row["aircraft_type"],
        adsb=row["protocol"] in ("beast", "sbs"),
        category=row["category"],
        max_early_climb_fpm=row.get("early_climb_fpm"),
    ))


def _anonymous(row: dict[str, Any]) -> dict[str, Any]:
    """The API's own guard on top of the SQL's: a stealth aircraft's flight keeps no identity,
    nor does a stealth tow plane."""
    if row.get("stealth"):
        row = {**row, "aircraft_id": None, "registration": None, "competition_number": None,
               "model": None, "callsign": None}
    if row.get("tow_stealth"):
        row = {**row, "tow_aircraft_id": None, "tow_registration": None,
               "tow_competition_number": None}
    return row


def flight_json(row: dict[str, Any]) -> dict[str, Any]:
    row = _anonymous(row)
    launch = launch_of(row)
    has_tow = bool(row.get("has_tow", row["tow_aircraft_id"] is not None))
    return {
        "id": str(row["id"]),
        "aircraft_id": row["aircraft_id"],
        "registration": row["registration"],
        "competition_number": row["competition_number"],
        "model": row["model"],
        "aircraft_type": aircraft_type_name(row["aircraft_type"]),
        "protocol": row["protocol"],
        "callsign": row["callsign"],
        "takeoff": iso(row["takeoff_at"]),
        "takeoff_estimate": takeoff_estimate(row),
        "landing": iso(row["landing_at"]),
        "landing_estimate": landing_estimate(row),
        "timed_out": iso(row["timed_out_at"]),
        "timeout_phase": row["timeout_phase"],
        "first_fix": iso(row["first_fix_at"]),
        "last_fix": iso(row["last_fix_at"]),
        "duration_s": duration_s(row),
        "departure_airport": row["departure_airport"],
        "arrival_airport": row["arrival_airport"],
        "takeoff_runway": row["takeoff_runway"],
        "landing_runway": row["landing_runway"],
        "distance_m": row["distance_m"],
        "bbox": None if row["min_lat"] is None else
        [row["min_lon"], row["min_lat"], row["max_lon"], row["max_lat"]],
        "max_altitude_ft": row["max_altitude_ft"],
        "max_agl_ft": row["max_agl_ft"],
        "fix_count": row["fix_count"],
        "spurious_reason": row["spurious_reason"],
        "launch": launch.value,
        "tow_plane": bool(row.get("tow_plane")),
        "tow": None if not has_tow else {
            "aircraft_id": row["tow_aircraft_id"],
            "registration": row["tow_registration"],
            "competition_number": row["tow_competition_number"],
            "release": iso(row["release_at"]),
            "release_altitude_ft": row["release_altitude_ft"],
            "release_height_ft": row["release_height_ft"],
        },
        "end_reason": row["end_reason"],
        "open": row["landing_at"] is None and row["timed_out_at"] is None
        and row["end_reason"] is None,
    }


def day_summary(rows: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
    """Per departure airfield: launches by method and tow-plane flights (the duty manager's
    end-of-day sheet). Flights first seen airborne launched nowhere known: under `null`."""
    fields: dict[str | None, dict[str, Any]] = {}
    for row in rows:
        entry = fields.setdefault(row["departure_airport"], {
            "airport": row["departure_airport"], "flights": 0,
            "launches": Counter({m.value: 0 for m in LaunchMethod}), "tow_plane_flights": 0})
        entry["flights"] += 1
        entry["launches"][launch_of(row).value] += 1
        entry["tow_plane_flights"] += bool(row.get("tow_plane"))
    ordered = sorted(fields.values(), key=lambda e: (e["airport"] is None, e["airport"] or ""))
    return {"complete": complete,
            "airfields": [{**e, "launches": dict(e["launches"])} for e in ordered]}


def fix_json(row: dict[str, Any]) -> dict[str, Any]:
    """A fix: `time` is its own time (when the aircraft was there), `received_at` when soar
    received it."""
    out = dict(row)
    out["time"] = iso(row["time"])
    out["received_at"] = iso(row["received_at"])
    if out.get("flight_id") is not None:
        out["flight_id"] = str(out["flight_id"])
    return out


def receiver_json(row: dict[str, Any]) -> dict[str, Any]:
    status_keys = ("version", "platform", "cpu_load", "ram_free_mb", "ram_total_mb",
                   "ntp_offset_ms", "ntp_ppm", "temperature_c", "rf_correction_ppm", "senders")
    return {
        "name": row["name"],
        "lat": row["lat"],
        "lon": row["lon"],
        "altitude_ft": row["altitude_ft"],
        "first_seen": iso(row["first_seen_at"]),
        "latest_packet": iso(row["latest_packet_at"]),
        "status": None if row["status_at"] is None else
        {"time": iso(row["status_at"]), **{key: row[key] for key in status_keys}},
    }


def _hhmm(value: dt.datetime | None, zone: dt.tzinfo) -> str:
    return "" if value is None else value.astimezone(zone).strftime("%H:%M")


def _duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes = round(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def _number(value: float | None) -> str | int:
    return "" if value is None else round(value)


#: The page's columns, in its order, with the date first (a CSV outlives the page's heading).
CSV_COLUMNS = (
    "date", "takeoff", "takeoff_estimate", "first_seen", "landing", "landing_estimate", "last_seen",
    "duration", "registration", "competition_number", "model", "callsign", "launch",
    "tow_plane", "release_height_ft", "takeoff_runway", "landing_runway", "max_altitude_ft",
    "max_agl_ft", "departure", "arrival", "time_zone", "flight_id",
)


def flights_csv(rows: Iterable[dict[str, Any]], zone: dt.tzinfo) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for raw in rows:
        row = _anonymous(raw)
        start = row["takeoff_at"] or row["first_fix_at"]
        tow = row["tow_registration"] or (
            "" if row["tow_aircraft_id"] is None else str(row["tow_aircraft_id"]))
        if not tow and row.get("has_tow"):
            tow = "(anonymous)"
        writer.writerow([
            start.astimezone(zone).date().isoformat(),
            _hhmm(row["takeoff_at"], zone),
            takeoff_estimate(row) or "",
            _hhmm(row["first_fix_at"], zone),
            _hhmm(row["landing_at"], zone),
            landing_estimate(row) or "",
            _hhmm(row["last_fix_at"], zone),
            _duration_text(duration_s(row)),
            row["registration"] or "",
            row["competition_number"] or "",
            row["model"] or "",
            row["callsign"] or "",
            launch_of(row).value,
            tow,
            _number(row["release_height_ft"]),
            row["takeoff_runway"] or "",
            row["landing_runway"] or "",
            _number(row["max_altitude_ft"]),
            _number(row["max_agl_ft"]),
            row["departure_airport"] or "",
            row["arrival_airport"] or "",
            str(zone),
            str(row["id"]),
        ])
    return out.getvalue()


def track_geojson(flight: dict[str, Any], fixes: list[dict[str, Any]]) -> dict[str, Any]:
    coordinates = [
        [fix["lon"], fix["lat"]] if fix["altitude_ft"] is None
        else [fix["lon"], fix["lat"], round(fix["altitude_ft"] / FEET_PER_METRE, 1)]
        for fix in fixes
    ]
    return {
        "type": "Feature",
        "geometry": {"type": "LineString", "coordinates": coordinates},
        "properties": {
            **flight_json(flight),
            "times": [iso(fix["time"]) for fix in fixes],
            "altitudes_ft": [fix["altitude_ft"] for fix in fixes],
        },
    }


def _igc_angle(value: float, width: int, positive: str, negative: str) -> str:
    hemisphere = positive if value >= 0 else negative
    value = abs(value)
    degrees = int(value)
    milli_minutes = round((value - degrees) * 60_000)
    if milli_minutes == 60_000:
        degrees, milli_minutes = degrees + 1, 0
    return f"{degrees:0{width}d}{milli_minutes:05d}{hemisphere}"


def _igc_altitude(feet: float | None) -> str:
    if feet is None:
        return "00000"
    metres = max(-9999, min(99999, round(feet / FEET_PER_METRE)))
    return f"{metres:05d}" if metres >= 0 else f"-{-metres:04d}"


def track_igc(flight: dict[str, Any], fixes: list[dict[str, Any]]) -> str:
    """An IGC file: headers, then one B record per fix (GNSS altitude; no pressure altitude)."""
    flight = _anonymous(flight)
    first = fixes[0]["time"] if fixes else flight["first_fix_at"]
    day = first.astimezone(dt.UTC)
    lines = [
        "AXXXSOAR soar",
        f"HFDTEDATE:{day:%d%m%y},01",
        "HFPLTPILOTINCHARGE:",
        f"HFGTYGLIDERTYPE:{_igc_text(flight['model'])}",
        f"HFGIDGLIDERID:{_igc_text(flight['registration'])}",
        f"HFCIDCOMPETITIONID:{_igc_text(flight['competition_number'])}",
        "HFDTMGPSDATUM:WGS84",
        "HFFTYFRTYPE:soar,tracking network reconstruction",
        f"LSOAFLIGHTID{flight['id']}",
    ]
    for fix in fixes:
        at = fix["time"].astimezone(dt.UTC)
        lines.append(
            f"B{at:%H%M%S}{_igc_angle(fix['lat'], 2, 'N', 'S')}"
            f"{_igc_angle(fix['lon'], 3, 'E', 'W')}A00000{_igc_altitude(fix['altitude_ft'])}"
        )
    return "\r\n".join(lines) + "\r\n"


def _igc_text(value: str | None) -> str:
    return re.sub(r"[^ -~]", "", value or "")


def track_kml(flight: dict[str, Any], fixes: list[dict[str, Any]]) -> str:
    flight = _anonymous(flight)
    name = (flight["registration"] or flight["callsign"]
            or (f"flight {flight['id']}" if flight["aircraft_id"] is None
                else str(flight["aircraft_id"])))
    coordinates = " ".join(
        f"{fix['lon']:.6f},{fix['lat']:.6f},"
        f"{0 if fix['altitude_ft'] is None else fix['altitude_ft'] / FEET_PER_METRE:.1f}"
        for fix in fixes
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<kml xmlns="http://www.opengis.net/kml/2.2"><Document>'
        f"<name>{escape(name)} {escape(iso(flight['first_fix_at']) or '')}</name>"
        '<Style id="track"><LineStyle><color>ff0055ff</color><width>3</width></LineStyle></Style>'
        f"<Placemark><name>{escape(name)}</name><styleUrl>#track</styleUrl>"
        "<LineString><altitudeMode>absolute</altitudeMode>"
        f"<coordinates>{coordinates}</coordinates></LineString></Placemark>"
        "</Document></kml>\n"
    )


# -- database -------------------------------------------------------------------------------


def dumps(body: Any) -> bytes:
    """JSON with its keys sorted, as `jsonify` wrote it."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


async def run_query(ctx: WebContext, work: Callable[[Conn], T]) -> T:
    """`work(conn)` in a worker thread on a connection of the API pool; what it returns.

    At most as many threads as the pool has connections: the requests past them wait here, in
    the event loop, instead of holding a thread of trio's default limiter (the writers' threads)
    while they wait for a connection."""
    pool = ctx.pool
    if pool is None:
        raise ApiError(503, "database not available")

    def call() -> T:
        with pool.connection() as conn:
            return work(conn)

    try:
        return await trio.to_thread.run_sync(call, limiter=ctx.query_threads)
    except ApiError:
        raise
    except Exception as exc:
        import psycopg
        import psycopg_pool

        if isinstance(exc, psycopg.OperationalError | psycopg_pool.PoolTimeout):
            log.warning("api.database_unavailable", error=str(exc))
            raise ApiError(503, "database not available") from None
        raise


async def answer(ctx: WebContext, build: Callable[[Conn], Any],
                 content_type: str = "application/json") -> Response:
    """The JSON body `build(conn)` returns, queried, shaped and encoded in a worker thread."""
    body = await run_query(ctx, lambda conn: dumps(build(conn)))
    return Response(body, content_type=content_type)


async def with_connection(ctx: WebContext, fn: Callable[..., T], *args: Any) -> T:
    """`fn(conn, *args)` in a worker thread on a connection of the API pool, for routes that
    shape the rows themselves (the map's data routes): `run_query` with its arguments."""
    return await run_query(ctx, lambda conn: fn(conn, *args))


# -- routes ---------------------------------------------------------------------------------


def api_blueprint(ctx: WebContext) -> Blueprint:
    bp = Blueprint("api", __name__)

    @bp.get("/api/openapi.json")
    async def openapi_json() -> Response:
        _check_names("/api/openapi.json")
        return Response(dumps(openapi.document()), content_type="application/json")

    @bp.get("/api/aircraft")
    async def aircraft_list() -> Response:
        _check_names("/api/aircraft")
        given = [name for name in ("bbox", "address", "registration") if name in request.args]
        if len(given) != 1:
            raise ApiError(400, "give exactly one of bbox (west,south,east,north), address "
                                "(hex) or registration")
        limit = parse_limit("aircraft", 500)
        if given == ["address"]:
            if "seen_after" in request.args:
                raise ApiError(400, "seen_after goes with bbox only")
            address = parse_address(request.args["address"])

            def find(conn: Conn) -> list[queries.Row]:
                return queries.aircraft_by_address(conn, address, limit)
        elif given == ["registration"]:
            if "seen_after" in request.args:
                raise ApiError(400, "seen_after goes with bbox only")
            registration = parse_registration(request.args["registration"])

            def find(conn: Conn) -> list[queries.Row]:
                return queries.aircraft_by_registration(conn, registration, limit)
        else:
            west, south, east, north = parse_bbox(request.args.get("bbox"))
            seen_after = parse_time("seen_after")

            def find(conn: Conn) -> list[queries.Row]:
                return queries.aircraft_in_bbox(conn, west, south, east, north, limit,
                                                seen_after)

        def build(conn: Conn) -> dict[str, Any]:
            rows = find(conn)
            return {"aircraft": [aircraft_json(r) for r in rows], "count": len(rows),
                    "limit": limit}

        return await answer(ctx, build)

    @bp.get("/api/aircraft/<aircraft_id>")
    async def aircraft_one(aircraft_id: str) -> Response:
        _check_names("/api/aircraft/{aircraft_id}")
        ident = parse_aircraft_id(aircraft_id)

        def build(conn: Conn) -> dict[str, Any]:
            row = queries.aircraft_by_id(conn, ident)
            if row is None:
                raise ApiError(404, "aircraft not found")
            flight = queries.current_flight(conn, ident)
            return {**aircraft_json(row),
                    "current_flight": None if flight is None else flight_json(flight)}

        return await answer(ctx, build)

    @bp.get("/api/aircraft/<aircraft_id>/fixes")
    async def aircraft_fixes(aircraft_id: str) -> Response:
        _check_names("/api/aircraft/{aircraft_id}/fixes")
        ident = parse_aircraft_id(aircraft_id)
        since, until = parse_time("since"), parse_time("until")
        if since is not None and until is not None and since >= until:
            raise ApiError(400, "since must be before until")
        cursor = request.args.get("cursor")
        after = None if cursor is None else decode_cursor(cursor, ident)
        limit = parse_limit("fixes", 1000)

        def build(conn: Conn) -> dict[str, Any]:
            if queries.aircraft_is_hidden(conn, ident):
                raise ApiError(404, "aircraft not found")
            rows = queries.aircraft_fixes(conn, ident, since, until, after, limit)
            next_cursor = (
                encode_cursor(ident, rows[-1]["time"], rows[-1]["received_at"])
                if len(rows) == limit else None
            )
            return {"aircraft_id": ident, "fixes": [fix_json(r) for r in rows],
                    "count": len(rows), "next_cursor": next_cursor}

        return await answer(ctx, build)

    @bp.get("/api/aircraft/<aircraft_id>/flights")
    async def aircraft_flights(aircraft_id: str) -> Response:
        _check_names("/api/aircraft/{aircraft_id}/flights")
        ident = parse_aircraft_id(aircraft_id)
        limit = parse_limit("flights", 100)
        kind = f"aircraft:{ident}"
        cursor = request.args.get("cursor")
        before = None if cursor is None else decode_flight_cursor(cursor, kind)

        def build(conn: Conn) -> dict[str, Any]:
            if queries.aircraft_is_hidden(conn, ident):
                raise ApiError(404, "aircraft not found")
            # one more than asked: the last page says it is the last
            rows, total = queries.aircraft_flights_page(conn, ident, before, limit + 1)
            rows, next_cursor = _page(kind, rows, limit)
            return {"aircraft_id": ident, "flights": [flight_json(r) for r in rows],
                    "count": len(rows), "total": total, "next_cursor": next_cursor}

        return await answer(ctx, build)

    @bp.get("/api/flights")
    async def flights_list() -> Response:
        _check_names("/api/flights")
        zone = parse_tz(request.args.get("tz"))
        day = parse_date(request.args.get("date"), zone)
        airport = parse_airport(request.args.get("airport"))
        spurious = parse_bool("include_spurious")
        with_summary = parse_bool("summary")
        fmt = request.args.get("format", "json")
        if fmt not in ("json", "csv"):
            raise ApiError(400, "format must be json or csv")
        start, end = day_bounds(day, zone)
        # the cursor is only good for the list it came from
        kind = f"day:{day.isoformat()}:{zone}:{airport or ''}:{int(spurious)}"
        cursor = request.args.get("cursor")
        after = None if cursor is None else decode_flight_cursor(cursor, kind)
        if fmt == "csv":
            # the whole day, as printed: no paging
            csv_limit = (CSV_MAX_ROWS if "limit" not in request.args
                         else parse_limit("flights", CSV_MAX_ROWS))

            def sheet(conn: Conn) -> str:
                rows, _total = queries.flights_on_day(conn, start, end, airport, spurious,
                                                      after, csv_limit)
                return flights_csv(rows, zone)

            name = f"flights-{day.isoformat()}{'-' + airport if airport else ''}.csv"
            return Response(await run_query(ctx, sheet), content_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})
        limit = parse_limit("flights", 500)

        def build(conn: Conn) -> dict[str, Any]:
            rows, total = queries.flights_on_day(conn, start, end, airport, spurious, after,
                                                 limit + 1)
            rows, next_cursor = _page(kind, rows, limit)
            body: dict[str, Any] = {
                "date": day.isoformat(), "tz": str(zone), "airport": airport,
                "flights": [flight_json(r) for r in rows], "count": len(rows), "total": total,
                "next_cursor": next_cursor,
            }
            if with_summary:
                if total <= len(rows) and after is None:
                    every = rows
                else:
                    every, _ = queries.flights_on_day(conn, start, end, airport, spurious, None,
                                                      SUMMARY_MAX_FLIGHTS)
                body["summary"] = day_summary(every, complete=total <= SUMMARY_MAX_FLIGHTS)
            return body

        return await answer(ctx, build)

    def _flight(conn: Conn, flight_id: uuid.UUID) -> dict[str, Any]:
        row = queries.flight_by_id(conn, flight_id)
        if row is None:
            raise ApiError(404, "flight not found")
        return row

    def _track(flight_id: uuid.UUID, render: Callable[[dict[str, Any], list[dict[str, Any]]], T]
               ) -> Callable[[Conn], T]:
        def work(conn: Conn) -> T:
            flight = _flight(conn, flight_id)
            return render(flight, queries.flight_track(conn, flight, MAX_TRACK_FIXES))
        return work

    @bp.get("/api/flights/<flight_id>")
    async def flight_one(flight_id: str) -> Response:
        _check_names("/api/flights/{flight_id}")
        ident = parse_flight_id(flight_id)
        return await answer(ctx, lambda conn: flight_json(_flight(conn, ident)))

    @bp.get("/api/flights/<flight_id>/track.geojson")
    async def flight_geojson(flight_id: str) -> Response:
        _check_names("/api/flights/{flight_id}/track.geojson")
        return await answer(ctx, _track(parse_flight_id(flight_id), track_geojson),
                            content_type="application/geo+json")

    @bp.get("/api/flights/<flight_id>.igc")
    async def flight_igc(flight_id: str) -> Response:
        _check_names("/api/flights/{flight_id}.igc")
        igc = await run_query(ctx, _track(parse_flight_id(flight_id), track_igc))
        return Response(igc, content_type="application/vnd.fai.igc",
                        headers={"Content-Disposition": f'attachment; filename="{flight_id}.igc"'})

    @bp.get("/api/flights/<flight_id>.kml")
    async def flight_kml(flight_id: str) -> Response:
        _check_names("/api/flights/{flight_id}.kml")
        kml = await run_query(ctx, _track(parse_flight_id(flight_id), track_kml))
        return Response(kml, content_type="application/vnd.google-earth.kml+xml",
                        headers={"Content-Disposition": f'attachment; filename="{flight_id}.kml"'})

    @bp.get("/api/receivers")
    async def receivers_list() -> Response:
        _check_names("/api/receivers")
        positioned = parse_bool("positioned")
        limit = parse_limit("receivers", 1000)

        def build(conn: Conn) -> dict[str, Any]:
            rows = queries.receivers(conn, positioned, limit)
            return {"receivers": [receiver_json(r) for r in rows], "count": len(rows)}

        return await answer(ctx, build)

    @bp.get("/api/receivers/<receiver>")
    async def receiver_one(receiver: str) -> Response:
        _check_names("/api/receivers/{receiver}")
        name = parse_receiver(receiver)

        def build(conn: Conn) -> dict[str, Any]:
            row = queries.receiver_by_name(conn, name)
            if row is None:
                raise ApiError(404, "receiver not found")
            statuses = queries.receiver_statuses(conn, name, 20)
            recent = [{**s, "received_at": iso(s["received_at"])} for s in statuses]
            return {**receiver_json(row), "recent_statuses": recent}

        return await answer(ctx, build)

    return bp


# -- errors and metrics ---------------------------------------------------------------------


def _route_label() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def install_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> tuple[Response, int]:
        return jsonify({"error": exc.message}), exc.status

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response | tuple[Response, int]:
        status = exc.code or 500
        if not request.path.startswith("/api"):
            return Response(f"{status} {exc.name}\n", status=status, content_type="text/plain")
        return jsonify({"error": (exc.name or "error").lower()}), status

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> tuple[Response, int]:
        HTTP_ERRORS.labels(route=_route_label()).inc()
        log.exception("api.unhandled", path=request.path, route=_route_label())
        return jsonify({"error": "internal error"}), 500


def install_metrics(app: QuartTrio) -> None:
    @app.before_request
    async def start_timer() -> None:
        g.soar_started = time.perf_counter()

    @app.after_request
    async def count(response: Response) -> Response:
        route = _route_label()
        HTTP_REQUESTS.labels(route=route, method=request.method,
                             status=str(response.status_code)).inc()
        started = g.get("soar_started")
        if started is not None:
            HTTP_SECONDS.labels(route=route).observe(time.perf_counter() - started)
        return response


def register(app: QuartTrio, ctx: WebContext) -> None:
    """Add the API, the live WebSocket and the pages to the lead's app."""
    from soar.web.live import live_blueprint
    from soar.web.pages import pages_blueprint

    app.register_blueprint(api_blueprint(ctx))
    app.register_blueprint(live_blueprint(lambda: ctx.live))
    app.register_blueprint(pages_blueprint())
    install_error_handlers(app)
    install_metrics(app)
