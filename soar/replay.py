"""`soar replay FILE...`: captures through the same pipeline as the live feeds.

Each file becomes a source of the pipeline (its protocol detected from its contents), replayed
with its recorded receive times, paced on trio's clock at `--speed` or as fast as possible.
The pipeline then drains exactly as on shutdown, so when the summary prints every fix of the
capture is committed.

A replay in which nothing was accepted — every message rejected by the capture reader or the
decoder, or none read at all — is almost always the wrong `--format`: it exits 1 with one line
naming the format tried, the most common reject reason and, when the file looks like another
format, that format.

May import: soar.cli, soar.config, soar.database, soar.ingest, soar.log, soar.pipeline,
soar.records, soar.runtime, soar.supervisor, soar.topology
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import itertools
import json
import math
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
import trio

from soar.cli import EXIT_NOTHING_ACCEPTED, EXIT_OK, UserError
from soar.config import Settings
from soar.database import open_database
from soar.ingest.capture import (
    CaptureFormat,
    CaptureStats,
    archive_file_protocol,
    beast_first_frame_us,
    detect_format,
    iter_capture,
    receive_time_problem,
)
from soar.log import lines_above
from soar.pipeline import EnvelopeSink, Pipeline, SourceSpec
from soar.records import Envelope, Protocol
from soar.runtime import settle_runtime
from soar.supervisor import ChildSpec, RestartPolicy
from soar.topology import Stage

log = structlog.get_logger(__name__)

_READ_BATCH = 2000


def capture_kind(path: Path, fmt: str = "auto") -> tuple[CaptureFormat, Protocol]:
    """The format and protocol of a capture file (ValueError naming the file when unknown)."""
    kind = CaptureFormat(fmt) if fmt != "auto" else detect_format(path)
    if kind is CaptureFormat.ARCHIVE:
        return kind, archive_file_protocol(path)
    return kind, Protocol(kind.value)


class CaptureSource:
    """Replays one capture file into its protocol's sink."""

    def __init__(
        self,
        path: Path,
        fmt: str = "auto",
        speed: float | None = None,
        progress: Callable[[int], None] | None = None,
        start_us: int | None = None,
    ) -> None:
        if speed is not None and not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"replay speed must be a positive number, got {speed}")
        self.path = path
        self.kind, self.protocol = capture_kind(path, fmt)
        self.fmt = fmt
        self.speed = speed
        self.start_us = start_us
        self.progress = progress or (lambda _n: None)
        self.sent = 0
        self.stats = CaptureStats()

    async def run(self, sink: EnvelopeSink) -> None:
        envelopes: Iterator[Envelope] = iter_capture(
            self.path, self.kind, stats=self.stats, start_us=self.start_us
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


async def _stop_on_signal(pipeline: Pipeline) -> None:  # a task of the replay's tree
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
    start_us: int | None = None,
) -> dict[str, Any]:
    """Replay `files` and return the summary: counts of messages, fixes, flights and rejects
    (by reason), and `accepted`, the messages neither the capture reader nor the decoder
    rejected."""
    sources = [CaptureSource(f, fmt, speed, progress, start_us) for f in files]
    specs = [
        SourceSpec(f"replay:{s.path.name}:{i}", s.protocol, s.run, RestartPolicy.TEMPORARY)
        for i, s in enumerate(sources)
    ]
    pipeline = Pipeline(settings, database_url, sources=specs)
    if pipeline_hook is not None:
        pipeline_hook(pipeline)
    await pipeline.open()
    try:
        if stop_on_signal:  # the command only: a library caller keeps its own signals
            topology = pipeline.declare("replay", [Stage("signals", [
                ChildSpec("signals", functools.partial(_stop_on_signal, pipeline))])])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(topology.run)
                await pipeline.wait_finished()
                topology.stop()  # the signal watcher: the data path has ended
        else:
            await pipeline.run()
    finally:
        await pipeline.close()
    summary = pipeline.summary()
    summary["accepted"] = sum(
        decoder.messages - sum(decoder.rejects.values()) for decoder in pipeline.decoders.values()
    )
    for source in sources:  # lines the capture reader could not even frame
        summary["messages"] += source.stats.rejected
        summary["rejects"] += source.stats.rejected
        for reason, count in source.stats.rejects.items():
            key = f"capture: {reason}"
            summary["reject_reasons"][key] = summary["reject_reasons"].get(key, 0) + count
    summary["formats"] = {str(source.path): source.kind.value for source in sources}
    anchors = {str(source.path): beast_anchor(source.path, start_us)
               for source in sources if source.kind is CaptureFormat.BEAST}
    if anchors:
        summary["anchors"] = anchors
    return summary


