"""Live fixes end to end: real SBS capture → LivePublisher → pynng → LiveHub → /api/live."""

from __future__ import annotations

import json
import socket as stdlib_socket
from functools import partial
from typing import Any

import pytest
import trio
import trio_websocket

from soar.config import load_settings
from soar.live import LIVE_DROPPED, LivePublisher, decode_message, encode_batches
from soar.records import AddressType, Fix, Protocol
from soar.web.app import WebContext, create_app
from soar.web.live import (
    MAX_SQUARES_PER_CLIENT,
    WS_DISCARDED,
    WS_DROPPED,
    WS_QUEUED,
    WS_SENT,
    AircraftInfo,
    BadRequest,
    ClientQueue,
    LiveHub,
    fan_out,
    handle_client_message,
    squares_in_bounds,
)
from soar.web.server import serve_web
from tests.support import wait_until

from .conftest import chunks, start_server

# The busiest 10x10 degree box of the SBS sample (south-eastern USA).
AREA = {"north": 40, "south": 30, "east": -80, "west": -90}


def inside(fix: Fix, area: dict[str, float]) -> bool:
    # Independent of soar's square arithmetic: plain half-open interval tests.
    return area["south"] <= fix.lat < area["north"] and area["west"] <= fix.lon < area["east"]


# -- pure parts ------------------------------------------------------------------------------


def test_squares_cover_integer_bounds_exactly() -> None:
    squares = squares_in_bounds(north=47, south=45, east=11, west=9)
    assert sorted(squares) == [(45, 9), (45, 10), (46, 9), (46, 10)]


def test_squares_fractional_and_antimeridian() -> None:
    assert sorted(squares_in_bounds(north=45.2, south=44.9, east=9.1, west=8.8)) == [
        (44, 8), (44, 9), (45, 8), (45, 9)
    ]
    wrapped = squares_in_bounds(north=1, south=0, east=-179, west=179)
    assert sorted(wrapped) == [(0, -180), (0, 179)]


@pytest.mark.parametrize(
    "bounds",
    [
        {"north": 91, "south": 0, "east": 1, "west": 0},
        {"north": 1, "south": 2, "east": 1, "west": 0},
        {"north": 1, "south": 0, "east": 181, "west": 0},
        {"north": float("nan"), "south": 0, "east": 1, "west": 0},
        {"north": 80, "south": -80, "east": 170, "west": -170},  # too many squares
    ],
)
def test_bad_bounds_rejected(bounds: dict[str, float]) -> None:
    with pytest.raises(BadRequest):
        squares_in_bounds(**bounds)


def test_client_queue_drops_oldest_and_counts() -> None:
    queue = ClientQueue(3)
    before = WS_DROPPED._value.get()
    for item in "abcde":
        queue.put_nowait(item)
    assert queue.dropped == 2
    assert WS_DROPPED._value.get() - before == 2
    assert list(queue._items) == ["c", "d", "e"]


def _counts() -> dict[str, float]:
    return {name: counter._value.get() for name, counter in (
        ("queued", WS_QUEUED), ("sent", WS_SENT), ("dropped", WS_DROPPED),
        ("discarded", WS_DISCARDED))}


def _since(before: dict[str, float]) -> dict[str, float]:
    return {name: value - before[name] for name, value in _counts().items()}


def test_fan_out_counts_each_put_and_drop_once_closed_queues_take_nothing() -> None:
    full, roomy, gone = ClientQueue(2), ClientQueue(10), ClientQueue(10)
    full.put_nowait("old")
    full.put_nowait("older")
    gone.close()
    before = _counts()
    assert fan_out([full, roomy, gone], "new") == 2
    assert list(full._items) == ["older", "new"] and full.dropped == 1
    assert list(roomy._items) == ["new"] and roomy.dropped == 0
    assert len(gone) == 0
    assert _since(before) == {"queued": 2, "sent": 0, "dropped": 1, "discarded": 0}


def test_a_closed_queue_counts_what_its_client_never_got() -> None:
    queue = ClientQueue(10)
    for item in "abc":
        queue.put_nowait(item)
    queue.put_control('{"type":"subscribed"}')
    before = _counts()
    queue.close()
    assert queue.discarded == 3  # fixes only: a control reply is no fix
    assert _since(before)["discarded"] == 3
    queue.put_nowait("late")
    assert len(queue) == 0 and _since(before)["queued"] == 0


