"""Settings: defaults, overridden by a TOML file, overridden by `SOAR_*` environment variables.

The settings model is the single source of the configuration reference in docs/operations.md
(`python -m soar config-reference` prints it). A bad value stops start-up with one line naming
the key (`ConfigError`), never a traceback.

May import: soar.hostport
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soar.hostport import APRS_IS_PORT, BEAST_PORT, SBS_PORT, parse_host_port


class ConfigError(Exception):
    """A setting has a bad value; the message names the key and what was wrong."""


def _setting(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


def _list_setting(doc: str) -> Any:
    return field(default_factory=list, metadata={"doc": doc})


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = _setting(
        None, "PostgreSQL URL; unset = start an embedded PostgreSQL under data_dir/postgres"
    )
    data_dir: Path = _setting(
        Path("./var"), "Directory for the embedded database, spools and raw archives"
    )
    http_addr: str = _setting("127.0.0.1:8080", "host:port the HTTP API, map and /metrics listen on")
    api_token: str | None = _setting(
        None,
        "Bearer token for /metrics and for the error details in /healthz (unset: /metrics open,"
        " details only to callers on this host)",
    )
    http_keep_alive: float = _setting(
        30.0, "Seconds an idle HTTP keep-alive connection is kept open before the server closes it"
    )
    http_max_connections: int = _setting(
        0,
        "Open HTTP connections past which a new one is answered 503 (Retry-After) and closed;"
        " 0 = the descriptor limit (RLIMIT_NOFILE) less 256 kept for feeds, database and spools",
    )
    http_max_requests: int = _setting(
        8,
        "HTTP requests served at once (API, pages); more wait in arrival order. /healthz,"
        " /readyz and /metrics never wait",
    )
    health_stall_after: float = _setting(
        30.0,
        "Seconds without a health snapshot from the event loop after which /healthz answers 503"
        " (stalled) and /readyz not ready: the loop itself is stuck",
    )
    metrics_addr: str = _setting(
        "",
        "Split mode: host:port on which `soar ingest` and `soar track` serve /metrics, /healthz"
        " and /readyz (empty: none; each process needs its own port)",
    )
    log_format: str = _setting(
        "auto", "auto (JSON when stdout is not a terminal), json or console"
    )
    log_level: str = _setting("info", "debug, info, warning or error")
    shutdown_deadline: float = _setting(
        30.0, "Seconds SIGTERM/SIGINT may take to drain the pipeline before exit"
    )
    shards: int = _setting(0, "Number of shard owner tasks; 0 = 2 x CPU cores")

    aprs_server: str | None = _setting(
        None,
        f"APRS-IS host[:port] (e.g. aprs.glidernet.org; port {APRS_IS_PORT} when none is given);"
        " unset = no APRS-IS source",
    )
    aprs_callsign: str = _setting("SOAR", "Callsign used in the APRS-IS login line")
    aprs_filter: str | None = _setting(None, "APRS-IS server-side filter, e.g. r/47/8/500")
    aprs_passcode: int = _setting(-1, "APRS-IS passcode (0 to 32767); -1 = receive only")
    beast_servers: list[str] = _list_setting(
        f"Beast TCP sources, host[:port][,host[:port]...] (port {BEAST_PORT} when none is given)"
    )
    sbs_servers: list[str] = _list_setting(
        f"SBS/BaseStation TCP sources, host[:port][,...] (port {SBS_PORT} when none is given)"
    )
    receiver_lat: float | None = _setting(
        None,
        "Reference latitude (-90 to 90) for ADS-B surface positions (your receiver);"
        " set with receiver_lon",
    )
    receiver_lon: float | None = _setting(
        None,
        "Reference longitude (-180 to 180) for ADS-B surface positions (your receiver);"
        " set with receiver_lat",
    )

    elevation_dir: Path | None = _setting(
        None, "Directory of SRTM .hgt/.hgt.gz tiles for AGL; unset = airport elevation only"
    )
    archive_raw: bool = _setting(False, "Keep a raw archive per protocol per UTC day")
    channel_size: int = _setting(10_000, "Bounded in-memory channel size per pipeline stage")
    spool_max_bytes: int = _setting(
        1024**3,
        "Largest size of each on-disk spool (overflow, outage); past it its producer waits,"
        " nothing is dropped",
    )
    batch_rows: int = _setting(5000, "Store writer: rows per COPY batch")
    fixes_retention_days: int = _setting(
        0,
        "Days of fixes to keep (today included): the hourly maintenance drops older daily"
        " partitions. 0 keeps everything. Flights and aircraft are kept either way",
    )
    batch_age: float = _setting(0.2, "Store writer: seconds before a partial batch is written")
    state_batch_age: float = _setting(
        1.0,
        "Store writer: seconds before a partial batch of flight or aircraft rows is written."
        " They are latest state (last write wins): fewer, larger upserts cost the database less"
        " when thousands of aircraft appear at once",
    )
    live_addr: str = _setting(
        "inproc://soar-live",
        "pynng address live fixes are published on (tcp://host:port in split mode)",
    )
    live_client_queue: int = _setting(
        1000,
        "Fix messages queued for each /api/live WebSocket client (`soar run`, `soar web`); when a client"
        " does not keep up, its oldest are dropped (soar_websocket_dropped_total)",
    )
    web_worker: bool = _setting(
        True,
        "`soar run`: serve HTTP past the front door (API, pages, /api/live) from a child process,"
        " the web worker, so that the memory a crowd of clients leaves behind is not the"
        " tracker's; false: serve it in the one process",
    )
    web_worker_recycle_after: int = _setting(
        100,
        "`soar run`: once a web worker has served this many connections and none is open, it is"
        " replaced by a fresh one if it grew (web_worker_recycle_growth)",
    )
    web_worker_recycle_growth: float = _setting(
        0.05,
        "`soar run`: how much a web worker's memory must have grown past its start (0.05 ="
        " 5 %) to be replaced once its clients have gone",
    )
    track_id: str = _setting(
        socket.gethostname().split(".")[0] or "track",
        "Split mode: this track's id in the partition leases (letters, digits, - _ =); stable"
        " across restarts, unique per track: set it when a machine runs more than one track",
    )
    nats_url: str | None = _setting(
        None,
        "Split mode: NATS server(s) with JetStream, nats://host:port[,...]; unset = an embedded"
        " nats-server under data_dir/nats, shared by the processes on this machine",
    )
    nats_partitions: int = _setting(
        64,
        "Split mode: partitions of the envelope stream (by aircraft hash); the same in every"
        " process, and fixed once the stream exists",
    )
    nats_lease_s: float = _setting(
        10.0, "Split mode: seconds a silent track keeps its partitions before others take over"
    )
    nats_replicas: int = _setting(
        1, "Split mode: copies of the envelope stream and the lease bucket on a JetStream"
        " cluster (3 on a 3-node cluster survives losing one node; 1 on a single server)",
    )
    nats_token: str | None = _setting(None, "Split mode: NATS authentication token, if any")
    nats_creds: Path | None = _setting(
        None, "Split mode: NATS credentials file (.creds: JWT and NKey seed), if any"
    )
    ddb_url: str | None = _setting(
        None, "OGN device database URL or file to refresh daily (`soar ddb import` loads it once)"
    )
    tow_registrations: list[str] = _list_setting(
        "Registrations of the club's tow planes (OGN aircraft type 2 counts as a tow plane anyway)"
    )
    map_inactive_after: float = _setting(
        120.0, "Live map: seconds without a fix after which an aircraft is drawn as inactive"
    )
    map_remove_after: float = _setting(
        600.0, "Live map: seconds without a fix after which an aircraft is removed from the map"
    )
    map_trail_minutes: float = _setting(
        10.0, "Live map: minutes of history trail drawn for the aircraft in view on open"
    )

    @property
    def shard_count(self) -> int:
        return self.shards or 2 * (os.cpu_count() or 1)


def split_host_port(value: str, key: str, default_port: int | None = None) -> tuple[str, int]:
    """`parse_host_port` for a setting: a bad address is a ConfigError naming the key."""
    try:
        return parse_host_port(value, default_port)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def env_name(name: str) -> str:
    return "SOAR_" + name.upper()


def _coerce(name: str, hint: Any, value: Any, from_env: bool) -> Any:
    """Turn a TOML or environment value into the field's type, or raise ConfigError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        if value is None or (from_env and value == ""):
            return None
        return _coerce(name, inner[0], value, from_env)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if from_env and isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if hint is int or hint is float:
        return _number(name, hint, value, from_env)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if hint is Path:
        if isinstance(value, str) and value:
            return Path(value)
        raise ConfigError(f"{name}: expected a path, got {value!r}")
    if origin is list:
        if from_env and isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
    raise ConfigError(f"{name}: unsupported setting type {hint!r}")


