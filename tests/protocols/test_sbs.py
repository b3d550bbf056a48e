"""SBS / BaseStation parsing and accumulation on the real adsbhub capture."""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soar.protocols import sbs
from soar.protocols.sbs import SbsAccumulator, SbsMessage
from soar.records import AddressType, Fix, Protocol, Rejected

SAMPLE = "adsbhub-sbs-sample-20260224.txt.gz"


@pytest.fixture(scope="module")
def sample_lines(testdata: Path) -> list[str]:
    with gzip.open(testdata / "sbs" / SAMPLE, "rt", newline="") as f:
        return f.read().splitlines()


def test_every_line_is_parsed_or_rejected_with_a_reason(sample_lines: list[str]) -> None:
    results = [sbs.parse_line(line) for line in sample_lines]
    assert len(results) == 38_112
    parsed = Counter()
    for result in results:
        if isinstance(result, Rejected):
            assert result.reason
        else:
            assert isinstance(result, SbsMessage)
            parsed[result.msg_type] += 1
    # the counts per transmission type, read independently with the csv module
    expected = Counter(
        int(row[1]) for row in csv.reader(sample_lines) if row[0] == "MSG" and row[1].isdigit()
    )
    assert parsed == expected
    assert sum(parsed.values()) == len(sample_lines)


def test_fields_match_the_csv_columns(sample_lines: list[str]) -> None:
    for line, row in zip(sample_lines, csv.reader(sample_lines), strict=True):
        msg = sbs.parse_line(line)
        assert isinstance(msg, SbsMessage)
        assert msg.icao == int(row[4], 16)
        assert msg.callsign == (row[10].strip() or None)
        assert msg.altitude_ft == (float(row[11]) if row[11] else None)
        assert msg.ground_speed_kt == (float(row[12]) if row[12] else None)
        assert msg.track_deg == (float(row[13]) if row[13] else None)
        assert msg.vertical_rate_fpm == (float(row[16]) if row[16] else None)
        assert (msg.date_generated, msg.time_generated) == (row[6], row[7])
        assert msg.is_on_ground is None  # always empty in this capture


def test_msg3_positions_are_in_range(sample_lines: list[str]) -> None:
    msg3 = [sbs.parse_line(line) for line in sample_lines if line.startswith("MSG,3,")]
    assert msg3
    inside = [
        m
        for m in msg3
        if isinstance(m, SbsMessage)
        and m.lat is not None
        and m.lon is not None
        and -90 <= m.lat <= 90
        and -180 <= m.lon <= 180
    ]
    assert len(inside) >= 0.95 * len(msg3)


def test_hex_ident_not_zero_padded(sample_lines: list[str]) -> None:
    short = [line for line in sample_lines if len(line.split(",")[4]) < 6]
    assert short
    for line in short:
        msg = sbs.parse_line(line)
        assert isinstance(msg, SbsMessage)
        assert msg.icao == int(line.split(",")[4], 16)


def test_accumulator_produces_fixes_with_the_latest_state(sample_lines: list[str]) -> None:
    acc = SbsAccumulator()
    fixes: list[Fix] = []
    last_callsign: dict[int, str] = {}
    last_speed: dict[int, float] = {}
    for i, line in enumerate(sample_lines):
        row = line.split(",")
        icao = int(row[4], 16)
        msg = sbs.parse_line(line)
        assert isinstance(msg, SbsMessage)
        fix = acc.feed(msg, received_us=1_000_000 * i, source="adsbhub")
        if row[10]:
            last_callsign[icao] = row[10]
        if row[12]:
            last_speed[icao] = float(row[12])
        if fix is None:
            continue
        fixes.append(fix)
        assert row[1] == "3"
        assert fix.protocol is Protocol.SBS
        assert fix.address_type is AddressType.ICAO
        assert fix.address == icao
        assert (fix.lat, fix.lon) == (float(row[14]), float(row[15]))
        assert fix.callsign == last_callsign.get(icao)
        assert fix.ground_speed_kt == last_speed.get(icao)
        assert fix.on_ground is None
        assert fix.received_us == 1_000_000 * i
        assert fix.source == "adsbhub"
    distinct = {
        (r[4], r[6], r[7], r[11], r[14], r[15]) for r in csv.reader(sample_lines) if r[1] == "3"
    }
    assert len(fixes) == len(distinct)
    assert sum(1 for f in fixes if f.callsign) > 0.9 * len(fixes)


