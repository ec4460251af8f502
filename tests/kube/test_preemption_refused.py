"""An eviction the apiserver refuses (a PodDisruptionBudget changed after we read it) abandons
the plan: the victim is not planned again for a while and the preemptor is planned afresh.

The apiserver is faked at the Transport boundary (only ``evict`` is asked for), answering 429
exactly as the Eviction API does when a budget would be violated.
"""

from __future__ import annotations

from typing import Any

from xpupool.kube.scheduler import KubeScheduler, SchedulerConfig
from xpupool.kube.testing import fake_pod
from xpupool.kube.transport import ApiError, JsonDict
from xpupool.plugins.profiles import build_scheduler


class RefusingApi:
    def __init__(self) -> None:
        self.evictions: list[str] = []

    async def evict(self, namespace: str, name: str, *, uid: str | None = None) -> JsonDict:
        self.evictions.append(f"{namespace}/{name}")
        raise ApiError(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.")

    def __getattr__(self, name: str) -> Any:  # nothing else may be called
        raise AssertionError(f"unexpected transport call {name}")


async def test_refused_eviction_abandons_the_plan() -> None:
    api = RefusingApi()
    sched = KubeScheduler(api, scheduler=build_scheduler("binpack"),  # type: ignore[arg-type]
                          config=SchedulerConfig(queue_crd=False))
    victim = fake_pod("ns", "db-0", labels={"app": "db"})
    victim["metadata"]["uid"] = "uid-db-0"
    sched.cache.preempting["ns/vip"] = {"ns/db-0"}
    await sched.preemptor._evict(victim, "ns/vip")
    assert api.evictions == ["ns/db-0"]
    assert "ns/vip" not in sched.cache.preempting  # planned afresh at the next cycle
    assert "ns/db-0" in sched.preemptor.refused  # and not with this victim for a while
