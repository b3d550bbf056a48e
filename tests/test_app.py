"""The whole process: start `python -m soar`, wait for /readyz, SIGTERM, clean exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import (
    free_port,
    http_get,
    postgres_processes,
    sigterm,
    soar_cli,
    soar_env,
    soar_process,
    wait_ready,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def tmp_path(unshared_tmp_path: Path) -> Path:
    """soar starts its own embedded PostgreSQL under it (see `unshared_tmp_path`)."""
    return unshared_tmp_path


def test_start_ready_metrics_sigterm(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "var"
    env = soar_env(SOAR_DATA_DIR=str(data_dir), SOAR_HTTP_ADDR=f"127.0.0.1:{port}",
                   SOAR_LOG_FORMAT="json", SOAR_SHUTDOWN_DEADLINE="20")
    base = f"http://127.0.0.1:{port}"
    with soar_process(env=env) as proc:
        wait_ready(base, proc, 90)
        status, body = http_get(base + "/healthz", 5)
        assert status == 200
        health = json.loads(body)
        assert health["status"] == "ok"
        tree = health["tree"]
        # one root: the data path's stages and the process's own tasks side by side
        assert tree["name"] == "run" and tree["state"] == "running"
        stages = tree["children"]
        assert {"sources", "decoders", "shards", "writers", "maintenance", "web", "hub",
                "signals", "directory"} <= set(stages)
        assert stages["shards"]["supervisor"]["children"]["shard.0"]["state"] == "running"
        assert stages["web"]["supervisor"]["children"]["web.server"]["state"] == "running"
        status, body = http_get(base + "/metrics", 5)
        assert status == 200
        assert b"soar_task_running" in body
        assert postgres_processes(data_dir), "the embedded PostgreSQL should be running"

        out = sigterm(proc, 60)
        # exit 0 means it drained within SOAR_SHUTDOWN_DEADLINE: past it, soar exits 1
        assert proc.returncode == 0, out[-3000:]
    assert postgres_processes(data_dir) == []
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "shutdown.requested" in names and "soar.stopped" in names
    assert all("task" in e for e in events), "every log line carries the task name"


def test_run_with_replay_streams_the_capture_to_a_websocket_client(testdata: Path) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="soar-rr-") as short:  # PostgreSQL's socket path
        _run_with_replay(Path(short), testdata)


def _run_with_replay(tmp_path: Path, testdata: Path) -> None:
    # `soar run --replay FILE`: the all-in-one process with a capture as its feed, kept open,
    # so the live map shows the capture moving on its own clock.
    import trio
    from trio_websocket import open_websocket_url

    capture = testdata / "ogn" / "soar-flight-descended-out-of-range-then-took-off.txt"
    port = free_port()
    env = soar_env(SOAR_DATA_DIR=str(tmp_path / "var"), SOAR_HTTP_ADDR=f"127.0.0.1:{port}",
                   SOAR_LOG_FORMAT="json", SOAR_SHUTDOWN_DEADLINE="20",
                   SOAR_LIVE_ADDR=f"inproc://soar-run-replay-{port}")
    # at twice real time, the capture's first flight takes 5 minutes to play: the client
    # subscribes long before it is over, however slow the start
    base = f"http://127.0.0.1:{port}"

    async def first_fix() -> dict[str, object]:
        async with open_websocket_url(f"ws://127.0.0.1:{port}/api/live") as ws:
            await ws.get_message()  # connection_status
            bounds = {"north": 53, "south": 50, "east": 6, "west": 2}  # around 51.6 N 3.9 E
            await ws.send_message(json.dumps(
                {"type": "area_bulk", "action": "subscribe", "bounds": bounds}))
            while True:
                message = json.loads(await ws.get_message())
                assert message.get("type") != "error", message
                if message.get("type") == "fix":
                    return dict(message)
                if message.get("type") == "fixes" and message["fixes"]:
                    return dict(message["fixes"][0])

    with soar_process("run", "--replay", str(capture), "--speed", "2", env=env) as proc:
        wait_ready(base, proc, 90)
        fix = trio.run(lambda: _within(120, first_fix))
        assert fix["id"], fix
        # the capture's clock, not the wall clock: the beacons were heard on 2025-12-23
        assert 1766528000_000000 <= int(str(fix["time_us"])) <= 1766532000_000000, fix
        out = sigterm(proc, 60)
        assert proc.returncode == 0, out[-3000:]


async def _within(seconds: float, fn: object) -> dict[str, object]:
    import trio

    with trio.fail_after(seconds):  # a bound on a hang, not a timing assertion
        return await fn()  # type: ignore[operator,no-any-return]


@pytest.mark.parametrize(("args", "says"), [
    (["--replay", "/nonexistent/capture.txt"], "no such capture file"),
    (["--replay", "README.md"], "not a capture format"),
    (["--replay", "README.md", "--speed", "0"], "must be a positive number"),
])
def test_run_replay_refuses_bad_captures_in_one_line_before_starting(
    tmp_path: Path, args: list[str], says: str
) -> None:
    result = soar_cli("run", *args, env={"SOAR_DATA_DIR": str(tmp_path / "var")}, timeout=60,
                      cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert not (tmp_path / "var" / "postgres").exists(), "nothing was started"
