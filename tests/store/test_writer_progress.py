"""StoreWriter.taken / .settled: an upstream may acknowledge the first `settled` items taken,
because they are committed or durably spooled, and only those."""

from __future__ import annotations

import dataclasses
import socket
import uuid
from pathlib import Path

import psycopg
import pytest
import trio
import trio.lowlevel

from soar.backoff import Backoff
from soar.records import Fix, FlightRow, Protocol
from soar.store.queries import fix_keys
from soar.store.tables import FixFamily, FlightFamily
from soar.store.writer import CommitReport, StoreWriter, open_pool
from tests.support import wait_for

from .conftest import keys


@pytest.fixture(scope="module")
def capture_fixes(capture_fixes: list[Fix]) -> list[Fix]:
    """The first 5,000 of the capture's fixes (tests/store/conftest.py) are enough here."""
    return capture_fixes[:5000]


def unreachable_url() -> str:
    """A PostgreSQL URL whose port refuses connections: the database is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://soar@127.0.0.1:{port}/soar"


async def test_items_settle_only_after_their_rows_commit(
    db_url: str, capture_fixes: list[Fix], spool_dir: Path
) -> None:
    # Singles, lists and empty lists: each is one item however many records it holds.
    items: list[Fix | list[Fix]] = []
    records_before: list[int] = []  # records in items[:i]
    sent: list[Fix] = []
    count = 0
    for i in range(0, len(capture_fixes), 7):
        records_before.append(count)
        chunk = capture_fixes[i : i + 7]
        items.append(chunk if i % 3 else chunk[0])
        sent.extend(chunk if i % 3 else chunk[:1])
        count = len(sent)
        if i % 70 == 0:
            records_before.append(count)
            items.append([])
    records_before.append(count)

    reports: list[CommitReport] = []
    pool = open_pool(db_url, size=2)
    writer: StoreWriter[Fix] = StoreWriter(
        pool, FixFamily(), spool_dir=spool_dir, max_rows=300, on_commit=reports.append
    )
    violations: list[str] = []
    settled_seen = [0]

    async def watch() -> None:
        # Checked at every pass of the scheduler: the invariant must hold at any moment.
        while True:
            taken, settled = writer.taken, writer.settled
            if not settled_seen[-1] <= settled <= taken:
                violations.append(f"settled {settled} after {settled_seen[-1]}, taken {taken}")
            committed = sum(r.rows for r in reports)
            if committed < records_before[settled]:
                violations.append(f"{settled} items settled, only {committed} rows committed")
            settled_seen.append(settled)
            await trio.lowlevel.checkpoint()

    try:
        send, receive = trio.open_memory_channel[Fix | list[Fix]](50)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as writing:
                writing.start_soon(writer.run, receive)
                async with send:
                    for item in items:
                        await send.send(item)
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(pool.close)

    assert violations == []
    assert writer.taken == writer.settled == len(items)
    assert writer.idle
    assert len(set(settled_seen)) > 3, "the watcher never saw progress between batches"
    with psycopg.connect(db_url) as conn:
        assert fix_keys(conn) == keys(sent)


async def test_coalesced_items_settle_with_their_batch(db_url: str, spool_dir: Path) -> None:
    first = FlightRow(uuid.uuid4(), 0x1_48683E, Protocol.OGN, 1_000_000, 2_000_000)
    updates = [
        dataclasses.replace(first, last_fix_us=t, fix_count=n)
        for n, t in enumerate(range(3_000_000, 9_000_000, 1_000_000), start=2)
    ]
    pool = open_pool(db_url, size=1)
    writer: StoreWriter[FlightRow] = StoreWriter(pool, FlightFamily(), spool_dir=spool_dir)
    try:
        send, receive = trio.open_memory_channel[FlightRow | list[FlightRow]](100)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, receive)
            async with send:
                for row in [first, *updates]:
                    await send.send(row)
    finally:
        await trio.to_thread.run_sync(pool.close)
    assert writer.taken == writer.settled == 1 + len(updates)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT fix_count FROM flights").fetchall() == [(updates[-1].fix_count,)]


async def test_with_the_database_down_settled_means_spooled(
    db_url: str, capture_fixes: list[Fix], spool_dir: Path
) -> None:
    """Database down and the spool full: the writer holds what it took and does not count it
    settled. The writer is then killed; a new one, with the database back, must store every
    item the first one called settled."""
    pool = open_pool(unreachable_url(), size=1)
    down: StoreWriter[Fix] = StoreWriter(
        pool,
        FixFamily(),
        spool_dir=spool_dir,
        max_rows=100,
        spool_max_bytes=40_000,
        backoff=Backoff(base=0.05, cap=0.2),
        connection_timeout=0.5,
    )
    try:
        send, receive = trio.open_memory_channel[Fix | list[Fix]](10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(down.run, receive)

            async def feed() -> None:
                for fix in capture_fixes:
                    await send.send(fix)

            nursery.start_soon(feed)
            await wait_for(lambda: down.stalled, 40, "the spool to fill")
            # The batcher keeps taking until its hand-off to the committer is full.
            await wait_for(lambda: down.taken > down.settled + 100, 40, "items held unsettled")
            settled = down.settled
            assert 0 < settled < down.taken < len(capture_fixes)
            assert not down.healthy
            nursery.cancel_scope.cancel()  # killed mid-outage
    finally:
        await trio.to_thread.run_sync(pool.close)

    pool = open_pool(db_url, size=1)
    up: StoreWriter[Fix] = StoreWriter(pool, FixFamily(), spool_dir=spool_dir)
    try:
        send, receive = trio.open_memory_channel[Fix | list[Fix]](1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(up.run, receive)
            await send.aclose()
    finally:
        await trio.to_thread.run_sync(pool.close)
    assert up.spool.depth_records == 0
    with psycopg.connect(db_url) as conn:
        stored = fix_keys(conn)
    assert keys(capture_fixes[:settled]) <= stored
