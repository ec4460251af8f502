"""Transport choice: list 2,000 pods from a real apiserver with our aiohttp transport (raw dicts)
vs lightkube 1.0's ``AsyncClient`` (typed models). A benchmark, not a test.

    .venv/bin/pip install -e '.[bench]'    # lightkube is not a dependency of xpupool any more
    .venv/bin/python bench/kube/list_decode.py [--pods 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

try:
    from lightkube import AsyncClient
    from lightkube import KubeConfig as LkConfig
    from lightkube.resources.core_v1 import Pod
except ImportError as exc:  # the comparison needs the bench extra
    raise SystemExit(f"{exc}: install the bench extra (pip install -e '.[bench]')") from exc

from xpupool.kube.testing import ControlPlane, create_all, fake_pod, find_bin_dir
from xpupool.kube.transport import NAMESPACES, PODS, AiohttpTransport, KubeConfig


async def amain(pods: int, rounds: int) -> None:
    bin_dir, missing = find_bin_dir()
    assert not missing, missing
    cp = ControlPlane.start(bin_dir)
    ours = AiohttpTransport(KubeConfig.from_file(cp.kubeconfig))
    try:
        await ours.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
        await create_all(
            ours, PODS, [fake_pod("bench", f"p{i:05d}", vxpu=1, core_pct=30) for i in range(pods)], concurrency=64
        )
        lk = AsyncClient(LkConfig.from_file(str(cp.kubeconfig)))
        best_ours = best_lk = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            n, token = 0, None
            while True:
                page = await ours.list(PODS, namespace="bench", limit=500, continue_token=token)
                n += len(page.items)
                token = page.continue_token or None
                if token is None:
                    break
            best_ours = min(best_ours, time.perf_counter() - t0)
            assert n == pods
            t0 = time.perf_counter()
            m = 0
            async for _pod in lk.list(Pod, namespace="bench", chunk_size=500):
                m += 1
            best_lk = min(best_lk, time.perf_counter() - t0)
            assert m == pods
        await lk.close()
        print(
            f"list {pods} pods, best of {rounds}: aiohttp+json {best_ours * 1000:.0f} ms, "
            f"lightkube AsyncClient {best_lk * 1000:.0f} ms ({best_lk / best_ours:.2f}x)"
        )
    finally:
        await ours.close()
        cp.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pods", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    asyncio.run(amain(a.pods, a.rounds))


if __name__ == "__main__":
    main()
