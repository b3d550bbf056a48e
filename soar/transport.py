"""Envelopes between processes (split mode): `soar ingest` → `soar track`, over pynng Pair1.

Wire format (big-endian):

    batch  b"B" session:u64 seq:u64 count:u32 (length:u32 record)*count
    ack    b"A" session:u64 seq:u64          that one batch is safe (not cumulative: a batch
                                             lost in a track that died may be older than one
                                             the restarted track has already acknowledged)

`record` is `soar.overflow.encode_envelope`. The ingest side (`TrackLink`, one per track) keeps
every batch until the track acknowledges it, and sends all unacknowledged batches again, in
order, when no acknowledgement came for `resend_after` seconds (the track was killed, or the
connection broke). The track (`EnvelopeReceiver`) acknowledges a batch once it is appended to
its write-ahead spool on disk; duplicates after a resend are harmless downstream (fixes are
keyed by aircraft and receive time, the flight state machine drops repeats).
"""

from __future__ import annotations

import random
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable

import structlog
import trio
from prometheus_client import Counter, Gauge

from soar.overflow import decode_envelope, encode_envelope
from soar.records import Envelope
from soar.spool import DiskSpool

log = structlog.get_logger(__name__)

_BATCH = struct.Struct(">cQQI")
_ACK = struct.Struct(">cQQ")
_LEN = struct.Struct(">I")
SEEN_BATCHES = 100_000

SENT = Counter("soar_link_envelopes_sent_total", "Envelopes sent to track processes", ["track"])
RESENT = Counter("soar_link_batches_resent_total", "Batches sent again for want of an ack", ["track"])
UNACKED = Gauge("soar_link_unacked_envelopes", "Envelopes a track has not acknowledged", ["track"])
LINK_DROPPED = Counter(
    "soar_link_dropped_total", "Envelopes dropped because a track's buffer was full", ["track"]
)
RECEIVED = Counter("soar_track_envelopes_received_total", "Envelopes received from ingest")
BAD_BATCHES = Counter(
    "soar_track_bad_batches_total", "Batches refused whole: not a batch, or a record in it not an envelope"
)
DUPLICATE_BATCHES = Counter("soar_track_duplicate_batches_total", "Batches received twice")


def encode_batch(session: int, seq: int, envelopes: Iterable[Envelope]) -> bytes:
    records = [encode_envelope(e) for e in envelopes]
    parts = [_BATCH.pack(b"B", session, seq, len(records))]
    for record in records:
        parts.append(_LEN.pack(len(record)))
        parts.append(record)
    return b"".join(parts)


def decode_batch(data: bytes) -> tuple[int, int, list[bytes]]:
    """(session, seq, encoded envelope records); ValueError on anything malformed."""
    try:
        kind, session, seq, count = _BATCH.unpack_from(data)
    except struct.error:
        raise ValueError("short batch") from None
    if kind != b"B":
        raise ValueError("not a batch")
    records = []
    offset = _BATCH.size
    for _ in range(count):
        if offset + 4 > len(data):
            raise ValueError("truncated batch")
        (length,) = _LEN.unpack_from(data, offset)
        offset += 4
        if offset + length > len(data):
            raise ValueError("truncated record")
        records.append(data[offset : offset + length])
        offset += length
    return session, seq, records


def encode_ack(session: int, seq: int) -> bytes:
    return _ACK.pack(b"A", session, seq)


def decode_ack(data: bytes) -> tuple[int, int]:
    kind, session, seq = _ACK.unpack(data)
    if kind != b"A":
        raise ValueError("not an ack")
    return session, seq


