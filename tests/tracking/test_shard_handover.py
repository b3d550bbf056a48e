"""Aircraft handed from one shard to another while both run (split mode's partitions).

The giving shard gets `ForgetAircraft`, the taking one `RestoreFlights` with what the database
would hold after the giver's last rows: the flights come out as if one shard had seen it all.
"""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Sequence
from pathlib import Path

import trio
import trio.lowlevel
import trio.testing

from soar.decode import Decoder
from soar.ingest.capture import iter_capture
from soar.protocols.sbs import SbsMessage, parse_line
from soar.records import AddressType, AircraftSeen, Fix, FlightRow, aircraft_id
from soar.records import Protocol as Feed
from soar.tracking.agl import AglCalculator
from soar.tracking.airports import default_index
from soar.tracking.flight import FlightClosed
from soar.tracking.inputs import ForgetAircraft, RestoreFlights, SbsInput, ShardInput
from soar.tracking.router import hash_of
from soar.tracking.shard import Shard
from tests.support import ogn_trace_fixes

from .helpers import Sinks, ids, run_shard

TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"
SBS = "sbs/adsbhub-sbs-sample-20260224.txt.gz"
FULL_FEED = "ogn/svoop-ogn-full-feed-5000-20170419.txt"


def shard(first_id: int = 1) -> Shard:
    counter = iter(range(first_id, first_id + 1000))
    return Shard(
        agl=AglCalculator(airports=default_index()), new_id=lambda: uuid.UUID(int=next(counter))
    )


def stored_fixes(sinks: Sinks) -> list[Fix]:
    return [f for f in Sinks.drain(sinks.fixes) if isinstance(f, Fix)]


def summary(rows: Sequence[FlightRow]) -> list[tuple[object, ...]]:
    return sorted(
        (r.first_fix_us, r.takeoff_us, r.landing_us, r.end_reason, r.departure_airport,
         r.arrival_airport)
        for r in rows
    )


def database_view(
    rows: dict[object, FlightRow], fixes: list[Fix], last: int = 64
) -> list[tuple[FlightRow, list[Fix]]]:
    """What `store.queries.open_flights` reads back: open flights, their last fixes (as many
    as a machine keeps: the phase and a projected landing read the last 2 minutes)."""
    out = []
    for row in rows.values():
        if row.is_open:
            mine = sorted((f for f in fixes if f.flight_id == row.id), key=lambda f: f.time_us)
            out.append((row, mine[-last:]))
    return out


async def test_a_flight_handed_over_mid_air_ends_as_if_never_moved(testdata: Path) -> None:
    fixes = ogn_trace_fixes(testdata / TRACE)
    alone = Sinks()
    await run_shard(shard(), ogn_trace_fixes(testdata / TRACE), alone)
    expected = summary(list(alone.rows().values()))
    assert len(expected) == 2

    # the first shard has the aircraft for the descent into Amsterdam, then gives it back
    cut = 300
    first, giver = Sinks(), shard()
    await run_shard(giver, [*fixes[:cut], ForgetAircraft(lambda ident: True)], first)
    assert giver.aircraft == {} and not giver.holds(fixes[0].aircraft_id)
    given = stored_fixes(first)
    rows = first.rows()
    (open_row,) = [r for r in rows.values() if r.is_open]
    # the row it handed over is the flight as of its newest fix, not as of its last periodic update
    newest = max(given, key=lambda f: f.time_us)
    assert open_row.last_fix_us == newest.time_us
    assert open_row.fix_count == sum(1 for f in given if f.flight_id == open_row.id)
    # and the aircraft row stands for that newest fix too (it may have waited 10 s for a write)
    seen = [s for s in Sinks.drain(first.seen) if isinstance(s, AircraftSeen)]
    assert seen[-1].last_fix_us == newest.time_us

    second, taker = Sinks(), shard(first_id=100)
    restore: list[ShardInput] = [RestoreFlights(database_view(rows, given))]
    await run_shard(taker, [*restore, *fixes[cut:]], second)
    taken = second.rows()
    assert open_row.id in taken  # the taker went on with the same flight
    handed = {**rows, **taken}  # the store keeps the newest row per flight
    assert summary(list(handed.values())) == expected
    assert len(given) + len(stored_fixes(second)) == len(stored_fixes(alone))


def sbs_inputs(testdata: Path, lines: int) -> list[SbsInput]:
    items: list[SbsInput] = []
    with gzip.open(testdata / SBS, "rt") as text:
        for i, line in enumerate(text):
            if i >= lines:
                break
            msg = parse_line(line.rstrip("\r\n"))
            if isinstance(msg, SbsMessage):
                items.append(SbsInput(msg, 1_771_945_020_000_000 + i * 10_000, "adsbhub"))
    return items


