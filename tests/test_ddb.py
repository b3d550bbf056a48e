"""The DDB importer against the embedded PostgreSQL, with DDB files in the real JSON shape."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
import trio.testing

from soar.ddb import DDB_REFRESH, DdbError, ddb_command, import_ddb, load_privacy, tow_ids_for
from soar.ddb import refresh_forever as refresh
from soar.records import AddressType, aircraft_id
from soar.tracking.privacy import PrivacyDirectory
from tests.support import ddb_device, write_ddb

DEVICES = [
    ddb_device("F", "DD1234"),
    ddb_device("O", "07A1B2", aircraft_model="Discus 2", registration="D-KXYZ", cn="",
               identified="N"),
    ddb_device("I", "3D2E8F", aircraft_model="Robin DR-400", registration="D-EFGH", cn="",
               tracked="N"),
    ddb_device("X", "ABCDEF"),  # unknown device type
    ddb_device("F", "12345"),  # not 6 hex digits
    ddb_device("F", "DD5678", tracked="maybe"),
]


def table(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT id, address_type, address, registration, competition_number, model,"
            " device_type, tracked, identified, first_seen_at FROM aircraft ORDER BY id"
        ).fetchall()


def test_import_is_idempotent_and_counts_everything(db_url: str, tmp_path: Path) -> None:
    source = write_ddb(tmp_path / "ddb.json", DEVICES)
    first = import_ddb(db_url, source)
    assert (first["read"], first["inserted"], first["updated"], first["rejected"]) == (6, 3, 0, 3)
    assert (first["rejected_device_type"], first["rejected_device_id"], first["rejected_flag"]) == (
        1,
        1,
        1,
    )
    rows = table(db_url)
    flarm = aircraft_id(AddressType.FLARM, 0xDD1234)
    assert [r[:9] for r in rows if r[0] == flarm] == [
        (flarm, "flarm", 0xDD1234, "D-1234", "XY", "ASK-21", "FLARM", True, True)
    ]
    ogn = aircraft_id(AddressType.OGN, 0x07A1B2)
    assert [r[3:9] for r in rows if r[0] == ogn] == [
        ("D-KXYZ", None, "Discus 2", "OGN", True, False)
    ]

    again = import_ddb(db_url, source)
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 3)
    assert table(db_url) == rows  # not even a timestamp moved

    changed = [ddb_device("F", "DD1234", registration="D-4321"), *DEVICES[1:]]
    third = import_ddb(db_url, write_ddb(tmp_path / "ddb2.json", changed))
    assert (third["inserted"], third["updated"], third["unchanged"]) == (0, 1, 2)
    assert [r[3] for r in table(db_url) if r[0] == flarm] == ["D-4321"]


def test_import_fills_in_an_aircraft_the_tracker_saw_first(db_url: str, tmp_path: Path) -> None:
    flarm = aircraft_id(AddressType.FLARM, 0xDD1234)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO aircraft (id, address_type, address, callsign) VALUES (%s, 'flarm', %s,"
            " 'SEEN')",
            (flarm, 0xDD1234),
        )
    summary = import_ddb(db_url, write_ddb(tmp_path / "ddb.json", DEVICES[:1]))
    assert (summary["inserted"], summary["updated"]) == (0, 1)
    with psycopg.connect(db_url) as conn:
        assert conn.execute(
            "SELECT registration, callsign, identified FROM aircraft WHERE id = %s", (flarm,)
        ).fetchone() == ("D-1234", "SEEN", True)


def test_privacy_snapshot_from_the_table(db_url: str, tmp_path: Path) -> None:
    import_ddb(db_url, write_ddb(tmp_path / "ddb.json", DEVICES))
    seen_only = aircraft_id(AddressType.ICAO, 0x400001)
    with psycopg.connect(db_url) as conn:
        # the tracker's own rows leave identified at its default (false): nobody asked
        conn.execute(
            "INSERT INTO aircraft (id, address_type, address) VALUES (%s, 'icao', %s)",
            (seen_only, 0x400001),
        )
    directory = load_privacy(db_url)
    assert directory == PrivacyDirectory(
        not_tracked=frozenset({aircraft_id(AddressType.ICAO, 0x3D2E8F)}),
        not_identified=frozenset({aircraft_id(AddressType.OGN, 0x07A1B2)}),
    )
    assert directory.identified(seen_only) and directory.tracked(seen_only)
    assert tow_ids_for(db_url, ["d-efgh ", "N-NONE"]) == {aircraft_id(AddressType.ICAO, 0x3D2E8F)}


def test_unreadable_sources_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DdbError, match="cannot read"):
        import_ddb("postgresql:///unused", tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"nodevices": []}')
    with pytest.raises(DdbError, match='no "devices" list'):
        import_ddb("postgresql:///unused", tmp_path / "bad.json")


def test_ddb_command(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = types.SimpleNamespace(database_url=db_url, data_dir=str(tmp_path))
    source = write_ddb(tmp_path / "ddb.json", DEVICES)
    assert ddb_command(settings, types.SimpleNamespace(source=str(source))) == 0
    assert "inserted=3" in capsys.readouterr().out
    missing = types.SimpleNamespace(source=str(tmp_path / "nope.json"))
    assert ddb_command(settings, missing) == 1
    assert "soar: ddb: cannot read" in capsys.readouterr().err


async def test_refresh_survives_a_failed_download(
    db_url: str, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    source = tmp_path / "ddb.json"  # not there yet: the first refresh fails
    updates: list[PrivacyDirectory] = []
    updated = trio.Event()
    failed_once = trio.Event()
    failed = DDB_REFRESH.labels("failed")._value.get()

    def on_update(directory: PrivacyDirectory) -> None:
        updates.append(directory)
        updated.set()

    async def refresher() -> None:
        await refresh(
            db_url,
            source,
            on_update,
            every_s=86_400,
            retry_s=600,
            on_failure=lambda exc: failed_once.set(),
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(refresher)
        await failed_once.wait()
        failed_at = trio.current_time()
        assert DDB_REFRESH.labels("failed")._value.get() == failed + 1
        assert updates == []
        write_ddb(source, DEVICES)
        await updated.wait()
        nursery.cancel_scope.cancel()
    assert DDB_REFRESH.labels("failed")._value.get() == failed + 1
    assert updates[0].not_tracked == {aircraft_id(AddressType.ICAO, 0x3D2E8F)}
    assert trio.current_time() - failed_at >= 600  # retried after retry_s, not in a loop
