"""OGN APRS parsing on the real captures in ../shared/data/ogn.

Expected values are computed in the tests from the raw text with deliberately simple code
(fixed-column slicing of the position, the id token's hex), independent of the parser's regexes.
"""

from __future__ import annotations

import re
from pathlib import Path

import aprslib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soar.protocols import ogn
from soar.protocols.ogn import (
    AircraftBeacon,
    AircraftStatus,
    ReceiverBeacon,
    ReceiverStatus,
    ServerLine,
    WeatherBeacon,
)
from soar.records import AddressType, AircraftType, Fix, Protocol, Rejected

REPLAY = "soar-flight-descended-out-of-range-then-took-off.txt"
STATIONARY = "soar-flight-no-active-fixes.txt"


def valid_lines(testdata: Path, pattern: str = "*.txt") -> list[tuple[str, str]]:
    """(file name, line) for every beacon in valid_messages (comments and blank lines skipped)."""
    out = []
    for path in sorted((testdata / "ogn" / "valid_messages").glob(pattern)):
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                out.append((path.name, line))
    return out


def replay_lines(testdata: Path, name: str) -> list[str]:
    """The APRS part of `<ISO time> <APRS line>` capture lines."""
    return [line.split(" ", 1)[1] for line in (testdata / "ogn" / name).read_text().splitlines()]


def tocall_of(line: str) -> str:
    return line.split(":", 1)[0].split(">", 1)[1].split(",", 1)[0]


def expected_position(line: str) -> tuple[float, float, int | None]:
    """Lat/lon/altitude read by fixed columns from `/hhmmssh DDMM.mmN T DDDMM.mmE S…`."""
    body = line.split(":", 1)[1].replace("\\\\", "\\")
    p = body[8:]
    lat = int(p[0:2]) + float(p[2:7]) / 60
    lon = int(p[9:12]) + float(p[12:17]) / 60
    if p[7] == "S":
        lat = -lat
    if p[17] == "W":
        lon = -lon
    # !Wab! adds a third and fourth decimal of minutes
    for token in body.split():
        if len(token) == 5 and token.startswith("!W") and token.endswith("!"):
            lat += (1 if lat >= 0 else -1) * int(token[2]) / 60000
            lon += (1 if lon >= 0 else -1) * int(token[3]) / 60000
    altitude = None
    if "/A=" in body:
        altitude = int(body.split("/A=", 1)[1][:6])
    return lat, lon, altitude


def id_token(line: str) -> str | None:
    for token in line.split(":", 1)[1].split():
        if token.startswith("id") and len(token) in (10, 12):
            try:
                int(token[2:], 16)
            except ValueError:
                continue
            return token[2:]
    return None


