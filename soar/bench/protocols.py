"""Protocol parser throughput on the real captures, each beside a baseline from the same run.

OGN: `soar.protocols.ogn.parse_line` (fast path, and forced through aprslib) against
`aprslib.parse` alone and the `ogn_parser` package (Rust) — the speed anchor.
SBS: `soar.protocols.sbs.parse_line` (and with the accumulator) against `line.split(",")`.
Beast: `BeastDeframer.feed` over a stream built from the real ADS-B sample (there is no real
Beast capture), against one `bytes.split` pass over the same chunks.
Mode S: `ModeSAccumulator.feed` against `pyModeS.decode` alone on the same messages.

Every corpus is passed over repeatedly for about `seconds` per row; the rate is items per
second of wall time on one core.

May import: soar.protocols
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DEFAULT_SECONDS = 1.0
_CHUNK = 4096


@dataclass(slots=True, frozen=True)
class BenchRow:
    group: str  # which feed: ogn | sbs | beast | mode s
    name: str  # what was measured
    unit: str  # lines | frames | messages
    items: int = 0
    seconds: float = 0.0
    baseline: bool = False
    note: str = ""

    @property
    def rate(self) -> float | None:
        if self.items == 0 or self.seconds <= 0:
            return None
        return self.items / self.seconds


def _measure(
    group: str,
    name: str,
    unit: str,
    corpus: Sequence[T],
    step: Callable[[Sequence[T]], int],
    seconds: float,
    *,
    baseline: bool = False,
    note: str = "",
) -> BenchRow:
    """Run `step` (one pass over `corpus`, returns the items it handled) for about `seconds`."""
    items = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        items += step(corpus)
        now = time.perf_counter()
        if now >= deadline:
            break
    return BenchRow(group, name, unit, items, now - start, baseline, note)


def _unavailable(group: str, name: str, unit: str, why: str, *, baseline: bool = False) -> BenchRow:
    return BenchRow(group, name, unit, baseline=baseline, note=f"not available: {why}")


# ---------------------------------------------------------------------------------------------
# corpora


def ogn_lines(testdata: Path) -> list[str]:
    """Every real OGN line: both replay captures (receive time stripped) and valid_messages."""
    lines: list[str] = []
    for path in sorted((testdata / "ogn").glob("soar-*.txt")):
        for line in path.read_text().splitlines():
            # the capture's logging doubled one backslash; undo it so every parser sees the
            # line as it was on the wire
            lines.append(line.split(" ", 1)[1].replace("\\\\", "\\"))
    for path in sorted((testdata / "ogn" / "valid_messages").glob("*.txt")):
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                lines.append(line)
    return lines


def sbs_lines(testdata: Path) -> list[str]:
    with gzip.open(testdata / "sbs" / "adsbhub-sbs-sample-20260224.txt.gz", "rt") as f:
        return f.read().splitlines()


def adsb_messages(testdata: Path) -> list[tuple[int, str]]:
    """(receive time µs, hex message) from the real timestamped ADS-B sample."""
    out = []
    with (testdata / "adsb" / "pymodes-sample_data_adsb.csv").open() as f:
        for row in csv.reader(f):
            out.append((int(float(row[0]) * 1_000_000), row[1]))
    return out


# ---------------------------------------------------------------------------------------------
# per feed


def _bench_ogn(testdata: Path, seconds: float) -> list[BenchRow]:
    from soar.protocols import ogn

    lines = ogn_lines(testdata)
    rows: list[BenchRow] = []

    def ours(corpus: Sequence[str]) -> int:
        for line in corpus:
            ogn.parse_line(line)
        return len(corpus)

    def ours_aprslib(corpus: Sequence[str]) -> int:
        for line in corpus:
            ogn.parse_line(line, fast=False)
        return len(corpus)

    rows.append(_measure("ogn", "ogn.parse_line (fast path)", "lines", lines, ours, seconds))
    rows.append(
        _measure("ogn", "ogn.parse_line(fast=False)", "lines", lines, ours_aprslib, seconds)
    )

    import aprslib

    def aprslib_alone(corpus: Sequence[str]) -> int:
        for line in corpus:
            # it rejects some real lines; those still cost time
            with contextlib.suppress(Exception):
                aprslib.parse(line)
        return len(corpus)

    rows.append(
        _measure(
            "ogn", "aprslib.parse alone", "lines", lines, aprslib_alone, seconds, baseline=True
        )
    )

    try:
        import ogn_parser
    except ImportError as exc:
        rows.append(
            _unavailable("ogn", "ogn_parser.parse (Rust)", "lines", str(exc), baseline=True)
        )
    else:

        def rust(corpus: Sequence[str]) -> int:
            for line in corpus:
                ogn_parser.parse(line)
            return len(corpus)

        batch = "\n".join(lines)

        def rust_batch(corpus: Sequence[str]) -> int:
            ogn_parser.parse(batch)
            return len(corpus)

        rows.append(
            _measure(
                "ogn",
                "ogn_parser.parse (Rust), per line",
                "lines",
                lines,
                rust,
                seconds,
                baseline=True,
            )
        )
        rows.append(
            _measure(
                "ogn",
                "ogn_parser.parse (Rust), one batch",
                "lines",
                lines,
                rust_batch,
                seconds,
                baseline=True,
                note=f"{len(lines)} lines per call",
            )
        )
    return rows


def _bench_sbs(testdata: Path, seconds: float) -> list[BenchRow]:
    from soar.protocols import sbs

    lines = sbs_lines(testdata)

    def ours(corpus: Sequence[str]) -> int:
        for line in corpus:
            sbs.parse_line(line)
        return len(corpus)

    def ours_accumulated(corpus: Sequence[str]) -> int:
        acc = sbs.SbsAccumulator()
        for i, line in enumerate(corpus):
            msg = sbs.parse_line(line)
            if isinstance(msg, sbs.SbsMessage):
                acc.feed(msg, i)
        return len(corpus)

    def split(corpus: Sequence[str]) -> int:
        for line in corpus:
            line.split(",")
        return len(corpus)

    return [
        _measure("sbs", "sbs.parse_line", "lines", lines, ours, seconds),
        _measure(
            "sbs", "sbs.parse_line + SbsAccumulator.feed", "lines", lines, ours_accumulated, seconds
        ),
        _measure("sbs", 'line.split(",") alone', "lines", lines, split, seconds, baseline=True),
    ]


def _bench_beast(testdata: Path, seconds: float) -> list[BenchRow]:
    name = "BeastDeframer.feed, 4 KiB chunks"
    try:
        from soar.protocols.beast import BeastDeframer, BeastFrame
    except ImportError as exc:
        return [_unavailable("beast", name, "frames", str(exc))]
    messages = adsb_messages(testdata)
    t0 = messages[0][0]
    frames = []
    for received_us, hex_message in messages:
        payload = bytes.fromhex(hex_message)
        kind = 0x33 if len(payload) == 14 else 0x32
        mlat = ((received_us - t0) * 12) & ((1 << 48) - 1)  # 12 MHz counter
        frames.append(BeastFrame(kind, mlat, payload[-1], payload).encode())
    stream = b"".join(frames)
    chunks = [stream[i : i + _CHUNK] for i in range(0, len(stream), _CHUNK)]
    count = len(frames)

    def deframe(corpus: Sequence[bytes]) -> int:
        deframer = BeastDeframer()
        got = 0
        for chunk in corpus:
            got += len(deframer.feed(chunk))
        if got != count:
            raise RuntimeError(f"deframer returned {got} frames, expected {count}")
        return got

    def split(corpus: Sequence[bytes]) -> int:
        for chunk in corpus:
            chunk.split(b"\x1a")
        return count

    return [
        _measure(
            "beast",
            name,
            "frames",
            chunks,
            deframe,
            seconds,
            note=f"{count} frames, {len(stream)} bytes",
        ),
        _measure(
            "beast",
            'chunk.split(b"\\x1a") alone',
            "frames",
            chunks,
            split,
            seconds,
            baseline=True,
            note="one C pass over the same bytes",
        ),
    ]


def _bench_modes(testdata: Path, seconds: float) -> list[BenchRow]:
    name = "ModeSAccumulator.feed"
    messages = adsb_messages(testdata)
    rows: list[BenchRow] = []
    try:
        from soar.protocols.modes import ModeSAccumulator
    except ImportError as exc:
        rows.append(_unavailable("mode s", name, "messages", str(exc)))
    else:
        corpus = [(t, bytes.fromhex(h)) for t, h in messages]

        def accumulate(items: Sequence[tuple[int, bytes]]) -> int:
            acc = ModeSAccumulator()
            for received_us, message in items:
                acc.feed(message, received_us)
            return len(items)

        rows.append(_measure("mode s", name, "messages", corpus, accumulate, seconds))
    try:
        import pyModeS
    except ImportError as exc:
        rows.append(
            _unavailable("mode s", "pyModeS.decode alone", "messages", str(exc), baseline=True)
        )
    else:
        hexes = [h for _, h in messages]

        def decode(items: Sequence[str]) -> int:
            for h in items:
                pyModeS.decode(h)
            return len(items)

        rows.append(
            _measure(
                "mode s", "pyModeS.decode alone", "messages", hexes, decode, seconds, baseline=True
            )
        )
    return rows


def run(testdata: Path, seconds: float = DEFAULT_SECONDS) -> list[BenchRow]:
    """Measure every parser and its baseline on the captures under `testdata`."""
    rows: list[BenchRow] = []
    for bench in (_bench_ogn, _bench_sbs, _bench_beast, _bench_modes):
        rows.extend(bench(testdata, seconds))
    return rows


def format_table(rows: Sequence[BenchRow]) -> str:
    """A Markdown table: rate per row, and its ratio to the first baseline of its group."""
    anchors: dict[str, float] = {}
    for row in rows:
        rate = row.rate
        if row.baseline and rate is not None and row.group not in anchors:
            anchors[row.group] = rate
    lines = [
        "| feed | parser | rate | vs baseline | note |",
        "|---|---|---:|---:|---|",
    ]
    for row in rows:
        rate = row.rate
        anchor = anchors.get(row.group)
        if rate is None:
            rate_text, ratio = "—", "—"
        else:
            rate_text = f"{rate:,.0f} {row.unit}/s"
            ratio = "baseline" if row.baseline else (f"{rate / anchor:.2f}x" if anchor else "—")
            if row.baseline and anchor is not None and rate != anchor:
                ratio = f"baseline ({rate / anchor:.2f}x)"
        lines.append(f"| {row.group} | {row.name} | {rate_text} | {ratio} | {row.note} |")
    return "\n".join(lines)
