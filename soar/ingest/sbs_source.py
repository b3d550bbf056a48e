"""SBS/BaseStation TCP source (port 30003): one envelope per CSV line, on `tcp.py`."""

from __future__ import annotations

from typing import NoReturn

from soar.backoff import Backoff
from soar.hostport import SBS_PORT, parse_host_port
from soar.ingest.tcp import (
    Connection,
    EnvelopeSink,
    NowUs,
    ReconnectingClient,
    pump_lines,
    wall_clock_us,
)
from soar.records import Protocol

DEFAULT_PORT = SBS_PORT
MAX_LINE = 1024


class SbsSource:
    def __init__(
        self,
        server: str,
        *,
        source: str | None = None,
        idle_timeout: float = 300.0,
        connect_timeout: float = 30.0,
        max_line: int = MAX_LINE,
        backoff: Backoff | None = None,
        now_us: NowUs = wall_clock_us,
    ) -> None:
        host, port = parse_host_port(server, DEFAULT_PORT)
        self.source = source or f"sbs:{host}:{port}"
        self.max_line = max_line
        self.client = ReconnectingClient(
            host,
            port,
            source=self.source,
            protocol=Protocol.SBS,
            idle_timeout=idle_timeout,
            connect_timeout=connect_timeout,
            backoff=backoff,
            now_us=now_us,
        )

    async def run(self, send: EnvelopeSink) -> NoReturn:
        async def session(conn: Connection) -> None:
            await pump_lines(
                conn, send, source=self.source, protocol=Protocol.SBS, max_line=self.max_line
            )

        await self.client.run(session)
