"""Intra-op planning over whole-cluster meshes: ShardParallel, DataParallel and ZeroParallel.

Consumes: a Graph, a ClusterSpec, a method. Produces: a single-stage ``Plan`` and the ``IntraOpProblem`` /
``Solution`` it came from. With ``mesh_shape=None`` every factorisation of the device count into 1, 2 or 3
axes is planned and the fastest predicted plan kept (ties keep the earlier, simpler mesh): the 1-D mesh
first (solved to optimality within ``time_limit_s``), then each other mesh within its share of the time
left before ``search_deadline_s``, warm-started from the best plan so far embedded into it
(``embed_choices``: axis x of (8,) becomes ("x", "y") of (2, 4)), so a time-limited mesh never does worse
than a plan already found. DataParallel and
ZeroParallel are constraints on the same ILP over a 1-D mesh: which input specs are allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from autopar.ir.graph import Graph, Role, Section
from autopar.methods import DataParallel, Method, ShardParallel, ZeroParallel
from autopar.plan import Estimate, Plan, StagePlan
from autopar.planner.estimate import estimate_plan, operand_specs
from autopar.planner.ilp import solve
from autopar.planner.intra_op import IntraOpProblem, analyse_graph, build_intra_op
from autopar.planner.problem import (Alias, InfeasibleMemoryError, Solution, SolverTimeLimitError, evaluate,
                                     format_bytes)
from autopar.sharding.mesh import LogicalMesh
from autopar.sharding.spec import ShardingSpec

AXIS_NAMES = ("x", "y", "z")
# Seconds one mesh's ILP may take before its best plan so far is used (with a warning); None: no limit.
DEFAULT_TIME_LIMIT_S = 60.0
# Seconds the whole multi-mesh search may take before the meshes not yet tried are skipped (with a warning).
DEFAULT_SEARCH_DEADLINE_S = 20.0
# Each mesh after the first gets the time left before the deadline divided by the meshes left, at least this.
MIN_MESH_LIMIT_S = 1.0


@dataclass(frozen=True)
class IntraOpResult:
    plan: Plan
    intra: IntraOpProblem
    solution: Solution


def mesh_candidates(n: int, max_axes: int = 3) -> list[tuple[int, ...]]:
    """Factorisations of ``n`` into 1..max_axes axes of size > 1 (1-D first, then 2-D, then 3-D)."""
    out: list[tuple[int, ...]] = [(n,)]
    divisors = [d for d in range(2, n) if n % d == 0]
    if max_axes >= 2:
        out += [(a, n // a) for a in divisors]
    if max_axes >= 3:
        out += [(a, b, n // (a * b)) for a in divisors for b in divisors
                if n % (a * b) == 0 and n // (a * b) > 1]
    return out


def graph_fingerprint(graph: Graph) -> str:
    """A hash of the program's structure: primitives in order and every input/output shape and dtype."""
    h = hashlib.sha256()
    for t in graph.input_tensors() + graph.output_tensors():
        h.update(f"{t.shape}{t.dtype}{t.role.value};".encode())
    for op in graph.ops:
        h.update(op.primitive.encode())
        h.update(str(len(op.inputs)).encode())
        for tid in op.outputs:
            h.update(str(graph.tensors[tid].shape).encode())
    return h.hexdigest()[:16]


def forward_inputs(graph: Graph) -> set[int]:
    """Inputs read by forward ops: the model parameters (as opposed to optimizer state)."""
    used: set[int] = set()
    for op in graph.ops:
        if op.section is Section.FORWARD:
            used.update(op.inputs)
    return {t for t in graph.inputs if t in used}


def _all_axes_filter(mesh: LogicalMesh) -> Callable[[Any, ShardingSpec], bool]:
    """Specs split over every mesh axis of size > 1 (a ZeRO shard)."""
    all_axes = set(a for a, s in zip(mesh.axis_names, mesh.shape) if s > 1)
    return lambda t, spec: set(spec.axes()) == all_axes


