"""Capture readers on the real captures, plain and gzipped."""

from __future__ import annotations

import gzip
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from soar.ingest.capture import (
    CaptureFormat,
    CaptureStats,
    detect_format,
    is_raw_aprs_is,
    iter_capture,
    keepalive_us,
    packet_time_us,
    receive_time_problem,
)
from soar.records import Protocol
from tests.ingest.ingest_servers import MLAT_MASK, OGN_TRACE, SBS_SAMPLE, beast_frames, sbs_lines

NO_ACTIVE = "ogn/soar-flight-no-active-fixes.txt"
# raw APRS-IS captures: the lines as the server sent them, no receive-time prefix
FULL_FEED = "ogn/svoop-ogn-full-feed-5000-20170419.txt"  # one keep-alive, at line 4546
SERVER_SENTENCES = "ogn/ognclientjava-server-sentences-20141015.txt"  # two keep-alives, CRLF
NO_KEEPALIVE = "ogn/ognpython-OGN_log-20160921.txt"  # a logger line first, no keep-alive


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
        got = list(iter_capture(path, start_us=start))
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
    got = list(iter_capture(path, start_us=0))
    expected = [((f.mlat - frames[0].mlat) & MLAT_MASK) // 12 for f in frames[:1500]]
    assert [e.received_us for e in got[:1500]] == expected
    assert wrapped[0].mlat > wrapped[1499].mlat  # it did wrap
    # across the restart, time stands still, then runs on from there
    after = [expected[-1] + (f.mlat - frames[1500].mlat) // 12 for f in frames[1500:]]
    assert [e.received_us for e in got[1500:]] == after


def test_beast_blocks_sent_twice_are_dropped_not_counted_as_time(
    testdata: Path, tmp_path: Path
) -> None:
    # A receiver that re-sends what it had buffered (after a reconnect, say) steps its counter
    # back: the real LFBO capture with two blocks sent again (80 frames, then 30 frames that
    # follow on at once). Counted as time, as it was, 24 s of capture became 37 s.
    from soar.protocols.beast import BeastDeframer

    real = testdata / "adsb/traffic-sample_dump1090-LFBO-20200212.beast"
    frames = BeastDeframer().feed(real.read_bytes())
    sent = frames[:180] + frames[100:180] + frames[180:200] + frames[170:200] + frames[200:]
    path = tmp_path / "resent.beast"
    path.write_bytes(b"".join(f.encode() for f in sent))
    stats = CaptureStats()
    got = list(iter_capture(path, start_us=0, stats=stats))
    once = list(iter_capture(real, start_us=0))
    assert len(once) == len(frames) == 239
    assert [(e.received_us, e.data) for e in got] == [(e.received_us, e.data) for e in once]
    assert stats.rejects == {"beast_repeated": 110}
    assert 23_900_000 < got[-1].received_us < 24_000_000


def test_an_older_beast_frame_keeps_its_own_time(testdata: Path, tmp_path: Path) -> None:
    # A frame behind the counter's high-water mark that is no repeat (frames 60..69 held back
    # and sent after frame 100) is placed at its own counter time; the clock does not go back.
    from soar.protocols.beast import BeastDeframer

    real = testdata / "adsb/traffic-sample_dump1090-LFBO-20200212.beast"
    frames = BeastDeframer().feed(real.read_bytes())
    sent = frames[:60] + frames[70:100] + frames[60:70] + frames[100:]
    path = tmp_path / "late.beast"
    path.write_bytes(b"".join(f.encode() for f in sent))
    stats = CaptureStats()
    got = {e.data: e.received_us for e in iter_capture(path, start_us=0, stats=stats)}
    once = {e.data: e.received_us for e in iter_capture(real, start_us=0)}
    assert got == once and stats.rejected == 0


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


def own_time(line: bytes, day_us: int) -> int | None:
    """The `/hhmmssh` time an APRS line carries, on the given UTC day (µs)."""
    _header, _colon, payload = line.partition(b":")
    if payload[:1] not in (b"/", b"@", b">") or payload[7:8] != b"h":
        return None
    hours, minutes, seconds = int(payload[1:3]), int(payload[3:5]), int(payload[5:7])
    return day_us + ((hours * 60 + minutes) * 60 + seconds) * 1_000_000


def test_raw_aprs_is_capture_times_from_the_keepalive(testdata: Path, tmp_path: Path) -> None:
    path = testdata / FULL_FEED
    lines = path.read_bytes().splitlines()
    assert lines[0].startswith(b"# aprsc") and lines[4545].startswith(b"# aprsc")
    assert detect_format(path) is CaptureFormat.OGN and is_raw_aprs_is(path)
    assert receive_time_problem(path) is None
    stats = CaptureStats()
    got = list(iter_capture(path, stats=stats))
    assert stats.rejected == 0 and len(got) == 5000
    assert [e.data for e in got] == lines  # the lines as they are, server lines included
    server_time = us(2017, 4, 19, 15, 23, 32)  # the only keep-alive's server clock
    assert got[4545].received_us == server_time
    day = us(2017, 4, 19)
    for env in got:
        own = own_time(env.data, day)
        # a line with its own time takes it; the others (the banner and the login response,
        # before the keep-alive, and the keep-alive itself) take the keep-alive's time
        assert env.received_us == (server_time if own is None else own), env.data
    assert sum(own_time(e.data, day) is None for e in got) == 3
    times = [e.received_us for e in got]
    assert us(2017, 4, 19, 15, 19, 31) == min(times) and max(times) == us(2017, 4, 19, 15, 23, 33)
    # gzipped, the same
    assert list(iter_capture(gzip_copy(path, tmp_path / "feed.gz"), source=path.name)) == got


def test_raw_aprs_is_each_keepalive_is_the_anchor_after_it(testdata: Path) -> None:
    path = testdata / SERVER_SENTENCES
    got = list(iter_capture(path))
    assert len(got) == 18 and all(not e.data.endswith(b"\r") for e in got)
    first, second = us(2014, 10, 15, 10, 25, 54), us(2014, 10, 15, 10, 26, 14)
    keepalives = [e for e in got if keepalive_us(e.data) is not None]
    assert [e.received_us for e in keepalives] == [first, second]
    assert [e.received_us for e in got[:2]] == [first, first]  # banner, logresp: before it
    day = us(2014, 10, 15)
    for env in got[2:]:
        own = own_time(env.data, day)
        if own is not None:
            assert env.received_us == own


def test_raw_aprs_is_without_a_keepalive_needs_a_start(testdata: Path) -> None:
    path = testdata / NO_KEEPALIVE
    assert path.read_bytes().startswith(b"connecting to server\n")  # skipped by the detection
    assert detect_format(path) is CaptureFormat.OGN and is_raw_aprs_is(path)
    problem = receive_time_problem(path)
    assert problem is not None and "keep-alive" in problem and "--start" in problem
    stats = CaptureStats()
    assert list(iter_capture(path, stats=stats)) == []  # no time to give them: all counted
    assert stats.rejects == {"no_receive_time": 500}

    start = us(2016, 9, 21, 7, 0, 0)
    assert receive_time_problem(path, start_us=start) is None
    got = list(iter_capture(path, start_us=start))
    assert len(got) == 500
    assert got[0].data == b"connecting to server" and got[0].received_us == start
    day = us(2016, 9, 21)
    for env in got:
        own = own_time(env.data, day)
        assert env.received_us == (start if own is None else own)
    # beacon times 06:59:55-07:03:01, on the day --start names
    times = [e.received_us for e in got]
    assert (min(times), max(times)) == (us(2016, 9, 21, 6, 59, 55), us(2016, 9, 21, 7, 3, 1))


def test_start_is_refused_where_the_capture_records_its_times(testdata: Path) -> None:
    start = us(2020, 1, 1)
    for name in (OGN_TRACE, SBS_SAMPLE):
        problem = receive_time_problem(testdata / name, start_us=start)
        assert problem is not None and "records its own" in problem
    # Beast: --start is the first frame's time
    assert receive_time_problem(testdata / "adsb/traffic-sample_dump1090-LFBO-20200212.beast",
                                start_us=start) is None


def test_keepalive_and_packet_times(testdata: Path) -> None:
    line = (testdata / FULL_FEED).read_bytes().splitlines()[4545]
    assert keepalive_us(line) == us(2017, 4, 19, 15, 23, 32)
    assert keepalive_us(line.replace(b"19 Apr", b"31 Apr")) is None  # no such day
    assert keepalive_us(b"# logresp ROCT-90 unverified, server GLIDERN2") is None
    beacon = (testdata / FULL_FEED).read_bytes().splitlines()[2]
    assert beacon.startswith(b"FLRDDD37F>APRS,qAS,EGDM:/152306h")
    assert packet_time_us(beacon, us(2017, 4, 19, 15, 23, 32)) == us(2017, 4, 19, 15, 23, 6)
    # on whichever day puts it nearest the anchor, and only within 10 minutes of it
    assert packet_time_us(beacon, us(2017, 4, 20, 15, 20, 0)) == us(2017, 4, 20, 15, 23, 6)
    assert packet_time_us(beacon, us(2017, 4, 19, 15, 40, 0)) is None  # 17 min off: not trusted
    midnight = beacon.replace(b"/152306h", b"/235958h")
    assert packet_time_us(midnight, us(2017, 4, 20, 0, 0, 5)) == us(2017, 4, 19, 23, 59, 58)


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(ValueError, match="not a capture format"):
        detect_format(path)
