"""The chart's Grafana dashboards: committed JSON is what hack/view/dashboards.py writes, each is
a well-formed dashboard, the chart ships them as ConfigMaps, and every query reads metrics the
code exports (collected by running the exporters, :mod:`tests.view.exported_metrics`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from deploy.helm import render  # tests/deploy: the pinned helm

from .exported_metrics import exported_sample_names, metric_names_in

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "helm" / "xpupool" / "dashboards"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards", ROOT / "hack" / "view" / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def queries(dashboard: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    out += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return out


def test_committed_dashboards_are_the_generated_ones() -> None:
    files = generator().render_all()
    assert sorted(files) == sorted(p.name for p in DASHBOARDS.glob("*.json"))
    for name, text in files.items():
        assert (DASHBOARDS / name).read_text() == text, f"{name} is stale: run hack/view/dashboards.py"


def test_dashboards_are_well_formed() -> None:
    uids = set()
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        assert dash["uid"] not in uids and dash["title"].startswith("xpupool / ")
        uids.add(dash["uid"])
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)) and dash["panels"]
        for p in dash["panels"]:
            pos = p["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
            assert p["targets"] and all(t["expr"].strip() and t["refId"] for t in p["targets"]), p["title"]
            assert p["datasource"]["uid"] == "${datasource}"
        names = {v["name"] for v in dash["templating"]["list"]}
        for expr in queries(dash):
            for var in ("node", "queue"):
                if f"${var}" in expr:
                    assert var in names, (path.name, expr)
    assert uids == {"xpupool-pool", "xpupool-node", "xpupool-queue"}


def test_every_query_reads_an_exported_metric() -> None:
    exported = exported_sample_names()
    for path in sorted(DASHBOARDS.glob("*.json")):
        for expr in queries(json.loads(path.read_text())):
            used = metric_names_in(expr)
            assert used, (path.name, expr)
            assert used <= exported, (path.name, expr, used - exported)


def test_chart_ships_the_dashboards_as_configmaps() -> None:
    maps = {d["metadata"]["name"]: d for d in render()
            if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]}
    assert set(maps) == {f"rel-xpupool-dashboard-{n}" for n in ("pool", "node", "queue")}
    for name, cm in maps.items():
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        (text,) = cm["data"].values()
        short = name.rsplit("-", 1)[1]
        assert json.loads(text) == json.loads((DASHBOARDS / f"{short}.json").read_text())
    assert not [d for d in render("monitoring.dashboards.enabled=false") if "dashboard" in d["metadata"]["name"]]
