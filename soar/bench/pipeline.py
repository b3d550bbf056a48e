"""End-to-end benchmark: a real TCP feed → the real source client → decode → shards → committed.

For each feed (OGN, Beast, SBS) two runs, each in fresh processes on this machine:

- **throughput**: the feed server sends as fast as the socket takes it. The source hands its
  envelopes to a BLOCK envelope edge (`block_envelopes`, no spool), so a full pipeline pushes back through
  TCP instead of spilling to disk (with the spool, a faster-than-capacity feed would only
  measure how fast the disk spool fills). Rate = messages decoded / time from the first
  connection until `Pipeline.drain()` returned, i.e. until every fix they made was committed.
- **paced**: the feed server sends at half the rate the throughput run just measured, so
  the latencies are those of a pipeline at half its capacity on *this* machine, whatever its
  speed (a fixed rate would be idle on a fast machine and saturated on a slow one). Same sink:
  were the pipeline slower than that, the server falls behind, and the achieved rate is
  reported. Receive→commit latency comes from `Pipeline.commit_hooks`, receive→WebSocket from
  WebSocket clients on the real web app (`/api/live`, hypercorn, `LiveHub`) following every
  1x1 degree square the feed's positions fall in.

Processes (all on the same 2 cores, so they compete for CPU, as PostgreSQL does):

    orchestrator (this module's `run`, baselines) ── spawns ─┬─ feed server (plain sockets)
                                                             ├─ soar (Pipeline + web + hub): measured
                                                             └─ WebSocket clients (trio-websocket)

The feed server and the WebSocket clients are separate processes so that their CPU is not
charged to soar (CPU per message = soar's process CPU time, all its threads, / messages; peak
RSS = soar's `ru_maxrss`). Inputs are the real captures looped with shifted aircraft
addresses: OGN and Beast carry one aircraft each, copied to `AIRCRAFT` addresses (Mode S
parity recomputed); SBS's 6,827 aircraft are copied twice. Baselines run in the orchestrator
in the same run, on the same generated messages: aprslib alone, pyModeS.decode alone, a plain
split, and a raw binary COPY of exactly the rows the pipeline committed. Each figure is reported
first as its ratio to that baseline (steady across machines and load), then in absolute terms.

May import: soar.config, soar.ingest, soar.log, soar.overflow, soar.pipeline, soar.protocols,
soar.records, soar.runtime, soar.store, soar.supervisor, soar.topology, soar.web
"""

from __future__ import annotations

import contextlib
import functools
import gc
import gzip
import itertools
import json
import math
import multiprocessing as mp
import os
import queue
import socket
import sys
import tempfile
import time
import traceback
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soar.pipeline import Pipeline

OGN_TRACE = Path("ogn") / "soar-flight-descended-out-of-range-then-took-off.txt"
SBS_SAMPLE = Path("sbs") / "adsbhub-sbs-sample-20260224.txt.gz"
ADSB_SAMPLE = Path("adsb") / "pymodes-sample_data_adsb.csv"

FEEDS = ("ogn", "beast", "sbs")
#: targets of issue #8 on the 2-core machine, messages/s sustained (absolute: about the machine)
TARGETS = {"ogn": 10_000.0, "beast": 20_000.0, "sbs": 20_000.0}
UNITS = {"ogn": "lines", "beast": "frames", "sbs": "lines"}
AIRCRAFT = 10_000
COMMIT_P99_TARGET_MS = 1000.0
WS_P99_TARGET_MS = 250.0
RSS_TARGET_MIB = 1024.0
#: squares one WebSocket connection may follow (soar.web.live.MAX_SQUARES_PER_CLIENT)
SQUARES_PER_CLIENT = 400
_MLAT_MASK = (1 << 48) - 1
_SEND_CHUNK = 64 * 1024


# ---------------------------------------------------------------------------------------------
# latency histogram: constant memory whatever the run length (it lives in the measured process)


class LatencyHistogram:
    """Log-scale buckets 1 % wide from 1 µs; quantiles to within 1 %."""

    _STEP = math.log(1.01)
    _BUCKETS = 2100  # 1.01 ** 2100 µs ≈ 1.2e9 µs: anything longer lands in the last one

    def __init__(self) -> None:
        self.counts = array("Q", bytes(8 * self._BUCKETS))
        self.count = 0
        self.negative = 0  # clock steps between processes: counted, kept out of the quantiles

    def add(self, micros: float) -> None:
        if micros < 0:
            self.negative += 1
            return
        index = int(math.log(micros + 1) / self._STEP)
        self.counts[min(index, self._BUCKETS - 1)] += 1
        self.count += 1

    def quantile_ms(self, q: float) -> float | None:
        if self.count == 0:
            return None
        wanted = q * self.count
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= wanted and n:
                return (math.exp((index + 1) * self._STEP) - 1) / 1000
        return None

    def state(self) -> tuple[list[int], int, int]:
        return list(self.counts), self.count, self.negative

    @classmethod
    def of(cls, state: tuple[list[int], int, int]) -> LatencyHistogram:
        hist = cls()
        hist.counts = array("Q", state[0])
        hist.count, hist.negative = state[1], state[2]
        return hist


