"""The intra-op sharding ILP: ``solve(ShardingProblem) -> Solution``.

Consumes: a ``ShardingProblem`` (see ``problem.py``); backend ``"ortools"`` (default) or ``"pulp"``.
Produces: a ``Solution`` whose ``objective`` and ``peak_group_memory`` are recomputed exactly from the
original problem; ``status`` is ``"optimal"`` or, when ``time_limit_s`` cut the search short, ``"feasible"``
(with a ``UserWarning`` saying the plan may be suboptimal).
Refuses: a memory budget no plan fits (``InfeasibleMemoryError`` with the smallest budget that fits,
from a second min-max ILP), fixed shardings/aliases that contradict each other (``ValueError``), a time
limit reached before any plan was found (``SolverTimeLimitError``, a ``RuntimeError``), an unknown backend (``ValueError``).

Formulation (after the exact reductions of ``simplify.py``): one-hot binaries ``x[v, s]`` per remaining
node; for each remaining edge (u, v) binaries ``e[i, j]`` only for allowed (finite) entries, tied by Alpa's
tight constraints ``sum_j e[i, j] = x[u, i]`` and ``sum_i e[i, j] = x[v, j]``; memory rows
``sum_v memory[v] . x[v] <= budget - base`` per group. Objective: node costs + edge costs (+ the constant
folded away by the reductions).

Backend "ortools" is OR-Tools' MIP interface (pywraplp) with SCIP, single-threaded and deterministic, on the
float model, stopped at a relative gap of ``MIP_RELATIVE_GAP`` (1e-4), started from the greedy start (each
node's cheapest strategy) polished by coordinate descent (``_polish``), so a time limit always leaves an
incumbent when the start fits the memory budget. A caller's ``hint`` (a warm start: another mesh's plan
embedded, see ``shard_parallel.embed_choices``) replaces it when cheaper, polished the same way. The start is
also a floor: a time-limited solve returns it when the solver found nothing better (unpolished, the greedy
start is often infinite: each node's cheapest output against its neighbours' inputs; Wide-ResNet-2B's stage on
a (4, 2) mesh at 96 microbatches, 380 nodes after the reductions: SCIP stopped at 60 s on a plan 38 % worse
than the polished start). ``time_limit_s`` bounds the whole call (reductions and model building included). It was picked over CP-SAT by measurement (see
``bench/ilp_scaling.py``): on a 14-node random problem SCIP 0.14 s vs CP-SAT 1.4 s; CP-SAT found no
incumbent in 0.5 s where SCIP starts from the hint. Backend "pulp" is PuLP's bundled CBC (one thread).
Backend "ortools-cpsat" (CP-SAT, one worker, seed 0) is kept for comparison. CP-SAT needs integers: every
objective coefficient is shifted by its vector/matrix minimum (a constant) and scaled by ``2**30 / max
coefficient``; each rounded term is off by at most ``max/2**31``, so its plan is within ``(nodes + edges) *
max * 2**-30`` of the true optimum; memory rows are rounded conservatively (coefficients up to whole bytes,
the right side down) so a CP-SAT plan never exceeds the budget. Every backend's reported objective is
recomputed exactly from the original problem.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from autopar.planner.problem import (InfeasibleMemoryError, ShardingProblem, Solution, SolverTimeLimitError,
                                     evaluate, format_bytes, is_feasible, peak_group_memory)
from autopar.planner.simplify import Reduced, reduce

BACKENDS = ("ortools", "pulp", "ortools-cpsat")
# ``time_limit_s`` covers the whole ``solve`` (reductions and model building too); the solver itself gets
# what is left of it, but at least this many seconds (or the whole limit, if shorter).
MIN_SOLVER_S = 0.1
# SCIP stops once its incumbent is proven within this fraction of the optimum (its default is 0). Plans whose
# costs differ by less than 0.01 % are equal for every purpose, and proving the last 0.01 % took a third of
# GPT-39B's stage search once the fusion-aware compute model made many layouts near-ties.
MIP_RELATIVE_GAP = 1e-4
# SCIP's probing presolver tries fixing each binary and propagating: on the sharding ILP (one-hot rows, edge
# variables tied to them) it records hundreds of thousands of implications and fixes nothing, and it took
# three quarters of the solve (a GPT-39B layer on an (8, 8) mesh: 1.7 s of probing in a 2.3 s solve, 0.5 s
# without, same optimum).
SCIP_PARAMETERS = "propagating/probing/maxprerounds = 0"
_CPSAT_RESOLUTION = 2.0**30


@dataclass
class _Model:
    """A 0/1 linear model: ``rows`` are (var ids, coefficients, lo, hi); ``continuous`` vars have bounds."""

    obj: list[float] = field(default_factory=list)
    rows: list[tuple[list[int], list[float], float, float]] = field(default_factory=list)
    continuous: dict[int, tuple[float, float]] = field(default_factory=dict)
    hint: dict[int, int] = field(default_factory=dict)  # a greedy start (may violate memory rows)
    constant: float = 0.0                                # objective offset folded out of the variables

    def var(self, cost: float = 0.0) -> int:
        self.obj.append(float(cost))
        return len(self.obj) - 1

    def row(self, ids: list[int], coefs: list[float], lo: float, hi: float) -> None:
        self.rows.append((ids, coefs, lo, hi))


@dataclass
class _Raw:
    status: str  # "optimal" | "feasible" | "infeasible" | "unknown"
    values: list[int] | None


def solve(problem: ShardingProblem, backend: str = "ortools", time_limit_s: float | None = None,
          presolve: bool = True, hint: Sequence[int] | None = None) -> Solution:
    """Optimal strategy per node (see the module docstring for the formulation and the backends).

    ``presolve=False`` skips the folding, dominance and elimination reductions (tests use it to check the
    raw formulation); fixed shardings, aliases and parallel edges are still merged.

    ``hint``: a strategy per node (a warm start, e.g. a plan of another mesh embedded into this one). It is
    polished (``_polish``) and given to the solver as its start; when it satisfies fixed shardings, aliases
    and the memory budget, the result is never worse than it, even when ``time_limit_s`` stops the search.
    """
    if hint is not None:
        hint = tuple(int(h) for h in hint)
        if len(hint) != problem.num_nodes or any(not 0 <= h < len(c) for h, c in zip(hint, problem.node_costs)):
            raise ValueError(f"hint must give one strategy index per node ({problem.num_nodes} nodes), each "
                             "within that node's strategies; got an out-of-range or wrongly sized hint")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; use one of {BACKENDS}")
    if time_limit_s is not None and not time_limit_s > 0:
        raise ValueError(f"time_limit_s={time_limit_s} must be a positive number of seconds or None")
    start = time.perf_counter()
    if memory_lower_bound(problem) > (problem.memory_budget or math.inf) * (1 + 1e-9):
        _raise_infeasible(problem, backend, time_limit_s)    # no plan fits: skip the solves, report the minimum
    if problem.memory_budget is not None and problem.memory_groups and presolve:
        # Memory rows pin their nodes against elimination and make the model much harder. Solve without
        # them first: when that optimum fits the budget it is the constrained optimum too.
        free = solve(dataclasses.replace(problem, memory_budget=None, memory_groups=()), backend,
                     time_limit_s, presolve, hint)
        if is_feasible(problem, free.choices):
            return dataclasses.replace(free, solve_time_s=time.perf_counter() - start,
                                       peak_group_memory=peak_group_memory(problem, free.choices),
                                       notes=free.notes + ("memory budget not binding",))
    red = reduce(problem, full=presolve)
    if red is None:
        _raise_infeasible(problem, backend, time_limit_s)
    assert red is not None
    start_local = _start(red, hint)
    lean = None
    if problem.memory_budget is not None and problem.memory_groups and \
            not is_feasible(problem, red.expand(start_local)):
        lean = _lean_start(problem, red)      # a start within the budget, so a time limit leaves a plan
        if lean is not None:
            start_local = lean
    model, xvars = _build(problem, red, start_local)
    left = None if time_limit_s is None else max(min(MIN_SOLVER_S, time_limit_s),
                                                 time_limit_s - (time.perf_counter() - start))
    raw = _run(backend, model, left) if model.obj else _Raw("optimal", [])
    # the polished start, expanded (eliminated nodes at their best): a plan whenever it is feasible
    start_plan = red.expand(start_local)
    warm = start_plan if is_feasible(problem, start_plan) and math.isfinite(evaluate(problem, start_plan)) else None
    if raw.status == "infeasible":
        _raise_infeasible(problem, backend, time_limit_s)
    if raw.values is None and warm is None:
        raise SolverTimeLimitError(f"the {backend} solver found no plan within time_limit_s={time_limit_s}; "
                           "raise time_limit_s or pass None")
    notes: tuple[str, ...] = ()
    if raw.values is not None:
        local = {v: next((k for k, x in enumerate(xs) if raw.values[x] > 0), 0) for v, xs in xvars.items()}
        choices = red.expand(local)
        status = "optimal" if raw.status == "optimal" else "feasible"
    if warm is not None and (raw.values is None or
                             (status == "feasible" and evaluate(problem, warm) < evaluate(problem, choices))):
        choices, status, notes = warm, "feasible", ("kept the warm start: the solver found nothing better",)
    if status == "feasible":
        warnings.warn(f"the {backend} solver stopped at time_limit_s={time_limit_s} before proving optimality; "
                      "the sharding plan may be suboptimal (raise time_limit_s for an optimal plan)", stacklevel=2)
    return Solution(choices, evaluate(problem, choices), status, backend, time.perf_counter() - start,
                    len(model.obj), len(model.rows), peak_group_memory(problem, choices),
                    notes=(f"reduced to {sum(red.alive)} of {problem.num_nodes} nodes, {len(red.edges)} edges",)
                    + notes)


def _start(red: Reduced, hint: Sequence[int] | None) -> dict[int, int]:
    """A start for the alive nodes, in local strategy indices: the greedy one (each node's cheapest) polished by
    ``_polish``; with a ``hint``, the cheaper (the hint on ties) of that and the hint (strategies the reductions
    removed replaced by their best given the others), polished too."""
    greedy = _polish(red, {v: int(np.argmin(red.cost[v])) for v in red.nodes()})
    if hint is None:
        return greedy
    local, missing = {}, []
    for v in red.nodes():
        where = np.nonzero(red.allowed[v] == hint[v])[0]
        if len(where):
            local[v] = int(where[0])
        else:
            local[v] = int(np.argmin(red.cost[v]))
            missing.append(v)
    local = _polish(red, local, first=missing)
    return local if _reduced_value(red, local) <= _reduced_value(red, greedy) else greedy


def _lean_start(p: ShardingProblem, red: Reduced) -> dict[int, int] | None:
    """Each node in a memory group at its smallest memory (the cheapest on ties), the others at their
    cheapest: every group then sits at ``memory_lower_bound``, within the budget whenever any plan is. None
    when that start breaks a fixed sharding, an alias or a forbidden pair."""
    local = {}
    for v in red.nodes():
        if red.protected[v]:
            mem = np.asarray(p.memory[v], dtype=float)[red.allowed[v]]   # type: ignore[index]
            local[v] = int(np.lexsort((red.cost[v], mem))[0])
        else:
            local[v] = int(np.argmin(red.cost[v]))
    choices = red.expand(local)
    return local if is_feasible(p, choices) and math.isfinite(evaluate(p, choices)) else None


POLISH_ROUNDS = 50


def _polish(red: Reduced, local: dict[int, int], first: Sequence[int] = ()) -> dict[int, int]:
    """Coordinate descent: each node in turn (``first`` first, then all) takes its best strategy given its
    neighbours' current ones, until no node changes (at most ``POLISH_ROUNDS`` rounds). Never raises the
    reduced objective."""
    local = dict(local)
    nbrs: dict[int, list[tuple[int, np.ndarray]]] = {v: [] for v in local}
    for (u, v), mat in red.edges.items():
        nbrs[u].append((v, mat))
        nbrs[v].append((u, mat.T))

    def best(v: int) -> bool:
        tot = red.cost[v].copy()
        for u, mat in nbrs[v]:
            tot += mat[:, local[u]]
        k = int(np.argmin(tot))
        if tot[k] < tot[local[v]]:
            local[v] = k
            return True
        return False

    for v in first:
        best(v)
    for _ in range(POLISH_ROUNDS):
        if not any([best(v) for v in local]):
            break
    return local


def _reduced_value(red: Reduced, local: Mapping[int, int]) -> float:
    total = sum(float(red.cost[v][k]) for v, k in local.items())
    return total + sum(float(m[local[u], local[v]]) for (u, v), m in red.edges.items())


def _build(p: ShardingProblem, red: Reduced,
           start: Mapping[int, int] | None = None) -> tuple[_Model, dict[int, list[int]]]:
    """The tight model of ``red``; ``start`` (local strategy per alive node, default: each cheapest) is its
    hint."""
    m = _Model()
    const = red.constant
    cost = {v: red.cost[v].copy() for v in red.nodes()}
    edges = {}
    for (u, v), mat in sorted(red.edges.items()):  # edges to single-strategy nodes (presolve=False) fold here
        if mat.shape[1] == 1:
            cost[u] += mat[:, 0]
        elif mat.shape[0] == 1:
            cost[v] += mat[0, :]
        else:
            edges[(u, v)] = mat
    xvars: dict[int, list[int]] = {}
    for v, c in cost.items():
        if len(c) == 1:
            const += float(c[0])
            continue
        low = float(c[np.isfinite(c)].min())
        const += low
        xvars[v] = [m.var(float(ci) - low if np.isfinite(ci) else 0.0) for ci in c]
        m.row(xvars[v], [1.0] * len(c), 1.0, 1.0)
        pick = int(np.argmin(c)) if start is None else start[v]
        m.hint.update({x: int(k == pick) for k, x in enumerate(xvars[v])})
        for bad in np.nonzero(~np.isfinite(c))[0]:
            m.row([xvars[v][int(bad)]], [1.0], 0.0, 0.0)
    for (u, v), mat in edges.items():
        low = float(mat[np.isfinite(mat)].min())
        const += low
        rows, row_of = _classes(mat)
        cols, col_of = _classes(mat.T)
        small = mat[np.ix_([r[0] for r in rows], [c[0] for c in cols])]
        e = {(int(a), int(b)): m.var(float(small[a, b]) - low) for a, b in zip(*np.nonzero(np.isfinite(small)))}
        for (ra, cb), k in e.items():
            m.hint[k] = int(any(m.hint[xvars[u][i]] for i in rows[ra]) and any(m.hint[xvars[v][j]] for j in cols[cb]))
        for a, members in enumerate(rows):
            ids = [k for (r, _), k in e.items() if r == a]
            m.row(ids + [xvars[u][i] for i in members], [1.0] * len(ids) + [-1.0] * len(members), 0.0, 0.0)
        for b, members in enumerate(cols):
            ids = [k for (_, c), k in e.items() if c == b]
            m.row(ids + [xvars[v][j] for j in members], [1.0] * len(ids) + [-1.0] * len(members), 0.0, 0.0)
    if red.protected.any() and p.memory is not None and p.memory_budget is not None:
        for g in p.memory_groups:
            hi, ids, coefs = p.memory_budget - g.base_bytes, [], []
            for v in g.nodes:
                mem = [p.memory[v][s] for s in red.allowed[v]]
                if v in xvars:
                    ids += xvars[v]
                    coefs += mem
                else:
                    hi -= mem[0]
            if ids:
                m.row(ids, coefs, -math.inf, hi)
    m.constant = const
    return m, xvars


# Relative margin on an LP bound: GLOP's optimum is exact up to its feasibility tolerances (1e-7 absolute on
# rows with unit coefficients, objective terms of order one after the shift by each vector's minimum).
LP_BOUND_RTOL = 1e-6


def lp_lower_bound(problem: ShardingProblem, time_limit_s: float | None = None) -> float | None:
    """A lower bound on every plan's objective: the LP relaxation of the tight formulation (``_build``) after
    the exact reductions, without the memory rows (dropping constraints only lowers it), minus a relative
    margin of ``LP_BOUND_RTOL``. ``math.inf`` when no plan exists; None when GLOP did not reach the LP
    optimum within ``time_limit_s``. Never below the node-min + edge-min bound of the reduced problem."""
    from ortools.linear_solver import pywraplp

    relaxed = dataclasses.replace(problem, memory_budget=None, memory_groups=())
    red = reduce(relaxed)
    if red is None:
        return math.inf
    m, _ = _build(relaxed, red)
    if not m.obj:
        return m.constant
    s = pywraplp.Solver.CreateSolver("GLOP")
    if s is None:
        return None
    vs = [s.NumVar(0.0, 1.0, f"x{k}") for k in range(len(m.obj))]
    _load_linear(s, vs, m)
    if time_limit_s is not None:
        s.SetTimeLimit(int(math.ceil(time_limit_s * 1000)))
    if s.Solve() != pywraplp.Solver.OPTIMAL:
        return None
    value = m.constant + s.Objective().Value()
    return value - LP_BOUND_RTOL * abs(value)


def _classes(mat: np.ndarray) -> tuple[list[list[int]], list[int]]:
    """Groups of identical rows (first-seen order) and each row's group."""
    groups: dict[bytes, int] = {}
    members: list[list[int]] = []
    of = []
    for i, row in enumerate(mat):
        key = np.where(np.isfinite(row), row, np.inf).tobytes()
        g = groups.setdefault(key, len(members))
        if g == len(members):
            members.append([])
        members[g].append(i)
        of.append(g)
    return members, of


def memory_lower_bound(p: ShardingProblem) -> float:
    """A bound no plan's peak is below: the largest group's base plus each member at its smallest memory
    (among its allowed strategies). 0 without memory groups."""
    if p.memory is None or not p.memory_groups:
        return 0.0
    fixed = p.fixed_map
    least = [p.memory[v][fixed[v]] if v in fixed else min(p.memory[v]) for v in range(p.num_nodes)]
    return max(g.base_bytes + sum(least[v] for v in g.nodes) for g in p.memory_groups)


def min_memory_budget(p: ShardingProblem, backend: str = "ortools", time_limit_s: float | None = None) -> float:
    """Smallest ``memory_budget`` for which a plan exists (ignoring costs); raises if none exists at all."""
    if p.memory is None or not p.memory_groups:
        return 0.0
    m = _Model()
    n = p.num_nodes
    fixed = p.fixed_map
    allowed = [[fixed[v]] if v in fixed else list(range(len(p.node_costs[v]))) for v in range(n)]
    x = [[m.var() for _ in allowed[v]] for v in range(n)]
    for v in range(n):
        m.row(x[v], [1.0] * len(x[v]), 1.0, 1.0)
    for a in p.aliases:
        ok = set(a.pairs)
        for ia, i in enumerate(allowed[a.a]):
            partners = [x[a.b][jb] for jb, j in enumerate(allowed[a.b]) if (i, j) in ok]
            m.row(partners + [x[a.a][ia]], [1.0] * len(partners) + [-1.0], 0.0, math.inf)
    hi = max(g.base_bytes + sum(max(p.memory[v]) for v in g.nodes) for g in p.memory_groups)
    peak = m.var(1.0)
    m.continuous[peak] = (0.0, math.ceil(hi) + 1.0)
    for g in p.memory_groups:
        ids = [xi for v in g.nodes for xi in x[v]]
        coefs = [p.memory[v][s] for v in g.nodes for s in allowed[v]]
        m.row(ids + [peak], coefs + [-1.0], -math.inf, -g.base_bytes)
    raw = _run(backend, m, time_limit_s)
    if raw.values is None:
        if raw.status == "infeasible":
            raise ValueError("no plan exists even without a memory budget: the fixed shardings and aliases "
                             "contradict each other; check `fixed` and `aliases`")
        raise SolverTimeLimitError(f"the minimum-memory ILP found no plan within time_limit_s={time_limit_s}")
    choices = [allowed[v][next(k for k, xi in enumerate(x[v]) if raw.values[xi] > 0)] for v in range(n)]
    return max(g.base_bytes + sum(p.memory[v][choices[v]] for v in g.nodes) for g in p.memory_groups)


def _raise_infeasible(p: ShardingProblem, backend: str, time_limit_s: float | None) -> None:
    if p.memory_budget is None or p.memory is None or not p.memory_groups:
        raise ValueError("no plan exists: the fixed shardings and aliases contradict each other; "
                         "check `fixed` and `aliases`")
    need = min_memory_budget(p, backend, time_limit_s)
    if need <= p.memory_budget:  # memory was not the obstacle
        raise ValueError("no plan exists within memory_budget although memory alone fits "
                         f"({format_bytes(need)}): the fixed shardings and aliases contradict each other")
    raise InfeasibleMemoryError(
        f"no sharding plan fits the memory budget: needs at least {format_bytes(need)} per device; the budget is "
        f"{format_bytes(p.memory_budget)}: raise memory_budget, use more devices or enable remat",
        need, p.memory_budget)


def _load_linear(s: Any, vs: list[Any], m: _Model) -> None:
    """Rows and the minimised objective of ``m`` into an OR-Tools linear solver over variables ``vs``."""
    inf = s.infinity()
    for ids, coefs, lo, hi in m.rows:
        ct = s.Constraint(-inf if lo == -math.inf else lo, inf if hi == math.inf else hi)
        for i, c in zip(ids, coefs):
            ct.SetCoefficient(vs[i], c)
    obj = s.Objective()
    for v, c in zip(vs, m.obj):
        if c:
            obj.SetCoefficient(v, c)
    obj.SetMinimization()


def _run(backend: str, m: _Model, time_limit_s: float | None) -> _Raw:
    if backend == "ortools-cpsat":
        return _run_cpsat(m, time_limit_s)
    if backend == "pulp":
        return _run_pulp(m, time_limit_s)
    return _run_mip(m, time_limit_s)


def _run_cpsat(m: _Model, time_limit_s: float | None) -> _Raw:
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    vs = []
    for k in range(len(m.obj)):
        if k in m.continuous:
            lo, hi = m.continuous[k]
            vs.append(model.new_int_var(math.ceil(lo), math.floor(hi), f"c{k}"))
        else:
            vs.append(model.new_bool_var(f"x{k}"))
    for ids, coefs, lo, hi in m.rows:
        if lo == hi == 1.0 and all(c == 1.0 for c in coefs):
            model.add_exactly_one([vs[i] for i in ids])
            continue
        exact = all(float(c).is_integer() for c in coefs)
        ic = [int(c) if exact else math.ceil(c) for c in coefs]  # memory: round up, conservative
        ilo = cp_model.INT_MIN if lo == -math.inf else math.ceil(lo)
        ihi = cp_model.INT_MAX if hi == math.inf else math.floor(hi)
        model.add_linear_constraint(cp_model.LinearExpr.weighted_sum([vs[i] for i in ids], ic), ilo, ihi)
    top = max((abs(c) for c in m.obj), default=0.0)
    integral = all(float(c).is_integer() for c in m.obj) and top < 2**40
    scale = 1.0 if integral or top == 0 else _CPSAT_RESOLUTION / top
    model.minimize(cp_model.LinearExpr.weighted_sum(vs, [round(c * scale) for c in m.obj]))
    for k, h in m.hint.items():
        model.add_hint(vs[k], h)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    if time_limit_s is not None:
        solver.parameters.max_time_in_seconds = time_limit_s
    st = solver.solve(model)
    if st == cp_model.INFEASIBLE:
        return _Raw("infeasible", None)
    if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return _Raw("unknown", None)
    return _Raw("optimal" if st == cp_model.OPTIMAL else "feasible", [int(solver.value(v)) for v in vs])


def _run_mip(m: _Model, time_limit_s: float | None, name: str = "SCIP") -> _Raw:
    from ortools.linear_solver import pywraplp

    s = pywraplp.Solver.CreateSolver(name)
    if s is None:
        raise RuntimeError(f"OR-Tools was built without the {name} MIP solver")
    vs = [s.NumVar(*m.continuous[k], f"c{k}") if k in m.continuous else s.BoolVar(f"x{k}")
          for k in range(len(m.obj))]
    _load_linear(s, vs, m)
    if m.hint:
        s.SetHint([vs[k] for k in m.hint], [float(h) for h in m.hint.values()])
    if time_limit_s is not None:
        s.SetTimeLimit(int(math.ceil(time_limit_s * 1000)))
    if name == "SCIP" and not s.SetSolverSpecificParametersAsString(SCIP_PARAMETERS):
        raise RuntimeError(f"this OR-Tools' SCIP refused the parameters {SCIP_PARAMETERS!r}")
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(params.RELATIVE_MIP_GAP, MIP_RELATIVE_GAP)
    st = s.Solve(params)
    if st == pywraplp.Solver.INFEASIBLE:
        return _Raw("infeasible", None)
    if st not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return _Raw("unknown", None)
    return _Raw("optimal" if st == pywraplp.Solver.OPTIMAL else "feasible",
                [int(round(v.solution_value())) for v in vs])


def _cbc(pulp: Any, time_limit_s: float | None) -> Any:
    """CBC through PuLP: the ``pulp[cbc]`` binary (PuLP >= 4) or the one bundled with PuLP 2.x / 3.x."""
    coin = pulp.COIN_CMD(msg=False, timeLimit=time_limit_s, threads=1, gapRel=0.0)
    if coin.available():
        return coin
    if hasattr(pulp, "PULP_CBC_CMD"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, threads=1, gapRel=0.0)
    raise RuntimeError("PuLP has no CBC solver here; install it with `pip install 'pulp[cbc]'` or use "
                       "solver='ortools'")


def _run_pulp(m: _Model, time_limit_s: float | None) -> _Raw:
    import pulp

    prob = pulp.LpProblem("sharding", pulp.LpMinimize)
    if hasattr(prob, "add_variable"):  # PuLP >= 3.3 (required from 4.0)
        def var(name: str, lo: float | None, hi: float | None, cat: str) -> Any:
            return prob.add_variable(name, lo, hi, cat=cat)
    else:
        def var(name: str, lo: float | None, hi: float | None, cat: str) -> Any:
            return pulp.LpVariable(name, lo, hi, cat=cat)
    vs = [var(f"c{k}", *m.continuous[k], "Continuous") if k in m.continuous else var(f"x{k}", 0, 1, "Binary")
          for k in range(len(m.obj))]
    prob += pulp.lpSum(c * v for c, v in zip(m.obj, vs) if c)
    for ids, coefs, lo, hi in m.rows:
        expr = pulp.lpSum(c * vs[i] for i, c in zip(ids, coefs))
        if lo == hi:
            prob += expr == lo
        else:
            if lo != -math.inf:
                prob += expr >= lo
            if hi != math.inf:
                prob += expr <= hi
    solver = _cbc(pulp, time_limit_s)
    code = prob.solve(solver)
    sol = getattr(prob, "sol_status", None)  # PuLP < 4 tells a time-limited incumbent from an optimum
    if sol is None:  # PuLP 4: solve() returns stats; status 1 optimal, -1 infeasible, -4 time limit,
        code = int(getattr(code, "status", code))  # -7 the (zero) relative gap reached: optimal too
        if code == -1:
            return _Raw("infeasible", None)
        if code not in (1, -4, -7) or any(v.value() is None for v in vs):
            return _Raw("unknown", None)
        return _Raw("feasible" if code == -4 else "optimal", [int(round(v.value() or 0)) for v in vs])
    if sol in (pulp.LpSolutionInfeasible, pulp.LpSolutionUnbounded) or prob.status == -1:
        return _Raw("infeasible", None)
    if sol not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return _Raw("unknown", None)
    return _Raw("optimal" if sol == pulp.LpSolutionOptimal else "feasible",
                [int(round(v.value() or 0)) for v in vs])
