"""Every SQL statement of the JSON API (`/api`), in one place, parameterised only; the map's
page-private statements (`soar.web.map_api`) select the same public columns through its
`fetch_all` / `fetch_one`.

Functions take a sync psycopg connection (the API calls them in a worker thread through
`trio.to_thread.run_sync`) and return plain dicts. Privacy is enforced here, in SQL:

* `tracked = false`: filtered out of every statement.
* `identified = false`: registration, competition number and model are NULL
  (`AIRCRAFT_PUBLIC`).
* `stealth` (the beacon's stealth bit, or set in the device table): no identity at all. The
  aircraft is not listed, not found by id, address or registration; its flights are listed
  with the flight's own (random) id only: `aircraft_id`, callsign and identity NULL, and as a
  tow plane its id and registration NULL too. `soar.web.api` blanks the same fields again
  from the `stealth` / `tow_stealth` columns: two independent guards.

An aircraft without a row in `aircraft` is treated as tracked, unidentified and not stealth.

A fix's `time` is its own time (when the aircraft was there), `coalesce(time, received_at)`
for rows written before it was stored (`soar.store.queries.FIX_TIME`, the expression the
index `fixes_by_time` is built on); `received_at` is returned beside it. Fixes are listed in
own-time order, and `aircraft.last_fix_at` and the flights' times are own times too.

May import: soar.store, soar.tracking
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from soar.store.queries import FIX_TIME
from soar.tracking.launch import WINCH_WINDOW_S

Conn = psycopg.Connection[Any]
Row = dict[str, Any]

#: Public columns of an aircraft `a` (LEFT JOINed: every column may be NULL); the map's
#: statements (`soar.web.map_api`) select the same.
AIRCRAFT_PUBLIC = """
    CASE WHEN a.identified AND NOT a.stealth THEN a.registration END AS registration,
    CASE WHEN a.identified AND NOT a.stealth THEN a.competition_number END AS competition_number,
    CASE WHEN a.identified AND NOT a.stealth THEN a.model END AS model,
    a.aircraft_type, a.category, a.device_type
"""

_AIRCRAFT_COLUMNS = f"""
    a.id, a.address_type, a.address, a.protocol, {AIRCRAFT_PUBLIC},
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
    fl.id, fl.started_at,
    CASE WHEN a.stealth IS TRUE THEN NULL ELSE fl.aircraft_id END AS aircraft_id,
    a.stealth IS TRUE AS stealth,
    (tow.tracked IS FALSE OR tow.stealth IS TRUE) AS tow_stealth,
    fl.protocol, fl.first_fix_at, fl.last_fix_at, fl.takeoff_at,
    fl.landing_at, fl.timed_out_at, fl.timeout_phase,
    CASE WHEN a.stealth IS TRUE THEN NULL ELSE fl.callsign END AS callsign,
    fl.departure_airport,
    fl.arrival_airport, fl.takeoff_runway, fl.landing_runway, fl.distance_m, fl.min_lat,
    fl.min_lon, fl.max_lat, fl.max_lon, fl.min_altitude_ft, fl.max_altitude_ft, fl.max_agl_ft,
    fl.fix_count, fl.spurious_reason,
    CASE WHEN tow.tracked IS FALSE OR tow.stealth IS TRUE THEN NULL
         ELSE fl.tow_aircraft_id END AS tow_aircraft_id,
    fl.tow_aircraft_id IS NOT NULL AS has_tow, fl.release_at,
    fl.release_altitude_ft, fl.release_height_ft, fl.end_reason,
    {AIRCRAFT_PUBLIC},
    CASE WHEN tow.tracked AND tow.identified AND NOT tow.stealth THEN tow.registration
    END AS tow_registration,
    CASE WHEN tow.tracked AND tow.identified AND NOT tow.stealth THEN tow.competition_number
    END AS tow_competition_number,
    lc.early_climb_fpm,
    EXISTS (
        SELECT 1 FROM flights g
        WHERE g.tow_aircraft_id = fl.aircraft_id
          AND g.release_at >= fl.first_fix_at AND g.release_at <= fl.last_fix_at
          AND g.started_at >= fl.started_at - interval '1 hour'
          AND g.started_at <= fl.last_fix_at
    ) AS tow_plane
