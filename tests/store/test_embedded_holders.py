"""Who stops the embedded PostgreSQL when several processes use it (`make run` and a `soar
replay` beside it): the last live holder, whichever started it; a killed holder counts for
nothing, and the server it leaves behind is an orphan the next start stops. Real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from soar.store.embedded import EmbeddedPostgres, postmaster_pid

HOLDER = """
import sys
from pathlib import Path
import structlog
from soar.store.embedded import EmbeddedPostgres
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
pg = EmbeddedPostgres()
pg.start(Path(sys.argv[1]))
print("up", flush=True)
sys.stdin.read()  # until the test closes our stdin
pg.stop()
"""


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # not under pytest's tmp_path: the server runs as the `pgserver` user when we are root
    base = Path(tempfile.mkdtemp(prefix="soar-test-holders-"))
    try:
        yield base / "postgres"
    finally:
        pid = postmaster_pid(base / "postgres")
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _holder(data_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(data_dir)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    return proc


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=120) == 0


@pytest.mark.time_limit(180)
def test_the_last_live_holder_stops_the_server_whoever_started_it(data_dir: Path) -> None:
    first = _holder(data_dir)
    server = postmaster_pid(data_dir)
    assert server is not None
    mine = EmbeddedPostgres()
    with capture_logs() as logs:
        mine.start(data_dir)
    assert [e["shared_with_pids"] for e in logs if e["event"] == "embedded_pg.started"] \
        == [[first.pid]]
    assert postmaster_pid(data_dir) == server, "shared, not restarted"
    _release(first)  # the process that started it leaves first: we still use it
    assert postmaster_pid(data_dir) == server
    mine.stop()  # the last one out
    assert postmaster_pid(data_dir) is None
    holders = json.loads(data_dir.with_name("postgres.holders.json").read_text())
    assert holders == []


@pytest.mark.time_limit(180)
def test_a_killed_holder_leaves_an_orphan_the_next_start_stops(data_dir: Path) -> None:
    killed = _holder(data_dir)
    orphan = postmaster_pid(data_dir)
    killed.kill()
    killed.wait()
    assert postmaster_pid(data_dir) == orphan, "a SIGKILLed holder stops nothing"
    mine = EmbeddedPostgres()
    with capture_logs() as logs:
        mine.start(data_dir)
    try:
        assert [e["pid"] for e in logs if e["event"] == "embedded_pg.orphan_stopped"] == [orphan]
        fresh = postmaster_pid(data_dir)
        assert fresh is not None and fresh != orphan
        # a second process now shares ours, and leaving it does not stop ours
        other = _holder(data_dir)
        _release(other)
        assert postmaster_pid(data_dir) == fresh
    finally:
        mine.stop()
    assert postmaster_pid(data_dir) is None
