"""`soar bench split [--seconds N] [--json]`: split mode's end-to-end rate beside the all-in-one's.

Three runs in one invocation, on one workload, each in fresh processes on this machine:

- **all_in_one**: one process, the capture -> decode -> shards -> committed (the `soar replay`
  path: a `Pipeline` whose source reads the capture file, envelope edges that block).
- **track_1**, **track_2**: `soar ingest --replay FILE` -> JetStream (an embedded nats-server
  of the run's own) -> 1 or 2 `soar track` processes -> committed. Tracks start first and
  are measured once each owns its rendezvous share of the partitions.

Rate = envelopes / time from the first envelope read (the all-in-one source's first batch;
the ingest's `ingest.started` log line) until the last one's rows are committed (the pipeline
drained; every track has received every published envelope and has no message left
unacknowledged, which it acknowledges only once all the message's rows are committed).

p99 commit latency, on the same Prometheus buckets in every run: for the tracks their
`soar_track_commit_delay_seconds` (a message's delivery to the pipeline -> acknowledged, all
its rows committed); for the all-in-one, an envelope handed to the pipeline -> its fix row
committed (sampled). Neither counts the wait before the pipeline takes an envelope: in an
unpaced replay that is the backlog (the file, or the stream), not the pipeline.

The workload is the real SBS capture (38,112 lines: two snapshots of the ADSBHub feed 8 s
apart, 6,827 aircraft), repeated in passes shifted 16 s each so every aircraft keeps reporting
every 8 s, each line prefixed with its own receive time (spread over its snapshot's 8 s, so
every fix has its own key). The number of passes is sized so the all-in-one run takes about
`--seconds`, from a one-pass calibration run of the all-in-one in the same invocation.
`python -m soar.bench.split --envelopes N` runs the workload's first N lines instead, without
calibration: a check that every run works end to end (the tests'), not a measurement.

Everything runs on the same cores: the ingest, the nats-server and PostgreSQL compete with
the tracks, as they would on one machine; the machine's load average is printed beside.

May import: soar.bench.cli, soar.broker, soar.config, soar.hostport, soar.ingest, soar.pipeline,
soar.records, soar.runtime, soar.store, soar.supervisor
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime as dt
import gzip
import itertools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from soar.hostport import free_loopback_port

SBS_SAMPLE = Path("sbs") / "adsbhub-sbs-sample-20260224.txt.gz"
#: one pass of the sample covers 16 s of recorded time (snapshots at +0 s and +8 s)
PASS_SHIFT_S = 16
SNAPSHOT_S = 8
DEFAULT_SECONDS = 20.0
#: the track count the scaling target is about, and the target (issue #14 point 4)
SCALING_TARGET = 1.6
#: `soar_track_commit_delay_seconds`'s buckets (soar.split.COMMIT_DELAY), used for every run
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf)
#: a stuck run fails with a message after this long (it is never a measurement)
RUN_TIMEOUT_S = 900.0
_POLL_S = 0.2
#: a run whose tracks neither receive nor acknowledge anything this long is stuck
STALL_S = 120.0
#: after a run, how long the tracks get to settle their last messages (not measured)
SETTLE_S = 30.0


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    envelopes: int
    seconds: float
    #: commit latencies per bucket of BUCKETS (not cumulative)
    counts: tuple[int, ...]
    fixes: int
    #: partitions a track lost during the run (`lease.lost`, `lease.expired_locally`)
    leases_lost: int = 0
    #: messages the tracks had still not settled SETTLE_S after every fix was committed
    unacked: int = 0
    #: JetStream messages the tracks acknowledged (envelopes / messages: the batch size)
    messages: int = 0

    @property
    def rate(self) -> float:
        return self.envelopes / self.seconds if self.seconds > 0 else 0.0

    @property
    def p99_commit_ms(self) -> float | None:
        return quantile_ms(self.counts, 0.99)


def quantile_ms(counts: Sequence[int], q: float) -> float | None:
    """A quantile from bucket counts, interpolated within its bucket as Prometheus'
    `histogram_quantile` does (the last, open bucket answers with its lower bound)."""
    total = sum(counts)
    if total == 0:
        return None
    wanted = q * total
    seen = 0
    for index, n in enumerate(counts):
        if n and seen + n >= wanted:
            lower = BUCKETS[index - 1] if index else 0.0
            upper = BUCKETS[index]
            if math.isinf(upper):
                return lower * 1000
            return (lower + (upper - lower) * (wanted - seen) / n) * 1000
        seen += n
    return None


def bucket_index(seconds: float) -> int:
    return bisect.bisect_left(BUCKETS, seconds)


# ---------------------------------------------------------------------------------------------
# the workload


def _sample_snapshots(testdata: Path) -> list[tuple[dt.datetime, list[list[str]]]]:
    """The sample's lines as fields, grouped by their generated time, in time order."""
    groups: dict[dt.datetime, list[list[str]]] = {}
    with gzip.open(testdata / SBS_SAMPLE, "rt", encoding="ascii", errors="replace") as f:
        for line in f:
            fields = line.rstrip("\r\n").split(",")
            if len(fields) < 10:
                continue
            moment = dt.datetime.strptime(f"{fields[6]} {fields[7]}", "%Y/%m/%d %H:%M:%S.%f")
            groups.setdefault(moment.replace(tzinfo=dt.UTC), []).append(fields)
    return sorted(groups.items())