# ---------------------------------------------------------------------------------------------
# the feeds: real captures, looped, with shifted addresses


def _ogn_templates(testdata: Path) -> tuple[list[list[bytes]], int]:
    """The trace's lines split around their aircraft address, and that address."""
    templates: list[list[bytes]] = []
    address = b""
    for raw in (testdata / OGN_TRACE).read_bytes().splitlines():
        _time, _sep, line = raw.partition(b" ")
        # the capture's logging doubled one backslash; the wire had one
        line = line.replace(b"\\\\", b"\\")
        address = line[3:9]  # "ICA48683E>..." — the same six hex digits are in the id field
        templates.append(line.split(address))
    return templates, int(address, 16)


def ogn_messages(testdata: Path, aircraft: int = AIRCRAFT) -> Iterator[bytes]:
    """The OGN trace as `aircraft` aircraft, line by line across all of them, for ever; each
    beacon's own `hhmmss` is the second it is generated (sent), as a live feed's would be:
    soar tracks on beacon times, and the trace's own would be hours off (or repeat)."""
    templates, base = _ogn_templates(testdata)
    addresses = [b"%06X" % (base ^ k) for k in range(aircraft)]
    stamped = [(p[0], *p[1].split(b":/", 1), *p[2:]) for p in templates]
    while True:
        for before, head, body, *rest in stamped:
            now = time.strftime("%H%M%S", time.gmtime()).encode()
            parts = [before, head + b":/" + now + body[6:], *rest]
            for address in addresses:
                yield address.join(parts) + b"\r\n"


def _adsb_sample(testdata: Path) -> list[tuple[int, bytes]]:
    import csv

    with (testdata / ADSB_SAMPLE).open(encoding="utf-8-sig", newline="") as f:
        return [(int(float(row[0]) * 1_000_000), bytes.fromhex(row[1])) for row in csv.reader(f)]


def _parity_deltas(aircraft: int) -> list[bytes]:
    """For DF17/18, the parity change that goes with XOR-ing `k` into the address (CRC is linear)."""
    from soar.protocols.modes import crc_remainder

    deltas = []
    for k in range(aircraft):
        delta = bytes(1) + k.to_bytes(3, "big") + bytes(10)
        deltas.append(crc_remainder(delta).to_bytes(3, "big"))
    return deltas


def beast_messages(testdata: Path, aircraft: int = AIRCRAFT) -> Iterator[bytes]:
    """The ADS-B sample as `aircraft` aircraft, in Beast frames (0x1a escaped), for ever."""
    sample = _adsb_sample(testdata)
    t0 = sample[0][0]
    deltas = [int.from_bytes(d, "big") for d in _parity_deltas(aircraft)]
    passes = itertools.count()
    while True:
        offset = next(passes) * 12 * 3600 * 1_000_000
        for received_us, message in sample:
            mlat = (((received_us - t0) * 12 + offset) & _MLAT_MASK).to_bytes(6, "big") + b"\x60"
            head, address = message[:1], int.from_bytes(message[1:4], "big")
            body, parity = message[4:11], int.from_bytes(message[11:14], "big")
            for k, delta in enumerate(deltas):
                payload = head + (address ^ k).to_bytes(3, "big") + body + (parity ^ delta).to_bytes(3, "big")
                yield b"\x1a\x33" + (mlat + payload).replace(b"\x1a", b"\x1a\x1a")


def _sbs_lines(testdata: Path) -> list[str]:
    with gzip.open(testdata / SBS_SAMPLE, "rt", encoding="ascii", errors="replace") as f:
        return [line.rstrip("\r\n") for line in f if line.strip()]


def sbs_copies(testdata: Path, aircraft: int = AIRCRAFT) -> list[bytes]:
    """Every line of the sample once per copy, copies adjacent; enough copies for `aircraft`."""
    lines = _sbs_lines(testdata)
    idents = {line.split(",")[4] for line in lines if line.count(",") > 4}
    copies = max(1, math.ceil(aircraft / max(1, len(idents))))
    out: list[bytes] = []
    for line in lines:
        fields = line.split(",")
        try:
            icao = int(fields[4], 16) if len(fields) > 4 else None
        except ValueError:
            icao = None
        for c in range(copies):
            if c and icao is not None:
                fields[4] = "%06X" % (icao ^ (c << 20))
            out.append((",".join(fields) + "\r\n").encode())
    return out


def sbs_messages(testdata: Path, aircraft: int = AIRCRAFT) -> Iterator[bytes]:
    copies = sbs_copies(testdata, aircraft)
    while True:
        yield from copies