def _fix(address: int, lat: float, lon: float, t: int, **extra: Any) -> Fix:
    return Fix(Protocol.OGN, AddressType.FLARM, address, t, lat, lon, **extra)


def test_publisher_buffer_drops_oldest_never_blocks() -> None:
    publisher = LivePublisher("inproc://unused", max_buffer=10)
    before = LIVE_DROPPED.labels(stage="publisher")._value.get()
    for i in range(25):
        publisher.offer(_fix(i, 45.5, 9.5, i))
    assert publisher.pending == 10
    assert publisher.dropped == 15
    assert LIVE_DROPPED.labels(stage="publisher")._value.get() - before == 15
    assert [fix.address for fix in publisher._buffer] == list(range(15, 25))


def test_publisher_never_publishes_stealth_or_no_track() -> None:
    publisher = LivePublisher("inproc://unused")
    publisher.offer(_fix(1, 45.5, 9.5, 1, stealth=True))
    publisher.offer(_fix(2, 45.5, 9.5, 1, no_track=True))
    assert publisher.pending == 0


def test_batches_group_by_exact_topic(sbs_sample_fixes: list[Fix]) -> None:
    fixes = sbs_sample_fixes[:2000]
    seen: dict[str, int] = {}
    for message in encode_batches(fixes):
        topic, items = decode_message(message)
        seen[topic] = seen.get(topic, 0) + len(items)
        for item in items:
            if topic.startswith("aircraft.area."):
                lat, lon = (int(part) for part in topic.split(".")[2:])
                assert lat <= item["lat"] < lat + 1 and lon <= item["lon"] < lon + 1
            else:
                assert topic == f"aircraft.fix.{item['id']}"
    assert sum(n for t, n in seen.items() if t.startswith("aircraft.area.")) == len(fixes)
    assert sum(n for t, n in seen.items() if t.startswith("aircraft.fix.")) == len(fixes)


def test_hub_privacy_from_directory() -> None:
    hidden, anonymous, named = 100, 200, 300
    infos = {
        hidden: AircraftInfo(tracked=False, registration="D-HIDE"),
        anonymous: AircraftInfo(identified=False, registration="D-ANON", model="ASK 21"),
        named: AircraftInfo(identified=True, registration="D-KXYZ", competition_number="XY"),
    }
    hub = LiveHub("inproc://unused", directory=infos.get)
    client = hub.connect()
    reply = handle_client_message(hub, client, json.dumps(
        {"type": "area_bulk", "action": "subscribe", "bounds": {"north": 46, "south": 45, "east": 10, "west": 9}}
    ))
    assert reply["type"] == "subscribed"
    fixes = [_fix(address, 45.5, 9.5, 1) for address in (1, 2, 3)]
    # aircraft ids for FLARM addresses 1, 2, 3 are (2 << 24) | n; map them onto the infos
    wire = encode_batches(fixes)
    ids = [fix.aircraft_id for fix in fixes]
    hub.directory = {ids[0]: infos[hidden], ids[1]: infos[anonymous], ids[2]: infos[named]}.get
    for message in wire:
        hub.dispatch(message)
    got = []
    while len(client.queue):
        got.append(json.loads(client.queue._items.popleft()))
    assert [m["id"] for m in got] == ids[1:]
    assert got[0]["registration"] is None and got[0]["model"] is None
    assert got[1]["registration"] == "D-KXYZ" and got[1]["competition_number"] == "XY"
    hub.disconnect(client)


def test_client_message_validation() -> None:
    hub = LiveHub("inproc://unused")
    client = hub.connect()
    bad = [
        "not json",
        "[1,2]",
        json.dumps({"type": "area_bulk", "action": "explode", "bounds": {}}),
        json.dumps({"type": "area_bulk", "action": "subscribe"}),
        json.dumps({"type": "area_bulk", "action": "subscribe", "bounds": {"north": "x", "south": 0, "east": 1, "west": 0}}),
        json.dumps({"type": "area_bulk", "action": "subscribe", "bounds": {"north": 80, "south": -80, "east": 170, "west": -170}}),
        json.dumps({"type": "aircraft", "action": "subscribe", "id": -5}),
        json.dumps({"type": "aircraft", "action": "subscribe", "id": True}),
        json.dumps({"type": "weather", "action": "subscribe"}),
    ]
    for text in bad:
        assert handle_client_message(hub, client, text)["type"] == "error", text
    assert not client.squares and not client.aircraft
    # the cap holds across several subscriptions too
    for west in range(-180, 180, 20):
        handle_client_message(hub, client, json.dumps(
            {"type": "area_bulk", "action": "subscribe", "bounds": {"north": 10, "south": 0, "east": west + 20, "west": west}}
        ))
    assert len(client.squares) <= MAX_SQUARES_PER_CLIENT
    hub.disconnect(client)
    assert hub.topics() == set()


