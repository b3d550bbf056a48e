"""What the writer writes: per table, its staging columns and its idempotent merge statement.

Every batch goes `COPY … (FORMAT BINARY)` into a per-connection temporary staging table, then
one `INSERT … SELECT … ON CONFLICT …` moves it into the real table, so replaying a batch (after
an outage, or after a commit whose acknowledgement was lost) never writes a row twice.

Each *family* turns the records the tracking core emits into `TableBatch`es of plain tuples
(the order of `TableSpec.columns`), coalescing where the table keeps one row per key.

May import: soar.records, soar.timeconv
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from soar.records import (
    AircraftSeen,
    Fix,
    FlightRow,
    ReceiverRow,
    ReceiverStatusRow,
    ServerMessageRow,
)
from soar.timeconv import ts as ts  # exported from here too: the web's queries import it so
from soar.timeconv import ts_or_none

T_contra = TypeVar("T_contra", contravariant=True)

Row = tuple[Any, ...]

@dataclass(frozen=True, slots=True)
class TableSpec:
    table: str
    columns: tuple[tuple[str, str], ...]  # (name, PostgreSQL type for binary COPY)
    merge: str  # INSERT … SELECT … FROM {stage} ON CONFLICT …
    stamp_column: int  # index of the column whose time is the row's receive time
    # Plain inserts that skip duplicates (no upsert): a new batch may be COPYed straight in.
    insert_only: bool = False

    @property
    def stage(self) -> str:
        return f"soar_stage_{self.table}"

    @property
    def column_names(self) -> str:
        return ", ".join(name for name, _ in self.columns)

    @property
    def types(self) -> list[str]:
        return [kind for _, kind in self.columns]

    @property
    def create_stage_sql(self) -> str:
        cols = ", ".join(f"{name} {kind}" for name, kind in self.columns)
        return f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} ({cols}) ON COMMIT DELETE ROWS"

    @property
    def copy_sql(self) -> str:
        return f"COPY {self.stage} ({self.column_names}) FROM STDIN (FORMAT BINARY)"

    @property
    def merge_sql(self) -> str:
        return self.merge.format(stage=self.stage, cols=self.column_names)

    @property
    def direct_copy_sql(self) -> str:
        """COPY straight into the real table: the writer's fast path (a batch that conflicts falls
        back to staging + merge) and the store benchmark's baseline."""
        return f"COPY {self.table} ({self.column_names}) FROM STDIN (FORMAT BINARY)"


@dataclass(slots=True)
class TableBatch:
    """Rows for one table, ready to COPY; `stamps_us[i]` is row i's receive time."""

    table: str
    rows: list[Row]
    stamps_us: list[int]

    def split(self) -> tuple[TableBatch, TableBatch]:
        half = len(self.rows) // 2
        return (
            TableBatch(self.table, self.rows[:half], self.stamps_us[:half]),
            TableBatch(self.table, self.rows[half:], self.stamps_us[half:]),
        )


def _updates(columns: Sequence[tuple[str, str]], skip: set[str]) -> str:
    return ", ".join(f"{name} = excluded.{name}" for name, _ in columns if name not in skip)


FIX_COLUMNS: tuple[tuple[str, str], ...] = (
    ("received_at", "timestamptz"),
    ("aircraft_id", "int8"),
    ("lat", "float8"),
    ("lon", "float8"),
    ("altitude_ft", "float4"),
    ("agl_ft", "float4"),
    ("ground_speed_kt", "float4"),
    ("track_deg", "float4"),
    ("climb_fpm", "float4"),
    ("turn_rate", "float4"),
    ("callsign", "text"),
    ("squawk", "text"),
    ("flight_id", "uuid"),
    ("receiver", "text"),
    ("protocol", "text"),
    ("is_active", "bool"),
    ("on_ground", "bool"),
    ("signal_db", "float4"),
    ("bit_errors", "int2"),
    ("freq_offset_khz", "float4"),
    ("packet_time", "text"),
    ("source", "text"),
    ("time", "timestamptz"),
)

