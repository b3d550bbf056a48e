"""One test per flight rule: a fix sequence in, the flights' exact times out."""

from __future__ import annotations

import pytest

from soar.records import FlightPhase, FlightRow, Protocol
from soar.tracking.airports import Airport, AirportIndex
from soar.tracking.flight import (
    HOUR,
    TRANSITIONS,
    EnrichmentDue,
    Event,
    FixAccepted,
    FixDropped,
    FixLate,
    FlightClosed,
    FlightOpened,
    FlightState,
    FlightStateMachine,
    IllegalTransition,
    classify_speed_agl,
    mermaid_diagram,
    runway_designator,
)

from .helpers import ADDRESS, fix, ids, us

BEAST = Protocol.BEAST


class Run:
    """A machine fed a sequence; collects what it said."""

    def __init__(self) -> None:
        self.machine = FlightStateMachine(ADDRESS, ids())
        self.events: list[Event] = []

    def feed(self, *fixes: object) -> Run:
        for f in fixes:
            self.events += self.machine.on_fix(f)  # type: ignore[arg-type]
        return self

    def clock(self, now_us: int) -> Run:
        self.events += self.machine.on_clock(now_us)
        return self

    def opened(self) -> list[FlightOpened]:
        return [e for e in self.events if isinstance(e, FlightOpened)]

    def closed(self) -> list[FlightClosed]:
        return [e for e in self.events if isinstance(e, FlightClosed)]

    def flights(self) -> dict[object, FlightRow]:
        """Latest row of every flight by id."""
        rows: dict[object, FlightRow] = {}
        for e in self.events:
            if isinstance(e, FlightOpened | FlightClosed):
                rows[e.row.id] = e.row
        return rows


def ground(start: float, n: int, step: float = 5.0, **kw: object) -> list[object]:
    return [fix(start + i * step, 0.0, **kw) for i in range(n)]  # type: ignore[arg-type]


def test_active_rule_ogn() -> None:
    assert classify_speed_agl(fix(0, 25.0)) is True
    assert classify_speed_agl(fix(0, 24.9)) is False
    assert classify_speed_agl(fix(0, 0.0, agl=250.0)) is True
    assert classify_speed_agl(fix(0, 0.0, agl=249.0)) is False
    # no altitude at all: only fast counts
    assert classify_speed_agl(fix(0, 79.0, alt=None)) is False
    assert classify_speed_agl(fix(0, 80.0, alt=None)) is True
    # AGL unknown: a high MSL altitude is no evidence, speed decides (a stationary tracker
    # on a 1,000 ft plateau is on the ground)
    assert classify_speed_agl(fix(0, 0.0, alt=5000.0)) is False
    assert classify_speed_agl(fix(0, None)) is None


def test_takeoff_after_three_inactive_fixes() -> None:
    run = Run().feed(*ground(0, 3), fix(15, 40.0), fix(20, 50.0))
    (opened,) = run.opened()
    assert opened.how == "takeoff"
    assert opened.row.takeoff_us == us(15)
    assert opened.row.first_fix_us == us(15)
    assert run.machine.state is FlightState.FLYING


def test_too_little_history_low_agl_is_takeoff() -> None:
    run = Run().feed(*ground(0, 2, agl=0.0), fix(10, 40.0, agl=50.0))
    (opened,) = run.opened()
    assert opened.row.takeoff_us == us(10)


@pytest.mark.parametrize("agl", [None, 150.0])
def test_too_little_history_otherwise_first_seen_airborne(agl: float | None) -> None:
    run = Run().feed(*ground(0, 2), fix(10, 40.0, agl=agl))
    (opened,) = run.opened()
    assert opened.how == "first_seen"
    assert opened.row.takeoff_us is None
    assert opened.row.first_fix_us == us(10)


def test_old_ground_history_does_not_make_a_takeoff() -> None:
    # parked, then seen again 10 minutes later already flying: it took off unseen
    run = Run().feed(*ground(0, 5), fix(620, 60.0))
    (opened,) = run.opened()
    assert opened.row.takeoff_us is None