# -- end to end ------------------------------------------------------------------------------


async def _live_stack(
    nursery: trio.Nursery, address: str, queue_size: int, transport: str = "door"
) -> tuple[LivePublisher, LiveHub, str]:
    """Publisher, hub and HTTP server. `transport="door"`: soar's server (`serve_web`), where
    the front door hands `/api/live` to trio-websocket; `"quart"`: hypercorn serving the app's
    quart route (what an upgrade after another request on the same connection gets)."""
    publisher = LivePublisher(address, flush_interval=0.02)
    await nursery.start(publisher.run)
    hub = LiveHub(address, client_queue_size=queue_size)
    await nursery.start(hub.run)
    assert await wait_until(lambda: hub.connected, 30)
    if transport == "quart":
        return publisher, hub, await start_server(nursery, create_app(WebContext(live=hub)))
    settings = load_settings(environ={})
    binds: list[str] = await nursery.start(
        partial(serve_web, bind="127.0.0.1:0"), settings, WebContext(live=hub), trio.Event())
    return publisher, hub, binds[0].split("://", 1)[1]


async def _subscribe(ws: trio_websocket.WebSocketConnection, area: dict[str, float]) -> None:
    status = json.loads(await ws.get_message())
    assert status["type"] == "connection_status" and status["status"] == "connected"
    await ws.send_message(json.dumps({"type": "area_bulk", "action": "subscribe", "bounds": area}))
    reply = json.loads(await ws.get_message())
    assert reply["type"] == "subscribed", reply


async def _collect_fixes(ws: trio_websocket.WebSocketConnection, into: list[dict[str, Any]]) -> None:
    while True:
        try:
            message = json.loads(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            return
        if message["type"] == "fix":
            into.append(message)
        elif message["type"] == "fixes":
            assert all(f["type"] == "fix" for f in message["fixes"])
            into.extend(message["fixes"])


#: A fix inside AREA from an address the capture does not have, published last.
SENTINEL = _fix(0xFFFFFE, 35.5, -85.5, 2**50)


async def _send_sentinel(publisher: LivePublisher, received: list[dict[str, Any]]) -> None:
    await publisher.flush_paced()
    publisher.offer(SENTINEL)
    assert await wait_until(
        lambda: any(m["id"] == SENTINEL.aircraft_id for m in received), 60
    ), "the sentinel published after every fix never arrived"


@pytest.mark.parametrize("transport", ["door", "quart"])
@pytest.mark.parametrize("batch", [False, True], ids=["one-per-message", "batched"])
async def test_area_subscription_receives_exactly_the_fixes_inside(
    nursery: trio.Nursery, sbs_sample_fixes: list[Fix], batch: bool, transport: str
) -> None:
    publisher, hub, host = await _live_stack(
        nursery, f"inproc://soar-test-area-{batch}-{transport}", 100_000, transport)
    expected = {(f.aircraft_id, f.received_us) for f in sbs_sample_fixes if inside(f, AREA)}
    assert len(expected) > 1000  # the capture really has traffic there
    received: list[dict[str, Any]] = []
    async with trio_websocket.open_websocket_url(f"ws://{host}/api/live") as ws:
        await _subscribe(ws, AREA)
        if batch:
            await ws.send_message(json.dumps({"type": "options", "batch": True}))
            assert json.loads(await ws.get_message()) == {"type": "options", "batch": True}
        nursery.start_soon(_collect_fixes, ws, received)
        for chunk in chunks(sbs_sample_fixes, 500):
            for fix in chunk:
                publisher.offer(fix)
            await trio.sleep(0.005)
        # Everything published so far is on the wire before the sentinel, so once the sentinel
        # arrives anything extra (outside the area, or twice) has arrived too.
        await _send_sentinel(publisher, received)
    got = [(m["id"], m["time_us"]) for m in received if m["id"] != SENTINEL.aircraft_id]
    assert len(got) == len(set(got)), "a fix was delivered twice"
    assert set(got) == expected
    by_key = {(f.aircraft_id, f.received_us): f for f in sbs_sample_fixes}
    for message in received[:50]:
        fix = by_key[(message["id"], message["time_us"])]
        assert message["lat"] == pytest.approx(fix.lat, abs=1e-6)
        assert message["callsign"] == fix.callsign
        assert message["altitude_ft"] == fix.altitude_ft
    assert hub.received_fixes >= len(expected)
    nursery.cancel_scope.cancel()


async def test_400_subscriptions_sent_at_once_get_400_acknowledgements(
    nursery: trio.Nursery,
) -> None:
    # A map that pans over a continent subscribes to hundreds of squares before it reads a
    # reply. The replies once went to a queue of 64 that dropped the oldest: ~270 of 400 came.
    _publisher, hub, host = await _live_stack(nursery, "inproc://soar-test-400", 1000)
    squares = [(lat, lon) for lat in range(40, 60) for lon in range(-10, 10)]
    assert len(squares) == MAX_SQUARES_PER_CLIENT
    # The smallest receive window: the server's replies back up after a few dozen, as over a
    # slow link, so they queue in soar while the subscriptions keep coming.
    address, port = host.rsplit(":", 1)
    sock = trio.socket.socket()
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 1)
    await sock.connect((address, int(port)))
    async with trio.open_nursery() as client_nursery:
        ws = await trio_websocket.wrap_client_stream(
            client_nursery, trio.SocketStream(sock), address, "/api/live", message_queue_size=0)
        assert json.loads(await ws.get_message())["type"] == "connection_status"
        for lat, lon in squares:
            await ws.send_message(json.dumps({"type": "area_bulk", "action": "subscribe", "bounds": {
                "north": lat + 1, "south": lat, "east": lon + 1, "west": lon}}))
        replies = [json.loads(await ws.get_message()) for _ in squares]
        await ws.aclose()
    assert [reply["type"] for reply in replies] == ["subscribed"] * len(squares)
    await wait_until(lambda: hub.client_count == 0, 30)
    nursery.cancel_scope.cancel()


