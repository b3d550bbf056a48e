"""NATS names and the nats_* settings."""

from __future__ import annotations

import pytest

from soar.broker.client import StreamSpec
from soar.broker.subjects import (
    durable_name,
    live_aircraft_subject,
    live_area_subject,
    live_area_subjects,
    partition_subject,
)
from soar.config import ConfigError, load_settings


def test_subject_names() -> None:
    assert partition_subject(7) == "soar.env.7"
    assert durable_name(7) == "SOAR_ENV-7"
    assert StreamSpec().subject(7) == "soar.env.7" and StreamSpec().durable(7) == "SOAR_ENV-7"
    assert live_area_subject(47.9, 8.1) == "soar.live.area.47.8"
    assert live_area_subject(-0.5, -179.2) == "soar.live.area.-1.-180"
    assert live_aircraft_subject(123456) == "soar.live.aircraft.123456"
    with pytest.raises(ValueError):
        StreamSpec(partitions=4).subject(4)


def test_area_subjects_cover_a_box_and_the_antimeridian() -> None:
    assert live_area_subjects(46.5, 7.5, 47.5, 8.5) == [
        "soar.live.area.46.7", "soar.live.area.46.8", "soar.live.area.47.7", "soar.live.area.47.8"]
    across = live_area_subjects(10.2, 179.5, 10.8, -179.5)
    assert across == ["soar.live.area.10.179", "soar.live.area.10.-180"]
    assert len(live_area_subjects(-90, -180, 90, 180)) == 180 * 360


def test_nats_settings_from_the_environment() -> None:
    settings = load_settings(environ={
        "SOAR_NATS_URL": "nats://a:4222,nats://b:4222", "SOAR_NATS_PARTITIONS": "32",
        "SOAR_NATS_LEASE_S": "5", "SOAR_NATS_TOKEN": "s3cret", "SOAR_NATS_CREDS": "/etc/soar.creds",
    })
    assert settings.nats_url == "nats://a:4222,nats://b:4222"
    assert (settings.nats_partitions, settings.nats_lease_s) == (32, 5.0)
    assert settings.nats_token == "s3cret" and str(settings.nats_creds) == "/etc/soar.creds"
    defaults = load_settings(environ={})
    assert defaults.nats_url is None and defaults.nats_partitions == 64
    assert defaults.nats_lease_s == 10.0


@pytest.mark.parametrize(("key", "value", "message"), [
    ("SOAR_NATS_URL", "localhost:4222", "nats_url: expected nats://"),
    ("SOAR_NATS_PARTITIONS", "0", "nats_partitions: must be positive"),
    ("SOAR_NATS_LEASE_S", "-1", "nats_lease_s: must be a positive"),
    ("SOAR_NATS_LEASE_S", "nan", "nats_lease_s: must be a positive"),
])
def test_bad_nats_settings_name_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={key: value})
