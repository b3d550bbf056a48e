"""Text cleaning at the decode step (soar.protocols.text, soar.decode), on real lines with hostile
bytes put in: NUL, BEL, ESC, bytes that are not UTF-8. And the once-a-minute log of it."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from soar.decode import TEXT_CLEANED, Decoder
from soar.ingest.capture import iter_capture
from soar.log import RateLimited
from soar.protocols import ogn, sbs, text
from soar.records import Envelope, Protocol, ServerMessageRow
from soar.tracking.inputs import SbsInput

SBS_SAMPLE = "sbs/adsbhub-sbs-sample-20260224.txt.gz"
FULL_FEED = "ogn/svoop-ogn-full-feed-5000-20170419.txt"


def _first(testdata: Path, path: str, prefix: bytes) -> bytes:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(testdata / path, "rb") as f:
        for line in f:
            if line.startswith(prefix):
                return bytes(line.rstrip(b"\r\n"))
    raise AssertionError(f"no line starting {prefix!r} in {path}")


def _cleaned(protocol: str, field: str, kind: str) -> float:
    for metric in TEXT_CLEANED.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and s.labels == {
                "protocol": protocol, "field": field, "kind": kind
            }:
                return float(s.value)
    return 0.0


@pytest.mark.parametrize("path", [SBS_SAMPLE, FULL_FEED,
                                  "ogn/soar-flight-descended-out-of-range-then-took-off.txt"])
def test_no_real_line_is_touched(testdata: Path, path: str) -> None:
    # the fast path holds for every real line, and the slow path would change nothing either
    protocol = Protocol.SBS if path.startswith("sbs") else Protocol.OGN
    parse = sbs.parse_line if protocol is Protocol.SBS else ogn.parse_line
    for env in iter_capture(testdata / path):
        line, invalid = text.decode(env.data)
        assert not invalid and text.is_clean(line), line
        record = parse(line)
        assert text.clean_record(record) == (record, [])


def test_sbs_callsign_with_nul_bel_and_invalid_utf8(testdata: Path) -> None:
    real = _first(testdata, SBS_SAMPLE, b"MSG,1,")
    fields = real.split(b",")
    callsign = fields[10].decode()
    fields[10] = b"\x00" + fields[10][:2] + b"\x07\xff" + fields[10][2:] + b"\x1b"
    before = (_cleaned("sbs", "callsign", "control"), _cleaned("sbs", "callsign", "invalid_utf8"))
    decoder = Decoder(Protocol.SBS)
    with capture_logs() as logs:
        out = decoder.decode(Envelope(Protocol.SBS, 1, b",".join(fields), "test"))
    ((_ident, item),) = out.shard_items
    assert isinstance(item, SbsInput)
    assert item.msg.callsign == callsign[:2] + text.REPLACEMENT + callsign[2:]
    assert (_cleaned("sbs", "callsign", "control"), _cleaned("sbs", "callsign", "invalid_utf8")) \
        == (before[0] + 1, before[1] + 1)
    assert sorted((e["field"], e["kind"]) for e in logs) == [
        ("callsign", "control"), ("callsign", "invalid_utf8")]


def test_a_callsign_of_nothing_but_controls_is_absent_not_empty(testdata: Path) -> None:
    # "" would replace the aircraft's good callsign and split its flight
    fields = _first(testdata, SBS_SAMPLE, b"MSG,1,").split(b",")
    fields[10] = b"\x00\x00"
    record, found = text.clean_record(sbs.parse_line(b",".join(fields).decode()))
    assert isinstance(record, sbs.SbsMessage)
    assert record.callsign is None
    assert found == [("callsign", text.CONTROL)]


def test_a_nul_in_a_number_is_still_a_bad_number(testdata: Path) -> None:
    # cleaning is per text field, after parsing: "37\x00000" is not read as 37000
    with gzip.open(testdata / SBS_SAMPLE, "rb") as f:
        real = next(line for line in f if line.startswith(b"MSG,3,") and line.split(b",")[11])
    fields = real.rstrip(b"\r\n").split(b",")
    fields[11] = fields[11][:1] + b"\x00" + fields[11][1:]
    decoder = Decoder(Protocol.SBS)
    out = decoder.decode(Envelope(Protocol.SBS, 1, b",".join(fields), "test"))
    assert out.shard_items == []
    assert decoder.rejects == {sbs.REASON_VALUE: 1}


def test_ogn_receiver_status_with_an_escape_sequence(testdata: Path) -> None:
    real = (testdata / "ogn" / "valid_messages" / "APRS_receiver.txt").read_text().splitlines()
    line = next(x for x in real if ",qAC," in x and ":>" in x and " CPU:" in x)
    spoiled = line.replace(" CPU:", " \x1b[2J\x00 CPU:", 1)
    plain = ogn.parse_line(line)
    record, found = text.clean_record(ogn.parse_line(spoiled))
    assert isinstance(plain, ogn.ReceiverStatus) and isinstance(record, ogn.ReceiverStatus)
    assert found == [("comment", text.CONTROL)]
    assert record.comment == plain.comment.replace(" CPU:", " [2J CPU:")
    assert "\x00" not in ogn.receiver_status_row(record, 1).raw
    assert (record.version, record.cpu_load) == (plain.version, plain.cpu_load)


def test_invalid_bytes_in_no_kept_field_count_the_line(testdata: Path) -> None:
    # the SBS session id is parsed by nobody: still counted, once, as the line's
    fields = _first(testdata, SBS_SAMPLE, b"MSG,3,").split(b",")
    fields[2] = b"\xfe"
    line, invalid = text.decode(b",".join(fields))
    assert invalid
    record, found = text.clean_record(sbs.parse_line(line), invalid)
    assert isinstance(record, sbs.SbsMessage)
    assert found == [(text.LINE, text.INVALID_UTF8)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeated_server_lines_with_nul_are_logged_once_a_minute_with_a_count(
    testdata: Path,
) -> None:
    keepalive = next(line for line in (testdata / FULL_FEED).read_bytes().splitlines()
                     if line.startswith(b"# aprsc") and b"GMT" in line)
    spoiled = keepalive.replace(b" GMT ", b" GMT\x00 ", 1)
    clock = FakeClock()
    decoder = Decoder(Protocol.OGN)
    decoder._text_log.clock = clock
    before = _cleaned("ogn", "text", "control")
    rows = []
    with capture_logs() as logs:
        for i in range(2500):
            clock.now = 1000.0 + i * 0.05  # 2,500 lines in 125 s: three windows of a minute
            rows.extend(decoder.decode(Envelope(Protocol.OGN, i, spoiled, "test")).store_rows)
    assert _cleaned("ogn", "text", "control") == before + 2500
    assert [r.text for r in rows if isinstance(r, ServerMessageRow)] == \
        [keepalive[1:].decode().strip()] * 2500
    assert [(e["event"], e["field"], e["suppressed"]) for e in logs] == [
        ("message.text_cleaned", "text", 0),
        ("message.text_cleaned", "text", 1199),  # at 60.0 s: lines 1..1199 were counted
        ("message.text_cleaned", "text", 1199),
    ]


def test_rate_limited_keys_are_independent() -> None:
    clock = FakeClock()
    with capture_logs() as logs:
        limited = RateLimited(structlog.get_logger("t"), period=60.0, clock=clock)
        assert limited.log("a", "warning", "ev", n=1)
        assert not limited.log("a", "warning", "ev", n=2)
        assert limited.log("b", "info", "ev", n=3)
        clock.now += 59.999
        assert not limited.log("a", "warning", "ev", n=4)
        clock.now += 0.001
        assert limited.log("a", "warning", "ev", n=5)
    assert [(e["n"], e["log_level"], e["suppressed"]) for e in logs] == [
        (1, "warning", 0), (3, "info", 0), (5, "warning", 2)]
