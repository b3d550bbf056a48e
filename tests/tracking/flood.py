"""The Koenigsdorf delayed flood (ogn/ognmonitoring-delayed-flood-koenigsdorf-20240329.csv) as the
APRS lines its receiver sent.

211 real beacons of 7 gliders that the receiver `Koenigsdf` delivered as a 5-minute backlog
within 1.7 s (data README: one landing, one takeoff). The CSV is the stored form of each
beacon (ogn-monitoring's `POINT(lon lat)` split into latitude and longitude; altitude ft,
speed kt, climb fpm, turn rate as received; `receiver_time` the beacon's `hhmmssh`;
`ts_beacon` the time ogn-monitoring took from it; `ts_received` its server receive time).
`aprs_line` writes each back in the OGN position format it came in: the coordinates in
hundredths of minutes plus the `!Wab!` third decimal, the id token from the aircraft type
and the sender's FLARM address.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

FLOOD = "ogn/ognmonitoring-delayed-flood-koenigsdorf-20240329.csv"
AIRPORTS = "ogn/ognpython-test-airports.csv"
LANDING_GLIDER = "FLRDD95BF"  # lands at 15:58 (speed 28 kt → 0)
TAKEOFF_GLIDER = "FLRDDDE8E"  # winch launch at 15:55:41 (speed 0 → 26 → 48 kt)


@dataclass(frozen=True)
class FloodBeacon:
    line: str
    received_us: int  # ts_received: when the backlog reached the server
    beacon_us: int  # ts_beacon: the beacon's own time, as ogn-monitoring read it
    sender: str


def _us(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1_000_000)


def _angle(value: float, width: int, positive: str, negative: str) -> tuple[str, str]:
    """(`DDMM.mm` + hemisphere, the `!Wab!` digit) of one coordinate."""
    hemisphere = positive if value >= 0 else negative
    value = abs(value)
    degrees = int(value)
    thousandths = round((value - degrees) * 60_000)
    if thousandths == 60_000:
        degrees, thousandths = degrees + 1, 0
    hundredths, third = divmod(thousandths, 10)
    return f"{degrees:0{width}d}{hundredths // 100:02d}.{hundredths % 100:02d}{hemisphere}", str(third)


def aprs_line(row: dict[str, str]) -> str:
    lat, lat_digit = _angle(float(row["latitude"]), 2, "N", "S")
    lon, lon_digit = _angle(float(row["longitude"]), 3, "E", "W")
    address = row["src_call"][3:]
    address_type = {"FLR": 2, "ICA": 1, "OGN": 3}.get(row["src_call"][:3], 0)
    flags = (int(row["aircraft_type"]) << 2) | address_type
    return (
        f"{row['src_call']}>{row['dst_call']},qAS,{row['receiver']}:/{row['receiver_time']}"
        f"{lat}{row['symbol_table']}{lon}{row['symbol_code']}"
        f"{int(row['course']):03d}/{int(row['speed']):03d}/A={int(row['altitude']):06d}"
        f" !W{lat_digit}{lon_digit}! id{flags:02X}{address}"
        f" {int(row['climb_rate']):+04d}fpm {float(row['turn_rate']):+.1f}rot"
    )


def flood_beacons(testdata: Path) -> list[FloodBeacon]:
    """In the file's order: by sender, then receive time (each sender's in beacon order)."""
    with (testdata / FLOOD).open(newline="") as f:
        return [
            FloodBeacon(aprs_line(row), _us(row["ts_received"]), _us(row["ts_beacon"]),
                        row["src_call"])
            for row in csv.DictReader(f)
        ]


def koenigsdorf_airports(testdata: Path) -> list[tuple[str, float, float, float]]:
    """(name, lat, lon, elevation ft) of the test airports (ogn-python's fixture)."""
    with (testdata / AIRPORTS).open(newline="") as f:
        return [
            (row["name"], float(row["latitude"]), float(row["longitude"]),
             float(row["altitude_m"]) / 0.3048)
            for row in csv.DictReader(f)
        ]
