"""`soar replay FILE...`: captures through the same pipeline as the live feeds.

Each file becomes a source of the pipeline (its protocol detected from its contents), replayed
with its recorded receive times, paced on trio's clock at `--speed` or as fast as possible.
The pipeline then drains exactly as on shutdown, so when the summary prints every fix of the
capture is committed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
import trio

from soar.cli import UserError
from soar.config import Settings
from soar.database import open_database
from soar.ingest.capture import CaptureStats, iter_capture
from soar.pipeline import EnvelopeSink, Pipeline, SourceSpec
from soar.records import Envelope, Protocol
from soar.runtime import settle_runtime
from soar.supervisor import RestartPolicy

log = structlog.get_logger(__name__)

_READ_BATCH = 2000


def capture_protocol(path: Path, fmt: str = "auto") -> Protocol:
    """The protocol of a capture file (raises ValueError naming the file when unknown)."""
    from soar.ingest.capture import CaptureFormat, _archive_protocol, detect_format

    kind = CaptureFormat(fmt) if fmt != "auto" else detect_format(path)
    if kind is CaptureFormat.ARCHIVE:
        return _archive_protocol(path)
    return Protocol(kind.value)


class CaptureSource:
    """Replays one capture file into its protocol's sink."""

    def __init__(
        self,
        path: Path,
        fmt: str = "auto",
        speed: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self.protocol = capture_protocol(path, fmt)
        self.fmt = fmt
        self.speed = speed
        self.progress = progress or (lambda _n: None)
        self.sent = 0
        self.stats = CaptureStats()

    async def run(self, sink: EnvelopeSink) -> None:
        envelopes: Iterator[Envelope] = iter_capture(
            self.path, None if self.fmt == "auto" else self.fmt, stats=self.stats
        )
        first_us: int | None = None
        started = trio.current_time()
        while True:
            batch = await trio.to_thread.run_sync(
                lambda: list(itertools.islice(envelopes, _READ_BATCH))
            )
            if not batch:
                break
            for env in batch:
                if self.speed is not None:
                    if first_us is None:
                        first_us = env.received_us
                    due = started + (env.received_us - first_us) / 1e6 / self.speed
                    await trio.sleep_until(due)
                await sink.send(env)
            self.sent += len(batch)
            self.progress(len(batch))
            await trio.lowlevel.checkpoint()
        log.info("replay.file_done", file=str(self.path), messages=self.sent)


async def _stop_on_signal(pipeline: Pipeline) -> None:
    """SIGTERM/SIGINT stop reading the captures; what was read is still committed (a replay
    run again later stores the rest, and nothing twice)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("shutdown.requested", signal=signal.Signals(signum).name)
            pipeline.sources_sup.stop()


async def run_replay(
    settings: Settings,
    database_url: str,
    files: list[Path],
    *,
    fmt: str = "auto",
    speed: float | None = None,
    progress: Callable[[int], None] | None = None,
    pipeline_hook: Callable[[Pipeline], None] | None = None,
    stop_on_signal: bool = False,
) -> dict[str, Any]:
    sources = [CaptureSource(f, fmt, speed, progress) for f in files]
    specs = [
        SourceSpec(f"replay:{s.path.name}:{i}", s.protocol, s.run, RestartPolicy.TEMPORARY)
        for i, s in enumerate(sources)
    ]
    pipeline = Pipeline(settings, database_url, sources=specs)
    if pipeline_hook is not None:
        pipeline_hook(pipeline)
    await pipeline.open()
    try:
        async with trio.open_nursery() as nursery:
            if stop_on_signal:  # the command only: a library caller keeps its own signals
                nursery.start_soon(_stop_on_signal, pipeline)
            await pipeline.run()
            nursery.cancel_scope.cancel()
    finally:
        await pipeline.close()
    summary = pipeline.summary()
    for source in sources:  # lines the capture reader could not even frame
        summary["messages"] += source.stats.rejected
        summary["rejects"] += source.stats.rejected
        for reason, count in source.stats.rejects.items():
            summary["reject_reasons"][f"capture: {reason}"] = count
    return summary


async def replay_command(settings: Settings, args: argparse.Namespace) -> int:
    files: list[Path] = list(args.files)
    for f in files:
        if not f.is_file():
            raise UserError(f"{f}: no such capture file")
    try:
        for f in files:
            capture_protocol(f, args.format)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    db = await trio.to_thread.run_sync(open_database, settings)
    settle_runtime()
    bar: Any = None
    if sys.stderr.isatty() and not args.json:
        from tqdm import tqdm

        bar = tqdm(unit=" msg", desc="replay", file=sys.stderr)
    try:
        summary = await run_replay(
            settings, db.url, files, fmt=args.format, speed=args.speed,
            progress=bar.update if bar is not None else None, stop_on_signal=True,
        )
    finally:
        if bar is not None:
            bar.close()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(db.stop)
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"messages {summary['messages']}  fixes {summary['fixes']}  "
            f"flights {summary['flights']}  rejects {summary['rejects']}"
        )
        for reason, count in sorted(summary["reject_reasons"].items(), key=lambda kv: -kv[1]):
            print(f"  rejected {count:>8}  {reason}")
    return 0
