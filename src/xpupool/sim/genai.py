"""Time mode on the Alibaba GenAI serving trace (cluster-trace-v2026-GenAI): exclusive cards vs shared vXPUs.

The trace gives, per inference pod, its GPU duty cycle (%) and GPU memory used (bytes) about once a
minute (57 s) for ~22.8 h. We load both series onto one time grid, clean them (see
:func:`load_trace`), place the pods on cards in four ways and replay the series on the placements:

* ``exclusive``        one card per pod for the whole trace (today's ``nvidia.com/gpu: 1``).
* ``exclusive-reuse``  one pod per card at a time, but a card freed by a pod that ended can take a
                       pod that starts later (lifetime-aware exclusive, the fair baseline for
                       ``shared-timeaware``).
* ``shared``           one vXPU per pod: memory quota = the pod's peak memory, compute share = a
                       percentile (default p95) of its duty cycle rounded up to 1 % steps, capped at
                       100 %; placed best-fit-decreasing on memory by the core
                       :class:`~xpupool.core.framework.Scheduler` on a :class:`ClusterState` ledger,
                       so neither the memory quotas nor the compute shares of a card may exceed it.
* ``shared-timeaware`` the same pods packed on their *series*: at every sample the co-located memory
                       must fit the card, and the card may be over 100 % duty in at most
                       ``100 - percentile`` % of its busy samples. Clairvoyant (it knows the future
                       series), so it is an upper bound on what an online packer could reach.

Replay metrics per placement (:class:`ReplayResult`): cards, effective utilisation
``mean_t Σ_card min(100, Σ duty) / (100 · cards)``, overload card-minutes (co-located duty > 100 %)
and the memory check: co-located memory above the card at any sample raises ``AssertionError``.

The trace is third-party data: read where it lies (:func:`genai_trace_dir`), never copied.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from xpupool.core.cluster import BoolArray, ClusterState, FloatArray, IntArray
from xpupool.core.framework import FitContext, Profile, Scheduler, ScoreResult
from xpupool.core.model import WHOLE_CARD_MILLI, Device, Node, Request, Vendor

GENAI_TRACE = "alibaba-genai-2026"
DUTY_FILE = "pod_gpu_duty_cycle_anon.csv"
MEMORY_FILE = "pod_gpu_memory_used_bytes_anon.csv"
MIB = 1 << 20
GIB_MIB = 1024

#: card sizes worth comparing: H100 80 GB, H100 NVL / H20 96 GB, H200 141 GB (as GiB of usable memory)
DEFAULT_CARD_GIB: tuple[float, ...] = (80.0, 96.0, 141.0)

Fill = Literal["max", "linear", "zero"]
FILLS: tuple[str, ...] = ("max", "linear", "zero")


# --------------------------------------------------------------------------- locating the trace
def find_trace_dir(name: str, *, start: Path | None = None) -> Path | None:
    """``$XPUPOOL_TRACES/<name>``, else ``shared/traces/<name>`` in the cwd, beside it or above it.

    The same lookup as :func:`xpupool.sim.openb.trace_dir`, for any trace folder; ``None`` when absent.
    """
    root = os.environ.get("XPUPOOL_TRACES")
    if root:
        candidate = Path(root) / name
        return candidate if candidate.is_dir() else None
    here = (start or Path.cwd()).resolve()
    for base in (here, *here.parents):
        for candidate in (base / "shared" / "traces" / name, base.parent / "shared" / "traces" / name):
            if candidate.is_dir():
                return candidate
    return None


def genai_trace_dir(start: Path | None = None) -> Path | None:
    """Where the GenAI trace lives (``None`` when it is not on this machine)."""
    return find_trace_dir(GENAI_TRACE, start=start)


# --------------------------------------------------------------------------- loading
@dataclass(frozen=True, slots=True)
class RawSeries:
    """One metric as read from a CSV: parallel arrays, unparsable values already NaN."""

    timestamp: FloatArray
    value: FloatArray
    pod: npt.NDArray[np.str_]


def _floats(texts: list[str]) -> FloatArray:
    try:
        return np.asarray(texts, dtype=np.float64)
    except ValueError:
        out = np.empty(len(texts), dtype=np.float64)
        for i, text in enumerate(texts):
            try:
                out[i] = float(text)
            except ValueError:
                out[i] = math.nan
        return out


def read_series(path: Path) -> RawSeries:
    """Read ``value``, ``timestamp_anon``, ``container_ip`` columns in whatever order the header says."""
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader)]
        try:
            iv, it, ip = (header.index(c) for c in ("value", "timestamp_anon", "container_ip"))
        except ValueError:
            raise ValueError(f"{path}: expected columns value,timestamp_anon,container_ip, got {header}") from None
        width = max(iv, it, ip) + 1
        # short rows are padded with blanks, so they surface as bad rows (no timestamp) or missing values
        rows = [row if len(row) >= width else row + [""] * (width - len(row)) for row in reader if row]
    values = _floats([r[iv] for r in rows])
    stamps = _floats([r[it] for r in rows])
    pods = np.asarray([r[ip].strip() for r in rows], dtype=np.str_)
    return RawSeries(stamps, values, pods)


@dataclass(frozen=True, slots=True)
class DataQuality:
    """What cleaning did, so a report can say it."""

    rows: dict[str, int]
    #: rows without a usable timestamp or pod id (dropped)
    bad_rows: dict[str, int]
    #: NaN / unparsable / negative values (treated as missing samples)
    missing_values: dict[str, int]
    #: duty values above 100 % (clipped to 100)
    clipped: int
    #: rows for a (pod, sample) already seen (the larger value is kept)
    duplicates: dict[str, int]
    #: pods lacking one metric entirely (dropped): id -> which metric is missing
    dropped_pods: dict[str, str]
    #: alive (pod, sample) cells with no real sample of the metric, filled by the fill rule
    filled: dict[str, int]
    #: gaps of both metrics longer than ``max_gap`` samples inside a pod's span (pod counted absent)
    long_gaps: int
    #: samples where a pod counted absent because of those gaps
    absent_samples: int


@dataclass(frozen=True, slots=True)
class GenaiTrace:
    """Cleaned series on one grid. ``duty`` in % (0..100), ``memory_mib`` in MiB; both 0 where not alive."""

    pods: tuple[str, ...]
    t0: float
    step_s: float
    duty: FloatArray
    memory_mib: FloatArray
    alive: BoolArray
    quality: DataQuality
    fill: str = "max"
    max_gap: int = 20

    @property
    def num_pods(self) -> int:
        return len(self.pods)

    @property
    def num_samples(self) -> int:
        return int(self.duty.shape[1])

    @property
    def hours(self) -> float:
        return self.num_samples * self.step_s / 3600

    def peak_memory_mib(self) -> IntArray:
        peak: IntArray = np.ceil(self.memory_mib.max(axis=1, initial=0.0)).astype(np.int64)
        return peak

    def duty_percentile(self, percentile: float) -> FloatArray:
        """Per-pod duty percentile over the samples where the pod is alive."""
        out = np.zeros(self.num_pods)
        for i in range(self.num_pods):
            values = self.duty[i, self.alive[i]]
            if values.size:
                out[i] = float(np.percentile(values, percentile))
        return out


def _grid_step(stamps: FloatArray) -> float:
    distinct = np.unique(stamps)
    diffs = np.diff(distinct)
    diffs = diffs[diffs > 1e-6]
    if diffs.size == 0:
        return 60.0
    return float(np.median(diffs))


def _prev_index(valid: BoolArray) -> IntArray:
    """Per cell, the column of the last valid cell at or before it (-1 when none)."""
    cols = np.arange(valid.shape[1], dtype=np.int64)
    out: IntArray = np.maximum.accumulate(np.where(valid, cols, -1), axis=1)
    return out


def _next_index(valid: BoolArray) -> IntArray:
    """Per cell, the column of the first valid cell at or after it (``T`` when none)."""
    width = valid.shape[1]
    cols = np.arange(width, dtype=np.int64)
    rev: IntArray = np.where(valid, cols, width)[:, ::-1]
    out: IntArray = np.minimum.accumulate(rev, axis=1)[:, ::-1]
    return out


def _fill(values: FloatArray, valid: BoolArray, alive: BoolArray, fill: str) -> tuple[FloatArray, int]:
    """Fill alive cells without a sample from the metric's neighbouring samples; zero elsewhere."""
    width = values.shape[1]
    rows = np.arange(values.shape[0])[:, None]
    prev = _prev_index(valid)
    nxt = _next_index(valid)
    safe = np.where(valid, values, 0.0)
    prev_v = np.where(prev >= 0, safe[rows, np.clip(prev, 0, width - 1)], np.nan)
    next_v = np.where(nxt < width, safe[rows, np.clip(nxt, 0, width - 1)], np.nan)
    if fill == "max":
        guess = np.fmax(prev_v, next_v)
    elif fill == "linear":
        cols = np.arange(width, dtype=np.float64)[None, :]
        span = (nxt - prev).astype(np.float64)
        frac = np.divide(cols - prev, span, out=np.zeros_like(span), where=span > 0)
        both = np.isfinite(prev_v) & np.isfinite(next_v)
        guess = np.where(both, prev_v + frac * (np.nan_to_num(next_v) - np.nan_to_num(prev_v)),
                         np.fmax(prev_v, next_v))
    elif fill == "zero":
        guess = np.zeros_like(values)
    else:
        raise ValueError(f"unknown fill {fill!r}; known: {', '.join(FILLS)}")
    need = alive & ~valid
    out = np.where(valid & alive, safe, 0.0)
    out = np.where(need, np.nan_to_num(guess), out)
    return out, int(need.sum())