FIXES = TableSpec(
    "fixes",
    FIX_COLUMNS,
    "INSERT INTO fixes ({cols}) SELECT {cols} FROM {stage}"
    " ON CONFLICT (aircraft_id, received_at) DO NOTHING",
    stamp_column=0,
    insert_only=True,
)

FIX_REVISION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("received_at", "timestamptz"),
    ("aircraft_id", "int8"),
    ("flight_id", "uuid"),
    ("is_active", "bool"),
)

# A stored fix that a late fix, merged before it, moved to another flight or made (in)active
# (`Fix.revision`): only those two columns change, and only on a row already there.
FIX_REVISIONS = TableSpec(
    "fix_revisions",
    FIX_REVISION_COLUMNS,
    "UPDATE fixes SET flight_id = s.flight_id, is_active = s.is_active FROM {stage} s"
    " WHERE fixes.aircraft_id = s.aircraft_id AND fixes.received_at = s.received_at"
    " AND (fixes.flight_id, fixes.is_active) IS DISTINCT FROM (s.flight_id, s.is_active)",
    stamp_column=0,
)

FLIGHT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "uuid"),
    ("aircraft_id", "int8"),
    ("protocol", "text"),
    ("first_fix_at", "timestamptz"),
    ("last_fix_at", "timestamptz"),
    ("takeoff_at", "timestamptz"),
    ("landing_at", "timestamptz"),
    ("timed_out_at", "timestamptz"),
    ("timeout_phase", "text"),
    ("callsign", "text"),
    ("departure_airport", "text"),
    ("arrival_airport", "text"),
    ("takeoff_runway", "text"),
    ("landing_runway", "text"),
    ("distance_m", "float8"),
    ("min_lat", "float8"),
    ("min_lon", "float8"),
    ("max_lat", "float8"),
    ("max_lon", "float8"),
    ("min_altitude_ft", "float4"),
    ("max_altitude_ft", "float4"),
    ("max_agl_ft", "float4"),
    ("fix_count", "int4"),
    ("spurious_reason", "text"),
    ("tow_aircraft_id", "int8"),
    ("release_at", "timestamptz"),
    ("release_altitude_ft", "float4"),
    ("release_height_ft", "float4"),
    ("end_reason", "text"),
    ("as_of", "timestamptz"),
)

FLIGHTS = TableSpec(
    "flights",
    FLIGHT_COLUMNS,
    # Closed flights first: a batch that closes an aircraft's flight and opens its next one
    # must not trip the one-open-flight-per-aircraft index on the way.
    "INSERT INTO flights ({cols}) SELECT {cols} FROM {stage}"
    " ORDER BY (landing_at IS NULL AND timed_out_at IS NULL AND end_reason IS NULL)"
    " ON CONFLICT (id) DO UPDATE SET " + _updates(FLIGHT_COLUMNS, {"id"}) + ", updated_at = now()"
    # a replayed older state never overwrites a newer one (rows from before 0003: last fix)
    " WHERE excluded.as_of >= coalesce(flights.as_of, flights.last_fix_at)",
    stamp_column=4,
)

AIRCRAFT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "int8"),
    ("address_type", "text"),
    ("address", "int4"),
    ("aircraft_type", "int2"),
    ("protocol", "text"),
    ("last_fix_at", "timestamptz"),
    ("lat", "float8"),
    ("lon", "float8"),
    ("altitude_ft", "float4"),
    ("callsign", "text"),
    ("stealth", "bool"),
    ("category", "text"),
    ("first_seen_at", "timestamptz"),
)