MESSAGES: dict[str, Callable[[Path, int], Iterator[bytes]]] = {
    "ogn": ogn_messages, "beast": beast_messages, "sbs": sbs_messages,
}


def feed_squares(feed: str, testdata: Path) -> list[tuple[int, int]]:
    """The 1x1 degree squares the feed's positions fall in (addresses do not move them)."""
    squares: set[tuple[int, int]] = set()
    if feed == "ogn":
        from soar.protocols import ogn

        templates, base = _ogn_templates(testdata)
        for parts in templates:
            parsed = ogn.parse_line((b"%06X" % base).join(parts).decode())
            if isinstance(parsed, ogn.AircraftBeacon):
                fix = ogn.to_fix(parsed, 0, "")
                squares.add((math.floor(fix.lat), math.floor(fix.lon)))
    elif feed == "sbs":
        for line in _sbs_lines(testdata):
            fields = line.split(",")
            with contextlib.suppress(IndexError, ValueError):
                squares.add((math.floor(float(fields[14])), math.floor(float(fields[15]))))
    else:
        from soar.protocols.modes import ModeSAccumulator
        from soar.records import Fix

        accumulator = ModeSAccumulator()
        for received_us, message in _adsb_sample(testdata):
            decoded = accumulator.feed(message, received_us)
            if isinstance(decoded, Fix):
                # positions depend on which CPR pair decoded them: take the neighbours too
                for dlat, dlon in itertools.product((-1, 0, 1), repeat=2):
                    squares.add((math.floor(decoded.lat) + dlat, math.floor(decoded.lon) + dlon))
    return sorted(squares)


# ---------------------------------------------------------------------------------------------
# process 1: the feed server


def _serve_feed(feed: str, testdata: str, rate: float | None, ports: Any) -> None:
    """Accept one connection and send the feed: as fast as possible, or `rate` messages/s."""
    messages = MESSAGES[feed](Path(testdata), AIRCRAFT)
    with socket.create_server(("127.0.0.1", 0)) as server:
        ports.put(server.getsockname()[1])
        conn, _ = server.accept()
    with conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        try:
            if feed == "ogn":
                conn.sendall(b"# aprsc 2.1.14-g5e22b37\r\n")
            if rate is None:
                per_chunk = 2048
                while True:
                    conn.sendall(b"".join(itertools.islice(messages, per_chunk)))
            else:
                tick = 0.005
                per_tick = max(1, round(rate * tick))
                start = time.monotonic()
                for n in itertools.count(1):
                    conn.sendall(b"".join(itertools.islice(messages, per_tick)))
                    delay = start + n * tick - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
        except OSError:
            pass  # the client hung up: the run is over


# ---------------------------------------------------------------------------------------------
# process 2: WebSocket clients on /api/live


def _ws_clients(http_port: int, squares: list[tuple[int, int]], ready: Any, results: Any) -> None:
    import trio

    try:
        results.put(("ok", trio.run(_ws_main, http_port, squares, ready)))
    except BaseException:
        results.put(("error", traceback.format_exc()))


