"""The multi-mesh search of ``plan_intra_op``: exact lower-bound pruning and the overall deadline."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest  # noqa: E402

import autopar  # noqa: E402
from autopar.planner.intra_op import build_intra_op  # noqa: E402
from autopar.planner.shard_parallel import lower_bound, mesh_candidates, plan_intra_op  # noqa: E402
from autopar.sharding.mesh import LogicalMesh  # noqa: E402
from bench.models.mlp import mlp  # noqa: E402


def _graph():
    step, args = mlp(64, 2, batch_size=256)
    return autopar.trace(step, *args, batch_argnums=(1,))


def test_lower_bound_is_below_every_solved_objective() -> None:
    graph = _graph()
    cluster = autopar.ClusterSpec.preset("dgx-a100")
    res = plan_intra_op(graph, cluster, autopar.ShardParallel())
    meshes = res.plan.search["meshes"]
    assert [tuple(m["mesh"]) for m in meshes] == mesh_candidates(8)
    best = min(m["objective"] for m in meshes if "objective" in m)
    for m in meshes:
        if "objective" in m:
            assert m["lower_bound"] <= m["objective"] * (1 + 1e-9), m
        else:   # pruned: no plan on that mesh can beat the best objective
            assert m["pruned_lower_bound"] >= best * (1 - 1e-9), m
    # the bound of the chosen mesh, rebuilt independently
    shape = res.plan.mesh_shape
    names = res.plan.axis_names
    ip = build_intra_op(graph, LogicalMesh(shape, names, cluster.mesh_axes(shape, names)), cluster.device)
    assert lower_bound(ip) <= res.solution.objective * (1 + 1e-9)


def test_search_deadline_keeps_the_first_plan_and_warns() -> None:
    graph = _graph()
    with pytest.warns(UserWarning, match="search deadline"):
        res = plan_intra_op(graph, autopar.ClusterSpec.preset("dgx-a100"), autopar.ShardParallel(),
                            search_deadline_s=1e-9)
    meshes = res.plan.search["meshes"]
    assert "step_time_s" in meshes[0] and tuple(meshes[0]["mesh"]) == (8,)
    assert all("skipped" in m for m in meshes[1:]) and len(meshes) == len(mesh_candidates(8))
    assert res.plan.mesh_shape == (8,)


def test_a_mesh_whose_ilp_times_out_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mesh whose ILP finds nothing within its time limit is recorded and skipped; only when every mesh
    timed out does the search raise SolverTimeLimitError."""
    import autopar.planner.shard_parallel as sp

    real = sp._solve_within_memory

    def timeout_on_2d(ip, *a, **k):  # type: ignore[no-untyped-def]
        if len(ip.mesh.shape) > 1:
            raise autopar.SolverTimeLimitError("the ortools solver found no plan within time_limit_s=1")
        return real(ip, *a, **k)

    monkeypatch.setattr(sp, "_solve_within_memory", timeout_on_2d)
    graph, cluster = _graph(), autopar.ClusterSpec.preset("dgx-a100")
    res = plan_intra_op(graph, cluster, autopar.ShardParallel())
    assert len(res.plan.mesh_shape) == 1
    timed_out = [tuple(m["mesh"]) for m in res.plan.search["meshes"] if m.get("timed_out")]
    assert timed_out and all(len(m) > 1 for m in timed_out)
    with pytest.raises(autopar.SolverTimeLimitError, match="found no plan within time_limit_s=1"):
        plan_intra_op(graph, cluster, autopar.ShardParallel(mesh_shape=(2, 4)))   # one mesh: its own error

    def always_timeout(*a, **k):  # type: ignore[no-untyped-def]
        raise autopar.SolverTimeLimitError("the ortools solver found no plan within time_limit_s=1")

    monkeypatch.setattr(sp, "_solve_within_memory", always_timeout)
    with pytest.raises(autopar.SolverTimeLimitError, match="no mesh was planned within the time limit"):
        plan_intra_op(graph, cluster, autopar.ShardParallel())


