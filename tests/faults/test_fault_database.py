"""Database faults in the middle of a replay: PostgreSQL stopped for 30 s; the writer's
connections terminated again and again. Afterwards every fix is stored exactly once."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import psycopg
import pytest
import trio

from soar.pipeline import Pipeline
from soar.records import Protocol
from soar.store.embedded import EmbeddedPostgres
from soar.store.writer import RETRIES
from tests.faults.faultkit import (
    Corpus,
    Reference,
    assert_same_as_reference,
    fault_settings,
    replay_capture,
    stored,
    wait_for,
)

OUTAGE_S = 30.0
ROUNDS = 6


def _retries() -> float:
    return sum(s.value for m in RETRIES.collect() for s in m.samples if s.name.endswith("_total"))


@pytest.mark.time_limit(300)  # a 30 s outage, then the whole capture, on a busy machine
async def test_postgresql_stopped_for_30_s_mid_replay(
    corpus: Corpus, reference: Reference, db_url: str, pg_server: EmbeddedPostgres, tmp_path: Path
) -> None:
    capture = corpus[Protocol.SBS]
    record: dict[str, object] = {}
    readiness: list[bool] = []
    spooled: list[int] = []
    retries_before = _retries()

    async def outage(pipeline: Pipeline) -> None:
        await wait_for(lambda: pipeline.committed["fixes"] > 0, 60, "the first commit")
        record["ready_before"] = pipeline.database_ready()
        await trio.to_thread.run_sync(pg_server.pause)
        stopped = trio.current_time()
        # A commit the server finished while it was shutting down is acknowledged just after
        # pause() returns (the answer hops back from the worker thread): count from the moment
        # the fixes writer has seen the outage and has no batch in flight.
        fixes = pipeline.writers["fixes"]
        await wait_for(
            lambda: not fixes.healthy and fixes._batches_sent == fixes._batches_settled,
            60, "the fixes writer to see the outage",
        )
        committed_at_stop = pipeline.committed["fixes"]
        try:
            while trio.current_time() - stopped < OUTAGE_S:
                readiness.append(pipeline.database_ready())
                spooled.append(sum(w.spool.depth_records for w in pipeline.writers.values()))
                await trio.sleep(0.25)
            record["committed_during"] = pipeline.committed["fixes"] - committed_at_stop
            record["finished_during"] = pipeline._core_done.is_set()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pg_server.resume)
        await wait_for(pipeline.database_ready, 60, "the writers to see the database again")
        record["ready_after"] = True

    summary = await replay_capture(
        fault_settings(tmp_path / "var"), db_url, capture, during=outage
    )
    assert record["ready_before"] is True
    assert record["committed_during"] == 0, "nothing can commit with the database stopped"
    assert record["finished_during"] is False, "the replay waited for the database"
    # /readyz: not ready during the outage, ready again after it
    assert False in readiness, "database_ready() never reported the outage"
    assert readiness[-1] is False
    assert record.get("ready_after") is True
    assert max(spooled) > 0, "the writers spooled batches while the database was away"
    assert _retries() > retries_before
    assert summary["fixes"] >= len(reference.keys(Protocol.SBS))
    assert_same_as_reference(stored(db_url), reference, [Protocol.SBS])


def _committed_beyond(pipeline: Pipeline, count: int) -> bool:
    return pipeline.committed["fixes"] > count


def _terminate_others(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return sum(1 for (done,) in rows if done)


async def test_writer_connections_terminated_repeatedly_mid_stream(
    corpus: Corpus, reference: Reference, db_url: str, tmp_path: Path
) -> None:
    capture = corpus[Protocol.SBS]
    kills: list[tuple[int, int]] = []  # (connections terminated, fixes committed by then)
    retries_before = _retries()

    async def terminate(pipeline: Pipeline) -> None:
        # A burst of terminations, as an operator or a failover would cause, each once the
        # writer has recovered and committed more: the stream goes on between them.
        # (Terminating every connection every few ms for ever is an outage, tested above.)
        last = 0
        while sum(1 for count, _ in kills if count) < ROUNDS:
            await wait_for(partial(_committed_beyond, pipeline, last), 60, "commits to go on")
            last = pipeline.committed["fixes"]
            count = await trio.to_thread.run_sync(_terminate_others, db_url)
            kills.append((count, last))

    # small batches, so that there are many commits to terminate connections between
    summary = await replay_capture(
        fault_settings(tmp_path / "var", batch_rows=300), db_url, capture, during=terminate
    )
    rounds = [committed for count, committed in kills if count]
    assert len(rounds) == ROUNDS
    assert rounds == sorted(set(rounds)), "fixes were committed between terminations"
    assert rounds[-1] < len(reference.keys(Protocol.SBS)), "and before the last was committed"
    print(f"{sum(c for c, _ in kills)} connections terminated in {len(rounds)} rounds, "
          f"{_retries() - retries_before} writer retries")
    assert summary["fixes"] >= len(reference.keys(Protocol.SBS))
    assert_same_as_reference(stored(db_url), reference, [Protocol.SBS])
