"""The pool's web page in headless Chromium (Debian's package) against the real apiserver.

The view service runs in-process (``LivePool`` + ``make_app`` on loopback) over the shared live
pool; a real Chromium loads the page and we read its DOM over the DevTools protocol. Checked:

* the card heatmap has one cell per card of the pool's nodes, each with the allocation the
  apiserver's allocation annotations add up to and the pods they name; in utilization mode the
  agent's live sample;
* clicking a node shows its per-card slices, each pod on the card its allocation names;
* the pending table shows each pending pod with the scheduler's reason, word for word;
* the queue bars show used, guarantee, limit and pending of the XPUQueue;
* a pod created while the page is open appears without a reload (Server-Sent Events);
* the page's own requests never fail and it logs no JavaScript error.

``XPUPOOL_SCREENSHOT_DIR`` set: full-page screenshots are written there.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from xpupool.kube import testing as kube_testing
from xpupool.kube.testing import fake_pod
from xpupool.kube.transport import PODS, AiohttpTransport

from .browser import Browser, Page, chromium, chromium_binary
from .livepool import AGENT_UTILIZATION_PCT, LivePool
from .service import serve_view

pytestmark = [pytest.mark.e2e_apiserver, pytest.mark.asyncio(loop_scope="package")]


@pytest_asyncio.fixture(loop_scope="package", scope="package")
async def view_url(pool: LivePool, pool_transport: AiohttpTransport) -> AsyncIterator[str]:
    async with serve_view(pool_transport, pool.scheduler_name, batch_s=0.1) as url:
        yield url


@pytest_asyncio.fixture(loop_scope="package", scope="package")
async def browser() -> AsyncIterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        why = "Debian's chromium is not installed (make view-tools installs it)"
        if kube_testing.tests_must_not_skip():
            pytest.fail(why)
        pytest.skip(why)
    async with chromium(binary) as b:
        yield b


@pytest_asyncio.fixture(loop_scope="package", scope="package")
async def page(browser: Browser, view_url: str) -> Page:
    page = await browser.new_page(view_url)
    await page.wait_for("Number(document.body.dataset.updates) >= 1")
    return page


def expected_cards(pool: LivePool) -> dict[tuple[str, int], tuple[float, list[str]]]:
    per_card: dict[tuple[str, int], tuple[float, list[str]]] = defaultdict(lambda: (0.0, []))
    for key, alloc in pool.allocations.items():
        for card in alloc["cards"]:
            share, pods = per_card[(alloc["deviceNode"], card)]
            per_card[(alloc["deviceNode"], card)] = (share + alloc["shareMilli"] / 10, sorted([*pods, key]))
    return per_card


CELLS = """JSON.stringify([...document.querySelectorAll('.card[data-node^="%s"]')].map(c => ({
  node: c.dataset.node, card: Number(c.dataset.card), alloc: Number(c.dataset.alloc), util: c.dataset.util,
  pods: c.dataset.pods ? c.dataset.pods.split(' ').sort() : [], text: c.textContent})))"""


async def test_heatmap_shows_each_cards_allocation_and_utilization(pool: LivePool, page: Page) -> None:
    cells = json.loads(await page.eval(CELLS % pool.namespace))
    assert {c["node"] for c in cells} == set(pool.gpu_nodes)  # the CPU node has no cards to draw
    expected = expected_cards(pool)
    for c in cells:
        share, pods = expected.get((c["node"], c["card"]), (0.0, []))
        assert (c["alloc"], c["pods"]) == (pytest.approx(share), pods), c
        assert c["text"] == f"{round(share)}"
    await page.eval("document.getElementById('mode-util').click()")
    cells = json.loads(await page.eval(CELLS % pool.namespace))
    gpu0 = [c for c in cells if c["node"] == pool.gpu_nodes[0]]
    assert {(c["util"], c["text"]) for c in gpu0} == {(str(AGENT_UTILIZATION_PCT), str(AGENT_UTILIZATION_PCT))}
    assert {c["text"] for c in cells if c["node"] == pool.gpu_nodes[1]} == {"–"}  # no agent: no figure
    await page.eval("document.getElementById('mode-alloc').click()")


async def test_node_detail_lists_the_slices_of_each_card(pool: LivePool, page: Page) -> None:
    for node in pool.gpu_nodes:
        await page.eval(f"document.querySelector('.node-label[data-node=\"{node}\"]').click()")
        await page.wait_for(f"document.getElementById('node-detail').dataset.node === '{node}'")
        rows = await page.eval("""JSON.stringify([...document.querySelectorAll('#node-body tr.slice-row')]
            .map(r => [Number(r.dataset.card), r.dataset.pod, Number(r.children[2].textContent)]))""")
        shown = sorted(tuple(r) for r in json.loads(rows))
        wanted = sorted((card, key, alloc["shareMilli"] / 10) for key, alloc in pool.allocations.items()
                        if alloc["deviceNode"] == node for card in alloc["cards"])
        assert shown == wanted
        if os.environ.get("XPUPOOL_SCREENSHOT_DIR") and node == pool.gpu_nodes[1]:
            await page.screenshot(Path(os.environ["XPUPOOL_SCREENSHOT_DIR"]) / "view-node.png")
    await page.eval("document.getElementById('node-close').click()")


async def test_pending_pods_show_the_schedulers_reason(pool: LivePool, page: Page) -> None:
    rows = json.loads(await page.eval("""JSON.stringify(Object.fromEntries([...document.querySelectorAll(
        '#pending tbody tr[data-pod]')].map(r => [r.dataset.pod, r.querySelector('.reason').textContent])))"""))
    mine = {k.split("/", 1)[1]: v for k, v in rows.items() if k.startswith(pool.namespace + "/")}
    assert mine == pool.pending_reasons


async def test_queue_bars_show_used_guarantee_limit_and_pending(pool: LivePool, page: Page) -> None:
    bar = json.loads(await page.eval(f"""JSON.stringify(Object.assign({{}},
        document.querySelector('.queue[data-queue="{pool.queue}"]').dataset))"""))
    assert (bar["used"], bar["guarantee"], bar["limit"], bar["borrowed"], bar["pending"]) == ("0.5", "0.5", "1", "0",
                                                                                              "1")
    width = await page.eval(f"""document.querySelector('.queue[data-queue="{pool.queue}"] .used').style.width""")
    assert width == "50%"  # 0.5 used of a 1-card scale (the limit)
    if os.environ.get("XPUPOOL_SCREENSHOT_DIR"):
        await page.screenshot(Path(os.environ["XPUPOOL_SCREENSHOT_DIR"]) / "view-pool.png")


async def test_a_new_pending_pod_appears_live_and_the_page_logged_no_error(
    pool: LivePool, page: Page, pool_transport: AiohttpTransport
) -> None:
    before = int(await page.eval("document.body.dataset.updates"))
    name = "late-arrival"
    await pool_transport.create(PODS, fake_pod(pool.namespace, name, scheduler=pool.scheduler_name, vxpu=1,
                                               core_pct=50, memory_mib=999_999), namespace=pool.namespace)
    try:
        selector = f"#pending tbody tr[data-pod=\"{pool.namespace}/{name}\"] .reason"
        reason = await page.wait_for(
            f"(document.querySelector('{selector}') || {{}}).textContent?.startsWith('0/') && "
            f"document.querySelector('{selector}').textContent", timeout_s=30)
        assert "node(s)" in reason
        assert int(await page.eval("document.body.dataset.updates")) > before
        assert (await page.eval("document.getElementById('status').textContent")).startswith("live")
    finally:
        await pool_transport.delete(PODS, name, namespace=pool.namespace, grace_period_s=0)
    assert page.problems() == []