def test_shared_analysis_and_caches_build_the_same_problem() -> None:
    """``analyse_graph`` once for all meshes, and the per-build caches keyed by layer ties, give the very
    problem an untied, uncached build gives where no ties apply (a 2-layer MLP has none to exploit)."""
    from autopar.planner.intra_op import analyse_graph

    graph = _graph()
    cluster = autopar.ClusterSpec.preset("dgx-a100")
    analysis = analyse_graph(graph)
    for shape, names in (((8,), ("x",)), ((2, 4), ("x", "y"))):
        mesh = LogicalMesh(shape, names, cluster.mesh_axes(shape, names))
        shared = build_intra_op(graph, mesh, cluster.device, analysis=analysis)
        fresh = build_intra_op(graph, mesh, cluster.device)
        assert shared.problem == fresh.problem
        assert shared.peak_point == fresh.peak_point


def test_axis_embedding_groups_consecutive_axes() -> None:
    from autopar.planner.shard_parallel import axis_embedding

    m = lambda *shape: LogicalMesh(shape, ("x", "y", "z")[:len(shape)])  # noqa: E731
    assert axis_embedding(m(8), m(2, 4)) == {"x": ("x", "y")}
    assert axis_embedding(m(8), m(2, 2, 2)) == {"x": ("x", "y", "z")}
    assert axis_embedding(m(4, 2), m(2, 2, 2)) == {"x": ("x", "y"), "y": ("z",)}
    assert axis_embedding(m(2, 4), m(2, 2, 2)) == {"x": ("x",), "y": ("y", "z")}
    assert axis_embedding(m(2, 4), m(4, 2)) is None
    assert axis_embedding(m(2, 4), m(8)) is None


def test_embedded_one_axis_plan_keeps_every_tensor_layout() -> None:
    """The 1-D plan embedded into 2x4 splits every tensor as on (8,), over ("x", "y") in mesh order, and
    costs what the 1-D plan costs there; a hinted time-limited solve never does worse."""
    import warnings

    from autopar.planner.ilp import solve
    from autopar.planner.problem import evaluate
    from autopar.planner.shard_parallel import embed_choices
    from autopar.sharding.spec import ShardingSpec

    graph = _graph()
    cluster = autopar.ClusterSpec.preset("dgx-a100")
    ips = {}
    for shape, names in (((8,), ("x",)), ((2, 4), ("x", "y"))):
        ips[shape] = build_intra_op(graph, LogicalMesh(shape, names, cluster.mesh_axes(shape, names)),
                                    cluster.device)
    one = solve(ips[(8,)].problem)
    hint = embed_choices(ips[(8,)], one.choices, ips[(2, 4)])
    assert hint is not None
    src, dst = ips[(8,)].tensor_specs(one.choices), ips[(2, 4)].tensor_specs(hint)
    assert src.keys() == dst.keys()
    for t, spec in src.items():
        assert dst[t] == ShardingSpec(tuple(("x", "y") if d == ("x",) else () for d in spec.dims)), t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = solve(ips[(2, 4)].problem, time_limit_s=1e-3, hint=hint)
    assert sol.objective <= evaluate(ips[(2, 4)].problem, hint) + 1e-12


def test_reshard_cost_scaled_from_spec_pair_equals_direct() -> None:
    """The builder computes each spec pair's resharding steps once and scales them to every shape: exact."""
    from autopar.planner.intra_op import _CostCache, candidate_specs
    from autopar.sharding.reshard import reshard_steps

    cluster = autopar.ClusterSpec.preset("dgx-a100")
    mesh = LogicalMesh((2, 2, 2), ("x", "y", "z"), cluster.mesh_axes((2, 2, 2), ("x", "y", "z")))
    cache = _CostCache(mesh)
    shapes = [(8, 16), (24, 8), (64, 1024)]   # same rank: later shapes reuse the first one's steps
    checked = 0
    for shape in shapes:
        specs = candidate_specs(shape, mesh)
        for a in specs[::3]:
            for b in specs[::2]:
                want = sum(cache.collective(s) for s in reshard_steps(a, b, shape, "float32", mesh))
                assert cache.reshard(a, b, shape, "float32") == pytest.approx(want, rel=1e-12, abs=0.0)
                checked += 1
    assert checked > 100 and len(cache._template) > 10


