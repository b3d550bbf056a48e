"""The live map in headless chromium against a real running soar fed by real captures.

One `python -m soar` (embedded PostgreSQL) for the module, fed over TCP by the ADSBHub SBS
sample and the OGN full-feed capture (see map_soar.py). Every test opens its own page and
asserts on what the page shows (DOM, `window.soar`), polling page state, never sleeping.
Screenshots go to tests/artifacts/map-*.png.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser import ARTIFACTS, DevTools, needs_chromium, open_page
from .map_soar import RunningSoar, run_soar, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser, needs_chromium]

NYC = (40.6, -73.6)  # the SBS sample's New York traffic, inside the SRTM tile N40W074
EUROPE = (51.5, 3.0)  # the OGN capture's busiest receivers and aircraft
DESCENDING = "A715BB"  # an SBS aircraft at 1,700 ft over the N40W074 tile: AGL is known
FEET_PER_METRE = 3.28084


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def soar(testdata: Path) -> Iterator[RunningSoar]:
    # not under pytest's base temp: that is 0700 root, and PostgreSQL runs as its own user
    tmp = Path(tempfile.mkdtemp(prefix="soar-map-"))
    tmp.chmod(0o755)
    try:
        yield from _fed_soar(testdata, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fed_soar(testdata: Path, tmp: Path) -> Iterator[RunningSoar]:
    with run_soar(testdata, tmp) as running:
        base = running.base
        wait_for(running.sbs.first_sent.is_set, 120, "the first SBS snapshot to be sent")
        wait_for(running.ogn.sent.is_set, 120, "the OGN capture to be sent")

        def stored() -> bool:
            nyc = get_json(base + "/api/aircraft?bbox=-76,39.5,-71,41.8&limit=1000")
            europe = get_json(base + "/api/aircraft?bbox=-5,48,12,55&limit=1000")
            receivers = get_json(base + "/api/receivers?positioned=true")
            return (any(a["address"] == DESCENDING for a in nyc["aircraft"])
                    and europe["count"] > 100 and receivers["count"] > 10)

        wait_for(stored, 120, "the captures to be stored")
        yield running


def page_url(soar: RunningSoar, center: tuple[float, float], zoom: int, **extra: str) -> str:
    query = {"lat": str(center[0]), "lon": str(center[1]), "zoom": str(zoom), "tiles": "none",
             **extra}
    return soar.base + "/?" + urllib.parse.urlencode(query)


async def loaded(page: DevTools) -> None:
    assert await page.poll("!!(window.soar && window.soar.stats.loaded"
                           " && window.soar.stats.trailsLoaded && window.soar.stats.feedsLoaded)"), \
        page.console


async def page_bbox(page: DevTools) -> str:
    bounds = await page.evaluate(
        "(() => { const b = window.soar.map.getBounds();"
        " return [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()]; })()")
    return ",".join(f"{v:.4f}" for v in bounds)


async def list_rows(page: DevTools) -> list[dict[str, Any]]:
    return await page.evaluate(  # type: ignore[no-any-return]
        "[...document.querySelectorAll('#aclist tbody tr')].map(tr => ({id: Number(tr.dataset.id),"
        " cells: [...tr.children].map(td => td.textContent), cls: tr.className}))")


async def set_input(page: DevTools, selector: str, value: str, event: str = "input") -> None:
    await page.evaluate(
        f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
        f" el.value = {json.dumps(value)};"
        f" el.dispatchEvent(new Event({json.dumps(event)})); }})()")


def _number(text: str) -> float | None:
    text = text.replace(",", "").replace("+", "").strip()
    return None if text in ("", "—") else float(text)


# -- 1. history on open, live fixes, the list, feed states ------------------------------------


async def test_history_live_list_and_feed_states(soar: RunningSoar) -> None:
    async with open_page(page_url(soar, NYC, 8), timezone="Europe/Paris") as page:
        await loaded(page)
        bbox = await page_bbox(page)
        stored = get_json(soar.base + f"/api/aircraft?bbox={bbox}&limit=1000")
        ids = {a["id"] for a in stored["aircraft"]}
        assert len(ids) > 20
        assert await page.poll(f"window.soar.aircraft.size >= {len(ids)}")
        shown = set(await page.evaluate("[...window.soar.aircraft.keys()]"))
        assert ids <= shown
        # History on open: the trails of the last minutes, from the database.
        trails = get_json(soar.base + f"/map/data/trails?bbox={bbox}")["trails"]
        assert {int(i) for i in trails} == ids
        drawn = await page.evaluate(
            "Object.fromEntries([...window.soar.aircraft].map(([id, e]) => [id, e.points.length]))")
        assert all(drawn[str(i)] >= len(trails[str(i)]) for i in ids)
        # Feeds from the server: SBS and OGN connected, Beast not configured.
        feeds = "Object.fromEntries([...document.querySelectorAll('.feed')].map(" \
                "f => [f.dataset.protocol, [f.dataset.state, f.textContent]]))"
        states = await page.evaluate(feeds)
        assert states["sbs"][0] == "connected" and "connected" in states["sbs"][1]
        assert states["ogn"][0] == "connected"
        assert states["beast"] == ["not_configured", "ADS-B not configured"]

        # Live: the second snapshot moves the aircraft; history and live join in one trail.
        before = await page.evaluate(_POSITIONS)
        soar.sbs.release_second()
        assert await page.poll(
            "[...window.soar.aircraft.values()].filter(e => e.points.length >= 2).length >= 10")
        assert await page.evaluate("window.soar.stats.fixes") > 0
        after = await page.evaluate(_POSITIONS)
        moved = [i for i in before if i in after and after[i] != before[i]]
        assert len(moved) >= 10
        # trails are coloured by altitude: a jet and a low aircraft differ
        colors = await page.evaluate("[window.soar.altColor(500), window.soar.altColor(35000)]")
        assert colors[0] != colors[1]
        trail_colors = await page.evaluate(
            "new Set([...document.querySelectorAll('path.leaflet-interactive, path')]"
            ".map(p => p.getAttribute('stroke')).filter(Boolean)).size")
        assert trail_colors >= 3
        # The SBS feed closes after its capture and refuses reconnects: soar says reconnecting.
        assert await page.poll(
            "document.querySelector('.feed[data-protocol=sbs]').dataset.state === 'reconnecting'",
            120)

        # The list: one row per aircraft in view, sortable.
        rows, count = await page.evaluate(
            "(() => { window.soar.renderList();"
            " return [document.querySelectorAll('#aclist tbody tr').length,"
            " window.soar.aircraft.size]; })()")
        assert rows == count
        await page.evaluate("document.querySelector('th[data-sort=alt]').click()")
        rows = await list_rows(page)
        altitudes = [_number(r["cells"][3]) for r in rows]
        known = [a for a in altitudes if a is not None]
        assert known == sorted(known, reverse=True) and len(known) > 10
        assert altitudes[: len(known)] == known  # unknown altitudes last
        await page.evaluate("document.querySelector('th[data-sort=name]').click()")
        names = [r["cells"][0] for r in await list_rows(page)]
        assert names == sorted(names, key=lambda n: n.upper())
        await page.evaluate("document.querySelector('th[data-sort=dist]').click()")
        distances = [_number(r["cells"][7]) for r in await list_rows(page)]
        assert distances == sorted(distances)  # type: ignore[type-var]
        assert await page.poll("location.search.includes('sort=dist')")  # the URL follows
        await page.screenshot(ARTIFACTS / "map-list.png")


_POSITIONS = (
    "Object.fromEntries([...window.soar.aircraft].map(([id, e]) =>"
    " [String(id), [e.marker.getLatLng().lat, e.marker.getLatLng().lng]]))"
)
