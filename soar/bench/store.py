"""Store writer benchmark: committed fixes/s through `StoreWriter` beside raw binary COPY.

Both sides write the same rows (fixes from the real SBS capture, repeated with shifted receive
times to reach the requested count) into the same database in the same run:

- raw COPY: `COPY fixes … FROM STDIN (FORMAT BINARY)` straight into the table, in batches of
  the writer's size, one connection, no staging or conflict handling — the ceiling;
- writer: the trio task fed from a memory channel as fast as it takes them, with its staging
  table, `ON CONFLICT` merge and acknowledgement; also the receive->commit latency of each fix.

    python -m soar.bench.store [URL|-] [ROWS] [CHUNKS]   # "-": an embedded PostgreSQL in a temp dir

CHUNKS (default "100,1"): fixes per channel send, one run each. A shard that hands the writer
a list per processed input chunk saves trio's per-send checkpoint (~10 µs, which alone caps
one-fix-per-send at ~65k/s on this machine).

May import: soar.protocols, soar.records, soar.store
"""

from __future__ import annotations

import datetime as dt
import gzip
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
import trio

from soar.protocols.sbs import SbsAccumulator, SbsMessage, parse_line
from soar.records import Fix
from soar.store.migrate import migrate
from soar.store.partitions import ensure_partitions
from soar.store.tables import FIXES, FixFamily, fix_row
from soar.store.writer import CommitReport, StoreWriter, open_pool

SBS_CAPTURE = Path("sbs") / "adsbhub-sbs-sample-20260224.txt.gz"