def test_landing_after_five_inactive_fixes() -> None:
    run = Run().feed(*ground(0, 3), fix(15, 60.0, agl=300), fix(300, 60.0, agl=300))
    run.feed(*ground(400, 4, agl=10.0))
    assert run.closed() == []
    run.feed(fix(420, 0.0, agl=10.0))
    (closed,) = run.closed()
    assert closed.reason == "landed"
    assert closed.row.takeoff_us == us(15)
    assert closed.row.landing_us == us(400)
    assert closed.row.fix_count == 7
    assert run.machine.state is FlightState.ON_GROUND


def test_four_inactive_fixes_then_active_is_no_landing() -> None:
    run = Run().feed(*ground(0, 3), fix(15, 60.0), *ground(20, 4), fix(40, 60.0))
    run.feed(*ground(45, 4))
    assert run.closed() == []
    assert run.machine.open_flight is not None


def test_landing_with_agl_unknown_counts_inactive_by_speed() -> None:
    run = Run().feed(*ground(0, 3, alt=None), fix(15, 90.0, alt=None), fix(200, 90.0, alt=None))
    run.feed(*ground(300, 5, alt=None))
    (closed,) = run.closed()
    assert (closed.row.takeoff_us, closed.row.landing_us) == (us(15), us(300))


def test_adsb_takeoff_after_one_ground_report_and_debounced_landing() -> None:
    run = Run().feed(
        fix(0, 10.0, protocol=BEAST, on_ground=True, alt=None),
        fix(5, 150.0, protocol=BEAST, on_ground=False, alt=1000),  # 1st air report
        fix(7, 160.0, protocol=BEAST, on_ground=False, alt=1200),  # debounced: airborne
    )
    (opened,) = run.opened()
    assert opened.row.takeoff_us == us(5)
    run.feed(
        fix(600, 140.0, protocol=BEAST, on_ground=True, alt=None),  # 1st ground report
        fix(602, 120.0, protocol=BEAST, on_ground=True, alt=None),
    )
    (closed,) = run.closed()
    assert (closed.row.takeoff_us, closed.row.landing_us) == (us(5), us(600))


def test_adsb_air_ground_flapping_is_debounced() -> None:
    run = Run().feed(fix(0, 10.0, protocol=BEAST, on_ground=True))
    run.feed(*[fix(5 + 2 * i, 200.0, protocol=BEAST, on_ground=i % 2 == 0) for i in range(20)])
    assert run.opened() == []
    run2 = Run().feed(
        fix(0, 200.0, protocol=BEAST, on_ground=False),
        *[fix(5 + 2 * i, 200.0, protocol=BEAST, on_ground=i % 2 == 0) for i in range(20)],
    )
    assert len(run2.opened()) == 1
    assert run2.closed() == []


def test_sbs_without_air_ground_uses_speed() -> None:
    sbs = Protocol.SBS
    run = Run().feed(
        *[fix(i * 5, 0.0, protocol=sbs) for i in range(3)], fix(15, 120.0, protocol=sbs)
    )
    assert run.opened()[0].row.takeoff_us == us(15)


@pytest.mark.parametrize(
    ("climb", "phase"),
    [
        (800.0, FlightPhase.CLIMBING),
        (-900.0, FlightPhase.DESCENDING),
        (0.0, FlightPhase.CRUISING),
        (None, FlightPhase.CRUISING),
    ],
)
def test_timeout_after_one_hour_on_the_fix_clock(climb: float | None, phase: FlightPhase) -> None:
    # at 8,000 ft nothing says where it went: even descending, it simply times out
    run = Run().feed(
        *ground(0, 3), *[fix(15 + 5 * i, 80.0, climb=climb, alt=8000) for i in range(4)]
    )
    last = us(30)
    run.clock(last + HOUR - 1)
    assert run.closed() == []
    run.clock(last + HOUR + 60_000_000)
    (closed,) = run.closed()
    assert closed.reason == "timed_out"
    assert closed.row.timed_out_us == last + HOUR  # the deadline, not the sweep time
    assert closed.row.timeout_phase is phase
    assert closed.row.takeoff_us == us(15)
    assert closed.row.landing_us is None


