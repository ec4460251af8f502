"""Regenerates the web page screenshots in docs/images from a real run.

    .venv/bin/python hack/view/screenshots.py [--cli]

Starts a throw-away control plane (make kube-bins), the live pool of tests/view/livepool.py in
namespace ``ml-team`` (real scheduler daemon, real agent with the fake kubelet), the view service
and Debian's headless Chromium; writes ``docs/images/view-pool.png`` (the page) and
``docs/images/view-node.png`` (a node's slices opened). Everything it starts is stopped again.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from view.browser import chromium, chromium_binary  # noqa: E402  (tests/view helpers)
from view.livepool import live_pool  # noqa: E402
from view.service import serve_view  # noqa: E402

from xpupool.kube.testing import ControlPlane, find_bin_dir  # noqa: E402
from xpupool.kube.transport import NAMESPACES, AiohttpTransport, KubeConfig  # noqa: E402

OUT = ROOT / "docs" / "images"


async def main() -> None:
    bin_dir, missing = find_bin_dir()
    binary = chromium_binary()
    if missing or binary is None:
        raise SystemExit(f"needs make kube-bins ({missing}) and Debian's chromium ({binary})")
    OUT.mkdir(parents=True, exist_ok=True)
    with ControlPlane.start(bin_dir) as cp:
        transport = AiohttpTransport(KubeConfig.from_file(cp.kubeconfig))
        await transport.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml-team"}})
        async with (live_pool(cp, transport, "ml-team", Path(tempfile.mkdtemp())) as pool,
                    serve_view(transport, pool.scheduler_name) as url):
            async with chromium(binary) as browser:
                page = await browser.new_page(url, width=1200, height=760)
                await page.wait_for("Number(document.body.dataset.updates) >= 2")
                await page.screenshot(OUT / "view-pool.png")
                await page.eval(f"document.querySelector('.node-label[data-node=\"{pool.gpu_nodes[1]}\"]').click()")
                await page.wait_for("!document.getElementById('node-detail').hidden")
                await page.screenshot(OUT / "view-node.png")
            if "--cli" in sys.argv:  # the terminal views of the same pool, at 80 columns
                for args in (["pods"], ["status", pool.gpu_nodes[0], "--agents", "direct"], ["queues"]):
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "xpupool.cli.main", *args, "--kubeconfig", str(cp.kubeconfig),
                        "--scheduler-name", pool.scheduler_name, stdout=asyncio.subprocess.PIPE,
                        env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1"})
                    out, _ = await proc.communicate()
                    print(f"$ xpupool {' '.join(args)}\n{out.decode()}")
        await transport.close()
    print(f"wrote {OUT / 'view-pool.png'} and {OUT / 'view-node.png'}")


if __name__ == "__main__":
    asyncio.run(main())
