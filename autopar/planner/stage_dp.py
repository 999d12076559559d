"""Stage construction for ``PipeshardParallel(stages="auto")``.

Consumes: ``trace_at(m)``, the full batch size, a ClusterSpec and the method. Produces: the best
``StagedResult`` found. This version enumerates stage counts p (powers of two up to the layer and device
counts) with equal sub-meshes and flops-balanced layer ranges, and the microbatch counts of
``microbatch_candidates``; each candidate is planned by the intra-op planner, and the fastest plan that fits
in memory is kept.
"""

from __future__ import annotations

from typing import Any

from autopar.cost_models.cluster import ClusterSpec
from autopar.methods import PipeshardParallel
from autopar.pipeline.layers import op_layers
from autopar.planner.pipeshard import StagedResult
from autopar.planner.problem import InfeasibleMemoryError


def stage_counts(layers: int, devices: int) -> list[int]:
    out, p = [], 1
    while p <= min(layers, devices):
        if devices % p == 0:
            out.append(p)
        p *= 2
    return out


def search_stages(trace_at: Any, batch: int, cluster: ClusterSpec, method: PipeshardParallel, *,
                  memory_budget: float | None, solver: str, time_limit_s: float | None) -> StagedResult:
    from autopar.planner.pipelined import microbatch_candidates, plan_fixed

    n = cluster.num_devices
    probe = trace_at(1)
    k = max((l for l in op_layers(probe, method.layers) if l is not None), default=0) + 1
    best: StagedResult | None = None
    errors: list[Exception] = []
    for p in stage_counts(k, n):
        ms = [method.num_microbatches] if method.num_microbatches else microbatch_candidates(batch, p, most=3)
        for m in ms:
            for remat in (False, True):
                try:
                    res = plan_fixed(trace_at(m), cluster, method.layers, p, [n // p] * p, [None] * p, [remat] * p,
                                     m, method.schedule, memory_budget, solver, time_limit_s, method)
                except InfeasibleMemoryError as e:
                    errors.append(e)
                    continue
                if best is None or res.plan.estimate.step_time_s < best.plan.estimate.step_time_s * (1 - 1e-9):
                    best = res
                break
    if best is None:
        raise errors[-1] if errors else ValueError("no pipeline layout could be planned")
    return best