def descent(start: float, alt: float, climb: float, n: int = 4) -> list[object]:
    """`n` fixes 5 s apart at 120 kt heading east at `climb` fpm, the last one at `alt`."""
    return [
        fix(
            start + 5 * i,
            120.0,
            alt=alt - climb * 5 * (n - 1 - i) / 60,
            climb=climb,
            lon=9 + 0.003 * i,
        )
        for i in range(n)
    ]


def test_descending_out_of_coverage_low_and_fast_is_a_landing() -> None:
    # last seen at 2,000 ft MSL (no terrain, no airport: MSL is the height) at 800 fpm down:
    # on the ground 150 s later
    run = Run().feed(*ground(0, 3), *descent(15, 2000.0, -800.0))
    last = run.machine.last_fix
    assert last is not None and last.altitude_ft == 2000.0
    run.clock(us(30) + HOUR - 1)
    assert run.closed() == []
    run.clock(us(30) + HOUR)
    (closed,) = run.closed()
    assert closed.reason == "landed_out_of_coverage"
    assert closed.row.end_reason == "landed_out_of_coverage"
    assert closed.row.landing_us == us(30 + 150)
    assert (closed.row.takeoff_us, closed.row.timed_out_us) == (us(15), None)
    assert closed.row.arrival_airport is None
    assert run.machine.state is FlightState.ON_GROUND
    assert run.machine.landed_us == us(180)


def test_landing_out_of_coverage_uses_the_reachable_airport_elevation() -> None:
    # 120 kt for 2.5 min (MSL bound) reaches 9.3 km (+5 km margin): the field 12 km east at
    # 1,000 ft is in reach; 1,000 ft above it at 800 fpm is 75 s
    field = Airport("LIXX", "field", 45.0, 9.0 + 12_000 / 78_710, 1000.0)
    farther = Airport("LIYY", "far", 45.0, 9.0 + 30_000 / 78_710, 0.0)
    machine = FlightStateMachine(ADDRESS, ids(), airports=AirportIndex([field, farther]))
    run = Run()
    run.machine = machine
    run.feed(*ground(0, 3), *descent(15, 2000.0, -800.0)).clock(us(30) + HOUR)
    (closed,) = run.closed()
    assert (closed.row.landing_us, closed.row.arrival_airport) == (us(30 + 75), "LIXX")


@pytest.mark.parametrize(
    ("alt", "climb"),
    [
        (6000.0, -2000.0),  # above 5,000 ft: could have levelled off anywhere
        (4000.0, -300.0),  # 13 min to the ground: too slow to be sure
        (2000.0, -100.0),  # hardly descending at all
    ],
)
def test_high_or_slow_descent_out_of_coverage_still_times_out(alt: float, climb: float) -> None:
    run = Run().feed(*ground(0, 3), *descent(15, alt, climb)).clock(us(30) + HOUR)
    (closed,) = run.closed()
    assert closed.reason == "timed_out"
    assert (closed.row.landing_us, closed.row.timed_out_us) == (None, us(30) + HOUR)
    assert run.machine.landed_us is None


def test_split_gap_while_descending_low_is_a_landing() -> None:
    # lost at 1,000 ft coming down at 600 fpm; seen again 45 min later, same place, parked
    run = Run().feed(*ground(0, 3), *descent(15, 1000.0, -600.0))
    run.feed(fix(30 + 45 * 60, 0.0, alt=300.0))
    (closed,) = run.closed()
    assert closed.reason == "landed_out_of_coverage"
    assert closed.row.landing_us == us(30 + 100)
    assert len(run.opened()) == 1


