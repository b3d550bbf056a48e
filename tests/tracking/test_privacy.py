"""Privacy in the shard: DDB tracked/identified flags, the no-track and stealth bits."""

from __future__ import annotations

from soar.records import Fix
from soar.tracking.privacy import PrivacyDirectory, PrivacyRegistry
from soar.tracking.shard import Shard

from .helpers import Sinks, fix, ids, run_shard, takeoff_sequence, us


def flight_with_callsign() -> list[Fix]:
    fixes = takeoff_sequence()
    for f in fixes:
        f.callsign = "DKXYZ"
    return fixes


def registry_for(fixes: list[Fix], *, tracked: bool, identified: bool) -> PrivacyRegistry:
    ident = fixes[0].aircraft_id
    return PrivacyRegistry(PrivacyDirectory.from_rows([(ident, tracked, identified)]))


async def test_ddb_not_tracked_is_neither_stored_nor_published() -> None:
    fixes = flight_with_callsign()
    sinks = Sinks()
    shard = Shard(new_id=ids(), privacy=registry_for(fixes, tracked=False, identified=True))
    await run_shard(shard, fixes, sinks)
    assert sinks.drain(sinks.fixes) == []
    assert sinks.live == []
    assert sinks.rows() == {}
    assert sinks.drain(sinks.seen) == []
    assert shard.aircraft == {}


async def test_ddb_not_identified_is_stored_and_published_without_identity() -> None:
    fixes = flight_with_callsign()
    sinks = Sinks()
    shard = Shard(new_id=ids(), privacy=registry_for(fixes, tracked=True, identified=False))
    await run_shard(shard, fixes, sinks)
    stored = sinks.drain(sinks.fixes)
    assert len(stored) == len(fixes)
    assert all(f.anonymous and f.callsign is None for f in stored)  # type: ignore[attr-defined]
    assert len(sinks.live) == len(fixes)  # shown live, as an anonymous aircraft
    assert all(f.anonymous and f.callsign is None for f in sinks.live)
    (row,) = sinks.rows().values()
    assert (row.takeoff_us, row.callsign) == (us(15), None)
    assert all(s.callsign is None for s in sinks.drain(sinks.seen))  # type: ignore[attr-defined]


async def test_stealth_bit_is_anonymous_and_never_live() -> None:
    fixes = flight_with_callsign()
    for f in fixes:
        f.stealth = True
    sinks = Sinks()
    await run_shard(Shard(new_id=ids()), fixes, sinks)
    stored = sinks.drain(sinks.fixes)
    assert len(stored) == len(fixes)
    assert all(f.anonymous and f.callsign is None for f in stored)  # type: ignore[attr-defined]
    assert sinks.live == []


async def test_identified_aircraft_keep_their_identity() -> None:
    fixes = flight_with_callsign()
    sinks = Sinks()
    shard = Shard(new_id=ids(), privacy=registry_for(fixes, tracked=True, identified=True))
    await run_shard(shard, fixes, sinks)
    assert all(not f.anonymous and f.callsign == "DKXYZ" for f in sinks.live)
    (row,) = sinks.rows().values()
    assert row.callsign == "DKXYZ"


def test_a_refreshed_directory_applies_from_the_next_fix() -> None:
    registry = PrivacyRegistry()
    shard = Shard(new_id=ids(), privacy=registry)
    before = fix(0, 0.0)
    shard.process(before)
    assert before.aircraft_id in shard.aircraft
    registry.replace(PrivacyDirectory(not_tracked=frozenset({before.aircraft_id})))
    after = fix(5, 0.0)
    assert shard.process(after) == []
    assert shard.aircraft[before.aircraft_id].machine.last_fix is before