def _number(name: str, kind: type[int] | type[float], value: Any, from_env: bool) -> int | float:
    """Coerce an int or float setting: TOML gives the number, the environment a string.

    One parser for both so they reject alike; bool is an int subclass but never a number here,
    and an int setting refuses a TOML float rather than truncating it.
    """
    exact = isinstance(value, int) or (kind is float and isinstance(value, float))
    if isinstance(value, int | float) and exact and not isinstance(value, bool):
        return kind(value)
    if from_env and isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    word = "an integer" if kind is int else "a number"
    raise ConfigError(f"{name}: expected {word}, got {value!r}")


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults < TOML file < SOAR_* environment < explicit overrides (command-line flags)."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(Settings)
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}

    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config: {config_file} is not valid TOML: {exc}") from None
        data = data.get("soar", data)
        for key, value in data.items():
            if key not in fields:
                raise ConfigError(f"{key}: unknown setting in {config_file}")
            values[key] = _coerce(key, hints[key], value, from_env=False)

    known_env = {env_name(name): name for name in fields}
    for key, value in environ.items():
        if not key.startswith("SOAR_") or key in _NOT_SETTINGS:
            continue
        if key not in known_env:
            raise ConfigError(f"{key}: unknown setting (environment)")
        name = known_env[key]
        values[name] = _coerce(key, hints[name], value, from_env=True)

    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, hints[name], value, from_env=isinstance(value, str))

    settings = Settings(**values)
    _validate(settings)
    return settings


