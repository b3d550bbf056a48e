"""soar.processes on real processes: a running one, a zombie, one that is gone."""

from __future__ import annotations

import os
import subprocess
import sys

from soar.processes import pid_alive, process_info, wait_dead


def test_a_running_process_is_alive_and_known_by_its_command_line() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        # Popen returns once exec has begun, before the kernel has the new command line in
        # place (read then, /proc/PID/cmdline is empty): wait for the child to say it runs
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        info = process_info(child.pid)
        assert info is not None and info.alive and pid_alive(child.pid)
        assert b"sys.stdin.read()" in info.cmdline
        assert info.started > 0
        assert process_info(child.pid) == info  # the same process: the same start time
        own = process_info(os.getpid())
        assert own is not None and own.started <= info.started
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=60)


def test_a_zombie_is_not_alive_and_wait_dead_reaps_it() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    # not reaped: it stays a zombie until wait_dead collects it
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    info = process_info(child.pid)
    assert info is not None and info.state == "Z" and not info.alive
    assert not pid_alive(child.pid)
    assert wait_dead(child.pid, 60)
    assert process_info(child.pid) is None  # reaped: gone from /proc
    child.returncode = 0  # reaped behind Popen's back


def test_no_such_process() -> None:
    never = 2**22 + 1  # above the kernel's highest possible pid_max: no process has it
    assert process_info(never) is None
    assert not pid_alive(never)
    assert wait_dead(never, 0.0)
