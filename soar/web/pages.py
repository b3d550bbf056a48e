"""The two pages: `/` (live map) and `/flights` (the day's flight log), plus their static files.

Both pages are static HTML + JS that talk to `/api` and `/api/live`; Leaflet is vendored under
`static/vendor/leaflet/` (scripts/vendor-leaflet.sh) so nothing is fetched from a CDN.

May import: nothing of soar
"""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, Response, send_from_directory

STATIC = Path(__file__).resolve().parent / "static"


def pages_blueprint() -> Blueprint:
    bp = Blueprint("pages", __name__, static_folder=str(STATIC), static_url_path="/static")

    @bp.get("/")
    async def live_map() -> Response:
        return await send_from_directory(STATIC, "map.html")

    @bp.get("/flights")
    async def flight_log() -> Response:
        return await send_from_directory(STATIC, "flights.html")

    return bp
