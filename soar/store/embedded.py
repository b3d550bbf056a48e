"""An embedded PostgreSQL 16 (the `pgserver` package) for running without `SOAR_DATABASE_URL`.

pgserver runs `initdb` / `pg_ctl` from its bundled binaries. As root it runs them as a system
user `pgserver` (created on first use) and listens on a Unix socket only (in the data directory
when the path is short enough).

pgserver initialises a new cluster (and starts it that first time); every later start, every
stop and the cluster's lifetime are ours (pgserver's atexit hook and handle list are left out:
its handle list keeps the pids of killed processes for ever, it gives a start 10 s, and it takes
a dead postmaster that is still a zombie for a running one). Several soar processes may use one
cluster (`make run`, and a `soar replay` beside it):

- Holders. Each process that uses the cluster is listed in `<data_dir>.holders.json` (pid and
  process start time, so a reused pid is not mistaken for a holder), read and written under an
  exclusive lock on `<data_dir>.lock`. `stop()` stops the cluster only when no other live process
  holds it: the last one out stops it, whichever started it.
- Orphans. A soar killed with SIGKILL leaves its postmaster running and itself listed. At the next
  `start()`, a running postmaster with no live holder is an orphan: it is stopped (`pg_ctl stop -m
  fast`, a clean shutdown; SIGKILL only if that fails) and a fresh one started by this process,
  with this process's settings (`embedded_pg.orphan_stopped`). Adopting it instead would keep
  whatever settings and binaries it was started with.
- Crashes. `restart_if_down()` starts the cluster again when its postmaster has died (SIGKILL,
  OOM killer); `soar.database.Database.supervise` calls it with back-off. Starting can fail for a
  while after a crash (the dead postmaster's backends still hold shared memory; a zombie still
  holds its pid): the caller retries.

`pause()` / `resume()` stop and start the same instance on the same data directory, with the
same URL, for outage tests. All calls block; from trio, call them through
`trio.to_thread.run_sync`.

May import: soar.processes
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg import sql

from soar.processes import has_proc, process_info

log = structlog.get_logger(__name__)

#: Settings for a throwaway test cluster: durability traded for speed.
TEST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}

#: pg_ctl's own wait for a start or a stop (crash recovery after a SIGKILL is part of a start)
PG_CTL_TIMEOUT_S = 60


def _pgserver() -> tuple[Any, Any]:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (every service and
        # container) and falls back to /tmp/runtime-UID, which works: two lines of noise.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from pgserver.postgres_server import get_server
        from pgserver.utils import PostmasterInfo
    return get_server, PostmasterInfo


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the postmaster running on `data_dir`, or None: no pid file, or its process
    is gone (dead; a zombie not reaped yet; the pid reused by a program that is not a postgres
    on this data directory, as after a reboot)."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    process = process_info(pid)
    if process is None or not process.alive:
        return None
    if has_proc() and str(data_dir).encode() not in process.cmdline:
        return None
    return pid


def _started(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot): with the pid, who it is."""
    process = process_info(pid)
    return process.started if process is not None and process.alive else None


class _Holders:
    """`<data_dir>.holders.json`: the live processes using the cluster. Use under `_locked`."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir.with_name(data_dir.name + ".holders.json")

    def _read(self) -> list[dict[str, Any]]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("pid"), int)]

    def live(self) -> list[dict[str, Any]]:
        """The holders still running (the same process: pid and start time)."""
        return [e for e in self._read() if _started(e["pid"]) == e.get("started")]

    def _write(self, entries: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(entries))
        tmp.replace(self.path)

    def add(self, pid: int) -> list[dict[str, Any]]:
        """Add `pid`, drop dead entries; returns the other live holders."""
        others = [e for e in self.live() if e["pid"] != pid]
        self._write([*others, {"pid": pid, "started": _started(pid)}])
        return others

    def remove(self, pid: int) -> list[dict[str, Any]]:
        """Remove `pid`, drop dead entries; returns the live holders left."""
        others = [e for e in self.live() if e["pid"] != pid]
        self._write(others)
        return others


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """The lock of the cluster's lifetime: start, stop, restart, holders. Between processes."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(data_dir.with_name(data_dir.name + ".lock"), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _system_user() -> str | None:
    # pgserver's rule: as root, the server runs as its own `pgserver` user
    return "pgserver" if os.geteuid() == 0 else None


def _pg_ctl(data_dir: Path, *args: str) -> None:
    """Run pg_ctl on `data_dir`; CalledProcessError (what it said in `.output`) on failure.

    Its output goes to a temporary file, not a pipe: a started postmaster inherits the pipe
    and a reader waiting for its end would wait as long as the server runs.
    """
    from pgserver._commands import POSTGRES_BIN_PATH

    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), *args]
    with tempfile.TemporaryFile("w+") as output:
        result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, text=True,
                                timeout=PG_CTL_TIMEOUT_S + 10, user=_system_user(), check=False)
        if result.returncode != 0:
            output.seek(0)
            text = " ".join(output.read().split())[-500:]
            raise subprocess.CalledProcessError(result.returncode, command, text)


