"""`soar bench crowds`: `/healthz` latency while 200 API clients query a running `soar run`.

The issue (#18.7) measured a `/healthz` median of 4.6 s and a maximum of 56 s under 200
concurrent API clients, with 31 connections dropped. Health is answered ahead of other work
(`soar.web.connections.prioritise`: API requests wait for `http_max_requests` slots, health
never does); this bench shows what that buys, beside the same process's `/healthz` with no
clients at all (the baseline). The fault test `tests/faults/test_crowds_http.py` drives the
same crowd and asserts what is not timing: every request answered, no 5xx.

The soar under test is a real `python -m soar run` fed the real SBS capture over TCP, on the
database the bench is given.

May import: soar.hostport
"""

from __future__ import annotations

import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from soar.hostport import free_loopback_port

CLIENTS = 200
#: what a crowd asks for: the flight log of today, every aircraft, the receivers (database work)
API_PATHS = ("/api/flights", "/api/aircraft?bbox=-180,-90,180,90", "/api/receivers")
PROBE_EVERY_S = 0.05
SBS_SAMPLE = "sbs/adsbhub-sbs-sample-20260224.txt.gz"


@dataclass
class CrowdResult:
    statuses: Counter[int] = field(default_factory=Counter)
    #: requests that got no complete answer (reset, closed early, body shorter than announced)
    dropped: list[str] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + len(self.dropped)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


