"""`soar run`'s web worker (issue 18.6: the memory a crowd leaves is not the tracker's): a real
`soar run` fed the real SBS sample over TCP hands each new connection its front door does not
answer itself (API, pages, `/api/live`) to a child process, whose metrics show in the parent's
/metrics labelled worker="web" and whose pages show the parent's feeds. A worker killed is
replaced, and clients meanwhile are served by the parent; a worker whose clients have gone
retires and a fresh one takes its place; at SIGTERM its clients are told goodbye (1001) and no
process is left behind, nor when the parent is killed.

Every wait is on a count, a message or a process ending, each bounded for a failure to be
reported rather than hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

from soar.bench.crowds_ws import (
    IDLE_AREAS,
    feed_server,
    metric,
    sbs_lines,
    soar_env,
    stop_soar,
    wait_started,
    web_worker_pid,
)
from soar.hostport import free_loopback_port
from soar.processes import pid_alive
from soar.store.embedded import EmbeddedPostgres
from tests.faults.faultkit import as_url, drop_database, fresh_database
from tests.support import http_get, wait_for_blocking

#: SBS lines a second: several fixes a second in AREA
FEED_RATE = 300.0
#: 240 squares over western Europe, busy in the SBS sample
AREA = IDLE_AREAS[1]
WAIT_S = 60
WORKER_UP = "soar_web_worker_up"
T = TypeVar("T")


@dataclass
class Soar:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    workers: set[int]  # every web worker seen, for the fixture to be sure none is left

    def metric(self, name: str) -> float:
        return metric(self.port, name)

    def metrics_text(self) -> str:
        status, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        assert status == 200, (status, body[:200])
        return body.decode()

    def worker(self) -> int:
        """The web worker's pid, once it takes connections."""
        wait_until(lambda: self.metric(WORKER_UP) == 1, "the web worker is up")
        pid = web_worker_pid(self.proc.pid)
        assert pid is not None, "soar_web_worker_up is 1 but soar run has no web worker"
        self.workers.add(pid)
        return pid


def wait_until(done: Callable[[], bool], what: str) -> None:
    """Poll `done()` (a count or a process state) until true, for at most WAIT_S."""
    wait_for_blocking(done, WAIT_S, what)


def gone(pid: int) -> bool:
    """Process `pid` runs no more (a zombie of a parent still alive included)."""
    return not pid_alive(pid)


@pytest.fixture
def soar(
    testdata: Path, tmp_path: Path, pg_server: EmbeddedPostgres, request: pytest.FixtureRequest
) -> Iterator[Soar]:
    db_url = fresh_database(pg_server, "liveworker")
    stop = threading.Event()
    feed = feed_server(sbs_lines(testdata), FEED_RATE, stop)
    port = free_loopback_port()
    extra = getattr(request, "param", {})
    env = soar_env(tmp_path / "var", port, feed, SOAR_DATABASE_URL=as_url(db_url),
                   SOAR_LOG_LEVEL="info", **extra)
    log = tmp_path / "soar.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "soar", "run"], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    running = Soar(proc, port, log, set())
    try:
        wait_started(proc, port, WAIT_S)
        running.worker()
        yield running
    finally:
        stop.set()
        stop_soar(proc)
        for pid in running.workers:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        drop_database(pg_server, db_url)


async def _follow(nursery: trio.Nursery, port: int) -> trio_websocket.WebSocketConnection:
    """A map client of AREA, greeted and subscribed (the caller closes it)."""
    ws = await trio_websocket.connect_websocket_url(nursery, f"ws://127.0.0.1:{port}/api/live")
    status = json.loads(await ws.get_message())
    assert status["status"] == "connected", status
    await ws.send_message(json.dumps({"type": "area_bulk", "action": "subscribe",
                                      "bounds": AREA}))
    while json.loads(await ws.get_message())["type"] != "subscribed":
        pass
    return ws


async def _a_fix(ws: trio_websocket.WebSocketConnection) -> dict[str, object]:
    while True:
        message: dict[str, object] = json.loads(await ws.get_message())
        if message["type"] == "fix":
            return message


def _run(main: Callable[[trio.Nursery], Awaitable[T]]) -> T:
    """`main(nursery)` under trio, within WAIT_S; the nursery is for its WebSocket clients."""
    async def in_nursery() -> T:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(WAIT_S):
                result = await main(nursery)
            nursery.cancel_scope.cancel()
        return result

    return trio.run(in_nursery)


@pytest.mark.time_limit(180)
def test_live_clients_are_served_by_the_worker_and_shown_in_the_parents_metrics(
    soar: Soar,
) -> None:
    async def main(nursery: trio.Nursery) -> None:
        ws = await _follow(nursery, soar.port)
        fix = await _a_fix(ws)
        assert AREA["south"] <= float(fix["lat"]) <= AREA["north"]  # type: ignore[arg-type]
        text = soar.metrics_text()
        assert 'soar_websocket_connections{worker="web"} 1.0' in text
        assert "soar_websocket_connections 0.0" in text  # none in soar's own process
        # one HELP and TYPE per family, as the format requires, the worker's merged in
        names = [family.name for family in text_string_to_metric_families(text)]
        assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
        await ws.aclose()

    _run(main)
    assert soar.metric('soar_web_handovers_total{to="worker"}') >= 1
    assert soar.metric('soar_web_handovers_total{to="parent"}') == 0
    assert soar.metric('soar_websocket_sent_total{worker="web"}') >= 1


