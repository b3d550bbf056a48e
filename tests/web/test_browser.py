"""Headless Debian chromium against the running app while a real capture is published.

Driven over the DevTools protocol with trio-websocket (no selenium/playwright; the client is
`tests.web.browser`). Screenshots go to tests/artifacts/. Skips when /usr/bin/chromium is not
installed (`make test` installs it).
"""

from __future__ import annotations

import datetime as dt
import math

import pytest
import trio

from soar.live import LivePublisher
from soar.records import Fix
from soar.web.app import WebContext, create_app
from soar.web.live import LiveHub
from tests.support import wait_until

from .browser import ARTIFACTS, needs_chromium, open_page
from .conftest import Dataset, chunks, start_server

# Atlanta: the densest part of the SBS sample.
CENTER = (33.6, -84.4)

pytestmark = [pytest.mark.slow, pytest.mark.browser, needs_chromium]


async def test_live_map_and_flight_log_in_chromium(
    nursery: trio.Nursery, sbs_sample_fixes: list[Fix], web_db: Dataset
) -> None:
    address = "inproc://soar-test-browser"
    publisher = LivePublisher(address, flush_interval=0.05)
    await nursery.start(publisher.run)
    hub = LiveHub(address)
    await nursery.start(hub.run)
    assert await wait_until(lambda: hub.connected, 30)
    host = await start_server(nursery, create_app(WebContext(pool=web_db.pool, live=hub)))

    url = f"http://{host}/?center={CENTER[0]},{CENTER[1]}&zoom=9&tiles=none"
    async with open_page(url) as page:
        assert await page.poll("!!(window.soar && window.soar.stats.connected)", 60)
        assert await wait_until(lambda: any(c.squares for c in hub._clients), 30)
        view = await page.evaluate(
            "(() => { const b = window.soar.map.getBounds();"
            " return [b.getSouth(), b.getWest(), b.getNorth(), b.getEast()]; })()"
        )
        south, west, north, east = view
        # The page subscribes to the whole 1x1 degree squares under its view.
        visible = [f for f in sbs_sample_fixes
                   if math.floor(south) <= f.lat < math.floor(north) + 1
                   and math.floor(west) <= f.lon < math.floor(east) + 1]
        assert len(visible) > 100
        visible_set = {id(f) for f in visible}

        # Replay the capture, watching the map as it goes: each step is drawn before the
        # next is sent (counts, not time: the page may be slow on a busy machine).
        first_positions: dict[str, list[float]] = {}
        [page_client] = [c for c in hub._clients if c.squares]
        shown = 0
        for index, chunk in enumerate(chunks(sbs_sample_fixes, 400)):
            for fix in chunk:
                publisher.offer(fix)
            shown += sum(1 for f in chunk if id(f) in visible_set)
            assert await page.poll(
                f"window.soar.stats.fixes >= {shown - page_client.queue.dropped}", 60
            ), f"the page drew fewer than {shown} fixes"
            if index == 10:
                first_positions = await page.evaluate(_POSITIONS)
        assert page_client.queue.dropped == 0, "the page fell behind: the test lost its count"
        markers = await page.evaluate("document.querySelectorAll('.leaflet-marker-icon.ac-icon').length")
        last_positions = await page.evaluate(_POSITIONS)
        visible_ids = {str(f.aircraft_id) for f in visible}
        assert markers == len(last_positions) > 10
        assert set(last_positions) <= visible_ids | set(first_positions)
        moved = [ident for ident, pos in first_positions.items()
                 if ident in last_positions and last_positions[ident] != pos]
        assert len(moved) >= 3, "markers did not move"
        rotations = await page.evaluate(
            "[...document.querySelectorAll('.ac-icon .glyph')].map(g => g.style.transform)"
            ".filter(t => t && t !== 'rotate(0deg)').length"
        )
        assert rotations > 0, "no marker is rotated to its heading"
        labels = await page.evaluate(
            "[...document.querySelectorAll('.ac-label')].map(l => l.textContent)"
        )
        callsigns = {f.callsign for f in visible if f.callsign}
        assert any(any(label.startswith(cs) for cs in callsigns) for label in labels)

        # Click one: the details panel opens.
        ident = moved[0]
        await page.evaluate(f"window.soar.select({int(ident)})")
        assert await page.poll("document.getElementById('panel').style.display === 'block'", 30)
        assert await page.poll("!document.getElementById('panel').textContent.includes('loading')", 30)
        await page.screenshot(ARTIFACTS / "map.png")

        # The flight log of the day of the trace's second flight, filtered by airfield.
        second = max((f for f in web_db.flights if f["aircraft_id"] == web_db.trace_id),
                     key=lambda f: f["first"])
        day = _day(second["takeoff"])
        await page.navigate(f"http://{host}/flights?date={day}&airport=LEBL")
        assert await page.poll("document.querySelectorAll('table.log tbody tr').length > 0", 30)
        rows = await page.evaluate(
            "[...document.querySelectorAll('table.log tbody tr')].map(r => r.textContent)"
        )
        assert len(rows) == 1 and "OO-TRC" in rows[0] and "LEMD" in rows[0]
        csv_link = await page.evaluate("document.getElementById('csv').getAttribute('href')")
        assert "format=csv" in csv_link and "airport=LEBL" in csv_link
        await page.screenshot(ARTIFACTS / "flights.png")
        await page.call("Emulation.setDeviceMetricsOverride", width=390, height=780,
                        deviceScaleFactor=2, mobile=True)
        await trio.sleep(0.3)
        await page.screenshot(ARTIFACTS / "flights-phone.png")
    nursery.cancel_scope.cancel()


_POSITIONS = (
    "Object.fromEntries([...window.soar.aircraft].map(([id, e]) =>"
    " [String(id), [e.marker.getLatLng().lat, e.marker.getLatLng().lng]]))"
)


def _day(us: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)).date().isoformat()