"""

_FLIGHT_FROM = f"""
    FROM flights fl
    LEFT JOIN aircraft a ON a.id = fl.aircraft_id
    LEFT JOIN aircraft tow ON tow.id = fl.tow_aircraft_id
    LEFT JOIN LATERAL (
        SELECT max(fx.climb_fpm) AS early_climb_fpm
        FROM fixes fx
        WHERE fx.aircraft_id = fl.aircraft_id
          AND {FIX_TIME} >= fl.takeoff_at
          AND {FIX_TIME} <= fl.takeoff_at + interval '{WINCH_WINDOW_S:g} seconds'
          -- bounds on the partition key, so only a day or two of partitions is searched: a
          -- fix is never received more than 10 s before its own time (it is rejected), and
          -- one delivered a day late does not decide a launch
          AND fx.received_at >= fl.takeoff_at - interval '10 seconds'
          AND fx.received_at < fl.takeoff_at + interval '1 day'
    ) lc ON fl.takeoff_at IS NOT NULL
"""

#: Keyset order of flight lists: (started_at, id); a cursor is the last row's pair.
FlightKey = tuple[dt.datetime, uuid.UUID]

_FIX_COLUMNS = f"""
    {FIX_TIME} AS time, received_at, lat, lon, altitude_ft, agl_ft, ground_speed_kt, track_deg,
    climb_fpm, turn_rate, callsign, squawk, flight_id, receiver, protocol, is_active, on_ground