def beast_anchor(path: Path, start_us: int | None) -> dict[str, str]:
    """When a Beast capture's first frame was taken to be: a Beast file records only a 12 MHz
    counter, so every time in it hangs on this one (`--start`, else the file's mtime)."""
    at_us = beast_first_frame_us(path, start_us)
    source = "--start" if start_us is not None else "file modification time (no --start)"
    moment = dt.datetime.fromtimestamp(at_us / 1_000_000, tz=dt.UTC)
    return {"first_frame_at": moment.isoformat().replace("+00:00", "Z"), "from": source}


_A_FORMAT = {"ogn": "an OGN", "sbs": "an SBS", "beast": "a Beast", "archive": "a soar raw archive"}


def nothing_accepted(summary: dict[str, Any], fmt: str = "auto") -> str | None:
    """The one line that explains a replay in which nothing was accepted, else None."""
    if summary["accepted"] > 0:
        return None
    formats: dict[str, str] = summary["formats"]
    tried = "/".join(sorted(set(formats.values())))
    if summary["messages"] == 0:
        line = f"no messages read as {tried}"
    else:
        reasons: dict[str, int] = summary["reject_reasons"]
        reason, count = max(reasons.items(), key=lambda kv: kv[1]) if reasons else ("?", 0)
        count_text = "the 1 message" if summary["messages"] == 1 else f"all {summary['messages']} messages"
        line = (f"{count_text} rejected as {tried}: "
                f"most common reason {reason!r} ({count})")
    if fmt != "auto":  # the user named a format: does the file look like another one?
        for path, used in formats.items():
            try:
                looks = detect_format(Path(path)).value
            except (ValueError, OSError):
                continue
            if looks != used:
                option = looks if looks != CaptureFormat.ARCHIVE else "auto"
                line += (f"; is {Path(path).name} {_A_FORMAT[looks]} file? "
                         f"try --format {option}")
                break
    return line


async def replay_command(settings: Settings, args: argparse.Namespace) -> int:
    files: list[Path] = list(args.files)
    for f in files:
        if not f.is_file():
            raise UserError(f"{f}: no such capture file")
    try:
        for f in files:
            kind, _protocol = capture_kind(f, args.format)
            problem = receive_time_problem(f, kind, args.start)
            if problem is not None:
                raise UserError(problem)
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    db = await trio.to_thread.run_sync(open_database, settings)
    settle_runtime()
    show_bar = args.progress == "always" or (
        args.progress == "auto" and sys.stderr.isatty() and not args.json
    )
    try:
        if show_bar:
            from tqdm import tqdm

            bar = tqdm(unit=" msg", desc="replay", file=sys.stderr)

            def advance(messages: int) -> None:
                bar.update(messages)

            # log lines are printed above the bar, never through it
            with bar, lines_above(lambda text: tqdm.write(text, file=sys.stderr, end="")):
                summary = await run_replay(
                    settings, db.url, files, fmt=args.format, speed=args.speed,
                    progress=advance, stop_on_signal=True, start_us=args.start,
                )
        else:
            summary = await run_replay(
                settings, db.url, files, fmt=args.format, speed=args.speed,
                stop_on_signal=True, start_us=args.start,
            )
    finally:
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
        for path, anchor in summary.get("anchors", {}).items():
            print(f"  {Path(path).name}: first frame at {anchor['first_frame_at']}"
                  f" ({anchor['from']})")
    failure = nothing_accepted(summary, args.format)
    if failure is not None:
        sys.stdout.flush()
        print(f"soar: {failure}", file=sys.stderr)
        return EXIT_NOTHING_ACCEPTED
    return EXIT_OK
