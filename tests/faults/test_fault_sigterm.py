"""SIGTERM in the middle of `python -m soar replay`: a clean exit 0 within the deadline; the
replay run again completes with every fix stored exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from soar.records import Protocol
from soar.store.embedded import EmbeddedPostgres
from tests.faults.faultkit import (
    Corpus,
    Reference,
    Stored,
    as_url,
    assert_same_as_reference,
    drop_database,
    fix_count,
    fresh_database,
    stored,
)

DEADLINE_S = 20.0


@dataclass
class Interrupted:
    returncode: int
    exit_seconds: float
    events: list[str]
    summary: dict[str, Any]
    committed_at_exit: int
    rerun_returncode: int
    rerun_stderr: str
    result: Stored


def _replay(capture: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "soar", "replay", "--json", *extra, str(capture)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="module")
def interrupted(
    corpus: Corpus, pg_server: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Interrupted]:
    """The SBS capture: replayed, SIGTERM part-way, then replayed again to the end."""
    capture = corpus[Protocol.SBS]
    url = fresh_database(pg_server, "sigterm")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    env |= {
        "SOAR_DATABASE_URL": as_url(url),
        "SOAR_DATA_DIR": str(tmp_path_factory.mktemp("sigterm") / "var"),
        "SOAR_LOG_FORMAT": "json",
        "SOAR_SHARDS": "4",
        "SOAR_SHUTDOWN_DEADLINE": str(DEADLINE_S),
    }
    try:
        # At real speed the sample's second half is recorded 8 s after its first: SIGTERM
        # lands while the replay waits for it, with part of the capture committed.
        proc = _replay(capture.path, env, "--speed", "1")
        try:
            deadline = time.monotonic() + 60
            while fix_count(url) == 0:
                assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
                assert time.monotonic() < deadline, "no fix committed within 60 s"
                time.sleep(0.1)
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=DEADLINE_S + 10)
            took = time.monotonic() - began
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lines = out.decode().splitlines()
        events = [
            json.loads(line).get("event", "")
            for line in err.decode().splitlines() + lines[:-1]
            if line.startswith("{")
        ]
        summary = json.loads(lines[-1]) if lines else {}
        committed = fix_count(url)
        again = _replay(capture.path, env)
        _out, rerun_err = again.communicate(timeout=120)
        yield Interrupted(
            proc.returncode, took, events, summary, committed, again.returncode,
            rerun_err.decode()[-3000:], stored(url),
        )
    finally:
        drop_database(pg_server, url)


def test_sigterm_mid_replay_exits_0_and_the_rerun_stores_every_fix_once(
    interrupted: Interrupted, reference: Reference
) -> None:
    want = reference.keys(Protocol.SBS)
    # exit 0: drained within the deadline (past it, soar exits 1)
    assert interrupted.returncode == 0
    assert "shutdown.requested" in interrupted.events
    assert 0 < interrupted.committed_at_exit < len(want), "SIGTERM did not land mid-replay"
    assert interrupted.summary["fixes"] == interrupted.committed_at_exit, (
        "what the summary reports as committed is what the database has"
    )
    assert interrupted.rerun_returncode == 0, interrupted.rerun_stderr
    result = interrupted.result
    assert result.fix_rows == len(want)
    assert result.fixes[Protocol.SBS] == want


def test_sigterm_mid_replay_then_rerun_gives_the_fault_free_flights(
    interrupted: Interrupted, reference: Reference
) -> None:
    assert_same_as_reference(interrupted.result, reference, [Protocol.SBS])
