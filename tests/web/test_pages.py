"""The pages and their vendored assets are served by the app itself: no CDN at run time."""

from __future__ import annotations

import json
import re
from pathlib import Path

import trio

from soar.web.app import WebContext, create_app
from tests.support import fetch

from .conftest import start_server

REPO = Path(__file__).resolve().parent.parent.parent


async def test_pages_and_vendored_leaflet_are_served(nursery: trio.Nursery) -> None:
    # Served by hypercorn, as in production (quart's test client stalls on multi-chunk files).
    host = await start_server(nursery, create_app(WebContext()))

    async def get(path: str) -> tuple[int, str]:
        status, body = await fetch(f"http://{host}{path}", timeout=5)
        return status, body.decode("utf-8", "replace")

    pin = json.loads((REPO / "package.json").read_text())["dependencies"]["leaflet"]
    for path in ("/", "/flights"):
        status, html = await get(path)
        assert status == 200
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert "/static/vendor/leaflet/leaflet.js" in refs or path == "/flights"
        for ref in refs:
            # every script and stylesheet comes from this server
            assert not re.match(r"(?:https?:)?//", ref), ref
            if ref.startswith("/static/"):
                assert (await get(ref))[0] == 200, ref
    status, leaflet = await get("/static/vendor/leaflet/leaflet.js")
    assert status == 200 and f"Leaflet {pin}," in leaflet[:200]
    assert (await get("/static/vendor/leaflet/VERSION"))[1].strip() == pin
    assert (await get("/static/vendor/leaflet/images/layers.png"))[0] == 200
    assert (await get("/static/nope.js"))[0] == 404
    nursery.cancel_scope.cancel()
