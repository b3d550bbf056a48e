"""Live fixes in split mode: real SBS capture → NatsLivePublisher → a real nats-server →
LiveHub on NATS → real WebSocket clients on /api/live."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest
import trio
import trio_websocket

from soar.broker.client import JetStreamLink, open_link
from soar.broker.embedded import EmbeddedNats
from soar.live import LIVE_DROPPED, NatsLivePublisher, nats_topics
from soar.records import AddressType, Fix, Protocol
from soar.web.app import WebContext, create_app
from soar.web.live import LiveHub, squares_in_bounds
from tests.support import embedded_nats, wait_until

from .conftest import chunks, start_server

# The two busiest disjoint 10x10 degree boxes of the SBS sample: south-eastern USA, western Europe.
AREA_A = {"north": 40, "south": 30, "east": -80, "west": -90}
AREA_B = {"north": 50, "south": 40, "east": 10, "west": 0}

_prefixes = itertools.count()


def inside(fix: Fix, area: dict[str, float]) -> bool:
    # Independent of soar's square arithmetic: plain half-open interval tests.
    return area["south"] <= fix.lat < area["north"] and area["west"] <= fix.lon < area["east"]


def sentinel(area: dict[str, float], address: int) -> Fix:
    """A fix in the middle of `area` from an address the capture does not have, sent last."""
    lat = (area["north"] + area["south"]) / 2 + 0.5
    lon = (area["east"] + area["west"]) / 2 + 0.5
    return Fix(Protocol.OGN, AddressType.FLARM, address, 2**50, lat, lon)


@pytest.fixture(scope="module")
def nats_server() -> Iterator[EmbeddedNats]:
    with embedded_nats("soar-test-live-nats-") as server:
        yield server


@pytest.fixture
async def links(nats_server: EmbeddedNats) -> AsyncIterator[tuple[JetStreamLink, JetStreamLink]]:
    """Two connections, as a track process and a web process have."""
    async with open_link(nats_server.url, token=nats_server.token, name="track") as track, \
            open_link(nats_server.url, token=nats_server.token, name="web") as web:
        yield track, web


async def _stack(
    nursery: trio.Nursery, links: tuple[JetStreamLink, JetStreamLink]
) -> tuple[NatsLivePublisher, LiveHub, str]:
    prefix = f"test.live{next(_prefixes)}"  # tests share the server: subjects of their own
    track, web = links
    publisher = NatsLivePublisher(track, prefix=prefix, flush_interval=0.02)
    await nursery.start(publisher.run)
    hub = LiveHub(link=web, live_prefix=prefix, client_queue_size=100_000)
    await nursery.start(hub.run)
    assert hub.connected
    host = await start_server(nursery, create_app(WebContext(live=hub)))
    return publisher, hub, host


async def _send(ws: trio_websocket.WebSocketConnection, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send_message(json.dumps(message))
    reply: dict[str, Any] = json.loads(await ws.get_message())
    return reply


async def _area(ws: trio_websocket.WebSocketConnection, action: str, area: dict[str, float]) -> None:
    reply = await _send(ws, {"type": "area_bulk", "action": action, "bounds": area})
    assert reply["type"] == f"{action}d", reply


async def _collect(ws: trio_websocket.WebSocketConnection, into: list[dict[str, Any]]) -> None:
    while True:
        try:
            message = json.loads(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            return
        assert message["type"] == "fix", message
        into.append(message)


async def test_a_fix_reaches_the_client_of_its_square_and_no_other(
    nursery: trio.Nursery, links: tuple[JetStreamLink, JetStreamLink],
    sbs_sample_fixes: list[Fix],
) -> None:
    publisher, hub, host = await _stack(nursery, links)
    expected = {
        name: {(f.aircraft_id, f.received_us) for f in sbs_sample_fixes if inside(f, area)}
        for name, area in (("a", AREA_A), ("b", AREA_B))
    }
    assert len(expected["a"]) > 1000 and len(expected["b"]) > 500  # real traffic in both
    marks = {"a": sentinel(AREA_A, 0xFFFFFE), "b": sentinel(AREA_B, 0xFFFFFD)}
    received: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    async with trio_websocket.open_websocket_url(f"ws://{host}/api/live") as ws_a, \
            trio_websocket.open_websocket_url(f"ws://{host}/api/live") as ws_b:
        for ws in (ws_a, ws_b):
            status = json.loads(await ws.get_message())
            assert status["status"] == "connected", status
        # "subscribed" comes once the NATS server holds the subscription: nothing after it is lost
        await _area(ws_a, "subscribe", AREA_A)
        await _area(ws_b, "subscribe", AREA_B)
        names = nats_topics(hub.address.removeprefix("nats:"))
        assert hub.subscribed == {
            names.area(*square) for area in (AREA_A, AREA_B) for square in squares_in_bounds(**area)
        }
        nursery.start_soon(_collect, ws_a, received["a"])
        nursery.start_soon(_collect, ws_b, received["b"])
        for chunk in chunks(sbs_sample_fixes, 500):
            for fix in chunk:
                publisher.offer(fix)
            await trio.sleep(0.005)
        for mark in marks.values():
            publisher.offer(mark)
        # nats-py runs each subscription (square) in a task of its own, so order holds within
        # a square only: wait for every expected fix and the sentinel, then look for extras.
        for name, mark in marks.items():
            assert await wait_until(
                lambda n=name, m=mark: _has_all(received[n], expected[n], m), 60
            ), f"client {name} got {len(received[name])} of {len(expected[name]) + 1} fixes"
    assert publisher.dropped == 0
    for name in ("a", "b"):
        got = [(m["id"], m["received_us"]) for m in received[name]
               if m["id"] != marks[name].aircraft_id]
        assert len(got) == len(set(got)), f"client {name} got a fix twice"
        assert set(got) == expected[name], f"client {name}: not exactly the fixes of its area"
    by_key = {(f.aircraft_id, f.received_us): f for f in sbs_sample_fixes}
    for message in received["a"][:50]:
        fix = by_key[(message["id"], message["received_us"])]
        assert message["lat"] == pytest.approx(fix.lat, abs=1e-6)
        assert message["callsign"] == fix.callsign
        assert message["protocol"] == "sbs"
    nursery.cancel_scope.cancel()


def _has_all(received: list[dict[str, Any]], expected: set[tuple[int, int]], mark: Fix) -> bool:
    got = {(m["id"], m["received_us"]) for m in received}
    return (mark.aircraft_id, mark.received_us) in got and expected <= got


async def test_subscriptions_follow_clients_coming_and_going(
    nursery: trio.Nursery, links: tuple[JetStreamLink, JetStreamLink],
    sbs_sample_fixes: list[Fix],
) -> None:
    publisher, hub, host = await _stack(nursery, links)
    names = nats_topics(hub.address.removeprefix("nats:"))
    squares_a = {names.area(*sq) for sq in squares_in_bounds(**AREA_A)}
    squares_b = {names.area(*sq) for sq in squares_in_bounds(**AREA_B)}
    target = sbs_sample_fixes[0].aircraft_id
    watched = sentinel(AREA_B, 0xFFFFFC)  # always in a square some client still follows

    async def settled(wanted: set[str]) -> None:
        # A client that left is noticed by its server task a moment later: wait for the hub to
        # want `wanted`, then for NATS to hold exactly that.
        assert await wait_until(lambda: hub.topics() == wanted, 60), hub.topics() ^ wanted
        assert await hub.wait_subscribed()
        assert hub.subscribed == wanted

    async def only_watched_arrives(gone: Fix, watcher: list[dict[str, Any]]) -> None:
        """Publish `gone` (in a square nobody follows now), then `watched`: once `watched` is
        in, the server has sent the hub nothing for `gone`'s square."""
        before = hub.received_fixes
        seen = len(watcher)
        publisher.offer(gone)
        publisher.offer(replace(watched, received_us=watched.received_us + before))
        assert await wait_until(lambda: len(watcher) > seen, 60)
        assert hub.received_fixes == before + 1, "the hub still receives a square nobody follows"

    async with trio_websocket.open_websocket_url(f"ws://{host}/api/live") as one:
        json.loads(await one.get_message())
        await _area(one, "subscribe", AREA_A)
        await settled(squares_a)
        reply = await _send(one, {"type": "aircraft", "action": "subscribe", "id": target})
        assert reply["type"] == "subscribed"
        following = {names.aircraft(target)}
        await settled(squares_a | following)
        async with trio_websocket.open_websocket_url(f"ws://{host}/api/live") as two:
            json.loads(await two.get_message())
            await _area(two, "subscribe", AREA_A)  # the same squares: nothing new on the server
            await settled(squares_a | following)
            await _area(two, "subscribe", AREA_B)
            await settled(squares_a | squares_b | following)
            await _area(one, "unsubscribe", AREA_A)  # two still wants them
            await settled(squares_a | squares_b | following)
            await _area(two, "unsubscribe", AREA_A)  # now nobody does
            await settled(squares_b | following)
            received_two: list[dict[str, Any]] = []
            nursery.start_soon(_collect, two, received_two)
            await only_watched_arrives(sentinel(AREA_A, 0xFFFFFB), received_two)
            assert [m["id"] for m in received_two] == [watched.aircraft_id]
        await settled(following)  # two left: its squares went with it
    await settled(set())  # everyone left: nothing subscribed on the server
    nursery.cancel_scope.cancel()


async def test_publisher_counts_a_flush_nats_refused(
    nats_server: EmbeddedNats, sbs_sample_fixes: list[Fix],
) -> None:
    # A link whose server has gone: publishing fails, the fixes are dropped and counted, and
    # offer() never blocked the caller meanwhile.
    before = LIVE_DROPPED.labels(stage="nats")._value.get()
    async with open_link(nats_server.url, token=nats_server.token, name="doomed") as link:
        publisher = NatsLivePublisher(link, prefix="test.doomed", flush_interval=3600)
        await link.bridge.call(link._nc.close)
        for fix in sbs_sample_fixes[:100]:
            publisher.offer(fix)
        assert await publisher.flush() == 0
    assert publisher.dropped == 100
    assert LIVE_DROPPED.labels(stage="nats")._value.get() - before == 100