async def test_aircraft_subscription_follows_one_aircraft(
    nursery: trio.Nursery, sbs_sample_fixes: list[Fix]
) -> None:
    publisher, _hub, host = await _live_stack(nursery, "inproc://soar-test-aircraft", 10_000)
    counts: dict[int, int] = {}
    for fix in sbs_sample_fixes:
        counts[fix.aircraft_id] = counts.get(fix.aircraft_id, 0) + 1
    target = max(counts, key=lambda ident: counts[ident])
    received: list[dict[str, Any]] = []
    async with trio_websocket.open_websocket_url(f"ws://{host}/api/live") as ws:
        json.loads(await ws.get_message())
        await ws.send_message(json.dumps({"type": "aircraft", "action": "subscribe", "id": target}))
        assert json.loads(await ws.get_message())["type"] == "subscribed"
        nursery.start_soon(_collect_fixes, ws, received)
        for fix in sbs_sample_fixes:
            publisher.offer(fix)
        await publisher.flush_paced()
        # The same aircraft once more, later than any fix of the capture: the last message.
        last = max((f for f in sbs_sample_fixes if f.aircraft_id == target), key=lambda f: f.received_us)
        publisher.offer(_shifted(last, 1))
        assert await wait_until(lambda: len(received) > counts[target], 60)
        assert received.pop()["time_us"] == last.received_us + 60_000_000
    assert {m["id"] for m in received} == {target}
    assert len(received) == counts[target]
    nursery.cancel_scope.cancel()


