"""OGN APRS-IS lines → typed beacons (sans-io: a line in, a record out, nothing else).

The APRS layer (header, position, timestamp, DAO, data extensions) is aprslib's. Most OGN traffic
is one uncompressed position format, and aprslib spends most of its time on generality that format
does not need, so `parse_line` takes a fast path for it and falls back to aprslib for everything
else; tests hold the two paths equal on every real line. The OGN comment (`id…`, `fpm`, `rot`,
`dB`, receiver `CPU:` / `RAM:` / `NTP:` …) is parsed here in both cases.

Which record a line becomes:

* `#…` → `ServerLine` (APRS-IS server banners and keep-alives).
* position, weather symbol `_` → `WeatherBeacon` (FANET weather stations).
* position via `qAC` or tocall `OGNSDR` → `ReceiverBeacon` (a receiver's own position; in the
  deprecated `APRS` format its comment also carries the status fields, kept in `.status`).
* other position → `AircraftBeacon`.
* status `>` with tocall `OGNDVS` → `WeatherBeacon`; via `qAC` → `ReceiverStatus`; otherwise
  → `AircraftStatus` (tracker telemetry / pilot info such as OGNTRK `h00 v00 9sat…`).
* anything else, or anything malformed → `Rejected` with a reason; `parse_line` never raises.

May import: soar.records
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from time import gmtime

import aprslib

from soar.records import (
    AddressType,
    AircraftType,
    Fix,
    Protocol,
    ReceiverRow,
    ReceiverStatusRow,
    Rejected,
)

FEET_PER_METRE = 1 / 0.3048
KMH_PER_KT = 1.852
MS_PER_MPH = 0.44704
#: OGN `rot` is in half-turns per minute, 180° / 60 s: python-ogn-client's HPM_TO_DEGS, and the
#: OGN tracker firmware writes its turn rate in deg/s divided by 3. The heading changes between
#: consecutive real beacons of circling gliders agree (tests/protocols/test_ogn_fields.py).
DEG_PER_S_PER_ROT = 3.0
FEET_PER_FLIGHT_LEVEL = 100

# Rejection reasons: a small fixed vocabulary, so they can label a metric.
REASON_EMPTY = "empty line"
REASON_HEADER = "bad aprs header"
REASON_APRS = "aprs parse error"
REASON_FORMAT = "unsupported aprs format"
REASON_NO_ADDRESS = "aircraft beacon without address"
REASON_TIME = "bad packet time"
REASON_FUTURE = "packet time in future"

# The beacon's own time (`beacon_time_us`). Clocks disagree by a second or two, so a beacon
# up to FUTURE_TOLERANCE_US after its receive time is placed as sent; one further ahead, by
# up to FUTURE_HORIZON_US, comes from a clock that runs ahead and is rejected; one further
# ahead still is yesterday's, delivered late.
FUTURE_TOLERANCE_US = 10_000_000
FUTURE_HORIZON_US = 3_600_000_000
_DAY_US = 86_400_000_000
_MINUTE_US = 60_000_000
_DAY_TIME_RE = re.compile(r"[^:]*:[/@](0[1-9]|[12]\d|3[01])([01]\d|2[0-3])([0-5]\d)z")


@dataclass(slots=True, frozen=True)
class AprsHeader:
    name: str  # the sender's callsign, e.g. FLRDDA5BA
    tocall: str  # e.g. OGFLR, OGNSDR, APRS
    path: tuple[str, ...]
    receiver: str | None  # the element after the q-construct: who heard it / which server


@dataclass(slots=True)
class AircraftBeacon:
    header: AprsHeader
    packet_time: str | None  # hhmmss as reported (None for other timestamp forms)
    lat: float
    lon: float
    address: int
    address_type: AddressType
    symbol: str  # symbol table + symbol code, e.g. "/'" glider, "\\^" jet
    altitude_ft: float | None = None
    track_deg: float | None = None
    ground_speed_kt: float | None = None
    aircraft_type: AircraftType | None = None
    stealth: bool = False
    no_track: bool = False
    climb_fpm: float | None = None
    rot: float | None = None  # half-turns per minute, as sent
    signal_db: float | None = None
    bit_errors: int | None = None
    freq_offset_khz: float | None = None
    gps_accuracy: tuple[int, int] | None = None  # horizontal x vertical, metres
    callsign: str | None = None
    squawk: str | None = None  # Mode A code, 4 octal digits as sent
    flight_level: float | None = None  # as sent: hundreds of feet of pressure altitude
    comment: str = ""  # the comment tokens not understood above, in order
    raw: str = ""

    @property
    def pressure_altitude_ft(self) -> float | None:
        """The flight level in feet (standard-pressure altitude, not MSL)."""
        if self.flight_level is None:
            return None
        # Computed when asked, not for every beacon (most ADS-B relays carry an FL, and the round
        # showed in the parse rate). Rounded: FL020.11 is 2,011 ft, not 2011.0000000000002.
        return round(self.flight_level * FEET_PER_FLIGHT_LEVEL, 2)


@dataclass(slots=True)
class ReceiverStatus:
    header: AprsHeader
    packet_time: str | None
    version: str | None = None
    platform: str | None = None
    cpu_load: float | None = None
    ram_free_mb: float | None = None
    ram_total_mb: float | None = None
    ntp_offset_ms: float | None = None
    ntp_ppm: float | None = None
    temperature_c: float | None = None
    rf_correction_manual_ppm: int | None = None
    rf_correction_auto_ppm: float | None = None
    noise_db: float | None = None
    senders_visible: int | None = None
    senders_total: int | None = None
    latency_s: float | None = None
    voltage: float | None = None
    amperage: float | None = None
    comment: str = ""  # the whole status text, as sent
    raw: str = ""

    @property
    def has_fields(self) -> bool:
        return any(
            value is not None
            for value in (
                self.version,
                self.cpu_load,
                self.ram_total_mb,
                self.ntp_offset_ms,
                self.temperature_c,
                self.noise_db,
                self.senders_total,
            )
        )


@dataclass(slots=True)
class ReceiverBeacon:
    header: AprsHeader
    packet_time: str | None
    lat: float
    lon: float
    altitude_ft: float | None = None
    comment: str = ""
    status: ReceiverStatus | None = None  # deprecated `APRS` format: status in the position comment
    raw: str = ""


@dataclass(slots=True)
class AircraftStatus:
    """A tracker's status line (battery, satellites, pilot…): informative, not a position."""

    header: AprsHeader
    packet_time: str | None
    text: str
    raw: str = ""


