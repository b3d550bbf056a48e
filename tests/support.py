"""Helpers more than one test folder needs, imported as `tests.support` (tests/ is a package).

Waiting on a state (`wait_until`, `wait_for`, `wait_for_blocking`: a timeout only bounds a
stuck run), plain HTTP to a real server (`http_get`, `http_json`; from trio `fetch`,
`fetch_json`), soar child processes (`soar_env`, `soar_cli`, `soar_process`, `wait_ready`,
`sigterm`), an embedded
nats-server (`embedded_nats`), device database files (`ddb_device`, `write_ddb`), rows committed
through a real writer (`write_rows`), free ports and PostgreSQL processes.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from soar.broker.embedded import EmbeddedNats


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a child process that must be told its port (never
    one an outgoing connection of another test could take first: see `free_loopback_port`)."""
    from soar.hostport import free_loopback_port

    return free_loopback_port()


def postgres_processes(data_dir: Path) -> list[str]:
    """Command lines of the postgres processes running on `data_dir`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "postgres" in cmdline and str(data_dir) in cmdline:
            found.append(cmdline)
    return found


async def write_rows(url: str, family: Any, items: list[Any], spool_dir: Path) -> None:
    """Commit `items` through a real StoreWriter of `family` (one batch), then close its pool."""
    from soar.store.writer import StoreWriter, open_pool

    pool = open_pool(url, size=1)
    try:
        writer = StoreWriter(pool, family, spool_dir=spool_dir)
        send, receive = trio.open_memory_channel[object](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, receive)
            async with send:
                await send.send(list(items))
    finally:
        await trio.to_thread.run_sync(pool.close)


# ---- waiting on a state ------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll `condition` on trio's clock until it holds or `timeout` passes; whether it held
    (for `assert await wait_until(...), message`)."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(step)
        return True
    return condition()


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Until `condition()` holds; past `timeout` (a bound for a stuck run, not a measurement)
    fail naming `what`."""
    if not await wait_until(condition, timeout, 0.01):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_for_blocking(condition: Callable[[], bool], timeout: float, what: str,
                      step: float = 0.1) -> None:
    """`wait_for` for code outside trio (child processes, feed threads): polls with sleeps."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


# ---- real HTTP ---------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 30, headers: Mapping[str, str] | None = None
             ) -> tuple[int, bytes]:
    """GET `url`: its status and body, an error status included; (0, b"") when nothing
    answers (a server not up yet, or gone)."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def http_json(url: str, status: int = 200, timeout: float = 30) -> Any:
    """The JSON body of GET `url`, which must answer `status`."""
    code, body = http_get(url, timeout)
    assert code == status, (url, code, body[:500])
    return json.loads(body)


async def fetch(url: str, timeout: float = 30, headers: Mapping[str, str] | None = None
                ) -> tuple[int, bytes]:
    """`http_get` from trio: in a worker thread, so the server under test keeps running."""
    return await trio.to_thread.run_sync(lambda: http_get(url, timeout, headers))


async def fetch_json(url: str, status: int = 200, timeout: float = 30) -> Any:
    """`http_json` from trio."""
    return await trio.to_thread.run_sync(lambda: http_json(url, status, timeout))


# ---- processes and servers ---------------------------------------------------------------------


