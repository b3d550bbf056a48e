"""Store test fixtures; the database fixtures (`pg_server`, `db_url`) are in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from soar.bench.store import SBS_CAPTURE, sbs_capture_fixes
from soar.records import Fix


@pytest.fixture(scope="session")
def capture_fixes(testdata: Path) -> list[Fix]:
    """Every fix of the real SBS capture as a replay makes them, read once per session."""
    fixes = sbs_capture_fixes(testdata / SBS_CAPTURE)
    assert len(fixes) > 10_000
    return fixes


def keys(fixes: Iterable[Fix]) -> set[tuple[int, int]]:
    """The store's keys of `fixes`: (aircraft, receive time), as `fix_keys` reads them back."""
    return {(f.aircraft_id, f.received_us) for f in fixes}


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"
