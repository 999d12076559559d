"""The public entry points: ``parallelize`` (plan and run), ``plan`` (plan for a described cluster)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from autopar.cost_models.cluster import ClusterSpec
from autopar.emit.pipeline import emit_pipeline, is_pipelined
from autopar.emit.spmd import SpmdProgram, emit_spmd
from autopar.ir.graph import Graph
from autopar.ir.trace import _normalize_argnums, trace
from autopar.methods import (Auto, DataParallel, Manual3D, Method, PipeshardParallel, ShardParallel, ZeroParallel,
                             resolve_method)
from autopar.plan import Plan
from autopar.planner.pipelined import plan_pipelined
from autopar.planner.problem import InfeasibleMemoryError, SolverTimeLimitError
from autopar.runtime.pipeline import PipelineRuntime
from autopar.planner.shard_parallel import plan_intra_op, plan_specs
from autopar.sharding.mesh import LogicalMesh
from autopar.sharding.spec import ShardingSpec


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
            # dtype objects, not their names: str(dtype) is a Python-level numpy call, and this runs per leaf on
            # every call of a ParallelFunction (it was 4 of its 8 ms of overhead for an 87-leaf train state)
            parts.append((tree, tuple((x.shape, x.dtype) if isinstance(x, jax.Array)
                                      else (tuple(np.shape(x)), getattr(x, "dtype", type(x))) for x in leaves)))
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


def _is_pipelined(method: Method) -> bool:
    return isinstance(method, (PipeshardParallel, Manual3D)) or (
        isinstance(method, (ShardParallel, DataParallel, ZeroParallel)) and method.num_microbatches not in (None, 1))


def _plan_auto(tracer: "_Tracer", cluster: ClusterSpec, memory_budget: float | None, solver: str,
               time_limit_s: float | None) -> Plan:
    """Auto: the faster of ShardParallel() and PipeshardParallel(); a one-stage, one-microbatch pipeline is
    planned again as the single SPMD program it is."""
    found: list[Plan] = []
    errors: list[tuple[Method, Exception]] = []
    for candidate in (ShardParallel(), PipeshardParallel()):
        try:
            found.append(_plan_abstract(tracer, cluster, candidate, memory_budget, solver, time_limit_s))
        except (InfeasibleMemoryError, ValueError, SolverTimeLimitError) as e:
            errors.append((candidate, e))
    if not found:
        raise _auto_error(errors)
    best = min(found, key=lambda p: p.estimate.step_time_s)
    if _is_pipelined_plan(best) and len(best.stages) == 1 and \
            best.method_options.get("num_microbatches") in (None, 1) and \
            len(best.stages[0].devices) == cluster.num_devices:
        # one stage, one microbatch: the same step as one SPMD program on that mesh, which XLA compiles
        # whole (the pipeline runtime runs forward, backward and update as three programs, whose
        # boundaries cost time and memory the estimates do not fully charge); the ILP objective and the
        # final estimate disagree by up to ~1 % (docs/benchmarks.md), so within that the single program wins
        try:
            single = _plan_abstract(tracer, cluster, ShardParallel(mesh_shape=best.stages[0].mesh_shape),
                                    memory_budget, solver, time_limit_s)
        except (InfeasibleMemoryError, ValueError, SolverTimeLimitError):
            return best
        if single.estimate.step_time_s <= best.estimate.step_time_s * (1 + SINGLE_PROGRAM_TOLERANCE):
            return single
    return min(found, key=lambda p: (p.estimate.step_time_s, _is_pipelined_plan(p)))  # ties: one program


def _auto_error(errors: list[tuple[Method, Exception]]) -> Exception:
    """The error of an Auto that found no plan: every candidate's reason, so the pipeline search's is not hidden
    behind the single program's; a memory error when any candidate ran out of memory, with the least budget
    that one of them names (the pipeline search names its least demanding layout's, where it planned one)."""
    why = "; ".join(f"{type(m).__name__}(): {e}" for m, e in errors)
    memory = [e for _, e in errors if isinstance(e, InfeasibleMemoryError)]
    if not memory:      # the first candidate's kind (a time limit stays a SolverTimeLimitError)
        kind = type(errors[0][1])
        return kind(f"Auto found no plan: {why}") if kind in (ValueError, SolverTimeLimitError) else errors[0][1]
    need = min(e.min_budget_bytes for e in memory)
    return InfeasibleMemoryError(f"Auto found no plan: {why}", need, memory[0].budget_bytes)


def _plan_abstract(tracer: "_Tracer", cluster: ClusterSpec, method: Method, memory_budget: float | None,
                   solver: str, time_limit_s: float | None) -> Plan:
    """Plan from abstract arguments: one SPMD program, or microbatches / pipeline stages."""
    if isinstance(method, Auto):
        return _plan_auto(tracer, cluster, memory_budget, solver, time_limit_s)
    if _is_pipelined(method):
        return plan_pipelined(tracer.at, tracer.batch_size(), cluster, method, memory_budget=memory_budget,
                              solver=solver, time_limit_s=time_limit_s).plan
    return plan_intra_op(tracer.at(1), cluster, method, memory_budget=memory_budget, solver=solver,
                         time_limit_s=time_limit_s).plan


# Graphs traced by ``plan`` / ``parallelize``, shared across calls: planning the same step with several
# methods (what-if questions, a benchmark grid) traces each microbatch size once. Keyed like jax.jit's own
# cache: the function object, the abstract signature, the argnums and the microbatch count; bounded LRU.
_TRACE_CACHE: "OrderedDict[Any, Graph]" = OrderedDict()
_TRACE_CACHE_SIZE = 8
_TRACE_CACHE_LOCK = threading.Lock()


def _cached_trace(key: Any, make: Callable[[], Graph]) -> Graph:
    """``make()``, memoised under ``key`` (``None``: an unhashable signature, never cached)."""
    if key is None:
        return make()
    with _TRACE_CACHE_LOCK:
        if key in _TRACE_CACHE:
            _TRACE_CACHE.move_to_end(key)
            return _TRACE_CACHE[key]
    graph = make()
    with _TRACE_CACHE_LOCK:
        _TRACE_CACHE[key] = graph
        while len(_TRACE_CACHE) > _TRACE_CACHE_SIZE:
            _TRACE_CACHE.popitem(last=False)
    return graph


SINGLE_PROGRAM_TOLERANCE = 0.01


def _is_pipelined_plan(plan: Plan) -> bool:
    return plan.method == PipeshardParallel.name


class _Tracer:
    """Traces the step at the microbatch size of m microbatches (cached per m, and across calls)."""

    def __init__(self, fn: Callable[..., Any], abstract: Sequence[Any], static_argnums: Any, batch_argnums: Any,
                 donate_argnums: Any) -> None:
        self.fn, self.abstract = fn, list(abstract)
        self.static_argnums, self.donate_argnums = static_argnums, donate_argnums
        self.batch_argnums = _default_batch_argnums(len(abstract), batch_argnums)
        self._graphs: dict[int, Graph] = {}

    def _batch_positions(self) -> tuple[int, ...]:
        return _normalize_argnums(self.batch_argnums, len(self.abstract), "batch_argnums")

    def batch_size(self) -> int:
        sizes = {leaf.shape[0] if leaf.shape else None for i in self._batch_positions()
                 for leaf in jax.tree.leaves(self.abstract[i])}
        if not sizes:
            raise ValueError("microbatching needs batch arguments: pass batch_argnums naming them")
        if None in sizes or len(sizes) != 1:
            raise ValueError(f"batch arguments have leading dimensions {sorted(map(str, sizes))}; microbatching "
                             "needs every batch leaf to share one batch dimension first (fix batch_argnums)")
        return int(sizes.pop())

    def at(self, m: int) -> Graph:
        if m not in self._graphs:
            args = list(self.abstract)
            if m > 1:
                b = self.batch_size()
                if b % m:
                    raise ValueError(f"the batch size {b} is not divisible by num_microbatches={m}; use a divisor "
                                     f"of {b}")
                for i in self._batch_positions():
                    args[i] = jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0] // m, *x.shape[1:]), x.dtype),
                                           args[i])
            self._graphs[m] = _cached_trace(self._cache_key(m), lambda: trace(
                self.fn, *args, static_argnums=self.static_argnums, batch_argnums=self.batch_argnums,
                donate_argnums=self.donate_argnums))
        return self._graphs[m]

    def _cache_key(self, m: int) -> Any:
        static = _normalize_argnums(self.static_argnums, len(self.abstract), "static_argnums")
        key = (self.fn, _signature(self.abstract, static), static, self._batch_positions(),
               _normalize_argnums(self.donate_argnums, len(self.abstract), "donate_argnums"), m,
               bool(jax.config.jax_enable_x64))
        try:
            hash(key)
        except TypeError:
            return None
        return key


