"""Every SQL statement the web API runs, in one place, parameterised only.

Functions take a sync psycopg connection (the API calls them in a worker thread through
`trio.to_thread.run_sync`) and return plain dicts. Privacy is enforced here, in SQL, once:
aircraft with `tracked = false` are filtered out of every statement, and registration,
competition number and model are NULL unless `identified` (see `_AIRCRAFT_PUBLIC`). An aircraft
without a row in `aircraft` is treated as tracked and unidentified.

A fix's `time` is its own time (when the aircraft was there), `coalesce(time, received_at)`
for rows written before it was stored (`soar.store.queries.FIX_TIME`, the expression the
index `fixes_by_time` is built on); `received_at` is returned beside it. Fixes are listed in
own-time order, and `aircraft.last_fix_at` and the flights' times are own times too.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from soar.store.queries import FIX_TIME

Conn = psycopg.Connection[Any]
Row = dict[str, Any]

#: Public columns of an aircraft `a` (LEFT JOINed: every column may be NULL).
_AIRCRAFT_PUBLIC = """
    CASE WHEN a.identified AND NOT a.stealth THEN a.registration END AS registration,
    CASE WHEN a.identified AND NOT a.stealth THEN a.competition_number END AS competition_number,
    CASE WHEN a.identified AND NOT a.stealth THEN a.model END AS model,
    a.aircraft_type, a.category, a.device_type
"""

_AIRCRAFT_COLUMNS = f"""
    a.id, a.address_type, a.address, a.protocol, {_AIRCRAFT_PUBLIC},
    a.first_seen_at, a.last_fix_at, a.lat, a.lon, a.altitude_ft, a.callsign,
    f.ground_speed_kt, f.track_deg, f.climb_fpm, f.agl_ft
"""

#: The latest fix's motion, by the time index (aircraft_id, own time = aircraft.last_fix_at).
_LATEST_FIX = """
    LEFT JOIN LATERAL (
        SELECT fx.ground_speed_kt, fx.track_deg, fx.climb_fpm, fx.agl_ft
        FROM fixes fx
        WHERE fx.aircraft_id = a.id AND coalesce(fx.time, fx.received_at) = a.last_fix_at
        ORDER BY fx.received_at DESC LIMIT 1
    ) f ON true
"""

_FLIGHT_COLUMNS = f"""
    fl.id, fl.aircraft_id, fl.protocol, fl.first_fix_at, fl.last_fix_at, fl.takeoff_at,
    fl.landing_at, fl.timed_out_at, fl.timeout_phase, fl.callsign, fl.departure_airport,
    fl.arrival_airport, fl.takeoff_runway, fl.landing_runway, fl.distance_m, fl.min_lat,
    fl.min_lon, fl.max_lat, fl.max_lon, fl.min_altitude_ft, fl.max_altitude_ft, fl.max_agl_ft,
    fl.fix_count, fl.spurious_reason, fl.tow_aircraft_id, fl.release_at,
    fl.release_altitude_ft, fl.release_height_ft, fl.end_reason,
    {_AIRCRAFT_PUBLIC},
    CASE WHEN tow.identified AND NOT tow.stealth THEN tow.registration END AS tow_registration,
    CASE WHEN tow.identified AND NOT tow.stealth THEN tow.competition_number END AS tow_competition_number
"""

_FLIGHT_FROM = """
    FROM flights fl
    LEFT JOIN aircraft a ON a.id = fl.aircraft_id
    LEFT JOIN aircraft tow ON tow.id = fl.tow_aircraft_id AND tow.tracked
"""

_FIX_COLUMNS = f"""
    {FIX_TIME} AS time, received_at, lat, lon, altitude_ft, agl_ft, ground_speed_kt, track_deg,
    climb_fpm, turn_rate, callsign, squawk, flight_id, receiver, protocol, is_active, on_ground
