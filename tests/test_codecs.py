"""Property tests of the pure codecs: what goes in comes out, and garbage is an error, not a crash.

Each codec here carries data across a boundary (a socket, the disk, another process, a
browser); the examples are real captures where a codec reads them, arbitrary values elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from soar.ingest.tcp import LineSplitter
from soar.live import decode_message, encode_batches
from soar.overflow import SPOOL_PROTOCOL_CODES, EnvelopeError, decode_envelope, encode_envelope
from soar.records import Envelope, Fix, Protocol
from soar.web.live import (
    MAX_SQUARES_PER_CLIENT,
    BadRequest,
    LiveHub,
    handle_client_message,
    squares_in_bounds,
)
from tests.support import arbitrary_fixes

OGN_TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"

envelopes = st.builds(
    Envelope,
    protocol=st.sampled_from(list(Protocol)),
    received_us=st.integers(-(2**63), 2**63 - 1),
    data=st.binary(max_size=300),
    source=st.text(max_size=40),
)


# -- the spool / split-mode envelope record ----------------------------------------------------


@given(envelopes)
def test_envelope_round_trip(env: Envelope) -> None:
    assert decode_envelope(encode_envelope(env)) == env


def test_protocol_codes_are_explicit_and_unchanged() -> None:
    # Spools written by earlier versions are read with these: never renumber.
    assert SPOOL_PROTOCOL_CODES == {Protocol.OGN: 0, Protocol.BEAST: 1, Protocol.SBS: 2}
    assert set(SPOOL_PROTOCOL_CODES) == set(Protocol)


@given(st.binary(max_size=64))
def test_garbage_record_is_an_envelope_error_or_an_envelope(record: bytes) -> None:
    try:
        env = decode_envelope(record)
    except EnvelopeError:
        return
    assert encode_envelope(env) == record  # what decodes is exactly what that envelope encodes


def test_the_records_that_once_killed_a_track_are_refused() -> None:
    real = encode_envelope(Envelope(Protocol.OGN, 1, b"FLRDDEFF7>APRS:/12h", "aprs"))
    for bad in (real[:3], real[:10], b"\x07" + real[1:], real[:11] + b"\xff\xfe" + real[13:]):
        with pytest.raises(EnvelopeError):
            decode_envelope(bad)


# -- the line splitter of the feed clients ------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(cuts=st.lists(st.integers(1, 2000), min_size=1, max_size=400))
def test_line_splitter_any_chunking_of_a_real_capture(testdata: Path, cuts: list[int]) -> None:
    lines = [raw.partition(b" ")[2] for raw in (testdata / OGN_TRACE).read_bytes().splitlines()]
    data = b"".join(line + b"\r\n" for line in lines)
    splitter = LineSplitter(1024)
    out: list[bytes] = []
    pos = 0
    for size in cuts:
        out += splitter.feed(data[pos : pos + size])
        pos += size
    out += splitter.feed(data[pos:])
    assert out == lines
    assert splitter.too_long == 0 and splitter.pending == 0


@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), max_size=30),
       st.lists(st.integers(1, 50), min_size=1, max_size=50))
def test_line_splitter_arbitrary_lines(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    splitter = LineSplitter(16)
    out: list[bytes] = []
    pos = 0
    for size in cuts:
        out += splitter.feed(data[pos : pos + size])
        pos += size
    out += splitter.feed(data[pos:])
    expected = [line.rstrip(b"\r") for line in lines if len(line.rstrip(b"\r")) <= 16]
    assert [line for line in out if line] == [line for line in expected if line]
    assert splitter.too_long == sum(1 for line in lines if len(line.rstrip(b"\r")) > 16)


# -- the live-fix wire format between shards and the web side -----------------------------------

fixes = arbitrary_fixes()


@given(st.lists(fixes, max_size=40))
def test_live_batches_carry_every_fix_once_per_topic_in_order(batch: list[Fix]) -> None:
    area: list[dict[str, object]] = []
    by_aircraft: dict[int, list[dict[str, object]]] = {}
    for message in encode_batches(batch):
        topic, items = decode_message(message)
        if topic.startswith("aircraft.area."):
            lat, lon = (int(part) for part in topic.split(".")[2:])
            for item in items:  # the wire rounds to 1e-6 degrees; the topic has the exact value
                item_lat, item_lon = float(item["lat"]), float(item["lon"])  # type: ignore[arg-type]
                assert math.floor(item_lat - 1e-6) <= lat <= math.floor(item_lat + 1e-6)
                assert math.floor(item_lon - 1e-6) <= lon <= math.floor(item_lon + 1e-6)
            area += items
        else:
            assert topic.startswith("aircraft.fix.")
            by_aircraft.setdefault(int(topic.rsplit(".", 1)[1]), []).extend(items)
    assert len(area) == len(batch)
    # per aircraft, every fix once, in the order of the input
    for ident, items in by_aircraft.items():
        own = [f for f in batch if f.aircraft_id == ident]
        assert len(items) == len(own)
        for item, fix in zip(items, own, strict=True):
            assert item["received_us"] == fix.received_us and item["callsign"] == fix.callsign
            assert item["lat"] == pytest.approx(fix.lat, abs=1e-6)
            assert item["lon"] == pytest.approx(fix.lon, abs=1e-6)
    assert sum(len(items) for items in by_aircraft.values()) == len(batch)


@given(st.binary(max_size=80))
def test_live_message_garbage_is_a_value_error(message: bytes) -> None:
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        decode_message(message)


# -- what a browser may send over the WebSocket -------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["area_bulk", "aircraft", "options", "weather"]) | st.text(max_size=5),
     "action": st.sampled_from(["subscribe", "unsubscribe"]) | st.text(max_size=5)},
    optional={
        "bounds": st.fixed_dictionaries({k: st.floats(-200, 200) | json_values
                                         for k in ("north", "south", "east", "west")}),
        "id": st.integers(-5, 2**40) | json_values,
        "batch": json_values,
    },
)


@given(st.lists(messages | json_values, max_size=12))
def test_client_messages_never_raise_and_caps_hold(sent: list[object]) -> None:
    hub = LiveHub("inproc://unused")
    client = hub.connect()
    for message in sent:
        reply = handle_client_message(hub, client, json.dumps(message))
        assert reply["type"] in {"subscribed", "unsubscribed", "options", "error"}
        assert len(client.squares) <= MAX_SQUARES_PER_CLIENT
    hub.disconnect(client)
    assert hub.topics() == set()


@given(st.text(max_size=40) | st.binary(max_size=40))
def test_client_non_json_is_an_error_reply(text: str | bytes) -> None:
    hub = LiveHub("inproc://unused")
    client = hub.connect()
    assert handle_client_message(hub, client, text)["type"] in {"error", "subscribed",
                                                                 "unsubscribed", "options"}
    hub.disconnect(client)


coordinates = st.floats(-90, 90), st.floats(-90, 90), st.floats(-180, 180), st.floats(-180, 180)


@given(*coordinates, st.floats(0, 1, exclude_max=True), st.floats(0, 1, exclude_max=True))
def test_squares_cover_every_point_inside_the_bounds(
    a: float, b: float, east: float, west: float, u: float, v: float
) -> None:
    north, south = max(a, b), min(a, b)
    assume(north > south and west != east)  # a box with no area covers nothing
    try:
        squares = set(squares_in_bounds(north=north, south=south, east=east, west=west))
    except BadRequest:
        return  # too many squares for one client: refused whole, never cut silently
    assert len(squares) <= MAX_SQUARES_PER_CLIENT
    lat = south + u * (north - south)
    if west <= east:
        lon = west + v * (east - west)
    else:  # across the antimeridian
        lon = west + v * (east + 360 - west)
        if lon >= 180:
            lon -= 360
    # north and east are exclusive (integer bounds name whole squares); a point the float
    # arithmetic above rounded onto one of them is not inside
    assume(south < lat < north and west != east and lon != east)
    assert (min(math.floor(lat), 89), min(math.floor(lon), 179)) in squares
