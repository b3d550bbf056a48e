"""Other processes as /proc shows them: whether one runs, who it is, waiting for it to end.

The embedded PostgreSQL and the embedded nats-server both outlive the process that started them
and are shared by whoever comes next, so both ask the same questions of a pid they read from a
file: is it alive (a zombie, a dead child its starter has not reaped, is not), and is it still
the same process (its start time and command line, as a pid is reused).

Without /proc (not Linux) only liveness is known, by signal 0.

May import: nothing of soar
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")

#: /proc states of a process that has ended: a zombie, and one being torn down
_ENDED = ("Z", "X")


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What /proc says of one process; without /proc: state "?", started 0, cmdline b""."""

    state: str  # R, S, D, Z, ... (proc(5))
    started: int  # clock ticks since boot: with the pid, which process this is
    cmdline: bytes  # the arguments, each ended by a NUL

    @property
    def alive(self) -> bool:
        return self.state not in _ENDED


def has_proc() -> bool:
    return _PROC.is_dir()


def process_info(pid: int) -> ProcessInfo | None:
    """What /proc says of process `pid`, or None when there is none."""
    if not has_proc():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # it exists, as another user's
        return ProcessInfo("?", 0, b"")
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        cmdline = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:  # no such process, or it ended between the two reads
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return ProcessInfo(fields[0], int(fields[19]), cmdline)


def pid_alive(pid: int) -> bool:
    """Process `pid` is running, and not a zombie (a dead child its starter has not reaped)."""
    info = process_info(pid)
    return info is not None and info.alive


def wait_dead(pid: int, timeout: float) -> bool:
    """Block until process `pid` has ended (reaping it when it is our child), for at most
    `timeout` seconds; whether it has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaps it when it is our child
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)
