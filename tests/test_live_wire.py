"""Property tests of soar.protocols.live_wire: live fixes between processes, and what a WebSocket
client may ask for. Real OGN fixes where a capture has them, arbitrary values elsewhere."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soar.live import NATS_TOPICS
from soar.protocols.live_wire import (
    MAX_SQUARES_PER_CLIENT,
    PYNNG_TOPICS,
    AircraftRequest,
    AreaRequest,
    LiveWireError,
    Rejection,
    SetOptions,
    TopicNames,
    acknowledgement,
    decode_fixes,
    decode_message,
    fix_to_wire,
    frame,
    group_by_topic,
    parse_client_message,
    squares_in_bounds,
    unframe,
    wire_square,
)
from soar.records import Fix
from tests.support import arbitrary_fixes, ogn_trace_fixes

OGN_TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"

fixes = arbitrary_fixes()
names = st.sampled_from([PYNNG_TOPICS, NATS_TOPICS])


def _square_of(topic: str, topic_names: TopicNames) -> tuple[int, int]:
    lat, lon = topic.removeprefix(topic_names.area_prefix).split(".")
    return int(lat), int(lon)


def _check_groups(
    batch: list[Fix], groups: list[tuple[str, bytes]], topic_names: TopicNames
) -> None:
    """Every fix once under its square and once under its aircraft, in order per topic."""
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for topic, body in groups:
        by_topic.setdefault(topic, []).extend(decode_fixes(body))
    area = 0
    for topic, items in by_topic.items():
        if topic_names.is_area(topic):
            area += len(items)
            for item in items:  # what a hub computes from the body is the topic's square
                assert wire_square(item)[0] == _square_of(topic, topic_names)
        else:
            ident = int(topic.removeprefix(topic_names.aircraft_prefix))
            own = [fix for fix in batch if fix.aircraft_id == ident]
            assert [i["received_us"] for i in items] == [f.received_us for f in own]
            assert [i["callsign"] for i in items] == [f.callsign for f in own]
            assert all(wire_square(i)[1] == ident for i in items)
    assert area == len(batch)
    assert sum(len(v) for t, v in by_topic.items() if not topic_names.is_area(t)) == len(batch)


@given(st.lists(fixes, max_size=40), names, st.none() | st.integers(1, 2000))
def test_groups_carry_every_fix_once_per_topic_in_order(
    batch: list[Fix], topic_names: TopicNames, max_body: int | None
) -> None:
    groups = group_by_topic(batch, topic_names, max_body)
    _check_groups(batch, groups, topic_names)
    if max_body is not None:
        for _topic, body in groups:  # a body over the limit holds one fix that alone is over it
            assert len(body) <= max_body or len(decode_fixes(body)) == 1


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=20)
@given(st.integers(0, 1100), st.integers(1, 400), st.sampled_from([300, 4096, 1_000_000]))
def test_real_ogn_fixes_grouped_and_read_back(
    testdata: Path, start: int, count: int, max_body: int
) -> None:
    batch = _ogn_fixes(testdata)[start : start + count]
    assert batch
    groups = group_by_topic(batch, NATS_TOPICS, max_body)
    _check_groups(batch, groups, NATS_TOPICS)
    topic = NATS_TOPICS.aircraft(batch[0].aircraft_id)
    first = decode_fixes(next(body for t, body in groups if t == topic))[0]
    assert first == json.loads(json.dumps(fix_to_wire(batch[0])))
    assert first["protocol"] == "ogn" and first["address"] == f"{batch[0].address:06X}"


_OGN_CACHE: list[Fix] = []


def _ogn_fixes(testdata: Path) -> list[Fix]:
    if not _OGN_CACHE:  # hypothesis calls the test a hundred times: read the capture once
        _OGN_CACHE.extend(ogn_trace_fixes(testdata / OGN_TRACE))
    return _OGN_CACHE


@given(st.text(max_size=30).filter(lambda t: "\x00" not in t), st.binary(max_size=200))
def test_pynng_frame_round_trip(topic: str, body: bytes) -> None:
    assert unframe(frame(topic, body)) == (topic, body)


@given(st.binary(max_size=80))
def test_garbage_is_a_live_wire_error_never_another_exception(message: bytes) -> None:
    try:
        topic, items = decode_message(message)
    except LiveWireError:
        return
    assert isinstance(topic, str) and isinstance(items, list)


@given(st.dictionaries(st.sampled_from(["id", "lat", "lon", "x"]),
                       st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3)))
def test_wire_square_of_any_object_is_a_square_or_an_error(raw: dict[str, Any]) -> None:
    try:
        (lat, lon), ident = wire_square(raw)
    except LiveWireError:
        return
    assert isinstance(lat, int) and isinstance(lon, int) and isinstance(ident, int)


# -- client messages -------------------------------------------------------------------------

boxes = st.tuples(st.integers(-90, 70), st.integers(1, 20), st.integers(-180, 179),
                  st.integers(1, 20), st.floats(0, 0.99), st.floats(0, 0.99))


@given(boxes, st.booleans())
def test_area_request_round_trip(box: tuple[int, int, int, int, float, float], sub: bool) -> None:
    south, height, west, width, fs, fw = box
    bounds = {"south": south + fs, "north": min(90, south + height),
              "west": west + fw, "east": ((west + width + 180) % 360) - 180}
    message = {"type": "area_bulk", "action": "subscribe" if sub else "unsubscribe",
               "bounds": bounds}
    request = parse_client_message(json.dumps(message))
    try:
        expected = squares_in_bounds(**bounds)
    except ValueError as exc:
        assert request == Rejection("bad_request", str(exc))
        return
    assert request == AreaRequest(sub, expected)
    assert 0 < len(expected) <= MAX_SQUARES_PER_CLIENT
    reply = acknowledgement(request, 7)
    assert reply == {"type": "subscribed" if sub else "unsubscribed", "what": "area_bulk",
                     "squares": len(expected), "total_squares": 7}


@given(st.integers(0, 2**31 - 1), st.booleans(), st.booleans())
def test_aircraft_request_round_trip(ident: int, sub: bool, as_text: bool) -> None:
    message = {"type": "aircraft", "action": "subscribe" if sub else "unsubscribe",
               "id": str(ident) if as_text else ident}
    request = parse_client_message(json.dumps(message).encode())
    assert request == AircraftRequest(sub, ident)
    assert acknowledgement(request, 0)["id"] == ident


@given(st.booleans())
def test_options_round_trip(batch: bool) -> None:
    request = parse_client_message(json.dumps({"type": "options", "batch": batch}))
    assert request == SetOptions(batch)
    assert acknowledgement(request, 0) == {"type": "options", "batch": batch}


@given(st.text(max_size=60) | st.binary(max_size=60))
def test_any_text_parses_to_a_request_or_a_rejection(text: str | bytes) -> None:
    request = parse_client_message(text)
    assert isinstance(request, SetOptions | AreaRequest | AircraftRequest | Rejection)
    if isinstance(request, Rejection):
        assert request.reply() == {"type": "error", "error": request.text}


@pytest.mark.parametrize("message, reason", [
    ("[" * 100_000, "invalid_json"),  # deeper than the JSON parser's recursion limit
    ('{"type": "aircraft", "action": "subscribe", "id": "\\uff11\\uff12"}', "bad_request"),  # wide digits
    ('{"type": "area_bulk", "action": "subscribe", "bounds": {"north": 1e400, "south": 0,'
     ' "east": 1, "west": 0}}', "bad_request"),
    ('{"type": "options", "batch": 1}', "bad_request"),
    ('{"type": "weather", "action": "subscribe"}', "bad_type"),
    ('{"type": "aircraft", "action": "follow", "id": 1}', "bad_action"),
    ("[1, 2]", "not_object"),
])
def test_edge_messages_are_rejected_with_their_reason(message: str, reason: str) -> None:
    request = parse_client_message(message)
    assert isinstance(request, Rejection) and request.reason == reason, request


def test_squares_of_a_view_on_whole_degrees_and_across_the_antimeridian() -> None:
    assert sorted(squares_in_bounds(north=47, south=45, east=11, west=9)) == [
        (45, 9), (45, 10), (46, 9), (46, 10)]
    assert sorted(squares_in_bounds(north=1, south=0, east=-179, west=179)) == [
        (0, -180), (0, 179)]
    # the pole row: latitude 90 belongs to the last square, 89
    assert sorted(squares_in_bounds(north=90, south=88.5, east=2, west=0)) == [
        (88, 0), (88, 1), (89, 0), (89, 1)]
    assert all(math.isfinite(a) for sq in squares_in_bounds(89.5, 88, 100, -100) for a in sq)
