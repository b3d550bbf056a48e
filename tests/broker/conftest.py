"""Broker fixtures: one real embedded nats-server per session, real envelopes from captures."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from soar.broker.client import JetStreamLink, StreamSpec, open_link
from soar.broker.embedded import EmbeddedNats
from soar.ingest.capture import iter_capture
from soar.records import Envelope

OGN_FLIGHT = Path("ogn") / "soar-flight-descended-out-of-range-then-took-off.txt"
SBS_SAMPLE = Path("sbs") / "adsbhub-sbs-sample-20260224.txt.gz"
BEAST_SAMPLE = Path("adsb") / "traffic-sample_dump1090-LFBO-20200212.beast"

_names = itertools.count()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[EmbeddedNats]:
    """A real nats-server -js on loopback for the session; stopped (bounded wait) at the end."""
    with tempfile.TemporaryDirectory(prefix="soar-test-nats-") as tmp:
        server = EmbeddedNats(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
async def link(nats_server: EmbeddedNats) -> AsyncIterator[JetStreamLink]:
    async with open_link(nats_server.url, token=nats_server.token, request_timeout_s=10.0) as connected:
        yield connected


def unique(prefix: str) -> str:
    """A stream, subject or bucket name no other test uses (they share the server)."""
    return f"{prefix}{next(_names)}"


def stream_spec(partitions: int = 4, **limits: Any) -> StreamSpec:
    """A stream of its own. JetStream reserves a stream's max_bytes from the server's store
    (by default 75 % of the free disk): at the production 8 GiB, a handful of test streams
    would use it up and the next one be refused ("insufficient storage resources")."""
    limits.setdefault("max_bytes", 64 * 1024**2)
    name = unique("T")
    return StreamSpec(partitions=partitions, name=name, subject_prefix=f"test.{name}", **limits)


def capture(testdata: Path, path: Path, limit: int) -> list[Envelope]:
    envelopes = []
    for env in iter_capture(testdata / path):
        envelopes.append(env)
        if len(envelopes) == limit:
            break
    assert len(envelopes) == limit, f"{path} has fewer than {limit} envelopes"
    return envelopes


@pytest.fixture(scope="session")
def real_envelopes(testdata: Path) -> list[Envelope]:
    """Envelopes of all three protocols, from the real captures."""
    return (capture(testdata, OGN_FLIGHT, 300) + capture(testdata, SBS_SAMPLE, 300)
            + capture(testdata, BEAST_SAMPLE, 200))
