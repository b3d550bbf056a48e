"""The database goes away mid-stream; every fix still arrives exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest
import trio

from soar.backoff import Backoff
from soar.records import Fix
from soar.store.embedded import EmbeddedPostgres
from soar.store.queries import count_fix_keys, fix_keys
from soar.store.tables import FixFamily
from soar.store.writer import STORE_UP, CommitReport, StoreWriter, open_pool

from .conftest import keys


def make_writer(url: str, spool_dir: Path, reports: list[CommitReport]) -> StoreWriter[Fix]:
    return StoreWriter(
        open_pool(url, size=2),
        FixFamily(),
        spool_dir=spool_dir,
        max_rows=500,
        max_age=0.05,
        backoff=Backoff(base=0.05, cap=0.5),
        connection_timeout=0.5,
        on_commit=reports.append,
    )


async def stream(
    writer: StoreWriter[Fix], fixes: Sequence[Fix], during: trio.Nursery, chunk: int = 200
) -> trio.MemorySendChannel[Fix]:
    send, receive = trio.open_memory_channel[Fix](chunk)
    during.start_soon(writer.run, receive)
    return send


async def check_exactly_once(url: str, fixes: Sequence[Fix], reports: list[CommitReport]) -> None:
    assert sum(r.rows for r in reports) == len(fixes)  # each acknowledged once
    with psycopg.connect(url) as conn:
        assert count_fix_keys(conn) == (len(fixes), len(fixes))
        assert fix_keys(conn) == keys(fixes)


async def _outage(
    db_url: str, pg: EmbeddedPostgres, fixes: list[Fix], spool_dir: Path, outage_s: float
) -> None:
    reports: list[CommitReport] = []
    writer = make_writer(db_url, spool_dir, reports)
    seen_down = False
    spooled_max = 0
    chunks = [fixes[i : i + 200] for i in range(0, len(fixes), 200)]
    try:
        async with trio.open_nursery() as nursery:
            send = await stream(writer, fixes, nursery)
            async with send:
                for number, chunk in enumerate(chunks):
                    if number == len(chunks) // 8:
                        await trio.to_thread.run_sync(pg.pause)
                        stopped_at = trio.current_time()
                    if number > len(chunks) // 8 and not pg.running:
                        seen_down |= not writer.healthy
                        spooled_max = max(spooled_max, writer.spool.depth_records)
                        if trio.current_time() - stopped_at >= outage_s:
                            await trio.to_thread.run_sync(pg.resume)
                    for fix in chunk:
                        await send.send(fix)
                    # pace the replay so the stream spans the outage
                    await trio.sleep(outage_s * 1.2 / len(chunks))
                if not pg.running:
                    await trio.to_thread.run_sync(pg.resume)
    finally:
        await trio.to_thread.run_sync(writer.pool.close)
    assert seen_down, "the writer never noticed the database was gone"
    assert spooled_max > 0, "nothing went through the spool"
    assert writer.healthy and writer.spool.depth_records == 0
    assert STORE_UP.labels("fixes")._value.get() == 1
    await check_exactly_once(db_url, fixes, reports)


async def test_database_stopped_mid_stream_loses_and_doubles_nothing(
    db_url: str, pg_server: EmbeddedPostgres, capture_fixes: list[Fix], spool_dir: Path
) -> None:
    await _outage(db_url, pg_server, capture_fixes, spool_dir, outage_s=3.0)


@pytest.mark.soak  # the same 30 s outage runs end to end in tests/faults; `make soak` runs this one
async def test_thirty_second_outage(
    db_url: str, pg_server: EmbeddedPostgres, capture_fixes: list[Fix], spool_dir: Path
) -> None:
    await _outage(db_url, pg_server, capture_fixes, spool_dir, outage_s=30.0)


async def test_writer_connections_terminated_mid_stream(
    db_url: str, capture_fixes: list[Fix], spool_dir: Path
) -> None:
    reports: list[CommitReport] = []
    writer = make_writer(db_url, spool_dir, reports)
    killed = 0

    def terminate_others() -> int:
        with psycopg.connect(db_url, autocommit=True) as conn:
            return sum(
                1
                for (done,) in conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                if done
            )

    try:
        async with trio.open_nursery() as nursery:
            send = await stream(writer, capture_fixes, nursery)
            async with send:
                # Terminate the writer's connections whenever it has committed again since the
                # last time (its pool reconnected and it went on): by commits, not by a cadence,
                # so a slow machine's reconnects cannot turn the kills into no-ops.
                reports_at_kill = 0
                for start in range(0, len(capture_fixes), 200):
                    if len(reports) > reports_at_kill and start >= 800:
                        terminated = await trio.to_thread.run_sync(terminate_others)
                        if terminated:
                            killed += 1
                            reports_at_kill = len(reports)
                    for fix in capture_fixes[start : start + 200]:
                        await send.send(fix)
                    await trio.sleep(0.01)
    finally:
        await trio.to_thread.run_sync(writer.pool.close)
    assert killed >= 3
    await check_exactly_once(db_url, capture_fixes, reports)


async def test_spool_left_by_a_stopped_writer_is_replayed_by_the_next(
    db_url: str, pg_server: EmbeddedPostgres, capture_fixes: list[Fix], spool_dir: Path
) -> None:
    fixes = capture_fixes[:3000]
    reports: list[CommitReport] = []
    await trio.to_thread.run_sync(pg_server.pause)
    first = make_writer(db_url, spool_dir, reports)
    try:
        async with trio.open_nursery() as nursery:
            send = await stream(first, fixes, nursery)
            async with send:
                for fix in fixes:
                    await send.send(fix)
            # Input closed; the writer would retry for ever. Once every fix is spooled, give
            # up on it (a shutdown with the database still down).
            with trio.fail_after(40):  # a hang guard, not a timing assertion
                while not (first.taken == len(fixes) and first.idle):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(first.pool.close)
    assert reports == []
    assert first.spool.depth_records > 0

    await trio.to_thread.run_sync(pg_server.resume)
    second = make_writer(db_url, spool_dir, reports)
    try:
        send, receive = trio.open_memory_channel[Fix](0)
        await send.aclose()
        await second.run(receive)
    finally:
        await trio.to_thread.run_sync(second.pool.close)
    assert second.spool.depth_records == 0
    await check_exactly_once(db_url, fixes, reports)
