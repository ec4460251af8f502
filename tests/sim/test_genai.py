"""Time mode on the GenAI serving trace: loader cleaning, packing, replay metrics.

Synthetic series are built in the tests; one test replays the real trace when it is on the machine
(it is in CI: there a missing trace fails instead of skipping).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xpupool.sim.genai import (
    DUTY_FILE,
    MEMORY_FILE,
    MIB,
    GenaiTrace,
    Placement,
    RawSeries,
    build_trace,
    card_memory_mib,
    card_series,
    evaluate,
    find_trace_dir,
    genai_trace_dir,
    load_trace,
    pack_exclusive,
    pack_shared,
    pack_timeaware,
    replay,
    share_milli_for,
)

GIB = 1 << 30
STEP = 60.0
T0 = 1_000_000.0


def raw(rows: list[tuple[str, int, float]]) -> RawSeries:
    """``(pod, sample index, value)`` -> a RawSeries on a 60 s grid."""
    return RawSeries(
        timestamp=np.array([T0 + i * STEP for _, i, _ in rows], dtype=np.float64),
        value=np.array([v for _, _, v in rows], dtype=np.float64),
        pod=np.array([p for p, _, _ in rows], dtype=np.str_),
    )


def synthetic(duty: dict[str, list[float]], mem_gib: dict[str, list[float]], *, fill: str = "max",
              max_gap: int = 20) -> GenaiTrace:
    """Full series per pod; NaN entries become missing rows."""
    duty_rows = [(p, i, v) for p, vs in duty.items() for i, v in enumerate(vs) if not math.isnan(v)]
    mem_rows = [(p, i, v * GIB) for p, vs in mem_gib.items() for i, v in enumerate(vs) if not math.isnan(v)]
    return build_trace(raw(duty_rows), raw(mem_rows), step_s=STEP, fill=fill, max_gap=max_gap)


def random_trace(seed: int, pods: int = 40, samples: int = 120) -> GenaiTrace:
    rng = np.random.default_rng(seed)
    duty: dict[str, list[float]] = {}
    mem: dict[str, list[float]] = {}
    for p in range(pods):
        start = int(rng.integers(0, samples // 2))
        end = int(rng.integers(start + 1, samples + 1))
        base = float(rng.uniform(5, 45))
        d = [math.nan] * samples
        m = [math.nan] * samples
        for i in range(start, end):
            d[i] = float(np.clip(rng.exponential(rng.uniform(2, 30)), 0, 100))
            m[i] = base + float(rng.uniform(0, 3))
        for i in rng.choice(np.arange(start, end), size=(end - start) // 10, replace=False):
            d[int(i)] = math.nan  # scattered missing duty samples
        duty[f"pod{p:03d}"] = d
        mem[f"pod{p:03d}"] = m
    return synthetic(duty, mem)


# --------------------------------------------------------------------------- loader
def write_csvs(directory: Path) -> None:
    """Both files, column orders as upstream, with NaN, garbage, a short row, a duplicate and gaps."""
    duty = ["value,timestamp_anon,container_ip"]
    mem = ["timestamp_anon,value,container_ip"]
    for i in range(12):
        ts = T0 + i * 57 + (3 if i % 2 else 0)  # jitter around the 57 s grid
        if i not in (3, 4):  # a: two missing duty samples, memory present
            duty.append(f"{9.0 * i if i != 6 else float('nan')},{ts},a")
        mem.append(f"{ts},{(20 + i) * GIB},a")
        if i < 2 or i > 9:  # b: both metrics missing for 8 samples -> not running in between
            duty.append(f"50,{ts},b")
            mem.append(f"{ts},{30 * GIB},b")
    duty.append(f"250,{T0 + 57},b")  # duplicate (pod b, sample 1), above 100 -> clipped, larger kept
    duty.append(f"oops,{T0 + 2 * 57},a")  # unparsable value: missing, the real row stays
    duty.append("7")  # short row: no timestamp, no pod -> dropped
    mem.append(f"{T0},{5 * GIB},c")  # c has memory only -> dropped
    (directory / DUTY_FILE).write_text("\n".join(duty) + "\n")
    (directory / MEMORY_FILE).write_text("\n".join(mem) + "\n")


def test_loader_handles_missing_samples_nan_and_partial_series(tmp_path: Path) -> None:
    write_csvs(tmp_path)
    trace = load_trace(tmp_path, max_gap=5, fill="max")
    q = trace.quality
    assert trace.pods == ("a", "b")
    assert q.dropped_pods == {"c": "duty"}
    assert trace.step_s == pytest.approx(57.0, abs=3)
    assert trace.num_samples == 12
    a, b = 0, 1
    # a: alive throughout; duty 3,4 missing -> max of neighbours (18 and 45); NaN at 6 -> max(45, 63)
    assert trace.alive[a].all()
    assert trace.duty[a, 3] == pytest.approx(45.0) and trace.duty[a, 4] == pytest.approx(45.0)
    assert trace.duty[a, 6] == pytest.approx(63.0)
    assert trace.duty[a, 2] == pytest.approx(18.0)  # the garbage duplicate did not erase the real value
    assert trace.memory_mib[a, 11] == pytest.approx(31 * GIB / MIB)
    # b: present 0,1 and 10,11; the 8-sample gap is longer than max_gap -> not running, zeros
    assert trace.alive[b].tolist() == [True, True] + [False] * 8 + [True, True]
    assert (trace.duty[b, 2:10] == 0).all() and (trace.memory_mib[b, 2:10] == 0).all()
    assert trace.duty[b, 1] == 100.0  # 250 clipped, the larger duplicate kept
    assert q.clipped == 1 and q.duplicates["duty"] == 2 and q.missing_values["duty"] == 2
    assert q.bad_rows["duty"] == 1
    assert q.long_gaps == 1 and q.absent_samples == 8
    assert q.filled == {"duty": 3, "memory": 0}
    # a longer max_gap keeps b alive through the gap, filled from its neighbours
    wide = load_trace(tmp_path, max_gap=8)
    assert wide.alive[b].all() and wide.duty[b, 5] == 100.0 and wide.memory_mib[b, 5] == pytest.approx(30 * 1024)


def test_fill_modes() -> None:
    duty = {"p": [10.0, math.nan, math.nan, 40.0]}
    mem = {"p": [1.0, 1.0, 1.0, 1.0]}
    assert synthetic(duty, mem, fill="max").duty[0].tolist() == [10, 40, 40, 40]
    assert synthetic(duty, mem, fill="linear").duty[0].tolist() == pytest.approx([10, 20, 30, 40])
    assert synthetic(duty, mem, fill="zero").duty[0].tolist() == [10, 0, 0, 40]
    with pytest.raises(ValueError, match="unknown fill"):
        synthetic(duty, mem, fill="mean")


def test_pod_absent_before_start_and_after_end() -> None:
    trace = synthetic({"p": [math.nan, 5.0, 5.0, math.nan], "q": [1.0] * 4},
                      {"p": [math.nan, 2.0, 2.0, math.nan], "q": [1.0] * 4})
    assert trace.alive[0].tolist() == [False, True, True, False]
    assert trace.memory_mib[0, 0] == 0 and trace.memory_mib[0, 3] == 0 and trace.duty[0, 3] == 0


def test_find_trace_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "shared" / "traces" / "x-trace"
    target.mkdir(parents=True)
    work = tmp_path / "repo" / "sub"
    work.mkdir(parents=True)
    monkeypatch.delenv("XPUPOOL_TRACES", raising=False)
    assert find_trace_dir("x-trace", start=work) == target.resolve()  # beside an ancestor
    assert find_trace_dir("x-trace", start=tmp_path) == target.resolve()  # below the cwd
    assert find_trace_dir("absent", start=work) is None
    monkeypatch.setenv("XPUPOOL_TRACES", str(tmp_path / "shared" / "traces"))
    assert find_trace_dir("x-trace") == tmp_path / "shared" / "traces" / "x-trace"
    assert find_trace_dir("absent") is None


# --------------------------------------------------------------------------- packing
def test_share_rounds_up_to_one_percent_with_cap() -> None:
    trace = synthetic({"idle": [0.0] * 4, "p": [10.2] * 4, "busy": [100.0] * 4},
                      {"idle": [1.0] * 4, "p": [1.0] * 4, "busy": [1.0] * 4})
    shares = dict(zip(trace.pods, share_milli_for(trace, 95.0).tolist(), strict=True))
    assert shares == {"idle": 10, "p": 110, "busy": 1000}


def test_exclusive_baseline_is_one_card_per_pod() -> None:
    trace = random_trace(1)
    placement = pack_exclusive(trace, 80)
    assert placement.cards == trace.num_pods
    result = replay(trace, placement)
    assert result.cards == trace.num_pods and result.overload_card_samples == 0 and result.pods_per_card == 1


def test_shared_packs_by_memory_hand_computed() -> None:
    # six idle pods of 30 GiB: 2 per 80 GiB card (3 cards), 3 per 96 GiB card (2), 4 per 141 GiB card (2)
    duty = {f"p{i}": [5.0] * 3 for i in range(6)}
    mem = {f"p{i}": [30.0] * 3 for i in range(6)}
    trace = synthetic(duty, mem)
    assert pack_shared(trace, 80, 95).cards == 3
    assert pack_shared(trace, 96, 95).cards == 2
    assert pack_shared(trace, 141, 95).cards == 2
    assert pack_timeaware(trace, 141, 95).cards == 2


def test_shared_respects_compute_shares() -> None:
    # tiny memory, p95 duty 40 %: at most two pods per card (80 % of 100 %) -> 3 cards for 5 pods
    trace = synthetic({f"p{i}": [40.0] * 5 for i in range(5)}, {f"p{i}": [1.0] * 5 for i in range(5)})
    placement = pack_shared(trace, 80, 95)
    assert placement.cards == 3
    per_card = np.bincount(placement.card, weights=placement.share_milli)
    assert (per_card <= 1000).all()


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("card_gib", [48.0, 80.0, 141.0])
def test_packing_never_exceeds_memory(seed: int, card_gib: float) -> None:
    trace = random_trace(seed)
    cap = card_memory_mib(card_gib)
    for placement in (pack_shared(trace, card_gib, 95), pack_timeaware(trace, card_gib, 95),
                      pack_timeaware(trace, card_gib, 90, exclusive=True)):
        _, mem, _ = card_series(trace, placement)
        assert mem.max() <= cap
        if placement.scenario == "shared":  # quotas too, not only the observed series
            assert np.bincount(placement.card, weights=placement.quota_mib).max() <= cap
        result = replay(trace, placement)  # asserts memory at every sample itself
        assert result.peak_memory_pct <= 100.0


def test_replay_asserts_when_memory_exceeds_card() -> None:
    trace = synthetic({"a": [1.0, 1.0], "b": [1.0, 1.0]}, {"a": [50.0, 50.0], "b": [10.0, 50.0]})
    both = Placement("bad", np.array([0, 0]), card_memory_mib(80), np.array([10, 10]), np.array([1, 1]))
    with pytest.raises(AssertionError, match="card 0 holds"):
        replay(trace, both)


def test_card_too_small_for_a_pod_is_refused() -> None:
    trace = synthetic({"a": [1.0]}, {"a": [90.0]})
    with pytest.raises(ValueError, match="even alone"):
        pack_shared(trace, 80, 95)


def test_overload_and_utilization_hand_computed() -> None:
    # one card, two pods: Σ duty = 110, 90, 105, 0 (both alive at t3 with duty 0)
    trace = synthetic({"a": [60.0, 60.0, 10.0, 0.0], "b": [50.0, 30.0, 95.0, 0.0]},
                      {"a": [10.0] * 4, "b": [10.0] * 4})
    placement = Placement("shared", np.array([0, 0]), card_memory_mib(80), np.array([600, 400]),
                          np.array([10240, 10240]))
    r = replay(trace, placement)
    assert r.cards == 1
    assert r.overload_card_samples == 2
    assert r.overload_pct == pytest.approx(50.0)  # 2 of 4 busy samples
    assert r.overload_card_minutes == pytest.approx(2.0)  # 60 s samples
    assert r.worst_card_overload_pct == pytest.approx(50.0) and r.cards_ever_overloaded == 1
    assert r.utilization_pct == pytest.approx((100 + 90 + 100 + 0) / 4)
    assert r.unserved_duty_pct == pytest.approx(100 * 15 / 305)
    assert r.peak_memory_pct == pytest.approx(25.0)
    # on two exclusive cards nothing is overloaded and each card is half as busy
    excl = replay(trace, pack_exclusive(trace, 80))
    assert excl.overload_card_samples == 0
    assert excl.utilization_pct == pytest.approx(305 / (2 * 4))


def test_timeaware_reuses_cards_after_pods_end() -> None:
    nan = math.nan
    first = [20.0] * 4 + [nan] * 4
    later = [nan] * 4 + [20.0] * 4
    trace = synthetic({"a": first, "b": later}, {"a": [60.0] * 4 + [nan] * 4, "b": [nan] * 4 + [60.0] * 4})
    assert pack_exclusive(trace, 80).cards == 2
    assert pack_shared(trace, 80, 95).cards == 2  # peak quotas 60 + 60 > 80
    assert pack_timeaware(trace, 80, 95, exclusive=True).cards == 1
    assert pack_timeaware(trace, 80, 95).cards == 1


def test_timeaware_overload_stays_within_budget() -> None:
    trace = random_trace(7, pods=60)
    for percentile in (90.0, 95.0, 100.0):
        r = replay(trace, pack_timeaware(trace, 141, percentile))
        assert r.worst_card_overload_pct <= 100 - percentile + 1e-9


def test_evaluate_gains() -> None:
    trace = random_trace(4)
    results = {(r.card_gib, r.scenario): r for r in evaluate(trace, (80.0, 141.0), 95.0)}
    for gib in (80.0, 141.0):
        assert results[gib, "exclusive"].gain == 1.0
        shared = results[gib, "shared"]
        assert shared.gain == pytest.approx(results[gib, "exclusive"].cards / shared.cards)
        timeaware = results[gib, "shared-timeaware"]
        assert timeaware.gain == pytest.approx(results[gib, "exclusive-reuse"].cards / timeaware.cards)
        assert shared.cards <= trace.num_pods
    with pytest.raises(ValueError):
        evaluate(trace, (80.0,), 0.0)


# --------------------------------------------------------------------------- the real trace
def real_trace_dir() -> Path:
    directory = genai_trace_dir()
    if directory is None or not (directory / DUTY_FILE).is_file():
        if os.environ.get("CI"):
            pytest.fail("the GenAI trace is missing in CI (set XPUPOOL_TRACES)")
        pytest.skip("GenAI trace not on this machine (set XPUPOOL_TRACES)")
    return directory


def test_real_trace_invariants(tmp_path: Path) -> None:
    directory = real_trace_dir()
    started = time.perf_counter()
    trace = load_trace(directory)
    assert time.perf_counter() - started < 15.0  # a few seconds on one core
    assert 100 <= trace.num_pods <= 200
    assert trace.num_samples > 1000 and 50.0 <= trace.step_s <= 70.0
    assert np.isfinite(trace.duty).all() and np.isfinite(trace.memory_mib).all()
    assert ((trace.duty >= 0) & (trace.duty <= 100)).all()
    assert (trace.duty[~trace.alive] == 0).all() and (trace.memory_mib[~trace.alive] == 0).all()
    results = evaluate(trace, (80.0, 141.0), 95.0)
    by = {(r.card_gib, r.scenario): r for r in results}
    alive_max = int(trace.alive.sum(axis=0).max())
    for gib in (80.0, 141.0):
        cap = card_memory_mib(gib)
        excl, reuse = by[gib, "exclusive"], by[gib, "exclusive-reuse"]
        shared, timeaware = by[gib, "shared"], by[gib, "shared-timeaware"]
        assert excl.cards == trace.num_pods and excl.overload_card_samples == 0
        assert reuse.cards >= alive_max  # never below the peak number of live pods
        lower = math.ceil(trace.peak_memory_mib().sum() / cap)
        assert lower <= shared.cards < excl.cards
        assert math.ceil(trace.memory_mib.sum(axis=0).max() / cap) <= timeaware.cards <= reuse.cards
        for r in results:
            assert 0.0 <= r.utilization_pct <= r.utilization_busy_pct + 1e-9 <= 100.0 + 1e-9
            assert r.peak_memory_pct <= 100.0 + 1e-9
            assert r.gain >= 1.0
        assert timeaware.worst_card_overload_pct <= 5.0 + 1e-9
        assert shared.utilization_pct > excl.utilization_pct
    # the CLI end to end, with JSON output
    import typer

    from xpupool.cli.timeshare import timeshare

    app = typer.Typer()
    app.command("timeshare")(timeshare)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    out = tmp_path / "ts.json"
    res = CliRunner().invoke(app, ["timeshare", "--card-gib", "80", "--trace-dir", str(directory),
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    payload = json.loads(out.read_text())
    assert payload["card_gib"] == [80.0]
    assert {r["scenario"] for r in payload["results"]} == {"exclusive", "exclusive-reuse", "shared",
                                                           "shared-timeaware"}