async def _ws_main(http_port: int, squares: list[tuple[int, int]], ready: Any) -> dict[str, Any]:
    import trio
    from trio_websocket import ConnectionClosed, open_websocket_url

    hist = LatencyHistogram()
    # The first seconds of a run are every aircraft's first sighting (a flight opened, an
    # aircraft row, a state machine each): report the steady state beside the whole run.
    steady = LatencyHistogram()
    first_us: list[int] = []
    groups = [squares[i : i + SQUARES_PER_CLIENT] for i in range(0, len(squares), SQUARES_PER_CLIENT)]
    subscribed = 0
    messages = 0
    #: second of the run (by receive time) -> [fixes, worst latency µs]: where the p99 comes from
    seconds: dict[int, list[int]] = {}

    async def client(group: list[tuple[int, int]]) -> None:
        nonlocal subscribed, messages
        url = f"ws://127.0.0.1:{http_port}/api/live"
        with contextlib.suppress(ConnectionClosed, trio.BrokenResourceError, OSError):
            async with open_websocket_url(url, max_message_size=1 << 24) as ws:
                await ws.get_message()  # connection_status
                # as the map page does: many fixes per WebSocket message
                await ws.send_message(json.dumps({"type": "options", "batch": True}))
                await ws.get_message()
                for lat, lon in group:
                    bounds = {"north": lat + 1, "south": lat, "east": lon + 1, "west": lon}
                    await ws.send_message(json.dumps(
                        {"type": "area_bulk", "action": "subscribe", "bounds": bounds}))
                acks = 0
                while acks < len(group):
                    reply = json.loads(await ws.get_message())
                    if reply.get("type") == "error":
                        raise RuntimeError(f"subscription refused: {reply}")
                    acks += reply.get("type") == "subscribed"
                subscribed += 1
                if subscribed == len(groups):
                    ready.set()
                while True:
                    text = await ws.get_message()
                    arrived_us = time.time_ns() // 1000
                    message = json.loads(text)
                    fixes = (message["fixes"] if message.get("type") == "fixes"
                             else [message] if message.get("type") == "fix" else [])
                    for fix in fixes:
                        messages += 1
                        # latency from when soar received it (`time_us` is the beacon's own time)
                        received_us = fix["received_us"]
                        hist.add(arrived_us - received_us)
                        if not first_us:
                            first_us.append(received_us)
                        if received_us - first_us[0] >= WARMUP_US:
                            steady.add(arrived_us - received_us)
                        second = seconds.setdefault((received_us - first_us[0]) // 1_000_000, [0, 0])
                        second[0] += 1
                        second[1] = max(second[1], arrived_us - received_us)

    async with trio.open_nursery() as nursery:
        for group in groups:
            nursery.start_soon(client, group)
    return {"clients": len(groups), "squares": len(squares), "fixes": messages, "hist": hist.state(),
            "steady_hist": steady.state(), "seconds": sorted(seconds.items())}


# ---------------------------------------------------------------------------------------------
# process 3: soar itself, measured


@dataclass
class _Job:
    feed: str
    url: str
    feed_port: int
    seconds: float
    paced: bool
    timeline: bool = False


def _run_soar(job: _Job, events: Any, clients_ready: Any) -> None:
    import trio

    try:
        with open(os.devnull, "w") as devnull:
            events.put(("result", trio.run(_soar_main, job, events, clients_ready, devnull)))
    except BaseException:
        events.put(("error", traceback.format_exc()))


async def _soar_main(job: _Job, events: Any, clients_ready: Any, devnull: Any) -> dict[str, Any]:
    import resource

    import trio

    from soar.config import Settings
    from soar.ingest.aprs import AprsIsSource
    from soar.ingest.beast_source import BeastSource
    from soar.ingest.sbs_source import SbsSource
    from soar.ingest.tcp import EnvelopeSink
    from soar.log import configure_logging
    from soar.overflow import SPOOLED
    from soar.pipeline import Pipeline, SourceSpec, counter_total
    from soar.records import Protocol
    from soar.runtime import settle_runtime
    from soar.store.writer import CommitReport
    from soar.supervisor import ChildSpec, RestartPolicy
    from soar.topology import Stage, when_started
    from soar.web.app import WebContext
    from soar.web.live import LiveHub
    from soar.web.server import serve_web

    # the production logging set-up (loggers cached), warnings only: the first sighting of
    # 10,000 aircraft in the first seconds would otherwise measure 10,000 `flight.opened` lines
    configure_logging("json", "warning", stream=devnull)
    protocol = {"ogn": Protocol.OGN, "beast": Protocol.BEAST, "sbs": Protocol.SBS}[job.feed]
    address = f"127.0.0.1:{job.feed_port}"
    client: Any
    if job.feed == "ogn":
        client = AprsIsSource(address, "SOARBENCH", source="bench")
    elif job.feed == "beast":
        client = BeastSource(address, source="bench")
    else:
        client = SbsSource(address, source="bench")
    holder: list[Pipeline] = []

    go = trio.Event()

    async def source(sink: EnvelopeSink) -> None:
        await go.wait()  # the clock starts once the WebSocket clients follow their squares
        await client.run(sink)  # a BLOCK edge: push back through TCP (see the module doc)

    commit = LatencyHistogram()
    first_commit = trio.Event()

    def on_commit(report: CommitReport) -> None:
        if report.table == "fixes":
            first_commit.set()
            now = report.committed_us
            for stamp in report.stamps_us:
                commit.add(now - stamp)

    depths: list[str] = []  # --timeline: queue depths and GC pauses as they happen
    gc_pauses: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}  # count, longest
    with tempfile.TemporaryDirectory(prefix="soar-bench-run-") as data_dir:
        settings = Settings(
            database_url=job.url, data_dir=Path(data_dir), http_addr="127.0.0.1:0",
            live_addr=f"inproc://soar-bench-{os.getpid()}",
        )
        spec = SourceSpec("bench", protocol, source, RestartPolicy.TEMPORARY)
        pipeline = Pipeline(settings, job.url, sources=[spec], block_envelopes=True)
        holder.append(pipeline)
        pipeline.commit_hooks.append(on_commit)
        await pipeline.open()
        hub = LiveHub(settings.live_addr)
        ctx = WebContext(tree=pipeline.tree, pool=pipeline.pool, live=hub,
                         ready_checks={"database": pipeline.database_ready})
        web_stop = trio.Event()
        hub_ready = trio.Event()
        http = socket.socket()
        http.bind(("127.0.0.1", 0))
        http.listen(128)
        http_port = int(http.getsockname()[1])

        async def web() -> None:
            await hub_ready.wait()
            await serve_web(settings, ctx, web_stop, sock=http)

        # the bench role: the data path, the live hub and the web server under one root
        topology = pipeline.declare("bench", [
            Stage("hub", [ChildSpec("live.hub", when_started(hub.run, hub_ready))]),
            Stage("web", [ChildSpec("web.server", web, RestartPolicy.TRANSIENT)]),
        ])
        spooled_before = counter_total(SPOOLED)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(topology.run)
                await hub_ready.wait()
                settle_runtime()  # as `soar run` does once it is up
                gc.callbacks.append(
                    functools.partial(_note_gc_pause, gc_pauses, depths, job.timeline))
                events.put(("http", http_port))
                if not await trio.to_thread.run_sync(clients_ready.wait, 120.0):
                    raise RuntimeError("the WebSocket clients did not subscribe in 120 s")
                cpu0, t0 = time.process_time(), time.perf_counter()
                go.set()
                sampler = trio.CancelScope()
                if job.timeline:
                    nursery.start_soon(_sample_depths, pipeline, depths, sampler)
                # The window opens at the first fixes committed: on a busy machine the feed
                # can take longer than a short window to start, and a window with nothing in
                # it measures the scheduler, not soar.
                with trio.move_on_after(60):
                    await first_commit.wait()
                opened = _decoded(pipeline)
                await trio.sleep(job.seconds)
                tracked = sum(len(shard.aircraft) for shard in pipeline.shards)
                window_messages = _decoded(pipeline) - opened
                await pipeline.drain()
                sampler.cancel()
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                # Cyclic garbage the tuned collector had not reached yet (it runs full
                # collections rarely): a leak would show here, not as a slowly growing RSS.
                pauses_in_run = {g: list(seen) for g, seen in gc_pauses.items()}
                garbage = gc.collect()
                await trio.sleep(0.5)  # the last live flush reaches the clients
                topology.stop()
        finally:
            http.close()
            await pipeline.close()
        summary = pipeline.summary()
    return {
        "messages": summary["messages"],
        "window_messages": window_messages,
        "fixes": summary["fixes"],
        "rejects": summary["rejects"],
        "reject_reasons": summary["reject_reasons"],
        "committed": summary["committed"],
        "elapsed": elapsed,
        "window": job.seconds,
        "cpu": cpu,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "tracked": tracked,
        "spooled": counter_total(SPOOLED) - spooled_before,
        "commit_hist": commit.state(),
        "depths": depths,
        "gc_pauses": pauses_in_run,
        "garbage": garbage,
    }


