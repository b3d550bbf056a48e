"""The front door answers health, readiness and metrics while the event loop cannot (issue 18.6).

Beside 1,000 WebSocket clients `/healthz` waited seconds for its turn in the loop. Each test
here runs the real server (`serve_web`: the door's thread, hypercorn on the loop) and holds the
loop itself still, synchronously, until a client in another thread has its answer: the answer
can only come from the door. No timing is asserted; every wait is on an event or a count, with
a bound only so that a failure reports instead of hanging.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
from collections.abc import Callable
from functools import partial

import prometheus_client
import pytest
import trio

from soar.config import load_settings
from soar.web.app import WebContext
from soar.web.connections import ACCEPT_ERRORS
from soar.web.door import DOOR, HEAD_MAX, HeadKind, classify
from soar.web.server import serve_web

BOUND_S = 60.0  # far past any answer; reached only when the door does not answer

TREE = {"name": "root", "state": "running", "children": [
    {"name": "feed", "state": "restarting", "last_error": "ConnectionRefusedError: 10.1.2.3:30005"}
]}


def _ctx() -> WebContext:
    """A process whose tree is TREE and whose one readiness check passes."""
    return WebContext(tree=lambda: TREE, ready_checks={"database": lambda: True})


async def _server(
    nursery: trio.Nursery, ctx: WebContext, bind: str = "127.0.0.1:0", **overrides: object
) -> tuple[str, int]:
    settings = load_settings(environ={}, overrides=overrides)
    binds: list[str] = await nursery.start(partial(serve_web, bind=bind), settings, ctx,
                                           trio.Event())
    host, port = binds[0].split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def _get(host: str, port: int, path: str, *, headers: str = "",
         source: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; status, headers, body once the server has closed."""
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with conn:
        conn.settimeout(BOUND_S)
        if source is not None:
            conn.bind((source, 0))
        conn.connect((host, port))
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: soar\r\n{headers}\r\n".encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), fields, body


def _while_the_loop_is_held(probe: Callable[[], object]) -> object:
    """Run `probe` in a thread while this (the loop's) thread waits for it: nothing of the loop
    runs until it returns. Its result, or AssertionError if it did not return in BOUND_S."""
    done = threading.Event()
    out: list[object] = []

    def run() -> None:
        try:
            out.append(probe())
        except BaseException as exc:  # reported below, in the test's thread
            out.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(BOUND_S), "no answer while the event loop was held"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


async def test_health_readiness_and_metrics_are_answered_while_the_loop_is_held(
    nursery: trio.Nursery,
) -> None:
    host, port = await _server(nursery, _ctx())
    answered = DOOR.labels(outcome="healthz")._value.get()

    def probes() -> list[tuple[int, dict[str, str], bytes]]:
        return [_get(host, port, path) for path in ("/healthz", "/readyz", "/metrics")]

    health, ready, metrics = _while_the_loop_is_held(probes)  # type: ignore[misc]
    assert health[0] == 200 and health[1]["connection"] == "close"
    assert json.loads(health[2]) == {"status": "ok", "tree": TREE}  # this host sees details
    assert ready[0] == 200 and json.loads(ready[2]) == {"ready": True,
                                                        "checks": {"database": True}}
    assert metrics[0] == 200 and b"soar_http_door_connections_total" in metrics[2]
    assert DOOR.labels(outcome="healthz")._value.get() - answered == 1

    # anything else waits for the loop: asked while it is held, answered once it runs
    other: list[tuple[int, dict[str, str], bytes]] = []
    asked = threading.Event()

    def ask_other() -> None:
        asked.set()
        other.append(_get(host, port, "/not-here", headers="Connection: close\r\n"))

    asker = threading.Thread(target=ask_other, daemon=True)
    asker.start()
    asked.wait(BOUND_S)
    with trio.fail_after(BOUND_S):
        while not other:
            await trio.sleep(0.01)
    assert other[0][0] == 404  # hypercorn and the app answered it: it was handed over
    nursery.cancel_scope.cancel()


