"""Split mode on loopback over NATS JetStream: ingest + tracks + web give what the all-in-one does.

Every run replays the same real capture with its recorded receive times, so the fixes must be
the same rows (aircraft, receive time) and the flights the same in number per aircraft, however
the work was spread over processes, and whichever of them was killed on the way.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from psycopg import sql

from soar.broker import rendezvous
from soar.broker.embedded import EmbeddedNats
from soar.split import FETCH_BATCH, MAX_HELD, MAX_UNACKED
from tests.support import free_port

pytestmark = pytest.mark.slow

#: the lease the tests run with: a killed track's partitions move after this long
LEASE_S = 10.0  # the default
#: the pace of the continuous-load test's capture: its 16 s last 107 s (~360 messages a
#: second), over the 60 s the issue asks for with room for every kill on a busy machine
SPEED = 0.15
PARTITIONS = 16
#: how many partitions each of tracks t0 and t1 owns when both run (rendezvous hashing)
SHARE = [len(rendezvous.share(f"t{k}", PARTITIONS, {"t0", "t1"})) for k in range(2)]
_names = itertools.count()


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
        rows = conn.execute("SELECT aircraft_id, received_at FROM fixes").fetchall()
    keys = set(rows)
    assert len(keys) == len(rows), "a fix stored twice"
    return keys


def fix_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM fixes").fetchone()
    assert row is not None
    return int(row[0])


def flights_per_aircraft(url: str) -> dict[int, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT aircraft_id, count(*) FROM flights GROUP BY 1").fetchall())


def assert_same_flights(url: str, expected: dict[int, int]) -> None:
    got = flights_per_aircraft(url)
    differ = {a: (expected.get(a, 0), got.get(a, 0)) for a in expected.keys() | got.keys()
              if expected.get(a, 0) != got.get(a, 0)}
    if differ:
        with psycopg.connect(url) as conn:
            detail = {a: conn.execute(
                "SELECT count(*), count(DISTINCT flight_id), min(received_at), max(received_at)"
                " FROM fixes WHERE aircraft_id = %s", (a,)).fetchone() for a in list(differ)[:3]}
    assert not differ, (f"{len(differ)} of {len(expected)} aircraft have other flight counts "
                        f"(expected, got): {dict(list(differ.items())[:10])}; fixes of the "
                        f"first ones (count, flights, first, last): {detail}")


@dataclass(frozen=True)
class Reference:
    """The all-in-one run of the workload: what every split run must equal."""

    capture: Path
    fixes: set[tuple[int, Any]]
    flights: dict[int, int]
    messages: int


@pytest.fixture(scope="module")
def reference(testdata: Path, pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    """The real SBS sample (38,112 messages, ~6,800 aircraft) with each line given its own
    receive time over the sample's two snapshots (16 s: a continuous stream when paced, as
    `soar bench split` feeds it), replayed once all-in-one (`soar replay`) for the module."""
    from psycopg.conninfo import make_conninfo

    from soar.bench.split import write_workload

    work = tmp_path_factory.mktemp("reference")
    capture = work / "sbs-sample-timed.txt"
    messages = write_workload(testdata, capture, passes=1)
    name = f"soar_split_ref_{next(_names)}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE soar_template").format(sql.Identifier(name)))
    url = make_conninfo(pg_server.url, dbname=name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    env.update(SOAR_DATABASE_URL=url, SOAR_DATA_DIR=str(work / "data"), SOAR_SHARDS="4")
    done = subprocess.run([sys.executable, "-m", "soar", "replay", str(capture)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    try:
        yield Reference(capture, fix_keys(url), flights_per_aircraft(url), messages)
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


class Cluster:
    """soar processes on loopback sharing one data directory (hence one embedded nats-server,
    unless `nats` names one the test runs itself)."""

    def __init__(self, tmp: Path, db: str, nats: EmbeddedNats | None = None) -> None:
        self.tmp, self.db, self.nats = tmp, db, nats
        self.data = tmp / "data"
        self.http = f"127.0.0.1:{free_port()}"
        self.metrics: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, name: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
        self.metrics.setdefault(name, f"127.0.0.1:{free_port()}")
        env.update(SOAR_DATABASE_URL=self.db, SOAR_LOG_FORMAT="json", SOAR_SHARDS="2",
                   SOAR_DATA_DIR=str(self.data), SOAR_NATS_LEASE_S=str(LEASE_S),
                   SOAR_NATS_PARTITIONS=str(PARTITIONS), SOAR_METRICS_ADDR=self.metrics[name], **extra)
        if self.nats is not None:
            env.update(SOAR_NATS_URL=self.nats.url, SOAR_NATS_TOKEN=self.nats.token or "")
        return env

    def start(self, name: str, args: list[str], **extra: str) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "soar", *args],
                                            env=self.env(name, **extra), stdout=log, stderr=log)

    def start_track(self, k: int) -> None:
        self.start(f"track{k}", ["track"], SOAR_TRACK_ID=f"t{k}")

    def start_web(self) -> None:
        self.start("web", ["web"], SOAR_HTTP_ADDR=self.http)

    def start_ingest(self, replay: list[Path], speed: float | None = None) -> None:
        args = ["ingest", "--replay", *map(str, replay)]
        if speed:
            args += ["--speed", str(speed)]
        self.start("ingest", args)

    def kill(self, name: str) -> None:
        self.procs[name].kill()  # no goodbye: SIGKILL
        self.procs[name].wait()

    def wait_ingest(self, timeout: float) -> None:
        assert self.procs["ingest"].wait(timeout=timeout) == 0, self.logs("ingest")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        failed = []
        for name, proc in self.procs.items():
            try:
                if proc.wait(timeout=60) != 0:
                    failed.append(name)
            except subprocess.TimeoutExpired:
                failed.append(name)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert not failed, "\n".join(f"{n}: {self.logs(n)}" for n in failed)

    def logs(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()[-4000:]

    def metric(self, name: str, metric: str) -> float:
        status, text = fetch(self.metrics[name], "/metrics")
        return sample(text, metric) if status == 200 else -1.0

    def metric_samples(self, name: str, metric: str) -> list[Sample]:
        status, text = fetch(self.metrics[name], "/metrics")
        return samples(text, metric) if status == 200 else []


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


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             during: Callable[[], None] | None = None) -> None:
    """Poll `predicate` (a state, never a duration) until it holds; `timeout` only bounds a
    stuck run so that it fails with a message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if during is not None:
            during()
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.time_limit(400)
def test_split_mode_matches_all_in_one(
    reference: Reference, tmp_path: Path, second_db: str
) -> None:
    # One capture: captures recorded on different days, replayed together, race each other's
    # fix clocks, so their flights would depend on scheduling in either mode. The SBS sample's
    # ~6,800 aircraft spread over both tracks. No SOAR_NATS_URL: the processes share the
    # embedded nats-server under their data directory, and the last one out stops it.
    expected, expected_flights, messages = reference.fixes, reference.flights, reference.messages
    assert len(expected_flights) > 1000

    cluster = Cluster(tmp_path, second_db)
    try:
        cluster.start_track(0)
        cluster.start_track(1)
        cluster.start_web()
        wait_for(lambda: all(cluster.metric(f"track{k}", "soar_track_partitions_owned")
                             == SHARE[k] for k in range(2)), 120, "both tracks to own their share")
        cluster.start_ingest([reference.capture])
        cluster.wait_ingest(180)
        wait_for(lambda: fix_count(second_db) >= len(expected), 120, "the tracks to commit")
        wait_for(lambda: fetch(cluster.http, "/healthz")[0] == 200, 60, "soar web")
        received = 0.0
        for k in range(2):
            addr = cluster.metrics[f"track{k}"]
            status, text = fetch(addr, "/metrics")
            assert status == 200, text
            received += sample(text, "soar_track_envelopes_received_total")
            assert sample(text, "soar_fixes_processed_total") > 0
            assert fetch(addr, "/readyz")[0] == 200
            assert fetch(addr, "/api/aircraft")[0] == 404
            tree = json.loads(fetch(addr, "/healthz")[1])["tree"]
            assert "broker" in json.dumps(tree)
        # every envelope reached a track (at least once: a message whose acknowledgement is
        # late comes again; the fixes below are each stored once all the same)
        assert received >= messages
        pid = EmbeddedNats(cluster.data).pid
        assert pid is not None
    finally:
        cluster.stop()
    assert fix_keys(second_db) == expected
    assert_same_flights(second_db, expected_flights)
    # the last process out stopped the shared server
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)


