"""The `soar bench [all|protocols|store|pipeline|split|crowds]` command: its flags, where the
captures are, and which benchmarks run; each figure beside its baseline, same run.

May import: soar.bench.crowds, soar.bench.pipeline, soar.bench.protocols, soar.bench.split,
soar.bench.store, soar.cli, soar.config, soar.store
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from soar.config import Settings


def add_options(parser: argparse.ArgumentParser) -> None:
    """The bench's own flags. They are flags, not `SOAR_*` variables: those are the service's
    settings, and soar refuses a `SOAR_*` variable it does not know."""
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="pipeline: record each soar process with py-spy into "
                        "DIR/<feed>-<full|paced>.txt (collapsed stacks)")
    parser.add_argument("--timeline", action="store_true",
                        help="pipeline: print, for each paced run, fixes and worst latency per "
                        "second, queue depths every 100 ms and GC pauses over 5 ms (stderr)")
    parser.add_argument("--json", action="store_true",
                        help="split: end with one JSON line of each run's rate and p99 commit ms")


def testdata_dir() -> Path:
    here = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("SOAR_TESTDATA", str(here.parent / "shared" / "data")))


def bench_command(
    settings: Settings, part: str, seconds: float | None, *, profile: Path | None = None,
    timeline: bool = False, as_json: bool = False,
) -> int:
    from soar.cli import UserError

    data = testdata_dir()
    if not data.is_dir():
        raise UserError(f"SOAR_TESTDATA: the benchmarks replay the real captures; none at {data}")
    if part in ("all", "protocols"):
        from soar.bench import protocols

        print("## Protocol parsers (rate beside baseline, same run)\n")
        print(protocols.format_table(protocols.run(data, seconds or protocols.DEFAULT_SECONDS)))
    if part in ("all", "store"):
        from soar.bench import store

        print("\n## Store writer (fixes/s committed beside raw binary COPY, same database)\n")
        with _database(settings) as url:
            for chunk in (100, 1):
                print(store.run(url, 200_000, data=data, chunk=chunk, repeats=2).summary())
    if part in ("all", "pipeline"):
        from soar.bench import pipeline

        print("\n## End to end (socket -> decode -> shard -> committed; ratios to same-run "
              "baselines first)\n")
        with _database(settings) as url:
            rows = pipeline.run(url, data, seconds or 60.0, profile=profile, timeline=timeline)
            print(pipeline.format_table(rows))
    if part in ("all", "split"):
        from soar.bench.split import bench_split

        print()
        with _database(settings) as url:
            bench_split(url, data, seconds, as_json=as_json)
    if part in ("all", "crowds"):
        from soar.bench import crowds

        print(f"\n## /healthz latency beside {crowds.CLIENTS} API clients (a real `soar run`; "
              "the baseline is the same process with no clients)\n")
        with _database(settings) as url:
            print(crowds.format_table(crowds.run(url, data, seconds or 20.0)))
    return 0


class _database:
    """The configured database, or a throwaway embedded PostgreSQL (never the service's own)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._embedded: object | None = None

    def __enter__(self) -> str:
        if self.settings.database_url:
            return self.settings.database_url
        from soar.store.embedded import EmbeddedPostgres

        self._tmp = tempfile.TemporaryDirectory(prefix="soar-bench-")
        embedded = EmbeddedPostgres()
        self._embedded = embedded
        return embedded.start(Path(self._tmp.name) / "pg")

    def __exit__(self, *_exc: object) -> None:
        if self._embedded is not None:
            self._embedded.stop()  # type: ignore[attr-defined]
        if self._tmp is not None:
            self._tmp.cleanup()
