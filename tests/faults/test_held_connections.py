"""Held HTTP connections on a real `soar run` fed the real SBS capture over TCP (issue #18.1).

Found by an SRE attack: 3,000 clients that held their connections took 3,000 descriptors for
good; at the descriptor limit `/healthz` timed out, the feed could not reconnect and the process
died. Here 3,000 clients connect and hold (a third after a keep-alive request, the rest silent;
the keep-alive timeout is 600 s so nothing lets them go), the feed connection is then killed
on the feed's side, and soar must reconnect and store fixes again while they are held, and
answer `/healthz` within 1 s (the issue's acceptance bound). With `SOAR_HTTP_MAX_CONNECTIONS`
below the crowd, every connection past it gets `503` and is closed, and the same holds.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from soar.bench.crowds_ws import web_worker_pid
from soar.records import Protocol
from soar.web.connections import PRIORITY_SLOTS
from tests.faults.faultkit import Corpus, fix_count, wait_for
from tests.support import free_port

CROWD = 3000
#: descriptors each process needs: the crowd, and soar's own (pool, spools, 256 reserved)
NEEDED_NOFILE = 8192


@pytest.fixture(scope="module", autouse=True)
def descriptors() -> Iterator[None]:
    """Enough descriptors for the crowd, in this process and the soar it starts (we are root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, NEEDED_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        pytest.skip(f"needs RLIMIT_NOFILE >= {NEEDED_NOFILE} (hard limit {hard}; not root?)")
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@dataclass
class SbsFeed:
    """The SBS capture over TCP, round and round (~2,000 lines/s), until `kill()` ends every
    connection from this side."""

    lines: list[bytes]
    port: int = 0
    connections: int = 0
    _scopes: list[trio.CancelScope] = field(default_factory=list)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        with trio.CancelScope() as scope:
            self._scopes.append(scope)
            try:
                while True:
                    for start in range(0, len(self.lines), 100):
                        await stream.send_all(b"".join(
                            line + b"\r\n" for line in self.lines[start:start + 100]))
                        await trio.sleep(0.05)
            except trio.BrokenResourceError:
                pass
        await trio.aclose_forcefully(stream)

    def kill(self) -> None:
        for scope in self._scopes:
            scope.cancel()


@dataclass
class Soar:
    proc: subprocess.Popen[bytes]
    http: tuple[str, int]
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


#: refusals (503 with Retry-After) this test's own requests got (none: the front door answers
#: /metrics and /healthz on a new connection, slots or not; counted so that a regression shows
#: as its own number). A /readyz 503 while soar starts is not a refusal.
_own_refusals = [0]


async def _get(host: str, port: int, path: str) -> tuple[int, bytes]:
    """One request on a new connection (HTTP/1.0: the server closes after the answer)."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    head = answer.partition(b"\r\n\r\n")[0]
    _own_refusals[0] += status == 503 and b"\r\nRetry-After:" in head
    return status, answer.partition(b"\r\n\r\n")[2]


async def _metric(host: str, port: int, name: str) -> float:
    while True:
        status, body = await _get(host, port, "/metrics")
        if status != 503:  # 503: the priority slots are taken just now (by the crowd)
            break
        await trio.sleep(0.2)
    assert status == 200, body[:200]
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


@asynccontextmanager
async def running_soar(
    tmp_path: Path, db_url: str, feed: SbsFeed, **settings: str
) -> AsyncIterator[Soar]:
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    env |= {"SOAR_DATABASE_URL": db_url, "SOAR_DATA_DIR": str(tmp_path / "var"),
            "SOAR_HTTP_ADDR": f"127.0.0.1:{http_port}", "SOAR_SBS_SERVERS": f"127.0.0.1:{feed.port}",
            "SOAR_LOG_FORMAT": "json", "SOAR_HTTP_KEEP_ALIVE": "600", **settings}
    log = tmp_path / "soar.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "soar", "run"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    soar = Soar(proc, ("127.0.0.1", http_port), log)
    try:
        with trio.fail_after(120):
            while True:
                assert proc.poll() is None, soar.log_tail()
                try:
                    if (await _get(*soar.http, "/readyz"))[0] == 200:
                        break
                except (OSError, trio.BrokenResourceError):
                    pass  # not listening yet, or closed by a start-up that failed (polled above)
                await trio.sleep(0.2)
        yield soar
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                await trio.to_thread.run_sync(proc.wait, 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _crowd(host: str, port: int, request: bytes | None) -> list[trio.SocketStream]:
    """CROWD connections, 100 at a time; each sends `request` and reads the head of its answer.

    With `request=None` the clients send nothing, and each hundred waits until soar counts it
    open: a client's connect completes before the server has accepted it, and a silent one
    whose handshake the kernel dropped (its accept queue full) is left for ever half-open.
    """
    streams: list[trio.SocketStream] = []
    answers: dict[trio.SocketStream, bytes] = {}

    async def one() -> None:
        stream = await trio.open_tcp_stream(host, port)
        streams.append(stream)
        if request is not None:
            await stream.send_all(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = await stream.receive_some(65536)
                assert chunk, f"closed without an answer after {answer[:80]!r}"
                answer += chunk
            answers[stream] = answer

    for _ in range(0, CROWD, 100):
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(one)
        if request is None:
            with trio.fail_after(120):
                while await _metric(host, port, "soar_http_connections") < len(streams):
                    await trio.sleep(0.05)
    _crowd_answers.clear()
    _crowd_answers.update(answers)
    return streams


#: the head of each crowd client's answer (when it sent a request)
_crowd_answers: dict[trio.SocketStream, bytes] = {}


async def _fixes_flow_after_a_feed_kill(soar: Soar, feed: SbsFeed, db_url: str) -> None:
    """Kill the feed's connection from its side; soar reconnects and stores fixes again."""
    connections = feed.connections
    feed.kill()
    await wait_for(lambda: feed.connections > connections, 60, "soar to reconnect to the feed")
    stored = await trio.to_thread.run_sync(fix_count, db_url)
    await wait_for(lambda: fix_count(db_url) > stored, 120,
                   "fixes read after the reconnect to be stored")
    assert soar.proc.poll() is None, soar.log_tail()


def _open_descriptors(pid: int) -> int:
    """Descriptors of soar run `pid` and of its web worker (which holds the HTTP connections)."""
    worker = web_worker_pid(pid)
    count = len(os.listdir(f"/proc/{pid}/fd"))
    try:
        return count + (len(os.listdir(f"/proc/{worker}/fd")) if worker is not None else 0)
    except FileNotFoundError:  # a worker retiring as we looked
        return count


@pytest.mark.time_limit(480)
async def test_3000_held_connections_then_the_feed_reconnects_and_healthz_answers(
    corpus: Corpus, db_url: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    feed = SbsFeed([env.data for env in corpus[Protocol.SBS].envelopes])
    await nursery.start(feed.run)
    async with running_soar(tmp_path, db_url, feed) as soar:
        await wait_for(lambda: fix_count(db_url) > 0, 120, "the first fixes to be stored")
        before = _open_descriptors(soar.proc.pid)
        # silent clients: a client's connect completes before soar has accepted it
        crowd = await _crowd(*soar.http, None)
        try:
            # soar holds every one of them (that is the attack: nothing lets them go)
            assert await _metric(*soar.http, "soar_http_connections") >= CROWD
            assert _open_descriptors(soar.proc.pid) >= CROWD  # about 20 before they came
            await _fixes_flow_after_a_feed_kill(soar, feed, db_url)
            began = time.perf_counter()
            status, _body = await _get(*soar.http, "/healthz")
            took = time.perf_counter() - began
            assert status == 200
            assert took < 1.0, f"/healthz took {took:.2f} s with {CROWD} connections held"
            print(f"/healthz answered in {took * 1000:.0f} ms with {CROWD} connections held")
            assert await _metric(*soar.http, "soar_http_connections_refused_total") == 0
        finally:
            for stream in crowd:
                await trio.aclose_forcefully(stream)
        # the server lets go of the descriptors once the clients have gone
        await wait_for(lambda: _open_descriptors(soar.proc.pid) < before + 50, 60,
                       "soar to close the connections its clients closed")
    nursery.cancel_scope.cancel()


@pytest.mark.time_limit(480)
async def test_past_http_max_connections_503_and_the_feed_and_healthz_still_work(
    corpus: Corpus, db_url: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    limit = 1000
    _own_refusals[0] = 0
    feed = SbsFeed([env.data for env in corpus[Protocol.SBS].envelopes])
    await nursery.start(feed.run)
    async with running_soar(tmp_path, db_url, feed,
                            SOAR_HTTP_MAX_CONNECTIONS=str(limit)) as soar:
        await wait_for(lambda: fix_count(db_url) > 0, 120, "the first fixes to be stored")
        # Each client asks for a page that is not there (404, no database): the ones within
        # the limit get their 404 and keep their connection; the others get 503 and a close.
        crowd = await _crowd(*soar.http, b"GET /held HTTP/1.1\r\nHost: soar\r\n\r\n")
        try:
            refused = CROWD - limit
            statuses = [_crowd_answers[stream].split(b" ", 2)[1] for stream in crowd]
            assert statuses.count(b"404") == limit and statuses.count(b"503") == refused
            for stream in crowd:
                answer = _crowd_answers[stream]
                if answer.startswith(b"HTTP/1.1 503"):
                    assert b"Retry-After: 5" in answer
                    with trio.fail_after(60):  # and closed
                        while await stream.receive_some(65536):
                            pass
            counted = await _metric(*soar.http, "soar_http_connections_refused_total")
            assert counted == refused + _own_refusals[0]
            # the held ones, and refused ones in a priority slot still lingering after their
            # 503 (the front door answers /metrics without taking a slot)
            assert limit <= await _metric(*soar.http, "soar_http_connections") <= (
                limit + PRIORITY_SLOTS)
            await _fixes_flow_after_a_feed_kill(soar, feed, db_url)
            began = time.perf_counter()
            status, _body = await _get(*soar.http, "/healthz")
            took = time.perf_counter() - began
            assert status == 200
            assert took < 1.0, f"/healthz took {took:.2f} s at the connection limit"
            print(f"/healthz answered in {took * 1000:.0f} ms at the connection limit")
        finally:
            for stream in crowd:
                await trio.aclose_forcefully(stream)
    assert '"http.connections_refused"' in soar.log.read_text()
    nursery.cancel_scope.cancel()