def test_after_a_landing_a_low_climbing_first_fix_is_a_takeoff_out_of_coverage() -> None:
    run = Run().feed(*ground(0, 3), fix(15, 60.0, agl=300), *ground(400, 5, agl=10.0))
    assert run.closed()[0].row.landing_us == us(400)
    # three hours later, first seen at 1,500 ft climbing 1,000 fpm: it left the ground 90 s ago
    run.feed(fix(3 * 3600, 90.0, alt=1500.0, climb=1000.0))
    second = run.opened()[1]
    assert second.how == "takeoff_out_of_coverage"
    assert second.row.takeoff_us == us(3 * 3600 - 90)
    assert second.row.first_fix_us == us(3 * 3600)
    assert run.machine.landed_us is None


def test_takeoff_out_of_coverage_is_never_before_the_previous_fix() -> None:
    run = Run().feed(*ground(0, 3), fix(15, 60.0, agl=300), *ground(400, 5, agl=10.0))
    # parked and seen at 1000 s; airborne 6 min later at 4,000 ft climbing 500 fpm (8 min)
    run.feed(fix(1000, 0.0, agl=10.0), fix(1360, 90.0, alt=4000.0, climb=500.0))
    assert run.opened()[1].row.takeoff_us == us(1000)


@pytest.mark.parametrize(
    ("alt", "climb"),
    [(9000.0, 1000.0), (3000.0, 0.0), (3000.0, None), (3000.0, -800.0)],
)
def test_after_a_landing_a_high_or_level_first_fix_is_first_seen(
    alt: float, climb: float | None
) -> None:
    run = Run().feed(*ground(0, 3), fix(15, 60.0, agl=300), *ground(400, 5, agl=10.0))
    run.feed(fix(3 * 3600, 150.0, alt=alt, climb=climb))
    second = run.opened()[1]
    assert (second.how, second.row.takeoff_us) == ("first_seen", None)


def test_without_a_known_landing_a_low_climbing_first_fix_is_first_seen() -> None:
    # a glider in a thermal at 1,500 ft: nothing says it was on the ground before
    run = Run().feed(fix(0, 50.0, alt=1500.0, climb=600.0))
    (opened,) = run.opened()
    assert (opened.how, opened.row.takeoff_us) == ("first_seen", None)


def test_timed_out_flight_resumes_when_it_comes_back_having_flown_on() -> None:
    # 200 kt for 90 min covers 300 NM; it reappears 250 NM away: same flight
    run = Run().feed(fix(0, 200.0, lat=50.0, lon=4.0), fix(10, 200.0, lat=50.0, lon=4.01))
    run.clock(us(10) + HOUR)
    assert run.closed()[0].reason == "timed_out"
    run.feed(fix(10 + 90 * 60, 200.0, lat=50.0 - 250 / 60, lon=4.01))
    opened = run.opened()
    assert [o.how for o in opened] == ["first_seen", "resumed"]
    assert opened[0].row.id == opened[1].row.id
    assert run.machine.open_flight is not None
    assert run.machine.open_flight.timed_out_us is None


def test_gap_over_two_hours_is_a_new_flight() -> None:
    run = Run().feed(fix(0, 200.0, lat=50.0, lon=4.0), fix(10, 200.0, lat=50.0, lon=4.01))
    run.feed(fix(10 + 3 * 3600, 200.0, lat=40.0, lon=4.0))
    opened = run.opened()
    assert [o.how for o in opened] == ["first_seen", "first_seen"]
    assert opened[0].row.id != opened[1].row.id
    (closed,) = run.closed()
    assert closed.row.timed_out_us == us(10) + HOUR
    assert opened[1].row.first_fix_us == us(10 + 3 * 3600)


def test_gap_of_45_minutes_when_slow_splits() -> None:
    # a paraglider at 20 kt airborne (AGL known) goes quiet 45 min
    run = Run().feed(*[fix(i * 10, 20.0, agl=1500) for i in range(3)])
    run.feed(fix(20 + 45 * 60, 20.0, agl=1500, lat=45.1))
    (closed,) = run.closed()
    assert closed.reason == "split_gap"
    assert closed.row.last_fix_us == us(20)
    assert closed.row.timed_out_us is None
    assert len(run.opened()) == 2
    assert run.opened()[1].row.first_fix_us == us(20 + 45 * 60)