_gc_started: list[float] = [0.0]


def _note_gc_pause(
    pauses: dict[int, list[float]], timeline: list[str], keep: bool, phase: str,
    info: dict[str, Any],
) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    pause = time.perf_counter() - _gc_started[0]
    seen = pauses[info["generation"]]
    seen[0] += 1
    seen[1] = max(seen[1], pause)
    if pause > 0.005 and keep:
        timeline.append(f"gc generation {info['generation']}: {pause * 1000:.0f} ms "
                        f"at {time.perf_counter():.1f}")


async def _sample_depths(pipeline: Any, out: list[str], scope: Any) -> None:
    """Every 100 ms, the depth of each queue (--timeline): where a backlog builds."""
    import trio

    t0 = time.perf_counter()
    with scope:
        while True:
            await trio.sleep(0.1)
            env = sum(edge.depth for edge in pipeline.envelope_edges.values())
            shards = sum(edge.depth for edge in pipeline.shard_edges)
            now = time.perf_counter()
            parts = [f"{now - t0:5.1f}s (at {now:.1f}) envelopes={env} shards={shards}"]
            for name in ("fixes", "flights", "aircraft"):
                parts.append(f"{name}={pipeline.writer_edges[name].depth}")
            parts.append(f"live={pipeline.live.pending}")
            parts.append("committed=" + ",".join(f"{k}:{v}" for k, v in sorted(pipeline.committed.items())))
            out.append(" ".join(parts))


WARMUP_US = 5_000_000


# ---------------------------------------------------------------------------------------------
# the orchestrator


