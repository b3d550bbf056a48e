"""Command line: `soar [run]`, `migrate`, `replay`, `bench`, `ddb`, `ingest`/`track`/`web`.

Every error a user can cause (a bad setting, an unreachable database, a missing file) ends in one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from soar import __version__
from soar.config import ConfigError, Settings, load_settings, reference_markdown
from soar.log import configure_logging


class UserError(Exception):
    """Something the user can fix; printed as one line."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="soar", description="Real-time aircraft tracker")
    p.add_argument("--version", action="version", version=f"soar {__version__}")
    p.add_argument("--config", type=Path, help="TOML settings file (SOAR_* variables override it)")
    sub = p.add_subparsers(dest="command")

    sub.add_parser("run", help="run everything in one process (the default)")
    m = sub.add_parser("migrate", help="apply database migrations")
    m.add_argument("--database-url", help="PostgreSQL URL (default: SOAR_DATABASE_URL or embedded)")

    r = sub.add_parser("replay", help="feed capture files through the pipeline")
    r.add_argument("files", nargs="+", type=Path)
    speed = r.add_mutually_exclusive_group()
    speed.add_argument("--speed", type=float, default=None, help="replay speed factor (1 = real time)")
    speed.add_argument("--as-fast-as-possible", action="store_true", help="no pacing (the default)")
    r.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    r.add_argument("--database-url", help="PostgreSQL URL (default: SOAR_DATABASE_URL or embedded)")
    r.add_argument("--format", choices=["auto", "ogn", "sbs", "beast"], default="auto")

    b = sub.add_parser("bench", help="benchmarks (all, or one part)")
    b.add_argument("part", nargs="?", default="all", choices=["all", "protocols", "store", "pipeline"])
    b.add_argument("--seconds", type=float, default=None)
    from soar.bench.cli import add_options as add_bench_options

    add_bench_options(b)  # --profile, --timeline: the bench's own flags live with the bench

    d = sub.add_parser("ddb", help="OGN device database")
    dsub = d.add_subparsers(dest="ddb_command", required=True)
    di = dsub.add_parser("import", help="import the DDB JSON from a file or URL")
    di.add_argument("source", nargs="?", default=None)
    di.add_argument("--database-url")

    i = sub.add_parser("ingest", help="split mode: read feeds and push envelopes to track processes")
    i.add_argument("--replay", nargs="+", type=Path, help="feed these captures instead of live feeds")
    i.add_argument("--speed", type=float, default=None, help="replay speed factor")
    sub.add_parser("track", help="split mode: shards + store writer for a slice of the hash space")
    sub.add_parser("web", help="split mode: HTTP API and WebSockets")
    sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
        from soar.app import run_all_in_one

        return trio.run(run_all_in_one, settings)
    if command == "migrate":
        from soar.app import migrate_command

        return migrate_command(settings)
    if command == "replay":
        from soar.replay import replay_command

        return trio.run(replay_command, settings, args)
    if command == "bench":
        from soar.bench.cli import bench_command

        return bench_command(settings, args.part, args.seconds, profile=args.profile,
                             timeline=args.timeline)
    if command == "ddb":
        from soar.ddb import ddb_command

        return ddb_command(settings, args)
    if command in ("ingest", "track", "web"):
        from soar.split import split_command

        return split_command(command, settings, args)
    raise UserError(f"{command}: unknown command")