def workload_lines(testdata: Path, passes: int) -> Iterator[str]:
    """`passes` passes of the sample, each 16 s after the last, each line with its receive time."""
    snapshots = _sample_snapshots(testdata)
    for p in range(passes):
        for moment, lines in snapshots:
            shifted = moment + dt.timedelta(seconds=p * PASS_SHIFT_S)
            date, clock = shifted.strftime("%Y/%m/%d"), shifted.strftime("%H:%M:%S.%f")[:-3]
            step = dt.timedelta(microseconds=SNAPSHOT_S * 1_000_000 // len(lines))
            for i, fields in enumerate(lines):
                fields = list(fields)
                fields[6], fields[7], fields[8], fields[9] = date, clock, date, clock
                received = shifted + step * i
                yield f"{received:%Y-%m-%dT%H:%M:%S.%f}Z {','.join(fields)}\n"


def write_workload(testdata: Path, path: Path, passes: int, limit: int | None = None) -> int:
    """Writes the workload to `path` (plain text: the reader is what is measured, not gzip);
    with `limit`, only its first `limit` lines."""
    count = 0
    lines = workload_lines(testdata, passes)
    if limit is not None:
        lines = itertools.islice(lines, limit)
    with path.open("w", encoding="ascii") as f:
        for chunk in _chunks(lines, 10_000):
            f.writelines(chunk)
            count += len(chunk)
    return count


def _chunks(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(itertools.islice(lines, size)):
        yield chunk


# ---------------------------------------------------------------------------------------------
# the all-in-one run (a child process: `python -m soar.bench.split --all-in-one ...`)


async def _all_in_one(capture: Path, database_url: str, data_dir: Path) -> dict[str, Any]:
    import trio

    from soar.config import Settings
    from soar.ingest.capture import iter_capture
    from soar.pipeline import EnvelopeSink, Pipeline, SourceSpec
    from soar.records import Protocol
    from soar.runtime import settle_runtime
    from soar.store.writer import CommitReport
    from soar.supervisor import RestartPolicy

    settings = Settings(database_url=database_url, data_dir=data_dir,
                        live_addr=f"inproc://soar-bench-split-{os.getpid()}")
    # (receive stamp, wall time handed to the pipeline) of every 256th envelope: a fix's
    # latency is taken from the mark at or before its stamp, so it is at most 256 envelopes'
    # worth too long, never too short
    stamps: list[int] = []
    handed: list[float] = []
    counts = [0] * len(BUCKETS)
    started: list[float] = []
    sent = 0

    def on_commit(report: CommitReport) -> None:
        if report.table != "fixes":
            return
        committed = report.committed_us / 1e6
        for stamp in report.stamps_us[::16]:
            index = bisect.bisect_right(stamps, stamp) - 1
            if index >= 0:
                counts[bucket_index(committed - handed[index])] += 1

    async def source(sink: EnvelopeSink) -> None:
        nonlocal sent
        envelopes = iter_capture(capture)
        started.append(time.time())
        while batch := await trio.to_thread.run_sync(
                lambda: list(itertools.islice(envelopes, 2000))):
            for i, env in enumerate(batch):
                if i % 256 == 0:
                    stamps.append(env.received_us)
                    handed.append(time.time())
                await sink.send(env)
            sent += len(batch)

    pipeline = Pipeline(settings, database_url,
                        sources=[SourceSpec("bench", Protocol.SBS, source, RestartPolicy.TEMPORARY)],
                        block_envelopes=True)
    pipeline.commit_hooks.append(on_commit)
    await pipeline.open()
    settle_runtime()
    try:
        await pipeline.run()
    finally:
        await pipeline.close()
    finished = time.time()
    return {"envelopes": sent, "seconds": finished - started[0], "counts": counts}


def run_all_in_one(capture: Path, database_url: str, work: Path) -> Result:
    data_dir = work / "all-in-one"
    data_dir.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "soar.bench.split", "--all-in-one", str(capture),
         f"--database-url={database_url}", f"--data-dir={data_dir}"],
        env=_child_env(), capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the all-in-one run failed:\n{done.stderr.decode()[-4000:]}")
    out = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return Result("all_in_one", int(out["envelopes"]), float(out["seconds"]),
                  tuple(out["counts"]), fix_count(database_url))


# ---------------------------------------------------------------------------------------------
# the split runs: a nats-server, `soar track` x N, `soar ingest --replay`


class SplitRun:
    """soar processes on loopback for one run: their own data directory and nats-server."""

    def __init__(self, work: Path, database_url: str, tracks: int, partitions: int) -> None:
        self.work = work
        self.database_url = database_url
        self.tracks = tracks
        self.partitions = partitions
        self.data = work / "data"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics: dict[str, str] = {}
        self.nats: Any = None
        #: messages the tracks had not settled SETTLE_S after the run was over
        self.unacked = 0

    def start_nats(self) -> None:
        from soar.broker.embedded import EmbeddedNats

        self.nats = EmbeddedNats(self.work / "broker")
        self.nats.start()

    def env(self, name: str, **extra: str) -> dict[str, str]:
        self.metrics[name] = f"127.0.0.1:{free_loopback_port()}"
        env = _child_env()
        env.update(SOAR_DATABASE_URL=self.database_url, SOAR_DATA_DIR=str(self.data),
                   SOAR_LOG_FORMAT="json", SOAR_NATS_URL=self.nats.url,
                   SOAR_NATS_TOKEN=self.nats.token or "",
                   SOAR_NATS_PARTITIONS=str(self.partitions),
                   SOAR_METRICS_ADDR=self.metrics[name], **extra)
        return env

    def start(self, name: str, args: list[str], **extra: str) -> None:
        log = (self.work / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "soar", *args],
                                            env=self.env(name, **extra), stdout=log, stderr=log)

    def track_names(self) -> list[str]:
        return [f"track{k}" for k in range(self.tracks)]

    def wait_shares(self) -> None:
        from soar.broker import rendezvous

        ids = {f"t{k}" for k in range(self.tracks)}
        want = {f"track{k}": len(rendezvous.share(f"t{k}", self.partitions, ids))
                for k in range(self.tracks)}
        self._wait(lambda: all(self.metric(name, "soar_track_partitions_owned") == share
                               for name, share in want.items()),
                   "every track to own its share of the partitions")

    def run(self, capture: Path, envelopes: int, fixes: int) -> tuple[float, float]:
        """(start, end) wall times of the ingest's replay until every envelope is committed:
        every envelope received and either every message acknowledged or the `fixes` the
        all-in-one run committed from the same input committed here too (the last messages'
        acknowledgement can lag: see `unacked`)."""
        for k in range(self.tracks):
            self.start(f"track{k}", ["track"], SOAR_TRACK_ID=f"t{k}")
        self.wait_shares()
        self.start("ingest", ["ingest", "--replay", str(capture)])

        progress: list[Any] = [None, time.monotonic()]

        def committed() -> bool:
            received = unacked = stored = 0.0
            for name in self.track_names():
                text = self.metrics_text(name)
                if text is None:
                    return False
                received += _sample(text, "soar_track_envelopes_received_total")
                unacked += _sample(text, "soar_track_unacked_messages")
                stored += _sample(text, "soar_store_rows_committed_total", table="fixes")
            self.unacked = int(unacked)
            if (received, unacked, stored) != progress[0]:
                progress[:] = [(received, unacked, stored), time.monotonic()]
            elif time.monotonic() - progress[1] > STALL_S:
                raise RuntimeError(
                    f"no progress for {STALL_S:.0f} s: the tracks received {received:.0f} of "
                    f"{envelopes} envelopes, {unacked:.0f} messages unacknowledged (logs in "
                    f"{self.work})")
            return received >= envelopes and (unacked == 0 or stored >= fixes)

        self._wait(committed, "the tracks to commit every envelope")
        end = time.time()
        self.await_settled()
        if self.procs["ingest"].wait(timeout=RUN_TIMEOUT_S) != 0:
            raise RuntimeError(f"soar ingest failed:\n{self.logs('ingest')}")
        return self.log_time("ingest", "ingest.started"), end

    def await_settled(self) -> None:
        """After the end of a run: until the tracks have settled every message (its flight
        and aircraft rows are written up to `state_batch_age` after its fixes), so that the
        commit delays of the last ones count too; at most SETTLE_S (what is left is `unacked`)."""
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            counts = [self.metric(name, "soar_track_unacked_messages")
                      for name in self.track_names()]
            if min(counts) >= 0:  # every track answered
                self.unacked = int(sum(counts))
                if self.unacked == 0:
                    return
            time.sleep(_POLL_S)

    def commit_counts(self) -> tuple[int, ...]:
        from prometheus_client.parser import text_string_to_metric_families

        cumulative = dict.fromkeys(BUCKETS, 0.0)
        for name in self.track_names():
            for family in text_string_to_metric_families(self.metrics_text(name) or ""):
                for s in family.samples:
                    if s.name == "soar_track_commit_delay_seconds_bucket":
                        cumulative[float(s.labels["le"])] += s.value
        totals = [int(cumulative[b]) for b in BUCKETS]
        return tuple(n - (totals[i - 1] if i else 0) for i, n in enumerate(totals))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:  # what is measured is committed: no need to wait for a full hand-over
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.nats is not None:
            self.nats.stop()

    def metrics_text(self, name: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://{self.metrics[name]}/metrics", timeout=10) as r:
                return str(r.read().decode())
        except (urllib.error.URLError, OSError):
            return None

    def metric(self, name: str, metric: str) -> float:
        text = self.metrics_text(name)
        return _sample(text, metric) if text is not None else -1.0

    def logs(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")[-4000:]

    def log_events(self, name: str, events: set[str]) -> int:
        count = 0
        for line in (self.work / f"{name}.log").read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                count += isinstance(entry, dict) and entry.get("event") in events
        return count

    def leases_lost(self) -> int:
        return sum(self.log_events(name, {"lease.lost", "lease.expired_locally"})
                   for name in self.track_names())

    def log_time(self, name: str, event: str) -> float:
        for line in (self.work / f"{name}.log").read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") == event:
                    return dt.datetime.fromisoformat(entry["timestamp"]).timestamp()
        raise RuntimeError(f"no {event} in the {name} log:\n{self.logs(name)}")

    def _wait(self, predicate: Any, what: str) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() not in (None, 0) or (proc.poll() == 0 and name != "ingest"):
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for "
                                       f"{what}:\n{self.logs(name)}")
            if predicate():
                return
            time.sleep(_POLL_S)
        raise RuntimeError(f"timed out waiting for {what}")


def run_split(capture: Path, envelopes: int, fixes: int, database_url: str, work: Path,
              tracks: int, partitions: int) -> Result:
    run = SplitRun(work, database_url, tracks, partitions)
    try:
        run.start_nats()
        start, end = run.run(capture, envelopes, fixes)
        counts = run.commit_counts()
    finally:
        run.stop()
    return Result(f"track_{tracks}", envelopes, end - start, counts, fix_count(database_url),
                  run.leases_lost(), run.unacked, sum(counts))


# ---------------------------------------------------------------------------------------------
# databases: one fresh one per run, on the bench's server


def fix_count(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM fixes").fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def fresh_database(server_url: str, name: str) -> Iterator[str]:
    """A new, empty database on the server of `server_url` (soar migrates it on first use)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def migrated(url: str) -> str:
    from soar.store.migrate import migrate

    migrate(url)
    return url


# ---------------------------------------------------------------------------------------------
# the whole bench


def run(server_url: str, testdata: Path, seconds: float, *, partitions: int | None = None,
        envelopes: int | None = None, progress: Any = None) -> list[Result]:
    """all_in_one, track_1, track_2 on one workload sized to about `seconds` of all-in-one
    (or, with `envelopes`, the workload's first `envelopes` lines: no calibration run)."""
    from soar.config import Settings

    partitions = partitions or Settings().nats_partitions
    say = progress or (lambda _text: None)
    tag = f"{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="soar-bench-split-") as tmp:
        work = Path(tmp)
        capture = work / "workload-sbs.txt"
        if envelopes is not None:
            envelopes = write_workload(testdata, capture, 1, limit=envelopes)
            passes = 1
            with fresh_database(server_url, f"soar_bench_split_all_{tag}") as url:
                all_in_one = run_all_in_one(capture, migrated(url), work / "all")
        else:
            envelopes = write_workload(testdata, capture, 1)
            with fresh_database(server_url, f"soar_bench_split_cal_{tag}") as url:
                calibration = run_all_in_one(capture, migrated(url), work / "cal")
            say(f"calibration: one pass, {calibration.envelopes} envelopes, "
                f"{calibration.rate:,.0f}/s all-in-one")
            passes = max(1, round(seconds * calibration.rate / envelopes))
            if passes > 1:
                envelopes = write_workload(testdata, capture, passes)
                with fresh_database(server_url, f"soar_bench_split_all_{tag}") as url:
                    all_in_one = run_all_in_one(capture, migrated(url), work / "all")
            else:
                all_in_one = calibration
        results = [all_in_one]
        say(f"all_in_one: {all_in_one.rate:,.0f}/s ({passes} passes, {envelopes} envelopes)")
        for tracks in (1, 2):
            with fresh_database(server_url, f"soar_bench_split_t{tracks}_{tag}") as url:
                result = run_split(capture, envelopes, all_in_one.fixes, migrated(url),
                                   work / f"t{tracks}", tracks, partitions)
            results.append(result)
            say(f"{result.name}: {result.rate:,.0f}/s")
    return results


def summary(results: Sequence[Result]) -> dict[str, dict[str, float | None]]:
    return {r.name: {"rate": round(r.rate, 1), "p99_commit_ms": _round(r.p99_commit_ms)}
            for r in results}


def format_table(results: Sequence[Result]) -> str:
    base = results[0].rate or 1.0
    lines = [f"{'run':<11} {'envelopes':>10} {'seconds':>8} {'envelopes/s':>12} "
             f"{'x all-in-one':>12} {'p99 commit':>11} {'fixes':>9}"]
    for r in results:
        p99 = r.p99_commit_ms
        lines.append(f"{r.name:<11} {r.envelopes:>10} {r.seconds:>8.1f} {r.rate:>12,.0f} "
                     f"{r.rate / base:>11.2f}x {'-' if p99 is None else f'{p99:,.0f} ms':>11} "
                     f"{r.fixes:>9}")
    by_name = {r.name: r for r in results}
    if "track_1" in by_name and "track_2" in by_name and by_name["track_1"].rate > 0:
        scaling = by_name["track_2"].rate / by_name["track_1"].rate
        lines.append(f"\n2 tracks / 1 track: {scaling:.2f}x (target >= {SCALING_TARGET}x)")
    load = os.getloadavg()
    lines.append(f"{os.cpu_count()} CPU cores, load average {load[0]:.1f} {load[1]:.1f} "
                 f"{load[2]:.1f} (1, 5, 15 min) at the end")
    for r in results:
        if r.leases_lost:
            lines.append(f"WARNING: {r.name}: {r.leases_lost} partition leases lost during the "
                         "run (restores, redeliveries): its figure is not the data path's alone")
        if r.unacked:
            lines.append(f"NOTE: {r.name}: every fix committed, {r.unacked} messages still "
                         f"unacknowledged {SETTLE_S:.0f} s later (the run ends on the committed "
                         "rows; their commit delays are not counted)")
    for r in results:
        if r.messages:
            lines.append(f"{r.name}: {r.messages} JetStream messages acknowledged, "
                         f"{r.envelopes / r.messages:.1f} envelopes per message")
    if len({r.fixes for r in results}) != 1:
        lines.append("WARNING: the runs committed different fix counts: "
                     + ", ".join(f"{r.name} {r.fixes}" for r in results))
    return "\n".join(lines)


def bench_split(server_url: str, testdata: Path, seconds: float | None, *, as_json: bool,
                envelopes: int | None = None) -> int:
    results = run(server_url, testdata, seconds or DEFAULT_SECONDS, envelopes=envelopes,
                  progress=lambda text: print(text, file=sys.stderr, flush=True))
    print("## Split mode (feed -> ingest -> JetStream -> track -> committed, beside all-in-one)\n")
    print(format_table(results))
    if as_json:
        print(json.dumps(summary(results)))
    return 0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1")
    return value


def _child_env() -> dict[str, str]:
    """The environment without the service's SOAR_* settings (each run sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soar.bench.split", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--database-url", help="a PostgreSQL server the bench may create "
                        "databases on (default: a throwaway embedded one)")
    # a quick check that every run works (the tests'), not a measurement: a workload of a few
    # thousand envelopes is mostly the processes' start
    parser.add_argument("--envelopes", type=_positive_int, default=None, metavar="N",
                        help="the workload's first N envelopes, without calibration "
                        "(instead of --seconds)")
    # internal: the all-in-one run, in this process; one JSON line out
    parser.add_argument("--all-in-one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.all_in_one:
        import trio

        print(json.dumps(trio.run(_all_in_one, args.all_in_one, args.database_url,
                                  args.data_dir)))
        return 0
    from soar.bench.cli import testdata_dir

    with _server(args.database_url) as url:
        return bench_split(url, testdata_dir(), args.seconds, as_json=args.json,
                           envelopes=args.envelopes)


@contextlib.contextmanager
def _server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from soar.store.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="soar-bench-pg-") as tmp:
        embedded = EmbeddedPostgres()
        try:
            yield embedded.start(Path(tmp) / "pg")
        finally:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())

