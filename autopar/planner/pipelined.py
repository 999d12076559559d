"""Plans with microbatches and pipeline stages: PipeshardParallel, Manual3D, and gradient accumulation
(``num_microbatches``) of ShardParallel, DataParallel and ZeroParallel.

Consumes: ``trace_at(m)`` (the step's Graph traced at the microbatch size of m microbatches), a ClusterSpec and
a method. Produces: a multi-stage ``Plan`` (``planner.pipeshard``) whose ``method_options`` say how to rebuild
the stage split at run time (``num_microbatches``, ``layers``, ``stage_layers``, ``schedule``, ``remat``).

Search (``stages="auto"``): the stage-construction DP of ``planner.stage_dp`` over layer ranges x sub-mesh
sizes x logical meshes, per candidate number of microbatches; the best layout is then planned stage by
stage. Fixed layouts skip the DP. Manual3D is a fixed layout: ``pp`` stages of balanced flops, each a
(dp, tp) mesh.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence, cast

from autopar.cost_models.cluster import ClusterSpec
from autopar.ir.graph import Graph
from autopar.methods import DataParallel, Manual3D, Method, PipeshardParallel, ShardParallel, ZeroParallel
from autopar.pipeline.layers import balanced_split, layer_flops, op_layers
from autopar.planner.pipeshard import IntraOpCache, StagedResult, StageLayout, plan_stages
from autopar.planner.problem import InfeasibleMemoryError, SolverTimeLimitError

TraceAt = Callable[[int], Graph]


def method_options(method: Method) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(method).items()}


def microbatch_candidates(batch: int, at_least: int = 1, most: int = 6) -> list[int]:
    """Powers of two times ``at_least`` that divide the batch size (largest kept: one sample per microbatch)."""
    out: list[int] = []
    m = max(1, at_least)
    while m <= batch and len(out) < most:
        if batch % m == 0:
            out.append(m)
        m *= 2
    return out or [1]


def plan_fixed(graph: Graph, cluster: ClusterSpec, layers_opt: str | int, stage_layer_counts: list[int] | int,
               devices: list[int], logical: list[tuple[int, ...] | None], remat: list[bool], m: int, schedule: str,
               memory_budget: float | None, solver: str, time_limit_s: float | None, method: Method,
               batch_on_first_axis: bool | tuple[bool, ...] = False,
               cache: IntraOpCache | None = None, stage_method: Method | None = None) -> StagedResult:
    """``stage_method``: the intra-op method every stage is planned with (default: free, or Megatron's
    batch-on-dp layout with ``batch_on_first_axis``); DataParallel / ZeroParallel for their microbatched form."""
    layers = op_layers(graph, layers_opt)
    k = max((l for l in layers if l is not None), default=-1) + 1
    if isinstance(stage_layer_counts, int):
        p = stage_layer_counts
        if p > k:
            raise ValueError(f"{p} stages but the step has only {k} layers; mark more layer boundaries "
                             "(autopar.mark_layer_boundary) or ask for fewer stages")
        ranges = balanced_split(list(layer_flops(graph, layers)), p)
    else:
        if sum(stage_layer_counts) != k:
            raise ValueError(f"stages={stage_layer_counts} hold {sum(stage_layer_counts)} layers but the step has {k}")
        starts = [0]
        for c in stage_layer_counts:
            starts.append(starts[-1] + c)
        ranges = [(starts[i], starts[i + 1]) for i in range(len(stage_layer_counts))]
    layout = StageLayout(layer_ranges=tuple(ranges), device_counts=tuple(devices), logical_meshes=tuple(logical),
                         remat=tuple(remat), batch_on_first_axis=batch_on_first_axis, stage_method=stage_method)
    opts = method_options(method)
    opts["layers"] = layers_opt
    return plan_stages(graph, cluster, layout, num_microbatches=m, schedule=schedule, op_layer=layers,
                       memory_budget=memory_budget, solver=solver, time_limit_s=time_limit_s,
                       method_name=method.name, method_options=opts, cache=cache)


def _equal_devices(n: int, p: int) -> list[int]:
    if n % p:
        raise ValueError(f"{p} stages do not split {n} devices equally; pass submeshes=[...] with the devices "
                         "of each stage")
    return [n // p] * p


def _remat_list(remat: Any, p: int) -> list[bool] | None:
    """None for "auto"."""
    if remat == "auto":
        return None
    if isinstance(remat, bool):
        return [remat] * p
    if len(remat) != p:
        raise ValueError(f"remat={remat}: give one bool per stage ({p} stages)")
    return [bool(r) for r in remat]


def plan_pipelined(trace_at: TraceAt, batch: int, cluster: ClusterSpec, method: Method, *,
                   memory_budget: float | None, solver: str, time_limit_s: float | None) -> StagedResult:
    n = cluster.num_devices
    if isinstance(method, ShardParallel):
        m = method.num_microbatches or 1
        mesh = method.mesh_shape
        return plan_fixed(trace_at(m), cluster, 1, 1, [n], [mesh], [False], m, "1f1b", memory_budget, solver,
                          time_limit_s, method)
    if isinstance(method, (DataParallel, ZeroParallel)):     # gradient accumulation under the method's rules
        m = method.num_microbatches or 1
        return plan_fixed(trace_at(m), cluster, 1, 1, [n], [(n,)], [False], m, "1f1b", memory_budget, solver,
                          time_limit_s, method, stage_method=method)
    if isinstance(method, Manual3D):
        if method.dp * method.tp * method.pp != n:
            raise ValueError(f"Manual3D(dp={method.dp}, tp={method.tp}, pp={method.pp}) uses "
                             f"{method.dp * method.tp * method.pp} devices but {n} are planned for; make "
                             f"dp x tp x pp = {n}")
        m = method.num_microbatches or microbatch_candidates(batch, 2 * method.pp if method.pp > 1 else 1)[0]
        recompute = method.remat != "none"
        return plan_fixed(trace_at(m), cluster, method.pp, method.pp, [method.dp * method.tp] * method.pp,
                          [(method.dp, method.tp)] * method.pp, [recompute] * method.pp, m, "1f1b", memory_budget,
                          solver, time_limit_s, method, batch_on_first_axis=True)
    if not isinstance(method, PipeshardParallel):
        raise TypeError(f"plan_pipelined does not plan {type(method).__name__}")
    if method.stages == "auto":
        from autopar.planner.stage_dp import search_stages

        if method.submeshes is not None or method.logical_meshes is not None:
            raise ValueError("stages='auto' searches the sub-meshes and logical meshes itself; give stages as a "
                             "count or a list of layer counts to fix submeshes= / logical_meshes=")

        return search_stages(trace_at, batch, cluster, method, memory_budget=memory_budget, solver=solver,
                             time_limit_s=time_limit_s)
    p = method.stages if isinstance(method.stages, int) else len(method.stages)
    stages: list[int] | int = method.stages if isinstance(method.stages, int) \
        else list(cast(Sequence[int], method.stages))
    devices = list(method.submeshes) if method.submeshes is not None else _equal_devices(n, p)
    if len(devices) != p:
        raise ValueError(f"submeshes={list(devices)} gives {len(devices)} stages' devices for {p} stages")
    logical: list[tuple[int, ...] | None] = [tuple(x) for x in method.logical_meshes] \
        if method.logical_meshes is not None else [None] * p
    for d, lm in zip(devices, logical):
        if lm is not None and math.prod(lm) != d:
            raise ValueError(f"logical mesh {lm} has {math.prod(lm)} devices but its stage has {d}")
    ms = [method.num_microbatches] if method.num_microbatches else microbatch_candidates(batch, p)
    remat = _remat_list(method.remat, p)
    best: StagedResult | None = None
    errors = []
    for m in ms:
        for rm in ([remat] if remat is not None else [[False] * p, [True] * p]):
            try:
                res = plan_fixed(trace_at(m), cluster, method.layers, stages, devices, logical, rm, m,
                                 method.schedule, memory_budget, solver, time_limit_s, method)
            except (InfeasibleMemoryError, SolverTimeLimitError) as e:
                errors.append(e)
                continue
            if best is None or res.plan.estimate.step_time_s < best.plan.estimate.step_time_s * (1 - 1e-9):
                best = res
            break                                   # remat only when the plan without it does not fit
    if best is None:
        raise errors[-1]
    return best
