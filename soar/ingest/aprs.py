"""APRS-IS client: logs in, reads lines, keeps the link alive, reconnects (on `tcp.py`).

Every line the server sends becomes an `Envelope(Protocol.OGN, ...)`, server `#` comment
lines included (the parser turns those into server messages). A `#` keepalive line goes to
the server every `keepalive_interval` seconds whatever the traffic; `idle_timeout` seconds
without a byte from the server mean a dead link.

May import: soar, soar.backoff, soar.hostport, soar.ingest.tcp, soar.records
"""

from __future__ import annotations

from typing import ClassVar, Literal

import aprslib
import structlog
import trio

import soar
from soar.backoff import Backoff
from soar.hostport import APRS_IS_PORT
from soar.ingest.tcp import (
    Connection,
    EnvelopeSink,
    NowUs,
    TcpSource,
    pump_lines,
    wall_clock_us,
)
from soar.records import Protocol

log = structlog.get_logger(__name__)

DEFAULT_PORT = APRS_IS_PORT
KEEPALIVE_INTERVAL = 20.0
IDLE_TIMEOUT = 300.0
MAX_LINE = 1024
KEEPALIVE_LINE = b"# soar keepalive\r\n"


def login_line(
    callsign: str, passcode: int, server_filter: str | None = None, version: str = soar.__version__
) -> bytes:
    """`user CALL pass PASSCODE vers soar VERSION[ filter FILTER]` with CRLF."""
    line = f"user {callsign} pass {passcode} vers soar {version}"
    if server_filter:
        line += f" filter {server_filter}"
    return line.encode("ascii") + b"\r\n"


def resolve_passcode(callsign: str, passcode: int | Literal["auto"]) -> int:
    """`"auto"` = the passcode APRS-IS expects for the callsign; -1 = receive only."""
    if passcode == "auto":
        return int(aprslib.passcode(callsign))
    return passcode


class AprsIsSource(TcpSource):
    protocol: ClassVar[Protocol] = Protocol.OGN
    scheme: ClassVar[str] = "aprs"
    default_port: ClassVar[int] = DEFAULT_PORT

    def __init__(
        self,
        server: str,
        callsign: str,
        *,
        server_filter: str | None = None,
        passcode: int | Literal["auto"] = -1,
        source: str | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        connect_timeout: float = 30.0,
        max_line: int = MAX_LINE,
        backoff: Backoff | None = None,
        now_us: NowUs = wall_clock_us,
    ) -> None:
        if not callsign or any(c.isspace() for c in callsign):
            raise ValueError(f"bad APRS-IS callsign: {callsign!r}")
        if server_filter is not None and ("\r" in server_filter or "\n" in server_filter):
            raise ValueError(f"bad APRS-IS filter: {server_filter!r}")
        super().__init__(
            server,
            source=source,
            idle_timeout=idle_timeout,
            connect_timeout=connect_timeout,
            backoff=backoff,
            now_us=now_us,
        )
        self.login = login_line(callsign, resolve_passcode(callsign, passcode), server_filter)
        self.keepalive_interval = keepalive_interval
        self.max_line = max_line

    async def session(self, conn: Connection, send: EnvelopeSink) -> None:
        await conn.send_all(self.login)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keepalive, conn)
            await pump_lines(
                conn,
                send,
                source=self.source,
                protocol=self.protocol,
                max_line=self.max_line,
                on_line=self._on_line,
            )

    async def _keepalive(self, conn: Connection) -> None:
        while True:
            await trio.sleep(self.keepalive_interval)
            await conn.send_all(KEEPALIVE_LINE)

    def _on_line(self, line: bytes) -> None:
        if line.startswith(b"# logresp"):
            log.info("aprs.logresp", source=self.source, text=line.decode("utf-8", "replace"))
