"""The end-to-end benchmark: its generated feeds are the real captures with shifted addresses,
its latency histogram is right, and a short run goes socket -> committed -> WebSocket."""

from __future__ import annotations

import itertools
import random
import statistics
from pathlib import Path

import pytest

from soar.bench import pipeline as bench
from soar.protocols import ogn, sbs
from soar.protocols.beast import BeastDeframer
from soar.protocols.modes import crc_remainder, icao_address


def test_ogn_feed_is_the_trace_as_many_aircraft(testdata: Path) -> None:
    aircraft = 500
    lines = list(itertools.islice(bench.ogn_messages(testdata, aircraft), 3 * aircraft))
    addresses = set()
    for line in lines:
        parsed = ogn.parse_line(line.rstrip(b"\r\n").decode())
        assert isinstance(parsed, ogn.AircraftBeacon), line
        addresses.add(ogn.to_fix(parsed, 0, "").address)
    assert len(addresses) == aircraft
    # line k of every aircraft is line k of the capture, with only the address changed, and
    # its time the second it was made (soar tracks on beacon times)
    trace = (testdata / bench.OGN_TRACE).read_text().splitlines()
    original = trace[0].split(" ", 1)[1].replace("\\\\", "\\")
    made = lines[0].decode().rstrip()
    assert made[:made.index(":/") + 2] + "221816" + made[made.index(":/") + 8:] == original


def test_beast_feed_frames_have_valid_parity_and_shifted_addresses(testdata: Path) -> None:
    aircraft = 300
    data = b"".join(itertools.islice(bench.beast_messages(testdata, aircraft), 2 * aircraft))
    frames = BeastDeframer().feed(data)
    assert len(frames) == 2 * aircraft
    assert all(crc_remainder(frame.payload) == 0 for frame in frames)
    assert len({icao_address(frame.payload) for frame in frames}) == aircraft


def test_sbs_feed_copies_reach_the_aircraft_count(testdata: Path) -> None:
    lines = bench.sbs_copies(testdata, 10_000)
    idents = set()
    for line in lines:
        parsed = sbs.parse_line(line.rstrip(b"\r\n").decode())
        if isinstance(parsed, sbs.SbsMessage):
            idents.add(parsed.icao)
    assert len(idents) >= 10_000


def test_ratios_have_two_significant_digits() -> None:
    assert [bench.format_ratio(x) for x in (0.01467, 0.4006, 0.654, 1.53, 12.4)] == [
        "0.015x", "0.40x", "0.65x", "1.5x", "12x"]


def test_latency_histogram_quantiles_within_one_percent() -> None:
    rng = random.Random(8)
    samples = [rng.lognormvariate(11, 1) for _ in range(20_000)]  # µs, median ~60 ms
    hist = bench.LatencyHistogram()
    for s in samples:
        hist.add(s)
    hist.add(-5)
    exact = statistics.quantiles(samples, n=100)
    restored = bench.LatencyHistogram.of(hist.state())
    assert restored.negative == 1
    for q, want in ((0.5, exact[49]), (0.99, exact[98])):
        got = restored.quantile_ms(q)
        assert got is not None
        assert got * 1000 == pytest.approx(want, rel=0.03)


@pytest.mark.slow
def test_short_sbs_run_commits_and_reaches_websocket(
    db_url: str, testdata: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = bench.run(db_url, testdata, 1.5, feeds=("sbs",), timeline=True)
    assert len(rows) == 1
    row = rows[0]
    assert row.messages > 1000
    assert row.rate > 0 and row.fixes_rate > 0
    assert row.raw_copy_rate > 0
    # the paced run is fed at half of what this run's throughput run measured, not a fixed rate
    assert row.paced_asked == pytest.approx(row.rate / 2)
    assert row.paced_rate > 0 and row.paced_share == pytest.approx(row.paced_rate / row.rate)
    assert row.vs_parse == pytest.approx(row.rate / row.baseline_rate)
    assert row.vs_copy == pytest.approx(row.fixes_rate / row.raw_copy_rate)
    assert row.commit_p50_ms is not None and row.commit_p99_ms is not None
    assert row.ws_fixes > 0 and row.ws_p50_ms is not None
    assert row.peak_rss_mib > 10
    assert row.cpu_us_per_message > 0
    # where a p99 comes from: the worst second and the collector's pauses in the paced run
    assert any(note.startswith("worst recv→WebSocket") for note in row.notes), row.notes
    gc_note = next(note for note in row.notes if note.startswith("GC pauses (paced run) gen0: "))
    assert int(gc_note.split("gen0: ")[1].split(",")[0]) > 0, gc_note  # the callback counted
    table = bench.format_table(rows)
    assert "| sbs |" in table and "recv→commit" in table
    # each figure as its ratio to the same run's baseline first, the absolute rates after it
    cells = next(line for line in table.splitlines() if line.startswith("| sbs |")).split("|")
    assert cells[2].strip().startswith(bench.format_ratio(row.vs_parse) + " (")
    assert f"{row.rate:,.0f} / {row.baseline_rate:,.0f} lines/s" in cells[2]
    assert cells[3].strip().startswith(bench.format_ratio(row.vs_copy) + " (")
    assert "sbs paced run, second:" in capsys.readouterr().err  # --timeline
