"""The store writer against a real PostgreSQL, fed the real SBS capture."""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
import trio

from soar.backoff import Backoff
from soar.records import (
    AddressType,
    AircraftSeen,
    Fix,
    FlightRow,
    Protocol,
    ReceiverRow,
    ReceiverStatusRow,
    ServerMessageRow,
)
from soar.store.queries import count_fix_keys, count_rows, fix_keys
from soar.store.tables import AircraftFamily, Family, FixFamily, FlightFamily, ReceiverFamily
from soar.store.writer import ROWS_REJECTED, CommitReport, StoreWriter, open_pool

from .conftest import keys

T = TypeVar("T")


async def write_all(
    url: str,
    family: Family[T],
    items: Sequence[T],
    spool_dir: Path,
    *,
    max_rows: int = 5000,
    reports: list[CommitReport] | None = None,
) -> StoreWriter[T]:
    pool = open_pool(url, size=2)
    try:
        writer: StoreWriter[T] = StoreWriter(
            pool,
            family,
            spool_dir=spool_dir,
            max_rows=max_rows,
            backoff=Backoff(base=0.05, cap=0.5),
            on_commit=None if reports is None else reports.append,
        )
        send, receive = trio.open_memory_channel[T](1000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, receive)
            async with send:
                for item in items:
                    await send.send(item)
    finally:
        await trio.to_thread.run_sync(pool.close)
    return writer


async def test_writer_commits_a_replayed_capture_exactly(
    db_url: str, capture_fixes: list[Fix], spool_dir: Path
) -> None:
    reports: list[CommitReport] = []
    writer = await write_all(db_url, FixFamily(), capture_fixes, spool_dir, reports=reports)

    assert writer.healthy and writer.spool.depth_records == 0
    assert sum(r.rows for r in reports) == len(capture_fixes)
    assert all(r.committed_us >= max(r.stamps_us) for r in reports)
    with psycopg.connect(db_url) as conn:
        assert fix_keys(conn) == keys(capture_fixes)
        sample = capture_fixes[len(capture_fixes) // 2]
        row = conn.execute(
            "SELECT lat, lon, altitude_ft, callsign, protocol, source FROM fixes"
            " WHERE aircraft_id = %s AND received_at = to_timestamp(%s::numeric / 1e6)",
            (sample.aircraft_id, sample.received_us),
        ).fetchone()
    assert row == (
        sample.lat,
        sample.lon,
        sample.altitude_ft,
        sample.callsign,
        "sbs",
        "adsbhub",
    )


async def test_same_batch_twice_stores_each_fix_once(
    db_url: str, capture_fixes: list[Fix], spool_dir: Path
) -> None:
    batch = capture_fixes[:3000]
    first: list[CommitReport] = []
    second: list[CommitReport] = []
    await write_all(db_url, FixFamily(), batch, spool_dir, reports=first)
    await write_all(db_url, FixFamily(), batch, spool_dir, reports=second)

    assert sum(r.inserted for r in first) == len(batch)
    assert sum(r.inserted for r in second) == 0
    assert sum(r.rows for r in second) == len(batch)  # acknowledged, not lost
    with psycopg.connect(db_url) as conn:
        assert count_fix_keys(conn) == (len(batch), len(batch))


async def test_poison_rows_are_isolated_and_the_rest_commits(
    db_url: str, capture_fixes: list[Fix], spool_dir: Path
) -> None:
    batch = [dataclasses.replace(f) for f in capture_fixes[:2000]]
    poisoned = {17: "nan", 1001: "nul", 1999: "range"}
    batch[17].lat = math.nan  # violates CHECK (lat BETWEEN -90 AND 90)
    batch[1001].callsign = "BAD\x00"  # PostgreSQL text cannot hold NUL
    batch[1999].lon = 181.0
    rejected_before = ROWS_REJECTED.labels("fixes")._value.get()

    reports: list[CommitReport] = []
    writer = await write_all(db_url, FixFamily(), batch, spool_dir, reports=reports)

    good = [f for i, f in enumerate(batch) if i not in poisoned]
    assert ROWS_REJECTED.labels("fixes")._value.get() - rejected_before == len(poisoned)
    assert sum(r.rows for r in reports) == len(good)
    assert writer.healthy
    with psycopg.connect(db_url) as conn:
        assert fix_keys(conn) == keys(good)


async def test_flights_coalesce_and_close_before_the_next_opens(
    db_url: str, spool_dir: Path
) -> None:
    aircraft = 0x1_48683E
    first = FlightRow(uuid.uuid4(), aircraft, Protocol.OGN, 1_000_000, 2_000_000)
    updates = [
        dataclasses.replace(first, last_fix_us=t, fix_count=n)
        for n, t in enumerate(range(3_000_000, 9_000_000, 1_000_000), start=2)
    ]
    closed = dataclasses.replace(updates[-1], landing_us=9_000_000, end_reason="landed")
    second = FlightRow(uuid.uuid4(), aircraft, Protocol.OGN, 20_000_000, 21_000_000)
    # The second flight opens in the same batch as the first one closes.
    await write_all(db_url, FlightFamily(), [first, *updates, second, closed], spool_dir)

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT id, fix_count, landing_at IS NOT NULL, end_reason FROM flights"
            " ORDER BY first_fix_at"
        ).fetchall()
    assert rows == [(first.id, closed.fix_count, True, "landed"), (second.id, 0, False, None)]


