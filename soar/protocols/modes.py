"""Mode S / ADS-B decoding into position fixes, sans-io.

`icao_address(message)` gives the 24-bit address a message is routed by; one
`ModeSAccumulator` per shard keeps the state of that shard's aircraft and turns their
messages into `Fix` records.

Why the CPR pairing is done here and not by `pyModeS.PipeDecoder`: PipeDecoder holds back
the first global positions of an aircraft until three of them agree (its bootstrap motion
check), so a lone even/odd pair yields nothing and the first fixes of every aircraft come late
or not at all; it also keeps its own per-aircraft dicts beside ours and returns dicts for every
field of every message, which costs more than the decoding we need. So this module uses
pyModeS for what it is good at — the per-field decoders (`decode_bds06/08/09`, the altitude and
identity codes) and the CPR arithmetic (`airborne_position_pair`, `airborne_position_with_ref`,
`surface_position_pair`, `surface_position_with_ref`) — and applies these rules itself:

- DF17/18 CRC must be zero; DF11 parity may carry an interrogator code (remainder < 128);
  DF0/4/5/16/20/21 carry the address only in their parity (AP), which cannot be checked on
  its own, so such replies are used only for aircraft already verified by a DF11/17/18
  (unless `trust_address_parity`: dump1090/readsb normally forward such replies only for
  addresses they have already seen, and offline Comm-B captures have nothing else).
- Airborne position (TC 9-18 baro, 20-22 GNSS altitude): global decode of the newest even/odd
  pair (this frame and the latest frame of the other parity, at most 10 s apart); if there is
  none, or the zones differ, or the result jumps implausibly from the last position, local
  decode of this frame against the last position (at most 60 s old). Any result is checked
  against the last position with a speed limit (1,500 kt plus 10 km); a global result that
  fails is kept as a candidate and adopted when the next global result agrees with it, so a
  track anchored on a bad position recovers.
- Surface position (TC 5-8): surface CPR repeats every 90 degrees, so an even/odd pair (at
  most 25 s apart) gives up to eight candidates (two latitudes, four longitudes) and a
  reference must choose. In order: the aircraft's own last position (the candidate must pass
  the same track check as an airborne global result); else the one candidate within 5 NM of a
  known airport (`airports`, a lookup the caller passes in); else the receiver reference, whose
  candidate must lie within 45 NM of it. A frame without a pair is decoded locally, and only
  against the aircraft's own last position (at most 10 min old), never against the receiver:
  a local decode silently lands within 45 NM of whatever reference it is given, so a receiver
  that did not hear the aircraft (a feed merged from several receivers, a wrong
  `receiver_lat/lon`) would place it hundreds of kilometres wrong with nothing to show it.
  A result farther from its reference than that reference allows is rejected
  (`surface_out_of_range`), as is a pair nothing can place (`surface_no_reference`).
- A `Fix` is returned only for a position decoded from the message just fed, with the
  aircraft's latest callsign, altitude, ground speed, track, vertical rate, squawk and
  air/ground state. Velocity subtypes 3/4 (heading and air speed) go to their own state
  attributes, never into ground speed/track.

May import: soar.protocols.icao_fix, soar.records
"""

from __future__ import annotations

import collections
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field

from pyModeS._altcode import altcode_to_altitude
from pyModeS._idcode import idcode_to_squawk
from pyModeS.decoder.bds.bds06 import decode_bds06
from pyModeS.decoder.bds.bds08 import decode_bds08
from pyModeS.decoder.bds.bds09 import decode_bds09
from pyModeS.position import (
    airborne_position_pair,
    airborne_position_with_ref,
    surface_position_pair,
    surface_position_with_ref,
)

from soar.protocols.icao_fix import icao_fix
from soar.records import AircraftType, Fix, Protocol, Rejected

