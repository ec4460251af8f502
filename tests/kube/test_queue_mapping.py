"""XPUQueue objects -> core queue specs: every field maps, nothing is dropped silently (pure)."""

from __future__ import annotations

from pathlib import Path

import yaml

from xpupool.core.queue_access import resolve_queue
from xpupool.core.quota import CPU, DEVICE_MEMORY, MEMORY, XPU, QueueBook, Resources, model_dim
from xpupool.kube.queues import queue_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "queues.yaml"


def specs() -> dict[str, object]:
    return {d["metadata"]["name"]: d for d in yaml.safe_load_all(EXAMPLES.read_text())}


def test_the_example_tree_maps_completely() -> None:
    mapped = {name: queue_spec(doc) for name, doc in specs().items()}  # type: ignore[arg-type]
    assert all(warnings == [] for _, warnings in mapped.values()), mapped
    research, vision, nlp, prod = (mapped[n][0] for n in ("research", "vision", "nlp", "prod"))
    assert research.limit.get(model_dim(XPU, "H100-80GB-HBM3")) == 16_000
    assert research.limit.get(DEVICE_MEMORY) == 1024 * 1024  # 1Ti in MiB
    assert vision.parent == "research" and not vision.lending and vision.quota.xpu_milli == 2000
    assert vision.limit.get(XPU) == 8000 and vision.access.default_for_namespaces
    assert nlp.quota.get(model_dim(XPU, "H100-80GB-HBM3")) == 4000 and nlp.quota.device_memory_mib == 327_680
    assert nlp.limit.get(CPU) == 256_000 and nlp.limit.get(MEMORY) == 2 * 1024 * 1024
    assert not prod.borrowing and not prod.reclaimable and prod.reclaim_guarantee and prod.priority == 10
    capacity = Resources(10**6, 10**8, 32_000, 32 * 81920, by_model={"H100-80GB-HBM3": (32_000, 32 * 81920)})
    book = QueueBook([s for s, _ in mapped.values()], capacity)
    assert book.problems == [] and book.path("vision") == ["vision", "research"]
    entries = book.entries()
    assert resolve_queue(namespace="cv", namespace_labels={"team": "vision"}, requested=None,
                         queues=entries).queue == "vision"
    assert resolve_queue(namespace="serving", namespace_labels={}, requested="prod", queues=entries).queue == "prod"
    assert resolve_queue(namespace="nlp-prod", namespace_labels={}, requested=None, queues=entries).queue == "nlp"
    refused = resolve_queue(namespace="cv", namespace_labels={}, requested="nlp", queues=entries)
    assert refused.queue is None and "may not use queue 'nlp'" in refused.status.message()


def test_a_queue_without_namespaces_admits_none() -> None:
    spec, _ = queue_spec({"metadata": {"name": "q"}, "spec": {}})
    assert spec.access.describe() == "no namespace"
    assert not spec.access.admits("anything", {})


def test_bad_and_conflicting_entries_are_warned_not_dropped_silently() -> None:
    spec, warnings = queue_spec({"metadata": {"name": "q"}, "spec": {"quota": [
        {"resource": "xpupool.io/vxpu", "limit": 2},
        {"resource": "xpupool.io/vxpu-core", "limit": 150},
        {"resource": "cpu", "guaranteed": "lots"},
        {"resource": "xpupool.io/vxpu-memory", "guaranteed": "16Gi", "limit": 40960},
    ]}})
    assert spec.limit.get(XPU) == 2000  # the first one; the second is reported
    assert spec.quota.device_memory_mib == 16384 and spec.limit.get(DEVICE_MEMORY) == 40960
    text = "\n".join(warnings)
    assert "both xpupool.io/vxpu and xpupool.io/vxpu-core give the limit compute" in text
    assert "cpu guaranteed 'lots' is not a valid amount" in text
