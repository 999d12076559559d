"""The stage-construction DP against brute force on small synthetic layer-cost tables."""

from __future__ import annotations

import itertools
import random

import pytest

from autopar.planner.stage_dp import LayerCost, stage_dp

OPTIONS = [(1, (1,)), (2, (2,)), (4, (4,))]


def _costs(rng: random.Random, k: int) -> list[list[LayerCost | None]]:
    out = []
    for _ in range(k):
        row = []
        base = rng.uniform(1.0, 3.0)
        for n, _ in OPTIONS:   # more devices: faster, less memory per device
            t = round(base / n * rng.uniform(0.8, 1.2), 1)
            row.append(LayerCost(t_mb=t, t_fwd=t / 3, t_apply=0.0, peak=10.0 / n, stash=1.0 / n, inputs=0.1))
        out.append(row)
    return out


def _brute(costs: list[list[LayerCost | None]], n_dev: int, m: int, limit: float) -> float:
    k = len(costs)
    best = float("inf")
    for p in range(1, k + 1):
        for cuts in itertools.combinations(range(1, k), p - 1):
            bounds = [0, *cuts, k]
            for opts in itertools.product(range(len(OPTIONS)), repeat=p):
                if sum(OPTIONS[o][0] for o in opts) != n_dev:
                    continue
                d, times, ok = 0, [], True
                for s, o in enumerate(opts):
                    n = OPTIONS[o][0]
                    if d % n:
                        ok = False
                        break
                    d += n
                    a, b = bounds[s], bounds[s + 1]
                    keep = min(p - s, m)
                    peak = sum(costs[l][o].peak for l in range(a, b))
                    stash = sum(costs[l][o].stash for l in range(a, b))
                    if peak + (keep - 1) * stash > limit:
                        ok = False
                        break
                    times.append(sum(costs[l][o].t_mb for l in range(a, b)))
                if ok:
                    best = min(best, sum(times) + (m - 1) * max(times))
    return best


def _objective(layout: list[tuple[int, int, int, bool]], costs: list[list[LayerCost | None]], m: int) -> float:
    times = [sum(costs[l][o].t_mb for l in range(a, b)) for a, b, o, _ in layout]
    return sum(times) + (m - 1) * max(times)


@pytest.mark.parametrize("seed", range(40))
def test_dp_equals_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    k, m = rng.randint(2, 5), rng.choice([1, 2, 4, 8])
    costs = _costs(rng, k)
    limit = rng.uniform(6.0, 25.0)
    want = _brute(costs, 4, m, limit)
    layout = stage_dp(costs, OPTIONS, 4, 4, m, "1f1b", limit, remat_choices=(0,))
    if want == float("inf"):
        assert layout is None
        return
    assert layout is not None
    assert sum(OPTIONS[o][0] for _, _, o, _ in layout) == 4
    assert [a for a, *_ in layout][0] == 0 and layout[-1][1] == k
    assert _objective(layout, costs, m) == pytest.approx(want)
