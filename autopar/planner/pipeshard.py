"""Plan a pipelined step for a fixed stage layout: intra-op plans per stage, and the pipeline's Estimate.

Consumes: a Graph traced at the microbatch size, a ClusterSpec, a ``StageLayout`` (which layers each stage
holds, how many devices it gets and its logical mesh) and the schedule options. Produces: ``StagedResult``
(the multi-stage ``Plan`` and the ``StageSplit``). Each stage's forward, backward and update ops are planned as
one intra-op problem on the stage's sub-mesh (so the values its programs share agree); the stage costs come
from the intra-op estimate, never from compiling or profiling.

Estimate: per-microbatch stage time tᵢ = the stage's time without its update ops; step time =
Σ tᵢ + (m − 1)·max tᵢ + the slowest update; peak memory per stage = its one-microbatch peak + the activations
of the other microbatches it keeps in flight (the schedule's count; a rematerialized stage keeps only its
inputs) + one more copy of the averaged gradients when m > 1.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from autopar.cost_models.cluster import ClusterSpec
from autopar.cost_models.memory import PROGRAMS_PER_SECTION
from autopar.cost_models.program_memory import PROGRAM_OF_OP
from autopar.ir.graph import Graph, Role, Section
from autopar.ir.subgraph import Subgraph, extract, structure_key, wiring_key
from autopar.methods import Method, ShardParallel
from autopar.pipeline.partition import APPLY, BACKWARD, FORWARD, StageSplit, split_stages
from autopar.pipeline.schedule import bubble_of, in_flight, pipeline_time
from autopar.plan import Estimate, Plan, StagePlan
from autopar.planner.intra_op import ONCE_PER_STEP, RECOMPUTED
from autopar.planner.memory_row import HELD_COPIES
from autopar.planner.problem import InfeasibleMemoryError, SolverTimeLimitError, format_bytes
from autopar.planner.shard_parallel import IntraOpResult, fixed_tensors, graph_fingerprint, plan_intra_op
from autopar.sharding.spec import ShardingSpec


@dataclass(frozen=True)
class StageLayout:
    layer_ranges: tuple[tuple[int, int], ...]       # [first, last) layer of each stage
    device_counts: tuple[int, ...]
    logical_meshes: tuple[tuple[int, ...] | None, ...]  # None: search the factorisations
    remat: tuple[bool, ...]
    batch_on_first_axis: bool | tuple[bool, ...] = False  # Manual3D: the batch goes on the dp axis (per stage)
    stage_method: Method | None = None    # every stage planned with this method (DataParallel, ZeroParallel)

    def batch_first(self, s: int) -> bool:
        b = self.batch_on_first_axis
        return bool(b) if isinstance(b, bool) else bool(b[s])

    @property
    def num_stages(self) -> int:
        return len(self.layer_ranges)

    def layer_stage(self) -> dict[int, int]:
        return {layer: s for s, (a, b) in enumerate(self.layer_ranges) for layer in range(a, b)}


@dataclass(frozen=True)
class DataTensorShard(ShardParallel):
    """A Manual3D stage: ShardParallel on a (dp, tp) mesh with the batch split over the first (dp) axis only."""

    batch_axis: str = "x"


@dataclass(frozen=True)
class StagedResult:
    plan: Plan
    split: StageSplit
    stages: tuple[IntraOpResult, ...]


class IntraOpCache:
    """Intra-op plans of stage and layer sub-graphs, shared by the stages of one layout, by every layout a
    search plans and by later plans of the same model (a Manual3D grid, ``remat="full"`` after ``"none"``):
    keyed by the sub-graph's ``structure_key`` and annotations, the sub-mesh's cluster, the stage method, the
    memory budget and the solver settings. A plan that failed is remembered as its error and raised again.
    The least recently used entries beyond ``max_entries`` are dropped. The last ``PEERS`` plans of each
    program wiring (``wiring_key``: the same stage or layer at another microbatch size) warm-start the ILPs
    of its next sizes: the microbatch search plans each stage at several sizes, and a stage ILP stopped by
    its time limit keeps the better of its incumbent and the peer's plan (Wide-ResNet-2B's (4, 2) stage at
    96 microbatches: 0.4633 from no start, the optimum 0.3205 after 126 s)."""

    PEERS = 2

    def __init__(self, max_entries: int = 256) -> None:
        self._memo: OrderedDict[tuple[Any, ...], IntraOpResult | Exception] = OrderedDict()
        self._peers: dict[tuple[Any, ...], list[IntraOpResult]] = {}
        self.max_entries = max_entries
        self.solved = 0

    def plan(self, structure: str, graph: Graph, cluster: ClusterSpec, method: Method, budget: float,
             solver: str, time_limit_s: float | None) -> IntraOpResult:
        key = (structure, repr(sorted(graph.annotations.items())), cluster, method, budget, solver, time_limit_s)
        if key in self._memo:
            self._memo.move_to_end(key)
        else:
            self.solved += 1
            peer_key = (wiring_key(graph), tuple(sorted(graph.annotations)), method, solver)
            peers = self._peers.setdefault(peer_key, [])
            try:
                res = plan_intra_op(graph, cluster, method, memory_budget=budget, solver=solver,
                                    time_limit_s=time_limit_s, warm=[(r.intra, r.solution) for r in peers])
            except (InfeasibleMemoryError, SolverTimeLimitError, ValueError) as e:
                self._memo[key] = e
            else:
                self._memo[key] = res
                peers[:] = [res, *peers][:self.PEERS]
            while len(self._memo) > self.max_entries:
                self._memo.popitem(last=False)
        got = self._memo[key]
        if isinstance(got, Exception):
            raise got
        return got


# the cache plans use when their caller passes none: one per process
SHARED_CACHE = IntraOpCache()


def submesh_cluster(cluster: ClusterSpec, n: int) -> ClusterSpec:
    """The part of ``cluster`` a stage of ``n`` devices runs on (within one node, or whole nodes)."""
    dpn = cluster.devices_per_node
    if n <= dpn:
        if dpn % n:
            raise ValueError(f"a stage of {n} devices does not divide a node of {dpn}; use a power of two or "
                             "a divisor of the node size")
        return ClusterSpec(name=cluster.name, device=cluster.device, nodes=1, devices_per_node=n,
                           links=cluster.links)
    if n % dpn:
        raise ValueError(f"a stage of {n} devices spans part of a node ({dpn} per node); use whole nodes")
    return ClusterSpec(name=cluster.name, device=cluster.device, nodes=n // dpn, devices_per_node=dpn,
                       links=cluster.links)


_PROGRAM_INDEX = {FORWARD: 0, BACKWARD: 1, APPLY: 2}


def stage_subgraph(split: StageSplit, stage: int, num_microbatches: int = 1,
                   one_microbatch_program: bool = False, recomputed: bool = False) -> Subgraph:
    """Stage ``stage``'s ops as a graph of their own; with ``num_microbatches`` m > 1 its ops that run once per
    step (the update) are annotated ``ONCE_PER_STEP`` with m, for the ILP to weigh them by 1 / m. With
    ``one_microbatch_program`` its memory is costed as if forward and backward were one program (as a lone
    stage runs them), whatever the split's pieces. ``recomputed``: a rematerialized stage; where it has a
    backward, its forward ops are annotated ``RECOMPUTED``, for the ILP to count their compute twice, as the
    stage's estimate does."""
    g = split.graph

    def role(t: Any) -> Role:
        if t.role is not Role.INTERMEDIATE:
            return t.role
        return Role.BATCH if t.id in split.batch_dependent else Role.PARAMETER

    sub = extract(g, split.stage_ops(stage), input_role=role)
    # a stage runs as one program per piece kind (forward, backward, update): the memory model must not fold
    # across them (cost_models.memory.PROGRAMS_PER_SECTION) and takes the largest program's footprint
    # (cost_models.program_memory.PROGRAM_OF_OP)
    phase: dict[int, int] = {}
    for piece in split.pieces_of(stage):
        for o in piece.ops:
            k = _PROGRAM_INDEX[piece.phase]
            if one_microbatch_program and piece.phase == BACKWARD:
                k = _PROGRAM_INDEX[FORWARD]
            phase[o] = min(phase.get(o, _PROGRAM_INDEX[APPLY]), k)
    notes: dict[str, Any] = {PROGRAMS_PER_SECTION: True,
                             PROGRAM_OF_OP: tuple(phase[p] for p in sub.parent_op)}
    once = tuple(o for o, parent in enumerate(sub.parent_op) if parent not in split.microbatched)
    if num_microbatches > 1 and once:      # a sorted tuple: its repr keys the intra-op cache
        notes[ONCE_PER_STEP] = (num_microbatches, once)
    if recomputed and any(piece.phase == BACKWARD for piece in split.pieces_of(stage)):
        notes[RECOMPUTED] = tuple(o for o, parent in enumerate(sub.parent_op)
                                  if g.ops[parent].section is Section.FORWARD)
    marked = dataclasses.replace(sub.graph, annotations={**sub.graph.annotations, **notes})
    return dataclasses.replace(sub, graph=marked)


