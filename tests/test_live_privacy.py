"""One privacy authority: the shards' decisions and the live hub's view come from one query of
`aircraft`, read the same way, on real PostgreSQL with aircraft from a real OGN capture."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import psycopg
import pytest
import trio
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from soar.ddb import import_ddb, load_privacy
from soar.live import encode_batches
from soar.protocols import ogn
from soar.records import AddressType, Fix
from soar.tracking.privacy import PrivacyDirectory, PrivacyRegistry
from soar.web.live import LiveHub, squares_in_bounds
from tests.support import ddb_device, wait_for, write_ddb

FEED = "ogn/svoop-ogn-full-feed-5000-20170419.txt"
DEVICE_TYPE = {AddressType.FLARM: "F", AddressType.ICAO: "I", AddressType.OGN: "O"}
ROLES = ("hidden", "anonymous", "named", "stealthy", "seen_only")


def capture_aircraft(testdata: Path) -> dict[str, list[Fix]]:
    """Five aircraft of the capture, each with its fixes, in order of first appearance."""
    by_id: dict[int, list[Fix]] = {}
    for index, line in enumerate((testdata / FEED).read_text().splitlines()):
        record = ogn.parse_line(line)
        if isinstance(record, ogn.AircraftBeacon) and not record.no_track and not record.stealth:
            fix = ogn.to_fix(record, 1_492_600_000_000_000 + index * 1000, "feed")
            if fix.address_type in DEVICE_TYPE and (fix.aircraft_id in by_id or len(by_id) < 5):
                by_id.setdefault(fix.aircraft_id, []).append(fix)
    assert len(by_id) == 5
    return dict(zip(ROLES, by_id.values(), strict=True))


def ddb_of(path: Path, aircraft: dict[str, list[Fix]]) -> Path:
    flags = {"hidden": ("N", "Y"), "anonymous": ("Y", "N"), "named": ("Y", "Y"),
             "stealthy": ("Y", "Y")}
    return write_ddb(path, [
        ddb_device(DEVICE_TYPE[aircraft[role][0].address_type], f"{aircraft[role][0].address:06X}",
                   aircraft_model="ASK 21", registration=f"D-{role[:4].upper()}",
                   cn=role[:2].upper(), tracked=tracked, identified=identified, aircraft_type="1")
        for role, (tracked, identified) in flags.items()
    ])


@pytest.fixture
def pool(db_url: str) -> Iterator[ConnectionPool]:
    # dict rows, as the web's pool has: the directory must not care
    with ConnectionPool(db_url, min_size=1, max_size=2, kwargs={"row_factory": dict_row}) as p:
        yield p


@pytest.fixture
def aircraft(testdata: Path, tmp_path: Path, db_url: str) -> dict[str, list[Fix]]:
    planes = capture_aircraft(testdata)
    ddb = ddb_of(tmp_path / "ddb.json", planes)
    assert import_ddb(db_url, ddb, progress=False)["inserted"] == 4
    seen = planes["seen_only"][0]
    with psycopg.connect(db_url) as conn:
        # the tracker's own row for an aircraft the DDB does not know; and the writer's record
        # of the stealth bit on one DDB aircraft's latest beacon
        conn.execute("INSERT INTO aircraft (id, address_type, address) VALUES (%s, %s, %s)",
                     (seen.aircraft_id, seen.address_type.value, seen.address))
        conn.execute("UPDATE aircraft SET stealth = true WHERE id = %s",
                     (planes["stealthy"][0].aircraft_id,))
    return planes


def _streamed(hub: LiveHub, fixes: list[Fix]) -> dict[int, dict[str, object]]:
    """What one client following every square of `fixes` receives, by aircraft id."""
    client = hub.connect()
    squares = {(int(f.lat // 1), int(f.lon // 1)) for f in fixes}
    for lat, lon in squares:
        hub.subscribe_squares(client, squares_in_bounds(lat + 1, lat, lon + 1, lon))
    for message in encode_batches(fixes):
        hub.dispatch(message)
    got: dict[int, dict[str, object]] = {}
    while len(client.queue):
        item = json.loads(client.queue._items.popleft())
        got[item["id"]] = item
    hub.disconnect(client)
    return got


async def test_one_directory_answers_the_shards_and_the_hub(
    aircraft: dict[str, list[Fix]], pool: ConnectionPool, db_url: str
) -> None:
    ids = {role: fixes[0].aircraft_id for role, fixes in aircraft.items()}
    registry = PrivacyRegistry()
    await trio.to_thread.run_sync(registry.load, pool)
    directory = registry.directory
    # the shards' questions
    assert directory == PrivacyDirectory(not_tracked=frozenset({ids["hidden"]}),
                                         not_identified=frozenset({ids["anonymous"]}))
    assert directory == await trio.to_thread.run_sync(load_privacy, db_url)  # the DDB's path
    assert directory.identified(ids["seen_only"]) and directory.tracked(ids["seen_only"])
    # the hub's, from the same snapshot
    hidden = registry.get(ids["hidden"])
    assert hidden is not None and not hidden.tracked
    named = registry.get(ids["named"])
    assert named is not None and named.registration == "D-NAME" and named.model == "ASK 21"
    for role in ("anonymous", "stealthy", "seen_only"):
        assert registry.get(ids[role]) is None, role  # shown, but with no identity

    hub = LiveHub("inproc://unused", directory=registry.get)
    fixes = [fix for planes in aircraft.values() for fix in planes[:3]]
    got = _streamed(hub, fixes)
    assert set(got) == {ids[r] for r in ("anonymous", "named", "stealthy", "seen_only")}
    assert got[ids["named"]]["registration"] == "D-NAME"
    assert got[ids["named"]]["competition_number"] == "NA"
    for role in ("anonymous", "stealthy", "seen_only"):
        assert got[ids[role]]["registration"] is None
        assert got[ids[role]]["competition_number"] is None and got[ids[role]]["model"] is None

    # an operator hides the named aircraft: the next read hides it for shards and hub alike
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE aircraft SET tracked = false WHERE id = %s", (ids["named"],))
    await trio.to_thread.run_sync(registry.load, pool)
    assert not registry.directory.tracked(ids["named"])
    assert ids["named"] not in _streamed(hub, fixes)


async def test_refresh_keeps_the_last_good_copy_and_recovers(
    aircraft: dict[str, list[Fix]], pool: ConnectionPool, db_url: str
) -> None:
    ids = {role: fixes[0].aircraft_id for role, fixes in aircraft.items()}
    registry = PrivacyRegistry()
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(registry.run, pool, every_s=0.01))  # after the first read
        assert registry.loaded and registry.refreshes >= 1
        loaded = registry.directory
        assert not loaded.tracked(ids["hidden"])

        with psycopg.connect(db_url) as conn:  # the table is away for a while: reads fail
            conn.execute("ALTER TABLE aircraft RENAME TO aircraft_away")
        failed = registry.failures
        await wait_for(lambda: registry.failures >= failed + 3, 60, "three failed refreshes")
        assert registry.directory == loaded  # decisions unchanged while it is away
        assert not registry.directory.tracked(ids["hidden"])

        with psycopg.connect(db_url) as conn:  # back, with a change (one transaction)
            conn.execute("ALTER TABLE aircraft_away RENAME TO aircraft")
            conn.execute("UPDATE aircraft SET tracked = true WHERE id = %s", (ids["hidden"],))
        read = registry.refreshes
        await wait_for(lambda: registry.refreshes > read, 60, "a refresh")
        assert registry.directory.tracked(ids["hidden"])
        nursery.cancel_scope.cancel()

