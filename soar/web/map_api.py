"""What the live map page needs beyond the public API, under `/map/data/` (page-private: the
shapes follow the page, and the public `/api` with its OpenAPI table stays the stable contract).

- `config`: freshness and history settings (`map_inactive_after`, `map_remove_after`,
  `map_trail_minutes`), so the page draws stale aircraft the way the operator configured;
- `feeds`: each protocol's feed state (connected / reconnecting / down / not configured /
  unknown) from this process's supervision tree and `soar_source_connected`;
- `trails`: the last N minutes of fixes of the aircraft in a box, the history drawn on open;
- `track/<id>`: one aircraft's current flight (else its last hours), with the ground
  elevation under each fix where AGL is known, for the selected aircraft and its barogram;
- `replay`: every fix of a past window, in time order, paged by a keyset cursor;
- `receivers`: positioned receivers with their last beacon, online or offline;
- `airfields`: airportsdata fields in a box.

Privacy: no-track and stealth aircraft never appear in any of these routes, as the live view
never streams them (the id holds the address: a stealth aircraft is seen only in the flight
log, under its flight's random id); identity only when identified (`soar.web.queries`). Two
independent guards, as in the API: every statement filters them out, and every handler drops
a row the statement marks `hidden` (and `track` asks `queries.aircraft_is_hidden` itself).
Every parameter is validated; a bad one is a 400 `{"error": ...}`.

May import: soar.config, soar.ingest, soar.store, soar.web.api, soar.web.app, soar.web.queries
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cache
from typing import Any

import structlog
from quart import Blueprint, Response, jsonify, request

from soar.store.queries import FIX_TIME, us
from soar.store.tables import ts
from soar.web import queries
from soar.web.api import (
    CURSOR_ERRORS,
    ApiError,
    aircraft_identity,
    decode_token,
    encode_token,
    iso,
    parse_aircraft_id,
    parse_bbox,
    parse_time,
    token_int,
    with_connection,
)
from soar.web.app import WebContext

log = structlog.get_logger(__name__)

#: Defaults when neither the process (`ctx.extras["settings"]`) nor the environment says.
INACTIVE_AFTER_S = 120.0
REMOVE_AFTER_S = 600.0
TRAIL_MINUTES = 10.0
#: A receiver is online while its last beacon is younger than this (OGN receivers send a
#: position every 5 minutes).
RECEIVER_ONLINE_S = 15 * 60
MAX_TRAIL_MINUTES = 180
MAX_TRAIL_AIRCRAFT = 1000
MAX_TRAIL_POINTS = 50_000
MAX_TRACK_FIXES = 20_000
REPLAY_PAGE_MAX = 20_000
MAX_AIRFIELDS = 2000
#: Without a flight to show, `track` shows this much before the aircraft's last fix.
TRACK_FALLBACK_HOURS = 6
#: A fix's own time is at most this long after its receive time (beacon clocks run a little
#: ahead): the replay query's lower bound on received_at, which prunes the day partitions.
CLOCK_AHEAD = dt.timedelta(minutes=1)

PROTOCOLS = ("ogn", "beast", "sbs")
_SOURCE_PROTOCOL = {"aprs": "ogn", "ogn": "ogn", "beast": "beast", "sbs": "sbs"}
FEET_PER_METRE = 3.28084


@dataclass(frozen=True, slots=True)
class MapSettings:
    inactive_after_s: float = INACTIVE_AFTER_S
    remove_after_s: float = REMOVE_AFTER_S
    trail_minutes: float = TRAIL_MINUTES


@cache
def _environment_settings() -> Any:
    """The SOAR_* environment's settings, for a process that did not hand its own over."""
    from soar.config import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError:
        return None


def map_settings(ctx: WebContext) -> MapSettings:
    settings = ctx.extras.get("settings") or _environment_settings()
    if settings is None:
        return MapSettings()
    return MapSettings(
        inactive_after_s=float(getattr(settings, "map_inactive_after", INACTIVE_AFTER_S)),
        remove_after_s=float(getattr(settings, "map_remove_after", REMOVE_AFTER_S)),
        trail_minutes=float(getattr(settings, "map_trail_minutes", TRAIL_MINUTES)),
    )


