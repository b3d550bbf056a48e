"""The flight log page in headless chromium against a real soar fed by real captures
(`running_soar`): estimates marked and explained, "Load more" up to the day's total, launch
methods, the day summary, the page's columns in the CSV, and times in the browser's zone, a
`?tz=` zone or UTC. Screenshots: tests/artifacts/flight-log-*.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from soar.web.api import CSV_COLUMNS

from .browser import ARTIFACTS, DevTools, needs_chromium, open_page
from .running_soar import REGISTRATIONS, TIMED_OUT_WINCH, RunningSoar, start_soar

pytestmark = [pytest.mark.slow, pytest.mark.browser, needs_chromium]

ROWS = "[...document.querySelectorAll('table.log tbody tr')]"


async def rows(page: DevTools) -> list[dict[str, Any]]:
    """Each row's cells by column, with the estimate marks in them."""
    result: list[dict[str, Any]] = await page.evaluate(
        f"{ROWS}.map(r => Object.fromEntries([...r.cells].map((c, i) => ["
        "  document.querySelectorAll('table.log thead th')[i].dataset.col,"
        "  {text: c.textContent, est: [...c.querySelectorAll('.est')].map(e =>"
        "    [e.dataset.estimate, e.title, e.textContent])}])))"
    )
    return result


@pytest.fixture
async def soar(
    nursery: trio.Nursery, testdata: Path, tmp_path: Path, db_url: str
) -> RunningSoar:
    return await start_soar(nursery, testdata, tmp_path, db_url)


async def test_flight_log_page(soar: RunningSoar) -> None:
    api = await soar.get_json("/api/flights?date=2024-03-29&include_spurious=true"
                               "&tz=Europe/Berlin&summary=true")
    assert api["total"] >= 4
    # Berlin is UTC+1 on 29 March 2024: the browser's zone decides the times shown
    url = f"http://{soar.host}/flights?date=2024-03-29&include_spurious=true&limit=2"
    async with open_page(url, timezone="Europe/Berlin") as page:
        assert await page.poll(f"{ROWS}.length === 2"), page.console
        summary = await page.evaluate("document.getElementById('summary').textContent")
        assert summary.startswith(f"2 of {api['total']} flights on 2024-03-29")
        assert "times Europe/Berlin" in summary
        # Load more, until the day's total is shown
        for shown in range(4, api["total"] + 2, 2):
            assert await page.evaluate("document.getElementById('more').offsetParent !== null")
            await page.evaluate("document.getElementById('more').click()")
            assert await page.poll(f"{ROWS}.length === {min(shown, api['total'])}")
        assert await page.evaluate("document.getElementById('more').offsetParent === null")
        assert (await page.evaluate("document.getElementById('summary').textContent")
                ).startswith(f"{api['total']} flights")
        shown_rows = await rows(page)
        assert [r["flight_id"]["text"] for r in shown_rows] == ["IGC KML"] * api["total"]
        ids = await page.evaluate(f"{ROWS}.map(r => r.dataset.flight)")
        assert ids == [f["id"] for f in api["flights"]]

        # the lost winch launch: takeoff seen (11:08 Berlin), then lost: marked, with why
        lost = next(r for r in shown_rows
                    if REGISTRATIONS[TIMED_OUT_WINCH] in r["registration"]["text"])
        assert lost["takeoff"] == {"text": "11:08", "est": []}
        [(kind, why, time)] = lost["landing"]["est"]
        assert (kind, time) == ("timed_out", "11:08") and "no fix for an hour" in why
        assert "lost" in lost["landing"]["text"]
        assert lost["launch"]["text"] == "Winch"
        assert lost["max_altitude_ft"]["text"].startswith("2,182 ft")
        # the stealth glider: anonymous, first seen airborne (an estimate), landed in sight
        (anonymous,) = [r for r in shown_rows if r["registration"]["text"] == "anonymous"]
        assert anonymous["takeoff"]["est"][0][0] == "first_seen_airborne"
        assert anonymous["landing"] == {"text": "16:56", "est": []}
        assert sum(r["launch"]["text"] == "Winch" for r in shown_rows) >= 2

        # the day summary: per airfield, launches by method, tow-plane flights
        day = await page.evaluate(
            "[...document.querySelectorAll('#day-summary tbody tr')].map(r =>"
            " [...r.cells].map(c => c.textContent))")
        assert day == [[a["airport"] or "no airfield known", str(a["flights"]),
                        str(a["launches"]["aerotow"]), str(a["launches"]["winch"]),
                        str(a["launches"]["self"]), str(a["launches"]["unknown"]),
                        str(a["tow_plane_flights"])] for a in api["summary"]["airfields"]]
        # the CSV has the page's columns (and the date); its link follows the page
        columns = await page.evaluate("window.soarFlights.columns")
        assert set(columns) <= set(CSV_COLUMNS) and "date" in CSV_COLUMNS
        csv_link = await page.evaluate("document.getElementById('csv').getAttribute('href')")
        assert "format=csv" in csv_link and "tz=Europe%2FBerlin" in csv_link
        assert "include_spurious=true" in csv_link
        await page.screenshot(ARTIFACTS / "flight-log-berlin.png")

        # UTC at a click: same flights, times an hour earlier, the choice in the URL
        await page.evaluate("document.getElementById('utc').click()")
        assert await page.poll(
            "document.getElementById('summary').textContent.includes('times UTC')")
        assert await page.poll(f"{ROWS}.length === {api['total']}")
        utc_rows = await rows(page)
        lost = next(r for r in utc_rows
                    if REGISTRATIONS[TIMED_OUT_WINCH] in r["registration"]["text"])
        assert lost["takeoff"]["text"] == "10:08"
        assert "utc=1" in await page.evaluate("location.search")
        await page.screenshot(ARTIFACTS / "flight-log-utc.png")
        assert page.console == []


async def test_tz_in_the_url_and_projected_times(soar: RunningSoar) -> None:
    # ?tz= wins over the browser's zone; Tokyo's 24 December holds both airliner flights
    url = f"http://{soar.host}/flights?date=2025-12-24&tz=Asia/Tokyo"
    async with open_page(url, timezone="America/New_York") as page:
        assert await page.poll(f"{ROWS}.length === 2"), page.console
        shown = await rows(page)
        descent, climb = shown
        assert descent["takeoff"]["est"][0][:1] == ["first_seen_airborne"]
        assert descent["takeoff"]["est"][0][2] == "07:18"
        [(kind, why, time)] = descent["landing"]["est"]
        assert (kind, time) == ("out_of_coverage", "07:32") and "projected" in why
        assert descent["arrival"]["text"] == "EHAM"
        [(kind, why, time)] = climb["takeoff"]["est"]
        assert (kind, time) == ("out_of_coverage", "14:45") and "projected" in why
        assert climb["landing"] == {"text": "16:28", "est": []}
        assert climb["departure"]["text"] == "EHAM" and climb["arrival"]["text"] == "LEBL"
        assert "times Asia/Tokyo" in await page.evaluate(
            "document.getElementById('summary').textContent")
        await page.screenshot(ARTIFACTS / "flight-log-tokyo.png")

        # a zone nobody knows is a clear error on the page, not a blank log
        await page.navigate(f"http://{soar.host}/flights?tz=Mars/Olympus")
        assert await page.poll(
            "document.querySelector('#log .empty') !== null"
            " && document.querySelector('#log .empty').textContent.includes('time zone')")
        assert json.dumps(page.console).count("400") <= 1  # the refused request, at most
