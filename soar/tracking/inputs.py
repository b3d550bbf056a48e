"""What a shard consumes: decoded fixes, raw Mode S / SBS messages, clock ticks, and the
control inputs that hand aircraft from one shard to another.

Raw ADS-B input is decoded inside the shard because the CPR and identification state of an
aircraft (one accumulator per shard) must live with the aircraft's flight state.

Control inputs travel in the same channel as the fixes so that they take effect exactly between
the fixes before and after them: in split mode a track process acquires and gives back
partitions of aircraft while it runs (`RestoreFlights` when it takes some over, `ForgetAircraft`
when it gives them back).

May import: soar.protocols, soar.records
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from soar.records import Fix, FlightRow

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


@runtime_checkable
class OpenFlightLike(Protocol):
    """An open flight as the store reads it back (`soar.store.queries.OpenFlight`)."""

    @property
    def flight(self) -> FlightRow: ...

    @property
    def fixes(self) -> list[Fix]: ...


Restorable = tuple[FlightRow, list[Fix]] | OpenFlightLike
"""An open flight and its aircraft's last fixes, as a pair or as the store returns it."""


@dataclass(slots=True, frozen=True)
class RestoreFlights:
    """Replace the shard's state of exactly these aircraft with what the database had.

    Each item is an open flight and its aircraft's last fixes (as `Shard.restore` takes them);
    a closed row only drops what the shard held for its aircraft. With `now_us` (the receive
    clock), restored flights silent for 1 h by then are timed out at once; without it the
    shard's own clock decides at its next sweep.
    """

    flights: Sequence[Restorable]
    now_us: int | None = None


@dataclass(slots=True, frozen=True)
class ForgetAircraft:
    """Give back every aircraft for which `owned(aircraft_id)` is true.

    The shard first emits the latest row of each one's open flight and its unsent aircraft
    row, so the next owner restores the current state from the database, then drops all it
    held for them (track, decoder accumulators, landing memory).
    """

    owned: Callable[[int], bool]


ShardInput = (
    Fix | ModeSInput | SbsInput | ClockTick | TowRelease | RestoreFlights | ForgetAircraft
)
