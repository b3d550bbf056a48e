"""The quart-trio application: health, readiness, metrics, and the blueprints for API and pages.

The app holds no state of its own: everything it shows comes from a `WebContext` the process
builds (database pool, live hub, supervision tree), so the same app serves the all-in-one and
the split `soar web` mode.

May import: soar.store, soar.web.api, soar.web.connections, soar.web.door,
soar.web.map_api, soar.web.worker_metrics
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import prometheus_client
import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from soar.web.connections import finish_responses, prioritise
from soar.web.door import (
    TOKEN_CHALLENGE,
    TOKEN_REQUIRED,
    HealthSnapshot,
    bearer_matches,
    is_loopback,
)
from soar.web.worker_metrics import exposition

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

#: Connections of the API's pool (`open_api_pool`), and API queries running at once. Few: a
#: crowd of API clients queues in the event loop (cheap) rather than in the database, which the
#: writers need too; at most `http_max_requests` requests reach the API anyway.
API_POOL_SIZE = 4


@dataclass
class WebContext:
    """What the web side reads. Callables so that readiness is computed at request time."""

    tree: Callable[[], dict[str, Any]] = dict
    ready_checks: dict[str, Callable[[], bool]] = field(default_factory=dict)
    #: psycopg_pool.ConnectionPool for API queries (`open_api_pool`: not the writers' pool, so
    #: neither waits for the other's connections); None until the DB is up
    pool: Any = None
    #: the worker threads API queries run in: as many as the pool has connections
    query_threads: trio.CapacityLimiter = field(
        default_factory=lambda: trio.CapacityLimiter(API_POOL_SIZE))
    live: Any = None  # soar.web.live.LiveHub, when live fixes are wired
    #: soar.web.worker.WebWorker (`soar run`): the front door hands connections to it
    web_worker: Any = None
    #: the feeds' states (`map_api.feed_states`) where they are not this process's own: a web
    #: worker shows its parent's; None: computed from `tree` and this process's gauges
    feeds: Callable[[], dict[str, Any]] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: protects /metrics and the details of /healthz (settings.api_token); None: open
    api_token: str | None = None


def create_app(ctx: WebContext, *, api: bool = True, max_requests: int | None = None) -> QuartTrio:
    """The web app; with `api=False` only /healthz, /readyz and /metrics (split-mode ingest and
    track processes, which have no API to serve). `max_requests`: requests other than health
    and metrics served at once, the rest waiting (`connections.prioritise`); None: no bound."""
    app = QuartTrio("soar.web", static_folder=None)
    app.config["SOAR"] = ctx
    asgi = finish_responses(app.asgi_app)  # type: ignore[arg-type]
    if max_requests is not None:
        asgi = prioritise(asgi, max_requests)
    app.asgi_app = asgi  # type: ignore[method-assign,assignment]

    # A new connection asking for these is answered by the front door (soar.web.door) from
    # a snapshot; these routes answer the same on a connection that asked something else first.

    @app.get("/healthz")
    async def healthz() -> Response:
        return jsonify(health_document(ctx.tree(), trusted=_trusted(ctx)))

    @app.get("/readyz")
    async def readyz() -> tuple[Response, int]:
        document, ready = readiness_document(ctx)
        return jsonify(document), (200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        if ctx.api_token and not _token_given(ctx.api_token):
            return Response(TOKEN_REQUIRED, status=401,
                            headers={"WWW-Authenticate": TOKEN_CHALLENGE})
        # in a thread: with a web worker, its families are asked for over a socket
        body = await trio.to_thread.run_sync(exposition, ctx.web_worker)
        return Response(body, content_type=prometheus_client.CONTENT_TYPE_LATEST)

    if api:
        from soar.web.api import register as register_api

        register_api(app, ctx)
        from soar.web.map_api import map_blueprint

        app.register_blueprint(map_blueprint(ctx))
    return app


def health_document(tree: dict[str, Any], *, trusted: bool) -> dict[str, Any]:
    """/healthz: alive as long as the loop answers; `tree` (`WebContext.tree()`) says what
    each task is doing. The states are for anyone; error texts (paths, addresses, SQL) only for
    this host or a caller with the token."""
    return {"status": "ok", "tree": tree if trusted else without_errors(tree)}


def readiness_document(ctx: WebContext) -> tuple[dict[str, Any], bool]:
    """/readyz: every check of the process, and whether all pass (none: not ready)."""
    checks = {name: bool(check()) for name, check in ctx.ready_checks.items()}
    ready = bool(checks) and all(checks.values())
    return {"ready": ready, "checks": checks}, ready


def take_snapshot(ctx: WebContext) -> HealthSnapshot:
    """What the front door answers /healthz and /readyz with until the next one (in the loop:
    the tree and the checks are the loop's to read)."""
    readiness, ready = readiness_document(ctx)
    tree = ctx.tree()  # once for both documents
    return HealthSnapshot(taken=time.monotonic(),
                          healthz=_json(health_document(tree, trusted=False)),
                          healthz_trusted=_json(health_document(tree, trusted=True)),
                          readyz=_json(readiness), ready=ready)


def _json(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, default=str, option=orjson.OPT_NON_STR_KEYS)


def open_api_pool(url: str, size: int = API_POOL_SIZE) -> ConnectionPool:
    """The API's own pool (blocking: call it in a thread). Separate from the writers': a burst of
    API queries never holds the connections a commit needs, and a slow commit never holds a
    page's."""
    from soar.store.writer import open_pool

    return open_pool(url, size=size, name="soar-api")


def _token_given(token: str) -> bool:
    return bearer_matches(request.headers.get("Authorization", ""), token)


def _trusted(ctx: WebContext) -> bool:
    """This host, or a caller with the token: may see error details."""
    if ctx.api_token and _token_given(ctx.api_token):
        return True
    return is_loopback(request.remote_addr or "")


def without_errors(node: Any) -> Any:
    """The supervision tree with every `last_error` text removed (states and counts kept)."""
    if isinstance(node, dict):
        return {k: without_errors(v) for k, v in node.items() if k != "last_error"}
    if isinstance(node, list):
        return [without_errors(v) for v in node]
    return node
