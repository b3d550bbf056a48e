"""SBS/BaseStation TCP source (port 30003): one envelope per CSV line, on `tcp.py`.

May import: soar.backoff, soar.hostport, soar.ingest.tcp, soar.records
"""

from __future__ import annotations

from typing import ClassVar

from soar.backoff import Backoff
from soar.hostport import SBS_PORT
from soar.ingest.tcp import Connection, EnvelopeSink, NowUs, TcpSource, pump_lines, wall_clock_us
from soar.records import Protocol

DEFAULT_PORT = SBS_PORT
MAX_LINE = 1024


class SbsSource(TcpSource):
    protocol: ClassVar[Protocol] = Protocol.SBS
    scheme: ClassVar[str] = "sbs"
    default_port: ClassVar[int] = DEFAULT_PORT

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
        super().__init__(
            server,
            source=source,
            idle_timeout=idle_timeout,
            connect_timeout=connect_timeout,
            backoff=backoff,
            now_us=now_us,
        )
        self.max_line = max_line

    async def session(self, conn: Connection, send: EnvelopeSink) -> None:
        await pump_lines(
            conn, send, source=self.source, protocol=self.protocol, max_line=self.max_line
        )
