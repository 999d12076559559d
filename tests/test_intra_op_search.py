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