# -- validation -----------------------------------------------------------------------------


def _only(*names: str) -> None:
    unknown = set(request.args) - set(names)
    if unknown:
        raise ApiError(400, f"unknown parameter: {sorted(unknown)[0]}")
    for name in request.args:
        if len(request.args.getlist(name)) > 1:
            raise ApiError(400, f"parameter given more than once: {name}")


def _number(name: str, default: float, low: float, high: float) -> float:
    text = request.args.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a number") from None
    if not low <= value <= high:  # also refuses nan
        raise ApiError(400, f"{name} must be between {low:g} and {high:g}")
    return value


# The replay cursor (an API cursor, `soar.web.api.encode_token`): {"t", "a", "r"} = the last
# fix's own time (µs), aircraft id and receive time (µs), the keyset the fixes are ordered by.
def encode_replay_cursor(time: dt.datetime, aircraft_id: int, received: dt.datetime) -> str:
    return encode_token({"t": us(time), "a": aircraft_id, "r": us(received)})


def decode_replay_cursor(text: str) -> tuple[dt.datetime, int, dt.datetime]:
    try:
        data = decode_token(text)
        return ts(token_int(data, "t")), token_int(data, "a"), ts(token_int(data, "r"))
    except CURSOR_ERRORS:
        raise ApiError(400, "cursor is not valid") from None


# -- SQL ------------------------------------------------------------------------------------

#: A fix may be shown: its aircraft is tracked and not stealth (no row in `aircraft`: tracked,
#: not stealth). `_HIDDEN` is its negation, returned for the handlers' own check.
_VISIBLE = "(a.tracked IS NOT FALSE AND a.stealth IS NOT TRUE)"
_HIDDEN = "(a.tracked IS FALSE OR a.stealth IS TRUE)"

_MAP_AIRCRAFT = f"""
    fx.aircraft_id AS id, a.address_type, a.address, {queries.AIRCRAFT_PUBLIC}
"""

_MAP_FIX = f"""
    {FIX_TIME} AS time, fx.received_at, fx.lat, fx.lon, fx.altitude_ft, fx.agl_ft,
    fx.ground_speed_kt, fx.track_deg, fx.climb_fpm, fx.callsign, fx.squawk, fx.protocol,
    fx.on_ground, fx.is_active
"""


def trails(conn: queries.Conn, box: tuple[float, float, float, float], since: dt.datetime,
           until: dt.datetime) -> list[queries.Row]:
    """Fixes in [since, until] of the aircraft last seen in the box since `since`."""
    west, south, east, north = box
    if west <= east:
        where = "a.lon BETWEEN %(west)s AND %(east)s"
    else:
        where = "(a.lon >= %(west)s OR a.lon <= %(east)s)"
    return queries.fetch_all(
        conn,
        f"""
        WITH wanted AS (
            SELECT a.id, {_HIDDEN} AS hidden FROM aircraft a
            WHERE a.tracked AND NOT a.stealth AND a.lat BETWEEN %(south)s AND %(north)s AND {where}
              AND a.last_fix_at >= %(since)s
            ORDER BY a.last_fix_at DESC LIMIT %(aircraft)s
        )
        SELECT fx.aircraft_id AS id, w.hidden, {FIX_TIME} AS time, fx.lat, fx.lon, fx.altitude_ft
        FROM wanted w JOIN fixes fx ON fx.aircraft_id = w.id
        WHERE {FIX_TIME} >= %(since)s AND {FIX_TIME} <= %(until)s
          AND fx.received_at >= %(since_received)s
        ORDER BY fx.aircraft_id, {FIX_TIME}
        LIMIT %(points)s
        """,
        {"west": west, "south": south, "east": east, "north": north, "since": since,
         "until": until, "since_received": since - CLOCK_AHEAD,
         "aircraft": MAX_TRAIL_AIRCRAFT, "points": MAX_TRAIL_POINTS},
    )