def test_op_compute_splits_each_node_compute_by_op() -> None:
    """Every op of a GPT training step has its own compute vector on the node it was folded into (optimizer
    updates follow their gradient or parameter, elementwise ops their operand, tied layers share a node), and
    a node's compute is the sum of its ops' vectors: what the pipeline estimate times sections by."""
    import numpy as np

    from bench.models.gpt import gpt_tiny

    step, args = gpt_tiny(batch_size=8, abstract=True)
    graph = autopar.trace(step, *args, batch_argnums=(1,))
    cluster = autopar.ClusterSpec.preset("dgx-a100")
    ip = build_intra_op(graph, LogicalMesh((2, 4), ("x", "y"), cluster.mesh_axes((2, 4), ("x", "y"))), cluster.device)
    assert set(ip.op_compute) == {op.id for op in graph.ops}
    folded = {v for v, node in enumerate(ip.nodes) if node.merged_ops or node.tied_ops}
    assert folded and any(graph.ops[o].section.value == "optimizer" and ip.nodes[v].kind == "op"
                          and graph.ops[ip.nodes[v].key].section.value != "optimizer"
                          for o, (v, _) in ip.op_compute.items())    # an update folded into a backward node
    total = [np.zeros(len(n.strategies)) for n in ip.nodes]
    for v, vec in ip.op_compute.values():
        total[v] += vec
    for v, node in enumerate(ip.nodes):
        assert np.allclose(total[v], ip.compute_costs[v], rtol=1e-9, atol=1e-15), node.label


def test_held_copies_enter_the_memory_row_and_the_peak_at_the_chosen_spec() -> None:
    """``HELD_COPIES`` {t: 3}: the ILP's memory row adds three buffers of t at each strategy's spec of t (so
    sharding t shrinks all of them) and the plan's peak adds three at the spec chosen; ``ONCE_PER_STEP``
    (m = 4) weighs the update's node costs by 1/4 and leaves the estimate's compute unweighted."""
    import dataclasses

    import numpy as np

    from autopar.planner.estimate import estimate_plan
    from autopar.planner.intra_op import ONCE_PER_STEP
    from autopar.planner.memory_row import HELD_COPIES
    from autopar.planner.problem import evaluate

    graph = _graph()
    cluster = autopar.ClusterSpec.preset("dgx-a100")
    mesh = LogicalMesh((8,), ("x",), cluster.mesh_axes((8,), ("x",)))
    weight = next(t for t in graph.inputs
                  if graph.tensors[t].role.value == "parameter" and len(graph.tensors[t].shape) == 2)
    base = build_intra_op(graph, mesh, cluster.device)
    held = build_intra_op(dataclasses.replace(graph, annotations={HELD_COPIES: {weight: 3.0}}), mesh, cluster.device)
    v, specs = held.tensor_owner[weight]
    t = graph.tensors[weight]
    per_spec = np.array([s.bytes_per_device(t.shape, t.dtype, mesh) for s in specs])
    assert np.allclose(np.array(held.problem.memory[v]) - np.array(base.problem.memory[v]), 3 * per_spec)
    assert per_spec.min() < per_spec.max()                      # a split spec holds less of every copy
    choices = plan_intra_op(graph, cluster, autopar.ShardParallel(mesh_shape=(8,))).solution.choices
    e0, e1 = estimate_plan(base, choices, cluster.device), estimate_plan(held, choices, cluster.device)
    assert e1.peak_memory_bytes - e0.peak_memory_bytes == pytest.approx(3 * per_spec[choices[v]])
    update = frozenset(op.id for op in graph.ops if op.section.value == "optimizer")
    weighted = build_intra_op(dataclasses.replace(graph, annotations={ONCE_PER_STEP: (4, tuple(sorted(update)))}),
                              mesh, cluster.device)
    once = sum(vec[choices[u]] for o, (u, vec) in base.op_compute.items() if o in update)
    assert once > 0
    assert evaluate(weighted.problem, choices) < evaluate(base.problem, choices) - 0.5 * once
    assert estimate_plan(weighted, choices, cluster.device).step_time_s == pytest.approx(
        estimate_plan(base, choices, cluster.device).step_time_s)


