"""Every test has a time limit, so a stuck test fails with a stack instead of hanging the suite.

Three layers, because a trio test can be stuck where no exception reaches it:

1. A trio test runs under a watchdog thread on the *real* clock (tests that use `autojump_clock`
   must not trip it by jumping virtual time). At the limit it prints every trio task's stack and
   cancels the whole run — the test body and all its trio fixtures — and the test fails with
   `TestTimeLimit`. That ends every ordinary hang, including fixture teardown that waits on a
   socket.
2. A synchronous test gets SIGALRM at the limit, which raises `TestTimeLimit` in the main thread.
3. Whatever is still running `GRACE_S` after the limit cannot be cancelled (a shielded send to a
   peer that never reads, a C call that does not return): every thread's stack is dumped and
   the process exits non-zero. CI fails fast instead of hanging until its own deadline.

The default limit is 60 s (`SOAR_TEST_TIME_LIMIT` changes it for a run), three times that for
tests marked `slow` (whole processes, replays into PostgreSQL); a test that needs longer says so
with `@pytest.mark.time_limit(seconds)`. Synchronous fixtures get 300 s to set up and as
long to tear down (`SOAR_TEST_FIXTURE_LIMIT`): a session's first test starts PostgreSQL.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import pytest
import trio

DEFAULT_LIMIT_S = float(os.environ.get("SOAR_TEST_TIME_LIMIT", "60"))
#: end-to-end tests marked `slow` (processes, replays into PostgreSQL) on a busy machine
SLOW_LIMIT_S = 3 * DEFAULT_LIMIT_S
#: synchronous fixture set-up or tear-down of one test (session fixtures start servers)
FIXTURE_LIMIT_S = float(os.environ.get("SOAR_TEST_FIXTURE_LIMIT", "300"))
#: how long a cancelled trio test may take to unwind before the process is ended
GRACE_S = float(os.environ.get("SOAR_TEST_TIME_GRACE", "20"))


class TestTimeLimit(Exception):
    """A test ran past its time limit."""

    __test__ = False  # not a test class, whatever its name says


def limit_of(item: pytest.Item) -> float:
    marker = item.get_closest_marker("time_limit")
    if marker is not None:
        return float(marker.args[0])
    if item.get_closest_marker("slow") is not None:
        return SLOW_LIMIT_S
    return DEFAULT_LIMIT_S


#: frames of trio's own scheduler say nothing about where a test is stuck
_INTERNALS = f"{os.sep}trio{os.sep}_core{os.sep}"


def _task_stacks() -> str:
    """Every trio task of the current run, with the frames it is suspended in."""
    lines: list[str] = []

    def walk(task: trio.lowlevel.Task, depth: int) -> None:
        lines.append(f"{'  ' * depth}task {task.name!r}")
        for frame, lineno in task.iter_await_frames():
            code = frame.f_code
            if _INTERNALS in code.co_filename:
                continue
            lines.append(f"{'  ' * depth}  {code.co_filename}:{lineno} in {code.co_name}")
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    walk(trio.lowlevel.current_root_task(), 0)
    return "\n".join(lines)


_capture_manager: Any = None


def _hard_exit(nodeid: str, limit: float) -> None:
    # pytest captures fd 2 while a test runs: give the real terminal back first.
    if _capture_manager is not None:
        with contextlib.suppress(Exception):  # we are leaving anyway: say what we can
            _capture_manager.suspend_global_capture(in_=False)
    sys.stderr.write(
        f"\n\n*** {nodeid} is still running past its time limit ({limit:.0f} s) and cannot be"
        " cancelled; stacks of every thread follow, then the test run ends.\n"
    )
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(3)


def bounded_trio_run(limit: float, nodeid: str) -> Callable[..., Any]:
    """A `trio.run` replacement for pytest-trio's marker: the same run, under a watchdog."""

    def run(async_fn: Callable[[], Any], **kwargs: Any) -> Any:
        expired = threading.Event()
        finished = threading.Event()
        stacks: list[str] = []
        scope = trio.CancelScope()

        async def guarded() -> Any:
            token = trio.lowlevel.current_trio_token()

            def expire() -> None:
                stacks.append(_task_stacks())
                scope.cancel()

            def watchdog() -> None:
                if finished.wait(limit):
                    return
                expired.set()
                try:
                    token.run_sync_soon(expire)
                except trio.RunFinishedError:
                    return
                if not finished.wait(GRACE_S):
                    _hard_exit(nodeid, limit)

            thread = threading.Thread(target=watchdog, name=f"time limit {nodeid}", daemon=True)
            thread.start()
            with scope:
                return await async_fn()
            return None

        try:
            result = trio.run(guarded, **kwargs)
        except BaseException as exc:
            finished.set()
            if expired.is_set():
                raise TestTimeLimit(_message(limit, stacks)) from exc
            raise
        finished.set()
        if expired.is_set():
            raise TestTimeLimit(_message(limit, stacks))
        return result

    return run


