"""A crowd on /api/live (issue 18.6): 1,000 WebSocket clients, 300 of them never reading, on a
real `soar run` fed the real SBS sample over TCP. Every handshake succeeds, every reader gets
fixes, what the non-readers cannot take is dropped oldest-first and counted (every fix queued
for a client is sent, dropped or discarded when it leaves), and once the crowd has left the
connections are gone.

One crowd per module; the tests read what it saw. Each wait is on an event or a count. The
non-readers connect and subscribe first, to 400 busy squares, over TCP with the smallest window
and segment size, and the server keeps 50 fixes per client (SOAR_LIVE_CLIENT_QUEUE), so their
queues overflow within seconds. Once all 1,000 are connected and the server has counted
drops, the readers subscribe, and the crowd leaves once each of them has a fix: 700 maps take
a batch four times a second, and on a busy 2-core machine that is kept to seconds. How fast
`/healthz` answers meanwhile and how much memory comes back are figures of
`python -m soar.bench.crowds_ws`; here they are only printed. That every probe was answered by
the front door (the thread ahead of the loop) is counted, and asserted; so is that every
connection of the crowd was served by the web worker, not the tracker's process, and that the
worker retired once the crowd had gone, a fresh one taking its place.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from soar.bench.crowds_ws import (
    RETIRED,
    CrowdResult,
    crowd,
    feed_server,
    metric,
    sbs_lines,
    soar_env,
    stop_soar,
    wait_metric,
    wait_started,
)
from soar.hostport import free_loopback_port
from soar.store.embedded import EmbeddedPostgres
from tests.faults.faultkit import as_url, drop_database, fresh_database

CLIENTS = 1000
IDLE = 300
#: SBS lines a second: a fix every second or so in the readers' squares, ~35 a second in the
#: non-readers'
FEED_RATE = 300.0
#: fixes queued per client (SOAR_LIVE_CLIENT_QUEUE): a non-reader's overflows after ~150
#: fixes, ~100 of them taken by its socket
QUEUE = 50
#: handshakes at once: the server's listen backlog is 1,024, so none waits for a SYN retry
CONCURRENCY = 250
#: the crowd stays until at least this many fixes were dropped from the non-readers' queues
DROPS = IDLE
#: bounds on each wait of the fixture, for a failure to be reported rather than hang; none is
#: reached when all goes well, whatever the machine's load
WAIT_S = 60
COUNTERS = ("queued", "sent", "dropped", "discarded")
#: /healthz answered by the front door's thread, not the event loop the crowd keeps busy
DOOR_HEALTHZ = 'soar_http_door_connections_total{outcome="healthz"}'


@dataclass
class Seen:
    result: CrowdResult
    before: dict[str, float]
    after: dict[str, float]
    connections_after: float
    #: web workers retired once the crowd had gone, and whether a fresh one is up
    retired: float
    worker_up: float

    def delta(self, counter: str) -> float:
        return self.after[counter] - self.before[counter]


def _counters(port: int) -> dict[str, float]:
    return {name: metric(port, f"soar_websocket_{name}_total") for name in COUNTERS} | {
        "door_healthz": metric(port, DOOR_HEALTHZ),
        "to_worker": metric(port, 'soar_web_handovers_total{to="worker"}'),
        "to_parent": metric(port, 'soar_web_handovers_total{to="parent"}')}


@pytest.fixture(scope="module")
def seen(
    testdata: Path, tmp_path_factory: pytest.TempPathFactory, pg_server: EmbeddedPostgres
) -> Iterator[Seen]:
    db_url = fresh_database(pg_server, "crowds")
    stop = threading.Event()
    feed = feed_server(sbs_lines(testdata), FEED_RATE, stop)
    port = free_loopback_port()
    tmp = tmp_path_factory.mktemp("crowds-ws")
    env = soar_env(tmp / "var", port, feed, SOAR_DATABASE_URL=as_url(db_url),
                   SOAR_LIVE_CLIENT_QUEUE=str(QUEUE))
    with (tmp / "soar.log").open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "soar", "run"], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_started(proc, port, WAIT_S)
        before = _counters(port)

        async def overflowed(_result: CrowdResult) -> None:
            # everyone is connected: the readers subscribe once the non-readers' queues
            # overflow
            await wait_metric(port, "soar_websocket_dropped_total",
                              lambda dropped: dropped - before["dropped"] >= DROPS, WAIT_S)

        async def come_and_go() -> tuple[CrowdResult, float, float, float]:
            result = await crowd("127.0.0.1", port, clients=CLIENTS, idle=IDLE,
                                 concurrency=CONCURRENCY, ready=overflowed,
                                 fixes_timeout=WAIT_S)
            stop.set()  # less for soar to finish at SIGTERM
            # the crowd has left: the server closes each of its connections
            connections = await wait_metric(port, "soar_websocket_connections",
                                            lambda open_now: open_now == 0, WAIT_S)
            # and the web worker that served it retires; a fresh one takes its place
            retired = await wait_metric(port, RETIRED, lambda n: n >= 1, WAIT_S)
            up = await wait_metric(port, "soar_web_worker_up", lambda n: n == 1, WAIT_S)
            return result, connections, retired, up

        result, connections, retired, up = trio.run(come_and_go)
        seen = Seen(result, before, _counters(port), connections, retired, up)
        print(f"crowd: {result.summary()}; fixes {seen.after}, before {before}")
        yield seen
    finally:
        stop.set()
        stop_soar(proc)
        drop_database(pg_server, db_url)


@pytest.mark.time_limit(60)
def test_every_handshake_succeeds_and_every_reader_gets_fixes(seen: Seen) -> None:
    result = seen.result
    assert result.handshakes_failed == 0, result.errors[:5]
    assert result.handshakes_ok == CLIENTS
    assert result.subscribed == CLIENTS, result.errors[:5]
    assert result.readers_with_fixes == CLIENTS - IDLE, (
        f"{CLIENTS - IDLE - result.readers_with_fixes} readers got no fix")
    assert result.healthz_failed == 0, [e for e in result.errors if "healthz" in e][:3]
    assert result.healthz_ms, "/healthz was asked while the crowd was connected"
    # health answered ahead of other work: every probe by the door, none by the busy loop
    assert seen.delta("door_healthz") >= len(result.healthz_ms)
    # the readers got no more than the server says it sent
    assert 0 < result.fixes_received <= seen.delta("sent")


@pytest.mark.time_limit(60)
def test_non_readers_drop_oldest_counted_and_connections_are_released(seen: Seen) -> None:
    # 300 clients that never read: their queues overflow, and every loss is counted
    assert seen.delta("dropped") >= DROPS
    # with nobody connected, every fix queued for a client was sent to it, dropped from its
    # queue, or discarded when it left: none vanished uncounted
    assert seen.delta("queued") == (
        seen.delta("sent") + seen.delta("dropped") + seen.delta("discarded")), seen
    assert seen.connections_after == 0, "connections of clients that left are still counted open"


@pytest.mark.time_limit(60)
def test_the_crowd_was_served_by_the_web_worker_which_then_made_way_for_a_fresh_one(
    seen: Seen,
) -> None:
    # every connection of the crowd went to the worker: none allocated in the tracker's heap
    assert seen.delta("to_worker") >= CLIENTS
    assert seen.delta("to_parent") == 0
    # what a crowd leaves in the allocator goes with the worker that served it
    assert seen.retired >= 1
    assert seen.worker_up == 1
