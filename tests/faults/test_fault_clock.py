"""A wall clock that jumped (issue 18, item 3): started with the clock ten years ahead and
`fixes_retention_days=90`, the start-up maintenance dropped every daily partition. Retention now
counts days by the data's clock and drops nothing while the wall clock is more than a day ahead
of the newest stored receive time.

The real OGN trace (two days, 2025-12-23 and 24) is replayed by a soar whose wall clock is the
capture's, so its fixes sit in their daily partitions as they would have live; then a live soar
starts with its wall clock injected (`Pipeline(wall_clock=...)`), ten years ahead."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import trio
from structlog.testing import capture_logs

from soar.config import Settings
from soar.pipeline import EnvelopeSink, Pipeline, SourceSpec
from soar.records import Protocol
from soar.replay import run_replay
from soar.store.partitions import (
    PARTITIONS_DROPPED,
    RETENTION_SKIPPED,
    existing_partitions,
    partition_name,
)
from soar.supervisor import RestartPolicy
from tests.faults.faultkit import Corpus, FixKey, fault_settings, stored, wait_for

TEN_YEARS = dt.timedelta(days=3653)


def _skipped() -> float:
    return RETENTION_SKIPPED.labels(reason="clock_ahead")._value.get()


def _dropped() -> float:
    return PARTITIONS_DROPPED._value.get()


def _partitions(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return existing_partitions(conn)


def _fixed(at: dt.datetime) -> Callable[[], dt.datetime]:
    return lambda: at


async def _live_soar(settings: Settings, url: str, clock: Callable[[], dt.datetime],
                     until: Callable[[], bool]) -> None:
    """A live soar (feeds idle) with `clock` as its wall clock, until `until()`, then drained."""

    async def idle(sink: EnvelopeSink) -> None:
        await trio.sleep_forever()

    pipeline = Pipeline(settings, url, [SourceSpec("idle", Protocol.OGN, idle, RestartPolicy.TEMPORARY)],
                        hold_open=True, wall_clock=clock)
    await pipeline.open()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pipeline.run)
            await wait_for(until, 60, "the partition maintenance run")
            await pipeline.drain()
            nursery.cancel_scope.cancel()
    finally:
        await pipeline.close()


@pytest.mark.time_limit(180)
async def test_wall_clock_ten_years_ahead_drops_no_day_of_fixes(
    corpus: Corpus, db_url: str, tmp_path: Path
) -> None:
    capture = corpus[Protocol.OGN]
    began = dt.datetime.fromtimestamp(capture.envelopes[0].received_us / 1e6, dt.UTC)
    days = {began.date(), began.date() + dt.timedelta(days=1)}

    # soar live at the time of the capture: its maintenance makes the capture's days
    await run_replay(fault_settings(tmp_path / "then", fixes_retention_days=90), db_url,
                     [capture.path], pipeline_hook=lambda p: setattr(p, "wall_clock", _fixed(began)))
    before = stored(db_url)
    keys: set[FixKey] = before.keys([Protocol.OGN])
    assert {key[1].date() for key in keys} == days, "the trace spans two days"
    with psycopg.connect(db_url) as conn:
        in_days = conn.execute(
            "SELECT count(*) FROM fixes_p20251223").fetchone(), conn.execute(
            "SELECT count(*) FROM fixes_p20251224").fetchone()
    assert sum(n[0] for n in in_days if n) == len(keys), "every fix in its daily partition"
    newest = max(at for _ident, at in keys)
    partitions_before = _partitions(db_url)
    assert {partition_name(d) for d in days} <= partitions_before

    # restarted with the wall clock ten years ahead, keeping 90 days
    ahead = newest + TEN_YEARS
    skipped, dropped = _skipped(), _dropped()
    with capture_logs() as logs:
        # until the maintenance has decided: skipped (or, were it wrong, dropped)
        await _live_soar(fault_settings(tmp_path / "ahead", fixes_retention_days=90), db_url,
                         _fixed(ahead), until=lambda: (_skipped(), _dropped()) != (skipped, dropped))
    assert stored(db_url).keys([Protocol.OGN]) == keys, "fixes were dropped"
    assert partitions_before <= _partitions(db_url)
    (warning,) = [e for e in logs if e["event"] == "retention.clock_ahead"]
    assert warning["wall_clock"] == ahead.isoformat()
    assert dt.datetime.fromisoformat(warning["newest_stored"]) == newest
    assert not [e for e in logs if e["event"] == "partitions.maintained" and e["dropped"]]

    # a clock the data agrees with: retention works, counting days from the newest fix; the
    # days before it are the capture's first and the day before (made as "yesterday")
    dropped = _dropped()
    await _live_soar(fault_settings(tmp_path / "later", fixes_retention_days=1), db_url,
                     _fixed(newest + dt.timedelta(hours=12)),
                     until=lambda: _dropped() >= dropped + 2)
    assert partition_name(min(days)) not in _partitions(db_url)
    assert stored(db_url).keys([Protocol.OGN]) == {k for k in keys if k[1].date() == max(days)}