def input_filter_for(method: Method, graph: Graph, mesh: LogicalMesh) -> Callable[[Any, ShardingSpec], bool] | None:
    """The input-spec constraint a method puts on the ILP (None: free)."""
    if isinstance(method, ShardParallel) and getattr(method, "batch_axis", None) in mesh.axis_names:
        return _batch_on_axis(method.batch_axis, mesh)  # type: ignore[attr-defined]
    if not isinstance(method, (DataParallel, ZeroParallel)):
        return None
    all_axes = tuple(a for a, s in zip(mesh.axis_names, mesh.shape) if s > 1)
    model_params = forward_inputs(graph)
    stage = method.stage if isinstance(method, ZeroParallel) else 0

    def allow(t: Any, spec: ShardingSpec) -> bool:
        if t.role is Role.BATCH:
            return bool(spec.dims) and spec.dims[0] == all_axes if t.shape and t.shape[0] % mesh.num_devices == 0 \
                else spec.is_replicated
        sharded_state = stage >= 3 or (stage >= 1 and t.id not in model_params)
        if sharded_state and t.shape and any(d % mesh.num_devices == 0 for d in t.shape):
            return set(spec.axes()) == set(all_axes)
        return spec.is_replicated

    return allow


def _batch_on_axis(axis: str, mesh: LogicalMesh) -> Callable[[Any, ShardingSpec], bool]:
    """Megatron's layout (``Manual3D``): batch inputs split on ``axis`` alone (data parallel), others free."""
    size = mesh.shape[mesh.axis_names.index(axis)]

    def allow(t: Any, spec: ShardingSpec) -> bool:
        if t.role is not Role.BATCH or size == 1 or not t.shape or t.shape[0] % size:
            return True
        return bool(spec.dims) and spec.dims[0] == (axis,)

    return allow


def gradient_tensors(graph: Graph) -> set[int]:
    """The gradients the optimizer reads: values made before the optimizer section, read in it, shaped like a
    model parameter (``forward_inputs``)."""
    param_shapes = {graph.tensors[t].shape for t in forward_inputs(graph) if graph.tensors[t].role is not Role.BATCH}
    out: set[int] = set()
    for op in graph.ops:
        if op.section is not Section.OPTIMIZER:
            continue
        for t in op.inputs:
            tt = graph.tensors[t]
            made = tt.producer is not None and graph.ops[tt.producer].section is not Section.OPTIMIZER
            if made and tt.shape and tt.shape in param_shapes:
                out.add(t)
    return out


def state_outputs(graph: Graph) -> dict[int, int]:
    """output tensor -> the state input it replaces: a train step returns its new state in the order of the
    old one, so each non-batch input is matched, in order, with the next output of its shape and dtype."""
    outs = [o for o in graph.outputs if graph.tensors[o].shape]
    out: dict[int, int] = {}
    k = 0
    for i in graph.inputs:
        t = graph.tensors[i]
        if t.role is Role.BATCH or not t.shape:
            continue
        for j in range(k, len(outs)):
            o = graph.tensors[outs[j]]
            if o.shape == t.shape and o.dtype == t.dtype and outs[j] not in out:
                out[outs[j]] = i
                k = j + 1
                break
    return out


def restrict_tensors(ip: IntraOpProblem, rules: Mapping[int, Callable[[ShardingSpec], bool]]) -> IntraOpProblem:
    """``ip`` with the node owning each tensor of ``rules`` limited to the strategies whose spec of that
    tensor the rule allows.

    Each limit is an ``Alias`` with the node of fewest strategies listing only the allowed strategies, which
    the ILP's presolve turns into removed strategies (exact; brute force and every backend honour it). A
    tensor none of whose specs is allowed (its dims do not divide) keeps every strategy."""
    p = ip.problem
    if p.num_nodes < 2:
        return ip
    aliases = list(p.aliases)
    for tid, allow in sorted(rules.items()):
        if tid not in ip.tensor_owner:
            continue
        v, specs = ip.tensor_owner[tid]
        ok = [i for i, s in enumerate(specs) if allow(s)]
        if not ok or len(ok) == len(specs):
            continue
        b = min((u for u in range(p.num_nodes) if u != v), key=lambda u: (len(p.node_costs[u]), u))
        aliases.append(Alias(v, b, tuple((i, j) for i in ok for j in range(len(p.node_costs[b])))))
    return dataclasses.replace(ip, problem=dataclasses.replace(p, aliases=tuple(aliases)))


