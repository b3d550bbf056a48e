"""The embedded PostgreSQL under attack (issue 18, item 4), with real processes: `python -m soar`
and `soar replay` as subprocesses on an embedded PostgreSQL in a temporary SOAR_DATA_DIR.

- SIGKILL of the postmaster: soar starts it again (with back-off), /readyz comes back, the
  writers spool meanwhile and every fix is stored once; SIGTERM then exits 0.
- SIGKILL of soar itself: its postmaster is left running (an orphan). The next soar start
  finds it (postmaster.pid, process alive, no live holder), stops it and starts its own, which it
  stops at exit: nothing is left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soar.records import Protocol
from soar.store.embedded import EmbeddedPostgres, postmaster_pid
from tests.faults.faultkit import Corpus, Reference, assert_same_as_reference, stored
from tests.ingest.ingest_servers import OGN_TRACE
from tests.support import free_port, postgres_processes

#: a paced replay of the SBS capture (8 s recorded) keeps fixes coming through the outage
SBS_SPEED = "0.5"


@pytest.fixture
def tmp_path(unshared_tmp_path: Path) -> Path:
    """soar starts its own embedded PostgreSQL under it (see `unshared_tmp_path`)."""
    return unshared_tmp_path


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    return env | {"SOAR_DATA_DIR": str(data_dir), "SOAR_LOG_FORMAT": "json",
                  "SOAR_SHUTDOWN_DEADLINE": "30", **extra}


def _wait(condition: Any, timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out = b"".join(stream.read() for stream in (proc.stdout, proc.stderr) if stream)
            raise AssertionError(f"soar exited ({proc.returncode}) waiting for {what}:\n"
                                 + out.decode(errors="replace")[-3000:])
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)



def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _kill_leftovers(pg_data: Path) -> None:
    pid = postmaster_pid(pg_data)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)


def _start_soar(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "soar"], env=_env(data_dir, SOAR_HTTP_ADDR=f"127.0.0.1:{port}"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


@pytest.mark.time_limit(240)
def test_postmaster_killed_under_soar_run_is_restarted_and_sigterm_exits_0(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    pg_data = (data_dir / "postgres").resolve()
    port = free_port()
    ready = f"http://127.0.0.1:{port}/readyz"
    proc = _start_soar(data_dir, port)
    try:
        _wait(lambda: _status(ready) == 200, 120, "/readyz", proc)
        first = postmaster_pid(pg_data)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _wait(lambda: postmaster_pid(pg_data) not in (None, first), 120,
              "a new postmaster", proc)
        _wait(lambda: _status(ready) == 200, 120, "/readyz after the restart", proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
        left_running = postgres_processes(pg_data)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_leftovers(pg_data)
    # before: SIGTERM waited for a database that never came back, and exited 1 after 32 s
    assert proc.returncode == 0, out.decode()[-3000:]
    names = [e["event"] for e in _events(out.decode())]
    assert "database.embedded_down" in names and "database.embedded_restarted" in names
    assert left_running == []


def _socket_dir(pg_data: Path) -> str:
    """The server's socket directory, from its pid file (line 5) once that is complete."""
    lines = (pg_data / "postmaster.pid").read_text().splitlines()
    assert len(lines) >= 8 and lines[4], lines
    return lines[4]


def _fix_count(url: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM fixes").fetchone()
    except psycopg.Error:
        return 0
    return 0 if row is None else int(row[0])


@pytest.mark.time_limit(300)
def test_postmaster_killed_mid_replay_every_fix_stored_once(
    corpus: Corpus, reference: Reference, tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    pg_data = (data_dir / "postgres").resolve()
    log_path = tmp_path / "replay.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "soar", "replay", "--json", "--speed", SBS_SPEED,
             str(corpus[Protocol.SBS].path)],
            env=_env(data_dir), stdout=subprocess.PIPE, stderr=log_file,
        )
    want = reference.keys(Protocol.SBS)
    try:
        # the pipeline runs (so the server is up and migrated) when the replay's first rows land
        _wait(lambda: (pg_data / "postmaster.pid").is_file() and postmaster_pid(pg_data)
              is not None and len((pg_data / "postmaster.pid").read_text().splitlines()) >= 8,
              120, "the embedded PostgreSQL", proc)
        url = f"postgresql://postgres:@/postgres?host={_socket_dir(pg_data)}"
        _wait(lambda: _fix_count(url) > 0, 120, "the first commit", proc)
        first = postmaster_pid(pg_data)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        # the kill hit a replay with work left: the rest went through the outage
        committed_at_kill = _fix_count(url) if postmaster_pid(pg_data) == first else None
        assert proc.poll() is None
        try:
            out, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            server_log = (pg_data / "log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"the replay hung:\n{log_path.read_text()[-4000:]}\n"
                                 f"--- server log:\n{server_log}") from None
        left_running = postgres_processes(pg_data)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_leftovers(pg_data)
    err = log_path.read_bytes()
    assert proc.returncode == 0, err.decode()[-3000:]
    assert committed_at_kill is None or committed_at_kill < len(want)
    names = [e["event"] for e in _events(err.decode())]
    assert "database.embedded_restarted" in names, names
    summary = json.loads(out)
    assert summary["fixes"] >= len(want)
    assert left_running == [], "the replay stops the server it restarted"

    # what the replay stored, read back from its own embedded PostgreSQL
    server = EmbeddedPostgres()
    url = server.start(pg_data)
    try:
        assert_same_as_reference(stored(url), reference, [Protocol.SBS])
    finally:
        server.stop()


@pytest.mark.time_limit(300)
def test_orphan_of_a_killed_soar_is_stopped_by_the_next_start(
    testdata: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    pg_data = (data_dir / "postgres").resolve()
    port = free_port()
    proc = _start_soar(data_dir, port)
    try:
        _wait(lambda: _status(f"http://127.0.0.1:{port}/readyz") == 200, 120, "/readyz", proc)
        orphan = postmaster_pid(pg_data)
        assert orphan is not None
        proc.kill()  # SIGKILL: no atexit, no shutdown
        proc.wait()
        assert postmaster_pid(pg_data) == orphan, "the killed soar's PostgreSQL runs on"

        # the next soar on this data directory: a replay of a real trace
        capture = testdata / OGN_TRACE
        runs = [subprocess.run(
            [sys.executable, "-m", "soar", "replay", "--json", str(capture)],
            env=_env(data_dir), capture_output=True, text=True, timeout=240,
        ) for _ in range(2)]
        left_running = postgres_processes(pg_data)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_leftovers(pg_data)
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    stopped = [e for e in _events(runs[0].stderr) if e["event"] == "embedded_pg.orphan_stopped"]
    assert [e["pid"] for e in stopped] == [orphan]
    assert json.loads(runs[0].stdout)["fixes"] > 0
    # the second run found nothing to stop: the first stopped what it had started
    assert not [e for e in _events(runs[1].stderr) if e["event"] == "embedded_pg.orphan_stopped"]
    assert left_running == []
