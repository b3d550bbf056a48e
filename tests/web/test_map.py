"""The live map in headless chromium against a real running soar fed by real captures.

One `python -m soar` (embedded PostgreSQL) for the module, fed over TCP by the ADSBHub SBS
sample and the OGN full-feed capture (see map_soar.py). Every test opens its own page and
asserts on what the page shows (DOM, `window.soar`), polling page state, never sleeping.
Screenshots go to tests/artifacts/map-*.png.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from soar.web.app import WebContext, create_app
from tests.support import http_json, wait_for_blocking

from .browser import ARTIFACTS, DevTools, needs_chromium, open_page
from .conftest import Dataset, start_server
from .map_soar import RunningSoar, run_soar

pytestmark = [pytest.mark.slow, pytest.mark.browser, needs_chromium]

NYC = (40.6, -73.6)  # the SBS sample's New York traffic, inside the SRTM tile N40W074
EUROPE = (51.5, 3.0)  # the OGN capture's busiest receivers and aircraft
DESCENDING = "A715BB"  # an SBS aircraft at 1,700 ft over the N40W074 tile: AGL is known
FEET_PER_METRE = 3.28084


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
        wait_for_blocking(running.sbs.first_sent.is_set, 120, "the first SBS snapshot to be sent")
        wait_for_blocking(running.ogn.sent.is_set, 120, "the OGN capture to be sent")

        # All of the first SBS snapshot and every receiver of the OGN capture, not only some:
        # each is stored in several batches, and a page opened between two of them would miss,
        # for good, what came after (an aircraft whose only live fix went out before the page
        # subscribed; a receiver, read once per view), where the tests compare the page's set
        # with the API's.
        nyc_box = (-76, 39.5, -71, 41.8)
        first = running.sbs.first_positioned(*nyc_box)
        assert DESCENDING in first
        nyc_bbox = ",".join(map(str, nyc_box))
        stations = running.ogn.positioned_receivers()
        assert len(stations) > 10

        def stored() -> bool:
            nyc = http_json(base + f"/api/aircraft?bbox={nyc_bbox}&limit=1000")
            trails = http_json(base + f"/map/data/trails?bbox={nyc_bbox}")["trails"]
            europe = http_json(base + "/api/aircraft?bbox=-5,48,12,55&limit=1000")
            receivers = http_json(base + "/api/receivers?positioned=true&limit=1000")
            return ({a["address"] for a in nyc["aircraft"]} >= first and len(trails) >= len(first)
                    and europe["count"] > 100
                    and {r["name"] for r in receivers["receivers"]} >= stations)

        wait_for_blocking(stored, 120, "the captures to be stored")
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
        stored = http_json(soar.base + f"/api/aircraft?bbox={bbox}&limit=1000")
        ids = {a["id"] for a in stored["aircraft"]}
        assert len(ids) > 20
        assert await page.poll(f"window.soar.aircraft.size >= {len(ids)}")
        shown = set(await page.evaluate("[...window.soar.aircraft.keys()]"))
        assert ids <= shown
        # History on open: the trails of the last minutes, from the database.
        trails = http_json(soar.base + f"/map/data/trails?bbox={bbox}")["trails"]
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


# -- 2. search, filters, selection, follow, a shareable URL -----------------------------------


async def test_search_filters_selection_and_shared_url(soar: RunningSoar) -> None:
    async with open_page(page_url(soar, EUROPE, 7)) as page:
        await loaded(page)
        assert await page.poll("window.soar.aircraft.size > 50")
        total = await page.evaluate("window.soar.aircraft.size")
        ogn = await page.evaluate(
            "(() => { const e = [...window.soar.aircraft.values()].find(e =>"
            " e.data.protocol === 'ogn' && e.points.length >= 3);"
            " return {id: e.data.id, address: e.data.address}; })()")
        # Search by hex address (any case): the list and the map keep that aircraft alone.
        await set_input(page, "#search", ogn["address"].lower())
        assert [r["id"] for r in await list_rows(page)] == [ogn["id"]]
        assert await page.evaluate(
            "document.querySelectorAll('.ac-icon:not(.filtered)').length") == 1
        await page.evaluate("document.getElementById('search').dispatchEvent("
                            "new KeyboardEvent('keydown', {key: 'Enter'}))")
        assert await page.evaluate("window.soar.selected()") == ogn["id"]
        await page.evaluate("window.soar.unselect()")
        # by callsign: an SBS aircraft over England
        callsign = await page.evaluate(
            "[...window.soar.aircraft.values()].find(e => e.data.protocol === 'sbs'"
            " && e.data.callsign).data.callsign")
        await set_input(page, "#search", callsign)
        found = await list_rows(page)
        assert found and all(callsign in r["cells"][0] for r in found)
        await set_input(page, "#search", "")
        # the list is redrawn a moment after the map: aircraft of the live stream keep coming
        assert await page.poll("[window.soar.stats.listed, window.soar.aircraft.size]"
                               ".every((n, _, all) => n === all[0])")
        total = await page.evaluate("window.soar.aircraft.size")

        # "in view only": the aircraft inside the map's bounds, no more
        await page.evaluate("document.getElementById('inview').click()")
        in_view = ("(() => { const b = window.soar.map.getBounds(); return [...window.soar"
                   ".aircraft.values()].filter(e => b.contains(e.marker.getLatLng())).length; })()")
        assert await page.poll(f"window.soar.stats.listed === {in_view}"), (
            await page.evaluate("window.soar.stats.listed"), await page.evaluate(in_view))
        assert await page.evaluate(in_view) < total
        assert await page.poll("location.search.includes('inview=1')")
        await page.evaluate("document.getElementById('inview').click()")

        # Filters: source, type, altitude band (metres on screen, feet in the URL), airborne.
        await page.evaluate("document.getElementById('filters-toggle').click()")
        await page.evaluate("document.querySelector('#f-proto input[value=ogn]').click()")
        protocols = await page.evaluate(
            "[...document.querySelectorAll('#aclist tbody tr')].map(tr =>"
            " window.soar.aircraft.get(Number(tr.dataset.id)).data.protocol)")
        ogn_count = ("[...window.soar.aircraft.values()].filter(e => e.data.protocol === 'ogn')"
                     ".length")
        assert set(protocols) == {"ogn"}
        assert await page.poll(f"window.soar.stats.listed === {ogn_count}"), (
            await page.evaluate("window.soar.stats.listed"), await page.evaluate(ogn_count))
        assert await page.evaluate(ogn_count) < total
        await page.evaluate("document.querySelector('#f-type input[value=glider]').click()")
        await set_input(page, "#f-alt-min", "500", "change")
        await set_input(page, "#f-alt-max", "2000", "change")
        await set_input(page, "#f-ground", "air", "change")
        shown = await page.evaluate(
            "[...document.querySelectorAll('#aclist tbody tr')].map(tr => {"
            " const d = window.soar.aircraft.get(Number(tr.dataset.id)).data;"
            " return [d.protocol, window.soar.shapeOf(d), d.altitude_ft, window.soar.airborne(d)]; })")
        assert shown, "no airborne glider between 500 and 2000 m in the capture?"
        for protocol, shape, altitude, airborne in shown:
            assert (protocol, shape, airborne) == ("ogn", "glider", True)
            assert 500 * FEET_PER_METRE - 1 <= altitude <= 2000 * FEET_PER_METRE + 1
        assert await page.poll("location.search.includes('proto=ogn')"
                               " && location.search.includes('type=glider')"
                               " && location.search.includes('alt_min=1640')"
                               " && location.search.includes('ground=air')")
        await page.screenshot(ARTIFACTS / "map-filters.png")

        # A row click selects and centres; Follow is in the URL with the selection.
        row = (await list_rows(page))[0]
        await page.evaluate(f"document.querySelector('#aclist tr[data-id=\"{row['id']}\"]').click()")
        assert await page.evaluate("window.soar.selected()") == row["id"]
        assert await page.evaluate(
            f"window.soar.offCentre(window.soar.aircraft.get({row['id']}).marker.getLatLng())") <= 1
        assert await page.evaluate("document.getElementById('panel').style.display") == "block"
        await page.evaluate("document.getElementById('follow').click()")
        assert await page.evaluate("window.soar.state.follow")
        address = await page.evaluate(f"window.soar.aircraft.get({row['id']}).data.address")
        assert await page.poll(f"location.search.includes('icao={address}')"
                               " && location.search.includes('follow=1')")
        shared = await page.evaluate("location.href")
        zoom = await page.evaluate("window.soar.map.getZoom()")

    # The shared URL opens on the same view, selection, follow and filters.
    async with open_page(shared) as page:
        assert await page.poll(f"window.soar.selected() === {row['id']}")
        assert await page.evaluate("window.soar.state.follow")
        assert await page.evaluate("window.soar.map.getZoom()") == zoom
        assert await page.evaluate("[...window.soar.state.protocols]") == ["ogn"]
        assert await page.evaluate("document.querySelector('#f-type input[value=glider]').checked")


# -- 3. one aircraft's flight: barogram with the ground, units, time zones ----------------------


async def test_selected_aircraft_barogram_units_and_time_zone(soar: RunningSoar) -> None:
    soar.sbs.release_second()  # (if the first test did not): its second position
    ident = (1 << 24) | int(DESCENDING, 16)
    wait_for_blocking(lambda: len(http_json(soar.base + f"/map/data/track/{ident}")["fixes"]) >= 2, 60,
             "the second position to be stored")
    # ?icao= alone: the page finds the aircraft, goes there and selects it
    async with open_page(soar.base + f"/?icao={DESCENDING}&tiles=none",
                         timezone="Europe/Paris") as page:
        assert await page.poll(
            "window.soar.selected() !== null && window.soar.aircraft.get(window.soar.selected())"
            f".data.address === '{DESCENDING}'"), page.console
        assert await page.poll("window.soar.selectedPoints().length >= 2")
        points = await page.evaluate("window.soar.selectedPoints()")
        with_ground = [p for p in points if p[4] is not None]
        assert with_ground, "the SRTM tile gives the ground under this aircraft"
        assert all(p[4] < p[3] for p in with_ground)
        # the barogram draws both: ground filled brown, altitude as a blue line
        colours = await page.evaluate(
            "(() => { const c = document.getElementById('barogram');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let ground = 0, line = 0; for (let i = 0; i < d.length; i += 4) {"
            " if (d[i] === 0xb0 && d[i+1] === 0x89 && d[i+2] === 0x68) ground++;"
            " if (d[i] === 0x18 && d[i+1] === 0x64 && d[i+2] === 0xab) line++; }"
            " return [ground, line]; })()")
        assert colours[0] > 100 and colours[1] > 20
        centre = await page.evaluate("window.soar.map.getCenter()")
        assert abs(centre["lat"] - points[-1][1]) < 0.5 and abs(centre["lng"] - points[-1][2]) < 0.5

        data = await page.evaluate("window.soar.aircraft.get(window.soar.selected()).data")
        panel = "document.getElementById('panel-body').textContent"
        metres = f"{round(data['altitude_ft'] / FEET_PER_METRE):,} m"
        assert await page.poll(f"{panel}.includes({json.dumps(metres)})")
        await set_input(page, "#units", "imperial", "change")
        assert f"{round(data['altitude_ft']):,} ft" in await page.evaluate(panel)
        assert "alt ft, speed mph, climb ft/min, dist mi" in await page.evaluate(
            "document.getElementById('list-summary').textContent")
        await set_input(page, "#units", "aviation", "change")
        assert "alt ft, speed kt" in await page.evaluate(
            "document.getElementById('list-summary').textContent")
        # Times in the browser's zone (Paris here), UTC at a click; the flight log follows.
        assert "CET" in await page.evaluate(panel)
        assert "tz=Europe%2FParis" in await page.evaluate(
            "document.getElementById('flights-link').getAttribute('href')")
        await page.evaluate("document.getElementById('utc').click()")
        assert "UTC" in await page.evaluate(panel) and "CET" not in await page.evaluate(panel)
        assert await page.poll("location.search.includes('tz=UTC')"
                               " && location.search.includes('units=aviation')")
        await page.screenshot(ARTIFACTS / "map-barogram.png")


# -- 4. freshness ------------------------------------------------------------------------------


async def test_stale_aircraft_drawn_inactive_then_removed(soar: RunningSoar) -> None:
    async with open_page(page_url(soar, EUROPE, 7)) as page:
        await loaded(page)
        # the operator's setting (SOAR_MAP_INACTIVE_AFTER) reaches the page
        assert await page.evaluate("window.soar.config.inactive_after_s") == soar.inactive_after_s
        remove_s = await page.evaluate("window.soar.config.remove_after_s")
        shown = (
            "[...window.soar.aircraft.values()].map(e => [window.soar.now() - e.freshAt,"
            " e.inactive, e.marker.getElement().classList.contains('inactive')])")
        assert await page.poll("window.soar.aircraft.size > 50")
        for age, inactive, drawn in await page.evaluate(shown):
            assert drawn == inactive == (age > soar.inactive_after_s * 1000)
        # the page's clock moved past the limit instead of waiting minutes
        await page.evaluate(f"window.soar.skew({soar.inactive_after_s * 1000})")
        state = await page.evaluate(shown)
        assert state and all(inactive and drawn for _age, inactive, drawn in state)
        rows = await list_rows(page)
        assert rows and all("inactive" in r["cls"] for r in rows)
        await page.screenshot(ARTIFACTS / "map-inactive.png")
        await page.evaluate(f"window.soar.skew({remove_s * 1000})")
        assert await page.evaluate("window.soar.aircraft.size") == 0
        assert await page.evaluate("document.querySelectorAll('.ac-icon').length") == 0
        assert await list_rows(page) == []


# -- 5. receivers and airfields -----------------------------------------------------------------


async def test_receivers_and_airfields_layers(soar: RunningSoar) -> None:
    async with open_page(page_url(soar, EUROPE, 7)) as page:
        assert await page.poll("window.soar.stats.receivers > 0"), page.console
        bbox = await page_bbox(page)
        expected = http_json(soar.base + f"/map/data/receivers?bbox={bbox}")["receivers"]
        assert all(r["online"] for r in expected)  # their beacons came in a moment ago
        drawn = await page.evaluate(
            "window.soar.layers.receivers.getLayers().map(m => m.soarReceiver.name)")
        assert sorted(drawn) == sorted(r["name"] for r in expected)
        assert await page.evaluate(
            "document.querySelectorAll('.receiver-icon.online').length") == len(expected)
        # zoomed out this far, no airfields
        assert await page.evaluate("window.soar.layers.airfields.getLayers().length") == 0
        # the layer control turns receivers off, and the URL says so
        await page.evaluate(
            "[...document.querySelectorAll('.leaflet-control-layers-overlays label')]"
            ".find(l => l.textContent.includes('Receivers')).querySelector('input').click()")
        assert await page.evaluate("document.querySelectorAll('.receiver-icon').length") == 0
        assert await page.poll("location.search.includes('layers=airfields%2Ctrails')"
                               " || location.search.includes('layers=airfields,trails')")

    async with open_page(page_url(soar, (52.31, 4.76), 11)) as page:
        assert await page.poll("window.soar.stats.airfields > 0")
        labels = await page.evaluate(
            "[...document.querySelectorAll('.airfield-label')].map(l => l.textContent)")
        assert any(label.startswith("EHAM") and "Schiphol" in label for label in labels)
        await page.screenshot(ARTIFACTS / "map-airfields.png")


# -- 6. replay of a past window from PostgreSQL -------------------------------------------------


async def test_replay_from_the_database(soar: RunningSoar) -> None:
    # the capture's busiest last minute and a half (and the SBS sky, received meanwhile)
    start = _iso(soar.ogn.newest - 90)
    end = _iso(soar.ogn.newest + 60)
    url = page_url(soar, EUROPE, 7, replay=start, replay_end=end, speed="10")
    async with open_page(url) as page:
        assert await page.poll("window.soar.replay.applied > 50"), page.console
        # the fixes of the view and a margin around it, read page by page
        area = await page.evaluate("(a => [a.west, a.south, a.east, a.north])(window.soar.replay.area)")
        window = _replay_window(soar, start, end, ",".join(f"{v:.4f}" for v in area))
        assert len(window) > 1000
        assert await page.evaluate("document.getElementById('live-text').textContent") == "replay"
        assert not await page.evaluate("document.getElementById('replay-bar').hidden")
        assert await page.evaluate("window.soar.stats.fixes") == 0  # nothing live
        # Pause holds the replay clock however many ticks pass.
        await page.evaluate("document.getElementById('replay-play').click()")
        held, ticks = await page.evaluate("[window.soar.replay.time, window.soar.replay.ticks]")
        assert await page.poll(f"window.soar.replay.ticks >= {ticks + 5}")
        assert await page.evaluate("window.soar.replay.time") == held
        assert await page.evaluate("document.getElementById('replay-play').textContent") == "Play"
        await set_input(page, "#replay-speed", "120", "change")
        assert await page.poll("location.search.includes('speed=120')")
        await page.evaluate("document.getElementById('replay-play').click()")
        await page.screenshot(ARTIFACTS / "map-replay.png")
        # To the end: every fix of the window went through the drawing code once.
        assert await page.poll("window.soar.replay.exhausted && !window.soar.replay.queue.length"
                               " && window.soar.replay.applied > 0", 60), await page.evaluate(
            "(({queue, ...r}) => ({...r, queued: queue.length}))(window.soar.replay)")
        assert await page.evaluate("window.soar.replay.rereads || 0") == 0  # one area throughout
        assert await page.evaluate("window.soar.replay.applied") == len(window)
        assert await page.evaluate("window.soar.stats.replayed") == len(window)

    # ?follow=<hex> in a replay: the map stays centred on that aircraft as it moves.
    counts: dict[str, int] = {}
    for fix in window:
        if fix["address"] and fix["protocol"] == "ogn":
            counts[fix["address"]] = counts.get(fix["address"], 0) + 1
    target = max(counts, key=lambda address: counts[address])
    follow = page_url(soar, EUROPE, 7, replay=start, replay_end=end, speed="10", follow=target)
    async with open_page(follow) as page:
        assert await page.poll("window.soar.selected() !== null && window.soar.state.follow")
        ident = await page.evaluate("window.soar.selected()")
        assert await page.evaluate(f"window.soar.aircraft.get({ident}).data.address") == target
        before = await page.evaluate(f"window.soar.aircraft.get({ident}).lastFix")
        assert await page.poll(f"window.soar.aircraft.get({ident}).lastFix > {before}", 60)
        assert await page.evaluate(
            f"window.soar.offCentre(window.soar.aircraft.get({ident}).marker.getLatLng())") <= 1
        await page.screenshot(ARTIFACTS / "map-replay-follow.png")


def _replay_window(soar: RunningSoar, start: str, end: str, bbox: str) -> list[dict[str, Any]]:
    fixes: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = http_json(soar.base + f"/map/data/replay?start={start}&end={end}&bbox={bbox}"
                        "&limit=5000" + (f"&cursor={cursor}" if cursor else ""))
        fixes.extend(page["fixes"])
        cursor = page["next_cursor"]
        if cursor is None:
            return fixes


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


# -- 7. a registration in the URL, against the database of the real OGN trace -------------------


async def test_registration_in_the_url_finds_the_aircraft(
    nursery: trio.Nursery, web_db: Dataset
) -> None:
    # the API and pages alone (no feeds in this process: their states are unknown)
    host = await start_server(nursery, create_app(WebContext(pool=web_db.pool)))
    last = web_db.fixes_of(web_db.trace_id)[-1]
    async with open_page(f"http://{host}/?reg=oo-trc&tiles=none") as page:
        assert await page.poll(f"window.soar.selected() === {web_db.trace_id}"), page.console
        assert await page.evaluate("window.soar.offCentre(L.latLng"
                                   f"({last.lat}, {last.lon}))") <= 1
        assert await page.poll(
            "document.getElementById('panel-body').textContent.includes('OO-TRC')")
        # its last flight, Amsterdam to Barcelona, drawn whole with its barogram
        second = max((f for f in web_db.flights if f["aircraft_id"] == web_db.trace_id),
                     key=lambda f: f["first"])
        fixes = [f for f in web_db.fixes_of(web_db.trace_id)
                 if second["first"] <= f.received_us <= second["last"]]
        assert await page.poll(f"window.soar.selectedPoints().length === {len(fixes)}")
        # stale for hours, but selected: drawn inactive, not removed
        assert await page.evaluate(
            f"window.soar.aircraft.get({web_db.trace_id}).marker.getElement()"
            ".classList.contains('inactive')")
        assert await page.poll("document.querySelectorAll('.feed').length === 3")
        assert set(await page.evaluate(
            "[...document.querySelectorAll('.feed')].map(f => f.dataset.state)")) == {"unknown"}
        # search by registration and by competition number
        await set_input(page, "#search", "oo-trc")
        assert [r["id"] for r in await list_rows(page)] == [web_db.trace_id]
        await set_input(page, "#search", "tr")
        assert web_db.trace_id in [r["id"] for r in await list_rows(page)]
        await page.screenshot(ARTIFACTS / "map-registration.png")
    # a hidden aircraft is not found by its registration
    async with open_page(f"http://{host}/?reg=D-HIDDEN&tiles=none") as page:
        assert await page.poll("window.soar.stats.feedsLoaded > 0")
        assert await page.poll("window.soar.stats.loaded")
        assert await page.evaluate("window.soar.selected()") is None
    nursery.cancel_scope.cancel()
