"""Shared fixtures: where the real captures are, and one embedded PostgreSQL per test session."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# Every test has a time limit (tests/timelimit.py).
pytest_plugins = ["tests.timelimit"]

if TYPE_CHECKING:
    from soar.store.embedded import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent


def testdata_dir() -> Path:
    return Path(os.environ.get("SOAR_TESTDATA", str(REPO.parent / "shared" / "data")))


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The real captures (../shared/data or $SOAR_TESTDATA); tests that need them skip without."""
    path = testdata_dir()
    if not path.is_dir():
        pytest.skip(f"real captures not found at {path} (set SOAR_TESTDATA); CI always has them")
    return path


# One embedded PostgreSQL for the whole session; a fresh database (from a migrated
# template) per test.
TEMPLATE = "soar_template"
_numbers = itertools.count()


def database_url(url: str, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(url, dbname=dbname)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    # Imported here, not at the top: the pure tests need neither psycopg nor PostgreSQL.
    import psycopg
    from psycopg import sql

    from soar.store.embedded import TEST_SETTINGS, EmbeddedPostgres
    from soar.store.migrate import migrate

    # Not under pytest's tmp_path: pytest resets its base directory to mode 0700 whenever
    # another pytest run starts, and the server runs as the `pgserver` user when we are root.
    base = Path(tempfile.mkdtemp(prefix="soar-test-pg-"))
    server = EmbeddedPostgres(TEST_SETTINGS)
    server.start(base / "data")
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
        migrate(database_url(server.url, TEMPLATE))
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def db_url(pg_server: EmbeddedPostgres) -> Iterator[str]:
    import psycopg
    from psycopg import sql

    if not pg_server.running:  # a previous test's outage left it stopped
        pg_server.resume()
    name = f"soar_test_{next(_numbers)}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    yield database_url(pg_server.url, name)
    if not pg_server.running:
        pg_server.resume()
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
