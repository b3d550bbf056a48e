"""The whole process: start `python -m soar`, wait for /readyz, SIGTERM, clean exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import postgres_processes

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()



def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "exited"
        try:
            status, _ = get(base + "/readyz")
        except OSError:
            status = 0
        if status == 200:
            return
        time.sleep(0.2)
    raise AssertionError("soar never became ready")


def test_start_ready_metrics_sigterm(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    env |= {"SOAR_DATA_DIR": str(data_dir), "SOAR_HTTP_ADDR": f"127.0.0.1:{port}",
            "SOAR_LOG_FORMAT": "json", "SOAR_SHUTDOWN_DEADLINE": "20"}
    proc = subprocess.Popen([sys.executable, "-m", "soar"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        status, body = get(base + "/healthz")
        assert status == 200
        health = json.loads(body)
        assert health["status"] == "ok"
        assert health["tree"]["shards"]["children"]
        status, body = get(base + "/metrics")
        assert status == 200
        assert b"soar_task_running" in body
        assert postgres_processes(data_dir), "the embedded PostgreSQL should be running"

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        # exit 0 means it drained within SOAR_SHUTDOWN_DEADLINE: past it, soar exits 1
        assert proc.returncode == 0, out.decode()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert postgres_processes(data_dir) == []
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "shutdown.requested" in names and "soar.stopped" in names
    assert all("task" in e for e in events), "every log line carries the task name"