def build_trace(duty: RawSeries, memory: RawSeries, *, max_gap: int = 20, fill: str = "max",
                step_s: float | None = None) -> GenaiTrace:
    """Put both metrics on one grid and clean them.

    * Grid: step = median spacing of the distinct timestamps (57 s here) unless given; every row is
      snapped to the nearest step from the first timestamp.
    * Rows without a finite timestamp or a pod id are dropped. NaN, unparsable or negative values
      are missing samples; duty above 100 % is clipped to 100. Repeated (pod, sample) rows keep
      the larger value (conservative for both overload and memory).
    * Pods lacking one of the two metrics entirely are dropped (the trace has one: a single 0-byte
      memory row and no duty).
    * A pod is *alive* from its first to its last sample of either metric, except inside gaps where
      both metrics are missing for more than ``max_gap`` consecutive samples (the pod is then taken
      as not running: duty 0, memory 0, but it keeps its card).
    * Alive samples missing one metric are filled from that metric's neighbouring samples:
      ``max`` (default) = the larger neighbour, which never understates overload or memory;
      ``linear`` = interpolation; ``zero`` = 0 (optimistic for duty, kept for sensitivity runs).
    """
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; known: {', '.join(FILLS)}")
    series = {"duty": duty, "memory": memory}
    keep: dict[str, BoolArray] = {}
    bad_rows: dict[str, int] = {}
    for key, s in series.items():
        ok = np.isfinite(s.timestamp) & (s.pod != "")
        keep[key] = ok
        bad_rows[key] = int((~ok).sum())
    all_stamps = np.concatenate([s.timestamp[keep[k]] for k, s in series.items()])
    if all_stamps.size == 0:
        raise ValueError("the trace has no usable rows")
    step = step_s or _grid_step(all_stamps)
    t0 = float(all_stamps.min())
    width = int(np.rint((all_stamps.max() - t0) / step)) + 1
    pod_ids = np.unique(np.concatenate([s.pod[keep[k]] for k, s in series.items()]))
    grids: dict[str, FloatArray] = {}
    missing_values: dict[str, int] = {}
    duplicates: dict[str, int] = {}
    clipped = 0
    for key, s in series.items():
        ok = keep[key]
        col = np.rint((s.timestamp[ok] - t0) / step).astype(np.int64)
        row = np.searchsorted(pod_ids, s.pod[ok])
        value = s.value[ok].copy()
        bad = ~np.isfinite(value) | (value < 0)
        missing_values[key] = int(bad.sum())
        value[bad] = np.nan
        if key == "duty":
            over = value > 100
            clipped = int(over.sum())
            value[over] = 100.0
        else:
            value = value / MIB
        flat = row * width + col
        duplicates[key] = int(flat.size - np.unique(flat).size)
        grid = np.full(len(pod_ids) * width, np.nan)
        np.fmax.at(grid, flat, value)
        grids[key] = grid.reshape(len(pod_ids), width)
    valid = {k: np.isfinite(g) for k, g in grids.items()}
    has: dict[str, BoolArray] = {k: np.asarray(v.any(axis=1), dtype=bool) for k, v in valid.items()}
    dropped: dict[str, str] = {}
    for i, pod in enumerate(pod_ids):
        lacking = [k for k in ("duty", "memory") if not bool(has[k][i])]
        if lacking:
            dropped[str(pod)] = "+".join(lacking)
    kept = has["duty"] & has["memory"]
    grids = {k: g[kept] for k, g in grids.items()}
    valid = {k: v[kept] for k, v in valid.items()}
    pods = tuple(str(p) for p in pod_ids[kept])
    seen = valid["duty"] | valid["memory"]
    prev = _prev_index(seen)
    nxt = _next_index(seen)
    inside = (prev >= 0) & (nxt < width)
    gap = nxt - prev - 1
    alive = seen | (inside & (gap <= max_gap))
    long_gap = inside & ~seen & (gap > max_gap)
    gap_starts = long_gap & ~np.concatenate([np.zeros((len(pods), 1), dtype=bool), long_gap[:, :-1]], axis=1)
    duty_grid, filled_duty = _fill(grids["duty"], valid["duty"], alive, fill)
    mem_grid, filled_mem = _fill(grids["memory"], valid["memory"], alive, fill)
    quality = DataQuality(
        rows={k: int(s.value.size) for k, s in series.items()},
        bad_rows=bad_rows,
        missing_values=missing_values,
        clipped=clipped,
        duplicates=duplicates,
        dropped_pods=dropped,
        filled={"duty": filled_duty, "memory": filled_mem},
        long_gaps=int(gap_starts.sum()),
        absent_samples=int(long_gap.sum()),
    )
    return GenaiTrace(pods=pods, t0=t0, step_s=step, duty=duty_grid, memory_mib=mem_grid, alive=alive,
                      quality=quality, fill=fill, max_gap=max_gap)