AIRCRAFT = TableSpec(
    "aircraft",
    AIRCRAFT_COLUMNS,
    "INSERT INTO aircraft ({cols}) SELECT {cols} FROM {stage}"
    " ON CONFLICT (id) DO UPDATE SET"
    " last_fix_at = excluded.last_fix_at, lat = excluded.lat, lon = excluded.lon,"
    " altitude_ft = excluded.altitude_ft, protocol = excluded.protocol,"
    " stealth = excluded.stealth,"
    " callsign = coalesce(excluded.callsign, aircraft.callsign),"
    " aircraft_type = coalesce(excluded.aircraft_type, aircraft.aircraft_type),"
    " category = coalesce(excluded.category, aircraft.category),"
    " first_seen_at = least(aircraft.first_seen_at, excluded.first_seen_at)"
    " WHERE aircraft.last_fix_at IS NULL OR excluded.last_fix_at >= aircraft.last_fix_at",
    stamp_column=5,
)

RECEIVER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "text"),
    ("lat", "float8"),
    ("lon", "float8"),
    ("altitude_ft", "float4"),
    ("first_seen_at", "timestamptz"),
    ("latest_packet_at", "timestamptz"),
)

RECEIVERS = TableSpec(
    "receivers",
    RECEIVER_COLUMNS,
    "INSERT INTO receivers ({cols}) SELECT {cols} FROM {stage}"
    " ON CONFLICT (name) DO UPDATE SET"
    " latest_packet_at = greatest(receivers.latest_packet_at, excluded.latest_packet_at),"
    " first_seen_at = least(receivers.first_seen_at, excluded.first_seen_at),"
    # a via-path sighting carries no position: keep the one we have
    " lat = coalesce(excluded.lat, receivers.lat),"
    " lon = coalesce(excluded.lon, receivers.lon),"
    " altitude_ft = coalesce(excluded.altitude_ft, receivers.altitude_ft)",
    stamp_column=5,
)

RECEIVER_STATUS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "text"),
    ("received_at", "timestamptz"),
    ("version", "text"),
    ("platform", "text"),
    ("cpu_load", "float4"),
    ("ram_free_mb", "float4"),
    ("ram_total_mb", "float4"),
    ("ntp_offset_ms", "float4"),
    ("ntp_ppm", "float4"),
    ("temperature_c", "float4"),
    ("rf_correction_ppm", "float4"),
    ("senders", "int4"),
    ("raw", "text"),
)

RECEIVER_STATUSES = TableSpec(
    "receiver_statuses",
    RECEIVER_STATUS_COLUMNS,
    "INSERT INTO receiver_statuses ({cols}) SELECT {cols} FROM {stage}"
    " ON CONFLICT (name, received_at) DO NOTHING",
    stamp_column=1,
    insert_only=True,
)

SERVER_MESSAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("received_at", "timestamptz"),
    ("source", "text"),
    ("text", "text"),
)

SERVER_MESSAGES = TableSpec(
    "server_messages",
    SERVER_MESSAGE_COLUMNS,
    "INSERT INTO server_messages ({cols}) SELECT {cols} FROM {stage}"
    " ON CONFLICT (source, received_at, md5(text)) DO NOTHING",
    stamp_column=0,
    insert_only=True,
)

SPECS: dict[str, TableSpec] = {
    spec.table: spec
    for spec in (
        FIXES, FIX_REVISIONS, FLIGHTS, AIRCRAFT, RECEIVERS, RECEIVER_STATUSES, SERVER_MESSAGES
    )
}


class Family(Protocol[T_contra]):
    """Turns one batch of records into rows for one or more tables."""

    name: str

    def prepare(self, items: Sequence[T_contra]) -> list[TableBatch]: ...


def fix_row(fix: Fix) -> Row:
    return (
        ts(fix.received_us),
        fix.aircraft_id,
        fix.lat,
        fix.lon,
        fix.altitude_ft,
        fix.agl_ft,
        fix.ground_speed_kt,
        fix.track_deg,
        fix.climb_fpm,
        fix.turn_rate,
        fix.callsign,
        fix.squawk,
        fix.flight_id,
        fix.receiver,
        fix.protocol.value,
        fix.is_active,
        fix.on_ground,
        fix.signal_db,
        fix.bit_errors,
        fix.freq_offset_khz,
        fix.packet_time,
        fix.source,
        ts(fix.time_us or fix.received_us),
    )


