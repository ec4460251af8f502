"""The view service in-process on loopback, for the web-page test and ``hack/view/screenshots.py``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from xpupool.kube.transport import AiohttpTransport
from xpupool.view.live import LivePool
from xpupool.view.server import make_app
from xpupool.view.source import DirectScraper


@contextlib.asynccontextmanager
async def serve_view(transport: AiohttpTransport, scheduler_name: str, *, batch_s: float = 0.3) -> AsyncIterator[str]:
    """``LivePool`` + ``make_app`` on a free loopback port, agents scraped directly every second;
    yields the page's URL and stops both on exit."""
    view = LivePool(transport, scraper=DirectScraper(), scrape_interval_s=1.0, batch_s=batch_s,
                    scheduler_name=scheduler_name)
    task = asyncio.create_task(view.run())
    runner = web.AppRunner(make_app(view))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