def load_trace(directory: Path, *, max_gap: int = 20, fill: str = "max") -> GenaiTrace:
    """Read both CSVs of ``directory`` (see :func:`build_trace` for the cleaning rules)."""
    return build_trace(read_series(directory / DUTY_FILE), read_series(directory / MEMORY_FILE),
                       max_gap=max_gap, fill=fill)


# --------------------------------------------------------------------------- packing
@dataclass(frozen=True, slots=True)
class Placement:
    """``card[i]`` is the card of pod ``i``; cards are numbered 0..cards-1."""

    scenario: str
    card: IntArray
    card_memory_mib: int
    #: per-pod requests used by the packer (compute share in milli, memory quota in MiB)
    share_milli: IntArray
    quota_mib: IntArray

    @property
    def cards(self) -> int:
        return int(self.card.max()) + 1 if self.card.size else 0


def share_milli_for(trace: GenaiTrace, percentile: float) -> IntArray:
    """Compute share per pod: the duty percentile rounded up to 1 % (10 milli), at least 1 %, at most 100 %."""
    pct = np.ceil(trace.duty_percentile(percentile) - 1e-9)
    return (np.clip(pct, 1, 100) * 10).astype(np.int64)


def card_memory_mib(card_gib: float) -> int:
    return round(card_gib * GIB_MIB)


