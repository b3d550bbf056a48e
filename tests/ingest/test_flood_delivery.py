"""A real backlog, delivered late and shuffled by a TCP server, through soar's APRS-IS client, the
pipeline and PostgreSQL: the flights stored are those of an on-time delivery (issue 15, point 2).

The Koenigsdorf flood (tests/tracking/flood.py): 211 beacons of 7 gliders that the receiver
delivered as a 5-minute backlog within 1.7 s. The test server sends them in a shuffled order, in
random chunks, right after the login; soar's client stamps them with a receive clock that starts
just after the real backlog arrived (2024-03-29 15:59:46). The reference is the same beacons
received on time (1 s after each was sent, in order) by a shard with the pipeline's own
configuration. Koenigsdorf is not in `airportsdata`: both get ogn-python's test airports, so
heights above the field are known (without them a glider thermalling at 24 kt would count as
on the ground, on time or not).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest
import trio

from soar.config import load_settings
from soar.ingest.aprs import AprsIsSource
from soar.ingest.tcp import EnvelopeSink
from soar.pipeline import Pipeline, SourceSpec
from soar.protocols.ogn import AircraftBeacon, parse_line, to_fix
from soar.records import Envelope, FlightRow, Protocol
from soar.store.queries import us
from soar.supervisor import RestartPolicy
from soar.tracking.agl import AglCalculator
from soar.tracking.airports import Airport, AirportIndex
from soar.tracking.enrichment import airport_enrich
from soar.tracking.flight import FixAccepted, FlightClosed, FlightOpened, FlightUpdated
from soar.tracking.shard import Shard
from tests.ingest.ingest_servers import APRSC_BANNER, FeedServer, crlf, replay
from tests.tracking.flood import LANDING_GLIDER, TAKEOFF_GLIDER, flood_beacons, koenigsdorf_airports

S = 1_000_000
RECEIVE_CLOCK_START = round(datetime(2024, 3, 29, 15, 59, 46, tzinfo=UTC).timestamp() * S)
FLIGHT = ("takeoff_at", "landing_at", "first_fix_at", "last_fix_at", "end_reason", "fix_count",
          "spurious_reason", "max_agl_ft")


def airports(testdata: Path) -> AirportIndex:
    return AirportIndex(Airport(name[:4].upper(), name, lat, lon, elevation)
                        for name, lat, lon, elevation in koenigsdorf_airports(testdata))


def _ft(feet: float | None) -> float | None:
    return None if feet is None else round(feet, 1)  # stored as real (float4)


class CountingSink:
    """Passes envelopes on; sets `done` once `expected` aircraft beacons have gone through."""

    def __init__(self, sink: EnvelopeSink, expected: int) -> None:
        self.sink = sink
        self.expected = expected
        self.beacons = 0
        self.done = trio.Event()

    async def send(self, envelope: Envelope, /) -> None:
        await self.sink.send(envelope)
        if not envelope.data.startswith(b"#"):
            self.beacons += 1
            if self.beacons == self.expected:
                self.done.set()


def on_time_reference(testdata: Path) -> dict[int, tuple[Any, ...]]:
    """Per aircraft: its flight as an on-time delivery through a shard like the pipeline's."""
    shard = Shard(agl=AglCalculator(airports=airports(testdata)))
    rows: dict[uuid.UUID, FlightRow] = {}
    for b in sorted(flood_beacons(testdata), key=lambda b: b.beacon_us):
        beacon = parse_line(b.line)
        assert isinstance(beacon, AircraftBeacon)
        for e in shard.process(to_fix(beacon, b.beacon_us + S, "on-time")):
            if isinstance(e, FlightOpened | FlightUpdated | FlightClosed):
                rows[e.row.id] = e.row
            elif isinstance(e, FixAccepted):
                assert e.fix.time_us == b.beacon_us
    for state in shard.aircraft.values():
        if (row := state.machine.open_flight) is not None:
            rows[row.id] = row  # as the shard writes its open flights when the input ends
    return {
        r.aircraft_id: (r.takeoff_us, r.landing_us, r.first_fix_us, r.last_fix_us, r.end_reason,
                        r.fix_count, r.spurious_reason, _ft(r.max_agl_ft))
        for r in rows.values()
    }