PAIR_WINDOW_US = 10_000_000
SURFACE_PAIR_WINDOW_US = 25_000_000
LOCAL_REFERENCE_MAX_AGE_US = 60_000_000
# Below 250 kt (the speed limit under FL100, kept by anything about to land or taxiing) an
# aircraft covers 42 NM in 10 min: its own position stays within a local decode's 45 NM.
SURFACE_REFERENCE_MAX_AGE_US = 600_000_000
# A local surface decode is right only if its reference lies within half a CPR zone of the
# truth (half of 90/60 degrees of latitude: 45 NM); no receiver sees a surface transmitter
# that far away.
SURFACE_RANGE_KM = 45 * 1.852
# An airport's reference point can lie several kilometres from its runway ends and aprons.
SURFACE_AIRPORT_RADIUS_M = 5 * 1852.0
MAX_SPEED_KT = 1_500.0
POSITION_MARGIN_KM = 10.0
_EARTH_RADIUS_KM = 6371.0088
_KM_PER_US = MAX_SPEED_KT * 1.852 / 3_600_000_000

# Formats whose address is overlaid on the parity (address/parity, AP).
_AP_FORMATS = frozenset((0, 4, 5, 16, 20, 21))
# DF18 control fields that carry a 24-bit ICAO address in the AA field (CF=1 and CF=5 carry
# anonymous/non-ICAO addresses, CF=3/4/7 are not ADS-B position formats).
_DF18_ICAO_CF = frozenset((0, 2, 6))


def _build_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 16
        for _ in range(8):
            crc = ((crc << 1) ^ 0xFFF409) if crc & 0x800000 else (crc << 1)
        table.append(crc & 0xFFFFFF)
    return tuple(table)


_CRC_TABLE = _build_crc_table()


def crc_remainder_bytewise(message: bytes) -> int:
    """The textbook byte-at-a-time CRC-24 (Sarwate); builds the tables below, checks them in tests."""
    crc = 0
    table = _CRC_TABLE
    for byte in message[:-3]:
        crc = ((crc << 8) & 0xFFFFFF) ^ table[(crc >> 16) ^ byte]
    return crc ^ int.from_bytes(message[-3:], "big")


def _build_position_tables() -> tuple[tuple[int, ...], ...]:
    # The CRC is linear: a message's remainder is the XOR of what each data byte contributes,
    # and a byte's contribution depends only on its value and how many bytes follow it. One
    # table per position of a long message's 11 data bytes; a short message's 4 data bytes
    # sit where a long message's last 4 do.
    return tuple(
        tuple(crc_remainder_bytewise(bytes(i) + bytes((b,)) + bytes(10 - i) + bytes(3))
              for b in range(256))
        for i in range(11)
    )


_T = _build_position_tables()
_T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8, _T9, _T10 = _T


def crc_remainder(message: bytes) -> int:
    """The Mode S CRC-24 remainder: 0 for a good DF17/18, the address for AP formats.

    Eleven table lookups without a loop: 0.56 µs for a long message against 1.48 µs for the
    byte-at-a-time loop, and every Beast frame needs one.
    """
    if len(message) == 14:
        a, b, c, d, e, f, g, h, i, j, k = message[:11]
        crc = (_T0[a] ^ _T1[b] ^ _T2[c] ^ _T3[d] ^ _T4[e] ^ _T5[f] ^ _T6[g] ^ _T7[h]
               ^ _T8[i] ^ _T9[j] ^ _T10[k])
        return crc ^ int.from_bytes(message[11:], "big")
    if len(message) == 7:
        a, b, c, d = message[:4]
        return (_T7[a] ^ _T8[b] ^ _T9[c] ^ _T10[d]) ^ int.from_bytes(message[4:], "big")
    return crc_remainder_bytewise(message)


def _downlink_format(message: bytes) -> int | None:
    """DF of a 7- or 14-byte message whose length matches its DF, else None."""
    length = len(message)
    if length != 7 and length != 14:
        return None
    df = message[0] >> 3
    if df >= 24:
        df = 24  # DF24 is 11xxx: only two bits of format
    if (df >= 16) != (length == 14):
        return None
    return df


def icao_address(message: bytes, remainder: int | None = None) -> int | None:
    """The 24-bit address a Mode S message belongs to, or None when it cannot be had.

    In clear (and checked by CRC) for DF11/17/18; recovered from the address/parity field for
    DF0/4/5/16/20/21, where it cannot be verified without knowing the aircraft. `remainder`:
    the message's `crc_remainder`, when the caller has it already.
    """
    df = _downlink_format(message)
    if df is None:
        return None
    if remainder is None:
        remainder = crc_remainder(message)
    if df in _AP_FORMATS:
        return remainder
    if df == 17 or df == 18:
        if remainder != 0:
            return None
        if df == 18 and (message[0] & 7) not in _DF18_ICAO_CF:
            return None
        return int.from_bytes(message[1:4], "big")
    if df == 11:
        if remainder & ~0x7F:
            return None
        return int.from_bytes(message[1:4], "big")
    return None