def plan_stages(graph: Graph, cluster: ClusterSpec, layout: StageLayout, *, num_microbatches: int,
                schedule: str, op_layer: Sequence[int | None] | None = None, memory_budget: float | None = None,
                solver: str = "ortools", time_limit_s: float | None = None, method_name: str = "pipeshard",
                method_options: dict[str, Any] | None = None, cache: IntraOpCache | None = None) -> StagedResult:
    """``cache``: where stage plans are looked up and kept (default: the process's ``SHARED_CACHE``)."""
    start = time.perf_counter()
    cache = cache if cache is not None else SHARED_CACHE
    if sum(layout.device_counts) > cluster.num_devices:
        raise ValueError(f"the stages use {sum(layout.device_counts)} devices but the cluster has "
                         f"{cluster.num_devices}")
    if num_microbatches > 1 and not any(op.section is Section.BACKWARD for op in graph.ops):
        raise ValueError("microbatching averages what each microbatch hands to the update, which is only right for "
                         "a training step: this step has no backward pass (take gradients with "
                         "autopar.value_and_grad / autopar.grad), so use num_microbatches=1")
    split = split_stages(graph, layout.layer_stage(), layout.num_stages, op_layer=op_layer)
    results, stage_plans, mb_times, apply_times, peaks = [], [], [], [], []
    offset = 0
    m = num_microbatches
    memo: dict[tuple[Any, ...], IntraOpResult] = {}
    limit = memory_budget if memory_budget is not None else float(cluster.device.memory_bytes)
    for s in range(layout.num_stages):
        n = layout.device_counts[s]
        sub = stage_subgraph(split, s, m, recomputed=layout.remat[s])
        keep = in_flight(schedule, layout.num_stages, m, s)
        structure = structure_key(sub.graph)
        key = (structure, n, layout.logical_meshes[s], keep, layout.remat[s], layout.batch_first(s))
        if key not in memo:   # structurally identical stages (the middle of a deep model) are planned once
            stage_method = layout.stage_method or (
                DataTensorShard(mesh_shape=layout.logical_meshes[s]) if layout.batch_first(s)
                else ShardParallel(mesh_shape=layout.logical_meshes[s]))
            try:
                memo[key] = _plan_stage(split, s, sub, structure, submesh_cluster(cluster, n), stage_method,
                                        keep, layout.remat[s], m, limit, solver, time_limit_s, cache)
            except InfeasibleMemoryError as e:
                a, b = layout.layer_ranges[s]
                raise InfeasibleMemoryError(f"stage {s} (layers {a}..{b - 1} on {n} devices): {e}",
                                            e.min_budget_bytes, e.budget_bytes) from e
        res = memo[key]
        results.append(res)
        specs = _parent_specs(sub, res)
        apply_t = _compute_of(res, sub, lambda o: o not in split.microbatched)
        again = frozenset(sub.graph.annotations.get(RECOMPUTED, ()))     # what the ILP charged twice, too
        recompute = res.intra.compute_of(res.solution.choices, again.__contains__) if again else 0.0
        transfer = _transfer_time(split, s, cluster, layout.device_counts)
        est = res.plan.estimate
        peak = est.peak_memory_bytes + _held_bytes(split, s, res, sub, keep, layout.remat[s], m)
        t_mb = max(est.step_time_s - apply_t, 0.0) + recompute + transfer
        mb_times.append(t_mb)
        apply_times.append(apply_t)
        peaks.append(peak)
        stage_est = Estimate(step_time_s=t_mb, compute_time_s=est.compute_time_s - apply_t + recompute,
                             comm_time_s=est.comm_time_s + transfer, bubble_fraction=0.0, flops=est.flops,
                             mfu=est.mfu, peak_memory_bytes=peak, comm_bytes=dict(est.comm_bytes),
                             collective_counts=dict(est.collective_counts))
        stage_plans.append(_stage_plan(s, sub, res, specs, tuple(range(offset, offset + n)), stage_est, split))
        offset += n
    if max(peaks) > limit:
        worst = max(range(len(peaks)), key=peaks.__getitem__)
        raise InfeasibleMemoryError(
            f"stage {worst} needs {format_bytes(peaks[worst])} per device with {m} microbatches in a "
            f"{schedule} schedule, over the {'budget' if memory_budget is not None else 'device memory'} of "
            f"{format_bytes(limit)}: use more stages, rematerialized stages (remat=True) or the 1f1b schedule",
            peaks[worst], limit)
    estimate = _pipeline_estimate(graph, split, results, [sp.estimate for sp in stage_plans], apply_times, peaks, m)
    options = dict(method_options or {})
    options.update({"num_microbatches": m, "schedule": schedule,
                    "stage_layers": [list(r) for r in layout.layer_ranges],
                    "remat": list(layout.remat)})
    search = {"search_time_s": time.perf_counter() - start, "solver": solver,
              "stages": [dict(r.plan.search) for r in results]}
    plan = Plan(method=method_name, method_options=options, mesh_shape=(sum(layout.device_counts),),
                axis_names=("devices",), cluster=cluster.to_dict(), stages=tuple(stage_plans), estimate=estimate,
                graph_fingerprint=graph_fingerprint(graph), search=search)
    return StagedResult(plan=plan, split=split, stages=tuple(results))