def zero_rules(method: ZeroParallel, graph: Graph, mesh: LogicalMesh) -> dict[int, Callable[[ShardingSpec], bool]]:
    """What ZeRO fixes beyond the inputs: the new state is sharded like the old (outputs follow their
    inputs), and the gradients are all-reduced (stage 1: every device holds all of them) or reduce-scattered
    onto the shard of the optimizer state that consumes them (stages 2 and 3)."""
    allow_in = input_filter_for(method, graph, mesh)
    assert allow_in is not None
    shard = _all_axes_filter(mesh)
    rules: dict[int, Callable[[ShardingSpec], bool]] = {}
    def sharded_like(t: Any) -> Callable[[ShardingSpec], bool]:
        return lambda spec: shard(t, spec)

    def allowed_like(t: Any) -> Callable[[ShardingSpec], bool]:
        return lambda spec: allow_in(t, spec)

    def whole(spec: ShardingSpec) -> bool:
        return spec.is_replicated

    for g in gradient_tensors(graph):
        rules[g] = sharded_like(graph.tensors[g]) if method.stage >= 2 else whole
    for o, i in state_outputs(graph).items():
        rules[o] = allowed_like(graph.tensors[i])
    return rules


def lower_bound(ip: IntraOpProblem) -> float:
    """A bound no plan of ``ip`` beats: every node's cheapest strategy plus every edge's cheapest entry."""
    p = ip.problem
    return float(sum(min(c) for c in p.node_costs) + sum(min(min(r) for r in e.cost) for e in p.edges))