@dataclass(frozen=True)
class _Compiled:
    plan: Plan
    graph: Graph
    program: SpmdProgram | PipelineRuntime


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
        self._block = False
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
            tracer = _Tracer(self.fn, abstract, self.static_argnums, self.batch_argnums, self.donate_argnums)
            if self._fixed_plan is not None:
                plan = self._fixed_plan
            else:
                plan = _plan_abstract(tracer, self._cluster(), self.method, self.memory_budget, self.solver,
                                      self.time_limit_s)
            devices = self._devices()
            program: Any
            if is_pipelined(plan):
                if jax.process_count() > 1:
                    raise ValueError("pipelined and microbatched plans run in a single process for now; use "
                                     "ShardParallel / DataParallel / ZeroParallel under jax.distributed")
                graph = tracer.at(int(plan.method_options["num_microbatches"]))
                program = emit_pipeline(plan, graph, devices)
            else:
                graph = tracer.at(1)
                specs, fixed = plan_specs(plan, graph)
                stage = plan.stages[0]
                if len(devices) < len(stage.devices):
                    raise ValueError(f"the plan needs {len(stage.devices)} devices, {len(devices)} are available")
                mesh = LogicalMesh(stage.mesh_shape, stage.axis_names).to_jax_mesh(
                    [devices[i] for i in stage.devices])
                program = emit_spmd(graph, specs, fixed, mesh,
                                    {(o, k): ShardingSpec(s) for o, k, s in stage.operand_specs})
            compiled = _Compiled(plan, graph, program)
            self._cache[key] = compiled
            return compiled

    def get_plan(self, *args: Any) -> Plan:
        """The plan for these arguments (planned now if needed), without running anything."""
        return self._compile(args).plan

    def lower(self, *args: Any) -> Any:
        """The lowered SPMD program for these arguments (``.compile()`` gives XLA's compiled program)."""
        c = self._compile(args)
        if isinstance(c.program, PipelineRuntime):
            raise ValueError("this plan runs several programs (pipeline stages or microbatches); use "
                             "lower_pieces(...) for each program's lowering")
        flat = [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh) for s, sh in
                zip(jax.tree_util.tree_leaves([_abstract_tree(a) for a in _dynamic(args, self.static_argnums)]),
                    c.program.in_shardings)]
        return c.program.lower(*flat)

    def lower_pieces(self, *args: Any) -> dict[str, Any]:
        """Each program of a pipelined / microbatched plan, lowered: {piece name: jax Lowered}."""
        c = self._compile(args)
        if not isinstance(c.program, PipelineRuntime):
            return {"stage0": self.lower(*args)}
        return c.program.lower_pieces()

    @property
    def timeline(self) -> list[Any]:
        """What the last pipelined call ran: TimelineEvent(stage, microbatch, phase, start, end)."""
        runtimes = [c.program for c in self._cache.values() if isinstance(c.program, PipelineRuntime)]
        return list(runtimes[-1].timeline) if runtimes else []

    def record_timeline(self, block: bool = True) -> None:
        """Wait for every program as it runs, so the timeline measures it (slower; for inspection)."""
        self._block = block
        for c in self._cache.values():
            if isinstance(c.program, PipelineRuntime):
                c.program.block = block

    # ---- running ------------------------------------------------------------------------------------
    def __call__(self, *args: Any) -> Any:
        c = self._compile(args)
        dyn = _dynamic(args, self.static_argnums)
        flat, tree = jax.tree_util.tree_flatten(tuple(dyn))
        if tree != c.graph.in_tree:
            raise TypeError(f"arguments do not match the planned structure: {tree} vs {c.graph.in_tree}")
        if isinstance(c.program, PipelineRuntime):
            c.program.block = self._block
            return jax.tree_util.tree_unflatten(c.graph.out_tree, c.program(flat))
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
    tracer = _Tracer(fn, abstract, static_argnums, batch_argnums, donate_argnums)
    return _plan_abstract(tracer, _cluster_for(cluster), resolve_method(method), memory_budget, solver,
                          time_limit_s)
