"""Spill to disk instead of blocking or dropping: the buffer between a source and its pipeline.

A source hands every envelope to `OverflowSink.send`. While the pipeline's channel has room and
nothing is spooled, the envelope goes straight into the channel. When the channel is full, the
envelope (and every later one, to keep the order) is appended to the protocol's `DiskSpool`; the
`drain` task feeds spooled envelopes back into the channel, oldest first, as pressure falls, and
switches back to the direct path once the spool is empty. The spool survives a restart, so what
was spooled when the process stopped is replayed when it starts again.

The spool never drops: when it refuses an envelope (past `spool_max_bytes`, its free-space
reserve on the disk, ENOSPC) or fails (directory read-only), the refusal is counted (the spool's
`soar_spool_full_total`, or `soar_overflow_spool_errors_total`) and logged once per episode, and
`send` *blocks the source*, keeping the order: with envelopes already spooled it waits for the
drain to make room and appends again; with none it waits on the channel. A TCP source that is
not read applies back-pressure to its server; nothing read is lost. It resumes by itself.

May import: soar.records, soar.spool
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from pathlib import Path

import structlog
import trio
from prometheus_client import Counter, Gauge

from soar.records import Envelope, Protocol
from soar.spool import DiskSpool, SpoolError, SpoolFull

log = structlog.get_logger(__name__)

SPOOLED = Counter("soar_overflow_spooled_total", "Envelopes spilled to the disk spool", ["protocol"])
SPOOL_ERRORS = Counter(
    "soar_overflow_spool_errors_total", "Failures writing or reading the overflow spool", ["protocol"]
)
SPOOL_DEPTH = Gauge("soar_overflow_spool_depth", "Envelopes waiting in the overflow spool", ["protocol"])

_HEADER = struct.Struct(">BqH")  # protocol code, received_us, source length
#: The protocol's code in spooled records: written on disk and sent between processes, so it is
#: fixed here and never renumbered (not the member's position in `Protocol`).
SPOOL_PROTOCOL_CODES: dict[Protocol, int] = {Protocol.OGN: 0, Protocol.BEAST: 1, Protocol.SBS: 2}
_PROTOCOL_OF_CODE = {code: protocol for protocol, code in SPOOL_PROTOCOL_CODES.items()}


class EnvelopeError(ValueError):
    """A record that is not an encoded envelope (truncated, unknown protocol, bad source)."""


def encode_envelope(env: Envelope) -> bytes:
    source = env.source.encode()
    code = SPOOL_PROTOCOL_CODES[env.protocol]
    return _HEADER.pack(code, env.received_us, len(source)) + source + env.data


def decode_envelope(record: bytes) -> Envelope:
    """The envelope `encode_envelope` made; `EnvelopeError` for anything else, never a crash."""
    if len(record) < _HEADER.size:
        raise EnvelopeError(f"record of {len(record)} bytes is shorter than its header")
    code, received_us, source_len = _HEADER.unpack_from(record)
    protocol = _PROTOCOL_OF_CODE.get(code)
    if protocol is None:
        raise EnvelopeError(f"unknown protocol code {code}")
    start = _HEADER.size
    if start + source_len > len(record):
        raise EnvelopeError(f"source of {source_len} bytes runs past the record's end")
    try:
        source = record[start : start + source_len].decode()
    except UnicodeDecodeError:
        raise EnvelopeError("source is not UTF-8") from None
    return Envelope(protocol, received_us, record[start + source_len :], source)


class OverflowSink:
    """The envelope sink a protocol's sources write to."""

    def __init__(
        self,
        protocol: Protocol,
        send: trio.MemorySendChannel[Envelope],
        spool_dir: Path | None,
        spool_max_bytes: int,
        tee: Callable[[Envelope], None] | None = None,
    ) -> None:
        self.protocol = protocol
        self._tee = tee
        self._send = send
        self._spool_dir = spool_dir
        self._spool_max_bytes = spool_max_bytes
        self._spool: DiskSpool | None = None
        self._spooling = False
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._in_flight: deque[bytes] = deque()
        # `drain` and `flush` both send what is in flight: one at a time, or both send the
        # first record and both pop it (one record twice, the next one never, or an empty pop)
        self._sending = trio.Lock()
        self._spool_failing = False
        self._labels = {"protocol": protocol.value}

    def open(self) -> None:
        """Open the spool (blocking); whatever a previous run left in it will be replayed."""
        if self._spool_dir is None:
            return
        try:
            self._spool = DiskSpool(self._spool_dir, max_bytes=self._spool_max_bytes,
                                    name=f"ingest.{self.protocol.value}")
        except (SpoolError, OSError) as exc:
            SPOOL_ERRORS.labels(**self._labels).inc()
            log.error("overflow.spool_unavailable", protocol=self.protocol.value, error=str(exc))
            return
        if self._spool.depth_records:
            self._spooling = True
            log.info("overflow.spool_resumed", protocol=self.protocol.value,
                     records=self._spool.depth_records)
        self._update_gauges()

    async def send(self, env: Envelope) -> None:
        if self._tee is not None:
            self._tee(env)
        if not self._spooling:
            try:
                self._send.send_nowait(env)
                return
            except trio.WouldBlock:
                pass
        if self._spool is not None:
            record = encode_envelope(env)
            while True:
                try:
                    self._spool.append(record)
                except SpoolFull as exc:
                    self._refused(exc, "spool full")
                except SpoolError as exc:
                    SPOOL_ERRORS.labels(**self._labels).inc()
                    self._refused(exc, "spool failed")
                else:
                    if self._spool_failing:
                        self._spool_failing = False
                        log.info("overflow.spool_writable_again", protocol=self.protocol.value)
                    SPOOLED.labels(**self._labels).inc()
                    self._spooling = True
                    self._wake.set()
                    return
                if not self._spooling:
                    break  # nothing spooled before it: the channel keeps the order
                # Behind spooled envelopes: only the spool keeps the order. Wait for the drain
                # to acknowledge some (room) or empty it, holding the source meanwhile.
                await self._progress.wait()
        # No usable spool: wait for room rather than lose the envelope.
        await self._send.send(env)

    def _refused(self, exc: SpoolError, what: str) -> None:
        if not self._spool_failing:  # every refusal counted, logged once per episode
            self._spool_failing = True
            log.error("overflow.spool_write_failed", protocol=self.protocol.value,
                      error=str(exc), reason=what, fallback="blocking the source")

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def drain(self) -> None:
        """Feed spooled envelopes back into the channel, oldest first. Runs for ever."""
        while True:
            if not self._spooling or self._spool is None:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            try:
                records = self._spool.read(256)
            except (SpoolError, OSError) as exc:
                SPOOL_ERRORS.labels(**self._labels).inc()
                log.error("overflow.spool_read_failed", protocol=self.protocol.value, error=str(exc))
                await trio.sleep(1.0)
                continue
            if not records:
                self._spooling = False  # checked and flipped with no await between: no race
                self._update_gauges()
                self._progressed()
                continue
            self._in_flight.extend(records)
            await self._send_in_flight()

    async def _send_in_flight(self) -> None:
        """Send the records read but not yet sent, then acknowledge them to the spool. If this
        is cancelled half-way, `flush` carries on from the first record not sent."""
        assert self._spool is not None
        async with self._sending:
            await self._send_in_flight_locked()

    async def _send_in_flight_locked(self) -> None:
        assert self._spool is not None
        while self._in_flight:
            record = self._in_flight[0]
            try:
                env = decode_envelope(record)
            except EnvelopeError:
                SPOOL_ERRORS.labels(**self._labels).inc()
                log.error("overflow.spool_record_undecodable", protocol=self.protocol.value,
                          record=record[:64].hex())
            else:
                await self._send.send(env)
            self._in_flight.popleft()
        self._spool.commit()
        self._update_gauges()
        self._progressed()

    async def flush(self) -> None:
        """On shutdown: put everything spooled into the channel before it closes."""
        if self._spool is None:
            return
        await self._send_in_flight()
        while self._spooling:
            records = self._spool.read(256)
            if not records:
                self._spooling = False
                break
            self._in_flight.extend(records)
            await self._send_in_flight()

    def _update_gauges(self) -> None:
        if self._spool is None:
            return
        SPOOL_DEPTH.labels(**self._labels).set(self._spool.depth_records)

    @property
    def depth(self) -> int:
        return self._spool.depth_records if self._spool is not None else 0
