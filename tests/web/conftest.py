"""Web test fixtures: the app served by hypercorn's trio worker on 127.0.0.1:0, real captures
turned into fixes, and one embedded PostgreSQL per session filled from those captures."""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from psycopg_pool import ConnectionPool

from soar.protocols import ogn, sbs
from soar.records import Fix, ReceiverRow, ReceiverStatusRow
from soar.store.embedded import TEST_SETTINGS, EmbeddedPostgres
from soar.store.migrate import migrate

#: The SBS capture has no receive times: give line i the time T0 + i ms (a 38 s replay).
SBS_T0_US = 1_771_945_056_000_000


def sbs_fixes(testdata: Path) -> list[Fix]:
    """Every fix the real SBS sample yields through the real parser and accumulator."""
    acc = sbs.SbsAccumulator()
    fixes: list[Fix] = []
    with gzip.open(testdata / "sbs" / "adsbhub-sbs-sample-20260224.txt.gz", "rt") as lines:
        for index, line in enumerate(lines):
            message = sbs.parse_line(line.rstrip("\n"))
            if isinstance(message, sbs.SbsMessage):
                fix = acc.feed(message, SBS_T0_US + index * 1000, source="test")
                if fix is not None:
                    fixes.append(fix)
    return fixes


@pytest.fixture(scope="session")
def sbs_sample_fixes(testdata: Path) -> list[Fix]:
    return sbs_fixes(testdata)


async def start_server(nursery: trio.Nursery, app: object) -> str:
    """Serve `app` on 127.0.0.1, an ephemeral port; returns "127.0.0.1:PORT"."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    binds: list[str] = await nursery.start(
        partial(serve, app, config, shutdown_trigger=trio.sleep_forever)  # type: ignore[arg-type]
    )
    return binds[0].split("://", 1)[1]


def chunks(items: list[Fix], size: int) -> Iterator[list[Fix]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- a database filled from the real OGN captures --------------------------------------------

OGN_TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"
#: valid_messages lines carry no receive time: they all get this one (2025-06-14 12:00 UTC).
VALID_MESSAGES_US = 1_749_902_400_000_000


@dataclass
class Dataset:
    """What the test database holds, computed from the captures without soar's queries."""

    fixes: list[Fix]
    trace_id: int  # the aircraft of the OGN trace (identified, registered)
    hidden_id: int  # tracked = false
    anonymous_id: int  # registration on file but identified = false
    flights: list[dict[str, Any]]
    receivers: list[ReceiverRow]
    statuses: list[ReceiverStatusRow]
    pool: Any = None

    def fixes_of(self, aircraft_id: int) -> list[Fix]:
        seen: dict[int, Fix] = {}
        for fix in self.fixes:
            if fix.aircraft_id == aircraft_id:
                seen.setdefault(fix.received_us, fix)  # the table keeps the first per µs
        return [seen[t] for t in sorted(seen)]


def _us_of(iso_text: str) -> int:
    moment = dt.datetime.fromisoformat(iso_text.replace("Z", "+00:00"))
    return round(moment.timestamp() * 1_000_000)


def load_captures(testdata: Path) -> tuple[list[Fix], list[ReceiverRow], list[ReceiverStatusRow]]:
    fixes: list[Fix] = []
    receivers: list[ReceiverRow] = []
    statuses: list[ReceiverStatusRow] = []
    for line in (testdata / OGN_TRACE).read_text().splitlines():
        stamp, _, aprs = line.partition(" ")
        record = ogn.parse_line(aprs)
        if isinstance(record, ogn.AircraftBeacon):
            fixes.append(ogn.to_fix(record, _us_of(stamp), "trace"))
    for path in sorted((testdata / "ogn" / "valid_messages").glob("*.txt")):
        for index, line in enumerate(path.read_text().splitlines()):
            if not line.strip() or line.startswith("#"):
                continue
            record = ogn.parse_line(line)
            at = VALID_MESSAGES_US + index * 1_000_000
            if isinstance(record, ogn.AircraftBeacon) and not record.no_track:
                fixes.append(ogn.to_fix(record, at, path.name))
            elif isinstance(record, ogn.ReceiverBeacon):
                receivers.append(ogn.receiver_row(record, at))
            elif isinstance(record, ogn.ReceiverStatus):
                statuses.append(ogn.receiver_status_row(record, at))
    return fixes, receivers, statuses


