"""The stage-construction DP against brute force on small synthetic layer-cost tables."""

from __future__ import annotations

import itertools
import random
from typing import Any

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


def test_a_layer_without_compute_does_not_break_the_bound_grid() -> None:
    """A layer range that costs 0 s (a layer of reshapes) with more distinct range times than the bound grid
    holds: the grid is geometric over the positive times plus 0 (np.geomspace from 0 raised "Geometric
    sequence cannot include zero"), and the DP still equals brute force."""
    rng = random.Random(7)
    costs = _costs(rng, 7)
    costs[0] = [LayerCost(t_mb=0.0, t_fwd=0.0, t_apply=0.0, peak=0.0, stash=0.0, inputs=0.0) for _ in OPTIONS]
    layout = stage_dp(costs, OPTIONS, 4, 4, 4, "1f1b", 40.0, remat_choices=(0,))
    assert layout is not None
    assert _objective(layout, costs, 4) == pytest.approx(_brute(costs, 4, 4, 40.0))


def test_uniform_ranking_follows_the_pipeline_formula() -> None:
    """Megatron-shaped layouts: p = devices / sub-mesh equal stages; estimate sum(t) + (m - 1) max(t); a
    rematerialized entry only where the plain one does not fit; layouts that do not fit are left out."""
    from autopar.planner.stage_dp import MeshOption, uniform_ranking

    variants = [MeshOption(1, (1,)), MeshOption(2, (2,)), MeshOption(2, (2, 1), True)]
    row = [LayerCost(t_mb=4.0, t_fwd=1.0, t_apply=0.0, peak=9.0, stash=1.0, inputs=0.5),
           LayerCost(t_mb=2.2, t_fwd=0.5, t_apply=0.0, peak=4.0, stash=0.6, inputs=0.25),
           LayerCost(t_mb=2.0, t_fwd=0.5, t_apply=0.0, peak=4.0, stash=2.0, inputs=0.25)]
    costs = [row, row, row, row]
    ranked = uniform_ranking(costs, variants, [1.0] * 4, n_devices=2, m=4, schedule="1f1b", limit=10.0,
                             remat_choices=(0, 1))
    # 1 device -> 2 stages of 2 layers: peak 18 > 10, never fits. 2 devices -> 1 stage of 4 layers
    # (keep = 1): option 1 (peak 16) does not fit either; nor does option 2. With limit 20:
    assert ranked == []
    ranked = uniform_ranking(costs, variants, [1.0] * 4, n_devices=2, m=4, schedule="1f1b", limit=20.0,
                             remat_choices=(0, 1))
    # option 0: stages of 2 layers, keep 2 and 1: stage 0 holds 18 + 1 * 2 = 20 <= 20 -> t = 8, 8 -> 8+8+3*8
    # option 1: one stage, 16 <= 20 -> 4 * 2.2 = 8.8 -> 8.8 + 3 * 8.8; option 2: 8 + 3 * 8
    assert ranked == [(pytest.approx(32.0), 2, False), (pytest.approx(35.2), 1, False),
                      (pytest.approx(40.0), 0, False)]
    ranked = uniform_ranking(costs, variants, [1.0] * 4, n_devices=2, m=4, schedule="gpipe", limit=20.0,
                             remat_choices=(0, 1))
    # GPipe keeps all 4: option 0 needs 18 + 3 * 2 = 24 plain, 18 + 3 * 0.5 = 19.5 rematerialized (t 10)
    assert (pytest.approx(50.0), 0, True) in ranked and all(o != 0 or r for _, o, r in ranked)


def test_auto_is_never_worse_than_manual3d() -> None:
    """Manual3D's space is inside Auto's: at the same microbatch count the stage search's plan is at least as
    fast as every Manual3D layout of 4 devices (a described 4-device node; nothing runs)."""
    import dataclasses

    import autopar
    from bench.models import gpt

    step, args = gpt.gpt(128, 4, 4, seq=64, vocab=512, batch_size=256)
    cluster = dataclasses.replace(autopar.ClusterSpec.preset("p3.16xlarge", nodes=1), devices_per_node=4)
    auto = autopar.plan(step, *args, cluster=cluster, batch_argnums=(1,),
                        method=autopar.PipeshardParallel(num_microbatches=4))
    entry = auto.search["stage_dp"][0]
    assert entry["uniform"], "the Megatron-shaped layouts were not planned"
    for dp, tp, pp in [(2, 1, 2), (1, 2, 2), (4, 1, 1), (1, 1, 4)]:
        manual = autopar.plan(step, *args, cluster=cluster, batch_argnums=(1,),
                              method=autopar.Manual3D(dp, tp, pp, num_microbatches=4))
        assert auto.estimate.step_time_s <= manual.estimate.step_time_s * (1 + 1e-9), (dp, tp, pp)


