"""The informer against a real kube-apiserver: list, watch, bookmarks, and 410 -> relist + diff.

A watch from a resourceVersion that etcd has compacted away gets ``410 Gone``. The test control
plane serves ConfigMaps without the watch cache and compacts every 5 s, so the test stops an
informer, changes the world while it is away (create, modify, delete), waits for compaction, then
resumes it from its stale RV: it must relist and synthesise exactly the ADDED/MODIFIED/DELETED
events it missed, so a delete during the gap is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from xpupool.kube.informer import ADDED, DELETED, MODIFIED, Informer, object_key
from xpupool.kube.transport import CONFIGMAPS, PODS, AiohttpTransport, ApiError, JsonDict

pytestmark = pytest.mark.e2e_apiserver


def pod(namespace: str, name: str, **labels: str) -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"schedulerName": "xpupool", "containers": [{"name": "c", "image": "busybox"}]},
    }


async def wait_for(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_list_then_watch_sees_every_change(transport: AiohttpTransport, namespace: str) -> None:
    for i in range(7):
        await transport.create(PODS, pod(namespace, f"p{i}"))
    inf = Informer(transport, PODS, namespace=namespace, page_size=3)  # forces 3 pages
    seen: list[tuple[str, str]] = []
    inf.add_handler(lambda t, o, n: seen.append((t, object_key(n if n is not None else o))))  # type: ignore[arg-type]
    task = asyncio.create_task(inf.run())
    try:
        await asyncio.wait_for(inf.synced.wait(), 10)
        assert len(inf.store) == 7
        assert {k for t, k in seen if t == ADDED} == {f"{namespace}/p{i}" for i in range(7)}
        await transport.create(PODS, pod(namespace, "late"))
        await transport.patch(PODS, "p0", {"metadata": {"labels": {"x": "1"}}}, namespace=namespace)
        await transport.delete(PODS, "p1", namespace=namespace, grace_period_s=0)
        await wait_for(lambda: (DELETED, f"{namespace}/p1") in seen and f"{namespace}/late" in inf.store)
        await wait_for(lambda: inf.store[f"{namespace}/p0"]["metadata"]["labels"].get("x") == "1")
        assert (MODIFIED, f"{namespace}/p0") in seen
        assert f"{namespace}/p1" not in inf.store
        assert inf.relists == 1
        assert int(inf.resource_version) > 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def configmap(namespace: str, name: str, value: str = "1") -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"v": value},
    }


async def test_410_relists_and_synthesises_missed_events(transport: AiohttpTransport, namespace: str) -> None:
    for name in ("keep", "change", "remove"):
        await transport.create(CONFIGMAPS, configmap(namespace, name))
    inf = Informer(transport, CONFIGMAPS, namespace=namespace)
    seen: list[tuple[str, str]] = []
    inf.add_handler(lambda t, o, n: seen.append((t, object_key(n if n is not None else o))))  # type: ignore[arg-type]
    task = asyncio.create_task(inf.run())
    await asyncio.wait_for(inf.synced.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    seen.clear()
    stale_rv = inf.resource_version

    # The world moves on while the informer is away.
    await transport.delete(CONFIGMAPS, "remove", namespace=namespace)
    await transport.patch(CONFIGMAPS, "change", {"data": {"v": "2"}}, namespace=namespace)
    await transport.create(CONFIGMAPS, configmap(namespace, "new"))

    # Wait until etcd compaction (every 5 s here) has passed the stale RV: the apiserver then
    # answers 410 Gone (as the HTTP status or as an in-stream ERROR event).
    deadline = asyncio.get_running_loop().time() + 30
    code = 0
    while code != 410:
        assert asyncio.get_running_loop().time() < deadline, "no compaction within 30 s"
        await transport.create(CONFIGMAPS, configmap(namespace, f"tick-{uuid.uuid4().hex[:6]}"))
        try:
            async for event in transport.watch(CONFIGMAPS, namespace=namespace, resource_version=stale_rv, timeout_s=1):
                if event.type == "ERROR":
                    code = event.object["code"]
                break
        except ApiError as exc:
            code = exc.status
        if code != 410:
            await asyncio.sleep(1)
    ticks = {
        k
        for k in [object_key(c) for c in (await transport.list(CONFIGMAPS, namespace=namespace)).items]
        if "/tick-" in k
    }

    inf.resource_version = stale_rv
    task = asyncio.create_task(inf.run())
    try:
        await wait_for(lambda: inf.relists == 2)
        expected = [
            (DELETED, f"{namespace}/remove"),
            (MODIFIED, f"{namespace}/change"),
            (ADDED, f"{namespace}/new"),
        ]
        expected += [(ADDED, k) for k in ticks]
        assert sorted(seen) == sorted(expected)
        assert set(inf.store) == {f"{namespace}/{n}" for n in ("keep", "change", "new")} | ticks
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