@pytest.mark.time_limit(120)
async def test_a_shuffled_late_flood_over_tcp_stores_the_on_time_flights(
    testdata: Path, tmp_path: Path, db_url: str
) -> None:
    beacons = flood_beacons(testdata)
    lines = [b.line.encode() for b in beacons]
    random.Random(15).shuffle(lines)
    server = FeedServer(replay(crlf(lines), greet=APRSC_BANNER, wait_login=True))
    started = trio.current_time()

    def receive_clock() -> int:  # the backlog arrives now, at 15:59:46 on 29 March 2024
        return RECEIVE_CLOCK_START + round((trio.current_time() - started) * S)

    settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path / "var"),
                                                    "shards": 2})
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        client = AprsIsSource(server.address, "N0CALL", now_us=receive_clock)
        counting: list[CountingSink] = []

        async def run(sink: EnvelopeSink) -> NoReturn:
            counting.append(CountingSink(sink, len(lines)))
            await client.run(counting[-1])

        pipeline = Pipeline(settings, db_url,
                            sources=[SourceSpec("flood", Protocol.OGN, run, RestartPolicy.TEMPORARY)])
        index = airports(testdata)
        pipeline.agl.airports = index  # shared by every shard
        for shard in pipeline.shards:
            shard.enricher.enrich = airport_enrich(index)
        await pipeline.open()
        try:

            async def stop_when_delivered() -> None:
                while not counting:
                    await trio.sleep(0.01)
                await counting[0].done.wait()
                pipeline.sources_sup.stop()  # the feed has said all it had: drain and end

            nursery.start_soon(stop_when_delivered)
            with trio.fail_after(90):
                await pipeline.run()
        finally:
            await pipeline.close()
        nursery.cancel_scope.cancel()

    assert pipeline.decoders[Protocol.OGN].rejects == {}
    with psycopg.connect(db_url) as conn:
        stored = conn.execute(
            "SELECT aircraft_id, " + ", ".join(FLIGHT) + " FROM flights"
        ).fetchall()
        ends = conn.execute(
            "SELECT departure_airport, arrival_airport FROM flights"
            " WHERE takeoff_at IS NOT NULL OR landing_at IS NOT NULL ORDER BY takeoff_at"
        ).fetchall()
        fixes = conn.execute(
            "SELECT aircraft_id, time, received_at, flight_id IS NOT NULL FROM fixes"
        ).fetchall()
    flights = {
        row[0]: (*(us(v) if hasattr(v, "tzinfo") else v for v in row[1:-1]), _ft(row[-1]))
        for row in stored
    }
    assert flights == on_time_reference(testdata)
    # one landing and one takeoff, at the beacons' own times
    landing = {a: f for a, f in flights.items() if f[1] is not None}
    takeoff = {a: f for a, f in flights.items() if f[0] is not None}
    assert [f"{a & 0xFFFFFF:06X}" for a in landing] == [LANDING_GLIDER[3:]]
    assert [f"{a & 0xFFFFFF:06X}" for a in takeoff] == [TAKEOFF_GLIDER[3:]]
    (landed,) = landing.values()
    (took_off,) = takeoff.values()
    assert landed[1] == round(datetime(2024, 3, 29, 15, 56, 25, tzinfo=UTC).timestamp() * S)
    assert took_off[0] == round(datetime(2024, 3, 29, 15, 57, 42, tzinfo=UTC).timestamp() * S)
    # the landing's airport too, though the input ended before its ±20 s had all come in
    assert ends == [("KOEN", None), (None, "KOEN")]
    # every beacon stored once with its own time, received in the backlog's burst
    assert sorted(us(t) for _a, t, _r, _f in fixes) == sorted(b.beacon_us for b in beacons)
    assert all(us(r) >= RECEIVE_CLOCK_START for _a, _t, r, _f in fixes)
    in_flights = sum(1 for _a, _t, _r, inside in fixes if inside)
    assert in_flights == sum(f[5] for f in flights.values())
