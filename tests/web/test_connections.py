"""HTTP connections end when HTTP says they end, on the real server (hypercorn + quart-trio).

Found by an SRE attack: every connection stayed open after its response, `Connection: close`
and HTTP/1.0 included, and idle keep-alive connections were never timed out, so 3,000 clients
held 3,000 descriptors. Each case waits for the server's end of the connection (EOF) with a
bound far longer than any close should take but far shorter than the keep-alive timeout in
force, so only the behaviour under test can close it in time.
"""

from __future__ import annotations

import logging
import os
import socket
from functools import partial

import trio

from soar.config import load_settings
from soar.web.app import WebContext
from soar.web.connections import ACCEPT_ERRORS, AcceptErrorFilter
from soar.web.server import serve_web

LONG_KEEP_ALIVE_S = 600.0  # no close in these tests may come from the keep-alive timer


async def _server(nursery: trio.Nursery, keep_alive: float) -> tuple[str, int]:
    settings = load_settings(environ={}, overrides={"http_keep_alive": keep_alive})
    binds: list[str] = await nursery.start(
        partial(serve_web, bind="127.0.0.1:0"), settings, WebContext(), trio.Event()
    )
    host, port = binds[0].split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def _request_and_wait_for_eof(host: str, port: int, request: bytes, bound_s: float) -> bytes:
    """Send `request`; the whole answer once the server closes, or AssertionError."""
    with socket.create_connection((host, port)) as conn:
        conn.sendall(request)
        conn.settimeout(bound_s)
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except TimeoutError:
            raise AssertionError(f"still open after {bound_s} s; got {answer[:80]!r}") from None
    return answer


async def test_connection_close_and_http_1_0_are_closed_after_the_response(
    nursery: trio.Nursery,
) -> None:
    host, port = await _server(nursery, LONG_KEEP_ALIVE_S)
    for request in (b"GET /healthz HTTP/1.0\r\n\r\n",
                    b"GET /healthz HTTP/1.1\r\nHost: soar\r\nConnection: close\r\n\r\n"):
        answer = await trio.to_thread.run_sync(_request_and_wait_for_eof, host, port, request, 60)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
        assert b'"status":"ok"' in answer.replace(b" ", b"")
    nursery.cancel_scope.cancel()


async def test_an_idle_keep_alive_connection_is_closed_after_the_setting(
    nursery: trio.Nursery,
) -> None:
    host, port = await _server(nursery, 1.0)
    request = b"GET /readyz HTTP/1.1\r\nHost: soar\r\n\r\n"  # keep-alive: HTTP/1.1's default
    answer = await trio.to_thread.run_sync(_request_and_wait_for_eof, host, port, request, 60)
    assert answer.startswith(b"HTTP/1.1 503"), answer[:80]  # no checks configured: not ready
    nursery.cancel_scope.cancel()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_many_clients_leave_no_descriptor_behind(nursery: trio.Nursery) -> None:
    host, port = await _server(nursery, LONG_KEEP_ALIVE_S)
    before = _open_descriptors()

    def crowd() -> int:
        clients = [socket.create_connection((host, port)) for _ in range(300)]
        for client in clients:
            client.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        closed = 0
        for client in clients:
            client.settimeout(60)
            while client.recv(65536):
                pass
            closed += 1
            client.close()
        return closed

    assert await trio.to_thread.run_sync(crowd) == 300
    with trio.fail_after(60):  # the server side lets go of each descriptor too
        while _open_descriptors() > before:
            await trio.sleep(0.05)
    nursery.cancel_scope.cancel()


def test_accept_errors_are_counted_and_reported_once_a_minute() -> None:
    now = [1000.0]
    gate = AcceptErrorFilter(every_s=60.0, clock=lambda: now[0])
    error = OSError(24, "Too many open files")

    def record() -> logging.LogRecord:
        return logging.LogRecord("trio.serve_listeners", logging.ERROR, __file__, 1,
                                 "accept returned %s (%s); retrying in %s seconds",
                                 ("EMFILE", "Too many open files", 0.1),
                                 (OSError, error, None))

    before = ACCEPT_ERRORS.labels(errno="EMFILE")._value.get()
    passed = []
    for tenth in range(601):  # a minute of trio's retries, ten a second
        now[0] = 1000.0 + tenth / 10
        rec = record()
        if gate.filter(rec):
            passed.append(rec)
    assert ACCEPT_ERRORS.labels(errno="EMFILE")._value.get() - before == 601
    assert len(passed) == 2  # the first, and one a minute later with the count in between
    assert passed[0].exc_info is None
    assert "EMFILE" in passed[1].getMessage() and "599 more" in passed[1].getMessage()