@dataclass(slots=True)
class WeatherBeacon:
    header: AprsHeader
    packet_time: str | None
    lat: float | None = None
    lon: float | None = None
    wind_direction_deg: float | None = None
    wind_speed_kt: float | None = None
    wind_gust_kt: float | None = None
    temperature_c: float | None = None
    humidity_pct: float | None = None
    pressure_hpa: float | None = None
    rain_mm_h: float | None = None
    text: str = ""
    raw: str = ""


@dataclass(slots=True, frozen=True)
class ServerLine:
    text: str  # without the leading `#`


OgnRecord = (
    AircraftBeacon
    | ReceiverBeacon
    | ReceiverStatus
    | AircraftStatus
    | WeatherBeacon
    | ServerLine
    | Rejected
)


# ---------------------------------------------------------------------------------------------
# header

_SOURCE_RE = re.compile(r"[A-Za-z0-9]{1,9}(?:-[A-Za-z0-9]{1,8})?\Z")
_TOCALL_RE = re.compile(r"[A-Za-z0-9]+(?:-(?:0?\d|1[0-5]))?\Z")
_APRSLIB_TOCALL_RE = re.compile(r"[A-Z0-9]{1,6}(?:-\d{1,2})?\Z")
_PATH_RE = re.compile(r"[A-Za-z0-9\-]{1,9}\*?\Z")


def _parse_header(head: str) -> AprsHeader | None:
    name, sep, rest = head.partition(">")
    if not sep or len(name) > 9 or _SOURCE_RE.match(name) is None:
        return None
    parts = rest.split(",")
    tocall = parts[0]
    if _TOCALL_RE.match(tocall) is None:
        return None
    path = tuple(parts[1:])
    for element in path:
        if _PATH_RE.match(element) is None:
            return None
    receiver = None
    if len(path) >= 2 and len(path[-2]) == 3 and path[-2][0] == "q":
        receiver = path[-1]
    return AprsHeader(name=name, tocall=tocall, path=path, receiver=receiver)


def _is_receiver(header: AprsHeader) -> bool:
    return header.tocall == "OGNSDR" or "qAC" in header.path


# ---------------------------------------------------------------------------------------------
# aircraft comment

_ID_RE = re.compile(r"id([0-9A-F]{2})([0-9A-F]{6})\Z")
_ID_NAVITER_RE = re.compile(r"id([0-9A-F]{4})([0-9A-F]{6})\Z")
# Wingman: flags, the pilot's own callsign (the sender name), then the device's 6 hex digits.
_ID_NAMED_RE = re.compile(r"id([0-9A-F]{2})([A-Za-z0-9]+)([0-9A-F]{6})\Z")
_CLIMB_RE = re.compile(r"([+-]?\d+(?:\.\d+)?)fpm\Z")
_ROT_RE = re.compile(r"([+-]?\d+(?:\.\d+)?)rot\Z")
_DB_RE = re.compile(r"([+-]?\d+(?:\.\d+)?)dB\Z")
_ERRORS_RE = re.compile(r"(\d+)e\Z")
_KHZ_RE = re.compile(r"([+-]?\d+(?:\.\d+)?)kHz\Z")
_GPS_RE = re.compile(r"gps(\d+)x(\d+)\Z")
_DAO_RE = re.compile(r"!W(\d)(\d)!\Z")
_CALLSIGN_RE = re.compile(r"(?:fn)?(?:A\d:)?([A-Za-z0-9\-]{1,10})\Z")
_SQUAWK_RE = re.compile(r"[Ss][Qq]([0-7]{4})\Z")
_FL_RE = re.compile(r"FL(-?\d+(?:\.\d+)?)\Z")
_NAME_ADDRESS_RE = re.compile(r"([A-Z]{3})([0-9A-F]{6})\Z")