def _plan_stage(split: StageSplit, s: int, sub: Subgraph, structure: str, cluster: ClusterSpec,
                method: Method, keep: int, remat: bool, m: int, limit: float, solver: str,
                time_limit_s: float | None, cache: IntraOpCache) -> IntraOpResult:
    """The stage's fastest intra-op plan; when it, with what the microbatches in flight hold, is over ``limit``,
    planned again within ``limit`` by an ILP that counts those held values at the specs it chooses for them
    (``HELD_COPIES``: sharding the stash or the gradient sums shrinks every copy)."""
    res = cache.plan(structure, sub.graph, cluster, method, math.inf, solver, time_limit_s)
    if res.plan.estimate.peak_memory_bytes + _held_bytes(split, s, res, sub, keep, remat, m) <= limit:
        return res
    copies = _held_copies(split, s, sub, keep, remat, m)
    graph = dataclasses.replace(sub.graph, annotations={**sub.graph.annotations, HELD_COPIES: copies})
    tries = [(graph, limit)]
    if ONCE_PER_STEP in sub.graph.annotations:
        # the fastest plan with the update weighed as much as a microbatch: it shards the update's state where
        # the weighted one keeps it whole, and may fit where the re-planning ILP's memory row (one program
        # point, pessimistic) finds nothing (wresnet_2b, Manual3D dp 8, 12 microbatches: the row needs 15.5
        # GiB, this plan 14.96 GiB)
        plain = {k: v for k, v in sub.graph.annotations.items() if k != ONCE_PER_STEP}
        tries.append((dataclasses.replace(sub.graph, annotations=plain), math.inf))
    for g, budget in tries:
        try:
            got = cache.plan(structure, g, cluster, method, budget, solver, time_limit_s)
        except (InfeasibleMemoryError, SolverTimeLimitError):
            continue
        if got.plan.estimate.peak_memory_bytes + _held_bytes(split, s, got, sub, keep, remat, m) <= limit:
            return got
    return res     # reported by the caller with the stage's full need