async def http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    """One HTTP/1.0 GET on a connection of its own; (status, body). Raises ValueError when
    the answer is cut short."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: soar\r\n\r\n".encode())
        answer = bytearray()
        while chunk := await stream.receive_some(65536):
            answer += chunk
    head, sep, body = bytes(answer).partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no complete head: {bytes(answer[:80])!r}")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and int(value) != len(body):
            raise ValueError(f"{path}: body of {len(body)} bytes, {int(value)} announced")
    return status, body


async def crowd(
    host: str, port: int, *, clients: int = CLIENTS, requests_each: int = 10,
    paths: Sequence[str] = API_PATHS,
) -> CrowdResult:
    """`clients` clients, each making `requests_each` requests one after the other, all at
    once; beside them a prober (a process of its own) times `/healthz` every PROBE_EVERY_S
    until they are done."""
    result = CrowdResult()

    async def client(index: int) -> None:
        for n in range(requests_each):
            path = paths[(index + n) % len(paths)]
            try:
                status, _body = await http_get(host, port, path)
            except (OSError, trio.BrokenResourceError, ValueError) as exc:
                result.dropped.append(f"{path}: {exc!r}")
            else:
                result.statuses[status] += 1

    # The prober is a process of its own: in this one, its timings would include the waits of
    # this event loop, busy with 200 clients' sockets.
    prober = await _start_prober(host, port)
    began = time.perf_counter()
    async with trio.open_nursery() as crowd_nursery:
        for index in range(clients):
            crowd_nursery.start_soon(client, index)
    result.seconds = time.perf_counter() - began
    result.health_ms = await _stop_prober(prober)
    return result


#: /healthz every `interval` s until stdin closes; then the latencies (ms) as a JSON list
_PROBER = """
import json, socket, sys, threading, time
host, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
latencies = []
while not stop.is_set():
    began = time.perf_counter()
    with socket.create_connection((host, port), timeout=60) as conn:
        conn.sendall(b"GET /healthz HTTP/1.0\\r\\n\\r\\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    if answer.startswith(b"HTTP/1.1 200"):
        latencies.append((time.perf_counter() - began) * 1000)
    time.sleep(interval)
print(json.dumps(latencies))
"""


async def probe_alone(host: str, port: int, seconds: float) -> list[float]:
    """`/healthz` latencies with nobody else asking anything (the baseline), by the same prober."""
    prober = await _start_prober(host, port)
    await trio.sleep(seconds)
    return await _stop_prober(prober)


async def _start_prober(host: str, port: int) -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, "-c", _PROBER, host, str(port), str(PROBE_EVERY_S)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)


async def _stop_prober(prober: trio.Process) -> list[float]:
    assert prober.stdin is not None and prober.stdout is not None
    await prober.stdin.aclose()  # the prober's signal to stop and report
    report = bytearray()
    while chunk := await prober.stdout.receive_some(65536):
        report += chunk
    await prober.wait()
    latencies: list[float] = json.loads(report)
    return latencies


# ---- a real soar run, fed the SBS capture ------------------------------------------------------


async def _sbs_feed(lines: list[bytes], stream: trio.SocketStream) -> None:
    """The capture round and round, about 2,000 lines/s."""
    try:
        while True:
            for start in range(0, len(lines), 100):
                await stream.send_all(b"".join(line + b"\r\n" for line in lines[start:start + 100]))
                await trio.sleep(0.05)
    except trio.BrokenResourceError:
        pass


def sbs_lines(data: Path) -> list[bytes]:
    with gzip.open(data / SBS_SAMPLE, "rb") as f:
        return [line.rstrip(b"\r\n") for line in f if line.strip()]


@asynccontextmanager
async def running_soar(
    url: str, data: Path, data_dir: Path, **env_settings: str
) -> AsyncIterator[tuple[str, int]]:
    """`python -m soar run` on `url`, fed the SBS capture; its HTTP (host, port) once ready."""
    lines = sbs_lines(data)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, lambda s: _sbs_feed(lines, s), 0)
        feed_port = listeners[0].socket.getsockname()[1]
        http = ("127.0.0.1", free_loopback_port())
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
        env |= {"SOAR_DATABASE_URL": url, "SOAR_DATA_DIR": str(data_dir),
                "SOAR_HTTP_ADDR": f"{http[0]}:{http[1]}",
                "SOAR_SBS_SERVERS": f"127.0.0.1:{feed_port}", "SOAR_LOG_FORMAT": "json",
                **env_settings}
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = (data_dir.parent / "soar.log").open("wb")
        proc = await trio.lowlevel.open_process([sys.executable, "-m", "soar", "run"], env=env,
                                                stdout=log, stderr=subprocess.STDOUT)
        try:
            with trio.fail_after(120):
                while True:
                    if proc.poll() is not None:
                        raise RuntimeError(f"soar run exited {proc.returncode}; see {log.name}")
                    try:
                        if (await http_get(*http, "/readyz"))[0] == 200:
                            break
                    except (OSError, trio.BrokenResourceError, ValueError):
                        pass
                    await trio.sleep(0.2)
            yield http
        finally:
            proc.terminate()
            with trio.move_on_after(60) as waited:
                await proc.wait()
            if waited.cancelled_caught:
                proc.kill()
                await proc.wait()
            log.close()
            nursery.cancel_scope.cancel()


# ---- the bench ---------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    p50_ms: float
    p99_ms: float
    max_ms: float
    samples: int
    note: str = ""


def run(url: str, data: Path, seconds: float = 20.0) -> list[Row]:
    return trio.run(_run, url, data, seconds)


async def _run(url: str, data: Path, seconds: float) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="soar-bench-crowds-") as tmp:
        async with running_soar(url, data, Path(tmp) / "var") as (host, port):
            alone = await probe_alone(host, port, seconds / 2)
            # requests per client sized so the crowd lasts about `seconds` (measured here)
            began = time.perf_counter()
            await http_get(host, port, API_PATHS[0])
            one_s = max(time.perf_counter() - began, 0.001)
            each = max(3, int(seconds / (one_s * CLIENTS / 8)))
            result = await crowd(host, port, requests_each=each)
    bad = sum(n for status, n in result.statuses.items() if status >= 500)
    return [
        Row("/healthz, no other clients (baseline)", statistics.median(alone),
            percentile(alone, 99), max(alone), len(alone)),
        Row(f"/healthz beside {CLIENTS} API clients", statistics.median(result.health_ms),
            percentile(result.health_ms, 99), max(result.health_ms), len(result.health_ms),
            f"{result.requests} API requests in {result.seconds:.1f} s "
            f"({result.requests / result.seconds:.0f}/s), {bad} 5xx, "
            f"{len(result.dropped)} dropped; target p99 < 250 ms"
            f"{'' if percentile(result.health_ms, 99) < 250 else ' ✗'}"),
    ]


def format_table(rows: Sequence[Row]) -> str:
    lines = ["| case | p50 | p99 | max | samples | |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.case} | {r.p50_ms:.1f} ms | {r.p99_ms:.1f} ms | {r.max_ms:.1f} ms "
                     f"| {r.samples} | {r.note} |")
    return "\n".join(lines)