# ADS-B emitter category (set letter from the TC, number from CA) → OGN aircraft type.
_EMITTER_AIRCRAFT_TYPE: dict[str, AircraftType] = {
    "A1": AircraftType.POWERED,
    "A2": AircraftType.JET,
    "A3": AircraftType.JET,
    "A4": AircraftType.JET,
    "A5": AircraftType.JET,
    "A6": AircraftType.JET,
    "A7": AircraftType.HELICOPTER,
    "B1": AircraftType.GLIDER,
    "B2": AircraftType.BALLOON,
    "B3": AircraftType.PARACHUTE,
    "B4": AircraftType.HANG_GLIDER,
    "B6": AircraftType.UAV,
    "C1": AircraftType.GROUND_SUPPORT,
    "C3": AircraftType.GROUND_SUPPORT,
    "C4": AircraftType.STATIC_OBSTACLE,
    "C5": AircraftType.STATIC_OBSTACLE,
    "C6": AircraftType.STATIC_OBSTACLE,
    "C7": AircraftType.STATIC_OBSTACLE,
}

# (received_us, cpr_lat, cpr_lon) of one position frame
_CprFrame = tuple[int, int, int]


def _take_frame(
    frames: list[_CprFrame | None], me: int, received_us: int
) -> tuple[int, _CprFrame, _CprFrame | None]:
    """Keep a position message's CPR frame in `frames`: (its F bit, the frame, the newest frame
    of the other parity, its possible partner)."""
    odd = (me >> 34) & 1
    frame = (received_us, (me >> 17) & 0x1FFFF, me & 0x1FFFF)
    other = frames[1 - odd]
    frames[odd] = frame
    return odd, frame, other


class Located(typing.Protocol):
    """Anything with a position: what an airport lookup returns."""

    @property
    def lat(self) -> float: ...

    @property
    def lon(self) -> float: ...


AirportLookup = Callable[[float, float, float], Located | None]
"""`(lat, lon, max_m)` → an airport within `max_m` metres of the point, or None.

`soar.tracking.airports.AirportIndex.nearest` is one; the caller passes it in, so this module
reads no airport table itself.
"""


@dataclass(slots=True)
class AircraftState:
    """What one aircraft has told us so far."""

    address: int
    last_seen_us: int
    verified: bool = False  # seen in a CRC-checked message (DF11/17/18)
    callsign: str | None = None
    emitter_category: str | None = None  # e.g. "A3"
    aircraft_type: AircraftType | None = None
    altitude_ft: int | None = None  # barometric (TC 9-18, DF0/4/16/20)
    gnss_altitude_ft: int | None = None  # GNSS height (TC 20-22)
    ground_speed_kt: float | None = None
    track_deg: float | None = None
    vertical_rate_fpm: int | None = None
    vertical_rate_source: str | None = None  # "BARO" | "GNSS"
    heading_deg: float | None = None  # velocity subtypes 3/4: heading, not track
    airspeed_kt: int | None = None  # velocity subtypes 3/4: air speed, not ground speed
    airspeed_type: str | None = None  # "IAS" | "TAS"
    squawk: str | None = None
    emergency_state: int | None = None
    on_ground: bool | None = None
    # the newest even (index 0) and odd (index 1) frame; airborne and surface never pair
    airborne_frames: list[_CprFrame | None] = field(default_factory=lambda: [None, None])
    surface_frames: list[_CprFrame | None] = field(default_factory=lambda: [None, None])
    lat: float | None = None
    lon: float | None = None
    position_us: int = 0
    candidate: tuple[float, float, int] | None = None  # global result that disagreed
    positions: int = 0


