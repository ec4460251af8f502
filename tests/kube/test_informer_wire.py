"""Informer edge cases the real apiserver does not produce on demand, faked at the wire.

A small aiohttp server speaks the list/watch protocol: a BOOKMARK-only watch (a quiet resource),
an HTTP 410 answer to a watch (what some apiservers and proxies send instead of an ERROR event),
and a dropped connection. The informer must advance its RV on bookmarks without calling
handlers, relist on HTTP 410, and resume (not relist) after a plain disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from xpupool.kube.informer import Informer
from xpupool.kube.transport import CONFIGMAPS, AiohttpTransport, JsonDict, KubeConfig


def cm(name: str, rv: int) -> JsonDict:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv)}, "data": {}}


class FakeApi:
    """Scripted apiserver: ``watch_script`` is consumed one entry per watch request."""

    def __init__(self) -> None:
        self.items = [cm("a", 10)]
        self.list_rv = 10
        self.lists = 0
        self.watch_rvs: list[str] = []
        self.watch_script: list[str] = []
        #: the world as listed after the first 410 (objects, RV)
        self.after_gone: tuple[list[JsonDict], int] | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "1":
            self.lists += 1
            return web.json_response({"metadata": {"resourceVersion": str(self.list_rv)}, "items": self.items})
        self.watch_rvs.append(request.query["resourceVersion"])
        step = self.watch_script.pop(0) if self.watch_script else "hang"
        if step == "gone":
            if self.after_gone is not None:
                self.items, self.list_rv = self.after_gone
            return web.json_response(
                {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}, status=410
            )
        resp = web.StreamResponse()
        await resp.prepare(request)
        if step == "bookmark":
            line = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "42"}}}
            await resp.write(json.dumps(line).encode() + b"\n")
        elif step == "hang":
            await asyncio.sleep(30)
        return resp  # "drop" and the others: close the stream


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeApi, AiohttpTransport]]:
    api = FakeApi()
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/configmaps", api.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    transport = AiohttpTransport(KubeConfig(server=f"http://127.0.0.1:{port}"))
    yield api, transport
    await transport.close()
    await runner.cleanup()


async def run_until(inf: Informer, predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    task = asyncio.create_task(inf.run())
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not predicate():
            assert asyncio.get_running_loop().time() < deadline, "condition not reached"
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


async def test_bookmark_advances_rv_without_handler_calls(fake: tuple[FakeApi, AiohttpTransport]) -> None:
    api, transport = fake
    api.watch_script = ["bookmark"]
    inf = Informer(transport, CONFIGMAPS, namespace="ns", sleep=no_sleep)
    calls: list[str] = []
    inf.add_handler(lambda t, o, n: calls.append(t))
    await run_until(inf, lambda: len(api.watch_rvs) >= 2)
    assert calls == ["ADDED"]  # from the list only; the bookmark is not an object change
    assert api.watch_rvs[:2] == ["10", "42"]  # second watch resumes from the bookmark's RV
    assert api.lists == 1


async def test_http_410_relists_and_disconnect_resumes(fake: tuple[FakeApi, AiohttpTransport]) -> None:
    api, transport = fake
    api.watch_script = ["drop", "gone"]
    inf = Informer(transport, CONFIGMAPS, namespace="ns", sleep=no_sleep)
    deleted: list[str] = []
    inf.add_handler(lambda t, o, n: deleted.append(o["metadata"]["name"]) if t == "DELETED" else None)

    # After the 410 the relist no longer contains "a": a synthetic DELETED must follow.
    api.after_gone = ([cm("b", 50)], 50)
    await run_until(inf, lambda: api.lists >= 2 and len(api.watch_rvs) >= 3)
    assert api.watch_rvs[:3] == ["10", "10", "50"]  # resume after drop, relist after 410
    assert deleted == ["a"]
    assert set(inf.store) == {"ns/b"}