_ADDRESS_TYPES = (AddressType.OTHER, AddressType.ICAO, AddressType.FLARM, AddressType.OGN)
_NAME_PREFIX_TYPES = {"ICA": AddressType.ICAO, "FLR": AddressType.FLARM, "OGN": AddressType.OGN}


@dataclass(slots=True)
class _AircraftComment:
    address: int | None = None
    address_type: AddressType | None = None
    aircraft_type: AircraftType | None = None
    stealth: bool = False
    no_track: bool = False
    climb_fpm: float | None = None
    rot: float | None = None
    signal_db: float | None = None
    bit_errors: int | None = None
    freq_offset_khz: float | None = None
    gps_accuracy: tuple[int, int] | None = None
    callsign: str | None = None
    squawk: str | None = None
    flight_level: float | None = None
    dao: tuple[int, int] | None = None  # !Wab!: thousandths of a minute to add to lat, lon
    rest: list[str] = field(default_factory=list)


def _wingman_id(token: str, name: str) -> re.Match[str] | None:
    """Wingman's `id07N0ABC7A39971` as the `idXXYYYYYY` it stands for (`id07A39971`)."""
    m = _ID_NAMED_RE.match(token)
    if m is None or m.group(2) != name:
        return None
    return _ID_RE.match(f"id{m.group(1)}{m.group(3)}")


def _parse_aircraft_comment(comment: str, name: str) -> _AircraftComment:
    out = _AircraftComment()
    for token in comment.split():
        if token.startswith("id"):
            m = _ID_RE.match(token)
            if m is None and _ID_NAVITER_RE.match(token) is None:
                m = _wingman_id(token, name)
            if m is not None:
                flags = int(m.group(1), 16)
                out.stealth = bool(flags & 0x80)
                out.no_track = bool(flags & 0x40)
                out.aircraft_type = AircraftType((flags >> 2) & 0x0F)
                out.address_type = _ADDRESS_TYPES[flags & 0x03]
                out.address = int(m.group(2), 16)
                continue
            m = _ID_NAVITER_RE.match(token)
            if m is not None:
                # NAVITER: 16 flag bits — stealth, no-track, 4 type bits, 6 address-type bits.
                flags = int(m.group(1), 16)
                out.stealth = bool(flags & 0x8000)
                out.no_track = bool(flags & 0x4000)
                out.aircraft_type = AircraftType((flags >> 10) & 0x0F)
                kind = (flags >> 4) & 0x3F
                out.address_type = _ADDRESS_TYPES[kind] if kind < 4 else AddressType.OTHER
                out.address = int(m.group(2), 16)
                continue
            out.rest.append(token)
            continue
        last = token[-1]
        if last == "m" and token.endswith("fpm"):
            m = _CLIMB_RE.match(token)
            if m is not None:
                out.climb_fpm = float(m.group(1))
                continue
        elif last == "t" and token.endswith("rot"):
            m = _ROT_RE.match(token)
            if m is not None:
                out.rot = float(m.group(1))
                continue
        elif last == "B":
            m = _DB_RE.match(token)
            if m is not None:
                out.signal_db = float(m.group(1))
                continue
        elif last == "e":
            m = _ERRORS_RE.match(token)
            if m is not None:
                out.bit_errors = int(m.group(1))
                continue
        elif last == "z":
            m = _KHZ_RE.match(token)
            if m is not None:
                out.freq_offset_khz = float(m.group(1))
                continue
        elif last == "!":
            m = _DAO_RE.match(token)
            if m is not None:
                out.dao = (int(m.group(1)), int(m.group(2)))
                continue
        if token.startswith("gps"):
            m = _GPS_RE.match(token)
            if m is not None:
                out.gps_accuracy = (int(m.group(1)), int(m.group(2)))
                continue
        elif token.startswith(("fn", "A")) and (token.startswith("fn") or token[2:3] == ":"):
            m = _CALLSIGN_RE.match(token)
            if m is not None:
                out.callsign = m.group(1)
                continue
        elif token.startswith(("Sq", "sq", "SQ", "sQ")):
            m = _SQUAWK_RE.match(token)
            if m is not None:
                out.squawk = m.group(1)
                continue
        elif token.startswith("FL"):
            m = _FL_RE.match(token)
            if m is not None:
                out.flight_level = float(m.group(1))
                continue
        out.rest.append(token)
    return out