def plan_intra_op(graph: Graph, cluster: Any, method: Method, *, memory_budget: float | None = None,
                  solver: str = "ortools", time_limit_s: float | None = None,
                  search_deadline_s: float | None = DEFAULT_SEARCH_DEADLINE_S,
                  warm: Sequence[tuple[IntraOpProblem, Solution]] = ()) -> IntraOpResult:
    """Plan ``graph`` on the meshes ``method`` allows and keep the fastest predicted plan.

    Meshes are tried 1-D first; a mesh whose ILP lower bound (``lower_bound``) is no better than the best
    objective so far is pruned without solving (exact). ``time_limit_s`` caps each ILP; after the first plan,
    each ILP is also capped by its share of the time left before ``search_deadline_s`` (the time left, less
    the builds still to come, over the meshes left; at least ``MIN_MESH_LIMIT_S``) and starts from
    ``warm_start`` (the solved plans embedded into its mesh). Once the deadline has passed, the remaining
    meshes are skipped with a warning. ``search`` in the plan records every mesh's outcome. ``warm``: solved
    plans of the same program at other sizes (``IntraOpCache``'s peers), warm starts for every mesh.
    """
    n = cluster.num_devices
    if isinstance(method, ShardParallel) and method.mesh_shape is not None:
        if math.prod(method.mesh_shape) != n:
            raise ValueError(f"mesh_shape {method.mesh_shape} has {math.prod(method.mesh_shape)} devices but "
                             f"{n} are planned for; use a shape whose product is {n}, e.g. {mesh_candidates(n)[:4]}")
        shapes = [method.mesh_shape]
    elif isinstance(method, (DataParallel, ZeroParallel)):
        shapes = [(n,)]
    else:
        shapes = mesh_candidates(n)
    if len(shapes[0]) > len(AXIS_NAMES):
        raise ValueError(f"mesh_shape {shapes[0]} has more than {len(AXIS_NAMES)} axes")

    if time_limit_s is None:
        time_limit_s = DEFAULT_TIME_LIMIT_S
    start = time.perf_counter()
    best: tuple[float, IntraOpProblem, Solution, Estimate] | None = None
    tried: list[dict[str, Any]] = []
    solved: list[tuple[IntraOpProblem, Solution]] = list(warm)
    deadline = None if search_deadline_s is None else start + search_deadline_s
    analysis = analyse_graph(graph, platform=cluster.device.kind)   # mesh-independent: once for all meshes
    for shape in shapes:
        if best is not None and deadline is not None and time.perf_counter() >= deadline:
            tried.append({"mesh": list(shape), "skipped": f"search_deadline_s={search_deadline_s} reached"})
            warnings.warn(f"mesh {shape} not planned: the search deadline of {search_deadline_s} s was reached "
                          "(raise search_deadline_s to try every mesh)", stacklevel=2)
            continue
        t_build = time.perf_counter()
        names = AXIS_NAMES[:len(shape)]
        mesh = LogicalMesh(shape, names, cluster.mesh_axes(shape, names))
        ip = build_intra_op(graph, mesh, cluster.device, memory_budget=memory_budget,
                            input_filter=input_filter_for(method, graph, mesh),
                            unfollowed=frozenset(gradient_tensors(graph)) if isinstance(method, ZeroParallel)
                            else frozenset(), analysis=analysis)
        if isinstance(method, ZeroParallel):
            ip = restrict_tensors(ip, zero_rules(method, graph, mesh))
        build_s = time.perf_counter() - t_build
        bound = lower_bound(ip)
        if best is not None and bound >= best[2].objective * (1 + 1e-9):
            # exact: every plan on this mesh costs at least ``bound``, no better than the best found
            tried.append({"mesh": list(shape), "pruned_lower_bound": bound, "nodes": ip.stats["nodes"],
                          "build_time_s": build_s})
            continue
        limit = time_limit_s
        if deadline is not None and best is not None:
            # the time left, less the builds still to come (guessed as long as this one), shared by the
            # meshes left
            left = len(shapes) - len(tried)
            share = (deadline - time.perf_counter() - build_s * (left - 1)) / left
            limit = max(MIN_MESH_LIMIT_S, min(limit, share))
        hint = warm_start(solved, ip)
        try:
            sol, est = _solve_within_memory(ip, cluster.device, solver, limit, hint)
        except (ValueError, SolverTimeLimitError) as e:
            tried.append({"mesh": list(shape), "error": str(e)})
            if isinstance(e, InfeasibleMemoryError):
                tried[-1]["min_budget_bytes"] = e.min_budget_bytes
            if isinstance(e, SolverTimeLimitError):
                tried[-1]["timed_out"] = True
            if len(shapes) == 1:
                raise
            continue
        tried.append({"mesh": list(shape), "step_time_s": est.step_time_s, "objective": sol.objective,
                      "nodes": ip.stats["nodes"], "variables": sol.num_variables,
                      "constraints": sol.num_constraints, "status": sol.status, "lower_bound": bound,
                      "build_time_s": build_s, "solve_time_s": sol.solve_time_s})
        solved.append((ip, sol))
        key = ip.weighted_time(est.step_time_s, sol.choices)   # a microbatched program: its update weighs 1 / m
        if best is None or key < best[0] * (1 - 1e-9):
            best = (key, ip, sol, est)
    if best is None:
        errors = "; ".join(f"{t['mesh']}: {t['error']}" for t in tried)
        needs = [t["min_budget_bytes"] for t in tried if "min_budget_bytes" in t]
        if needs and len(needs) == len(tried):
            raise InfeasibleMemoryError(f"no mesh admits a plan within the memory budget; the least demanding "
                                        f"needs {format_bytes(min(needs))} per device ({errors})",
                                        min(needs), float(memory_budget or cluster.device.memory_bytes))
        if any(t.get("timed_out") for t in tried):
            raise SolverTimeLimitError(f"no mesh was planned within the time limit ({errors}); raise time_limit_s")
        raise ValueError(f"no mesh admits a plan: {errors}")
    _, ip, sol, est = best
    search = {"search_time_s": time.perf_counter() - start, "solver": solver, "meshes": tried,
              "ilp": {**ip.stats, "variables": sol.num_variables, "constraints": sol.num_constraints,
                      "status": sol.status}}
    return IntraOpResult(_to_plan(graph, cluster, method, ip, sol, est, search), ip, sol)


# ---- warm starts: a plan on one mesh embedded into another ----------------------------------------------

def axis_embedding(src: LogicalMesh, dst: LogicalMesh) -> dict[str, tuple[str, ...]] | None:
    """Each axis of ``src`` -> the consecutive axes of ``dst`` (major to minor) whose sizes multiply to its
    size, so that a split over the group addresses the devices as the split over the source axis does; None
    when ``dst`` does not refine ``src`` that way (``(8,) -> (2, 4)``: ``{"x": ("x", "y")}``)."""
    out: dict[str, tuple[str, ...]] = {}
    k = 0
    for name, size in zip(src.axis_names, src.shape):
        group: list[str] = []
        prod = 1
        while prod < size and k < dst.ndim:
            group.append(dst.axis_names[k])
            prod *= dst.shape[k]
            k += 1
        if prod != size:
            return None
        out[name] = tuple(group)
    return out if k == dst.ndim else None