def _message(limit: float, stacks: list[str]) -> str:
    dump = stacks[0] if stacks else "(no stacks: the run ended as it was cancelled)"
    return f"the test ran past its time limit of {limit:.0f} s; trio tasks then:\n{dump}"


def pytest_configure(config: pytest.Config) -> None:
    global _capture_manager
    _capture_manager = config.pluginmanager.getplugin("capturemanager")
    config.addinivalue_line(
        "markers", "time_limit(seconds): this test's time limit (default 60 s)"
    )


@pytest.hookimpl(trylast=True)  # after pytest-trio has marked the async tests
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and item.get_closest_marker("trio") is not None:
            # Prepended, so pytest-trio takes this marker's `run` before the automatic one.
            item.add_marker(
                pytest.mark.trio(run=bounded_trio_run(limit_of(item), item.nodeid)), append=False
            )


def _alarm(limit: float, what: str, signum: int, frame: Any) -> None:
    raise TestTimeLimit(
        f"the {what} ran past its time limit of {limit:.0f} s; it was here:\n"
        + "".join(traceback.format_list(_own_frames(traceback.extract_stack(frame))))
    )


def _own_frames(frames: traceback.StackSummary) -> list[traceback.FrameSummary]:
    """The frames below pytest's own: where the test and the code it called were."""
    outside = [i for i, f in enumerate(frames) if "/_pytest/" in f.filename or "/pluggy/" in f.filename]
    return list(frames[outside[-1] + 1 :] if outside else frames)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, Any, Any]:
    limit = limit_of(item)
    with _backstop(limit + 2 * FIXTURE_LIMIT_S + 2 * GRACE_S, item.nodeid):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    # Synchronous fixtures (an embedded PostgreSQL, reference replays shared by a module) are
    # set up here, before the test's own clock starts; trio fixtures run inside the call.
    with _alarm_for_sync(FIXTURE_LIMIT_S, enabled=True, what="fixture set-up"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    is_trio = item.get_closest_marker("trio") is not None
    with _alarm_for_sync(limit_of(item), enabled=not is_trio):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, Any, Any]:
    with _alarm_for_sync(FIXTURE_LIMIT_S, enabled=True, what="fixture tear-down"):
        return (yield)


class _backstop:
    """The last layer: dump every thread and exit if the test outlives its limit plus grace."""

    def __init__(self, seconds: float, nodeid: str) -> None:
        self.timer = threading.Timer(seconds, _hard_exit, (nodeid, seconds))
        self.timer.daemon = True

    def __enter__(self) -> None:
        self.timer.start()

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()


class _alarm_for_sync:
    def __init__(self, limit: float, *, enabled: bool, what: str = "test") -> None:
        self.limit = limit
        self.what = what
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous: Any = None

    def __enter__(self) -> None:
        if self.enabled:
            self.previous = signal.signal(signal.SIGALRM, partial(_alarm, self.limit, self.what))
            signal.setitimer(signal.ITIMER_REAL, self.limit)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
