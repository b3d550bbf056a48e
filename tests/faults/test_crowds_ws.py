"""A crowd on /api/live (issue 18.6): 1,000 WebSocket clients, 300 of them never reading, on a
real `soar run` fed the real SBS sample over TCP. Every handshake succeeds, every reader gets
fixes, what the non-readers cannot take is dropped oldest-first and counted, and once the crowd
has left the connections are gone and the memory comes back.

One crowd per module (it takes minutes on a busy 2-core machine); the tests read what it saw.
How fast `/healthz` answers meanwhile is a timing figure: `python -m soar.bench.crowds_ws`
measures it; here it is only printed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from soar.bench.crowds_ws import (
    CrowdResult,
    crowd,
    feed_server,
    free_port,
    metric,
    rss_bytes,
    sbs_lines,
    soar_env,
    wait_started,
)

CLIENTS = 1000
IDLE = 300


@dataclass
class Seen:
    result: CrowdResult
    rss_before: int
    rss_with: int
    rss_after: list[int] = field(default_factory=list)
    dropped_before: float = 0.0
    dropped_after: float = 0.0
    connections_after: float = -1.0
    log_tail: str = ""


def _rss_settled(pid: int, samples: int = 3, every: float = 2.0) -> int:
    values = []
    for _ in range(samples):
        values.append(rss_bytes(pid))
        time.sleep(every)
    return values[-1]


@pytest.fixture(scope="module")
def seen(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seen]:
    stop = threading.Event()
    feed = feed_server(sbs_lines(testdata), 1000.0, stop)
    port = free_port()
    tmp = tmp_path_factory.mktemp("crowds-ws")
    log_path = tmp / "soar.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "soar", "run"],
                                env=soar_env(tmp / "var", port, feed, SOAR_LOG_LEVEL="info"),
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_started(proc, port, 300)
        # a few clients first: what the first WebSocket ever costs (imports, caches) is not
        # the crowd's
        trio.run(lambda: crowd("127.0.0.1", port, clients=40, idle=10))
        before = _rss_settled(proc.pid)
        dropped_before = metric(port, "soar_websocket_dropped_total")
        with_crowd: list[int] = []

        async def hold(_result: CrowdResult) -> None:
            with_crowd.append(rss_bytes(proc.pid))

        result = trio.run(lambda: crowd("127.0.0.1", port, clients=CLIENTS, idle=IDLE,
                                        hold=hold, fixes_timeout=300))
        seen = Seen(result, before, max(with_crowd or [0]),
                    dropped_before=dropped_before)
        began = time.monotonic()
        while time.monotonic() - began < 120:  # until every connection is gone
            seen.connections_after = metric(port, "soar_websocket_connections")
            if seen.connections_after == 0:
                break
            time.sleep(0.5)
        seen.dropped_after = metric(port, "soar_websocket_dropped_total")
        # memory: sampled until back within 10 % (or two minutes: then the test says how far)
        while time.monotonic() - began < 120:
            seen.rss_after.append(rss_bytes(proc.pid))
            if seen.rss_after[-1] <= before * 1.10:
                break
            time.sleep(2.0)
        print(f"crowd: {result.summary()}; RSS {before / 2**20:.0f} MB before, "
              f"{seen.rss_with / 2**20:.0f} MB with, {seen.rss_after[-1] / 2**20:.0f} MB after")
        yield seen
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.time_limit(900)
def test_every_handshake_succeeds_and_every_reader_gets_fixes(seen: Seen) -> None:
    result = seen.result
    assert result.handshakes_failed == 0, result.errors[:5]
    assert result.handshakes_ok == CLIENTS
    assert result.readers_with_fixes == CLIENTS - IDLE, (
        f"{CLIENTS - IDLE - result.readers_with_fixes} readers got no fix")
    assert result.healthz_failed == 0, [e for e in result.errors if "healthz" in e][:3]
    assert result.healthz_ms, "/healthz was asked while the crowd was connected"


@pytest.mark.time_limit(900)
def test_non_readers_drop_oldest_counted_and_connections_are_released(seen: Seen) -> None:
    # 300 clients that never read: their queues overflow, and every loss is counted
    assert seen.dropped_after - seen.dropped_before > 0
    assert seen.connections_after == 0, "connections of clients that left are still counted open"