def _check_fits(trace: GenaiTrace, card_mib: int) -> None:
    peak = trace.peak_memory_mib()
    too_big = np.nonzero(peak > card_mib)[0]
    if too_big.size:
        names = ", ".join(trace.pods[i][:8] for i in too_big[:5])
        raise ValueError(f"{too_big.size} pod(s) peak above a {card_mib} MiB card even alone: {names}")


def pack_exclusive(trace: GenaiTrace, card_gib: float) -> Placement:
    """One card per pod."""
    mib = card_memory_mib(card_gib)
    _check_fits(trace, mib)
    n = trace.num_pods
    return Placement("exclusive", np.arange(n, dtype=np.int64), mib,
                     np.full(n, WHOLE_CARD_MILLI, dtype=np.int64), np.full(n, mib, dtype=np.int64))


class MemoryBestFit:
    """Score plugin: the card whose memory is left tightest after placing wins (best fit on memory).

    Written for one-card requests; ties go to the lower node (``first_on_tie``), so on a pool of
    one-card nodes in pod order sorted by memory this is best-fit-decreasing.
    """

    name = "genai-memory-bestfit"

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        cap = np.maximum(state.card_memory_capacity, 1)
        left = (state.card_memory_free - ctx.device_memory) / cap
        tight = np.where(ctx.card_fit, 1.0 - left, -1.0)
        hint = np.argmax(tight, axis=1).astype(np.int64)
        best = tight[np.arange(state.num_nodes), hint]
        return ScoreResult(np.clip(best, 0.0, 1.0) * 100.0, hint)