def _held_bytes(split: StageSplit, s: int, res: IntraOpResult, sub: Subgraph, keep: int, remat: bool,
                m: int) -> float:
    """What the other microbatches in flight hold on stage ``s`` beyond ``res``'s one-microbatch peak (0 where
    ``res`` was planned with them, ``HELD_COPIES``, and its peak counts them already)."""
    if HELD_COPIES in res.intra.graph.annotations:
        return 0.0
    specs = _parent_specs(sub, res)
    return max(keep - 1, 0) * _stash_bytes(split, s, specs, res, remat) + (
        _averaged_bytes(split, s, specs, res) if m > 1 else 0.0)


def _parent_specs(sub: Subgraph, res: IntraOpResult) -> dict[int, ShardingSpec]:
    specs = res.intra.tensor_specs(res.solution.choices)
    return {sub.parent_tensor[t]: s for t, s in specs.items()}


def _compute_of(res: IntraOpResult, sub: Subgraph, which: Any) -> float:
    """Compute time of the stage's ops (parent op ids) that satisfy ``which``, under the chosen strategies: each
    op on its own, also where the ILP folded it into another op's node (an optimizer update following the
    gradient it reads, a backward elementwise op following a forward value)."""
    return res.intra.compute_of(res.solution.choices, lambda o: which(sub.parent_op[o]))