def _embed_spec(spec: ShardingSpec | None, emb: Mapping[str, tuple[str, ...]]) -> ShardingSpec | None:
    if spec is None:
        return None
    return ShardingSpec(tuple(tuple(a for x in d for a in emb[x]) for d in spec.dims),
                        tuple(a for x in spec.partial for a in emb[x]))


def embed_choices(src: IntraOpProblem, choices: Sequence[int], dst: IntraOpProblem) -> tuple[int, ...] | None:
    """The strategies of ``dst`` that do what ``choices`` does on ``src``'s mesh, through ``axis_embedding``:
    each node of ``dst`` takes the strategy with the embedded input and output specs of the same node's
    choice on ``src`` (the cheapest if several), else one with the embedded output specs of the tensors it
    owns, else its cheapest strategy. None when the meshes do not embed. A warm start for ``solve``'s hint."""
    emb = axis_embedding(src.mesh, dst.mesh)
    if emb is None:
        return None
    src_node = {(n.kind, n.key): v for v, n in enumerate(src.nodes)}
    tensor_specs = src.tensor_specs(choices)
    costs = dst.problem.node_costs
    owned: dict[int, list[int]] = {}
    for tid, (v, _) in dst.tensor_owner.items():
        owned.setdefault(v, []).append(tid)
    out = []
    for v, node in enumerate(dst.nodes):
        cands: list[int] = []
        u = src_node.get((node.kind, node.key))
        if u is not None:
            s = src.nodes[u].strategies[choices[u]]
            want = (tuple(_embed_spec(x, emb) for x in s.in_specs), tuple(_embed_spec(x, emb) for x in s.out_specs))
            cands = [i for i, t in enumerate(node.strategies) if (t.in_specs, t.out_specs) == want]
        if not cands:
            tids = [t for t in owned.get(v, ()) if t in tensor_specs]
            if tids:
                want_t = {t: _embed_spec(tensor_specs[t], emb) for t in tids}
                cands = [i for i in range(len(node.strategies))
                         if all(dst.tensor_owner[t][1][i] == want_t[t] for t in tids)]
        if not cands:
            cands = list(range(len(node.strategies)))
        out.append(min(cands, key=lambda i: (costs[v][i], i)))
    return tuple(out)


def warm_start(solved: Sequence[tuple[IntraOpProblem, Solution]], ip: IntraOpProblem) -> tuple[int, ...] | None:
    """The cheapest (on ``ip``'s objective) of the solved plans embedded into ``ip``'s mesh (``embed_choices``);
    None when none embeds. Earlier plans win ties."""
    best: tuple[float, tuple[int, ...]] | None = None
    for src_ip, src_sol in solved:
        hint = embed_choices(src_ip, src_sol.choices, ip)
        if hint is not None:
            value = evaluate(ip.problem, hint)
            if best is None or value < best[0]:
                best = (value, hint)
    return None if best is None else best[1]


MEMORY_ROUNDS = 4


def _solve_within_memory(ip: IntraOpProblem, device: Any, solver: str, time_limit_s: float | None,
                         hint: Sequence[int] | None = None) -> tuple[Solution, Estimate]:
    """Solve, then check the plan's full memory estimate (every program point, resharded copies included)
    against the budget the ILP saw at one point; while it is over, set the ILP's budget below what the plan's
    memory row holds, by the overshoot, and solve again. Raises InfeasibleMemoryError when no tightening fits."""
    budget = ip.problem.memory_budget
    sol = solve(ip.problem, backend=solver, time_limit_s=time_limit_s, hint=hint)
    est = estimate_plan(ip, sol.choices, device)
    ilp_budget = budget
    for _ in range(MEMORY_ROUNDS):
        if budget is None or est.peak_memory_bytes <= budget * (1 + 1e-9):
            return sol, est
        assert ilp_budget is not None
        # below what this plan's row holds (a budget above it returns the same plan), by the overshoot
        used = sol.peak_group_memory if sol.peak_group_memory is not None else ilp_budget
        ilp_budget = min(ilp_budget, used) * budget / est.peak_memory_bytes * 0.99
        try:
            sol = solve(dataclasses.replace(ip.problem, memory_budget=ilp_budget), backend=solver,
                        time_limit_s=time_limit_s, hint=hint)
        except (InfeasibleMemoryError, SolverTimeLimitError):    # keep the plan over budget: reported below
            break
        est = estimate_plan(ip, sol.choices, device)
    if budget is not None and est.peak_memory_bytes > budget * (1 + 1e-9):
        raise InfeasibleMemoryError(
            f"no sharding plan found within the memory budget of {format_bytes(budget)} per device: the best "
            f"plan needs {format_bytes(est.peak_memory_bytes)} once resharded copies and every program point are "
            "counted: raise memory_budget, use more devices or enable remat", est.peak_memory_bytes, budget)
    return sol, est


