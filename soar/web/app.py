"""The quart-trio application: health, readiness, metrics, and the blueprints for API and pages.

The app holds no state of its own: everything it shows comes from a `WebContext` the process
builds (database pool, live hub, supervision tree), so the same app serves the all-in-one and
the split `soar web` mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import prometheus_client
from quart import Response, jsonify
from quart_trio import QuartTrio

from soar.web.connections import finish_responses


@dataclass
class WebContext:
    """What the web side reads. Callables so that readiness is computed at request time."""

    tree: Callable[[], dict[str, Any]] = dict
    ready_checks: dict[str, Callable[[], bool]] = field(default_factory=dict)
    pool: Any = None  # psycopg_pool.ConnectionPool for API queries; None until the DB is up
    live: Any = None  # soar.web.live.LiveHub, when live fixes are wired
    extras: dict[str, Any] = field(default_factory=dict)


def create_app(ctx: WebContext, *, api: bool = True) -> QuartTrio:
    """The web app; with `api=False` only /healthz, /readyz and /metrics (split-mode ingest and
    track processes, which have no API to serve)."""
    app = QuartTrio("soar.web", static_folder=None)
    app.config["SOAR"] = ctx
    app.asgi_app = finish_responses(app.asgi_app)  # type: ignore[method-assign,assignment,arg-type]

    @app.get("/healthz")
    async def healthz() -> Response:
        # Alive as long as this process answers; the tree says what each task is doing.
        return jsonify({"status": "ok", "tree": ctx.tree()})

    @app.get("/readyz")
    async def readyz() -> tuple[Response, int]:
        checks = {name: bool(check()) for name, check in ctx.ready_checks.items()}
        ready = bool(checks) and all(checks.values())
        return jsonify({"ready": ready, "checks": checks}), (200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        body = prometheus_client.generate_latest(prometheus_client.REGISTRY)
        return Response(body, content_type=prometheus_client.CONTENT_TYPE_LATEST)

    if api:
        from soar.web.api import register as register_api

        register_api(app, ctx)
    return app