def _transfer_time(split: StageSplit, s: int, cluster: ClusterSpec, device_counts: Sequence[int]) -> float:
    """Per microbatch: receiving the values other stages send to stage ``s`` (activations forward, their
    gradients backward), each over the link between the two sub-meshes, spread over the smaller one."""
    g = split.graph
    start = [sum(device_counts[:i]) for i in range(len(device_counts))]
    total = 0.0
    received = {t for o in split.stage_ops(s) if o in split.microbatched for t in g.ops[o].inputs}
    for t in sorted(received):
        p = g.tensors[t].producer
        src = split.op_stage[p] if p is not None and p in split.microbatched else None
        if src is None or src == s:
            continue
        span = max(start[s] + device_counts[s], start[src] + device_counts[src]) - min(start[s], start[src])
        link = next(l for l in cluster.links if l.span >= span)
        total += g.tensors[t].nbytes / (link.bandwidth * min(device_counts[s], device_counts[src])) + link.latency
    return total


def _bytes(split: StageSplit, tids: Sequence[int], specs: dict[int, ShardingSpec], res: IntraOpResult) -> float:
    g, mesh = split.graph, res.intra.mesh
    total = 0.0
    for t in tids:
        tt = g.tensors[t]
        spec = specs.get(t)
        total += tt.nbytes if spec is None else spec.bytes_per_device(tt.shape, tt.dtype, mesh)
    return float(total)


def _stash_tensors(split: StageSplit, s: int, remat: bool) -> list[int]:
    """What one in-flight microbatch keeps on stage ``s`` between its forward and backward (parent ids)."""
    g = split.graph
    fwd = next((p for p in split.pieces if p.stage == s and p.phase == FORWARD), None)
    bwd = next((p for p in split.pieces if p.stage == s and p.phase == BACKWARD), None)
    if fwd is None or bwd is None:
        return []
    f_ops, b_ops = set(fwd.ops), set(bwd.ops)
    if remat:
        made = {t for o in f_ops for t in g.ops[o].outputs}
        kept = {t for o in f_ops for t in g.ops[o].inputs
                if t not in made and t in split.batch_dependent and g.tensors[t].role is not Role.CONSTANT}
    else:
        kept = {t for o in b_ops for t in g.ops[o].inputs
                if g.tensors[t].producer in f_ops and t in split.batch_dependent}
    return sorted(kept)


def _averaged_tensors(split: StageSplit, s: int) -> list[int]:
    """The sums over microbatches stage ``s`` keeps for its update (parent ids)."""
    producers = ((t, split.graph.tensors[t].producer) for t in split.averaged)
    return [t for t, p in producers if p is not None and split.op_stage[p] == s]


def _stash_bytes(split: StageSplit, s: int, specs: dict[int, ShardingSpec], res: IntraOpResult,
                 remat: bool) -> float:
    """Bytes one in-flight microbatch keeps on stage ``s`` between its forward and backward."""
    return _bytes(split, _stash_tensors(split, s, remat), specs, res)


def _averaged_bytes(split: StageSplit, s: int, specs: dict[int, ShardingSpec], res: IntraOpResult) -> float:
    return _bytes(split, _averaged_tensors(split, s), specs, res)


def _held_copies(split: StageSplit, s: int, sub: Subgraph, keep: int, remat: bool, m: int) -> dict[int, float]:
    """``HELD_COPIES`` of stage ``s`` (local tensor ids): keep - 1 more of each stashed value, one gradient sum."""
    local = sub.sub_tensor
    copies: dict[int, float] = {}
    for t in _stash_tensors(split, s, remat) if keep > 1 else []:
        if t in local:
            copies[local[t]] = copies.get(local[t], 0.0) + keep - 1
    for t in _averaged_tensors(split, s) if m > 1 else []:
        if t in local:
            copies[local[t]] = copies.get(local[t], 0.0) + 1
    return copies