def test_ingest_serves_metrics_health_and_readiness(tmp_path: Path, second_db: str) -> None:
    cluster = Cluster(tmp_path, second_db)
    try:
        # no feed configured and no capture: it waits for feeds and signals
        cluster.start("ingest", ["ingest"])
        addr = cluster.metrics["ingest"]
        wait_for(lambda: fetch(addr, "/readyz")[0] == 200, 60, "soar ingest's /readyz")
        status, body = fetch(addr, "/healthz")
        assert status == 200
        assert "publisher" in json.dumps(json.loads(body)["tree"])
        status, text = fetch(addr, "/metrics")
        assert status == 200
        running = {s.labels["task"] for s in samples(text, "soar_task_running") if s.value == 1}
        assert "publisher" in running
    finally:
        cluster.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server the test owns (so that it can SIGKILL and restart it)."""
    server = EmbeddedNats(tmp_path / "broker")
    server.start()
    try:
        yield server
    finally:
        pid = server.pid
        server.stop()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.time_limit(600)
def test_continuous_load_with_every_role_killed_once(
    reference: Reference, tmp_path: Path, second_db: str, nats_server: EmbeddedNats
) -> None:
    """The capture streamed without pause for over 60 s (about 360 messages a second); a
    track, the ingest, the web and the nats-server itself are each SIGKILLed and restarted on
    the way. The killed track stays away longer than its lease: the other takes its partitions
    over, and gives them back when it returns. At the end: the fixes and flights of the
    all-in-one run, every fix once, and the unacknowledged messages bounded all along."""
    expected, expected_flights = reference.fixes, reference.flights
    cluster = Cluster(tmp_path, second_db, nats=nats_server)
    capture = reference.capture
    unacked_seen: list[float] = []  # fed to a track's pipeline, not yet committed
    pending_seen: list[float] = []  # JetStream's count per consumer: those, and held ones

    def watch() -> None:
        for k in range(2):
            value = cluster.metric(f"track{k}", "soar_track_unacked_messages")
            if value >= 0:
                unacked_seen.append(value)
            for s in cluster.metric_samples(f"track{k}", "soar_track_consumer_ack_pending"):
                pending_seen.append(s.value)

    def committed_more(than: int) -> Callable[[], bool]:
        return lambda: fix_count(second_db) > than

    def owned(k: int) -> float:
        return cluster.metric(f"track{k}", "soar_track_partitions_owned")

    try:
        cluster.start_track(0)
        cluster.start_track(1)
        cluster.start_web()
        wait_for(lambda: all(owned(k) == SHARE[k] for k in range(2)), 120,
                 "both tracks to own their share")
        cluster.start_ingest([capture], speed=SPEED)

        wait_for(committed_more(len(expected) // 10), 120, "a tenth of the fixes", watch)
        assert cluster.procs["ingest"].poll() is None, "the capture ended before the ingest's kill"
        cluster.kill("ingest")
        cluster.start_ingest([capture], speed=SPEED)  # resumes where its stored ones end

        now = fix_count(second_db)
        wait_for(committed_more(now + 300), 120, "traffic after the ingest's restart", watch)
        cluster.kill("web")
        cluster.start_web()
        wait_for(lambda: fetch(cluster.http, "/healthz")[0] == 200, 60, "the web back", watch)

        now = fix_count(second_db)
        wait_for(committed_more(now + 300), 120, "traffic before the broker's kill", watch)
        pid = nats_server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(300):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        nats_server.start()  # same port and store: the clients reconnect by themselves

        now = fix_count(second_db)
        wait_for(committed_more(now + 300), 180, "traffic after the broker's restart", watch)
        assert cluster.procs["ingest"].poll() is None, "the capture ended before the track's kill"
        cluster.kill("track1")
        # gone longer than the lease: track 0 takes every partition over
        wait_for(lambda: owned(0) == PARTITIONS, 60, "track 0 to take track 1's over", watch)
        now = fix_count(second_db)
        wait_for(committed_more(now + 300), 120, "track 0 committing for both", watch)
        cluster.start_track(1)
        wait_for(lambda: owned(1) == SHARE[1] and owned(0) == SHARE[0], 120,
                 "the partitions given back to track 1", watch)

        cluster.wait_ingest(300)
        wait_for(lambda: fix_count(second_db) >= len(expected), 180, "every fix", watch)
        wait_for(lambda: all(cluster.metric(f"track{k}", "soar_track_unacked_messages") == 0
                             for k in range(2)), 120, "every message committed", watch)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n--- track0\n{cluster.logs('track0')[-1500:]}\n--- track1\n"
            f"{cluster.logs('track1')[-1500:]}\n--- ingest\n{cluster.logs('ingest')[-1500:]}"
        ) from None
    finally:
        cluster.stop()
    got = fix_keys(second_db)
    missing, extra = expected - got, got - expected
    assert not missing and not extra, (
        f"{len(missing)} missing, {len(extra)} extra of {len(expected)}; "
        f"first missing {sorted(missing)[:3]}")
    assert_same_flights(second_db, expected_flights)
    assert unacked_seen and pending_seen, "the unacknowledged-message metrics were never read"
    # a track fetches while below its bound: at most one fetch over it, whatever the partition
    assert max(unacked_seen) <= MAX_UNACKED + FETCH_BATCH
    assert max(pending_seen) <= MAX_UNACKED + FETCH_BATCH + MAX_HELD