@pytest.mark.parametrize("nodes", [1, 2, 8])
def test_every_manual3d_stage_mesh_is_a_sub_mesh_option(nodes: int) -> None:
    """Auto's sub-meshes hold every stage of the Manual3D grid: (dp, tp) with the batch on dp, (dp, 1) as the
    batch-first data-parallel mesh, (1, tp) as the free (tp,) mesh. Wide-ResNet-4B on 16 GPUs missed Manual3D's
    (2, 2) stages when mixed meshes were offered for a whole node only."""
    import autopar
    from autopar.planner.stage_dp import MeshOption, submesh_options
    from bench.baselines import manual3d_grid

    cluster = autopar.ClusterSpec.preset("p3.16xlarge", nodes=nodes)
    options = set(submesh_options(cluster))
    grid = manual3d_grid(cluster.num_devices, cluster.devices_per_node, batch_size=1024)
    stages = {(m.dp, m.tp) for m in grid}
    assert (2, 2) in stages
    for dp, tp in stages:
        want = MeshOption(tp, (tp,)) if dp == 1 else MeshOption(dp * tp, (dp, tp), True)
        assert want in options, (dp, tp)
    assert MeshOption(4, (2, 2), True) in options


def test_microbatch_walk_goes_downhill_from_the_best_grid_point() -> None:
    from autopar.planner.stage_dp import MAX_MICROBATCH_COUNTS, microbatch_grid, next_microbatch_count

    assert microbatch_grid(1024) == [1, 128, 1024]
    inf = float("inf")
    assert next_microbatch_count({1: inf, 128: 5.0, 1024: 9.0}, 1024) == [64]
    assert next_microbatch_count({1: inf, 128: 5.0, 1024: 9.0, 64: 6.0}, 1024) == [256]
    assert next_microbatch_count({1: inf, 128: 5.0, 1024: 9.0, 64: 6.0, 256: 5.5}, 1024) == []
    assert next_microbatch_count({1: inf, 128: inf, 1024: 3.0}, 1024) == [512]
    assert next_microbatch_count({1: inf, 128: inf, 1024: inf}, 1024) == []      # nothing fits: stop
    assert next_microbatch_count({1: 2.0, 6: 3.0}, 6) == [2]                     # only divisors of the batch
    many = {2 ** i: float(10 - i) for i in range(MAX_MICROBATCH_COUNTS)}
    assert next_microbatch_count(many, 1024) == []                              # at most 7 counts


def test_while_nothing_fits_the_walk_bisects_between_the_largest_counts() -> None:
    """MoE-27B on 32 GPUs fits at none of the grid's counts (1, 128, 1024) but does at 256: with no count
    fitting, the search tries the count nearest the geometric mean of the two largest tried, then the next."""
    from autopar.planner.stage_dp import MAX_MICROBATCH_COUNTS, next_fitting_count

    inf = float("inf")
    assert next_fitting_count({1: inf, 128: inf, 1024: inf}, 1024) == [256]     # tie 256 / 512: fewer
    assert next_fitting_count({1: inf, 128: inf, 256: inf, 1024: inf}, 1024) == [512]
    assert next_fitting_count({1: inf, 128: inf, 256: inf, 512: inf, 1024: inf}, 1024) == [8]
    assert next_fitting_count({1: inf, 192: inf, 1536: inf}, 1536) == [512]
    assert next_fitting_count({1: inf, 128: 3.0, 1024: inf}, 1024) == []        # something fits: the walks
    assert next_fitting_count({1: inf, 2: inf}, 2) == []                        # no count left between
    many = {2 ** i: inf for i in range(MAX_MICROBATCH_COUNTS)}
    assert next_fitting_count(many, 4096) == []


def test_after_the_walk_each_near_layout_walks_from_its_own_best_count() -> None:
    """Llama-3-8B on 8 H100s: the fastest count's walk ends at 256 (4 stages on (2,)); one stage on (8,) is
    best at 128 among the counts tried and walks on to 64, where it is the fastest plan."""
    from autopar.planner.stage_dp import MAX_MICROBATCH_COUNTS, next_layout_count, next_microbatch_count

    inf = float("inf")
    tried = {1: inf, 32: 19.5, 256: 17.2, 128: 17.6}
    pp4 = (4, (2,), False, False)
    tp8 = (1, (8,), False, False)
    slow = (8, (1,), False, True)
    by_layout = {pp4: {32: 19.5, 128: 17.6, 256: 17.2}, tp8: {128: 18.4, 256: 21.8}, slow: {128: 30.0, 256: 40.0}}
    assert next_microbatch_count(tried, 256) == []                  # 128 was tried: the plain walk stops
    assert next_layout_count(tried, by_layout, 256) == [64]
    assert next_layout_count({**tried, 64: 16.65}, {**by_layout, tp8: {64: 16.65, 128: 18.4}}, 256) == []
    # a layout more than LAYOUT_WALK_MARGIN slower than the fastest plan is not walked from
    assert next_layout_count(tried, {pp4: by_layout[pp4], slow: by_layout[slow]}, 256) == []
    assert next_layout_count({1: inf}, by_layout, 256) == []          # nothing fits: stop
    many = {2 ** i: 1.0 for i in range(MAX_MICROBATCH_COUNTS)}
    assert next_layout_count(many, {tp8: {1: 1.0}}, 1024) == []      # at most 7 counts


