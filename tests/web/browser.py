"""Headless Debian chromium driven over the DevTools protocol (trio-websocket, no selenium).

Generic helpers for page tests: `open_page(url)` starts a chromium with its own profile and
yields a `DevTools` client of its page; `page.poll(expression)` waits on page state (never on
time); `page.screenshot(path)` writes a PNG. Tests skip with `needs_chromium` when
/usr/bin/chromium is not installed (`make test` installs it).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from tests.support import fetch_json

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium not installed (apt-get install chromium chromium-driver; make test does)",
)


class DevTools:
    """A minimal DevTools protocol client for one page target."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self.console: list[str] = []  # console errors and uncaught exceptions, for messages

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        await self.ws.send_message(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.get_message())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result
            self._event(message)

    def _event(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method == "Runtime.exceptionThrown":
            details = message["params"]["exceptionDetails"]
            self.console.append(str(details.get("exception", {}).get("description") or details))
        elif method == "Runtime.consoleAPICalled" and message["params"].get("type") == "error":
            self.console.append(" ".join(str(a.get("value", a.get("description", "")))
                                         for a in message["params"].get("args", [])))

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def poll(self, expression: str, timeout: float = 60) -> bool:
        """Evaluate `expression` until it is truthy (True) or `timeout` seconds pass (False)."""
        with trio.move_on_after(timeout):
            while True:
                if await self.evaluate(expression):
                    return True
                await trio.sleep(0.1)
        return bool(await self.evaluate(expression))

    async def navigate(self, url: str, ready: str = "document.readyState === 'complete'") -> None:
        # the old document would answer "complete" too: mark it, and wait for one without
        # (not for the URL: a page may rewrite its own at once, as the map does)
        await self.evaluate("window.__soarOldDocument = true")
        await self.call("Page.navigate", url=url)
        assert await self.poll(f"!window.__soarOldDocument && ({ready})", 60), url

    async def screenshot(self, path: Path) -> None:
        data = await self.call("Page.captureScreenshot", format="png")
        await trio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        await trio.Path(path).write_bytes(base64.b64decode(data["data"]))


async def open_chromium(
    profile: Path, url: str, width: int = 1280, height: int = 800
) -> tuple[trio.Process, str]:
    """Start headless chromium on `url`; returns the process and its page's debugger URL."""
    process = await trio.lowlevel.open_process(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", f"--window-size={width},{height}", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    # chromium writes the port, a newline, then the browser's path: whole once two lines are in
    with trio.move_on_after(60):
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            await trio.sleep(0.05)
    assert port_file.exists(), "chromium did not start"
    port = int(port_file.read_text().split()[0])
    pages: list[dict[str, Any]] = []
    with trio.move_on_after(30):
        while not pages:
            targets = await fetch_json(f"http://127.0.0.1:{port}/json/list", timeout=5)
            pages = [t for t in targets if t.get("type") == "page"]
            if not pages:
                await trio.sleep(0.05)
    assert pages, "chromium has no page"
    return process, pages[0]["webSocketDebuggerUrl"]


async def stop(process: trio.Process) -> None:
    process.terminate()
    with trio.move_on_after(5):
        await process.wait()
        return
    process.kill()
    await process.wait()


@asynccontextmanager
async def open_page(
    url: str = "about:blank", *, width: int = 1280, height: int = 800,
    timezone: str | None = None,
) -> AsyncIterator[DevTools]:
    """A fresh headless chromium showing `url`, as a DevTools client; `timezone` (IANA name)
    is the page's time zone, set before it loads."""
    profile = Path(tempfile.mkdtemp(prefix="soar-chromium-"))
    process, debugger = await open_chromium(profile, "about:blank", width, height)
    try:
        async with trio_websocket.open_websocket_url(debugger, max_message_size=64 * 2**20) as ws:
            page = DevTools(ws)
            await page.call("Page.enable")
            await page.call("Runtime.enable")
            if timezone:
                await page.call("Emulation.setTimezoneOverride", timezoneId=timezone)
            if url != "about:blank":
                await page.navigate(url)
            yield page
    finally:
        await stop(process)
        shutil.rmtree(profile, ignore_errors=True)