def track(conn: queries.Conn, aircraft_id: int, now: dt.datetime
          ) -> tuple[queries.Row | None, queries.Row | None, list[queries.Row]]:
    """(aircraft, current flight or None, its fixes in time order)."""
    aircraft = queries.aircraft_by_id(conn, aircraft_id)
    if aircraft is None:
        return None, None, []
    last_fix = aircraft["last_fix_at"] or now
    # The open flight, else the one that ended with the aircraft's last fix (it landed or
    # timed out a moment ago and is still on the map), else its last hours of fixes.
    flight = queries.fetch_one(
        conn,
        f"""
        SELECT id, first_fix_at, last_fix_at, takeoff_at, departure_airport,
               landing_at IS NULL AND timed_out_at IS NULL AND end_reason IS NULL AS open
        FROM flights fl WHERE aircraft_id = %(id)s AND NOT EXISTS (
            SELECT 1 FROM aircraft a WHERE a.id = fl.aircraft_id AND NOT {_VISIBLE})
        ORDER BY started_at DESC LIMIT 1
        """,
        {"id": aircraft_id},
    )
    if flight is not None and not flight["open"] and (
        flight["last_fix_at"] < last_fix - dt.timedelta(minutes=1)
    ):
        flight = None
    if flight is not None:
        # an open flight's row is written as state now and then: its fixes run on past it
        since = flight["first_fix_at"]
        until = None if flight["open"] else flight["last_fix_at"]
    else:
        since, until = last_fix - dt.timedelta(hours=TRACK_FALLBACK_HOURS), None
    fixes = queries.fetch_all(
        conn,
        f"""
        SELECT {FIX_TIME} AS time, lat, lon, altitude_ft, agl_ft, ground_speed_kt, climb_fpm
        FROM fixes fx
        WHERE aircraft_id = %(id)s AND {FIX_TIME} >= %(since)s
          AND (%(until)s::timestamptz IS NULL OR {FIX_TIME} <= %(until)s)
          AND NOT EXISTS (SELECT 1 FROM aircraft a WHERE a.id = fx.aircraft_id AND NOT {_VISIBLE})
        ORDER BY {FIX_TIME}, received_at
        LIMIT %(limit)s
        """,
        {"id": aircraft_id, "since": since, "until": until, "limit": MAX_TRACK_FIXES},
    )
    return aircraft, flight, fixes


def replay(conn: queries.Conn, start: dt.datetime, end: dt.datetime,
           box: tuple[float, float, float, float] | None,
           after: tuple[dt.datetime, int, dt.datetime] | None, limit: int) -> list[queries.Row]:
    """Fixes whose own time is in [start, end), in (time, aircraft, received) order."""
    west, south, east, north = box if box is not None else (-180.0, -90.0, 180.0, 90.0)
    lon_where = ("fx.lon BETWEEN %(west)s AND %(east)s" if west <= east
                 else "(fx.lon >= %(west)s OR fx.lon <= %(east)s)")
    after_time, after_id, after_received = after if after is not None else (None, None, None)
    return queries.fetch_all(
        conn,
        f"""
        SELECT {_MAP_FIX}, {_MAP_AIRCRAFT}, a.aircraft_type, {_HIDDEN} AS hidden
        FROM fixes fx LEFT JOIN aircraft a ON a.id = fx.aircraft_id
        WHERE {FIX_TIME} >= %(start)s AND {FIX_TIME} < %(end)s
          AND fx.received_at >= %(start_received)s
          AND fx.lat BETWEEN %(south)s AND %(north)s AND {lon_where}
          AND {_VISIBLE}
          AND (%(after)s::timestamptz IS NULL
               OR ({FIX_TIME}, fx.aircraft_id, fx.received_at)
                  > (%(after)s, %(after_id)s, %(after_received)s))
        ORDER BY {FIX_TIME}, fx.aircraft_id, fx.received_at
        LIMIT %(limit)s
        """,
        {"start": start, "end": end, "start_received": start - CLOCK_AHEAD, "west": west,
         "south": south, "east": east, "north": north, "after": after_time,
         "after_id": after_id, "after_received": after_received, "limit": limit},
    )