def _distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    a = (
        math.sin((phi2 - phi1) / 2) ** 2
        + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _reachable(lat: float, lon: float, from_lat: float, from_lon: float, elapsed_us: int) -> bool:
    limit = POSITION_MARGIN_KM + _KM_PER_US * abs(elapsed_us)
    return _distance_km(lat, lon, from_lat, from_lon) <= limit


def surface_candidates(
    even: _CprFrame, odd: _CprFrame, *, even_is_newer: bool
) -> list[tuple[float, float]]:
    """Every position an even/odd surface pair can mean: 4 longitudes 90 degrees apart, for
    the northern and the southern latitude (each only if both frames fall in its NL zone).

    pyModeS resolves the pair against one reference; asking it once per hemisphere (a
    reference at 45 N or 45 S picks that hemisphere's latitude) gives both latitudes, and
    each result is one of its four longitudes.
    """
    candidates: list[tuple[float, float]] = []
    # A northern latitude L means L - 90 in the south. At L = 0 a reference of exactly 45 S
    # is as far from 0 as from the pole and pyModeS keeps 0, so the southern reference sits
    # a hair further south: a pair at latitude 0 can mean the South Pole too.
    for hemisphere in (45.0, -45.000001):
        pair = surface_position_pair(
            even[1], even[2], odd[1], odd[2],
            lat_ref=hemisphere, lon_ref=0.0, even_is_newer=even_is_newer,
        )
        if pair is None or any(abs(pair[0] - lat) < 1e-9 for lat, _ in candidates):
            continue  # no solution in this hemisphere
        lat, lon = pair
        candidates.extend((lat, (lon + quadrant + 180.0) % 360.0 - 180.0)
                          for quadrant in (0.0, 90.0, 180.0, 270.0))
    return candidates


class ModeSAccumulator:
    """Per-shard Mode S state: messages in, `Fix` out when a new position is decoded.

    Counters (never reset; the caller exports them as metrics): `rejected[reason]` for every
    message returned as `Rejected`, `stats[event]` for the rest (positions by method, CPR
    zone mismatches, surface frames waiting for their pair, ignored type codes).

    `reference`: the receiver's (lat, lon), `airports`: an airport lookup; both only place
    surface positions of aircraft with no position of their own yet.
    """

    def __init__(
        self,
        reference: tuple[float, float] | None = None,
        expiry_us: int = 300_000_000,
        *,
        trust_address_parity: bool = False,
        airports: AirportLookup | None = None,
    ) -> None:
        self.reference = reference
        self.airports = airports
        self.expiry_us = expiry_us
        self.trust_address_parity = trust_address_parity
        self.rejected: collections.Counter[str] = collections.Counter()
        self.stats: collections.Counter[str] = collections.Counter()
        self._aircraft: dict[int, AircraftState] = {}

    def __len__(self) -> int:
        return len(self._aircraft)

    def aircraft(self, address: int) -> AircraftState | None:
        return self._aircraft.get(address)

    def expire(self, now_us: int) -> int:
        """Forget aircraft silent for `expiry_us`; return how many were dropped."""
        cutoff = now_us - self.expiry_us
        stale = [a for a, state in self._aircraft.items() if state.last_seen_us < cutoff]
        for address in stale:
            del self._aircraft[address]
        return len(stale)

    def forget(self, gone: Callable[[int], bool]) -> int:
        """Drop the aircraft whose address `gone` picks (handed to another shard); how many."""
        dropped = [address for address in self._aircraft if gone(address)]
        for address in dropped:
            del self._aircraft[address]
        return len(dropped)

    def feed(
        self,
        message: bytes,
        received_us: int,
        source: str = "",
        signal_db: float | None = None,
        remainder: int | None = None,
    ) -> Fix | Rejected | None:
        """Take one Mode S message (7 or 14 bytes).

        Returns a `Fix` when this message gave a new position, `Rejected` when it could not be
        used (and why), None when it only updated the aircraft's state. `remainder`: the
        message's `crc_remainder` when the caller has it already (the decoder computes it to
        route the message by address; computing it twice cost ~1 µs per frame).
        """
        try:
            return self._feed(message, received_us, source, signal_db, remainder)
        except Exception as exc:  # a message must never take the shard down
            return self._reject("decode_error", message, error=repr(exc))

    def _reject(self, reason: str, message: bytes, **detail: object) -> Rejected:
        self.rejected[reason] += 1
        return Rejected(reason=reason, raw=bytes(message), detail=detail)

    def _feed(
        self,
        message: bytes,
        received_us: int,
        source: str,
        signal_db: float | None,
        remainder: int | None,
    ) -> Fix | Rejected | None:
        df = _downlink_format(message)
        if df is None:
            if len(message) == 2:
                return self._reject("mode_ac", message)
            return self._reject("length", message, length=len(message))
        if remainder is None:
            remainder = crc_remainder(message)
        if df == 17 or df == 18:
            if remainder != 0:
                return self._reject("crc", message, df=df)
            if df == 18 and (message[0] & 7) not in _DF18_ICAO_CF:
                return self._reject("non_icao_address", message, df=df, cf=message[0] & 7)
            state = self._verified_state(int.from_bytes(message[1:4], "big"), received_us)
            if df == 17:
                self._capability(state, message[0] & 7)
            return self._extended_squitter(state, message, received_us, source, signal_db)
        if df == 11:
            if remainder & ~0x7F:
                return self._reject("crc", message, df=df)
            state = self._verified_state(int.from_bytes(message[1:4], "big"), received_us)
            self._capability(state, message[0] & 7)
            return None
        if df in _AP_FORMATS:
            address = remainder
            known = self._aircraft.get(address)
            if known is None or not known.verified:
                if not self.trust_address_parity:
                    return self._reject("unverified_address", message, df=df, address=address)
                if known is None:
                    known = self._aircraft[address] = AircraftState(address, received_us)
            known.last_seen_us = max(known.last_seen_us, received_us)
            self._surveillance_reply(known, df, message)
            return None
        return self._reject("unsupported_df", message, df=df)

    def _verified_state(self, address: int, received_us: int) -> AircraftState:
        state = self._aircraft.get(address)
        if state is None:
            state = self._aircraft[address] = AircraftState(address, received_us, verified=True)
        else:
            state.verified = True
            if received_us > state.last_seen_us:
                state.last_seen_us = received_us
        return state

    @staticmethod
    def _capability(state: AircraftState, ca: int) -> None:
        if ca == 4:
            state.on_ground = True
        elif ca == 5:
            state.on_ground = False

    @staticmethod
    def _surveillance_reply(state: AircraftState, df: int, message: bytes) -> None:
        first = message[0]
        if df == 0 or df == 16:
            # VS: vertical status, 1 = on the ground
            state.on_ground = bool(first & 0x04)
        else:
            fs = first & 7  # flight status: 0/2 airborne, 1/3 on the ground, else either
            if fs < 4:
                state.on_ground = bool(fs & 1)
        code = ((message[2] & 0x1F) << 8) | message[3]
        if df == 5 or df == 21:
            state.squawk = idcode_to_squawk(code)
        else:
            altitude = altcode_to_altitude(code)
            if altitude is not None:
                state.altitude_ft = altitude

    def _extended_squitter(
        self,
        state: AircraftState,
        message: bytes,
        received_us: int,
        source: str,
        signal_db: float | None,
    ) -> Fix | Rejected | None:
        me = int.from_bytes(message[4:11], "big")
        tc = me >> 51
        if 9 <= tc <= 18 or 20 <= tc <= 22:
            return self._airborne_position(state, message, me, tc, received_us, source, signal_db)
        if tc == 19:
            self._velocity(state, me)
            return None
        if 1 <= tc <= 4:
            self._identification(state, me, tc)
            return None
        if 5 <= tc <= 8:
            return self._surface_position(state, message, me, received_us, source, signal_db)
        if tc == 28:
            self._aircraft_status(state, me)
            return None
        self.stats[f"ignored_tc_{tc}"] += 1
        return None

    @staticmethod
    def _identification(state: AircraftState, me: int, tc: int) -> None:
        fields = decode_bds08(me)
        callsign: str = fields["callsign"]
        if callsign and "#" not in callsign:
            state.callsign = callsign
        category: int = fields["category"]
        if category:
            state.emitter_category = f"{'DCBA'[tc - 1]}{category}"
            state.aircraft_type = _EMITTER_AIRCRAFT_TYPE.get(state.emitter_category)

    @staticmethod
    def _velocity(state: AircraftState, me: int) -> None:
        fields = decode_bds09(me)
        subtype = fields["subtype"]
        if subtype == 1 or subtype == 2:
            if fields["groundspeed"] is not None:
                state.ground_speed_kt = float(fields["groundspeed"])
                state.track_deg = fields["track"]
        elif subtype == 3 or subtype == 4:
            state.heading_deg = fields["heading"]
            state.airspeed_kt = fields["airspeed"]
            state.airspeed_type = fields["airspeed_type"]
        else:
            return  # reserved subtypes carry nothing we can read
        if fields["vertical_rate"] is not None:
            state.vertical_rate_fpm = fields["vertical_rate"]
            state.vertical_rate_source = fields["vr_source"]

    @staticmethod
    def _aircraft_status(state: AircraftState, me: int) -> None:
        if (me >> 48) & 7 != 1:
            return  # subtype 2 is an ACAS RA broadcast
        state.emergency_state = (me >> 45) & 7
        code = (me >> 32) & 0x1FFF
        if code:
            state.squawk = idcode_to_squawk(code)

    def _airborne_position(
        self,
        state: AircraftState,
        message: bytes,
        me: int,
        tc: int,
        received_us: int,
        source: str,
        signal_db: float | None,
    ) -> Fix | Rejected | None:
        ac = (me >> 36) & 0xFFF
        altitude: int | None = None
        if tc <= 18:
            # the 12-bit field is the 13-bit altitude code without its M bit
            altitude = altcode_to_altitude(((ac >> 6) << 7) | (ac & 0x3F))
            if altitude is not None:
                state.altitude_ft = altitude
        elif ac:
            altitude = round(ac * 3.28084)
            state.gnss_altitude_ft = altitude
        state.on_ground = False
        odd, frame, other = _take_frame(state.airborne_frames, me, received_us)
        _, cpr_lat, cpr_lon = frame

        position: tuple[float, float] | None = None
        global_misfit = False
        if other is not None and abs(received_us - other[0]) <= PAIR_WINDOW_US:
            if odd:
                pair = airborne_position_pair(
                    other[1], other[2], cpr_lat, cpr_lon, even_is_newer=False
                )
            else:
                pair = airborne_position_pair(
                    cpr_lat, cpr_lon, other[1], other[2], even_is_newer=True
                )
            if pair is None:
                self.stats["cpr_zone_mismatch"] += 1
            elif self._accept_global(state, pair, received_us):
                position = pair
                self.stats["position_global"] += 1
            else:
                global_misfit = True
        if (
            position is None
            and state.lat is not None
            and state.lon is not None
            and abs(received_us - state.position_us) <= LOCAL_REFERENCE_MAX_AGE_US
        ):
            local = airborne_position_with_ref(odd, cpr_lat, cpr_lon, state.lat, state.lon)
            if _reachable(
                local[0], local[1], state.lat, state.lon, received_us - state.position_us
            ):
                position = local
                self.stats["position_local"] += 1
            else:
                return self._reject("implausible_position", message, lat=local[0], lon=local[1])
        if position is None:
            if global_misfit:
                return self._reject("implausible_position", message)
            return None
        return self._fix(state, position, altitude, received_us, source, signal_db)

    def _accept_global(
        self, state: AircraftState, pair: tuple[float, float], received_us: int
    ) -> bool:
        """Whether a global result fits the track; a second agreeing misfit re-anchors it."""
        if state.lat is None or state.lon is None:
            return True
        if _reachable(pair[0], pair[1], state.lat, state.lon, received_us - state.position_us):
            state.candidate = None
            return True
        candidate = state.candidate
        if candidate is not None and _reachable(
            pair[0], pair[1], candidate[0], candidate[1], received_us - candidate[2]
        ):
            self.stats["position_reanchored"] += 1
            state.candidate = None
            return True
        state.candidate = (pair[0], pair[1], received_us)
        return False

    def _surface_position(
        self,
        state: AircraftState,
        message: bytes,
        me: int,
        received_us: int,
        source: str,
        signal_db: float | None,
    ) -> Fix | Rejected | None:
        fields = decode_bds06(me)
        if fields["groundspeed"] is not None:
            state.ground_speed_kt = float(fields["groundspeed"])
        if fields["track"] is not None:
            state.track_deg = fields["track"]
        state.on_ground = True
        odd, frame, other = _take_frame(state.surface_frames, me, received_us)
        _, cpr_lat, cpr_lon = frame

        position: tuple[float, float] | None = None
        global_misfit = False
        if other is not None and abs(received_us - other[0]) <= SURFACE_PAIR_WINDOW_US:
            even, odd_frame = (other, frame) if odd else (frame, other)
            if state.lat is not None and state.lon is not None:
                # the candidates are 90 degrees apart: a position of any age tells them
                # apart, and pyModeS picks the one nearest it
                pair = surface_position_pair(
                    even[1], even[2], odd_frame[1], odd_frame[2],
                    lat_ref=state.lat, lon_ref=state.lon, even_is_newer=not odd,
                )
                if pair is None:
                    self.stats["cpr_zone_mismatch"] += 1
                elif self._accept_global(state, pair, received_us):
                    position = pair
                    self.stats["position_surface_pair"] += 1
                else:
                    global_misfit = True
            elif candidates := surface_candidates(even, odd_frame, even_is_newer=not odd):
                placed = self._place_surface_pair(candidates, message)
                if isinstance(placed, Rejected):
                    return placed
                position = placed
            else:
                self.stats["cpr_zone_mismatch"] += 1
        # After a misfit pair the track, not the pair, is the suspect (in 25 s a surface
        # aircraft moves a few km, nothing beside a 1.5-degree CPR zone): a local decode
        # against the track would only confirm the track.
        if (
            position is None
            and not global_misfit
            and state.lat is not None
            and state.lon is not None
            and abs(received_us - state.position_us) <= SURFACE_REFERENCE_MAX_AGE_US
        ):
            local = surface_position_with_ref(odd, cpr_lat, cpr_lon, state.lat, state.lon)
            distance_km = _distance_km(local[0], local[1], state.lat, state.lon)
            if distance_km > SURFACE_RANGE_KM:
                return self._reject(
                    "surface_out_of_range", message, lat=local[0], lon=local[1],
                    reference="track", distance_km=round(distance_km, 1),
                )
            if not _reachable(
                local[0], local[1], state.lat, state.lon, received_us - state.position_us
            ):
                return self._reject("implausible_position", message, lat=local[0], lon=local[1])
            position = local
            self.stats["position_surface_local"] += 1
        if position is None:
            if global_misfit:
                return self._reject("implausible_position", message)
            self.stats["surface_unpaired"] += 1
            return None
        return self._fix(state, position, None, received_us, source, signal_db)

    def _place_surface_pair(
        self, candidates: list[tuple[float, float]], message: bytes
    ) -> tuple[float, float] | Rejected:
        """The candidate at a known airport, else the receiver's, for an aircraft not yet placed."""
        if self.airports is not None:
            best: tuple[float, float] | None = None
            best_m = math.inf
            for lat, lon in candidates:
                airport = self.airports(lat, lon, SURFACE_AIRPORT_RADIUS_M)
                if airport is not None:
                    metres = 1000 * _distance_km(lat, lon, airport.lat, airport.lon)
                    if metres < best_m:
                        best, best_m = (lat, lon), metres
            if best is not None:
                self.stats["position_surface_airport"] += 1
                return best
        if self.reference is None:
            return self._reject("surface_no_reference", message)
        ref_lat, ref_lon = self.reference
        lat, lon = min(candidates, key=lambda c: _distance_km(c[0], c[1], ref_lat, ref_lon))
        distance_km = _distance_km(lat, lon, ref_lat, ref_lon)
        if distance_km > SURFACE_RANGE_KM:
            return self._reject(
                "surface_out_of_range", message, lat=lat, lon=lon,
                reference="receiver", distance_km=round(distance_km, 1),
            )
        self.stats["position_surface_receiver"] += 1
        return lat, lon

    def _fix(
        self,
        state: AircraftState,
        position: tuple[float, float],
        altitude: int | None,
        received_us: int,
        source: str,
        signal_db: float | None,
    ) -> Fix:
        lat, lon = position
        if received_us >= state.position_us:
            state.lat = lat
            state.lon = lon
            state.position_us = received_us
        state.positions += 1
        if altitude is None and not state.on_ground:
            altitude = (
                state.altitude_ft if state.altitude_ft is not None else state.gnss_altitude_ft
            )
        return icao_fix(
            state,
            protocol=Protocol.BEAST,
            address=state.address,
            received_us=received_us,
            lat=lat,
            lon=lon,
            altitude_ft=altitude,
            source=source,
            aircraft_type=state.aircraft_type,
            signal_db=signal_db,
        )