def _last_fatal(server_log: Path) -> str:
    try:
        with server_log.open("rb") as f:
            f.seek(max(0, server_log.stat().st_size - 8192))
            tail = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return next((line for line in reversed(tail) if "FATAL:" in line), "")


def _socket_dir_for(data_dir: Path) -> Path:
    """Where pgserver puts the server's socket: the data directory, unless that path is too
    long for a socket name (then a directory under pgserver's runtime path)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from pgserver.postgres_server import PostgresServer
        from pgserver.utils import ensure_prefix_permissions, find_suitable_socket_dir
    socket_dir: Path = find_suitable_socket_dir(data_dir, PostgresServer.runtime_path)
    if _system_user() is not None and socket_dir != data_dir:
        ensure_prefix_permissions(socket_dir)
        socket_dir.chmod(0o777)
    return socket_dir


def _start_postmaster(data_dir: Path, socket_dir: Path | str) -> None:
    """Start the cluster as pgserver does (Unix socket only), waiting until it accepts
    connections. CalledProcessError, with the server's last FATAL line, when it does not."""
    server_log = data_dir / "log"
    try:
        _pg_ctl(data_dir, "-w", "-t", str(PG_CTL_TIMEOUT_S), "-o", '-h ""',
                "-o", f"-k {socket_dir}", "-l", str(server_log), "start")
    except subprocess.CalledProcessError as exc:
        # pg_ctl says "examine the log": the reason is the server's last FATAL line
        fatal = _last_fatal(server_log)
        exc.output = f"{fatal} (pg_ctl: {exc.output})" if fatal else exc.output
        raise


