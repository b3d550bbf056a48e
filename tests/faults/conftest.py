"""Fixtures of the fault-injection suite: the captures and their fault-free reference replay."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from soar.ingest.capture import iter_capture
from soar.records import Protocol
from soar.replay import run_replay
from soar.store.embedded import EmbeddedPostgres
from tests.faults.faultkit import (
    PROTOCOLS,
    Capture,
    Corpus,
    Reference,
    drop_database,
    fault_settings,
    fresh_database,
    stored,
)
from tests.ingest.ingest_servers import ADSB_SAMPLE, OGN_TRACE, SBS_SAMPLE, beast_frames

#: The Beast capture's start time (Beast carries no wall time; the file's mtime is its start).
BEAST_START_S = 1_771_945_000


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: end-to-end fault injection (tests/faults, real PostgreSQL and feeds)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().parent == here:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def corpus(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The real captures as `soar replay` reads them: the OGN trace, the SBS sample, and the
    pyModeS ADS-B sample written as a Beast stream."""
    assert (testdata / ADSB_SAMPLE).is_file()
    beast = tmp_path_factory.mktemp("faults-corpus") / "adsb-sample.beast"
    beast.write_bytes(b"".join(frame.encode() for frame in beast_frames(testdata)))
    os.utime(beast, (BEAST_START_S, BEAST_START_S))
    paths = {
        Protocol.OGN: testdata / OGN_TRACE,
        Protocol.SBS: testdata / SBS_SAMPLE,
        Protocol.BEAST: beast,
    }
    return {
        protocol: Capture(protocol, path, tuple(iter_capture(path)))
        for protocol, path in paths.items()
    }


@pytest.fixture(scope="session")
def reference(
    pg_server: EmbeddedPostgres, corpus: Corpus, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Reference]:
    """Each capture replayed without any fault, into a database of its own."""
    per_protocol = {}
    seconds = {}
    summaries = {}
    urls = []
    try:
        for protocol in PROTOCOLS:
            url = fresh_database(pg_server, "reference")
            urls.append(url)
            settings = fault_settings(tmp_path_factory.mktemp(f"reference-{protocol.value}"))
            began = time.perf_counter()
            summaries[protocol] = trio.run(
                run_replay, settings, url, [corpus[protocol].path]
            )
            seconds[protocol] = time.perf_counter() - began
            per_protocol[protocol] = stored(url)
            assert per_protocol[protocol].fixes.get(protocol), f"{protocol}: no fixes at all"
        yield Reference(per_protocol, seconds, summaries)
    finally:
        for url in urls:
            drop_database(pg_server, url)
