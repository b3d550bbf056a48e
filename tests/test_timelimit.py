"""The time limit itself: a stuck test fails with its stacks, and the next test still runs.

Each case runs pytest in a child process with a 2 s limit on a tiny test file, so a broken
limit shows up here as a failure (the child is killed after 90 s), never as a hang of the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: the checkout, on the child's path so that it imports the plugin as the suite does
REPO = Path(__file__).resolve().parent.parent

STUCK_TESTS = '''
import socket
import time

import pytest
import trio


async def test_stuck_in_body():
    await trio.sleep_forever()


@pytest.fixture
async def teardown_waits_for_a_peer(nursery):
    left, right = socket.socketpair()
    yield
    # a receive that never completes: nobody writes to `right`
    await trio.SocketStream(trio.socket.from_stdlib_socket(left)).receive_some(1)


async def test_stuck_in_fixture_teardown(teardown_waits_for_a_peer):
    assert True


async def test_autojump_clock_does_not_trip_it(autojump_clock):
    await trio.sleep(3600)  # an hour of virtual time, no real time


def test_stuck_sync():
    time.sleep(3600)


@pytest.mark.time_limit(30)
async def test_after_the_stuck_ones_still_runs():
    await trio.sleep(0.01)
'''

SHIELDED = '''
import trio


async def test_shielded_for_ever():
    with trio.CancelScope(shield=True):
        await trio.sleep_forever()
'''


def _run(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_stuck.py").write_text(source)
    (tmp_path / "conftest.py").write_text(
        "pytest_plugins = ['tests.timelimit']\n"
    )
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "SOAR_TEST_TIME_LIMIT": "2",
           "SOAR_TEST_TIME_GRACE": "3"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "trio_mode=true",
         "-o", "addopts=", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=90, cwd=tmp_path,
    )


@pytest.mark.time_limit(120)
def test_stuck_tests_fail_with_stacks_and_the_rest_runs(tmp_path: Path) -> None:
    result = _run(tmp_path, STUCK_TESTS)
    out = result.stdout + result.stderr
    assert "3 failed, 2 passed" in out, out
    assert "FAILED test_stuck.py::test_stuck_in_body - tests.timelimit.TestTimeLimit" in out, out
    assert "FAILED test_stuck.py::test_stuck_in_fixture_teardown" in out, out
    assert "FAILED test_stuck.py::test_stuck_sync - tests.timelimit.TestTimeLimit" in out, out
    # the trio task dump names where the stuck test was waiting
    assert "in test_stuck_in_body" in out, out
    assert "in teardown_waits_for_a_peer" in out, out


@pytest.mark.time_limit(120)
def test_an_uncancellable_test_ends_the_run_with_every_stack(tmp_path: Path) -> None:
    result = _run(tmp_path, SHIELDED)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "cannot be cancelled" in result.stderr
    assert "test_shielded_for_ever" in result.stderr


def test_the_suite_loads_the_limit_by_its_package_name(pytestconfig: pytest.Config) -> None:
    """tests/conftest.py names the plugin `tests.timelimit`: every test of this suite has a limit."""
    import tests.timelimit

    assert pytestconfig.pluginmanager.get_plugin("tests.timelimit") is tests.timelimit
    assert any(m.startswith("time_limit") for m in pytestconfig.getini("markers"))