def test_accumulator_repeated_position_is_not_a_new_fix(sample_lines: list[str]) -> None:
    position = next(line for line in sample_lines if line.startswith("MSG,3,"))
    msg = sbs.parse_line(position)
    assert isinstance(msg, SbsMessage)
    acc = SbsAccumulator()
    assert acc.feed(msg, 1) is not None
    assert acc.feed(msg, 2) is None


def test_accumulator_squawk_ground_state_and_expiry(sample_lines: list[str]) -> None:
    # the capture has no MSG,5/6/2, so those are built from its MSG,3 line
    row = next(line for line in sample_lines if line.startswith("MSG,3,")).split(",")
    squawk = [*row]
    squawk[1], squawk[14], squawk[15], squawk[17], squawk[21] = "6", "", "", "7700", "-1"
    surface = [*row]
    surface[1], surface[7] = "2", "23:59:59.000"
    acc = SbsAccumulator()
    first = sbs.parse_line(",".join(row))
    assert isinstance(first, SbsMessage)
    fix = acc.feed(first, 10)
    assert fix is not None and fix.squawk is None and fix.on_ground is None

    squawk_msg = sbs.parse_line(",".join(squawk))
    assert isinstance(squawk_msg, SbsMessage)
    assert squawk_msg.squawk == "7700" and squawk_msg.is_on_ground is True
    assert acc.feed(squawk_msg, 20) is None

    surface_msg = sbs.parse_line(",".join(surface))
    assert isinstance(surface_msg, SbsMessage)
    fix = acc.feed(surface_msg, 30)
    assert fix is not None and fix.squawk == "7700" and fix.on_ground is True

    assert len(acc) == 1
    assert acc.expire(now_us=30 + 300_000_000) == 0
    assert acc.expire(now_us=31 + 300_000_000) == 1
    assert len(acc) == 0


@pytest.mark.parametrize("kind", ["SEL", "ID", "AIR", "STA", "CLK"])
def test_basestation_bookkeeping_lines_are_rejected_with_a_reason(
    sample_lines: list[str], kind: str
) -> None:
    row = sample_lines[0].split(",")
    row[0] = kind
    result = sbs.parse_line(",".join(row))
    assert isinstance(result, Rejected)
    assert result.reason == sbs.REASON_UNUSED_KIND
    assert result.detail == {"kind": kind}


@pytest.mark.parametrize(
    ("index", "value", "reason"),
    [
        (1, "9", sbs.REASON_TRANSMISSION),
        (4, "1_0", sbs.REASON_ADDRESS),
        (4, "0x1A", sbs.REASON_ADDRESS),
        (4, "1234567", sbs.REASON_ADDRESS),
        (11, "nan", sbs.REASON_VALUE),
        (14, "91.0", sbs.REASON_POSITION),
        (15, "", sbs.REASON_POSITION),
        (18, "2", sbs.REASON_VALUE),
    ],
)
def test_bad_fields_are_rejected(
    sample_lines: list[str], index: int, value: str, reason: str
) -> None:
    row = next(line for line in sample_lines if line.startswith("MSG,3,")).split(",")
    row[index] = value
    result = sbs.parse_line(",".join(row))
    assert isinstance(result, Rejected), result
    assert result.reason == reason


def test_truncated_lines_are_rejected_or_parsed_with_missing_fields_as_none(
    sample_lines: list[str],
) -> None:
    line = next(line for line in sample_lines if line.startswith("MSG,1,"))
    for end in range(len(line) + 1):
        result = sbs.parse_line(line[:end])
        if isinstance(result, SbsMessage):
            assert result.msg_type == 1
        else:
            assert result.reason


def _check(line: str) -> None:
    result = sbs.parse_line(line)
    assert isinstance(result, SbsMessage | Rejected)
    if isinstance(result, Rejected):
        assert result.reason


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    _check(text)


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _check(data.decode("utf-8", errors="replace"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="0123456789-.ABCDEFnaif ,", max_size=8), min_size=20, max_size=24))
def test_msg_lines_with_arbitrary_fields_never_raise(fields: list[str]) -> None:
    _check(",".join(["MSG", "3", *fields]))
