"""Beast TCP source (port 30005): deframes with `soar.protocols.beast`, on `tcp.py`.

One `BeastDeframer` per connection: a partial frame left by a dropped connection must not be
glued to the first bytes of the next one. Each envelope carries one un-escaped frame
(`BeastFrame.to_bytes()`), stamped with the receive time of the chunk that completed it.

That receive time is only a bound: every frame of a read shares it, and the network or a
buffer may have held a read back. Each frame's own time comes from its 12 MHz counter, anchored
to these receive times per source by the decoder (`soar.protocols.beast.MlatClock`, in
`soar.decode`): from the envelope alone, so the spool, the raw archive and a re-delivery give
the same time again, and a reconnect to the same receiver keeps its anchor (its counter runs on;
a restarted receiver's counter jumps and re-anchors).

May import: soar.hostport, soar.ingest.metrics, soar.ingest.tcp, soar.protocols, soar.records
"""

from __future__ import annotations

from typing import ClassVar

import structlog

from soar.hostport import BEAST_PORT
from soar.ingest import metrics
from soar.ingest.tcp import Connection, EnvelopeSink, TcpSource
from soar.protocols.beast import BeastDeframer
from soar.records import Envelope, Protocol

log = structlog.get_logger(__name__)

DEFAULT_PORT = BEAST_PORT


class BeastSource(TcpSource):
    protocol: ClassVar[Protocol] = Protocol.BEAST
    scheme: ClassVar[str] = "beast"
    default_port: ClassVar[int] = DEFAULT_PORT

    async def session(self, conn: Connection, send: EnvelopeSink) -> None:
        labels = (self.source, Protocol.BEAST.value)
        messages = metrics.SOURCE_MESSAGES.labels(*labels)
        garbage = metrics.SOURCE_GARBAGE_BYTES.labels(*labels)
        resyncs = metrics.SOURCE_REJECTS.labels(*labels, "beast_resync")
        deframer = BeastDeframer()
        garbage_seen = resyncs_seen = 0
        try:
            while True:
                data, received_us = await conn.receive()
                frames = deframer.feed(data)
                if deframer.resyncs != resyncs_seen:
                    resyncs.inc(deframer.resyncs - resyncs_seen)
                    garbage.inc(deframer.garbage_bytes - garbage_seen)
                    log.warning(
                        "source.reject",
                        source=self.source,
                        protocol=Protocol.BEAST.value,
                        reason="beast_resync",
                        garbage_bytes=deframer.garbage_bytes - garbage_seen,
                    )
                elif deframer.garbage_bytes != garbage_seen:
                    garbage.inc(deframer.garbage_bytes - garbage_seen)
                garbage_seen = deframer.garbage_bytes
                resyncs_seen = deframer.resyncs
                for frame in frames:
                    await send.send(
                        Envelope(Protocol.BEAST, received_us, frame.to_bytes(), self.source)
                    )
                messages.inc(len(frames))
        finally:
            if deframer.buffered:
                metrics.SOURCE_REJECTS.labels(*labels, "truncated_frame").inc()
                log.warning(
                    "source.reject",
                    source=self.source,
                    protocol=Protocol.BEAST.value,
                    reason="truncated_frame",
                    buffered=deframer.buffered,
                )