@dataclass
class Row:
    """One feed: the end-to-end figures and their baselines from the same run."""

    feed: str
    unit: str
    target_rate: float
    rate: float = 0.0  # messages/s, socket -> committed (throughput run)
    messages: int = 0
    seconds: float = 0.0
    baseline_name: str = ""
    baseline_rate: float = 0.0  # parse alone, messages/s
    fixes_rate: float = 0.0  # fixes committed per second in the throughput run
    raw_copy_rate: float = 0.0  # raw binary COPY of the same rows, rows/s
    cpu_us_per_message: float = 0.0
    peak_rss_mib: float = 0.0
    tracked: int = 0
    paced_asked: float = 0.0  # messages/s the paced run's feed was asked for: rate / 2
    paced_rate: float = 0.0  # messages/s actually achieved in the paced run
    commit_p50_ms: float | None = None
    commit_p99_ms: float | None = None
    ws_p50_ms: float | None = None
    ws_p99_ms: float | None = None
    ws_fixes: int = 0
    paced_fixes: int = 0
    spooled: int = 0
    notes: list[str] = field(default_factory=list)

    # Ratios to the baselines of the same run: what the machine's speed cancels out of.

    @property
    def vs_parse(self) -> float:
        """End to end ÷ the parse alone, both messages/s."""
        return self.rate / self.baseline_rate if self.baseline_rate else 0.0

    @property
    def vs_copy(self) -> float:
        """Fixes committed/s ÷ a raw binary COPY of the same rows."""
        return self.fixes_rate / self.raw_copy_rate if self.raw_copy_rate else 0.0

    @property
    def parse_cpu_us(self) -> float:
        return 1e6 / self.baseline_rate if self.baseline_rate else 0.0

    @property
    def cpu_vs_parse(self) -> float:
        """CPU per message end to end ÷ CPU per message of the parse alone."""
        return self.cpu_us_per_message / self.parse_cpu_us if self.parse_cpu_us else 0.0

    @property
    def paced_share(self) -> float:
        """The paced run's achieved rate ÷ the throughput run's rate (asked: 0.5)."""
        return self.paced_rate / self.rate if self.rate else 0.0

    @property
    def missed(self) -> list[str]:
        out = []
        if self.rate < self.target_rate:
            out.append("rate")
        if self.commit_p99_ms is None or self.commit_p99_ms >= COMMIT_P99_TARGET_MS:
            out.append("commit p99")
        if self.ws_p99_ms is None or self.ws_p99_ms >= WS_P99_TARGET_MS:
            out.append("websocket p99")
        if self.peak_rss_mib >= RSS_TARGET_MIB:
            out.append("rss")
        return out


def _baseline(feed: str, testdata: Path, seconds: float) -> tuple[str, float]:
    """Parse alone on the same generated messages, one core, this process."""
    sample = list(itertools.islice(MESSAGES[feed](testdata, AIRCRAFT), 20_000))
    step: Callable[[], None]
    if feed == "ogn":
        import aprslib

        lines = [m.rstrip(b"\r\n").decode() for m in sample]
        name = "aprslib.parse alone"

        def step() -> None:
            for line in lines:
                with contextlib.suppress(Exception):
                    aprslib.parse(line)
    elif feed == "beast":
        import pyModeS

        # the payload after the 8-byte header (frames are unescaped first, not timed)
        hexes = [m[2:].replace(b"\x1a\x1a", b"\x1a")[7:].hex() for m in sample]
        lines = hexes
        name = "pyModeS.decode alone"

        def step() -> None:
            for h in hexes:
                pyModeS.decode(h)
    else:
        lines = [m.rstrip(b"\r\n").decode() for m in sample]
        name = 'line.split(",") alone'

        def step() -> None:
            for line in lines:
                line.split(",")
    count = 0
    start = time.perf_counter()
    while True:
        step()
        count += len(lines)
        now = time.perf_counter()
        if now - start >= seconds:
            return name, count / (now - start)


def _fresh_database(url: str, name: str) -> str:
    """A new database `name` on the server of `url`, migrated (dropped first if it exists)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from soar.store.migrate import migrate

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    fresh = make_conninfo(url, dbname=name)
    migrate(fresh)
    return fresh


def _drop_database(url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _raw_copy_rate(url: str) -> tuple[int, float]:
    """Export the fixes the run committed, truncate, and time one raw binary COPY of them back."""
    import psycopg

    with psycopg.connect(url) as conn:
        blob = bytearray()
        with conn.cursor() as cur, cur.copy("COPY (SELECT * FROM fixes) TO STDOUT (FORMAT BINARY)") as copy:
            for data in copy:
                blob += data
        row = conn.execute("SELECT count(*) FROM fixes").fetchone()
        rows = int(row[0]) if row else 0
        conn.execute("TRUNCATE fixes")
        conn.commit()
        view = memoryview(blob)
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy("COPY fixes FROM STDIN (FORMAT BINARY)") as copy:
            for offset in range(0, len(view), _SEND_CHUNK):
                copy.write(view[offset : offset + _SEND_CHUNK])
        conn.commit()
        elapsed = time.perf_counter() - start
    return rows, rows / elapsed if elapsed > 0 and rows else 0.0


def _one_run(
    feed: str, url: str, testdata: Path, seconds: float, rate: float | None,
    squares: list[tuple[int, int]], profile: Path | None = None, timeline: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(soar's result, the WebSocket clients' result) of one run."""
    ctx = mp.get_context("spawn")
    ports, events, ws_results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    clients_ready = ctx.Event()
    server = ctx.Process(target=_serve_feed, args=(feed, str(testdata), rate, ports), daemon=True)
    procs = [server]
    try:
        server.start()
        feed_port = ports.get(timeout=120)
        job = _Job(feed, url, feed_port, seconds, rate is not None, timeline)
        soar = ctx.Process(target=_run_soar, args=(job, events, clients_ready), daemon=True)
        procs.append(soar)
        soar.start()
        kind, value = events.get(timeout=300)
        if kind != "http":
            raise RuntimeError(f"soar process failed to start:\n{value}")
        if profile is not None:
            _profile(soar.pid, profile / f"{feed}-{'paced' if rate else 'full'}.txt")
        clients = ctx.Process(target=_ws_clients, args=(value, squares, clients_ready, ws_results),
                              daemon=True)
        procs.append(clients)
        clients.start()
        kind, result = events.get(timeout=seconds * 20 + 300)
        if kind != "result":
            raise RuntimeError(f"soar process failed:\n{result}")
        try:
            kind, ws = ws_results.get(timeout=60)
        except queue.Empty:
            kind, ws = "error", "no result from the WebSocket clients"
        if kind != "ok":
            raise RuntimeError(f"WebSocket clients failed:\n{ws}")
        return result, ws
    finally:
        for proc in reversed(procs):
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)