def _ts(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


def _split_at_longest_gap(fixes: list[Fix]) -> list[list[Fix]]:
    gaps = [b.received_us - a.received_us for a, b in itertools.pairwise(fixes)]
    cut = gaps.index(max(gaps)) + 1
    return [fixes[:cut], fixes[cut:]]


def fill_database(url: str, testdata: Path) -> Dataset:
    fixes, receivers, statuses = load_captures(testdata)
    trace_id = fixes[0].aircraft_id
    others = sorted({f.aircraft_id for f in fixes} - {trace_id})
    hidden_id, anonymous_id = others[0], others[1]
    latest: dict[int, Fix] = {}
    for fix in fixes:
        if fix.aircraft_id not in latest or fix.received_us >= latest[fix.aircraft_id].received_us:
            latest[fix.aircraft_id] = fix
    flights: list[dict[str, Any]] = []
    trace = sorted((f for f in fixes if f.aircraft_id == trace_id), key=lambda f: f.received_us)
    # The trace's two flights, split at its longest gap; airports are test metadata.
    for part, (dep, arr) in zip(
        _split_at_longest_gap(trace), [("EBBR", None), ("LEBL", "LEMD")], strict=True
    ):
        flights.append({"id": uuid.uuid4(), "aircraft_id": trace_id, "first": part[0].received_us,
                        "last": part[-1].received_us, "takeoff": part[0].received_us,
                        "landing": part[-1].received_us if arr else None,
                        "dep": dep, "arr": arr, "callsign": part[-1].callsign})
    for ident in (hidden_id, anonymous_id):
        own = sorted((f for f in fixes if f.aircraft_id == ident), key=lambda f: f.received_us)
        flights.append({"id": uuid.uuid4(), "aircraft_id": ident, "first": own[0].received_us,
                        "last": own[-1].received_us, "takeoff": own[0].received_us,
                        "landing": own[-1].received_us + 3_600_000_000, "dep": "LEBL",
                        "arr": "LEBL", "callsign": None})
    with psycopg.connect(url, autocommit=False) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO aircraft (id, address_type, address, registration, competition_number,"
            " model, aircraft_type, tracked, identified, protocol, last_fix_at, lat, lon,"
            " altitude_ft, callsign) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            [
                (ident, f.address_type.value, f.address,
                 {trace_id: "OO-TRC", anonymous_id: "D-SECRET", hidden_id: "D-HIDDEN"}.get(ident),
                 {trace_id: "TR", anonymous_id: "XX"}.get(ident),
                 {trace_id: "A320", anonymous_id: "ASK 21"}.get(ident),
                 None if f.aircraft_type is None else int(f.aircraft_type),
                 ident != hidden_id, ident != anonymous_id, f.protocol.value,
                 _ts(f.received_us), f.lat, f.lon, f.altitude_ft, f.callsign)
                for ident, f in latest.items()
            ],
        )
        cur.executemany(
            "INSERT INTO fixes (received_at, aircraft_id, lat, lon, altitude_ft, ground_speed_kt,"
            " track_deg, climb_fpm, callsign, receiver, protocol, source)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
            [
                (_ts(f.received_us), f.aircraft_id, f.lat, f.lon, f.altitude_ft,
                 f.ground_speed_kt, f.track_deg, f.climb_fpm, f.callsign, f.receiver,
                 f.protocol.value, f.source)
                for f in fixes
            ],
        )
        cur.executemany(
            "INSERT INTO flights (id, aircraft_id, protocol, first_fix_at, last_fix_at,"
            " takeoff_at, landing_at, callsign, departure_airport, arrival_airport,"
            " end_reason, fix_count) VALUES (%s,%s,'ogn',%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            [
                (fl["id"], fl["aircraft_id"], _ts(fl["first"]), _ts(fl["last"]),
                 _ts(fl["takeoff"]), None if fl["landing"] is None else _ts(fl["landing"]),
                 fl["callsign"], fl["dep"], fl["arr"],
                 "landed" if fl["landing"] else "timed_out", 0)
                for fl in flights
            ],
        )
        seen_receivers: dict[str, ReceiverRow] = {}
        for row in receivers:
            seen_receivers.setdefault(row.name, row)
        cur.executemany(
            "INSERT INTO receivers (name, lat, lon, altitude_ft, first_seen_at, latest_packet_at)"
            " VALUES (%s,%s,%s,%s,%s,%s)",
            [(r.name, r.lat, r.lon, r.altitude_ft, _ts(r.last_packet_us), _ts(r.last_packet_us))
             for r in seen_receivers.values()],
        )
        cur.executemany(
            "INSERT INTO receiver_statuses (name, received_at, version, platform, cpu_load,"
            " ram_free_mb, ram_total_mb, senders, raw) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
            " ON CONFLICT DO NOTHING",
            [(s.name, _ts(s.received_us), s.version, s.platform, s.cpu_load, s.ram_free_mb,
              s.ram_total_mb, s.senders, s.raw) for s in statuses],
        )
        conn.commit()
    return Dataset(fixes, trace_id, hidden_id, anonymous_id, flights,
                   list(seen_receivers.values()), statuses)


@pytest.fixture(scope="session")
def web_db(testdata: Path) -> Iterator[Dataset]:
    """One embedded PostgreSQL for the web tests, migrated and filled once (read-only tests)."""
    base = Path(tempfile.mkdtemp(prefix="soar-web-pg-"))
    server = EmbeddedPostgres(TEST_SETTINGS)
    try:
        url = server.start(base / "data")
        migrate(url)
        dataset = fill_database(url, testdata)
        dataset.pool = ConnectionPool(url, min_size=1, max_size=4, open=True)
        try:
            yield dataset
        finally:
            dataset.pool.close()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


async def get_json(client: Any, path: str, status: int = 200) -> Any:
    """The JSON body of GET `path` on a quart test client, which must answer `status`."""
    response = await client.get(path)
    body = await response.get_json()
    assert response.status_code == status, (path, body)
    return body
