"""`soar bench split`: its workload is the real SBS capture, its quantiles are Prometheus', and a
short run goes feed -> ingest -> JetStream -> tracks -> committed and reports every run."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from soar.bench import split as bench
from soar.ingest.capture import CaptureStats, iter_capture
from soar.protocols import sbs


def test_workload_is_the_sample_in_passes_with_increasing_receive_times(
    testdata: Path, tmp_path: Path
) -> None:
    capture = tmp_path / "workload.txt"
    written = bench.write_workload(testdata, capture, 3)
    stats = CaptureStats()
    envelopes = list(iter_capture(capture, stats=stats))
    assert stats.rejected == 0
    assert written == len(envelopes) == 3 * 38_112  # the capture's own line count (its README)
    # every envelope its own receive time (a fix key of its own), in file order
    stamps = [env.received_us for env in envelopes]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    # each pass is the sample again, 16 s later: the same aircraft, the same lines but for
    # their times
    first, second = envelopes[:38_112], envelopes[38_112:2 * 38_112]
    assert second[0].received_us - first[0].received_us == bench.PASS_SHIFT_S * 1_000_000

    def idents(batch: list[Any]) -> set[str]:
        found = set()
        for env in batch:
            parsed = sbs.parse_line(env.data.decode())
            if isinstance(parsed, sbs.SbsMessage):
                found.add(parsed.icao)
        return found

    assert idents(first) == idents(second)
    assert len(idents(first)) == 6_827
    strip = re.compile(rb"\d{4}/\d\d/\d\d,\d\d:\d\d:\d\d\.\d{3}")
    assert [strip.sub(b"", e.data) for e in first] == [strip.sub(b"", e.data) for e in second]


def test_quantiles_interpolate_within_buckets_as_prometheus_does() -> None:
    counts = [0] * len(bench.BUCKETS)
    counts[bench.bucket_index(0.07)] = 50   # (0.05, 0.1]
    counts[bench.bucket_index(0.3)] = 50    # (0.25, 0.5]
    assert bench.quantile_ms(counts, 0.5) == pytest.approx(100.0)
    assert bench.quantile_ms(counts, 0.99) == pytest.approx(250 + 250 * 49 / 50)
    assert bench.quantile_ms([0] * len(bench.BUCKETS), 0.99) is None
    overflow = [0] * len(bench.BUCKETS)
    overflow[bench.bucket_index(100.0)] = 1  # beyond the last bound: answered with it
    assert bench.quantile_ms(overflow, 0.99) == 30_000.0


#: a workload of a few thousand envelopes: the runs are mostly their processes' start, and the
#: bench's own figures (`make bench`) come from a workload sized by --seconds
QUICK_ENVELOPES = 3000


@pytest.mark.slow
def test_short_run_reports_every_run_with_positive_rates_and_the_same_fixes(
    pg_server: Any, testdata: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    env.update(SOAR_TESTDATA=str(testdata))
    # the bench makes (and drops) a database per run on this server; the stream has the
    # default 64 partitions, whose fetches together may ask for more than a track's bound
    done = subprocess.run([sys.executable, "-m", "soar.bench.split", "--envelopes",
                           str(QUICK_ENVELOPES), "--json", f"--database-url={pg_server.url}"],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result) == {"all_in_one", "track_1", "track_2"}
    for run in result.values():
        assert set(run) == {"rate", "p99_commit_ms"}
        assert run["rate"] > 0
        assert run["p99_commit_ms"] is not None and run["p99_commit_ms"] > 0
    # the table: the same envelopes and the same fixes committed by every run
    rows = {m.group(1): (int(m.group(2)), int(m.group(3)))
            for m in re.finditer(r"^(all_in_one|track_1|track_2)\s+(\d+)\s.*\s(\d+)$",
                                 done.stdout, re.M)}
    assert len(rows) == 3, done.stdout
    assert len(set(rows.values())) == 1, rows
    assert {envelopes for envelopes, _fixes in rows.values()} == {QUICK_ENVELOPES}
    assert "WARNING" not in done.stdout