def _generated_us(msg: SbsMessage) -> int | None:
    if not msg.date_generated or not msg.time_generated:
        return None
    stamp = dt.datetime.strptime(
        f"{msg.date_generated} {msg.time_generated}", "%Y/%m/%d %H:%M:%S.%f"
    ).replace(tzinfo=dt.UTC)
    return (stamp - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def sbs_capture_fixes(path: Path) -> list[Fix]:
    """The capture's fixes, as a replay would produce them.

    The capture has no receive times, so a line's receive time is its generated time plus its
    line number in microseconds: in order, and unique per aircraft, like the tracking core's
    output (which drops fixes < 1 s apart per aircraft).
    """
    accumulator = SbsAccumulator()
    fixes: list[Fix] = []
    with gzip.open(path, "rt", encoding="ascii", errors="replace") as lines:
        for number, line in enumerate(lines):
            msg = parse_line(line.rstrip("\r\n"))
            if not isinstance(msg, SbsMessage):
                continue
            base = _generated_us(msg)
            if base is None:
                continue
            fix = accumulator.feed(msg, base + number, source="adsbhub")
            if fix is not None:
                fixes.append(fix)
    return fixes


def repeated(fixes: list[Fix], rows: int, shift_us: int = 3_600_000_000) -> list[Fix]:
    """`rows` fixes: the capture again and again, each pass `shift_us` later (unique keys)."""
    out: list[Fix] = []
    passes = 0
    while len(out) < rows:
        for fix in fixes[: rows - len(out)]:
            copy = Fix(**{name: getattr(fix, name) for name in Fix.__slots__})
            copy.received_us += passes * shift_us
            out.append(copy)
        passes += 1
    return out


@dataclass(slots=True)
class StoreBenchResult:
    rows: int
    raw_copy_rows_per_s: float
    writer_rows_per_s: float
    ratio: float
    writer_latency_p50_ms: float
    writer_latency_p99_ms: float
    batch_rows: int
    send_chunk: int
    repeats: int

    def summary(self) -> str:
        return (
            f"{self.rows} fixes: raw binary COPY {self.raw_copy_rows_per_s:,.0f}/s, "
            f"writer {self.writer_rows_per_s:,.0f}/s ({self.ratio:.0%} of raw, "
            f"{self.send_chunk} fixes per channel send); "
            f"receive->commit p50 {self.writer_latency_p50_ms:.0f} ms, "
            f"p99 {self.writer_latency_p99_ms:.0f} ms"
        )


def _reset(url: str, days: list[dt.date]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE fixes")
        for day in days:
            ensure_partitions(conn, day, 0)
        conn.execute("VACUUM ANALYZE fixes")


def _raw_copy(url: str, fixes: list[Fix], batch_rows: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        for start in range(0, len(fixes), batch_rows):
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(FIXES.direct_copy_sql) as copy,
            ):
                copy.set_types(FIXES.types)
                for fix in fixes[start : start + batch_rows]:
                    copy.write_row(fix_row(fix))
    return time.perf_counter() - started


async def _through_writer(
    url: str, fixes: list[Fix], batch_rows: int, spool_dir: Path, chunk: int
) -> tuple[float, list[float]]:
    lags_ms: list[float] = []
    committed = 0

    def on_commit(report: CommitReport) -> None:
        nonlocal committed
        committed += report.rows
        lags_ms.extend((report.committed_us - s) / 1000 for s in report.stamps_us)

    pool = open_pool(url, size=2)
    try:
        writer: StoreWriter[Fix] = StoreWriter(
            pool, FixFamily(), spool_dir=spool_dir, max_rows=batch_rows, on_commit=on_commit
        )
        send, receive = trio.open_memory_channel[Fix | list[Fix]](max(1, batch_rows // chunk))
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, receive)
            async with send:
                for start in range(0, len(fixes), chunk):
                    part = fixes[start : start + chunk]
                    # stamp at send: the latency measured is the writer's, not the capture's
                    now_us = time.time_ns() // 1000
                    for fix in part:
                        fix.received_us = now_us
                    await send.send(part if chunk > 1 else part[0])
        elapsed = time.perf_counter() - started
    finally:
        pool.close()
    if committed != len(fixes):
        raise RuntimeError(f"writer committed {committed} of {len(fixes)} fixes")
    return elapsed, lags_ms


def run(
    url: str,
    rows: int = 200_000,
    *,
    data: Path | None = None,
    batch_rows: int = 5000,
    chunk: int = 100,
    repeats: int = 3,
) -> StoreBenchResult:
    """Measure raw binary COPY and the writer on the same `rows` fixes in the database at `url`."""
    data = data or Path(__file__).resolve().parents[3] / "shared" / "data"
    migrate(url)
    fixes = repeated(sbs_capture_fixes(data / SBS_CAPTURE), rows)
    # The writer's run re-stamps receive times to "now": give both sides today's partition too.
    days = sorted({dt.datetime.fromtimestamp(f.received_us / 1e6, dt.UTC).date() for f in fixes})
    days.append(dt.datetime.now(dt.UTC).date())

    # Interleaved, best of `repeats` each: the machine is shared, so single runs are noisy.
    raw_s = writer_s = math.inf
    lags: list[float] = []
    for _ in range(repeats):
        _reset(url, days)
        raw_s = min(raw_s, _raw_copy(url, fixes, batch_rows))
        _reset(url, days)
        with tempfile.TemporaryDirectory() as spool:
            elapsed, run_lags = trio.run(
                _through_writer, url, fixes, batch_rows, Path(spool), chunk
            )
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM fixes").fetchone()
            stored = row[0] if row else 0
        if stored != rows:
            raise RuntimeError(f"{stored} fixes in the table after the writer run, expected {rows}")
        if elapsed < writer_s:
            writer_s, lags = elapsed, run_lags
    quantiles = statistics.quantiles(lags, n=100)
    raw_rate = rows / raw_s
    writer_rate = rows / writer_s
    return StoreBenchResult(
        rows=rows,
        raw_copy_rows_per_s=raw_rate,
        writer_rows_per_s=writer_rate,
        ratio=writer_rate / raw_rate,
        writer_latency_p50_ms=quantiles[49],
        writer_latency_p99_ms=quantiles[98],
        batch_rows=batch_rows,
        send_chunk=chunk,
        repeats=repeats,
    )


def main(argv: list[str]) -> int:
    from soar.store.embedded import EmbeddedPostgres

    rows = int(argv[1]) if len(argv) > 1 else 200_000
    chunks = [int(c) for c in argv[2].split(",")] if len(argv) > 2 else [100, 1]
    results: list[StoreBenchResult] = []
    if argv and argv[0] not in ("", "-"):
        results = [run(argv[0], rows, chunk=c) for c in chunks]
    else:
        with tempfile.TemporaryDirectory(prefix="soar-bench-") as tmp:
            embedded = EmbeddedPostgres()
            try:
                url = embedded.start(Path(tmp) / "pg")
                results = [run(url, rows, chunk=c) for c in chunks]
            finally:
                embedded.stop()
    for result in results:
        print(result.summary())
        print(asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