def _address_from_name(name: str) -> tuple[int, AddressType] | None:
    # Without an `id` field the sender's name is the only key: PPPxxxxxx, hex address after a
    # three-letter prefix that tells who assigned it.
    m = _NAME_ADDRESS_RE.match(name)
    if m is None:
        return None
    return int(m.group(2), 16), _NAME_PREFIX_TYPES.get(m.group(1), AddressType.OTHER)


# ---------------------------------------------------------------------------------------------
# receiver status comment

_VERSION_RE = re.compile(r"v(\d+(?:\.\d+)+?)(?:\.([A-Za-z].*))?\Z")
_CPU_RE = re.compile(r"CPU:(\d+(?:\.\d+)?)\Z")
_RAM_RE = re.compile(r"RAM:(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)MB\Z")
_NTP_RE = re.compile(r"NTP:(\d+(?:\.\d+)?)ms/([+-]?\d+(?:\.\d+)?)ppm\Z")
_TEMP_RE = re.compile(r"([+-]\d+(?:\.\d+)?)C\Z")
_SENDERS_RE = re.compile(r"(\d+)/(\d+)Acfts\[1h\]\Z")
_LATENCY_RE = re.compile(r"Lat:(\d+(?:\.\d+)?)s\Z")
_RF_RE = re.compile(r"RF:(?:([+-]\d+)([+-]\d+(?:\.\d+)?)ppm/)?([+-]\d+(?:\.\d+)?)dB(?:/.*)?\Z")
_VOLT_RE = re.compile(r"(\d+(?:\.\d+)?)V\Z")
_AMP_RE = re.compile(r"(\d+(?:\.\d+)?)A\Z")


def _parse_receiver_status(
    header: AprsHeader, packet_time: str | None, text: str, raw: str
) -> ReceiverStatus:
    out = ReceiverStatus(header=header, packet_time=packet_time, comment=text, raw=raw)
    for token in text.split():
        if m := _VERSION_RE.match(token):
            out.version, out.platform = m.group(1), m.group(2)
        elif token.startswith("v") and out.version is None and len(token) > 1:
            out.version = token[1:]
        elif m := _CPU_RE.match(token):
            out.cpu_load = float(m.group(1))
        elif m := _RAM_RE.match(token):
            out.ram_free_mb, out.ram_total_mb = float(m.group(1)), float(m.group(2))
        elif m := _NTP_RE.match(token):
            out.ntp_offset_ms, out.ntp_ppm = float(m.group(1)), float(m.group(2))
        elif m := _TEMP_RE.match(token):
            out.temperature_c = float(m.group(1))
        elif m := _SENDERS_RE.match(token):
            out.senders_visible, out.senders_total = int(m.group(1)), int(m.group(2))
        elif m := _LATENCY_RE.match(token):
            out.latency_s = float(m.group(1))
        elif m := _RF_RE.match(token):
            if m.group(1) is not None:
                out.rf_correction_manual_ppm = int(m.group(1))
                out.rf_correction_auto_ppm = float(m.group(2))
            out.noise_db = float(m.group(3))
        elif m := _VOLT_RE.match(token):
            out.voltage = float(m.group(1))
        elif m := _AMP_RE.match(token):
            out.amperage = float(m.group(1))
    return out


# ---------------------------------------------------------------------------------------------
# weather

_DVS_WIND_RE = re.compile(r"(\d{3})/(\d+)(?:/(\d+))?kt\Z")
_DVS_TEMP_RE = re.compile(r"(-?\d+(?:\.\d+)?)F\Z")
_DVS_HUMIDITY_RE = re.compile(r"(\d+(?:\.\d+)?)%\Z")
_DVS_RAIN_RE = re.compile(r"(\d+(?:\.\d+)?)mm/h\Z")


def _fahrenheit_to_c(value: float) -> float:
    return (value - 32.0) * 5.0 / 9.0


def _parse_dvs_status(
    header: AprsHeader, packet_time: str | None, text: str, raw: str
) -> WeatherBeacon:
    out = WeatherBeacon(header=header, packet_time=packet_time, text=text, raw=raw)
    for token in text.split():
        if m := _DVS_WIND_RE.match(token):
            out.wind_direction_deg = float(m.group(1))
            if m.group(3) is None:
                out.wind_gust_kt = float(m.group(2))
            else:
                out.wind_speed_kt = float(m.group(2))
                out.wind_gust_kt = float(m.group(3))
        elif m := _DVS_TEMP_RE.match(token):
            out.temperature_c = _fahrenheit_to_c(float(m.group(1)))
        elif m := _DVS_HUMIDITY_RE.match(token):
            out.humidity_pct = float(m.group(1))
        elif m := _DVS_RAIN_RE.match(token):
            out.rain_mm_h = float(m.group(1))
    return out


