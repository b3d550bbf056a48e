"""OGN fields soar once read differently from independent decoders (issue 15, point 5).

Oracles: the `ogn_parser` package (ogn-parser-rs, Rust) for the fields it reads, python-ogn-client
and the OGN tracker firmware for units (quoted where used). Every case runs on real lines from
../shared/data/ogn; where the captures hold no real line for a case, the nearest real line is
modified minimally and the test says so.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import ogn_parser
import pytest

from soar.protocols import ogn
from soar.protocols.ogn import AircraftBeacon, ReceiverStatus, WeatherBeacon
from soar.records import AddressType, AircraftType, Rejected

FULL_FEED = "svoop-ogn-full-feed-5000-20170419.txt"
EDGE_CASES = "edge-cases-from-parser-tests.txt"
REPLAY = "soar-flight-descended-out-of-range-then-took-off.txt"


def real_lines(testdata: Path) -> list[str]:
    """Every APRS line in the OGN captures (replay-format files without their receive time)."""
    ogn_dir = testdata / "ogn"
    out: list[str] = []
    for path in sorted(ogn_dir.rglob("*.txt")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if path.name.startswith("soar-"):
                line = line.split(" ", 1)[1]
            if line.strip():
                out.append(line)
    return out


def lines_of(testdata: Path, name: str) -> list[str]:
    return (testdata / "ogn" / name).read_text().splitlines()


def the_line(testdata: Path, name: str, containing: str) -> str:
    found = [line for line in lines_of(testdata, name) if containing in line]
    assert len(found) == 1, (name, containing, found)
    return found[0]


def position_of(line: str) -> dict[str, object]:
    """ogn_parser's reading of a position line; empty where it refuses the line.

    It refuses the replay capture's doubled backslash and 2014's registration callsigns (PH-844).
    """
    packet = ogn_parser.parse(line)[0].get("aprs_packet", {})
    position = packet.get("position", {})
    assert isinstance(position, dict)
    return position


def both_paths(line: str) -> ogn.OgnRecord:
    """The record, after checking the fast path and the aprslib path agree on it."""
    record = ogn.parse_line(line)
    assert record == ogn.parse_line(line, fast=False), line
    return record


# --------------------------------------------------------------------------------------------
# turn rate


def test_rot_is_read_as_sent_and_given_as_three_degrees_per_second_per_unit(
    testdata: Path,
) -> None:
    checked = compared = 0
    for line in real_lines(testdata):
        sent = re.search(r" ([+-]?\d+(?:\.\d+)?)rot(?: |$)", line)
        record = ogn.parse_line(line)
        if sent is None or not isinstance(record, AircraftBeacon):
            continue
        assert record.rot == float(sent.group(1)), line
        if oracle := position_of(line):
            # ogn_parser goes through f32: 1.2 comes back as 1.2000001
            assert record.rot == pytest.approx(float(str(oracle["turn_rate"])), abs=1e-4), line
            compared += 1
        # `rot` is half-turns per minute: python-ogn-client's HPM_TO_DEGS = 180 / 60; the OGN
        # tracker firmware writes TurnRate[0.1°/s] / 3 as `rot` and reads `rot` back times 3.
        assert ogn.to_fix(record, 0, "").turn_rate == pytest.approx(float(sent.group(1)) * 3)
        checked += 1
    assert checked > 4000
    assert compared > 3000


def test_rot_unit_agrees_with_the_track_change_of_real_turns(testdata: Path) -> None:
    # Consecutive beacons (1 to 4 s apart by their own time) of aircraft in a steady turn: the
    # heading change they show against the turn rate soar reports. Each beacon arrives through
    # several receivers; keyed by time, one of each is kept.
    beacons: dict[int, dict[int, AircraftBeacon]] = defaultdict(dict)
    for line in lines_of(testdata, FULL_FEED):
        b = ogn.parse_line(line)
        if isinstance(b, AircraftBeacon) and b.packet_time and b.track_deg is not None:
            t = b.packet_time
            beacons[b.address][int(t[:2]) * 3600 + int(t[2:4]) * 60 + int(t[4:])] = b
    ratios = []
    for by_time in beacons.values():
        times = sorted(by_time)
        for t0, t1 in itertools.pairwise(times):
            b0, b1 = by_time[t0], by_time[t1]
            assert b0.rot is not None and b1.rot is not None
            steady = min(abs(b0.rot), abs(b1.rot)) >= 3 and (b0.rot > 0) == (b1.rot > 0)
            if not (1 <= t1 - t0 <= 4 and steady and (b0.ground_speed_kt or 0) >= 20):
                continue
            assert b0.track_deg is not None and b1.track_deg is not None
            seen = ((b1.track_deg - b0.track_deg + 180) % 360 - 180) / (t1 - t0)
            reported = [ogn.to_fix(b, 0, "").turn_rate for b in (b0, b1)]
            assert reported[0] is not None and reported[1] is not None
            ratios.append(seen / ((reported[0] + reported[1]) / 2))
    assert len(ratios) > 300
    # Measured here: 1.33 (the turns are a third faster than 3°/s per unit says); with the old
    # 1.5°/s per unit it was 2.67, and a factor of 6 would give 0.67.
    assert 1.0 <= statistics.median(ratios) < 2.0


# --------------------------------------------------------------------------------------------
# packet time


def test_a_time_with_90_seconds_is_rejected_as_ogn_parser_does(testdata: Path) -> None:
    bad = [line for line in lines_of(testdata, EDGE_CASES) if ":/194490h" in line]
    assert len(bad) == 2  # an aircraft and a receiver beacon
    for line in bad:
        record = both_paths(line)
        assert isinstance(record, Rejected), line
        assert record.reason == ogn.REASON_TIME
        assert record.detail == {"time": "194490h"}
        assert "InvalidTimestamp" in ogn_parser.parse(line)[0]["parser_error"]


def test_every_real_line_agrees_with_ogn_parser_on_whether_its_time_is_valid(
    testdata: Path,
) -> None:
    lines = real_lines(testdata)
    ours = {
        line for line in lines if getattr(ogn.parse_line(line), "reason", "") == ogn.REASON_TIME
    }
    theirs = {
        line
        for line in lines
        if "InvalidTimestamp" in ogn_parser.parse(line)[0].get("parser_error", {})
    }
    assert ours == theirs
    assert len(ours) == 2


@pytest.mark.parametrize(
    ("time", "valid"),
    [("235959h", True), ("000000h", True), ("240000h", False), ("236000h", False),
     ("235960h", False), ("301046z", True), ("321046z", False), ("302446z", False)],
)  # fmt: skip
def test_time_limits_on_a_real_line(testdata: Path, time: str, valid: bool) -> None:
    # No real line sits on these limits: the edge cases' `301046z` beacon with its time replaced.
    real = the_line(testdata, EDGE_CASES, ":/301046z")
    line = real.replace("301046z", time)
    record = both_paths(line)
    if valid:
        assert isinstance(record, AircraftBeacon)
        assert record.packet_time == (time[:6] if time.endswith("h") else None)
    else:
        assert isinstance(record, Rejected)
        assert record.reason == ogn.REASON_TIME


def test_a_status_line_with_an_impossible_time_is_rejected(testdata: Path) -> None:
    # No real status line has a bad time: the edge cases' receiver status, seconds set to 90.
    real = the_line(testdata, EDGE_CASES, "EPZR>APRS,")
    assert isinstance(ogn.parse_line(real), ReceiverStatus)
    line = real.replace(">093456h", ">093490h")
    record = ogn.parse_line(line)
    assert isinstance(record, Rejected)
    assert (record.reason, record.detail) == (ogn.REASON_TIME, {"time": "093490h"})


# --------------------------------------------------------------------------------------------
# header and address


def test_a_ten_character_tocall_parses(testdata: Path) -> None:
    line = the_line(testdata, EDGE_CASES, "WTFDSTCALL")
    record = both_paths(line)
    assert isinstance(record, ReceiverStatus)
    assert record.header.tocall == "WTFDSTCALL" == ogn_parser.parse(line)[0]["aprs_packet"]["to"]
    assert (record.packet_time, record.comment) == ("093456", "this is a comment")


def test_wingman_beacon_parses(testdata: Path) -> None:
    line = the_line(testdata, "valid_messages/OGNWMN_Wingman.txt", ">OGNWMN,")
    # The file's own note: the id is the flags, the user's callsign (the sender name, N0ABC7)
    # and the 6 characters generated for the device.
    token = line.rsplit(" ", 1)[1]
    name = line.split(">", 1)[0]
    assert token == "id" + token[2:4] + name + token[-6:]
    beacon = both_paths(line)
    assert isinstance(beacon, AircraftBeacon)
    flags = int(token[2:4], 16)
    assert beacon.address == int(token[-6:], 16) == 0xA39971
    assert beacon.address_type is [*AddressType][flags % 4] is AddressType.OGN
    assert beacon.aircraft_type is AircraftType((flags // 4) % 16) is AircraftType.GLIDER
    assert (beacon.stealth, beacon.no_track, beacon.comment) == (False, False, "")
    assert (beacon.altitude_ft, beacon.ground_speed_kt, beacon.track_deg) == (1624.0, 0.0, None)
    fix = ogn.to_fix(beacon, 1, "test")
    assert (fix.address, fix.address_type) == (0xA39971, AddressType.OGN)


def test_a_callsign_id_of_another_sender_is_not_an_address(testdata: Path) -> None:
    # Modified real line: the Wingman beacon from another sender name than the one in its id.
    line = the_line(testdata, "valid_messages/OGNWMN_Wingman.txt", ">OGNWMN,")
    record = both_paths(line.replace("N0ABC7>", "N0ABC8>"))
    assert isinstance(record, Rejected)
    assert record.reason == ogn.REASON_NO_ADDRESS


# --------------------------------------------------------------------------------------------
# course and speed


def test_pureglide_decimal_course_keeps_course_and_speed(testdata: Path) -> None:
    line = the_line(testdata, EDGE_CASES, "Eg166.56186289668/018/")
    beacon = both_paths(line)
    assert isinstance(beacon, AircraftBeacon)
    extension = line.split("Eg", 1)[1].split("/A=", 1)[0]  # "166.56186289668/018"
    course, speed = extension.split("/")
    assert beacon.track_deg == float(course)
    assert beacon.ground_speed_kt == float(int(speed))
    assert beacon.altitude_ft == 2753.0
    assert beacon.comment == ""  # nothing of the extension is left over
    assert (beacon.address, beacon.gps_accuracy) == (0x64020B, (2, 3))
    fix = ogn.to_fix(beacon, 0, "")
    assert (fix.track_deg, fix.ground_speed_kt) == (float(course), 18.0)


def test_pureglide_integer_course_is_unchanged(testdata: Path) -> None:
    for line in lines_of(testdata, "valid_messages/OGNPUR_PureGlide.txt"):
        if not line.startswith("PUR"):
            continue
        beacon = both_paths(line)
        assert isinstance(beacon, AircraftBeacon)
        position = position_of(line)
        assert (beacon.track_deg, beacon.ground_speed_kt) == (
            float(position["course"]),  # type: ignore[arg-type]
            float(position["speed"]),  # type: ignore[arg-type]
        )


# --------------------------------------------------------------------------------------------
# FANET weather


def fanet_weather_lines(testdata: Path) -> list[str]:
    return [
        line
        for line in real_lines(testdata)
        if ">OGNFNT," in line and re.search(r"[EW]_(\d{3}|\.{3})/", line)
    ]


def test_fanet_wind_and_gust_are_knots_as_sent(testdata: Path) -> None:
    lines = fanet_weather_lines(testdata)
    with_wind = 0
    for line in lines:
        record = both_paths(line)
        assert isinstance(record, WeatherBeacon), line
        position = position_of(line)
        sent = re.search(r"_(\d{3})/(\d{3})g(\d{3})", line)
        if sent is None:  # `.../...g...`: the station sent no wind
            assert (record.wind_speed_kt, record.wind_gust_kt) == (None, None)
            assert "wind_speed" not in position
            continue
        with_wind += 1
        # knots, as python-ogn-client reads them (wind_speed * KNOTS_TO_MS); ogn_parser gives
        # the numbers as sent
        assert record.wind_direction_deg == float(sent.group(1)) == position["wind_direction"]
        assert record.wind_speed_kt == float(sent.group(2)) == position["wind_speed"]
        assert record.wind_gust_kt == float(sent.group(3)) == position["gust"]
    assert with_wind >= 7


def test_fanet_calm_is_zero_knots_not_unknown(testdata: Path) -> None:
    # No real FANET line reports calm: a real one with its wind set to 000/000g000.
    real = the_line(testdata, "valid_messages/OGNFNT_Fanet_weather.txt", "FNT0828B8")
    line = real.replace("_152/001g002", "_000/000g000")
    record = both_paths(line)
    assert isinstance(record, WeatherBeacon)
    assert (record.wind_direction_deg, record.wind_speed_kt, record.wind_gust_kt) == (0, 0, 0)


def test_fanet_wind_without_a_timestamp_is_knots_too(testdata: Path) -> None:
    # No real FANET weather line lacks its timestamp: a real one with `/hhmmssh` made `!`, the
    # position form aprslib alone reads.
    real = the_line(testdata, "valid_messages/OGNFNT_Fanet_weather.txt", "FNT08DD20")
    line = real.replace(":/205909h", ":!")
    record = both_paths(line)
    assert isinstance(record, WeatherBeacon)
    assert record.packet_time is None
    assert (record.wind_direction_deg, record.wind_speed_kt, record.wind_gust_kt) == (78, 3, 8)


# --------------------------------------------------------------------------------------------
# squawk and flight level


def adsb_line(testdata: Path) -> str:
    return the_line(testdata, "valid_messages/OGADSB_ADSB.txt", "/142346h4034.03N")


@pytest.mark.parametrize("token", ["Sq7700", "sq1200", "SQ0041"])
def test_squawk_is_parsed(testdata: Path, token: str) -> None:
    # No real line carries a squawk: the nearest, a real ADS-B relay, with the token appended.
    assert not any(re.search(r" [Ss][Qq]\d", line) for line in real_lines(testdata))
    line = adsb_line(testdata).rstrip() + " " + token
    beacon = both_paths(line)
    assert isinstance(beacon, AircraftBeacon)
    assert beacon.squawk == token[2:]
    assert token not in beacon.comment
    assert ogn.to_fix(beacon, 0, "").squawk == token[2:]


@pytest.mark.parametrize("token", ["sq7780", "Sq770", "sq12000"])
def test_a_squawk_that_is_not_four_octal_digits_stays_in_the_comment(
    testdata: Path, token: str
) -> None:
    line = adsb_line(testdata).rstrip() + " " + token
    beacon = both_paths(line)
    assert isinstance(beacon, AircraftBeacon)
    assert beacon.squawk is None
    assert beacon.comment.split()[-1] == token


def test_flight_level_is_pressure_altitude_on_every_real_line(testdata: Path) -> None:
    checked = compared = 0
    for line in real_lines(testdata):
        sent = re.search(r" FL(\d+(?:\.\d+)?)(?: |$)", line)
        beacon = ogn.parse_line(line)
        if sent is None or not isinstance(beacon, AircraftBeacon):
            continue
        assert beacon.flight_level == float(sent.group(1)), line
        # hundreds of feet, exactly: FL020.11 is 2,011 ft, not 2011.0000000000002
        assert beacon.pressure_altitude_ft == float(Decimal(sent.group(1)) * 100), line
        assert "FL" not in beacon.comment
        if oracle := position_of(line):
            assert beacon.flight_level == pytest.approx(
                float(str(oracle["flight_level"])), abs=1e-3
            )
            compared += 1
        checked += 1
    assert checked > 1000  # the replay capture alone has 956
    assert compared > 600


@pytest.mark.parametrize(
    ("token", "feet"), [("FL0350.25", 35025.0), ("FL1234.56", 123456.0), ("FL-001.50", -150.0)]
)
def test_unusual_flight_levels_are_parsed(testdata: Path, token: str, feet: float) -> None:
    # No real line has a four-digit or negative FL: a real OGNTTN line with its FL replaced.
    real = the_line(testdata, "valid_messages/OGNTTN_TheThingsNetwork.txt", "/181002h")
    line = real.replace("FL020.64", token)
    beacon = both_paths(line)
    assert isinstance(beacon, AircraftBeacon)
    assert beacon.pressure_altitude_ft == feet
    assert "FL" not in beacon.comment
    assert beacon.flight_level == pytest.approx(
        float(position_of(line)["flight_level"]),  # type: ignore[arg-type]
        abs=1e-3,
    )
