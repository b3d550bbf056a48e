"""Real TCP feed servers on 127.0.0.1 for the ingest tests, replaying the real captures.

`FeedServer(behaviour)` listens on an ephemeral port with `trio.serve_tcp`; every accepted
connection is recorded (`ServedConnection`: when it was accepted on trio's clock, the lines the
client sent and when) and handed to `behaviour(stream, conn)`, which decides what the feed
does: replay a capture, cut a line in half, go silent, never answer, close at once.
"""

from __future__ import annotations

import csv
import gzip
import random
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from soar.protocols.beast import MODE_S_LONG, MODE_S_SHORT, BeastFrame

OGN_TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"
SBS_SAMPLE = "sbs/adsbhub-sbs-sample-20260224.txt.gz"
ADSB_SAMPLE = "adsb/pymodes-sample_data_adsb.csv"
MLAT_MASK = (1 << 48) - 1
APRSC_BANNER = b"# aprsc 2.1.14-g5e22b37"  # what aprs.glidernet.org servers greet with


# ---- the real captures, as the bytes a live feed would send ------------------------------


def ogn_aprs_lines(testdata: Path) -> list[bytes]:
    """The APRS lines of the recorded OGN trace, without their recorded receive times."""
    lines = []
    for raw in (testdata / OGN_TRACE).read_bytes().splitlines():
        _time, _sep, line = raw.partition(b" ")
        lines.append(line)
    return lines


def sbs_lines(testdata: Path) -> list[bytes]:
    with gzip.open(testdata / SBS_SAMPLE, "rb") as f:
        return [line.rstrip(b"\r\n") for line in f if line.strip()]


def adsb_messages(testdata: Path) -> list[tuple[int, bytes]]:
    """(unix seconds, Mode S message) of the pyModeS ADS-B sample."""
    with (testdata / ADSB_SAMPLE).open(encoding="utf-8-sig", newline="") as f:
        return [(int(row[0]), bytes.fromhex(row[1])) for row in csv.reader(f)]


def beast_frames(testdata: Path) -> list[BeastFrame]:
    """The ADS-B sample as Beast frames, MLAT counter = recorded time at 12 MHz (48-bit wrap)."""
    frames = []
    for index, (seconds, message) in enumerate(adsb_messages(testdata)):
        # several messages share a recorded second: spread them so the counter keeps rising
        mlat = (seconds * 12_000_000 + index * 1_200) & MLAT_MASK
        kind = MODE_S_LONG if len(message) == 14 else MODE_S_SHORT
        frames.append(BeastFrame(kind, mlat, message[-1], message))
    return frames


def crlf(lines: Iterable[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


def chunks(data: bytes, rng: random.Random, largest: int = 700) -> list[bytes]:
    """`data` cut at random places, so lines and frames straddle reads."""
    out = []
    pos = 0
    while pos < len(data):
        size = rng.randint(1, largest)
        out.append(data[pos : pos + size])
        pos += size
    return out


# ---- the server --------------------------------------------------------------------------


@dataclass
class ServedConnection:
    index: int
    accepted_at: float
    closed_at: float | None = None
    received: list[tuple[float, bytes]] = field(default_factory=list)  # (trio time, line)
    sent_until: float | None = None  # trio time the behaviour sent its last byte
    first_line: trio.Event = field(default_factory=trio.Event)


Behaviour = Callable[[trio.SocketStream, ServedConnection], Awaitable[None]]


class FeedServer:
    def __init__(
        self,
        behaviour: Behaviour,
        accept_log: list[tuple[str, float]] | None = None,
        name: str = "",
    ) -> None:
        self.behaviour = behaviour
        self.connections: list[ServedConnection] = []
        self.port = 0
        self.name = name
        self._accept_log = accept_log
        self._accepted = trio.lowlevel.ParkingLot()

    async def start(self, nursery: trio.Nursery) -> int:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def wait_connections(self, count: int) -> None:
        # no polling: on a MockClock every poll would be a timer for the clock to jump to
        while len(self.connections) < count:
            await self._accepted.park()

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = ServedConnection(len(self.connections), trio.current_time())
        self.connections.append(conn)
        self._accepted.unpark_all()
        if self._accept_log is not None:
            self._accept_log.append((self.name, conn.accepted_at))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_record_lines, stream, conn, nursery.cancel_scope)
                await self.behaviour(stream, conn)
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            conn.closed_at = trio.current_time()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)


async def _record_lines(
    stream: trio.SocketStream, conn: ServedConnection, scope: trio.CancelScope
) -> None:
    """Record what the client sends; when the client hangs up, the connection ends."""
    buffer = b""
    try:
        while data := await stream.receive_some(65536):
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            now = trio.current_time()
            conn.received.extend((now, line + b"\n") for line in lines)
            if conn.received:
                conn.first_line.set()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


async def read_login(stream: trio.SocketStream, conn: ServedConnection) -> None:
    """Wait until the client has sent its first line (the APRS-IS login)."""
    del stream
    await conn.first_line.wait()


# ---- behaviours ---------------------------------------------------------------------------


def replay(
    data: bytes,
    *,
    seed: int = 1,
    then: str = "hold",
    greet: bytes | None = None,
    wait_login: bool = False,
) -> Behaviour:
    """Send `data` in random chunks, then `hold` the connection open silently or `close`."""

    async def behaviour(stream: trio.SocketStream, conn: ServedConnection) -> None:
        if greet is not None:
            await stream.send_all(greet + b"\r\n")
        if wait_login:
            await read_login(stream, conn)
        for chunk in chunks(data, random.Random(seed)):
            await stream.send_all(chunk)
        conn.sent_until = trio.current_time()
        if then == "hold":
            await trio.sleep_forever()

    return behaviour


def per_connection(*behaviours: Behaviour) -> Behaviour:
    """Connection k gets behaviours[k]; later connections get the last one."""

    async def behaviour(stream: trio.SocketStream, conn: ServedConnection) -> None:
        await behaviours[min(conn.index, len(behaviours) - 1)](stream, conn)

    return behaviour


async def close_at_once(stream: trio.SocketStream, conn: ServedConnection) -> None:
    del stream, conn


async def never_answer(stream: trio.SocketStream, conn: ServedConnection) -> None:
    del stream, conn
    await trio.sleep_forever()


def hold_for(seconds: float) -> Behaviour:
    async def behaviour(stream: trio.SocketStream, conn: ServedConnection) -> None:
        del stream, conn
        await trio.sleep(seconds)

    return behaviour


def trickle(lines: list[bytes], interval: float, last_at: float) -> Behaviour:
    """One line every `interval` s, the last at `last_at` s, then close: a feed that worked."""

    async def behaviour(stream: trio.SocketStream, conn: ServedConnection) -> None:
        start = trio.current_time()
        index = 0
        while True:
            await stream.send_all(lines[index % len(lines)] + b"\r\n")
            index += 1
            if trio.current_time() - start >= last_at:
                break
            await trio.sleep(interval)
        conn.sent_until = trio.current_time()

    return behaviour


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class FixedResolver(trio.abc.HostnameResolver):
    """Resolves one made-up name to several loopback addresses, in a fixed order."""

    def __init__(self, name: str, ports: list[int]) -> None:
        self.name = name
        self.ports = ports
        self.lookups = 0

    async def getaddrinfo(  # type: ignore[override]
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[str, int]]]:
        del port, family, type, proto, flags
        if host is None or host.decode() != self.name:
            raise socket.gaierror(socket.EAI_NONAME, "unknown host")
        self.lookups += 1
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", p))
            for p in self.ports
        ]

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> tuple[str, str]:
        raise NotImplementedError