def _weather_from_aprslib(
    header: AprsHeader, packet_time: str | None, parsed: dict[str, object], body: str, raw: str
) -> WeatherBeacon:
    weather = parsed.get("weather")
    wx: dict[str, object] = weather if isinstance(weather, dict) else {}

    def num(source: dict[str, object], key: str) -> float | None:
        value = source.get(key)
        return float(value) if isinstance(value, int | float) else None

    # FANET ground stations send wind `ddd/sss` and gust `gGGG` in knots (python-ogn-client reads
    # them so), not in the mph of an APRS weather report. aprslib reads `ddd/sss` as a course
    # extension (knots → km/h) and drops `000` (calm), so it is read here as sent where the
    # position has the usual form; aprslib's gust, mph → m/s, is scaled back to the number sent.
    direction: float | None
    speed: float | None
    m = _SPEED_GIVEN_RE.match(body)
    if m is not None and m.group(1).isdigit():
        direction, speed = float(int(m.group(1))), float(int(m.group(2)))
    else:
        course, speed_kmh = num(parsed, "course"), num(parsed, "speed")
        direction = course if course is not None else num(wx, "wind_direction")
        speed = None if speed_kmh is None else float(round(speed_kmh / KMH_PER_KT))
    gust_ms = num(wx, "wind_gust")
    return WeatherBeacon(
        header=header,
        packet_time=packet_time,
        lat=num(parsed, "latitude"),
        lon=num(parsed, "longitude"),
        wind_direction_deg=direction,
        wind_speed_kt=speed,
        wind_gust_kt=None if gust_ms is None else float(round(gust_ms / MS_PER_MPH)),
        temperature_c=num(wx, "temperature"),
        humidity_pct=num(wx, "humidity"),
        pressure_hpa=num(wx, "pressure"),
        rain_mm_h=num(wx, "rain_1h"),
        text=str(parsed.get("comment", "")),
        raw=raw,
    )


# ---------------------------------------------------------------------------------------------
# body: fast path and aprslib


@dataclass(slots=True)
class _Position:
    packet_time: str | None
    lat: float
    lon: float
    symbol: str
    altitude_ft: float | None
    track_deg: float | None
    ground_speed_kt: float | None
    comment: str
    dao_applied: bool  # aprslib applies `!W..!` itself


# The format nearly every OGN position uses: `/hhmmssh DDMM.mmN T DDDMM.mmE S ccc/sss/A=nnnnnn …`.
# Anything this does not match exactly (and anything aprslib would read differently: PHG, an
# altitude inside the comment, other DAO forms, telemetry) goes to aprslib, and so does a time
# that is not one (`194490h`), for aprslib's path to reject. PureGlide sends the course with
# decimals (`166.56186289668/018`), which aprslib leaves in the comment.
_FAST_POSITION_RE = re.compile(
    r"/((?:[01]\d|2[0-3])[0-5]\d[0-5]\d)h"
    r"(\d{2})(\d{2}\.\d{2})([NS])([/\\0-9A-Z])(\d{3})(\d{2}\.\d{2})([EW])([!-~])"
    r"(?:(\d{3}(?:\.\d+)?)/(\d{3}))?(?:/A=(\d{6}|-\d{5}))?(?: (.*))?\Z"
)
_SPEED_GIVEN_RE = re.compile(
    r"[/@]\d{6}[hz/]\d{4}\.\d{2}[NS].\d{5}\.\d{2}[EW].(\d{3}(?:\.\d+)?)/(\d{3})"
)
# A valid APRS timestamp as aprslib reports it: hhmmss`h`, or ddhhmm `z` (UTC) / `/` (local).
_TIMESTAMP_RE = re.compile(
    r"(?:(?:[01]\d|2[0-3])[0-5]\d[0-5]\dh|(?:0[1-9]|[12]\d|3[01])(?:[01]\d|2[0-3])[0-5]\d[z/])\Z"
)


def _track(course: str) -> float | None:
    # `000` is APRS for "course unknown"; 360 is north.
    c = float(course)
    return c % 360 if 0 < c <= 360 else None


