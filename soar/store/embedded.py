"""An embedded PostgreSQL 16 (the `pgserver` package) for running without `SOAR_DATABASE_URL`.

pgserver runs `initdb` / `pg_ctl` from its bundled binaries. As root it runs them as a system
user `pgserver` (created on first use), listens on a Unix socket only (in the data directory
when the path is short enough) and keeps a per-data-directory list of handle-holding pids in
`.handle_pids.json`, stopping the server from an `atexit` hook when the last handle goes.

We use pgserver to initialise and start the cluster, then take over its lifetime: `stop()` runs
`pg_ctl stop -m fast -w` itself (so no postgres process of ours outlives the call) and removes
pgserver's own atexit hook and handle entry, which would otherwise try to stop it a second time.
`pause()` / `resume()` stop and start the same instance on the same data directory, with the
same URL, for outage tests.

All calls block; from trio, call them through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg import sql

log = structlog.get_logger(__name__)

#: Settings for a throwaway test cluster: durability traded for speed.
TEST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


class EmbeddedPostgres:
    """One embedded PostgreSQL cluster in one data directory."""

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        self.settings: dict[str, str] = dict(settings or {})
        self._server: Any = None
        self._data_dir: Path | None = None
        self._url: str | None = None
        self._borrowed = False

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
        """Initialise the cluster if needed, start it and return its connection URL."""
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (every service and
            # container) and falls back to /tmp/runtime-UID, which works: two lines of noise.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from pgserver.postgres_server import get_server
            from pgserver.utils import PostmasterInfo

        data_dir = Path(data_dir).expanduser().resolve()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        # Another soar process (say `make run`, while a user runs `soar replay`) may have the
        # cluster running already: share it, and leave stopping it to the process that started it.
        info = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.is_dir() else None
        self._borrowed = info is not None and info.is_running()
        server = get_server(data_dir, cleanup_mode=None)
        # The lifetime is ours from here: pgserver's atexit hook would race our stop().
        atexit.unregister(server._cleanup)
        atexit.register(self.stop)
        self._server = server
        self._data_dir = data_dir
        self._url = str(server.get_uri())
        self._apply_settings()
        # The caller reports the start (database.embedded_started); sharing another process's
        # server is worth a line of its own: stopping that process stops this one's database.
        (log.info if self._borrowed else log.debug)(
            "embedded_pg.started", data_dir=str(data_dir), url=self._url,
            shared_with_running_server=self._borrowed)
        return self._url

    def pause(self) -> None:
        """Stop the server processes, keeping the instance so `resume()` brings it back."""
        self._pg_ctl_stop()

    def resume(self) -> None:
        """Start the same cluster again after `pause()`; the URL does not change."""
        server = self._require_server()
        with server._lock:
            server.ensure_postgres_running()
        log.debug("embedded_pg.resumed", data_dir=str(self._data_dir))

    def stop(self) -> None:
        """Stop the server and release pgserver's handle. Safe to call twice."""
        server = self._server
        if server is None:
            return
        try:
            if not self._borrowed:
                self._pg_ctl_stop()
        finally:
            server.global_process_id_list.get_and_remove(os.getpid())
            type(server)._instances.pop(server.pgdata, None)
            atexit.unregister(self.stop)
            self._server = None
            log.debug("embedded_pg.stopped", data_dir=str(self._data_dir))

    def _require_server(self) -> Any:
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL not started")
        return self._server

    def _postmaster_running(self) -> bool:
        from pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.data_dir)
        return info is not None and info.is_running()

    def _pg_ctl_stop(self) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        server = self._require_server()
        if not self._postmaster_running():
            return
        # fast: roll back open transactions and disconnect clients (a crash from the clients'
        # point of view), but a clean shutdown for the cluster; -w waits until it is down.
        command = [
            str(POSTGRES_BIN_PATH / "pg_ctl"),
            "-D",
            str(server.pgdata),
            "-w",
            "-m",
            "fast",
            "stop",
        ]
        try:
            subprocess.run(
                command, check=True, capture_output=True, timeout=60, user=server.system_user
            )
        except subprocess.CalledProcessError:
            if self._postmaster_running():
                raise

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