def test_gap_of_45_minutes_without_moving_splits_but_moving_continues() -> None:
    stayed = Run().feed(fix(0, 100.0, lat=45.0), fix(10, 100.0, lat=45.001))
    stayed.feed(fix(10 + 45 * 60, 100.0, lat=45.01))
    assert [c.reason for c in stayed.closed()] == ["split_gap"]
    flew = Run().feed(fix(0, 100.0, lat=45.0), fix(10, 100.0, lat=45.001))
    flew.feed(fix(10 + 45 * 60, 100.0, lat=45.001 + 60 / 60))  # 60 NM in 45 min at 100 kt
    assert flew.closed() == []
    assert len(flew.opened()) == 1


def test_callsign_change_splits() -> None:
    run = Run().feed(
        fix(0, 200.0, callsign="TRA24U"), fix(10, 200.0, callsign="TRA24U"), fix(20, 200.0)
    )
    run.feed(fix(30, 200.0, callsign="TRA34Z"))
    (closed,) = run.closed()
    assert closed.reason == "split_callsign"
    assert closed.row.callsign == "TRA24U"
    assert closed.row.last_fix_us == us(20)
    second = run.opened()[1].row
    assert (second.callsign, second.first_fix_us, second.takeoff_us) == ("TRA34Z", us(30), None)


def test_a_fix_soon_after_another_is_no_duplicate_the_same_time_and_place_is() -> None:
    # two beacons with their own times 0.5 s apart, received together: both real
    run = Run().feed(fix(2, 0.0, at=0), fix(2, 0.0, at=0.5, lat=45.00001))
    assert [e.fix.time_us for e in run.events if isinstance(e, FixAccepted)] == [us(0), us(0.5)]
    # the same report through another receiver, decoded a few metres apart: a duplicate
    run.feed(fix(3, 0.0, at=0.5, lat=45.0002))
    # the same time 5 km away: no second report of this one; two devices share the address
    run.feed(fix(3, 0.0, at=0.5, lat=45.05))
    dropped = [(e.fix.time_us, e.reason) for e in run.events if isinstance(e, FixDropped)]
    assert dropped == [(us(0.5), "duplicate"), (us(0.5), "same_time_elsewhere")]


def test_adsb_positions_under_a_second_apart_are_thinned() -> None:
    run = Run().feed(*[fix(t, 300.0, at=t, protocol=BEAST) for t in (0, 0.4, 0.9, 1.1, 1.9, 2.2)])
    accepted = [e.fix.time_us for e in run.events if isinstance(e, FixAccepted)]
    thinned = [e.fix.time_us for e in run.events
               if isinstance(e, FixDropped) and e.reason == "thinned"]
    assert accepted == [us(0), us(1.1), us(2.2)]
    assert thinned == [us(0.4), us(0.9), us(1.9)]  # under 1 s after the last one kept


def test_late_fixes_stored_without_changing_the_machines_state() -> None:
    # The machine alone: a fix older than its newest is late (the OrderedTrack in front of it
    # merges those within its window first; see test_ordered.py).
    run = Run().feed(fix(0, 0.0), fix(2, 0.0), fix(3, 0.0, at=-3), fix(4, 0.0, at=-3),
                     fix(5, 0.0, at=1))
    late = [e.fix.time_us for e in run.events if isinstance(e, FixLate)]
    dropped = [(e.fix.time_us, e.reason) for e in run.events if isinstance(e, FixDropped)]
    accepted = [e.fix.time_us for e in run.events if isinstance(e, FixAccepted)]
    # stored (they happened: a write-ahead log replays them after a restart) ...
    assert late == [us(-3), us(1)]
    assert dropped == [(us(-3), "duplicate")]  # the same late fix again
    # ... but the aircraft's state stays at its newest fix
    assert accepted == [us(0), us(2)]
    assert run.machine.last_fix is not None and run.machine.last_fix.time_us == us(2)


