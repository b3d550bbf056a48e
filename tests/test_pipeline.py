"""The whole data path on real captures: capture -> decode -> shards -> writer -> PostgreSQL."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from soar.config import Settings, load_settings
from soar.overflow import OverflowSink
from soar.pipeline import Pipeline, SourceSpec
from soar.protocols.beast import MODE_S_LONG, MODE_S_SHORT, BeastFrame
from soar.records import AddressType, Envelope, Protocol, aircraft_id
from soar.replay import run_replay
from soar.supervisor import RestartPolicy

OGN_TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"
SBS_SAMPLE = "sbs/adsbhub-sbs-sample-20260224.txt.gz"


def settings_for(tmp_path: Path, **extra: Any) -> Settings:
    return load_settings(environ={}, overrides={"data_dir": str(tmp_path / "var"), "shards": 4,
                                                **extra})


def write_beast_capture(testdata: Path, path: Path) -> int:
    """The pyModeS ADS-B sample as a Beast binary file (MLAT counter = recorded time, 12 MHz)."""
    with (testdata / "adsb" / "pymodes-sample_data_adsb.csv").open(encoding="utf-8-sig") as f:
        rows = [(int(r[0]), bytes.fromhex(r[1])) for r in csv.reader(f)]
    out = bytearray()
    for i, (seconds, msg) in enumerate(rows):
        mlat = (seconds * 12_000_000 + i * 1200) & ((1 << 48) - 1)
        out += BeastFrame(MODE_S_LONG if len(msg) == 14 else MODE_S_SHORT, mlat, 0x80, msg).encode()
    path.write_bytes(bytes(out))
    return len(rows)


def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]


async def test_ogn_trace_replay_stores_every_fix_and_two_flights(
    testdata: Path, tmp_path: Path, db_url: str
) -> None:
    summary = await run_replay(settings_for(tmp_path), db_url, [testdata / OGN_TRACE])
    lines = (testdata / OGN_TRACE).read_text().splitlines()
    assert summary["messages"] == len(lines) == 1183
    ident = aircraft_id(AddressType.ICAO, 0x48683E)
    [(stored,)] = query(db_url, "SELECT count(*) FROM fixes WHERE aircraft_id = %s", ident)
    assert summary["fixes"] == stored
    # every line is a beacon of this aircraft: each is a stored fix or a counted reject
    assert stored + summary["rejects"] == len(lines)
    flights = query(db_url, "SELECT id, takeoff_at, landing_at FROM flights WHERE aircraft_id = %s"
                    " ORDER BY first_fix_at", ident)
    assert len(flights) == 2
    assert flights[0][2] is not None, "the first flight ends with a landing"
    assert flights[1][1] is not None, "the second starts with a takeoff"
    assert (flights[1][1] - flights[0][2]).total_seconds() > 3600
    # the receivers named in the via paths were recorded, with their latest packet time
    [(receivers,)] = query(db_url, "SELECT count(*) FROM receivers WHERE latest_packet_at IS NOT NULL")
    assert receivers > 10


async def test_sbs_and_beast_replay_account_for_every_message(
    testdata: Path, tmp_path: Path, db_url: str
) -> None:
    beast_file = tmp_path / "adsb.beast"
    frames = write_beast_capture(testdata, beast_file)
    summary = await run_replay(
        settings_for(tmp_path), db_url, [testdata / SBS_SAMPLE, beast_file]
    )
    assert summary["messages"] == 38112 + frames
    [(stored,)] = query(db_url, "SELECT count(*) FROM fixes")
    assert summary["fixes"] == stored > 10_000
    by_protocol = dict(query(db_url, "SELECT protocol, count(*) FROM fixes GROUP BY protocol"))
    assert by_protocol["sbs"] > 10_000
    assert by_protocol["beast"] > 100, "the ADS-B sample's positions were CPR-decoded in a shard"
    [(beast_aircraft,)] = query(
        db_url, "SELECT count(DISTINCT aircraft_id) FROM fixes WHERE protocol = 'beast'")
    assert beast_aircraft == 1  # the sample is one aircraft, 406B90
    assert summary["rejects"] > 0 and all(v > 0 for v in summary["reject_reasons"].values())


async def test_second_replay_of_the_same_capture_adds_nothing(
    testdata: Path, tmp_path: Path, db_url: str
) -> None:
    settings = settings_for(tmp_path)
    await run_replay(settings, db_url, [testdata / OGN_TRACE])
    [(before,)] = query(db_url, "SELECT count(*) FROM fixes")
    await run_replay(settings, db_url, [testdata / OGN_TRACE])
    [(after,)] = query(db_url, "SELECT count(*) FROM fixes")
    assert before == after


class _PacedSource:
    """Sends a protocol's envelopes at a steady rate, cycling through real messages."""

    def __init__(self, protocol: Protocol, payloads: list[bytes], rate: float, count: int) -> None:
        self.protocol, self.payloads, self.rate, self.count = protocol, payloads, rate, count
        self.sent = 0

    async def run(self, sink: OverflowSink) -> None:
        base = 1_766_528_000_000_000
        started = trio.current_time()
        for i in range(self.count):
            payload = self.payloads[i % len(self.payloads)]
            await sink.send(Envelope(self.protocol, base + i * 1000, payload, "paced"))
            self.sent += 1
            if self.rate and i % 100 == 99:
                await trio.sleep_until(started + (i + 1) / self.rate)