def check_aircraft(line: str, beacon: AircraftBeacon) -> None:
    lat, lon, altitude = expected_position(line)
    assert beacon.lat == pytest.approx(lat, abs=1e-9)
    assert beacon.lon == pytest.approx(lon, abs=1e-9)
    assert beacon.altitude_ft == altitude
    ident = id_token(line)
    if ident is not None:
        assert beacon.address == int(ident[-6:], 16)
        if len(ident) == 8:
            flags = int(ident[:2], 16)
            assert (
                beacon.address_type
                is [
                    AddressType.OTHER,
                    AddressType.ICAO,
                    AddressType.FLARM,
                    AddressType.OGN,
                ][flags % 4]
            )
            assert beacon.aircraft_type == AircraftType((flags // 4) % 16)
            assert beacon.stealth == (flags >= 128)
            assert beacon.no_track == bool(flags & 64)
    else:
        assert beacon.address == int(beacon.header.name[-6:], 16)
    path = line.split(":", 1)[0].split(",")
    assert beacon.header.receiver == path[-1]


# --------------------------------------------------------------------------------------------
# the replay captures


def test_replay_capture_every_line_is_an_aircraft_beacon(testdata: Path) -> None:
    lines = replay_lines(testdata, REPLAY)
    doubled = [line for line in lines if "\\\\" in line]
    assert len(lines) == 1183
    assert len(doubled) == 274
    for line in lines:
        beacon = ogn.parse_line(line)
        assert isinstance(beacon, AircraftBeacon), (line, beacon)
        check_aircraft(line, beacon)
        assert beacon.address == 0x48683E
        assert beacon.address_type is AddressType.ICAO
        assert beacon.header.tocall == "OGADSB"
    # the doubled backslash is the capture's artefact, not a different symbol table
    assert {b.symbol for b in map(ogn.parse_line, doubled) if isinstance(b, AircraftBeacon)} == {
        "\\^"
    }


def test_replay_capture_fields(testdata: Path) -> None:
    lines = replay_lines(testdata, REPLAY)
    first = ogn.parse_line(lines[0])
    assert isinstance(first, AircraftBeacon)
    fix = ogn.to_fix(first, received_us=1_766_528_295_956_000, source="replay")
    assert isinstance(fix, Fix)
    assert fix.protocol is Protocol.OGN
    assert fix.receiver == "PA5MN"
    course, speed = lines[0].split("^", 1)[1][:7].split("/")
    assert fix.track_deg == float(int(course))
    assert fix.ground_speed_kt == float(int(speed))
    assert fix.packet_time == lines[0].split(":/", 1)[1][:6]
    assert fix.climb_fpm == float(re.search(r" ([+-]\d+)fpm", lines[0]).group(1))  # type: ignore[union-attr]
    assert fix.source == "replay"
    assert fix.received_us == 1_766_528_295_956_000
    assert fix.aircraft_id == (1 << 24) | 0x48683E

    callsigns = {}
    for line in lines:
        beacon = ogn.parse_line(line)
        assert isinstance(beacon, AircraftBeacon)
        for token in line.split():
            if token.startswith(("A3:", "fnA3:")):
                callsigns[line] = token.split(":", 1)[1]
        if line in callsigns:
            assert beacon.callsign == callsigns[line]
        else:
            assert beacon.callsign is None
        fl = re.search(r" FL(\d+(?:\.\d+)?)", line)
        assert beacon.flight_level == (float(fl.group(1)) if fl else None)
    assert set(callsigns.values()) >= {"TRA24U", "TRA34Z"}


def test_stationary_tracker_capture(testdata: Path) -> None:
    lines = replay_lines(testdata, STATIONARY)
    assert len(lines) == 6
    for line in lines:
        beacon = ogn.parse_line(line)
        assert isinstance(beacon, AircraftBeacon)
        check_aircraft(line, beacon)
        # NAVITER 10-hex-digit id: 0x1C40 flags → paraglider, NAVITER's own address space
        assert beacon.aircraft_type is AircraftType.PARAGLIDER
        assert beacon.address_type is AddressType.OTHER
        assert beacon.ground_speed_kt == 0.0  # 000/000: stationary, not unknown
        fix = ogn.to_fix(beacon, 0, "")
        assert fix.turn_rate == 0.0


# --------------------------------------------------------------------------------------------
# every tocall seen in the wild


def test_ogflr(testdata: Path) -> None:
    lines = valid_lines(testdata, "OGFLR_*.txt")
    assert lines
    for _, line in lines:
        beacon = ogn.parse_line(line)
        assert isinstance(beacon, AircraftBeacon), line
        check_aircraft(line, beacon)
        fix = ogn.to_fix(beacon, 0, "")
        rot = re.search(r" ([+-]\d+\.\d)rot", line)
        assert rot is not None
        # half-turns per minute: 180° / 60 s (tests/protocols/test_ogn_fields.py has the proof)
        assert fix.turn_rate == pytest.approx(float(rot.group(1)) * 3)
        db = re.search(r" (\d+\.\d)dB", line)
        assert db is not None
        assert fix.signal_db == float(db.group(1))
        khz = re.search(r" ([+-]\d+\.\d)kHz", line)
        assert khz is not None
        assert fix.freq_offset_khz == float(khz.group(1))
        errors = re.search(r" (\d+)e ", line)
        assert fix.bit_errors == (int(errors.group(1)) if errors else None)
        gps = re.search(r" gps(\d+)x(\d+)", line)
        assert gps is not None
        assert beacon.gps_accuracy == (int(gps.group(1)), int(gps.group(2)))


def test_ogadsb(testdata: Path) -> None:
    lines = valid_lines(testdata, "OGADSB_*.txt")
    assert lines
    for _, line in lines:
        beacon = ogn.parse_line(line)
        assert isinstance(beacon, AircraftBeacon), line
        check_aircraft(line, beacon)
        assert beacon.address_type is AddressType.ICAO
        fn = re.search(r" fn(?:A\d:)?(\w+)", line)  # A1: etc. is the emitter category
        assert beacon.callsign == (fn.group(1) if fn else None)


@pytest.mark.parametrize(
    ("pattern", "tocall"),
    [
        ("OGNAVI_*.txt", "OGNAVI"),
        ("OGPAW_*.txt", "OGPAW"),
        ("OGSPOT_*.txt", "OGSPOT"),
        ("OGNFNT_Fanet.txt", "OGNFNT"),
        ("OGNTRK_*.txt", "OGNTRK"),
        ("APRS_aircraft.txt", "APRS"),
    ],
)
def test_aircraft_tocalls(testdata: Path, pattern: str, tocall: str) -> None:
    lines = valid_lines(testdata, pattern)
    positions = [line for _, line in lines if ":/" in line]
    statuses = [line for _, line in lines if ":>" in line]
    assert positions
    for line in positions:
        beacon = ogn.parse_line(line)
        if "qAC" in line:  # a FANET ground station's own beacon among the FANET aircraft
            assert isinstance(beacon, ReceiverBeacon), line
            continue
        assert isinstance(beacon, AircraftBeacon), (line, beacon)
        assert beacon.header.tocall == tocall
        check_aircraft(line, beacon)
        fix = ogn.to_fix(beacon, 123, "test")
        assert (fix.lat, fix.lon, fix.address) == (beacon.lat, beacon.lon, beacon.address)
    for line in statuses:
        status = ogn.parse_line(line)
        assert isinstance(status, AircraftStatus), line
        assert status.text == line.split(":>", 1)[1][7:].strip()


def test_ognsdr_receiver_beacons(testdata: Path) -> None:
    lines = [line for _, line in valid_lines(testdata, "OGNSDR_*.txt")]
    positions = [line for line in lines if ":/" in line]
    statuses = [line for line in lines if ":>" in line]
    assert positions and statuses
    for line in positions:
        beacon = ogn.parse_line(line)
        assert isinstance(beacon, ReceiverBeacon), line
        lat, lon, altitude = expected_position(line)
        assert (beacon.lat, beacon.lon) == pytest.approx((lat, lon))
        row = ogn.receiver_row(beacon, 42)
        assert row.name == line.split(">", 1)[0]
        assert (row.lat, row.lon, row.altitude_ft, row.last_packet_us) == (
            beacon.lat,
            beacon.lon,
            altitude,
            42,
        )
    for line in statuses:
        status = ogn.parse_line(line)
        assert isinstance(status, ReceiverStatus), line
        row = ogn.receiver_status_row(status, 7)
        text = line.split(":>", 1)[1]
        version = re.search(r" v(\d+\.\d+\.\d+)\.(\S+)", text)
        assert version is not None
        assert (row.version, row.platform) == (version.group(1), version.group(2))
        cpu = re.search(r"CPU:(\S+)", text)
        ram = re.search(r"RAM:([\d.]+)/([\d.]+)MB", text)
        ntp = re.search(r"NTP:([\d.]+)ms/([+-][\d.]+)ppm", text)
        senders = re.search(r"(\d+)/(\d+)Acfts", text)
        rf = re.search(r"RF:([+-]\d+)([+-][\d.]+)ppm", text)
        assert cpu and ram and ntp and senders and rf
        assert row.cpu_load == float(cpu.group(1))
        assert (row.ram_free_mb, row.ram_total_mb) == (float(ram.group(1)), float(ram.group(2)))
        assert (row.ntp_offset_ms, row.ntp_ppm) == (float(ntp.group(1)), float(ntp.group(2)))
        assert row.senders == int(senders.group(2))
        assert row.rf_correction_ppm == pytest.approx(int(rf.group(1)) + float(rf.group(2)))
        temp = re.search(r" ([+-][\d.]+)C ", text)
        assert row.temperature_c == (float(temp.group(1)) if temp else None)
        assert row.name == line.split(">", 1)[0]
        assert row.received_us == 7


def test_deprecated_aprs_receiver_beacons(testdata: Path) -> None:
    lines = [line for _, line in valid_lines(testdata, "APRS_receiver.txt")]
    assert lines
    with_status = 0
    for line in lines:
        record = ogn.parse_line(line)
        if ":>" in line:
            assert isinstance(record, ReceiverStatus), line
            continue
        assert isinstance(record, ReceiverBeacon), line
        # in the deprecated format the position comment carries the status fields
        cpu = re.search(r"CPU:([\d.]+)", line)
        if cpu is None:
            assert record.status is None
        else:
            with_status += 1
            assert record.status is not None
            assert ogn.receiver_status_row(record.status, 0).cpu_load == float(cpu.group(1))
    assert with_status >= 8


def test_weather_beacons(testdata: Path) -> None:
    for _, line in valid_lines(testdata, "OGNDVS_*.txt") + valid_lines(
        testdata, "OGNFNT_Fanet_weather.txt"
    ):
        record = ogn.parse_line(line)
        assert isinstance(record, WeatherBeacon), line
        assert record.wind_direction_deg is not None
        assert 0 <= record.wind_direction_deg <= 360
        fahrenheit = re.search(r" (\d+\.\d)F", line)
        if fahrenheit:
            assert record.temperature_c == pytest.approx((float(fahrenheit.group(1)) - 32) / 1.8)
        else:  # APRS weather: tFFF
            t = re.search(r"t(\d{3})", line)
            assert t is not None
            assert record.temperature_c == pytest.approx((int(t.group(1)) - 32) / 1.8)


def test_server_line() -> None:
    banner = "# aprsc 2.1.14-g5e22b37"
    assert ogn.parse_line(banner) == ServerLine("aprsc 2.1.14-g5e22b37")


# --------------------------------------------------------------------------------------------
# all of them


def test_all_valid_messages_parse_at_least_as_well_as_aprslib(testdata: Path) -> None:
    lines = valid_lines(testdata)
    aprslib_ok = 0
    for _, line in lines:
        try:
            aprslib.parse(line)
            aprslib_ok += 1
        except Exception:
            pass
    results = [(name, line, ogn.parse_line(line)) for name, line in lines]
    failures = [(name, r.reason, line) for name, line, r in results if isinstance(r, Rejected)]
    ours = len(lines) - len(failures)
    assert aprslib_ok == 375
    # every one, Wingman's `id07N0ABC7A39971` included (test_ogn_fields.py)
    assert failures == []
    assert ours == len(lines) > aprslib_ok


def test_fast_path_equals_aprslib_path_on_every_real_line(testdata: Path) -> None:
    lines = [line for _, line in valid_lines(testdata)]
    lines += replay_lines(testdata, REPLAY) + replay_lines(testdata, STATIONARY)
    for line in lines:
        assert ogn.parse_line(line) == ogn.parse_line(line, fast=False), line


# --------------------------------------------------------------------------------------------
# bad input


def _check_rejected_or_record(line: str) -> None:
    result = ogn.parse_line(line)
    if isinstance(result, Rejected):
        assert result.reason
    else:
        assert isinstance(
            result,
            AircraftBeacon
            | ReceiverBeacon
            | ReceiverStatus
            | AircraftStatus
            | WeatherBeacon
            | ServerLine,
        )


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    _check_rejected_or_record(text)


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _check_rejected_or_record(data.decode("utf-8", errors="replace"))


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_garbage_after_a_valid_header_is_rejected_not_raised(body: str) -> None:
    result = ogn.parse_line("FLRDDA5BA>OGFLR,qAS,LFMX:" + body)
    if isinstance(result, Rejected):
        assert result.reason


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_real_lines_never_raise(testdata: Path, data: st.DataObject) -> None:
    line = data.draw(st.sampled_from([line for _, line in valid_lines(testdata)]))
    at = data.draw(st.integers(min_value=0, max_value=len(line) - 1))
    cut = data.draw(st.integers(min_value=0, max_value=5))
    insert = data.draw(st.text(max_size=5))
    mutated = line[:at] + insert + line[at + cut :]
    _check_rejected_or_record(mutated)
    # and the two paths still agree on whatever the mutation produced
    assert ogn.parse_line(mutated) == ogn.parse_line(mutated, fast=False)


def test_protocol_bench_smoke(testdata: Path) -> None:
    from soar.bench import protocols as bench

    rows = bench.run(testdata, seconds=0.01)
    groups = {row.group for row in rows}
    assert {"ogn", "sbs", "beast", "mode s"} <= groups
    for group in groups:
        assert any(row.baseline for row in rows if row.group == group)
    measured = [row for row in rows if not row.note.startswith("not available")]
    assert all(row.rate is not None and row.rate > 0 for row in measured)
    table = bench.format_table(rows)
    assert table.count("\n") == len(rows) + 1
    assert "aprslib.parse alone" in table
