"""Capture readers and replay pacing on the real captures, plain and gzipped."""

from __future__ import annotations

import gzip
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing
from ingest_servers import MLAT_MASK, OGN_TRACE, SBS_SAMPLE, beast_frames, sbs_lines

from soar.ingest.capture import (
    CaptureFormat,
    CaptureStats,
    ReplayProgress,
    detect_format,
    iter_capture,
    replay,
)
from soar.records import Envelope, Protocol

NO_ACTIVE = "ogn/soar-flight-no-active-fixes.txt"


def us(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """µs since the epoch of a UTC time."""
    moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000


def gzip_copy(src: Path, dst: Path) -> Path:
    with src.open("rb") as f, gzip.open(dst, "wb") as out:
        shutil.copyfileobj(f, out)
    return dst


def gunzip_copy(src: Path, dst: Path) -> Path:
    with gzip.open(src, "rb") as f, dst.open("wb") as out:
        shutil.copyfileobj(f, out)
    return dst


def test_ogn_trace_plain_and_gzipped(testdata: Path, tmp_path: Path) -> None:
    path = testdata / OGN_TRACE
    raw_lines = path.read_bytes().splitlines()
    stats = CaptureStats()
    plain = list(iter_capture(path, stats=stats))
    assert detect_format(path) is CaptureFormat.OGN
    assert len(plain) == len(raw_lines) == 1183
    assert stats.messages == 1183 and stats.rejected == 0
    assert stats.bytes_read == stats.bytes_total == path.stat().st_size
    assert plain[0].received_us == us(2025, 12, 23, 22, 18, 15) + 956_000
    assert plain[0].data.startswith(b"ICA48683E>OGADSB,qAS,PA5MN:/221816h")
    assert utc(plain[-1].received_us)[:13] == "2025-12-24T07"
    assert [e.data for e in plain] == [line.partition(b" ")[2] for line in raw_lines]
    assert {(e.protocol, e.source) for e in plain} == {(Protocol.OGN, path.name)}
    # gzip is recognised by its magic bytes, not the file name
    zipped = gzip_copy(path, tmp_path / "trace.txt")
    assert list(iter_capture(zipped, source=path.name)) == plain


def test_microsecond_times(testdata: Path) -> None:
    got = list(iter_capture(testdata / NO_ACTIVE))
    assert len(got) == 6
    assert got[0].received_us == us(2025, 12, 26, 1, 43, 46) + 632_102


def utc(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, UTC).isoformat()


def test_sbs_sample_gzipped_and_plain(testdata: Path, tmp_path: Path) -> None:
    path = testdata / SBS_SAMPLE
    assert detect_format(path) is CaptureFormat.SBS
    got = list(iter_capture(path))
    assert len(got) == 38_112
    assert [e.data for e in got] == sbs_lines(testdata)
    assert got[0].received_us == us(2026, 2, 24, 14, 57, 36)
    # every time is the line's own generated date/time field (7 and 8)
    for env in got[::997]:
        fields = env.data.split(b",")
        stamp = datetime.strptime(
            f"{fields[6].decode()} {fields[7].decode()}", "%Y/%m/%d %H:%M:%S.%f"
        )
        assert env.received_us == int(stamp.replace(tzinfo=UTC).timestamp() * 1e6)
    plain = gunzip_copy(path, tmp_path / "sbs.csv")
    assert [(e.received_us, e.data) for e in iter_capture(plain)] == [
        (e.received_us, e.data) for e in got
    ]


def test_sbs_with_leading_iso_time(testdata: Path, tmp_path: Path) -> None:
    lines = sbs_lines(testdata)[:50]
    path = tmp_path / "sbs-recorded.txt"
    path.write_bytes(
        b"".join(b"2026-03-01T10:00:%02d.250Z %s\n" % (i, line) for i, line in enumerate(lines))
    )
    got = list(iter_capture(path))
    assert detect_format(path) is CaptureFormat.SBS
    assert [e.data for e in got] == lines
    assert [e.received_us for e in got] == [us(2026, 3, 1, 10, 0, i) + 250_000 for i in range(50)]


def test_beast_binary_times_from_mlat(testdata: Path, tmp_path: Path) -> None:
    frames = beast_frames(testdata)
    wire = b"".join(f.encode() for f in frames)
    start = us(2016, 3, 14, 23, 0, 0)
    for path in (tmp_path / "feed.bin", tmp_path / "feed.bin.gz"):
        if path.suffix == ".gz":
            with gzip.open(path, "wb") as f:
                f.write(wire)
        else:
            path.write_bytes(wire)
        assert detect_format(path) is CaptureFormat.BEAST
        got = list(iter_capture(path, beast_start_us=start))
        assert [e.data for e in got] == [f.to_bytes() for f in frames]
        assert [e.received_us for e in got] == [
            start + ((f.mlat - frames[0].mlat) & MLAT_MASK) // 12 for f in frames
        ]
        # 730 s of recording, as the CSV's own times say
        assert 729_000_000 < got[-1].received_us - start < 731_000_000


def test_beast_counter_wrap_and_restart(testdata: Path, tmp_path: Path) -> None:
    frames = beast_frames(testdata)
    shift = (1 << 48) - frames[0].mlat - 100 * 12_000_000  # the 48-bit counter wraps at 100 s
    wrapped = [replace(f, mlat=(f.mlat + shift) & MLAT_MASK) for f in frames]
    # the receiver restarts after frame 1500: its counter starts again near zero
    restarted = wrapped[:1500] + [
        replace(f, mlat=f.mlat - frames[1500].mlat + 12) for f in frames[1500:]
    ]
    path = tmp_path / "restart.bin"
    path.write_bytes(b"".join(f.encode() for f in restarted))
    got = list(iter_capture(path, beast_start_us=0))
    expected = [((f.mlat - frames[0].mlat) & MLAT_MASK) // 12 for f in frames[:1500]]
    assert [e.received_us for e in got[:1500]] == expected
    assert wrapped[0].mlat > wrapped[1499].mlat  # it did wrap
    # across the restart, time stands still, then runs on from there
    after = [expected[-1] + (f.mlat - frames[1500].mlat) // 12 for f in frames[1500:]]
    assert [e.received_us for e in got[1500:]] == after


def test_malformed_input_is_counted_not_raised(testdata: Path, tmp_path: Path) -> None:
    lines = (testdata / OGN_TRACE).read_bytes().splitlines()[:100]
    path = tmp_path / "dirty.txt"
    path.write_bytes(
        b"\n".join(
            [
                *lines[:50],
                b"2025-13-45T99:00:00Z ICA48683E>OGADSB:bad",
                b"2025-12-23T22:18:15Z",
                b"",
                *lines[50:],
            ]
        )
        + b"\n"
    )
    stats = CaptureStats()
    got = list(iter_capture(path, stats=stats))
    assert len(got) == 100
    assert stats.rejects == {"bad_timestamp": 1, "empty_line": 1}

    sbs = tmp_path / "dirty-sbs.csv"
    good = sbs_lines(testdata)[:20]
    sbs.write_bytes(
        b"\n".join([*good[:10], b"MSG,3,garbage", b"MSG,1,0,0,1,0,2026/99/24,x,,,A", *good[10:]])
    )
    stats = CaptureStats()
    assert len(list(iter_capture(sbs, stats=stats))) == 20
    assert stats.rejects == {"too_few_fields": 1, "bad_timestamp": 1}

    truncated = tmp_path / "cut.gz"
    truncated.write_bytes(gzip.compress(b"\n".join(lines))[:-40])
    stats = CaptureStats()
    assert 0 < len(list(iter_capture(truncated, CaptureFormat.OGN, stats=stats))) < 100
    assert stats.rejects["unreadable"] == 1


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(ValueError, match="not a capture format"):
        detect_format(path)


async def test_replay_paces_by_recorded_time(
    testdata: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = testdata / NO_ACTIVE
    expected = list(iter_capture(path))
    send, receive = trio.open_memory_channel[Envelope](100)
    arrivals: list[tuple[float, Envelope]] = []
    progress: list[ReplayProgress] = []

    async def consume() -> None:
        async for env in receive:
            arrivals.append((trio.current_time(), env))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        start = trio.current_time()
        async with send:
            await replay([path], send, speed=2.0, progress=progress.append)
    assert [e for _t, e in arrivals] == expected
    for at, env in arrivals:
        assert at - start == pytest.approx((env.received_us - expected[0].received_us) / 2e6)
    assert progress[-1].messages == 6 and progress[-1].bytes_read == path.stat().st_size


async def test_replay_as_fast_as_possible_merges_files(
    testdata: Path, autojump_clock: trio.testing.MockClock
) -> None:
    paths = [testdata / NO_ACTIVE, testdata / OGN_TRACE]
    send, receive = trio.open_memory_channel[Envelope](10_000)
    start = trio.current_time()
    stats = await replay(paths, send, speed=None)
    assert trio.current_time() == start
    send.close()
    got = [env async for env in receive]
    assert len(got) == 6 + 1183 == sum(s.messages for s in stats)
    times = [e.received_us for e in got]
    assert times == sorted(times)