def _ogn_payloads(testdata: Path, copies: int) -> list[bytes]:
    """The OGN trace as many distinct aircraft (address shifted per copy)."""
    out = []
    for copy in range(copies):
        for raw in (testdata / OGN_TRACE).read_bytes().splitlines():
            line = raw.partition(b" ")[2]
            out.append(line.replace(b"48683E", f"{0x100000 + copy:06X}".encode()))
    return out


async def _ogn_rate(
    testdata: Path, tmp_path: Path, db_url: str, block_beast: bool, monkeypatch: pytest.MonkeyPatch
) -> float:
    """OGN envelopes/s through decode and the shards, with a Beast feed beside it."""
    ogn = _PacedSource(Protocol.OGN, _ogn_payloads(testdata, 5), 0, 5 * 1183)
    frames = []
    with (testdata / "adsb" / "pymodes-sample_data_adsb.csv").open(encoding="utf-8-sig") as f:
        for r in csv.reader(f):
            msg = bytes.fromhex(r[1])
            frames.append(BeastFrame(MODE_S_LONG if len(msg) == 14 else MODE_S_SHORT, 0, 0x80, msg)
                          .to_bytes())
    beast = _PacedSource(Protocol.BEAST, frames, 2000, 10**9)
    settings = settings_for(tmp_path / str(block_beast), channel_size=500)
    specs = [SourceSpec("ogn", Protocol.OGN, ogn.run, RestartPolicy.TEMPORARY),
             SourceSpec("beast", Protocol.BEAST, beast.run, RestartPolicy.TEMPORARY)]
    if block_beast:
        original = Pipeline._decode

        async def decode(self: Pipeline, protocol: Protocol) -> None:
            if protocol is Protocol.BEAST:
                await trio.sleep_forever()  # the Beast consumer is stuck
            await original(self, protocol)

        monkeypatch.setattr(Pipeline, "_decode", decode)
    pipeline = Pipeline(settings, db_url, sources=specs)
    monkeypatch.undo()
    await pipeline.open()
    decoder = pipeline.decoders[Protocol.OGN]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.run)
            began = time.perf_counter()
            with trio.fail_after(120):  # a held-back OGN pipeline fails here, however slow the machine
                while decoder.messages < ogn.count:
                    await trio.sleep(0.01)
            elapsed = time.perf_counter() - began
            nursery.cancel_scope.cancel()
    finally:
        await pipeline.close()
    if block_beast:
        assert pipeline.decoders[Protocol.BEAST].messages == 0
        spill = pipeline.envelope_edges[Protocol.BEAST].spill
        assert spill is not None and spill.depth > 0, "the stalled feed spilled to its spool"
    return ogn.count / elapsed


