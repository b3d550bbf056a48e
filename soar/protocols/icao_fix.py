"""The `Fix` an ICAO-addressed aircraft's accumulated state makes, for both Mode S decoders.

`modes` (raw Mode S from Beast) and `sbs` (BaseStation CSV) keep a state per aircraft that
identity, velocity and squawk messages update between positions; each new position becomes a
`Fix` carrying that state. The mapping lives here once so the two feeds cannot drift apart on
it: the transponder's vertical rate is the fix's climb rate, its air/ground state the fix's
`on_ground`.

May import: soar.records
"""

from __future__ import annotations

import typing

from soar.records import AddressType, AircraftType, Fix, Protocol


class IcaoState(typing.Protocol):
    """What a decoder's per-aircraft state offers a fix. Read-only, so a state keeping a
    field as an int (Mode S) fits as well as one keeping it as a float (SBS)."""

    @property
    def ground_speed_kt(self) -> float | None: ...

    @property
    def track_deg(self) -> float | None: ...

    @property
    def vertical_rate_fpm(self) -> float | None: ...

    @property
    def callsign(self) -> str | None: ...

    @property
    def squawk(self) -> str | None: ...

    @property
    def on_ground(self) -> bool | None: ...


def icao_fix(
    state: IcaoState,
    *,
    protocol: Protocol,
    address: int,
    received_us: int,
    lat: float,
    lon: float,
    altitude_ft: float | None,
    source: str,
    time_us: int = 0,
    aircraft_type: AircraftType | None = None,
    signal_db: float | None = None,
) -> Fix:
    """A fix at (lat, lon) with the aircraft's latest speed, track, climb, callsign, squawk
    and air/ground state; the caller gives what its feed knows of the position itself."""
    return Fix(
        protocol=protocol,
        address_type=AddressType.ICAO,
        address=address,
        received_us=received_us,
        lat=lat,
        lon=lon,
        time_us=time_us,
        altitude_ft=altitude_ft,
        ground_speed_kt=state.ground_speed_kt,
        track_deg=state.track_deg,
        climb_fpm=state.vertical_rate_fpm,
        callsign=state.callsign,
        squawk=state.squawk,
        on_ground=state.on_ground,
        aircraft_type=aircraft_type,
        signal_db=signal_db,
        source=source,
    )