def receivers_in(conn: queries.Conn, box: tuple[float, float, float, float]) -> list[queries.Row]:
    west, south, east, north = box
    lon_where = ("lon BETWEEN %(west)s AND %(east)s" if west <= east
                 else "(lon >= %(west)s OR lon <= %(east)s)")
    return queries.fetch_all(
        conn,
        f"""
        SELECT name, lat, lon, altitude_ft, latest_packet_at FROM receivers
        WHERE lat BETWEEN %(south)s AND %(north)s AND {lon_where}
        ORDER BY name LIMIT 5000
        """,
        {"west": west, "south": south, "east": east, "north": north},
    )


# -- feeds ----------------------------------------------------------------------------------


def _gauge_connected() -> dict[str, tuple[str, bool]]:
    """source label -> (protocol, connected) from soar_source_connected in this process."""
    from soar.ingest.metrics import SOURCE_CONNECTED

    found: dict[str, tuple[str, bool]] = {}
    for metric in SOURCE_CONNECTED.collect():
        for sample in metric.samples:
            found[sample.labels["source"]] = (sample.labels["protocol"], sample.value >= 1)
    return found


def _source_nodes(node: Any, found: dict[str, Any]) -> bool:
    """Collect the `source.*` children anywhere in a supervision tree into `found`; True when
    the tree has a `sources` supervisor at all (however nested: the topology may wrap it)."""
    if isinstance(node, list):
        return any([_source_nodes(item, found) for item in node])
    if not isinstance(node, dict):
        return False
    has = node.get("name") == "sources" and isinstance(node.get("children"), dict)
    children = node.get("children")
    if isinstance(children, dict):
        for name, child in children.items():
            if name.startswith("source."):
                found[name.removeprefix("source.")] = child
    for value in node.values():
        if isinstance(value, dict | list):
            has = _source_nodes(value, found) or has
    return has


def feed_states(tree: dict[str, Any]) -> dict[str, Any]:
    """Per protocol: its state and its sources. Without a `sources` supervisor in the tree
    (the split `soar web` process reads no feed) every state is `unknown`."""
    nodes: dict[str, Any] = {}
    if not _source_nodes(tree, nodes):
        return {p: {"state": "unknown", "sources": []} for p in PROTOCOLS}
    gauge = _gauge_connected()
    by_protocol: dict[str, list[dict[str, str]]] = {p: [] for p in PROTOCOLS}
    for name, node in nodes.items():
        protocol, connected = gauge.get(name, (None, False))
        if protocol is None:
            protocol = _SOURCE_PROTOCOL.get(name.split(":", 1)[0])
        if protocol not in by_protocol:
            continue
        task = node.get("state") if isinstance(node, dict) else None
        if connected:
            state = "connected"
        elif task in ("starting", "running", "backing_off"):
            state = "reconnecting"
        elif task == "finished":
            state = "finished"
        else:
            state = "down"
        by_protocol[protocol].append({"name": name, "state": state})
    out: dict[str, Any] = {}
    for protocol, items in by_protocol.items():
        states = {item["state"] for item in items}
        if not items:
            overall = "not_configured"
        else:
            overall = next(s for s in ("connected", "reconnecting", "finished", "down")
                           if s in states)
        out[protocol] = {"state": overall, "sources": items}
    return out


# -- airfields ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Airfield:
    code: str
    name: str
    lat: float
    lon: float
    elevation_ft: float | None
    iata: str


@cache
def airfields() -> tuple[Airfield, ...]:
    import airportsdata

    out = []
    for code, row in airportsdata.load("ICAO").items():
        elevation: object = row.get("elevation")
        out.append(Airfield(code, str(row.get("name") or ""), float(row["lat"]), float(row["lon"]),
                            float(elevation) if isinstance(elevation, int | float) else None,
                            str(row.get("iata") or "")))
    return tuple(out)