def full_feed(testdata: Path) -> list[ShardInput]:
    """The 4 minutes of the full OGN feed (611 aircraft) as shard inputs."""
    decoder = Decoder(Feed.OGN)
    return [
        item
        for envelope in iter_capture(testdata / FULL_FEED)
        for _ident, item in decoder.decode(envelope).shard_items
    ]


def given_back(ident: int) -> bool:
    return hash_of(ident) % 2 == 0


def latest(sinks: Sinks) -> tuple[dict[int, FlightRow], dict[int, AircraftSeen]]:
    """The newest flight row and aircraft row per aircraft, as the store keeps them."""
    flights = {row.aircraft_id: row for row in sinks.rows().values()}
    seen = {s.aircraft_id: s for s in Sinks.drain(sinks.seen) if isinstance(s, AircraftSeen)}
    return flights, seen


async def test_forget_gives_back_the_owned_aircraft_with_their_latest_rows(
    testdata: Path,
) -> None:
    items = sbs_inputs(testdata, 24_000)  # the sample's positions start after 20,000 lines
    # a shard whose input simply ends writes every aircraft's latest rows: what a handover owes
    ended, reference = Sinks(), Shard(new_id=ids())
    await run_shard(reference, items, ended)
    flights, seen = latest(ended)
    owed = {i for i, row in flights.items() if row.is_open and given_back(i)}
    assert len(owed) > 100 and any(row.is_open and not given_back(i) for i, row in flights.items())
    # every address heard, positions or not, has decoder state in the shard
    heard = {aircraft_id(AddressType.ICAO, item.msg.icao) for item in items}
    assert all(reference.holds(i) for i in heard)

    sinks, one = Sinks(), Shard(new_id=ids())
    send, receive = trio.open_memory_channel[ShardInput](len(items) + 1)
    for item in [*items, ForgetAircraft(given_back)]:
        send.send_nowait(item)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one.run, receive, sinks.sinks)
        await wait_until_drained(receive)
        # before the input ends (which would write every row anyway)
        handed, handed_seen = latest(sinks)
        assert not any(one.holds(i) for i in heard if given_back(i))
        assert all(one.holds(i) for i in heard if not given_back(i))
        send.close()
    assert {i for i, row in handed.items() if row.is_open and given_back(i)} == owed
    for ident in owed:
        assert handed[ident] == flights[ident]
        assert handed_seen[ident] == seen[ident]


async def wait_until_drained(receive: trio.MemoryReceiveChannel[ShardInput]) -> None:
    """Until the shard has taken every queued input and waits for more."""
    while receive.statistics().current_buffer_used:
        await trio.lowlevel.checkpoint()
    await trio.testing.wait_all_tasks_blocked()


async def test_restore_replaces_only_the_named_aircraft(testdata: Path) -> None:
    items = full_feed(testdata)
    one = Shard(new_id=ids())
    half = len(items) // 2
    for item in items[:half]:
        one.process(item)
    flying = {
        ident: (state.machine.open_flight.snapshot(), list(state.machine.recent))
        for ident, state in one.aircraft.items()
        if state.machine.open_flight is not None
    }
    for item in items[half:]:
        one.process(item)
    # one whose flight went on after what "the database" has of it
    moved = next(
        ident
        for ident, (row, _recent) in flying.items()
        if (newer := one.aircraft[ident].machine.open_flight) is not None
        and newer.last_fix_us > row.last_fix_us
    )
    row, recent = flying[moved]
    kept = {ident: state for ident, state in one.aircraft.items() if ident != moved}

    # the database had the older state of `moved`: the shard takes it back for that one alone
    assert one.process(RestoreFlights([(row, recent)])) == []
    assert one.aircraft[moved].machine.open_flight == row
    assert all(one.aircraft[ident] is state for ident, state in kept.items())

    # with a clock 1 h past its last fix it times out at once; the others wait for the sweep
    late = max(f.received_us for f in recent) + 3_600_000_000
    events = one.process(RestoreFlights([(row, recent)], now_us=late))
    closed = [e.row for e in events if isinstance(e, FlightClosed)]
    assert [(r.id, r.end_reason) for r in closed] in (
        [(row.id, "timed_out")],
        [(row.id, "landed_out_of_coverage")],
    )
    assert all(one.aircraft[ident] is state for ident, state in kept.items())
    assert any(state.machine.open_flight is not None for state in kept.values())

    # a closed row only drops what the shard held for its aircraft
    done = row.snapshot()
    done.end_reason = "landed"
    one.process(RestoreFlights([(done, [])]))
    assert moved not in one.aircraft
