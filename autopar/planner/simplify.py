"""Exact reductions of a ShardingProblem before the ILP.

Consumes: a validated ``ShardingProblem``.
Produces: a ``Reduced`` problem (fewer nodes, strategies and edges, same optimum) and
``Reduced.expand(local_choices) -> original choices``; or ``None`` when fixed shardings and aliases
leave some node without any strategy.
Refuses: nothing; every reduction below preserves the optimal objective and the feasible set's optimum:

- parallel edges (either direction) are summed into one matrix; aliases become ``inf`` (forbidden) entries;
- ``fixed`` restricts a node to one strategy;
- a strategy with infinite cost, or whose row in some edge is all ``inf``, or that cannot fit the memory
  budget even with every other group member at its smallest memory, is removed;
- a separable edge matrix ``M[i, j] == M[i, 0] + M[0, j] - M[0, 0]`` (constant matrices and edges whose other
  side has a single strategy included) is folded into the two node cost vectors;
- strategy s of node v is dropped when some kept t is no worse on the node cost, on every incident edge row
  (elementwise, ``inf`` included) and, for nodes in memory groups, on memory; exact ties keep the lower index;
- a node outside every memory group (when a budget applies) with at most two neighbours is eliminated
  (variable elimination: its best strategy for each neighbour combination is recorded; the min-sum is
  folded into the neighbours' costs or a new edge between them).
Ties pick the lowest strategy index, so the result is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from autopar.planner.problem import ShardingProblem

_SEPARABLE_ATOL = 1e-12  # relative to the matrix's largest magnitude


@dataclass
class Reduced:
    """The problem left for the ILP, over *local* strategy indices of the remaining nodes."""

    num_orig_nodes: int
    allowed: list[np.ndarray]                 # per original node: kept original strategy indices
    cost: list[np.ndarray]                    # per original node: cost per kept strategy
    edges: dict[tuple[int, int], np.ndarray]  # (u < v) -> matrix over kept strategies; inf = forbidden
    constant: float
    protected: np.ndarray                     # bool per node: in a memory group under a budget
    alive: np.ndarray                         # bool per node: not eliminated
    records: list[tuple[int, tuple[int, ...], np.ndarray]] = field(default_factory=list)
    adj: dict[int, set[int]] = field(default_factory=dict)

    def nodes(self) -> list[int]:
        return [v for v in range(self.num_orig_nodes) if self.alive[v]]

    def expand(self, local: dict[int, int]) -> tuple[int, ...]:
        """Original strategy per node from local choices of the alive nodes (undoing eliminations)."""
        out = [-1] * self.num_orig_nodes
        for v in self.nodes():
            out[v] = int(self.allowed[v][local.get(v, 0)])
        for v, nbrs, table in reversed(self.records):
            out[v] = int(table[tuple(out[u] for u in nbrs)])
        return tuple(out)


def _oriented(r: Reduced, v: int, u: int) -> np.ndarray:
    """Edge matrix between v and u with v's strategies on rows."""
    return r.edges[(v, u)] if (v, u) in r.edges else r.edges[(u, v)].T


def _add_edge(r: Reduced, u: int, v: int, m: np.ndarray) -> None:
    key, m = ((u, v), m) if u < v else ((v, u), m.T)
    r.edges[key] = r.edges[key] + m if key in r.edges else m.astype(float, copy=True)
    r.adj.setdefault(u, set()).add(v)
    r.adj.setdefault(v, set()).add(u)


def _del_edge(r: Reduced, u: int, v: int) -> None:
    del r.edges[(min(u, v), max(u, v))]
    r.adj[u].discard(v)
    r.adj[v].discard(u)


def _restrict(r: Reduced, v: int, keep: np.ndarray) -> None:
    r.allowed[v] = r.allowed[v][keep]
    r.cost[v] = r.cost[v][keep]
    for u in r.adj.get(v, ()):
        key = (min(u, v), max(u, v))
        r.edges[key] = r.edges[key][keep, :] if key[0] == v else r.edges[key][:, keep]


def reduce(p: ShardingProblem, full: bool = True) -> Reduced | None:
    """Apply the reductions; ``full=False`` keeps only edge merging, fixed/alias restriction and pruning."""
    n = p.num_nodes
    budget_on = p.memory_budget is not None and p.memory is not None and bool(p.memory_groups)
    protected = np.zeros(n, dtype=bool)
    if budget_on:
        for g in p.memory_groups:
            protected[list(g.nodes)] = True
    r = Reduced(n, [np.arange(len(c)) for c in p.node_costs], [np.array(c, dtype=float) for c in p.node_costs],
                {}, 0.0, protected, np.ones(n, dtype=bool))
    for e in p.edges:
        _add_edge(r, e.src, e.dst, np.array(e.cost, dtype=float))
    for a in p.aliases:
        m = np.full((len(p.node_costs[a.a]), len(p.node_costs[a.b])), np.inf)
        for i, j in a.pairs:
            m[i, j] = 0.0
        _add_edge(r, a.a, a.b, m)
    for v, s in p.fixed_pairs:
        _restrict(r, v, np.array([s]))
    mem = [np.array(m, dtype=float) for m in p.memory] if p.memory is not None else None
    changed = True
    while changed:
        changed = False
        if not _prune(r, p, mem, budget_on):
            return None
        if not full:
            break
        changed |= _fold_separable(r)
        changed |= _drop_dominated(r, mem)
        changed |= _eliminate(r)
    return r


