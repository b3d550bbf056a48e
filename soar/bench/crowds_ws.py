"""A crowd of WebSocket clients on a running soar (issue 18.6): handshakes, fixes, /healthz.

    python -m soar.bench.crowds_ws [--clients 1000] [--idle 300] [--api-clients 200]
                                   [--seconds 10] [--warm 60] [--rounds 1] [--json]

starts `soar run` (embedded PostgreSQL under a temporary data dir) fed the real SBS sample
over TCP at `--rate` lines a second, waits for fixes to be stored, then opens `--clients`
WebSocket connections to `/api/live` (at most `--concurrency` handshakes at once), of which
`--idle` never read after their subscription is acknowledged. While they are connected,
`/healthz` is asked every 50 ms on a fresh connection. It reports handshakes that failed,
readers that got fixes, the `/healthz` latency percentiles, the fixes the server dropped from
the non-readers' queues, and the server's RSS before, with and after the crowd. With
`--api-clients N`, N API clients (`soar.bench.crowds.crowd`, two requests each, its own prober
process) come too while the WebSocket crowd is connected: the issue's two crowds at once.
`crowd()` is what the fault test in tests/faults/test_crowds_ws.py uses.

RSS "before" is read after `--warm` seconds of feed (the tracker's state grows while the
capture's aircraft first appear: ~35 MB in the first minute with no client at all), "after"
once the server counts no WebSocket connection and the live hub has had time to collect and
trim what the crowd left (`HUB_TRIM_WAIT_S`).

Readers ask for batched fixes (`{"type":"options","batch":true}`): a browser map does, and one
message per fix to 700 clients would measure this process's WebSocket parser, not soar.

May import: soar.bench.cli, soar.bench.crowds, soar.hostport
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import operator
import os
import socket as stdlib_socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from soar.hostport import free_loopback_port

# The SBS sample is a few snapshots of ADSBHub's whole feed, each sorted by ICAO address:
# European aircraft (3xxxxx, 4xxxxx) come first, US ones (Axxxxx) a third of a snapshot later.
# A map of one region gets fixes in bursts with long gaps; one of each gets them throughout.
#: The readers' map: 3 x 3 squares of each (Ohio; the Rhine between Basel and Stuttgart),
#: ~250 fixes in the whole sample but at least one every 600 lines: each reader has its first
#: fix within seconds, and 700 maps take a batch a second or two, not four.
READER_AREAS = (
    {"north": 42.9, "south": 40.0, "east": -81.1, "west": -84.0},
    {"north": 50.9, "south": 48.0, "east": 8.9, "west": 6.0},
)
#: The non-readers' map: 400 squares (the most one client may take), the southern USA and
#: western Europe, ~35 fixes a second at 300 lines a second: their queues fill in seconds.
IDLE_AREAS = (
    {"north": 35.9, "south": 28.0, "east": -78.1, "west": -98.0},
    {"north": 54.9, "south": 43.0, "east": 17.9, "west": -2.0},
)
#: The non-readers' TCP maximum segment size. Over loopback (MSS 64 KB) Linux grows the
#: server's send buffer to ~3 MB per connection, ~8,000 fixes, before a write blocks: a queue
#: behind it would not fill for many minutes. With the classic 536 bytes and the smallest
#: receive window it holds ~40 KB, ~100 fixes.
IDLE_MSS = 536
#: after the crowd has gone, how long to wait before reading RSS: twice the live hub's
#: TRIM_SETTLE_S (it collects and trims once departures have stopped for that long)
HUB_TRIM_WAIT_S = 10.0
SBS_SAMPLE = Path("sbs") / "adsbhub-sbs-sample-20260224.txt.gz"
Bounds = dict[str, float]


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
    #: seconds each phase took: connect (every handshake settled), ready, fixes (every reader
    #: has one), hold, leave (every client gone from this side)
    seconds: dict[str, float] = field(default_factory=dict)

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
        out["seconds"] = {name: round(value, 1) for name, value in self.seconds.items()}
        return out


def healthz_ms(host: str, port: int, timeout: float = 30.0) -> float:
    """One GET /healthz on a fresh connection, blocking: milliseconds to the end of the answer.

    Blocking, in a thread of its own: asked from the crowd's event loop, the figure would be
    how long that loop (a thousand clients) took to get round to the answer."""
    began = time.perf_counter()
    with stdlib_socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(
            f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, _body = data.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionError("closed before the headers")
    status = int(head.split(b" ", 2)[1])
    if status not in (200, 503):  # 503: not healthy, but answered
        raise ConnectionError(f"/healthz answered {status}")
    return (time.perf_counter() - began) * 1000.0


async def crowd(
    host: str, port: int, *, clients: int = 1000, idle: int = 300,
    areas: Sequence[Bounds] = READER_AREAS, idle_areas: Sequence[Bounds] = IDLE_AREAS,
    concurrency: int = 50,
    ready: Callable[[CrowdResult], Awaitable[None]] | None = None,
    hold: Callable[[CrowdResult], Awaitable[None]] | None = None,
    fixes_timeout: float = 120.0,
) -> CrowdResult:
    """Connect the crowd, non-readers first. The readers subscribe at once, or with `ready`
    only once it has returned (it is awaited when every client is connected: e.g. until the
    non-readers' queues overflow). Then wait until every reader has a fix (or `fixes_timeout`),
    run `hold` (e.g. measure the server) while all are connected, and leave: readers close
    politely, non-readers reset their connection as a dead client does."""
    result = CrowdResult(clients, idle)
    readers_total = clients - idle
    got_fix: set[int] = set()
    everyone_in = trio.Event()
    subscribe = trio.Event()
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

    all_gone = trio.Event()
    gone = [0]

    async def one(client: Callable[[int], Awaitable[None]], index: int) -> None:
        try:
            await client(index)
        finally:
            gone[0] += 1
            if gone[0] == clients:
                all_gone.set()

    async def reader(index: int) -> None:
        ws = None
        try:
            async with limiter:
                ws = await trio_websocket.connect_websocket_url(
                    client_nursery, f"ws://{host}:{port}/api/live", message_queue_size=64)
                await _greeted(ws, batch=True)
        except Exception as exc:
            if ws is not None:
                await trio.aclose_forcefully(ws)
            result.handshakes_failed += 1
            result.errors.append(f"reader {index}: {type(exc).__name__}: {exc}")
            done_connecting()
            return
        result.handshakes_ok += 1
        readers_in[0] += 1
        done_connecting()
        scope = trio.CancelScope()
        reading.append(scope)
        try:
            with scope:
                await subscribe.wait()
                await _subscribe(ws, areas)
                result.subscribed += 1
                while True:
                    message = json.loads(await ws.get_message())
                    if message.get("type") == "fixes":
                        result.fixes_received += len(message["fixes"])
                        note_fix(index)
                    elif message.get("type") == "fix":
                        result.fixes_received += 1
                        note_fix(index)
        except (trio_websocket.ConnectionClosed, ConnectionError, ValueError) as exc:
            result.errors.append(f"reader {index}: {type(exc).__name__}: {exc}")
        finally:
            with trio.move_on_after(10):
                await ws.aclose()

    async def non_reader(index: int) -> None:
        sock = trio.socket.socket()
        try:
            async with limiter:
                # the smallest window and small segments: the server's writes back up after
                # ~100 fixes, as with a stalled phone
                sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 1)
                sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_MAXSEG, IDLE_MSS)
                await sock.connect((host, port))
                stream = trio.SocketStream(sock)
                ws = await trio_websocket.wrap_client_stream(
                    client_nursery, stream, host, "/api/live", message_queue_size=0)
                await _greeted(ws, batch=False)
                await _subscribe(ws, idle_areas)
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

    began = trio.current_time()

    def phase(name: str) -> None:
        nonlocal began
        result.seconds[name] = trio.current_time() - began
        began = trio.current_time()

    if ready is None:
        subscribe.set()
    async with trio.open_nursery() as client_nursery:
        for index in range(idle):
            client_nursery.start_soon(one, non_reader, index)
        for index in range(readers_total):
            client_nursery.start_soon(one, reader, index)
        async with trio.open_nursery() as probes:
            probes.start_soon(_probe_healthz, host, port, result, leave)
            await everyone_in.wait()
            phase("connect")
            if ready is not None:
                await ready(result)
                phase("ready")
                subscribe.set()
            if len(got_fix) >= readers_in[0]:
                all_fixed.set()
            with trio.move_on_after(fixes_timeout):
                await all_fixed.wait()
            phase("fixes")
            if hold is not None:
                await hold(result)
                phase("hold")
            result.readers_with_fixes = len(got_fix)
            leave.set()
            for scope in reading:
                scope.cancel()
        with trio.move_on_after(30):
            await all_gone.wait()
        # what trio_websocket still runs for a non-reader (its reader task waits to hand a
        # message to nobody) ends here
        client_nursery.cancel_scope.cancel()
    phase("leave")
    return result


async def _greeted(ws: trio_websocket.WebSocketConnection, *, batch: bool) -> None:
    status = json.loads(await ws.get_message())
    if status.get("status") != "connected":
        raise ConnectionError(f"connection_status {status}")
    if batch:
        await ws.send_message(json.dumps({"type": "options", "batch": True}))
        reply = json.loads(await ws.get_message())
        if reply.get("type") != "options":
            raise ConnectionError(f"options refused: {reply}")


async def _subscribe(ws: trio_websocket.WebSocketConnection, areas: Sequence[Bounds]) -> None:
    for area in areas:
        await ws.send_message(json.dumps({"type": "area_bulk", "action": "subscribe",
                                          "bounds": area}))
        # fixes may come before the reply once another client holds the squares
        while True:
            reply = json.loads(await ws.get_message())
            if reply.get("type") == "subscribed":
                break
            if reply.get("type") == "error":
                raise ConnectionError(f"subscription refused: {reply}")


async def _probe_healthz(host: str, port: int, result: CrowdResult, leave: trio.Event) -> None:
    """Ask /healthz every 50 ms from a thread until `leave` is set."""
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            try:
                result.healthz_ms.append(healthz_ms(host, port))
            except (OSError, ConnectionError, ValueError, IndexError) as exc:
                result.healthz_failed += 1
                result.errors.append(f"/healthz: {type(exc).__name__}: {exc}")
            stop.wait(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.to_thread.run_sync, probe,
                                   limiter=trio.CapacityLimiter(1)))
        try:
            await leave.wait()
        finally:
            stop.set()


async def _api_crowd(out: list[Any], port: int, clients: int) -> None:
    from soar.bench import crowds as api_crowds

    out.append(await api_crowds.crowd("127.0.0.1", port, clients=clients, requests_each=2))


# -- the server under test -------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def web_worker_pid(parent: int) -> int | None:
    """The web worker child of `soar run` process `parent` (None: it has none now)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == parent and b"soar.web.worker" in cmdline:
            return int(stat.parent.name)
    return None


def soar_rss(parent: int) -> tuple[int, int]:
    """RSS of `soar run` itself and of its web worker (0 without one)."""
    worker = web_worker_pid(parent)
    try:
        worker_rss = rss_bytes(worker) if worker is not None else 0
    except (OSError, RuntimeError):
        worker_rss = 0  # retiring as we looked
    return rss_bytes(parent), worker_rss


RETIRED = 'soar_web_worker_exits_total{reason="retired"}'


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


def soar_env(data_dir: Path, http_port: int, feed_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    env |= {"SOAR_DATA_DIR": str(data_dir), "SOAR_HTTP_ADDR": f"127.0.0.1:{http_port}",
            "SOAR_SBS_SERVERS": f"127.0.0.1:{feed_port}", "SOAR_LOG_FORMAT": "json",
            "SOAR_LOG_LEVEL": "warning"}
    env |= extra
    return env


def metric(port: int, name: str) -> float:
    """One unlabelled metric of /metrics, this process's and its web worker's together (the
    worker's samples are labelled worker="web"); 0 when absent."""
    import urllib.request

    ours, worker = name + " ", name + '{worker="web"} '
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return sum(float(line.split()[-1]) for line in response.read().decode().splitlines()
                   if line.startswith((ours, worker)))


async def wait_metric(port: int, name: str, done: Callable[[float], bool],
                      timeout: float) -> float:
    """Read `name` from /metrics until `done(value)` or `timeout` seconds; the last value."""
    with trio.move_on_after(timeout):
        while True:
            value = await trio.to_thread.run_sync(metric, port, name)
            if done(value):
                return value
            await trio.sleep(0.2)  # how often to look, not what the wait depends on
    return await trio.to_thread.run_sync(metric, port, name)


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


def stop_soar(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM, as an operator stops soar; SIGKILL if it has not ended `timeout` s later."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def bench_soar(rate: float, prefix: str, *, no_worker: bool
               ) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A `soar run` (and its HTTP port) fed the SBS capture at `rate` lines a second, once it
    has committed rows; it and its feed are stopped on leaving."""
    from soar.bench.cli import testdata_dir

    stop = threading.Event()
    feed = feed_server(sbs_lines(testdata_dir()), rate, stop)
    port = free_loopback_port()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        extra = {"SOAR_WEB_WORKER": "false"} if no_worker else {}
        proc = subprocess.Popen([sys.executable, "-m", "soar", "run"],
                                env=soar_env(Path(tmp) / "var", port, feed, **extra),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_started(proc, port, 180)
            yield proc, port
        finally:
            stop.set()
            stop_soar(proc)


def _control_run(args: argparse.Namespace, offsets: list[float]) -> list[tuple[int, int]]:
    """A second `soar run` like the first, with no client: RSS after the same warm-up and at
    each of `offsets` seconds after it."""
    with bench_soar(args.rate, "soar-bench-control-", no_worker=args.no_worker) as (proc, _port):
        time.sleep(args.warm)
        seen = [soar_rss(proc.pid)]
        began = time.monotonic()
        for offset in offsets:
            time.sleep(max(0.0, began + offset - time.monotonic()))
            seen.append(soar_rss(proc.pid))
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soar.bench.crowds_ws")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--rate", type=float, default=1000.0, help="SBS lines per second")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="how long the crowd stays once every reader has a fix")
    parser.add_argument("--api-clients", type=int, default=0,
                        help="API clients beside the WebSocket crowd (the issue: 200)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="crowds one after the other (RSS after each: does a second grow it?)")
    parser.add_argument("--warm", type=float, default=60.0,
                        help="seconds of feed before RSS 'before' is read")
    parser.add_argument("--no-worker", action="store_true",
                        help="serve HTTP in soar's own process (SOAR_WEB_WORKER=false)")
    parser.add_argument("--control", action="store_true",
                        help="then run soar again with no client, reading RSS at the same moments"
                             " (what the tracker grew by itself: its per-aircraft fixes fill for"
                             " many minutes)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from soar.bench import crowds as api_crowds

    with bench_soar(args.rate, "soar-bench-crowds-", no_worker=args.no_worker) as (proc, port):
        time.sleep(args.warm)
        before_each = soar_rss(proc.pid)
        before = sum(before_each)
        began = time.monotonic()
        offsets: list[float] = []  # when each "after" was read, from "before"
        dropped_before = metric(port, "soar_websocket_dropped_total")
        during: list[int] = []
        api: list[api_crowds.CrowdResult] = []

        async def hold(_result: CrowdResult) -> None:
            during.append(sum(soar_rss(proc.pid)))
            async with trio.open_nursery() as nursery:
                if args.api_clients:
                    nursery.start_soon(_api_crowd, api, port, args.api_clients)
                await trio.sleep(args.seconds)
            during.append(sum(soar_rss(proc.pid)))

        afters: list[tuple[int, int]] = []

        async def come_and_go() -> CrowdResult:
            for _round in range(args.rounds):
                retired = metric(port, RETIRED)
                result = await crowd("127.0.0.1", port, clients=args.clients,
                                     idle=args.idle, hold=hold)
                await wait_metric(port, "soar_websocket_connections", lambda n: n == 0, 120)
                await trio.sleep(HUB_TRIM_WAIT_S)
                if not args.no_worker:  # its successor up (if it grew enough to retire)
                    await wait_metric(port, RETIRED, partial(operator.lt, retired), 30)
                    await wait_metric(port, "soar_web_worker_up", lambda n: n == 1, 30)
                afters.append(soar_rss(proc.pid))
                offsets.append(time.monotonic() - began)
            return result

        result = trio.run(come_and_go)
        after = sum(afters[-1])
        dropped = metric(port, "soar_websocket_dropped_total") - dropped_before
        retired_workers = metric(port, RETIRED)
    out = result.summary() | {"dropped_fixes": int(dropped),
                              "rss_before_mb": round(before / 2**20, 1),
                              "rss_with_crowd_mb": round(max(during or [0]) / 2**20, 1),
                              "rss_after_mb": round(after / 2**20, 1),
                              "rss_after_vs_before": round(after / before, 3),
                              "rss_after_each_round_mb": [round(sum(a) / 2**20, 1) for a in afters],
                              "rss_soar_before_after_mb": [round(before_each[0] / 2**20, 1),
                                                           round(afters[-1][0] / 2**20, 1)],
                              "rss_worker_before_after_mb": [round(before_each[1] / 2**20, 1),
                                                             round(afters[-1][1] / 2**20, 1)],
                              "worker_retired": int(retired_workers)}
    if args.control:
        control = _control_run(args, offsets)
        out |= {"control_rss_soar_before_after_mb": [round(control[0][0] / 2**20, 1),
                                                     round(control[-1][0] / 2**20, 1)],
                "control_rss_before_after_mb": [round(sum(control[0]) / 2**20, 1),
                                                round(sum(control[-1]) / 2**20, 1)]}
        grown = (after - before) - (sum(control[-1]) - sum(control[0]))
        soar_grown = ((afters[-1][0] - before_each[0]) - (control[-1][0] - control[0][0]))
        out |= {"crowd_left_behind_mb": round(grown / 2**20, 1),
                "crowd_left_behind_vs_before": round(grown / before, 3),
                "crowd_left_in_soar_mb": round(soar_grown / 2**20, 1)}
    for api_result in api:
        out |= {"api_requests": dict(api_result.statuses), "api_dropped": len(api_result.dropped),
                "api_seconds": round(api_result.seconds, 1),
                "api_prober_healthz_p50_ms": round(api_crowds.percentile(api_result.health_ms, 50), 1),
                "api_prober_healthz_p99_ms": round(api_crowds.percentile(api_result.health_ms, 99), 1),
                "api_prober_healthz_max_ms": round(max(api_result.health_ms, default=0.0), 1)}
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:>22}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
