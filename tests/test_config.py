"""Configuration: defaults < TOML < SOAR_* environment; bad values stop start-up with one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from soar.config import ConfigError, Settings, load_settings, reference_markdown
from soar.hostport import parse_host_port
from tests.support import soar_cli


def test_defaults() -> None:
    s = load_settings(environ={})
    assert s.database_url is None
    assert s.data_dir == Path("./var")
    assert s.http_addr == "127.0.0.1:8080"
    assert parse_host_port(s.http_addr) == ("127.0.0.1", 8080)
    assert s.shard_count == 2 * (os.cpu_count() or 1)


def test_toml_then_environment_override(tmp_path: Path) -> None:
    cfg = tmp_path / "soar.toml"
    cfg.write_text(
        'http_addr = "127.0.0.1:9000"\nshards = 3\nbeast_servers = ["a:30005", "b:30005"]\n'
        'archive_raw = true\n'
    )
    s = load_settings(cfg, environ={})
    assert (s.http_addr, s.shards, s.beast_servers, s.archive_raw) == (
        "127.0.0.1:9000", 3, ["a:30005", "b:30005"], True)
    s = load_settings(cfg, environ={"SOAR_HTTP_ADDR": "0.0.0.0:81", "SOAR_SHARDS": "5",
                                     "SOAR_SBS_SERVERS": "h:30003,i:30003"})
    assert (s.http_addr, s.shards, s.sbs_servers) == ("0.0.0.0:81", 5, ["h:30003", "i:30003"])


def test_soar_section_in_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "soar.toml"
    cfg.write_text('[soar]\nlog_format = "json"\n')
    assert load_settings(cfg, environ={}).log_format == "json"


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"SOAR_SHARDS": "many"}, "SOAR_SHARDS"),
        ({"SOAR_HTTP_ADDR": "nohost"}, "http_addr"),
        ({"SOAR_NOT_A_SETTING": "1"}, "SOAR_NOT_A_SETTING"),
        ({"SOAR_LOG_FORMAT": "xml"}, "log_format"),
        ({"SOAR_DATABASE_URL": "mysql://x"}, "database_url"),
        ({"SOAR_ARCHIVE_RAW": "maybe"}, "SOAR_ARCHIVE_RAW"),
        ({"SOAR_SHUTDOWN_DEADLINE": "-1"}, "shutdown_deadline"),
        ({"SOAR_SHUTDOWN_DEADLINE": "nan"}, "shutdown_deadline"),
        ({"SOAR_BATCH_AGE": "inf"}, "batch_age"),
        ({"SOAR_RECEIVER_LAT": "123", "SOAR_RECEIVER_LON": "8"}, "receiver_lat"),
        ({"SOAR_RECEIVER_LAT": "47", "SOAR_RECEIVER_LON": "-180.5"}, "receiver_lon"),
        ({"SOAR_RECEIVER_LAT": "nan", "SOAR_RECEIVER_LON": "8"}, "receiver_lat"),
        ({"SOAR_RECEIVER_LAT": "47"}, "receiver_lon"),  # one without the other is never used
        ({"SOAR_APRS_PASSCODE": "99999"}, "aprs_passcode"),
        ({"SOAR_APRS_PASSCODE": "-2"}, "aprs_passcode"),
        ({"SOAR_TRACK_ID": "track one"}, "track_id"),  # a lease key part: no spaces
        ({"SOAR_APRS_SERVER": "::1:14580"}, "aprs_server"),  # IPv6 with a port: brackets
        ({"SOAR_BEAST_SERVERS": "radar:0"}, "beast_servers"),
        ({"SOAR_METRICS_ADDR": "127.0.0.1"}, "metrics_addr"),  # a listen address needs a port
    ],
)
def test_bad_environment_values_name_the_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    assert key in str(info.value)


def test_numbers_at_the_edges_of_their_ranges() -> None:
    s = load_settings(environ={"SOAR_RECEIVER_LAT": "-90", "SOAR_RECEIVER_LON": "180",
                               "SOAR_APRS_PASSCODE": "32767"})
    assert (s.receiver_lat, s.receiver_lon, s.aprs_passcode) == (-90.0, 180.0, 32767)


def test_feed_addresses_without_a_port_take_the_protocols_port() -> None:
    s = load_settings(environ={"SOAR_APRS_SERVER": "aprs.glidernet.org",
                               "SOAR_BEAST_SERVERS": "radar,[::1]:30105,[fe80::1]",
                               "SOAR_SBS_SERVERS": "radar"})
    # kept as written: each source adds its own protocol's port (see test_ingest_sources)
    assert (s.aprs_server, s.beast_servers, s.sbs_servers) == (
        "aprs.glidernet.org", ["radar", "[::1]:30105", "[fe80::1]"], ["radar"])
    assert parse_host_port(load_settings(environ={"SOAR_HTTP_ADDR": "[::1]:8081"}).http_addr) == ("::1", 8081)


def test_bad_toml_values_name_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "soar.toml"
    cfg.write_text("shards = \"two\"\n")
    with pytest.raises(ConfigError, match="shards"):
        load_settings(cfg, environ={})
    cfg.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="colour: unknown setting"):
        load_settings(cfg, environ={})
    cfg.write_text("this is not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(cfg, environ={})


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"SOAR_SHARDS": "two"}, "SOAR_SHARDS"),
        ({"SOAR_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}, "database_url"),
        ({"SOAR_RECEIVER_LAT": "123", "SOAR_RECEIVER_LON": "8"}, "receiver_lat"),
    ],
)
def test_start_up_fails_with_one_line_and_no_traceback(env: dict[str, str], key: str) -> None:
    proc = soar_cli("run", env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert key in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_reference_lists_every_setting() -> None:
    text = reference_markdown()
    for name in Settings.__dataclass_fields__:
        assert f"`{name}`" in text
        assert f"`SOAR_{name.upper()}`" in text
