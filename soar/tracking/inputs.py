"""What a shard consumes: decoded fixes, raw Mode S / SBS messages, and clock ticks.

Raw ADS-B input is decoded inside the shard because the CPR and identification state of an
aircraft (one accumulator per shard) must live with the aircraft's flight state.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from soar.records import Fix

if TYPE_CHECKING:
    from soar.protocols.sbs import SbsMessage


@dataclass(slots=True, frozen=True)
class ModeSInput:
    message: bytes  # 7 or 14 bytes of Mode S
    received_us: int
    source: str = ""
    signal_db: float | None = None
    remainder: int | None = None  # its CRC remainder, computed once by the decoder
    time_us: int = 0  # the frame's own time (its receiver's counter); 0: the receive time


@dataclass(slots=True, frozen=True)
class SbsInput:
    msg: SbsMessage
    received_us: int
    source: str = ""
    time_us: int = 0  # the message's generated time as UTC; 0: the receive time


@dataclass(slots=True, frozen=True)
class ClockTick:
    """The feed's fix clock, broadcast to every shard so that a quiet shard still times out."""

    now_us: int


@dataclass(slots=True, frozen=True)
class TowRelease:
    """A glider's aerotow, decided by the `TowDetector`, for the glider's shard to record."""

    glider_aircraft_id: int
    flight_id: uuid.UUID
    tow_aircraft_id: int
    release_us: int
    altitude_ft: float | None  # MSL
    height_ft: float | None  # above the departure airfield


ShardInput = Fix | ModeSInput | SbsInput | ClockTick | TowRelease
