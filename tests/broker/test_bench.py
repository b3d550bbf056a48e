"""`python -m soar.bench.broker` runs end to end (tiny sizes) and reports every runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from soar.bench.broker import RUNTIMES

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.time_limit(120)
def test_broker_bench_reports_every_runtime(testdata: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "soar.bench.broker", "--envelopes", "2000", "--partitions", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=110,
        env={"SOAR_TESTDATA": str(testdata), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    measured = {(row[0], row[1]) for row in rows if int(row[2]) == 2000}
    for runtime in RUNTIMES:
        assert {(runtime, "publish"), (runtime, "pull+ack")} <= measured, done.stdout
    assert {("codec", "encode"), ("codec", "decode")} <= measured
