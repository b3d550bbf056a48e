"""A real soar — pipeline, PostgreSQL, hypercorn — fed one replay of real captures, for the
flight log and REST tests.

The replay (one file, receive-time order, one shard so one receive clock) is built from:

1. `ognmonitoring-takeoff-koenigsdorf-20240329.csv`: FLRD01CFE standing at Koenigsdorf, then
   a winch launch (3,445 fpm 6 s after the roll) at 10:08; the capture ends there, so the
   flight is timed out when the clock moves on (an hour later, by the next capture).
2. `ognmonitoring-delayed-flood-koenigsdorf-20240329.csv`: 7 gliders at 15:55-15:59:
   FLRDDDE8E winch-launched, FLRDD95BF landing (first seen on final). That one,
   `STEALTH_GLIDER`, is sent with the stealth bit set (0x80 of the id field), as its FLARM
   would when the pilot chooses stealth.
3. `soar-flight-descended-out-of-range-then-took-off.txt`: TRA24U landed out of coverage at
   EHAM (projected), TRA34Z took off out of coverage from EHAM (projected) and landed at LEBL.

The CSV rows are written back as the APRS lines their receiver sent (`tests/tracking/flood.py`)
with their recorded receive times; nothing is made up. A device database gives three of the
gliders registrations, one of them the stealth one's.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from soar.config import load_settings
from soar.ddb import import_ddb
from soar.pipeline import Pipeline, SourceSpec
from soar.records import AddressType, aircraft_id
from soar.replay import CaptureSource
from soar.supervisor import RestartPolicy
from soar.web.app import WebContext, create_app
from tests.support import ddb_device, fetch, fetch_json, write_ddb
from tests.tracking.flood import FLOOD, aprs_line

TAKEOFF_CSV = "ogn/ognmonitoring-takeoff-koenigsdorf-20240329.csv"
OGN_TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"

TIMED_OUT_WINCH = "FLRD01CFE"  # winch launch, then nothing: timed out
FLOOD_WINCH = "FLRDDDE8E"
STEALTH_GLIDER = "FLRDD95BF"  # first seen on final, lands at 15:56:25
TRACE = 0x48683E  # ICA48683E, the airliner

#: registrations the test's device database gives
REGISTRATIONS = {TIMED_OUT_WINCH: "D-KOEN", FLOOD_WINCH: "D-KXYZ", STEALTH_GLIDER: "D-STLH"}


def flarm_id(callsign: str) -> int:
    return aircraft_id(AddressType.FLARM, int(callsign[3:], 16))


TRACE_ID = aircraft_id(AddressType.ICAO, TRACE)


def _iso(text: str) -> str:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _stealthy(line: str) -> str:
    """The same beacon with the stealth bit (0x80) of its `idXX` flags set."""
    head, sep, rest = line.partition(" !W")
    w, _, tail = rest.partition(" id")
    flags = int(tail[:2], 16) | 0x80
    return f"{head}{sep}{w} id{flags:02X}{tail[2:]}"


def replay_lines(testdata: Path) -> list[str]:
    lines: list[tuple[str, str]] = []
    for name in (TAKEOFF_CSV, FLOOD):
        with (testdata / name).open(newline="") as f:
            for row in csv.DictReader(f):
                line = aprs_line(row)
                if row["src_call"] == STEALTH_GLIDER:
                    line = _stealthy(line)
                lines.append((_iso(row["ts_received"]), line))
    lines.sort(key=lambda pair: pair[0])
    out = [f"{at} {line}" for at, line in lines]
    out += (testdata / OGN_TRACE).read_text().splitlines()
    return out


@dataclass
class RunningSoar:
    host: str
    db_url: str
    pipeline: Pipeline

    async def get(self, path: str) -> tuple[int, str]:
        """GET `path` over HTTP: its status and body text, an error status included."""
        code, body = await fetch(f"http://{self.host}{path}")
        return code, body.decode()

    async def get_json(self, path: str, status: int = 200) -> Any:
        """The JSON body of GET `path`, which must answer `status`."""
        return await fetch_json(f"http://{self.host}{path}", status)


async def start_soar(
    nursery: trio.Nursery, testdata: Path, tmp_path: Path, db_url: str
) -> RunningSoar:
    """Replay the captures through a real pipeline into `db_url`, served on 127.0.0.1; returns
    once every line is stored (the replay's sources have ended and the writers drained)."""
    ddb = write_ddb(tmp_path / "ddb.json", [
        ddb_device("F", callsign[3:], aircraft_model="ASK 21", registration=registration,
                   cn=registration[-2:], aircraft_type="1")
        for callsign, registration in REGISTRATIONS.items()
    ])
    await trio.to_thread.run_sync(import_ddb, db_url, ddb)
    capture = tmp_path / "flight-log-replay.txt"
    capture.write_text("\n".join(replay_lines(testdata)) + "\n")
    settings = load_settings(environ={}, overrides={
        "data_dir": str(tmp_path / "var"), "shards": 1,
        "live_addr": f"inproc://soar-flight-log-{id(tmp_path)}"})
    source = CaptureSource(capture)
    pipeline = Pipeline(settings, db_url, sources=[
        SourceSpec("replay", source.protocol, source.run, RestartPolicy.TEMPORARY)])
    await pipeline.open()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    app = create_app(WebContext(pool=pipeline.pool))
    binds = await nursery.start(partial(serve, app, config, shutdown_trigger=trio.sleep_forever))
    await pipeline.run()
    return RunningSoar(binds[0].split("://", 1)[1], db_url, pipeline)