def test_rules_use_the_fixes_own_times_not_when_they_arrived() -> None:
    # a landing delivered as a backlog: five inactive fixes 5 s apart, all received at 100 s
    run = Run().feed(*ground(0, 3), *[fix(15 + 5 * i, 60.0) for i in range(4)])
    run.feed(*[fix(100, 0.0, at=40 + 5 * i) for i in range(5)])
    (closed,) = run.closed()
    assert (closed.row.takeoff_us, closed.row.landing_us) == (us(15), us(40))
    assert closed.row.last_fix_us == us(60)


def test_timeout_counts_silence_on_the_receive_clock() -> None:
    # A backlog 2 h old arrives now: its own times are hours behind the receive clock, but
    # nothing has been silent, so nothing times out between its fixes.
    run = Run().feed(*ground(7200, 3, at=0), *[fix(7200 + i, 60.0, at=15 + 5 * i) for i in range(5)])
    run.clock(us(7210))
    assert run.closed() == []
    # an hour of silence on the receive clock: timed out at its last fix + 1 h (own time)
    run.clock(us(7205 + 3600))
    (closed,) = run.closed()
    assert closed.row.timed_out_us == us(35) + HOUR


def test_max_agl_is_over_the_whole_flight_or_absent() -> None:
    climb = [fix(15 + 10 * i, 60.0, alt=500 + 100 * i, agl=100 * i) for i in range(5)]
    # out of the airport's 2 km: altitude known, AGL not
    away = [fix(65 + 10 * i, 60.0, alt=1000 + 100 * i, agl=None) for i in range(3)]
    run = Run().feed(*ground(0, 3, agl=0.0), *climb)
    assert run.machine.open_flight is not None and run.machine.open_flight.max_agl_ft == 400
    run.feed(*away, *[fix(100 + 10 * i, 60.0, alt=600, agl=100.0) for i in range(3)])
    assert run.machine.open_flight is not None and run.machine.open_flight.max_agl_ft is None


def test_spurious_flight_is_marked_not_deleted() -> None:
    # a ground run: 3 stationary fixes, 30 s at taxi-fast speed, stops; AGL known ~0
    run = Run().feed(
        *ground(0, 3, agl=0.0),
        *[fix(15 + 5 * i, 30.0, agl=5.0, lat=45 + i * 1e-4) for i in range(6)],
    )
    run.feed(*ground(50, 5, agl=0.0, lat=45.0006))
    (closed,) = run.closed()
    assert closed.reason == "landed"
    assert (closed.row.takeoff_us, closed.row.landing_us) == (us(15), us(50))
    assert closed.row.spurious_reason is not None
    reasons = set(closed.row.spurious_reason.split(","))
    assert {"short_duration", "short_path", "flat_altitude", "low_agl"} <= reasons


def test_real_flight_is_not_spurious() -> None:
    climb = [
        fix(15 + 10 * i, 60.0, alt=500 + 100 * i, agl=100 * i, lat=45 + i * 0.01) for i in range(30)
    ]
    run = Run().feed(*ground(0, 3, agl=0.0), *climb, *ground(400, 5, agl=0.0, lat=45.3))
    (closed,) = run.closed()
    assert closed.row.spurious_reason is None
    assert closed.row.landing_us == us(400)


def test_enrichment_request_carries_the_tracks_within_20_s() -> None:
    run = Run().feed(
        *ground(0, 3, track=240.0), *[fix(15 + 5 * i, 60.0, track=240.0 + i) for i in range(8)]
    )
    (request,) = [e for e in run.events if isinstance(e, EnrichmentDue)]
    assert (request.kind, request.time_us) == ("takeoff", us(15))
    # fixes at 0..10 are stationary (excluded), 15..35 within the window; 40 came after it
    assert request.tracks_deg == (240.0, 241.0, 242.0, 243.0, 244.0)
    assert runway_designator(242.0) == "24"
    assert runway_designator(3.0) == "36"


