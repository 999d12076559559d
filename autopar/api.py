"""The public entry points: ``parallelize`` (plan and run), ``plan`` (plan for a described cluster)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from autopar.cost_models.cluster import ClusterSpec
from autopar.emit.spmd import SpmdProgram, emit_spmd
from autopar.ir.graph import Graph
from autopar.ir.trace import _normalize_argnums, trace
from autopar.methods import Auto, Manual3D, Method, PipeshardParallel, ShardParallel, resolve_method
from autopar.plan import Plan
from autopar.planner.shard_parallel import plan_intra_op, plan_specs
from autopar.sharding.mesh import LogicalMesh


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    a = np.asarray(x) if not hasattr(x, "shape") else x
    return jax.ShapeDtypeStruct(tuple(a.shape), a.dtype)


def _signature(args: Sequence[Any], static: tuple[int, ...]) -> Any:
    parts = []
    for i, a in enumerate(args):
        if i in static:
            parts.append(("static", a))
        else:
            leaves, tree = jax.tree_util.tree_flatten(a)
            parts.append((tree, tuple((tuple(np.shape(x)), str(getattr(x, "dtype", type(x)))) for x in leaves)))
    return tuple(parts)


def _default_batch_argnums(nargs: int, batch_argnums: Any) -> Any:
    """Without batch_argnums, every argument after the first is batch data (``step(state, batch)``)."""
    if batch_argnums is not None:
        return batch_argnums
    return tuple(range(1, nargs))


def _cluster_for(cluster: ClusterSpec | str | None) -> ClusterSpec:
    if cluster is None:
        return ClusterSpec.local()
    if isinstance(cluster, str):
        if Path(cluster).suffix.lower() in (".toml", ".json"):
            return ClusterSpec.from_file(cluster)
        return ClusterSpec.preset(cluster)
    return cluster


def _plan_graph(graph: Graph, cluster: ClusterSpec, method: Method, memory_budget: float | None,
                solver: str, time_limit_s: float | None) -> Plan:
    if isinstance(method, (PipeshardParallel, Manual3D)):
        raise ValueError(f"{type(method).__name__} needs the pipeline planner, which this version does not have "
                         "yet; use autopar.ShardParallel(mesh_shape=...) (or method='auto', which plans intra-op "
                         "for now)")
    if isinstance(method, ShardParallel) and method.num_microbatches not in (None, 1):
        raise ValueError("ShardParallel(num_microbatches=...): gradient accumulation is not available yet; "
                         "leave num_microbatches unset")
    if isinstance(method, Auto):
        method = ShardParallel()
    return plan_intra_op(graph, cluster, method, memory_budget=memory_budget, solver=solver,
                         time_limit_s=time_limit_s).plan


@dataclass(frozen=True)
class _Compiled:
    plan: Plan
    graph: Graph
    program: SpmdProgram


class ParallelFunction:
    """A function planned and run in parallel; plans and programs are cached by abstract signature."""

    def __init__(self, fn: Callable[..., Any], *, method: Method | str | None = None,
                 static_argnums: int | Sequence[int] = (), batch_argnums: int | Sequence[int] | None = None,
                 donate_argnums: int | Sequence[int] = (), memory_budget: float | None = None,
                 cluster: ClusterSpec | str | None = None, plan: Plan | str | Path | None = None,
                 solver: str = "ortools", time_limit_s: float | None = None,
                 devices: Sequence[Any] | None = None) -> None:
        self.fn = fn
        self.method = resolve_method(method)
        self.static_argnums = static_argnums
        self.batch_argnums = batch_argnums
        self.donate_argnums = donate_argnums
        self.memory_budget = memory_budget
        self.cluster = cluster
        self.solver = solver
        self.time_limit_s = time_limit_s
        self.devices = list(devices) if devices is not None else None
        self._fixed_plan = Plan.load(plan) if isinstance(plan, (str, Path)) else plan
        self._cache: dict[Any, _Compiled] = {}
        self._lock = threading.Lock()
        self.__wrapped__ = fn

    # ---- planning -----------------------------------------------------------------------------------
    def _devices(self) -> list[Any]:
        return self.devices if self.devices is not None else list(jax.devices())

    def _cluster(self) -> ClusterSpec:
        cluster = _cluster_for(self.cluster)
        n = len(self._devices())
        if cluster.num_devices != n:
            raise ValueError(f"the cluster describes {cluster.num_devices} devices but {n} are available to run "
                             "on; use autopar.plan(...) to plan for a cluster you cannot see, or pass "
                             "cluster=None to describe the local devices")
        return cluster

    def trace(self, *args: Any) -> Graph:
        nargs = len(args)
        return trace(self.fn, *args, static_argnums=self.static_argnums,
                     batch_argnums=_default_batch_argnums(nargs, self.batch_argnums),
                     donate_argnums=self.donate_argnums)

    def _compile(self, args: Sequence[Any]) -> _Compiled:
        static = _normalize_argnums(self.static_argnums, len(args), "static_argnums")
        key = _signature(args, static)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            abstract = [a if i in static else jax.tree.map(_abstract, a) for i, a in enumerate(args)]
            graph = self.trace(*abstract)
            if self._fixed_plan is not None:
                plan = self._fixed_plan
            else:
                plan = _plan_graph(graph, self._cluster(), self.method, self.memory_budget, self.solver,
                                   self.time_limit_s)
            specs, fixed = plan_specs(plan, graph)
            stage = plan.stages[0]
            devices = self._devices()
            if len(devices) < len(stage.devices):
                raise ValueError(f"the plan needs {len(stage.devices)} devices, {len(devices)} are available")
            mesh = LogicalMesh(stage.mesh_shape, stage.axis_names).to_jax_mesh([devices[i] for i in stage.devices])
            compiled = _Compiled(plan, graph, emit_spmd(graph, specs, fixed, mesh))
            self._cache[key] = compiled
            return compiled

    def get_plan(self, *args: Any) -> Plan:
        """The plan for these arguments (planned now if needed), without running anything."""
        return self._compile(args).plan

    def lower(self, *args: Any) -> Any:
        """The lowered SPMD program for these arguments (``.compile()`` gives XLA's compiled program)."""
        c = self._compile(args)
        flat = [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh) for s, sh in
                zip(jax.tree_util.tree_leaves([_abstract_tree(a) for a in _dynamic(args, self.static_argnums)]),
                    c.program.in_shardings)]
        return c.program.lower(*flat)

    # ---- running ------------------------------------------------------------------------------------
    def __call__(self, *args: Any) -> Any:
        c = self._compile(args)
        dyn = _dynamic(args, self.static_argnums)
        flat, tree = jax.tree_util.tree_flatten(tuple(dyn))
        if tree != c.graph.in_tree:
            raise TypeError(f"arguments do not match the planned structure: {tree} vs {c.graph.in_tree}")
        placed = [_place(x, s) for x, s in zip(flat, c.program.in_shardings)]
        out = c.program.fn(*placed)
        return jax.tree_util.tree_unflatten(c.graph.out_tree, out)


