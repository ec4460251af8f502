"""Headless Chromium (Debian's ``chromium``) driven over the Chrome DevTools Protocol with aiohttp.

No browser download, no driver: the browser is started with ``--remote-debugging-port=0`` and a
fresh ``--user-data-dir``, writes the port it chose to ``DevToolsActivePort``, and we speak CDP
over its browser WebSocket (``Target.createTarget`` + flattened sessions). ``CHROMIUM`` overrides
the binary. Used by the web-page tests and by ``hack/view/screenshots.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--hide-scrollbars",
)


def chromium_binary() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(RuntimeError):
    pass


class Browser:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        #: every CDP event received (``method``, ``params``, ``sessionId``)
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "method" in data:
                self.events.append(data)
                continue
            future = self._waiting.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                if "error" in data:
                    future.set_exception(CdpError(str(data["error"])))
                else:
                    future.set_result(data.get("result", {}))

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
                   timeout_s: float = 30.0) -> dict[str, Any]:
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = future
        body: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            body["sessionId"] = session
        await self._ws.send_str(json.dumps(body))
        return await asyncio.wait_for(future, timeout_s)

    async def new_page(self, url: str, *, width: int = 1280, height: int = 900) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        await page.send("Page.enable")
        await page.send("Runtime.enable")  # exceptions and console errors, see Page.problems
        await page.send("Log.enable")  # failed requests, CSP violations
        await page.send("Page.navigate", {"url": url})
        return page

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.send("Browser.close", timeout_s=5)
        self._reader.cancel()
        await self._ws.close()


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self._browser = browser
        self._session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._browser.send(method, params, session=self._session)

    def problems(self) -> list[str]:
        """JavaScript exceptions, console errors and failed requests of this page so far."""
        out = []
        for event in self._browser.events:
            if event.get("sessionId") != self._session:
                continue
            params = event.get("params") or {}
            if event["method"] == "Runtime.exceptionThrown":
                out.append(str(params.get("exceptionDetails")))
            elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append(str(params["entry"].get("text")))
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                out.append(str(params.get("args")))
        return out

    async def eval(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page (awaiting a promise) and return its JSON value."""
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CdpError(str(result["exceptionDetails"]))
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, timeout_s: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            with contextlib.suppress(CdpError):
                value = await self.eval(expression)
                if value:
                    return value
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"page never satisfied: {expression}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path, *, full_page: bool = True) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            params["captureBeyondViewport"] = True
        shot = await self.send("Page.captureScreenshot", params)
        path.write_bytes(base64.b64decode(shot["data"]))


@contextlib.asynccontextmanager
async def chromium(binary: str) -> AsyncIterator[Browser]:
    """A fresh headless Chromium (own profile directory, removed afterwards)."""
    profile = Path(tempfile.mkdtemp(prefix="xpupool-chromium-"))
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    session = aiohttp.ClientSession()
    browser: Browser | None = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = asyncio.get_running_loop().time() + 30
        while not port_file.is_file() or len(port_file.read_text().splitlines()) < 2:
            if proc.poll() is not None:
                raise CdpError(f"chromium exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}"
                               if proc.stderr else "chromium exited")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("chromium wrote no DevToolsActivePort")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        ws = await session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=64 * 1024 * 1024)
        browser = Browser(ws)
        yield browser
    finally:
        if browser is not None:
            await browser.close()
        await session.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