def _fast_position(body: str) -> _Position | None:
    m = _FAST_POSITION_RE.match(body)
    if m is None:
        return None
    comment = m.group(13) or ""
    if "/A=" in comment or "|" in comment or ("!" in comment and _has_other_dao(comment)):
        return None
    lat_deg, lon_deg = int(m.group(2)), int(m.group(6))
    if lat_deg > 89 or lon_deg > 179:
        return None
    # Same arithmetic, in the same order, as aprslib, so both paths give identical floats.
    lat = lat_deg + (float(m.group(3)) / 60.0)
    lon = lon_deg + (float(m.group(7)) / 60.0)
    lat *= -1 if m.group(4) == "S" else 1
    lon *= -1 if m.group(8) == "W" else 1
    course, speed, altitude = m.group(10), m.group(11), m.group(12)
    track: float | None = None
    ground_speed: float | None = None
    if course is not None:
        track = _track(course)
        ground_speed = float(int(speed))
    return _Position(
        packet_time=m.group(1),
        lat=lat,
        lon=lon,
        symbol=m.group(5) + m.group(9),
        altitude_ft=None if altitude is None else float(int(altitude)),
        track_deg=track,
        ground_speed_kt=ground_speed,
        comment=comment.strip(" "),
        dao_applied=False,
    )


_ANY_DAO_RE = re.compile(r"!([\x21-\x7b])([\x20-\x7b]{2})!")


def _has_other_dao(comment: str) -> bool:
    """True when aprslib would treat some `!xyz!` other than one plain `!Wdd!` token as DAO."""
    found = _ANY_DAO_RE.findall(comment)
    if not found:
        return False
    if len(found) > 1:
        return True
    byte, digits = found[0]
    return byte != "W" or not digits.isdigit() or f"!W{digits}!" not in comment.split()


def _aprslib_parse(header: AprsHeader, body: str) -> dict[str, object] | Rejected:
    # aprslib refuses tocalls longer than six characters (OGEVARIO, OGNINRE); the tocall does not
    # change how an OGN body parses, so hand it a valid one.
    tocall = header.tocall if _APRSLIB_TOCALL_RE.match(header.tocall) else "APRS"
    head = ",".join((f"{header.name}>{tocall}", *header.path))
    try:
        parsed = aprslib.parse(f"{head}:{body}")
    except Exception as exc:  # aprslib raises ParseError, UnknownFormat and, on garbage, others
        return Rejected(REASON_APRS, detail={"error": f"{type(exc).__name__}: {exc}"})
    if not isinstance(parsed, dict):
        return Rejected(REASON_APRS, detail={"error": "aprslib returned no dict"})
    return parsed


def _position_from_aprslib(parsed: dict[str, object], body: str) -> _Position | None:
    lat, lon = parsed.get("latitude"), parsed.get("longitude")
    if not isinstance(lat, float | int) or not isinstance(lon, float | int):
        return None
    raw_ts = parsed.get("raw_timestamp")
    packet_time = raw_ts[:6] if isinstance(raw_ts, str) and raw_ts.endswith("h") else None
    altitude_m = parsed.get("altitude")
    course = parsed.get("course")
    speed_kmh = parsed.get("speed")
    track = float(course % 360) if isinstance(course, int) and course else None
    ground_speed = (
        float(round(speed_kmh / KMH_PER_KT)) if isinstance(speed_kmh, int | float) else None
    )
    comment = str(parsed.get("comment", ""))
    # Only needed when aprslib found no course or speed: most lines are spared the match.
    m = _SPEED_GIVEN_RE.match(body) if track is None or ground_speed is None else None
    if m is not None and "." in m.group(1):
        # A decimal course is no APRS data extension: aprslib left `ccc.cc/sss` in the comment.
        given = f"{m.group(1)}/{m.group(2)}"
        if comment.startswith(given):
            comment = comment[len(given) :].strip(" ")
            track = _track(m.group(1))
            ground_speed = float(int(m.group(2)))
    if ground_speed is None and m is not None and m.group(2) == "000":
        # aprslib drops a speed of 000, but for OGN a stationary aircraft is information.
        ground_speed = 0.0
    return _Position(
        packet_time=packet_time,
        lat=float(lat),
        lon=float(lon),
        symbol=f"{parsed.get('symbol_table', '')}{parsed.get('symbol', '')}",
        altitude_ft=(
            float(round(altitude_m * FEET_PER_METRE))
            if isinstance(altitude_m, int | float)
            else None
        ),
        track_deg=track,
        ground_speed_kt=ground_speed,
        comment=comment,
        dao_applied=True,
    )


def _status_text(body: str) -> tuple[str | None, str] | None:
    """`>hhmmssh text` → (hhmmss, text); the timestamp is optional. None: a time that is none."""
    text = body[1:]
    if len(text) >= 7 and text[:6].isdigit() and text[6] in "hz":
        if _TIMESTAMP_RE.match(text, 0, 7) is None:
            return None
        ts = text[:6] if text[6] == "h" else None
        return ts, text[7:].strip(" ")
    return None, text.strip(" ")


