"""Raw archive on the real OGN trace, which crosses a UTC midnight, and Beast frames."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import trio

from soar.ingest.archive import RawArchive
from soar.ingest.capture import CaptureFormat, detect_format, iter_capture
from soar.records import Envelope, Protocol
from tests.ingest.ingest_servers import MLAT_MASK, OGN_TRACE, beast_frames


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """µs since the epoch of a UTC time."""
    moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000


def beast_envelopes(testdata: Path) -> list[Envelope]:
    start = at(2025, 12, 24, 3, 0, 0)
    frames = beast_frames(testdata)
    return [
        Envelope(
            Protocol.BEAST, start + ((f.mlat - frames[0].mlat) & MLAT_MASK) // 12, f.to_bytes(), "b"
        )
        for f in frames
    ]


def read_back(path: Path) -> list[tuple[int, bytes]]:
    return [(e.received_us, e.data) for e in iter_capture(path)]


def test_rollover_compresses_and_round_trips(testdata: Path, tmp_path: Path) -> None:
    ogn = list(iter_capture(testdata / OGN_TRACE))
    beast = beast_envelopes(testdata)
    before = [e for e in ogn if e.received_us < at(2025, 12, 24)]
    after = [e for e in ogn if e.received_us >= at(2025, 12, 24)]
    assert before and after  # the trace really crosses midnight

    wall = [at(2025, 12, 23, 23, 59, 59)]  # a clock a little behind the receive times
    archive = RawArchive(tmp_path, now_us=lambda: wall[0])
    archive.open()
    archive.write_batch(before[:100])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ogn-2025-12-23.log"]
    archive.write_batch(before[100:] + after[:10])
    # the first message of the new day closed and compressed the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ogn-2025-12-23.log.gz",
        "ogn-2025-12-24.log",
    ]
    archive.write_batch(after[10:] + beast)
    archive.close()

    day1 = tmp_path / "ogn-2025-12-23.log.gz"
    assert day1.read_bytes()[:2] == b"\x1f\x8b"
    assert detect_format(day1) is CaptureFormat.ARCHIVE
    assert read_back(day1) == [(e.received_us, e.data) for e in before]
    assert read_back(tmp_path / "ogn-2025-12-24.log") == [(e.received_us, e.data) for e in after]
    beast_file = tmp_path / "beast-2025-12-24.log"
    assert (
        beast_file.read_text().splitlines()[0] == f"{beast[0].received_us}\t{beast[0].data.hex()}"
    )
    assert read_back(beast_file) == [(e.received_us, e.data) for e in beast]

    # next start-up, a day later: yesterday's files are stale and get compressed
    later = RawArchive(tmp_path, now_us=lambda: at(2025, 12, 25, 0, 5))
    compressed = later.open()
    assert sorted(p.name for p in compressed) == [
        "beast-2025-12-24.log.gz",
        "ogn-2025-12-24.log.gz",
    ]
    assert read_back(tmp_path / "beast-2025-12-24.log.gz") == [
        (e.received_us, e.data) for e in beast
    ]
    assert not list(tmp_path.glob("*.log"))


def test_wall_clock_midnight_rolls_over_a_quiet_feed(testdata: Path, tmp_path: Path) -> None:
    ogn = [e for e in iter_capture(testdata / OGN_TRACE) if e.received_us < at(2025, 12, 24)]
    wall = [at(2025, 12, 23, 23, 50)]
    archive = RawArchive(tmp_path, now_us=lambda: wall[0])
    archive.open()
    archive.write_batch(ogn)
    archive.write_batch([])
    assert (tmp_path / "ogn-2025-12-23.log").exists()
    wall[0] = at(2025, 12, 24, 0, 1)  # nothing more arrives, but the day is over
    archive.write_batch([])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ogn-2025-12-23.log.gz"]
    assert read_back(tmp_path / "ogn-2025-12-23.log.gz") == [(e.received_us, e.data) for e in ogn]
    archive.close()


def test_late_message_appends_a_gzip_member(testdata: Path, tmp_path: Path) -> None:
    ogn = list(iter_capture(testdata / OGN_TRACE))
    before = [e for e in ogn if e.received_us < at(2025, 12, 24)]
    after = [e for e in ogn if e.received_us >= at(2025, 12, 24)]
    archive = RawArchive(tmp_path, now_us=lambda: at(2025, 12, 24, 8))
    archive.open()
    archive.write_batch(before[:-5] + after[:3])
    archive.write_batch(before[-5:])  # late: its day is already compressed
    archive.close()
    day1 = tmp_path / "ogn-2025-12-23.log.gz"
    assert not (tmp_path / "ogn-2025-12-23.log").exists()
    with gzip.open(day1, "rb") as f:
        assert len(f.read().splitlines()) == len(before)
    assert read_back(day1) == [(e.received_us, e.data) for e in before]


async def test_run_archives_a_channel(testdata: Path, tmp_path: Path) -> None:
    ogn = list(iter_capture(testdata / OGN_TRACE))
    archive = RawArchive(tmp_path, now_us=lambda: at(2025, 12, 24, 8))
    send, receive = trio.open_memory_channel[Envelope](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(archive.run, receive)
        async with send:
            for env in ogn:
                await send.send(env)
    got = read_back(tmp_path / "ogn-2025-12-23.log.gz") + read_back(tmp_path / "ogn-2025-12-24.log")
    assert got == [(e.received_us, e.data) for e in ogn]


# ---- no-track beacons never reach the archive ----------------------------------------------


def _real_beacons(testdata: Path) -> list[bytes]:
    from soar.protocols import ogn

    lines: list[bytes] = []
    for path in sorted((testdata / "ogn").rglob("*.txt")):
        for raw in path.read_bytes().splitlines():
            if not raw.strip() or raw.startswith(b"#"):
                continue
            if raw[:2] == b"20" and b"T" in raw[:20]:  # replay format: receive time first
                raw = raw.partition(b" ")[2]
            if isinstance(ogn.parse_line(raw.decode("utf-8", "replace")), ogn.AircraftBeacon):
                lines.append(raw)
    return lines


def _with_no_track_bit(line: bytes) -> bytes:
    """The same beacon with the no-track bit set in its id token (Naviter: 16 flag bits)."""
    import re

    def set_bit(m: re.Match[bytes]) -> bytes:
        digits = m.group(1)
        if len(digits) == 10:
            return b" id%04X%s" % (int(digits[:4], 16) | 0x4000, digits[4:])
        return b" id%02X%s" % (int(digits[:2], 16) | 0x40, digits[2:])

    return re.sub(rb" id([0-9A-F]{10}|[0-9A-F]{8})(?=[ \r]|$)", set_bit, line, count=1)


def test_the_no_track_check_agrees_with_the_parser_on_every_real_beacon(testdata: Path) -> None:
    from soar.ingest.archive import asks_not_to_be_tracked
    from soar.protocols import ogn

    lines = _real_beacons(testdata)
    assert len(lines) > 5000
    marked = [m for m in map(_with_no_track_bit, lines) if m not in lines]
    assert len(marked) > 5000, "the id token of most real beacons was found and marked"
    for line in lines + marked:
        record = ogn.parse_line(line.decode("utf-8", "replace"))
        assert isinstance(record, ogn.AircraftBeacon), line
        assert asks_not_to_be_tracked(line) == record.no_track, line
    assert sum(1 for m in marked if asks_not_to_be_tracked(m)) == len(marked)


def test_no_track_beacons_are_withheld_from_the_archive(testdata: Path, tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    lines = (testdata / OGN_TRACE).read_bytes().splitlines()[:200]
    envelopes = []
    for i, raw in enumerate(lines):
        payload = raw.partition(b" ")[2]
        if i % 2:
            payload = _with_no_track_bit(payload)
        envelopes.append(Envelope(Protocol.OGN, at(2025, 12, 23, 22) + i * 1_000_000, payload, "t"))
    withheld = [e.data for e in envelopes if e.data not in {raw.partition(b" ")[2] for raw in lines}]
    assert len(withheld) == 100
    before = REGISTRY.get_sample_value("soar_archive_withheld_total", {"protocol": "ogn"}) or 0.0
    archive = RawArchive(tmp_path, now_us=lambda: at(2025, 12, 23, 23))
    archive.write_batch(envelopes)
    archive.close()
    kept = [payload for _us, payload in read_back(archive.path_for(Protocol.OGN, datetime(2025, 12, 23, tzinfo=UTC).date()))]
    assert kept == [e.data for e in envelopes[::2]]
    assert not set(withheld) & set(kept)
    after = REGISTRY.get_sample_value("soar_archive_withheld_total", {"protocol": "ogn"}) or 0.0
    assert after - before == 100
