"""Plan a loaded CLI target: trace it (for the inspector's op table) and plan it with the flags given.

Consumes: parsed planning flags (``autopar.cli.options``), a ``Target``, a ``Progress``. Produces:
``(plan, graph)``; the plan's ``search["cli"]`` records the target and batch_argnums (for ``autopar audit
PLAN.json``). Refuses: whatever ``autopar.plan`` refuses (ValueError with its message).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from autopar.cli.options import cluster_from_args, plan_kwargs
from autopar.cli.progress import Progress
from autopar.cli.targets import Target

__all__ = ["abstract_args", "plan_target", "with_cli_record"]


def abstract_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    import jax

    def abstract(x: Any) -> Any:
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype) if hasattr(x, "shape") else x

    return tuple(jax.tree.map(abstract, a) for a in args)


def plan_target(args: argparse.Namespace, target: Target, progress: Progress) -> tuple[Any, Any]:
    import autopar
    from autopar.cost_models.cluster import ClusterSpec

    kw = plan_kwargs(args)
    cluster = cluster_from_args(args)
    if cluster is None:
        cluster = ClusterSpec.local()
    abstract = abstract_args(target.args)
    batch = kw["batch_argnums"] if kw["batch_argnums"] is not None else tuple(range(1, len(abstract)))
    with progress.phase(f"planning for {cluster.num_devices} device(s) of {cluster.name}"):
        plan = autopar.plan(target.fn, *abstract, cluster=cluster, **kw)
    progress.search_summary(plan)
    m = int((plan.method_options or {}).get("num_microbatches") or 1)
    with progress.phase(f"tracing {target.label}" + (f" at the microbatch size ({m} microbatches)" if m > 1 else "")):
        # the plan's op ids are those of the step traced at its microbatch size
        graph = autopar.trace(target.fn, *microbatch_args(abstract, batch, m), batch_argnums=batch)
    return with_cli_record(plan, target.label, kw["batch_argnums"]), graph


def microbatch_args(abstract: tuple[Any, ...], batch: tuple[int, ...], m: int) -> tuple[Any, ...]:
    """The abstract arguments of one microbatch: batch leaves' leading dimension divided by ``m``."""
    import jax

    def cut(x: Any) -> Any:
        return jax.ShapeDtypeStruct((x.shape[0] // m, *x.shape[1:]), x.dtype) if getattr(x, "shape", ()) else x

    return tuple(jax.tree.map(cut, a) if i in batch and m > 1 else a for i, a in enumerate(abstract))


def with_cli_record(plan: Any, target: str, batch_argnums: Any) -> Any:
    """The plan with ``search["cli"]`` naming its target, so ``autopar audit PLAN.json`` can rebuild it."""
    record = {"target": target, "batch_argnums": list(batch_argnums) if batch_argnums is not None else None}
    return dataclasses.replace(plan, search={**dict(plan.search), "cli": record})
