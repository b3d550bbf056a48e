"""Each position's own time, per protocol, on real captures (issue 15, point 1).

OGN: the beacon's `hhmmss` (or `ddhhmm`) placed on the receive date; Beast: the receiver's
12 MHz counter anchored to the wall clock; SBS: the generated time, read as UTC unless the
feed writes a time zone. A time more than 10 s after its receive time is rejected, counted.
"""

from __future__ import annotations

import csv
import gzip
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from soar.decode import Decoder
from soar.ingest.capture import SbsDayClock
from soar.protocols import ogn, sbs
from soar.protocols.beast import BeastDeframer, MlatClock
from soar.protocols.ogn import AircraftBeacon, beacon_time_us
from soar.records import Envelope, Protocol
from tests.tracking.flood import flood_beacons

TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"
EDGE_CASES = "ogn/edge-cases-from-parser-tests.txt"
LFBO = "adsb/traffic-sample_dump1090-LFBO-20200212.beast"
ADSB = "adsb/pymodes-sample_data_adsb.csv"
SBS = "sbs/adsbhub-sbs-sample-20260224.txt.gz"
S = 1_000_000


def us(*parts: int) -> int:
    return round(datetime(*parts, tzinfo=UTC).timestamp() * S)  # type: ignore[arg-type,misc]


def iso_us(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * S)


def beacon(line: str) -> AircraftBeacon:
    parsed = ogn.parse_line(line)
    assert isinstance(parsed, AircraftBeacon), parsed
    return parsed


def trace_lines(testdata: Path) -> list[tuple[int, str]]:
    out = []
    for raw in (testdata / TRACE).read_text().splitlines():
        stamp, line = raw.split(" ", 1)
        out.append((iso_us(stamp), line))
    return out


# ---- OGN -------------------------------------------------------------------------------------


def test_flood_beacon_times_are_what_ogn_monitoring_read_from_them(testdata: Path) -> None:
    # 211 beacons delivered 0.1 to 4.9 minutes late: ogn-monitoring stored each one's own time
    # beside its receive time, the oracle for placing `hhmmss` on the receive date.
    flood = flood_beacons(testdata)
    assert len(flood) == 211
    delays = []
    for b in flood:
        assert beacon_time_us(beacon(b.line), b.received_us) == b.beacon_us
        delays.append((b.received_us - b.beacon_us) / S)
    assert min(delays) < 10 and max(delays) > 280  # on time and five minutes late alike


def test_trace_beacons_are_placed_just_before_their_receive_times(testdata: Path) -> None:
    # The 11-hour trace crosses midnight (2025-12-23 → 24); every beacon is placed on its
    # own day, at most a few seconds before it was received (or 44 ms after: clocks differ).
    lines = trace_lines(testdata)
    delays = [(received - beacon_time_us(beacon(line), received)) / S  # type: ignore[operator]
              for received, line in lines]
    assert len(delays) == 1183
    assert min(delays) > -1 and max(delays) < 30  # a receiver's clock may be ahead by 0.47 s
    first_received, first_line = lines[0]
    assert beacon_time_us(beacon(first_line), first_received) == us(2025, 12, 23, 22, 18, 16)
    last_received, last_line = lines[-1]
    assert beacon_time_us(beacon(last_line), last_received) == us(2025, 12, 24, 7, 29, 20)


def test_a_beacon_from_before_midnight_received_after_it_is_yesterdays(testdata: Path) -> None:
    # No real beacon straddles midnight in the trace: its first line with its time replaced.
    _received, line = trace_lines(testdata)[0]
    late = beacon(line.replace("/221816h", "/235958h"))
    assert beacon_time_us(late, us(2025, 12, 24, 0, 0, 3)) == us(2025, 12, 23, 23, 59, 58)
    # and one a second after midnight, received 4 s later, is today's
    early = beacon(line.replace("/221816h", "/000001h"))
    assert beacon_time_us(early, us(2025, 12, 24, 0, 0, 5)) == us(2025, 12, 24, 0, 0, 1)


# Up to 23 h: a beacon "23.9 h late" is indistinguishable from one 6 minutes in the future.
@pytest.mark.parametrize("hours_late", [0.5, 5, 13, 22.9])
def test_a_beacon_delivered_hours_late_is_placed_hours_back(
    testdata: Path, hours_late: float
) -> None:
    received, line = trace_lines(testdata)[0]
    own = beacon_time_us(beacon(line), received)
    assert own is not None
    late = own + round(hours_late * 3600 * S)
    assert beacon_time_us(beacon(line), late) == own


