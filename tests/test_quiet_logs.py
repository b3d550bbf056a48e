"""A quiet terminal: at level info, a replay and a start print a handful of lines whatever the
number of aircraft and flights; per-aircraft and per-flight events are at debug (their counts
are metrics), so nothing is lost, only kept off the terminal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, sigterm, soar_env, soar_process, wait_ready

# Bounds for a busy machine (replays of 38,000 messages, a start), not measurements.
pytestmark = [pytest.mark.slow, pytest.mark.time_limit(300)]

# The SBS capture is 6,827 aircraft (5,858 flights); the OGN trace, in replay format, adds one
# aircraft that lands, stays silent for hours and takes off again.
SBS = "sbs/adsbhub-sbs-sample-20260224.txt.gz"
OGN = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"
#: start-up and shutdown lines of soar run and its web worker; the thousands of flights add none
HANDFUL = 20
MANY_FLIGHTS = 5000


def _env(db_url: str, data_dir: Path, level: str, **extra: str) -> dict[str, str]:
    return soar_env(SOAR_DATABASE_URL=db_url, SOAR_DATA_DIR=str(data_dir), SOAR_LOG_LEVEL=level,
                    SOAR_LOG_FORMAT="json", **extra)


def _replay(testdata: Path, env: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    proc = subprocess.run(
        [sys.executable, "-m", "soar", "replay", str(testdata / SBS), str(testdata / OGN), "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr.splitlines()


def _events(lines: list[str]) -> list[dict[str, Any]]:
    # Every line is a JSON event: a stray warning or print would be noise too.
    return [json.loads(line) for line in lines]


def test_replay_of_thousands_of_flights_logs_a_handful_of_lines(
    testdata: Path, db_url: str, tmp_path: Path
) -> None:
    summary, lines = _replay(testdata, _env(db_url, tmp_path, "info"))
    assert summary["flights"] > MANY_FLIGHTS, summary  # the test is about many flights
    names = [e["event"] for e in _events(lines)]
    assert len(lines) <= HANDFUL, "\n".join(lines)
    assert names.count("replay.file_done") == 2


def test_per_flight_events_are_at_debug(testdata: Path, db_url: str, tmp_path: Path) -> None:
    summary, lines = _replay(testdata, _env(db_url, tmp_path, "debug"))
    events = _events(lines)
    opened = [e for e in events if e["event"] == "flight.opened"]
    assert all(e["level"] == "debug" for e in opened)
    # one line per new flight (a resumed one is the same flight, not a new one)
    assert sum(e["how"] != "resumed" for e in opened) == summary["flights"] > MANY_FLIGHTS


def test_start_with_thousands_of_open_flights_logs_a_handful_of_lines(
    testdata: Path, db_url: str, tmp_path: Path
) -> None:
    # A replay leaves its flights open (a capture has no "later"); `soar run` takes them back
    # and, on the wall clock, closes every one of them as timed out: thousands of events.
    summary, _lines = _replay(testdata, _env(db_url, tmp_path, "warning"))
    assert summary["flights"] > MANY_FLIGHTS

    port = free_port()
    env = _env(db_url, tmp_path, "info", SOAR_HTTP_ADDR=f"127.0.0.1:{port}")
    with soar_process("run", env=env) as proc:
        wait_ready(f"http://127.0.0.1:{port}", proc, 300)
        out = sigterm(proc, 120)
    assert proc.returncode == 0, out[-3000:]
    lines = out.splitlines()
    events = {e["event"]: e for e in _events(lines)}
    assert events["pipeline.flights_restored"]["flights"] > MANY_FLIGHTS
    assert len(lines) <= HANDFUL, "\n".join(lines)