def _start_retrying(data_dir: Path, socket_dir: Path | str) -> None:
    """`_start_postmaster`, again until PG_CTL_TIMEOUT_S have passed: right after a crash the
    dead postmaster (a zombie until reaped) or its last backends can hold the data directory
    for a few seconds."""
    deadline = time.monotonic() + PG_CTL_TIMEOUT_S
    while True:
        try:
            _start_postmaster(data_dir, socket_dir)
            return
        except subprocess.CalledProcessError:
            if postmaster_pid(data_dir) is not None:
                return
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _ready(data_dir: Path) -> bool:
    """The postmaster says it accepts connections: line 8 of postmaster.pid (what pg_ctl -w
    reads) is "ready"."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().split("\n")
    except OSError:
        return False
    return len(lines) > 7 and lines[7].strip() == "ready"


def _get_server_waiting(get_server: Any, data_dir: Path) -> Any:
    """pgserver's handle on `data_dir`. pgserver gives a new cluster's first start 10 s; on a
    busy machine it takes longer, and the process exited 2 with a server that was about to
    be up. Past those 10 s the postmaster pgserver launched is waited for here, then adopted."""
    try:
        return get_server(data_dir, cleanup_mode=None)
    except (subprocess.TimeoutExpired, OSError) as exc:
        # (pgserver reports its timeout by reading the server's log, which a server that has
        # not got that far has not written: then the OSError comes with the timeout behind it)
        if not isinstance(exc, subprocess.TimeoutExpired) and not isinstance(
            exc.__context__, subprocess.TimeoutExpired
        ):
            raise
        from pgserver.postgres_server import PostgresServer

        broken = PostgresServer._instances.pop(data_dir, None)
        if broken is not None:  # its start failed: no handle, no atexit hook of its own
            atexit.unregister(broken._cleanup)
        log.warning("embedded_pg.slow_first_start", data_dir=str(data_dir),
                    wait_s=PG_CTL_TIMEOUT_S)
    if postmaster_pid(data_dir) is None:
        _start_retrying(data_dir, _socket_dir_for(data_dir))
    deadline = time.monotonic() + PG_CTL_TIMEOUT_S
    while not _ready(data_dir):
        if time.monotonic() > deadline or postmaster_pid(data_dir) is None:
            raise RuntimeError(f"the embedded PostgreSQL in {data_dir} did not start: "
                               f"{_last_fatal(data_dir / 'log') or 'no reason in its log'}")
        time.sleep(0.1)
    return get_server(data_dir, cleanup_mode=None)


def _stop_postmaster(data_dir: Path, pid: int) -> None:
    """Stop the postmaster `pid` on `data_dir`: a fast shutdown, else SIGKILL."""
    try:
        _pg_ctl(data_dir, "-w", "-t", str(PG_CTL_TIMEOUT_S), "-m", "fast", "stop")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        if postmaster_pid(data_dir) != pid:
            return  # it is down after all
        log.warning("embedded_pg.kill", pid=pid, reason=str(exc)[:300])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # not our child: nothing to wait on but its pid file entry going stale
        deadline = time.monotonic() + PG_CTL_TIMEOUT_S
        while postmaster_pid(data_dir) == pid and time.monotonic() < deadline:
            time.sleep(0.05)


class EmbeddedPostgres:
    """One embedded PostgreSQL cluster in one data directory."""

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        self.settings: dict[str, str] = dict(settings or {})
        self._server: Any = None
        self._data_dir: Path | None = None
        self._url: str | None = None
        self._socket_dir: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("embedded PostgreSQL not started")
        return self._url

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise RuntimeError("embedded PostgreSQL not started")
        return self._data_dir

    @property
    def running(self) -> bool:
        return self._server is not None and self._postmaster_running()

    def start(self, data_dir: Path) -> str:
        """Initialise the cluster if needed, start it (or share it with the live soar processes
        that hold it; stop it first when it is an orphan) and return its connection URL."""
        get_server, _postmaster_info = _pgserver()
        data_dir = Path(data_dir).expanduser().resolve()
        with _locked(data_dir):
            holders = _Holders(data_dir)
            others = holders.live()
            orphan = postmaster_pid(data_dir) if data_dir.is_dir() else None
            if orphan is not None and not others:
                # A killed soar's server: nobody will ever stop it. Stop it and start our own.
                log.warning("embedded_pg.orphan_stopped", pid=orphan, data_dir=str(data_dir))
                _stop_postmaster(data_dir, orphan)
            if (data_dir / "PG_VERSION").is_file() and postmaster_pid(data_dir) is None:
                # Started here, not by pgserver: pgserver gives a start 10 s (crash recovery
                # on a busy machine takes longer) and takes a dead postmaster that is still a
                # zombie for a running one.
                _start_retrying(data_dir, _socket_dir_for(data_dir))
            server = _get_server_waiting(get_server, data_dir)  # a new cluster: initdb, start
            # The lifetime is ours from here (see the module doc).
            atexit.unregister(server._cleanup)
            server.global_process_id_list.get_and_remove(os.getpid())
            holders.add(os.getpid())
        atexit.register(self.stop)
        self._server = server
        self._data_dir = data_dir
        self._url = str(server.get_uri())
        self._socket_dir = str(server.get_postmaster_info().socket_dir)
        self._apply_settings()
        # The caller reports the start (database.embedded_started); sharing another process's
        # server is worth a line of its own: the last process to stop stops the server.
        (log.info if others else log.debug)(
            "embedded_pg.started", data_dir=str(data_dir), url=self._url,
            shared_with_pids=[e["pid"] for e in others])
        return self._url

    def pause(self) -> None:
        """Stop the server processes, keeping the instance so `resume()` brings it back."""
        self._require_server()
        with _locked(self.data_dir):
            pid = postmaster_pid(self.data_dir)
            if pid is not None:
                _stop_postmaster(self.data_dir, pid)

    def resume(self) -> None:
        """Start the same cluster again after `pause()`; the URL does not change."""
        with _locked(self.data_dir):
            if postmaster_pid(self.data_dir) is None:
                _start_retrying(self.data_dir, self._socket_dir or _socket_dir_for(self.data_dir))
                self._refresh_info()
        log.debug("embedded_pg.resumed", data_dir=str(self._data_dir))

    def restart_if_down(self) -> bool:
        """Start the cluster again if its postmaster is not running (crashed, killed, paused).
        Returns whether it started it (False: it was up, or another holder restarted it).
        Raises CalledProcessError / TimeoutExpired when the start fails; try again later."""
        self._require_server()
        with _locked(self.data_dir):
            if postmaster_pid(self.data_dir) is not None:
                return False
            # on the same socket directory, so the URL stays
            _start_postmaster(self.data_dir, self._socket_dir or _socket_dir_for(self.data_dir))
            self._refresh_info()
        return True

    def _refresh_info(self) -> None:
        # pgserver's handle answers get_uri() & co. from the pid file it read last
        _get_server, postmaster_info = _pgserver()
        self._require_server()._postmaster_info = postmaster_info.read_from_pgdata(self.data_dir)

    def postmaster_alive(self) -> bool:
        """Whether the postmaster runs (a cheap check: the pid file and /proc)."""
        return postmaster_pid(self.data_dir) is not None

    def stop(self) -> None:
        """Leave the cluster: stop it unless another live process holds it. Safe to call twice."""
        server = self._server
        if server is None:
            return
        left: list[dict[str, Any]] = []
        try:
            with _locked(self.data_dir):
                left = _Holders(self.data_dir).remove(os.getpid())
                pid = postmaster_pid(self.data_dir)
                if pid is not None and not left:
                    _stop_postmaster(self.data_dir, pid)
        finally:
            type(server)._instances.pop(server.pgdata, None)
            atexit.unregister(self.stop)
            self._server = None
            log.debug("embedded_pg.stopped", data_dir=str(self._data_dir),
                      left_running_for=[e["pid"] for e in left])

    def _require_server(self) -> Any:
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL not started")
        return self._server

    def _postmaster_running(self) -> bool:
        return postmaster_pid(self.data_dir) is not None

    def _apply_settings(self) -> None:
        if not self.settings:
            return
        with psycopg.connect(self.url, autocommit=True) as conn:
            for name, value in self.settings.items():
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(value)
                    )
                )
            conn.execute("SELECT pg_reload_conf()")
