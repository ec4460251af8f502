"""Held-out openb mixes: blends of the published variants, rebuilt from the trace files on demand."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpupool.core.model import Request
from xpupool.sim.mixes import HELD_OUT, VISIBLE_VARIANTS, Mix, blend, composition, family, load_workload
from xpupool.sim.openb import default_nodes_file, load_pods, pods_file

trace = pytest.mark.skipif(not default_nodes_file().is_file(), reason="openb trace not present")


def pods(prefix: str, n: int, count: int, milli: int) -> list[Request]:
    return [Request(name=f"{prefix}{i}", cpu_milli=1000, memory_mib=1024, count=count, share_milli=milli,
                    exclusive=milli >= 1000) for i in range(n)]


def test_blend_draws_each_list_in_proportion_to_its_weight_and_is_reproducible() -> None:
    a, b = pods("a", 100, 1, 500), pods("b", 300, 8, 1000)
    mix = blend([(a, 0.25), (b, 0.75)], name="m", seed=7)
    assert len(mix) == round(0.25 * 100 + 0.75 * 300)
    share_b = sum(1 for p in mix if p.count == 8) / len(mix)
    assert share_b == pytest.approx(0.75, abs=0.05)
    assert [(p.name, p.count) for p in mix] == [(p.name, p.count) for p in blend([(a, 1), (b, 3)], name="m", seed=7)]
    assert [p.count for p in mix] != [p.count for p in blend([(a, 0.25), (b, 0.75)], name="m", seed=8)]
    assert len({p.name for p in mix}) == len(mix)


def test_one_part_is_the_list_itself_and_bad_parts_are_refused() -> None:
    a = pods("a", 5, 1, 300)
    assert blend([(a, 1.0)], name="x") == a
    with pytest.raises(ValueError):
        blend([(a, 0.0)], name="x")
    with pytest.raises(ValueError):
        blend([], name="x")


def test_families_name_what_a_variant_changes() -> None:
    assert [family(v) for v in ("default", "cpu250", "gpushare40", "multigpu30", "gpuspec05")] == \
        ["default", "cpu", "gpushare", "multigpu", "gpuspec"]
    assert HELD_OUT["mg40"].families == {"multigpu"}
    assert not set(HELD_OUT) & set(VISIBLE_VARIANTS)


@trace
def test_mg40_lies_between_multigpu30_and_multigpu50() -> None:
    """The mix a new user met in issue 9 §9: more multi-GPU demand than multigpu30, less than multigpu50."""
    lo = composition(load_pods(pods_file("multigpu30")))["multigpu_demand_pct"]
    hi = composition(load_pods(pods_file("multigpu50")))["multigpu_demand_pct"]
    mid = composition(load_workload("mg40"))["multigpu_demand_pct"]
    assert lo + 5 < mid < hi - 5
    assert load_workload("mg40") == load_workload("mg40")


@trace
def test_written_mix_reads_back_as_the_same_pods(tmp_path: Path) -> None:
    from xpupool.sim.mixes import write_pod_list

    mix = Mix("spec-blend", (("gpuspec10", 0.5), ("gpuspec33", 0.5))).build()
    write_pod_list(mix, tmp_path / "mix.csv")
    assert load_pods(tmp_path / "mix.csv") == mix
