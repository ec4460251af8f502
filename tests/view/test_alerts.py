"""The chart's alert rules, rendered by the pinned helm, checked and unit-tested by promtool
(Debian's ``prometheus`` package; ``make view-tools`` installs it). Every metric an alert reads
is one the code exports (see :mod:`tests.view.exported_metrics`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.helm import render  # tests/deploy: the pinned helm
from xpupool.kube import testing as kube_testing

from .exported_metrics import exported_sample_names, metric_names_in

HERE = Path(__file__).parent
ALERTS = {"XpupoolSliceOverMemoryQuota", "XpupoolSliceOverComputeLimit", "XpupoolLimiterAccountingErrors",
          "XpupoolCardOverAllocated", "XpupoolPodsPendingTooLong", "XpupoolAgentDown", "XpupoolRemoteSessionErrors",
          "XpupoolRemoteDaemonDown"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        why = "promtool missing: `make view-tools` installs Debian's prometheus package"
        if kube_testing.tests_must_not_skip():
            pytest.fail(why)
        pytest.skip(why)
    return path


def rendered_rules() -> dict[str, object]:
    docs = render("monitoring.prometheusRule.enabled=true", release="xpupool")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    spec: dict[str, object] = rule["spec"]
    return spec


def test_prometheus_rule_is_off_unless_asked() -> None:
    assert not [d for d in render() if d["kind"] == "PrometheusRule"]


def test_alert_rules_pass_promtool_unit_tests(tmp_path: Path) -> None:
    tool = promtool()
    spec = rendered_rules()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    check = subprocess.run([tool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([tool, "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    tested = set()
    for case in yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]:
        tested |= {t["alertname"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == ALERTS  # every alert is shown to fire at least once


def test_every_alert_reads_exported_metrics() -> None:
    exported = exported_sample_names()
    names = {rule["alert"] for group in rendered_rules()["groups"] for rule in group["rules"]}  # type: ignore[index]
    assert names == ALERTS
    for group in rendered_rules()["groups"]:  # type: ignore[index]
        for rule in group["rules"]:
            used = metric_names_in(rule["expr"])
            assert used, rule["alert"]
            assert used <= exported | {"up"}, (rule["alert"], used - exported)
