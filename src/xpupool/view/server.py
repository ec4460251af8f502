"""The view service: a read-only web page of the pool, its JSON, live updates and pool metrics.

``python -m xpupool.view.server`` (the chart's ``view`` Deployment). Endpoints:

* ``GET /`` - the page (plain HTML/JS/CSS from ``xpupool/view/static``, no build step);
* ``GET /api/snapshot`` - the current :class:`~xpupool.view.model.PoolSnapshot` as JSON
  (the document ``xpupool status -o json`` prints);
* ``GET /api/events`` - Server-Sent Events: one ``snapshot`` event per new snapshot (batched, at
  most every ``batch`` interval), a comment every 15 s to keep proxies from closing the stream;
  the page falls back to polling ``/api/snapshot`` when the stream breaks;
* ``GET /metrics`` - :class:`~xpupool.view.metrics.PoolCollector` (allocation per card, pending
  per queue, queue usage, remote sessions, agent reachability);
* ``GET /healthz`` - 200 once the first snapshot is built.

It only reads (pods, nodes, XPUQueues; agents' ``/metrics``); nothing it serves can change the
cluster. It shows every namespace's pod names to whoever reaches it: the chart exposes it as a
ClusterIP Service only (``kubectl port-forward``), put an authenticating proxy in front for more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from xpupool.kube.objects import SCHEDULER_NAME
from xpupool.view.live import LivePool
from xpupool.view.metrics import PoolCollector
from xpupool.view.source import AGENT_SELECTOR, make_scraper

log = logging.getLogger(__name__)

POOL_KEY: web.AppKey[LivePool] = web.AppKey("xpupool_view_pool", LivePool)
#: set at shutdown: open event streams end at once instead of holding the graceful stop
CLOSING_KEY: web.AppKey[asyncio.Event] = web.AppKey("xpupool_view_closing", asyncio.Event)
KEEPALIVE_S = 15.0
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
#: a strict policy: the page loads nothing from elsewhere and runs no inline script
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"


def static_dir() -> Path:
    return Path(str(resources.files("xpupool.view") / "static"))


async def _static(request: web.Request) -> web.Response:
    name = request.match_info.get("name") or "index.html"
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    body = (static_dir() / name).read_bytes()
    return web.Response(body=body, content_type=STATIC_FILES[name],
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff"})


async def _snapshot(request: web.Request) -> web.Response:
    pool = request.app[POOL_KEY]
    if pool.snapshot is None:
        return web.json_response({"message": "no snapshot yet"}, status=503)
    return web.json_response(pool.snapshot.to_json(), headers={"Cache-Control": "no-store"})


async def _events(request: web.Request) -> web.StreamResponse:
    pool = request.app[POOL_KEY]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    closing = request.app[CLOSING_KEY]
    version = 0
    with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
        while not closing.is_set() and request.transport is not None and not request.transport.is_closing():
            waiter = asyncio.ensure_future(pool.wait_newer(version, KEEPALIVE_S))
            stop = asyncio.ensure_future(closing.wait())
            await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not waiter.done():
                waiter.cancel()
                break
            snap = waiter.result()
            if snap is None:
                await resp.write(b": keepalive\n\n")
                continue
            version = pool.version
            data = json.dumps(snap.to_json(), separators=(",", ":"))
            await resp.write(f"event: snapshot\nid: {version}\ndata: {data}\n\n".encode())
    return resp


async def _healthz(request: web.Request) -> web.Response:
    ok = request.app[POOL_KEY].ready
    return web.Response(status=200 if ok else 503, text="ok" if ok else "no snapshot yet")


def make_app(pool: LivePool) -> web.Application:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(lambda: pool.snapshot))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app[POOL_KEY] = pool
    app[CLOSING_KEY] = asyncio.Event()

    async def closing(app: web.Application) -> None:
        app[CLOSING_KEY].set()

    app.on_shutdown.append(closing)
    app.router.add_get("/", _static)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/api/snapshot", _snapshot)
    app.router.add_get("/api/events", _events)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", _healthz)
    return app


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m xpupool.view.server", description=__doc__.split("\n")[0])
    p.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, in-cluster, ~/.kube/config")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--agents", choices=("direct", "proxy", "off"), default="direct",
                   help="how to reach the agents' /metrics (direct: pod IPs)")
    p.add_argument("--agent-selector", default=AGENT_SELECTOR)
    p.add_argument("--scrape-interval-s", type=float, default=10.0)
    p.add_argument("--scheduler-name", default=SCHEDULER_NAME)
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


async def amain(argv: Sequence[str] | None = None) -> None:
    from xpupool.kube.transport import AiohttpTransport, KubeConfig

    args = _parse(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = KubeConfig.load(args.kubeconfig)
    transport = AiohttpTransport(config)
    pool = LivePool(transport, scraper=make_scraper(args.agents, config), scrape_interval_s=args.scrape_interval_s,
                    scheduler_name=args.scheduler_name, agent_selector=args.agent_selector)
    runner = web.AppRunner(make_app(pool))
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    log.info("view on %s:%d", args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(pool.run())
    try:
        await stop.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
        await transport.close()


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(amain(argv))


if __name__ == "__main__":
    main()