"""


def _all(conn: Conn, query: str, params: dict[str, Any]) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def _one(conn: Conn, query: str, params: dict[str, Any]) -> Row | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchone()


# -- aircraft -------------------------------------------------------------------------------


def aircraft_in_bbox(
    conn: Conn,
    west: float,
    south: float,
    east: float,
    north: float,
    limit: int,
    seen_after: dt.datetime | None,
) -> list[Row]:
    """Tracked aircraft whose last position is in the box, newest first; west > east wraps 180°."""
    if west <= east:
        where = "point(a.lon, a.lat) <@ box(point(%(west)s, %(south)s), point(%(east)s, %(north)s))"
    else:
        where = (
            "a.lat BETWEEN %(south)s AND %(north)s AND (a.lon >= %(west)s OR a.lon <= %(east)s)"
        )
    return _all(
        conn,
        f"""
        SELECT {_AIRCRAFT_COLUMNS}
        FROM aircraft a {_LATEST_FIX}
        WHERE a.tracked AND a.lat IS NOT NULL AND a.lon IS NOT NULL AND {where}
          AND (%(seen_after)s::timestamptz IS NULL OR a.last_fix_at >= %(seen_after)s)
        ORDER BY a.last_fix_at DESC NULLS LAST
        LIMIT %(limit)s
        """,
        {"west": west, "south": south, "east": east, "north": north, "limit": limit,
         "seen_after": seen_after},
    )


def aircraft_by_id(conn: Conn, aircraft_id: int) -> Row | None:
    return _one(
        conn,
        f"SELECT {_AIRCRAFT_COLUMNS} FROM aircraft a {_LATEST_FIX} "
        "WHERE a.id = %(id)s AND a.tracked",
        {"id": aircraft_id},
    )


def aircraft_is_hidden(conn: Conn, aircraft_id: int) -> bool:
    """True when the aircraft exists and must not be shown (tracked = false)."""
    row = _one(conn, "SELECT tracked FROM aircraft WHERE id = %(id)s", {"id": aircraft_id})
    return row is not None and not row["tracked"]


def aircraft_fixes(
    conn: Conn,
    aircraft_id: int,
    since: dt.datetime | None,
    until: dt.datetime | None,
    after: tuple[dt.datetime, dt.datetime] | None,
    limit: int,
) -> list[Row]:
    """Fixes whose own time is in [since, until), in own-time order, strictly after the keyset
    `after` = (time, received_at) of the last fix of the previous page."""
    after_time, after_received = after if after is not None else (None, None)
    return _all(
        conn,
        f"""
        SELECT {_FIX_COLUMNS}
        FROM fixes
        WHERE aircraft_id = %(id)s
          AND (%(since)s::timestamptz IS NULL OR {FIX_TIME} >= %(since)s)
          AND (%(until)s::timestamptz IS NULL OR {FIX_TIME} < %(until)s)
          AND (%(after)s::timestamptz IS NULL
               OR ({FIX_TIME}, received_at) > (%(after)s, %(after_received)s))
          AND NOT EXISTS (SELECT 1 FROM aircraft a WHERE a.id = %(id)s AND NOT a.tracked)
        ORDER BY {FIX_TIME}, received_at
        LIMIT %(limit)s
        """,
        {"id": aircraft_id, "since": since, "until": until, "after": after_time,
         "after_received": after_received, "limit": limit},
    )


def aircraft_flights(conn: Conn, aircraft_id: int, limit: int) -> list[Row]:
    return _all(
        conn,
        f"""
        SELECT {_FLIGHT_COLUMNS} {_FLIGHT_FROM}
        WHERE fl.aircraft_id = %(id)s AND a.tracked IS NOT FALSE
        ORDER BY fl.started_at DESC
        LIMIT %(limit)s
        """,
        {"id": aircraft_id, "limit": limit},
    )


def current_flight(conn: Conn, aircraft_id: int) -> Row | None:
    return _one(
        conn,
        f"""
        SELECT {_FLIGHT_COLUMNS} {_FLIGHT_FROM}
        WHERE fl.aircraft_id = %(id)s AND a.tracked IS NOT FALSE
          AND fl.landing_at IS NULL AND fl.timed_out_at IS NULL AND fl.end_reason IS NULL
        """,
        {"id": aircraft_id},
    )


def aircraft_directory(conn: Conn) -> list[Row]:
    """Aircraft the live hub must treat specially: hidden ones and identified ones."""
    return _all(
        conn,
        """
        SELECT id, tracked, identified AND NOT stealth AS identified, registration, competition_number, model, category
        FROM aircraft
        WHERE NOT tracked OR (identified AND NOT stealth)
        """,
        {},
    )


# -- flights --------------------------------------------------------------------------------


def flights_on_day(
    conn: Conn, day: dt.date, airport: str | None, include_spurious: bool, limit: int
) -> list[Row]:
    """Flights that started on the UTC day, optionally at one airport (either end)."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return _all(
        conn,
        f"""
        SELECT {_FLIGHT_COLUMNS} {_FLIGHT_FROM}
        WHERE fl.started_at >= %(start)s AND fl.started_at < %(end)s
          AND a.tracked IS NOT FALSE
          AND (%(airport)s::text IS NULL
               OR fl.departure_airport = %(airport)s OR fl.arrival_airport = %(airport)s)
          AND (%(spurious)s OR fl.spurious_reason IS NULL)
        ORDER BY fl.started_at, fl.id
        LIMIT %(limit)s
        """,
        {"start": start, "end": start + dt.timedelta(days=1), "airport": airport,
         "spurious": include_spurious, "limit": limit},
    )


