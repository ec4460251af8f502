"""The device ledger never goes negative and release restores exactly what reserve took."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from pools import gpu_node, share, whole

from xpupool.core.cluster import ClusterState
from xpupool.core.model import Allocation
from xpupool.core.statement import Statement


def _alloc(pod: str, node: str, cards: tuple[int, ...], milli: int, mem: int = 0) -> Allocation:
    return Allocation(pod, node, node, cards, milli, tuple(mem for _ in cards))


def test_reserve_refuses_over_commit_and_changes_nothing() -> None:
    state = ClusterState([gpu_node("g", 2)])
    assert state.reserve(_alloc("a", "g", (0,), 700), share("a", 70)).ok
    before = state.card_free_milli.copy()
    status = state.reserve(_alloc("b", "g", (0,), 400), share("b", 40))
    assert not status.ok and "compute exhausted" in status.message()
    assert np.array_equal(before, state.card_free_milli)


def test_exclusive_card_has_no_neighbour() -> None:
    state = ClusterState([gpu_node("g", 2)])
    assert state.reserve(_alloc("a", "g", (1,), 100), share("a", 10)).ok
    status = state.reserve(_alloc("w", "g", (1,), 1000, 81920), whole("w", 1))
    assert not status.ok


def test_statement_rollback_restores_evictions_and_reservations() -> None:
    state = ClusterState([gpu_node("g", 2)])
    state.reserve(_alloc("a", "g", (0,), 500), share("a", 50))
    snapshot = state.card_free_milli.copy()
    st_ = Statement(state)
    assert st_.evict("a") is not None
    assert st_.reserve(_alloc("b", "g", (0,), 1000, 81920), whole("b", 1)).ok
    st_.rollback()
    assert np.array_equal(state.card_free_milli, snapshot)
    assert set(state.allocations) == {"a"}
    st_.rollback()  # idempotent
    assert set(state.allocations) == {"a"}


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 7), st.integers(1, 100), st.integers(0, 20_000)),
                    max_size=60))
def test_random_reserve_release_sequences_keep_the_ledger_consistent(ops: list[tuple[bool, int, int, int]]) -> None:
    state = ClusterState([gpu_node("g", 8)])
    held: list[str] = []
    for i, (reserve, card, pct, mem) in enumerate(ops):
        if reserve or not held:
            name = f"p{i}"
            if state.reserve(_alloc(name, "g", (card,), pct * 10, mem), share(name, pct, mem_mib=mem)).ok:
                held.append(name)
        else:
            state.release(held.pop(0))
        assert (state.card_free_milli >= 0).all() and (state.card_free_milli <= 1000).all()
        assert (state.card_memory_free >= 0).all()
        assert (state.card_memory_free <= state.card_memory_capacity).all()
        used = sum(state.allocations[p][0].share_milli for p in held)
        assert 8000 - int(state.card_free_milli.sum()) == used
    for name in held:
        state.release(name)
    assert (state.card_free_milli == 1000).all() and (state.card_tenants == 0).all()
    assert state.release("never-held") is None