def soar_env(**settings: str) -> dict[str, str]:
    """The environment of a soar child process: this one's without any `SOAR_*` setting (the
    developer's own must not leak into a test), plus `settings` (`SOAR_...="value"`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    return env | settings


def soar_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m soar ARGS` to its end in a child process with `soar_env(**env)`; its
    output captured as text."""
    return subprocess.run([sys.executable, "-m", "soar", *args], env=soar_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


@contextmanager
def soar_process(*args: str, env: Mapping[str, str], **popen: Any
                 ) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m soar ARGS` as a child process, its output piped; killed if it is still running
    when the block ends, so a failing test leaves no soar behind."""
    proc = subprocess.Popen([sys.executable, "-m", "soar", *args], env=dict(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def sigterm(proc: subprocess.Popen[Any], timeout: float) -> str:
    """SIGTERM, as an operator (or systemd) stops soar; its whole output once it has exited."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    return out.decode(errors="replace") if isinstance(out, bytes) else str(out or "")


def wait_ready(base: str, proc: subprocess.Popen[Any], timeout: float,
               log: Path | None = None) -> None:
    """Until the soar child `proc` answers `base/readyz` with 200; fails at once, with the end
    of its output (its pipe, or `log`), if it exits first."""

    def ready() -> bool:
        if proc.poll() is not None:
            out: str | bytes = log.read_text() if log is not None else proc.communicate()[0] or ""
            text = out.decode(errors="replace") if isinstance(out, bytes) else out
            raise AssertionError(f"exited ({proc.returncode}) before it was ready:\n{text[-3000:]}")
        return http_get(base + "/readyz", 5)[0] == 200

    wait_for_blocking(ready, timeout, f"{base}/readyz to answer 200", 0.2)


@contextmanager
def embedded_nats(prefix: str = "soar-test-nats-") -> Iterator[EmbeddedNats]:
    """A real `nats-server -js` on loopback in a temporary directory, stopped on leaving."""
    from soar.broker.embedded import EmbeddedNats

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        server = EmbeddedNats(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


# ---- soar's source, read as it is written ------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def is_soar_module(dotted: str) -> bool:
    """`soar.x.y` is a module or package of this tree (not a name inside one)."""
    path = REPO.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_soar_names(tree: ast.Module) -> dict[str, int]:
    """The private soar names (`soar.module._name`) a source imports, or reads off a soar module
    it imported (`from soar import runtime` ... `runtime._x`), each with the line it is first at."""
    found: dict[str, int] = {}
    bound: dict[str, str] = {}  # local name -> the soar module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound |= {alias.asname: alias.name for alias in node.names
                      if alias.asname and alias.name.startswith("soar.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("soar"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if is_soar_module(full):
                    bound[alias.asname or alias.name] = full
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.setdefault(full, node.lineno)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.setdefault(f"{bound[node.value.id]}.{node.attr}", node.lineno)
    return found


# ---- real captures ----------------------------------------------------------------------------


def ogn_trace_fixes(path: Path) -> list[Any]:
    """The fixes of a recorded OGN trace (`<ISO time> <APRS line>` a line), through the real
    parser, each received at its recorded time; every line must be an aircraft beacon."""
    from soar.ingest.capture import iso_to_us
    from soar.protocols.ogn import AircraftBeacon, parse_line, to_fix

    fixes = []
    for line in path.read_text().splitlines():
        stamp, aprs = line.split(" ", 1)
        beacon = parse_line(aprs)
        assert isinstance(beacon, AircraftBeacon), beacon
        fixes.append(to_fix(beacon, iso_to_us(stamp), path.name))
    return fixes


# ---- arbitrary values for property tests ------------------------------------------------------


def arbitrary_fixes() -> Any:
    """A hypothesis strategy of fixes: any protocol, address type and address, anywhere but
    exactly on a pole or the antimeridian, for the property tests of the wire formats."""
    from hypothesis import strategies as st

    from soar.records import AddressType, Fix, Protocol

    return st.builds(
        Fix,
        protocol=st.sampled_from(list(Protocol)),
        address_type=st.sampled_from(list(AddressType)),
        address=st.integers(0, 0xFFFFFF),
        received_us=st.integers(0, 2**53),
        lat=st.floats(-89.9999999, 89.9999999),
        lon=st.floats(-179.9999999, 179.9999999),
        altitude_ft=st.none() | st.floats(-2000, 60000),
        callsign=st.none() | st.text(max_size=8),
    )


# ---- the OGN device database -------------------------------------------------------------------


def ddb_device(device_type: str, device_id: str, **fields: str) -> dict[str, str]:
    """One device as the DDB's JSON lists it: a tracked, identified ASK-21 unless `fields`
    say otherwise (`registration`, `cn`, `tracked`, `identified`, `aircraft_type`, ...)."""
    return {"device_type": device_type, "device_id": device_id, "aircraft_model": "ASK-21",
            "registration": "D-1234", "cn": "XY", "tracked": "Y", "identified": "Y"} | fields


def write_ddb(path: Path, devices: Iterable[Mapping[str, str]]) -> Path:
    """A device database file of `devices`, as `soar ddb import` reads it; its path."""
    path.write_text(json.dumps({"devices": [dict(d) for d in devices]}))
    return path