def _prune(r: Reduced, p: ShardingProblem, mem: list[np.ndarray] | None, budget_on: bool) -> bool:
    """Remove impossible strategies until none is left to remove; False when a node has none left."""
    while True:
        removed = False
        for v in r.nodes():
            keep = np.isfinite(r.cost[v])
            for u in list(_neighbours_of(r, v)):
                keep &= np.isfinite(_oriented(r, v, u)).any(axis=1)
            if not keep.all():
                if not keep.any():
                    return False
                _restrict(r, v, keep)
                removed = True
        if budget_on and mem is not None and p.memory_budget is not None:
            for g in p.memory_groups:
                mins = {v: mem[v][r.allowed[v]].min() for v in g.nodes}
                total = g.base_bytes + sum(mins.values())
                slack = p.memory_budget + 1e-9 * max(1.0, abs(p.memory_budget))
                for v in g.nodes:
                    keep = total - mins[v] + mem[v][r.allowed[v]] <= slack
                    if not keep.all():
                        if not keep.any():
                            return False
                        _restrict(r, v, keep)
                        removed = True
        if not removed:
            return True


def _neighbours_of(r: Reduced, v: int) -> list[int]:
    return sorted(r.adj.get(v, ()))


def _fold_separable(r: Reduced) -> bool:
    changed = False
    for (u, v), m in list(r.edges.items()):
        if not np.isfinite(m).all():
            continue
        sep = m[:, :1] + m[:1, :] - m[0, 0]
        if np.abs(m - sep).max() <= _SEPARABLE_ATOL * max(1.0, np.abs(m).max()):
            r.cost[u] = r.cost[u] + m[:, 0]
            r.cost[v] = r.cost[v] + (m[0, :] - m[0, 0])
            _del_edge(r, u, v)
            changed = True
    return changed


def _drop_dominated(r: Reduced, mem: list[np.ndarray] | None) -> bool:
    changed = False
    for v in r.nodes():
        k = len(r.allowed[v])
        if k < 2:
            continue
        # Stack node cost, every incident edge row and (if protected) memory as columns: s is dominated by t
        # when t's features are all <= s's (inf <= inf holds).
        cols = [r.cost[v][:, None]] + [_oriented(r, v, u) for u in _neighbours_of(r, v)]
        if r.protected[v] and mem is not None:
            cols.append(mem[v][r.allowed[v]][:, None])
        keep = ~_dominated(np.concatenate(cols, axis=1))
        if not keep.all():
            _restrict(r, v, keep)
            changed = True
    return changed


_DOMINANCE_CHUNK = 1 << 22   # comparisons per numpy step (bounds the temporary arrays to a few MiB)


def _dominated(feat: np.ndarray) -> np.ndarray:
    """Rows s with some t != s such that ``feat[t] <= feat[s]`` everywhere and (t < s or ``<`` somewhere).

    That relation is a strict partial order (ties broken by index), so dropping every dominated row at once
    keeps exactly the rows no other row dominates, the same set a one-by-one sweep keeps."""
    k, f = feat.shape
    out = np.zeros(k, dtype=bool)
    idx = np.arange(k)
    step = max(1, _DOMINANCE_CHUNK // max(1, k * f))
    for lo in range(0, k, step):
        s = feat[lo:lo + step]                                   # [c, f]
        le = (feat[:, None, :] <= s[None, :, :]).all(axis=2)     # [t, c]
        lt = (feat[:, None, :] < s[None, :, :]).any(axis=2)
        dom = le & ((idx[:, None] < idx[None, lo:lo + step]) | lt) & (idx[:, None] != idx[None, lo:lo + step])
        out[lo:lo + step] = dom.any(axis=0)
    return out


def _eliminate(r: Reduced) -> bool:
    changed = False
    for v in r.nodes():
        if r.protected[v]:
            continue
        nbrs = _neighbours_of(r, v)
        if len(nbrs) > 2:
            continue
        c = r.cost[v]
        if not nbrs:
            best = int(np.argmin(c))
            r.constant += float(c[best])
            r.records.append((v, (), np.array(r.allowed[v][best])))
        elif len(nbrs) == 1:
            (u,) = nbrs
            tot = _oriented(r, u, v) + c[None, :]                 # [i_u, j_v]
            arg = np.argmin(tot, axis=1)
            r.cost[u] = r.cost[u] + tot[np.arange(len(arg)), arg]
            r.records.append((v, (u,), _table(r, (u,), r.allowed[v][arg])))
        else:
            u, w = nbrs
            tot = _oriented(r, u, v)[:, :, None] + c[None, :, None] + _oriented(r, v, w)[None, :, :]
            arg = np.argmin(tot, axis=1)                          # [i_u, k_w]
            through = np.take_along_axis(tot, arg[:, None, :], axis=1)[:, 0, :]
            r.records.append((v, (u, w), _table(r, (u, w), r.allowed[v][arg])))
            _del_edge(r, u, v)
            _del_edge(r, v, w)
            _add_edge(r, u, w, through)
        for u in list(r.adj.get(v, ())):
            _del_edge(r, u, v)
        r.alive[v] = False
        changed = True
    return changed


def _table(r: Reduced, nbrs: tuple[int, ...], local_best: np.ndarray) -> np.ndarray:
    """Best original strategy of the eliminated node, indexed by the neighbours' original strategies."""
    shape = tuple(int(r.allowed[u].max()) + 1 for u in nbrs)
    table = np.full(shape, -1, dtype=np.int64)
    table[np.ix_(*[r.allowed[u] for u in nbrs])] = local_best
    return table
