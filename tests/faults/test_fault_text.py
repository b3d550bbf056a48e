"""Hostile text in the feeds (issue 18, item 5): NUL and other control characters, bytes that are
not UTF-8. PostgreSQL refuses a NUL in a text value, and the writer refused the whole row: one
NUL in an SBS callsign cost every fix, aircraft and flight row of that aircraft; 2,500 APRS-IS
`#` lines with a NUL logged 2,500 error lines. The decode step cleans text fields, counts what
it cleaned, and logs it at most once a minute per field and kind."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soar.decode import TEXT_CLEANED
from soar.ingest.capture import iter_capture
from soar.pipeline import counter_total
from soar.records import AddressType, Protocol, aircraft_id
from soar.store.writer import ROWS_REJECTED
from tests.faults.faultkit import (
    Capture,
    Reference,
    assert_same_as_reference,
    fault_settings,
    replay_capture,
    stored,
)
from tests.ingest.ingest_servers import OGN_TRACE, SBS_SAMPLE

#: aircraft whose every callsign gets control characters (cleaned: the callsign as sent)
CONTROL_AIRCRAFT = 6
#: aircraft whose every callsign gets a byte that is not UTF-8 (cleaned: U+FFFD in its place)
INVALID_AIRCRAFT = 3
#: the real APRS-IS server line, a NUL in it, repeated this many times among the trace's lines
SERVER_LINES = 2500
HANDFUL = 15


def _sample(name: str, labels: dict[str, str]) -> float:
    for metric in TEXT_CLEANED.collect():
        for s in metric.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def _cleaned(kind: str) -> float:
    return _sample("soar_messages_text_cleaned_total",
                   {"protocol": "sbs", "field": "callsign", "kind": kind})


def _spoil_sbs(testdata: Path, out: Path) -> tuple[dict[int, str], int, int]:
    """The SBS capture with control characters in every callsign of CONTROL_AIRCRAFT aircraft
    and a non-UTF-8 byte in every callsign of INVALID_AIRCRAFT others (those with two positions
    and two callsign messages, in file order). Returns {aircraft id: the callsign expected
    stored} and how many lines got control characters / invalid bytes."""
    with gzip.open(testdata / SBS_SAMPLE, "rb") as f:
        lines = f.read().splitlines()
    callsigns: dict[bytes, list[int]] = {}
    positions: dict[bytes, int] = {}
    for index, line in enumerate(lines):
        fields = line.split(b",")
        if fields[1] == b"1" and len(fields[10]) >= 4:
            callsigns.setdefault(fields[4], []).append(index)
        elif fields[1] == b"3" and fields[14]:
            positions[fields[4]] = positions.get(fields[4], 0) + 1
    chosen = [ident for ident, at in callsigns.items()
              if len(at) >= 2 and positions.get(ident, 0) >= 2
              and len({lines[i].split(b",")[10] for i in at}) == 1]
    assert len(chosen) >= CONTROL_AIRCRAFT + INVALID_AIRCRAFT
    expected: dict[int, str] = {}
    control_lines = invalid_lines = 0
    for n, ident in enumerate(chosen[: CONTROL_AIRCRAFT + INVALID_AIRCRAFT]):
        control = n < CONTROL_AIRCRAFT
        for i in callsigns[ident]:
            fields = lines[i].split(b",")
            cs = fields[10]
            if control:
                # NUL (what PostgreSQL refuses), BEL and an ESC at the end
                fields[10] = cs[:2] + b"\x00" + cs[2:-1] + b"\x07" + cs[-1:] + b"\x1b"
                control_lines += 1
            else:
                fields[10] = cs[:2] + b"\xff" + cs[2:]
                invalid_lines += 1
            lines[i] = b",".join(fields)
        cs_text = lines[callsigns[ident][0]].split(b",")[10]
        expected[aircraft_id(AddressType.ICAO, int(ident, 16))] = (
            cs_text.replace(b"\x00", b"").replace(b"\x07", b"").replace(b"\x1b", b"").decode()
            if control else cs_text.decode("utf-8", errors="replace")
        )
    out.write_bytes(b"\n".join(lines) + b"\n")
    return expected, control_lines, invalid_lines


@pytest.mark.time_limit(240)
async def test_sbs_callsigns_with_nul_and_invalid_utf8_lose_no_row(
    testdata: Path, reference: Reference, db_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "sbs-spoiled.txt"
    expected, control_lines, invalid_lines = _spoil_sbs(testdata, path)
    capture = Capture(Protocol.SBS, path, tuple(iter_capture(path)))
    control_before, invalid_before = _cleaned("control"), _cleaned("invalid_utf8")
    rejected_before = counter_total(ROWS_REJECTED)

    summary = await replay_capture(fault_settings(tmp_path / "var"), db_url, capture)

    got = stored(db_url)
    # every fix of the capture stored exactly once, the spoiled aircraft's included
    assert_same_as_reference(got, reference, [Protocol.SBS])
    want = reference.keys(Protocol.SBS)
    for ident in expected:
        mine = {key for key in want if key[0] == ident}
        assert len(mine) >= 2 and mine <= got.fixes[Protocol.SBS]
    assert counter_total(ROWS_REJECTED) == rejected_before, "the database refused rows"
    assert summary["rejects"] == reference.summaries[Protocol.SBS]["rejects"]
    with psycopg.connect(db_url) as conn:
        for table, column in (("fixes", "aircraft_id"), ("aircraft", "id"), ("flights", "aircraft_id")):
            rows = conn.execute(
                f"SELECT {column}, array_agg(DISTINCT callsign) FROM {table}"
                f" WHERE {column} = ANY(%s) GROUP BY {column}", (list(expected),)
            ).fetchall()
            assert {ident: cs for ident, cs in rows} == {i: [cs] for i, cs in expected.items()}, table
        row = conn.execute("SELECT count(*) FROM fixes WHERE callsign ~ '[[:cntrl:]]'").fetchone()
        assert row == (0,)
    assert _cleaned("control") - control_before == control_lines
    assert _cleaned("invalid_utf8") - invalid_before == invalid_lines


def _server_line(testdata: Path) -> str:
    """A real APRS-IS keep-alive line, from the full-feed capture."""
    full_feed = testdata / "ogn" / "svoop-ogn-full-feed-5000-20170419.txt"
    for line in full_feed.read_text().splitlines():
        if line.startswith("# aprsc") and "GMT" in line:
            return line
    raise AssertionError("no keep-alive line in the capture")


@pytest.mark.time_limit(300)
def test_aprs_server_lines_with_nul_log_a_handful_of_lines(
    testdata: Path, reference: Reference, db_url: str, tmp_path: Path
) -> None:
    keepalive = _server_line(testdata)
    spoiled = keepalive.replace(" GMT ", " GMT\x00 ", 1).encode()
    trace = (testdata / OGN_TRACE).read_bytes().splitlines()
    lines: list[bytes] = []
    inserted: set[tuple[bytes, bytes]] = set()
    for index, line in enumerate(trace):
        lines.append(line)
        stamp = line.split(b" ", 1)[0]
        for _ in range(SERVER_LINES // len(trace) + (index < SERVER_LINES % len(trace))):
            lines.append(stamp + b" " + spoiled)
            inserted.add((stamp, spoiled))
    assert sum(line.endswith(spoiled) for line in lines) == SERVER_LINES
    capture = tmp_path / "ogn-with-nul-server-lines.txt"
    capture.write_bytes(b"\n".join(lines) + b"\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    env |= {"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path / "var"),
            "SOAR_LOG_LEVEL": "info", "SOAR_LOG_FORMAT": "json"}
    proc = subprocess.run(
        [sys.executable, "-m", "soar", "replay", str(capture), "--json"],
        env=env, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    log_lines = proc.stderr.splitlines()
    events: list[dict[str, Any]] = [json.loads(line) for line in log_lines]
    assert len(log_lines) <= HANDFUL, "\n".join(log_lines[:40])
    cleaned = [e for e in events if e["event"] == "message.text_cleaned"]
    assert cleaned and cleaned[0]["field"] == "text" and cleaned[0]["kind"] == "control"
    assert cleaned[0]["suppressed"] == 0
    assert not [e for e in events if e["event"] == "store.row_rejected"]

    # the trace's fixes as in the fault-free replay, and every server line stored, cleaned
    assert summary["rejects"] == reference.summaries[Protocol.OGN]["rejects"], summary
    assert_same_as_reference(stored(db_url), reference, [Protocol.OGN])
    with psycopg.connect(db_url) as conn:
        texts = conn.execute("SELECT text, count(*) FROM server_messages GROUP BY text").fetchall()
    assert texts == [(keepalive[1:].strip(), len(inserted))]
