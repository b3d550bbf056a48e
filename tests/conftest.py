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
from hypothesis import settings

# Every test has a time limit (tests/timelimit.py).
pytest_plugins = ["tests.timelimit"]

# Hypothesis on a busy machine: no per-example deadline (a 200 ms one measured the machine, not
# the code: a real-capture read took 364 ms once beside other jobs), and the same examples every
# run, so a CI result is reproducible. `make soak` explores new examples
# (SOAR_HYPOTHESIS=explore); what it finds is pinned with @example.
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("explore", deadline=None, max_examples=1000, print_blob=True)
settings.load_profile(os.environ.get("SOAR_HYPOTHESIS", "ci"))

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


#: Files that take minutes, longest first. `make test` runs the suite on three workers
#: (pytest-xdist, `--dist loadfile`: a file's module fixtures are set up once, on one worker);
#: handing these out first keeps one of them from starting last while the other worker idles.
LONG_FIRST = (
    "tests/test_split.py",
    "tests/faults/test_crowds_ws.py",
    "tests/test_bench_split.py",
    "tests/faults/test_restart_memory.py",
    "tests/faults/test_fault_database.py",
    "tests/faults/test_fault_postgres.py",
    "tests/test_quiet_logs.py",
    "tests/faults/test_held_connections.py",
    "tests/web/test_map.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONG_FIRST.index(path) if path in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: every file keeps its own order


@pytest.fixture
def unshared_tmp_path() -> Iterator[Path]:
    """A temporary directory outside pytest's base one, for an embedded PostgreSQL that soar
    starts itself: as root the server runs as the `pgserver` user, and pytest makes its base
    directory 0700 again whenever another pytest run starts (tests/test_timelimit.py starts
    some, and with several workers that can be in the middle of such a test)."""
    path = Path(tempfile.mkdtemp(prefix="soar-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