async def test_a_second_open_flight_for_one_aircraft_is_rejected(
    db_url: str, spool_dir: Path
) -> None:
    one = FlightRow(uuid.uuid4(), 42, Protocol.SBS, 1_000_000, 2_000_000)
    two = FlightRow(uuid.uuid4(), 42, Protocol.SBS, 3_000_000, 4_000_000)
    other = FlightRow(uuid.uuid4(), 43, Protocol.SBS, 3_000_000, 4_000_000)
    await write_all(db_url, FlightFamily(), [one, two, other], spool_dir)
    with psycopg.connect(db_url) as conn:
        ids = {r[0] for r in conn.execute("SELECT id FROM flights")}
    assert ids == {one.id, other.id}


async def test_aircraft_are_upserted_latest_position_wins(
    db_url: str, capture_fixes: list[Fix], spool_dir: Path
) -> None:
    seen = [
        AircraftSeen(
            f.aircraft_id,
            f.address_type,
            f.address,
            f.received_us,
            f.lat,
            f.lon,
            f.altitude_ft,
            None,
            f.callsign,
            f.protocol,
        )
        for f in capture_fixes
    ]
    await write_all(db_url, AircraftFamily(), seen, spool_dir, max_rows=1000)
    latest: dict[int, AircraftSeen] = {}
    for s in seen:
        latest[s.aircraft_id] = s  # the capture is in receive order
    with psycopg.connect(db_url) as conn:
        assert count_rows(conn, "aircraft") == len(latest)
        stored = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, lat, lon FROM aircraft")}
    assert stored == {a: (s.lat, s.lon) for a, s in latest.items()}
    some = next(iter(latest.values()))
    assert some.address_type is AddressType.ICAO


async def test_receivers_statuses_and_server_messages(db_url: str, spool_dir: Path) -> None:
    items = [
        ReceiverRow("EBKT", 1_000_000),  # seen in a via path first: no position
        ReceiverRow("EBKT", 5_000_000, 50.9, 3.1, 60.0),
        ReceiverRow("EBKT", 3_000_000),
        ReceiverRow("PA5MN", 2_000_000, 51.6, 4.9, None),
        ReceiverStatusRow("EBKT", 4_000_000, version="0.2.8", cpu_load=0.3, raw="status"),
        ReceiverStatusRow("EBKT", 4_000_000, version="0.2.8", cpu_load=0.3, raw="status"),
        ServerMessageRow(6_000_000, "aprs.glidernet.org", "# aprsc 2.1.19"),
    ]
    await write_all(db_url, ReceiverFamily(), items, spool_dir)
    await write_all(db_url, ReceiverFamily(), [ReceiverRow("EBKT", 2_000_000)], spool_dir)
    with psycopg.connect(db_url) as conn:
        receivers = conn.execute(
            "SELECT name, lat, lon, extract(epoch FROM first_seen_at),"
            " extract(epoch FROM latest_packet_at) FROM receivers ORDER BY name"
        ).fetchall()
        assert count_rows(conn, "receiver_statuses") == 1
        assert count_rows(conn, "server_messages") == 1
    assert [(n, lat, lon, float(a), float(b)) for n, lat, lon, a, b in receivers] == [
        ("EBKT", 50.9, 3.1, 1.0, 5.0),
        ("PA5MN", 51.6, 4.9, 2.0, 2.0),
    ]