"""


def fetch_all(conn: Conn, query: str, params: dict[str, Any]) -> list[Row]:
    """Every row of a parameterised statement, as dicts (the map's data routes use it too)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def fetch_one(conn: Conn, query: str, params: dict[str, Any]) -> Row | None:
    """The first row of a parameterised statement, or None."""
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
    return fetch_all(
        conn,
        f"""
        SELECT {_AIRCRAFT_COLUMNS}
        FROM aircraft a {_LATEST_FIX}
        WHERE a.tracked AND NOT a.stealth AND a.lat IS NOT NULL AND a.lon IS NOT NULL
          AND {where}
          AND (%(seen_after)s::timestamptz IS NULL OR a.last_fix_at >= %(seen_after)s)
        ORDER BY a.last_fix_at DESC NULLS LAST
        LIMIT %(limit)s
        """,
        {"west": west, "south": south, "east": east, "north": north, "limit": limit,
         "seen_after": seen_after},
    )


def aircraft_by_id(conn: Conn, aircraft_id: int) -> Row | None:
    return fetch_one(
        conn,
        f"SELECT {_AIRCRAFT_COLUMNS} FROM aircraft a {_LATEST_FIX} "
        "WHERE a.id = %(id)s AND a.tracked AND NOT a.stealth",
        {"id": aircraft_id},
    )


def aircraft_by_address(conn: Conn, address: int, limit: int) -> list[Row]:
    """Every address type's aircraft with this 24-bit address (ICAO and FLARM may share one)."""
    return fetch_all(
        conn,
        f"SELECT {_AIRCRAFT_COLUMNS} FROM aircraft a {_LATEST_FIX} "
        "WHERE a.address = %(address)s AND a.tracked AND NOT a.stealth "
        "ORDER BY a.last_fix_at DESC NULLS LAST, a.id LIMIT %(limit)s",
        {"address": address, "limit": limit},
    )


def aircraft_by_registration(conn: Conn, registration: str, limit: int) -> list[Row]:
    """Aircraft registered so, ignoring case; only those whose identity may be shown."""
    return fetch_all(
        conn,
        f"SELECT {_AIRCRAFT_COLUMNS} FROM aircraft a {_LATEST_FIX} "
        "WHERE upper(a.registration) = upper(%(registration)s) AND a.tracked"
        " AND a.identified AND NOT a.stealth "
        "ORDER BY a.last_fix_at DESC NULLS LAST, a.id LIMIT %(limit)s",
        {"registration": registration, "limit": limit},
    )


def aircraft_is_hidden(conn: Conn, aircraft_id: int) -> bool:
    """True when the aircraft exists and must not be shown by its id (not tracked, or stealth:
    the id holds the address)."""
    row = fetch_one(conn, "SELECT tracked, stealth FROM aircraft WHERE id = %(id)s",
                    {"id": aircraft_id})
    return row is not None and (not row["tracked"] or row["stealth"])


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
    return fetch_all(
        conn,
        f"""
        SELECT {_FIX_COLUMNS}
        FROM fixes
        WHERE aircraft_id = %(id)s
          AND (%(since)s::timestamptz IS NULL OR {FIX_TIME} >= %(since)s)
          AND (%(until)s::timestamptz IS NULL OR {FIX_TIME} < %(until)s)
          AND (%(after)s::timestamptz IS NULL
               OR ({FIX_TIME}, received_at) > (%(after)s, %(after_received)s))
          AND NOT EXISTS (SELECT 1 FROM aircraft a WHERE a.id = %(id)s
                          AND (NOT a.tracked OR a.stealth))
        ORDER BY {FIX_TIME}, received_at
        LIMIT %(limit)s
        """,
        {"id": aircraft_id, "since": since, "until": until, "after": after_time,
         "after_received": after_received, "limit": limit},
    )


def aircraft_flights(conn: Conn, aircraft_id: int, limit: int) -> list[Row]:
    """The aircraft's newest flights, newest first."""
    return aircraft_flights_page(conn, aircraft_id, None, limit)[0]


def aircraft_flights_page(
    conn: Conn, aircraft_id: int, before: FlightKey | None, limit: int
) -> tuple[list[Row], int]:
    """The aircraft's flights newest first, strictly before the keyset `before`, and how many
    it has in all."""
    where = ("fl.aircraft_id = %(id)s AND a.tracked IS NOT FALSE AND a.stealth IS NOT TRUE")
    before_t, before_id = before if before is not None else (None, None)
    rows = fetch_all(
        conn,
        f"""
        SELECT {_FLIGHT_COLUMNS} {_FLIGHT_FROM}
        WHERE {where}
          AND (%(before_t)s::timestamptz IS NULL
               OR (fl.started_at, fl.id) < (%(before_t)s, %(before_id)s::uuid))
        ORDER BY fl.started_at DESC, fl.id DESC
        LIMIT %(limit)s
        """,
        {"id": aircraft_id, "limit": limit, "before_t": before_t, "before_id": before_id},
    )
    total = fetch_one(
        conn,
        f"SELECT count(*) AS n FROM flights fl LEFT JOIN aircraft a ON a.id = fl.aircraft_id "
        f"WHERE {where}",
        {"id": aircraft_id},
    )
    return rows, 0 if total is None else int(total["n"])


def current_flight(conn: Conn, aircraft_id: int) -> Row | None:
    return fetch_one(
        conn,
        f"""
        SELECT {_FLIGHT_COLUMNS} {_FLIGHT_FROM}
        WHERE fl.aircraft_id = %(id)s AND a.tracked IS NOT FALSE AND a.stealth IS NOT TRUE
          AND fl.landing_at IS NULL AND fl.timed_out_at IS NULL AND fl.end_reason IS NULL
        """,
        {"id": aircraft_id},
    )


def aircraft_directory(conn: Conn) -> list[Row]:
    """Aircraft the live hub must treat specially: hidden ones and identified ones."""
    return fetch_all(
        conn,
        """
        SELECT id, tracked, identified AND NOT stealth AS identified, registration, competition_number, model, category
        FROM aircraft
        WHERE NOT tracked OR (identified AND NOT stealth)
        """,
        {},
    )


# -- flights --------------------------------------------------------------------------------


_DAY_WHERE = """
    fl.started_at >= %(start)s AND fl.started_at < %(end)s
    AND a.tracked IS NOT FALSE
    AND (%(airport)s::text IS NULL
         OR fl.departure_airport = %(airport)s OR fl.arrival_airport = %(airport)s)
    AND (%(spurious)s OR fl.spurious_reason IS NULL)
"""


def flights_on_day(
    conn: Conn,
    start: dt.datetime,
    end: dt.datetime,
    airport: str | None,
    include_spurious: bool,
    after: FlightKey | None,
    limit: int,
) -> tuple[list[Row], int]:
    """Flights that started in [start, end) (a day in some time zone), optionally at one
    airport (either end), in (started_at, id) order strictly after the keyset `after`; and
    how many there are in all."""
    params: dict[str, Any] = {
        "start": start, "end": end, "airport": airport, "spurious": include_spurious,
        "limit": limit, "after_t": None if after is None else after[0],
        "after_id": None if after is None else after[1],
    }
    rows = fetch_all(
        conn,
        f"""
        SELECT {_FLIGHT_COLUMNS} {_FLIGHT_FROM}
        WHERE {_DAY_WHERE}
          AND (%(after_t)s::timestamptz IS NULL
               OR (fl.started_at, fl.id) > (%(after_t)s, %(after_id)s::uuid))
        ORDER BY fl.started_at, fl.id
        LIMIT %(limit)s
        """,
        params,
    )
    total = fetch_one(
        conn,
        f"SELECT count(*) AS n FROM flights fl LEFT JOIN aircraft a ON a.id = fl.aircraft_id "
        f"WHERE {_DAY_WHERE}",
        params,
    )
    return rows, 0 if total is None else int(total["n"])


def flight_by_id(conn: Conn, flight_id: uuid.UUID) -> Row | None:
    return fetch_one(
        conn,
        f"SELECT {_FLIGHT_COLUMNS} {_FLIGHT_FROM} "
        "WHERE fl.id = %(id)s AND a.tracked IS NOT FALSE",
        {"id": flight_id},
    )


def flight_track(conn: Conn, flight: Row, limit: int) -> list[Row]:
    """The flight's fixes: its aircraft between its first and last fix (one flight at a time),
    in the order of their own times (late fixes in their place). Found through the flight's
    id: the row the API holds has no aircraft id when the aircraft is stealth."""
    return fetch_all(
        conn,
        f"""
        SELECT {FIX_TIME} AS time, received_at, lat, lon, altitude_ft, agl_ft, ground_speed_kt,
               track_deg, climb_fpm
        FROM flights fl
        JOIN fixes ON fixes.aircraft_id = fl.aircraft_id
          AND {FIX_TIME} >= fl.first_fix_at AND {FIX_TIME} <= fl.last_fix_at
        WHERE fl.id = %(flight)s
        ORDER BY {FIX_TIME}, received_at
        LIMIT %(limit)s
        """,
        {"flight": flight["id"], "limit": limit},
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
    return fetch_all(
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
    return fetch_one(
        conn,
        f"SELECT {_RECEIVER_COLUMNS} FROM receivers r {_LATEST_STATUS} WHERE r.name = %(name)s",
        {"name": name},
    )


def receiver_statuses(conn: Conn, name: str, limit: int) -> list[Row]:
    return fetch_all(
        conn,
        """
        SELECT received_at, version, platform, cpu_load, ram_free_mb, ram_total_mb,
               ntp_offset_ms, ntp_ppm, temperature_c, rf_correction_ppm, senders
        FROM receiver_statuses WHERE name = %(name)s
        ORDER BY received_at DESC LIMIT %(limit)s
        """,
        {"name": name, "limit": limit},
    )