class TrackLink:
    """The ingest side of one track: batches, sequence numbers, resend until acknowledged."""

    def __init__(
        self,
        address: str,
        *,
        batch_size: int = 1000,
        flush_interval: float = 0.05,
        resend_after: float = 3.0,
        max_unacked: int = 2_000_000,
    ) -> None:
        self.address = address
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.resend_after = resend_after
        self.max_unacked = max_unacked
        self.session = random.getrandbits(63)
        self._pending: list[Envelope] = []
        #: seq -> (batch, envelopes in it, when last sent on trio's clock), oldest send first
        self._unacked: OrderedDict[int, tuple[bytes, int, float]] = OrderedDict()
        self._unacked_envelopes = 0
        self._seq = 0
        self._progress = trio.Event()
        self._labels = {"track": address}

    @property
    def unacked(self) -> int:
        return self._unacked_envelopes + len(self._pending)

    def keeping_up(self) -> bool:
        """The track acknowledges about as fast as it is sent to: under half the window.

        Not `unacked < max_unacked`: once full, `offer` drops the oldest batch and the count
        sits just under the limit while data is being lost.
        """
        return self.unacked < self.max_unacked // 2

    def offer(self, env: Envelope) -> None:
        """Never blocks; past `max_unacked` the oldest batch is dropped, counted and logged."""
        self._pending.append(env)
        while self.unacked > self.max_unacked and self._unacked:
            _seq, (_data, count, _sent) = self._unacked.popitem(last=False)
            self._unacked_envelopes -= count
            LINK_DROPPED.labels(**self._labels).inc(count)
            log.error("link.buffer_full_dropped", track=self.address, envelopes=count)

    async def run(self) -> None:
        import pynng

        with pynng.Pair1(recv_timeout=None) as sock:
            sock.dial(self.address, block=False)  # nng redials by itself while the track is down
            log.info("link.dialled", track=self.address)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_acks, sock)
                await self._send_loop(sock)

    async def _send_loop(self, sock: object) -> None:
        while True:
            await trio.sleep(self.flush_interval)
            while self._pending:
                batch, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size :]
                self._seq += 1
                data = encode_batch(self.session, self._seq, batch)
                self._unacked[self._seq] = (data, len(batch), trio.current_time())
                self._unacked_envelopes += len(batch)
                await sock.asend(data)  # type: ignore[attr-defined]
                SENT.labels(**self._labels).inc(len(batch))
            UNACKED.labels(**self._labels).set(self.unacked)
            await self._resend_overdue(sock)

    async def _resend_overdue(self, sock: object) -> None:
        """Each batch on its own clock: acks for newer batches must not hide a lost older one."""
        now = trio.current_time()
        overdue = [seq for seq, (_d, _c, sent) in self._unacked.items() if now - sent > self.resend_after]
        if not overdue:
            return
        log.warning("link.resending", track=self.address, batches=len(overdue))
        for seq in overdue:
            item = self._unacked.pop(seq, None)
            if item is None:  # acknowledged while an earlier resend was being sent
                continue
            data, count, _sent = item
            self._unacked[seq] = (data, count, now)  # to the back: the order stays by send time
            await sock.asend(data)  # type: ignore[attr-defined]
            RESENT.labels(**self._labels).inc()

    async def _receive_acks(self, sock: object) -> None:
        while True:
            data = await sock.arecv()  # type: ignore[attr-defined]
            try:
                session, seq = decode_ack(data)
            except (ValueError, struct.error):
                log.warning("link.bad_ack", track=self.address, data=data[:32].hex())
                continue
            if session != self.session:
                continue
            acked = self._unacked.pop(seq, None)
            if acked is not None:
                self._unacked_envelopes -= acked[1]
            self._progress.set()

    async def wait_acknowledged(self) -> None:
        """For shutdown and tests: until everything offered has been acknowledged."""
        while self.unacked:
            self._progress = trio.Event()
            await self._progress.wait()


class EnvelopeReceiver:
    """The track side: appends each batch to the write-ahead spool, then acknowledges it."""

    def __init__(self, address: str, wal: DiskSpool, on_batch: Callable[[], None]) -> None:
        self.address = address
        self.wal = wal
        self.on_batch = on_batch
        # (session, seq) of batches already in the spool, to skip exact resends; bounded, and
        # empty after a restart, when a resend is harmless anyway
        self._seen: OrderedDict[tuple[int, int], None] = OrderedDict()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        import pynng

        with pynng.Pair1(listen=self.address, polyamorous=True) as sock:
            log.info("track.listening", address=self.address)
            task_status.started()
            while True:
                msg = await sock.arecv_msg()
                try:
                    session, seq, records = decode_batch(msg.bytes)
                    for record in records:
                        decode_envelope(record)  # refuse garbage before it is acknowledged
                except ValueError as exc:  # EnvelopeError too: a bad batch is refused whole
                    BAD_BATCHES.inc()
                    log.warning("track.bad_batch", error=str(exc))
                    continue
                if (session, seq) in self._seen:
                    DUPLICATE_BATCHES.inc()
                else:
                    await trio.to_thread.run_sync(self._append, records)
                    self._seen[(session, seq)] = None
                    if len(self._seen) > SEEN_BATCHES:
                        self._seen.popitem(last=False)
                    RECEIVED.inc(len(records))
                    self.on_batch()
                await msg.pipe.asend(encode_ack(session, seq))

    def _append(self, records: list[bytes]) -> None:
        self.wal.append_many(records)
        self.wal.flush()