def write_legacy_batch(directory: Path, seq: int, payload: bytes) -> Path:
    """A batch file as the writer's spool before the one disk FIFO wrote it."""
    import struct
    import zlib

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{seq:020d}.batch"
    path.write_bytes(struct.pack(">II", len(payload), zlib.crc32(payload)) + payload)
    return path


async def test_batches_spooled_by_an_older_version_are_completed_not_refused(
    capture_fixes: list[Fix], db_url: str, spool_dir: Path
) -> None:
    """The database was down across an upgrade: the outage spool holds rows with the columns
    of the version before (no own time for fixes, no as_of for flights), in the spool file
    format before the one disk FIFO. They are stored; a torn file is set aside and counted."""
    import pickle

    from prometheus_client import REGISTRY

    fixes = capture_fixes[:500]
    prepared = FixFamily().prepare(fixes)
    old = [(b.table, [row[:-1] for row in b.rows], b.stamps_us) for b in prepared]  # no `time`
    write_legacy_batch(spool_dir, 7, pickle.dumps(old))
    torn = write_legacy_batch(spool_dir, 8, pickle.dumps(old))
    torn.write_bytes(torn.read_bytes()[:-10])
    (spool_dir / "00000000000000000009.tmp").write_bytes(b"never finished")
    labels = {"spool": "store.fixes"}
    corrupt_before = REGISTRY.get_sample_value("soar_spool_corrupt_records_total", labels) or 0

    writer = await write_all(db_url, FixFamily(), [], spool_dir)
    assert writer.spool.depth_records == 0
    left = sorted(p.name for p in await trio.to_thread.run_sync(lambda: list(spool_dir.iterdir())))
    assert [name for name in left if ".batch" in name] == [torn.name + ".corrupt"]
    assert not [name for name in left if name.startswith("0") and name.endswith(".tmp")]
    corrupt = REGISTRY.get_sample_value("soar_spool_corrupt_records_total", labels) or 0
    assert corrupt - corrupt_before == 1
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT count(*), count(*) FILTER (WHERE time = received_at)"
                            " FROM fixes").fetchone()
    assert rows == (len(keys(fixes)), len(keys(fixes)))


async def test_an_undecodable_spooled_batch_is_counted_and_skipped(
    capture_fixes: list[Fix], db_url: str, spool_dir: Path
) -> None:
    import pickle

    from soar.spool import DiskSpool

    fixes = capture_fixes[:300]
    good = [(b.table, b.rows, b.stamps_us) for b in FixFamily().prepare(fixes)]
    with DiskSpool(spool_dir, 1 << 20) as spool:
        spool.append(b"\x80\x05not a pickle")  # intact frame, payload from nowhere
        spool.append(pickle.dumps(good))
    writer = await write_all(db_url, FixFamily(), [], spool_dir)
    assert writer.spool.depth_records == 0 and writer.spool.corrupt_records == 1
    with psycopg.connect(db_url) as conn:
        assert fix_keys(conn) == keys(fixes)


async def test_a_feed_of_bad_rows_logs_once_a_minute_not_once_a_row(
    db_url: str, capture_fixes: list[Fix], spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import structlog

    import soar.store.writer as writer_module
    from soar.log import RateLimited

    # a limiter of its own: an earlier test's refusals of the same kind do not count here
    monkeypatch.setattr(writer_module, "_REJECTED_LOG", RateLimited(writer_module.log))

    batch = [dataclasses.replace(f) for f in capture_fixes[:1000]]
    for fix in batch[::10]:  # 100 rows the database refuses, all for the same reason
        fix.lon = 181.0
    rejected_before = ROWS_REJECTED.labels("fixes")._value.get()
    with structlog.testing.capture_logs() as logs:
        await write_all(db_url, FixFamily(), batch, spool_dir)
    assert ROWS_REJECTED.labels("fixes")._value.get() - rejected_before == 100
    lines = [e for e in logs if e["event"] == "store.row_rejected"]
    assert 1 <= len(lines) <= 2, len(lines)  # one (two if a minute boundary fell in between)