def test_identical_stages_and_repeated_layouts_share_intra_op_plans() -> None:
    """One ILP per distinct stage, whatever microbatches each stage keeps in flight; a second layout of the same
    graph (the stage search plans several) solves nothing new, and its plan equals the one planned without the
    cache. Rematerialized stages are ILPs of their own (their forward's compute counts twice)."""
    import dataclasses

    import autopar
    from autopar.planner.pipelined import plan_fixed
    from autopar.planner.pipeshard import IntraOpCache
    from bench.models import gpt

    step, args = gpt.gpt(64, 6, 4, seq=32, vocab=256, batch_size=4)       # 7 layers: 6 blocks, then the head
    graph = autopar.trace(step, *args, batch_argnums=1)
    cluster = dataclasses.replace(autopar.ClusterSpec.preset("p3.16xlarge", nodes=1), devices_per_node=8)

    def layout(remat: bool, cache: IntraOpCache | None) -> Any:
        return plan_fixed(graph, cluster, "auto", [2, 1, 1, 1, 2], [1] * 5, [(1,)] * 5, [remat] * 5, 4, "1f1b",
                          None, "ortools", None, autopar.PipeshardParallel(), cache=cache)

    cache = IntraOpCache()
    layout(False, cache)
    assert cache.solved == 3                  # the first two blocks, one middle block (x3), the last block + head
    layout(False, cache)
    assert cache.solved == 3
    layout(True, cache)
    assert cache.solved == 6                  # the same three stages, rematerialized
    shared = layout(True, cache)
    assert cache.solved == 6
    alone = layout(True, IntraOpCache())
    assert shared.plan.estimate == alone.plan.estimate
    assert shared.plan.stages == alone.plan.stages
    small = IntraOpCache(max_entries=1)             # least recently used dropped: every distinct stage again
    layout(False, small)
    layout(True, small)
    assert small.solved == 6


