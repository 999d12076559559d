"""Exhaustive search over every strategy combination: the ground truth for tests on tiny problems.

Consumes: a ``ShardingProblem`` with at most ``max_combinations`` combinations (default 10^6).
Produces: a ``Solution`` (status "optimal", backend "brute-force"); ties keep the lexicographically first
choice vector. ``brute_force_min_budget`` gives the smallest memory budget any plan fits.
Refuses: larger problems (``ValueError``); no feasible combination (``InfeasibleMemoryError`` when a budget
is set and some plan exists without it, otherwise ``ValueError``).
"""

from __future__ import annotations

import itertools
import math
import time

from autopar.planner.problem import (InfeasibleMemoryError, ShardingProblem, Solution, evaluate, format_bytes,
                                     is_feasible, peak_group_memory)


def _combinations(p: ShardingProblem, max_combinations: int) -> itertools.product:
    total = math.prod(len(c) for c in p.node_costs)
    if total > max_combinations:
        raise ValueError(f"brute_force would enumerate {total} combinations (> max_combinations="
                         f"{max_combinations}); use solve() for problems this large")
    return itertools.product(*[range(len(c)) for c in p.node_costs])


def brute_force_min_budget(p: ShardingProblem, max_combinations: int = 10**6) -> float | None:
    """Smallest peak group memory over plans respecting fixed shardings and aliases (None: no plan)."""
    best: float | None = None
    for ch in _combinations(p, max_combinations):
        if any(ch[v] != s for v, s in p.fixed_pairs) or any((ch[a.a], ch[a.b]) not in a.pairs for a in p.aliases):
            continue
        peak = peak_group_memory(p, ch)
        peak = 0.0 if peak is None else peak
        best = peak if best is None else min(best, peak)
    return best


def brute_force(p: ShardingProblem, max_combinations: int = 10**6) -> Solution:
    """The optimal plan by enumeration."""
    start = time.perf_counter()
    best: tuple[int, ...] | None = None
    best_obj = math.inf
    for ch in _combinations(p, max_combinations):
        if not is_feasible(p, ch):
            continue
        obj = evaluate(p, ch)
        if obj < best_obj:
            best, best_obj = ch, obj
    if best is None:
        need = brute_force_min_budget(p, max_combinations)
        if need is None or p.memory_budget is None:
            raise ValueError("no plan exists: the fixed shardings and aliases contradict each other")
        raise InfeasibleMemoryError(f"needs at least {format_bytes(need)} per device; the budget is "
                                    f"{format_bytes(p.memory_budget)}", need, p.memory_budget)
    return Solution(tuple(best), best_obj, "optimal", "brute-force", time.perf_counter() - start,
                    num_variables=0, num_constraints=0, peak_group_memory=peak_group_memory(p, best))
