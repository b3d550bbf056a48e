"""What the fault-injection tests share: the captures as feeds, the fault-free reference, runners.

Every fault test replays the same real captures through the real pipeline into a real
PostgreSQL and compares what was stored with a fault-free replay of the same capture
(`Reference`, computed once per session): fix keys (aircraft_id, received_at) and flight counts,
per protocol.

Each protocol runs in its own pipeline, one after the other. The captures were recorded on
different days, and a shard's fix clock is the newest fix it has seen whatever the protocol: an
OGN trace racing hours ahead of the SBS sample in the same shard would time SBS aircraft out,
and how far it races depends on task scheduling. One protocol per pipeline makes every run of a
capture deterministic, so any difference from the reference is the fault's doing.

Live feeds stamp envelopes with the wall clock; `Restamp` gives each real message its recorded
time back (matched by content), so a capture served over TCP stores exactly what its replay
stores. Garbage (anything not in the capture) keeps the time of the last real message.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from soar.backoff import Backoff
from soar.config import Settings, load_settings
from soar.ingest.aprs import AprsIsSource
from soar.ingest.beast_source import BeastSource
from soar.ingest.sbs_source import SbsSource
from soar.ingest.tcp import EnvelopeSink
from soar.pipeline import Pipeline, SourceSpec
from soar.protocols.beast import ESCAPE, BeastFrame
from soar.records import Envelope, Protocol
from soar.replay import run_replay
from soar.store.embedded import EmbeddedPostgres
from soar.supervisor import RestartPolicy

#: The order every multi-protocol test (and the reference) runs the captures in.
PROTOCOLS = (Protocol.OGN, Protocol.SBS, Protocol.BEAST)

FixKey = tuple[int, datetime]

_live_numbers = itertools.count()


def fault_settings(data_dir: Path, **extra: Any) -> Settings:
    """Test settings: 4 shards, the given data directory, a live address of its own."""
    overrides: dict[str, Any] = {
        "data_dir": str(data_dir),
        "shards": 4,
        "live_addr": f"inproc://soar-faults-{next(_live_numbers)}",
    }
    overrides.update(extra)
    return load_settings(environ={}, overrides=overrides)


_database_numbers = itertools.count()


def fresh_database(server: EmbeddedPostgres, purpose: str) -> str:
    """A new database from the session's migrated template (conftest.py); its conninfo."""
    if not server.running:
        server.resume()
    name = f"soar_faults_{purpose}_{next(_database_numbers)}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE soar_template").format(sql.Identifier(name))
        )
    return make_conninfo(server.url, dbname=name)


def drop_database(server: EmbeddedPostgres, url: str) -> None:
    if not server.running:
        server.resume()
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
        )


def as_url(conninfo: str) -> str:
    """A `postgresql://` URL for a conninfo string (what SOAR_DATABASE_URL accepts)."""
    params = conninfo_to_dict(conninfo)
    user = params.get("user", "postgres")
    query = f"?host={params['host']}" if params.get("host") else ""
    port = f":{params['port']}" if params.get("port") and not query else ""
    return f"postgresql://{user}@{'' if query else 'localhost'}{port}/{params['dbname']}{query}"


# ---- the captures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Capture:
    """One capture file and the envelopes `soar replay` makes of it (recorded times)."""

    protocol: Protocol
    path: Path
    envelopes: tuple[Envelope, ...]

    def wire(self, env: Envelope) -> bytes:
        """The bytes a live feed sends for one message."""
        if self.protocol is Protocol.BEAST:
            return BeastFrame.from_bytes(env.data).encode()
        return env.data + b"\r\n"

    def wire_messages(self) -> list[bytes]:
        return [self.wire(env) for env in self.envelopes]


Corpus = dict[Protocol, Capture]


# ---- what a database holds --------------------------------------------------------------------


@dataclass
class Stored:
    fixes: dict[Protocol, set[FixKey]]
    fix_rows: int
    flights: dict[Protocol, int]
    #: flights per (protocol, aircraft id)
    flights_of: dict[tuple[Protocol, int], int] = field(default_factory=dict)

    def keys(self, protocols: Iterable[Protocol] = PROTOCOLS) -> set[FixKey]:
        return set().union(*(self.fixes.get(p, set()) for p in protocols))


def stored(url: str) -> Stored:
    with psycopg.connect(url) as conn:
        fixes: dict[Protocol, set[FixKey]] = defaultdict(set)
        rows = conn.execute("SELECT protocol, aircraft_id, received_at FROM fixes").fetchall()
        for protocol, ident, at in rows:
            fixes[Protocol(protocol)].add((ident, at))
        flights: dict[Protocol, int] = defaultdict(int)
        flights_of: dict[tuple[Protocol, int], int] = {}
        for p, ident, n in conn.execute(
            "SELECT protocol, aircraft_id, count(*) FROM flights GROUP BY protocol, aircraft_id"
        ):
            flights[Protocol(p)] += n
            flights_of[Protocol(p), ident] = n
    return Stored(dict(fixes), len(rows), dict(flights), flights_of)