def test_restore_resumes_counting_where_it_stopped() -> None:
    run = Run().feed(*ground(0, 3), fix(15, 60.0), *ground(20, 3))
    row = run.machine.open_flight
    assert row is not None
    history = [e.fix for e in run.events if isinstance(e, FixAccepted)]
    restored = FlightStateMachine.restore(row, history[-6:], ids())
    events = [*restored.on_fix(fix(35, 0.0)), *restored.on_fix(fix(40, 0.0))]
    (closed,) = [e for e in events if isinstance(e, FlightClosed)]
    assert (closed.row.id, closed.row.landing_us) == (row.id, us(20))


def test_state_diagram_is_generated_from_the_transitions() -> None:
    diagram = mermaid_diagram()
    for state in FlightState:
        assert f" {state.value} " in diagram or f" {state.value}:" in diagram


ILLEGAL = [
    (old, new)
    for old in FlightState
    for new in FlightState
    if (old, new) not in {(a, b) for a, b, _label in TRANSITIONS}
]


@pytest.mark.parametrize(("old", "new"), ILLEGAL, ids=[f"{a}-{b}" for a, b in ILLEGAL])
def test_a_transition_the_table_does_not_draw_raises(old: FlightState, new: FlightState) -> None:
    machine = FlightStateMachine(ADDRESS, ids())
    machine.state = old
    with pytest.raises(IllegalTransition, match=f"{old.value} -> {new.value}"):
        machine.enter(new)
    assert machine.state is old


def test_the_table_forbids_what_cannot_happen() -> None:
    assert (FlightState.NEW, FlightState.TIMED_OUT) in ILLEGAL  # no flight to time out
    assert (FlightState.ON_GROUND, FlightState.LANDING) in ILLEGAL  # no flight to land
    assert (FlightState.TIMED_OUT, FlightState.ON_GROUND) in ILLEGAL  # a fix decides first


def test_a_landed_machine_refuses_a_timeout() -> None:
    run = Run().feed(*ground(0, 3), *[fix(15 + 5 * i, 60.0) for i in range(4)], *ground(40, 5))
    assert [c.reason for c in run.closed()] == ["landed"]
    assert run.machine.state is FlightState.ON_GROUND
    with pytest.raises(IllegalTransition):
        run.machine.enter(FlightState.TIMED_OUT)


def test_docs_diagram_is_current() -> None:
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "flight-states.md"
    if not doc.exists():
        pytest.skip("docs/flight-states.md not in this checkout")
    assert mermaid_diagram() in doc.read_text()


def test_flight_row_snapshot_copies_every_field_into_a_separate_row() -> None:
    import dataclasses
    import uuid as _uuid

    from soar.records import FlightPhase, FlightRow, Protocol

    values: dict[str, object] = {}
    for n, f in enumerate(dataclasses.fields(FlightRow)):
        if f.name == "id":
            values[f.name] = _uuid.uuid4()
        elif f.name == "protocol":
            values[f.name] = Protocol.OGN
        elif f.name == "timeout_phase":
            values[f.name] = FlightPhase.CLIMBING
        elif "reason" in f.name or "airport" in f.name or "runway" in f.name or f.name == "callsign":
            values[f.name] = f"{f.name}-{n}"
        elif f.name.endswith("_ft") or f.name.endswith("_m") or "lat" in f.name or "lon" in f.name:
            values[f.name] = float(n) + 0.5
        else:
            values[f.name] = n + 1_000
    row = FlightRow(**values)  # type: ignore[arg-type]
    copy = row.snapshot()
    assert copy == row and copy is not row
    assert {f.name: getattr(copy, f.name) for f in dataclasses.fields(FlightRow)} == values
    copy.fix_count += 1  # the machine's own row stays as it was
    assert row.fix_count == values["fix_count"]