def _decreasing_order(quota: IntArray, share: IntArray) -> IntArray:
    return np.lexsort((np.arange(quota.size), -share, -quota)).astype(np.int64)


def pack_shared(trace: GenaiTrace, card_gib: float, percentile: float) -> Placement:
    """Best-fit-decreasing on peak memory through the core Scheduler and ClusterState ledger.

    The pool has one single-card node per pod (enough for the exclusive case); each pod asks one
    vXPU with ``share_milli`` = duty percentile and ``device_memory_mib`` = peak memory, so the
    ledger refuses any card whose quotas or shares would exceed it.
    """
    mib = card_memory_mib(card_gib)
    _check_fits(trace, mib)
    share = share_milli_for(trace, percentile)
    quota = np.maximum(trace.peak_memory_mib(), 1)
    nodes = [Node(name=f"card-{i:04d}", cpu_milli=1, memory_mib=1,
                  devices=(Device(index=0, vendor=Vendor.NVIDIA, model=f"{card_gib:g}GiB", memory_mib=mib),))
             for i in range(trace.num_pods)]
    state = ClusterState(nodes)
    profile = Profile("genai-shared", scores=[(MemoryBestFit(), 1.0)], first_on_tie=True)
    scheduler = Scheduler(profile, rng=np.random.default_rng(0))
    node_of = np.full(trace.num_pods, -1, dtype=np.int64)
    for i in _decreasing_order(quota, share):
        request = Request(name=f"pod-{i}", count=1, share_milli=int(share[i]), device_memory_mib=int(quota[i]))
        result = scheduler.schedule(state, request)
        if not result.status.ok or result.allocation is None:
            raise RuntimeError(f"pod {trace.pods[i]} found no card: {result.status.message()}")
        node_of[i] = state.node_index[result.allocation.device_node]
    used = np.unique(node_of)
    card = np.searchsorted(used, node_of).astype(np.int64)
    return Placement("shared", card, mib, share, quota)


def pack_timeaware(trace: GenaiTrace, card_gib: float, percentile: float, *, exclusive: bool = False) -> Placement:
    """Clairvoyant best-fit-decreasing on the series themselves.

    A pod may join a card when, at every sample, the co-located memory fits the card and (shared)
    the card stays over 100 % duty in at most ``100 - percentile`` % of its busy samples, or
    (``exclusive``) no other pod on the card is alive at the same time. Among the cards that accept
    it, the one with the least memory left at its tightest sample wins; otherwise a new card opens.
    """
    mib = card_memory_mib(card_gib)
    _check_fits(trace, mib)
    share = share_milli_for(trace, percentile)
    quota = np.maximum(trace.peak_memory_mib(), 1)
    width = trace.num_samples
    budget = max(0.0, 100.0 - percentile) / 100.0
    mem = np.zeros((0, width))
    duty = np.zeros((0, width))
    busy = np.zeros((0, width), dtype=np.int64)
    card = np.full(trace.num_pods, -1, dtype=np.int64)
    for i in _decreasing_order(quota, share):
        alive_i = trace.alive[i]
        chosen = -1
        if mem.shape[0]:
            new_mem = mem + trace.memory_mib[i]
            ok = (new_mem <= mib).all(axis=1)
            if exclusive:
                ok &= ~((busy > 0) & alive_i).any(axis=1)
            else:
                new_busy = (busy > 0) | alive_i
                over = ((duty + trace.duty[i]) > 100.0) & new_busy
                ok &= over.sum(axis=1) <= np.floor(budget * new_busy.sum(axis=1) + 1e-9)
            if ok.any():
                tight = np.where(ok, new_mem.max(axis=1), -1.0)
                chosen = int(np.argmax(tight))
        if chosen < 0:
            chosen = mem.shape[0]
            mem = np.vstack([mem, np.zeros((1, width))])
            duty = np.vstack([duty, np.zeros((1, width))])
            busy = np.vstack([busy, np.zeros((1, width), dtype=np.int64)])
        mem[chosen] += trace.memory_mib[i]
        duty[chosen] += trace.duty[i]
        busy[chosen] += alive_i
        card[i] = chosen
    scenario = "exclusive-reuse" if exclusive else "shared-timeaware"
    if exclusive:
        share = np.full(trace.num_pods, WHOLE_CARD_MILLI, dtype=np.int64)
    return Placement(scenario, card, mib, share, quota)