class FixFamily:
    name = "fixes"

    def prepare(self, items: Sequence[Fix]) -> list[TableBatch]:
        # Privacy: a no-track beacon is never stored (the tracking core should not send one;
        # this is the last line of defence, and the caller counts what was left out).
        # A revision of a fix first sent in the same batch is written with it, as it stands
        # now; other revisions update the rows already stored, after the inserts.
        kept: dict[tuple[int, int], Fix] = {}
        revised: dict[tuple[int, int], Fix] = {}
        for fix in items:
            if fix.no_track:
                continue
            key = (fix.aircraft_id, fix.received_us)
            if not fix.revision:
                kept.setdefault(key, fix)
            elif key in kept:
                kept[key] = fix
            else:
                revised[key] = fix
        fixes = list(kept.values())
        batches = [TableBatch("fixes", [fix_row(f) for f in fixes], [f.received_us for f in fixes])]
        if revised:
            batches.append(TableBatch(
                "fix_revisions",
                [(ts(f.received_us), f.aircraft_id, f.flight_id, f.is_active)
                 for f in revised.values()],
                [f.received_us for f in revised.values()],
            ))
        return batches


def flight_row(flight: FlightRow) -> Row:
    return (
        flight.id,
        flight.aircraft_id,
        flight.protocol.value,
        ts(flight.first_fix_us),
        ts(flight.last_fix_us),
        ts_or_none(flight.takeoff_us),
        ts_or_none(flight.landing_us),
        ts_or_none(flight.timed_out_us),
        None if flight.timeout_phase is None else flight.timeout_phase.value,
        flight.callsign,
        flight.departure_airport,
        flight.arrival_airport,
        flight.takeoff_runway,
        flight.landing_runway,
        flight.distance_m,
        flight.min_lat,
        flight.min_lon,
        flight.max_lat,
        flight.max_lon,
        flight.min_altitude_ft,
        flight.max_altitude_ft,
        flight.max_agl_ft,
        flight.fix_count,
        flight.spurious_reason,
        flight.tow_aircraft_id,
        ts_or_none(flight.release_us),
        flight.release_altitude_ft,
        flight.release_height_ft,
        flight.end_reason,
        ts(max(flight.as_of_us, flight.last_fix_us)),
    )


class FlightFamily:
    name = "flights"

    def prepare(self, items: Sequence[FlightRow]) -> list[TableBatch]:
        latest: dict[uuid.UUID, FlightRow] = {}
        for flight in items:
            latest.pop(flight.id, None)  # re-insert so order follows the last update
            latest[flight.id] = flight
        ordered = sorted(latest.values(), key=lambda f: f.is_open)  # stable: closed first
        return [
            TableBatch(
                "flights", [flight_row(f) for f in ordered], [f.last_fix_us for f in ordered]
            )
        ]


class AircraftFamily:
    name = "aircraft"

    def prepare(self, items: Sequence[AircraftSeen]) -> list[TableBatch]:
        latest: dict[int, AircraftSeen] = {}
        first: dict[int, int] = {}  # the earliest fix of each aircraft in the batch
        for seen in items:
            ident = seen.aircraft_id
            seen_at = seen.first_seen_us or seen.last_fix_us
            first[ident] = min(first.get(ident, seen_at), seen_at)
            known = latest.get(ident)
            if known is None or seen.last_fix_us >= known.last_fix_us:
                if known is not None:
                    # keep what the newer sighting does not say
                    if seen.callsign is None:
                        seen.callsign = known.callsign
                    if seen.aircraft_type is None:
                        seen.aircraft_type = known.aircraft_type
                    if seen.category is None:
                        seen.category = known.category
                latest[ident] = seen
        rows = [
            (
                s.aircraft_id,
                s.address_type.value,
                s.address,
                None if s.aircraft_type is None else int(s.aircraft_type),
                s.protocol.value,
                ts(s.last_fix_us),
                s.lat,
                s.lon,
                s.altitude_ft,
                s.callsign,
                s.stealth,
                s.category,
                ts(first[s.aircraft_id]),
            )
            for s in latest.values()
        ]
        return [TableBatch("aircraft", rows, [s.last_fix_us for s in latest.values()])]