def test_a_stage_planned_at_another_microbatch_size_warm_starts_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same stage at two microbatch sizes: equal ``wiring_key``s (a different program's differs); the
    second size's ILPs get the first's plan as a warm start, and plan exactly what a fresh cache plans."""
    import dataclasses

    import autopar
    from autopar.ir.subgraph import structure_key, wiring_key
    from autopar.planner import pipeshard
    from autopar.planner.pipelined import plan_fixed
    from bench.models import gpt

    def graph(batch: int, layers: int = 2) -> autopar.Graph:
        step, args = gpt.gpt(64, layers, 4, seq=32, vocab=256, batch_size=batch)
        return autopar.trace(step, *args, batch_argnums=1)

    small, large = graph(2), graph(4)
    assert wiring_key(small) == wiring_key(large) != wiring_key(graph(2, layers=3))
    assert structure_key(small) != structure_key(large)
    cluster = dataclasses.replace(autopar.ClusterSpec.preset("p3.16xlarge", nodes=1), devices_per_node=2)
    warm_sizes: list[int] = []
    plan_intra_op = pipeshard.plan_intra_op

    def spy(*args: Any, warm: Any = (), **kw: Any) -> Any:
        warm_sizes.append(len(warm))
        return plan_intra_op(*args, warm=warm, **kw)

    monkeypatch.setattr(pipeshard, "plan_intra_op", spy)

    def layout(g: autopar.Graph, cache: pipeshard.IntraOpCache) -> Any:
        return plan_fixed(g, cluster, 1, 1, [2], [(2,)], [False], 1, "1f1b", None, "ortools", None,
                          autopar.PipeshardParallel(), cache=cache)

    cache = pipeshard.IntraOpCache()
    layout(small, cache)
    assert warm_sizes == [0]
    warmed = layout(large, cache)
    assert warm_sizes == [0, 1]
    fresh = layout(large, pipeshard.IntraOpCache())
    assert warmed.plan.estimate == fresh.plan.estimate and warmed.plan.stages == fresh.plan.stages


def test_a_slow_layout_that_fits_by_the_layer_costs_does_not_hide_faster_ones_within_the_slack() -> None:
    """The ranking lists the layouts that fit by the layer costs first, then those within the slack: one over
    the bound in the first part must not end the search before the second (Wide-ResNet-2B at 24
    microbatches: its Megatron layouts were never planned)."""
    from types import SimpleNamespace

    import autopar
    from autopar.planner.stage_dp import UNIFORM_MARGIN, LayerCost, MeshOption, _LayoutSearch

    variants = [MeshOption(1, (1,)), MeshOption(2, (2,))]
    one = LayerCost(t_mb=2.0, t_fwd=0.5, t_apply=0.0, peak=1.0, stash=0.0, inputs=0.0)    # 2 stages: 10 s
    two = LayerCost(t_mb=1.0, t_fwd=0.25, t_apply=0.0, peak=1.2, stash=0.0, inputs=0.0)   # 1 stage: 8 s, 2.4 B
    planned: list[int] = []

    class Search(_LayoutSearch):
        def plan(self, stages: Any, opts: list[MeshOption], remat: list[bool]) -> Any:
            self.tried.add(self._key(stages, opts, remat))
            planned.append(opts[0].devices)
            return SimpleNamespace(plan=SimpleNamespace(estimate=SimpleNamespace(step_time_s=7.9)))

    search = Search(None, SimpleNamespace(num_devices=2), autopar.PipeshardParallel(remat=False),
                    [[one, two], [one, two]], variants, 4, 2.0, None, "ortools", None,
                    None)                                                      # type: ignore[arg-type]
    first = 8.5                         # the DP's exact plan: 10 s > 8.5 (1 + margin) > 8 s
    assert 10.0 > first * (1 + UNIFORM_MARGIN) > 8.0
    search.uniform_layouts([1.0, 1.0], first)
    assert planned == [2]
    assert [e["estimated_step_time_s"] for e in search.entry["uniform"]] == [8.0]


def test_megatron_layouts_that_do_not_fit_do_not_end_the_search() -> None:
    """The Megatron-shaped layouts are planned fastest-first by their layer-cost estimate; one whose exact plan
    does not fit only uses a try, so the layout after it (the one Manual3D would find) is still planned, and
    the bound then follows the fastest exact plan."""
    from types import SimpleNamespace

    import autopar
    from autopar.planner.stage_dp import LONE_STAGE_MARGIN, UNIFORM_MARGIN, MeshOption, _LayoutSearch

    variants = [MeshOption(n, (n,)) for n, _ in OPTIONS for _ in ("fast", "lean")]
    costs = [[c for c in row for _ in ("fast", "lean")] for row in _costs(random.Random(3), 4)]

    class Search(_LayoutSearch):
        def plan(self, stages: Any, opts: list[MeshOption], remat: list[bool]) -> Any:
            self.tried.add(self._key(stages, opts, remat))
            attempts.append(opts[0].devices)
            if len(attempts) <= 2:                   # the two best by estimate do not fit exactly
                return None
            step = {1: 9.0, 2: 8.0, 4: 7.0}[opts[0].devices]
            return SimpleNamespace(plan=SimpleNamespace(estimate=SimpleNamespace(step_time_s=step)))

    attempts: list[int] = []
    cluster = SimpleNamespace(num_devices=4)
    search = Search(None, cluster, autopar.PipeshardParallel(), costs, variants, 4, 1e9, None, "ortools", None,
                    None)                                                      # type: ignore[arg-type]
    found = search.uniform_layouts([1.0] * 4, float("inf"))
    log = search.entry["uniform"]
    ranked = [e["estimated_step_time_s"] for e in log]
    assert ranked == sorted(ranked) and len(attempts) == 3, log     # all three sub-mesh kinds planned
    assert [r is None for r in found] == [True, True, False]
    assert found[2].plan.estimate.step_time_s == {1: 9.0, 2: 8.0, 4: 7.0}[attempts[2]]
    # with an exact plan at 7.0 s already known, only estimates within the margin are planned
    attempts.clear()
    bounded = Search(None, cluster, autopar.PipeshardParallel(), costs, variants, 4, 1e9, None, "ortools", None,
                     None)                                                     # type: ignore[arg-type]
    bounded.uniform_layouts([1.0] * 4, min(ranked) / (1 + LONE_STAGE_MARGIN) * 0.99)
    assert attempts == []
    # over UNIFORM_MARGIN but within LONE_STAGE_MARGIN: only a lone stage on all 4 devices may be planned
    lone = Search(None, cluster, autopar.PipeshardParallel(), costs, variants, 4, 1e9, None, "ortools", None,
                  None)                                                        # type: ignore[arg-type]
    bound = min(ranked) / (1 + UNIFORM_MARGIN) * 0.99
    lone.uniform_layouts([1.0] * 4, bound)
    (lone_estimate,) = [e["estimated_step_time_s"] for e in log if e["stages"] == 1]
    assert lone_estimate <= bound * (1 + LONE_STAGE_MARGIN)           # this example is inside the wide margin
    assert attempts == [4]