def flight_by_id(conn: Conn, flight_id: uuid.UUID) -> Row | None:
    return _one(
        conn,
        f"SELECT {_FLIGHT_COLUMNS} {_FLIGHT_FROM} "
        "WHERE fl.id = %(id)s AND a.tracked IS NOT FALSE",
        {"id": flight_id},
    )


def flight_track(conn: Conn, flight: Row, limit: int) -> list[Row]:
    """The flight's fixes: its aircraft between its first and last fix (one flight at a time),
    in the order of their own times (late fixes in their place)."""
    return _all(
        conn,
        f"""
        SELECT {FIX_TIME} AS time, received_at, lat, lon, altitude_ft, agl_ft, ground_speed_kt,
               track_deg, climb_fpm
        FROM fixes
        WHERE aircraft_id = %(aircraft)s
          AND {FIX_TIME} >= %(first)s AND {FIX_TIME} <= %(last)s
        ORDER BY {FIX_TIME}, received_at
        LIMIT %(limit)s
        """,
        {"aircraft": flight["aircraft_id"], "first": flight["first_fix_at"],
         "last": flight["last_fix_at"], "limit": limit},
    )


# -- receivers ------------------------------------------------------------------------------

_RECEIVER_COLUMNS = """
    r.name, r.lat, r.lon, r.altitude_ft, r.first_seen_at, r.latest_packet_at,
    s.received_at AS status_at, s.version, s.platform, s.cpu_load, s.ram_free_mb,
    s.ram_total_mb, s.ntp_offset_ms, s.ntp_ppm, s.temperature_c, s.rf_correction_ppm, s.senders
"""

_LATEST_STATUS = """
    LEFT JOIN LATERAL (
        SELECT * FROM receiver_statuses rs
        WHERE rs.name = r.name ORDER BY rs.received_at DESC LIMIT 1
    ) s ON true
"""


def receivers(conn: Conn, with_position_only: bool, limit: int) -> list[Row]:
    return _all(
        conn,
        f"""
        SELECT {_RECEIVER_COLUMNS}
        FROM receivers r {_LATEST_STATUS}
        WHERE NOT %(positioned)s OR (r.lat IS NOT NULL AND r.lon IS NOT NULL)
        ORDER BY r.name
        LIMIT %(limit)s
        """,
        {"positioned": with_position_only, "limit": limit},
    )


def receiver_by_name(conn: Conn, name: str) -> Row | None:
    return _one(
        conn,
        f"SELECT {_RECEIVER_COLUMNS} FROM receivers r {_LATEST_STATUS} WHERE r.name = %(name)s",
        {"name": name},
    )


def receiver_statuses(conn: Conn, name: str, limit: int) -> list[Row]:
    return _all(
        conn,
        """
        SELECT received_at, version, platform, cpu_load, ram_free_mb, ram_total_mb,
               ntp_offset_ms, ntp_ppm, temperature_c, rf_correction_ppm, senders
        FROM receiver_statuses WHERE name = %(name)s
        ORDER BY received_at DESC LIMIT %(limit)s
        """,
        {"name": name, "limit": limit},
    )