@pytest.mark.time_limit(180)
def test_api_and_pages_are_served_by_the_worker_with_the_parents_feeds(soar: Soar) -> None:
    before = soar.metric('soar_web_handovers_total{to="worker"}')
    status, body = _get(soar.port, "/api/receivers")
    assert status == 200, body[:200]
    assert soar.metric('soar_web_handovers_total{to="worker"}') == before + 1
    assert soar.metric('soar_web_handovers_total{to="parent"}') == 0
    # counted by the worker, shown in soar's /metrics
    assert any(line.startswith("soar_http_requests_total{") and "/api/receivers" in line
               and 'worker="web"' in line for line in soar.metrics_text().splitlines())
    # the map's feed indicator: the SBS feed is the parent's, and connected
    wait_until(lambda: json.loads(_get(soar.port, "/map/data/feeds")[1])["feeds"]["sbs"][
        "state"] == "connected", "the worker shows the parent's SBS feed connected")


def _get(port: int, path: str) -> tuple[int, bytes]:
    return http_get(f"http://127.0.0.1:{port}{path}")


@pytest.mark.time_limit(180)
def test_a_killed_worker_is_replaced_and_meanwhile_soar_serves_live_itself(soar: Soar) -> None:
    first = soar.worker()

    async def main(nursery: trio.Nursery) -> None:
        ws = await _follow(nursery, soar.port)
        await _a_fix(ws)
        os.kill(first, signal.SIGKILL)
        with pytest.raises(trio_websocket.ConnectionClosed):
            while True:
                await ws.get_message()
        # at once, before any restart: served by soar's own hub or by the next worker
        ws = await _follow(nursery, soar.port)
        await _a_fix(ws)
        await ws.aclose()

    _run(main)
    wait_until(lambda: soar.metric('soar_web_worker_exits_total{reason="failed"}') == 1,
               "the crash is counted")
    second = soar.worker()
    assert second != first

    async def again(nursery: trio.Nursery) -> None:
        before = soar.metric('soar_web_handovers_total{to="worker"}')
        ws = await _follow(nursery, soar.port)
        await _a_fix(ws)
        await ws.aclose()
        assert soar.metric('soar_web_handovers_total{to="worker"}') == before + 1

    _run(again)
    assert soar.proc.poll() is None


@pytest.mark.time_limit(180)
@pytest.mark.parametrize("soar", [{"SOAR_WEB_WORKER_RECYCLE_AFTER": "3",
                                   "SOAR_WEB_WORKER_RECYCLE_GROWTH": "0"}], indirect=True)
def test_a_worker_retires_once_its_crowd_has_gone_and_a_fresh_one_follows(soar: Soar) -> None:
    first = soar.worker()

    async def crowd_of_three(nursery: trio.Nursery) -> None:
        clients = [await _follow(nursery, soar.port) for _ in range(3)]
        for ws in clients:
            await _a_fix(ws)
        for ws in clients:
            await ws.aclose()

    _run(crowd_of_three)
    sent = soar.metric("soar_websocket_sent_total")
    assert sent >= 3
    wait_until(lambda: soar.metric('soar_web_worker_exits_total{reason="retired"}') == 1,
               "the worker retired")
    wait_until(lambda: gone(first), "the retired worker has ended")
    second = soar.worker()
    assert second != first
    assert soar.metric('soar_web_worker_exits_total{reason="failed"}') == 0
    # a retirement is not a counter reset: the next worker's counts carry on from its
    assert soar.metric("soar_websocket_sent_total") >= sent

    async def one_more(nursery: trio.Nursery) -> None:
        ws = await _follow(nursery, soar.port)
        await _a_fix(ws)
        await ws.aclose()

    _run(one_more)
    assert "web.worker.retiring" in soar.log.read_text()


@pytest.mark.time_limit(180)
def test_at_sigterm_the_workers_clients_are_told_goodbye_and_nothing_is_left(
    soar: Soar,
) -> None:
    worker = soar.worker()

    async def main(nursery: trio.Nursery) -> int | None:
        ws = await _follow(nursery, soar.port)
        await _a_fix(ws)
        soar.proc.send_signal(signal.SIGTERM)
        try:
            while True:
                await ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            return closed.reason.code
        return None

    assert _run(main) == 1001  # "going away"
    assert soar.proc.wait(WAIT_S) == 0
    wait_until(lambda: gone(worker), "the web worker has ended with soar")


@pytest.mark.time_limit(180)
def test_a_worker_whose_parent_was_killed_ends_by_itself(soar: Soar) -> None:
    worker = soar.worker()
    soar.proc.kill()
    soar.proc.wait(WAIT_S)
    wait_until(lambda: gone(worker), "the orphaned web worker has ended")
