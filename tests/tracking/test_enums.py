"""Reasons and kinds are enums in the code and the same strings as before on disk, in JSON and
in metric labels."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
from prometheus_client import REGISTRY

from soar.records import EndReason
from soar.store.queries import open_flights
from soar.store.tables import FlightFamily
from soar.tracking.agl import AglCalculator
from soar.tracking.airports import default_index
from soar.tracking.flight import (
    DropReason,
    EnrichmentDue,
    EnrichmentKind,
    FixDropped,
    FlightClosed,
    FlightOpened,
    Opening,
)
from soar.tracking.shard import Shard
from soar.tracking.tow import PairState
from tests.support import ogn_trace_fixes, write_rows

from .helpers import Sinks, ids, run_shard

TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"


def test_the_values_are_the_strings_stored_before() -> None:
    assert [r.value for r in EndReason] == [
        "landed", "landed_out_of_coverage", "timed_out", "split_callsign", "split_gap",
        "superseded",
    ]
    assert [r.value for r in DropReason] == ["duplicate", "same_time_elsewhere", "thinned"]
    assert [o.value for o in Opening] == [
        "takeoff", "takeoff_out_of_coverage", "first_seen", "resumed"
    ]
    assert [k.value for k in EnrichmentKind] == ["takeoff", "landing"]
    assert [s.value for s in PairState] == ["candidate", "discarded", "released"]


async def test_a_real_trace_stores_and_serialises_the_same_strings(
    testdata: Path, db_url: str, tmp_path: Path
) -> None:
    shard = Shard(agl=AglCalculator(airports=default_index()), new_id=ids())
    before = REGISTRY.get_sample_value(
        "soar_flights_closed_total", {"reason": "landed_out_of_coverage"}
    ) or 0.0
    events = [e for f in ogn_trace_fixes(testdata / TRACE) for e in shard.process(f)]
    for state in shard.aircraft.values():  # the input ends: the landing's lookup is due
        events += state.track.flush_pending()
    opened = [e for e in events if isinstance(e, FlightOpened)]
    closed = [e for e in events if isinstance(e, FlightClosed)]
    dropped = {e.reason for e in events if isinstance(e, FixDropped)}
    kinds = {e.kind for e in events if isinstance(e, EnrichmentDue)}
    assert [e.how for e in opened] == [
        Opening.FIRST_SEEN, Opening.TAKEOFF_OUT_OF_COVERAGE, Opening.RESUMED
    ]
    assert [e.reason for e in closed] == [
        EndReason.LANDED_OUT_OF_COVERAGE, EndReason.TIMED_OUT, EndReason.LANDED
    ]
    assert dropped == {DropReason.DUPLICATE} and kinds == {EnrichmentKind.LANDING}
    assert json.dumps([e.how for e in opened]) == (
        '["first_seen", "takeoff_out_of_coverage", "resumed"]'
    )

    await write_rows(db_url, FlightFamily(), [e.row for e in [*opened, *closed]], tmp_path)
    with psycopg.connect(db_url) as conn:
        stored = conn.execute(
            "SELECT end_reason, end_reason::text = %s FROM flights ORDER BY first_fix_at",
            ("landed_out_of_coverage",),
        ).fetchall()
        assert stored == [("landed_out_of_coverage", True), ("landed", False)]
        assert open_flights(conn) == []

    # a metric label is the value too (the shard counts when it emits)
    shard_events = Shard(agl=AglCalculator(airports=default_index()), new_id=ids())
    await run_shard(shard_events, ogn_trace_fixes(testdata / TRACE), Sinks())
    after = REGISTRY.get_sample_value(
        "soar_flights_closed_total", {"reason": "landed_out_of_coverage"}
    )
    assert after == before + 1
