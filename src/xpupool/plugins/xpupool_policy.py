"""xpupool's placement policy: host-aware fragmentation gradient (score plugin ``xpupool-host``).

FGD (Weng et al., ATC'23) counts a card as usable by a typical pod m when one copy of m fits the
node's free CPU, and ignores memory. On the openb cluster the binding failure mode is the host:
70 % of the cards sit on 8-card nodes with 12 cores and 48 GiB per card, the typical one-card pod
asks 11 cores and 48 GiB, and CPU-only pods ask 19k cores, so cards end up stranded on nodes whose
CPU or memory is gone (``bench/sim/failures.py``).

Host-aware fragmentation, per node n and typical GPU pod m (popularity weights ``q_m``):

* ``U_nm``: idle milli m could use on the cards (FGD's non-fragment: cards whose free share is at
  least m's ask; for a k-card m, ``floor(full / k) * k * 1000``), 0 if m's models exclude n;
* ``c_nm = min(cpu_free / cpu_m, mem_free / mem_m)``: copies of m the host still carries;
* usable ``= min(U_nm, c_nm * k_m * milli_m)`` when ``c_nm >= 1``, else 0;
* ``F'_n = sum_m q_m * (idle_n - usable_nm)``.

The plugin scores the decrease of ``F_n + host_weight * F'_n`` (F = FGD's measure, which handles
share remnants and model constraints; only shapes without a model constraint enter F'), banded as
``floor(levels * sigmoid(gain / squash))``; the profile breaks ties by node order, so among
placements that fragment about equally nodes are filled first-fit and the rest stay whole.
For a one-card share every distinct free level of every feasible node is a candidate and the
node's best card is returned as the card hint.

Everything is incremental: per-node ``U`` is cached by ``node_version``; the effect of a placement
on ``U`` is exact and O(M) per candidate (whole cards remove 1000 from every share term; a share
changes one card). Design notes and results: docs/simulation.md.
"""

from __future__ import annotations

import numpy as np

from xpupool.core.cluster import BoolArray, ClusterState, FloatArray, IntArray
from xpupool.core.frag import FragmentCache, TargetWorkload, best_card_per_node, node_models, share_candidates
from xpupool.core.framework import REGISTRY, FitContext, ScoreResult
from xpupool.core.model import WHOLE_CARD_MILLI


class HostTarget:
    """Typical GPU pods for the host-aware measure (CPU-only typical pods add a constant; dropped)."""

    def __init__(self, tw: TargetWorkload, *, weights: str = "demand", multi_scale: float = 1.0,
                 any_model_only: bool = False, memory: bool = True) -> None:
        gpu = tw.count > 0
        if any_model_only:
            gpu = gpu & tw.allowed[:, :-1].all(axis=1)
        mem = tw.memory_mib if tw.memory_mib is not None and memory else np.zeros(tw.size, dtype=np.int64)
        cpu = list(tw.cpu_milli[gpu])
        mem_list = list(mem[gpu])
        milli = list(tw.milli[gpu])
        count = list(tw.count[gpu])
        allowed = [row for row in tw.allowed[gpu]]
        pop = list(tw.p[gpu])
        # probability scale of tw.p relative to pod fractions: tw.p covers ``coverage`` of pods
        known = {int(k) for k in tw.count[gpu] if k > 1}
        for k, c, m, frac in tw.multi_card:
            if k in known:
                continue
            cpu.append(c)
            mem_list.append(m)
            milli.append(WHOLE_CARD_MILLI)
            count.append(k)
            row = np.zeros(tw.allowed.shape[1], dtype=bool)
            row[:-1] = True
            allowed.append(row)
            pop.append(frac)
        self.cpu = np.asarray(cpu, dtype=np.float64)
        self.mem = np.asarray(mem_list, dtype=np.float64)
        self.milli = np.asarray(milli, dtype=np.int64)
        self.count = np.asarray(count, dtype=np.int64)
        self.allowed = np.asarray(allowed, dtype=bool).reshape(len(cpu), tw.allowed.shape[1])
        popularity = np.asarray(pop, dtype=np.float64) * np.where(self.count > 1, multi_scale, 1.0)
        if weights == "demand":
            q = popularity * self.count * self.milli / WHOLE_CARD_MILLI
        elif weights == "popularity":
            q = popularity
        elif weights == "cards":
            q = popularity * self.count
        else:
            raise ValueError(f"unknown weights {weights!r}")
        self.q: FloatArray = q / q.sum()
        self.sharing = (self.count == 1) & (self.milli < WHOLE_CARD_MILLI)
        self.need = (self.count * self.milli).astype(np.float64)  # GPU milli per copy
        # GPU milli the host supports per milli-core / MiB left (1e18: the shape asks none)
        self.need_per_cpu = np.where(self.cpu > 0, self.need / np.maximum(self.cpu, 1), 1e18)
        self.need_per_mem = np.where(self.mem > 0, self.need / np.maximum(self.mem, 1), 1e18)
        self.size = len(self.q)


