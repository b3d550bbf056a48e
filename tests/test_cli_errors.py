"""What a new user sees when something is wrong: one line on stderr, exit 2, nothing started."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from soar.cli import build_parser
from tests.support import soar_cli

UNREACHABLE_DB = "postgresql://nobody@127.0.0.1:1/none"  # would be the error if it got that far


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another program is listening on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


# -- a listen address in use ----------------------------------------------------------------------


def test_run_with_its_http_port_in_use_starts_nothing(taken_port: int, tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    proc = soar_cli("run", env={"SOAR_HTTP_ADDR": f"127.0.0.1:{taken_port}",
                            "SOAR_DATA_DIR": str(data_dir)})
    line = one_line(proc)
    assert line == (f"soar: http_addr: 127.0.0.1:{taken_port} is already in use (another soar "
                    "running?); set SOAR_HTTP_ADDR to a free host:port")
    assert proc.stdout == ""  # not one start-up log line: the check comes first
    assert not data_dir.exists()  # no embedded PostgreSQL was started


@pytest.mark.parametrize(
    ("command", "env", "setting"),
    [
        ("web", {"SOAR_DATABASE_URL": UNREACHABLE_DB}, "http_addr"),
        ("track", {"SOAR_DATABASE_URL": UNREACHABLE_DB}, "metrics_addr"),
        ("ingest", {}, "metrics_addr"),
    ],
)
def test_split_roles_with_their_port_in_use(
    taken_port: int, tmp_path: Path, command: str, env: dict[str, str], setting: str
) -> None:
    env = env | {f"SOAR_{setting.upper()}": f"127.0.0.1:{taken_port}",
                 "SOAR_DATA_DIR": str(tmp_path / "var")}
    line = one_line(soar_cli(command, env=env))
    # the port, not the unreachable database: it was checked before anything else
    assert line.startswith(f"soar: {setting}: 127.0.0.1:{taken_port} is already in use")
    assert f"set SOAR_{setting.upper()} to a free host:port" in line


def test_a_listen_address_that_is_not_local(tmp_path: Path) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("192.0.2.1", 0))
        except OSError:
            pass
        else:  # net.ipv4.ip_nonlocal_bind: any address binds here
            pytest.skip("this host lets a socket bind an address it does not have")
    line = one_line(soar_cli("run", env={"SOAR_HTTP_ADDR": "192.0.2.1:8080",  # TEST-NET-1
                                     "SOAR_DATA_DIR": str(tmp_path / "var")}))
    assert line.startswith("soar: http_addr: cannot listen on 192.0.2.1:8080: ")
    assert not (tmp_path / "var").exists()


# -- bad arguments and settings -------------------------------------------------------------------


@pytest.mark.parametrize("speed", ["0", "-1", "nan", "inf", "fast"])
def test_replay_speed_must_be_a_positive_number(speed: str, tmp_path: Path) -> None:
    line = one_line(soar_cli("replay", "--speed", speed, str(tmp_path / "x.txt"), env={}))
    assert line == (f"soar replay: argument --speed: must be a positive number, got {speed!r} "
                    "(see soar replay --help)")


def test_ingest_speed_is_checked_too(tmp_path: Path) -> None:
    line = one_line(soar_cli("ingest", "--replay", str(tmp_path / "x"), "--speed", "0", env={}))
    assert "--speed: must be a positive number" in line


def test_replay_start_must_be_a_time(tmp_path: Path) -> None:
    line = one_line(soar_cli("replay", "--start", "yesterday", str(tmp_path / "x.txt"), env={}))
    assert "--start: expected an ISO-8601 time" in line


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"SOAR_RECEIVER_LAT": "123", "SOAR_RECEIVER_LON": "8"}, "receiver_lat"),
        ({"SOAR_RECEIVER_LAT": "47", "SOAR_RECEIVER_LON": "181"}, "receiver_lon"),
        ({"SOAR_APRS_SERVER": "::1:14580"}, "aprs_server"),
    ],
)
def test_out_of_range_settings_stop_every_command(env: dict[str, str], key: str) -> None:
    for command in ("run", "web", "replay"):
        args = (command, "capture.txt") if command == "replay" else (command,)
        assert one_line(soar_cli(*args, env=env)).startswith(f"soar: {key}: ")


# -- --help ---------------------------------------------------------------------------------------


def walk(parser: argparse.ArgumentParser, path: str = "soar") -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:  # the commands' one-line help
                yield path, choice
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")


def test_every_argument_has_a_help_text() -> None:
    seen = 0
    for path, action in walk(build_parser()):
        if isinstance(action, argparse._HelpAction):
            continue
        seen += 1
        name = "/".join(action.option_strings) or action.dest or action.metavar
        assert action.help and action.help.strip(), f"{path}: {name} has no help text"
        assert action.help is not argparse.SUPPRESS, f"{path}: {name} is hidden"
    assert seen > 30  # the walk reached the subcommands' arguments


def test_replay_help_documents_the_exit_status() -> None:
    done = subprocess.run([sys.executable, "-m", "soar", "replay", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "exit status:" in done.stdout and "1  nothing in the captures was accepted" in done.stdout
