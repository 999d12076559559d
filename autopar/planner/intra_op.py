"""Build the intra-op ShardingProblem of a Graph on one logical mesh, and read a Solution back.

Consumes: a Graph, a LogicalMesh with links, a device (roofline numbers), options (memory budget, method
constraints). Produces: ``IntraOpProblem`` — the ShardingProblem plus, for every tensor, which ILP node
decides its sharding and the spec each of that node's strategies gives it.

Nodes are inputs (one strategy per valid spec of the input) and ops with their rule strategies. Trivial
ops (elementwise, converts, selects on operands of the output's shape) are merged into the node that
produces their main operand: they take its spec, add their sharded compute time to its cost, and their
other operands become edges into it. Edge matrices are resharding times from ``autopar.sharding.reshard``
with collective times from ``autopar.cost_models.collectives``; node costs are roofline compute time of
the op split ``work_shards`` ways plus the time of the strategy's own collectives.

Memory: one group at the program point where live memory peaks when everything is replicated (arguments,
outputs and the temporaries live there), each node contributing the per-device bytes of its tensors in
that set, plus the copies other microbatches hold (``HELD_COPIES``). The group is checked against the budget
(or the device capacity when no budget is given). In a microbatched stage (``ONCE_PER_STEP``) the update
ops' own costs weigh 1/m; in a rematerialized stage (``RECOMPUTED``) the forward ops' compute counts twice.
Refuses: nothing silently: ops without rules are planned replicated by the rule table (with a warning).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, cast

import numpy as np

from autopar.cost_models.collectives import collective_time
from autopar.cost_models.compute import op_cost
from autopar.cost_models.traffic import traffic_key
from autopar.cost_models.memory import FUSIBLE
from autopar.ir.graph import Graph, Role
from autopar.planner.layer_ties import input_ties, op_ties, state_ties
from autopar.planner.memory_row import HELD_COPIES, memory_groups, replicated_peak
from autopar.planner.problem import Edge, Matrix, ShardingProblem
from autopar.sharding.reshard import CollectiveStep, reshard_steps
from autopar.sharding.rules import strategies_for
from autopar.sharding.spec import ShardingSpec
from autopar.sharding.strategy import Strategy, finalize

if TYPE_CHECKING:
    from autopar.sharding.mesh import LogicalMesh

# Graph annotation of a microbatched program (``planner.pipeshard.stage_subgraph``): ``(m, sorted op ids)``: the ops
# that run once per step (the update) while the others run once for each of the m microbatches. The ILP
# weighs their costs by 1 / m, so it trades per-microbatch time against update time as the step does.
ONCE_PER_STEP = "once_per_step"
# Graph annotation of a rematerialized stage (``planner.pipeshard.plan_stages``): the sorted ids of the forward
# ops its backward program runs again. The ILP adds their compute once more, as the stage's estimate does, so
# it does not prefer a plan that is cheaper before recomputation and dearer after it.
RECOMPUTED = "recomputed"

# Two-operand contractions and lookups keep nodes of their own even with a single owned operand.
NOT_MAPPED = frozenset({"dot_general", "conv_general_dilated", "gather", "scatter", "scatter-add",
                        "dynamic_update_slice", "concatenate", "sort"})
# Ops merged into the producer of their main operand (they compute elementwise over it).
FOLLOWERS = FUSIBLE - frozenset({"broadcast_in_dim", "reshape", "squeeze", "expand_dims", "iota"})


@dataclass(frozen=True)
class NodeInfo:
    kind: str                          # "input" | "op"
    key: int                           # tensor id for inputs, op id for ops
    label: str
    strategies: tuple[Strategy, ...]
    merged_ops: tuple[int, ...] = ()   # followers folded into this node
    tied_ops: tuple[int, ...] = ()     # ops of identical layers that share this node's choice


@dataclass(frozen=True)
class ReshardSite:
    """Tensor ``tensor`` must arrive at node ``node`` as ``wanted[strategy of node]`` (None: any spec)."""

    tensor: int
    node: int
    wanted: tuple[ShardingSpec | None, ...]
    op: int = -1                       # the consuming op (program position of the resharded copy)


@dataclass(frozen=True)
class IntraOpProblem:
    graph: Graph
    mesh: "LogicalMesh"
    problem: ShardingProblem
    nodes: tuple[NodeInfo, ...]
    tensor_owner: Mapping[int, tuple[int, tuple[ShardingSpec, ...]]]   # tid -> (node, spec per strategy)
    compute_costs: tuple[tuple[float, ...], ...]                       # per node, compute part of node cost
    # op id -> (its node, its compute time per strategy of that node): a node's compute split by the ops
    # folded into it (followers, tied ops), so a part of the graph (a section) can be timed on its own
    op_compute: Mapping[int, tuple[int, np.ndarray]] = field(default_factory=dict)
    sites: tuple["ReshardSite", ...] = ()
    followers: Mapping[int, tuple[int, tuple[Strategy, ...]]] = field(default_factory=dict)
    peak_point: int | None = None
    stats: Mapping[str, Any] = field(default_factory=dict)

    def tensor_specs(self, choices: Sequence[int]) -> dict[int, ShardingSpec]:
        """The spec of every non-constant tensor under the chosen strategies."""
        return {t: specs[choices[node]] for t, (node, specs) in self.tensor_owner.items()}

    def compute_of(self, choices: Sequence[int], which: Callable[[int], bool]) -> float:
        """Compute time of the ops (ids of this graph) that satisfy ``which`` under ``choices``, each on its own
        also where it was folded into another op's node."""
        return float(sum(vec[choices[v]] for o, (v, vec) in self.op_compute.items() if which(o)))

    def weighted_time(self, step_time_s: float, choices: Sequence[int]) -> float:
        """``step_time_s`` of the program as the ILP weighs it: the update's compute counted 1 / m times
        (``ONCE_PER_STEP``), the recomputed forward's compute once more (``RECOMPUTED``); ``step_time_s`` itself
        where the graph has neither."""
        m, once = once_per_step(self.graph)
        again = frozenset(self.graph.annotations.get(RECOMPUTED, ()))
        t = step_time_s + (self.compute_of(choices, again.__contains__) if again else 0.0)
        if m <= 1 or not once:
            return t
        return t - (1.0 - 1.0 / m) * self.compute_of(choices, once.__contains__)