def fixed_tensors(ip: IntraOpProblem) -> list[int]:
    """Tensors the emitted program pins: every output of an op the plan gives a spec (ILP nodes, tied ops and
    the followers merged into a node), so that XLA lays out every value as the plan costed it."""
    return [o for op_id in planned_ops(ip) for o in ip.graph.ops[op_id].outputs]


def planned_ops(ip: IntraOpProblem) -> list[int]:
    """Ops whose outputs' specs the plan decides: op nodes, their tied ops, and every node's merged followers
    (left unpinned, XLA's sharding propagation may lay a follower out differently from the plan)."""
    out: list[int] = []
    for node in ip.nodes:
        out.extend(node.merged_ops)
        if node.kind == "op":
            out.extend((node.key, *node.tied_ops))
    return sorted(set(out))


def _to_plan(graph: Graph, cluster: Any, method: Method, ip: IntraOpProblem, sol: Solution, est: Estimate,
             search: dict[str, Any]) -> Plan:
    specs = ip.tensor_specs(sol.choices)
    rep = lambda t: ShardingSpec.replicated(len(graph.tensors[t].shape))  # noqa: E731
    spec_of = lambda t: specs.get(t, rep(t)).dims  # noqa: E731
    op_specs = []
    for op_id in planned_ops(ip):
        op_specs.append((op_id, tuple(spec_of(o) for o in graph.ops[op_id].outputs)))
    mesh = ip.mesh
    stage = StagePlan(name="stage0", mesh_shape=mesh.shape, axis_names=mesh.axis_names,
                      devices=tuple(range(mesh.num_devices)),
                      input_specs=tuple((graph.tensors[t].name, spec_of(t)) for t in graph.inputs),
                      output_specs=tuple(spec_of(t) for t in graph.outputs),
                      op_specs=tuple(op_specs), estimate=est,
                      operand_specs=tuple((o, k, w.dims) for o, k, w in operand_specs(ip, sol.choices)))
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(method).items()}
    return Plan(method=method.name, method_options=options, mesh_shape=mesh.shape, axis_names=mesh.axis_names,
                cluster=cluster.to_dict(), stages=(stage,), estimate=est,
                graph_fingerprint=graph_fingerprint(graph), search=search)


def plan_specs(plan: Plan, graph: Graph) -> tuple[dict[int, ShardingSpec], list[int]]:
    """Tensor specs and pinned tensors of a single-stage plan, for emission (checks the fingerprint)."""
    if plan.graph_fingerprint != graph_fingerprint(graph):
        raise ValueError("the plan was made for a different program (graph fingerprint "
                         f"{plan.graph_fingerprint} != {graph_fingerprint(graph)}); re-plan, or pass the same "
                         "function and argument shapes the plan was made for")
    stage = plan.stages[0]
    specs: dict[int, ShardingSpec] = {}
    for t, (_name, s) in zip(graph.inputs, stage.input_specs):
        specs[t] = ShardingSpec(s)
    for t, s in zip(graph.outputs, stage.output_specs):
        specs.setdefault(t, ShardingSpec(s))
    fixed = []
    for op_id, out_specs in stage.op_specs:
        for t, s in zip(graph.ops[op_id].outputs, out_specs):
            specs[t] = ShardingSpec(s)
            fixed.append(t)
    return specs, fixed