def airfields_in(
    box: tuple[float, float, float, float], limit: int, major: bool = False
) -> list[Airfield]:
    """Airfields in the box; `major`: only those with an IATA code (a zoomed-out map of the
    US would otherwise be covered by private strips)."""
    west, south, east, north = box

    def inside(a: Airfield) -> bool:
        if major and not a.iata:
            return False
        within_lon = west <= a.lon <= east if west <= east else (a.lon >= west or a.lon <= east)
        return south <= a.lat <= north and within_lon

    # IATA-coded fields first: they are the bigger ones, shown when the box holds too many
    found = sorted((a for a in airfields() if inside(a)), key=lambda a: (not a.iata, a.code))
    return found[:limit]


# -- rendering ------------------------------------------------------------------------------


def shown(rows: list[queries.Row], route: str) -> list[queries.Row]:
    """The handlers' guard on top of the SQL's: rows of a no-track or stealth aircraft are
    dropped. The statements never return one, so a drop here is a bug in a statement: logged
    (with no identity in the event) so it is found, never shown."""
    kept = [row for row in rows if row["hidden"] is not True]
    if len(kept) != len(rows):
        log.error("map.hidden_rows_dropped", route=route, rows=len(rows) - len(kept))
    return kept


def _r(value: float | None, digits: int = 0) -> float | int | None:
    if value is None:
        return None
    return round(value) if digits == 0 else round(value, digits)


def _ground_ft(row: queries.Row) -> float | int | None:
    if row["altitude_ft"] is None or row["agl_ft"] is None:
        return None
    return _r(row["altitude_ft"] - row["agl_ft"])


def replay_fix_json(row: queries.Row) -> dict[str, Any]:
    """A replayed fix in the shape of a live `fix` message, so the page draws both alike."""
    return {
        "type": "fix",
        "id": row["id"],
        **aircraft_identity(row),
        "time_us": us(row["time"]),
        "lat": row["lat"],
        "lon": row["lon"],
        "altitude_ft": _r(row["altitude_ft"]),
        "agl_ft": _r(row["agl_ft"]),
        "ground_speed_kt": _r(row["ground_speed_kt"], 1),
        "track_deg": _r(row["track_deg"]),
        "climb_fpm": _r(row["climb_fpm"]),
        "callsign": row["callsign"],
        "squawk": row["squawk"],
        "on_ground": row["on_ground"],
    }


# -- routes ---------------------------------------------------------------------------------