def _aircraft_beacon(header: AprsHeader, pos: _Position, raw: str) -> AircraftBeacon | Rejected:
    c = _parse_aircraft_comment(pos.comment, header.name)
    lat, lon = pos.lat, pos.lon
    if c.dao is not None and not pos.dao_applied:
        # aprslib's DAO arithmetic, kept identical.
        lat_offset = c.dao[0] * 0.001 / 60
        lon_offset = c.dao[1] * 0.001 / 60
        lat += lat_offset if lat >= 0 else -lat_offset
        lon += lon_offset if lon >= 0 else -lon_offset
    address, address_type = c.address, c.address_type
    if address is None or address_type is None:
        derived = _address_from_name(header.name)
        if derived is None:
            return Rejected(REASON_NO_ADDRESS, raw=raw, detail={"name": header.name})
        address, address_type = derived
    return AircraftBeacon(
        header=header,
        packet_time=pos.packet_time,
        lat=lat,
        lon=lon,
        address=address,
        address_type=address_type,
        symbol=pos.symbol,
        altitude_ft=pos.altitude_ft,
        track_deg=pos.track_deg,
        ground_speed_kt=pos.ground_speed_kt,
        aircraft_type=c.aircraft_type,
        stealth=c.stealth,
        no_track=c.no_track,
        climb_fpm=c.climb_fpm,
        rot=c.rot,
        signal_db=c.signal_db,
        bit_errors=c.bit_errors,
        freq_offset_khz=c.freq_offset_khz,
        gps_accuracy=c.gps_accuracy,
        callsign=c.callsign,
        squawk=c.squawk,
        flight_level=c.flight_level,
        comment=" ".join(c.rest),
        raw=raw,
    )


def _receiver_beacon(header: AprsHeader, pos: _Position, raw: str) -> ReceiverBeacon:
    status = _parse_receiver_status(header, pos.packet_time, pos.comment, raw)
    return ReceiverBeacon(
        header=header,
        packet_time=pos.packet_time,
        lat=pos.lat,
        lon=pos.lon,
        altitude_ft=pos.altitude_ft,
        comment=pos.comment,
        status=status if status.has_fields else None,
        raw=raw,
    )


def parse_line(line: str, *, fast: bool = True) -> OgnRecord:
    """One APRS-IS line (without its terminator) → one record. Never raises.

    `fast=False` forces the aprslib path (tests compare the two).
    """
    try:
        return _parse_line(line, fast)
    except Exception as exc:  # a parser bug must cost one line, not the feed
        return Rejected(REASON_APRS, raw=line, detail={"error": f"{type(exc).__name__}: {exc}"})


def _parse_line(line: str, fast: bool) -> OgnRecord:
    line = line.rstrip("\r\n")
    if not line.strip():
        return Rejected(REASON_EMPTY, raw=line)
    if line[0] == "#":
        return ServerLine(line[1:].strip())
    head, sep, body = line.partition(":")
    header = _parse_header(head) if sep else None
    if header is None:
        return Rejected(REASON_HEADER, raw=line)
    if not body:
        return Rejected(REASON_FORMAT, raw=line, detail={"error": "empty body"})
    if "\\\\" in body:
        # Some captures log the symbol-table backslash doubled; no valid body contains `\\`.
        body = body.replace("\\\\", "\\")

    kind = body[0]
    if kind == ">":
        status = _status_text(body)
        if status is None:
            return Rejected(REASON_TIME, raw=line, detail={"time": body[1:8]})
        packet_time, text = status
        if header.tocall == "OGNDVS":
            return _parse_dvs_status(header, packet_time, text, line)
        if _is_receiver(header):
            return _parse_receiver_status(header, packet_time, text, line)
        return AircraftStatus(header=header, packet_time=packet_time, text=text, raw=line)

    pos = _fast_position(body) if fast else None
    if pos is None:
        parsed = _aprslib_parse(header, body)
        if isinstance(parsed, Rejected):
            parsed.raw = line
            return parsed
        raw_ts = parsed.get("raw_timestamp")
        if isinstance(raw_ts, str) and _TIMESTAMP_RE.match(raw_ts) is None:
            # aprslib takes `194490h` (seconds 90) and gives epoch 0 for it.
            return Rejected(REASON_TIME, raw=line, detail={"time": raw_ts})
        if parsed.get("symbol") == "_":
            packet_time = raw_ts[:6] if isinstance(raw_ts, str) and raw_ts.endswith("h") else None
            return _weather_from_aprslib(header, packet_time, parsed, body, line)
        pos = _position_from_aprslib(parsed, body)
        if pos is None:
            return Rejected(REASON_FORMAT, raw=line, detail={"format": parsed.get("format")})
    elif pos.symbol.endswith("_"):
        return parse_line(line, fast=False)

    if _is_receiver(header):
        return _receiver_beacon(header, pos, line)
    return _aircraft_beacon(header, pos, line)


# ---------------------------------------------------------------------------------------------
# records for the rest of soar


