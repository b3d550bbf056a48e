"""The shard owner task, driven through channels, no network."""

from __future__ import annotations

import gzip
import math
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from soar.live import LivePublisher
from soar.records import AddressType, AircraftSeen, Fix, FlightRow, Protocol, aircraft_id
from soar.store.queries import OpenFlight
from soar.store.tables import AIRCRAFT_COLUMNS, AircraftFamily
from soar.tracking.agl import AglCalculator
from soar.tracking.airports import Airport, AirportIndex
from soar.tracking.enrichment import EnrichmentResult
from soar.tracking.flight import (
    HOUR,
    EnrichmentDue,
    FlightClosed,
    FlightOpened,
    FlightStateMachine,
)
from soar.tracking.inputs import ClockTick, SbsInput, ShardInput
from soar.tracking.metrics import ENRICHMENT, SHARD_QUARANTINED, SINK_DROPPED
from soar.tracking.router import hash_of, shard_of
from soar.tracking.shard import CLOCK_CONFIRM_US, HELD_QUIET_S, Shard, ShardSinks
from tests.support import ogn_trace_fixes

from .helpers import BIG, Sinks, fix, ids, run_shard, takeoff_sequence, us


async def test_privacy_no_track_dropped_stealth_not_live() -> None:
    sinks = Sinks()
    hidden = fix(0, 0.0)
    hidden.no_track = True
    stealthy = [fix(10 + i * 5, 0.0) for i in range(3)]
    for f in stealthy:
        f.stealth = True
    await run_shard(Shard(new_id=ids()), [hidden, *stealthy], sinks)
    stored = sinks.drain(sinks.fixes)
    assert stored == stealthy
    assert sinks.live == []
    seen = sinks.drain(sinks.seen)
    assert [s.last_fix_us for s in seen] == [us(10), us(20)]  # type: ignore[attr-defined]


async def test_live_sink_never_blocks_and_store_gets_everything() -> None:
    # the real publisher, never flushed (no socket, nobody reading): it keeps the newest
    # two and counts what it dropped; the shard neither waits nor loses a stored fix
    publisher = LivePublisher("inproc://never-flushed", max_buffer=2)
    sinks = Sinks(live=publisher.offer)
    fixes = takeoff_sequence()
    with trio.fail_after(5):
        await run_shard(Shard(new_id=ids()), list(fixes), sinks)
    assert sinks.drain(sinks.fixes) == fixes
    assert publisher.pending == 2
    assert publisher.dropped == len(fixes) - 2


async def test_a_failing_live_sink_is_counted_and_costs_nothing_else() -> None:
    def broken(f: Fix) -> None:
        raise RuntimeError("publisher gone")

    sinks = Sinks(live=broken)
    fixes = takeoff_sequence()
    before = SINK_DROPPED.labels("live")._value.get()
    await run_shard(Shard(new_id=ids()), list(fixes), sinks)
    assert sinks.drain(sinks.fixes) == fixes
    assert SINK_DROPPED.labels("live")._value.get() == before + len(fixes)


async def test_run_never_closes_its_input_and_a_reset_shard_runs_again() -> None:
    """A crash inside `run` leaves the decoders' channel open; reset + restore + run goes on."""
    send, receive = trio.open_memory_channel[ShardInput](BIG)
    first_half = takeoff_sequence()
    for f in first_half:
        send.send_nowait(f)
    broken = Sinks()
    broken.flights_send.close()  # the store side vanished: `run` itself raises
    shard = Shard(new_id=ids())
    crashed = False
    try:
        await shard.run(receive.clone(), broken.sinks)
    except* trio.ClosedResourceError:
        crashed = True
    assert crashed
    assert shard.runs == 1
    send.send_nowait(fix(70, 60.0, track=250.0))  # the channel is still open for the decoders

    # what the database holds of the open flight: the machine state before the crash
    row, tail = open_flight_of(takeoff_sequence())
    shard.reset()
    assert shard.aircraft == {}
    shard.restore([OpenFlight(row, tail)])
    sinks = Sinks()
    send.close()
    await shard.run(receive.clone(), sinks.sinks)
    assert shard.runs == 2
    stored = sinks.drain(sinks.fixes)
    assert stored[-1].flight_id == row.id  # type: ignore[attr-defined]
    assert sinks.rows()[row.id].last_fix_us == us(70)


async def test_constructor_sinks_are_the_default() -> None:
    sinks = Sinks()
    send, receive = trio.open_memory_channel[ShardInput](BIG)
    for f in takeoff_sequence():
        send.send_nowait(f)
    send.close()
    await Shard(0, sinks.sinks, new_id=ids()).run(receive)
    assert len(sinks.drain(sinks.fixes)) == 13


