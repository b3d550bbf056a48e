"""Fix sequences for the flight-rule tests, and a shard driven through channels (`Sinks`,
`run_shard`) for the shard tests."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Sequence

import trio

from soar.records import AddressType, AircraftSeen, Fix, FlightRow, Protocol
from soar.tracking.inputs import ShardInput
from soar.tracking.shard import Shard, ShardSinks

T0 = 1_766_000_000_000_000  # 2025-12-17T19:33:20Z, µs
S = 1_000_000
ADDRESS = 0x48683E


def ids() -> Callable[[], uuid.UUID]:
    counter = itertools.count(1)
    return lambda: uuid.UUID(int=next(counter))


def fix(
    t_s: float,
    speed: float | None = 0.0,
    *,
    alt: float | None = 500.0,
    agl: float | None = None,
    lat: float = 45.0,
    lon: float = 9.0,
    protocol: Protocol = Protocol.OGN,
    on_ground: bool | None = None,
    callsign: str | None = None,
    climb: float | None = None,
    track: float | None = None,
    at: float | None = None,
) -> Fix:
    """A fix received at `t_s`; its own time is `at` (default: the receive time)."""
    return Fix(
        protocol=protocol,
        address_type=AddressType.ICAO,
        address=ADDRESS,
        received_us=T0 + round(t_s * S),
        lat=lat,
        lon=lon,
        time_us=T0 + round((t_s if at is None else at) * S),
        altitude_ft=alt,
        ground_speed_kt=speed,
        track_deg=track,
        climb_fpm=climb,
        callsign=callsign,
        on_ground=on_ground,
        agl_ft=agl,
    )


def us(t_s: float) -> int:
    return T0 + round(t_s * S)


BIG = 100_000


class Sinks:
    def __init__(self, live: Callable[[Fix], None] | None = None) -> None:
        self.fixes_send, self.fixes = trio.open_memory_channel[Fix](BIG)
        self.flights_send, self.flights = trio.open_memory_channel[FlightRow](BIG)
        self.seen_send, self.seen = trio.open_memory_channel[AircraftSeen](BIG)
        self.live: list[Fix] = []
        self.sinks = ShardSinks(
            self.fixes_send, self.flights_send, self.seen_send, live or self.live.append
        )

    @staticmethod
    def drain(channel: trio.MemoryReceiveChannel[object]) -> list[object]:
        out = []
        while True:
            try:
                out.append(channel.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return out

    def rows(self) -> dict[object, FlightRow]:
        latest: dict[object, FlightRow] = {}
        for row in self.drain(self.flights):
            assert isinstance(row, FlightRow)
            latest[row.id] = row
        return latest


async def run_shard(shard: Shard, items: Sequence[ShardInput], sinks: Sinks) -> None:
    send, receive = trio.open_memory_channel[ShardInput](BIG)
    for item in items:
        send.send_nowait(item)
    send.close()
    await shard.run(receive, sinks.sinks)


def takeoff_sequence(start: float = 0.0, **kw: object) -> list[Fix]:
    ground = [fix(start + 5 * i, 0.0, **kw) for i in range(3)]  # type: ignore[arg-type]
    air = [fix(start + 15 + 5 * i, 60.0, track=250.0, **kw) for i in range(10)]  # type: ignore[arg-type]
    return ground + air
