"""Privacy through the whole system: DDB flags decide what is stored, served and streamed.

The OGN trace's aircraft (ICA48683E) is listed `tracked = N`: not one of its fixes may be stored,
served or streamed. An aircraft of the SBS capture is listed `identified = N` with a
registration: it is stored and shown, but never with its registration or competition number.
A third SBS aircraft is listed normally and keeps its identity (the control).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import trio
import trio_websocket
from hypercorn.config import Config
from hypercorn.trio import serve

from soar.config import load_settings
from soar.ddb import import_ddb
from soar.pipeline import Pipeline, SourceSpec
from soar.records import AddressType, aircraft_id
from soar.replay import CaptureSource
from soar.supervisor import RestartPolicy
from soar.web.app import WebContext, create_app
from soar.web.live import AircraftDirectory, LiveHub
from tests.support import ddb_device, fetch, fetch_json, write_ddb

OGN_TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"
SBS_SAMPLE = "sbs/adsbhub-sbs-sample-20260224.txt.gz"
HIDDEN = 0x48683E
ANONYMOUS = 0xE49206  # two aircraft with positions in the SBS sample
NAMED = 0xE49174


def airliner(address: int, registration: str, **fields: str) -> dict[str, str]:
    """An A320 of the device database (tracked and identified unless `fields` say not)."""
    return ddb_device("I", f"{address:06X}", aircraft_model="A320", registration=registration,
                      cn=registration[-2:], aircraft_type="9", **fields)


async def test_ddb_privacy_on_storage_api_and_websocket(
    testdata: Path, tmp_path: Path, db_url: str, nursery: trio.Nursery
) -> None:
    ddb = tmp_path / "ddb.json"
    write_ddb(ddb, [airliner(HIDDEN, "OO-HID", tracked="N"),
                    airliner(ANONYMOUS, "D-ANON", identified="N"),
                    airliner(NAMED, "EI-NAM")])
    summary = await trio.to_thread.run_sync(import_ddb, db_url, ddb)
    assert summary["read"] == 3

    settings = load_settings(environ={}, overrides={
        "data_dir": str(tmp_path / "var"), "shards": 2, "live_addr": "inproc://soar-privacy"})
    captures = [CaptureSource(testdata / OGN_TRACE), CaptureSource(testdata / SBS_SAMPLE)]
    pipeline = Pipeline(settings, db_url, sources=[
        SourceSpec(f"capture{i}", c.protocol, c.run, RestartPolicy.TEMPORARY)
        for i, c in enumerate(captures)])
    await pipeline.open()
    directory = AircraftDirectory(refresh_interval=0.5)
    hub = LiveHub(settings.live_addr, directory=directory.get)
    await nursery.start(directory.run, pipeline.pool)
    await nursery.start(hub.run)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    app = create_app(WebContext(pool=pipeline.pool, live=hub))
    binds = await nursery.start(partial(serve, app, config, shutdown_trigger=trio.sleep_forever))
    host = binds[0].split("://", 1)[1]

    streamed: list[dict[str, Any]] = []

    async def watch() -> None:
        async with trio_websocket.open_websocket_url(f"ws://{host}/api/live") as ws:
            # where the two SBS aircraft fly (a client may hold at most 400 squares)
            for north, south, east, west in ((-3, -4, -38, -39), (-34, -35, -58, -60)):
                await ws.send_message(json.dumps({"type": "area_bulk", "action": "subscribe",
                                                  "bounds": {"north": north, "south": south,
                                                             "east": east, "west": west}}))
            # and, explicitly, the aircraft that must never be streamed, and its area
            await ws.send_message(json.dumps({"type": "aircraft", "action": "subscribe",
                                              "id": aircraft_id(AddressType.ICAO, HIDDEN)}))
            await ws.send_message(json.dumps({"type": "area_bulk", "action": "subscribe",
                                              "bounds": {"north": 53, "south": 50, "east": 5,
                                                         "west": 2}}))
            answers = 0
            while True:
                message = json.loads(await ws.get_message())
                if message.get("type") == "fix":
                    streamed.append(message)
                elif message.get("type") in ("subscribed", "error"):
                    answers += 1
                    if answers == 4:  # every subscription above is in place
                        subscribed.set()

    subscribed = trio.Event()
    nursery.start_soon(watch)
    with trio.fail_after(60):
        await subscribed.wait()
    await pipeline.run()  # its live publisher starts here: the hub connects to it then

    hidden = aircraft_id(AddressType.ICAO, HIDDEN)
    anonymous = aircraft_id(AddressType.ICAO, ANONYMOUS)
    named = aircraft_id(AddressType.ICAO, NAMED)
    with psycopg.connect(db_url) as conn:
        counts = dict(conn.execute(
            "SELECT aircraft_id, count(*) FROM fixes WHERE aircraft_id = ANY(%s) GROUP BY 1",
            ([hidden, anonymous, named],)).fetchall())
        [(hidden_flights,)] = conn.execute(
            "SELECT count(*) FROM flights WHERE aircraft_id = %s", (hidden,)).fetchall()
    # storage
    assert hidden not in counts and hidden_flights == 0, "tracked = N: nothing stored"
    assert counts.get(anonymous, 0) >= 1 and counts.get(named, 0) >= 1
    # API
    status, _ = await fetch(f"http://{host}/api/aircraft/{hidden}")
    assert status == 404
    body = await fetch_json(f"http://{host}/api/aircraft/{anonymous}")
    assert body.get("registration") is None and body.get("competition_number") is None
    body = await fetch_json(f"http://{host}/api/aircraft/{named}")
    assert body["registration"] == "EI-NAM"
    body = await fetch_json(f"http://{host}/api/aircraft?bbox=-179,-89,179,89")
    listed = body["aircraft"] if isinstance(body, dict) else body
    assert all(a["id"] != hidden for a in listed)
    # WebSocket: what the hub took is on the client's socket once its queue is empty and both
    # visible aircraft have been seen (a hidden fix would have been queued among theirs).
    def delivered() -> bool:
        ids = {m["id"] for m in streamed}
        return {anonymous, named} <= ids and all(len(c.queue) == 0 for c in hub._clients)

    with trio.fail_after(60):
        while not delivered():
            await trio.sleep(0.05)
    by_id: dict[int, list[dict[str, Any]]] = {}
    for message in streamed:
        by_id.setdefault(message["id"], []).append(message)
    assert hidden not in by_id
    assert anonymous in by_id and named in by_id
    assert all(m.get("registration") is None and m.get("competition_number") is None
               for m in by_id[anonymous])
    assert any(m.get("registration") == "EI-NAM" for m in by_id[named])
    await pipeline.close()
    nursery.cancel_scope.cancel()


async def test_stealth_bit_stored_never_streamed_and_shown_without_identity(
    testdata: Path, tmp_path: Path, db_url: str, nursery: trio.Nursery
) -> None:
    """No capture here carries a stealth beacon, so the real ICA48683E trace is replayed with
    the stealth bit (0x80 of the id field) set on every beacon; the DDB lists the aircraft as
    identified, with a registration the stealth bit must still keep private."""
    ddb = tmp_path / "ddb.json"
    write_ddb(ddb, [airliner(HIDDEN, "OO-STL")])
    await trio.to_thread.run_sync(import_ddb, db_url, ddb)
    stealthy = tmp_path / "stealth-trace.txt"
    lines = (testdata / OGN_TRACE).read_text().splitlines()
    marked = [line.replace(" id01", " id81").replace(" id25", " idA5") for line in lines]
    assert all(" id81" in m or " idA5" in m for m in marked)
    stealthy.write_text("\n".join(marked) + "\n")

    settings = load_settings(environ={}, overrides={
        "data_dir": str(tmp_path / "var"), "shards": 2, "live_addr": "inproc://soar-stealth"})
    capture = CaptureSource(stealthy)
    pipeline = Pipeline(settings, db_url, sources=[
        SourceSpec("stealth", capture.protocol, capture.run, RestartPolicy.TEMPORARY)])
    await pipeline.open()
    hub = LiveHub(settings.live_addr)
    await nursery.start(hub.run)
    ident = aircraft_id(AddressType.ICAO, HIDDEN)
    client = hub.connect()
    hub.subscribe_aircraft(client, ident)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    app = create_app(WebContext(pool=pipeline.pool, live=hub))
    binds = await nursery.start(partial(serve, app, config, shutdown_trigger=trio.sleep_forever))
    host = binds[0].split("://", 1)[1]
    await pipeline.run()

    with psycopg.connect(db_url) as conn:
        [(stored,)] = conn.execute("SELECT count(*) FROM fixes WHERE aircraft_id = %s",
                                   (ident,)).fetchall()
    # every beacon but the 66 same-time repeats of a report heard by another receiver
    assert stored == len(lines) - 66, "stealth aircraft are stored"
    assert len(client.queue) == 0 and hub.received_fixes == 0, "and never streamed"
    # REST: a stealth aircraft is not found by its id (which holds its address); its flights
    # are listed without identity (tests/web/test_flight_log.py)
    status, _ = await fetch(f"http://{host}/api/aircraft/{ident}")
    assert status == 404
    await pipeline.close()
    nursery.cancel_scope.cancel()