def map_blueprint(ctx: WebContext) -> Blueprint:
    bp = Blueprint("map_data", __name__)

    def box() -> tuple[float, float, float, float]:
        return parse_bbox(request.args.get("bbox"))

    @bp.get("/map/data/config")
    async def config() -> Response:
        _only()
        s = map_settings(ctx)
        return jsonify({"inactive_after_s": s.inactive_after_s,
                        "remove_after_s": s.remove_after_s,
                        "trail_minutes": s.trail_minutes,
                        "receiver_online_s": RECEIVER_ONLINE_S})

    @bp.get("/map/data/feeds")
    async def feeds() -> Response:
        _only()
        feeds = ctx.feeds() if ctx.feeds is not None else feed_states(ctx.tree())
        return jsonify({"feeds": feeds, "live": ctx.live is not None})

    @bp.get("/map/data/trails")
    async def trails_route() -> Response:
        _only("bbox", "minutes", "until")
        area = box()
        minutes = _number("minutes", map_settings(ctx).trail_minutes, 0.5, MAX_TRAIL_MINUTES)
        until = parse_time("until") or dt.datetime.now(dt.UTC)
        since = until - dt.timedelta(minutes=minutes)
        rows = await with_connection(ctx, trails, area, since, until)
        out: dict[str, list[list[Any]]] = {}
        points = shown(rows, "trails")
        for row in points:
            out.setdefault(str(row["id"]), []).append(
                [us(row["time"]) // 1000, row["lat"], row["lon"], _r(row["altitude_ft"])]
            )
        return jsonify({"since": iso(since), "until": iso(until), "trails": out,
                        "points": len(points), "truncated": len(rows) == MAX_TRAIL_POINTS})

    @bp.get("/map/data/track/<aircraft_id>")
    async def track_route(aircraft_id: str) -> Response:
        _only()
        ident = parse_aircraft_id(aircraft_id)
        if await with_connection(ctx, queries.aircraft_is_hidden, ident):
            raise ApiError(404, "aircraft not found")
        aircraft, flight, fixes = await with_connection(ctx, track, ident, dt.datetime.now(dt.UTC))
        if aircraft is None:
            raise ApiError(404, "aircraft not found")
        return jsonify({
            "aircraft_id": ident,
            "flight": None if flight is None else {
                "id": str(flight["id"]), "takeoff": iso(flight["takeoff_at"]),
                "first_fix": iso(flight["first_fix_at"]), "open": flight["open"],
                "departure_airport": flight["departure_airport"],
            },
            # [time ms, lat, lon, altitude ft MSL, ground elevation ft where AGL is known]
            "fixes": [[us(f["time"]) // 1000, f["lat"], f["lon"], _r(f["altitude_ft"]),
                       _ground_ft(f)] for f in fixes],
            "truncated": len(fixes) == MAX_TRACK_FIXES,
        })

    @bp.get("/map/data/replay")
    async def replay_route() -> Response:
        _only("start", "end", "bbox", "cursor", "limit")
        start, end = parse_time("start"), parse_time("end")
        if start is None:
            raise ApiError(400, "start is required (ISO 8601)")
        end = end or start + dt.timedelta(hours=1)
        if end <= start:
            raise ApiError(400, "end must be after start")
        if end - start > dt.timedelta(days=1):
            raise ApiError(400, "a replay window is at most one day")
        area = box() if "bbox" in request.args else None
        cursor = request.args.get("cursor")
        after = None if cursor is None else decode_replay_cursor(cursor)
        limit = int(_number("limit", 5000, 1, REPLAY_PAGE_MAX))
        rows = await with_connection(ctx, replay, start, end, area, after, limit)
        next_cursor = (encode_replay_cursor(rows[-1]["time"], rows[-1]["id"],
                                            rows[-1]["received_at"])
                       if len(rows) == limit else None)
        fixes = [replay_fix_json(r) for r in shown(rows, "replay")]
        return jsonify({"start": iso(start), "end": iso(end), "fixes": fixes, "count": len(fixes),
                        "next_cursor": next_cursor})

    @bp.get("/map/data/receivers")
    async def receivers_route() -> Response:
        _only("bbox")
        rows = await with_connection(ctx, receivers_in, box())
        now = dt.datetime.now(dt.UTC)
        return jsonify({"receivers": [
            {"name": r["name"], "lat": r["lat"], "lon": r["lon"],
             "altitude_ft": _r(r["altitude_ft"]), "last_beacon": iso(r["latest_packet_at"]),
             "online": (now - r["latest_packet_at"]).total_seconds() < RECEIVER_ONLINE_S}
            for r in rows
        ], "online_after_s": RECEIVER_ONLINE_S})

    @bp.get("/map/data/airfields")
    async def airfields_route() -> Response:
        _only("bbox", "limit", "major")
        limit = int(_number("limit", 500, 1, MAX_AIRFIELDS))
        major = request.args.get("major", "false")
        if major not in ("true", "false"):
            raise ApiError(400, "major must be true or false")
        found = airfields_in(box(), limit, major == "true")
        return jsonify({"airfields": [
            {"code": a.code, "iata": a.iata or None, "name": a.name, "lat": a.lat, "lon": a.lon,
             "elevation_ft": a.elevation_ft} for a in found
        ], "count": len(found)})

    return bp