ReceiverItem = ReceiverRow | ReceiverStatusRow | ServerMessageRow


@dataclass(slots=True)
class _ReceiverSeen:
    first_us: int
    last_us: int = 0
    position_us: int = -1
    lat: float | None = None
    lon: float | None = None
    altitude_ft: float | None = None

    def add(self, row: ReceiverRow) -> None:
        self.first_us = min(self.first_us, row.last_packet_us)
        self.last_us = max(self.last_us, row.last_packet_us)
        if row.lat is not None and row.lon is not None and row.last_packet_us >= self.position_us:
            self.position_us = row.last_packet_us
            self.lat, self.lon, self.altitude_ft = row.lat, row.lon, row.altitude_ft


class ReceiverFamily:
    """Receivers (coalesced per name), their status beacons and server messages."""

    name = "receivers"

    def prepare(self, items: Sequence[ReceiverItem]) -> list[TableBatch]:
        receivers: dict[str, _ReceiverSeen] = {}
        statuses: list[ReceiverStatusRow] = []
        messages: list[ServerMessageRow] = []
        for item in items:
            if isinstance(item, ReceiverRow):
                seen = receivers.get(item.name)
                if seen is None:
                    receivers[item.name] = seen = _ReceiverSeen(item.last_packet_us)
                seen.add(item)
            elif isinstance(item, ReceiverStatusRow):
                statuses.append(item)
            else:
                messages.append(item)
        batches: list[TableBatch] = []
        if receivers:
            batches.append(
                TableBatch(
                    "receivers",
                    [
                        (name, r.lat, r.lon, r.altitude_ft, ts(r.first_us), ts(r.last_us))
                        for name, r in receivers.items()
                    ],
                    [r.last_us for r in receivers.values()],
                )
            )
        if statuses:
            batches.append(
                TableBatch(
                    "receiver_statuses",
                    [
                        (
                            s.name,
                            ts(s.received_us),
                            s.version,
                            s.platform,
                            s.cpu_load,
                            s.ram_free_mb,
                            s.ram_total_mb,
                            s.ntp_offset_ms,
                            s.ntp_ppm,
                            s.temperature_c,
                            s.rf_correction_ppm,
                            s.senders,
                            s.raw,
                        )
                        for s in statuses
                    ],
                    [s.received_us for s in statuses],
                )
            )
        if messages:
            batches.append(
                TableBatch(
                    "server_messages",
                    [(ts(m.received_us), m.source, m.text) for m in messages],
                    [m.received_us for m in messages],
                )
            )
        return batches


#: Columns appended since the first release, per table, with the column whose value stands in
#: for them in a row spooled by an older version (None: NULL). New columns only ever go last,
#: so an older row is a prefix of today's.
_ADDED_COLUMNS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "fixes": (("time", "received_at"),),
    "flights": (("as_of", "last_fix_at"),),
    "aircraft": (("category", None), ("first_seen_at", "last_fix_at")),
}


def spooled_batch(table: str, rows: list[Row], stamps_us: list[int]) -> TableBatch:
    """A batch read back from an outage spool, its rows brought up to today's columns.

    A batch spooled by an older soar has fewer columns (the database was down across an
    upgrade): it is completed, not refused, so nothing spooled is lost to an upgrade.
    """
    spec = SPECS.get(table)
    if spec is None or not rows or all(len(row) == len(spec.columns) for row in rows):
        return TableBatch(table, rows, stamps_us)
    names = [name for name, _ in spec.columns]
    fill = dict(_ADDED_COLUMNS.get(table, ()))
    completed: list[Row] = []
    for row in rows:
        values = list(row)
        for name in names[len(values) :]:
            source = fill.get(name)
            values.append(None if source is None else values[names.index(source)])
        completed.append(tuple(values))
    return TableBatch(table, completed, stamps_us)
