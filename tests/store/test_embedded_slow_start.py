"""A new embedded cluster whose first start takes longer than pgserver's 10 s still starts.

On a busy machine `soar run` exited 2 at its very first start: pgserver ran pg_ctl with a
10 s limit while the server it had launched was still coming up. Reproduced here for real by
giving pgserver's pg_ctl a limit no start can meet; the server it launches goes on starting.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soar.store.embedded import TEST_SETTINGS, EmbeddedPostgres, postmaster_pid

pytestmark = pytest.mark.slow


def test_a_first_start_slower_than_pgservers_limit_is_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pgserver.postgres_server as pgserver_server

    original = pgserver_server.pg_ctl
    starts: list[str] = []

    def impatient_pg_ctl(args: list[str], **kwargs: Any) -> Any:
        if "start" in args:
            starts.append("start")
            kwargs["timeout"] = 0.01  # pgserver's 10 s, on a machine far too busy for it
        return original(args, **kwargs)

    monkeypatch.setattr(pgserver_server, "pg_ctl", impatient_pg_ctl)
    base = Path(tempfile.mkdtemp(prefix="soar-slow-pg-"))
    server = EmbeddedPostgres(TEST_SETTINGS)
    try:
        url = server.start(base / "data")
        assert starts == ["start"], "pgserver's own start was the one that timed out"
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        if server.running:
            server.stop()
        assert postmaster_pid((base / "data").resolve()) is None
        shutil.rmtree(base, ignore_errors=True)
