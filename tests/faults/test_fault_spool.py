"""The overflow spool's directory becomes unwritable while the pipeline runs: a clear error,
logged and counted, the process stays up, and nothing is lost (the sink waits instead)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from soar.ingest.tcp import EnvelopeSink
from soar.overflow import SPOOL_ERRORS, SPOOLED, OverflowSink
from soar.pipeline import Pipeline, SourceSpec
from soar.records import Protocol
from soar.replay import CaptureSource
from soar.spool import SpoolError
from soar.supervisor import RestartPolicy
from tests.faults.faultkit import (
    Corpus,
    Reference,
    assert_same_as_reference,
    fault_settings,
    stored,
)


def _chattr(flag: str, paths: list[Path]) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[list[Path]]:
    """Paths to make immutable (`chattr +i`: even root cannot write them); undone afterwards.

    chmod would not do: the tests run as root, and root ignores permissions."""
    probe = tmp_path / "chattr-probe"
    probe.mkdir()
    if shutil.which("chattr") is None:
        pytest.skip("chattr not installed")
    try:
        _chattr("+i", [probe])
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"chattr +i not possible here: {exc.stderr.decode().strip()}")
    _chattr("-i", [probe])
    paths: list[Path] = []
    yield paths
    if paths:
        _chattr("-i", paths)


def _total(metric: object, protocol: Protocol) -> float:
    return sum(
        s.value for m in metric.collect() for s in m.samples  # type: ignore[attr-defined]
        if s.name.endswith("_total") and s.labels.get("protocol") == protocol.value
    )


async def test_unwritable_overflow_spool_is_logged_counted_and_loses_nothing(
    corpus: Corpus, reference: Reference, db_url: str, tmp_path: Path, immutable: list[Path]
) -> None:
    protocol = Protocol.SBS
    # a small channel, so the feed really overflows into the spool
    settings = fault_settings(tmp_path / "var", channel_size=64)
    replay = CaptureSource(corpus[protocol].path)
    go = trio.Event()

    async def gated(sink: EnvelopeSink) -> None:
        await go.wait()
        await replay.run(sink)

    pipeline = Pipeline(
        settings, db_url, sources=[SourceSpec("replay-gated", protocol, gated, RestartPolicy.TEMPORARY)]
    )
    errors_before = _total(SPOOL_ERRORS, protocol)
    spooled_before = _total(SPOOLED, protocol)
    await pipeline.open()
    spool_dir = tmp_path / "var" / "spool" / "ingest" / protocol.value
    assert spool_dir.is_dir()
    # The open segment and the directory itself: no write, no new segment, no cursor.
    immutable.extend([*sorted(spool_dir.iterdir()), spool_dir])
    _chattr("+i", immutable)
    with pytest.raises(PermissionError):
        (spool_dir / "probe").write_bytes(b"x")
    try:
        with capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipeline.run)
                go.set()
    finally:
        await pipeline.close()
    errors = _total(SPOOL_ERRORS, protocol) - errors_before
    failures = [e for e in logs if e["event"] == "overflow.spool_write_failed"]
    print(f"{errors:.0f} spool errors counted, {len(failures)} logged; "
          f"{_total(SPOOLED, protocol) - spooled_before:.0f} spooled")
    assert errors > 0, "the spool was never needed: the test tested nothing"
    assert failures and all(e["log_level"] == "error" for e in failures)
    assert "not permitted" in failures[0]["error"].lower()
    assert _total(SPOOLED, protocol) == spooled_before, "nothing can have been spooled"
    # the process stayed up (the replay ran to its end) and the sink waited instead of losing
    assert replay.sent == len(corpus[protocol].envelopes)
    assert_same_as_reference(stored(db_url), reference, [protocol])


def test_a_failed_spool_write_leaves_no_phantom_record(
    tmp_path: Path, immutable: list[Path]
) -> None:
    """The spool depth (and `soar_overflow_spool_depth`) must not count what never got written:
    a phantom record would later be read as a truncated, "corrupt" one."""
    send, _receive = trio.open_memory_channel[object](0)
    sink = OverflowSink(Protocol.SBS, send, tmp_path / "spool", 1 << 20)
    sink.open()
    immutable.extend([*sorted((tmp_path / "spool").iterdir()), tmp_path / "spool"])
    _chattr("+i", immutable)
    assert sink._spool is not None
    with pytest.raises(SpoolError):
        sink._spool.append(b"a record the disk refuses")
    assert sink.depth == 0