def beacon_time_us(beacon: AircraftBeacon, received_us: int) -> int | None:
    """When the aircraft was at the beacon's position: its `hhmmss` on the receive date.

    The date is the one that puts the time nearest before the receive time (plus
    `FUTURE_TOLERANCE_US`): a 23:59:58 beacon received at 00:00:03 is yesterday's, and one
    delivered hours late is placed hours back. A `ddhhmmz` time (whole minutes) is placed in
    the receive month the same way; the position time is the receive time when that falls
    within the beacon's minute, else the minute's last second. Without a time of its own
    (`ddhhmm/` local time, no timestamp) a beacon's time is its receive time. None: the time
    lies 10 s to 1 h after the receive time, which no delivery explains (rejected).
    """
    if beacon.packet_time is not None:
        hhmmss = beacon.packet_time
        of_day = (
            (int(hhmmss[:2]) * 60 + int(hhmmss[2:4])) * 60 + int(hhmmss[4:6])
        ) * 1_000_000
        placed = received_us - received_us % _DAY_US + of_day
        if placed > received_us + FUTURE_TOLERANCE_US:
            placed -= _DAY_US
        if placed + _DAY_US - received_us <= FUTURE_HORIZON_US:
            return None
        return placed
    m = _DAY_TIME_RE.match(beacon.raw)
    if m is None:
        return received_us
    minute = _month_placed(int(m.group(1)), int(m.group(2)), int(m.group(3)), received_us)
    if minute is None:
        return None
    return min(max(received_us, minute), minute + _MINUTE_US - 1_000_000)


def _month_placed(day: int, hour: int, minute: int, received_us: int) -> int | None:
    """`ddhhmm` in the latest month that puts it at most the tolerance after the receive time
    (None: 10 s to 1 h ahead of it)."""
    year, month = _year_month(received_us)
    for back in range(3):  # the 31st is in one of the last three months
        y, m = (year, month - back) if month - back >= 1 else (year - 1, month - back + 12)
        if day > calendar.monthrange(y, m)[1]:
            continue
        placed = calendar.timegm((y, m, day, hour, minute, 0)) * 1_000_000
        if placed <= received_us + FUTURE_TOLERANCE_US:
            return placed
        if placed - received_us <= FUTURE_HORIZON_US:
            return None
    return None


def _year_month(time_us: int) -> tuple[int, int]:
    moment = gmtime(time_us // 1_000_000)
    return moment.tm_year, moment.tm_mon


def to_fix(
    beacon: AircraftBeacon, received_us: int, source: str, time_us: int | None = None
) -> Fix:
    """The beacon as a fix; `time_us` defaults to `beacon_time_us` (the receive time for a
    beacon in the future: callers that reject those, as the decoder does, check first)."""
    if time_us is None:
        time_us = beacon_time_us(beacon, received_us) or received_us
    return Fix(
        protocol=Protocol.OGN,
        address_type=beacon.address_type,
        address=beacon.address,
        received_us=received_us,
        lat=beacon.lat,
        lon=beacon.lon,
        time_us=time_us,
        altitude_ft=beacon.altitude_ft,
        ground_speed_kt=beacon.ground_speed_kt,
        track_deg=beacon.track_deg,
        climb_fpm=beacon.climb_fpm,
        turn_rate=None if beacon.rot is None else beacon.rot * DEG_PER_S_PER_ROT,
        callsign=beacon.callsign,
        squawk=beacon.squawk,
        aircraft_type=beacon.aircraft_type,
        receiver=beacon.header.receiver,
        signal_db=beacon.signal_db,
        bit_errors=beacon.bit_errors,
        freq_offset_khz=beacon.freq_offset_khz,
        packet_time=beacon.packet_time,
        stealth=beacon.stealth,
        no_track=beacon.no_track,
        source=source,
    )


def receiver_row(beacon: ReceiverBeacon, received_us: int) -> ReceiverRow:
    """A receiver's own position beacon."""
    return ReceiverRow(
        name=beacon.header.name,
        last_packet_us=received_us,
        lat=beacon.lat,
        lon=beacon.lon,
        altitude_ft=beacon.altitude_ft,
    )


def receiver_status_row(status: ReceiverStatus, received_us: int) -> ReceiverStatusRow:
    rf: float | None = None
    if status.rf_correction_manual_ppm is not None and status.rf_correction_auto_ppm is not None:
        rf = status.rf_correction_manual_ppm + status.rf_correction_auto_ppm
    return ReceiverStatusRow(
        name=status.header.name,
        received_us=received_us,
        version=status.version,
        platform=status.platform,
        cpu_load=status.cpu_load,
        ram_free_mb=status.ram_free_mb,
        ram_total_mb=status.ram_total_mb,
        ntp_offset_ms=status.ntp_offset_ms,
        ntp_ppm=status.ntp_ppm,
        temperature_c=status.temperature_c,
        rf_correction_ppm=rf,
        senders=status.senders_total,
        raw=status.comment,
    )