def _profile(pid: int | None, out: Path) -> None:
    """py-spy on the soar process until it exits (--profile DIR; `pip install py-spy`)."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--format", "raw", "--nonblocking", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def run_feed(
    feed: str, url: str, testdata: Path, seconds: float, *, profile: Path | None = None,
    timeline: bool = False,
) -> Row:
    row = Row(feed, UNITS[feed], TARGETS[feed])
    row.baseline_name, row.baseline_rate = _baseline(feed, testdata, min(3.0, max(0.5, seconds / 10)))
    squares = feed_squares(feed, testdata)
    name = f"soar_bench_{feed}_{os.getpid()}"

    db = _fresh_database(url, name)
    try:
        result, _ws = _one_run(feed, db, testdata, seconds, None, squares, profile, timeline)
        _rows, row.raw_copy_rate = _raw_copy_rate(db)
    finally:
        _drop_database(url, name)
    row.messages = int(result["messages"])
    row.seconds = float(result["elapsed"])
    row.rate = row.messages / row.seconds if row.seconds else 0.0
    row.fixes_rate = result["fixes"] / row.seconds if row.seconds else 0.0
    row.cpu_us_per_message = result["cpu"] / row.messages * 1e6 if row.messages else 0.0
    row.tracked = int(result["tracked"])
    row.notes.append("rows committed " + ", ".join(
        f"{table} {count:,}" for table, count in sorted(result["committed"].items())))
    rss = float(result["maxrss_kib"]) / 1024
    if not row.messages:
        raise RuntimeError(f"{feed}: the throughput run decoded no message")

    # Half of what this machine just sustained, not a fixed rate: a fixed rate is idle load on
    # a fast machine and past saturation on one half as fast, where the latencies measure
    # the queues of an overloaded pipeline, i.e. the machine, not soar.
    row.paced_asked = row.rate / 2
    db = _fresh_database(url, name)
    try:
        paced, ws = _one_run(feed, db, testdata, seconds, row.paced_asked, squares, profile,
                             timeline)
    finally:
        _drop_database(url, name)
    row.paced_rate = paced["window_messages"] / paced["window"]
    row.paced_fixes = int(paced["fixes"])
    commit = LatencyHistogram.of(paced["commit_hist"])
    row.commit_p50_ms, row.commit_p99_ms = commit.quantile_ms(0.5), commit.quantile_ms(0.99)
    live = LatencyHistogram.of(ws["hist"])
    row.ws_p50_ms, row.ws_p99_ms = live.quantile_ms(0.5), live.quantile_ms(0.99)
    row.ws_fixes = int(ws["fixes"])
    settled = LatencyHistogram.of(ws["steady_hist"])
    if timeline:
        print(f"{feed} paced run, second: fixes to WebSocket/worst recv→WebSocket ms", file=sys.stderr)
        print("  ".join(f"{s}:{n}/{worst // 1000}" for s, (n, worst) in ws["seconds"]), file=sys.stderr)
        print(f"{feed} paced run, rejects: {paced['reject_reasons']}", file=sys.stderr)
        print("\n".join(paced["depths"]), file=sys.stderr)
    if ws["seconds"]:
        second, (_n, worst) = max(ws["seconds"], key=lambda item: item[1][1])
        row.notes.append(f"worst recv→WebSocket {worst / 1000:,.0f} ms in second {second} of the fixes")
    pauses = paced["gc_pauses"]
    row.notes.append("GC pauses (paced run) " + ", ".join(
        f"gen{g}: {int(n)}, longest {longest * 1000:.0f} ms" for g, (n, longest) in sorted(pauses.items()))
        + f"; uncollected cyclic garbage at the end {paced['garbage']:,} objects")
    if settled.count:
        row.notes.append(
            f"recv→WebSocket after the first {WARMUP_US // 1_000_000} s (first sightings): "
            f"p50 {_ms(settled.quantile_ms(0.5))} / p99 {_ms(settled.quantile_ms(0.99))} ms")
    row.spooled = int(paced["spooled"])
    row.peak_rss_mib = max(rss, float(paced["maxrss_kib"]) / 1024)
    row.tracked = max(row.tracked, int(paced["tracked"]))
    if row.spooled:
        row.notes.append(f"paced run spooled {row.spooled} envelopes")
    if live.negative:
        row.notes.append(f"{live.negative} WebSocket fixes arrived 'before' receipt (clock)")
    row.notes.append(f"{ws['clients']} ws clients, {ws['squares']} squares")
    return row


def run(
    url: str, testdata: Path, seconds: float, feeds: Sequence[str] = FEEDS, *,
    profile: Path | None = None, timeline: bool = False,
) -> list[Row]:
    """Benchmark each feed end to end against the PostgreSQL server at `url` (see module doc).

    One database per run is created on that server and dropped after it. `profile`: a
    directory for py-spy recordings of each soar process; `timeline`: print queue depths, GC
    pauses and per-second latencies of the paced runs on stderr.
    """
    from soar.store.migrate import migrate

    migrate(url)
    return [run_feed(feed, url, testdata, seconds, profile=profile, timeline=timeline)
            for feed in feeds]


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def format_ratio(value: float) -> str:
    """Two significant digits: 0.015x, 0.40x, 1.5x, 12x."""
    if value >= 10:
        return f"{value:.0f}x"
    if value >= 1:
        return f"{value:.1f}x"
    if value >= 0.1:
        return f"{value:.2f}x"
    return f"{value:.2g}x"


def _mark(ok: bool) -> str:
    return "" if ok else " ✗"


def format_table(rows: Sequence[Row]) -> str:
    """Markdown: each figure as its ratio to the same run's baseline first, then absolute;
    ✗ marks a missed target."""
    lines = [
        "| feed | end to end ÷ parse alone | fixes committed ÷ raw COPY of the same rows | "
        "CPU/msg ÷ parse alone | paced run ÷ end to end (asked: 0.5) | recv→commit p50 / p99 | "
        "recv→WebSocket p50 / p99 | peak RSS | aircraft tracked |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.feed} "
            f"| {format_ratio(r.vs_parse)} ({r.rate:,.0f} / {r.baseline_rate:,.0f} {r.unit}/s; "
            f"target {r.target_rate:,.0f}{_mark(r.rate >= r.target_rate)}) "
            f"| {format_ratio(r.vs_copy)} ({r.fixes_rate:,.0f} / {r.raw_copy_rate:,.0f} rows/s) "
            f"| {format_ratio(r.cpu_vs_parse)} ({r.cpu_us_per_message:.0f} / {r.parse_cpu_us:.1f} µs) "
            f"| {r.paced_share:.2f} ({r.paced_rate:,.0f} of {r.paced_asked:,.0f} {r.unit}/s asked) "
            f"| {_ms(r.commit_p50_ms)} / {_ms(r.commit_p99_ms)} ms"
            f"{_mark('commit p99' not in r.missed)} "
            f"| {_ms(r.ws_p50_ms)} / {_ms(r.ws_p99_ms)} ms{_mark('websocket p99' not in r.missed)} "
            f"| {r.peak_rss_mib:,.0f} MiB{_mark(r.peak_rss_mib < RSS_TARGET_MIB)} "
            f"| {r.tracked:,} |"
        )
    lines.append("")
    lines.append(
        "Baselines measured in the same run on the same messages: "
        + ", ".join(f"{r.feed} {r.baseline_name}" for r in rows)
        + "; a raw binary COPY of the rows the throughput run committed, into the same table."
    )
    lines.append(
        "Latencies from the paced runs, each fed at half the rate its own throughput run "
        "measured: "
        + ", ".join(f"{r.feed} {r.paced_rate:,.0f}/s ({r.paced_fixes:,} fixes, {r.ws_fixes:,} to "
                    "WebSocket)" for r in rows)
        + "; targets p99 < 1 s to commit, < 250 ms to WebSocket, RSS < 1 GiB, and the end-to-end"
        " rates of issue #8 (absolute: set for the 2-core development machine)."
    )
    for r in rows:
        if r.notes:
            lines.append(f"- {r.feed}: " + "; ".join(r.notes))
    return "\n".join(lines)


def _decoded(pipeline: Pipeline) -> int:
    """Messages the pipeline's decoders have read so far."""
    return sum(d.messages for d in pipeline.decoders.values())