def once_per_step(graph: Graph) -> tuple[int, frozenset[int]]:
    """``ONCE_PER_STEP`` of ``graph``: (m, the update's op ids); (1, nothing) on a graph without it."""
    m, ids = graph.annotations.get(ONCE_PER_STEP, (1, ()))
    return int(m), frozenset(ids)


# Strategies kept per op, by the number of mesh axes of size > 1: the rule order puts the most divided,
# communication-free strategies first, and a 3-axis mesh otherwise gives hundreds per contraction.
STRATEGY_CAPS = {1: 256, 2: 128, 3: 32}


def strategy_cap(mesh: "LogicalMesh") -> int:
    return STRATEGY_CAPS.get(sum(1 for s in mesh.shape if s > 1), 32)


def capped_strategies(strategies: Sequence[Strategy], mesh: "LogicalMesh") -> list[Strategy]:
    """``finalize`` under ``strategy_cap``, plus, on meshes of several axes, every dropped strategy that uses
    all the mesh's axes (size > 1) together, in mesh order, wherever it uses any: what a 1-D plan does,
    embedded (``shard_parallel.embed_choices``), so a 1-D plan is always a plan of every mesh (a warm start
    the cap cannot lose). Adding strategies never raises the optimum."""
    kept = finalize(strategies, cap=strategy_cap(mesh))
    group = tuple(a for a, n in zip(mesh.axis_names, mesh.shape) if n > 1)
    if len(group) < 2:
        return kept
    have = {s.key() for s in kept}

    def grouped(spec: ShardingSpec | None) -> bool:
        return spec is None or (all(not d or d == group for d in spec.dims) and spec.partial in ((), group))

    extra = [s for s in finalize(strategies, cap=len(strategies) + 1) if s.key() not in have
             and all(grouped(x) for x in (*s.in_specs, *s.out_specs)) and all(c.axes == group for c in s.comm)]
    return kept + extra


