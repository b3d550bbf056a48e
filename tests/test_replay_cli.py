"""`soar replay --json` as a user runs it: one JSON object on stdout, errors as one line."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from soar.protocols import ogn
from tests.support import soar_cli

OGN_TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"
SBS_SAMPLE = "sbs/adsbhub-sbs-sample-20260224.txt.gz"


def test_replay_json_summary(testdata: Path, tmp_path: Path, db_url: str) -> None:
    proc = soar_cli("replay", str(testdata / OGN_TRACE), "--json",
                env={"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)  # the whole of stdout is the one object
    assert {"messages", "fixes", "flights", "rejects"} <= summary.keys()
    # 66 beacons are the same ADS-B report (same own time) heard by a second or third receiver
    assert (summary["messages"], summary["fixes"], summary["flights"], summary["rejects"]) == (
        1183, 1117, 2, 66)
    assert summary["reject_reasons"] == {"duplicate": 66}


def test_replay_of_a_missing_or_unknown_file_is_one_line(tmp_path: Path, db_url: str) -> None:
    env = {"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path)}
    proc = soar_cli("replay", str(tmp_path / "nope.txt"), env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nope.txt" in proc.stderr
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01 this is no capture\n")
    proc = soar_cli("replay", str(junk), env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr


# -- raw APRS-IS captures (no receive-time prefix) -----------------------------------------------

FULL_FEED = "ogn/svoop-ogn-full-feed-5000-20170419.txt"  # `# aprsc` banner; one keep-alive
NO_KEEPALIVE = "ogn/ognpython-OGN_log-20160921.txt"  # no keep-alive line at all


def repeated_beacons(path: Path) -> int:
    """Beacons of an aircraft at a beacon time already seen: the same position heard through
    another receiver, which the tracker stores once."""
    seen: Counter[tuple[object, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        parsed = ogn.parse_line(line)
        if isinstance(parsed, ogn.AircraftBeacon):
            seen[(parsed.address_type, parsed.address, parsed.packet_time)] += 1
    return sum(n - 1 for n in seen.values())


def test_raw_aprs_is_capture_replays_with_keepalive_times(
    testdata: Path, tmp_path: Path, db_url: str
) -> None:
    path = testdata / FULL_FEED
    env = {"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path)}
    proc = soar_cli("replay", str(path), "--json", env=env)  # --format auto: recognised as OGN
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["formats"] == {str(path): "ogn"}
    assert summary["messages"] == 5000 and summary["accepted"] == 5000
    # the only rejects: 954 receptions of a beacon already stored (several receivers heard it)
    assert summary["reject_reasons"] == {"duplicate": repeated_beacons(path)} == {"duplicate": 954}
    assert summary["fixes"] == 4910 - 954
    with psycopg.connect(db_url) as conn:
        count, first, last = conn.execute(
            "SELECT count(*), min(received_at), max(received_at) FROM fixes").fetchone() or ()
        servers = conn.execute("SELECT DISTINCT received_at FROM server_messages").fetchall()
    assert count == summary["fixes"]
    # the beacons' own times on the day of the server's keep-alive (15:23:32 GMT)
    assert (first, last) == (datetime(2017, 4, 19, 15, 19, 31, tzinfo=UTC),
                             datetime(2017, 4, 19, 15, 23, 33, tzinfo=UTC))
    # the banner, the login response and the keep-alive: the keep-alive's server time
    assert servers == [(datetime(2017, 4, 19, 15, 23, 32, tzinfo=UTC),)]


def test_raw_aprs_is_capture_without_keepalive_needs_start(
    testdata: Path, tmp_path: Path, db_url: str
) -> None:
    path = testdata / NO_KEEPALIVE
    env = {"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path)}
    proc = soar_cli("replay", str(path), env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "keep-alive" in proc.stderr and "--start" in proc.stderr
    proc = soar_cli("replay", str(path), "--json", "--start", "2016-09-21T07:00:00Z", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    # the logger's own first line is the one line no parser takes
    assert summary["messages"] == 500 and summary["accepted"] == 499
    with psycopg.connect(db_url) as conn:
        count, first, last = conn.execute(
            "SELECT count(*), min(received_at), max(received_at) FROM fixes").fetchone() or ()
    assert count == summary["fixes"] > 300
    assert datetime(2016, 9, 21, 6, 59, tzinfo=UTC) <= first <= last < datetime(
        2016, 9, 21, 7, 4, tzinfo=UTC)


def test_start_is_refused_for_a_capture_with_its_own_times(
    testdata: Path, tmp_path: Path, db_url: str
) -> None:
    env = {"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path)}
    proc = soar_cli("replay", str(testdata / OGN_TRACE), "--start", "2020-01-01T00:00:00Z", env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--start" in proc.stderr and "records its own" in proc.stderr


# -- nothing accepted: the wrong --format ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "capture", "looks"),
    [("beast", OGN_TRACE, "ogn"), ("sbs", OGN_TRACE, "ogn"), ("ogn", SBS_SAMPLE, "sbs")],
)
def test_replay_with_nothing_accepted_exits_1_and_says_why(
    testdata: Path, tmp_path: Path, db_url: str, fmt: str, capture: str, looks: str
) -> None:
    env = {"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path)}
    proc = soar_cli("replay", str(testdata / capture), "--format", fmt, "--json", env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)  # the summary is still printed, whole
    assert summary["accepted"] == 0 and summary["fixes"] == 0
    last = proc.stderr.strip().splitlines()[-1]
    reason, count = max(summary["reject_reasons"].items(), key=lambda kv: kv[1])
    assert last.startswith("soar: ") and f"rejected as {fmt}" in last
    assert f"most common reason {reason!r} ({count})" in last
    assert last.endswith(f"try --format {looks}")


def test_replay_of_one_good_capture_exits_0(testdata: Path, tmp_path: Path, db_url: str) -> None:
    """The exit status is about nothing accepted, not about some rejects."""
    env = {"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path)}
    proc = soar_cli("replay", str(testdata / "ogn/edge-cases-from-parser-tests.txt"), "--start",
                "2017-01-01T00:00:00Z", "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert 0 < summary["accepted"] < summary["messages"]


# -- the progress bar and the log -----------------------------------------------------------------


def test_log_lines_never_run_into_the_progress_bar(
    testdata: Path, tmp_path: Path, db_url: str
) -> None:
    env = {"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path), "SOAR_LOG_FORMAT": "json"}
    proc = soar_cli("replay", str(testdata / FULL_FEED), "--progress", "always", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bar_draws = log_lines = 0
    for line in proc.stderr.split("\n"):
        # a terminal shows what follows the last carriage return; every piece must be either
        # the bar, blanks that erase it, or one whole log line
        for piece in line.split("\r"):
            if "replay:" in piece and " msg" in piece:
                assert "{" not in piece, piece  # no log line glued to the bar
                bar_draws += 1
            elif piece.strip():
                event = json.loads(piece)  # a whole log line, nothing of the bar in it
                assert "event" in event
                log_lines += 1
    assert bar_draws >= 2 and log_lines >= 5


BEAST_CAPTURE = "adsb/traffic-sample_dump1090-LFBO-20200212.beast"


def test_a_beast_replay_says_which_anchor_its_times_hang_on(
    testdata: Path, tmp_path: Path, db_url: str
) -> None:
    import datetime as dt
    import shutil

    capture = tmp_path / "lfbo.beast"
    shutil.copyfile(testdata / BEAST_CAPTURE, capture)
    mtime = dt.datetime(2020, 2, 12, 10, 15, tzinfo=dt.UTC).timestamp()
    os.utime(capture, (mtime, mtime))
    env = {"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path / "var")}
    proc = soar_cli("replay", str(capture), "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    anchor = json.loads(proc.stdout)["anchors"][str(capture)]
    assert anchor == {"first_frame_at": "2020-02-12T10:15:00Z",
                      "from": "file modification time (no --start)"}
    proc = soar_cli("replay", str(capture), "--start", "2020-02-12T09:00:00Z", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lfbo.beast: first frame at 2020-02-12T09:00:00Z (--start)" in proc.stdout