def test_recomputed_forward_ops_count_their_compute_twice_in_the_objective() -> None:
    """``RECOMPUTED`` (a rematerialized stage's forward ops): for any plan, the ILP objective and
    ``weighted_time`` grow by exactly the recomputed ops' compute under that plan, which is what the stage's
    estimate adds for recomputation; the plan's own estimate is unchanged."""
    import dataclasses

    import numpy as np

    from autopar.planner.estimate import estimate_plan
    from autopar.planner.intra_op import RECOMPUTED
    from autopar.planner.problem import evaluate

    graph = _graph()
    cluster = autopar.ClusterSpec.preset("dgx-a100")
    mesh = LogicalMesh((8,), ("x",), cluster.mesh_axes((8,), ("x",)))
    forward = tuple(op.id for op in graph.ops if op.section.value == "forward")
    base = build_intra_op(graph, mesh, cluster.device)
    again = build_intra_op(dataclasses.replace(graph, annotations={RECOMPUTED: forward}), mesh, cluster.device)
    rng = np.random.default_rng(0)
    plans = [plan_intra_op(graph, cluster, autopar.ShardParallel(mesh_shape=(8,))).solution.choices] + [
        tuple(int(rng.integers(len(n.strategies))) for n in base.nodes) for _ in range(20)]
    extras = set()
    for choices in plans:
        extra = base.compute_of(choices, set(forward).__contains__)
        extras.add(round(extra, 15))
        assert extra > 0
        assert evaluate(again.problem, choices) == pytest.approx(evaluate(base.problem, choices) + extra, rel=1e-9)
        est = estimate_plan(again, choices, cluster.device)
        assert est.step_time_s == pytest.approx(estimate_plan(base, choices, cluster.device).step_time_s)
        assert again.weighted_time(est.step_time_s, choices) == pytest.approx(est.step_time_s + extra, rel=1e-12)
    assert len(extras) > 1          # the recomputation's cost depends on the plan: the ILP must see it


def test_a_rematerialized_stage_is_planned_with_its_forward_recomputed() -> None:
    """``stage_subgraph(..., recomputed=True)`` marks exactly the stage's forward ops ``RECOMPUTED``; without
    remat nothing is marked."""
    from autopar.ir.graph import Section
    from autopar.pipeline.layers import op_layers
    from autopar.pipeline.partition import split_stages
    from autopar.planner.intra_op import RECOMPUTED
    from autopar.planner.pipeshard import stage_subgraph

    step, args = mlp(64, 4, batch_size=256)
    graph = autopar.trace(step, *args, batch_argnums=(1,))
    layers = op_layers(graph, 2)
    split = split_stages(graph, {0: 0, 1: 1}, 2, op_layer=layers)
    for s in range(2):
        plain = stage_subgraph(split, s, 4)
        marked = stage_subgraph(split, s, 4, recomputed=True)
        assert RECOMPUTED not in plain.graph.annotations
        forward = {o for o, parent in enumerate(marked.parent_op) if graph.ops[parent].section is Section.FORWARD}
        assert forward and set(marked.graph.annotations[RECOMPUTED]) == forward