def candidate_specs(shape: Sequence[int], mesh: "LogicalMesh") -> list[ShardingSpec]:
    """Every spec that assigns each mesh axis (size > 1) to at most one dim, dividing it; replicated first."""
    axes = [a for a, s in zip(mesh.axis_names, mesh.shape) if s > 1]
    ndim = len(shape)
    out: list[ShardingSpec] = []
    seen = set()
    for assign in itertools.product(range(-1, ndim), repeat=len(axes)):
        dims: list[tuple[str, ...]] = [() for _ in range(ndim)]
        for axis, d in zip(axes, assign):
            if d >= 0:
                dims[d] = dims[d] + (axis,)
        spec = ShardingSpec(tuple(dims))
        if spec in seen or not spec.divides(shape, mesh):
            continue
        seen.add(spec)
        out.append(spec)
    out.sort(key=lambda s: (len(s.axes()), str(s)))
    return out


class _CostCache:
    def __init__(self, mesh: "LogicalMesh") -> None:
        self.mesh = mesh
        self._reshard: dict[tuple[Any, ...], float] = {}
        self._coll: dict[tuple[Any, ...], float] = {}
        self._template: dict[tuple[ShardingSpec, ShardingSpec], tuple[tuple[str, int, tuple[str, ...]], ...]] = {}

    def collective(self, step: CollectiveStep) -> float:
        return self.collective_of(step.kind, step.nbytes, step.axes)

    def reshard(self, src: ShardingSpec, dst: ShardingSpec, shape: tuple[int, ...], dtype: Any) -> float:
        """Seconds of ``reshard_steps(src, dst, shape, dtype)``.

        The steps' kinds and axes depend on the two specs only, and each step's ``nbytes`` is the tensor's
        bytes over the product of the axes splitting it at that step (every intermediate spec divides the
        shape: its splits are prefixes of the source's or the destination's). So the steps are computed
        once per spec pair, as (kind, divisor, axes), and scaled to each shape exactly (integer division)."""
        if src == dst:
            return 0.0
        key = (src, dst, shape, dtype)
        hit = self._reshard.get(key)
        if hit is None:
            total = math.prod(shape) * np.dtype(dtype).itemsize
            template = self._template.get((src, dst))
            if template is None:
                steps = reshard_steps(src, dst, shape, dtype, self.mesh)
                hit = sum(self.collective(s) for s in steps)
                if total > 0 and all(s.nbytes > 0 and total % s.nbytes == 0 for s in steps):
                    self._template[(src, dst)] = tuple((s.kind, total // s.nbytes, s.axes) for s in steps)
            else:
                hit = sum(self.collective_of(kind, total // div, axes) for kind, div, axes in template)
            self._reshard[key] = hit
        return hit

    def collective_of(self, kind: str, nbytes: int, axes: tuple[str, ...]) -> float:
        key = (kind, nbytes, axes)
        if key not in self._coll:
            self._coll[key] = collective_time(kind, nbytes, self.mesh.axis_links(axes))
        return self._coll[key]


def output_buffer_bytes(s: Strategy, k: int, t: Any, mesh: "LogicalMesh") -> float:
    """Per-device bytes of output ``k`` of an op run with strategy ``s``, as XLA holds it.

    A partial sum resolved by reduce-scatter keeps its full (pre-scatter) buffer: XLA's CPU pipeline emits
    an all-reduce and fuses the slice of each shard into the readers, so the all-reduced buffer lives as
    long as the scattered value (measured in tests/test_plans.py: an MLP whose activations are
    reduce-scattered holds every all-reduced [512, 2048] until the backward pass). Counting it is
    conservative where XLA makes a real reduce-scatter (GPU).
    """
    own = float(s.out_specs[k].bytes_per_device(t.shape, t.dtype, mesh))
    if len(s.out_specs) == 1:
        for c in s.comm:
            if c.kind == "reduce-scatter":
                own = max(own, float(c.nbytes))
    return own


def _input_strategy(spec: ShardingSpec) -> Strategy:
    return Strategy(name=f"input {spec}", in_specs=(), out_specs=(spec,), work_shards=1)


@dataclass(frozen=True)
class GraphAnalysis:
    """What the builder needs from the graph that no mesh changes: layer ties and the replicated peak.

    Computed by ``analyse_graph``; ``plan_intra_op`` computes it once and passes it to every mesh's build."""

    tie_layers: bool
    ties: Mapping[int, int]            # op id -> representative op id
    in_ties: Mapping[int, int]         # input tensor id -> representative input tensor id
    resident: frozenset[int]           # tensors live at the replicated peak (arguments, outputs, temporaries)
    peak_point: int | None             # the op after which the replicated live set peaks


def analyse_graph(graph: Graph, tie_layers: bool = True, platform: str = "") -> GraphAnalysis:
    """The mesh-independent part of ``build_intra_op`` (see ``GraphAnalysis``) for a device of kind
    ``platform``."""
    ties = op_ties(graph) if tie_layers else {}
    in_ties = input_ties(graph, ties) if tie_layers else {}
    in_ties.update(state_ties(graph, in_ties) if tie_layers else {})
    resident, peak_point = replicated_peak(graph, platform)
    return GraphAnalysis(tie_layers, ties, in_ties, resident, peak_point)


def build_intra_op(graph: Graph, mesh: "LogicalMesh", device: Any, *,
                   memory_budget: float | None = None,
                   input_filter: Callable[[Any, ShardingSpec], bool] | None = None,
                   tie_layers: bool = True, unfollowed: frozenset[int] = frozenset(),
                   analysis: GraphAnalysis | None = None) -> IntraOpProblem:
    """The ShardingProblem of ``graph`` on ``mesh`` (see the module docstring).

    ``unfollowed``: tensors whose readers get nodes of their own instead of following them (ZeRO-1 keeps
    the gradients whole while the optimizer state they update is split).

    ``tie_layers``: ops (and the parameters they read) of structurally identical layers share one node
    (``autopar.planner.layer_ties``), so the problem grows with distinct layer kinds, not with depth.

    ``analysis``: ``analyse_graph(graph, tie_layers, device.kind)``, when the caller builds several meshes of
    one graph.
    """
    cache = _CostCache(mesh)
    m_steps, once = once_per_step(graph)

    again = frozenset(graph.annotations.get(RECOMPUTED, ()))

    def weight(op_id: int) -> float:
        """The ILP's weight of an op's own cost: 1 / m for the update of an m-microbatch step."""
        return 1.0 / m_steps if op_id in once else 1.0

    def recompute(op_id: int) -> float:
        """The ILP's extra weight of an op's compute: 1 for a forward op a rematerialized stage runs again."""
        return 1.0 if op_id in again else 0.0
    if analysis is None or analysis.tie_layers != tie_layers:
        analysis = analyse_graph(graph, tie_layers, device.kind)
    ties, in_ties = analysis.ties, analysis.in_ties
    node_of_op: dict[int, int] = {}
    tied: dict[int, list[int]] = defaultdict(list)
    nodes: list[NodeInfo] = []
    costs: list[np.ndarray] = []
    compute: list[np.ndarray] = []
    owner: dict[int, tuple[int, tuple[ShardingSpec, ...]]] = {}
    edges: dict[tuple[int, int], np.ndarray] = {}
    merged: dict[int, list[int]] = defaultdict(list)
    sites: list[ReshardSite] = []
    pending: list[tuple[int, np.ndarray]] = []
    held: dict[int, np.ndarray] = {}   # tensors whose buffer is not just their spec's share (reduce-scatter)
    op_compute: dict[int, tuple[int, np.ndarray]] = {}

    def add_edge(u: int, v: int, matrix: np.ndarray) -> None:
        if u == v:
            costs[v] += np.diag(matrix)
        elif (u, v) in edges:
            edges[(u, v)] = edges[(u, v)] + matrix
        else:
            edges[(u, v)] = matrix

    # Tied layers repeat the same (source specs, wanted specs) pairs: matrices are built once per distinct
    # pair, keyed by the identity of the spec tuples (kept alive in the cache, so ids are never reused).
    edge_cache: dict[tuple[Any, ...], tuple[Any, Any, np.ndarray | None]] = {}

    def edge_matrix(tid: int, wanted: Sequence[ShardingSpec | None], consumer: int | None = None,
                    wanted_key: Any = None) -> tuple[int, np.ndarray] | None:
        """Resharding from tensor ``tid``'s owner strategies to the wanted spec of each consumer strategy.

        ``wanted_key``: a hashable that determines ``wanted`` (with the tensor's shape), or None."""
        if tid not in owner:
            return None  # constants: replicated, slicing them is free
        t = graph.tensors[tid]
        u, src_specs = owner[tid]
        sites.append(ReshardSite(tid, len(nodes) if consumer is None else consumer, tuple(wanted), op_id))
        key = None if wanted_key is None else (id(src_specs), wanted_key, t.shape, t.dtype)
        if key is not None and key in edge_cache:
            m = edge_cache[key][2]
            return None if m is None else (u, m)
        uniq_src = list(dict.fromkeys(src_specs))
        uniq_dst = list(dict.fromkeys(w for w in wanted if w is not None))
        m = None
        if uniq_dst:
            table = np.array([[cache.reshard(s, d, t.shape, t.dtype) for d in uniq_dst] for s in uniq_src])
            si = np.array([uniq_src.index(s) for s in src_specs])
            m = np.zeros((len(src_specs), len(wanted)))
            for j, w in enumerate(wanted):
                if w is not None:
                    m[:, j] = table[si, uniq_dst.index(w)]
        if key is not None:
            edge_cache[key] = (src_specs, wanted_key, m)
        return None if m is None else (u, m)

    # ---- inputs -------------------------------------------------------------------------------------
    for tid in sorted(graph.inputs, key=lambda t: t in in_ties):
        t = graph.tensors[tid]
        if tid in owner:
            continue
        rep_t = in_ties.get(tid)
        if rep_t is not None and rep_t in owner:
            owner[tid] = owner[rep_t]
            continue
        allowed = [s for s in candidate_specs(t.shape, mesh) if input_filter is None or input_filter(t, s)]
        if not allowed:
            allowed = [ShardingSpec.replicated(len(t.shape))]
        v = len(nodes)
        nodes.append(NodeInfo("input", tid, t.name or repr(t), tuple(_input_strategy(s) for s in allowed)))
        costs.append(np.zeros(len(allowed)))
        compute.append(np.zeros(len(allowed)))
        owner[tid] = (v, tuple(allowed))

    followers: dict[int, tuple[int, tuple[Strategy, ...]]] = {}

    # Tied ops have the same primitive, shapes, dtypes and params (``layer_ties``): their rule strategies
    # and roofline costs are computed once, for the representative (scalar constants, which the roofline
    # skips, are part of the key).
    rule_cache: dict[int, list[Strategy]] = {}
    cost_cache: dict[tuple[Any, ...], float] = {}
    vec_cache: dict[tuple[Any, ...], tuple[Any, np.ndarray]] = {}
    prop_cache: dict[tuple[Any, ...], tuple[Any, tuple[Strategy, ...] | None, tuple[ShardingSpec, ...]]] = {}
    outs_cache: dict[tuple[int, int], tuple[ShardingSpec, ...]] = {}
    held_cache: dict[tuple[int, int], np.ndarray | None] = {}   # strategies of tied ops have the same shapes

    def rep_of(op: Any) -> int:
        return ties.get(op.id, op.id)

    def rules_of(op: Any) -> list[Strategy]:
        r = rep_of(op)
        if r not in rule_cache:
            rule_cache[r] = strategies_for(graph, op, mesh)
        return rule_cache[r]

    def cost_key(op: Any) -> tuple[Any, ...]:
        """Ops with equal keys have equal roofline costs. Elementwise followers: the roofline reads only the
        primitive, its operands' shapes, dtypes and constness (no params) and which of them fusion sends
        through memory (``traffic_key``), so every layer's and every optimizer update's copy shares one
        entry; other ops: their layer-tie representative (and traffic pattern)."""
        consts = tuple(graph.tensors[t].value is not None for t in op.inputs)
        if op.primitive in FOLLOWERS and not op.subgraphs:
            sig = tuple((graph.tensors[t].shape, graph.tensors[t].dtype) for t in (*op.inputs, *op.outputs))
            return (op.primitive, sig, consts, traffic_key(graph, op))
        return (rep_of(op), consts, traffic_key(graph, op))

    def compute_time(op: Any, shards: int, key: tuple[Any, ...] | None = None) -> float:
        key = (key or cost_key(op), shards)
        hit = cost_cache.get(key)
        if hit is None:
            hit = cost_cache[key] = op_cost(graph, op, device, shards).time
        return hit

    def follower_costs(op: Any, specs: tuple[ShardingSpec, ...]) -> np.ndarray:
        key = cost_key(op)
        vkey = (key, id(specs))
        if vkey not in vec_cache:
            vec_cache[vkey] = (specs, np.array([compute_time(op, s.num_shards(mesh), key) for s in specs]))
        return vec_cache[vkey][1]

    def strategy_cost(op: Any, s: Strategy) -> tuple[float, float]:
        comp = compute_time(op, s.work_shards)
        return comp, comp + sum(cache.collective(c) for c in s.comm)

    # ---- ops ----------------------------------------------------------------------------------------
    op_id = -1
    for op in graph.ops:
        op_id = op.id
        outs = [graph.tensors[o] for o in op.outputs]
        visible = owner if not unfollowed or not unfollowed.intersection(op.inputs) else {
            t: x for t, x in owner.items() if t not in unfollowed}
        mapped = _mapped_operand(graph, op, visible)
        chosen = None
        if mapped is not None:
            pkey = (rep_of(op), mapped[0], id(owner[mapped[1]][1]))
            if pkey not in prop_cache:
                got = _propagate(op, mapped, owner, rules_of(op))
                prop_cache[pkey] = (owner[mapped[1]][1], got,
                                    () if got is None else tuple(s.out_specs[0] for s in got))
            chosen = prop_cache[pkey][1]
        if mapped is not None and chosen is not None:
            # A layout op (reshape, transpose, broadcast, slice, ...) whose operand's every possible spec
            # passes through it unchanged and without communication follows its operand: no node of its own.
            k, main = mapped
            v, specs = owner[main]
            price = {s: strategy_cost(op, s) for s in dict.fromkeys(chosen)}
            op_compute[op.id] = (v, np.array([price[s][0] for s in chosen]))
            costs[v] += (np.array([price[s][1] for s in chosen]) * weight(op.id)
                         + op_compute[op.id][1] * recompute(op.id))
            compute[v] += op_compute[op.id][1]
            owner[op.outputs[0]] = (v, prop_cache[pkey][2])
            sites.append(ReshardSite(main, v, tuple(s.in_specs[k] for s in chosen), op.id))
            followers[op.id] = (v, chosen)
            merged[v].append(op.id)
            continue
        followed = _follow_operand(graph, op, visible)
        if followed is not None:
            v, specs = owner[followed]
            for o in op.outputs:
                owner[o] = (v, specs)
            shards_cost = follower_costs(op, specs)
            costs[v] += shards_cost * (weight(op.id) + recompute(op.id))
            compute[v] += shards_cost
            op_compute[op.id] = (v, shards_cost)
            merged[v].append(op.id)
            for tid in op.inputs:
                other = graph.tensors[tid].shape
                if tid == followed or len(other) != len(outs[0].shape):
                    continue  # scalars broadcast for free
                # an operand broadcast along size-1 dims (a bias [1, h] added to [b, h]) must arrive
                # split like the output on its full-size dims and whole on its size-1 dims
                wanted = specs if other == outs[0].shape else [
                    ShardingSpec(tuple(d if n == m else () for d, n, m in zip(sp.dims, other, outs[0].shape)))
                    for sp in specs]
                em = edge_matrix(tid, wanted, consumer=v, wanted_key=("follow", id(specs), outs[0].shape))
                if em is not None:
                    add_edge(em[0], v, em[1])
            continue
        rep = node_of_op.get(ties.get(op.id, -1))
        strategies = nodes[rep].strategies if rep is not None else tuple(
            capped_strategies(rules_of(op), mesh))
        v = rep if rep is not None else len(nodes)
        for k, tid in enumerate(op.inputs):
            wants: list[ShardingSpec | None] = [s.in_specs[k] if k < len(s.in_specs) else None for s in strategies]
            em = edge_matrix(tid, wants, consumer=v, wanted_key=("op", id(strategies), k))
            if em is not None:
                pending.append(em)
        comp = np.array([compute_time(op, s.work_shards) for s in strategies])
        comm = np.array([sum(cache.collective(c) for c in s.comm) for s in strategies])
        op_compute[op.id] = (v, comp)
        if rep is None:
            nodes.append(NodeInfo("op", op.id, f"op{op.id}:{op.primitive}", strategies))
            costs.append((comp + comm) * weight(op.id) + comp * recompute(op.id))
            compute.append(comp.copy())      # grows with the ops folded in; ``comp`` stays this op's own
            node_of_op[op.id] = v
        else:
            costs[v] += (comp + comm) * weight(op.id) + comp * recompute(op.id)
            compute[v] += comp
            tied[v].append(op.id)
        for k, o in enumerate(op.outputs):
            if (v, k) not in outs_cache:
                outs_cache[(v, k)] = tuple(s.out_specs[k] for s in strategies)
            owner[o] = (v, outs_cache[(v, k)])
            hkey = (id(strategies), k)
            if hkey not in held_cache:
                scatters = any(c.kind == "reduce-scatter" for s in strategies for c in s.comm)
                held_cache[hkey] = np.array([output_buffer_bytes(s, k, graph.tensors[o], mesh)
                                             for s in strategies]) if scatters else None
            buffers = held_cache[hkey]
            if buffers is not None:
                held[o] = buffers
        for u, m in pending:
            add_edge(u, v, m)
        pending.clear()

    nodes = [NodeInfo(n.kind, n.key, n.label, n.strategies, tuple(merged.get(i, ())), tuple(tied.get(i, ())))
             for i, n in enumerate(nodes)]
    memory, groups = memory_groups(graph, mesh, owner, [len(n.strategies) for n in nodes], analysis.resident,
                                    held, graph.annotations.get(HELD_COPIES, {}))
    peak_point = analysis.peak_point
    budget: float | None = memory_budget if memory_budget is not None else float(device.memory_bytes)
    if budget is not None and not np.isfinite(budget):
        budget = None  # memory_budget=math.inf: plan without a memory limit (what-if questions, search speed)
    problem = ShardingProblem(
        node_names=tuple(n.label for n in nodes),
        node_costs=tuple(tuple(c) for c in costs),
        edges=tuple(Edge(u, v, cast(Matrix, m)) for (u, v), m in sorted(edges.items())),   # rows converted there
        memory=tuple(tuple(m) for m in memory),
        memory_groups=groups,
        memory_budget=budget,
        aliases=_aliases(graph, owner),
    )
    stats = {"nodes": len(nodes), "edges": len(edges), "ops": len(graph.ops),
             "merged_ops": sum(len(m) for m in merged.values()), "tied_ops": sum(len(t) for t in tied.values()),
             "strategies": int(sum(len(n.strategies) for n in nodes))}
    return IntraOpProblem(graph, mesh, problem, tuple(nodes), owner, tuple(tuple(c) for c in compute), op_compute,
                          tuple(sites), followers, peak_point, stats)


def _propagate(op: Any, mapped: tuple[int, int], owner: Mapping[int, Any],
               rule_strategies: Sequence[Strategy]) -> tuple[Strategy, ...] | None:
    """For each strategy of the operand's owner, the op's communication-free strategy that takes the
    operand as it is (the first, in rule order); None when some operand spec has no such strategy."""
    k, main = mapped
    _, specs = owner[main]
    by_input: dict[ShardingSpec, Strategy] = {}
    for s in rule_strategies:
        spec = s.in_specs[k]
        if not s.comm and spec is not None:
            by_input.setdefault(spec, s)
    if any(p not in by_input for p in specs):
        return None
    return tuple(by_input[p] for p in specs)


def _mapped_operand(graph: Graph, op: Any, owner: Mapping[int, Any]) -> tuple[int, int] | None:
    """(operand index, tensor) of the one owned non-scalar operand of a single-output, one-operand op."""
    if len(op.outputs) != 1 or op.subgraphs or op.primitive in FOLLOWERS or op.primitive in NOT_MAPPED:
        return None
    found = [(k, t) for k, t in enumerate(op.inputs) if t in owner and graph.tensors[t].shape]
    if len(found) != 1 or len(set(op.inputs)) != len(op.inputs):
        return None
    others_small = all(graph.tensors[t].size <= 1 or t not in owner
                       for t in op.inputs if t != found[0][1])
    return found[0] if others_small else None


def _follow_operand(graph: Graph, op: Any, owner: Mapping[int, Any]) -> int | None:
    """The operand an elementwise-like op follows: the first owned operand with the output's shape."""
    if op.primitive not in FOLLOWERS or len(op.outputs) != 1:
        return None
    shape = graph.tensors[op.outputs[0]].shape
    for tid in op.inputs:
        if tid in owner and graph.tensors[tid].shape == shape:
            return tid
    return None


def _aliases(graph: Graph, owner: Mapping[int, tuple[int, tuple[ShardingSpec, ...]]]) -> tuple[Any, ...]:
    """A donated input and the output that reuses its buffer must share a sharding (matched in order)."""
    from autopar.planner.problem import Alias

    out: list[Alias] = []
    free = [t for t in graph.inputs if graph.tensors[t].donated]
    for o in graph.outputs:
        ot = graph.tensors[o]
        if o not in owner or graph.tensors[o].role in (Role.PARAMETER, Role.BATCH):
            continue
        match = next((i for i in free if graph.tensors[i].shape == ot.shape and graph.tensors[i].dtype == ot.dtype), None)
        if match is None:
            continue
        free.remove(match)
        (a, sa), (b, sb) = owner[match], owner[o]
        if a == b:
            continue
        pairs = tuple((i, j) for i, x in enumerate(sa) for j, y in enumerate(sb) if x == y)
        if pairs:
            out.append(Alias(a, b, pairs))
    return tuple(out)
