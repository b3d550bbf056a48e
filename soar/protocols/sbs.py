"""SBS / BaseStation CSV lines → `SbsMessage`, and per-aircraft accumulation into `Fix`es.

A line is 22 comma-separated fields (`MSG,3,1,1,4CA2D6,1,date,time,date,time,callsign,alt,…`).
Only `MSG` lines carry aircraft data; `SEL`, `ID`, `AIR`, `STA` and `CLK` lines are session
bookkeeping from BaseStation and are recognised and rejected with the reason
`REASON_UNUSED_KIND` (never silently dropped). Empty fields are `None`; the flags are
`-1`/`1` (true) or `0` (false). The hex ident is not zero-padded by every feed (`1012B`).

SBS splits one aircraft's state over several message types (1: callsign, 3: position and
altitude, 4: speed, track and vertical rate, 5/6: squawk …), so a `Fix` needs memory:
`SbsAccumulator`, one per tracking shard, keeps the latest of each per aircraft and emits a
`Fix` on each new position.

A fix's own time is the message's *generated* date and time (`generated_time_us`), read as
UTC; the decoder corrects a feed that writes local time (see `soar.decode`) and falls back to
the receive time when the fields are empty.

May import: soar.protocols.icao_fix, soar.records
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from soar.protocols.icao_fix import icao_fix
from soar.records import Fix, Protocol, Rejected

REASON_EMPTY = "empty line"
REASON_UNUSED_KIND = "unused sbs message kind"
REASON_UNKNOWN_KIND = "unknown sbs message kind"
REASON_FIELDS = "too few sbs fields"
REASON_TRANSMISSION = "bad sbs transmission type"
REASON_ADDRESS = "bad sbs hex ident"
REASON_VALUE = "bad sbs field value"
REASON_POSITION = "sbs position out of range"
REASON_FUTURE = "sbs time in future"

UNUSED_KINDS = frozenset({"SEL", "ID", "AIR", "STA", "CLK"})

# Field indices (0-based) of the BaseStation format.
_F_TRANSMISSION = 1
_F_HEX = 4
_F_DATE_GEN, _F_TIME_GEN, _F_DATE_LOG, _F_TIME_LOG = 6, 7, 8, 9
_F_CALLSIGN, _F_ALTITUDE, _F_SPEED, _F_TRACK, _F_LAT, _F_LON = 10, 11, 12, 13, 14, 15
_F_VRATE, _F_SQUAWK, _F_ALERT, _F_EMERGENCY, _F_SPI, _F_ON_GROUND = 16, 17, 18, 19, 20, 21
_FIELD_NAMES = {
    _F_ALTITUDE: "altitude",
    _F_SPEED: "ground_speed",
    _F_TRACK: "track",
    _F_LAT: "lat",
    _F_LON: "lon",
    _F_VRATE: "vertical_rate",
    _F_ALERT: "alert",
    _F_EMERGENCY: "emergency",
    _F_SPI: "spi",
    _F_ON_GROUND: "is_on_ground",
}
_MIN_FIELDS = _F_HEX + 1
# int(x, 16) alone would also take "0x1", "+1" and "1_0".
_HEX_RE = re.compile(r"[0-9A-Fa-f]{1,6}\Z")


@dataclass(slots=True)
class SbsMessage:
    msg_type: int  # transmission type 1 to 8
    icao: int
    date_generated: str | None = None  # yyyy/mm/dd, as sent
    time_generated: str | None = None  # hh:mm:ss.fff, as sent
    date_logged: str | None = None
    time_logged: str | None = None
    callsign: str | None = None
    altitude_ft: float | None = None
    ground_speed_kt: float | None = None
    track_deg: float | None = None
    lat: float | None = None
    lon: float | None = None
    vertical_rate_fpm: float | None = None
    squawk: str | None = None
    alert: bool | None = None
    emergency: bool | None = None
    spi: bool | None = None
    is_on_ground: bool | None = None


class _BadField(ValueError):
    def __init__(self, index: int, value: str) -> None:
        super().__init__(index, value)
        self.index = index
        self.value = value


def _text(fields: list[str], index: int) -> str | None:
    if index >= len(fields):
        return None
    value = fields[index].strip()
    return value or None


def _number(fields: list[str], index: int) -> float | None:
    if index >= len(fields):
        return None
    raw = fields[index]
    if not raw or raw.isspace():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _BadField(index, raw) from None
    if not math.isfinite(value):
        raise _BadField(index, raw)
    return value


def _flag(fields: list[str], index: int) -> bool | None:
    if index >= len(fields):
        return None
    raw = fields[index].strip()
    if raw == "":
        return None
    if raw in ("-1", "1"):
        return True
    if raw == "0":
        return False
    raise _BadField(index, raw)


def parse_line(line: str) -> SbsMessage | Rejected:
    """One SBS line (terminator optional) → `SbsMessage` or `Rejected`. Never raises."""
    try:
        return _parse_line(line)
    except Exception as exc:  # a parser bug must cost one line, not the feed
        return Rejected(REASON_VALUE, raw=line, detail={"error": f"{type(exc).__name__}: {exc}"})


def _parse_line(line: str) -> SbsMessage | Rejected:
    line = line.rstrip("\r\n")
    if not line.strip():
        return Rejected(REASON_EMPTY, raw=line)
    fields = line.split(",")
    kind = fields[0].strip()
    if kind != "MSG":
        if kind in UNUSED_KINDS:
            return Rejected(REASON_UNUSED_KIND, raw=line, detail={"kind": kind})
        return Rejected(REASON_UNKNOWN_KIND, raw=line, detail={"kind": kind[:16]})
    if len(fields) < _MIN_FIELDS:
        return Rejected(REASON_FIELDS, raw=line, detail={"fields": len(fields)})
    transmission = fields[_F_TRANSMISSION].strip()
    if len(transmission) != 1 or transmission not in "12345678":
        return Rejected(REASON_TRANSMISSION, raw=line, detail={"value": transmission[:16]})
    hex_ident = fields[_F_HEX].strip()
    if _HEX_RE.match(hex_ident) is None:
        return Rejected(REASON_ADDRESS, raw=line, detail={"value": hex_ident[:16]})
    icao = int(hex_ident, 16)
    try:
        msg = SbsMessage(
            msg_type=int(transmission),
            icao=icao,
            date_generated=_text(fields, _F_DATE_GEN),
            time_generated=_text(fields, _F_TIME_GEN),
            date_logged=_text(fields, _F_DATE_LOG),
            time_logged=_text(fields, _F_TIME_LOG),
            callsign=_text(fields, _F_CALLSIGN),
            altitude_ft=_number(fields, _F_ALTITUDE),
            ground_speed_kt=_number(fields, _F_SPEED),
            track_deg=_number(fields, _F_TRACK),
            lat=_number(fields, _F_LAT),
            lon=_number(fields, _F_LON),
            vertical_rate_fpm=_number(fields, _F_VRATE),
            squawk=_text(fields, _F_SQUAWK),
            alert=_flag(fields, _F_ALERT),
            emergency=_flag(fields, _F_EMERGENCY),
            spi=_flag(fields, _F_SPI),
            is_on_ground=_flag(fields, _F_ON_GROUND),
        )
    except _BadField as bad:
        return Rejected(
            REASON_VALUE,
            raw=line,
            detail={"field": _FIELD_NAMES.get(bad.index, str(bad.index)), "value": bad.value[:32]},
        )
    if (msg.lat is None) != (msg.lon is None):
        return Rejected(REASON_POSITION, raw=line, detail={"lat": msg.lat, "lon": msg.lon})
    if (
        msg.lat is not None
        and msg.lon is not None
        and not (-90.0 <= msg.lat <= 90.0 and -180.0 <= msg.lon <= 180.0)
    ):
        return Rejected(REASON_POSITION, raw=line, detail={"lat": msg.lat, "lon": msg.lon})
    return msg


_TIME_RE = re.compile(r"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?\Z")


@lru_cache(maxsize=64)
def _day_us(date: str) -> int | None:
    parts = date.split("/")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    year, month, day = (int(p) for p in parts)
    if not (1970 <= year <= 9999 and 1 <= month <= 12):
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return calendar.timegm((year, month, day, 0, 0, 0)) * 1_000_000


def generated_time_us(msg: SbsMessage) -> int | None:
    """The generated date and time of the message (`2026/02/24`, `14:57:36.000`) in µs since
    the epoch, read as UTC; None when either is missing or is no date or time."""
    if msg.date_generated is None or msg.time_generated is None:
        return None
    day = _day_us(msg.date_generated)
    m = _TIME_RE.match(msg.time_generated)
    if day is None or m is None:
        return None
    hours, minutes, seconds = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if hours > 23 or minutes > 59 or seconds > 59:
        return None
    micros = int((m.group(4) or "").ljust(6, "0"))
    return day + ((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + micros


_QUARTER_HOUR_US = 900_000_000
_ZONE_THRESHOLD_US = 1_800_000_000
_ZONE_SLACK_US = 120_000_000  # a zone's difference is whole quarter hours, give or take a delay
_ZONE_MAX_US = 14 * 3_600_000_000  # UTC-12 to UTC+14
FUTURE_TOLERANCE_US = 10_000_000


class SbsClock:
    """One feed's generated times as UTC: `time_us(msg, received_us) -> int | None`.

    BaseStation and dump1090 write the generated time in the feeder's *local* time. A feed
    whose times are 30 minutes to 14 hours away from their receive times, within 2 minutes of
    a whole number of quarter hours (what every time zone is), is read as in that zone and
    corrected, from its first message on, re-learnt if it changes (daylight saving time).
    A generated time further off than any zone, or none, says nothing: the receive time is
    used. None: a time more than 10 s after its receive time once corrected (rejected by the
    caller, `REASON_FUTURE`).
    """

    __slots__ = ("zone_us",)

    def __init__(self) -> None:
        self.zone_us: int | None = 0  # None: this feed's clock is no clock

    def time_us(self, msg: SbsMessage, received_us: int) -> int | None:
        generated = generated_time_us(msg)
        if generated is None:
            return received_us
        delta = received_us - generated
        if self.zone_us is None or abs(delta - self.zone_us) >= _ZONE_THRESHOLD_US:
            self.zone_us = _zone(delta)
        if self.zone_us is None:
            return received_us
        placed = generated + self.zone_us
        if placed > received_us + FUTURE_TOLERANCE_US:
            return None
        return placed


def _zone(delta_us: int) -> int | None:
    """The time zone (µs to add) that explains a receive - generated difference, or None."""
    if abs(delta_us) < _ZONE_THRESHOLD_US:
        return 0
    zone = round(delta_us / _QUARTER_HOUR_US) * _QUARTER_HOUR_US
    if abs(zone) > _ZONE_MAX_US or abs(delta_us - zone) > _ZONE_SLACK_US:
        return None
    return zone


@dataclass(slots=True)
class _AircraftState:
    last_us: int
    callsign: str | None = None
    altitude_ft: float | None = None
    ground_speed_kt: float | None = None
    track_deg: float | None = None
    vertical_rate_fpm: float | None = None
    squawk: str | None = None
    on_ground: bool | None = None
    last_position: tuple[float, float, float | None, str | None, str | None] | None = None


class SbsAccumulator:
    """Latest SBS state per aircraft; one per tracking shard (not shared, so no locks)."""

    def __init__(self) -> None:
        self._aircraft: dict[int, _AircraftState] = {}

    def __len__(self) -> int:
        return len(self._aircraft)

    def feed(
        self, msg: SbsMessage, received_us: int, source: str = "", time_us: int | None = None
    ) -> Fix | None:
        """Remember what `msg` says; a `Fix` when it carries a position not already emitted.

        `time_us` is the position's own time (the decoder's reading of the generated time);
        without it the fix's time is its receive time.
        """
        state = self._aircraft.get(msg.icao)
        if state is None:
            state = self._aircraft[msg.icao] = _AircraftState(last_us=received_us)
        state.last_us = received_us
        if msg.callsign is not None:
            state.callsign = msg.callsign
        if msg.altitude_ft is not None:
            state.altitude_ft = msg.altitude_ft
        if msg.ground_speed_kt is not None:
            state.ground_speed_kt = msg.ground_speed_kt
        if msg.track_deg is not None:
            state.track_deg = msg.track_deg
        if msg.vertical_rate_fpm is not None:
            state.vertical_rate_fpm = msg.vertical_rate_fpm
        if msg.squawk is not None:
            state.squawk = msg.squawk
        if msg.is_on_ground is not None:
            state.on_ground = msg.is_on_ground
        elif msg.msg_type == 2:
            # MSG,2 is the ES surface position message: on the ground by definition.
            state.on_ground = True

        if msg.msg_type not in (2, 3) or msg.lat is None or msg.lon is None:
            return None
        position = (msg.lat, msg.lon, msg.altitude_ft, msg.date_generated, msg.time_generated)
        if position == state.last_position:
            # Aggregating feeds repeat the same report; one fix per report.
            return None
        state.last_position = position
        return icao_fix(
            state,
            protocol=Protocol.SBS,
            address=msg.icao,
            received_us=received_us,
            lat=msg.lat,
            lon=msg.lon,
            altitude_ft=state.altitude_ft,
            source=source,
            time_us=received_us if time_us is None else time_us,
        )

    def expire(self, now_us: int, expiry_us: int = 300_000_000) -> int:
        """Forget aircraft not heard for `expiry_us`; returns how many were forgotten."""
        stale = [icao for icao, s in self._aircraft.items() if now_us - s.last_us > expiry_us]
        for icao in stale:
            del self._aircraft[icao]
        return len(stale)

    def __contains__(self, icao: object) -> bool:
        return icao in self._aircraft

    def forget(self, gone: Callable[[int], bool]) -> int:
        """Drop the aircraft whose address `gone` picks (handed to another shard); how many."""
        dropped = [icao for icao in self._aircraft if gone(icao)]
        for icao in dropped:
            del self._aircraft[icao]
        return len(dropped)
