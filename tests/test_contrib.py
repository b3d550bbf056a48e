"""The operator-facing files stay true to the code: Docker, compose, systemd, Grafana, docs.

Nothing here runs a container or a unit (no Docker engine or systemd in CI). The files are read
and checked against the code itself: the settings model, the CLI's commands and every Prometheus
metric the code defines (found by grepping soar/, so a renamed metric breaks this test, not an
operator's dashboard). When `docker compose`/`docker-compose` or `systemd-analyze` is installed,
their own validators run too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from soar.config import Settings, env_name
from soar.hostport import parse_host_port

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "contrib" / "docker"
SYSTEMD = REPO / "contrib" / "systemd"
DASHBOARD = REPO / "contrib" / "grafana" / "soar-dashboard.json"
OPERATIONS = REPO / "docs" / "operations.md"
ARCHITECTURE = REPO / "docs" / "architecture.md"

SETTING_ENV_NAMES = {env_name(f.name) for f in dataclasses.fields(Settings)}
DEFAULT_DEADLINE = Settings().shutdown_deadline

# -- what the code defines ----------------------------------------------------------------------

_METRIC_DEF = re.compile(r'\b(Counter|Gauge|Histogram|Summary)\(\s*"(soar_[a-z0-9_]+)"')
_METRIC_USE = re.compile(r"\bsoar_[a-z0-9_]+\b")


def defined_metrics() -> dict[str, str]:
    """Every metric family in soar/, by the name Prometheus exposes, with its kind.

    prometheus_client appends `_total` to a counter whether or not the code wrote it.
    """
    metrics: dict[str, str] = {}
    for path in sorted((REPO / "soar").rglob("*.py")):
        for kind, name in _METRIC_DEF.findall(path.read_text()):
            if kind == "Counter":
                name = name.removesuffix("_total") + "_total"
            metrics[name] = kind
    return metrics


def exposed_series(metrics: dict[str, str]) -> dict[str, str]:
    """Series names a query may use, mapped to their family's kind."""
    series = dict(metrics)
    for name, kind in metrics.items():
        if kind in ("Histogram", "Summary"):
            for suffix in ("_bucket", "_sum", "_count"):
                series[name + suffix] = kind
    return series


def test_grep_finds_the_metrics_the_code_registers() -> None:
    # The grep is what the other checks trust; make sure it sees known families of each kind.
    metrics = defined_metrics()
    assert metrics["soar_edge_depth"] == "Gauge"
    assert metrics["soar_task_restarts_total"] == "Counter"  # defined without the suffix
    assert metrics["soar_store_rows_committed_total"] == "Counter"
    assert metrics["soar_store_batch_seconds"] == "Histogram"
    assert len(metrics) >= 50


# -- docs ----------------------------------------------------------------------------------------