@pytest.mark.parametrize(("ahead_s", "placed"), [(5, True), (10, True), (11, False),
                                                 (600, False), (3600, False)])
def test_a_beacon_ahead_of_its_receive_time(testdata: Path, ahead_s: int, placed: bool) -> None:
    # Up to 10 s ahead is a clock difference; up to an hour ahead no delivery explains.
    received, line = trace_lines(testdata)[0]
    own = beacon_time_us(beacon(line), received)
    assert own is not None
    got = beacon_time_us(beacon(line), own - ahead_s * S)
    assert got == (own if placed else None)


def test_a_day_time_beacon_is_placed_in_its_minute(testdata: Path) -> None:
    # The edge cases' real `ddhhmmz` beacon (day 30, 10:46 UTC), received in March 2024.
    line = next(x for x in (testdata / EDGE_CASES).read_text().splitlines() if ":/301046z" in x)
    b = beacon(line)
    assert b.packet_time is None
    minute = us(2024, 3, 30, 10, 46)
    # received within its minute: the receive time is the best time there is
    assert beacon_time_us(b, minute + 20 * S) == minute + 20 * S
    # received later: the minute's last second
    assert beacon_time_us(b, us(2024, 3, 30, 12, 0)) == minute + 59 * S
    # received on the 1st of the next month: last month's 30th
    assert beacon_time_us(b, us(2024, 4, 1, 0, 10)) == minute + 59 * S
    # 6 minutes ahead of its receive time: rejected
    assert beacon_time_us(b, minute - 6 * 60 * S) is None
    # `ddhhmm/` is the sender's local time, which no one can place: the receive time
    local = beacon(line.replace(":/301046z", ":/301046/"))
    assert beacon_time_us(local, minute) == minute


def test_the_decoder_rejects_and_counts_a_beacon_from_the_future(testdata: Path) -> None:
    received, line = trace_lines(testdata)[0]
    own = beacon_time_us(beacon(line), received)
    assert own is not None
    decoder = Decoder(Protocol.OGN)
    labels = {"protocol": "ogn", "reason": ogn.REASON_FUTURE}
    before = REGISTRY.get_sample_value("soar_messages_rejected_total", labels) or 0.0
    on_time = decoder.decode(Envelope(Protocol.OGN, own + 2 * S, line.encode(), "test"))
    ahead = decoder.decode(Envelope(Protocol.OGN, own - 60 * S, line.encode(), "test"))
    (_ident, fix), = on_time.shard_items
    assert (fix.time_us, fix.received_us) == (own, own + 2 * S)
    assert ahead.shard_items == []
    assert decoder.rejects == {ogn.REASON_FUTURE: 1}
    assert REGISTRY.get_sample_value("soar_messages_rejected_total", labels) == before + 1


# ---- SBS -------------------------------------------------------------------------------------


def sbs_lines(testdata: Path) -> list[str]:
    with gzip.open(testdata / SBS, "rt") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def test_sbs_generated_time_is_read_as_utc(testdata: Path) -> None:
    clock = SbsDayClock()  # the capture reader's reading of the same fields
    times = set()
    for line in sbs_lines(testdata)[:2000]:
        msg = sbs.parse_line(line)
        if isinstance(msg, sbs.SbsMessage):
            expected = clock.to_us(msg.date_generated.encode(), msg.time_generated.encode())  # type: ignore[union-attr]
            assert sbs.generated_time_us(msg) == expected
            times.add(expected)
    assert times == {us(2026, 2, 24, 14, 57, 36)}