def _pipeline_estimate(graph: Graph, split: StageSplit, results: Sequence[IntraOpResult],
                       stage_ests: Sequence[Estimate], apply_times: list[float], peaks: list[float],
                       m: int) -> Estimate:
    """The step of the stages' per-microbatch estimates; its compute and communication times are device-time
    totals (each stage's per-microbatch part m times, its update once), not parts of the step time."""
    from autopar.ir.flops import op_flops

    mb_times = [e.step_time_s for e in stage_ests]
    step = pipeline_time(mb_times, m) + max(apply_times, default=0.0)
    mb_flops = sum(op_flops(graph, graph.ops[o]) for o in split.microbatched)
    flops = mb_flops * m + sum(op_flops(graph, op) for op in graph.ops if op.id not in split.microbatched)
    comm: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for r in results:
        comm.update({k: v * m for k, v in r.plan.estimate.comm_bytes.items()})
        counts.update({k: v * m for k, v in r.plan.estimate.collective_counts.items()})
    compute = sum(e.compute_time_s * m + a for e, a in zip(stage_ests, apply_times))
    comm_t = sum(e.comm_time_s for e in stage_ests) * m
    mfu = _mfu(results, flops, step)
    return Estimate(step_time_s=step, compute_time_s=compute, comm_time_s=comm_t,
                    bubble_fraction=bubble_of(mb_times, m), flops=flops, mfu=mfu,
                    peak_memory_bytes=max(peaks), comm_bytes=dict(comm), collective_counts=dict(counts))


def _mfu(results: Sequence[IntraOpResult], flops: float, step: float) -> float:
    """Achieved flops over the peak of every device in the plan."""
    peak = 0.0
    for r in results:
        e = r.plan.estimate
        if e.mfu > 0 and e.step_time_s > 0:
            peak += e.flops / (e.mfu * e.step_time_s)     # the stage's devices' combined peak
    return flops / (step * peak) if step > 0 and peak > 0 else 0.0


def _stage_plan(s: int, sub: Subgraph, res: IntraOpResult, specs: dict[int, ShardingSpec],
                devices: tuple[int, ...], est: Estimate, split: StageSplit) -> StagePlan:
    g = sub.graph
    rep = lambda t: ShardingSpec.replicated(len(g.tensors[t].shape)).dims  # noqa: E731
    local = res.intra.tensor_specs(res.solution.choices)
    spec_of = lambda t: local[t].dims if t in local else rep(t)  # noqa: E731
    fixed = set(fixed_tensors(res.intra))
    op_specs = []
    for o in range(len(g.ops)):
        outs = g.ops[o].outputs
        if any(t in fixed for t in outs):
            op_specs.append((sub.parent_op[o], tuple(spec_of(t) for t in outs)))
    from autopar.planner.estimate import operand_specs

    # operands the stage's plan reshards before their reader, keyed by the reader's op id in the split graph
    # (extract keeps each op's operand order), as the single-stage plan records them
    resharded = tuple((sub.parent_op[o], k, w.dims) for o, k, w in operand_specs(res.intra, res.solution.choices))
    mesh = res.intra.mesh
    return StagePlan(name=f"stage{s}", mesh_shape=mesh.shape, axis_names=mesh.axis_names, devices=devices,
                     input_specs=tuple((g.tensors[t].name, spec_of(t)) for t in g.inputs),
                     output_specs=tuple(spec_of(t) for t in g.outputs), op_specs=tuple(op_specs), estimate=est,
                     operand_specs=resharded)


def stage_specs(plan: Plan, split: StageSplit) -> tuple[list[dict[int, ShardingSpec]], list[set[int]]]:
    """Per stage: the spec of every parent tensor it touches and the pinned ones (for emission/replay)."""
    g = split.graph
    all_specs, all_fixed = [], []
    for s, st in enumerate(plan.stages):
        sub = stage_subgraph(split, s)
        specs: dict[int, ShardingSpec] = {}
        for t, (name, spec) in zip(sub.graph.inputs, st.input_specs):
            specs[sub.parent_tensor[t]] = ShardingSpec(spec)
        for t, spec in zip(sub.graph.outputs, st.output_specs):
            specs.setdefault(sub.parent_tensor[t], ShardingSpec(spec))
        fixed: set[int] = set()
        for op_id, outs in st.op_specs:
            for t, spec in zip(g.ops[op_id].outputs, outs):
                specs[t] = ShardingSpec(spec)
                fixed.add(t)
        all_specs.append(specs)
        all_fixed.append(fixed)
    return all_specs, all_fixed