async def test_a_head_sent_in_pieces_is_answered_by_the_door(nursery: trio.Nursery) -> None:
    host, port = await _server(nursery, _ctx())
    answered = DOOR.labels(outcome="readyz")._value.get()
    with socket.create_connection((host, port)) as conn:
        conn.settimeout(BOUND_S)
        conn.sendall(b"GET /readyz HTTP/1.1\r\nHo")  # a prober on a slow link, mid-head
        # the loop held: the rest of the head, and the answer, can only meet in the door
        def rest() -> bytes:
            conn.sendall(b"st: soar\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
            return answer

        answer = _while_the_loop_is_held(rest)
    assert isinstance(answer, bytes) and answer.startswith(b"HTTP/1.1 200"), answer
    assert DOOR.labels(outcome="readyz")._value.get() - answered == 1
    nursery.cancel_scope.cancel()


async def test_a_stalled_loop_makes_healthz_503_and_the_next_snapshot_heals_it(
    nursery: trio.Nursery,
) -> None:
    host, port = await _server(nursery, _ctx(), health_stall_after=0.2)

    def until_stalled() -> tuple[tuple[int, dict[str, str], bytes], tuple[int, dict[str, str],
                                                                              bytes]]:
        # the loop is held: its last snapshot only gets older
        while (health := _get(host, port, "/healthz"))[0] == 200:
            pass
        return health, _get(host, port, "/readyz")

    health, ready = _while_the_loop_is_held(until_stalled)  # type: ignore[misc]
    assert health[0] == 503
    document = json.loads(health[2])
    assert document["status"] == "stalled" and document["loop_silent_s"] >= 0.2
    assert ready[0] == 503 and json.loads(ready[2])["checks"] == {"event_loop": False}
    # the loop runs again: the next snapshot makes it healthy
    with trio.fail_after(BOUND_S):
        while (await trio.to_thread.run_sync(_get, host, port, "/healthz"))[0] != 200:
            await trio.sleep(0.01)
    nursery.cancel_scope.cancel()


class _BrokenCollector:
    """A metrics collector with a bug: what the door meets when one raises."""

    def describe(self) -> list[object]:
        return []  # (registering calls this, not collect)

    def collect(self) -> list[object]:
        raise RuntimeError("collector bug")


async def test_a_failing_answer_closes_that_connection_and_the_door_goes_on(
    nursery: trio.Nursery,
) -> None:
    host, port = await _server(nursery, _ctx())
    failed = DOOR.labels(outcome="failed")._value.get()
    broken = _BrokenCollector()
    prometheus_client.REGISTRY.register(broken)  # type: ignore[arg-type]
    try:
        def probes() -> tuple[bytes, tuple[int, dict[str, str], bytes]]:
            with socket.create_connection((host, port)) as conn:
                conn.settimeout(BOUND_S)
                conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: soar\r\n\r\n")
                answer = b""
                while chunk := conn.recv(65536):
                    answer += chunk
            return answer, _get(host, port, "/healthz")

        metrics, health = _while_the_loop_is_held(probes)  # type: ignore[misc]
    finally:
        prometheus_client.REGISTRY.unregister(broken)  # type: ignore[arg-type]
    assert metrics == b""  # closed without an answer
    assert DOOR.labels(outcome="failed")._value.get() - failed == 1
    assert health[0] == 200  # the next connection is served
    nursery.cancel_scope.cancel()


def _outward_address() -> str | None:
    """An IPv4 address of this host that is not loopback, or None."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 9))  # no packet is sent: this only picks a route
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_remote_callers_get_states_only_and_metrics_need_the_token(
    nursery: trio.Nursery,
) -> None:
    address = _outward_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to call from")
    _host, port = await _server(nursery, _ctx(), bind=f"{address}:0", api_token="s3cret")

    def probes() -> list[tuple[int, dict[str, str], bytes]]:
        auth = "Authorization: Bearer s3cret\r\n"
        return [_get(address, port, "/healthz", source=address),
                _get(address, port, "/healthz", source=address, headers=auth),
                _get(address, port, "/metrics", source=address),
                _get(address, port, "/metrics", source=address, headers=auth)]

    public, trusted, refused, metrics = _while_the_loop_is_held(probes)  # type: ignore[misc]
    assert public[0] == 200 and "last_error" not in public[2].decode()
    assert json.loads(public[2])["tree"]["children"][0]["state"] == "restarting"
    assert json.loads(trusted[2]) == {"status": "ok", "tree": TREE}
    assert refused[0] == 401 and refused[1]["www-authenticate"].startswith("Bearer")
    assert metrics[0] == 200
    nursery.cancel_scope.cancel()


async def test_out_of_descriptors_at_accept_is_counted_and_the_client_served_after(
    nursery: trio.Nursery,
) -> None:
    ctx = WebContext(ready_checks={"database": lambda: True})
    host, port = await _server(nursery, ctx)
    before = ACCEPT_ERRORS.labels(errno="EMFILE")._value.get()
    client = socket.socket()  # its descriptor, before there are none left
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        client.connect((host, port))  # the kernel completes it; the door cannot accept it
        with trio.fail_after(BOUND_S):
            while ACCEPT_ERRORS.labels(errno="EMFILE")._value.get() == before:
                await trio.sleep(0.01)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with client:  # descriptors are back: the door accepts it on its next try, and answers
        client.settimeout(BOUND_S)
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: soar\r\n\r\n")
        answer = await trio.to_thread.run_sync(client.recv, 65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    nursery.cancel_scope.cancel()


def test_request_heads_the_door_takes_and_the_ones_it_passes_on() -> None:
    assert classify(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n") == 34
    assert classify(b"HEAD /readyz?verbose=1 HTTP/1.1\r\nHost: a\r\n\r\nGET") == 44
    assert classify(b"GET /heal") is HeadKind.WAIT  # could still become one
    assert classify(b"GET /healthz HTTP/1.1\r\nHost:") is HeadKind.WAIT  # head not complete
    assert classify(b"GET /healthzx HTTP/1.1\r\n\r\n") is HeadKind.OTHER
    assert classify(b"GET /api/live HTTP/1.1\r\n") is HeadKind.LIVE  # trio-websocket's
    assert classify(b"GET /api/li") is HeadKind.WAIT
    assert classify(b"GET /api/lives HTTP/1.1\r\n") is HeadKind.OTHER
    assert classify(b"GET /api/aircraft HTTP/1.1\r\n") is HeadKind.OTHER
    assert classify(b"POST /healthz HTTP/1.1\r\n\r\n") is HeadKind.OTHER
    assert classify(b"\x16\x03\x01") is HeadKind.OTHER  # TLS to a plain port: hypercorn's
    assert classify(b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * HEAD_MAX) is HeadKind.OTHER