def test_shard_remembers_a_landing_after_forgetting_the_aircraft() -> None:
    shard = Shard(new_id=ids())
    landed = [*takeoff_sequence(), *[fix(100 + 5 * i, 0.0, agl=0.0) for i in range(5)]]
    events = [e for f in landed for e in shard.process(f)]
    assert [e.reason for e in events if isinstance(e, FlightClosed)] == ["landed"]
    other = fix(5 * 3600, 0.0)
    other.address = 0x00ABCD  # another aircraft moves the fix clock: the first one expires
    shard.process(other)
    # a jump of 5 h: the shard holds it until the receive clock goes on from there
    assert landed[0].aircraft_id in shard.aircraft
    shard.process(ClockTick(other.received_us + CLOCK_CONFIRM_US))
    assert landed[0].aircraft_id not in shard.aircraft
    # the next morning, first seen climbing through 1,200 ft at 800 fpm
    first = fix(20 * 3600, 80.0, alt=1200.0, climb=800.0)
    morning = [*shard.process(first), *shard.process(ClockTick(first.received_us + CLOCK_CONFIRM_US))]
    (opened,) = [e for e in morning if isinstance(e, FlightOpened)]
    assert (opened.how, opened.row.takeoff_us) == ("takeoff_out_of_coverage", us(20 * 3600 - 90))


async def test_store_sink_applies_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    fixes_send, fixes_receive = trio.open_memory_channel[Fix](1)
    flights_send, _flights_receive = trio.open_memory_channel[FlightRow](BIG)
    seen_send, _seen_receive = trio.open_memory_channel[AircraftSeen](BIG)
    sinks = ShardSinks(fixes_send, flights_send, seen_send)
    got: list[Fix] = []
    fixes = takeoff_sequence()

    async def slow_writer() -> None:
        async for f in fixes_receive:
            got.append(f)
            await trio.sleep(1)

    send, receive = trio.open_memory_channel[ShardInput](BIG)
    for f in fixes:
        send.send_nowait(f)
    send.close()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_writer)
        await Shard(new_id=ids()).run(receive, sinks)
        fixes_send.close()
    assert got == fixes
    assert trio.current_time() >= len(fixes) - 2  # the shard waited for the writer


async def test_quarantine_and_go_on() -> None:
    sinks = Sinks()
    airports = AirportIndex([Airport("TEST", "test", 45.0, 9.0, 300.0)])
    shard = Shard(agl=AglCalculator(airports=airports), new_id=ids())
    poison = fix(1, 0.0)
    poison.lat = "not a latitude"  # type: ignore[assignment]
    before = SHARD_QUARANTINED.labels("0")._value.get()
    await run_shard(shard, [fix(0, 0.0), poison, "garbage", fix(5, 0.0)], sinks)  # type: ignore[list-item]
    assert shard.quarantined == 2
    assert SHARD_QUARANTINED.labels("0")._value.get() == before + 2
    assert [f.received_us for f in sinks.drain(sinks.fixes)] == [us(0), us(5)]  # type: ignore[attr-defined]


def open_flight_of(fixes: list[Fix]) -> tuple[FlightRow, list[Fix]]:
    machine = FlightStateMachine(fixes[0].aircraft_id, ids())
    for f in fixes:
        machine.on_fix(f)
    assert machine.open_flight is not None
    return machine.open_flight, fixes[-5:]


async def test_restore_resumes_recent_and_times_out_stale_flights() -> None:
    recent_row, recent_fixes = open_flight_of(takeoff_sequence())
    stale_fixes = takeoff_sequence()
    for f in stale_fixes:
        f.address = 0x123456
    stale_row, stale_tail = open_flight_of(stale_fixes)
    stale_row.id = stale_row.id.__class__(int=999)

    sinks = Sinks()
    shard = Shard(new_id=ids())
    now = us(60) + HOUR + 1
    # the recent one kept flying (its last fix is "now"); the stale one is 1 h past its last
    for f in recent_fixes:
        f.received_us += HOUR
        f.time_us += HOUR
    recent_row.last_fix_us += HOUR
    shard.restore([(recent_row, recent_fixes), (stale_row, stale_tail)], now_us=now)
    later = fix(60 + 3600 + 5, 80.0)
    await run_shard(shard, [later], sinks)
    rows = sinks.rows()
    assert rows[stale_row.id].timed_out_us == stale_row.last_fix_us + HOUR
    assert rows[stale_row.id].end_reason == "timed_out"
    resumed = rows[recent_row.id]
    assert resumed.is_open
    assert resumed.last_fix_us == later.received_us
    assert resumed.takeoff_us == us(15)
    (stored,) = sinks.drain(sinks.fixes)
    assert stored.flight_id == recent_row.id  # type: ignore[attr-defined]


