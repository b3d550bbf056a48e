"""A WebSocket client that stops reading: its queue drops (counted), the shards are not slowed
and every fix is still committed."""

from __future__ import annotations

import json
import os
import signal
import socket as stdlib_socket
import subprocess
import sys
import threading
import time
import urllib.request
from functools import partial
from pathlib import Path

import pytest
import trio
import trio_websocket
from hypercorn.config import Config
from hypercorn.trio import serve

from soar.ingest.tcp import EnvelopeSink
from soar.pipeline import Pipeline, SourceSpec
from soar.records import Protocol
from soar.replay import CaptureSource
from soar.supervisor import RestartPolicy
from soar.web.app import WebContext, create_app
from soar.web.live import WS_DROPPED, LiveHub
from tests.faults.faultkit import (
    Corpus,
    Reference,
    assert_same_as_reference,
    fault_settings,
    stored,
    wait_for,
)
from tests.support import free_port

#: 20 x 20 squares (the most one client may follow) over the busiest part of the SBS sample
AREA = {"north": 45, "south": 25, "east": -75, "west": -95}
QUEUE = 200


async def _serve(
    nursery: trio.Nursery, hub: LiveHub, stop: trio.Event | None = None,
    stopped: trio.Event | None = None,
) -> tuple[str, int]:
    """The web app on 127.0.0.1:0, as `soar run` serves it (graceful_timeout 5 s)."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 5.0

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(create_app(WebContext(live=hub)), config,
                    shutdown_trigger=trio.sleep_forever if stop is None else stop.wait,
                    task_status=task_status)
        if stopped is not None:
            stopped.set()

    binds: list[str] = await nursery.start(run)
    host, port = binds[0].split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


async def _stuck_client(nursery: trio.Nursery, host: str, port: int) -> trio.SocketStream:
    """Connects, subscribes to AREA, and from then on never reads (tiny receive buffer)."""
    raw = trio.socket.socket()
    raw.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
    await raw.connect((host, port))
    stream = trio.SocketStream(raw)
    ws = await trio_websocket.wrap_client_stream(
        nursery, stream, host, "/api/live", message_queue_size=0
    )
    status = json.loads(await ws.get_message())
    assert status["status"] == "connected"
    await ws.send_message(json.dumps({"type": "area_bulk", "action": "subscribe", "bounds": AREA}))
    assert json.loads(await ws.get_message())["type"] == "subscribed"
    return stream


async def test_websocket_client_that_stops_reading_slows_nothing(
    corpus: Corpus, reference: Reference, db_url: str, tmp_path: Path
) -> None:
    settings = fault_settings(tmp_path / "var")
    capture = corpus[Protocol.SBS]
    hub = LiveHub(settings.live_addr, client_queue_size=QUEUE)
    dropped_before = WS_DROPPED._value.get()
    replay = CaptureSource(capture.path)

    async def gated(sink: EnvelopeSink) -> None:
        # fixes flow only once the hub hears the publisher, so the client really gets them
        await wait_for(lambda: hub.connected, 20, "the live hub to reach the publisher")
        await replay.run(sink)

    pipeline = Pipeline(
        settings, db_url,
        sources=[SourceSpec("replay-gated", Protocol.SBS, gated, RestartPolicy.TEMPORARY)],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        host, port = await _serve(nursery, hub)
        stuck = await _stuck_client(nursery, host, port)
        [client] = [c for c in hub._clients if c.squares]
        await pipeline.open()
        began = time.perf_counter()
        try:
            await pipeline.run()
        finally:
            await pipeline.close()
        elapsed = time.perf_counter() - began
        # the publisher's last flush reaches the hub: the stuck client's queue fills to its bound
        await wait_for(lambda: len(client.queue) >= QUEUE, 60, "the stuck client's queue to fill")
        queued = len(client.queue)
        # The client's connection goes the way a dead client's does: reset, not closed politely.
        await trio.aclose_forcefully(stuck)
        nursery.cancel_scope.cancel()
    assert hub.received_fixes > 0
    assert client.queue.dropped > 0, "the client never fell behind: the test tested nothing"
    assert queued == QUEUE, "the stuck client's queue is full, and bounded"
    assert WS_DROPPED._value.get() - dropped_before >= client.queue.dropped
    assert pipeline.live.dropped == 0, "the publisher never fell behind either"
    # Not slowed: a stuck client that held the shards back would never let the replay finish,
    # and the publisher dropped nothing. How long it took is for `make bench`, not a test.
    fault_free = reference.seconds[Protocol.SBS]
    print(f"replay {elapsed:.1f} s with a stuck client, {fault_free:.1f} s fault-free; "
          f"{client.queue.dropped} messages dropped for it")
    assert_same_as_reference(stored(db_url), reference, [Protocol.SBS])


def _ws_dropped(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return any(line.startswith("soar_websocket_dropped_total ") and float(line.split()[1]) > 0
               for line in text.splitlines())


def _sbs_feed_server(lines: list[bytes], stop: threading.Event) -> int:
    """A plain-thread SBS feed on 127.0.0.1 that sends the capture over and over."""
    server = stdlib_socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)

    def serve_forever() -> None:
        with server:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    try:
                        while not stop.is_set():
                            conn.sendall(b"\r\n".join(lines) + b"\r\n")
                            time.sleep(10.0)  # ~4k lines/s: well within capacity
                    except OSError:
                        pass

    threading.Thread(target=serve_forever, daemon=True).start()
    return int(server.getsockname()[1])


@pytest.mark.time_limit(480)
async def test_soar_run_exits_on_sigterm_despite_a_websocket_client_that_stopped_reading(
    corpus: Corpus, tmp_path: Path, db_url: str
) -> None:
    """hypercorn shields socket writes from cancellation, so a client that stopped reading
    would hold the web server open for ever; `soar run` must still exit, cleanly and in time."""
    lines = [env.data for env in corpus[Protocol.SBS].envelopes]
    stop_feed = threading.Event()
    feed_port = _sbs_feed_server(lines, stop_feed)
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    env |= {"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path / "var"),
            "SOAR_HTTP_ADDR": f"127.0.0.1:{http_port}", "SOAR_SBS_SERVERS": f"127.0.0.1:{feed_port}",
            "SOAR_LOG_FORMAT": "json",
            # the point is an exit at all, not its speed: a busy machine (two test workers
            # beside other jobs) took over 10 s to drain the feed's backlog
            "SOAR_SHUTDOWN_DEADLINE": "30"}
    log_path = tmp_path / "soar.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "soar", "run"], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(300):
                try:
                    stuck = await _stuck_client(nursery, "127.0.0.1", http_port)
                    break
                except OSError:
                    await trio.sleep(0.1)
            else:
                raise AssertionError("soar run never served /api/live")
            # fixes pile up behind the client that does not read, until its queue overflows
            # (the kernel's socket buffers take megabytes first: minutes on a busy machine)
            await wait_for(partial(_ws_dropped, http_port), 300,
                           "soar run to drop fixes for the client that does not read")
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            while proc.poll() is None and time.monotonic() - began < 60:
                await trio.sleep(0.1)
            await trio.aclose_forcefully(stuck)
            nursery.cancel_scope.cancel()
        # exit 0: drained within SOAR_SHUTDOWN_DEADLINE (it exits 1 past it), web stuck or not
        assert proc.returncode == 0, log_path.read_text()[-3000:]
    finally:
        stop_feed.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