# --------------------------------------------------------------------------- replay
@dataclass(frozen=True, slots=True)
class ReplayResult:
    scenario: str
    card_gib: float
    cards: int
    pods: int
    #: mean_t Σ_card min(100, Σ duty) / (100 · cards), in %
    utilization_pct: float
    #: the same over the cards with at least one alive pod at each sample, in %
    utilization_busy_pct: float
    #: card-samples with co-located duty > 100 %, and their share of the busy card-samples
    overload_card_samples: int
    overload_pct: float
    overload_card_minutes: float
    #: the worst single card's overloaded share of its busy samples, in %
    worst_card_overload_pct: float
    #: cards that are ever over 100 %
    cards_ever_overloaded: int
    #: peak co-located memory over all cards and samples, as % of the card
    peak_memory_pct: float
    #: duty demand above 100 % that could not be served, as % of all duty demand
    unserved_duty_pct: float
    pods_per_card: float
    gain: float = 1.0
    extra: dict[str, float] = field(default_factory=dict)


def card_series(trace: GenaiTrace, placement: Placement) -> tuple[FloatArray, FloatArray, IntArray]:
    """Per card and sample: summed duty %, summed memory MiB, alive pods."""
    cards = placement.cards
    duty = np.zeros((cards, trace.num_samples))
    mem = np.zeros((cards, trace.num_samples))
    busy = np.zeros((cards, trace.num_samples), dtype=np.int64)
    np.add.at(duty, placement.card, trace.duty)
    np.add.at(mem, placement.card, trace.memory_mib)
    np.add.at(busy, placement.card, trace.alive.astype(np.int64))
    return duty, mem, busy


def replay(trace: GenaiTrace, placement: Placement, *, card_gib: float | None = None) -> ReplayResult:
    """Replay the series on ``placement``. Raises ``AssertionError`` if memory ever exceeds a card."""
    duty, mem, busy = card_series(trace, placement)
    cap = placement.card_memory_mib
    if mem.size and float(mem.max()) > cap + 1e-6:
        card, sample = np.unravel_index(int(np.argmax(mem)), mem.shape)
        raise AssertionError(f"{placement.scenario}: card {card} holds {mem.max():.0f} MiB > {cap} MiB "
                             f"at sample {sample}")
    cards = placement.cards
    width = trace.num_samples
    served = np.minimum(duty, 100.0)
    is_busy = busy > 0
    over = (duty > 100.0) & is_busy
    busy_count = is_busy.sum(axis=0)
    per_t_busy = np.divide(served.sum(axis=0), 100.0 * busy_count, out=np.zeros(width), where=busy_count > 0)
    busy_any = busy_count > 0
    card_busy = is_busy.sum(axis=1)
    card_over = np.divide(over.sum(axis=1), card_busy, out=np.zeros(cards), where=card_busy > 0)
    total_demand = float(duty.sum())
    return ReplayResult(
        scenario=placement.scenario,
        card_gib=card_gib if card_gib is not None else cap / GIB_MIB,
        cards=cards,
        pods=trace.num_pods,
        utilization_pct=float(served.sum() / (cards * width)) if cards and width else 0.0,
        utilization_busy_pct=100.0 * float(per_t_busy[busy_any].mean()) if busy_any.any() else 0.0,
        overload_card_samples=int(over.sum()),
        overload_pct=100.0 * float(over.sum()) / max(int(is_busy.sum()), 1),
        overload_card_minutes=float(over.sum()) * trace.step_s / 60.0,
        worst_card_overload_pct=100.0 * float(card_over.max(initial=0.0)),
        cards_ever_overloaded=int(over.any(axis=1).sum()),
        peak_memory_pct=100.0 * float(mem.max(initial=0.0)) / cap,
        unserved_duty_pct=100.0 * float((duty - served).sum()) / total_demand if total_demand > 0 else 0.0,
        pods_per_card=trace.num_pods / cards if cards else 0.0,
    )