async def test_a_jump_then_silence_is_processed_after_a_while(
    mock_clock: trio.testing.MockClock,
) -> None:
    sinks = Sinks()
    shard = Shard(new_id=ids())
    send, receive = trio.open_memory_channel[ShardInput](BIG)
    fixes = takeoff_sequence()
    after_gap = fix(7200, 60.0, track=250.0)  # two hours on: held until something tells
    for f in [*fixes, after_gap]:
        send.send_nowait(f)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shard.run, receive, sinks.sinks)
        await trio.testing.wait_all_tasks_blocked()
        assert sinks.drain(sinks.fixes) == fixes and shard.holding == 1
        mock_clock.jump(HELD_QUIET_S)
        await trio.testing.wait_all_tasks_blocked()
        assert sinks.drain(sinks.fixes) == [after_gap] and shard.holding == 0
        send.close()


async def test_restore_with_a_wall_clock_ten_years_ahead_times_nothing_out() -> None:
    row, tail = open_flight_of(takeoff_sequence())
    sinks = Sinks()
    shard = Shard(new_id=ids())
    shard.restore([(row, tail)], now_us=tail[-1].received_us + 3653 * 24 * HOUR)
    assert shard.clock_us == 0  # not dragged ten years ahead
    later = fix(65, 80.0)
    await run_shard(shard, [later], sinks)
    rows = sinks.rows()
    assert rows[row.id].is_open and rows[row.id].last_fix_us == later.time_us


async def test_restore_without_clock_is_judged_by_the_first_fix() -> None:
    row, tail = open_flight_of(takeoff_sequence())
    sinks = Sinks()
    shard = Shard(new_id=ids())
    shard.restore([(row, tail)])
    other = fix(4 * 3600, 0.0)
    other.address = 0x00ABCD  # another aircraft moves the fix clock
    await run_shard(shard, [other], sinks)
    closed = sinks.rows()[row.id]
    assert closed.timed_out_us == row.last_fix_us + HOUR


async def test_clock_tick_times_out_a_quiet_shard() -> None:
    sinks = Sinks()
    fixes = takeoff_sequence()
    await run_shard(
        Shard(new_id=ids()), [*fixes, ClockTick(us(60) + HOUR + 120 * 1_000_000)], sinks
    )
    (row,) = sinks.rows().values()
    assert (row.takeoff_us, row.timed_out_us) == (us(15), fixes[-1].received_us + HOUR)


async def test_enrichment_sets_airport_and_runway() -> None:
    airports = AirportIndex([Airport("LFXX", "field", 45.0, 9.0, 400.0)])
    sinks = Sinks()
    await run_shard(
        Shard(agl=AglCalculator(airports=airports), new_id=ids()), takeoff_sequence(), sinks
    )
    (row,) = sinks.rows().values()
    assert (row.takeoff_us, row.departure_airport, row.takeoff_runway) == (us(15), "LFXX", "25")


async def test_slow_enrichment_never_delays_fixes(autojump_clock: trio.testing.MockClock) -> None:
    async def sleepy(request: EnrichmentDue) -> EnrichmentResult:
        await trio.sleep(30)
        raise AssertionError("the timeout should have cancelled this")

    sinks = Sinks()
    shard = Shard(enrich=sleepy, enrich_timeout_s=5, new_id=ids())
    send, receive = trio.open_memory_channel[ShardInput](0)
    fixes = [*takeoff_sequence(), *takeoff_sequence(3600 * 3)]
    arrival: list[float] = []

    async def feed() -> None:
        async with send:
            for f in fixes:
                await send.send(f)
                arrival.append(trio.current_time())

    timeouts = ENRICHMENT.labels("timeout")._value.get()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        nursery.start_soon(shard.run, receive, sinks.sinks)
    assert len(sinks.drain(sinks.fixes)) == len(fixes)
    assert arrival[-1] - start < 1  # every fix went through while enrichment slept
    assert trio.current_time() - start <= 6  # and the run ended after the 5 s timeout
    rows = list(sinks.rows().values())
    assert len(rows) == 2 and all(r.departure_airport is None for r in rows)
    assert ENRICHMENT.labels("timeout")._value.get() == timeouts + 2


async def test_sbs_inputs_are_decoded_in_the_shard(testdata: Path) -> None:
    from soar.protocols.sbs import SbsMessage, parse_line

    items: list[SbsInput] = []
    with gzip.open(testdata / "sbs" / "adsbhub-sbs-sample-20260224.txt.gz", "rt") as lines:
        for i, line in enumerate(lines):
            if i >= 3000:
                break
            msg = parse_line(line.rstrip("\r\n"))
            if isinstance(msg, SbsMessage):
                items.append(SbsInput(msg, us(i * 0.01), "adsbhub"))
    sinks = Sinks()
    # routed as the pipeline routes: by the ICAO address's aircraft id
    mine: list[ShardInput] = [
        item for item in items if shard_of(aircraft_id(AddressType.ICAO, item.msg.icao), 4) == 1
    ]
    await run_shard(Shard(1, new_id=ids()), mine, sinks)
    stored = sinks.drain(sinks.fixes)
    assert stored, "some SBS positions became fixes"
    assert all(shard_of(f.aircraft_id, 4) == 1 for f in stored)  # type: ignore[attr-defined]
    assert all(f.protocol is Protocol.SBS for f in stored)  # type: ignore[attr-defined]