def fix_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM fixes").fetchone()
    assert row is not None
    return int(row[0])


@dataclass
class Reference:
    """The fault-free replay of each capture, each in a database of its own."""

    per_protocol: dict[Protocol, Stored]
    seconds: dict[Protocol, float]  # wall time of each replay
    summaries: dict[Protocol, dict[str, Any]]

    def keys(self, protocol: Protocol) -> set[FixKey]:
        return self.per_protocol[protocol].fixes.get(protocol, set())

    def flights(self, protocol: Protocol) -> int:
        return self.per_protocol[protocol].flights.get(protocol, 0)


def assert_same_as_reference(
    got: Stored, reference: Reference, protocols: Iterable[Protocol] = PROTOCOLS
) -> None:
    """Every fix of the reference stored exactly once, nothing else; the same flights."""
    protocols = list(protocols)
    expected_rows = 0
    for protocol in protocols:
        want = reference.keys(protocol)
        have = got.fixes.get(protocol, set())
        missing, extra = want - have, have - want
        assert not missing and not extra, (
            f"{protocol.value}: {len(missing)} fixes missing (e.g. {sorted(missing)[:3]}), "
            f"{len(extra)} not in the fault-free run (e.g. {sorted(extra)[:3]})"
        )
        expected_rows += len(want)
        assert got.flights.get(protocol, 0) == reference.flights(protocol), (
            f"{protocol.value}: {got.flights.get(protocol, 0)} flights, "
            f"fault-free run {reference.flights(protocol)}"
        )
    assert got.fix_rows == expected_rows


# ---- running the pipeline ---------------------------------------------------------------------


async def replay_capture(
    settings: Settings,
    url: str,
    capture: Capture,
    *,
    speed: float | None = None,
    during: Callable[[Pipeline], Awaitable[None]] | None = None,
    timeout: float = 150.0,
) -> dict[str, Any]:
    """`soar replay` of one capture (the same code path), with `during(pipeline)` running beside
    it until the replay has finished and committed everything (or `timeout` s have passed)."""
    pipelines: list[Pipeline] = []
    started = trio.Event()

    def hook(pipeline: Pipeline) -> None:
        pipelines.append(pipeline)
        started.set()

    summary: dict[str, Any] = {}

    async def replay() -> None:
        summary.update(
            await run_replay(settings, url, [capture.path], speed=speed, pipeline_hook=hook)
        )

    with trio.fail_after(timeout):
        await _replay_beside(replay, started, pipelines, during)
    return summary


async def _replay_beside(
    replay: Callable[[], Awaitable[None]],
    started: trio.Event,
    pipelines: list[Pipeline],
    during: Callable[[Pipeline], Awaitable[None]] | None,
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(replay)
        if during is not None:
            await started.wait()
            async with trio.open_nursery() as side:
                side.start_soon(during, pipelines[0])
                await pipelines[0].wait_finished()
                side.cancel_scope.cancel()


async def run_sources(
    settings: Settings,
    url: str,
    specs: list[SourceSpec],
    *,
    until: Callable[[], bool],
    during: Callable[[Pipeline], Awaitable[None]] | None = None,
    timeout: float = 60.0,
) -> Pipeline:
    """Run a pipeline on live sources until `until()` holds, then drain it (as on SIGTERM)."""
    pipeline = Pipeline(settings, url, sources=specs)
    await pipeline.open()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pipeline.run)
            if during is not None:
                nursery.start_soon(during, pipeline)
            with trio.fail_after(timeout):
                while not until():
                    await trio.sleep(0.02)
            await pipeline.drain()
            nursery.cancel_scope.cancel()
    finally:
        await pipeline.close()
    return pipeline


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---- live feeds of the captures ---------------------------------------------------------------


class Restamp:
    """An envelope sink that gives each real message its recorded time back (see module doc)."""

    def __init__(self, sink: EnvelopeSink, capture: Capture) -> None:
        self.sink = sink
        self._times: dict[bytes, deque[int]] = defaultdict(deque)
        for env in capture.envelopes:
            self._times[env.data].append(env.received_us)
        self.real = 0
        self.garbage = 0
        self._last_us = capture.envelopes[0].received_us

    async def send(self, env: Envelope, /) -> None:
        times = self._times.get(env.data)
        if times:
            self._last_us = times.popleft()
            self.real += 1
        else:
            self.garbage += 1
        await self.sink.send(replace(env, received_us=self._last_us))


def quick_backoff() -> Backoff:
    return Backoff(base=0.05, cap=0.4, healthy_after=60.0)