@pytest.mark.parametrize("zone_h", [1, -5, 5.5])
def test_an_sbs_feed_in_local_time_is_corrected(testdata: Path, zone_h: float) -> None:
    # BaseStation and dump1090 write local time: the real lines as a feeder in that zone
    # would have written them (generated time shifted), received half a second later.
    lines = sbs_lines(testdata)[:200]
    clock = sbs.SbsClock()
    utc = us(2026, 2, 24, 14, 57, 36)
    local = datetime.fromtimestamp((utc + round(zone_h * 3600 * S)) / S, UTC)
    for line in lines:
        shifted = line.replace("2026/02/24,14:57:36.000",
                               local.strftime("%Y/%m/%d,%H:%M:%S.000"), 1)
        msg = sbs.parse_line(shifted)
        if isinstance(msg, sbs.SbsMessage) and msg.time_generated is not None:
            assert clock.time_us(msg, utc + S // 2) == utc
    assert clock.zone_us == -round(zone_h * 3600 * S)


@pytest.mark.parametrize("off_days", [2.0, 0.9, 0.13, -280.3])
def test_an_sbs_clock_no_time_zone_explains_gives_the_receive_time(
    testdata: Path, off_days: float
) -> None:
    # generated times days (or 21.6 h) off, or hours off by no whole quarter hour: no clock
    lines = sbs_lines(testdata)[:50]
    clock = sbs.SbsClock()
    utc = us(2026, 2, 24, 14, 57, 36)
    received = utc + round(off_days * 86_400 * S)
    for line in lines:
        msg = sbs.parse_line(line)
        if isinstance(msg, sbs.SbsMessage) and msg.time_generated is not None:
            assert clock.time_us(msg, received) == received
    assert clock.zone_us is None


def test_an_sbs_time_ahead_of_its_receive_time_is_rejected(testdata: Path) -> None:
    line = next(x for x in sbs_lines(testdata) if x.startswith("MSG,3,"))
    decoder = Decoder(Protocol.SBS)
    generated = us(2026, 2, 24, 14, 57, 36)
    ok = decoder.decode(Envelope(Protocol.SBS, generated + S, line.encode(), "sbs:test"))
    ahead = decoder.decode(Envelope(Protocol.SBS, generated - 20 * S, line.encode(), "sbs:test"))
    (_ident, item), = ok.shard_items
    assert (item.time_us, item.received_us) == (generated, generated + S)
    assert ahead.shard_items == [] and decoder.rejects == {sbs.REASON_FUTURE: 1}


# ---- Beast -----------------------------------------------------------------------------------


def test_beast_frames_keep_their_counter_times_whatever_the_network_did(testdata: Path) -> None:
    frames = BeastDeframer().feed((testdata / LFBO).read_bytes())
    assert len(frames) == 239
    start = us(2020, 2, 12, 10, 7)
    heard = [start + f.mlat // 12 - frames[0].mlat // 12 for f in frames]  # when each was heard
    # delivered in reads of 40 frames, each read arriving 30 ms after its last frame was
    # heard, except one read the network held back 5 s: all of a read share its receive time
    clock = MlatClock()
    times = []
    for first in range(0, len(frames), 40):
        batch = range(first, min(first + 40, len(frames)))
        received = heard[batch[-1]] + (5 * S if first == 80 else 30_000)
        for i in batch:
            times.append(clock.time_us(frames[i].mlat, received))
            assert times[-1] <= received  # never after it arrived
    # Every frame at the time it was heard, plus the network's fastest 30 ms — once the clock
    # has seen a fast frame: the first read's frames, before its last one, are only known to
    # have been heard by the time they arrived.
    first_read = range(40)
    assert all(heard[i] + 30_000 <= times[i] <= heard[39] + 30_000 for i in first_read)
    assert [t - h for t, h in zip(times[40:], heard[40:], strict=True)] == [30_000] * 199
    assert clock.reanchors == 0


def test_a_receiver_restart_reanchors_its_counter(testdata: Path) -> None:
    frames = BeastDeframer().feed((testdata / LFBO).read_bytes())
    clock = MlatClock()
    t0 = us(2020, 2, 12, 10, 7)
    for f in frames[:100]:
        clock.time_us(f.mlat, t0 + (f.mlat - frames[0].mlat) // 12)
    # restarted 10 minutes later: the counter starts again near zero
    after = t0 + 600 * S
    restarted = frames[100].mlat - frames[0].mlat
    assert clock.time_us(restarted, after) == after
    assert clock.reanchors == 1


def test_a_drifting_counter_is_followed(testdata: Path) -> None:
    # The pyModeS sample (730 s) as one receiver's frames, its crystal 50 ppm slow: over the
    # capture the counter loses 36 ms against the wall clock. Each minute's fastest frame
    # re-anchors the clock, so no frame's time is off by more than a minute's drift.
    with (testdata / ADSB).open(encoding="utf-8-sig", newline="") as f:
        recorded = [int(row[0]) * S + i * 1_000 for i, row in enumerate(csv.reader(f))]
    clock = MlatClock()
    worst = 0
    for t in recorded:
        counter = round((t - recorded[0]) * (1 - 50e-6) * 12) + 12 * S
        got = clock.time_us(counter, t + 40_000)
        worst = max(worst, abs(got - t - 40_000))
    assert recorded[-1] - recorded[0] > 700 * S
    # the offset in use is the previous minute's fastest: at most two minutes of drift (6 ms),
    # where a clock anchored once would be 36 ms off by the end
    assert worst <= 7_000