def test_routing_is_stable_across_processes_and_spread() -> None:
    idents = [(1 << 24) | a for a in range(0x400000, 0x400000 + 4000)]
    here = [shard_of(i, 8) for i in idents]
    code = (
        "from soar.tracking.router import shard_of;"
        f"print(','.join(str(shard_of(i, 8)) for i in range({idents[0]}, {idents[-1] + 1})))"
    )
    for seed in ("1", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            cwd=Path(__file__).resolve().parents[2],
        ).stdout.strip()
        assert [int(x) for x in out.split(",")] == here
    counts = [here.count(k) for k in range(8)]
    assert max(counts) - min(counts) < 4000 / 8 * 0.2
    # ranges of the hash space map onto contiguous shards
    assert all((hash_of(i) * 8) >> 32 == s for i, s in zip(idents, here, strict=True))
    assert math.isclose(sum(counts), 4000)


async def test_enrichment_still_waiting_when_the_input_ends_is_applied(testdata: Path) -> None:
    # The trace ends 20 s after TRA34Z's landing at Barcelona: its airport lookup waited for
    # tracks within ±20 s that never came, and a drained shard used to drop it.
    from soar.tracking.airports import default_index


    fixes = ogn_trace_fixes(testdata / "ogn" / "soar-flight-descended-out-of-range-then-took-off.txt")
    sinks = Sinks()
    await run_shard(Shard(agl=AglCalculator(airports=default_index()), new_id=ids()), fixes, sinks)
    rows = sorted(sinks.rows().values(), key=lambda r: r.first_fix_us)
    assert [(r.departure_airport, r.arrival_airport) for r in rows] == [
        (None, "EHAM"), ("EHAM", "LEBL")
    ]
    assert rows[1].end_reason == "landed"


async def test_adsb_emitter_category_reaches_the_aircraft_row(testdata: Path) -> None:
    # The LFBO capture's 48520A identifies itself as TRA89M, category A3 (large aircraft).
    from soar.decode import Decoder
    from soar.ingest.capture import iter_capture
    from soar.records import Protocol as Feed

    decoder = Decoder(Feed.BEAST)
    items: list[ShardInput] = []
    capture = testdata / "adsb" / "traffic-sample_dump1090-LFBO-20200212.beast"
    for envelope in iter_capture(capture, start_us=1_581_501_600_000_000):
        items += [item for _ident, item in decoder.decode(envelope).shard_items]
    sinks = Sinks()
    airports = AirportIndex([Airport("LFBO", "Toulouse", 43.635, 1.368, 499.0)])
    await run_shard(Shard(agl=AglCalculator(airports=airports), new_id=ids()), items, sinks)
    seen = [s for s in Sinks.drain(sinks.seen) if isinstance(s, AircraftSeen)]
    assert {f"{s.address:06X}" for s in seen} == {"48520A"}
    assert seen[-1].category == "A3"  # the first position came before its identification
    # what the writer makes of the sightings: one aircraft row, with its category
    (batch,) = AircraftFamily().prepare(seen)
    (row,) = batch.rows
    assert row[AIRCRAFT_COLUMNS.index(("category", "text"))] == "A3"


async def test_fix_delay_is_observed_per_protocol(testdata: Path) -> None:
    from prometheus_client import REGISTRY


    fixes = ogn_trace_fixes(testdata / "ogn" / "soar-flight-descended-out-of-range-then-took-off.txt")

    def observed() -> tuple[float, float]:
        labels = {"protocol": "ogn"}
        return (REGISTRY.get_sample_value("soar_fix_delay_seconds_count", labels) or 0.0,
                REGISTRY.get_sample_value("soar_fix_delay_seconds_sum", labels) or 0.0)

    count, total = observed()
    sinks = Sinks()
    await run_shard(Shard(new_id=ids()), fixes, sinks)
    stored = [f for f in Sinks.drain(sinks.fixes) if isinstance(f, Fix)]
    after_count, after_total = observed()
    assert after_count - count == len(stored) == 1117
    # receive minus own time of the fixes kept: up to 6.3 s on this trace, 0.65 s on average
    delays = sum(f.received_us - f.time_us for f in stored) / 1e6
    assert after_total - total == pytest.approx(delays, abs=1e-3)
    assert 0.5 < delays / len(stored) < 0.8