SCENARIOS: tuple[str, ...] = ("exclusive", "exclusive-reuse", "shared", "shared-timeaware")
#: which exclusive baseline each shared scenario is compared with
BASELINE = {"exclusive": "exclusive", "exclusive-reuse": "exclusive-reuse",
            "shared": "exclusive", "shared-timeaware": "exclusive-reuse"}


def place(trace: GenaiTrace, scenario: str, card_gib: float, percentile: float) -> Placement:
    if scenario == "exclusive":
        return pack_exclusive(trace, card_gib)
    if scenario == "exclusive-reuse":
        return pack_timeaware(trace, card_gib, percentile, exclusive=True)
    if scenario == "shared":
        return pack_shared(trace, card_gib, percentile)
    if scenario == "shared-timeaware":
        return pack_timeaware(trace, card_gib, percentile)
    raise KeyError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")


def evaluate(trace: GenaiTrace, card_gibs: Sequence[float] = DEFAULT_CARD_GIB, percentile: float = 95.0,
             scenarios: Sequence[str] = SCENARIOS) -> list[ReplayResult]:
    """Every scenario on every card size; ``gain`` = baseline cards / cards (see :data:`BASELINE`)."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError("percentile must be in (0, 100]")
    results: list[ReplayResult] = []
    for gib in card_gibs:
        by_name: dict[str, ReplayResult] = {}
        for scenario in scenarios:
            by_name[scenario] = replay(trace, place(trace, scenario, gib, percentile), card_gib=gib)
        for scenario in scenarios:
            result = by_name[scenario]
            base = by_name.get(BASELINE[scenario])
            if base is not None and result.cards:
                result = _with_gain(result, base.cards / result.cards)
            results.append(result)
    return results


def _with_gain(result: ReplayResult, gain: float) -> ReplayResult:
    return replace(result, gain=gain)


def trace_summary(trace: GenaiTrace) -> dict[str, object]:
    """Facts about the cleaned trace for reports (JSON-friendly)."""
    alive_per_t = trace.alive.sum(axis=0)
    q = trace.quality
    peak_gib = trace.peak_memory_mib() / GIB_MIB
    return {
        "pods": trace.num_pods,
        "samples": trace.num_samples,
        "step_s": trace.step_s,
        "hours": round(trace.hours, 2),
        "alive_pods_mean": round(float(alive_per_t.mean()), 1),
        "alive_pods_max": int(alive_per_t.max(initial=0)),
        "duty_mean_pct": round(float(trace.duty[trace.alive].mean()), 2) if trace.alive.any() else 0.0,
        "peak_memory_gib_median": round(float(np.median(peak_gib)), 1) if peak_gib.size else 0.0,
        "peak_memory_gib_max": round(float(peak_gib.max(initial=0.0)), 1),
        "fill": trace.fill,
        "max_gap_samples": trace.max_gap,
        "quality": {
            "rows": q.rows, "bad_rows": q.bad_rows, "missing_values": q.missing_values, "clipped_duty": q.clipped,
            "duplicates": q.duplicates, "dropped_pods": q.dropped_pods, "filled_samples": q.filled,
            "long_gaps": q.long_gaps, "absent_samples": q.absent_samples,
        },
    }