@pytest.mark.slow
async def test_stalled_beast_pipeline_does_not_hold_back_ogn(
    testdata: Path, tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the Beast consumer stuck for good, every OGN message is still decoded, and the Beast
    # feed spills to its own spool (asserted in _ogn_rate). By counts, not by rate: how much a
    # busy machine slows OGN is for `make bench`, not for a test.
    rate = await _ogn_rate(testdata, tmp_path / "blocked", db_url, True, monkeypatch)
    print(f"OGN through the pipeline with Beast stalled: {rate:.0f}/s")


async def test_raw_archive_keeps_every_message_per_protocol_and_day(
    testdata: Path, tmp_path: Path, db_url: str
) -> None:
    import gzip

    from soar.ingest.capture import iter_capture

    settings = settings_for(tmp_path, archive_raw=True)
    summary = await run_replay(settings, db_url, [testdata / OGN_TRACE])
    archive = tmp_path / "var" / "archive"
    files = sorted(p.name for p in archive.iterdir())
    # one file per protocol per UTC day (the trace crosses midnight); both days are long over
    # by the wall clock, so both are compressed at rollover
    assert files == ["ogn-2025-12-23.log.gz", "ogn-2025-12-24.log.gz"], files
    archived = list(iter_capture(archive / files[0])) + list(iter_capture(archive / files[1]))
    assert len(archived) == summary["messages"] == 1183
    original = [line.partition(" ")[2] for line in (testdata / OGN_TRACE).read_text().splitlines()]
    assert [env.data.decode() for env in archived] == original
    with gzip.open(archive / files[0], "rt") as day:
        assert day.readline().split("\t")[0].isdigit()  # receive time in µs, then the line


async def test_a_stuck_shard_shows_its_backlog_in_the_queue_depth_gauge(
    testdata: Path, tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pipeline measures every stage's queue once a second from outside: a shard that
    # stopped taking input cannot report its own backlog, so the watcher must.
    from prometheus_client import REGISTRY

    settings = settings_for(tmp_path, shards=1, channel_size=200)
    ogn = _PacedSource(Protocol.OGN, _ogn_payloads(testdata, 1), 0, 1183)
    original = Pipeline._run_shard

    async def stuck(self: Pipeline, index: int) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(Pipeline, "_run_shard", stuck)
    pipeline = Pipeline(settings, db_url,
                        sources=[SourceSpec("ogn", Protocol.OGN, ogn.run, RestartPolicy.TEMPORARY)])
    monkeypatch.setattr(Pipeline, "_run_shard", original)
    await pipeline.open()

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("soar_edge_depth", {"edge": "shard.0"})

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.run)
            with trio.fail_after(10):
                while (gauge() or 0) < 200:  # the whole channel, seen from outside
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    finally:
        await pipeline.close()
    assert pipeline.edges["shard.0"].depth == 200


async def test_fixes_retention_setting_drops_old_days_from_the_running_pipeline(
    tmp_path: Path, db_url: str
) -> None:
    import datetime as dt

    import psycopg

    from soar.store.partitions import ensure_partitions, existing_partitions, partition_name

    today = dt.datetime.now(dt.UTC).date()
    old, recent = today - dt.timedelta(days=40), today - dt.timedelta(days=2)
    with psycopg.connect(db_url, autocommit=True) as conn:
        ensure_partitions(conn, old, 0)
        ensure_partitions(conn, recent, 0)

    async def idle(sink: OverflowSink) -> None:
        await trio.sleep_forever()

    settings = settings_for(tmp_path, fixes_retention_days=30)
    pipeline = Pipeline(settings, db_url,
                        sources=[SourceSpec("idle", Protocol.OGN, idle, RestartPolicy.TEMPORARY)])
    await pipeline.open()

    def partitions() -> set[str]:
        with psycopg.connect(db_url) as conn:
            return existing_partitions(conn)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.run)
            with trio.fail_after(20):
                while partition_name(old) in await trio.to_thread.run_sync(partitions):
                    await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    finally:
        await pipeline.close()
    assert partition_name(recent) in partitions()
