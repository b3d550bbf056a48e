"""What /healthz and /metrics show to whom (issue: error texts went to anyone, /metrics open).

The local caller is a real client of the real server on 127.0.0.1. A caller from elsewhere
cannot be made on this machine's loopback, so those cases drive the same app through its ASGI
interface with the client address a remote caller would have.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import trio

from soar.config import load_settings
from soar.supervisor import ChildSpec, RestartPolicy, Supervisor
from soar.web.app import WebContext, create_app
from soar.web.server import serve_web
from tests.support import fetch

TOKEN = "s3cret-token"
REMOTE = ("203.0.113.7", 40000)  # TEST-NET-3: documentation addresses, never a real host


async def _crashed_tree() -> dict[str, Any]:
    """A real supervisor whose child crashed once with an error that names a path."""

    async def crash() -> None:
        raise OSError(28, "No space left on device: '/var/lib/soar/spool/fixes/segment-7'")

    sup = Supervisor("t", [ChildSpec("t.disk", crash, RestartPolicy.TEMPORARY)], max_restarts=5)
    await sup.run()
    return sup.tree()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_local_callers_see_error_details_and_metrics_need_the_token(
    nursery: trio.Nursery,
) -> None:
    tree = await _crashed_tree()
    assert "No space left" in json.dumps(tree)
    settings = load_settings(environ={}, overrides={"api_token": TOKEN})
    binds = await nursery.start(partial(serve_web, bind="127.0.0.1:0"), settings,
                                WebContext(tree=lambda: tree), trio.Event())
    base = binds[0]
    status, body = await fetch(f"{base}/healthz")
    assert status == 200 and "No space left" in body.decode()  # this host: details
    status, _ = await fetch(f"{base}/metrics")
    assert status == 401
    status, _ = await fetch(f"{base}/metrics", headers=bearer("wrong"))
    assert status == 401
    status, body = await fetch(f"{base}/metrics", headers=bearer(TOKEN))
    assert status == 200 and b"soar_" in body
    nursery.cancel_scope.cancel()


async def _remote_get(app: Any, path: str, token: str | None = None) -> tuple[int, str]:
    client = app.test_client()
    headers = bearer(token) if token else {}
    response = await client.get(path, headers=headers, scope_base={"client": REMOTE})
    return response.status_code, await response.get_data(as_text=True)


async def test_remote_callers_see_states_only_unless_they_have_the_token() -> None:
    tree = await _crashed_tree()
    app = create_app(WebContext(tree=lambda: tree, api_token=TOKEN), api=False)
    status, body = await _remote_get(app, "/healthz")
    assert status == 200
    shown = json.loads(body)["tree"]
    assert shown["children"]["t.disk"]["state"] == tree["children"]["t.disk"]["state"]
    assert shown["children"]["t.disk"]["crashes"] == 1
    assert "last_error" not in json.dumps(shown) and "No space left" not in body
    status, body = await _remote_get(app, "/healthz", TOKEN)
    assert status == 200 and "No space left" in body
    assert (await _remote_get(app, "/metrics"))[0] == 401
    assert (await _remote_get(app, "/metrics", TOKEN))[0] == 200


async def test_without_a_token_metrics_are_open_and_remote_healthz_has_no_details() -> None:
    tree = await _crashed_tree()
    app = create_app(WebContext(tree=lambda: tree), api=False)
    status, body = await _remote_get(app, "/healthz")
    assert status == 200 and "No space left" not in body
    status, body = await _remote_get(app, "/metrics")
    assert status == 200 and "soar_" in body
