"""Split mode on loopback: 1 ingest + 2 track + 1 web processes give what the all-in-one does.

Both runs replay the same real captures with their recorded receive times, so the fixes must be
the same rows (aircraft, receive time) and the flights the same in number per aircraft.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from psycopg import sql

from soar.config import load_settings
from soar.replay import run_replay

pytestmark = pytest.mark.slow

OGN_TRACE = "ogn/soar-flight-descended-out-of-range-then-took-off.txt"
SBS_SAMPLE = "sbs/adsbhub-sbs-sample-20260224.txt.gz"
_names = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def second_db(pg_server: Any) -> Iterator[str]:
    from psycopg.conninfo import make_conninfo

    name = f"soar_split_{next(_names)}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE soar_template").format(sql.Identifier(name)))
    yield make_conninfo(pg_server.url, dbname=name)
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def fix_keys(url: str) -> set[tuple[int, Any]]:
    with psycopg.connect(url) as conn:
        return set(conn.execute("SELECT aircraft_id, received_at FROM fixes").fetchall())


def flights_per_aircraft(url: str) -> dict[int, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT aircraft_id, count(*) FROM flights GROUP BY 1").fetchall())


class Cluster:
    def __init__(self, tmp: Path, db: str) -> None:
        self.tmp, self.db = tmp, db
        self.tracks = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
        self.lives = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
        self.http = f"127.0.0.1:{free_port()}"
        self.metrics = {name: f"127.0.0.1:{free_port()}" for name in ("track0", "track1", "ingest")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
        env.update(SOAR_DATABASE_URL=self.db, SOAR_TRACK_ENDPOINTS=",".join(self.tracks),
                   SOAR_LOG_FORMAT="json", SOAR_SHARDS="2", **extra)
        return env

    def start(self, name: str, args: list[str], **extra: str) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "soar", *args],
                                            env=self.env(**extra), stdout=log, stderr=log)

    def start_track(self, k: int) -> None:
        self.start(f"track{k}", ["track"], SOAR_TRACK_INDEX=str(k), SOAR_LIVE_ADDR=self.lives[k],
                   SOAR_DATA_DIR=str(self.tmp / f"track{k}"),
                   SOAR_METRICS_ADDR=self.metrics[f"track{k}"])

    def start_all(self, replay: list[Path], speed: float | None = None) -> None:
        for k in range(2):
            self.start_track(k)
        self.start("web", ["web"], SOAR_HTTP_ADDR=self.http, SOAR_LIVE_SOURCES=",".join(self.lives),
                   SOAR_DATA_DIR=str(self.tmp / "web"))
        args = ["ingest", "--replay", *map(str, replay)]
        if speed:
            args += ["--speed", str(speed)]
        self.start("ingest", args, SOAR_DATA_DIR=str(self.tmp / "ingest"))

    def wait_ingest(self, timeout: float) -> None:
        assert self.procs["ingest"].wait(timeout=timeout) == 0, self.logs("ingest")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                assert proc.wait(timeout=40) == 0, self.logs(name)
            finally:
                if proc.poll() is None:
                    proc.kill()

    def logs(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()[-4000:]

    def get(self, path: str, addr: str | None = None) -> int:
        return fetch(addr or self.http, path)[0]


def fetch(addr: str, path: str) -> tuple[int, str]:
    """(status, body) of a GET; (0, "") while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def samples(metrics_text: str, name: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(metrics_text)
            for s in family.samples if s.name == name]


def sample(metrics_text: str, name: str) -> float:
    """The sum of a metric's samples in a Prometheus text exposition."""
    return sum(s.value for s in samples(metrics_text, name))


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


async def test_split_mode_matches_all_in_one(
    testdata: Path, tmp_path: Path, db_url: str, second_db: str
) -> None:
    # One capture: captures recorded on different days, replayed together, race each other's
    # fix clocks (a shard's clock is the newest fix it has seen), so their flights would depend
    # on scheduling in either mode. The SBS sample's ~6,800 aircraft spread over both tracks.
    files = [testdata / SBS_SAMPLE]
    settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path / "ref"), "shards": 4})
    reference = await run_replay(settings, db_url, files)
    expected = fix_keys(db_url)
    expected_flights = flights_per_aircraft(db_url)
    assert len(expected_flights) > 1000

    cluster = Cluster(tmp_path, second_db)
    try:
        cluster.start_all(files)
        cluster.wait_ingest(120)
        wait_for(lambda: len(fix_keys(second_db)) >= len(expected), 60, "the tracks to commit")
        wait_for(lambda: cluster.get("/healthz") == 200, 30, "soar web")
        # each track process serves its own metrics on metrics_addr (no API there)
        received = 0.0
        for k in range(2):
            addr = cluster.metrics[f"track{k}"]
            status, text = fetch(addr, "/metrics")
            assert status == 200, text
            received += sample(text, "soar_track_envelopes_received_total")
            assert sample(text, "soar_fixes_processed_total") > 0
            assert fetch(addr, "/readyz")[0] == 200
            assert fetch(addr, "/api/aircraft")[0] == 404
        assert received == reference["messages"]  # every envelope reached one track
    finally:
        cluster.stop()
    assert fix_keys(second_db) == expected
    assert flights_per_aircraft(second_db) == expected_flights


def test_ingest_serves_metrics_health_and_readiness(tmp_path: Path, second_db: str) -> None:
    cluster = Cluster(tmp_path, second_db)
    try:
        # no feed configured and no capture: it waits for tracks and signals
        cluster.start("ingest", ["ingest"], SOAR_DATA_DIR=str(tmp_path / "ingest"),
                      SOAR_METRICS_ADDR=cluster.metrics["ingest"])
        addr = cluster.metrics["ingest"]
        wait_for(lambda: fetch(addr, "/healthz")[0] == 200, 30, "soar ingest's /healthz")
        status, body = fetch(addr, "/healthz")
        assert set(json.loads(body)["tree"]) == {"sources", "links", "routers"}
        status, text = fetch(addr, "/metrics")
        assert status == 200
        running = {s.labels["task"] for s in samples(text, "soar_task_running") if s.value == 1}
        assert {f"link.{track}" for track in cluster.tracks} <= running
        assert fetch(addr, "/readyz")[0] == 200  # nothing unacknowledged yet
    finally:
        cluster.stop()


async def test_killed_track_loses_no_fix(
    testdata: Path, tmp_path: Path, db_url: str, second_db: str
) -> None:
    files = [testdata / SBS_SAMPLE]
    settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path / "ref"), "shards": 4})
    await run_replay(settings, db_url, files)
    expected = fix_keys(db_url)

    cluster = Cluster(tmp_path, second_db)
    try:
        cluster.start_all(files, speed=3.0)  # the 38 s capture in ~13 s
        wait_for(lambda: len(fix_keys(second_db)) > len(expected) // 4, 60, "a quarter of the fixes")
        cluster.procs["track1"].kill()  # no goodbye: SIGKILL
        cluster.procs["track1"].wait()
        time.sleep(2.0)
        cluster.start_track(1)
        cluster.wait_ingest(120)
        try:
            wait_for(lambda: len(fix_keys(second_db)) >= len(expected), 60, "every fix")
        except AssertionError:
            got = fix_keys(second_db)
            missing = sorted(expected - got)
            raise AssertionError(f"{len(missing)} of {len(expected)} fixes missing, "
                                 f"{len(got - expected)} extra; first missing {missing[:5]}; "
                                 f"track1 log: {cluster.logs('track1')[-1500:]}") from None
    finally:
        cluster.stop()
    assert fix_keys(second_db) == expected
