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
    with progress.phase(f"tracing {target.label}"):
        graph = autopar.trace(target.fn, *abstract, batch_argnums=batch)
    with progress.phase(f"planning for {cluster.num_devices} device(s) of {cluster.name}"):
        plan = autopar.plan(target.fn, *abstract, cluster=cluster, **kw)
    progress.search_summary(plan)
    return with_cli_record(plan, target.label, kw["batch_argnums"]), graph


def with_cli_record(plan: Any, target: str, batch_argnums: Any) -> Any:
    """The plan with ``search["cli"]`` naming its target, so ``autopar audit PLAN.json`` can rebuild it."""
    record = {"target": target, "batch_argnums": list(batch_argnums) if batch_argnums is not None else None}
    return dataclasses.replace(plan, search={**dict(plan.search), "cli": record})