async def test_slow_client_drops_oldest_and_does_not_slow_a_fast_one(
    nursery: trio.Nursery, sbs_sample_fixes: list[Fix]
) -> None:
    queue_size = 200
    publisher, hub, host = await _live_stack(nursery, "inproc://soar-test-slow", queue_size)
    in_area = [f for f in sbs_sample_fixes if inside(f, AREA)]
    hostname, port = host.split(":")

    # The slow client: a tiny receive buffer and nobody reading after the subscription ack.
    raw = trio.socket.socket()
    raw.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
    await raw.connect((hostname, int(port)))
    try:
        slow = await trio_websocket.wrap_client_stream(
            nursery, trio.SocketStream(raw), hostname, "/api/live", message_queue_size=0
        )
        await _subscribe(slow, AREA)
        slow_client = next(c for c in hub._clients if c.squares)
        dropped_before = WS_DROPPED._value.get()
        before = _counts()

        fast_received: list[dict[str, Any]] = []
        published = 0
        async with trio_websocket.open_websocket_url(f"ws://{host}/api/live") as fast:
            await _subscribe(fast, AREA)
            nursery.start_soon(_collect_fixes, fast, fast_received)
            rounds = 0
            # Replay the area's fixes (shifted in time each round) in steps smaller than the
            # fast client's queue, each step delivered to the fast client before the next, until
            # the slow client's queue has overflowed several times over. Lockstep on counts: a
            # hub held back by the slow client would stall the fast one, and the step's wait
            # fails; how long a step takes on a busy machine does not matter.
            while slow_client.queue.dropped < 3 * queue_size and rounds < 40:
                for batch in chunks(in_area, queue_size // 4):
                    for fix in batch:
                        publisher.offer(_shifted(fix, rounds))
                    published += len(batch)
                    assert await wait_until(partial(_at_least, fast_received, published), 30), (
                        f"the fast client got {len(fast_received)} of {published} fixes"
                    )
                rounds += 1
        assert slow_client.queue.dropped >= 3 * queue_size
        assert WS_DROPPED._value.get() - dropped_before >= slow_client.queue.dropped
        assert len(fast_received) == published, "the fast client lost fixes to the slow one"
        assert len(slow_client.queue) <= queue_size
    finally:
        # hypercorn's writes to the slow client are shielded from cancellation and that client
        # never reads: close its socket, or the server's connection task can never finish.
        raw.close()
    # Both gone: every fix queued for either was sent, dropped, or discarded when its client
    # left (hypercorn takes writes to a connection that just broke without a word, so what the
    # slow client had queued may count as sent).
    assert await wait_until(lambda: hub.client_count == 0, 30)
    counted = _since(before)
    assert counted["queued"] == counted["sent"] + counted["dropped"] + counted["discarded"]
    assert counted["dropped"] == slow_client.queue.dropped
    assert counted["discarded"] == slow_client.queue.discarded
    assert counted["sent"] >= len(fast_received)
    nursery.cancel_scope.cancel()


def _at_least(items: list[Any], count: int) -> bool:
    return len(items) >= count


def _shifted(fix: Fix, rounds: int) -> Fix:
    from dataclasses import replace

    shift = rounds * 60_000_000  # the fix's own time (what `time_us` shows) and receive time
    return replace(fix, received_us=fix.received_us + shift, time_us=fix.time_us + shift)


async def test_a_flush_with_more_topics_than_nng_queues_loses_nothing(
    nursery: trio.Nursery, sbs_sample_fixes: list[Fix]
) -> None:
    from dataclasses import replace

    from soar.live import PIPE_BUFFER
    from soar.web.live import squares_in_bounds

    address = "inproc://soar-test-big-flush"
    publisher = LivePublisher(address, flush_interval=3600)  # flushed by hand below
    await nursery.start(publisher.run)
    hub = LiveHub(address, client_queue_size=1_000_000)
    await nursery.start(hub.run)
    assert await wait_until(lambda: hub.connected, 30)
    client = hub.connect()
    hub.subscribe_squares(client, squares_in_bounds(**AREA))
    # Twice the capture under a second address each: one flush, > PIPE_BUFFER topics.
    doubled = sbs_sample_fixes + [replace(f, address=f.address ^ 0x800000) for f in sbs_sample_fixes]
    assert len({f.aircraft_id for f in doubled}) > PIPE_BUFFER
    for fix in doubled:
        publisher.offer(fix)
    await publisher.flush_paced()
    expected = sum(1 for f in doubled if inside(f, AREA))
    publisher.offer(SENTINEL)
    await publisher.flush_paced()
    # The sentinel went out after every other message: once it is queued, all are.
    assert await wait_until(lambda: len(client.queue) >= expected + 1, 60)
    assert len(client.queue) == expected + 1
    nursery.cancel_scope.cancel()


async def test_hub_started_before_the_publisher_connects_when_it_comes_up(
    nursery: trio.Nursery,
) -> None:
    address = "inproc://soar-test-order"
    hub = LiveHub(address)
    await nursery.start(hub.run)
    await trio.sleep(0.2)
    assert not hub.connected
    await nursery.start(LivePublisher(address).run)
    assert await wait_until(lambda: hub.connected, 30)
    nursery.cancel_scope.cancel()