# The SOAR_* variable the tests use (where the captures are) that is not a setting of the service.
_NOT_SETTINGS = frozenset({"SOAR_TESTDATA"})


def _validate(s: Settings) -> None:
    split_host_port(s.http_addr, "http_addr")
    if s.metrics_addr:
        split_host_port(s.metrics_addr, "metrics_addr")
    if s.aprs_server:
        split_host_port(s.aprs_server, "aprs_server", APRS_IS_PORT)
    for addr in s.beast_servers:
        split_host_port(addr, "beast_servers", BEAST_PORT)
    for addr in s.sbs_servers:
        split_host_port(addr, "sbs_servers", SBS_PORT)
    if s.log_format not in ("auto", "json", "console"):
        raise ConfigError(f"log_format: expected auto, json or console, got {s.log_format!r}")
    if s.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: expected debug, info, warning or error, got {s.log_level!r}")
    if s.database_url is not None:
        from psycopg.conninfo import conninfo_to_dict

        try:  # a postgresql:// URL or a libpq "key=value ..." string
            conninfo_to_dict(s.database_url)
        except Exception:
            raise ConfigError(
                "database_url: expected a postgresql:// URL or libpq connection string"
            ) from None
    for name in ("shutdown_deadline", "batch_age", "state_batch_age", "nats_lease_s",
                 "http_keep_alive", "health_stall_after", "map_inactive_after", "map_remove_after"):
        value = getattr(s, name)
        if not math.isfinite(value) or value <= 0:  # nan compares false with everything
            raise ConfigError(f"{name}: must be a positive number of seconds, got {value}")
    if s.nats_url is not None:
        for url in s.nats_url.split(","):
            if url.strip().split("://", 1)[0] not in ("nats", "tls", "ws", "wss"):
                raise ConfigError(
                    f"nats_url: expected nats://host:port (or tls://, ws://, wss://), got {url!r}"
                )
    for name in ("channel_size", "batch_rows", "spool_max_bytes", "nats_partitions",
                 "nats_replicas", "live_client_queue", "web_worker_recycle_after"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name}: must be positive")
    if not 0 <= s.web_worker_recycle_growth < 100:
        raise ConfigError("web_worker_recycle_growth: expected a fraction, 0 or more (0.05 = 5 %)")
    _validate_receiver(s.receiver_lat, s.receiver_lon)
    if not (s.aprs_passcode == -1 or 0 <= s.aprs_passcode <= 32767):
        raise ConfigError(
            f"aprs_passcode: expected -1 (receive only) or 0 to 32767, got {s.aprs_passcode}"
        )
    if not re.fullmatch(r"[-_=a-zA-Z0-9]+", s.track_id):
        raise ConfigError(f"track_id: letters, digits, '-', '_' or '=' only, got {s.track_id!r}")
    if s.http_max_connections < 0:
        raise ConfigError("http_max_connections: must be 0 (from the descriptor limit) or positive")
    if s.http_max_requests <= 0:
        raise ConfigError("http_max_requests: must be positive")
    if s.fixes_retention_days < 0:
        raise ConfigError("fixes_retention_days: must be 0 (keep everything) or positive")
    if s.shards < 0:
        raise ConfigError("shards: must be 0 (automatic) or positive")
    if not (math.isfinite(s.map_trail_minutes) and 0 <= s.map_trail_minutes <= 180):
        raise ConfigError("map_trail_minutes: must be between 0 (no trails) and 180")


def _validate_receiver(lat: float | None, lon: float | None) -> None:
    for name, value, limit in (("receiver_lat", lat, 90.0), ("receiver_lon", lon, 180.0)):
        if value is not None and not (math.isfinite(value) and -limit <= value <= limit):
            raise ConfigError(f"{name}: must be between -{limit:g} and {limit:g}, got {value}")
    if (lat is None) != (lon is None):
        # one without the other would be silently unused: surface positions need both
        raise ConfigError("receiver_lat, receiver_lon: set both or neither")


def reference_markdown() -> str:
    """The configuration reference, generated from the settings model."""
    hints = typing.get_type_hints(Settings)
    lines = [
        "| setting (TOML) | environment | type | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for f in dataclasses.fields(Settings):
        default = f.default if f.default is not dataclasses.MISSING else []
        type_name = str(hints[f.name]).replace("pathlib.", "").replace("<class '", "").replace("'>", "")
        type_name = type_name.replace(" | None", " or unset").replace("|", "\\|")
        lines.append(
            f"| `{f.name}` | `{env_name(f.name)}` | {type_name} | `{default}` | {f.metadata['doc']} |"
        )
    return "\n".join(lines) + "\n"