@dataclass
class LiveSource:
    """A feed client of the capture's protocol, its envelopes restamped."""

    capture: Capture
    address: str
    source: Any = None
    restamp: Restamp | None = None

    def __post_init__(self) -> None:
        protocol = self.capture.protocol
        name = f"fault-{protocol.value}-{self.address}"
        if protocol is Protocol.OGN:
            self.source = AprsIsSource(self.address, "FAULTS", source=name, backoff=quick_backoff())
        elif protocol is Protocol.BEAST:
            self.source = BeastSource(self.address, source=name, backoff=quick_backoff())
        else:
            self.source = SbsSource(self.address, source=name, backoff=quick_backoff())

    async def run(self, sink: EnvelopeSink) -> None:
        self.restamp = Restamp(sink, self.capture)
        await self.source.run(self.restamp)

    def spec(self) -> SourceSpec:
        return SourceSpec(self.source.source, self.capture.protocol, self.run, RestartPolicy.PERMANENT)

    @property
    def delivered(self) -> int:
        return 0 if self.restamp is None else self.restamp.real

    @property
    def done(self) -> bool:
        return self.delivered == len(self.capture.envelopes)


def line_garbage(rng: random.Random) -> bytes:
    """A line of random bytes (sometimes longer than any line a feed may send)."""
    size = rng.choice((rng.randint(1, 120), rng.randint(1, 120), 3000))
    body = bytes(rng.randrange(256) for _ in range(size)).replace(b"\n", b" ")
    if body.startswith(b"#"):  # an APRS-IS server comment is a message, not garbage
        body = b"!" + body
    return body + b"\r\n"


def beast_garbage(rng: random.Random) -> bytes:
    """Random bytes between Beast frames. Never ending in 0x1a: a lone 0x1a right before the
    next frame's 0x1a would read as an escaped data byte and swallow that frame's start, which
    no deframer can tell apart from a real frame's body."""
    body = bytes(rng.randrange(256) for _ in range(rng.randint(1, 60)))
    return body + b"\x00" if body[-1] == ESCAPE else body


@dataclass
class ResumableFeed:
    """A TCP feed of a capture on 127.0.0.1 that resumes where the client has got to.

    Each connection sends the capture's messages from `position()` on (the number of real
    messages the client has handed to the pipeline), optionally with garbage after every
    `garbage_every`-th message. With `kill_at`, the first connection stops after that many
    messages plus half the next one, and the whole server (listener and connections) is killed;
    `restart_after` seconds later it listens again on the same port.
    """

    capture: Capture
    position: Callable[[], int] = lambda: 0
    kill_at: int | None = None
    restart_after: float = 0.3
    garbage_every: int = 0
    seed: int = 8
    port: int = 0
    connections: int = 0
    garbage_sent: list[bytes] = field(default_factory=list)
    killed_at: float | None = None
    restarted_at: float | None = None
    _kill: trio.Event = field(default_factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        messages = self.capture.wire_messages()
        first = True
        while True:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(trio.serve_tcp, partial(self._serve, messages), self.port,
                            host="127.0.0.1")
                )
                self.port = listeners[0].socket.getsockname()[1]
                if first:
                    task_status.started(self.port)
                    first = False
                else:
                    self.restarted_at = time.monotonic()
                await self._kill.wait()
                nursery.cancel_scope.cancel()  # the listener and every connection, at once
            self.killed_at = time.monotonic()
            self._kill = trio.Event()
            await trio.sleep(self.restart_after)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, messages: list[bytes], stream: trio.SocketStream) -> None:
        self.connections += 1
        connection = self.connections
        start = self.position()
        rng = random.Random(self.seed * 1000 + connection)
        garbage = beast_garbage if self.capture.protocol is Protocol.BEAST else line_garbage
        async with trio.open_nursery() as nursery:
            # Read what the client sends (APRS login, keepalives), so closing sends FIN, not RST.
            nursery.start_soon(_discard_input, stream)
            end = len(messages)
            kill = self.kill_at is not None and connection == 1
            if kill:
                assert self.kill_at is not None
                end = self.kill_at
            batch: list[bytes] = []
            for index in range(start, end):
                batch.append(messages[index])
                if self.garbage_every and index % self.garbage_every == self.garbage_every - 1:
                    junk = garbage(rng)
                    self.garbage_sent.append(junk)
                    batch.append(junk)
                if len(batch) >= 200:
                    await stream.send_all(b"".join(batch))
                    batch = []
            if kill:
                cut = messages[end]
                batch.append(cut[: len(cut) // 2])
            if batch:
                await stream.send_all(b"".join(batch))
            if kill:
                self._kill.set()
            await trio.sleep_forever()


async def _discard_input(stream: trio.SocketStream) -> None:
    try:
        while await stream.receive_some(4096):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