def config_reference() -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    done = subprocess.run(
        [sys.executable, "-m", "soar", "config-reference"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=True,
    )
    return done.stdout


def test_operations_doc_holds_the_generated_configuration_reference() -> None:
    reference = config_reference()
    assert reference.startswith("| setting (TOML) |")
    assert reference in OPERATIONS.read_text(), (
        "docs/operations.md is out of date: run `.venv/bin/python tests/test_contrib.py` "
        "(it rewrites the generated sections from `python -m soar config-reference`)"
    )


def test_every_metric_the_code_defines_is_in_the_metrics_reference() -> None:
    text = OPERATIONS.read_text()
    missing = sorted(name for name in defined_metrics() if f"`{name}`" not in text)
    assert not missing, (
        f"docs/operations.md does not describe {missing}: "
        "run `.venv/bin/python tests/test_contrib.py` to regenerate its metrics reference"
    )


@pytest.mark.parametrize("doc", [OPERATIONS, ARCHITECTURE], ids=lambda p: p.name)
def test_docs_name_only_metrics_that_exist(doc: Path) -> None:
    series = exposed_series(defined_metrics())
    unknown = sorted(set(_METRIC_USE.findall(doc.read_text())) - set(series))
    assert not unknown, f"{doc.name} names metrics the code does not define: {unknown}"


def test_operations_doc_settings_are_real() -> None:
    used = set(re.findall(r"\bSOAR_[A-Z_]+\b", OPERATIONS.read_text()))
    unknown = sorted(used - SETTING_ENV_NAMES - {"SOAR_TESTDATA"})
    assert not unknown, f"docs/operations.md names settings that do not exist: {unknown}"


def alert_rules() -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    blocks = re.findall(r"```yaml\n(.*?)```", OPERATIONS.read_text(), re.S)
    groups = [yaml.safe_load(b) for b in blocks if b.lstrip().startswith("groups:")]
    assert len(groups) == 1, "one Prometheus rules block (starting with `groups:`) expected"
    return [rule for group in groups[0]["groups"] for rule in group["rules"]]


def test_alert_rules_are_well_formed_and_use_real_metrics() -> None:
    rules = alert_rules()
    series = exposed_series(defined_metrics())
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
        assert rule["labels"].get("severity") in ("page", "warning", "ticket"), rule
        used = set(_METRIC_USE.findall(rule["expr"]))
        assert used, f"{rule['alert']}: no soar metric in its expression"
        assert used <= set(series), f"{rule['alert']}: unknown metrics {used - set(series)}"
        assert_counters_are_rated(rule["expr"], series)
    # The situations the issue asks an operator to be woken for.
    exprs = " ".join(r["expr"] for r in rules)
    for metric in ("soar_source_connected", "soar_store_up", "soar_store_spool_depth",
                   "soar_task_restarts_total", "soar_edge_depth", "soar_websocket_dropped_total"):
        assert metric in exprs, f"no alert on {metric}"


# -- Grafana --------------------------------------------------------------------------------------


def dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


def assert_counters_are_rated(expr: str, series: dict[str, str]) -> None:
    """A counter's raw value means nothing on a graph: it must go through rate()/increase()."""
    for name in set(_METRIC_USE.findall(expr)):
        if series.get(name) != "Counter":
            continue
        uses = len(re.findall(rf"\b{name}\b", expr))
        rated = len(re.findall(rf"\b(?:rate|irate|increase)\(\s*{name}\b", expr))
        assert uses == rated, f"{name} used without rate()/increase() in {expr!r}"


def test_dashboard_uses_only_metrics_the_code_defines() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(dashboard_exprs(dashboard["panels"]))
    assert exprs
    series = exposed_series(defined_metrics())
    used = {name for expr in exprs for name in _METRIC_USE.findall(expr)}
    assert used <= set(series), f"dashboard uses unknown metrics: {sorted(used - set(series))}"
    for expr in exprs:
        assert_counters_are_rated(expr, series)
    # What the issue asks the dashboard to show.
    for metric in ("soar_edge_depth", "soar_source_messages_total", "soar_store_rows_committed_total",
                   "soar_flights_opened_total", "soar_flights_closed_total",
                   "soar_task_restarts_total", "soar_store_spool_depth",
                   "soar_overflow_spool_depth", "soar_store_retries_total",
                   "soar_websocket_connections"):
        assert metric in used, f"dashboard has no panel on {metric}"


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            for var in re.findall(r"\$(?:\{)?([a-z_]+)", target["expr"]):
                assert var in variables or var.startswith("__"), f"undefined ${var}"


# -- Docker ---------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "dangling line continuation"
    return out


def test_dockerfile_is_multi_stage_slim_non_root_with_a_healthcheck() -> None:
    steps = dockerfile_instructions()
    args = dict(a.split("=", 1) for kw, a in steps if kw == "ARG" and "=" in a)

    def resolve(value: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)

    stages = [resolve(a).split() for kw, a in steps if kw == "FROM"]
    assert len(stages) >= 2 and all(len(s) == 3 and s[1].upper() == "AS" for s in stages), stages
    final_base, final_name = stages[-1][0], stages[-1][2]
    assert final_base == "python:3.11-slim"
    builder = stages[0][2]
    final = steps[[i for i, (kw, _) in enumerate(steps) if kw == "FROM"][-1]:]

    assert any(kw == "COPY" and f"--from={builder}" in a for kw, a in final), "venv not copied"
    users = [a for kw, a in final if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{final_name} runs as root"
    assert users[-1].split(":")[0] == "soar"
    health = [a for kw, a in final if kw == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "urllib" in health[0]
    assert ("EXPOSE", "8080") in final
    env = " ".join(a for kw, a in final if kw == "ENV")
    assert "SOAR_DATA_DIR=/var/lib/soar" in env and "SOAR_HTTP_ADDR=0.0.0.0:8080" in env
    assert any(kw == "VOLUME" and "/var/lib/soar" in a for kw, a in final)
    cmd = [a for kw, a in final if kw == "CMD"]
    assert cmd and json.loads(cmd[-1]) == ["python", "-m", "soar", "run"]  # what `make run` runs


def test_dockerfile_installs_the_way_make_run_does() -> None:
    makefile = (REPO / "Makefile").read_text()
    run_recipe = re.search(r"^run:.*\n\t(.+)$", makefile, re.M)
    assert run_recipe and run_recipe.group(1).strip().endswith("-m soar run")
    assert "pip install" in makefile and "-m venv" in makefile
    runs = " ".join(a for kw, a in dockerfile_instructions() if kw == "RUN")
    assert "python -m venv" in runs
    assert "pip install --upgrade pip" in runs
    assert re.search(r"pip install \.(\s|$)", runs), "the project is installed with `pip install .`"


def test_dockerignore_keeps_what_the_build_copies() -> None:
    rules = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    copied = [a.split()[0] for kw, a in dockerfile_instructions()
              if kw == "COPY" and not a.startswith("--from")]
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert rules[0] == "*", "allow-list: ignore everything, then re-include"
    for src in copied:
        for path in src.split():
            assert path.rstrip("/") in allowed, f"COPY {path} is excluded by .dockerignore"
    for path in allowed:
        assert (REPO / path).exists(), f".dockerignore re-includes missing {path}"


def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data


def duration_s(value: str) -> float:
    match = re.fullmatch(r"(\d+)s?", str(value))  # systemd and compose: seconds
    assert match, f"expected seconds like 45s, got {value!r}"
    return float(match.group(1))


def test_compose_runs_soar_against_a_healthy_postgres() -> None:
    data = compose()
    services = data["services"]
    soar, postgres = services["soar"], services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert "timescale/timescaledb" in (DOCKER / "compose.yaml").read_text()  # the alternative
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert soar["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(soar["healthcheck"]["test"])
    build = soar["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    env = soar["environment"]
    assert re.fullmatch(r"postgresql://soar:\$\{POSTGRES_PASSWORD:-soar\}@postgres:5432/soar",
                        env["SOAR_DATABASE_URL"])
    unknown = sorted(set(env) - SETTING_ENV_NAMES)
    assert not unknown, f"compose sets variables soar does not read: {unknown}"
    for feed in ("SOAR_APRS_SERVER", "SOAR_BEAST_SERVERS", "SOAR_SBS_SERVERS"):
        assert feed in env
    deadline = float(env.get("SOAR_SHUTDOWN_DEADLINE", DEFAULT_DEADLINE))
    assert duration_s(soar["stop_grace_period"]) > deadline
    named = set(data["volumes"])
    for service in (soar, postgres):
        assert service["restart"] in ("unless-stopped", "always", "on-failure")
        for volume in service["volumes"]:
            assert volume.split(":")[0] in named, f"{volume} is not a named volume"


def test_compose_settings_parse(tmp_path: Path) -> None:
    """The environment compose hands soar (feeds left empty) loads as valid settings."""
    from soar.config import load_settings

    env = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))
           for k, v in compose()["services"]["soar"]["environment"].items()}
    settings = load_settings(environ=env)
    assert settings.database_url == "postgresql://soar:soar@postgres:5432/soar"
    assert settings.aprs_server is None and settings.beast_servers == []
    assert parse_host_port(settings.http_addr) == ("0.0.0.0", 8080)


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_validates() -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOAR_", "POSTGRES_"))}
    done = subprocess.run([*cli, "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr


# -- systemd --------------------------------------------------------------------------------------

UNITS = ["soar.service", "soar-ingest.service", "soar-track@.service", "soar-web.service"]


def unit_file(name: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file; every key keeps all its values (EnvironmentFile= repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in (SYSTEMD / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{name}: key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{name}: not key=value: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key)
    assert values, f"{key}= missing"
    return values[-1]


@pytest.mark.parametrize("name", UNITS)
def test_unit_restarts_drains_and_is_hardened(name: str) -> None:
    unit = unit_file(name)
    u, s = unit["Unit"], unit["Service"]
    assert int(one(u, "StartLimitBurst")) >= 3
    assert duration_s(one(u, "StartLimitIntervalSec")) >= 60
    assert one(s, "Restart") == "on-failure"
    assert one(s, "RestartPreventExitStatus") == "2"  # soar's exit status for a bad setting
    assert one(s, "KillSignal") == "SIGTERM"
    assert duration_s(one(s, "TimeoutStopSec")) > DEFAULT_DEADLINE
    assert one(s, "User") == "soar" and one(s, "DynamicUser") == "no"
    assert "-/etc/soar/soar.env" in s["EnvironmentFile"]
    state = one(s, "StateDirectory")
    assert one(s, "ReadWritePaths") == f"/var/lib/{state}"
    env = " ".join(s.get("Environment", []))
    assert f"SOAR_DATA_DIR=/var/lib/{state}" in env
    set_vars = set(re.findall(r"\b(SOAR_[A-Z_]+)=", env))
    assert set_vars <= SETTING_ENV_NAMES, set_vars - SETTING_ENV_NAMES
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "LockPersonality"):
        assert one(s, key) == "yes", key
    assert one(s, "ProtectSystem") == "strict"
    assert set(one(s, "RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    # pynng goes through cffi, whose callbacks may need W+X memory: deliberately off.
    assert "MemoryDenyWriteExecute" not in s
    assert "MemoryDenyWriteExecute" in (SYSTEMD / name).read_text()  # ... and the why is there
    assert one(unit["Install"], "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("name", UNITS)
def test_unit_runs_a_real_soar_command(name: str) -> None:
    from soar.cli import build_parser

    exec_start = one(unit_file(name)["Service"], "ExecStart").split()
    assert exec_start[1:3] == ["-m", "soar"]
    command = exec_start[3]
    assert command == {"soar.service": "run", "soar-ingest.service": "ingest",
                       "soar-track@.service": "track", "soar-web.service": "web"}[name]
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert commands is not None and command in commands


def test_track_template_takes_its_id_from_the_instance() -> None:
    s = unit_file("soar-track@.service")["Service"]
    assert "SOAR_TRACK_ID=%H-%i" in " ".join(s["Environment"])  # unique across machines
    assert "-/etc/soar/track-%i.env" in s["EnvironmentFile"]


def test_env_example_names_only_real_settings() -> None:
    names = set(re.findall(r"\b(SOAR_[A-Z_]+)=", (SYSTEMD / "soar.env.example").read_text()))
    assert names and names <= SETTING_ENV_NAMES, names - SETTING_ENV_NAMES


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart= exists: point it at this interpreter.
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace("/opt/soar/venv/bin/python", sys.executable)
        (tmp_path / name.replace("@.", "@0.")).write_text(text)
    for path in sorted(tmp_path.glob("*.service")):
        done = subprocess.run([analyze, "verify", "--man=no", str(path)],
                              capture_output=True, text=True, timeout=60)
        problems = [ln for ln in done.stderr.splitlines() if str(tmp_path) in ln or "soar" in ln]
        assert done.returncode == 0 and not problems, done.stderr


# -- split mode: NATS (systemd, compose profile, cluster example) ---------------------------------

SPLIT_UNITS = ["soar-ingest.service", "soar-track@.service", "soar-web.service"]
NATS_CONFIGS = [SYSTEMD / "nats.conf.example", DOCKER / "nats.conf", DOCKER / "nats-cluster.conf"]


def nats_server() -> str:
    from soar.broker.embedded import find_binary

    return str(find_binary())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_nats_config(path: Path, tmp_path: Path) -> tuple[Path, int, int]:
    """`path` with its store under tmp_path and its ports free ones on 127.0.0.1."""
    client, http = free_port(), free_port()
    text = re.sub(r'store_dir: "[^"]+"', f'store_dir: "{tmp_path / "js"}"', path.read_text())
    text = re.sub(r"^listen: \S+", f"listen: 127.0.0.1:{client}", text, flags=re.M)
    text = re.sub(r"^http: \S+", f"http: 127.0.0.1:{http}", text, flags=re.M)
    text = re.sub(r"^  listen: \S+", f"  listen: 127.0.0.1:{free_port()}", text, flags=re.M)
    local = tmp_path / path.name
    local.write_text(text)
    return local, client, http


@pytest.mark.parametrize("path", NATS_CONFIGS, ids=lambda p: p.name)
def test_nats_config_is_valid_and_needs_the_token(path: Path, tmp_path: Path) -> None:
    local, _, _ = local_nats_config(path, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    env["SERVER_NAME"] = "n1"
    check = [nats_server(), "-t", "-c", str(local)]
    without = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
    assert without.returncode != 0 and "SOAR_NATS_TOKEN" in without.stdout + without.stderr
    done = subprocess.run(check, env={**env, "SOAR_NATS_TOKEN": "t0ken"}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "jetstream" in path.read_text()


async def test_nats_config_serves_jetstream_to_soar_with_the_token(tmp_path: Path) -> None:
    """The compose profile's server config, run for real: soar's client makes its stream with
    the token, and is refused without it."""
    import trio

    from soar.broker import BrokerError, StreamSpec, open_link

    local, client, http = local_nats_config(DOCKER / "nats.conf", tmp_path)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SOAR_")},
           "SOAR_NATS_TOKEN": "t0ken"}
    server = subprocess.Popen([nats_server(), "-c", str(local)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"nats://127.0.0.1:{client}"
        with trio.fail_after(60):
            while True:  # until it answers (a state, not a duration)
                try:
                    await trio.open_tcp_stream("127.0.0.1", http)
                    break
                except OSError:
                    await trio.sleep(0.1)
            async with open_link(url, token="t0ken", name="contrib-test") as link:
                stream = await link.ensure_stream(StreamSpec(partitions=2))
                assert stream.spec.partitions == 2
            with pytest.raises(BrokerError):
                async with open_link(url, token="wrong", name="contrib-test") as link:
                    await link.ensure_stream(StreamSpec(partitions=2))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_nats_unit_runs_the_venvs_server_with_its_config_hardened() -> None:
    unit = unit_file("soar-nats.service")
    u, s = unit["Unit"], unit["Service"]
    assert one(s, "ExecStart").split() == ["/opt/soar/venv/bin/nats-server", "-c",
                                           "/etc/soar/nats.conf"]
    assert one(s, "ExecStartPre").split()[:2] == ["/opt/soar/venv/bin/nats-server", "-t"]
    # the token comes from the file every soar unit reads
    assert "/etc/soar/soar.env" in s["EnvironmentFile"]
    assert "$SOAR_NATS_TOKEN" in (SYSTEMD / "nats.conf.example").read_text()
    state = one(s, "StateDirectory")
    assert one(s, "ReadWritePaths") == f"/var/lib/{state}"
    assert f'store_dir: "/var/lib/{state}"' in (SYSTEMD / "nats.conf.example").read_text()
    assert one(s, "Restart") == "on-failure" and int(one(u, "StartLimitBurst")) >= 3
    assert one(s, "User") == "soar" and one(s, "DynamicUser") == "no"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "LockPersonality",
                "MemoryDenyWriteExecute"):
        assert one(s, key) == "yes", key
    assert one(s, "ProtectSystem") == "strict"
    assert one(unit["Install"], "WantedBy") == "multi-user.target"
    for name in SPLIT_UNITS:  # the soar units start after it when it runs on their machine
        assert "soar-nats.service" in one(unit_file(name)["Unit"], "After")


def test_nats_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (SYSTEMD / "soar-nats.service").read_text().replace(
        "/opt/soar/venv/bin/nats-server", nats_server())
    path = tmp_path / "soar-nats.service"
    path.write_text(text)
    done = subprocess.run([analyze, "verify", "--man=no", str(path)], capture_output=True,
                          text=True, timeout=60)
    problems = [ln for ln in done.stderr.splitlines() if str(tmp_path) in ln or "soar" in ln]
    assert done.returncode == 0 and not problems, done.stderr


@pytest.mark.parametrize("name", SPLIT_UNITS)
def test_split_unit_comments_describe_nats_not_the_removed_transport(name: str) -> None:
    text = (SYSTEMD / name).read_text()
    for gone in ("SOAR_TRACK_ENDPOINTS", "SOAR_LIVE_SOURCES", "SOAR_TRACK_INDEX", "write-ahead",
                 "shard map"):
        assert gone not in text, f"{name} still describes {gone}"
    assert "SOAR_NATS_URL" in text and "docs/split-mode.md" in text
    named = set(re.findall(r"\b(SOAR_[A-Z_]+)\b", text)) - {"SOAR_ENV"}  # the stream's name
    assert named <= SETTING_ENV_NAMES, named - SETTING_ENV_NAMES


SPLIT_SERVICES = {"soar-ingest": "ingest", "soar-track-0": "track", "soar-track-1": "track",
                  "soar-web": "web"}


def test_compose_split_profile_runs_nats_ingest_two_tracks_and_web(tmp_path: Path) -> None:
    from soar.cli import build_parser
    from soar.config import load_settings

    data = compose()
    services = data["services"]
    assert "profiles" not in services["soar"] and "profiles" not in services["postgres"]
    nats = services["nats"]
    assert nats["profiles"] == ["split"] and nats["image"].startswith("nats:2.")
    assert "/healthz?js-enabled-only=true" in " ".join(nats["healthcheck"]["test"])
    config = next(v.split(":")[0] for v in nats["volumes"] if v.endswith(":ro"))
    assert (DOCKER / config).resolve() == DOCKER / "nats.conf"
    assert nats["environment"]["SOAR_NATS_TOKEN"] == "${SOAR_NATS_TOKEN:-soar}"
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert commands is not None
    named = set(data["volumes"])
    track_ids = []
    for name, command in SPLIT_SERVICES.items():
        service = services[name]
        assert service["profiles"] == ["split"], name
        assert service["command"] == ["python", "-m", "soar", command] and command in commands
        assert service["depends_on"]["nats"]["condition"] == "service_healthy", name
        if command != "ingest":
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name
        env = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))
               for k, v in service["environment"].items()}
        unknown = sorted(set(env) - SETTING_ENV_NAMES)
        assert not unknown, f"{name} sets variables soar does not read: {unknown}"
        settings = load_settings(environ=env)
        assert settings.nats_url == "nats://nats:4222" and settings.nats_token == "soar"
        assert settings.database_url == "postgresql://soar:soar@postgres:5432/soar"
        if command == "track":
            track_ids.append(settings.track_id)
        if command != "web":  # ingest and tracks: /metrics and /readyz on their own port
            assert settings.metrics_addr is not None
            port = settings.metrics_addr.rsplit(":", 1)[1]
            assert f"127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"])
        assert duration_s(service["stop_grace_period"]) > settings.shutdown_deadline
        for volume in service["volumes"]:
            assert volume.split(":")[0] in named, f"{volume} is not a named volume"
    assert len(set(track_ids)) == len(track_ids) == 2
    text = (DOCKER / "compose.yaml").read_text()
    assert "--profile split up -d --build --scale soar=0" in text


def test_cluster_example_has_three_jetstream_servers_routed_to_each_other() -> None:
    yaml = pytest.importorskip("yaml")
    from soar.config import load_settings

    data = yaml.safe_load((DOCKER / "nats-cluster.yaml").read_text())
    services = data["services"]
    assert sorted(services) == ["n1", "n2", "n3"]
    conf = (DOCKER / "nats-cluster.conf").read_text()
    for name, service in services.items():
        assert service["environment"]["SERVER_NAME"] == name
        assert any(v.startswith("./nats-cluster.conf:") for v in service["volumes"])
        assert f"nats-route://{name}:6222" in conf
    assert "server_name: $SERVER_NAME" in conf and "jetstream" in conf
    url = "nats://n1:4222,nats://n2:4222,nats://n3:4222"
    assert f"SOAR_NATS_URL={url}" in (DOCKER / "nats-cluster.yaml").read_text()
    assert load_settings(environ={"SOAR_NATS_URL": url}).nats_url == url
    assert "--replicas 3" in (DOCKER / "nats-cluster.yaml").read_text()


# -- regenerating the generated parts of docs/operations.md ---------------------------------------


def metrics_reference_markdown() -> str:
    """The metrics tables, from the live registry after importing every soar module."""
    import importlib
    import pkgutil

    import prometheus_client

    import soar

    for module in pkgutil.walk_packages(soar.__path__, "soar."):
        if not module.name.endswith("__main__"):  # __main__ would run soar
            importlib.import_module(module.name)
    where: dict[str, str] = {}
    for path in sorted((REPO / "soar").rglob("*.py")):
        for kind, name in _METRIC_DEF.findall(path.read_text()):
            base = name.removesuffix("_total") if kind == "Counter" else name
            where[base] = str(path.relative_to(REPO))
    rows: dict[str, list[tuple[str, str, str, str]]] = {}
    registry: Any = prometheus_client.REGISTRY
    for collector in list(registry._collector_to_names):
        name = getattr(collector, "_name", "")
        if not name.startswith("soar_"):
            continue
        kind = collector._type
        exposed = name + "_total" if kind == "counter" else name
        labels = ", ".join(f"`{label}`" for label in collector._labelnames) or "—"
        rows.setdefault(where[name], []).append((exposed, kind, labels, collector._documentation))
    out: list[str] = []
    for module_path in sorted(rows):
        out += ["", f"**{module_path}**", "", "| metric | type | labels | meaning |", "|---|---|---|---|"]
        out += [f"| `{m}` | {k} | {lab} | {doc} |" for m, k, lab, doc in sorted(rows[module_path])]
    return "\n".join(out).lstrip("\n") + "\n"


def _replace_between(text: str, begin: str, end: str, body: str) -> str:
    head, sep, rest = text.partition(begin)
    _, sep2, tail = rest.partition(end)
    assert sep and sep2, f"markers {begin!r} … {end!r} not found"
    return f"{head}{begin}\n{body}{end}{tail}"


if __name__ == "__main__":
    # `python tests/test_contrib.py`: rewrite the generated sections of docs/operations.md.
    text = OPERATIONS.read_text()
    text = _replace_between(text, "<!-- BEGIN config-reference -->", "<!-- END config-reference -->",
                            config_reference())
    text = _replace_between(text, "<!-- BEGIN metrics-reference -->", "<!-- END metrics-reference -->",
                            metrics_reference_markdown())
    OPERATIONS.write_text(text)
    print(f"rewrote {OPERATIONS.relative_to(REPO)}")
