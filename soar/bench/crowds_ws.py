"""A crowd of WebSocket clients on a running soar (issue 18.6): handshakes, fixes, /healthz.

    python -m soar.bench.crowds_ws [--clients 1000] [--idle 300] [--seconds 20] [--json]

starts `soar run` (embedded PostgreSQL under a temporary data dir) fed the real SBS sample
over TCP at `--rate` lines a second, waits for fixes to be stored, then opens `--clients`
WebSocket connections to `/api/live` (at most `--concurrency` handshakes at once), of which
`--idle` never read after their subscription is acknowledged. While they are connected,
`/healthz` is asked every 50 ms on a fresh connection. It reports handshakes that failed,
readers that got fixes, the `/healthz` latency percentiles, and the server's RSS before, with
and after the crowd. `crowd()` is what the fault test in tests/faults/test_crowds_ws.py uses.

Readers ask for batched fixes (`{"type":"options","batch":true}`): a browser map does, and one
message per fix to 700 clients would measure this process's WebSocket parser, not soar.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket as stdlib_socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio_websocket

#: A 4 x 4 degree box of the SBS sample's busiest region (south-eastern USA).
DEFAULT_AREA = {"north": 37.0, "south": 33.0, "east": -83.0, "west": -87.0}
SBS_SAMPLE = Path("sbs") / "adsbhub-sbs-sample-20260224.txt.gz"


@dataclass
class CrowdResult:
    clients: int
    idle: int
    handshakes_ok: int = 0
    handshakes_failed: int = 0
    subscribed: int = 0
    #: readers that received at least one fix while the crowd was connected
    readers_with_fixes: int = 0
    fixes_received: int = 0
    healthz_ms: list[float] = field(default_factory=list)
    healthz_failed: int = 0
    errors: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        if not self.healthz_ms:
            return None
        ordered = sorted(self.healthz_ms)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("healthz_ms", "errors")}
        out["healthz_probes"] = len(self.healthz_ms)
        for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
            value = self.percentile(q)
            out[f"healthz_{name}_ms"] = None if value is None else round(value, 1)
        out["errors"] = self.errors[:5]
        return out


async def healthz_ms(host: str, port: int, timeout: float = 30.0) -> float:
    """One GET /healthz on a fresh connection: milliseconds to the end of the answer."""
    began = time.perf_counter()
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(
                f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise ConnectionError("closed before the headers")
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            while length is not None and len(body) < length:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                body += chunk
    if status not in (200, 503):  # 503: not healthy, but answered
        raise ConnectionError(f"/healthz answered {status}")
    return (time.perf_counter() - began) * 1000.0


async def crowd(
    host: str, port: int, *, clients: int = 1000, idle: int = 300,
    area: dict[str, float] | None = None, concurrency: int = 50,
    hold: Callable[[CrowdResult], Awaitable[None]] | None = None,
    fixes_timeout: float = 120.0,
) -> CrowdResult:
    """Connect the crowd, wait until every reader has a fix (or `fixes_timeout`), run `hold`
    (e.g. measure the server) while all are connected, then leave: readers close politely,
    non-readers reset their connection as a dead client does."""
    area = area or DEFAULT_AREA
    result = CrowdResult(clients, idle)
    readers_total = clients - idle
    got_fix: set[int] = set()
    everyone_in = trio.Event()
    leave = trio.Event()
    settled = [0]  # clients whose handshake succeeded or failed
    limiter = trio.CapacityLimiter(concurrency)
    reading: list[trio.CancelScope] = []
    readers_in = [0]

    all_fixed = trio.Event()

    def note_fix(index: int) -> None:
        got_fix.add(index)
        if everyone_in.is_set() and len(got_fix) >= readers_in[0]:
            all_fixed.set()

    def done_connecting() -> None:
        settled[0] += 1
        if settled[0] == clients:
            everyone_in.set()

    async def reader(index: int) -> None:
        ws = None
        try:
            async with limiter:
                ws = await trio_websocket.connect_websocket_url(
                    client_nursery, f"ws://{host}:{port}/api/live", message_queue_size=64)
                await _subscribe(ws, area, batch=True)
        except Exception as exc:
            if ws is not None:
                await trio.aclose_forcefully(ws)
            result.handshakes_failed += 1
            result.errors.append(f"reader {index}: {type(exc).__name__}: {exc}")
            done_connecting()
            return
        result.handshakes_ok += 1
        result.subscribed += 1
        readers_in[0] += 1
        done_connecting()
        scope = trio.CancelScope()
        reading.append(scope)
        try:
            with scope:
                while True:
                    message = json.loads(await ws.get_message())
                    if message.get("type") == "fixes":
                        result.fixes_received += len(message["fixes"])
                        note_fix(index)
                    elif message.get("type") == "fix":
                        result.fixes_received += 1
                        note_fix(index)
        except trio_websocket.ConnectionClosed as exc:
            result.errors.append(f"reader {index} closed by the server: {exc}")
        finally:
            with trio.move_on_after(10):
                await ws.aclose()

    async def non_reader(index: int) -> None:
        sock = trio.socket.socket()
        try:
            async with limiter:
                # a small window: the server's writes back up at once, as with a stalled phone
                sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
                await sock.connect((host, port))
                stream = trio.SocketStream(sock)
                ws = await trio_websocket.wrap_client_stream(
                    client_nursery, stream, host, "/api/live", message_queue_size=0)
                await _subscribe(ws, area, batch=False)
        except Exception as exc:
            sock.close()
            result.handshakes_failed += 1
            result.errors.append(f"idle {index}: {type(exc).__name__}: {exc}")
            done_connecting()
            return
        result.handshakes_ok += 1
        result.subscribed += 1
        done_connecting()
        await leave.wait()
        await trio.aclose_forcefully(stream)  # a reset, as from a client that vanished

    async with trio.open_nursery() as client_nursery:
        for index in range(idle):
            client_nursery.start_soon(non_reader, index)
        for index in range(readers_total):
            client_nursery.start_soon(reader, index)
        async with trio.open_nursery() as probes:
            probes.start_soon(_probe_healthz, host, port, result, leave)
            await everyone_in.wait()
            if len(got_fix) >= readers_in[0]:
                all_fixed.set()
            with trio.move_on_after(fixes_timeout):
                await all_fixed.wait()
            if hold is not None:
                await hold(result)
            result.readers_with_fixes = len(got_fix)
            leave.set()
            for scope in reading:
                scope.cancel()
        client_nursery.cancel_scope.deadline = trio.current_time() + 30
    return result


async def _subscribe(ws: trio_websocket.WebSocketConnection, area: dict[str, float],
                     *, batch: bool) -> None:
    status = json.loads(await ws.get_message())
    if status.get("status") != "connected":
        raise ConnectionError(f"connection_status {status}")
    if batch:
        await ws.send_message(json.dumps({"type": "options", "batch": True}))
        reply = json.loads(await ws.get_message())
        if reply.get("type") != "options":
            raise ConnectionError(f"options refused: {reply}")
    await ws.send_message(json.dumps({"type": "area_bulk", "action": "subscribe",
                                      "bounds": area}))
    # fixes may come before the reply once another client holds the squares
    while True:
        reply = json.loads(await ws.get_message())
        if reply.get("type") == "subscribed":
            return
        if reply.get("type") == "error":
            raise ConnectionError(f"subscription refused: {reply}")


async def _probe_healthz(host: str, port: int, result: CrowdResult, leave: trio.Event) -> None:
    while not leave.is_set():
        try:
            result.healthz_ms.append(await healthz_ms(host, port))
        except (OSError, ConnectionError, trio.TooSlowError, ValueError, IndexError) as exc:
            result.healthz_failed += 1
            result.errors.append(f"/healthz: {type(exc).__name__}: {exc}")
        await trio.sleep(0.05)


# -- the server under test -------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def feed_server(lines: list[bytes], rate: float, stop: threading.Event) -> int:
    """A plain-thread TCP feed on 127.0.0.1 sending `lines` round and round at `rate` a second;
    its port."""
    server = stdlib_socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    step = max(1, int(rate / 10))

    def serve() -> None:
        with server:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    try:
                        while not stop.is_set():
                            for start in range(0, len(lines), step):
                                if stop.is_set():
                                    return
                                conn.sendall(b"".join(lines[start:start + step]))
                                time.sleep(0.1)
                    except OSError:
                        pass

    threading.Thread(target=serve, daemon=True, name="crowd-feed").start()
    return int(server.getsockname()[1])


def sbs_lines(testdata: Path) -> list[bytes]:
    import gzip

    with gzip.open(testdata / SBS_SAMPLE, "rb") as f:
        return [line.rstrip(b"\r\n") + b"\r\n" for line in f if line.strip()]


def free_port() -> int:
    with stdlib_socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def soar_env(data_dir: Path, http_port: int, feed_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    env |= {"SOAR_DATA_DIR": str(data_dir), "SOAR_HTTP_ADDR": f"127.0.0.1:{http_port}",
            "SOAR_SBS_SERVERS": f"127.0.0.1:{feed_port}", "SOAR_LOG_FORMAT": "json",
            "SOAR_LOG_LEVEL": "warning"}
    env |= extra
    return env


def metric(port: int, name: str) -> float:
    """One unlabelled sample of /metrics (0 when absent)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def wait_started(proc: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    """Until `soar run` has committed rows from the feed (RuntimeError if it exits or not in
    `timeout` seconds)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"soar run exited with {proc.returncode}")
        try:
            if committed_rows(port) > 0:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("soar run stored nothing in time")


def committed_rows(port: int) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return sum(float(line.split()[-1]) for line in response.read().decode().splitlines()
                   if line.startswith("soar_store_rows_committed_total{"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soar.bench.crowds_ws")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--rate", type=float, default=1000.0, help="SBS lines per second")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="how long the crowd stays once every reader has a fix")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from soar.bench.cli import testdata_dir

    stop = threading.Event()
    feed = feed_server(sbs_lines(testdata_dir()), args.rate, stop)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="soar-bench-crowds-") as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "soar", "run"],
                                env=soar_env(Path(tmp) / "var", port, feed),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_started(proc, port, 180)
            before = rss_bytes(proc.pid)
            during: list[int] = []

            async def hold(_result: CrowdResult) -> None:
                during.append(rss_bytes(proc.pid))
                await trio.sleep(args.seconds)
                during.append(rss_bytes(proc.pid))

            result = trio.run(lambda: crowd("127.0.0.1", port, clients=args.clients,
                                            idle=args.idle, hold=hold))
            after = rss_bytes(proc.pid)
        finally:
            stop.set()
            proc.terminate()
            proc.wait(60)
    out = result.summary() | {"rss_before_mb": round(before / 2**20, 1),
                              "rss_with_crowd_mb": round(max(during or [0]) / 2**20, 1),
                              "rss_after_mb": round(after / 2**20, 1)}
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:>22}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
