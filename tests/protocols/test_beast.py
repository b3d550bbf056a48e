"""Beast deframing on streams built from real ADS-B captures.

No real Beast binary capture exists in the test data, so the streams here are built from
the real timestamped Mode S messages of pyModeS's sample files: each hex message is wrapped
in a Beast frame whose 48-bit MLAT counter is derived from the message's receive time at
12 MHz (wrapped to 48 bits), with signal bytes taken from the message itself; every 17th
frame gets the signal byte 0x1a and every 23rd an MLAT counter whose low byte is 0x1a, so
escaping is exercised in every field.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soar.protocols.beast import (
    MODE_S_LONG,
    MODE_S_SHORT,
    BeastDeframer,
    BeastFrame,
)

_MLAT_MASK = (1 << 48) - 1


def _read_messages(path: Path, time_col: int, hex_col: int) -> list[tuple[int, bytes]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return [(int(row[time_col]), bytes.fromhex(row[hex_col])) for row in csv.reader(f)]


def _frames_from_capture(messages: list[tuple[int, bytes]]) -> list[BeastFrame]:
    frames = []
    for index, (seconds, message) in enumerate(messages):
        mlat = (seconds * 12_000_000 + index * 1_200) & _MLAT_MASK
        if index % 23 == 0:
            mlat = (mlat & ~0xFF) | 0x1A
        signal = 0x1A if index % 17 == 0 else message[-1]
        kind = MODE_S_LONG if len(message) == 14 else MODE_S_SHORT
        frames.append(BeastFrame(kind, mlat, signal, message))
    return frames


def _load(testdata: Path) -> list[BeastFrame]:
    adsb = testdata / "adsb"
    messages = _read_messages(adsb / "pymodes-sample_data_adsb.csv", 0, 1)
    for name in ("pymodes-sample_data_commb_df20.csv", "pymodes-sample_data_commb_df21.csv"):
        messages += _read_messages(adsb / name, 0, 2)[:500]
    return _frames_from_capture(messages)


_CACHE: dict[Path, list[BeastFrame]] = {}


@pytest.fixture
def capture_frames(testdata: Path) -> list[BeastFrame]:
    if testdata not in _CACHE:
        _CACHE[testdata] = _load(testdata)
    return _CACHE[testdata]


def _stream(frames: list[BeastFrame]) -> bytes:
    return b"".join(frame.encode() for frame in frames)


def _deframe(chunks: list[bytes]) -> tuple[list[BeastFrame], BeastDeframer]:
    deframer = BeastDeframer()
    out: list[BeastFrame] = []
    for chunk in chunks:
        out.extend(deframer.feed(chunk))
    return out, deframer


def test_whole_capture_round_trips(capture_frames: list[BeastFrame]) -> None:
    stream = _stream(capture_frames)
    # the stream really exercises escapes in every field
    assert sum(f.signal == 0x1A for f in capture_frames) > 100
    assert sum(f.mlat & 0xFF == 0x1A for f in capture_frames) > 100
    assert sum(b"\x1a" in f.payload for f in capture_frames) > 10
    assert len(stream) > sum(len(f.to_bytes()) + 1 for f in capture_frames)
    frames, deframer = _deframe([stream])
    assert frames == capture_frames
    assert deframer.garbage_bytes == 0
    assert deframer.resyncs == 0
    assert deframer.frames == len(capture_frames)
    assert deframer.buffered == 0


def test_byte_at_a_time(capture_frames: list[BeastFrame]) -> None:
    subset = capture_frames[:300]
    stream = _stream(subset)
    frames, deframer = _deframe([stream[i : i + 1] for i in range(len(stream))])
    assert frames == subset
    assert deframer.garbage_bytes == 0


def test_split_between_escape_twins(capture_frames: list[BeastFrame]) -> None:
    subset = capture_frames[:200]
    stream = _stream(subset)
    cuts = [i + 1 for i in range(2, len(stream) - 1) if stream[i : i + 2] == b"\x1a\x1a"]
    assert len(cuts) > 20
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    frames, _ = _deframe(chunks)
    assert frames == subset


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_split_yields_the_unsplit_frames(
    capture_frames: list[BeastFrame], data: st.DataObject
) -> None:
    start = data.draw(st.integers(0, len(capture_frames) - 40))
    subset = capture_frames[start : start + 40]
    stream = _stream(subset)
    # garbage sometimes in front, to check that recovery is split-independent too
    prefix = data.draw(st.binary(max_size=12))
    stream = prefix + stream
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=60)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    whole, reference = _deframe([stream])
    split, deframer = _deframe(chunks)
    assert split == whole
    assert (deframer.garbage_bytes, deframer.resyncs, deframer.status_frames) == (
        reference.garbage_bytes,
        reference.resyncs,
        reference.status_frames,
    )
    if not prefix:
        assert split == subset


def test_garbage_between_frames_resyncs_and_is_counted(capture_frames: list[BeastFrame]) -> None:
    subset = capture_frames[:50]
    garbage = [b"\x00\x01\x02", b"\xff" * 10, b"hello", b"\x1a\x1a\x1a\x1a\x00"]
    stream = b""
    for index, frame in enumerate(subset):
        if index % 10 == 5:
            stream += garbage[(index // 10) % len(garbage)]
        stream += frame.encode()
    frames, deframer = _deframe([stream])
    assert frames == subset
    assert deframer.garbage_bytes == sum(
        len(garbage[(i // 10) % len(garbage)]) for i in range(5, 50, 10)
    )
    assert deframer.resyncs == 5


def test_truncated_frame_is_dropped_and_the_next_one_kept(capture_frames: list[BeastFrame]) -> None:
    first, second, third = capture_frames[1:4]
    cut = first.encode()[:12]
    frames, deframer = _deframe([cut + second.encode() + third.encode()])
    assert frames == [second, third]
    assert deframer.garbage_bytes == 12
    assert deframer.resyncs == 1


def test_status_frames_are_skipped_and_counted(capture_frames: list[BeastFrame]) -> None:
    frame = capture_frames[5]
    status = b"\x1a\x34" + bytes(range(20, 41)).replace(b"\x1a", b"\x1a\x1a")
    frames, deframer = _deframe([status + frame.encode() + status])
    assert frames == [frame]
    assert deframer.status_frames == 2
    assert deframer.garbage_bytes == 0


def test_mode_ac_frame() -> None:
    frame = BeastFrame(0x31, 0x1A1A1A1A1A1A, 0x1A, b"\x1a\x1a")
    wire = frame.encode()
    assert wire == b"\x1a\x31" + b"\x1a\x1a" * 9
    assert _deframe([wire])[0] == [frame]


def test_to_bytes_from_bytes(capture_frames: list[BeastFrame]) -> None:
    for frame in capture_frames[:500]:
        raw = frame.to_bytes()
        assert len(raw) == 8 + len(frame.payload)
        assert raw[0] == frame.kind
        assert BeastFrame.from_bytes(raw) == frame


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x35" + bytes(21), b"\x33" + bytes(10), b"\x32" + bytes(22), b"\x31" + bytes(3)],
)
def test_from_bytes_rejects_bad_input(raw: bytes) -> None:
    with pytest.raises(ValueError, match="Beast frame"):
        BeastFrame.from_bytes(raw)


def test_signal_dbfs() -> None:
    assert BeastFrame(0x31, 0, 255, b"\x00\x00").signal_dbfs == 0.0
    assert BeastFrame(0x31, 0, 0, b"\x00\x00").signal_dbfs is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    deframer = BeastDeframer()
    total = 0
    framed = 0
    for chunk in chunks:
        for frame in deframer.feed(chunk):
            assert BeastFrame.from_bytes(frame.to_bytes()) == frame
            framed += len(frame.encode())
        total += len(chunk)
    if deframer.status_frames == 0:
        # every byte is accounted for: in a frame, discarded as garbage, or still buffered
        assert framed + deframer.garbage_bytes + deframer.buffered == total
    assert deframer.garbage_bytes <= total