class HostFragment:
    """Cached per-node usable-by-m card capacity ``U`` and the host-aware fragmentation."""

    def __init__(self, ht: HostTarget) -> None:
        self.ht = ht
        self._versions: IntArray | None = None
        self._state_id = -1
        self.u: FloatArray = np.zeros((0, ht.size))
        self.f: FloatArray = np.zeros(0)
        self.model: IntArray = np.zeros(0, dtype=np.int64)
        self.node_ok: BoolArray = np.zeros((0, ht.size), dtype=bool)

    def card_usable(self, card_free: IntArray, model: IntArray) -> FloatArray:
        """``U`` for nodes with ``card_free`` (K, G): (K, M)."""
        ht = self.ht
        f = card_free[..., None]
        share_u = np.where(f >= ht.milli, f, 0).sum(axis=1)  # (K, M)
        full = (card_free >= WHOLE_CARD_MILLI).sum(axis=1)[:, None]
        whole_u = (full // np.maximum(ht.count, 1)) * ht.count * WHOLE_CARD_MILLI
        u = np.where(ht.sharing, share_u, whole_u).astype(np.float64)
        ok: BoolArray = ht.allowed[:, model].T
        return np.where(ok, u, 0.0)

    def frag(self, u: FloatArray, idle: IntArray | FloatArray, cpu: IntArray, mem: IntArray) -> FloatArray:
        """``F'`` for K nodes from their ``U`` (K, M), idle milli, free CPU and memory."""
        ht = self.ht
        cpu_c = cpu[:, None]
        mem_c = mem[:, None]
        host_cap = np.minimum(cpu_c * ht.need_per_cpu, mem_c * ht.need_per_mem)  # copies * need
        usable = np.minimum(u, host_cap)
        usable *= (cpu_c >= ht.cpu) & (mem_c >= ht.mem)  # at least one copy fits the host
        result: FloatArray = np.asarray(idle, dtype=np.float64) - usable @ ht.q
        return result

    def refresh(self, state: ClusterState) -> None:
        if self._versions is None or self._state_id != id(state) or len(self._versions) != state.num_nodes:
            self.model = node_models(state)
            self.node_ok = self.ht.allowed[:, self.model].T.copy()  # (K, M): shape m may use node n
            stale = np.arange(state.num_nodes)
            self.u = np.zeros((state.num_nodes, self.ht.size))
            self.f = np.zeros(state.num_nodes)
            self._state_id = id(state)
        else:
            stale = np.nonzero(state.node_version != self._versions)[0]
        if len(stale):
            free = state.card_free_milli[stale]
            u = self.card_usable(free, self.model[stale])
            self.u[stale] = u
            self.f[stale] = self.frag(u, free.sum(axis=1), state.cpu_free[stale], state.memory_free[stale])
        self._versions = state.node_version.copy()

    def after_whole(self, state: ClusterState, nodes: IntArray, cpu: int, mem: int, count: int) -> FloatArray:
        """F' of ``nodes`` after taking ``count`` whole cards (0: CPU-only) plus ``cpu``/``mem``."""
        ht = self.ht
        u = self.u[nodes]
        idle = state.card_free_milli[nodes].sum(axis=1)
        if count:
            full = (state.card_free_milli[nodes] >= WHOLE_CARD_MILLI).sum(axis=1)[:, None]
            k = np.maximum(ht.count, 1)
            whole_after = ((full - count) // k) * k * WHOLE_CARD_MILLI
            ok = self.node_ok[nodes]
            u = np.where(ht.sharing, u - count * WHOLE_CARD_MILLI, np.where(ok, whole_after, 0.0))
            u = np.where(ok, u, 0.0)
            idle = idle - count * WHOLE_CARD_MILLI
        return self.frag(u, idle, state.cpu_free[nodes] - cpu, state.memory_free[nodes] - mem)

    def after_share(self, state: ClusterState, nodes: IntArray, slots: IntArray, cpu: int, mem: int,
                    milli: int) -> FloatArray:
        """F' of each (node, slot) candidate after taking ``milli`` of that card."""
        ht = self.ht
        free_all = state.card_free_milli[nodes]
        f_old = free_all[np.arange(len(nodes)), slots][:, None]
        f_new = f_old - milli
        ok = self.node_ok[nodes]
        delta_share = np.where(f_new >= ht.milli, f_new, 0) - np.where(f_old >= ht.milli, f_old, 0)
        full = (free_all >= WHOLE_CARD_MILLI).sum(axis=1)[:, None]
        full_after = full - (f_old >= WHOLE_CARD_MILLI)
        k = np.maximum(ht.count, 1)
        whole_after = (full_after // k) * k * WHOLE_CARD_MILLI
        u = np.where(ht.sharing, self.u[nodes] + delta_share, whole_after)
        u = np.where(ok, u, 0.0)
        idle = free_all.sum(axis=1) - milli
        return self.frag(u, idle, state.cpu_free[nodes] - cpu, state.memory_free[nodes] - mem)


class XpupoolHostScore:
    """Banded decrease of ``fgd_weight * F + host_weight * F'``, scaled to 0..100 over the feasible
    nodes (use with ``first_on_tie``). ``squash = 0`` gives continuous scores; ``weights`` /
    ``multi_scale`` / ``any_model_only`` / ``memory`` select the typical shapes in F'. Defaults:
    chosen by cross-validation over the FGD variants (``host_weight`` 1.0 in 4 of 5 folds; see
    docs/simulation.md, "Generalisation") and checked on held-out mixes."""

    name = "xpupool-host"

    def __init__(self, *, target: TargetWorkload, weights: str = "popularity", multi_scale: float = 0.0,
                 fgd_weight: float = 1.0, host_weight: float = 1.0, squash: float = 2000.0,
                 levels: float = 50.0, any_model_only: bool = True, memory: bool = True) -> None:
        self.cache = HostFragment(HostTarget(target, weights=weights, multi_scale=multi_scale,
                                             any_model_only=any_model_only, memory=memory))
        self.fgd = FragmentCache(target)
        self.fgd_weight = fgd_weight
        # banded scores depend only on the node and the request shape: the framework may cache them
        self.node_local = squash > 0
        self.host_weight = host_weight
        self.squash = squash
        self.levels = levels

    def gain(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> tuple[FloatArray, IntArray]:
        """Decrease of ``fgd_weight * F + host_weight * F'`` per node (``-inf`` where infeasible) and
        the best card per node."""
        hw, fw = self.host_weight, self.fgd_weight
        if hw:
            self.cache.refresh(state)
        if fw:
            self.fgd.refresh(state)
        r = ctx.request
        n = state.num_nodes
        if r.is_sharing:
            nodes, slots = share_candidates(ctx.card_fit, state.card_free_milli, feasible)
            g = np.zeros(len(nodes))
            if hw:
                g += hw * (self.cache.f[nodes]
                           - self.cache.after_share(state, nodes, slots, r.cpu_milli, r.memory_mib, r.share_milli))
            if fw:
                g += fw * (self.fgd.f[nodes] - self.fgd.after_share(state, nodes, slots, r.cpu_milli, r.share_milli))
            return best_card_per_node(nodes, slots, g, n)
        gain = np.full(n, -np.inf)
        idx = np.nonzero(feasible)[0]
        if len(idx):
            g = np.zeros(len(idx))
            if hw:
                g += hw * (self.cache.f[idx] - self.cache.after_whole(state, idx, r.cpu_milli, r.memory_mib, r.count))
            if fw:
                g += fw * (self.fgd.f[idx] - self.fgd.after_whole_cached(state, idx, r.cpu_milli, r.count))
            gain[idx] = g
        return gain, np.full(n, -1, dtype=np.int64)

    def score(self, state: ClusterState, ctx: FitContext, feasible: BoolArray) -> ScoreResult:
        gain, hint = self.gain(state, ctx, feasible)
        ok = np.isfinite(gain)
        scores = np.zeros(state.num_nodes)
        if not ok.any():
            return ScoreResult(scores, hint)
        key = gain[ok]
        if self.squash > 0:  # banded: ``levels`` integer bands of sigmoid(gain / squash), node-local
            key = np.floor(self.levels / (1 + np.exp(-np.clip(key / self.squash, -500, 500))))
            scores[ok] = 100 * key / self.levels
            return ScoreResult(scores, hint)
        span = max(float(key.max() - key.min()), 1e-9)
        scores[ok] = 100 * (key - key.min()) / span
        return ScoreResult(scores, hint)


REGISTRY.register("xpupool-host")(XpupoolHostScore)
