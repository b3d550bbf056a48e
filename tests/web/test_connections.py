"""HTTP connections end when HTTP says they end, on the real server (hypercorn + quart-trio).

Found by an SRE attack: every connection stayed open after its response, `Connection: close`
and HTTP/1.0 included, and idle keep-alive connections were never timed out, so 3,000 clients
held 3,000 descriptors. Each case waits for the server's end of the connection (EOF) with a
bound far longer than any close should take but far shorter than the keep-alive timeout in
force, so only the behaviour under test can close it in time.
"""

from __future__ import annotations

import os
import socket
from functools import partial

import trio

from soar.config import load_settings
from soar.web.app import WebContext, create_app
from soar.web.connections import (
    CONNECTIONS,
    PRIORITY_SLOTS,
    REFUSED,
    WAITING,
    default_max_connections,
)
from soar.web.server import serve_web
from tests.support import wait_for

LONG_KEEP_ALIVE_S = 600.0  # no close in these tests may come from the keep-alive timer


async def _server(
    nursery: trio.Nursery, keep_alive: float, **overrides: object
) -> tuple[str, int]:
    settings = load_settings(environ={}, overrides={"http_keep_alive": keep_alive, **overrides})
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


# ---- the connection limit ----------------------------------------------------------------------

LIMIT = 20


def _answer(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes (60 s at most: far past any close here)."""
    conn.settimeout(60)
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    return answer


async def test_past_the_limit_connections_get_503_and_health_is_still_answered(
    nursery: trio.Nursery,
) -> None:
    host, port = await _server(nursery, LONG_KEEP_ALIVE_S, http_max_connections=LIMIT)
    open_before, refused_before = CONNECTIONS._value.get(), REFUSED._value.get()
    # LIMIT clients that connect and say nothing: held until the keep-alive timeout (600 s)
    held = [socket.create_connection((host, port)) for _ in range(LIMIT)]
    try:
        await wait_for(lambda: CONNECTIONS._value.get() - open_before == LIMIT, 60, "all held")

        def over_the_limit(request: bytes) -> bytes:
            with socket.create_connection((host, port)) as conn:
                conn.sendall(request)
                return _answer(conn)

        # past the limit: an API request is refused with 503 and the connection closed...
        answer = await trio.to_thread.run_sync(
            over_the_limit, b"GET /api/flights HTTP/1.1\r\nHost: soar\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503"), answer[:80]
        assert b"Retry-After: 5" in answer and b"Connection: close" in answer
        assert REFUSED._value.get() - refused_before == 1
        # ...health is answered (keep-alive asked for, but the server closes after the answer)
        for path in (b"/healthz", b"/readyz", b"/metrics"):
            answer = await trio.to_thread.run_sync(
                over_the_limit, b"GET " + path + b" HTTP/1.1\r\nHost: soar\r\n\r\n")
            assert answer.split(b" ", 2)[1] in (b"200", b"503"), answer[:80]  # readyz: no checks
            assert b"connection: close" in answer.lower()
        assert REFUSED._value.get() - refused_before == 1

        # The priority slots full of clients that say nothing: the next connection is refused
        # before it sends a byte.
        silent = [socket.create_connection((host, port)) for _ in range(PRIORITY_SLOTS)]
        try:
            await wait_for(
                lambda: CONNECTIONS._value.get() - open_before == LIMIT + PRIORITY_SLOTS,
                60, "the priority slots taken")
            with socket.create_connection((host, port)) as conn:
                answer = await trio.to_thread.run_sync(_answer, conn)
            assert answer.startswith(b"HTTP/1.1 503"), answer[:80]
            assert REFUSED._value.get() - refused_before == 2
            # a silent client in a priority slot is refused once its time to ask is up
            answers = await trio.to_thread.run_sync(lambda: [_answer(c) for c in silent])
            assert all(a.startswith(b"HTTP/1.1 503") for a in answers)
        finally:
            for conn in silent:
                conn.close()
    finally:
        for conn in held:
            conn.close()
    # every descriptor the server took is given back, and the count with it
    await wait_for(lambda: CONNECTIONS._value.get() == open_before, 60, "the held ones released")
    nursery.cancel_scope.cancel()


def test_the_default_limit_leaves_descriptors_for_everything_else() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_max_connections(256) == max(16, soft - 256)


# ---- requests: health first --------------------------------------------------------------------


async def test_requests_past_the_slots_wait_in_order_and_health_never_waits() -> None:
    app = create_app(WebContext(), api=False, max_requests=1)
    release = trio.Event()
    order: list[int] = []

    @app.get("/slow/<int:n>")
    async def slow(n: int) -> str:
        order.append(n)
        await release.wait()
        return "done"

    client = app.test_client()
    waiting_before = WAITING._value.get()
    results: dict[int, int] = {}

    async def get(n: int) -> None:
        results[n] = (await client.get(f"/slow/{n}")).status_code

    async with trio.open_nursery() as nursery:
        nursery.start_soon(get, 1)
        await wait_for(lambda: order == [1], 60, "the first request in its slot")
        for n in (2, 3):  # one after the other: trio does not promise the order tasks start in
            nursery.start_soon(get, n)
            await wait_for(lambda n=n: WAITING._value.get() - waiting_before == n - 1, 60,
                           f"{n} waits")
        # health, readiness and metrics are answered while the only slot is taken
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert order == [1]
        release.set()
    assert order == [1, 2, 3] and results == {1: 200, 2: 200, 3: 200}
    assert WAITING._value.get() == waiting_before
