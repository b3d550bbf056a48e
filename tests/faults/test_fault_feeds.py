"""Faults on the feeds: a server killed and restarted mid-feed; garbage bytes on every feed.

Each capture is served over TCP on 127.0.0.1 to the real feed client of its protocol (APRS-IS,
SBS, Beast), whose envelopes get their recorded times back (`faultkit.Restamp`), so what is
stored can be compared fix by fix with the fault-free replay of the same capture.
"""

from __future__ import annotations

from pathlib import Path

import trio

from soar.ingest import metrics
from soar.records import Protocol
from tests.faults.faultkit import (
    PROTOCOLS,
    Corpus,
    LiveSource,
    Reference,
    ResumableFeed,
    assert_same_as_reference,
    fault_settings,
    run_sources,
    stored,
)


def _sample(metric: object, **labels: str) -> float:
    total = 0.0
    for family in metric.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.name.endswith(("_total", "")) and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ) and not sample.name.endswith("_created"):
                total += sample.value
    return total


async def test_feed_server_killed_and_restarted_loses_nothing(
    corpus: Corpus, reference: Reference, db_url: str, tmp_path: Path
) -> None:
    for protocol in PROTOCOLS:
        capture = corpus[protocol]
        kill_at = len(capture.envelopes) * 2 // 5
        async with trio.open_nursery() as nursery:
            feed = ResumableFeed(capture, kill_at=kill_at, restart_after=0.5)
            await nursery.start(feed.run)
            live = LiveSource(capture, feed.address)
            feed.position = lambda live=live: live.delivered  # type: ignore[misc]
            await run_sources(
                fault_settings(tmp_path / protocol.value), db_url, [live.spec()],
                until=lambda live=live: live.done,  # type: ignore[misc]
            )
            nursery.cancel_scope.cancel()
        source = live.source.source
        assert feed.killed_at is not None and feed.restarted_at is not None
        assert feed.connections == 2, "one connection before the kill, one after the restart"
        assert live.source.client.connections == 2
        # refused at least once while the server was down, then reconnected: all counted
        reconnects = _sample(metrics.SOURCE_RECONNECTS, source=source)
        assert reconnects >= 2, f"{protocol.value}: {reconnects} reconnects counted"
        cut = "truncated_frame" if protocol is Protocol.BEAST else "truncated_line"
        assert _sample(metrics.SOURCE_REJECTS, source=source, reason=cut) == 1
        assert live.restamp is not None and live.restamp.garbage == 0
    assert_same_as_reference(stored(db_url), reference)


async def test_garbage_on_every_feed_is_rejected_and_counted(
    corpus: Corpus, reference: Reference, db_url: str, tmp_path: Path
) -> None:
    for protocol in PROTOCOLS:
        capture = corpus[protocol]
        async with trio.open_nursery() as nursery:
            feed = ResumableFeed(capture, garbage_every=7)
            await nursery.start(feed.run)
            live = LiveSource(capture, feed.address)
            feed.position = lambda live=live: live.delivered  # type: ignore[misc]
            pipeline = await run_sources(
                fault_settings(tmp_path / protocol.value), db_url, [live.spec()],
                until=lambda live=live: live.done,  # type: ignore[misc]
            )
            nursery.cancel_scope.cancel()
        source = live.source.source
        assert feed.connections == 1, "garbage never cost the connection"
        assert len(feed.garbage_sent) >= len(capture.envelopes) // 7
        assert live.restamp is not None
        if protocol is Protocol.BEAST:
            # bytes between frames: counted by the deframer, never a frame
            garbage_bytes = _sample(metrics.SOURCE_GARBAGE_BYTES, source=source)
            assert garbage_bytes > 0
            assert _sample(metrics.SOURCE_REJECTS, source=source, reason="beast_resync") > 0
        else:
            too_long = [g for g in feed.garbage_sent if len(g) > 1026]
            assert too_long, "some garbage lines were longer than any feed line may be"
            assert _sample(metrics.SOURCE_REJECTS, source=source, reason="line_too_long") == len(
                too_long
            )
            # every other garbage line reached the decoder and was rejected there, counted
            lines = live.restamp.garbage
            assert lines >= len(feed.garbage_sent) - len(too_long)
            summary = pipeline.summary()
            assert summary["rejects"] >= lines + reference.summaries[protocol]["rejects"] - (
                reference.summaries[protocol]["reject_reasons"].get("capture", 0)
            )
        print(f"{protocol.value}: {len(feed.garbage_sent)} garbage blobs, "
              f"{live.restamp.garbage} garbage envelopes")
    assert_same_as_reference(stored(db_url), reference)