def _dynamic(args: Sequence[Any], static_argnums: Any) -> list[Any]:
    static = _normalize_argnums(static_argnums, len(args), "static_argnums")
    return [a for i, a in enumerate(args) if i not in static]


def _abstract_tree(a: Any) -> Any:
    return jax.tree.map(_abstract, a)


def _place(x: Any, sharding: Any) -> Any:
    """Put an input where the plan wants it; host arrays every process passes in full are sliced locally."""
    if isinstance(x, jax.Array):
        if x.sharding == sharding or (hasattr(x.sharding, "is_equivalent_to")
                                      and x.sharding.is_equivalent_to(sharding, x.ndim)):
            return x
        if not x.is_fully_addressable:
            return jax.jit(lambda y: y, out_shardings=sharding)(x)
        return jax.device_put(x, sharding)
    arr = np.asarray(x)
    if jax.process_count() > 1:
        return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])
    return jax.device_put(arr, sharding)


def parallelize(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Plan and run ``fn`` in parallel on the local devices. Use bare (``@autopar.parallelize``) or with
    options: ``method``, ``static_argnums``, ``batch_argnums`` (default: every argument after the first),
    ``donate_argnums``, ``memory_budget`` (bytes per device), ``cluster``, ``plan`` (a Plan or a saved plan's
    path: replay without search), ``solver`` ("ortools" | "pulp"), ``time_limit_s``, ``devices``."""
    if fn is None:
        return lambda f: ParallelFunction(f, **options)
    return ParallelFunction(fn, **options)


def plan(fn: Callable[..., Any], *args: Any, cluster: ClusterSpec | str | None = None,
         method: Method | str | None = "auto", static_argnums: int | Sequence[int] = (),
         batch_argnums: int | Sequence[int] | None = None, donate_argnums: int | Sequence[int] = (),
         memory_budget: float | None = None, solver: str = "ortools",
         time_limit_s: float | None = None) -> Plan:
    """Plan ``fn(*args)`` for a described cluster without needing its devices (args may be abstract)."""
    abstract = [a if i in _normalize_argnums(static_argnums, len(args), "static_argnums")
                else jax.tree.map(_abstract, a) for i, a in enumerate(args)]
    graph = trace(fn, *abstract, static_argnums=static_argnums,
                  batch_argnums=_default_batch_argnums(len(args), batch_argnums), donate_argnums=donate_argnums)
    return _plan_graph(graph, _cluster_for(cluster), resolve_method(method), memory_budget, solver, time_limit_s)
