"""Beast binary framing (Mode-S Beast / dump1090 / readsb port 30005), sans-io.

Wire form of one frame::

    0x1a  type  mlat(6, big-endian 12 MHz counter)  signal(1)  payload(2 | 7 | 14)

Every 0x1a after the type byte is sent doubled (0x1a 0x1a), so a lone 0x1a followed by a
type byte is the only thing that starts a frame. Types: 0x31 Mode A/C (2 payload bytes),
0x32 Mode S short (7), 0x33 Mode S long (14), 0x34 receiver status (Radarcape; 14 bytes,
as readsb reads it) which is skipped and counted.

`BeastDeframer.feed(chunk)` returns the complete frames in the chunk and keeps any partial
frame for the next call; the result never depends on where the stream was split.
`BeastFrame.to_bytes()` is the un-escaped form an `Envelope` carries for Beast.

`MlatClock` turns one receiver's counter into wall-clock time: a frame's own time, which the
chunk's receive time (shared by every frame of a read, late by whatever the network held it)
only bounds.

May import: nothing of soar
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ESCAPE = 0x1A
MODE_AC = 0x31
MODE_S_SHORT = 0x32
MODE_S_LONG = 0x33
STATUS = 0x34

#: payload length of each frame type
PAYLOAD_LENGTH: dict[int, int] = {MODE_AC: 2, MODE_S_SHORT: 7, MODE_S_LONG: 14}
_MLAT_MAX = (1 << 48) - 1
_HEADER = 7  # mlat + signal, between the type byte and the payload
# body length (everything after the type byte, un-escaped) of every frame type we can skip over
_BODY_LENGTH: dict[int, int] = {
    MODE_AC: _HEADER + 2,
    MODE_S_SHORT: _HEADER + 7,
    MODE_S_LONG: _HEADER + 14,
    STATUS: _HEADER + 14,
}
_ESCAPE_BYTE = b"\x1a"
_ESCAPE_PAIR = b"\x1a\x1a"


@dataclass(slots=True, frozen=True)
class BeastFrame:
    """One Beast frame, un-escaped."""

    kind: int  # 0x31 Mode A/C, 0x32 Mode S short, 0x33 Mode S long
    mlat: int  # 48-bit 12 MHz counter of the receiver (0 when it has none)
    signal: int  # raw signal byte
    payload: bytes  # 2, 7 or 14 bytes

    def __post_init__(self) -> None:
        expected = PAYLOAD_LENGTH.get(self.kind)
        if expected is None:
            raise ValueError(f"unknown Beast frame type 0x{self.kind:02x}")
        if len(self.payload) != expected:
            raise ValueError(
                f"Beast frame type 0x{self.kind:02x} carries {expected} payload bytes, "
                f"got {len(self.payload)}"
            )
        if not 0 <= self.mlat <= _MLAT_MAX:
            raise ValueError(f"MLAT counter {self.mlat} does not fit in 48 bits")
        if not 0 <= self.signal <= 0xFF:
            raise ValueError(f"signal {self.signal} is not a byte")

    def to_bytes(self) -> bytes:
        """The un-escaped frame: type, 6-byte MLAT counter, signal, payload."""
        return (
            bytes((self.kind,))
            + self.mlat.to_bytes(6, "big")
            + bytes((self.signal,))
            + self.payload
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> BeastFrame:
        """Parse the un-escaped form produced by `to_bytes`."""
        if not data:
            raise ValueError("empty Beast frame")
        kind = data[0]
        expected = PAYLOAD_LENGTH.get(kind)
        if expected is None:
            raise ValueError(f"unknown Beast frame type 0x{kind:02x}")
        if len(data) != 1 + _HEADER + expected:
            raise ValueError(
                f"Beast frame type 0x{kind:02x} is {1 + _HEADER + expected} bytes un-escaped, "
                f"got {len(data)}"
            )
        return cls(kind, int.from_bytes(data[1:7], "big"), data[7], bytes(data[8:]))

    def encode(self) -> bytes:
        """The escaped wire form: 0x1a, type, then the body with every 0x1a doubled."""
        body = self.mlat.to_bytes(6, "big") + bytes((self.signal,)) + self.payload
        return bytes((ESCAPE, self.kind)) + body.replace(_ESCAPE_BYTE, _ESCAPE_PAIR)

    @property
    def signal_dbfs(self) -> float | None:
        """Signal in dBFS under the dump1090/readsb convention (byte = 255 * amplitude)."""
        if self.signal == 0:
            return None
        return 20.0 * math.log10(self.signal / 255.0)


MLAT_TICKS_PER_US = 12


class MlatClock:
    """One receiver's 12 MHz counter anchored to the wall clock: `time_us(mlat, received_us)`.

    A frame's time is its counter (in µs) plus an offset: the smallest `received - counter`
    seen, i.e. the anchor is the frame that reached us fastest, so no frame is placed after
    it was received, and a frame the network or a buffer held back is placed when the
    receiver heard it. The receiver's crystal drifts against the wall clock (tens of ppm),
    so each `window_us` of receive time the offset becomes the smallest of that window, and
    a frame whose offset is more than `jump_us` away (receiver restarted, counter wrapped or
    reset) re-anchors at once. A counter of 0 (receivers without one) gives the receive time.
    """

    __slots__ = ("_offset", "_window_end", "_window_min", "jump_us", "reanchors", "window_us")

    def __init__(self, window_us: int = 60_000_000, jump_us: int = 600_000_000) -> None:
        self.window_us = window_us
        self.jump_us = jump_us
        self.reanchors = 0  # discontinuities seen (restart, wrap), not the drift steps
        self._offset: int | None = None
        self._window_min: int | None = None
        self._window_end = 0

    def time_us(self, mlat: int, received_us: int) -> int:
        if mlat == 0:
            return received_us
        counter_us = mlat // MLAT_TICKS_PER_US
        latency = received_us - counter_us
        if received_us >= self._window_end:
            if self._window_min is not None:
                self._offset = self._window_min  # follow the drift
            self._window_min = latency
            self._window_end = received_us + self.window_us
        elif self._window_min is None or latency < self._window_min:
            self._window_min = latency
        offset = self._offset
        if offset is None or latency < offset or latency - offset > self.jump_us:
            if offset is not None and abs(latency - offset) > self.jump_us:
                self.reanchors += 1
            offset = self._offset = latency
            self._window_min = latency
        return counter_us + offset


class BeastDeframer:
    """Splits a Beast byte stream into frames, whatever the read boundaries.

    Counters (never reset; the caller exports them as metrics):
    `frames` frames returned, `status_frames` 0x34 frames skipped, `garbage_bytes` bytes that
    belonged to no frame, `resyncs` times the stream lost framing and had to find it again.
    """

    __slots__ = ("_buffer", "_in_sync", "frames", "garbage_bytes", "resyncs", "status_frames")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._in_sync = True
        self.frames = 0
        self.status_frames = 0
        self.garbage_bytes = 0
        self.resyncs = 0

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[BeastFrame]:
        buf = self._buffer
        buf += chunk
        frames: list[BeastFrame] = []
        end = len(buf)
        pos = 0
        while pos < end:
            start = buf.find(ESCAPE, pos)
            if start < 0:
                self._discard(end - pos)
                pos = end
                break
            if start > pos:
                self._discard(start - pos)
                pos = start
            if start + 1 >= end:
                break  # a lone 0x1a at the end: its meaning depends on the next byte
            kind = buf[start + 1]
            body_length = _BODY_LENGTH.get(kind)
            if body_length is None:
                # 0x1a 0x1a outside a frame is an escaped data byte of a frame we missed the
                # start of; any other byte is no frame type we know.
                skip = 2 if kind == ESCAPE else 1
                self._discard(skip)
                pos = start + skip
                continue
            body_start = start + 2
            raw_end = body_start + body_length
            if raw_end > end:
                # Not enough bytes yet even without escapes; a 0x1a not followed by its twin
                # inside what we have would still prove this frame broken, but waiting is
                # equivalent: the next feed re-examines the same bytes from `start`.
                break
            body = bytes(buf[body_start:raw_end])
            if ESCAPE not in body:
                frame_end = raw_end
            else:
                parsed = _unescape(buf, body_start, body_length, end)
                if parsed is None:
                    break  # the frame runs past the bytes we have
                unescaped, frame_end = parsed
                if unescaped is None:
                    # a frame start inside this frame: the frame was cut short
                    self._discard(frame_end - start)
                    pos = frame_end
                    continue
                body = unescaped
            pos = frame_end
            self._in_sync = True
            if kind == STATUS:
                self.status_frames += 1
                continue
            frames.append(
                BeastFrame(kind, int.from_bytes(body[:6], "big"), body[6], body[_HEADER:])
            )
        if pos:
            del buf[:pos]
        self.frames += len(frames)
        return frames

    def _discard(self, count: int) -> None:
        self.garbage_bytes += count
        if self._in_sync:
            self._in_sync = False
            self.resyncs += 1


def _unescape(buf: bytearray, start: int, length: int, end: int) -> tuple[bytes | None, int] | None:
    """Read `length` un-escaped bytes from `buf[start:end]`.

    Returns (body, index after the body); (None, index of the lone 0x1a) when a lone 0x1a
    (the start of another frame) interrupts the body; None when more bytes are needed.
    """
    out = bytearray()
    pos = start
    while True:
        need = length - len(out)
        escape = buf.find(ESCAPE, pos, min(pos + need, end))
        if escape < 0:
            if pos + need > end:
                return None
            out += buf[pos : pos + need]
            return bytes(out), pos + need
        out += buf[pos:escape]
        if escape + 1 >= end:
            return None
        if buf[escape + 1] != ESCAPE:
            return None, escape
        out.append(ESCAPE)
        pos = escape + 2
        if len(out) == length:
            return bytes(out), pos
