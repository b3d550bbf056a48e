"""Command line: `soar [run]`, `migrate`, `replay`, `bench`, `ddb`, `ingest`/`track`/`web`.

Every error a user can cause (a bad setting or argument, an unreachable database, a missing file,
a listen address in use) ends in one line on stderr and exit status 2, never a traceback.

May import: soar, soar.app, soar.bench, soar.config, soar.ddb, soar.ingest, soar.log, soar.replay,
soar.split
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from soar import __version__
from soar.config import ConfigError, Settings, load_settings, reference_markdown
from soar.log import configure_logging


class UserError(Exception):
    """Something the user can fix; printed as one line."""


#: `soar replay` exit statuses (also in its --help)
EXIT_OK, EXIT_NOTHING_ACCEPTED, EXIT_USAGE = 0, 1, 2

_REPLAY_EPILOG = """\
exit status:
  0  replayed; the summary lists what was rejected and why
  1  nothing in the captures was accepted (every message rejected, or none read):
     usually the wrong --format; stderr names the most common reason
  2  bad arguments or settings, an unreadable or unknown capture
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, like every other error of soar."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive(kind: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):  # nan and inf would pass a plain `> 0`
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
        return value

    parse.__name__ = kind  # argparse names the type in some messages
    return parse


def _utc_time(text: str) -> int:
    """An ISO-8601 time (UTC unless it names a zone) as µs since the epoch."""
    from soar.ingest.capture import iso_to_us

    try:
        return iso_to_us(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO-8601 time such as 2017-04-19T15:20:00Z, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every command, option and help text (the docs' tests read it)."""
    p = _Parser(prog="soar", description="Real-time aircraft tracker")
    p.add_argument("--version", action="version", version=f"soar {__version__}",
                   help="print the version and exit")
    p.add_argument("--config", type=Path, help="TOML settings file (SOAR_* variables override it)")
    sub = p.add_subparsers(dest="command", title="commands", metavar="COMMAND",
                           help="what to run (default: run)")
    database_url = "PostgreSQL URL (default: SOAR_DATABASE_URL or embedded)"
    speed = _positive("speed")

    run = sub.add_parser("run", help="run everything in one process (the default)")
    run.add_argument("--replay", nargs="+", type=Path, default=[], metavar="FILE",
                     help="also feed these captures (beside any live feeds), then keep running: "
                     "the live map shows them on their own clock")
    run.add_argument("--speed", type=speed, default=None,
                     help="replay speed factor, a positive number (1 = real time; default: as "
                     "fast as possible)")
    m = sub.add_parser("migrate", help="apply database migrations")
    m.add_argument("--database-url", help=database_url)

    r = sub.add_parser(
        "replay", help="feed capture files through the pipeline",
        description="Feed capture files through the same pipeline as the live feeds, with their\n"
        "recorded receive times, and print what was stored and rejected.",
        epilog=_REPLAY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("files", nargs="+", type=Path, metavar="FILE",
                   help="capture files: OGN (time-prefixed lines or a raw APRS-IS capture), "
                   "SBS, Beast or soar's raw archive; plain or gzip")
    pacing = r.add_mutually_exclusive_group()
    pacing.add_argument("--speed", type=speed, default=None,
                        help="replay speed factor, a positive number (1 = real time)")
    pacing.add_argument("--as-fast-as-possible", action="store_true",
                        help="no pacing (the default)")
    r.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    r.add_argument("--database-url", help=database_url)
    r.add_argument("--format", choices=["auto", "ogn", "sbs", "beast"], default="auto",
                   help="the captures' format (default: auto, detected from each file)")
    r.add_argument("--start", type=_utc_time, default=None, metavar="ISO8601",
                   help="when a capture without recorded times began (UTC unless a zone is "
                   "given): a Beast capture's first frame (default: the file's modification "
                   "time), a raw APRS-IS capture's lines before its first server keep-alive "
                   "(default: that keep-alive's time)")
    r.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                   help="progress bar on stderr (default: auto, on a terminal without --json)")

    b = sub.add_parser("bench", help="benchmarks (all, or one part)")
    b.add_argument("part", nargs="?", default="all", choices=["all", "protocols", "store", "pipeline", "split", "crowds"],
                   help="which benchmark (default: all)")
    b.add_argument("--seconds", type=_positive("seconds"), default=None,
                   help="how long each timed benchmark runs")
    from soar.bench.cli import add_options as add_bench_options

    add_bench_options(b)  # --profile, --timeline: the bench's own flags live with the bench

    d = sub.add_parser("ddb", help="OGN device database")
    dsub = d.add_subparsers(dest="ddb_command", required=True, title="commands",
                            metavar="COMMAND", help="what to do with the device database")
    di = dsub.add_parser("import", help="import the DDB JSON from a file or URL")
    di.add_argument("source", nargs="?", default=None,
                    help="file or http(s) URL of the DDB JSON (default: the public OGN DDB download)")
    di.add_argument("--database-url", help=database_url)

    i = sub.add_parser("ingest", help="split mode: read feeds and push envelopes to track processes")
    i.add_argument("--replay", nargs="+", type=Path, metavar="FILE",
                   help="feed these captures instead of live feeds")
    i.add_argument("--speed", type=speed, default=None,
                   help="replay speed factor, a positive number (default: as fast as possible)")
    sub.add_parser("track", help="split mode: shards + store writer for a slice of the hash space")
    sub.add_parser("web", help="split mode: HTTP API and WebSockets")
    sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    return p


def _check_captures(files: list[Path]) -> None:
    """A missing or unrecognisable capture is a one-line error before anything starts."""
    from soar.replay import capture_kind

    for path in files:
        if not path.is_file():
            raise UserError(f"{path}: no such capture file")
        try:
            capture_kind(path)
        except (ValueError, OSError) as exc:
            raise UserError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    try:
        overrides: dict[str, Any] = {}
        if getattr(args, "database_url", None):
            overrides["database_url"] = args.database_url
        settings = load_settings(args.config, overrides=overrides)
        if command == "config-reference":
            sys.stdout.write(reference_markdown())
            return 0
        # Commands whose stdout is their result keep it clean: their log goes to stderr.
        quiet_stdout = command in ("replay", "bench", "ddb", "migrate")
        configure_logging(settings.log_format, settings.log_level,
                          sys.stderr if quiet_stdout else None)
        return _dispatch(command, args, settings)
    except (ConfigError, UserError) as exc:
        print(f"soar: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(command: str, args: argparse.Namespace, settings: Settings) -> int:
    import trio

    if command == "run":
        import functools

        from soar.app import run_all_in_one

        replay: list[Path] = list(getattr(args, "replay", None) or [])
        _check_captures(replay)
        return trio.run(functools.partial(run_all_in_one, settings, replay=replay,
                                          speed=getattr(args, "speed", None)))
    if command == "migrate":
        from soar.app import migrate_command

        return migrate_command(settings)
    if command == "replay":
        from soar.replay import replay_command

        return trio.run(replay_command, settings, args)
    if command == "bench":
        from soar.bench.cli import bench_command

        return bench_command(settings, args.part, args.seconds, profile=args.profile,
                             timeline=args.timeline, as_json=args.json)
    if command == "ddb":
        from soar.ddb import ddb_command

        return ddb_command(settings, args)
    if command in ("ingest", "track", "web"):
        from soar.split import split_command

        return split_command(command, settings, args)
    raise UserError(f"{command}: unknown command")
